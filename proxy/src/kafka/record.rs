//! Kafka flow records, built in one place from a typed outcome: one record per request (forwarded, or answered by
//! the proxy itself), and one for an error that closes a connection.

use std::time::Instant;

use super::conn_error::ConnError;
use super::request::KafkaRequest;
use crate::decision::Downstream;
use crate::flow::{DropReason, FlowEndpoint, FlowRecord, KafkaInfo, TrafficDirection, Verdict};
use crate::flow_record::{FlowBuilder, FlowOutcome};

/// What a request's record says whatever became of it: its Kafka fields, the decision's reason and direction,
/// and when it arrived (the record's latency runs from there to when its response went back).
#[derive(Debug)]
pub(super) struct RequestFacts {
    pub(super) info: KafkaInfo,
    pub(super) reason: String,
    pub(super) direction: Option<TrafficDirection>,
    pub(super) start: Instant,
}

impl RequestFacts {
    pub(super) fn new(
        req: &KafkaRequest,
        topics: Vec<String>,
        reason: String,
        direction: Option<TrafficDirection>,
        start: Instant,
    ) -> Self {
        RequestFacts {
            info: KafkaInfo {
                api_key: format!("{:?}", req.api_key),
                api_version: req.api_version,
                correlation_id: req.correlation_id,
                client_id: req.client_id.clone(),
                topics,
                error_code: 0,
            },
            reason,
            direction,
            start,
        }
    }
}

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Sent to the broker; its response (if any) went back to the client.
    Forwarded,
    /// The client got the proxy's error response (or, for a Metadata request naming a denied topic, the broker's
    /// response rewritten to carry one), or nothing at all for acks=0.
    Refused(DropReason),
}

/// The two ends of one Kafka connection, as every record of it names them.
pub(super) struct RecordEnds<'a> {
    pub(super) down: &'a Downstream,
    pub(super) src: FlowEndpoint,
    pub(super) dst: FlowEndpoint,
}

impl RecordEnds<'_> {
    fn builder(&self) -> FlowBuilder {
        FlowBuilder::between(self.src.clone(), self.dst.clone(), self.down, "Kafka")
    }

    /// The record of one request.
    pub(super) fn request(&self, facts: RequestFacts, outcome: Outcome) -> FlowRecord {
        let policy = facts.reason;
        let outcome = match outcome {
            Outcome::Forwarded => FlowOutcome::Forwarded { policy },
            Outcome::Refused(reason) => FlowOutcome::Dropped { reason, policy },
        };
        self.builder()
            .direction(facts.direction)
            .latency_since(facts.start)
            .kafka(facts.info)
            .finish(outcome)
    }

    /// The record of the error that closes the connection; `None` when a peer simply went away.
    pub(super) fn closed(&self, e: &ConnError) -> Option<FlowRecord> {
        let (verdict, reason) = e.outcome()?;
        let policy = format!("Kafka connection closed: {e}");
        let outcome = match verdict {
            Verdict::Dropped => FlowOutcome::Dropped { reason, policy },
            _ => FlowOutcome::Failed {
                reason: Some(reason),
                policy,
            },
        };
        let builder = match e {
            ConnError::HeadDenied {
                info, direction, ..
            } => self.builder().direction(*direction).kafka((**info).clone()),
            _ => self.builder(),
        };
        Some(builder.finish(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::request::{self, FrameError};
    use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, RequestHeader, RequestKind};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn ends(down: &Downstream) -> RecordEnds<'_> {
        RecordEnds {
            down,
            src: FlowEndpoint::new("10.0.0.1:40000".parse().unwrap(), 256),
            dst: FlowEndpoint::new("10.0.0.2:9092".parse().unwrap(), 257),
        }
    }

    fn api_versions() -> KafkaRequest {
        let mut buf = bytes::BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(ApiKey::ApiVersions as i16)
            .with_request_api_version(3)
            .with_correlation_id(9)
            .with_client_id(Some(StrBytes::from_static_str("w1")))
            .encode(&mut buf, ApiKey::ApiVersions.request_header_version(3))
            .unwrap();
        RequestKind::ApiVersions(ApiVersionsRequest::default())
            .encode(&mut buf, 3)
            .unwrap();
        request::decode(buf.freeze()).unwrap()
    }

    #[test]
    fn request_records_carry_the_outcome_and_the_kafka_fields() {
        let down = Downstream::plain("10.0.0.1:40000".parse().unwrap());
        let ends = ends(&down);
        let req = api_versions();
        let facts = |reason: &str| {
            RequestFacts::new(
                &req,
                vec!["events".into()],
                reason.into(),
                Some(TrafficDirection::Egress),
                Instant::now(),
            )
        };
        let fwd = ends.request(facts("allowed by r1"), Outcome::Forwarded);
        assert_eq!((fwd.verdict, fwd.drop_reason), (Verdict::Forwarded, None));
        assert_eq!(fwd.protocol, "Kafka");
        assert_eq!(fwd.policy, "allowed by r1");
        assert_eq!(fwd.traffic_direction, Some(TrafficDirection::Egress));
        let k = fwd.l7.unwrap().kafka.unwrap();
        assert_eq!(k.api_key, "ApiVersions");
        assert_eq!((k.api_version, k.correlation_id), (3, 9));
        assert_eq!(k.client_id.as_deref(), Some("w1"));
        assert_eq!(k.topics, ["events"]);
        let denied = ends.request(facts("no rule"), Outcome::Refused(DropReason::PolicyDenied));
        assert_eq!(
            (denied.verdict, denied.drop_reason),
            (Verdict::Dropped, Some(DropReason::PolicyDenied))
        );
    }

    #[test]
    fn closing_errors_are_recorded_unless_a_peer_went_away() {
        let down = Downstream::plain("10.0.0.1:40000".parse().unwrap());
        let ends = ends(&down);
        let reset = ConnError::Truncated(std::io::ErrorKind::ConnectionReset.into(), "client");
        assert!(ends.closed(&reset).is_none());
        let bad = ConnError::Frame(FrameError::UnknownApiKey(999));
        let rec = ends.closed(&bad).expect("a record");
        assert_eq!(
            (rec.verdict, rec.drop_reason),
            (Verdict::Dropped, Some(DropReason::InvalidRequest))
        );
        assert_eq!(
            rec.policy,
            "Kafka connection closed: request: unknown API key 999"
        );
        assert!(rec.l7.is_none());
    }
}
