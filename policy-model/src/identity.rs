//! Workload identities: every distinct (namespace, labels) set gets one number so the datapath can carry it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::PolicyError;
use crate::labels::{self, LabelSet};

/// A numeric security identity. Values below [`Identity::FIRST_ALLOCATED`] are reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identity(pub u32);

impl Identity {
    /// Nothing is known about the peer.
    pub const UNKNOWN: Identity = Identity(0);
    /// The node itself.
    pub const HOST: Identity = Identity(1);
    /// Any address that is not a known endpoint (outside the cluster).
    pub const WORLD: Identity = Identity(2);
    /// First identity handed to endpoints; everything below is reserved.
    pub const FIRST_ALLOCATED: u32 = 256;

    /// True for identities allocated to endpoints (not reserved).
    pub fn is_endpoint(self) -> bool {
        self.0 >= Self::FIRST_ALLOCATED
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Identity::UNKNOWN => write!(f, "0(unknown)"),
            Identity::HOST => write!(f, "1(host)"),
            Identity::WORLD => write!(f, "2(world)"),
            Identity(n) => write!(f, "{n}"),
        }
    }
}

/// A workload known to the node, exactly the conformance `endpoints:` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub ip: IpAddr,
    /// cgroup-v2 path used by the eBPF enrollment; not part of the identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Named container ports (`http: 8080`), used to resolve `port: "http"` in policies.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub named_ports: BTreeMap<String, u16>,
    /// The node the pod runs on (`spec.nodeName`); not part of the identity. The proxy carries connections to pods
    /// of other nodes through the node-to-node mTLS tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Endpoint {
    /// Convenience constructor without cgroup or named ports.
    pub fn new(name: &str, namespace: &str, labels: &[(&str, &str)], ip: IpAddr) -> Self {
        Endpoint {
            name: name.to_string(),
            namespace: namespace.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ip,
            cgroup: None,
            named_ports: BTreeMap::new(),
            node: None,
        }
    }

    /// The Kubernetes service account the pod runs as: the `io.cilium.k8s.policy.serviceaccount` label (the
    /// Kubernetes source sets it from `spec.serviceAccountName`), else `default`. Its SPIFFE ID is
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    pub fn service_account(&self) -> &str {
        self.labels
            .get(crate::labels::SERVICE_ACCOUNT_LABEL)
            .map(String::as_str)
            .unwrap_or("default")
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointFile {
    endpoints: Vec<Endpoint>,
}

/// The endpoints of the node with their allocated identities. Cheap to clone (one shared copy until patched), so
/// every compiled engine can keep the table it was compiled against.
#[derive(Debug, Clone, Default)]
pub struct EndpointTable {
    inner: Arc<TableInner>,
}

#[derive(Debug, Clone, Default)]
struct TableInner {
    endpoints: Vec<Arc<Endpoint>>,
    identities: Vec<Identity>,
    by_ip: HashMap<IpAddr, usize>,
    by_key: HashMap<Arc<str>, usize>,
    labels: BTreeMap<Identity, Arc<LabelSet>>,
    /// Allocated identities by label set, with the number of endpoints holding each.
    numbers: HashMap<Arc<LabelSet>, (Identity, usize)>,
}

/// How a patch of the table changed the set of allocated identities (the compiled policies follow these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IdentityChange {
    Added(Identity),
    /// Released, with the labels it had.
    Removed(Identity, Arc<LabelSet>),
}

impl EndpointTable {
    /// Build the table; identities are allocated from 256 in sorted (namespace, labels) order so the same
    /// input always yields the same numbers. Rejects duplicate IPs and duplicate `namespace/name`.
    pub fn new(endpoints: Vec<Endpoint>) -> Result<Self, PolicyError> {
        let mut by_ip = HashMap::new();
        let mut by_key: HashMap<Arc<str>, usize> = HashMap::new();
        for (i, ep) in endpoints.iter().enumerate() {
            if ep.name.is_empty() || ep.namespace.is_empty() {
                return Err(PolicyError::new(
                    "<endpoints>",
                    0,
                    format!("endpoints[{i}]"),
                    "name and namespace must not be empty",
                ));
            }
            if let Some(prev) = by_ip.insert(ep.ip, i) {
                return Err(PolicyError::new(
                    "<endpoints>",
                    0,
                    format!("endpoints[{i}].ip"),
                    format!(
                        "{} is already used by endpoints[{prev}] ({}); give every endpoint its own IP",
                        ep.ip,
                        endpoints[prev].key()
                    ),
                ));
            }
            if let Some(prev) = by_key.insert(ep.key().into(), i) {
                return Err(PolicyError::new(
                    "<endpoints>",
                    0,
                    format!("endpoints[{i}].name"),
                    format!("{} is already defined by endpoints[{prev}]", ep.key()),
                ));
            }
        }
        let sets: Vec<LabelSet> = endpoints
            .iter()
            .map(|ep| LabelSet::for_endpoint(&ep.namespace, &ep.labels))
            .collect();
        let distinct: BTreeSet<&LabelSet> = sets.iter().collect();
        let mut inner = TableInner {
            by_ip,
            by_key,
            ..TableInner::default()
        };
        for (n, set) in distinct.into_iter().enumerate() {
            let id = Identity(Identity::FIRST_ALLOCATED + n as u32);
            let set = Arc::new(set.clone());
            inner.numbers.insert(set.clone(), (id, 0));
            inner.labels.insert(id, set);
        }
        for set in &sets {
            let entry = inner.numbers.get_mut(set).expect("allocated above");
            entry.1 += 1;
            inner.identities.push(entry.0);
        }
        inner.endpoints = endpoints.into_iter().map(Arc::new).collect();
        inner.insert_reserved();
        Ok(EndpointTable {
            inner: Arc::new(inner),
        })
    }

    /// Adds an endpoint, or replaces the one of the same `namespace/name`. Identities are patched, never
    /// renumbered: a new label set gets the lowest free number, and an identity whose last endpoint leaves is
    /// released. Rejects an IP another endpoint holds (the table is left unchanged).
    pub(crate) fn upsert(&mut self, ep: Endpoint) -> Result<Vec<IdentityChange>, PolicyError> {
        let key = ep.key();
        if let Some(&i) = self.inner.by_ip.get(&ep.ip)
            && *self.inner.endpoints[i].key() != key
        {
            return Err(PolicyError::new(
                "<endpoints>",
                0,
                format!("{key}.ip"),
                format!(
                    "{} is already used by {}; give every endpoint its own IP",
                    ep.ip,
                    self.inner.endpoints[i].key()
                ),
            ));
        }
        if ep.name.is_empty() || ep.namespace.is_empty() {
            return Err(PolicyError::new(
                "<endpoints>",
                0,
                key,
                "name and namespace must not be empty",
            ));
        }
        if let Some(&i) = self.inner.by_key.get(key.as_str())
            && *self.inner.endpoints[i] == ep
        {
            return Ok(Vec::new());
        }
        // Acquire before releasing the old version: an endpoint keeping its labels keeps its identity.
        let set = LabelSet::for_endpoint(&ep.namespace, &ep.labels);
        let (identity, added) = Arc::make_mut(&mut self.inner).acquire(set);
        let mut changes = self.remove(&ep.namespace, &ep.name);
        if added {
            changes.push(IdentityChange::Added(identity));
        }
        let inner = Arc::make_mut(&mut self.inner);
        let i = inner.endpoints.len();
        inner.by_ip.insert(ep.ip, i);
        inner.by_key.insert(key.into(), i);
        inner.identities.push(identity);
        inner.endpoints.push(Arc::new(ep));
        Ok(changes)
    }

    /// Removes the endpoint `namespace/name` (if present); the last endpoint takes its place in the order.
    pub(crate) fn remove(&mut self, namespace: &str, name: &str) -> Vec<IdentityChange> {
        let key = format!("{namespace}/{name}");
        if !self.inner.by_key.contains_key(key.as_str()) {
            return Vec::new();
        }
        let inner = Arc::make_mut(&mut self.inner);
        let i = inner.by_key.remove(key.as_str()).expect("checked above");
        let ep = inner.endpoints.swap_remove(i);
        let identity = inner.identities.swap_remove(i);
        inner.by_ip.remove(&ep.ip);
        if let Some(moved) = inner.endpoints.get(i) {
            inner.by_ip.insert(moved.ip, i);
            inner.by_key.insert(moved.key().into(), i);
        }
        inner.release(identity).into_iter().collect()
    }

    /// Parse a file of the form `endpoints: [...]`.
    pub fn from_yaml(file_name: &str, yaml: &str) -> Result<Self, PolicyError> {
        let file: EndpointFile = serde_yaml::from_str(yaml).map_err(|e| {
            let (path, reason) = crate::error::split_serde_error(&e.to_string());
            PolicyError::new(file_name, 0, path, reason)
        })?;
        Self::new(file.endpoints).map_err(|mut e| {
            e.file = file_name.to_string();
            e
        })
    }

    /// The endpoint owning `ip`.
    pub fn by_ip(&self, ip: IpAddr) -> Option<&Endpoint> {
        self.inner
            .by_ip
            .get(&ip)
            .map(|&i| &*self.inner.endpoints[i])
    }

    /// The endpoint `namespace/name`.
    pub fn by_name(&self, namespace: &str, name: &str) -> Option<&Endpoint> {
        self.inner
            .by_key
            .get(format!("{namespace}/{name}").as_str())
            .map(|&i| &*self.inner.endpoints[i])
    }

    /// Identity of the address: the endpoint's identity, or [`Identity::WORLD`] for any address that is not an endpoint.
    pub fn identity_of_ip(&self, ip: IpAddr) -> Identity {
        self.inner
            .by_ip
            .get(&ip)
            .map(|&i| self.inner.identities[i])
            .unwrap_or(Identity::WORLD)
    }

    /// Identity of an endpoint (computed from its namespace and labels, so it need not be in the table).
    pub fn identity_of(&self, ep: &Endpoint) -> Identity {
        if let Some(&i) = self.inner.by_key.get(ep.key().as_str())
            && *self.inner.endpoints[i] == *ep
        {
            return self.inner.identities[i];
        }
        let set = LabelSet::for_endpoint(&ep.namespace, &ep.labels);
        self.inner
            .numbers
            .get(&set)
            .map(|(id, _)| *id)
            .unwrap_or(Identity::UNKNOWN)
    }

    /// Normalised labels of an identity (endpoint labels plus `io.kubernetes.pod.namespace`, or `reserved:*`).
    pub fn labels_of(&self, id: Identity) -> Option<&BTreeMap<String, String>> {
        self.inner.labels.get(&id).map(|s| &s.0)
    }

    /// All endpoints: in input order for [`EndpointTable::new`]; patches append, and a removal moves the last
    /// endpoint into the gap.
    pub fn iter(&self) -> impl Iterator<Item = &Endpoint> {
        self.inner.endpoints.iter().map(|ep| &**ep)
    }

    /// All endpoints with their identities.
    pub fn iter_with_identity(&self) -> impl Iterator<Item = (&Endpoint, Identity)> {
        self.iter().zip(self.inner.identities.iter().copied())
    }

    /// Every identity known to the table (reserved ones included).
    pub fn identities(&self) -> impl Iterator<Item = Identity> + '_ {
        self.inner.labels.keys().copied()
    }

    pub(crate) fn label_set(&self, id: Identity) -> Option<&LabelSet> {
        self.inner.labels.get(&id).map(|s| &**s)
    }

    /// The namespace of an allocated identity.
    pub fn namespace_of(&self, id: Identity) -> Option<&str> {
        self.inner
            .labels
            .get(&id)
            .and_then(|s| s.0.get(labels::NAMESPACE_LABEL))
            .map(String::as_str)
    }
}

impl TableInner {
    fn insert_reserved(&mut self) {
        for (id, what) in [
            (Identity::HOST, "host"),
            (Identity::WORLD, "world"),
            (Identity::UNKNOWN, "unknown"),
        ] {
            self.labels.insert(id, Arc::new(LabelSet::reserved(what)));
        }
    }

    /// The identity of `set`, allocating the lowest free number for a new one; whether it was allocated now.
    fn acquire(&mut self, set: LabelSet) -> (Identity, bool) {
        if let Some((id, holders)) = self.numbers.get_mut(&set) {
            *holders += 1;
            return (*id, false);
        }
        let mut next = Identity::FIRST_ALLOCATED;
        for id in self
            .labels
            .range(Identity(Identity::FIRST_ALLOCATED)..)
            .map(|(id, _)| id.0)
        {
            if id != next {
                break;
            }
            next += 1;
        }
        let id = Identity(next);
        let set = Arc::new(set);
        self.numbers.insert(set.clone(), (id, 1));
        self.labels.insert(id, set);
        (id, true)
    }

    /// One endpoint less holds `identity`; releases it (and says so) when it was the last.
    fn release(&mut self, identity: Identity) -> Option<IdentityChange> {
        let set = self.labels.get(&identity)?.clone();
        let holders = &mut self.numbers.get_mut(&set)?.1;
        *holders -= 1;
        if *holders > 0 {
            return None;
        }
        self.numbers.remove(&set);
        self.labels.remove(&identity);
        Some(IdentityChange::Removed(identity, set))
    }
}
