//! Workload identities: every distinct (namespace, labels) set gets one number so the datapath can carry it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

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

/// The endpoints of the node with their allocated identities.
#[derive(Debug, Clone, Default)]
pub struct EndpointTable {
    endpoints: Vec<Endpoint>,
    identities: Vec<Identity>,
    by_ip: HashMap<IpAddr, usize>,
    by_key: HashMap<String, usize>,
    labels: BTreeMap<Identity, LabelSet>,
}

impl EndpointTable {
    /// Build the table; identities are allocated from 256 in sorted (namespace, labels) order so the same
    /// input always yields the same numbers. Rejects duplicate IPs and duplicate `namespace/name`.
    pub fn new(endpoints: Vec<Endpoint>) -> Result<Self, PolicyError> {
        let mut by_ip = HashMap::new();
        let mut by_key = HashMap::new();
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
            if let Some(prev) = by_key.insert(ep.key(), i) {
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
        let mut labels = BTreeMap::new();
        let mut number: HashMap<&LabelSet, Identity> = HashMap::new();
        for (n, set) in distinct.into_iter().enumerate() {
            let id = Identity(Identity::FIRST_ALLOCATED + n as u32);
            number.insert(set, id);
            labels.insert(id, set.clone());
        }
        let identities = sets.iter().map(|s| number[s]).collect();
        labels.insert(Identity::HOST, LabelSet::reserved("host"));
        labels.insert(Identity::WORLD, LabelSet::reserved("world"));
        labels.insert(Identity::UNKNOWN, LabelSet::reserved("unknown"));
        Ok(EndpointTable {
            endpoints,
            identities,
            by_ip,
            by_key,
            labels,
        })
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
        self.by_ip.get(&ip).map(|&i| &self.endpoints[i])
    }

    /// The endpoint `namespace/name`.
    pub fn by_name(&self, namespace: &str, name: &str) -> Option<&Endpoint> {
        self.by_key
            .get(&format!("{namespace}/{name}"))
            .map(|&i| &self.endpoints[i])
    }

    /// Identity of the address: the endpoint's identity, or [`Identity::WORLD`] for any address that is not an endpoint.
    pub fn identity_of_ip(&self, ip: IpAddr) -> Identity {
        self.by_ip
            .get(&ip)
            .map(|&i| self.identities[i])
            .unwrap_or(Identity::WORLD)
    }

    /// Identity of an endpoint (computed from its namespace and labels, so it need not be in the table).
    pub fn identity_of(&self, ep: &Endpoint) -> Identity {
        if let Some(&i) = self.by_key.get(&ep.key())
            && self.endpoints[i] == *ep
        {
            return self.identities[i];
        }
        let set = LabelSet::for_endpoint(&ep.namespace, &ep.labels);
        self.labels
            .iter()
            .find(|(_, s)| **s == set)
            .map(|(id, _)| *id)
            .unwrap_or(Identity::UNKNOWN)
    }

    /// Normalised labels of an identity (endpoint labels plus `io.kubernetes.pod.namespace`, or `reserved:*`).
    pub fn labels_of(&self, id: Identity) -> Option<&BTreeMap<String, String>> {
        self.labels.get(&id).map(|s| &s.0)
    }

    /// All endpoints in input order.
    pub fn iter(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter()
    }

    /// All endpoints with their identities.
    pub fn iter_with_identity(&self) -> impl Iterator<Item = (&Endpoint, Identity)> {
        self.endpoints.iter().zip(self.identities.iter().copied())
    }

    /// Every identity known to the table (reserved ones included).
    pub fn identities(&self) -> impl Iterator<Item = Identity> + '_ {
        self.labels.keys().copied()
    }

    pub(crate) fn label_set(&self, id: Identity) -> Option<&LabelSet> {
        self.labels.get(&id)
    }

    /// The namespace of an allocated identity.
    pub fn namespace_of(&self, id: Identity) -> Option<&str> {
        self.labels
            .get(&id)
            .and_then(|s| s.0.get(labels::NAMESPACE_LABEL))
            .map(String::as_str)
    }
}
