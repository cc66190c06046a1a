//! The CA's certificate revocation list: every certificate revoked and not
//! yet expired, signed by the CA key in custody.
//!
//! [`CrlPublisher`] keeps one signed list and makes a new one when the
//! registry's revocations change (a revocation on any replica reaches this
//! one through the change feed) and at half of `[ca] crl_validity`, so a
//! reader never holds a list past its nextUpdate. The list is served at
//! `/crl` on the metrics listener and, with `[ca] crl_file`, written to
//! that file (DER, replaced atomically), where a broker (the sandbox's
//! MQTTS listener, or EnOS-side tooling) can load it.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::{ca::CertificateAuthority, error::Result};

/// How often the registry's revocation generation is looked at: a
/// revocation is in the published list within this (plus signing).
const POLL: Duration = Duration::from_secs(1);

/// The list last signed.
struct Signed {
    /// DER.
    der: Arc<Vec<u8>>,
    /// The registry's revocation generation it reflects.
    generation: u64,
    /// When it was signed: re-signed at half its validity.
    at: Instant,
}

/// Signs, caches and publishes the CRL.
pub struct CrlPublisher {
    /// The CA that signs it.
    ca: Arc<CertificateAuthority>,
    /// The list last signed.
    signed: Mutex<Option<Signed>>,
}

impl CrlPublisher {
    /// A publisher for `ca`'s list.
    pub fn new(ca: Arc<CertificateAuthority>) -> Self {
        CrlPublisher {
            ca,
            signed: Mutex::new(None),
        }
    }

    /// The current list (DER), signed again if revocations changed or it
    /// is past half its validity.
    pub async fn current(&self) -> Result<Arc<Vec<u8>>> {
        Ok(self.refresh().await?.0)
    }

    /// The current list, and whether it was signed just now.
    async fn refresh(&self) -> Result<(Arc<Vec<u8>>, bool)> {
        let registry = self.ca.registry_handle();
        let generation = registry.revocation_generation();
        let validity = self.ca.config().crl_validity;
        let mut signed = self.signed.lock().await;
        if let Some(current) = signed.as_ref()
            && current.generation == generation
            && current.at.elapsed() < validity / 2
        {
            return Ok((Arc::clone(&current.der), false));
        }
        let now = SystemTime::now();
        let revoked = registry.revoked_certificates(super::millis(now)).await?;
        let authority = self.ca.authority().await?;
        let entries: Vec<enos_ca::crl::RevokedEntry> = revoked
            .into_iter()
            .filter_map(|record| {
                let revocation = record.revoked?;
                Some(enos_ca::crl::RevokedEntry {
                    serial: record.serial,
                    revoked_at_ms: revocation.at_ms,
                    reason: revocation.reason,
                })
            })
            .collect();
        let crl_number = super::millis(now);
        let next_update = now + validity;
        let der = self
            .ca
            .custody()
            .run(move |_| {
                enos_ca::crl::revocation_list(
                    &entries,
                    authority.issuer(),
                    now,
                    next_update,
                    crl_number,
                )
            })
            .await?
            .map_err(super::ca_internal)?;
        let der = Arc::new(der);
        *signed = Some(Signed {
            der: Arc::clone(&der),
            generation,
            at: Instant::now(),
        });
        Ok((der, true))
    }

    /// Keeps `[ca] crl_file` current until `stop`: written at start, on
    /// every change of the revocations, and at half the list's validity.
    /// A failure is logged and retried at the next poll; the file keeps
    /// the last list written.
    pub async fn publish(
        self: Arc<Self>,
        file: Option<std::path::PathBuf>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut written = false;
        let mut failing = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.refresh().await {
                Ok((der, fresh)) => {
                    if failing {
                        tracing::info!("CRL signed again");
                        failing = false;
                    }
                    if let Some(path) = &file
                        && (fresh || !written)
                    {
                        match write_atomically(path, &der) {
                            Ok(()) => written = true,
                            Err(e) => {
                                tracing::error!(path = %path.display(), error = %e, "cannot write the CRL file; readers keep the previous list")
                            }
                        }
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot sign the CRL now; retrying every second");
                        failing = true;
                    }
                }
            }
        }
    }
}

/// Writes `bytes` to `path` by a temporary file in the same directory,
/// fsync and rename: a reader sees the old list or the new one, whole.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile_in(dir, path)?;
    temp.1.write_all(bytes)?;
    temp.1.sync_all()?;
    std::fs::rename(&temp.0, path)?;
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// A new file beside `path` (`.{name}.tmp`), created exclusively after
/// removing a leftover of a crash.
fn tempfile_in(dir: &Path, path: &Path) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    let name = path
        .file_name()
        .map_or_else(|| "crl".into(), |n| n.to_string_lossy().into_owned());
    let temp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&temp);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)?;
    Ok((temp, file))
}
