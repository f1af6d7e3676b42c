//! Latency statistics: an HdrHistogram per run plus the send-time span used to compute the achieved rate.
//!
//! Samples are offered with their intended send offset; those inside the warm-up window are dropped, so
//! connection set-up and cold caches never reach the figures.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded exactly (longer ones are clamped): 60 s covers any bounded run.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Collects one run's measured samples.
#[derive(Debug, Clone)]
pub struct Recorder {
    warmup: Duration,
    hist: Histogram<u64>,
    errors: u64,
    first_sent: Option<Duration>,
    last_sent: Option<Duration>,
}

/// What a run measured, in microseconds; `Serialize` gives the JSON result format.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    /// Requests per second over the span of actual send times of measured requests.
    pub achieved_rps: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
    /// (percentile, latency us) at [`CURVE_PERCENTILES`], for percentile-curve plots.
    pub curve: Vec<(f64, u64)>,
}

/// Percentiles sampled for the latency percentile curve.
pub const CURVE_PERCENTILES: [f64; 10] = [
    50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999,
];

impl Recorder {
    pub fn new(warmup: Duration) -> Self {
        let hist = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .expect("static histogram bounds are valid");
        Self {
            warmup,
            hist,
            errors: 0,
            first_sent: None,
            last_sent: None,
        }
    }

    /// Records one request: `intended` is its scheduled offset (open loop) or its actual send offset (closed
    /// loop), `sent` when it actually left, `latency` from `intended` to the complete response.
    pub fn record(&mut self, intended: Duration, sent: Duration, latency: Duration, ok: bool) {
        if intended < self.warmup {
            return;
        }
        self.first_sent = Some(self.first_sent.map_or(sent, |f| f.min(sent)));
        self.last_sent = Some(self.last_sent.map_or(sent, |l| l.max(sent)));
        if ok {
            let us = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
            self.hist
                .record(us)
                .expect("value is clamped into the histogram's range");
        } else {
            self.errors += 1;
        }
    }

    /// Folds another connection's recorder into this one.
    pub fn merge(&mut self, other: &Recorder) {
        self.hist
            .add(&other.hist)
            .expect("histograms share the same bounds");
        self.errors += other.errors;
        for s in [other.first_sent, other.last_sent].into_iter().flatten() {
            self.first_sent = Some(self.first_sent.map_or(s, |f| f.min(s)));
            self.last_sent = Some(self.last_sent.map_or(s, |l| l.max(s)));
        }
    }

    pub fn histogram(&self) -> &Histogram<u64> {
        &self.hist
    }

    pub fn summary(&self) -> Summary {
        let requests = self.hist.len() + self.errors;
        // n requests sent over a span cover n-1 intervals.
        let achieved_rps = match (self.first_sent, self.last_sent) {
            (Some(f), Some(l)) if l > f && requests > 1 => {
                (requests - 1) as f64 / (l - f).as_secs_f64()
            }
            _ => 0.0,
        };
        let q = |p: f64| {
            if self.hist.is_empty() {
                0
            } else {
                self.hist.value_at_quantile(p)
            }
        };
        Summary {
            requests,
            errors: self.errors,
            achieved_rps,
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if self.hist.is_empty() {
                0
            } else {
                self.hist.max()
            },
            mean_us: if self.hist.is_empty() {
                0.0
            } else {
                self.hist.mean()
            },
            curve: CURVE_PERCENTILES
                .iter()
                .map(|&p| (p, q(p / 100.0)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn warmup_samples_are_dropped() {
        let mut r = Recorder::new(ms(100));
        r.record(ms(50), ms(50), ms(500), true);
        r.record(ms(150), ms(150), ms(1), true);
        let s = r.summary();
        assert_eq!(s.requests, 1);
        assert_eq!(s.max_us, 1000);
    }

    #[test]
    fn percentiles_and_rate() {
        let mut r = Recorder::new(Duration::ZERO);
        // 1000 requests at 1 ms spacing, latencies 1..=1000 us.
        for i in 0..1000u64 {
            r.record(ms(i), ms(i), Duration::from_micros(i + 1), true);
        }
        let s = r.summary();
        assert_eq!(s.requests, 1000);
        assert!((s.achieved_rps - 1000.0).abs() < 1e-6, "{}", s.achieved_rps);
        assert!((499..=501).contains(&s.p50_us), "{}", s.p50_us);
        assert!((989..=991).contains(&s.p99_us), "{}", s.p99_us);
        assert_eq!(s.max_us, 1000);
        assert_eq!(s.curve.len(), CURVE_PERCENTILES.len());
        assert_eq!(s.curve[0], (50.0, s.p50_us));
        assert!(
            s.curve.windows(2).all(|w| w[0].1 <= w[1].1),
            "curve is monotonic"
        );
    }

    #[test]
    fn errors_count_as_requests_but_not_latency() {
        let mut r = Recorder::new(Duration::ZERO);
        r.record(ms(0), ms(0), ms(1), true);
        r.record(ms(1), ms(1), ms(900), false);
        let s = r.summary();
        assert_eq!((s.requests, s.errors), (2, 1));
        assert_eq!(s.max_us, 1000);
    }

    #[test]
    fn merge_combines_spans_and_counts() {
        let mut a = Recorder::new(Duration::ZERO);
        let mut b = Recorder::new(Duration::ZERO);
        a.record(ms(0), ms(0), ms(1), true);
        b.record(ms(10), ms(10), ms(2), true);
        b.record(ms(20), ms(20), ms(3), false);
        a.merge(&b);
        let s = a.summary();
        assert_eq!((s.requests, s.errors), (3, 1));
        assert!((s.achieved_rps - 100.0).abs() < 1e-6);
    }

    #[test]
    fn empty_summary_is_zero() {
        let s = Recorder::new(Duration::ZERO).summary();
        assert_eq!((s.requests, s.p99_us, s.achieved_rps), (0, 0, 0.0));
    }
}
