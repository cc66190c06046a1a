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
    /// The gateway registered in it: the agent's `[device]`.
    pub gw: (String, String),
}

impl SignerFixture {
    /// Starts a signer in `dir` issuing credentials valid `ttl_secs`, with
    /// the gateway `gw` registered under `secret`.
    pub async fn start(dir: &Path, gw: (&str, &str), secret: &str, ttl_secs: u64) -> SignerFixture {
        let pki = Pki::new("agent-test-ca").expect("pki");
        let signer_dir = dir.join("signer");
        let signer = TestSigner::start_with(&signer_dir, &pki, |c| {
            c.policy.ttl = std::time::Duration::from_secs(ttl_secs)
        })
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
            gw: (gw.0.to_owned(), gw.1.to_owned()),
        }
    }

    /// The agent's `[device]` (the gateway) and `[signer]` sections.
    pub fn toml(&self) -> String {
        format!(
            "[device]\nproduct_key = \"{}\"\ndevice_key = \"{}\"\n\n\
             [signer]\nendpoints = [\"{}\"]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nconnect_timeout = \"1s\"\nrequest_timeout = \"2s\"\n",
            self.gw.0,
            self.gw.1,
            self.signer.uri(),
            self.ca.display(),
            self.cert.display(),
            self.key.display()
        )
    }

    /// A whole agent config against `broker`, with short test timings;
    /// `extra` is appended.
    pub fn agent_toml(&self, broker: &str, extra: &str) -> String {
        format!(
            r#"{head}
[enos]
broker = "{broker}"
keepalive = "5s"
connect_timeout = "2s"

[backoff]
min = "50ms"
max = "500ms"
jitter = 1.0
refusal_factor = 4
reset_after = "1s"

[sub_device_login]
reply_timeout = "2s"
max_attempts = 3
{extra}
"#,
            head = self.toml(),
        )
    }
}
