//! `cargo xtask demo`: the main job.
//!
//! Until the sandbox broker, the signer and the agent land, the demo shows
//! what exists: the signing rules reproducing the EnOS guide's example.

use anyhow::{Result, ensure};
use enos_sign_core::{
    ClientId, DeviceKey, DeviceSecret, ExposeSecret, Freshness, Md5Policy, MqttCredential,
    PresentedLogin, ProductKey, SecureMode, SignMethod, SignedFields, TimestampMs,
};

/// The password the EnOS connection guide gives for its example.
const GUIDE_PASSWORD: &str = "97AA97335D6EC3D7E1F9E3119501E399CC0B4125";

pub(crate) fn run() -> Result<()> {
    println!("demo: signing the EnOS guide's example login (a public test vector)");
    let fields = SignedFields {
        client_id: ClientId::new("123")?,
        device_key: DeviceKey::new("test")?,
        product_key: ProductKey::new("123")?,
        timestamp: TimestampMs::from_millis(1_524_448_722_000),
    };
    let secret = DeviceSecret::new("aaabbbcc123".to_owned())?;
    let credential = MqttCredential::sign(
        fields,
        SecureMode::DeviceSecret,
        SignMethod::HmacSha1,
        &secret,
    )?;
    println!("  MQTT client id: {}", credential.mqtt_client_id);
    println!("  MQTT username:  {}", credential.username);
    ensure!(
        credential.password.expose_secret() == GUIDE_PASSWORD,
        "the signed password differs from the EnOS guide's example"
    );
    println!("  password matches the guide's published answer");
    let presented = PresentedLogin::parse(
        &credential.mqtt_client_id,
        &credential.username,
        Md5Policy::Refuse,
    )?;
    presented.verify(credential.password.expose_secret(), &secret, Freshness::Any)?;
    println!("  broker-side parse and constant-time verify accept it");
    println!("demo: done (the signer, agent and sandbox broker are not part of this build yet)");
    Ok(())
}
