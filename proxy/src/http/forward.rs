//! Layer 5, forward: the admitted request to the original destination through the marked, pooled upstream
//! client (a bodyless request is replayed once when the upstream refused it unprocessed), and upgraded
//! connections (WebSocket, CONNECT) spliced.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tower::Service;

use super::exchange::{Answered, Outcome, Refused, Routed};
use super::normalise::{strip_hop_by_hop, wants_upgrade};
use super::reply::Refusal;
use crate::body::BoxError;
use crate::body::Holding;
use crate::body_rate::MinRateBody;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Sends admitted requests to the original destination.
#[derive(Debug, Clone, Copy)]
pub struct Forward;

impl Service<Routed> for Forward {
    type Response = Outcome;
    type Error = Infallible;
    type Future = BoxFuture<Result<Outcome, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(
        &mut self,
        Routed {
            mut req,
            mut exchange,
        }: Routed,
    ) -> Self::Future {
        Box::pin(async move {
            let ctx = &exchange.ctx;
            let is_connect = req.method() == Method::CONNECT;
            let upgrade = is_connect || wants_upgrade(&req);
            let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
            let http2 = req.version() == Version::HTTP_2;
            // Hop-by-hop headers were stripped before the policy saw the request (normalise).
            *req.version_mut() = if http2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            };
            let client = ctx
                .upstream
                .client(&ctx.proxy.upstream, ctx.dst, http2, &ctx.dial);
            // A bodyless request can be replayed once if the upstream refused it unprocessed (HTTP/2 GOAWAY). Only an
            // HTTP/2 stream can be refused so (the upstream's own, or the tunnel's CONNECT stream): a plain HTTP/1
            // request keeps no copy of its head.
            let may_replay = http2 || matches!(ctx.dial, crate::upstream::Dial::Tunnel(_));
            let replay = (may_replay && !upgrade && http_body::Body::is_end_stream(req.body()))
                .then(|| replay_head(&req));
            let limits = &ctx.proxy.limits;
            let (grace, rate) = (limits.body_grace, limits.body_min_rate);
            let (parts, body) = req.into_parts();
            let body = MinRateBody::new(body, grace, rate);
            let body_too_slow = body.tripped();
            let req = Request::from_parts(parts, body.boxed_unsync());
            let mut result = client.request(req).await;
            if let (Err(e), Some(head)) = (&result, replay)
                && crate::upstream::refused_unprocessed(e)
            {
                tracing::debug!(dst = %ctx.dst, "upstream refused the request unprocessed ({e}); retrying once");
                result = client.request(head).await;
            }
            let mut resp = match result {
                Ok(resp) => resp,
                Err(e) => {
                    // HTTP/1 keeps the body's error as a source; HTTP/2 resets the stream and says only that.
                    let slow = crate::body_rate::too_slow(&e).or(body_too_slow.get());
                    let detail = slow
                        .map_or_else(|| crate::error_chain::error_chain(&e), ToString::to_string);
                    tracing::debug!(dst = %ctx.dst, "upstream request failed: {detail}");
                    let refusal = match slow {
                        Some(_) => Refusal::TooSlow(detail),
                        None => Refusal::Upstream(detail),
                    };
                    return Ok(Err(Refused { refusal, exchange }));
                }
            };
            if let (Some(down), true) = (
                downstream_upgrade,
                switched_protocols(is_connect, resp.status()),
            ) {
                let up = hyper::upgrade::on(&mut resp);
                let mut tunnels = ctx.tunnels.lock().unwrap_or_else(|p| p.into_inner());
                tunnels
                    .get_or_insert_with(Default::default)
                    .spawn(async move {
                        match tokio::try_join!(down, up) {
                            Ok((d, u)) => {
                                let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                                let _ = crate::tcp::splice(&mut d, &mut u).await;
                            }
                            Err(e) => tracing::debug!("upgrade did not complete: {e}"),
                        }
                    });
            } else {
                strip_hop_by_hop(resp.headers_mut(), false);
            }
            let in_flight = exchange.in_flight.take();
            let resp =
                resp.map(|b| Holding::new(b.map_err(BoxError::from), in_flight).boxed_unsync());
            Ok(Ok(Answered { resp, exchange }))
        })
    }
}

/// Whether a response switched the connection to a tunnel.
pub(super) fn switched_protocols(is_connect: bool, status: StatusCode) -> bool {
    status == StatusCode::SWITCHING_PROTOCOLS || (is_connect && status.is_success())
}

/// A copy of a bodyless request's head with an empty body, for a replay.
fn replay_head<B>(req: &Request<B>) -> Request<crate::upstream::UpstreamBody> {
    let mut r = Request::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    r
}
