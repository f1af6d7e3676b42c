//! The proxy in-process on loopback, for tests that need no root: the original destination comes from an injected
//! `MapLookup` table, the backend is a hyper server on 127.0.0.2 (Upgrade/CONNECT echo, header report, gRPC-ish
//! POST), the policy a file the test may rewrite and reload.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use tollgate::flow::{FlowLog, FlowSink};
use tollgate::inputs::Proxy;
use tollgate::limits::Limits;
use tollgate::original_dst::MapLookup;
use tollgate::policy_source::PolicyFiles;
use tollgate::upstream::UpstreamPool;

pub const ENDPOINTS: &str = "endpoints:
  - {name: client, namespace: t, labels: {app: client}, ip: 127.0.0.1}
  - {name: server, namespace: t, labels: {app: server}, ip: 127.0.0.2}
";

pub fn policy(port: u16, get_path: &str) -> String {
    policy_with_rules(
        port,
        &format!(
            "            http:
              - {{method: GET, path: \"{get_path}\"}}
              - {{method: CONNECT}}
              - {{method: POST, path: /pkg.Svc/Ok}}
              - method: GET
                path: /hdr
                headerMatches:
                  - {{name: x-added, value: yes, mismatch: ADD}}
                  - {{name: x-secret, value: never, mismatch: DELETE}}
"
        ),
    )
}

/// The client -> server policy for `port` with `rules` (the YAML under `rules:`, indented 12 spaces).
pub fn policy_with_rules(port: u16, rules: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: inproc, namespace: t}}
spec:
  endpointSelector: {{matchLabels: {{app: server}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{app: client}}}}]
      toPorts:
        - ports: [{{port: \"{port}\", protocol: TCP}}]
          rules:
{rules}"
    )
}

/// Backend: 101 + echo for Upgrade, 200 + echo for CONNECT, header report for /hdr, gRPC-ish OK for POST (after
/// reading the whole request body, so a slow body holds the request).
pub async fn backend(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let echo_after_upgrade = |mut req: Request<Incoming>| {
        tokio::spawn(async move {
            if let Ok(up) = hyper::upgrade::on(&mut req).await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 64];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
    };
    if req.method() == http::Method::CONNECT {
        echo_after_upgrade(req);
        return Ok(Response::new(Full::default()));
    }
    if req.headers().contains_key(http::header::UPGRADE) {
        echo_after_upgrade(req);
        let mut r = Response::new(Full::default());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        return Ok(r);
    }
    let (parts, body) = req.into_parts();
    if parts.method == http::Method::POST && body.collect().await.is_err() {
        return Ok(Response::new(Full::new(Bytes::from_static(b"body failed"))));
    }
    let req = Request::from_parts(parts, ());
    let body = format!(
        "{} {} added={:?} secret={:?} version={:?}",
        req.method(),
        req.uri().path(),
        req.headers().get("x-added"),
        req.headers().get("x-secret"),
        req.version()
    );
    let mut r = Response::new(Full::new(Bytes::from(body)));
    if req.uri().path().starts_with("/pkg.") {
        r.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
    }
    Ok(r)
}

pub struct Harness {
    pub proxy_addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    pub policy_path: PathBuf,
    /// The policy files feeding `proxy.policy` (reload them after rewriting `policy_path`).
    pub policy_files: Arc<PolicyFiles>,
    pub backend_port: u16,
    _dir: tempfile::TempDir,
    pub stop: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn start() -> Harness {
    start_with(Limits::default()).await
}

pub async fn start_with(limits: Limits) -> Harness {
    let backend_listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let backend_addr = backend_listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = backend_listener.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(
                        TokioIo::new(s),
                        hyper::service::service_fn(backend),
                    )
                    .await;
            });
        }
    });
    start_proxy(limits, backend_addr).await
}

/// The proxy alone, sending every connection to `backend_addr` (which the caller serves).
pub async fn start_proxy(limits: Limits, backend_addr: SocketAddr) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(&policy_path, policy(backend_addr.port(), "/ok.*")).unwrap();
    let endpoints_path = dir.path().join("endpoints.yaml");
    std::fs::write(&endpoints_path, ENDPOINTS).unwrap();
    let policy_files = Arc::new(PolicyFiles::load(&policy_path, &endpoints_path).unwrap());
    let proxy = Arc::new(Proxy {
        policy: policy_files.store().clone(),
        flows: Arc::new(FlowLog::new(1024, FlowSink::None).unwrap()),
        upstream: UpstreamPool::new(0, limits.connect_timeout),
        limits: limits.clone(),
        connections: Arc::new(Semaphore::new(limits.max_connections)),
        kafka_topics: Default::default(),
        kafka_budget: Arc::new(tollgate::kafka_state::budget::FrameBudget::new(
            limits.kafka_inflight_budget,
        )),
        draining: Default::default(),
        mesh: None,
        parked: Default::default(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let original_dst = Arc::new(MapLookup {
        lookup: Arc::new(move |_, _| Some(backend_addr)),
    });
    tokio::spawn(tollgate::listener::serve(
        listener,
        original_dst,
        proxy.clone(),
        stop.clone(),
        stop.clone(),
    ));
    Harness {
        proxy_addr,
        proxy,
        policy_path,
        policy_files,
        backend_port: backend_addr.port(),
        _dir: dir,
        stop,
    }
}

/// An HTTP/1.1 keep-alive connection to the proxy.
pub async fn h1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

pub async fn get(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> (StatusCode, String) {
    send.ready().await.unwrap();
    let req = Request::get(path)
        .header("host", "server")
        .header("x-secret", "s3")
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).await.unwrap(),
            1,
            "closed mid-head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Reads one response whose body has a Content-Length from a raw socket: (status line, body).
pub async fn read_response(s: &mut TcpStream) -> (String, String) {
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(s))
        .await
        .expect("no response within 5 s");
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    let status = head.lines().next().unwrap().to_string();
    (status, String::from_utf8(body).unwrap())
}

/// Long enough for an idle keep-alive connection to be parked.
pub const PARKED: Duration =
    Duration::from_millis(tollgate::keepalive::PARK_AFTER.as_millis() as u64 * 4);
