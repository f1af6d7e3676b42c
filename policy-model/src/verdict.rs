//! Flows, requests and the verdicts the engine returns for them.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::identity::Identity;

/// Traffic direction, seen from the endpoint a policy selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// Transport protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// The L7 protocol a port's rules speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum L7Kind {
    Http,
    Kafka,
    Dns,
}

impl fmt::Display for L7Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            L7Kind::Http => "http",
            L7Kind::Kafka => "kafka",
            L7Kind::Dns => "dns",
        })
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Decision {
    Allow,
    Deny,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        })
    }
}

/// The kind of policy object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyKind {
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
    NetworkPolicy,
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            PolicyKind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
            PolicyKind::NetworkPolicy => "NetworkPolicy",
        })
    }
}

/// Points at one rule of one policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RuleRef {
    /// `namespace/name`, or `name` for clusterwide policies.
    pub policy: String,
    pub kind: PolicyKind,
    pub direction: Direction,
    /// True for `ingressDeny` / `egressDeny` rules.
    pub deny: bool,
    /// Index in the policy's `ingress` / `egress` (or deny) list.
    pub rule_index: usize,
    /// Index of the L7 rule within the port's `rules` list, for request verdicts.
    pub l7_index: Option<usize>,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let section = match (self.direction, self.deny) {
            (Direction::Ingress, false) => "ingress",
            (Direction::Egress, false) => "egress",
            (Direction::Ingress, true) => "ingressDeny",
            (Direction::Egress, true) => "egressDeny",
        };
        write!(
            f,
            "{} {} {section}[{}]",
            self.kind, self.policy, self.rule_index
        )?;
        if let Some(i) = self.l7_index {
            write!(f, " l7[{i}]")?;
        }
        Ok(())
    }
}

/// Why a verdict was reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// Allowed. `by` lists the rules that allowed it (egress first, then ingress); empty when no policy selects
    /// either side in the relevant directions.
    Allowed { by: Vec<RuleRef> },
    /// The endpoint is selected (default-deny) in `direction` and no allow rule matched.
    NoRuleMatched {
        direction: Direction,
        endpoint: Identity,
    },
    /// A deny rule matched (deny beats every allow).
    DenyRule(RuleRef),
    /// The connection is allowed only by L7 rules and none of them matched the request. `policies` names the
    /// policies whose L7 rules were checked (`namespace/name`), so a flow record says whose rules refused it.
    L7NoMatch {
        direction: Direction,
        kind: L7Kind,
        policies: Vec<String>,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Allowed { by } if by.is_empty() => {
                f.write_str("allowed: no policy selects the endpoints")
            }
            Reason::Allowed { by } => {
                f.write_str("allowed by ")?;
                for (i, r) in by.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" and ")?;
                    }
                    write!(f, "{r}")?;
                }
                Ok(())
            }
            Reason::NoRuleMatched {
                direction,
                endpoint,
            } => write!(
                f,
                "denied: no {direction} rule matched for selected endpoint identity {endpoint}"
            ),
            Reason::DenyRule(r) => write!(f, "denied by {r}"),
            Reason::L7NoMatch {
                direction,
                kind,
                policies,
            } => {
                write!(f, "denied: no {kind} rule matched the request ({direction}")?;
                if !policies.is_empty() {
                    write!(f, "; rules of {}", policies.join(", "))?;
                }
                f.write_str(")")
            }
        }
    }
}

/// A connection as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    pub protocol: Protocol,
    pub src_identity: Identity,
    pub dst_identity: Identity,
    /// DNS names the destination IP was learned for (from the [`crate::FqdnCache`]); used by `toFQDNs` rules in
    /// the request queries, which take no cache. Filled by [`crate::PolicyEngine::flow_with_names`].
    pub dst_names: Vec<String>,
}

/// Verdict for a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionVerdict {
    pub decision: Decision,
    /// `Some(kind)`: allowed only request by request; the proxy must parse and ask the request queries.
    pub l7: Option<L7Kind>,
    pub reason: Reason,
    /// An allowing rule has `authentication.mode: required`: only a mutually authenticated connection (the node
    /// proxies' mTLS tunnel) may use it; a plain connection must be refused (Hubble drop reason AUTH_REQUIRED).
    pub auth_required: bool,
}

/// A header change requested by `headerMatches` with a `mismatch` action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeaderAction {
    Add { name: String, value: String },
    Delete { name: String },
    Replace { name: String, value: String },
    Log { name: String },
}

/// Verdict for one L7 request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestVerdict {
    pub decision: Decision,
    pub reason: Reason,
    pub header_actions: Vec<HeaderAction>,
}

/// What the eBPF layer must redirect to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct L7Port {
    pub identity: Identity,
    pub direction: Direction,
    pub port: u16,
    pub end_port: u16,
    pub protocol: Protocol,
    /// The L7 parser the port needs; `None` for a port diverted only because its rule requires authentication.
    pub kind: Option<L7Kind>,
}

/// An HTTP (or gRPC: `POST /pkg.Service/Method`) request.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// Path with query string, as `:path`.
    pub path: &'a str,
    pub host: &'a str,
    /// Names compared case-insensitively; repeated headers are joined with ", ".
    pub headers: &'a [(&'a str, &'a str)],
}

/// A Kafka request header plus the topics the request names.
#[derive(Debug, Clone, Copy)]
pub struct KafkaRequest<'a> {
    pub api_key: i16,
    pub api_version: i16,
    pub client_id: Option<&'a str>,
    pub topics: &'a [&'a str],
}

/// A DNS query.
#[derive(Debug, Clone, Copy)]
pub struct DnsQuery<'a> {
    pub name: &'a str,
    pub qtype: u16,
}
