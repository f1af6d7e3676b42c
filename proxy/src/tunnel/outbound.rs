//! The source side: pooled HTTP/2-over-mTLS connections to other node proxies, one CONNECT stream per tunnel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use certs::{AllowedIds, PeerRejection, SpiffeId, SvidStore};
use h2::client::SendRequest;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::stream::{TunnelStream, keep_alive};

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
        source: h2::Error,
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

/// An open tunnel to `original_dst` through a node proxy.
#[derive(Debug)]
pub struct OutboundTunnel {
    /// The byte stream to the original destination (AsyncRead + AsyncWrite).
    pub stream: TunnelStream,
    /// The verified SPIFFE ID of the destination node proxy.
    pub peer_id: SpiffeId,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    source: SpiffeId,
    node: SocketAddr,
}

#[derive(Debug, Clone)]
struct Pooled {
    sender: SendRequest<Bytes>,
    /// Set when the connection's task ends (closed by either side, GOAWAY, keep-alive unanswered).
    closed: Arc<AtomicBool>,
    peer_id: SpiffeId,
    /// The node's certificate stops being valid then: no new streams on this connection after it.
    peer_not_after: SystemTime,
    /// `SvidStore::generation` of the source when connecting: after a rotation (or bundle change) new streams go
    /// over a new connection with the new SVID, while streams already open keep the old one.
    source_generation: u64,
}

impl Pooled {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn reusable(&self, source: &SvidStore, expected_node: &AllowedIds) -> bool {
        !self.is_closed()
            && expected_node.allows(&self.peer_id)
            && SystemTime::now() < self.peer_not_after
            && source.generation() == self.source_generation
    }
}

/// Opens tunnels; keeps one HTTP/2 connection per (source identity, destination node) and reuses it while it is
/// open, the node's certificate is valid and the source's SVID has not rotated since it was made.
#[derive(Debug)]
pub struct TunnelClient {
    pool: Mutex<HashMap<PoolKey, Pooled>>,
    connect_timeout: Duration,
}

impl Default for TunnelClient {
    fn default() -> Self {
        Self::new(Duration::from_secs(5))
    }
}

impl TunnelClient {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            pool: Mutex::new(HashMap::new()),
            connect_timeout,
        }
    }

    /// Open HTTP/2 connections currently pooled.
    pub fn pooled_connections(&self) -> usize {
        let mut pool = self.pool.lock().expect("not poisoned");
        pool.retain(|_, p| !p.is_closed());
        pool.len()
    }

    /// Opens a CONNECT tunnel to `original_dst` through the node proxy at `node`, authenticating as `source`'s
    /// current SVID and requiring the node's SPIFFE ID to satisfy `expected_node`. `source_addr` (the workload's
    /// own address) is sent as `forwarded: for=` for the destination's flow records; the certificate, not this
    /// address, names the identity.
    pub async fn open(
        &self,
        source: &Arc<SvidStore>,
        node: SocketAddr,
        expected_node: &AllowedIds,
        original_dst: SocketAddr,
        source_addr: Option<SocketAddr>,
    ) -> Result<OutboundTunnel, TunnelError> {
        let key = PoolKey {
            source: source.svid().spiffe_id().clone(),
            node,
        };
        let reusable = {
            let pool = self.pool.lock().expect("not poisoned");
            pool.get(&key)
                .filter(|p| p.reusable(source, expected_node))
                .cloned()
        };
        let mut pooled = match reusable {
            Some(p) => p,
            None => {
                self.connect_and_pool(source, node, expected_node, &key)
                    .await?
            }
        };
        let sender = match pooled.sender.clone().ready().await {
            Ok(sender) => sender,
            Err(_) => {
                // The pooled connection died between the check and now: one fresh connection, then give up.
                pooled = self
                    .connect_and_pool(source, node, expected_node, &key)
                    .await?;
                pooled
                    .sender
                    .clone()
                    .ready()
                    .await
                    .map_err(|source| TunnelError::Http { node, source })?
            }
        };
        let stream = connect_stream(sender, node, original_dst, source_addr).await?;
        Ok(OutboundTunnel {
            stream,
            peer_id: pooled.peer_id,
        })
    }

    async fn connect_and_pool(
        &self,
        source: &Arc<SvidStore>,
        node: SocketAddr,
        expected_node: &AllowedIds,
        key: &PoolKey,
    ) -> Result<Pooled, TunnelError> {
        let p = self.connect(source, node, expected_node).await?;
        self.pool
            .lock()
            .expect("not poisoned")
            .insert(key.clone(), p.clone());
        Ok(p)
    }

    async fn connect(
        &self,
        source: &Arc<SvidStore>,
        node: SocketAddr,
        expected_node: &AllowedIds,
    ) -> Result<Pooled, TunnelError> {
        let source_generation = source.generation();
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(node))
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", self.connect_timeout),
                ))
            })
            .map_err(|source| TunnelError::Connect { node, source })?;
        let _ = tcp.set_nodelay(true);
        let config = certs::client_config(source, expected_node.clone())?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(certs::server_name(), tcp)
            .await
            .map_err(|source| TunnelError::Tls {
                node,
                rejection: PeerRejection::from_io_error(&source),
                source,
            })?;
        let conn = tls.get_ref().1;
        if conn.alpn_protocol() != Some(certs::ALPN_H2) {
            return Err(TunnelError::NotH2 { node });
        }
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| certs::parse_leaf(c).ok())
            .expect("the verifier accepted an SVID leaf");
        let (sender, connection) = client_builder()
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|source| TunnelError::Http { node, source })?;
        tracing::info!(%node, peer = %leaf.id, source = %source.svid().spiffe_id(), generation = source_generation, "tunnel connection to node proxy established");
        let closed = spawn_connection(node, connection);
        Ok(Pooled {
            sender,
            closed,
            peer_id: leaf.id,
            peer_not_after: leaf.not_after,
            source_generation,
        })
    }
}

/// hyper's HTTP/2 client settings (what the tunnel used before it spoke h2 directly): windows, frame and header
/// limits, streams before the server's SETTINGS arrive.
fn client_builder() -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(5 * 1024 * 1024)
        .max_frame_size(16 * 1024)
        .max_send_buffer_size(1024 * 1024)
        .max_header_list_size(16 * 1024)
        .initial_max_send_streams(100)
        .enable_push(false);
    b
}

/// Drives the connection (and its keep-alive) on a task of its own; the flag is set once it has ended.
fn spawn_connection(
    node: SocketAddr,
    mut connection: h2::client::Connection<TlsStream<TcpStream>, Bytes>,
) -> Arc<AtomicBool> {
    let closed = Arc::new(AtomicBool::new(false));
    let ended = closed.clone();
    let ping = connection.ping_pong().expect("taken once, here");
    tokio::spawn(async move {
        tokio::select! {
            r = &mut connection => if let Err(e) = r {
                tracing::debug!(%node, error = %e, "tunnel connection to node proxy ended");
            },
            e = keep_alive(ping) => tracing::debug!(%node, error = %e, "tunnel connection to node proxy lost"),
        }
        ended.store(true, Ordering::Release);
    });
    closed
}

/// Sends the CONNECT for `original_dst` on a ready connection and waits for the node's answer.
async fn connect_stream(
    mut sender: SendRequest<Bytes>,
    node: SocketAddr,
    original_dst: SocketAddr,
    source_addr: Option<SocketAddr>,
) -> Result<TunnelStream, TunnelError> {
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(original_dst.to_string());
    if let Some(addr) = source_addr {
        req = req.header(http::header::FORWARDED, format!("for=\"{addr}\""));
    }
    let req = req
        .body(())
        .expect("CONNECT request with an ip:port authority is valid");
    let (response, send) = sender
        .send_request(req, false)
        .map_err(|source| TunnelError::Http { node, source })?;
    let resp = response
        .await
        .map_err(|source| TunnelError::Http { node, source })?;
    if resp.status() != http::StatusCode::OK {
        return Err(TunnelError::Refused {
            node,
            original_dst,
            status: resp.status(),
        });
    }
    Ok(TunnelStream::new(send, resp.into_body()))
}
