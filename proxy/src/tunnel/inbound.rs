//! The destination side: an mTLS listener accepting HTTP/2 CONNECT streams from other node proxies.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use certs::{AllowedIds, PeerRejection, SpiffeId, SvidStore};
use h2::RecvStream;
use h2::server::SendResponse;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::stream::{TunnelStream, keep_alive};

/// An accepted tunnel: bytes from a remote workload, authenticated as `peer_id`, addressed to `original_dst`.
#[derive(Debug)]
pub struct InboundTunnel {
    /// The verified SPIFFE ID of the peer (the source workload identity the remote node proxy presented).
    pub peer_id: SpiffeId,
    /// The remote node proxy's TCP address.
    pub peer_addr: SocketAddr,
    /// The CONNECT `:authority`: where the source workload connected.
    pub original_dst: SocketAddr,
    /// The source workload's address as its node proxy reported it (`forwarded: for=`); informational.
    pub reported_source: Option<SocketAddr>,
    /// The byte stream (AsyncRead + AsyncWrite).
    pub stream: TunnelStream,
}

/// What the proxy does with tunnels; see the module docs of `tunnel` for how it maps to policy and flow records.
pub trait InboundHandler: Send + Sync + 'static {
    /// Before the CONNECT is answered: `Err(status)` refuses it with that status (e.g. 403 policy denied, 404 not a
    /// local endpoint).
    fn admit(
        &self,
        peer_id: &SpiffeId,
        original_dst: SocketAddr,
        reported_source: Option<SocketAddr>,
    ) -> Result<(), http::StatusCode> {
        let _ = (peer_id, original_dst, reported_source);
        Ok(())
    }

    /// Serves an admitted tunnel until it ends.
    fn serve(&self, tunnel: InboundTunnel) -> Pin<Box<dyn Future<Output = ()> + Send>>;

    /// A handshake failed. `rejection` is set when our verifier refused the peer's SVID (the reason for a flow
    /// record); otherwise `error` says what went wrong (not TLS, TLS 1.2, ...).
    fn refused(
        &self,
        peer_addr: SocketAddr,
        rejection: Option<PeerRejection>,
        error: &std::io::Error,
    ) {
        let _ = (peer_addr, rejection, error);
    }
}

/// The tunnel listener: TLS 1.3 + mTLS with the store's SVID, peers allowed by `allowed`, HTTP/2 CONNECT only.
pub struct TunnelServer<H> {
    acceptor: TlsAcceptor,
    handler: Arc<H>,
    handshake_timeout: Duration,
}

impl<H> std::fmt::Debug for TunnelServer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelServer")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl<H> Clone for TunnelServer<H> {
    fn clone(&self) -> Self {
        Self {
            acceptor: self.acceptor.clone(),
            handler: self.handler.clone(),
            handshake_timeout: self.handshake_timeout,
        }
    }
}

impl<H: InboundHandler> TunnelServer<H> {
    pub fn new(
        store: &Arc<SvidStore>,
        allowed: AllowedIds,
        handler: Arc<H>,
    ) -> Result<Self, certs::rustls::Error> {
        let config = certs::server_config(store, allowed)?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handler,
            handshake_timeout: Duration::from_secs(10),
        })
    }

    /// Accepts connections forever (each served on its own task).
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (tcp, peer_addr) = listener.accept().await?;
            let this = self.clone();
            tokio::spawn(async move { this.serve_connection(tcp, peer_addr).await });
        }
    }

    /// Serves one accepted TCP connection: handshake, then HTTP/2 CONNECT streams until it closes.
    pub async fn serve_connection(&self, tcp: TcpStream, peer_addr: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let tls =
            match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    self.handler
                        .refused(peer_addr, PeerRejection::from_io_error(&e), &e);
                    return;
                }
                Err(_) => {
                    let e = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "TLS handshake did not finish in time",
                    );
                    self.handler.refused(peer_addr, None, &e);
                    return;
                }
            };
        let Some(peer_id) = certs::peer_spiffe_id(tls.get_ref().1) else {
            // Unreachable with our verifier (client certificates are mandatory and must be SVIDs).
            return;
        };
        let mut conn = match server_builder().handshake::<_, Bytes>(tls).await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(%peer_addr, error = %e, "tunnel connection from node proxy ended");
                return;
            }
        };
        let keep_alive = keep_alive(conn.ping_pong().expect("taken once, here"));
        tokio::pin!(keep_alive);
        loop {
            // Accepting also drives the connection: every stream's frames move while this loop runs.
            let next = tokio::select! {
                next = conn.accept() => next,
                e = &mut keep_alive => {
                    tracing::debug!(%peer_addr, error = %e, "tunnel connection from node proxy lost");
                    return;
                }
            };
            match next {
                Some(Ok((req, respond))) => {
                    handle_request(req, respond, &self.handler, &peer_id, peer_addr)
                }
                Some(Err(e)) => {
                    tracing::debug!(%peer_addr, error = %e, "tunnel connection from node proxy ended");
                    return;
                }
                None => return,
            }
        }
    }
}

/// hyper's HTTP/2 server settings (what the tunnel used before it spoke h2 directly): windows, frame and header
/// limits, at most 200 concurrent streams per connection, a bound on streams reset for our errors.
fn server_builder() -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(1024 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_frame_size(16 * 1024)
        .max_send_buffer_size(400 * 1024)
        .max_header_list_size(16 * 1024)
        .max_concurrent_streams(200)
        .max_local_error_reset_streams(Some(1024));
    b
}

fn status(code: http::StatusCode) -> http::Response<()> {
    let mut resp = http::Response::new(());
    *resp.status_mut() = code;
    resp
}

/// Answers one stream: a refusal (its status, END_STREAM), or 200 and the handler serving the stream on a task of
/// its own.
fn handle_request<H: InboundHandler>(
    req: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    handler: &Arc<H>,
    peer_id: &SpiffeId,
    peer_addr: SocketAddr,
) {
    let (original_dst, reported_source) = match admit(&req, handler.as_ref(), peer_id) {
        Ok(admitted) => admitted,
        Err(code) => {
            let _ = respond.send_response(status(code), true);
            return;
        }
    };
    let send = match respond.send_response(status(http::StatusCode::OK), false) {
        Ok(send) => send,
        Err(e) => {
            tracing::debug!(%peer_addr, error = %e, "tunnel stream closed before it opened");
            return;
        }
    };
    let tunnel = InboundTunnel {
        peer_id: peer_id.clone(),
        peer_addr,
        original_dst,
        reported_source,
        stream: TunnelStream::new(send, req.into_body()),
    };
    tokio::spawn(handler.serve(tunnel));
}

/// The CONNECT's destination and reported source once the handler admitted it, or the status refusing it.
fn admit<H: InboundHandler>(
    req: &http::Request<RecvStream>,
    handler: &H,
    peer_id: &SpiffeId,
) -> Result<(SocketAddr, Option<SocketAddr>), http::StatusCode> {
    if req.method() != http::Method::CONNECT {
        return Err(http::StatusCode::METHOD_NOT_ALLOWED);
    }
    let original_dst = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
        .ok_or(http::StatusCode::BAD_REQUEST)?;
    let reported_source = req
        .headers()
        .get(http::header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(forwarded_for);
    handler.admit(peer_id, original_dst, reported_source)?;
    Ok((original_dst, reported_source))
}

/// The `for=` address of a `forwarded` header (RFC 7239), `for="ip:port"` or `for=ip`.
fn forwarded_for(value: &str) -> Option<SocketAddr> {
    value.split([';', ',']).find_map(|part| {
        let v = part.trim().strip_prefix("for=")?.trim_matches('"');
        v.parse::<SocketAddr>().ok().or_else(|| {
            v.parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 0))
        })
    })
}

#[cfg(test)]
mod forwarded_tests {
    #[test]
    fn forwarded_for_reads_quoted_and_bare_addresses() {
        assert_eq!(
            super::forwarded_for("for=\"10.0.1.10:4000\""),
            Some("10.0.1.10:4000".parse().unwrap())
        );
        assert_eq!(
            super::forwarded_for("proto=https; for=10.0.1.10"),
            Some("10.0.1.10:0".parse().unwrap())
        );
        assert_eq!(super::forwarded_for("for=unknown"), None);
    }
}
