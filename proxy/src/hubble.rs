//! Hubble-compatible wire types (generated from proto/ by build.rs) and the conversion of Tollgate's
//! [`FlowRecord`] into a `flow.Flow`. Pure: no I/O. The record itself is owned by `flow`; this module only maps it.

use std::net::IpAddr;

use crate::flow::{DropReason, FlowRecord, TrafficDirection, Verdict};
use crate::policy_attribution::{Attribution, PolicyRef};

/// `package flow` (Flow, Endpoint, Layer4/7, FlowFilter, enums).
#[allow(clippy::all, missing_docs, missing_debug_implementations)]
pub mod flow {
    tonic::include_proto!("flow");
}

/// `package relay` (the node states `GetNodes` reports).
#[allow(clippy::all, missing_docs, missing_debug_implementations)]
pub mod relay {
    tonic::include_proto!("relay");
}

/// `package observer` (the Observer service and its messages).
#[allow(clippy::all, missing_docs, missing_debug_implementations)]
pub mod observer {
    tonic::include_proto!("observer");
}

/// `package grpc.health.v1` (the standard health service `hubble status` checks).
#[allow(clippy::all, missing_docs, missing_debug_implementations)]
pub mod health {
    tonic::include_proto!("grpc.health.v1");
}

/// Cilium monitor event types (`Flow.event_type.type`).
pub mod event_type {
    /// A packet dropped by the datapath (Tollgate: a refused connection).
    pub const DROP: i32 = 1;
    /// A packet traced through the datapath (Tollgate: a spliced or failed connection).
    pub const TRACE: i32 = 4;
    /// The policy verdict for a new connection, naming the deciding policies.
    pub const POLICY_VERDICT: i32 = 5;
    /// An L7 proxy access-log record.
    pub const L7: i32 = 129;
}

pub fn verdict(v: Verdict) -> flow::Verdict {
    match v {
        Verdict::Forwarded => flow::Verdict::Forwarded,
        Verdict::Dropped => flow::Verdict::Dropped,
        Verdict::Error => flow::Verdict::Error,
    }
}

/// Only the policy reasons have Hubble numbers; the rest (limits, parse errors, upstream failures) stay unknown on
/// the wire and are explained in `tollgate_policy`.
pub fn drop_reason(r: Option<DropReason>) -> flow::DropReason {
    match r {
        Some(DropReason::PolicyDenied) => flow::DropReason::PolicyDenied,
        Some(DropReason::PolicyDeny) => flow::DropReason::PolicyDeny,
        Some(DropReason::AuthRequired) => flow::DropReason::AuthRequired,
        _ => flow::DropReason::Unknown,
    }
}

pub fn direction(d: Option<TrafficDirection>) -> flow::TrafficDirection {
    match d {
        Some(TrafficDirection::Ingress) => flow::TrafficDirection::Ingress,
        Some(TrafficDirection::Egress) => flow::TrafficDirection::Egress,
        None => flow::TrafficDirection::Unknown,
    }
}

/// Parses the record's RFC 3339 time (always `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`, see `flow::rfc3339`).
pub fn timestamp(rfc3339: &str) -> Option<prost_types::Timestamp> {
    let (seconds, nanos) = crate::flow::parse_rfc3339(rfc3339)?;
    Some(prost_types::Timestamp { seconds, nanos })
}

/// A flow record's time as Hubble's timestamp.
pub fn flow_time(t: &crate::flow::FlowTime) -> prost_types::Timestamp {
    let (seconds, nanos) = t.unix();
    prost_types::Timestamp { seconds, nanos }
}

fn endpoint(e: &crate::flow::FlowEndpoint) -> flow::Endpoint {
    flow::Endpoint {
        id: 0,
        identity: e.identity,
        namespace: e.namespace.clone().unwrap_or_default(),
        labels: e.labels.clone(),
        pod_name: e.pod.clone().unwrap_or_default(),
        cluster_name: String::new(),
        workloads: Vec::new(),
    }
}

/// What every flow from this node carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// `key=value` strings (Hubble's `node_labels`).
    pub labels: Vec<String>,
}

impl NodeInfo {
    /// A node known only by name (tests, one-off conversions).
    pub fn named(name: &str) -> Self {
        NodeInfo {
            name: name.to_string(),
            labels: Vec::new(),
        }
    }
}

fn ip_version(ip: &str) -> flow::IpVersion {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => flow::IpVersion::IPv4,
        Ok(IpAddr::V6(_)) => flow::IpVersion::IPv6,
        Err(_) => flow::IpVersion::IpNotUsed,
    }
}

/// The L7 part of a record in its combined form (request and outcome in one), or None for L3/L4 records.
fn combined_layer7(rec: &FlowRecord) -> Option<flow::Layer7> {
    let l7 = rec.l7.as_ref();
    if let Some(h) = l7.and_then(|l| l.http.as_ref()) {
        return Some(flow::Layer7 {
            r#type: flow::L7FlowType::Request as i32,
            latency_ns: rec.latency_ns,
            record: Some(flow::layer7::Record::Http(flow::Http {
                code: u32::from(h.code),
                method: h.method.clone(),
                url: h.url.clone(),
                protocol: h.protocol.clone(),
                headers: h
                    .headers
                    .iter()
                    .map(|(k, v)| flow::HttpHeader {
                        key: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
            })),
        });
    }
    if let Some(k) = l7.and_then(|l| l.kafka.as_ref()) {
        return Some(kafka_layer7(k, rec.latency_ns));
    }
    rec.dns.as_ref().map(|d| dns_layer7(d, rec.latency_ns))
}

/// Hubble's `trace_id` from a W3C `traceparent` (`00-<32 hex trace id>-<16 hex parent id>-<flags>`); an
/// all-zero or malformed id gives None.
pub fn trace_id(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    let valid = id.len() == 32
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && id.bytes().any(|b| b != b'0');
    valid.then(|| id.to_ascii_lowercase())
}

/// The record's traceparent: the field the HTTP path sets, else a `traceparent` header a LOG action recorded.
fn trace_context(rec: &FlowRecord) -> Option<flow::TraceContext> {
    let logged = rec.l7.as_ref().and_then(|l| l.http.as_ref()).and_then(|h| {
        h.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
            .map(|(_, v)| v.as_str())
    });
    let id = trace_id(rec.trace_parent.as_deref().or(logged)?)?;
    Some(flow::TraceContext {
        parent: Some(flow::TraceParent { trace_id: id }),
    })
}

fn policies(refs: &[PolicyRef], revision: u64) -> Vec<flow::Policy> {
    refs.iter()
        .map(|p| flow::Policy {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            labels: p.labels(),
            revision,
            kind: p.kind.clone(),
        })
        .collect()
}

fn attribute(f: &mut flow::Flow, rec: &FlowRecord) {
    let a = Attribution::parse(&rec.policy);
    let rev = rec.policy_revision;
    f.ingress_allowed_by = policies(&a.ingress_allowed_by, rev);
    f.egress_allowed_by = policies(&a.egress_allowed_by, rev);
    f.ingress_denied_by = policies(&a.ingress_denied_by, rev);
    f.egress_denied_by = policies(&a.egress_denied_by, rev);
}

/// Maps one record to one Hubble `Flow` carrying everything the record knows (request and outcome together).
/// The Observer sends [`to_flows`] instead, which splits it the way Cilium does.
pub fn to_flow(rec: &FlowRecord, node_name: &str) -> flow::Flow {
    base_flow(rec, &NodeInfo::named(node_name), combined_layer7(rec))
}

/// The fields every flow from `rec` shares, with `l7` as given (None: an L3/L4 flow).
fn base_flow(rec: &FlowRecord, node: &NodeInfo, l7: Option<flow::Layer7>) -> flow::Flow {
    let is_l7 = l7.is_some();
    let drop_reason_desc = drop_reason(rec.drop_reason) as i32;
    let mut f = flow::Flow {
        time: Some(flow_time(&rec.time)),
        verdict: verdict(rec.verdict) as i32,
        drop_reason_desc,
        drop_reason: if rec.verdict == Verdict::Dropped {
            drop_reason_desc as u32
        } else {
            0
        },
        ip: Some(flow::Ip {
            source: rec.source.ip.clone(),
            destination: rec.destination.ip.clone(),
            ip_version: ip_version(&rec.source.ip) as i32,
        }),
        l4: Some(flow::Layer4 {
            protocol: Some(l4_protocol(rec)),
        }),
        source: Some(endpoint(&rec.source)),
        destination: Some(endpoint(&rec.destination)),
        r#type: if is_l7 {
            flow::FlowType::L7
        } else {
            flow::FlowType::L3L4
        } as i32,
        node_name: node.name.clone(),
        node_labels: node.labels.clone(),
        l7,
        // A drop event's subtype is its drop reason, which the hubble CLI prints ("Policy denied DROPPED").
        event_type: Some(match (is_l7, rec.verdict) {
            (true, _) => flow::CiliumEventType {
                r#type: event_type::L7,
                sub_type: 0,
            },
            (false, Verdict::Dropped) => flow::CiliumEventType {
                r#type: event_type::DROP,
                sub_type: drop_reason_desc,
            },
            (false, _) => flow::CiliumEventType {
                r#type: event_type::TRACE,
                sub_type: 0,
            },
        }),
        traffic_direction: direction(rec.traffic_direction) as i32,
        is_reply: Some(false),
        uuid: rec.uuid.to_string(),
        auth_type: match rec.auth_type {
            crate::flow::AuthType::Disabled => flow::AuthType::Disabled,
            crate::flow::AuthType::Spire => flow::AuthType::Spire,
        } as i32,
        trace_context: trace_context(rec),
        tollgate_policy: rec.policy.clone(),
        tollgate_peer_spiffe_id: rec.peer_spiffe_id.clone().unwrap_or_default(),
        ..Default::default()
    };
    attribute(&mut f, rec);
    f.summary = summary(&f);
    f
}

/// The record's transport. DNS records do not say whether the query came over UDP or TCP, so every record is
/// reported as TCP, as before this mapping existed.
fn l4_protocol(rec: &FlowRecord) -> flow::layer4::Protocol {
    flow::layer4::Protocol::Tcp(flow::Tcp {
        source_port: u32::from(rec.source.port),
        destination_port: u32::from(rec.destination.port),
    })
}

/// The flows Cilium emits for what one record describes, oldest first:
/// 1. when `rec.policy_verdict_event` (first record of a connection with this outcome): a policy-verdict event
///    (`Type` L3_L4, event type 5) with the verdict and the `*_allowed_by` / `*_denied_by` policies;
/// 2. an L3/L4 record as itself (event type drop or trace);
/// 3. an HTTP request the upstream answered, or a DNS query the resolver answered: a REQUEST flow and a RESPONSE
///    flow (source and destination swapped, `is_reply` true, latency and status/answer on the response);
/// 4. anything else (denied, failed, Kafka, whose responses the proxy relays undecoded): one REQUEST flow that
///    carries the outcome (status code, rcode, Kafka error code), as Cilium logs a denied request.
///
/// Records stay one per request everywhere else (metrics, JSON log, export), so nothing is counted twice.
pub fn to_flows(rec: &FlowRecord, node: &NodeInfo) -> Vec<flow::Flow> {
    let mut out = Vec::with_capacity(3);
    let requested_at = Some(request_time(rec));
    if rec.policy_verdict_event {
        out.push(policy_verdict_flow(rec, node, requested_at));
    }
    let answered = rec.verdict == Verdict::Forwarded;
    let http = rec.l7.as_ref().and_then(|l| l.http.as_ref());
    match (http, rec.dns.as_ref()) {
        (Some(h), _) if answered && h.code != 0 => {
            let mut req = base_flow(rec, node, combined_layer7(rec));
            req.time = requested_at;
            let resp = http_response(&req, rec);
            strip_http_outcome(&mut req);
            out.extend([req, resp]);
        }
        (None, Some(d)) if answered && rec.l7.as_ref().is_none_or(|l| l.kafka.is_none()) => {
            let mut req = base_flow(rec, node, Some(dns_query_layer7(d)));
            req.time = requested_at;
            let resp = reply_of(
                base_flow(rec, node, combined_layer7(rec)),
                rec,
                "dns-response",
            );
            out.extend([req, resp]);
        }
        _ => {
            let mut f = base_flow(rec, node, combined_layer7(rec));
            f.time = requested_at;
            if let Some(l7) = f.l7.as_mut() {
                l7.r#type = flow::L7FlowType::Request as i32;
                f.summary = summary(&f);
            }
            out.push(f);
        }
    }
    out
}

/// When the request was made: HTTP (and Kafka, TCP) records are stamped when the request arrives; DNS records
/// when the answer leaves, `latency_ns` later.
fn request_time(rec: &FlowRecord) -> prost_types::Timestamp {
    let t = flow_time(&rec.time);
    if rec.dns.is_none() {
        return t;
    }
    shift(&t, -i128::from(rec.latency_ns))
}

fn shift(t: &prost_types::Timestamp, ns: i128) -> prost_types::Timestamp {
    let total = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos) + ns;
    prost_types::Timestamp {
        seconds: i64::try_from(total.div_euclid(1_000_000_000)).unwrap_or(i64::MAX),
        nanos: total.rem_euclid(1_000_000_000) as i32,
    }
}

/// A stable id for a flow derived from a record (the record's own id stays on its request flow), so repeated
/// queries and follow mode give every flow the same uuid.
fn derived_uuid(uuid: &str, what: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut b = [0u8; 16];
    for (i, half) in b.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (uuid, what, i).hash(&mut h);
        half.copy_from_slice(&h.finish().to_be_bytes());
    }
    crate::flow::FlowId(b).to_string()
}

/// Cilium's policy-match type for an allowed connection (`policy-verdict:L3-L4` in Hubble's output).
const POLICY_MATCH_L3_L4: u32 = 2;

fn policy_verdict_flow(
    rec: &FlowRecord,
    node: &NodeInfo,
    time: Option<prost_types::Timestamp>,
) -> flow::Flow {
    let mut f = base_flow(rec, node, None);
    f.time = time;
    f.uuid = derived_uuid(&rec.uuid.to_string(), "policy-verdict");
    f.event_type = Some(flow::CiliumEventType {
        r#type: event_type::POLICY_VERDICT,
        sub_type: 0,
    });
    if rec.verdict == Verdict::Forwarded {
        f.policy_match_type = POLICY_MATCH_L3_L4;
    }
    // The verdict is taken when the connection opens, on its first segment.
    f.summary = "TCP Flags: SYN".into();
    f
}

/// Source and destination swapped (a reply travels back), `is_reply` set, a derived uuid, the summary redone.
fn reply_of(mut f: flow::Flow, rec: &FlowRecord, what: &str) -> flow::Flow {
    std::mem::swap(&mut f.source, &mut f.destination);
    std::mem::swap(&mut f.source_names, &mut f.destination_names);
    if let Some(ip) = f.ip.as_mut() {
        std::mem::swap(&mut ip.source, &mut ip.destination);
    }
    if let Some(flow::layer4::Protocol::Tcp(t)) = f.l4.as_mut().and_then(|l| l.protocol.as_mut()) {
        std::mem::swap(&mut t.source_port, &mut t.destination_port);
    }
    f.is_reply = Some(true);
    f.uuid = derived_uuid(&rec.uuid.to_string(), what);
    if let Some(l7) = f.l7.as_mut() {
        l7.r#type = flow::L7FlowType::Response as i32;
        l7.latency_ns = rec.latency_ns;
    }
    f.summary = summary(&f);
    f
}

/// The HTTP response flow, answered `latency_ns` after the request.
fn http_response(req: &flow::Flow, rec: &FlowRecord) -> flow::Flow {
    let mut resp = reply_of(req.clone(), rec, "http-response");
    resp.time = req
        .time
        .as_ref()
        .map(|t| shift(t, i128::from(rec.latency_ns)));
    resp
}

/// A request flow knows neither the status nor the latency yet.
fn strip_http_outcome(req: &mut flow::Flow) {
    if let Some(l7) = req.l7.as_mut() {
        l7.latency_ns = 0;
        if let Some(flow::layer7::Record::Http(h)) = l7.record.as_mut() {
            h.code = 0;
        }
    }
    req.summary = summary(req);
}

/// The question half of a DNS record.
fn dns_query_layer7(d: &crate::flow::DnsInfo) -> flow::Layer7 {
    flow::Layer7 {
        r#type: flow::L7FlowType::Request as i32,
        latency_ns: 0,
        record: Some(flow::layer7::Record::Dns(flow::Dns {
            query: d.query.clone(),
            qtypes: d.qtypes.clone(),
            observation_source: d.observation_source.clone(),
            ..Default::default()
        })),
    }
}

/// The text Hubble's compact output prints for a flow (`Flow.Summary`), in Cilium's wording:
/// `HTTP/1.1 GET http://api/x`, `HTTP/1.1 200 5ms (GET http://api/x)`, `DNS Query example.com. A`,
/// `DNS Answer "1.2.3.4" TTL: 30 (Proxy example.com. A)`, `Kafka request produce correlation id 3 topic 'x'`;
/// the L4 protocol for L3/L4 flows.
pub fn summary(f: &flow::Flow) -> String {
    use flow::layer7::Record;
    let Some(l7) = f.l7.as_ref() else {
        return match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
            Some(flow::layer4::Protocol::Udp(_)) => "UDP".into(),
            Some(flow::layer4::Protocol::Tcp(_)) => "TCP".into(),
            None => String::new(),
        };
    };
    let response = l7.r#type == flow::L7FlowType::Response as i32;
    match &l7.record {
        Some(Record::Http(h)) if response => format!(
            "{} {} {}ms ({} {})",
            h.protocol,
            h.code,
            l7.latency_ns / 1_000_000,
            h.method,
            h.url
        ),
        Some(Record::Http(h)) => format!("{} {} {}", h.protocol, h.method, h.url),
        Some(Record::Dns(d)) if response => dns_answer_summary(d),
        Some(Record::Dns(d)) => format!("DNS Query {} {}", d.query, d.qtypes.join(",")),
        Some(Record::Kafka(k)) if response => format!(
            "Kafka response {} correlation id {} topic '{}' return code {}",
            k.api_key, k.correlation_id, k.topic, k.error_code
        ),
        Some(Record::Kafka(k)) => format!(
            "Kafka request {} correlation id {} topic '{}'",
            k.api_key, k.correlation_id, k.topic
        ),
        None => String::new(),
    }
}

fn dns_answer_summary(d: &flow::Dns) -> String {
    let answer = match d.rcode {
        0 => format!("\"{}\" TTL: {}", d.ips.join(","), d.ttl),
        rcode => format!("RCode: {}", rcode_name(rcode)),
    };
    let source = if d.observation_source.starts_with("proxy") {
        "Proxy"
    } else {
        "Query"
    };
    format!(
        "DNS Answer {answer} ({source} {} {})",
        d.query,
        d.qtypes.join(",")
    )
}

fn rcode_name(rcode: u32) -> String {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => n.to_string(),
    }
}

/// A Kafka record as Hubble's `Layer7.kafka`: Hubble has one topic field, so several topics are joined with ",".
fn kafka_layer7(k: &crate::flow::KafkaInfo, latency_ns: u64) -> flow::Layer7 {
    flow::Layer7 {
        r#type: flow::L7FlowType::Request as i32,
        latency_ns,
        record: Some(flow::layer7::Record::Kafka(flow::Kafka {
            error_code: i32::from(k.error_code),
            api_version: i32::from(k.api_version),
            api_key: k.api_key.to_lowercase(),
            correlation_id: k.correlation_id,
            topic: k.topics.join(","),
        })),
    }
}

/// A DNS proxy record as Hubble's `Layer7.dns` (a response: the proxy reports the answer it released).
fn dns_layer7(d: &crate::flow::DnsInfo, latency_ns: u64) -> flow::Layer7 {
    flow::Layer7 {
        r#type: flow::L7FlowType::Response as i32,
        latency_ns,
        record: Some(flow::layer7::Record::Dns(flow::Dns {
            query: d.query.clone(),
            ips: d.ips.clone(),
            ttl: d.ttl,
            cnames: d.cnames.clone(),
            observation_source: d.observation_source.clone(),
            rcode: u32::from(d.rcode),
            qtypes: d.qtypes.clone(),
            rrtypes: d.rrtypes.clone(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{FlowEndpoint, HttpInfo, L7Info, rfc3339};
    use std::time::{Duration, UNIX_EPOCH};

    /// (field number, wire type) of every top-level field in an encoded message.
    fn tags(mut b: &[u8]) -> Vec<(u64, u8)> {
        fn varint(b: &mut &[u8]) -> u64 {
            let (mut v, mut shift) = (0u64, 0);
            loop {
                let x = b[0];
                *b = &b[1..];
                v |= u64::from(x & 0x7f) << shift;
                if x & 0x80 == 0 {
                    return v;
                }
                shift += 7;
            }
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            let wt = (key & 7) as u8;
            out.push((key >> 3, wt));
            match wt {
                0 => {
                    varint(&mut b);
                }
                2 => {
                    let n = varint(&mut b) as usize;
                    b = &b[n..];
                }
                1 => b = &b[8..],
                other => panic!("unexpected wire type {other}"),
            }
        }
        out
    }

    /// The wire numbers are Hubble's (its public flow.proto: Flow time=1, verdict=2, IP=5, l4=6, source=8,
    /// ...), checked on encoded bytes so a proto edit cannot silently drift from them.
    #[test]
    fn wire_field_numbers_are_hubbles() {
        use prost::Message;
        let f = flow::Flow {
            time: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 1,
            }),
            verdict: 2,
            ip: Some(flow::Ip {
                source: "a".into(),
                ..Default::default()
            }),
            l4: Some(flow::Layer4 {
                protocol: Some(flow::layer4::Protocol::Udp(flow::Udp {
                    source_port: 1,
                    destination_port: 2,
                })),
            }),
            source: Some(flow::Endpoint {
                id: 1,
                identity: 2,
                namespace: "n".into(),
                labels: vec!["l".into()],
                pod_name: "p".into(),
                cluster_name: "c".into(),
                workloads: vec![flow::Workload {
                    name: "w".into(),
                    kind: "Deployment".into(),
                }],
            }),
            destination: Some(flow::Endpoint::default()),
            r#type: 2,
            node_name: "x".into(),
            source_names: vec!["s".into()],
            destination_names: vec!["d".into()],
            l7: Some(flow::Layer7 {
                r#type: 1,
                latency_ns: 1,
                record: Some(flow::layer7::Record::Kafka(flow::Kafka {
                    error_code: 1,
                    api_version: 1,
                    api_key: "k".into(),
                    correlation_id: 1,
                    topic: "t".into(),
                })),
            }),
            event_type: Some(flow::CiliumEventType {
                r#type: 129,
                sub_type: 0,
            }),
            traffic_direction: 1,
            is_reply: Some(false),
            proxy_port: 1,
            uuid: "u".into(),
            auth_type: 1,
            drop_reason_desc: 133,
            drop_reason: 133,
            node_labels: vec!["k=v".into()],
            reply: true,
            source_service: Some(flow::Service::default()),
            destination_service: Some(flow::Service::default()),
            policy_match_type: 2,
            trace_context: Some(flow::TraceContext::default()),
            summary: "s".into(),
            egress_allowed_by: vec![flow::Policy::default()],
            ingress_allowed_by: vec![flow::Policy::default()],
            egress_denied_by: vec![flow::Policy::default()],
            ingress_denied_by: vec![flow::Policy::default()],
            tollgate_policy: String::new(),
            tollgate_peer_spiffe_id: String::new(),
        };
        let mut got = tags(&f.encode_to_vec());
        got.sort();
        // (number, wire type): 0 varint, 2 length-delimited. is_reply is a message (BoolValue), so 2, not 0.
        let want: Vec<(u64, u8)> = vec![
            (1, 2),
            (2, 0),
            (3, 0),
            (5, 2),
            (6, 2),
            (8, 2),
            (9, 2),
            (10, 0),
            (11, 2),
            (13, 2),
            (14, 2),
            (15, 2),
            (16, 0),
            (19, 2),
            (20, 2),
            (21, 2),
            (22, 0),
            (23, 0),
            (25, 0),
            (26, 2),
            (29, 0),
            (30, 2),
            (34, 2),
            (35, 0),
            (37, 2),
            (21001, 2),
            (21002, 2),
            (21004, 2),
            (21005, 2),
            (100000, 2),
        ];
        assert_eq!(got, want);
        let reply = flow::Flow {
            is_reply: Some(false),
            ..Default::default()
        };
        assert_eq!(
            reply.encode_to_vec(),
            [0xd2, 0x01, 0x00],
            "is_reply=false is still sent (an empty BoolValue), so clients see -> rather than <>"
        );
        let policy = flow::Policy {
            name: "n".into(),
            namespace: "ns".into(),
            labels: vec!["l".into()],
            revision: 3,
            kind: "k".into(),
        };
        assert_eq!(
            tags(&policy.encode_to_vec()),
            [(1, 2), (2, 2), (3, 2), (4, 0), (5, 2)]
        );
        let tc = flow::TraceContext {
            parent: Some(flow::TraceParent {
                trace_id: "t".into(),
            }),
        };
        assert_eq!(tags(&tc.encode_to_vec()), [(1, 2)]);
        assert_eq!(tags(&tc.parent.unwrap().encode_to_vec()), [(1, 2)]);
        let ep = tags(&f.source.unwrap().encode_to_vec());
        assert_eq!(
            ep.iter().map(|t| t.0).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6, 7]
        );
        assert_eq!(tags(&f.l4.unwrap().encode_to_vec())[0].0, 2, "UDP = 2");
        let l7 = tags(&f.l7.unwrap().encode_to_vec());
        assert_eq!(l7.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2, 102]);
        let http = flow::Http {
            code: 1,
            method: "m".into(),
            url: "u".into(),
            protocol: "p".into(),
            headers: vec![flow::HttpHeader {
                key: "k".into(),
                value: "v".into(),
            }],
        };
        assert_eq!(
            tags(&http.encode_to_vec())
                .iter()
                .map(|t| t.0)
                .collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        let dns = flow::Dns {
            query: "q".into(),
            ips: vec!["i".into()],
            ttl: 1,
            cnames: vec!["c".into()],
            observation_source: "o".into(),
            rcode: 1,
            qtypes: vec!["A".into()],
            rrtypes: vec!["A".into()],
        };
        assert_eq!(
            tags(&dns.encode_to_vec())
                .iter()
                .map(|t| t.0)
                .collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
        let req = observer::GetFlowsRequest {
            number: 1,
            follow: true,
            blacklist: vec![flow::FlowFilter::default()],
            whitelist: vec![flow::FlowFilter::default()],
            since: Some(prost_types::Timestamp::default()),
            until: Some(prost_types::Timestamp::default()),
            first: true,
            experimental: Some(observer::get_flows_request::Experimental {
                field_mask: Some(prost_types::FieldMask {
                    paths: vec!["time".into()],
                }),
            }),
        };
        assert_eq!(
            tags(&req.encode_to_vec())
                .iter()
                .map(|t| t.0)
                .collect::<Vec<_>>(),
            [1, 3, 5, 6, 7, 8, 9, 999]
        );
        let s = |v: &str| vec![v.to_string()];
        let filter = flow::FlowFilter {
            source_ip: s("a"),
            source_pod: s("a"),
            destination_ip: s("a"),
            destination_pod: s("a"),
            verdict: vec![1],
            http_status_code: s("a"),
            source_label: s("a"),
            destination_label: s("a"),
            protocol: s("a"),
            source_port: s("a"),
            destination_port: s("a"),
            dns_query: s("a"),
            http_method: s("a"),
            http_path: s("a"),
            traffic_direction: vec![1],
            event_type: vec![flow::EventTypeFilter {
                r#type: 5,
                match_sub_type: false,
                sub_type: 0,
            }],
            reply: vec![true],
            uuid: s("a"),
        };
        assert_eq!(
            tags(&filter.encode_to_vec())
                .iter()
                .map(|t| t.0)
                .collect::<Vec<_>>(),
            [
                1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13, 14, 15, 18, 21, 22, 29, 30
            ]
        );
        let resp = observer::GetFlowsResponse {
            response_types: Some(observer::get_flows_response::ResponseTypes::Flow(
                flow::Flow::default(),
            )),
            node_name: "n".into(),
            time: Some(prost_types::Timestamp::default()),
        };
        assert_eq!(
            tags(&resp.encode_to_vec())
                .iter()
                .map(|t| t.0)
                .collect::<Vec<_>>(),
            [1, 1000, 1001]
        );
        let st = observer::ServerStatusResponse {
            num_flows: 1,
            max_flows: 1,
            seen_flows: 1,
            uptime_ns: 1,
            num_connected_nodes: Some(1),
            num_unavailable_nodes: Some(0),
            unavailable_nodes: s("x"),
            version: "v".into(),
            flows_rate: 1.0,
        };
        // flows_rate is a double (wire type 1); the node counts are UInt32Value messages (2).
        let st_tags = tags(&st.encode_to_vec());
        assert_eq!(
            st_tags,
            [
                (1, 0),
                (2, 0),
                (3, 0),
                (4, 0),
                (5, 2),
                (6, 2),
                (7, 2),
                (8, 2),
                (9, 1)
            ]
        );
        let node = observer::Node {
            name: "n".into(),
            version: "v".into(),
            address: "a".into(),
            state: 1,
            tls: Some(observer::Tls::default()),
            uptime_ns: 1,
            num_flows: 1,
            max_flows: 1,
            seen_flows: 1,
        };
        assert_eq!(
            tags(&node.encode_to_vec()),
            [
                (1, 2),
                (2, 2),
                (3, 2),
                (4, 0),
                (5, 2),
                (6, 0),
                (7, 0),
                (8, 0),
                (9, 0)
            ]
        );
        let ev = observer::GetAgentEventsRequest {
            number: 1,
            first: true,
            follow: true,
            since: Some(prost_types::Timestamp::default()),
            until: Some(prost_types::Timestamp::default()),
        };
        assert_eq!(
            tags(&ev.encode_to_vec())
                .iter()
                .map(|t| t.0)
                .collect::<Vec<_>>(),
            [1, 2, 7, 8, 9]
        );
        let agent = flow::AgentEvent {
            r#type: flow::AgentEventType::PolicyUpdated as i32,
            notification: Some(flow::agent_event::Notification::PolicyUpdate(
                flow::PolicyUpdateNotification {
                    labels: s("l"),
                    revision: 2,
                    rule_count: 1,
                },
            )),
        };
        assert_eq!(tags(&agent.encode_to_vec()), [(1, 0), (102, 2)]);
        assert_eq!(agent.r#type, 3);
    }

    #[test]
    fn timestamps_round_trip_through_rfc3339() {
        for secs in [0u64, 951_782_400, 1_795_820_000, 4_102_444_799] {
            let t = UNIX_EPOCH + Duration::new(secs, 123_456_789);
            let ts = timestamp(&rfc3339(t)).unwrap();
            assert_eq!((ts.seconds, ts.nanos), (secs as i64, 123_456_789), "{secs}");
        }
        assert_eq!(timestamp("garbage"), None);
    }

    #[test]
    fn drop_reasons_map_to_hubble_numbers() {
        assert_eq!(drop_reason(Some(DropReason::PolicyDenied)) as i32, 133);
        assert_eq!(drop_reason(Some(DropReason::PolicyDeny)) as i32, 181);
        assert_eq!(drop_reason(Some(DropReason::AuthRequired)) as i32, 189);
        assert_eq!(drop_reason(Some(DropReason::InvalidRequest)) as i32, 0);
    }

    #[test]
    fn kafka_record_becomes_hubble_kafka() {
        let a = "10.0.3.10:40000".parse().unwrap();
        let b = "10.0.3.20:9092".parse().unwrap();
        let mut rec = FlowRecord::new(
            Verdict::Dropped,
            FlowEndpoint::new(a, 256),
            FlowEndpoint::new(b, 257),
            "Kafka",
        );
        rec.l7 = Some(L7Info {
            kafka: Some(crate::flow::KafkaInfo {
                api_key: "Produce".into(),
                api_version: 9,
                correlation_id: 4,
                client_id: Some("p1".into()),
                topics: vec!["orders".into(), "payments".into()],
                error_code: 29,
            }),
            ..Default::default()
        });
        let f = to_flow(&rec, "n");
        assert_eq!(f.r#type, flow::FlowType::L7 as i32);
        let Some(flow::layer7::Record::Kafka(k)) = f.l7.unwrap().record else {
            panic!("no kafka record");
        };
        assert_eq!(
            (
                k.api_key.as_str(),
                k.api_version,
                k.correlation_id,
                k.error_code
            ),
            ("produce", 9, 4, 29)
        );
        assert_eq!(k.topic, "orders,payments");
    }

    #[test]
    fn http_record_becomes_l7_flow() {
        let a = "10.0.0.1:40000".parse().unwrap();
        let b = "10.0.0.2:80".parse().unwrap();
        let labels = [("app".to_string(), "api".to_string())].into();
        let mut rec = FlowRecord::new(
            Verdict::Dropped,
            FlowEndpoint::new(a, 256).with_pod("default", "client", &labels),
            FlowEndpoint::new(b, 257),
            "HTTP",
        );
        rec.drop_reason = Some(DropReason::PolicyDenied);
        rec.traffic_direction = Some(TrafficDirection::Ingress);
        rec.latency_ns = 42;
        rec.policy = "no rule".into();
        rec.l7 = Some(L7Info {
            http: Some(HttpInfo {
                method: "GET".into(),
                url: "/x".into(),
                code: 403,
                protocol: "HTTP/1.1".into(),
                ..Default::default()
            }),
            kafka: None,
        });
        let f = to_flow(&rec, "node-1");
        assert_eq!(f.verdict, flow::Verdict::Dropped as i32);
        assert_eq!(f.drop_reason_desc, 133);
        assert_eq!(f.r#type, flow::FlowType::L7 as i32);
        assert_eq!(f.event_type.unwrap().r#type, 129);
        assert_eq!(f.traffic_direction, 1);
        assert_eq!(f.source.as_ref().unwrap().labels, vec!["k8s:app=api"]);
        assert_eq!(f.source.unwrap().pod_name, "client");
        assert_eq!(f.ip.unwrap().ip_version, flow::IpVersion::IPv4 as i32);
        let Some(flow::layer7::Record::Http(h)) = f.l7.as_ref().unwrap().record.clone() else {
            panic!("no http record");
        };
        assert_eq!(
            (h.code, h.method.as_str(), h.url.as_str()),
            (403, "GET", "/x")
        );
        assert_eq!(f.l7.unwrap().latency_ns, 42);
        assert_eq!(f.tollgate_policy, "no rule");
        let Some(flow::layer4::Protocol::Tcp(t)) = f.l4.unwrap().protocol else {
            panic!("no tcp");
        };
        assert_eq!((t.source_port, t.destination_port), (40000, 80));
    }

    fn http_record(verdict: Verdict, code: u16) -> FlowRecord {
        let labels = [("app".to_string(), "portal".to_string())].into();
        let mut rec = FlowRecord::new(
            verdict,
            FlowEndpoint::new("10.0.0.1:40000".parse().unwrap(), 256)
                .with_pod("billing", "portal", &labels),
            FlowEndpoint::new("10.0.0.2:8080".parse().unwrap(), 257),
            "HTTP",
        );
        rec.time = crate::flow::FlowTime::parse("2026-11-23T00:01:02.000000000Z").unwrap();
        rec.latency_ns = 5_250_000;
        rec.traffic_direction = Some(TrafficDirection::Ingress);
        rec.policy_revision = 3;
        rec.l7 = Some(L7Info {
            http: Some(HttpInfo {
                method: "GET".into(),
                url: "http://ledger:8080/x".into(),
                code,
                protocol: "HTTP/1.1".into(),
                ..Default::default()
            }),
            kafka: None,
        });
        rec
    }

    fn node() -> NodeInfo {
        NodeInfo {
            name: "node-a".into(),
            labels: vec!["kubernetes.io/hostname=node-a".into()],
        }
    }

    #[test]
    fn forwarded_http_is_a_policy_verdict_a_request_and_a_response() {
        let mut rec = http_record(Verdict::Forwarded, 200);
        rec.policy = "allowed by CiliumNetworkPolicy billing/ledger-api ingress[0] l7[1]".into();
        rec.policy_verdict_event = true;
        rec.trace_parent = Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01".into());
        let flows = to_flows(&rec, &node());
        assert_eq!(flows.len(), 3, "{flows:#?}");
        let (pv, req, resp) = (&flows[0], &flows[1], &flows[2]);

        assert_eq!(pv.event_type.as_ref().unwrap().r#type, 5);
        assert_eq!(pv.r#type, flow::FlowType::L3L4 as i32);
        assert!(pv.l7.is_none());
        assert_eq!(pv.is_reply, Some(false));
        assert_eq!(pv.policy_match_type, 2);
        let by = &pv.ingress_allowed_by;
        assert_eq!(by.len(), 1);
        assert_eq!(
            (
                by[0].name.as_str(),
                by[0].namespace.as_str(),
                by[0].kind.as_str(),
                by[0].revision
            ),
            ("ledger-api", "billing", "CiliumNetworkPolicy", 3)
        );
        assert!(
            by[0]
                .labels
                .contains(&"k8s:io.cilium.k8s.policy.name=ledger-api".to_string())
        );
        assert_eq!(pv.node_labels, ["kubernetes.io/hostname=node-a"]);

        assert_eq!(
            req.uuid,
            rec.uuid.to_string(),
            "the request keeps the record's id"
        );
        assert_eq!(req.event_type.as_ref().unwrap().r#type, 129);
        assert_eq!(req.is_reply, Some(false));
        let l7 = req.l7.as_ref().unwrap();
        assert_eq!(
            (l7.r#type, l7.latency_ns),
            (flow::L7FlowType::Request as i32, 0)
        );
        assert_eq!(req.summary, "HTTP/1.1 GET http://ledger:8080/x");
        assert_eq!(
            req.trace_context
                .as_ref()
                .unwrap()
                .parent
                .as_ref()
                .unwrap()
                .trace_id,
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );

        assert_eq!(resp.is_reply, Some(true));
        let l7 = resp.l7.as_ref().unwrap();
        assert_eq!(
            (l7.r#type, l7.latency_ns),
            (flow::L7FlowType::Response as i32, 5_250_000)
        );
        assert_eq!(resp.summary, "HTTP/1.1 200 5ms (GET http://ledger:8080/x)");
        assert_eq!(
            resp.source.as_ref().unwrap().identity,
            257,
            "a reply comes from the server"
        );
        assert_eq!(resp.ip.as_ref().unwrap().source, "10.0.0.2");
        let Some(flow::layer4::Protocol::Tcp(t)) = resp.l4.as_ref().unwrap().protocol else {
            panic!("tcp");
        };
        assert_eq!((t.source_port, t.destination_port), (8080, 40000));
        assert_eq!(
            resp.time.as_ref().unwrap().nanos - req.time.as_ref().unwrap().nanos,
            5_250_000
        );
        let ids: std::collections::HashSet<_> = flows.iter().map(|f| f.uuid.clone()).collect();
        assert_eq!(ids.len(), 3, "every flow has its own id");
        assert_eq!(
            to_flows(&rec, &node()),
            flows,
            "the same record always gives the same flows"
        );
    }

    #[test]
    fn denied_http_is_one_request_with_its_outcome() {
        let mut rec = http_record(Verdict::Dropped, 403);
        rec.drop_reason = Some(DropReason::PolicyDenied);
        let flows = to_flows(&rec, &node());
        assert_eq!(flows.len(), 1, "no policy-verdict flag: no event");
        let f = &flows[0];
        assert_eq!(
            (f.verdict, f.drop_reason, f.drop_reason_desc),
            (2, 133, 133)
        );
        assert_eq!(f.summary, "HTTP/1.1 GET http://ledger:8080/x");
        assert_eq!(
            f.l7.as_ref().unwrap().r#type,
            flow::L7FlowType::Request as i32
        );
        let Some(flow::layer7::Record::Http(h)) = &f.l7.as_ref().unwrap().record else {
            panic!("http");
        };
        assert_eq!(
            h.code, 403,
            "the status the proxy answered stays on the one record"
        );
    }

    #[test]
    fn answered_dns_is_a_query_and_an_answer() {
        let mut rec = FlowRecord::new(
            Verdict::Forwarded,
            FlowEndpoint::new("10.0.0.1:5353".parse().unwrap(), 256),
            FlowEndpoint::new("10.0.0.53:53".parse().unwrap(), 2),
            "DNS",
        );
        rec.time = crate::flow::FlowTime::parse("2026-11-23T00:01:02.010000000Z").unwrap();
        rec.latency_ns = 10_000_000;
        rec.l7 = Some(L7Info::default());
        rec.dns = Some(crate::flow::DnsInfo {
            query: "example.com.".into(),
            qtypes: vec!["A".into()],
            ips: vec!["1.2.3.4".into()],
            ttl: 30,
            rrtypes: vec!["A".into()],
            observation_source: "proxy".into(),
            ..Default::default()
        });
        let flows = to_flows(&rec, &node());
        assert_eq!(flows.len(), 2);
        assert_eq!(flows[0].summary, "DNS Query example.com. A");
        assert_eq!(
            flows[0].time.as_ref().unwrap().nanos,
            0,
            "asked latency_ns before the answer"
        );
        let Some(flow::layer7::Record::Dns(q)) = &flows[0].l7.as_ref().unwrap().record else {
            panic!("dns");
        };
        assert!(q.ips.is_empty() && q.ttl == 0, "the query knows no answer");
        assert_eq!(
            flows[1].summary,
            "DNS Answer \"1.2.3.4\" TTL: 30 (Proxy example.com. A)"
        );
        assert_eq!(flows[1].is_reply, Some(true));
        let mut refused = rec.clone();
        refused.verdict = Verdict::Dropped;
        refused.drop_reason = Some(DropReason::PolicyDenied);
        refused.dns.as_mut().unwrap().rcode = 5;
        let f = to_flows(&refused, &node());
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].l7.as_ref().unwrap().r#type,
            flow::L7FlowType::Request as i32
        );
        let mut answer = f[0].clone();
        answer.l7.as_mut().unwrap().r#type = flow::L7FlowType::Response as i32;
        assert_eq!(
            summary(&answer),
            "DNS Answer RCode: REFUSED (Proxy example.com. A)"
        );
    }

    #[test]
    fn kafka_and_l4_summaries_and_event_types() {
        let mut rec = http_record(Verdict::Dropped, 0);
        rec.l7 = Some(L7Info {
            kafka: Some(crate::flow::KafkaInfo {
                api_key: "Produce".into(),
                correlation_id: 3,
                topics: vec!["orders".into()],
                error_code: 29,
                ..Default::default()
            }),
            ..Default::default()
        });
        let f = &to_flows(&rec, &node())[0];
        assert_eq!(
            f.summary,
            "Kafka request produce correlation id 3 topic 'orders'"
        );
        let mut l4 = http_record(Verdict::Dropped, 0);
        l4.l7 = None;
        l4.drop_reason = Some(DropReason::PolicyDenied);
        let f = &to_flows(&l4, &node())[0];
        assert_eq!((f.r#type, f.event_type.as_ref().unwrap().r#type), (1, 1));
        assert_eq!(
            f.event_type.as_ref().unwrap().sub_type,
            flow::DropReason::PolicyDenied as i32,
            "a drop event's subtype is its reason (the hubble CLI prints it)"
        );
        assert_eq!(f.summary, "TCP");
        l4.verdict = Verdict::Forwarded;
        assert_eq!(
            to_flows(&l4, &node())[0]
                .event_type
                .as_ref()
                .unwrap()
                .r#type,
            4
        );
    }

    #[test]
    fn trace_ids_come_from_traceparent() {
        assert_eq!(
            trace_id("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        for bad in [
            "",
            "00-xyz-1-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
        }
        let mut rec = http_record(Verdict::Forwarded, 200);
        rec.l7.as_mut().unwrap().http.as_mut().unwrap().headers = vec![(
            "Traceparent".into(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        )];
        assert!(
            to_flow(&rec, "n").trace_context.is_some(),
            "a logged traceparent header counts"
        );
    }
}
