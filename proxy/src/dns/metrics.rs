//! DNS proxy counters and the FQDN-learning hold histogram (how long a response waits while its IPs are pushed
//! to the cache and the kernel map), rendered into `/metrics` next to the flow-fed metrics.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Histogram bucket upper bounds, seconds (the hold is expected in the microseconds).
pub const HOLD_BUCKETS: [f64; 10] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025,
];

/// One DNS proxy's counters: made by `dns::start`, shared with its server and handed to the admin server's
/// `/metrics` (see `crate::metrics::Metrics::with_dns`).
#[derive(Debug)]
pub struct DnsMetrics {
    allowed: AtomicU64,
    denied: AtomicU64,
    malformed: AtomicU64,
    servfail: AtomicU64,
    overload: AtomicU64,
    hold_buckets: [AtomicU64; 10],
    hold_count: AtomicU64,
    hold_sum_ns: AtomicU64,
}

impl Default for DnsMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl DnsMetrics {
    pub const fn new() -> Self {
        DnsMetrics {
            allowed: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            servfail: AtomicU64::new(0),
            overload: AtomicU64::new(0),
            hold_buckets: [const { AtomicU64::new(0) }; 10],
            hold_count: AtomicU64::new(0),
            hold_sum_ns: AtomicU64::new(0),
        }
    }
    pub fn allowed(&self) {
        self.allowed.fetch_add(1, Ordering::Relaxed);
    }
    pub fn denied(&self) {
        self.denied.fetch_add(1, Ordering::Relaxed);
    }
    pub fn malformed(&self) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
    }
    pub fn servfail(&self) {
        self.servfail.fetch_add(1, Ordering::Relaxed);
    }
    pub fn overload(&self) {
        self.overload.fetch_add(1, Ordering::Relaxed);
    }
    pub fn hold(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, c) in HOLD_BUCKETS.iter().zip(&self.hold_buckets) {
            if s <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.hold_count.fetch_add(1, Ordering::Relaxed);
        self.hold_sum_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Appends the Prometheus text for the DNS counters and hold histogram to `out`.
    pub fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP tollgate_dns_queries_total DNS queries by outcome.\n# TYPE tollgate_dns_queries_total counter\n",
        );
        for (name, c) in [
            ("allowed", &self.allowed),
            ("denied", &self.denied),
            ("malformed", &self.malformed),
            ("servfail", &self.servfail),
            ("overload", &self.overload),
        ] {
            let _ = writeln!(
                out,
                "tollgate_dns_queries_total{{outcome=\"{name}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP tollgate_dns_fqdn_hold_seconds Time an allowed response is held while its IPs are pushed to the FQDN cache and the eBPF FQDN map.\n# TYPE tollgate_dns_fqdn_hold_seconds histogram\n");
        for (b, c) in HOLD_BUCKETS.iter().zip(&self.hold_buckets) {
            let _ = writeln!(
                out,
                "tollgate_dns_fqdn_hold_seconds_bucket{{le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let count = self.hold_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "tollgate_dns_fqdn_hold_seconds_bucket{{le=\"+Inf\"}} {count}\ntollgate_dns_fqdn_hold_seconds_sum {}\ntollgate_dns_fqdn_hold_seconds_count {count}",
            self.hold_sum_ns.load(Ordering::Relaxed) as f64 / 1e9
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each DNS proxy counts for itself (two in one process, e.g. tests, do not mix), and renders its outcomes
    /// and hold histogram.
    #[test]
    fn instances_count_separately_and_render() {
        let (a, b) = (DnsMetrics::new(), DnsMetrics::new());
        a.allowed();
        a.allowed();
        a.hold(Duration::from_micros(20));
        b.denied();
        let mut out = String::new();
        a.render(&mut out);
        assert!(out.contains("tollgate_dns_queries_total{outcome=\"allowed\"} 2\n"));
        assert!(out.contains("tollgate_dns_queries_total{outcome=\"denied\"} 0\n"));
        assert!(out.contains("tollgate_dns_fqdn_hold_seconds_bucket{le=\"0.000025\"} 1\n"));
        assert!(out.contains("tollgate_dns_fqdn_hold_seconds_bucket{le=\"0.00001\"} 0\n"));
        assert!(out.contains("tollgate_dns_fqdn_hold_seconds_count 1"));
        let mut other = String::new();
        b.render(&mut other);
        assert!(other.contains("tollgate_dns_queries_total{outcome=\"denied\"} 1\n"));
        assert!(other.contains("tollgate_dns_queries_total{outcome=\"allowed\"} 0\n"));
    }
}
