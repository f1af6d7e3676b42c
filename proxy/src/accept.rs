//! Accepting TCP connections until shutdown, for the proxy's listeners and the daemon's side servers (DNS over
//! TCP, the admin HTTP server, the web UI, mTLS listeners): a failed accept (EMFILE and friends) is handed to the
//! caller to report and retried after a pause instead of spinning, and the listener stays up.
//!
//! It owns only the accept step: it must not serve, limit or record the connections it returns.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The next connection on `listener`, or `None` once `shutdown` is cancelled. A failed accept goes to `failed`
/// (the caller logs it, under its own name) and is retried after `pause`.
pub async fn next_connection(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    pause: Duration,
    failed: impl Fn(&std::io::Error),
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => return Some(connection),
                Err(e) => {
                    failed(&e);
                    tokio::time::sleep(pause).await;
                }
            },
            _ = shutdown.cancelled() => return None,
        }
    }
}
