//! The "mTLS tunnel (two hops)" section of BENCHMARKS.md, from the rounds the ignored benchmark
//! `tests/tests/tunnel_bench.rs` writes (`TOLLGATE_TUNNEL_BENCH_OUT`) in the same `./dev bench`. Reading the file is
//! the caller's (`main.rs`); this module parses and renders.

use serde::{Deserialize, Serialize};

use crate::spread::{Spread, show, show_x};

/// One row of one round: `tollgate-load run`'s summary fields the section uses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub achieved_rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

/// One round: both paths at 1000 rps (open loop) and closed loop (8 connections).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Round {
    pub plaintext: Row,
    pub tunnel: Row,
    pub plaintext_max: Row,
    pub tunnel_max: Row,
}

/// What the benchmark writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rounds {
    pub rounds: Vec<Round>,
    /// The 1-minute load average before the first round and after the last (absent in older files).
    #[serde(default)]
    pub load_before: Option<f64>,
    #[serde(default)]
    pub load_after: Option<f64>,
}

pub fn parse(json: &str) -> Result<Rounds, serde_json::Error> {
    serde_json::from_str(json)
}

fn spread(rounds: &[Round], f: impl Fn(&Round) -> f64) -> Option<Spread> {
    Spread::of(rounds.iter().map(f))
}

/// The section: p50/p99 at 1000 rps and closed-loop rps of both paths, the tunnel's added p99 and rate ratio per
/// round (median with min–max).
pub fn markdown(r: &Rounds) -> String {
    let rounds = &r.rounds;
    let ms = |us: f64| us / 1000.0;
    let mut out = format!(
        "## mTLS tunnel (two hops)\n\n\
         Reproduce: `./dev bench` (`tests/tests/tunnel_bench.rs` running the release binaries, as root). Two nodes (network \
         namespaces joined by a veth pair), a client pod on node A and nginx in a pod on node B; HTTP/1.1 GETs from \
         `tollgate-load run` inside the client pod, 8 connections. `plaintext`: no proxy on either node, the packets \
         are only routed across the link. `tunnel`: node A's tollgate (HTTP policy) -> HTTP/2 CONNECT over mutual \
         TLS 1.3 -> node B's tollgate (HTTP policy) -> nginx. Nothing is pinned: both proxies, the client and nginx \
         share the machine's cores. Median of {} round(s) with (min–max); added p99 and the rate ratio are taken \
         per round.\n\n\
         | path | p50 ms @1000 rps | p99 ms @1000 rps | added p99 ms | closed-loop rps | rps / plaintext |\n\
         |---|---:|---:|---:|---:|---:|\n",
        rounds.len()
    );
    out.push_str(&format!(
        "| plaintext | {} | {} | - | {} | 1.00x |\n",
        show(spread(rounds, |x| ms(x.plaintext.p50_us)), 2),
        show(spread(rounds, |x| ms(x.plaintext.p99_us)), 2),
        show(spread(rounds, |x| x.plaintext_max.achieved_rps), 0),
    ));
    out.push_str(&format!(
        "| tunnel (2 proxies, mTLS) | {} | {} | {} | {} | {} |\n\n",
        show(spread(rounds, |x| ms(x.tunnel.p50_us)), 2),
        show(spread(rounds, |x| ms(x.tunnel.p99_us)), 2),
        show(
            spread(rounds, |x| ms(x.tunnel.p99_us - x.plaintext.p99_us)),
            2
        ),
        show(spread(rounds, |x| x.tunnel_max.achieved_rps), 0),
        show_x(spread(rounds, |x| x.tunnel_max.achieved_rps
            / x.plaintext_max.achieved_rps)),
    ));
    if let (Some(before), Some(after)) = (r.load_before, r.load_after) {
        out.push_str(&format!(
            "1-minute load average before the first round {before:.2}, after the last {after:.2} (which includes \
             this benchmark's own load).\n\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(rps: f64, p50: f64, p99: f64) -> Row {
        Row {
            achieved_rps: rps,
            p50_us: p50,
            p99_us: p99,
            p999_us: p99 * 2.0,
        }
    }

    impl Row {
        fn with_p999(self, p999_us: f64) -> Row {
            Row { p999_us, ..self }
        }
    }

    fn round(tunnel_p99: f64, tunnel_rps: f64) -> Round {
        Round {
            plaintext: row(1000.0, 100.0, 300.0),
            tunnel: row(1000.0, 400.0, tunnel_p99),
            plaintext_max: row(20000.0, 350.0, 900.0),
            tunnel_max: row(tunnel_rps, 1500.0, 3000.0),
        }
    }

    #[test]
    fn rounds_round_trip_through_the_file_format() {
        let r = Rounds {
            rounds: vec![round(700.0, 4000.0)],
            load_before: Some(0.31),
            load_after: Some(1.52),
        };
        assert_eq!(parse(&serde_json::to_string(&r).unwrap()).unwrap(), r);
    }

    #[test]
    fn the_benchmarks_file_parses_with_the_whole_summary_of_each_row() {
        // One row as tunnel_bench.rs writes it: tollgate-load's whole `summary`, latencies as integers.
        let summary = r#"{"achieved_rps": 1000.12, "curve": [[50.0, 550], [99.0, 2059]], "errors": 0,
            "max_us": 6231, "mean_us": 656.3, "p50_us": 550, "p90_us": 907, "p999_us": 4711, "p99_us": 2059,
            "requests": 6000}"#;
        let json = format!(
            r#"{{"rounds": [{{"plaintext": {summary}, "tunnel": {summary}, "plaintext_max": {summary},
            "tunnel_max": {summary}}}]}}"#
        );
        let r = parse(&json).unwrap();
        assert_eq!(r.rounds.len(), 1);
        assert_eq!(
            r.rounds[0].tunnel,
            row(1000.12, 550.0, 2059.0).with_p999(4711.0)
        );
    }

    #[test]
    fn the_section_gives_medians_with_min_and_max_and_per_round_ratios() {
        let r = Rounds {
            rounds: vec![
                round(700.0, 4000.0),
                round(500.0, 6000.0),
                round(900.0, 5000.0),
            ],
            load_before: Some(0.31),
            load_after: Some(1.5),
        };
        let md = markdown(&r);
        assert!(md.starts_with("## mTLS tunnel (two hops)\n"), "{md}");
        assert!(md.contains("Median of 3 round(s)"), "{md}");
        assert!(
            md.contains(
                "| plaintext | 0.10 (0.10–0.10) | 0.30 (0.30–0.30) | - | 20000 (20000–20000) | 1.00x |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| tunnel (2 proxies, mTLS) | 0.40 (0.40–0.40) | 0.70 (0.50–0.90) | 0.40 (0.20–0.60) | 5000 (4000–6000) | 0.25x (0.20–0.30) |"
            ),
            "{md}"
        );
        assert!(
            md.contains("load average before the first round 0.31, after the last 1.50"),
            "{md}"
        );
    }
}
