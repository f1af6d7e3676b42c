//! The compiled engine: per-(identity, direction) rule lists with precomputed peer identity sets, compiled L7
//! matchers per port, and the verdict queries.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;

use crate::dns::{DnsMatcher, normalize_name};
use crate::error::PolicyError;
use crate::fqdn::FqdnCache;
use crate::http::HttpMatcher;
use crate::identity::{EndpointTable, Identity};
use crate::kafka::KafkaRule;
use crate::labels::{LabelSet, Selector};
use crate::load::{
    Entity, L7Def, NAMESPACE_NAME_LABEL, NsMatch, Peer, Peers, Policy, PortMatch, PortSel, Rule,
};
use crate::selector_index::Universe;
use crate::verdict::*;

#[derive(Debug)]
pub(crate) enum CompiledL7 {
    Http(HttpMatcher),
    Kafka(Vec<KafkaRule>),
    Dns(Vec<DnsMatcher>),
}

impl CompiledL7 {
    pub(crate) fn kind(&self) -> L7Kind {
        match self {
            CompiledL7::Http(_) => L7Kind::Http,
            CompiledL7::Kafka(_) => L7Kind::Kafka,
            CompiledL7::Dns(_) => L7Kind::Dns,
        }
    }
}

#[derive(Debug)]
pub(crate) struct CompiledPortRule {
    pub(crate) ports: Vec<PortMatch>,
    pub(crate) l7: Option<CompiledL7>,
}

#[derive(Debug, Clone)]
pub(crate) enum CompiledPeers {
    Any,
    Nothing,
    Match {
        /// Identities selected by endpoint selectors and entities, resolved at compile time.
        identities: HashSet<Identity>,
        all: bool,
        /// CIDR peers; they only match addresses outside the cluster (identity WORLD).
        cidrs: Vec<(IpNet, Vec<IpNet>)>,
        fqdns: Vec<DnsMatcher>,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    pub(crate) rule: RuleRef,
    pub(crate) peers: CompiledPeers,
    /// Shared: the matchers (compiled regexes) are built once per policy version, whatever identities come and go.
    pub(crate) ports: Arc<Vec<CompiledPortRule>>,
    /// `authentication.mode: required`.
    pub(crate) auth_required: bool,
    /// Where the rule's policy came from: file and document index (for `tollgate policy get`).
    pub(crate) source: (String, usize),
}

#[derive(Debug, Default)]
pub(crate) struct DirPolicy {
    pub(crate) default_deny: bool,
    pub(crate) allow: Vec<usize>,
    pub(crate) deny: Vec<usize>,
}

/// The compiled, immutable policy engine. `Send + Sync`; share it in an `Arc` and swap it on policy changes.
#[derive(Debug)]
pub struct PolicyEngine {
    endpoints: EndpointTable,
    rules: Vec<Arc<CompiledRule>>,
    /// Indexed by `identity - 256`, then `[ingress, egress]`: a dense table instead of hashing per query.
    subjects: Vec<[Option<DirPolicy>; 2]>,
    policies: Vec<String>,
}

/// What one direction said about a flow.
enum DirOutcome<'a> {
    /// Not evaluated (peer side is not a local endpoint) or no policy selects the endpoint in this direction.
    NotSelected,
    Denied(RuleRef),
    NoMatch(Identity),
    /// Allowed; `by` is the plain L3/L4 allow (L7 moot), `l7` the L7-restricted port rules that matched.
    Allowed {
        by: Option<RuleRef>,
        l7: Vec<(&'a CompiledRule, &'a CompiledPortRule)>,
        /// Some allow rule matching this peer and port requires mutual authentication (required wins).
        auth: bool,
    },
}

fn protocol_matches(want: Option<Protocol>, got: Protocol) -> bool {
    want.is_none_or(|w| w == got)
}

impl PolicyEngine {
    /// Compile validated policies against the endpoint table. A policy that fails to compile is rejected alone
    /// (its error is returned); all others are compiled.
    pub fn compile(
        policies: Vec<Policy>,
        endpoints: &EndpointTable,
    ) -> (PolicyEngine, Vec<PolicyError>) {
        let mut errors = Vec::new();
        let mut compiled = Vec::new();
        let universe = Universe::new(endpoints, None);
        for policy in &policies {
            match CompiledPolicy::new(policy, &universe) {
                Ok(c) => compiled.push(c),
                Err(e) => errors.push(e),
            }
        }
        (Self::assemble(endpoints, compiled.iter()), errors)
    }

    /// The engine made of already compiled policies, in this order (the order decides which rule a verdict
    /// names and which HTTP rule's header actions apply).
    pub(crate) fn assemble<'a>(
        endpoints: &EndpointTable,
        policies: impl Iterator<Item = &'a CompiledPolicy>,
    ) -> PolicyEngine {
        let mut rules: Vec<Arc<CompiledRule>> = Vec::new();
        let mut subjects: HashMap<(Identity, Direction), DirPolicy> = HashMap::new();
        let mut names = Vec::new();
        for policy in policies {
            names.push(policy.id.clone());
            for d in &policy.directions {
                let base = rules.len();
                rules.extend(d.allow.iter().cloned());
                let allow_ids: Vec<usize> = (base..rules.len()).collect();
                let base = rules.len();
                rules.extend(d.deny.iter().cloned());
                let deny_ids: Vec<usize> = (base..rules.len()).collect();
                if !d.section_present && deny_ids.is_empty() {
                    continue;
                }
                for id in &policy.subjects {
                    let entry = subjects.entry((*id, d.dir)).or_default();
                    entry.default_deny |= d.default_deny;
                    entry.allow.extend(&allow_ids);
                    entry.deny.extend(&deny_ids);
                }
            }
        }
        PolicyEngine {
            endpoints: endpoints.clone(),
            rules,
            subjects: dense(subjects),
            policies: names,
        }
    }

    /// An engine with no policies: everything is allowed.
    pub fn empty(endpoints: &EndpointTable) -> PolicyEngine {
        Self::compile(Vec::new(), endpoints).0
    }

    /// The endpoint table the engine was compiled against.
    pub fn endpoints(&self) -> &EndpointTable {
        &self.endpoints
    }

    /// The rule lists selecting `identity` in `dir` (None: no policy selects it there).
    pub(crate) fn dir_policy(&self, identity: Identity, dir: Direction) -> Option<&DirPolicy> {
        if !identity.is_endpoint() {
            return None;
        }
        self.subjects
            .get((identity.0 - Identity::FIRST_ALLOCATED) as usize)
            .and_then(|both| both[dir_slot(dir)].as_ref())
    }

    pub(crate) fn rule(&self, index: usize) -> &CompiledRule {
        &self.rules[index]
    }

    /// Ids (`ns/name` or `name`) of the compiled policies.
    pub fn policy_ids(&self) -> &[String] {
        &self.policies
    }

    /// Build a flow, resolving identities through the endpoint table (unknown addresses are WORLD).
    pub fn flow(&self, src_ip: IpAddr, dst_ip: IpAddr, dst_port: u16, protocol: Protocol) -> Flow {
        Flow {
            src_ip,
            dst_ip,
            dst_port,
            protocol,
            src_identity: self.endpoints.identity_of_ip(src_ip),
            dst_identity: self.endpoints.identity_of_ip(dst_ip),
            dst_names: Vec::new(),
        }
    }

    /// Like [`Self::flow`], also attaching the names the destination was learned for (for `toFQDNs` rules in the
    /// request queries).
    pub fn flow_with_names(
        &self,
        src_ip: IpAddr,
        dst_ip: IpAddr,
        dst_port: u16,
        protocol: Protocol,
        cache: &FqdnCache,
        now: SystemTime,
    ) -> Flow {
        let mut f = self.flow(src_ip, dst_ip, dst_port, protocol);
        f.dst_names = cache.names_for_ip_at(dst_ip, now);
        f
    }

    fn peer_matches(
        &self,
        peers: &CompiledPeers,
        peer: Identity,
        peer_ip: IpAddr,
        names: &[String],
    ) -> bool {
        match peers {
            CompiledPeers::Any => true,
            CompiledPeers::Nothing => false,
            CompiledPeers::Match {
                identities,
                all,
                cidrs,
                fqdns,
            } => {
                *all || identities.contains(&peer)
                    || (peer == Identity::WORLD
                        && (cidrs.iter().any(|(n, ex)| {
                            n.contains(&peer_ip) && !ex.iter().any(|e| e.contains(&peer_ip))
                        }) || fqdns
                            .iter()
                            .any(|m| names.iter().any(|n| m.matches_normalized(n)))))
            }
        }
    }

    fn port_matches(&self, p: &PortMatch, flow: &Flow) -> bool {
        if !protocol_matches(p.protocol, flow.protocol) {
            return false;
        }
        match &p.port {
            PortSel::Range(lo, hi) => (*lo..=*hi).contains(&flow.dst_port),
            // A named port is the destination endpoint's port of that name; unknown names never match.
            PortSel::Named(name) => self
                .endpoints
                .by_ip(flow.dst_ip)
                .and_then(|ep| ep.named_ports.get(name))
                .is_some_and(|p| *p == flow.dst_port),
        }
    }

    fn eval_dir(&self, flow: &Flow, dir: Direction, names: &[String]) -> DirOutcome<'_> {
        let (subject, peer, peer_ip) = match dir {
            Direction::Egress => (flow.src_identity, flow.dst_identity, flow.dst_ip),
            Direction::Ingress => (flow.dst_identity, flow.src_identity, flow.src_ip),
        };
        if !subject.is_endpoint() {
            return DirOutcome::NotSelected;
        }
        let Some(d) = self
            .subjects
            .get((subject.0 - Identity::FIRST_ALLOCATED) as usize)
            .and_then(|both| both[dir_slot(dir)].as_ref())
        else {
            return DirOutcome::NotSelected;
        };
        let names: &[String] = if dir == Direction::Egress { names } else { &[] };
        for &r in &d.deny {
            let rule = &self.rules[r];
            if self.peer_matches(&rule.peers, peer, peer_ip, names)
                && (rule.ports.is_empty()
                    || rule
                        .ports
                        .iter()
                        .any(|pr| pr.ports.iter().any(|p| self.port_matches(p, flow))))
            {
                return DirOutcome::Denied(rule.rule.clone());
            }
        }
        // Required wins: any allow rule for this peer and port that requires authentication makes the connection
        // need it, whichever rule allows it first.
        let auth = d.allow.iter().any(|&r| {
            let rule = &self.rules[r];
            rule.auth_required
                && self.peer_matches(&rule.peers, peer, peer_ip, names)
                && rule
                    .ports
                    .iter()
                    .any(|pr| pr.ports.iter().any(|p| self.port_matches(p, flow)))
        });
        let mut l7 = Vec::new();
        for &r in &d.allow {
            let rule: &CompiledRule = &self.rules[r];
            if !self.peer_matches(&rule.peers, peer, peer_ip, names) {
                continue;
            }
            if rule.ports.is_empty() {
                return DirOutcome::Allowed {
                    by: Some(rule.rule.clone()),
                    l7: Vec::new(),
                    auth,
                };
            }
            for pr in rule.ports.iter() {
                if pr.ports.iter().any(|p| self.port_matches(p, flow)) {
                    match pr.l7 {
                        // A plain L4 allow on this port and peer makes every L7 rule of the port moot.
                        None => {
                            return DirOutcome::Allowed {
                                by: Some(rule.rule.clone()),
                                l7: Vec::new(),
                                auth,
                            };
                        }
                        Some(_) => l7.push((rule, pr)),
                    }
                }
            }
        }
        if !l7.is_empty() {
            DirOutcome::Allowed { by: None, l7, auth }
        } else if d.default_deny {
            DirOutcome::NoMatch(subject)
        } else {
            DirOutcome::NotSelected
        }
    }

    /// Both directions; `Err` is the deny reason.
    #[allow(clippy::type_complexity)]
    fn eval_flow<'a>(
        &'a self,
        flow: &Flow,
        names: &[String],
    ) -> Result<
        (
            Vec<RuleRef>,
            [(Direction, Vec<(&'a CompiledRule, &'a CompiledPortRule)>); 2],
            bool,
        ),
        Reason,
    > {
        let mut by = Vec::new();
        let mut auth_required = false;
        let mut out: [(Direction, Vec<_>); 2] = [
            (Direction::Egress, Vec::new()),
            (Direction::Ingress, Vec::new()),
        ];
        for slot in out.iter_mut() {
            let dir = slot.0;
            match self.eval_dir(flow, dir, names) {
                DirOutcome::NotSelected => {}
                DirOutcome::Denied(r) => return Err(Reason::DenyRule(r)),
                DirOutcome::NoMatch(endpoint) => {
                    return Err(Reason::NoRuleMatched {
                        direction: dir,
                        endpoint,
                    });
                }
                DirOutcome::Allowed { by: b, l7, auth } => {
                    by.extend(b);
                    slot.1 = l7;
                    auth_required |= auth;
                }
            }
        }
        Ok((by, out, auth_required))
    }

    /// Verdict for a new connection. `cache`/`now` resolve `toFQDNs` peers (names already on the flow count too).
    pub fn connection(&self, flow: &Flow, cache: &FqdnCache, now: SystemTime) -> ConnectionVerdict {
        let mut names = cache.names_for_ip_at(flow.dst_ip, now);
        names.extend(flow.dst_names.iter().map(|n| normalize_name(n)));
        match self.eval_flow(flow, &names) {
            Err(reason) => ConnectionVerdict {
                decision: Decision::Deny,
                l7: None,
                reason,
                auth_required: false,
            },
            Ok((mut by, dirs, auth_required)) => {
                let mut l7 = None;
                for (_, list) in &dirs {
                    if let Some((rule, pr)) = list.first() {
                        l7 = l7.or(pr.l7.as_ref().map(CompiledL7::kind));
                        by.push(rule.rule.clone());
                    }
                }
                ConnectionVerdict {
                    decision: Decision::Allow,
                    l7,
                    reason: Reason::Allowed { by },
                    auth_required,
                }
            }
        }
    }

    /// Shared part of the request queries: L3/L4 first, then `check` for every direction that needs L7.
    fn request(
        &self,
        flow: &Flow,
        kind: L7Kind,
        check: impl Fn(&[(&CompiledRule, &CompiledPortRule)]) -> Option<(RuleRef, Vec<HeaderAction>)>,
    ) -> RequestVerdict {
        let names: Vec<String> = flow.dst_names.iter().map(|n| normalize_name(n)).collect();
        let (mut by, dirs, _auth) = match self.eval_flow(flow, &names) {
            Ok(x) => x,
            Err(reason) => {
                return RequestVerdict {
                    decision: Decision::Deny,
                    reason,
                    header_actions: Vec::new(),
                };
            }
        };
        let mut header_actions = Vec::new();
        for (dir, list) in &dirs {
            if list.is_empty() {
                continue;
            }
            match check(list) {
                Some((rule, actions)) => {
                    by.push(rule);
                    header_actions.extend(actions);
                }
                None => {
                    let mut policies: Vec<String> = list
                        .iter()
                        .map(|(rule, _)| rule.rule.policy.clone())
                        .collect();
                    policies.dedup();
                    return RequestVerdict {
                        decision: Decision::Deny,
                        reason: Reason::L7NoMatch {
                            direction: *dir,
                            kind,
                            policies,
                        },
                        header_actions: Vec::new(),
                    };
                }
            }
        }
        RequestVerdict {
            decision: Decision::Allow,
            reason: Reason::Allowed { by },
            header_actions,
        }
    }

    /// Verdict for one HTTP request (gRPC: `POST /pkg.Service/Method`).
    pub fn http(&self, flow: &Flow, req: &HttpRequest) -> RequestVerdict {
        self.request(flow, L7Kind::Http, |list| {
            list.iter().find_map(|(rule, pr)| match &pr.l7 {
                Some(CompiledL7::Http(m)) => m.find(req).map(|(i, actions)| {
                    let mut r = rule.rule.clone();
                    r.l7_index = Some(i);
                    (r, actions)
                }),
                _ => None,
            })
        })
    }

    /// Verdict for one Kafka request. Every topic must be allowed by some rule that also matches the API key,
    /// version and client id (rules may differ per topic); a request without topics needs one matching rule.
    pub fn kafka(&self, flow: &Flow, req: &KafkaRequest) -> RequestVerdict {
        self.request(flow, L7Kind::Kafka, |list| {
            // Borrowed, not cloned: a port with many rules names (clones) only the one that decides.
            let rules: Vec<_> = list
                .iter()
                .filter_map(|(rule, pr)| match &pr.l7 {
                    Some(CompiledL7::Kafka(k)) => {
                        Some(k.iter().enumerate().map(move |(i, k)| (*rule, i, k)))
                    }
                    _ => None,
                })
                .flatten()
                .filter(|(_, _, k)| k.matches_header(req.api_key, req.api_version, req.client_id))
                .collect();
            let first = if req.topics.is_empty() {
                rules.first()
            } else {
                let mut first = None;
                for t in req.topics {
                    let hit = rules.iter().find(|(_, _, k)| k.allows_topic(t))?;
                    first.get_or_insert(hit);
                }
                first
            };
            first.map(|(rule, i, _)| {
                let mut r = rule.rule.clone();
                r.l7_index = Some(*i);
                (r, Vec::new())
            })
        })
    }

    /// Verdict for one DNS query (only the name is checked, not the type).
    pub fn dns(&self, flow: &Flow, q: &DnsQuery) -> RequestVerdict {
        let name = normalize_name(q.name);
        self.request(flow, L7Kind::Dns, |list| {
            list.iter().find_map(|(rule, pr)| match &pr.l7 {
                Some(CompiledL7::Dns(ms)) => ms
                    .iter()
                    .position(|m| m.matches_normalized(&name))
                    .map(|i| {
                        let mut r = rule.rule.clone();
                        r.l7_index = Some(i);
                        (r, Vec::new())
                    }),
                _ => None,
            })
        })
    }

    /// Identities whose egress is default-deny and allowed by at least one `toFQDNs` rule: their connects to
    /// out-of-cluster IPs are restricted to names DNS answered (the kernel FQDN gate).
    pub fn fqdn_restricted(&self) -> Vec<Identity> {
        self.subjects
            .iter()
            .enumerate()
            .filter_map(|(i, both)| {
                let d = both[dir_slot(Direction::Egress)].as_ref()?;
                let has_fqdn = d.allow.iter().any(|&r| {
                    matches!(&self.rules[r].peers, CompiledPeers::Match { fqdns, .. } if !fqdns.is_empty())
                });
                (d.default_deny && has_fqdn).then_some(Identity(i as u32 + Identity::FIRST_ALLOCATED))
            })
            .collect()
    }

    /// Does an egress `toFQDNs` allow rule of `identity` select `name`? (Whether IPs learned for `name` matter to
    /// this identity's connects.)
    pub fn fqdn_selects(&self, identity: Identity, name: &str) -> bool {
        !self.fqdn_rules(identity, name).is_empty()
    }

    /// The egress `toFQDNs` allow rules of `identity` that select `name` (the rules IPs learned for `name` feed),
    /// in rule order; empty for non-endpoint identities.
    pub fn fqdn_rules(&self, identity: Identity, name: &str) -> Vec<RuleRef> {
        if !identity.is_endpoint() {
            return Vec::new();
        }
        let n = normalize_name(name);
        let Some(d) = self
            .subjects
            .get((identity.0 - Identity::FIRST_ALLOCATED) as usize)
            .and_then(|both| both[dir_slot(Direction::Egress)].as_ref())
        else {
            return Vec::new();
        };
        d.allow
            .iter()
            .filter(|&&r| match &self.rules[r].peers {
                CompiledPeers::Match { fqdns, .. } => {
                    fqdns.iter().any(|m| m.matches_normalized(&n))
                }
                _ => false,
            })
            .map(|&r| self.rules[r].rule.clone())
            .collect()
    }

    /// The (protocol, first port, last port) on which `identity`'s egress `toFQDNs` allow rules selecting `name`
    /// allow it (`None` protocol = any); `None` when one of them allows every port (no `toPorts`, or port 0).
    /// Empty when no rule selects `name`. Named ports never match out-of-cluster peers and are left out.
    pub fn fqdn_ports(
        &self,
        identity: Identity,
        name: &str,
    ) -> Option<Vec<(Option<Protocol>, u16, u16)>> {
        let mut out = Vec::new();
        if !identity.is_endpoint() {
            return Some(out);
        }
        let n = normalize_name(name);
        let Some(d) = self
            .subjects
            .get((identity.0 - Identity::FIRST_ALLOCATED) as usize)
            .and_then(|both| both[dir_slot(Direction::Egress)].as_ref())
        else {
            return Some(out);
        };
        for &r in &d.allow {
            let rule = &self.rules[r];
            let selects = match &rule.peers {
                CompiledPeers::Match { fqdns, .. } => {
                    fqdns.iter().any(|m| m.matches_normalized(&n))
                }
                _ => false,
            };
            if !selects {
                continue;
            }
            if rule.ports.is_empty() {
                return None;
            }
            for pr in rule.ports.iter() {
                for p in &pr.ports {
                    match p.port {
                        PortSel::Range(0, _) => return None,
                        PortSel::Range(lo, hi) => out.push((p.protocol, lo, hi)),
                        PortSel::Named(_) => {}
                    }
                }
            }
        }
        Some(out)
    }

    /// Every (identity, direction, port range, protocol) whose traffic must go through the proxy.
    /// Named ports are resolved through the endpoints (the subject's for ingress, any endpoint's for egress);
    /// protocol ANY yields TCP and UDP.
    pub fn l7_ports(&self) -> Vec<L7Port> {
        let mut out = BTreeSet::new();
        let all = self.subjects.iter().enumerate().flat_map(|(i, both)| {
            let id = Identity(i as u32 + Identity::FIRST_ALLOCATED);
            [Direction::Ingress, Direction::Egress]
                .into_iter()
                .filter_map(move |dir| both[dir_slot(dir)].as_ref().map(|d| ((id, dir), d)))
        });
        for ((identity, direction), d) in all {
            let (identity, direction) = (&identity, &direction);
            for &r in &d.allow {
                let rule = &self.rules[r];
                for pr in rule.ports.iter() {
                    // Ports with L7 rules, and ports whose rule requires authentication (the proxy must see those
                    // connections to refuse plain ones).
                    let kind = match &pr.l7 {
                        Some(l7) => Some(l7.kind()),
                        None if rule.auth_required => None,
                        None => continue,
                    };
                    for p in &pr.ports {
                        let protos: Vec<Protocol> = match (p.protocol, kind) {
                            // Authentication is carried by the TCP tunnel only.
                            (Some(Protocol::Tcp) | None, None) => vec![Protocol::Tcp],
                            (Some(_), None) => continue,
                            (Some(x), Some(_)) => vec![x],
                            (None, Some(_)) => vec![Protocol::Tcp, Protocol::Udp],
                        };
                        let ranges: Vec<(u16, u16)> = match &p.port {
                            PortSel::Range(lo, hi) => vec![(*lo, *hi)],
                            PortSel::Named(name) => self
                                .endpoints
                                .iter_with_identity()
                                .filter(|(_, id)| *direction == Direction::Egress || id == identity)
                                .filter_map(|(ep, _)| ep.named_ports.get(name).map(|p| (*p, *p)))
                                .collect(),
                        };
                        for proto in &protos {
                            for (lo, hi) in &ranges {
                                out.insert(L7Port {
                                    identity: *identity,
                                    direction: *direction,
                                    port: *lo,
                                    end_port: *hi,
                                    protocol: *proto,
                                    kind,
                                });
                            }
                        }
                    }
                }
            }
        }
        out.into_iter().collect()
    }
}

pub(crate) fn dir_slot(d: Direction) -> usize {
    match d {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

fn dense(map: HashMap<(Identity, Direction), DirPolicy>) -> Vec<[Option<DirPolicy>; 2]> {
    let len = map
        .keys()
        .map(|(id, _)| (id.0 - Identity::FIRST_ALLOCATED) as usize + 1)
        .max()
        .unwrap_or(0);
    let mut out: Vec<[Option<DirPolicy>; 2]> = (0..len).map(|_| [None, None]).collect();
    for ((id, dir), d) in map {
        out[(id.0 - Identity::FIRST_ALLOCATED) as usize][dir_slot(dir)] = Some(d);
    }
    out
}

fn namespace_labels(ns: &str) -> LabelSet {
    let mut m = std::collections::BTreeMap::new();
    m.insert(NAMESPACE_NAME_LABEL.to_string(), ns.to_string());
    LabelSet(m)
}

fn ns_matches(ns: &NsMatch, set: &LabelSet) -> bool {
    let endpoint_ns = set.0.get(crate::labels::NAMESPACE_LABEL);
    match ns {
        NsMatch::Any => true,
        NsMatch::Exact(want) => endpoint_ns == Some(want),
        NsMatch::Labels(sel) => endpoint_ns.is_some_and(|n| sel.matches(&namespace_labels(n))),
    }
}

fn selector_matches(sel: &Selector, ns: &NsMatch, set: &LabelSet) -> bool {
    ns_matches(ns, set) && sel.matches(set)
}

fn peer_selects(peer: &Peer, set: &LabelSet) -> bool {
    match peer {
        Peer::Endpoints { selector, ns } => selector_matches(selector, ns, set),
        _ => false,
    }
}

/// One direction of a compiled policy.
#[derive(Debug, Clone)]
pub(crate) struct CompiledDirection {
    dir: Direction,
    section_present: bool,
    default_deny: bool,
    allow: Vec<Arc<CompiledRule>>,
    deny: Vec<Arc<CompiledRule>>,
}

/// One policy compiled against the identities of an endpoint table. Kept across engine builds: an edit of
/// another policy reuses it as is, and an identity that comes or goes only patches its subject and peer sets.
#[derive(Debug, Clone)]
pub(crate) struct CompiledPolicy {
    id: String,
    /// The endpoint identities the policy applies to.
    subjects: BTreeSet<Identity>,
    directions: Vec<CompiledDirection>,
}

/// A policy's (direction, allow section, default deny, deny rules) as written.
type Section<'a> = (Direction, Option<&'a [Rule]>, bool, &'a [Rule]);

fn sections(policy: &Policy) -> [Section<'_>; 2] {
    [
        (
            Direction::Ingress,
            policy.ingress.as_deref(),
            policy.default_deny_ingress,
            &policy.ingress_deny,
        ),
        (
            Direction::Egress,
            policy.egress.as_deref(),
            policy.default_deny_egress,
            &policy.egress_deny,
        ),
    ]
}

impl CompiledPolicy {
    pub(crate) fn new(policy: &Policy, universe: &Universe) -> Result<Self, PolicyError> {
        let compile_rules = |rules: &[Rule], dir: Direction| {
            rules
                .iter()
                .map(|r| compile_rule(policy, r, dir, universe).map(Arc::new))
                .collect::<Result<Vec<_>, PolicyError>>()
        };
        let mut directions = Vec::new();
        for (dir, section, default_deny, deny) in sections(policy) {
            directions.push(CompiledDirection {
                dir,
                section_present: section.is_some(),
                default_deny,
                allow: compile_rules(section.unwrap_or_default(), dir)?,
                deny: compile_rules(deny, dir)?,
            });
        }
        let subjects = universe
            .select(&policy.subject, peer_selects)
            .into_iter()
            .filter(|id| id.is_endpoint())
            .collect();
        Ok(CompiledPolicy {
            id: policy.id(),
            subjects,
            directions,
        })
    }

    /// `identity` (an endpoint identity, labels `set`) was allocated: add it where `policy` (the source of this
    /// compilation) selects it.
    pub(crate) fn identity_added(&mut self, policy: &Policy, identity: Identity, set: &LabelSet) {
        if peer_selects(&policy.subject, set) {
            self.subjects.insert(identity);
        }
        for (d, (_, section, _, deny)) in self.directions.iter_mut().zip(sections(policy)) {
            let sources = section.unwrap_or_default().iter().chain(deny);
            for (rule, source) in d.allow.iter_mut().chain(d.deny.iter_mut()).zip(sources) {
                if let Peers::List(list) = &source.peers
                    && list_selects_endpoint(list, identity, set)
                    && let CompiledPeers::Match { identities, .. } = &mut Arc::make_mut(rule).peers
                {
                    identities.insert(identity);
                }
            }
        }
    }

    /// `identity` was released: drop it everywhere (its number may later name another label set).
    pub(crate) fn identity_removed(&mut self, identity: Identity) {
        self.subjects.remove(&identity);
        for d in &mut self.directions {
            for rule in d.allow.iter_mut().chain(d.deny.iter_mut()) {
                if matches!(&rule.peers, CompiledPeers::Match { identities, .. } if identities.contains(&identity))
                    && let CompiledPeers::Match { identities, .. } = &mut Arc::make_mut(rule).peers
                {
                    identities.remove(&identity);
                }
            }
        }
    }
}

/// Whether a rule's peer list selects the (newly allocated) identity through an endpoint selector or the
/// `cluster` entity: what [`compile_rule`] would have put in the rule's identity set for it.
fn list_selects_endpoint(list: &[Peer], identity: Identity, set: &LabelSet) -> bool {
    list.iter().any(|p| match p {
        Peer::Endpoints { .. } => peer_selects(p, set),
        Peer::Entity(Entity::Cluster) => identity.is_endpoint(),
        _ => false,
    })
}

fn compile_rule(
    policy: &Policy,
    r: &Rule,
    dir: Direction,
    universe: &Universe,
) -> Result<CompiledRule, PolicyError> {
    let peers = match &r.peers {
        Peers::Any => CompiledPeers::Any,
        Peers::Nothing => CompiledPeers::Nothing,
        Peers::List(list) => {
            let mut identities = HashSet::new();
            let mut all = false;
            let mut cidrs = Vec::new();
            let mut fqdns = Vec::new();
            for p in list {
                match p {
                    Peer::Endpoints { .. } => identities.extend(universe.select(p, peer_selects)),
                    Peer::Entity(Entity::All) => all = true,
                    Peer::Entity(Entity::World) => {
                        identities.insert(Identity::WORLD);
                    }
                    Peer::Entity(Entity::Host) => {
                        identities.insert(Identity::HOST);
                    }
                    Peer::Entity(Entity::Cluster) => {
                        identities.insert(Identity::HOST);
                        identities.extend(universe.endpoint_identities());
                    }
                    Peer::Cidr { net, except } => cidrs.push((*net, except.clone())),
                    Peer::Fqdn(m) => fqdns.push(m.clone()),
                }
            }
            CompiledPeers::Match {
                identities,
                all,
                cidrs,
                fqdns,
            }
        }
    };
    let mut ports = Vec::new();
    for pr in &r.ports {
        let l7 = match &pr.l7 {
            None => None,
            Some(L7Def::Http(rules)) => Some(CompiledL7::Http(
                HttpMatcher::new(rules.clone()).map_err(|e| {
                    PolicyError::new(
                        &policy.file,
                        policy.document,
                        format!("{}.rules.http", pr.path),
                        e,
                    )
                })?,
            )),
            Some(L7Def::Kafka(k)) => Some(CompiledL7::Kafka(k.clone())),
            Some(L7Def::Dns(d)) => Some(CompiledL7::Dns(d.clone())),
        };
        ports.push(CompiledPortRule {
            ports: pr.ports.clone(),
            l7,
        });
    }
    Ok(CompiledRule {
        ports: Arc::new(ports),
        rule: RuleRef {
            policy: policy.id(),
            kind: policy.kind,
            direction: dir,
            deny: r.deny,
            rule_index: r.index,
            l7_index: None,
        },
        peers,
        auth_required: r.auth_required,
        source: (policy.file.clone(), policy.document),
    })
}
