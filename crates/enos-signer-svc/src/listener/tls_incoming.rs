//! [`tls_incoming`]: the gRPC listener's connections, TLS-accepted with
//! the material current at each handshake ([`ReloadingTls::current`]).
//!
//! tonic's own TLS fixes one config for the server's life; this stream
//! lets a certificate or client CA change between two handshakes while
//! established connections keep theirs. Handshakes run concurrently, each
//! bounded by `[server.limits] handshake_timeout`, so a slow or silent
//! client holds up no one; a handshake without a valid client certificate
//! fails, and is counted and logged with its reason
//! ([`crate::listener::handshake_failures`]). After it, the client's HTTP/2 preface must arrive within
//! `http2_start_timeout`, or the connection is closed: a peer cannot
//! hold a slot by saying nothing.

use std::{sync::Arc, time::Duration};

use futures::Stream;
use tokio::{net::TcpListener, sync::mpsc, task::JoinSet};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::sync::CancellationToken;

use enos_signer_proto::tls_failure::TlsFailure;

use crate::{
    listener::handshake_failures::HandshakeFailures,
    listener::limits::{Admission, Deadlines, HTTP2_PREFACE_LEN, Limited},
    listener::tls_reload::{ReloadingTls, TlsGeneration},
};

/// Which of a generation's configs a listener's handshakes use.
pub type ConfigOf = fn(&TlsGeneration) -> Arc<rustls::ServerConfig>;

/// The gRPC listener's config: a client certificate required.
pub fn grpc_config(generation: &TlsGeneration) -> Arc<rustls::ServerConfig> {
    Arc::clone(&generation.grpc)
}

/// The enrollment listener's config: no client certificate.
pub fn enroll_config(generation: &TlsGeneration) -> Arc<rustls::ServerConfig> {
    Arc::clone(&generation.enroll)
}

/// How long a connection may take before it is of use.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionTimeouts {
    /// The TLS handshake must end within this.
    pub handshake: Duration,
    /// The HTTP/2 preface must arrive within this after the handshake.
    pub http2_start: Duration,
}

/// Accepted TLS connections waiting for the server to take them.
const BACKLOG: usize = 256;

/// A connection the gRPC server serves: TLS, holding a connection permit.
pub type GrpcConnection = Limited<TlsStream<tokio::net::TcpStream>>;

/// Accepts on `listener` until `stop`, yielding TLS streams for
/// `tonic::transport::Server::serve_with_incoming_shutdown`. The listener
/// is closed when `stop` is cancelled. A connection `admission` refuses
/// (its address over its rate, or the listener full; handshakes count) is
/// closed at accept.
pub fn tls_incoming(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    config_of: ConfigOf,
    admission: Admission,
    timeouts: ConnectionTimeouts,
    stop: CancellationToken,
) -> impl Stream<Item = std::io::Result<GrpcConnection>> + Send + 'static {
    let (sender, receiver) = mpsc::channel(BACKLOG);
    tokio::spawn(accept_loop(
        listener, tls, config_of, admission, timeouts, stop, sender,
    ));
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|tls| (Ok(tls), receiver))
    })
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    config_of: ConfigOf,
    admission: Admission,
    timeouts: ConnectionTimeouts,
    stop: CancellationToken,
    sender: mpsc::Sender<GrpcConnection>,
) {
    let mut handshakes = JoinSet::new();
    let failures = Arc::new(HandshakeFailures::new(
        admission.listener,
        admission.metrics.clone(),
    ));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // At the limit: closed before any TLS work (dropping it).
        let Some(permit) = admission.admit(peer.ip()) else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(config_of(&tls.current()));
        let sender = sender.clone();
        let failures = Arc::clone(&failures);
        while handshakes.try_join_next().is_some() {}
        handshakes.spawn(async move {
            match tokio::time::timeout(timeouts.handshake, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let deadlines = Deadlines {
                        start: timeouts.http2_start,
                        preface: HTTP2_PREFACE_LEN,
                        lifetime: None,
                    };
                    let connection = Limited::with_deadlines(stream, permit, deadlines);
                    let _ = sender.send(connection).await;
                }
                Ok(Err(e)) => {
                    failures.record(peer, &TlsFailure::from_io(&e));
                }
                Err(_) => {
                    failures.record(peer, &TlsFailure::timeout());
                }
            }
        });
    }
    // The listener closes here; handshakes under way are dropped.
    handshakes.shutdown().await;
}
