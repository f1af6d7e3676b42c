//! The HTTP family (HTTP/1.1, h2c, gRPC, WebSocket/Upgrade, CONNECT) as a tower stack per downstream connection:
//!
//! `PolicyLayer` (normalize the path, ask the current policy, answer denials, apply header actions, record the
//! flow) wraps `Forward` (send to the original destination through the marked, pooled upstream client and splice
//! upgraded connections). The decision itself is pure (`decision.rs`); this module only carries it out.
//!
//! Every request is checked against the policy that is current *when the request arrives*: keep-alive and HTTP/2
//! connections are not grandfathered across a policy reload.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tower::{Layer, Service};

use crate::body_rate::MinRateBody;
use crate::decision::{self, RequestDecision};
use crate::flow::{DropReason, FlowRecord, HttpInfo, L7Info, Verdict};
use crate::inputs::Proxy;
use crate::{grpc, header_actions, request_path};

pub use crate::body::{BoxError, ProxyBody};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The connection a request arrived on.
#[derive(Debug)]
pub struct ConnCtx {
    pub proxy: Arc<Proxy>,
    pub client: crate::decision::Downstream,
    pub dst: SocketAddr,
    /// How upstream connections are made: direct, or through another node's tunnel.
    pub dial: crate::upstream::Dial,
    /// Tells the framing guard whether a request asking to switch protocols was switched.
    pub upgrade: Arc<crate::request_framing::UpgradeSignal>,
    /// When requests last started or were answered (the connection's request-level idle clock).
    pub requests: crate::activity::RequestClock,
    /// Upgraded tunnels (WebSocket, CONNECT) spliced from this connection: they outlive hyper's connection task
    /// and keep the connection's permit, idle timeout and drain (`connection::serve_http` waits for them).
    pub tunnels: std::sync::Mutex<tokio::task::JoinSet<()>>,
    /// This connection's upstream client (looked up in the pool once).
    pub upstream: crate::upstream::ConnUpstream,
}

/// The HTTP denial body users of CiliumNetworkPolicy expect.
pub const ACCESS_DENIED: &str = "Access denied\r\n";

fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// `403 Forbidden`, `text/plain`, `Access denied\r\n`; the connection stays open.
pub fn http_denied() -> Response<ProxyBody> {
    text_response(StatusCode::FORBIDDEN, ACCESS_DENIED)
}

fn text_response(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// What the proxy answers itself, shaped for the client's protocol: gRPC clients get a gRPC status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalReply {
    Denied,
    BadRequest,
    BadGateway,
    /// The request body fell behind the minimum rate (408).
    TooSlow,
}

/// Pure mapping from a local reply to the response (gRPC: trailers-only with the matching grpc-status).
pub fn local_reply(kind: LocalReply, is_grpc: bool, detail: &str) -> Response<ProxyBody> {
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

/// Marks a response the `Forward` service built itself (for the flow verdict): the upstream failed, or the
/// request body fell behind the minimum rate.
#[derive(Debug, Clone)]
struct ForwardFailed {
    drop_reason: DropReason,
    detail: String,
}

/// Layer that puts policy enforcement in front of an inner HTTP service.
#[derive(Debug, Clone)]
pub struct PolicyLayer {
    pub ctx: Arc<ConnCtx>,
}

impl<S> Layer<S> for PolicyLayer {
    type Service = PolicyService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PolicyService {
            ctx: self.ctx.clone(),
            inner,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PolicyService<S> {
    ctx: Arc<ConnCtx>,
    inner: S,
}

fn version_label(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

/// Why a request's host is refused (400): the host the policy checks must be exactly the one the upstream gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("request has {0} Host headers; send exactly one (RFC 9112 section 3.2)")]
    Duplicate(usize),
    #[error(
        "request target names host {authority:?} but the Host header says {host:?}; they must agree"
    )]
    Mismatch { authority: String, host: String },
    #[error("Host header is not visible ASCII")]
    NotAscii,
}

/// The one host a request names: the URI authority (HTTP/2 `:authority`, absolute-form) or the Host header. A
/// request naming two different hosts, or carrying two Host headers, is refused: policy would check one and the
/// upstream could act on the other.
fn request_host<B>(req: &Request<B>) -> Result<String, HostError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    let extra = hosts.count();
    if extra > 0 {
        return Err(HostError::Duplicate(extra + 1));
    }
    let host = host
        .map(|h| h.to_str().map_err(|_| HostError::NotAscii))
        .transpose()?;
    match (req.uri().authority(), host) {
        (Some(a), Some(h)) if !a.as_str().eq_ignore_ascii_case(h) => Err(HostError::Mismatch {
            authority: a.as_str().to_string(),
            host: h.to_string(),
        }),
        (Some(a), _) => Ok(a.as_str().to_string()),
        (None, h) => Ok(h.unwrap_or("").to_string()),
    }
}

/// Header pairs for the policy query: names lower-case, repeated headers joined with ", ".
fn joined_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(headers.keys_len());
    for name in headers.keys() {
        let joined = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        out.push((name.as_str().to_string(), joined));
    }
    out
}

/// What policy matches as the path, and what is forwarded: the normalized path (CONNECT: the authority).
fn policy_target<B>(req: &Request<B>) -> Result<String, request_path::PathError> {
    if req.method() == Method::CONNECT {
        return Ok(req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default());
    }
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if req.method() == Method::OPTIONS && pq == "*" {
        return Ok("*".to_string());
    }
    request_path::normalize(pq)
}

/// Why the proxy answers a request itself. Turned into the response and the flow verdict in ONE place
/// ([`Refusal::reply`]), whichever phase refused.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// Malformed or ambiguous: path, host, upstream URI (400 / gRPC INVALID_ARGUMENT).
    Malformed(String),
    /// Denied by policy (403 / gRPC PERMISSION_DENIED).
    Denied {
        reason: String,
        drop_reason: DropReason,
    },
    /// The policy asked for a header change that cannot be made: fail closed (403, verdict ERROR).
    HeaderAction(String),
}

impl Refusal {
    fn reply(self, is_grpc: bool, rec: &mut FlowRecord) -> Response<ProxyBody> {
        let (verdict, drop_reason, kind, detail) = match self {
            Refusal::Malformed(d) => (
                Verdict::Dropped,
                DropReason::InvalidRequest,
                LocalReply::BadRequest,
                d,
            ),
            Refusal::Denied {
                reason,
                drop_reason,
            } => (Verdict::Dropped, drop_reason, LocalReply::Denied, reason),
            Refusal::HeaderAction(d) => (
                Verdict::Error,
                DropReason::InvalidRequest,
                LocalReply::Denied,
                d,
            ),
        };
        rec.verdict = verdict;
        rec.drop_reason = Some(drop_reason);
        let resp = local_reply(kind, is_grpc, &detail);
        rec.policy = detail;
        resp
    }
}

/// What the normalize phase hands on: the host and path that policy checks AND the upstream receives.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    path: String,
}

/// Phase 1, normalize: one host, one canonical path, hop-by-hop headers gone. Stripping comes first so that policy
/// sees, and header actions apply to, exactly what the upstream will receive: a `Connection` token can never
/// remove a header a policy added.
fn normalize<B>(req: &mut Request<B>, dst: SocketAddr) -> Result<Target, Refusal> {
    let mut host = request_host(req).map_err(|e| Refusal::Malformed(e.to_string()))?;
    if host.is_empty() {
        if req.version() == Version::HTTP_11 {
            return Err(Refusal::Malformed(
                "HTTP/1.1 request without a Host header (RFC 9112 section 3.2)".into(),
            ));
        }
        // HTTP/1.0 without Host: the upstream will be sent the address, so that is what policy checks.
        host = dst.to_string();
    }
    let path = policy_target(req).map_err(|e| Refusal::Malformed(e.to_string()))?;
    let is_connect = req.method() == Method::CONNECT;
    let keep_upgrade = !is_connect && wants_upgrade(req);
    strip_hop_by_hop(req.headers_mut(), keep_upgrade);
    Ok(Target { host, path })
}

/// Phase 2, authorize: the request against the snapshot current when it arrived. Allowed: the header actions.
fn authorize<B>(
    ctx: &ConnCtx,
    snapshot: &crate::policy_source::PolicySnapshot,
    req: &Request<B>,
    target: &Target,
    rec: &mut FlowRecord,
) -> Result<Vec<crate::policy_adapter::HeaderAction>, Refusal> {
    let headers = joined_headers(req.headers());
    let header_refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let d = decision::decide_request(
        snapshot,
        &ctx.client,
        ctx.dst,
        req.method().as_str(),
        &target.path,
        &target.host,
        &header_refs,
    );
    rec.traffic_direction = d.direction();
    match d {
        RequestDecision::Deny {
            reason,
            drop_reason,
            ..
        } => Err(Refusal::Denied {
            reason,
            drop_reason,
        }),
        RequestDecision::Forward {
            reason,
            header_actions,
            ..
        } => {
            rec.policy = reason;
            Ok(header_actions)
        }
    }
}

/// Phases 1 to 3 on one request: normalize, authorize, apply header actions, point it at the upstream.
fn admit<B>(
    ctx: &ConnCtx,
    snapshot: &crate::policy_source::PolicySnapshot,
    req: &mut Request<B>,
    rec: &mut FlowRecord,
    info: &mut HttpInfo,
) -> Result<(), Refusal> {
    let target = normalize(req, ctx.dst).inspect_err(|_| {
        info.url = format!("http://{}{}", raw_host(req), req.uri().path());
    })?;
    info.url = format!("http://{}{}", target.host, target.path);
    let actions = authorize(ctx, snapshot, req, &target, rec)?;
    info.headers = header_actions::apply(req.headers_mut(), &actions)
        .map_err(|e| Refusal::HeaderAction(format!("{}; {e}", rec.policy)))?;
    set_upstream_target(req, &target).map_err(Refusal::Malformed)
}

/// The host as the client sent it, for the record of a refused request.
fn raw_host<B>(req: &Request<B>) -> String {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            let h = req.headers().get(header::HOST)?;
            Some(String::from_utf8_lossy(h.as_bytes()).into_owned())
        })
        .unwrap_or_default()
}

impl<S> Service<Request<Incoming>> for PolicyService<S>
where
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<ProxyBody>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        let ctx = self.ctx.clone();
        // The ready clone goes into the future; `self.inner` stays for the next request (tower's clone idiom).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let start = Instant::now();
            let is_grpc = grpc::is_grpc(req.version(), req.headers());
            let asks_switch = asks_protocol_switch(&req);
            let is_connect = req.method() == Method::CONNECT;
            let http2 = req.version() == Version::HTTP_2;
            ctx.requests.request_started();
            let snapshot = ctx.proxy.policy.current();
            let mut rec = FlowRecord::new(
                Verdict::Forwarded,
                decision::source_endpoint(&snapshot, &ctx.client),
                decision::flow_endpoint(&snapshot, ctx.dst),
                if is_grpc { "gRPC" } else { "HTTP" },
            );
            ctx.client.stamp(&mut rec);
            // For Hubble's trace_context; the header is forwarded untouched.
            rec.trace_parent = req
                .headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            let mut info = HttpInfo {
                method: req.method().as_str().to_string(),
                protocol: version_label(req.version()).to_string(),
                ..Default::default()
            };
            // One snapshot per request: the record's endpoints and the decision come from the same generation.
            let admitted = admit(&ctx, &snapshot, &mut req, &mut rec, &mut info);
            drop(snapshot);
            let resp = match admitted {
                Err(refusal) => refusal.reply(is_grpc, &mut rec),
                Ok(()) => {
                    let Ok(resp) = inner.call(req).await;
                    if let Some(f) = resp.extensions().get::<ForwardFailed>() {
                        rec.verdict = if f.drop_reason == DropReason::UpstreamError {
                            Verdict::Error
                        } else {
                            Verdict::Dropped
                        };
                        rec.drop_reason = Some(f.drop_reason);
                        rec.policy = format!("{}; {}", rec.policy, f.detail);
                    }
                    resp
                }
            };
            let mut resp = resp;
            if asks_switch {
                ctx.upgrade
                    .settle(switched_protocols(is_connect, resp.status()));
            }
            if !http2 && ctx.proxy.draining.is_cancelled() {
                // Draining for a successor: the client learns it must reconnect from this response, before it
                // sends another request on a connection about to close.
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ctx.requests.responded();
            info.code = resp.status().as_u16();
            if is_grpc {
                info.grpc_status = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok()?.parse().ok());
            }
            rec.l7 = Some(L7Info {
                http: Some(info),
                ..Default::default()
            });
            rec.latency_ns = start.elapsed().as_nanos() as u64;
            ctx.proxy.flows.record(rec);
            Ok(resp)
        })
    }
}

/// Phase 3, point at the upstream: absolute URI (hyper's client needs one) whose authority is the checked host, the
/// *normalized* path, and (HTTP/1.1) a Host header equal to that host, so the upstream receives exactly what
/// policy checked. HTTP/2 carries the host as `:authority` only.
fn set_upstream_target<B>(req: &mut Request<B>, target: &Target) -> Result<(), String> {
    if req.method() == Method::CONNECT {
        return Ok(());
    }
    let Target { host, path } = target;
    let path = if path == "*" { "/" } else { path.as_str() };
    let uri: Uri = format!("http://{host}{path}").parse().map_err(|e| {
        format!("cannot build the upstream URI from host {host:?} and path {path:?}: {e}")
    })?;
    *req.uri_mut() = uri;
    if req.version() == Version::HTTP_2 {
        req.headers_mut().remove(header::HOST);
    } else {
        let value = HeaderValue::from_str(host).map_err(|e| format!("host {host:?}: {e}"))?;
        req.headers_mut().insert(header::HOST, value);
    }
    Ok(())
}

/// Hop-by-hop headers a proxy must not forward (RFC 9110 section 7.6.1), plus those named in `Connection`.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if keep_upgrade && name == header::UPGRADE {
            continue;
        }
        headers.remove(&name);
    }
    for name in [
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "trailer",
        "http2-settings",
    ] {
        headers.remove(name);
    }
    if let Some(te) = headers.get(header::TE)
        && !te.as_bytes().eq_ignore_ascii_case(b"trailers")
    {
        headers.remove(header::TE);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// An HTTP/1 request the framing guard treats as asking to switch protocols (it pauses after it until told).
fn asks_protocol_switch<B>(req: &Request<B>) -> bool {
    req.version() != Version::HTTP_2
        && (req.method() == Method::CONNECT || req.headers().contains_key(header::UPGRADE))
}

/// Whether a response switched the connection to a tunnel.
fn switched_protocols(is_connect: bool, status: StatusCode) -> bool {
    status == StatusCode::SWITCHING_PROTOCOLS || (is_connect && status.is_success())
}

/// HTTP/1.1 `Upgrade` other than `h2c`. An h2c upgrade is declined (the request is served as HTTP/1.1, which RFC
/// 9113 allows), because splicing an upgraded h2c connection would let its later requests bypass the per-request
/// policy checks.
fn wants_upgrade<B>(req: &Request<B>) -> bool {
    if req.version() != Version::HTTP_11 {
        return false;
    }
    let connection_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    let proto = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    connection_upgrade && !proto.is_empty() && !proto.trim().eq_ignore_ascii_case("h2c")
}

/// Sends allowed requests to the original destination.
#[derive(Debug, Clone)]
pub struct Forward {
    pub ctx: Arc<ConnCtx>,
}

impl Service<Request<Incoming>> for Forward {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<ProxyBody>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        let ctx = self.ctx.clone();
        Box::pin(async move {
            let is_grpc = grpc::is_grpc(req.version(), req.headers());
            let is_connect = req.method() == Method::CONNECT;
            let upgrade = is_connect || wants_upgrade(&req);
            let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
            let http2 = req.version() == Version::HTTP_2;
            // Hop-by-hop headers were stripped before the policy saw the request (`normalize`).
            *req.version_mut() = if http2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            };
            let client = ctx
                .upstream
                .client(&ctx.proxy.upstream, ctx.dst, http2, &ctx.dial);
            // A bodyless request can be replayed once if the upstream refused it unprocessed (HTTP/2 GOAWAY).
            let replay =
                (!upgrade && http_body::Body::is_end_stream(req.body())).then(|| replay_head(&req));
            let limits = &ctx.proxy.limits;
            let (grace, rate) = (limits.body_grace, limits.body_min_rate);
            let (parts, body) = req.into_parts();
            let body = MinRateBody::new(body, grace, rate);
            let body_too_slow = body.tripped();
            let req = Request::from_parts(parts, body.boxed_unsync());
            let mut result = client.request(req).await;
            if let (Err(e), Some(head)) = (&result, replay)
                && crate::upstream::refused_unprocessed(e)
            {
                tracing::debug!(dst = %ctx.dst, "upstream refused the request unprocessed ({e}); retrying once");
                result = client.request(head).await;
            }
            match result {
                Ok(mut resp) => {
                    let switched = switched_protocols(is_connect, resp.status());
                    if let (Some(down), true) = (downstream_upgrade, switched) {
                        let up = hyper::upgrade::on(&mut resp);
                        let mut tunnels = ctx.tunnels.lock().unwrap_or_else(|p| p.into_inner());
                        tunnels.spawn(async move {
                            match tokio::try_join!(down, up) {
                                Ok((d, u)) => {
                                    let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                                    let _ = crate::tcp::splice(&mut d, &mut u).await;
                                }
                                Err(e) => tracing::debug!("upgrade did not complete: {e}"),
                            }
                        });
                    } else {
                        strip_hop_by_hop(resp.headers_mut(), false);
                    }
                    Ok(resp.map(|b| b.map_err(BoxError::from).boxed_unsync()))
                }
                Err(e) => {
                    // HTTP/1 keeps the body's error as a source; HTTP/2 resets the stream and says only that.
                    let slow = crate::body_rate::too_slow(&e).or(body_too_slow.get());
                    let detail = slow.map_or_else(|| error_chain(&e), ToString::to_string);
                    let (kind, drop_reason) = match slow {
                        Some(_) => (LocalReply::TooSlow, DropReason::LimitExceeded),
                        None => (LocalReply::BadGateway, DropReason::UpstreamError),
                    };
                    tracing::debug!(dst = %ctx.dst, "upstream request failed: {detail}");
                    let mut resp = local_reply(kind, is_grpc, &detail);
                    resp.extensions_mut().insert(ForwardFailed {
                        drop_reason,
                        detail: format!("upstream: {detail}"),
                    });
                    Ok(resp)
                }
            }
        })
    }
}

/// A copy of a bodyless request's head with an empty body, for a replay.
fn replay_head<B>(req: &Request<B>) -> Request<crate::upstream::UpstreamBody> {
    let mut r = Request::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    r
}

/// `a: b: c` from an error and its sources.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
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

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn policy_target_is_the_normalized_path() {
        assert_eq!(
            policy_target(&req("GET", "/api/v1/../admin?x=1", &[])).unwrap(),
            "/api/admin?x=1"
        );
        assert_eq!(
            policy_target(&req("GET", "http://h/%2e%2e//admin", &[])).unwrap(),
            "/admin"
        );
        assert!(policy_target(&req("GET", "/a%2Fb", &[])).is_err());
        assert_eq!(
            policy_target(&req("CONNECT", "example.com:443", &[])).unwrap(),
            "example.com:443"
        );
        assert_eq!(policy_target(&req("OPTIONS", "*", &[])).unwrap(), "*");
    }

    #[test]
    fn the_upstream_gets_the_checked_host_and_normalized_path() {
        let dst: SocketAddr = "10.0.1.20:8080".parse().unwrap();
        let mut r = req("GET", "/api/v1/../admin", &[("host", "api")]);
        let t = normalize(&mut r, dst).unwrap();
        assert_eq!(
            t,
            Target {
                host: "api".into(),
                path: "/api/admin".into()
            }
        );
        set_upstream_target(&mut r, &t).unwrap();
        assert_eq!(r.uri().to_string(), "http://api/api/admin");
        assert_eq!(r.headers()["host"], "api");
        // Absolute form with a matching Host (any case): the authority is what both policy and upstream see.
        let mut r = req("GET", "http://API.example/x", &[("host", "api.example")]);
        let t = normalize(&mut r, dst).unwrap();
        set_upstream_target(&mut r, &t).unwrap();
        assert_eq!(r.headers()["host"], "API.example");
        assert_eq!(r.headers().get_all("host").iter().count(), 1);
        // HTTP/1.0 without Host: the address is the host, checked and sent.
        let mut r = req("GET", "/x", &[]);
        *r.version_mut() = Version::HTTP_10;
        let t = normalize(&mut r, dst).unwrap();
        assert_eq!(t.host, "10.0.1.20:8080");
        set_upstream_target(&mut r, &t).unwrap();
        assert_eq!(r.uri().to_string(), "http://10.0.1.20:8080/x");
    }

    /// The host policy checks is the one the upstream receives: two hosts in one request are refused.
    #[test]
    fn requests_naming_two_hosts_are_refused() {
        let dst: SocketAddr = "10.0.1.20:8080".parse().unwrap();
        let refused = |mut r: Request<()>| match normalize(&mut r, dst) {
            Err(Refusal::Malformed(why)) => why,
            other => panic!("{:?} {:?}: {other:?}", r.uri(), r.headers()),
        };
        let why = refused(req(
            "GET",
            "http://allowed.example/public/a",
            &[("host", "evil.internal")],
        ));
        assert!(why.contains("evil.internal"), "{why}");
        let why = refused(req(
            "GET",
            "/public/a",
            &[("host", "allowed.example"), ("host", "evil.internal")],
        ));
        assert!(why.contains("2 Host headers"), "{why}");
        // HTTP/2: `:authority` and a `host` header that disagree.
        let mut r = req(
            "GET",
            "http://allowed.example/public/a",
            &[("host", "evil.internal")],
        );
        *r.version_mut() = Version::HTTP_2;
        refused(r);
        let why = refused(req("GET", "/public/a", &[]));
        assert!(why.contains("without a Host"), "{why}");
    }

    /// A `Connection` token naming a header the policy adds cannot remove it: stripping comes before the actions.
    #[test]
    fn connection_tokens_are_stripped_before_header_actions() {
        use crate::policy_adapter::HeaderAction;
        let dst: SocketAddr = "10.0.1.20:8080".parse().unwrap();
        let mut r = req(
            "GET",
            "/",
            &[
                ("host", "api"),
                ("connection", "x-tenant"),
                ("x-tenant", "forged"),
            ],
        );
        normalize(&mut r, dst).unwrap();
        assert!(r.headers().get("x-tenant").is_none(), "{:?}", r.headers());
        header_actions::apply(
            r.headers_mut(),
            &[HeaderAction::Replace {
                name: "x-tenant".into(),
                value: "blue".into(),
            }],
        )
        .unwrap();
        assert_eq!(r.headers()["x-tenant"], "blue");
        assert!(r.headers().get("connection").is_none());
    }

    #[test]
    fn hop_by_hop_headers_are_stripped() {
        let mut h = req(
            "GET",
            "/",
            &[
                ("connection", "keep-alive, x-secret-hop"),
                ("x-secret-hop", "1"),
                ("keep-alive", "5"),
                ("te", "gzip"),
                ("x-end", "1"),
            ],
        )
        .headers()
        .clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            vec!["x-end"]
        );
        let mut h = req(
            "GET",
            "/",
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("te", "trailers"),
            ],
        )
        .headers()
        .clone();
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn upgrades_except_h2c_are_tunnelled() {
        assert!(wants_upgrade(&req(
            "GET",
            "/",
            &[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "websocket")
            ]
        )));
        assert!(!wants_upgrade(&req(
            "GET",
            "/",
            &[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c")
            ]
        )));
        assert!(!wants_upgrade(&req(
            "GET",
            "/",
            &[("upgrade", "websocket")]
        )));
    }

    #[test]
    fn headers_for_policy_are_joined_per_name() {
        let r = req("GET", "/", &[("X-A", "1"), ("x-a", "2"), ("b", "3")]);
        let mut j = joined_headers(r.headers());
        j.sort();
        assert_eq!(
            j,
            vec![
                ("b".to_string(), "3".to_string()),
                ("x-a".to_string(), "1, 2".to_string())
            ]
        );
    }
}
