//! Renewal of the device certificate inside `enos-agent run`, with no
//! cron.
//!
//! At `[renewal] at` of the certificate's lifetime (2/3 by default), plus
//! or minus `[renewal] jitter` of it (0.1), the agent makes a new key on
//! the gateway and asks the signer for a certificate with
//! `Certificates.RenewCertificate` over its current mTLS channel. The new
//! pair is written beside the current one, proven against the signer (a
//! handshake with it and one call), and then promoted by rename (see
//! [`crate::pair`] for why a crash never leaves a key and a certificate
//! that do not belong together). The signer channel re-reads the pair
//! before each call and the EnOS MQTTS connection before each connect, so
//! both use it from their next connection, without a restart and without
//! dropping the live MQTT session.
//!
//! A failure keeps the current pair and retries with the `[backoff]`
//! schedule. A signer that is not a CA (`FAILED_PRECONDITION`, or one
//! too old to know the service) is logged once and asked again hourly.
//! An expired certificate cannot renew: the log and the status say to
//! enroll again with a new token.

use std::time::{Duration, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::{
    backoff::{Backoff, FailureKind},
    certificate::CertificateInfo,
    config::{Config, RenewalConfig},
    error::{AgentError, SignerClientError},
    issued::SignedCertificate,
    pair::{self, NewKey, PairPaths},
    shared::Shared,
    signer::SignerClient,
    status::{CertificateStatus, RenewalState},
};

/// How often the certificate file is read again while waiting: a pair
/// replaced by hand or by `enroll --force` gets its own schedule.
const RECHECK: Duration = Duration::from_secs(60);

/// How often a signer that does not offer renewal is asked again.
const NOT_OFFERED_RETRY: Duration = Duration::from_secs(3600);

/// The jitter draw of a certificate, in `[-1, 1)`: seeded by the
/// certificate, so a restart keeps its renewal time, while the gateways
/// of a fleet spread theirs.
pub fn jitter_draw(info: &CertificateInfo) -> f64 {
    fastrand::Rng::with_seed(info.fingerprint).f64() * 2.0 - 1.0
}

/// When to renew `info`, ms since the epoch: `notBefore + lifetime × (at
/// + jitter × draw)`, `draw` in `[-1, 1]`; always inside the lifetime.
pub fn renewal_time_ms(info: &CertificateInfo, config: &RenewalConfig, draw: f64) -> u64 {
    let lifetime = info.lifetime_ms();
    let fraction = (config.at + config.jitter * draw.clamp(-1.0, 1.0)).clamp(0.0, 1.0);
    // Exact enough: a lifetime in ms fits an f64's 53 bits for 285 000 years.
    let offset = (lifetime as f64 * fraction).round() as u64;
    info.not_before_ms + offset.min(lifetime.saturating_sub(1))
}

/// [`renewal_time_ms`] with the certificate's own [`jitter_draw`].
pub fn scheduled_renewal_ms(info: &CertificateInfo, config: &RenewalConfig) -> u64 {
    renewal_time_ms(info, config, jitter_draw(info))
}

/// The renewal time of a certificate obtained at `obtained_ms` (its
/// file's mtime): the same fraction (and draw) as
/// [`scheduled_renewal_ms`], of the lifetime left when it arrived (never
/// earlier than the plain schedule, always before `notAfter`).
///
/// A CA backdates `notBefore` against clock skew (the signer's by one
/// minute): with a lifetime of minutes, 2/3 from `notBefore` can be past
/// already when the certificate arrives, and every renewal would be
/// followed by another at once. For a lifetime of days the difference is
/// that minute. A certificate long past its point is due at once either
/// way.
pub fn renewal_after_obtaining_ms(
    info: &CertificateInfo,
    config: &RenewalConfig,
    obtained_ms: u64,
) -> u64 {
    let planned = scheduled_renewal_ms(info, config);
    if obtained_ms <= info.not_before_ms || obtained_ms >= info.not_after_ms {
        return planned;
    }
    let rest = CertificateInfo {
        not_before_ms: obtained_ms,
        ..info.clone()
    };
    planned.max(renewal_time_ms(&rest, config, jitter_draw(info)))
}

/// When the certificate file was written (its mtime; `enroll` and a
/// promotion write it as the certificate arrives), capped at now.
fn written_ms(path: &std::path::Path) -> Option<u64> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    let ms = u64::try_from(modified.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()?;
    Some(ms.min(crate::now_ms()))
}

/// When to renew the certificate `info` read from `path`: from when the
/// file was written ([`renewal_after_obtaining_ms`]), or, when its mtime
/// is unknown, [`scheduled_renewal_ms`].
pub fn renewal_of_file(
    path: &std::path::Path,
    info: &CertificateInfo,
    config: &RenewalConfig,
) -> u64 {
    match written_ms(path) {
        Some(written) => renewal_after_obtaining_ms(info, config, written),
        None => scheduled_renewal_ms(info, config),
    }
}

/// Why one renewal attempt failed.
enum Failed {
    /// The signer does not renew (not a CA, or no such service).
    NotOffered(String),
    /// Anything else: retried with backoff.
    Retry(FailureKind, String),
}

impl From<SignerClientError> for Failed {
    fn from(e: SignerClientError) -> Self {
        match &e {
            SignerClientError::Refused {
                code: Code::FailedPrecondition | Code::Unimplemented,
                ..
            } => Failed::NotOffered(e.to_string()),
            SignerClientError::Refused { .. } => Failed::Retry(FailureKind::Refused, e.to_string()),
            _ => Failed::Retry(FailureKind::Network, e.to_string()),
        }
    }
}

impl From<AgentError> for Failed {
    fn from(e: AgentError) -> Self {
        Failed::Retry(FailureKind::Network, e.to_string())
    }
}

/// A time for people: RFC 3339, seconds.
pub(crate) fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// One renewal: a new key, the signer's certificate for it, the candidate
/// written, proven and promoted. The current pair is kept on any failure.
async fn renew_once<S: SignerClient>(
    signer: &S,
    pair: &PairPaths,
) -> Result<SignedCertificate, Failed> {
    // A candidate left by a failed attempt goes first.
    pair::recover(pair)?;
    let key = NewKey::generate(&pair.key)?;
    // The key first: a directory that cannot take it fails before the
    // signer issues anything.
    pair::write_candidate_key(pair, &key)?;
    let written = write_certificate(signer, pair, &key).await;
    let signed = match written {
        Ok(signed) => signed,
        Err(e) => {
            pair::discard_candidate(pair)?;
            return Err(e);
        }
    };
    let candidate = pair.candidate();
    if let Err(e) = signer.prove_candidate(&candidate).await {
        pair::discard_candidate(pair)?;
        // Even a "not offered" answer here is a failure of this candidate.
        let kind = if e.is_unavailable() {
            FailureKind::Network
        } else {
            FailureKind::Refused
        };
        return Err(Failed::Retry(
            kind,
            format!("the signer did not accept the new certificate: {e}"),
        ));
    }
    if let Err(e) = pair::promote(pair) {
        // Between the two renames: finish (or undo) now rather than run
        // on a key that does not fit the certificate until a restart.
        if let Err(again) = pair::recover(pair) {
            tracing::error!(error = %again, "cannot recover the interrupted promotion");
        }
        return Err(e.into());
    }
    Ok(signed)
}

/// Asks the signer for `key`'s certificate and writes it as the
/// candidate's second half (the key is written already).
async fn write_certificate<S: SignerClient>(
    signer: &S,
    pair: &PairPaths,
    key: &NewKey,
) -> Result<SignedCertificate, Failed> {
    let signed = signer.renew_certificate(key.csr_der()?).await?;
    let cert_pem = pair::chain_pem(&signed.certificate_der, &signed.chain_der);
    CertificateInfo::from_der(&signed.certificate_der).map_err(|reason| {
        Failed::Retry(
            FailureKind::Refused,
            format!("the signer's certificate is unreadable: {reason}"),
        )
    })?;
    pair::check_fits(key, &pair.candidate_cert(), cert_pem.as_bytes())?;
    pair::write_candidate_cert(pair, cert_pem.as_bytes())?;
    Ok(signed)
}

/// The renewal loop's memory across certificates.
struct Renewer<'a, S> {
    /// The renewal settings and the paths.
    config: &'a Config,
    /// Asked for the new certificate and to prove it.
    signer: &'a S,
    /// Where the status goes.
    shared: &'a Shared,
    /// `[signer]` `cert` and `key`.
    pair: PairPaths,
    /// Retry pacing after failures.
    backoff: Backoff,
    /// After a failure: the certificate (fingerprint) and when to retry.
    retry: Option<(u64, u64)>,
    /// The signer said it does not renew (logged once).
    not_offered: bool,
    /// The expired certificate already logged (its fingerprint).
    expired_logged: Option<u64>,

    /// Renewals promoted since start.
    renewals: u64,
    /// The last failure, for the status.
    last_error: Option<String>,
}

/// Runs the renewal loop until `shutdown`.
pub async fn run<S: SignerClient>(
    config: &Config,
    signer: &S,
    shared: &Shared,
    shutdown: CancellationToken,
) {
    let mut renewer = Renewer {
        config,
        signer,
        shared,
        pair: PairPaths {
            cert: config.signer.cert.clone(),
            key: config.signer.key.clone(),
        },
        backoff: Backoff::new(config.backoff.clone()),
        retry: None,
        not_offered: false,
        expired_logged: None,
        renewals: 0,
        last_error: None,
    };
    while !shutdown.is_cancelled() {
        // Cancelled only at an await: before anything is written, or
        // with a candidate not promoted yet (discarded at the next start).
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
    /// Publishes the certificate's status.
    fn report(&self, info: &CertificateInfo, next: Option<u64>, renewal: RenewalState) {
        let status = CertificateStatus {
            not_after_ms: info.not_after_ms,
            next_renewal_ms: next,
            renewal,
            renewals: self.renewals,
            last_renewal_error: self.last_error.clone(),
        };
        self.shared
            .status
            .send_if_modified(|s| match &s.certificate {
                Some(old) if *old == status => false,
                _ => {
                    s.certificate = Some(status);
                    true
                }
            });
    }

    /// Reads the certificate, renews it if due; returns how long to wait.
    async fn step(&mut self) -> Duration {
        let info = match CertificateInfo::read(&self.pair.cert) {
            Ok(info) => info,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the device certificate for its renewal");
                return RECHECK;
            }
        };
        let now = crate::now_ms();
        if !self.config.renewal.enabled {
            self.report(&info, None, RenewalState::Disabled);
            return RECHECK;
        }
        if now >= info.not_after_ms {
            self.expired(&info);
            return RECHECK;
        }
        let due = match self.retry {
            Some((fingerprint, at)) if fingerprint == info.fingerprint => at,
            _ => renewal_of_file(&self.pair.cert, &info, &self.config.renewal),
        };
        let state = if self.not_offered {
            RenewalState::NotOffered
        } else {
            RenewalState::Scheduled
        };
        self.report(&info, Some(due), state);
        if now < due {
            return Duration::from_millis(due - now).min(RECHECK);
        }
        self.report(&info, Some(due), RenewalState::Renewing);
        tracing::info!(
            not_after = %rfc3339(info.not_after_ms),
            "renewing the device certificate"
        );
        match renew_once(self.signer, &self.pair).await {
            Ok(signed) => {
                self.renewals += 1;
                self.last_error = None;
                self.retry = None;
                self.not_offered = false;
                self.backoff.reset();
                tracing::info!(
                    serial = %signed.serial,
                    not_after = %rfc3339(signed.not_after_ms),
                    endpoint = %signed.endpoint,
                    "renewed the device certificate; the signer channel and the next EnOS connection use it"
                );
                Duration::ZERO
            }
            Err(Failed::NotOffered(reason)) => {
                if !self.not_offered {
                    tracing::warn!(
                        reason = %reason,
                        "the signer does not renew certificates (it is not a CA); asking again hourly"
                    );
                }
                self.not_offered = true;
                self.fail(
                    &info,
                    now,
                    NOT_OFFERED_RETRY,
                    reason,
                    RenewalState::NotOffered,
                )
            }
            Err(Failed::Retry(kind, reason)) => {
                let delay = self.backoff.next_delay(kind).delay;
                tracing::warn!(
                    reason = %reason,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "certificate renewal failed; the current certificate stays"
                );
                self.not_offered = false;
                self.fail(&info, now, delay, reason, RenewalState::Scheduled)
            }
        }
    }

    /// Records a failure and schedules the retry.
    fn fail(
        &mut self,
        info: &CertificateInfo,
        now: u64,
        delay: Duration,
        reason: String,
        state: RenewalState,
    ) -> Duration {
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        let at = now.saturating_add(delay_ms);
        self.retry = Some((info.fingerprint, at));
        self.last_error = Some(reason);
        self.report(info, Some(at), state);
        delay.min(RECHECK)
    }

    /// An expired certificate: reported, logged once, never renewed.
    fn expired(&mut self, info: &CertificateInfo) {
        let message = format!(
            "the device certificate {} expired at {}: it cannot be renewed. Enroll again with a new \
             token (enos-signer enroll-token on the signer): enos-agent enroll --config <agent.toml> \
             --signer <enrollment URL> --ca {} --token-file <token file> --force",
            self.pair.cert.display(),
            rfc3339(info.not_after_ms),
            self.config.signer.ca.display(),
        );
        if self.expired_logged != Some(info.fingerprint) {
            tracing::error!("{message}");
            self.expired_logged = Some(info.fingerprint);
        }
        self.last_error = Some(message);
        self.report(info, None, RenewalState::Expired);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(not_before_ms: u64, lifetime_ms: u64, fingerprint: u64) -> CertificateInfo {
        CertificateInfo {
            not_before_ms,
            not_after_ms: not_before_ms + lifetime_ms,
            fingerprint,
        }
    }

    fn config(at: f64, jitter: f64) -> RenewalConfig {
        RenewalConfig {
            enabled: true,
            at,
            jitter,
        }
    }

    const DAY: u64 = 86_400_000;

    #[test]
    fn renewal_is_at_two_thirds_plus_or_minus_the_jitter_of_the_lifetime() {
        // 30 days from 2026-12-01T00:00:00Z.
        let start = 1_796_083_200_000;
        let cert = info(start, 30 * DAY, 7);
        let defaults = RenewalConfig::default();
        assert_eq!(renewal_time_ms(&cert, &defaults, 0.0), start + 20 * DAY);
        assert_eq!(renewal_time_ms(&cert, &defaults, -1.0), start + 17 * DAY);
        assert_eq!(renewal_time_ms(&cert, &defaults, 1.0), start + 23 * DAY);
        assert_eq!(
            renewal_time_ms(&cert, &defaults, 0.5),
            start + 21 * DAY + DAY / 2
        );
        // Out-of-range draws are clamped to the band.
        assert_eq!(renewal_time_ms(&cert, &defaults, 7.0), start + 23 * DAY);
        // Configurable: 80 % ± 5 %, and no jitter at all.
        assert_eq!(
            renewal_time_ms(&cert, &config(0.8, 0.05), 1.0),
            start + 25 * DAY + DAY / 2
        );
        assert_eq!(
            renewal_time_ms(&cert, &config(0.5, 0.0), -1.0),
            start + 15 * DAY
        );
        // 10 minutes at 2/3: 6 min 40 s.
        let short = info(start, 600_000, 1);
        assert_eq!(renewal_time_ms(&short, &defaults, 0.0), start + 400_000);
    }

    #[test]
    fn a_backdated_certificate_just_obtained_is_not_renewed_at_once() {
        // 10 minutes, notBefore backdated by 1 minute: at 2/3 ± 0.1 of
        // the 10 minutes from its arrival, a little later than from
        // notBefore.
        let issued = 1_796_083_200_000;
        let cert = info(issued - 60_000, 660_000, 42);
        let defaults = RenewalConfig::default();
        let planned = scheduled_renewal_ms(&cert, &defaults);
        let due = renewal_after_obtaining_ms(&cert, &defaults, issued);
        assert!(due >= planned);
        assert!(
            (issued + 340_000..=issued + 460_000).contains(&due),
            "{}",
            due - issued
        );
        // 12 s, backdated by 60 s: 2/3 from notBefore is 12 s before it
        // arrived; from its arrival, 2/3 of the 12 s left (± 10 %).
        let short = info(issued - 60_000, 72_000, 42);
        assert!(scheduled_renewal_ms(&short, &defaults) < issued);
        let due = renewal_after_obtaining_ms(&short, &defaults, issued);
        assert!(
            (issued + 6_800..=issued + 9_200).contains(&due),
            "{}",
            due as i64 - issued as i64
        );
        // Obtained outside its validity: the plain schedule.
        assert_eq!(
            renewal_after_obtaining_ms(&short, &defaults, issued + 100_000),
            scheduled_renewal_ms(&short, &defaults)
        );
    }

    #[test]
    fn the_jitter_is_fixed_per_certificate_and_spreads_a_fleet() {
        let start = 1_796_083_200_000;
        let defaults = RenewalConfig::default();
        let a = info(start, 30 * DAY, 0x1234);
        // The same certificate: the same time (a restart changes nothing).
        assert_eq!(
            scheduled_renewal_ms(&a, &defaults),
            scheduled_renewal_ms(&a.clone(), &defaults)
        );
        // 1000 certificates issued at the same moment: all inside the
        // band, spread across it.
        let times: Vec<u64> = (0..1000u64)
            .map(|i| scheduled_renewal_ms(&info(start, 30 * DAY, i * 0x9e37_79b9), &defaults))
            .collect();
        let (lo, hi) = (start + 17 * DAY, start + 23 * DAY);
        assert!(times.iter().all(|t| (lo..=hi).contains(t)));
        let earliest = times.iter().min().copied().unwrap_or_default();
        let latest = times.iter().max().copied().unwrap_or_default();
        assert!(earliest < start + 18 * DAY, "{}", earliest - start);
        assert!(latest > start + 22 * DAY, "{}", latest - start);
        let distinct: std::collections::HashSet<_> = times.iter().collect();
        assert!(distinct.len() > 990);
    }
}
