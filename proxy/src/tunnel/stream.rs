//! One CONNECT stream as a byte stream, read and written straight on h2's stream handles.
//!
//! hyper's upgraded HTTP/2 stream hands every write to a task of its own over a channel (a copy, a wake-up and a
//! second task per chunk before h2's connection task sees it); here the writer's own task queues the DATA frame and
//! only h2's connection task runs after it.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The bytes of one tunnelled connection (AsyncRead + AsyncWrite). Dropping it before a shutdown resets the HTTP/2
/// stream; the tunnel connection and its other streams stay.
#[derive(Debug)]
pub struct TunnelStream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received and not yet read.
    unread: Bytes,
    /// END_STREAM sent (our write side is shut down).
    finished: bool,
}

impl TunnelStream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            unread: Bytes::new(),
            finished: false,
        }
    }
}

fn to_io(e: h2::Error) -> std::io::Error {
    if e.is_io() {
        return e.into_io().expect("is_io");
    }
    let kind = match e.reason() {
        Some(Reason::STREAM_CLOSED) | Some(Reason::CANCEL) => std::io::ErrorKind::BrokenPipe,
        _ => std::io::ErrorKind::Other,
    };
    std::io::Error::new(kind, e)
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        while this.unread.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => this.unread = data,
                // The peer cancelling or ending its side is an end of file, as for a TCP FIN.
                Some(Err(e)) if matches!(e.reason(), Some(Reason::NO_ERROR | Reason::CANCEL)) => {
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread[..n]);
        this.unread.advance(n);
        // Read bytes reopen the peer's window (h2 sends WINDOW_UPDATE once enough has been released).
        let _ = this.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let send = &mut self.send;
        // Capacity is the peer's window, capped by h2's send buffer: waiting for it is the backpressure.
        if send.capacity() == 0 {
            send.reserve_capacity(buf.len());
            while send.capacity() == 0 {
                match ready!(send.poll_capacity(cx)) {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                    None => return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
                }
            }
        }
        let n = send.capacity().min(buf.len());
        send.send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(to_io)?;
        if n < buf.len() {
            // What was reserved beyond this write goes back to the connection: an idle stream must not pin
            // connection window the other streams need.
            send.reserve_capacity(0);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // h2's connection task writes queued frames as soon as it runs.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.finished {
            self.finished = true;
            self.send.send_data(Bytes::new(), true).map_err(to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

/// Pings a tunnel connection every 30 s and gives up when no answer comes within 20 s (the keep-alive hyper ran for
/// the tunnel before it spoke h2 directly): a node that vanished without closing is noticed, and its connection
/// closed. Returns why it gave up.
pub(crate) async fn keep_alive(mut ping: h2::PingPong) -> std::io::Error {
    const INTERVAL: Duration = Duration::from_secs(30);
    const TIMEOUT: Duration = Duration::from_secs(20);
    loop {
        tokio::time::sleep(INTERVAL).await;
        match tokio::time::timeout(TIMEOUT, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => return to_io(e),
            Err(_) => {
                return std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer to a keep-alive ping within {TIMEOUT:?}"),
                );
            }
        }
    }
}
