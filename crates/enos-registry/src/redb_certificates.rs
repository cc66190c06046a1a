//! redb's tables of the signer as a CA: certificates (by serial, and an
//! index by device), enrollment tokens (by hash, and an index by device),
//! the one CA row, and the EnOS certificates of each device (issue 26);
//! their stored forms (protobuf, like the devices');
//! and the steps the write transactions of [`super::redb_store`] are made
//! of.

use std::{collections::HashSet, ops::Bound};

use enos_custody::StoredCaKey;
use enos_sign_core::{DeviceKey, ProductKey};
use prost::Message;
use redb::{ReadableTable, TableDefinition, WriteTransaction};

use crate::{
    DeviceId,
    certificates::{CaRecord, CertificateRecord, EnrollTokenRecord, Revocation},
    enos_certificates::EnosCertificateRecord,
    error::{RegistryError, Result},
};

/// serial → encoded [`StoredCertificate`].
pub(super) const CERTIFICATES: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new("certificates");
/// `(productKey, deviceKey, serial)` → nothing: a device's certificates.
pub(super) const CERTIFICATES_BY_DEVICE: TableDefinition<'static, (&str, &str, &str), ()> =
    TableDefinition::new("certificates_by_device");
/// token hash → encoded [`StoredToken`].
pub(super) const ENROLL_TOKENS: TableDefinition<'static, &[u8], &[u8]> =
    TableDefinition::new("enroll_tokens");
/// `(productKey, deviceKey, hash)` → nothing: a device's tokens.
pub(super) const ENROLL_TOKENS_BY_DEVICE: TableDefinition<'static, (&str, &str, &[u8]), ()> =
    TableDefinition::new("enroll_tokens_by_device");
/// [`CA_ROW`] → encoded [`StoredCa`]; one row at most.
pub(super) const CA: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("ca");
/// The key of the one CA row.
const CA_ROW: &str = "ca";

/// The stored form of a [`CertificateRecord`] (the serial is the key).
#[derive(Clone, PartialEq, prost::Message)]
struct StoredCertificate {
    #[prost(string, tag = "1")]
    product_key: String,
    #[prost(string, tag = "2")]
    device_key: String,
    #[prost(uint64, tag = "3")]
    not_before_ms: u64,
    #[prost(uint64, tag = "4")]
    not_after_ms: u64,
    #[prost(uint64, tag = "5")]
    issued_at_ms: u64,
    #[prost(uint64, optional, tag = "6")]
    revoked_at_ms: Option<u64>,
    #[prost(string, tag = "7")]
    revoked_reason: String,
    #[prost(string, optional, tag = "8")]
    renewed_by: Option<String>,
}

/// The stored form of an [`EnrollTokenRecord`] (the hash is the key).
#[derive(Clone, PartialEq, prost::Message)]
struct StoredToken {
    #[prost(string, tag = "1")]
    product_key: String,
    #[prost(string, tag = "2")]
    device_key: String,
    #[prost(uint64, tag = "3")]
    created_at_ms: u64,
    #[prost(uint64, tag = "4")]
    expires_at_ms: u64,
    #[prost(uint64, optional, tag = "5")]
    used_at_ms: Option<u64>,
    #[prost(uint64, optional, tag = "6")]
    revoked_at_ms: Option<u64>,
}

/// The stored form of the [`CaRecord`].
#[derive(Clone, PartialEq, prost::Message)]
struct StoredCa {
    #[prost(string, tag = "1")]
    key_scheme: String,
    #[prost(bytes = "vec", tag = "2")]
    key_bytes: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    key_public_der: Vec<u8>,
    #[prost(bytes = "vec", repeated, tag = "4")]
    chain_der: Vec<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pending_csr_der: Option<Vec<u8>>,
    #[prost(uint64, tag = "6")]
    created_at_ms: u64,
}

/// Opens (creating when absent) every table of this module: at create,
/// and at open for files made before them.
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<()> {
    txn.open_table(CERTIFICATES)?;
    txn.open_table(CERTIFICATES_BY_DEVICE)?;
    txn.open_table(ENROLL_TOKENS)?;
    txn.open_table(ENROLL_TOKENS_BY_DEVICE)?;
    txn.open_table(CA)?;
    txn.open_table(ENOS_CERTIFICATES)?;
    Ok(())
}

fn device_id(pk: &str, dk: &str, what: &str) -> Result<DeviceId> {
    let corrupt = || RegistryError::Store(format!("{what}: bad device id {pk}/{dk}"));
    Ok(DeviceId::new(
        ProductKey::new(pk).map_err(|_| corrupt())?,
        DeviceKey::new(dk).map_err(|_| corrupt())?,
    ))
}

fn encode_cert(cert: &CertificateRecord) -> Vec<u8> {
    StoredCertificate {
        product_key: cert.device.product_key.to_string(),
        device_key: cert.device.device_key.to_string(),
        not_before_ms: cert.not_before_ms,
        not_after_ms: cert.not_after_ms,
        issued_at_ms: cert.issued_at_ms,
        revoked_at_ms: cert.revoked.as_ref().map(|r| r.at_ms),
        revoked_reason: cert
            .revoked
            .as_ref()
            .map(|r| r.reason.clone())
            .unwrap_or_default(),
        renewed_by: cert.renewed_by.clone(),
    }
    .encode_to_vec()
}

pub(super) fn decode_cert(serial: &str, bytes: &[u8]) -> Result<CertificateRecord> {
    let what = format!("certificate {serial}");
    let stored = StoredCertificate::decode(bytes)
        .map_err(|_| RegistryError::Store(format!("{what}: undecodable")))?;
    Ok(CertificateRecord {
        serial: serial.to_owned(),
        device: device_id(&stored.product_key, &stored.device_key, &what)?,
        not_before_ms: stored.not_before_ms,
        not_after_ms: stored.not_after_ms,
        issued_at_ms: stored.issued_at_ms,
        revoked: stored.revoked_at_ms.map(|at_ms| Revocation {
            at_ms,
            reason: stored.revoked_reason,
        }),
        renewed_by: stored.renewed_by,
    })
}

fn encode_token(token: &EnrollTokenRecord) -> Vec<u8> {
    StoredToken {
        product_key: token.device.product_key.to_string(),
        device_key: token.device.device_key.to_string(),
        created_at_ms: token.created_at_ms,
        expires_at_ms: token.expires_at_ms,
        used_at_ms: token.used_at_ms,
        revoked_at_ms: token.revoked_at_ms,
    }
    .encode_to_vec()
}

fn decode_token(hash: &[u8], bytes: &[u8]) -> Result<EnrollTokenRecord> {
    // Named by device, never by hash, in messages.
    let stored = StoredToken::decode(bytes)
        .map_err(|_| RegistryError::Store("an enrollment token record is undecodable".into()))?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| RegistryError::Store("an enrollment token key is not 32 bytes".into()))?;
    Ok(EnrollTokenRecord {
        hash,
        device: device_id(&stored.product_key, &stored.device_key, "enrollment token")?,
        created_at_ms: stored.created_at_ms,
        expires_at_ms: stored.expires_at_ms,
        used_at_ms: stored.used_at_ms,
        revoked_at_ms: stored.revoked_at_ms,
    })
}

fn encode_ca(ca: &CaRecord) -> Vec<u8> {
    StoredCa {
        key_scheme: ca.key.scheme.clone(),
        key_bytes: ca.key.bytes.clone(),
        key_public_der: ca.key.public_key_der.clone(),
        chain_der: ca.chain_der.clone(),
        pending_csr_der: ca.pending_csr_der.clone(),
        created_at_ms: ca.created_at_ms,
    }
    .encode_to_vec()
}

fn decode_ca(bytes: &[u8]) -> Result<CaRecord> {
    let stored = StoredCa::decode(bytes)
        .map_err(|_| RegistryError::Store("the CA record is undecodable".into()))?;
    Ok(CaRecord {
        key: StoredCaKey {
            scheme: stored.key_scheme,
            bytes: stored.key_bytes,
            public_key_der: stored.key_public_der,
        },
        chain_der: stored.chain_der,
        pending_csr_der: stored.pending_csr_der,
        created_at_ms: stored.created_at_ms,
    })
}

/// Every revoked serial (the in-memory set at open).
pub(super) fn revoked_serials(db: &redb::Database) -> Result<HashSet<String>> {
    let txn = db.begin_read()?;
    let table = txn.open_table(CERTIFICATES)?;
    let mut serials = HashSet::new();
    for entry in table.iter()? {
        let (key, value) = entry?;
        let cert = decode_cert(key.value(), value.value())?;
        if cert.revoked.is_some() {
            serials.insert(cert.serial);
        }
    }
    Ok(serials)
}

/// The certificate of `serial`.
pub(super) fn certificate(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    serial: &str,
) -> Result<Option<CertificateRecord>> {
    table
        .get(serial)?
        .map(|v| decode_cert(serial, v.value()))
        .transpose()
}

/// Every certificate, in serial order (for the CRL, the counts and a
/// copy).
pub(super) fn all_certificates(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<CertificateRecord>> {
    let start = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut out = Vec::new();
    for entry in table.range::<&str>((start, Bound::Unbounded))? {
        if out.len() >= limit {
            break;
        }
        let (key, value) = entry?;
        out.push(decode_cert(key.value(), value.value())?);
    }
    Ok(out)
}

/// The serials of `device`'s certificates.
pub(super) fn serials_of(
    index: &impl ReadableTable<(&'static str, &'static str, &'static str), ()>,
    device: &DeviceId,
) -> Result<Vec<String>> {
    let (pk, dk) = (device.product_key.as_str(), device.device_key.as_str());
    let mut serials = Vec::new();
    for entry in
        index.range::<(&str, &str, &str)>((Bound::Included((pk, dk, "")), Bound::Unbounded))?
    {
        let (key, _) = entry?;
        let (kpk, kdk, serial) = key.value();
        if (kpk, kdk) != (pk, dk) {
            break;
        }
        serials.push(serial.to_owned());
    }
    Ok(serials)
}

/// Records a new certificate; a serial recorded already is refused (a
/// random 128-bit serial twice is a bug, never overwritten).
pub(super) fn insert_certificate(txn: &WriteTransaction, cert: &CertificateRecord) -> Result<()> {
    let mut table = txn.open_table(CERTIFICATES)?;
    if table.get(cert.serial.as_str())?.is_some() {
        return Err(RegistryError::Store(format!(
            "certificate serial {} is recorded already",
            cert.serial
        )));
    }
    table.insert(cert.serial.as_str(), encode_cert(cert).as_slice())?;
    let mut index = txn.open_table(CERTIFICATES_BY_DEVICE)?;
    index.insert(
        (
            cert.device.product_key.as_str(),
            cert.device.device_key.as_str(),
            cert.serial.as_str(),
        ),
        (),
    )?;
    Ok(())
}

/// Writes a certificate over its recorded self (revoked, renewed, or a
/// copy's merge); its device never changes.
pub(super) fn update_certificate(txn: &WriteTransaction, cert: &CertificateRecord) -> Result<()> {
    let mut table = txn.open_table(CERTIFICATES)?;
    table.insert(cert.serial.as_str(), encode_cert(cert).as_slice())?;
    Ok(())
}

/// Revokes `device`'s certificates that are unrevoked and unexpired at
/// `now_ms`; returns them as revoked.
pub(super) fn revoke_device_certificates(
    txn: &WriteTransaction,
    device: &DeviceId,
    reason: &str,
    now_ms: u64,
) -> Result<Vec<CertificateRecord>> {
    let serials = serials_of(&txn.open_table(CERTIFICATES_BY_DEVICE)?, device)?;
    let mut table = txn.open_table(CERTIFICATES)?;
    let mut revoked = Vec::new();
    for serial in serials {
        let Some(mut cert) = certificate(&table, &serial)? else {
            continue;
        };
        if cert.revoked.is_some() || cert.not_after_ms <= now_ms {
            continue;
        }
        cert.revoked = Some(Revocation {
            at_ms: now_ms,
            reason: reason.to_owned(),
        });
        table.insert(serial.as_str(), encode_cert(&cert).as_slice())?;
        revoked.push(cert);
    }
    Ok(revoked)
}

/// The token of `hash`.
pub(super) fn token(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    hash: &[u8; 32],
) -> Result<Option<EnrollTokenRecord>> {
    table
        .get(hash.as_slice())?
        .map(|v| decode_token(hash, v.value()))
        .transpose()
}

/// Every token, in hash order, after `after` (for a copy).
pub(super) fn all_tokens(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    after: Option<&[u8; 32]>,
    limit: usize,
) -> Result<Vec<EnrollTokenRecord>> {
    let start = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.as_slice()));
    let mut out = Vec::new();
    for entry in table.range::<&[u8]>((start, Bound::Unbounded))? {
        if out.len() >= limit {
            break;
        }
        let (key, value) = entry?;
        out.push(decode_token(key.value(), value.value())?);
    }
    Ok(out)
}

/// Writes a token (new, used, revoked, or merged by a copy).
pub(super) fn put_token(txn: &WriteTransaction, token: &EnrollTokenRecord) -> Result<()> {
    let mut table = txn.open_table(ENROLL_TOKENS)?;
    table.insert(token.hash.as_slice(), encode_token(token).as_slice())?;
    let mut index = txn.open_table(ENROLL_TOKENS_BY_DEVICE)?;
    index.insert(
        (
            token.device.product_key.as_str(),
            token.device.device_key.as_str(),
            token.hash.as_slice(),
        ),
        (),
    )?;
    Ok(())
}

/// Revokes `device`'s unused, unrevoked tokens; returns how many.
pub(super) fn revoke_device_tokens(
    txn: &WriteTransaction,
    device: &DeviceId,
    now_ms: u64,
) -> Result<u32> {
    let (pk, dk) = (device.product_key.as_str(), device.device_key.as_str());
    let mut hashes = Vec::new();
    {
        let index = txn.open_table(ENROLL_TOKENS_BY_DEVICE)?;
        let start: (&str, &str, &[u8]) = (pk, dk, &[]);
        for entry in
            index.range::<(&str, &str, &[u8])>((Bound::Included(start), Bound::Unbounded))?
        {
            let (key, _) = entry?;
            let (kpk, kdk, hash) = key.value();
            if (kpk, kdk) != (pk, dk) {
                break;
            }
            let hash: [u8; 32] = hash.try_into().map_err(|_| {
                RegistryError::Store("an enrollment token index key is not 32 bytes".into())
            })?;
            hashes.push(hash);
        }
    }
    let mut table = txn.open_table(ENROLL_TOKENS)?;
    let mut count = 0_u32;
    for hash in hashes {
        let Some(mut t) = token(&table, &hash)? else {
            continue;
        };
        if t.used_at_ms.is_some() || t.revoked_at_ms.is_some() {
            continue;
        }
        t.revoked_at_ms = Some(now_ms);
        table.insert(hash.as_slice(), encode_token(&t).as_slice())?;
        count += 1;
    }
    Ok(count)
}

/// The CA row.
pub(super) fn ca(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<CaRecord>> {
    table.get(CA_ROW)?.map(|v| decode_ca(v.value())).transpose()
}

/// Writes the CA row.
pub(super) fn put_ca(txn: &WriteTransaction, record: &CaRecord) -> Result<()> {
    let mut table = txn.open_table(CA)?;
    table.insert(CA_ROW, encode_ca(record).as_slice())?;
    Ok(())
}

/// `(productKey, deviceKey, certSN)` → encoded [`StoredEnosCertificate`]:
/// the EnOS certificates of each device (issue 26). Created at open in
/// files older than it: redb's migration.
pub(super) const ENOS_CERTIFICATES: TableDefinition<'static, (&str, &str, &str), &[u8]> =
    TableDefinition::new("enos_certificates");

/// The stored form of an [`EnosCertificateRecord`] (device and serial are
/// the key).
#[derive(Clone, PartialEq, prost::Message)]
struct StoredEnosCertificate {
    #[prost(uint64, tag = "1")]
    not_before_ms: u64,
    #[prost(uint64, tag = "2")]
    not_after_ms: u64,
    #[prost(string, tag = "3")]
    issue_authority: String,
    #[prost(uint64, tag = "4")]
    recorded_at_ms: u64,
    #[prost(uint64, optional, tag = "5")]
    revoked_at_ms: Option<u64>,
    #[prost(string, tag = "6")]
    revoked_reason: String,
    #[prost(string, optional, tag = "7")]
    superseded_by: Option<String>,
}

fn encode_enos(cert: &EnosCertificateRecord) -> Vec<u8> {
    StoredEnosCertificate {
        not_before_ms: cert.not_before_ms,
        not_after_ms: cert.not_after_ms,
        issue_authority: cert.issue_authority.clone(),
        recorded_at_ms: cert.recorded_at_ms,
        revoked_at_ms: cert.revoked.as_ref().map(|r| r.at_ms),
        revoked_reason: cert
            .revoked
            .as_ref()
            .map(|r| r.reason.clone())
            .unwrap_or_default(),
        superseded_by: cert.superseded_by.clone(),
    }
    .encode_to_vec()
}

fn decode_enos(pk: &str, dk: &str, sn: &str, bytes: &[u8]) -> Result<EnosCertificateRecord> {
    let what = format!("EnOS certificate {sn} of {pk}/{dk}");
    let stored = StoredEnosCertificate::decode(bytes)
        .map_err(|_| RegistryError::Store(format!("{what}: undecodable")))?;
    Ok(EnosCertificateRecord {
        device: device_id(pk, dk, &what)?,
        cert_sn: sn.to_owned(),
        not_before_ms: stored.not_before_ms,
        not_after_ms: stored.not_after_ms,
        issue_authority: stored.issue_authority,
        recorded_at_ms: stored.recorded_at_ms,
        revoked: stored.revoked_at_ms.map(|at_ms| Revocation {
            at_ms,
            reason: stored.revoked_reason,
        }),
        superseded_by: stored.superseded_by,
    })
}

/// `device`'s EnOS certificate `sn`.
pub(super) fn enos_certificate(
    table: &impl ReadableTable<(&'static str, &'static str, &'static str), &'static [u8]>,
    device: &DeviceId,
    sn: &str,
) -> Result<Option<EnosCertificateRecord>> {
    let (pk, dk) = (device.product_key.as_str(), device.device_key.as_str());
    table
        .get((pk, dk, sn))?
        .map(|v| decode_enos(pk, dk, sn, v.value()))
        .transpose()
}

/// Up to `limit` records strictly after `after` in key order, of one
/// device only when `only` is given.
pub(super) fn enos_certificates(
    table: &impl ReadableTable<(&'static str, &'static str, &'static str), &'static [u8]>,
    after: Option<(&str, &str, &str)>,
    only: Option<&DeviceId>,
    limit: usize,
) -> Result<Vec<EnosCertificateRecord>> {
    let start = match (after, only) {
        (Some(a), _) => Bound::Excluded(a),
        (None, Some(d)) => Bound::Included((d.product_key.as_str(), d.device_key.as_str(), "")),
        (None, None) => Bound::Unbounded,
    };
    let mut out = Vec::new();
    for entry in table.range::<(&str, &str, &str)>((start, Bound::Unbounded))? {
        if out.len() >= limit {
            break;
        }
        let (key, value) = entry?;
        let (pk, dk, sn) = key.value();
        if only.is_some_and(|d| (d.product_key.as_str(), d.device_key.as_str()) != (pk, dk)) {
            break;
        }
        out.push(decode_enos(pk, dk, sn, value.value())?);
    }
    Ok(out)
}

/// Writes an EnOS certificate record (new, changed, or merged).
pub(super) fn put_enos_certificate(
    txn: &WriteTransaction,
    cert: &EnosCertificateRecord,
) -> Result<()> {
    let mut table = txn.open_table(ENOS_CERTIFICATES)?;
    table.insert(
        (
            cert.device.product_key.as_str(),
            cert.device.device_key.as_str(),
            cert.cert_sn.as_str(),
        ),
        encode_enos(cert).as_slice(),
    )?;
    Ok(())
}
