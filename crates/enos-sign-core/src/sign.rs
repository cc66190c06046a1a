//! [`sign`]: the EnOS password digest, streamed and allocation-free.

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::{
    ident::{ClientId, DeviceKey, ProductKey},
    method::{HexCase, SignMethod},
    secret::{Password, SigningSecret},
    timestamp::TimestampMs,
};

/// The four signed fields of a login.
///
/// The content is their names and values concatenated in the (fixed)
/// alphabetical order of the names: `clientId…deviceKey…productKey…timestamp…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SignedFields {
    /// Signed as `clientId`; the part of the MQTT client id before `|`.
    pub client_id: ClientId,
    /// Signed as `deviceKey`; also the first half of the username.
    pub device_key: DeviceKey,
    /// Signed as `productKey`; also the second half of the username.
    pub product_key: ProductKey,
    /// Signed as `timestamp`; must equal the one in the MQTT client id.
    pub timestamp: TimestampMs,
}

impl SignedFields {
    /// Fields with the SDKs' default client id, the device key.
    ///
    /// Fails only for the channel device key, which needs an explicit
    /// client id (the product key).
    pub fn with_device_key_as_client_id(
        product_key: ProductKey,
        device_key: DeviceKey,
        timestamp: TimestampMs,
    ) -> Result<Self, crate::SignError> {
        Ok(SignedFields {
            client_id: ClientId::from_device_key(&device_key)?,
            device_key,
            product_key,
            timestamp,
        })
    }

    /// Feeds the content, in order, to `sink` without assembling it.
    ///
    /// Custody backends that digest elsewhere (a PKCS#11 token) use this
    /// to stream the same bytes [`sign`] hashes.
    pub fn write_content(&self, sink: impl FnMut(&[u8])) {
        SignedContent::write_content(self, sink);
    }
}

/// The signed content of a login: the strict [`SignedFields`] we issue, or
/// the [`crate::PresentedFields`] a broker received. Sealed: the content
/// rule lives in this crate only.
pub trait SignedContent: crate::sealed::Sealed {
    /// Feeds `clientId…deviceKey…productKey…timestamp…`, in order, to `sink`.
    fn write_content(&self, sink: impl FnMut(&[u8]));
}

impl crate::sealed::Sealed for SignedFields {}
impl crate::sealed::Sealed for crate::presented::PresentedFields {}

impl SignedContent for SignedFields {
    fn write_content(&self, sink: impl FnMut(&[u8])) {
        let mut digits = itoa::Buffer::new();
        write_named(
            sink,
            [
                self.client_id.as_str(),
                self.device_key.as_str(),
                self.product_key.as_str(),
                digits.format(self.timestamp.as_millis()),
            ],
        );
    }
}

/// The content rule itself: each field's name, then its text, in the
/// alphabetical order of the names.
pub(crate) fn write_named(mut sink: impl FnMut(&[u8]), values: [&str; 4]) {
    for (name, value) in [&b"clientId"[..], b"deviceKey", b"productKey", b"timestamp"]
        .into_iter()
        .zip(values)
    {
        sink(name);
        sink(value.as_bytes());
    }
}

/// Signs with the hex case the official SDKs send for `method`
/// (see [`SignMethod::sdk_hex_case`]).
pub fn sign(fields: &SignedFields, method: SignMethod, secret: &impl SigningSecret) -> Password {
    sign_with_case(fields, method, secret, method.sdk_hex_case())
}

/// `HEX(DIGEST(content ‖ secret))` in the given case.
///
/// The content is streamed into the hasher piece by piece: no string is
/// assembled and nothing is allocated.
pub fn sign_with_case(
    fields: &SignedFields,
    method: SignMethod,
    secret: &impl SigningSecret,
    case: HexCase,
) -> Password {
    digest_content(fields, method, secret, case)
}

/// `HEX(DIGEST(content ‖ secret))` over any signed content; the strict
/// [`sign_with_case`] and the broker side's verification share it.
pub(crate) fn digest_content(
    fields: &impl SignedContent,
    method: SignMethod,
    secret: &impl SigningSecret,
    case: HexCase,
) -> Password {
    let secret = secret.secret_bytes();
    match method {
        SignMethod::HmacSha1 => digest_hex::<Sha1>(fields, secret, case),
        SignMethod::HmacSha256 => digest_hex::<Sha256>(fields, secret, case),
        SignMethod::HmacMd5 => digest_hex::<Md5>(fields, secret, case),
    }
}

fn digest_hex<D: Digest>(fields: &impl SignedContent, secret: &[u8], case: HexCase) -> Password {
    let mut hasher = D::new();
    fields.write_content(|chunk| hasher.update(chunk));
    hasher.update(secret);
    let mut digest = hasher.finalize();
    let password = Password::encode(&digest, case);
    digest.as_mut_slice().zeroize();
    password
}
