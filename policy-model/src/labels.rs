//! Label keys, label sets and selectors (`matchLabels` / `matchExpressions`).
//!
//! Keys are normalised by dropping the `k8s:` and `any:` source prefixes, so `k8s:app` and `app` are the same key.
//! `reserved:` keys are kept: they name the reserved identities (`reserved:host`, `reserved:world`).

use std::collections::BTreeMap;

/// The label every endpoint carries with its namespace.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// The label carrying a pod's service account (Cilium's key), which is also its SPIFFE identity.
pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";

/// Normalise a label key: strip `k8s:` / `any:` prefixes.
pub fn normalize_key(key: &str) -> &str {
    key.strip_prefix("k8s:")
        .or_else(|| key.strip_prefix("any:"))
        .unwrap_or(key)
}

/// The full label set of an identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSet(pub BTreeMap<String, String>);

impl LabelSet {
    pub(crate) fn for_endpoint(namespace: &str, labels: &BTreeMap<String, String>) -> Self {
        let mut m: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (normalize_key(k).to_string(), v.clone()))
            .collect();
        m.insert(NAMESPACE_LABEL.to_string(), namespace.to_string());
        LabelSet(m)
    }

    pub(crate) fn reserved(what: &str) -> Self {
        let mut m = BTreeMap::new();
        m.insert(format!("reserved:{what}"), String::new());
        LabelSet(m)
    }

    fn is_reserved(&self) -> bool {
        self.0.keys().any(|k| k.starts_with("reserved:"))
    }
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn key(&self) -> &str {
        match self {
            Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::DoesNotExist(k) => k,
        }
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            // Kubernetes semantics: NotIn also matches when the key is absent.
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A compiled label selector: all requirements must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    /// True if the selector mentions the namespace label (then no implicit namespace is added).
    pub fn names_namespace(&self) -> bool {
        self.requirements.iter().any(|r| r.key() == NAMESPACE_LABEL)
    }

    /// Restrict to one namespace.
    pub fn in_namespace(mut self, ns: &str) -> Self {
        self.requirements.push(Requirement::In(
            NAMESPACE_LABEL.to_string(),
            vec![ns.to_string()],
        ));
        self
    }

    fn mentions_reserved(&self) -> bool {
        self.requirements
            .iter()
            .any(|r| r.key().starts_with("reserved:"))
    }

    /// Does the selector select this label set? Reserved identities (host, world) are only selected by
    /// selectors that name a `reserved:` key, so `{}` means "every endpoint", never "the world".
    pub fn matches(&self, set: &LabelSet) -> bool {
        if set.is_reserved() && !self.mentions_reserved() {
            return false;
        }
        self.requirements.iter().all(|r| r.matches(&set.0))
    }
}
