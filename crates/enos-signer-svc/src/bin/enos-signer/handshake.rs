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

use enos_signer_proto::tls_failure::{ClientContext, TlsFailure, Validity};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use x509_parser::{certificate::X509Certificate, prelude::FromDer};

/// The connection's `--ca` and `--cert`, once a channel was made.
struct Files {
    /// The CA bundle trusted for the signer's certificate.
    ca: PathBuf,
    /// Our client certificate.
    cert: PathBuf,
}

/// Set by [`remember`]: a command makes one connection.
static FILES: OnceLock<Files> = OnceLock::new();

/// Remembers the connection's files, to name them in an explanation.
pub(crate) fn remember(ca: &Path, cert: &Path) {
    let _ = FILES.set(Files {
        ca: ca.to_owned(),
        cert: cert.to_owned(),
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
    let failure = TlsFailure::find(error)?;
    let mut context = ClientContext::new("the signer");
    if let Some(files) = FILES.get() {
        context.ca = Some(("--ca", &files.ca));
        context.cert = Some(("--cert", &files.cert));
        context.validity = validity(&files.cert);
    }
    Some(failure.client_message(&context))
}

/// A call's failure: the handshake's words when it was one, else the
/// status's code and message.
pub(crate) fn status(e: tonic::Status) -> anyhow::Error {
    match explain(&e) {
        Some(message) => anyhow::anyhow!(message),
        None => anyhow::anyhow!("{:?}: {}", e.code(), e.message()),
    }
}
