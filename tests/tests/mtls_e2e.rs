//! The node-to-node mTLS tunnel end to end, as root: two nodes (namespaces, each with its own tollgate and eBPF
//! redirect), pods on each, a development CA both proxies issue SVIDs from.
//!
//! - a pod on node A reaches a pod on node B through the tunnel; node B enforces its ingress L7 policy on the
//!   identity the SOURCE POD's certificate proved (flow records: auth_type SPIRE, the peer's SPIFFE ID); a capture
//!   on the inter-node link shows TLS only; a plain connection to the same port is refused with AUTH_REQUIRED;
//! - every refusal (wrong trust domain, expired, unknown CA, no certificate, an ID that is not a workload, a
//!   workload the policy does not allow) has its own flow record and log line on node B;
//! - SVIDs rotating every 2 s during an h2load run lose no request.

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_e2e::mesh::{MTLS_CASE, TUNNEL_PORT, TwoNodes};
use tollgate_e2e::scenario::{H2C_PORT, HTTP_PORT};
use tollgate_e2e::{ChildGuard, Nginx, TempDir, built_binary, require_root, require_tool};

/// The api pod's L4-only (no HTTP rules) port, authentication required.
const L4_PORT: u16 = 9080;
const WEB_ID: &str = "spiffe://cluster.local/ns/prod/sa/web";
const NODE_ID: &str = "spiffe://cluster.local/ns/kube-system/sa/tollgate";

fn status(out: &std::process::Output) -> u16 {
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn url(port: u16, path: &str) -> String {
    format!("http://10.0.9.20:{port}{path}")
}

/// Waits for a record on `sc` after `after` matching `pred`, or fails showing what is there.
fn flow(
    sc: &tollgate_e2e::scenario::EbpfScenario,
    after: usize,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    sc.wait_flow(after, pred).unwrap_or_else(|| {
        panic!(
            "no flow record on {}: {what}\nrecords: {:#?}\nlog:\n{}",
            sc.case.name,
            sc.flows().into_iter().skip(after).collect::<Vec<_>>(),
            sc.proxy_log()
        )
    })
}

/// Starts tshark on `link` inside the node and waits until it captures.
fn capture(
    nodes: &TwoNodes,
    dir: &TempDir,
) -> (ChildGuard, std::path::PathBuf, std::path::PathBuf) {
    let tshark = require_tool("tshark");
    let pcap = dir.path().join("inter-node.pcap");
    let log = dir.path().join("tshark.log");
    let mut cmd = nodes.b.node.command(tshark);
    cmd.args(["-i", &nodes.link_b, "-w"])
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap());
    let child = ChildGuard::spawn(&mut cmd).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("Capture started")
    {
        assert!(
            Instant::now() < deadline,
            "tshark did not start: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, pcap, log)
}

#[test]
fn cross_node_traffic_goes_through_the_tunnel_as_tls_with_the_certificate_identity() {
    require_root();
    let mut nodes = TwoNodes::new("mtls", MTLS_CASE).unwrap();
    nodes.start(&[]).unwrap();
    let scratch = TempDir::new("mtls-capture").unwrap();
    let (tshark, pcap, tshark_log) = capture(&nodes, &scratch);
    let (a0, b0) = (nodes.a.flows().len(), nodes.b.flows().len());

    // HTTP/1.1 and h2c from web (node A) to api (node B).
    let ok = nodes
        .a
        .curl("prod/web", &[&url(HTTP_PORT, "/public/one")])
        .unwrap();
    assert_eq!(
        status(&ok),
        200,
        "{}\nA:\n{}\nB:\n{}",
        String::from_utf8_lossy(&ok.stderr),
        nodes.a.proxy_log(),
        nodes.b.proxy_log()
    );
    let h2 = nodes
        .a
        .curl(
            "prod/web",
            &["--http2-prior-knowledge", &url(H2C_PORT, "/public/two")],
        )
        .unwrap();
    assert_eq!(status(&h2), 200, "{}", String::from_utf8_lossy(&h2.stderr));
    let denied = nodes
        .a
        .curl("prod/web", &[&url(HTTP_PORT, "/private")])
        .unwrap();
    assert_eq!(status(&denied), 403);

    // Node B decided on the certificate's identity: the TCP peer was node A, the source is web.
    let rec = flow(&nodes.b, b0, "forwarded /public/one", |f| {
        f["l7"]["http"]["url"]
            .as_str()
            .is_some_and(|u| u.ends_with("/public/one"))
    });
    assert_eq!(rec["verdict"], "FORWARDED", "{rec}");
    assert_eq!(rec["auth_type"], "SPIRE", "{rec}");
    assert_eq!(rec["peer_spiffe_id"], WEB_ID, "{rec}");
    assert_eq!(rec["source"]["ip"], "10.0.8.10", "{rec}");
    assert!(
        rec["source"]["labels"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "k8s:app=web"),
        "{rec}"
    );
    let web_identity = rec["source"]["identity"].clone();
    // The source node checks the destination's rules too (the same cluster-wide policy), so a denied request
    // never crosses the link.
    let rec = flow(&nodes.a, a0, "denied /private", |f| {
        f["l7"]["http"]["url"]
            .as_str()
            .is_some_and(|u| u.ends_with("/private"))
    });
    assert_eq!(rec["verdict"], "DROPPED", "{rec}");
    assert_eq!(rec["auth_type"], "SPIRE", "{rec}");
    // Node A's record of the same request says it left through the tunnel to a proven node proxy.
    let rec = flow(&nodes.a, a0, "source-side /public/one", |f| {
        f["l7"]["http"]["url"]
            .as_str()
            .is_some_and(|u| u.ends_with("/public/one"))
    });
    assert_eq!(rec["auth_type"], "SPIRE", "{rec}");
    assert_eq!(rec["peer_spiffe_id"], NODE_ID, "{rec}");
    assert_eq!(
        rec["source"]["identity"], web_identity,
        "same identity numbers on both nodes: {rec}"
    );

    // The probe speaks from node A's own namespace (no pod address at all): with web's SVID it is web, with
    // batch's it is batch, whom the policy does not name.
    let probe = |svid: &std::path::Path, path: &str| {
        let out = nodes
            .a
            .node
            .command(built_binary("tollgate-tunnel-probe"))
            .arg("--svid-dir")
            .arg(svid)
            .args([
                "--node",
                &format!("{}:{TUNNEL_PORT}", nodes.addr_b),
                "--node-id",
                NODE_ID,
                "--dst",
                &format!("10.0.9.20:{HTTP_PORT}"),
                "--path",
                path,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let web_svid = nodes.issue(WEB_ID, 600).unwrap();
    let batch_svid = nodes
        .issue("spiffe://cluster.local/ns/prod/sa/batch", 600)
        .unwrap();
    let b1 = nodes.b.flows().len();
    assert!(
        probe(&web_svid, "/public/probe").starts_with("HTTP/1.1 200"),
        "{}",
        nodes.b.proxy_log()
    );
    let refused = probe(&batch_svid, "/public/probe");
    assert!(
        refused.contains("refused") && refused.contains("403"),
        "{refused}"
    );
    let rec = flow(&nodes.b, b1, "batch refused by policy", |f| {
        f["peer_spiffe_id"] == "spiffe://cluster.local/ns/prod/sa/batch"
    });
    assert_eq!(rec["verdict"], "DROPPED", "{rec}");
    assert_eq!(rec["drop_reason"], "POLICY_DENIED", "{rec}");
    assert!(
        rec["policy"]
            .as_str()
            .unwrap()
            .contains("is not allowed by policy"),
        "{rec}"
    );
    assert!(
        nodes.b.proxy_log().contains("tunnel stream refused"),
        "{}",
        nodes.b.proxy_log()
    );

    // On one node the rule means the same: web-b's connection to api goes through node B's own tunnel listener
    // with web's SVID (a real handshake), not around it.
    let b3 = nodes.b.flows().len();
    let same = nodes
        .b
        .curl("prod/web-b", &[&url(HTTP_PORT, "/public/same-node")])
        .unwrap();
    assert_eq!(status(&same), 200, "{}", nodes.b.proxy_log());
    let rec = flow(&nodes.b, b3, "same-node /public/same-node", |f| {
        f["l7"]["http"]["url"]
            .as_str()
            .is_some_and(|u| u.ends_with("/public/same-node"))
            && f["peer_spiffe_id"] == WEB_ID
    });
    assert_eq!(rec["auth_type"], "SPIRE", "{rec}");
    assert_eq!(rec["source"]["ip"], "10.0.9.21", "{rec}");

    // Only TLS crossed the link: every payload-carrying segment is to or from the tunnel port, no HTTP in clear.
    // dumpcap writes what it captured when it stops; give it the packets in flight first.
    std::thread::sleep(Duration::from_millis(500));
    tshark.terminate(Duration::from_secs(10)).unwrap();
    let bytes = fs::read(&pcap).unwrap();
    for needle in [
        "/public/one",
        "/private",
        "nginx",
        "HTTP/1.1",
        "PRI * HTTP/2",
    ] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "`{needle}` in clear on the inter-node link"
        );
    }
    let fields = |filter: &str| {
        let out = std::process::Command::new(require_tool("tshark"))
            .args(["-r"])
            .arg(&pcap)
            .args([
                "-d",
                &format!("tcp.port=={TUNNEL_PORT},tls"),
                "-Y",
                filter,
                "-T",
                "fields",
                "-e",
                "frame.number",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let payload = fields("tcp.len > 0");
    assert!(
        payload > 0,
        "nothing captured ({} bytes): {}",
        bytes.len(),
        fs::read_to_string(&tshark_log).unwrap_or_default()
    );
    assert_eq!(
        fields(&format!("tcp.len > 0 && !(tcp.port == {TUNNEL_PORT})")),
        0,
        "plain TCP payload on the link"
    );
    assert!(
        fields("tls.handshake.type == 1") >= 1,
        "no TLS ClientHello captured"
    );
    assert_eq!(fields("http || http2"), 0, "HTTP decoded on the link");
    assert_eq!(
        fields(
            "tls.record.version == 0x0303 && tls.handshake.type == 2 && !tls.handshake.extensions.supported_version"
        ),
        0,
        "a TLS 1.2 ServerHello"
    );

    // Without node A's proxy (its redirect removed), web's connection arrives plain: refused with AUTH_REQUIRED.
    nodes.a.kill_proxy();
    nodes.a.remove_pins();
    let b2 = nodes.b.flows().len();
    let plain = nodes
        .a
        .curl("prod/web", &[&url(HTTP_PORT, "/public/plain")])
        .unwrap();
    assert_eq!(status(&plain), 0, "a plain connection got an answer");
    let rec = flow(&nodes.b, b2, "AUTH_REQUIRED", |f| {
        f["drop_reason"] == "AUTH_REQUIRED"
    });
    assert_eq!(rec["source"]["ip"], "10.0.8.10", "{rec}");
    assert!(rec.get("auth_type").is_none(), "{rec}");
    nodes.b.assert_proxy_running().unwrap();
}

#[test]
fn every_refused_handshake_has_a_named_flow_record() {
    require_root();
    let openssl = require_tool("openssl");
    let mut nodes = TwoNodes::new("mtls-refusals", MTLS_CASE).unwrap();
    nodes.start(&[]).unwrap();
    let dir = TempDir::new("mtls-refusal-certs").unwrap();
    // Certificates no node should accept, made with the same tooling a user has.
    let tollgate = tollgate_e2e::tollgate_bin();
    let sh = |script: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let d = dir.path().display();
    let t = tollgate.display();
    sh(&format!(
        "set -e
         {t} certs ca --trust-domain other.example --out {d}/foreign-ca
         {t} certs issue --ca {d}/foreign-ca --spiffe-id spiffe://other.example/ns/prod/sa/web --out {d}/foreign
         {t} certs ca --trust-domain cluster.local --out {d}/rogue-ca
         {t} certs issue --ca {d}/rogue-ca --spiffe-id {WEB_ID} --out {d}/rogue
         {t} certs issue --ca {ca} --spiffe-id spiffe://cluster.local/admin --out {d}/not-workload",
        ca = nodes.ca_dir().display()
    ));
    // Expired: a one-second SVID from the real CA, used after it expired.
    sh(&format!(
        "{t} certs issue --ca {} --spiffe-id {WEB_ID} --ttl-secs 1 --out {d}/expired",
        nodes.ca_dir().display()
    ));
    std::thread::sleep(Duration::from_secs(2));

    let cases: [(&str, Option<&str>, &str, Option<&str>); 5] = [
        (
            "wrong trust domain",
            Some("foreign"),
            "WRONG_TRUST_DOMAIN",
            Some("spiffe://other.example/ns/prod/sa/web"),
        ),
        ("unknown CA", Some("rogue"), "UNKNOWN_CA", Some(WEB_ID)),
        (
            "expired certificate",
            Some("expired"),
            "EXPIRED",
            Some(WEB_ID),
        ),
        (
            "not a workload ID",
            Some("not-workload"),
            "ID_NOT_ALLOWED",
            Some("spiffe://cluster.local/admin"),
        ),
        ("no client certificate", None, "NO_CERTIFICATE", None),
    ];
    for (what, cert, code, id) in cases {
        let before = nodes.b.flows().len();
        let mut cmd = nodes.a.node.command(&openssl);
        cmd.args([
            "s_client",
            "-connect",
            &format!("{}:{TUNNEL_PORT}", nodes.addr_b),
            "-tls1_3",
            "-alpn",
            "h2",
        ]);
        if let Some(c) = cert {
            cmd.args([
                "-cert",
                &format!("{d}/{c}/svid.pem"),
                "-key",
                &format!("{d}/{c}/svid.key"),
            ]);
        }
        // Keep the connection open a moment so the server's verdict arrives after the client's Finished.
        let out = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                std::thread::sleep(Duration::from_millis(500));
                drop(child.stdin.take());
                child.wait_with_output()
            })
            .unwrap();
        let rec = flow(&nodes.b, before, what, |f| {
            f["policy"].as_str().is_some_and(|p| p.contains(code))
        });
        assert_eq!(rec["verdict"], "DROPPED", "{what}: {rec}");
        assert_eq!(rec["drop_reason"], "AUTH_REQUIRED", "{what}: {rec}");
        assert_eq!(rec["source"]["ip"], nodes.addr_a.as_str(), "{what}: {rec}");
        assert_eq!(rec["peer_spiffe_id"].as_str(), id, "{what}: {rec}");
        assert!(
            nodes.b.proxy_log().contains(&format!(
                "tunnel handshake refused: mTLS tunnel handshake refused ({code})"
            )),
            "{what}: no log line\n{}\nopenssl: {}",
            nodes.b.proxy_log(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The refusals cost nothing else: a real cross-node request still works.
    let ok = nodes
        .a
        .curl("prod/web", &[&url(HTTP_PORT, "/public/after")])
        .unwrap();
    assert_eq!(status(&ok), 200, "{}", nodes.b.proxy_log());
    nodes.a.assert_proxy_running().unwrap();
    nodes.b.assert_proxy_running().unwrap();
}

#[test]
fn svids_rotating_during_h2load_lose_no_request() {
    require_root();
    let h2load = require_tool("h2load");
    let mut nodes = TwoNodes::new("mtls-rotation", MTLS_CASE).unwrap();
    // 4 s SVIDs, renewed every 2 s, for the node proxies and the web workload alike.
    nodes.start(&["--svid-ttl-secs", "4"]).unwrap();
    // An L4-only port (spliced): every new connection is a new CONNECT stream, so new TLS connections with the
    // rotated SVIDs are made during the run (HTTP ports reuse pooled upstream streams).
    let _l4 = Nginx::start(nodes.b.pod("prod/api"), L4_PORT, L4_PORT + 1).unwrap();
    let started = Instant::now();
    let web = nodes.a.pod("prod/web");
    let load = web
        .command(&h2load)
        .args([
            "-D",
            "9",
            "-c",
            "4",
            "-m",
            "4",
            &url(H2C_PORT, "/public/load"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // New connections during the run open new tunnel streams, over new TLS connections once the SVID rotated.
    let mut curls = 0;
    let mut curl_failures = Vec::new();
    while started.elapsed() < Duration::from_secs(8) {
        let out = nodes.a.curl("prod/web", &[&url(L4_PORT, "/new")]).unwrap();
        curls += 1;
        if status(&out) != 200 {
            curl_failures.push(String::from_utf8_lossy(&out.stderr).to_string());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = load.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    let line = report
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| {
            panic!(
                "no h2load summary: {report}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let num = |word: &str| -> u64 {
        let words: Vec<&str> = line.split_whitespace().collect();
        let i = words
            .iter()
            .position(|w| w.trim_end_matches(',') == word)
            .unwrap();
        words[i - 1].parse().unwrap()
    };
    assert!(num("succeeded") > 1000, "{line}");
    assert_eq!(num("failed"), 0, "{report}");
    assert_eq!(num("errored"), 0, "{report}");
    assert_eq!(num("succeeded"), num("total"), "{report}");
    assert!(
        curl_failures.is_empty(),
        "{} of {curls} new connections failed: {curl_failures:?}",
        curl_failures.len()
    );
    // The SVIDs did rotate during the run: tunnel connections with at least three SVID generations.
    let log = nodes.a.proxy_log();
    let generations: std::collections::BTreeSet<&str> = log
        .lines()
        .filter(|l| l.contains("tunnel connection to node proxy established"))
        .filter_map(|l| l.split("generation=").nth(1))
        .map(|g| g.split_whitespace().next().unwrap_or(""))
        .collect();
    assert!(
        generations.len() >= 3,
        "SVID generations seen: {generations:?}\n{log}"
    );
    eprintln!(
        "h2load {line}; {curls} new connections; tunnel connections with SVID generations {generations:?}"
    );
    nodes.a.assert_proxy_running().unwrap();
    nodes.b.assert_proxy_running().unwrap();
}
