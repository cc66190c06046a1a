//! The CA's records in PostgreSQL (migration 0005).

use super::PostgresRegistry;
use crate::{
    DeviceId,
    certificates::{CaChange, CaRecord, CertificateRecord, EnrollTokenRecord, RevokeTarget},
    error::{RegistryError, Result},
};

fn todo() -> RegistryError {
    RegistryError::Store("not implemented yet on PostgreSQL".into())
}

impl PostgresRegistry {
    pub(super) async fn put_enroll_token_pg(&self, _token: EnrollTokenRecord) -> Result<()> {
        Err(todo())
    }
    pub(super) async fn enroll_token_pg(
        &self,
        _hash: &[u8; 32],
    ) -> Result<Option<EnrollTokenRecord>> {
        Err(todo())
    }
    pub(super) async fn enroll_pg(
        &self,
        _hash: &[u8; 32],
        _device: &DeviceId,
        _now_ms: u64,
        _cert: CertificateRecord,
    ) -> Result<()> {
        Err(todo())
    }
    pub(super) async fn revoke_enroll_tokens_pg(
        &self,
        _device: &DeviceId,
        _now_ms: u64,
    ) -> Result<u32> {
        Err(todo())
    }
    pub(super) async fn renew_pg(
        &self,
        _old_serial: &str,
        _device: &DeviceId,
        _now_ms: u64,
        _cert: CertificateRecord,
    ) -> Result<()> {
        Err(todo())
    }
    pub(super) async fn revoke_certificates_pg(
        &self,
        _target: RevokeTarget,
        _reason: &str,
        _now_ms: u64,
    ) -> Result<Vec<CertificateRecord>> {
        Err(todo())
    }
    pub(super) async fn certificate_pg(&self, _serial: &str) -> Result<Option<CertificateRecord>> {
        Err(todo())
    }
    pub(super) async fn certificates_of_pg(
        &self,
        _device: &DeviceId,
    ) -> Result<Vec<CertificateRecord>> {
        Err(todo())
    }
    pub(super) async fn revoked_certificates_pg(
        &self,
        _now_ms: u64,
    ) -> Result<Vec<CertificateRecord>> {
        Err(todo())
    }
    pub(super) async fn count_expiring_pg(&self, _now_ms: u64, _within_ms: u64) -> Result<u64> {
        Err(todo())
    }
    pub(super) async fn is_revoked_pg(&self, _serial: &str) -> Result<bool> {
        Err(todo())
    }
    pub(super) fn revoked_cached_pg(&self, _serial: &str) -> Option<bool> {
        None
    }
    pub(super) async fn get_ca_pg(&self) -> Result<Option<CaRecord>> {
        Err(todo())
    }
    pub(super) async fn modify_ca_pg(&self, _change: CaChange) -> Result<CaRecord> {
        Err(todo())
    }
}
