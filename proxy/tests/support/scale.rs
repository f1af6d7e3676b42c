//! A synthetic cluster for the scale test and the `kubernetes_scale` bench, shaped like the fixtures (real API
//! object shapes): `namespaces` namespaces, pods spread over them and over 100 nodes, one Deployment-like `app` label
//! per `PODS_PER_APP` pods, and one CiliumNetworkPolicy per app: the app's pods accept GET /v1/.* on 8080 from the
//! app 100 further along in the same namespace (the ring of apps closes per namespace).

use std::net::Ipv4Addr;

use serde_json::{Value, json};

pub const NAMESPACES: usize = 100;
pub const NODES: usize = 100;

/// The app a pod belongs to: `pods_per_app` consecutive pod numbers share one per namespace.
pub fn app_of(pod: usize, apps: usize) -> usize {
    pod % apps
}

pub fn namespace_of_app(app: usize) -> String {
    format!("ns-{}", app % NAMESPACES)
}

pub fn pod_ip(pod: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 0)) + pod as u32)
}

pub fn namespace(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": format!("ns-{i}"), "uid": format!("00000000-0000-4000-8000-{i:012}"),
                        "labels": {"kubernetes.io/metadata.name": format!("ns-{i}"), "team": format!("team-{}", i % 10)}},
           "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
}

/// Pod number `i` of a cluster with `apps` apps.
pub fn pod(i: usize, apps: usize) -> Value {
    let app = app_of(i, apps);
    let ns = namespace_of_app(app);
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": format!("app-{app}-{i}"), "namespace": ns,
                        "uid": format!("10000000-0000-4000-8000-{i:012}"),
                        "creationTimestamp": "2026-11-21T10:00:00Z",
                        "labels": {"app": format!("app-{app}"), "tier": "backend"}},
           "spec": {"nodeName": format!("node-{}", i % NODES), "serviceAccountName": format!("app-{app}"),
                    "restartPolicy": "Always",
                    "containers": [{"name": "main", "image": "registry.example/app:1",
                                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
           "status": {"phase": "Running", "podIP": pod_ip(i).to_string(), "podIPs": [{"ip": pod_ip(i).to_string()}],
                      "hostIP": "192.168.10.11", "qosClass": "BestEffort", "startTime": "2026-11-21T10:00:01Z"}})
}

/// The policy of app `app` allowing GET `path` from app `app + 100` (same namespace).
pub fn policy(app: usize, apps: usize, path: &str, generation: i64) -> Value {
    let ns = namespace_of_app(app);
    let peer = (app + NAMESPACES) % apps;
    json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
           "metadata": {"name": format!("app-{app}"), "namespace": ns, "generation": generation,
                        "uid": format!("20000000-0000-4000-8000-{app:012}"),
                        "creationTimestamp": "2026-11-21T11:00:00Z"},
           "spec": {"endpointSelector": {"matchLabels": {"app": format!("app-{app}")}},
                    "ingress": [{"fromEndpoints": [{"matchLabels": {"app": format!("app-{peer}")}}],
                                 "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}],
                                              "rules": {"http": [{"method": "GET", "path": path}]}}]}]}})
}

/// The pod numbers of the app that `app`'s policy admits.
pub fn peer_app(app: usize, apps: usize) -> usize {
    (app + NAMESPACES) % apps
}

/// Writes the cluster as the test API server's fixture files: pods `0..pods` of a cluster of `apps` apps (one
/// policy each), every namespace, and no other policy kinds.
pub fn write_fixtures(dir: &std::path::Path, pods: usize, apps: usize) {
    let write = |name: &str, items: Vec<Value>| {
        std::fs::write(dir.join(name), Value::Array(items).to_string()).unwrap()
    };
    write("namespaces.json", (0..NAMESPACES).map(namespace).collect());
    write("pods.json", (0..pods).map(|i| pod(i, apps)).collect());
    write(
        "ciliumnetworkpolicies.json",
        (0..apps).map(|a| policy(a, apps, "/v1/.*", 1)).collect(),
    );
    write("networkpolicies.json", Vec::new());
    write("ciliumclusterwidenetworkpolicies.json", Vec::new());
}
