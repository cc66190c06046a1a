//! The Credentials service over real mTLS: issued credentials verify with
//! the EnOS rules, and every refusal has its status code.

mod common;

use common::{code, fixture, fixture_with, status};
use enos_sign_core::{Freshness, Md5Policy, PresentedLogin};
use enos_signer_proto::v1::{IssueMqttCredentialRequest, SignMethod, SignSubDeviceLoginRequest};
use tonic::Code;

#[tokio::test]
async fn a_device_gets_a_credential_that_verifies() {
    let f = fixture().await;
    f.signer
        .put_device("Pk1", "dev-1", "aaabbbcc123")
        .await
        .expect("put");
    let mut device = f.device("Pk1", "dev-1").await;
    let before = enos_signer_svc::state::now_ms();
    let credential = device
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await
        .expect("issued")
        .into_inner();
    assert_eq!(credential.username, "dev-1&Pk1");
    assert_eq!(credential.client_id, "dev-1");
    assert_eq!(credential.secure_mode, 2);
    assert_eq!(credential.sign_method, SignMethod::Hmacsha1 as i32);
    assert!(credential.timestamp_ms >= before);
    assert_eq!(credential.expires_at_ms, credential.timestamp_ms + 300_000);
    assert!(credential.broker_urls.is_empty());
    let presented = PresentedLogin::parse(
        &credential.mqtt_client_id,
        &credential.username,
        Md5Policy::Refuse,
    )
    .expect("EnOS shape");
    let secret = enos_sign_core::DeviceSecret::new("aaabbbcc123".into()).expect("secret");
    presented
        .verify(&credential.password, &secret, Freshness::Any)
        .expect("the password verifies with the device secret");
}
