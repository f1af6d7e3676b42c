//! The proxy's listening sockets and their accept loop. In TPROXY mode the socket is `IP_TRANSPARENT`, so the
//! kernel hands it connections addressed to any IP/port (the original destination stays the accepted socket's
//! local address). Each listener has its own way of recovering the original destination ([`OriginalDst`]); the
//! daemon-wide state ([`Proxy`]) is the same for all of them.

use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::accept::next_connection;
use crate::connection;
use crate::inputs::Proxy;
use crate::original_dst::OriginalDst;

#[derive(Debug, Error)]
pub enum ListenerError {
    #[error("creating the listening socket for {addr}: {source}")]
    Socket {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "setting IP_TRANSPARENT on {addr}: {source}; TPROXY mode needs CAP_NET_ADMIN (run as root) — or use \
         --redirect so-original-dst with iptables REDIRECT"
    )]
    Transparent {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "binding {addr}: {source}; is another tollgate (or something else) already listening there?"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds a non-blocking listener on `addr`; `transparent` sets `IP_TRANSPARENT` (for TPROXY).
pub fn bind(
    addr: SocketAddr,
    transparent: bool,
    backlog: i32,
) -> Result<TcpListener, ListenerError> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))
        .map_err(|source| ListenerError::Socket { addr, source })?;
    socket
        .set_reuse_address(true)
        .map_err(|source| ListenerError::Socket { addr, source })?;
    // A restarting tollgate binds the same port while the old process still serves, then the old one drains: no
    // window where redirected connections are refused. The kernel only shares the port between sockets of the same
    // user, so another unprivileged process cannot steal it.
    socket
        .set_reuse_port(true)
        .map_err(|source| ListenerError::Socket { addr, source })?;
    if transparent {
        let r = if addr.is_ipv4() {
            socket.set_ip_transparent_v4(true)
        } else {
            socket.set_ip_transparent_v6(true)
        };
        r.map_err(|source| ListenerError::Transparent { addr, source })?;
    }
    socket
        .set_tcp_nodelay(true)
        .map_err(|source| ListenerError::Socket { addr, source })?;
    socket
        .bind(&addr.into())
        .map_err(|source| ListenerError::Bind { addr, source })?;
    socket
        .listen(backlog)
        .map_err(|source| ListenerError::Bind { addr, source })?;
    TcpListener::from_std(socket.into()).map_err(|source| ListenerError::Socket { addr, source })
}

/// The accept loop: hands every accepted connection to `connection::handle` until `shutdown` is cancelled; then
/// closes the listener and returns. Open connections go on until `close_connections` (the end of the drain).
pub async fn serve(
    listener: TcpListener,
    original_dst: Arc<dyn OriginalDst>,
    proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    close_connections: CancellationToken,
) {
    let pause = std::time::Duration::from_millis(50);
    let failed = |e: &std::io::Error| tracing::warn!("accept failed: {e}");
    while let Some((stream, peer)) = next_connection(&listener, &shutdown, pause, failed).await {
        let permit = proxy.connections.clone().try_acquire_owned().ok();
        let (proxy, dst, close) = (
            proxy.clone(),
            original_dst.clone(),
            close_connections.clone(),
        );
        tokio::spawn(connection::handle(proxy, dst, stream, peer, permit, close));
    }
}
