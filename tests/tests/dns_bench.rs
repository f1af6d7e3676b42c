//! DNS throughput and latency for the issue note — a measurement, not a correctness test, so `#[ignore]`d:
//!
//! `sudo TOLLGATE_BIN=/path/to/release/tollgate cargo test -p tollgate-e2e --test dns_bench -- --ignored --nocapture`
//!
//! One node, a client pod running dnsperf, a resolver pod running dnsmasq (authoritative for `*.bench.test`, so
//! the resolver is never the network). Three paths, measured in the same run:
//! - direct: client -> dnsmasq;
//! - tollgate: client -> tollgate's DNS listener (policy check with a DNS rule, forward, FQDN learning, flow record)
//!   -> dnsmasq;
//! - dnsmasq as a plain forwarder (cache off) in the node -> dnsmasq.
//!
//! For each: maximum QPS (dnsperf, 100 outstanding, 10 s) with the forwarder's CPU use, giving QPS per CPU-second;
//! then latency at a fixed 2000 QPS (dnsperf -v, per-query latencies) for p50/p99 and the p99 added over direct.

use std::process::Stdio;
use std::time::Duration;

use tollgate_e2e::{ChildGuard, Node, Pod, TempDir, require_tool, tollgate_bin};

const CLIENT: &str = "10.0.1.10";
const RESOLVER: &str = "10.0.1.53";
const GATEWAY: &str = "169.254.1.1";
const DNS_PORT: u16 = 15053;
const FORWARDER_PORT: u16 = 5353;

const POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench-dns, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toEndpoints: [{matchLabels: {app: resolver}}]
      toPorts:
        - ports: [{port: "53", protocol: ANY}]
          rules:
            dns: [{matchPattern: "*.bench.test"}]
    - toFQDNs: [{matchPattern: "*.bench.test"}]
      toPorts:
        - ports: [{port: "443", protocol: TCP}]
"#;

const ENDPOINTS: &str = "endpoints:
  - {name: client, namespace: default, labels: {app: client}, ip: 10.0.1.10}
  - {name: resolver, namespace: default, labels: {app: resolver}, ip: 10.0.1.53}
";

/// CPU seconds (user + system) a process has used, from /proc/<pid>/stat.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// The PID of the real server process inside `ip netns exec`/`nsenter` wrappers: the newest child chain leaf.
fn leaf_pid(pid: u32) -> u32 {
    let mut p = pid;
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        match children
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
        {
            Some(c) => p = c,
            None => return p,
        }
    }
}

struct Run {
    qps: f64,
    lost: u64,
}

fn dnsperf(client: &Pod, server: &str, port: u16, data: &str, extra: &[&str]) -> String {
    let out = client
        .command(require_tool("dnsperf"))
        .args(["-s", server, "-p", &port.to_string(), "-d", data])
        .args(extra)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn max_qps(client: &Pod, server: &str, port: u16, data: &str) -> Run {
    let text = dnsperf(
        client,
        server,
        port,
        data,
        &["-l", "10", "-q", "100", "-c", "4"],
    );
    let qps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries per second:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no QPS from dnsperf against {server}:{port}:\n{text}"));
    let lost = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries lost:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Run { qps, lost }
}

/// p50 and p99 (seconds) at a fixed rate, from dnsperf's per-query lines.
fn latency(client: &Pod, server: &str, port: u16, data: &str) -> (f64, f64) {
    let text = dnsperf(client, server, port, data, &["-l", "5", "-Q", "2000", "-v"]);
    let mut l: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with('>'))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    assert!(
        l.len() > 1000,
        "too few samples from {server}:{port}:\n{}",
        &text[..text.len().min(2000)]
    );
    l.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| l[((l.len() as f64 * q) as usize).min(l.len() - 1)];
    (at(0.5), at(0.99))
}

#[test]
#[ignore = "benchmark: run by hand with --ignored --nocapture"]
fn dns_proxy_vs_direct_vs_dnsmasq_forwarder() {
    let dnsmasq = require_tool("dnsmasq");
    let mut node = Node::new("dnsbench").unwrap();
    let client = node.add_pod("client", CLIENT).unwrap();
    let resolver = node.add_pod("resolver", RESOLVER).unwrap();
    let dir = TempDir::new("dnsbench").unwrap();
    let names: String = (0..1000).map(|i| format!("h{i}.bench.test A\n")).collect();
    let data = dir.write("queries.txt", &names).unwrap();
    let data = data.display().to_string();

    let mut auth = resolver.command(&dnsmasq);
    auth.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--user=root",
        "--pid-file=",
        "--bind-interfaces",
        &format!("--listen-address={RESOLVER}"),
        "--address=/bench.test/192.0.2.1",
        "--local-ttl=60",
        "--dns-forward-max=10000",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let _auth = ChildGuard::spawn(&mut auth).unwrap();

    let mut fwd = node.command(&dnsmasq);
    fwd.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--user=root",
        "--pid-file=",
        "--bind-interfaces",
        &format!("--listen-address={GATEWAY}"),
        &format!("--port={FORWARDER_PORT}"),
        &format!("--server={RESOLVER}"),
        "--cache-size=0",
        "--dns-forward-max=10000",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let fwd = ChildGuard::spawn(&mut fwd).unwrap();

    dir.write("policy.yaml", POLICY).unwrap();
    dir.write("endpoints.yaml", ENDPOINTS).unwrap();
    let log = std::fs::File::create(dir.path().join("tollgate.log")).unwrap();
    let mut tg = node.command(tollgate_bin());
    tg.arg("run")
        .arg("--policy")
        .arg(dir.path().join("policy.yaml"))
        .arg("--endpoints")
        .arg(dir.path().join("endpoints.yaml"))
        .args([
            "--listen",
            &format!("{GATEWAY}:15001"),
            "--redirect",
            "so-original-dst",
        ])
        .args(["--dns-port", &DNS_PORT.to_string()])
        .args(["--dns-upstream", &format!("{RESOLVER}:53")])
        .arg("--handoff-socket")
        .arg(dir.path().join("handoff.sock"))
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--observer-listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log);
    let tg = ChildGuard::spawn(&mut tg).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let tg_pid = leaf_pid(tg.id());
    let fwd_pid = leaf_pid(fwd.id());

    // Warm-up (and a check that every path answers).
    for (s, p) in [
        (RESOLVER, 53),
        (GATEWAY, DNS_PORT),
        (GATEWAY, FORWARDER_PORT),
    ] {
        let o = client
            .command("dig")
            .args([
                &format!("@{s}"),
                "-p",
                &p.to_string(),
                "+short",
                "h1.bench.test",
            ])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("192.0.2.1"),
            "{s}:{p} does not answer: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(dir.path().join("tollgate.log")).unwrap_or_default()
        );
    }

    let direct = max_qps(&client, RESOLVER, 53, &data);
    let c0 = cpu_secs(tg_pid);
    let proxied = max_qps(&client, GATEWAY, DNS_PORT, &data);
    let tg_cpu = cpu_secs(tg_pid) - c0;
    let c0 = cpu_secs(fwd_pid);
    let forwarded = max_qps(&client, GATEWAY, FORWARDER_PORT, &data);
    let fwd_cpu = cpu_secs(fwd_pid) - c0;

    let (d50, d99) = latency(&client, RESOLVER, 53, &data);
    let (t50, t99) = latency(&client, GATEWAY, DNS_PORT, &data);
    let (f50, f99) = latency(&client, GATEWAY, FORWARDER_PORT, &data);

    let per_core = |r: &Run, cpu: f64| r.qps * 10.0 / cpu.max(0.001);
    println!("DNS bench (shared 2-core machine; dnsperf -c4 -q100 10 s; latency at 2000 QPS 5 s)");
    println!(
        "direct   : {:>9.0} QPS (lost {}), p50 {:.3} ms, p99 {:.3} ms",
        direct.qps,
        direct.lost,
        d50 * 1e3,
        d99 * 1e3
    );
    println!(
        "tollgate : {:>9.0} QPS (lost {}), {:.2} CPU-s -> {:.0} QPS/core, p50 {:.3} ms, p99 {:.3} ms, added p99 {:.3} ms",
        proxied.qps,
        proxied.lost,
        tg_cpu,
        per_core(&proxied, tg_cpu),
        t50 * 1e3,
        t99 * 1e3,
        (t99 - d99) * 1e3
    );
    println!(
        "dnsmasq  : {:>9.0} QPS (lost {}), {:.2} CPU-s -> {:.0} QPS/core, p50 {:.3} ms, p99 {:.3} ms, added p99 {:.3} ms",
        forwarded.qps,
        forwarded.lost,
        fwd_cpu,
        per_core(&forwarded, fwd_cpu),
        f50 * 1e3,
        f99 * 1e3,
        (f99 - d99) * 1e3
    );
    println!(
        "ratios   : tollgate/direct {:.2}, tollgate/dnsmasq QPS {:.2}, QPS/core {:.2}",
        proxied.qps / direct.qps,
        proxied.qps / forwarded.qps,
        per_core(&proxied, tg_cpu) / per_core(&forwarded, fwd_cpu)
    );
}
