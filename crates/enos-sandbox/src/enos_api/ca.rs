//! [`EnosCa`]: the sandbox's "EnOS CA", shaped as EnOS's: a self-signed
//! ECC root (`CN=EnOS ECC CA, OU=Envision Digital, O=Envision`, P-256) and,
//! when given an RSA-2048 key, an RSA root (`CN=EnOS CA, OU=EnOS CA,
//! O=EnOS, emailAddress=ca@eniot.io`), both `C=CN, ST=Shanghai,
//! L=Shanghai`. Leaves are signed directly by the root of the request's
//! `issueAuthority`, with EnOS's profile: the CSR's subject, serial = the
//! integer `certSN`, notAfter = notBefore + `validDay` days, basic
//! constraints CA:FALSE, SKI, AKI, Netscape comment "Enos Generated
//! Certificate" and Netscape CA revocation URL; no SAN, key usage or
//! extended key usage.

use std::{
    io::Write,
    path::Path,
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, DnValue, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, RevocationReason, RevokedCertParams, SerialNumber,
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use x509_parser::{
    certification_request::X509CertificationRequest,
    der_parser::asn1_rs::Tag,
    oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION},
    prelude::FromDer,
    public_key::PublicKey,
};

use crate::error::SandboxError;

/// `sha256WithRSAEncryption`.
const SHA256_WITH_RSA: &str = "1.2.840.113549.1.1.11";
/// `ecdsa-with-SHA256`.
const ECDSA_WITH_SHA256: &str = "1.2.840.10045.4.3.2";
/// Netscape comment.
const NETSCAPE_COMMENT: &[u64] = &[2, 16, 840, 1, 113_730, 1, 13];
/// Netscape CA revocation URL.
const NETSCAPE_CA_REVOCATION_URL: &[u64] = &[2, 16, 840, 1, 113_730, 1, 4];
/// The largest CSR read.
const CSR_LIMIT: usize = 16 * 1024;
/// How long the roots are valid (EnOS's RSA root: ten years).
const ROOT_LIFETIME: Duration = Duration::from_secs(3650 * 86_400);

/// `issueAuthority`: which root signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Authority {
    /// RSA-2048 keys, SHA256withRSA (EnOS's default).
    #[serde(rename = "RSA")]
    Rsa,
    /// P-256 keys, SHA256withECDSA.
    #[serde(rename = "ECC")]
    Ecc,
}

impl Authority {
    /// Reads `RSA` or `ECC`, in any case.
    pub fn parse(text: &str) -> Option<Self> {
        if text.eq_ignore_ascii_case("RSA") {
            Some(Authority::Rsa)
        } else if text.eq_ignore_ascii_case("ECC") {
            Some(Authority::Ecc)
        } else {
            None
        }
    }

    /// `RSA` or `ECC`.
    pub fn name(self) -> &'static str {
        match self {
            Authority::Rsa => "RSA",
            Authority::Ecc => "ECC",
        }
    }
}

/// One root: its certificate and its key as rcgen signs with it.
struct Root {
    /// The certificate, DER.
    der: Vec<u8>,
    /// Signs leaves and CRLs.
    issuer: Issuer<'static, KeyPair>,
    /// C, ST, O of its subject, for the optional subject rule.
    c_st_o: [String; 3],
}

/// The sandbox's EnOS CA: the ECC root always, the RSA root when a key
/// was given.
pub struct EnosCa {
    /// The ECC root.
    ecc: Root,
    /// The RSA root, when configured.
    rsa: Option<Root>,
}

impl std::fmt::Debug for EnosCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnosCa")
            .field("rsa", &self.rsa.is_some())
            .finish_non_exhaustive()
    }
}

/// A CSR that passed EnOS's rules: what the certificate is made of.
#[derive(Debug, Clone)]
pub struct CheckedCsr {
    /// The public key.
    pub public_key: rcgen::SubjectPublicKeyInfo,
    /// The subject, in the request's order.
    pub subject: DistinguishedName,
    /// The subject's CN (the uniqueness check's key).
    pub common_name: String,
    /// The subject as Java prints it (RFC 2253, last RDN first), for List.
    pub subject_text: String,
    /// The SubjectPublicKeyInfo in hex: one key, one device (11833).
    pub key_hex: String,
}

fn root_subject(authority: Authority) -> Vec<(DnType, &'static str)> {
    let common = [
        (DnType::CountryName, "CN"),
        (DnType::StateOrProvinceName, "Shanghai"),
        (DnType::LocalityName, "Shanghai"),
    ];
    let mut subject = common.to_vec();
    match authority {
        Authority::Ecc => subject.extend([
            (DnType::OrganizationName, "Envision"),
            (DnType::OrganizationalUnitName, "Envision Digital"),
            (DnType::CommonName, "EnOS ECC CA"),
        ]),
        Authority::Rsa => subject.extend([
            (DnType::OrganizationName, "EnOS"),
            (DnType::OrganizationalUnitName, "EnOS CA"),
            (DnType::CommonName, "EnOS CA"),
            (
                DnType::CustomDnType(vec![1, 2, 840, 113_549, 1, 9, 1]),
                "ca@eniot.io",
            ),
        ]),
    }
    subject
}

fn settings_error(message: String) -> SandboxError {
    SandboxError::Settings(format!("the EnOS CA: {message}"))
}

/// A new self-signed root of `authority` for `key`.
fn make_root(authority: Authority, key: &KeyPair) -> Result<Vec<u8>, SandboxError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    for (ty, value) in root_subject(authority) {
        let value = match ty {
            DnType::CustomDnType(_) => DnValue::Ia5String(
                value
                    .try_into()
                    .map_err(|_| settings_error("bad e-mail".into()))?,
            ),
            _ => DnValue::Utf8String(value.into()),
        };
        name.push(ty, value);
    }
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    params.not_before = now.into();
    params.not_after = (now + ROOT_LIFETIME).into();
    let mut serial = [0u8; 8];
    getrandom::fill(&mut serial).map_err(|e| settings_error(e.to_string()))?;
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let certificate = params
        .self_signed(key)
        .map_err(|e| settings_error(format!("cannot sign the {} root: {e}", authority.name())))?;
    Ok(certificate.der().to_vec())
}

fn root(authority: Authority, der: Vec<u8>, key: KeyPair) -> Result<Root, SandboxError> {
    let (_, certificate) = x509_parser::parse_x509_certificate(&der).map_err(|e| {
        settings_error(format!("the {} root does not parse: {e}", authority.name()))
    })?;
    if certificate.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(settings_error(format!(
            "the {} root is not for its key",
            authority.name()
        )));
    }
    let attr = |oid| {
        certificate
            .subject()
            .iter_by_oid(oid)
            .next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let c_st_o = [
        attr(&x509_parser::oid_registry::OID_X509_COUNTRY_NAME),
        attr(&x509_parser::oid_registry::OID_X509_STATE_OR_PROVINCE_NAME),
        attr(&x509_parser::oid_registry::OID_X509_ORGANIZATION_NAME),
    ];
    let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(der.as_slice()), key)
        .map_err(|e| settings_error(e.to_string()))?;
    Ok(Root {
        der,
        issuer,
        c_st_o,
    })
}

/// Writes `bytes` to `path`, owner-only when `private`.
fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), SandboxError> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| SandboxError::Read {
        path: path.to_owned(),
        cause: e,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)
}

fn read_pem_cert(path: &Path) -> Result<Vec<u8>, SandboxError> {
    let pem = std::fs::read(path).map_err(|e| SandboxError::Read {
        path: path.to_owned(),
        cause: e,
    })?;
    CertificateDer::from_pem_slice(&pem)
        .map(|c| c.as_ref().to_vec())
        .map_err(|e| settings_error(format!("{}: {e}", path.display())))
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// DER of an IA5String (the Netscape extensions' content).
fn ia5(text: &str) -> Vec<u8> {
    let mut der = vec![0x16];
    let len = text.len();
    if len < 128 {
        der.push(len as u8);
    } else {
        der.extend([0x81, len as u8]);
    }
    der.extend_from_slice(text.as_bytes());
    der
}

impl EnosCa {
    /// Loads the CA from `state_dir` (made there on first start), or makes
    /// one in memory; with `rsa_key`, the RSA root too.
    pub fn open(state_dir: Option<&Path>, rsa_key: Option<&Path>) -> Result<Self, SandboxError> {
        let ecc = match state_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| SandboxError::Read {
                    path: dir.to_owned(),
                    cause: e,
                })?;
                let key_path = dir.join("ecc-ca.key");
                let cert_path = dir.join("ecc-ca.pem");
                if key_path.exists() {
                    let key_pem = enos_domain::private_file::read(&key_path)
                        .map_err(|e| settings_error(e.to_string()))?;
                    let key = KeyPair::from_pem(&String::from_utf8_lossy(&key_pem))
                        .map_err(|e| settings_error(format!("{}: {e}", key_path.display())))?;
                    root(Authority::Ecc, read_pem_cert(&cert_path)?, key)?
                } else {
                    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                        .map_err(|e| settings_error(e.to_string()))?;
                    let der = make_root(Authority::Ecc, &key)?;
                    write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
                    write_file(&cert_path, pem("CERTIFICATE", &der).as_bytes(), false)?;
                    root(Authority::Ecc, der, key)?
                }
            }
            None => {
                let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                    .map_err(|e| settings_error(e.to_string()))?;
                let der = make_root(Authority::Ecc, &key)?;
                root(Authority::Ecc, der, key)?
            }
        };
        let rsa = match rsa_key {
            None => None,
            Some(path) => {
                let key_pem = enos_domain::private_file::read(path)
                    .map_err(|e| settings_error(e.to_string()))?;
                let key = KeyPair::from_pem(&String::from_utf8_lossy(&key_pem))
                    .map_err(|e| settings_error(format!("{}: {e}", path.display())))?;
                if !key.is_compatible(&rcgen::PKCS_RSA_SHA256) {
                    return Err(settings_error(format!(
                        "{}: not an RSA key",
                        path.display()
                    )));
                }
                let cert_path = state_dir.map(|d| d.join("rsa-ca.pem"));
                let existing = match &cert_path {
                    Some(p) if p.exists() => Some(read_pem_cert(p)?),
                    _ => None,
                };
                let der = match existing {
                    Some(der)
                        if x509_parser::parse_x509_certificate(&der).is_ok_and(|(_, c)| {
                            c.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
                        }) =>
                    {
                        der
                    }
                    _ => {
                        let der = make_root(Authority::Rsa, &key)?;
                        if let Some(p) = &cert_path {
                            write_file(p, pem("CERTIFICATE", &der).as_bytes(), false)?;
                        }
                        der
                    }
                };
                Some(root(Authority::Rsa, der, key)?)
            }
        };
        Ok(EnosCa { ecc, rsa })
    }

    fn root(&self, authority: Authority) -> Option<&Root> {
        match authority {
            Authority::Ecc => Some(&self.ecc),
            Authority::Rsa => self.rsa.as_ref(),
        }
    }

    /// The roots' certificates, DER: what the MQTTS listener trusts.
    pub fn root_ders(&self) -> Vec<Vec<u8>> {
        let mut roots = vec![self.ecc.der.clone()];
        roots.extend(self.rsa.as_ref().map(|r| r.der.clone()));
        roots
    }

    /// The root of `authority`, PEM; `None` when not configured.
    pub fn root_pem(&self, authority: Authority) -> Option<String> {
        self.root(authority).map(|r| pem("CERTIFICATE", &r.der))
    }

    /// Whether `der`'s issuer is one of the roots (by name and signature),
    /// and which.
    pub fn issued_by(&self, der: &[u8]) -> Option<Authority> {
        let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
        [Authority::Ecc, Authority::Rsa].into_iter().find(|a| {
            self.root(*a).is_some_and(|root| {
                x509_parser::parse_x509_certificate(&root.der).is_ok_and(|(_, r)| {
                    r.subject().as_raw() == certificate.issuer().as_raw()
                        && certificate.verify_signature(Some(r.public_key())).is_ok()
                })
            })
        })
    }

    /// Checks `csr` (PEM, `CERTIFICATE REQUEST` or keytool's `NEW
    /// CERTIFICATE REQUEST`) by EnOS's rules for `authority`. `Err` is the
    /// detail of EnOS's "Invalid cert request!" (99400).
    pub fn check_csr(
        &self,
        csr: &str,
        authority: Authority,
        subject_must_match_root: bool,
    ) -> Result<CheckedCsr, String> {
        if csr.len() > CSR_LIMIT {
            return Err(format!("the CSR is larger than {CSR_LIMIT} bytes"));
        }
        let (_, pem) = x509_parser::pem::parse_x509_pem(csr.as_bytes())
            .map_err(|_| "the CSR is not PEM".to_owned())?;
        if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
            return Err(format!(
                "the PEM label {:?} is not a certificate request",
                pem.label
            ));
        }
        let (rest, request) = X509CertificationRequest::from_der(&pem.contents)
            .map_err(|_| "the CSR is not PKCS#10".to_owned())?;
        if !rest.is_empty() {
            return Err("the CSR has trailing bytes".into());
        }
        let info = &request.certification_request_info;
        let spki = &info.subject_pki;
        let algorithm = request.signature_algorithm.algorithm.to_id_string();
        match authority {
            Authority::Rsa => {
                let bits = match (
                    spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION,
                    spki.parsed(),
                ) {
                    (true, Ok(PublicKey::RSA(rsa))) => rsa.key_size(),
                    _ => 0,
                };
                if bits != 2048 {
                    return Err(format!(
                        "issueAuthority RSA needs an RSA-2048 key; the CSR's key is {}",
                        describe(spki)
                    ));
                }
                if algorithm != SHA256_WITH_RSA {
                    return Err(format!(
                        "issueAuthority RSA needs SHA256withRSA; the CSR is signed with {algorithm}"
                    ));
                }
            }
            Authority::Ecc => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok());
                if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY
                    || curve != Some(OID_EC_P256)
                {
                    return Err(format!(
                        "issueAuthority ECC needs a P-256 key; the CSR's key is {}",
                        describe(spki)
                    ));
                }
                if algorithm != ECDSA_WITH_SHA256 {
                    return Err(format!(
                        "issueAuthority ECC needs SHA256withECDSA; the CSR is signed with {algorithm}"
                    ));
                }
            }
        }
        request
            .verify_signature()
            .map_err(|_| "the CSR's signature does not verify with its key".to_owned())?;
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
            .map_err(|e| format!("the CSR's key: {e}"))?;

        // The subject: C (2), ST, L, O, OU, CN (64 each) required.
        let mut subject = DistinguishedName::new();
        let mut seen: Vec<(String, String)> = Vec::new();
        for rdn in info.subject.iter() {
            for attr in rdn.iter() {
                let oid: Vec<u64> = attr
                    .attr_type()
                    .iter()
                    .ok_or("the subject has an unreadable attribute type")?
                    .collect();
                let value = attr
                    .as_str()
                    .map_err(|_| "the subject has a value that is not a string".to_owned())?;
                let short = short_name(&oid);
                let ty = DnType::from_oid(&oid);
                let dn_value = match attr.attr_value().tag() {
                    Tag::PrintableString => DnValue::PrintableString(
                        value
                            .try_into()
                            .map_err(|_| format!("{short}: not a PrintableString"))?,
                    ),
                    Tag::Ia5String => DnValue::Ia5String(
                        value.try_into().map_err(|_| format!("{short}: not IA5"))?,
                    ),
                    _ => DnValue::Utf8String(value.to_owned()),
                };
                subject.push(ty, dn_value);
                seen.push((short, value.to_owned()));
            }
        }
        let get = |name: &str| {
            seen.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        for (name, max) in [
            ("C", 2),
            ("ST", 64),
            ("L", 64),
            ("O", 64),
            ("OU", 64),
            ("CN", 64),
        ] {
            match get(name) {
                None | Some("") => return Err(format!("the subject has no {name}")),
                Some(v) if v.chars().count() > max => {
                    return Err(format!(
                        "the subject's {name} is longer than {max} characters"
                    ));
                }
                Some(_) => {}
            }
        }
        if get("EMAILADDRESS").is_some_and(|v| v.chars().count() > 64) {
            return Err("the subject's emailAddress is longer than 64 characters".into());
        }
        if subject_must_match_root && let Some(root) = self.root(authority) {
            for (i, name) in ["C", "ST", "O"].into_iter().enumerate() {
                if get(name) != Some(root.c_st_o[i].as_str()) {
                    return Err(format!(
                        "the subject's {name} must be the root's {:?}",
                        root.c_st_o[i]
                    ));
                }
            }
        }
        let subject_text = seen
            .iter()
            .rev()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(CheckedCsr {
            public_key,
            subject,
            common_name: get("CN").unwrap_or_default().to_owned(),
            subject_text,
            key_hex: spki.raw.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }

    /// Signs `csr` by the root of `authority` with EnOS's leaf profile:
    /// serial `serial`, valid from `not_before` to `not_after`. PEM; `Err`
    /// when that root is not configured or signing fails (EnOS's "Call ca
    /// error!", 99500).
    pub fn issue(
        &self,
        csr: &CheckedCsr,
        authority: Authority,
        serial: u64,
        not_before: SystemTime,
        not_after: SystemTime,
        crl_url: &str,
    ) -> Result<String, String> {
        let root = self.root(authority).ok_or_else(|| {
            format!(
                "the sandbox has no {} root (give [enos_api] rsa_ca_key)",
                authority.name()
            )
        })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = csr.subject.clone();
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        params.custom_extensions = vec![
            CustomExtension::from_oid_content(NETSCAPE_COMMENT, ia5("Enos Generated Certificate")),
            CustomExtension::from_oid_content(NETSCAPE_CA_REVOCATION_URL, ia5(crl_url)),
        ];
        let certificate = params
            .signed_by(&csr.public_key, &root.issuer)
            .map_err(|e| e.to_string())?;
        Ok(certificate.pem())
    }

    /// The CRL of `authority`'s root listing `revoked` (serial, when,
    /// RFC 5280 reason code), PEM; `None` when that root is not configured.
    pub fn crl(&self, authority: Authority, revoked: &[(u64, SystemTime, u8)]) -> Option<String> {
        let root = self.root(authority)?;
        let now = SystemTime::now();
        let params = CertificateRevocationListParams {
            this_update: now.into(),
            next_update: (now + Duration::from_secs(86_400)).into(),
            crl_number: SerialNumber::from(
                now.duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(1, |d| d.as_millis() as u64),
            ),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|(serial, at, reason)| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: (*at).into(),
                    reason_code: reason_of(*reason),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&root.issuer).ok()?;
        Some(pem("X509 CRL", crl.der()))
    }
}

/// The RFC 5280 reason of an EnOS `reason` code (0 is left out, as RFC
/// 5280 asks for unspecified).
fn reason_of(code: u8) -> Option<RevocationReason> {
    Some(match code {
        1 => RevocationReason::KeyCompromise,
        3 => RevocationReason::AffiliationChanged,
        4 => RevocationReason::Superseded,
        5 => RevocationReason::CessationOfOperation,
        6 => RevocationReason::CertificateHold,
        9 => RevocationReason::PrivilegeWithdrawn,
        _ => return None,
    })
}

/// A subject attribute's short name, as Java prints it.
fn short_name(oid: &[u64]) -> String {
    match oid {
        [2, 5, 4, 6] => "C".into(),
        [2, 5, 4, 8] => "ST".into(),
        [2, 5, 4, 7] => "L".into(),
        [2, 5, 4, 10] => "O".into(),
        [2, 5, 4, 11] => "OU".into(),
        [2, 5, 4, 3] => "CN".into(),
        [1, 2, 840, 113_549, 1, 9, 1] => "EMAILADDRESS".into(),
        other => other
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    }
}

/// A key's algorithm in words: never key material.
fn describe(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> String {
    if spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
        return format!("RSA of {} bits", spki.parsed().map_or(0, |k| k.key_size()));
    }
    if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map_or_else(|| "?".to_owned(), |c| c.to_id_string());
        return format!("EC on curve {curve}");
    }
    format!("of algorithm {}", spki.algorithm.algorithm.to_id_string())
}
