//! Loading: multi-document YAML -> validated [`Policy`] values, or errors with file, document and field path.
//! One bad document never drops the others.

use std::collections::HashMap;

use ipnet::IpNet;
use serde::Deserialize;
use serde_yaml::Value;

use crate::dns::DnsMatcher;
use crate::error::PolicyError;
use crate::http::{HttpRuleDef, parse_http_rule};
use crate::kafka::{self, KafkaRule};
use crate::labels::{NAMESPACE_LABEL, Requirement, Selector, normalize_key};
use crate::spec::*;
use crate::verdict::{Direction, L7Kind, PolicyKind, Protocol};

/// The result of loading one file.
#[derive(Debug, Default)]
pub struct PolicyLoad {
    pub policies: Vec<Policy>,
    pub errors: Vec<PolicyError>,
}

/// A validated policy, ready to compile.
#[derive(Debug, Clone)]
pub struct Policy {
    pub kind: PolicyKind,
    pub name: String,
    /// `None` for clusterwide policies.
    pub namespace: Option<String>,
    pub file: String,
    pub document: usize,
    pub(crate) subject: Peer,
    /// `Some` when the policy has the section (even empty): it then selects its endpoints in that direction.
    pub(crate) ingress: Option<Vec<Rule>>,
    pub(crate) egress: Option<Vec<Rule>>,
    pub(crate) ingress_deny: Vec<Rule>,
    pub(crate) egress_deny: Vec<Rule>,
    pub(crate) default_deny_ingress: bool,
    pub(crate) default_deny_egress: bool,
}

impl Policy {
    /// `namespace/name`, or `name` for clusterwide policies.
    pub fn id(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// Which namespaces an endpoint peer may live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NsMatch {
    Any,
    Exact(String),
    /// NetworkPolicy `namespaceSelector`, matched against the namespace's labels; Tollgate knows only
    /// `kubernetes.io/metadata.name` for a namespace (no namespace objects are watched).
    Labels(Selector),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entity {
    World,
    Cluster,
    Host,
    All,
}

#[derive(Debug, Clone)]
pub(crate) enum Peer {
    Endpoints { selector: Selector, ns: NsMatch },
    Entity(Entity),
    Cidr { net: IpNet, except: Vec<IpNet> },
    Fqdn(DnsMatcher),
}

#[derive(Debug, Clone)]
pub(crate) enum Peers {
    /// No L3 selector: every peer.
    Any,
    /// An empty Cilium rule (`ingress: [{}]`): nothing.
    Nothing,
    List(Vec<Peer>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum PortSel {
    Range(u16, u16),
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PortMatch {
    /// `None` = ANY.
    pub protocol: Option<Protocol>,
    pub port: PortSel,
}

#[derive(Debug, Clone)]
pub(crate) enum L7Def {
    Http(Vec<HttpRuleDef>),
    Kafka(Vec<KafkaRule>),
    Dns(Vec<DnsMatcher>),
}

impl L7Def {
    pub(crate) fn kind(&self) -> L7Kind {
        match self {
            L7Def::Http(_) => L7Kind::Http,
            L7Def::Kafka(_) => L7Kind::Kafka,
            L7Def::Dns(_) => L7Kind::Dns,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct PortRule {
    pub ports: Vec<PortMatch>,
    pub l7: Option<L7Def>,
    pub path: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub index: usize,
    pub deny: bool,
    pub peers: Peers,
    /// Empty = every port, no L7.
    pub ports: Vec<PortRule>,
    /// `authentication.mode: required`: only mutually authenticated connections may use this allow rule.
    pub auth_required: bool,
}

struct Ctx<'a> {
    file: &'a str,
    document: usize,
}

impl Ctx<'_> {
    fn err(&self, path: impl Into<String>, reason: impl Into<String>) -> PolicyError {
        PolicyError::new(self.file, self.document, path, reason)
    }
}

/// Parse every document in `yaml`. Each document is a CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy
/// (`cilium.io/v2`) or NetworkPolicy (`networking.k8s.io/v1`); `kind: List` with `items` is unrolled.
pub fn load_policies(file_name: &str, yaml: &str) -> PolicyLoad {
    let mut out = PolicyLoad::default();
    for (document, de) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let ctx = Ctx {
            file: file_name,
            document,
        };
        let value = match Value::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                let (path, reason) = crate::error::split_serde_error(&e.to_string());
                out.errors
                    .push(ctx.err(path, format!("invalid YAML: {reason}")));
                // A syntax error leaves the stream unusable; later documents cannot be trusted.
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        if value.get("kind").and_then(Value::as_str) == Some("List") {
            match value.get("items").and_then(Value::as_sequence) {
                Some(items) => {
                    for (i, item) in items.iter().enumerate() {
                        match load_value(&ctx, item) {
                            Ok(p) => out.policies.push(p),
                            Err(mut e) => {
                                e.field_path = format!("items[{i}].{}", e.field_path);
                                out.errors.push(e)
                            }
                        }
                    }
                }
                None => out
                    .errors
                    .push(ctx.err("items", "a List needs an `items` sequence")),
            }
            continue;
        }
        match load_value(&ctx, &value) {
            Ok(p) => out.policies.push(p),
            Err(e) => out.errors.push(e),
        }
    }
    out
}

/// Load one policy given as a YAML value (used by the conformance runner for inline policies).
pub(crate) fn load_policy_value(
    file_name: &str,
    document: usize,
    value: &Value,
) -> Result<Policy, PolicyError> {
    load_value(
        &Ctx {
            file: file_name,
            document,
        },
        value,
    )
}

fn typed<T: for<'de> Deserialize<'de>>(ctx: &Ctx, value: &Value) -> Result<T, PolicyError> {
    // Re-serialise so serde_yaml's path-tracking deserializer reports the field path of the problem.
    let text = serde_yaml::to_string(value).map_err(|e| ctx.err("(document)", e.to_string()))?;
    serde_yaml::from_str(&text).map_err(|e| {
        let (path, reason) = crate::error::split_serde_error(&e.to_string());
        ctx.err(path, reason)
    })
}

fn load_value(ctx: &Ctx, value: &Value) -> Result<Policy, PolicyError> {
    if !value.is_mapping() {
        return Err(ctx.err(
            "(document)",
            "expected a mapping with apiVersion, kind, metadata and spec",
        ));
    }
    let api = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    match (api, kind) {
        ("cilium.io/v2", "CiliumNetworkPolicy") => {
            load_cilium(ctx, typed(ctx, value)?, PolicyKind::CiliumNetworkPolicy)
        }
        ("cilium.io/v2", "CiliumClusterwideNetworkPolicy") => load_cilium(
            ctx,
            typed(ctx, value)?,
            PolicyKind::CiliumClusterwideNetworkPolicy,
        ),
        ("networking.k8s.io/v1", "NetworkPolicy") => load_netpol(ctx, typed(ctx, value)?),
        ("", _) => Err(ctx.err("apiVersion", "missing; use cilium.io/v2 or networking.k8s.io/v1")),
        (_, "") => Err(ctx.err("kind", "missing; use CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy")),
        (api, kind) => Err(ctx.err(
            "kind",
            format!(
                "unsupported apiVersion/kind {api}/{kind}; supported: cilium.io/v2 CiliumNetworkPolicy, \
                 cilium.io/v2 CiliumClusterwideNetworkPolicy, networking.k8s.io/v1 NetworkPolicy"
            ),
        )),
    }
}

fn name_of(ctx: &Ctx, m: &Metadata) -> Result<String, PolicyError> {
    match m.name.as_deref() {
        Some(n) if !n.is_empty() => Ok(n.to_string()),
        _ => Err(ctx.err("metadata.name", "every policy needs a name")),
    }
}

fn load_cilium(ctx: &Ctx, doc: CiliumDoc, kind: PolicyKind) -> Result<Policy, PolicyError> {
    let name = name_of(ctx, &doc.metadata)?;
    let namespace = match kind {
        PolicyKind::CiliumClusterwideNetworkPolicy => {
            if doc.metadata.namespace.is_some() {
                return Err(ctx.err(
                    "metadata.namespace",
                    "a CiliumClusterwideNetworkPolicy is not namespaced; remove metadata.namespace",
                ));
            }
            None
        }
        _ => Some(
            doc.metadata
                .namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".to_string()),
        ),
    };
    let spec = match (doc.spec, doc.specs) {
        (Some(s), None) => s,
        (None, Some(mut specs)) if specs.len() == 1 => specs.remove(0),
        (None, Some(_)) => {
            return Err(ctx.err(
                "specs",
                "only a single spec per policy is supported; split `specs` into separate policies",
            ));
        }
        (Some(_), Some(_)) => return Err(ctx.err("specs", "use either spec or specs, not both")),
        (None, None) => return Err(ctx.err("spec", "missing")),
    };
    reject_unenforced(
        ctx,
        "spec",
        &[(spec.node_selector.is_some(), "nodeSelector")],
        "host policies (tollgate enforces pod traffic)",
    )?;
    let sel = spec.endpoint_selector.as_ref().ok_or_else(|| {
        ctx.err(
            "spec.endpointSelector",
            "missing; use `endpointSelector: {}` to select every endpoint",
        )
    })?;
    let selector = selector(ctx, "spec.endpointSelector", sel)?;
    let subject = Peer::Endpoints {
        ns: match &namespace {
            Some(ns) if !selector.names_namespace() || kind == PolicyKind::CiliumNetworkPolicy => {
                NsMatch::Exact(ns.clone())
            }
            _ => NsMatch::Any,
        },
        selector,
    };
    let ns = namespace.as_deref();
    let rules = |list: &Option<Vec<CiliumRule>>, dir: Direction, deny: bool, field: &str| {
        list.as_ref()
            .map(|l| {
                l.iter()
                    .enumerate()
                    .map(|(i, r)| {
                        cilium_rule(ctx, ns, &format!("spec.{field}[{i}]"), i, r, dir, deny)
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
    };
    let ingress = rules(&spec.ingress, Direction::Ingress, false, "ingress")?;
    let egress = rules(&spec.egress, Direction::Egress, false, "egress")?;
    let ingress_deny =
        rules(&spec.ingress_deny, Direction::Ingress, true, "ingressDeny")?.unwrap_or_default();
    let egress_deny =
        rules(&spec.egress_deny, Direction::Egress, true, "egressDeny")?.unwrap_or_default();
    for (list, field) in [(&ingress, "ingress"), (&egress, "egress")] {
        if let Some(list) = list {
            check_l7_conflicts(ctx, list, field)?;
        }
    }
    let dd = spec.enable_default_deny.as_ref();
    Ok(Policy {
        kind,
        name,
        namespace,
        file: ctx.file.to_string(),
        document: ctx.document,
        subject,
        default_deny_ingress: ingress.is_some() && dd.and_then(|d| d.ingress).unwrap_or(true),
        default_deny_egress: egress.is_some() && dd.and_then(|d| d.egress).unwrap_or(true),
        ingress,
        egress,
        ingress_deny,
        egress_deny,
    })
}

/// Two L7 protocols on one port of one policy cannot both be enforced; reject.
fn check_l7_conflicts(ctx: &Ctx, rules: &[Rule], field: &str) -> Result<(), PolicyError> {
    let mut seen: HashMap<(Option<Protocol>, PortSel), (L7Kind, String)> = HashMap::new();
    for r in rules {
        for pr in &r.ports {
            let Some(l7) = &pr.l7 else { continue };
            for p in &pr.ports {
                let key = (p.protocol, p.port.clone());
                if let Some((k, where_)) = seen.get(&key) {
                    if *k != l7.kind() {
                        return Err(ctx.err(
                            format!("{}.rules", pr.path),
                            format!(
                                "{} rules on a port that already has {} rules at {where_} in {field}; a port speaks one L7 protocol",
                                l7.kind(),
                                k
                            ),
                        ));
                    }
                } else {
                    seen.insert(key, (l7.kind(), pr.path.clone()));
                }
            }
        }
    }
    Ok(())
}

fn selector(ctx: &Ctx, path: &str, s: &SelectorSpec) -> Result<Selector, PolicyError> {
    let mut requirements = Vec::new();
    for (k, v) in s.match_labels.iter().flatten() {
        if k.is_empty() {
            return Err(ctx.err(
                format!("{path}.matchLabels"),
                "label keys must not be empty",
            ));
        }
        requirements.push(Requirement::In(
            normalize_key(k).to_string(),
            vec![v.clone()],
        ));
    }
    for (i, e) in s.match_expressions.iter().flatten().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        let key = normalize_key(&e.key).to_string();
        let values = e.values.clone().unwrap_or_default();
        let req = match e.operator.as_str() {
            "In" | "NotIn" => {
                if values.is_empty() {
                    return Err(ctx.err(
                        format!("{p}.values"),
                        format!("operator {} needs at least one value", e.operator),
                    ));
                }
                if e.operator == "In" {
                    Requirement::In(key, values)
                } else {
                    Requirement::NotIn(key, values)
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    return Err(ctx.err(
                        format!("{p}.values"),
                        format!("operator {} takes no values; remove them", e.operator),
                    ));
                }
                if e.operator == "Exists" {
                    Requirement::Exists(key)
                } else {
                    Requirement::DoesNotExist(key)
                }
            }
            other => {
                return Err(ctx.err(
                    format!("{p}.operator"),
                    format!("unknown operator {other:?}; use In, NotIn, Exists or DoesNotExist"),
                ));
            }
        };
        requirements.push(req);
    }
    Ok(Selector { requirements })
}

fn cidr(ctx: &Ctx, path: &str, s: &str) -> Result<IpNet, PolicyError> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(ctx.err(
        path,
        format!("{s:?} is not a CIDR; write it like 10.0.0.0/8 or 2001:db8::/32"),
    ))
}

/// Rejects the first Cilium field in `fields` (set, name) that tollgate accepts on the wire but does not enforce:
/// a policy half-enforced would allow or deny what its author did not write.
fn reject_unenforced(
    ctx: &Ctx,
    path: &str,
    fields: &[(bool, &str)],
    what: &str,
) -> Result<(), PolicyError> {
    match fields.iter().find(|(set, _)| *set) {
        Some((_, field)) => Err(ctx.err(
            format!("{path}.{field}"),
            format!(
                "{what} are not enforced by tollgate; remove {field}, or leave this policy to a Cilium agent"
            ),
        )),
        None => Ok(()),
    }
}

fn cidr_set(ctx: &Ctx, path: &str, s: &CidrSetSpec) -> Result<Peer, PolicyError> {
    reject_unenforced(
        ctx,
        path,
        &[
            (s.cidr_group_ref.is_some(), "cidrGroupRef"),
            (s.cidr_group_selector.is_some(), "cidrGroupSelector"),
        ],
        "CiliumCIDRGroup references",
    )?;
    let Some(cidr_text) = &s.cidr else {
        return Err(ctx.err(format!("{path}.cidr"), "missing; write it like 10.0.0.0/8"));
    };
    let net = cidr(ctx, &format!("{path}.cidr"), cidr_text)?;
    let mut except = Vec::new();
    for (i, e) in s.except.iter().flatten().enumerate() {
        let p = format!("{path}.except[{i}]");
        let x = cidr(ctx, &p, e)?;
        if !net.contains(&x) {
            return Err(ctx.err(
                p,
                format!("{x} is not inside {net}; an exception must be part of the CIDR"),
            ));
        }
        except.push(x);
    }
    Ok(Peer::Cidr { net, except })
}

fn fqdn(ctx: &Ctx, path: &str, f: &FqdnSpec) -> Result<DnsMatcher, PolicyError> {
    match (&f.match_name, &f.match_pattern) {
        (Some(n), None) => DnsMatcher::name(n).map_err(|r| ctx.err(format!("{path}.matchName"), r)),
        (None, Some(p)) => {
            DnsMatcher::pattern(p).map_err(|r| ctx.err(format!("{path}.matchPattern"), r))
        }
        (Some(_), Some(_)) => Err(ctx.err(path, "set either matchName or matchPattern, not both")),
        (None, None) => Err(ctx.err(path, "set matchName or matchPattern")),
    }
}

fn entity(ctx: &Ctx, path: &str, e: &str) -> Result<Entity, PolicyError> {
    match e {
        "world" => Ok(Entity::World),
        "cluster" => Ok(Entity::Cluster),
        "host" => Ok(Entity::Host),
        "all" => Ok(Entity::All),
        other => Err(ctx.err(
            path,
            format!("unsupported entity {other:?}; Tollgate supports world, cluster, host and all"),
        )),
    }
}

fn endpoints_peer(
    ctx: &Ctx,
    path: &str,
    ns: Option<&str>,
    s: &SelectorSpec,
) -> Result<Peer, PolicyError> {
    let selector = selector(ctx, path, s)?;
    let ns = match ns {
        Some(ns) if !selector.names_namespace() => NsMatch::Exact(ns.to_string()),
        _ => NsMatch::Any,
    };
    Ok(Peer::Endpoints { selector, ns })
}

fn cilium_rule(
    ctx: &Ctx,
    ns: Option<&str>,
    path: &str,
    index: usize,
    r: &CiliumRule,
    dir: Direction,
    deny: bool,
) -> Result<Rule, PolicyError> {
    check_rule_fields(ctx, path, r, dir)?;
    let (peers, any_l3) = rule_peers(ctx, ns, path, r, dir, deny)?;
    let mut ports = Vec::new();
    for (i, pr) in r.to_ports.iter().flatten().enumerate() {
        ports.push(port_rule(ctx, &format!("{path}.toPorts[{i}]"), pr, deny)?);
    }
    let peers = if any_l3 {
        Peers::List(peers)
    } else if r.to_ports.is_some() {
        Peers::Any
    } else {
        Peers::Nothing
    };
    let auth_required = auth_required(ctx, path, r, deny, ports.is_empty())?;
    Ok(Rule {
        index,
        deny,
        peers,
        ports,
        auth_required,
    })
}

/// Refuses fields Tollgate cannot enforce and peers written on the wrong side for the rule's direction.
fn check_rule_fields(
    ctx: &Ctx,
    path: &str,
    r: &CiliumRule,
    dir: Direction,
) -> Result<(), PolicyError> {
    let (ours, theirs) = match dir {
        Direction::Ingress => ("from", "to"),
        Direction::Egress => ("to", "from"),
    };
    reject_unenforced(
        ctx,
        path,
        &[
            (r.from_requires.is_some(), "fromRequires"),
            (r.to_requires.is_some(), "toRequires"),
            (r.from_nodes.is_some(), "fromNodes"),
            (r.to_nodes.is_some(), "toNodes"),
            (r.from_groups.is_some(), "fromGroups"),
            (r.to_groups.is_some(), "toGroups"),
            (r.to_services.is_some(), "toServices"),
            (r.icmps.is_some(), "icmps"),
        ],
        "requirements, node, cloud-group, service and ICMP peers",
    )?;
    let wrong_side = [
        (r.from_endpoints.is_some(), "fromEndpoints"),
        (r.to_endpoints.is_some(), "toEndpoints"),
        (r.from_cidr.is_some(), "fromCIDR"),
        (r.to_cidr.is_some(), "toCIDR"),
        (r.from_cidr_set.is_some(), "fromCIDRSet"),
        (r.to_cidr_set.is_some(), "toCIDRSet"),
        (r.from_entities.is_some(), "fromEntities"),
        (r.to_entities.is_some(), "toEntities"),
        (r.to_fqdns.is_some(), "toFQDNs"),
    ];
    for (set, field) in wrong_side {
        if set && field.starts_with(theirs) {
            return Err(ctx.err(
                format!("{path}.{field}"),
                format!(
                    "{dir} rules use {ours}* selectors; {field} belongs in the other direction"
                ),
            ));
        }
    }
    Ok(())
}

/// The rule's L3 peers for its direction, and whether it names any (no L3 field: every peer, or none).
fn rule_peers(
    ctx: &Ctx,
    ns: Option<&str>,
    path: &str,
    r: &CiliumRule,
    dir: Direction,
    deny: bool,
) -> Result<(Vec<Peer>, bool), PolicyError> {
    let ours = match dir {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    let (eps, cidrs, sets, ents) = match dir {
        Direction::Ingress => (
            &r.from_endpoints,
            &r.from_cidr,
            &r.from_cidr_set,
            &r.from_entities,
        ),
        Direction::Egress => (&r.to_endpoints, &r.to_cidr, &r.to_cidr_set, &r.to_entities),
    };
    let mut peers = Vec::new();
    let mut any_l3 = false;
    if let Some(eps) = eps {
        any_l3 = true;
        for (i, s) in eps.iter().enumerate() {
            peers.push(endpoints_peer(
                ctx,
                &format!("{path}.{ours}Endpoints[{i}]"),
                ns,
                s,
            )?);
        }
    }
    if let Some(c) = cidrs {
        any_l3 = true;
        for (i, s) in c.iter().enumerate() {
            let net = cidr(ctx, &format!("{path}.{ours}CIDR[{i}]"), s)?;
            peers.push(Peer::Cidr {
                net,
                except: vec![],
            });
        }
    }
    if let Some(c) = sets {
        any_l3 = true;
        for (i, s) in c.iter().enumerate() {
            peers.push(cidr_set(ctx, &format!("{path}.{ours}CIDRSet[{i}]"), s)?);
        }
    }
    if let Some(e) = ents {
        any_l3 = true;
        for (i, s) in e.iter().enumerate() {
            peers.push(Peer::Entity(entity(
                ctx,
                &format!("{path}.{ours}Entities[{i}]"),
                s,
            )?));
        }
    }
    if let Some(f) = &r.to_fqdns {
        if any_l3 {
            return Err(ctx.err(
                format!("{path}.toFQDNs"),
                "toFQDNs cannot be combined with other L3 selectors (toEndpoints, toCIDR, toCIDRSet, toEntities) \
                 in the same rule; put them in separate egress rules",
            ));
        }
        if deny {
            return Err(ctx.err(
                format!("{path}.toFQDNs"),
                "toFQDNs is not supported in deny rules",
            ));
        }
        any_l3 = true;
        for (i, s) in f.iter().enumerate() {
            peers.push(Peer::Fqdn(fqdn(ctx, &format!("{path}.toFQDNs[{i}]"), s)?));
        }
    }
    Ok((peers, any_l3))
}

/// `authentication.mode`: `required` (allow rules with toPorts only) or `disabled`.
fn auth_required(
    ctx: &Ctx,
    path: &str,
    r: &CiliumRule,
    deny: bool,
    no_ports: bool,
) -> Result<bool, PolicyError> {
    Ok(match &r.authentication {
        None => false,
        Some(a) => {
            let field = format!("{path}.authentication.mode");
            if deny {
                return Err(ctx.err(
                    format!("{path}.authentication"),
                    "authentication applies to allow rules only; remove it from this deny rule",
                ));
            }
            match a.mode.as_str() {
                "required" => {
                    // Tollgate sees only the ports it is given: a rule for every port cannot be diverted.
                    if no_ports {
                        return Err(ctx.err(
                            field,
                            "authentication: required needs toPorts (Tollgate diverts only listed TCP ports to \
                             check authentication); list the ports",
                        ));
                    }
                    true
                }
                "disabled" => false,
                other => {
                    return Err(ctx.err(
                        field,
                        format!("unknown mode {other:?}; use \"required\" or \"disabled\""),
                    ));
                }
            }
        }
    })
}

fn port_rule(
    ctx: &Ctx,
    path: &str,
    pr: &PortRuleSpec,
    deny: bool,
) -> Result<PortRule, PolicyError> {
    reject_unenforced(
        ctx,
        path,
        &[
            (pr.terminating_tls.is_some(), "terminatingTLS"),
            (pr.originating_tls.is_some(), "originatingTLS"),
            (pr.server_names.is_some(), "serverNames"),
            (pr.listener.is_some(), "listener"),
        ],
        "TLS interception, SNI matching and Envoy listeners",
    )?;
    let ports = match &pr.ports {
        Some(p) if !p.is_empty() => p
            .iter()
            .enumerate()
            .map(|(i, p)| port_match(ctx, &format!("{path}.ports[{i}]"), p, None))
            .collect::<Result<Vec<_>, _>>()?,
        _ => {
            return Err(ctx.err(
                format!("{path}.ports"),
                "at least one port is required (use port \"0\" for every port)",
            ));
        }
    };
    let l7 = match &pr.rules {
        None => None,
        Some(_) if deny => {
            return Err(ctx.err(
                format!("{path}.rules"),
                "deny rules are L3/L4 only; move L7 rules to an allow rule",
            ));
        }
        Some(rules) => Some(l7_rules(ctx, &format!("{path}.rules"), rules)?),
    };
    Ok(PortRule {
        ports,
        l7,
        path: path.to_string(),
    })
}

fn l7_rules(ctx: &Ctx, path: &str, r: &L7RulesSpec) -> Result<L7Def, PolicyError> {
    reject_unenforced(
        ctx,
        path,
        &[(r.l7proto.is_some(), "l7proto"), (r.l7.is_some(), "l7")],
        "generic L7 protocol rules",
    )?;
    let kinds: Vec<&str> = [
        (r.http.is_some(), "http"),
        (r.kafka.is_some(), "kafka"),
        (r.dns.is_some(), "dns"),
    ]
    .iter()
    .filter(|(s, _)| *s)
    .map(|(_, k)| *k)
    .collect();
    if kinds.len() > 1 {
        return Err(ctx.err(
            path,
            format!(
                "a port takes one L7 rule type, found {}; split them over different ports",
                kinds.join(" and ")
            ),
        ));
    }
    if let Some(h) = &r.http {
        let mut out = Vec::new();
        for (i, rule) in h.iter().enumerate() {
            out.push(
                parse_http_rule(rule).map_err(|(field, reason)| {
                    ctx.err(format!("{path}.http[{i}]{field}"), reason)
                })?,
            );
        }
        return Ok(L7Def::Http(out));
    }
    if let Some(k) = &r.kafka {
        let mut out = Vec::new();
        for (i, rule) in k.iter().enumerate() {
            out.push(kafka_rule(ctx, &format!("{path}.kafka[{i}]"), rule)?);
        }
        return Ok(L7Def::Kafka(out));
    }
    if let Some(d) = &r.dns {
        let mut out = Vec::new();
        for (i, rule) in d.iter().enumerate() {
            out.push(fqdn(ctx, &format!("{path}.dns[{i}]"), rule)?);
        }
        return Ok(L7Def::Dns(out));
    }
    Err(ctx.err(
        path,
        "rules is empty; add http, kafka or dns rules or remove `rules`",
    ))
}

fn kafka_rule(ctx: &Ctx, path: &str, r: &KafkaRuleSpec) -> Result<KafkaRule, PolicyError> {
    let api_keys = match (&r.role, &r.api_key) {
        (Some(_), Some(_)) => {
            return Err(ctx.err(
                format!("{path}.role"),
                "set either role or apiKey, not both",
            ));
        }
        (Some(role), None) => match role.to_ascii_lowercase().as_str() {
            "produce" => kafka::PRODUCE_KEYS.to_vec(),
            "consume" => kafka::CONSUME_KEYS.to_vec(),
            _ => {
                return Err(ctx.err(
                    format!("{path}.role"),
                    format!("unknown role {role:?}; use produce or consume"),
                ));
            }
        },
        (None, Some(k)) => match kafka::api_key_by_name(k) {
            Some(k) => vec![k],
            None => {
                return Err(ctx.err(
                    format!("{path}.apiKey"),
                    format!("unknown Kafka API key {k:?}; use a protocol name such as produce, fetch, metadata"),
                ));
            }
        },
        (None, None) => vec![],
    };
    let api_version = match &r.api_version {
        None => None,
        Some(v) => {
            let parsed = match v {
                Value::Number(n) => n.as_i64().and_then(|n| i16::try_from(n).ok()),
                Value::String(s) => s.parse::<i16>().ok(),
                _ => None,
            };
            match parsed {
                Some(n) if n >= 0 => Some(n),
                _ => {
                    return Err(ctx.err(
                        format!("{path}.apiVersion"),
                        "must be a non-negative integer version such as \"9\"",
                    ));
                }
            }
        }
    };
    if let Some(t) = &r.topic
        && let Some(problem) = kafka::topic_problem(t)
    {
        return Err(ctx.err(format!("{path}.topic"), problem));
    }
    Ok(KafkaRule {
        api_keys,
        api_version,
        client_id: r.client_id.clone(),
        topic: r.topic.clone(),
    })
}

fn port_match(
    ctx: &Ctx,
    path: &str,
    p: &PortSpec,
    default_protocol: Option<Protocol>,
) -> Result<PortMatch, PolicyError> {
    let protocol = match p.protocol.as_deref() {
        None => default_protocol,
        Some("ANY") => None,
        Some("TCP") => Some(Protocol::Tcp),
        Some("UDP") => Some(Protocol::Udp),
        Some("SCTP") => Some(Protocol::Sctp),
        Some(other) => {
            return Err(ctx.err(
                format!("{path}.protocol"),
                format!("unknown protocol {other:?}; use TCP, UDP, SCTP or ANY"),
            ));
        }
    };
    let text = match &p.port {
        None => "0".to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(ctx.err(
                format!("{path}.port"),
                "must be a port number or a port name",
            ));
        }
    };
    let port = if text.chars().all(|c| c.is_ascii_digit()) && !text.is_empty() {
        let n: u32 = text.parse().unwrap_or(u32::MAX);
        if n > 65535 {
            return Err(ctx.err(
                format!("{path}.port"),
                format!("{text} is not a port (0-65535)"),
            ));
        }
        let n = n as u16;
        match p.end_port {
            None if n == 0 => PortSel::Range(0, 65535),
            None => PortSel::Range(n, n),
            Some(_) if n == 0 => {
                return Err(ctx.err(format!("{path}.endPort"), "endPort needs a non-zero port"));
            }
            Some(e) if e < n as i64 || e > 65535 => {
                return Err(ctx.err(
                    format!("{path}.endPort"),
                    format!("endPort {e} must be between port {n} and 65535"),
                ));
            }
            Some(e) => PortSel::Range(n, e as u16),
        }
    } else {
        let valid = text.len() <= 15
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && text.chars().any(|c| c.is_ascii_lowercase());
        if !valid {
            return Err(ctx.err(
                format!("{path}.port"),
                format!("{text:?} is neither a port number nor a valid port name (1-15 chars of [a-z0-9-])"),
            ));
        }
        if p.end_port.is_some() {
            return Err(ctx.err(
                format!("{path}.endPort"),
                "endPort cannot be used with a named port",
            ));
        }
        PortSel::Named(text)
    };
    Ok(PortMatch { protocol, port })
}

fn load_netpol(ctx: &Ctx, doc: NetPolDoc) -> Result<Policy, PolicyError> {
    let name = name_of(ctx, &doc.metadata)?;
    let ns = doc
        .metadata
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let subject = Peer::Endpoints {
        selector: selector(ctx, "spec.podSelector", &doc.spec.pod_selector)?,
        ns: NsMatch::Exact(ns.clone()),
    };
    let (mut has_ingress, mut has_egress) = (true, doc.spec.egress.is_some());
    if let Some(types) = &doc.spec.policy_types {
        has_ingress = false;
        has_egress = false;
        for (i, t) in types.iter().enumerate() {
            match t.as_str() {
                "Ingress" => has_ingress = true,
                "Egress" => has_egress = true,
                other => {
                    return Err(ctx.err(
                        format!("spec.policyTypes[{i}]"),
                        format!("unknown policy type {other:?}; use Ingress or Egress"),
                    ));
                }
            }
        }
    }
    let rules =
        |list: &Option<Vec<NetPolRule>>, dir: Direction| -> Result<Vec<Rule>, PolicyError> {
            let field = match dir {
                Direction::Ingress => "ingress",
                Direction::Egress => "egress",
            };
            let mut out = Vec::new();
            for (i, r) in list.iter().flatten().enumerate() {
                let path = format!("spec.{field}[{i}]");
                let (peers_field, peers, wrong) = match dir {
                    Direction::Ingress => ("from", &r.from, r.to.is_some()),
                    Direction::Egress => ("to", &r.to, r.from.is_some()),
                };
                if wrong {
                    return Err(ctx.err(
                        path,
                        format!("{field} rules list peers under `{peers_field}`"),
                    ));
                }
                let peers = match peers {
                    None => Peers::Any,
                    Some(l) if l.is_empty() => Peers::Any,
                    Some(l) => {
                        let mut out = Vec::new();
                        for (j, p) in l.iter().enumerate() {
                            let pp = format!("{path}.{peers_field}[{j}]");
                            out.push(netpol_peer(ctx, &pp, &ns, p)?);
                        }
                        Peers::List(out)
                    }
                };
                let ports = match &r.ports {
                    Some(l) if !l.is_empty() => vec![PortRule {
                        ports: l
                            .iter()
                            .enumerate()
                            .map(
                                |(j, p)| // Kubernetes defaults a NetworkPolicy port's protocol to TCP (Cilium's to ANY).
                            port_match(ctx, &format!("{path}.ports[{j}]"), p, Some(Protocol::Tcp)),
                            )
                            .collect::<Result<_, _>>()?,
                        l7: None,
                        path: format!("{path}.ports"),
                    }],
                    _ => vec![],
                };
                out.push(Rule {
                    index: i,
                    deny: false,
                    peers,
                    ports,
                    auth_required: false,
                });
            }
            Ok(out)
        };
    let ingress = if has_ingress {
        Some(rules(&doc.spec.ingress, Direction::Ingress)?)
    } else {
        None
    };
    let egress = if has_egress {
        Some(rules(&doc.spec.egress, Direction::Egress)?)
    } else {
        None
    };
    Ok(Policy {
        kind: PolicyKind::NetworkPolicy,
        name,
        namespace: Some(ns),
        file: ctx.file.to_string(),
        document: ctx.document,
        subject,
        default_deny_ingress: ingress.is_some(),
        default_deny_egress: egress.is_some(),
        ingress,
        egress,
        ingress_deny: vec![],
        egress_deny: vec![],
    })
}

fn netpol_peer(ctx: &Ctx, path: &str, ns: &str, p: &NetPolPeer) -> Result<Peer, PolicyError> {
    match (&p.pod_selector, &p.namespace_selector, &p.ip_block) {
        (None, None, Some(b)) => cidr_set(ctx, &format!("{path}.ipBlock"), b),
        (pod, nsel, None) if pod.is_some() || nsel.is_some() => {
            let pod_selector = match pod {
                Some(s) => selector(ctx, &format!("{path}.podSelector"), s)?,
                None => Selector::default(),
            };
            let ns = match nsel {
                Some(s) => NsMatch::Labels(selector(ctx, &format!("{path}.namespaceSelector"), s)?),
                None => NsMatch::Exact(ns.to_string()),
            };
            Ok(Peer::Endpoints {
                selector: pod_selector,
                ns,
            })
        }
        (_, _, Some(_)) => Err(ctx.err(
            format!("{path}.ipBlock"),
            "ipBlock cannot be combined with podSelector or namespaceSelector in one peer",
        )),
        _ => Err(ctx.err(
            path,
            "a peer needs podSelector, namespaceSelector or ipBlock",
        )),
    }
}

/// The label a namespace carries in Kubernetes; the only namespace label Tollgate knows.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[allow(dead_code)]
const _: &str = NAMESPACE_LABEL;
