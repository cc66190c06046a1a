//! [`CertificateRule`]: which device a TLS client certificate belongs to.
//!
//! On EnOS the device certificate of two-way TLS (port 18883) is issued
//! for one device: the login that comes with it must be that device's.
//! The rule is a template with `{productKey}` and `{deviceKey}`, matched
//! against one field of the certificate:
//!
//! | rule | matches |
//! |---|---|
//! | `uri:spiffe://enos/device/{productKey}/{deviceKey}` (default) | a URI subject alternative name; what the signer's device certificates carry |
//! | `cn:{productKey}.{deviceKey}` | the subject's common name |
//!
//! A certificate matches when one of its values of that field equals the
//! template with the login's keys put in.

use std::fmt;

use x509_parser::{extensions::GeneralName, prelude::FromDer};

use crate::devices::DeviceId;

/// The default rule: the URI SAN of the project's device certificates.
pub const DEFAULT_CERTIFICATE_RULE: &str = "uri:spiffe://enos/device/{productKey}/{deviceKey}";

/// Which certificate field carries the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CertificateField {
    /// A URI subject alternative name.
    UriSan,
    /// The subject common name.
    CommonName,
}

/// A parsed `uri:…` or `cn:…` rule.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateRule {
    /// Where to look.
    field: CertificateField,
    /// The expected value, with `{productKey}` and `{deviceKey}`.
    template: String,
}

impl CertificateRule {
    /// Parses `uri:TEMPLATE` or `cn:TEMPLATE`; the template must name both
    /// keys, so that one certificate can never fit two devices.
    pub fn parse(rule: &str) -> Result<Self, String> {
        let (field, template) = if let Some(t) = rule.strip_prefix("uri:") {
            (CertificateField::UriSan, t)
        } else if let Some(t) = rule.strip_prefix("cn:") {
            (CertificateField::CommonName, t)
        } else {
            return Err(format!(
                "certificate rule {rule:?} must start with uri: or cn:"
            ));
        };
        if !template.contains("{productKey}") || !template.contains("{deviceKey}") {
            return Err(format!(
                "certificate rule {rule:?} must name both {{productKey}} and {{deviceKey}}"
            ));
        }
        Ok(CertificateRule {
            field,
            template: template.to_owned(),
        })
    }

    /// The value a certificate of `device` must carry.
    fn expected(&self, device: &DeviceId) -> String {
        self.template
            .replace("{productKey}", device.product_key.as_str())
            .replace("{deviceKey}", device.device_key.as_str())
    }

    /// Whether the DER certificate `der` belongs to `device`; `Err` says why not.
    pub fn check(&self, der: &[u8], device: &DeviceId) -> Result<(), String> {
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
            .map_err(|e| format!("the client certificate cannot be read: {e}"))?;
        let expected = self.expected(device);
        let found: Vec<String> = match self.field {
            CertificateField::UriSan => cert
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|san| {
                    san.value
                        .general_names
                        .iter()
                        .filter_map(|name| match name {
                            GeneralName::URI(uri) => Some((*uri).to_owned()),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            CertificateField::CommonName => cert
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
                .collect(),
        };
        if found.contains(&expected) {
            Ok(())
        } else {
            Err(format!(
                "the client certificate names {} {found:?}, not {expected:?} of device {device}",
                match self.field {
                    CertificateField::UriSan => "URI SANs",
                    CertificateField::CommonName => "common names",
                }
            ))
        }
    }
}

impl Default for CertificateRule {
    fn default() -> Self {
        CertificateRule::parse(DEFAULT_CERTIFICATE_RULE).expect("the default rule is valid")
    }
}

impl fmt::Debug for CertificateRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.field {
            CertificateField::UriSan => "uri",
            CertificateField::CommonName => "cn",
        };
        write!(f, "CertificateRule({prefix}:{})", self.template)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_refuse() {
        assert_eq!(
            format!("{:?}", CertificateRule::default()),
            "CertificateRule(uri:spiffe://enos/device/{productKey}/{deviceKey})"
        );
        CertificateRule::parse("cn:{productKey}.{deviceKey}").expect("cn rule");
        for bad in [
            "spiffe://x/{productKey}/{deviceKey}",
            "uri:x/{deviceKey}",
            "cn:{productKey}",
        ] {
            assert!(CertificateRule::parse(bad).is_err(), "{bad}");
        }
    }
}
