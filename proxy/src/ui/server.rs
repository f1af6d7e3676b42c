//! The UI's HTTP/1.1 server: the embedded page and its assets, JSON endpoints (`/api/snapshot`, `/api/flows`) and
//! server-sent events (`/api/events`: a `snapshot` event whenever the aggregates moved, at least every 5 s, and
//! `flows` events with new flows the page's filters accept). Read-only; live streams are capped in number and
//! each sends at most [`BATCH`] rows per tick, so a slow browser costs bounded memory.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::accept::next_connection;

use super::assets;
use super::hub::{UiHub, now_ns};
use super::query::{FlowQuery, FlowRow};

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("web UI: cannot listen on {addr}: {source}; pick a free address with --ui-listen")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

type Body = BoxBody<Bytes, Infallible>;

/// Live event streams served at once; more get 503 (each holds a task and a small queue).
const MAX_STREAMS: usize = 64;
/// Flow rows one `flows` event carries at most; more in one tick are skipped (the table shows the newest).
const BATCH: usize = 200;
const TICK: Duration = Duration::from_millis(250);
/// A snapshot is re-sent this often even when nothing moved (rates decay with time).
const REFRESH: Duration = Duration::from_secs(5);

/// Binds `addr` and serves the UI for `hub` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    hub: Arc<UiHub>,
    shutdown: CancellationToken,
) -> Result<SocketAddr, UiError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| UiError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    tokio::spawn(serve_on(listener, hub, shutdown));
    Ok(local)
}

/// Serves the UI on a bound listener until `shutdown`.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    hub: Arc<UiHub>,
    shutdown: CancellationToken,
) {
    let streams = Arc::new(Semaphore::new(MAX_STREAMS));
    let pause = Duration::from_millis(50);
    let failed = |e: &std::io::Error| tracing::warn!("web UI accept failed: {e}");
    while let Some((stream, _)) = next_connection(&listener, &shutdown, pause, failed).await {
        let (hub, streams, stop) = (hub.clone(), streams.clone(), shutdown.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = route(&hub, &streams, &stop, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(io, svc);
            let _ = conn.await;
        });
    }
}

fn route(
    hub: &Arc<UiHub>,
    streams: &Arc<Semaphore>,
    stop: &CancellationToken,
    req: &Request<hyper::body::Incoming>,
) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the web UI is read-only: use GET\n",
        );
    }
    let query = req.uri().query().unwrap_or("");
    match req.uri().path() {
        "/api/snapshot" => match FlowQuery::parse(query, now_ns()) {
            Ok(q) => json(&hub.snapshot(q.view_namespace.as_deref(), now_ns())),
            Err(e) => bad_request(&e.to_string()),
        },
        "/api/flows" => match FlowQuery::parse(query, now_ns()) {
            Ok(q) => json(&serde_json::json!({ "flows": hub.flows(&q) })),
            Err(e) => bad_request(&e.to_string()),
        },
        "/api/events" => match FlowQuery::parse(query, now_ns()) {
            Ok(q) => match streams.clone().try_acquire_owned() {
                Ok(permit) => events(hub.clone(), q, permit, stop.clone()),
                Err(_) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many live UI sessions; close a tab and retry\n",
                ),
            },
            Err(e) => bad_request(&e.to_string()),
        },
        "/healthz" => text(StatusCode::OK, "ok\n"),
        path => match assets::get(path) {
            Some((ctype, body)) => {
                revalidated(response(StatusCode::OK, ctype, Bytes::from_static(body)))
            }
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
    }
}

/// Assets are embedded in this binary and change with it: browsers revalidate instead of keeping an old page.
fn revalidated(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut().insert(
        "cache-control",
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    r
}

fn response(status: StatusCode, ctype: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body).boxed());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        "content-type",
        hyper::header::HeaderValue::from_static(ctype),
    );
    h.insert(
        "x-content-type-options",
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "content-security-policy",
        hyper::header::HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:",
        ),
    );
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    response(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

fn json<T: serde::Serialize>(v: &T) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = response(StatusCode::OK, "application/json", Bytes::from(body));
    r.headers_mut().insert(
        "cache-control",
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

fn bad_request(msg: &str) -> Response<Body> {
    let body = serde_json::to_vec(&serde_json::json!({ "error": msg })).unwrap_or_default();
    response(
        StatusCode::BAD_REQUEST,
        "application/json",
        Bytes::from(body),
    )
}

/// One `event: NAME` / `data: JSON` message.
fn sse<T: serde::Serialize>(name: &str, v: &T) -> Bytes {
    let data = serde_json::to_string(v).unwrap_or_default();
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

fn events(
    hub: Arc<UiHub>,
    q: FlowQuery,
    permit: tokio::sync::OwnedSemaphorePermit,
    stop: CancellationToken,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let live = hub.subscribe();
    tokio::spawn(async move {
        let _permit = permit;
        pump(hub, q, live, tx, stop).await;
    });
    let body = StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(|b| Ok::<_, Infallible>(Frame::data(b))),
    );
    let mut r = Response::new(BodyExt::boxed(body));
    let h = r.headers_mut();
    h.insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        "cache-control",
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

/// Feeds one event stream until the browser goes away or the daemon stops.
async fn pump(
    hub: Arc<UiHub>,
    q: FlowQuery,
    mut live: broadcast::Receiver<Arc<crate::hubble::flow::Flow>>,
    tx: mpsc::Sender<Bytes>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(TICK);
    let mut pending: Vec<FlowRow> = Vec::new();
    let mut sent_version = None;
    let mut sent_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            r = live.recv() => match r {
                Ok(f) => if pending.len() < BATCH && q.accepts(&f) {
                    pending.push(FlowRow::of(&f));
                },
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                if !pending.is_empty() {
                    pending.reverse();
                    let msg = sse("flows", &serde_json::json!({ "flows": std::mem::take(&mut pending) }));
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
                let version = hub.version();
                if sent_version != Some(version) || sent_at.elapsed() >= REFRESH {
                    let snap = hub.snapshot(q.view_namespace.as_deref(), now_ns());
                    if tx.send(sse("snapshot", &snap)).await.is_err() {
                        return;
                    }
                    sent_version = Some(version);
                    sent_at = tokio::time::Instant::now();
                }
            }
            _ = stop.cancelled() => return,
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::aggregate::Limits;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str, until: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: ui\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        let read = async {
            loop {
                let n = s.read(&mut buf).await.unwrap();
                out.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&out);
                if n == 0 || text.contains(until) {
                    return text.into_owned();
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("answer in time")
    }

    #[tokio::test]
    async fn serves_page_json_and_live_events() {
        let hub = Arc::new(UiHub::new("node test", Limits::default(), 100, None));
        let stop = CancellationToken::new();
        let addr = serve("127.0.0.1:0".parse().unwrap(), hub.clone(), stop.clone())
            .await
            .unwrap();
        let page = get(addr, "/", "</html>").await;
        assert!(
            page.starts_with("HTTP/1.1 200") && page.contains("content-security-policy"),
            "{page}"
        );
        let snap = get(addr, "/api/snapshot?ns=shop", "\"dns\"").await;
        assert!(snap.contains("\"source\":\"node test\""), "{snap}");
        let bad = get(addr, "/api/flows?verdict=MAYBE", "}").await;
        assert!(
            bad.starts_with("HTTP/1.1 400") && bad.contains("verdict"),
            "{bad}"
        );
        // A live stream starts with a snapshot, then carries new flows its filter accepts.
        let fe = crate::ui::aggregate::tests::ep("shop", "frontend", "10.0.5.10", 40000, 300);
        let api = crate::ui::aggregate::tests::ep("shop", "api", "10.0.5.20", 8080, 301);
        let rec = crate::ui::aggregate::tests::http(
            fe,
            api,
            "GET",
            "/x",
            403,
            crate::flow::Verdict::Dropped,
            0,
        );
        let feeder = {
            let hub = hub.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                for f in crate::ui::aggregate::tests::flows_of(&rec) {
                    hub.ingest(f);
                }
            })
        };
        let events = get(addr, "/api/events?verdict=DROPPED", "event: flows").await;
        feeder.await.unwrap();
        assert!(
            events.contains("text/event-stream") && events.contains("event: snapshot"),
            "{events}"
        );
        assert!(events.contains("HTTP/1.1 GET http://api/x"), "{events}");
        let post = get(addr, "/api/snapshot", "\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 200"));
        stop.cancel();
    }
}
