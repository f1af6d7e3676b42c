//! `authentication: {mode: required}` end to end, as root: a port with no L7 rules whose allow rule requires mutual
//! authentication is still diverted to the proxy by the eBPF layer, and a plain connection to it is refused with an
//! AUTH_REQUIRED flow record (only the node-to-node mTLS tunnel satisfies such a rule; `mtls_e2e.rs` tests it). A
//! port of another rule without authentication keeps working.

use tollgate_e2e::scenario::{CaseFile, EbpfScenario, H2C_PORT, HTTP_PORT};

const CASE: &str = "name: auth-required
policies:
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: mtls-only, namespace: prod}
    spec:
      endpointSelector: {matchLabels: {app: api}}
      ingress:
        - fromEndpoints: [{matchLabels: {app: web}}]
          authentication: {mode: required}
          toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]
        - fromEndpoints: [{matchLabels: {app: web}}]
          toPorts:
            - ports: [{port: \"8081\", protocol: TCP}]
              rules: {http: [{method: GET}]}
endpoints:
  - {name: web, namespace: prod, labels: {app: web}, ip: 10.0.7.10}
  - {name: api, namespace: prod, labels: {app: api}, ip: 10.0.7.20}
";

#[test]
fn plain_connection_to_an_auth_required_port_is_refused_with_auth_required() {
    tollgate_e2e::require_root();
    let case = CaseFile::parse("auth_e2e.rs", CASE).expect("case");
    let mut sc = EbpfScenario::new(case).expect("scenario");
    sc.start_proxy().expect("tollgate");
    let before = sc.flows().len();
    let out = sc
        .curl("prod/web", &[&format!("http://10.0.7.20:{HTTP_PORT}/")])
        .expect("curl");
    let status = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        status.starts_with("000"),
        "no HTTP response on the auth-required port: {status} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = sc
        .wait_flow(before, |f| f["drop_reason"] == "AUTH_REQUIRED")
        .unwrap_or_else(|| panic!("no AUTH_REQUIRED record: {:#?}", sc.flows()));
    assert_eq!(rec["verdict"], "DROPPED", "{rec}");
    assert_eq!(rec["destination"]["port"], HTTP_PORT, "{rec}");
    assert!(
        rec["policy"]
            .as_str()
            .unwrap()
            .contains("authentication.mode: required"),
        "{rec}"
    );
    // h2c (prior knowledge) port 8081 of the plain rule: allowed through the proxy's HTTP pipeline.
    let ok = sc
        .curl(
            "prod/web",
            &[
                "--http2-prior-knowledge",
                &format!("http://10.0.7.20:{H2C_PORT}/"),
            ],
        )
        .expect("curl");
    assert!(
        String::from_utf8_lossy(&ok.stdout).starts_with("200"),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    sc.assert_proxy_running().expect("proxy alive");
}
