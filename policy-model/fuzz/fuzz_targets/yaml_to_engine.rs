//! Arbitrary bytes as a policy file: loading, compiling and a few queries must never panic.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use policy_model::{
    DnsQuery, Endpoint, EndpointTable, FqdnCache, HttpRequest, KafkaRequest, PolicyEngine,
    Protocol, load_policies,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let load = load_policies("fuzz.yaml", text);
    for e in &load.errors {
        let _ = e.to_string();
    }
    let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    let w = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    let table = EndpointTable::new(vec![
        Endpoint::new("a", "default", &[("app", "a")], a),
        Endpoint::new("b", "prod", &[("app", "b"), ("tier", "x")], b),
    ])
    .expect("valid table");
    let (engine, _errors) = PolicyEngine::compile(load.policies, &table);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
    let mut cache = FqdnCache::new(Duration::from_secs(5));
    cache.insert(
        Some(a),
        "api.example.com",
        &[w],
        Duration::from_secs(60),
        now,
    );
    let _ = engine.l7_ports();
    for (src, dst) in [(a, b), (b, a), (a, w), (w, b)] {
        for (port, proto) in [
            (80, Protocol::Tcp),
            (53, Protocol::Udp),
            (9092, Protocol::Tcp),
        ] {
            let flow = engine.flow_with_names(src, dst, port, proto, &cache, now);
            let c = engine.connection(&flow, &cache, now);
            let _ = c.reason.to_string();
            let _ = engine.http(
                &flow,
                &HttpRequest {
                    method: "GET",
                    path: "/api/v1/x?y=1",
                    host: "b",
                    headers: &[("X-Token", "a"), ("x-token", "b")],
                },
            );
            let _ = engine.kafka(
                &flow,
                &KafkaRequest {
                    api_key: 0,
                    api_version: 9,
                    client_id: Some("c"),
                    topics: &["orders", "t"],
                },
            );
            let _ = engine.dns(
                &flow,
                &DnsQuery {
                    name: "API.example.com.",
                    qtype: 1,
                },
            );
        }
    }
});
