//! The policy store: the one live [`PolicySnapshot`] every request decides with (behind an `ArcSwap`), its
//! generation counter, and the ONE apply gate every update passes, whichever feed it comes from (policy files or
//! the Kubernetes API): the next generation and the learned names go onto the snapshot, the datapath's before-apply
//! hook must accept it (its typed [`DatapathError`] rejects it), then it goes live. It also keeps what
//! `tollgate status` and the metrics show of rejected updates.
//!
//! It owns no input: it must not read files, watch anything or talk to the API server (the feeds in `files.rs` and
//! `kubernetes.rs` do, and hand it compiled snapshots), and it does not program the datapath itself (the hook does).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use thiserror::Error;

use crate::datapath::DatapathError;
use crate::fqdn_cache::SharedFqdnCache;
use crate::policy_adapter::{EndpointTable, PolicyEngine, PolicyError};

/// Everything one request's decision needs, swapped atomically on reload.
#[derive(Debug)]
pub struct PolicySnapshot {
    pub engine: PolicyEngine,
    pub endpoints: EndpointTable,
    /// Names learned by the DNS proxy; one cache shared by every snapshot (a reload keeps what was learned).
    pub fqdn: SharedFqdnCache,
    /// 1 for the first load, +1 per applied update.
    pub generation: u64,
}

impl PolicySnapshot {
    /// A snapshot from a compiled engine and endpoint table; its generation is set when it is installed.
    pub fn new(engine: PolicyEngine, endpoints: EndpointTable) -> Self {
        PolicySnapshot {
            engine,
            endpoints,
            fqdn: SharedFqdnCache::default(),
            generation: 0,
        }
    }
}

/// Why an update (or the first load) was rejected.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} holds no *.yaml or *.yml policy files; point --policy at a policy file or a directory of them"
    )]
    NoPolicyFiles { path: PathBuf },
    #[error("{} invalid: {}", if .0.len() == 1 { "1 error, update" } else { "errors, update" }, join_errors(.0))]
    Invalid(Vec<PolicyError>),
    #[error("the datapath could not apply the update: {0}")]
    Datapath(DatapathError),
}

fn join_errors(errors: &[PolicyError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A rejected policy update, as `tollgate status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReloadError {
    /// RFC 3339.
    pub time: String,
    /// The generation that kept enforcing.
    pub kept_generation: u64,
    pub error: String,
}

/// See [`PolicyStore::set_before_apply`].
pub type BeforeApply = Box<dyn Fn(&PolicySnapshot) -> Result<(), DatapathError> + Send + Sync>;

#[derive(Default)]
struct BeforeApplySlot(Mutex<Option<BeforeApply>>);

impl std::fmt::Debug for BeforeApplySlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.0.lock().map(|g| g.is_some()).unwrap_or(false);
        f.debug_tuple("BeforeApply")
            .field(&if set { "set" } else { "none" })
            .finish()
    }
}

/// The live snapshot and the gate in front of it.
#[derive(Debug)]
pub struct PolicyStore {
    current: ArcSwap<PolicySnapshot>,
    generation: AtomicU64,
    /// Runs before a new snapshot goes live (the eBPF datapath is programmed from it); an error rejects the update
    /// and the previous snapshot keeps enforcing.
    before_apply: BeforeApplySlot,
    /// Updates rejected (as reported by the feeds), for the metrics.
    rejected: AtomicU64,
    /// The last rejected update's error, cleared by the next applied one (`tollgate status`).
    last_error: Mutex<Option<ReloadError>>,
}

impl PolicyStore {
    /// A store enforcing `snap` as generation 1 (the first load, from files or the first full list of the API).
    pub fn new(mut snap: PolicySnapshot) -> Self {
        snap.generation = 1;
        PolicyStore {
            current: ArcSwap::from_pointee(snap),
            generation: AtomicU64::new(1),
            before_apply: BeforeApplySlot::default(),
            rejected: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// The snapshot to decide the next request with.
    pub fn current(&self) -> Arc<PolicySnapshot> {
        self.current.load_full()
    }

    /// Registers the hook run before each new snapshot goes live (and runs it once now on the current one).
    pub fn set_before_apply(&self, hook: BeforeApply) -> Result<(), DatapathError> {
        hook(&self.current())?;
        *self
            .before_apply
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(hook);
        Ok(())
    }

    /// The one gate every update passes (file reloads and Kubernetes alike): the next generation and the learned
    /// names go onto the snapshot, the before-apply hook (the datapath) must accept it, then it goes live. A
    /// refused snapshot never enforces. Returns the generation now live.
    pub(super) fn apply(&self, mut snap: PolicySnapshot) -> Result<u64, LoadError> {
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        snap.generation = generation;
        snap.fqdn = self.current().fqdn.clone();
        if let Some(hook) = self
            .before_apply
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            hook(&snap).map_err(LoadError::Datapath)?;
        }
        self.generation.store(generation, Ordering::Relaxed);
        self.current.store(Arc::new(snap));
        Ok(generation)
    }

    /// Records an update's outcome for `tollgate status` and the metrics: an applied update clears the last error,
    /// a rejected one (unreadable or invalid inputs, or refused by the gate) is counted and kept.
    pub(super) fn record(&self, outcome: &Result<u64, LoadError>) {
        match outcome {
            Ok(_) => self.set_last_error(None),
            Err(e) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                self.set_last_error(Some(e));
            }
        }
    }

    fn set_last_error(&self, e: Option<&LoadError>) {
        let value = e.map(|e| ReloadError {
            time: crate::flow::rfc3339(std::time::SystemTime::now()),
            kept_generation: self.current().generation,
            error: e.to_string(),
        });
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = value;
    }

    /// The last rejected update since the last applied one.
    pub fn last_error(&self) -> Option<ReloadError> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Policy updates rejected since start (invalid files, or the datapath refused them).
    pub fn rejected_updates(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}
