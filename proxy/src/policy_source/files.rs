//! The file feed (standalone mode): policy files (a file or a directory of `*.yaml`) plus an endpoints file,
//! compiled into one [`PolicySnapshot`] and handed to the [`PolicyStore`].
//!
//! Files are watched (inotify via `notify`, on the parent directories so editors' rename-into-place is seen) and
//! re-checked periodically as a fallback. An update is all-or-nothing: if any document fails to parse or compile,
//! the whole update is rejected with every error (file, document, field path, reason) and the previous snapshot
//! keeps enforcing. A valid update applies to the next request, including requests on already-open connections.
//!
//! It owns the paths, the fingerprint of the last attempt and the watch; it must not swap snapshots, count
//! generations or call the datapath itself (every update goes through the store's one gate), and knows nothing of
//! Kubernetes mode.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::store::{LoadError, PolicySnapshot, PolicyStore};
use crate::policy_adapter::{EndpointTable, PolicyEngine, load_policies};

/// The log target of reload outcomes, as it was before the policy source was split into modules (log filters and
/// the lines operators grep for stay the same).
const LOG_TARGET: &str = "tollgate::policy_source";

/// The policy and endpoints files feeding one store.
#[derive(Debug)]
pub struct PolicyFiles {
    policy_path: PathBuf,
    endpoints_path: PathBuf,
    /// Fingerprint of the inputs last *attempted* (valid or not), so an unchanged bad file is reported once.
    last_attempt: Mutex<u64>,
    store: Arc<PolicyStore>,
}

/// A `map_err` for an I/O error on `path`.
fn read_error(path: &Path) -> impl FnOnce(std::io::Error) -> LoadError + '_ {
    move |source| LoadError::Read {
        path: path.into(),
        source,
    }
}

fn is_yaml(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "yaml" || e == "yml")
}

/// The `*.yaml`/`*.yml` files a policy path names, sorted for a stable order.
fn policy_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let meta = std::fs::metadata(path).map_err(read_error(path))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(read_error(path))? {
        let p = entry.map_err(read_error(path))?.path();
        let hidden = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if is_yaml(&p) && !hidden && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(LoadError::NoPolicyFiles { path: path.into() });
    }
    Ok(files)
}

/// (file name, contents)
type Named = (String, String);

/// Reads one input, adding its name and contents to the fingerprint.
fn read_named(path: &Path, h: &mut DefaultHasher) -> Result<Named, LoadError> {
    let text = std::fs::read_to_string(path).map_err(read_error(path))?;
    let name = path.display().to_string();
    (&name, &text).hash(h);
    Ok((name, text))
}

/// Reads inputs and returns their contents plus a fingerprint.
fn read_inputs(
    policy_path: &Path,
    endpoints_path: &Path,
) -> Result<(Vec<Named>, Named, u64), LoadError> {
    let mut h = DefaultHasher::new();
    let docs = policy_files(policy_path)?
        .iter()
        .map(|f| read_named(f, &mut h))
        .collect::<Result<Vec<_>, _>>()?;
    let ep = read_named(endpoints_path, &mut h)?;
    Ok((docs, ep, h.finish()))
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
        generation,
        ..PolicySnapshot::new(engine, table)
    })
}

impl PolicyFiles {
    /// Loads the initial policy into a new store; fails (and the daemon does not start) if it is invalid.
    pub fn load(policy_path: &Path, endpoints_path: &Path) -> Result<Self, LoadError> {
        let (docs, ep, fp) = read_inputs(policy_path, endpoints_path)?;
        let snap = compile(&docs, (&ep.0, &ep.1), 1)?;
        Ok(PolicyFiles {
            policy_path: policy_path.to_path_buf(),
            endpoints_path: endpoints_path.to_path_buf(),
            last_attempt: Mutex::new(fp),
            store: Arc::new(PolicyStore::new(snap)),
        })
    }

    /// The store these files feed.
    pub fn store(&self) -> &Arc<PolicyStore> {
        &self.store
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
        self.store.apply(snap).map(Some)
    }

    /// Reloads and logs the outcome (the one place file reload results reach the operator); an unchanged input
    /// reports nothing.
    pub fn reload_and_report(&self) {
        let Some(outcome) = self.reload().transpose() else {
            return;
        };
        self.store.record(&outcome);
        match outcome {
            Ok(generation) => {
                tracing::info!(target: LOG_TARGET, generation, "policy update applied")
            }
            Err(e) => tracing::error!(
                target: LOG_TARGET,
                "policy update rejected, generation {} keeps enforcing: {e}",
                self.store.current().generation
            ),
        }
    }

    /// Whether an event naming `p` concerns an input. The watched directories may hold busy files (a flow log next
    /// to the policy), and reacting to those would re-read the inputs on every write. Compared by file name:
    /// events carry paths joined onto the watched directory, which may be spelled differently (relative vs
    /// absolute) from the paths given on the command line.
    fn input_filter(&self) -> impl Fn(&Path) -> bool + Send + 'static {
        let policy_is_dir = self.policy_path.is_dir();
        let policy_name = self.policy_path.file_name().map(|n| n.to_os_string());
        let endpoints_name = self.endpoints_path.file_name().map(|n| n.to_os_string());
        move |p: &Path| {
            let name = p.file_name().map(|n| n.to_os_string());
            (name.is_some() && (name == endpoints_name || name == policy_name))
                || (policy_is_dir && is_yaml(p))
        }
    }

    /// The directories to watch: a directory input itself, a file input's parent (`.` for a bare name), once each.
    fn watched_dirs(&self) -> Vec<PathBuf> {
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
                dirs.push(dir);
            }
        }
        dirs
    }

    /// Watches the inputs until the returned guard is dropped: inotify events trigger a (debounced) reload, and a
    /// periodic re-check catches anything inotify misses (network filesystems, ConfigMap symlink swaps).
    pub fn watch(self: &Arc<Self>, recheck: Duration) -> notify::Result<WatchGuard> {
        use notify::Watcher;
        let (tx, rx) = tokio::sync::mpsc::channel::<()>(1);
        let relevant = self.input_filter();
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
        for dir in self.watched_dirs() {
            watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        }
        let task = tokio::spawn(self.clone().reload_on_change(rx, recheck));
        Ok(WatchGuard {
            _watcher: watcher,
            task,
        })
    }

    /// Reloads after each burst of change events and on every `recheck` tick, until the events stop.
    async fn reload_on_change(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::Receiver<()>,
        recheck: Duration,
    ) {
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
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.reload_and_report()).await;
        }
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
