//! The front: the sandbox's public listeners, an MQTT-aware proxy in front
//! of rumqttd that behaves as EnOS does at the connection.
//!
//! rumqttd alone cannot: its auth hook sees no client certificate and can
//! only close a refused connection (no CONNACK), it has no per-client
//! topic rules, and it routes by subscription only. So the front
//! terminates the connection (and TLS), reads CONNECT and decides:
//!
//! 1. **Login.** The CONNECT is checked ([`crate::auth`]) with the client
//!    certificate in hand ([`crate::CertificateRule`]). A refusal is
//!    answered with CONNACK 4 (bad user name or password: wrong password,
//!    unknown device, malformed login) or 5 (not authorised: disabled
//!    device, certificate of another device, a sub-device connecting
//!    directly, an activation that is not allowed), then the connection
//!    closes; the reason is logged.
//! 2. **Forwarding.** An accepted device gets a connection to rumqttd's
//!    internal listener (loopback, a random port, logged in with a token
//!    only this process knows) as the session `device|{pk}|{dk}`: one
//!    session per device, so a second login of the device (with its
//!    client id parameters reordered, say) takes the first one's session
//!    over, as on EnOS. Before the device
//!    sees its CONNACK, the front subscribes that connection to the
//!    device's whole namespace (`topics::namespace_filters`). After the
//!    CONNACK of a `securemode=3` login it pushes the activation secret
//!    itself ([`crate::activation`]), and it hands the device's
//!    `thing/activate/info_reply` to the activation state (and on to
//!    rumqttd). When the session ends, the device's sub-devices (if it is
//!    a gateway) go offline ([`crate::sub_devices`]).
//! 3. **Topic rules** (`topics`). A device's PUBLISH outside its
//!    namespace (and its logged-in sub-devices', for a gateway) is dropped
//!    (and acknowledged, so the client does not resend it) and logged; a
//!    SUBSCRIBE outside it gets the SUBACK failure code 0x80.
//! 4. **Delivery.** The device's own SUBSCRIBEs are kept by the front and
//!    never reach rumqttd: a message arriving on the namespace
//!    subscription is passed on if it is downstream
//!    (`topics::is_downstream`, delivered unasked as EnOS does) or
//!    matches one of the device's filters. So each message arrives once,
//!    subscribed or not, and never another device's. The filters belong
//!    to the session, not the connection (`session_state`): kept by
//!    device across `clean_session = 0` reconnects, at most
//!    `max_filters_per_session` of them, exact ones indexed by topic. No
//!    delivery goes out before the client's CONNACK.
//! 5. **Keepalive and will.** The front keeps both itself: it answers
//!    PINGREQ, closes a client silent for 1.5 × its keepalive (0: never),
//!    and pings rumqttd on its own (its sessions there have a fixed
//!    keepalive, so rumqttd's refusal of keepalive 0 never reaches a
//!    client). The will is taken out of the CONNECT and published through
//!    a short internal session when the connection ends other than by
//!    DISCONNECT, including a take-over, which rumqttd's own will
//!    handling gets wrong.
//! 6. **The console** (`--console-user`, from loopback on the plain
//!    listener only) plays the cloud: it may publish any device's
//!    downstream topics and the `_reply` to a device's request, and
//!    subscribe to anything; its packets otherwise pass through.
//!
//! Costs and limits: every packet is decoded and re-encoded once more; a
//! device's own upstream messages come back on its namespace
//! subscription and are dropped in the front; retained messages are only
//! delivered when they are downstream (the front subscribes before the
//! device's own SUBSCRIBE, so a retained non-downstream message is not
//! replayed on it).

mod connection;
mod context;
mod packets;
mod session_state;
pub(crate) mod topics;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

pub(crate) use context::FrontContext;
use context::Listener;
pub use context::{MQTT_LISTENER, TLS_LISTENER};
pub(crate) use session_state::SessionStore;

pub use crate::certificate::{CertificateRule, DEFAULT_CERTIFICATE_RULE};
use crate::{config::TlsSettings, error::SandboxError};

/// Binds a listening socket on `addr`, whose port a
/// [`crate::ports::PortReservation`] may hold (hence `SO_REUSEADDR`).
pub(crate) fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, SandboxError> {
    let fail = |e: std::io::Error| SandboxError::Listen {
        addr,
        reason: e.to_string(),
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(1024).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    Ok(socket.into())
}

/// The TLS listener's rustls config: the server certificate, and client
/// certificates required, chaining to the CA. Errors name the file.
pub(crate) fn tls_config(
    tls: &TlsSettings,
    extra_roots: &[Vec<u8>],
) -> Result<Arc<ServerConfig>, SandboxError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| SandboxError::Read {
            path: path.to_owned(),
            cause: source,
        })
    };
    let bad = |what: &str, path: &std::path::Path, detail: String| {
        SandboxError::Settings(format!("the TLS {what} file {}: {detail}", path.display()))
    };
    let certs = |what: &str, path: &std::path::Path| {
        let pem = read(path)?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(what, path, e.to_string()))?;
        if certs.is_empty() {
            return Err(bad(what, path, "holds no PEM certificate".into()));
        }
        Ok(certs)
    };
    let mut roots = RootCertStore::empty();
    for cert in certs("CA", &tls.ca)? {
        roots
            .add(cert)
            .map_err(|e| bad("CA", &tls.ca, e.to_string()))?;
    }
    // The EnOS CA of the certificate API: its certificates are then bound
    // to their device by serial (`crate::enos_api`).
    for der in extra_roots {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| SandboxError::Settings(format!("the EnOS CA root: {e}")))?;
    }
    let chain = certs("certificate", &tls.cert)?;
    // The key is a secret: refused unless only its owner can read it.
    let key_pem = enos_domain::private_file::read(&tls.key)
        .map_err(|e| SandboxError::Settings(format!("the TLS key: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| bad("key", &tls.key, "not a PEM private key".into()))?;
    let mut crls = Vec::new();
    for path in &tls.crls {
        let bytes = read(path)?;
        let pem: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| bad("CRL", path, e.to_string()))?;
        if !pem.is_empty() {
            crls.extend(pem);
        } else if bytes.first() == Some(&0x30) {
            crls.push(CertificateRevocationListDer::from(bytes));
        } else {
            return Err(bad("CRL", path, "neither PEM nor DER".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        // A CA without a list is not checked for revocation: the lists
        // given are enforced, none is invented.
        .allow_unknown_revocation_status()
        .build()
        .map_err(|e| bad("CA", &tls.ca, e.to_string()))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SandboxError::Settings(format!("TLS versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| bad("certificate", &tls.cert, e.to_string()))?;
    Ok(Arc::new(config))
}

/// Accepts plain connections on `listener` for ever.
pub(crate) async fn serve_plain(listener: TcpListener, context: Arc<FrontContext>) {
    loop {
        let Some((stream, peer)) = accept(&listener).await else {
            continue;
        };
        tokio::spawn(connection::serve(
            stream,
            peer,
            Listener::Plain,
            None,
            Arc::clone(&context),
        ));
    }
}

/// The modification times of the CRL files (`None`: unreadable), to tell
/// when they changed.
fn crl_stamps(tls: &TlsSettings) -> Vec<Option<std::time::SystemTime>> {
    tls.crls
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Accepts TLS connections on `listener` for ever; the handshake runs in
/// the connection's own task. When a CRL file changes (the signer writes
/// a new list on each revocation), the next handshake uses it; a list that
/// does not load is logged and the previous one stays.
pub(crate) async fn serve_tls(
    listener: TcpListener,
    tls: TlsSettings,
    extra_roots: Vec<Vec<u8>>,
    config: Arc<ServerConfig>,
    context: Arc<FrontContext>,
) {
    let mut acceptor = TlsAcceptor::from(config);
    let mut stamps = crl_stamps(&tls);
    loop {
        let Some((stream, peer)) = accept(&listener).await else {
            continue;
        };
        if !tls.crls.is_empty() {
            let now = crl_stamps(&tls);
            if now != stamps {
                stamps = now;
                match tls_config(&tls, &extra_roots) {
                    Ok(config) => {
                        info!("CRL files changed: new TLS handshakes use them");
                        acceptor = TlsAcceptor::from(config);
                    }
                    Err(e) => {
                        warn!(error = %e, "CRL files changed but do not load; the previous lists stay")
                    }
                }
            }
        }
        let acceptor = acceptor.clone();
        let context = Arc::clone(&context);
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(context.connect_timeout, acceptor.accept(stream));
            let tls = match handshake.await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    info!(listener = Listener::Tls.name(), peer = %peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    info!(listener = Listener::Tls.name(), peer = %peer, "TLS handshake timed out");
                    return;
                }
            };
            let certificate = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|der| der.as_ref().to_vec());
            connection::serve(tls, peer, Listener::Tls, certificate, context).await;
        });
    }
}

async fn accept(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok((stream, peer)) => {
            // Small packets both ways: no Nagle delay on CONNACK or PUBACK.
            let _ = stream.set_nodelay(true);
            Some((stream, peer))
        }
        Err(e) => {
            // Out of file descriptors, say: wait a little, keep serving.
            debug!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(10)).await;
            None
        }
    }
}
