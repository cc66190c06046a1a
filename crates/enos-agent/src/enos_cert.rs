//! The EnOS device certificate brokered by the signer (`[enos.tls]
//! source = "signer"`, issue 26): the key is made here, EnOS's
//! certificate comes through the signer (which alone holds the EnOS API
//! credential), and `run` renews it, with no operator.
//!
//! - **Apply.** When `run` starts and `[enos.tls]` `cert`/`key` do not
//!   hold a pair, it makes a P-256 key (a 0600 file or in the `pkcs11:`
//!   token), asks the signer for the subject its CSR must carry
//!   (`GetEnosCertificateSubject`), sends the CSR
//!   (`ApplyEnosCertificate`) and writes the pair through [`crate::pair`]
//!   before the first connect. Failures are retried with `[backoff]`.
//! - **Renew.** At `[renewal] at` ± `jitter` of its lifetime (the same
//!   schedule as the signer certificate's, [`crate::renewal`]): a new key
//!   as a candidate, `RenewEnosCertificate` with the current `certSN`
//!   (the certificate's serial), the candidate written beside the pair.
//! - **Proof.** The EnOS session reconnects **once** with the candidate:
//!   its CONNECT → CONNACK is the proof (the broker binds a certificate to
//!   its device at CONNECT, so a handshake alone would prove less, and
//!   EnOS keeps one session per device, so a separate proof connection
//!   would drop the live one anyway). Refused: the candidate is
//!   discarded, the session goes back to the current pair.
//! - **Promote, then retire.** The old serial is noted in
//!   `{cert}.superseded`, the candidate promoted, and the old serial
//!   revoked SUPERSEDED through the signer (`RetireEnosCertificate`; already revoked is done). A retire
//!   that fails is retried, also after a restart (the note stays).
//!
//! Any failure keeps the current certificate and retries with `[backoff]`
//! (the signer answers UNAVAILABLE when EnOS is unreachable or says
//! 99500). An expired certificate cannot be renewed (EnOS refuses): a new
//! one is applied for.

use std::{path::PathBuf, time::Duration};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::{Backoff, FailureKind},
    certificate::{CertificateInfo, read_serial},
    config::{Config, EnosCertSource, MqttTlsConfig},
    error::{AgentError, SignerClientError},
    pair::{self, NewKey, PairPaths},
    renewal::{renewal_of_file, rfc3339},
    shared::Shared,
    signer::SignerClient,
    status::EnosCertificateStatus,
};

/// How often the certificate is read again while waiting.
const RECHECK: Duration = Duration::from_secs(60);

/// A candidate the EnOS session proves with its next connect; the
/// session answers on `reply` (the reason when refused).
#[derive(Debug)]
pub struct CandidateProof {
    /// `[enos.tls]` pointing at the candidate files.
    pub tls: MqttTlsConfig,
    /// Where the session says how the connect ended.
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// The pair `[enos.tls]` names.
pub fn pair_of(tls: &MqttTlsConfig) -> PairPaths {
    PairPaths {
        cert: tls.cert.clone(),
        key: tls.key.clone(),
    }
}

/// `{cert}.superseded`: the serial still to revoke after a promotion.
fn superseded_note(tls: &MqttTlsConfig) -> PathBuf {
    let mut name = tls.cert.as_os_str().to_owned();
    name.push(".superseded");
    PathBuf::from(name)
}

/// The `[enos.tls]` of `config` when the signer brokers its certificate.
fn managed(config: &Config) -> Option<&MqttTlsConfig> {
    config
        .enos
        .tls
        .as_ref()
        .filter(|t| t.source == EnosCertSource::Signer)
}

/// Why one attempt failed, and how to back off.
struct Failed(FailureKind, String);

impl From<SignerClientError> for Failed {
    fn from(e: SignerClientError) -> Self {
        let kind = if e.is_unavailable() {
            FailureKind::Network
        } else {
            FailureKind::Refused
        };
        Failed(kind, e.to_string())
    }
}

impl From<AgentError> for Failed {
    fn from(e: AgentError) -> Self {
        Failed(FailureKind::Network, e.to_string())
    }
}

/// Before the first connect: makes sure `[enos.tls]` holds a pair when
/// the signer brokers it, applying for one (with backoff) if not.
/// `false` when shut down first.
pub async fn ensure<S: SignerClient>(
    config: &Config,
    signer: &S,
    shutdown: &CancellationToken,
) -> Result<bool, AgentError> {
    let Some(tls) = managed(config) else {
        return Ok(true);
    };
    let pair = pair_of(tls);
    pair::recover(&pair)?;
    if pair.cert.exists() && pair::check_pair(&pair).is_ok() {
        return Ok(true);
    }
    let mut backoff = Backoff::new(config.backoff.clone());
    loop {
        tracing::info!(cert = %pair.cert.display(), "no EnOS device certificate yet; applying for one through the signer");
        let attempt = tokio::select! {
            r = obtain(signer, &pair, None) => r,
            () = shutdown.cancelled() => return Ok(false),
        };
        match attempt {
            Ok((sn, not_after_ms)) => {
                pair::promote(&pair)?;
                tracing::info!(
                    cert_sn = %sn,
                    not_after = %rfc3339(not_after_ms),
                    cert = %pair.cert.display(),
                    "EnOS device certificate applied for through the signer"
                );
                return Ok(true);
            }
            Err(Failed(kind, reason)) => {
                let delay = backoff.next_delay(kind).delay;
                tracing::warn!(
                    reason = %reason,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "could not get an EnOS device certificate; retrying"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return Ok(false),
                }
            }
        }
    }
}

/// A new key and EnOS's certificate for it, written as the candidate
/// (discarded again on failure): Apply, or Renew of `renews`. The
/// serial and `notAfter` of the new certificate.
async fn obtain<S: SignerClient>(
    signer: &S,
    pair: &PairPaths,
    renews: Option<String>,
) -> Result<(String, u64), Failed> {
    pair::recover(pair)?;
    let key = NewKey::generate(&pair.key)?;
    pair::write_candidate_key(pair, &key)?;
    let written = async {
        let subject = signer.enos_certificate_subject().await?;
        let csr = key.csr_pem_with_subject(&subject)?;
        let issued = signer.enos_certificate(csr, renews).await?;
        let info = CertificateInfo::from_pem(issued.cert_pem.as_bytes()).map_err(|reason| {
            Failed(
                FailureKind::Refused,
                format!("EnOS's certificate is unreadable: {reason}"),
            )
        })?;
        pair::check_fits(&key, &pair.candidate_cert(), issued.cert_pem.as_bytes())?;
        pair::write_candidate_cert(pair, issued.cert_pem.as_bytes())?;
        Ok::<_, Failed>((issued.cert_sn, info.not_after_ms))
    }
    .await;
    if written.is_err() {
        pair::discard_candidate(pair)?;
    }
    written
}

/// Asks the EnOS session to connect once with `candidate` and waits for
/// the outcome. Not taken within `wait` (the session cannot connect at
/// all): withdrawn, a failure.
async fn prove_by_reconnect(
    shared: &Shared,
    candidate: MqttTlsConfig,
    wait: Duration,
) -> Result<(), Failed> {
    let (reply, outcome) = oneshot::channel();
    *shared.enos_candidate_slot() = Some(CandidateProof {
        tls: candidate,
        reply,
    });
    shared.enos_candidate_ready.notify_one();
    let mut outcome = std::pin::pin!(outcome);
    let answered = match tokio::time::timeout(wait, &mut outcome).await {
        Ok(answered) => answered,
        Err(_) => {
            if shared.enos_candidate_slot().take().is_some() {
                return Err(Failed(
                    FailureKind::Network,
                    "the EnOS session did not reconnect to prove the new certificate in time"
                        .into(),
                ));
            }
            // Taken: the connect is under way and bounded by its timeout.
            match tokio::time::timeout(wait, outcome).await {
                Ok(answered) => answered,
                Err(_) => {
                    return Err(Failed(
                        FailureKind::Network,
                        "the proof connect did not end in time".into(),
                    ));
                }
            }
        }
    };
    match answered {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(Failed(
            FailureKind::Refused,
            format!("EnOS did not accept the new certificate: {reason}"),
        )),
        Err(_) => Err(Failed(
            FailureKind::Network,
            "the EnOS session stopped before proving the new certificate".into(),
        )),
    }
}

/// The renewal loop's state.
struct Renewer<'a, S> {
    /// Renewal and backoff settings.
    config: &'a Config,
    /// `[enos.tls]`.
    tls: &'a MqttTlsConfig,
    /// The signer, which talks to EnOS.
    signer: &'a S,
    /// The session (proof) and the status.
    shared: &'a Shared,
    /// Retry pacing.
    backoff: Backoff,
    /// After a failure: the certificate (fingerprint) and when to retry.
    retry: Option<(u64, u64)>,
    /// When to try the pending retire again.
    retire_at_ms: u64,
    /// Renewals promoted since start.
    renewals: u64,
    /// The last failure, for the status.
    last_error: Option<String>,
}

/// Runs the EnOS certificate's renewal until `shutdown` (nothing unless
/// `[enos.tls] source = "signer"`).
pub async fn run<S: SignerClient>(
    config: &Config,
    signer: &S,
    shared: &Shared,
    shutdown: CancellationToken,
) {
    let Some(tls) = managed(config) else {
        return;
    };
    let mut renewer = Renewer {
        config,
        tls,
        signer,
        shared,
        backoff: Backoff::new(config.backoff.clone()),
        retry: None,
        retire_at_ms: 0,
        renewals: 0,
        last_error: None,
    };
    while !shutdown.is_cancelled() {
        let wait = tokio::select! {
            wait = renewer.step() => wait,
            () = shutdown.cancelled() => return,
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

impl<S: SignerClient> Renewer<'_, S> {
    fn report(&self, serial: &str, info: &CertificateInfo, next: Option<u64>) {
        let status = EnosCertificateStatus {
            serial: serial.to_owned(),
            not_after_ms: info.not_after_ms,
            next_renewal_ms: next,
            renewals: self.renewals,
            last_error: self.last_error.clone(),
        };
        self.shared.status.send_if_modified(|s| {
            if s.enos_certificate.as_ref() == Some(&status) {
                false
            } else {
                s.enos_certificate = Some(status);
                true
            }
        });
    }

    /// Retires a superseded serial noted by a promotion; `true` when none
    /// is left.
    async fn retire_pending(&mut self, now: u64) -> bool {
        let note = superseded_note(self.tls);
        let Ok(text) = std::fs::read_to_string(&note) else {
            return true;
        };
        if now < self.retire_at_ms {
            return false;
        }
        let serial = text.trim().to_owned();
        if read_serial(&self.tls.cert).is_ok_and(|current| current == serial) {
            // Noted before a promotion that a crash undid: the
            // certificate in use is never retired.
            tracing::warn!(cert_sn = %serial, "the noted superseded EnOS certificate is the one in use (its successor was not promoted); not retiring it");
            let _ = std::fs::remove_file(&note);
            return true;
        }
        match self.signer.retire_enos_certificate(serial.clone()).await {
            Ok(already) => {
                tracing::info!(
                    cert_sn = %serial,
                    already_revoked = already,
                    "retired the superseded EnOS certificate (revoked SUPERSEDED)"
                );
                if let Err(e) = std::fs::remove_file(&note) {
                    tracing::warn!(error = %e, "cannot remove {}", note.display());
                }
                true
            }
            Err(e) => {
                let kind = Failed::from(e);
                let delay = self.backoff.next_delay(kind.0).delay;
                tracing::warn!(
                    cert_sn = %serial,
                    reason = %kind.1,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "could not retire the superseded EnOS certificate; retrying"
                );
                self.retire_at_ms = now + u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                false
            }
        }
    }

    async fn step(&mut self) -> Duration {
        let now = crate::now_ms();
        let retired = self.retire_pending(now).await;
        let cert = &self.tls.cert;
        let (info, serial) = match (CertificateInfo::read(cert), read_serial(cert)) {
            (Ok(info), Ok(serial)) => (info, serial),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot read the EnOS device certificate for its renewal");
                return RECHECK;
            }
        };
        let mut wait = RECHECK;
        if !retired {
            wait =
                Duration::from_millis(self.retire_at_ms.saturating_sub(now).max(10)).min(RECHECK);
        }
        if !self.config.renewal.enabled {
            self.report(&serial, &info, None);
            return wait;
        }
        let due = match self.retry {
            Some((fingerprint, at)) if fingerprint == info.fingerprint => at,
            _ if now >= info.not_after_ms => now,
            _ => renewal_of_file(cert, &info, &self.config.renewal),
        };
        self.report(&serial, &info, Some(due));
        if now < due {
            return Duration::from_millis(due - now).min(wait);
        }
        let expired = now >= info.not_after_ms;
        tracing::info!(
            cert_sn = %serial,
            not_after = %rfc3339(info.not_after_ms),
            "renewing the EnOS device certificate through the signer"
        );
        match self.renew_once(&serial, expired).await {
            Ok((new_serial, not_after_ms)) => {
                self.renewals += 1;
                self.last_error = None;
                self.retry = None;
                self.backoff.reset();
                tracing::info!(
                    cert_sn = %new_serial,
                    old_cert_sn = %serial,
                    not_after = %rfc3339(not_after_ms),
                    "renewed the EnOS device certificate; the session uses it"
                );
                self.retire_at_ms = 0;
                Duration::ZERO
            }
            Err(Failed(kind, reason)) => {
                let delay = self.backoff.next_delay(kind).delay;
                let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                tracing::warn!(
                    reason = %reason,
                    retry_in_ms = delay_ms,
                    "EnOS certificate renewal failed; the current certificate stays"
                );
                let at = now.saturating_add(delay_ms);
                self.retry = Some((info.fingerprint, at));
                self.last_error = Some(reason);
                self.report(&serial, &info, Some(at));
                delay.min(RECHECK)
            }
        }
    }

    /// One renewal: the candidate obtained, proven by the session's
    /// reconnect, promoted; the old serial noted for retiring. An expired
    /// certificate is replaced by a new Apply (EnOS renews no expired one).
    async fn renew_once(&mut self, serial: &str, expired: bool) -> Result<(String, u64), Failed> {
        let pair = pair_of(self.tls);
        let renews = (!expired).then(|| serial.to_owned());
        let (new_serial, not_after_ms) = obtain(self.signer, &pair, renews).await?;
        let candidate = pair.candidate();
        let mut tls = self.tls.clone();
        tls.cert = candidate.cert;
        tls.key = candidate.key;
        let wait = self.config.enos.connect_timeout * 3 + Duration::from_secs(30);
        if let Err(e) = prove_by_reconnect(self.shared, tls, wait).await {
            pair::discard_candidate(&pair)?;
            return Err(e);
        }
        // Noted before the promotion, so that a crash right after it still
        // retires the old serial (a note naming the pair still in use, if
        // the promotion is undone, is dropped unused).
        pair::write_atomically(&superseded_note(self.tls), serial.as_bytes(), 0o644)?;
        if let Err(e) = pair::promote(&pair) {
            if let Err(again) = pair::recover(&pair) {
                tracing::error!(error = %again, "cannot recover the interrupted promotion");
            }
            return Err(e.into());
        }
        Ok((new_serial, not_after_ms))
    }
}
