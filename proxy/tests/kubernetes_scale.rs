//! Kubernetes mode at scale, through the test API server: 300 policies and 1,000 pods in the initial list, then
//! 1,000 more pods streamed as watch events, a policy edit and a pod relabel. (300 policies keep the debug build's
//! start-up compilation short on the busy 2-core machine; the bench covers 1,000 policies and 20,000 pods in
//! release.) Streamed pods arrive in bursts, each an incremental rebuild. Asserts correctness (every endpoint
//! present, every policy accepted with its status written once, verdicts of sampled pairs), not timing: timing is
//! `benches/kubernetes_scale.rs`. Sized to run in seconds on 2 busy cores with a debug build.

// This test uses only part of the test API server.
#[allow(dead_code)]
mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::api_server::ApiServer;
use support::scale;
use tollgate::decision::{Downstream, RequestDecision, decide_request};
use tollgate::kubernetes::{self, watch::NodeScope};
use tollgate::policy_source::PolicyStore;

const APPS: usize = 300;
const LISTED_PODS: usize = 1_000;
const STREAMED_PODS: usize = 1_000;
const PODS: &str = "/api/v1/pods";
const CNPS: &str = "/apis/cilium.io/v2/ciliumnetworkpolicies";

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

/// Whether pod `from` may GET `path` on pod `to` port 8080 in the current snapshot.
fn allowed(policy: &PolicyStore, from: usize, to: usize, path: &str) -> bool {
    let src = SocketAddr::new(scale::pod_ip(from).into(), 40000);
    let dst = SocketAddr::new(scale::pod_ip(to).into(), 8080);
    matches!(
        decide_request(
            &policy.current(),
            &Downstream::plain(src),
            dst,
            "GET",
            path,
            "svc",
            &[]
        ),
        RequestDecision::Forward { .. }
    )
}

/// A pod of `app` among the first `pods` (pods of an app are numbered app, app + APPS, ...).
fn pod_of(app: usize, nth: usize) -> usize {
    app + nth * APPS
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_policies_and_two_thousand_pods_stream_through_and_enforce() {
    let dir = tempfile::tempdir().unwrap();
    scale::write_fixtures(dir.path(), LISTED_PODS, APPS);
    let server = ApiServer::start(dir.path()).await;
    let scope = NodeScope {
        node_name: "node-0".into(),
        cgroup_root: PathBuf::from("/nonexistent-cgroup-root"),
        lease: None,
    };
    let (source, reconciler) = kubernetes::start_with_client(server.client(), scope)
        .await
        .expect("initial sync");
    let policy = Arc::new(source);
    tokio::spawn(kubernetes::watch::run_updates(reconciler, policy.clone()));
    assert_eq!(policy.current().endpoints.iter().count(), LISTED_PODS);

    // Stream the second half of the pods as watch events.
    for i in LISTED_PODS..LISTED_PODS + STREAMED_PODS {
        server.put(PODS, scale::pod(i, APPS));
    }
    eventually("every streamed pod is an endpoint", || {
        policy.current().endpoints.iter().count() == LISTED_PODS + STREAMED_PODS
    })
    .await;

    // Every policy accepted, its status written exactly once.
    eventually("Valid=True written for every policy", || {
        server.patches.lock().unwrap().len() >= APPS
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let patches = server.patches.lock().unwrap().clone();
    assert_eq!(patches.len(), APPS, "one status write per policy");
    assert!(
        patches
            .iter()
            .all(|(_, b)| b["status"]["conditions"][0]["status"] == "True")
    );

    // Sampled verdicts: the admitted peer app may GET /v1/, another app of the same namespace may not, nor may
    // the admitted peer use another path. Both pods of each sampled app, the streamed one included.
    for app in (0..APPS).step_by(37) {
        let peer = scale::peer_app(app, APPS);
        let other = (app + 2 * scale::NAMESPACES) % APPS;
        assert_ne!(other, peer);
        for nth in 0..2 {
            let to = pod_of(app, nth);
            assert!(
                allowed(&policy, pod_of(peer, 1 - nth), to, "/v1/items"),
                "app-{peer} -> app-{app}"
            );
            assert!(!allowed(&policy, pod_of(peer, nth), to, "/admin"));
            assert!(
                !allowed(&policy, pod_of(other, nth), to, "/v1/items"),
                "app-{other} -> app-{app}"
            );
        }
    }

    // A policy edit reaches enforcement; the others are untouched.
    let generation = policy.current().generation;
    server.put(CNPS, scale::policy(5, APPS, "/v2/.*", 2));
    eventually("the edited policy enforces", || {
        allowed(&policy, pod_of(scale::peer_app(5, APPS), 0), 5, "/v2/x")
    })
    .await;
    assert!(!allowed(
        &policy,
        pod_of(scale::peer_app(5, APPS), 0),
        5,
        "/v1/x"
    ));
    assert!(allowed(
        &policy,
        pod_of(scale::peer_app(6, APPS), 0),
        6,
        "/v1/x"
    ));
    assert!(policy.current().generation > generation);

    // A pod moves to another app of its namespace: it leaves the old app's peers and joins the new one's.
    let old_app = scale::peer_app(9, APPS);
    let new_app = scale::peer_app(old_app, APPS);
    let moved = pod_of(old_app, 1);
    let mut pod = scale::pod(moved, APPS);
    pod["metadata"]["labels"]["app"] = format!("app-{new_app}").into();
    server.put(PODS, pod);
    eventually("the relabelled pod is selected as its new app", || {
        !allowed(&policy, moved, 9, "/v1/x")
            && allowed(
                &policy,
                pod_of(scale::peer_app(new_app, APPS), 0),
                moved,
                "/v1/x",
            )
    })
    .await;
    assert!(allowed(
        &policy,
        pod_of(scale::peer_app(9, APPS), 0),
        9,
        "/v1/x"
    ));
    assert_eq!(server.patches.lock().unwrap().len(), APPS + 1);
}
