//! Product secrets (EnOS's product secret, the key of dynamic activation):
//! the Admin RPCs that put, rotate, delete and show them. Sealed by the
//! custody exactly like device secrets, audited like every change, never
//! shown.
//!
//! Whether a product's devices may activate themselves is the signer's
//! policy (`[policy.products.PK] dynamic_activation = true`), not the
//! registry's: a product secret alone activates nothing.

use enos_sign_core::{ProductKey, ProductSecret};
use enos_signer_proto::v1;

use crate::{
    error::{Result, SignerError},
    services::admin::AdminService,
    services::convert,
};
use enos_domain::now_ms;
use enos_registry::{ProductRecord, ProductWrite};

/// The product a request names.
fn product_ref(value: Option<&v1::ProductRef>) -> Result<ProductKey> {
    let value = value.ok_or_else(|| SignerError::invalid("product", "is required"))?;
    convert::product_key("product.product_key", &value.product_key)
}

fn not_found(product: &ProductKey) -> SignerError {
    SignerError::NotFound(format!("no secret for product {product}"))
}

impl AdminService {
    /// The proto form of a product record (never the secret).
    fn product_message(&self, record: &ProductRecord) -> v1::Product {
        v1::Product {
            product_key: record.product_key.to_string(),
            secret_version: record.secret_version,
            dynamic_activation: self
                .state()
                .policy
                .for_product(&record.product_key)
                .dynamic_activation,
            created_at_ms: record.created_at_ms,
            updated_at_ms: record.updated_at_ms,
        }
    }

    /// Creates (`rotate` false: refused if one exists) or replaces
    /// (`rotate` true: refused if none exists) a product's secret.
    pub(crate) async fn put_product_secret(
        &self,
        request: v1::PutProductSecretRequest,
        rotate: bool,
    ) -> Result<v1::Product> {
        let product = product_ref(request.product.as_ref())?;
        let secret = ProductSecret::new(request.product_secret)
            .map_err(|e| SignerError::invalid("product_secret", e))?;
        let custody = self.state().custody.clone();
        let key = product.clone();
        let write = self
            .state()
            .registry
            .modify_product(
                product,
                Box::new(move |current| {
                    let now = now_ms();
                    let version = match (&current, rotate) {
                        (Some(_), false) => {
                            return Err(SignerError::FailedPrecondition(format!(
                                "product {key} has a secret already; rotate it instead"
                            ))
                            .into());
                        }
                        (None, true) => return Err(not_found(&key).into()),
                        (Some(r), true) => r.secret_version + 1,
                        (None, false) => 1,
                    };
                    let sealed = custody.seal_product(&key, version, secret)?;
                    Ok(ProductWrite::Put(ProductRecord {
                        created_at_ms: current.as_ref().map_or(now, |r| r.created_at_ms),
                        product_key: key,
                        secret_version: version,
                        sealed,
                        updated_at_ms: now,
                    }))
                }),
            )
            .await?;
        match write {
            ProductWrite::Put(record) => Ok(self.product_message(&record)),
            ProductWrite::Delete(_) => {
                Err(SignerError::Registry("expected a written record".into()))
            }
        }
    }

    pub(crate) async fn delete_product_secret(
        &self,
        request: v1::ProductRef,
    ) -> Result<v1::DeleteProductSecretResponse> {
        let product = product_ref(Some(&request))?;
        let key = product.clone();
        self.state()
            .registry
            .modify_product(
                product,
                Box::new(move |current| {
                    current.ok_or_else(|| not_found(&key))?;
                    Ok(ProductWrite::Delete(key))
                }),
            )
            .await?;
        Ok(v1::DeleteProductSecretResponse {})
    }

    pub(crate) async fn get_product(&self, request: v1::ProductRef) -> Result<v1::Product> {
        let product = product_ref(Some(&request))?;
        let record = self
            .state()
            .registry
            .get_product(&product)
            .await?
            .ok_or_else(|| not_found(&product))?;
        Ok(self.product_message(&record))
    }
}
