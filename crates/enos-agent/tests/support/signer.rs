//! The signer side of the tests.
//!
//! `LocalSigner` signs in-process with enos-sign-core (the same rules the
//! signer service applies) and can be switched off; it stands in where the
//! test is about the connect loop, not about gRPC.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use enos_agent::{
    IssuedCredential, SignedSubDeviceLogin, Signer, SignerError, config::SubDeviceConfig,
};
use enos_sign_core::{
    ClientId, DeviceKey, DeviceSecret, ExposeSecret, MqttCredential, ProductKey, SecureMode,
    SignMethod, SignedFields, SubDeviceLogin, TimestampMs,
};

#[derive(Clone)]
struct Entry {
    secret: String,
    gateway: Option<(String, String)>,
}

/// An in-process signer for one gateway.
pub struct LocalSigner {
    gateway: (String, String),
    devices: Mutex<HashMap<(String, String), Entry>>,
    lifetime: Duration,
    down: AtomicBool,
    issued: AtomicUsize,
}

impl LocalSigner {
    pub fn new(gateway: (&str, &str), secret: &str, lifetime: Duration) -> Self {
        let signer = LocalSigner {
            gateway: (gateway.0.into(), gateway.1.into()),
            devices: Mutex::new(HashMap::new()),
            lifetime,
            down: AtomicBool::new(false),
            issued: AtomicUsize::new(0),
        };
        signer.put_device(gateway, secret, None);
        signer
    }

    pub fn put_device(&self, id: (&str, &str), secret: &str, gateway: Option<(&str, &str)>) {
        self.devices.lock().expect("lock").insert(
            (id.0.into(), id.1.into()),
            Entry {
                secret: secret.into(),
                gateway: gateway.map(|(a, b)| (a.into(), b.into())),
            },
        );
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }

    fn unavailable() -> SignerError {
        SignerError::Unavailable {
            endpoint: "local".into(),
            message: "switched off by the test".into(),
        }
    }
}

impl Signer for LocalSigner {
    async fn issue_mqtt_credential(&self) -> Result<IssuedCredential, SignerError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Self::unavailable());
        }
        let entry = self
            .devices
            .lock()
            .expect("lock")
            .get(&self.gateway)
            .cloned()
            .expect("gateway registered");
        let now = enos_agent::now_ms();
        let fields = SignedFields {
            client_id: ClientId::new(&self.gateway.1).expect("cid"),
            device_key: DeviceKey::new(&self.gateway.1).expect("dk"),
            product_key: ProductKey::new(&self.gateway.0).expect("pk"),
            timestamp: TimestampMs::from_millis(now),
        };
        let secret = DeviceSecret::new(entry.secret).expect("secret");
        let c = MqttCredential::sign(fields, SecureMode::DeviceSecret, SignMethod::HmacSha1, &secret)
            .expect("sign");
        self.issued.fetch_add(1, Ordering::SeqCst);
        Ok(IssuedCredential::new(
            c.mqtt_client_id.clone(),
            c.username.clone(),
            c.password.expose_secret().to_owned(),
            now,
            Some(now + self.lifetime.as_millis() as u64),
            "local".into(),
        ))
    }

    async fn sign_sub_device_login(
        &self,
        sub: &SubDeviceConfig,
    ) -> Result<SignedSubDeviceLogin, SignerError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Self::unavailable());
        }
        let key = (sub.product_key.to_string(), sub.device_key.to_string());
        let entry = self.devices.lock().expect("lock").get(&key).cloned();
        let Some(entry) = entry.filter(|e| e.gateway.as_ref() == Some(&self.gateway)) else {
            return Err(SignerError::Refused {
                endpoint: "local".into(),
                code: tonic::Code::PermissionDenied,
                message: "not a sub-device of the calling gateway".into(),
            });
        };
        let fields = SignedFields {
            client_id: ClientId::new(sub.device_key.as_str()).expect("cid"),
            device_key: sub.device_key.clone(),
            product_key: sub.product_key.clone(),
            timestamp: TimestampMs::from_millis(enos_agent::now_ms()),
        };
        let secret = DeviceSecret::new(entry.secret).expect("secret");
        let login = SubDeviceLogin::sign(fields, SignMethod::HmacSha1, &secret, sub.clean_session);
        Ok(SignedSubDeviceLogin::new(
            login.product_key.to_string(),
            login.device_key.to_string(),
            login.client_id.to_string(),
            login.timestamp.as_millis(),
            login.sign_method.to_string(),
            login.sign.expose_secret().to_owned(),
            2,
            login.clean_session,
        ))
    }
}
