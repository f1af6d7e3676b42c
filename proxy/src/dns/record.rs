//! DNS flow records: one per query, with the query, qtype, rcode sent back, answered IPs, TTL, verdict and latency.

use std::net::SocketAddr;
use std::time::Instant;

use crate::decision::flow_endpoint;
use crate::flow::{
    DnsInfo, DropReason, FlowEndpoint, FlowRecord, L7Info, TrafficDirection, Verdict,
};
use crate::policy_source::PolicySnapshot;
use tollgate_dns_codec::message::{Malformed, Query, Rcode, ResponseInfo};

/// What became of an understood query.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Forwarded; the resolver's response was released to the client.
    Answered { info: ResponseInfo, reason: String },
    /// Denied by policy; the proxy answered `rcode`.
    Denied { rcode: Rcode, reason: String },
    /// Allowed, but the resolver failed or timed out (or learning failed): SERVFAIL.
    UpstreamFailed { why: String },
}

fn base(
    snap: &PolicySnapshot,
    client: SocketAddr,
    resolver: Option<SocketAddr>,
    verdict: Verdict,
    started: Instant,
) -> FlowRecord {
    let dst = match resolver {
        Some(r) => flow_endpoint(snap, r),
        None => FlowEndpoint::default(),
    };
    let mut rec = FlowRecord::new(verdict, flow_endpoint(snap, client), dst, "DNS");
    rec.l7 = Some(L7Info::default());
    rec.traffic_direction = Some(TrafficDirection::Egress);
    rec.latency_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    rec
}

fn query_info(q: &Query) -> DnsInfo {
    DnsInfo {
        query: if q.name == "." {
            ".".into()
        } else {
            format!("{}.", q.name)
        },
        qtypes: vec![q.qtype_name()],
        ..Default::default()
    }
}

/// The record for a query the proxy understood.
pub fn dns_flow(
    snap: &PolicySnapshot,
    client: SocketAddr,
    resolver: SocketAddr,
    q: &Query,
    outcome: Outcome,
    started: Instant,
) -> FlowRecord {
    let mut dns = query_info(q);
    let (verdict, drop, policy) = match outcome {
        Outcome::Answered { info, reason } => {
            dns.rcode = info.rcode;
            dns.ips = info.ips.iter().map(ToString::to_string).collect();
            dns.ttl = info.ttl;
            dns.cnames = info.names.iter().skip(1).map(|n| format!("{n}.")).collect();
            dns.rrtypes = info.rrtypes;
            dns.observation_source = "proxy".into();
            (Verdict::Forwarded, None, reason)
        }
        Outcome::Denied { rcode, reason } => {
            dns.rcode = rcode as u16;
            dns.observation_source = "proxy-refused".into();
            (Verdict::Dropped, Some(DropReason::PolicyDenied), reason)
        }
        Outcome::UpstreamFailed { why } => {
            dns.rcode = Rcode::ServFail as u16;
            dns.observation_source = "proxy".into();
            (Verdict::Error, Some(DropReason::UpstreamError), why)
        }
    };
    let mut rec = base(snap, client, Some(resolver), verdict, started);
    rec.drop_reason = drop;
    rec.policy = policy;
    rec.dns = Some(dns);
    rec
}

/// The record for a message that is not a query the proxy can decide on (FORMERR/NOTIMP or dropped).
pub fn malformed(
    snap: &PolicySnapshot,
    client: SocketAddr,
    resolver: Option<SocketAddr>,
    why: &Malformed,
    answered: bool,
    started: Instant,
) -> FlowRecord {
    let mut rec = base(snap, client, resolver, Verdict::Dropped, started);
    rec.drop_reason = Some(DropReason::InvalidRequest);
    let rcode = match why {
        Malformed::Opcode(_) => Rcode::NotImp as u16,
        _ => Rcode::FormErr as u16,
    };
    rec.policy = if answered {
        format!(
            "{why}; answered {}",
            if rcode == 4 { "NOTIMP" } else { "FORMERR" }
        )
    } else {
        format!("{why}; dropped")
    };
    rec.dns = Some(DnsInfo {
        rcode: if answered { rcode } else { 0 },
        observation_source: "proxy-refused".into(),
        ..Default::default()
    });
    rec
}

/// A query that reached the DNS listener without a redirect record: nowhere to forward it.
pub fn no_origin(
    snap: &PolicySnapshot,
    client: SocketAddr,
    q: &Query,
    started: Instant,
) -> FlowRecord {
    let mut rec = base(snap, client, None, Verdict::Error, started);
    rec.drop_reason = Some(DropReason::UpstreamError);
    rec.policy =
        "no redirect record for this query: the original resolver is unknown; answered SERVFAIL"
            .into();
    let mut dns = query_info(q);
    dns.rcode = Rcode::ServFail as u16;
    dns.observation_source = "proxy".into();
    rec.dns = Some(dns);
    rec
}

/// A DNS-over-TCP connection closed at accept because `limit` connections are already open.
pub fn tcp_connection_limit(
    snap: &PolicySnapshot,
    client: SocketAddr,
    resolver: Option<SocketAddr>,
    limit: usize,
) -> FlowRecord {
    let mut rec = base(snap, client, resolver, Verdict::Dropped, Instant::now());
    rec.drop_reason = Some(DropReason::LimitExceeded);
    rec.policy = format!(
        "DNS TCP connection limit {limit} reached (--dns-max-tcp-connections); connection closed"
    );
    rec.dns = Some(DnsInfo {
        observation_source: "proxy-refused".into(),
        ..Default::default()
    });
    rec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::conformance_snapshot;
    use crate::hubble::flow;
    use hickory_proto::rr::RecordType;
    use tollgate_dns_codec::message::parse_query;
    use tollgate_dns_codec::testutil::query;

    #[test]
    fn answered_denied_and_malformed_records_and_their_hubble_form() {
        let snap = conformance_snapshot("dns-telemetry");
        let client: SocketAddr = "10.0.23.10:40000".parse().unwrap();
        let resolver: SocketAddr = "10.0.23.53:53".parse().unwrap();
        let msg = query(1, "Img.assets.example.com", RecordType::A, false);
        let q = parse_query(&msg).unwrap();
        let info = ResponseInfo {
            names: vec!["img.assets.example.com".into(), "edge-7.cdn.example".into()],
            ips: vec!["198.51.100.44".parse().unwrap()],
            ttl: 60,
            rrtypes: vec!["CNAME".into(), "A".into()],
            ..Default::default()
        };
        let rec = dns_flow(
            &snap,
            client,
            resolver,
            &q,
            Outcome::Answered {
                info,
                reason: "allowed by x".into(),
            },
            Instant::now(),
        );
        assert_eq!(rec.verdict, Verdict::Forwarded);
        assert_eq!(rec.protocol, "DNS");
        assert_eq!(rec.source.pod.as_deref(), Some("fetcher"));
        assert_eq!(rec.destination.pod.as_deref(), Some("resolver"));
        let json = serde_json::to_value(&rec).unwrap();
        assert_eq!(json["dns"]["query"], "Img.assets.example.com.");
        assert_eq!(json["dns"]["cnames"][0], "edge-7.cdn.example.");
        assert_eq!(json["dns"]["ips"][0], "198.51.100.44");
        let f = crate::hubble::to_flow(&rec, "node");
        let l7 = f.l7.expect("L7 flow");
        let Some(flow::layer7::Record::Dns(d)) = l7.record else {
            panic!("a DNS record");
        };
        assert_eq!(
            (d.query.as_str(), d.ttl, d.rcode),
            ("Img.assets.example.com.", 60, 0)
        );
        assert_eq!(d.qtypes, ["A"]);
        assert_eq!(d.rrtypes, ["CNAME", "A"]);

        let denied = dns_flow(
            &snap,
            client,
            resolver,
            &q,
            Outcome::Denied {
                rcode: Rcode::Refused,
                reason: "denied: no DNS rule".into(),
            },
            Instant::now(),
        );
        assert_eq!(denied.verdict, Verdict::Dropped);
        assert_eq!(denied.drop_reason, Some(DropReason::PolicyDenied));
        assert_eq!(denied.dns.as_ref().unwrap().rcode, 5);

        let bad = malformed(
            &snap,
            client,
            Some(resolver),
            &Malformed::TooShort(3),
            false,
            Instant::now(),
        );
        assert_eq!(bad.drop_reason, Some(DropReason::InvalidRequest));
        assert!(bad.policy.ends_with("dropped"), "{}", bad.policy);
    }
}
