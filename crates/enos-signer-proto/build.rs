//! Compiles proto/ with protox (pure Rust: no protoc binary needed).

/// Messages whose derived Debug would print a secret.
const SECRET_BEARING: &[&str] = &[
    "MqttCredential",
    "SubDeviceLogin",
    "PutDeviceRequest",
    "RotateSecretRequest",
    "ImportRow",
    "SubDeviceBatchEntry",
    "CompleteActivationRequest",
    "PutProductSecretRequest",
    "EnrollRequest",
    "EnrollToken",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("enos/signer/v1/signer.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let descriptors = protox::compile([&file], [&root])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("signer_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // Messages carrying a password or a secret get a hand-written,
    // redacting Debug in src/redact.rs instead of the derived one.
    tonic_prost_build::configure()
        .skip_debug(
            SECRET_BEARING
                .iter()
                .map(|m| format!(".enos.signer.v1.{m}")),
        )
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
