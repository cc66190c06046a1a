//! A CA of the tests' own, issuing device certificates the way the
//! signer's CA does (`enos-ca`), with any validity: a certificate that is
//! already due for renewal, or already expired. The signer trusts it when
//! its certificate is added to the signer's client CA bundle.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use enos_agent::{
    device_key::KeyLocation,
    pair::{self, NewKey, PairPaths},
};
use enos_ca::{DeviceNames, RequestedKey, Validity};

pub struct TestCa {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let validity =
            Validity::starting(SystemTime::now(), Duration::from_secs(86_400)).expect("validity");
        let cert = enos_ca::authority::self_signed_root(name, validity, &key).expect("root");
        TestCa { key, cert }
    }

    pub fn ca_pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `pk/dk`'s new key, valid from `now + from` to
    /// `now + until` (seconds, negative for the past), as the agent writes
    /// it: the chain PEM and the key PEM.
    pub fn issue(&self, pk: &str, dk: &str, from: i64, until: i64) -> (String, String) {
        let key = NewKey::generate(&KeyLocation::File("unused".into())).expect("key");
        let requested =
            RequestedKey::from_csr(&key.csr_der().expect("csr"), 64 * 1024).expect("accepted");
        let issuer = enos_ca::authority::issuer(self.cert.der(), &self.key).expect("issuer");
        let at = |secs: i64| {
            if secs >= 0 {
                SystemTime::now() + Duration::from_secs(secs.unsigned_abs())
            } else {
                SystemTime::now() - Duration::from_secs(secs.unsigned_abs())
            }
        };
        let names = DeviceNames {
            uri: format!("spiffe://enos/device/{pk}/{dk}"),
            common_name: dk.to_owned(),
        };
        let validity = Validity {
            not_before: at(from),
            not_after: at(until),
        };
        let issued = enos_ca::issue::device_certificate(&requested, &names, validity, &issuer)
            .expect("issued");
        (
            pair::chain_pem(issued.der(), &[self.cert.der().to_vec()]),
            key.pkcs8_pem().expect("a file key").to_string(),
        )
    }

    /// Installs a pair for `pk/dk` at `paths`, as `enroll` would have
    /// when the certificate was issued (the file's mtime is its
    /// notBefore, as the renewal schedule reads it).
    pub fn install(&self, paths: &PairPaths, pk: &str, dk: &str, from: i64, until: i64) {
        let (cert, key) = self.issue(pk, dk, from, until);
        let key_file = paths.candidate_key_file().expect("a key file");
        pair::write_atomically(&key_file, key.as_bytes(), 0o600).expect("key candidate");
        pair::write_candidate_cert(paths, cert.as_bytes()).expect("candidate");
        pair::promote(paths).expect("promote");
        let issued = if from >= 0 {
            SystemTime::now()
        } else {
            SystemTime::now() - Duration::from_secs(from.unsigned_abs())
        };
        std::fs::File::options()
            .write(true)
            .open(&paths.cert)
            .and_then(|f| f.set_modified(issued))
            .expect("mtime");
    }
}

/// Writes a CA bundle of `pems` at `dir/name` and returns its path.
pub fn bundle(dir: &Path, name: &str, pems: &[&str]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pems.concat()).expect("bundle");
    path
}
