//! End-to-end for the web UI (`tollgate run --ui-listen`): real curl traffic between pods of two namespaces through
//! `tollgate run` (iptables TPROXY in a node netns, nginx in the server pods), and Debian's headless chromium on the
//! page, driven over the DevTools protocol (`tollgate_e2e::browser`). Checks: the map shows the workloads and
//! edges the traffic made, with the verdict colours; a denied request on a new edge shows up as a dropped edge
//! within 2 s (measured); the flow filters (verdict, namespace, method) and a click on a map node narrow the
//! table; a denied flow explains itself; the drops, HTTP endpoints views fill; the page logs no errors.
//!
//! With `TOLLGATE_UI_SCREENSHOTS=1` the test writes docs/ui/*.png (the README shows them).
//!
//! Needs root, iptables (TPROXY + socket match), nginx, curl, chromium, fonts-dejavu-core.

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_e2e::browser::Browser;
use tollgate_e2e::{
    ChildGuard, Nginx, Node, Pod, TempDir, require_root, require_tool, tollgate_bin, workspace_root,
};

const PROXY_PORT: u16 = 15001;
const UI: &str = "127.0.0.1:12080";
const API: &str = "10.0.41.20";
const LEDGER: &str = "10.0.42.20";
const RESOLVER: &str = "10.0.43.53";

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api-http, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: frontend}}]
      toPorts:
        - ports: [{port: "8080", protocol: TCP}]
          rules:
            http:
              - {method: GET, path: "/products/.*"}
              - {method: POST, path: /cart}
    - fromEndpoints: [{matchLabels: {app: crawler}}]
      toPorts:
        - ports: [{port: "8080", protocol: TCP}]
          rules:
            http:
              - {method: GET, path: /products}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ledger-http, namespace: billing}
spec:
  endpointSelector: {matchLabels: {app: ledger}}
  ingress:
    - fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": shop, app: api}}]
      toPorts:
        - ports: [{port: "8080", protocol: TCP}]
          rules:
            http:
              - {method: GET, path: "/books/.*"}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fetcher-egress, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: fetcher}}
  egress:
    - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, k8s-app: kube-dns}}]
      toPorts:
        - ports: [{port: "53", protocol: ANY}]
          rules:
            dns: [{matchPattern: "*.example.com"}]
    - toFQDNs: [{matchName: api.example.com}]
      toPorts:
        - ports: [{port: "443", protocol: TCP}]
"#;

const ENDPOINTS: &str = r#"
endpoints:
  - {name: frontend, namespace: shop, labels: {app: frontend}, ip: 10.0.41.10}
  - {name: crawler, namespace: shop, labels: {app: crawler}, ip: 10.0.41.11}
  - {name: api, namespace: shop, labels: {app: api}, ip: 10.0.41.20}
  - {name: ledger, namespace: billing, labels: {app: ledger}, ip: 10.0.42.20}
  - {name: fetcher, namespace: shop, labels: {app: fetcher}, ip: 10.0.41.12}
  - {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}, ip: 10.0.43.53}
"#;

struct Setup {
    // Drop order: browser users drop first (declared in the test), then the proxy, servers, pods, node, files.
    _proxy: ChildGuard,
    _nginx: Vec<Nginx>,
    _dnsmasq: ChildGuard,
    pods: Vec<Pod>,
    node: Node,
    dir: TempDir,
}

impl Setup {
    fn new() -> Self {
        require_root();
        require_tool("iptables");
        let mut node = Node::new("ui").unwrap();
        let spec: Value = serde_yaml::from_str(ENDPOINTS).unwrap();
        let pods: Vec<Pod> = spec["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                node.add_pod(e["name"].as_str().unwrap(), e["ip"].as_str().unwrap())
                    .unwrap()
            })
            .collect();
        let dir = TempDir::new("ui").unwrap();
        dir.write("policy.yaml", POLICY).unwrap();
        dir.write("endpoints.yaml", ENDPOINTS).unwrap();
        tollgate_e2e::tproxy_all_tcp(&node, PROXY_PORT).unwrap();
        let nginx = ["api", "ledger"]
            .iter()
            .map(|name| {
                Nginx::start(pods.iter().find(|p| p.name == *name).unwrap(), 8080, 18081).unwrap()
            })
            .collect();
        let records = [
            "api.example.com,192.0.2.10".to_string(),
            "www.example.com,192.0.2.11".to_string(),
        ];
        let coredns = pods.iter().find(|p| p.name == "coredns").unwrap();
        let dnsmasq = tollgate_e2e::dns::start_dnsmasq(
            coredns,
            RESOLVER,
            &records,
            &[],
            ("api.example.com", "192.0.2.10"),
        )
        .unwrap();
        let stderr = fs::File::create(dir.path().join("tollgate.stderr")).unwrap();
        let mut cmd = node.command(tollgate_bin());
        cmd.args(["run", "--listen", &format!("0.0.0.0:{PROXY_PORT}")])
            .args([
                "--observer-listen",
                "127.0.0.1:4245",
                "--metrics-listen",
                "127.0.0.1:9965",
            ])
            .args(["--ui-listen", UI])
            .args([
                "--dns-upstream",
                &format!("{RESOLVER}:53"),
                "--dns-port",
                "15053",
            ])
            .arg("--policy")
            .arg(dir.path().join("policy.yaml"))
            .arg("--endpoints")
            .arg(dir.path().join("endpoints.yaml"))
            .arg("--handoff-socket")
            .arg(dir.path().join("handoff.sock"))
            .env("TOLLGATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut proxy = ChildGuard::spawn(&mut cmd).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let err = fs::read_to_string(dir.path().join("tollgate.stderr")).unwrap_or_default();
            if err.contains("web UI ready") {
                break;
            }
            if let Ok(Some(st)) = proxy.child_mut().try_wait() {
                panic!("tollgate exited with {st}: {err}");
            }
            assert!(Instant::now() < deadline, "the web UI never came up: {err}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Setup {
            _proxy: proxy,
            _nginx: nginx,
            _dnsmasq: dnsmasq,
            pods,
            node,
            dir,
        }
    }

    fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap()
    }

    /// `n` requests from `pod` (one curl process, so the loop is quick); the HTTP statuses.
    fn requests(&self, pod: &str, method: &str, urls: &[String]) -> Vec<u16> {
        let script: String = urls
            .iter()
            .map(|u| {
                format!("curl -s -o /dev/null --max-time 5 -w '%{{http_code}}\\n' -X {method} '{u}' || true\n")
            })
            .collect();
        let out = self.pod(pod).sh(&script).unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().parse().unwrap_or(0))
            .collect()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("tollgate.stderr")).unwrap_or_default()
    }
}

impl Setup {
    /// One DNS query from `pod` through the DNS proxy (on the pods' gateway); dig's answer or status line.
    fn dig(&self, pod: &str, name: &str) -> String {
        let out = self
            .pod(pod)
            .sh(&format!(
                "dig @{} -p 15053 +time=2 +tries=1 {name} A | grep -E 'status:|^{name}' || true",
                tollgate_e2e::POD_GATEWAY
            ))
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn urls(host: &str, paths: &[&str]) -> Vec<String> {
    paths
        .iter()
        .map(|p| format!("http://{host}:8080{p}"))
        .collect()
}

/// The traffic the map starts from: allowed and denied requests on three edges.
fn background_traffic(s: &Setup) {
    let products: Vec<String> = (1..=12).map(|i| format!("/products/{i}")).collect();
    let products: Vec<&str> = products.iter().map(String::as_str).collect();
    assert!(
        s.requests("frontend", "GET", &urls(API, &products))
            .iter()
            .all(|c| *c == 200),
        "{}",
        s.stderr()
    );
    assert_eq!(
        s.requests("frontend", "POST", &urls(API, &["/cart", "/cart"])),
        [200, 200]
    );
    assert_eq!(
        s.requests("frontend", "DELETE", &urls(API, &["/products/3"])),
        [403]
    );
    assert_eq!(
        s.requests("crawler", "GET", &urls(API, &["/products", "/products"])),
        [200, 200]
    );
    assert_eq!(
        s.requests("crawler", "GET", &urls(API, &["/admin", "/products/9"])),
        [403, 403]
    );
    assert_eq!(
        s.requests(
            "api",
            "GET",
            &urls(LEDGER, &["/books/1", "/books/2", "/books/3"])
        ),
        [200, 200, 200]
    );
    // DNS: a name the fetcher's toFQDNs rule selects, one only its DNS rule allows, one it may not resolve.
    assert!(
        s.dig("fetcher", "api.example.com").contains("192.0.2.10"),
        "{}",
        s.stderr()
    );
    assert!(s.dig("fetcher", "www.example.com").contains("192.0.2.11"));
    assert!(s.dig("fetcher", "evil.example.org").contains("REFUSED"));
}

fn screenshots() -> bool {
    std::env::var("TOLLGATE_UI_SCREENSHOTS").is_ok_and(|v| v == "1")
}

fn save(b: &mut Browser, name: &str) {
    if !screenshots() {
        return;
    }
    let dir = workspace_root().join("docs/ui");
    fs::create_dir_all(&dir).unwrap();
    let png = b.screenshot().unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    fs::write(dir.join(name), png).unwrap();
}

/// Clicks at the rendered position of a map element (a real mouse event on the canvas).
fn click_map(b: &mut Browser, element_id: &str) {
    let pos = b
        .eval(&format!(
            "(() => {{ const el = tollgate.cy.getElementById({id}); const box = tollgate.cy.container().getBoundingClientRect();
               const p = el.isEdge() ? el.renderedMidpoint() : el.renderedPosition();
               return {{x: box.left + p.x, y: box.top + p.y}}; }})()",
            id = json!(element_id)
        ))
        .unwrap();
    for kind in ["mousePressed", "mouseReleased"] {
        b.call(
            "Input.dispatchMouseEvent",
            json!({"type": kind, "x": pos["x"], "y": pos["y"], "button": "left", "clickCount": 1}),
        )
        .unwrap();
    }
}

/// Sets a filter control the way a user does (value, then the change event).
fn set_filter(b: &mut Browser, name: &str, value: &str) {
    b.eval(&format!(
        "(() => {{ const el = document.querySelector('#filters [name={name}]'); el.value = {v};
           el.dispatchEvent(new Event('change', {{bubbles: true}})); return true; }})()",
        v = json!(value)
    ))
    .unwrap();
}

/// The table's rows as (source workload, destination workload, verdict, summary), once it has settled.
fn table(b: &mut Browser) -> Vec<(String, String, String, String)> {
    let v = b
        .eval("tollgate.state.rows.map(r => [r.source.workload, r.destination.workload, r.verdict, r.summary])")
        .unwrap();
    serde_json::from_value(v).unwrap()
}

/// Waits until the table shows what `pred` wants (filters apply after a fetch).
fn wait_table(
    b: &mut Browser,
    what: &str,
    pred: impl Fn(&[(String, String, String, String)]) -> bool,
) -> Vec<(String, String, String, String)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rows = table(b);
        if pred(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "table never showed {what}: {rows:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ui_shows_the_service_map_drops_and_filters_live() {
    require_tool("chromium");
    let s = Setup::new();
    background_traffic(&s);
    let mut b = Browser::launch(s.node.netns.command("chromium"), 1600, 1000).unwrap();
    b.navigate(&format!("http://{UI}/")).unwrap();

    // The map: six workloads in three namespaces, four edges, colours by verdict.
    let want_nodes = json!([
        "billing/ledger",
        "kube-system/kube-dns",
        "shop/api",
        "shop/crawler",
        "shop/fetcher",
        "shop/frontend"
    ]);
    b.wait_for(
        &format!(
            "JSON.stringify(tollgate.nodes()) === {:?}",
            want_nodes.to_string()
        ),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", s.stderr()));
    b.wait_for("tollgate.edges().length === 4", Duration::from_secs(5))
        .unwrap();
    let edges: Vec<Value> = serde_json::from_value(b.eval("tollgate.edges()").unwrap()).unwrap();
    let edge = |from: &str, to: &str| {
        edges
            .iter()
            .find(|e| e["from"] == from && e["to"] == to)
            .unwrap_or_else(|| panic!("no edge {from} -> {to}: {edges:#?}"))
            .clone()
    };
    let fe_api = edge("shop/frontend", "shop/api");
    assert_eq!(
        (fe_api["requests"].as_u64(), fe_api["drops"].as_u64()),
        (Some(15), Some(1)),
        "{fe_api}"
    );
    assert_eq!(
        fe_api["verdict"], "dropped",
        "a denial in the last minute colours the edge"
    );
    assert_eq!(edge("shop/crawler", "shop/api")["drops"], 2);
    let api_ledger = edge("shop/api", "billing/ledger");
    assert_eq!(
        (
            api_ledger["requests"].as_u64(),
            api_ledger["verdict"].as_str()
        ),
        (Some(3), Some("forwarded"))
    );
    // Namespace groups are compound nodes.
    assert_eq!(
        b.eval("tollgate.cy.getElementById('billing/ledger').parent().id()")
            .unwrap(),
        "ns:billing"
    );

    // A denied request on an edge that did not exist: on the map as a dropped edge within 2 s.
    assert_eq!(
        b.eval(
            "tollgate.edges().some(e => e.from === 'shop/crawler' && e.to === 'billing/ledger')"
        )
        .unwrap(),
        false
    );
    let start = Instant::now();
    let codes = s.requests("crawler", "GET", &urls(LEDGER, &["/books/1"]));
    assert_eq!(
        codes,
        [0],
        "crawler is refused at the connection (L3), no HTTP answer"
    );
    let (_, waited) = b
        .wait_for(
            "tollgate.edges().some(e => e.from === 'shop/crawler' && e.to === 'billing/ledger' && e.verdict === 'dropped' && e.drops === 1)",
            Duration::from_secs(5),
        )
        .unwrap();
    let elapsed = start.elapsed();
    println!("denied request -> dropped edge on the map: {elapsed:?} (browser polling {waited:?})");
    assert!(
        elapsed < Duration::from_secs(2),
        "dropped edge took {elapsed:?}"
    );

    // Filters narrow the table: everything, then only drops, then only billing, then only GETs.
    let all = wait_table(&mut b, "the traffic", |r| r.len() >= 30);
    set_filter(&mut b, "verdict", "DROPPED");
    let dropped = wait_table(&mut b, "only drops", |r| {
        !r.is_empty() && r.iter().all(|x| x.2 == "DROPPED")
    });
    assert!(dropped.len() < all.len());
    assert!(
        dropped
            .iter()
            .any(|x| x.0 == "shop/crawler" && x.1 == "billing/ledger"),
        "{dropped:#?}"
    );
    set_filter(&mut b, "namespace", "billing");
    let billing = wait_table(&mut b, "billing's drops", |r| {
        !r.is_empty()
            && r.iter().all(|x| {
                x.2 == "DROPPED" && (x.0.starts_with("billing/") || x.1.starts_with("billing/"))
            })
    });
    assert!(billing.len() < dropped.len(), "{billing:#?}");
    b.eval("document.getElementById('filters').reset(), true")
        .unwrap();
    set_filter(&mut b, "http_method", "POST");
    wait_table(&mut b, "only POST /cart", |r| {
        !r.is_empty() && r.iter().all(|x| x.3.contains("POST"))
    });
    b.eval("document.getElementById('filters').reset(), true")
        .unwrap();
    wait_table(&mut b, "the whole table again", |r| r.len() >= all.len());

    // A click on a map node narrows the table to that workload.
    click_map(&mut b, "billing/ledger");
    wait_table(&mut b, "ledger's flows", |r| {
        !r.is_empty()
            && r.iter()
                .all(|x| x.0 == "billing/ledger" || x.1 == "billing/ledger")
    });
    assert!(
        b.eval("document.getElementById('detail').textContent")
            .unwrap()
            .as_str()
            .unwrap()
            .contains("Inbound")
    );
    // The denied flow explains itself.
    b.eval(
        "(() => { const i = tollgate.state.rows.findIndex(r => r.verdict === 'DROPPED' && r.kind !== 'policy-verdict');
           document.querySelectorAll('#flow-rows tr')[i].click(); return i; })()",
    )
    .unwrap();
    let (why, _) = b
        .wait_for(
            "document.getElementById('policy-box')?.innerText",
            Duration::from_secs(2),
        )
        .unwrap();
    let why = why.as_str().unwrap().to_string();
    assert!(
        why.contains("Denied by policy") && why.contains("no ingress rule matched"),
        "{why}"
    );

    // An allowed flow names the rule that allowed it.
    click_map(&mut b, "shop/frontend->shop/api");
    wait_table(&mut b, "the frontend -> api edge", |r| {
        !r.is_empty()
            && r.iter().all(|x| {
                (x.0 == "shop/frontend" && x.1 == "shop/api")
                    || (x.0 == "shop/api" && x.1 == "shop/frontend")
            })
    });
    b.eval(
        "(() => { const i = tollgate.state.rows.findIndex(r => r.verdict === 'FORWARDED' && r.kind === 'request');
           document.querySelectorAll('#flow-rows tr')[i].click(); return i; })()",
    )
    .unwrap();
    let (allowed, _) = b
        .wait_for(
            "document.getElementById('policy-box')?.innerText",
            Duration::from_secs(2),
        )
        .unwrap();
    assert!(
        allowed
            .as_str()
            .unwrap()
            .contains("allowed by CiliumNetworkPolicy shop/api-http ingress[0] l7["),
        "{allowed}"
    );
    // And a request the L7 rules denied names the policy whose rules it failed.
    b.eval(
        "(() => { const i = tollgate.state.rows.findIndex(r => r.verdict === 'DROPPED' && r.kind === 'request');
           document.querySelectorAll('#flow-rows tr')[i].click(); return i; })()",
    )
    .unwrap();
    let (denied, _) = b
        .wait_for(
            "document.getElementById('policy-box')?.innerText.includes('Denied') && document.getElementById('policy-box').innerText",
            Duration::from_secs(2),
        )
        .unwrap();
    let denied = denied.as_str().unwrap().to_string();
    assert!(
        denied.contains("no http rule matched the request")
            && denied.contains("rules of shop/api-http"),
        "{denied}"
    );
    save(&mut b, "flow-policy.png");
    b.eval("tollgate.select(null), true").unwrap();

    // Drops ranked, HTTP endpoints with templates and quantiles.
    b.eval("document.querySelector('[data-tab=drops]').click(), true")
        .unwrap();
    let (drops, _) = b
        .wait_for(
            "document.getElementById('drop-rows').innerText",
            Duration::from_secs(2),
        )
        .unwrap();
    let drops = drops.as_str().unwrap().to_string();
    assert!(
        drops.contains("POLICY_DENIED") && drops.contains("rules of shop/api-http"),
        "{drops}"
    );
    save(&mut b, "drops.png");
    b.eval("document.querySelector('[data-tab=http]').click(), true")
        .unwrap();
    let (http, _) = b
        .wait_for(
            "document.getElementById('http-rows').innerText",
            Duration::from_secs(2),
        )
        .unwrap();
    let http = http.as_str().unwrap().to_string();
    assert!(
        http.contains("/products/{id}") && http.contains("/books/{id}") && http.contains("ms"),
        "{http}"
    );
    save(&mut b, "http.png");

    // DNS names with their IPs and the toFQDNs rule they fed.
    b.eval("document.querySelector('[data-tab=dns]').click(), true")
        .unwrap();
    let (dns, _) = b
        .wait_for(
            "document.getElementById('dns-rows').innerText",
            Duration::from_secs(2),
        )
        .unwrap();
    let dns = dns.as_str().unwrap().to_string();
    let line = |name: &str| {
        dns.lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no DNS row for {name}: {dns}"))
            .to_string()
    };
    let api = line("api.example.com");
    assert!(
        api.contains("shop/fetcher")
            && api.contains("192.0.2.10")
            && api.contains("CiliumNetworkPolicy shop/fetcher-egress egress[1]"),
        "{api}"
    );
    assert!(line("www.example.com").contains("none"), "{dns}");
    assert!(
        line("evil.example.org").contains("\t1\t"),
        "one refused query: {dns}"
    );
    save(&mut b, "dns.png");

    // The namespace view: billing's workloads and the peers that talk to them, nothing else.
    b.eval("(() => { const s = document.getElementById('ns'); s.value = 'billing'; s.dispatchEvent(new Event('change')); return true; })()")
        .unwrap();
    b.wait_for(
        "JSON.stringify(tollgate.nodes()) === JSON.stringify(['billing/ledger', 'shop/api', 'shop/crawler']) && tollgate.edges().length === 2",
        Duration::from_secs(3),
    )
    .unwrap();
    b.eval("(() => { const s = document.getElementById('ns'); s.value = ''; s.dispatchEvent(new Event('change')); return true; })()")
        .unwrap();
    b.wait_for("tollgate.nodes().length === 6", Duration::from_secs(3))
        .unwrap();

    // The overview for the README: back on the flow table with the api workload selected.
    b.eval("document.querySelector('[data-tab=flows]').click(), true")
        .unwrap();
    click_map(&mut b, "shop/api");
    wait_table(&mut b, "api's flows", |r| {
        !r.is_empty() && r.iter().all(|x| x.0 == "shop/api" || x.1 == "shop/api")
    });
    b.wait_for(
        "document.getElementById('detail').textContent.includes('Inbound')",
        Duration::from_secs(2),
    )
    .unwrap();
    save(&mut b, "map.png");
    assert!(
        b.page_errors.is_empty(),
        "the page logged errors: {:?}",
        b.page_errors
    );
    // Bounded in the browser: the table never holds more than its cap.
    assert!(b.eval("tollgate.rows() <= 500").unwrap() == true);
}
