//! End-to-end for the user-facing flow log: real curl traffic through `tollgate run` (iptables TPROXY in a node
//! netns, nginx in the target pod, policies from policy-model/conformance/http-ledger.yaml), then the Observer API
//! queried with filters by (a) the Rust client generated from proxy/proto and (b) an independent Python grpcio
//! client; follow mode; `tollgate observe --verdict DROPPED -o json`; `/metrics`, `/readyz`; the rotated JSON
//! export. `hubble_compatibility` checks what the Hubble CLI needs (issue 18): health, ServerStatus, GetNodes,
//! Cilium's flow shapes (policy verdicts with policy names, REQUEST/RESPONSE, Summary, is_reply, trace_context),
//! event-type/reply filters, field masks, first/since/until and agent events.
//!
//! Needs root, iptables (TPROXY + socket match), nginx, curl, python3 with grpcio + grpcio-tools.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate::hubble::flow::{
    AgentEventType, EventTypeFilter, Flow, FlowFilter, L7FlowType, Verdict, agent_event, layer7,
};
use tollgate::hubble::health::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tollgate::hubble::observer::{
    GetAgentEventsRequest, GetFlowsRequest, GetNodesRequest, ServerStatusRequest,
    get_flows_request::Experimental, get_flows_response, observer_client::ObserverClient,
};
use tollgate::hubble::relay::NodeState;
use tollgate_e2e::{
    ChildGuard, Nginx, Node, Pod, TempDir, conformance_dir, require_root, require_tool,
    tollgate_bin, workspace_root,
};

const PROXY_PORT: u16 = 15001;
const OBSERVER: &str = "127.0.0.1:4245";
const METRICS: &str = "127.0.0.1:9965";
const LEDGER: &str = "10.0.21.20";

struct Setup {
    // Drop order: proxy, servers, pods, node, files.
    proxy: ChildGuard,
    _nginx: Nginx,
    pods: BTreeMap<String, Pod>,
    node: Node,
    dir: TempDir,
}

impl Setup {
    fn new(tag: &str) -> Self {
        require_root();
        require_tool("iptables");
        let case: Value = serde_yaml::from_str(
            &fs::read_to_string(conformance_dir().join("http-ledger.yaml")).unwrap(),
        )
        .unwrap();
        let mut node = Node::new(tag).unwrap();
        let mut pods = BTreeMap::new();
        for e in case["endpoints"].as_array().unwrap() {
            let name = e["name"].as_str().unwrap();
            let pod = node.add_pod(name, e["ip"].as_str().unwrap()).unwrap();
            pods.insert(name.to_string(), pod);
        }
        let dir = TempDir::new(tag).unwrap();
        let policies: Vec<String> = case["policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| serde_yaml::to_string(p).unwrap())
            .collect();
        dir.write("policy.yaml", &policies.join("---\n")).unwrap();
        dir.write(
            "endpoints.yaml",
            &serde_yaml::to_string(&serde_json::json!({ "endpoints": case["endpoints"] })).unwrap(),
        )
        .unwrap();
        dir.write("flowlogs.yaml", &drops_only_flow_logs(&dir))
            .unwrap();
        tollgate_e2e::tproxy_all_tcp(&node, PROXY_PORT).unwrap();
        let nginx = Nginx::start(&pods["ledger"], 8080, 18081).unwrap();
        let stderr = fs::File::create(dir.path().join("tollgate.stderr")).unwrap();
        let mut cmd = node.command(tollgate_bin());
        cmd.args(["run", "--listen", &format!("0.0.0.0:{PROXY_PORT}")])
            .args(["--observer-listen", OBSERVER, "--metrics-listen", METRICS])
            .args(["--hubble-metrics", HUBBLE_METRICS])
            .arg("--policy")
            .arg(dir.path().join("policy.yaml"))
            .arg("--endpoints")
            .arg(dir.path().join("endpoints.yaml"))
            .arg("--handoff-socket")
            .arg(dir.path().join("handoff.sock"))
            .arg("--flow-export")
            .arg(dir.path().join("export.json"))
            .args(["--flow-export-max-bytes", "2048", "--flow-export-keep", "2"])
            .arg("--hubble-flowlogs-config-path")
            .arg(dir.path().join("flowlogs.yaml"))
            .args(["--hubble-flowlogs-reload-secs", "0.2"])
            .env("TOLLGATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut proxy = ChildGuard::spawn(&mut cmd).unwrap();
        Setup {
            proxy: {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let err =
                        fs::read_to_string(dir.path().join("tollgate.stderr")).unwrap_or_default();
                    if err.contains("observer API ready") && err.contains("admin server") {
                        break;
                    }
                    if let Ok(Some(st)) = proxy.child_mut().try_wait() {
                        panic!("tollgate exited with {st}: {err}");
                    }
                    assert!(
                        Instant::now() < deadline,
                        "observer/admin never came up: {err}"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                proxy
            },
            _nginx: nginx,
            pods,
            node,
            dir,
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("tollgate.stderr")).unwrap_or_default()
    }

    /// Runs `f` on a thread inside the node's network namespace (where the observer listens on loopback).
    fn in_node<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = PathBuf::from("/run/netns").join(self.node.netns.name());
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = fs::File::open(&path).unwrap();
                // SAFETY: setns on an fd we own; it only changes this thread's network namespace.
                let rc = unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET)
                };
                assert_eq!(
                    rc,
                    0,
                    "setns into {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap()
        })
    }

    fn get_flows(&self, req: GetFlowsRequest) -> Vec<Flow> {
        self.in_node(|| {
            rt().block_on(async {
                let mut c = ObserverClient::connect(format!("http://{OBSERVER}"))
                    .await
                    .unwrap();
                let mut stream = c.get_flows(req).await.unwrap().into_inner();
                let mut out = Vec::new();
                while let Some(r) = stream.message().await.unwrap() {
                    if let Some(get_flows_response::ResponseTypes::Flow(f)) = r.response_types {
                        out.push(f);
                    }
                }
                out
            })
        })
    }

    fn node_output(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
        let out = self.node.command(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.stderr()
        );
        out
    }
}

/// The dynamic flow logs the daemon starts with: one export of dropped flows.
fn drops_only_flow_logs(dir: &TempDir) -> String {
    format!(
        "flowLogs:\n  - name: drops\n    filePath: {}\n    includeFilters:\n      - verdict: [DROPPED]\n",
        dir.path().join("drops.log").display()
    )
}

/// The lines of a flow-log file, once it holds at least `n` (lines are written off the data path).
fn flow_log_lines(path: &std::path::Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<Value> = fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} holds {} lines, want {n}: {lines:#?}",
            path.display(),
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// curl from a pod; returns the HTTP status (0 when the connection was refused/reset).
fn curl(pod: &Pod, method: &str, path: &str) -> u16 {
    let url = format!("http://{LEDGER}:8080{path}");
    let out = tollgate_e2e::scenario::curl_from(pod, &["-X", method, &url]).unwrap();
    // `curl_from` prints `<status> <peer>`.
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn http(f: &Flow) -> (String, String, u32) {
    match f.l7.as_ref().and_then(|l| l.record.as_ref()) {
        Some(layer7::Record::Http(h)) => (h.method.clone(), h.url.clone(), h.code),
        other => panic!("not an HTTP flow: {other:?}"),
    }
}

/// The flows that stand for requests (and refused connections): Cilium's policy-verdict events and L7 replies
/// left out, so there is one per flow record.
fn requests(all: &[Flow]) -> Vec<Flow> {
    all.iter()
        .filter(|f| {
            f.event_type.as_ref().map(|e| e.r#type) != Some(POLICY_VERDICT)
                && f.is_reply != Some(true)
        })
        .cloned()
        .collect()
}

const POLICY_VERDICT: i32 = 5;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Waits until the ring holds at least `n` flows (records are written as requests finish).
fn wait_flows(setup: &Setup, n: usize) -> Vec<Flow> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let all = setup.get_flows(GetFlowsRequest::default());
        if all.len() >= n {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "only {} flows: {all:#?}",
            all.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn flows_are_queryable_followable_exported_and_counted() {
    let mut setup = Setup::new("flowlog");
    let portal = &setup.pods["portal"];
    assert_eq!(curl(portal, "GET", "/books/v2/entries"), 200);
    assert_eq!(curl(portal, "DELETE", "/books/v2/entries"), 403);
    assert_eq!(curl(portal, "GET", "/admin"), 403);
    let reporter_status = curl(&setup.pods["reporter"], "GET", "/books/v2/entries");
    assert_ne!(
        reporter_status, 200,
        "reporter is not allowed to reach ledger"
    );
    // As Cilium emits them: a policy verdict per connection, then REQUEST + RESPONSE for the allowed GET, one
    // REQUEST for each denied request, one drop for the refused connection.
    let all = wait_flows(&setup, 9);
    assert_eq!(all.len(), 9, "{all:#?}");
    assert_eq!(requests(&all).len(), 4, "one per request: {all:#?}");

    // (a) Rust client generated from proxy/proto.
    let dropped_http = setup.get_flows(GetFlowsRequest {
        whitelist: vec![FlowFilter {
            verdict: vec![Verdict::Dropped as i32],
            protocol: s(&["http"]),
            source_pod: s(&["billing/portal"]),
            ..Default::default()
        }],
        ..Default::default()
    });
    let got: Vec<_> = dropped_http.iter().map(http).collect();
    assert_eq!(
        got,
        vec![
            (
                "DELETE".to_string(),
                format!("http://{LEDGER}:8080/books/v2/entries"),
                403
            ),
            (
                "GET".to_string(),
                format!("http://{LEDGER}:8080/admin"),
                403
            ),
        ]
    );
    for f in &dropped_http {
        assert_eq!(f.drop_reason_desc, 133, "POLICY_DENIED: {f:?}");
        assert!(
            !f.tollgate_policy.is_empty(),
            "the deciding policy is named"
        );
        assert_eq!(f.source.as_ref().unwrap().labels, vec!["k8s:app=portal"]);
        assert_eq!(f.destination.as_ref().unwrap().pod_name, "ledger");
    }
    // Whitelist OR + blacklist: GETs to ledger, minus /admin.
    let gets = setup.get_flows(GetFlowsRequest {
        whitelist: vec![FlowFilter {
            destination_pod: s(&["billing/ledger"]),
            http_method: s(&["GET"]),
            source_label: s(&["app=portal"]),
            ..Default::default()
        }],
        blacklist: vec![FlowFilter {
            http_path: s(&["/admin"]),
            ..Default::default()
        }],
        ..Default::default()
    });
    // The REQUEST flow (the RESPONSE comes from ledger, so the source filters leave it out): no status yet.
    assert_eq!(
        gets.iter().map(http).collect::<Vec<_>>(),
        vec![(
            "GET".to_string(),
            format!("http://{LEDGER}:8080/books/v2/entries"),
            0
        )]
    );
    assert_eq!(gets[0].verdict, Verdict::Forwarded as i32);
    let reporter = setup.get_flows(GetFlowsRequest {
        whitelist: vec![FlowFilter {
            source_label: s(&["k8s:app=reporter"]),
            ..Default::default()
        }],
        ..Default::default()
    });
    assert_eq!(reporter.len(), 2, "policy verdict + drop: {reporter:#?}");
    assert!(
        reporter
            .iter()
            .all(|f| f.verdict == Verdict::Dropped as i32)
    );
    let last_two = setup.get_flows(GetFlowsRequest {
        number: 2,
        ..Default::default()
    });
    assert_eq!(
        last_two.iter().map(|f| &f.uuid).collect::<Vec<_>>(),
        all[all.len() - 2..]
            .iter()
            .map(|f| &f.uuid)
            .collect::<Vec<_>>()
    );
    let status = setup.in_node(|| {
        rt().block_on(async {
            let mut c = ObserverClient::connect(format!("http://{OBSERVER}"))
                .await
                .unwrap();
            c.server_status(ServerStatusRequest {})
                .await
                .unwrap()
                .into_inner()
        })
    });
    assert_eq!(
        (status.num_flows, status.seen_flows, status.max_flows),
        (4, 4, 4096)
    );

    // (b) Python grpcio, stubs generated from the same .proto files at test time.
    require_tool("python3");
    let proto = workspace_root().join("proxy/proto");
    let script = workspace_root().join("tests/python/observer_client.py");
    let py = |request: &str| -> Vec<Value> {
        let out = setup.node_output(
            "python3",
            &[
                script.to_str().unwrap(),
                "--proto-dir",
                proto.to_str().unwrap(),
                "--server",
                OBSERVER,
                "--request",
                request,
            ],
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let flows = py(
        r#"{"whitelist": [{"source_pod": ["billing/portal"], "http_status_code": ["4+"]}],
            "blacklist": [{"http_method": ["DELETE"]}]}"#,
    );
    assert_eq!(flows.len(), 1, "{flows:#?}");
    assert_eq!(flows[0]["verdict"], "DROPPED");
    assert_eq!(flows[0]["drop_reason_desc"], "POLICY_DENIED");
    assert_eq!(
        flows[0]["l7"]["http"]["url"],
        format!("http://{LEDGER}:8080/admin")
    );
    assert_eq!(flows[0]["l7"]["http"]["code"], 403);
    assert_eq!(flows[0]["source"]["pod_name"], "portal");
    assert_eq!(flows[0]["IP"]["destination"], LEDGER);
    assert_eq!(flows[0]["l4"]["TCP"]["destination_port"], 8080);
    assert_eq!(flows[0]["uuid"], dropped_http[1].uuid);
    let forwarded = py(r#"{"whitelist": [{"verdict": ["FORWARDED"]}]}"#);
    assert_eq!(
        forwarded.len(),
        3,
        "verdict, request, response: {forwarded:#?}"
    );
    assert_eq!(forwarded[2]["is_reply"], true, "{forwarded:#?}");

    // `tollgate observe --verdict DROPPED -o json` (and compact, for the README sample).
    let out = setup.node_output(
        tollgate_bin(),
        &[
            "observe",
            "--server",
            OBSERVER,
            "--verdict",
            "DROPPED",
            "-o",
            "json",
        ],
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .filter(|v: &Value| v["flow"]["event_type"]["type"] != POLICY_VERDICT)
        .collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines.iter().all(|l| l["flow"]["verdict"] == "DROPPED"));
    assert_eq!(lines[0]["flow"]["l7"]["http"]["method"], "DELETE");
    assert_eq!(lines[0]["flow"]["source"]["namespace"], "billing");
    assert!(lines[0]["node_name"].is_string());
    let compact = setup.node_output(
        tollgate_bin(),
        &["observe", "--server", OBSERVER, "--pod", "billing/portal"],
    );
    let compact = String::from_utf8_lossy(&compact.stdout).to_string();
    eprintln!("tollgate observe --pod billing/portal:\n{compact}");
    let compact_lines: Vec<&str> = compact.lines().collect();
    assert_eq!(compact_lines.len(), 7, "{compact}");
    assert!(
        compact_lines[4].contains("billing/portal:")
            && compact_lines[4].contains(&format!("-> billing/ledger:8080 HTTP/1.1 DELETE http://{LEDGER}:8080/books/v2/entries DROPPED (POLICY_DENIED) policy: ")),
        "{compact}"
    );
    assert!(
        compact_lines[2].contains("<- billing/ledger:8080 HTTP/1.1 200 "),
        "the reply line points back: {compact}"
    );

    // Follow mode: a stream opened now sees a request made afterwards, and nothing from before.
    let followed = setup.in_node(|| {
        rt().block_on(async {
            let mut c = ObserverClient::connect(format!("http://{OBSERVER}"))
                .await
                .unwrap();
            let mut stream = c
                .get_flows(GetFlowsRequest {
                    follow: true,
                    // Replies come from ledger to portal.
                    whitelist: vec![
                        FlowFilter {
                            source_pod: s(&["billing/portal"]),
                            ..Default::default()
                        },
                        FlowFilter {
                            destination_pod: s(&["billing/portal"]),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            // The server subscribed before answering; traffic now must show up.
            let pod = &setup.pods["portal"];
            // Blocking is fine here: the response is buffered by the connection until we poll the stream.
            assert_eq!(curl(pod, "GET", "/books/v2/follow-me"), 200);
            // Policy verdict, request, then the response.
            let mut got = Vec::new();
            for _ in 0..3 {
                got.push(
                    tokio::time::timeout(Duration::from_secs(5), stream.message())
                        .await
                        .expect("follow mode delivered nothing within 5s")
                        .unwrap()
                        .expect("stream ended"),
                );
            }
            got.pop().unwrap()
        })
    });
    let Some(get_flows_response::ResponseTypes::Flow(f)) = followed.response_types else {
        panic!("no flow in {followed:?}");
    };
    assert_eq!(
        http(&f).1,
        format!("http://{LEDGER}:8080/books/v2/follow-me")
    );
    assert_eq!(http(&f).2, 200);

    // /metrics against the traffic: 5 flows, 3 DROPPED (2 HTTP from portal + reporter), 2 FORWARDED HTTP.
    let all = requests(&wait_flows(&setup, 12));
    assert_eq!(all.len(), 5, "{all:#?}");
    let metrics = String::from_utf8_lossy(
        &setup
            .node_output(
                "curl",
                &[
                    "-sS",
                    "--max-time",
                    "5",
                    &format!("http://{METRICS}/metrics"),
                ],
            )
            .stdout,
    )
    .to_string();
    let sum = |prefix: &str, must: &[&str]| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix) && must.iter().all(|m| l.contains(m)))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    for (verdict, n) in [("DROPPED", 3), ("FORWARDED", 2)] {
        let want = all
            .iter()
            .filter(|f| f.verdict == Verdict::from_str_name(verdict).unwrap() as i32)
            .count();
        assert_eq!(want, n, "{all:#?}");
        assert_eq!(
            sum(
                "tollgate_requests_total{",
                &[&format!("verdict=\"{verdict}\"")]
            ) as usize,
            n,
            "{metrics}"
        );
    }
    let portal_id = all[0].source.as_ref().unwrap().identity;
    let ledger_id = all[0].destination.as_ref().unwrap().identity;
    assert_eq!(
        sum(
            "tollgate_requests_total{",
            &[
                "protocol=\"HTTP\"",
                "verdict=\"DROPPED\"",
                &format!("source_identity=\"{portal_id}\""),
                &format!("destination_identity=\"{ledger_id}\"")
            ]
        ),
        2,
        "{metrics}"
    );
    assert_eq!(
        sum(
            "tollgate_request_duration_seconds_count{",
            &["protocol=\"HTTP\"", "verdict=\"FORWARDED\""]
        ),
        2,
        "{metrics}"
    );
    assert!(
        sum("tollgate_drops_total{", &["reason=\"POLICY_DENIED\""]) >= 2,
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_flows_seen_total 5\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_policy_generation 1\n"),
        "{metrics}"
    );
    assert_hubble_families(&metrics, &sum);
    let health = setup.node_output(
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            &format!("http://{METRICS}/healthz"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&health.stdout), "ok\n");
    let ready = setup.node_output(
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            "-w",
            " %{http_code}",
            &format!("http://{METRICS}/readyz"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&ready.stdout), "ready\n 200");

    // The JSON export holds the newest flows (rotation at 2 KiB keeps the live file and 2 older ones).
    let export = setup.dir.path().join("export.json");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = fs::read_to_string(&export).unwrap_or_default();
        if text.contains(&all[4].uuid) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "export never got the last flow: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut exported = Vec::new();
    for name in ["export.json.2", "export.json.1", "export.json"] {
        let p = setup.dir.path().join(name);
        let text = fs::read_to_string(&p).unwrap_or_default();
        assert!(text.len() <= 2048, "{name} is {} bytes", text.len());
        for l in text.lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            exported.push(v["uuid"].as_str().unwrap().to_string());
        }
    }
    assert!(
        setup.dir.path().join("export.json.1").exists(),
        "5 flows of ~600 bytes rotated at least once"
    );
    let newest: Vec<String> = all
        .iter()
        .rev()
        .take(exported.len())
        .rev()
        .map(|f| f.uuid.clone())
        .collect();
    assert_eq!(exported, newest, "export keeps the newest flows in order");

    // `tollgate observe -f -o json`: prints only flows made after it started, as they happen.
    let mut observe = ChildGuard::spawn(
        setup
            .node
            .command(tollgate_bin())
            .args([
                "observe",
                "--server",
                OBSERVER,
                "-f",
                "-o",
                "json",
                "--http-status",
                "2+",
                "--pod",
                "billing/portal",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let stdout = observe.child_mut().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The CLI subscribes asynchronously: request until it shows one (bounded), then check what it printed.
    let mut first = None;
    // A denied request before each allowed one: the `2+` filter must skip it, and history (which has allowed GETs)
    // must not be printed at all.
    for _ in 0..20 {
        assert_eq!(
            curl(&setup.pods["portal"], "DELETE", "/books/v2/entries"),
            403
        );
        assert_eq!(
            curl(
                &setup.pods["portal"],
                "GET",
                "/books/v2/missing-in-nginx-is-fine"
            ),
            200
        );
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            first = Some(line);
            break;
        }
    }
    let first = first.expect("tollgate observe -f printed nothing");
    let v: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(
        v["flow"]["l7"]["http"]["url"],
        format!("http://{LEDGER}:8080/books/v2/missing-in-nginx-is-fine")
    );
    drop(observe);

    setup.proxy.assert_running().unwrap();
}

/// curl from a pod with extra arguments; returns the HTTP status.
fn curl_with(pod: &Pod, args: &[&str]) -> u16 {
    let out = tollgate_e2e::scenario::curl_from(pod, args).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn hubble_compatibility() {
    let mut setup = Setup::new("hubble");
    let url = format!("http://{OBSERVER}");
    // `hubble status`: health first, then ServerStatus; `hubble list nodes`: GetNodes.
    let (health, unknown, status, nodes) = setup.in_node(|| {
        rt().block_on(async {
            let mut h = HealthClient::connect(url.clone()).await.unwrap();
            let mut st = Vec::new();
            for service in ["hubble.server.Observer", ""] {
                let r = h
                    .check(HealthCheckRequest {
                        service: service.into(),
                    })
                    .await
                    .unwrap();
                st.push(r.into_inner().status);
            }
            let unknown = h
                .check(HealthCheckRequest {
                    service: "nope".into(),
                })
                .await
                .unwrap_err()
                .code();
            let mut c = ObserverClient::connect(url.clone()).await.unwrap();
            let status = c
                .server_status(ServerStatusRequest {})
                .await
                .unwrap()
                .into_inner();
            let nodes = c.get_nodes(GetNodesRequest {}).await.unwrap().into_inner();
            (st, unknown, status, nodes)
        })
    });
    assert_eq!(health, [ServingStatus::Serving as i32; 2]);
    assert_eq!(unknown, tonic::Code::NotFound);
    assert!(status.version.starts_with("tollgate "), "{status:?}");
    assert_eq!(
        (
            status.num_connected_nodes,
            status.num_unavailable_nodes,
            status.max_flows
        ),
        (Some(1), Some(0), 4096)
    );
    assert!(status.uptime_ns > 0);
    assert_eq!(nodes.nodes.len(), 1, "{nodes:?}");
    let node = &nodes.nodes[0];
    assert_eq!(node.state, NodeState::NodeConnected as i32);
    assert_eq!(node.address, OBSERVER);
    assert!(node.version.starts_with("tollgate ") && !node.name.is_empty());

    // Traffic: allowed (with a traceparent), denied by L7 rules, refused at the connection.
    let portal = &setup.pods["portal"];
    let traceparent = "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let entries = format!("http://{LEDGER}:8080/books/v2/entries");
    assert_eq!(curl_with(portal, &["-H", traceparent, &entries]), 200);
    assert_eq!(curl(portal, "DELETE", "/books/v2/entries"), 403);
    assert_ne!(
        curl(&setup.pods["reporter"], "GET", "/books/v2/entries"),
        200
    );
    let all = wait_flows(&setup, 7);
    assert_eq!(all.len(), 7, "{all:#?}");
    let event = |f: &Flow| f.event_type.as_ref().unwrap().r#type;
    assert_eq!(
        all.iter().map(event).collect::<Vec<_>>(),
        [5, 129, 129, 5, 129, 5, 1],
        "{all:#?}"
    );
    let (pv, req, resp) = (&all[0], &all[1], &all[2]);
    assert_eq!(pv.verdict, Verdict::Forwarded as i32);
    let by = &pv.ingress_allowed_by;
    assert_eq!(by.len(), 1, "{pv:#?}");
    assert_eq!(
        (
            by[0].name.as_str(),
            by[0].namespace.as_str(),
            by[0].kind.as_str(),
            by[0].revision
        ),
        ("ledger-http", "billing", "CiliumNetworkPolicy", 1)
    );
    assert_eq!(req.summary, format!("HTTP/1.1 GET {entries}"));
    assert_eq!(req.is_reply, Some(false));
    assert_eq!(req.l7.as_ref().unwrap().r#type, L7FlowType::Request as i32);
    assert_eq!(
        req.trace_context
            .as_ref()
            .unwrap()
            .parent
            .as_ref()
            .unwrap()
            .trace_id,
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert!(
        req.node_labels
            .iter()
            .any(|l| l.starts_with("kubernetes.io/hostname="))
    );
    assert_eq!(resp.is_reply, Some(true));
    assert_eq!(
        resp.l7.as_ref().unwrap().r#type,
        L7FlowType::Response as i32
    );
    assert!(
        resp.summary.starts_with("HTTP/1.1 200 ")
            && resp.summary.ends_with(&format!("ms (GET {entries})")),
        "{}",
        resp.summary
    );
    assert_eq!(resp.source.as_ref().unwrap().pod_name, "ledger");
    let denied_pv = &all[3];
    assert_eq!(denied_pv.verdict, Verdict::Dropped as i32);
    assert_eq!(denied_pv.drop_reason, 133);
    assert_eq!(denied_pv.ingress_denied_by.len(), 1, "{denied_pv:#?}");
    assert_eq!(denied_pv.ingress_denied_by[0].name, "ledger-http");
    assert_eq!(all[4].summary, format!("HTTP/1.1 DELETE {entries}"));
    // Default deny names no policy, as in Cilium.
    assert!(all[5].ingress_denied_by.is_empty() && all[6].r#type == 1);

    // `hubble observe --type policy-verdict`, replies only, and a field mask.
    let pvs = setup.get_flows(GetFlowsRequest {
        whitelist: vec![FlowFilter {
            event_type: vec![EventTypeFilter {
                r#type: POLICY_VERDICT,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    });
    assert_eq!(pvs.len(), 3);
    let replies = setup.get_flows(GetFlowsRequest {
        whitelist: vec![FlowFilter {
            reply: vec![true],
            ..Default::default()
        }],
        ..Default::default()
    });
    assert_eq!(
        replies.iter().map(|f| &f.uuid).collect::<Vec<_>>(),
        [&resp.uuid]
    );
    let masked = setup.get_flows(GetFlowsRequest {
        experimental: Some(Experimental {
            field_mask: Some(prost_types::FieldMask {
                paths: s(&["time", "verdict", "l7.http.url"]),
            }),
        }),
        ..Default::default()
    });
    assert_eq!(masked.len(), 7);
    assert_eq!(masked[1].time, req.time);
    assert!(
        masked[1].source.is_none() && masked[1].summary.is_empty() && masked[1].uuid.is_empty()
    );
    assert_eq!(http(&masked[1]).1, entries);

    // first / since / until.
    let first = setup.get_flows(GetFlowsRequest {
        number: 2,
        first: true,
        ..Default::default()
    });
    assert_eq!(
        first.iter().map(|f| &f.uuid).collect::<Vec<_>>(),
        [&pv.uuid, &req.uuid]
    );
    let window = setup.get_flows(GetFlowsRequest {
        since: all[3].time,
        until: all[4].time,
        ..Default::default()
    });
    assert_eq!(
        window.iter().map(|f| &f.uuid).collect::<Vec<_>>(),
        [&all[3].uuid, &all[4].uuid]
    );

    // Agent events: the start and the loaded policy, then an endpoint added by a live update.
    let (history, update) = setup.in_node(|| {
        rt().block_on(async {
            let mut c = ObserverClient::connect(url.clone()).await.unwrap();
            let mut history = Vec::new();
            let mut s = c.get_agent_events(GetAgentEventsRequest::default()).await.unwrap().into_inner();
            while let Some(e) = s.message().await.unwrap() {
                history.push(e.agent_event.unwrap());
            }
            let mut live = c
                .get_agent_events(GetAgentEventsRequest {
                    follow: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let eps = fs::read_to_string(setup.dir.path().join("endpoints.yaml")).unwrap();
            let added = eps.replacen(
                "endpoints:\n",
                "endpoints:\n- {name: auditor, namespace: billing, labels: {app: auditor}, ip: 10.0.21.30}\n",
                1,
            );
            assert_ne!(added, eps, "endpoints.yaml starts with `endpoints:`: {eps}");
            setup.dir.write("endpoints.yaml", &added).unwrap();
            let mut update = Vec::new();
            while update.len() < 2 {
                let e = tokio::time::timeout(Duration::from_secs(10), live.message())
                    .await
                    .expect("no agent event within 10s of the endpoints update")
                    .unwrap()
                    .expect("stream ended");
                update.push(e.agent_event.unwrap());
            }
            (history, update)
        })
    });
    let types =
        |v: &[tollgate::hubble::flow::AgentEvent]| v.iter().map(|e| e.r#type).collect::<Vec<_>>();
    assert_eq!(
        types(&history),
        [
            AgentEventType::AgentStarted as i32,
            AgentEventType::PolicyUpdated as i32
        ]
    );
    assert_eq!(
        types(&update),
        [
            AgentEventType::EndpointCreated as i32,
            AgentEventType::PolicyUpdated as i32
        ],
        "{update:#?}"
    );
    let Some(agent_event::Notification::EndpointUpdate(ep)) = &update[0].notification else {
        panic!("{update:#?}");
    };
    assert_eq!(
        (ep.namespace.as_str(), ep.pod_name.as_str()),
        ("billing", "auditor")
    );
    let Some(agent_event::Notification::PolicyUpdate(p)) = &update[1].notification else {
        panic!("{update:#?}");
    };
    assert_eq!(p.revision, 2);
    setup.proxy.assert_running().unwrap();
    tollgate_e2e::hold_for_hand_check(&format!(
        "observer at {OBSERVER} in netns {}",
        setup.node.netns.name()
    ));
}

/// Cilium's syntax, with context labels on httpV2 (the other families keep Cilium's defaults).
const HUBBLE_METRICS: &str = "dns;drop;flow;httpV2:sourceContext=workload-name;destinationContext=pod|identity;labelsContext=source_namespace,destination_namespace;policy";

/// Each hubble_* family with Cilium's labels, after the traffic of `flows_are_queryable_followable_exported_and_counted`:
/// portal GET 200 twice, DELETE 403 and GET /admin 403 (policy-denied requests), reporter's connection refused.
fn assert_hubble_families(metrics: &str, sum: &dyn Fn(&str, &[&str]) -> u64) {
    let flows = "hubble_flows_processed_total{";
    assert_eq!(
        sum(
            flows,
            &["type=\"L7\"", "subtype=\"http\"", "verdict=\"FORWARDED\""]
        ),
        2,
        "{metrics}"
    );
    assert_eq!(
        sum(
            flows,
            &["type=\"L7\"", "subtype=\"http\"", "verdict=\"DROPPED\""]
        ),
        2,
        "{metrics}"
    );
    assert_eq!(
        sum(
            flows,
            &["type=\"L3_L4\"", "subtype=\"\"", "verdict=\"DROPPED\""]
        ),
        1,
        "{metrics}"
    );
    assert!(
        sum(
            "hubble_drop_total{",
            &["reason=\"POLICY_DENIED\"", "protocol=\"TCP\""]
        ) >= 2,
        "{metrics}"
    );
    assert_eq!(
        sum("hubble_drop_total{", &[]),
        sum("tollgate_drops_total{", &[]),
        "{metrics}"
    );
    let portal_to_ledger = [
        "source=\"portal\"",
        "destination=\"billing/ledger\"",
        "source_namespace=\"billing\"",
        "destination_namespace=\"billing\"",
    ];
    let http = |extra: &[&'static str]| {
        let mut must = vec!["protocol=\"HTTP/1.1\""];
        must.extend(extra);
        must.extend(portal_to_ledger);
        must
    };
    let req = "hubble_http_requests_total{";
    assert_eq!(
        sum(req, &http(&["method=\"GET\"", "status=\"200\""])),
        2,
        "{metrics}"
    );
    assert_eq!(
        sum(req, &http(&["method=\"GET\"", "status=\"403\""])),
        1,
        "{metrics}"
    );
    assert_eq!(
        sum(req, &http(&["method=\"DELETE\"", "status=\"403\""])),
        1,
        "{metrics}"
    );
    let dur = "hubble_http_request_duration_seconds_count{";
    assert_eq!(sum(dur, &http(&["method=\"GET\""])), 3, "{metrics}");
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("hubble_http_request"))
    {
        assert!(
            l.contains("reporter=\"client\"") || l.contains("reporter=\"server\""),
            "{l}"
        );
        assert!(
            !l.starts_with("hubble_http_request_duration") || !l.contains("status="),
            "{l}"
        );
    }
    let verdicts = "hubble_policy_verdicts_total{";
    assert_eq!(
        sum(verdicts, &["match=\"l7/http\"", "action=\"forwarded\""]),
        2,
        "{metrics}"
    );
    assert_eq!(
        sum(verdicts, &["match=\"l7/http\"", "action=\"dropped\""]),
        2,
        "{metrics}"
    );
    assert_eq!(
        sum(verdicts, &["match=\"l3-l4\"", "action=\"dropped\""]),
        1,
        "{metrics}"
    );
    for l in metrics.lines().filter(|l| l.starts_with(verdicts)) {
        assert!(
            l.contains("direction=\"ingress\"") || l.contains("direction=\"egress\""),
            "{l}"
        );
    }
    // No DNS traffic here: the families are declared (dns_e2e carries the DNS traffic).
    for family in ["hubble_dns_queries_total", "hubble_dns_responses_total"] {
        assert!(
            metrics.contains(&format!("# TYPE {family} counter\n")),
            "{metrics}"
        );
    }
}

/// Cilium's dynamic exporter shape (issue 18 item 4): named exports with their own filters and field masks, taken
/// from a file that is re-read without a restart; a bad edit is refused with its place named, and the exports
/// already running carry on.
#[test]
fn dynamic_flow_logs_follow_their_config_without_restart() {
    let mut setup = Setup::new("flowlogs-dyn");
    let portal = &setup.pods["portal"];
    assert_eq!(curl(portal, "GET", "/books/v2/entries"), 200);
    assert_eq!(curl(portal, "DELETE", "/books/v2/entries"), 403);
    let drops_path = setup.dir.path().join("drops.log");
    let drops = flow_log_lines(&drops_path, 1);
    assert!(
        drops.iter().all(|l| l["flow"]["verdict"] == "DROPPED"),
        "only drops: {drops:#?}"
    );
    assert!(
        drops
            .iter()
            .any(|l| l["flow"]["l7"]["http"]["method"] == "DELETE"),
        "{drops:#?}"
    );
    assert!(
        drops
            .iter()
            .all(|l| l["node_name"].as_str().is_some_and(|n| !n.is_empty()))
    );

    // A bad edit: refused by name and place; the drops export keeps running.
    setup
        .dir
        .write(
            "flowlogs.yaml",
            "flowLogs:\n  - name: gets\n    filePath: /tmp/x\n    includeFilter: []\n",
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !setup.stderr().contains("flow-log config") {
        assert!(
            Instant::now() < deadline,
            "bad edit not reported: {}",
            setup.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = setup.stderr();
    assert!(
        err.contains("flowlogs.yaml: flowLogs[0]: unknown field `includeFilter`"),
        "{err}"
    );
    assert!(
        err.contains("the previous flow-log configuration stays in force"),
        "{err}"
    );
    assert_eq!(curl(portal, "GET", "/admin"), 403);
    flow_log_lines(&drops_path, drops.len() + 1);

    // A good edit adds a masked export of GETs; no restart.
    let gets_path = setup.dir.path().join("gets.log");
    let config = format!(
        "{}  - name: gets\n    filePath: {}\n    fieldMask: [verdict, l7.http.method, l7.http.url]\n    \
         includeFilters:\n      - http_method: [GET]\n        source_pod: [billing/portal]\n",
        drops_only_flow_logs(&setup.dir),
        gets_path.display()
    );
    setup.dir.write("flowlogs.yaml", &config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !setup.stderr().contains("flow logs reconfigured") {
        assert!(
            Instant::now() < deadline,
            "good edit not taken: {}",
            setup.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(curl(portal, "GET", "/books/v2/entries?after-reload"), 200);
    let gets = flow_log_lines(&gets_path, 1);
    let urls: Vec<&str> = gets
        .iter()
        .filter_map(|l| l["flow"]["l7"]["http"]["url"].as_str())
        .collect();
    assert!(
        urls.iter().any(|u| u.ends_with("?after-reload")),
        "{gets:#?}"
    );
    for l in &gets {
        assert!(l["flow"].get("source").is_none(), "masked: {l}");
        assert!(l["time"].as_str().is_some_and(|t| !t.is_empty()), "{l}");
    }
    setup.proxy.assert_running().expect("no restart");
}
