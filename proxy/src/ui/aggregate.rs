//! The UI's aggregates over a stream of Hubble flows (pure: no I/O, the clock is passed in): the service map
//! (workloads and the edges between them with request, error and drop counts), drop reasons ranked, HTTP
//! endpoints per workload with latency quantiles, and DNS names per workload with their IPs. Every table is
//! bounded; when one is full the entry seen longest ago makes room.
//!
//! Counting follows the flow shapes `hubble::to_flows` produces (and a relay receives): policy-verdict events are
//! not counted (the record they announce is); an L7 REQUEST flow is one request; a RESPONSE flow carries the
//! status and latency of the request it answers; an L3/L4 flow is one connection.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;

use super::workload::{Workload, WorkloadId, WorkloadKind, path_template, workload_of};
use crate::hubble::event_type;
use crate::hubble::flow::{DropReason, Flow, L7FlowType, Verdict, layer4, layer7};

/// Table sizes: memory stays bounded whatever the traffic.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub workloads: usize,
    pub edges: usize,
    pub endpoints: usize,
    pub dns_names: usize,
    pub drop_reasons: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            workloads: 1_000,
            edges: 4_000,
            endpoints: 4_000,
            dns_names: 4_000,
            drop_reasons: 500,
        }
    }
}

/// Counts over the last minute in 5-second buckets (rates and "recent" colours).
#[derive(Debug, Clone, Default)]
struct Window {
    buckets: [u32; WINDOW_BUCKETS],
    /// Index (time / bucket) of the newest bucket.
    head: i64,
}

const WINDOW_BUCKETS: usize = 12;
const BUCKET_NS: i64 = 5_000_000_000;
/// The span rates are computed over.
pub const WINDOW_SECS: f64 = (WINDOW_BUCKETS as i64 * BUCKET_NS) as f64 / 1e9;

impl Window {
    fn advance(&mut self, now_ns: i64) {
        let idx = now_ns.div_euclid(BUCKET_NS);
        if idx <= self.head {
            return;
        }
        let steps = (idx - self.head).min(WINDOW_BUCKETS as i64);
        for i in 1..=steps {
            self.buckets[(self.head + i).rem_euclid(WINDOW_BUCKETS as i64) as usize] = 0;
        }
        self.head = idx;
    }

    fn add(&mut self, at_ns: i64) {
        self.advance(at_ns);
        let idx = at_ns.div_euclid(BUCKET_NS);
        // Late flows (a relay's slower node) still count while their bucket is in the window.
        if self.head - idx < WINDOW_BUCKETS as i64 {
            let b = &mut self.buckets[idx.rem_euclid(WINDOW_BUCKETS as i64) as usize];
            *b = b.saturating_add(1);
        }
    }

    fn sum(&self, now_ns: i64) -> u64 {
        let mut w = self.clone();
        w.advance(now_ns);
        w.buckets.iter().map(|b| u64::from(*b)).sum()
    }
}

/// Latest latencies of an endpoint (a ring; quantiles over what it holds).
#[derive(Debug, Clone, Default)]
struct Latencies {
    ns: Vec<u64>,
    next: usize,
}

const LATENCY_SAMPLES: usize = 256;

impl Latencies {
    fn push(&mut self, v: u64) {
        if self.ns.len() < LATENCY_SAMPLES {
            self.ns.push(v);
        } else {
            self.ns[self.next] = v;
        }
        self.next = (self.next + 1) % LATENCY_SAMPLES;
    }

    /// (p50, p99) in milliseconds.
    fn quantiles_ms(&self) -> Option<(f64, f64)> {
        if self.ns.is_empty() {
            return None;
        }
        let mut v = self.ns.clone();
        v.sort_unstable();
        let at =
            |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1] as f64 / 1e6;
        Some((at(0.50), at(0.99)))
    }
}

#[derive(Debug, Clone)]
struct NodeStat {
    workload: Workload,
    pods: BTreeSet<String>,
    identity: u32,
    last_ns: i64,
}

const PODS_PER_WORKLOAD: usize = 64;

#[derive(Debug, Clone, Default)]
struct EdgeStat {
    protocols: BTreeSet<String>,
    ports: BTreeSet<u32>,
    requests: u64,
    errors: u64,
    drops: u64,
    recent_requests: Window,
    recent_errors: Window,
    recent_drops: Window,
    last_ns: i64,
}

const PORTS_PER_EDGE: usize = 8;

#[derive(Debug, Clone, Default)]
struct DropStat {
    count: u64,
    recent: Window,
    last_ns: i64,
    example: String,
}

#[derive(Debug, Clone, Default)]
struct EndpointStat {
    requests: u64,
    errors: u64,
    drops: u64,
    recent: Window,
    latencies: Latencies,
    last_ns: i64,
}

#[derive(Debug, Clone, Default)]
struct DnsStat {
    identity: u32,
    ips: BTreeSet<String>,
    queries: u64,
    refused: u64,
    rcode: u32,
    last_ns: i64,
}

const IPS_PER_NAME: usize = 32;

/// Everything the UI aggregates. Feed it with [`Aggregate::ingest`], read it with the view methods.
#[derive(Debug, Default)]
pub struct Aggregate {
    limits: Limits,
    nodes: HashMap<WorkloadId, NodeStat>,
    edges: HashMap<(WorkloadId, WorkloadId), EdgeStat>,
    drops: HashMap<(String, String), DropStat>,
    /// (workload, method, path template).
    endpoints: HashMap<(WorkloadId, String, String), EndpointStat>,
    /// (client workload, name).
    dns: HashMap<(WorkloadId, String), DnsStat>,
    /// Bumped on every counted flow: the server pushes a snapshot only when it moved.
    version: u64,
    /// Flows seen, counted or not.
    pub flows: u64,
}

/// One side of a counted flow, resolved to its workload.
struct Side<'a> {
    workload: Workload,
    pod: &'a str,
    identity: u32,
}

fn side<'a>(ep: Option<&'a crate::hubble::flow::Endpoint>, names: &[String]) -> Side<'a> {
    Side {
        workload: workload_of(ep, names),
        pod: ep.map_or("", |e| e.pod_name.as_str()),
        identity: ep.map_or(0, |e| e.identity),
    }
}

/// Nanoseconds since the epoch of a flow (0 when it has none).
pub fn flow_time_ns(f: &Flow) -> i64 {
    f.time.as_ref().map_or(0, |t| {
        t.seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(t.nanos))
    })
}

/// The protocol an edge is labelled with.
pub fn protocol_of(f: &Flow) -> &'static str {
    match f.l7.as_ref().and_then(|l| l.record.as_ref()) {
        Some(layer7::Record::Http(_)) => "HTTP",
        Some(layer7::Record::Dns(_)) => "DNS",
        Some(layer7::Record::Kafka(_)) => "Kafka",
        None => match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
            Some(layer4::Protocol::Udp(_)) => "UDP",
            _ => "TCP",
        },
    }
}

fn destination_port(f: &Flow) -> u32 {
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(t)) => t.destination_port,
        Some(layer4::Protocol::Udp(u)) => u.destination_port,
        None => 0,
    }
}

/// The name a drop is ranked under: Hubble's drop reason when it has one, else the reason Tollgate logged.
pub fn drop_reason_name(f: &Flow) -> String {
    let desc = DropReason::try_from(f.drop_reason_desc).unwrap_or(DropReason::Unknown);
    if desc != DropReason::Unknown {
        return desc.as_str_name().to_string();
    }
    if f.verdict == Verdict::Error as i32 {
        return "ERROR".into();
    }
    "DROPPED".into()
}

/// What a counted flow contributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A request or connection (its verdict says whether it went through).
    Request,
    /// A response to a request already counted: status and latency only.
    Response,
}

fn shape(f: &Flow) -> Option<Shape> {
    if f.event_type
        .as_ref()
        .is_some_and(|e| e.r#type == event_type::POLICY_VERDICT)
    {
        return None;
    }
    match f.l7.as_ref() {
        Some(l7) if l7.r#type == L7FlowType::Response as i32 => Some(Shape::Response),
        _ if f.is_reply == Some(true) => Some(Shape::Response),
        _ => Some(Shape::Request),
    }
}

impl Aggregate {
    pub fn new(limits: Limits) -> Self {
        Aggregate {
            limits,
            ..Default::default()
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Counts one flow.
    pub fn ingest(&mut self, f: &Flow) {
        self.flows += 1;
        let Some(shape) = shape(f) else { return };
        let t = flow_time_ns(f);
        // A response travels back: its source is the server.
        let (client, server, client_names, server_names) = match shape {
            Shape::Request => (
                &f.source,
                &f.destination,
                &f.source_names,
                &f.destination_names,
            ),
            Shape::Response => (
                &f.destination,
                &f.source,
                &f.destination_names,
                &f.source_names,
            ),
        };
        let from = side(client.as_ref(), client_names);
        let to = side(server.as_ref(), server_names);
        self.version += 1;
        self.note_node(&from, t);
        self.note_node(&to, t);
        let dropped = f.verdict == Verdict::Dropped as i32;
        let failed = f.verdict == Verdict::Error as i32 || http_code(f).is_some_and(|c| c >= 500);
        self.count_edge(f, shape, &from, &to, t, dropped, failed);
        if dropped || f.verdict == Verdict::Error as i32 {
            self.count_drop(f, &from, &to, t);
        }
        self.count_http(f, shape, &to, t, dropped, failed);
        self.count_dns(f, shape, &from, t, dropped);
    }

    fn note_node(&mut self, s: &Side<'_>, t: i64) {
        if !self.nodes.contains_key(&s.workload.id) && self.nodes.len() >= self.limits.workloads {
            evict_oldest(&mut self.nodes, |n| n.last_ns);
        }
        let n = self
            .nodes
            .entry(s.workload.id.clone())
            .or_insert_with(|| NodeStat {
                workload: s.workload.clone(),
                pods: BTreeSet::new(),
                identity: s.identity,
                last_ns: t,
            });
        n.last_ns = n.last_ns.max(t);
        if !s.pod.is_empty() && n.pods.len() < PODS_PER_WORKLOAD {
            n.pods.insert(s.pod.to_string());
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn count_edge(
        &mut self,
        f: &Flow,
        shape: Shape,
        from: &Side<'_>,
        to: &Side<'_>,
        t: i64,
        dropped: bool,
        failed: bool,
    ) {
        let key = (from.workload.id.clone(), to.workload.id.clone());
        if !self.edges.contains_key(&key) && self.edges.len() >= self.limits.edges {
            evict_oldest(&mut self.edges, |e| e.last_ns);
        }
        let e = self.edges.entry(key).or_default();
        e.last_ns = e.last_ns.max(t);
        e.protocols.insert(protocol_of(f).to_string());
        if shape == Shape::Request {
            let port = destination_port(f);
            if port != 0 && e.ports.len() < PORTS_PER_EDGE {
                e.ports.insert(port);
            }
            e.requests += 1;
            e.recent_requests.add(t);
        }
        if dropped {
            e.drops += 1;
            e.recent_drops.add(t);
        } else if failed {
            e.errors += 1;
            e.recent_errors.add(t);
        }
    }

    fn count_drop(&mut self, f: &Flow, from: &Side<'_>, to: &Side<'_>, t: i64) {
        let key = (drop_reason_name(f), f.tollgate_policy.clone());
        if !self.drops.contains_key(&key) && self.drops.len() >= self.limits.drop_reasons {
            evict_oldest(&mut self.drops, |d| d.last_ns);
        }
        let d = self.drops.entry(key).or_default();
        d.count += 1;
        d.recent.add(t);
        d.last_ns = d.last_ns.max(t);
        d.example = format!(
            "{} → {}: {}",
            from.workload.id.0, to.workload.id.0, f.summary
        );
    }

    fn count_http(
        &mut self,
        f: &Flow,
        shape: Shape,
        to: &Side<'_>,
        t: i64,
        dropped: bool,
        failed: bool,
    ) {
        let Some(layer7::Record::Http(h)) = f.l7.as_ref().and_then(|l| l.record.as_ref()) else {
            return;
        };
        let key = (
            to.workload.id.clone(),
            h.method.clone(),
            path_template(&h.url),
        );
        if !self.endpoints.contains_key(&key) && self.endpoints.len() >= self.limits.endpoints {
            evict_oldest(&mut self.endpoints, |e| e.last_ns);
        }
        let e = self.endpoints.entry(key).or_default();
        e.last_ns = e.last_ns.max(t);
        match shape {
            Shape::Request => {
                e.requests += 1;
                e.recent.add(t);
            }
            Shape::Response => {
                if let Some(l7) = &f.l7 {
                    e.latencies.push(l7.latency_ns);
                }
            }
        }
        if dropped {
            e.drops += 1;
        } else if failed {
            e.errors += 1;
        }
    }

    fn count_dns(&mut self, f: &Flow, shape: Shape, client: &Side<'_>, t: i64, dropped: bool) {
        let Some(layer7::Record::Dns(d)) = f.l7.as_ref().and_then(|l| l.record.as_ref()) else {
            return;
        };
        // A forwarded query shows up twice (query, then answer): the answer is the one with the outcome.
        let outcome = shape == Shape::Response || dropped || d.rcode != 0;
        if !outcome || d.query.is_empty() {
            return;
        }
        let name = d.query.trim_end_matches('.').to_ascii_lowercase();
        let key = (client.workload.id.clone(), name);
        if !self.dns.contains_key(&key) && self.dns.len() >= self.limits.dns_names {
            evict_oldest(&mut self.dns, |d| d.last_ns);
        }
        let e = self.dns.entry(key).or_default();
        e.identity = client.identity;
        e.queries += 1;
        e.rcode = d.rcode;
        e.last_ns = e.last_ns.max(t);
        if dropped {
            e.refused += 1;
        }
        for ip in &d.ips {
            if e.ips.len() >= IPS_PER_NAME {
                break;
            }
            e.ips.insert(ip.clone());
        }
    }
}

fn http_code(f: &Flow) -> Option<u32> {
    match f.l7.as_ref()?.record.as_ref()? {
        layer7::Record::Http(h) if h.code != 0 => Some(h.code),
        _ => None,
    }
}

fn evict_oldest<K: Clone + Eq + std::hash::Hash, V>(
    m: &mut HashMap<K, V>,
    last: impl Fn(&V) -> i64,
) {
    if let Some(k) = m
        .iter()
        .min_by_key(|(_, v)| last(v))
        .map(|(k, _)| k.clone())
    {
        m.remove(&k);
    }
}

/// A workload on the map.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MapNode {
    pub id: String,
    pub name: String,
    pub kind: WorkloadKind,
    pub namespace: Option<String>,
    pub pods: Vec<String>,
    pub identity: u32,
}

/// Traffic from one workload to another.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MapEdge {
    pub from: String,
    pub to: String,
    pub protocols: Vec<String>,
    pub ports: Vec<u32>,
    pub requests: u64,
    pub errors: u64,
    pub drops: u64,
    /// Requests per second over the last minute.
    pub rate: f64,
    pub recent_errors: u64,
    pub recent_drops: u64,
    /// `dropped` when anything was dropped in the last minute, `error` for errors, else `forwarded`.
    pub verdict: &'static str,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceMap {
    pub namespaces: Vec<String>,
    pub nodes: Vec<MapNode>,
    pub edges: Vec<MapEdge>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DropRow {
    pub reason: String,
    /// Which policy denied, or what was wrong.
    pub detail: String,
    pub count: u64,
    pub recent: u64,
    pub example: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EndpointRow {
    pub workload: String,
    pub method: String,
    pub path: String,
    pub requests: u64,
    pub rate: f64,
    /// Share of requests that failed (5xx, errors) or were denied, 0..1.
    pub error_rate: f64,
    pub errors: u64,
    pub drops: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DnsRow {
    pub workload: String,
    pub name: String,
    pub ips: Vec<String>,
    pub queries: u64,
    pub refused: u64,
    pub rcode: u32,
    /// The `toFQDNs` rules the answers fed (empty: none selects the name, so its IPs opened nothing).
    pub fqdn_rules: Vec<String>,
}

/// Which `toFQDNs` rules of an identity select a name (the live policy; absent for a relay without one).
pub trait FqdnRules {
    fn fqdn_rules(&self, identity: u32, name: &str) -> Vec<String>;
}

/// Does a workload belong to the namespace view? (`None`: all namespaces.)
fn in_view(n: &NodeStat, ns: Option<&str>) -> bool {
    ns.is_none_or(|ns| n.workload.namespace.as_deref() == Some(ns))
}

impl Aggregate {
    /// The map of one namespace (its workloads, plus the peers they talk to elsewhere) or of all.
    pub fn service_map(&self, ns: Option<&str>, now_ns: i64) -> ServiceMap {
        let namespaces: BTreeSet<String> = self
            .nodes
            .values()
            .filter_map(|n| n.workload.namespace.clone())
            .collect();
        let visible = |id: &WorkloadId| self.nodes.get(id).is_some_and(|n| in_view(n, ns));
        let mut edges: Vec<MapEdge> = self
            .edges
            .iter()
            .filter(|((a, b), _)| visible(a) || visible(b))
            .filter(|((a, b), _)| self.nodes.contains_key(a) && self.nodes.contains_key(b))
            .map(|((a, b), e)| edge_row(a, b, e, now_ns))
            .collect();
        edges.sort_by(|x, y| (&x.from, &x.to).cmp(&(&y.from, &y.to)));
        let on_map: BTreeSet<&str> = edges
            .iter()
            .flat_map(|e| [e.from.as_str(), e.to.as_str()])
            .collect();
        let mut nodes: Vec<MapNode> = self
            .nodes
            .iter()
            .filter(|(id, n)| in_view(n, ns) || on_map.contains(id.0.as_str()))
            .map(|(id, n)| MapNode {
                id: id.0.clone(),
                name: n.workload.name.clone(),
                kind: n.workload.kind,
                namespace: n.workload.namespace.clone(),
                pods: n.pods.iter().cloned().collect(),
                identity: n.identity,
            })
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        ServiceMap {
            namespaces: namespaces.into_iter().collect(),
            nodes,
            edges,
        }
    }

    /// Drop reasons, most frequent first.
    pub fn drops(&self, limit: usize, now_ns: i64) -> Vec<DropRow> {
        let mut rows: Vec<DropRow> = self
            .drops
            .iter()
            .map(|((reason, detail), d)| DropRow {
                reason: reason.clone(),
                detail: detail.clone(),
                count: d.count,
                recent: d.recent.sum(now_ns),
                example: d.example.clone(),
            })
            .collect();
        rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.detail.cmp(&b.detail)));
        rows.truncate(limit);
        rows
    }

    /// HTTP endpoints (of workloads in `ns`), by workload then busiest first.
    pub fn http_endpoints(&self, ns: Option<&str>, limit: usize, now_ns: i64) -> Vec<EndpointRow> {
        let mut rows: Vec<EndpointRow> = self
            .endpoints
            .iter()
            .filter(|((w, _, _), _)| self.nodes.get(w).is_none_or(|n| in_view(n, ns)))
            .map(|((w, method, path), e)| {
                let q = e.latencies.quantiles_ms();
                EndpointRow {
                    workload: w.0.clone(),
                    method: method.clone(),
                    path: path.clone(),
                    requests: e.requests,
                    rate: e.recent.sum(now_ns) as f64 / WINDOW_SECS,
                    error_rate: if e.requests == 0 {
                        0.0
                    } else {
                        (e.errors + e.drops) as f64 / e.requests as f64
                    },
                    errors: e.errors,
                    drops: e.drops,
                    p50_ms: q.map(|q| q.0),
                    p99_ms: q.map(|q| q.1),
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            (
                &a.workload,
                std::cmp::Reverse(a.requests),
                &a.path,
                &a.method,
            )
                .cmp(&(
                    &b.workload,
                    std::cmp::Reverse(b.requests),
                    &b.path,
                    &b.method,
                ))
        });
        rows.truncate(limit);
        rows
    }

    /// DNS names resolved by workloads (in `ns`), with the `toFQDNs` rules they fed when `rules` is given.
    pub fn dns_names(
        &self,
        ns: Option<&str>,
        limit: usize,
        rules: Option<&dyn FqdnRules>,
    ) -> Vec<DnsRow> {
        let mut rows: Vec<DnsRow> = self
            .dns
            .iter()
            .filter(|((w, _), _)| self.nodes.get(w).is_none_or(|n| in_view(n, ns)))
            .map(|((w, name), d)| DnsRow {
                workload: w.0.clone(),
                name: name.clone(),
                ips: d.ips.iter().cloned().collect(),
                queries: d.queries,
                refused: d.refused,
                rcode: d.rcode,
                fqdn_rules: rules
                    .map(|r| r.fqdn_rules(d.identity, name))
                    .unwrap_or_default(),
            })
            .collect();
        rows.sort_by(|a, b| (&a.workload, &a.name).cmp(&(&b.workload, &b.name)));
        rows.truncate(limit);
        rows
    }

    /// Entries per table (for tests and the status line).
    pub fn sizes(&self) -> [usize; 5] {
        [
            self.nodes.len(),
            self.edges.len(),
            self.drops.len(),
            self.endpoints.len(),
            self.dns.len(),
        ]
    }

    /// Is this workload kind outside the cluster? (Used by views that group by namespace.)
    pub fn kind_of(&self, id: &str) -> Option<WorkloadKind> {
        self.nodes
            .get(&WorkloadId(id.to_string()))
            .map(|n| n.workload.kind)
    }
}

fn edge_row(a: &WorkloadId, b: &WorkloadId, e: &EdgeStat, now_ns: i64) -> MapEdge {
    let (recent_errors, recent_drops) = (e.recent_errors.sum(now_ns), e.recent_drops.sum(now_ns));
    MapEdge {
        from: a.0.clone(),
        to: b.0.clone(),
        protocols: e.protocols.iter().cloned().collect(),
        ports: e.ports.iter().copied().collect(),
        requests: e.requests,
        errors: e.errors,
        drops: e.drops,
        rate: e.recent_requests.sum(now_ns) as f64 / WINDOW_SECS,
        recent_errors,
        recent_drops,
        verdict: if recent_drops > 0 {
            "dropped"
        } else if recent_errors > 0 {
            "error"
        } else {
            "forwarded"
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::flow::{
        DnsInfo, DropReason as Reason, FlowEndpoint, FlowRecord, HttpInfo, L7Info,
        TrafficDirection, Verdict as V,
    };
    use crate::hubble::{NodeInfo, to_flows};

    const T0: i64 = 1_800_000_000_000_000_000;

    pub(crate) fn ep(ns: &str, pod: &str, ip: &str, port: u16, identity: u32) -> FlowEndpoint {
        let labels = [("app".to_string(), pod.to_string())].into_iter().collect();
        FlowEndpoint::new(format!("{ip}:{port}").parse().unwrap(), identity)
            .with_pod(ns, pod, &labels)
    }

    /// An HTTP request record as the proxy logs it, `ms` after T0.
    pub(crate) fn http(
        from: FlowEndpoint,
        to: FlowEndpoint,
        method: &str,
        path: &str,
        code: u16,
        verdict: V,
        latency_ms: u64,
    ) -> FlowRecord {
        let mut r = FlowRecord::new(verdict, from, to, "HTTP");
        r.l7 = Some(L7Info {
            http: Some(HttpInfo {
                method: method.into(),
                url: format!("http://api{path}"),
                code,
                protocol: "HTTP/1.1".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        r.latency_ns = latency_ms * 1_000_000;
        r.traffic_direction = Some(TrafficDirection::Ingress);
        if verdict == V::Dropped {
            r.drop_reason = Some(Reason::PolicyDenied);
            r.policy =
                "denied: no http rule matched the request (ingress; rules of shop/api-l7)".into();
        } else {
            r.policy = "allowed by CiliumNetworkPolicy shop/api-l7 ingress[0] l7[0]".into();
        }
        r
    }

    pub(crate) fn at(mut r: FlowRecord, ms: i64) -> FlowRecord {
        let t = T0 + ms * 1_000_000;
        r.time = crate::flow::FlowTime(
            std::time::UNIX_EPOCH + std::time::Duration::from_nanos(t as u64),
        );
        r.policy_verdict_event = true;
        r
    }

    pub(crate) fn flows_of(r: &FlowRecord) -> Vec<Flow> {
        to_flows(
            r,
            &NodeInfo {
                name: "node-a".into(),
                labels: vec![],
            },
        )
    }

    fn feed(agg: &mut Aggregate, recs: &[FlowRecord]) {
        for r in recs {
            for f in flows_of(r) {
                agg.ingest(&f);
            }
        }
    }

    fn shop() -> (FlowEndpoint, FlowEndpoint, FlowEndpoint) {
        (
            ep("shop", "frontend", "10.0.5.10", 40000, 300),
            ep("shop", "api", "10.0.5.20", 8080, 301),
            ep("shop", "crawler", "10.0.5.11", 40001, 302),
        )
    }

    #[test]
    fn service_map_counts_requests_errors_and_drops_once_each() {
        let (fe, api, crawler) = shop();
        let mut agg = Aggregate::default();
        feed(
            &mut agg,
            &[
                at(
                    http(
                        fe.clone(),
                        api.clone(),
                        "GET",
                        "/products/42",
                        200,
                        V::Forwarded,
                        3,
                    ),
                    0,
                ),
                at(
                    http(
                        fe.clone(),
                        api.clone(),
                        "GET",
                        "/products/7",
                        503,
                        V::Forwarded,
                        9,
                    ),
                    10,
                ),
                at(
                    http(
                        crawler.clone(),
                        api.clone(),
                        "DELETE",
                        "/products/7",
                        403,
                        V::Dropped,
                        0,
                    ),
                    20,
                ),
            ],
        );
        let map = agg.service_map(Some("shop"), T0 + 1_000_000_000);
        let ids: Vec<&str> = map.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["shop/api", "shop/crawler", "shop/frontend"]);
        assert_eq!(map.edges.len(), 2, "{:#?}", map.edges);
        let fe_api = &map.edges[1];
        assert_eq!(
            (fe_api.from.as_str(), fe_api.to.as_str()),
            ("shop/frontend", "shop/api")
        );
        assert_eq!((fe_api.requests, fe_api.errors, fe_api.drops), (2, 1, 0));
        assert_eq!(fe_api.verdict, "error");
        assert_eq!(fe_api.protocols, ["HTTP"]);
        assert_eq!(fe_api.ports, [8080]);
        assert!((fe_api.rate - 2.0 / WINDOW_SECS).abs() < 1e-9);
        let denied = &map.edges[0];
        assert_eq!(
            (denied.from.as_str(), denied.drops, denied.verdict),
            ("shop/crawler", 1, "dropped")
        );
        // A minute later nothing is recent: the colour goes back to forwarded, totals stay.
        let later = agg.service_map(None, T0 + 61_000_000_000);
        assert!(
            later
                .edges
                .iter()
                .all(|e| e.verdict == "forwarded" && e.rate == 0.0)
        );
        assert_eq!(later.edges[0].drops, 1);
    }

    #[test]
    fn namespace_view_keeps_peers_from_other_namespaces() {
        let (fe, api, _) = shop();
        let ledger = ep("billing", "ledger", "10.0.21.20", 8080, 400);
        let mut agg = Aggregate::default();
        feed(
            &mut agg,
            &[
                at(http(fe.clone(), api, "GET", "/x", 200, V::Forwarded, 1), 0),
                at(
                    http(fe, ledger.clone(), "GET", "/books", 200, V::Forwarded, 1),
                    0,
                ),
                at(
                    http(ledger.clone(), ledger, "GET", "/self", 200, V::Forwarded, 1),
                    0,
                ),
            ],
        );
        let map = agg.service_map(Some("shop"), T0);
        let ids: Vec<&str> = map.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["billing/ledger", "shop/api", "shop/frontend"]);
        assert_eq!(
            map.edges.len(),
            2,
            "billing's own edge is not in shop's view"
        );
        assert_eq!(map.namespaces, ["billing", "shop"]);
    }

    #[test]
    fn drops_are_ranked_by_count() {
        let (fe, api, crawler) = shop();
        let mut agg = Aggregate::default();
        let mut recs = vec![];
        for i in 0..3 {
            recs.push(at(
                http(
                    crawler.clone(),
                    api.clone(),
                    "GET",
                    "/admin",
                    403,
                    V::Dropped,
                    0,
                ),
                i,
            ));
        }
        let mut limit = http(fe, api, "GET", "/x", 431, V::Dropped, 0);
        limit.drop_reason = Some(Reason::LimitExceeded);
        limit.policy = "request headers too large".into();
        recs.push(at(limit, 5));
        feed(&mut agg, &recs);
        let rows = agg.drops(10, T0);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].reason.as_str(), rows[0].count),
            ("POLICY_DENIED", 3)
        );
        assert!(rows[0].detail.contains("rules of shop/api-l7"), "{rows:?}");
        assert!(
            rows[0].example.starts_with("shop/crawler → shop/api"),
            "{rows:?}"
        );
        assert_eq!(
            (rows[1].reason.as_str(), rows[1].detail.as_str()),
            ("DROPPED", "request headers too large")
        );
    }

    #[test]
    fn http_endpoints_template_paths_and_compute_quantiles() {
        let (fe, api, _) = shop();
        let mut agg = Aggregate::default();
        let mut recs: Vec<FlowRecord> = (1..=100)
            .map(|i| {
                at(
                    http(
                        fe.clone(),
                        api.clone(),
                        "GET",
                        &format!("/products/{i}"),
                        200,
                        V::Forwarded,
                        i,
                    ),
                    0,
                )
            })
            .collect();
        recs.push(at(
            http(
                fe.clone(),
                api.clone(),
                "GET",
                "/products/1",
                500,
                V::Forwarded,
                1,
            ),
            0,
        ));
        recs.push(at(
            http(
                fe.clone(),
                api.clone(),
                "DELETE",
                "/products/1",
                403,
                V::Dropped,
                0,
            ),
            0,
        ));
        feed(&mut agg, &recs);
        let rows = agg.http_endpoints(Some("shop"), 10, T0);
        assert_eq!(rows.len(), 2, "{rows:#?}");
        let get = &rows[0];
        assert_eq!(
            (get.method.as_str(), get.path.as_str(), get.requests),
            ("GET", "/products/{id}", 101)
        );
        assert_eq!((get.p50_ms, get.p99_ms), (Some(50.0), Some(99.0)));
        assert!((get.error_rate - 1.0 / 101.0).abs() < 1e-9);
        let del = &rows[1];
        assert_eq!(
            (del.method.as_str(), del.requests, del.drops, del.error_rate),
            ("DELETE", 1, 1, 1.0)
        );
        assert_eq!(del.p50_ms, None, "a denied request has no upstream latency");
        assert!(agg.http_endpoints(Some("billing"), 10, T0).is_empty());
    }

    struct Rules;
    impl FqdnRules for Rules {
        fn fqdn_rules(&self, identity: u32, name: &str) -> Vec<String> {
            if identity == 300 && name == "api.example.com" {
                vec!["CiliumNetworkPolicy shop/egress egress[0]".into()]
            } else {
                vec![]
            }
        }
    }

    fn dns(from: FlowEndpoint, name: &str, ips: &[&str], rcode: u16, verdict: V) -> FlowRecord {
        let resolver: FlowEndpoint = FlowEndpoint::new("10.0.0.53:53".parse().unwrap(), 2);
        let mut r = FlowRecord::new(verdict, from, resolver, "DNS");
        r.l7 = Some(L7Info::default());
        r.dns = Some(DnsInfo {
            query: format!("{name}."),
            qtypes: vec!["A".into()],
            rcode,
            ips: ips.iter().map(|s| s.to_string()).collect(),
            ttl: 30,
            observation_source: if verdict == V::Dropped {
                "proxy-refused"
            } else {
                "proxy"
            }
            .into(),
            ..Default::default()
        });
        if verdict == V::Dropped {
            r.drop_reason = Some(Reason::PolicyDenied);
        }
        r
    }

    #[test]
    fn dns_names_with_ips_and_the_rules_they_fed() {
        let (fe, _, _) = shop();
        let mut agg = Aggregate::default();
        feed(
            &mut agg,
            &[
                at(
                    dns(
                        fe.clone(),
                        "API.example.com",
                        &["192.0.2.1"],
                        0,
                        V::Forwarded,
                    ),
                    0,
                ),
                at(
                    dns(
                        fe.clone(),
                        "api.example.com",
                        &["192.0.2.2"],
                        0,
                        V::Forwarded,
                    ),
                    1,
                ),
                at(dns(fe.clone(), "evil.example.org", &[], 5, V::Dropped), 2),
            ],
        );
        let rows = agg.dns_names(None, 10, Some(&Rules));
        assert_eq!(rows.len(), 2, "{rows:#?}");
        assert_eq!(rows[0].name, "api.example.com");
        assert_eq!(rows[0].ips, ["192.0.2.1", "192.0.2.2"]);
        assert_eq!(rows[0].queries, 2);
        assert_eq!(
            rows[0].fqdn_rules,
            ["CiliumNetworkPolicy shop/egress egress[0]"]
        );
        assert_eq!(
            (rows[1].name.as_str(), rows[1].refused, rows[1].rcode),
            ("evil.example.org", 1, 5)
        );
        assert!(rows[1].fqdn_rules.is_empty());
    }

    #[test]
    fn tables_stay_bounded() {
        let mut agg = Aggregate::new(Limits {
            workloads: 10,
            edges: 5,
            endpoints: 4,
            dns_names: 3,
            drop_reasons: 2,
        });
        let api = ep("shop", "api", "10.0.5.20", 8080, 301);
        for i in 0..200u32 {
            let from = ep(&format!("ns{i}"), "client", "10.0.9.1", 40000, 500 + i);
            let mut r = http(
                from,
                api.clone(),
                "GET",
                &format!("/p{i}"),
                403,
                V::Dropped,
                0,
            );
            r.policy = format!("denied {i}");
            for f in flows_of(&at(r, i64::from(i))) {
                agg.ingest(&f);
            }
        }
        let [nodes, edges, drops, endpoints, dns] = agg.sizes();
        assert!(nodes <= 10 && edges <= 5 && drops <= 2 && endpoints <= 4 && dns <= 3);
        // The newest survive.
        assert!(agg.drops(5, T0).iter().any(|d| d.detail == "denied 199"));
    }

    #[test]
    fn policy_verdict_events_are_not_counted_twice() {
        let (fe, api, _) = shop();
        let r = at(http(fe, api, "GET", "/x", 200, V::Forwarded, 1), 0);
        let flows = flows_of(&r);
        assert_eq!(flows.len(), 3, "policy verdict, request, response");
        let mut agg = Aggregate::default();
        for f in &flows {
            agg.ingest(f);
        }
        let map = agg.service_map(None, T0);
        assert_eq!(map.edges.len(), 1);
        assert_eq!(map.edges[0].requests, 1);
        assert_eq!(agg.flows, 3);
    }
}
