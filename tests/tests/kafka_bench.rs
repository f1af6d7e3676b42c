//! Kafka produce through the proxy vs direct, for the design notes — a measurement, not a correctness test, so
//! `#[ignore]`d:
//!
//! `cargo test --release -p tollgate-e2e --test kafka_bench -- --ignored --nocapture`
//!
//! Same node, same Tansu broker in the `broker` pod, same librdkafka 2.16 producer (Python confluent-kafka) in the
//! `writer` pod. "proxy" runs with the `kafka-events` policy (topic rules on 9092, eBPF redirect); "direct" is the
//! same namespaces with the redirect detached. Runs alternate (direct, proxy, direct, proxy, ...) so drift on this
//! shared machine hits both. Two figures per run: closed-loop throughput (1 KiB records, acks=1, default batching)
//! and delivery latency percentiles at a fixed 1000 records/s with `linger.ms=0` (each record's latency is taken
//! from its scheduled send time, so a stall is charged to every record due during it).

use serde_json::Value;
use tollgate_e2e::kafka::start_tansu;
use tollgate_e2e::require_root;
use tollgate_e2e::scenario::{CaseFile, EbpfScenario};

const BROKER: &str = "10.0.24.20:9092";

const SCRIPT: &str = r#"
import sys, json, time
from confluent_kafka import Producer
broker, mode = sys.argv[1], sys.argv[2]
payload = b"x" * 1024
if mode == "throughput":
    n = 100000
    p = Producer({"bootstrap.servers": broker, "client.id": "w1", "acks": 1, "linger.ms": 5,
                  "queue.buffering.max.messages": 200000})
    done = [0, 0]
    def cb(err, msg):
        done[0 if err is None else 1] += 1
    t0 = time.perf_counter()
    for i in range(n):
        while True:
            try:
                p.produce("events", payload, callback=cb)
                break
            except BufferError:
                p.poll(0.001)
        p.poll(0)
    p.flush(60)
    dt = time.perf_counter() - t0
    print(json.dumps({"records_per_s": done[0] / dt, "errors": done[1]}))
else:
    rate, n = 1000.0, 5000
    p = Producer({"bootstrap.servers": broker, "client.id": "w1", "acks": 1, "linger.ms": 0})
    lat, errors = [], [0]
    def make_cb(due):
        def cb(err, msg):
            if err is None:
                lat.append(time.perf_counter() - due)
            else:
                errors[0] += 1
        return cb
    p.produce("events", payload); p.flush(10)  # connection and metadata warm
    t0 = time.perf_counter()
    for i in range(n):
        due = t0 + i / rate
        while time.perf_counter() < due:
            p.poll(0)
        p.produce("events", payload, callback=make_cb(due))
        p.poll(0)
    p.flush(30)
    lat.sort()
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] * 1000
    print(json.dumps({"p50_ms": q(0.5), "p99_ms": q(0.99), "p999_ms": q(0.999), "max_ms": lat[-1] * 1000,
                      "records": len(lat), "errors": errors[0]}))
"#;

fn run(sc: &EbpfScenario, mode: &str) -> Value {
    let o = sc
        .pod("stream/writer")
        .command("python3")
        .args(["-c", SCRIPT, BROKER, mode])
        .output()
        .expect("python");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("{out}{}", String::from_utf8_lossy(&o.stderr)));
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["errors"], 0, "{v}");
    v
}

#[test]
#[ignore = "benchmark: run by hand with --ignored --nocapture"]
fn kafka_produce_direct_vs_proxy() {
    require_root();
    let mut sc = EbpfScenario::new(CaseFile::load("kafka-events").unwrap()).unwrap();
    let _broker = start_tansu(sc.pod("stream/broker"), 9092, sc.dir.path(), &["events"]).unwrap();
    let mut rows = Vec::new();
    for round in 0..3 {
        for mode in ["direct", "proxy"] {
            if mode == "proxy" {
                sc.start_proxy().unwrap();
            }
            let t = run(&sc, "throughput");
            let l = run(&sc, "latency");
            if mode == "proxy" {
                sc.kill_proxy();
                sc.remove_pins();
            }
            println!("round {round} {mode}: {t} {l}");
            rows.push((mode, t, l));
        }
    }
    let mean = |mode: &str, f: &dyn Fn(&Value, &Value) -> f64| {
        let v: Vec<f64> = rows
            .iter()
            .filter(|r| r.0 == mode)
            .map(|r| f(&r.1, &r.2))
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let tput = |t: &Value, _: &Value| t["records_per_s"].as_f64().unwrap();
    let p99 = |_: &Value, l: &Value| l["p99_ms"].as_f64().unwrap();
    let p50 = |_: &Value, l: &Value| l["p50_ms"].as_f64().unwrap();
    println!(
        "throughput ratio proxy/direct: {:.3} ({:.0} vs {:.0} records/s)",
        mean("proxy", &tput) / mean("direct", &tput),
        mean("proxy", &tput),
        mean("direct", &tput)
    );
    println!(
        "p50 at 1000/s: direct {:.3} ms, proxy {:.3} ms; p99: direct {:.3} ms, proxy {:.3} ms, added {:.3} ms",
        mean("direct", &p50),
        mean("proxy", &p50),
        mean("direct", &p99),
        mean("proxy", &p99),
        mean("proxy", &p99) - mean("direct", &p99)
    );
}
