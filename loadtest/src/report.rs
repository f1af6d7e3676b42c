//! Result records (the JSON format) and the Markdown comparison table rendered from them.

use serde::{Deserialize, Serialize};

use crate::external::ToolOutput;
use crate::quiet::LoadSample;
use crate::spread::{self, Spread};
use crate::stats::Summary;

/// One measured run, as written by `tollgate-load run --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// What was measured, e.g. `direct`, `tollgate`, `nginx`.
    pub label: String,
    /// `open@1000rps` or `closed`.
    pub mode: String,
    /// Which round of the scenario (1-based; 0 for a single `tollgate-load run`).
    #[serde(default)]
    pub round: usize,
    pub connections: u64,
    /// Request body bytes (Kafka: record value bytes).
    pub payload: usize,
    /// Response body bytes the backend sends (0 where it does not apply: DNS, Kafka).
    #[serde(default)]
    pub response_bytes: usize,
    pub protocol: String,
    pub summary: SummaryRecord,
    /// Proxy cost over the whole run (warm-up included), when the runner knew the proxy's PID.
    #[serde(default)]
    pub proxy: Option<ProxyCost>,
}

/// Memory of a measured proxy at rest: RSS after start (before any load) and the RSS growth while holding
/// `connections` idle keep-alive connections (each carried one request first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleCost {
    pub label: String,
    pub idle_rss_kib: u64,
    /// 0 when the scenario did not measure idle connections.
    pub connections: usize,
    pub rss_before_kib: u64,
    pub rss_with_connections_kib: u64,
}

impl IdleCost {
    /// MiB per 10,000 idle connections, scaled from the measured growth.
    pub fn mib_per_10k(&self) -> Option<f64> {
        (self.connections > 0).then(|| {
            (self.rss_with_connections_kib as f64 - self.rss_before_kib as f64) / 1024.0 * 10_000.0
                / self.connections as f64
        })
    }
}

/// Everything one scenario measured (`results.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub name: String,
    /// Runs grouped by mode (each open-loop rate, then closed loop), targets in file order.
    pub groups: Vec<Vec<RunResult>>,
    pub idle: Vec<IdleCost>,
    /// wrk / h2load runs, every round.
    #[serde(default)]
    pub externals: Vec<ExternalResult>,
    /// The load average before and after each round.
    #[serde(default)]
    pub rounds: Vec<RoundLoad>,
    /// The peers' and tollgate's configurations, rule lines folded.
    #[serde(default)]
    pub configs: Vec<ShownConfig>,
    /// The scenario's notes (what was not run and why).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// One external generator run (wrk, h2load) against one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalResult {
    pub label: String,
    /// `wrk -t1 -c8`, `h2load -c8 -m10`.
    pub generator: String,
    pub round: usize,
    pub output: ToolOutput,
    pub proxy: Option<ProxyCost>,
}

impl ExternalResult {
    /// Requests per second per CPU core the proxy used over the run (= requests per proxy CPU-second).
    pub fn rps_per_proxy_core(&self) -> Option<f64> {
        let p = self.proxy?;
        let cores = p.cpu_secs / p.wall_secs;
        (cores > 0.0).then(|| self.output.rps / cores)
    }
}

/// The load average around one round.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RoundLoad {
    pub round: usize,
    pub before: LoadSample,
    pub after: LoadSample,
}

/// A service's configuration as shown in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShownConfig {
    pub service: String,
    pub text: String,
}

/// CPU and memory of the measured proxy process, from /proc.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProxyCost {
    pub cpu_secs: f64,
    /// The part of `cpu_secs` spent in the kernel (stime); 0 in results saved before it was measured.
    #[serde(default)]
    pub sys_secs: f64,
    pub wall_secs: f64,
    pub rss_kib: u64,
}

impl ProxyCost {
    /// The kernel's share of the proxy's CPU time (system calls, the network stack, wake-ups): the part a proxy
    /// cannot shave off in its own code.
    pub fn kernel_share(&self) -> Option<f64> {
        (self.cpu_secs > 0.0).then(|| self.sys_secs / self.cpu_secs)
    }

    /// CPU cores the proxy used per 1000 requests per second (= CPU seconds per 1000 requests).
    pub fn cores_per_krps(&self, rps: f64) -> Option<f64> {
        (self.wall_secs > 0.0 && rps > 0.0).then(|| self.cpu_secs / self.wall_secs / (rps / 1000.0))
    }
}

/// [`Summary`] in a form that also deserializes (reports are rendered from saved JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryRecord {
    pub requests: u64,
    pub errors: u64,
    pub achieved_rps: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
    #[serde(default)]
    pub curve: Vec<(f64, u64)>,
}

impl From<Summary> for SummaryRecord {
    fn from(s: Summary) -> Self {
        Self {
            requests: s.requests,
            errors: s.errors,
            achieved_rps: s.achieved_rps,
            p50_us: s.p50_us,
            p90_us: s.p90_us,
            p99_us: s.p99_us,
            p999_us: s.p999_us,
            max_us: s.max_us,
            mean_us: s.mean_us,
            curve: s.curve,
        }
    }
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// A Markdown table of `results`; the first one is the baseline for the `rps / baseline` and `p99 / baseline`
/// columns.
pub fn markdown(results: &[RunResult]) -> String {
    let mut out = String::from(
        "| label | protocol | mode | round | conns | req B | resp B | requests | errors | rps | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | rps / baseline | p99 / baseline | proxy CPU cores per 1000 rps | proxy RSS MiB |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        // The baseline is the first row of the same round.
        let base = results
            .iter()
            .find(|b| b.round == r.round)
            .map(|b| &b.summary);
        let s = &r.summary;
        let ratio = |num: f64, den: f64| {
            if den > 0.0 {
                format!("{:.2}x", num / den)
            } else {
                "n/a".into()
            }
        };
        let (rps_ratio, p99_ratio) = match base {
            Some(b) => (
                ratio(s.achieved_rps, b.achieved_rps),
                ratio(s.p99_us as f64, b.p99_us as f64),
            ),
            None => ("n/a".into(), "n/a".into()),
        };
        let (cpu, rss) = match &r.proxy {
            Some(p) => (
                p.cores_per_krps(s.achieved_rps)
                    .map_or("n/a".into(), |c| format!("{c:.3}")),
                format!("{:.1}", p.rss_kib as f64 / 1024.0),
            ),
            None => ("-".into(), "-".into()),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.label,
            r.protocol,
            r.mode,
            r.round,
            r.connections,
            r.payload,
            r.response_bytes,
            s.requests,
            s.errors,
            s.achieved_rps,
            ms(s.p50_us),
            ms(s.p90_us),
            ms(s.p99_us),
            ms(s.p999_us),
            ms(s.max_us),
            rps_ratio,
            p99_ratio,
            cpu,
            rss
        ));
    }
    out
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// Per measured proxy of one scenario: the headline figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Headline {
    pub label: String,
    /// Closed-loop requests per second.
    pub max_rps: Option<f64>,
    /// Closed-loop rps divided by the baseline row's (direct).
    pub max_rps_vs_direct: Option<f64>,
    /// Closed-loop rps divided by the proxy's CPU cores used.
    pub rps_per_core: Option<f64>,
    /// The kernel's share of the proxy's CPU in the closed loop.
    pub kernel_share: Option<f64>,
    /// p50 / p99 over the baseline row at the reference open-loop rate, ms.
    pub added_p50_ms: Option<f64>,
    pub added_p99_ms: Option<f64>,
    /// Proxy CPU cores per 1000 rps at the reference rate.
    pub cores_per_krps: Option<f64>,
    pub idle_rss_mib: Option<f64>,
    pub mib_per_10k_idle: Option<f64>,
}

/// The open-loop group used for "added latency": 1000 rps if run, else the first open-loop rate.
fn reference_group(groups: &[Vec<RunResult>]) -> Option<&Vec<RunResult>> {
    let open = |g: &&Vec<RunResult>| g.first().is_some_and(|r| r.mode.starts_with("open@"));
    groups
        .iter()
        .filter(open)
        .find(|g| g[0].mode == "open@1000rps")
        .or_else(|| groups.iter().find(open))
}

/// Headline figures of every target that has a measured proxy.
pub fn headline_rows(r: &ScenarioResult) -> Vec<Headline> {
    let closed = r
        .groups
        .iter()
        .find(|g| g.first().is_some_and(|x| x.mode == "closed"));
    let reference = reference_group(&r.groups);
    let mut labels: Vec<String> = Vec::new();
    for g in &r.groups {
        for x in g {
            if x.proxy.is_some() && !labels.contains(&x.label) {
                labels.push(x.label.clone());
            }
        }
    }
    labels
        .into_iter()
        .map(|label| {
            let row = |g: Option<&Vec<RunResult>>| {
                g.and_then(|g| g.iter().find(|x| x.label == label).cloned())
            };
            let c = row(closed);
            let o = row(reference);
            let base = reference.and_then(|g| g.first());
            let ms = |us: u64| us as f64 / 1000.0;
            let idle = r.idle.iter().find(|i| i.label == label);
            Headline {
                max_rps: c.as_ref().map(|c| c.summary.achieved_rps),
                max_rps_vs_direct: c.as_ref().zip(closed.and_then(|g| g.first())).and_then(
                    |(c, b)| {
                        (b.summary.achieved_rps > 0.0)
                            .then(|| c.summary.achieved_rps / b.summary.achieved_rps)
                    },
                ),
                rps_per_core: c.as_ref().and_then(|c| {
                    let p = c.proxy?;
                    let cores = p.cpu_secs / p.wall_secs;
                    (cores > 0.0).then(|| c.summary.achieved_rps / cores)
                }),
                kernel_share: c.as_ref().and_then(|c| c.proxy?.kernel_share()),
                added_p50_ms: o
                    .as_ref()
                    .zip(base)
                    .map(|(o, b)| ms(o.summary.p50_us) - ms(b.summary.p50_us)),
                added_p99_ms: o
                    .as_ref()
                    .zip(base)
                    .map(|(o, b)| ms(o.summary.p99_us) - ms(b.summary.p99_us)),
                cores_per_krps: o
                    .as_ref()
                    .and_then(|o| o.proxy?.cores_per_krps(o.summary.achieved_rps)),
                idle_rss_mib: idle.map(|i| i.idle_rss_kib as f64 / 1024.0),
                mib_per_10k_idle: idle.and_then(IdleCost::mib_per_10k),
                label,
            }
        })
        .collect()
}

/// The distinct rounds of a scenario's runs, in order.
fn round_numbers(r: &ScenarioResult) -> Vec<usize> {
    let mut v: Vec<usize> = r.groups.iter().flatten().map(|x| x.round).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The scenario as if only `round` had been run.
fn round_of(r: &ScenarioResult, round: usize) -> ScenarioResult {
    ScenarioResult {
        name: r.name.clone(),
        groups: r
            .groups
            .iter()
            .map(|g| g.iter().filter(|x| x.round == round).cloned().collect())
            .collect(),
        idle: r.idle.clone(),
        externals: Vec::new(),
        rounds: Vec::new(),
        configs: Vec::new(),
        notes: Vec::new(),
    }
}

/// Headline figures of one proxy over the rounds (idle memory is measured once, before the rounds).
#[derive(Debug, Clone, PartialEq)]
pub struct HeadlineSpread {
    pub label: String,
    pub max_rps: Option<Spread>,
    pub max_rps_vs_direct: Option<Spread>,
    pub rps_per_core: Option<Spread>,
    pub kernel_share: Option<Spread>,
    pub added_p50_ms: Option<Spread>,
    pub added_p99_ms: Option<Spread>,
    pub cores_per_krps: Option<Spread>,
    pub idle_rss_mib: Option<f64>,
    pub mib_per_10k_idle: Option<f64>,
}

/// Each round's headline figures (computed within the round: added latency over that round's direct row), then
/// per proxy the median, min and max over the rounds.
pub fn headline_spreads(r: &ScenarioResult) -> Vec<HeadlineSpread> {
    let per_round: Vec<Vec<Headline>> = round_numbers(r)
        .into_iter()
        .map(|n| headline_rows(&round_of(r, n)))
        .collect();
    headline_rows(r)
        .into_iter()
        .map(|h| {
            let label = h.label;
            let over = |f: fn(&Headline) -> Option<f64>| {
                Spread::of(
                    per_round
                        .iter()
                        .filter_map(|rows| rows.iter().find(|x| x.label == label).and_then(f)),
                )
            };
            HeadlineSpread {
                max_rps: over(|x| x.max_rps),
                max_rps_vs_direct: over(|x| x.max_rps_vs_direct),
                rps_per_core: over(|x| x.rps_per_core),
                kernel_share: over(|x| x.kernel_share.map(|k| k * 100.0)),
                added_p50_ms: over(|x| x.added_p50_ms),
                added_p99_ms: over(|x| x.added_p99_ms),
                cores_per_krps: over(|x| x.cores_per_krps),
                idle_rss_mib: h.idle_rss_mib,
                mib_per_10k_idle: h.mib_per_10k_idle,
                label,
            }
        })
        .collect()
}

/// The headline table of a scenario (medians over rounds, min–max in brackets) plus, when a `tollgate` row
/// exists, its ratios of medians to every other proxy.
pub fn headlines(r: &ScenarioResult) -> String {
    let rows = headline_spreads(r);
    if rows.is_empty() {
        return String::new();
    }
    let reference = reference_group(&r.groups)
        .and_then(|g| g.first())
        .map_or("-".to_string(), |x| x.mode.clone());
    let rounds = round_numbers(r).len();
    let mut out = format!(
        "Headline figures, median of {rounds} round(s) with (min–max) (added latency and CPU at {reference}; max rps \
         and rps per proxy core from the closed loop):\n\n\
         | proxy | max rps | max rps / direct | rps per proxy core | kernel % of proxy CPU | added p50 ms | added p99 ms | CPU cores per 1000 rps | idle RSS MiB | MiB per 10k idle conns |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for h in &rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            h.label,
            spread::show(h.max_rps, 0),
            spread::show_x(h.max_rps_vs_direct),
            spread::show(h.rps_per_core, 0),
            spread::show(h.kernel_share, 0),
            spread::show(h.added_p50_ms, 2),
            spread::show(h.added_p99_ms, 2),
            spread::show(h.cores_per_krps, 3),
            opt(h.idle_rss_mib, 1),
            opt(h.mib_per_10k_idle, 1),
        ));
    }
    out.push_str(&tollgate_ratios(&rows));
    out.push('\n');
    out
}

/// Tollgate's medians divided by every other proxy's.
fn tollgate_ratios(rows: &[HeadlineSpread]) -> String {
    let Some(t) = rows.iter().find(|h| h.label == "tollgate") else {
        return String::new();
    };
    let others: Vec<&HeadlineSpread> = rows.iter().filter(|h| h.label != "tollgate").collect();
    if others.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\nTollgate divided by each peer (medians of the same rounds; higher is better for rps per core, lower for the rest):\n\n\
         | ratio | rps per proxy core | added p99 | CPU per 1000 rps | idle RSS | memory per 10k idle conns |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    // Only positive figures make a meaningful ratio: an added latency can come out at or below zero when the
    // baseline's own tail noise is larger than the proxy's cost.
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => format!("{:.2}x", a / b),
        _ => "n/a".into(),
    };
    let med = |s: Option<Spread>| s.map(|s| s.median);
    for o in others {
        out.push_str(&format!(
            "| tollgate / {} | {} | {} | {} | {} | {} |\n",
            o.label,
            ratio(med(t.rps_per_core), med(o.rps_per_core)),
            ratio(med(t.added_p99_ms), med(o.added_p99_ms)),
            ratio(med(t.cores_per_krps), med(o.cores_per_krps)),
            ratio(t.idle_rss_mib, o.idle_rss_mib),
            ratio(t.mib_per_10k_idle, o.mib_per_10k_idle),
        ));
    }
    out
}

/// The external generators' rows: per generator and target, rps and rps per proxy CPU core (= per proxy
/// CPU-second) over the rounds, and tollgate's ratio to each peer.
pub fn external_markdown(r: &ScenarioResult) -> String {
    if r.externals.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "External generators (median of the rounds with (min–max); rps per proxy core = the generator's rps divided \
         by the proxy's utime+stime from /proc over the run per wall second):\n\n\
         | generator | target | rps | rps per proxy core | non-2xx | errors |\n|---|---|---:|---:|---:|---:|\n",
    );
    let mut keys: Vec<(String, String)> = Vec::new();
    for e in &r.externals {
        let k = (e.generator.clone(), e.label.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let per_core = |g: &str, l: &str| {
        Spread::of(
            r.externals
                .iter()
                .filter(|e| e.generator == g && e.label == l)
                .filter_map(ExternalResult::rps_per_proxy_core),
        )
    };
    let mut ratios = String::new();
    for (g, l) in &keys {
        let runs: Vec<&ExternalResult> = r
            .externals
            .iter()
            .filter(|e| &e.generator == g && &e.label == l)
            .collect();
        out.push_str(&format!(
            "| {g} | {l} | {} | {} | {} | {} |\n",
            spread::show(Spread::of(runs.iter().map(|e| e.output.rps)), 0),
            spread::show(per_core(g, l), 0),
            runs.iter().map(|e| e.output.non_2xx).sum::<u64>(),
            runs.iter().map(|e| e.output.errors).sum::<u64>(),
        ));
        if l != "tollgate"
            && let (Some(t), Some(o)) = (per_core(g, "tollgate"), per_core(g, l))
            && o.median > 0.0
        {
            ratios.push_str(&format!(
                "| {g} | tollgate / {l} | {:.2}x |\n",
                t.median / o.median
            ));
        }
    }
    if !ratios.is_empty() {
        out.push_str(&format!(
            "\nTollgate divided by each peer, rps per proxy core (medians):\n\n\
             | generator | ratio | rps per proxy core |\n|---|---|---:|\n{ratios}"
        ));
    }
    out.push('\n');
    out
}

/// The load average around each round.
pub fn rounds_markdown(r: &ScenarioResult) -> String {
    if r.rounds.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "Machine load per round (`/proc/loadavg`: the 1-minute average, which includes this benchmark's own load, \
         and other runnable tasks while our services were idle, median of 10 reads):\n\n\
         | round | 1-min load before | others runnable before | 1-min load after | others runnable after |\n\
         |---:|---:|---:|---:|---:|\n",
    );
    for l in &r.rounds {
        out.push_str(&format!(
            "| {} | {:.2} | {:.1} | {:.2} | {:.1} |\n",
            l.round,
            l.before.one_min,
            l.before.runnable_others,
            l.after.one_min,
            l.after.runnable_others
        ));
    }
    out.push('\n');
    out
}

/// The scenario's notes and every peer's and tollgate's configuration (collapsible, rule lines folded).
pub fn configs_markdown(r: &ScenarioResult) -> String {
    let mut out = String::new();
    for n in &r.notes {
        out.push_str(&format!("Note: {n}\n\n"));
    }
    for c in &r.configs {
        out.push_str(&format!(
            "<details><summary>Configuration of {} (as run)</summary>\n\n```\n{}```\n\n</details>\n\n",
            c.service, c.text
        ));
    }
    out
}

/// The idle-memory table: RSS after start and the growth per idle keep-alive connection.
pub fn idle_markdown(idle: &[IdleCost]) -> String {
    let mut out = String::from(
        "| proxy | idle RSS MiB | idle conns held | RSS before MiB | RSS with conns MiB | MiB per 10k idle conns |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for i in idle {
        out.push_str(&format!(
            "| {} | {:.1} | {} | {:.1} | {:.1} | {} |\n",
            i.label,
            i.idle_rss_kib as f64 / 1024.0,
            i.connections,
            i.rss_before_kib as f64 / 1024.0,
            i.rss_with_connections_kib as f64 / 1024.0,
            opt(i.mib_per_10k(), 1)
        ));
    }
    out.push('\n');
    out
}

/// BENCHMARKS.md: the generated tables under a header that says how to read them and how quiet the machine was
/// (`machine`). Never edited by hand.
pub fn benchmarks_document(sections: &str, machine: &str) -> String {
    format!(
        "# Benchmarks\n\n\
         Generated by `tollgate-load` (`./dev bench`); do not edit by hand. {machine} Every figure is measured in \
         rounds (rows interleaved across targets within a round: direct, tollgate, nginx, haproxy, then again); \
         headline figures are the median with (min–max) over the rounds, and every ratio compares medians of the same \
         rounds on the same machine. Proxies are pinned to core 0 (HAProxy `nbthread 1` + `cpu-map` to that core, \
         nginx `worker_processes 1`, both with upstream keep-alive and the same rules as Tollgate; their \
         configurations are printed under each scenario), the backend and the load generators to core 1. Before a \
         proxy is measured it must answer one allowed request and deny one request outside the rules. An external \
         generator (wrk for HTTP/1.1, h2load for HTTP/2 and gRPC-shaped load) measures every row beside our own. \
         Scenarios with `topology = \"netns\"` run the load generator in a client pod namespace, the backend in a \
         server pod namespace and the proxies in a node namespace between them (tollgate behind iptables TPROXY, \
         nginx and HAProxy on the node's gateway address), so every row crosses the same veths. The first row of each \
         table is the baseline (no proxy). `proxy CPU cores per 1000 rps` is the proxy's utime+stime from /proc over \
         the run divided by wall time and by the achieved thousands of requests per second; `proxy RSS` is VmRSS at \
         the end of the run; `rps per proxy core` is closed-loop rps divided by the CPU cores the proxy used; `kernel % \
         of proxy CPU` is stime's share of that CPU (system calls, the network stack, wake-ups: work any proxy \
         moving the same packets pays, which bounds how far faster user-space code can go); `idle \
         RSS` is VmRSS after start and the two enforcement-check requests, before any load; `MiB per 10k idle conns` is the VmRSS growth while holding N idle \
         keep-alive connections (one request each), read once it settles (two readings 500 ms apart within 1%), \
         scaled to 10,000. `req B` / `resp B` are request and response body \
         bytes.\n\n{sections}"
    )
}

/// The sentence of the document header about the machine: the load gate and what it read.
pub fn machine_line(max_load: f64, worst: f64) -> String {
    format!(
        "The machine was quiet: 2 cores, 1-minute load average at most {max_load:.2} before the start and at most \
         {max_load:.2} other runnable tasks between rounds (highest reading {worst:.2}; per-round readings under each \
         scenario)."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(label: &str, rps: f64, p99: u64) -> RunResult {
        RunResult {
            label: label.into(),
            mode: "closed".into(),
            round: 0,
            connections: 4,
            payload: 0,
            response_bytes: 1024,
            protocol: "http1".into(),
            summary: SummaryRecord {
                requests: 100,
                errors: 0,
                achieved_rps: rps,
                p50_us: 500,
                p90_us: 800,
                p99_us: p99,
                p999_us: p99,
                max_us: p99,
                mean_us: 550.0,
                curve: vec![(50.0, 500), (99.0, p99)],
            },
            proxy: None,
        }
    }

    #[test]
    fn table_has_ratios_to_the_first_row() {
        let md = markdown(&[
            result("direct", 1000.0, 1000),
            result("tollgate", 250.0, 4000),
        ]);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[2].starts_with("| direct |") && lines[2].ends_with("| 1.00x | 1.00x | - | - |"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].contains("| 250 |") && lines[3].ends_with("| 0.25x | 4.00x | - | - |"),
            "{}",
            lines[3]
        );
        assert!(lines[3].contains("| 4.00 |"), "p99 in ms: {}", lines[3]);
    }

    #[test]
    fn zero_baseline_gives_na() {
        let md = markdown(&[result("direct", 0.0, 0), result("x", 1.0, 1)]);
        assert!(
            md.lines()
                .nth(3)
                .unwrap()
                .ends_with("| n/a | n/a | - | - |")
        );
    }

    #[test]
    fn proxy_cost_columns() {
        let mut r = result("nginx", 2000.0, 1000);
        // 1 CPU second over 10 s at 2000 rps = 0.1 core for 2 krps = 0.05 core per krps.
        r.proxy = Some(ProxyCost {
            cpu_secs: 1.0,
            sys_secs: 0.5,
            wall_secs: 10.0,
            rss_kib: 2048,
        });
        let md = markdown(&[r]);
        assert!(
            md.lines().nth(2).unwrap().ends_with("| 0.050 | 2.0 |"),
            "{md}"
        );
    }

    #[test]
    fn benchmarks_document_says_it_is_generated() {
        let d = benchmarks_document("## x\n", &machine_line(0.5, 0.12));
        assert!(
            d.starts_with("# Benchmarks\n")
                && d.contains("do not edit by hand")
                && d.contains("highest reading 0.12")
                && d.contains("nbthread 1")
                && d.ends_with("## x\n")
        );
    }

    fn md_row_has(md: &str, prefix: &str) -> bool {
        md.lines().any(|l| l.starts_with(prefix))
    }

    #[test]
    fn headlines_and_tollgate_ratios() {
        // Half of each proxy's CPU in the kernel.
        let cost = |cpu: f64| {
            Some(ProxyCost {
                cpu_secs: cpu,
                sys_secs: cpu / 2.0,
                wall_secs: 10.0,
                rss_kib: 1024,
            })
        };
        let mut open = vec![
            result("direct", 1000.0, 1000),
            result("tollgate", 1000.0, 3000),
            result("nginx", 1000.0, 5000),
        ];
        open.iter_mut().for_each(|r| r.mode = "open@1000rps".into());
        open[1].proxy = cost(1.0);
        open[2].proxy = cost(2.0);
        let mut closed = vec![
            result("direct", 50000.0, 1000),
            result("tollgate", 20000.0, 1000),
            result("nginx", 10000.0, 1000),
        ];
        // Both saturate their core: 10 CPU seconds in 10 s.
        closed[1].proxy = cost(10.0);
        closed[2].proxy = cost(10.0);
        let idle = |label: &str, grow: u64| IdleCost {
            label: label.into(),
            idle_rss_kib: 10240,
            connections: 1000,
            rss_before_kib: 10240,
            rss_with_connections_kib: 10240 + grow,
        };
        let r = ScenarioResult {
            name: "s".into(),
            groups: vec![open, closed],
            idle: vec![idle("tollgate", 1024), idle("nginx", 4096)],
            ..empty()
        };
        let h = headline_rows(&r);
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].rps_per_core, Some(20000.0));
        assert_eq!(h[0].max_rps_vs_direct, Some(0.4));
        assert_eq!(h[0].kernel_share, Some(0.5));
        assert!(md_row_has(
            &headlines(&r),
            "| tollgate | 20000 | 0.40x | 20000 | 50 |"
        ));
        assert_eq!(h[0].added_p99_ms, Some(2.0));
        assert_eq!(h[0].cores_per_krps, Some(0.1));
        assert_eq!(h[0].mib_per_10k_idle, Some(10.0));
        let md = headlines(&r);
        assert!(
            md.contains("| tollgate / nginx | 2.00x | 0.50x | 0.50x | 1.00x | 0.25x |"),
            "{md}"
        );
    }

    #[test]
    fn ratios_of_non_positive_added_latency_are_na() {
        let cost = Some(ProxyCost {
            cpu_secs: 1.0,
            sys_secs: 0.0,
            wall_secs: 10.0,
            rss_kib: 1024,
        });
        let mut g = vec![
            result("direct", 1000.0, 4000),
            result("tollgate", 1000.0, 5000),
            result("nginx", 1000.0, 3800),
        ];
        g.iter_mut().for_each(|r| r.mode = "open@1000rps".into());
        g[1].proxy = cost;
        g[2].proxy = cost;
        let md = headlines(&ScenarioResult {
            name: "s".into(),
            groups: vec![g],
            ..empty()
        });
        assert!(
            md.contains("| tollgate / nginx | n/a | n/a | 1.00x |"),
            "{md}"
        );
    }

    fn empty() -> ScenarioResult {
        ScenarioResult {
            name: "s".into(),
            groups: vec![],
            idle: vec![],
            externals: vec![],
            rounds: vec![],
            configs: vec![],
            notes: vec![],
        }
    }

    fn cost(cpu_secs: f64) -> Option<ProxyCost> {
        Some(ProxyCost {
            cpu_secs,
            sys_secs: 0.0,
            wall_secs: 10.0,
            rss_kib: 1024,
        })
    }

    /// Three rounds of direct + tollgate + nginx, open loop at 1000 rps and closed loop.
    fn three_rounds() -> ScenarioResult {
        let mut open = Vec::new();
        let mut closed = Vec::new();
        for (round, tollgate_rps) in [(1, 20000.0), (2, 18000.0), (3, 21000.0)] {
            for (label, rps, p99, cpu) in [
                ("direct", 50000.0, 1000, None),
                (
                    "tollgate",
                    tollgate_rps,
                    3000 + round as u64 * 100,
                    cost(10.0),
                ),
                ("nginx", 10000.0, 5000, cost(10.0)),
            ] {
                let mut o = result(label, 1000.0, p99);
                o.mode = "open@1000rps".into();
                o.round = round;
                o.proxy = cpu.map(|c| ProxyCost { cpu_secs: 1.0, ..c });
                open.push(o);
                let mut c = result(label, rps, 1000);
                c.round = round;
                c.proxy = cpu;
                closed.push(c);
            }
        }
        ScenarioResult {
            groups: vec![open, closed],
            ..empty()
        }
    }

    #[test]
    fn headline_figures_are_medians_with_min_and_max_over_rounds() {
        let r = three_rounds();
        let h = headline_spreads(&r);
        let t = h.iter().find(|x| x.label == "tollgate").unwrap();
        let rps = t.max_rps.unwrap();
        assert_eq!(
            (rps.median, rps.min, rps.max, rps.rounds),
            (20000.0, 18000.0, 21000.0, 3)
        );
        // Added p99 within each round: 2.1, 2.2, 2.3 ms over that round's direct 1 ms.
        let p99 = t.added_p99_ms.unwrap();
        assert!((p99.median - 2.2).abs() < 1e-9 && (p99.min - 2.1).abs() < 1e-9);
        let md = headlines(&r);
        assert!(md.contains("median of 3 round(s)"), "{md}");
        assert!(
            md.contains(
                "| tollgate | 20000 (18000–21000) | 0.40x (0.36–0.42) | 20000 (18000–21000) | 0 (0–0) |"
            ),
            "{md}"
        );
        assert!(md.contains("| tollgate / nginx | 2.00x |"), "{md}");
    }

    #[test]
    fn full_tables_compare_each_row_with_its_own_round() {
        let r = three_rounds();
        let md = markdown(&r.groups[1]);
        // Round 2's tollgate (18000) against round 2's direct (50000).
        assert!(md.contains("| tollgate | http1 | closed | 2 | 4 |"), "{md}");
        let line = md
            .lines()
            .find(|l| l.contains("| closed | 2 |") && l.starts_with("| tollgate"))
            .unwrap();
        assert!(
            line.contains("| 18000 |") && line.contains("| 0.36x |"),
            "{line}"
        );
    }

    #[test]
    fn external_rows_report_rps_per_proxy_core_and_tollgate_ratios() {
        let ext = |label: &str, round, rps, cpu| ExternalResult {
            label: label.into(),
            generator: "wrk -t1 -c8".into(),
            round,
            output: ToolOutput {
                rps,
                requests: (rps * 10.0) as u64,
                non_2xx: 0,
                errors: 0,
            },
            proxy: cpu,
        };
        let r = ScenarioResult {
            externals: vec![
                ext("direct", 1, 50000.0, None),
                ext("tollgate", 1, 30000.0, cost(5.0)),
                ext("haproxy", 1, 40000.0, cost(10.0)),
                ext("direct", 2, 52000.0, None),
                ext("tollgate", 2, 32000.0, cost(5.0)),
                ext("haproxy", 2, 40000.0, cost(10.0)),
            ],
            ..empty()
        };
        let md = external_markdown(&r);
        assert!(
            md.contains("| wrk -t1 -c8 | direct | 51000 (50000–52000) | - | 0 | 0 |"),
            "{md}"
        );
        // 31000 rps at half a core = 62000 per core; HAProxy 40000 at one core.
        assert!(
            md.contains("| wrk -t1 -c8 | tollgate | 31000 (30000–32000) | 62000 (60000–64000) |"),
            "{md}"
        );
        assert!(
            md.contains("| wrk -t1 -c8 | tollgate / haproxy | 1.55x |"),
            "{md}"
        );
        assert!(!md.contains("tollgate / direct"), "{md}");
        assert_eq!(external_markdown(&empty()), "");
    }

    #[test]
    fn rounds_configs_and_notes_are_shown() {
        let load = |one_min, others| LoadSample {
            one_min,
            runnable_others: others,
        };
        let r = ScenarioResult {
            rounds: vec![RoundLoad {
                round: 1,
                before: load(0.12, 0.0),
                after: load(1.5, 1.0),
            }],
            configs: vec![ShownConfig {
                service: "haproxy".into(),
                text: "global\n  nbthread 1\n".into(),
            }],
            notes: vec!["nginx cannot speak HTTP/2 to its upstream.".into()],
            ..empty()
        };
        assert!(rounds_markdown(&r).contains("| 1 | 0.12 | 0.0 | 1.50 | 1.0 |"));
        let c = configs_markdown(&r);
        assert!(c.starts_with("Note: nginx cannot speak HTTP/2"), "{c}");
        assert!(c.contains("<details><summary>Configuration of haproxy (as run)</summary>\n\n```\nglobal\n  nbthread 1\n```"), "{c}");
    }

    #[test]
    fn json_round_trip() {
        let r = result("direct", 1.0, 2);
        let back: RunResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
