//! [`CredentialCache`]: which credential the next CONNECT presents.
//!
//! The rules, in order:
//! 1. Every connect asks the signer for a fresh credential.
//! 2. If the signer cannot be reached, the last credential is reused while
//!    it is still valid, unless the broker refused it: a refused credential
//!    is never presented again.
//! 3. If the signer refuses (device disabled, unknown), nothing is reused.
//! 4. If the connect would start after [`REFRESH_AT`] of the credential's
//!    lifetime (a slow failover across signer endpoints can take that long
//!    with short lifetimes), a new one is fetched first.

use std::sync::Arc;

use tokio::time::Instant;

use crate::{error::SignerClientError, issued::IssuedCredential, signer::SignerClient};

/// The fraction of a credential's lifetime after which a connect fetches a
/// new one first.
pub const REFRESH_AT: f64 = 0.7;

/// Where the credential for a connect came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// Issued by the signer for this connect.
    Fresh,
    /// Reused because the signer was unreachable.
    Cached,
}

/// The last credential and whether it may be presented again.
#[derive(Debug, Default)]
pub struct CredentialCache {
    /// The last credential the signer issued and the broker has not refused.
    current: Option<Arc<IssuedCredential>>,
}

impl CredentialCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The credential the next connect presents, per the rules above.
    pub async fn for_connect<S: SignerClient>(
        &mut self,
        signer: &S,
    ) -> Result<(Arc<IssuedCredential>, Provenance), SignerClientError> {
        match signer.issue_mqtt_credential().await {
            Ok(credential) => {
                let mut credential = Arc::new(credential);
                if credential.used_fraction(Instant::now()) >= REFRESH_AT {
                    tracing::info!(
                        "credential is past {:.0}% of its lifetime before the connect starts; fetching a new one",
                        REFRESH_AT * 100.0
                    );
                    match signer.issue_mqtt_credential().await {
                        Ok(newer) => credential = Arc::new(newer),
                        Err(e) if e.is_unavailable() && !credential.is_expired(Instant::now()) => {
                            tracing::warn!(error = %e, "signer unreachable; connecting with the older credential");
                        }
                        Err(e) => {
                            self.current = None;
                            return Err(e);
                        }
                    }
                }
                self.current = Some(credential.clone());
                Ok((credential, Provenance::Fresh))
            }
            Err(e) if e.is_unavailable() => match &self.current {
                Some(c) if !c.is_expired(Instant::now()) => {
                    tracing::warn!(
                        error = %e,
                        used_percent = (c.used_fraction(Instant::now()) * 100.0).round(),
                        "signer unreachable; reusing the last credential, still valid"
                    );
                    Ok((c.clone(), Provenance::Cached))
                }
                _ => {
                    self.current = None;
                    Err(e)
                }
            },
            Err(e) => {
                // The signer said no: the old credential must not outlive that.
                self.current = None;
                Err(e)
            }
        }
    }

    /// The broker refused `credential`: it is never presented again.
    pub fn refused(&mut self, credential: &Arc<IssuedCredential>) {
        if self
            .current
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, credential))
        {
            self.current = None;
        }
    }

    /// The credential that would be reused, if any (for the status).
    pub fn current(&self) -> Option<&Arc<IssuedCredential>> {
        self.current.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        sync::Mutex,
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;
    use crate::{config::SubDeviceConfig, issued::SignedSubDeviceLogin};

    /// A signer that plays a script: each call takes the next step.
    struct ScriptedSigner {
        steps: Mutex<VecDeque<Step>>,
        calls: AtomicUsize,
    }

    enum Step {
        Issue { lifetime_ms: u64, delay: Duration },
        Down,
        Refuse,
    }

    impl ScriptedSigner {
        fn new(steps: impl IntoIterator<Item = Step>) -> Self {
            ScriptedSigner {
                steps: Mutex::new(steps.into_iter().collect()),
                calls: AtomicUsize::new(0),
            }
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl SignerClient for ScriptedSigner {
        async fn sign_sub_device_login_batch(
            &self,
            _: &[SubDeviceConfig],
        ) -> Result<crate::issued::SignedLoginBatch, SignerClientError> {
            unreachable!("the credential cache never logs sub-devices in")
        }

        async fn complete_activation(
            &self,
            _: &secrecy::SecretString,
        ) -> Result<(), SignerClientError> {
            unreachable!("the credential cache never activates")
        }

        async fn issue_mqtt_credential(&self) -> Result<IssuedCredential, SignerClientError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let step = self
                .steps
                .lock()
                .expect("lock")
                .pop_front()
                .expect("script ran out");
            match step {
                Step::Issue { lifetime_ms, delay } => {
                    // The signer signs, then the answer takes `delay` to arrive.
                    let now = enos_domain::now_ms();
                    let cred = IssuedCredential::new(
                        format!("dk|securemode=2,signmethod=hmacsha1,timestamp={now}|"),
                        "dk&pk".into(),
                        format!("PASSWORD{n}"),
                        now,
                        Some(now + lifetime_ms),
                        "scripted".into(),
                    );
                    tokio::time::sleep(delay).await;
                    Ok(cred)
                }
                Step::Down => Err(SignerClientError::Unavailable {
                    endpoint: "scripted".into(),
                    message: "down".into(),
                }),
                Step::Refuse => Err(SignerClientError::Refused {
                    endpoint: "scripted".into(),
                    code: tonic::Code::PermissionDenied,
                    message: "device disabled".into(),
                }),
            }
        }

        async fn sign_sub_device_login(
            &self,
            _sub: &SubDeviceConfig,
        ) -> Result<SignedSubDeviceLogin, SignerClientError> {
            unreachable!("not used here")
        }
    }

    fn issue(lifetime_ms: u64) -> Step {
        Step::Issue {
            lifetime_ms,
            delay: Duration::ZERO,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fetches_a_fresh_credential_for_every_connect() {
        let signer = ScriptedSigner::new([issue(60_000), issue(60_000)]);
        let mut cache = CredentialCache::new();
        let (a, pa) = cache.for_connect(&signer).await.expect("first");
        let (b, pb) = cache.for_connect(&signer).await.expect("second");
        assert_eq!((pa, pb), (Provenance::Fresh, Provenance::Fresh));
        assert_ne!(a.password(), b.password());
        assert_eq!(signer.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn reuses_a_valid_credential_while_the_signer_is_down_until_it_expires() {
        let signer = ScriptedSigner::new([issue(10_000), Step::Down, Step::Down]);
        let mut cache = CredentialCache::new();
        let (a, _) = cache.for_connect(&signer).await.expect("issued");
        tokio::time::advance(Duration::from_secs(9)).await;
        let (b, p) = cache.for_connect(&signer).await.expect("reused");
        assert_eq!(p, Provenance::Cached);
        assert!(Arc::ptr_eq(&a, &b));
        tokio::time::advance(Duration::from_secs(2)).await;
        let e = cache.for_connect(&signer).await.expect_err("expired");
        assert!(e.is_unavailable());
        assert!(cache.current().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_credential_is_never_reused() {
        let signer = ScriptedSigner::new([issue(60_000), Step::Down]);
        let mut cache = CredentialCache::new();
        let (a, _) = cache.for_connect(&signer).await.expect("issued");
        cache.refused(&a);
        assert!(cache.for_connect(&signer).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_signer_refusal_drops_the_cached_credential() {
        let signer = ScriptedSigner::new([issue(60_000), Step::Refuse, Step::Down]);
        let mut cache = CredentialCache::new();
        cache.for_connect(&signer).await.expect("issued");
        let e = cache.for_connect(&signer).await.expect_err("refused");
        assert!(!e.is_unavailable());
        // The signer is down now, but the old credential must not come back.
        assert!(cache.for_connect(&signer).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn past_seventy_percent_before_connecting_fetches_again() {
        // The first answer arrives after 8 of its 10 s: 80 % used.
        let slow = Step::Issue {
            lifetime_ms: 10_000,
            delay: Duration::from_secs(8),
        };
        let signer = ScriptedSigner::new([slow, issue(10_000)]);
        let mut cache = CredentialCache::new();
        let (c, p) = cache.for_connect(&signer).await.expect("issued");
        assert_eq!(signer.calls(), 2);
        assert_eq!(p, Provenance::Fresh);
        assert!(c.password().ends_with('1'), "the second credential is used");

        // Below 70 % one fetch is enough.
        let quick = Step::Issue {
            lifetime_ms: 10_000,
            delay: Duration::from_secs(6),
        };
        let signer = ScriptedSigner::new([quick]);
        cache.for_connect(&signer).await.expect("issued");
        assert_eq!(signer.calls(), 1);
    }
}
