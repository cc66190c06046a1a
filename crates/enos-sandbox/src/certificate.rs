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
//! A certificate matches when one of its values of that field reads, by
//! the template, as the login's device and as no other. The keys may hold
//! `.` `-` `_` `:` `@`, so with `cn:{productKey}.{deviceKey}` the common
//! name `Pk.dev.x` reads both as `Pk.dev/x` and as `Pk/dev.x`: such a
//! value names no device (issue 23, finding 12). Each reading takes keys
//! that are valid product and device keys.

use std::fmt;

use enos_sign_core::{DeviceKey, ProductKey};
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

    /// The devices `value` reads as by the template: at most two (more
    /// do not matter: two already make it ambiguous).
    fn readings(&self, value: &str) -> Vec<DeviceId> {
        let mut found = Vec::new();
        read_template(&self.template, value, None, None, &mut found);
        found
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
        if let Some(value) = found.iter().find(|v| **v == expected) {
            let readings = self.readings(value);
            if readings.len() > 1 {
                return Err(format!(
                    "the client certificate's {} {value:?} reads as more than one device ({} and {}); choose keys or a rule without that ambiguity",
                    match self.field {
                        CertificateField::UriSan => "URI SAN",
                        CertificateField::CommonName => "common name",
                    },
                    readings[0],
                    readings[1],
                ));
            }
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

/// Every way `value` fits `template` with valid keys for its
/// `{productKey}` and `{deviceKey}` (each the same wherever it appears);
/// stops at two.
fn read_template(
    template: &str,
    value: &str,
    pk: Option<&str>,
    dk: Option<&str>,
    found: &mut Vec<DeviceId>,
) {
    if found.len() > 1 {
        return;
    }
    const PK: &str = "{productKey}";
    const DK: &str = "{deviceKey}";
    let next = [template.find(PK), template.find(DK)]
        .into_iter()
        .flatten()
        .min();
    let Some(at) = next else {
        if template == value
            && let (Some(pk), Some(dk)) = (pk, dk)
            && let (Ok(pk), Ok(dk)) = (ProductKey::new(pk), DeviceKey::new(dk))
        {
            let device = DeviceId::new(pk, dk);
            if !found.contains(&device) {
                found.push(device);
            }
        }
        return;
    };
    let (literal, rest) = template.split_at(at);
    let Some(value) = value.strip_prefix(literal) else {
        return;
    };
    let is_pk = rest.starts_with(PK);
    let rest = &rest[if is_pk { PK.len() } else { DK.len() }..];
    let bound = if is_pk { pk } else { dk };
    if let Some(bound) = bound {
        if let Some(value) = value.strip_prefix(bound) {
            read_template(rest, value, pk, dk, found);
        }
        return;
    }
    for end in (1..=value.len()).filter(|end| value.is_char_boundary(*end)) {
        let (key, value) = value.split_at(end);
        let (pk, dk) = if is_pk {
            (Some(key), dk)
        } else {
            (pk, Some(key))
        };
        read_template(rest, value, pk, dk, found);
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
        let cn = CertificateRule::parse("cn:{productKey}.{deviceKey}").expect("cn rule");
        assert_eq!(cn.readings("pkA.dev1").len(), 1);
        assert_eq!(cn.readings("Pk.dev.x").len(), 2, "Pk.dev/x and Pk/dev.x");
        assert_eq!(cn.readings("nodot").len(), 0);
        let uri = CertificateRule::default();
        assert_eq!(
            uri.readings("spiffe://enos/device/Pk.dev/x.y")
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["Pk.dev/x.y"]
        );
        for bad in [
            "spiffe://x/{productKey}/{deviceKey}",
            "uri:x/{deviceKey}",
            "cn:{productKey}",
        ] {
            assert!(CertificateRule::parse(bad).is_err(), "{bad}");
        }
    }
}
