//! [`RateLimiter`]: a request budget per caller identity (GCRA, governor).

use std::num::NonZeroU32;

use enos_signer_proto::identity::PeerIdentity;
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::{
    config::RateLimitConfig,
    error::{Result, SignerError},
};

/// Per-identity rate limit; a no-op when not configured.
pub struct RateLimiter {
    /// `None` when no limit is configured.
    limiter: Option<DefaultKeyedRateLimiter<PeerIdentity>>,
}

impl RateLimiter {
    /// A limiter for the config (`None`: unlimited).
    pub fn new(config: Option<&RateLimitConfig>) -> Result<Self> {
        let limiter = match config {
            None => None,
            Some(c) => {
                let nz = |v: u32, name: &str| {
                    NonZeroU32::new(v).ok_or_else(|| {
                        SignerError::Config(format!("rate_limit.{name} must be > 0"))
                    })
                };
                let quota = Quota::per_second(nz(c.per_second, "per_second")?)
                    .allow_burst(nz(c.burst, "burst")?);
                Some(DefaultKeyedRateLimiter::keyed(quota))
            }
        };
        Ok(RateLimiter { limiter })
    }

    /// Spends one request of `identity`'s budget, or ResourceExhausted.
    pub fn check(&self, identity: &PeerIdentity) -> Result<()> {
        match &self.limiter {
            Some(limiter) => limiter
                .check_key(identity)
                .map_err(|_| SignerError::RateLimited),
            None => Ok(()),
        }
    }

    /// Forgets identities whose budget is full again, so the key map does
    /// not grow without bound; called periodically.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use enos_sign_core::{DeviceKey, ProductKey};

    use super::*;

    #[test]
    fn each_identity_has_its_own_budget() {
        let limiter = RateLimiter::new(Some(&RateLimitConfig {
            per_second: 1,
            burst: 2,
        }))
        .expect("valid");
        let device = |dk: &str| PeerIdentity::Device {
            product_key: ProductKey::new("p").expect("pk"),
            device_key: DeviceKey::new(dk).expect("dk"),
        };
        let (a, b) = (device("a"), device("b"));
        assert!(limiter.check(&a).is_ok());
        assert!(limiter.check(&a).is_ok());
        assert!(matches!(limiter.check(&a), Err(SignerError::RateLimited)));
        assert!(limiter.check(&b).is_ok(), "b is not charged for a");
        assert!(RateLimiter::new(None).expect("none").check(&a).is_ok());
        assert!(
            RateLimiter::new(Some(&RateLimitConfig {
                per_second: 0,
                burst: 1
            }))
            .is_err()
        );
    }
}
