//! Hubble's metric families, named and labelled as Cilium documents them, fed by the same flow records as the
//! `tollgate_*` metrics so existing Hubble dashboards and alerts work against Tollgate.
//!
//! Families (option name in `--hubble-metrics` in brackets): `hubble_flows_processed_total` [flow],
//! `hubble_drop_total` [drop], `hubble_http_requests_total` and `hubble_http_request_duration_seconds` [httpV2],
//! `hubble_dns_queries_total` and `hubble_dns_responses_total` [dns], `hubble_policy_verdicts_total` [policy].
//! Each family takes Cilium's context options: `sourceContext` / `destinationContext` (`namespace`,
//! `workload-name`, `pod`, `identity`; `a|b` = first non-empty) add a `source` / `destination` label, and
//! `labelsContext` adds the named labels. Cardinality is bounded per family (beyond the cap, label values read
//! `overflow`), and series naming endpoints expire once not fed for the expiry time, so deleted pods' series go.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::flow::{DropReason, FlowEndpoint, FlowRecord, TrafficDirection, Verdict};

/// Every family this exporter can emit (histograms by base name).
pub const FAMILY_NAMES: [&str; 7] = [
    "hubble_flows_processed_total",
    "hubble_drop_total",
    "hubble_http_requests_total",
    "hubble_http_request_duration_seconds",
    "hubble_dns_queries_total",
    "hubble_dns_responses_total",
    "hubble_policy_verdicts_total",
];

/// Label value of the series that absorbs label sets beyond the cap.
pub const OVERFLOW: &str = "overflow";

/// Prometheus' default buckets, which Cilium's request-duration histogram uses.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How a `source` / `destination` context label names an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Namespace,
    /// The `app.kubernetes.io/name` or `app` label, else the pod name without its ReplicaSet/pod hash suffix.
    WorkloadName,
    /// `namespace/pod`.
    Pod,
    /// Numeric security identity.
    Identity,
}

/// Labels `labelsContext` may add (named as Cilium names them).
const LABELS_CONTEXT: [&str; 7] = [
    "source_namespace",
    "source_workload",
    "source_pod",
    "destination_namespace",
    "destination_workload",
    "destination_pod",
    "traffic_direction",
];

/// Context options of one family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilyOptions {
    /// Alternatives tried in order; the first non-empty value wins.
    pub source: Vec<Context>,
    pub destination: Vec<Context>,
    pub labels: Vec<&'static str>,
}

/// An option group of `--hubble-metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    Flow,
    Drop,
    HttpV2,
    Dns,
    Policy,
}

/// Which families are on, with their options, and the bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubbleConfig {
    pub groups: BTreeMap<Group, FamilyOptions>,
    pub max_series: usize,
    pub expiry: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--hubble-metrics: unknown metric {0:?}; use flow, drop, httpV2, dns or policy")]
    UnknownGroup(String),
    #[error("--hubble-metrics: option {0:?} comes before any metric name; write e.g. httpV2:{0}")]
    OrphanOption(String),
    #[error(
        "--hubble-metrics: unknown option {0:?}; use sourceContext, destinationContext or labelsContext"
    )]
    UnknownOption(String),
    #[error(
        "--hubble-metrics: unknown context {0:?}; use namespace, workload-name, pod or identity (a|b for fallbacks)"
    )]
    UnknownContext(String),
    #[error("--hubble-metrics: unknown labelsContext label {0:?}; use one of {LABELS_CONTEXT:?}")]
    UnknownLabel(String),
}

impl HubbleConfig {
    /// Cilium's default-like set: every family, no context labels.
    pub fn all(max_series: usize, expiry: Duration) -> Self {
        let groups = [
            Group::Flow,
            Group::Drop,
            Group::HttpV2,
            Group::Dns,
            Group::Policy,
        ]
        .into_iter()
        .map(|g| (g, FamilyOptions::default()))
        .collect();
        HubbleConfig {
            groups,
            max_series,
            expiry,
        }
    }

    /// Parses Cilium's syntax: metrics separated by spaces or `;`, `name:opt=value;opt=value` options, where a
    /// token without `=` starts the next metric (so `dns;httpV2:sourceContext=pod;policy` works).
    pub fn parse(spec: &str, max_series: usize, expiry: Duration) -> Result<Self, ConfigError> {
        let mut groups = BTreeMap::new();
        let mut current: Option<Group> = None;
        for token in spec.split([';', ' ']).filter(|t| !t.trim().is_empty()) {
            let token = token.trim();
            let option = match token.split_once(':') {
                Some((name, opt)) => {
                    current = Some(start_group(&mut groups, name)?);
                    opt
                }
                None if token.contains('=') => token,
                None => {
                    current = Some(start_group(&mut groups, token)?);
                    continue;
                }
            };
            let group = current.ok_or_else(|| ConfigError::OrphanOption(option.into()))?;
            let opts = groups.get_mut(&group).expect("group started above");
            apply_option(opts, option)?;
        }
        Ok(HubbleConfig {
            groups,
            max_series,
            expiry,
        })
    }
}

fn start_group(
    groups: &mut BTreeMap<Group, FamilyOptions>,
    name: &str,
) -> Result<Group, ConfigError> {
    let g = match name {
        "flow" => Group::Flow,
        "drop" => Group::Drop,
        "httpV2" | "http" => Group::HttpV2,
        "dns" => Group::Dns,
        "policy" => Group::Policy,
        other => return Err(ConfigError::UnknownGroup(other.into())),
    };
    groups.entry(g).or_default();
    Ok(g)
}

fn apply_option(opts: &mut FamilyOptions, option: &str) -> Result<(), ConfigError> {
    if option.is_empty() {
        return Ok(());
    }
    let (key, value) = option
        .split_once('=')
        .ok_or_else(|| ConfigError::UnknownOption(option.into()))?;
    match key {
        "sourceContext" => opts.source = parse_contexts(value)?,
        "destinationContext" => opts.destination = parse_contexts(value)?,
        "labelsContext" => {
            opts.labels = value
                .split(',')
                .map(|l| {
                    LABELS_CONTEXT
                        .iter()
                        .find(|k| **k == l)
                        .copied()
                        .ok_or_else(|| ConfigError::UnknownLabel(l.into()))
                })
                .collect::<Result<_, _>>()?
        }
        other => return Err(ConfigError::UnknownOption(other.into())),
    }
    Ok(())
}

fn parse_contexts(value: &str) -> Result<Vec<Context>, ConfigError> {
    value
        .split('|')
        .map(|c| match c {
            "namespace" => Ok(Context::Namespace),
            "workload-name" => Ok(Context::WorkloadName),
            "pod" => Ok(Context::Pod),
            "identity" => Ok(Context::Identity),
            other => Err(ConfigError::UnknownContext(other.into())),
        })
        .collect()
}

/// The workload an endpoint belongs to: its app label, else its pod name without the generated suffixes.
pub fn workload_name(ep: &FlowEndpoint) -> String {
    for key in ["k8s:app.kubernetes.io/name=", "k8s:app="] {
        if let Some(v) = ep.labels.iter().find_map(|l| l.strip_prefix(key)) {
            return v.to_string();
        }
    }
    let Some(pod) = ep.pod.as_deref() else {
        return String::new();
    };
    // Deployment pods are `<name>-<template hash>-<5 chars>`, DaemonSet/Job pods `<name>-<5 chars>`; both
    // suffixes use Kubernetes' vowel-free alphabet.
    let generated = |s: &str, lens: std::ops::RangeInclusive<usize>| {
        lens.contains(&s.len())
            && s.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
    };
    let Some((name, _)) = pod.rsplit_once('-').filter(|(_, t)| generated(t, 5..=5)) else {
        return pod.to_string();
    };
    match name.rsplit_once('-') {
        Some((head, hash)) if generated(hash, 6..=10) => head.to_string(),
        _ => name.to_string(),
    }
}

fn context_value(ep: &FlowEndpoint, alternatives: &[Context]) -> String {
    for c in alternatives {
        let v = match c {
            Context::Namespace => ep.namespace.clone().unwrap_or_default(),
            Context::WorkloadName => workload_name(ep),
            Context::Pod => match (&ep.namespace, &ep.pod) {
                (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
                _ => String::new(),
            },
            Context::Identity => ep.identity.to_string(),
        };
        if !v.is_empty() {
            return v;
        }
    }
    String::new()
}

fn direction(rec: &FlowRecord) -> &'static str {
    match rec.traffic_direction {
        Some(TrafficDirection::Ingress) => "ingress",
        Some(TrafficDirection::Egress) => "egress",
        None => "unknown",
    }
}

/// Names and values of the context labels `opts` asks for.
fn context_labels(opts: &FamilyOptions, rec: &FlowRecord) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if !opts.source.is_empty() {
        out.push(("source", context_value(&rec.source, &opts.source)));
    }
    if !opts.destination.is_empty() {
        out.push((
            "destination",
            context_value(&rec.destination, &opts.destination),
        ));
    }
    for label in &opts.labels {
        let (ep, what) = match label.split_once('_') {
            Some(("source", w)) => (&rec.source, w),
            Some(("destination", w)) => (&rec.destination, w),
            _ => {
                out.push((label, direction(rec).to_string()));
                continue;
            }
        };
        let ctx = match what {
            "namespace" => Context::Namespace,
            "workload" => Context::WorkloadName,
            _ => Context::Pod,
        };
        out.push((label, context_value(ep, &[ctx])));
    }
    out
}

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug)]
struct Entry {
    count: u64,
    histogram: Option<Histogram>,
    last_seen: Instant,
    /// Carries endpoint context labels, so it expires when not fed (its pod may be gone).
    expires: bool,
}

/// One metric family's series, keyed by label values (names are fixed per family).
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    histogram: bool,
    label_names: Vec<&'static str>,
    series: HashMap<Vec<String>, Entry>,
    overflow_logged: bool,
}

impl Family {
    fn new(name: &'static str, help: &'static str, histogram: bool) -> Self {
        Family {
            name,
            help,
            histogram,
            label_names: Vec::new(),
            series: HashMap::new(),
            overflow_logged: false,
        }
    }
}

/// The Hubble-named metrics: configuration plus series.
#[derive(Debug)]
pub struct HubbleMetrics {
    config: HubbleConfig,
    families: Vec<Family>,
}

/// Indexes into `HubbleMetrics::families`, in `FAMILY_NAMES` order.
const FLOWS: usize = 0;
const DROPS: usize = 1;
const HTTP: usize = 2;
const HTTP_DURATION: usize = 3;
const DNS_QUERIES: usize = 4;
const DNS_RESPONSES: usize = 5;
const POLICY: usize = 6;

impl HubbleMetrics {
    pub fn new(config: HubbleConfig) -> Self {
        let helps = [
            "Flows processed, by type, subtype and verdict.",
            "Flows dropped, by reason and protocol.",
            "HTTP requests, by method, protocol, status and reporter.",
            "HTTP request duration in seconds, by method, protocol and reporter.",
            "DNS queries observed, by rcode, qtypes and ips_returned.",
            "DNS responses observed, by rcode, qtypes and ips_returned.",
            "Policy verdicts, by direction, match and action.",
        ];
        let families = FAMILY_NAMES
            .iter()
            .zip(helps)
            .enumerate()
            .map(|(i, (n, h))| Family::new(n, h, i == HTTP_DURATION))
            .collect();
        HubbleMetrics { config, families }
    }

    /// Counts one flow record at time `now`.
    pub fn observe_at(&mut self, rec: &FlowRecord, now: Instant) {
        let latency = rec.latency_ns as f64 / 1e9;
        for (group, family, labels) in family_labels(rec) {
            let Some(opts) = self.config.groups.get(&group) else {
                continue;
            };
            let ctx = context_labels(opts, rec);
            let expires = ctx.iter().any(|(_, v)| !v.is_empty());
            let mut names: Vec<&'static str> = labels.iter().map(|(n, _)| *n).collect();
            names.extend(ctx.iter().map(|(n, _)| *n));
            let values = labels.into_iter().chain(ctx).map(|(_, v)| v).collect();
            let max = self.config.max_series;
            let fam = &mut self.families[family];
            fam.label_names = names;
            fam.record(values, expires, now, max, latency);
        }
    }

    /// Drops endpoint-labelled series not fed for the expiry time before `now`.
    pub fn expire(&mut self, now: Instant) {
        let ttl = self.config.expiry;
        for fam in &mut self.families {
            fam.series
                .retain(|_, e| !e.expires || now.saturating_duration_since(e.last_seen) < ttl);
        }
    }

    /// The exposition of the enabled families (HELP/TYPE even before the first series).
    pub fn render(&self, out: &mut String) {
        for (i, fam) in self.families.iter().enumerate() {
            if self.config.groups.contains_key(&group_of(i)) {
                fam.render(out);
            }
        }
    }
}

fn group_of(family: usize) -> Group {
    match family {
        FLOWS => Group::Flow,
        DROPS => Group::Drop,
        HTTP | HTTP_DURATION => Group::HttpV2,
        DNS_QUERIES | DNS_RESPONSES => Group::Dns,
        _ => Group::Policy,
    }
}

type Labels = Vec<(&'static str, String)>;

/// The families one record feeds and their own (non-context) labels.
fn family_labels(rec: &FlowRecord) -> Vec<(Group, usize, Labels)> {
    let http = rec.l7.as_ref().and_then(|l| l.http.as_ref());
    let kafka = rec.l7.as_ref().and_then(|l| l.kafka.as_ref());
    let subtype = match (http, &rec.dns, kafka) {
        (Some(_), _, _) => "http",
        (_, Some(_), _) => "dns",
        (_, _, Some(_)) => "kafka",
        _ => "",
    };
    let kind = if rec.l7.is_some() || rec.dns.is_some() {
        "L7"
    } else {
        "L3_L4"
    };
    let verdict = match rec.verdict {
        Verdict::Forwarded => "FORWARDED",
        Verdict::Dropped => "DROPPED",
        Verdict::Error => "ERROR",
    };
    let s = |v: &str| v.to_string();
    let mut out = vec![(
        Group::Flow,
        FLOWS,
        vec![
            ("type", s(kind)),
            ("subtype", s(subtype)),
            ("verdict", s(verdict)),
        ],
    )];
    if let (Verdict::Dropped, Some(reason)) = (rec.verdict, rec.drop_reason) {
        let proto = if rec.dns.is_some() { "UDP" } else { "TCP" };
        out.push((
            Group::Drop,
            DROPS,
            vec![("reason", s(reason.name())), ("protocol", s(proto))],
        ));
    }
    if let Some(h) = http {
        let reporter = match rec.traffic_direction {
            Some(TrafficDirection::Egress) => "client",
            Some(TrafficDirection::Ingress) => "server",
            None => "unknown",
        };
        let base = vec![
            ("method", h.method.clone()),
            ("protocol", h.protocol.clone()),
        ];
        let mut with_status = base.clone();
        with_status.push(("status", h.code.to_string()));
        with_status.push(("reporter", s(reporter)));
        let mut duration = base;
        duration.push(("reporter", s(reporter)));
        out.push((Group::HttpV2, HTTP, with_status));
        out.push((Group::HttpV2, HTTP_DURATION, duration));
    }
    if let Some(d) = &rec.dns {
        let qtypes = d.qtypes.join(",");
        out.push((
            Group::Dns,
            DNS_QUERIES,
            vec![
                ("rcode", s("")),
                ("qtypes", qtypes.clone()),
                ("ips_returned", s("0")),
            ],
        ));
        out.push((
            Group::Dns,
            DNS_RESPONSES,
            vec![
                ("rcode", s(rcode_name(d.rcode))),
                ("qtypes", qtypes),
                ("ips_returned", d.ips.len().to_string()),
            ],
        ));
    }
    if let Some(action) = policy_action(rec) {
        let matched = if subtype.is_empty() {
            s("l3-l4")
        } else {
            format!("l7/{subtype}")
        };
        out.push((
            Group::Policy,
            POLICY,
            vec![
                ("direction", s(direction(rec))),
                ("match", matched),
                ("action", s(action)),
            ],
        ));
    }
    out
}

/// `forwarded` / `dropped` when policy decided the flow; `None` when something else (a parse error, an
/// upstream failure) stopped it.
fn policy_action(rec: &FlowRecord) -> Option<&'static str> {
    match (rec.verdict, rec.drop_reason) {
        (Verdict::Forwarded, _) => Some("forwarded"),
        (_, Some(DropReason::PolicyDenied | DropReason::PolicyDeny | DropReason::AuthRequired)) => {
            Some("dropped")
        }
        _ => None,
    }
}

fn rcode_name(rcode: u16) -> &'static str {
    match rcode {
        0 => "No Error",
        1 => "Format Error",
        2 => "Server Failure",
        3 => "Non-Existent Domain",
        4 => "Not Implemented",
        5 => "Query Refused",
        _ => "Other",
    }
}

impl Family {
    fn record(
        &mut self,
        mut values: Vec<String>,
        expires: bool,
        now: Instant,
        max: usize,
        secs: f64,
    ) {
        if !self.series.contains_key(&values) && self.series.len() >= max {
            if !self.overflow_logged {
                self.overflow_logged = true;
                tracing::warn!(
                    "metric {}: more than {max} label sets; further ones are counted under \"{OVERFLOW}\" \
                     (raise --hubble-metrics-max-series or use coarser context options)",
                    self.name
                );
            }
            values.iter_mut().for_each(|v| *v = OVERFLOW.into());
        }
        let histogram = self.histogram;
        let e = self.series.entry(values).or_insert_with(|| Entry {
            count: 0,
            histogram: histogram.then(Histogram::default),
            last_seen: now,
            expires,
        });
        e.count += 1;
        e.last_seen = now;
        if let Some(h) = &mut e.histogram {
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        }
    }

    fn render(&self, out: &mut String) {
        let kind = if self.histogram {
            "histogram"
        } else {
            "counter"
        };
        let _ = write!(
            out,
            "# HELP {} {}\n# TYPE {} {kind}\n",
            self.name, self.help, self.name
        );
        let mut keys: Vec<_> = self.series.iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        for (values, e) in keys {
            let labels: Vec<String> = self
                .label_names
                .iter()
                .zip(values)
                .map(|(n, v)| format!("{n}=\"{}\"", escape_label_value(v)))
                .collect();
            let labels = labels.join(",");
            let Some(h) = &e.histogram else {
                let _ = writeln!(out, "{}{{{labels}}} {}", self.name, e.count);
                continue;
            };
            let sep = if labels.is_empty() { "" } else { "," };
            for (b, c) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(out, "{}_bucket{{{labels}{sep}le=\"{b}\"}} {c}", self.name);
            }
            let _ = writeln!(
                out,
                "{}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
                self.name, h.count
            );
            let _ = writeln!(out, "{}_sum{{{labels}}} {}", self.name, h.sum);
            let _ = writeln!(out, "{}_count{{{labels}}} {}", self.name, h.count);
        }
    }
}

/// A Prometheus label value in the text exposition: backslash, double quote and newline escaped.
pub(crate) fn escape_label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{DnsInfo, HttpInfo, L7Info};

    const TTL: Duration = Duration::from_secs(600);

    fn endpoint(port: u16, identity: u32, ns: &str, pod: &str) -> FlowEndpoint {
        let addr = format!("10.0.0.1:{port}").parse().unwrap();
        FlowEndpoint::new(addr, identity).with_pod(ns, pod, &BTreeMap::new())
    }

    fn http(verdict: Verdict, src_pod: &str, code: u16) -> FlowRecord {
        let mut r = FlowRecord::new(
            verdict,
            endpoint(1000, 256, "shop", src_pod),
            endpoint(80, 257, "bank", "ledger-7d4b9c8f6d-x2x9q"),
            "HTTP",
        );
        r.traffic_direction = Some(TrafficDirection::Egress);
        r.latency_ns = 20_000_000;
        r.l7 = Some(L7Info {
            http: Some(HttpInfo {
                method: "GET".into(),
                protocol: "HTTP/1.1".into(),
                code,
                ..Default::default()
            }),
            ..Default::default()
        });
        if verdict == Verdict::Dropped {
            r.drop_reason = Some(DropReason::PolicyDenied);
        }
        r
    }

    fn render(m: &HubbleMetrics) -> String {
        let mut s = String::new();
        m.render(&mut s);
        s
    }

    #[test]
    fn parses_cilium_syntax_with_context_options() {
        let c = HubbleConfig::parse(
            "dns;drop;flow;httpV2:sourceContext=namespace;destinationContext=workload-name|identity;labelsContext=source_namespace,destination_namespace;policy",
            10,
            TTL,
        )
        .unwrap();
        assert_eq!(c.groups.len(), 5);
        let h = &c.groups[&Group::HttpV2];
        assert_eq!(h.source, vec![Context::Namespace]);
        assert_eq!(
            h.destination,
            vec![Context::WorkloadName, Context::Identity]
        );
        assert_eq!(h.labels, vec!["source_namespace", "destination_namespace"]);
        assert_eq!(c.groups[&Group::Dns], FamilyOptions::default());
        let spaced = HubbleConfig::parse("dns drop:sourceContext=pod", 10, TTL).unwrap();
        assert_eq!(spaced.groups[&Group::Drop].source, vec![Context::Pod]);
        assert_eq!(
            HubbleConfig::parse("tcp", 1, TTL),
            Err(ConfigError::UnknownGroup("tcp".into()))
        );
        assert!(matches!(
            HubbleConfig::parse("httpV2:sourceContext=cluster", 1, TTL),
            Err(ConfigError::UnknownContext(_))
        ));
        assert!(matches!(
            HubbleConfig::parse("sourceContext=pod", 1, TTL),
            Err(ConfigError::OrphanOption(_))
        ));
    }

    #[test]
    fn default_config_emits_every_family_with_cilium_labels() {
        let mut m = HubbleMetrics::new(HubbleConfig::all(100, TTL));
        let now = Instant::now();
        m.observe_at(
            &http(Verdict::Forwarded, "portal-5f7c8d9b4-x7k2p", 200),
            now,
        );
        m.observe_at(&http(Verdict::Dropped, "portal-5f7c8d9b4-x7k2p", 403), now);
        let mut dns = FlowRecord::new(
            Verdict::Forwarded,
            endpoint(5353, 256, "shop", "p"),
            endpoint(53, 2, "kube-system", "coredns"),
            "DNS",
        );
        dns.l7 = Some(L7Info::default());
        dns.dns = Some(DnsInfo {
            query: "a.example.".into(),
            qtypes: vec!["A".into()],
            ips: vec!["1.2.3.4".into()],
            ..Default::default()
        });
        m.observe_at(&dns, now);
        let t = render(&m);
        for want in [
            "hubble_flows_processed_total{type=\"L7\",subtype=\"http\",verdict=\"FORWARDED\"} 1\n",
            "hubble_flows_processed_total{type=\"L7\",subtype=\"dns\",verdict=\"FORWARDED\"} 1\n",
            "hubble_drop_total{reason=\"POLICY_DENIED\",protocol=\"TCP\"} 1\n",
            "hubble_http_requests_total{method=\"GET\",protocol=\"HTTP/1.1\",status=\"403\",reporter=\"client\"} 1\n",
            "hubble_http_request_duration_seconds_bucket{method=\"GET\",protocol=\"HTTP/1.1\",reporter=\"client\",le=\"0.025\"} 2\n",
            "hubble_http_request_duration_seconds_count{method=\"GET\",protocol=\"HTTP/1.1\",reporter=\"client\"} 2\n",
            "hubble_dns_queries_total{rcode=\"\",qtypes=\"A\",ips_returned=\"0\"} 1\n",
            "hubble_dns_responses_total{rcode=\"No Error\",qtypes=\"A\",ips_returned=\"1\"} 1\n",
            "hubble_policy_verdicts_total{direction=\"egress\",match=\"l7/http\",action=\"dropped\"} 1\n",
            "hubble_policy_verdicts_total{direction=\"egress\",match=\"l7/http\",action=\"forwarded\"} 1\n",
        ] {
            assert!(t.contains(want), "missing {want} in\n{t}");
        }
        for name in FAMILY_NAMES {
            assert!(t.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }

    #[test]
    fn context_labels_name_namespace_workload_pod_and_identity() {
        let c = HubbleConfig::parse(
            "httpV2:sourceContext=workload-name;destinationContext=pod;labelsContext=source_namespace,traffic_direction flow:sourceContext=identity",
            100,
            TTL,
        )
        .unwrap();
        let mut m = HubbleMetrics::new(c);
        m.observe_at(
            &http(Verdict::Forwarded, "portal-5f7c8d9b4-x7k2p", 200),
            Instant::now(),
        );
        let t = render(&m);
        assert!(t.contains("hubble_http_requests_total{method=\"GET\",protocol=\"HTTP/1.1\",status=\"200\",reporter=\"client\",source=\"portal\",destination=\"bank/ledger-7d4b9c8f6d-x2x9q\",source_namespace=\"shop\",traffic_direction=\"egress\"} 1\n"), "{t}");
        assert!(t.contains("hubble_flows_processed_total{type=\"L7\",subtype=\"http\",verdict=\"FORWARDED\",source=\"256\"} 1\n"), "{t}");
        assert!(!t.contains("hubble_drop_total{"), "drop not enabled: {t}");
        let mut app = endpoint(1, 1, "ns", "whatever-abc");
        app.labels.push("k8s:app=frontend".into());
        assert_eq!(workload_name(&app), "frontend");
        assert_eq!(workload_name(&endpoint(1, 1, "ns", "agent-x2x9q")), "agent");
        assert_eq!(workload_name(&endpoint(1, 1, "ns", "db-0")), "db-0");
    }

    #[test]
    fn label_sets_beyond_the_cap_count_as_overflow() {
        let c = HubbleConfig::parse("httpV2:sourceContext=pod", 2, TTL).unwrap();
        let mut m = HubbleMetrics::new(c);
        let now = Instant::now();
        for i in 0..10 {
            m.observe_at(&http(Verdict::Forwarded, &format!("p{i}"), 200), now);
        }
        let t = render(&m);
        let series = t
            .lines()
            .filter(|l| l.starts_with("hubble_http_requests_total{"))
            .count();
        assert_eq!(series, 3, "{t}");
        assert!(t.contains("hubble_http_requests_total{method=\"overflow\",protocol=\"overflow\",status=\"overflow\",reporter=\"overflow\",source=\"overflow\"} 8\n"), "{t}");
    }

    #[test]
    fn series_of_pods_not_seen_for_the_expiry_time_are_removed() {
        let c = HubbleConfig::parse("httpV2:sourceContext=pod flow", 100, TTL).unwrap();
        let mut m = HubbleMetrics::new(c);
        let t0 = Instant::now();
        m.observe_at(&http(Verdict::Forwarded, "gone", 200), t0);
        m.observe_at(
            &http(Verdict::Forwarded, "alive", 200),
            t0 + Duration::from_secs(500),
        );
        m.expire(t0 + Duration::from_secs(599));
        assert!(render(&m).contains("source=\"shop/gone\""));
        m.expire(t0 + Duration::from_secs(601));
        let t = render(&m);
        assert!(!t.contains("source=\"shop/gone\""), "{t}");
        assert!(t.contains("source=\"shop/alive\""), "{t}");
        // Series without endpoint labels are aggregates: kept however long they are idle.
        m.expire(t0 + Duration::from_secs(10_000));
        let t = render(&m);
        assert!(t.contains("hubble_flows_processed_total{type=\"L7\",subtype=\"http\",verdict=\"FORWARDED\"} 2\n"), "{t}");
        assert!(!t.contains("source=\"shop/alive\""), "{t}");
    }
}
