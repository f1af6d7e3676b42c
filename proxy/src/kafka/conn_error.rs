//! Why a Kafka connection closes, and what its flow record says about it.

use super::request::{FrameError, RequestHead};
use super::response::ResponseError;
use crate::flow::{DropReason, KafkaInfo, TrafficDirection, Verdict};

#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    #[error("request: {0}")]
    Frame(#[from] FrameError),
    #[error(
        "request: frame of {size} bytes not complete within {secs} s of its first byte \
         (--kafka-frame-timeout-secs): {received} bytes received{waiting}"
    )]
    FrameDeadline {
        size: usize,
        received: usize,
        secs: f64,
        waiting: &'static str,
    },
    #[error("request: {0}")]
    Budget(#[from] crate::kafka_state::budget::BudgetError),
    /// Recorded with the request's Kafka fields (`info`).
    #[error(
        "request: {key} v{version} request of {size} bytes denied from its header, its body not read: {reason}"
    )]
    HeadDenied {
        key: String,
        version: i16,
        size: usize,
        reason: String,
        drop_reason: DropReason,
        direction: Option<TrafficDirection>,
        info: Box<KafkaInfo>,
    },
    #[error("{0}")]
    Response(#[from] ResponseError),
    #[error("frame cut short by the {side} ({0})", side = .1)]
    Truncated(std::io::Error, &'static str),
    #[error(
        "broker response of {size} bytes exceeds the {limit}-byte limit (--kafka-max-response-bytes)"
    )]
    ResponseTooLarge { size: usize, limit: usize },
    #[error("broker response has correlation id {got}, expected {want}: responses out of order")]
    Correlation { got: i32, want: i32 },
    #[error("broker connection: {0}")]
    Upstream(std::io::Error),
}

impl ConnError {
    /// The verdict and drop reason of the record this error leaves, or `None` when a peer closing mid-stream
    /// ended the connection: that is how connections end, not an error worth a record.
    pub(super) fn outcome(&self) -> Option<(Verdict, DropReason)> {
        if let ConnError::Truncated(io, _) | ConnError::Upstream(io) = self
            && matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            )
        {
            return None;
        }
        Some(match self {
            ConnError::Frame(FrameError::TooLarge { .. })
            | ConnError::FrameDeadline { .. }
            | ConnError::Budget(_) => (Verdict::Dropped, DropReason::LimitExceeded),
            ConnError::Frame(_) => (Verdict::Dropped, DropReason::InvalidRequest),
            ConnError::HeadDenied { drop_reason, .. } => (Verdict::Dropped, *drop_reason),
            ConnError::Response(ResponseError::NoLocalResponse(_)) => {
                (Verdict::Dropped, DropReason::PolicyDenied)
            }
            ConnError::ResponseTooLarge { .. } => (Verdict::Error, DropReason::LimitExceeded),
            _ => (Verdict::Error, DropReason::UpstreamError),
        })
    }

    /// An unexpected end of the stream from `side` ("client" or "broker").
    pub(super) fn eof(side: &'static str) -> Self {
        ConnError::Truncated(std::io::ErrorKind::UnexpectedEof.into(), side)
    }
}

impl From<std::io::Error> for ConnError {
    fn from(e: std::io::Error) -> Self {
        ConnError::Truncated(e, "client")
    }
}

/// The error closing a connection whose large frame's header alone is denied: answering it like other denials
/// would need its body (the local response lists its topics), and reading that body is what this refusal avoids.
pub(super) fn head_denied(
    head: &RequestHead,
    size: usize,
    reason: String,
    drop_reason: DropReason,
    direction: Option<TrafficDirection>,
    error_code: i16,
) -> ConnError {
    ConnError::HeadDenied {
        key: format!("{:?}", head.api_key),
        version: head.api_version,
        size,
        reason,
        drop_reason,
        direction,
        info: Box::new(KafkaInfo {
            api_key: format!("{:?}", head.api_key),
            api_version: head.api_version,
            correlation_id: head.correlation_id,
            client_id: head.client_id.clone(),
            topics: Vec::new(),
            error_code,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_closes_leave_no_record_and_limits_are_drops() {
        let reset = ConnError::Truncated(std::io::ErrorKind::ConnectionReset.into(), "client");
        assert_eq!(reset.outcome(), None);
        let pipe = ConnError::Upstream(std::io::ErrorKind::BrokenPipe.into());
        assert_eq!(pipe.outcome(), None);
        assert_eq!(
            ConnError::eof("broker").outcome(),
            Some((Verdict::Error, DropReason::UpstreamError))
        );
        let deadline = ConnError::FrameDeadline {
            size: 10,
            received: 1,
            secs: 1.0,
            waiting: "",
        };
        assert_eq!(
            deadline.outcome(),
            Some((Verdict::Dropped, DropReason::LimitExceeded))
        );
        let too_large = ConnError::ResponseTooLarge { size: 2, limit: 1 };
        assert_eq!(
            too_large.outcome(),
            Some((Verdict::Error, DropReason::LimitExceeded))
        );
    }
}
