//! `GetFlowsRequest.experimental.field_mask` (`hubble observe --experimental-field-mask time,verdict,l7.http.url`):
//! only the named `Flow` fields are sent. Pure. The mask is applied to the encoded flow, field by field number,
//! with a name table per message, so it needs no reflection and stays right for every field the table names.
//!
//! Paths use the proto field names (`IP.source`, `l7.http.url`, `source.pod_name`, `Summary`). A name Cilium's Flow
//! has but Tollgate never fills (`ethernet`, `tunnel`, ...) is accepted and selects nothing, so Hubble's own
//! default masks work; any other name is refused with an error naming it.

use std::collections::BTreeMap;

use prost::Message;
use prost::bytes::Buf;
use prost::encoding::{decode_varint, encode_varint};

use crate::hubble::flow::Flow;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FieldMaskError {
    #[error(
        "field mask path {path:?}: {name:?} is not a field of {message}; use proto field names such as time, verdict, source.pod_name, l7.http.url"
    )]
    UnknownField {
        path: String,
        name: String,
        message: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    Flow,
    Endpoint,
    Workload,
    Ip,
    Layer4,
    Ports,
    Layer7,
    Http,
    HttpHeader,
    Dns,
    Kafka,
    EventType,
    Service,
    Policy,
    TraceContext,
    TraceParent,
}

type Field = (&'static str, u32, Option<Msg>);

fn fields(m: Msg) -> &'static [Field] {
    use Msg::*;
    match m {
        Flow => &[
            ("time", 1, None),
            ("uuid", 34, None),
            ("verdict", 2, None),
            ("drop_reason", 3, None),
            ("auth_type", 35, None),
            ("IP", 5, Some(Ip)),
            ("l4", 6, Some(Layer4)),
            ("source", 8, Some(Endpoint)),
            ("destination", 9, Some(Endpoint)),
            ("Type", 10, None),
            ("node_name", 11, None),
            ("node_labels", 37, None),
            ("source_names", 13, None),
            ("destination_names", 14, None),
            ("l7", 15, Some(Layer7)),
            ("reply", 16, None),
            ("event_type", 19, Some(EventType)),
            ("source_service", 20, Some(Service)),
            ("destination_service", 21, Some(Service)),
            ("traffic_direction", 22, None),
            ("policy_match_type", 23, None),
            ("drop_reason_desc", 25, None),
            ("is_reply", 26, None),
            ("proxy_port", 29, None),
            ("trace_context", 30, Some(TraceContext)),
            ("Summary", 100000, None),
            ("egress_allowed_by", 21001, Some(Policy)),
            ("ingress_allowed_by", 21002, Some(Policy)),
            ("egress_denied_by", 21004, Some(Policy)),
            ("ingress_denied_by", 21005, Some(Policy)),
            ("tollgate_policy", 10001, None),
            ("tollgate_peer_spiffe_id", 10002, None),
        ],
        Endpoint => &[
            ("ID", 1, None),
            ("identity", 2, None),
            ("namespace", 3, None),
            ("labels", 4, None),
            ("pod_name", 5, None),
            ("workloads", 6, Some(Workload)),
            ("cluster_name", 7, None),
        ],
        Workload => &[("name", 1, None), ("kind", 2, None)],
        Ip => &[
            ("source", 1, None),
            ("destination", 2, None),
            ("ipVersion", 3, None),
        ],
        Layer4 => &[("TCP", 1, Some(Ports)), ("UDP", 2, Some(Ports))],
        Ports => &[("source_port", 1, None), ("destination_port", 2, None)],
        Layer7 => &[
            ("type", 1, None),
            ("latency_ns", 2, None),
            ("dns", 100, Some(Dns)),
            ("http", 101, Some(Http)),
            ("kafka", 102, Some(Kafka)),
        ],
        Http => &[
            ("code", 1, None),
            ("method", 2, None),
            ("url", 3, None),
            ("protocol", 4, None),
            ("headers", 5, Some(HttpHeader)),
        ],
        HttpHeader => &[("key", 1, None), ("value", 2, None)],
        Dns => &[
            ("query", 1, None),
            ("ips", 2, None),
            ("ttl", 3, None),
            ("cnames", 4, None),
            ("observation_source", 5, None),
            ("rcode", 6, None),
            ("qtypes", 7, None),
            ("rrtypes", 8, None),
        ],
        Kafka => &[
            ("error_code", 1, None),
            ("api_version", 2, None),
            ("api_key", 3, None),
            ("correlation_id", 4, None),
            ("topic", 5, None),
        ],
        EventType => &[("type", 1, None), ("sub_type", 2, None)],
        Service => &[("name", 1, None), ("namespace", 2, None)],
        Policy => &[
            ("name", 1, None),
            ("namespace", 2, None),
            ("labels", 3, None),
            ("revision", 4, None),
            ("kind", 5, None),
        ],
        TraceContext => &[("parent", 1, Some(TraceParent))],
        TraceParent => &[("trace_id", 1, None)],
    }
}

/// Top-level fields of Cilium's Flow that Tollgate never fills: accepted in a mask, selecting nothing.
const ABSENT_FLOW_FIELDS: &[&str] = &[
    "ethernet",
    "tunnel",
    "trace_observation_point",
    "trace_reason",
    "file",
    "interface",
    "sock_xlation_point",
    "socket_cookie",
    "cgroup_id",
    "debug_capture_point",
    "extensions",
    "emitter",
    "aggregate",
    "policy_log",
];

/// What a mask keeps of one message: whole fields, or parts of sub-messages.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Keep {
    All,
    Some(BTreeMap<u32, Keep>),
}

/// A compiled field mask over `flow.Flow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldMask {
    root: BTreeMap<u32, Keep>,
}

impl FieldMask {
    /// Compiles the mask; `None` when it has no paths (everything is sent).
    pub fn compile(paths: &[String]) -> Result<Option<Self>, FieldMaskError> {
        let mut root = BTreeMap::new();
        for path in paths.iter().filter(|p| !p.is_empty()) {
            add_path(&mut root, path)?;
        }
        Ok((!paths.iter().all(String::is_empty)).then_some(FieldMask { root }))
    }

    /// The flow with only the masked fields.
    pub fn apply(&self, flow: &Flow) -> Flow {
        let bytes = flow.encode_to_vec();
        Flow::decode(prune(&bytes, &self.root).as_slice()).unwrap_or_default()
    }
}

fn add_path(root: &mut BTreeMap<u32, Keep>, path: &str) -> Result<(), FieldMaskError> {
    let mut node = root;
    let mut msg = Msg::Flow;
    let names: Vec<&str> = path.split('.').collect();
    for (i, name) in names.iter().enumerate() {
        let Some(&(_, number, sub)) = fields(msg).iter().find(|f| f.0 == *name) else {
            if msg == Msg::Flow && i == 0 && ABSENT_FLOW_FIELDS.contains(name) {
                return Ok(());
            }
            return Err(FieldMaskError::UnknownField {
                path: path.to_string(),
                name: name.to_string(),
                message: message_name(msg),
            });
        };
        let last = i + 1 == names.len();
        let entry = node
            .entry(number)
            .or_insert_with(|| Keep::Some(BTreeMap::new()));
        match (last, sub) {
            (true, _) => {
                *entry = Keep::All;
                return Ok(());
            }
            (false, None) => {
                return Err(FieldMaskError::UnknownField {
                    path: path.to_string(),
                    name: names[i + 1].to_string(),
                    message: "a scalar field",
                });
            }
            (false, Some(m)) => match entry {
                // A parent already kept whole covers this path.
                Keep::All => return Ok(()),
                Keep::Some(children) => {
                    node = children;
                    msg = m;
                }
            },
        }
    }
    Ok(())
}

fn message_name(m: Msg) -> &'static str {
    match m {
        Msg::Flow => "Flow",
        Msg::Endpoint => "Endpoint",
        Msg::Workload => "Workload",
        Msg::Ip => "IP",
        Msg::Layer4 => "Layer4",
        Msg::Ports => "TCP/UDP",
        Msg::Layer7 => "Layer7",
        Msg::Http => "HTTP",
        Msg::HttpHeader => "HTTPHeader",
        Msg::Dns => "DNS",
        Msg::Kafka => "Kafka",
        Msg::EventType => "CiliumEventType",
        Msg::Service => "Service",
        Msg::Policy => "Policy",
        Msg::TraceContext => "TraceContext",
        Msg::TraceParent => "TraceParent",
    }
}

/// Copies the fields `keep` names from an encoded message. The input is our own encoding, so a malformed tail
/// (impossible in practice) just ends the copy.
fn prune(mut buf: &[u8], keep: &BTreeMap<u32, Keep>) -> Vec<u8> {
    let mut out = Vec::new();
    while buf.has_remaining() {
        let start = buf;
        let Ok(key) = decode_varint(&mut buf) else {
            break;
        };
        let (number, wire_type) = ((key >> 3) as u32, key & 7);
        let payload = match wire_type {
            0 => decode_varint(&mut buf).map(|_| None).ok(),
            1 if buf.len() >= 8 => {
                buf.advance(8);
                Some(None)
            }
            5 if buf.len() >= 4 => {
                buf.advance(4);
                Some(None)
            }
            2 => decode_varint(&mut buf).ok().and_then(|n| {
                let n = usize::try_from(n).ok().filter(|n| *n <= buf.len())?;
                let (p, rest) = buf.split_at(n);
                buf = rest;
                Some(Some(p))
            }),
            _ => None,
        };
        let Some(payload) = payload else { break };
        match (keep.get(&number), payload) {
            (Some(Keep::All), _) => out.extend_from_slice(&start[..start.len() - buf.len()]),
            (Some(Keep::Some(children)), Some(p)) => {
                let inner = prune(p, children);
                encode_varint(key, &mut out);
                encode_varint(inner.len() as u64, &mut out);
                out.extend_from_slice(&inner);
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hubble::flow::{Endpoint, Http, Ip, Layer7, layer7};

    fn sample() -> Flow {
        Flow {
            time: Some(prost_types::Timestamp {
                seconds: 5,
                nanos: 0,
            }),
            verdict: 2,
            ip: Some(Ip {
                source: "10.0.0.1".into(),
                destination: "10.0.0.2".into(),
                ip_version: 1,
            }),
            source: Some(Endpoint {
                identity: 7,
                namespace: "prod".into(),
                pod_name: "web".into(),
                labels: vec!["k8s:app=web".into()],
                ..Default::default()
            }),
            l7: Some(Layer7 {
                r#type: 1,
                latency_ns: 9,
                record: Some(layer7::Record::Http(Http {
                    code: 200,
                    method: "GET".into(),
                    url: "http://a/x".into(),
                    ..Default::default()
                })),
            }),
            is_reply: Some(false),
            summary: "HTTP/1.1 GET http://a/x".into(),
            uuid: "u".into(),
            ..Default::default()
        }
    }

    fn mask(paths: &[&str]) -> FieldMask {
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        FieldMask::compile(&paths).unwrap().unwrap()
    }

    #[test]
    fn keeps_only_the_named_fields_at_any_depth() {
        let got = mask(&[
            "time",
            "source.pod_name",
            "l7.http.url",
            "is_reply",
            "Summary",
        ])
        .apply(&sample());
        let want = Flow {
            time: sample().time,
            source: Some(Endpoint {
                pod_name: "web".into(),
                ..Default::default()
            }),
            l7: Some(Layer7 {
                record: Some(layer7::Record::Http(Http {
                    url: "http://a/x".into(),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            is_reply: Some(false),
            summary: "HTTP/1.1 GET http://a/x".into(),
            ..Default::default()
        };
        assert_eq!(got, want);
        let whole = mask(&["IP", "IP.source", "verdict"]).apply(&sample());
        assert_eq!(whole.ip, sample().ip, "a whole parent wins over its parts");
        assert_eq!((whole.verdict, whole.uuid.as_str()), (2, ""));
    }

    #[test]
    fn cilium_only_names_select_nothing_and_typos_are_refused() {
        let m = mask(&["ethernet", "verdict"]).apply(&sample());
        assert_eq!(
            m,
            Flow {
                verdict: 2,
                ..Default::default()
            }
        );
        let e = FieldMask::compile(&["source.podname".to_string()]).unwrap_err();
        assert!(
            e.to_string()
                .contains("\"podname\" is not a field of Endpoint"),
            "{e}"
        );
        let e = FieldMask::compile(&["verdict.x".to_string()]).unwrap_err();
        assert!(e.to_string().contains("verdict.x"), "{e}");
        assert_eq!(FieldMask::compile(&[]).unwrap(), None);
    }
}
