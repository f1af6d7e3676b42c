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
use tollgate::kubernetes::{self, api, lease, watch::NodeScope};
use tollgate::policy_source::PolicyStore;

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
        lease: None,
    }
}

fn web() -> SocketAddr {
    "10.1.0.10:40000".parse().unwrap()
}

fn api_pod_addr(ip: &str) -> SocketAddr {
    format!("{ip}:8080").parse().unwrap()
}

fn allowed(policy: &PolicyStore, to: &str, path: &str) -> bool {
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

/// Every Cilium policy document in the repository: the conformance cases, the deploy examples, the API fixtures.
fn repository_cilium_policies() -> Vec<(String, Value)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = Vec::new();
    let mut add = |origin: String, doc: Value| {
        if doc["apiVersion"] == "cilium.io/v2" {
            out.push((origin, doc));
        }
    };
    let mut conformance: Vec<_> = std::fs::read_dir(root.join("policy-model/conformance"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    conformance.sort();
    for path in conformance {
        let file: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for (i, doc) in file["policies"].as_array().unwrap().iter().enumerate() {
            add(format!("{}: policies[{i}]", path.display()), doc.clone());
        }
    }
    let examples = root.join("deploy/examples/demo.yaml");
    let text = std::fs::read_to_string(&examples).unwrap();
    for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let doc: Value = serde::Deserialize::deserialize(de).unwrap();
        add(format!("{}: document {i}", examples.display()), doc);
    }
    let fixture = fixtures().join("ciliumnetworkpolicies.json");
    let docs: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&fixture).unwrap()).unwrap();
    for (i, doc) in docs.into_iter().enumerate() {
        add(format!("{}: [{i}]", fixture.display()), doc);
    }
    out
}

/// Creates `doc` through the API (as `kubectl apply` does for a new object), returning the server's error text.
async fn create(client: &kube::Client, doc: &Value) -> Result<(), String> {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
    let kind = doc["kind"].as_str().unwrap();
    let plural = format!("{}s", kind.to_ascii_lowercase()).replace("policys", "policies");
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("cilium.io", "v2", kind), &plural);
    let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
    let api: kube::Api<DynamicObject> = match doc["metadata"]["namespace"].as_str() {
        Some(ns) => kube::Api::namespaced_with(client.clone(), ns, &ar),
        None if kind == "CiliumNetworkPolicy" => {
            kube::Api::namespaced_with(client.clone(), "default", &ar)
        }
        None => kube::Api::all_with(client.clone(), &ar),
    };
    api.create(&PostParams::default(), &obj)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_in_the_repository_applies_through_the_crds() {
    let server = ApiServer::start(&fixtures()).await;
    let client = server.client();
    let policies = repository_cilium_policies();
    assert!(
        policies.len() >= 20,
        "found only {} policies",
        policies.len()
    );
    let mut rejected = Vec::new();
    for (i, (origin, doc)) in policies.iter().enumerate() {
        let mut doc = doc.clone();
        // Unique names: the same name appears in several case files.
        doc["metadata"]["name"] = format!("p{i}").into();
        if let Err(e) = create(&client, &doc).await {
            rejected.push(format!("{origin}: {e}"));
        }
    }
    assert!(
        rejected.is_empty(),
        "the CRDs refuse policies the loader accepts:\n{}",
        rejected.join("\n")
    );
    assert!(
        policies
            .iter()
            .any(|(_, d)| d["specs"].is_array() && d["specs"][0]["labels"].is_array()),
        "the repository's policies include one written as `specs` with `labels`"
    );

    // The schema is strict, as the real API server is with kubectl's default field validation: a typo is refused.
    let typo = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                      "metadata": {"name": "typo", "namespace": "shop"},
                      "spec": {"endpointSelector": {}, "ingres": [{}]}});
    let err = create(&client, &typo).await.unwrap_err();
    assert!(
        err.contains(r#"unknown field \"spec.ingres\""#)
            || err.contains("unknown field \"spec.ingres\""),
        "{err}"
    );
    let bad_type = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                          "metadata": {"name": "bad-type", "namespace": "shop"},
                          "spec": {"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": true}]}]}]}});
    let err = create(&client, &bad_type).await.unwrap_err();
    assert!(
        err.contains("spec.ingress[0].toPorts[0].ports[0].port"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cilium_fields_tollgate_does_not_enforce_are_accepted_by_the_api_and_rejected_by_the_loader()
 {
    let server = ApiServer::start(&fixtures()).await;
    let host_policy = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": "host-fw"},
        "spec": {"nodeSelector": {"matchLabels": {"role": "worker"}},
                 "ingress": [{"fromEntities": ["cluster"], "icmps": [{"fields": [{"type": 8, "family": "IPv4"}]}]}],
                 "egress": [{"toServices": [{"k8sService": {"serviceName": "db", "namespace": "shop"}}],
                             "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}],
                                          "terminatingTLS": {"secret": {"name": "tls", "namespace": "shop"}},
                                          "serverNames": ["db.shop"]}]}]}});
    create(&server.client(), &host_policy)
        .await
        .expect("the API accepts what Cilium's CRDs accept");
    let load = policy_model::load_policies("host-fw", &host_policy.to_string());
    assert_eq!(load.policies.len(), 0);
    let err = load.errors[0].to_string();
    assert!(
        err.contains("spec.nodeSelector") && err.contains("not enforced by tollgate"),
        "{err}"
    );
}

/// Log lines of the current thread's tasks (the test runs on a current-thread runtime, so every watcher's).
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> LogBuffer {
        self.clone()
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).to_string()
    }
}

fn requests_since(server: &ApiServer, from: usize) -> Vec<String> {
    server.requests.lock().unwrap()[from..]
        .iter()
        .map(|(_, pq)| pq.clone())
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn after_an_outage_every_watch_is_back_within_seconds_and_a_410_is_no_warning() {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _log_guard = tracing::subscriber::set_default(subscriber);
    let server = ApiServer::start(&fixtures()).await;
    let client = api::client(server.config(), "node-a").unwrap();
    let (source, reconciler) = kubernetes::start_with_client(client, scope())
        .await
        .expect("initial sync");
    let policy = Arc::new(source);
    tokio::spawn(kubernetes::watch::run_updates(reconciler, policy.clone()));

    // The routine 410: history compacted, watches cut; the re-list repairs a missed delete, and nothing warns.
    server.delete(PODS, "shop/web-7d9f8c6b5-x2k4p", false);
    server.compact_and_cut();
    eventually("re-list after 410 removes the missed pod", || {
        policy
            .current()
            .endpoints
            .by_ip("10.1.0.10".parse().unwrap())
            .is_none()
    })
    .await;
    let text = logs.text();
    assert!(text.contains("410"), "the 410 is logged at debug: {text}");
    assert!(
        !text.contains(" WARN "),
        "a 410 is routine, not a warning: {text}"
    );

    // An outage long enough for several failed reconnects of every watcher; a policy changes meanwhile.
    server.stop();
    tokio::time::sleep(Duration::from_secs(12)).await;
    // The web pod comes back while the API server is down (its requests are then allowed again).
    let text = std::fs::read_to_string(fixtures().join("pods.json")).unwrap();
    let web_back = serde_json::from_str::<Vec<Value>>(&text).unwrap().remove(0);
    server.put(PODS, web_back);
    let seen = server.requests.lock().unwrap().len();
    let back = Instant::now();
    server.restart().await;
    let collections = [
        PODS,
        "/api/v1/namespaces",
        NPS,
        CNPS,
        "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies",
    ];
    let reconnected = || {
        let reqs = requests_since(&server, seen);
        collections
            .iter()
            .all(|c| reqs.iter().any(|pq| pq.starts_with(&format!("{c}?"))))
    };
    while !(reconnected() && allowed(&policy, "10.1.0.20", "/v1/items")) {
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "after the outage: reconnected {}, change enforced {}; requests {:?}; logs {}",
            reconnected(),
            allowed(&policy, "10.1.0.20", "/v1/items"),
            requests_since(&server, seen),
            logs.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = back.elapsed();
    eprintln!("every watcher back and the change enforced {took:?} after the API server");
    // The retry delay is capped at 1 s (plus jitter below it); 3 s leaves room for a loaded machine.
    assert!(
        took < Duration::from_secs(3),
        "watchers came back {took:?} after the API server did: {:?}",
        requests_since(&server, seen)
    );

    let agents = server.user_agents.lock().unwrap().clone();
    let expected = format!("tollgate/{} (node-a)", env!("CARGO_PKG_VERSION"));
    assert!(
        agents.iter().all(|a| *a == expected),
        "every request carries {expected:?}: {:?}",
        agents.iter().collect::<std::collections::BTreeSet<_>>()
    );
}

fn valid_condition_of(server: &ApiServer) -> Option<Value> {
    server.get(CNPS, "shop/api-l7")?["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Valid")
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_applied_beside_other_conditions_and_not_rewritten_when_unchanged() {
    let server = ApiServer::start(&fixtures()).await;
    // Another controller's condition on the policy before tollgate starts.
    let mut cnp = server.get(CNPS, "shop/api-l7").unwrap();
    cnp["status"] = json!({"conditions": [{"type": "Audited", "status": "True", "reason": "Reviewed",
                                           "lastTransitionTime": "2026-11-01T00:00:00Z"}]});
    server.put(CNPS, cnp);
    let (source, reconciler) = kubernetes::start_with_client(server.client(), scope())
        .await
        .expect("initial sync");
    tokio::spawn(kubernetes::watch::run_updates(reconciler, Arc::new(source)));
    eventually("Valid=True on api-l7", || {
        valid_condition_of(&server).is_some_and(|c| c["status"] == "True")
    })
    .await;
    let obj = server.get(CNPS, "shop/api-l7").unwrap();
    let conditions = obj["status"]["conditions"].as_array().unwrap();
    assert!(
        conditions.iter().any(|c| c["type"] == "Audited"),
        "another writer's condition survives: {conditions:?}"
    );
    assert!(
        server
            .patch_types
            .lock()
            .unwrap()
            .iter()
            .all(|t| t == "application/apply-patch+yaml"),
        "status is written by server-side apply"
    );
    assert!(
        server
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _)| m == "PATCH")
            .all(|(_, pq)| pq.contains("fieldManager=tollgate") && pq.contains("force=true"))
    );
    let since = valid_condition_of(&server).unwrap()["lastTransitionTime"].clone();
    let writes = server.patches.lock().unwrap().len();
    assert_eq!(writes, 1, "one write for one policy");

    // A second daemon (a restart) over the same objects writes nothing: the objects already show its verdict.
    let (_source2, reconciler2) = kubernetes::start_with_client(server.client(), scope())
        .await
        .expect("second sync");
    drop(reconciler2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        server.patches.lock().unwrap().len(),
        writes,
        "a restart rewrites no status"
    );

    // A new, still valid generation: written (observedGeneration), the transition time unchanged.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    server.put(CNPS, cnp_with_path(&server, "/v2/.*"));
    eventually("Valid for generation 2", || {
        valid_condition_of(&server).is_some_and(|c| c["observedGeneration"] == 2)
    })
    .await;
    let c = valid_condition_of(&server).unwrap();
    assert_eq!(
        c["lastTransitionTime"], since,
        "status unchanged: no transition"
    );
    let obj = server.get(CNPS, "shop/api-l7").unwrap();
    assert!(
        obj["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Audited")
    );
}

/// Leader-election timing scaled down from client-go's 15/10/2 s so the takeover test runs in seconds; the ratios
/// (renew deadline < lease duration, several retries per renew deadline) are client-go's.
fn quick_lease_timing() -> lease::LeaseTiming {
    lease::LeaseTiming {
        lease_duration: Duration::from_millis(3000),
        renew_deadline: Duration::from_millis(2000),
        retry_period: Duration::from_millis(400),
    }
}

fn elected_scope(node: &str) -> NodeScope {
    NodeScope {
        node_name: node.into(),
        lease: Some(lease::LeaseSettings {
            namespace: "kube-system".into(),
            identity: format!("tollgate-{node}"),
            timing: quick_lease_timing(),
        }),
        ..scope()
    }
}

fn lease_holder(server: &ApiServer) -> Option<String> {
    server.stored_lease("kube-system", lease::LEASE_NAME)?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

/// The User-Agents of the status writes (PATCH) so far.
fn status_writers(server: &ApiServer) -> Vec<String> {
    let reqs = server.requests.lock().unwrap().clone();
    let agents = server.user_agents.lock().unwrap().clone();
    reqs.iter()
        .zip(agents)
        .filter(|((m, pq), _)| m == "PATCH" && pq.contains("/status"))
        .map(|(_, a)| a)
        .collect()
}

async fn daemon(server: &ApiServer, node: &str) -> (Arc<PolicyStore>, tokio::task::JoinHandle<()>) {
    let client = api::client(server.config(), node).unwrap();
    let (source, reconciler) = kubernetes::start_with_client(client, elected_scope(node))
        .await
        .expect("initial sync");
    let policy = Arc::new(source);
    let task = tokio::spawn(kubernetes::watch::run_updates(reconciler, policy.clone()));
    (policy, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_daemon_holds_the_lease_and_writes_status_and_another_takes_over_when_it_dies() {
    let server = ApiServer::start(&fixtures()).await;
    let timing = quick_lease_timing();
    let (_policy_a, task_a) = daemon(&server, "node-a").await;
    eventually("node-a holds the status Lease", || {
        lease_holder(&server).as_deref() == Some("tollgate-node-a")
    })
    .await;
    let (policy_b, task_b) = daemon(&server, "node-b").await;
    eventually("Valid=True on api-l7", || {
        valid_condition_of(&server).is_some_and(|c| c["status"] == "True")
    })
    .await;
    // A new generation: both daemons compile it, only the holder writes.
    server.put(CNPS, cnp_with_path(&server, "/v2/.*"));
    eventually("Valid for generation 2", || {
        valid_condition_of(&server).is_some_and(|c| c["observedGeneration"] == 2)
    })
    .await;
    eventually("node-b enforces generation 2 too", || {
        allowed(&policy_b, "10.1.0.20", "/v2/x")
    })
    .await;
    tokio::time::sleep(timing.retry_period * 3).await;
    let agent_a = api::user_agent("node-a");
    let writers = status_writers(&server);
    assert_eq!(writers.len(), 2, "one write per generation: {writers:?}");
    assert!(
        writers.iter().all(|w| *w == agent_a),
        "only the holder writes: {writers:?}"
    );
    assert_eq!(
        lease_holder(&server).as_deref(),
        Some("tollgate-node-a"),
        "the holder keeps renewing"
    );

    // The holder dies without releasing the lease (a crash): node-b takes over once the lease has run out.
    task_a.abort();
    let killed = Instant::now();
    eventually("node-b takes the Lease", || {
        lease_holder(&server).as_deref() == Some("tollgate-node-b")
    })
    .await;
    let took = killed.elapsed();
    assert!(
        took <= timing.lease_duration + timing.retry_period * 2 + Duration::from_millis(500),
        "takeover after {took:?}, lease {:?}",
        timing.lease_duration
    );
    server.put(CNPS, cnp_with_path(&server, "/v3/.*"));
    eventually("Valid for generation 3, written by node-b", || {
        valid_condition_of(&server).is_some_and(|c| c["observedGeneration"] == 3)
    })
    .await;
    let writers = status_writers(&server);
    assert_eq!(
        writers.last().map(String::as_str),
        Some(api::user_agent("node-b").as_str())
    );
    assert_eq!(writers.len(), 3, "{writers:?}");
    assert_requests_within_rbac(&server);
    task_b.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_writes_and_updates_that_change_nothing_compile_nothing() {
    let server = ApiServer::start(&fixtures()).await;
    let (source, reconciler) = kubernetes::start_with_client(server.client(), scope())
        .await
        .expect("initial sync");
    let policy = Arc::new(source);
    tokio::spawn(kubernetes::watch::run_updates(reconciler, policy.clone()));
    eventually("Valid=True on api-l7", || {
        valid_condition_of(&server).is_some_and(|c| c["status"] == "True")
    })
    .await;
    let quiet = Duration::from_millis(700);
    tokio::time::sleep(quiet).await;
    let generation = policy.current().generation;
    assert_eq!(
        generation, 1,
        "our own status write (watched back as MODIFIED) compiled nothing"
    );

    // Another controller's condition on the policy: status only.
    let mut cnp = server.get(CNPS, "shop/api-l7").unwrap();
    cnp["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "Audited", "status": "True"}));
    server.put(CNPS, cnp);
    // A pod's status changes in ways the policy never reads (a container restarted, a condition flipped).
    let mut api_pod = server.get(PODS, "shop/api-5c6d7e8f9-q8w7e").unwrap();
    api_pod["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    api_pod["status"]["containerStatuses"] = json!([{"name": "api", "restartCount": 3, "ready": false,
        "image": "api:1", "imageID": "", "started": true}]);
    server.put(PODS, api_pod.clone());
    // A re-list that finds exactly what we had.
    server.compact_and_cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        policy.current().generation,
        generation,
        "status-only updates and an unchanged re-list compiled nothing"
    );

    // A change the policy reads: exactly one new generation.
    api_pod["metadata"]["labels"]["tier"] = "backend".into();
    server.put(PODS, api_pod);
    eventually("a label change compiles", || {
        policy.current().generation > generation
    })
    .await;
    tokio::time::sleep(quiet).await;
    assert_eq!(policy.current().generation, generation + 1);
    assert!(
        policy
            .current()
            .endpoints
            .by_ip("10.1.0.20".parse().unwrap())
            .is_some_and(|ep| ep.labels.get("tier").map(String::as_str) == Some("backend"))
    );
}
