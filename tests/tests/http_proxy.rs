//! End-to-end: `tollgate run` on a node netns, pods steered to it with iptables TPROXY, real nginx / grpcio
//! servers and real curl / h2load / grpcio clients. Policies, endpoints and expectations come straight from
//! policy-model/conformance/{http-ledger,grpc-library}.yaml.
//!
//! Needs root, iptables (TPROXY + socket match), nginx, curl, h2load, python3 with grpcio + grpcio-tools.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_e2e::{
    ChildGuard, Nginx, Node, Pod, TempDir, conformance_dir, require_root, require_tool,
    tollgate_bin,
};

const PROXY_PORT: u16 = 15001;

/// A conformance case file, as JSON.
struct CaseFile {
    doc: Value,
}

impl CaseFile {
    fn load(name: &str) -> Self {
        let path = conformance_dir().join(name);
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let doc: Value = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
        CaseFile { doc }
    }

    /// The `policies:` list as a multi-document YAML file, the way a user would write it.
    fn policies_yaml(&self) -> String {
        self.doc["policies"]
            .as_array()
            .expect("policies: list")
            .iter()
            .map(|p| serde_yaml::to_string(p).unwrap())
            .collect::<Vec<_>>()
            .join("---\n")
    }

    fn endpoints_yaml(&self) -> String {
        serde_yaml::to_string(&serde_json::json!({ "endpoints": self.doc["endpoints"] })).unwrap()
    }

    /// `namespace/name` -> (name, ip)
    fn endpoints(&self) -> BTreeMap<String, (String, String)> {
        self.doc["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let ns = e["namespace"].as_str().unwrap();
                let name = e["name"].as_str().unwrap();
                (
                    format!("{ns}/{name}"),
                    (name.to_string(), e["ip"].as_str().unwrap().to_string()),
                )
            })
            .collect()
    }

    fn cases(&self) -> Vec<Value> {
        self.doc["cases"].as_array().unwrap().clone()
    }
}

/// A node with one pod per conformance endpoint, tollgate running in the node netns and TPROXY steering every pod
/// TCP connection to it.
struct Cluster {
    // Drop order: proxy first, then pods, then the node.
    proxy: Option<ChildGuard>,
    pods: BTreeMap<String, Pod>,
    node: Node,
    dir: TempDir,
    redirect: Redirect,
    /// Daemon flags beyond the common ones (limits a test tightens).
    extra_args: Vec<String>,
}

/// How pod traffic is steered to the proxy in the node netns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Redirect {
    /// iptables mangle TPROXY to an IP_TRANSPARENT listener (`--redirect tproxy`).
    Tproxy,
    /// iptables nat REDIRECT, original destination from SO_ORIGINAL_DST (`--redirect so-original-dst`).
    NatRedirect,
}

impl Cluster {
    fn new(tag: &str, case: &CaseFile) -> Self {
        Self::with_redirect(tag, case, Redirect::Tproxy)
    }

    fn with_redirect(tag: &str, case: &CaseFile, redirect: Redirect) -> Self {
        Self::with_args(tag, case, redirect, &[])
    }

    fn with_args(tag: &str, case: &CaseFile, redirect: Redirect, extra_args: &[&str]) -> Self {
        require_root();
        require_tool("iptables");
        let mut node = Node::new(tag).unwrap();
        let mut pods = BTreeMap::new();
        for (key, (name, ip)) in case.endpoints() {
            pods.insert(key, node.add_pod(&name, &ip).unwrap());
        }
        let dir = TempDir::new(tag).unwrap();
        dir.write("policy.yaml", &case.policies_yaml()).unwrap();
        dir.write("endpoints.yaml", &case.endpoints_yaml()).unwrap();
        // TPROXY in the node netns (see `tproxy_all_tcp`), or REDIRECT: conntrack rewrites the destination to the
        // proxy port and SO_ORIGINAL_DST gives it back.
        match redirect {
            Redirect::Tproxy => tollgate_e2e::tproxy_all_tcp(&node, PROXY_PORT).unwrap(),
            Redirect::NatRedirect => {
                node.netns
                    .sh(&format!(
                        "iptables -t nat -A PREROUTING -p tcp -j REDIRECT --to-ports {PROXY_PORT}"
                    ))
                    .unwrap();
            }
        }
        let mut c = Cluster {
            proxy: None,
            pods,
            node,
            dir,
            redirect,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        };
        c.start_proxy();
        c
    }

    fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.yaml")
    }

    fn flow_path(&self) -> PathBuf {
        self.dir.path().join("flows.jsonl")
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("tollgate.stderr")
    }

    fn start_proxy(&mut self) {
        let stderr = fs::File::create(self.stderr_path()).unwrap();
        let mut cmd = self.node.command(tollgate_bin());
        cmd.args([
            "run",
            "--listen",
            &format!("0.0.0.0:{PROXY_PORT}"),
            "--recheck-secs",
            "1",
        ])
        .arg("--policy")
        .arg(self.policy_path())
        .arg("--endpoints")
        .arg(self.dir.path().join("endpoints.yaml"))
        .arg("--flow-log")
        .arg(self.flow_path())
        // Each test's daemon has its own handoff socket: the default path is shared by every netns on the host,
        // and a daemon starting in one test would otherwise take over another test's listener.
        .arg("--handoff-socket")
        .arg(self.dir.path().join("handoff.sock"))
        .arg("--redirect")
        .arg(match self.redirect {
            Redirect::Tproxy => "tproxy",
            Redirect::NatRedirect => "so-original-dst",
        })
        .args(&self.extra_args)
        .env(
            "TOLLGATE_LOG",
            std::env::var("TOLLGATE_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(stderr);
        let mut proxy = ChildGuard::spawn(&mut cmd).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.stderr().contains("tollgate proxy ready") {
            if let Ok(Some(status)) = proxy.child_mut().try_wait() {
                panic!("tollgate exited with {status}: {}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "tollgate did not become ready: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.proxy = Some(proxy);
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    fn pod(&self, key: &str) -> &Pod {
        self.pods.get(key).unwrap_or_else(|| panic!("no pod {key}"))
    }

    fn flows(&self) -> Vec<Value> {
        let text = fs::read_to_string(self.flow_path()).unwrap_or_default();
        // The writer may be mid-line: only newline-terminated records are complete.
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad flow line {l}: {e}")))
            .collect()
    }

    /// Waits until a flow matching `pred` has been written after the first `after` records (the writer is
    /// asynchronous).
    fn wait_flow(&self, after: usize, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(f) = self.flows().into_iter().skip(after).find(|f| pred(f)) {
                return f;
            }
            assert!(
                Instant::now() < deadline,
                "no flow record for {what}; flows: {:#?}",
                self.flows()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn assert_proxy_running(&mut self) {
        let err = self.stderr();
        self.proxy
            .as_mut()
            .expect("proxy")
            .assert_running()
            .unwrap_or_else(|e| panic!("{e}\n{err}"));
    }
}

fn curl(pod: &Pod, args: &[&str]) -> Output {
    let curl = require_tool("curl");
    pod.command(curl)
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/stderr",
            "-w",
            "%{http_code}",
        ])
        .args(args)
        .output()
        .unwrap()
}

/// HTTP status from a curl run (`None` when no response arrived, e.g. connection reset by a L3/L4 deny).
fn status_of(out: &Output) -> Option<u16> {
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (code != 0).then_some(code)
}

fn http_case_args(case: &Value, ip: &str, port: u64, mode: &str) -> Vec<String> {
    let http = &case["http"];
    let mut args = vec![
        mode.to_string(),
        "-X".into(),
        http["method"].as_str().unwrap().into(),
    ];
    if let Some(h) = http["headers"].as_object() {
        for (k, v) in h {
            args.push("-H".into());
            args.push(format!("{k}: {}", v.as_str().unwrap()));
        }
    }
    args.push(format!(
        "http://{ip}:{port}{}",
        http["path"].as_str().unwrap()
    ));
    args
}

fn src_pod_of(f: &Value) -> String {
    format!(
        "{}/{}",
        f["source"]["namespace"].as_str().unwrap_or(""),
        f["source"]["pod"].as_str().unwrap_or("")
    )
}

/// Replays every http-ledger case with real curl in one HTTP mode, nginx serving that protocol on the case port.
fn replay_http_ledger(mode: &str, redirect: Redirect) {
    replay_http_ledger_with(mode, redirect, &[]);
}

/// [`replay_http_ledger`] with extra daemon flags; gives the cluster back (its daemon still running).
fn replay_http_ledger_with(mode: &str, redirect: Redirect, extra_args: &[&str]) -> Cluster {
    let case_file = CaseFile::load("http-ledger.yaml");
    let mut cluster = Cluster::with_args("httpb", &case_file, redirect, extra_args);
    let endpoints = case_file.endpoints();
    let h2 = mode == "--http2-prior-knowledge";
    // nginx on every pod that is a case target, serving the case port in the client's protocol.
    let mut servers = Vec::new();
    let targets: std::collections::BTreeSet<String> = case_file
        .cases()
        .iter()
        .map(|c| c["to"].as_str().unwrap().to_string())
        .collect();
    for t in &targets {
        let pod = cluster.pod(t);
        servers.push(if h2 {
            Nginx::start(pod, 18080, 8080).unwrap()
        } else {
            Nginx::start(pod, 8080, 18081).unwrap()
        });
    }
    let mut failures = Vec::new();
    for (i, case) in case_file.cases().iter().enumerate() {
        let from = case["from"].as_str().unwrap();
        let to = case["to"].as_str().unwrap();
        let port = case["port"].as_u64().unwrap();
        let expect_allow = case["expect"] == "allow";
        let (_, to_ip) = &endpoints[to];
        let client = cluster.pod(from);
        let args: Vec<String> = if case["http"].is_object() {
            http_case_args(case, to_ip, port, mode)
        } else {
            vec![
                mode.to_string(),
                format!("http://{to_ip}:{port}/l4-probe-{i}"),
            ]
        };
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let before = cluster.flows().len();
        let out = curl(client, &arg_refs);
        let status = status_of(&out);
        let desc = format!("case {i} {from} -> {to}:{port} {} ({mode})", case["http"]);
        // The matching flow record: same source pod and destination port, newest.
        let flow = cluster.wait_flow(before, &desc, |f| {
            src_pod_of(f) == from
                && f["destination"]["port"].as_u64() == Some(port)
                && f["destination"]["ip"] == to_ip.as_str()
        });
        let verdict = flow["verdict"].as_str().unwrap_or("");
        let l7 = flow["l7"]["http"].is_object();
        let ok = if expect_allow {
            status == Some(200) && verdict == "FORWARDED"
        } else if l7 {
            status == Some(403) && verdict == "DROPPED" && flow["l7"]["http"]["code"] == 403
        } else {
            // Denied at L3/L4: the connection is reset, no HTTP response at all.
            status.is_none() && verdict == "DROPPED"
        };
        if !ok {
            failures.push(format!(
                "{desc}: expected {}, curl status {status:?} ({}), flow {flow}",
                case["expect"],
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        if case["http"].is_object() && l7 {
            let url = flow["l7"]["http"]["url"].as_str().unwrap_or("");
            assert!(
                url.ends_with(case["http"]["path"].as_str().unwrap()),
                "{desc}: flow url {url}"
            );
            assert_eq!(
                flow["l7"]["http"]["protocol"],
                if h2 { "HTTP/2" } else { "HTTP/1.1" },
                "{desc}"
            );
            assert!(
                !flow["policy"].as_str().unwrap_or("").is_empty(),
                "{desc}: flow names no rule/policy: {flow}"
            );
        }
    }
    cluster.assert_proxy_running();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        case_file.cases().len(),
        failures.join("\n")
    );
    cluster
}

/// `--worker-threads 1`, what a daemon confined to one CPU runs by default: one thread serves everything (no
/// tokio worker threads at all), and the same cases pass over HTTP/1.1 and h2c.
#[test]
fn http_ledger_cases_on_a_single_threaded_runtime() {
    for mode in ["--http1.1", "--http2-prior-knowledge"] {
        let mut cluster =
            replay_http_ledger_with(mode, Redirect::Tproxy, &["--worker-threads", "1"]);
        let pid = cluster.proxy.as_mut().unwrap().child_mut().id();
        let threads: Vec<String> = fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .map(|t| fs::read_to_string(t.unwrap().path().join("comm")).unwrap())
            .map(|comm| comm.trim().to_string())
            .collect();
        assert!(
            !threads.iter().any(|t| t == "tokio-rt-worker"),
            "{mode}: a single-threaded daemon has no runtime workers: {threads:?}"
        );
    }
}

#[test]
fn http_ledger_cases_over_http1() {
    replay_http_ledger("--http1.1", Redirect::Tproxy);
}

#[test]
fn http_ledger_cases_over_h2c_prior_knowledge() {
    replay_http_ledger("--http2-prior-knowledge", Redirect::Tproxy);
}

/// The same cases with iptables REDIRECT: proves the SO_ORIGINAL_DST source end to end.
#[test]
fn http_ledger_cases_with_nat_redirect_and_so_original_dst() {
    replay_http_ledger("--http1.1", Redirect::NatRedirect);
}

fn python_with_grpc() -> PathBuf {
    let py = require_tool("python3");
    let ok = Command::new(&py)
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "this test needs python3 with grpcio and grpcio-tools: run `sudo ./dev setup` (it pip-installs them)"
    );
    py
}

#[test]
fn grpc_library_cases_with_real_grpc() {
    let py = python_with_grpc();
    let case_file = CaseFile::load("grpc-library.yaml");
    let mut cluster = Cluster::new("grpc", &case_file);
    let endpoints = case_file.endpoints();
    let gdir = TempDir::new("grpcgen").unwrap();
    tollgate_e2e::grpc::write_library_service(gdir.path(), &py).unwrap();
    let mut servers = Vec::new();
    let mut nginxes = Vec::new();
    for case in case_file.cases() {
        let to = case["to"].as_str().unwrap();
        let port = case["port"].as_u64().unwrap() as u16;
        let pod = cluster.pod(to);
        let addr = SocketAddr::new(pod.ip, port);
        if case["grpc"].is_object() || port == 50051 {
            if servers.iter().any(|(a, _)| *a == addr) {
                continue;
            }
            let mut cmd = pod.command(&py);
            cmd.arg(gdir.path().join("server.py"))
                .arg(gdir.path())
                .arg(format!("0.0.0.0:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            servers.push((addr, ChildGuard::spawn(&mut cmd).unwrap()));
            pod.netns
                .wait_for_tcp(addr, Duration::from_secs(15))
                .unwrap();
        } else if !nginxes.iter().any(|(a, _)| *a == addr) {
            nginxes.push((addr, Nginx::start(pod, port, port + 10000).unwrap()));
        }
    }
    let mut failures = Vec::new();
    for (i, case) in case_file.cases().iter().enumerate() {
        let from = case["from"].as_str().unwrap();
        let to = case["to"].as_str().unwrap();
        let port = case["port"].as_u64().unwrap();
        let (_, to_ip) = &endpoints[to];
        let expect_allow = case["expect"] == "allow";
        let client = cluster.pod(from);
        let desc = format!("case {i} {from} -> {to}:{port} {}", case["grpc"]);
        let before = cluster.flows().len();
        if let Some(g) = case["grpc"].as_object() {
            let method = g["method"].as_str().unwrap();
            let out = client
                .command(&py)
                .arg(gdir.path().join("client.py"))
                .arg(gdir.path())
                .arg(format!("{to_ip}:{port}"))
                .arg(method)
                .output()
                .unwrap();
            let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let path = format!("/{}/{method}", g["service"].as_str().unwrap());
            let flow = cluster.wait_flow(before, &desc, |f| {
                f["l7"]["http"]["url"]
                    .as_str()
                    .is_some_and(|u| u.ends_with(&path))
            });
            let ok = if expect_allow {
                line.starts_with("OK ")
                    && flow["verdict"] == "FORWARDED"
                    && flow["protocol"] == "gRPC"
            } else {
                line.starts_with("ERR 7 ")
                    && flow["verdict"] == "DROPPED"
                    && flow["l7"]["http"]["grpc_status"] == 7
            };
            if !ok {
                failures.push(format!(
                    "{desc}: client said {line:?} ({}), flow {flow}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        } else {
            // Connection-level case: a gRPC client for the gRPC port, curl for the rest.
            let (answered, line) = if port == 50051 {
                let out = client
                    .command(&py)
                    .arg(gdir.path().join("client.py"))
                    .arg(gdir.path())
                    .arg(format!("{to_ip}:{port}"))
                    .arg("FetchAlbum")
                    .output()
                    .unwrap();
                let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
                (line.starts_with("OK "), line)
            } else {
                let out = curl(
                    client,
                    &["--http1.1", &format!("http://{to_ip}:{port}/probe-{i}")],
                );
                (
                    status_of(&out) == Some(200),
                    format!("{:?}", status_of(&out)),
                )
            };
            let flow = cluster.wait_flow(before, &desc, |f| {
                src_pod_of(f) == from
                    && f["destination"]["port"].as_u64() == Some(port)
                    && f["destination"]["ip"] == to_ip.as_str()
            });
            let ok = if expect_allow {
                answered && flow["verdict"] == "FORWARDED"
            } else {
                !answered && flow["verdict"] == "DROPPED" && flow["l7"].is_null()
            };
            if !ok {
                failures.push(format!("{desc}: got {line}, flow {flow}"));
            }
        }
    }
    cluster.assert_proxy_running();
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A gRPC request body trickled below the minimum rate ends as gRPC DEADLINE_EXCEEDED (trailers-only, the
/// client's own status), not as an HTTP 408 a gRPC client cannot read, and leaves a DROPPED record naming the limit.
/// A fast stream on the same rule goes through, so the refusal is the rate's doing, not the policy's.
#[test]
fn grpc_body_trickled_below_the_minimum_rate_gets_deadline_exceeded() {
    let py = python_with_grpc();
    let mut case_file = CaseFile::load("grpc-library.yaml");
    case_file.doc["policies"][0]["spec"]["ingress"][0]["toPorts"][0]["rules"]["http"]
        .as_array_mut()
        .expect("grpc-library's http rules")
        .push(serde_json::json!({"method": "POST", "path": "/media.Library/UploadTracks"}));
    let limits = [
        "--request-body-timeout-secs",
        "2",
        "--request-body-min-rate",
        "500",
    ];
    let mut cluster = Cluster::with_args("gtrickle", &case_file, Redirect::Tproxy, &limits);
    let gdir = TempDir::new("grpcgen").unwrap();
    tollgate_e2e::grpc::write_library_service(gdir.path(), &py).unwrap();
    let library = cluster.pod("media/library");
    let addr = SocketAddr::new(library.ip, 50051);
    let mut server = library.command(&py);
    server
        .arg(gdir.path().join("server.py"))
        .arg(gdir.path())
        .arg("0.0.0.0:50051")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = ChildGuard::spawn(&mut server).unwrap();
    library
        .netns
        .wait_for_tcp(addr, Duration::from_secs(15))
        .unwrap();
    let upload = |count: &str, gap: &str| {
        let out = cluster
            .pod("media/player")
            .command(&py)
            .arg(gdir.path().join("trickle.py"))
            .arg(gdir.path())
            .arg(addr.to_string())
            .args([count, gap])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };

    let fast = upload("3", "0.01");
    assert!(fast.starts_with("OK uploaded_3 "), "fast upload: {fast}");

    // 7 bytes every 0.5 s (~14 B/s): behind the 500 B/s rate once the 2 s grace is used up.
    let before = cluster.flows().len();
    let slow = upload("40", "0.5");
    let fields: Vec<&str> = slow.splitn(4, ' ').collect();
    assert_eq!(fields.first(), Some(&"ERR"), "trickled upload: {slow}");
    assert_eq!(fields[1], "4", "DEADLINE_EXCEEDED expected: {slow}");
    let secs: f64 = fields[2].parse().unwrap();
    assert!(
        secs < 15.0,
        "refused by the proxy's rate, not the client's 30 s deadline: {slow}"
    );
    assert!(
        fields[3].contains("too slow"),
        "details name the limit: {slow}"
    );
    let flow = cluster.wait_flow(before, "trickled upload", |f| {
        f["l7"]["http"]["url"]
            .as_str()
            .is_some_and(|u| u.ends_with("/media.Library/UploadTracks"))
    });
    assert_eq!(flow["verdict"], "DROPPED", "{flow:#}");
    assert_eq!(flow["drop_reason"], "LIMIT_EXCEEDED", "{flow:#}");
    assert!(
        flow["policy"]
            .as_str()
            .is_some_and(|p| p.contains("--request-body-min-rate")),
        "{flow:#}"
    );
    cluster.assert_proxy_running();
}

/// Runs a shell snippet in a pod and returns stdout (exit status ignored: error responses are the point).
fn pod_sh(pod: &Pod, script: &str) -> String {
    let out = pod.command("bash").args(["-c", script]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends raw bytes on one TCP connection and returns everything the proxy answered before closing (3 s max).
fn raw_http(pod: &Pod, ip: &str, port: u16, request: &str) -> String {
    let py = require_tool("python3");
    let script = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
s.sendall(sys.argv[3].encode().decode('unicode_escape').encode('latin-1'))
data = b''
try:
    while True:
        chunk = s.recv(65536)
        if not chunk: break
        data += chunk
except Exception:
    pass
sys.stdout.write(data.decode('latin-1'))
"#;
    let out = pod
        .command(py)
        .args(["-c", script, ip, &port.to_string(), request])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn hostile_input_is_refused_and_the_proxy_keeps_serving() {
    let case_file = CaseFile::load("http-ledger.yaml");
    let mut cluster = Cluster::new("hostile", &case_file);
    let nginx = Nginx::start(cluster.pod("billing/ledger"), 8080, 18081).unwrap();
    let client = cluster.pod("billing/portal");
    let base = "http://10.0.21.20:8080";
    let out = curl(client, &["--http1.1", &format!("{base}/books/v2/entries")]);
    assert_eq!(
        status_of(&out),
        Some(200),
        "sanity: {} {} {:?}",
        String::from_utf8_lossy(&out.stderr),
        cluster.stderr(),
        cluster.flows()
    );

    // Oversized header block: 431.
    let big = format!("X-Big: {}", "a".repeat(70 * 1024));
    let out = curl(
        client,
        &["--http1.1", "-H", &big, &format!("{base}/books/v2/entries")],
    );
    assert_eq!(
        status_of(&out),
        Some(431),
        "oversized headers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Too many header fields: 431.
    let mut args: Vec<String> = vec!["--http1.1".into()];
    for i in 0..120 {
        args.push("-H".into());
        args.push(format!("X-H{i}: v"));
    }
    args.push(format!("{base}/books/v2/entries"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(
        status_of(&curl(client, &refs)),
        Some(431),
        "too many headers"
    );

    // Malformed request line: 400.
    let resp = raw_http(client, "10.0.21.20", 8080, "GARBAGE\\r\\n\\r\\n");
    assert!(
        resp.starts_with("HTTP/1.1 400"),
        "malformed request line got {resp:?}"
    );

    // Transfer-Encoding + Content-Length (a smuggling attempt hiding GET /admin): 400, nothing forwarded.
    let smuggle = "PUT /books/v2/entries HTTP/1.1\\r\\nHost: ledger\\r\\nContent-Type: application/json\\r\\n\
                   Content-Length: 4\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\nGET /admin HTTP/1.1\\r\\nHost: ledger\\r\\n\\r\\n";
    let resp = raw_http(client, "10.0.21.20", 8080, smuggle);
    assert!(resp.starts_with("HTTP/1.1 400"), "TE+CL got {resp:?}");
    assert_eq!(
        resp.matches("HTTP/1.1").count(),
        1,
        "the smuggled request must not be answered: {resp:?}"
    );

    // Path tricks: each spelling of a path outside /books/v2/ is denied (or refused), never served.
    for (path, want) in [
        ("/books/v2/../admin", 403),
        ("/books/v2/../../admin", 403),
        ("/books/v2/%2e%2e/%2e%2e/admin", 403),
        ("/books/v2/%2E%2E/%2E%2E/admin", 403),
        ("//admin", 403),
        ("/books/v2/..%2F..%2Fadmin", 400),
        ("/books/v2/%2e%2e%2fadmin", 400),
        ("/books/v2/..\\..\\admin", 400),
    ] {
        let out = curl(
            client,
            &["--http1.1", "--path-as-is", &format!("{base}{path}")],
        );
        assert_eq!(
            status_of(&out),
            Some(want),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = curl(
            client,
            &[
                "--http2-prior-knowledge",
                "--path-as-is",
                &format!("{base}{path}"),
            ],
        );
        // Over h2 the same request is refused the same way (the upstream is HTTP/1-only here, so only denials
        // can be checked: the request must never be forwarded).
        assert_eq!(
            status_of(&out),
            Some(want),
            "h2 {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // What the server sees is the normalized path that was checked.
    let out = curl(
        client,
        &[
            "--http1.1",
            "--path-as-is",
            &format!("{base}/books/v2/./x/../entries"),
        ],
    );
    assert_eq!(status_of(&out), Some(200));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "ledger GET /books/v2/entries\n"
    );
    let access = fs::read_to_string(nginx.dir.path().join("access.log")).unwrap();
    assert!(
        !access.contains("admin"),
        "a denied path reached the server:\n{access}"
    );

    // The proxy is still up and serving other connections.
    let out = curl(client, &["--http1.1", &format!("{base}/books/v2/entries")]);
    assert_eq!(status_of(&out), Some(200));
    assert!(pod_sh(client, "echo ok").contains("ok"));
    let flows = cluster.flows();
    for code in [431, 400, 403] {
        assert!(
            flows
                .iter()
                .any(|f| f["verdict"] == "DROPPED" && f["l7"]["http"]["code"] == code),
            "no DROPPED flow record with code {code}: {flows:#?}"
        );
    }
    cluster.assert_proxy_running();
}

/// Issue 22's request-level bypasses against the real daemon with raw sockets: two hosts in one request, path
/// spellings backends resolve past the policy, and the framing guard after leading empty lines and after a
/// declined (h2c) upgrade. Each gets 400 and a DROPPED record naming why; nothing reaches the server.
#[test]
fn host_path_and_framing_bypasses_are_refused() {
    let case_file = CaseFile::load("http-ledger.yaml");
    let mut cluster = Cluster::new("bypass", &case_file);
    let nginx = Nginx::start(cluster.pod("billing/ledger"), 8080, 18082).unwrap();
    let client = cluster.pod("billing/portal");
    let ok = raw_http(
        client,
        "10.0.21.20",
        8080,
        "GET /books/v2/entries HTTP/1.1\\r\\nHost: ledger\\r\\nConnection: close\\r\\n\\r\\n",
    );
    assert!(
        ok.starts_with("HTTP/1.1 200"),
        "sanity: {ok:?} {}",
        cluster.stderr()
    );

    let smuggle = "PUT /books/v2/entries HTTP/1.1\\r\\nHost: ledger\\r\\nContent-Type: application/json\\r\\n\
                   Content-Length: 4\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\nGET /admin HTTP/1.1\\r\\nHost: ledger\\r\\n\\r\\n";
    let h2c = "GET /books/v2/entries HTTP/1.1\\r\\nHost: ledger\\r\\nUpgrade: h2c\\r\\n\
               Connection: Upgrade, HTTP2-Settings\\r\\nHTTP2-Settings: AAMAAABkAAQAAP__\\r\\n\\r\\n";
    let cases: Vec<(&str, String, usize)> = vec![
        (
            "absolute-form authority differs from Host",
            "GET http://ledger/books/v2/entries HTTP/1.1\\r\\nHost: evil.internal\\r\\n\\r\\n"
                .into(),
            0,
        ),
        (
            "two Host headers",
            "GET /books/v2/entries HTTP/1.1\\r\\nHost: ledger\\r\\nHost: evil.internal\\r\\n\\r\\n"
                .into(),
            0,
        ),
        (
            "dot segment with parameters",
            "GET /books/v2/..;/admin HTTP/1.1\\r\\nHost: ledger\\r\\n\\r\\n".into(),
            0,
        ),
        (
            "encoded dot segment with parameters",
            "GET /books/v2/%2e%2e%3b/admin HTTP/1.1\\r\\nHost: ledger\\r\\n\\r\\n".into(),
            0,
        ),
        (
            "double-encoded dots",
            "GET /books/v2/%252e%252e/admin HTTP/1.1\\r\\nHost: ledger\\r\\n\\r\\n".into(),
            0,
        ),
        (
            "overlong UTF-8 dots",
            "GET /books/v2/%C0%AE%C0%AE/admin HTTP/1.1\\r\\nHost: ledger\\r\\n\\r\\n".into(),
            0,
        ),
        (
            "leading empty lines, then TE+CL",
            format!("\\r\\n\\r\\n{smuggle}"),
            0,
        ),
        (
            "declined h2c upgrade, then TE+CL",
            format!("{h2c}{smuggle}"),
            1,
        ),
    ];
    for (what, request, answered_before) in &cases {
        let resp = raw_http(client, "10.0.21.20", 8080, request);
        let statuses: Vec<&str> = resp
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| &resp[i + 9..i + 12])
            .collect();
        let mut want = vec!["200"; *answered_before];
        want.push("400");
        assert_eq!(statuses, want, "{what}: {resp:?}");
    }
    let access = fs::read_to_string(nginx.dir.path().join("access.log")).unwrap();
    assert!(
        !access.contains("admin"),
        "a refused request reached the server:\n{access}"
    );
    let flows = cluster.flows();
    for needle in [
        "Host headers",
        "Host header says",
        "dot segment",
        "double-encoded",
        "UTF-8",
    ] {
        assert!(
            flows.iter().any(|f| f["verdict"] == "DROPPED"
                && f["drop_reason"] == "INVALID_REQUEST"
                && f["policy"].as_str().is_some_and(|p| p.contains(needle))),
            "no DROPPED INVALID_REQUEST record naming {needle:?}: {flows:#?}"
        );
    }
    cluster.assert_proxy_running();
}

/// Parses h2load's summary into (done, succeeded-ish 2xx, 4xx, 5xx, errored).
fn h2load_summary(text: &str) -> (u64, u64, u64, u64, u64) {
    let num_before = |line: &str, word: &str| -> u64 {
        let words: Vec<&str> = line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|w| !w.is_empty())
            .collect();
        words
            .windows(2)
            .find(|w| w[1] == word)
            .and_then(|w| w[0].parse().ok())
            .unwrap_or(u64::MAX)
    };
    let req = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("no requests line in {text}"));
    let codes = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or_else(|| panic!("no status line in {text}"));
    (
        num_before(req, "done"),
        num_before(codes, "2xx"),
        num_before(codes, "4xx"),
        num_before(codes, "5xx"),
        num_before(req, "errored"),
    )
}

/// Issue 19: the flow log keeps every request at full load. h2load sends a fixed number of requests as fast as the
/// proxy answers them, allowed and denied alternating (HTTP/1.1 keep-alive over 16 connections, then HTTP/2 with
/// 4 connections x 10 streams); the flow-log file must then hold exactly one record per request, by verdict.
#[test]
fn flow_log_keeps_every_request_at_full_load() {
    const N: usize = 20_000;
    let h2load = require_tool("h2load");
    let case_file = CaseFile::load("http-ledger.yaml");
    let mut cluster = Cluster::new("fullload", &case_file);
    let urls = [
        "http://10.0.21.20:8080/books/v2/entries",
        "http://10.0.21.20:8080/admin",
    ];
    // The policy names port 8080 only: nginx serves it as HTTP/1.1 first, then as h2c.
    for (protocol, http1_port, h2c_port, args) in [
        ("HTTP/1.1", 8080, 18080, &["--h1", "-c", "16"][..]),
        ("HTTP/2", 18080, 8080, &["-c", "4", "-m", "10"][..]),
    ] {
        let nginx = Nginx::start(cluster.pod("billing/ledger"), http1_port, h2c_port).unwrap();
        let before = cluster.flows().len();
        let out = cluster
            .pod("billing/portal")
            .command(&h2load)
            .args(["-n", &N.to_string()])
            .args(args)
            .args(urls)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "h2load failed: {text}");
        let (done, ok, denied, server_err, errored) = h2load_summary(&text);
        assert_eq!(
            (done, ok, denied, server_err, errored),
            (N as u64, N as u64 / 2, N as u64 / 2, 0, 0),
            "{protocol}: every request answered, half allowed: {text}"
        );
        // Records are written off the data path: wait (bounded) for the writer, then count exactly.
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster.flows().len() < before + N && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(300));
        let flows: Vec<Value> = cluster.flows().into_iter().skip(before).collect();
        let count = |verdict: &str| {
            flows
                .iter()
                .filter(|f| f["verdict"] == verdict && f["l7"]["http"]["protocol"] == protocol)
                .count()
        };
        assert_eq!(
            (flows.len(), count("FORWARDED"), count("DROPPED")),
            (N, N / 2, N / 2),
            "{protocol}: one record per request, none lost"
        );
        drop(nginx);
    }
    cluster.assert_proxy_running();
}

#[test]
fn hot_reload_under_h2_load_applies_to_open_connections() {
    let h2load = require_tool("h2load");
    let case_file = CaseFile::load("http-ledger.yaml");
    let mut cluster = Cluster::new("reload", &case_file);
    let _nginx = Nginx::start(cluster.pod("billing/ledger"), 18080, 8080).unwrap();
    let url = "http://10.0.21.20:8080/books/v2/entries";
    let original = case_file.policies_yaml();

    // 1. An invalid update is rejected with file/document/field and the old policy keeps enforcing.
    let policy_path = cluster.policy_path();
    fs::write(&policy_path, "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: broken, namespace: billing}\nspec: {endpointSelector: 7}\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.stderr().contains("policy update rejected") {
        assert!(
            Instant::now() < deadline,
            "invalid update not reported: {}",
            cluster.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let err = cluster.stderr();
    let line = err
        .lines()
        .find(|l| l.contains("policy update rejected"))
        .unwrap();
    assert!(
        line.contains(&policy_path.display().to_string()),
        "error must name the file: {line}"
    );
    assert!(
        line.contains("document"),
        "error must name the document: {line}"
    );
    let out = curl(
        cluster.pod("billing/portal"),
        &["--http2-prior-knowledge", url],
    );
    assert_eq!(
        status_of(&out),
        Some(200),
        "previous policy must keep enforcing"
    );
    fs::write(&policy_path, &original).unwrap();
    std::thread::sleep(Duration::from_millis(1500));

    // 2. Under load, switch allow -> deny.
    let flows_before = cluster.flows().len();
    let out_path = cluster.dir.path().join("h2load.out");
    let mut cmd = cluster.pod("billing/portal").command(&h2load);
    cmd.args(["-n", "20000", "-c", "4", "-m", "10", url])
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(Stdio::null());
    let mut load = ChildGuard::spawn(&mut cmd).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.flows().len() < flows_before + 2000 {
        assert!(Instant::now() < deadline, "h2load made no progress");
        assert!(
            load.child_mut().try_wait().unwrap().is_none(),
            "h2load ended before the switch"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let denying = original.replace("/books/v2/.*", "/nothing/.*");
    assert_ne!(denying, original, "the GET rule's path is in the policy");
    fs::write(&policy_path, denying).unwrap();
    let status = loop {
        if let Some(s) = load.child_mut().try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "h2load did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = fs::read_to_string(&out_path).unwrap();
    assert!(status.success(), "h2load failed: {text}");
    let (done, ok, denied, server_err, errored) = h2load_summary(&text);
    let errors: std::collections::BTreeSet<String> = cluster
        .flows()
        .iter()
        .filter(|f| f["verdict"] == "ERROR")
        .map(|f| f["policy"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        (done, errored, server_err),
        (20000, 0, 0),
        "every request answered, none errored: {text}\nproxy errors: {errors:#?}"
    );
    assert!(
        ok >= 2000 && denied > 0 && ok + denied == 20000,
        "allowed then denied: {text}"
    );

    // The flow log shows the switch: only FORWARDED before the first DROPPED, and afterwards at most the requests
    // that were already in flight (4 connections x 10 streams).
    let flows: Vec<Value> = cluster
        .flows()
        .into_iter()
        .skip(flows_before)
        .filter(|f| f["l7"]["http"]["protocol"] == "HTTP/2")
        .collect();
    assert_eq!(flows.len(), 20000);
    let first_drop = flows
        .iter()
        .position(|f| f["verdict"] == "DROPPED")
        .expect("no DROPPED after the switch");
    assert!(
        flows[..first_drop]
            .iter()
            .all(|f| f["verdict"] == "FORWARDED")
    );
    let late = flows[first_drop..]
        .iter()
        .filter(|f| f["verdict"] == "FORWARDED")
        .count();
    assert!(late <= 40, "{late} requests allowed after the first denial");
    assert!(cluster.stderr().contains("policy update applied"));
    cluster.assert_proxy_running();

    // Graceful shutdown on SIGTERM: clean exit, drain logged.
    let proxy = cluster.proxy.take().unwrap();
    let status = proxy.terminate(Duration::from_secs(15)).unwrap();
    assert!(
        status.success(),
        "tollgate exit on SIGTERM: {status}: {}",
        cluster.stderr()
    );
    assert!(
        cluster.stderr().contains("tollgate proxy stopped"),
        "{}",
        cluster.stderr()
    );
}
