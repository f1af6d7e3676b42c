//! Layer 4, rewrite: the header actions the allowing rule asks for, then the upstream target: an absolute URI
//! (hyper's client needs one) whose authority is the checked host, the *normalised* path, and (HTTP/1.1) a Host
//! header equal to that host, so the upstream receives exactly what policy checked. HTTP/2 carries the host as
//! `:authority` only.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures::future::Either;
use http::header::{self, HeaderValue};
use http::{Method, Request, Uri, Version};
use tower::Service;

use super::normalise::Target;
use super::reply::Refusal;
use super::{Outcome, Routed, Step, refuse};
use crate::header_actions;

#[derive(Debug, Clone)]
pub struct Rewrite<S> {
    inner: S,
}

impl<S> Rewrite<S> {
    pub fn new(inner: S) -> Self {
        Rewrite { inner }
    }
}

impl<S> Service<Routed> for Rewrite<S>
where
    S: Service<Routed, Response = Outcome, Error = Infallible>,
{
    type Response = Outcome;
    type Error = Infallible;
    type Future = Step<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut routed: Routed) -> Self::Future {
        let exchange = &mut routed.exchange;
        match header_actions::apply(routed.req.headers_mut(), &exchange.actions) {
            Ok(logged) => exchange.logged_headers = logged,
            Err(e) => {
                let refusal = Refusal::HeaderAction(format!("{}; {e}", exchange.policy));
                return refuse(refusal, routed.exchange);
            }
        }
        match set_upstream_target(&mut routed.req, &exchange.target) {
            Ok(()) => Either::Right(self.inner.call(routed)),
            Err(why) => refuse(Refusal::Malformed(why), routed.exchange),
        }
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
