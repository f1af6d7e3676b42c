//! One accepted connection: recover the original destination, decide at L3/L4 with the current policy, then
//! dispatch by what the policy says the port carries: drop, splice opaque TCP, serve the HTTP family, or Kafka.
//! DNS has its own listeners (`dns/`). Connections to pods of other nodes leave through the mTLS tunnel (`mesh.rs`:
//! the same pipeline, with a tunnel stream as upstream); tunnelled connections arriving from other nodes enter the
//! same pipeline through [`dispatch`] with the identity their certificate proved.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use crate::activity::{Activity, RequestClock, Tracked};
use crate::decision::{self, ConnectionPlan, Downstream};
use crate::flow::{DropReason, FlowEndpoint, FlowLog, FlowRecord, HttpInfo, L7Info, Verdict};
use crate::http::{ConnCtx, Forward, PolicyLayer};
use crate::limits::Limits;
use crate::linger::LingeringStream;
use crate::original_dst::OriginalDst;
use crate::policy_source::PolicySource;
use crate::request_framing::{FramingGuard, UpgradeSignal};
use crate::upstream::{Dial, UpstreamPool};

/// State shared by every connection of the daemon.
#[derive(Debug)]
pub struct Proxy {
    pub policy: Arc<PolicySource>,
    pub flows: Arc<FlowLog>,
    pub upstream: UpstreamPool,
    pub limits: Limits,
    pub original_dst: Box<dyn OriginalDst>,
    /// One permit per open downstream connection (`Limits::max_connections`).
    pub connections: Arc<Semaphore>,
    /// Kafka topic ids learned from Metadata responses (shared: clients learn ids on one connection and use them
    /// on another).
    pub kafka_topics: Arc<crate::kafka::TopicIds>,
    /// Memory for Kafka request frames being received, all connections together (`Limits::kafka_inflight_budget`).
    pub kafka_budget: Arc<crate::kafka::budget::FrameBudget>,
    /// The node-to-node mTLS tunnel (`--tunnel-listen`); `None` = every connection goes direct.
    pub mesh: Option<Arc<crate::mesh::Mesh>>,
    /// Cancelled when the drain after a handoff or SIGTERM begins: HTTP/1 responses then carry
    /// `Connection: close`, so busy keep-alive clients move to the successor on their own. HTTP/2 connections
    /// get GOAWAY only when the drain ends (an early GOAWAY made h2load, which does not retry refused streams,
    /// count errors in the upgrade e2e test).
    pub draining: CancellationToken,
}

pub(crate) fn endpoints(
    proxy: &Proxy,
    client: &Downstream,
    dst: SocketAddr,
) -> (FlowEndpoint, FlowEndpoint) {
    let snap = proxy.policy.current();
    (
        decision::source_endpoint(&snap, client),
        decision::flow_endpoint(&snap, dst),
    )
}

/// Closes with RST (SO_LINGER 0): a refused connection must not look like a clean, empty response.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
    drop(stream);
}

/// A downstream byte stream: an accepted TCP socket, or a CONNECT stream of the node-to-node tunnel.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// What the HTTP server reads and writes.
    type Http: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Closes the stream as a refusal (TCP: RST, so it never looks like a clean empty response).
    fn refuse(self);
    fn for_http(self) -> Self::Http;
}

impl ClientStream for TcpStream {
    /// A lingering close: a response written just before closing must not be cut by an RST.
    type Http = LingeringStream;
    fn refuse(self) {
        reset(self)
    }
    fn for_http(self) -> LingeringStream {
        LingeringStream::new(self)
    }
}

impl ClientStream for hyper_util::rt::TokioIo<hyper::upgrade::Upgraded> {
    type Http = Self;
    /// Dropping the stream resets the HTTP/2 stream; the tunnel connection and its other streams stay.
    fn refuse(self) {}
    fn for_http(self) -> Self {
        self
    }
}

/// Handles one accepted connection to completion. `permit` is `None` when the connection limit is exhausted.
pub async fn handle(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    client: SocketAddr,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    shutdown: CancellationToken,
) {
    // Responses are written in several small writes (head, body chunks); Nagle would hold them for the client's
    // delayed ACK.
    let _ = stream.set_nodelay(true);
    let dst = match proxy.original_dst.original_dst(&stream) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(%client, "refusing connection: {e}");
            let local = stream.local_addr().unwrap_or(client);
            let (s, d) = endpoints(&proxy, &Downstream::plain(client), local);
            let mut rec = FlowRecord::new(Verdict::Error, s, d, "TCP");
            rec.policy = e.to_string();
            proxy.flows.record(rec);
            reset(stream);
            return;
        }
    };
    // A local pod connecting to a pod of another node (or to a rule requiring authentication): through the
    // tunnel, as the pod's SVID.
    let outbound = proxy.mesh.as_ref().map(|m| {
        let snap = proxy.policy.current();
        // Only asked for a destination on this node (an extra verdict per such connection).
        let auth_required = || {
            matches!(
                decision::plan_connection(&snap, &Downstream::plain(client), dst),
                ConnectionPlan::Drop {
                    drop_reason: DropReason::AuthRequired,
                    ..
                }
            )
        };
        m.outbound(&snap.endpoints, client, dst, auth_required)
    });
    let (down, dial) = match outbound {
        None | Some(Ok(None)) => (Downstream::plain(client), Dial::Direct),
        Some(Ok(Some(route))) => route,
        Some(Err(e)) => {
            tracing::warn!(%client, %dst, "refusing connection: {e}");
            let (s, d) = endpoints(&proxy, &Downstream::plain(client), dst);
            let mut rec = FlowRecord::new(Verdict::Error, s, d, "TCP");
            rec.drop_reason = Some(DropReason::AuthRequired);
            rec.policy = format!("cannot authenticate to the destination node: {e}");
            proxy.flows.record(rec);
            reset(stream);
            return;
        }
    };
    dispatch(proxy, stream, down, dst, dial, permit, shutdown).await
}

/// Decides and serves one connection whose source and original destination are known: a local pod's (plain, or
/// leaving through the tunnel when `dial` says so) or one that arrived through the tunnel (`down.auth`).
pub async fn dispatch<S: ClientStream>(
    proxy: Arc<Proxy>,
    stream: S,
    down: Downstream,
    dst: SocketAddr,
    dial: Dial,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    shutdown: CancellationToken,
) {
    let client = down.addr;
    let plan = decision::plan_connection(&proxy.policy.current(), &down, dst);
    let (src_ep, dst_ep) = endpoints(&proxy, &down, dst);

    let Some(_permit) = permit else {
        let mut rec = FlowRecord::new(Verdict::Error, src_ep, dst_ep, "TCP");
        down.stamp(&mut rec);
        rec.drop_reason = Some(DropReason::LimitExceeded);
        rec.policy = format!(
            "connection limit {} reached (--max-connections)",
            proxy.limits.max_connections
        );
        let mut stream = stream;
        if matches!(plan, ConnectionPlan::Http { .. }) {
            // An HTTP/1 client reads this as 503; an h2 client sees a protocol error and retries elsewhere.
            let _ = stream
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 21\r\nconnection: close\r\n\r\nProxy connection limit")
                .await;
            rec.protocol = "HTTP".into();
            rec.l7 = Some(L7Info {
                http: Some(HttpInfo {
                    code: 503,
                    ..Default::default()
                }),
                kafka: None,
            });
        }
        proxy.flows.record(rec);
        let _ = stream.shutdown().await;
        return;
    };

    match plan {
        ConnectionPlan::Drop {
            reason,
            drop_reason,
            direction,
        } => {
            let mut rec = FlowRecord::new(Verdict::Dropped, src_ep, dst_ep, "TCP");
            down.stamp(&mut rec);
            rec.drop_reason = Some(drop_reason);
            rec.traffic_direction = direction;
            rec.policy = reason;
            proxy.flows.record(rec);
            stream.refuse();
        }
        ConnectionPlan::Unsupported {
            what,
            reason,
            direction,
        } => {
            // Fail closed: a port that needs an L7 parser this build lacks must not become an open TCP port.
            let mut rec = FlowRecord::new(Verdict::Error, src_ep, dst_ep, "TCP");
            down.stamp(&mut rec);
            rec.drop_reason = Some(DropReason::UnsupportedProtocol);
            rec.traffic_direction = direction;
            rec.policy = format!(
                "{reason}; {what} enforcement is not available in this build, connection refused"
            );
            proxy.flows.record(rec);
            stream.refuse();
        }
        ConnectionPlan::Splice { reason, direction } => {
            let start = Instant::now();
            let mut rec = FlowRecord::new(Verdict::Forwarded, src_ep, dst_ep, "TCP");
            down.stamp(&mut rec);
            rec.traffic_direction = direction;
            rec.policy = reason;
            match proxy.upstream.connect(dst, &dial).await {
                Err(e) => {
                    rec.verdict = Verdict::Error;
                    rec.drop_reason = Some(DropReason::UpstreamError);
                    rec.policy = format!("{}; {e}", rec.policy);
                    proxy.flows.record(rec);
                    stream.refuse();
                }
                Ok(mut upstream) => {
                    rec.latency_ns = start.elapsed().as_nanos() as u64;
                    proxy.flows.record(rec);
                    let activity = Activity::new();
                    let mut downstream = Tracked::new(stream, activity.clone());
                    tokio::select! {
                        _ = crate::tcp::splice(&mut downstream, &mut upstream) => {}
                        _ = activity.idle(proxy.limits.idle_timeout) => {
                            tracing::debug!(%client, %dst, "closing idle TCP connection");
                        }
                    }
                }
            }
        }
        ConnectionPlan::Http { .. } => {
            serve_http(proxy, stream.for_http(), down, dst, dial, shutdown).await
        }
        ConnectionPlan::Kafka { .. } => {
            crate::kafka::handler::serve(proxy, stream, down, dst, dial, shutdown).await
        }
    }
}

/// Serves HTTP/1.1 and HTTP/2 (prior knowledge) on one downstream connection until it closes, idles out, or the
/// daemon shuts down (then in-flight requests finish: graceful shutdown / GOAWAY).
async fn serve_http<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    proxy: Arc<Proxy>,
    stream: S,
    down: Downstream,
    dst: SocketAddr,
    dial: Dial,
    shutdown: CancellationToken,
) {
    let limits = proxy.limits.clone();
    let activity = Activity::new();
    let upgrade = Arc::new(UpgradeSignal::default());
    // Framing guard outermost on the read side: it refuses Transfer-Encoding + Content-Length heads (400).
    let io = TokioIo::new(FramingGuard::new(
        Tracked::new(stream, activity.clone()),
        limits.h1_max_buf_size(),
        upgrade.clone(),
    ));
    let ctx = Arc::new(ConnCtx {
        proxy: proxy.clone(),
        client: down.clone(),
        dst,
        dial,
        upgrade,
        requests: RequestClock::default(),
        tunnels: Default::default(),
    });
    let svc = ServiceBuilder::new()
        .layer(PolicyLayer { ctx: ctx.clone() })
        .service(Forward { ctx: ctx.clone() });
    let svc = TowerToHyperService::new(svc);

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.h1_max_buf_size())
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let mut closing = false;
    let first_request_due = tokio::time::sleep(limits.header_read_timeout);
    tokio::pin!(first_request_due);
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break Some(r),
            // No bytes either way, or (h2 PINGs, a body-less keep-alive) no request started: close gracefully.
            _ = activity.idle(limits.idle_timeout), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = ctx.requests.idle(limits.idle_timeout), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            // Protocol detection and the first request head are bounded like any later head.
            _ = &mut first_request_due, if !ctx.requests.started() => break None,
            _ = shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    match result {
        None => record_limit(
            &proxy,
            &down,
            dst,
            format!(
                "request not received in time: none started within {:?} of connecting \
                 (--header-read-timeout-secs): silent client, or protocol never detected",
                limits.header_read_timeout
            ),
        ),
        Some(Err(e)) => record_connection_error(&proxy, &down, dst, e.as_ref()),
        Some(Ok(())) => {}
    }
    // Upgraded tunnels (WebSocket, CONNECT) keep this connection's permit and obey its limits until they end.
    let tunnels = std::mem::take(&mut *ctx.tunnels.lock().unwrap_or_else(|p| p.into_inner()));
    serve_tunnels(tunnels, &activity, &limits, &shutdown).await;
}

/// Waits for the upgraded tunnels of one connection; closes them when idle past the idle timeout or when open
/// connections are asked to close (end of a drain).
async fn serve_tunnels(
    mut tunnels: tokio::task::JoinSet<()>,
    activity: &Activity,
    limits: &Limits,
    shutdown: &CancellationToken,
) {
    if tunnels.is_empty() {
        return;
    }
    tokio::select! {
        _ = async { while tunnels.join_next().await.is_some() {} } => {}
        _ = activity.idle(limits.idle_timeout) => tracing::debug!("closing idle upgraded connection"),
        _ = shutdown.cancelled() => tracing::debug!("closing upgraded connection: shutting down"),
    }
    tunnels.abort_all();
}

fn record_limit(proxy: &Proxy, down: &Downstream, dst: SocketAddr, why: String) {
    let (s, d) = endpoints(proxy, down, dst);
    let mut rec = FlowRecord::new(Verdict::Dropped, s, d, "HTTP");
    down.stamp(&mut rec);
    rec.drop_reason = Some(DropReason::LimitExceeded);
    rec.policy = why;
    proxy.flows.record(rec);
}

/// hyper answers malformed or oversized HTTP/1 heads itself (400 / 431) and then reports the error here; the flow
/// log still needs a record of it. Clean closes and client resets are not flows.
fn record_connection_error(
    proxy: &Proxy,
    down: &Downstream,
    dst: SocketAddr,
    e: &(dyn std::error::Error + Send + Sync + 'static),
) {
    let Some(h) = e.downcast_ref::<hyper::Error>() else {
        tracing::debug!(client = %down.addr, %dst, "HTTP connection error: {e}");
        return;
    };
    let (code, reason, what) = if h.is_parse_too_large() {
        (
            431,
            DropReason::LimitExceeded,
            "request head too large (--max-header-bytes / --max-headers)",
        )
    } else if h.is_parse() {
        (400, DropReason::InvalidRequest, "malformed HTTP request")
    } else if h.is_timeout() {
        (
            0,
            DropReason::LimitExceeded,
            "request head not received in time (--header-read-timeout-secs)",
        )
    } else {
        tracing::debug!(client = %down.addr, %dst, "HTTP connection ended: {}", crate::http::error_chain(h));
        return;
    };
    let (s, d) = endpoints(proxy, down, dst);
    let mut rec = FlowRecord::new(Verdict::Dropped, s, d, "HTTP");
    down.stamp(&mut rec);
    rec.drop_reason = Some(reason);
    rec.policy = format!("{what}: {h}");
    rec.l7 = Some(L7Info {
        http: Some(HttpInfo {
            code,
            protocol: "HTTP/1.1".into(),
            ..Default::default()
        }),
        kafka: None,
    });
    proxy.flows.record(rec);
}
