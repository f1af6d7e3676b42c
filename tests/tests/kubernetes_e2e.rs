//! `tollgate run --kubernetes` end to end: the daemon in a node namespace takes its policy and endpoints from a
//! test API server (the real watch protocol, objects shaped as a real API server sends them), and enforces it on
//! real curl requests to a real nginx through the iptables REDIRECT path.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_e2e::scenario::curl_from;
use tollgate_e2e::{ChildGuard, Nginx, Node, TempDir, require_root, require_tool, tollgate_bin};

const PROXY_PORT: u16 = 15001;

fn fake_apiserver_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("tollgate-fake-apiserver");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p tollgate-e2e --bins` (./dev test does)",
        bin.display()
    );
    bin
}

fn pod(name: &str, uid: &str, ip: &str, app: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop", "uid": uid, "resourceVersion": "1",
                        "creationTimestamp": "2026-11-22T10:00:00Z", "labels": {"app": app}},
           "spec": {"nodeName": "node-a", "serviceAccountName": app,
                    "containers": [{"name": app, "image": "nginx:1.22",
                                    "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}]}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "qosClass": "BestEffort"}})
}

#[test]
fn policy_from_the_api_server_is_enforced_on_real_requests() {
    require_root();
    require_tool("iptables");
    let mut node = Node::new("k8s").unwrap();
    let web = node.add_pod("web", "10.0.7.10").unwrap();
    let api = node.add_pod("api", "10.0.7.20").unwrap();
    let _nginx = Nginx::start(&api, 80, 81).unwrap();

    let dir = TempDir::new("k8s").unwrap();
    let fixtures = dir.path().join("fixtures");
    std::fs::create_dir_all(&fixtures).unwrap();
    let write = |name: &str, v: serde_json::Value| {
        std::fs::write(fixtures.join(name), v.to_string()).unwrap();
    };
    write(
        "pods.json",
        json!([
            pod(
                "web",
                "11111111-2222-4333-8444-555555555555",
                "10.0.7.10",
                "web"
            ),
            pod(
                "api",
                "66666666-7777-4888-8999-000000000000",
                "10.0.7.20",
                "api"
            ),
        ]),
    );
    write(
        "namespaces.json",
        json!([{"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "shop", "uid": "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee", "resourceVersion": "1",
                             "labels": {"kubernetes.io/metadata.name": "shop"}},
                "status": {"phase": "Active"}}]),
    );
    write(
        "ciliumnetworkpolicies.json",
        json!([{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                "metadata": {"name": "api-l7", "namespace": "shop", "uid": "12345678-1234-4234-8234-123456789012",
                             "resourceVersion": "1", "generation": 1},
                "spec": {"endpointSelector": {"matchLabels": {"app": "api"}},
                         "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}],
                                      "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                                                   "rules": {"http": [{"method": "GET", "path": "/v1/.*"}]}}]}]}}]),
    );
    write("networkpolicies.json", json!([]));
    write("ciliumclusterwidenetworkpolicies.json", json!([]));

    // The API server listens on the node namespace's loopback, where tollgate runs.
    let mut cmd = node.command(fake_apiserver_bin());
    cmd.arg(&fixtures)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut apiserver = ChildGuard::spawn(&mut cmd).unwrap();
    let stdout = apiserver.child_mut().stdout.take().unwrap();
    let mut url = String::new();
    BufReader::new(stdout).read_line(&mut url).unwrap();
    let url = url.trim().to_string();
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "fake API server said {url:?}"
    );
    let kubeconfig = dir
        .write(
            "kubeconfig",
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n\
                 users:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
                 current-context: test\n"
            ),
        )
        .unwrap();

    node.netns
        .sh(&format!(
            "iptables -t nat -A PREROUTING -p tcp -j REDIRECT --to-ports {PROXY_PORT}"
        ))
        .unwrap();
    let stderr_path = dir.path().join("tollgate.stderr");
    let mut cmd = node.command(tollgate_bin());
    cmd.args([
        "run",
        "--kubernetes",
        "--node-name",
        "node-a",
        "--redirect",
        "so-original-dst",
    ])
    .args(["--listen", &format!("0.0.0.0:{PROXY_PORT}")])
    .arg("--handoff-socket")
    .arg(dir.path().join("handoff.sock"))
    .env("KUBECONFIG", &kubeconfig)
    .env("TOLLGATE_LOG", "info")
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&stderr_path).unwrap());
    let mut proxy = ChildGuard::spawn(&mut cmd).unwrap();
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stderr().contains("tollgate proxy ready") {
        if let Ok(Some(status)) = proxy.child_mut().try_wait() {
            panic!("tollgate exited with {status}: {}", stderr());
        }
        assert!(
            Instant::now() < deadline,
            "tollgate did not become ready: {}",
            stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let code = |path: &str| {
        let out = curl_from(&web, &[&format!("http://10.0.7.20/{path}")]).unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(
        code("v1/items"),
        "200",
        "allowed by the CNP from the API server; {}",
        stderr()
    );
    assert_eq!(
        code("admin"),
        "403",
        "denied by the CNP from the API server; {}",
        stderr()
    );
    assert!(stderr().contains("initial list complete"), "{}", stderr());
}
