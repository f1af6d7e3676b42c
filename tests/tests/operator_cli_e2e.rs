//! The operator CLI end to end, as root: `tollgate status`, `endpoint list|get`, `policy get|trace` and `bpf list`
//! against a real daemon (eBPF redirect attached to pods in namespaces, built from conformance cases), in table and
//! JSON form. Every `policy trace` verdict is checked against the verdict real traffic gets (curl for HTTP, dig for
//! DNS, a raw Kafka request for Kafka) and its reason against the flow record's; a policy reload moves the
//! generation `status` shows, and a bad policy file shows up as its last reload error.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_e2e::dns::start_dnsmasq;
use tollgate_e2e::kafka::start_tansu;
use tollgate_e2e::scenario::{CaseFile, EbpfScenario};
use tollgate_e2e::{ChildGuard, built_binary, require_root, require_tool, tollgate_bin};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The daemon's admin socket: the default, `admin.sock` beside the scenario's `--handoff-socket`.
fn socket(sc: &EbpfScenario) -> PathBuf {
    sc.dir.path().join("admin.sock")
}

/// Runs `tollgate ARGS --admin-socket SOCK`; returns (exit code, stdout, stderr).
fn cli_at(sock: &Path, args: &[&str]) -> (i32, String, String) {
    let o = std::process::Command::new(tollgate_bin())
        .args(args)
        .arg("--admin-socket")
        .arg(sock)
        .output()
        .expect("running tollgate");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// A command that must succeed; its stdout.
fn cli(sc: &EbpfScenario, args: &[&str]) -> String {
    let (code, out, err) = cli_at(&socket(sc), args);
    assert_eq!(
        code,
        0,
        "tollgate {args:?} failed:\n{out}{err}\nproxy log:\n{}",
        sc.proxy_log()
    );
    out
}

fn json(sc: &EbpfScenario, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let out = cli(sc, &a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("tollgate {args:?} -o json: {e}:\n{out}"))
}

/// `policy trace` in both forms: the JSON answer's trace, after checking the table agrees and the exit code says
/// the verdict (0 allowed, 1 denied).
fn trace(sc: &EbpfScenario, args: &[&str]) -> Value {
    let mut full = vec!["policy", "trace"];
    full.extend(args);
    let (code, table, err) = cli_at(&socket(sc), &full);
    full.extend(["-o", "json"]);
    let (jcode, out, _) = cli_at(&socket(sc), &full);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    let t = v["trace"].clone();
    let allowed = t["verdict"] == "Allow";
    assert_eq!(
        (code, jcode),
        if allowed { (0, 0) } else { (1, 1) },
        "{table}{err}"
    );
    println!(
        "---- tollgate {} ----\n{table}",
        full[..full.len() - 2].join(" ")
    );
    let word = if allowed { "ALLOWED" } else { "DENIED" };
    assert!(table.contains(&format!("Final verdict: {word}")), "{table}");
    assert!(table.contains(t["reason"].as_str().unwrap()), "{table}");
    t
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn curl_code(sc: &EbpfScenario, from: &str, args: &[&str]) -> String {
    let o = sc.curl(from, args).expect("curl");
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

const LEDGER: &str = "http://10.0.21.20:8080/books/v2/entries";

/// The flow record of the last HTTP request to `method` (its `policy` is the proxy's reason).
fn http_flow(sc: &EbpfScenario, before: usize, method: &str) -> Value {
    sc.wait_flow(before, |f| f["l7"]["http"]["method"] == method)
        .unwrap_or_else(|| panic!("no flow for {method}: {:#?}", sc.flows()))
}

#[test]
fn http_node_status_endpoints_policy_bpf_trace_and_reload() {
    require_root();
    let case = CaseFile::load("http-ledger").expect("conformance case");
    let mut sc = EbpfScenario::new(case).expect("scenario");
    sc.start_proxy().expect("tollgate");

    // The socket is the daemon's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(socket(&sc))
        .expect("admin socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // status, both forms.
    let table = cli(&sc, &["status"]);
    println!("---- tollgate status ----\n{table}------------------------");
    for want in [
        "Redirect mode:   ebpf",
        "generation 1, 1 policies, 3 endpoints",
        "Last reload:     ok",
        "tg_policy",
        "tg_fqdn_allow",
        "billing/ledger",
        "tollgate (proxy)",
        "DNS proxy",
        "Flow ring:",
    ] {
        assert!(table.contains(want), "status lacks {want:?}:\n{table}");
    }
    let st = json(&sc, &["status"]);
    assert_eq!(st["redirect_mode"], "ebpf");
    assert_eq!(st["policy"]["generation"], 1);
    let cgroups = st["datapath"]["cgroups"].as_array().unwrap();
    for pod in ["billing/portal", "billing/reporter", "billing/ledger"] {
        let c = cgroups
            .iter()
            .find(|c| c["endpoint"] == pod)
            .unwrap_or_else(|| panic!("{pod} not among the enrolled cgroups: {st:#}"));
        let progs: Vec<&str> = c["programs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        for p in [
            "tg_connect4",
            "tg_sendmsg4",
            "tg_getpeername4",
            "tg_sockops",
            "tg_udp_egress",
        ] {
            assert!(progs.contains(&p), "{pod} lacks {p}: {progs:?}");
        }
        assert_eq!(c["path"], sc.pod(pod).cgroup.path().display().to_string());
    }
    let maps = st["datapath"]["maps"].as_array().unwrap();
    let fill = |name: &str| maps.iter().find(|m| m["name"] == name).unwrap().clone();
    // One redirect entry: ledger's ingress 8080/TCP; three endpoint IPs; three enrolled pods.
    assert_eq!(fill("tg_policy")["entries"], 1, "{maps:?}");
    assert_eq!(fill("tg_ipcache")["entries"], 3);
    assert_eq!(fill("tg_endpoints")["entries"], 3);
    assert_eq!(fill("tg_policy")["max_entries"], 65536);

    // --server: the node's own Observer API (in the node's netns, where it listens) counts itself as connected.
    let o = sc
        .node
        .command(tollgate_bin())
        .args(["status", "--server", "127.0.0.1:4245", "--admin-socket"])
        .arg(socket(&sc))
        .output()
        .expect("tollgate status --server");
    let table = text(&o);
    assert!(o.status.success(), "{table}");
    assert!(
        table.contains("1 connected / 0 unavailable nodes"),
        "{table}"
    );
    assert!(
        table.contains("NODE_CONNECTED") && table.contains("Redirect mode:   ebpf"),
        "{table}"
    );
    let o = sc
        .node
        .command(tollgate_bin())
        .args([
            "status",
            "-o",
            "json",
            "--server",
            "127.0.0.1:4245",
            "--admin-socket",
        ])
        .arg(socket(&sc))
        .output()
        .expect("tollgate status --server -o json");
    let v: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert_eq!(v["relay"]["connected_nodes"], 1);
    assert_eq!(v["relay"]["unavailable_nodes"], 0);
    assert_eq!(v["policy"]["generation"], 1);

    // endpoint list / get.
    let table = cli(&sc, &["endpoint", "list"]);
    println!("---- tollgate endpoint list ----\n{table}");
    let ledger_row = table
        .lines()
        .find(|l| l.starts_with("billing/ledger"))
        .expect(&table);
    assert!(
        ledger_row.contains("Enabled") && ledger_row.contains("8080/TCP http ingress"),
        "{table}"
    );
    let portal_row = table
        .lines()
        .find(|l| l.starts_with("billing/portal"))
        .expect(&table);
    assert_eq!(
        portal_row
            .split_whitespace()
            .filter(|w| *w == "Disabled")
            .count(),
        2,
        "{table}"
    );
    assert_eq!(
        json(&sc, &["endpoint", "list"]).as_array().unwrap().len(),
        3
    );
    let one = json(&sc, &["endpoint", "get", "billing/ledger"]);
    assert_eq!(one[0]["ip"], "10.0.21.20");
    assert_eq!(one[0]["ingress_enforced"], true);
    assert_eq!(one[0]["labels"][0], "app=ledger");
    let by_id = json(&sc, &["endpoint", "get", &one[0]["identity"].to_string()]);
    assert_eq!(by_id[0]["name"], "billing/ledger");
    let (code, _, err) = cli_at(&socket(&sc), &["endpoint", "get", "billing/nobody"]);
    assert_eq!(code, 2);
    assert!(err.contains("no endpoint \"billing/nobody\""), "{err}");

    // policy get: the rule, its peers, ports and L7 rules, and the file it came from.
    let table = cli(&sc, &["policy", "get", "--endpoint", "billing/ledger"]);
    println!("---- tollgate policy get --endpoint billing/ledger ----\n{table}");
    for want in [
        "Ingress: enforced (default deny)",
        "billing/portal",
        "8080/TCP",
        "GET /books/v2/.*",
        "CiliumNetworkPolicy billing/ledger-http ingress[0]",
        "policy.yaml#0",
    ] {
        assert!(table.contains(want), "policy get lacks {want:?}:\n{table}");
    }
    let pg = json(&sc, &["policy", "get"]);
    assert_eq!(pg["endpoints"].as_array().unwrap().len(), 3);
    let rule = &pg["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"] == "billing/ledger")
        .unwrap()["effective"]["ingress"]["rules"][0];
    assert_eq!(rule["source_file"], sc.policy_path().display().to_string());
    let put = rule["ports"][0]["l7_rules"][1].as_str().unwrap();
    assert!(
        put.starts_with("PUT /books/v2/entries header content-type=application/json"),
        "{put}"
    );

    // bpf list: the redirect entry, readable.
    let table = cli(&sc, &["bpf", "list"]);
    println!("---- tollgate bpf list ----\n{table}");
    let row = table
        .lines()
        .find(|l| l.contains("billing/ledger") && l.contains("ingress"))
        .unwrap_or_else(|| panic!("no redirect row for ledger:\n{table}"));
    for want in ["TCP", "8080", "http"] {
        assert!(row.contains(want), "{row}");
    }
    assert!(table.contains("10.0.21.20/32"), "{table}");
    let b = json(&sc, &["bpf", "list"]);
    let r = &b["redirects"][0];
    assert_eq!(
        (
            r["port"].as_u64(),
            r["l7"].as_str(),
            r["direction"].as_str()
        ),
        (Some(8080), Some("http"), Some("ingress"))
    );
    assert_eq!(b["ipcache"].as_array().unwrap().len(), 3);

    // trace vs real traffic: allowed, denied at L7, denied at the connection.
    let before = sc.flows().len();
    assert_eq!(curl_code(&sc, "billing/portal", &[LEDGER]), "200");
    let flow = http_flow(&sc, before, "GET");
    let t = trace(
        &sc,
        &[
            "--from",
            "billing/portal",
            "--to",
            "billing/ledger",
            "--port",
            "8080",
            "--http-method",
            "GET",
            "--http-path",
            "/books/v2/entries",
        ],
    );
    assert_eq!(t["verdict"], "Allow");
    assert_eq!(flow["verdict"], "FORWARDED");
    assert_eq!(
        t["reason"], flow["policy"],
        "trace and flow record name the same rule"
    );

    let before = sc.flows().len();
    assert_eq!(
        curl_code(&sc, "billing/portal", &["-X", "DELETE", LEDGER]),
        "403"
    );
    let flow = http_flow(&sc, before, "DELETE");
    let t = trace(
        &sc,
        &[
            "--from",
            "billing/portal",
            "--to",
            "billing/ledger",
            "--port",
            "8080",
            "--http-method",
            "DELETE",
            "--http-path",
            "/books/v2/entries",
        ],
    );
    assert_eq!(
        (t["connection"].as_str(), t["verdict"].as_str()),
        (Some("Allow"), Some("Deny"))
    );
    assert_eq!(flow["verdict"], "DROPPED");
    assert_eq!(t["reason"], flow["policy"]);

    // The reporter is not a peer of the rule: the proxy closes its connection without an answer.
    assert_eq!(curl_code(&sc, "billing/reporter", &[LEDGER]), "000");
    let t = trace(
        &sc,
        &[
            "--from",
            "billing/reporter",
            "--to",
            "10.0.21.20",
            "--port",
            "8080",
            "--http-method",
            "GET",
            "--http-path",
            "/books/v2/entries",
        ],
    );
    assert_eq!(t["connection"], "Deny");
    assert!(
        t["reason"]
            .as_str()
            .unwrap()
            .contains("no ingress rule matched"),
        "{t}"
    );

    // A reload moves the generation, and the live daemon's trace follows it (and so does the traffic).
    let policy = std::fs::read_to_string(sc.policy_path()).unwrap();
    let allow_delete = policy.replace(
        "- method: GET",
        "- method: DELETE\n          path: /books/v2/entries\n        - method: GET",
    );
    assert_ne!(allow_delete, policy, "policy text changed shape:\n{policy}");
    std::fs::write(sc.policy_path(), &allow_delete).unwrap();
    wait_until("generation 2", || {
        json(&sc, &["status"])["policy"]["generation"] == 2
    });
    let t = trace(
        &sc,
        &[
            "--from",
            "billing/portal",
            "--to",
            "billing/ledger",
            "--port",
            "8080",
            "--http-method",
            "DELETE",
            "--http-path",
            "/books/v2/entries",
        ],
    );
    assert_eq!(t["verdict"], "Allow");
    assert_eq!(
        curl_code(&sc, "billing/portal", &["-X", "DELETE", LEDGER]),
        "200"
    );

    // A bad policy file is refused; status shows why, and generation 2 keeps enforcing.
    std::fs::write(
        sc.policy_path(),
        allow_delete.replace("endpointSelector", "endpointSelektor"),
    )
    .unwrap();
    wait_until("the reload error", || {
        !json(&sc, &["status"])["policy"]["last_reload_error"].is_null()
    });
    let st = json(&sc, &["status"]);
    let e = &st["policy"]["last_reload_error"];
    assert_eq!(st["policy"]["generation"], 2);
    assert_eq!(e["kept_generation"], 2);
    assert!(
        e["error"].as_str().unwrap().contains("endpointSelektor"),
        "{e}"
    );
    let table = cli(&sc, &["status"]);
    assert!(
        table.contains("REJECTED") && table.contains("generation 2 keeps enforcing"),
        "{table}"
    );
    println!("---- tollgate status after a bad edit ----\n{table}");
    // Fixing the file clears it.
    std::fs::write(sc.policy_path(), &policy).unwrap();
    wait_until("generation 3", || {
        json(&sc, &["status"])["policy"]["generation"] == 3
    });
    assert!(json(&sc, &["status"])["policy"]["last_reload_error"].is_null());
}

#[test]
fn errors_name_the_socket_and_the_fix() {
    let dir = tollgate_e2e::TempDir::new("opcli-errors").expect("tempdir");
    let missing = dir.path().join("admin.sock");
    let (code, _, err) = cli_at(&missing, &["status"]);
    assert_eq!(code, 2);
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("start `tollgate run`"),
        "{err}"
    );
    // A socket left behind by a stopped daemon.
    drop(std::os::unix::net::UnixListener::bind(&missing).unwrap());
    let (code, _, err) = cli_at(&missing, &["endpoint", "list"]);
    assert_eq!(code, 2);
    assert!(err.contains("connection refused"), "{err}");
}

const FETCHER: &str = "ops/fetcher";
const RESOLVER: &str = "10.0.23.53";

/// DNS: the trace of an allowed and a refused name agrees with what dig gets; the allowed name's IP shows up in the
/// FQDN gate (`bpf list`) for the fetcher.
#[test]
fn dns_trace_matches_real_queries_and_bpf_list_shows_the_fqdn_gate() {
    require_root();
    require_tool("dig");
    let case = CaseFile::load("dns-telemetry").expect("conformance case");
    let mut sc = EbpfScenario::new(case).expect("scenario");
    let _dnsmasq: ChildGuard = start_dnsmasq(
        sc.pod("kube-system/resolver"),
        RESOLVER,
        &[
            "telemetry.example.net,203.0.113.40".to_string(),
            "tracker.example.org,192.0.2.77".to_string(),
        ],
        &["--local-ttl=60".to_string()],
        ("telemetry.example.net", "203.0.113.40"),
    )
    .expect("dnsmasq");
    sc.start_proxy().expect("tollgate");
    let dig = |name: &str| {
        let o = sc
            .pod(FETCHER)
            .command("dig")
            .args([&format!("@{RESOLVER}"), "+time=5", "+tries=1", name, "A"])
            .output()
            .expect("dig");
        let t = text(&o);
        t.split("status: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap_or("NO ANSWER")
            .to_string()
    };
    let q = |name: &str| {
        trace(
            &sc,
            &[
                "--from",
                FETCHER,
                "--to",
                "kube-system/resolver",
                "--port",
                "53",
                "--dns-name",
                name,
            ],
        )
    };
    assert_eq!(dig("telemetry.example.net"), "NOERROR");
    let t = q("telemetry.example.net");
    assert_eq!(t["verdict"], "Allow");
    assert!(
        t["reason"]
            .as_str()
            .unwrap()
            .contains("CiliumNetworkPolicy ops/fetcher-fqdn egress[0] l7[0]"),
        "{t}"
    );
    assert_eq!(dig("tracker.example.org"), "REFUSED");
    let t = q("tracker.example.org");
    assert_eq!(t["verdict"], "Deny");
    assert!(
        t["reason"]
            .as_str()
            .unwrap()
            .contains("no dns rule matched"),
        "{t}"
    );
    // The answer went into the kernel FQDN gate for the fetcher's identity.
    let b = json(&sc, &["bpf", "list"]);
    let entry = b["fqdn"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["ip"] == "203.0.113.40")
        .unwrap_or_else(|| panic!("203.0.113.40 not in the FQDN gate: {b:#}"));
    assert_eq!(entry["endpoints"][0], FETCHER);
    assert_eq!(entry["names"][0], "telemetry.example.net");
    assert_eq!(entry["port"], "TCP/443");
    let table = cli(&sc, &["bpf", "list"]);
    let row = table
        .lines()
        .find(|l| l.contains("203.0.113.40"))
        .expect(&table);
    assert!(
        row.contains("telemetry.example.net") && row.contains("TCP/443"),
        "{row}"
    );
    assert!(table.contains("fqdn-restricted"), "{table}");
    // The toFQDNs rule's trace after learning: 443 open, 80 closed.
    let t = trace(
        &sc,
        &["--from", FETCHER, "--to", "203.0.113.40", "--port", "443"],
    );
    assert_eq!(t["verdict"], "Allow", "{t}");
    let t = trace(
        &sc,
        &["--from", FETCHER, "--to", "203.0.113.40", "--port", "80"],
    );
    assert_eq!(t["verdict"], "Deny", "{t}");
    let st = json(&sc, &["endpoint", "get", FETCHER]);
    assert_eq!(st[0]["egress_enforced"], true);
    assert!(
        st[0]["l7_ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "53/UDP dns egress"),
        "{st}"
    );
}

const BROKER: &str = "10.0.24.20:9092";

/// Kafka: traces of produce/consume on allowed and refused topics agree with what a real request gets from the
/// proxy (the broker's answer, or TOPIC_AUTHORIZATION_FAILED).
#[test]
fn kafka_trace_matches_real_requests() {
    require_root();
    let case = CaseFile::load("kafka-events").expect("conformance case");
    let mut sc = EbpfScenario::new(case).expect("scenario");
    let _broker = start_tansu(
        sc.pod("stream/broker"),
        9092,
        sc.dir.path(),
        &["events", "audit"],
    )
    .expect("tansu");
    sc.start_proxy().expect("tollgate");
    // (pod, role, api key and version the probe sends, topic)
    let cases = [
        ("stream/writer", "produce", "produce", 9, "events"),
        ("stream/writer", "produce", "produce", 9, "audit"),
        ("stream/reader", "consume", "fetch", 12, "events"),
        ("stream/reader", "consume", "fetch", 12, "audit"),
        ("stream/reader", "produce", "produce", 9, "events"),
    ];
    let mut verdicts = Vec::new();
    for (pod, role, key, version, topic) in cases {
        let o = sc
            .pod(pod)
            .command(built_binary("tollgate-kafka-probe"))
            .args([BROKER, key, &version.to_string(), "cli-e2e", topic])
            .output()
            .expect("probe");
        assert!(o.status.success(), "{}", text(&o));
        let resp: Value = serde_json::from_slice(&o.stdout).expect("probe answer");
        let codes: Vec<i64> = resp["error_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_i64().unwrap())
            .collect();
        let refused = !codes.is_empty() && codes.iter().all(|&c| c == 29);
        let t = trace(
            &sc,
            &[
                "--from",
                pod,
                "--to",
                "stream/broker",
                "--port",
                "9092",
                "--kafka-role",
                role,
                "--kafka-topic",
                topic,
                "--kafka-api-version",
                &version.to_string(),
            ],
        );
        let denied = t["verdict"] == "Deny";
        assert_eq!(
            denied, refused,
            "{pod} {role} {topic}: trace {t} vs broker answer {resp}"
        );
        verdicts.push(format!("{pod} {role} {topic}: {}", t["verdict"]));
    }
    assert_eq!(
        verdicts.iter().filter(|v| v.ends_with("\"Allow\"")).count(),
        2,
        "{verdicts:#?}"
    );
    let t = trace(
        &sc,
        &[
            "--from",
            "stream/writer",
            "--to",
            "stream/broker",
            "--port",
            "9092",
            "--kafka-role",
            "produce",
            "--kafka-topic",
            "events",
        ],
    );
    assert!(
        t["reason"]
            .as_str()
            .unwrap()
            .contains("stream/broker-topics ingress[0] l7[0]"),
        "{t}"
    );
}

/// The mTLS tunnel in `status`: this node, its SPIFFE ID, the node SVID's expiry (dev CA, 1 h TTL) and the peer
/// node with its tunnel address, as both nodes of a real two-node mesh see it; TC links show up too.
#[test]
fn status_shows_tunnel_peers_svid_expiry_and_tc_links() {
    use tollgate_e2e::mesh::{MTLS_CASE, TUNNEL_PORT, TwoNodes};
    require_root();
    let mut nodes = TwoNodes::new("opcli-mtls", MTLS_CASE).expect("two nodes");
    nodes.start(&["--svid-ttl-secs", "3600"]).expect("proxies");
    for (sc, me, peer, peer_addr) in [
        (&nodes.a, "a", "b", &nodes.addr_b),
        (&nodes.b, "b", "a", &nodes.addr_a),
    ] {
        let st = json(sc, &["status"]);
        let t = &st["tunnel"];
        assert_eq!(t["node"], me, "{st:#}");
        assert!(
            t["node_id"].as_str().unwrap().starts_with("spiffe://"),
            "{t}"
        );
        let left = t["svid_expires_in_secs"].as_i64().unwrap();
        assert!((1..=3600).contains(&left), "{t}");
        assert_eq!(t["peers"][0]["name"], peer);
        assert_eq!(
            t["peers"][0]["address"],
            format!("{peer_addr}:{TUNNEL_PORT}")
        );
        assert!(
            st["listeners"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["name"] == "mTLS tunnel"),
            "{st:#}"
        );
        assert_eq!(
            st["datapath"]["tc_links"].as_array().unwrap().len(),
            1,
            "{st:#}"
        );
        let table = cli(sc, &["status"]);
        assert!(
            table.contains(&format!("mTLS tunnel:     node {me} as spiffe://")),
            "{table}"
        );
        assert!(
            table.contains("PEER NODE") && table.contains(&format!("{peer_addr}:{TUNNEL_PORT}")),
            "{table}"
        );
    }
}
