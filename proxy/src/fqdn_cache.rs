//! The node's FQDN cache: names learned from allowed DNS answers, which every policy snapshot consults for
//! `toFQDNs`. The DNS proxy writes it, the policy store hands it to each new snapshot; it lives apart from both so
//! neither imports the other for it.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use policy_model::FqdnCache;

/// The node's learned names, shared by every policy snapshot (a reload keeps what was learned).
#[derive(Debug, Clone, Default)]
pub struct SharedFqdnCache(Arc<RwLock<FqdnCache>>);

impl SharedFqdnCache {
    pub fn read(&self) -> RwLockReadGuard<'_, FqdnCache> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, FqdnCache> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}
