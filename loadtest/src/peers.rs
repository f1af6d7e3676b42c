//! Configuration for the processes a scenario starts: an nginx backend that answers with a fixed body, and
//! nginx / HAProxy reverse proxies carrying `rules` L7 allow rules (method + exact path), the same rule shape as
//! the generated Tollgate policy, so the peers do comparable per-request matching work. Pure text generation.

use std::net::SocketAddr;

/// The L7 rules every proxy of a scenario enforces: GET (POST for gRPC) on `count` exact paths; load targets the
/// last one, the worst case for first-match rule lists, and the deny check asks for [`RuleSet::DENIED_PATH`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleSet {
    pub count: usize,
    /// gRPC-shaped paths (`/load.v1.Bench/CallN`) and POST instead of `/api/v1/resource-N` and GET.
    pub grpc: bool,
}

impl RuleSet {
    /// A path no rule allows: every proxy must answer it with a denial before it is measured.
    pub const DENIED_PATH: &str = "/not-in-policy";

    pub fn http(count: usize) -> Self {
        RuleSet { count, grpc: false }
    }

    pub fn method(&self) -> &'static str {
        if self.grpc { "POST" } else { "GET" }
    }

    /// The prefix shared by every rule path (also how [`config_excerpt`] recognises rule lines).
    pub fn prefix(&self) -> &'static str {
        if self.grpc {
            "/load.v1.Bench/Call"
        } else {
            "/api/v1/resource-"
        }
    }

    /// The allowed path of rule `i`.
    pub fn path(&self, i: usize) -> String {
        format!("{}{i}", self.prefix())
    }

    /// The path load runs ask for: the last rule.
    pub fn bench_path(&self) -> String {
        self.path(self.count.saturating_sub(1))
    }
}

/// The allowed path of HTTP rule `i`.
pub fn rule_path(i: usize) -> String {
    RuleSet::http(i + 1).path(i)
}

/// How the backend answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Http1,
    /// h2c prior knowledge (nginx 1.22 `listen ... http2` without TLS speaks only h2c on that port).
    H2c,
    /// h2c with `content-type: application/grpc` and a `grpc-status: 0` trailer.
    Grpc,
}

/// nginx as the backend: single process (`master_process off`) so /proc accounting covers all of it.
/// Listens on `host` at every port in `ports` (netns scenarios use a second port for the tollgate-diverted rows).
pub fn nginx_backend(
    workdir: &str,
    host: &str,
    ports: &[u16],
    body_bytes: usize,
    kind: BackendKind,
) -> String {
    let body = "x".repeat(body_bytes);
    let flags = if kind == BackendKind::Http1 {
        ""
    } else {
        " http2"
    };
    let listens: String = ports
        .iter()
        .map(|p| format!("    listen {host}:{p}{flags} reuseport;\n"))
        .collect();
    let answer = match kind {
        BackendKind::Grpc => {
            format!(
                "default_type application/grpc; add_trailer grpc-status 0 always; return 200 \"{body}\";"
            )
        }
        _ => format!("default_type text/plain; return 200 \"{body}\";"),
    };
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {workdir}/backend-error.log;\npid {workdir}/backend.pid;\n\
         events {{ worker_connections 20000; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {workdir}/b-body;\n  proxy_temp_path {workdir}/b-proxy;\n\
           \x20 fastcgi_temp_path {workdir}/b-fcgi;\n  uwsgi_temp_path {workdir}/b-uwsgi;\n  scgi_temp_path {workdir}/b-scgi;\n\
           \x20 keepalive_requests 1000000;\n  http2_max_concurrent_streams 1000;\n\
           \x20 server {{\n{listens}    location / {{ {answer} }}\n  }}\n}}\n"
    )
}

/// nginx as a peer proxy at its best for this job: one worker, upstream keep-alive (HTTP/1.1 to the backend,
/// `Connection` cleared), `rules` exact-path `location =` blocks allowing GET, everything else 403.
/// Listens on `listen`, proxies to `backend`. HTTP/1.1 only: nginx cannot speak HTTP/2 to an upstream.
pub fn nginx_peer(
    workdir: &str,
    listen: SocketAddr,
    backend: SocketAddr,
    rules: RuleSet,
) -> String {
    let mut locations = String::new();
    for i in 0..rules.count {
        locations.push_str(&format!(
            "    location = {} {{ limit_except {} {{ deny all; }} proxy_pass http://backend; }}\n",
            rules.path(i),
            rules.method()
        ));
    }
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {workdir}/peer-error.log;\npid {workdir}/peer.pid;\n\
         events {{ worker_connections 20000; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {workdir}/p-body;\n  proxy_temp_path {workdir}/p-proxy;\n\
           \x20 fastcgi_temp_path {workdir}/p-fcgi;\n  uwsgi_temp_path {workdir}/p-uwsgi;\n  scgi_temp_path {workdir}/p-scgi;\n\
           \x20 keepalive_requests 1000000;\n\
           \x20 upstream backend {{ server {backend}; keepalive 64; keepalive_requests 1000000; }}\n\
           \x20 proxy_http_version 1.1;\n  proxy_set_header Connection \"\";\n\
           \x20 server {{\n    listen {listen};\n{locations}    location / {{ return 403; }}\n  }}\n}}\n"
    )
}

/// HAProxy as a peer proxy at its best for this job: one thread mapped to `core` (the core it is pinned to),
/// server connections reused across requests (`http-reuse always`), and the rules as one ACL whose exact paths
/// are loaded from `paths_file` (written from [`haproxy_paths`]): HAProxy indexes one ACL's string patterns in a
/// tree, where one `http-request allow if { path ... }` line per rule is a linear scan that halved its rps per
/// CPU-second in a measurement here (29k against 60k). Everything else is denied. `h2` speaks h2c on both sides
/// (`proto h2`).
pub fn haproxy_peer(
    listen: SocketAddr,
    backend: SocketAddr,
    rules: RuleSet,
    core: usize,
    h2: bool,
    paths_file: &str,
) -> String {
    let proto = if h2 { " proto h2" } else { "" };
    format!(
        "global\n  nbthread 1\n  cpu-map 1/1 {core}\n  maxconn 4000\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  option http-keep-alive\n\
         frontend fe\n  bind {listen}{proto}\n\
         \x20 acl rule_paths path -f {paths_file}\n\
         \x20 http-request deny unless METH_{method} rule_paths\n  default_backend be\n\
         backend be\n  http-reuse always\n  server s1 {backend}{proto}\n",
        method = rules.method()
    )
}

/// unbound as a plain forwarder on `listen` (UDP and TCP) to `upstream`: one thread, iterator module only (no
/// DNSSEC validation, no trust anchor), no QNAME minimisation or prefetch, and nothing kept in the cache
/// (`cache-max-ttl: 0`), so every query is forwarded like the dnsmasq peer (`--cache-size=0`) and tollgate do.
/// Runs in the foreground as the invoking user, without chroot, logging to stderr.
pub fn unbound_forwarder(listen: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        "server:\n  interface: {ip}\n  port: {port}\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n\
         \x20 directory: \"\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n  verbosity: 0\n  num-threads: 1\n\
         \x20 access-control: 0.0.0.0/0 allow\n  do-not-query-localhost: no\n  module-config: \"iterator\"\n\
         \x20 auto-trust-anchor-file: \"\"\n  qname-minimisation: no\n  prefetch: no\n\
         \x20 cache-max-ttl: 0\n  cache-max-negative-ttl: 0\n\
         forward-zone:\n  name: \".\"\n  forward-addr: {up}@{up_port}\n",
        ip = listen.ip(),
        port = listen.port(),
        up = upstream.ip(),
        up_port = upstream.port(),
    )
}

/// The exact paths of `rules`, one a line: HAProxy's pattern file for [`haproxy_peer`].
pub fn haproxy_paths(rules: RuleSet) -> String {
    (0..rules.count).map(|i| rules.path(i) + "\n").collect()
}

/// Tollgate's policy with the same `rules` allow rules as the peers (method + path, Cilium L7 HTTP rules) for
/// traffic from the `app: client` pod to TCP `port` of the `app: server` pod; anything else on that port is denied
/// (403) by L7 default-deny.
pub fn tollgate_policy(port: u16, rules: RuleSet) -> String {
    let mut http = String::new();
    for i in 0..rules.count {
        http.push_str(&format!(
            "                - {{method: {}, path: \"{}\"}}\n",
            rules.method(),
            rules.path(i)
        ));
    }
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: load, namespace: default}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n\
         \x20   - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n\
         \x20     toPorts:\n\
         \x20       - ports: [{{port: \"{port}\", protocol: TCP}}]\n\
         \x20         rules:\n\
         \x20           http:\n{http}"
    )
}

/// A configuration for the report: rule lines (those naming `rule_prefix`) beyond the first two and the last are
/// folded into one comment line, so 100 rules read as their shape and count.
pub fn config_excerpt(text: &str, rule_prefix: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let rule_idx: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains(rule_prefix))
        .collect();
    let mut out = String::new();
    let folded = rule_idx.len().saturating_sub(3);
    for (i, line) in lines.iter().enumerate() {
        let pos = rule_idx.iter().position(|&r| r == i);
        match pos {
            Some(p) if p >= 2 && p + 1 < rule_idx.len() => {
                if p == 2 {
                    let indent: String = line.chars().take_while(|c| *c == ' ').collect();
                    out.push_str(&format!(
                        "{indent}# ... {folded} more rule lines of the same shape ...\n"
                    ));
                }
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Tollgate's DNS policy: the `app: client` pod may query the `app: server` pod's `port` (UDP/TCP) for `rules`
/// names (matchName), the queried `name` being the last; other names are refused.
pub fn tollgate_dns_policy(port: u16, rules: usize, name: &str) -> String {
    let mut dns = String::new();
    for i in 0..rules.saturating_sub(1) {
        dns.push_str(&format!(
            "                - {{matchName: \"host-{i}.load.test\"}}\n"
        ));
    }
    dns.push_str(&format!("                - {{matchName: \"{name}\"}}\n"));
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: load-dns, namespace: default}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: client}}}}\n  egress:\n\
         \x20   - toEndpoints: [{{matchLabels: {{app: server}}}}]\n\
         \x20     toPorts:\n\
         \x20       - ports: [{{port: \"{port}\", protocol: ANY}}]\n\
         \x20         rules:\n\
         \x20           dns:\n{dns}"
    )
}

/// Tollgate's Kafka policy: the `app: client` pod may produce to `rules` topics on the `app: server` pod's TCP
/// `port`, `topic` being the last rule; everything else on that port is denied.
pub fn tollgate_kafka_policy(port: u16, rules: usize, topic: &str) -> String {
    let mut kafka = String::new();
    for i in 0..rules.saturating_sub(1) {
        kafka.push_str(&format!(
            "                - {{role: produce, topic: topic-{i}}}\n"
        ));
    }
    kafka.push_str(&format!(
        "                - {{role: produce, topic: \"{topic}\"}}\n"
    ));
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: load-kafka, namespace: default}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n\
         \x20   - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n\
         \x20     toPorts:\n\
         \x20       - ports: [{{port: \"{port}\", protocol: TCP}}]\n\
         \x20         rules:\n\
         \x20           kafka:\n{kafka}"
    )
}

/// Tollgate's endpoints file for the netns topology's two pods.
pub fn tollgate_endpoints(client: &str, server: &str) -> String {
    format!(
        "endpoints:\n  - {{name: client, namespace: default, labels: {{app: client}}, ip: {client}}}\n\
         \x20 - {{name: server, namespace: default, labels: {{app: server}}, ip: {server}}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> (SocketAddr, SocketAddr) {
        (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        )
    }

    #[test]
    fn nginx_peer_one_worker_upstream_keepalive_and_deny_by_default() {
        let (a, b) = addrs();
        let n = nginx_peer("/w", a, b, RuleSet::http(100));
        assert_eq!(n.matches("location = /api/v1/resource-").count(), 100);
        assert_eq!(n.matches("limit_except GET { deny all; }").count(), 100);
        assert!(n.contains(&format!("location = {} ", rule_path(99))));
        assert!(n.contains("listen 127.0.0.1:1;") && n.contains("server 127.0.0.1:2;"));
        assert!(n.contains("worker_processes 1;") && n.contains("keepalive 64;"));
        assert!(
            n.contains("proxy_http_version 1.1;")
                && n.contains("proxy_set_header Connection \"\";")
        );
        assert!(n.contains("location / { return 403; }"));
        let g = nginx_peer(
            "/w",
            a,
            b,
            RuleSet {
                count: 3,
                grpc: true,
            },
        );
        assert!(g.contains("location = /load.v1.Bench/Call2 { limit_except POST"));
    }

    #[test]
    fn haproxy_peer_one_pinned_thread_reuse_and_deny_by_default() {
        let (a, b) = addrs();
        let h = haproxy_peer(a, b, RuleSet::http(100), 0, false, "/w/haproxy-paths.lst");
        assert!(h.contains("  nbthread 1\n  cpu-map 1/1 0\n"), "{h}");
        assert!(h.contains("  http-reuse always\n") && h.contains("server s1 127.0.0.1:2\n"));
        assert!(
            h.contains("\n  acl rule_paths path -f /w/haproxy-paths.lst\n"),
            "{h}"
        );
        assert!(
            h.contains("\n  http-request deny unless METH_GET rule_paths\n"),
            "{h}"
        );
        assert!(!h.contains("proto h2"));
        let paths = haproxy_paths(RuleSet::http(100));
        assert_eq!(paths.lines().count(), 100);
        assert!(
            paths.starts_with("/api/v1/resource-0\n") && paths.ends_with("/api/v1/resource-99\n")
        );
        let grpc = RuleSet {
            count: 2,
            grpc: true,
        };
        let h2 = haproxy_peer(a, b, grpc, 1, true, "/p");
        assert!(
            h2.contains("bind 127.0.0.1:1 proto h2\n")
                && h2.contains("server s1 127.0.0.1:2 proto h2\n")
        );
        assert!(h2.contains("cpu-map 1/1 1\n") && h2.contains("deny unless METH_POST rule_paths"));
        assert_eq!(
            haproxy_paths(grpc),
            "/load.v1.Bench/Call0\n/load.v1.Bench/Call1\n"
        );
    }

    #[test]
    fn backend_body_has_the_requested_size_and_protocol() {
        let b = nginx_backend("/w", "127.0.0.1", &[8080, 8090], 1024, BackendKind::Http1);
        assert!(b.contains(&format!("\"{}\"", "x".repeat(1024))));
        assert!(
            b.contains("listen 127.0.0.1:8080 reuseport;") && b.contains("listen 127.0.0.1:8090 ")
        );
        let h2 = nginx_backend("/w", "0.0.0.0", &[8080], 10, BackendKind::H2c);
        assert!(h2.contains("listen 0.0.0.0:8080 http2 reuseport;") && !h2.contains("grpc"));
        let g = nginx_backend("/w", "0.0.0.0", &[8080], 10, BackendKind::Grpc);
        assert!(g.contains("add_trailer grpc-status 0 always;") && g.contains("application/grpc"));
    }

    #[test]
    fn excerpt_folds_rule_lines_but_keeps_the_rest() {
        let (a, b) = addrs();
        let full = nginx_peer("/w", a, b, RuleSet::http(100));
        let e = config_excerpt(&full, RuleSet::http(100).prefix());
        assert!(
            e.contains("    # ... 97 more rule lines of the same shape ...\n"),
            "{e}"
        );
        assert!(
            e.contains("resource-0 {") && e.contains("resource-1 {") && e.contains("resource-99 {")
        );
        assert!(!e.contains("resource-50 {"));
        assert!(e.contains("worker_processes 1;") && e.contains("location / { return 403; }"));
        assert_eq!(config_excerpt("a\nb\n", "zzz"), "a\nb\n");
        let three = "x /p0\nx /p1\nx /p2\n";
        assert_eq!(config_excerpt(three, "/p"), three);
    }

    #[test]
    fn tollgate_policy_has_the_rules_and_is_yaml() {
        let p = tollgate_policy(8090, RuleSet::http(100));
        assert_eq!(p.matches("{method: GET, path: ").count(), 100);
        assert!(p.contains(&format!("path: \"{}\"", rule_path(99))));
        assert!(p.contains("port: \"8090\""));
        // Indentation must nest: the http list sits under rules under toPorts.
        assert!(p.contains("\n          rules:\n            http:\n                - {method"));
        let d = tollgate_dns_policy(53, 100, "backend");
        assert_eq!(d.matches("{matchName: ").count(), 100);
        assert!(
            d.contains("                - {matchName: \"backend\"}\n")
                && d.ends_with("\"backend\"}\n")
        );
        assert!(d.contains("\n          rules:\n            dns:\n                - {matchName"));
        let k = tollgate_kafka_policy(9093, 100, "load");
        assert_eq!(k.matches("{role: produce, topic: ").count(), 100);
        assert!(k.ends_with("{role: produce, topic: \"load\"}\n") && k.contains("port: \"9093\""));
        assert!(k.contains("\n          rules:\n            kafka:\n                - {role"));
        let u = unbound_forwarder(
            "169.254.1.1:5354".parse().unwrap(),
            "10.0.1.20:53".parse().unwrap(),
        );
        assert!(u.starts_with("server:\n  interface: 169.254.1.1\n  port: 5354\n"));
        assert!(u.contains("\n  cache-max-ttl: 0\n") && u.contains("\n  num-threads: 1\n"));
        assert!(u.ends_with("forward-zone:\n  name: \".\"\n  forward-addr: 10.0.1.20@53\n"));
        let e = tollgate_endpoints("10.0.1.10", "10.0.1.20");
        assert!(e.contains("ip: 10.0.1.10}") && e.contains("ip: 10.0.1.20}"));
    }
}
