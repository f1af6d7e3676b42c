//! The patched engine must enforce exactly what a fresh compilation of the same final state enforces: random
//! sequences of endpoint and policy events applied to a [`LiveEngine`], compared after every few events with
//! [`PolicyEngine::compile`] by verdicts over every pair of addresses and by each endpoint's effective policy.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::effective::{EffectivePolicy, effective};
use crate::*;

/// xorshift64: deterministic, so a failure names its seed and replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const NAMESPACES: [&str; 2] = ["prod", "staging"];
const APPS: [&str; 3] = ["web", "api", "db"];
const PODS: usize = 10;

fn ip(n: usize) -> IpAddr {
    format!("10.9.0.{}", n + 1).parse().unwrap()
}

fn world_ip() -> IpAddr {
    "192.0.2.7".parse().unwrap()
}

fn random_endpoint(rng: &mut Rng) -> Endpoint {
    let pod = rng.below(PODS);
    let mut labels = vec![("app", rng.pick(&APPS))];
    if rng.below(2) == 0 {
        labels.push(("tier", rng.pick(&["front", "back"])));
    }
    // Mostly the pod's own IP; sometimes another pod's (the table must refuse it and change nothing).
    let addr = if rng.below(8) == 0 {
        rng.below(PODS)
    } else {
        pod
    };
    let ns = NAMESPACES[pod % 2];
    let mut ep = Endpoint::new(&format!("p{pod}"), ns, &labels, ip(addr));
    ep.named_ports.insert("http".into(), 8080);
    ep
}

fn random_selector(rng: &mut Rng) -> String {
    match rng.below(7) {
        0 => "{}".into(),
        1 => format!("{{matchLabels: {{app: {}}}}}", rng.pick(&APPS)),
        2 => format!(
            "{{matchLabels: {{app: {}, tier: {}}}}}",
            rng.pick(&APPS),
            rng.pick(&["front", "back"])
        ),
        3 => format!(
            "{{matchExpressions: [{{key: app, operator: NotIn, values: [{}]}}]}}",
            rng.pick(&APPS)
        ),
        4 => format!(
            "{{matchExpressions: [{{key: app, operator: In, values: [{}, {}]}}]}}",
            rng.pick(&APPS),
            rng.pick(&APPS)
        ),
        5 => "{matchLabels: {\"reserved:world\": \"\"}}".into(),
        _ => "{matchExpressions: [{key: tier, operator: Exists}]}".into(),
    }
}

fn random_peer(rng: &mut Rng, from: &str) -> String {
    match rng.below(4) {
        0 => format!(
            "{from}Entities: [{}]",
            rng.pick(&["cluster", "world", "all"])
        ),
        1 => format!("{from}CIDR: [192.0.2.0/24]"),
        _ => format!("{from}Endpoints: [{}]", random_selector(rng)),
    }
}

fn random_ports(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => String::new(),
        1 => ", toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]".into(),
        2 => ", toPorts: [{ports: [{port: http, protocol: TCP}]}]".into(),
        _ => format!(
            ", toPorts: [{{ports: [{{port: \"8080\", protocol: TCP}}], rules: {{http: [{{method: GET, path: \"/{}.*\"}}]}}}}]",
            rng.pick(&["a", "b"])
        ),
    }
}

/// A random CiliumNetworkPolicy (or clusterwide one) with allow and sometimes deny rules.
fn random_policy(rng: &mut Rng, name: &str) -> String {
    let (kind, ns) = if rng.below(4) == 0 {
        ("CiliumClusterwideNetworkPolicy", String::new())
    } else {
        (
            "CiliumNetworkPolicy",
            format!(", namespace: {}", rng.pick(&NAMESPACES)),
        )
    };
    let mut spec = format!("endpointSelector: {}", random_selector(rng));
    for (section, from) in [("ingress", "from"), ("egress", "to")] {
        if rng.below(3) != 0 {
            let rules: Vec<String> = (0..1 + rng.below(2))
                .map(|_| format!("{{{}{}}}", random_peer(rng, from), random_ports(rng)))
                .collect();
            spec.push_str(&format!(", {section}: [{}]", rules.join(", ")));
        }
    }
    if rng.below(4) == 0 {
        let peer = random_peer(rng, "from");
        spec.push_str(&format!(", ingressDeny: [{{{peer}}}]"));
    }
    format!(
        "apiVersion: cilium.io/v2\nkind: {kind}\nmetadata: {{name: {name}{ns}}}\nspec: {{{spec}}}\n"
    )
}

/// Everything an engine says about every address pair, with identity numbers replaced by labels.
fn verdicts(engine: &PolicyEngine) -> Vec<String> {
    let cache = FqdnCache::default();
    let mut addrs: Vec<IpAddr> = (0..PODS).map(ip).collect();
    addrs.push(world_ip());
    let text = |reason: &Reason| match reason {
        Reason::NoRuleMatched {
            direction,
            endpoint,
        } => format!(
            "no rule {direction:?} {:?}",
            engine.endpoints().labels_of(*endpoint)
        ),
        other => format!("{other:?}"),
    };
    let mut out = Vec::new();
    for &src in &addrs {
        for &dst in &addrs {
            for port in [80, 8080, 9999] {
                let flow = engine.flow(src, dst, port, Protocol::Tcp);
                let conn = engine.connection(&flow, &cache, SystemTime::UNIX_EPOCH);
                out.push(format!(
                    "{src}->{dst}:{port} {:?} {:?} {}",
                    conn.decision,
                    conn.l7,
                    text(&conn.reason)
                ));
                for path in ["/a1", "/b1"] {
                    let req = HttpRequest {
                        method: "GET",
                        path,
                        host: "h",
                        headers: &[],
                    };
                    let v = engine.http(&flow, &req);
                    out.push(format!("  GET {path} {:?} {}", v.decision, text(&v.reason)));
                }
            }
        }
    }
    out
}

/// Each endpoint's effective policy, identity numbers left out and peer lists sorted.
fn effective_policies(engine: &PolicyEngine) -> BTreeMap<String, EffectivePolicy> {
    engine
        .endpoints()
        .iter()
        .map(|ep| {
            let mut e = effective(engine, engine.endpoints().identity_of_ip(ep.ip));
            e.identity = 0;
            for rule in e.ingress.rules.iter_mut().chain(e.egress.rules.iter_mut()) {
                rule.peers.sort();
            }
            (ep.key(), e)
        })
        .collect()
}

fn fresh(live: &LiveEngine<usize>, docs: &BTreeMap<usize, Arc<Vec<Policy>>>) -> PolicyEngine {
    let table = EndpointTable::new(live.endpoints().iter().cloned().collect()).unwrap();
    let policies: Vec<Policy> = docs.values().flat_map(|p| p.iter().cloned()).collect();
    let (engine, errors) = PolicyEngine::compile(policies, &table);
    assert!(errors.is_empty(), "{errors:?}");
    engine
}

fn run(seed: u64, events: usize) {
    let mut rng = Rng(seed);
    let mut live: LiveEngine<usize> = LiveEngine::default();
    let mut docs: BTreeMap<usize, Arc<Vec<Policy>>> = BTreeMap::new();
    for step in 0..events {
        match rng.below(10) {
            0..=3 => {
                let _ = live.upsert_endpoint(random_endpoint(&mut rng));
            }
            4 => {
                let pod = rng.below(PODS);
                live.remove_endpoint(NAMESPACES[pod % 2], &format!("p{pod}"));
            }
            5..=7 => {
                let key = rng.below(6);
                let yaml = random_policy(&mut rng, &format!("pol{key}"));
                let load = load_policies(&format!("obj{key}"), &yaml);
                assert!(load.errors.is_empty(), "{yaml}: {:?}", load.errors);
                let policies = Arc::new(load.policies);
                live.set_policies(key, policies.clone()).unwrap();
                docs.insert(key, policies);
            }
            _ => {
                let key = rng.below(6);
                live.remove_policies(&key);
                docs.remove(&key);
            }
        }
        if step % 5 == 4 || step + 1 == events {
            let (patched, full) = (live.engine(), fresh(&live, &docs));
            let (a, b) = (verdicts(&patched), verdicts(&full));
            let first = a.iter().zip(&b).position(|(x, y)| x != y);
            assert!(
                first.is_none(),
                "seed {seed} step {step}: patched engine says {:?}, a fresh compile {:?}",
                first.map(|i| &a[i]),
                first.map(|i| &b[i])
            );
            assert_eq!(
                effective_policies(&patched),
                effective_policies(&full),
                "seed {seed} step {step}"
            );
        }
    }
}

#[test]
fn patched_engine_enforces_what_a_fresh_compile_of_the_final_state_enforces() {
    for seed in 1..=20u64 {
        run(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), 60);
    }
}
