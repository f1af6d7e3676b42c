//! [`UiHub`]: what the UI server reads. Whoever has flows pushes them in with [`UiHub::ingest`] (the daemon from
//! its flow log, see `local.rs`; `tollgate relay` from its merged stream); the hub keeps the aggregates, a bounded
//! ring of recent flows for the table, and a broadcast for live updates.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

use super::aggregate::{Aggregate, DnsRow, DropRow, EndpointRow, FqdnRules, Limits, ServiceMap};
use super::query::{FlowQuery, FlowRow};
use crate::hubble::flow::Flow;

/// Flows the table can search (newest kept).
pub const RING: usize = 5_000;
/// Flows a live subscriber may fall behind before it skips ahead.
const LIVE_QUEUE: usize = 1_024;
/// Rows per view in a snapshot.
const VIEW_ROWS: usize = 200;

/// The live policy the UI explains flows with (absent for a relay that has none).
pub trait PolicyLens: FqdnRules + Send + Sync {}
impl<T: FqdnRules + Send + Sync> PolicyLens for T {}

/// The UI's state, shared by every connection of the UI server.
pub struct UiHub {
    aggregate: Mutex<Aggregate>,
    ring: Mutex<VecDeque<Arc<Flow>>>,
    ring_capacity: usize,
    live: broadcast::Sender<Arc<Flow>>,
    policy: Option<Box<dyn PolicyLens>>,
    /// Where the flows come from (`node <name>` or `relay`), shown in the header.
    pub source: String,
    /// Flows the source could not hand over because the UI fell behind (see `local.rs`).
    pub lost: AtomicU64,
}

impl std::fmt::Debug for UiHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UiHub")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Everything the page shows besides the flow table, for one namespace view.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub version: u64,
    pub source: String,
    pub now_ns: i64,
    pub flows_seen: u64,
    /// Flows skipped because the UI fell behind the data path (the page says so).
    pub flows_lost: u64,
    pub map: ServiceMap,
    pub drops: Vec<DropRow>,
    pub http: Vec<EndpointRow>,
    pub dns: Vec<DnsRow>,
}

impl UiHub {
    pub fn new(
        source: &str,
        limits: Limits,
        ring: usize,
        policy: Option<Box<dyn PolicyLens>>,
    ) -> Self {
        UiHub {
            aggregate: Mutex::new(Aggregate::new(limits)),
            ring: Mutex::new(VecDeque::with_capacity(ring.min(1024))),
            ring_capacity: ring.max(1),
            live: broadcast::channel(LIVE_QUEUE).0,
            policy,
            source: source.to_string(),
            lost: AtomicU64::new(0),
        }
    }

    /// Takes one flow: counted, kept for the table, sent to live subscribers.
    pub fn ingest(&self, flow: Flow) {
        self.aggregate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ingest(&flow);
        let flow = Arc::new(flow);
        crate::flow::publish(&self.live, &self.ring, self.ring_capacity, flow);
    }

    /// Flows from now on (subscribe before reading [`UiHub::flows`] to miss nothing).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Flow>> {
        self.live.subscribe()
    }

    /// The newest flows the query accepts, newest first.
    pub fn flows(&self, q: &FlowQuery) -> Vec<FlowRow> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter()
            .rev()
            .filter(|f| q.accepts(f))
            .take(q.limit)
            .map(|f| FlowRow::of(f))
            .collect()
    }

    pub fn version(&self) -> u64 {
        self.aggregate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .version()
    }

    pub fn snapshot(&self, ns: Option<&str>, now_ns: i64) -> Snapshot {
        let agg = self.aggregate.lock().unwrap_or_else(|p| p.into_inner());
        let rules = self.policy.as_deref().map(|p| p as &dyn FqdnRules);
        Snapshot {
            version: agg.version(),
            source: self.source.clone(),
            now_ns,
            flows_seen: agg.flows,
            flows_lost: self.lost.load(Ordering::Relaxed),
            map: agg.service_map(ns, now_ns),
            drops: agg.drops(50, now_ns),
            http: agg.http_endpoints(ns, VIEW_ROWS, now_ns),
            dns: agg.dns_names(ns, VIEW_ROWS, rules),
        }
    }
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Verdict as V;
    use crate::ui::aggregate::tests::{at, ep, flows_of, http};

    #[test]
    fn ring_is_bounded_and_newest_first() {
        let hub = UiHub::new("node a", Limits::default(), 4, None);
        let (fe, api) = (
            ep("shop", "frontend", "10.0.5.10", 1, 300),
            ep("shop", "api", "10.0.5.20", 8080, 301),
        );
        for i in 0..5 {
            let mut r = at(
                http(
                    fe.clone(),
                    api.clone(),
                    "POST",
                    &format!("/n{i}"),
                    403,
                    V::Dropped,
                    0,
                ),
                i,
            );
            r.policy_verdict_event = false;
            for f in flows_of(&r) {
                hub.ingest(f);
            }
        }
        let rows = hub.flows(&FlowQuery::parse("", 0).unwrap());
        let urls: Vec<&str> = rows
            .iter()
            .map(|r| r.http_url.as_deref().unwrap())
            .collect();
        assert_eq!(
            urls,
            [
                "http://api/n4",
                "http://api/n3",
                "http://api/n2",
                "http://api/n1"
            ]
        );
        hub.lost.fetch_add(3, Ordering::Relaxed);
        let snap = hub.snapshot(None, 0);
        assert_eq!(
            (snap.flows_seen, snap.flows_lost),
            (5, 3),
            "the aggregate saw every flow"
        );
        assert_eq!(snap.map.edges[0].drops, 5);
    }
}
