//! Smoke scenario for the harness's own correctness, against an in-process hyper server on loopback:
//! the open-loop rate is kept within 2%, and a 50 ms server stall shows up in p99 (no coordinated omission).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tollgate_load::client::{Protocol, Target};
use tollgate_load::engine::{Mode, RunConfig, run};

/// The server holds every request that arrives inside `[stall_at, stall_at + 50 ms)` until the window ends.
#[derive(Debug, Clone, Copy)]
struct Stall {
    at: Instant,
    len: Duration,
}

mod frames {
    //! A response body of fixed frames (data, then optional trailers).
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    #[derive(Debug)]
    pub struct Frames(pub Vec<Frame<Bytes>>);

    impl hyper::body::Body for Frames {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(if self.0.is_empty() {
                None
            } else {
                Some(Ok(self.0.remove(0)))
            })
        }
    }
}

async fn serve(stall: Option<Stall>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stall = Arc::new(stall);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let stall = stall.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let stall = *stall;
                    async move {
                        let now = Instant::now();
                        if let Some(s) = stall
                            && now >= s.at
                            && now < s.at + s.len
                        {
                            tokio::time::sleep_until(s.at + s.len).await;
                        }
                        let grpc = req
                            .headers()
                            .get("content-type")
                            .is_some_and(|v| v == "application/grpc");
                        let _ = req.into_body().collect().await;
                        let mut frames = vec![Frame::data(Bytes::from_static(b"ok"))];
                        if grpc {
                            let mut t = http::HeaderMap::new();
                            t.insert("grpc-status", "0".parse().unwrap());
                            frames.push(Frame::trailers(t));
                        }
                        Ok::<_, Infallible>(hyper::Response::new(frames::Frames(frames)))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn target(addr: SocketAddr, protocol: Protocol) -> Target {
    Target {
        addr,
        authority: "backend".into(),
        path: "/svc.Echo/Call".into(),
        protocol,
        payload: 1024,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_rate_matches_target_within_2_percent() {
    let addr = serve(None).await;
    let cfg = RunConfig {
        target: target(addr, Protocol::Http1),
        mode: Mode::Open {
            rate: 500.0,
            duration: Duration::from_millis(2500),
        },
        connections: 4,
        warmup: Duration::from_millis(500),
    };
    let s = run(&cfg).await.unwrap().summary();
    assert_eq!(s.errors, 0, "{s:?}");
    assert_eq!(
        s.requests, 1000,
        "every scheduled request after warm-up is measured: {s:?}"
    );
    let err = (s.achieved_rps - 500.0).abs() / 500.0;
    assert!(
        err <= 0.02,
        "achieved {} rps vs 500 target ({:.2}% off): {s:?}",
        s.achieved_rps,
        err * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stall_shows_up_in_p99() {
    // 200 rps for 2 s measured = 400 requests; ~10 are due inside the 50 ms stall, so the 4 worst
    // (the p99) are all stall victims at 35-50 ms. A coordinated-omission generator with 2 connections
    // would see only 2 slow requests and a p99 near the normal sub-millisecond latency.
    let stall = Stall {
        at: Instant::now() + Duration::from_millis(1500),
        len: Duration::from_millis(50),
    };
    let addr = serve(Some(stall)).await;
    let cfg = RunConfig {
        target: target(addr, Protocol::Http1),
        mode: Mode::Open {
            rate: 200.0,
            duration: Duration::from_millis(2500),
        },
        connections: 2,
        warmup: Duration::from_millis(500),
    };
    let s = run(&cfg).await.unwrap().summary();
    assert_eq!(s.errors, 0, "{s:?}");
    assert!(
        s.max_us >= 45_000,
        "the stalled request must take ~50 ms: {s:?}"
    );
    assert!(
        s.p99_us >= 25_000,
        "p99 must include the stall's backlog (no coordinated omission): {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_over_http2_and_grpc() {
    let addr = serve(None).await;
    for protocol in [Protocol::Http2, Protocol::Grpc] {
        let cfg = RunConfig {
            target: target(addr, protocol),
            mode: Mode::Closed {
                duration: Duration::from_millis(800),
            },
            connections: 2,
            warmup: Duration::from_millis(200),
        };
        let s = run(&cfg).await.unwrap().summary();
        assert_eq!(s.errors, 0, "{protocol:?}: {s:?}");
        assert!(
            s.requests > 20,
            "{protocol:?}: closed loop must keep sending: {s:?}"
        );
    }
}

/// Kills the started process by PID on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_open_loop_against_dnsmasq() {
    // dnsmasq binds the port for UDP AND TCP: pick one free for both (a UDP-only probe once picked a port another
    // test's TCP server held, and dnsmasq exited at start-up).
    let port = loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            break port;
        }
    };
    let mut child = std::process::Command::new("dnsmasq")
        .args([
            "--no-daemon",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--pid-file=",
            "--cache-size=0",
            "--address=/bench.test/10.0.0.1",
        ])
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("dnsmasq is needed for the DNS smoke test ({e}): run ./dev setup")
        });
    let stderr = child.stderr.take();
    let _guard = Killed(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut ready = false;
    for _ in 0..100 {
        let mut c = tollgate_load::dns::DnsConn::open(addr, "bench.test")
            .await
            .unwrap();
        if c.query().await {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !ready {
        let mut why = String::new();
        if let Some(mut e) = stderr {
            // Only readable once dnsmasq exited; a live one would block, so read after killing it.
            drop(_guard);
            let _ = std::io::Read::read_to_string(&mut e, &mut why);
        }
        panic!("dnsmasq on {addr} never answered: {why}");
    }
    let mut t = target(addr, Protocol::Dns);
    t.authority = "bench.test".into();
    let cfg = RunConfig {
        target: t,
        mode: Mode::Open {
            rate: 300.0,
            duration: Duration::from_millis(1500),
        },
        connections: 2,
        warmup: Duration::from_millis(500),
    };
    let s = run(&cfg).await.unwrap().summary();
    assert_eq!((s.requests, s.errors), (300, 0), "{s:?}");
    // A name dnsmasq does not know is refused (no upstream): every query must count as an error.
    let mut t = target(addr, Protocol::Dns);
    t.authority = "unknown.example".into();
    let cfg = RunConfig { target: t, ..cfg };
    let s = run(&cfg).await.unwrap().summary();
    assert_eq!(s.errors, s.requests, "failed answers must be errors: {s:?}");
}
