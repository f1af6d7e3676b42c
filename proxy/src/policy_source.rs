//! Where the enforced policy comes from in standalone mode: policy files (a file or a directory of `*.yaml`) plus
//! an endpoints file, compiled into one immutable [`PolicySnapshot`] behind an `ArcSwap`.
//!
//! Files are watched (inotify via `notify`, on the parent directories so editors' rename-into-place is seen) and
//! re-checked periodically as a fallback. An update is all-or-nothing: if any document fails to parse or compile,
//! the whole update is rejected with every error (file, document, field path, reason) and the previous snapshot
//! keeps enforcing. A valid update applies to the next request, including requests on already-open connections.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::policy_adapter::{EndpointTable, PolicyEngine, PolicyError, load_policies};
use arc_swap::ArcSwap;
use thiserror::Error;

/// Everything one request's decision needs, swapped atomically on reload.
#[derive(Debug)]
pub struct PolicySnapshot {
    pub engine: PolicyEngine,
    pub endpoints: EndpointTable,
    /// Names learned by the DNS proxy; one cache shared by every snapshot (a reload keeps what was learned).
    pub fqdn: crate::fqdn_cache::SharedFqdnCache,
    /// 1 for the first load, +1 per applied update.
    pub generation: u64,
}

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
    Datapath(crate::datapath::DatapathError),
}

fn join_errors(errors: &[PolicyError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The policy and endpoints inputs, plus the live snapshot.
#[derive(Debug)]
pub struct PolicySource {
    policy_path: PathBuf,
    endpoints_path: PathBuf,
    current: ArcSwap<PolicySnapshot>,
    /// Fingerprint of the inputs last *attempted* (valid or not), so an unchanged bad file is reported once.
    last_attempt: Mutex<u64>,
    generation: AtomicU64,
    /// Runs before a new snapshot goes live (the eBPF datapath is programmed from it); an error rejects the update
    /// and the previous snapshot keeps enforcing.
    before_apply: BeforeApplySlot,
    /// Updates rejected by `reload_and_report`, for the metrics.
    rejected: AtomicU64,
    /// The last rejected update's error, cleared by the next applied one (`tollgate status`).
    last_error: Mutex<Option<ReloadError>>,
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

/// See [`PolicySource::set_before_apply`].
pub type BeforeApply =
    Box<dyn Fn(&PolicySnapshot) -> Result<(), crate::datapath::DatapathError> + Send + Sync>;

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

/// The `*.yaml`/`*.yml` files a policy path names, sorted for a stable order.
fn policy_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let meta = std::fs::metadata(path).map_err(|source| LoadError::Read {
        path: path.into(),
        source,
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|source| LoadError::Read {
        path: path.into(),
        source,
    })? {
        let p = entry
            .map_err(|source| LoadError::Read {
                path: path.into(),
                source,
            })?
            .path();
        let yaml = p.extension().is_some_and(|e| e == "yaml" || e == "yml");
        let hidden = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if yaml && !hidden && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(LoadError::NoPolicyFiles { path: path.into() });
    }
    Ok(files)
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.into(),
        source,
    })
}

/// (file name, contents)
type Named = (String, String);

/// Reads inputs and returns their contents plus a fingerprint.
fn read_inputs(
    policy_path: &Path,
    endpoints_path: &Path,
) -> Result<(Vec<Named>, Named, u64), LoadError> {
    let mut h = DefaultHasher::new();
    let mut docs = Vec::new();
    for f in policy_files(policy_path)? {
        let text = read(&f)?;
        let name = f.display().to_string();
        (&name, &text).hash(&mut h);
        docs.push((name, text));
    }
    let ep_text = read(endpoints_path)?;
    let ep_name = endpoints_path.display().to_string();
    (&ep_name, &ep_text).hash(&mut h);
    Ok((docs, (ep_name, ep_text), h.finish()))
}

/// Compiles inputs into a snapshot; pure apart from the inputs given. Any error rejects the whole set.
pub fn compile(
    docs: &[(String, String)],
    endpoints: (&str, &str),
    generation: u64,
) -> Result<PolicySnapshot, LoadError> {
    let mut errors = Vec::new();
    let table = match EndpointTable::from_yaml(endpoints.0, endpoints.1) {
        Ok(t) => Some(t),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let mut policies = Vec::new();
    for (name, text) in docs {
        let load = load_policies(name, text);
        policies.extend(load.policies);
        errors.extend(load.errors);
    }
    let Some(table) = table else {
        return Err(LoadError::Invalid(errors));
    };
    let (engine, compile_errors) = PolicyEngine::compile(policies, &table);
    errors.extend(compile_errors);
    if !errors.is_empty() {
        return Err(LoadError::Invalid(errors));
    }
    Ok(PolicySnapshot {
        engine,
        endpoints: table,
        fqdn: crate::fqdn_cache::SharedFqdnCache::default(),
        generation,
    })
}

/// A snapshot from an engine and endpoint table compiled elsewhere (Kubernetes mode); its generation is set when
/// it is installed.
pub fn snapshot(engine: PolicyEngine, endpoints: EndpointTable) -> PolicySnapshot {
    PolicySnapshot {
        engine,
        endpoints,
        fqdn: crate::fqdn_cache::SharedFqdnCache::default(),
        generation: 0,
    }
}

impl PolicySource {
    /// A source fed by something other than files (Kubernetes mode), starting from an already compiled snapshot.
    /// It has no files: `reload` and `watch` are not used with it; updates come through [`PolicySource::install`].
    pub fn from_snapshot(mut snap: PolicySnapshot) -> Self {
        snap.generation = 1;
        PolicySource {
            policy_path: PathBuf::new(),
            endpoints_path: PathBuf::new(),
            current: ArcSwap::from_pointee(snap),
            last_attempt: Mutex::new(0),
            generation: AtomicU64::new(1),
            before_apply: BeforeApplySlot::default(),
            rejected: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// Installs a snapshot compiled elsewhere (Kubernetes mode) through the same before-apply gate as a file
    /// reload: if the datapath refuses it, it is counted as rejected and the current snapshot keeps enforcing.
    pub fn install(&self, snap: PolicySnapshot) -> Result<u64, LoadError> {
        let applied = self.apply(snap);
        match &applied {
            Ok(_) => self.set_last_error(None),
            Err(e) => self.count_rejected(e),
        }
        applied
    }

    /// The one gate every update passes (file reloads and Kubernetes alike): the next generation and the learned
    /// names go onto the snapshot, the before-apply hook (the datapath) must accept it, then it goes live. A
    /// refused snapshot never enforces.
    fn apply(&self, mut snap: PolicySnapshot) -> Result<u64, LoadError> {
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

    /// Loads the initial policy; fails (and the daemon does not start) if it is invalid.
    pub fn load(policy_path: &Path, endpoints_path: &Path) -> Result<Self, LoadError> {
        let (docs, ep, fp) = read_inputs(policy_path, endpoints_path)?;
        let snap = compile(&docs, (&ep.0, &ep.1), 1)?;
        Ok(PolicySource {
            policy_path: policy_path.to_path_buf(),
            endpoints_path: endpoints_path.to_path_buf(),
            current: ArcSwap::from_pointee(snap),
            last_attempt: Mutex::new(fp),
            generation: AtomicU64::new(1),
            before_apply: BeforeApplySlot::default(),
            rejected: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    /// Registers the hook run before each new snapshot goes live (and runs it once now on the current one).
    pub fn set_before_apply(
        &self,
        hook: BeforeApply,
    ) -> Result<(), crate::datapath::DatapathError> {
        hook(&self.current())?;
        *self
            .before_apply
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(hook);
        Ok(())
    }

    /// The snapshot to decide the next request with.
    pub fn current(&self) -> Arc<PolicySnapshot> {
        self.current.load_full()
    }

    /// Re-reads the inputs. `Ok(Some(gen))`: a new snapshot is live; `Ok(None)`: nothing changed since the last
    /// attempt; `Err`: the update was rejected and the previous snapshot keeps enforcing.
    pub fn reload(&self) -> Result<Option<u64>, LoadError> {
        let (docs, ep, fp) = read_inputs(&self.policy_path, &self.endpoints_path)?;
        {
            let mut last = self.last_attempt.lock().unwrap_or_else(|p| p.into_inner());
            if *last == fp {
                return Ok(None);
            }
            *last = fp;
        }
        // The generation is stamped by the gate.
        let snap = compile(&docs, (&ep.0, &ep.1), 0)?;
        self.apply(snap).map(Some)
    }

    /// Reloads and logs the outcome (the one place reload results reach the operator).
    pub fn reload_and_report(&self) {
        match self.reload() {
            Ok(Some(generation)) => {
                self.set_last_error(None);
                tracing::info!(generation, "policy update applied")
            }
            Ok(None) => {}
            Err(e) => {
                self.count_rejected(&e);
                tracing::error!(
                    "policy update rejected, generation {} keeps enforcing: {e}",
                    self.current().generation
                )
            }
        }
    }

    fn count_rejected(&self, e: &LoadError) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.set_last_error(Some(e));
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

    /// Watches the inputs until the returned guard is dropped: inotify events trigger a (debounced) reload, and a
    /// periodic re-check catches anything inotify misses (network filesystems, ConfigMap symlink swaps).
    pub fn watch(self: &Arc<Self>, recheck: Duration) -> notify::Result<WatchGuard> {
        use notify::Watcher;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        // Only events that touch an input matter: the watched directories may hold busy files (a flow log next
        // to the policy), and reacting to those would re-read the inputs on every write.
        // Compared by file name: events carry paths joined onto the watched directory, which may be spelled
        // differently (relative vs absolute) from the paths given on the command line.
        let policy_is_dir = self.policy_path.is_dir();
        let policy_name = self.policy_path.file_name().map(|n| n.to_os_string());
        let endpoints_name = self.endpoints_path.file_name().map(|n| n.to_os_string());
        let relevant = move |p: &Path| {
            let name = p.file_name().map(|n| n.to_os_string());
            (name.is_some() && (name == endpoints_name || name == policy_name))
                || (policy_is_dir && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        };
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                let Ok(ev) = res else { return };
                if ev.kind.is_access() {
                    return;
                }
                // Editors and ConfigMaps swap files by rename: a path-less event or one naming an input triggers.
                if ev.paths.is_empty() || ev.paths.iter().any(|p| relevant(p)) {
                    let _ = tx.try_send(());
                }
            })?;
        let mut dirs: Vec<PathBuf> = Vec::new();
        for p in [&self.policy_path, &self.endpoints_path] {
            let dir = if p.is_dir() {
                p.clone()
            } else {
                p.parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| ".".into())
            };
            let dir = if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir
            };
            if !dirs.contains(&dir) {
                watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
                dirs.push(dir);
            }
        }
        let me = self.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(recheck);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    ev = rx.recv() => {
                        if ev.is_none() { break; }
                        // Let a writer finish (editors write in several syscalls) before reading.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        while rx.try_recv().is_ok() {}
                    }
                    _ = tick.tick() => {}
                }
                let me = me.clone();
                let _ = tokio::task::spawn_blocking(move || me.reload_and_report()).await;
            }
        });
        Ok(WatchGuard {
            _watcher: watcher,
            task,
        })
    }
}

/// Stops watching when dropped.
#[derive(Debug)]
pub struct WatchGuard {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}
