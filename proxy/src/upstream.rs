//! Upstream connections: every proxy-originated socket carries the proxy's `SO_MARK` (so the redirect layer never
//! sends it back to the proxy) and connects to the connection's *original destination*, never to whatever the
//! request's Host header says.
//!
//! Pooling: one hyper `legacy::Client` per (original destination, HTTP version). hyper pools by URI authority, which
//! is the client-chosen Host; keeping a client per destination means two destinations that share a Host name can
//! never share a pooled connection, while the request keeps its real Host / `:authority`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

/// Idle pooled connections kept per (original destination, HTTP version).
pub const MAX_IDLE_PER_DESTINATION: usize = 64;

/// The default `SO_MARK` on proxy-originated sockets.
pub const DEFAULT_MARK: u32 = 0xb00;

/// A non-blocking socket of `dst`'s address family with `SO_MARK = mark` (0 = no mark), so the redirect layer never
/// loops it back; `what` names the socket in the error (setting the mark needs CAP_NET_ADMIN).
pub fn marked_socket(
    dst: SocketAddr,
    ty: Type,
    protocol: Option<Protocol>,
    mark: u32,
    what: &str,
) -> std::io::Result<Socket> {
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, ty.nonblocking(), protocol)?;
    if mark != 0 {
        socket.set_mark(mark).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("setting SO_MARK {mark:#x} on the {what} socket needs CAP_NET_ADMIN: {e}"),
            )
        })?;
    }
    Ok(socket)
}

/// Opens a TCP connection to `dst` with `SO_MARK = mark` (0 = no mark) and `TCP_NODELAY`.
pub async fn connect_marked(
    dst: SocketAddr,
    mark: u32,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let socket = marked_socket(dst, Type::STREAM, Some(Protocol::TCP), mark, "upstream")?;
    socket.set_tcp_nodelay(true)?;
    let socket = TcpSocket::from_std_stream(socket.into());
    match tokio::time::timeout(timeout, socket.connect(dst)).await {
        Ok(r) => r.map_err(|e| std::io::Error::new(e.kind(), format!("connecting to {dst}: {e}"))),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connecting to {dst}: timed out after {timeout:?}"),
        )),
    }
}

/// Any byte stream an upstream connection can be.
pub trait UpstreamIo: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> UpstreamIo for T {}

/// A byte stream to the original destination: a marked TCP socket, or a CONNECT stream through another node's
/// proxy (the mTLS tunnel).
pub struct UpstreamStream(Pin<Box<dyn UpstreamIo>>);

impl UpstreamStream {
    pub fn new(io: impl UpstreamIo + 'static) -> Self {
        UpstreamStream(Box::pin(io))
    }
}

impl std::fmt::Debug for UpstreamStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamStream")
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.0.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.0.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.0.as_mut().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.0.as_mut().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// Opens streams through the node-to-node tunnel (implemented by `mesh::TunnelDial`).
pub trait TunnelDialer: Send + Sync + std::fmt::Debug {
    fn dial(
        &self,
        dst: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<UpstreamStream>> + Send + '_>>;
    /// Distinguishes pools: streams of different (source identity, node) tunnels are never shared.
    fn pool_key(&self) -> String;
}

/// How upstream connections to a destination are made.
#[derive(Debug, Clone, Default)]
pub enum Dial {
    /// A TCP connection to the original destination with the proxy's `SO_MARK`.
    #[default]
    Direct,
    /// A CONNECT stream through the destination node's proxy, over mTLS.
    Tunnel(Arc<dyn TunnelDialer>),
}

impl Dial {
    fn pool_key(&self) -> Option<String> {
        match self {
            Dial::Direct => None,
            Dial::Tunnel(t) => Some(t.pool_key()),
        }
    }
}

/// A hyper connector bound to one original destination: ignores the URI's authority (the client's Host) on purpose.
#[derive(Debug, Clone)]
pub struct MarkedConnector {
    pub dst: SocketAddr,
    pub mark: u32,
    pub timeout: Duration,
    pub dial: Dial,
}

async fn open(
    dst: SocketAddr,
    mark: u32,
    timeout: Duration,
    dial: &Dial,
) -> std::io::Result<UpstreamStream> {
    match dial {
        Dial::Direct => connect_marked(dst, mark, timeout)
            .await
            .map(UpstreamStream::new),
        Dial::Tunnel(t) => t.dial(dst).await,
    }
}

impl tower::Service<Uri> for MarkedConnector {
    type Response = TokioIo<UpstreamStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<UpstreamStream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            open(this.dst, this.mark, this.timeout, &this.dial)
                .await
                .map(TokioIo::new)
        })
    }
}

/// Request bodies sent upstream: the client's own body, or an empty one when a bodyless request is replayed.
pub type UpstreamBody =
    http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, crate::body::BoxError>;

pub type UpstreamClient = Client<MarkedConnector, UpstreamBody>;

/// True when the upstream refused the request without processing it, so sending it again is safe: an HTTP/2
/// GOAWAY (graceful, e.g. nginx's `keepalive_requests`) or REFUSED_STREAM for a stream the server never started.
/// hyper's pool only retries requests that were never written; these were written and refused.
pub fn refused_unprocessed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h2e) = err.downcast_ref::<h2::Error>() {
            let reason = h2e.reason();
            return (h2e.is_go_away() && h2e.is_remote() && reason == Some(h2::Reason::NO_ERROR))
                || reason == Some(h2::Reason::REFUSED_STREAM);
        }
        cur = err.source();
    }
    false
}

/// Clients per (destination, HTTP/2?), bounded: past `MAX_CLIENTS` destinations the map is cleared (in-flight
/// requests keep their clone; only idle pooled connections are dropped).
#[derive(Debug)]
pub struct UpstreamPool {
    mark: u32,
    connect_timeout: Duration,
    /// Shared: a connection holds its client by a pointer, not a copy of hyper's client (~370 bytes).
    clients: Mutex<HashMap<PoolKey, Arc<UpstreamClient>>>,
}

const MAX_CLIENTS: usize = 4096;

/// (original destination, HTTP/2?, tunnel pool key when reached through another node's proxy).
type PoolKey = (SocketAddr, bool, Option<String>);

impl UpstreamPool {
    pub fn new(mark: u32, connect_timeout: Duration) -> Self {
        UpstreamPool {
            mark,
            connect_timeout,
            clients: Mutex::new(HashMap::new()),
        }
    }

    pub fn mark(&self) -> u32 {
        self.mark
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// One upstream stream to `dst` (spliced TCP, Kafka).
    pub async fn connect(&self, dst: SocketAddr, dial: &Dial) -> std::io::Result<UpstreamStream> {
        open(dst, self.mark, self.connect_timeout, dial).await
    }

    /// The client for `dst` reached by `dial`; `http2` selects prior-knowledge HTTP/2 upstream (used when the
    /// client speaks h2/gRPC).
    pub fn client(&self, dst: SocketAddr, http2: bool, dial: &Dial) -> Arc<UpstreamClient> {
        let key = (dst, http2, dial.pool_key());
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(&key) {
            return c.clone();
        }
        if map.len() >= MAX_CLIENTS {
            map.clear();
        }
        let mut b = Client::builder(TokioExecutor::new());
        // Idle upstream connections beyond this are closed: each holds hyper's buffers (~16 KiB), and a burst of N
        // concurrent client requests would otherwise park N idle sockets per destination for 90 s (nginx's
        // `keepalive` and Envoy's per-host pools cap this too).
        b.pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(MAX_IDLE_PER_DESTINATION)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        // The client's own Host header must reach the server untouched; hyper only fills it when absent.
        b.set_host(true);
        if http2 {
            b.http2_only(true);
        }
        let client = Arc::new(b.build(MarkedConnector {
            dst,
            mark: self.mark,
            timeout: self.connect_timeout,
            dial: dial.clone(),
        }));
        map.insert(key, client.clone());
        client
    }
}

/// The upstream client of one downstream connection, taken from the pool on its first request: every request of a
/// connection goes to the same original destination by the same dial, and (one connection, one protocol) in the
/// same HTTP version, so later requests skip the pool's lock and lookup.
#[derive(Debug, Default)]
pub struct ConnUpstream(std::sync::OnceLock<(bool, Arc<UpstreamClient>)>);

impl ConnUpstream {
    pub fn client<'a>(
        &'a self,
        pool: &UpstreamPool,
        dst: SocketAddr,
        http2: bool,
        dial: &Dial,
    ) -> std::borrow::Cow<'a, Arc<UpstreamClient>> {
        let (cached_http2, client) = self
            .0
            .get_or_init(|| (http2, pool.client(dst, http2, dial)));
        if *cached_http2 == http2 {
            std::borrow::Cow::Borrowed(client)
        } else {
            std::borrow::Cow::Owned(pool.client(dst, http2, dial))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_marked_reaches_a_listener_without_a_mark() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = connect_marked(l.local_addr().unwrap(), 0, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(s.peer_addr().unwrap(), l.local_addr().unwrap());
    }

    #[tokio::test]
    async fn marked_sockets_carry_the_mark() {
        // SO_MARK needs CAP_NET_ADMIN; the test suite runs as root (see tests/).
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = connect_marked(
            l.local_addr().unwrap(),
            DEFAULT_MARK,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        let sock = socket2::SockRef::from(&s);
        assert_eq!(sock.mark().unwrap(), DEFAULT_MARK);
    }

    #[tokio::test]
    async fn connect_errors_name_the_destination() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let err = connect_marked(addr, 0, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
