//! Kafka request frames: `[i32 length][header][body]`. `frame_len` checks the length prefix against the limit;
//! `decode` reads the header (api key, version, correlation id, client id; flexible header versions included) and
//! the body, and lists the topics the request names. Pure: no sockets, and nothing here re-encodes a request (an
//! allowed frame is forwarded as received).

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::{Decodable, StrBytes};
use thiserror::Error;

/// The default largest request frame: 8 times what clients send by default (the Java producer's `max.request.size`
/// is 1 MiB, librdkafka's `message.max.bytes` 1,000,000, and brokers refuse record batches over their 1 MiB
/// `message.max.bytes`), far below brokers' 100 MiB `socket.request.max.bytes`, which no client comes near.
pub const DEFAULT_MAX_FRAME: usize = 8 * 1024 * 1024;

/// The default largest response frame: Fetch responses reach consumers' `fetch.max.bytes` (50 MiB in both
/// clients) and are streamed through, not buffered, so this stays at brokers' 100 MiB.
pub const DEFAULT_MAX_RESPONSE: usize = 100 * 1024 * 1024;

/// A topic as a request names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum TopicRef {
    Name(String),
    /// Newer versions of Fetch, Produce, Metadata, OffsetCommit, OffsetFetch and DeleteTopics name topics by id;
    /// the connection maps ids to names from the Metadata responses it has seen.
    Id(uuid::Uuid),
    /// The request names topics in fields this proxy does not read (broker-to-broker and share-group state
    /// APIs). Matched like a topic no rule names, so a topic-constrained rule never allows it (fail closed).
    Unlisted,
}

/// The decoded head of a request and the topics it names.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaRequest {
    pub api_key: ApiKey,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
    pub topics: Vec<TopicRef>,
    pub body: RequestKind,
}

/// A request header: what the policy needs before the body (the topics) has arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub api_key: ApiKey,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
}

/// The header fields a decision reads, borrowed from a `RequestHead` or a decoded `KafkaRequest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadView<'a> {
    pub api_key: ApiKey,
    pub api_version: i16,
    pub client_id: Option<&'a str>,
}

impl RequestHead {
    pub fn view(&self) -> HeadView<'_> {
        HeadView {
            api_key: self.api_key,
            api_version: self.api_version,
            client_id: self.client_id.as_deref(),
        }
    }
}

impl KafkaRequest {
    pub fn view(&self) -> HeadView<'_> {
        HeadView {
            api_key: self.api_key,
            api_version: self.api_version,
            client_id: self.client_id.as_deref(),
        }
    }
}

/// Why a frame cannot be handled: the connection is closed with a flow record naming this.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds the {limit}-byte limit (--kafka-max-frame-bytes)")]
    TooLarge { size: usize, limit: usize },
    #[error("frame length {0} is negative")]
    NegativeLength(i32),
    #[error("frame of {0} bytes is too short for a request header")]
    Truncated(usize),
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    #[error("{key:?} version {version} is outside the supported {min}..={max}")]
    UnsupportedVersion {
        key: ApiKey,
        version: i16,
        min: i16,
        max: i16,
    },
    #[error("malformed {what}: {reason}")]
    Malformed { what: String, reason: String },
}

/// The body length announced by a frame's 4-byte prefix.
pub fn frame_len(prefix: [u8; 4], limit: usize) -> Result<usize, FrameError> {
    let len = i32::from_be_bytes(prefix);
    let size = usize::try_from(len).map_err(|_| FrameError::NegativeLength(len))?;
    if size > limit {
        return Err(FrameError::TooLarge { size, limit });
    }
    if size < 8 {
        return Err(FrameError::Truncated(size));
    }
    Ok(size)
}

/// Decodes the header at the start of a request frame (without its length prefix) from the first bytes of the
/// frame: an API key or version this codec cannot read is refused here, before any of the body has to arrive.
/// `frame` may end anywhere after the header; a header it does not hold whole is `Malformed`.
pub fn decode_head(frame: &[u8]) -> Result<RequestHead, FrameError> {
    let (api_key, version) = api_key_and_version(frame)?;
    let mut buf = Bytes::copy_from_slice(frame);
    let header = decode_header(&mut buf, api_key, version)?;
    Ok(RequestHead {
        api_key,
        api_version: version,
        correlation_id: header.correlation_id,
        client_id: header.client_id.map(|c| c.to_string()),
    })
}

fn api_key_and_version(frame: &[u8]) -> Result<(ApiKey, i16), FrameError> {
    if frame.len() < 8 {
        return Err(FrameError::Truncated(frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let api_key = ApiKey::try_from(raw_key).map_err(|()| FrameError::UnknownApiKey(raw_key))?;
    let range = api_key.valid_versions();
    if version < range.min || version > range.max {
        return Err(FrameError::UnsupportedVersion {
            key: api_key,
            version,
            min: range.min,
            max: range.max,
        });
    }
    Ok((api_key, version))
}

fn decode_header(
    buf: &mut Bytes,
    api_key: ApiKey,
    version: i16,
) -> Result<RequestHeader, FrameError> {
    RequestHeader::decode(buf, api_key.request_header_version(version)).map_err(|e| {
        FrameError::Malformed {
            what: format!("{api_key:?} v{version} request header"),
            reason: e.to_string(),
        }
    })
}

/// Decodes one request frame (without its length prefix).
pub fn decode(frame: Bytes) -> Result<KafkaRequest, FrameError> {
    let (api_key, version) = api_key_and_version(&frame)?;
    let mut buf = frame;
    let header = decode_header(&mut buf, api_key, version)?;
    let body =
        RequestKind::decode(api_key, &mut buf, version).map_err(|e| FrameError::Malformed {
            what: format!("{api_key:?} v{version} request body"),
            reason: e.to_string(),
        })?;
    // Bytes after the body are tolerated, as Kafka brokers do (librdkafka 2.16's all-topics Metadata v12 request
    // carries 3): the frame is forwarded as received and every field a broker reads has been read here.
    if !buf.is_empty() {
        tracing::debug!(
            "{api_key:?} v{version} request has {} bytes after the body",
            buf.len()
        );
    }
    Ok(KafkaRequest {
        api_key,
        api_version: version,
        correlation_id: header.correlation_id,
        client_id: header.client_id.map(|c| c.to_string()),
        topics: topics_of(&body),
        body,
    })
}

fn by_name_or_id(name: &str, id: &uuid::Uuid) -> TopicRef {
    if name.is_empty() && !id.is_nil() {
        TopicRef::Id(*id)
    } else {
        TopicRef::Name(name.to_string())
    }
}

/// Resource type 2 is TOPIC in DescribeConfigs / AlterConfigs / IncrementalAlterConfigs.
const RESOURCE_TOPIC: i8 = 2;

/// The topics one run of API keys names, or `None` for keys outside the run.
type TopicsOf = fn(&RequestKind) -> Option<Vec<TopicRef>>;

/// Every topic the request names; empty for keys that carry none (ApiVersions, JoinGroup, ...). A Metadata
/// request for all topics (`topics: null`) names none: the response is what a policy would filter.
pub fn topics_of(body: &RequestKind) -> Vec<TopicRef> {
    const BY_KEY: [TopicsOf; 4] = [
        topics_produce_to_delete_records,
        topics_of_config_resources,
        topics_create_partitions_to_write_txn_markers,
        topics_consumer_group_heartbeat_to_share_group_heartbeat,
    ];
    // Keys none of them knows carry no topic.
    let mut t = BY_KEY
        .iter()
        .find_map(|topics| topics(body))
        .unwrap_or_default();
    t.sort();
    t.dedup();
    t
}

/// The topics of `Produce` through `DeleteRecords` (in `topics_of`'s order), or `None` for other keys.
fn topics_produce_to_delete_records(body: &RequestKind) -> Option<Vec<TopicRef>> {
    Some(match body {
        RequestKind::Produce(r) => r
            .topic_data
            .iter()
            .map(|d| by_name_or_id(&d.name.0, &d.topic_id))
            .collect(),
        RequestKind::Fetch(r) => r
            .topics
            .iter()
            .map(|d| by_name_or_id(&d.topic.0, &d.topic_id))
            .chain(
                r.forgotten_topics_data
                    .iter()
                    .map(|d| by_name_or_id(&d.topic.0, &d.topic_id)),
            )
            .collect(),
        RequestKind::ListOffsets(r) => r
            .topics
            .iter()
            .map(|d| TopicRef::Name(d.name.0.to_string()))
            .collect(),
        RequestKind::Metadata(r) => r
            .topics
            .iter()
            .flatten()
            .map(|d| match &d.name {
                Some(n) => TopicRef::Name(n.0.to_string()),
                None => TopicRef::Id(d.topic_id),
            })
            .collect(),
        RequestKind::OffsetCommit(r) => r
            .topics
            .iter()
            .map(|d| by_name_or_id(&d.name.0, &d.topic_id))
            .collect(),
        RequestKind::OffsetFetch(r) => r
            .topics
            .iter()
            .flatten()
            .map(|d| TopicRef::Name(d.name.0.to_string()))
            .chain(
                r.groups
                    .iter()
                    .flat_map(|g| g.topics.iter().flatten())
                    .map(|d| by_name_or_id(&d.name.0, &d.topic_id)),
            )
            .collect(),
        RequestKind::CreateTopics(r) => r
            .topics
            .iter()
            .map(|d| TopicRef::Name(d.name.0.to_string()))
            .collect(),
        RequestKind::DeleteTopics(r) => r
            .topic_names
            .iter()
            .map(|n| TopicRef::Name(n.0.to_string()))
            .chain(r.topics.iter().map(|d| match &d.name {
                Some(n) => TopicRef::Name(n.0.to_string()),
                None => TopicRef::Id(d.topic_id),
            }))
            .collect(),
        RequestKind::DeleteRecords(r) => r
            .topics
            .iter()
            .map(|d| TopicRef::Name(d.name.0.to_string()))
            .collect(),
        _ => return None,
    })
}

/// The topics of the config APIs: the resources of type TOPIC, or `None` for other keys.
fn topics_of_config_resources(body: &RequestKind) -> Option<Vec<TopicRef>> {
    let of = |r: &mut dyn Iterator<Item = (i8, &StrBytes)>| {
        r.filter(|(kind, _)| *kind == RESOURCE_TOPIC)
            .map(|(_, name)| TopicRef::Name(name.to_string()))
            .collect()
    };
    Some(match body {
        RequestKind::DescribeConfigs(r) => of(&mut r
            .resources
            .iter()
            .map(|d| (d.resource_type, &d.resource_name))),
        RequestKind::AlterConfigs(r) => of(&mut r
            .resources
            .iter()
            .map(|d| (d.resource_type, &d.resource_name))),
        RequestKind::IncrementalAlterConfigs(r) => of(&mut r
            .resources
            .iter()
            .map(|d| (d.resource_type, &d.resource_name))),
        _ => return None,
    })
}

/// The topics of `CreatePartitions` through `WriteTxnMarkers` (in `topics_of`'s order), or `None` for other keys.
fn topics_create_partitions_to_write_txn_markers(body: &RequestKind) -> Option<Vec<TopicRef>> {
    Some(match body {
        RequestKind::CreatePartitions(r) => r
            .topics
            .iter()
            .map(|d| TopicRef::Name(d.name.0.to_string()))
            .collect(),
        RequestKind::OffsetDelete(r) => r
            .topics
            .iter()
            .map(|d| TopicRef::Name(d.name.0.to_string()))
            .collect(),
        RequestKind::DescribeProducers(r) => r
            .topics
            .iter()
            .map(|d| TopicRef::Name(d.name.0.to_string()))
            .collect(),
        RequestKind::OffsetForLeaderEpoch(r) => r
            .topics
            .iter()
            .map(|d| TopicRef::Name(d.topic.0.to_string()))
            .collect(),
        RequestKind::TxnOffsetCommit(r) => r
            .topics
            .iter()
            .map(|d| TopicRef::Name(d.name.0.to_string()))
            .collect(),
        RequestKind::AddPartitionsToTxn(r) => r
            .v3_and_below_topics
            .iter()
            .chain(r.transactions.iter().flat_map(|t| t.topics.iter()))
            .map(|d| TopicRef::Name(d.name.0.to_string()))
            .collect(),
        RequestKind::DescribeTopicPartitions(r) => r
            .topics
            .iter()
            .map(|d| TopicRef::Name(d.name.0.to_string()))
            .collect(),
        RequestKind::ElectLeaders(r) => r
            .topic_partitions
            .iter()
            .flatten()
            .map(|d| TopicRef::Name(d.topic.0.to_string()))
            .collect(),
        RequestKind::AlterPartitionReassignments(r) => r
            .topics
            .iter()
            .map(|d| TopicRef::Name(d.name.0.to_string()))
            .collect(),
        RequestKind::ListPartitionReassignments(r) => r
            .topics
            .iter()
            .flatten()
            .map(|d| TopicRef::Name(d.name.0.to_string()))
            .collect(),
        RequestKind::DescribeLogDirs(r) => r
            .topics
            .iter()
            .flatten()
            .map(|d| TopicRef::Name(d.topic.0.to_string()))
            .collect(),
        RequestKind::AlterReplicaLogDirs(r) => r
            .dirs
            .iter()
            .flat_map(|d| d.topics.iter())
            .map(|d| TopicRef::Name(d.name.0.to_string()))
            .collect(),
        RequestKind::WriteTxnMarkers(r) => r
            .markers
            .iter()
            .flat_map(|m| m.topics.iter())
            .map(|d| TopicRef::Name(d.name.0.to_string()))
            .collect(),
        _ => return None,
    })
}

/// The topics of `ConsumerGroupHeartbeat` through `ShareGroupHeartbeat` (in `topics_of`'s order), or `None` for other keys.
fn topics_consumer_group_heartbeat_to_share_group_heartbeat(
    body: &RequestKind,
) -> Option<Vec<TopicRef>> {
    Some(match body {
        RequestKind::ConsumerGroupHeartbeat(r) => {
            let mut t: Vec<TopicRef> = r
                .subscribed_topic_names
                .iter()
                .flatten()
                .map(|n| TopicRef::Name(n.0.to_string()))
                .chain(
                    r.topic_partitions
                        .iter()
                        .flatten()
                        .map(|d| TopicRef::Id(d.topic_id)),
                )
                .collect();
            // A regex subscription names topics the proxy cannot enumerate.
            if r.subscribed_topic_regex.is_some() {
                t.push(TopicRef::Unlisted);
            }
            t
        }
        RequestKind::ShareFetch(r) => r
            .topics
            .iter()
            .map(|d| TopicRef::Id(d.topic_id))
            .chain(
                r.forgotten_topics_data
                    .iter()
                    .map(|d| TopicRef::Id(d.topic_id)),
            )
            .collect(),
        RequestKind::ShareAcknowledge(r) => {
            r.topics.iter().map(|d| TopicRef::Id(d.topic_id)).collect()
        }
        RequestKind::AlterPartition(_)
        | RequestKind::AssignReplicasToDirs(_)
        | RequestKind::BeginQuorumEpoch(_)
        | RequestKind::DescribeQuorum(_)
        | RequestKind::EndQuorumEpoch(_)
        | RequestKind::FetchSnapshot(_)
        | RequestKind::Vote(_)
        | RequestKind::InitializeShareGroupState(_)
        | RequestKind::ReadShareGroupState(_)
        | RequestKind::WriteShareGroupState(_)
        | RequestKind::DeleteShareGroupState(_)
        | RequestKind::ReadShareGroupStateSummary(_)
        | RequestKind::DescribeShareGroupOffsets(_)
        | RequestKind::AlterShareGroupOffsets(_)
        | RequestKind::DeleteShareGroupOffsets(_) => vec![TopicRef::Unlisted],
        RequestKind::ShareGroupHeartbeat(r) => r
            .subscribed_topic_names
            .iter()
            .flatten()
            .map(|n| TopicRef::Name(n.0.to_string()))
            .collect(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::{
        ApiVersionsRequest, FetchRequest, MetadataRequest, ProduceRequest, TopicName,
        fetch_request::FetchTopic, metadata_request::MetadataRequestTopic,
        produce_request::TopicProduceData,
    };
    use kafka_protocol::protocol::{Encodable, StrBytes};

    /// Encodes a request frame (without the length prefix) the way a client does.
    fn frame(key: ApiKey, version: i16, body: &RequestKind) -> Bytes {
        let mut buf = BytesMut::new();
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(42)
            .with_client_id(Some(StrBytes::from_static_str("p1")));
        header
            .encode(&mut buf, key.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    fn name(s: &'static str) -> TopicName {
        TopicName(StrBytes::from_static_str(s))
    }

    #[test]
    fn produce_topics_in_every_version() {
        let range = ApiKey::Produce.valid_versions();
        for v in range.min..=range.max {
            let mut orders = TopicProduceData::default();
            let mut payments = TopicProduceData::default();
            if v >= 13 {
                orders.topic_id = uuid::Uuid::from_u128(1);
                payments.topic_id = uuid::Uuid::from_u128(2);
            } else {
                orders.name = name("orders");
                payments.name = name("payments");
            }
            let body = RequestKind::Produce(
                ProduceRequest::default().with_topic_data(vec![orders, payments]),
            );
            let req =
                decode(frame(ApiKey::Produce, v, &body)).unwrap_or_else(|e| panic!("v{v}: {e}"));
            assert_eq!(req.correlation_id, 42);
            assert_eq!(req.client_id.as_deref(), Some("p1"));
            let want = if v >= 13 {
                vec![
                    TopicRef::Id(uuid::Uuid::from_u128(1)),
                    TopicRef::Id(uuid::Uuid::from_u128(2)),
                ]
            } else {
                vec![
                    TopicRef::Name("orders".into()),
                    TopicRef::Name("payments".into()),
                ]
            };
            assert_eq!(req.topics, want, "v{v}");
        }
    }

    #[test]
    fn fetch_and_metadata_topics_in_every_version() {
        let range = ApiKey::Fetch.valid_versions();
        for v in range.min..=range.max {
            let mut t = FetchTopic::default();
            if v >= 13 {
                t.topic_id = uuid::Uuid::from_u128(7);
            } else {
                t.topic = name("orders");
            }
            let body = RequestKind::Fetch(FetchRequest::default().with_topics(vec![t]));
            let req = decode(frame(ApiKey::Fetch, v, &body))
                .unwrap_or_else(|e| panic!("fetch v{v}: {e}"));
            assert_eq!(req.topics.len(), 1, "fetch v{v}");
        }
        let range = ApiKey::Metadata.valid_versions();
        for v in range.min..=range.max {
            let t = MetadataRequestTopic::default().with_name(Some(name("orders")));
            let body = RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![t])));
            let req = decode(frame(ApiKey::Metadata, v, &body))
                .unwrap_or_else(|e| panic!("metadata v{v}: {e}"));
            assert_eq!(
                req.topics,
                vec![TopicRef::Name("orders".into())],
                "metadata v{v}"
            );
            // All topics: none named.
            let all = RequestKind::Metadata(MetadataRequest::default().with_topics(None));
            assert!(
                decode(frame(ApiKey::Metadata, v, &all))
                    .unwrap()
                    .topics
                    .is_empty()
            );
        }
    }

    #[test]
    fn keys_without_topics_name_none() {
        let range = ApiKey::ApiVersions.valid_versions();
        for v in range.min..=range.max {
            let body = RequestKind::ApiVersions(ApiVersionsRequest::default());
            let req = decode(frame(ApiKey::ApiVersions, v, &body)).unwrap();
            assert!(req.topics.is_empty());
            assert_eq!(req.api_key, ApiKey::ApiVersions);
        }
    }

    #[test]
    fn the_header_decodes_from_the_first_bytes_of_a_frame() {
        let t = TopicProduceData::default().with_name(name("orders"));
        let body = RequestKind::Produce(ProduceRequest::default().with_topic_data(vec![t]));
        for v in [3, 9] {
            let whole = frame(ApiKey::Produce, v, &body);
            // The header alone, with or without some of the body after it.
            for end in [whole.len() - 10, whole.len()] {
                let head = decode_head(&whole[..end]).unwrap_or_else(|e| panic!("v{v}: {e}"));
                assert_eq!(
                    head,
                    RequestHead {
                        api_key: ApiKey::Produce,
                        api_version: v,
                        correlation_id: 42,
                        client_id: Some("p1".into())
                    }
                );
            }
        }
        // An API key or version the codec cannot read is refused from 8 bytes.
        assert_eq!(
            decode_head(b"\x7f\x00\x00\x01\x00\x00\x00\x01"),
            Err(FrameError::UnknownApiKey(0x7f00))
        );
        assert!(matches!(
            decode_head(b"\x00\x00\x00\x63\x00\x00\x00\x01"),
            Err(FrameError::UnsupportedVersion { version: 99, .. })
        ));
        // A client id running past the bytes given: malformed, not a wait for more.
        assert!(matches!(
            decode_head(b"\x00\x00\x00\x03\x00\x00\x00\x01\x7f\xffp1"),
            Err(FrameError::Malformed { .. })
        ));
    }

    #[test]
    fn bad_frames_are_named() {
        assert_eq!(
            frame_len(200_000_000i32.to_be_bytes(), DEFAULT_MAX_FRAME),
            Err(FrameError::TooLarge {
                size: 200_000_000,
                limit: DEFAULT_MAX_FRAME
            })
        );
        assert_eq!(
            frame_len((-1i32).to_be_bytes(), DEFAULT_MAX_FRAME),
            Err(FrameError::NegativeLength(-1))
        );
        assert_eq!(
            frame_len(3i32.to_be_bytes(), DEFAULT_MAX_FRAME),
            Err(FrameError::Truncated(3))
        );
        assert_eq!(frame_len(64i32.to_be_bytes(), DEFAULT_MAX_FRAME), Ok(64));
        assert_eq!(
            decode(Bytes::from_static(b"\x00\x00")),
            Err(FrameError::Truncated(2))
        );
        assert_eq!(
            decode(Bytes::from_static(b"\x7f\x00\x00\x01\x00\x00\x00\x01")),
            Err(FrameError::UnknownApiKey(0x7f00))
        );
        let err = decode(Bytes::from_static(b"\x00\x00\x00\x63\x00\x00\x00\x01")).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::UnsupportedVersion {
                    key: ApiKey::Produce,
                    version: 99,
                    ..
                }
            ),
            "{err}"
        );
        // A Produce v9 header followed by garbage.
        let err = decode(Bytes::from_static(
            b"\x00\x00\x00\x09\x00\x00\x00\x01\x00\x02p1\x00\xff\xff\xff",
        ))
        .unwrap_err();
        assert!(matches!(err, FrameError::Malformed { .. }), "{err}");
        // An array length of 2^31-1 in an 18-byte request: an error, not a 100 GB reservation that aborts the
        // process (kafka-protocol is patched for this: proxy/vendor/kafka-protocol/README.md).
        let err = decode(Bytes::from_static(
            b"\x00\x00\x00\x03\x00\x00\x00\x01\x00\x00\xff\xff\x00\x01\x00\x00\x13\x88\x7f\xff\xff\xff",
        ))
        .unwrap_err();
        assert!(matches!(err, FrameError::Malformed { .. }), "{err}");
        // The same for a flexible version's varint-length (compact) array: Produce v9, 2^32-2 topics.
        let err = decode(Bytes::from_static(
            b"\x00\x00\x00\x09\x00\x00\x00\x01\x00\x02p1\x00\x00\x00\x01\x00\x00\x13\x88\xff\xff\xff\xff\x0f",
        ))
        .unwrap_err();
        assert!(matches!(err, FrameError::Malformed { .. }), "{err}");
        // Trailing bytes after a valid body are tolerated (the broker sees the frame as sent).
        let mut f = BytesMut::from(
            &frame(
                ApiKey::ApiVersions,
                3,
                &RequestKind::ApiVersions(ApiVersionsRequest::default()),
            )[..],
        );
        f.extend_from_slice(b"junk");
        assert_eq!(decode(f.freeze()).unwrap().api_key, ApiKey::ApiVersions);
    }
}
