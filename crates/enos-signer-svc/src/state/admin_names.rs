//! [`AdminNames`]: `server.admin_names`, the admin allow-list that
//! [`SignerState::admit_admin`](crate::state::SignerState::admit_admin)
//! checks after the admin CA.

use std::collections::BTreeSet;

/// `server.admin_names`.
#[derive(Debug, Clone, Default)]
pub struct AdminNames {
    /// Empty: every admin name is allowed.
    allowed: BTreeSet<String>,
}

impl AdminNames {
    /// The allow-list of `names` (none: everyone).
    pub fn new(names: &[String]) -> Self {
        AdminNames {
            allowed: names.iter().cloned().collect(),
        }
    }

    /// Whether `name` may use Admin.
    pub fn allows(&self, name: &str) -> bool {
        self.allowed.is_empty() || self.allowed.contains(name)
    }
}
