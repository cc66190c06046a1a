//! [`Policy`]: what an issued credential looks like, per product with a
//! global default.

use std::{collections::HashMap, time::Duration};

use enos_sign_core::{Md5Policy, ProductKey, SignMethod};
use enos_signer_proto::v1;

use crate::{
    config::PolicyConfig,
    error::{Result, SignerError},
};

/// The issuance policy, validated from [`PolicyConfig`].
#[derive(Debug, Clone)]
pub struct Policy {
    /// Used for products without an override.
    default: ProductPolicy,
    /// Whether MD5 may be issued when a request asks for it.
    md5: Md5Policy,
    /// Overrides by product key.
    products: HashMap<ProductKey, ProductPolicy>,
}

/// The policy of one product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductPolicy {
    /// How long an issued credential is valid.
    pub ttl: Duration,
    /// The method when the request leaves it unspecified.
    pub sign_method: SignMethod,
    /// Broker endpoints handed out with credentials; may be empty.
    pub broker_urls: Vec<String>,
    /// Whether devices awaiting activation get a `securemode=3`
    /// credential (only products that opt in).
    pub dynamic_activation: bool,
}

impl Policy {
    /// Validates the config: methods must parse, TTLs be positive.
    pub fn from_config(config: &PolicyConfig) -> Result<Self> {
        let md5 = if config.allow_md5 {
            Md5Policy::Allow
        } else {
            Md5Policy::Refuse
        };
        let method = |name: &str, at: &str| {
            SignMethod::parse(name, md5)
                .map_err(|e| SignerError::Config(format!("{at}.sign_method: {e}")))
        };
        let ttl = |ttl: Duration, at: &str| {
            if ttl < Duration::from_secs(1) {
                Err(SignerError::Config(format!("{at}.ttl must be at least 1s")))
            } else {
                Ok(ttl)
            }
        };
        let default = ProductPolicy {
            ttl: ttl(config.ttl, "policy")?,
            sign_method: method(&config.sign_method, "policy")?,
            broker_urls: Vec::new(),
            dynamic_activation: false,
        };
        let mut products = HashMap::new();
        for (name, product) in &config.products {
            let at = format!("policy.products.{name}");
            let pk =
                ProductKey::new(name).map_err(|e| SignerError::Config(format!("{at}: {e}")))?;
            products.insert(
                pk,
                ProductPolicy {
                    ttl: match product.ttl {
                        Some(t) => ttl(t, &at)?,
                        None => default.ttl,
                    },
                    sign_method: match &product.sign_method {
                        Some(m) => method(m, &at)?,
                        None => default.sign_method,
                    },
                    broker_urls: product.broker_urls.clone(),
                    dynamic_activation: product.dynamic_activation,
                },
            );
        }
        Ok(Policy {
            default,
            md5,
            products,
        })
    }

    /// The policy for `product`.
    pub fn for_product(&self, product: &ProductKey) -> &ProductPolicy {
        self.products.get(product).unwrap_or(&self.default)
    }

    /// The method to sign with: the request's, or the product's default.
    pub fn method(&self, product: &ProductKey, requested: i32) -> Result<SignMethod> {
        let requested = v1::SignMethod::try_from(requested)
            .map_err(|_| SignerError::invalid("sign_method", "unknown value"))?;
        let Some(method) = requested.to_core() else {
            return Ok(self.for_product(product).sign_method);
        };
        if method == SignMethod::HmacMd5 && self.md5 == Md5Policy::Refuse {
            return Err(SignerError::invalid(
                "sign_method",
                "hmacmd5 is not allowed by this signer's policy",
            ));
        }
        Ok(method)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::ProductPolicyConfig;

    use super::*;

    #[test]
    fn product_overrides_and_md5_refusal() {
        let mut config = PolicyConfig::default();
        config.products.insert(
            "PkFast".into(),
            ProductPolicyConfig {
                ttl: Some(Duration::from_secs(30)),
                sign_method: Some("sha256".into()),
                broker_urls: vec!["tcp://127.0.0.1:11883".into()],
                dynamic_activation: true,
            },
        );
        let policy = Policy::from_config(&config).expect("valid");
        let fast = ProductKey::new("PkFast").expect("pk");
        let other = ProductKey::new("PkOther").expect("pk");
        assert_eq!(policy.for_product(&fast).ttl, Duration::from_secs(30));
        assert_eq!(policy.for_product(&other).ttl, Duration::from_secs(300));
        assert!(policy.for_product(&fast).dynamic_activation);
        assert!(
            !policy.for_product(&other).dynamic_activation,
            "off unless a product opts in"
        );
        assert_eq!(
            policy.method(&fast, 0).expect("default"),
            SignMethod::HmacSha256
        );
        assert_eq!(
            policy.method(&other, 0).expect("default"),
            SignMethod::HmacSha1
        );
        assert_eq!(
            policy.method(&other, 2).expect("asked"),
            SignMethod::HmacSha256
        );
        let err = policy.method(&other, 3).expect_err("md5 refused");
        assert!(err.to_string().starts_with("sign_method:"), "{err}");
        assert!(policy.method(&other, 42).is_err());

        config.products.get_mut("PkFast").expect("there").ttl = Some(Duration::ZERO);
        assert!(Policy::from_config(&config).is_err());
        config.products.clear();
        config.sign_method = "hmacmd5".into();
        assert!(
            Policy::from_config(&config).is_err(),
            "md5 default needs allow_md5"
        );
        config.allow_md5 = true;
        assert!(Policy::from_config(&config).is_ok());
    }
}
