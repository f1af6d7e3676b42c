//! What the layers of the HTTP stack pass between them: the connection a request arrived on ([`ConnCtx`]), the
//! request on its way down ([`Routed`]) with what the layers learned about it ([`Exchange`]), the typed outcome
//! coming back up ([`Answered`] or [`Refused`]), and the [`Stage`] a synchronous layer implements with the tower
//! layer that runs it ([`Staged`]). The layers (`record`, `normalise`, `authorise`, `rewrite`, `forward`) depend
//! on this module; it depends on none of them but `reply` (the refusal a stage returns).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use http::{Request, Response};
use hyper::body::Incoming;
use tower::Service;

use super::reply::Refusal;
use crate::body::ProxyBody;
use crate::flow::TrafficDirection;
use crate::inputs::Proxy;
use crate::policy_adapter::HeaderAction;
use crate::policy_source::PolicySnapshot;

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
    /// The endpoints of this connection's flow records, built once per policy snapshot.
    pub endpoints: crate::flow_record::ConnEndpoints,
}

/// One synchronous job on a request (normalise, authorise, rewrite): hand it on, or refuse it.
pub trait Stage {
    fn run(&self, routed: &mut Routed) -> Result<(), Refusal>;
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
    pub(super) ctx: Arc<ConnCtx>,
    /// The snapshot the record's endpoints came from; the authorise layer takes it, so the decision comes from
    /// the same generation and the snapshot is not held while forwarding.
    pub(super) snapshot: Option<Arc<PolicySnapshot>>,
    /// Whether the client speaks gRPC: local replies are shaped for it.
    pub(super) is_grpc: bool,
    /// What policy checks and the upstream receives (normalise).
    pub(super) target: Target,
    /// The request's URL as recorded (normalise; the raw host and path when it was refused).
    pub(super) url: String,
    /// The rule that allowed the request (authorise).
    pub(super) policy: String,
    pub(super) direction: Option<TrafficDirection>,
    /// Header actions the allowing rule asks for (authorise), carried out by rewrite.
    pub(super) actions: Vec<HeaderAction>,
    /// Headers named by `LOG` header actions (rewrite).
    pub(super) logged_headers: Vec<(String, String)>,
    /// This request's place in the connection's in-flight count: forward moves it into the response body, so the
    /// exchange is over when hyper has sent that body; a refusal releases it with the exchange.
    pub(super) in_flight: Option<InFlight>,
}

/// One request counted in its connection's [`crate::activity::RequestClock`] until dropped. An HTTP/1 connection
/// is parked (its hyper state freed) only while no request is in flight.
#[derive(Debug)]
pub struct InFlight(Arc<ConnCtx>);

impl InFlight {
    pub(super) fn start(ctx: &Arc<ConnCtx>) -> Self {
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
pub(super) type Outcome = Result<Answered, Refused>;

#[derive(Debug)]
pub struct Answered {
    pub(super) resp: Response<ProxyBody>,
    pub(super) exchange: Exchange,
}

#[derive(Debug)]
pub struct Refused {
    pub(super) refusal: Refusal,
    pub(super) exchange: Exchange,
}

/// What normalise hands on: the host and path that policy checks AND the upstream receives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub path: String,
}
