//! Layer 1, record: the outermost layer. It starts each request's flow record (endpoints from the snapshot the
//! decision will use), hands the request down, and turns the typed outcome into the response (a refusal becomes
//! its local reply here, nowhere else) and the finished record: every request gets exactly one.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use tower::Service;

use super::exchange::{Answered, ConnCtx, Exchange, InFlight, Outcome, Refused, Routed};
use super::forward::switched_protocols;
use crate::body::ProxyBody;
use crate::flow::HttpInfo;
use crate::flow_record::{FlowBuilder, FlowOutcome};
use crate::grpc;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

#[derive(Debug, Clone)]
pub struct Record<S> {
    ctx: Arc<ConnCtx>,
    inner: S,
}

impl<S> Record<S> {
    pub fn new(ctx: Arc<ConnCtx>, inner: S) -> Self {
        Record { ctx, inner }
    }
}

/// What the record layer notes before handing a request down.
struct Started {
    start: Instant,
    flow: FlowBuilder,
    info: HttpInfo,
    /// An HTTP/1 request the framing guard treats as asking to switch protocols (it pauses until told).
    asks_switch: bool,
    is_connect: bool,
    http2: bool,
}

impl<S> Service<Request<Incoming>> for Record<S>
where
    S: Service<Routed, Response = Outcome, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<ProxyBody>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let ctx = &self.ctx;
        let start = Instant::now();
        let is_grpc = grpc::is_grpc(req.version(), req.headers());
        let is_connect = req.method() == Method::CONNECT;
        let http2 = req.version() == Version::HTTP_2;
        let in_flight = InFlight::start(ctx);
        // One snapshot per request: the record's endpoints and the decision come from the same generation.
        let snapshot = ctx.proxy.policy.current();
        let protocol = if is_grpc { "gRPC" } else { "HTTP" };
        let flow = FlowBuilder::request(&ctx.endpoints, &snapshot, &ctx.client, ctx.dst, protocol)
            // For Hubble's trace_context; the header is forwarded untouched.
            .trace_parent(
                req.headers()
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from),
            );
        let started = Started {
            start,
            flow,
            info: HttpInfo {
                method: req.method().as_str().to_string(),
                protocol: version_label(req.version()).to_string(),
                ..Default::default()
            },
            asks_switch: !http2 && (is_connect || req.headers().contains_key(header::UPGRADE)),
            is_connect,
            http2,
        };
        let exchange = Exchange {
            ctx: ctx.clone(),
            snapshot: Some(snapshot),
            is_grpc,
            target: Default::default(),
            url: String::new(),
            policy: String::new(),
            direction: None,
            actions: Vec::new(),
            logged_headers: Vec::new(),
            in_flight: Some(in_flight),
        };
        // The layers below decide synchronously; only forwarding waits.
        let outcome = self.inner.call(Routed { req, exchange });
        Box::pin(async move {
            let Ok(outcome) = outcome.await;
            Ok(finish(started, outcome))
        })
    }
}

/// The response the client gets and the request's flow record, from what happened below.
fn finish(started: Started, outcome: Outcome) -> Response<ProxyBody> {
    let (mut resp, exchange, flow_outcome) = match outcome {
        Ok(Answered { resp, mut exchange }) => {
            let policy = std::mem::take(&mut exchange.policy);
            (resp, exchange, FlowOutcome::Forwarded { policy })
        }
        Err(Refused {
            refusal,
            mut exchange,
        }) => {
            let allowed_by = std::mem::take(&mut exchange.policy);
            let (resp, outcome) = refusal.reply(exchange.is_grpc, allowed_by);
            (resp, exchange, outcome)
        }
    };
    let ctx = &exchange.ctx;
    if started.asks_switch {
        ctx.upgrade
            .settle(switched_protocols(started.is_connect, resp.status()));
    }
    if !started.http2 && ctx.proxy.draining.is_cancelled() {
        // Draining for a successor: the client learns it must reconnect from this response, before it sends
        // another request on a connection about to close.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    ctx.requests.responded();
    let mut info = started.info;
    info.code = resp.status().as_u16();
    if exchange.is_grpc {
        info.grpc_status = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse().ok());
    }
    info.url = exchange.url;
    info.headers = exchange.logged_headers;
    let rec = started
        .flow
        .direction(exchange.direction)
        .http(info)
        .latency_since(started.start)
        .finish(flow_outcome);
    ctx.proxy.flows.record(rec);
    resp
}

fn version_label(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}
