//! mTLS for the Observer API with SPIFFE X.509-SVIDs from the `certs` crate: the server side a node's observer
//! (`--observer-tls-svid-dir`) and the relay's own listener (`--tls-svid-dir`) use, and the client side the relay
//! dials nodes with (`--peer-tls-svid-dir`). SVIDs come from a directory as `tollgate certs issue` writes it
//! (`svid.pem`, `svid.key`, `bundle.pem`) and are re-read when the files change, so rotation needs no restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use certs::{AllowedIds, FileSource, SourceHandle, SpiffeId, SvidFiles, SvidStore};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use crate::accept::next_connection;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "{flag} {dir}: cannot load the SVID (the directory needs svid.pem, svid.key and bundle.pem as `tollgate certs issue --out DIR` writes them)"
    )]
    Load {
        flag: &'static str,
        dir: PathBuf,
        source: Box<certs::SourceError>,
    },
    #[error("{flag}: {id:?} is not a SPIFFE ID (write it as spiffe://<trust-domain>/<path>)")]
    Id {
        flag: &'static str,
        id: String,
        source: certs::SpiffeIdError,
    },
    #[error("building the TLS configuration: {0}")]
    Rustls(Box<certs::rustls::Error>),
}

/// An SVID kept current from a directory, and which peer IDs it accepts.
#[derive(Debug)]
pub struct Identity {
    pub store: Arc<SvidStore>,
    pub allowed: AllowedIds,
    /// Keeps the file watcher running.
    _source: SourceHandle,
}

impl Identity {
    /// [`Identity::load`] when `dir` is given (its flag was passed), else `None`.
    pub fn load_if_given(
        flag: &'static str,
        dir: Option<&Path>,
        peer_ids: &[String],
        ids_flag: &'static str,
    ) -> Result<Option<Self>, TlsError> {
        dir.map(|dir| Self::load(flag, dir, peer_ids, ids_flag))
            .transpose()
    }

    /// Loads `dir` (failing now if unusable) and starts re-reading it. `peer_ids` empty = any ID of the SVID's
    /// own trust domain. Needs a tokio runtime.
    pub fn load(
        flag: &'static str,
        dir: &Path,
        peer_ids: &[String],
        ids_flag: &'static str,
    ) -> Result<Self, TlsError> {
        let (store, source) =
            FileSource::new(&SvidFiles::in_dir(dir))
                .start()
                .map_err(|source| TlsError::Load {
                    flag,
                    dir: dir.to_owned(),
                    source: Box::new(source),
                })?;
        let allowed = if peer_ids.is_empty() {
            AllowedIds::trust_domains([store.svid().spiffe_id().trust_domain().clone()])
        } else {
            AllowedIds::ids(
                peer_ids
                    .iter()
                    .map(|id| {
                        SpiffeId::parse(id).map_err(|source| TlsError::Id {
                            flag: ids_flag,
                            id: id.clone(),
                            source,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        Ok(Identity {
            store,
            allowed,
            _source: source,
        })
    }

    /// This side's own SPIFFE ID (what `GetNodes` can report as the TLS server name).
    pub fn id(&self) -> String {
        self.store.svid().spiffe_id().to_string()
    }

    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let config = certs::server_config(&self.store, self.allowed.clone())
            .map_err(|e| TlsError::Rustls(Box::new(e)))?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    pub fn connector(&self) -> Result<TlsConnector, TlsError> {
        let config = certs::client_config(&self.store, self.allowed.clone())
            .map_err(|e| TlsError::Rustls(Box::new(e)))?;
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

/// A TLS connection tonic can serve (tonic needs its `Connected` trait on the IO type).
#[derive(Debug)]
pub struct TlsConn(pub tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = Option<SocketAddr>;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.peer_addr().ok()
    }
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A handshake may take this long; a client that stalls longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts on `listener` and hands completed mTLS handshakes to the server; refused handshakes are logged (with
/// the peer and the reason) and never reach it.
pub fn incoming(
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    what: &'static str,
    shutdown: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let pause = Duration::from_millis(100);
        let failed = |e: &std::io::Error| tracing::warn!("{what}: accept failed: {e}");
        while let Some((tcp, peer)) = next_connection(&listener, &shutdown, pause, failed).await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(TlsConn(tls))).await;
                    }
                    Ok(Err(e)) => tracing::warn!(%peer, "{what}: TLS handshake refused: {e}"),
                    Err(_) => tracing::warn!(%peer, "{what}: TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A gRPC channel to `addr` (host:port), over mTLS when `connector` is set, connected now.
pub async fn dial(
    addr: &str,
    connector: Option<TlsConnector>,
    timeout: Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let Some(connector) = connector else {
        return endpoint.connect().await;
    };
    let target = addr.to_string();
    endpoint
        .connect_with_connector(tower::service_fn(move |_uri: http::Uri| {
            let (connector, target) = (connector.clone(), target.clone());
            async move {
                let tcp = TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(certs::server_name(), tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
}
