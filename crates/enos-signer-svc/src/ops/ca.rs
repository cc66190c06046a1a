//! `enos-signer ca init` and `ca import-cert`: the signer's CA, made with
//! the service stopped or running (every replica reads the CA from the
//! registry within [`crate::ca::REFRESH`]).
//!
//! `ca init` has the custody make the CA key (sealed under the master key,
//! or a non-extractable key in the HSM), then either self-signs a root or
//! writes a request for an intermediate that the operator's own root
//! signs; `ca import-cert` checks that certificate (a CA, valid now, for
//! this very key, chaining to the roots given) and installs the chain.
//! Each writes an audit record before it changes the registry.

use std::time::{Duration, SystemTime};

use enos_ca::{Validity, authority};
use enos_registry::CaRecord;

use crate::{
    audit::{Audit, AuditRecord},
    ca::{KEY_LABEL, millis},
    config::SignerConfig,
    custody::{self, CustodyHandle},
    error::{Result, SignerError},
};

/// What `ca init` makes.
#[derive(Debug, Clone)]
pub enum CaKind {
    /// A self-signed root valid for `validity`.
    Root {
        /// Its subject's CN.
        common_name: String,
        /// How long it is valid.
        validity: Duration,
    },
    /// A key and a request for the operator's root to sign.
    Intermediate {
        /// The request's CN.
        common_name: String,
    },
}

/// What `ca init` made, to print.
#[derive(Debug)]
pub enum CaInitOutcome {
    /// The root certificate (PEM): give it to whoever must trust the
    /// devices' certificates (the brokers, the sandbox).
    Root {
        /// PEM.
        certificate_pem: String,
    },
    /// The request (PEM) for the operator's root.
    Intermediate {
        /// PEM.
        request_pem: String,
    },
}

/// The custody and registry of `config`, and its `[ca]` present.
fn open(
    config: &SignerConfig,
) -> Result<(
    CustodyHandle,
    std::sync::Arc<dyn enos_registry::Registry>,
    Audit,
)> {
    if config.ca.is_none() {
        return Err(SignerError::Config(
            "the config has no [ca] section: add one (see docs/certificates.md) before `ca init`"
                .into(),
        ));
    }
    Ok((
        custody::build(&config.custody)?,
        enos_registry::open(&config.registry)?,
        Audit::open(&config.audit)?,
    ))
}

/// Whether the registry of `config` holds a CA (made by `ca init`).
pub async fn exists(config: &SignerConfig) -> Result<bool> {
    Ok(enos_registry::open(&config.registry)?
        .get_ca()
        .await?
        .is_some())
}

/// Makes the CA: refused if the registry has one, unless `replace` (then
/// every certificate the old CA issued stops being trusted by this
/// signer: devices must enroll again).
pub async fn init(config: &SignerConfig, kind: CaKind, replace: bool) -> Result<CaInitOutcome> {
    let (custody, registry, audit) = open(config)?;
    if !replace && let Some(existing) = registry.get_ca().await? {
        return Err(SignerError::FailedPrecondition(format!(
            "this signer already has a CA (made {}); `ca init --replace` makes a new one, after which every device certificate of the old one stops being trusted",
            humantime::format_rfc3339_seconds(
                SystemTime::UNIX_EPOCH + Duration::from_millis(existing.created_at_ms)
            )
        )));
    }
    let key = custody.run(|c| c.create_ca_key(KEY_LABEL)).await??;
    let signing = {
        let key = key.clone();
        custody.run(move |c| c.ca_signer(&key)).await??
    };
    let ca_key = enos_ca::authority::CustodyKey::new(signing).map_err(ca)?;
    let (chain_der, pending_csr_der, outcome) = match kind {
        CaKind::Root {
            common_name,
            validity,
        } => {
            let validity = Validity::starting(SystemTime::now(), validity).map_err(ca)?;
            let root = custody
                .run(move |_| authority::self_signed_root(&common_name, validity, &ca_key))
                .await?
                .map_err(ca)?;
            let pem = root.pem();
            (
                vec![root.der().to_vec()],
                None,
                CaInitOutcome::Root {
                    certificate_pem: pem,
                },
            )
        }
        CaKind::Intermediate { common_name } => {
            let request = custody
                .run(move |_| authority::intermediate_request(&common_name, &ca_key))
                .await?
                .map_err(ca)?;
            let pem = request.pem().map_err(|e| SignerError::Ca(e.to_string()))?;
            (
                Vec::new(),
                Some(request.der().to_vec()),
                CaInitOutcome::Intermediate { request_pem: pem },
            )
        }
    };
    let mut intent = AuditRecord::new("ca_init", None, None, "started");
    intent.identity = "operator (enos-signer ca init)".into();
    intent.detail = Some(format!("key scheme {}", key.scheme));
    audit.record(&intent).await?;
    let record = CaRecord {
        key,
        chain_der,
        pending_csr_der,
        created_at_ms: millis(SystemTime::now()),
    };
    registry
        .modify_ca(Box::new(move |current| {
            if current.is_some() && !replace {
                return Err(SignerError::FailedPrecondition(
                    "another `ca init` made a CA meanwhile; nothing was changed".into(),
                )
                .into());
            }
            Ok(record)
        }))
        .await?;
    intent.outcome = "ok".into();
    audit.record(&intent).await?;
    Ok(outcome)
}

/// Installs the certificate the operator's root issued for the
/// intermediate's request: `chain_pem` holds it first, then the
/// certificates up to (and including) the root. Refused unless it is a CA
/// certificate valid now for the CA's own key.
pub async fn import_cert(config: &SignerConfig, chain_pem: &[u8]) -> Result<usize> {
    let (_, registry, audit) = open(config)?;
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let chain: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(chain_pem)
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| SignerError::Config(format!("the chain file is not PEM certificates: {e}")))?;
    let Some(issuing) = chain.first().cloned() else {
        return Err(SignerError::Config(
            "the chain file holds no CERTIFICATE block".into(),
        ));
    };
    authority::is_usable_ca(&issuing, SystemTime::now()).map_err(|e| {
        SignerError::Config(format!("the certificate cannot be the signer's CA: {e}"))
    })?;
    let ca = registry.get_ca().await?.ok_or_else(|| {
        SignerError::FailedPrecondition(
            "no CA yet: run `enos-signer ca init --intermediate` first".into(),
        )
    })?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&issuing)
        .map_err(|_| SignerError::Config("the certificate cannot be parsed".into()))?;
    if parsed.public_key().raw != ca.key.public_key_der.as_slice() {
        return Err(SignerError::Config(
            "the certificate is for another key than the CA's own (was it issued for this signer's request?)".into(),
        ));
    }
    // Each certificate is signed by the next (the last one by itself or by
    // a root the operator's brokers trust): a chain out of order or with a
    // stranger in it is refused here, not by the first device.
    for pair in chain.windows(2) {
        let (_, child) = x509_parser::parse_x509_certificate(&pair[0]).map_err(|_| {
            SignerError::Config("a certificate of the chain cannot be parsed".into())
        })?;
        let (_, parent) = x509_parser::parse_x509_certificate(&pair[1]).map_err(|_| {
            SignerError::Config("a certificate of the chain cannot be parsed".into())
        })?;
        child.verify_signature(Some(parent.public_key())).map_err(|_| {
            SignerError::Config(format!(
                "the chain is broken: {} is not signed by {} (the file holds the CA's certificate first, then each issuer up to the root)",
                child.subject(),
                parent.subject()
            ))
        })?;
    }
    let mut intent = AuditRecord::new("ca_import_cert", None, None, "started");
    intent.identity = "operator (enos-signer ca import-cert)".into();
    intent.detail = Some(format!("subject {}", parsed.subject()));
    audit.record(&intent).await?;
    let count = chain.len();
    let key = ca.key.clone();
    registry
        .modify_ca(Box::new(move |current| {
            let mut current = current.ok_or_else(|| {
                crate::error::SignerError::FailedPrecondition("the CA was removed meanwhile".into())
            })?;
            if current.key != key {
                return Err(SignerError::FailedPrecondition(
                    "another `ca init` replaced the CA meanwhile; nothing was changed".into(),
                )
                .into());
            }
            current.chain_der = chain;
            current.pending_csr_der = None;
            Ok(current)
        }))
        .await?;
    intent.outcome = "ok".into();
    audit.record(&intent).await?;
    Ok(count)
}

/// A CA failure while making the CA.
fn ca(e: enos_ca::CaError) -> SignerError {
    SignerError::Ca(e.to_string())
}
