//! HTTP/1.1 and HTTP/2 (prior knowledge) client connections for the load engine: a fixed set of connections,
//! reconnected when one fails. HTTP/1.1 connections carry one request at a time (taken from a pool); HTTP/2 ones
//! multiplex, so requests are spread over them round-robin.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::LoadError;

/// Which HTTP version to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum HttpVersion {
    Http1,
    Http2,
}

/// What to send.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    pub url: hyper::Uri,
    pub version: HttpVersion,
    pub connections: usize,
    /// Request body size; 0 sends GET, more sends POST with that many bytes.
    pub payload: usize,
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// The connection set.
pub struct HttpClient {
    target: HttpTarget,
    authority: String,
    slots: Vec<Mutex<Option<Sender>>>,
    next: AtomicUsize,
    body: Bytes,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    pub fn new(target: HttpTarget) -> Result<Arc<Self>, LoadError> {
        let authority = target
            .url
            .authority()
            .ok_or_else(|| LoadError::Target(format!("{}: the URL needs host:port", target.url)))?
            .to_string();
        if target.url.scheme_str() != Some("http") {
            return Err(LoadError::Target(format!(
                "{}: only http:// URLs (cleartext HTTP/1.1 or h2c) are supported",
                target.url
            )));
        }
        let slots = (0..target.connections.max(1))
            .map(|_| Mutex::new(None))
            .collect();
        Ok(Arc::new(HttpClient {
            body: Bytes::from(vec![b'x'; target.payload]),
            target,
            authority,
            slots,
            next: AtomicUsize::new(0),
        }))
    }

    async fn connect(&self) -> Result<Sender, LoadError> {
        let addr = self.authority.clone();
        let stream = TcpStream::connect(&addr)
            .await
            .map_err(|e| LoadError::Connect(addr.clone(), e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        match self.target.version {
            HttpVersion::Http1 => {
                let (send, conn) = http1::handshake(io)
                    .await
                    .map_err(|e| LoadError::Connect(addr, e.to_string()))?;
                tokio::spawn(conn);
                Ok(Sender::H1(send))
            }
            HttpVersion::Http2 => {
                let (send, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| LoadError::Connect(addr, e.to_string()))?;
                tokio::spawn(conn);
                Ok(Sender::H2(send))
            }
        }
    }

    fn request(&self) -> hyper::Request<Full<Bytes>> {
        let method = if self.body.is_empty() { "GET" } else { "POST" };
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(self.target.url.clone());
        if self.target.version == HttpVersion::Http1 {
            b = b.header(hyper::header::HOST, &self.authority);
        }
        b.body(Full::new(self.body.clone())).expect("valid request")
    }

    /// Sends one request and reads the whole response; returns its status.
    pub async fn send(&self) -> Result<u16, LoadError> {
        match self.target.version {
            HttpVersion::Http1 => self.send_h1().await,
            HttpVersion::Http2 => self.send_h2().await,
        }
    }

    async fn send_h1(&self) -> Result<u16, LoadError> {
        // Take the first idle connection; if all are busy, wait on one (round-robin) — the wait counts toward
        // latency, as it would for a real client with this many connections.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.slots.len();
        let mut guard = None;
        for k in 0..n {
            if let Ok(g) = self.slots[(start + k) % n].try_lock() {
                guard = Some(g);
                break;
            }
        }
        let mut guard = match guard {
            Some(g) => g,
            None => self.slots[start % n].lock().await,
        };
        let reusable = matches!(&*guard, Some(Sender::H1(s)) if !s.is_closed());
        if !reusable {
            *guard = Some(self.connect().await?);
        }
        let Some(Sender::H1(send)) = guard.as_mut() else {
            unreachable!("an HTTP/1 slot holds an HTTP/1 sender")
        };
        let result = async {
            send.ready().await?;
            let resp = send.send_request(self.request()).await?;
            let status = resp.status().as_u16();
            resp.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        }
        .await;
        result.map_err(|e| {
            *guard = None;
            LoadError::Request(e.to_string())
        })
    }

    async fn send_h2(&self) -> Result<u16, LoadError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut send = {
            let mut guard = self.slots[i].lock().await;
            let usable = matches!(&*guard, Some(Sender::H2(s)) if !s.is_closed());
            if !usable {
                *guard = Some(self.connect().await?);
            }
            match guard.as_ref() {
                Some(Sender::H2(s)) => s.clone(),
                _ => unreachable!("an HTTP/2 slot holds an HTTP/2 sender"),
            }
        };
        let result = async {
            send.ready().await?;
            let resp = send.send_request(self.request()).await?;
            let status = resp.status().as_u16();
            resp.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        }
        .await;
        result.map_err(|e| LoadError::Request(e.to_string()))
    }
}
