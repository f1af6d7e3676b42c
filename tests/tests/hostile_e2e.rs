//! Issue 22, "make it stay fixed": request smuggling, header tricks, path tricks and HTTP/2 floods replayed against
//! the real daemon with raw HTTP/1 bytes and raw HTTP/2 frames. Every case asserts the exact answer (status line,
//! RST_STREAM or GOAWAY code, or a closed connection), that nginx behind the proxy never saw it (each case asks for
//! its own marker path), and the DROPPED flow record naming the attack. After the floods a fresh connection is still
//! served and the daemon's memory stayed bounded.
//!
//! The pods reach the daemon through iptables TPROXY (the client sockets are opened from this process inside the
//! pod's network namespace, so no cgroup enrollment is involved). Needs root, iptables, nginx and bpffs.

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use serde_json::Value;
use tollgate_e2e::scenario::{CaseFile, EbpfScenario, H2C_PORT, HTTP_PORT, PROXY_PORT};
use tollgate_e2e::{Pod, require_root, require_tool, status_kib, tproxy_all_tcp};

/// portal may GET and POST under /books/v2/ on ledger, over HTTP/1.1 (8080) and h2c (8081): the attacks below are
/// refused for what they are, not because the policy denies the method or port.
const CASE_YAML: &str = r#"
name: hostile
policies:
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: ledger-http, namespace: billing}
    spec:
      endpointSelector: {matchLabels: {app: ledger}}
      ingress:
        - fromEndpoints: [{matchLabels: {app: portal}}]
          toPorts:
            - ports: [{port: "8080", protocol: TCP}, {port: "8081", protocol: TCP}]
              rules:
                http:
                  - {method: GET, path: "/books/v2/.*"}
                  - {method: POST, path: "/books/v2/.*"}
endpoints:
  - {name: portal, namespace: billing, labels: {app: portal}, ip: 10.0.22.10}
  - {name: ledger, namespace: billing, labels: {app: ledger}, ip: 10.0.22.20}
"#;

const LEDGER_IP: &str = "10.0.22.20";
/// Short, so a connection that never starts a request (the SETTINGS flood) is closed within the test's time.
const HEADER_READ_TIMEOUT_SECS: u64 = 3;

/// The node with the daemon (TPROXY), nginx in every pod, and the flow log.
fn start_node() -> EbpfScenario {
    require_root();
    require_tool("iptables");
    let case = CaseFile::parse("hostile_e2e.rs", CASE_YAML).unwrap();
    let mut sc = EbpfScenario::new(case).unwrap();
    tproxy_all_tcp(&sc.node, PROXY_PORT).unwrap();
    let args: Vec<String> = [
        "--listen",
        &format!("0.0.0.0:{PROXY_PORT}"),
        "--redirect",
        "tproxy",
        "--header-read-timeout-secs",
        &HEADER_READ_TIMEOUT_SECS.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sc.start_proxy_with(&args).unwrap();
    sc
}

fn ledger(port: u16) -> SocketAddr {
    SocketAddr::new(LEDGER_IP.parse().unwrap(), port)
}

fn access_log(sc: &EbpfScenario) -> String {
    // Servers are started in endpoint order: portal, ledger.
    fs::read_to_string(sc.servers[1].dir.path().join("access.log")).unwrap_or_default()
}

/// The access log once it holds `line` (nginx writes an entry when it finalises the request, which can be just
/// after the client has read the response), or as it is after 5 s.
fn access_log_with(sc: &EbpfScenario, line: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let access = access_log(sc);
        if access.contains(line) || std::time::Instant::now() >= deadline {
            return access;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A TCP connection opened from inside `pod`'s network namespace; the socket keeps that namespace after the
/// opening thread ends.
fn connect_from(pod: &Pod, to: SocketAddr) -> TcpStream {
    let ns_path = format!("/run/netns/{}", pod.netns.name());
    let stream = std::thread::scope(|s| {
        s.spawn(|| {
            let ns = fs::File::open(&ns_path)?;
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)?;
            TcpStream::connect_timeout(&to, Duration::from_secs(3))
        })
        .join()
        .expect("connect thread")
    });
    stream.unwrap_or_else(|e| panic!("connecting to {to} from pod {}: {e}", pod.name))
}

/// The daemon's resident memory in KiB (`VmRSS` of /proc/<pid>/status).
fn daemon_rss_kib(sc: &EbpfScenario) -> u64 {
    let pid = sc
        .node
        .netns
        .pids()
        .into_iter()
        .find(|p| {
            fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "tollgate")
        })
        .expect("the tollgate process runs in the node netns");
    status_kib(u32::try_from(pid).expect("a process id"), "VmRSS")
}

/// The DROPPED record of the connection from `client_port` (the source port identifies the connection).
fn dropped_record(sc: &EbpfScenario, what: &str, client_port: u16) -> Value {
    sc.wait_flow(0, |f| {
        f["source"]["port"].as_u64() == Some(u64::from(client_port)) && f["verdict"] == "DROPPED"
    })
    .unwrap_or_else(|| {
        let mine: Vec<Value> = sc
            .flows()
            .into_iter()
            .filter(|f| f["source"]["port"].as_u64() == Some(u64::from(client_port)))
            .collect();
        panic!("{what}: no DROPPED record for client port {client_port}; its records: {mine:#?}")
    })
}

/// What a record says about why: its reason text and the URL it checked (lower case).
fn record_text(rec: &Value) -> String {
    format!(
        "{} {}",
        rec["policy"].as_str().unwrap_or(""),
        rec["l7"]["http"]["url"].as_str().unwrap_or("")
    )
    .to_lowercase()
}

/// Asserts the record's drop reason and that its text names the attack (every needle, case-insensitive).
fn assert_record_names(rec: &Value, what: &str, drop_reason: &str, needles: &[&str]) {
    assert_eq!(rec["drop_reason"], drop_reason, "{what}: {rec:#}");
    let text = record_text(rec);
    for n in needles {
        assert!(
            text.contains(&n.to_lowercase()),
            "{what}: record text {text:?} does not name {n:?}: {rec:#}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP/1.1 with raw bytes
// ---------------------------------------------------------------------------------------------------------------

/// What came back on one raw HTTP/1 connection.
#[derive(Debug)]
struct H1Answer {
    text: String,
    client_port: u16,
    /// The proxy closed (FIN or RST) before the 3 s read window ended.
    closed: bool,
}

impl H1Answer {
    fn status_lines(&self) -> Vec<&str> {
        // Bodies here end with a newline, so every status line starts a line.
        self.text
            .split('\n')
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| l.starts_with("HTTP/1.1 "))
            .collect()
    }
}

fn h1_exchange(pod: &Pod, request: &[u8]) -> H1Answer {
    let mut s = connect_from(pod, ledger(HTTP_PORT));
    let client_port = s.local_addr().unwrap().port();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    // A refusal may close before everything is written; what was answered is what counts.
    let _ = s.write_all(request);
    let mut data = Vec::new();
    let mut buf = [0u8; 65536];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false;
            }
            Err(_) => break true,
        }
    };
    H1Answer {
        text: String::from_utf8_lossy(&data).into_owned(),
        client_port,
        closed,
    }
}

/// One refused HTTP/1 request: the exact status line, and the record's drop reason and words naming the attack.
struct H1Case {
    what: &'static str,
    marker: &'static str,
    request: String,
    status_line: &'static str,
    drop_reason: &'static str,
    needles: &'static [&'static str],
}

fn post(marker: &str, framing: &str, body: &str) -> String {
    format!("POST /books/v2/{marker} HTTP/1.1\r\nHost: ledger\r\n{framing}\r\n{body}")
}

/// A smuggled request hidden in the body: reaching nginx would show its marker in the access log.
fn smuggled(marker: &str) -> String {
    format!("GET /books/v2/{marker}-smuggled HTTP/1.1\r\nHost: ledger\r\n\r\n")
}

fn smuggling_cases() -> Vec<H1Case> {
    let case = |what, marker: &'static str, framing: &str, reason, needles| {
        let body = format!("0\r\n\r\n{}", smuggled(marker));
        H1Case {
            what,
            marker,
            request: post(marker, framing, &body),
            status_line: "HTTP/1.1 400 Bad Request",
            drop_reason: reason,
            needles,
        }
    };
    let smuggling: &[&str] = &["Transfer-Encoding", "Content-Length"];
    vec![
        case(
            "CL.TE",
            "h1-clte",
            "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
            "INVALID_REQUEST",
            smuggling,
        ),
        case(
            "TE.CL",
            "h1-tecl",
            "Transfer-Encoding: chunked\r\nContent-Length: 6\r\n",
            "INVALID_REQUEST",
            smuggling,
        ),
        case(
            "TE obfuscation: xchunked beside Content-Length",
            "h1-te-xchunked-cl",
            "Content-Length: 6\r\nTransfer-Encoding: xchunked\r\n",
            "INVALID_REQUEST",
            smuggling,
        ),
        case(
            "TE obfuscation: tab before chunked beside Content-Length",
            "h1-te-tab-cl",
            "Content-Length: 6\r\nTransfer-Encoding:\tchunked\r\n",
            "INVALID_REQUEST",
            smuggling,
        ),
        case(
            "TE obfuscation: space before the colon",
            "h1-te-space-colon",
            "Content-Length: 6\r\nTransfer-Encoding : chunked\r\n",
            "INVALID_REQUEST",
            &["header"],
        ),
        case(
            "TE obfuscation: xchunked alone",
            "h1-te-xchunked",
            "Transfer-Encoding: xchunked\r\n",
            "INVALID_REQUEST",
            &["transfer-encoding"],
        ),
        case(
            "TE obfuscation: chunked, identity",
            "h1-te-chunked-identity",
            "Transfer-Encoding: chunked, identity\r\n",
            "INVALID_REQUEST",
            &["transfer-encoding"],
        ),
        case(
            "TE obfuscation: duplicated Transfer-Encoding",
            "h1-te-dup",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            "INVALID_REQUEST",
            &["transfer-encoding"],
        ),
        case(
            "TE obfuscation: folded onto the next line (obs-fold)",
            "h1-te-fold",
            "Transfer-Encoding:\r\n chunked\r\n",
            "INVALID_REQUEST",
            &["header"],
        ),
        case(
            "duplicate Content-Length, different values",
            "h1-cl-dup-diff",
            "Content-Length: 6\r\nContent-Length: 40\r\n",
            "INVALID_REQUEST",
            &["content-length"],
        ),
    ]
}

fn header_cases() -> Vec<H1Case> {
    let get = |marker: &str, headers: &str| {
        format!("GET /books/v2/{marker} HTTP/1.1\r\nHost: ledger\r\n{headers}\r\n")
    };
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    vec![
        H1Case {
            what: "obs-fold header continuation line",
            marker: "h1-obs-fold",
            request: get("h1-obs-fold", "X-Note: first\r\n  folded\r\n"),
            status_line: "HTTP/1.1 400 Bad Request",
            drop_reason: "INVALID_REQUEST",
            needles: &["header"],
        },
        H1Case {
            what: "request head over --max-header-bytes",
            marker: "h1-big-head",
            request: get(
                "h1-big-head",
                &format!("X-Big: {}\r\n", "a".repeat(70 * 1024)),
            ),
            status_line: "HTTP/1.1 431 Request Header Fields Too Large",
            drop_reason: "LIMIT_EXCEEDED",
            needles: &["too large"],
        },
        H1Case {
            what: "more header fields than --max-headers",
            marker: "h1-many-headers",
            request: get("h1-many-headers", &many),
            status_line: "HTTP/1.1 431 Request Header Fields Too Large",
            drop_reason: "LIMIT_EXCEEDED",
            needles: &["too large"],
        },
        H1Case {
            what: "encoded slash in the path",
            marker: "h1-encoded-slash",
            request: "GET /books/v2/..%2Fh1-encoded-slash HTTP/1.1\r\nHost: ledger\r\n\r\n".into(),
            status_line: "HTTP/1.1 400 Bad Request",
            drop_reason: "INVALID_REQUEST",
            needles: &["encoded slash"],
        },
        H1Case {
            what: "dot-segment traversal out of the allowed prefix",
            marker: "h1-traversal",
            request: "GET /books/v2/../h1-traversal HTTP/1.1\r\nHost: ledger\r\n\r\n".into(),
            status_line: "HTTP/1.1 403 Forbidden",
            drop_reason: "POLICY_DENIED",
            needles: &["/books/h1-traversal"],
        },
        H1Case {
            what: "percent-encoded dot-segment traversal",
            marker: "h1-enc-traversal",
            request: "GET /books/v2/%2e%2e/h1-enc-traversal HTTP/1.1\r\nHost: ledger\r\n\r\n"
                .into(),
            status_line: "HTTP/1.1 403 Forbidden",
            drop_reason: "POLICY_DENIED",
            needles: &["/books/h1-enc-traversal"],
        },
    ]
}

/// Runs one refused HTTP/1 case; returns a failure description instead of panicking so every case is reported.
fn check_h1_case(sc: &EbpfScenario, client: &Pod, c: &H1Case) -> Result<(), String> {
    let answer = h1_exchange(client, c.request.as_bytes());
    let statuses = answer.status_lines();
    if statuses != [c.status_line] {
        return Err(format!(
            "{}: want exactly [{:?}], got {answer:?}",
            c.what, c.status_line
        ));
    }
    // hyper closes after a head it refused (400, 431); a policy denial (403) keeps the connection.
    if !c.status_line.contains(" 403 ") && !answer.closed {
        return Err(format!(
            "{}: the connection stayed open after {:?}",
            c.what, c.status_line
        ));
    }
    let rec = sc
        .wait_flow(0, |f| {
            f["source"]["port"].as_u64() == Some(u64::from(answer.client_port))
                && f["verdict"] == "DROPPED"
        })
        .ok_or_else(|| {
            format!(
                "{}: no DROPPED record for port {}",
                c.what, answer.client_port
            )
        })?;
    let text = record_text(&rec);
    if rec["drop_reason"] != c.drop_reason
        || !c.needles.iter().all(|n| text.contains(&n.to_lowercase()))
    {
        return Err(format!(
            "{}: want drop_reason {} naming {:?}, got {} {text:?}",
            c.what, c.drop_reason, c.needles, rec["drop_reason"]
        ));
    }
    let code = rec["l7"]["http"]["code"].as_u64();
    let want_code: u64 = c.status_line[9..12].parse().unwrap();
    if code != Some(want_code) {
        return Err(format!(
            "{}: record code {code:?}, want {want_code}: {rec}",
            c.what
        ));
    }
    Ok(())
}

#[test]
fn http1_smuggling_header_and_path_attacks_are_refused_with_a_record_each() {
    let sc = start_node();
    let client = sc.pod("billing/portal");
    let ok = h1_exchange(
        client,
        b"GET /books/v2/h1-sanity HTTP/1.1\r\nHost: ledger\r\nConnection: close\r\n\r\n",
    );
    assert!(
        ok.text.starts_with("HTTP/1.1 200 OK"),
        "sanity: {ok:?}\n{}",
        sc.proxy_log()
    );

    let cases: Vec<H1Case> = smuggling_cases()
        .into_iter()
        .chain(header_cases())
        .collect();
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| check_h1_case(&sc, client, c).err())
        .collect();
    let access = access_log(&sc);
    let leaked: Vec<&str> = cases
        .iter()
        .map(|c| c.marker)
        .filter(|m| access.contains(m))
        .collect();
    assert!(
        failures.is_empty() && leaked.is_empty(),
        "{} of {} cases failed:\n{}\nreached nginx: {leaked:?}\n{access}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    duplicate_equal_content_length_is_one_unambiguous_request(&sc, client);
    // Nothing above affected other connections.
    let ok = h1_exchange(
        client,
        b"GET /books/v2/h1-after HTTP/1.1\r\nHost: ledger\r\nConnection: close\r\n\r\n",
    );
    assert!(ok.text.starts_with("HTTP/1.1 200 OK"), "after: {ok:?}");
}

/// Two equal `Content-Length` fields are one length (RFC 9110 section 8.6 lets a recipient treat them as one):
/// hyper keeps one, so the upstream gets a single, unambiguous length and the body bytes are never read as a
/// request. Asserted through what nginx answers and logs: exactly the POST, then the pipelined GET after it.
fn duplicate_equal_content_length_is_one_unambiguous_request(sc: &EbpfScenario, client: &Pod) {
    let body = smuggled("h1-cl-dup-equal");
    let request = format!(
        "{}GET /books/v2/h1-cl-dup-equal-next HTTP/1.1\r\nHost: ledger\r\nConnection: close\r\n\r\n",
        post(
            "h1-cl-dup-equal",
            &format!("Content-Length: {0}\r\nContent-Length: {0}\r\n", body.len()),
            &body
        )
    );
    let answer = h1_exchange(client, request.as_bytes());
    assert_eq!(
        answer.status_lines(),
        ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK"],
        "duplicate equal Content-Length: {answer:?}"
    );
    let access = access_log_with(sc, "GET /books/v2/h1-cl-dup-equal-next ");
    assert!(
        !access.contains("h1-cl-dup-equal-smuggled"),
        "the body was read as a request:\n{access}"
    );
    assert!(
        access.contains("POST /books/v2/h1-cl-dup-equal "),
        "{access}"
    );
    assert!(
        access.contains("GET /books/v2/h1-cl-dup-equal-next "),
        "{access}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP/2 with raw frames
// ---------------------------------------------------------------------------------------------------------------

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK integer with an `n`-bit prefix; `first` holds the pattern bits above the prefix.
fn hpack_int(value: usize, n: u32, first: u8, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A literal field without indexing, new name, no Huffman (RFC 7541 section 6.2.2).
fn hpack_literal(name: &str, value: &str, out: &mut Vec<u8>) {
    out.push(0);
    hpack_int(name.len(), 7, 0, out);
    out.extend_from_slice(name.as_bytes());
    hpack_int(value.len(), 7, 0, out);
    out.extend_from_slice(value.as_bytes());
}

/// A GET's field block: pseudo-headers first, then `extra`.
fn get_block(path: &str, authority: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
    ] {
        hpack_literal(n, v, &mut b);
    }
    for (n, v) in extra {
        hpack_literal(n, v, &mut b);
    }
    b
}

/// Decodes a Huffman-coded string of digits (a status code): '0'-'2' have 5-bit codes, '3'-'9' 6-bit ones
/// (RFC 7541 appendix B); the padding is up to 7 one-bits.
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let bits: Vec<u32> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| u32::from((b >> i) & 1)))
        .collect();
    let take = |at: usize, n: usize| bits[at..at + n].iter().fold(0, |v, b| v << 1 | b);
    let (mut at, mut out) = (0, String::new());
    while bits.len() - at >= 5 {
        if take(at, 5) <= 2 {
            out.push(char::from(b'0' + take(at, 5) as u8));
            at += 5;
        } else if bits.len() - at >= 6 && (0b011001..=0b011111).contains(&take(at, 6)) {
            out.push(char::from(b'3' + (take(at, 6) - 0b011001) as u8));
            at += 6;
        } else {
            break;
        }
    }
    (bits.len() - at < 8 && bits[at..].iter().all(|&b| b == 1)).then_some(out)
}

/// The `:status` of the first response on a connection: a static-table entry, or a literal field whose name is
/// `:status`'s static index (nothing can refer to the dynamic table yet).
fn status_of_block(block: &[u8]) -> Option<u16> {
    let mut b = block;
    while b.first()? & 0xe0 == 0x20 {
        b = &b[1..]; // dynamic table size update (small values only)
    }
    let first = *b.first()?;
    if first & 0x80 != 0 {
        return [200, 204, 206, 304, 400, 404, 500]
            .get(usize::from(first & 0x7f).checked_sub(8)?)
            .copied();
    }
    let index = if first & 0x40 != 0 {
        first & 0x3f
    } else {
        first & 0x0f
    };
    if !(8..=14).contains(&index) {
        return None;
    }
    let len = usize::from(b.get(1)? & 0x7f);
    let raw = b.get(2..2 + len)?;
    let text = if b[1] & 0x80 != 0 {
        huffman_digits(raw)?
    } else {
        String::from_utf8(raw.to_vec()).ok()?
    };
    text.parse().ok()
}

/// What the daemon sent on one HTTP/2 connection.
#[derive(Debug, Default)]
struct H2Outcome {
    /// The server's SETTINGS arrived (and were ACKed).
    settings: bool,
    statuses: BTreeMap<u32, u16>,
    resets: BTreeMap<u32, u32>,
    goaway: Option<u32>,
    closed: bool,
}

/// A raw HTTP/2 client connection (prior knowledge) from a pod.
struct H2Client {
    s: TcpStream,
    client_port: u16,
    inbuf: Vec<u8>,
    out: H2Outcome,
}

impl H2Client {
    /// Connects, sends the preface and an empty SETTINGS, and ACKs the server's SETTINGS before returning (an ACK
    /// written later could land inside a header block, which is a protocol error).
    fn open(pod: &Pod) -> H2Client {
        let mut s = connect_from(pod, ledger(H2C_PORT));
        let client_port = s.local_addr().unwrap().port();
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        s.write_all(&hello).unwrap();
        let mut c = H2Client {
            s,
            client_port,
            inbuf: Vec::new(),
            out: H2Outcome::default(),
        };
        let out = c.read_until(Duration::from_secs(5), |o| o.settings);
        assert!(out.settings, "no SETTINGS from the daemon: {out:?}");
        c
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes)
    }

    /// Reads frames until `done` holds, the connection closes, or `timeout` passes.
    fn read_until(&mut self, timeout: Duration, done: impl Fn(&H2Outcome) -> bool) -> &H2Outcome {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 65536];
        while !done(&self.out) && !self.out.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.s
                .set_read_timeout(Some(left.min(Duration::from_millis(200))))
                .unwrap();
            match self.s.read(&mut buf) {
                Ok(0) => self.out.closed = true,
                Ok(n) => {
                    self.inbuf.extend_from_slice(&buf[..n]);
                    self.take_frames();
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => self.out.closed = true,
            }
        }
        &self.out
    }

    fn take_frames(&mut self) {
        while self.inbuf.len() >= 9 {
            let len = usize::from(self.inbuf[0]) << 16
                | usize::from(self.inbuf[1]) << 8
                | usize::from(self.inbuf[2]);
            if self.inbuf.len() < 9 + len {
                return;
            }
            let f: Vec<u8> = self.inbuf.drain(..9 + len).collect();
            let (ty, flags, payload) = (f[3], f[4], &f[9..]);
            let stream = u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff;
            let code = |p: &[u8]| u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
            match ty {
                SETTINGS if flags & ACK == 0 => {
                    let _ = self.s.write_all(&frame(SETTINGS, ACK, 0, &[]));
                    self.out.settings = true;
                }
                HEADERS => {
                    let status = status_of_block(payload).unwrap_or(0);
                    self.out.statuses.entry(stream).or_insert(status);
                }
                RST_STREAM if payload.len() >= 4 => {
                    self.out.resets.insert(stream, code(payload));
                }
                GOAWAY if payload.len() >= 8 => self.out.goaway = Some(code(&payload[4..])),
                _ => {}
            }
        }
    }
}

fn h2_get(client: &mut H2Client, stream: u32, path: &str) {
    let block = get_block(path, "ledger", &[]);
    client
        .send(&frame(HEADERS, END_STREAM | END_HEADERS, stream, &block))
        .unwrap();
}

/// A plain GET on a fresh h2 connection answers 200: the daemon serves other connections.
fn assert_fresh_h2_connection_served(sc: &EbpfScenario, after: &str) {
    let mut c = H2Client::open(sc.pod("billing/portal"));
    let port = c.client_port;
    h2_get(
        &mut c,
        1,
        &format!("/books/v2/h2-fresh-after-{}", after.replace(' ', "-")),
    );
    let out = c.read_until(Duration::from_secs(5), |o| o.statuses.contains_key(&1));
    if out.statuses.get(&1) != Some(&200) {
        let mine: Vec<Value> = sc
            .flows()
            .into_iter()
            .filter(|f| f["source"]["port"] == port)
            .collect();
        let log = sc.proxy_log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!("fresh connection after {after}: {out:?}\nits records: {mine:#?}\nlog: {tail:#?}");
    }
}

/// HEADERS followed at once by RST_STREAM, many times over in one write (CVE-2023-44487).
fn rapid_reset(sc: &EbpfScenario) {
    let mut c = H2Client::open(sc.pod("billing/portal"));
    let mut burst = Vec::new();
    for i in 0..2000u32 {
        let stream = 2 * i + 1;
        burst.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            stream,
            &get_block("/books/v2/h2-rapid-reset", "ledger", &[]),
        ));
        burst.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
    }
    let _ = c.send(&burst);
    let out = c.read_until(Duration::from_secs(5), |o| o.goaway.is_some());
    assert_eq!(out.goaway, Some(ENHANCE_YOUR_CALM), "rapid reset: {out:?}");
    let rec = dropped_record(sc, "rapid reset", c.client_port);
    assert_record_names(
        &rec,
        "rapid reset",
        "LIMIT_EXCEEDED",
        &[
            "rapid reset flood (CVE-2023-44487)",
            "GOAWAY ENHANCE_YOUR_CALM (debug data \"too_many_resets\")",
        ],
    );
}

/// A HEADERS or CONTINUATION frame of stream 1, without END_HEADERS, holding one 16 000-byte field.
fn flood_frame(ty: u8) -> Vec<u8> {
    let mut payload = Vec::new();
    hpack_literal("x-flood", &"f".repeat(16_000), &mut payload);
    frame(ty, 0, 1, &payload)
}

/// HEADERS without END_HEADERS, then CONTINUATION frames, paced: the GOAWAY must come before the client has sent
/// much more than the header limit (64 KiB = 4 full frames).
fn continuation_flood_is_cut_within_the_header_limit(sc: &EbpfScenario) {
    let mut c = H2Client::open(sc.pod("billing/portal"));
    // Every frame carries one whole 16 000-byte field, so the header block keeps growing as it arrives.
    c.send(&flood_frame(HEADERS)).unwrap();
    let chunk = flood_frame(CONTINUATION);
    let mut sent = 0;
    while c.out.goaway.is_none() && !c.out.closed && sent < 64 {
        if c.send(&chunk).is_err() {
            break;
        }
        sent += 1;
        c.read_until(Duration::from_millis(100), |o| o.goaway.is_some());
    }
    c.read_until(Duration::from_secs(3), |o| o.goaway.is_some());
    assert_eq!(
        c.out.goaway,
        Some(ENHANCE_YOUR_CALM),
        "CONTINUATION flood after {sent} frames: {:?}",
        c.out
    );
    assert!(
        sent <= 12,
        "GOAWAY only after {sent} CONTINUATION frames of 16 KiB"
    );
    let rec = dropped_record(sc, "CONTINUATION flood", c.client_port);
    assert_record_names(
        &rec,
        "CONTINUATION flood",
        "LIMIT_EXCEEDED",
        &[
            "CONTINUATION flood (CVE-2024-27316)",
            "GOAWAY ENHANCE_YOUR_CALM (debug data \"too_many_continuations\")",
        ],
    );
}

/// The same flood written as fast as the socket takes it, on 8 connections at once: the daemon's memory stays
/// bounded (it never buffers a header block past the limit).
fn continuation_flood_keeps_memory_bounded(sc: &EbpfScenario) -> i64 {
    let before = daemon_rss_kib(sc);
    let chunk = flood_frame(CONTINUATION);
    let mut clients: Vec<H2Client> = (0..8)
        .map(|_| H2Client::open(sc.pod("billing/portal")))
        .collect();
    let mut peak = before;
    for c in &mut clients {
        let _ = c.send(&flood_frame(HEADERS));
        c.s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        // Up to 16 MiB each; the write fails once the daemon has closed.
        for _ in 0..1024 {
            if c.send(&chunk).is_err() {
                break;
            }
        }
        peak = peak.max(daemon_rss_kib(sc));
    }
    for c in &mut clients {
        let out = c.read_until(Duration::from_secs(5), |o| o.goaway.is_some());
        assert!(
            out.goaway == Some(ENHANCE_YOUR_CALM) || out.closed,
            "bulk CONTINUATION flood: {out:?}"
        );
    }
    peak = peak.max(daemon_rss_kib(sc));
    peak as i64 - before as i64
}

/// SETTINGS frames (CVE-2019-9515: each costs the server an ACK). h2 only applies backpressure (it reads no
/// further SETTINGS until the ACK is written); the proxy allows 100 in 10 s, then writes GOAWAY
/// ENHANCE_YOUR_CALM and closes. 50 on another connection are fine: that one still serves a request.
fn settings_flood(sc: &EbpfScenario) -> i64 {
    let mut calm = H2Client::open(sc.pod("billing/portal"));
    let one = frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
    calm.send(&one.repeat(50)).unwrap();
    h2_get(&mut calm, 1, "/books/v2/h2-settings-50");
    let out = calm.read_until(Duration::from_secs(5), |o| o.statuses.contains_key(&1));
    assert_eq!(out.statuses.get(&1), Some(&200), "50 SETTINGS: {out:?}");
    assert_eq!(out.goaway, None, "50 SETTINGS: {out:?}");

    let before = daemon_rss_kib(sc);
    let mut c = H2Client::open(sc.pod("billing/portal"));
    let started = Instant::now();
    let _ = c.send(&one.repeat(1000));
    let out = c.read_until(Duration::from_secs(5), |o| o.goaway.is_some());
    assert_eq!(
        out.goaway,
        Some(ENHANCE_YOUR_CALM),
        "SETTINGS flood: {out:?}"
    );
    let out = c.read_until(Duration::from_secs(5), |o| o.closed);
    assert!(
        out.closed,
        "SETTINGS flood: still open after the GOAWAY: {out:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(HEADER_READ_TIMEOUT_SECS),
        "SETTINGS flood: cut only after {:?} (the first-request deadline, not the flood bound)",
        started.elapsed()
    );
    let rss = daemon_rss_kib(sc) as i64 - before as i64;
    let rec = dropped_record(sc, "SETTINGS flood", c.client_port);
    assert_record_names(
        &rec,
        "SETTINGS flood",
        "LIMIT_EXCEEDED",
        &[
            "HTTP/2 SETTINGS flood (CVE-2019-9515): more than 100 SETTINGS frames within 10s",
            "GOAWAY ENHANCE_YOUR_CALM",
        ],
    );
    rss
}

#[test]
fn http2_floods_close_only_their_connection_with_a_record_and_bounded_memory() {
    let sc = start_node();
    assert_fresh_h2_connection_served(&sc, "start");
    let base = daemon_rss_kib(&sc);

    rapid_reset(&sc);
    assert_fresh_h2_connection_served(&sc, "rapid reset");
    continuation_flood_is_cut_within_the_header_limit(&sc);
    let continuation_growth = continuation_flood_keeps_memory_bounded(&sc);
    assert_fresh_h2_connection_served(&sc, "CONTINUATION flood");
    let settings_growth = settings_flood(&sc);
    assert_fresh_h2_connection_served(&sc, "SETTINGS flood");

    // 8 connections x 16 MiB of CONTINUATION would be 128 MiB if buffered; 32 MiB leaves room for allocator noise.
    eprintln!(
        "RSS base {base} KiB, growth: CONTINUATION {continuation_growth} KiB, SETTINGS {settings_growth} KiB"
    );
    assert!(
        continuation_growth < 32 * 1024,
        "CONTINUATION flood grew RSS by {continuation_growth} KiB"
    );
    assert!(
        settings_growth < 32 * 1024,
        "SETTINGS flood grew RSS by {settings_growth} KiB"
    );
    let ok = h1_exchange(
        sc.pod("billing/portal"),
        b"GET /books/v2/h2-after-floods HTTP/1.1\r\nHost: ledger\r\nConnection: close\r\n\r\n",
    );
    assert!(
        ok.text.starts_with("HTTP/1.1 200 OK"),
        "HTTP/1 after the floods: {ok:?}"
    );
}

/// One refused h2 request on its own connection: the stream's status, and the record.
fn h2_refused(
    sc: &EbpfScenario,
    what: &str,
    block: Vec<u8>,
    status: u16,
    drop_reason: &str,
    needles: &[&str],
) {
    let mut c = H2Client::open(sc.pod("billing/portal"));
    let frames = split_into_frames(1, &block);
    c.send(&frames).unwrap();
    let out = c.read_until(Duration::from_secs(5), |o| o.statuses.contains_key(&1));
    assert_eq!(out.statuses.get(&1), Some(&status), "{what}: {out:?}");
    let rec = dropped_record(sc, what, c.client_port);
    assert_record_names(&rec, what, drop_reason, needles);
}

/// A field block as HEADERS (+ CONTINUATION) frames of at most 16 KiB, the last one ending the headers.
fn split_into_frames(stream: u32, block: &[u8]) -> Vec<u8> {
    let chunks: Vec<&[u8]> = block.chunks(16384).collect();
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let ty = if i == 0 { HEADERS } else { CONTINUATION };
        let mut flags = if i == 0 { END_STREAM } else { 0 };
        if i + 1 == chunks.len() {
            flags |= END_HEADERS;
        }
        out.extend(frame(ty, flags, stream, chunk));
    }
    out
}

#[test]
fn http2_request_level_attacks_are_refused_with_a_record_each() {
    let sc = start_node();
    assert_fresh_h2_connection_served(&sc, "start");
    h2_refused(
        &sc,
        ":authority and host disagree",
        get_block(
            "/books/v2/h2-authority",
            "ledger",
            &[("host", "evil.internal")],
        ),
        400,
        "INVALID_REQUEST",
        &["Host header says"],
    );
    h2_refused(
        &sc,
        ":path dot-segment traversal",
        get_block("/books/v2/../h2-traversal", "ledger", &[]),
        403,
        "POLICY_DENIED",
        &["/books/h2-traversal"],
    );
    h2_refused(
        &sc,
        ":path percent-encoded traversal",
        get_block("/books/v2/%2e%2e/h2-enc-traversal", "ledger", &[]),
        403,
        "POLICY_DENIED",
        &["/books/h2-enc-traversal"],
    );
    h2_refused(
        &sc,
        ":path encoded slash",
        get_block("/books/v2/..%2Fh2-encoded-slash", "ledger", &[]),
        400,
        "INVALID_REQUEST",
        &["encoded slash"],
    );
    oversized_header_list_gets_431_and_the_connection_lives(&sc);
    h2_undecodable(
        &sc,
        "h2 uppercase header name",
        get_block("/books/v2/h2-upper", "ledger", &[("X-Upper", "1")]),
    );
    h2_malformed(
        &sc,
        "h2 connection-specific header",
        get_block(
            "/books/v2/h2-conn",
            "ledger",
            &[("connection", "keep-alive")],
        ),
    );
    let mut unknown_pseudo = Vec::new();
    hpack_literal(":bogus", "1", &mut unknown_pseudo);
    unknown_pseudo.extend(get_block("/books/v2/h2-pseudo", "ledger", &[]));
    h2_undecodable(&sc, "h2 unknown pseudo-header", unknown_pseudo);
    let mut no_path = Vec::new();
    for (n, v) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "ledger"),
    ] {
        hpack_literal(n, v, &mut no_path);
    }
    h2_malformed(&sc, "h2 request without :path", no_path);
    streams_over_the_concurrency_limit_are_refused(&sc);
    hpack_bomb_gets_goaway(&sc);
    let access = access_log(&sc);
    for marker in [
        "h2-authority",
        "h2-traversal",
        "h2-enc-traversal",
        "h2-encoded-slash",
        "h2-big",
        "h2-bomb",
        "h2-upper",
        "h2-conn",
        "h2-pseudo",
        "h2-concurrent-256",
    ] {
        assert!(
            !access.contains(marker),
            "{marker} reached nginx:\n{access}"
        );
    }
    assert_fresh_h2_connection_served(&sc, "request-level attacks");
}

/// A header list over --max-header-bytes (64 KiB) but under h2's abuse limit: RFC 9113 section 10.5.1 lets the
/// server answer 431; the stream ends there and the connection keeps serving.
fn oversized_header_list_gets_431_and_the_connection_lives(sc: &EbpfScenario) {
    let what = "h2 header list over --max-header-bytes";
    let mut c = H2Client::open(sc.pod("billing/portal"));
    let big = "a".repeat(70 * 1024);
    c.send(&split_into_frames(
        1,
        &get_block("/books/v2/h2-big", "ledger", &[("x-big", &big)]),
    ))
    .unwrap();
    let out = c.read_until(Duration::from_secs(5), |o| o.statuses.contains_key(&1));
    assert_eq!(out.statuses.get(&1), Some(&431), "{what}: {out:?}");
    h2_get(&mut c, 3, "/books/v2/h2-after-431");
    let out = c.read_until(Duration::from_secs(5), |o| o.statuses.contains_key(&3));
    assert_eq!(
        out.statuses.get(&3),
        Some(&200),
        "{what}: same connection after the 431: {out:?}"
    );
    assert_eq!(out.goaway, None, "{what}: {out:?}");
    // A connection that has served requests is not cut by the first-request deadline (select! once checked that
    // guard only on entry and closed it at --header-read-timeout-secs).
    std::thread::sleep(Duration::from_secs(HEADER_READ_TIMEOUT_SECS + 1));
    h2_get(&mut c, 5, "/books/v2/h2-after-deadline");
    let out = c.read_until(Duration::from_secs(5), |o| o.statuses.contains_key(&5));
    assert_eq!(
        out.statuses.get(&5),
        Some(&200),
        "{what}: past the first-request deadline: {out:?}"
    );
    // h2 answered the 431 itself (hyper never saw the stream); the proxy read it off the wire.
    let rec = dropped_record(sc, what, c.client_port);
    assert_eq!(rec["l7"]["http"]["code"], 431, "{what}: {rec:#}");
    assert_record_names(
        &rec,
        what,
        "LIMIT_EXCEEDED",
        &[
            "request header list over the limit of 65536 bytes (--max-header-bytes)",
            "answered 431 by h2 on stream 1",
        ],
    );
}

const PROTOCOL_ERROR: u32 = 0x1;
const REFUSED_STREAM: u32 = 0x7;

/// A header block h2's decoder refuses (an uppercase name, an unknown pseudo-header): a connection error, GOAWAY PROTOCOL_ERROR, recorded as
/// INVALID_REQUEST.
fn h2_undecodable(sc: &EbpfScenario, what: &str, block: Vec<u8>) {
    let mut c = H2Client::open(sc.pod("billing/portal"));
    c.send(&split_into_frames(1, &block)).unwrap();
    let out = c.read_until(Duration::from_secs(5), |o| o.goaway.is_some());
    assert_eq!(out.goaway, Some(PROTOCOL_ERROR), "{what}: {out:?}");
    assert!(out.statuses.is_empty(), "{what}: {out:?}");
    let rec = dropped_record(sc, what, c.client_port);
    assert_record_names(
        &rec,
        what,
        "INVALID_REQUEST",
        &["HTTP/2 protocol error; connection closed with GOAWAY PROTOCOL_ERROR"],
    );
}

/// A request h2 finds malformed (RFC 9113 section 8.1.1) is reset with PROTOCOL_ERROR before hyper sees it; the
/// connection lives, and the record says INVALID_REQUEST.
fn h2_malformed(sc: &EbpfScenario, what: &str, block: Vec<u8>) {
    let mut c = H2Client::open(sc.pod("billing/portal"));
    c.send(&split_into_frames(1, &block)).unwrap();
    let out = c.read_until(Duration::from_secs(5), |o| o.resets.contains_key(&1));
    assert_eq!(out.resets.get(&1), Some(&PROTOCOL_ERROR), "{what}: {out:?}");
    assert_eq!(out.statuses.get(&1), None, "{what}: {out:?}");
    let rec = dropped_record(sc, what, c.client_port);
    assert_record_names(
        &rec,
        what,
        "INVALID_REQUEST",
        &[
            "malformed HTTP/2 request",
            "stream 1 reset with PROTOCOL_ERROR",
        ],
    );
    h2_get(&mut c, 3, "/books/v2/h2-after-malformed");
    let out = c.read_until(Duration::from_secs(5), |o| o.statuses.contains_key(&3));
    assert_eq!(
        out.statuses.get(&3),
        Some(&200),
        "{what}: connection after: {out:?}"
    );
}

/// More streams open at once than --h2-max-concurrent-streams (256): h2 resets the extra one with REFUSED_STREAM.
fn streams_over_the_concurrency_limit_are_refused(sc: &EbpfScenario) {
    let what = "h2 streams over --h2-max-concurrent-streams";
    let mut c = H2Client::open(sc.pod("billing/portal"));
    let mut burst = Vec::new();
    for i in 0..257u32 {
        // No END_STREAM: every request stays open, waiting for its body.
        let block = get_block(&format!("/books/v2/h2-concurrent-{i}"), "ledger", &[]);
        burst.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &block));
    }
    c.send(&burst).unwrap();
    let last = 2 * 256 + 1;
    let out = c.read_until(Duration::from_secs(5), |o| o.resets.contains_key(&last));
    assert_eq!(
        out.resets.get(&last),
        Some(&REFUSED_STREAM),
        "{what}: {out:?}"
    );
    let rec = dropped_record(sc, what, c.client_port);
    assert_record_names(
        &rec,
        what,
        "LIMIT_EXCEEDED",
        &[
            "over the limit of 256 concurrent streams (--h2-max-concurrent-streams)",
            &format!("stream {last} reset with REFUSED_STREAM"),
        ],
    );
}

/// A small HEADERS frame that decodes to far more than the limit through the HPACK dynamic table (one 4 KiB
/// entry referenced a hundred times): a connection error, GOAWAY ENHANCE_YOUR_CALM.
fn hpack_bomb_gets_goaway(sc: &EbpfScenario) {
    let what = "HPACK bomb";
    let mut c = H2Client::open(sc.pod("billing/portal"));
    let mut block = get_block("/books/v2/h2-bomb", "ledger", &[]);
    block.push(0x40); // literal with incremental indexing, new name
    hpack_int(6, 7, 0, &mut block);
    block.extend_from_slice(b"x-bomb");
    hpack_int(4000, 7, 0, &mut block);
    block.extend(std::iter::repeat_n(b'b', 4000));
    block.extend(std::iter::repeat_n(0x80 | 62, 100)); // indexed: the entry just added
    c.send(&split_into_frames(1, &block)).unwrap();
    let out = c.read_until(Duration::from_secs(5), |o| o.goaway.is_some());
    assert_eq!(out.goaway, Some(ENHANCE_YOUR_CALM), "{what}: {out:?}");
    assert!(
        out.statuses.is_empty(),
        "{what}: a response was sent: {out:?}"
    );
    let rec = dropped_record(sc, what, c.client_port);
    assert_record_names(
        &rec,
        what,
        "LIMIT_EXCEEDED",
        &[
            "HTTP/2 HPACK bomb",
            "GOAWAY ENHANCE_YOUR_CALM (debug data \"header_list_way_too_large\")",
        ],
    );
}

#[test]
fn hpack_status_decoding_reads_static_and_huffman_literals() {
    assert_eq!(status_of_block(&[0x88]), Some(200));
    assert_eq!(status_of_block(&[0x8d]), Some(404));
    // 431 Huffman-coded: 011010 011001 00001 + 7 padding ones.
    assert_eq!(status_of_block(&[0x08, 0x83, 0x69, 0x90, 0xff]), Some(431));
    assert_eq!(status_of_block(&[0x08, 0x03, b'4', b'2', b'9']), Some(429));
}
