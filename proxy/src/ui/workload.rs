//! How the UI names the things it draws (pure): the workload a flow endpoint belongs to, and the path template an
//! HTTP URL is counted under.

use serde::Serialize;

use crate::hubble::flow::Endpoint;

/// The node's reserved identity (Cilium's number, as the policy engine allocates it).
const IDENTITY_HOST: u32 = 1;

/// What kind of node a workload is on the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// Pods of one workload in one namespace.
    Pod,
    /// A DNS name outside the cluster (the destination's `destination_names`).
    Fqdn,
    /// The node itself.
    Host,
    /// Anything else outside the cluster.
    World,
}

/// A node of the service map: `namespace/workload` for pods, `fqdn:name`, `reserved:host`, `reserved:world`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct WorkloadId(pub String);

/// The workload an endpoint belongs to, with what the map shows about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub id: WorkloadId,
    pub kind: WorkloadKind,
    pub namespace: Option<String>,
    /// Display name: the workload, the DNS name, `host` or `world`.
    pub name: String,
}

/// The workload of `ep`; `names` are the flow's DNS names for that side (`destination_names`), used for
/// endpoints outside the cluster.
pub fn workload_of(ep: Option<&Endpoint>, names: &[String]) -> Workload {
    let pod = ep.filter(|e| !e.pod_name.is_empty());
    if let Some(e) = pod {
        let name = app_label(&e.labels).unwrap_or_else(|| strip_pod_suffix(&e.pod_name));
        return Workload {
            id: WorkloadId(format!("{}/{name}", e.namespace)),
            kind: WorkloadKind::Pod,
            namespace: Some(e.namespace.clone()),
            name,
        };
    }
    let identity = ep.map_or(0, |e| e.identity);
    let host = identity == IDENTITY_HOST
        || ep.is_some_and(|e| e.labels.iter().any(|l| l == "reserved:host"));
    if host {
        return reserved(WorkloadKind::Host, "host");
    }
    if let Some(name) = names.first() {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        return Workload {
            id: WorkloadId(format!("fqdn:{name}")),
            kind: WorkloadKind::Fqdn,
            namespace: None,
            name,
        };
    }
    reserved(WorkloadKind::World, "world")
}

fn reserved(kind: WorkloadKind, name: &str) -> Workload {
    Workload {
        id: WorkloadId(format!("reserved:{name}")),
        kind,
        namespace: None,
        name: name.to_string(),
    }
}

/// `app` / `app.kubernetes.io/name` / `k8s-app` labels name a workload the way its owners do.
fn app_label(labels: &[String]) -> Option<String> {
    const KEYS: [&str; 3] = ["app.kubernetes.io/name", "app", "k8s-app"];
    KEYS.iter().find_map(|key| {
        labels.iter().find_map(|l| {
            let kv = l.split_once(':').map_or(l.as_str(), |(_, kv)| kv);
            let (k, v) = kv.split_once('=')?;
            (k == *key && !v.is_empty()).then(|| v.to_string())
        })
    })
}

/// `api-7d9f8c6b5-x2kqz` (Deployment) -> `api`; `agent-x2kqz` (DaemonSet) -> `agent`; `db-0` stays (StatefulSet
/// pods are distinct members).
fn strip_pod_suffix(pod: &str) -> String {
    let parts: Vec<&str> = pod.split('-').collect();
    let random = |s: &str, lens: &[usize]| {
        lens.contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes().any(|b| b.is_ascii_digit())
    };
    let n = parts.len();
    if n >= 3 && random(parts[n - 1], &[5]) && random(parts[n - 2], &[8, 9, 10]) {
        return parts[..n - 2].join("-");
    }
    if n >= 2 && random(parts[n - 1], &[5]) {
        return parts[..n - 1].join("-");
    }
    pod.to_string()
}

/// The path an HTTP endpoint is counted under: the query dropped, and segments that look like identifiers
/// (numbers, UUIDs, long hex) replaced by `{id}`, so `/products/42` and `/products/7` are one endpoint.
pub fn path_template(url: &str) -> String {
    let path = match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            rest.find('/').map_or("/", |j| &rest[j..])
        }
        None => url,
    };
    let path = path.split(['?', '#']).next().unwrap_or("/");
    let segments: Vec<&str> = path
        .split('/')
        .map(|s| if is_identifier(s) { "{id}" } else { s })
        .collect();
    let t = segments.join("/");
    if t.is_empty() { "/".into() } else { t }
}

fn is_identifier(s: &str) -> bool {
    if s.is_empty() {
        return false;
    }
    let digits = s.bytes().all(|b| b.is_ascii_digit());
    let hex = s.len() >= 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let uuid = s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
        });
    digits || hex || uuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, labels: &[&str]) -> Endpoint {
        Endpoint {
            namespace: ns.into(),
            pod_name: name.into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            identity: 300,
            ..Default::default()
        }
    }

    #[test]
    fn pods_group_by_app_label_then_owner_name() {
        let w = workload_of(
            Some(&pod("shop", "api-7d9f8c6b5-x2kqz", &["k8s:app=catalog"])),
            &[],
        );
        assert_eq!(w.id.0, "shop/catalog");
        assert_eq!(w.kind, WorkloadKind::Pod);
        let w = workload_of(Some(&pod("shop", "api-7d9f8c6b5-x2kqz", &[])), &[]);
        assert_eq!(w.id.0, "shop/api");
        let w = workload_of(Some(&pod("kube-system", "agent-x2kq9", &[])), &[]);
        assert_eq!(w.name, "agent");
        assert_eq!(workload_of(Some(&pod("db", "pg-0", &[])), &[]).name, "pg-0");
        assert_eq!(
            workload_of(Some(&pod("a", "frontend", &[])), &[]).name,
            "frontend"
        );
    }

    #[test]
    fn outside_the_cluster() {
        let world = Endpoint {
            identity: 2,
            labels: vec!["reserved:world".into()],
            ..Default::default()
        };
        assert_eq!(workload_of(Some(&world), &[]).id.0, "reserved:world");
        let w = workload_of(Some(&world), &["API.Example.com.".into()]);
        assert_eq!(
            (w.id.0.as_str(), w.kind),
            ("fqdn:api.example.com", WorkloadKind::Fqdn)
        );
        let host = Endpoint {
            identity: 1,
            ..Default::default()
        };
        assert_eq!(workload_of(Some(&host), &[]).kind, WorkloadKind::Host);
        assert_eq!(workload_of(None, &[]).kind, WorkloadKind::World);
    }

    #[test]
    fn templates_collapse_identifiers() {
        assert_eq!(
            path_template("http://10.0.5.20:8080/products/42?x=1"),
            "/products/{id}"
        );
        assert_eq!(path_template("/cart"), "/cart");
        assert_eq!(path_template("http://api"), "/");
        assert_eq!(
            path_template("/u/3f2c1a9e-1b2c-4d5e-8f90-a1b2c3d4e5f6/orders/deadbeefdeadbeef"),
            "/u/{id}/orders/{id}"
        );
        assert_eq!(path_template("/books/v2/entries"), "/books/v2/entries");
    }
}
