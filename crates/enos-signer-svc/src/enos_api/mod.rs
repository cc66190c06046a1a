//! The signer as a client of EnOS's certificate API (issue 26): the
//! application's AccessKey/SecretKey sealed by the custody
//! ([`credential`]), and [`client::EnosApiClient`], which gets an access
//! token and signs every call as EnOS's API gateway documents
//! (docs/enos-certificates.md).

pub mod client;
pub mod credential;

pub use client::{Authority, EnosApiClient, IssuedEnosCert, ListedEnosCert};
pub use credential::{ApiCredential, open_credential, seal_credential};
