//! `tollgate relay` discovery and stream membership, in process: the DaemonSet's pods found through kube-rs
//! against the test API server (real-shaped Pod objects; namespaced list + watch with a label selector), and a
//! node added to the peers file while a followed `GetFlows` is open joining that stream, and the mTLS Observer
//! listener (node `--observer-tls-*`, relay `--tls-*`) admitting only the allowed client ID. The relay against real
//! daemons, mTLS and crashes is `tests/tests/relay_e2e.rs`.

// Shared with kubernetes_api.rs, which uses the rest of the test API server.
#[allow(dead_code)]
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::api_server::ApiServer;
use tokio_util::sync::CancellationToken;
use tollgate::flow::{FlowEndpoint, FlowLog, FlowRecord, FlowSink, Verdict};
use tollgate::hubble::observer::{
    GetFlowsRequest, GetNodesRequest, get_flows_response::ResponseTypes,
    observer_client::ObserverClient, observer_server::ObserverServer,
};
use tollgate::hubble::relay::NodeState;
use tollgate::observer::ObserverService;
use tollgate::relay::discovery::{self, PodSelector};
use tollgate::relay::peers::{Backoff, Dialer, PeerPool, PeerSpec};
use tollgate::relay::service::{MergeConfig, RelayService};

const PODS: &str = "/api/v1/pods";
const SELECTOR: &str = "app.kubernetes.io/name=tollgate";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubernetes")
}

/// A tollgate DaemonSet pod as the API server returns it.
fn daemon_pod(
    name: &str,
    namespace: &str,
    app: &str,
    node: &str,
    phase: &str,
    ip: Option<&str>,
) -> Value {
    let mut status = json!({
        "phase": phase,
        "hostIP": "192.168.1.10",
        "startTime": "2026-12-06T01:00:00Z",
        "conditions": [{"type": "Ready", "status": if phase == "Running" { "True" } else { "False" },
                        "lastTransitionTime": "2026-12-06T01:00:05Z"}],
        "qosClass": "Burstable"
    });
    if let Some(ip) = ip {
        status["podIP"] = ip.into();
        status["podIPs"] = json!([{"ip": ip}]);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace, "uid": format!("0b5c7d2e-{name}"),
            "creationTimestamp": "2026-12-06T01:00:00Z", "generateName": "tollgate-",
            "labels": {"app.kubernetes.io/name": app, "app.kubernetes.io/instance": "tollgate",
                       "controller-revision-hash": "6c9d7f8b5", "pod-template-generation": "1"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "tollgate",
                                 "uid": "5e4d3c2b-1a09-4f8e-9d7c-6b5a4f3e2d1c", "controller": true,
                                 "blockOwnerDeletion": true}]
        },
        "spec": {
            "nodeName": node, "serviceAccountName": "tollgate", "hostNetwork": false,
            "containers": [{"name": "tollgate", "image": "tollgate:0.1.0",
                            "args": ["run", "--kubernetes", "--observer-listen", "0.0.0.0:4245"],
                            "ports": [{"name": "observer", "containerPort": 4245, "protocol": "TCP"}]}]
        },
        "status": status
    })
}

async fn wait_for<T: Clone + std::fmt::Debug>(
    rx: &mut tokio::sync::watch::Receiver<T>,
    what: &str,
    ok: impl Fn(&T) -> bool,
) -> T {
    let got = match tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| ok(v))).await {
        Ok(Ok(v)) => Some(v.clone()),
        _ => None,
    };
    got.unwrap_or_else(|| panic!("timed out waiting for {what}; have {:?}", *rx.borrow()))
}

fn spec(name: &str, address: &str) -> PeerSpec {
    PeerSpec {
        name: name.into(),
        address: address.into(),
    }
}

#[tokio::test]
async fn kubernetes_discovery_follows_the_daemonsets_running_pods() {
    let server = ApiServer::start(&fixtures()).await;
    server.put(
        PODS,
        daemon_pod(
            "tollgate-7xk2p",
            "kube-system",
            "tollgate",
            "node-a",
            "Running",
            Some("10.244.0.5"),
        ),
    );
    server.put(
        PODS,
        daemon_pod(
            "tollgate-q9w8e",
            "kube-system",
            "tollgate",
            "node-b",
            "Pending",
            None,
        ),
    );
    // Same labels, other namespace; other labels, same namespace: neither is a node's tollgate.
    server.put(
        PODS,
        daemon_pod(
            "tollgate-zz111",
            "default",
            "tollgate",
            "node-c",
            "Running",
            Some("10.244.2.9"),
        ),
    );
    server.put(
        PODS,
        daemon_pod(
            "coredns-5d78c",
            "kube-system",
            "coredns",
            "node-a",
            "Running",
            Some("10.244.0.3"),
        ),
    );
    let stop = CancellationToken::new();
    let sel = PodSelector {
        namespace: "kube-system".into(),
        labels: SELECTOR.into(),
        port: 4245,
    };
    let mut rx = discovery::watch_pods(server.client(), sel, stop.clone());
    let got = wait_for(&mut rx, "node-a", |v| !v.is_empty()).await;
    assert_eq!(got, [spec("node-a", "10.244.0.5:4245")]);

    // node-b's pod starts running: it joins.
    server.put(
        PODS,
        daemon_pod(
            "tollgate-q9w8e",
            "kube-system",
            "tollgate",
            "node-b",
            "Running",
            Some("10.244.1.7"),
        ),
    );
    let got = wait_for(&mut rx, "node-b", |v| v.len() == 2).await;
    assert_eq!(
        got,
        [
            spec("node-a", "10.244.0.5:4245"),
            spec("node-b", "10.244.1.7:4245")
        ]
    );

    // node-a's pod is being deleted (terminating), then gone.
    let mut terminating = daemon_pod(
        "tollgate-7xk2p",
        "kube-system",
        "tollgate",
        "node-a",
        "Running",
        Some("10.244.0.5"),
    );
    terminating["metadata"]["deletionTimestamp"] = "2026-12-06T02:00:00Z".into();
    server.put(PODS, terminating);
    let got = wait_for(&mut rx, "node-a to leave", |v| v.len() == 1).await;
    assert_eq!(got, [spec("node-b", "10.244.1.7:4245")]);
    server.delete(PODS, "kube-system/tollgate-7xk2p", true);

    // Only the namespace's pods, by label selector (least privilege: a namespaced Role).
    let requests = server.requests.lock().unwrap().clone();
    assert!(
        requests.iter().all(|(m, p)| m == "GET"
            && p.starts_with("/api/v1/namespaces/kube-system/pods?")
            && p.contains("labelSelector=app.kubernetes.io%2Fname%3Dtollgate")),
        "{requests:#?}"
    );
    assert!(
        requests.iter().any(|(_, p)| p.contains("watch=true")),
        "{requests:#?}"
    );
    stop.cancel();
}

/// A node's Observer on loopback, plain, over `flows`.
async fn node(name: &str, flows: Arc<FlowLog>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = ObserverService::new(flows, name).with_address(addr);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ObserverServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

/// One record that the observer sends as exactly one flow (an ERROR verdict has no policy-verdict event).
fn record(port: u16) -> FlowRecord {
    let a: SocketAddr = format!("10.0.0.1:{port}").parse().unwrap();
    let b: SocketAddr = "10.0.0.2:8080".parse().unwrap();
    FlowRecord::new(
        Verdict::Error,
        FlowEndpoint::new(a, 256),
        FlowEndpoint::new(b, 257),
        "TCP",
    )
}

#[tokio::test]
async fn a_node_added_to_the_peers_file_joins_an_open_follow_stream() {
    let (f1, f2) = (
        Arc::new(FlowLog::new(100, FlowSink::None).unwrap()),
        Arc::new(FlowLog::new(100, FlowSink::None).unwrap()),
    );
    let (a1, a2) = (node("n1", f1.clone()).await, node("n2", f2.clone()).await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("peers");
    std::fs::write(&file, format!("# the nodes\nn1={a1}\n")).unwrap();
    let stop = CancellationToken::new();
    let source =
        discovery::watch_file(file.clone(), Duration::from_millis(50), stop.clone()).unwrap();
    let pool = PeerPool::new(
        Dialer {
            tls: None,
            connect_timeout: Duration::from_secs(2),
            probe_every: Duration::from_millis(200),
            backoff: Backoff {
                first: Duration::from_millis(50),
                max: Duration::from_millis(200),
            },
        },
        None,
    );
    tokio::spawn(tollgate::relay::follow_discovery(
        pool.clone(),
        Vec::new(),
        vec![source],
        stop.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = listener.local_addr().unwrap();
    let svc = RelayService::new(
        pool.clone(),
        MergeConfig {
            buffer_len: 100,
            max_wait: Duration::from_millis(100),
        },
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ObserverServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut client = ObserverClient::connect(format!("http://{relay}"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client
        .get_nodes(GetNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::NodeConnected as i32)
        .count()
        != 1
    {
        assert!(Instant::now() < deadline, "n1 never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut stream = client
        .get_flows(GetFlowsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the followed stream stalled")
            .unwrap()
            .expect("the followed stream ended")
    };
    let first = next().await;
    assert!(
        matches!(&first.response_types, Some(ResponseTypes::NodeStatus(e)) if e.node_names == ["n1"]),
        "{first:?}"
    );
    f1.record(record(1001));
    let r = next().await;
    assert!(
        matches!(r.response_types, Some(ResponseTypes::Flow(_))),
        "{r:?}"
    );
    assert_eq!(r.node_name, "n1");

    // n2 appears in the peers file while the stream is open: announced, then its flows arrive in it.
    std::fs::write(&file, format!("n1={a1}\nn2={a2}\n")).unwrap();
    let joined = next().await;
    match &joined.response_types {
        Some(ResponseTypes::NodeStatus(e)) => {
            assert_eq!(e.state_change, NodeState::NodeConnected as i32);
            assert_eq!(e.node_names, ["n2"]);
        }
        other => panic!("expected n2 joining, got {other:?}"),
    }
    f2.record(record(2002));
    let r = next().await;
    assert!(
        matches!(r.response_types, Some(ResponseTypes::Flow(_))),
        "{r:?}"
    );
    assert_eq!(r.node_name, "n2");
    // And n1 keeps flowing in the same stream.
    f1.record(record(1003));
    let r = next().await;
    assert_eq!(r.node_name, "n1");

    // A bad edit keeps the previous list; removing n2 stops it.
    std::fs::write(&file, "n1 nonsense\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pool.peers().len(), 2);
    std::fs::write(&file, format!("n1={a1}\n")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.peers().len() != 1 {
        assert!(Instant::now() < deadline, "n2 never left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
}

/// Writes an SVID for `id` from `ca` into a new directory under `root`.
fn svid_dir(ca: &certs::DevCa, root: &Path, id: &str) -> PathBuf {
    let dir = root.join(id.rsplit('/').next().unwrap());
    let svid = ca
        .issue_for(
            &certs::SpiffeId::parse(id).unwrap(),
            Duration::from_secs(600),
        )
        .unwrap();
    certs::write_svid_files(&svid, &ca.bundle(), &dir).unwrap();
    dir
}

#[tokio::test]
async fn the_mtls_observer_listener_admits_only_the_allowed_client_id() {
    use tollgate::hubble::observer::ServerStatusRequest;
    use tollgate::hubble_server::tls::{Identity, dial, incoming};
    let root = tempfile::tempdir().unwrap();
    let td = certs::TrustDomain::new("cluster.local").unwrap();
    let ca = certs::DevCa::create(&td, Duration::from_secs(3600)).unwrap();
    let other_ca = certs::DevCa::create(&td, Duration::from_secs(3600)).unwrap();
    let node_dir = svid_dir(
        &ca,
        root.path(),
        "spiffe://cluster.local/ns/kube-system/sa/tollgate",
    );
    let relay_dir = svid_dir(
        &ca,
        root.path(),
        "spiffe://cluster.local/ns/kube-system/sa/tollgate-relay",
    );
    let web_dir = svid_dir(&ca, root.path(), "spiffe://cluster.local/ns/prod/sa/web");
    let forged_dir = svid_dir(
        &other_ca,
        &root.path().join("forged"),
        "spiffe://cluster.local/ns/kube-system/sa/tollgate-relay",
    );
    let relay_id = "spiffe://cluster.local/ns/kube-system/sa/tollgate-relay".to_string();
    let node_id = "spiffe://cluster.local/ns/kube-system/sa/tollgate".to_string();

    // The node side, as `--observer-tls-svid-dir` + `--observer-tls-client-id` set it up.
    let server = Identity::load(
        "--observer-tls-svid-dir",
        &node_dir,
        std::slice::from_ref(&relay_id),
        "--observer-tls-client-id",
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let flows = Arc::new(FlowLog::new(10, FlowSink::None).unwrap());
    flows.record(record(1));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ObserverServer::new(ObserverService::new(flows, "n1")))
            .serve_with_incoming(incoming(
                listener,
                server.acceptor().unwrap(),
                "observer API",
                stop.clone(),
            )),
    );
    let ask = async |dir: Option<&Path>, server_ids: &[String]| -> Result<u64, String> {
        let connector = dir.map(|d| {
            Identity::load("--peer-tls-svid-dir", d, server_ids, "--peer-tls-server-id")
                .unwrap()
                .connector()
                .unwrap()
        });
        let ch = dial(&addr, connector, Duration::from_secs(2))
            .await
            .map_err(|e| format!("{e:?}"))?;
        let r = ObserverClient::new(ch)
            .server_status(ServerStatusRequest {})
            .await
            .map_err(|e| e.to_string())?;
        Ok(r.into_inner().num_flows)
    };
    // The relay, checking the node's ID: admitted.
    assert_eq!(
        ask(Some(&relay_dir), std::slice::from_ref(&node_id)).await,
        Ok(1)
    );
    // Another workload of the trust domain, a certificate from an unknown CA, no TLS at all: refused.
    assert!(ask(Some(&web_dir), &[]).await.is_err());
    assert!(ask(Some(&forged_dir), &[]).await.is_err());
    assert!(ask(None, &[]).await.is_err());
    // The relay refuses a server that is not the node ID it expects.
    assert!(
        ask(
            Some(&relay_dir),
            &["spiffe://cluster.local/ns/kube-system/sa/other".to_string()]
        )
        .await
        .is_err()
    );
    stop.cancel();
}
