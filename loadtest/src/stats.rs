//! Latency recording (HdrHistogram, microseconds, 3 significant digits) and the summary a report prints. Requests
//! due during the warm-up are sent but not recorded.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Recorder {
    latency_us: Histogram<u64>,
    pub ok: u64,
    pub errors: u64,
    /// Responses whose status was not 2xx (counted as errors too).
    pub non_2xx: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            // 1 µs .. 1 h, 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds"),
            ok: 0,
            errors: 0,
            non_2xx: 0,
        }
    }
}

impl Recorder {
    pub fn record_ok(&mut self, latency: Duration) {
        self.ok += 1;
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.latency_us.saturating_record(us);
    }

    pub fn record_error(&mut self) {
        self.errors += 1;
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms with the same bounds");
        self.ok += other.ok;
        self.errors += other.errors;
        self.non_2xx += other.non_2xx;
    }

    /// The summary over `measured` (the run minus its warm-up).
    pub fn summary(&self, measured: Duration) -> Summary {
        let ms = |q: f64| self.latency_us.value_at_quantile(q) as f64 / 1000.0;
        let secs = measured.as_secs_f64().max(f64::MIN_POSITIVE);
        Summary {
            requests: self.ok,
            errors: self.errors,
            non_2xx: self.non_2xx,
            achieved_rps: self.ok as f64 / secs,
            p50_ms: ms(0.50),
            p90_ms: ms(0.90),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: self.latency_us.max() as f64 / 1000.0,
            percentile_curve: [0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0]
                .iter()
                .map(|p| (*p, self.latency_us.value_at_percentile(*p) as f64 / 1000.0))
                .collect(),
        }
    }

    /// How many recorded requests took at least `t`.
    pub fn count_at_least(&self, t: Duration) -> u64 {
        let us = u64::try_from(t.as_micros()).unwrap_or(u64::MAX);
        self.latency_us
            .iter_recorded()
            .filter(|v| v.value_iterated_to() >= us)
            .map(|v| v.count_at_value())
            .sum()
    }
}

/// Percentiles in milliseconds, and the achieved rate.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    pub non_2xx: u64,
    pub achieved_rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// (percentile, latency ms) points for plotting the percentile curve.
    pub percentile_curve: Vec<(f64, f64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_counts() {
        let mut r = Recorder::default();
        for i in 1..=1000u64 {
            r.record_ok(Duration::from_micros(i * 100));
        }
        r.record_error();
        let s = r.summary(Duration::from_secs(2));
        assert_eq!(s.requests, 1000);
        assert_eq!(s.errors, 1);
        assert!((s.achieved_rps - 500.0).abs() < 1e-9);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{}", s.p50_ms);
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{}", s.p99_ms);
        assert!((s.max_ms - 100.0).abs() < 0.1, "{}", s.max_ms);
        assert_eq!(r.count_at_least(Duration::from_millis(90)), 101);
        let mut other = Recorder::default();
        other.record_ok(Duration::from_secs(1));
        r.merge(&other);
        assert_eq!(r.ok, 1001);
        assert!(r.summary(Duration::from_secs(1)).max_ms >= 999.0);
    }
}
