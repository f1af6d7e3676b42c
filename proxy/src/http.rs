//! The HTTP family (HTTP/1.1, h2c, gRPC, WebSocket/Upgrade, CONNECT) as a tower stack per downstream connection,
//! one job per layer, outermost first:
//!
//! 1. [`record::Record`]: starts the request's flow record, and at the end turns the typed outcome into the
//!    response (a [`reply::Refusal`] becomes its local reply in one place) and the finished record.
//! 2. [`normalise::Normalise`]: one host, one canonical path, hop-by-hop headers gone.
//! 3. [`authorise::Authorise`]: the decision against the policy current when the request arrived.
//! 4. [`rewrite::Rewrite`]: the allowed header actions, and the upstream URI and Host.
//! 5. [`forward::Forward`]: the pooled upstream client; splices upgraded connections.
//!
//! The request travels down as a [`Routed`] and its [`Exchange`] (what the layers learned) comes back up with
//! the response or the refusal; layers 2 to 4 are synchronous [`Stage`]s and allocate nothing of their own. The decision
//! itself is pure (`decision.rs`). Keep-alive and HTTP/2 connections are not grandfathered across a policy
//! reload: every request is checked against the snapshot current when it arrives.

mod authorise;
mod exchange;
mod forward;
mod normalise;
mod record;
mod reply;
mod rewrite;

use std::sync::Arc;

use tower::ServiceBuilder;

pub use crate::body::{BoxError, ProxyBody};
pub use exchange::{Answered, ConnCtx, Exchange, InFlight, Refused, Routed, Stage, Staged};
pub use reply::{ACCESS_DENIED, empty_response, http_denied};

/// The per-connection stack without the record layer: the synchronous stages, then forward.
type Stages = Staged<
    normalise::Normalise,
    Staged<authorise::Authorise, Staged<rewrite::Rewrite, forward::Forward>>,
>;

/// The per-connection stack hyper calls for each request.
pub type HttpStack = record::Record<Stages>;

/// The service hyper calls for each request of one connection: the layers in order.
pub fn service(ctx: Arc<ConnCtx>) -> HttpStack {
    ServiceBuilder::new()
        .layer_fn(|inner| record::Record::new(ctx.clone(), inner))
        .layer_fn(|inner| Staged::new(normalise::Normalise, inner))
        .layer_fn(|inner| Staged::new(authorise::Authorise, inner))
        .layer_fn(|inner| Staged::new(rewrite::Rewrite, inner))
        .service(forward::Forward)
}
