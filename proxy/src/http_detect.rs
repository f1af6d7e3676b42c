//! Which HTTP a downstream connection speaks, told by its first bytes: the HTTP/2 client preface (prior knowledge,
//! h2c and gRPC) or anything else (HTTP/1). Deciding before hyper starts lets each connection carry only its own
//! protocol's machinery: an HTTP/1 connection gets no HTTP/2 frame watcher (`h2_watch.rs`) and no HTTP/2 server
//! state, an HTTP/2 connection no HTTP/1 framing guard. The bytes read to decide are replayed by [`Prefixed`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tollgate_h2_codec::h2_frames::PREFACE;

/// The bytes that decided, at most the preface's length.
#[derive(Debug, Clone, Copy)]
pub struct Sniffed {
    bytes: [u8; PREFACE.len()],
    len: usize,
}

impl Sniffed {
    /// The client sent the whole HTTP/2 connection preface.
    pub fn is_http2(&self) -> bool {
        self.len == PREFACE.len() && self.bytes[..] == PREFACE[..]
    }

    /// Nothing at all arrived before the client closed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Reads until the bytes are the HTTP/2 preface, or differ from it (HTTP/1: after the first read, unless the request
/// starts like the preface), or the client closed.
pub async fn sniff<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<Sniffed> {
    let mut s = Sniffed {
        bytes: [0; PREFACE.len()],
        len: 0,
    };
    while s.len < PREFACE.len() && s.bytes[..s.len] == PREFACE[..s.len] {
        let n = io.read(&mut s.bytes[s.len..]).await?;
        if n == 0 {
            break;
        }
        s.len += n;
    }
    Ok(s)
}

/// I/O that first returns the sniffed bytes, then reads from `inner`; writes go straight to `inner`.
#[derive(Debug)]
pub struct Prefixed<T> {
    inner: T,
    prefix: Sniffed,
    pos: usize,
}

impl<T> Prefixed<T> {
    pub fn new(inner: T, prefix: Sniffed) -> Self {
        Prefixed {
            inner,
            prefix,
            pos: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if read_buffered(buf, this.prefix.bytes(), &mut this.pos) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

/// The read of an I/O wrapper that hands out bytes it holds before reading on: copies what fits of
/// `bytes[*pos..]` into `buf` and moves `pos` past it. `false` when no byte was left to hand out.
pub(crate) fn read_buffered(buf: &mut ReadBuf<'_>, bytes: &[u8], pos: &mut usize) -> bool {
    let left = &bytes[*pos..];
    if left.is_empty() {
        return false;
    }
    let n = left.len().min(buf.remaining());
    buf.put_slice(&left[..n]);
    *pos += n;
    true
}

/// The `AsyncWrite` of an I/O wrapper that only changes reads: every call goes to its `inner` field (with a
/// method name as second argument, `poll_shutdown` calls that method of the wrapper instead).
macro_rules! write_through_inner {
    ($wrapper:ident) => {
        $crate::http_detect::write_through_inner!($wrapper, poll_inner_shutdown);
        impl<T: tokio::io::AsyncWrite + Unpin> $wrapper<T> {
            fn poll_inner_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
    ($wrapper:ident, $shutdown:ident) => {
        impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<T> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                data: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
            }
            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }
            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                self.$shutdown(cx)
            }
            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
        }
    };
}
pub(crate) use write_through_inner;

write_through_inner!(Prefixed);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn sniffed_from(chunks: &[&[u8]]) -> (Sniffed, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(1024);
        for c in chunks {
            client.write_all(c).await.unwrap();
        }
        drop(client);
        let s = sniff(&mut server).await.unwrap();
        let mut all = Vec::new();
        Prefixed::new(server, s)
            .read_to_end(&mut all)
            .await
            .unwrap();
        (s, all)
    }

    #[tokio::test]
    async fn http1_is_told_by_its_first_read_and_replayed_whole() {
        let req: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let (s, all) = sniffed_from(&[req]).await;
        assert!(!s.is_http2());
        assert_eq!(all, req);
    }

    #[tokio::test]
    async fn a_preface_split_over_reads_is_http2() {
        let mut sent = PREFACE.to_vec();
        sent.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
        let (s, all) = sniffed_from(&[&PREFACE[..3], &PREFACE[3..10], &sent[10..]]).await;
        assert!(s.is_http2());
        assert_eq!(all, sent);
    }

    #[tokio::test]
    async fn a_method_starting_like_the_preface_is_http1() {
        let req: &[u8] = b"PRIX / HTTP/1.1\r\n\r\n";
        let (s, all) = sniffed_from(&[&req[..2], &req[2..]]).await;
        assert!(!s.is_http2());
        assert_eq!(all, req);
        let (s, all) = sniffed_from(&[]).await;
        assert!(s.is_empty() && all.is_empty());
    }
}
