//! The one builder of connection, HTTP and Kafka flow records (`kafka/record.rs` says what goes into Kafka's; DNS
//! records come from `dns/record.rs`): a record starts from its parties (endpoints, protocol, the downstream's authentication) and is
//! finished by a typed [`FlowOutcome`], the only place a verdict, drop reason and policy text are set together.

use std::net::SocketAddr;
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
    pub fn new(source: FlowEndpoint, destination: FlowEndpoint, protocol: &str) -> Self {
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

    /// A flow between endpoints already resolved, with the downstream's authentication (the tunnel's SPIFFE ID).
    pub fn between(
        source: FlowEndpoint,
        destination: FlowEndpoint,
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
}
