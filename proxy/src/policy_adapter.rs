//! The one place this crate touches policy-model's API: re-exports plus the small helpers the proxy needs on top
//! of it (is a reason a deny rule? which traffic direction decided?). If policy-model's API moves, only this file
//! changes.

use std::time::Duration;

pub use policy_model::{
    ConnectionVerdict, Decision, Direction, EndpointTable, Flow, FqdnCache, HeaderAction,
    HttpRequest, KafkaRequest, L7Kind, PolicyEngine, PolicyError, Protocol, Reason, load_policies,
};

use crate::flow::TrafficDirection;

/// An empty FQDN cache: standalone HTTP mode has no DNS proxy feeding it yet.
pub fn empty_fqdn_cache() -> FqdnCache {
    FqdnCache::new(Duration::ZERO)
}

/// Whether the reason names a deny rule (`ingressDeny`/`egressDeny`), as opposed to "nothing allowed it".
pub fn is_deny_rule(reason: &Reason) -> bool {
    matches!(reason, Reason::DenyRule(_))
}

fn to_flow(d: Direction) -> TrafficDirection {
    match d {
        Direction::Ingress => TrafficDirection::Ingress,
        Direction::Egress => TrafficDirection::Egress,
    }
}

/// The traffic direction whose policy decided: the direction of the denying rule, or for an allow the direction
/// of the last allowing rule (policy-model lists egress first, then ingress; ingress is where L7 rules on the
/// server side live). `None` when no policy selects either side.
pub fn direction(reason: &Reason) -> Option<TrafficDirection> {
    match reason {
        Reason::Allowed { by } => by.last().map(|r| to_flow(r.direction)),
        Reason::NoRuleMatched { direction, .. } | Reason::L7NoMatch { direction, .. } => {
            Some(to_flow(*direction))
        }
        Reason::DenyRule(r) => Some(to_flow(r.direction)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_rules_and_directions_are_read_from_the_reason() {
        let no_match = Reason::NoRuleMatched {
            direction: Direction::Ingress,
            endpoint: policy_model::Identity(256),
        };
        assert!(!is_deny_rule(&no_match));
        assert_eq!(direction(&no_match), Some(TrafficDirection::Ingress));
        assert_eq!(direction(&Reason::Allowed { by: vec![] }), None);
        let l7 = Reason::L7NoMatch {
            direction: Direction::Egress,
            kind: L7Kind::Http,
            policies: vec!["prod/p".into()],
        };
        assert_eq!(direction(&l7), Some(TrafficDirection::Egress));
    }
}
