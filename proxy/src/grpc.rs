//! gRPC on top of the HTTP family: detection and the shape of a policy denial a gRPC client understands.
//!
//! Policy treats gRPC as HTTP `POST /pkg.Service/Method`; only the answer differs: a denied gRPC call gets HTTP 200,
//! trailers-only (one HEADERS frame with END_STREAM), `grpc-status: 7` (PERMISSION_DENIED) and a `grpc-message`.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, Version, header};
use http_body_util::Empty;

/// gRPC PERMISSION_DENIED.
pub const PERMISSION_DENIED: u32 = 7;
/// gRPC UNAVAILABLE, for upstream failures.
pub const UNAVAILABLE: u32 = 14;
/// gRPC INVALID_ARGUMENT, for requests the proxy refuses to parse.
pub const INVALID_ARGUMENT: u32 = 3;
/// gRPC `DEADLINE_EXCEEDED`.
pub const DEADLINE_EXCEEDED: u32 = 4;

/// A request is gRPC when it is HTTP/2 and its content type is `application/grpc` or `application/grpc+<codec>`.
pub fn is_grpc(version: Version, headers: &HeaderMap) -> bool {
    if version != Version::HTTP_2 {
        return false;
    }
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let ct = ct.trim().to_ascii_lowercase();
            ct == "application/grpc"
                || ct.starts_with("application/grpc+")
                || ct.starts_with("application/grpc;")
        })
        .unwrap_or(false)
}

/// A trailers-only gRPC response carrying `status` and `message` (percent-encoded as the gRPC spec requires).
pub fn status_response(status: u32, message: &str) -> Response<Empty<Bytes>> {
    let mut resp = Response::new(Empty::new());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(status));
    let encoded = percent_encoding::utf8_percent_encode(message, GRPC_MESSAGE_ESCAPES).to_string();
    if let Ok(v) = HeaderValue::from_str(&encoded) {
        h.insert("grpc-message", v);
    }
    resp
}

/// gRPC's grpc-message encoding: everything outside printable ASCII, plus `%` itself, is percent-encoded.
const GRPC_MESSAGE_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body;

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        h
    }

    #[test]
    fn detection_needs_http2_and_grpc_content_type() {
        assert!(is_grpc(Version::HTTP_2, &headers("application/grpc")));
        assert!(is_grpc(Version::HTTP_2, &headers("application/grpc+proto")));
        assert!(is_grpc(Version::HTTP_2, &headers("Application/GRPC")));
        assert!(!is_grpc(Version::HTTP_11, &headers("application/grpc")));
        assert!(!is_grpc(Version::HTTP_2, &headers("application/grpc-web")));
        assert!(!is_grpc(Version::HTTP_2, &headers("application/json")));
        assert!(!is_grpc(Version::HTTP_2, &HeaderMap::new()));
    }

    #[test]
    fn denial_is_trailers_only_status_7() {
        let resp = status_response(PERMISSION_DENIED, "denied by policy: no rule matched");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "7");
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert_eq!(
            resp.headers()["grpc-message"],
            "denied by policy: no rule matched"
        );
        // An empty body that reports end-of-stream makes hyper send HEADERS with END_STREAM: trailers-only.
        assert!(resp.body().is_end_stream());
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        let resp = status_response(PERMISSION_DENIED, "100% d\u{e9}nied\n");
        assert_eq!(resp.headers()["grpc-message"], "100%25 d%C3%A9nied%0A");
    }
}
