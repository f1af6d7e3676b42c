//! Prometheus metrics fed by the flow log, and the admin HTTP server (`/metrics`, `/healthz`, `/readyz`).
//!
//! Only series that are really fed are exposed: requests/connections by protocol, verdict and source/destination
//! identity; drops by reason; request latency; flow-log totals; policy generation and applied reloads. DNS, FQDN,
//! eBPF and TLS metrics arrive with the features that feed them. Label-set cardinality is capped: once
//! `max_series` distinct (protocol, verdict, source, destination) sets exist, new identities are counted under
//! `other`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Instant;

use crate::flow::{FlowLog, FlowRecord, FlowTap};
use crate::hubble_metrics::{HubbleConfig, HubbleMetrics, escape_label_value};

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Identity label value used once the series cap is reached.
pub const OTHER: &str = "other";

/// One `tollgate_requests_total` series. Built per record without allocating: the protocols the daemon records
/// are static names, identities are numbers until rendered.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct RequestKey {
    protocol: Cow<'static, str>,
    verdict: &'static str,
    source: IdentityLabel,
    destination: IdentityLabel,
}

/// An identity label value: the number, or [`OTHER`] once the series cap is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum IdentityLabel {
    Id(u32),
    Other,
}

impl std::fmt::Display for IdentityLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdentityLabel::Id(n) => write!(f, "{n}"),
            IdentityLabel::Other => f.write_str(OTHER),
        }
    }
}

/// The protocol label: borrowed for the protocols the daemon records, owned for anything else.
fn protocol_label(protocol: &str) -> Cow<'static, str> {
    match protocol {
        "HTTP" => Cow::Borrowed("HTTP"),
        "gRPC" => Cow::Borrowed("gRPC"),
        "TCP" => Cow::Borrowed("TCP"),
        "Kafka" => Cow::Borrowed("Kafka"),
        "DNS" => Cow::Borrowed("DNS"),
        other => Cow::Owned(other.to_string()),
    }
}

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

#[derive(Debug, Default)]
struct Series {
    requests: HashMap<RequestKey, u64>,
    drops: BTreeMap<&'static str, u64>,
    latency: BTreeMap<(Cow<'static, str>, &'static str), Histogram>,
}

/// The flow-fed metrics.
#[derive(Debug)]
pub struct Metrics {
    series: Mutex<Series>,
    max_series: usize,
    /// The `hubble_*` families (see `hubble_metrics`).
    hubble: Mutex<HubbleMetrics>,
    /// The DNS proxy's counters, when one runs.
    dns: Option<Arc<crate::dns::metrics::DnsMetrics>>,
}

fn verdict_name(v: crate::flow::Verdict) -> &'static str {
    match v {
        crate::flow::Verdict::Forwarded => "FORWARDED",
        crate::flow::Verdict::Dropped => "DROPPED",
        crate::flow::Verdict::Error => "ERROR",
    }
}

impl Metrics {
    /// `tollgate_*` metrics plus every `hubble_*` family without context labels.
    pub fn new(max_series: usize) -> Self {
        let hubble = HubbleConfig::all(10_000, std::time::Duration::from_secs(600));
        Self::with_hubble(max_series, hubble)
    }

    pub fn with_hubble(max_series: usize, hubble: HubbleConfig) -> Self {
        Metrics {
            series: Mutex::new(Series::default()),
            max_series,
            hubble: Mutex::new(HubbleMetrics::new(hubble)),
            dns: None,
        }
    }

    /// Also exposes a DNS proxy's counters and hold histogram (`tollgate_dns_*`).
    pub fn with_dns(mut self, dns: Option<Arc<crate::dns::metrics::DnsMetrics>>) -> Self {
        self.dns = dns;
        self
    }

    /// Counts one flow record.
    pub fn observe(&self, rec: &FlowRecord) {
        self.hubble
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe_at(rec, Instant::now());
        let verdict = verdict_name(rec.verdict);
        let protocol = protocol_label(&rec.protocol);
        let mut key = RequestKey {
            protocol: protocol.clone(),
            verdict,
            source: IdentityLabel::Id(rec.source.identity),
            destination: IdentityLabel::Id(rec.destination.identity),
        };
        let mut s = self.series.lock().unwrap_or_else(|p| p.into_inner());
        if !s.requests.contains_key(&key) && s.requests.len() >= self.max_series {
            key.source = IdentityLabel::Other;
            key.destination = IdentityLabel::Other;
        }
        *s.requests.entry(key).or_insert(0) += 1;
        if let Some(r) = rec.drop_reason {
            *s.drops.entry(r.name()).or_insert(0) += 1;
        }
        // Latency is only measured for requests the proxy parsed (L7); an L4 record carries none.
        if rec.l7.is_some() {
            s.latency
                .entry((protocol, verdict))
                .or_default()
                .observe(rec.latency_ns as f64 / 1e9);
        }
    }

    /// Registers with the flow log so every record is counted.
    pub fn attach(self: &Arc<Self>, flows: &FlowLog) {
        let me = self.clone();
        flows.add_tap(FlowTap(Box::new(move |r| me.observe(r))));
    }

    /// The Prometheus text exposition (format 0.0.4), with the gauges passed in `extra`.
    pub fn render(&self, extra: &Gauges) -> String {
        let s = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        out.push_str("# HELP tollgate_requests_total Requests (L7) and connections (L4) handled, by protocol, verdict and source/destination identity.\n# TYPE tollgate_requests_total counter\n");
        let mut keys: Vec<_> = s.requests.iter().collect();
        keys.sort();
        for (k, n) in keys {
            let _ = writeln!(
                out,
                "tollgate_requests_total{{protocol=\"{}\",verdict=\"{}\",source_identity=\"{}\",destination_identity=\"{}\"}} {n}",
                escape_label_value(&k.protocol),
                k.verdict,
                k.source,
                k.destination
            );
        }
        out.push_str("# HELP tollgate_drops_total Requests and connections not forwarded, by reason.\n# TYPE tollgate_drops_total counter\n");
        for (r, n) in &s.drops {
            let _ = writeln!(out, "tollgate_drops_total{{reason=\"{r}\"}} {n}");
        }
        out.push_str("# HELP tollgate_request_duration_seconds Time from request to verdict/response for parsed (L7) requests.\n# TYPE tollgate_request_duration_seconds histogram\n");
        for ((proto, verdict), h) in &s.latency {
            let labels = format!(
                "protocol=\"{}\",verdict=\"{verdict}\"",
                escape_label_value(proto)
            );
            for (b, c) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "tollgate_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {c}"
                );
            }
            let _ = writeln!(
                out,
                "tollgate_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "tollgate_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "tollgate_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        let _ = write!(
            out,
            "# HELP tollgate_flows_seen_total Flow records produced.\n# TYPE tollgate_flows_seen_total counter\ntollgate_flows_seen_total {}\n\
             # HELP tollgate_flows_lost_total Flow records the JSON writer could not keep up with.\n# TYPE tollgate_flows_lost_total counter\ntollgate_flows_lost_total {}\n\
             # HELP tollgate_policy_generation Generation of the policy being enforced (1 = as loaded at start).\n# TYPE tollgate_policy_generation gauge\ntollgate_policy_generation {}\n\
             # HELP tollgate_policy_reloads_total Policy updates applied since start.\n# TYPE tollgate_policy_reloads_total counter\ntollgate_policy_reloads_total {}\n\
             # HELP tollgate_policy_reload_errors_total Policy updates rejected since start (the previous policy kept enforcing).\n# TYPE tollgate_policy_reload_errors_total counter\ntollgate_policy_reload_errors_total {}\n\
             # HELP tollgate_http_connections_parked HTTP/1 keep-alive connections idle between requests, holding no HTTP session state.\n# TYPE tollgate_http_connections_parked gauge\ntollgate_http_connections_parked {}\n",
            extra.flows_seen,
            extra.flows_lost,
            extra.policy_generation,
            extra.policy_generation.saturating_sub(1),
            extra.policy_reload_errors,
            extra.http_connections_parked,
        );
        if let Some(dns) = &self.dns {
            dns.render(&mut out);
        }
        drop(s);
        let mut hubble = self.hubble.lock().unwrap_or_else(|p| p.into_inner());
        hubble.expire(Instant::now());
        hubble.render(&mut out);
        out
    }
}

/// Values read at scrape time from other parts of the daemon.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub flows_seen: u64,
    pub flows_lost: u64,
    pub policy_generation: u64,
    pub policy_reload_errors: u64,
    pub http_connections_parked: u64,
}

/// What the admin server serves.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// Set once the policy is loaded and the proxy listeners are up.
    pub ready: Arc<AtomicBool>,
    pub gauges: Box<dyn Fn() -> Gauges + Send + Sync>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

/// Pure routing: path -> (status, content type, body).
pub fn route(admin: &Admin, path: &str) -> (u16, &'static str, String) {
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            admin.metrics.render(&(admin.gauges)()),
        ),
        "/healthz" => (200, "text/plain", "ok\n".into()),
        "/readyz" if admin.ready.load(Ordering::Relaxed) => (200, "text/plain", "ready\n".into()),
        "/readyz" => (
            503,
            "text/plain",
            "not ready: policy or listeners not up yet\n".into(),
        ),
        _ => (
            404,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "admin server: cannot listen on {addr}: {source}; pick a free address with --metrics-listen"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds now (a taken port fails startup) and serves the admin endpoints over HTTP/1.1 until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    admin: Arc<Admin>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, AdminError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })?;
    Ok(tokio::spawn(serve_on(listener, admin, shutdown)))
}

/// Serves the admin endpoints on a bound listener until `shutdown`.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    admin: Arc<Admin>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let pause = std::time::Duration::from_millis(50);
    let failed = |e: &std::io::Error| tracing::warn!("admin accept failed: {e}");
    while let Some((stream, _)) =
        crate::accept::next_connection(&listener, &shutdown, pause, failed).await
    {
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (status, ctype, body) = route(&admin, req.uri().path());
                    async move {
                        hyper::Response::builder()
                            .status(status)
                            .header("content-type", ctype)
                            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{DropReason, FlowEndpoint, HttpInfo, L7Info, Verdict};

    fn rec(verdict: Verdict, src: u32, dst: u32, latency_ns: u64) -> FlowRecord {
        let a = "10.0.0.1:1000".parse().unwrap();
        let mut r = FlowRecord::new(
            verdict,
            FlowEndpoint::new(a, src),
            FlowEndpoint::new(a, dst),
            "HTTP",
        );
        r.latency_ns = latency_ns;
        r.l7 = Some(L7Info {
            http: Some(HttpInfo::default()),
            ..Default::default()
        });
        if verdict == Verdict::Dropped {
            r.drop_reason = Some(DropReason::PolicyDenied);
        }
        r
    }

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix} in\n{text}"))
    }

    #[test]
    fn counts_by_labels_and_histograms_latency() {
        let m = Metrics::new(100);
        m.observe(&rec(Verdict::Forwarded, 256, 257, 2_000_000));
        m.observe(&rec(Verdict::Forwarded, 256, 257, 20_000_000));
        m.observe(&rec(Verdict::Dropped, 256, 258, 100_000));
        let t = m.render(&Gauges {
            flows_seen: 3,
            flows_lost: 0,
            policy_generation: 3,
            policy_reload_errors: 1,
            http_connections_parked: 4,
        });
        assert!(t.contains("tollgate_requests_total{protocol=\"HTTP\",verdict=\"FORWARDED\",source_identity=\"256\",destination_identity=\"257\"} 2\n"), "{t}");
        assert!(t.contains(
            "verdict=\"DROPPED\",source_identity=\"256\",destination_identity=\"258\"} 1\n"
        ));
        assert!(t.contains("tollgate_drops_total{reason=\"POLICY_DENIED\"} 1\n"));
        assert_eq!(
            line(
                &t,
                "tollgate_request_duration_seconds_bucket{protocol=\"HTTP\",verdict=\"FORWARDED\",le=\"0.005\"}"
            ),
            "tollgate_request_duration_seconds_bucket{protocol=\"HTTP\",verdict=\"FORWARDED\",le=\"0.005\"} 1"
        );
        assert!(t.contains("tollgate_request_duration_seconds_bucket{protocol=\"HTTP\",verdict=\"FORWARDED\",le=\"+Inf\"} 2\n"));
        assert!(t.contains(
            "tollgate_request_duration_seconds_count{protocol=\"HTTP\",verdict=\"FORWARDED\"} 2\n"
        ));
        assert!(t.contains("tollgate_policy_reloads_total 2\n"));
        assert!(t.contains("tollgate_policy_reload_errors_total 1\n"));
        assert!(t.contains("tollgate_http_connections_parked 4\n"));
        assert!(t.contains("tollgate_flows_seen_total 3\n"));
    }

    #[test]
    fn label_sets_beyond_the_cap_go_to_other() {
        let m = Metrics::new(2);
        for dst in 300..310 {
            m.observe(&rec(Verdict::Forwarded, 256, dst, 0));
        }
        m.observe(&rec(Verdict::Forwarded, 256, 300, 0));
        let t = m.render(&Gauges::default());
        let series = t
            .lines()
            .filter(|l| l.starts_with("tollgate_requests_total{"))
            .count();
        assert_eq!(series, 3, "{t}");
        assert!(
            t.contains("source_identity=\"other\",destination_identity=\"other\"} 8\n"),
            "{t}"
        );
        assert!(t.contains("destination_identity=\"300\"} 2\n"), "{t}");
    }

    #[test]
    fn routes_health_readiness_and_404() {
        let ready = Arc::new(AtomicBool::new(false));
        let admin = Admin {
            metrics: Arc::new(Metrics::new(10)),
            ready: ready.clone(),
            gauges: Box::new(Gauges::default),
        };
        assert_eq!(route(&admin, "/healthz").0, 200);
        assert_eq!(route(&admin, "/readyz").0, 503);
        ready.store(true, Ordering::Relaxed);
        assert_eq!(route(&admin, "/readyz").0, 200);
        assert_eq!(route(&admin, "/nope").0, 404);
        assert!(
            route(&admin, "/metrics")
                .2
                .contains("# TYPE tollgate_requests_total counter")
        );
    }
}
