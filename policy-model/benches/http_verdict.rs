//! HTTP verdict cost with 10 .. 10,000 rules on one port: requests that hit the first rule, the last rule, and
//! no rule. Target: < 1 µs per request at 1,000 rules and at most 2x from 10 to 10,000 rules.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use policy_model::{
    Decision, Endpoint, EndpointTable, HttpRequest, PolicyEngine, Protocol, load_policies,
};

const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];

fn policy_yaml(n: usize) -> String {
    let mut y = String::from(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: bench, namespace: prod}\n\
         spec:\n  endpointSelector: {matchLabels: {app: api}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: web}}]\n\
         \x20   toPorts:\n    - ports: [{port: \"8080\", protocol: TCP}]\n      rules:\n        http:\n",
    );
    for i in 0..n {
        y.push_str(&format!(
            "        - {{method: {}, path: \"/api/v{i}/items/[0-9]+\"}}\n",
            METHODS[i % 4]
        ));
    }
    y
}

fn bench(c: &mut Criterion) {
    let web = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let api = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    let table = EndpointTable::new(vec![
        Endpoint::new("web", "prod", &[("app", "web")], web),
        Endpoint::new("api", "prod", &[("app", "api")], api),
    ])
    .expect("endpoints");
    let mut group = c.benchmark_group("http_verdict");
    for n in [10usize, 100, 1000, 10_000] {
        let load = load_policies("bench.yaml", &policy_yaml(n));
        assert!(load.errors.is_empty(), "{:?}", load.errors);
        let (engine, errors) = PolicyEngine::compile(load.policies, &table);
        assert!(errors.is_empty(), "{errors:?}");
        let flow = engine.flow(web, api, 8080, Protocol::Tcp);
        let last = n - 1;
        let early_path = "/api/v0/items/12345".to_string();
        let late_path = format!("/api/v{last}/items/12345");
        let miss_path = format!("/api/v{}/items/12345", n + 7);
        let cases = [
            ("early", METHODS[0], early_path, Decision::Allow),
            ("late", METHODS[last % 4], late_path, Decision::Allow),
            ("miss", "GET", miss_path, Decision::Deny),
        ];
        for (label, method, path, want) in &cases {
            let req = HttpRequest {
                method,
                path,
                host: "api",
                headers: &[("user-agent", "bench"), ("accept", "*/*")],
            };
            assert_eq!(engine.http(&flow, &req).decision, *want, "{label} at {n}");
            group.bench_with_input(BenchmarkId::new(*label, n), &req, |b, req| {
                b.iter(|| black_box(engine.http(black_box(&flow), black_box(req))))
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);
