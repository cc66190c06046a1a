//! Admin RPCs of the CA (`[ca]`): enrollment tokens, revocation and the
//! list of a device's certificates. They run in Admin's frame (intent and
//! outcome audit records, admin certificates only).

use enos_registry::{EnrollTokenRecord, RevokeTarget};
use enos_signer_proto::v1;

use crate::{
    ca::token,
    config::MAX_TOKEN_TTL,
    error::{Result, SignerError},
    services::{admin::AdminService, convert, enrollment::NOT_A_CA},
};

/// The most tokens one `CreateEnrollTokens` makes.
const MAX_TOKENS_PER_CALL: usize = 1000;

/// The most reason text a revocation keeps.
const MAX_REASON: usize = 200;

impl AdminService {
    /// The `[ca]` config, or FailedPrecondition.
    fn ca_config(&self) -> Result<&crate::config::CaConfig> {
        self.state()
            .ca
            .as_deref()
            .map(crate::ca::CertificateAuthority::config)
            .ok_or_else(|| SignerError::FailedPrecondition(NOT_A_CA.into()))
    }

    /// A one-time token for an existing device.
    pub(crate) async fn create_enroll_token(
        &self,
        request: v1::CreateEnrollTokenRequest,
    ) -> Result<v1::EnrollToken> {
        let ttl = self.token_ttl(request.ttl_secs)?;
        let device = device(request.device.as_ref())?;
        if self.state().registry.get(&device).await?.is_none() {
            return Err(SignerError::NotFound(format!("device {device}")));
        }
        self.make_token(device, ttl).await
    }

    /// Tokens for many existing devices, all or none.
    pub(crate) async fn create_enroll_tokens(
        &self,
        request: v1::CreateEnrollTokensRequest,
    ) -> Result<v1::EnrollTokens> {
        let ttl = self.token_ttl(request.ttl_secs)?;
        if request.devices.is_empty() || request.devices.len() > MAX_TOKENS_PER_CALL {
            return Err(SignerError::invalid(
                "devices",
                format!("give 1 to {MAX_TOKENS_PER_CALL} devices"),
            ));
        }
        let devices = request
            .devices
            .iter()
            .map(|d| device(Some(d)))
            .collect::<Result<Vec<_>>>()?;
        // Every device first: an unknown one refuses the whole call.
        for id in &devices {
            if self.state().registry.get(id).await?.is_none() {
                return Err(SignerError::NotFound(format!("device {id}")));
            }
        }
        let mut tokens = Vec::with_capacity(devices.len());
        for id in devices {
            tokens.push(self.make_token(id, ttl).await?);
        }
        Ok(v1::EnrollTokens { tokens })
    }

    /// The lifetime a request asks for: 0 is `[ca] token_ttl`; at most 30
    /// days. FailedPrecondition without `[ca]`.
    fn token_ttl(&self, secs: u64) -> Result<std::time::Duration> {
        let config = self.ca_config()?;
        match secs {
            0 => Ok(config.token_ttl),
            secs if secs > MAX_TOKEN_TTL.as_secs() => {
                Err(SignerError::invalid("ttl_secs", "at most 30 days"))
            }
            secs => Ok(std::time::Duration::from_secs(secs)),
        }
    }

    /// A new token for `device`, stored as its hash.
    async fn make_token(
        &self,
        device: enos_registry::DeviceId,
        ttl: std::time::Duration,
    ) -> Result<v1::EnrollToken> {
        let (text, hash) = token::new_token()?;
        let now = enos_domain::now_ms();
        let expires_at_ms = now + ttl.as_millis() as u64;
        self.state()
            .registry
            .put_enroll_token(EnrollTokenRecord {
                hash,
                device: device.clone(),
                created_at_ms: now,
                expires_at_ms,
                used_at_ms: None,
                revoked_at_ms: None,
            })
            .await?;
        Ok(v1::EnrollToken {
            device: Some(v1::DeviceRef::from(&device)),
            token: text.as_str().to_owned(),
            expires_at_ms,
        })
    }

    /// Revokes a device's unused tokens.
    pub(crate) async fn revoke_enroll_tokens(
        &self,
        request: v1::DeviceRef,
    ) -> Result<v1::RevokeEnrollTokensResponse> {
        self.ca_config()?;
        let device = device(Some(&request))?;
        let revoked = self
            .state()
            .registry
            .revoke_enroll_tokens(&device, enos_domain::now_ms())
            .await?;
        Ok(v1::RevokeEnrollTokensResponse { revoked })
    }

    /// Revokes one certificate, or every certificate of a device.
    pub(crate) async fn revoke_certificate(
        &self,
        request: v1::RevokeCertificateRequest,
    ) -> Result<v1::RevokeCertificateResponse> {
        self.ca_config()?;
        let target = match request.target {
            Some(v1::revoke_certificate_request::Target::Serial(serial)) => {
                RevokeTarget::Serial(serial_field(&serial)?)
            }
            Some(v1::revoke_certificate_request::Target::Device(d)) => {
                RevokeTarget::Device(device(Some(&d))?)
            }
            None => return Err(SignerError::invalid("target", "give a serial or a device")),
        };
        let reason: String = request
            .reason
            .chars()
            .take(MAX_REASON)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let revoked = self
            .state()
            .registry
            .revoke_certificates(target, &reason, enos_domain::now_ms())
            .await?;
        if let Some(ca) = &self.state().ca {
            ca.certificates_changed();
        }
        let serials: Vec<String> = revoked.into_iter().map(|r| r.serial).collect();
        tracing::info!(serials = %serials.join(","), reason = %reason, "certificates revoked");
        Ok(v1::RevokeCertificateResponse { serials })
    }

    /// A device's certificates, newest first.
    pub(crate) async fn list_certificates(
        &self,
        request: v1::DeviceRef,
    ) -> Result<v1::ListCertificatesResponse> {
        let device = device(Some(&request))?;
        let now = enos_domain::now_ms();
        let certificates = self
            .state()
            .registry
            .certificates_of(&device)
            .await?
            .into_iter()
            .map(|record| {
                let status = match (&record.revoked, record.not_after_ms <= now) {
                    (Some(_), _) => v1::CertificateStatus::Revoked,
                    (None, true) => v1::CertificateStatus::Expired,
                    (None, false) => v1::CertificateStatus::Active,
                };
                v1::CertificateInfo {
                    serial: record.serial,
                    device: Some(v1::DeviceRef::from(&record.device)),
                    not_before_ms: record.not_before_ms,
                    not_after_ms: record.not_after_ms,
                    status: status.into(),
                    revoked_at_ms: record.revoked.as_ref().map_or(0, |r| r.at_ms),
                    revocation_reason: record.revoked.map(|r| r.reason).unwrap_or_default(),
                    renewed_by: record.renewed_by.unwrap_or_default(),
                }
            })
            .collect();
        Ok(v1::ListCertificatesResponse { certificates })
    }
}

/// A device reference field, validated.
fn device(value: Option<&v1::DeviceRef>) -> Result<enos_registry::DeviceId> {
    convert::device_ref("device", ("device.product_key", "device.device_key"), value)
}

/// A serial as given: hex (case and `:` separators forgiven, as `openssl`
/// prints it), normalised to the registry's lower-case form.
pub(crate) fn serial_field(serial: &str) -> Result<String> {
    let hex: String = serial
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let hex = hex.trim_start_matches('0');
    if hex.is_empty() || hex.len() > 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SignerError::invalid(
            "serial",
            "a certificate serial in hex (at most 20 bytes)",
        ));
    }
    // Whole bytes, as the registry keys them.
    Ok(if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex.to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::serial_field;

    #[test]
    fn serials_are_normalised_as_the_registry_keys_them() {
        assert_eq!(serial_field("0A:1b:FF").expect("serial"), "0a1bff");
        assert_eq!(serial_field("00a1bff").expect("serial"), "0a1bff");
        assert_eq!(serial_field("7f").expect("serial"), "7f");
        for bad in ["", "00", "xyz", &"a".repeat(41)] {
            assert!(serial_field(bad).is_err(), "{bad:?}");
        }
    }
}
