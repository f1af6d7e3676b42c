//! The harness checks itself against a local server: the achieved rate matches the target within 2%, and an
//! injected 50 ms server stall shows up in the p99 (latency is measured from intended send times; a harness with
//! coordinated omission would see one slow request and a clean p99).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use tollgate_load::engine::{Mode, RunSpec, run};
use tollgate_load::http::{HttpClient, HttpTarget, HttpVersion};

/// A local HTTP/1.1 + h2c server; while `stall_until` is in the future every request waits for it.
async fn server(stall_until: Arc<Mutex<Option<Instant>>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let stall_until = stall_until.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let stall_until = stall_until.clone();
                        async move {
                            let until = *stall_until.lock().unwrap();
                            if let Some(t) = until
                                && t > Instant::now()
                            {
                                tokio::time::sleep_until(t.into()).await;
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"ok\n",
                            ))))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    addr
}

fn target(addr: SocketAddr, version: HttpVersion, connections: usize) -> Arc<HttpClient> {
    HttpClient::new(HttpTarget {
        url: format!("http://{addr}/").parse().unwrap(),
        version,
        connections,
        payload: 0,
    })
    .unwrap()
}

const RATE: f64 = 1000.0;

fn spec() -> RunSpec {
    RunSpec {
        mode: Mode::OpenLoop { rate: RATE },
        duration: Duration::from_secs(3),
        warmup: Duration::from_millis(500),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_rate_matches_the_target_within_two_percent() {
    for version in [HttpVersion::Http1, HttpVersion::Http2] {
        let addr = server(Arc::default()).await;
        let r = run(target(addr, version, 64), spec()).await;
        assert_eq!(r.recorder.errors, 0, "{version:?}: {:?}", r.summary);
        for (what, rate) in [
            ("completed", r.summary.achieved_rps),
            ("dispatched", r.dispatch_rps),
        ] {
            let off = (rate - RATE).abs() / RATE;
            assert!(
                off <= 0.02,
                "{version:?}: {what} rate {rate:.1}/s is {:.1}% off {RATE}/s",
                off * 100.0
            );
        }
        assert_eq!(r.measured_sent, 2500, "{version:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50ms_server_stall_shows_in_p99() {
    let stall = Arc::new(Mutex::new(None));
    let addr = server(stall.clone()).await;
    // 4 connections: during the stall 4 requests sit at the server and the rest wait for a connection. Measured
    // from when they were written (coordinated omission) only those 4 would look slow.
    let client = target(addr, HttpVersion::Http1, 4);
    let stall_setter = stall.clone();
    tokio::spawn(async move {
        // 1.5 s into the run (1 s after the warm-up): every request for the next 50 ms waits for the stall's end.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        *stall_setter.lock().unwrap() = Some(Instant::now() + Duration::from_millis(50));
    });
    let r = run(client, spec()).await;
    assert_eq!(r.recorder.errors, 0, "{:?}", r.summary);
    // ~50 requests were due during the stall, 2% of the 2500 recorded: the slowest 1% all waited >= 25 ms.
    let slow = r.recorder.count_at_least(Duration::from_millis(25));
    assert!(
        slow >= 20,
        "only {slow} requests saw the stall: latency must be measured from intended send times; {:?}",
        r.summary
    );
    assert!(
        r.summary.p99_ms >= 25.0,
        "p99 {:.2} ms hides the 50 ms stall: {:?}",
        r.summary.p99_ms,
        r.summary
    );
    assert!(r.summary.max_ms >= 45.0, "{:?}", r.summary);
}
