//! The shipped Grafana dashboard (deploy/grafana/tollgate-hubble.json) only queries metrics the exporter emits:
//! the list of names comes from the exposition itself (`# TYPE` lines, histograms with their `_bucket`, `_sum`
//! and `_count` series), so renaming a metric in code without fixing the dashboard fails here.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use tollgate::hubble_metrics::FAMILY_NAMES;
use tollgate::metrics::{Gauges, Metrics};

/// Every series name the exporter's `/metrics` can contain.
fn exported_names() -> BTreeSet<String> {
    let text = Metrics::new(100).render(&Gauges::default());
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("TYPE line has a kind");
        names.insert(name.to_string());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// Metric-looking identifiers in a PromQL expression: our prefixes only (functions, label names and
/// keywords never start with them).
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("hubble_") || w.starts_with("tollgate_"))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_dashboard_query_names_exported_metrics_only() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/tollgate-hubble.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard is valid JSON");
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(all.len() >= 10, "dashboard has too few queries: {all:?}");
    let exported = exported_names();
    let mut used = BTreeSet::new();
    for expr in &all {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "query names no tollgate/hubble metric: {expr}"
        );
        for n in names {
            assert!(
                exported.contains(&n),
                "query {expr:?} names {n}, which the exporter does not emit; exported: {exported:?}"
            );
            used.insert(n);
        }
    }
    // Every Hubble family has a panel.
    for family in FAMILY_NAMES {
        assert!(
            used.iter().any(|u| u.starts_with(family)),
            "no panel for {family}"
        );
    }
}

#[test]
fn the_name_scanner_finds_names_in_promql() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.9, sum by (le) (rate(hubble_http_request_duration_seconds_bucket{a=\"b\"}[5m])))"
        ),
        vec!["hubble_http_request_duration_seconds_bucket"]
    );
    assert!(!exported_names().contains("hubble_nonexistent_total"));
    assert!(exported_names().contains("tollgate_requests_total"));
}
