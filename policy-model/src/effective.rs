//! What the compiled engine enforces for one endpoint, in words an operator can check against the policy objects
//! (`tollgate policy get`, `tollgate endpoint list`), and the trace of one hypothetical request through it
//! (`tollgate policy trace`).
//!
//! Pure: reads a compiled [`PolicyEngine`] (and, for traces, an [`FqdnCache`] and the time passed in).

use std::net::IpAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::dns::DnsMatcher;
use crate::engine::{CompiledL7, CompiledPeers, CompiledRule, PolicyEngine};
use crate::fqdn::FqdnCache;
use crate::identity::Identity;
use crate::load::{PortMatch, PortSel};
use crate::verdict::*;

/// Rules in force for one endpoint, per direction.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EffectivePolicy {
    pub identity: u32,
    pub ingress: DirectionRules,
    pub egress: DirectionRules,
}

/// One direction of an endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirectionRules {
    /// Default-deny: some policy with this section selects the endpoint, so only what a rule allows passes.
    pub enforced: bool,
    /// Allow rules first (in policy order), then deny rules.
    pub rules: Vec<EffectiveRule>,
}

/// One rule, with the policy object it came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EffectiveRule {
    pub rule: RuleRef,
    /// `RuleRef` rendered (`CiliumNetworkPolicy shop/api-l7 ingress[0]`), the form flow records use.
    pub name: String,
    /// The file (or API object origin) and document index the policy was read from.
    pub source_file: String,
    pub source_document: usize,
    /// Who the rule applies to, resolved: `ns/pod` names of the endpoints it selects, reserved entities, CIDRs,
    /// FQDN matchers; `any` when the rule has no L3 selector.
    pub peers: Vec<String>,
    /// Empty: every port, no L7 rules.
    pub ports: Vec<EffectivePorts>,
    pub auth_required: bool,
}

/// One `toPorts` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EffectivePorts {
    /// `8080/TCP`, `53/ANY`, `8000-8099/TCP`, `http-alt(named)/TCP`.
    pub ports: Vec<String>,
    pub l7: Option<L7Kind>,
    /// The L7 rules, one line each (`GET /products/.*`, `produce topic=orders`, `matchPattern *.example.com`).
    pub l7_rules: Vec<String>,
}

/// Is `identity` default-deny in `dir`?
pub fn enforced(engine: &PolicyEngine, identity: Identity, dir: Direction) -> bool {
    engine
        .dir_policy(identity, dir)
        .is_some_and(|d| d.default_deny)
}

/// The rules in force for `identity`.
pub fn effective(engine: &PolicyEngine, identity: Identity) -> EffectivePolicy {
    let side = |dir: Direction| {
        let Some(d) = engine.dir_policy(identity, dir) else {
            return DirectionRules {
                enforced: false,
                rules: Vec::new(),
            };
        };
        DirectionRules {
            enforced: d.default_deny,
            rules: d
                .allow
                .iter()
                .chain(&d.deny)
                .map(|&i| describe(engine, engine.rule(i)))
                .collect(),
        }
    };
    EffectivePolicy {
        identity: identity.0,
        ingress: side(Direction::Ingress),
        egress: side(Direction::Egress),
    }
}

fn describe(engine: &PolicyEngine, r: &CompiledRule) -> EffectiveRule {
    EffectiveRule {
        rule: r.rule.clone(),
        name: r.rule.to_string(),
        source_file: r.source.0.clone(),
        source_document: r.source.1,
        peers: peers(engine, &r.peers),
        ports: r
            .ports
            .iter()
            .map(|pr| EffectivePorts {
                ports: pr.ports.iter().map(port_text).collect(),
                l7: pr.l7.as_ref().map(CompiledL7::kind),
                l7_rules: pr.l7.as_ref().map(l7_text).unwrap_or_default(),
            })
            .collect(),
        auth_required: r.auth_required,
    }
}

fn peers(engine: &PolicyEngine, p: &CompiledPeers) -> Vec<String> {
    match p {
        CompiledPeers::Any => vec!["any".into()],
        CompiledPeers::Nothing => vec!["nothing (empty rule)".into()],
        CompiledPeers::Match {
            identities,
            all,
            cidrs,
            fqdns,
        } => {
            let mut out = Vec::new();
            if *all {
                out.push("entity all".into());
            }
            let mut ids: Vec<Identity> = identities.iter().copied().collect();
            ids.sort();
            for id in ids {
                match id {
                    Identity::HOST => out.push("entity host".into()),
                    Identity::WORLD => out.push("entity world".into()),
                    id => out.extend(
                        engine
                            .endpoints()
                            .iter_with_identity()
                            .filter(|(_, i)| *i == id)
                            .map(|(ep, _)| format!("{}/{}", ep.namespace, ep.name)),
                    ),
                }
            }
            for (net, except) in cidrs {
                let mut s = format!("cidr {net}");
                if !except.is_empty() {
                    let ex: Vec<String> = except.iter().map(ToString::to_string).collect();
                    s.push_str(&format!(" except {}", ex.join(",")));
                }
                out.push(s);
            }
            out.extend(fqdns.iter().map(|m| format!("toFQDNs {}", dns_text(m))));
            if out.is_empty() {
                out.push("no current endpoint".into());
            }
            out
        }
    }
}

fn port_text(p: &PortMatch) -> String {
    let proto = p.protocol.map(|x| x.to_string()).unwrap_or("ANY".into());
    match &p.port {
        PortSel::Range(0, _) => format!("all/{proto}"),
        PortSel::Range(lo, hi) if lo == hi => format!("{lo}/{proto}"),
        PortSel::Range(lo, hi) => format!("{lo}-{hi}/{proto}"),
        PortSel::Named(n) => format!("{n}(named)/{proto}"),
    }
}

fn dns_text(m: &DnsMatcher) -> String {
    match m {
        DnsMatcher::Name(n) => format!("matchName {n}"),
        DnsMatcher::Everything => "matchPattern *".into(),
        DnsMatcher::Pattern {
            multi_prefix,
            labels,
        } => format!(
            "matchPattern {}{}",
            if *multi_prefix { "**." } else { "" },
            labels.join(".")
        ),
    }
}

fn l7_text(l7: &CompiledL7) -> Vec<String> {
    match l7 {
        CompiledL7::Http(m) => m
            .rules()
            .iter()
            .map(|r| {
                let mut parts = vec![
                    r.method.clone().unwrap_or("*".into()),
                    r.path.clone().unwrap_or("*".into()),
                ];
                if let Some(h) = &r.host {
                    parts.push(format!("host={h}"));
                }
                for h in &r.headers {
                    let mut p = match &h.value {
                        Some(v) => format!("header {}={v}", h.name),
                        None => format!("header {}", h.name),
                    };
                    // Only `headerMatches` with a mismatch action differ from a plain requirement.
                    if h.mismatch != crate::http::Mismatch::Fail {
                        let action = format!("{:?}", h.mismatch).to_uppercase();
                        p.push_str(&format!(" mismatch={action}"));
                    }
                    parts.push(p);
                }
                parts.join(" ")
            })
            .collect(),
        CompiledL7::Kafka(rules) => rules
            .iter()
            .map(|k| {
                let keys: Vec<&str> = k
                    .api_keys
                    .iter()
                    .map(|key| crate::kafka::api_key_name(*key).unwrap_or("?"))
                    .collect();
                let mut s = if keys.is_empty() {
                    "any apiKey".to_string()
                } else if k.api_keys == crate::kafka::PRODUCE_KEYS {
                    "role=produce".to_string()
                } else if k.api_keys == crate::kafka::CONSUME_KEYS {
                    "role=consume".to_string()
                } else {
                    format!("apiKey={}", keys.join(","))
                };
                if let Some(v) = k.api_version {
                    s.push_str(&format!(" apiVersion={v}"));
                }
                if let Some(c) = &k.client_id {
                    s.push_str(&format!(" clientID={c}"));
                }
                if let Some(t) = &k.topic {
                    s.push_str(&format!(" topic={t}"));
                }
                s
            })
            .collect(),
        CompiledL7::Dns(ms) => ms.iter().map(dns_text).collect(),
    }
}

/// The L7 part of a trace question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceL7 {
    None,
    Http {
        method: String,
        path: String,
    },
    Dns {
        name: String,
    },
    Kafka {
        api_key: i16,
        api_version: i16,
        topic: String,
    },
}

/// "Would a connection from `src` to `dst:port` (and this request on it) be allowed right now?"
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceQuestion {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub l7: TraceL7,
}

/// The answer: the connection verdict, then (when the port has L7 rules and a request was given) the request
/// verdict. `final_*` is what the datapath would do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Trace {
    pub src_identity: u32,
    pub dst_identity: u32,
    pub connection: Decision,
    pub connection_reason: String,
    /// The port's L7 protocol when the connection is allowed only through L7 rules.
    pub l7: Option<L7Kind>,
    pub request: Option<Decision>,
    pub request_reason: Option<String>,
    pub verdict: Decision,
    pub reason: String,
    /// Set when the question lacks what the verdict depends on (an L7 port traced without a request, or the
    /// request's protocol differs from the port's).
    pub note: Option<String>,
}

/// Traces `q` through `engine` as the proxy would decide it at `now`.
pub fn trace(
    engine: &PolicyEngine,
    cache: &FqdnCache,
    now: SystemTime,
    q: &TraceQuestion,
) -> Trace {
    let flow = engine.flow_with_names(q.src, q.dst, q.port, q.protocol, cache, now);
    let conn = engine.connection(&flow, cache, now);
    let mut t = Trace {
        src_identity: flow.src_identity.0,
        dst_identity: flow.dst_identity.0,
        connection: conn.decision,
        connection_reason: conn.reason.to_string(),
        l7: conn.l7,
        request: None,
        request_reason: None,
        verdict: conn.decision,
        reason: conn.reason.to_string(),
        note: None,
    };
    if conn.decision == Decision::Deny {
        return t;
    }
    let verdict = match (&q.l7, conn.l7) {
        (_, None) => {
            if q.l7 != TraceL7::None {
                t.note = Some("no L7 rules on this port: the request is not inspected".into());
            }
            return t;
        }
        (TraceL7::None, Some(kind)) => {
            t.note = Some(format!(
                "the port has {kind} rules: give a request (--http-method/--http-path, --dns-name or \
                 --kafka-topic/--kafka-role) to see its verdict"
            ));
            return t;
        }
        (TraceL7::Http { method, path }, Some(L7Kind::Http)) => engine.http(
            &flow,
            &HttpRequest {
                method,
                path,
                host: "",
                headers: &[],
            },
        ),
        (TraceL7::Dns { name }, Some(L7Kind::Dns)) => {
            engine.dns(&flow, &DnsQuery { name, qtype: 1 })
        }
        (
            TraceL7::Kafka {
                api_key,
                api_version,
                topic,
            },
            Some(L7Kind::Kafka),
        ) => engine.kafka(
            &flow,
            &KafkaRequest {
                api_key: *api_key,
                api_version: *api_version,
                client_id: None,
                topics: &[topic.as_str()],
            },
        ),
        (_, Some(kind)) => {
            t.note = Some(format!(
                "the port has {kind} rules but the request given is of another protocol"
            ));
            return t;
        }
    };
    t.request = Some(verdict.decision);
    t.request_reason = Some(verdict.reason.to_string());
    t.verdict = verdict.decision;
    t.reason = verdict.reason.to_string();
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Endpoint, EndpointTable, load_policies};

    const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api-l7, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: frontend}}]
      toPorts:
        - ports: [{port: "8080", protocol: TCP}]
          rules: {http: [{method: GET, path: "/products/.*"}]}
    - fromEndpoints: [{matchLabels: {app: crawler}}]
      toPorts:
        - ports: [{port: "9092", protocol: TCP}]
          rules: {kafka: [{role: produce, topic: orders}]}
  ingressDeny:
    - fromEntities: [world]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fetcher-dns, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: fetcher}}
  egress:
    - toPorts:
        - ports: [{port: "53", protocol: ANY}]
          rules: {dns: [{matchPattern: "*.shop.example"}]}
    - toFQDNs: [{matchName: api.shop.example}]
"#;

    fn engine() -> PolicyEngine {
        let ep = |name: &str, app: &str, ip: &str| {
            Endpoint::new(name, "shop", &[("app", app)], ip.parse().unwrap())
        };
        let table = EndpointTable::new(vec![
            ep("frontend", "frontend", "10.0.5.10"),
            ep("api", "api", "10.0.5.20"),
            ep("crawler", "crawler", "10.0.5.30"),
            ep("fetcher", "fetcher", "10.0.5.40"),
        ])
        .unwrap();
        let load = load_policies("shop.yaml", POLICY);
        assert!(load.errors.is_empty(), "{:?}", load.errors);
        let (engine, errors) = PolicyEngine::compile(load.policies, &table);
        assert!(errors.is_empty(), "{errors:?}");
        engine
    }

    fn id(engine: &PolicyEngine, ip: &str) -> Identity {
        engine.endpoints().identity_of_ip(ip.parse().unwrap())
    }

    #[test]
    fn effective_rules_name_their_source_peers_ports_and_l7() {
        let e = engine();
        let api = effective(&e, id(&e, "10.0.5.20"));
        assert!(api.ingress.enforced);
        assert!(!api.egress.enforced && api.egress.rules.is_empty());
        let names: Vec<&str> = api.ingress.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "CiliumNetworkPolicy shop/api-l7 ingress[0]",
                "CiliumNetworkPolicy shop/api-l7 ingress[1]",
                "CiliumNetworkPolicy shop/api-l7 ingressDeny[0]",
            ]
        );
        let first = &api.ingress.rules[0];
        assert_eq!(
            (first.source_file.as_str(), first.source_document),
            ("shop.yaml", 0)
        );
        assert_eq!(first.peers, ["shop/frontend"]);
        assert_eq!(first.ports[0].ports, ["8080/TCP"]);
        assert_eq!(first.ports[0].l7, Some(L7Kind::Http));
        assert_eq!(first.ports[0].l7_rules, ["GET /products/.*"]);
        assert_eq!(
            api.ingress.rules[1].ports[0].l7_rules,
            ["role=produce topic=orders"]
        );
        assert_eq!(api.ingress.rules[2].peers, ["entity world"]);

        let fe = effective(&e, id(&e, "10.0.5.40"));
        assert!(fe.egress.enforced && !fe.ingress.enforced);
        assert_eq!(fe.egress.rules[0].peers, ["any"]);
        assert_eq!(fe.egress.rules[0].ports[0].ports, ["53/ANY"]);
        assert_eq!(
            fe.egress.rules[0].ports[0].l7_rules,
            ["matchPattern *.shop.example"]
        );
        assert_eq!(
            fe.egress.rules[1].peers,
            ["toFQDNs matchName api.shop.example"]
        );
        assert_eq!(fe.egress.rules[1].source_document, 1);
        // Unselected endpoint: nothing enforced either way.
        let crawler = effective(&e, id(&e, "10.0.5.30"));
        assert!(!crawler.ingress.enforced && !crawler.egress.enforced);
        assert!(enforced(&e, id(&e, "10.0.5.20"), Direction::Ingress));
    }

    fn q(src: &str, dst: &str, port: u16, l7: TraceL7) -> TraceQuestion {
        TraceQuestion {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
            l7,
        }
    }

    fn http(m: &str, p: &str) -> TraceL7 {
        TraceL7::Http {
            method: m.into(),
            path: p.into(),
        }
    }

    #[test]
    fn traces_name_the_rule_or_the_reason() {
        let e = engine();
        let cache = FqdnCache::default();
        let now = SystemTime::UNIX_EPOCH;
        let t = trace(
            &e,
            &cache,
            now,
            &q("10.0.5.10", "10.0.5.20", 8080, http("GET", "/products/1")),
        );
        assert_eq!(
            (t.connection, t.verdict),
            (Decision::Allow, Decision::Allow)
        );
        assert_eq!(
            t.reason,
            "allowed by CiliumNetworkPolicy shop/api-l7 ingress[0] l7[0]"
        );
        let t = trace(
            &e,
            &cache,
            now,
            &q("10.0.5.10", "10.0.5.20", 8080, http("POST", "/cart")),
        );
        assert_eq!((t.connection, t.verdict), (Decision::Allow, Decision::Deny));
        assert!(t.reason.contains("no http rule matched"), "{}", t.reason);
        // The crawler may not reach 8080 at all: the connection is refused, no request is looked at.
        let t = trace(
            &e,
            &cache,
            now,
            &q("10.0.5.30", "10.0.5.20", 8080, http("GET", "/products/1")),
        );
        assert_eq!((t.connection, t.request), (Decision::Deny, None));
        assert!(t.reason.contains("no ingress rule matched"), "{}", t.reason);
        // Kafka: produce to orders allowed, to another topic denied.
        let kafka = |topic: &str| TraceL7::Kafka {
            api_key: 0,
            api_version: 9,
            topic: topic.into(),
        };
        let t = trace(
            &e,
            &cache,
            now,
            &q("10.0.5.30", "10.0.5.20", 9092, kafka("orders")),
        );
        assert_eq!(t.verdict, Decision::Allow, "{t:?}");
        assert!(t.reason.ends_with("ingress[1] l7[0]"), "{}", t.reason);
        let t = trace(
            &e,
            &cache,
            now,
            &q("10.0.5.30", "10.0.5.20", 9092, kafka("payments")),
        );
        assert_eq!(t.verdict, Decision::Deny);
        // DNS from the fetcher to a resolver outside the cluster.
        let dns = |n: &str| TraceL7::Dns { name: n.into() };
        let mut dq = q("10.0.5.40", "192.0.2.53", 53, dns("api.shop.example"));
        dq.protocol = Protocol::Udp;
        assert_eq!(trace(&e, &cache, now, &dq).verdict, Decision::Allow);
        dq.l7 = dns("evil.example");
        let t = trace(&e, &cache, now, &dq);
        assert_eq!(t.verdict, Decision::Deny);
        assert!(t.reason.contains("no dns rule matched"), "{}", t.reason);
        // An L7 port traced without a request says what is missing.
        let t = trace(
            &e,
            &cache,
            now,
            &q("10.0.5.10", "10.0.5.20", 8080, TraceL7::None),
        );
        assert!(t.note.unwrap().contains("--http-method"));
    }
}
