//! Conformance cases (format: `policy-model/conformance/README.md`): parse a case file and run every case through the
//! real engine. Pure: the caller reads the file and prints the results.
//!
//! Decisions: a policy in a case file that fails validation or compilation makes the whole file an error (the
//! format has no way to expect a rejection, so running the cases against a partial policy set would mislead).
//! `dns_cache` entries are inserted node-wide at [`CASE_TIME`] and queried at the same instant.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_yaml::Value;

use crate::engine::PolicyEngine;
use crate::error::PolicyError;
use crate::fqdn::FqdnCache;
use crate::identity::{Endpoint, EndpointTable};
use crate::kafka::api_key_by_name;
use crate::load::load_policy_value;
use crate::verdict::{Decision, DnsQuery, Flow, HttpRequest, KafkaRequest, Protocol};

/// The instant cases are evaluated at (cache entries are fresh).
pub const CASE_TIME: SystemTime = SystemTime::UNIX_EPOCH;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    policies: Vec<Value>,
    #[serde(default)]
    endpoints: Vec<Endpoint>,
    #[serde(default)]
    dns_cache: Vec<DnsCacheEntry>,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DnsCacheEntry {
    name: String,
    ips: Vec<IpAddr>,
    #[serde(default = "default_ttl")]
    ttl: u64,
}

fn default_ttl() -> u64 {
    300
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Allow,
    Deny,
}

impl From<Expect> for Decision {
    fn from(e: Expect) -> Self {
        match e {
            Expect::Allow => Decision::Allow,
            Expect::Deny => Decision::Deny,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    from: String,
    to: String,
    port: u16,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    http: Option<HttpCase>,
    #[serde(default)]
    grpc: Option<GrpcCase>,
    #[serde(default)]
    kafka: Option<KafkaCase>,
    #[serde(default)]
    dns: Option<DnsCase>,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpCase {
    #[serde(default = "default_method")]
    method: String,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn default_method() -> String {
    "GET".into()
}
fn default_path() -> String {
    "/".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrpcCase {
    service: String,
    method: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KafkaCase {
    api_key: Value,
    #[serde(default)]
    api_version: i16,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    topics: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DnsCase {
    query: String,
    #[serde(default, rename = "type")]
    qtype: Option<Value>,
}

/// The outcome of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    /// 0-based index in `cases`.
    pub index: usize,
    pub from: String,
    pub to: String,
    pub port: u16,
    /// The case's description, or a generated one (`GET /path`, `kafka produce [orders]`, `dns x A`, `L4`).
    pub description: String,
    pub expected: Decision,
    pub got: Decision,
    /// The engine's reason (Display of [`crate::Reason`]).
    pub reason: String,
    pub passed: bool,
}

/// All results of one file.
#[derive(Debug, Clone)]
pub struct FileRun {
    pub name: String,
    pub results: Vec<CaseResult>,
}

impl FileRun {
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed).count()
    }
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }
}

fn qtype(v: &Option<Value>) -> Result<u16, String> {
    Ok(match v {
        None => 1,
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .ok_or("type must be 0-65535")?,
        Some(Value::String(s)) => match s.to_ascii_uppercase().as_str() {
            "A" => 1,
            "NS" => 2,
            "CNAME" => 5,
            "SOA" => 6,
            "PTR" => 12,
            "MX" => 15,
            "TXT" => 16,
            "AAAA" => 28,
            "SRV" => 33,
            "HTTPS" => 65,
            "ANY" => 255,
            other => return Err(format!("unknown DNS type {other:?}")),
        },
        Some(_) => return Err("type must be a name (A, AAAA, ...) or a number".into()),
    })
}

fn kafka_key(v: &Value) -> Result<i16, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .and_then(|n| i16::try_from(n).ok())
            .ok_or_else(|| format!("api_key {n} out of range")),
        Value::String(s) => {
            api_key_by_name(s).ok_or_else(|| format!("unknown Kafka API key {s:?}"))
        }
        _ => Err("api_key must be a name or a number".into()),
    }
}

/// Parse and run a case file. `file_name` is used in errors only.
pub fn run_file(file_name: &str, yaml: &str) -> Result<FileRun, PolicyError> {
    let file: CaseFile = serde_yaml::from_str(yaml).map_err(|e| {
        let (path, reason) = crate::error::split_serde_error(&e.to_string());
        PolicyError::new(file_name, 0, path, reason)
    })?;
    let _ = &file.description;
    let endpoints = EndpointTable::new(file.endpoints).map_err(|mut e| {
        e.file = file_name.to_string();
        e
    })?;
    let mut policies = Vec::new();
    for (i, v) in file.policies.iter().enumerate() {
        let p = load_policy_value(file_name, i, v).map_err(|mut e| {
            e.field_path = format!("policies[{i}].{}", e.field_path);
            e
        })?;
        policies.push(p);
    }
    let (engine, errors) = PolicyEngine::compile(policies, &endpoints);
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    let mut cache = FqdnCache::default();
    for e in &file.dns_cache {
        cache.insert(None, &e.name, &e.ips, Duration::from_secs(e.ttl), CASE_TIME);
    }
    let mut results = Vec::new();
    for (index, case) in file.cases.iter().enumerate() {
        let err = |field: &str, reason: String| {
            PolicyError::new(file_name, 0, format!("cases[{index}].{field}"), reason)
        };
        let from = resolve(&endpoints, &case.from).map_err(|r| err("from", r))?;
        let to = resolve(&endpoints, &case.to).map_err(|r| err("to", r))?;
        let protocol = match case
            .protocol
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            Some(other) => {
                return Err(err(
                    "protocol",
                    format!("unknown protocol {other:?}; use TCP, UDP or SCTP"),
                ));
            }
        };
        let flow = engine.flow_with_names(from, to, case.port, protocol, &cache, CASE_TIME);
        let l7_parts = [
            case.http.is_some(),
            case.grpc.is_some(),
            case.kafka.is_some(),
            case.dns.is_some(),
        ];
        if l7_parts.iter().filter(|x| **x).count() > 1 {
            return Err(err(
                "(case)",
                "give at most one of http, grpc, kafka, dns".into(),
            ));
        }
        let (got, reason, generated) =
            evaluate(&engine, &flow, case, &cache).map_err(|(f, r)| err(f, r))?;
        let expected: Decision = case.expect.into();
        results.push(CaseResult {
            index,
            from: case.from.clone(),
            to: case.to.clone(),
            port: case.port,
            description: case.description.clone().unwrap_or(generated),
            expected,
            got,
            reason,
            passed: got == expected,
        });
    }
    Ok(FileRun {
        name: file.name,
        results,
    })
}

fn evaluate(
    engine: &PolicyEngine,
    flow: &Flow,
    case: &Case,
    cache: &FqdnCache,
) -> Result<(Decision, String, String), (&'static str, String)> {
    if let Some(h) = &case.http {
        let headers: Vec<(&str, &str)> = h
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let v = engine.http(
            flow,
            &HttpRequest {
                method: &h.method,
                path: &h.path,
                host: &h.host,
                headers: &headers,
            },
        );
        return Ok((
            v.decision,
            v.reason.to_string(),
            format!("{} {}", h.method, h.path),
        ));
    }
    if let Some(g) = &case.grpc {
        let path = format!("/{}/{}", g.service, g.method);
        let v = engine.http(
            flow,
            &HttpRequest {
                method: "POST",
                path: &path,
                host: "",
                headers: &[("content-type", "application/grpc")],
            },
        );
        return Ok((
            v.decision,
            v.reason.to_string(),
            format!("grpc {}", &path[1..]),
        ));
    }
    if let Some(k) = &case.kafka {
        let api_key = kafka_key(&k.api_key).map_err(|r| ("kafka.api_key", r))?;
        let topics: Vec<&str> = k.topics.iter().map(String::as_str).collect();
        let v = engine.kafka(
            flow,
            &KafkaRequest {
                api_key,
                api_version: k.api_version,
                client_id: k.client_id.as_deref(),
                topics: &topics,
            },
        );
        return Ok((
            v.decision,
            v.reason.to_string(),
            format!("kafka key {api_key} {topics:?}"),
        ));
    }
    if let Some(d) = &case.dns {
        let qtype = qtype(&d.qtype).map_err(|r| ("dns.type", r))?;
        let v = engine.dns(
            flow,
            &DnsQuery {
                name: &d.query,
                qtype,
            },
        );
        return Ok((
            v.decision,
            v.reason.to_string(),
            format!("dns {} type {qtype}", d.query),
        ));
    }
    let v = engine.connection(flow, cache, CASE_TIME);
    Ok((v.decision, v.reason.to_string(), "L3/L4".to_string()))
}

/// `ns/name` -> the endpoint's IP; `ip:A.B.C.D` -> that address.
fn resolve(endpoints: &EndpointTable, s: &str) -> Result<IpAddr, String> {
    if let Some(ip) = s.strip_prefix("ip:") {
        return ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IP address"));
    }
    let (ns, name) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is neither `namespace/name` nor `ip:ADDRESS`"))?;
    endpoints
        .by_name(ns, name)
        .map(|e| e.ip)
        .ok_or_else(|| format!("no endpoint {s} in `endpoints`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "name: t\npolicies:\n  - apiVersion: cilium.io/v2\n    kind: CiliumNetworkPolicy\n    \
        metadata: {name: p, namespace: prod}\n    spec:\n      endpointSelector: {matchLabels: {app: api}}\n      ingress:\n      \
        - fromEndpoints: [{matchLabels: {app: web}}]\n        toPorts: [{ports: [{port: \"80\"}], rules: {http: [{method: GET}]}}]\n\
        endpoints:\n  - {name: web, namespace: prod, labels: {app: web}, ip: 10.0.0.1}\n  - {name: api, namespace: prod, labels: {app: api}, ip: 10.0.0.2}\n\
        cases:\n";

    fn run(cases: &str) -> Result<FileRun, PolicyError> {
        run_file("t.yaml", &format!("{FILE}{cases}"))
    }

    #[test]
    fn results_carry_verdict_reason_and_pass_flag() {
        let r = run("  - {from: prod/web, to: prod/api, port: 80, http: {method: GET, path: /}, expect: allow}\n  \
                     - {from: prod/web, to: prod/api, port: 80, http: {method: PUT, path: /}, expect: allow}\n  \
                     - {from: \"ip:198.51.100.1\", to: prod/api, port: 80, expect: deny, description: outside}\n")
        .expect("runs");
        assert_eq!(r.name, "t");
        assert_eq!((r.passed(), r.failed()), (2, 1));
        assert!(r.results[0].passed);
        assert_eq!(
            r.results[0].reason,
            "allowed by CiliumNetworkPolicy prod/p ingress[0] l7[0]"
        );
        assert!(!r.results[1].passed);
        assert_eq!(r.results[1].got, Decision::Deny);
        assert_eq!(r.results[1].description, "PUT /");
        assert_eq!(r.results[2].description, "outside");
        assert!(
            r.results[2].reason.contains("no ingress rule matched"),
            "{}",
            r.results[2].reason
        );
    }

    #[test]
    fn bad_files_are_errors_naming_the_field() {
        let e = run("  - {from: prod/nobody, to: prod/api, port: 80, expect: allow}\n")
            .expect_err("unknown endpoint");
        assert_eq!(e.field_path, "cases[0].from");
        let e = run("  - {from: prod/web, to: prod/api, port: 80, expect: maybe}\n")
            .expect_err("bad expect");
        assert!(e.field_path.starts_with("cases[0]"), "{e}");
        let bad_policy = FILE.replace("method: GET", "method: \"(\"");
        let e = run_file(
            "t.yaml",
            &format!("{bad_policy}  - {{from: prod/web, to: prod/api, port: 80, expect: allow}}\n"),
        )
        .expect_err("bad policy");
        assert_eq!(
            e.field_path,
            "policies[0].spec.ingress[0].toPorts[0].rules.http[0].method"
        );
    }
}
