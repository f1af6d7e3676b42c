//! The source side: pooled HTTP/2-over-mTLS connections to other node proxies, one CONNECT stream per tunnel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use certs::{AllowedIds, PeerRejection, SpiffeId, SvidStore};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

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

/// An open tunnel to `original_dst` through a node proxy.
#[derive(Debug)]
pub struct OutboundTunnel {
    /// The byte stream to the original destination (AsyncRead + AsyncWrite).
    pub stream: TokioIo<Upgraded>,
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
    sender: SendRequest<Empty<Bytes>>,
    peer_id: SpiffeId,
    /// The node's certificate stops being valid then: no new streams on this connection after it.
    peer_not_after: SystemTime,
    /// `SvidStore::generation` of the source when connecting: after a rotation (or bundle change) new streams go
    /// over a new connection with the new SVID, while streams already open keep the old one.
    source_generation: u64,
}

impl Pooled {
    fn reusable(&self, source: &SvidStore, expected_node: &AllowedIds) -> bool {
        !self.sender.is_closed()
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
        pool.retain(|_, p| !p.sender.is_closed());
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
                let p = self.connect(source, node, expected_node).await?;
                self.pool
                    .lock()
                    .expect("not poisoned")
                    .insert(key.clone(), p.clone());
                p
            }
        };
        if pooled.sender.ready().await.is_err() {
            // The pooled connection died between the check and now: one fresh connection, then give up.
            let p = self.connect(source, node, expected_node).await?;
            self.pool
                .lock()
                .expect("not poisoned")
                .insert(key, p.clone());
            pooled = p;
        }
        let mut req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(original_dst.to_string());
        if let Some(addr) = source_addr {
            req = req.header(http::header::FORWARDED, format!("for=\"{addr}\""));
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .expect("CONNECT request with an ip:port authority is valid");
        let resp = pooled
            .sender
            .send_request(req)
            .await
            .map_err(|source| TunnelError::Http { node, source })?;
        if resp.status() != http::StatusCode::OK {
            return Err(TunnelError::Refused {
                node,
                original_dst,
                status: resp.status(),
            });
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|source| TunnelError::Http { node, source })?;
        Ok(OutboundTunnel {
            stream: TokioIo::new(upgraded),
            peer_id: pooled.peer_id,
        })
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
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|source| TunnelError::Http { node, source })?;
        tracing::info!(%node, peer = %leaf.id, source = %source.svid().spiffe_id(), generation = source_generation, "tunnel connection to node proxy established");
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%node, error = %e, "tunnel connection to node proxy ended");
            }
        });
        Ok(Pooled {
            sender,
            peer_id: leaf.id,
            peer_not_after: leaf.not_after,
            source_generation,
        })
    }
}
