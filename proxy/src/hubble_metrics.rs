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
//!
//! Every proxied request feeds these families, so a record whose series exist allocates nothing: its label values
//! are written into one reused `SeriesKey` and series are looked up by that text (tests/hubble_metrics_alloc.rs).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::flow::{DropReason, FlowEndpoint, FlowRecord, HttpInfo, TrafficDirection, Verdict};

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
pub fn workload_name(ep: &FlowEndpoint) -> &str {
    for key in ["k8s:app.kubernetes.io/name=", "k8s:app="] {
        if let Some(v) = ep.labels.iter().find_map(|l| l.strip_prefix(key)) {
            return v;
        }
    }
    let Some(pod) = ep.pod.as_deref() else {
        return "";
    };
    // Deployment pods are `<name>-<template hash>-<5 chars>`, DaemonSet/Job pods `<name>-<5 chars>`; both
    // suffixes use Kubernetes' vowel-free alphabet.
    let generated = |s: &str, lens: std::ops::RangeInclusive<usize>| {
        lens.contains(&s.len())
            && s.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
    };
    let Some((name, _)) = pod.rsplit_once('-').filter(|(_, t)| generated(t, 5..=5)) else {
        return pod;
    };
    match name.rsplit_once('-') {
        Some((head, hash)) if generated(hash, 6..=10) => head,
        _ => name,
    }
}

/// Separates the label values in a [`SeriesKey`].
const KEY_SEPARATOR: char = '\0';
/// Starts the two-character form of a NUL (`\u{1}\u{1}`) or of itself (`\u{1}\u{2}`) inside a key value.
const KEY_ESCAPE: char = '\u{1}';

/// The label values of one series joined into one string, so feeding an existing series needs no allocation
/// (one key is reused for every record). Values are separated by NUL; a NUL or U+0001 inside a value is written
/// as U+0001 U+0001 / U+0001 U+0002. That encoding keeps order: comparing two keys compares their values one
/// by one, as comparing the value lists would, so sorting keys sorts series by label values.
#[derive(Debug, Default)]
struct SeriesKey {
    text: String,
    values: usize,
}

impl SeriesKey {
    fn clear(&mut self) {
        self.text.clear();
        self.values = 0;
    }

    /// Starts the next label value (later writes append to it); returns where it starts in `text`.
    fn next_value(&mut self) -> usize {
        if self.values > 0 {
            self.text.push(KEY_SEPARATOR);
        }
        self.values += 1;
        self.text.len()
    }

    fn value(&mut self, v: &str) {
        self.next_value();
        self.push(v);
    }

    /// Appends `s` to the current value.
    fn push(&mut self, s: &str) {
        // Both are ASCII, so byte searches (memchr) rule them out without decoding UTF-8.
        let bytes = s.as_bytes();
        if !bytes.contains(&(KEY_SEPARATOR as u8)) && !bytes.contains(&(KEY_ESCAPE as u8)) {
            self.text.push_str(s);
            return;
        }
        for c in s.chars() {
            match c {
                KEY_SEPARATOR => self.text.extend([KEY_ESCAPE, '\u{1}']),
                KEY_ESCAPE => self.text.extend([KEY_ESCAPE, '\u{2}']),
                c => self.text.push(c),
            }
        }
    }

    /// Turns the key into the overflow series' key (every value `overflow`).
    fn overflow(&mut self) {
        let values = self.values;
        self.clear();
        (0..values).for_each(|_| self.value(OVERFLOW));
    }
}

impl std::fmt::Write for SeriesKey {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s);
        Ok(())
    }
}

/// The label values a [`SeriesKey`] text holds, decoded.
fn key_values(key: &str) -> impl Iterator<Item = Cow<'_, str>> {
    key.split(KEY_SEPARATOR).map(|v| {
        if !v.contains(KEY_ESCAPE) {
            return Cow::Borrowed(v);
        }
        let mut out = String::with_capacity(v.len());
        let mut chars = v.chars();
        while let Some(c) = chars.next() {
            // U+0001 U+0001 is a NUL, U+0001 U+0002 is U+0001 itself.
            out.push(match c {
                KEY_ESCAPE if chars.next() == Some('\u{1}') => KEY_SEPARATOR,
                c => c,
            });
        }
        Cow::Owned(out)
    })
}

/// Writes the first non-empty of `alternatives` for `ep` as the next value of `key`; false when all are empty.
fn push_context(key: &mut SeriesKey, ep: &FlowEndpoint, alternatives: &[Context]) -> bool {
    let start = key.next_value();
    for c in alternatives {
        match c {
            Context::Namespace => key.push(ep.namespace.as_deref().unwrap_or_default()),
            Context::WorkloadName => key.push(workload_name(ep)),
            Context::Pod => {
                if let (Some(ns), Some(pod)) = (&ep.namespace, &ep.pod) {
                    key.push(ns);
                    key.push("/");
                    key.push(pod);
                }
            }
            Context::Identity => {
                let _ = write!(key, "{}", ep.identity);
            }
        }
        if key.text.len() > start {
            return true;
        }
    }
    false
}

fn direction(rec: &FlowRecord) -> &'static str {
    match rec.traffic_direction {
        Some(TrafficDirection::Ingress) => "ingress",
        Some(TrafficDirection::Egress) => "egress",
        None => "unknown",
    }
}

/// Names of the context labels `opts` asks for, in the order [`push_context_labels`] writes their values.
fn context_label_names(opts: &FamilyOptions) -> impl Iterator<Item = &'static str> + '_ {
    let source = (!opts.source.is_empty()).then_some("source");
    let destination = (!opts.destination.is_empty()).then_some("destination");
    source
        .into_iter()
        .chain(destination)
        .chain(opts.labels.iter().copied())
}

/// Writes the values of the context labels `opts` asks for; true when one is not empty (the series then names
/// endpoints and expires).
fn push_context_labels(opts: &FamilyOptions, rec: &FlowRecord, key: &mut SeriesKey) -> bool {
    let mut named = false;
    if !opts.source.is_empty() {
        named |= push_context(key, &rec.source, &opts.source);
    }
    if !opts.destination.is_empty() {
        named |= push_context(key, &rec.destination, &opts.destination);
    }
    for label in &opts.labels {
        let (ep, what) = match label.split_once('_') {
            Some(("source", w)) => (&rec.source, w),
            Some(("destination", w)) => (&rec.destination, w),
            _ => {
                key.value(direction(rec));
                named = true;
                continue;
            }
        };
        let ctx = match what {
            "namespace" => Context::Namespace,
            "workload" => Context::WorkloadName,
            _ => Context::Pod,
        };
        named |= push_context(key, ep, &[ctx]);
    }
    named
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

impl Entry {
    fn feed(&mut self, now: Instant, secs: f64) {
        self.count += 1;
        self.last_seen = now;
        if let Some(h) = &mut self.histogram {
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        }
    }
}

/// One metric family's series, keyed by their joined label values (names are fixed per family).
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    histogram: bool,
    /// The context options of the family's group; `None` when the group is not enabled.
    options: Option<FamilyOptions>,
    label_names: Vec<&'static str>,
    series: HashMap<Box<str>, Entry>,
    overflow_logged: bool,
}

/// The Hubble-named metrics: configuration plus series.
#[derive(Debug)]
pub struct HubbleMetrics {
    config: HubbleConfig,
    families: Vec<Family>,
    /// Reused for every record's series keys.
    key: SeriesKey,
}

/// Indexes into `HubbleMetrics::families`, in `FAMILY_NAMES` order.
const FLOWS: usize = 0;
const DROPS: usize = 1;
const HTTP: usize = 2;
const HTTP_DURATION: usize = 3;
const DNS_QUERIES: usize = 4;
const DNS_RESPONSES: usize = 5;
const POLICY: usize = 6;

/// Each family's own label names, in `FAMILY_NAMES` order ([`RecordFacts::push_own_values`] writes the values).
const OWN_LABEL_NAMES: [&[&str]; 7] = [
    &["type", "subtype", "verdict"],
    &["reason", "protocol"],
    &["method", "protocol", "status", "reporter"],
    &["method", "protocol", "reporter"],
    &["rcode", "qtypes", "ips_returned"],
    &["rcode", "qtypes", "ips_returned"],
    &["direction", "match", "action"],
];

const HELPS: [&str; 7] = [
    "Flows processed, by type, subtype and verdict.",
    "Flows dropped, by reason and protocol.",
    "HTTP requests, by method, protocol, status and reporter.",
    "HTTP request duration in seconds, by method, protocol and reporter.",
    "DNS queries observed, by rcode, qtypes and ips_returned.",
    "DNS responses observed, by rcode, qtypes and ips_returned.",
    "Policy verdicts, by direction, match and action.",
];

impl HubbleMetrics {
    pub fn new(config: HubbleConfig) -> Self {
        let families = FAMILY_NAMES
            .iter()
            .zip(HELPS)
            .enumerate()
            .map(|(i, (name, help))| {
                let options = config.groups.get(&group_of(i)).cloned();
                let mut label_names = OWN_LABEL_NAMES[i].to_vec();
                label_names.extend(options.iter().flat_map(context_label_names));
                Family {
                    name,
                    help,
                    histogram: i == HTTP_DURATION,
                    options,
                    label_names,
                    series: HashMap::new(),
                    overflow_logged: false,
                }
            })
            .collect();
        HubbleMetrics {
            config,
            families,
            key: SeriesKey::default(),
        }
    }

    /// Counts one flow record at time `now`. Allocates only when the record starts a new series.
    pub fn observe_at(&mut self, rec: &FlowRecord, now: Instant) {
        let facts = RecordFacts::new(rec);
        let latency = rec.latency_ns as f64 / 1e9;
        let max = self.config.max_series;
        for (i, fam) in self.families.iter_mut().enumerate() {
            let Some(opts) = &fam.options else {
                continue;
            };
            self.key.clear();
            if !facts.push_own_values(i, &mut self.key) {
                continue;
            }
            let expires = push_context_labels(opts, rec, &mut self.key);
            debug_assert_eq!(self.key.values, fam.label_names.len(), "{}", fam.name);
            fam.record(&mut self.key, expires, now, max, latency);
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
        for fam in self.families.iter().filter(|f| f.options.is_some()) {
            fam.render(out);
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

/// What one record says, worked out once for all the families it feeds.
struct RecordFacts<'a> {
    rec: &'a FlowRecord,
    http: Option<&'a HttpInfo>,
    /// `http`, `dns`, `kafka`, or empty for an L3/L4 record.
    subtype: &'static str,
}

impl<'a> RecordFacts<'a> {
    fn new(rec: &'a FlowRecord) -> Self {
        let http = rec.l7.as_ref().and_then(|l| l.http.as_ref());
        let kafka = rec.l7.as_ref().and_then(|l| l.kafka.as_ref());
        let subtype = match (http, &rec.dns, kafka) {
            (Some(_), _, _) => "http",
            (_, Some(_), _) => "dns",
            (_, _, Some(_)) => "kafka",
            _ => "",
        };
        RecordFacts { rec, http, subtype }
    }

    /// Writes `family`'s own label values (named by `OWN_LABEL_NAMES`); false when the record does not feed it.
    fn push_own_values(&self, family: usize, key: &mut SeriesKey) -> bool {
        let rec = self.rec;
        match family {
            FLOWS => {
                let l7 = rec.l7.is_some() || rec.dns.is_some();
                key.value(if l7 { "L7" } else { "L3_L4" });
                key.value(self.subtype);
                key.value(match rec.verdict {
                    Verdict::Forwarded => "FORWARDED",
                    Verdict::Dropped => "DROPPED",
                    Verdict::Error => "ERROR",
                });
            }
            DROPS => {
                let (Verdict::Dropped, Some(reason)) = (rec.verdict, rec.drop_reason) else {
                    return false;
                };
                key.value(reason.name());
                key.value(if rec.dns.is_some() { "UDP" } else { "TCP" });
            }
            HTTP | HTTP_DURATION => {
                let Some(h) = self.http else {
                    return false;
                };
                key.value(&h.method);
                key.value(&h.protocol);
                if family == HTTP {
                    key.next_value();
                    let _ = write!(key, "{}", h.code);
                }
                key.value(match rec.traffic_direction {
                    Some(TrafficDirection::Egress) => "client",
                    Some(TrafficDirection::Ingress) => "server",
                    None => "unknown",
                });
            }
            DNS_QUERIES | DNS_RESPONSES => return self.push_dns_values(family, key),
            POLICY => {
                let Some(action) = policy_action(rec) else {
                    return false;
                };
                key.value(direction(rec));
                key.next_value();
                match self.subtype {
                    "" => key.push("l3-l4"),
                    subtype => ["l7/", subtype].into_iter().for_each(|s| key.push(s)),
                }
                key.value(action);
            }
            _ => return false,
        }
        true
    }

    fn push_dns_values(&self, family: usize, key: &mut SeriesKey) -> bool {
        let Some(d) = &self.rec.dns else {
            return false;
        };
        let queries = family == DNS_QUERIES;
        key.value(if queries { "" } else { rcode_name(d.rcode) });
        key.next_value();
        for (i, qtype) in d.qtypes.iter().enumerate() {
            if i > 0 {
                key.push(",");
            }
            key.push(qtype);
        }
        key.next_value();
        let _ = write!(key, "{}", if queries { 0 } else { d.ips.len() });
        true
    }
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
    /// Feeds the series `key` names, or the overflow series when `key` is new and the family is full (`key` then
    /// names it). Allocates only to add a series.
    fn record(&mut self, key: &mut SeriesKey, expires: bool, now: Instant, max: usize, secs: f64) {
        if let Some(e) = self.series.get_mut(key.text.as_str()) {
            e.feed(now, secs);
            return;
        }
        if self.series.len() >= max {
            if !self.overflow_logged {
                self.overflow_logged = true;
                tracing::warn!(
                    "metric {}: more than {max} label sets; further ones are counted under \"{OVERFLOW}\" \
                     (raise --hubble-metrics-max-series or use coarser context options)",
                    self.name
                );
            }
            key.overflow();
            if let Some(e) = self.series.get_mut(key.text.as_str()) {
                e.feed(now, secs);
                return;
            }
        }
        let mut e = Entry {
            count: 0,
            histogram: self.histogram.then(Histogram::default),
            last_seen: now,
            expires,
        };
        e.feed(now, secs);
        self.series.insert(key.text.as_str().into(), e);
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
        // Key order is label-value order (see `SeriesKey`).
        let mut keys: Vec<_> = self.series.iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        for (key, e) in keys {
            let labels: Vec<String> = self
                .label_names
                .iter()
                .zip(key_values(key))
                .map(|(n, v)| format!("{n}=\"{}\"", escape_label_value(&v)))
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

#[cfg(test)]
mod exposition_tests {
    use super::*;
    use crate::flow::{DnsInfo, HttpInfo, KafkaInfo, L7Info};

    fn endpoint(identity: u32, ns: &str, pod: &str) -> FlowEndpoint {
        let addr = "10.0.0.1:1000".parse().unwrap();
        FlowEndpoint::new(addr, identity).with_pod(ns, pod, &BTreeMap::new())
    }

    fn record(verdict: Verdict, drop: Option<DropReason>, src_pod: &str) -> FlowRecord {
        let mut r = FlowRecord::new(
            verdict,
            endpoint(256, "shop", src_pod),
            endpoint(257, "bank", "ledger-7d4b9c8f6d-x2x9q"),
            "TCP",
        );
        r.drop_reason = drop;
        r.traffic_direction = Some(TrafficDirection::Egress);
        r
    }

    fn http(method: &str, code: u16, latency_ms: u64, drop: Option<DropReason>) -> FlowRecord {
        let verdict = if drop.is_some() {
            Verdict::Dropped
        } else {
            Verdict::Forwarded
        };
        let mut r = record(verdict, drop, "portal-5f7c8d9b4-x7k2p");
        r.latency_ns = latency_ms * 1_000_000;
        r.l7 = Some(L7Info {
            http: Some(HttpInfo {
                method: method.into(),
                protocol: "HTTP/1.1".into(),
                code,
                ..Default::default()
            }),
            ..Default::default()
        });
        r
    }

    fn dns(qtypes: &[&str], rcode: u16, ips: usize, drop: Option<DropReason>) -> FlowRecord {
        let verdict = if drop.is_some() {
            Verdict::Dropped
        } else {
            Verdict::Forwarded
        };
        let mut r = record(verdict, drop, "p");
        r.destination = endpoint(2, "kube-system", "coredns-x2x9q").into();
        r.l7 = Some(L7Info::default());
        r.dns = Some(DnsInfo {
            query: "a.example.".into(),
            qtypes: qtypes.iter().map(|q| q.to_string()).collect(),
            rcode,
            ips: (0..ips).map(|i| format!("10.1.0.{i}")).collect(),
            ..Default::default()
        });
        r
    }

    fn kafka(drop: Option<DropReason>) -> FlowRecord {
        let verdict = if drop.is_some() {
            Verdict::Dropped
        } else {
            Verdict::Forwarded
        };
        let mut r = record(verdict, drop, "orders-x2x9q");
        r.traffic_direction = Some(TrafficDirection::Ingress);
        r.l7 = Some(L7Info {
            kafka: Some(KafkaInfo {
                api_key: "Produce".into(),
                topics: vec!["orders".into()],
                ..Default::default()
            }),
            ..Default::default()
        });
        r
    }

    /// HTTP, DNS, Kafka and L3/L4 records, forwarded, denied and failed, some series fed twice.
    fn mixed_records() -> Vec<FlowRecord> {
        let mut tcp_denied = record(Verdict::Dropped, Some(DropReason::PolicyDenied), "db-0");
        tcp_denied.traffic_direction = None;
        tcp_denied.source = FlowEndpoint::new("10.0.0.9:1".parse().unwrap(), 7).into();
        vec![
            http("GET ", 200, 1, None),
            http("GE", 200, 1, None),
            http("G\"E\\T\n\0\u{1}", 200, 1, None),
            http("GET", 200, 3, None),
            http("POST", 403, 0, Some(DropReason::PolicyDenied)),
            http("GET", 200, 700, None),
            http("GET", 502, 30, None),
            http("PUT", 0, 12, Some(DropReason::UpstreamError)),
            dns(&["A"], 0, 2, None),
            dns(&["A", "AAAA"], 3, 0, None),
            dns(&["TXT"], 5, 0, Some(DropReason::PolicyDenied)),
            dns(&["A"], 0, 2, None),
            kafka(None),
            kafka(Some(DropReason::PolicyDenied)),
            kafka(Some(DropReason::AuthRequired)),
            tcp_denied,
            record(Verdict::Error, Some(DropReason::InvalidRequest), "x"),
        ]
    }

    fn render_mixed(config: HubbleConfig) -> String {
        let mut m = HubbleMetrics::new(config);
        let now = Instant::now();
        for rec in mixed_records() {
            m.observe_at(&rec, now);
        }
        let mut out = String::new();
        m.render(&mut out);
        out
    }

    const CONTEXTS: &str = "flow:sourceContext=namespace drop:destinationContext=pod httpV2:sourceContext=workload-name|identity;labelsContext=source_pod,traffic_direction dns:destinationContext=identity policy:sourceContext=pod;destinationContext=namespace";

    /// The exposition of a mixed record sequence, byte for byte as the fixtures hold it (written by the
    /// implementation that keyed series by `Vec<String>`): default labels, context labels, and a cap of 3.
    #[test]
    fn mixed_records_render_as_the_fixtures_hold() {
        let ttl = Duration::from_secs(600);
        let cases = [
            (
                HubbleConfig::all(100, ttl),
                include_str!("../tests/fixtures/hubble_metrics/mixed_default.prom"),
            ),
            (
                HubbleConfig::parse(CONTEXTS, 100, ttl).unwrap(),
                include_str!("../tests/fixtures/hubble_metrics/mixed_contexts.prom"),
            ),
            (
                HubbleConfig::parse(CONTEXTS, 3, ttl).unwrap(),
                include_str!("../tests/fixtures/hubble_metrics/mixed_capped.prom"),
            ),
        ];
        for (config, want) in cases {
            let got = render_mixed(config);
            assert!(got == want, "got\n{got}\nwant\n{want}");
        }
    }

    /// Keys compare as their value lists do, and decode to the values, whatever characters the values hold.
    #[test]
    fn series_keys_order_and_decode_as_their_values() {
        let values = [
            "",
            "a",
            "a ",
            "a b",
            "ab",
            "a\0",
            "a\0b",
            "a\u{1}",
            "a\u{1}\u{2}",
            "a\u{2}",
            "\u{1}",
            "\0",
        ];
        let tuples: Vec<[&str; 2]> = values
            .iter()
            .flat_map(|a| values.iter().map(move |b| [*a, *b]))
            .collect();
        let key = |t: &[&str; 2]| {
            let mut k = SeriesKey::default();
            t.iter().for_each(|v| k.value(v));
            k.text
        };
        for x in &tuples {
            let text = key(x);
            let decoded: Vec<_> = key_values(&text).collect();
            assert_eq!(decoded, x, "{x:?}");
            for y in &tuples {
                assert_eq!(key(x).cmp(&key(y)), x.cmp(y), "{x:?} vs {y:?}");
            }
        }
    }

    /// Series render in label-value order even where a naive joined key would order them differently.
    #[test]
    fn series_render_sorted_by_label_values() {
        let methods = ["a b", "a", "a\0", "ab", "", "a!", "\u{1}"];
        let mut m =
            HubbleMetrics::new(HubbleConfig::parse("httpV2", 100, Duration::from_secs(1)).unwrap());
        for method in methods {
            m.observe_at(&http(method, 200, 1, None), Instant::now());
        }
        let mut sorted = methods;
        sorted.sort();
        let mut t = String::new();
        m.render(&mut t);
        let got: Vec<&str> = t
            .lines()
            .filter_map(|l| l.strip_prefix("hubble_http_requests_total{method=\""))
            .collect();
        assert_eq!(got.len(), sorted.len(), "{t}");
        for (line, method) in got.iter().zip(sorted) {
            assert!(
                line.starts_with(&format!("{}\",", escape_label_value(method))),
                "{t}"
            );
        }
    }
}
