//! Sends one Kafka request and prints what came back, for replaying policy conformance cases as real traffic:
//!
//! `tollgate-kafka-probe BROKER API_KEY VERSION CLIENT_ID [TOPIC...]`
//!
//! Prints one JSON line: `{"correlation_id": N, "error_codes": [..]}` with every error code in the response
//! (top-level and per topic/partition), or exits non-zero when the connection closed without a response.
//! Produce requests carry one small real record batch per topic (partition 0), so an allowed request is a real
//! write the broker accepts.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

fn key_of(name: &str) -> Result<ApiKey> {
    ApiKey::iter()
        .find(|k| format!("{k:?}").eq_ignore_ascii_case(name))
        .with_context(|| format!("unknown API key {name}"))
}

fn records(value: &str) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    let rec = Record {
        transactional: false,
        control: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 0,
        delete_horizon: false,
        key: None,
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: Default::default(),
    };
    RecordBatchEncoder::encode(
        &mut buf,
        &[rec],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )?;
    Ok(buf.freeze())
}

fn request(key: ApiKey, topics: &[String]) -> Result<RequestKind> {
    let tn = |t: &String| TopicName(StrBytes::from_string(t.clone()));
    Ok(match key {
        ApiKey::Produce => RequestKind::Produce(
            ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(5000)
                .with_topic_data(
                    topics
                        .iter()
                        .map(|t| {
                            Ok(produce_request::TopicProduceData::default()
                                .with_name(tn(t))
                                .with_partition_data(vec![
                                    produce_request::PartitionProduceData::default()
                                        .with_index(0)
                                        .with_records(Some(records("probe")?)),
                                ]))
                        })
                        .collect::<Result<_>>()?,
                ),
        ),
        ApiKey::Fetch => RequestKind::Fetch(
            FetchRequest::default()
                .with_replica_id((-1).into())
                .with_max_wait_ms(10)
                .with_max_bytes(1 << 20)
                .with_topics(
                    topics
                        .iter()
                        .map(|t| {
                            fetch_request::FetchTopic::default()
                                .with_topic(tn(t))
                                .with_partitions(vec![
                                    fetch_request::FetchPartition::default()
                                        .with_partition(0)
                                        .with_partition_max_bytes(1 << 20),
                                ])
                        })
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
        ApiKey::ApiVersions => RequestKind::ApiVersions(
            ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("tollgate-kafka-probe"))
                .with_client_software_version(StrBytes::from_static_str("1")),
        ),
        ApiKey::JoinGroup => RequestKind::JoinGroup(
            JoinGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("probe-group")))
                .with_session_timeout_ms(6000)
                .with_rebalance_timeout_ms(6000)
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![
                    join_group_request::JoinGroupRequestProtocol::default()
                        .with_name(StrBytes::from_static_str("range"))
                        .with_metadata(Bytes::from_static(b"\x00\x00\x00\x00\x00\x00\x00\x00")),
                ]),
        ),
        other => bail!("the probe cannot build {other:?} requests yet"),
    })
}

/// Every error code in a response, top level and nested, for the keys the probe sends.
fn error_codes(resp: &ResponseKind) -> Vec<i16> {
    match resp {
        ResponseKind::Produce(r) => r
            .responses
            .iter()
            .flat_map(|t| t.partition_responses.iter().map(|p| p.error_code))
            .collect(),
        // The top-level Fetch error is for fetch sessions; topic errors are per partition.
        ResponseKind::Fetch(r) => (r.error_code != 0)
            .then_some(r.error_code)
            .into_iter()
            .chain(
                r.responses
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
            )
            .collect(),
        ResponseKind::Metadata(r) => r.topics.iter().map(|t| t.error_code).collect(),
        ResponseKind::ApiVersions(r) => vec![r.error_code],
        ResponseKind::JoinGroup(r) => vec![r.error_code],
        _ => Vec::new(),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        bail!("usage: tollgate-kafka-probe BROKER API_KEY VERSION CLIENT_ID [TOPIC...]");
    }
    let key = key_of(&args[1])?;
    let version: i16 = args[2].parse().context("VERSION")?;
    let topics = &args[4..];
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(4242)
        .with_client_id(Some(StrBytes::from_string(args[3].clone())))
        .encode(&mut buf, key.request_header_version(version))?;
    request(key, topics)?.encode(&mut buf, version)?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());

    let mut s =
        TcpStream::connect(&args[0]).with_context(|| format!("connecting to {}", args[0]))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&buf)?;
    let mut prefix = [0u8; 4];
    s.read_exact(&mut prefix)
        .context("the connection closed without a response")?;
    let mut body = vec![0u8; i32::from_be_bytes(prefix) as usize];
    s.read_exact(&mut body)?;
    let mut b = Bytes::from(body);
    let header = ResponseHeader::decode(&mut b, key.response_header_version(version))?;
    let resp = ResponseKind::decode(key, &mut b, version)?;
    println!(
        "{}",
        serde_json::json!({
            "correlation_id": header.correlation_id,
            "error_codes": error_codes(&resp),
        })
    );
    Ok(())
}
