//! Node-to-node tunnel (issue 7): HBONE-style HTTP/2 CONNECT over mutual TLS between node proxies.
//!
//! A connection from a local pod to a pod on another node is carried as one HTTP/2 CONNECT stream, `:authority` =
//! the original destination `ip:port`, inside an mTLS connection between the two node proxies. Both sides
//! authenticate with X.509-SVIDs from the `certs` crate (TLS 1.3, ALPN h2, client certificate required, SPIFFE
//! verification against the bundle of the peer's trust domain). Streams for the same (source identity, destination
//! node) share one pooled HTTP/2 connection.
//!
//! NOT wired into `connection.rs` / `run.rs` yet. Entry points for that wiring:
//!
//! - Outbound (source node): [`TunnelClient::open`]`(source_store, node_addr, &expected_node_ids, original_dst)`
//!   returns an [`OutboundTunnel`] whose `stream` (tokio `AsyncRead + AsyncWrite`) replaces the upstream TCP
//!   socket, and whose `peer_id` is the verified destination node identity. `source_store` is the
//!   [`certs::SvidStore`] of the source workload's identity (the pool is keyed by its SPIFFE ID and the node).
//! - Inbound (destination node): implement [`InboundHandler`] — `admit` (is `original_dst` a local endpoint, does L3
//!   policy let `peer` in; an `Err(status)` answers the CONNECT with that status), `serve` (run the ingress L7
//!   pipeline on `tunnel.stream` with source identity mapped from `tunnel.peer_id`; flow records get
//!   `auth_type = SPIRE` and the peer's SPIFFE ID), `refused` (a failed handshake: the `PeerRejection` names the
//!   reason for a DROPPED flow record) — then `TunnelServer::new(store, allowed, handler)?.serve(listener)`.
//!
//! Policy `authentication: {mode: required}` / AUTH_REQUIRED is not implemented here: the policy model must accept the
//! field first, then the plain (non-tunnel) path refuses such connections.

mod inbound;
mod outbound;

pub use inbound::{InboundHandler, InboundTunnel, TunnelServer};
pub use outbound::{OutboundTunnel, TunnelClient};

use std::net::SocketAddr;

use certs::PeerRejection;

/// Why a tunnel could not be opened; each names the node and what to check.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error(
        "cannot reach node proxy {node}: {source}; check the node address and that its tunnel port is open"
    )]
    Connect {
        node: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("mTLS with node proxy {node} failed: {}", match rejection { Some(r) => r.to_string(), None => source.to_string() })]
    Tls {
        node: SocketAddr,
        /// Set when our verifier refused the node (wrong trust domain, unknown CA, expired, ID not allowed, ...).
        rejection: Option<PeerRejection>,
        #[source]
        source: std::io::Error,
    },
    #[error("node proxy {node} did not negotiate ALPN h2; it is not a Tollgate tunnel endpoint")]
    NotH2 { node: SocketAddr },
    #[error(
        "HTTP/2 with node proxy {node} failed: {source}; if this follows the handshake, the node refused our SVID (see its flow records)"
    )]
    Http {
        node: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("node proxy {node} refused the tunnel to {original_dst} with HTTP {status}")]
    Refused {
        node: SocketAddr,
        original_dst: SocketAddr,
        status: http::StatusCode,
    },
    #[error("building the TLS client configuration failed: {0}")]
    Config(#[from] certs::rustls::Error),
}

#[cfg(test)]
mod tests;
