//! One accepted connection: recover the original destination, decide at L3/L4 with the current policy, then
//! dispatch by what the policy says the port carries: drop, splice opaque TCP, serve the HTTP family, or Kafka.
//! DNS has its own listeners (`dns/`). Connections to pods of other nodes leave through the mTLS tunnel (`mesh.rs`:
//! the same pipeline, with a tunnel stream as upstream); tunnelled connections arriving from other nodes enter the
//! same pipeline through [`dispatch`] with the identity their certificate proved.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::activity::{Activity, RequestClock, Tracked};
use crate::decision::{self, ConnectionPlan, Downstream};
use crate::flow::{DropReason, HttpInfo};
use crate::flow_record::FlowOutcome;
use crate::h2_refusal::{Refusal, RefusalLog};
use crate::h2_watch::H2Watch;
use crate::http::ConnCtx;
use crate::http_detect::{self, Prefixed};
use crate::inputs::{Accepted, ClientStream, Proxy, reset};
use crate::keepalive::{Park, ParkFlag, Parkable};
use crate::limits::Limits;
use crate::original_dst::OriginalDst;
use crate::request_framing::{FramingGuard, FramingRefusals};
use crate::upstream::Dial;

/// What serves one connection once its L3/L4 decision is made, boxed: a connection's task is only as large as
/// what it holds for the connection's whole life (a future's state is as large as its largest step), so each step
/// that needs room holds it in its own box, freed when the step ends.
pub type Serving = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Handles one accepted connection to completion. `permit` is `None` when the connection limit is exhausted; it is
/// held here, for the connection's life.
pub async fn handle(
    proxy: Arc<Proxy>,
    original_dst: Arc<dyn OriginalDst>,
    stream: TcpStream,
    client: SocketAddr,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    shutdown: CancellationToken,
) {
    let serving = accept(
        proxy,
        &*original_dst,
        stream,
        client,
        permit.is_some(),
        shutdown,
    );
    if let Some(serving) = serving {
        serving.await
    }
}

/// An accepted connection's first steps, which need no waiting: its original destination, and for a pod of another
/// node the tunnel route; then [`dispatch`].
fn accept(
    proxy: Arc<Proxy>,
    original_dst: &dyn OriginalDst,
    stream: TcpStream,
    client: SocketAddr,
    has_permit: bool,
    shutdown: CancellationToken,
) -> Option<Serving> {
    // Responses are written in several small writes (head, body chunks); Nagle would hold them for the client's
    // delayed ACK.
    let _ = stream.set_nodelay(true);
    let dst = match original_dst.original_dst(&stream) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(%client, "refusing connection: {e}");
            let local = stream.local_addr().unwrap_or(client);
            let flow = proxy.flow(&Downstream::plain(client), local, "TCP");
            proxy.flows.record(flow.finish(FlowOutcome::Failed {
                reason: None,
                policy: e.to_string(),
            }));
            reset(stream);
            return None;
        }
    };
    let (down, dial) = match outbound_route(&proxy, client, dst) {
        Ok(route) => route,
        Err(e) => {
            tracing::warn!(%client, %dst, "refusing connection: {e}");
            let flow = proxy.flow(&Downstream::plain(client), dst, "TCP");
            proxy.flows.record(flow.finish(FlowOutcome::Failed {
                reason: Some(DropReason::AuthRequired),
                policy: format!("cannot authenticate to the destination node: {e}"),
            }));
            reset(stream);
            return None;
        }
    };
    let conn = Accepted {
        proxy,
        down,
        dst,
        dial,
        shutdown,
    };
    dispatch(conn, stream, has_permit)
}

/// A local pod connecting to a pod of another node (or to a rule requiring authentication) goes through the
/// tunnel, as the pod's SVID; anything else directly. `Err`: it must go through the tunnel and cannot.
fn outbound_route(
    proxy: &Proxy,
    client: SocketAddr,
    dst: SocketAddr,
) -> Result<(Downstream, Dial), String> {
    let Some(mesh) = proxy.mesh.as_ref() else {
        return Ok((Downstream::plain(client), Dial::Direct));
    };
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
    Ok(mesh
        .outbound(&snap.endpoints, client, dst, auth_required)?
        .unwrap_or((Downstream::plain(client), Dial::Direct)))
}

/// Decides one connection whose source and original destination are known: a local pod's (plain, or leaving
/// through the tunnel when `dial` says so) or one that arrived through the tunnel (`down.auth`). Refusals are done
/// here; what serves an allowed connection is returned. `has_permit`: the caller holds a connection permit for the
/// connection's life (without one, the connection is refused as over the limit).
pub fn dispatch<S: ClientStream>(conn: Accepted, stream: S, has_permit: bool) -> Option<Serving> {
    let (proxy, down, dst) = (&conn.proxy, &conn.down, conn.dst);
    let plan = decision::plan_connection(&proxy.policy.current(), down, dst);
    if !has_permit {
        return Some(Box::pin(async move {
            refuse_over_limit(&conn.proxy, stream, &conn.down, conn.dst, &plan).await
        }));
    }
    match plan {
        ConnectionPlan::Drop {
            reason,
            drop_reason,
            direction,
        } => {
            let outcome = FlowOutcome::Dropped {
                reason: drop_reason,
                policy: reason,
            };
            refuse_recorded(proxy, stream, down, dst, direction, outcome);
            None
        }
        ConnectionPlan::Unsupported {
            what,
            reason,
            direction,
        } => {
            // Fail closed: a port that needs an L7 parser this build lacks must not become an open TCP port.
            let outcome = FlowOutcome::Failed {
                reason: Some(DropReason::UnsupportedProtocol),
                policy: format!(
                    "{reason}; {what} enforcement is not available in this build, connection refused"
                ),
            };
            refuse_recorded(proxy, stream, down, dst, direction, outcome);
            None
        }
        ConnectionPlan::Splice { reason, direction } => {
            Some(Box::pin(splice(conn, stream, reason, direction)))
        }
        // Per request records name their own rule; the connection's reason is not kept for its life.
        ConnectionPlan::Http { .. } => Some(Box::pin(serve_http(conn, stream.for_http()))),
        ConnectionPlan::Kafka { .. } => Some(Box::pin(crate::kafka::handler::serve(conn, stream))),
    }
}

/// Records the TCP flow of a connection refused before any byte moved, then refuses it.
fn refuse_recorded<S: ClientStream>(
    proxy: &Proxy,
    stream: S,
    down: &Downstream,
    dst: SocketAddr,
    direction: Option<crate::flow::TrafficDirection>,
    outcome: FlowOutcome,
) {
    let flow = proxy.flow(down, dst, "TCP").direction(direction);
    proxy.flows.record(flow.finish(outcome));
    stream.refuse();
}

/// Opaque TCP allowed at L3/L4: one upstream connection, bytes copied both ways until either side closes or the
/// connection idles out.
async fn splice<S: ClientStream>(
    conn: Accepted,
    stream: S,
    reason: String,
    direction: Option<crate::flow::TrafficDirection>,
) {
    let Accepted {
        proxy,
        down,
        dst,
        dial,
        ..
    } = conn;
    let start = Instant::now();
    let flow = proxy.flow(&down, dst, "TCP").direction(direction);
    match proxy.upstream.connect(dst, &dial).await {
        Err(e) => {
            proxy.flows.record(flow.finish(FlowOutcome::Failed {
                reason: Some(DropReason::UpstreamError),
                policy: format!("{reason}; {e}"),
            }));
            stream.refuse();
        }
        Ok(mut upstream) => {
            let flow = flow.latency_since(start);
            proxy
                .flows
                .record(flow.finish(FlowOutcome::Forwarded { policy: reason }));
            let activity = Activity::new();
            let mut downstream = Tracked::new(stream, activity.clone());
            tokio::select! {
                _ = crate::tcp::splice(&mut downstream, &mut upstream) => {}
                _ = activity.idle(proxy.limits.idle_timeout) => {
                    tracing::debug!(client = %down.addr, %dst, "closing idle TCP connection");
                }
            }
        }
    }
}

/// Over `--max-connections`: an HTTP port answers 503 (then a lingering close), any other port is closed; both
/// with a LIMIT_EXCEEDED record.
async fn refuse_over_limit<S: ClientStream>(
    proxy: &Proxy,
    mut stream: S,
    down: &Downstream,
    dst: SocketAddr,
    plan: &ConnectionPlan,
) {
    let outcome = FlowOutcome::Failed {
        reason: Some(DropReason::LimitExceeded),
        policy: format!(
            "connection limit {} reached (--max-connections)",
            proxy.limits.max_connections
        ),
    };
    if matches!(plan, ConnectionPlan::Http { .. }) {
        // An HTTP/1 client reads this as 503; an h2 client sees a protocol error and retries elsewhere. The
        // HTTP stream closes lingeringly: a request arriving after the answer must not become an RST that
        // destroys the answer in the client's receive buffer.
        let mut http = stream.for_http();
        let _ = http
            .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 22\r\nconnection: close\r\n\r\nProxy connection limit")
            .await;
        let flow = proxy.flow(down, dst, "HTTP").http(HttpInfo {
            code: 503,
            ..Default::default()
        });
        proxy.flows.record(flow.finish(outcome));
        let _ = http.flush().await;
        return;
    }
    proxy
        .flows
        .record(proxy.flow(down, dst, "TCP").finish(outcome));
    let _ = stream.shutdown().await;
}

/// Serves HTTP/1.1 or HTTP/2 (prior knowledge), as the first bytes tell, on one downstream connection until it
/// closes, idles out, or the daemon shuts down (then in-flight requests finish: graceful shutdown / GOAWAY).
/// Two boxed steps, each freed when it ends: detection, then the protocol's own serving.
fn serve_http<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    conn: Accepted,
    stream: S,
) -> impl Future<Output = ()> + Send {
    let detecting = Box::pin(detect_http(conn, stream));
    // Holds only the step it awaits (the arguments went into `detecting`).
    async move {
        match detecting.await {
            Some(Detected::Http2(conn, io)) => Box::pin(conn.serve_h2(io)).await,
            Some(Detected::Http1(conn, io)) => Box::pin(conn.serve_h1(io)).await,
            None => {}
        }
    }
}

/// An HTTP connection whose protocol the first bytes told, and its stream with those bytes still to be read.
enum Detected<T> {
    Http1(HttpConn, Prefixed<T>),
    Http2(HttpConn, Prefixed<T>),
}

/// Reads the first bytes, bounded like any later request head; `None`: the connection ended or timed out first
/// (recorded when it was late).
async fn detect_http<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    accepted: Accepted,
    stream: S,
) -> Option<Detected<Tracked<S>>> {
    let (proxy, down, dst) = (&accepted.proxy, &accepted.down, accepted.dst);
    let activity = Activity::new();
    let mut io = Tracked::new(stream, activity.clone());
    let first_request_due = tokio::time::Instant::now() + proxy.limits.header_read_timeout;
    let sniffed = tokio::select! {
        r = http_detect::sniff(&mut io) => r,
        _ = tokio::time::sleep_until(first_request_due) => {
            record_first_request_late(proxy, down, dst);
            return None;
        }
        _ = accepted.shutdown.cancelled() => return None,
    };
    let sniffed = match sniffed {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => return None,
        Err(e) => {
            tracing::debug!(client = %down.addr, %dst, "HTTP connection ended before a request: {e}");
            return None;
        }
    };
    let ctx = Arc::new(ConnCtx {
        proxy: accepted.proxy,
        client: accepted.down,
        dst,
        dial: accepted.dial,
        upgrade: Arc::default(),
        requests: RequestClock::default(),
        tunnels: Default::default(),
        upstream: Default::default(),
        endpoints: Default::default(),
    });
    let conn = HttpConn {
        ctx,
        activity,
        first_request_due,
        shutdown: accepted.shutdown,
    };
    let http2 = sniffed.is_http2();
    let io = Prefixed::new(io, sniffed);
    Some(if http2 {
        Detected::Http2(conn, io)
    } else {
        Detected::Http1(conn, io)
    })
}

/// One downstream HTTP connection whose protocol is known.
struct HttpConn {
    ctx: Arc<ConnCtx>,
    activity: Activity,
    first_request_due: tokio::time::Instant,
    shutdown: CancellationToken,
}

type HttpService = TowerToHyperService<crate::http::HttpStack>;
/// The I/O of an HTTP/1 connection, as hyper's sessions and the parked wait see it.
type H1Io<T> = Parkable<FramingGuard<T>>;
type H1Session<T> =
    hyper::server::conn::http1::UpgradeableConnection<TokioIo<H1Io<T>>, HttpService>;

impl HttpConn {
    fn service(&self) -> HttpService {
        TowerToHyperService::new(crate::http::service(self.ctx.clone()))
    }

    /// HTTP/1.1 as a run of hyper sessions on one socket: each ends when the connection closes, or when it idles
    /// between requests and is parked (`keepalive.rs`), so an idle keep-alive connection holds no hyper state.
    /// Not an `async fn`: one of those keeps its arguments twice (as given and as moved into its body), and this
    /// future lives as long as the connection.
    fn serve_h1<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        self,
        io: T,
    ) -> impl Future<Output = ()> + Send {
        let limits = &self.ctx.proxy.limits;
        // Framing guard outermost on the read side: it refuses Transfer-Encoding + Content-Length heads (400).
        let guard = FramingGuard::new(io, limits.h1_max_buf_size(), self.ctx.upgrade.clone());
        let smuggling = guard.refusals();
        let park = Park {
            flag: ParkFlag::default(),
            between_messages: guard.between_messages(),
        };
        let mut io = Parkable::new(guard, park.flag.clone());
        async move {
            let mut service = self.service();
            loop {
                // Boxed apart from this task, like the supervisor's timers and the parked wait: each lives only
                // while it is needed. (A `let` each: a temporary of an awaited statement would stay in this
                // future's state; the builder is such a temporary, rebuilt per session from the limits.)
                let mut session = Box::pin(
                    h1_builder(&self.ctx.proxy.limits)
                        .serve_connection(TokioIo::new(io), service)
                        .with_upgrades(),
                );
                let supervised = Box::pin(self.supervise(
                    session.as_mut(),
                    |c| c.graceful_shutdown(),
                    Some(&park),
                ));
                let ended = supervised.await;
                match self.end_session(ended, session, &park, &smuggling) {
                    None => break,
                    Some((next_io, next_service)) => (io, service) = (next_io, next_service),
                }
                // A parked connection keeps no flow-record state either; its next request reads the endpoints anew.
                self.ctx.endpoints.clear();
                let parked = Box::pin(self.wait_parked(&mut io));
                let resumed = parked.await;
                park.flag.clear();
                if !resumed {
                    let _ = io.shutdown().await;
                    break;
                }
            }
            let tunnels = Box::pin(self.serve_tunnels());
            tunnels.await;
        }
    }

    /// After a session: records how it failed, or takes the connection back from hyper when it ended to park.
    /// `Some`: park it (the socket is open and its bytes end between two messages).
    fn end_session<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        ended: Option<hyper::Result<()>>,
        session: Pin<Box<H1Session<T>>>,
        park: &Park,
        smuggling: &FramingRefusals,
    ) -> Option<(H1Io<T>, HttpService)> {
        let (proxy, down, dst) = (&self.ctx.proxy, &self.ctx.client, self.ctx.dst);
        match ended {
            None => record_first_request_late(proxy, down, dst),
            Some(Err(e)) => record_connection_error(proxy, down, dst, &e, smuggling.count() > 0),
            Some(Ok(())) if park.flag.parked_idle(&self.ctx.requests) => {
                // `None`: the session ended in an upgrade; its tunnel is served after.
                let parts = Pin::into_inner(session).into_parts()?;
                let mut io = parts.io.into_inner();
                if io.get_mut().park(&parts.read_buf) {
                    return Some((io, parts.service));
                }
                // Not at a message boundary: the socket is only dropped (closed) with the session's parts.
                park.flag.clear();
            }
            Some(Ok(())) => {}
        }
        None
    }

    /// A parked connection waits for the client's next bytes holding only its socket and framing state: true when
    /// they came; false when the client closed, the connection idled out, or the daemon drains.
    async fn wait_parked<T: AsyncRead + Unpin>(&self, io: &mut Parkable<FramingGuard<T>>) -> bool {
        let limits = &self.ctx.proxy.limits;
        let _parked = self.ctx.proxy.parked.enter();
        // Any byte ends the wait, so no clock moves meanwhile: one timer for the earliest limit. hyper times the
        // next head from the end of the last exchange (its last bytes) with the header read timeout, so a parked
        // connection obeys that too, as it did unparked.
        let next_head = limits.idle_timeout.min(limits.header_read_timeout);
        let idle_out = self
            .activity
            .idle_deadline(next_head)
            .min(self.ctx.requests.idle_deadline(limits.idle_timeout));
        let guard = io.get_mut();
        tokio::select! {
            r = std::future::poll_fn(|cx| guard.poll_fill(cx)) => r.is_ok() && !guard.client_closed(),
            _ = tokio::time::sleep_until(idle_out) => false,
            _ = self.shutdown.cancelled() => false,
        }
    }

    async fn serve_h2<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(self, io: T) {
        let (proxy, down, dst) = (&self.ctx.proxy, &self.ctx.client, self.ctx.dst);
        let limits = &proxy.limits;
        let h2_goaway = Arc::new(AtomicBool::new(false));
        let io = H2Watch::new(
            io,
            RefusalLog::new(limits.h2_max_concurrent_streams, limits.max_header_bytes),
            h2_refusal_sink(proxy.clone(), down.clone(), dst),
            h2_goaway.clone(),
        );
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .serve_connection(TokioIo::new(io), self.service());
        tokio::pin!(conn);
        match self.supervise(conn, |c| c.graceful_shutdown(), None).await {
            None => record_first_request_late(proxy, down, dst),
            // The GOAWAY the watcher saw was recorded with the guard that fired; the error says less.
            Some(Err(_)) if h2_goaway.load(Ordering::Relaxed) => {}
            Some(Err(e)) => record_connection_error(proxy, down, dst, &e, false),
            Some(Ok(())) => {}
        }
        let tunnels = Box::pin(self.serve_tunnels());
        tunnels.await;
    }

    /// Drives hyper's connection; closes it gracefully when idle (no bytes either way, or, with h2 PINGs or a
    /// body-less keep-alive, no request started), when the daemon drains, or (HTTP/1, `park`) to park it between
    /// requests. `None`: no request started in time.
    async fn supervise<F: Future<Output = hyper::Result<()>>>(
        &self,
        mut conn: Pin<&mut F>,
        graceful: impl Fn(Pin<&mut F>),
        park: Option<&Park>,
    ) -> Option<hyper::Result<()>> {
        let (limits, requests) = (&self.ctx.proxy.limits, &self.ctx.requests);
        let mut closing = false;
        let first_request_due = tokio::time::sleep_until(self.first_request_due);
        tokio::pin!(first_request_due);
        loop {
            tokio::select! {
                r = conn.as_mut() => return Some(r),
                _ = self.activity.idle(limits.idle_timeout), if !closing => {
                    closing = true;
                    graceful(conn.as_mut());
                }
                _ = requests.idle(limits.idle_timeout), if !closing => {
                    closing = true;
                    graceful(conn.as_mut());
                }
                // select! checks a guard only on entry: a request may have started while the timer was waiting.
                _ = &mut first_request_due, if !requests.started() => {
                    if !requests.started() {
                        return None;
                    }
                }
                _ = self.shutdown.cancelled(), if !closing => {
                    closing = true;
                    graceful(conn.as_mut());
                }
                _ = Park::when_idle(park, &self.activity, requests), if !closing => {
                    closing = true;
                    graceful(conn.as_mut());
                }
            }
        }
    }

    /// Upgraded tunnels (WebSocket, CONNECT) keep this connection's permit and obey its limits until they end.
    async fn serve_tunnels(self) {
        let taken = self.ctx.tunnels.lock().map(|mut t| t.take());
        let Some(tunnels) = taken.unwrap_or_else(|p| p.into_inner().take()) else {
            return;
        };
        serve_tunnels(
            tunnels,
            &self.activity,
            &self.ctx.proxy.limits,
            &self.shutdown,
        )
        .await;
    }
}

/// hyper's HTTP/1 server settings, from the limits (cheap to build: a few fields).
fn h1_builder(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.h1_max_buf_size())
        .max_headers(limits.max_headers);
    builder
}

fn record_first_request_late(proxy: &Proxy, down: &Downstream, dst: SocketAddr) {
    record_limit(
        proxy,
        down,
        dst,
        format!(
            "request not received in time: none started within {:?} of connecting \
             (--header-read-timeout-secs): silent client, or protocol never detected",
            proxy.limits.header_read_timeout
        ),
    )
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

/// Records what the h2 library (or the SETTINGS flood bound) refused on one HTTP/2 connection.
fn h2_refusal_sink(proxy: Arc<Proxy>, down: Downstream, dst: SocketAddr) -> crate::h2_watch::Sink {
    Box::new(move |r: Refusal| {
        record_http_refusal(&proxy, &down, dst, r.code, "HTTP/2", r.reason, r.why);
    })
}

fn record_limit(proxy: &Proxy, down: &Downstream, dst: SocketAddr, why: String) {
    let flow = proxy.flow(down, dst, "HTTP");
    proxy.flows.record(flow.finish(FlowOutcome::Dropped {
        reason: DropReason::LimitExceeded,
        policy: why,
    }));
}

/// hyper answers malformed or oversized HTTP/1 heads itself (400 / 431), and h2 closes abusive HTTP/2 connections
/// itself (GOAWAY); both then report the error here, and the flow log still needs a record of it. `smuggling`: the
/// framing guard refused a head (hyper reports it as a plain parse error). Clean closes and client resets are not
/// flows.
fn record_connection_error(
    proxy: &Proxy,
    down: &Downstream,
    dst: SocketAddr,
    e: &(dyn std::error::Error + Send + Sync + 'static),
    smuggling: bool,
) {
    let Some(h) = e.downcast_ref::<hyper::Error>() else {
        tracing::debug!(client = %down.addr, %dst, "HTTP connection error: {e}");
        return;
    };
    let h2_refusal = std::error::Error::source(h)
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .and_then(crate::h2_refusal::refusal);
    let (code, reason, why, protocol) = if let Some((reason, why)) = h2_refusal {
        (0, reason, why, "HTTP/2")
    } else if let Some((code, reason, what)) = http1_refusal(h, smuggling) {
        (code, reason, format!("{what}: {h}"), "HTTP/1.1")
    } else {
        tracing::debug!(client = %down.addr, %dst, "HTTP connection ended: {}", crate::error_chain::error_chain(h));
        return;
    };
    record_http_refusal(proxy, down, dst, code, protocol, reason, why);
}

/// Why hyper refused an HTTP/1 head, if it did: the status it answered (0: none), the drop reason and what was
/// wrong.
fn http1_refusal(h: &hyper::Error, smuggling: bool) -> Option<(u16, DropReason, &'static str)> {
    if h.is_parse_too_large() {
        let what = "request head too large (--max-header-bytes / --max-headers)";
        Some((431, DropReason::LimitExceeded, what))
    } else if h.is_parse() && smuggling {
        let what = "request smuggling: the head carries both Transfer-Encoding and Content-Length \
                    (RFC 9112 section 6.1), refused";
        Some((400, DropReason::InvalidRequest, what))
    } else if h.is_parse() {
        Some((400, DropReason::InvalidRequest, "malformed HTTP request"))
    } else if h.is_timeout() {
        let what = "request head not received in time (--header-read-timeout-secs)";
        Some((0, DropReason::LimitExceeded, what))
    } else {
        None
    }
}

/// The record of a request or connection the HTTP libraries refused themselves (`code` 0: no response sent).
fn record_http_refusal(
    proxy: &Proxy,
    down: &Downstream,
    dst: SocketAddr,
    code: u16,
    protocol: &str,
    reason: DropReason,
    why: String,
) {
    let flow = proxy.flow(down, dst, "HTTP").http(HttpInfo {
        code,
        protocol: protocol.into(),
        ..Default::default()
    });
    proxy.flows.record(flow.finish(FlowOutcome::Dropped {
        reason,
        policy: why,
    }));
}
