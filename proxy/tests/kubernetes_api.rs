//! Kubernetes mode against a test API server serving real-shaped API objects (tests/fixtures/kubernetes): initial
//! list, policy add/modify/delete, pod churn, an invalid policy getting a rejected status while its previous
//! version keeps enforcing, 500s on list, a compacted resourceVersion (410) forcing a re-list that repairs a
//! missed delete, and every request the daemon made being one the RBAC table grants.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::api_server::ApiServer;
use tollgate::decision::{RequestDecision, decide_request};
use tollgate::kubernetes::{self, api, watch::NodeScope};
use tollgate::policy_source::PolicySource;

const PODS: &str = "/api/v1/pods";
const CNPS: &str = "/apis/cilium.io/v2/ciliumnetworkpolicies";
const NPS: &str = "/apis/networking.k8s.io/v1/networkpolicies";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubernetes")
}

fn scope() -> NodeScope {
    NodeScope {
        node_name: "node-a".into(),
        cgroup_root: PathBuf::from("/nonexistent-cgroup-root"),
    }
}

fn web() -> SocketAddr {
    "10.1.0.10:40000".parse().unwrap()
}

fn api_pod_addr(ip: &str) -> SocketAddr {
    format!("{ip}:8080").parse().unwrap()
}

fn allowed(policy: &PolicySource, to: &str, path: &str) -> bool {
    let snap = policy.current();
    matches!(
        decide_request(
            &snap,
            &tollgate::decision::Downstream::plain(web()),
            api_pod_addr(to),
            "GET",
            path,
            "api",
            &[]
        ),
        RequestDecision::Forward { .. }
    )
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn last_condition(server: &ApiServer, suffix: &str) -> Option<Value> {
    server
        .patches
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(p, _)| p.ends_with(suffix))
        .map(|(_, b)| b["status"]["conditions"][0].clone())
}

fn cnp_with_path(server: &ApiServer, path_regex: &str) -> Value {
    let mut obj = server.get(CNPS, "shop/api-l7").unwrap();
    obj["spec"]["ingress"][0]["toPorts"][0]["rules"]["http"][0]["path"] = path_regex.into();
    let g = obj["metadata"]["generation"].as_i64().unwrap_or(1);
    obj["metadata"]["generation"] = (g + 1).into();
    obj
}

fn assert_requests_within_rbac(server: &ApiServer) {
    let reqs = server.requests.lock().unwrap().clone();
    assert!(!reqs.is_empty());
    for (method, pq) in reqs {
        let (group, resource, verb) = api::rbac_of_request(&method, &pq)
            .unwrap_or_else(|| panic!("unexpected request {method} {pq}"));
        assert!(
            api::allowed(&group, &resource, &verb),
            "{method} {pq} is {verb} on {group}/{resource}, which the API usage table (and so RBAC) does not grant"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_pods_and_status_follow_the_api_server() {
    let server = ApiServer::start(&fixtures()).await;
    let (source, reconciler) = kubernetes::start_with_client(server.client(), scope())
        .await
        .expect("initial sync");
    let policy = Arc::new(source);
    tokio::spawn(kubernetes::watch::run_updates(reconciler, policy.clone()));

    // Watch start: the initial list is enforced; hostNetwork pods are not endpoints.
    let snap = policy.current();
    assert_eq!(snap.endpoints.iter().count(), 2);
    assert!(allowed(&policy, "10.1.0.20", "/v1/items"));
    assert!(!allowed(&policy, "10.1.0.20", "/admin"));
    let web_ep = snap.endpoints.by_ip("10.1.0.10".parse().unwrap()).unwrap();
    assert_eq!(
        web_ep.labels["io.cilium.k8s.namespace.labels.team"],
        "payments"
    );
    assert_eq!(web_ep.labels["io.cilium.k8s.policy.serviceaccount"], "web");
    drop(snap);
    eventually("Valid=True status on api-l7", || {
        last_condition(
            &server,
            "/namespaces/shop/ciliumnetworkpolicies/api-l7/status",
        )
        .is_some_and(|c| c["status"] == "True" && c["observedGeneration"] == 1)
    })
    .await;

    // Modify: a valid change applies to new decisions.
    server.put(CNPS, cnp_with_path(&server, "/v2/.*"));
    eventually("the modified policy enforcing", || {
        allowed(&policy, "10.1.0.20", "/v2/items") && !allowed(&policy, "10.1.0.20", "/v1/items")
    })
    .await;

    // An invalid update: rejected with the field path in status; the previous version keeps enforcing.
    let gen_before = policy.current().generation;
    server.put(CNPS, cnp_with_path(&server, "/v3/("));
    eventually("Valid=False status naming the field", || {
        last_condition(&server, "/ciliumnetworkpolicies/api-l7/status")
            .is_some_and(|c| c["status"] == "False")
    })
    .await;
    let c = last_condition(&server, "/ciliumnetworkpolicies/api-l7/status").unwrap();
    let msg = c["message"].as_str().unwrap();
    assert!(
        msg.starts_with("CiliumNetworkPolicy/shop/api-l7: document 0: spec.ingress[0].toPorts[0].rules.http[0].path: invalid regex"),
        "{msg}"
    );
    assert!(
        msg.ends_with("the previous valid version of this policy keeps enforcing"),
        "{msg}"
    );
    assert_eq!(c["reason"], "Invalid");
    assert!(policy.current().generation >= gen_before);
    assert!(
        allowed(&policy, "10.1.0.20", "/v2/items"),
        "previous version still enforces"
    );
    assert!(!allowed(&policy, "10.1.0.20", "/v3/items"));

    // Pod churn: a second api replica appears (selected by the same policy), web is replaced by a new pod.
    let mut api2 = server.get(PODS, "shop/api-5c6d7e8f9-q8w7e").unwrap();
    api2["metadata"]["name"] = "api-5c6d7e8f9-zz9yy".into();
    api2["metadata"]["uid"] = "b7e1d2c3-0000-4111-8222-333344445555".into();
    api2["status"]["podIP"] = "10.1.0.21".into();
    server.put(PODS, api2);
    eventually(
        "the new replica is an endpoint with the policy applied",
        || {
            policy
                .current()
                .endpoints
                .by_ip("10.1.0.21".parse().unwrap())
                .is_some()
                && allowed(&policy, "10.1.0.21", "/v2/x")
                && !allowed(&policy, "10.1.0.21", "/admin")
        },
    )
    .await;
    server.delete(PODS, "shop/web-7d9f8c6b5-x2k4p", true);
    eventually(
        "web is gone: its IP is now world, not selected by fromEndpoints",
        || {
            policy
                .current()
                .endpoints
                .by_ip("10.1.0.10".parse().unwrap())
                .is_none()
                && !allowed(&policy, "10.1.0.20", "/v2/items")
        },
    )
    .await;

    // A NetworkPolicy appears and is deleted again.
    // Put web back first so the NetworkPolicy has something to deny.
    let text = std::fs::read_to_string(fixtures().join("pods.json")).unwrap();
    let web_back = serde_json::from_str::<Vec<Value>>(&text).unwrap().remove(0);
    server.put(PODS, web_back);
    eventually("web is back", || allowed(&policy, "10.1.0.20", "/v2/items")).await;
    server.put(
        NPS,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "deny-web", "namespace": "shop", "uid": "0a0b0c0d-1111-4222-8333-000000000001",
                            "generation": 1, "creationTimestamp": "2026-11-22T08:00:00Z"},
               "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"]}}),
    );
    eventually("NetworkPolicy denies web's egress", || {
        !allowed(&policy, "10.1.0.20", "/v2/items")
    })
    .await;
    server.delete(NPS, "shop/deny-web", true);
    eventually("NetworkPolicy deleted", || {
        allowed(&policy, "10.1.0.20", "/v2/items")
    })
    .await;

    // Delete the Cilium policy: nothing selects api any more.
    server.delete(CNPS, "shop/api-l7", true);
    eventually("no policy: /admin allowed", || {
        allowed(&policy, "10.1.0.20", "/admin")
    })
    .await;

    assert_requests_within_rbac(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_and_a_stale_resource_version_lead_to_a_relist() {
    let server = ApiServer::start(&fixtures()).await;
    // The first two pod lists fail: the watcher backs off and retries; the sync completes once they succeed.
    server.fail_lists(PODS, 2);
    let (source, reconciler) = tokio::time::timeout(
        Duration::from_secs(90),
        kubernetes::start_with_client(server.client(), scope()),
    )
    .await
    .expect("initial sync despite 500s")
    .expect("initial sync");
    let policy = Arc::new(source);
    tokio::spawn(kubernetes::watch::run_updates(reconciler, policy.clone()));
    let pod_lists = |s: &ApiServer| {
        s.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, p)| m == "GET" && p.starts_with(PODS) && !p.contains("watch=true"))
            .count()
    };
    assert!(
        pod_lists(&server) >= 3,
        "two failed lists, then one that worked"
    );
    assert!(allowed(&policy, "10.1.0.20", "/v1/items"));

    // A delete the watch never reports, then history compacted and watches cut: resuming from the old
    // resourceVersion gets 410 Gone, the watcher re-lists, and the re-list repairs the missed delete.
    let lists_before = pod_lists(&server);
    server.delete(PODS, "shop/web-7d9f8c6b5-x2k4p", false);
    server.compact_and_cut();
    eventually("re-list after 410 removes the missed pod", || {
        pod_lists(&server) > lists_before
            && policy
                .current()
                .endpoints
                .by_ip("10.1.0.10".parse().unwrap())
                .is_none()
    })
    .await;
    assert!(!allowed(&policy, "10.1.0.20", "/v1/items"));

    assert_requests_within_rbac(&server);
}
