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

/// Who is on the client side of a connection, as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downstream {
    /// The source workload's address: the accepted socket's peer, or for a tunnelled connection the address its
    /// node proxy reported (only used for flow records once the certificate named the identity).
    pub addr: SocketAddr,
    pub auth: Auth,
}

/// Whether (and how) the node-to-node mTLS tunnel authenticates this connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// A plain connection: the source identity is the one of its address; rules requiring authentication refuse it.
    #[default]
    Plain,
    /// Arrived through the tunnel: the peer proved `spiffe_id`, which maps to `identity`. The identity comes from
    /// the certificate, not from the address.
    Inbound {
        spiffe_id: String,
        identity: policy_model::Identity,
    },
    /// Leaves through the tunnel to a node proxy that must prove `node_id`; the destination node authenticates the
    /// source's SVID and enforces its ingress policy on it.
    Outbound { node_id: String },
}

impl Downstream {
    /// A plain connection from `addr`.
    pub fn plain(addr: SocketAddr) -> Self {
        Downstream {
            addr,
            auth: Auth::Plain,
        }
    }

    /// Whether a rule requiring authentication is satisfied.
    pub fn authenticated(&self) -> bool {
        self.auth != Auth::Plain
    }

    /// Stamps `auth_type` and the peer's SPIFFE ID on a flow record of this connection.
    pub fn stamp(&self, rec: &mut crate::flow::FlowRecord) {
        match &self.auth {
            Auth::Plain => {}
            Auth::Inbound { spiffe_id, .. } => {
                rec.auth_type = crate::flow::AuthType::Spire;
                rec.peer_spiffe_id = Some(spiffe_id.clone());
            }
            Auth::Outbound { node_id } => {
                rec.auth_type = crate::flow::AuthType::Spire;
                rec.peer_spiffe_id = Some(node_id.clone());
            }
        }
    }
}

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
    client: &Downstream,
    dst: SocketAddr,
) -> (crate::policy_adapter::Flow, ConnectionVerdict) {
    let mut flow = snap
        .engine
        .flow(client.addr.ip(), dst.ip(), dst.port(), Protocol::Tcp);
    if let Auth::Inbound { identity, .. } = &client.auth {
        flow.src_identity = *identity;
    }
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
    client: &Downstream,
    dst: SocketAddr,
) -> ConnectionPlan {
    let (_, v) = connection_verdict(snap, client, dst);
    let reason = v.reason.to_string();
    let direction = direction_of(&v.reason);
    if needs_auth(&v, client) {
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

/// A plain connection cannot satisfy a rule requiring mutual authentication: refuse it (fail closed). Only the
/// node-to-node tunnel (`Auth::Inbound` / `Auth::Outbound`) satisfies such rules.
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

/// Whether an allowing verdict requires authentication this connection does not have.
pub fn needs_auth(conn: &ConnectionVerdict, client: &Downstream) -> bool {
    conn.decision == Decision::Allow && conn.auth_required && !client.authenticated()
}

/// Decides one HTTP request against the snapshot current when it arrived. The connection verdict is re-evaluated
/// too, so a reload that denies the whole connection (or drops the L7 rules) applies to open connections.
pub fn decide_request(
    snap: &PolicySnapshot,
    client: &Downstream,
    dst: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> RequestDecision {
    let (flow, conn) = connection_verdict(snap, client, dst);
    if needs_auth(&conn, client) {
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

/// The flow-record view of a connection's source: for a tunnelled connection the identity the certificate proved
/// (pod details when the reported address is a pod of that identity), else [`flow_endpoint`] of its address.
pub fn source_endpoint(snap: &PolicySnapshot, client: &Downstream) -> FlowEndpoint {
    match &client.auth {
        Auth::Inbound { identity, .. } => {
            let mut ep = FlowEndpoint::new(client.addr, identity.0);
            match snap.endpoints.by_ip(client.addr.ip()) {
                Some(e) if snap.endpoints.identity_of_ip(client.addr.ip()) == *identity => {
                    ep.with_pod(&e.namespace, &e.name, &e.labels)
                }
                _ => {
                    // No pod at that address: still show the identity's namespace and labels.
                    ep.namespace = snap.endpoints.namespace_of(*identity).map(str::to_string);
                    if let Some(labels) = snap.endpoints.labels_of(*identity) {
                        ep.labels = labels.iter().map(|(k, v)| format!("k8s:{k}={v}")).collect();
                    }
                    ep
                }
            }
        }
        _ => flow_endpoint(snap, client.addr),
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
        let web = &Downstream::plain("10.0.1.10:40000".parse().unwrap());
        let batch = &Downstream::plain("10.0.1.11:40000".parse().unwrap());
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

    /// Through the tunnel the identity is the certificate's, whatever the address: the node's own address with
    /// web's identity is allowed on the auth-required port (request rules still apply), batch's identity is not,
    /// and the same address without the tunnel is just "world".
    #[test]
    fn tunnelled_connections_carry_the_certificate_identity() {
        let snap = crate::policy_source::compile(
            &[("p.yaml".into(), POLICY.into())],
            ("e.yaml", ENDPOINTS),
            1,
        )
        .unwrap();
        let node: SocketAddr = "192.168.0.1:40000".parse().unwrap();
        let api = SocketAddr::new("10.0.1.20".parse().unwrap(), 8080);
        let as_id = |ip: &str| Downstream {
            addr: node,
            auth: Auth::Inbound {
                spiffe_id: "spiffe://cluster.local/ns/prod/sa/x".into(),
                identity: snap.endpoints.identity_of_ip(ip.parse().unwrap()),
            },
        };
        let web = as_id("10.0.1.10");
        assert!(matches!(
            plan_connection(&snap, &web, api),
            ConnectionPlan::Http { .. }
        ));
        assert!(matches!(
            decide_request(&snap, &web, api, "GET", "/", "api", &[]),
            RequestDecision::Forward { .. }
        ));
        assert!(matches!(
            decide_request(&snap, &web, api, "POST", "/", "api", &[]),
            RequestDecision::Deny {
                drop_reason: DropReason::PolicyDenied,
                ..
            }
        ));
        assert!(matches!(
            plan_connection(&snap, &as_id("10.0.1.11"), api),
            ConnectionPlan::Drop {
                drop_reason: DropReason::PolicyDenied,
                ..
            }
        ));
        assert!(matches!(
            plan_connection(&snap, &Downstream::plain(node), api),
            ConnectionPlan::Drop {
                drop_reason: DropReason::PolicyDenied,
                ..
            }
        ));
        // Leaving through the tunnel satisfies the requirement on the source node too.
        let out = Downstream {
            addr: "10.0.1.10:40000".parse().unwrap(),
            auth: Auth::Outbound {
                node_id: "spiffe://cluster.local/ns/kube-system/sa/tollgate".into(),
            },
        };
        assert!(matches!(
            plan_connection(&snap, &out, api),
            ConnectionPlan::Http { .. }
        ));
        let mut rec = crate::flow::FlowRecord::new(
            crate::flow::Verdict::Forwarded,
            source_endpoint(&snap, &web),
            flow_endpoint(&snap, api),
            "HTTP",
        );
        web.stamp(&mut rec);
        assert_eq!(rec.auth_type, crate::flow::AuthType::Spire);
        assert_eq!(
            rec.source.identity,
            snap.endpoints
                .identity_of_ip("10.0.1.10".parse().unwrap())
                .0
        );
        assert_eq!(
            rec.peer_spiffe_id.as_deref(),
            Some("spiffe://cluster.local/ns/prod/sa/x")
        );
    }
}
