//! The proxy in-process on loopback, no root needed: the original destination comes from an injected `MapLookup`
//! table, the backend is a hyper server on 127.0.0.2. Covers what the namespace e2e tests do not: WebSocket-style
//! Upgrade, CONNECT, header actions, h2c-upgrade refusal, keep-alive connections seeing policy reloads, rejected
//! invalid updates, and the gRPC denial shape over real HTTP/2.

#[allow(dead_code)]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::inproc::*;
use tollgate::limits::Limits;

#[tokio::test]
async fn denial_keeps_the_connection_and_reload_applies_to_it() {
    let h = start().await;
    let mut c = h1(h.proxy_addr).await;
    assert_eq!(get(&mut c, "/ok/1").await.0, StatusCode::OK);
    let (status, body) = get(&mut c, "/nope").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::FORBIDDEN, "Access denied\r\n")
    );
    // Same connection still usable after a denial.
    assert_eq!(get(&mut c, "/ok/2").await.0, StatusCode::OK);

    // An invalid update is rejected and the old policy keeps enforcing on this connection.
    std::fs::write(&h.policy_path, "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x, namespace: t}\nspec: {endpointSelector: 7}\n").unwrap();
    let err = h.policy_files.reload().unwrap_err().to_string();
    assert!(
        err.contains("policy.yaml") && err.contains("document"),
        "{err}"
    );
    assert_eq!(get(&mut c, "/ok/3").await.0, StatusCode::OK);

    // A valid update applies to the next request on the same keep-alive connection.
    std::fs::write(&h.policy_path, policy(h.backend_port, "/other.*")).unwrap();
    assert_eq!(h.policy_files.reload().unwrap(), Some(2));
    assert_eq!(get(&mut c, "/ok/4").await.0, StatusCode::FORBIDDEN);
    assert_eq!(get(&mut c, "/other").await.0, StatusCode::OK);

    let flows = h.proxy.flows.last(100);
    let last = flows.last().unwrap();
    assert_eq!(last.source.pod.as_deref(), Some("client"));
    assert_eq!(last.destination.pod.as_deref(), Some("server"));
    assert!(
        flows
            .iter()
            .any(|f| f.drop_reason.is_some() && f.policy.contains("denied")),
        "{flows:#?}"
    );
}

#[tokio::test]
async fn header_actions_change_the_forwarded_request() {
    let h = start().await;
    let mut c = h1(h.proxy_addr).await;
    let (status, body) = get(&mut c, "/hdr").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("added=Some(\"yes\")"), "{body}");
    assert!(body.contains("secret=None"), "{body}");
}

async fn echo_roundtrip(s: &mut TcpStream) {
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn websocket_upgrade_and_connect_are_tunnelled_when_allowed() {
    let h = start().await;
    let mut s = TcpStream::connect(h.proxy_addr).await.unwrap();
    s.write_all(
        b"GET /ok/ws HTTP/1.1\r\nHost: server\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    echo_roundtrip(&mut s).await;

    let mut s = TcpStream::connect(h.proxy_addr).await.unwrap();
    s.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    echo_roundtrip(&mut s).await;

    // A denied upgrade gets the 403 and no tunnel.
    let mut s = TcpStream::connect(h.proxy_addr).await.unwrap();
    s.write_all(
        b"GET /nope HTTP/1.1\r\nHost: server\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 403"));
}

#[tokio::test]
async fn h2c_upgrade_is_declined_and_served_as_http1() {
    let h = start().await;
    let mut s = TcpStream::connect(h.proxy_addr).await.unwrap();
    s.write_all(b"GET /ok/h2c HTTP/1.1\r\nHost: server\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn grpc_over_h2_allowed_and_denied() {
    let h = start().await;
    let s = TcpStream::connect(h.proxy_addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let call = |path: &str| {
        Request::post(format!("http://server{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap()
    };
    let resp = send.send_request(call("/pkg.Svc/Ok")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("grpc-status").is_none());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("version=HTTP/2.0"),
        "upstream must be HTTP/2 for gRPC"
    );

    let resp = send.send_request(call("/pkg.Svc/Nope")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["grpc-status"], "7");
    assert!(resp.headers().contains_key("grpc-message"));
    let collected = resp.into_body().collect().await.unwrap();
    assert!(
        collected.trailers().is_none() && collected.to_bytes().is_empty(),
        "trailers-only"
    );
    let f = h.proxy.flows.last(1).pop().unwrap();
    assert_eq!(f.protocol, "gRPC");
    assert_eq!(f.l7.unwrap().http.unwrap().grpc_status, Some(7));
}

#[tokio::test]
async fn connection_limit_answers_503_and_idle_connections_are_closed() {
    let h = start_with(Limits {
        max_connections: 1,
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let mut first = h1(h.proxy_addr).await;
    assert_eq!(get(&mut first, "/ok/a").await.0, StatusCode::OK);
    // The only permit is taken: a second connection is told 503 and closed.
    let mut s = TcpStream::connect(h.proxy_addr).await.unwrap();
    s.write_all(b"GET /ok/b HTTP/1.1\r\nHost: server\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut resp))
        .await
        .unwrap()
        .unwrap();
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    // The first connection idles out, which frees the permit for the next client.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        first.ready().await.is_err() || first.is_closed(),
        "idle connection still open"
    );
    let mut third = h1(h.proxy_addr).await;
    assert_eq!(get(&mut third, "/ok/c").await.0, StatusCode::OK);
    let flows = h.proxy.flows.last(10);
    assert!(
        flows
            .iter()
            .any(|f| f.drop_reason == Some(tollgate::flow::DropReason::LimitExceeded)),
        "{flows:#?}"
    );
}

#[tokio::test]
async fn slow_request_heads_time_out() {
    let h = start_with(Limits {
        header_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let mut s = TcpStream::connect(h.proxy_addr).await.unwrap();
    s.write_all(b"GET /ok/slow HTTP/1.1\r\nHost: ser")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(
        n.is_ok(),
        "connection with an incomplete head was not closed"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let flows = h.proxy.flows.last(10);
    assert!(
        flows.iter().any(
            |f| f.drop_reason == Some(tollgate::flow::DropReason::LimitExceeded)
                && f.policy.contains("in time")
        ),
        "{flows:#?}"
    );
}

/// Protocol detection is bounded by the header timeout too: a silent connection, or one sending only the start
/// of the HTTP/2 preface, is closed after `--header-read-timeout-secs`, not after the (much longer) idle timeout.
#[tokio::test]
async fn silent_and_half_preface_connections_are_closed_at_the_header_timeout() {
    let h = start_with(Limits {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(60),
        ..Limits::default()
    })
    .await;
    for first in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let mut s = TcpStream::connect(h.proxy_addr).await.unwrap();
        s.write_all(first).await.unwrap();
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(
            n.is_ok(),
            "{first:?}: connection not closed at the header timeout"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let flows = h.proxy.flows.last(10);
    assert!(
        flows.iter().any(
            |f| f.drop_reason == Some(tollgate::flow::DropReason::LimitExceeded)
                && f.policy.contains("protocol never detected")
        ),
        "{flows:#?}"
    );
}

/// A request body trickled one byte at a time falls behind `--request-body-min-rate` after its grace: 408 to the
/// client and a DROPPED LIMIT_EXCEEDED record naming the flags, instead of a connection held forever.
#[tokio::test]
async fn trickled_request_body_gets_408_and_a_dropped_record() {
    let h = start_with(Limits {
        body_grace: Duration::from_millis(500),
        body_min_rate: 1000,
        ..Limits::default()
    })
    .await;
    let mut s = TcpStream::connect(h.proxy_addr).await.unwrap();
    s.write_all(b"POST /pkg.Svc/Ok HTTP/1.1\r\nHost: server\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let (mut rd, mut wr) = s.into_split();
    // One byte every 200 ms: 5 B/s, far below 1000 B/s; at most 60 bytes (12 s), well under the 100 announced.
    let trickle = tokio::spawn(async move {
        for _ in 0..60 {
            if wr.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), rd.read_exact(&mut head))
        .await
        .expect("no answer to a trickled body within 10 s")
        .unwrap();
    trickle.abort();
    assert_eq!(&head, b"HTTP/1.1 408", "{}", String::from_utf8_lossy(&head));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let f = h.proxy.flows.last(1).pop().unwrap();
    assert_eq!(f.verdict, tollgate::flow::Verdict::Dropped, "{f:#?}");
    assert_eq!(
        f.drop_reason,
        Some(tollgate::flow::DropReason::LimitExceeded)
    );
    assert_eq!(f.l7.unwrap().http.unwrap().code, 408);
    assert!(f.policy.contains("--request-body-min-rate"), "{}", f.policy);
}

/// An HTTP/2 connection with no request open, kept busy only by the client's PINGs (bytes move, so the byte-level
/// idle clock never fires), is still closed at the idle timeout: the request clock sees no request.
#[tokio::test]
async fn h2_connection_kept_alive_only_by_pings_is_closed_at_the_idle_timeout() {
    let h = start_with(Limits {
        idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    })
    .await;
    let s = TcpStream::connect(h.proxy_addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(200))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(s))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("http://server/ok/ping")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(
        send.send_request(req).await.unwrap().status(),
        StatusCode::OK
    );
    let started = std::time::Instant::now();
    // PINGs every 200 ms from here on; the proxy must still close at ~1 s (10 s allowed on a loaded machine).
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("an h2 connection kept alive only by PINGs was not closed at the idle timeout")
        .unwrap()
        .ok();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the idle timeout: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn h2_streams_beyond_the_limit_are_refused_not_crashing() {
    let h = start_with(Limits {
        h2_max_concurrent_streams: 2,
        ..Limits::default()
    })
    .await;
    let s = TcpStream::connect(h.proxy_addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    // Streams opened before the client saw SETTINGS are refused (RST_STREAM REFUSED_STREAM), the others served;
    // the connection survives either way.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut send = send.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::get(format!("http://server/ok/{i}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            send.send_request(req).await.map(|r| r.status())
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(status) => {
                assert_eq!(status, StatusCode::OK);
                ok += 1;
            }
            Err(e) => assert!(format!("{e:?}").contains("REFUSED_STREAM"), "{e:?}"),
        }
    }
    assert!(ok >= 2, "only {ok} streams served");
    let mut send = send.clone();
    let req = Request::get("http://server/ok/after")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(
        send.send_request(req).await.unwrap().status(),
        StatusCode::OK
    );
}

/// Loopback throughput without TPROXY or namespaces, to separate the proxy's own cost from the redirect path's.
/// `cargo test --release -p tollgate --test inprocess -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand"]
async fn loopback_throughput() {
    let h = start().await;
    let wrk = |url: String| async move {
        let out = tokio::process::Command::new("wrk")
            .args(["-t2", "-c32", "-d5s", &url])
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let rps: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{text}"));
        (rps, text.contains("Non-2xx"))
    };
    let direct = wrk(format!("http://127.0.0.2:{}/ok/x", h.backend_port)).await;
    let proxied = wrk(format!("http://{}/ok/x", h.proxy_addr)).await;
    println!(
        "direct {direct:?} proxied {proxied:?} ratio {:.2}",
        proxied.0 / direct.0
    );
}

/// Cost of the per-request pure work (decision + flow record) without I/O, for the design note.
/// `cargo test --release -p tollgate --test inprocess per_request_cost -- --ignored --nocapture`
#[tokio::test]
#[ignore = "benchmark: run by hand"]
async fn per_request_cost() {
    let h = start().await;
    let snap = h.proxy.policy.current();
    let client = &tollgate::decision::Downstream::plain("127.0.0.1:40000".parse().unwrap());
    let dst: SocketAddr = format!("127.0.0.2:{}", h.backend_port).parse().unwrap();
    let headers = [("host", "server"), ("user-agent", "wrk"), ("accept", "*/*")];
    let n = 200_000u32;
    let t = std::time::Instant::now();
    for _ in 0..n {
        let d = tollgate::decision::decide_request(
            &snap, client, dst, "GET", "/ok/x", "server", &headers,
        );
        std::hint::black_box(d);
    }
    let decide = t.elapsed() / n;
    let t = std::time::Instant::now();
    for _ in 0..n {
        let mut rec = tollgate::flow::FlowRecord::new(
            tollgate::flow::Verdict::Forwarded,
            tollgate::decision::source_endpoint(&snap, client),
            tollgate::decision::flow_endpoint(&snap, dst),
            "HTTP",
        );
        rec.policy = "allowed by CiliumNetworkPolicy t/inproc ingress[0] l7[0]".into();
        h.proxy.flows.record(rec);
    }
    let record = t.elapsed() / n;
    println!("decide_request {decide:?}/request, flow record {record:?}/request");
}

#[tokio::test]
async fn idle_keepalive_connections_park_and_serve_what_comes_next() {
    let h = start().await;
    let mut s = TcpStream::connect(h.proxy_addr).await.unwrap();
    s.write_all(b"GET /ok/1 HTTP/1.1\r\nHost: server\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut s).await.0.contains(" 200 "));
    tokio::time::sleep(PARKED).await;
    assert_eq!(
        h.proxy.parked.get(),
        1,
        "an idle keep-alive connection is parked"
    );
    // Two pipelined requests in one write wake it; both are answered, in order.
    s.write_all(
        b"GET /ok/2 HTTP/1.1\r\nHost: server\r\n\r\nGET /nope HTTP/1.1\r\nHost: server\r\n\r\n",
    )
    .await
    .unwrap();
    let (status, body) = read_response(&mut s).await;
    assert!(
        status.contains(" 200 ") && body.starts_with("GET /ok/2 "),
        "{status} {body}"
    );
    assert!(read_response(&mut s).await.0.contains(" 403 "));
    tokio::time::sleep(PARKED).await;
    assert_eq!(h.proxy.parked.get(), 1, "parked again after the denial");
    // A head split by a pause longer than the parking delay: a partial message never parks.
    s.write_all(b"GET /ok/3 HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(PARKED).await;
    assert_eq!(h.proxy.parked.get(), 0, "parked in the middle of a head");
    s.write_all(b"st: server\r\n\r\n").await.unwrap();
    let (status, body) = read_response(&mut s).await;
    assert!(
        status.contains(" 200 ") && body.starts_with("GET /ok/3 "),
        "{status} {body}"
    );
    // A body split by a pause: forwarded whole.
    tokio::time::sleep(PARKED).await;
    s.write_all(b"POST /pkg.Svc/Ok HTTP/1.1\r\nHost: server\r\nContent-Length: 10\r\n\r\n01234")
        .await
        .unwrap();
    tokio::time::sleep(PARKED).await;
    assert_eq!(h.proxy.parked.get(), 0, "parked in the middle of a body");
    s.write_all(b"56789").await.unwrap();
    let (status, body) = read_response(&mut s).await;
    assert!(
        status.contains(" 200 ") && body.starts_with("POST /pkg.Svc/Ok "),
        "{status} {body}"
    );
    let urls: Vec<String> = h
        .proxy
        .flows
        .last(10)
        .into_iter()
        .filter_map(|f| Some(f.l7?.http?.url))
        .collect();
    assert_eq!(urls.len(), 5, "one record per request: {urls:?}");
}

#[tokio::test]
async fn body_bytes_are_never_read_as_a_request_after_a_pause() {
    let h = start().await;
    let mut s = TcpStream::connect(h.proxy_addr).await.unwrap();
    // Denied with a body announced and only partly sent: the rest is body, however long the client waits.
    s.write_all(b"POST /nope HTTP/1.1\r\nHost: server\r\nContent-Length: 45\r\n\r\nGET /ok/smuggled HTTP/1.1\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut s).await.0.contains(" 403 "));
    tokio::time::sleep(PARKED).await;
    assert_eq!(h.proxy.parked.get(), 0, "parked with a body outstanding");
    let _ = s.write_all(b"Host: server\r\n\r\n").await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        !rest.contains(" 200 "),
        "body bytes were served as a request: {rest}"
    );
    let smuggled = h.proxy.flows.last(10).into_iter().any(|f| {
        f.l7.and_then(|l| l.http)
            .is_some_and(|http| http.url.contains("smuggled"))
    });
    assert!(!smuggled, "body bytes reached the policy as a request");
}

#[tokio::test]
async fn parked_connections_close_at_the_idle_timeout_and_on_drain() {
    let h = start_with(Limits {
        idle_timeout: PARKED * 3,
        ..Limits::default()
    })
    .await;
    let mut idle = TcpStream::connect(h.proxy_addr).await.unwrap();
    let mut drained = TcpStream::connect(h.proxy_addr).await.unwrap();
    for s in [&mut idle, &mut drained] {
        s.write_all(b"GET /ok/1 HTTP/1.1\r\nHost: server\r\n\r\n")
            .await
            .unwrap();
        assert!(read_response(s).await.0.contains(" 200 "));
    }
    tokio::time::sleep(PARKED).await;
    assert_eq!(h.proxy.parked.get(), 2);
    // Keep the second one busy past the first one's idle timeout.
    for _ in 0..4 {
        tokio::time::sleep(PARKED).await;
        drained
            .write_all(b"GET /ok/2 HTTP/1.1\r\nHost: server\r\n\r\n")
            .await
            .unwrap();
        assert!(read_response(&mut drained).await.0.contains(" 200 "));
    }
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("parked connection still open after its idle timeout");
    assert_eq!(n.unwrap(), 0, "closed cleanly");
    tokio::time::sleep(PARKED).await;
    assert_eq!(h.proxy.parked.get(), 1);
    h.stop.cancel();
    let n = tokio::time::timeout(Duration::from_secs(5), drained.read(&mut buf))
        .await
        .expect("parked connection still open after the drain");
    assert_eq!(n.unwrap(), 0, "closed cleanly");
    tokio::time::sleep(PARKED).await;
    assert_eq!(h.proxy.parked.get(), 0);
}

/// hyper times the next request head of a keep-alive connection with the header read timeout; a parked
/// connection (no hyper session) is held to the same limit.
#[tokio::test]
async fn parked_connections_close_at_the_header_read_timeout_as_unparked_ones_do() {
    let h = start_with(Limits {
        header_read_timeout: PARKED * 3,
        ..Limits::default()
    })
    .await;
    let mut s = TcpStream::connect(h.proxy_addr).await.unwrap();
    s.write_all(b"GET /ok/1 HTTP/1.1\r\nHost: server\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut s).await.0.contains(" 200 "));
    tokio::time::sleep(PARKED).await;
    assert_eq!(h.proxy.parked.get(), 1);
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("parked connection still open after the header read timeout");
    assert_eq!(n.unwrap(), 0, "closed cleanly");
    assert_eq!(h.proxy.parked.get(), 0);
}
