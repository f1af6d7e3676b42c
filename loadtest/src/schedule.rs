//! The open-loop schedule: when each request *should* be sent.
//!
//! Latency is measured from these intended send times, never from the moment a request actually left, so a stalled
//! server delays the measurement of every request that was due during the stall (no coordinated omission). Pure
//! arithmetic: no clocks, no sockets.

use std::time::Duration;

/// A constant-rate schedule of `count` requests, `rate` per second, starting at offset zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    rate: f64,
    count: u64,
}

/// Why a schedule cannot be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("rate {0} is not a positive finite number of requests per second: pass --rate > 0")]
    BadRate(f64),
    #[error("the schedule has no requests (rate x duration < 1): raise --rate or --duration")]
    Empty,
}

impl Schedule {
    /// Requests at `rate` per second for `duration` (rounded down to whole requests).
    pub fn new(rate: f64, duration: Duration) -> Result<Self, ScheduleError> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(ScheduleError::BadRate(rate));
        }
        let count = (rate * duration.as_secs_f64()).floor() as u64;
        if count == 0 {
            return Err(ScheduleError::Empty);
        }
        Ok(Self { rate, count })
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Intended send offset of request `index` from the start of the run.
    pub fn offset(&self, index: u64) -> Duration {
        Duration::from_secs_f64(index as f64 / self.rate)
    }

    /// The request indices connection `conn` of `conns` owns: every `conns`-th slot starting at `conn`. Each
    /// connection sends its slots in order, so one slow response delays later slots on that connection, and the
    /// delay is charged to them because their latency starts at their intended time.
    pub fn slots(&self, conn: u64, conns: u64) -> impl Iterator<Item = u64> + use<> {
        let count = self.count;
        (conn..count).step_by(conns.max(1) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_evenly_spaced() {
        let s = Schedule::new(1000.0, Duration::from_secs(2)).unwrap();
        assert_eq!(s.count(), 2000);
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(1), Duration::from_millis(1));
        assert_eq!(s.offset(1999), Duration::from_millis(1999));
    }

    #[test]
    fn fractional_rates_round_down_to_whole_requests() {
        let s = Schedule::new(2.5, Duration::from_secs(3)).unwrap();
        assert_eq!(s.count(), 7);
        assert_eq!(s.offset(5), Duration::from_secs(2));
    }

    #[test]
    fn slots_partition_the_schedule() {
        let s = Schedule::new(10.0, Duration::from_secs(1)).unwrap();
        let mut all: Vec<u64> = (0..3).flat_map(|c| s.slots(c, 3)).collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(s.slots(1, 3).collect::<Vec<_>>(), vec![1, 4, 7]);
        // More connections than requests: the extra connections get nothing.
        assert_eq!(s.slots(12, 20).count(), 0);
    }

    #[test]
    fn rejects_bad_rates_and_empty_runs() {
        assert_eq!(
            Schedule::new(0.0, Duration::from_secs(1)),
            Err(ScheduleError::BadRate(0.0))
        );
        assert!(matches!(
            Schedule::new(f64::NAN, Duration::from_secs(1)),
            Err(ScheduleError::BadRate(_))
        ));
        assert_eq!(
            Schedule::new(0.5, Duration::from_secs(1)),
            Err(ScheduleError::Empty)
        );
    }
}
