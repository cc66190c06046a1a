//! [`ReloadingTls`]: the server certificate, key, client CA, admin CA and
//! CRLs, re-read when their files change, swapped in for new connections
//! only.
//!
//! Certificates from cert-manager or SPIRE live an hour or less, so the
//! signer follows its files instead of reading them once. Every
//! [`ReloadingTls::reload`] reads the three files; when their contents
//! differ from what is served, it builds complete rustls configs from them
//! and swaps them in. A TLS handshake takes the configs current when it
//! starts ([`ReloadingTls::current`]), so connections already established
//! keep the session they negotiated and their in-flight calls are never
//! touched; their client certificates are verified again against the new
//! material on their next call ([`crate::listener::peer::IdentityCache`]), so a
//! revocation reaches them too. Material that does not build (unparsable PEM, a key that does
//! not fit the certificate, an empty CA bundle, a loose key file, an admin
//! CA bundle sharing a certificate with the client CA bundle, a CRL past
//! its nextUpdate under `server.crl_expired = "refuse"`) is refused with
//! one error log line per distinct content, and the previous material
//! stays in use. Each CA certificate's SHA-256 fingerprint is logged when
//! material is loaded, so an operator sees which CAs are trusted.
//!
//! The gRPC listener requires a client certificate in the handshake: a
//! peer without one (or with one of neither CA, or revoked) is refused
//! before it can open a single HTTP/2 stream, so it holds nothing a device
//! needs beyond its handshake's few seconds.
//!
//! With `[ca]`, the signer's own CA (kept in the registry, not in a file)
//! is trusted for device certificates beside the client CA bundle
//! ([`ReloadingTls::set_own_ca`]), and every client certificate is looked
//! up in the registry's revocations at the handshake ([`RevocationAware`]):
//! a certificate revoked on any replica is refused on new connections at
//! once, and on open ones at their next call.
//!
//! Files are polled ([`watch`]) rather than watched with inotify: a
//! Kubernetes Secret volume replaces its files by swapping a symlink to a
//! new directory, which a watch on the file misses; three small reads every
//! few seconds notice every kind of update (rename, symlink swap, in-place
//! write). The binary also reloads on SIGHUP.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, pem::PemObject},
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use x509_parser::{certificate::X509Certificate, prelude::FromDer};
use zeroize::Zeroizing;

use crate::{
    config::{CrlExpired, ServerConfig},
    error::{Result, SignerError},
    key_file,
    listener::metrics::Metrics,
};

/// Numbers [`TlsGeneration`]s: process-wide, so that two signers in one
/// process (tests) never share a number for different material.
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The gRPC listener's ALPN protocol: HTTP/2 only.
const ALPN_H2: &[u8] = b"h2";

/// One complete generation of server TLS material.
pub struct TlsGeneration {
    /// The gRPC listener's config: a client certificate is required in the
    /// handshake, chaining to the client CA or the admin CA and not
    /// revoked; a peer without one is refused before any HTTP/2 (health
    /// and reflection without a certificate are on the plain health port
    /// only, which serves health alone).
    pub grpc: Arc<rustls::ServerConfig>,
    /// The metrics listener's config: a certificate of the client CA is
    /// required.
    pub metrics: Arc<rustls::ServerConfig>,
    /// The enrollment listener's config (`[ca] enroll_listen`): the
    /// server's certificate, no client certificate (a device being
    /// enrolled has none; its token is checked per call).
    pub enroll: Arc<rustls::ServerConfig>,
    /// With `server.admin_ca`: verifies that an admin's certificate chains
    /// to the admin CA (the handshake accepted it from either CA), with
    /// the CRLs; `None`: admins come from the client CA.
    pub admin: Option<Arc<dyn ClientCertVerifier>>,
    /// Verifies a certificate against the client CA with the CRLs. The
    /// handshake's check holds for the material of its day only, and a
    /// connection outlives it: every call's certificate is checked again
    /// against the current generation ([`crate::listener::peer::IdentityCache`]),
    /// so a device revoked or expired since is refused on the connection
    /// it already has. Devices come from the client CA only, never from
    /// the admin CA the handshake also accepts.
    pub clients: Arc<dyn ClientCertVerifier>,
    /// This generation's number, increasing: what a certificate was last
    /// checked against.
    pub number: u64,
    /// The served certificate's serial number (hex, `:`-separated), for
    /// logs.
    pub serial: String,
    /// The served certificate's notAfter, seconds since the epoch (the
    /// expiry metric).
    pub not_after: i64,
    /// The served certificate's notBefore, seconds since the epoch: with
    /// `not_after`, its lifetime, so an alert can tell a short-lived
    /// certificate renewing on time from a long one left to expire.
    pub not_before: i64,
    /// Every trusted CA certificate (client CA, admin CA), logged with its
    /// SHA-256 fingerprint when this material is loaded: which CAs a
    /// signer trusts is visible in its log.
    pub cas: Vec<CaCertificate>,
    /// The earliest nextUpdate of the CRLs, seconds since the epoch (none:
    /// no CRL, or none says): past it, the watcher warns once.
    pub crl_next_update: Option<i64>,
    /// CRLs past their nextUpdate when this material was built (under
    /// `crl_expired = "warn"`; `refuse` does not build): logged by whoever
    /// installs it.
    pub stale_crls: Vec<String>,
    /// SHA-256 over the three files' contents: what was loaded, to tell
    /// whether the files changed since.
    digest: [u8; 32],
}

/// One trusted CA certificate, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCertificate {
    /// `client_ca` or `admin_ca`: which bundle it is in.
    pub bundle: &'static str,
    /// SHA-256 of its DER, hex with `:`.
    pub sha256: String,
    /// Its subject, as the certificate says it.
    pub subject: String,
}

impl TlsGeneration {
    /// Logs the CAs and any stale CRL of this material (at load and at
    /// each reload).
    fn log_material(&self) {
        for ca in &self.cas {
            tracing::info!(
                bundle = ca.bundle,
                sha256 = %ca.sha256,
                subject = %ca.subject,
                "trusted CA certificate"
            );
        }
        for stale in &self.stale_crls {
            tracing::warn!(
                crl = %stale,
                "a CRL is past its nextUpdate; still used (server.crl_expired = \"warn\")"
            );
        }
    }
}

/// What a [`ReloadingTls::reload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The files hold what is served already.
    Unchanged,
    /// New material is served to new connections.
    Reloaded {
        /// The new certificate's serial number.
        serial: String,
    },
    /// The files changed but do not build; the previous material stays.
    /// `reason` says why (never a key's bytes).
    Refused {
        /// Why the material was refused.
        reason: String,
    },
}

/// The server TLS material, following its files.
pub struct ReloadingTls {
    /// Where the certificate chain, key and client CA are read from.
    paths: TlsPaths,
    /// What new handshakes use.
    current: RwLock<Arc<TlsGeneration>>,
    /// What was refused last (the contents' digest, or a read error's): a
    /// broken or missing file is logged once, not on every poll.
    last_refused: Mutex<Option<[u8; 32]>>,
    /// The served certificate's expiry and the reload outcomes.
    metrics: Metrics,
    /// What a CRL past its nextUpdate does to the material.
    crl_expired: CrlExpired,
    /// The generation whose CRLs were last reported past their nextUpdate
    /// by [`ReloadingTls::check_crl_expiry`]: warned once, not per poll.
    crl_warned: std::sync::atomic::AtomicU64,
    /// The generation and state (`expiring`, `expired`) of the served
    /// certificate last warned about by [`ReloadingTls::check_cert_expiry`]:
    /// once per change, not per poll.
    expiry_warned: Mutex<Option<(u64, &'static str)>>,
    /// The signer's own CA chain (DER, CA first) with `[ca]`, trusted for
    /// device certificates: it lives in the registry, not in a file.
    own_ca: Mutex<Vec<Vec<u8>>>,
    /// Where a handshake looks up whether a client certificate is revoked
    /// (with `[ca]`); `None`: only the CRL files count.
    revocations: Option<Arc<dyn enos_registry::Registry>>,
}

/// The three files of [`ReloadingTls`].
#[derive(Debug, Clone)]
struct TlsPaths {
    /// Server certificate chain (PEM).
    cert: PathBuf,
    /// Server private key (PEM), mode 0600 (or root-owned 0640).
    key: PathBuf,
    /// Client CA bundle (PEM), one or more certificates.
    client_ca: PathBuf,
    /// Admin CA bundle (PEM), when admins have a CA of their own.
    admin_ca: Option<PathBuf>,
    /// CRL files (PEM or DER).
    crls: Vec<PathBuf>,
}

/// The files' contents, as read.
struct Contents {
    /// Certificate chain PEM.
    cert: Vec<u8>,
    /// Private key PEM; wiped on drop.
    key: Zeroizing<Vec<u8>>,
    /// Client CA PEM.
    client_ca: Vec<u8>,
    /// Admin CA PEM, when configured.
    admin_ca: Option<Vec<u8>>,
    /// Each CRL file's bytes.
    crls: Vec<Vec<u8>>,
}

impl Contents {
    fn read(paths: &TlsPaths) -> Result<Self> {
        key_file::check_permissions(&paths.key)?;
        Ok(Contents {
            cert: read(&paths.cert, "reading server certificate")?,
            key: Zeroizing::new(read(&paths.key, "reading server key")?),
            client_ca: read(&paths.client_ca, "reading client CA")?,
            admin_ca: paths
                .admin_ca
                .as_deref()
                .map(|p| read(p, "reading admin CA"))
                .transpose()?,
            crls: paths
                .crls
                .iter()
                .map(|p| read(p, "reading CRL"))
                .collect::<Result<_>>()?,
        })
    }

    /// SHA-256 over every content, each length-prefixed (an absent admin
    /// CA and an empty one differ: a marker byte).
    fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        let admin_ca = self.admin_ca.as_deref();
        hasher.update([u8::from(admin_ca.is_some())]);
        let parts = [&self.cert[..], &self.key[..], &self.client_ca[..]]
            .into_iter()
            .chain(admin_ca)
            .chain(self.crls.iter().map(Vec::as_slice));
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        hasher.finalize().into()
    }
}

fn read(path: &Path, action: &'static str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| SignerError::Io {
        action,
        path: path.to_owned(),
        cause: source,
    })
}

impl ReloadingTls {
    /// Reads and builds the material the config names; fails when it does
    /// not build (the signer does not start without TLS).
    pub fn load(
        config: &ServerConfig,
        metrics: Metrics,
        revocations: Option<Arc<dyn enos_registry::Registry>>,
    ) -> Result<Self> {
        let paths = TlsPaths {
            cert: config.cert.clone(),
            key: config.key.clone(),
            client_ca: config.client_ca.clone(),
            admin_ca: config.admin_ca.clone(),
            crls: config.crls.clone(),
        };
        let generation = build(
            &Contents::read(&paths)?,
            &[],
            revocations.as_ref(),
            config.crl_expired,
        )?;
        generation.log_material();
        metrics.set_server_cert_expiry(generation.not_after);
        metrics.set_server_cert_not_before(generation.not_before);
        let tls = ReloadingTls {
            paths,
            current: RwLock::new(Arc::new(generation)),
            last_refused: Mutex::new(None),
            metrics,
            crl_expired: config.crl_expired,
            crl_warned: std::sync::atomic::AtomicU64::new(0),
            expiry_warned: Mutex::new(None),
            own_ca: Mutex::new(Vec::new()),
            revocations,
        };
        tls.check_cert_expiry();
        Ok(tls)
    }

    /// Warns when the served certificate has expired or expires within
    /// 7 days (once per certificate and state: at start, at a reload, and
    /// when the watcher's poll sees it cross); returns its state (`ok`,
    /// `expiring`, `expired`), which the expiry metric also carries.
    pub fn check_cert_expiry(&self) -> &'static str {
        let current = self.current();
        let now = crate::listener::metrics::unix_now();
        let state = crate::listener::metrics::server_cert_state(current.not_after, now);
        if state == "ok" {
            return state;
        }
        let mut warned = self.expiry_warned.lock().unwrap_or_else(|p| p.into_inner());
        if *warned == Some((current.number, state)) {
            return state;
        }
        *warned = Some((current.number, state));
        let not_after = u64::try_from(current.not_after).map_or_else(
            |_| current.not_after.to_string(),
            |secs| {
                humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs))
                    .to_string()
            },
        );
        if state == "expired" {
            tracing::warn!(
                cert = %self.paths.cert.display(),
                serial = %current.serial,
                not_after = %not_after,
                "the server certificate has expired: clients refuse the handshake; replace server.cert and server.key (they are reloaded)"
            );
        } else {
            let days = (current.not_after - now) / 86_400;
            tracing::warn!(
                cert = %self.paths.cert.display(),
                serial = %current.serial,
                not_after = %not_after,
                "the server certificate expires in {days} days: renew server.cert and server.key (they are reloaded)"
            );
        }
        state
    }

    /// Warns once per generation when a CRL of the served material has
    /// passed its nextUpdate since it was loaded (the files did not
    /// change, so no reload looked at it); true when it has.
    pub fn check_crl_expiry(&self) -> bool {
        use std::sync::atomic::Ordering;
        let current = self.current();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let stale = current.crl_next_update.is_some_and(|next| next < now);
        if stale && self.crl_warned.swap(current.number, Ordering::Relaxed) != current.number {
            tracing::warn!(
                next_update = current.crl_next_update,
                "a served CRL is past its nextUpdate: publish a new one (it is still used)"
            );
        }
        stale
    }

    /// The material a new handshake uses.
    pub fn current(&self) -> Arc<TlsGeneration> {
        // A poisoned lock still holds a complete generation.
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Re-reads the files and swaps new material in when they changed and
    /// build; logs what it did.
    pub fn reload(&self) -> ReloadOutcome {
        let contents = match Contents::read(&self.paths) {
            Ok(c) => c,
            // A missing or unreadable file: logged once per distinct error.
            Err(e) => {
                let key = Sha256::digest(e.to_string().as_bytes()).into();
                return self.refuse(key, &e);
            }
        };
        let own_ca = self
            .own_ca
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let digest = digest_with(contents.digest(), &own_ca);
        if digest == self.current().digest {
            return ReloadOutcome::Unchanged;
        }
        match build(
            &contents,
            &own_ca,
            self.revocations.as_ref(),
            self.crl_expired,
        ) {
            Ok(generation) => {
                let serial = generation.serial.clone();
                tracing::info!(
                    serial = %serial,
                    not_after = generation.not_after,
                    "TLS material reloaded; new connections use the new certificate and client CA"
                );
                generation.log_material();
                self.metrics.set_server_cert_expiry(generation.not_after);
                self.metrics
                    .set_server_cert_not_before(generation.not_before);
                self.metrics.tls_reload("reloaded");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(generation);
                *self.last_refused.lock().unwrap_or_else(|p| p.into_inner()) = None;
                self.check_cert_expiry();
                ReloadOutcome::Reloaded { serial }
            }
            Err(e) => self.refuse(digest, &e),
        }
    }

    /// Trusts `chain` (the signer's own CA, CA first) for device
    /// certificates from now on, rebuilding the material if it changed.
    pub fn set_own_ca(&self, chain: Vec<Vec<u8>>) -> ReloadOutcome {
        {
            let mut own = self.own_ca.lock().unwrap_or_else(|p| p.into_inner());
            if *own == chain {
                return ReloadOutcome::Unchanged;
            }
            *own = chain;
        }
        tracing::info!("the signer's CA changed: rebuilding the TLS material to trust it");
        self.reload()
    }

    /// Logs a refusal once per distinct cause (`key`: the contents'
    /// digest, or the read error's), not on every poll while it lasts.
    fn refuse(&self, key: [u8; 32], error: &SignerError) -> ReloadOutcome {
        let reason = error.to_string();
        let mut last = self.last_refused.lock().unwrap_or_else(|p| p.into_inner());
        if *last != Some(key) {
            tracing::error!(
                error = %reason,
                serving = %self.current().serial,
                "TLS reload refused; still serving the previous certificate and client CA"
            );
            self.metrics.tls_reload("refused");
        }
        *last = Some(key);
        ReloadOutcome::Refused { reason }
    }
}

/// Polls the files every `interval` (none: never) and reloads on change,
/// until `stop`.
pub async fn watch(tls: Arc<ReloadingTls>, interval: Option<Duration>, stop: CancellationToken) {
    let Some(interval) = interval else {
        return;
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {
                let tls = Arc::clone(&tls);
                // File reads and key parsing: off the async workers.
                let _ = tokio::task::spawn_blocking(move || {
                    tls.reload();
                    tls.check_crl_expiry();
                    tls.check_cert_expiry();
                })
                .await;
            }
        }
    }
}

/// Reloads on every SIGHUP (the binary's operators and `systemctl reload`
/// send it), forever.
pub async fn reload_on_sighup(tls: Arc<ReloadingTls>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS files are still polled");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading the TLS material");
        let tls = Arc::clone(&tls);
        if let Ok(ReloadOutcome::Unchanged) =
            tokio::task::spawn_blocking(move || tls.reload()).await
        {
            tracing::info!("TLS files unchanged");
        }
    }
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> SignerError {
    SignerError::Tls(format!("{what}: {e}"))
}

/// The certificates of a CA bundle (PEM); at least one.
fn bundle(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(what, e))?;
    if certs.is_empty() {
        return Err(tls_error(what, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

/// `certs`, added to `roots`.
fn add_roots(
    roots: &mut RootCertStore,
    certs: &[CertificateDer<'static>],
    what: &str,
) -> Result<()> {
    for cert in certs {
        roots.add(cert.clone()).map_err(|e| tls_error(what, e))?;
    }
    Ok(())
}

/// SHA-256 of `der`, hex bytes joined by `:` (as `openssl x509
/// -fingerprint -sha256` prints it).
fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// Each certificate of `certs` (bundle `bundle`) for the log, with its
/// public key (what makes two certificates the same CA).
fn describe(
    certs: &[CertificateDer<'static>],
    bundle: &'static str,
) -> Result<Vec<(CaCertificate, Vec<u8>)>> {
    certs
        .iter()
        .map(|der| {
            let (_, cert) =
                X509Certificate::from_der(der.as_ref()).map_err(|e| tls_error(bundle, e))?;
            Ok((
                CaCertificate {
                    bundle,
                    sha256: fingerprint(der.as_ref()),
                    subject: cert.subject().to_string(),
                },
                cert.public_key().raw.to_vec(),
            ))
        })
        .collect()
}

/// Refuses an admin CA bundle that shares a certificate (or a CA key) with
/// the client CA bundle: a certificate of that CA would then be both a
/// device's and an admin's, and the admin separation would be gone.
fn refuse_overlap(
    clients: &[(CaCertificate, Vec<u8>)],
    admins: &[(CaCertificate, Vec<u8>)],
) -> Result<()> {
    for (admin, admin_key) in admins {
        for (client, client_key) in clients {
            if admin.sha256 == client.sha256 || admin_key == client_key {
                return Err(tls_error(
                    "admin CA",
                    format!(
                        "shares a CA with the client CA bundle (admin_ca SHA-256 {}, client_ca SHA-256 {}): \
                         admins would not be separated from devices; the two bundles must hold distinct CAs",
                        admin.sha256, client.sha256
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The nextUpdate of each CRL (seconds since the epoch), with its issuer.
fn crl_next_updates(
    crls: &[CertificateRevocationListDer<'static>],
) -> Result<Vec<(String, Option<i64>)>> {
    use x509_parser::revocation_list::CertificateRevocationList;
    crls.iter()
        .map(|der| {
            let (_, crl) = CertificateRevocationList::from_der(der.as_ref())
                .map_err(|e| tls_error("CRL", e))?;
            Ok((
                crl.issuer().to_string(),
                crl.next_update().map(|t| t.timestamp()),
            ))
        })
        .collect()
}

/// The CRLs of one file: its `X509 CRL` PEM blocks, or the file as one DER
/// list.
fn parse_crls(bytes: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let pem: Vec<_> = CertificateRevocationListDer::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| tls_error("CRL", e))?;
    if !pem.is_empty() {
        return Ok(pem);
    }
    if bytes.first() == Some(&0x30) {
        return Ok(vec![CertificateRevocationListDer::from(bytes.to_vec())]);
    }
    Err(tls_error("CRL", "neither an X509 CRL PEM block nor DER"))
}

/// A client verifier over `roots` with `crls`. A CA with no list is not
/// checked for revocation (`allow_unknown_revocation_status`): the lists
/// given are enforced, the others are not invented.
fn verifier(
    roots: RootCertStore,
    crls: &[CertificateRevocationListDer<'static>],
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>> {
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls.iter().cloned())
        .allow_unknown_revocation_status()
        .build()
        .map_err(|e| tls_error("client verifier", e))
}

/// Both listeners' configs (and the admin verifier) from the files'
/// contents; `crl_expired` says whether a CRL past its nextUpdate refuses
/// them.
fn build(
    contents: &Contents,
    own_ca: &[Vec<u8>],
    revocations: Option<&Arc<dyn enos_registry::Registry>>,
    crl_expired: CrlExpired,
) -> Result<TlsGeneration> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let client_certs = bundle(&contents.client_ca, "client CA")?;
    let mut client_roots = RootCertStore::empty();
    add_roots(&mut client_roots, &client_certs, "client CA")?;
    let mut client_cas = describe(&client_certs, "client_ca")?;
    // The signer's own CA issues device certificates: its issuing
    // certificate is a trust anchor beside the bundle.
    if let Some(issuing) = own_ca.first() {
        let issuing = vec![CertificateDer::from(issuing.clone())];
        add_roots(&mut client_roots, &issuing, "the signer's CA")?;
        client_cas.extend(describe(&issuing, "signer_ca")?);
    }
    let mut crls = Vec::new();
    for file in &contents.crls {
        crls.extend(parse_crls(file)?);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let next_updates = crl_next_updates(&crls)?;
    let stale_crls: Vec<String> = next_updates
        .iter()
        .filter_map(|(issuer, next)| match next {
            Some(next) if *next < now => Some(format!("issuer {issuer}, nextUpdate {next}")),
            _ => None,
        })
        .collect();
    if let (Some(stale), CrlExpired::Refuse) = (stale_crls.first(), crl_expired) {
        return Err(tls_error(
            "CRL",
            format!(
                "past its nextUpdate ({stale}; server.crl_expired = \"refuse\"): publish a fresh CRL"
            ),
        ));
    }
    let crl_next_update = next_updates.iter().filter_map(|(_, next)| *next).min();
    // The gRPC handshake accepts both CAs; which one an admin comes from is
    // checked per call ([`TlsGeneration::admin`]).
    let mut grpc_roots = client_roots.clone();
    let mut cas: Vec<CaCertificate> = client_cas.iter().map(|(ca, _)| ca.clone()).collect();
    let admin = match &contents.admin_ca {
        Some(pem) => {
            let admin_certs = bundle(pem, "admin CA")?;
            let admin_cas = describe(&admin_certs, "admin_ca")?;
            refuse_overlap(&client_cas, &admin_cas)?;
            cas.extend(admin_cas.into_iter().map(|(ca, _)| ca));
            let mut admin_roots = RootCertStore::empty();
            add_roots(&mut admin_roots, &admin_certs, "admin CA")?;
            add_roots(&mut grpc_roots, &admin_certs, "admin CA")?;
            Some(verifier(admin_roots, &crls, &provider)?)
        }
        None => None,
    };

    let chain = CertificateDer::pem_slice_iter(&contents.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error("server certificate", e))?;
    let leaf = chain
        .first()
        .ok_or_else(|| tls_error("server certificate", "no CERTIFICATE block found"))?;
    let (_, parsed) =
        X509Certificate::from_der(leaf.as_ref()).map_err(|e| tls_error("server certificate", e))?;
    let serial = parsed.tbs_certificate.raw_serial_as_string();
    let not_after = parsed.validity().not_after.timestamp();
    let not_before = parsed.validity().not_before.timestamp();
    // The parser's message could quote the PEM: never say more than this.
    let key = || {
        PrivateKeyDer::from_pem_slice(&contents.key)
            .map_err(|_| SignerError::Tls("server key: not a PEM private key".into()))
    };

    let grpc_verifier = RevocationAware::wrap(verifier(grpc_roots, &crls, &provider)?, revocations);
    let mut grpc = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("protocol versions", e))?
        .with_client_cert_verifier(grpc_verifier)
        .with_single_cert(chain.clone(), key()?)
        .map_err(|e| tls_error("server certificate/key", e))?;
    grpc.alpn_protocols = vec![ALPN_H2.to_vec()];

    let clients = RevocationAware::wrap(verifier(client_roots, &crls, &provider)?, revocations);
    let mut enroll = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("protocol versions", e))?
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key()?)
        .map_err(|e| tls_error("server certificate/key", e))?;
    enroll.alpn_protocols = vec![ALPN_H2.to_vec()];
    let metrics = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("protocol versions", e))?
        .with_client_cert_verifier(clients.clone())
        .with_single_cert(chain, key()?)
        .map_err(|e| tls_error("server certificate/key", e))?;

    Ok(TlsGeneration {
        grpc: Arc::new(grpc),
        metrics: Arc::new(metrics),
        enroll: Arc::new(enroll),
        admin,
        clients,
        number: GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        serial,
        not_after,
        not_before,
        cas,
        crl_next_update,
        stale_crls,
        digest: digest_with(contents.digest(), own_ca),
    })
}

/// The digest of the files' contents and the signer's own CA together:
/// what a generation was built from.
fn digest_with(files: [u8; 32], own_ca: &[Vec<u8>]) -> [u8; 32] {
    if own_ca.is_empty() {
        return files;
    }
    let mut hasher = Sha256::new();
    hasher.update(files);
    for der in own_ca {
        hasher.update((der.len() as u64).to_be_bytes());
        hasher.update(der);
    }
    hasher.finalize().into()
}

/// A client verifier that also refuses a certificate the registry lists
/// as revoked (the signer's own CA's revocations, from any replica). The
/// handshake cannot wait for a database: it asks the registry's in-memory
/// revocations ([`enos_registry::Registry::revoked_cached`]); when those
/// cannot be trusted (the change feed is down) the handshake lets the
/// certificate through and its first call checks the database.
struct RevocationAware {
    /// The chain, validity and CRL checks.
    inner: Arc<dyn ClientCertVerifier>,
    /// The revocations.
    registry: Arc<dyn enos_registry::Registry>,
}

impl std::fmt::Debug for RevocationAware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationAware").finish_non_exhaustive()
    }
}

impl RevocationAware {
    /// `inner`, with the registry's revocations when there is one.
    fn wrap(
        inner: Arc<dyn ClientCertVerifier>,
        registry: Option<&Arc<dyn enos_registry::Registry>>,
    ) -> Arc<dyn ClientCertVerifier> {
        match registry {
            Some(registry) => Arc::new(RevocationAware {
                inner,
                registry: Arc::clone(registry),
            }),
            None => inner,
        }
    }
}

/// A certificate's serial (its raw DER integer bytes) as the registry
/// keys it: lower-case hex, no leading zero bytes.
pub fn serial_hex(raw_serial: &[u8]) -> String {
    let start = raw_serial
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw_serial.len().saturating_sub(1));
    raw_serial[start..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl ClientCertVerifier for RevocationAware {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let serial = X509Certificate::from_der(end_entity.as_ref())
            .map(|(_, cert)| serial_hex(cert.tbs_certificate.raw_serial()));
        if let Ok(serial) = serial
            && self.registry.revoked_cached(&serial) == Some(true)
        {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A server config with a fresh server certificate of `pki` and its CA
    /// as the client CA, files in `dir`.
    pub(crate) fn server_config(dir: &Path, pki: &enos_testkit::Pki) -> ServerConfig {
        let server = pki
            .server(&[])
            .expect("server cert")
            .write(dir, "server")
            .expect("write");
        ServerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            cert: server.cert,
            key: server.key,
            client_ca: pki.write_ca(dir).expect("ca"),
            drain_timeout: Duration::from_secs(1),
            worker_threads: None,
            tls_reload_interval: Duration::ZERO,
            limits: Default::default(),
            admin_ca: None,
            admin_names: Vec::new(),
            crls: Vec::new(),
            crl_expired: Default::default(),
        }
    }

    #[test]
    fn finding_11_admin_and_client_ca_bundles_that_share_a_ca_are_refused_at_load_and_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = enos_testkit::Pki::new("overlap-clients").expect("pki");
        let admins = enos_testkit::Pki::new("overlap-admins").expect("pki");
        let mut config = server_config(dir.path(), &pki);
        let admin_ca = dir.path().join("admins.pem");
        config.admin_ca = Some(admin_ca.clone());

        // The client CA file copied over the admin CA (a swapped file), or
        // a bundle holding both: refused at start, naming the fingerprint.
        let fingerprint_of = |pem: &str| {
            fingerprint(
                CertificateDer::from_pem_slice(pem.as_bytes())
                    .expect("pem")
                    .as_ref(),
            )
        };
        let shared = fingerprint_of(pki.ca_pem());
        for bundle in [
            pki.ca_pem().to_owned(),
            format!("{}{}", admins.ca_pem(), pki.ca_pem()),
        ] {
            std::fs::write(&admin_ca, &bundle).expect("write");
            let Err(refused) = ReloadingTls::load(&config, Metrics::new(), None) else {
                panic!("overlapping bundles loaded");
            };
            let refused = refused.to_string();
            assert!(
                refused.contains("shares a CA with the client CA") && refused.contains(&shared),
                "{refused}"
            );
        }

        // Distinct CAs load, and every CA is listed with its fingerprint.
        std::fs::write(&admin_ca, admins.ca_pem()).expect("write");
        let tls = ReloadingTls::load(&config, Metrics::new(), None).expect("distinct CAs load");
        let cas = &tls.current().cas;
        assert_eq!(
            cas.iter()
                .map(|ca| (ca.bundle, ca.sha256.clone()))
                .collect::<Vec<_>>(),
            [
                ("client_ca", shared.clone()),
                ("admin_ca", fingerprint_of(admins.ca_pem())),
            ]
        );
        let serving = tls.current().number;

        // A reload that would overlap is refused; the old material stays.
        std::fs::write(&admin_ca, pki.ca_pem()).expect("write");
        let ReloadOutcome::Refused { reason } = tls.reload() else {
            panic!("an overlapping reload was accepted");
        };
        assert!(reason.contains("shares a CA"), "{reason}");
        assert_eq!(tls.current().number, serving, "the old material stays");
    }

    #[test]
    fn finding_11_a_crl_past_its_next_update_warns_by_default_and_refuses_when_configured() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = enos_testkit::Pki::new("stale-crl").expect("pki");
        let mut config = server_config(dir.path(), &pki);
        let crl = dir.path().join("clients.crl");
        config.crls = vec![crl.clone()];
        std::fs::write(&crl, pki.crl_pem_until(1, &[], 2021).expect("crl")).expect("write");

        // warn (the default): loads, and says which list is stale.
        let tls = ReloadingTls::load(&config, Metrics::new(), None).expect("loads with a warning");
        let generation = tls.current();
        assert_eq!(
            generation.stale_crls.len(),
            1,
            "{:?}",
            generation.stale_crls
        );
        assert!(
            tls.check_crl_expiry(),
            "the served list is past its nextUpdate"
        );

        // refuse: no start.
        config.crl_expired = CrlExpired::Refuse;
        let Err(refused) = ReloadingTls::load(&config, Metrics::new(), None) else {
            panic!("a stale CRL loaded under refuse");
        };
        assert!(refused.to_string().contains("nextUpdate"), "{refused}");

        // refuse: a fresh list loads; a stale one on reload is refused and
        // the fresh one stays.
        std::fs::write(&crl, pki.crl_pem(2, &[]).expect("crl")).expect("write");
        let tls = ReloadingTls::load(&config, Metrics::new(), None).expect("a fresh CRL loads");
        assert!(tls.current().stale_crls.is_empty());
        assert!(!tls.check_crl_expiry());
        let serving = tls.current().number;
        std::fs::write(&crl, pki.crl_pem_until(3, &[], 2021).expect("crl")).expect("write");
        let ReloadOutcome::Refused { reason } = tls.reload() else {
            panic!("a stale CRL was reloaded under refuse");
        };
        assert!(reason.contains("crl_expired"), "{reason}");
        assert_eq!(tls.current().number, serving);
    }

    /// #29 item 1: a server certificate that expires within 7 days, or
    /// has expired, is warned about and marked in the expiry metric.
    #[test]
    fn a_server_certificate_near_or_past_its_end_is_warned_about_and_marked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = enos_testkit::Pki::new("expiring-server").expect("pki");
        let config = server_config(dir.path(), &pki);
        let metrics = Metrics::new();
        let tls = ReloadingTls::load(&config, metrics.clone(), None).expect("loads");
        assert_eq!(tls.check_cert_expiry(), "ok");
        let now = std::time::SystemTime::now();
        for (not_after, state) in [
            (now + Duration::from_secs(3 * 86_400), "expiring"),
            (now - Duration::from_secs(86_400), "expired"),
        ] {
            let server = pki.server_valid_until(not_after).expect("cert");
            std::fs::write(&config.cert, &server.cert_pem).expect("write");
            enos_testkit::write_private(&config.key, server.key_pem.as_bytes()).expect("write");
            assert!(matches!(tls.reload(), ReloadOutcome::Reloaded { .. }));
            assert_eq!(tls.check_cert_expiry(), state);
            let text = metrics.encode();
            assert!(
                text.contains(&format!(
                    "enos_signer_tls_server_cert_expiry_timestamp_seconds{{state=\"{state}\"}} {}",
                    tls.current().not_after
                )),
                "{text}"
            );
            // At start too: a signer loading it warns and marks it.
            let fresh = Metrics::new();
            let loaded = ReloadingTls::load(&config, fresh.clone(), None).expect("loads");
            assert_eq!(loaded.check_cert_expiry(), state);
            assert!(fresh.encode().contains(&format!("state=\"{state}\"")));
        }
    }

    #[test]
    fn changed_files_reload_broken_ones_are_refused_and_the_old_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = enos_testkit::Pki::new("reload-unit").expect("pki");
        let config = server_config(dir.path(), &pki);
        let metrics = Metrics::new();
        let tls = ReloadingTls::load(&config, metrics.clone(), None).expect("loads");
        let first = tls.current().serial.clone();
        assert_eq!(tls.reload(), ReloadOutcome::Unchanged);
        assert!(metrics.encode().contains(&format!(
            "enos_signer_tls_server_cert_expiry_timestamp_seconds{{state=\"ok\"}} {}",
            tls.current().not_after
        )));

        // A new certificate (new serial) with its key.
        let next = pki.server(&[]).expect("cert");
        std::fs::write(&config.cert, &next.cert_pem).expect("write");
        enos_testkit::write_private(&config.key, next.key_pem.as_bytes()).expect("write");
        let ReloadOutcome::Reloaded { serial } = tls.reload() else {
            panic!("not reloaded");
        };
        assert_ne!(serial, first);
        assert_eq!(tls.current().serial, serial);

        // A certificate without its key: refused, the new one stays.
        let other = pki.server(&[]).expect("cert");
        std::fs::write(&config.cert, &other.cert_pem).expect("write");
        let ReloadOutcome::Refused { reason } = tls.reload() else {
            panic!("a mismatched key is refused");
        };
        assert!(reason.contains("server certificate/key"), "{reason}");
        assert_eq!(tls.current().serial, serial);
        // Garbage: refused without quoting it.
        std::fs::write(&config.cert, "-----BEGIN CERTIFICATE-----\nnot base64!\n").expect("w");
        assert!(matches!(tls.reload(), ReloadOutcome::Refused { .. }));
        enos_testkit::write_private(&config.key, b"SECRET-KEY-BYTES").expect("write");
        let ReloadOutcome::Refused { reason } = tls.reload() else {
            panic!("refused");
        };
        assert!(!reason.contains("SECRET-KEY-BYTES"), "{reason}");
        // An empty client CA bundle: refused.
        std::fs::write(&config.cert, &next.cert_pem).expect("write");
        enos_testkit::write_private(&config.key, next.key_pem.as_bytes()).expect("write");
        std::fs::write(&config.client_ca, "").expect("write");
        let ReloadOutcome::Refused { reason } = tls.reload() else {
            panic!("refused");
        };
        assert!(reason.contains("client CA"), "{reason}");
        assert_eq!(tls.current().serial, serial);
        // The same broken file again: refused, not counted (or logged) again.
        assert!(matches!(tls.reload(), ReloadOutcome::Refused { .. }));
        // A missing file: refused once too.
        std::fs::remove_file(&config.client_ca).expect("remove");
        assert!(matches!(tls.reload(), ReloadOutcome::Refused { .. }));
        assert!(matches!(tls.reload(), ReloadOutcome::Refused { .. }));
        let refused = metrics.encode();
        assert!(
            refused.contains("enos_signer_tls_reloads_total{outcome=\"refused\"} 5"),
            "{refused}"
        );
    }
}
