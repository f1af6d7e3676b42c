//! Hubble `FlowFilter` semantics over `flow.Flow`, pure and socket-free: a flow is selected when any whitelist
//! filter matches (or there is none) and no blacklist filter does; inside one filter every set field must match,
//! and the values of one repeated field are alternatives.
//!
//! Decisions where Hubble leaves room: `http_path` and `dns_query` are regular expressions matched against the
//! whole value (anchored); pods are `[namespace/]name-prefix`; labels are comma-separated `[source:]key[=value]`
//! terms that must all be present; `http_status_code` is `403` or a class like `5+`.

use std::net::IpAddr;

use regex::Regex;

use crate::hubble::flow::{Endpoint, Flow, FlowFilter, Verdict, layer4, layer7};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("filter field {field}: {value:?} is not {expected}")]
    Invalid {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
}

fn invalid(field: &'static str, value: &str, expected: &'static str) -> FilterError {
    FilterError::Invalid {
        field,
        value: value.to_string(),
        expected,
    }
}

/// `10.0.0.1` or `10.0.0.0/24`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    fn parse(field: &'static str, s: &str) -> Result<Self, FilterError> {
        let bad = || invalid(field, s, "an IP address or CIDR (10.0.0.1, 10.0.0.0/24)");
        let (ip, bits) = match s.split_once('/') {
            Some((ip, bits)) => (ip, Some(bits.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let net: IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        if bits > max {
            return Err(bad());
        }
        Ok(Cidr { net, bits })
    }

    fn contains(&self, ip: &str) -> bool {
        let Ok(ip) = ip.parse::<IpAddr>() else {
            return false;
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits);
    let (full, rest) = (bits / 8, bits % 8);
    if a[..full] != b[..full] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[full] & mask == b[full] & mask
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PodSel {
    namespace: Option<String>,
    prefix: String,
}

impl PodSel {
    fn parse(s: &str) -> Self {
        match s.split_once('/') {
            Some((ns, pod)) => PodSel {
                namespace: Some(ns.to_string()),
                prefix: pod.to_string(),
            },
            None => PodSel {
                namespace: None,
                prefix: s.to_string(),
            },
        }
    }

    fn matches(&self, ep: Option<&Endpoint>) -> bool {
        // Endpoints outside the cluster (world, host) have no pod and match no pod selector.
        let Some(ep) = ep.filter(|e| !e.pod_name.is_empty()) else {
            return false;
        };
        self.namespace.as_ref().is_none_or(|ns| *ns == ep.namespace)
            && ep.pod_name.starts_with(&self.prefix)
    }
}

/// One `[source:]key[=value]` term.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LabelTerm {
    source: Option<String>,
    key: String,
    value: Option<String>,
}

impl LabelTerm {
    fn parse(field: &'static str, s: &str) -> Result<Self, FilterError> {
        let s = s.trim();
        let (kv, value) = match s.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (s, None),
        };
        let (source, key) = match kv.split_once(':') {
            Some((src, k)) => (Some(src.to_string()), k),
            None => (None, kv),
        };
        if key.is_empty() {
            return Err(invalid(field, s, "a label like app=api or k8s:app=api"));
        }
        Ok(LabelTerm {
            source,
            key: key.to_string(),
            value,
        })
    }

    fn matches(&self, label: &str) -> bool {
        let (kv, value) = match label.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (label, None),
        };
        let (source, key) = match kv.split_once(':') {
            Some((src, k)) => (Some(src), k),
            None => (None, kv),
        };
        key == self.key
            && self.source.as_deref().is_none_or(|s| Some(s) == source)
            && self
                .value
                .as_deref()
                .is_none_or(|v| Some(v) == value.or(Some("")))
    }
}

fn labels_match(terms: &[LabelTerm], ep: Option<&Endpoint>) -> bool {
    let Some(ep) = ep else { return false };
    terms.iter().all(|t| ep.labels.iter().any(|l| t.matches(l)))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum StatusSel {
    Exact(u32),
    /// `5+`: 500..=599.
    Class(u32),
}

impl StatusSel {
    fn parse(s: &str) -> Result<Self, FilterError> {
        let bad = || {
            invalid(
                "http_status_code",
                s,
                "a status like 403 or a class like 5+",
            )
        };
        if let Some(c) = s.strip_suffix('+') {
            let c: u32 = c.parse().map_err(|_| bad())?;
            if !(1..=5).contains(&c) {
                return Err(bad());
            }
            return Ok(StatusSel::Class(c));
        }
        let n: u32 = s.parse().map_err(|_| bad())?;
        if !(100..=599).contains(&n) {
            return Err(bad());
        }
        Ok(StatusSel::Exact(n))
    }

    fn matches(&self, code: u32) -> bool {
        match self {
            StatusSel::Exact(n) => code == *n,
            StatusSel::Class(c) => code / 100 == *c,
        }
    }
}

fn anchored(field: &'static str, s: &str) -> Result<Regex, FilterError> {
    Regex::new(&format!("^(?:{s})$")).map_err(|_| invalid(field, s, "a valid regular expression"))
}

fn ports(field: &'static str, v: &[String]) -> Result<Vec<u16>, FilterError> {
    v.iter()
        .map(|p| p.parse().map_err(|_| invalid(field, p, "a port number")))
        .collect()
}

/// The protocols `protocol` accepts.
const PROTOCOLS: [&str; 5] = ["tcp", "udp", "http", "dns", "kafka"];

/// A validated `FlowFilter`.
#[derive(Debug, Clone)]
pub struct Filter {
    source_ip: Vec<Cidr>,
    destination_ip: Vec<Cidr>,
    source_pod: Vec<PodSel>,
    destination_pod: Vec<PodSel>,
    verdict: Vec<i32>,
    source_label: Vec<Vec<LabelTerm>>,
    destination_label: Vec<Vec<LabelTerm>>,
    protocol: Vec<String>,
    source_port: Vec<u16>,
    destination_port: Vec<u16>,
    dns_query: Vec<Regex>,
    http_method: Vec<String>,
    http_path: Vec<Regex>,
    http_status: Vec<StatusSel>,
    traffic_direction: Vec<i32>,
    /// (type, sub type when matched) from `EventTypeFilter`.
    event_type: Vec<(i32, Option<i32>)>,
    reply: Vec<bool>,
    uuid: Vec<String>,
}

fn labels(field: &'static str, v: &[String]) -> Result<Vec<Vec<LabelTerm>>, FilterError> {
    v.iter()
        .map(|sel| sel.split(',').map(|t| LabelTerm::parse(field, t)).collect())
        .collect()
}

impl Filter {
    pub fn compile(f: &FlowFilter) -> Result<Self, FilterError> {
        let protocol = f
            .protocol
            .iter()
            .map(|p| {
                let p = p.to_ascii_lowercase();
                if PROTOCOLS.contains(&p.as_str()) {
                    Ok(p)
                } else {
                    Err(invalid("protocol", &p, "one of tcp, udp, http, dns, kafka"))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Filter {
            source_ip: f
                .source_ip
                .iter()
                .map(|s| Cidr::parse("source_ip", s))
                .collect::<Result<_, _>>()?,
            destination_ip: f
                .destination_ip
                .iter()
                .map(|s| Cidr::parse("destination_ip", s))
                .collect::<Result<_, _>>()?,
            source_pod: f.source_pod.iter().map(|s| PodSel::parse(s)).collect(),
            destination_pod: f.destination_pod.iter().map(|s| PodSel::parse(s)).collect(),
            verdict: f.verdict.clone(),
            source_label: labels("source_label", &f.source_label)?,
            destination_label: labels("destination_label", &f.destination_label)?,
            protocol,
            source_port: ports("source_port", &f.source_port)?,
            destination_port: ports("destination_port", &f.destination_port)?,
            dns_query: f
                .dns_query
                .iter()
                .map(|s| anchored("dns_query", s))
                .collect::<Result<_, _>>()?,
            http_method: f
                .http_method
                .iter()
                .map(|m| m.to_ascii_uppercase())
                .collect(),
            http_path: f
                .http_path
                .iter()
                .map(|s| anchored("http_path", s))
                .collect::<Result<_, _>>()?,
            http_status: f
                .http_status_code
                .iter()
                .map(|s| StatusSel::parse(s))
                .collect::<Result<_, _>>()?,
            traffic_direction: f.traffic_direction.clone(),
            event_type: f
                .event_type
                .iter()
                .map(|e| (e.r#type, e.match_sub_type.then_some(e.sub_type)))
                .collect(),
            reply: f.reply.clone(),
            uuid: f.uuid.clone(),
        })
    }

    /// Every set field matches (an empty filter matches everything).
    pub fn matches(&self, flow: &Flow) -> bool {
        fn any<T>(sel: &[T], f: impl Fn(&T) -> bool) -> bool {
            sel.is_empty() || sel.iter().any(f)
        }
        let ip = flow.ip.as_ref();
        let (sport, dport) = l4_ports(flow);
        let http = match flow.l7.as_ref().and_then(|l| l.record.as_ref()) {
            Some(layer7::Record::Http(h)) => Some(h),
            _ => None,
        };
        let dns = match flow.l7.as_ref().and_then(|l| l.record.as_ref()) {
            Some(layer7::Record::Dns(d)) => Some(d),
            _ => None,
        };
        any(&self.source_ip, |c| {
            ip.is_some_and(|i| c.contains(&i.source))
        }) && any(&self.destination_ip, |c| {
            ip.is_some_and(|i| c.contains(&i.destination))
        }) && any(&self.source_pod, |p| p.matches(flow.source.as_ref()))
            && any(&self.destination_pod, |p| {
                p.matches(flow.destination.as_ref())
            })
            && any(&self.verdict, |v| *v == flow.verdict)
            && any(&self.source_label, |t| {
                labels_match(t, flow.source.as_ref())
            })
            && any(&self.destination_label, |t| {
                labels_match(t, flow.destination.as_ref())
            })
            && any(&self.protocol, |p| protocol_of(flow).contains(&p.as_str()))
            && any(&self.source_port, |p| sport == Some(*p))
            && any(&self.destination_port, |p| dport == Some(*p))
            && any(&self.dns_query, |r| {
                dns.is_some_and(|d| r.is_match(&d.query))
            })
            && any(&self.http_method, |m| http.is_some_and(|h| h.method == *m))
            && any(&self.http_path, |r| {
                http.is_some_and(|h| r.is_match(url_path(&h.url)))
            })
            && any(&self.http_status, |s| {
                http.is_some_and(|h| s.matches(h.code))
            })
            && any(&self.traffic_direction, |d| *d == flow.traffic_direction)
            && any(&self.event_type, |(ty, sub)| {
                flow.event_type
                    .as_ref()
                    .is_some_and(|e| e.r#type == *ty && sub.is_none_or(|s| s == e.sub_type))
            })
            && any(&self.reply, |r| flow.is_reply == Some(*r))
            && any(&self.uuid, |u| *u == flow.uuid)
    }
}

/// The path of a request URL (`http://host/p?q` or `/p?q` -> `/p`).
fn url_path(url: &str) -> &str {
    let rest = match url.find("://") {
        Some(i) => {
            let after = &url[i + 3..];
            after.find('/').map_or("/", |j| &after[j..])
        }
        None => url,
    };
    rest.split(['?', '#']).next().unwrap_or(rest)
}

fn l4_ports(flow: &Flow) -> (Option<u16>, Option<u16>) {
    let (s, d) = match flow.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(t)) => (t.source_port, t.destination_port),
        Some(layer4::Protocol::Udp(u)) => (u.source_port, u.destination_port),
        None => return (None, None),
    };
    (u16::try_from(s).ok(), u16::try_from(d).ok())
}

/// The protocol names a flow answers to: its L4 and, for L7 flows, its L7 protocol.
fn protocol_of(flow: &Flow) -> Vec<&'static str> {
    let mut out = Vec::with_capacity(2);
    match flow.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(_)) => out.push("tcp"),
        Some(layer4::Protocol::Udp(_)) => out.push("udp"),
        None => {}
    }
    match flow.l7.as_ref().and_then(|l| l.record.as_ref()) {
        Some(layer7::Record::Http(_)) => out.push("http"),
        Some(layer7::Record::Dns(_)) => out.push("dns"),
        Some(layer7::Record::Kafka(_)) => out.push("kafka"),
        None => {}
    }
    out
}

/// Whitelist + blacklist, as `GetFlows` receives them.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    whitelist: Vec<Filter>,
    blacklist: Vec<Filter>,
}

impl Selection {
    pub fn compile(
        whitelist: &[FlowFilter],
        blacklist: &[FlowFilter],
    ) -> Result<Self, FilterError> {
        Ok(Selection {
            whitelist: whitelist
                .iter()
                .map(Filter::compile)
                .collect::<Result<_, _>>()?,
            blacklist: blacklist
                .iter()
                .map(Filter::compile)
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn accepts(&self, flow: &Flow) -> bool {
        (self.whitelist.is_empty() || self.whitelist.iter().any(|f| f.matches(flow)))
            && !self.blacklist.iter().any(|f| f.matches(flow))
    }
}

/// Parses a verdict name as the CLI and filters spell it (`DROPPED`, `forwarded`).
pub fn verdict_by_name(s: &str) -> Option<Verdict> {
    Verdict::from_str_name(&s.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hubble::flow::{self as pb, Http, Ip, Layer4, Layer7, Tcp, TrafficDirection};

    /// default/client (app=client) -> default/api:80 (app=api), GET /api/v1/users => 403, DROPPED, ingress.
    fn flow() -> Flow {
        Flow {
            verdict: Verdict::Dropped as i32,
            ip: Some(Ip {
                source: "10.0.0.1".into(),
                destination: "10.0.0.2".into(),
                ip_version: 1,
            }),
            l4: Some(Layer4 {
                protocol: Some(layer4::Protocol::Tcp(Tcp {
                    source_port: 40000,
                    destination_port: 80,
                })),
            }),
            source: Some(Endpoint {
                namespace: "default".into(),
                pod_name: "client-7d9f".into(),
                labels: vec!["k8s:app=client".into(), "k8s:tier=web".into()],
                identity: 256,
                ..Default::default()
            }),
            destination: Some(Endpoint {
                namespace: "default".into(),
                pod_name: "api".into(),
                labels: vec!["k8s:app=api".into()],
                identity: 257,
                ..Default::default()
            }),
            l7: Some(Layer7 {
                r#type: 1,
                latency_ns: 5,
                record: Some(layer7::Record::Http(Http {
                    code: 403,
                    method: "GET".into(),
                    url: "http://api/api/v1/users?x=1".into(),
                    protocol: "HTTP/1.1".into(),
                    headers: vec![],
                })),
            }),
            traffic_direction: TrafficDirection::Ingress as i32,
            ..Default::default()
        }
    }

    fn matches(f: FlowFilter) -> bool {
        Filter::compile(&f).unwrap().matches(&flow())
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn empty_filter_matches_everything() {
        assert!(matches(FlowFilter::default()));
    }

    #[test]
    fn each_field_matches_and_mismatches() {
        type Case = (fn(&mut FlowFilter), bool);
        let cases: Vec<(&str, Case)> = vec![
            (
                "source_ip exact",
                (|f| f.source_ip = s(&["10.0.0.1"]), true),
            ),
            (
                "source_ip other",
                (|f| f.source_ip = s(&["10.0.0.2"]), false),
            ),
            (
                "source_ip cidr",
                (|f| f.source_ip = s(&["10.0.0.0/30"]), true),
            ),
            (
                "source_ip cidr miss",
                (|f| f.source_ip = s(&["10.0.1.0/24"]), false),
            ),
            (
                "source_ip odd prefix",
                (|f| f.source_ip = s(&["10.0.0.0/31"]), true),
            ),
            (
                "source_ip v6 never v4",
                (|f| f.source_ip = s(&["::/0"]), false),
            ),
            (
                "destination_ip",
                (|f| f.destination_ip = s(&["10.0.0.2"]), true),
            ),
            (
                "destination_ip miss",
                (|f| f.destination_ip = s(&["10.0.0.1"]), false),
            ),
            (
                "source_pod prefix",
                (|f| f.source_pod = s(&["client"]), true),
            ),
            (
                "source_pod ns/prefix",
                (|f| f.source_pod = s(&["default/client-7"]), true),
            ),
            (
                "source_pod wrong ns",
                (|f| f.source_pod = s(&["prod/client"]), false),
            ),
            (
                "source_pod namespace only",
                (|f| f.source_pod = s(&["default/"]), true),
            ),
            (
                "source_pod not a prefix",
                (|f| f.source_pod = s(&["lient"]), false),
            ),
            (
                "destination_pod",
                (|f| f.destination_pod = s(&["default/api"]), true),
            ),
            (
                "destination_pod miss",
                (|f| f.destination_pod = s(&["default/client"]), false),
            ),
            (
                "verdict",
                (|f| f.verdict = vec![Verdict::Dropped as i32], true),
            ),
            (
                "verdict miss",
                (|f| f.verdict = vec![Verdict::Forwarded as i32], false),
            ),
            ("verdict or", (|f| f.verdict = vec![1, 2], true)),
            (
                "source_label",
                (|f| f.source_label = s(&["app=client"]), true),
            ),
            (
                "source_label with source",
                (|f| f.source_label = s(&["k8s:app=client"]), true),
            ),
            (
                "source_label wrong source",
                (|f| f.source_label = s(&["reserved:app=client"]), false),
            ),
            (
                "source_label key only",
                (|f| f.source_label = s(&["tier"]), true),
            ),
            (
                "source_label and",
                (|f| f.source_label = s(&["app=client,tier=web"]), true),
            ),
            (
                "source_label and miss",
                (|f| f.source_label = s(&["app=client,tier=db"]), false),
            ),
            (
                "source_label or",
                (|f| f.source_label = s(&["app=x", "tier=web"]), true),
            ),
            (
                "destination_label",
                (|f| f.destination_label = s(&["app=api"]), true),
            ),
            (
                "destination_label miss",
                (|f| f.destination_label = s(&["app=client"]), false),
            ),
            ("protocol http", (|f| f.protocol = s(&["HTTP"]), true)),
            ("protocol tcp", (|f| f.protocol = s(&["tcp"]), true)),
            ("protocol udp", (|f| f.protocol = s(&["udp"]), false)),
            ("protocol dns", (|f| f.protocol = s(&["dns"]), false)),
            ("source_port", (|f| f.source_port = s(&["40000"]), true)),
            (
                "destination_port",
                (|f| f.destination_port = s(&["80"]), true),
            ),
            (
                "destination_port miss",
                (|f| f.destination_port = s(&["8080"]), false),
            ),
            ("dns_query on http", (|f| f.dns_query = s(&[".*"]), false)),
            ("http_method", (|f| f.http_method = s(&["get"]), true)),
            (
                "http_method miss",
                (|f| f.http_method = s(&["POST"]), false),
            ),
            ("http_path", (|f| f.http_path = s(&["/api/v1/users"]), true)),
            ("http_path regex", (|f| f.http_path = s(&["/api/.*"]), true)),
            (
                "http_path anchored",
                (|f| f.http_path = s(&["/api"]), false),
            ),
            ("http_status", (|f| f.http_status_code = s(&["403"]), true)),
            (
                "http_status class",
                (|f| f.http_status_code = s(&["4+"]), true),
            ),
            (
                "http_status class miss",
                (|f| f.http_status_code = s(&["5+"]), false),
            ),
            ("direction", (|f| f.traffic_direction = vec![1], true)),
            ("direction miss", (|f| f.traffic_direction = vec![2], false)),
        ];
        for (name, (set, want)) in cases {
            let mut f = FlowFilter::default();
            set(&mut f);
            assert_eq!(matches(f), want, "{name}");
        }
    }

    #[test]
    fn all_set_fields_must_match() {
        let f = FlowFilter {
            verdict: vec![Verdict::Dropped as i32],
            http_method: s(&["GET"]),
            destination_pod: s(&["default/api"]),
            ..Default::default()
        };
        assert!(matches(f.clone()));
        assert!(!matches(FlowFilter {
            http_method: s(&["PUT"]),
            ..f
        }));
    }

    #[test]
    #[allow(clippy::cloned_ref_to_slice_refs)]
    fn whitelist_any_blacklist_none() {
        let dropped = FlowFilter {
            verdict: vec![2],
            ..Default::default()
        };
        let forwarded = FlowFilter {
            verdict: vec![1],
            ..Default::default()
        };
        let api = FlowFilter {
            destination_pod: s(&["default/api"]),
            ..Default::default()
        };
        let sel =
            |w: &[FlowFilter], b: &[FlowFilter]| Selection::compile(w, b).unwrap().accepts(&flow());
        assert!(sel(&[], &[]));
        assert!(sel(&[forwarded.clone(), dropped.clone()], &[]));
        assert!(!sel(&[forwarded.clone()], &[]));
        assert!(!sel(&[dropped.clone()], &[api.clone()]));
        assert!(sel(&[dropped], &[forwarded.clone()]));
        assert!(!sel(&[], &[api]));
        assert!(sel(&[], &[forwarded]));
    }

    #[test]
    fn endpoints_without_pods_match_no_pod_selector() {
        let mut f = flow();
        f.source = Some(Endpoint {
            identity: 2,
            labels: vec!["reserved:world".into()],
            ..Default::default()
        });
        let by_ns = Filter::compile(&FlowFilter {
            source_pod: s(&[""]),
            ..Default::default()
        })
        .unwrap();
        assert!(!by_ns.matches(&f));
        let world = Filter::compile(&FlowFilter {
            source_label: s(&["reserved:world"]),
            ..Default::default()
        })
        .unwrap();
        assert!(world.matches(&f));
    }

    #[test]
    fn dns_flows() {
        let mut f = flow();
        f.l7 = Some(Layer7 {
            record: Some(layer7::Record::Dns(pb::Dns {
                query: "api.example.com.".into(),
                ..Default::default()
            })),
            ..Default::default()
        });
        let q = |re: &str| {
            Filter::compile(&FlowFilter {
                dns_query: s(&[re]),
                ..Default::default()
            })
            .unwrap()
            .matches(&f)
        };
        assert!(q(r".*\.example\.com\."));
        assert!(!q("example"));
        let dns = Filter::compile(&FlowFilter {
            protocol: s(&["dns"]),
            ..Default::default()
        })
        .unwrap();
        assert!(dns.matches(&f));
        let status = Filter::compile(&FlowFilter {
            http_status_code: s(&["403"]),
            ..Default::default()
        })
        .unwrap();
        assert!(!status.matches(&f), "HTTP fields never match a DNS flow");
    }

    #[test]
    fn invalid_filters_name_the_field() {
        let bad: Vec<(FlowFilter, &str)> = vec![
            (
                FlowFilter {
                    source_ip: s(&["10.0.0.300"]),
                    ..Default::default()
                },
                "source_ip",
            ),
            (
                FlowFilter {
                    destination_ip: s(&["10.0.0.0/33"]),
                    ..Default::default()
                },
                "destination_ip",
            ),
            (
                FlowFilter {
                    destination_port: s(&["http"]),
                    ..Default::default()
                },
                "destination_port",
            ),
            (
                FlowFilter {
                    http_path: s(&["(unclosed"]),
                    ..Default::default()
                },
                "http_path",
            ),
            (
                FlowFilter {
                    dns_query: s(&["[z-a]"]),
                    ..Default::default()
                },
                "dns_query",
            ),
            (
                FlowFilter {
                    http_status_code: s(&["6+"]),
                    ..Default::default()
                },
                "http_status_code",
            ),
            (
                FlowFilter {
                    http_status_code: s(&["99"]),
                    ..Default::default()
                },
                "http_status_code",
            ),
            (
                FlowFilter {
                    protocol: s(&["sctp"]),
                    ..Default::default()
                },
                "protocol",
            ),
            (
                FlowFilter {
                    source_label: s(&["=x"]),
                    ..Default::default()
                },
                "source_label",
            ),
        ];
        for (f, field) in bad {
            let e = Filter::compile(&f).unwrap_err().to_string();
            assert!(e.contains(field), "{e} should name {field}");
        }
    }

    #[test]
    fn url_paths() {
        assert_eq!(url_path("http://h/a/b?c"), "/a/b");
        assert_eq!(url_path("http://h"), "/");
        assert_eq!(url_path("/x#f"), "/x");
    }

    #[test]
    fn verdict_names() {
        assert_eq!(verdict_by_name("dropped"), Some(Verdict::Dropped));
        assert_eq!(verdict_by_name("FORWARDED"), Some(Verdict::Forwarded));
        assert_eq!(verdict_by_name("nah"), None);
    }
}
