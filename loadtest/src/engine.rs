//! Runs a load: open loop (constant rate, latency from each request's intended send time) or closed loop (each
//! connection sends its next request when the previous answer arrived: maximum throughput). Both are bounded by
//! duration; requests due during the warm-up are sent but not recorded.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;

use crate::http::HttpClient;
use crate::schedule::Schedule;
use crate::stats::{Recorder, Summary};

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Mode {
    /// Constant rate, requests per second.
    OpenLoop { rate: f64 },
    /// As fast as answers come back, one request in flight per worker.
    ClosedLoop { workers: usize },
}

/// One run's settings.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RunSpec {
    pub mode: Mode,
    pub duration: Duration,
    pub warmup: Duration,
}

/// One run's result.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub recorder: Recorder,
    pub summary: Summary,
    /// Requests due (open loop) or sent (closed loop) after the warm-up.
    pub measured_sent: u64,
    /// Requests actually dispatched per second over the measured part (open loop: from the end of the warm-up to
    /// the last dispatch, so a scheduler that falls behind shows up here).
    pub dispatch_rps: f64,
}

fn outcome(rec: &Mutex<Recorder>, result: Result<u16, crate::LoadError>, latency: Duration) {
    let mut r = rec.lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(status) if (200..300).contains(&status) => r.record_ok(latency),
        Ok(_) => {
            r.non_2xx += 1;
            r.record_error();
        }
        Err(_) => r.record_error(),
    }
}

/// Runs `spec` against `client`.
pub async fn run(client: Arc<HttpClient>, spec: RunSpec) -> RunResult {
    let rec = Arc::new(Mutex::new(Recorder::default()));
    let start = Instant::now() + Duration::from_millis(5);
    let measure_from = start + spec.warmup;
    let end = start + spec.duration;
    let mut tasks = JoinSet::new();
    let mut measured_sent = 0;
    let last_dispatch = Arc::new(Mutex::new(measure_from));
    match spec.mode {
        Mode::OpenLoop { rate } => {
            let schedule = Schedule {
                rate,
                duration: spec.duration,
            };
            let total = schedule.total();
            let mut sent = 0u64;
            tokio::time::sleep_until(start.into()).await;
            while sent < total {
                let due = schedule.due_by(Instant::now().saturating_duration_since(start));
                while sent < due {
                    let intended = start + schedule.due(sent);
                    let recorded = intended >= measure_from;
                    measured_sent += u64::from(recorded);
                    let client = client.clone();
                    let rec = rec.clone();
                    let last_dispatch = last_dispatch.clone();
                    tasks.spawn(async move {
                        if recorded {
                            let mut l = last_dispatch.lock().unwrap_or_else(|p| p.into_inner());
                            *l = (*l).max(Instant::now());
                        }
                        let result = client.send().await;
                        if recorded {
                            outcome(&rec, result, intended.elapsed());
                        }
                    });
                    sent += 1;
                }
                // Reap finished tasks so the set does not grow with the run's length.
                while tasks.try_join_next().is_some() {}
                if sent < total {
                    tokio::time::sleep_until((start + schedule.due(sent)).into()).await;
                }
            }
        }
        Mode::ClosedLoop { workers } => {
            let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
            for _ in 0..workers.max(1) {
                let client = client.clone();
                let rec = rec.clone();
                let sent = sent.clone();
                tasks.spawn(async move {
                    tokio::time::sleep_until(start.into()).await;
                    while Instant::now() < end {
                        let t0 = Instant::now();
                        let result = client.send().await;
                        if t0 >= measure_from {
                            sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            outcome(&rec, result, t0.elapsed());
                        }
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
            measured_sent = sent.load(std::sync::atomic::Ordering::Relaxed);
        }
    }
    // Answers still outstanding get until 30 s past the end; later ones count as errors (never silently dropped).
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let mut recorder = rec.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let outstanding = measured_sent.saturating_sub(recorder.ok + recorder.errors);
    recorder.errors += outstanding;
    let measured = spec.duration.saturating_sub(spec.warmup);
    let summary = recorder.summary(measured);
    let dispatch_rps = match spec.mode {
        Mode::OpenLoop { .. } => {
            let last = *last_dispatch.lock().unwrap_or_else(|p| p.into_inner());
            // n requests due at measure_from + k/rate span (n - 1)/rate seconds.
            let span = last.saturating_duration_since(measure_from).as_secs_f64();
            if measured_sent > 1 && span > 0.0 {
                (measured_sent - 1) as f64 / span
            } else {
                0.0
            }
        }
        Mode::ClosedLoop { .. } => {
            measured_sent as f64 / measured.as_secs_f64().max(f64::MIN_POSITIVE)
        }
    };
    RunResult {
        recorder,
        summary,
        measured_sent,
        dispatch_rps,
    }
}
