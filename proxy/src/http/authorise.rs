//! Layer 3, authorise: the normalised request against the policy snapshot current when it arrived (the one the
//! record's endpoints came from). Denied: refused; allowed: the rule and its header actions go on down.

use std::borrow::Cow;

use http::HeaderMap;

use super::exchange::{Routed, Stage};
use super::reply::Refusal;
use crate::decision::{self, RequestDecision};
use crate::flow::DropReason;

/// The authorise stage (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct Authorise;

impl Stage for Authorise {
    fn run(&self, routed: &mut Routed) -> Result<(), Refusal> {
        let exchange = &mut routed.exchange;
        // The record layer always provides a snapshot; without one nothing can be allowed.
        let snapshot = exchange.snapshot.take().ok_or_else(|| Refusal::Denied {
            reason: "no policy snapshot for the request (internal error)".into(),
            drop_reason: DropReason::PolicyDenied,
        })?;
        let headers = joined_headers(routed.req.headers());
        let header_refs: Vec<(&str, &str)> =
            headers.iter().map(|(k, v)| (*k, v.as_ref())).collect();
        let ctx = &exchange.ctx;
        let d = decision::decide_request(
            &snapshot,
            &ctx.client,
            ctx.dst,
            routed.req.method().as_str(),
            &exchange.target.path,
            &exchange.target.host,
            &header_refs,
        );
        drop(snapshot);
        exchange.direction = d.direction();
        match d {
            RequestDecision::Deny {
                reason,
                drop_reason,
                ..
            } => Err(Refusal::Denied {
                reason,
                drop_reason,
            }),
            RequestDecision::Forward {
                reason,
                header_actions,
                ..
            } => {
                exchange.policy = reason;
                exchange.actions = header_actions;
                Ok(())
            }
        }
    }
}

/// Header pairs for the policy query: names lower-case, repeated headers joined with ", ".
/// Each header name once with its values joined by ", " (what policy header matches see). A single value that is
/// valid UTF-8 (nearly all) is borrowed from the request, not copied.
fn joined_headers(headers: &HeaderMap) -> Vec<(&str, Cow<'_, str>)> {
    let mut out = Vec::with_capacity(headers.keys_len());
    for name in headers.keys() {
        let mut values = headers.get_all(name).iter();
        let first = values.next().map(|v| String::from_utf8_lossy(v.as_bytes()));
        let mut joined = first.unwrap_or_default();
        for v in values {
            let joined = joined.to_mut();
            joined.push_str(", ");
            joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
        out.push((name.as_str(), joined));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_for_policy_are_joined_per_name() {
        let r = http::Request::builder()
            .header("X-A", "1")
            .header("x-a", "2")
            .header("b", "3")
            .body(())
            .unwrap();
        let mut j = joined_headers(r.headers());
        j.sort();
        assert_eq!(j, vec![("b", "3".into()), ("x-a", "1, 2".into())]);
        assert!(matches!(j[0].1, Cow::Borrowed(_)), "one value is borrowed");
        // A value that is not UTF-8 is read lossily, alone or joined, as before.
        let r = http::Request::builder()
            .header("c", http::HeaderValue::from_bytes(b"a\xffb").unwrap())
            .header("d", "1")
            .header("d", http::HeaderValue::from_bytes(b"\xfe").unwrap())
            .body(())
            .unwrap();
        let mut j = joined_headers(r.headers());
        j.sort();
        assert_eq!(
            j,
            vec![("c", "a\u{fffd}b".into()), ("d", "1, \u{fffd}".into())]
        );
    }
}
