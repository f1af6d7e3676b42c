//! Where the enforced policy comes from, in three jobs:
//!
//! - `store`: the live [`PolicySnapshot`] behind an `ArcSwap`, its generation counter and the ONE apply gate
//!   (learned names carried over, the datapath's before-apply hook with its typed `DatapathError`) every update
//!   passes; what `tollgate status` shows of rejected updates.
//! - `files`: the standalone feed: policy and endpoints files, compiled and hot-reloaded (watched) into the store.
//! - `kubernetes`: the `--kubernetes` feed: states compiled from the API server installed into the store.
//!
//! The feeds depend on the store, never on each other, and the store on neither. Request handling only reads the
//! store ([`PolicyStore::current`]).

mod files;
pub mod kubernetes;
mod store;

pub use files::{PolicyFiles, WatchGuard, compile};
pub use store::{BeforeApply, LoadError, PolicySnapshot, PolicyStore, ReloadError};
