//! Fast paths over the raw wire bytes for the shapes nearly every query and answer has: one plain question, no
//! records or one bare EDNS0 OPT beside it, and answers that are A/AAAA records of the question name itself. They
//! read the message in place, with no allocation beyond the results (the question name, the learned addresses),
//! where the general path (hickory-proto, in `message`) builds a whole `Message` per query and per response.
//!
//! Each function returns `None` for anything outside its shape (an unusual character in a name, a CNAME, an
//! authority record, EDNS0 options, trailing bytes, ...), and the caller takes the general path, so what the
//! proxy accepts, rejects and learns is the general path's by construction; the tests here check both agree.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::message::{HEADER_LEN, Query, ResponseInfo};

/// TYPE values read here.
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
/// CLASS IN.
const CLASS_IN: u16 = 1;
/// Longest encoded name (RFC 1035 3.1).
const MAX_NAME: usize = 255;
/// A compression pointer to the question name right after the header.
const POINTER_TO_QUESTION: [u8; 2] = [0xc0, HEADER_LEN as u8];

fn u16_at(msg: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]))
}

fn u32_at(msg: &[u8], at: usize) -> Option<u32> {
    let b = msg.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// A byte the general path prints as itself in a label (letters, digits, `_`, and `-` except first): other bytes
/// are escaped there (`\-`, `\046`, ...), which this fast path does not reproduce.
fn plain_label_byte(b: u8, first: bool) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || (b == b'-' && !first)
}

/// The labels of the uncompressed, non-root name at `HEADER_LEN`, each made only of plain bytes: calls `label`
/// for each and returns the offset just past the name.
fn walk_plain_name(msg: &[u8], mut label: impl FnMut(&[u8]) -> Option<()>) -> Option<usize> {
    let mut i = HEADER_LEN;
    loop {
        let len = usize::from(*msg.get(i)?);
        if len == 0 {
            // The root name (`.`) is left to the general path.
            return (i > HEADER_LEN && i + 1 - HEADER_LEN <= MAX_NAME).then_some(i + 1);
        }
        if len > 63 {
            return None;
        }
        let bytes = msg.get(i + 1..i + 1 + len)?;
        if !bytes
            .iter()
            .enumerate()
            .all(|(k, b)| plain_label_byte(*b, k == 0))
        {
            return None;
        }
        label(bytes)?;
        i += 1 + len;
    }
}

/// A bare EDNS0 OPT record (root owner, no options, extended rcode 0) at `at` that ends the message: the
/// advertised UDP payload size. `None` for anything else.
fn bare_opt(msg: &[u8], at: usize) -> Option<u16> {
    let rest = msg.get(at..)?;
    // Owner (root), TYPE, CLASS = payload, TTL = ext-rcode/version/flags, RDLENGTH.
    if rest.len() != 11 || rest[0] != 0 || u16_at(rest, 1)? != TYPE_OPT || rest[5] != 0 {
        return None;
    }
    (u16_at(rest, 9)? == 0).then(|| u16_at(rest, 3).unwrap_or(0))
}

/// A query (header already checked: QR=0, opcode QUERY, QDCOUNT=1) made of one plain IN question and at most a
/// bare OPT record; the same `Query` the general path would make.
pub fn plain_query(msg: &[u8]) -> Option<Query> {
    let (ancount, nscount, arcount) = (u16_at(msg, 6)?, u16_at(msg, 8)?, u16_at(msg, 10)?);
    if ancount != 0 || nscount != 0 || arcount > 1 {
        return None;
    }
    let mut name = String::new();
    let name_end = walk_plain_name(msg, |label| {
        if !name.is_empty() {
            name.push('.');
        }
        // Plain bytes are ASCII.
        name.extend(label.iter().map(|b| char::from(*b)));
        Some(())
    })?;
    let qtype = u16_at(msg, name_end)?;
    if u16_at(msg, name_end + 2)? != CLASS_IN || qtype == TYPE_OPT {
        return None;
    }
    let question_end = name_end + 4;
    let payload = match arcount {
        0 if msg.len() == question_end => None,
        1 => Some(bare_opt(msg, question_end)?),
        _ => return None,
    };
    Some(Query {
        id: u16_at(msg, 0)?,
        name,
        qtype,
        question_end,
        edns: payload.is_some(),
        udp_payload: payload.map_or(512, |p| p.max(512)),
    })
}

/// Whether the plain name at `HEADER_LEN` of `resp` spells `query`'s name ignoring ASCII case; offset past it.
fn same_question_name(resp: &[u8], query: &Query) -> Option<usize> {
    let mut ours = query.name.split('.');
    let end = walk_plain_name(resp, |label| {
        ours.next()?
            .as_bytes()
            .eq_ignore_ascii_case(label)
            .then_some(())
    })?;
    ours.next().is_none().then_some(end)
}

/// An answer record at `at` owned by the question name (a pointer to it) of class IN: (type, TTL, rdata).
fn answer_at(resp: &[u8], at: usize) -> Option<(u16, u32, &[u8])> {
    if resp.get(at..at + 2)? != POINTER_TO_QUESTION || u16_at(resp, at + 4)? != CLASS_IN {
        return None;
    }
    let rdlen = usize::from(u16_at(resp, at + 10)?);
    let rdata = resp.get(at + 12..at + 12 + rdlen)?;
    Some((u16_at(resp, at + 2)?, u32_at(resp, at + 6)?, rdata))
}

/// The addresses of answers that are A/AAAA records of the question name itself; the offset past them.
fn plain_answers(resp: &[u8], mut at: usize, count: u16, info: &mut ResponseInfo) -> Option<usize> {
    let mut ttl = u32::MAX;
    for _ in 0..count {
        let (rtype, rttl, rdata) = answer_at(resp, at)?;
        let ip = match (rtype, rdata.len()) {
            (TYPE_A, 4) => IpAddr::V4(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3])),
            (TYPE_AAAA, 16) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(rdata).ok()?)),
            _ => return None,
        };
        let name = if rtype == TYPE_A { "A" } else { "AAAA" };
        if !info.rrtypes.iter().any(|t| t == name) {
            info.rrtypes.push(name.to_string());
        }
        ttl = ttl.min(rttl);
        if !info.ips.contains(&ip) {
            info.ips.push(ip);
        }
        at += 12 + rdata.len();
    }
    info.ttl = if info.ips.is_empty() { 0 } else { ttl };
    Some(at)
}

/// A response to `query` (same id, opcode QUERY, the question ignoring case) whose answers are only A/AAAA
/// records of the question name, with no authority records and at most a bare OPT: what the general path's
/// `inspect_response` would report for it. `None` for any other message, mismatches included.
pub fn plain_response(query: &Query, resp: &[u8]) -> Option<ResponseInfo> {
    let (flags, qdcount) = (u16_at(resp, 2)?, u16_at(resp, 4)?);
    let (ancount, nscount, arcount) = (u16_at(resp, 6)?, u16_at(resp, 8)?, u16_at(resp, 10)?);
    // QR=1 and opcode QUERY; one question; no authority section; at most the OPT record.
    if flags & 0xf800 != 0x8000 || qdcount != 1 || nscount != 0 || arcount > 1 {
        return None;
    }
    if u16_at(resp, 0)? != query.id || query.name.contains('\\') {
        return None;
    }
    let name_end = same_question_name(resp, query)?;
    if u16_at(resp, name_end)? != query.qtype || u16_at(resp, name_end + 2)? != CLASS_IN {
        return None;
    }
    let mut info = ResponseInfo {
        rcode: flags & 0x000f,
        truncated: flags & 0x0200 != 0,
        names: vec![query.name.to_ascii_lowercase()],
        ..Default::default()
    };
    let end = plain_answers(resp, name_end + 4, ancount, &mut info)?;
    match arcount {
        0 if resp.len() == end => Some(info),
        1 => bare_opt(resp, end).map(|_| info),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    //! Differential: every message goes through the fast path and the general path; where the fast path answers,
    //! both must agree.
    use super::*;
    use crate::message::{inspect_response_general as inspect_response, parse_query_general};
    use crate::testutil::{a, cname, query, response};
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::RecordType;

    fn both_queries(msg: &[u8]) -> Option<Query> {
        let fast = plain_query(msg)?;
        assert_eq!(Ok(fast.clone()), parse_query_general(msg), "query {msg:?}");
        Some(fast)
    }

    #[test]
    fn plain_queries_read_as_the_general_path_reads_them() {
        for (name, edns) in [
            ("api.stripe.com", false),
            ("aPi.StRiPe.CoM", true),
            ("_srv._tcp.x-y.test", true),
            ("a", false),
        ] {
            for qtype in [RecordType::A, RecordType::AAAA, RecordType::TXT] {
                let q = both_queries(&query(7, name, qtype, edns)).expect("fast path");
                assert_eq!(q.name, name);
            }
        }
    }

    #[test]
    fn unusual_queries_are_left_to_the_general_path() {
        let root = query(1, ".", RecordType::NS, false);
        let mut dash = query(1, "ax.test", RecordType::A, false);
        dash[13] = b'-';
        let mut trailing = query(1, "a.test", RecordType::A, false);
        trailing.push(0);
        let mut chaos = query(1, "a.test", RecordType::A, false);
        let n = chaos.len();
        chaos[n - 1] = 3;
        let mut opt_rcode = query(1, "a.test", RecordType::A, true);
        let n = opt_rcode.len();
        opt_rcode[n - 6] = 1;
        for msg in [root, dash, trailing, chaos, opt_rcode] {
            assert_eq!(plain_query(&msg), None, "{msg:?}");
        }
        let mut escaped = query(1, "ab.test", RecordType::A, false);
        escaped[13] = b'.';
        assert_eq!(plain_query(&escaped), None);
        assert!(
            parse_query_general(&escaped).unwrap().name.contains('\\'),
            "the general path escapes it"
        );
    }

    fn both_responses(q: &Query, resp: &[u8]) -> Option<ResponseInfo> {
        let fast = plain_response(q, resp)?;
        assert_eq!(
            Ok(fast.clone()),
            inspect_response(q, resp),
            "response {resp:?}"
        );
        Some(fast)
    }

    #[test]
    fn plain_answers_teach_what_the_general_path_teaches() {
        for edns in [false, true] {
            let msg = query(9, "Api.Stripe.com", RecordType::A, edns);
            let q = both_queries(&msg).unwrap();
            // Owners spelled as the question, so they are written as pointers to it.
            let four = vec![
                a("Api.Stripe.com", 300, "203.0.113.10"),
                a("Api.Stripe.com", 60, "203.0.113.11"),
                a("Api.Stripe.com", 90, "203.0.113.10"),
                a("Api.Stripe.com", 30, "2001:db8::1"),
            ];
            let info = both_responses(
                &q,
                &response(&msg, None, four, ResponseCode::NoError, false),
            )
            .expect("fast path");
            assert_eq!((info.ips.len(), info.ttl), (3, 30));
            assert_eq!(info.rrtypes, ["A", "AAAA"]);
            let lower = Some("api.stripe.com");
            let empty = response(&msg, lower, vec![], ResponseCode::NoError, true);
            let info = both_responses(&q, &empty).expect("fast path");
            assert!(info.truncated && info.ips.is_empty() && info.ttl == 0);
            let high_ttl = vec![a("api.stripe.com", 0x8000_0001, "203.0.113.10")];
            both_responses(
                &q,
                &response(&msg, lower, high_ttl, ResponseCode::NoError, false),
            )
            .expect("fast path");
        }
    }

    #[test]
    fn other_answers_are_left_to_the_general_path() {
        let msg = query(9, "alias.test", RecordType::A, false);
        let q = both_queries(&msg).unwrap();
        let chain = vec![
            cname("alias.test", 30, "b.test"),
            a("b.test", 20, "198.51.100.20"),
        ];
        let other_owner = vec![a("b.test", 20, "198.51.100.20")];
        let nx = response(&msg, None, vec![], ResponseCode::NXDomain, false);
        let mut other_id = response(&msg, None, vec![], ResponseCode::NoError, false);
        other_id[1] ^= 1;
        for resp in [
            response(&msg, None, chain, ResponseCode::NoError, false),
            response(&msg, None, other_owner, ResponseCode::NoError, false),
            response(
                &msg,
                Some("other.test"),
                vec![],
                ResponseCode::NoError,
                false,
            ),
            other_id,
        ] {
            assert_eq!(plain_response(&q, &resp), None, "{resp:?}");
        }
        // NXDOMAIN without an SOA is plain; the rcode comes through.
        assert_eq!(both_responses(&q, &nx).unwrap().rcode, 3);
    }
}
