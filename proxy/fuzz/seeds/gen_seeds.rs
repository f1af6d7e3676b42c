//! Writes the hand-made seed inputs the fuzz corpus was started from: real, valid DNS queries and answers, HTTP/2
//! frames an h2 server writes when it refuses (and a client's floods), Kafka
//! request frames of many API keys and versions, and broker Metadata responses, each checked against the proxy
//! code the targets fuzz. Not a fuzz target (it lives outside `fuzz_targets/`, so `.ci/fuzz-smoke` does not run it):
//!
//!     cd proxy/fuzz && cargo +nightly run --example gen_seeds -- corpus
//!
//! writes `corpus/<target>/seed-<what>`; fuzzing then grows the corpus and `cargo +nightly fuzz cmin` minimizes it
//! (README, Fuzzing), which renames every kept input to its SHA-1 and drops seeds whose coverage others reach.

use std::net::IpAddr;
use std::path::Path;

use bytes::{BufMut, Bytes, BytesMut};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};

// The proxy code the targets fuzz, to check every seed is accepted by it (a seed that fails early is wasted).
use tollgate_dns_codec::message;
use tollgate_kafka_codec::{request, response};

fn s(v: &'static str) -> StrBytes {
    StrBytes::from_static_str(v)
}
fn topic(v: &'static str) -> TopicName {
    TopicName(s(v))
}

// ---- DNS ----

fn name(n: &str) -> Name {
    Name::from_ascii(n).unwrap()
}

fn dns_query(id: u16, qname: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name(qname), qtype));
    if let Some(payload) = edns {
        let mut e = Edns::new();
        e.set_max_payload(payload);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn rec(owner: &str, ttl: u32, data: RData) -> Record {
    Record::from_rdata(name(owner), ttl, data)
}

fn ip(owner: &str, ttl: u32, ip: &str) -> Record {
    match ip.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v4) => rec(owner, ttl, RData::A(A(v4))),
        IpAddr::V6(v6) => rec(owner, ttl, RData::AAAA(AAAA(v6))),
    }
}

fn dns_response(
    id: u16,
    qname: &str,
    qtype: RecordType,
    answers: Vec<Record>,
    rcode: ResponseCode,
    truncated: bool,
) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Response, OpCode::Query);
    m.metadata.response_code = rcode;
    m.metadata.truncation = truncated;
    m.metadata.recursion_desired = true;
    m.metadata.recursion_available = true;
    m.add_query(Query::query(name(qname), qtype));
    for r in answers {
        m.add_answer(r);
    }
    m.set_edns(Edns::new());
    m.to_vec().unwrap()
}

fn dns_seeds() -> Vec<(&'static str, Vec<u8>)> {
    // The target's fixed upstream query is `wWw.example.com A` (id 0x1234): the responses answer that name.
    let www = "www.example.com.";
    vec![
        ("query-a-edns", dns_query(0x1234, "wWw.ExAmple.com.", RecordType::A, Some(4096))),
        ("query-aaaa", dns_query(0x0001, "api.example.org.", RecordType::AAAA, None)),
        ("query-mx", dns_query(0xbeef, "example.com.", RecordType::MX, Some(1232))),
        (
            "query-srv-cluster",
            dns_query(0x4242, "_http._tcp.api.shop.svc.cluster.local.", RecordType::SRV, Some(1232)),
        ),
        (
            "answer-a-two-ips",
            dns_response(
                0x1234,
                www,
                RecordType::A,
                vec![ip(www, 300, "93.184.216.34"), ip(www, 60, "93.184.216.35")],
                ResponseCode::NoError,
                false,
            ),
        ),
        (
            "answer-cname-chain",
            dns_response(
                0x1234,
                www,
                RecordType::A,
                vec![
                    rec(www, 300, RData::CNAME(CNAME(name("www.example.com.cdn.example.net.")))),
                    rec(
                        "www.example.com.cdn.example.net.",
                        60,
                        RData::CNAME(CNAME(name("edge-7.cdn.example.net."))),
                    ),
                    ip("edge-7.cdn.example.net.", 20, "198.51.100.7"),
                ],
                ResponseCode::NoError,
                false,
            ),
        ),
        (
            "answer-aaaa",
            dns_response(0x1234, www, RecordType::A, vec![ip(www, 120, "2001:db8::7")], ResponseCode::NoError, false),
        ),
        ("answer-nxdomain", dns_response(0x1234, www, RecordType::A, vec![], ResponseCode::NXDomain, false)),
        (
            "answer-truncated",
            dns_response(0x1234, www, RecordType::A, vec![ip(www, 30, "192.0.2.1")], ResponseCode::NoError, true),
        ),
        (
            "answer-mx-txt",
            dns_response(
                0x1234,
                www,
                RecordType::A,
                vec![
                    rec(www, 300, RData::MX(MX::new(10, name("mail.example.com.")))),
                    rec(www, 300, RData::TXT(TXT::new(vec!["v=spf1 -all".into()]))),
                ],
                ResponseCode::NoError,
                false,
            ),
        ),
    ]
}

// ---- Kafka ----

/// A request frame as `request::decode` takes it: header and body, without the 4-byte length prefix.
fn request(key: ApiKey, version: i16, body: RequestKind) -> Vec<u8> {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(s("rdkafka")))
        .encode(&mut buf, key.request_header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    buf.to_vec()
}

fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

fn varint(buf: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    buf.put_u8(z as u8);
}

/// A v2 record batch with one record (`value`), as a producer sends it.
fn record_batch(value: &[u8]) -> Bytes {
    let mut rec = BytesMut::new();
    rec.put_i8(0); // attributes
    varint(&mut rec, 0); // timestamp delta
    varint(&mut rec, 0); // offset delta
    varint(&mut rec, -1); // null key
    varint(&mut rec, value.len() as i64);
    rec.put_slice(value);
    varint(&mut rec, 0); // headers
    let mut tail = BytesMut::new(); // from attributes on: what the CRC covers
    tail.put_i16(0); // attributes: no compression
    tail.put_i32(0); // last offset delta
    tail.put_i64(1_764_900_000_000);
    tail.put_i64(1_764_900_000_000);
    tail.put_i64(-1); // producer id
    tail.put_i16(-1);
    tail.put_i32(-1);
    tail.put_i32(1); // records
    varint(&mut tail, rec.len() as i64);
    tail.put_slice(&rec);
    let mut b = BytesMut::new();
    b.put_i64(0); // base offset
    b.put_i32((4 + 1 + 4 + tail.len()) as i32);
    b.put_i32(-1); // partition leader epoch
    b.put_i8(2); // magic
    b.put_u32(crc32c(&tail));
    b.put_slice(&tail);
    b.freeze()
}

fn produce(version: i16) -> RequestKind {
    let mut t = produce_request::TopicProduceData::default().with_partition_data(vec![
        produce_request::PartitionProduceData::default()
            .with_index(0)
            .with_records(Some(record_batch(b"{\"order\":42}"))),
    ]);
    if version >= 13 {
        t.topic_id = uuid::Uuid::from_u128(0x6f72_6465_7273);
    } else {
        t.name = topic("orders");
    }
    RequestKind::Produce(ProduceRequest::default().with_acks(-1).with_timeout_ms(30_000).with_topic_data(vec![t]))
}

fn fetch(version: i16) -> RequestKind {
    let mut t = fetch_request::FetchTopic::default().with_partitions(vec![
        fetch_request::FetchPartition::default().with_partition(0).with_fetch_offset(17).with_partition_max_bytes(1 << 20),
    ]);
    if version >= 13 {
        t.topic_id = uuid::Uuid::from_u128(0x6f72_6465_7273);
    } else {
        t.topic = topic("orders");
    }
    RequestKind::Fetch(
        FetchRequest::default().with_replica_id((-1).into()).with_max_wait_ms(500).with_min_bytes(1).with_topics(vec![t]),
    )
}

fn metadata_request(topics: Option<Vec<&'static str>>) -> RequestKind {
    RequestKind::Metadata(MetadataRequest::default().with_topics(topics.map(|ts| {
        ts.into_iter().map(|t| metadata_request::MetadataRequestTopic::default().with_name(Some(topic(t)))).collect()
    })))
}

/// A broker's Metadata response (header and body, no length prefix) whose first byte (the correlation id's top
/// byte) makes the target read it as `version` (`data[0] % 14`).
fn metadata_response(version: i16, topics: &[(&'static str, u128)]) -> Vec<u8> {
    let resp = MetadataResponse::default()
        .with_brokers(vec![
            metadata_response::MetadataResponseBroker::default()
                .with_node_id(1.into())
                .with_host(s("10.0.3.20"))
                .with_port(9092),
        ])
        .with_cluster_id(if version >= 2 { Some(s("tollgate-test")) } else { None })
        .with_topics(
            topics
                .iter()
                .map(|(n, id)| {
                    let mut t = metadata_response::MetadataResponseTopic::default()
                        .with_name(Some(topic(n)))
                        .with_partitions(vec![
                            metadata_response::MetadataResponsePartition::default()
                                .with_leader_id(1.into())
                                .with_replica_nodes(vec![1.into()])
                                .with_isr_nodes(vec![1.into()]),
                        ]);
                    if version >= 10 {
                        t.topic_id = uuid::Uuid::from_u128(*id);
                    }
                    t
                })
                .collect(),
        );
    let mut buf = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id((i32::from(version) << 24) | 5)
        .encode(&mut buf, ApiKey::Metadata.response_header_version(version))
        .unwrap();
    resp.encode(&mut buf, version).unwrap();
    buf.to_vec()
}

fn kafka_seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "apiversions-v3",
            request(
                ApiKey::ApiVersions,
                3,
                RequestKind::ApiVersions(
                    ApiVersionsRequest::default()
                        .with_client_software_name(s("librdkafka"))
                        .with_client_software_version(s("2.16.0")),
                ),
            ),
        ),
        ("metadata-v12-named", request(ApiKey::Metadata, 12, metadata_request(Some(vec!["orders", "payments"])))),
        ("metadata-v4-all", request(ApiKey::Metadata, 4, metadata_request(None))),
        ("produce-v3", request(ApiKey::Produce, 3, produce(3))),
        ("produce-v9", request(ApiKey::Produce, 9, produce(9))),
        ("produce-v13-id", request(ApiKey::Produce, 13, produce(13))),
        ("fetch-v11", request(ApiKey::Fetch, 11, fetch(11))),
        ("fetch-v13-id", request(ApiKey::Fetch, 13, fetch(13))),
        (
            "listoffsets-v5",
            request(
                ApiKey::ListOffsets,
                5,
                RequestKind::ListOffsets(ListOffsetsRequest::default().with_replica_id((-1).into()).with_topics(vec![
                    list_offsets_request::ListOffsetsTopic::default().with_name(topic("orders")).with_partitions(vec![
                        list_offsets_request::ListOffsetsPartition::default().with_partition_index(0).with_timestamp(-1),
                    ]),
                ])),
            ),
        ),
        (
            "findcoordinator-v4",
            request(
                ApiKey::FindCoordinator,
                4,
                RequestKind::FindCoordinator(FindCoordinatorRequest::default().with_coordinator_keys(vec![s("group-1")])),
            ),
        ),
        (
            "joingroup-v5",
            request(
                ApiKey::JoinGroup,
                5,
                RequestKind::JoinGroup(
                    JoinGroupRequest::default()
                        .with_group_id(GroupId(s("group-1")))
                        .with_session_timeout_ms(45_000)
                        .with_rebalance_timeout_ms(300_000)
                        .with_protocol_type(s("consumer"))
                        .with_protocols(vec![
                            join_group_request::JoinGroupRequestProtocol::default()
                                .with_name(s("range"))
                                .with_metadata(Bytes::from_static(b"\x00\x01\x00\x00\x00\x01\x00\x06orders\xff\xff\xff\xff")),
                        ]),
                ),
            ),
        ),
        (
            "offsetcommit-v8",
            request(
                ApiKey::OffsetCommit,
                8,
                RequestKind::OffsetCommit(
                    OffsetCommitRequest::default()
                        .with_group_id(GroupId(s("group-1")))
                        .with_generation_id_or_member_epoch(3)
                        .with_member_id(s("rdkafka-1"))
                        .with_topics(vec![
                            offset_commit_request::OffsetCommitRequestTopic::default()
                                .with_name(topic("orders"))
                                .with_partitions(vec![
                                    offset_commit_request::OffsetCommitRequestPartition::default()
                                        .with_partition_index(0)
                                        .with_committed_offset(18),
                                ]),
                        ]),
                ),
            ),
        ),
        (
            "offsetfetch-v7",
            request(
                ApiKey::OffsetFetch,
                7,
                RequestKind::OffsetFetch(OffsetFetchRequest::default().with_group_id(GroupId(s("group-1"))).with_topics(Some(
                    vec![offset_fetch_request::OffsetFetchRequestTopic::default().with_name(topic("orders")).with_partition_indexes(vec![0, 1])],
                ))),
            ),
        ),
        (
            "createtopics-v5",
            request(
                ApiKey::CreateTopics,
                5,
                RequestKind::CreateTopics(CreateTopicsRequest::default().with_timeout_ms(30_000).with_topics(vec![
                    create_topics_request::CreatableTopic::default()
                        .with_name(topic("orders"))
                        .with_num_partitions(3)
                        .with_replication_factor(1),
                ])),
            ),
        ),
        (
            "deletetopics-v4",
            request(
                ApiKey::DeleteTopics,
                4,
                RequestKind::DeleteTopics(DeleteTopicsRequest::default().with_topic_names(vec![topic("orders")])),
            ),
        ),
        (
            "describeconfigs-v4-topic",
            request(
                ApiKey::DescribeConfigs,
                4,
                RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
                    describe_configs_request::DescribeConfigsResource::default().with_resource_type(2).with_resource_name(s("orders")),
                ])),
            ),
        ),
        (
            "saslhandshake-v1",
            request(ApiKey::SaslHandshake, 1, RequestKind::SaslHandshake(SaslHandshakeRequest::default().with_mechanism(s("PLAIN")))),
        ),
        (
            "initproducerid-v4",
            request(
                ApiKey::InitProducerId,
                4,
                RequestKind::InitProducerId(
                    InitProducerIdRequest::default()
                        .with_transactional_id(Some(TransactionalId(s("tx-1"))))
                        .with_transaction_timeout_ms(60_000),
                ),
            ),
        ),
        (
            "heartbeat-v4",
            request(
                ApiKey::Heartbeat,
                4,
                RequestKind::Heartbeat(
                    HeartbeatRequest::default().with_group_id(GroupId(s("group-1"))).with_generation_id(3).with_member_id(s("rdkafka-1")),
                ),
            ),
        ),
        ("metadata-response-v1", metadata_response(1, &[("orders", 1), ("payments", 2)])),
        ("metadata-response-v9", metadata_response(9, &[("orders", 1), ("payments", 2)])),
        ("metadata-response-v12", metadata_response(12, &[("orders", 1), ("payments", 2), ("audit", 3)])),
    ]
}

fn write(dir: &Path, seeds: Vec<(&'static str, Vec<u8>)>) {
    std::fs::create_dir_all(dir).unwrap();
    for (what, bytes) in seeds {
        let path = dir.join(format!("seed-{what}"));
        std::fs::write(&path, bytes).unwrap();
        println!("{}", path.display());
    }
}

/// Every seed gets past parsing in the proxy code: queries parse as client queries, answers pass the checks
/// against the target's fixed query, requests decode, Metadata responses go through the filter.
fn check(dns: &[(&'static str, Vec<u8>)], kafka: &[(&'static str, Vec<u8>)]) {
    let fixed = dns_query(0x1234, "wWw.example.com.", RecordType::A, Some(4096));
    let fixed_q = message::parse_query(&fixed).unwrap();
    for (what, bytes) in dns {
        if what.starts_with("query") {
            message::parse_query(bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
        } else {
            message::inspect_response(&fixed_q, bytes).unwrap_or_else(|e| panic!("{what}: {e:?}"));
        }
    }
    for (what, bytes) in kafka {
        let frame = Bytes::copy_from_slice(bytes);
        if what.starts_with("metadata-response") {
            let version = i16::from(bytes[0] % 14);
            response::filter_metadata(&frame, version, true, |t| t == "orders").unwrap_or_else(|e| panic!("{what}: {e}"));
        } else {
            let req = request::decode(frame).unwrap_or_else(|e| panic!("{what}: {e}"));
            response::error_frame(&req, 29).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
    }
}

// ---- HTTP/2 frames ----

/// What an h2 server writes when it refuses: its SETTINGS, a lone 431, resets, GOAWAYs with debug data; and a
/// client's SETTINGS flood and CONTINUATION run. Each seed starts with the byte that picks the read split.
fn h2_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use tollgate_h2_codec::h2_frames::{frame, goaway, kind};
    let with_split = |split: u8, frames: Vec<Vec<u8>>| {
        let mut out = vec![split];
        out.extend(frames.concat());
        out
    };
    let settings = frame(kind::SETTINGS, 0, 0, &[0, 3, 0, 0, 1, 0, 0, 6, 0, 0, 64, 0]);
    let lone_431 = frame(kind::HEADERS, 0x5, 1, &[0x48, 0x83, 0x69, 0x90, 0xff]);
    let padded = frame(kind::HEADERS, 0x2d, 3, &[2, 0, 0, 0, 1, 16, 0xbe, 0, 0]);
    vec![
        ("server-refusals", with_split(0, vec![
            settings.clone(),
            frame(kind::SETTINGS, 1, 0, &[]),
            lone_431,
            padded,
            frame(kind::RST_STREAM, 0, 5, &1u32.to_be_bytes()),
            frame(kind::RST_STREAM, 0, 7, &7u32.to_be_bytes()),
            goaway(7, 11, b"too_many_resets"),
        ])),
        ("goaway-continuations", with_split(3, vec![goaway(1, 11, b"too_many_continuations")])),
        ("goaway-long-debug", with_split(16, vec![goaway(1, 11, &[b'x'; 300])])),
        ("client-settings-flood", with_split(5, vec![settings; 8])),
        ("client-continuations", with_split(1, vec![
            frame(kind::HEADERS, 0, 1, &[0x82, 0x86, 0x84]),
            frame(kind::CONTINUATION, 0, 1, &[0x40, 1, b'a', 1, b'b']),
            frame(kind::CONTINUATION, 0x4, 1, &[]),
            frame(kind::DATA, 1, 1, b"hello"),
            frame(kind::PING, 0, 0, &[0; 8]),
        ])),
    ]
}

fn main() {
    let root = std::env::args().nth(1).unwrap_or_else(|| "corpus".into());
    let root = Path::new(&root);
    let (dns, kafka) = (dns_seeds(), kafka_seeds());
    check(&dns, &kafka);
    write(&root.join("dns_message"), dns);
    write(&root.join("kafka_frame"), kafka);
    write(&root.join("h2_frames"), h2_seeds());
}
