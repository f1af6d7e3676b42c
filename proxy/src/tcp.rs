//! Opaque TCP: ports whose policy is L3/L4 only are spliced byte for byte.
//!
//! `tokio::io::copy_bidirectional` moves data through a user-space buffer (two copies per byte). True zero-copy
//! (`splice(2)` through a pipe, or sockmap redirection in the redirect crate) is a later optimisation. A spliced
//! connection keeps the L3/L4 verdict it was accepted with: a policy update applies to new connections only.

use tokio::io::{AsyncRead, AsyncWrite};

/// Copies both directions until both sides close; returns (client->server, server->client) byte counts.
pub async fn splice<A, B>(client: &mut A, server: &mut B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional(client, server).await
}
