//! One case of the scenario file as one real request from a real client, read back as a verdict. Each protocol's
//! denial is recognised by its own specific answer (HTTP 403, gRPC PERMISSION_DENIED, DNS REFUSED, EPERM at
//! connect(), Kafka TOPIC_AUTHORIZATION_FAILED), so a broken server or a timeout reads as an error, never as
//! "denied".

use std::process::Output;

use anyhow::{Result, bail};
use serde_yaml::Value;
use tollgate_e2e::scenario::{EbpfScenario, HTTP_PORT};

use crate::backends::{Backends, GRPC_PORT, KAFKA_PORT};

/// What the client saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied,
    /// Neither the protocol's success nor its policy denial (a step that broke).
    Error,
}

impl Verdict {
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
            Verdict::Error => "ERROR",
        }
    }
}

/// One replayed case: the protocol label, what was asked, what came back.
pub struct Outcome {
    pub protocol: &'static str,
    pub request: String,
    pub answer: String,
    pub verdict: Verdict,
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
    .trim()
    .to_string()
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

/// Sends the case's request with the client of its protocol.
pub fn replay(sc: &EbpfScenario, b: &Backends, case: &Value) -> Result<Outcome> {
    let (from, to) = (s(case, "from"), s(case, "to"));
    if !case["http"].is_null() {
        http(sc, from, to, &case["http"])
    } else if !case["grpc"].is_null() {
        grpc(sc, b, from, to, &case["grpc"])
    } else if !case["dns"].is_null() {
        dns(sc, from, to, &case["dns"])
    } else if !case["kafka"].is_null() {
        kafka(sc, from, to, &case["kafka"])
    } else if let Some(ip) = to.strip_prefix("ip:") {
        let port = case["port"].as_u64().unwrap_or(0);
        connect(sc, from, ip, port)
    } else {
        bail!("the demo has no client for case {case:?}")
    }
}

fn http(sc: &EbpfScenario, from: &str, to: &str, h: &Value) -> Result<Outcome> {
    let method = h["method"].as_str().unwrap_or("GET");
    let path = h["path"].as_str().unwrap_or("/");
    let mut args = vec!["-X".to_string(), method.to_string()];
    for (k, v) in h["headers"].as_mapping().into_iter().flatten() {
        let (k, v) = (
            k.as_str().unwrap_or_default(),
            v.as_str().unwrap_or_default(),
        );
        args.extend(["-H".to_string(), format!("{k}: {v}")]);
    }
    args.push(format!("http://{}:{HTTP_PORT}{path}", sc.pod(to).ip));
    let out = sc.curl(from, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let answer = text(&out);
    let verdict = match answer.split_whitespace().next() {
        Some("200") => Verdict::Allowed,
        Some("403") => Verdict::Denied,
        _ => Verdict::Error,
    };
    Ok(Outcome {
        protocol: "HTTP",
        request: format!("{from} -> {to} {method} {path}"),
        answer: format!("curl: {answer}"),
        verdict,
    })
}

fn grpc(sc: &EbpfScenario, b: &Backends, from: &str, to: &str, g: &Value) -> Result<Outcome> {
    let (service, method) = (s(g, "service"), s(g, "method"));
    let out = sc
        .pod(from)
        .command("python3")
        .arg(b.grpc_dir.path().join("client.py"))
        .arg(b.grpc_dir.path())
        .arg(format!("{}:{GRPC_PORT}", sc.pod(to).ip))
        .arg(method)
        .output()?;
    let answer = text(&out);
    // 7 is PERMISSION_DENIED, what the proxy answers a denied call with.
    let verdict = if answer.starts_with("OK ") {
        Verdict::Allowed
    } else if answer.starts_with("ERR 7 ") {
        Verdict::Denied
    } else {
        Verdict::Error
    };
    Ok(Outcome {
        protocol: "gRPC",
        request: format!("{from} -> {to} /{service}/{method}"),
        answer: format!("grpc client: {answer}"),
        verdict,
    })
}

fn dns(sc: &EbpfScenario, from: &str, to: &str, q: &Value) -> Result<Outcome> {
    let (name, qtype) = (s(q, "query"), q["type"].as_str().unwrap_or("A"));
    let out = sc
        .pod(from)
        .command("dig")
        .args([
            &format!("@{}", sc.pod(to).ip),
            "+time=5",
            "+tries=1",
            name,
            qtype,
        ])
        .output()?;
    let full = text(&out);
    let status = full
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("no answer");
    let answers: Vec<&str> = full
        .lines()
        .filter(|l| !l.starts_with(';') && l.contains("\tIN\t"))
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    let verdict = match status {
        "NOERROR" if !answers.is_empty() => Verdict::Allowed,
        "REFUSED" => Verdict::Denied,
        _ => Verdict::Error,
    };
    Ok(Outcome {
        protocol: "DNS",
        request: format!("{from} -> {to} {qtype} {name}"),
        answer: format!("dig: {status} {}", answers.join(" ")),
        verdict,
    })
}

/// A plain TCP connect to an outside IP (toFQDNs): the kernel refuses an IP no allowed name resolved to with EPERM.
fn connect(sc: &EbpfScenario, from: &str, ip: &str, port: u64) -> Result<Outcome> {
    let code = format!(
        "import socket\ns=socket.socket()\ns.settimeout(5)\ntry:\n s.connect(('{ip}',{port}))\n \
         s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n print('ok', s.recv(200).split(b' ')[1].decode())\n\
         except OSError as e:\n print('errno', e.errno, e.strerror)"
    );
    let out = sc
        .pod(from)
        .command("python3")
        .args(["-c", &code])
        .output()?;
    let answer = text(&out);
    let verdict = if answer == "ok 200" {
        Verdict::Allowed
    } else if answer.starts_with("errno 1 ") {
        Verdict::Denied
    } else {
        Verdict::Error
    };
    Ok(Outcome {
        protocol: "toFQDNs",
        request: format!("{from} -> {ip}:{port} TCP connect + GET /"),
        answer: format!("socket: {answer}"),
        verdict,
    })
}

/// Produces one message with confluent-kafka (librdkafka), the client the Kafka tests use.
const PRODUCE: &str = r#"
import sys, json
from confluent_kafka import Producer
errors = []
def report(err, msg):
    if err is not None:
        errors.append(err.name())
p = Producer({"bootstrap.servers": sys.argv[1], "client.id": "w1", "message.timeout.ms": 10000})
p.produce(sys.argv[2], value=b"demo event", callback=report)
left = p.flush(15)
print("delivered" if not errors and left == 0 else "failed " + ",".join(errors or ["timeout"]))
"#;

fn kafka(sc: &EbpfScenario, from: &str, to: &str, k: &Value) -> Result<Outcome> {
    let api = s(k, "api_key");
    let topics: Vec<&str> = k["topics"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let [topic] = topics[..] else {
        bail!("the demo's Kafka cases produce to exactly one topic, got {topics:?}")
    };
    if api != "produce" {
        bail!("the demo's Kafka client only produces (case asks for {api})");
    }
    let broker = format!("{}:{KAFKA_PORT}", sc.pod(to).ip);
    let out = sc
        .pod(from)
        .command("python3")
        .args(["-c", PRODUCE, &broker, topic])
        .output()?;
    let answer = text(&out);
    let last = answer.lines().last().unwrap_or_default().to_string();
    let verdict = match last.as_str() {
        "delivered" => Verdict::Allowed,
        "failed TOPIC_AUTHORIZATION_FAILED" => Verdict::Denied,
        _ => Verdict::Error,
    };
    Ok(Outcome {
        protocol: "Kafka",
        request: format!("{from} -> {to} produce to {topic}"),
        answer: format!("confluent-kafka: {last}"),
        verdict,
    })
}
