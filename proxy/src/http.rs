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
mod forward;
mod normalise;
mod record;
mod reply;
mod rewrite;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::{Either, Ready, ready};
use http::{Request, Response};
use hyper::body::Incoming;
use std::task::{Context, Poll};

use tower::{Service, ServiceBuilder};

use crate::flow::TrafficDirection;
use crate::inputs::Proxy;
use crate::policy_adapter::HeaderAction;
use crate::policy_source::PolicySnapshot;

pub use crate::body::{BoxError, ProxyBody};
pub use reply::{ACCESS_DENIED, empty_response, http_denied};

/// The connection a request arrived on.
#[derive(Debug)]
pub struct ConnCtx {
    pub proxy: Arc<Proxy>,
    pub client: crate::decision::Downstream,
    pub dst: SocketAddr,
    /// How upstream connections are made: direct, or through another node's tunnel.
    pub dial: crate::upstream::Dial,
    /// Tells the framing guard whether a request asking to switch protocols was switched.
    pub upgrade: Arc<crate::request_framing::UpgradeSignal>,
    /// When requests last started or were answered (the connection's request-level idle clock).
    pub requests: crate::activity::RequestClock,
    /// Upgraded tunnels (WebSocket, CONNECT) spliced from this connection: they outlive hyper's connection task
    /// and keep the connection's permit, idle timeout and drain (`connection::serve_http` waits for them).
    /// `None` until the first one (a join set allocates).
    pub tunnels: std::sync::Mutex<Option<tokio::task::JoinSet<()>>>,
    /// This connection's upstream client (looked up in the pool once).
    pub upstream: crate::upstream::ConnUpstream,
}

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

/// One synchronous job on a request (normalise, authorise, rewrite): hand it on, or refuse it.
pub trait Stage {
    fn run(&self, routed: &mut Routed) -> Result<(), reply::Refusal>;
}

/// The tower layer of a [`Stage`]: runs it, then the inner layer unless the stage refused. Its future is the inner
/// layer's or an immediate refusal (no allocation).
#[derive(Debug, Clone)]
pub struct Staged<T, S> {
    stage: T,
    inner: S,
}

impl<T, S> Staged<T, S> {
    pub fn new(stage: T, inner: S) -> Self {
        Staged { stage, inner }
    }
}

impl<T, S> Service<Routed> for Staged<T, S>
where
    T: Stage,
    S: Service<Routed, Response = Outcome, Error = Infallible>,
{
    type Response = Outcome;
    type Error = Infallible;
    type Future = Either<Ready<Result<Outcome, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut routed: Routed) -> Self::Future {
        match self.stage.run(&mut routed) {
            Ok(()) => Either::Right(self.inner.call(routed)),
            Err(refusal) => Either::Left(ready(Ok(Err(Refused {
                refusal,
                exchange: routed.exchange,
            })))),
        }
    }
}

/// A request on its way down the layers.
#[derive(Debug)]
pub struct Routed {
    pub req: Request<Incoming>,
    pub exchange: Exchange,
}

/// What the layers learned about one request. It travels down with the request and back up with the answer or
/// the refusal, where the record layer turns it into the flow record.
#[derive(Debug)]
pub struct Exchange {
    ctx: Arc<ConnCtx>,
    /// The snapshot the record's endpoints came from; the authorise layer takes it, so the decision comes from
    /// the same generation and the snapshot is not held while forwarding.
    snapshot: Option<Arc<PolicySnapshot>>,
    /// Whether the client speaks gRPC: local replies are shaped for it.
    is_grpc: bool,
    /// What policy checks and the upstream receives (normalise).
    target: normalise::Target,
    /// The request's URL as recorded (normalise; the raw host and path when it was refused).
    url: String,
    /// The rule that allowed the request (authorise).
    policy: String,
    direction: Option<TrafficDirection>,
    /// Header actions the allowing rule asks for (authorise), carried out by rewrite.
    actions: Vec<HeaderAction>,
    /// Headers named by `LOG` header actions (rewrite).
    logged_headers: Vec<(String, String)>,
    /// This request's place in the connection's in-flight count: forward moves it into the response body, so the
    /// exchange is over when hyper has sent that body; a refusal releases it with the exchange.
    in_flight: Option<InFlight>,
}

/// One request counted in its connection's [`crate::activity::RequestClock`] until dropped. An HTTP/1 connection
/// is parked (its hyper state freed) only while no request is in flight.
#[derive(Debug)]
pub struct InFlight(Arc<ConnCtx>);

impl InFlight {
    fn start(ctx: &Arc<ConnCtx>) -> Self {
        ctx.requests.request_started();
        InFlight(ctx.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.requests.request_done();
    }
}

/// What happened to a request below the record layer: forwarded (the upstream's response), or refused.
type Outcome = Result<Answered, Refused>;

#[derive(Debug)]
pub struct Answered {
    resp: Response<ProxyBody>,
    exchange: Exchange,
}

#[derive(Debug)]
pub struct Refused {
    refusal: reply::Refusal,
    exchange: Exchange,
}
