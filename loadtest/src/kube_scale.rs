//! The "Kubernetes scale" section of BENCHMARKS.md, from a run of the criterion bench
//! `cargo bench -p tollgate --bench kubernetes_scale` (`proxy/benches/kubernetes_scale.rs`) in the same
//! `./dev bench` as the load scenarios: criterion's `estimates.json` per measurement, and the RSS line the bench
//! writes. Reading files is the caller's (`main.rs`); this module parses and renders.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The criterion group the bench uses.
pub const GROUP: &str = "kubernetes_scale";

/// One measured operation: criterion's benchmark id, what it is, and its goal (issue 21) in milliseconds.
#[derive(Debug)]
pub struct Measurement {
    pub id: &'static str,
    pub what: &'static str,
    pub goal_ms: f64,
}

pub const MEASUREMENTS: [Measurement; 4] = [
    Measurement {
        id: "startup_build_20000_pods_1000_policies",
        what: "start-up build: 20,000 pods + 1,000 policies reduced and compiled",
        goal_ms: 1000.0,
    },
    Measurement {
        id: "pod_event",
        what: "pod event (one pod's labels change: a new identity) + rebuild",
        goal_ms: 10.0,
    },
    Measurement {
        id: "pod_event_existing_identity",
        what: "pod event (a pod of an existing identity comes or goes) + rebuild",
        goal_ms: 10.0,
    },
    Measurement {
        id: "policy_event",
        what: "policy event (one policy's HTTP rule changes) + rebuild",
        goal_ms: 100.0,
    },
];

/// The RSS goal (issue 21), MiB.
pub const RSS_GOAL_MIB: f64 = 150.0;

#[derive(Debug, thiserror::Error)]
pub enum KubeScaleError {
    #[error(
        "{path}: {why} (run `cargo bench -p tollgate --bench kubernetes_scale` first; `./dev bench` does)"
    )]
    Input { path: PathBuf, why: String },
}

#[derive(Debug, Deserialize)]
struct Estimate {
    point_estimate: f64,
    confidence_interval: Interval,
}

#[derive(Debug, Deserialize)]
struct Interval {
    lower_bound: f64,
    upper_bound: f64,
}

#[derive(Debug, Deserialize)]
struct Estimates {
    median: Estimate,
}

/// A median with its 95% confidence interval, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Median {
    pub ms: f64,
    pub low_ms: f64,
    pub high_ms: f64,
}

/// Parses criterion's `new/estimates.json` (nanoseconds) into the median in milliseconds.
pub fn parse_estimates(json: &str) -> Result<Median, serde_json::Error> {
    let e: Estimates = serde_json::from_str(json)?;
    Ok(Median {
        ms: e.median.point_estimate / 1e6,
        low_ms: e.median.confidence_interval.lower_bound / 1e6,
        high_ms: e.median.confidence_interval.upper_bound / 1e6,
    })
}

/// Where criterion keeps the estimates of measurement `id` under `criterion_dir` (`target/criterion`).
pub fn estimates_path(criterion_dir: &Path, id: &str) -> PathBuf {
    criterion_dir
        .join(GROUP)
        .join(id)
        .join("new")
        .join("estimates.json")
}

/// Where the bench writes its RSS reading (MiB, one number) when `TOLLGATE_SCALE_RSS_OUT` names this file.
pub fn rss_path(criterion_dir: &Path) -> PathBuf {
    criterion_dir.join(GROUP).join("rss_mib.txt")
}

/// Where `./dev bench` writes the daemon's own RSS (MiB) for that state, measured by the ignored e2e test
/// `tests/tests/kubernetes_scale_daemon.rs` (`tollgate run --kubernetes` against the test API server process).
pub fn daemon_rss_path(criterion_dir: &Path) -> PathBuf {
    criterion_dir.join(GROUP).join("daemon_rss_mib.txt")
}

/// Reads every measurement and the RSS from `criterion_dir`, and the daemon's RSS when that run wrote it.
pub fn read(criterion_dir: &Path) -> Result<(Vec<Median>, f64, Option<f64>), KubeScaleError> {
    let input = |path: PathBuf| {
        std::fs::read_to_string(&path).map_err(|e| KubeScaleError::Input {
            path: path.clone(),
            why: e.to_string(),
        })
    };
    let mut medians = Vec::new();
    for m in &MEASUREMENTS {
        let path = estimates_path(criterion_dir, m.id);
        let median = parse_estimates(&input(path.clone())?).map_err(|e| KubeScaleError::Input {
            path,
            why: e.to_string(),
        })?;
        medians.push(median);
    }
    let mib = |path: PathBuf| {
        input(path.clone())?
            .trim()
            .parse::<f64>()
            .map_err(|e| KubeScaleError::Input {
                path,
                why: format!("not a number of MiB: {e}"),
            })
    };
    let rss = mib(rss_path(criterion_dir))?;
    let daemon_path = daemon_rss_path(criterion_dir);
    let daemon_rss = if daemon_path.exists() {
        Some(mib(daemon_path)?)
    } else {
        None
    };
    Ok((medians, rss, daemon_rss))
}

fn figure(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 1.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.0} µs", ms * 1000.0)
    }
}

/// The section: one row per measurement (goal, criterion median with its 95% interval, whether it meets the goal).
pub fn markdown(medians: &[Median], rss_mib: f64, daemon_rss_mib: Option<f64>) -> String {
    let mut out = String::from(
        "## Kubernetes scale\n\n\
         `cargo bench -p tollgate --bench kubernetes_scale` (criterion, run by `./dev bench` with a short measurement \
         time), see `proxy/benches/README.md`: a cluster of 20,000 pods (1,000 apps = 1,000 identities, 100 \
         namespaces, 100 nodes) and 1,000 CiliumNetworkPolicies with one L7 HTTP rule each, reduced by the \
         reconciler's `ClusterState` on one node. Each event is measured as the reconciler handles it: the object \
         applied, then the rebuild (only what changed is patched or recompiled, and the engine is assembled).\n\n\
         | measurement | goal (issue 21) | criterion median (95% interval) | meets goal |\n|---|---:|---:|---|\n",
    );
    for (m, median) in MEASUREMENTS.iter().zip(medians) {
        out.push_str(&format!(
            "| {} | <= {} | {} ({}–{}) | {} |\n",
            m.what,
            figure(m.goal_ms),
            figure(median.ms),
            figure(median.low_ms),
            figure(median.high_ms),
            if median.ms <= m.goal_ms { "yes" } else { "no" }
        ));
    }
    let meets = |mib: f64| if mib <= RSS_GOAL_MIB { "yes" } else { "no" };
    if let Some(daemon) = daemon_rss_mib {
        out.push_str(&format!(
            "| RSS of `tollgate run --kubernetes` holding that state (the daemon process, listed from the test API \
             server process: `tests/tests/kubernetes_scale_daemon.rs`) | <= {RSS_GOAL_MIB:.0} MiB | {daemon:.0} MiB | {} |\n",
            meets(daemon)
        ));
    }
    out.push_str(&format!(
        "| RSS of the bench holding only the state (API objects dropped, freed pages returned) | <= {RSS_GOAL_MIB:.0} MiB | {rss_mib:.0} MiB | {} |\n\n\
         The RSS is read after the parsed API objects are dropped (the reconciler drops each watched object once \
         applied) and freed pages returned to the system (`allocator::collect_now`, which the daemon also calls \
         after compiling a full list), with the daemon's allocator settings (no transparent huge pages, the purger \
         thread).\n\n",
        meets(rss_mib)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../fixtures/criterion_estimates.json");

    #[test]
    fn criterion_estimates_give_the_median_and_its_interval_in_ms() {
        let m = parse_estimates(FIXTURE).unwrap();
        assert_eq!(
            m,
            Median {
                ms: 4.05,
                low_ms: 3.9,
                high_ms: 4.3
            }
        );
    }

    #[test]
    fn the_section_has_a_row_per_measurement_with_goal_and_verdict() {
        let fast = parse_estimates(FIXTURE).unwrap();
        let slow = Median {
            ms: 1180.0,
            low_ms: 1100.0,
            high_ms: 1250.0,
        };
        let md = markdown(&[slow, fast, fast, fast], 171.4, Some(120.2));
        assert!(md.starts_with("## Kubernetes scale\n"));
        assert!(
            md.contains("| start-up build: 20,000 pods + 1,000 policies reduced and compiled | <= 1000 ms | 1180 ms (1100 ms–1250 ms) | no |"),
            "{md}"
        );
        assert!(
            md.contains("| <= 10.0 ms | 4.0 ms (3.9 ms–4.3 ms) | yes |"),
            "{md}"
        );
        assert!(
            md.contains("| <= 100 ms | 4.0 ms (3.9 ms–4.3 ms) | yes |"),
            "{md}"
        );
        assert!(md.contains("| <= 150 MiB | 171 MiB | no |"), "{md}");
        assert!(
            md.contains("tests/tests/kubernetes_scale_daemon.rs`) | <= 150 MiB | 120 MiB | yes |"),
            "{md}"
        );
    }

    #[test]
    fn a_missing_run_names_the_file_and_the_command() {
        let dir = std::env::temp_dir().join(format!("kube-scale-missing-{}", std::process::id()));
        let err = read(&dir).unwrap_err().to_string();
        assert!(
            err.contains("pod_event") || err.contains("startup_build"),
            "{err}"
        );
        assert!(
            err.contains("cargo bench -p tollgate --bench kubernetes_scale"),
            "{err}"
        );
    }

    #[test]
    fn read_finds_criterion_layout_and_the_rss_file() {
        let dir = std::env::temp_dir().join(format!("kube-scale-read-{}", std::process::id()));
        for m in &MEASUREMENTS {
            let path = estimates_path(&dir, m.id);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, FIXTURE).unwrap();
        }
        std::fs::write(rss_path(&dir), "123.4\n").unwrap();
        assert_eq!(read(&dir).unwrap().2, None);
        std::fs::write(daemon_rss_path(&dir), "101.5\n").unwrap();
        let (medians, rss, daemon) = read(&dir).unwrap();
        assert_eq!(daemon, Some(101.5));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(medians.len(), MEASUREMENTS.len());
        assert_eq!(medians[0].ms, 4.05);
        assert_eq!(rss, 123.4);
    }
}
