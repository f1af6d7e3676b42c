//! The Kubernetes feed (`--kubernetes` mode): the state compiled from the API server (`crate::kubernetes`) becomes
//! snapshots of the [`PolicyStore`]. The first full list starts the store; each later state is installed through
//! the store's one gate, so the datapath can refuse it exactly as it refuses a file reload.
//!
//! It is handed compiled engines and endpoint tables; it must not talk to the API server nor import
//! `crate::kubernetes` (which imports it), must not read files, and does not log (the reconciler loop reports).

use super::store::{LoadError, PolicySnapshot, PolicyStore};
use crate::policy_adapter::{EndpointTable, PolicyEngine};

/// The store, enforcing the state of the first full list as generation 1. It has no files: updates come through
/// [`install`].
pub fn start(engine: PolicyEngine, endpoints: EndpointTable) -> PolicyStore {
    PolicyStore::new(PolicySnapshot::new(engine, endpoints))
}

/// Installs a later state through the same gate as a file reload: if the datapath refuses it, it is counted as
/// rejected and the current snapshot keeps enforcing. Returns the generation now live.
pub fn install(
    store: &PolicyStore,
    engine: PolicyEngine,
    endpoints: EndpointTable,
) -> Result<u64, LoadError> {
    let outcome = store.apply(PolicySnapshot::new(engine, endpoints));
    store.record(&outcome);
    outcome
}
