//! Layer 4, rewrite: the header actions the allowing rule asks for, then the upstream target: an absolute URI
//! (hyper's client needs one) whose authority is the checked host, the *normalised* path, and (HTTP/1.1) a Host
//! header equal to that host, so the upstream receives exactly what policy checked. HTTP/2 carries the host as
//! `:authority` only.

use http::header::{self, HeaderValue};
use http::{Method, Request, Uri, Version};

use super::exchange::{Routed, Stage, Target};
use super::reply::Refusal;
use crate::header_actions;

/// The rewrite stage (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct Rewrite;

impl Stage for Rewrite {
    fn run(&self, routed: &mut Routed) -> Result<(), Refusal> {
        let exchange = &mut routed.exchange;
        exchange.logged_headers =
            header_actions::apply(routed.req.headers_mut(), &exchange.actions)
                .map_err(|e| Refusal::HeaderAction(format!("{}; {e}", exchange.policy)))?;
        set_upstream_target(&mut routed.req, &exchange.target).map_err(Refusal::Malformed)
    }
}

/// Points the request at the upstream (see the module documentation).
pub(super) fn set_upstream_target<B>(req: &mut Request<B>, target: &Target) -> Result<(), String> {
    if req.method() == Method::CONNECT {
        return Ok(());
    }
    let Target { host, path } = target;
    let path = if path == "*" { "/" } else { path.as_str() };
    let uri: Uri = format!("http://{host}{path}").parse().map_err(|e| {
        format!("cannot build the upstream URI from host {host:?} and path {path:?}: {e}")
    })?;
    *req.uri_mut() = uri;
    if req.version() == Version::HTTP_2 {
        req.headers_mut().remove(header::HOST);
    } else {
        let value = HeaderValue::from_str(host).map_err(|e| format!("host {host:?}: {e}"))?;
        req.headers_mut().insert(header::HOST, value);
    }
    Ok(())
}
