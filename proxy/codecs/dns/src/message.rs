//! DNS messages as the proxy handles them, without I/O: checking a client's query, building the answers the proxy
//! gives itself (REFUSED/NXDOMAIN for denied names, FORMERR, SERVFAIL), checking an upstream response against the
//! query, restoring the client's 0x20 casing, and extracting what a response teaches (CNAME chain, A/AAAA, TTL).
//!
//! Queries are forwarded byte for byte (transaction id, flags, EDNS0 OPT and the question's casing are whatever the
//! client sent); parsing (hickory-proto) only feeds the decision. Answers the proxy builds itself are made from the
//! client's own header and question bytes for the same reason.

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode};
use hickory_proto::rr::{RData, RecordType};

/// DNS header length.
pub const HEADER_LEN: usize = 12;
/// EDNS0 UDP payload size the proxy advertises in answers it builds itself (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;
/// Longest CNAME chain followed when learning; longer chains are cut (resolvers stop far earlier).
pub const MAX_CNAME_CHAIN: usize = 16;

/// Response codes the proxy sets itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    NxDomain = 3,
    NotImp = 4,
    Refused = 5,
}

/// A client query that parsed and has exactly one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// The question name as the client cased it, without the trailing dot (`.` for the root).
    pub name: String,
    pub qtype: u16,
    /// Byte offset just past the question section in the client's message.
    pub question_end: usize,
    /// The client sent an EDNS0 OPT record (answers we build carry one back).
    pub edns: bool,
    /// Largest UDP response the client accepts: its EDNS0 payload size, or 512 without EDNS0.
    pub udp_payload: u16,
}

impl Query {
    /// `A`, `AAAA`, ... (the number for types hickory does not name).
    pub fn qtype_name(&self) -> String {
        RecordType::from(self.qtype).to_string()
    }
}

/// Why a client message is not a query the proxy can decide on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than a DNS header: nothing to answer to (dropped).
    TooShort(usize),
    /// QR=1: a response sent to the proxy; answering could start a loop between two responders (dropped).
    NotAQuery,
    /// Unsupported opcode (NOTIFY, UPDATE, ...): answered NOTIMP.
    Opcode(u8),
    /// Not exactly one question: answered FORMERR.
    QuestionCount(u16),
    /// hickory-proto rejected it (truncated record, compression loop, oversized label, ...): answered FORMERR.
    Parse(String),
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Malformed::TooShort(n) => write!(f, "{n} bytes, shorter than a DNS header"),
            Malformed::NotAQuery => f.write_str("a response (QR=1) sent to the DNS proxy"),
            Malformed::Opcode(o) => write!(f, "opcode {o} is not QUERY"),
            Malformed::QuestionCount(n) => write!(f, "{n} questions; exactly one is supported"),
            Malformed::Parse(e) => write!(f, "malformed DNS message: {e}"),
        }
    }
}

impl Malformed {
    /// The answer to send back, if any: FORMERR/NOTIMP built from the client's header, or `None` to drop.
    pub fn reply(&self, msg: &[u8]) -> Option<Vec<u8>> {
        match self {
            Malformed::TooShort(_) | Malformed::NotAQuery => None,
            Malformed::Opcode(_) => Some(header_only(msg, Rcode::NotImp)),
            Malformed::QuestionCount(_) | Malformed::Parse(_) => {
                Some(header_only(msg, Rcode::FormErr))
            }
        }
    }
}

/// Checks a client message: one question, opcode QUERY, parseable as a whole. The usual shape is read in place
/// (`wire::plain_query`); anything else goes through hickory-proto.
pub fn parse_query(msg: &[u8]) -> Result<Query, Malformed> {
    check_query_header(msg)?;
    match crate::wire::plain_query(msg) {
        Some(q) => Ok(q),
        None => parse_query_with_hickory(msg),
    }
}

/// [`parse_query`] without the fast path (the reference the fast path is tested against).
pub fn parse_query_general(msg: &[u8]) -> Result<Query, Malformed> {
    check_query_header(msg)?;
    parse_query_with_hickory(msg)
}

fn check_query_header(msg: &[u8]) -> Result<(), Malformed> {
    if msg.len() < HEADER_LEN {
        return Err(Malformed::TooShort(msg.len()));
    }
    if msg[2] & 0x80 != 0 {
        return Err(Malformed::NotAQuery);
    }
    let opcode = (msg[2] >> 3) & 0x0f;
    if opcode != 0 {
        return Err(Malformed::Opcode(opcode));
    }
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    if qdcount != 1 {
        return Err(Malformed::QuestionCount(qdcount));
    }
    Ok(())
}

fn parse_query_with_hickory(msg: &[u8]) -> Result<Query, Malformed> {
    let parsed = Message::from_vec(msg).map_err(|e| Malformed::Parse(e.to_string()))?;
    let q = parsed.queries.first().ok_or(Malformed::QuestionCount(0))?;
    let question_end = question_end(msg).ok_or_else(|| {
        Malformed::Parse("question name is compressed or runs past the message".into())
    })?;
    let name = q.name().to_ascii();
    let name = match name.strip_suffix('.') {
        Some("") | None => name,
        Some(n) => n.to_string(),
    };
    Ok(Query {
        id: parsed.metadata.id,
        name,
        qtype: u16::from(q.query_type()),
        question_end,
        edns: parsed.edns.is_some(),
        udp_payload: parsed
            .edns
            .as_ref()
            .map_or(512, |e| e.max_payload().max(512)),
    })
}

/// Offset just past the first question (name + type + class), walking the raw labels. `None` for a name with a
/// compression pointer or an extended label type: the first name of a message has nothing before it to point to
/// but the header (which answers rewrite), so such a question is malformed (found by the fuzz target).
fn question_end(msg: &[u8]) -> Option<usize> {
    let mut i = HEADER_LEN;
    loop {
        let len = *msg.get(i)? as usize;
        if len == 0 {
            i += 1;
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        i += 1 + len;
    }
    let end = i + 4;
    (end <= msg.len()).then_some(end)
}

/// An answer to `query` with no records: the client's header (id, opcode, RD, CD) and question bytes (so its 0x20
/// casing), QR and RA set, `rcode`, and an OPT record when the client sent one.
pub fn answer_from_query(msg: &[u8], query: &Query, rcode: Rcode) -> Vec<u8> {
    let mut out = Vec::with_capacity(query.question_end + 11);
    out.extend_from_slice(&msg[..query.question_end]);
    // QR=1, opcode kept, AA=0, TC=0, RD kept.
    out[2] = 0x80 | (msg[2] & 0x79);
    // RA=1, Z=0, AD=0, CD kept, rcode.
    out[3] = 0x80 | (msg[3] & 0x10) | (rcode as u8);
    out[4..6].copy_from_slice(&1u16.to_be_bytes());
    out[6..10].fill(0);
    let arcount: u16 = if query.edns { 1 } else { 0 };
    out[10..12].copy_from_slice(&arcount.to_be_bytes());
    if query.edns {
        // Root name, TYPE OPT (41), CLASS = payload size, TTL = ext-rcode/version/flags 0, RDLEN 0.
        out.push(0);
        out.extend_from_slice(&41u16.to_be_bytes());
        out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    out
}

/// A bare header answer (no question echoed: the question could not be parsed) with the client's id and opcode.
pub fn header_only(msg: &[u8], rcode: Rcode) -> Vec<u8> {
    let mut out = msg[..HEADER_LEN].to_vec();
    out[2] = 0x80 | (msg[2] & 0x79);
    out[3] = 0x80 | (msg[3] & 0x10) | (rcode as u8);
    out[4..12].fill(0);
    out
}

/// What an upstream response says, as far as the proxy cares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseInfo {
    pub rcode: u16,
    pub truncated: bool,
    /// The CNAME chain from the question name, lower case, question name first.
    pub names: Vec<String>,
    /// A/AAAA records owned by a name of the chain, in answer order, without duplicates.
    pub ips: Vec<IpAddr>,
    /// Smallest TTL along the chain and its addresses (0 when there are no addresses).
    pub ttl: u32,
    /// Record types in the answer section (`A`, `CNAME`, ...), in order, without duplicates.
    pub rrtypes: Vec<String>,
}

/// Why an upstream response is not passed to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadResponse {
    Parse(String),
    /// Not a response, or another id, or another question: never forward an answer to a question not asked.
    Mismatch(&'static str),
}

impl std::fmt::Display for BadResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadResponse::Parse(e) => write!(f, "upstream sent a malformed response: {e}"),
            BadResponse::Mismatch(what) => {
                write!(f, "upstream response does not match the query: {what}")
            }
        }
    }
}

/// Checks `resp` answers `query` and extracts the CNAME chain, addresses and TTL. Answers that are only the
/// question name's addresses are read in place (`wire::plain_response`); anything else goes through hickory-proto.
pub fn inspect_response(query: &Query, resp: &[u8]) -> Result<ResponseInfo, BadResponse> {
    match crate::wire::plain_response(query, resp) {
        Some(info) => Ok(info),
        None => inspect_response_general(query, resp),
    }
}

/// [`inspect_response`] without the fast path (the reference the fast path is tested against).
pub fn inspect_response_general(query: &Query, resp: &[u8]) -> Result<ResponseInfo, BadResponse> {
    let msg = Message::from_vec(resp).map_err(|e| BadResponse::Parse(e.to_string()))?;
    if msg.metadata.message_type != MessageType::Response {
        return Err(BadResponse::Mismatch("QR is 0"));
    }
    if msg.metadata.id != query.id {
        return Err(BadResponse::Mismatch("transaction id differs"));
    }
    if msg.metadata.op_code != OpCode::Query {
        return Err(BadResponse::Mismatch("opcode differs"));
    }
    let qname = lower_no_dot(&query.name);
    // A truncated response may carry no question; otherwise it must be ours.
    match msg.queries.first() {
        Some(q) => {
            if lower_no_dot(&q.name().to_ascii()) != qname
                || u16::from(q.query_type()) != query.qtype
            {
                return Err(BadResponse::Mismatch("question differs"));
            }
        }
        None if msg.metadata.truncation => {}
        None => return Err(BadResponse::Mismatch("no question")),
    }
    let mut info = ResponseInfo {
        rcode: u16::from(msg.metadata.response_code),
        truncated: msg.metadata.truncation,
        names: vec![qname],
        ..Default::default()
    };
    for r in &msg.answers {
        let t = r.record_type().to_string();
        if !info.rrtypes.contains(&t) {
            info.rrtypes.push(t);
        }
    }
    let mut ttl = u32::MAX;
    // Follow the chain: each step must be a CNAME owned by the current end of the chain.
    while info.names.len() <= MAX_CNAME_CHAIN {
        let end = info.names.last().cloned().unwrap_or_default();
        let next = msg.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(c) if lower_no_dot(&r.name.to_ascii()) == end => {
                Some((lower_no_dot(&c.0.to_ascii()), r.ttl))
            }
            _ => None,
        });
        match next {
            Some((target, t)) if !info.names.contains(&target) => {
                ttl = ttl.min(t);
                info.names.push(target);
            }
            _ => break,
        }
    }
    for r in &msg.answers {
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        if info.names.contains(&lower_no_dot(&r.name.to_ascii())) {
            ttl = ttl.min(r.ttl);
            if !info.ips.contains(&ip) {
                info.ips.push(ip);
            }
        }
    }
    info.ttl = if info.ips.is_empty() { 0 } else { ttl };
    Ok(info)
}

/// Puts the client's casing of the question back into a response (a resolver may answer 0x20-randomised names in
/// its own case; the client compares byte for byte). Only the first question's name bytes are touched, and only
/// when they spell the same name ignoring ASCII case.
pub fn restore_case(resp: &mut [u8], query_msg: &[u8], query: &Query) {
    let name_end = query.question_end - 4;
    if resp.len() < query.question_end || u16::from_be_bytes([resp[4], resp[5]]) != 1 {
        return;
    }
    let (theirs, ours) = (
        &resp[HEADER_LEN..name_end],
        &query_msg[HEADER_LEN..name_end],
    );
    if theirs != ours
        && theirs.eq_ignore_ascii_case(ours)
        && question_end(resp) == Some(query.question_end)
    {
        resp[HEADER_LEN..name_end].copy_from_slice(ours);
    }
}

/// Rewrites the transaction id in place (responses to TCP-fallback or shared upstream sockets).
pub fn set_id(msg: &mut [u8], id: u16) {
    if msg.len() >= 2 {
        msg[..2].copy_from_slice(&id.to_be_bytes());
    }
}

/// Response code of a response message (header only; 0 if too short).
pub fn rcode_of(msg: &[u8]) -> u16 {
    msg.get(3).map_or(0, |b| u16::from(b & 0x0f))
}

fn lower_no_dot(name: &str) -> String {
    let n = name.strip_suffix('.').unwrap_or(name);
    n.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{a, cname, query, response};
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::RecordType;

    fn reparse(msg: &[u8]) -> Message {
        Message::from_vec(msg).expect("answer parses")
    }

    #[test]
    fn a_query_keeps_the_clients_casing_and_reports_edns() {
        let msg = query(0xbeef, "API.Stripe.com.", RecordType::AAAA, true);
        let q = parse_query(&msg).unwrap();
        assert_eq!(q.id, 0xbeef);
        assert_eq!(q.name, "API.Stripe.com");
        assert_eq!(q.qtype, 28);
        assert_eq!(q.qtype_name(), "AAAA");
        assert!(q.edns);
        assert_eq!(&msg[q.question_end - 4..q.question_end], &[0, 28, 0, 1]);
        let plain = query(1, "a.b", RecordType::A, false);
        let q = parse_query(&plain).unwrap();
        assert!(!q.edns);
        assert_eq!(
            q.question_end,
            plain.len(),
            "no OPT: the question ends the message"
        );
    }

    #[test]
    fn refusal_echoes_id_question_bytes_and_edns() {
        for (rcode, want) in [
            (Rcode::Refused, ResponseCode::Refused),
            (Rcode::NxDomain, ResponseCode::NXDomain),
            (Rcode::ServFail, ResponseCode::ServFail),
        ] {
            let msg = query(0x1234, "eViL.ExAmple.org", RecordType::A, true);
            let q = parse_query(&msg).unwrap();
            let out = answer_from_query(&msg, &q, rcode);
            assert_eq!(&out[..2], &msg[..2], "transaction id preserved");
            assert_eq!(
                &out[HEADER_LEN..q.question_end],
                &msg[HEADER_LEN..q.question_end],
                "question bytes (0x20 casing) preserved"
            );
            let m = reparse(&out);
            assert_eq!(m.metadata.message_type, MessageType::Response);
            assert_eq!(m.metadata.response_code, want);
            assert!(m.metadata.recursion_desired, "RD copied");
            assert!(m.answers.is_empty());
            assert_eq!(m.queries[0].name().to_ascii(), "eViL.ExAmple.org.");
            let edns = m.edns.as_ref().expect("OPT answered to an EDNS query");
            assert_eq!(edns.max_payload(), EDNS_PAYLOAD);
        }
        let msg = query(7, "x.org", RecordType::A, false);
        let q = parse_query(&msg).unwrap();
        let m = reparse(&answer_from_query(&msg, &q, Rcode::Refused));
        assert!(m.edns.is_none(), "no OPT to a client that sent none");
    }

    #[test]
    fn malformed_messages_get_formerr_notimp_or_are_dropped() {
        // Shorter than a header: dropped.
        let e = parse_query(&[1, 2, 3]).unwrap_err();
        assert_eq!(e, Malformed::TooShort(3));
        assert_eq!(e.reply(&[1, 2, 3]), None);
        let good = query(0x4242, "a.example", RecordType::A, false);
        // A response sent to us: dropped.
        let mut resp = good.clone();
        resp[2] |= 0x80;
        assert_eq!(parse_query(&resp).unwrap_err(), Malformed::NotAQuery);
        assert_eq!(Malformed::NotAQuery.reply(&resp), None);
        // Opcode STATUS (2): NOTIMP.
        let mut status = good.clone();
        status[2] |= 2 << 3;
        let e = parse_query(&status).unwrap_err();
        assert_eq!(e, Malformed::Opcode(2));
        let r = e.reply(&status).unwrap();
        assert_eq!(r[3] & 0x0f, Rcode::NotImp as u8);
        assert_eq!(&r[..2], &[0x42, 0x42]);
        // Two questions / none: FORMERR.
        for qd in [0u16, 2] {
            let mut m = good.clone();
            m[4..6].copy_from_slice(&qd.to_be_bytes());
            let e = parse_query(&m).unwrap_err();
            assert_eq!(e, Malformed::QuestionCount(qd));
            let r = e.reply(&m).unwrap();
            assert_eq!((r[2] & 0x80, r[3] & 0x0f), (0x80, Rcode::FormErr as u8));
            assert_eq!(r.len(), HEADER_LEN);
            assert!(r[4..].iter().all(|b| *b == 0), "no sections in FORMERR");
        }
        // Truncated question.
        let cut = &good[..good.len() - 3];
        assert!(matches!(parse_query(cut), Err(Malformed::Parse(_))));
        // Compression loop: the question name points at itself.
        let mut lp = good[..HEADER_LEN].to_vec();
        lp.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        let e = parse_query(&lp).unwrap_err();
        assert!(matches!(e, Malformed::Parse(_)), "{e:?}");
        assert_eq!(e.reply(&lp).unwrap()[3] & 0x0f, Rcode::FormErr as u8);
        // Pointer loop between two pointers inside the question.
        let mut lp2 = good[..HEADER_LEN].to_vec();
        lp2.extend_from_slice(&[1, b'a', 0xc0, 14, 0, 1, 0, 1]);
        assert!(matches!(parse_query(&lp2), Err(Malformed::Parse(_))));
        // A question name pointing into the header (which our answers rewrite): found by the fuzz target.
        let mut hp = good[..HEADER_LEN].to_vec();
        hp.extend_from_slice(&[1, b'a', 0xc0, 4, 0, 1, 0, 1]);
        let e = parse_query(&hp).unwrap_err();
        assert!(matches!(e, Malformed::Parse(_)), "{e:?}");
        let crash = [
            0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0xc0, 0x03, 0x41, 0x20, 0x49,
            0x12, 0x34, 0x00, 0x32, 0x01, 0, 0, 0x01, 0x30, 0x34, 0x01, 0x2a, 0x00, 0xfe, 0x00,
            0x12, 0x34, 0x01, 0x01, 0x00, 0x3a, 0, 0, 0, 0,
        ];
        assert!(matches!(parse_query(&crash), Err(Malformed::Parse(_))));
        // Oversized label (64 bytes).
        let mut big = good[..HEADER_LEN].to_vec();
        big.push(64);
        big.extend(std::iter::repeat_n(b'a', 64));
        big.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert!(matches!(parse_query(&big), Err(Malformed::Parse(_))));
        // Name longer than 255 bytes.
        let mut long = good[..HEADER_LEN].to_vec();
        for _ in 0..5 {
            long.push(63);
            long.extend(std::iter::repeat_n(b'b', 63));
        }
        long.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert!(matches!(parse_query(&long), Err(Malformed::Parse(_))));
        // Trailing garbage claimed by a bogus ARCOUNT.
        let mut ar = good.clone();
        ar[11] = 3;
        assert!(matches!(parse_query(&ar), Err(Malformed::Parse(_))));
    }

    #[test]
    fn responses_yield_the_cname_chain_addresses_and_min_ttl() {
        let msg = query(9, "www.Example.com", RecordType::A, true);
        let q = parse_query(&msg).unwrap();
        let resp = response(
            &msg,
            None,
            vec![
                cname("www.example.com", 300, "edge.cdn.net"),
                cname("edge.cdn.net", 120, "e1.cdn.net"),
                a("e1.cdn.net", 60, "198.51.100.7"),
                a("e1.cdn.net", 90, "198.51.100.8"),
                a("unrelated.org", 5, "192.0.2.1"),
            ],
            ResponseCode::NoError,
            false,
        );
        let info = inspect_response(&q, &resp).unwrap();
        assert_eq!(
            info.names,
            ["www.example.com", "edge.cdn.net", "e1.cdn.net"]
        );
        assert_eq!(
            info.ips,
            [
                "198.51.100.7".parse::<IpAddr>().unwrap(),
                "198.51.100.8".parse().unwrap()
            ],
            "records outside the chain are not learned"
        );
        assert_eq!(info.ttl, 60);
        assert_eq!(info.rrtypes, ["CNAME", "A"]);
        assert_eq!(info.rcode, 0);
        assert!(!info.truncated);
    }

    #[test]
    fn cname_loops_end_and_nxdomain_teaches_nothing() {
        let msg = query(9, "a.test", RecordType::A, false);
        let q = parse_query(&msg).unwrap();
        let resp = response(
            &msg,
            None,
            vec![cname("a.test", 5, "b.test"), cname("b.test", 5, "a.test")],
            ResponseCode::NoError,
            false,
        );
        let info = inspect_response(&q, &resp).unwrap();
        assert_eq!(info.names, ["a.test", "b.test"]);
        assert!(info.ips.is_empty());
        assert_eq!(info.ttl, 0);
        let nx = response(&msg, None, vec![], ResponseCode::NXDomain, false);
        let info = inspect_response(&q, &nx).unwrap();
        assert_eq!(info.rcode, 3);
        assert!(info.ips.is_empty());
    }

    #[test]
    fn mismatched_responses_are_rejected() {
        let msg = query(9, "a.test", RecordType::A, false);
        let q = parse_query(&msg).unwrap();
        let other_id = response(
            &query(10, "a.test", RecordType::A, false),
            None,
            vec![],
            ResponseCode::NoError,
            false,
        );
        assert_eq!(
            inspect_response(&q, &other_id),
            Err(BadResponse::Mismatch("transaction id differs"))
        );
        let other_q = response(&msg, Some("b.test"), vec![], ResponseCode::NoError, false);
        assert_eq!(
            inspect_response(&q, &other_q),
            Err(BadResponse::Mismatch("question differs"))
        );
        assert_eq!(
            inspect_response(&q, &msg),
            Err(BadResponse::Mismatch("QR is 0"))
        );
        assert!(matches!(
            inspect_response(&q, &[0, 9, 0x80]),
            Err(BadResponse::Parse(_))
        ));
    }

    #[test]
    fn truncated_responses_pass_with_the_tc_bit() {
        let msg = query(9, "big.test", RecordType::A, false);
        let q = parse_query(&msg).unwrap();
        let tc = response(
            &msg,
            None,
            vec![a("big.test", 30, "192.0.2.9")],
            ResponseCode::NoError,
            true,
        );
        let info = inspect_response(&q, &tc).unwrap();
        assert!(info.truncated);
        // A bare TC header without a question is accepted too (some servers send only that).
        let mut bare = header_only(&msg, Rcode::NoError);
        bare[2] |= 0x02;
        let info = inspect_response(&q, &bare).unwrap();
        assert!(info.truncated);
        assert!(info.ips.is_empty());
    }

    #[test]
    fn the_clients_0x20_casing_is_restored_in_the_response() {
        let msg = query(77, "ApI.sTrIpE.cOm", RecordType::A, true);
        let q = parse_query(&msg).unwrap();
        let mut resp = response(
            &msg,
            Some("api.stripe.com"),
            vec![a("api.stripe.com", 30, "203.0.113.10")],
            ResponseCode::NoError,
            false,
        );
        inspect_response(&q, &resp).expect("case-insensitive question match");
        restore_case(&mut resp, &msg, &q);
        let m = reparse(&resp);
        assert_eq!(m.queries[0].name().to_ascii(), "ApI.sTrIpE.cOm.");
        assert_eq!(m.answers.len(), 1, "the rest of the response is untouched");
        // A different name is never "restored".
        let mut other = response(
            &msg,
            Some("api.stripe.net"),
            vec![],
            ResponseCode::NoError,
            false,
        );
        let before = other.clone();
        restore_case(&mut other, &msg, &q);
        assert_eq!(other, before);
    }

    #[test]
    fn helpers() {
        let mut m = query(1, "a.b", RecordType::A, false);
        set_id(&mut m, 0xabcd);
        assert_eq!(&m[..2], &[0xab, 0xcd]);
        assert_eq!(rcode_of(&header_only(&m, Rcode::Refused)), 5);
        assert_eq!(rcode_of(&[]), 0);
        let root = query(1, ".", RecordType::NS, false);
        assert_eq!(parse_query(&root).unwrap().name, ".");
    }
}
