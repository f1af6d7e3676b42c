//! Every Kubernetes API call tollgate makes, in one table. The watchers and the status writer take their
//! resources from here, and the RBAC test checks `deploy/`'s ClusterRole grants exactly these verbs, no more.

/// The User-Agent of every request, so API server audit logs and priority-and-fairness rules can tell tollgate's
/// requests, and which node sent them, from other clients'.
pub fn user_agent(node_name: &str) -> String {
    format!("tollgate/{} ({node_name})", env!("CARGO_PKG_VERSION"))
}

/// A client for `config` whose requests carry [`user_agent`].
pub fn client(mut config: kube::Config, node_name: &str) -> Result<kube::Client, ClientError> {
    let agent = http::HeaderValue::from_str(&user_agent(node_name))
        .map_err(|_| ClientError::NodeName(node_name.to_string()))?;
    config.headers.push((http::header::USER_AGENT, agent));
    kube::Client::try_from(config).map_err(ClientError::Build)
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "node name {0:?} cannot be sent in a User-Agent header; pass the node's DNS name with --node-name"
    )]
    NodeName(String),
    #[error("building the Kubernetes API client: {0}")]
    Build(#[source] kube::Error),
}

/// One resource and the verbs used on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiUse {
    /// API group ("" for the core group).
    pub group: &'static str,
    pub version: &'static str,
    /// Plural resource name, with `/status` for the status subresource.
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    /// Cluster-wide (a ClusterRole grants it) or only in tollgate's own namespace (a Role there grants it).
    pub scope: Scope,
}

/// Where an API use is granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    OwnNamespace,
}

/// Cluster-wide list + watch of a resource (what the watchers do).
const fn watched(group: &'static str, version: &'static str, resource: &'static str) -> ApiUse {
    ApiUse {
        group,
        version,
        resource,
        verbs: &["list", "watch"],
        scope: Scope::Cluster,
    }
}

/// Cluster-wide patch of a Cilium policy kind's status subresource (the status writer).
const fn cilium_status(resource: &'static str) -> ApiUse {
    ApiUse {
        group: "cilium.io",
        version: "v2",
        resource,
        verbs: &["patch"],
        scope: Scope::Cluster,
    }
}

pub const PODS: ApiUse = watched("", "v1", "pods");
pub const NAMESPACES: ApiUse = watched("", "v1", "namespaces");
pub const NETWORK_POLICIES: ApiUse = watched("networking.k8s.io", "v1", "networkpolicies");
pub const CILIUM_NETWORK_POLICIES: ApiUse = watched("cilium.io", "v2", "ciliumnetworkpolicies");
pub const CILIUM_CLUSTERWIDE_NETWORK_POLICIES: ApiUse =
    watched("cilium.io", "v2", "ciliumclusterwidenetworkpolicies");
pub const CILIUM_NETWORK_POLICY_STATUS: ApiUse = cilium_status("ciliumnetworkpolicies/status");
pub const CILIUM_CLUSTERWIDE_NETWORK_POLICY_STATUS: ApiUse =
    cilium_status("ciliumclusterwidenetworkpolicies/status");
/// The status writer's Lease (`lease.rs`), in tollgate's own namespace only.
pub const LEASES: ApiUse = ApiUse {
    group: "coordination.k8s.io",
    version: "v1",
    resource: "leases",
    verbs: &["get", "create", "update"],
    scope: Scope::OwnNamespace,
};

/// The whole table.
pub const API_USES: &[ApiUse] = &[
    PODS,
    NAMESPACES,
    NETWORK_POLICIES,
    CILIUM_NETWORK_POLICIES,
    CILIUM_CLUSTERWIDE_NETWORK_POLICIES,
    CILIUM_NETWORK_POLICY_STATUS,
    CILIUM_CLUSTERWIDE_NETWORK_POLICY_STATUS,
    LEASES,
];

/// The (group, resource, verb) an HTTP request to the API server is, as RBAC sees it; `None` for paths outside
/// the resource API (discovery, version). Used by tests to check every request the daemon made is in the table.
pub fn rbac_of_request(method: &str, path_and_query: &str) -> Option<(String, String, String)> {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    // Strip a namespace prefix: namespaces/{ns}/{resource}/...
    let rest = match rest {
        ["namespaces", _ns, resource, tail @ ..] => {
            let mut v = vec![*resource];
            v.extend_from_slice(tail);
            v
        }
        other => other.to_vec(),
    };
    let (resource, named) = match rest.as_slice() {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => return None,
    };
    let watching = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, named, watching) {
        ("GET", _, true) => "watch",
        ("GET", false, false) => "list",
        ("GET", true, false) => "get",
        ("PATCH", _, _) => "patch",
        ("PUT", _, _) => "update",
        ("POST", _, _) => "create",
        ("DELETE", _, _) => "delete",
        _ => return None,
    };
    Some((group.to_string(), resource, verb.to_string()))
}

/// Whether the table allows this request.
pub fn allowed(group: &str, resource: &str, verb: &str) -> bool {
    API_USES
        .iter()
        .any(|u| u.group == group && u.resource == resource && u.verbs.contains(&verb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_map_to_rbac_triples() {
        let t = |m, p| rbac_of_request(m, p).map(|(g, r, v)| format!("{g}|{r}|{v}"));
        assert_eq!(
            t("GET", "/api/v1/pods?resourceVersion=0").as_deref(),
            Some("|pods|list")
        );
        assert_eq!(
            t("GET", "/api/v1/pods?watch=true&resourceVersion=7").as_deref(),
            Some("|pods|watch")
        );
        assert_eq!(
            t(
                "PATCH",
                "/apis/cilium.io/v2/namespaces/shop/ciliumnetworkpolicies/p/status"
            )
            .as_deref(),
            Some("cilium.io|ciliumnetworkpolicies/status|patch")
        );
        assert_eq!(
            t(
                "GET",
                "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies/x"
            )
            .as_deref(),
            Some("networking.k8s.io|networkpolicies|get")
        );
        assert_eq!(t("GET", "/version"), None);
    }

    #[test]
    fn user_agent_names_version_and_node() {
        assert_eq!(
            user_agent("node-a"),
            format!("tollgate/{} (node-a)", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn the_table_allows_what_it_lists_only() {
        assert!(allowed("", "pods", "watch"));
        assert!(allowed(
            "cilium.io",
            "ciliumnetworkpolicies/status",
            "patch"
        ));
        assert!(!allowed("cilium.io", "ciliumnetworkpolicies", "patch"));
        assert!(!allowed("", "pods", "get"));
        assert!(!allowed("", "secrets", "list"));
        assert!(allowed("coordination.k8s.io", "leases", "update"));
        assert!(!allowed("coordination.k8s.io", "leases", "delete"));
    }
}
