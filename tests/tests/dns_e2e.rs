//! DNS proxy and DNS-aware FQDN egress, end to end as root: the `dns-telemetry` conformance case as a node (eBPF
//! redirect), dnsmasq as the cluster resolver in the `resolver` pod, stand-in "external" servers in namespaces at
//! the conformance IPs, and real clients (dig over UDP and TCP, glibc's resolver via getent, curl, Python sockets)
//! in the `fetcher` pod.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use tollgate_e2e::dns::{loop_field, query_loop, start_dnsmasq};
use tollgate_e2e::scenario::{CaseFile, EbpfScenario};
use tollgate_e2e::{ChildGuard, Nginx, Pod, require_root, require_tool};

const FETCHER: &str = "ops/fetcher";
const RESOLVER_POD: &str = "kube-system/resolver";
const RESOLVER: &str = "10.0.23.53";
/// The TTL dnsmasq gives its answers: short, so expiry is observable in the test.
const TTL_SECS: u64 = 3;

/// What dnsmasq serves (the conformance `dns_cache` names, plus the names the cases ask about).
const RECORDS: &[(&str, &str)] = &[
    ("telemetry.example.net", "203.0.113.40"),
    ("img.assets.example.com", "198.51.100.44"),
    ("assets.example.com", "192.0.2.77"),
    ("eu.img.assets.example.com", "192.0.2.77"),
    ("beacon.telemetry.example.net", "192.0.2.77"),
    ("tracker.example.org", "192.0.2.77"),
];

/// "External" servers: a namespace per IP, nginx (plain HTTP) on 443.
const EXTERNAL: &[(&str, &str)] = &[
    ("telemetry", "203.0.113.40"),
    ("assets", "198.51.100.44"),
    ("other", "192.0.2.77"),
];

struct Node {
    scenario: EbpfScenario,
    _externals: Vec<(Pod, Nginx)>,
    _dnsmasq: ChildGuard,
    resolv_dir: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.resolv_dir);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn node(extra_args: &[&str]) -> Node {
    require_root();
    require_tool("dig");
    require_tool("python3");
    let case = CaseFile::load("dns-telemetry").expect("conformance case dns-telemetry");
    let mut scenario = EbpfScenario::new(case).expect("scenario");
    let mut externals = Vec::new();
    for (name, ip) in EXTERNAL {
        let pod = scenario.node.add_pod(name, ip).expect("external namespace");
        let nginx = Nginx::start(&pod, 443, 8443).expect("external nginx");
        externals.push((pod, nginx));
    }
    // With an IPv6 address too, so AAAA questions get NOERROR from dnsmasq rather than "not ready".
    let records: Vec<String> = RECORDS
        .iter()
        .enumerate()
        .map(|(i, (name, ip))| format!("{name},{ip},2001:db8::{}", i + 1))
        .collect();
    let dnsmasq = start_dnsmasq(
        scenario.pod(RESOLVER_POD),
        RESOLVER,
        &records,
        &[format!("--local-ttl={TTL_SECS}")],
        ("telemetry.example.net", "203.0.113.40"),
    )
    .expect("dnsmasq");
    // glibc's resolver in the fetcher pod uses the cluster resolver (`ip netns exec` bind-mounts this file).
    let resolv_dir = PathBuf::from("/etc/netns").join(scenario.pod(FETCHER).netns.name());
    std::fs::create_dir_all(&resolv_dir).expect("resolv.conf dir");
    std::fs::write(
        resolv_dir.join("resolv.conf"),
        format!("nameserver {RESOLVER}\noptions timeout:5 attempts:1\n"),
    )
    .expect("resolv.conf");
    let mut args = scenario.ebpf_args();
    args.extend(extra_args.iter().map(|s| s.to_string()));
    scenario.start_proxy_with(&args).expect("tollgate");
    Node {
        scenario,
        _externals: externals,
        _dnsmasq: dnsmasq,
        resolv_dir,
    }
}

/// `dig` from the fetcher pod against the cluster resolver; returns its full output.
fn dig(n: &Node, name: &str, qtype: &str, tcp: bool) -> String {
    let mut cmd = n.scenario.pod(FETCHER).command("dig");
    cmd.args([&format!("@{RESOLVER}"), "+time=5", "+tries=1", name, qtype]);
    if tcp {
        cmd.arg("+tcp");
    }
    text(&cmd.output().expect("dig"))
}

fn status(dig_out: &str) -> &str {
    dig_out
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("NO ANSWER")
}

/// A Python snippet run in the fetcher pod (exact errno of connect(): the kernel gate answers EPERM).
fn py(n: &Node, code: &str) -> String {
    let o = n
        .scenario
        .pod(FETCHER)
        .command("python3")
        .args(["-c", code])
        .output()
        .expect("python3");
    text(&o)
}

fn connect_result(n: &Node, ip: &str, port: u16) -> String {
    py(
        n,
        &format!(
            "import socket\ns=socket.socket()\ns.settimeout(5)\ntry:\n s.connect(('{ip}',{port}))\n \
             s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n print('ok', s.recv(200).split(b' ')[1].decode())\n\
             except OSError as e:\n print('errno', e.errno)"
        ),
    )
    .trim()
    .to_string()
}

fn dns_flows(n: &Node) -> Vec<Value> {
    n.scenario
        .flows()
        .into_iter()
        .filter(|f| f["protocol"] == "DNS")
        .collect()
}

fn wait_dns_flow(n: &Node, after: usize, pred: impl Fn(&Value) -> bool) -> Value {
    n.scenario
        .wait_flow(after, |f| f["protocol"] == "DNS" && pred(f))
        .unwrap_or_else(|| {
            panic!(
                "no matching DNS flow record; DNS flows: {:#?}\nproxy log:\n{}",
                dns_flows(n),
                n.scenario.proxy_log()
            )
        })
}

#[test]
fn dns_policy_fqdn_learning_and_kernel_gate() {
    let n = node(&["--dns-gc-secs", "1"]);

    // Before any DNS answer, the FQDN-restricted fetcher cannot reach any external IP (EPERM at connect()).
    assert_eq!(connect_result(&n, "203.0.113.40", 443), "errno 1");

    // Every DNS case of the conformance file, as real traffic over UDP and over TCP.
    let mut replayed = 0;
    for case in n.scenario.case.cases.clone() {
        let Some(q) = case.get("dns") else { continue };
        let name = q["query"].as_str().unwrap();
        let qtype = q["type"].as_str().unwrap();
        let allow = case["expect"].as_str() == Some("allow");
        for tcp in [false, true] {
            let before = n.scenario.flows().len();
            let out = dig(&n, name, qtype, tcp);
            let want = if allow { "NOERROR" } else { "REFUSED" };
            assert_eq!(status(&out), want, "{name} {qtype} tcp={tcp}:\n{out}");
            // The answer repeats the question exactly as the client cased it.
            let shown = format!(";{}", name.trim_end_matches('.'));
            assert!(
                out.contains(&shown),
                "question casing kept for {name}:\n{out}"
            );
            let f = wait_dns_flow(&n, before, |f| {
                f["dns"]["query"].as_str().is_some_and(|s| {
                    s.eq_ignore_ascii_case(&format!("{}.", name.trim_end_matches('.')))
                })
            });
            assert_eq!(
                f["verdict"],
                if allow { "FORWARDED" } else { "DROPPED" },
                "{f}"
            );
            assert_eq!(f["dns"]["qtypes"][0], qtype, "{f}");
            assert_eq!(f["source"]["pod"], "fetcher", "{f}");
            assert_eq!(f["destination"]["ip"], RESOLVER, "{f}");
            if allow && qtype == "A" {
                assert!(f["dns"]["ttl"].as_u64().unwrap() <= TTL_SECS, "{f}");
                assert!(!f["dns"]["ips"].as_array().unwrap().is_empty(), "{f}");
            }
            replayed += 1;
        }
    }
    assert_eq!(replayed, 14, "7 DNS cases x UDP and TCP");

    // glibc's resolver (connected UDP socket) through the proxy.
    let o = n
        .scenario
        .pod(FETCHER)
        .command("getent")
        .args(["ahostsv4", "telemetry.example.net"])
        .output()
        .expect("getent");
    assert!(text(&o).contains("203.0.113.40"), "getent: {}", text(&o));

    // The connect cases of the conformance file: learned IPs on 443 are reachable; an IP DNS never answered to
    // this pod is refused at connect() by the kernel.
    dig(&n, "telemetry.example.net", "A", false);
    dig(&n, "img.assets.example.com", "A", false);
    assert_eq!(connect_result(&n, "203.0.113.40", 443), "ok 200");
    assert_eq!(connect_result(&n, "198.51.100.44", 443), "ok 200");
    // Only the rule's port: the learned IP on 80 is refused by the kernel (EPERM, not "connection refused").
    assert_eq!(connect_result(&n, "203.0.113.40", 80), "errno 1");
    let out = n
        .scenario
        .curl(FETCHER, &["http://203.0.113.40:443/"])
        .expect("curl");
    assert!(
        text(&out).starts_with("200 203.0.113.40:443"),
        "curl: {}",
        text(&out)
    );
    // 192.0.2.77 is what dnsmasq serves for the names whose queries are DENIED: never learned.
    assert_eq!(connect_result(&n, "192.0.2.77", 443), "errno 1");
    let out = n
        .scenario
        .curl(FETCHER, &["http://192.0.2.77:443/"])
        .expect("curl");
    assert!(
        text(&out).starts_with("000"),
        "curl to an unlearned IP: {}",
        text(&out)
    );
    // The kernel reports each refusal; the proxy records it as a DROPPED flow naming the destination.
    let f = n
        .scenario
        .wait_flow(0, |f| {
            f["verdict"] == "DROPPED"
                && f["destination"]["ip"] == "192.0.2.77"
                && f["policy"]
                    .as_str()
                    .is_some_and(|p| p.contains("kernel FQDN gate"))
        })
        .unwrap_or_else(|| {
            panic!(
                "no DROPPED record for the refused connect: {:#?}",
                n.scenario.flows()
            )
        });
    assert_eq!(f["destination"]["port"], 443, "{f}");
    assert_eq!(f["source"]["pod"], "fetcher", "{f}");
    assert_eq!(f["drop_reason"], "POLICY_DENIED", "{f}");

    // TTL expiry: a connection opened while the answer was valid outlives it; a new connect after it is refused.
    dig(&n, "telemetry.example.net", "A", false);
    let expiry = py(
        &n,
        &format!(
            "import socket,time\nold=socket.create_connection(('203.0.113.40',443),timeout=5)\n\
             time.sleep({})\ntry:\n socket.create_connection(('203.0.113.40',443),timeout=5)\n print('new ok')\n\
             except OSError as e:\n print('new errno', e.errno)\n\
             old.sendall(b'GET /still-open HTTP/1.0\\r\\n\\r\\n')\nprint('old', old.recv(200).split(b' ')[1].decode())",
            TTL_SECS + 2
        ),
    );
    assert!(
        expiry.contains("new errno 1"),
        "new connect after TTL must be refused:\n{expiry}"
    );
    assert!(
        expiry.contains("old 200"),
        "open connection must survive expiry:\n{expiry}"
    );
    // The refusal after expiry names what the IP was served for (the cache keeps it until GC).
    let refused_after_expiry = n.scenario.flows().iter().any(|f| {
        f["verdict"] == "DROPPED"
            && f["destination"]["ip"] == "203.0.113.40"
            && f["policy"]
                .as_str()
                .is_some_and(|p| p.contains("kernel FQDN gate"))
    });
    assert!(refused_after_expiry, "a DROPPED record for the expired IP");
    // Asking again re-opens it.
    dig(&n, "telemetry.example.net", "A", false);
    assert_eq!(connect_result(&n, "203.0.113.40", 443), "ok 200");

    // Malformed packets: a compression loop gets FORMERR with the client's id; a 3-byte packet is dropped; both
    // leave a DROPPED flow record.
    let before = n.scenario.flows().len();
    let reply = py(
        &n,
        &format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(5)\n\
             s.sendto(bytes([0x12,0x34,1,0,0,1,0,0,0,0,0,0,0xc0,12,0,1,0,1]),('{RESOLVER}',53))\n\
             r=s.recv(512)\nprint('id', r[0]*256+r[1], 'rcode', r[3]&15)\n\
             s.sendto(b'abc',('{RESOLVER}',53))\ns.settimeout(1)\ntry:\n s.recv(512)\n print('short answered')\n\
             except OSError:\n print('short dropped')"
        ),
    );
    assert!(
        reply.contains("id 4660 rcode 1"),
        "FORMERR expected:\n{reply}"
    );
    assert!(reply.contains("short dropped"), "{reply}");
    let f = wait_dns_flow(&n, before, |f| {
        f["policy"].as_str().is_some_and(|p| p.contains("FORMERR"))
    });
    assert_eq!(f["verdict"], "DROPPED");
    assert_eq!(f["drop_reason"], "INVALID_REQUEST");
    wait_dns_flow(&n, before, |f| {
        f["policy"].as_str().is_some_and(|p| p.contains("dropped"))
    });

    // The hold (learned IPs pushed to the cache and the eBPF map before the answer is released) is measured.
    let log = n.scenario.proxy_log();
    assert!(!log.contains("panicked"), "{log}");
    let metrics = n
        .scenario
        .node
        .command(tollgate_e2e::require_tool("curl"))
        .args(["-sS", "http://127.0.0.1:9965/metrics"])
        .output()
        .expect("curl /metrics");
    let metrics = String::from_utf8_lossy(&metrics.stdout).to_string();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}"))
    };
    let holds = value("tollgate_dns_fqdn_hold_seconds_count ");
    assert!(
        holds >= 6.0,
        "every learning answer is held and measured:\n{metrics}"
    );
    eprintln!(
        "FQDN hold: {holds} answers, mean {:.1} us; buckets:\n{}",
        value("tollgate_dns_fqdn_hold_seconds_sum ") / holds * 1e6,
        metrics
            .lines()
            .filter(|l| l.starts_with("tollgate_dns_fqdn_hold_seconds_bucket"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        metrics.contains("tollgate_dns_queries_total{outcome=\"denied\"}"),
        "{metrics}"
    );
}

/// A client in the fetcher pod querying `telemetry.example.net` in a loop for 12 s.
fn fetcher_query_loop(n: &Node) -> std::process::Child {
    query_loop(
        n.scenario.pod(FETCHER),
        RESOLVER,
        "telemetry.example.net",
        12,
    )
    .expect("python3 loop")
}

/// Planned restart: a second tollgate takes the DNS sockets (and the listener) over while a client queries in a
/// loop; the measured gap is printed (stated in the issue note).
#[test]
fn dns_keeps_answering_across_a_planned_restart() {
    let mut n = node(&[]);
    let child = fetcher_query_loop(&n);
    std::thread::sleep(Duration::from_secs(2));
    let args = n.scenario.ebpf_args();
    n.scenario.start_proxy_with(&args).expect("second tollgate");
    n.scenario
        .terminate_oldest_proxy()
        .expect("old tollgate exits");
    let out = child.wait_with_output().expect("loop");
    let s = text(&out);
    eprintln!("DNS across planned restart: {s}");
    assert!(loop_field(&s, "ok") > 100, "{s}");
    assert_eq!(
        loop_field(&s, "fail"),
        0,
        "no query lost across the handoff: {s}"
    );
    let log = n.scenario.proxy_log();
    assert!(
        log.contains("took over the DNS UDP socket"),
        "the successor must take the DNS socket over:\n{log}"
    );
    n.scenario
        .assert_proxy_running()
        .expect("new tollgate running");
}

/// Crash (SIGKILL) and restart: no process holds the DNS socket until the new one binds; the pinned eBPF state
/// keeps redirecting (fail closed), so queries time out meanwhile. The measured gap is printed (for the note).
#[test]
fn dns_gap_after_a_crash_is_bounded() {
    let mut n = node(&[]);
    let child = fetcher_query_loop(&n);
    std::thread::sleep(Duration::from_secs(2));
    n.scenario.kill_proxy();
    n.scenario
        .start_proxy()
        .expect("tollgate restarted after the crash");
    let out = child.wait_with_output().expect("loop");
    let s = text(&out);
    eprintln!("DNS across a crash + restart: {s}");
    assert!(
        loop_field(&s, "ok") > 100,
        "answers resume after the restart: {s}"
    );
    assert!(
        loop_field(&s, "maxgap_ms") < 10_000,
        "the gap is bounded by the restart time: {s}"
    );
}

/// `--dns-max-tcp-connections 2`: with two DNS-over-TCP connections held open, a third is closed at once with a
/// DROPPED LIMIT_EXCEEDED record naming the flag (the reset can reach the client before its `connect()` returns:
/// ECONNRESET there counts as closed too); UDP queries are still answered meanwhile, and TCP ones again
/// once the held connections close.
#[test]
fn dns_tcp_connection_cap_closes_the_extra_connection_with_a_record() {
    let n = node(&["--dns-max-tcp-connections", "2"]);
    let before = n.scenario.flows().len();
    let dig = format!("['dig','@{RESOLVER}','+time=5','+tries=1','telemetry.example.net','A']");
    let out = py(
        &n,
        &format!(
            "import socket,subprocess,time\n\
             held=[socket.create_connection(('{RESOLVER}',53),timeout=5) for _ in range(2)]\n\
             time.sleep(0.5)\n\
             try:\n s=socket.create_connection(('{RESOLVER}',53),timeout=5)\n d=s.recv(10)\n print('third', 'closed' if d==b'' else 'data')\n\
             except OSError as e:\n print('third errno', e.errno)\n\
             udp=subprocess.run({dig},capture_output=True,text=True).stdout\n\
             print('udp', 'status: NOERROR' in udp)\n\
             for h in held: h.close()\n\
             time.sleep(0.5)\n\
             tcp=subprocess.run({dig}[:-1]+['A','+tcp'],capture_output=True,text=True).stdout\n\
             print('tcp', 'status: NOERROR' in tcp)"
        ),
    );
    assert!(
        out.contains("third closed") || out.contains("third errno 104"),
        "the connection over the cap was not closed: {out}"
    );
    assert!(
        out.contains("udp True"),
        "UDP not answered while TCP is capped: {out}"
    );
    assert!(
        out.contains("tcp True"),
        "TCP not answered once below the cap: {out}"
    );
    let rec = wait_dns_flow(&n, before, |f| {
        f["verdict"] == "DROPPED" && f["drop_reason"] == "LIMIT_EXCEEDED"
    });
    assert_eq!(
        rec["policy"],
        "DNS TCP connection limit 2 reached (--dns-max-tcp-connections); connection closed",
        "{rec:#}"
    );
}
