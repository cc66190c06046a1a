//! Who may use Admin beyond holding an admin certificate
//! ([`SignerState::admit_admin`]): with
//! `server.admin_ca`, only certificates of the admin CA (the handshake
//! accepts the client CA and the admin CA alike, so the chain is checked
//! again here, with the CRLs); with `server.admin_names`, only those names.
//! Refusals are PermissionDenied: the caller proved a certificate, so they
//! are audited (bounded by the rate limit, checked first).

use rustls::pki_types::UnixTime;
use tonic::Request;

use crate::{
    error::{Result, SignerError},
    state::SignerState,
};

impl SignerState {
    /// Whether the admin `name`, who presented `request`'s certificate, may
    /// use Admin.
    pub fn admit_admin<T>(&self, request: &Request<T>, name: &str) -> Result<()> {
        // The CA first: a certificate not from the admin CA names no
        // admin at all, whatever its name.
        if let Some(admin_ca) = self.tls.current().admin.clone() {
            self.issued_by_admin_ca(&*admin_ca, request)?;
        }
        if !self.admin_names.allows(name) {
            return Err(SignerError::PermissionDenied(format!(
                "admin {name} is not in server.admin_names"
            )));
        }
        Ok(())
    }

    fn issued_by_admin_ca<T>(
        &self,
        admin_ca: &dyn rustls::server::danger::ClientCertVerifier,
        request: &Request<T>,
    ) -> Result<()> {
        let refused = || {
            SignerError::PermissionDenied(
                "an admin certificate must be issued by the admin CA (server.admin_ca)".into(),
            )
        };
        let certs = request.peer_certs().ok_or_else(refused)?;
        let (leaf, intermediates) = certs.split_first().ok_or_else(refused)?;
        admin_ca
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(|_| refused())?;
        Ok(())
    }
}
