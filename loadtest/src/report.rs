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
    pub payload: usize,
    pub protocol: String,
    pub summary: SummaryRecord,
    /// Proxy cost over the whole run (warm-up included), when the runner knew the proxy's PID.
    #[serde(default)]
    pub proxy: Option<ProxyCost>,
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
        "| label | protocol | mode | conns | payload B | requests | errors | rps | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | rps / baseline | p99 / baseline | proxy CPU cores per 1000 rps | proxy RSS MiB |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
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
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.label,
            r.protocol,
            r.mode,
            r.connections,
            r.payload,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn result(label: &str, rps: f64, p99: u64) -> RunResult {
        RunResult {
            label: label.into(),
            mode: "closed".into(),
            connections: 4,
            payload: 1024,
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
    fn json_round_trip() {
        let r = result("direct", 1.0, 2);
        let back: RunResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
