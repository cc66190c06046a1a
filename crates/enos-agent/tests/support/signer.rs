//! The real signer (`enos_testkit::signer::TestSigner`) on 127.0.0.1 with
//! mTLS, and the agent-side files (CA, gateway certificate) to reach it.

use std::path::{Path, PathBuf};

use enos_testkit::Pki;
use enos_testkit::signer::TestSigner;

/// A running signer plus what the agent needs to talk to it.
pub struct SignerFixture {
    pub signer: TestSigner,
    pub pki: Pki,
    /// The CA that signs the signer's server certificate.
    pub ca: PathBuf,
    /// The gateway's client certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl SignerFixture {
    /// Starts a signer in `dir` issuing credentials valid `ttl_secs`, with
    /// the gateway `gw` registered under `secret`.
    pub async fn start(dir: &Path, gw: (&str, &str), secret: &str, ttl_secs: u64) -> SignerFixture {
        let pki = Pki::new("agent-test-ca").expect("pki");
        let signer_dir = dir.join("signer");
        let signer = TestSigner::start_with(&signer_dir, &pki, |c| c.policy.ttl_secs = ttl_secs)
            .await
            .expect("signer starts");
        signer
            .put_device(gw.0, gw.1, secret)
            .await
            .expect("put gateway");
        let ca = pki.write_ca(dir).expect("ca");
        let files = pki
            .device(gw.0, gw.1)
            .expect("device cert")
            .write(dir, "gateway")
            .expect("write cert");
        SignerFixture {
            signer,
            pki,
            ca,
            cert: files.cert,
            key: files.key,
        }
    }

    /// The agent's `[signer]` section.
    pub fn toml(&self) -> String {
        format!(
            "[signer]\nendpoints = [\"{}\"]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nconnect_timeout = \"1s\"\nrequest_timeout = \"2s\"\n",
            self.signer.uri(),
            self.ca.display(),
            self.cert.display(),
            self.key.display()
        )
    }
}
