//! The open-loop schedule: request `i` is due at `start + i / rate`, whatever happened to earlier requests. Latency
//! is measured from that intended time, so a stalled server delays every request that should have been sent during
//! the stall (no coordinated omission), as wrk2 and HdrHistogram's authors describe. Pure: no clock of its own.

use std::time::Duration;

/// A constant-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Requests per second.
    pub rate: f64,
    /// Total length of the run (warm-up included).
    pub duration: Duration,
}

impl Schedule {
    /// Offset from the start at which request `i` is due.
    pub fn due(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// How many requests are due at `elapsed` (requests `0..n`), capped at the run's total.
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        let n = (elapsed.as_secs_f64() * self.rate).floor() as u64 + 1;
        n.min(self.total())
    }

    /// Requests in the whole run.
    pub fn total(&self) -> u64 {
        (self.duration.as_secs_f64() * self.rate).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_are_evenly_spaced_and_bounded() {
        let s = Schedule {
            rate: 1000.0,
            duration: Duration::from_secs(3),
        };
        assert_eq!(s.total(), 3000);
        assert_eq!(s.due(0), Duration::ZERO);
        assert_eq!(s.due(1500), Duration::from_millis(1500));
        assert_eq!(s.due_by(Duration::ZERO), 1);
        assert_eq!(s.due_by(Duration::from_micros(999)), 1);
        assert_eq!(s.due_by(Duration::from_millis(1)), 2);
        assert_eq!(s.due_by(Duration::from_millis(999)), 1000);
        assert_eq!(s.due_by(Duration::from_secs(10)), 3000);
    }

    #[test]
    fn fractional_rates() {
        let s = Schedule {
            rate: 2.5,
            duration: Duration::from_secs(4),
        };
        assert_eq!(s.total(), 10);
        assert_eq!(s.due(3), Duration::from_millis(1200));
        assert_eq!(s.due_by(Duration::from_millis(1199)), 3);
        assert_eq!(s.due_by(Duration::from_millis(1200)), 4);
    }
}
