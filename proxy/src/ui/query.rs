//! The flow table's filters (pure): a query string with `tollgate observe`'s filters (namespace, pod, labels,
//! verdict, protocol, HTTP status/method/path, since) plus the map's selection (a workload or an edge), compiled
//! into the same Hubble `FlowFilter` selection the Observer API uses, and the JSON row the table shows per flow.

use serde::Serialize;

use super::aggregate::{drop_reason_name, flow_time_ns, protocol_of};
use super::workload::workload_of;
use crate::flow_filter::{Selection, verdict_by_name};
use crate::hubble::flow::{
    Endpoint, Flow, FlowFilter, L7FlowType, TrafficDirection, Verdict, layer4, layer7,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("{param}={value:?}: {expected}")]
    Invalid {
        param: String,
        value: String,
        expected: &'static str,
    },
    #[error("{0}")]
    Filter(#[from] crate::flow_filter::FilterError),
}

fn invalid(param: &str, value: &str, expected: &'static str) -> QueryError {
    QueryError::Invalid {
        param: param.to_string(),
        value: value.to_string(),
        expected,
    }
}

/// What the table (and its live stream) shows.
#[derive(Debug, Clone, Default)]
pub struct FlowQuery {
    selection: Selection,
    /// Flows at or after this time (ns since the epoch).
    since_ns: Option<i64>,
    /// Flows from or to this workload (`namespace/name`, `fqdn:..`, `reserved:world`).
    workload: Option<String>,
    /// Flows on this edge (client workload, server workload), either direction of the exchange.
    edge: Option<(String, String)>,
    /// Which namespace the page shows (the map and the tables; flows are narrowed by `namespace`).
    pub view_namespace: Option<String>,
    /// Most rows to return.
    pub limit: usize,
}

/// Rows a table request returns at most.
pub const MAX_ROWS: usize = 1_000;

/// Splits `a=1&b=2` into decoded pairs (`+` is a space, as browsers encode forms).
pub fn pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8_lossy()
        .into_owned()
}

impl FlowQuery {
    /// Parses the query string; `now_ns` anchors relative `since` values (`30s`, `5m`, `2h`).
    pub fn parse(query: &str, now_ns: i64) -> Result<Self, QueryError> {
        let mut base = FlowFilter::default();
        // `namespace` / `pod` / `label` name either side of a flow, as in `hubble observe`.
        let (mut either_pod, mut either_label) = (Vec::new(), Vec::new());
        let mut q = FlowQuery {
            limit: 200,
            ..Default::default()
        };
        for (k, v) in pairs(query) {
            if v.is_empty() {
                continue;
            }
            match k.as_str() {
                "namespace" => either_pod.push(format!("{v}/")),
                "pod" => either_pod.push(v),
                "label" => either_label.push(v),
                "from_label" => base.source_label.push(v),
                "to_label" => base.destination_label.push(v),
                "verdict" => {
                    let verdict = verdict_by_name(&v)
                        .ok_or_else(|| invalid(&k, &v, "FORWARDED, DROPPED or ERROR"))?;
                    base.verdict.push(verdict as i32);
                }
                "protocol" => base.protocol.push(v),
                "http_status" => base.http_status_code.push(v),
                "http_method" => base.http_method.push(v),
                "http_path" => base.http_path.push(v),
                "since" => {
                    q.since_ns = Some(parse_since(&v, now_ns).ok_or_else(|| {
                        invalid(&k, &v, "a duration like 30s, 5m, 2h or an RFC 3339 time")
                    })?)
                }
                "workload" => q.workload = Some(v),
                "edge" => {
                    let (a, b) = v
                        .split_once(',')
                        .ok_or_else(|| invalid(&k, &v, "two workloads: from,to"))?;
                    q.edge = Some((a.to_string(), b.to_string()));
                }
                "ns" => q.view_namespace = Some(v),
                "limit" => {
                    q.limit = v
                        .parse::<usize>()
                        .map_err(|_| invalid(&k, &v, "a number of rows"))?
                        .clamp(1, MAX_ROWS)
                }
                _ => return Err(invalid(&k, &v, "a known filter (see the UI's filter bar)")),
            }
        }
        let whitelist = either_side(
            vec![base],
            &either_pod,
            |f| &mut f.source_pod,
            |f| &mut f.destination_pod,
        );
        let whitelist = either_side(
            whitelist,
            &either_label,
            |f| &mut f.source_label,
            |f| &mut f.destination_label,
        );
        q.selection = Selection::compile(&whitelist, &[])?;
        Ok(q)
    }

    /// Does the table show this flow?
    pub fn accepts(&self, f: &Flow) -> bool {
        if self.since_ns.is_some_and(|s| flow_time_ns(f) < s) || !self.selection.accepts(f) {
            return false;
        }
        let src = workload_of(f.source.as_ref(), &f.source_names).id.0;
        let dst = workload_of(f.destination.as_ref(), &f.destination_names)
            .id
            .0;
        if let Some(w) = &self.workload
            && *w != src
            && *w != dst
        {
            return false;
        }
        if let Some((a, b)) = &self.edge {
            let forward = *a == src && *b == dst;
            let back = *a == dst && *b == src && f.is_reply == Some(true);
            return forward || back;
        }
        true
    }
}

/// Each filter becomes two: one with `values` added on the source side, one on the destination side (a flow
/// matches when either does). No values: the filters as they are.
fn either_side(
    filters: Vec<FlowFilter>,
    values: &[String],
    source: impl Fn(&mut FlowFilter) -> &mut Vec<String>,
    destination: impl Fn(&mut FlowFilter) -> &mut Vec<String>,
) -> Vec<FlowFilter> {
    if values.is_empty() {
        return filters;
    }
    filters
        .into_iter()
        .flat_map(|f| {
            let (mut a, mut b) = (f.clone(), f);
            source(&mut a).extend(values.iter().cloned());
            destination(&mut b).extend(values.iter().cloned());
            [a, b]
        })
        .collect()
}

/// `30s`, `5m`, `2h`, `1d` before `now_ns`, or an RFC 3339 UTC time.
fn parse_since(s: &str, now_ns: i64) -> Option<i64> {
    let s = s.trim();
    if let Some(t) = crate::hubble::timestamp(s) {
        return Some(t.seconds * 1_000_000_000 + i64::from(t.nanos));
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return None,
    };
    Some(now_ns - secs.checked_mul(1_000_000_000)?)
}

/// One side of a flow, as the table shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RowEndpoint {
    pub workload: String,
    pub namespace: String,
    pub pod: String,
    pub ip: String,
    pub port: u32,
    pub identity: u32,
    pub labels: Vec<String>,
}

/// A policy that allowed or denied the flow (Hubble's `*_allowed_by` / `*_denied_by`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RowPolicy {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub revision: u64,
    /// `ingress-allowed`, `egress-allowed`, `ingress-denied`, `egress-denied`.
    pub role: &'static str,
}

/// One flow in the table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FlowRow {
    pub uuid: String,
    pub time: String,
    pub time_ns: i64,
    pub node: String,
    pub verdict: String,
    pub drop_reason: Option<String>,
    /// `request`, `response`, `policy-verdict`, `connection`.
    pub kind: &'static str,
    pub direction: String,
    pub protocol: &'static str,
    pub source: RowEndpoint,
    pub destination: RowEndpoint,
    pub summary: String,
    pub http_method: Option<String>,
    pub http_url: Option<String>,
    pub http_status: Option<u32>,
    pub dns_query: Option<String>,
    pub latency_ms: Option<f64>,
    /// Which rule allowed, or why it was denied (Tollgate's explanation).
    pub policy: String,
    pub policies: Vec<RowPolicy>,
    pub auth: String,
}

fn row_endpoint(ep: Option<&Endpoint>, names: &[String], ip: &str, port: u32) -> RowEndpoint {
    RowEndpoint {
        workload: workload_of(ep, names).id.0,
        namespace: ep.map(|e| e.namespace.clone()).unwrap_or_default(),
        pod: ep.map(|e| e.pod_name.clone()).unwrap_or_default(),
        ip: ip.to_string(),
        port,
        identity: ep.map_or(0, |e| e.identity),
        labels: ep.map(|e| e.labels.clone()).unwrap_or_default(),
    }
}

impl FlowRow {
    pub fn of(f: &Flow) -> Self {
        let (sport, dport) = match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
            Some(layer4::Protocol::Tcp(t)) => (t.source_port, t.destination_port),
            Some(layer4::Protocol::Udp(u)) => (u.source_port, u.destination_port),
            None => (0, 0),
        };
        let (sip, dip) = f.ip.as_ref().map_or((String::new(), String::new()), |i| {
            (i.source.clone(), i.destination.clone())
        });
        let record = f.l7.as_ref().and_then(|l| l.record.as_ref());
        let http = match record {
            Some(layer7::Record::Http(h)) => Some(h),
            _ => None,
        };
        let kind = if f
            .event_type
            .as_ref()
            .is_some_and(|e| e.r#type == crate::hubble::event_type::POLICY_VERDICT)
        {
            "policy-verdict"
        } else {
            match f.l7.as_ref() {
                Some(l) if l.r#type == L7FlowType::Response as i32 => "response",
                Some(_) => "request",
                None => "connection",
            }
        };
        let verdict = Verdict::try_from(f.verdict).unwrap_or(Verdict::Unknown);
        let mut policies = Vec::new();
        for (list, role) in [
            (&f.ingress_allowed_by, "ingress-allowed"),
            (&f.egress_allowed_by, "egress-allowed"),
            (&f.ingress_denied_by, "ingress-denied"),
            (&f.egress_denied_by, "egress-denied"),
        ] {
            policies.extend(list.iter().map(|p| RowPolicy {
                kind: p.kind.clone(),
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                revision: p.revision,
                role,
            }));
        }
        let time_ns = flow_time_ns(f);
        FlowRow {
            uuid: f.uuid.clone(),
            time: crate::flow::rfc3339(
                std::time::UNIX_EPOCH + std::time::Duration::from_nanos(time_ns.max(0) as u64),
            ),
            time_ns,
            node: f.node_name.clone(),
            verdict: verdict.as_str_name().to_string(),
            drop_reason: (verdict != Verdict::Forwarded).then(|| drop_reason_name(f)),
            kind,
            direction: TrafficDirection::try_from(f.traffic_direction)
                .map(|d| d.as_str_name().to_string())
                .unwrap_or_default(),
            protocol: protocol_of(f),
            source: row_endpoint(f.source.as_ref(), &f.source_names, &sip, sport),
            destination: row_endpoint(f.destination.as_ref(), &f.destination_names, &dip, dport),
            summary: f.summary.clone(),
            http_method: http.map(|h| h.method.clone()),
            http_url: http.map(|h| h.url.clone()),
            http_status: http.map(|h| h.code).filter(|c| *c != 0),
            dns_query: match record {
                Some(layer7::Record::Dns(d)) => Some(d.query.clone()),
                _ => None,
            },
            latency_ms: f
                .l7
                .as_ref()
                .filter(|l| l.latency_ns > 0)
                .map(|l| l.latency_ns as f64 / 1e6),
            policy: f.tollgate_policy.clone(),
            policies,
            auth: if f.auth_type != 0 {
                "SPIRE".into()
            } else {
                String::new()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Verdict as V;
    use crate::ui::aggregate::tests::{at, ep, flows_of, http};

    const T0: i64 = 1_800_000_000_000_000_000;

    fn sample() -> Vec<Flow> {
        let fe = ep("shop", "frontend", "10.0.5.10", 40000, 300);
        let api = ep("shop", "api", "10.0.5.20", 8080, 301);
        let ledger = ep("billing", "ledger", "10.0.21.20", 8080, 400);
        [
            at(
                http(
                    fe.clone(),
                    api.clone(),
                    "GET",
                    "/products/1",
                    200,
                    V::Forwarded,
                    2,
                ),
                0,
            ),
            at(
                http(
                    fe.clone(),
                    api.clone(),
                    "DELETE",
                    "/products/1",
                    403,
                    V::Dropped,
                    0,
                ),
                1_000,
            ),
            at(
                http(
                    fe.clone(),
                    ledger.clone(),
                    "GET",
                    "/books",
                    503,
                    V::Forwarded,
                    4,
                ),
                2_000,
            ),
            at(
                http(ledger, api, "POST", "/cart", 200, V::Forwarded, 1),
                60_000,
            ),
        ]
        .into_iter()
        .flat_map(|mut r| {
            // Policy-verdict events ("TCP Flags: SYN") are checked on their own below.
            r.policy_verdict_event = false;
            flows_of(&r)
        })
        .collect()
    }

    fn summaries(query: &str) -> Vec<String> {
        let q = FlowQuery::parse(query, T0 + 120_000_000_000).unwrap();
        sample()
            .iter()
            .filter(|f| q.accepts(f))
            .map(|f| f.summary.clone())
            .collect()
    }

    #[test]
    fn observe_filters_narrow_the_table() {
        assert_eq!(summaries("").len(), 7);
        let dropped = summaries("verdict=DROPPED");
        assert!(dropped.iter().all(|s| s.contains("DELETE")), "{dropped:?}");
        assert!(
            summaries("namespace=billing")
                .iter()
                .all(|s| s.contains("books") || s.contains("cart"))
        );
        assert!(
            summaries("pod=shop%2Ffront&http_method=GET")
                .iter()
                .all(|s| s.contains("GET"))
        );
        assert_eq!(
            summaries("http_status=5%2B").len(),
            1,
            "the response carries the status"
        );
        assert!(
            summaries("http_path=%2Fproducts%2F.*")
                .iter()
                .all(|s| s.contains("/products/"))
        );
        assert!(
            summaries("label=app%3Dledger")
                .iter()
                .all(|s| s.contains("books") || s.contains("cart"))
        );
        assert!(
            summaries("from_label=app%3Dledger")
                .iter()
                .all(|s| s.contains("cart") || s.contains("books"))
        );
        // Only the POST a minute later is within the last 70 s.
        let recent = summaries("since=70s");
        assert!(
            !recent.is_empty() && recent.iter().all(|s| s.contains("cart")),
            "{recent:?}"
        );
    }

    #[test]
    fn map_selection_narrows_to_a_workload_or_edge() {
        assert!(
            summaries("workload=billing%2Fledger")
                .iter()
                .all(|s| s.contains("books") || s.contains("cart"))
        );
        let edge = summaries("edge=shop%2Ffrontend,shop%2Fapi");
        assert!(edge.iter().all(|s| s.contains("/products/1")), "{edge:?}");
        assert!(
            edge.iter().any(|s| s.contains("200")),
            "the response travels back on the edge too"
        );
    }

    #[test]
    fn bad_filters_name_the_parameter() {
        let e = FlowQuery::parse("verdict=MAYBE", T0).unwrap_err();
        assert!(e.to_string().contains("verdict=\"MAYBE\""), "{e}");
        assert!(FlowQuery::parse("since=yesterday", T0).is_err());
        assert!(FlowQuery::parse("bogus=1", T0).is_err());
        assert!(FlowQuery::parse("http_status=99", T0).is_err());
        assert_eq!(
            FlowQuery::parse("limit=999999", T0).unwrap().limit,
            MAX_ROWS
        );
    }

    #[test]
    fn rows_carry_the_policy_explanation() {
        let flows = sample();
        let denied = flows
            .iter()
            .find(|f| f.verdict == Verdict::Dropped as i32 && f.l7.is_some())
            .unwrap();
        let row = FlowRow::of(denied);
        assert_eq!((row.verdict.as_str(), row.kind), ("DROPPED", "request"));
        assert_eq!(row.drop_reason.as_deref(), Some("POLICY_DENIED"));
        assert!(row.policy.contains("no http rule matched"), "{row:?}");
        assert_eq!(row.source.workload, "shop/frontend");
        assert_eq!(row.http_status, Some(403));
        let fe = ep("shop", "frontend", "10.0.5.10", 40000, 300);
        let api = ep("shop", "api", "10.0.5.20", 8080, 301);
        let verdicts = flows_of(&at(http(fe, api, "GET", "/", 200, V::Forwarded, 1), 0));
        let verdict = FlowRow::of(&verdicts[0]);
        assert_eq!(verdict.kind, "policy-verdict");
        assert!(!verdict.policies.is_empty(), "{verdict:?}");
    }
}
