//! The pure Kafka decision: from the policy snapshot, the connection's addresses and one decoded request, to
//! forward or answer locally with which error code. `handler.rs` carries it out.

use std::net::SocketAddr;

use crate::policy_adapter::KafkaRequest as PolicyRequest;
use kafka_protocol::messages::ApiKey;

use super::request::{HeadView, KafkaRequest, TopicRef};
use super::response::code;
use crate::decision::{self, Downstream, drop_reason_of};
use crate::flow::{DropReason, TrafficDirection};
use crate::kafka_state::topic_ids::{IdLookup, TopicIds};
use crate::policy_adapter::{Decision, L7Kind};
use crate::policy_source::PolicySnapshot;

/// What to do with one Kafka request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KafkaDecision {
    Forward {
        reason: String,
        direction: Option<TrafficDirection>,
        /// Metadata responses to this request must be filtered to the topics the client may see.
        filter_metadata: bool,
    },
    /// Answer locally with `error_code` on every topic/partition; never forward.
    Deny {
        reason: String,
        drop_reason: DropReason,
        direction: Option<TrafficDirection>,
        error_code: i16,
    },
}

/// A topic no rule can name: stands for topics the proxy cannot read, so only topic-free rules allow them.
const UNREADABLE_TOPIC: &str = "";

/// Why a request's topic ids could not all be named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownIds {
    /// Every id was named by this broker (or the request names topics by name).
    #[default]
    None,
    /// An id no broker has announced yet: the client is ahead of the proxy.
    NotLearned,
    /// An id only another destination announced: never trusted here (a tenant's own broker could have made it up).
    FromOtherBroker,
}

/// Topic names for the flow record and the policy check, ids resolved with the names `broker` itself gave them.
/// Unknown ids and unlisted topics become `UNREADABLE_TOPIC` for the check; the record shows the id.
pub fn topic_names(
    req: &KafkaRequest,
    ids: &TopicIds,
    broker: SocketAddr,
) -> (Vec<String>, Vec<String>, UnknownIds) {
    let mut for_policy = Vec::with_capacity(req.topics.len());
    let mut for_record = Vec::with_capacity(req.topics.len());
    let mut unknown = UnknownIds::None;
    for t in &req.topics {
        match t {
            TopicRef::Name(n) => {
                for_policy.push(n.clone());
                for_record.push(n.clone());
            }
            TopicRef::Id(id) => match ids.lookup(broker, id) {
                IdLookup::Name(n) => {
                    for_policy.push(n.clone());
                    for_record.push(n);
                }
                miss => {
                    unknown = match (unknown, miss) {
                        (_, IdLookup::LearnedFromOtherBroker)
                        | (UnknownIds::FromOtherBroker, _) => UnknownIds::FromOtherBroker,
                        _ => UnknownIds::NotLearned,
                    };
                    for_policy.push(UNREADABLE_TOPIC.to_string());
                    for_record.push(format!("id:{id}"));
                }
            },
            TopicRef::Unlisted => {
                for_policy.push(UNREADABLE_TOPIC.to_string());
                for_record.push("(unlisted)".to_string());
            }
        }
    }
    (for_policy, for_record, unknown)
}

/// Decides one request against the snapshot current when it arrived. The connection verdict is re-evaluated,
/// so a reload that denies the connection or drops its Kafka rules applies to open connections.
///
/// Metadata requests are decided on their header alone (may this client send Metadata at all?); the topics in
/// the response are then filtered one by one (`topic_visible`), so a client asking about an allowed and a
/// denied topic gets data for the first and TOPIC_AUTHORIZATION_FAILED for the second, as from a broker with
/// ACLs. Every other request naming several topics is allowed only if every topic is.
pub fn decide(
    snap: &PolicySnapshot,
    client: &Downstream,
    dst: SocketAddr,
    req: HeadView<'_>,
    policy_topics: &[String],
    unknown_id: UnknownIds,
) -> KafkaDecision {
    let (flow, conn) = decision::connection_verdict(snap, client, dst);
    let direction = crate::policy_adapter::direction(&conn.reason);
    if decision::needs_auth(&conn, client) {
        return KafkaDecision::Deny {
            reason: decision::auth_required_reason(&conn),
            drop_reason: DropReason::AuthRequired,
            direction,
            error_code: code::TOPIC_AUTHORIZATION_FAILED,
        };
    }
    match (conn.decision, conn.l7) {
        (Decision::Deny, _) => KafkaDecision::Deny {
            reason: conn.reason.to_string(),
            drop_reason: drop_reason_of(&conn.reason),
            direction,
            error_code: code::TOPIC_AUTHORIZATION_FAILED,
        },
        (Decision::Allow, None) => KafkaDecision::Forward {
            reason: conn.reason.to_string(),
            direction,
            filter_metadata: false,
        },
        (Decision::Allow, Some(L7Kind::Kafka)) => {
            let is_metadata = req.api_key == ApiKey::Metadata;
            let names: Vec<&str> = if is_metadata {
                Vec::new()
            } else {
                policy_topics.iter().map(String::as_str).collect()
            };
            let v = snap.engine.kafka(
                &flow,
                &PolicyRequest {
                    api_key: req.api_key as i16,
                    api_version: req.api_version,
                    client_id: req.client_id,
                    topics: &names,
                },
            );
            let direction = crate::policy_adapter::direction(&v.reason);
            match v.decision {
                Decision::Allow => KafkaDecision::Forward {
                    reason: v.reason.to_string(),
                    direction,
                    filter_metadata: is_metadata,
                },
                Decision::Deny if unknown_id == UnknownIds::NotLearned => KafkaDecision::Deny {
                    reason: format!(
                        "{}; the request names a topic id not seen in a Metadata response yet (the client \
                         refreshes its metadata and retries)",
                        v.reason
                    ),
                    drop_reason: drop_reason_of(&v.reason),
                    direction,
                    error_code: code::UNKNOWN_TOPIC_ID,
                },
                Decision::Deny if unknown_id == UnknownIds::FromOtherBroker => {
                    KafkaDecision::Deny {
                        reason: format!(
                            "{}; the request names a topic id this broker never announced (only another \
                         destination did, which is never trusted for this one)",
                            v.reason
                        ),
                        drop_reason: drop_reason_of(&v.reason),
                        direction,
                        error_code: code::TOPIC_AUTHORIZATION_FAILED,
                    }
                }
                Decision::Deny => KafkaDecision::Deny {
                    reason: v.reason.to_string(),
                    drop_reason: drop_reason_of(&v.reason),
                    direction,
                    error_code: code::TOPIC_AUTHORIZATION_FAILED,
                },
            }
        }
        (Decision::Allow, Some(other)) => KafkaDecision::Deny {
            reason: format!(
                "{}; port now carries {other:?} rules, not Kafka",
                conn.reason
            ),
            drop_reason: DropReason::PolicyDenied,
            direction,
            error_code: code::TOPIC_AUTHORIZATION_FAILED,
        },
    }
}

/// The decision from a request's header alone, before its body (and the topics in it) has arrived: `Deny` only
/// when the request is denied whatever topics it names (the connection is no longer allowed, or no rule matches
/// its API key, version and client id), since a request naming no topic needs just one rule matching its header
/// and a request naming topics needs one per topic. `Forward` means "decide again once the body is read".
pub fn decide_head(
    snap: &PolicySnapshot,
    client: &Downstream,
    dst: SocketAddr,
    head: HeadView<'_>,
) -> KafkaDecision {
    decide(snap, client, dst, head, &[], UnknownIds::None)
}

/// Whether a topic in a Metadata response stays visible to this client: a Metadata request naming only it would
/// be allowed.
pub fn topic_visible(
    snap: &PolicySnapshot,
    client: &Downstream,
    dst: SocketAddr,
    req: &KafkaRequest,
    topic: &str,
) -> bool {
    let (flow, _) = decision::connection_verdict(snap, client, dst);
    let v = snap.engine.kafka(
        &flow,
        &PolicyRequest {
            api_key: req.api_key as i16,
            api_version: req.api_version,
            client_id: req.client_id.as_deref(),
            topics: &[topic],
        },
    );
    v.decision == Decision::Allow
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::request::decode;
    use crate::kafka::response::error_frame;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::{
        FetchRequest, MetadataRequest, ProduceRequest, RequestHeader, RequestKind, TopicName,
        fetch_request, metadata_request, produce_request,
    };
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn api_key(name: &str) -> ApiKey {
        ApiKey::iter()
            .find(|k| format!("{k:?}").eq_ignore_ascii_case(name))
            .unwrap_or_else(|| panic!("unknown api key {name}"))
    }

    /// The request a client would send for a conformance case, as bytes on the wire.
    fn wire_request(key: ApiKey, version: i16, client: &str, topics: &[String]) -> Bytes {
        let tn = |t: &String| TopicName(StrBytes::from_string(t.clone()));
        let body = match key {
            ApiKey::Produce => RequestKind::Produce(
                ProduceRequest::default().with_acks(-1).with_topic_data(
                    topics
                        .iter()
                        .map(|t| {
                            produce_request::TopicProduceData::default()
                                .with_name(tn(t))
                                .with_partition_data(vec![
                                    produce_request::PartitionProduceData::default(),
                                ])
                        })
                        .collect(),
                ),
            ),
            ApiKey::Fetch => RequestKind::Fetch(
                FetchRequest::default().with_topics(
                    topics
                        .iter()
                        .map(|t| fetch_request::FetchTopic::default().with_topic(tn(t)))
                        .collect(),
                ),
            ),
            ApiKey::Metadata => RequestKind::Metadata(
                MetadataRequest::default().with_topics(Some(
                    topics
                        .iter()
                        .map(|t| {
                            metadata_request::MetadataRequestTopic::default().with_name(Some(tn(t)))
                        })
                        .collect(),
                )),
            ),
            ApiKey::ApiVersions => RequestKind::ApiVersions(Default::default()),
            ApiKey::JoinGroup => RequestKind::JoinGroup(Default::default()),
            other => panic!("add a request builder for {other:?}"),
        };
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(11)
            .with_client_id(Some(StrBytes::from_string(client.to_string())))
            .encode(&mut buf, key.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    /// Every case of the `kafka-events` conformance file, as the proxy sees it: bytes decoded, decided, and for
    /// denials a local response carrying TOPIC_AUTHORIZATION_FAILED.
    #[test]
    fn conformance_cases_through_decode_decide_and_respond() {
        let snap = crate::conformance::conformance_snapshot("kafka-events");
        let path = crate::conformance::conformance_path("kafka-events");
        let v: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let ip_of = |who: &str| -> std::net::IpAddr {
            let name = who.split('/').nth(1).unwrap();
            v["endpoints"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|e| e["name"].as_str() == Some(name))
                .and_then(|e| e["ip"].as_str())
                .unwrap()
                .parse()
                .unwrap()
        };
        let ids = TopicIds::default();
        let cases = v["cases"].as_sequence().unwrap();
        assert!(cases.len() >= 10, "kafka-events has {} cases", cases.len());
        let mut head_denied = 0;
        for case in cases {
            let k = &case["kafka"];
            let key = api_key(k["api_key"].as_str().unwrap());
            let version = k["api_version"].as_i64().unwrap() as i16;
            let topics: Vec<String> = k["topics"]
                .as_sequence()
                .map(|s| s.iter().map(|t| t.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            let client = SocketAddr::new(ip_of(case["from"].as_str().unwrap()), 40000);
            let dst = SocketAddr::new(
                ip_of(case["to"].as_str().unwrap()),
                case["port"].as_u64().unwrap() as u16,
            );
            let req = decode(wire_request(
                key,
                version,
                k["client_id"].as_str().unwrap(),
                &topics,
            ))
            .unwrap();
            let (policy_topics, _, unknown) = topic_names(&req, &ids, dst);
            let d = decide(
                &snap,
                &Downstream::plain(client),
                dst,
                req.view(),
                &policy_topics,
                unknown,
            );
            let want_allow = case["expect"].as_str() == Some("allow");
            // The header decision only refuses what the whole request would be refused for.
            let head = decide_head(&snap, &Downstream::plain(client), dst, req.view());
            if matches!(head, KafkaDecision::Deny { .. }) {
                assert!(!want_allow, "{case:?}: denied from the header");
                head_denied += 1;
            }
            match d {
                KafkaDecision::Forward { .. } => assert!(want_allow, "{case:?}: forwarded"),
                KafkaDecision::Deny { error_code, .. } => {
                    assert!(!want_allow, "{case:?}: denied");
                    assert_eq!(error_code, code::TOPIC_AUTHORIZATION_FAILED);
                    assert!(error_frame(&req, error_code).is_ok());
                }
            }
        }
        // Fetch from the writer and Produce from the reader: no rule matches their API key at all.
        assert_eq!(head_denied, 2);
    }

    #[test]
    fn unknown_topic_ids_get_unknown_topic_id_and_known_ones_are_checked_by_name() {
        let snap = crate::conformance::conformance_snapshot("kafka-events");
        let producer: SocketAddr = "10.0.24.10:40000".parse().unwrap();
        let kafka: SocketAddr = "10.0.24.20:9092".parse().unwrap();
        let ids = TopicIds::default();
        let events = uuid::Uuid::from_u128(0x0a);
        let audit = uuid::Uuid::from_u128(0x0b);
        // Produce v13 names topics by id only.
        let frame = |id: uuid::Uuid| {
            let body =
                RequestKind::Produce(ProduceRequest::default().with_acks(-1).with_topic_data(
                    vec![produce_request::TopicProduceData::default().with_topic_id(id)],
                ));
            let mut buf = BytesMut::new();
            RequestHeader::default()
                .with_request_api_key(0)
                .with_request_api_version(13)
                .with_client_id(Some(StrBytes::from_static_str("p1")))
                .encode(&mut buf, ApiKey::Produce.request_header_version(13))
                .unwrap();
            body.encode(&mut buf, 13).unwrap();
            decode(buf.freeze()).unwrap()
        };
        let run = |id| {
            let req = frame(id);
            let (t, rec, unknown) = topic_names(&req, &ids, kafka);
            (
                decide(
                    &snap,
                    &Downstream::plain(producer),
                    kafka,
                    req.view(),
                    &t,
                    unknown,
                ),
                rec,
            )
        };
        let (d, rec) = run(events);
        assert!(
            matches!(
                d,
                KafkaDecision::Deny {
                    error_code: code::UNKNOWN_TOPIC_ID,
                    ..
                }
            ),
            "{d:?}"
        );
        assert_eq!(rec, vec![format!("id:{events}")]);
        // Another destination (a tenant's own broker) announcing the ids teaches nothing about this one.
        let rogue: SocketAddr = "10.0.24.99:9092".parse().unwrap();
        ids.learn(rogue, &[(audit, "events".into())]);
        let (d, _) = run(audit);
        assert!(
            matches!(
                d,
                KafkaDecision::Deny {
                    error_code: code::TOPIC_AUTHORIZATION_FAILED,
                    ..
                }
            ),
            "{d:?}"
        );
        ids.learn(kafka, &[(events, "events".into()), (audit, "audit".into())]);
        assert!(matches!(run(events).0, KafkaDecision::Forward { .. }));
        assert!(matches!(
            run(audit).0,
            KafkaDecision::Deny {
                error_code: code::TOPIC_AUTHORIZATION_FAILED,
                ..
            }
        ));
    }
}
