//! Kafka produce load: one TCP connection per load connection, one Produce request in flight, one record of
//! `payload` bytes per request to partition 0 of `topic`. Built on the `kafka-protocol` crate's message types.
//!
//! On connect the client asks the broker's ApiVersions (v3, as modern clients do) and uses the highest Produce
//! version both sides know, capped at [`MAX_PRODUCE_VERSION`] (v13 addresses topics by ID only). A request
//! succeeds when the response carries the right correlation ID and error code 0 for every partition.

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use indexmap::IndexMap;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, ProduceRequest, ProduceResponse,
    RequestHeader, ResponseHeader, TopicName,
    produce_request::{PartitionProduceData, TopicProduceData},
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Highest Produce version used (v3..=v12 name topics; v13 uses topic IDs).
pub const MAX_PRODUCE_VERSION: i16 = 12;
/// Lowest Produce version that carries v2 record batches.
pub const MIN_PRODUCE_VERSION: i16 = 3;
/// Largest response frame accepted.
const MAX_FRAME: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("encoding/decoding a Kafka message: {0}")]
    Protocol(String),
    #[error(
        "broker supports Produce v{min}..=v{max}, this client needs v{MIN_PRODUCE_VERSION}..=v{MAX_PRODUCE_VERSION}"
    )]
    NoCommonVersion { min: i16, max: i16 },
    #[error("ApiVersions answered with error code {0}")]
    ApiVersions(i16),
}

fn proto(e: impl std::fmt::Display) -> KafkaError {
    KafkaError::Protocol(e.to_string())
}

/// Picks the Produce version from the broker's advertised range.
pub fn pick_produce_version(broker_min: i16, broker_max: i16) -> Result<i16, KafkaError> {
    let v = broker_max.min(MAX_PRODUCE_VERSION);
    if v < MIN_PRODUCE_VERSION || v < broker_min {
        return Err(KafkaError::NoCommonVersion {
            min: broker_min,
            max: broker_max,
        });
    }
    Ok(v)
}

/// One v2 record batch holding a single record with a `payload`-byte value.
pub fn record_batch(payload: usize) -> Result<Bytes, KafkaError> {
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
        key: None,
        value: Some(Bytes::from(vec![b'x'; payload])),
        headers: IndexMap::new(),
    };
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        std::iter::once(&record),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(proto)?;
    Ok(buf.freeze())
}

/// A size-prefixed request frame: header then body, both at the versions `api_key`/`version` need.
pub fn request_frame<M: Encodable + HeaderVersion>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &M,
) -> Result<Bytes, KafkaError> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("tollgate-load")));
    let mut buf = BytesMut::new();
    buf.put_u32(0);
    header
        .encode(&mut buf, M::header_version(version))
        .map_err(proto)?;
    body.encode(&mut buf, version).map_err(proto)?;
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// A producer connection with its request pre-encoded (only the correlation ID changes).
#[derive(Debug)]
pub struct KafkaConn {
    stream: TcpStream,
    version: i16,
    correlation: i32,
    body: ProduceRequest,
    read_buf: Vec<u8>,
}

impl KafkaConn {
    pub async fn open(addr: SocketAddr, topic: &str, payload: usize) -> Result<Self, KafkaError> {
        let mut stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let mut read_buf = Vec::new();
        let av = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("tollgate-load"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        stream
            .write_all(&request_frame(ApiKey::ApiVersions, 3, 0, &av)?)
            .await?;
        let mut frame = read_frame(&mut stream, &mut read_buf).await?;
        // ApiVersions responses always use header v0 (so old clients can read the error).
        ResponseHeader::decode(&mut frame, 0).map_err(proto)?;
        let resp = ApiVersionsResponse::decode(&mut frame, 3).map_err(proto)?;
        if resp.error_code != 0 {
            return Err(KafkaError::ApiVersions(resp.error_code));
        }
        let produce = resp
            .api_keys
            .iter()
            .find(|k| k.api_key == ApiKey::Produce as i16)
            .ok_or(KafkaError::NoCommonVersion { min: -1, max: -1 })?;
        let version = pick_produce_version(produce.min_version, produce.max_version)?;
        let body = ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(record_batch(payload)?)),
                    ]),
            ]);
        Ok(Self {
            stream,
            version,
            correlation: 1,
            body,
            read_buf,
        })
    }

    /// The Produce version negotiated with the broker.
    pub fn version(&self) -> i16 {
        self.version
    }

    /// Produces one record and waits for the acknowledgement; `false` on any failure.
    pub async fn produce(&mut self) -> bool {
        self.try_produce().await.unwrap_or(false)
    }

    async fn try_produce(&mut self) -> Result<bool, KafkaError> {
        self.correlation = self.correlation.wrapping_add(1);
        let id = self.correlation;
        let frame = request_frame(ApiKey::Produce, self.version, id, &self.body)?;
        self.stream.write_all(&frame).await?;
        let mut resp = read_frame(&mut self.stream, &mut self.read_buf).await?;
        let header =
            ResponseHeader::decode(&mut resp, ProduceResponse::header_version(self.version))
                .map_err(proto)?;
        if header.correlation_id != id {
            return Ok(false);
        }
        let body = ProduceResponse::decode(&mut resp, self.version).map_err(proto)?;
        Ok(produce_ok(&body))
    }
}

/// A produce succeeded when at least one partition answered and every partition's error code is 0.
pub fn produce_ok(resp: &ProduceResponse) -> bool {
    let mut parts = resp
        .responses
        .iter()
        .flat_map(|t| &t.partition_responses)
        .peekable();
    parts.peek().is_some() && parts.all(|p| p.error_code == 0)
}

async fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Bytes, KafkaError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(KafkaError::Protocol(format!(
            "response frame of {len} bytes is larger than {MAX_FRAME}"
        )));
    }
    buf.resize(len, 0);
    stream.read_exact(buf).await?;
    Ok(Bytes::copy_from_slice(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn version_choice() {
        assert_eq!(pick_produce_version(0, 9).unwrap(), 9);
        assert_eq!(pick_produce_version(3, 13).unwrap(), 12);
        assert!(pick_produce_version(0, 2).is_err());
        assert!(pick_produce_version(13, 13).is_err());
    }

    #[test]
    fn produce_errors_count_as_failures() {
        use kafka_protocol::messages::produce_response::{
            PartitionProduceResponse, TopicProduceResponse,
        };
        let resp = |codes: &[i16]| {
            ProduceResponse::default().with_responses(vec![
                TopicProduceResponse::default().with_partition_responses(
                    codes
                        .iter()
                        .map(|&c| PartitionProduceResponse::default().with_error_code(c))
                        .collect(),
                ),
            ])
        };
        assert!(produce_ok(&resp(&[0])));
        assert!(!produce_ok(&resp(&[0, 3])), "UNKNOWN_TOPIC_OR_PARTITION");
        assert!(!produce_ok(&resp(&[])));
        assert!(!produce_ok(&ProduceResponse::default()));
    }

    #[test]
    fn record_batch_round_trips() {
        let mut b = record_batch(100).unwrap();
        let set = RecordBatchDecoder::decode(&mut b).unwrap();
        assert_eq!(set.records.len(), 1);
        assert_eq!(set.records[0].value.as_ref().unwrap().len(), 100);
    }

    #[test]
    fn produce_frame_decodes_as_the_same_request() {
        let body = ProduceRequest::default().with_acks(1).with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_data(vec![
                    PartitionProduceData::default().with_records(Some(record_batch(3).unwrap())),
                ]),
        ]);
        for version in [3, 9, 12] {
            let mut f = request_frame(ApiKey::Produce, version, 7, &body).unwrap();
            assert_eq!(f.get_u32() as usize, f.len());
            let h = RequestHeader::decode(&mut f, ProduceRequest::header_version(version)).unwrap();
            assert_eq!(
                (h.request_api_key, h.request_api_version, h.correlation_id),
                (ApiKey::Produce as i16, version, 7)
            );
            let back = ProduceRequest::decode(&mut f, version).unwrap();
            assert_eq!(back, body, "v{version}");
        }
    }
}
