//! Hubble-compatible wire types (generated from proto/ by build.rs) and the conversion of Tollgate's
//! [`FlowRecord`] into a `flow.Flow`. Pure: no I/O. The record itself is owned by `flow`; this module only maps it.

use std::net::IpAddr;

use crate::flow::{DropReason, FlowRecord, TrafficDirection, Verdict};

/// `package flow` (Flow, Endpoint, Layer4/7, FlowFilter, enums).
#[allow(clippy::all, missing_docs, missing_debug_implementations)]
pub mod flow {
    tonic::include_proto!("flow");
}

/// `package observer` (the Observer service and its messages).
#[allow(clippy::all, missing_docs, missing_debug_implementations)]
pub mod observer {
    tonic::include_proto!("observer");
}

/// Hubble's event type for L7 access-log records.
const EVENT_TYPE_L7: i32 = 129;

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
    let b = rfc3339.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| rfc3339.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let nanos = match rfc3339.get(19..)?.strip_prefix('.') {
        Some(frac) => {
            let digits = frac.trim_end_matches('Z');
            let padded = format!("{digits:0<9}");
            padded.get(..9)?.parse::<i32>().ok()?
        }
        None => 0,
    };
    // Days from civil (inverse of flow::rfc3339's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(prost_types::Timestamp {
        seconds: days * 86_400 + hh * 3600 + mm * 60 + ss,
        nanos,
    })
}

fn endpoint(e: &crate::flow::FlowEndpoint) -> flow::Endpoint {
    flow::Endpoint {
        id: 0,
        identity: e.identity,
        namespace: e.namespace.clone().unwrap_or_default(),
        labels: e.labels.clone(),
        pod_name: e.pod.clone().unwrap_or_default(),
        cluster_name: String::new(),
    }
}

/// Maps one record to a Hubble `Flow`.
pub fn to_flow(rec: &FlowRecord, node_name: &str) -> flow::Flow {
    let ip_version = match rec.source.ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => flow::IpVersion::IPv4,
        Ok(IpAddr::V6(_)) => flow::IpVersion::IPv6,
        Err(_) => flow::IpVersion::IpNotUsed,
    };
    let l7 = rec
        .l7
        .as_ref()
        .and_then(|l7| l7.http.as_ref())
        .map(|h| flow::Layer7 {
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
        })
        .or_else(|| {
            rec.l7
                .as_ref()
                .and_then(|l7| l7.kafka.as_ref())
                .map(|k| kafka_layer7(k, rec.latency_ns))
        })
        .or_else(|| rec.dns.as_ref().map(|d| dns_layer7(d, rec.latency_ns)));
    let is_l7 = l7.is_some();
    flow::Flow {
        time: timestamp(&rec.time),
        verdict: verdict(rec.verdict) as i32,
        drop_reason_desc: drop_reason(rec.drop_reason) as i32,
        ip: Some(flow::Ip {
            source: rec.source.ip.clone(),
            destination: rec.destination.ip.clone(),
            ip_version: ip_version as i32,
        }),
        l4: Some(flow::Layer4 {
            protocol: Some(flow::layer4::Protocol::Tcp(flow::Tcp {
                source_port: u32::from(rec.source.port),
                destination_port: u32::from(rec.destination.port),
            })),
        }),
        source: Some(endpoint(&rec.source)),
        destination: Some(endpoint(&rec.destination)),
        r#type: if is_l7 {
            flow::FlowType::L7
        } else {
            flow::FlowType::L3L4
        } as i32,
        node_name: node_name.to_string(),
        source_names: Vec::new(),
        destination_names: Vec::new(),
        l7,
        event_type: is_l7.then_some(flow::CiliumEventType {
            r#type: EVENT_TYPE_L7,
            sub_type: 0,
        }),
        traffic_direction: direction(rec.traffic_direction) as i32,
        is_reply: false,
        proxy_port: 0,
        uuid: rec.uuid.clone(),
        auth_type: match rec.auth_type {
            crate::flow::AuthType::Disabled => flow::AuthType::Disabled,
            crate::flow::AuthType::Spire => flow::AuthType::Spire,
        } as i32,
        tollgate_policy: rec.policy.clone(),
        tollgate_peer_spiffe_id: rec.peer_spiffe_id.clone().unwrap_or_default(),
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
            is_reply: true,
            proxy_port: 1,
            uuid: "u".into(),
            auth_type: 1,
            drop_reason_desc: 133,
            tollgate_policy: String::new(),
            tollgate_peer_spiffe_id: String::new(),
        };
        let nums: Vec<u64> = tags(&f.encode_to_vec()).into_iter().map(|t| t.0).collect();
        assert_eq!(
            nums,
            [
                1, 2, 5, 6, 8, 9, 10, 11, 13, 14, 15, 19, 22, 25, 26, 29, 34, 35
            ]
        );
        let ep = tags(&f.source.unwrap().encode_to_vec());
        assert_eq!(
            ep.iter().map(|t| t.0).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 7]
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
        };
        assert_eq!(
            tags(&req.encode_to_vec())
                .iter()
                .map(|t| t.0)
                .collect::<Vec<_>>(),
            [1, 3, 5, 6, 7, 8, 9]
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
        };
        assert_eq!(
            tags(&filter.encode_to_vec())
                .iter()
                .map(|t| t.0)
                .collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 9, 10, 11, 12, 13, 14, 18, 21, 22, 30]
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
        };
        assert_eq!(
            tags(&st.encode_to_vec())
                .iter()
                .map(|t| t.0)
                .collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
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
}
