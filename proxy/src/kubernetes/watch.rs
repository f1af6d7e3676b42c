//! The I/O half of Kubernetes mode: one kube-rs watcher per resource (list + watch, re-list after errors or a
//! stale resourceVersion, a short jittered backoff reset by every success), one reconciler task that owns the `ClusterState`, rebuilds (patches
//! what changed) after each burst of changes once every resource has synced, hands snapshots to the `PolicyStore` (through the same
//! datapath gate as a file reload) and writes policy status back.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use tokio::sync::{mpsc, watch as signal};

use super::api::{self, ApiUse};
use super::cgroup;
use super::cluster::{ClusterState, Compiled, PolicyKey, PolicyKind, PolicyObject, PolicyOutcome};
use super::crd::PolicyCondition;
use super::lease::{self, LeaseSettings};
use super::status;
use crate::policy_source::{PolicyStore, kubernetes as feed};

/// The five watched resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Watched {
    Pods,
    Namespaces,
    Policy(PolicyKind),
}

const ALL_WATCHED: [Watched; 5] = [
    Watched::Pods,
    Watched::Namespaces,
    Watched::Policy(PolicyKind::NetworkPolicy),
    Watched::Policy(PolicyKind::CiliumNetworkPolicy),
    Watched::Policy(PolicyKind::CiliumClusterwideNetworkPolicy),
];

#[derive(Debug)]
enum Change {
    // Boxed: a Pod is ~2 KiB and events queue up in the channel during a re-list.
    Pod(Box<Event<Pod>>),
    Namespace(Event<Namespace>),
    NetworkPolicy(Event<NetworkPolicy>),
    Cilium(PolicyKind, Event<DynamicObject>),
}

fn cilium_resource(kind: PolicyKind) -> (ApiResource, ApiUse) {
    let usage = match kind {
        PolicyKind::CiliumClusterwideNetworkPolicy => api::CILIUM_CLUSTERWIDE_NETWORK_POLICIES,
        _ => api::CILIUM_NETWORK_POLICIES,
    };
    let gvk = GroupVersionKind::gvk(usage.group, usage.version, kind.as_str());
    (
        ApiResource::from_gvk_with_plural(&gvk, usage.resource),
        usage,
    )
}

/// Delay between a watcher's failed attempts: exponential from `FIRST_RETRY` to `MAX_RETRY`, each delay drawn in
/// [half, full] so a thousand nodes do not reconnect in step, and back to the start after any success, so the
/// first retry after an API server comes back is never more than `MAX_RETRY` away.
#[derive(Debug, Clone)]
pub struct RetryBackoff {
    attempt: u32,
    rng: u64,
}

pub const FIRST_RETRY: Duration = Duration::from_millis(100);
pub const MAX_RETRY: Duration = Duration::from_secs(1);

impl RetryBackoff {
    pub fn new(seed: u64) -> Self {
        RetryBackoff {
            attempt: 0,
            // xorshift needs a non-zero state.
            rng: seed | 1,
        }
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

impl Iterator for RetryBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let full = FIRST_RETRY
            .saturating_mul(1 << self.attempt.min(16))
            .min(MAX_RETRY);
        self.attempt = self.attempt.saturating_add(1);
        let half = full / 2;
        let spread = (full - half).as_millis() as u64 + 1;
        Some(half + Duration::from_millis(self.next_random() % spread))
    }
}

impl Backoff for RetryBackoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

fn backoff_seed(what: &str) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 ^ d.as_secs())
        .unwrap_or(0);
    what.bytes()
        .fold(nanos ^ u64::from(std::process::id()), |h, b| {
            h.rotate_left(5) ^ u64::from(b)
        })
}

/// Whether the API server answered with HTTP status `code`, in the watch stream or to the list or watch request.
fn has_status(e: &watcher::Error, code: u16) -> bool {
    match e {
        watcher::Error::WatchError(status) => status.code == code,
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => matches!(e, kube::Error::Api(s) if s.code == code),
        watcher::Error::NoResourceVersion => false,
    }
}

/// A resourceVersion the API server no longer has (410 Gone): routine after a compaction or restart; the watcher
/// re-lists.
fn is_expired(e: &watcher::Error) -> bool {
    has_status(e, 410)
}

fn is_forbidden(e: &watcher::Error) -> bool {
    has_status(e, 403)
}

fn log_watch_error(what: &str, e: &watcher::Error) {
    if is_expired(e) {
        tracing::debug!(
            resource = what,
            "watch of {what} expired (410 Gone), re-listing: {e}"
        );
    } else if is_forbidden(e) {
        tracing::warn!(
            resource = what,
            "watching {what} is forbidden, retrying: {e} (the tollgate ClusterRole must grant list/watch on {what})"
        );
    } else {
        tracing::warn!(
            resource = what,
            "watching {what} failed, retrying within {}s: {e} (check that the API server is reachable)",
            MAX_RETRY.as_secs()
        );
    }
}

/// Runs one watcher, forwarding its events; errors are logged (the backoff retries) and never end the stream.
fn spawn_watcher<K, F>(api: Api<K>, what: &'static str, tx: mpsc::Sender<Change>, wrap: F)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    F: Fn(Event<K>) -> Change + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .backoff(RetryBackoff::new(backoff_seed(what)))
            .boxed();
        while let Some(item) = stream.next().await {
            match item {
                Ok(ev) => {
                    if tx.send(wrap(ev)).await.is_err() {
                        return;
                    }
                }
                Err(e) => log_watch_error(what, &e),
            }
        }
    });
}

/// Where this node's pods' cgroups are, and which node this is.
#[derive(Debug, Clone)]
pub struct NodeScope {
    pub node_name: String,
    pub cgroup_root: PathBuf,
    /// The Lease electing the one status writer; `None`: this daemon always writes (a single daemon, tests).
    pub lease: Option<LeaseSettings>,
}

/// Owns the cluster state; turns watch events into compiled snapshots and status writes.
pub struct Reconciler {
    client: Client,
    scope: NodeScope,
    rx: mpsc::Receiver<Change>,
    state: ClusterState,
    synced: HashSet<Watched>,
    /// Objects received since the last `Init` of each resource (a re-list replaces that resource wholesale).
    relisting: BTreeMap<&'static str, Vec<Change>>,
    dirty: bool,
    /// A full list was applied since the last compilation: the next one returns the freed pages to the system.
    listed: bool,
    /// Tollgate's `Valid` condition per object: as last watched, or as last written (until the watch shows it).
    observed: BTreeMap<PolicyKey, PolicyCondition>,
    /// Whether this daemon holds the status Lease (`None`: no election, always writes).
    leading: Option<signal::Receiver<bool>>,
    /// The outcomes of the last compilation: the status `write_status` writes (after each compilation, and when this
    /// daemon becomes the status writer).
    outcomes: BTreeMap<PolicyKey, PolicyOutcome>,
    /// The last compilation's status is still to be written: written at the next call of [`Reconciler::next`],
    /// after the caller installed what it returned (enforcement never waits for the API server's answers).
    status_due: bool,
    /// Compilations done (tests and the bench check that events which change nothing compile nothing).
    pub compilations: u64,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("scope", &self.scope)
            .field("synced", &self.synced.len())
            .field("pods", &self.state.pod_count())
            .field("policies", &self.state.policies.len())
            .finish_non_exhaustive()
    }
}

/// Starts the watchers.
pub fn start_watchers(client: Client, scope: NodeScope) -> Reconciler {
    let (tx, rx) = mpsc::channel(1024);
    spawn_watcher(Api::<Pod>::all(client.clone()), "pods", tx.clone(), |e| {
        Change::Pod(Box::new(e))
    });
    spawn_watcher(
        Api::<Namespace>::all(client.clone()),
        "namespaces",
        tx.clone(),
        Change::Namespace,
    );
    spawn_watcher(
        Api::<NetworkPolicy>::all(client.clone()),
        "networkpolicies",
        tx.clone(),
        Change::NetworkPolicy,
    );
    for kind in [
        PolicyKind::CiliumNetworkPolicy,
        PolicyKind::CiliumClusterwideNetworkPolicy,
    ] {
        let (ar, usage) = cilium_resource(kind);
        spawn_watcher(
            Api::<DynamicObject>::all_with(client.clone(), &ar),
            usage.resource,
            tx.clone(),
            move |ev| Change::Cilium(kind, ev),
        );
    }
    let leading = scope
        .lease
        .clone()
        .map(|settings| lease::start(client.clone(), settings));
    Reconciler {
        leading,
        outcomes: BTreeMap::new(),
        status_due: false,
        compilations: 0,
        client,
        scope,
        rx,
        state: ClusterState::default(),
        synced: HashSet::new(),
        relisting: BTreeMap::new(),
        dirty: false,
        listed: false,
        observed: BTreeMap::new(),
    }
}

fn watched_of(change: &Change) -> (Watched, &'static str) {
    match change {
        Change::Pod(_) => (Watched::Pods, "pods"),
        Change::Namespace(_) => (Watched::Namespaces, "namespaces"),
        Change::NetworkPolicy(_) => (
            Watched::Policy(PolicyKind::NetworkPolicy),
            "networkpolicies",
        ),
        Change::Cilium(PolicyKind::CiliumClusterwideNetworkPolicy, _) => (
            Watched::Policy(PolicyKind::CiliumClusterwideNetworkPolicy),
            "ciliumclusterwidenetworkpolicies",
        ),
        Change::Cilium(kind, _) => (Watched::Policy(*kind), "ciliumnetworkpolicies"),
    }
}

impl Reconciler {
    /// Waits for changes and returns the next compiled state (after all resources have synced once); `None` when
    /// every watcher has stopped. First writes the status of the compilation it returned last.
    pub async fn next(&mut self) -> Option<Compiled> {
        if std::mem::take(&mut self.status_due) {
            // One PATCH per changed policy: written before returning, 1,000 of them held a 20,000-pod daemon's
            // start-up for 98 s against a slow API server.
            self.write_status().await;
        }
        loop {
            let change = match self.leading.as_mut() {
                Some(leading) => tokio::select! {
                    change = self.rx.recv() => change?,
                    Ok(()) = leading.changed() => {
                        // Became the writer: write what the objects do not show yet (the last holder may have
                        // stopped mid-way). Lost it: nothing to do, writes stop by themselves.
                        if *leading.borrow_and_update() {
                            self.write_status().await;
                        }
                        continue;
                    }
                },
                None => self.rx.recv().await?,
            };
            self.apply(change);
            // Take the whole burst before compiling: a re-list or a rollout arrives as many events at once.
            while let Ok(change) = self.rx.try_recv() {
                self.apply(change);
            }
            if !self.dirty || self.synced.len() < ALL_WATCHED.len() {
                continue;
            }
            self.dirty = false;
            let root = self.scope.cgroup_root.clone();
            let cgroup_of = move |p: &super::cluster::PodInfo| cgroup::find(&root, &p.uid, p.qos);
            match self.state.rebuild(&self.scope.node_name, &cgroup_of) {
                Ok(compiled) => {
                    for s in &compiled.skipped_pods {
                        tracing::warn!("pod left out of the endpoint table: {s}");
                    }
                    self.compilations += 1;
                    if std::mem::take(&mut self.listed) {
                        // A list of 20,000 pods frees far more than the state keeps; mimalloc would hold the freed
                        // pages until a later purge (issue 21: RSS for that state).
                        crate::allocator::collect_now();
                    }
                    self.outcomes = compiled.outcomes.clone();
                    self.status_due = true;
                    return Some(compiled);
                }
                Err(e) => {
                    tracing::error!("cannot build the endpoint table from the API objects: {e}")
                }
            }
        }
    }

    fn apply(&mut self, change: Change) {
        let (watched, name) = watched_of(&change);
        let event_kind = match &change {
            Change::Pod(e) => event_phase(e),
            Change::Namespace(e) => event_phase(e),
            Change::NetworkPolicy(e) => event_phase(e),
            Change::Cilium(_, e) => event_phase(e),
        };
        match event_kind {
            Phase::Init => {
                self.relisting.insert(name, Vec::new());
            }
            Phase::InitApply => {
                self.relisting.entry(name).or_default().push(change);
            }
            Phase::InitDone => {
                let listed = self.relisting.remove(name).unwrap_or_default();
                self.listed = true;
                // A re-list that finds what we already had (the usual case after a 410) changes nothing.
                if self.replace_all(watched, listed) {
                    self.dirty = true;
                }
                if self.synced.insert(watched) {
                    tracing::info!(resource = name, "initial list complete");
                    self.dirty = true;
                }
            }
            Phase::Apply | Phase::Delete => {
                // Status-only updates (our own writes included) and pod updates that change no field the policy
                // or the enrollment reads leave the state as it was: nothing to compile.
                if self.apply_one(change) {
                    self.dirty = true;
                }
            }
        }
    }

    /// Replaces every object of one resource with a re-list; whether anything differs.
    fn replace_all(&mut self, watched: Watched, listed: Vec<Change>) -> bool {
        match watched {
            Watched::Pods => {
                let pods: Vec<Pod> = listed
                    .into_iter()
                    .filter_map(|c| match c {
                        Change::Pod(ev) => match *ev {
                            Event::Apply(p) | Event::InitApply(p) => Some(p),
                            _ => None,
                        },
                        _ => None,
                    })
                    .collect();
                self.state.replace_pods(&pods)
            }
            Watched::Namespaces => {
                let old = std::mem::take(&mut self.state.namespaces);
                listed.into_iter().for_each(|c| {
                    self.apply_one(c);
                });
                self.state.namespaces != old
            }
            Watched::Policy(kind) => {
                let old = self.state.policies.clone();
                self.state.clear_policies(kind);
                listed.into_iter().for_each(|c| {
                    self.apply_one(c);
                });
                self.state.policies != old
            }
        }
    }

    /// Applies one event; whether the state changed.
    fn apply_one(&mut self, change: Change) -> bool {
        match change {
            Change::Pod(ev) => match *ev {
                Event::Apply(p) | Event::InitApply(p) => self.state.apply_pod(&p),
                Event::Delete(p) => self.state.delete_pod(&p),
                _ => false,
            },
            Change::Namespace(Event::Apply(n) | Event::InitApply(n)) => {
                self.state.apply_namespace(&n)
            }
            Change::Namespace(Event::Delete(n)) => self.state.delete_namespace(&n),
            Change::NetworkPolicy(Event::Apply(np) | Event::InitApply(np)) => {
                PolicyObject::from_network_policy(&np)
                    .is_some_and(|obj| self.state.apply_policy(obj))
            }
            Change::NetworkPolicy(Event::Delete(np)) => PolicyObject::from_network_policy(&np)
                .is_some_and(|obj| self.state.delete_policy(&obj.key)),
            Change::Cilium(kind, Event::Apply(o) | Event::InitApply(o)) => {
                let Some(obj) = PolicyObject::from_cilium(kind, &o) else {
                    return false;
                };
                match status::observed_valid(o.data.get("status")) {
                    Some(c) => self.observed.insert(obj.key.clone(), c),
                    None => self.observed.remove(&obj.key),
                };
                self.state.apply_policy(obj)
            }
            Change::Cilium(kind, Event::Delete(o)) => PolicyObject::from_cilium(kind, &o)
                .is_some_and(|obj| self.state.delete_policy(&obj.key)),
            _ => false,
        }
    }

    /// Writes the `Valid` condition of every Cilium policy of the last compilation whose object does not already
    /// show it, by server-side apply of that one condition. A failed write is logged and retried after the next
    /// change (it never blocks enforcement).
    async fn write_status(&mut self) {
        let outcomes = &self.outcomes;
        self.observed.retain(|k, _| outcomes.contains_key(k));
        if !self.writes_status() {
            return;
        }
        let now = status::rfc3339(SystemTime::now());
        for (key, outcome) in outcomes {
            if !key.kind.has_status() {
                continue;
            }
            let generation = self.state.policies.get(key).and_then(|o| o.generation);
            let Some(condition) =
                status::condition_to_write(outcome, generation, self.observed.get(key), &now)
            else {
                continue;
            };
            if let PolicyOutcome::Rejected { errors, .. } = outcome {
                tracing::error!(policy = %key.source_name(), "policy rejected: {}", errors.join("; "));
            }
            let (ar, _) = cilium_resource(key.kind);
            let api: Api<DynamicObject> = match &key.namespace {
                Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
                None => Api::all_with(self.client.clone(), &ar),
            };
            let body = status::apply_body(
                key.kind.as_str(),
                &key.name,
                key.namespace.as_deref(),
                &condition,
            );
            // The Lease may have moved on while we were writing: stop at once.
            if !self.writes_status() {
                return;
            }
            let params = PatchParams::apply(status::FIELD_MANAGER).force();
            match api
                .patch_status(&key.name, &params, &Patch::Apply(&body))
                .await
            {
                Ok(_) => {
                    self.observed.insert(key.clone(), condition);
                }
                Err(e) => tracing::warn!(
                    policy = %key.source_name(),
                    "writing the policy status failed (will retry on the next change): {e}"
                ),
            }
        }
    }
}

impl Reconciler {
    /// Whether this daemon writes policy status now.
    fn writes_status(&self) -> bool {
        self.leading.as_ref().is_none_or(|l| *l.borrow())
    }
}

enum Phase {
    Init,
    InitApply,
    InitDone,
    Apply,
    Delete,
}

fn event_phase<K>(e: &Event<K>) -> Phase {
    match e {
        Event::Init => Phase::Init,
        Event::InitApply(_) => Phase::InitApply,
        Event::InitDone => Phase::InitDone,
        Event::Apply(_) => Phase::Apply,
        Event::Delete(_) => Phase::Delete,
    }
}

/// Feeds every later compiled state to the policy store.
pub async fn run_updates(mut reconciler: Reconciler, policy: Arc<PolicyStore>) {
    while let Some(compiled) = reconciler.next().await {
        match feed::install(&policy, compiled.engine, compiled.endpoints) {
            Ok(generation) => {
                tracing::info!(generation, "policy update from the API server applied")
            }
            Err(e) => tracing::error!(
                "policy update from the API server rejected, generation {} keeps enforcing: {e}",
                policy.current().generation
            ),
        }
    }
    tracing::error!("every Kubernetes watcher stopped; the last policy keeps enforcing");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_to_the_cap_with_jitter_and_reset_on_success() {
        let mut b = RetryBackoff::new(42);
        let first: Vec<Duration> = b.by_ref().take(12).collect();
        assert!(
            first[0] >= FIRST_RETRY / 2 && first[0] <= FIRST_RETRY,
            "{first:?}"
        );
        assert!(first.iter().all(|d| *d <= MAX_RETRY), "{first:?}");
        assert!(first[6..].iter().all(|d| *d >= MAX_RETRY / 2), "{first:?}");
        b.reset();
        assert!(b.next().unwrap() <= FIRST_RETRY, "reset starts over");
        // Two nodes' delays differ (jitter), so they do not reconnect in step.
        let other: Vec<Duration> = RetryBackoff::new(7).take(12).collect();
        assert_ne!(first, other);
    }

    #[test]
    fn a_410_is_routine_and_a_403_is_about_rbac() {
        let status = |code| kube::core::Status::failure("x", "y").with_code(code);
        assert!(is_expired(&watcher::Error::WatchError(Box::new(status(
            410
        )))));
        assert!(!is_forbidden(&watcher::Error::WatchError(Box::new(
            status(410)
        ))));
        assert!(is_forbidden(&watcher::Error::InitialListFailed(
            kube::Error::Api(Box::new(status(403)))
        )));
        assert!(!is_expired(&watcher::Error::NoResourceVersion));
    }
}
