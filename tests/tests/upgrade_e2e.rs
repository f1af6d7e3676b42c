//! Hitless upgrade: a new tollgate process takes the listening sockets (main, DNS UDP + TCP; the TC listener too
//! when configured) and the pinned eBPF maps over from the running one while h2load keeps h2 connections busy, a
//! client opens a new connection every 50 ms and a DNS client queries in a loop, all through the proxy. The old
//! process stops accepting, keeps serving its open connections through the drain period, and exits. Zero failed
//! requests and zero failed DNS queries are asserted; the throughput and the longest DNS gap are printed for the
//! issue note.

use std::process::{Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tollgate_e2e::dns::{loop_field, query_loop, start_dnsmasq};
use tollgate_e2e::scenario::{CaseFile, EbpfScenario, curl_from};
use tollgate_e2e::{require_root, require_tool};

const CASE: &str = r#"
name: upgrade
policies:
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: api-h2, namespace: prod}
    spec:
      endpointSelector: {matchLabels: {app: api}}
      ingress:
        - fromEndpoints: [{matchLabels: {app: frontend}}]
          toPorts:
            - ports: [{port: "8081", protocol: TCP}, {port: "8080", protocol: TCP}]
              rules: {http: [{method: GET, path: "/api/v1/.*"}]}
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: frontend-egress, namespace: prod}
    spec:
      endpointSelector: {matchLabels: {app: frontend}}
      egress:
        - toEndpoints: [{matchLabels: {app: resolver}}]
          toPorts:
            - ports: [{port: "53", protocol: ANY}]
              rules: {dns: [{matchPattern: "*.upgrade.test"}]}
        - toEndpoints: [{matchLabels: {app: api}}]
          toPorts: [{ports: [{port: "8081", protocol: TCP}, {port: "8080", protocol: TCP}]}]
endpoints:
  - {name: frontend, namespace: prod, labels: {app: frontend}, ip: 10.0.9.10}
  - {name: api, namespace: prod, labels: {app: api}, ip: 10.0.9.20}
  - {name: resolver, namespace: prod, labels: {app: resolver}, ip: 10.0.9.53}
cases: []
"#;

const RESOLVER: &str = "10.0.9.53";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout` -> the number before `word`.
fn h2load_field(out: &str, line_prefix: &str, word: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .unwrap_or_else(|| panic!("no `{line_prefix}` line in h2load output:\n{out}"));
    let words: Vec<&str> = line.split([',', ' ']).filter(|w| !w.is_empty()).collect();
    words
        .windows(2)
        .find(|w| w[1] == word)
        .and_then(|w| w[0].parse().ok())
        .unwrap_or_else(|| panic!("no `{word}` in {line}"))
}

#[test]
fn upgrade_under_h2load_new_connections_and_dns_loses_nothing() {
    require_root();
    let h2load = require_tool("h2load");
    let case = CaseFile::parse("upgrade_e2e.rs", CASE).unwrap();
    let mut sc = EbpfScenario::new(case).unwrap();

    // The cluster resolver: dnsmasq in its own pod.
    let _dnsmasq = start_dnsmasq(
        sc.pod("prod/resolver"),
        RESOLVER,
        &["api.upgrade.test,10.0.9.20".to_string()],
        &[],
        ("api.upgrade.test", "10.0.9.20"),
    )
    .unwrap();

    let mut args = sc.ebpf_args();
    args.extend(["--drain-secs".to_string(), "20".to_string()]);
    sc.start_proxy_with(&args).unwrap();
    // Through the proxy before the upgrade starts (allowed path; a denied one proves the proxy is in the path).
    let code = |path: &str| {
        let out = curl_from(
            sc.pod("prod/frontend"),
            &[&format!("http://10.0.9.20:8080{path}")],
        )
        .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(code("/api/v1/users"), "200", "{}", sc.proxy_log());
    assert_eq!(code("/admin"), "403", "{}", sc.proxy_log());

    let frontend = sc.pod("prod/frontend");
    // h2load: 2 h2 connections x 4 streams for 5 s, prior knowledge, through the proxy to nginx's h2c port.
    let mut h2 = frontend.command(&h2load);
    h2.args([
        "-c",
        "2",
        "-m",
        "4",
        "-D",
        "5",
        "http://10.0.9.20:8081/api/v1/users",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let h2 = h2.spawn().unwrap();
    // DNS: one query every 10 ms for 7 s, each with a 1 s timeout.
    let dns = query_loop(frontend, RESOLVER, "api.upgrade.test", 7).unwrap();
    // New connections: curl every 50 ms until stopped.
    let stop = Arc::new(AtomicBool::new(false));
    let frontend_ns = frontend.netns.name().to_string();
    let frontend_cgroup = frontend.cgroup.path().to_path_buf();
    let stop2 = stop.clone();
    let curl_loop = std::thread::spawn(move || {
        let mut results = Vec::new();
        let start = Instant::now();
        while !stop2.load(Ordering::Relaxed) {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "echo $$ > {}/cgroup.procs && exec ip netns exec {frontend_ns} curl -sS --max-time 5 -o /dev/null \
                     -w '%{{http_code}}' http://10.0.9.20:8080/api/v1/users",
                    frontend_cgroup.display()
                ))
                .output()
                .unwrap();
            results.push((
                start.elapsed().as_millis(),
                String::from_utf8_lossy(&out.stdout).to_string(),
            ));
            std::thread::sleep(Duration::from_millis(50));
        }
        results
    });

    std::thread::sleep(Duration::from_millis(1500));
    let swap_start = Instant::now();
    sc.start_proxy_with(&args).unwrap(); // the new process, alongside the old one
    let status = sc.terminate_oldest_proxy().unwrap(); // SIGTERM: the old one drains and exits
    let swap = swap_start.elapsed();
    assert!(
        status.success(),
        "the old tollgate exits cleanly after draining: {status}"
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let curls = curl_loop.join().unwrap();
    let h2 = h2.wait_with_output().unwrap();
    let dns = dns.wait_with_output().unwrap();
    let log = sc.proxy_log();

    let h2out = text(&h2);
    eprintln!("h2load across the upgrade:\n{h2out}");
    let done = h2load_field(&h2out, "requests:", "done");
    assert!(done > 0, "{h2out}");
    assert_eq!(
        h2load_field(&h2out, "requests:", "failed"),
        0,
        "{h2out}\n{log}"
    );
    assert_eq!(
        h2load_field(&h2out, "requests:", "errored"),
        0,
        "{h2out}\n{log}"
    );
    // h2load counts a status code when the response headers arrive, but
    // counts a request done only when its stream ends inside the timed
    // window: a response whose headers came just before the stop is in the
    // status codes but not in `done`. So every non-2xx count must be zero
    // and 2xx must cover at least every request done.
    for class in ["3xx", "4xx", "5xx"] {
        assert_eq!(h2load_field(&h2out, "status codes:", class), 0, "{h2out}");
    }
    let ok = h2load_field(&h2out, "status codes:", "2xx");
    let started = h2load_field(&h2out, "requests:", "started");
    assert!((done..=started).contains(&ok), "{h2out}");

    let dns_out = text(&dns);
    eprintln!("DNS across the upgrade: {dns_out}");
    assert!(loop_field(&dns_out, "ok") > 50, "{dns_out}");
    assert_eq!(
        loop_field(&dns_out, "fail"),
        0,
        "no DNS query lost: {dns_out}\n{log}"
    );

    let failed: Vec<_> = curls.iter().filter(|(_, c)| c != "200").collect();
    eprintln!(
        "new connections: {} across the swap (took {swap:?}), failed: {failed:?}",
        curls.len()
    );
    assert!(curls.len() >= 10, "{curls:?}");
    assert!(
        failed.is_empty(),
        "new connections failed during the upgrade: {failed:?}\n{log}"
    );

    assert!(log.contains("took over the listening socket"), "{log}");
    assert!(log.contains("took over the DNS UDP socket"), "{log}");
    assert!(
        log.contains("stopped accepting; serving open connections"),
        "{log}"
    );
    sc.assert_proxy_running().unwrap();
}
