//! The one builder of connection, HTTP and Kafka flow records (`kafka/record.rs` says what goes into Kafka's; DNS
//! records come from `dns/record.rs`): a record starts from its parties (endpoints, protocol, the downstream's authentication) and is
//! finished by a typed [`FlowOutcome`], the only place a verdict, drop reason and policy text are set together.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use crate::decision::{self, Downstream};
use crate::flow::{
    AuthType, DropReason, FlowEndpoint, FlowRecord, HttpInfo, KafkaInfo, L7Info, TrafficDirection,
    Verdict,
};
use crate::policy_source::PolicySnapshot;

/// What became of a flow. `policy` names the rule that allowed, the policy that denied, or the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowOutcome {
    Forwarded {
        policy: String,
    },
    Dropped {
        reason: DropReason,
        policy: String,
    },
    /// The proxy could not carry the flow out (verdict ERROR); `reason` is absent when no drop reason fits.
    Failed {
        reason: Option<DropReason>,
        policy: String,
    },
}

/// A flow record whose parties are known and whose outcome is not yet. The record's time is when it was started.
#[derive(Debug)]
pub struct FlowBuilder {
    rec: FlowRecord,
}

impl FlowBuilder {
    /// A flow between two endpoints over `protocol` (`TCP`, `HTTP`, `gRPC`).
    pub fn new(
        source: impl Into<Arc<FlowEndpoint>>,
        destination: impl Into<Arc<FlowEndpoint>>,
        protocol: &str,
    ) -> Self {
        FlowBuilder {
            rec: FlowRecord::new(Verdict::Forwarded, source, destination, protocol),
        }
    }

    /// The flow of a downstream connection to `dst`: endpoints as `snap` knows them, and the downstream's
    /// authentication (the tunnel's SPIFFE ID).
    pub fn connection(
        snap: &PolicySnapshot,
        down: &Downstream,
        dst: SocketAddr,
        protocol: &str,
    ) -> Self {
        Self::between(
            decision::source_endpoint(snap, down),
            decision::flow_endpoint(snap, dst),
            down,
            protocol,
        )
    }

    /// The flow of one request on a downstream connection: like [`FlowBuilder::connection`], with the endpoints
    /// `cache` built for this connection from the same snapshot.
    pub fn request(
        cache: &ConnEndpoints,
        snap: &Arc<PolicySnapshot>,
        down: &Downstream,
        dst: SocketAddr,
        protocol: &str,
    ) -> Self {
        let (source, destination) = cache.get(snap, down, dst);
        Self::between(source, destination, down, protocol)
    }

    /// A flow between endpoints already resolved, with the downstream's authentication (the tunnel's SPIFFE ID).
    pub fn between(
        source: impl Into<Arc<FlowEndpoint>>,
        destination: impl Into<Arc<FlowEndpoint>>,
        down: &Downstream,
        protocol: &str,
    ) -> Self {
        let mut b = Self::new(source, destination, protocol);
        down.stamp(&mut b.rec);
        b
    }

    /// Carried by (or refused at) the mTLS tunnel: `peer` is the SPIFFE ID the peer presented, if any.
    pub fn tunnel_peer(mut self, peer: Option<String>) -> Self {
        self.rec.auth_type = AuthType::Spire;
        self.rec.peer_spiffe_id = peer;
        self
    }

    pub fn direction(mut self, direction: Option<TrafficDirection>) -> Self {
        self.rec.traffic_direction = direction;
        self
    }

    /// The request's W3C `traceparent` (Hubble's trace context).
    pub fn trace_parent(mut self, trace_parent: Option<String>) -> Self {
        self.rec.trace_parent = trace_parent;
        self
    }

    pub fn http(mut self, info: HttpInfo) -> Self {
        self.rec.l7 = Some(L7Info {
            http: Some(info),
            kafka: None,
        });
        self
    }

    /// The Kafka request the flow carried.
    pub fn kafka(mut self, info: KafkaInfo) -> Self {
        self.rec.l7 = Some(L7Info {
            kafka: Some(info),
            ..Default::default()
        });
        self
    }

    pub fn latency_since(mut self, start: Instant) -> Self {
        self.rec.latency_ns = start.elapsed().as_nanos() as u64;
        self
    }

    pub fn finish(mut self, outcome: FlowOutcome) -> FlowRecord {
        let (verdict, drop_reason, policy) = match outcome {
            FlowOutcome::Forwarded { policy } => (Verdict::Forwarded, None, policy),
            FlowOutcome::Dropped { reason, policy } => (Verdict::Dropped, Some(reason), policy),
            FlowOutcome::Failed { reason, policy } => (Verdict::Error, reason, policy),
        };
        self.rec.verdict = verdict;
        self.rec.drop_reason = drop_reason;
        self.rec.policy = policy;
        self.rec
    }
}

/// The two endpoints of one downstream connection's flow records, built once per policy snapshot: the requests
/// of a keep-alive or HTTP/2 connection share them instead of each copying addresses, names and labels.
#[derive(Debug, Default)]
pub struct ConnEndpoints(Mutex<Option<CachedEndpoints>>);

#[derive(Debug)]
struct CachedEndpoints {
    /// The snapshot they were read from. A `Weak` keeps that snapshot's allocation, so no later snapshot can have
    /// its address while this is held: comparing addresses is comparing snapshots.
    snapshot: Weak<PolicySnapshot>,
    source: Arc<FlowEndpoint>,
    destination: Arc<FlowEndpoint>,
}

impl ConnEndpoints {
    /// The endpoints of `down` -> `dst` as `snap` knows them (a reload re-reads them: labels or pods may change).
    pub fn get(
        &self,
        snap: &Arc<PolicySnapshot>,
        down: &Downstream,
        dst: SocketAddr,
    ) -> (Arc<FlowEndpoint>, Arc<FlowEndpoint>) {
        let mut cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some(c) if std::ptr::eq(c.snapshot.as_ptr(), Arc::as_ptr(snap)) => {
                (c.source.clone(), c.destination.clone())
            }
            _ => {
                let c = CachedEndpoints {
                    snapshot: Arc::downgrade(snap),
                    source: Arc::new(decision::source_endpoint(snap, down)),
                    destination: Arc::new(decision::flow_endpoint(snap, dst)),
                };
                let pair = (c.source.clone(), c.destination.clone());
                *cached = Some(c);
                pair
            }
        }
    }

    /// Forgets the endpoints (a parked connection holds as little as it can).
    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outcome_sets_verdict_drop_reason_and_policy_together() {
        let ep = |s: &str| FlowEndpoint::new(s.parse().unwrap(), 2);
        let b = || FlowBuilder::new(ep("10.0.0.1:1"), ep("10.0.0.2:80"), "HTTP");
        let rec = b().finish(FlowOutcome::Failed {
            reason: None,
            policy: "no original destination".into(),
        });
        assert_eq!((rec.verdict, rec.drop_reason), (Verdict::Error, None));
        let rec = b()
            .tunnel_peer(Some("spiffe://td/ns/a/sa/b".into()))
            .finish(FlowOutcome::Dropped {
                reason: DropReason::AuthRequired,
                policy: "refused".into(),
            });
        let json = serde_json::to_value(&rec).unwrap();
        assert_eq!(json["verdict"], "DROPPED");
        assert_eq!(json["drop_reason"], "AUTH_REQUIRED");
        assert_eq!(json["auth_type"], "SPIRE");
        assert_eq!(json["peer_spiffe_id"], "spiffe://td/ns/a/sa/b");
        assert_eq!(json["policy"], "refused");
        let rec = b().finish(FlowOutcome::Forwarded {
            policy: "allowed".into(),
        });
        assert_eq!((rec.verdict, rec.drop_reason), (Verdict::Forwarded, None));
    }

    #[test]
    fn a_connections_requests_share_endpoints_read_from_their_own_snapshot() {
        let snap = Arc::new(crate::conformance::conformance_snapshot("http-ledger"));
        let down = Downstream::plain("10.0.21.10:40000".parse().unwrap());
        let dst: SocketAddr = "10.0.21.20:8080".parse().unwrap();
        let cache = ConnEndpoints::default();
        let (src, dest) = cache.get(&snap, &down, dst);
        assert_eq!(src.pod.as_deref(), Some("portal"));
        assert_eq!(dest.pod.as_deref(), Some("ledger"));
        assert_eq!((src.port, dest.port), (40000, 8080));
        let (again, _) = cache.get(&snap, &down, dst);
        assert!(
            Arc::ptr_eq(&src, &again),
            "same snapshot: shared, not rebuilt"
        );
        // A reload: the endpoints are read from the new snapshot, even while the old one is still alive.
        let reloaded = Arc::new(crate::conformance::conformance_snapshot("http-ledger"));
        let (fresh, _) = cache.get(&reloaded, &down, dst);
        assert!(!Arc::ptr_eq(&src, &fresh));
        assert_eq!(*fresh, *src);
        cache.clear();
        let (after_park, _) = cache.get(&reloaded, &down, dst);
        assert!(!Arc::ptr_eq(&fresh, &after_park));
        let rec = FlowBuilder::request(&cache, &reloaded, &down, dst, "HTTP").finish(
            FlowOutcome::Forwarded {
                policy: String::new(),
            },
        );
        assert!(Arc::ptr_eq(&rec.source, &after_park));
    }
}
