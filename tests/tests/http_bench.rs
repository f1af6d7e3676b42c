//! Quick throughput comparison for the design notes — not a correctness test, so `#[ignore]`d:
//!
//! `sudo TOLLGATE_BENCH_BIN=/path/to/release/tollgate cargo test -p tollgate-e2e --test http_bench -- --ignored --nocapture`
//!
//! Same node, same nginx backend, `wrk -t2 -c32 -d10s` from a client pod: direct (baseline), nginx and HAProxy as
//! plain reverse proxies in the node netns, and tollgate via TPROXY enforcing an L7 rule and writing flow records.
//! Prints requests/s and the ratio to the baseline.

use std::fs;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tollgate_e2e::{ChildGuard, Nginx, Node, Pod, TempDir, require_tool, tollgate_bin};

fn wrk(client: &Pod, url: &str) -> f64 {
    let wrk = require_tool("wrk");
    let out = client
        .command(wrk)
        .args(["-t2", "-c32", "-d10s", "--latency", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        println!("{url}:\n{text}");
    }
    assert!(
        !text.contains("Non-2xx"),
        "non-2xx responses from {url}:\n{text}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec from wrk for {url}:\n{text}"))
}

const POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: \"8080\", protocol: TCP}]
          rules:
            http: [{method: GET, path: \"/.*\"}]
";

const ENDPOINTS: &str = "endpoints:
  - {name: client, namespace: default, labels: {app: client}, ip: 10.0.1.10}
  - {name: server, namespace: default, labels: {app: server}, ip: 10.0.1.20}
";

#[test]
#[ignore = "benchmark: run by hand with --ignored --nocapture"]
fn http_proxy_throughput_vs_nginx_and_haproxy() {
    let mut node = Node::new("bench").unwrap();
    let client = node.add_pod("client", "10.0.1.10").unwrap();
    let server = node.add_pod("server", "10.0.1.20").unwrap();
    let _backend = Nginx::start(&server, 8080, 8081).unwrap();
    let dir = TempDir::new("bench").unwrap();
    let mut results: Vec<(&str, f64)> = Vec::new();

    results.push((
        "direct (no proxy)",
        wrk(&client, "http://10.0.1.20:8080/bench"),
    ));

    let nginx_conf = format!(
        "worker_processes 1;\npid {d}/np.pid;\nerror_log {d}/np.err;\ndaemon off;\nevents {{ worker_connections 4096; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
         upstream be {{ server 10.0.1.20:8080; keepalive 64; }}\n\
         server {{ listen 169.254.1.1:9001; location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n}}\n",
        d = dir.path().display()
    );
    let conf = dir.write("nginx-proxy.conf", &nginx_conf).unwrap();
    let mut cmd = node.command(require_tool("nginx"));
    cmd.arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let nginx_proxy = ChildGuard::spawn(&mut cmd).unwrap();
    node.netns
        .wait_for_tcp("169.254.1.1:9001".parse().unwrap(), Duration::from_secs(5))
        .unwrap();
    results.push((
        "nginx reverse proxy (1 worker)",
        wrk(&client, "http://169.254.1.1:9001/bench"),
    ));
    drop(nginx_proxy);

    let haproxy_conf = "global\n  maxconn 4096\n  nbthread 2\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\n\
         frontend fe\n  bind 169.254.1.1:9002\n  default_backend be\nbackend be\n  http-reuse always\n  server s1 10.0.1.20:8080\n";
    let conf = dir.write("haproxy.cfg", haproxy_conf).unwrap();
    let mut cmd = node.command(require_tool("haproxy"));
    cmd.arg("-db")
        .arg("-f")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let haproxy = ChildGuard::spawn(&mut cmd).unwrap();
    node.netns
        .wait_for_tcp("169.254.1.1:9002".parse().unwrap(), Duration::from_secs(5))
        .unwrap();
    results.push((
        "HAProxy (2 threads)",
        wrk(&client, "http://169.254.1.1:9002/bench"),
    ));
    drop(haproxy);

    // tollgate last: TPROXY diverts every pod TCP connection from here on.
    let bin = std::env::var_os("TOLLGATE_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(tollgate_bin);
    let policy = dir.write("policy.yaml", POLICY).unwrap();
    let endpoints = dir.write("endpoints.yaml", ENDPOINTS).unwrap();
    node.netns
        .sh("set -e
             iptables -t mangle -N TG_DIVERT
             iptables -t mangle -A TG_DIVERT -j MARK --set-mark 0x1/0x1
             iptables -t mangle -A TG_DIVERT -j ACCEPT
             iptables -t mangle -A PREROUTING -p tcp -m socket -j TG_DIVERT
             iptables -t mangle -A PREROUTING -p tcp -j TPROXY --on-port 15001 --tproxy-mark 0x1/0x1
             ip rule add fwmark 0x1/0x1 lookup 100
             ip route add local 0.0.0.0/0 dev lo table 100")
        .unwrap();
    let stderr = dir.path().join("tollgate.err");
    let mut cmd = node.command(&bin);
    cmd.args(["run", "--listen", "0.0.0.0:15001"])
        .arg("--policy")
        .arg(&policy)
        .arg("--endpoints")
        .arg(&endpoints)
        .arg("--flow-log")
        .arg(dir.path().join("flows.jsonl"))
        .arg("--handoff-socket")
        .arg(dir.path().join("handoff.sock"))
        .env("TOLLGATE_LOG", "warn,tollgate=info")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr).unwrap());
    let mut proxy = ChildGuard::spawn(&mut cmd).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs::read_to_string(&stderr)
        .unwrap_or_default()
        .contains("ready")
    {
        proxy.assert_running().unwrap();
        assert!(Instant::now() < deadline, "tollgate not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    results.push((
        "tollgate (TPROXY, L7 rule, flow log)",
        wrk(&client, "http://10.0.1.20:8080/bench"),
    ));
    proxy.assert_running().unwrap();

    let base = results[0].1;
    println!("\n{:<40} {:>12} {:>8}", "path", "req/s", "ratio");
    for (name, rps) in &results {
        println!("{name:<40} {rps:>12.0} {:>8.2}", rps / base);
    }
    println!("binary: {}", bin.display());
}
