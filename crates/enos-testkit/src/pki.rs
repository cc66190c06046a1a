//! [`Pki`]: a throwaway CA that issues server certificates (for
//! `127.0.0.1` and `localhost`) and client certificates carrying the
//! identities of [`enos_signer_proto::identity`]; [`Identity`]: a
//! certificate and its key as PEM, writable to files.
//!
//! Everything is generated at run time; nothing here is a fixture.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
};

use enos_sign_core::{DeviceKey, ProductKey};
use enos_signer_proto::identity::PeerIdentity;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};

use crate::Result;

/// A certificate authority for one test or demo run.
pub struct Pki {
    /// Signs every certificate below.
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, for trust stores.
    ca_pem: String,
}

/// A certificate with its private key, both PEM.
#[derive(Clone)]
pub struct Identity {
    /// The leaf certificate.
    pub cert_pem: String,
    /// The leaf's private key (PKCS#8). Test material, but still kept out
    /// of `Debug`.
    pub key_pem: String,
    /// The certificate's serial number (unique in its CA), to revoke it
    /// ([`Pki::crl_pem`]).
    pub serial: Vec<u8>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Identity { cert_pem, key_pem: [REDACTED] }")
    }
}

/// Paths an [`Identity`] was written to.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    /// The certificate PEM file.
    pub cert: PathBuf,
    /// The key PEM file (mode 0600).
    pub key: PathBuf,
}

impl Pki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<Self> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A server certificate for `127.0.0.1`, `::1` and `localhost` plus
    /// `extra_dns_names`.
    pub fn server(&self, extra_dns_names: &[&str]) -> Result<Identity> {
        let mut names: Vec<String> = vec!["localhost".into()];
        names.extend(extra_dns_names.iter().map(|s| (*s).to_owned()));
        let mut params = CertificateParams::new(names)?;
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
        params.distinguished_name = dn("localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// As [`Pki::server`] (no extra names), valid from 2020 until
    /// `not_after` (a past one: an expired server certificate).
    pub fn server_valid_until(&self, not_after: std::time::SystemTime) -> Result<Identity> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name = dn("localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = date_time_ymd(2020, 1, 1);
        let secs = not_after.duration_since(std::time::UNIX_EPOCH)?;
        params.not_after = date_time_ymd(1970, 1, 1) + secs;
        self.sign(params)
    }

    /// A client certificate for a device: URI SAN
    /// `spiffe://enos/device/{pk}/{dk}`, CN = deviceKey.
    pub fn device(&self, product_key: &str, device_key: &str) -> Result<Identity> {
        let identity = PeerIdentity::Device {
            product_key: ProductKey::new(product_key)?,
            device_key: DeviceKey::new(device_key)?,
        };
        self.client_with_uri(device_key, Some(&identity.to_uri()))
    }

    /// A client certificate for an admin: URI SAN `spiffe://enos/admin/{name}`.
    pub fn admin(&self, name: &str) -> Result<Identity> {
        let uri = PeerIdentity::Admin { name: name.into() }.to_uri();
        self.client_with_uri(name, Some(&uri))
    }

    /// A client certificate with any URI SAN (or none), for negative tests.
    pub fn client_with_uri(&self, common_name: &str, uri: Option<&str>) -> Result<Identity> {
        self.sign(client_params(common_name, uri)?)
    }

    /// As [`Pki::device`], valid from 1 January `from_year` to 1 January
    /// `until_year`: a past `until_year` is an expired certificate, a
    /// future `from_year` one not yet valid.
    pub fn device_valid(
        &self,
        product_key: &str,
        device_key: &str,
        from_year: i32,
        until_year: i32,
    ) -> Result<Identity> {
        let identity = PeerIdentity::Device {
            product_key: ProductKey::new(product_key)?,
            device_key: DeviceKey::new(device_key)?,
        };
        let mut params = client_params(device_key, Some(&identity.to_uri()))?;
        params.not_before = date_time_ymd(from_year, 1, 1);
        params.not_after = date_time_ymd(until_year, 1, 1);
        self.sign(params)
    }

    /// As [`Pki::admin`], valid from 1 January `from_year` to 1 January
    /// `until_year`.
    pub fn admin_valid(&self, name: &str, from_year: i32, until_year: i32) -> Result<Identity> {
        let uri = PeerIdentity::Admin { name: name.into() }.to_uri();
        let mut params = client_params(name, Some(&uri))?;
        params.not_before = date_time_ymd(from_year, 1, 1);
        params.not_after = date_time_ymd(until_year, 1, 1);
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> Result<Identity> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let serial = next_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// A CRL of this CA (PEM) revoking `revoked`; valid from 2020 to 2099.
    /// `number` is its CRL number (a newer list has a larger one).
    pub fn crl_pem(&self, number: u64, revoked: &[&Identity]) -> Result<String> {
        self.crl_pem_until(number, revoked, 2099)
    }

    /// As [`Pki::crl_pem`], with its nextUpdate on 1 January of
    /// `next_update_year` (a past year: a CRL that should have been
    /// replaced).
    pub fn crl_pem_until(
        &self,
        number: u64,
        revoked: &[&Identity],
        next_update_year: i32,
    ) -> Result<String> {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2020, 1, 1),
            next_update: date_time_ymd(next_update_year, 1, 1),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|identity| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&identity.serial),
                    revocation_time: date_time_ymd(2021, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// Writes the CA certificate to `dir/ca.pem` and returns its path.
    pub fn write_ca(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("ca.pem");
        fs::write(&path, &self.ca_pem)?;
        Ok(path)
    }
}

impl Identity {
    /// The identity a CA issued: its certificate and the chain that came
    /// with it (DER, leaf first) as one PEM, with `key_pem`.
    pub fn from_issued<'a>(chain: impl IntoIterator<Item = &'a [u8]>, key_pem: String) -> Self {
        use base64::Engine;
        let cert_pem = chain
            .into_iter()
            .map(|der| {
                let body = base64::engine::general_purpose::STANDARD.encode(der);
                let lines: Vec<&str> = body
                    .as_bytes()
                    .chunks(64)
                    .map(|c| std::str::from_utf8(c).unwrap_or_default())
                    .collect();
                format!(
                    "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                    lines.join("\n")
                )
            })
            .collect();
        Identity {
            cert_pem,
            key_pem,
            serial: Vec::new(),
        }
    }

    /// Writes `dir/{stem}.pem` and `dir/{stem}.key` (the key mode 0600).
    pub fn write(&self, dir: &Path, stem: &str) -> Result<IdentityFiles> {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        fs::write(&cert, &self.cert_pem)?;
        write_private(&key, self.key_pem.as_bytes())?;
        Ok(IdentityFiles { cert, key })
    }
}

/// A client certificate's parameters: CN, URI SAN (if any), clientAuth.
fn client_params(common_name: &str, uri: Option<&str>) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name);
    if let Some(uri) = uri {
        params.subject_alt_names.push(SanType::URI(uri.try_into()?));
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

/// A serial number no other certificate of this process has: the start
/// time and a counter (positive: the top bit is clear).
fn next_serial() -> Vec<u8> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut serial = Vec::with_capacity(16);
    serial.extend_from_slice(&(started >> 1).to_be_bytes());
    serial.extend_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    serial
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    Ok(())
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}
