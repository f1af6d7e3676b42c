//! Result records (the JSON format) and the Markdown comparison table rendered from them.

use serde::{Deserialize, Serialize};

use crate::stats::Summary;

/// One measured run, as written by `tollgate-load run --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// What was measured, e.g. `direct`, `tollgate`, `nginx`.
    pub label: String,
    /// `open@1000rps` or `closed`.
    pub mode: String,
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
}

/// CPU and memory of the measured proxy process, from /proc.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProxyCost {
    pub cpu_secs: f64,
    pub wall_secs: f64,
    pub rss_kib: u64,
}

impl ProxyCost {
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
        "| label | protocol | mode | conns | req B | resp B | requests | errors | rps | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | rps / baseline | p99 / baseline | proxy CPU cores per 1000 rps | proxy RSS MiB |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let base = results.first().map(|r| &r.summary);
    for r in results {
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
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.label,
            r.protocol,
            r.mode,
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

/// The headline table of a scenario plus, when a `tollgate` row exists, its ratios to every other proxy.
pub fn headlines(r: &ScenarioResult) -> String {
    let rows = headline_rows(r);
    if rows.is_empty() {
        return String::new();
    }
    let reference = reference_group(&r.groups)
        .and_then(|g| g.first())
        .map_or("-".to_string(), |x| x.mode.clone());
    let mut out = format!(
        "Headline figures (added latency and CPU at {reference}; max rps and rps per proxy core from the closed loop):\n\n\
         | proxy | max rps | max rps / direct | rps per proxy core | added p50 ms | added p99 ms | CPU cores per 1000 rps | idle RSS MiB | MiB per 10k idle conns |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for h in &rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            h.label,
            opt(h.max_rps, 0),
            h.max_rps_vs_direct
                .map_or("-".into(), |r| format!("{r:.2}x")),
            opt(h.rps_per_core, 0),
            opt(h.added_p50_ms, 2),
            opt(h.added_p99_ms, 2),
            opt(h.cores_per_krps, 3),
            opt(h.idle_rss_mib, 1),
            opt(h.mib_per_10k_idle, 1),
        ));
    }
    if let Some(t) = rows.iter().find(|h| h.label == "tollgate") {
        let others: Vec<&Headline> = rows.iter().filter(|h| h.label != "tollgate").collect();
        if !others.is_empty() {
            out.push_str(
                "\nTollgate divided by each peer (same run; higher is better for rps per core, lower for the rest):\n\n\
                 | ratio | rps per proxy core | added p99 | CPU per 1000 rps | idle RSS | memory per 10k idle conns |\n\
                 |---|---:|---:|---:|---:|---:|\n",
            );
            // Only positive figures make a meaningful ratio: an added latency can come out at or below zero when
            // the baseline's own tail noise is larger than the proxy's cost.
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if a > 0.0 && b > 0.0 => format!("{:.2}x", a / b),
                _ => "n/a".into(),
            };
            for o in others {
                out.push_str(&format!(
                    "| tollgate / {} | {} | {} | {} | {} | {} |\n",
                    o.label,
                    ratio(t.rps_per_core, o.rps_per_core),
                    ratio(t.added_p99_ms, o.added_p99_ms),
                    ratio(t.cores_per_krps, o.cores_per_krps),
                    ratio(t.idle_rss_mib, o.idle_rss_mib),
                    ratio(t.mib_per_10k_idle, o.mib_per_10k_idle),
                ));
            }
        }
    }
    out.push('\n');
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

/// BENCHMARKS.md: the generated tables under a header that says how to read them. Never edited by hand.
pub fn benchmarks_document(sections: &str) -> String {
    format!(
        "# Benchmarks\n\n\
         Generated by `tollgate-load` (`./dev bench`); do not edit by hand. Every ratio compares rows measured in the same \
         run, one after the other, on the same machine. The machine is shared (2 cores, other engineers' builds and \
         tests were running), so absolute figures are noisy; read the ratios. Proxies are pinned to core 0, the \
         backend and the load generator to core 1. Scenarios with `topology = \"netns\"` run the load generator in a \
         client pod namespace, the backend in a server pod namespace and the proxies in a node namespace between them \
         (tollgate behind iptables TPROXY, nginx and HAProxy on the node's gateway address), so every row crosses the \
         same veths. The first row of each table is the baseline (no proxy). \
         `proxy CPU cores per 1000 rps` is the proxy's utime+stime from /proc over the run divided by wall time and \
         by the achieved thousands of requests per second; `proxy RSS` is VmRSS at the end of the run; `rps per proxy \
         core` is closed-loop rps divided by the CPU cores the proxy used; `idle RSS` is VmRSS after start, before any \
         load; `MiB per 10k idle conns` is the VmRSS growth while holding N idle keep-alive connections (one request \
         each) scaled to 10,000. `req B` / `resp B` are request and response body bytes.\n\n{sections}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(label: &str, rps: f64, p99: u64) -> RunResult {
        RunResult {
            label: label.into(),
            mode: "closed".into(),
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
        let d = benchmarks_document("## x\n");
        assert!(
            d.starts_with("# Benchmarks\n")
                && d.contains("do not edit by hand")
                && d.ends_with("## x\n")
        );
    }

    fn md_row_has(md: &str, prefix: &str) -> bool {
        md.lines().any(|l| l.starts_with(prefix))
    }

    #[test]
    fn headlines_and_tollgate_ratios() {
        let cost = |cpu| {
            Some(ProxyCost {
                cpu_secs: cpu,
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
        };
        let h = headline_rows(&r);
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].rps_per_core, Some(20000.0));
        assert_eq!(h[0].max_rps_vs_direct, Some(0.4));
        assert!(md_row_has(
            &headlines(&r),
            "| tollgate | 20000 | 0.40x | 20000 |"
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
            idle: vec![],
        });
        assert!(
            md.contains("| tollgate / nginx | n/a | n/a | 1.00x |"),
            "{md}"
        );
    }

    #[test]
    fn json_round_trip() {
        let r = result("direct", 1.0, 2);
        let back: RunResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
