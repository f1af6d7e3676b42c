//! The inputs every connection handler needs, in one place (the daemon-wide [`Proxy`] state and the
//! [`ClientStream`] a handler serves), so the handlers (HTTP, Kafka, the tunnel's inbound side) and the
//! connection pipeline that dispatches to them depend on this module instead of on each other.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::decision::{self, Downstream};
use crate::flow::{FlowEndpoint, FlowLog};
use crate::flow_record::FlowBuilder;
use crate::limits::Limits;
use crate::linger::LingeringStream;
use crate::policy_source::PolicyStore;
use crate::upstream::{Dial, UpstreamPool};

/// State shared by every connection of the daemon.
#[derive(Debug)]
pub struct Proxy {
    pub policy: Arc<PolicyStore>,
    pub flows: Arc<FlowLog>,
    pub upstream: UpstreamPool,
    pub limits: Limits,
    /// One permit per open downstream connection (`Limits::max_connections`).
    pub connections: Arc<Semaphore>,
    /// Kafka topic ids learned from Metadata responses (shared: clients learn ids on one connection and use them
    /// on another).
    pub kafka_topics: Arc<crate::kafka_state::TopicIds>,
    /// Memory for Kafka request frames being received, all connections together (`Limits::kafka_inflight_budget`).
    pub kafka_budget: Arc<crate::kafka_state::budget::FrameBudget>,
    /// The node-to-node mTLS tunnel (`--tunnel-listen`); `None` = every connection goes direct.
    pub mesh: Option<Arc<crate::mesh::Mesh>>,
    /// Cancelled when the drain after a handoff or SIGTERM begins: HTTP/1 responses then carry
    /// `Connection: close`, so busy keep-alive clients move to the successor on their own. HTTP/2 connections
    /// get GOAWAY only when the drain ends (an early GOAWAY made h2load, which does not retry refused streams,
    /// count errors in the upgrade e2e test).
    pub draining: CancellationToken,
    /// HTTP/1 keep-alive connections parked between requests (`keepalive.rs`), for the metrics gauge.
    pub parked: Arc<crate::keepalive::ParkedCount>,
}

/// One downstream connection whose L3/L4 decision is about to be made, apart from its byte stream: the daemon's
/// state, who connected (and how authenticated), the original destination, how to reach it, and the daemon's
/// shutdown. What `connection::dispatch` and the handlers it starts take.
#[derive(Debug)]
pub struct Accepted {
    pub proxy: Arc<Proxy>,
    pub down: Downstream,
    pub dst: SocketAddr,
    pub dial: Dial,
    pub shutdown: CancellationToken,
}

/// The two endpoints of a downstream connection's flow (Kafka's records; the others use [`Proxy::flow`]).
pub(crate) fn endpoints(
    proxy: &Proxy,
    client: &Downstream,
    dst: SocketAddr,
) -> (FlowEndpoint, FlowEndpoint) {
    let snap = proxy.policy.current();
    (
        decision::source_endpoint(&snap, client),
        decision::flow_endpoint(&snap, dst),
    )
}

impl Proxy {
    /// The flow record of a downstream connection to `dst`, to be finished with its outcome: endpoints from the
    /// current snapshot, and the downstream's authentication.
    pub(crate) fn flow(&self, down: &Downstream, dst: SocketAddr, protocol: &str) -> FlowBuilder {
        FlowBuilder::connection(&self.policy.current(), down, dst, protocol)
    }
}

/// Closes with RST (SO_LINGER 0): a refused connection must not look like a clean, empty response.
pub(crate) fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
    drop(stream);
}

/// A downstream byte stream: an accepted TCP socket, or a CONNECT stream of the node-to-node tunnel.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// What the HTTP server reads and writes.
    type Http: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Closes the stream as a refusal (TCP: RST, so it never looks like a clean empty response).
    fn refuse(self);
    fn for_http(self) -> Self::Http;
}

impl ClientStream for TcpStream {
    /// A lingering close: a response written just before closing must not be cut by an RST.
    type Http = LingeringStream;
    fn refuse(self) {
        reset(self)
    }
    fn for_http(self) -> LingeringStream {
        LingeringStream::new(self)
    }
}

impl ClientStream for crate::tunnel::TunnelStream {
    type Http = Self;
    /// Dropping the stream resets the HTTP/2 stream; the tunnel connection and its other streams stay.
    fn refuse(self) {}
    fn for_http(self) -> Self {
        self
    }
}
