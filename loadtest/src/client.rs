//! One load connection: HTTP/1.1, HTTP/2 or gRPC unary over hyper's low-level client, one request at a time.
//!
//! A request succeeds when the whole response body (and, for gRPC, the trailers) arrived with a success status:
//! HTTP 2xx, and for gRPC also `grpc-status: 0`.

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use crate::dns::DnsConn;
use crate::kafka::{KafkaConn, KafkaError};

/// Wire protocol of a load target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    Http2,
    /// gRPC unary: HTTP/2 POST with a length-prefixed message; success needs `grpc-status: 0`.
    Grpc,
    /// DNS A queries over UDP for `authority`; success needs RCODE 0.
    Dns,
    /// Kafka Produce of one `payload`-byte record to partition 0 of topic `path`; success needs error code 0.
    Kafka,
}

/// Where and what to send.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub addr: SocketAddr,
    /// Host header / :authority (L7 policies match on it).
    pub authority: String,
    /// Request path; for gRPC `/package.Service/Method`.
    pub path: String,
    pub protocol: Protocol,
    /// Request body size in bytes (0 = GET for HTTP).
    pub payload: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {addr}: {source} (is the target listening? check --target)")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "HTTP handshake with {addr}: {source} (does the target speak {protocol:?}? check --protocol)"
    )]
    Handshake {
        addr: SocketAddr,
        protocol: Protocol,
        source: hyper::Error,
    },
    #[error(
        "Kafka connection to {addr}: {source} (is a broker listening there, with the topic created?)"
    )]
    Kafka {
        addr: SocketAddr,
        source: KafkaError,
    },
    #[error("building the request for path {path:?}: {source} (check --path / --authority)")]
    Request { path: String, source: http::Error },
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
    Dns(DnsConn),
    Kafka(KafkaConn),
}

/// An open connection that sends the target's request repeatedly.
pub struct Connection {
    sender: Sender,
    request: http::request::Parts,
    body: Bytes,
    grpc: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("uri", &self.request.uri)
            .field("grpc", &self.grpc)
            .finish()
    }
}

/// The request body: raw bytes for HTTP, one uncompressed length-prefixed message for gRPC.
pub fn request_body(protocol: Protocol, payload: usize) -> Bytes {
    match protocol {
        Protocol::Grpc => {
            let mut b = BytesMut::with_capacity(5 + payload);
            b.put_u8(0); // not compressed
            b.put_u32(payload as u32);
            b.put_bytes(b'x', payload);
            b.freeze()
        }
        _ => Bytes::from(vec![b'x'; payload]),
    }
}

fn request_parts(target: &Target) -> Result<http::request::Parts, ClientError> {
    let err = |source| ClientError::Request {
        path: target.path.clone(),
        source,
    };
    let mut b = http::Request::builder();
    b = match target.protocol {
        // DNS and Kafka never send these parts; building them keeps one code path.
        Protocol::Http1 | Protocol::Dns | Protocol::Kafka => b
            .uri(target.path.as_str())
            .header(http::header::HOST, target.authority.as_str()),
        // HTTP/2 carries the authority in the URI (:authority pseudo-header).
        Protocol::Http2 | Protocol::Grpc => {
            b.uri(format!("http://{}{}", target.authority, target.path))
        }
    };
    b = match (target.protocol, target.payload) {
        (Protocol::Grpc, _) => b
            .method("POST")
            .header("content-type", "application/grpc")
            .header("te", "trailers"),
        (_, 0) => b.method("GET"),
        _ => b
            .method("POST")
            .header("content-type", "application/octet-stream"),
    };
    let (parts, ()) = b.body(()).map_err(err)?.into_parts();
    Ok(parts)
}

impl Connection {
    pub async fn open(target: &Target) -> Result<Self, ClientError> {
        let request = request_parts(target)?;
        if target.protocol == Protocol::Dns {
            let conn = DnsConn::open(target.addr, &target.authority)
                .await
                .map_err(|source| ClientError::Connect {
                    addr: target.addr,
                    source,
                })?;
            return Ok(Self {
                sender: Sender::Dns(conn),
                request,
                body: Bytes::new(),
                grpc: false,
            });
        }
        if target.protocol == Protocol::Kafka {
            let conn = KafkaConn::open(
                target.addr,
                target.path.trim_start_matches('/'),
                target.payload,
            )
            .await
            .map_err(|source| ClientError::Kafka {
                addr: target.addr,
                source,
            })?;
            return Ok(Self {
                sender: Sender::Kafka(conn),
                request,
                body: Bytes::new(),
                grpc: false,
            });
        }
        let stream =
            TcpStream::connect(target.addr)
                .await
                .map_err(|source| ClientError::Connect {
                    addr: target.addr,
                    source,
                })?;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        let hs = |source| ClientError::Handshake {
            addr: target.addr,
            protocol: target.protocol,
            source,
        };
        let sender = match target.protocol {
            Protocol::Http1 => {
                let (s, conn) = http1::handshake(io).await.map_err(hs)?;
                tokio::spawn(conn);
                Sender::H1(s)
            }
            Protocol::Http2 | Protocol::Grpc | Protocol::Dns | Protocol::Kafka => {
                let (s, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(hs)?;
                tokio::spawn(conn);
                Sender::H2(s)
            }
        };
        Ok(Self {
            sender,
            request,
            body: request_body(target.protocol, target.payload),
            grpc: target.protocol == Protocol::Grpc,
        })
    }

    /// Sends one request and reads the whole response; `false` on any transport or status failure. A failed
    /// HTTP/1.1 connection stays failed (later calls return `false` quickly), which shows up as errors.
    pub async fn send(&mut self) -> bool {
        match &mut self.sender {
            Sender::Dns(d) => d.query().await,
            Sender::Kafka(k) => k.produce().await,
            Sender::H1(_) | Sender::H2(_) => {
                let grpc = self.grpc;
                self.answer().await.is_some_and(|a| a.ok(grpc))
            }
        }
    }

    /// Sends one HTTP request and reads the whole response: its status and gRPC status. `None` on a transport
    /// failure, and for DNS and Kafka connections (they have no HTTP answer).
    pub async fn answer(&mut self) -> Option<Answer> {
        let req = http::Request::from_parts(self.request.clone(), Full::new(self.body.clone()));
        let resp = match &mut self.sender {
            Sender::Dns(_) | Sender::Kafka(_) => return None,
            Sender::H1(s) => {
                s.ready().await.ok()?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await.ok()?;
                s.send_request(req).await
            }
        };
        let resp = resp.ok()?;
        let status = resp.status().as_u16();
        let header_grpc_status = resp.headers().get("grpc-status").cloned();
        let collected = resp.into_body().collect().await.ok()?;
        // Trailers-only responses put grpc-status in the headers.
        let grpc_status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status").cloned())
            .or(header_grpc_status)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        Some(Answer {
            status,
            grpc_status,
        })
    }
}

/// What an HTTP request got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub grpc_status: Option<String>,
}

impl Answer {
    /// A success: 2xx, and for gRPC also `grpc-status: 0`.
    pub fn ok(&self, grpc: bool) -> bool {
        (200..300).contains(&self.status) && (!grpc || self.grpc_status.as_deref() == Some("0"))
    }

    /// A policy denial: HTTP 403, or gRPC PERMISSION_DENIED (7).
    pub fn denied(&self) -> bool {
        self.status == 403 || self.grpc_status.as_deref() == Some("7")
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if let Some(g) = &self.grpc_status {
            write!(f, " grpc-status {g}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(protocol: Protocol, payload: usize) -> Target {
        Target {
            addr: "127.0.0.1:1".parse().unwrap(),
            authority: "svc.local".into(),
            path: "/p".into(),
            protocol,
            payload,
        }
    }

    #[test]
    fn answers_ok_and_denied() {
        let a = |status, g: Option<&str>| Answer {
            status,
            grpc_status: g.map(String::from),
        };
        assert!(a(200, None).ok(false) && !a(200, None).ok(true) && a(200, Some("0")).ok(true));
        assert!(a(403, None).denied() && a(200, Some("7")).denied() && !a(404, None).denied());
        assert!(!a(403, None).ok(false) && !a(200, None).denied());
        assert_eq!(a(200, Some("7")).to_string(), "HTTP 200 grpc-status 7");
    }

    #[test]
    fn grpc_body_is_length_prefixed() {
        let b = request_body(Protocol::Grpc, 3);
        assert_eq!(&b[..], &[0, 0, 0, 0, 3, b'x', b'x', b'x']);
        assert_eq!(request_body(Protocol::Http1, 2).len(), 2);
    }

    #[test]
    fn request_shapes() {
        let p = request_parts(&target(Protocol::Http1, 0)).unwrap();
        assert_eq!(
            (p.method.as_str(), p.uri.to_string()),
            ("GET", "/p".to_string())
        );
        assert_eq!(p.headers["host"], "svc.local");
        let p = request_parts(&target(Protocol::Http2, 10)).unwrap();
        assert_eq!(
            (p.method.as_str(), p.uri.to_string()),
            ("POST", "http://svc.local/p".to_string())
        );
        let p = request_parts(&target(Protocol::Grpc, 0)).unwrap();
        assert_eq!(p.method, "POST");
        assert_eq!(p.headers["content-type"], "application/grpc");
    }
}
