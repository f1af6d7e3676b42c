//! The I/O half of Kubernetes mode: one kube-rs watcher per resource (list + watch, re-list after errors or a
//! stale resourceVersion, exponential backoff), one reconciler task that owns the `ClusterState`, recompiles after
//! each burst of changes once every resource has synced, hands snapshots to the `PolicySource` (through the same
//! datapath gate as a file reload) and writes policy status back.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use tokio::sync::mpsc;

use super::api::{self, ApiUse};
use super::cgroup;
use super::cluster::{ClusterState, Compiled, PolicyKey, PolicyKind, PolicyObject, PolicyOutcome};
use super::status;
use crate::policy_source::PolicySource;

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

/// Runs one watcher, forwarding its events; errors are logged (the backoff retries) and never end the stream.
fn spawn_watcher<K, F>(api: Api<K>, what: &'static str, tx: mpsc::Sender<Change>, wrap: F)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    F: Fn(Event<K>) -> Change + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(item) = stream.next().await {
            match item {
                Ok(ev) => {
                    if tx.send(wrap(ev)).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(
                    resource = what,
                    "watching {what} failed, retrying with backoff: {e} (check the API server address and that \
                     the tollgate ClusterRole grants list/watch on {what})"
                ),
            }
        }
    });
}

/// Where this node's pods' cgroups are, and which node this is.
#[derive(Debug, Clone)]
pub struct NodeScope {
    pub node_name: String,
    pub cgroup_root: PathBuf,
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
    /// Status last written per object: (generation, outcome).
    written: BTreeMap<PolicyKey, (Option<i64>, PolicyOutcome)>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("scope", &self.scope)
            .field("synced", &self.synced.len())
            .field("pods", &self.state.pods.len())
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
    Reconciler {
        client,
        scope,
        rx,
        state: ClusterState::default(),
        synced: HashSet::new(),
        relisting: BTreeMap::new(),
        dirty: false,
        written: BTreeMap::new(),
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
    /// every watcher has stopped.
    pub async fn next(&mut self) -> Option<Compiled> {
        loop {
            let change = self.rx.recv().await?;
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
            let (endpoints, skipped) = self.state.endpoints(&self.scope.node_name, &cgroup_of);
            for s in &skipped {
                tracing::warn!("pod left out of the endpoint table: {s}");
            }
            match self.state.compile(endpoints) {
                Ok(mut compiled) => {
                    compiled.skipped_pods = skipped;
                    self.write_status(&compiled.outcomes).await;
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
                self.replace_all(watched, listed);
                if self.synced.insert(watched) {
                    tracing::info!(resource = name, "initial list complete");
                }
                self.dirty = true;
            }
            Phase::Apply | Phase::Delete => {
                self.apply_one(change);
                self.dirty = true;
            }
        }
    }

    fn replace_all(&mut self, watched: Watched, listed: Vec<Change>) {
        match watched {
            Watched::Pods => self.state.pods.clear(),
            Watched::Namespaces => self.state.namespaces.clear(),
            Watched::Policy(kind) => self.state.clear_policies(kind),
        }
        for change in listed {
            self.apply_one(change);
        }
    }

    fn apply_one(&mut self, change: Change) {
        match change {
            Change::Pod(ev) => match *ev {
                Event::Apply(p) | Event::InitApply(p) => self.state.apply_pod(&p),
                Event::Delete(p) => self.state.delete_pod(&p),
                _ => {}
            },
            Change::Namespace(Event::Apply(n) | Event::InitApply(n)) => {
                self.state.apply_namespace(&n)
            }
            Change::Namespace(Event::Delete(n)) => self.state.delete_namespace(&n),
            Change::NetworkPolicy(Event::Apply(np) | Event::InitApply(np)) => {
                if let Some(obj) = PolicyObject::from_network_policy(&np) {
                    self.state.apply_policy(obj);
                }
            }
            Change::NetworkPolicy(Event::Delete(np)) => {
                if let Some(obj) = PolicyObject::from_network_policy(&np) {
                    self.state.delete_policy(&obj.key);
                }
            }
            Change::Cilium(kind, Event::Apply(o) | Event::InitApply(o)) => {
                if let Some(obj) = PolicyObject::from_cilium(kind, &o) {
                    self.state.apply_policy(obj);
                }
            }
            Change::Cilium(kind, Event::Delete(o)) => {
                if let Some(obj) = PolicyObject::from_cilium(kind, &o) {
                    self.state.delete_policy(&obj.key);
                }
            }
            _ => {}
        }
    }

    /// Writes the `Valid` condition of every Cilium policy whose outcome or generation changed. A failed write is
    /// logged and retried after the next change (it never blocks enforcement).
    async fn write_status(&mut self, outcomes: &BTreeMap<PolicyKey, PolicyOutcome>) {
        self.written.retain(|k, _| outcomes.contains_key(k));
        let now = status::rfc3339(SystemTime::now());
        for (key, outcome) in outcomes {
            if !key.kind.has_status() {
                continue;
            }
            let generation = self.state.policies.get(key).and_then(|o| o.generation);
            if self.written.get(key) == Some(&(generation, outcome.clone())) {
                continue;
            }
            if let PolicyOutcome::Rejected { errors, .. } = outcome {
                tracing::error!(policy = %key.source_name(), "policy rejected: {}", errors.join("; "));
            }
            let (ar, _) = cilium_resource(key.kind);
            let api: Api<DynamicObject> = match &key.namespace {
                Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
                None => Api::all_with(self.client.clone(), &ar),
            };
            let body = status::status_patch(outcome, generation, &now);
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(_) => {
                    self.written
                        .insert(key.clone(), (generation, outcome.clone()));
                }
                Err(e) => tracing::warn!(
                    policy = %key.source_name(),
                    "writing the policy status failed (will retry on the next change): {e}"
                ),
            }
        }
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

/// Feeds every later compiled state to the policy source.
pub async fn run_updates(mut reconciler: Reconciler, policy: Arc<PolicySource>) {
    while let Some(compiled) = reconciler.next().await {
        let snap = crate::policy_source::snapshot(compiled.engine, compiled.endpoints);
        match policy.install(snap) {
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
