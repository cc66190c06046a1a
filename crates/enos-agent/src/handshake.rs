//! A failed TLS handshake, said with the agent's settings: the failure
//! is found in the error's source chain by
//! [`enos_signer_proto::tls_failure`] (one classification for the agent,
//! the admin CLI and the signer), and explained here with the files and
//! keys the operator set (`signer.ca`, `signer.cert`, the certificate's
//! validity; `enos.tls.*` for the broker).

use std::path::Path;

use enos_signer_proto::tls_failure::{self as probe, ClientContext, TlsFailure, Validity};

use crate::{
    certificate::CertificateInfo,
    config::{MqttTlsConfig, SignerClientConfig},
    error::SignerClientError,
};

/// The validity of the certificate in `path`, when it reads.
fn validity(path: &Path) -> Option<Validity> {
    let info = CertificateInfo::read(path).ok()?;
    Some(Validity {
        not_before: info.not_before_ms / 1000,
        not_after: info.not_after_ms / 1000,
    })
}

/// What a TLS failure in `error`'s chain means for the signer client,
/// or `None` when the chain holds no TLS failure. Without `config`
/// (the enrollment listener, which asks for no certificate) the message
/// names no file.
pub(crate) fn signer_failure(
    error: &(dyn std::error::Error + 'static),
    config: Option<&SignerClientConfig>,
) -> Option<String> {
    let failure = TlsFailure::find(error)?;
    let context = match config {
        Some(config) => signer_context(config),
        None => ClientContext::new("the signer"),
    };
    Some(failure.client_message(&context))
}

/// What the signer client's config tells about a failure.
fn signer_context(config: &SignerClientConfig) -> ClientContext<'_> {
    let mut context = ClientContext::new("the signer");
    context.ca = Some(("signer.ca", &config.ca));
    context.cert = Some(("signer.cert", &config.cert));
    context.server_name = Some("signer.tls_server_name");
    context.validity = validity(&config.cert);
    context
}

/// What a TLS failure in `error`'s chain means for the EnOS broker
/// connection (`[enos.tls]`), or `None`.
pub(crate) fn broker_failure(
    error: &(dyn std::error::Error + 'static),
    tls: Option<&MqttTlsConfig>,
) -> Option<String> {
    let failure = TlsFailure::find(error)?;
    let mut context = ClientContext::new("the EnOS broker");
    if let Some(tls) = tls {
        context.ca = Some(("enos.tls.ca", &tls.ca));
        context.cert = Some(("enos.tls.cert", &tls.cert));
        context.validity = validity(&tls.cert);
    }
    Some(failure.client_message(&context))
}

/// An unavailable signer whose call was cancelled under it (tonic's
/// `operation was canceled`: under TLS 1.3 the signer refuses our
/// certificate after our side of the handshake is done, and the alert
/// saying why never reaches the call) is asked once more with a bare
/// handshake ([`enos_signer_proto::tls_failure::probe`]) that hears the
/// alert; the error then says what it said. Any other error is returned
/// as it is.
pub(crate) async fn explain_unavailable(
    error: SignerClientError,
    url: &str,
    config: &SignerClientConfig,
) -> SignerClientError {
    let SignerClientError::Unavailable { endpoint, message } = error else {
        return error;
    };
    if !probe::worth_probing(&message) {
        return SignerClientError::Unavailable { endpoint, message };
    }
    // The files as they are now, in the signer channel's own TLS config
    // (a key file or a token key alike).
    let tls = (|| {
        let ca = std::fs::read(&config.ca).ok()?;
        let cert = std::fs::read(&config.cert).ok()?;
        let key = match config.key.file() {
            Some(path) => Some(crate::tls::read_private_key(path).ok()?),
            None => None,
        };
        crate::signer_channels::client_tls(config, &ca, &cert, key.as_deref().map(Vec::as_slice))
            .ok()
    })();
    let Some(tls) = tls else {
        return SignerClientError::Unavailable { endpoint, message };
    };
    let found = probe::probe_with(
        url,
        config.tls_server_name.as_deref(),
        tls,
        config.connect_timeout,
    )
    .await;
    match found {
        Some(failure) => SignerClientError::Unavailable {
            endpoint,
            message: failure.client_message(&signer_context(config)),
        },
        None => SignerClientError::Unavailable { endpoint, message },
    }
}
