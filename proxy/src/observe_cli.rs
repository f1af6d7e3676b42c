//! `tollgate observe`: a `hubble observe`-style client of the Observer API. Flags become one whitelist
//! `FlowFilter` (pure, [`ObserveArgs::request`]); flows are printed compact (one line), as JSON (proto field
//! names, one object per line) or as a table.

use clap::{Args, ValueEnum};
use serde_json::{Map, Value, json};

use crate::flow_filter::verdict_by_name;
use crate::hubble::flow::{
    DropReason, Endpoint, Flow, FlowFilter, FlowType, L7FlowType, TrafficDirection, Verdict,
    layer4, layer7,
};
use crate::hubble::observer::{
    GetFlowsRequest, GetFlowsResponse, get_flows_response, observer_client::ObserverClient,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Compact,
    Json,
    Table,
}

/// `tollgate observe`
#[derive(Debug, Clone, Args)]
pub struct ObserveArgs {
    /// Observer API address (`tollgate run --observer-listen`).
    #[arg(long, default_value = "127.0.0.1:4245", env = "TOLLGATE_SERVER")]
    pub server: String,
    /// FORWARDED, DROPPED or ERROR (repeat for several).
    #[arg(long)]
    pub verdict: Vec<String>,
    /// tcp, udp, http, dns or kafka (repeat for several).
    #[arg(long)]
    pub protocol: Vec<String>,
    /// Source label selector, e.g. `app=client` or `k8s:app=client,tier=web` (all terms must be present).
    #[arg(long)]
    pub from_label: Vec<String>,
    /// Destination label selector.
    #[arg(long)]
    pub to_label: Vec<String>,
    /// Flows from or to pods in this namespace.
    #[arg(long)]
    pub namespace: Vec<String>,
    /// Flows from or to this pod: `[namespace/]name-prefix`.
    #[arg(long)]
    pub pod: Vec<String>,
    /// HTTP status code or class (`403`, `5+`).
    #[arg(long)]
    pub http_status: Vec<String>,
    /// How many past flows to show (default 20; with --follow default 0: only new flows).
    #[arg(long)]
    pub last: Option<u64>,
    /// Keep streaming new flows as they happen.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "compact")]
    pub output: Output,
}

impl ObserveArgs {
    /// The request these flags mean. Source/destination flags that name either side (`--namespace`, `--pod`)
    /// become two filters (from X, to X), as in Hubble; the other flags are the same in both.
    pub fn request(&self) -> Result<GetFlowsRequest, String> {
        let verdict = self
            .verdict
            .iter()
            .map(|v| {
                verdict_by_name(v)
                    .map(|v| v as i32)
                    .ok_or_else(|| format!("--verdict {v}: use FORWARDED, DROPPED or ERROR"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let base = FlowFilter {
            verdict,
            protocol: self.protocol.clone(),
            source_label: self.from_label.clone(),
            destination_label: self.to_label.clone(),
            http_status_code: self.http_status.clone(),
            ..Default::default()
        };
        let either: Vec<String> = self
            .namespace
            .iter()
            .map(|ns| format!("{ns}/"))
            .chain(self.pod.iter().cloned())
            .collect();
        let whitelist = if either.is_empty() {
            vec![base]
        } else {
            vec![
                FlowFilter {
                    source_pod: either.clone(),
                    ..base.clone()
                },
                FlowFilter {
                    destination_pod: either,
                    ..base
                },
            ]
        };
        Ok(GetFlowsRequest {
            number: self.last.unwrap_or(if self.follow { 0 } else { 20 }),
            follow: self.follow,
            whitelist,
            ..Default::default()
        })
    }
}

/// Runs the command; returns once the stream ends (or never, with --follow).
pub async fn run(args: ObserveArgs) -> anyhow::Result<()> {
    let req = args.request().map_err(anyhow::Error::msg)?;
    let url = if args.server.contains("://") {
        args.server.clone()
    } else {
        format!("http://{}", args.server)
    };
    let mut client = ObserverClient::connect(url.clone()).await.map_err(|e| {
        anyhow::anyhow!("cannot reach the observer at {url}: {e}; is `tollgate run` up with --observer-listen, or pass --server")
    })?;
    let mut stream = client
        .get_flows(req)
        .await
        .map_err(|s| anyhow::anyhow!("GetFlows failed: {}", s.message()))?
        .into_inner();
    if args.output == Output::Table {
        println!("{}", table_header());
    }
    while let Some(resp) = stream
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("flow stream broke: {}", s.message()))?
    {
        if let Some(line) = render(&resp, args.output) {
            println!("{line}");
        }
    }
    Ok(())
}

pub fn render(resp: &GetFlowsResponse, output: Output) -> Option<String> {
    let Some(get_flows_response::ResponseTypes::Flow(f)) = &resp.response_types else {
        return None;
    };
    Some(match output {
        Output::Compact => compact(f),
        Output::Json => json_response(resp, f).to_string(),
        Output::Table => table_row(f),
    })
}

pub(crate) fn time(f: &Flow) -> String {
    f.time
        .as_ref()
        .map(|t| {
            let st = std::time::UNIX_EPOCH
                + std::time::Duration::new(
                    u64::try_from(t.seconds).unwrap_or(0),
                    u32::try_from(t.nanos).unwrap_or(0),
                );
            crate::flow::rfc3339(st)
        })
        .unwrap_or_default()
}

fn side(ep: Option<&Endpoint>, ip: &str, port: Option<u32>) -> String {
    let who = match ep {
        Some(e) if !e.pod_name.is_empty() => format!("{}/{}", e.namespace, e.pod_name),
        _ => ip.to_string(),
    };
    match port {
        Some(p) => format!("{who}:{p}"),
        None => who,
    }
}

fn ports(f: &Flow) -> (Option<u32>, Option<u32>, &'static str) {
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(t)) => (Some(t.source_port), Some(t.destination_port), "TCP"),
        Some(layer4::Protocol::Udp(u)) => (Some(u.source_port), Some(u.destination_port), "UDP"),
        None => (None, None, ""),
    }
}

/// The flow's `Summary` (Cilium's wording, filled by `hubble::summary`), recomputed for flows from servers
/// that leave it empty.
pub fn summary(f: &Flow) -> String {
    if f.summary.is_empty() {
        crate::hubble::summary(f)
    } else {
        f.summary.clone()
    }
}

fn verdict_name(v: i32) -> &'static str {
    Verdict::try_from(v).map_or("UNKNOWN", |v| v.as_str_name())
}

fn endpoints(f: &Flow) -> (String, String) {
    let (sp, dp, _) = ports(f);
    let ip = f.ip.clone().unwrap_or_default();
    (
        side(f.source.as_ref(), &ip.source, sp),
        side(f.destination.as_ref(), &ip.destination, dp),
    )
}

/// One line: time, client -> server (`<-` for replies, `<>` when the server did not say), summary, verdict and the
/// deciding policy; policy-verdict events also name the policies, as `hubble observe --print-policy-names` does.
pub fn compact(f: &Flow) -> String {
    let (mut src, mut dst) = endpoints(f);
    let arrow = match f.is_reply {
        None => "<>",
        Some(false) => "->",
        Some(true) => {
            // A reply travels server -> client; show it on the client's line the other way round.
            std::mem::swap(&mut src, &mut dst);
            "<-"
        }
    };
    let mut verdict = verdict_name(f.verdict).to_string();
    if let Ok(r) = DropReason::try_from(f.drop_reason_desc)
        && r != DropReason::Unknown
    {
        verdict = format!("{verdict} ({})", r.as_str_name());
    }
    let mut line = format!("{} {src} {arrow} {dst} {} {verdict}", time(f), summary(f));
    let names = policy_names(f);
    if !names.is_empty() {
        line.push_str(&format!(" policies: {}", names.join(", ")));
    }
    if !f.tollgate_peer_spiffe_id.is_empty() {
        line.push_str(&format!(" mtls: {}", f.tollgate_peer_spiffe_id));
    }
    if !f.tollgate_policy.is_empty() {
        line.push_str(&format!(" policy: {}", f.tollgate_policy));
    }
    line
}

/// `kind:namespace/name` of the policies a policy-verdict event names (allowing and denying, both directions).
fn policy_names(f: &Flow) -> Vec<String> {
    if f.event_type.as_ref().map(|e| e.r#type) != Some(crate::hubble::event_type::POLICY_VERDICT) {
        return Vec::new();
    }
    [
        &f.ingress_allowed_by,
        &f.egress_allowed_by,
        &f.ingress_denied_by,
        &f.egress_denied_by,
    ]
    .into_iter()
    .flatten()
    .map(|p| match p.namespace.as_str() {
        "" => format!("{}:{}", p.kind, p.name),
        ns => format!("{}:{ns}/{}", p.kind, p.name),
    })
    .collect()
}

fn table_header() -> String {
    format!(
        "{:<31} {:<28} {:<28} {:<10} {:<9} SUMMARY",
        "TIME", "SOURCE", "DESTINATION", "TYPE", "VERDICT"
    )
}

fn table_row(f: &Flow) -> String {
    let (src, dst) = endpoints(f);
    let ty = match f.l7.as_ref() {
        Some(l) => format!(
            "{}-{}",
            match &l.record {
                Some(layer7::Record::Http(_)) => "http",
                Some(layer7::Record::Dns(_)) => "dns",
                Some(layer7::Record::Kafka(_)) => "kafka",
                None => "l7",
            },
            L7FlowType::try_from(l.r#type)
                .map_or("?", |t| t.as_str_name())
                .to_ascii_lowercase()
        ),
        None if f.event_type.as_ref().map(|e| e.r#type)
            == Some(crate::hubble::event_type::POLICY_VERDICT) =>
        {
            "policy-verdict".to_string()
        }
        None => FlowType::try_from(f.r#type)
            .map_or("?", |t| t.as_str_name())
            .to_string(),
    };
    format!(
        "{:<31} {:<28} {:<28} {:<10} {:<9} {}",
        time(f),
        src,
        dst,
        ty,
        verdict_name(f.verdict),
        summary(f)
    )
}

fn endpoint_json(e: &Endpoint) -> Value {
    let mut m = Map::new();
    m.insert("ID".into(), json!(e.id));
    m.insert("identity".into(), json!(e.identity));
    if !e.namespace.is_empty() {
        m.insert("namespace".into(), json!(e.namespace));
    }
    if !e.labels.is_empty() {
        m.insert("labels".into(), json!(e.labels));
    }
    if !e.pod_name.is_empty() {
        m.insert("pod_name".into(), json!(e.pod_name));
    }
    Value::Object(m)
}

/// The flow as JSON with the proto field names and enum names (the shape `hubble observe -o json` prints).
pub fn flow_json(f: &Flow) -> Value {
    let mut m = Map::new();
    m.insert("time".into(), json!(time(f)));
    m.insert("uuid".into(), json!(f.uuid));
    m.insert("verdict".into(), json!(verdict_name(f.verdict)));
    if let Ok(r) = DropReason::try_from(f.drop_reason_desc)
        && r != DropReason::Unknown
    {
        m.insert("drop_reason_desc".into(), json!(r.as_str_name()));
    }
    if let Some(ip) = &f.ip {
        m.insert(
            "IP".into(),
            json!({"source": ip.source, "destination": ip.destination,
                   "ipVersion": crate::hubble::flow::IpVersion::try_from(ip.ip_version).map_or("IP_NOT_USED", |v| v.as_str_name())}),
        );
    }
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(t)) => {
            m.insert("l4".into(), json!({"TCP": {"source_port": t.source_port, "destination_port": t.destination_port}}));
        }
        Some(layer4::Protocol::Udp(u)) => {
            m.insert("l4".into(), json!({"UDP": {"source_port": u.source_port, "destination_port": u.destination_port}}));
        }
        None => {}
    }
    if let Some(e) = &f.source {
        m.insert("source".into(), endpoint_json(e));
    }
    if let Some(e) = &f.destination {
        m.insert("destination".into(), endpoint_json(e));
    }
    m.insert(
        "Type".into(),
        json!(FlowType::try_from(f.r#type).map_or("UNKNOWN_TYPE", |t| t.as_str_name())),
    );
    m.insert("node_name".into(), json!(f.node_name));
    if let Some(l7) = &f.l7 {
        let mut l = Map::new();
        l.insert(
            "type".into(),
            json!(L7FlowType::try_from(l7.r#type).map_or("UNKNOWN_L7_TYPE", |t| t.as_str_name())),
        );
        l.insert("latency_ns".into(), json!(l7.latency_ns.to_string()));
        if let Some((key, value)) = l7_record_json(l7.record.as_ref()) {
            l.insert(key.into(), value);
        }
        m.insert("l7".into(), Value::Object(l));
    }
    if let Some(ev) = &f.event_type {
        m.insert(
            "event_type".into(),
            json!({"type": ev.r#type, "sub_type": ev.sub_type}),
        );
    }
    if let Some(r) = f.is_reply {
        m.insert("is_reply".into(), json!(r));
    }
    if !f.node_labels.is_empty() {
        m.insert("node_labels".into(), json!(f.node_labels));
    }
    if let Some(id) = f
        .trace_context
        .as_ref()
        .and_then(|t| t.parent.as_ref())
        .map(|p| p.trace_id.as_str())
    {
        m.insert("trace_context".into(), json!({"parent": {"trace_id": id}}));
    }
    for (key, list) in [
        ("egress_allowed_by", &f.egress_allowed_by),
        ("ingress_allowed_by", &f.ingress_allowed_by),
        ("egress_denied_by", &f.egress_denied_by),
        ("ingress_denied_by", &f.ingress_denied_by),
    ] {
        if !list.is_empty() {
            let v: Vec<Value> = list
                .iter()
                .map(|p| json!({"name": p.name, "namespace": p.namespace, "labels": p.labels, "revision": p.revision.to_string(), "kind": p.kind}))
                .collect();
            m.insert(key.into(), json!(v));
        }
    }
    if !f.summary.is_empty() {
        m.insert("Summary".into(), json!(f.summary));
    }
    m.insert(
        "traffic_direction".into(),
        json!(
            TrafficDirection::try_from(f.traffic_direction)
                .map_or("TRAFFIC_DIRECTION_UNKNOWN", |d| d.as_str_name())
        ),
    );
    if !f.tollgate_policy.is_empty() {
        m.insert("tollgate_policy".into(), json!(f.tollgate_policy));
    }
    if f.auth_type != 0 {
        m.insert(
            "auth_type".into(),
            json!(
                crate::hubble::flow::AuthType::try_from(f.auth_type)
                    .map_or("AUTH_TYPE_UNKNOWN", |a| a.as_str_name())
            ),
        );
    }
    if !f.tollgate_peer_spiffe_id.is_empty() {
        m.insert(
            "tollgate_peer_spiffe_id".into(),
            json!(f.tollgate_peer_spiffe_id),
        );
    }
    Value::Object(m)
}

/// `"http"` / `"dns"` / `"kafka"` and the record in proto field names.
fn l7_record_json(r: Option<&layer7::Record>) -> Option<(&'static str, Value)> {
    Some(match r? {
        layer7::Record::Http(h) => {
            let headers: Vec<Value> = h
                .headers
                .iter()
                .map(|x| json!({"key": x.key, "value": x.value}))
                .collect();
            (
                "http",
                json!({"code": h.code, "method": h.method, "url": h.url, "protocol": h.protocol, "headers": headers}),
            )
        }
        layer7::Record::Dns(d) => (
            "dns",
            json!({"query": d.query, "ips": d.ips, "ttl": d.ttl, "cnames": d.cnames,
                   "observation_source": d.observation_source, "rcode": d.rcode, "qtypes": d.qtypes,
                   "rrtypes": d.rrtypes}),
        ),
        layer7::Record::Kafka(k) => (
            "kafka",
            json!({"error_code": k.error_code, "api_version": k.api_version, "api_key": k.api_key,
                   "correlation_id": k.correlation_id, "topic": k.topic}),
        ),
    })
}

fn json_response(resp: &GetFlowsResponse, f: &Flow) -> Value {
    json!({"flow": flow_json(f), "node_name": resp.node_name, "time": time(f)})
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        a: ObserveArgs,
    }

    fn parse(args: &[&str]) -> ObserveArgs {
        T::parse_from(std::iter::once("observe").chain(args.iter().copied())).a
    }

    #[test]
    fn flags_become_a_filter() {
        let r = parse(&[
            "--verdict",
            "dropped",
            "--protocol",
            "http",
            "--from-label",
            "app=client",
            "--http-status",
            "4+",
        ])
        .request()
        .unwrap();
        assert_eq!(r.number, 20);
        assert!(!r.follow);
        assert_eq!(r.whitelist.len(), 1);
        let f = &r.whitelist[0];
        assert_eq!(f.verdict, vec![Verdict::Dropped as i32]);
        assert_eq!(f.protocol, vec!["http"]);
        assert_eq!(f.source_label, vec!["app=client"]);
        assert_eq!(f.http_status_code, vec!["4+"]);
    }

    #[test]
    fn namespace_means_from_or_to() {
        let r = parse(&["--namespace", "prod", "-f"]).request().unwrap();
        assert_eq!((r.number, r.follow), (0, true));
        assert_eq!(r.whitelist.len(), 2);
        assert_eq!(r.whitelist[0].source_pod, vec!["prod/"]);
        assert!(r.whitelist[0].destination_pod.is_empty());
        assert_eq!(r.whitelist[1].destination_pod, vec!["prod/"]);
    }

    fn sample() -> GetFlowsResponse {
        use crate::flow::{
            DropReason as DR, FlowEndpoint, FlowRecord, HttpInfo, L7Info, Verdict as V,
        };
        let labels = [("app".to_string(), "web".to_string())].into();
        let mut rec = FlowRecord::new(
            V::Dropped,
            FlowEndpoint::new("10.0.1.10:40000".parse().unwrap(), 256)
                .with_pod("prod", "web", &labels),
            FlowEndpoint::new("10.0.1.20:8080".parse().unwrap(), 257)
                .with_pod("prod", "api", &labels),
            "HTTP",
        );
        rec.time = crate::flow::FlowTime::parse("2026-11-23T00:01:02.5Z").unwrap();
        rec.drop_reason = Some(DR::PolicyDenied);
        rec.policy = "no rule".into();
        rec.l7 = Some(L7Info {
            http: Some(HttpInfo {
                method: "GET".into(),
                url: "/api/v1/users".into(),
                code: 403,
                protocol: "HTTP/1.1".into(),
                ..Default::default()
            }),
            kafka: None,
        });
        let flow = crate::hubble::to_flow(&rec, "node-a");
        GetFlowsResponse {
            time: flow.time,
            node_name: "node-a".into(),
            response_types: Some(get_flows_response::ResponseTypes::Flow(flow)),
        }
    }

    #[test]
    fn renders_compact_table_and_json() {
        let r = sample();
        assert_eq!(
            render(&r, Output::Compact).unwrap(),
            "2026-11-23T00:01:02.500000000Z prod/web:40000 -> prod/api:8080 HTTP/1.1 GET /api/v1/users \
             DROPPED (POLICY_DENIED) policy: no rule"
        );
        let row = render(&r, Output::Table).unwrap();
        assert!(row.contains("http-request"), "{row}");
        assert!(
            row.ends_with("DROPPED   HTTP/1.1 GET /api/v1/users"),
            "{row}"
        );
        let v: Value = serde_json::from_str(&render(&r, Output::Json).unwrap()).unwrap();
        assert_eq!(v["node_name"], "node-a");
        assert_eq!(v["flow"]["verdict"], "DROPPED");
        assert_eq!(v["flow"]["drop_reason_desc"], "POLICY_DENIED");
        assert_eq!(v["flow"]["Type"], "L7");
        assert_eq!(v["flow"]["l4"]["TCP"]["destination_port"], 8080);
        assert_eq!(v["flow"]["source"]["labels"][0], "k8s:app=web");
        assert_eq!(v["flow"]["l7"]["http"]["code"], 403);
        assert_eq!(v["flow"]["event_type"]["type"], 129);
        assert_eq!(v["flow"]["tollgate_policy"], "no rule");
    }

    #[test]
    fn replies_point_back_and_policy_verdicts_name_policies() {
        use crate::flow::{FlowEndpoint, FlowRecord, HttpInfo, L7Info, Verdict as V};
        let labels = [("app".to_string(), "web".to_string())].into();
        let mut rec = FlowRecord::new(
            V::Forwarded,
            FlowEndpoint::new("10.0.1.10:40000".parse().unwrap(), 256)
                .with_pod("prod", "web", &labels),
            FlowEndpoint::new("10.0.1.20:8080".parse().unwrap(), 257)
                .with_pod("prod", "api", &labels),
            "HTTP",
        );
        rec.policy = "allowed by CiliumNetworkPolicy prod/api-allow ingress[0] l7[0]".into();
        rec.policy_verdict_event = true;
        rec.latency_ns = 3_000_000;
        rec.l7 = Some(L7Info {
            http: Some(HttpInfo {
                method: "GET".into(),
                url: "http://api/x".into(),
                code: 200,
                protocol: "HTTP/1.1".into(),
                ..Default::default()
            }),
            kafka: None,
        });
        let lines: Vec<String> =
            crate::hubble::to_flows(&rec, &crate::hubble::NodeInfo::named("n"))
                .iter()
                .map(compact)
                .collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].contains("prod/web:40000 -> prod/api:8080 TCP Flags: SYN FORWARDED")
                && lines[0].contains("policies: CiliumNetworkPolicy:prod/api-allow"),
            "{lines:?}"
        );
        assert!(
            lines[1].contains("-> prod/api:8080 HTTP/1.1 GET http://api/x FORWARDED"),
            "{lines:?}"
        );
        assert!(
            lines[2].contains(
                "prod/web:40000 <- prod/api:8080 HTTP/1.1 200 3ms (GET http://api/x) FORWARDED"
            ),
            "{lines:?}"
        );
        assert!(
            !lines[1].contains("policies:"),
            "names only on policy-verdict events"
        );
        let unknown = Flow::default();
        assert!(compact(&unknown).contains(" <> "), "{}", compact(&unknown));
    }

    #[test]
    fn bad_verdict_names_the_choices() {
        let e = parse(&["--verdict", "nope"]).request().unwrap_err();
        assert!(e.contains("FORWARDED, DROPPED or ERROR"), "{e}");
    }
}
