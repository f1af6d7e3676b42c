//! Unit tests for every semantic rule, driven through the public loading + engine path.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use crate::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

struct World {
    engine: PolicyEngine,
    cache: FqdnCache,
}

const NOW: SystemTime = SystemTime::UNIX_EPOCH;

fn endpoints() -> Vec<Endpoint> {
    let mut api = Endpoint::new(
        "api",
        "prod",
        &[("app", "api"), ("tier", "backend")],
        ip("10.0.1.20"),
    );
    api.named_ports.insert("http-alt".into(), 8081);
    vec![
        Endpoint::new(
            "web",
            "prod",
            &[("app", "web"), ("tier", "frontend")],
            ip("10.0.1.10"),
        ),
        Endpoint::new("batch", "prod", &[("app", "batch")], ip("10.0.1.11")),
        api,
        Endpoint::new("web", "staging", &[("app", "web")], ip("10.0.2.10")),
        Endpoint::new(
            "db",
            "data",
            &[("app", "db"), ("env", "test")],
            ip("10.0.3.10"),
        ),
        Endpoint::new(
            "dns",
            "kube-system",
            &[("k8s-app", "kube-dns")],
            ip("10.0.0.53"),
        ),
    ]
}

fn world(yaml: &str) -> World {
    let load = load_policies("t.yaml", yaml);
    assert!(
        load.errors.is_empty(),
        "unexpected errors: {:?}",
        load.errors
    );
    let table = EndpointTable::new(endpoints()).expect("table");
    let (engine, errors) = PolicyEngine::compile(load.policies, &table);
    assert!(errors.is_empty(), "{errors:?}");
    World {
        engine,
        cache: FqdnCache::default(),
    }
}

impl World {
    fn flow(&self, from: &str, to: &str, port: u16, proto: Protocol) -> Flow {
        self.engine
            .flow_with_names(ip(from), ip(to), port, proto, &self.cache, NOW)
    }
    fn conn(&self, from: &str, to: &str, port: u16) -> ConnectionVerdict {
        self.engine
            .connection(&self.flow(from, to, port, Protocol::Tcp), &self.cache, NOW)
    }
    fn allowed(&self, from: &str, to: &str, port: u16) -> bool {
        self.conn(from, to, port).decision == Decision::Allow
    }
    fn http(
        &self,
        from: &str,
        to: &str,
        port: u16,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> RequestVerdict {
        let f = self.flow(from, to, port, Protocol::Tcp);
        self.engine.http(
            &f,
            &HttpRequest {
                method,
                path,
                host: "api.prod",
                headers,
            },
        )
    }
    fn http_ok(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> bool {
        self.http(WEB, API, 8080, method, path, headers).decision == Decision::Allow
    }
}

const WEB: &str = "10.0.1.10";
const BATCH: &str = "10.0.1.11";
const API: &str = "10.0.1.20";
const STAGING_WEB: &str = "10.0.2.10";
const DB: &str = "10.0.3.10";
const KDNS: &str = "10.0.0.53";
const OUTSIDE: &str = "203.0.113.7";

fn api_http(rules: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, namespace: prod}}\nspec:\n  \
         endpointSelector: {{matchLabels: {{app: api}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: web}}}}]\n    \
         toPorts:\n    - ports: [{{port: \"8080\", protocol: TCP}}]\n      rules:\n        http:\n{rules}"
    )
}

// ---------- selection and defaults ----------

#[test]
fn unselected_endpoints_allow_everything() {
    let w = world("");
    assert!(w.allowed(WEB, API, 1));
    assert_eq!(
        w.conn(WEB, API, 1).reason.to_string(),
        "allowed: no policy selects the endpoints"
    );
}

#[test]
fn selected_direction_is_default_deny_other_direction_open() {
    let w = world(&api_http("        - {method: GET}\n"));
    let v = w.conn(BATCH, API, 8080);
    assert_eq!(v.decision, Decision::Deny);
    assert!(matches!(
        v.reason,
        Reason::NoRuleMatched {
            direction: Direction::Ingress,
            ..
        }
    ));
    assert!(
        v.reason.to_string().contains("no ingress rule matched"),
        "{}",
        v.reason
    );
    // egress of api is not selected
    assert!(w.allowed(API, WEB, 9999));
}

#[test]
fn peers_are_implicitly_in_the_policy_namespace() {
    let w = world(&api_http("        - {}\n"));
    assert!(w.allowed(WEB, API, 8080));
    assert!(
        !w.allowed(STAGING_WEB, API, 8080),
        "web in staging must not match a prod policy's peer"
    );
    let explicit = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  \
        endpointSelector: {matchLabels: {app: api}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: web, \"k8s:io.kubernetes.pod.namespace\": staging}}]\n";
    let w = world(explicit);
    assert!(w.allowed(STAGING_WEB, API, 8080));
    assert!(!w.allowed(WEB, API, 8080));
}

#[test]
fn k8s_and_any_prefixes_are_normalised() {
    let y = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  \
        endpointSelector: {matchLabels: {\"k8s:app\": api}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {\"any:app\": web}}]\n";
    let w = world(y);
    assert!(w.allowed(WEB, API, 1));
    assert!(!w.allowed(BATCH, API, 1));
}

#[test]
fn empty_selector_selects_all_in_namespace_only() {
    let y = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  \
        endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{}]\n";
    let w = world(y);
    assert!(w.allowed(WEB, API, 1));
    assert!(w.allowed(BATCH, WEB, 1));
    assert!(
        !w.allowed(STAGING_WEB, API, 1),
        "peer {{}} is only the policy namespace"
    );
    assert!(!w.allowed(OUTSIDE, API, 1), "peer {{}} is not the world");
    assert!(w.allowed(WEB, DB, 1), "db in data is not selected");
}

#[test]
fn empty_ingress_rule_denies_everything() {
    let y = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  \
        endpointSelector: {matchLabels: {app: api}}\n  ingress:\n  - {}\n";
    let w = world(y);
    assert!(!w.allowed(WEB, API, 80));
}

#[test]
fn enable_default_deny_false_keeps_unmatched_traffic_but_enforces_l7() {
    let y = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  \
        endpointSelector: {matchLabels: {app: api}}\n  enableDefaultDeny: {ingress: false, egress: false}\n  ingress:\n  \
        - fromEndpoints: [{matchLabels: {app: web}}]\n    toPorts:\n    - ports: [{port: \"8080\"}]\n      rules:\n        http: [{method: GET}]\n";
    let w = world(y);
    assert!(w.allowed(BATCH, API, 9000));
    assert_eq!(w.conn(WEB, API, 8080).l7, Some(L7Kind::Http));
    assert!(w.http_ok("GET", "/", &[]));
    assert!(!w.http_ok("POST", "/", &[]));
}

#[test]
fn match_expressions_operators() {
    let mk = |expr: &str| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {{name: c}}\nspec:\n  \
             endpointSelector: {{matchExpressions: [{expr}]}}\n  ingress:\n  - fromEntities: [world]\n"
        )
    };
    // Selected endpoints deny traffic from the cluster; unselected ones allow it.
    let w = world(&mk("{key: app, operator: In, values: [api, db]}"));
    assert!(!w.allowed(WEB, API, 1) && !w.allowed(WEB, DB, 1) && w.allowed(API, WEB, 1));
    let w = world(&mk("{key: app, operator: NotIn, values: [api, db]}"));
    assert!(w.allowed(WEB, API, 1) && !w.allowed(API, WEB, 1) && !w.allowed(WEB, KDNS, 1));
    let w = world(&mk("{key: env, operator: Exists}"));
    assert!(!w.allowed(WEB, DB, 1) && w.allowed(WEB, API, 1));
    let w = world(&mk("{key: tier, operator: DoesNotExist}"));
    assert!(!w.allowed(WEB, DB, 1) && w.allowed(WEB, API, 1) && !w.allowed(WEB, BATCH, 1));
    assert!(
        w.allowed(OUTSIDE, DB, 1),
        "world is allowed by fromEntities: [world]"
    );
}

#[test]
fn clusterwide_policy_selects_every_namespace_and_peers_have_no_implicit_namespace() {
    let y = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: cw}\nspec:\n  \
        endpointSelector: {matchLabels: {app: web}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: db}}]\n";
    let w = world(y);
    assert!(w.allowed(DB, WEB, 1));
    assert!(w.allowed(DB, STAGING_WEB, 1));
    assert!(!w.allowed(API, STAGING_WEB, 1));
    let v = w.conn(DB, WEB, 1);
    assert_eq!(
        v.reason.to_string(),
        "allowed by CiliumClusterwideNetworkPolicy cw ingress[0]"
    );
}

// ---------- deny, CIDR, entities, ports ----------

#[test]
fn deny_rules_beat_every_allow() {
    let y = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  \
        endpointSelector: {matchLabels: {app: api}}\n  ingress:\n  - fromEntities: [all]\n  ingressDeny:\n  \
        - fromEndpoints: [{matchLabels: {app: batch}}]\n    toPorts: [{ports: [{port: \"5432\"}]}]\n";
    let w = world(y);
    assert!(w.allowed(WEB, API, 5432));
    assert!(w.allowed(BATCH, API, 80));
    let v = w.conn(BATCH, API, 5432);
    assert_eq!(v.decision, Decision::Deny);
    assert_eq!(
        v.reason.to_string(),
        "denied by CiliumNetworkPolicy prod/p ingressDeny[0]"
    );
}

#[test]
fn deny_only_policy_does_not_enable_default_deny() {
    let y = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  \
        endpointSelector: {matchLabels: {app: api}}\n  egressDeny:\n  - toCIDR: [203.0.113.0/24]\n";
    let w = world(y);
    assert!(!w.allowed(API, OUTSIDE, 443));
    assert!(w.allowed(API, "198.51.100.1", 443));
}

#[test]
fn cidr_with_except_matches_only_outside_addresses() {
    let y = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  \
        endpointSelector: {matchLabels: {app: api}}\n  ingress:\n  - fromCIDRSet: [{cidr: 203.0.113.0/24, except: [203.0.113.128/25]}]\n  \
        - fromCIDR: [10.0.0.0/8]\n";
    let w = world(y);
    assert!(w.allowed("203.0.113.5", API, 1));
    assert!(!w.allowed("203.0.113.200", API, 1));
    assert!(!w.allowed("198.51.100.1", API, 1));
    assert!(
        !w.allowed(WEB, API, 1),
        "CIDR rules never match cluster endpoints"
    );
    assert!(
        w.allowed("10.99.0.1", API, 1),
        "an address in 10/8 that is no endpoint is outside traffic"
    );
}

#[test]
fn entities_world_cluster_host_all() {
    let mk = |e: &str| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, namespace: prod}}\nspec:\n  \
             endpointSelector: {{matchLabels: {{app: api}}}}\n  ingress:\n  - fromEntities: [{e}]\n"
        )
    };
    let host_flow = |w: &World| {
        let mut f = w.flow(WEB, API, 1, Protocol::Tcp);
        f.src_identity = Identity::HOST;
        f.src_ip = ip("192.168.0.1");
        w.engine.connection(&f, &w.cache, NOW).decision
    };
    let w = world(&mk("world"));
    assert!(
        w.allowed(OUTSIDE, API, 1) && !w.allowed(WEB, API, 1) && host_flow(&w) == Decision::Deny
    );
    let w = world(&mk("cluster"));
    assert!(!w.allowed(OUTSIDE, API, 1) && w.allowed(WEB, API, 1) && w.allowed(DB, API, 1));
    assert_eq!(host_flow(&w), Decision::Allow);
    let w = world(&mk("host"));
    assert!(
        !w.allowed(OUTSIDE, API, 1) && !w.allowed(WEB, API, 1) && host_flow(&w) == Decision::Allow
    );
    let w = world(&mk("all"));
    assert!(
        w.allowed(OUTSIDE, API, 1) && w.allowed(WEB, API, 1) && host_flow(&w) == Decision::Allow
    );
}

#[test]
fn ports_end_port_protocols_and_named_ports() {
    let y = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  \
        endpointSelector: {matchLabels: {app: api}}\n  ingress:\n  - toPorts:\n    - ports: [{port: \"9000\", endPort: 9010, protocol: TCP}, \
        {port: \"53\", protocol: UDP}, {port: http-alt}, {port: nope}]\n";
    let w = world(y);
    for p in [9000, 9005, 9010] {
        assert!(w.allowed(WEB, API, p), "{p}");
    }
    assert!(!w.allowed(WEB, API, 8999) && !w.allowed(WEB, API, 9011));
    let udp = |p| {
        w.engine
            .connection(&w.flow(WEB, API, p, Protocol::Udp), &w.cache, NOW)
            .decision
    };
    assert_eq!(udp(53), Decision::Allow);
    assert_eq!(udp(9000), Decision::Deny);
    assert!(!w.allowed(WEB, API, 53), "53 is UDP only");
    assert!(
        w.allowed(WEB, API, 8081),
        "named port http-alt = 8081 on api"
    );
    assert!(!w.allowed(WEB, API, 8080));
}

#[test]
fn port_zero_means_every_port_and_any_protocol() {
    let y = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  \
        endpointSelector: {matchLabels: {app: api}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: web}}]\n    toPorts: [{ports: [{port: \"0\", protocol: ANY}]}]\n";
    let w = world(y);
    assert!(w.allowed(WEB, API, 1) && w.allowed(WEB, API, 65535));
    let f = w.flow(WEB, API, 7, Protocol::Sctp);
    assert_eq!(
        w.engine.connection(&f, &w.cache, NOW).decision,
        Decision::Allow
    );
}

// ---------- HTTP ----------

#[test]
fn http_regexes_are_anchored_to_the_whole_value() {
    let w = world(&api_http("        - {method: GET, path: \"/api/v1/.*\"}\n"));
    assert!(w.http_ok("GET", "/api/v1/users", &[]));
    assert!(w.http_ok("GET", "/api/v1/users?x=1", &[]));
    assert!(!w.http_ok("GET", "/x/api/v1/a", &[]));
    assert!(!w.http_ok("GETX", "/api/v1/a", &[]));
    assert!(!w.http_ok("XGET", "/api/v1/a", &[]));
    let v = w.http(WEB, API, 8080, "POST", "/api/v1/a", &[]);
    assert_eq!(
        v.reason,
        Reason::L7NoMatch {
            direction: Direction::Ingress,
            kind: L7Kind::Http,
            policies: vec!["prod/p".to_string()],
        }
    );
    assert_eq!(
        v.reason.to_string(),
        "denied: no http rule matched the request (ingress; rules of prod/p)"
    );
}

#[test]
fn http_host_regex_and_ascii_classes() {
    let w = world(&api_http(
        "        - {host: \"api\\\\.prod\", path: \"/\\\\w+/[0-9]{2}\"}\n",
    ));
    assert!(w.http_ok("GET", "/ab_c/12", &[]));
    assert!(!w.http_ok("GET", "/ab/123", &[]));
    let f = w.flow(WEB, API, 8080, Protocol::Tcp);
    let other = HttpRequest {
        method: "GET",
        path: "/a/12",
        host: "api.prodX",
        headers: &[],
    };
    assert_eq!(w.engine.http(&f, &other).decision, Decision::Deny);
}

#[test]
fn http_headers_names_case_insensitive_values_exact_repeated_joined() {
    let w = world(&api_http(
        "        - {path: /p, headers: [\"X-Token\"]}\n        - {path: /v, headers: [\"Content-Type: application/json\"]}\n        - {path: /r, headers: [\"X-Multi: a, b\"]}\n",
    ));
    assert!(w.http_ok("GET", "/p", &[("x-token", "")]));
    assert!(w.http_ok("GET", "/p", &[("X-TOKEN", "q")]));
    assert!(!w.http_ok("GET", "/p", &[]));
    assert!(w.http_ok("GET", "/v", &[("content-type", "application/json")]));
    assert!(!w.http_ok("GET", "/v", &[("content-type", "application/jsonx")]));
    assert!(!w.http_ok("GET", "/v", &[("content-type", "Application/json")]));
    assert!(w.http_ok("GET", "/r", &[("x-multi", "a"), ("X-Multi", "b")]));
    assert!(!w.http_ok("GET", "/r", &[("x-multi", "a")]));
}

#[test]
fn header_matches_mismatch_actions() {
    let w = world(&api_http(
        "        - path: /m\n          headerMatches:\n          - {name: X-Must, value: yes}\n          - {name: X-Log, value: v, mismatch: LOG}\n          \
         - {name: X-Add, value: added, mismatch: ADD}\n          - {name: X-Del, value: keep, mismatch: DELETE}\n          - {name: X-Rep, value: new, mismatch: REPLACE}\n",
    ));
    assert!(!w.http_ok("GET", "/m", &[]), "empty mismatch = must match");
    let v = w.http(
        WEB,
        API,
        8080,
        "GET",
        "/m",
        &[("x-must", "yes"), ("x-del", "other"), ("x-rep", "old")],
    );
    assert_eq!(v.decision, Decision::Allow);
    assert_eq!(
        v.header_actions,
        vec![
            HeaderAction::Log {
                name: "x-log".into()
            },
            HeaderAction::Add {
                name: "x-add".into(),
                value: "added".into()
            },
            HeaderAction::Delete {
                name: "x-del".into()
            },
            HeaderAction::Replace {
                name: "x-rep".into(),
                value: "new".into()
            },
        ]
    );
    let v = w.http(
        WEB,
        API,
        8080,
        "GET",
        "/m",
        &[
            ("x-must", "yes"),
            ("x-log", "v"),
            ("x-add", "added"),
            ("x-del", "keep"),
            ("x-rep", "new"),
        ],
    );
    assert!(v.header_actions.is_empty());
}

#[test]
fn empty_http_rule_matches_everything() {
    let w = world(&api_http("        - {}\n"));
    assert!(w.http_ok("DELETE", "/anything/at/all", &[]));
    assert_eq!(w.conn(WEB, API, 8080).l7, Some(L7Kind::Http));
}

#[test]
fn first_matching_rule_wins_and_header_failure_falls_through_to_later_rules() {
    let w = world(&api_http(
        "        - {path: \"/a.*\", headers: [\"X-Need\"]}\n        - {path: \"/ab\"}\n        - {path: \"/a.*\"}\n",
    ));
    let v = w.http(WEB, API, 8080, "GET", "/ab", &[]);
    match &v.reason {
        Reason::Allowed { by } => assert_eq!(by[0].l7_index, Some(1)),
        r => panic!("{r}"),
    }
    let v = w.http(WEB, API, 8080, "GET", "/ab", &[("x-need", "1")]);
    match &v.reason {
        Reason::Allowed { by } => assert_eq!(by[0].l7_index, Some(0)),
        r => panic!("{r}"),
    }
    let v = w.http(WEB, API, 8080, "GET", "/ax", &[]);
    match &v.reason {
        Reason::Allowed { by } => assert_eq!(by[0].l7_index, Some(2)),
        r => panic!("{r}"),
    }
}

#[test]
fn grpc_is_http_post_to_service_method() {
    let w = world(&api_http(
        "        - {method: POST, path: \"/shop.Catalog/(Get|List)Item\"}\n",
    ));
    assert!(w.http_ok("POST", "/shop.Catalog/GetItem", &[]));
    assert!(!w.http_ok("POST", "/shop.Catalog/DeleteItem", &[]));
    assert!(!w.http_ok("GET", "/shop.Catalog/GetItem", &[]));
}

#[test]
fn plain_l4_allow_on_same_port_and_peer_makes_l7_moot() {
    let y = format!(
        "{}  - fromEndpoints: [{{matchLabels: {{app: web}}}}]\n    toPorts: [{{ports: [{{port: \"8080\", protocol: TCP}}]}}]\n",
        api_http("        - {method: GET}\n")
    );
    let w = world(&y);
    assert_eq!(w.conn(WEB, API, 8080).l7, None);
    assert!(w.http_ok("DELETE", "/x", &[]));
    // Batch has no plain allow and no L7 rule.
    assert!(!w.allowed(BATCH, API, 8080));
}

#[test]
fn plain_l4_allow_for_another_peer_does_not_make_l7_moot() {
    let y = format!(
        "{}  - fromEndpoints: [{{matchLabels: {{app: batch}}}}]\n    toPorts: [{{ports: [{{port: \"8080\", protocol: TCP}}]}}]\n",
        api_http("        - {method: GET}\n")
    );
    let w = world(&y);
    assert_eq!(w.conn(WEB, API, 8080).l7, Some(L7Kind::Http));
    assert!(!w.http_ok("DELETE", "/x", &[]));
    assert_eq!(w.conn(BATCH, API, 8080).l7, None);
}

#[test]
fn http_rules_on_egress_and_ingress_both_apply() {
    let y = format!(
        "{}---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: e, namespace: prod}}\nspec:\n  \
         endpointSelector: {{matchLabels: {{app: web}}}}\n  egress:\n  - toPorts:\n    - ports: [{{port: \"8080\"}}]\n      rules:\n        http: [{{path: \"/a.*\"}}]\n",
        api_http("        - {method: GET}\n")
    );
    let w = world(&y);
    assert!(w.http_ok("GET", "/a", &[]));
    assert!(!w.http_ok("POST", "/a", &[]));
    let v = w.http(WEB, API, 8080, "GET", "/b", &[]);
    assert_eq!(
        v.reason,
        Reason::L7NoMatch {
            direction: Direction::Egress,
            kind: L7Kind::Http,
            policies: vec!["prod/e".to_string()],
        }
    );
}

// ---------- Kafka ----------

fn kafka_world(rules: &str) -> World {
    world(&format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: k, namespace: data}}\nspec:\n  \
         endpointSelector: {{matchLabels: {{app: db}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{\"k8s:io.kubernetes.pod.namespace\": prod}}}}]\n    \
         toPorts:\n    - ports: [{{port: \"9092\"}}]\n      rules:\n        kafka:\n{rules}"
    ))
}

fn kafka_ok(w: &World, key: &str, version: i16, client: Option<&str>, topics: &[&str]) -> bool {
    let f = w.flow(WEB, DB, 9092, Protocol::Tcp);
    let req = KafkaRequest {
        api_key: kafka::api_key_by_name(key).expect("key"),
        api_version: version,
        client_id: client,
        topics,
    };
    w.engine.kafka(&f, &req).decision == Decision::Allow
}

#[test]
fn kafka_roles_case_insensitive_and_key_expansion() {
    let w = kafka_world("        - {role: PRODUCE, topic: orders}\n");
    assert!(kafka_ok(&w, "produce", 9, None, &["orders"]));
    assert!(kafka_ok(&w, "metadata", 12, None, &["orders"]));
    assert!(kafka_ok(&w, "apiversions", 3, None, &[]));
    assert!(!kafka_ok(&w, "fetch", 12, None, &["orders"]));
    let w = kafka_world("        - {role: consume, topic: orders}\n");
    for k in [
        "fetch",
        "listoffsets",
        "metadata",
        "offsetcommit",
        "offsetfetch",
        "findcoordinator",
        "joingroup",
        "heartbeat",
        "leavegroup",
        "syncgroup",
        "apiversions",
    ] {
        assert!(kafka_ok(&w, k, 1, None, &["orders"]), "{k}");
    }
    assert!(!kafka_ok(&w, "produce", 9, None, &["orders"]));
}

#[test]
fn kafka_api_key_version_client_id_exact() {
    let w = kafka_world("        - {apiKey: fetch, apiVersion: \"11\", clientID: c1}\n");
    assert!(kafka_ok(&w, "fetch", 11, Some("c1"), &["any"]));
    assert!(!kafka_ok(&w, "fetch", 12, Some("c1"), &["any"]));
    assert!(!kafka_ok(&w, "fetch", 11, Some("c1x"), &["any"]));
    assert!(!kafka_ok(&w, "fetch", 11, None, &["any"]));
    assert!(!kafka_ok(&w, "metadata", 11, Some("c1"), &[]));
}

#[test]
fn kafka_every_topic_must_be_allowed_by_some_matching_rule() {
    let w = kafka_world(
        "        - {role: produce, topic: orders}\n        - {role: produce, topic: payments}\n        - {apiKey: fetch, topic: audit}\n",
    );
    assert!(
        kafka_ok(&w, "produce", 9, None, &["orders", "payments"]),
        "different rules may allow different topics"
    );
    assert!(
        !kafka_ok(&w, "produce", 9, None, &["orders", "audit"]),
        "audit is allowed only for fetch"
    );
    assert!(!kafka_ok(&w, "produce", 9, None, &["orders", "x"]));
    assert!(
        kafka_ok(&w, "apiversions", 0, None, &[]),
        "keys without topics ignore the topic"
    );
}

// ---------- DNS and FQDN ----------

fn dns_world(rules: &str) -> World {
    world(&format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: d, namespace: prod}}\nspec:\n  \
         endpointSelector: {{matchLabels: {{app: web}}}}\n  egress:\n  - toEndpoints: [{{matchLabels: {{\"k8s:io.kubernetes.pod.namespace\": kube-system, k8s-app: kube-dns}}}}]\n    \
         toPorts:\n    - ports: [{{port: \"53\", protocol: ANY}}]\n      rules:\n        dns:\n{rules}"
    ))
}

fn dns_ok(w: &World, name: &str) -> bool {
    let f = w.flow(WEB, KDNS, 53, Protocol::Udp);
    w.engine.dns(&f, &DnsQuery { name, qtype: 1 }).decision == Decision::Allow
}

#[test]
fn dns_match_name_is_case_insensitive_with_optional_trailing_dot() {
    let w = dns_world("        - matchName: API.example.com.\n");
    assert!(dns_ok(&w, "api.example.com"));
    assert!(dns_ok(&w, "Api.Example.COM."));
    assert!(!dns_ok(&w, "x.api.example.com"));
    assert!(!dns_ok(&w, "api.example.co"));
}

#[test]
fn dns_single_star_is_one_label_double_star_is_one_or_more() {
    let w = dns_world("        - matchPattern: \"*.example.com\"\n");
    assert!(dns_ok(&w, "a.example.com"));
    assert!(dns_ok(&w, "A-b_9.example.com."));
    assert!(!dns_ok(&w, "example.com"));
    assert!(!dns_ok(&w, "a.b.example.com"));
    let w = dns_world("        - matchPattern: \"**.example.com\"\n");
    assert!(dns_ok(&w, "a.example.com"));
    assert!(dns_ok(&w, "a.b.c.example.com"));
    assert!(!dns_ok(&w, "example.com"));
    assert!(!dns_ok(&w, "badexample.com"));
    let w = dns_world("        - matchPattern: \"api-*.svc.example.com\"\n");
    assert!(dns_ok(&w, "api-1.svc.example.com") && dns_ok(&w, "api-.svc.example.com"));
    assert!(!dns_ok(&w, "web-1.svc.example.com"));
    let w = dns_world("        - matchPattern: \"*\"\n");
    assert!(dns_ok(&w, "anything.at.all") && dns_ok(&w, "com"));
}

#[test]
fn dns_rules_select_egress_and_redirect_both_transports() {
    let w = dns_world("        - matchName: a.com\n");
    assert_eq!(w.conn(WEB, KDNS, 53).l7, Some(L7Kind::Dns));
    assert!(
        !w.allowed(WEB, API, 80),
        "egress is default-deny once selected"
    );
    let ports = w.engine.l7_ports();
    let protos: Vec<Protocol> = ports
        .iter()
        .filter(|p| p.kind == Some(L7Kind::Dns))
        .map(|p| p.protocol)
        .collect();
    assert_eq!(protos, vec![Protocol::Tcp, Protocol::Udp]);
    assert!(
        ports
            .iter()
            .all(|p| p.direction == Direction::Egress && p.port == 53 && p.end_port == 53)
    );
}

#[test]
fn to_fqdns_allows_learned_outside_ips_only() {
    let y = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: f, namespace: prod}\nspec:\n  \
        endpointSelector: {matchLabels: {app: web}}\n  egress:\n  - toFQDNs: [{matchPattern: \"*.example.com\"}]\n    toPorts: [{ports: [{port: \"443\"}]}]\n";
    let mut w = world(y);
    assert!(!w.allowed(WEB, OUTSIDE, 443));
    w.cache.insert(
        Some(ip(WEB)),
        "www.Example.com.",
        &[ip(OUTSIDE), ip(API)],
        Duration::from_secs(30),
        NOW,
    );
    assert!(w.allowed(WEB, OUTSIDE, 443));
    assert!(!w.allowed(WEB, OUTSIDE, 80));
    assert!(
        !w.allowed(WEB, API, 443),
        "toFQDNs never matches endpoint IPs"
    );
    // expired entries no longer count
    let f = w.flow(WEB, OUTSIDE, 443, Protocol::Tcp);
    let later = NOW + Duration::from_secs(31);
    let mut f2 = f.clone();
    f2.dst_names.clear();
    assert_eq!(
        w.engine.connection(&f2, &w.cache, later).decision,
        Decision::Deny
    );
}

#[test]
fn fqdn_cache_min_ttl_limit_and_gc() {
    let mut c = FqdnCache::new(Duration::from_secs(60));
    c.insert(None, "a.com", &[ip("1.1.1.1")], Duration::from_secs(5), NOW);
    assert_eq!(
        c.names_for_ip_at(ip("1.1.1.1"), NOW + Duration::from_secs(59)),
        vec!["a.com".to_string()]
    );
    assert!(
        c.names_for_ip_at(ip("1.1.1.1"), NOW + Duration::from_secs(60))
            .is_empty()
    );
    let ips: Vec<IpAddr> = (0..55).map(|i| ip(&format!("2.2.2.{i}"))).collect();
    let ep = Some(ip(WEB));
    let mut evicted = Vec::new();
    for i in &ips {
        evicted.extend(c.insert(ep, "b.com", &[*i], Duration::from_secs(300), NOW));
    }
    assert_eq!(evicted, ips[..5].to_vec(), "oldest five evicted");
    assert!(
        c.names_for_ip(ips[0]).is_empty(),
        "evicted IPs leave the reverse index"
    );
    assert_eq!(c.names_for_ip(ips[5]), vec!["b.com".to_string()]);
    assert_eq!(c.ips_for_name("B.com.", NOW).len(), 50);
    // another endpoint has its own budget
    c.insert(
        Some(ip(BATCH)),
        "b.com",
        &ips[..5],
        Duration::from_secs(300),
        NOW,
    );
    assert_eq!(c.ips_for_name("b.com", NOW).len(), 55);
    assert_eq!(c.gc(NOW + Duration::from_secs(100)), 1);
    assert_eq!(c.gc(NOW + Duration::from_secs(400)), 55);
    assert!(c.is_empty());
    assert_eq!(c.ip_count(), 0, "gc empties the reverse index");
}

// ---------- NetworkPolicy ----------

#[test]
fn network_policy_pod_namespace_ipblock_ports() {
    let y = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: prod}\nspec:\n  \
        podSelector: {matchLabels: {app: api}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {app: web}}\n    \
        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: data}}\n    - ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.7/32]}\n    \
        ports: [{port: 8000, endPort: 8100, protocol: TCP}]\n";
    let w = world(y);
    assert!(w.allowed(WEB, API, 8050));
    assert!(!w.allowed(WEB, API, 8101));
    assert!(
        !w.allowed(STAGING_WEB, API, 8050),
        "podSelector alone = policy namespace"
    );
    assert!(w.allowed(DB, API, 8000), "namespaceSelector data");
    assert!(w.allowed("203.0.113.8", API, 8000));
    assert!(!w.allowed(OUTSIDE, API, 8000), "except");
    assert!(w.allowed(API, OUTSIDE, 1), "no Egress policy type");
}

#[test]
fn network_policy_port_protocol_defaults_to_tcp() {
    let y = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: prod}\nspec:\n  \
        podSelector: {matchLabels: {app: api}}\n  ingress:\n  - ports: [{port: 53}, {port: http-alt}]\n";
    let w = world(y);
    assert!(w.allowed(WEB, API, 53));
    assert!(w.allowed(WEB, API, 8081));
    let f = w.flow(WEB, API, 53, Protocol::Udp);
    assert_eq!(
        w.engine.connection(&f, &w.cache, NOW).decision,
        Decision::Deny
    );
}

#[test]
fn network_policy_empty_rule_allows_all_and_policy_types() {
    let y = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: prod}\nspec:\n  \
        podSelector: {}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - {}\n";
    let w = world(y);
    assert!(w.allowed(OUTSIDE, API, 1));
    assert!(
        !w.allowed(API, OUTSIDE, 1),
        "Egress type with no rules = deny all egress"
    );
    assert!(!w.allowed(WEB, API, 1), "web's egress is denied too");
    assert!(w.allowed(DB, STAGING_WEB, 1));
}

// ---------- identities ----------

#[test]
fn identities_are_deterministic_shared_and_start_at_256() {
    let a = EndpointTable::new(endpoints()).expect("a");
    let mut rev = endpoints();
    rev.reverse();
    let b = EndpointTable::new(rev).expect("b");
    for ep in endpoints() {
        assert_eq!(a.identity_of_ip(ep.ip), b.identity_of_ip(ep.ip));
        assert!(a.identity_of_ip(ep.ip).0 >= 256);
    }
    let mut eps = endpoints();
    eps.push(Endpoint::new(
        "web2",
        "prod",
        &[("app", "web"), ("tier", "frontend")],
        ip("10.0.1.99"),
    ));
    let t = EndpointTable::new(eps).expect("t");
    assert_eq!(t.identity_of_ip(ip(WEB)), t.identity_of_ip(ip("10.0.1.99")));
    assert_ne!(
        t.identity_of_ip(ip(WEB)),
        t.identity_of_ip(ip(STAGING_WEB)),
        "namespace is part of the identity"
    );
    assert_eq!(t.identity_of_ip(ip(OUTSIDE)), Identity::WORLD);
    let labels = t.labels_of(t.identity_of_ip(ip(WEB))).expect("labels");
    assert_eq!(
        labels
            .get("io.kubernetes.pod.namespace")
            .map(String::as_str),
        Some("prod")
    );
    let dup = EndpointTable::new(vec![
        Endpoint::new("a", "x", &[], ip("10.1.1.1")),
        Endpoint::new("b", "x", &[], ip("10.1.1.1")),
    ])
    .expect_err("duplicate ip");
    assert_eq!(dup.field_path, "endpoints[1].ip");
}

#[test]
fn endpoint_table_from_yaml() {
    let t = EndpointTable::from_yaml(
        "e.yaml",
        "endpoints:\n- {name: a, namespace: x, labels: {app: a}, ip: 10.1.1.1, cgroup: /sys/fs/cgroup/a, named_ports: {http: 80}}\n",
    )
    .expect("table");
    assert_eq!(
        t.by_ip(ip("10.1.1.1")).map(|e| e.named_ports["http"]),
        Some(80)
    );
    let e = EndpointTable::from_yaml(
        "e.yaml",
        "endpoints:\n- {name: a, namespace: x, ip: 10.1.1.1, colour: red}\n",
    )
    .expect_err("unknown field");
    assert!(
        e.to_string()
            .starts_with("e.yaml: document 0: endpoints[0]: unknown field `colour`"),
        "{e}"
    );
}

// ---------- validation ----------

fn errors_of(yaml: &str) -> Vec<PolicyError> {
    load_policies("bad.yaml", yaml).errors
}

fn one_error(yaml: &str) -> PolicyError {
    let e = errors_of(yaml);
    assert_eq!(e.len(), 1, "{e:?}");
    e.into_iter().next().expect("one")
}

#[test]
fn validation_bad_regex_names_the_field() {
    let e = one_error(&api_http(
        "        - {method: GET}\n        - {path: \"/a(\"}\n",
    ));
    assert_eq!(
        e.field_path,
        "spec.ingress[0].toPorts[0].rules.http[1].path"
    );
    assert!(e.reason.contains("invalid regex"), "{}", e.reason);
    assert_eq!(e.file, "bad.yaml");
    assert!(
        e.to_string()
            .starts_with("bad.yaml: document 0: spec.ingress[0].toPorts[0].rules.http[1].path: ")
    );
}

#[test]
fn validation_unknown_field_has_path() {
    let e = one_error(&api_http("        - {method: GET, paht: /x}\n"));
    assert_eq!(e.field_path, "spec.ingress[0].toPorts[0].rules.http[0]");
    assert!(e.reason.contains("unknown field `paht`"), "{}", e.reason);
}

#[test]
fn validation_messages_for_each_rule() {
    let base = |body: &str| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, namespace: prod}}\nspec:\n  endpointSelector: {{}}\n{body}"
        )
    };
    let cases = [
        (
            "  ingress:\n  - fromCIDR: [10.0.0.300/8]\n",
            "spec.ingress[0].fromCIDR[0]",
            "not a CIDR",
        ),
        (
            "  ingress:\n  - fromCIDRSet: [{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}]\n",
            "spec.ingress[0].fromCIDRSet[0].except[0]",
            "not inside",
        ),
        (
            "  ingress:\n  - toPorts: [{ports: [{port: \"9092\"}], rules: {kafka: [{topic: \"bad topic\"}]}}]\n",
            "spec.ingress[0].toPorts[0].rules.kafka[0].topic",
            "only [a-zA-Z0-9._-]",
        ),
        (
            &format!(
                "  ingress:\n  - toPorts: [{{ports: [{{port: \"9092\"}}], rules: {{kafka: [{{topic: {}}}]}}}}]\n",
                "a".repeat(256)
            ),
            "spec.ingress[0].toPorts[0].rules.kafka[0].topic",
            "at most 255",
        ),
        (
            "  ingress:\n  - toPorts: [{ports: [{port: \"80\"}], rules: {http: [{}], kafka: [{}]}}]\n",
            "spec.ingress[0].toPorts[0].rules",
            "one L7 rule type",
        ),
        (
            "  ingress:\n  - toPorts: [{ports: [{port: \"80\"}], rules: {http: [{}]}}]\n  - toPorts: [{ports: [{port: \"80\"}], rules: {dns: [{matchName: a.com}]}}]\n",
            "spec.ingress[1].toPorts[0].rules",
            "already has http rules",
        ),
        (
            "  egress:\n  - toFQDNs: [{matchName: a.com}]\n    toEndpoints: [{}]\n",
            "spec.egress[0].toFQDNs",
            "cannot be combined",
        ),
        (
            "  ingress:\n  - toPorts: [{ports: [{port: \"90\", endPort: 80}]}]\n",
            "spec.ingress[0].toPorts[0].ports[0].endPort",
            "between port 90",
        ),
        (
            "  ingress:\n  - toPorts: [{ports: [{port: \"70000\"}]}]\n",
            "spec.ingress[0].toPorts[0].ports[0].port",
            "not a port",
        ),
        (
            "  ingress:\n  - toPorts: [{ports: [{port: \"Bad_Name\"}]}]\n",
            "spec.ingress[0].toPorts[0].ports[0].port",
            "port name",
        ),
        (
            "  ingress:\n  - toPorts: [{ports: [{port: \"80\", protocol: tcp}]}]\n",
            "spec.ingress[0].toPorts[0].ports[0].protocol",
            "use TCP",
        ),
        (
            "  ingress:\n  - fromEntities: [moon]\n",
            "spec.ingress[0].fromEntities[0]",
            "unsupported entity",
        ),
        (
            "  ingress:\n  - fromEndpoints: [{matchExpressions: [{key: a, operator: Near}]}]\n",
            "spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator",
            "unknown operator",
        ),
        (
            "  ingress:\n  - fromEndpoints: [{matchExpressions: [{key: a, operator: In}]}]\n",
            "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values",
            "at least one value",
        ),
        (
            "  ingressDeny:\n  - toPorts: [{ports: [{port: \"80\"}], rules: {http: [{}]}}]\n",
            "spec.ingressDeny[0].toPorts[0].rules",
            "L3/L4 only",
        ),
        (
            "  egress:\n  - fromEndpoints: [{}]\n",
            "spec.egress[0].fromEndpoints",
            "other direction",
        ),
        (
            "  ingress:\n  - toPorts: [{ports: [{port: \"9092\"}], rules: {kafka: [{role: admin}]}}]\n",
            "spec.ingress[0].toPorts[0].rules.kafka[0].role",
            "produce or consume",
        ),
        (
            "  ingress:\n  - toPorts: [{ports: [{port: \"9092\"}], rules: {kafka: [{apiKey: nosuch}]}}]\n",
            "spec.ingress[0].toPorts[0].rules.kafka[0].apiKey",
            "unknown Kafka API key",
        ),
        (
            "  egress:\n  - toPorts: [{ports: [{port: \"53\"}], rules: {dns: [{matchPattern: \"a.**.com\"}]}}]\n",
            "spec.egress[0].toPorts[0].rules.dns[0].matchPattern",
            "'**'",
        ),
        (
            "  ingress:\n  - toPorts: [{ports: [{port: \"80\"}], rules: {http: [{headerMatches: [{name: x, mismatch: EXPLODE}]}]}}]\n",
            "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].mismatch",
            "unknown mismatch",
        ),
    ];
    for (body, path, reason) in cases {
        let e = one_error(&base(body));
        assert_eq!(e.field_path, path, "for {body}: {e}");
        assert!(e.reason.contains(reason), "for {body}: {e}");
    }
}

#[test]
fn validation_unknown_kind_and_api_version() {
    let e = one_error(
        "apiVersion: cilium.io/v3\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec: {}\n",
    );
    assert_eq!(e.field_path, "kind");
    assert!(
        e.reason
            .contains("unsupported apiVersion/kind cilium.io/v3/CiliumNetworkPolicy")
    );
    let e = one_error("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n");
    assert!(e.reason.contains("v1/ConfigMap"));
}

#[test]
fn one_bad_document_never_drops_the_others() {
    let good = api_http("        - {method: GET}\n");
    let bad = api_http("        - {path: \"[\"}\n");
    let y = format!("{good}---\n{bad}---\n{good}");
    let load = load_policies("multi.yaml", &y);
    assert_eq!(load.policies.len(), 2);
    assert_eq!(load.errors.len(), 1);
    assert_eq!(load.errors[0].document, 1);
    assert_eq!(load.policies[1].document, 2);
}

#[test]
fn oversized_regex_is_rejected_alone() {
    let good = api_http("        - {method: GET}\n");
    let huge = api_http("        - {path: \"(((a{100}){100}){100})\"}\n");
    let load = load_policies("big.yaml", &format!("{huge}---\n{good}"));
    assert_eq!(load.policies.len(), 1);
    assert_eq!(load.errors.len(), 1);
    assert_eq!(
        load.errors[0].field_path,
        "spec.ingress[0].toPorts[0].rules.http[0].path"
    );
    assert!(
        load.errors[0].reason.contains("too large"),
        "{}",
        load.errors[0].reason
    );
    let table = EndpointTable::new(endpoints()).expect("t");
    let (engine, errs) = PolicyEngine::compile(load.policies, &table);
    assert!(errs.is_empty());
    assert_eq!(engine.policy_ids(), ["prod/p".to_string()]);
}

#[test]
fn l7_ports_lists_what_to_redirect() {
    let w = world(&api_http("        - {method: GET}\n"));
    let api_id = w.engine.endpoints().identity_of_ip(ip(API));
    assert_eq!(
        w.engine.l7_ports(),
        vec![L7Port {
            identity: api_id,
            direction: Direction::Ingress,
            port: 8080,
            end_port: 8080,
            protocol: Protocol::Tcp,
            kind: Some(L7Kind::Http)
        }]
    );
}

#[test]
fn engine_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<PolicyEngine>();
}

// ---------- authentication.mode ----------

fn auth_policy(mode: &str, ports: bool) -> String {
    let ports = if ports {
        "\n      toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]"
    } else {
        ""
    };
    format!(
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: mtls, namespace: prod}}
spec:
  endpointSelector: {{matchLabels: {{app: api}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{app: web}}}}]
      authentication: {{mode: {mode}}}{ports}
    - fromEndpoints: [{{matchLabels: {{app: batch}}}}]
      toPorts: [{{ports: [{{port: \"8080\", protocol: TCP}}]}}]
"
    )
}

#[test]
fn authentication_required_marks_the_connection_and_its_port() {
    let w = world(&auth_policy("required", true));
    let c = w.conn(WEB, API, 8080);
    assert_eq!(c.decision, Decision::Allow);
    assert!(
        c.auth_required,
        "web -> api:8080 needs mutual authentication"
    );
    let plain = w.conn(BATCH, API, 8080);
    assert_eq!(plain.decision, Decision::Allow);
    assert!(!plain.auth_required, "batch's rule does not ask for it");
    assert_eq!(w.conn(WEB, API, 9090).decision, Decision::Deny);
    // The port is diverted to the proxy although it has no L7 rules, for TCP only.
    let api_id = w
        .engine
        .flow(ip(WEB), ip(API), 8080, Protocol::Tcp)
        .dst_identity;
    let ports: Vec<L7Port> = w
        .engine
        .l7_ports()
        .into_iter()
        .filter(|p| p.identity == api_id)
        .collect();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(
        (ports[0].port, ports[0].protocol, ports[0].kind),
        (8080, Protocol::Tcp, None)
    );
    // Disabled is the same as absent.
    let w = world(&auth_policy("disabled", true));
    assert!(!w.conn(WEB, API, 8080).auth_required);
    assert!(w.engine.l7_ports().is_empty());
}

#[test]
fn authentication_required_wins_over_a_plain_allow_for_the_same_peer() {
    let yaml = format!(
        "{}    - fromEndpoints: [{{matchLabels: {{app: web}}}}]\n      toPorts: [{{ports: [{{port: \"8080\"}}]}}]\n",
        auth_policy("required", true)
    );
    let w = world(&yaml);
    assert!(w.conn(WEB, API, 8080).auth_required);
}

#[test]
fn authentication_validation_names_the_field() {
    let e = one_error(&auth_policy("sometimes", true));
    assert_eq!(e.field_path, "spec.ingress[0].authentication.mode");
    assert!(e.reason.contains("\"required\" or \"disabled\""), "{e:?}");
    let e = one_error(&auth_policy("required", false));
    assert_eq!(e.field_path, "spec.ingress[0].authentication.mode");
    assert!(e.reason.contains("toPorts"), "{e:?}");
    let deny = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: d, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingressDeny:
    - fromEndpoints: [{matchLabels: {app: web}}]
      authentication: {mode: required}
      toPorts: [{ports: [{port: \"8080\"}]}]
";
    let e = one_error(deny);
    assert_eq!(e.field_path, "spec.ingressDeny[0].authentication");
}
