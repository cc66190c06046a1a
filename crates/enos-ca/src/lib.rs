//! The signer's certificate authority for its devices' client
//! certificates: pure (no I/O, no async), so that the same rules serve a
//! key in software and a key in an HSM.
//!
//! A gateway sends a certificate signing request. Only its public key is
//! taken, and only after its signature proves the sender holds the
//! private key and the key is of an accepted kind (EC P-256 or P-384, RSA
//! of 2048 bits or more). Everything else a CSR may ask for (names,
//! extensions, a CA bit) is ignored: the certificate carries exactly the
//! names the signer decides ([`DeviceNames`]), the clientAuth usage, a
//! random 128-bit serial and the policy's lifetime, and is signed by
//! whatever [`rcgen::SigningKey`] holds the CA key.
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | [`request`] | [`RequestedKey`]: a CSR read, its signature checked, reduced to its public key |
//! | [`issue`] | [`issue::device_certificate`]: the certificate a device gets, [`IssuedCertificate`] |
//! | [`authority`] | the CA's own certificate: a self-signed root, or a CSR for an intermediate; [`authority::CustodyKey`], the CA key in custody as rcgen signs with it |
//! | `bench_support` | (feature `bench`) the raw issuance loops the benchmarks compare against |
//! | [`crl`] | [`crl::revocation_list`]: the CRL, signed like the certificates |
//! | [`serial`] | [`Serial`]: random, positive, 128 bits |
//! | [`error`] | [`CaError`], the one error type |
#![forbid(unsafe_code)]

pub mod authority;
#[cfg(feature = "bench")]
pub mod bench_support;
pub mod crl;
pub mod error;
pub mod issue;
pub mod request;
pub mod serial;

pub use error::CaError;
pub use issue::{DeviceNames, IssuedCertificate, Validity};
pub use request::{KeyKind, RequestedKey};
pub use serial::Serial;
