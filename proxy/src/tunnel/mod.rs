//! Node-to-node tunnel (issue 7): HBONE-style HTTP/2 CONNECT over mutual TLS between node proxies.
//!
//! A connection from a local pod to a pod on another node is carried as one HTTP/2 CONNECT stream, `:authority` =
//! the original destination `ip:port`, inside an mTLS connection between the two node proxies. Both sides
//! authenticate with X.509-SVIDs from the `certs` crate (TLS 1.3, ALPN h2, client certificate required, SPIFFE
//! verification against the bundle of the peer's trust domain). Streams for the same (source identity, destination
//! node) share one pooled HTTP/2 connection.
//!
//! Wired by `crate::mesh` (which node a destination lives on, whose SVID a connection carries, the
//! [`InboundHandler`] that maps a peer's ID to an identity and runs the connection pipeline) and `run.rs`
//! (`--tunnel-listen`). Entry points:
//!
//! - Outbound (source node): [`TunnelClient::open`]`(source_store, node_addr, &expected_node_ids, original_dst,
//!   source_addr)` returns an [`OutboundTunnel`] whose `stream` replaces the upstream TCP socket.
//! - Inbound (destination node): `TunnelServer::new(store, allowed, handler)?.serve(listener)`; the handler's
//!   `admit` may refuse a CONNECT with a status, `serve` runs the stream, `refused` reports failed handshakes with
//!   their `PeerRejection`.
//!
//! Both sides speak HTTP/2 with the `h2` crate directly, not through hyper: a CONNECT stream is a [`TunnelStream`]
//! read and written on h2's stream handles from the task that uses it, so a chunk costs one hand-over (to h2's
//! connection task) instead of hyper's upgrade bridge (a copy into a channel and a second task per stream).

mod inbound;
mod outbound;
mod stream;

pub use inbound::{InboundHandler, InboundTunnel, TunnelServer};
pub use outbound::{OutboundTunnel, TunnelClient, TunnelError};
pub use stream::TunnelStream;

#[cfg(test)]
mod tests;
