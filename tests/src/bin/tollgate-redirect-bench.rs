//! `tollgate-redirect-bench`: how much the eBPF redirect costs against iptables REDIRECT to the same proxy, and
//! against no proxy at all, measured side by side in one run on the demo scenario (a benchmark, not a test).
//!
//! For each of: direct (no proxy), `--redirect ebpf` (cgroup/connect4 + sockops + map lookup), and
//! `--redirect so-original-dst` behind `iptables -t nat ... -j REDIRECT` (conntrack), it runs `hey` from the
//! frontend pod against nginx in the api pod: once with a new TCP connection per request (connection setup rate) and
//! once with keep-alive (added latency per request). Bounded: a fixed request count per run.

use std::process::ExitCode;

use anyhow::{Context, Result};
use tollgate_e2e::scenario::{CaseFile, EbpfScenario, HTTP_PORT, PROXY_PORT};
use tollgate_e2e::{require_root, require_tool, run};

const SCENARIO: &str = include_str!("../../../deploy/examples/demo.yaml");
/// Requests per run; `BENCH_REQUESTS` overrides.
const REQUESTS: &str = "4000";
const WORKERS: &str = "8";

#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn parse_hey(text: &str) -> Result<Figures> {
    let mut f = Figures::default();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            f.rps = v.trim().parse()?;
        } else if let Some(v) = line.strip_prefix("50% in ") {
            f.p50_ms = v.trim_end_matches(" secs").trim().parse::<f64>()? * 1000.0;
        } else if let Some(v) = line.strip_prefix("99% in ") {
            f.p99_ms = v.trim_end_matches(" secs").trim().parse::<f64>()? * 1000.0;
        }
    }
    anyhow::ensure!(f.rps > 0.0, "could not read hey's summary:\n{text}");
    anyhow::ensure!(
        text.contains("[200]\t"),
        "not every response was 200:\n{text}"
    );
    anyhow::ensure!(
        !text.contains("Error distribution"),
        "hey saw errors:\n{text}"
    );
    Ok(f)
}

fn requests() -> String {
    std::env::var("BENCH_REQUESTS").unwrap_or_else(|_| REQUESTS.to_string())
}

fn hey(sc: &EbpfScenario, keepalive: bool) -> Result<Figures> {
    let hey = require_tool("hey");
    let url = format!("http://{}:{HTTP_PORT}/products/1", sc.pod("shop/api").ip);
    let mut cmd = sc.pod("shop/frontend").command(hey);
    cmd.args(["-n", &requests(), "-c", WORKERS, "-t", "5"]);
    if !keepalive {
        cmd.arg("-disable-keepalive");
    }
    let out = run(cmd.arg(&url))?;
    parse_hey(&String::from_utf8_lossy(&out.stdout))
}

fn measure(
    name: &str,
    sc: &EbpfScenario,
    rows: &mut Vec<(String, Figures, Figures)>,
) -> Result<()> {
    let conn = hey(sc, false).with_context(|| format!("{name}: new connection per request"))?;
    let ka = hey(sc, true).with_context(|| format!("{name}: keep-alive"))?;
    rows.push((name.to_string(), conn, ka));
    Ok(())
}

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-redirect-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn bench() -> Result<()> {
    require_root();
    require_tool("iptables");
    let mut sc = EbpfScenario::new(CaseFile::parse("deploy/examples/demo.yaml", SCENARIO)?)?;
    let mut rows = Vec::new();

    measure("direct (no proxy)", &sc, &mut rows)?;

    sc.start_proxy()?;
    measure("tollgate, eBPF redirect", &sc, &mut rows)?;
    sc.kill_proxy();
    sc.remove_pins();

    let ipt_port = PROXY_PORT + 1;
    let api = sc.pod("shop/api").ip.to_string();
    sc.node.netns.sh(&format!(
        "iptables -t nat -A PREROUTING -p tcp -d {api} --dport {HTTP_PORT} -j REDIRECT --to-ports {ipt_port}"
    ))?;
    sc.start_proxy_with(&[
        "--listen".into(),
        format!("0.0.0.0:{ipt_port}"),
        "--redirect".into(),
        "so-original-dst".into(),
    ])?;
    measure("tollgate, iptables REDIRECT", &sc, &mut rows)?;

    let base = rows[0].1;
    let base_ka = rows[0].2;
    println!(
        "| path | conn/s (new conn per request) | ratio | p50 ms | p99 ms | req/s keep-alive | ratio | p50 ms | p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, c, k) in &rows {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} |",
            c.rps,
            c.rps / base.rps,
            c.p50_ms,
            c.p99_ms,
            k.rps,
            k.rps / base_ka.rps,
            k.p50_ms,
            k.p99_ms
        );
    }
    let (e, i) = (&rows[1], &rows[2]);
    println!(
        "\neBPF vs iptables: connection setup rate {:.2}x, keep-alive request rate {:.2}x, keep-alive p50 {:+.3} ms",
        e.1.rps / i.1.rps,
        e.2.rps / i.2.rps,
        e.2.p50_ms - i.2.p50_ms
    );
    println!(
        "({} requests, {WORKERS} workers per run, hey inside the frontend pod, nginx in the api pod)",
        requests()
    );
    Ok(())
}
