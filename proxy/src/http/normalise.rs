//! Layer 2, normalise: one host, one canonical path, hop-by-hop headers gone. Stripping comes first so that
//! policy sees, and header actions apply to, exactly what the upstream will receive: a `Connection` token can
//! never remove a header a policy added.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Version};

use super::exchange::{Routed, Stage, Target};
use super::reply::Refusal;
use crate::request_path;

/// The normalise stage (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct Normalise;

impl Stage for Normalise {
    fn run(&self, routed: &mut Routed) -> Result<(), Refusal> {
        let (req, exchange) = (&mut routed.req, &mut routed.exchange);
        match normalise(req, exchange.ctx.dst) {
            Ok(target) => {
                exchange.url = record_url(&target.host, &target.path);
                exchange.target = target;
                Ok(())
            }
            Err(refusal) => {
                exchange.url = record_url(&raw_host(req), req.uri().path());
                Err(refusal)
            }
        }
    }
}

/// The URL a flow record shows for a request (`http://host/path`), built without the formatting machinery.
fn record_url(host: &str, path: &str) -> String {
    let mut url = String::with_capacity("http://".len() + host.len() + path.len());
    url.push_str("http://");
    url.push_str(host);
    url.push_str(path);
    url
}

/// The checks and the stripping, on one request.
pub(super) fn normalise<B>(req: &mut Request<B>, dst: SocketAddr) -> Result<Target, Refusal> {
    let mut host = request_host(req).map_err(|e| Refusal::Malformed(e.to_string()))?;
    if host.is_empty() {
        if req.version() == Version::HTTP_11 {
            return Err(Refusal::Malformed(
                "HTTP/1.1 request without a Host header (RFC 9112 section 3.2)".into(),
            ));
        }
        // HTTP/1.0 without Host: the upstream will be sent the address, so that is what policy checks.
        host = dst.to_string();
    }
    let path = policy_target(req).map_err(|e| Refusal::Malformed(e.to_string()))?;
    let is_connect = req.method() == Method::CONNECT;
    let keep_upgrade = !is_connect && wants_upgrade(req);
    strip_hop_by_hop(req.headers_mut(), keep_upgrade);
    Ok(Target { host, path })
}

/// Why a request's host is refused (400): the host the policy checks must be exactly the one the upstream gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("request has {0} Host headers; send exactly one (RFC 9112 section 3.2)")]
    Duplicate(usize),
    #[error(
        "request target names host {authority:?} but the Host header says {host:?}; they must agree"
    )]
    Mismatch { authority: String, host: String },
    #[error("Host header is not visible ASCII")]
    NotAscii,
}

/// The one host a request names: the URI authority (HTTP/2 `:authority`, absolute-form) or the Host header. A
/// request naming two different hosts, or carrying two Host headers, is refused: policy would check one and the
/// upstream could act on the other.
fn request_host<B>(req: &Request<B>) -> Result<String, HostError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    let extra = hosts.count();
    if extra > 0 {
        return Err(HostError::Duplicate(extra + 1));
    }
    let host = host
        .map(|h| h.to_str().map_err(|_| HostError::NotAscii))
        .transpose()?;
    match (req.uri().authority(), host) {
        (Some(a), Some(h)) if !a.as_str().eq_ignore_ascii_case(h) => Err(HostError::Mismatch {
            authority: a.as_str().to_string(),
            host: h.to_string(),
        }),
        (Some(a), _) => Ok(a.as_str().to_string()),
        (None, h) => Ok(h.unwrap_or("").to_string()),
    }
}

/// The host as the client sent it, for the record of a refused request.
fn raw_host<B>(req: &Request<B>) -> String {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            let h = req.headers().get(header::HOST)?;
            Some(String::from_utf8_lossy(h.as_bytes()).into_owned())
        })
        .unwrap_or_default()
}

/// What policy matches as the path, and what is forwarded: the normalized path (CONNECT: the authority).
fn policy_target<B>(req: &Request<B>) -> Result<String, request_path::PathError> {
    if req.method() == Method::CONNECT {
        return Ok(req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default());
    }
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if req.method() == Method::OPTIONS && pq == "*" {
        return Ok("*".to_string());
    }
    request_path::normalize(pq)
}

/// Hop-by-hop headers a proxy must not forward (RFC 9110 section 7.6.1), plus those named in `Connection`.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most requests carry none of them: one pass over the names they have, not a lookup for each name below.
    if !keep_upgrade && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // The names `Connection` lists, removed by `&str` (looked up case-insensitively without building a
    // `HeaderName`). Its values are shared copies of the request's bytes; a second value is rare.
    let mut listed = headers.get_all(header::CONNECTION).iter();
    let first = listed.next().cloned();
    let more: Vec<HeaderValue> = listed.cloned().collect();
    for value in first.iter().chain(&more) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for name in value.split(',').map(str::trim) {
            if !(keep_upgrade && name.eq_ignore_ascii_case("upgrade")) {
                headers.remove(name);
            }
        }
    }
    for name in ALWAYS_STRIPPED {
        headers.remove(name);
    }
    if let Some(te) = headers.get(header::TE)
        && !te.as_bytes().eq_ignore_ascii_case(b"trailers")
    {
        headers.remove(header::TE);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// Hop-by-hop headers removed whatever their value (`Connection`, `TE` and `Upgrade` are looked at first).
const ALWAYS_STRIPPED: [&str; 5] = [
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "trailer",
    "http2-settings",
];

/// A header `strip_hop_by_hop` removes or rewrites whenever it is present (names listed in `Connection` can only
/// be present with it).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(name, "connection" | "te" | "upgrade") || ALWAYS_STRIPPED.contains(&name)
}

/// HTTP/1.1 `Upgrade` other than `h2c`. An h2c upgrade is declined (the request is served as HTTP/1.1, which RFC
/// 9113 allows), because splicing an upgraded h2c connection would let its later requests bypass the per-request
/// policy checks.
pub(super) fn wants_upgrade<B>(req: &Request<B>) -> bool {
    if req.version() != Version::HTTP_11 {
        return false;
    }
    let connection_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    let proto = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    connection_upgrade && !proto.is_empty() && !proto.trim().eq_ignore_ascii_case("h2c")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header_actions;
    use crate::http::rewrite::set_upstream_target;

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn policy_target_is_the_normalized_path() {
        assert_eq!(
            policy_target(&req("GET", "/api/v1/../admin?x=1", &[])).unwrap(),
            "/api/admin?x=1"
        );
        assert_eq!(
            policy_target(&req("GET", "http://h/%2e%2e//admin", &[])).unwrap(),
            "/admin"
        );
        assert!(policy_target(&req("GET", "/a%2Fb", &[])).is_err());
        assert_eq!(
            policy_target(&req("CONNECT", "example.com:443", &[])).unwrap(),
            "example.com:443"
        );
        assert_eq!(policy_target(&req("OPTIONS", "*", &[])).unwrap(), "*");
    }

    #[test]
    fn the_upstream_gets_the_checked_host_and_normalized_path() {
        let dst: SocketAddr = "10.0.1.20:8080".parse().unwrap();
        let mut r = req("GET", "/api/v1/../admin", &[("host", "api")]);
        let t = normalise(&mut r, dst).unwrap();
        assert_eq!(
            t,
            Target {
                host: "api".into(),
                path: "/api/admin".into()
            }
        );
        set_upstream_target(&mut r, &t).unwrap();
        assert_eq!(r.uri().to_string(), "http://api/api/admin");
        assert_eq!(r.headers()["host"], "api");
        // Absolute form with a matching Host (any case): the authority is what both policy and upstream see.
        let mut r = req("GET", "http://API.example/x", &[("host", "api.example")]);
        let t = normalise(&mut r, dst).unwrap();
        set_upstream_target(&mut r, &t).unwrap();
        assert_eq!(r.headers()["host"], "API.example");
        assert_eq!(r.headers().get_all("host").iter().count(), 1);
        // HTTP/1.0 without Host: the address is the host, checked and sent.
        let mut r = req("GET", "/x", &[]);
        *r.version_mut() = Version::HTTP_10;
        let t = normalise(&mut r, dst).unwrap();
        assert_eq!(t.host, "10.0.1.20:8080");
        set_upstream_target(&mut r, &t).unwrap();
        assert_eq!(r.uri().to_string(), "http://10.0.1.20:8080/x");
    }

    /// The host policy checks is the one the upstream receives: two hosts in one request are refused.
    #[test]
    fn requests_naming_two_hosts_are_refused() {
        let dst: SocketAddr = "10.0.1.20:8080".parse().unwrap();
        let refused = |mut r: Request<()>| match normalise(&mut r, dst) {
            Err(Refusal::Malformed(why)) => why,
            other => panic!("{:?} {:?}: {other:?}", r.uri(), r.headers()),
        };
        let why = refused(req(
            "GET",
            "http://allowed.example/public/a",
            &[("host", "evil.internal")],
        ));
        assert!(why.contains("evil.internal"), "{why}");
        let why = refused(req(
            "GET",
            "/public/a",
            &[("host", "allowed.example"), ("host", "evil.internal")],
        ));
        assert!(why.contains("2 Host headers"), "{why}");
        // HTTP/2: `:authority` and a `host` header that disagree.
        let mut r = req(
            "GET",
            "http://allowed.example/public/a",
            &[("host", "evil.internal")],
        );
        *r.version_mut() = Version::HTTP_2;
        refused(r);
        let why = refused(req("GET", "/public/a", &[]));
        assert!(why.contains("without a Host"), "{why}");
    }

    /// A `Connection` token naming a header the policy adds cannot remove it: stripping comes before the actions.
    #[test]
    fn connection_tokens_are_stripped_before_header_actions() {
        use crate::policy_adapter::HeaderAction;
        let dst: SocketAddr = "10.0.1.20:8080".parse().unwrap();
        let mut r = req(
            "GET",
            "/",
            &[
                ("host", "api"),
                ("connection", "x-tenant"),
                ("x-tenant", "forged"),
            ],
        );
        normalise(&mut r, dst).unwrap();
        assert!(r.headers().get("x-tenant").is_none(), "{:?}", r.headers());
        header_actions::apply(
            r.headers_mut(),
            &[HeaderAction::Replace {
                name: "x-tenant".into(),
                value: "blue".into(),
            }],
        )
        .unwrap();
        assert_eq!(r.headers()["x-tenant"], "blue");
        assert!(r.headers().get("connection").is_none());
    }

    #[test]
    fn hop_by_hop_headers_are_stripped() {
        let mut h = req(
            "GET",
            "/",
            &[
                ("connection", "keep-alive, x-secret-hop"),
                ("x-secret-hop", "1"),
                ("keep-alive", "5"),
                ("te", "gzip"),
                ("x-end", "1"),
            ],
        )
        .headers()
        .clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            vec!["x-end"]
        );
        let mut h = req(
            "GET",
            "/",
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("te", "trailers"),
            ],
        )
        .headers()
        .clone();
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_stripped() {
        // The fast path skips requests with none of them: each one alone must still take the full path.
        for name in ALWAYS_STRIPPED
            .into_iter()
            .chain(["te", "upgrade", "connection"])
        {
            let mut h = req("GET", "/", &[(name, "x"), ("x-end", "1")])
                .headers()
                .clone();
            strip_hop_by_hop(&mut h, false);
            let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(left, vec!["x-end"], "{name}");
        }
        let mut h = req("GET", "/", &[("x-end", "1")]).headers().clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn upgrades_except_h2c_are_tunnelled() {
        assert!(wants_upgrade(&req(
            "GET",
            "/",
            &[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "websocket")
            ]
        )));
        assert!(!wants_upgrade(&req(
            "GET",
            "/",
            &[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c")
            ]
        )));
        assert!(!wants_upgrade(&req(
            "GET",
            "/",
            &[("upgrade", "websocket")]
        )));
    }
}
