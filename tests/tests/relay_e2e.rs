//! `tollgate relay` end to end, as root: two nodes (namespaces joined by a link, each with its own tollgate,
//! eBPF redirect, pods and nginx), each node's Observer served over mTLS (SVIDs from a development CA, only the
//! relay's ID admitted), and the relay in node A's namespace connected to both with its own SVID. Real curl
//! traffic, allowed and denied, on both nodes; then, with the Observer client generated from proxy/proto:
//! - `GetFlows` through the relay holds both nodes' flows in time order; `number` (`--last N`), filters pushed
//!   down to the nodes, field masks and `until` behave as on one node;
//! - `GetNodes` lists both nodes connected over TLS with their counts; `ServerStatus` adds them up; health is
//!   SERVING;
//! - a followed stream sees new flows from both nodes; node B's daemon is killed (SIGKILL by PID) mid-stream:
//!   the stream gets a `node_status` NODE_UNAVAILABLE event naming b, node A's flows keep coming,
//!   `ServerStatus` shows b unavailable; b restarted: NODE_CONNECTED, and its new flows join the same stream.
//!
//! Needs root, nginx, curl, nsenter, bpffs.

use std::fs;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tollgate::hubble::flow::{Flow, FlowFilter, Verdict, layer7};
use tollgate::hubble::health::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tollgate::hubble::observer::{
    GetFlowsRequest, GetFlowsResponse, GetNodesRequest, GetNodesResponse, ServerStatusRequest,
    ServerStatusResponse, get_flows_request::Experimental, get_flows_response::ResponseTypes,
    observer_client::ObserverClient,
};
use tollgate::hubble::relay::NodeState;
use tollgate_e2e::mesh::TwoNodes;
use tollgate_e2e::scenario::HTTP_PORT;
use tollgate_e2e::{ChildGuard, require_root, tollgate_bin};

/// One client and one api pod on each node; api admits GET /public.* from client.
const CASE: &str = r#"name: relay
policies:
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: api-public, namespace: shop}
    spec:
      endpointSelector: {matchLabels: {app: api}}
      ingress:
        - fromEndpoints: [{matchLabels: {app: client}}]
          toPorts:
            - ports: [{port: "8080", protocol: TCP}]
              rules: {http: [{method: GET, path: "/public.*"}]}
endpoints:
  - {name: client-a, namespace: shop, labels: {app: client}, ip: 10.0.8.10, node: a}
  - {name: api-a, namespace: shop, labels: {app: api}, ip: 10.0.8.20, node: a}
  - {name: client-b, namespace: shop, labels: {app: client}, ip: 10.0.9.10, node: b}
  - {name: api-b, namespace: shop, labels: {app: api}, ip: 10.0.9.20, node: b}
"#;

const NODE_ID: &str = "spiffe://cluster.local/ns/kube-system/sa/tollgate";
const RELAY_ID: &str = "spiffe://cluster.local/ns/kube-system/sa/tollgate-relay";
const OBSERVER_PORT: u16 = 4245;
/// The relay listens on node A's loopback.
const RELAY: &str = "127.0.0.1:4345";
/// The relay's web UI (`--ui-listen`).
const RELAY_UI: &str = "127.0.0.1:4346";

struct Cluster {
    // Drop order: the relay first, then the nodes.
    _relay: ChildGuard,
    relay_log: PathBuf,
    nodes: TwoNodes,
    args_b: Vec<String>,
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Moves the calling thread into `netns` (where the relay listens).
fn enter(netns: &str) {
    let path = PathBuf::from("/run/netns").join(netns);
    let ns = fs::File::open(&path).unwrap();
    // SAFETY: setns on an fd we own; it only changes this thread's network namespace.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns into {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

impl Cluster {
    fn start() -> Cluster {
        require_root();
        let mut nodes = TwoNodes::new("relay", CASE).unwrap();
        let node_svid = nodes.issue(NODE_ID, 3600).unwrap();
        let relay_svid = nodes.issue(RELAY_ID, 3600).unwrap();
        let args = |which: &str| {
            let (sc, addr) = match which {
                "a" => (&nodes.a, &nodes.addr_a),
                _ => (&nodes.b, &nodes.addr_b),
            };
            let mut a = sc.ebpf_args();
            a.extend(
                [
                    "--node-name",
                    which,
                    "--observer-listen",
                    &format!("{addr}:{OBSERVER_PORT}"),
                    "--observer-tls-svid-dir",
                    &node_svid.display().to_string(),
                    "--observer-tls-client-id",
                    RELAY_ID,
                ]
                .map(String::from),
            );
            a
        };
        let (args_a, args_b) = (args("a"), args("b"));
        nodes.a.start_proxy_with(&args_a).unwrap();
        nodes.b.start_proxy_with(&args_b).unwrap();
        let relay_log = nodes.a.dir.path().join("relay.log");
        let mut cmd = nodes.a.node.command(tollgate_bin());
        cmd.args(["relay", "--listen", RELAY, "--ui-listen", RELAY_UI])
            .args(["--peer", &format!("a={}:{OBSERVER_PORT}", nodes.addr_a)])
            .args(["--peer", &format!("b={}:{OBSERVER_PORT}", nodes.addr_b)])
            .arg("--peer-tls-svid-dir")
            .arg(&relay_svid)
            .args(["--peer-tls-server-id", NODE_ID])
            .args(["--probe-interval-secs", "0.5", "--retry-max-secs", "1"])
            .args(["--sort-buffer-drain-timeout-ms", "300"])
            .env("TOLLGATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&relay_log).unwrap());
        let mut relay = ChildGuard::spawn(&mut cmd).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !fs::read_to_string(&relay_log)
            .unwrap_or_default()
            .contains("tollgate relay ready")
        {
            if let Ok(Some(st)) = relay.child_mut().try_wait() {
                panic!(
                    "tollgate relay exited with {st}: {}",
                    fs::read_to_string(&relay_log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "tollgate relay not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        let c = Cluster {
            _relay: relay,
            relay_log,
            nodes,
            args_b,
        };
        c.wait("both nodes connected to the relay", |c| {
            c.nodes()
                .nodes
                .iter()
                .filter(|n| n.state == NodeState::NodeConnected as i32)
                .count()
                == 2
        });
        c
    }

    fn relay_log(&self) -> String {
        fs::read_to_string(&self.relay_log).unwrap_or_default()
    }

    fn logs(&self) -> String {
        format!(
            "relay:\n{}\nnode a:\n{}\nnode b:\n{}",
            self.relay_log(),
            self.nodes.a.proxy_log(),
            self.nodes.b.proxy_log()
        )
    }

    /// Runs `f` with a runtime on a thread inside node A's namespace.
    fn in_a<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let netns = self.nodes.a.node.netns.name().to_string();
        std::thread::scope(|s| {
            s.spawn(move || {
                enter(&netns);
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// The relay UI's flow table (`/api/flows`) as (node, url, verdict) of its HTTP request rows.
    fn ui_requests(&self) -> Vec<(String, String, String)> {
        let body = self.in_a(|| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(RELAY_UI).expect("the relay's web UI");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(
                s,
                "GET /api/flows HTTP/1.1\r\nHost: {RELAY_UI}\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut raw = String::new();
            s.read_to_string(&mut raw).unwrap();
            raw
        });
        let (head, json) = body.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "relay UI answered {head}");
        let v: serde_json::Value = serde_json::from_str(json).expect("/api/flows is JSON");
        let mut rows: Vec<(String, String, String)> = v["flows"]
            .as_array()
            .expect("flows")
            .iter()
            .filter(|r| r["kind"] == "request")
            .map(|r| {
                let url = r["http_url"].as_str().unwrap_or("");
                let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
                let path = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
                (
                    r["node"].as_str().unwrap_or("").to_string(),
                    path.to_string(),
                    r["verdict"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        rows.sort();
        rows
    }

    async fn client() -> ObserverClient<tonic::transport::Channel> {
        ObserverClient::connect(format!("http://{RELAY}"))
            .await
            .unwrap()
    }

    fn get_flows(&self, req: GetFlowsRequest) -> Vec<GetFlowsResponse> {
        self.in_a(|| {
            rt().block_on(async {
                let mut s = Self::client()
                    .await
                    .get_flows(req)
                    .await
                    .unwrap()
                    .into_inner();
                let mut out = Vec::new();
                while let Some(r) = s.message().await.unwrap() {
                    out.push(r);
                }
                out
            })
        })
    }

    fn nodes(&self) -> GetNodesResponse {
        self.in_a(|| {
            rt().block_on(async {
                Self::client()
                    .await
                    .get_nodes(GetNodesRequest {})
                    .await
                    .unwrap()
                    .into_inner()
            })
        })
    }

    fn status(&self) -> ServerStatusResponse {
        self.in_a(|| {
            rt().block_on(async {
                Self::client()
                    .await
                    .server_status(ServerStatusRequest {})
                    .await
                    .unwrap()
                    .into_inner()
            })
        })
    }

    fn wait(&self, what: &str, ok: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ok(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// curl from `client-<node>` to `api-<node>`; returns the HTTP status.
    fn curl(&self, node: &str, path: &str) -> u16 {
        let (sc, ip) = match node {
            "a" => (&self.nodes.a, "10.0.8.20"),
            _ => (&self.nodes.b, "10.0.9.20"),
        };
        let out = sc
            .curl(
                &format!("shop/client-{node}"),
                &[&format!("http://{ip}:{HTTP_PORT}{path}")],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

fn flows(rs: &[GetFlowsResponse]) -> Vec<(String, Flow)> {
    rs.iter()
        .filter_map(|r| match &r.response_types {
            Some(ResponseTypes::Flow(f)) => Some((r.node_name.clone(), f.clone())),
            _ => None,
        })
        .collect()
}

fn url(f: &Flow) -> Option<String> {
    match f.l7.as_ref()?.record.as_ref()? {
        layer7::Record::Http(h) => Some(h.url.clone()),
        _ => None,
    }
}

fn time_ns(f: &Flow) -> i128 {
    let t = f.time.as_ref().unwrap();
    i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
}

/// The L7 request flows (not replies, not policy verdicts) with their node and URL path.
fn requests(fs: &[(String, Flow)]) -> Vec<(String, String, i32)> {
    fs.iter()
        .filter(|(_, f)| f.is_reply != Some(true))
        .filter_map(|(n, f)| {
            let u = url(f)?;
            let path = u
                .split_once(":8080")
                .map_or(u.clone(), |(_, p)| p.to_string());
            Some((n.clone(), path, f.verdict))
        })
        .collect()
}

fn assert_time_ordered(fs: &[(String, Flow)]) {
    for w in fs.windows(2) {
        assert!(
            time_ns(&w[0].1) <= time_ns(&w[1].1),
            "out of time order: {:?} then {:?}",
            (&w[0].0, w[0].1.time, url(&w[0].1)),
            (&w[1].0, w[1].1.time, url(&w[1].1))
        );
    }
}

fn node_events(rs: &[GetFlowsResponse]) -> Vec<(i32, Vec<String>, String)> {
    rs.iter()
        .filter_map(|r| match &r.response_types {
            Some(ResponseTypes::NodeStatus(e)) => {
                Some((e.state_change, e.node_names.clone(), e.message.clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn relay_merges_both_nodes_and_survives_a_node_crash() {
    let mut c = Cluster::start();

    // The nodes' observers require a client certificate: a plain client is refused.
    let (addr_a, netns) = (
        c.nodes.addr_a.clone(),
        c.nodes.a.node.netns.name().to_string(),
    );
    let plain = std::thread::spawn(move || {
        enter(&netns);
        rt().block_on(async {
            match ObserverClient::connect(format!("http://{addr_a}:{OBSERVER_PORT}")).await {
                Ok(mut cl) => cl
                    .server_status(ServerStatusRequest {})
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
    })
    .join()
    .unwrap();
    assert!(
        plain.is_err(),
        "a node's observer answered a client without a certificate"
    );

    // Traffic on both nodes, interleaved: allowed and denied.
    let plan = [
        ("a", "/public/a1", 200),
        ("b", "/public/b1", 200),
        ("a", "/private/a2", 403),
        ("b", "/private/b2", 403),
        ("a", "/public/a3", 200),
        ("b", "/public/b3", 200),
    ];
    for (node, path, want) in plan {
        assert_eq!(c.curl(node, path), want, "{node} {path}\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(30));
    }
    c.wait("six request flows through the relay", |c| {
        requests(&flows(&c.get_flows(GetFlowsRequest::default()))).len() >= 6
    });

    // The relay's web UI shows both nodes' requests with their verdicts (one page for the cluster).
    let want_ui: Vec<(String, String, String)> = {
        let mut w: Vec<_> = plan
            .iter()
            .map(|(n, p, code)| {
                let v = if *code == 200 { "FORWARDED" } else { "DROPPED" };
                (n.to_string(), p.to_string(), v.to_string())
            })
            .collect();
        w.sort();
        w
    };
    c.wait(
        "the relay UI's flow table shows both nodes' requests",
        |c| c.ui_requests() == want_ui,
    );

    // Everything, merged in time order, from both nodes, with the verdicts each node decided.
    let all = c.get_flows(GetFlowsRequest::default());
    let merged = flows(&all);
    assert_time_ordered(&merged);
    let reqs = requests(&merged);
    let want: Vec<(String, String, i32)> = plan
        .iter()
        .map(|(n, p, code)| {
            let v = if *code == 200 {
                Verdict::Forwarded
            } else {
                Verdict::Dropped
            };
            (n.to_string(), p.to_string(), v as i32)
        })
        .collect();
    assert_eq!(
        reqs, want,
        "request flows in the order they happened, each from its node"
    );
    let connected = node_events(&all);
    assert_eq!(
        connected.first().map(|e| (e.0, e.1.clone())),
        Some((
            NodeState::NodeConnected as i32,
            vec!["a".to_string(), "b".to_string()]
        )),
        "the stream opens naming the nodes that take part"
    );

    // --last N over both nodes: the newest N overall, still in order.
    let last3 = flows(&c.get_flows(GetFlowsRequest {
        number: 3,
        ..Default::default()
    }));
    assert_eq!(last3.len(), 3);
    let tail: Vec<_> = merged[merged.len() - 3..]
        .iter()
        .map(|(n, f)| (n.clone(), f.uuid.clone()))
        .collect();
    assert_eq!(
        last3
            .iter()
            .map(|(n, f)| (n.clone(), f.uuid.clone()))
            .collect::<Vec<_>>(),
        tail
    );
    let first2 = flows(&c.get_flows(GetFlowsRequest {
        number: 2,
        first: true,
        ..Default::default()
    }));
    let head: Vec<_> = merged[..2].iter().map(|(_, f)| f.uuid.clone()).collect();
    assert_eq!(
        first2
            .iter()
            .map(|(_, f)| f.uuid.clone())
            .collect::<Vec<_>>(),
        head
    );

    // Filters are pushed down: only dropped flows, from both nodes.
    let dropped = flows(&c.get_flows(GetFlowsRequest {
        whitelist: vec![FlowFilter {
            verdict: vec![Verdict::Dropped as i32],
            ..Default::default()
        }],
        ..Default::default()
    }));
    assert!(
        dropped
            .iter()
            .all(|(_, f)| f.verdict == Verdict::Dropped as i32)
    );
    assert_eq!(
        requests(&dropped)
            .into_iter()
            .map(|(n, p, _)| (n, p))
            .collect::<Vec<_>>(),
        [
            ("a".to_string(), "/private/a2".to_string()),
            ("b".to_string(), "/private/b2".to_string())
        ]
    );

    // Field mask: only the asked fields, yet still merged in time order (the response carries the time).
    let masked = c.get_flows(GetFlowsRequest {
        experimental: Some(Experimental {
            field_mask: Some(prost_types::FieldMask {
                paths: vec!["verdict".into(), "l7.http.url".into()],
            }),
        }),
        ..Default::default()
    });
    let mf = flows(&masked);
    assert!(!mf.is_empty());
    assert!(
        mf.iter()
            .all(|(_, f)| f.source.is_none() && f.time.is_none()),
        "masked flows carry only the mask"
    );
    let times: Vec<i128> = masked
        .iter()
        .filter(|r| matches!(r.response_types, Some(ResponseTypes::Flow(_))))
        .map(|r| {
            r.time.as_ref().map_or(0, |t| {
                i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
            })
        })
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]) && times[0] > 0,
        "{times:?}"
    );

    // until: nothing after the third request flow's time.
    let cut = merged
        .iter()
        .find(|(_, f)| url(f).is_some_and(|u| u.ends_with("/private/a2")))
        .unwrap()
        .1
        .time;
    let upto = flows(&c.get_flows(GetFlowsRequest {
        until: cut,
        ..Default::default()
    }));
    assert!(upto.iter().all(|(_, f)| time_ns(f)
        <= time_ns(&Flow {
            time: cut,
            ..Default::default()
        })));
    assert_eq!(requests(&upto).len(), 3, "{:?}", requests(&upto));

    // GetNodes, ServerStatus, health.
    let nodes = c.nodes();
    let mut names: Vec<_> = nodes.nodes.iter().map(|n| n.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
    for n in &nodes.nodes {
        assert_eq!(n.state, NodeState::NodeConnected as i32, "{n:?}");
        assert!(n.version.starts_with("tollgate "), "{n:?}");
        assert!(n.tls.as_ref().is_some_and(|t| t.enabled), "{n:?}");
        assert!(
            n.num_flows >= 3 && n.seen_flows >= n.num_flows && n.max_flows > 0 && n.uptime_ns > 0,
            "{n:?}"
        );
        assert!(n.address.ends_with(&format!(":{OBSERVER_PORT}")), "{n:?}");
    }
    let st = c.status();
    assert_eq!(st.num_connected_nodes, Some(2));
    assert_eq!(st.num_unavailable_nodes, Some(0));
    assert!(st.unavailable_nodes.is_empty());
    assert_eq!(
        st.num_flows,
        nodes.nodes.iter().map(|n| n.num_flows).sum::<u64>()
    );
    assert_eq!(
        st.max_flows,
        nodes.nodes.iter().map(|n| n.max_flows).sum::<u64>()
    );
    assert!(st.seen_flows >= st.num_flows);
    let health = c.in_a(|| {
        rt().block_on(async {
            let mut h = HealthClient::connect(format!("http://{RELAY}"))
                .await
                .unwrap();
            h.check(HealthCheckRequest {
                service: "hubble.server.Observer".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
        })
    });
    assert_eq!(health, ServingStatus::Serving as i32);

    // Follow: new flows from both nodes, then node B crashes and comes back.
    let (tx, rx) = mpsc::channel::<GetFlowsResponse>();
    let netns = c.nodes.a.node.netns.name().to_string();
    std::thread::spawn(move || {
        enter(&netns);
        rt().block_on(async move {
            let mut cl = ObserverClient::connect(format!("http://{RELAY}"))
                .await
                .unwrap();
            let mut s = cl
                .get_flows(GetFlowsRequest {
                    follow: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            while let Ok(Some(r)) = s.message().await {
                if tx.send(r).is_err() {
                    return;
                }
            }
        })
    });
    let mut seen: Vec<GetFlowsResponse> = Vec::new();
    let until = |seen: &mut Vec<GetFlowsResponse>,
                 what: &str,
                 c: &Cluster,
                 ok: &dyn Fn(&[GetFlowsResponse]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ok(seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "followed stream: no {what}\nseen: {:#?}\n{}",
                node_events(seen),
                c.logs()
            );
            if let Ok(r) = rx.recv_timeout(left.min(Duration::from_millis(200))) {
                seen.push(r);
            }
        }
    };
    let has_path = |p: &'static str| {
        move |s: &[GetFlowsResponse]| requests(&flows(s)).iter().any(|(_, q, _)| q == p)
    };
    until(&mut seen, "opening event", &c, &|s| {
        !node_events(s).is_empty()
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(c.curl("a", "/public/live-a"), 200);
    assert_eq!(c.curl("b", "/private/live-b"), 403);
    until(&mut seen, "live flows from both nodes", &c, &|s| {
        has_path("/public/live-a")(s) && has_path("/private/live-b")(s)
    });
    assert!(
        requests(&flows(&seen))
            .iter()
            .all(|(_, p, _)| p.contains("live")),
        "follow without number sends only new flows: {:?}",
        requests(&flows(&seen))
    );

    // Kill node B's daemon (SIGKILL by PID) while the stream is open.
    c.nodes.b.kill_proxy();
    until(&mut seen, "NODE_UNAVAILABLE for b", &c, &|s| {
        node_events(s)
            .iter()
            .any(|e| e.0 == NodeState::NodeUnavailable as i32 && e.1 == ["b"])
    });
    let before = seen.len();
    assert_eq!(c.curl("a", "/public/after-crash"), 200);
    until(&mut seen, "node A's flows after B's crash", &c, &|s| {
        has_path("/public/after-crash")(s)
    });
    assert!(
        seen[before..]
            .iter()
            .any(|r| matches!(r.response_types, Some(ResponseTypes::Flow(_))))
    );
    c.wait("ServerStatus to show b unavailable", |c| {
        let st = c.status();
        st.num_connected_nodes == Some(1)
            && st.num_unavailable_nodes == Some(1)
            && st.unavailable_nodes == ["b"]
    });
    let down = c.nodes();
    assert!(
        down.nodes
            .iter()
            .any(|n| n.name == "b" && n.state == NodeState::NodeUnavailable as i32),
        "{down:?}"
    );
    // A request on the crashed node is refused (pinned redirect, no proxy): no flow, and the relay keeps serving.
    let st = c.status();
    assert!(st.num_flows > 0, "{st:?}");

    // Restart B: it reconnects, the stream says so, and its new flows join the same stream.
    let args_b = c.args_b.clone();
    c.nodes.b.start_proxy_with(&args_b).unwrap();
    until(&mut seen, "NODE_CONNECTED for b", &c, &|s| {
        let ev = node_events(s);
        let lost = ev
            .iter()
            .position(|e| e.0 == NodeState::NodeUnavailable as i32 && e.1 == ["b"]);
        lost.is_some_and(|i| {
            ev[i..]
                .iter()
                .any(|e| e.0 == NodeState::NodeConnected as i32 && e.1 == ["b"])
        })
    });
    assert_eq!(c.curl("b", "/public/after-restart"), 200, "{}", c.logs());
    assert_eq!(c.curl("a", "/public/a-after-restart"), 200);
    until(&mut seen, "node B's flows after its restart", &c, &|s| {
        has_path("/public/after-restart")(s) && has_path("/public/a-after-restart")(s)
    });
    c.wait("ServerStatus to show both nodes again", |c| {
        c.status().num_connected_nodes == Some(2)
    });
    let live = flows(&seen);
    assert_time_ordered(&live);
    let order: Vec<String> = requests(&live)
        .into_iter()
        .map(|(n, p, _)| format!("{n}{p}"))
        .collect();
    assert_eq!(
        order,
        [
            "a/public/live-a",
            "b/private/live-b",
            "a/public/after-crash",
            "b/public/after-restart",
            "a/public/a-after-restart"
        ]
    );
    tollgate_e2e::hold_for_hand_check(&format!(
        "relay at {RELAY} in netns {} (nodes a, b); node b's netns {}; client pods' netns/cgroups: a {:?} b {:?}",
        c.nodes.a.node.netns.name(),
        c.nodes.b.node.netns.name(),
        c.nodes.a.pod("shop/client-a"),
        c.nodes.b.pod("shop/client-b"),
    ));
}
