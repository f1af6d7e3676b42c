//! Drives connections through a run: open loop (constant rate, latency from intended send time) or closed loop
//! (each connection sends back to back, for maximum throughput).
//!
//! Open loop follows the schedule: connection `k` of `C` owns slots `k, k+C, ...`. When a slot's response
//! comes back after the next slot was due, that next slot is sent late and its latency is counted from its
//! intended time, so server stalls are charged to every request that should have been sent during them. When the
//! connection is ahead of schedule it sleeps until the slot is due; the timer's own wake-up jitter is then the
//! generator's, not the server's, so latency is counted from the actual send.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::client::{ClientError, Connection, Target};
use crate::schedule::{Schedule, ScheduleError};
use crate::stats::Recorder;

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum Mode {
    /// `rate` requests per second for `duration` (warm-up included), whatever the responses do.
    Open { rate: f64, duration: Duration },
    /// As fast as each connection gets responses, for `duration` (warm-up included).
    Closed { duration: Duration },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    pub target: Target,
    pub mode: Mode,
    pub connections: u64,
    /// Requests due before this offset are sent but not recorded.
    pub warmup: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("--connections must be at least 1")]
    NoConnections,
    #[error(
        "--warmup {warmup:?} is not shorter than --duration {duration:?}: nothing would be measured"
    )]
    WarmupTooLong {
        warmup: Duration,
        duration: Duration,
    },
}

/// Runs the load and returns the merged measurements. All connections are opened before the clock starts.
pub async fn run(cfg: &RunConfig) -> Result<Recorder, RunError> {
    if cfg.connections == 0 {
        return Err(RunError::NoConnections);
    }
    let duration = match cfg.mode {
        Mode::Open { duration, .. } | Mode::Closed { duration } => duration,
    };
    if cfg.warmup >= duration {
        return Err(RunError::WarmupTooLong {
            warmup: cfg.warmup,
            duration,
        });
    }
    let schedule = match cfg.mode {
        Mode::Open { rate, duration } => Some(Schedule::new(rate, duration)?),
        Mode::Closed { .. } => None,
    };
    let mut conns = Vec::with_capacity(cfg.connections as usize);
    for _ in 0..cfg.connections {
        conns.push(Connection::open(&cfg.target).await?);
    }
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(conns.len());
    for (k, conn) in conns.into_iter().enumerate() {
        let warmup = cfg.warmup;
        let n = cfg.connections;
        tasks.push(tokio::spawn(async move {
            match schedule {
                Some(s) => open_loop(conn, s, k as u64, n, start, warmup).await,
                None => closed_loop(conn, start, duration, warmup).await,
            }
        }));
    }
    let mut total = Recorder::new(cfg.warmup);
    for t in tasks {
        total.merge(&t.await.expect("load task panicked"));
    }
    Ok(total)
}

async fn open_loop(
    mut conn: Connection,
    s: Schedule,
    k: u64,
    n: u64,
    start: Instant,
    warmup: Duration,
) -> Recorder {
    let mut rec = Recorder::new(warmup);
    for slot in s.slots(k, n) {
        let offset = s.offset(slot);
        let due = start + offset;
        let now = Instant::now();
        let from = if now < due {
            tokio::time::sleep_until(due).await;
            Instant::now()
        } else {
            due
        };
        let sent = Instant::now();
        let ok = conn.send().await;
        let done = Instant::now();
        rec.record(offset, sent - start, done - from, ok);
    }
    rec
}

async fn closed_loop(
    mut conn: Connection,
    start: Instant,
    duration: Duration,
    warmup: Duration,
) -> Recorder {
    let mut rec = Recorder::new(warmup);
    tokio::time::sleep_until(start).await;
    let end = start + duration;
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let ok = conn.send().await;
        let done = Instant::now();
        rec.record(sent - start, sent - start, done - sent, ok);
        if !ok {
            // A dead connection would spin; count one error per millisecond at most.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    rec
}
