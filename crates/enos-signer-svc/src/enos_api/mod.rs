//! The signer as a client of EnOS's certificate API (issue 26): the
//! application's AccessKey/SecretKey sealed by the custody
//! ([`credential`]), and [`client::EnosApiClient`], which gets an access
//! token and signs every call as EnOS's API gateway documents
//! (docs/enos-certificates.md).

pub mod client;
pub mod credential;

pub use client::{Authority, EnosApiClient, IssuedEnosCert, ListedEnosCert};
pub use credential::{ApiCredential, open_credential, seal_credential};

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use enos_custody::Custody;
use tokio::sync::Semaphore;

use crate::{
    config::EnosApiConfig,
    error::{Result, SignerError},
    listener::metrics::EnosApiMetrics,
};

/// Every environment's client, made on first use (so that the signer
/// starts before `enos-api set-credential` has been run; a call then says
/// what is missing).
pub struct EnosApi {
    /// `[enos_api]`.
    pub config: EnosApiConfig,
    /// Opens the sealed credentials.
    custody: Arc<dyn Custody>,
    /// Bounds the calls in flight over all environments.
    permits: Arc<Semaphore>,
    /// The clients made so far, by environment.
    clients: Mutex<HashMap<String, Arc<EnosApiClient>>>,
    /// Where every client counts its calls (the serving signer's
    /// `/metrics`; series of their own otherwise).
    metrics: EnosApiMetrics,
}

impl std::fmt::Debug for EnosApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnosApi")
            .field("environments", &self.config.environments.keys())
            .finish_non_exhaustive()
    }
}

impl EnosApi {
    /// The clients of `config`, opening credentials with `custody`.
    pub fn new(config: EnosApiConfig, custody: Arc<dyn Custody>) -> Self {
        let permits = Arc::new(Semaphore::new(config.concurrency.get()));
        EnosApi {
            config,
            custody,
            permits,
            clients: Mutex::new(HashMap::new()),
            metrics: EnosApiMetrics::default(),
        }
    }

    /// Every client counts its calls in `metrics`.
    pub fn with_metrics(mut self, metrics: EnosApiMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The client of the environment serving `product_key`.
    pub fn client_for(&self, product_key: &str) -> Result<Arc<EnosApiClient>> {
        let (name, env) = self.config.environment_of(product_key).ok_or_else(|| {
            SignerError::FailedPrecondition(format!(
                "no [enos_api] environment serves product {product_key}"
            ))
        })?;
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(name) {
            return Ok(Arc::clone(client));
        }
        let credential = open_credential(Arc::clone(&self.custody), name, &env.credential_file)
            .map_err(|e| match e {
                SignerError::Config(m) => SignerError::FailedPrecondition(m),
                other => other,
            })?;
        let client = Arc::new(
            EnosApiClient::new(
                env,
                credential,
                Arc::clone(&self.permits),
                self.config.timeout,
            )?
            .with_metrics(self.metrics.clone()),
        );
        clients.insert(name.to_owned(), Arc::clone(&client));
        Ok(client)
    }
}
