//! Two-hop added latency of the node-to-node mTLS tunnel (ignored: a benchmark, not a test). Run as root with
//! release binaries (or, as `./dev bench` does, a debug harness with `TOLLGATE_BIN_DIR=target/release`):
//!
//! ```sh
//! cargo build --release -p tollgate -p tollgate-load -p tollgate-e2e
//! cargo test --release -p tollgate-e2e --test tunnel_bench -- --ignored --nocapture
//! ```
//!
//! Open-loop HTTP/1.1 GETs at 1000 rps from a pod on node A to nginx in a pod on node B (`tollgate-load run`, from
//! inside the client pod), alternating in each round between:
//! - `plaintext`: no proxy on either node (eBPF redirect removed): the packets are only routed across the link;
//! - `tunnel`: node A's tollgate (HTTP policy) -> mTLS HTTP/2 CONNECT -> node B's tollgate (HTTP policy) -> nginx.
//!
//! Each round also runs both paths closed loop (8 connections, one request in flight each: maximum rate and its
//! latency). Prints p50/p99/p99.9 per row and round, and the added p99 at 1000 rps (tunnel - plaintext). With
//! `TOLLGATE_TUNNEL_BENCH_OUT=FILE` it also writes every round's rows there as JSON, which `tollgate-load scenario
//! --tunnel-bench FILE` renders as the "mTLS tunnel (two hops)" section of BENCHMARKS.md (`./dev bench` does both).

use std::process::Stdio;

use serde_json::Value;
use tollgate_e2e::mesh::{MTLS_CASE, TwoNodes};
use tollgate_e2e::scenario::HTTP_PORT;
use tollgate_e2e::{TempDir, built_binary, require_root};

/// Rounds (each: plaintext then tunnel, open loop at 1000 rps and closed loop).
const ROUNDS: usize = 3;

fn load(nodes: &TwoNodes, out: &TempDir, label: &str, rate: Option<&str>) -> Value {
    let json = out.path().join(format!("{label}.json"));
    let status = nodes
        .a
        .pod("prod/web")
        .command(built_binary("tollgate-load"))
        .args([
            "run",
            "--target",
            &format!("10.0.9.20:{HTTP_PORT}"),
            "--path",
            "/public/bench",
            "--duration",
            "8",
            "--warmup",
            "2",
            "--connections",
            "8",
            "--label",
            label,
            "--json",
        ])
        .arg(&json)
        .args(rate.map(|r| ["--rate", r]).into_iter().flatten())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "tollgate-load {label} failed");
    let v: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["summary"]["errors"], 0, "{label}: errors {v}");
    v
}

/// The 1-minute load average, shown beside the figures (a busy machine's figures are not figures).
fn one_minute_load() -> f64 {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
#[ignore = "benchmark: run with --release --ignored as root"]
fn two_hop_added_p99_at_1000_rps() {
    require_root();
    let mut nodes = TwoNodes::new("tunnel-bench", MTLS_CASE).unwrap();
    let out = TempDir::new("tunnel-bench-out").unwrap();
    println!("| round | row | achieved rps | p50 µs | p99 µs | p99.9 µs |");
    println!("|---|---|---|---|---|---|");
    let load_before = one_minute_load();
    let mut added = Vec::new();
    let mut rounds = Vec::new();
    for round in 1..=ROUNDS {
        // The plain path must work before it is measured (no proxy yet, or the redirect is really gone).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let o = nodes
                .a
                .curl(
                    "prod/web",
                    &[&format!("http://10.0.9.20:{HTTP_PORT}/public/x")],
                )
                .unwrap();
            if String::from_utf8_lossy(&o.stdout).starts_with("200") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "plain path broken: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let p = load(&nodes, &out, &format!("plaintext-{round}"), Some("1000"));
        let pmax = load(&nodes, &out, &format!("plaintext-max-{round}"), None);
        nodes.start(&[]).unwrap();
        let t = load(&nodes, &out, &format!("tunnel-{round}"), Some("1000"));
        let tmax = load(&nodes, &out, &format!("tunnel-max-{round}"), None);
        for sc in [&mut nodes.a, &mut nodes.b] {
            sc.kill_proxy();
            sc.remove_pins();
        }
        for (name, v) in [
            ("plaintext @1000 rps", &p),
            ("tunnel (2 proxies) @1000 rps", &t),
            ("plaintext closed loop", &pmax),
            ("tunnel closed loop", &tmax),
        ] {
            let s = &v["summary"];
            println!(
                "| {round} | {name} | {:.0} | {} | {} | {} |",
                s["achieved_rps"].as_f64().unwrap(),
                s["p50_us"],
                s["p99_us"],
                s["p999_us"]
            );
        }
        rounds.push(serde_json::json!({
            "plaintext": &p["summary"],
            "tunnel": &t["summary"],
            "plaintext_max": &pmax["summary"],
            "tunnel_max": &tmax["summary"],
        }));
        let d = t["summary"]["p99_us"].as_i64().unwrap() - p["summary"]["p99_us"].as_i64().unwrap();
        added.push(d);
    }
    if let Some(path) = std::env::var_os("TOLLGATE_TUNNEL_BENCH_OUT") {
        let json = serde_json::json!({
            "rounds": rounds,
            "load_before": load_before,
            "load_after": one_minute_load(),
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    }
    added.sort();
    println!(
        "added p99 per round (µs): {added:?}; median {} µs",
        added[added.len() / 2]
    );
}
