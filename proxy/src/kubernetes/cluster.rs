//! What this node knows of the cluster, reduced from API objects to the few fields the policy needs, and the pure
//! step from that to the policy engine's inputs. No I/O: the watchers (`watch.rs`) feed it, tests feed it directly.
//!
//! Pods are kept cluster-wide (any pod can be a peer, so every pod IP needs an identity), but only their IP, labels,
//! service account, node and UID; only this node's pods get a cgroup for enrollment. Policies are validated one
//! object at a time, as a Kubernetes user expects: an invalid object is rejected alone, with a status saying why,
//! and the last valid version of that same object keeps enforcing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::DynamicObject;
use policy_model::{
    Endpoint, EndpointTable, LiveEngine, Policy, PolicyEngine, PolicyError, load_policies,
};

use super::cgroup::QosClass;

/// Label Cilium gives every endpoint with its service account; selectors may match on it.
pub use policy_model::labels::SERVICE_ACCOUNT_LABEL;
/// Prefix Cilium gives a namespace's labels on each of its endpoints, so endpoint selectors can use them.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

/// The policy kinds watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
    NetworkPolicy,
}

impl PolicyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            PolicyKind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
            PolicyKind::NetworkPolicy => "NetworkPolicy",
        }
    }

    /// Whether the kind has a status subresource we write conditions to (NetworkPolicy has none).
    pub fn has_status(self) -> bool {
        !matches!(self, PolicyKind::NetworkPolicy)
    }
}

/// One policy object: kind, namespace (None for clusterwide) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    pub kind: PolicyKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl PolicyKey {
    /// The "file" name policy errors carry, e.g. `CiliumNetworkPolicy/shop/api-l7`.
    pub fn source_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{ns}/{}", self.kind.as_str(), self.name),
            None => format!("{}/{}", self.kind.as_str(), self.name),
        }
    }
}

/// A policy object as the engine's loader reads it: the object's own JSON (a YAML document).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyObject {
    pub key: PolicyKey,
    /// `metadata.generation`: changes with the spec only, so status writes do not trigger re-validation noise.
    pub generation: Option<i64>,
    pub document: String,
}

impl PolicyObject {
    /// From a watched Cilium object (CNP or CCNP).
    pub fn from_cilium(kind: PolicyKind, obj: &DynamicObject) -> Option<PolicyObject> {
        let name = obj.metadata.name.clone()?;
        let namespace = match kind {
            PolicyKind::CiliumClusterwideNetworkPolicy => None,
            _ => Some(
                obj.metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
            ),
        };
        let mut doc = serde_json::Map::new();
        doc.insert("apiVersion".into(), "cilium.io/v2".into());
        doc.insert("kind".into(), kind.as_str().into());
        let mut meta = serde_json::Map::new();
        meta.insert("name".into(), name.clone().into());
        if let Some(ns) = &namespace {
            meta.insert("namespace".into(), ns.clone().into());
        }
        doc.insert("metadata".into(), meta.into());
        // Only the policy fields: status (which we write) must not make an object look changed.
        for field in ["spec", "specs"] {
            if let Some(v) = obj.data.get(field) {
                doc.insert(field.into(), v.clone());
            }
        }
        Some(PolicyObject {
            key: PolicyKey {
                kind,
                namespace,
                name,
            },
            generation: obj.metadata.generation,
            document: serde_json::Value::Object(doc).to_string(),
        })
    }

    /// From a watched Kubernetes NetworkPolicy.
    pub fn from_network_policy(np: &NetworkPolicy) -> Option<PolicyObject> {
        let name = np.metadata.name.clone()?;
        let namespace = np
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let doc = serde_json::json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": np.spec,
        });
        Some(PolicyObject {
            key: PolicyKey {
                kind: PolicyKind::NetworkPolicy,
                namespace: Some(namespace),
                name,
            },
            generation: np.metadata.generation,
            document: doc.to_string(),
        })
    }
}

/// The fields of a pod the policy and the enrollment need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub ip: Option<IpAddr>,
    /// Sorted by key, one entry per key. Pairs, not maps: a pod has a few labels and ports, and a B-tree map
    /// allocates a node of 11 entries for the first one (half a KiB per pod for the labels alone).
    pub labels: Vec<(String, String)>,
    pub service_account: String,
    pub node: Option<String>,
    pub qos: QosClass,
    /// Sorted by name, one entry per name (the last container port of a name wins).
    pub named_ports: Vec<(String, u16)>,
    /// hostNetwork pods share the node's IP: they are the host, not an endpoint.
    pub host_network: bool,
    /// Succeeded/Failed pods have released their IP.
    pub terminal: bool,
}

impl PodInfo {
    pub fn from_pod(pod: &Pod) -> Option<PodInfo> {
        let uid = pod.metadata.uid.clone()?;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut named_ports = BTreeMap::new();
        for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
            for p in c.ports.as_deref().unwrap_or_default() {
                if let (Some(name), Ok(port)) = (&p.name, u16::try_from(p.container_port)) {
                    named_ports.insert(name.clone(), port);
                }
            }
        }
        Some(PodInfo {
            uid,
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: pod.metadata.name.clone().unwrap_or_default(),
            ip: status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok()),
            // Collected from an exact-size iterator: no spare capacity.
            labels: pod
                .metadata
                .labels
                .as_ref()
                .map_or_else(Vec::new, |labels| {
                    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
                }),
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
            node: spec.and_then(|s| s.node_name.clone()),
            qos: QosClass::parse(status.and_then(|s| s.qos_class.as_deref())),
            named_ports: named_ports.into_iter().collect(),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            terminal: matches!(
                status.and_then(|s| s.phase.as_deref()),
                Some("Succeeded") | Some("Failed")
            ),
        })
    }
}

/// Whether a policy object is enforced, for its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyOutcome {
    Accepted,
    /// Rejected; `enforcing_previous` says whether an earlier valid version of the object keeps enforcing.
    Rejected {
        errors: Vec<String>,
        enforcing_previous: bool,
    },
}

/// The result of one recompilation.
#[derive(Debug)]
pub struct Compiled {
    pub engine: PolicyEngine,
    pub endpoints: EndpointTable,
    pub outcomes: BTreeMap<PolicyKey, PolicyOutcome>,
    /// Pods left out by this rebuild (an IP or name another pod holds), for the log.
    pub skipped_pods: Vec<String>,
}

/// Everything the watchers have seen, and the engine kept current from it: each rebuild patches only the
/// endpoints of pods (and namespaces) that changed and recompiles only policy objects that changed.
#[derive(Debug, Default)]
pub struct ClusterState {
    pods: BTreeMap<String, PodInfo>,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub policies: BTreeMap<PolicyKey, PolicyObject>,
    /// The last valid version of each object (kept while a newer version is invalid).
    last_good: BTreeMap<PolicyKey, Arc<Vec<Policy>>>,
    /// Each object's document as last parsed, with the result: a compilation re-parses only changed objects.
    parsed: BTreeMap<PolicyKey, ParsedPolicy>,
    /// The engine, patched by each rebuild.
    live: LiveEngine<PolicyKey>,
    /// Pods that may be endpoints, by IP; the first (by namespace/name) holds the IP, the others are left out.
    /// Each list is sorted and without duplicates (a set; a list because nearly every IP has one claim and a set
    /// allocates a node for 11).
    claims: BTreeMap<IpAddr, Vec<PodName>>,
    /// IPs whose endpoint the next rebuild derives again (a pod there changed).
    dirty_ips: BTreeSet<IpAddr>,
    /// Namespace labels as the endpoints carry them now.
    synced_namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// This node's endpoints installed without a cgroup: looked up again at each rebuild until it appears.
    awaiting_cgroup: BTreeSet<IpAddr>,
}

/// (namespace, name, uid) of a pod.
type PodName = (String, String, String);

#[derive(Debug)]
struct ParsedPolicy {
    document: String,
    policies: Arc<Vec<Policy>>,
    /// Validation errors, or (once tried) compilation errors: either rejects this version.
    errors: Vec<PolicyError>,
}

impl PodInfo {
    /// The IP this pod claims as an endpoint: running pods with their own IP.
    fn endpoint_ip(&self) -> Option<IpAddr> {
        self.ip.filter(|_| !self.host_network && !self.terminal)
    }

    fn pod_name(&self) -> PodName {
        (self.namespace.clone(), self.name.clone(), self.uid.clone())
    }
}

impl ClusterState {
    // Each update says whether it changed anything, so the reconciler skips compiling for events that do not
    // (a pod's container status, a policy's status, a re-sent object).

    pub fn apply_pod(&mut self, pod: &Pod) -> bool {
        let Some(p) = PodInfo::from_pod(pod) else {
            return false;
        };
        if self.pods.get(&p.uid) == Some(&p) {
            return false;
        }
        self.unclaim(&p.uid);
        if let Some(ip) = p.endpoint_ip() {
            let claims = self.claims.entry(ip).or_default();
            let name = p.pod_name();
            if let Err(at) = claims.binary_search(&name) {
                // Exact: a Vec's first push would make room for 4 claims.
                claims.reserve_exact(1);
                claims.insert(at, name);
            }
            self.dirty_ips.insert(ip);
        }
        self.pods.insert(p.uid.clone(), p);
        true
    }

    pub fn delete_pod(&mut self, pod: &Pod) -> bool {
        let Some(uid) = pod.metadata.uid.as_ref() else {
            return false;
        };
        self.unclaim(uid);
        self.pods.remove(uid).is_some()
    }

    /// Drops the endpoint claim of pod `uid` as known so far.
    fn unclaim(&mut self, uid: &str) {
        let Some(old) = self.pods.get(uid) else {
            return;
        };
        if let Some(ip) = old.endpoint_ip() {
            let name = old.pod_name();
            if let Some(set) = self.claims.get_mut(&ip) {
                if let Ok(at) = set.binary_search(&name) {
                    set.remove(at);
                }
                if set.is_empty() {
                    self.claims.remove(&ip);
                }
            }
            self.dirty_ips.insert(ip);
        }
    }

    /// Replaces every pod with a re-list; whether anything differs.
    pub fn replace_pods(&mut self, listed: &[Pod]) -> bool {
        let uids: BTreeSet<&str> = listed
            .iter()
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|uid| !uids.contains(uid.as_str()))
            .cloned()
            .collect();
        let mut changed = !gone.is_empty();
        for uid in gone {
            self.unclaim(&uid);
            self.pods.remove(&uid);
        }
        for pod in listed {
            changed |= self.apply_pod(pod);
        }
        changed
    }

    /// Number of pods known (all nodes).
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    pub fn apply_namespace(&mut self, ns: &Namespace) -> bool {
        let Some(name) = &ns.metadata.name else {
            return false;
        };
        let labels = ns.metadata.labels.clone().unwrap_or_default();
        if self.namespaces.get(name) == Some(&labels) {
            return false;
        }
        self.namespaces.insert(name.clone(), labels);
        true
    }

    pub fn delete_namespace(&mut self, ns: &Namespace) -> bool {
        ns.metadata
            .name
            .as_ref()
            .is_some_and(|name| self.namespaces.remove(name).is_some())
    }

    /// Whether the policy changed. The document holds only the policy fields, so a status write (ours or
    /// another controller's) leaves it equal.
    pub fn apply_policy(&mut self, obj: PolicyObject) -> bool {
        if self.policies.get(&obj.key) == Some(&obj) {
            return false;
        }
        self.policies.insert(obj.key.clone(), obj);
        true
    }

    pub fn delete_policy(&mut self, key: &PolicyKey) -> bool {
        self.last_good.remove(key);
        self.policies.remove(key).is_some()
    }

    /// Drops every object of one watched kind (a re-list replaces them all).
    pub fn clear_policies(&mut self, kind: PolicyKind) {
        self.policies.retain(|k, _| k.kind != kind);
    }

    /// The endpoint of pod `pod` (labels as Cilium gives them; a cgroup only for this node's pods).
    fn endpoint_of(
        &self,
        pod: &PodInfo,
        ip: IpAddr,
        node: &str,
        cgroup_of: &dyn Fn(&PodInfo) -> Option<PathBuf>,
    ) -> Endpoint {
        let mut labels: BTreeMap<String, String> = pod.labels.iter().cloned().collect();
        labels.insert(SERVICE_ACCOUNT_LABEL.into(), pod.service_account.clone());
        if let Some(ns_labels) = self.namespaces.get(&pod.namespace) {
            for (k, v) in ns_labels {
                labels.insert(format!("{NAMESPACE_LABELS_PREFIX}{k}"), v.clone());
            }
        }
        let local = pod.node.as_deref() == Some(node);
        Endpoint {
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            labels,
            ip,
            cgroup: if local {
                cgroup_of(pod).map(|p| p.display().to_string())
            } else {
                None
            },
            named_ports: pod.named_ports.iter().cloned().collect(),
            node: pod.node.clone(),
        }
    }

    /// The endpoints: every running pod with an IP; `cgroup_of` gives the enrollment cgroup of this node's pods.
    pub fn endpoints(
        &self,
        node: &str,
        cgroup_of: &dyn Fn(&PodInfo) -> Option<PathBuf>,
    ) -> (Vec<Endpoint>, Vec<String>) {
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        for (ip, claims) in &self.claims {
            match self.claim_winner(*ip, claims, &mut skipped) {
                Some(pod) => out.push(self.endpoint_of(pod, *ip, node, cgroup_of)),
                None => continue,
            }
        }
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        (out, skipped)
    }

    /// The pod holding `ip`: the first claim by namespace/name, so a duplicate IP (a pod being replaced) resolves
    /// the same way every time; the others are reported in `skipped`.
    fn claim_winner(
        &self,
        ip: IpAddr,
        claims: &[PodName],
        skipped: &mut Vec<String>,
    ) -> Option<&PodInfo> {
        let mut pods = claims.iter().filter_map(|(_, _, uid)| self.pods.get(uid));
        let winner = pods.next();
        for pod in pods {
            skipped.push(format!(
                "{}/{}: IP {ip} is already used by another pod",
                pod.namespace, pod.name
            ));
        }
        winner
    }

    /// What the reconciler does after a burst of events: patch the endpoints of what changed, recompile the
    /// policy objects that changed, and assemble the engine. (`skipped_pods` lists pods this rebuild left out.)
    pub fn rebuild(
        &mut self,
        node: &str,
        cgroup_of: &dyn Fn(&PodInfo) -> Option<PathBuf>,
    ) -> Result<Compiled, PolicyError> {
        let skipped = self.sync_endpoints(node, cgroup_of);
        let outcomes = self.sync_policies();
        Ok(Compiled {
            engine: self.live.engine(),
            endpoints: self.live.endpoints().clone(),
            outcomes,
            skipped_pods: skipped,
        })
    }

    /// Patches the live engine's endpoints at every IP a change touched.
    fn sync_endpoints(
        &mut self,
        node: &str,
        cgroup_of: &dyn Fn(&PodInfo) -> Option<PathBuf>,
    ) -> Vec<String> {
        if self.synced_namespaces != self.namespaces {
            // Namespace labels are on every endpoint of the namespace.
            let changed: BTreeSet<&String> = self
                .namespaces
                .keys()
                .chain(self.synced_namespaces.keys())
                .filter(|ns| self.namespaces.get(*ns) != self.synced_namespaces.get(*ns))
                .collect();
            let ips = self
                .pods
                .values()
                .filter(|p| changed.contains(&p.namespace))
                .filter_map(PodInfo::endpoint_ip);
            self.dirty_ips.extend(ips);
            self.synced_namespaces = self.namespaces.clone();
        }
        let mut dirty = std::mem::take(&mut self.dirty_ips);
        dirty.append(&mut self.awaiting_cgroup);
        let mut skipped = Vec::new();
        let mut wanted = Vec::new();
        for ip in dirty {
            let pod = self
                .claims
                .get(&ip)
                .and_then(|claims| self.claim_winner(ip, claims, &mut skipped));
            let endpoint = pod.map(|pod| self.endpoint_of(pod, ip, node, cgroup_of));
            let current = self.live.endpoints().by_ip(ip);
            if current == endpoint.as_ref() {
                self.note_cgroup(endpoint.as_ref(), node);
                continue;
            }
            // Removals first: a pod that moved to another IP frees its name for its new endpoint.
            if let Some(old) = current {
                let (ns, name) = (old.namespace.clone(), old.name.clone());
                self.live.remove_endpoint(&ns, &name);
            }
            wanted.extend(endpoint);
        }
        for endpoint in wanted {
            self.note_cgroup(Some(&endpoint), node);
            let holder = self
                .live
                .endpoints()
                .by_name(&endpoint.namespace, &endpoint.name)
                .filter(|e| e.ip != endpoint.ip);
            if let Some(holder) = holder {
                skipped.push(format!(
                    "{}: IP {} left out, the name is already an endpoint at {}",
                    endpoint.key(),
                    endpoint.ip,
                    holder.ip
                ));
                continue;
            }
            if let Err(e) = self.live.upsert_endpoint(endpoint) {
                skipped.push(e.to_string());
            }
        }
        skipped
    }

    /// Remembers a local endpoint still without its cgroup, to look it up again.
    fn note_cgroup(&mut self, endpoint: Option<&Endpoint>, node: &str) {
        if let Some(ep) = endpoint
            && ep.node.as_deref() == Some(node)
            && ep.cgroup.is_none()
        {
            self.awaiting_cgroup.insert(ep.ip);
        }
    }

    /// Validates each changed policy object on its own and compiles it (falling back to the object's last valid
    /// version when its new one is invalid); says per object what happened.
    fn sync_policies(&mut self) -> BTreeMap<PolicyKey, PolicyOutcome> {
        let policies = &self.policies;
        self.parsed.retain(|k, _| policies.contains_key(k));
        self.last_good.retain(|k, _| policies.contains_key(k));
        self.live.retain_policies(|k| policies.contains_key(k));
        let mut outcomes = BTreeMap::new();
        for (key, obj) in &self.policies {
            let parsed = match self.parsed.get_mut(key) {
                Some(p) if p.document == obj.document => p,
                _ => {
                    let load = load_policies(&key.source_name(), &obj.document);
                    let parsed = ParsedPolicy {
                        document: obj.document.clone(),
                        policies: Arc::new(load.policies),
                        errors: load.errors,
                    };
                    self.parsed.insert(key.clone(), parsed);
                    self.parsed.get_mut(key).expect("inserted")
                }
            };
            if parsed.errors.is_empty() {
                match self.live.set_policies(key.clone(), parsed.policies.clone()) {
                    Ok(()) => {
                        let known = self.last_good.get(key);
                        if !known.is_some_and(|p| Arc::ptr_eq(p, &parsed.policies)) {
                            self.last_good.insert(key.clone(), parsed.policies.clone());
                        }
                        outcomes.insert(key.clone(), PolicyOutcome::Accepted);
                        continue;
                    }
                    // Compilation errors do not depend on the endpoints: remember them, never compile again.
                    Err(errors) => parsed.errors = errors,
                }
            }
            let errors = parsed.errors.iter().map(ToString::to_string).collect();
            let enforcing_previous = match self.last_good.get(key) {
                Some(previous) => {
                    let ok = self
                        .live
                        .set_policies(key.clone(), previous.clone())
                        .is_ok();
                    if !ok {
                        // A last-good version that itself fails to compile now must not come back.
                        self.last_good.remove(key);
                    }
                    ok
                }
                None => false,
            };
            if !enforcing_previous {
                self.live.remove_policies(key);
            }
            outcomes.insert(
                key.clone(),
                PolicyOutcome::Rejected {
                    errors,
                    enforcing_previous,
                },
            );
        }
        outcomes
    }

    /// Compiles the policies against exactly `endpoints` (replacing the table the rebuilds keep): each policy
    /// object validated and compiled on its own, as [`ClusterState::rebuild`] does.
    pub fn compile(&mut self, endpoints: Vec<Endpoint>) -> Result<Compiled, PolicyError> {
        let keys: BTreeSet<(String, String)> = endpoints
            .iter()
            .map(|e| (e.namespace.clone(), e.name.clone()))
            .collect();
        let stale: Vec<(String, String)> = self
            .live
            .endpoints()
            .iter()
            .map(|e| (e.namespace.clone(), e.name.clone()))
            .filter(|k| !keys.contains(k))
            .collect();
        for (ns, name) in stale {
            self.live.remove_endpoint(&ns, &name);
        }
        for endpoint in endpoints {
            self.live.upsert_endpoint(endpoint)?;
        }
        let outcomes = self.sync_policies();
        Ok(Compiled {
            engine: self.live.engine(),
            endpoints: self.live.endpoints().clone(),
            outcomes,
            skipped_pods: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_model::{Decision, Protocol};
    use std::time::SystemTime;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    fn api_pod(uid: &str, ns: &str, name: &str, ip: &str, node: &str, app: &str) -> Pod {
        pod(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": {"app": app}},
            "spec": {"nodeName": node, "serviceAccountName": app, "containers": [
                {"name": "c", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip, "qosClass": "Burstable"}
        }))
    }

    fn cnp(ns: &str, name: &str, spec: serde_json::Value) -> PolicyObject {
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": ns, "generation": 1},
            "spec": spec,
        }))
        .unwrap();
        PolicyObject::from_cilium(PolicyKind::CiliumNetworkPolicy, &obj).unwrap()
    }

    fn l7_spec(path: &str) -> serde_json::Value {
        serde_json::json!({
            "endpointSelector": {"matchLabels": {"app": "api"}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}],
                "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}],
                    "rules": {"http": [{"method": "GET", "path": path}]}}]}]
        })
    }

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        s.apply_pod(&api_pod(
            "u-web",
            "shop",
            "web",
            "10.1.0.10",
            "node-a",
            "web",
        ));
        s.apply_pod(&api_pod(
            "u-api",
            "shop",
            "api",
            "10.1.0.20",
            "node-b",
            "api",
        ));
        s
    }

    fn no_cgroup(_: &PodInfo) -> Option<PathBuf> {
        None
    }

    fn http_allowed(c: &Compiled, path: &str) -> bool {
        let flow = c.engine.flow(
            "10.1.0.10".parse().unwrap(),
            "10.1.0.20".parse().unwrap(),
            8080,
            Protocol::Tcp,
        );
        let cache = policy_model::FqdnCache::default();
        let conn = c.engine.connection(&flow, &cache, SystemTime::now());
        if conn.decision == Decision::Deny {
            return false;
        }
        let req = policy_model::HttpRequest {
            method: "GET",
            path,
            host: "api",
            headers: &[],
        };
        c.engine.http(&flow, &req).decision == Decision::Allow
    }

    #[test]
    fn pods_become_endpoints_with_cilium_labels_and_only_local_cgroups() {
        let mut s = state();
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {"team": "payments"}}
        }))
        .unwrap();
        s.apply_namespace(&ns);
        let cg = |p: &PodInfo| Some(PathBuf::from(format!("/cg/{}", p.uid)));
        let (eps, skipped) = s.endpoints("node-a", &cg);
        assert!(skipped.is_empty());
        assert_eq!(eps.len(), 2);
        let api = eps.iter().find(|e| e.name == "api").unwrap();
        let web = eps.iter().find(|e| e.name == "web").unwrap();
        assert_eq!(web.cgroup.as_deref(), Some("/cg/u-web"));
        assert_eq!(
            api.cgroup, None,
            "pods of other nodes are never enrolled here"
        );
        assert_eq!(api.labels["app"], "api");
        assert_eq!(api.labels[SERVICE_ACCOUNT_LABEL], "api");
        assert_eq!(
            api.labels["io.cilium.k8s.namespace.labels.team"],
            "payments"
        );
        assert_eq!(api.named_ports["http"], 8080);
    }

    #[test]
    fn host_network_terminal_ipless_and_duplicate_ip_pods_are_not_endpoints() {
        let mut s = state();
        s.apply_pod(&pod(serde_json::json!({
            "metadata": {"name": "hostnet", "namespace": "kube-system", "uid": "u-h"},
            "spec": {"hostNetwork": true, "containers": []},
            "status": {"podIP": "192.168.0.1"}
        })));
        s.apply_pod(&pod(serde_json::json!({
            "metadata": {"name": "done", "namespace": "shop", "uid": "u-d"},
            "spec": {"containers": []},
            "status": {"podIP": "10.1.0.99", "phase": "Succeeded"}
        })));
        s.apply_pod(&pod(serde_json::json!({
            "metadata": {"name": "pending", "namespace": "shop", "uid": "u-p"},
            "spec": {"containers": []},
            "status": {"phase": "Pending"}
        })));
        s.apply_pod(&api_pod(
            "u-zz",
            "shop",
            "zz-new",
            "10.1.0.20",
            "node-b",
            "api",
        ));
        let (eps, skipped) = s.endpoints("node-a", &no_cgroup);
        let names: Vec<_> = eps.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["api", "web"]);
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].starts_with("shop/zz-new: IP 10.1.0.20"));
        // Deleting the pod removes it.
        s.delete_pod(&api_pod(
            "u-web",
            "shop",
            "web",
            "10.1.0.10",
            "node-a",
            "web",
        ));
        assert_eq!(s.endpoints("node-a", &no_cgroup).0.len(), 1);
    }

    #[test]
    fn valid_policy_is_accepted_and_enforced() {
        let mut s = state();
        s.apply_policy(cnp("shop", "api-l7", l7_spec("/v1/.*")));
        let (eps, _) = s.endpoints("node-a", &no_cgroup);
        let c = s.compile(eps).unwrap();
        assert_eq!(c.outcomes.values().next(), Some(&PolicyOutcome::Accepted));
        assert!(http_allowed(&c, "/v1/items"));
        assert!(!http_allowed(&c, "/admin"));
    }

    #[test]
    fn invalid_update_is_rejected_alone_and_the_previous_version_keeps_enforcing() {
        let mut s = state();
        s.apply_policy(cnp("shop", "api-l7", l7_spec("/v1/.*")));
        s.apply_policy(cnp(
            "shop",
            "other",
            serde_json::json!({"endpointSelector": {"matchLabels": {"app": "batch"}}, "egress": [{}]}),
        ));
        let (eps, _) = s.endpoints("node-a", &no_cgroup);
        s.compile(eps.clone()).unwrap();
        // A broken regex in the update.
        s.apply_policy(cnp("shop", "api-l7", l7_spec("/v2/(")));
        let c = s.compile(eps.clone()).unwrap();
        let key = PolicyKey {
            kind: PolicyKind::CiliumNetworkPolicy,
            namespace: Some("shop".into()),
            name: "api-l7".into(),
        };
        match &c.outcomes[&key] {
            PolicyOutcome::Rejected {
                errors,
                enforcing_previous,
            } => {
                assert!(*enforcing_previous);
                assert!(
                    errors[0].starts_with("CiliumNetworkPolicy/shop/api-l7: document 0: spec.ingress[0].toPorts[0].rules.http[0].path: invalid regex"),
                    "{errors:?}"
                );
            }
            other => panic!("expected rejection, got {other:?}"),
        }
        assert_eq!(c.outcomes.len(), 2);
        assert!(c.outcomes.values().any(|o| *o == PolicyOutcome::Accepted));
        assert!(
            http_allowed(&c, "/v1/items"),
            "the previous version enforces"
        );
        assert!(!http_allowed(&c, "/v2/items"));
        // A brand-new invalid object has nothing to fall back to.
        s.apply_policy(cnp("shop", "fresh", l7_spec("(")));
        let c = s.compile(eps.clone()).unwrap();
        let fresh = c
            .outcomes
            .iter()
            .find(|(k, _)| k.name == "fresh")
            .unwrap()
            .1;
        assert!(matches!(
            fresh,
            PolicyOutcome::Rejected {
                enforcing_previous: false,
                ..
            }
        ));
        // Deleting the object forgets its last good version too.
        s.delete_policy(&key);
        let c = s.compile(eps).unwrap();
        assert!(!c.outcomes.contains_key(&key));
        assert!(http_allowed(&c, "/admin"), "no policy selects api any more");
    }

    #[test]
    fn network_policy_objects_load_as_network_policies() {
        let np: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny-all", "namespace": "shop", "generation": 3},
            "spec": {"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Ingress"]}
        }))
        .unwrap();
        let obj = PolicyObject::from_network_policy(&np).unwrap();
        assert_eq!(obj.key.source_name(), "NetworkPolicy/shop/deny-all");
        assert_eq!(obj.generation, Some(3));
        let mut s = state();
        s.apply_policy(obj);
        let (eps, _) = s.endpoints("node-a", &no_cgroup);
        let c = s.compile(eps).unwrap();
        assert!(!http_allowed(&c, "/v1/items"), "ingress to api is denied");
    }

    #[test]
    fn status_only_changes_do_not_change_the_document() {
        let a = cnp("shop", "p", l7_spec("/x"));
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "p", "namespace": "shop", "generation": 1, "resourceVersion": "99"},
            "spec": l7_spec("/x"),
            "status": {"conditions": [{"type": "Valid", "status": "True"}]}
        }))
        .unwrap();
        let b = PolicyObject::from_cilium(PolicyKind::CiliumNetworkPolicy, &obj).unwrap();
        assert_eq!(a, b);
    }

    /// xorshift64, so a failing sequence names its seed.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    const IPS: usize = 8;

    fn random_pod(rng: &mut Rng) -> Pod {
        let n = rng.below(10);
        let phase = if rng.below(8) == 0 {
            "Succeeded"
        } else {
            "Running"
        };
        pod(serde_json::json!({
            "metadata": {"name": format!("p{n}"), "namespace": (["shop", "bank"][n % 2]), "uid": format!("u{n}"),
                         "labels": {"app": (["web", "api", "db"][rng.below(3)])}},
            "spec": {"nodeName": (["node-a", "node-b"][rng.below(2)]), "serviceAccountName": "sa",
                     "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": phase, "podIP": format!("10.2.0.{}", rng.below(IPS))}
        }))
    }

    fn random_namespace(rng: &mut Rng) -> Namespace {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": (["shop", "bank"][rng.below(2)]), "labels": {"team": (["a", "b"][rng.below(2)])}}
        }))
        .unwrap()
    }

    fn random_policy(rng: &mut Rng) -> PolicyObject {
        let app = |rng: &mut Rng| ["web", "api", "db"][rng.below(3)];
        let peer = match rng.below(3) {
            0 => serde_json::json!({"matchLabels": {"app": app(rng)}}),
            1 => {
                serde_json::json!({"matchLabels": {"io.cilium.k8s.namespace.labels.team": (["a", "b"][rng.below(2)])}})
            }
            _ => serde_json::json!({}),
        };
        // Valid only: an invalid update keeps the previous version enforcing, which a fresh build has no record of.
        let path = ["/v1/.*", "/v2/.*"][rng.below(2)];
        cnp(
            ["shop", "bank"][rng.below(2)],
            &format!("pol{}", rng.below(4)),
            serde_json::json!({
                "endpointSelector": {"matchLabels": {"app": app(rng)}},
                "ingress": [{"fromEndpoints": [peer],
                    "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}],
                        "rules": {"http": [{"method": "GET", "path": path}]}}]}]
            }),
        )
    }

    /// What an engine says for every address pair, identity numbers replaced by labels.
    fn verdicts(c: &Compiled) -> Vec<String> {
        let cache = policy_model::FqdnCache::default();
        let addrs: Vec<IpAddr> = (0..=IPS)
            .map(|i| format!("10.2.0.{i}").parse().unwrap())
            .collect();
        let mut out = Vec::new();
        for &src in &addrs {
            for &dst in &addrs {
                let flow = c.engine.flow(src, dst, 8080, Protocol::Tcp);
                let conn = c.engine.connection(&flow, &cache, SystemTime::UNIX_EPOCH);
                let req = policy_model::HttpRequest {
                    method: "GET",
                    path: "/v1/x",
                    host: "h",
                    headers: &[],
                };
                let http = c.engine.http(&flow, &req);
                out.push(format!(
                    "{src}->{dst} {:?} {:?} {:?} src={:?} dst={:?}",
                    conn.decision,
                    http.decision,
                    http.reason.to_string().split(" identity").next(),
                    c.endpoints
                        .by_ip(src)
                        .map(|e| (e.key(), &e.labels, &e.cgroup)),
                    c.endpoints
                        .by_ip(dst)
                        .map(|e| (e.key(), &e.labels, &e.cgroup)),
                ));
            }
        }
        out
    }

    #[test]
    fn rebuilds_that_patch_enforce_what_a_fresh_build_of_the_same_objects_enforces() {
        let cg = |p: &PodInfo| (p.name != "p3").then(|| PathBuf::from(format!("/cg/{}", p.uid)));
        for seed in 1..=10u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut s = ClusterState::default();
            let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
            for step in 0..40 {
                match rng.below(8) {
                    0..=2 => {
                        let p = random_pod(&mut rng);
                        s.apply_pod(&p);
                        pods.insert(p.metadata.uid.clone().unwrap(), p);
                    }
                    3 => {
                        let uid = format!("u{}", rng.below(10));
                        if let Some(p) = pods.remove(&uid) {
                            s.delete_pod(&p);
                        }
                    }
                    4 => {
                        s.apply_namespace(&random_namespace(&mut rng));
                    }
                    5 | 6 => {
                        s.apply_policy(random_policy(&mut rng));
                    }
                    _ => {
                        let key = random_policy(&mut rng).key;
                        s.delete_policy(&key);
                    }
                }
                let patched = s.rebuild("node-a", &cg).unwrap();
                let mut fresh = ClusterState {
                    namespaces: s.namespaces.clone(),
                    policies: s.policies.clone(),
                    ..ClusterState::default()
                };
                fresh.replace_pods(&pods.values().cloned().collect::<Vec<_>>());
                let full = fresh.rebuild("node-a", &cg).unwrap();
                assert_eq!(
                    verdicts(&patched),
                    verdicts(&full),
                    "seed {seed} step {step}"
                );
                let accepted = |c: &Compiled| -> Vec<(String, bool)> {
                    c.outcomes
                        .iter()
                        .map(|(k, o)| (k.source_name(), *o == PolicyOutcome::Accepted))
                        .collect()
                };
                assert_eq!(
                    accepted(&patched),
                    accepted(&full),
                    "seed {seed} step {step}"
                );
            }
        }
    }
}
