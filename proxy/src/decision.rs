//! Pure decisions: from the current policy snapshot and what the connection/request looks like, to what the proxy
//! must do. No sockets here; `connection.rs` and `http.rs` carry the results out. Policy semantics themselves are
//! policy-model's; this module only maps its verdicts onto proxy actions and flow-record fields.

use std::net::SocketAddr;
use std::time::SystemTime;

use crate::policy_adapter::{
    ConnectionVerdict, Decision, HeaderAction, HttpRequest, L7Kind, Protocol, Reason,
};

use crate::flow::{DropReason, FlowEndpoint, TrafficDirection};
use crate::policy_source::PolicySnapshot;

/// What to do with a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionPlan {
    /// Refuse it (RST) and record a DROPPED flow.
    Drop {
        reason: String,
        drop_reason: DropReason,
        direction: Option<TrafficDirection>,
    },
    /// L3/L4 allow without L7 rules: splice bytes.
    Splice {
        reason: String,
        direction: Option<TrafficDirection>,
    },
    /// HTTP rules on this port: parse and decide request by request.
    Http {
        reason: String,
        direction: Option<TrafficDirection>,
    },
    /// Kafka rules on this port: decode and decide request by request (`kafka::handler`).
    Kafka {
        reason: String,
        direction: Option<TrafficDirection>,
    },
    /// L7 rules of a kind this build cannot enforce on a TCP connection (DNS rules on a port other than the DNS
    /// proxy's): refuse, fail closed.
    Unsupported {
        what: String,
        reason: String,
        direction: Option<TrafficDirection>,
    },
}

/// What to do with one HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestDecision {
    Forward {
        reason: String,
        header_actions: Vec<HeaderAction>,
        direction: Option<TrafficDirection>,
    },
    Deny {
        reason: String,
        drop_reason: DropReason,
        direction: Option<TrafficDirection>,
    },
}

impl RequestDecision {
    pub fn direction(&self) -> Option<TrafficDirection> {
        match self {
            RequestDecision::Forward { direction, .. }
            | RequestDecision::Deny { direction, .. } => *direction,
        }
    }
}

/// Deny rules are reported as POLICY_DENY (Hubble 181); everything else denied is POLICY_DENIED (133).
pub(crate) fn drop_reason_of(reason: &Reason) -> DropReason {
    if crate::policy_adapter::is_deny_rule(reason) {
        DropReason::PolicyDeny
    } else {
        DropReason::PolicyDenied
    }
}

fn direction_of(reason: &Reason) -> Option<TrafficDirection> {
    crate::policy_adapter::direction(reason)
}

/// The flow of a TCP connection and its L3/L4 verdict under `snap`, now (FQDN-learned names included). Every
/// per-request decision re-runs it, so a reload applies to open connections.
pub(crate) fn connection_verdict(
    snap: &PolicySnapshot,
    client: SocketAddr,
    dst: SocketAddr,
) -> (crate::policy_adapter::Flow, ConnectionVerdict) {
    let flow = snap
        .engine
        .flow(client.ip(), dst.ip(), dst.port(), Protocol::Tcp);
    let v = snap
        .engine
        .connection(&flow, &snap.fqdn.read(), SystemTime::now());
    (flow, v)
}

/// Why a connection needing authentication is refused on a request of an open connection (after a reload).
pub(crate) fn auth_required_reason(conn: &ConnectionVerdict) -> String {
    format!(
        "{}; the rule now requires mutual authentication and this connection was not authenticated",
        conn.reason
    )
}

/// Decides a new TCP connection from `client` to its original destination `dst`.
pub fn plan_connection(
    snap: &PolicySnapshot,
    client: SocketAddr,
    dst: SocketAddr,
) -> ConnectionPlan {
    let (_, v) = connection_verdict(snap, client, dst);
    let reason = v.reason.to_string();
    let direction = direction_of(&v.reason);
    if v.decision == Decision::Allow && v.auth_required {
        return auth_required_drop(reason, direction);
    }
    match (v.decision, v.l7) {
        (Decision::Deny, _) => ConnectionPlan::Drop {
            reason,
            drop_reason: drop_reason_of(&v.reason),
            direction,
        },
        (Decision::Allow, None) => ConnectionPlan::Splice { reason, direction },
        (Decision::Allow, Some(L7Kind::Http)) => ConnectionPlan::Http { reason, direction },
        (Decision::Allow, Some(L7Kind::Kafka)) => ConnectionPlan::Kafka { reason, direction },
        (Decision::Allow, Some(other)) => ConnectionPlan::Unsupported {
            what: format!("{other:?}"),
            reason,
            direction,
        },
    }
}

/// Connections arriving here are plain TCP (the node-to-node mTLS tunnel is not wired into the connection path
/// yet), so a rule requiring mutual authentication can only refuse them: fail closed, never allow unauthenticated.
fn auth_required_drop(reason: String, direction: Option<TrafficDirection>) -> ConnectionPlan {
    ConnectionPlan::Drop {
        reason: format!(
            "{reason}; the rule requires mutual authentication (authentication.mode: required) and this \
             connection was not authenticated"
        ),
        drop_reason: DropReason::AuthRequired,
        direction,
    }
}

/// Whether a connection verdict requires authentication that a plain connection cannot give.
pub fn needs_auth(conn: &ConnectionVerdict) -> bool {
    conn.decision == Decision::Allow && conn.auth_required
}

/// Decides one HTTP request against the snapshot current when it arrived. The connection verdict is re-evaluated
/// too, so a reload that denies the whole connection (or drops the L7 rules) applies to open connections.
pub fn decide_request(
    snap: &PolicySnapshot,
    client: SocketAddr,
    dst: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> RequestDecision {
    let (flow, conn) = connection_verdict(snap, client, dst);
    if needs_auth(&conn) {
        return RequestDecision::Deny {
            reason: auth_required_reason(&conn),
            drop_reason: DropReason::AuthRequired,
            direction: direction_of(&conn.reason),
        };
    }
    match (conn.decision, conn.l7) {
        (Decision::Deny, _) => RequestDecision::Deny {
            reason: conn.reason.to_string(),
            drop_reason: drop_reason_of(&conn.reason),
            direction: direction_of(&conn.reason),
        },
        (Decision::Allow, None) => RequestDecision::Forward {
            reason: conn.reason.to_string(),
            header_actions: Vec::new(),
            direction: direction_of(&conn.reason),
        },
        (Decision::Allow, Some(L7Kind::Http)) => {
            let req = HttpRequest {
                method,
                path,
                host,
                headers,
            };
            let v = snap.engine.http(&flow, &req);
            match v.decision {
                Decision::Allow => RequestDecision::Forward {
                    reason: v.reason.to_string(),
                    header_actions: v.header_actions,
                    direction: direction_of(&v.reason),
                },
                Decision::Deny => RequestDecision::Deny {
                    reason: v.reason.to_string(),
                    drop_reason: drop_reason_of(&v.reason),
                    direction: direction_of(&v.reason),
                },
            }
        }
        // The port switched to another L7 protocol under a live HTTP connection: refuse, fail closed.
        (Decision::Allow, Some(other)) => RequestDecision::Deny {
            reason: format!(
                "{}; port now carries {other:?} rules, not HTTP",
                conn.reason
            ),
            drop_reason: DropReason::PolicyDenied,
            direction: direction_of(&conn.reason),
        },
    }
}

/// The flow-record view of one address: identity from the endpoint table, pod details when known.
pub fn flow_endpoint(snap: &PolicySnapshot, addr: SocketAddr) -> FlowEndpoint {
    let identity = snap.endpoints.identity_of_ip(addr.ip());
    let ep = FlowEndpoint::new(addr, identity.0);
    match snap.endpoints.by_ip(addr.ip()) {
        Some(e) => ep.with_pod(&e.namespace, &e.name, &e.labels),
        None => ep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: mtls, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: web}}]
      authentication: {mode: required}
      toPorts:
        - ports: [{port: \"8080\", protocol: TCP}]
          rules: {http: [{method: GET}]}
    - fromEndpoints: [{matchLabels: {app: batch}}]
      toPorts: [{ports: [{port: \"9090\", protocol: TCP}]}]
";
    const ENDPOINTS: &str = "endpoints:
  - {name: web, namespace: prod, labels: {app: web}, ip: 10.0.1.10}
  - {name: batch, namespace: prod, labels: {app: batch}, ip: 10.0.1.11}
  - {name: api, namespace: prod, labels: {app: api}, ip: 10.0.1.20}
";

    /// A plain connection to a port whose rule requires mutual authentication is refused with AUTH_REQUIRED (the
    /// tunnel is the only way to satisfy it), also per request after a reload; other rules are unaffected.
    #[test]
    fn authentication_required_refuses_plain_connections() {
        let snap = crate::policy_source::compile(
            &[("p.yaml".into(), POLICY.into())],
            ("e.yaml", ENDPOINTS),
            1,
        )
        .unwrap();
        let web: SocketAddr = "10.0.1.10:40000".parse().unwrap();
        let batch: SocketAddr = "10.0.1.11:40000".parse().unwrap();
        let api = |port| SocketAddr::new("10.0.1.20".parse().unwrap(), port);
        match plan_connection(&snap, web, api(8080)) {
            ConnectionPlan::Drop {
                drop_reason,
                reason,
                direction,
            } => {
                assert_eq!(drop_reason, DropReason::AuthRequired);
                assert!(reason.contains("authentication.mode: required"), "{reason}");
                assert_eq!(direction, Some(TrafficDirection::Ingress));
            }
            other => panic!("{other:?}"),
        }
        let d = decide_request(&snap, web, api(8080), "GET", "/", "api", &[]);
        assert!(
            matches!(
                d,
                RequestDecision::Deny {
                    drop_reason: DropReason::AuthRequired,
                    ..
                }
            ),
            "{d:?}"
        );
        assert!(matches!(
            plan_connection(&snap, batch, api(9090)),
            ConnectionPlan::Splice { .. }
        ));
    }
}
