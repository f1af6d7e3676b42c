//! Test helpers: DNS messages built with hickory-proto (the proxy itself never builds full messages).

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query as HQuery, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};

pub fn name(n: &str) -> Name {
    Name::from_ascii(n).expect("test name")
}

/// A recursive query for `qname`/`qtype` with id `id`, optionally with an EDNS0 OPT (payload 4096).
pub fn query(id: u16, qname: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(HQuery::query(name(qname), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        m.set_edns(e);
    }
    m.to_vec().expect("encode query")
}

pub fn a(owner: &str, ttl: u32, ip: &str) -> Record {
    let data = match ip.parse::<IpAddr>().expect("ip") {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name(owner), ttl, data)
}

pub fn cname(owner: &str, ttl: u32, target: &str) -> Record {
    Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
}

/// A response to `query_msg` (same id and question, as `question_as` spells it) with `answers`.
pub fn response(
    query_msg: &[u8],
    question_as: Option<&str>,
    answers: Vec<Record>,
    rcode: ResponseCode,
    truncated: bool,
) -> Vec<u8> {
    let q = Message::from_vec(query_msg).expect("query parses");
    let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.response_code = rcode;
    m.metadata.truncation = truncated;
    m.metadata.recursion_desired = true;
    m.metadata.recursion_available = true;
    let first = q.queries[0].clone();
    let qname = match question_as {
        Some(n) => name(n),
        None => first.name().clone(),
    };
    m.add_query(HQuery::query(qname, first.query_type()));
    for r in answers {
        m.add_answer(r);
    }
    if q.edns.is_some() {
        m.set_edns(Edns::new());
    }
    m.to_vec().expect("encode response")
}
