//! A failed TLS handshake with the signer, said as the handshake said it
//! ([`enos_signer_proto::tls_failure`], the classification the agent and
//! the signer's own log use too) with the command's `--ca` and `--cert`,
//! instead of tonic's `Cancelled: operation was canceled`.
//!
//! Under TLS 1.3 the signer refuses a client certificate after the
//! client considers the handshake done, so the refusal surfaces on the
//! first call, far from the connection's flags: those are remembered
//! here when the channel is made ([`remember`]).

use std::{
    error::Error,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use enos_signer_proto::tls_failure::{self as probe, ClientContext, TlsFailure, Validity};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use x509_parser::{certificate::X509Certificate, prelude::FromDer};

/// The connection's endpoint and files, once a channel was made.
struct Files {
    /// `--endpoint`, for a probe.
    endpoint: String,
    /// The CA bundle trusted for the signer's certificate.
    ca: PathBuf,
    /// Our client certificate.
    cert: PathBuf,
    /// Its key, for a probe (read then, never shown).
    key: PathBuf,
}

/// Set by [`remember`]: a command makes one connection.
static FILES: OnceLock<Files> = OnceLock::new();

/// Remembers the connection, to name its files in an explanation.
pub(crate) fn remember(endpoint: &str, ca: &Path, cert: &Path, key: &Path) {
    let _ = FILES.set(Files {
        endpoint: endpoint.to_owned(),
        ca: ca.to_owned(),
        cert: cert.to_owned(),
        key: key.to_owned(),
    });
}

/// The validity of the (first) certificate in `path`, when it reads.
fn validity(path: &Path) -> Option<Validity> {
    let der = CertificateDer::from_pem_file(path).ok()?;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    Some(Validity {
        not_before: u64::try_from(cert.validity().not_before.timestamp()).ok()?,
        not_after: u64::try_from(cert.validity().not_after.timestamp()).ok()?,
    })
}

/// What a TLS failure in `error`'s chain means, or `None`.
pub(crate) fn explain(error: &(dyn Error + 'static)) -> Option<String> {
    TlsFailure::find(error).map(|failure| said(&failure))
}

/// `failure` said with the connection's files.
fn said(failure: &TlsFailure) -> String {
    let mut context = ClientContext::new("the signer");
    if let Some(files) = FILES.get() {
        context.ca = Some(("--ca", &files.ca));
        context.cert = Some(("--cert", &files.cert));
        context.validity = validity(&files.cert);
    }
    failure.client_message(&context)
}

/// A command's error, explained when it is a call cancelled under it
/// (under TLS 1.3 the signer refuses our certificate after our side of
/// the handshake is done; the alert saying why never reaches the call):
/// one bare handshake with the same files hears the alert
/// ([`probe::probe`]). Anything else is returned as it is.
pub(crate) async fn explain_error(error: anyhow::Error) -> anyhow::Error {
    let Some(files) = FILES.get() else {
        return error;
    };
    if !probe::worth_probing(&format!("{error:#}")) {
        return error;
    }
    let material = (|| {
        Some((
            std::fs::read(&files.ca).ok()?,
            std::fs::read(&files.cert).ok()?,
            zeroize::Zeroizing::new(std::fs::read(&files.key).ok()?),
        ))
    })();
    let Some((ca, cert, key)) = material else {
        return error;
    };
    let found = probe::probe(
        &files.endpoint,
        None,
        probe::ProbeMaterial {
            ca_pem: &ca,
            cert_pem: &cert,
            key_pem: &key,
        },
        std::time::Duration::from_secs(5),
    )
    .await;
    match found {
        Some(failure) => anyhow::anyhow!(said(&failure)),
        None => error,
    }
}

/// A call's failure: the handshake's words when it was one, else the
/// status's code and message.
pub(crate) fn status(e: tonic::Status) -> anyhow::Error {
    match explain(&e) {
        Some(message) => anyhow::anyhow!(message),
        None => anyhow::anyhow!("{:?}: {}", e.code(), e.message()),
    }
}
