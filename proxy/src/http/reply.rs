//! Why the proxy answers a request itself ([`Refusal`], whichever layer refused) and the one mapping from a
//! refusal to the local reply the client gets (shaped for its protocol: gRPC clients get a gRPC status) and to
//! the flow outcome.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};

use crate::body::ProxyBody;
use crate::flow::DropReason;
use crate::flow_record::FlowOutcome;
use crate::grpc;

/// The HTTP denial body users of CiliumNetworkPolicy expect.
pub const ACCESS_DENIED: &str = "Access denied\r\n";

/// Why the proxy answers a request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed or ambiguous: path, host, upstream URI (400 / gRPC INVALID_ARGUMENT).
    Malformed(String),
    /// Denied by policy (403 / gRPC PERMISSION_DENIED).
    Denied {
        reason: String,
        drop_reason: DropReason,
    },
    /// The policy asked for a header change that cannot be made: fail closed (403, verdict ERROR).
    HeaderAction(String),
    /// The upstream could not be reached or failed (502 / gRPC UNAVAILABLE, verdict ERROR).
    Upstream(String),
    /// The request body fell behind the minimum rate (408 / gRPC DEADLINE_EXCEEDED).
    TooSlow(String),
}

impl Refusal {
    /// The client's reply and the flow outcome. `allowed_by` is the rule that allowed the request, for refusals
    /// that happen after the decision (the upstream's failures).
    pub fn reply(self, is_grpc: bool, allowed_by: String) -> (Response<ProxyBody>, FlowOutcome) {
        let (kind, detail) = match &self {
            Refusal::Malformed(d) => (LocalReply::BadRequest, d),
            Refusal::Denied { reason, .. } => (LocalReply::Denied, reason),
            Refusal::HeaderAction(d) => (LocalReply::Denied, d),
            Refusal::Upstream(d) => (LocalReply::BadGateway, d),
            Refusal::TooSlow(d) => (LocalReply::TooSlow, d),
        };
        let resp = local_reply(kind, is_grpc, detail);
        let outcome = match self {
            Refusal::Malformed(d) => dropped(DropReason::InvalidRequest, d),
            Refusal::Denied {
                reason,
                drop_reason,
            } => dropped(drop_reason, reason),
            Refusal::HeaderAction(d) => FlowOutcome::Failed {
                reason: Some(DropReason::InvalidRequest),
                policy: d,
            },
            Refusal::Upstream(d) => FlowOutcome::Failed {
                reason: Some(DropReason::UpstreamError),
                policy: format!("{allowed_by}; upstream: {d}"),
            },
            Refusal::TooSlow(d) => dropped(
                DropReason::LimitExceeded,
                format!("{allowed_by}; upstream: {d}"),
            ),
        };
        (resp, outcome)
    }
}

fn dropped(reason: DropReason, policy: String) -> FlowOutcome {
    FlowOutcome::Dropped { reason, policy }
}

/// The kinds of answer the proxy gives itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalReply {
    Denied,
    BadRequest,
    BadGateway,
    /// The request body fell behind the minimum rate (408).
    TooSlow,
}

/// Pure mapping from a local reply to the response (gRPC: trailers-only with the matching grpc-status).
fn local_reply(kind: LocalReply, is_grpc: bool, detail: &str) -> Response<ProxyBody> {
    if is_grpc {
        let (status, msg) = match kind {
            LocalReply::Denied => (
                grpc::PERMISSION_DENIED,
                format!("request denied by policy: {detail}"),
            ),
            LocalReply::BadRequest => (
                grpc::INVALID_ARGUMENT,
                format!("request refused by proxy: {detail}"),
            ),
            LocalReply::BadGateway => {
                (grpc::UNAVAILABLE, format!("upstream unavailable: {detail}"))
            }
            LocalReply::TooSlow => (
                grpc::DEADLINE_EXCEEDED,
                format!("request refused by proxy: {detail}"),
            ),
        };
        return grpc::status_response(status, &msg)
            .map(|b| b.map_err(|never| match never {}).boxed_unsync());
    }
    match kind {
        LocalReply::Denied => http_denied(),
        LocalReply::BadRequest => text_response(
            StatusCode::BAD_REQUEST,
            &format!("Bad request: {detail}\r\n"),
        ),
        LocalReply::BadGateway => {
            text_response(StatusCode::BAD_GATEWAY, "Upstream unavailable\r\n")
        }
        LocalReply::TooSlow => {
            text_response(StatusCode::REQUEST_TIMEOUT, "Request body too slow\r\n")
        }
    }
}

pub(super) fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// `403 Forbidden`, `text/plain`, `Access denied\r\n`; the connection stays open.
pub fn http_denied() -> Response<ProxyBody> {
    text_response(StatusCode::FORBIDDEN, ACCESS_DENIED)
}

fn text_response(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from(body.to_string()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// A response body that is empty, for callers that need one (e.g. connection-level 503).
pub fn empty_response(status: StatusCode) -> Response<ProxyBody> {
    let mut r = Response::new(empty());
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(resp: Response<ProxyBody>) -> Bytes {
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn http_denial_is_403_text_access_denied() {
        let resp = local_reply(LocalReply::Denied, false, "no rule");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(resp.headers()["content-type"], "text/plain");
        assert_eq!(body_of(resp).await, "Access denied\r\n");
    }

    #[tokio::test]
    async fn grpc_denial_is_trailers_only_permission_denied() {
        let resp = local_reply(LocalReply::Denied, true, "no rule matched");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "7");
        assert!(
            resp.headers()["grpc-message"]
                .to_str()
                .unwrap()
                .contains("no rule matched")
        );
        use http_body::Body;
        assert!(resp.body().is_end_stream());
    }

    #[test]
    fn grpc_bad_request_and_bad_gateway_map_to_grpc_codes() {
        assert_eq!(
            local_reply(LocalReply::BadRequest, true, "x").headers()["grpc-status"],
            "3"
        );
        assert_eq!(
            local_reply(LocalReply::BadGateway, true, "x").headers()["grpc-status"],
            "14"
        );
        assert_eq!(
            local_reply(LocalReply::BadRequest, false, "x").status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            local_reply(LocalReply::BadGateway, false, "x").status(),
            StatusCode::BAD_GATEWAY
        );
    }

    /// Refusals after the decision keep the allowing rule in the record, then say what failed.
    #[tokio::test]
    async fn refusals_map_to_one_reply_and_one_outcome() {
        let (resp, outcome) =
            Refusal::Upstream("connection refused".into()).reply(false, "allowed by rule 1".into());
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(body_of(resp).await, "Upstream unavailable\r\n");
        assert_eq!(
            outcome,
            FlowOutcome::Failed {
                reason: Some(DropReason::UpstreamError),
                policy: "allowed by rule 1; upstream: connection refused".into()
            }
        );
        let (resp, outcome) = Refusal::Malformed("bad path".into()).reply(true, String::new());
        assert_eq!(resp.headers()["grpc-status"], "3");
        assert_eq!(
            outcome,
            dropped(DropReason::InvalidRequest, "bad path".into())
        );
        let (resp, outcome) = Refusal::TooSlow("slow".into()).reply(false, "r".into());
        assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(
            outcome,
            dropped(DropReason::LimitExceeded, "r; upstream: slow".into())
        );
    }
}
