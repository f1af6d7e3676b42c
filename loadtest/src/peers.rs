//! Configuration for the processes a scenario starts: an nginx backend that answers with a fixed body, and
//! nginx / HAProxy reverse proxies carrying `rules` L7 allow rules (method + exact path), the same rule shape as
//! the generated Tollgate policy, so the peers do comparable per-request matching work. Pure text generation.

use std::net::SocketAddr;

/// The allowed path of rule `i`; load runs target the last rule, the worst case for first-match lists.
pub fn rule_path(i: usize) -> String {
    format!("/api/v1/resource-{i}")
}

/// nginx as the backend: single process (`master_process off`) so /proc accounting covers all of it.
/// Listens on `host` at every port in `ports` (netns scenarios use a second port for the tollgate-diverted rows).
pub fn nginx_backend(workdir: &str, host: &str, ports: &[u16], body_bytes: usize) -> String {
    let body = "x".repeat(body_bytes);
    let listens: String = ports
        .iter()
        .map(|p| format!("    listen {host}:{p} reuseport;\n"))
        .collect();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {workdir}/backend-error.log;\npid {workdir}/backend.pid;\n\
         events {{ worker_connections 20000; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {workdir}/b-body;\n  proxy_temp_path {workdir}/b-proxy;\n\
           fastcgi_temp_path {workdir}/b-fcgi;\n  uwsgi_temp_path {workdir}/b-uwsgi;\n  scgi_temp_path {workdir}/b-scgi;\n\
           keepalive_requests 1000000;\n\
           server {{\n{listens}    location / {{ default_type text/plain; return 200 \"{body}\"; }}\n  }}\n}}\n"
    )
}

/// nginx as a peer proxy: `rules` exact-path locations allowing GET to the backend, everything else 403.
/// Listens on `listen`, proxies to `backend`.
pub fn nginx_peer(workdir: &str, listen: SocketAddr, backend: SocketAddr, rules: usize) -> String {
    let mut locations = String::new();
    for i in 0..rules {
        locations.push_str(&format!(
            "    location = {} {{ limit_except GET {{ deny all; }} proxy_pass http://backend; }}\n",
            rule_path(i)
        ));
    }
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {workdir}/peer-error.log;\npid {workdir}/peer.pid;\n\
         events {{ worker_connections 20000; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {workdir}/p-body;\n  proxy_temp_path {workdir}/p-proxy;\n\
           fastcgi_temp_path {workdir}/p-fcgi;\n  uwsgi_temp_path {workdir}/p-uwsgi;\n  scgi_temp_path {workdir}/p-scgi;\n\
           keepalive_requests 1000000;\n\
           upstream backend {{ server {backend}; keepalive 64; }}\n\
           proxy_http_version 1.1;\n  proxy_set_header Connection \"\";\n\
           server {{\n    listen {listen};\n{locations}    location / {{ return 403; }}\n  }}\n}}\n"
    )
}

/// HAProxy as a peer proxy: `rules` ACLs (method GET and exact path), one thread, deny by default.
pub fn haproxy_peer(listen: SocketAddr, backend: SocketAddr, rules: usize) -> String {
    let mut acls = String::new();
    for i in 0..rules {
        acls.push_str(&format!(
            "  http-request allow if METH_GET {{ path {} }}\n",
            rule_path(i)
        ));
    }
    format!(
        "global\n  nbthread 1\n  maxconn 4000\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  option http-keep-alive\n\
         frontend fe\n  bind {listen}\n{acls}  http-request deny\n  default_backend be\n\
         backend be\n  http-reuse always\n  server s1 {backend}\n"
    )
}

/// Tollgate's policy with the same `rules` allow rules as the peers (method GET + path, Cilium L7 HTTP rules) for
/// traffic from the `app: client` pod to TCP `port` of the `app: server` pod; anything else on that port is denied
/// (403) by L7 default-deny.
pub fn tollgate_policy(port: u16, rules: usize) -> String {
    let mut http = String::new();
    for i in 0..rules {
        http.push_str(&format!(
            "                - {{method: GET, path: \"{}\"}}\n",
            rule_path(i)
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

    #[test]
    fn peers_carry_the_requested_number_of_rules() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let n = nginx_peer("/w", a, b, 100);
        assert_eq!(n.matches("location = /api/v1/resource-").count(), 100);
        assert!(n.contains(&format!("location = {} ", rule_path(99))));
        assert!(n.contains("listen 127.0.0.1:1;") && n.contains("server 127.0.0.1:2;"));
        let h = haproxy_peer(a, b, 100);
        assert_eq!(h.matches("http-request allow if METH_GET").count(), 100);
        assert!(h.contains("server s1 127.0.0.1:2"));
    }

    #[test]
    fn backend_body_has_the_requested_size() {
        let b = nginx_backend("/w", "127.0.0.1", &[8080, 8090], 1024);
        assert!(b.contains(&format!("\"{}\"", "x".repeat(1024))));
        assert!(b.contains("listen 127.0.0.1:8080 ") && b.contains("listen 127.0.0.1:8090 "));
    }

    #[test]
    fn tollgate_policy_has_the_rules_and_is_yaml() {
        let p = tollgate_policy(8090, 100);
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
        let e = tollgate_endpoints("10.0.1.10", "10.0.1.20");
        assert!(e.contains("ip: 10.0.1.10}") && e.contains("ip: 10.0.1.20}"));
    }
}
