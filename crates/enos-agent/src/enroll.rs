//! `enos-agent enroll`: the gateway's first certificate, for a one-time
//! token, with no long-lived bootstrap secret.
//!
//! The key is made here and never leaves the gateway: a P-256 key, its
//! CSR sent to the signer's enrollment listener over server-authenticated
//! TLS (the gateway has no client certificate yet; the token is the
//! proof). The certificate and its chain, and the key (mode 0600), are
//! written where `[signer]` `cert` and `key` point, through the same
//! crash-safe promotion as a renewal ([`crate::pair`]).
//!
//! The token comes from a private file only (never argv, which any local
//! user can read in `/proc`), is never logged and never appears in an
//! error.

use std::path::{Path, PathBuf};

use enos_domain::DeviceId;
use enos_signer_proto::v1::{self, enrollment_client::EnrollmentClient};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use zeroize::Zeroizing;

use crate::{
    certificate::CertificateInfo,
    config::Config,
    error::{AgentError, SignerClientError},
    issued::SignedCertificate,
    pair::{self, NewKey, PairPaths},
    renewal::rfc3339,
    signer::{classify, signed_certificate},
};

/// The token's prefix, as `enos-signer enroll-token` prints it.
const TOKEN_PREFIX: &str = "enr1_";
/// base64url (no padding) of 32 random bytes.
const TOKEN_BODY_LEN: usize = 43;

/// What `enroll` was asked, from its command line.
#[derive(Debug, Clone)]
pub struct EnrollRequest {
    /// The signer's enrollment listener, `https://host:port`.
    pub signer: String,
    /// The CA bundle that signs the signer's server certificate.
    pub ca: PathBuf,
    /// The file holding the token (private: mode 0600).
    pub token_file: PathBuf,
    /// Replace a pair that is still valid.
    pub force: bool,
}

/// What `enroll` wrote.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The device the certificate names.
    pub device: DeviceId,
    /// Where the key and the certificate chain were written.
    pub pair: PairPaths,
    /// What was done with the key ("wrote FILE (…)" or "made … in token
    /// …"), for the report.
    pub key: String,
    /// The certificate as the signer issued it.
    pub certificate: SignedCertificate,
    /// Its validity, as read from the certificate itself.
    pub info: CertificateInfo,
}

impl Enrolled {
    /// The lines `enroll` prints.
    pub fn report(&self) -> String {
        let n = self.certificate.chain_der.len();
        format!(
            "enrolled {device} with signer {endpoint}: certificate {serial}, valid until {until}\n\
             {key}\n\
             wrote {cert} (the certificate and {n} CA certificate{s})\n\
             `enos-agent run` uses them from its next connection and renews the certificate at about 2/3 of its lifetime",
            device = self.device,
            endpoint = self.certificate.endpoint,
            serial = self.certificate.serial,
            until = rfc3339(self.info.not_after_ms),
            key = self.key,
            cert = self.pair.cert.display(),
            s = if n == 1 { "" } else { "s" },
        )
    }
}

/// Reads the token from `path`: a private file (see
/// [`enos_domain::private_file`]) of one line. Errors never show it.
pub fn read_token(path: &Path) -> Result<Zeroizing<String>, AgentError> {
    let bytes =
        enos_domain::private_file::read(path).map_err(|e| AgentError::Enroll(e.to_string()))?;
    let bad = |why: &str| {
        AgentError::Enroll(format!(
            "{} {why}: it must hold one line, the token as `enos-signer enroll-token` prints it \
             ({TOKEN_PREFIX}…)",
            path.display()
        ))
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("is not text"))?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let token = lines.next().ok_or_else(|| bad("is empty"))?;
    if lines.next().is_some() {
        return Err(bad("has more than one line"));
    }
    let well_formed = token.strip_prefix(TOKEN_PREFIX).is_some_and(|body| {
        body.len() == TOKEN_BODY_LEN
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !well_formed {
        return Err(bad("does not hold an enrollment token"));
    }
    Ok(Zeroizing::new(token.to_owned()))
}

/// Refuses to replace a pair that is still valid (the key fits the
/// certificate, which has not expired) unless `force`: a second
/// `enroll` by mistake would throw away a working identity.
pub fn check_existing(pair: &PairPaths, force: bool, now_ms: u64) -> Result<(), AgentError> {
    let key_file_exists = pair.key.file().is_some_and(Path::exists);
    if force || !(pair.cert.exists() || key_file_exists) {
        return Ok(());
    }
    let Ok(info) = CertificateInfo::read(&pair.cert) else {
        return Ok(());
    };
    if pair::check_pair(pair).is_err() || now_ms >= info.not_after_ms {
        return Ok(());
    }
    Err(AgentError::Enroll(format!(
        "{} and {} already hold a valid certificate (until {}); `enos-agent run` renews it. \
         To replace it anyway, add --force",
        pair.cert.display(),
        pair.key,
        rfc3339(info.not_after_ms),
    )))
}

/// Enrolls the device of `config` (see the module docs).
pub async fn enroll(config: &Config, request: &EnrollRequest) -> Result<Enrolled, AgentError> {
    let pair = PairPaths {
        cert: config.signer.cert.clone(),
        key: config.signer.key.clone(),
    };
    if !request.signer.starts_with("https://")
        || request.signer.parse::<tonic::transport::Uri>().is_err()
    {
        return Err(AgentError::Enroll(format!(
            "--signer {:?} must be an https:// URL (the signer's enrollment listener)",
            request.signer
        )));
    }
    pair::recover(&pair)?;
    check_existing(&pair, request.force, crate::now_ms())?;
    let token = read_token(&request.token_file)?;
    let ca = std::fs::read(&request.ca).map_err(|source| AgentError::ReadFile {
        path: request.ca.clone(),
        cause: source,
    })?;
    crate::tls::check_pem_certs(&request.ca, &ca)?;

    let key = NewKey::generate(&pair.key)?;
    // The key is written first: a directory that cannot take it fails
    // before the token is spent.
    pair::write_candidate_key(&pair, &key)?;
    let obtained = match obtain(config, request, &ca, &key, token).await {
        Ok(certificate) => finish(&pair, certificate, &key),
        Err(e) => Err(e),
    };
    let (certificate, info) = match obtained {
        Ok(done) => done,
        Err(e) => {
            pair::discard_candidate(&pair)?;
            return Err(e);
        }
    };
    pair::promote(&pair)?;
    Ok(Enrolled {
        device: config.device.id(),
        key: key.describe(&pair.key),
        pair,
        certificate,
        info,
    })
}

/// Sends the CSR of `key` with `token` to the enrollment listener,
/// verified against the CA bundle `ca`.
async fn obtain(
    config: &Config,
    request: &EnrollRequest,
    ca: &[u8],
    key: &NewKey,
    token: Zeroizing<String>,
) -> Result<SignedCertificate, AgentError> {
    let device = config.device.id();
    let endpoint = request.signer.clone();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .timeout(config.signer.connect_timeout);
    if let Some(name) = &config.signer.tls_server_name {
        tls = tls.domain_name(name.clone());
    }
    let channel = Endpoint::from_shared(endpoint.clone())
        .and_then(|e| e.tls_config(tls))
        .map_err(|e| AgentError::Enroll(format!("--signer {endpoint}: {e}")))?
        .connect_timeout(config.signer.connect_timeout)
        .timeout(config.signer.request_timeout)
        .connect()
        .await
        .map_err(|e| SignerClientError::Unavailable {
            endpoint: endpoint.clone(),
            message: crate::signer::error_chain(&e),
        })?;
    // The request's copy of the token lives only as long as the call
    // (prost strings are not zeroized, as for the activation secret).
    let reply = EnrollmentClient::new(channel)
        .enroll(v1::EnrollRequest {
            device: Some(v1::DeviceRef::new(
                device.product_key.as_str(),
                device.device_key.as_str(),
            )),
            token: token.as_str().to_owned(),
            csr_der: key.csr_der()?,
        })
        .await
        .map_err(|s| classify(endpoint.clone(), s))?
        .into_inner();
    drop(token);
    Ok(signed_certificate(reply, endpoint)?)
}

/// Checks the issued certificate against the key and writes it as the
/// candidate's second half.
fn finish(
    pair: &PairPaths,
    certificate: SignedCertificate,
    key: &NewKey,
) -> Result<(SignedCertificate, CertificateInfo), AgentError> {
    let info = CertificateInfo::from_der(&certificate.certificate_der).map_err(|reason| {
        SignerClientError::BadResponse {
            endpoint: certificate.endpoint.clone(),
            reason: format!("the certificate is unreadable: {reason}"),
        }
    })?;
    let cert_pem = pair::chain_pem(&certificate.certificate_der, &certificate.chain_der);
    pair::check_fits(key, &pair.candidate_cert(), cert_pem.as_bytes())?;
    pair::write_candidate_cert(pair, cert_pem.as_bytes())?;
    Ok((certificate, info))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const TOKEN: &str = "enr1_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    fn token_file(dir: &Path, contents: &str, mode: u32) -> PathBuf {
        let path = dir.join("token");
        std::fs::write(&path, contents).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn the_token_is_one_line_of_a_private_file_and_errors_never_show_it() {
        let dir = tempfile::tempdir().expect("dir");
        let read = |contents: &str, mode: u32| read_token(&token_file(dir.path(), contents, mode));
        assert_eq!(
            read(&format!("{TOKEN}\n"), 0o600).expect("ok").as_str(),
            TOKEN
        );
        assert_eq!(
            read(&format!("\n  {TOKEN}  \r\n\n"), 0o400)
                .expect("ok")
                .as_str(),
            TOKEN
        );
        let secretish = "enr1_SECRETSECRETSECRETSECRETSECRETSECRETSECRE";
        for (contents, mode, why) in [
            (format!("{secretish}\n"), 0o644, "chmod 600"),
            (String::new(), 0o600, "is empty"),
            (
                format!("{secretish}\n{secretish}\n"),
                0o600,
                "more than one line",
            ),
            (format!("{secretish}X\n"), 0o600, "does not hold"),
            (
                "enr2_SECRETSECRETSECRETSECRETSECRETSECRETSECRE".into(),
                0o600,
                "does not hold",
            ),
            (
                "enr1_SECRET SECRETSECRETSECRETSECRETSECRETSECR".into(),
                0o600,
                "does not hold",
            ),
        ] {
            let e = read(&contents, mode).expect_err(why).to_string();
            assert!(e.contains(why), "{why}: {e}");
            assert!(!e.contains("SECRET"), "the token leaked: {e}");
        }
    }
}
