//! Fuzzes the DNS proxy's message path (the `tollgate-dns-codec` crate, `proxy/codecs/dns`, so the target does not
//! build the whole daemon): arbitrary bytes as a client query (check, self-built answers), and as an upstream
//! response to a fixed query (inspection, CNAME chain following, 0x20 restore). Must never panic; every answer the
//! proxy builds itself must be a well-formed DNS response; the in-place fast paths (`wire`) must agree with the
//! general (hickory-proto) path on every message they accept.
#![no_main]

use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;

use tollgate_dns_codec::message::*;
use tollgate_dns_codec::wire;

/// `www.example.com A` with EDNS, id 0x1234, as a client would send it.
const QUERY: &[u8] = &[
    0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1, 3, b'w', b'W', b'w', 7, b'e', b'x', b'a', b'm',
    b'p', b'l', b'e', 3, b'c', b'o', b'm', 0, 0, 1, 0, 1, 0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0,
];

fuzz_target!(|data: &[u8]| {
    // As a client query.
    let query = parse_query(data);
    if query.is_ok() && wire::plain_query(data).is_some() {
        assert_eq!(query, parse_query_general(data), "fast and general query paths differ");
    }
    match query {
        Ok(q) => {
            for rcode in [Rcode::Refused, Rcode::NxDomain, Rcode::ServFail] {
                let out = answer_from_query(data, &q, rcode);
                let m = Message::from_vec(&out).expect("self-built answers parse");
                assert_eq!(m.metadata.id, q.id);
                assert_eq!(m.queries.len(), 1);
            }
        }
        Err(bad) => {
            if let Some(out) = bad.reply(data) {
                Message::from_vec(&out).expect("FORMERR/NOTIMP parse");
            }
        }
    }
    // As an upstream response to a fixed query (with the id patched in so the deeper checks run).
    let q = parse_query(QUERY).expect("fixed query");
    let mut resp = data.to_vec();
    set_id(&mut resp, q.id);
    if let Some(fast) = wire::plain_response(&q, &resp) {
        assert_eq!(
            Ok(fast),
            inspect_response_general(&q, &resp),
            "fast and general response paths differ"
        );
    }
    if let Ok(info) = inspect_response(&q, &resp) {
        assert!(info.names.len() <= MAX_CNAME_CHAIN + 1);
        assert!(info.ips.is_empty() == (info.ttl == 0) || info.ttl == 0);
        restore_case(&mut resp, QUERY, &q);
    }
    let _ = rcode_of(data);
});
