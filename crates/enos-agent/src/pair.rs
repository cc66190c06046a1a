//! The device's key and certificate files: a new key made on the gateway
//! ([`NewKey`], with its CSR), files written atomically, and the
//! candidate pair promoted over the current one so that a crash at any
//! moment leaves a key and a certificate that belong together.
//!
//! # Promotion
//!
//! A renewal (or `enroll`) writes the candidate beside the current pair,
//! `{key}.candidate` first, then `{cert}.candidate`, each written whole
//! (temporary file, fsync, rename, fsync of the directory). Promotion
//! renames the key candidate over the key, then the certificate candidate
//! over the certificate. Two renames are never atomic together, but their
//! order tells every state apart, and [`recover`] (run before the agent
//! reads its pair) finishes or undoes what a crash interrupted:
//!
//! | left over | state | recovery |
//! |---|---|---|
//! | `*.candidate.tmp` | a candidate half written | removed |
//! | key candidate only | the certificate candidate not written yet | discarded |
//! | both candidates | not proven, or not promoted yet | discarded: the current pair is intact |
//! | certificate candidate only | the key promoted, the certificate not yet | completed, if the key fits it |
//!
//! A discarded candidate costs only a renewal again (the schedule is past
//! due, so it comes at once); a completed one is the pair the signer
//! issued and the agent had proven.

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use zeroize::Zeroizing;

use crate::{
    device_key::{self, KeyLocation, TokenSigningKey},
    error::AgentError,
};

/// A private key file's mode: owner read and write only.
const PRIVATE_MODE: u32 = 0o600;
/// A certificate file's mode: public.
const PUBLIC_MODE: u32 = 0o644;

/// A P-256 key made on the gateway (in a file's memory or in the token),
/// and its CSR. Its `Debug` shows no key; a file key's PKCS#8 copy is
/// wiped on drop.
pub enum NewKey {
    /// Made here (ring); written to the key file. Boxed: rcgen's pair is
    /// large beside a token handle.
    File(Box<rcgen::KeyPair>),
    /// Made in the token; it never leaves it.
    Token(TokenSigningKey),
}

impl Drop for NewKey {
    /// Wipes rcgen's PKCS#8 copy of a file key (ring's own key schedule
    /// is freed, not wiped).
    fn drop(&mut self) {
        if let NewKey::File(key) = self {
            zeroize::Zeroize::zeroize(&mut **key);
        }
    }
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NewKey::File(_) => f.write_str("NewKey(ECDSA P-256, redacted)"),
            NewKey::Token(key) => write!(
                f,
                "NewKey(ECDSA P-256 in token {:?})",
                key.token().token_label()
            ),
        }
    }
}

/// rcgen's view of a token key: the CSR is signed in the token.
struct TokenCsrKey<'a>(&'a TokenSigningKey);

impl rcgen::PublicKeyData for TokenCsrKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        // For EC keys rcgen wants the raw point; it wraps it itself.
        self.0.key().public_point()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for TokenCsrKey<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign_der(msg).map_err(|reason| {
            tracing::error!(%reason, "the token did not sign the CSR");
            rcgen::Error::RemoteKeyError
        })
    }
}

impl NewKey {
    /// A fresh ECDSA P-256 key where `location` says: from the system's
    /// random source for a file, generated inside the token for `pkcs11:`.
    pub fn generate(location: &KeyLocation) -> Result<NewKey, AgentError> {
        match location {
            KeyLocation::File(_) => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .map_err(|e| AgentError::KeyGeneration(e.to_string()))?;
                Ok(NewKey::File(Box::new(key)))
            }
            KeyLocation::Token(uri) => {
                let token = device_key::token(uri)?;
                let key = token
                    .generate()
                    .map_err(|e| device_key::token_error(uri, e.to_string()))?;
                Ok(NewKey::Token(TokenSigningKey::new(token, key)))
            }
        }
    }

    /// A PKCS#10 request for this key, DER. Its subject is irrelevant (the
    /// signer keeps only the public key and sets its own names), so it
    /// carries none.
    pub fn csr_der(&self) -> Result<Vec<u8>, AgentError> {
        let params = rcgen::CertificateParams::default();
        let csr = match self {
            NewKey::File(key) => params.serialize_request(&**key),
            NewKey::Token(key) => params.serialize_request(&TokenCsrKey(key)),
        }
        .map_err(|e| AgentError::KeyGeneration(format!("cannot make the CSR: {e}")))?;
        Ok(csr.der().to_vec())
    }

    /// A PKCS#10 request for this key, PEM, with `subject` (short name
    /// and value: C, ST, L, O, OU, CN, in this order): EnOS's CSR, whose
    /// subject the signer checks against its template.
    pub fn csr_pem_with_subject(&self, subject: &[(String, String)]) -> Result<String, AgentError> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (name, value) in subject {
            let kind = match name.as_str() {
                "C" => rcgen::DnType::CountryName,
                "ST" => rcgen::DnType::StateOrProvinceName,
                "L" => rcgen::DnType::LocalityName,
                "O" => rcgen::DnType::OrganizationName,
                "OU" => rcgen::DnType::OrganizationalUnitName,
                "CN" => rcgen::DnType::CommonName,
                other => {
                    return Err(AgentError::KeyGeneration(format!(
                        "the signer's subject names an attribute {other:?} (not C, ST, L, O, OU or CN)"
                    )));
                }
            };
            params.distinguished_name.push(kind, value.as_str());
        }
        let csr = match self {
            NewKey::File(key) => params.serialize_request(&**key),
            NewKey::Token(key) => params.serialize_request(&TokenCsrKey(key)),
        }
        .and_then(|csr| csr.pem())
        .map_err(|e| AgentError::KeyGeneration(format!("cannot make the CSR: {e}")))?;
        Ok(csr)
    }

    /// A file key as PKCS#8 PEM, in a buffer wiped on drop; `None` for a
    /// token key, which has no copy outside the token.
    pub fn pkcs8_pem(&self) -> Option<Zeroizing<String>> {
        match self {
            NewKey::File(key) => Some(Zeroizing::new(key.serialize_pem())),
            NewKey::Token(_) => None,
        }
    }

    /// Where the key went, for the operator: the file and its mode, or the
    /// token.
    pub fn describe(&self, location: &KeyLocation) -> String {
        match self {
            NewKey::File(_) => {
                format!("wrote {location} (a new P-256 key made on this gateway, mode 0600)")
            }
            NewKey::Token(key) => format!(
                "made a new P-256 key in token {:?} (label {:?}; never extractable)",
                key.token().token_label(),
                key.token().uri().label()
            ),
        }
    }
}

/// Where a pair lives: the `[signer]` `cert` and `key` of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairPaths {
    /// The certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Its private key: a PEM file (mode 0600) or a token.
    pub key: KeyLocation,
}

/// `path` with `suffix` appended to its file name.
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

impl PairPaths {
    /// The candidate certificate, beside the current one.
    pub fn candidate_cert(&self) -> PathBuf {
        suffixed(&self.cert, ".candidate")
    }

    /// The candidate key file, beside the current one; `None` for a token
    /// key (the candidate's pair is in the token, named by the candidate
    /// certificate).
    pub fn candidate_key_file(&self) -> Option<PathBuf> {
        self.key.file().map(|key| suffixed(key, ".candidate"))
    }

    /// The candidate pair as a pair.
    pub fn candidate(&self) -> PairPaths {
        PairPaths {
            cert: self.candidate_cert(),
            key: match &self.key {
                KeyLocation::File(key) => KeyLocation::File(suffixed(key, ".candidate")),
                KeyLocation::Token(uri) => KeyLocation::Token(uri.clone()),
            },
        }
    }
}

fn write_error(path: &Path, source: std::io::Error) -> AgentError {
    AgentError::WriteFile {
        path: path.to_owned(),
        cause: source,
    }
}

/// Makes the directory entry changes under `path`'s directory durable.
fn sync_dir(path: &Path) -> Result<(), AgentError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| write_error(dir, e))
}

/// Writes `contents` to `path` whole: a temporary file beside it, created
/// with `mode` (a key is never readable by others, not even for a
/// moment), fsynced, renamed over `path`, and the directory fsynced.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), AgentError> {
    let tmp = suffixed(path, ".tmp");
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(write_error(&tmp, e)),
    }
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(contents)?;
            f.sync_all()
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_error(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| write_error(path, e))?;
    sync_dir(path)
}

/// The PEM chain for a certificate file: the leaf, then the CA
/// certificates the signer returned (issuer first).
pub fn chain_pem(leaf_der: &[u8], chain_der: &[Vec<u8>]) -> String {
    let mut out = String::new();
    for der in std::iter::once(leaf_der).chain(chain_der.iter().map(Vec::as_slice)) {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let encoded = base64_encode(der);
        for line in encoded.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// Standard base64 with padding (PEM's), for public certificates only.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Fails unless the key at `key` is the one the leaf of `cert` certifies
/// (a key file that is private; a token pair for the leaf's public key).
/// Errors never show the key.
pub fn check_pair(pair: &PairPaths) -> Result<(), AgentError> {
    let cert = std::fs::read(&pair.cert).map_err(|source| AgentError::ReadFile {
        path: pair.cert.clone(),
        cause: source,
    })?;
    match &pair.key {
        KeyLocation::File(path) => {
            let key = crate::tls::read_private_key(path)?;
            crate::tls::check_key_fits(&pair.cert, &cert, path, &key)
        }
        KeyLocation::Token(uri) => {
            let chain = crate::tls::parse_certs(&pair.cert, &cert)?;
            device_key::token_key_for(uri, &chain[0]).map(|_| ())
        }
    }
}

/// Fails unless `key` is the key the leaf of `cert_pem` (the chain the
/// signer returned, to be written at `cert_path`) certifies.
pub fn check_fits(key: &NewKey, cert_path: &Path, cert_pem: &[u8]) -> Result<(), AgentError> {
    match key {
        NewKey::File(_) => {
            let pem = key.pkcs8_pem().unwrap_or_default();
            crate::tls::check_key_fits(
                cert_path,
                cert_pem,
                Path::new("(the new key)"),
                pem.as_bytes(),
            )
        }
        NewKey::Token(token_key) => {
            let chain = crate::tls::parse_certs(cert_path, cert_pem)?;
            let certified = crate::certificate::subject_public_key_info(&chain[0]);
            if certified == Some(token_key.public_key_der()) {
                Ok(())
            } else {
                Err(AgentError::Tls {
                    path: cert_path.to_owned(),
                    reason: "the certificate is not for the new key made in the token".into(),
                })
            }
        }
    }
}

/// Writes the candidate pair of a file key beside `pair`: the key first
/// (0600), then the certificate chain, each whole. See the module docs
/// for the order.
pub fn write_candidate(pair: &PairPaths, key: &NewKey, cert_pem: &[u8]) -> Result<(), AgentError> {
    write_candidate_key(pair, key)?;
    write_candidate_cert(pair, cert_pem)
}

/// The first half of [`write_candidate`]: a file key (0600). Written
/// before the signer is asked, so that a directory that cannot take it
/// fails before a token is spent or a certificate issued. A token key is
/// already in the token: nothing to write.
pub fn write_candidate_key(pair: &PairPaths, key: &NewKey) -> Result<(), AgentError> {
    match (pair.candidate_key_file(), key.pkcs8_pem()) {
        (Some(path), Some(pem)) => write_atomically(&path, pem.as_bytes(), PRIVATE_MODE),
        (None, None) => Ok(()),
        _ => Err(AgentError::KeyGeneration(format!(
            "the new key is not of the kind `key` names ({})",
            pair.key
        ))),
    }
}

/// The second half of [`write_candidate`]: the certificate chain.
pub fn write_candidate_cert(pair: &PairPaths, cert_pem: &[u8]) -> Result<(), AgentError> {
    write_atomically(&pair.candidate_cert(), cert_pem, PUBLIC_MODE)
}

/// Promotes the candidate over `pair`: the key file, then the
/// certificate. No `await` between the renames: nothing else in the
/// agent runs between them on its one thread. For a token key the
/// certificate's rename alone switches keys; the token's pairs no
/// certificate names any more are removed after it.
pub fn promote(pair: &PairPaths) -> Result<(), AgentError> {
    if let (Some(candidate), KeyLocation::File(key)) = (pair.candidate_key_file(), &pair.key) {
        rename(&candidate, key)?;
    }
    rename(&pair.candidate_cert(), &pair.cert)?;
    prune_token(pair);
    Ok(())
}

/// Removes the token's pairs that neither the certificate nor the
/// candidate certificate names (left by a renewal that failed or a
/// crash). A failure is logged: the pair in use is never touched, and
/// the next start tries again.
fn prune_token(pair: &PairPaths) {
    let KeyLocation::Token(uri) = &pair.key else {
        return;
    };
    let leaf = |path: &Path| -> Option<Vec<u8>> {
        let pem = std::fs::read(path).ok()?;
        let der = rustls_pemfile::certs(&mut &pem[..]).next()?.ok()?;
        crate::certificate::subject_public_key_info(&der).map(<[u8]>::to_vec)
    };
    let keep: Vec<Vec<u8>> = [leaf(&pair.cert), leaf(&pair.candidate_cert())]
        .into_iter()
        .flatten()
        .collect();
    let keep: Vec<&[u8]> = keep.iter().map(Vec::as_slice).collect();
    let pruned = device_key::token(uri).and_then(|token| {
        token
            .destroy_others(&keep)
            .map_err(|e| device_key::token_error(uri, e.to_string()))
    });
    match pruned {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            removed = n,
            "removed device key pairs no certificate names from the token"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot remove unused device key pairs from the token")
        }
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), AgentError> {
    std::fs::rename(from, to).map_err(|e| write_error(to, e))?;
    sync_dir(to)
}

/// Removes the candidate files (a candidate that failed its proof), and
/// for a token key the candidate's pair.
pub fn discard_candidate(pair: &PairPaths) -> Result<(), AgentError> {
    remove_if_present(&pair.candidate_cert())?;
    if let Some(key) = pair.candidate_key_file() {
        remove_if_present(&key)?;
    }
    prune_token(pair);
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<bool, AgentError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(write_error(path, e)),
    }
}

/// What [`recover`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// No candidate was left over.
    Clean,
    /// A promotion was interrupted after the key: it is finished now.
    Completed,
    /// A candidate that had not started its promotion (or did not fit the
    /// promoted key) was removed; the current pair is untouched.
    Discarded,
}

/// Finishes or undoes a promotion a crash interrupted (see the module
/// docs); run before the pair is read.
pub fn recover(pair: &PairPaths) -> Result<Recovery, AgentError> {
    let candidate = pair.candidate();
    let mut discarded = false;
    for path in std::iter::once(candidate.cert.clone()).chain(pair.candidate_key_file()) {
        discarded |= remove_if_present(&suffixed(&path, ".tmp"))?;
    }
    let recovery = match &pair.key {
        KeyLocation::File(key) => recover_file_pair(pair, key, discarded)?,
        KeyLocation::Token(_) => {
            // One rename promotes a token pair's certificate: a candidate
            // left over was never promoted.
            if remove_if_present(&candidate.cert)? || discarded {
                prune_token(pair);
                Recovery::Discarded
            } else {
                Recovery::Clean
            }
        }
    };
    match recovery {
        Recovery::Clean => {}
        Recovery::Completed => tracing::warn!(
            cert = %pair.cert.display(),
            "a certificate promotion was interrupted; completed it"
        ),
        Recovery::Discarded => tracing::warn!(
            cert = %pair.cert.display(),
            "an unfinished certificate candidate was left over; discarded it, the current pair stays"
        ),
    }
    Ok(recovery)
}

/// [`recover`] for a key file: the table in the module docs.
fn recover_file_pair(
    pair: &PairPaths,
    key: &Path,
    discarded: bool,
) -> Result<Recovery, AgentError> {
    let candidate_cert = pair.candidate_cert();
    let key_left = pair.candidate_key_file().is_some_and(|k| k.exists());
    let cert_left = candidate_cert.exists();
    Ok(match (key_left, cert_left) {
        (false, false) if discarded => Recovery::Discarded,
        (false, false) => Recovery::Clean,
        (true, _) => {
            discard_candidate(pair)?;
            Recovery::Discarded
        }
        (false, true) => {
            let fits = check_pair(&PairPaths {
                cert: candidate_cert.clone(),
                key: KeyLocation::File(key.to_owned()),
            });
            match fits {
                Ok(()) => {
                    rename(&candidate_cert, &pair.cert)?;
                    Recovery::Completed
                }
                Err(e) => {
                    tracing::error!(error = %e, "a left-over certificate candidate does not fit the key; discarded");
                    remove_if_present(&candidate_cert)?;
                    Recovery::Discarded
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::fs::PermissionsExt,
        time::{Duration, SystemTime},
    };

    use enos_ca::{DeviceNames, RequestedKey, Validity};

    use super::*;

    /// A throwaway CA issuing device certificates as the signer does.
    struct Ca {
        key: rcgen::KeyPair,
        cert: rcgen::Certificate,
    }

    impl Ca {
        fn new() -> Ca {
            let key = rcgen::KeyPair::generate().expect("ca key");
            let validity =
                Validity::starting(SystemTime::now(), Duration::from_secs(86_400)).expect("v");
            let cert =
                enos_ca::authority::self_signed_root("test CA", validity, &key).expect("root");
            Ca { key, cert }
        }

        /// The chain PEM the agent would write for `key`'s CSR.
        fn issue(&self, key: &NewKey) -> String {
            let requested =
                RequestedKey::from_csr(&key.csr_der().expect("csr"), 64 * 1024).expect("accepted");
            let issuer = enos_ca::authority::issuer(self.cert.der(), &self.key).expect("issuer");
            let names = DeviceNames {
                uri: "spiffe://enos/device/pkA/gw1".into(),
                common_name: "pkA/gw1".into(),
            };
            let validity =
                Validity::starting(SystemTime::now(), Duration::from_secs(3600)).expect("v");
            let issued = enos_ca::issue::device_certificate(&requested, &names, validity, &issuer)
                .expect("issued");
            chain_pem(issued.der(), &[self.cert.der().to_vec()])
        }

        /// A whole pair, written as `enroll` writes one.
        fn install(&self, pair: &PairPaths) -> (String, Zeroizing<String>) {
            let key = file_key();
            let cert = self.issue(&key);
            let key_pem = key.pkcs8_pem().expect("a file key");
            write_candidate(pair, &key, cert.as_bytes()).expect("candidate");
            promote(pair).expect("promote");
            (cert, key_pem)
        }
    }

    fn file_key() -> NewKey {
        NewKey::generate(&KeyLocation::File("unused".into())).expect("key")
    }

    fn paths(dir: &Path) -> PairPaths {
        PairPaths {
            cert: dir.join("device.pem"),
            key: KeyLocation::File(dir.join("device.key")),
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    fn current(pair: &PairPaths) -> (String, String) {
        (
            std::fs::read_to_string(&pair.cert).expect("cert"),
            std::fs::read_to_string(pair.key.file().expect("a key file")).expect("key"),
        )
    }

    #[test]
    fn the_csr_is_one_the_signer_accepts_and_the_debug_shows_no_key() {
        let key = file_key();
        let csr = key.csr_der().expect("csr");
        let requested = RequestedKey::from_csr(&csr, 64 * 1024).expect("the signer accepts it");
        assert_eq!(requested.kind(), enos_ca::KeyKind::EcP256);
        let debug = format!("{key:?}");
        let pem = key.pkcs8_pem().expect("a file key");
        assert!(!debug.contains("PRIVATE"), "{debug}");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        // A new key each time.
        let other = file_key();
        assert_ne!(*other.pkcs8_pem().expect("a file key"), *pem);
    }

    #[test]
    fn a_key_is_written_0600_whole_and_a_stale_temporary_file_is_replaced() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("k.pem");
        // A stale temporary file left readable by others: replaced, its
        // mode not inherited.
        std::fs::write(suffixed(&path, ".tmp"), "stale").expect("stale");
        std::fs::set_permissions(
            suffixed(&path, ".tmp"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        write_atomically(&path, b"secret", PRIVATE_MODE).expect("write");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read(&path).expect("read"), b"secret");
        assert!(!suffixed(&path, ".tmp").exists());
        // Replaced whole, mode kept.
        write_atomically(&path, b"other", PRIVATE_MODE).expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"other");
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn the_chain_pem_reads_back_as_the_same_certificates() {
        let ca = Ca::new();
        let key = file_key();
        let pem = ca.issue(&key);
        let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("pem");
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[1].as_ref(), ca.cert.der().as_ref());
        crate::tls::check_key_fits(
            Path::new("c"),
            pem.as_bytes(),
            Path::new("k"),
            key.pkcs8_pem().expect("a file key").as_bytes(),
        )
        .expect("the key fits its certificate");
        for n in 0..5 {
            let bytes: Vec<u8> = (0..n).collect();
            let encoded = base64_encode(&bytes);
            assert_eq!(encoded.len() % 4, 0, "{n}");
        }
        assert_eq!(
            base64_encode(b"any carnal pleas"),
            "YW55IGNhcm5hbCBwbGVhcw=="
        );
        assert_eq!(
            base64_encode(b"any carnal pleasu"),
            "YW55IGNhcm5hbCBwbGVhc3U="
        );
        assert_eq!(
            base64_encode(b"any carnal pleasur"),
            "YW55IGNhcm5hbCBwbGVhc3Vy"
        );
    }

    /// The steps of a renewal's file work, in order; a crash is the
    /// process stopping after any prefix of them (or in the middle of a
    /// write, leaving its temporary file).
    #[derive(Debug, Clone, Copy)]
    enum Crash {
        WritingKeyCandidate,
        AfterKeyCandidate,
        WritingCertCandidate,
        AfterBothCandidates,
        AfterKeyPromoted,
        AfterAll,
    }

    fn renew_until(pair: &PairPaths, key_pem: &[u8], cert_pem: &[u8], crash: Crash) {
        let candidate_cert = pair.candidate_cert();
        let candidate_key = pair.candidate_key_file().expect("a key file");
        let key = pair.key.file().expect("a key file");
        let half = |path: &Path, bytes: &[u8]| {
            std::fs::write(suffixed(path, ".tmp"), &bytes[..bytes.len() / 2]).expect("half");
        };
        let both = || {
            write_atomically(&candidate_key, key_pem, PRIVATE_MODE).expect("key");
            write_candidate_cert(pair, cert_pem).expect("candidate");
        };
        match crash {
            Crash::WritingKeyCandidate => half(&candidate_key, key_pem),
            Crash::AfterKeyCandidate => {
                write_atomically(&candidate_key, key_pem, PRIVATE_MODE).expect("key");
            }
            Crash::WritingCertCandidate => {
                write_atomically(&candidate_key, key_pem, PRIVATE_MODE).expect("key");
                half(&candidate_cert, cert_pem);
            }
            Crash::AfterBothCandidates => both(),
            Crash::AfterKeyPromoted => {
                both();
                rename(&candidate_key, key).expect("key promoted");
            }
            Crash::AfterAll => {
                both();
                promote(pair).expect("promoted");
            }
        }
    }

    #[test]
    fn a_crash_at_each_step_of_a_promotion_leaves_a_matching_pair() {
        let ca = Ca::new();
        for crash in [
            Crash::WritingKeyCandidate,
            Crash::AfterKeyCandidate,
            Crash::WritingCertCandidate,
            Crash::AfterBothCandidates,
            Crash::AfterKeyPromoted,
            Crash::AfterAll,
        ] {
            let dir = tempfile::tempdir().expect("dir");
            let pair = paths(dir.path());
            let (old_cert, old_key) = ca.install(&pair);
            let new = file_key();
            let new_cert = ca.issue(&new);
            let new_key = new.pkcs8_pem().expect("a file key");
            renew_until(&pair, new_key.as_bytes(), new_cert.as_bytes(), crash);

            let recovery = recover(&pair).expect("recovers");
            check_pair(&pair).unwrap_or_else(|e| panic!("{crash:?}: not a pair: {e}"));
            assert_eq!(
                mode(pair.key.file().expect("a key file")),
                0o600,
                "{crash:?}"
            );
            let expected = match crash {
                Crash::AfterKeyPromoted => (Recovery::Completed, &new_cert, &new_key),
                Crash::AfterAll => (Recovery::Clean, &new_cert, &new_key),
                _ => (Recovery::Discarded, &old_cert, &old_key),
            };
            assert_eq!(recovery, expected.0, "{crash:?}");
            let (cert, key) = current(&pair);
            assert_eq!(&cert, expected.1, "{crash:?}");
            assert_eq!(key.as_str(), expected.2.as_str(), "{crash:?}");
            let left: Vec<_> = std::fs::read_dir(dir.path())
                .expect("ls")
                .map(|e| e.expect("entry").file_name())
                .collect();
            assert_eq!(left.len(), 2, "{crash:?}: only the pair is left: {left:?}");
            // Recovery again finds nothing to do.
            assert_eq!(recover(&pair).expect("again"), Recovery::Clean, "{crash:?}");
        }
    }

    #[test]
    fn a_first_enrollment_interrupted_after_its_key_completes() {
        // No pair yet (enroll): the key promoted, the certificate not.
        let ca = Ca::new();
        let dir = tempfile::tempdir().expect("dir");
        let pair = paths(dir.path());
        let key = file_key();
        let cert = ca.issue(&key);
        renew_until(
            &pair,
            key.pkcs8_pem().expect("a file key").as_bytes(),
            cert.as_bytes(),
            Crash::AfterKeyPromoted,
        );
        assert!(!pair.cert.exists());
        assert_eq!(recover(&pair).expect("recovers"), Recovery::Completed);
        check_pair(&pair).expect("a pair");
    }

    #[test]
    fn a_left_over_certificate_that_fits_no_key_is_discarded() {
        let ca = Ca::new();
        let dir = tempfile::tempdir().expect("dir");
        let pair = paths(dir.path());
        let (old_cert, _) = ca.install(&pair);
        let stranger = ca.issue(&file_key());
        std::fs::write(pair.candidate_cert(), stranger).expect("write");
        assert_eq!(recover(&pair).expect("recovers"), Recovery::Discarded);
        assert_eq!(current(&pair).0, old_cert);
        check_pair(&pair).expect("the current pair stays");
    }
}
