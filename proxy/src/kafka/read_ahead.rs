//! Read-ahead for both directions of a Kafka connection that holds memory only while it holds bytes.
//!
//! A small frame (a 1 KB Produce, its acknowledgement) should arrive in one read rather than a length read and a
//! body read, so reads smaller than [`READ_AHEAD`] go through a buffer. tokio's `BufReader` keeps its buffer for the
//! connection's life, two per connection: most of what an idle connection held. Here a read lands on the stack;
//! only the bytes the caller did not take are kept, and that buffer is freed when a read finds the socket empty.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Reads asking for less than this are served through the read-ahead; larger ones go straight to the socket.
pub(super) const READ_AHEAD: usize = 2048;

/// A reader whose read-ahead buffer exists only while it holds unread bytes.
#[derive(Debug)]
pub(super) struct ReadAhead<R> {
    inner: R,
    /// Bytes read from `inner` and not yet handed out: `held[pos..]`.
    held: Vec<u8>,
    pos: usize,
}

impl<R> ReadAhead<R> {
    pub(super) fn new(inner: R) -> Self {
        ReadAhead {
            inner,
            held: Vec::new(),
            pos: 0,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ReadAhead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if crate::http_detect::read_buffered(out, &this.held, &mut this.pos) {
            return Poll::Ready(Ok(()));
        }
        if out.remaining() >= READ_AHEAD {
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        let mut stack = [MaybeUninit::<u8>::uninit(); READ_AHEAD];
        let mut read = ReadBuf::uninit(&mut stack);
        match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
            Poll::Pending => {
                // Everything read was handed out and the socket is empty: hold no buffer while waiting.
                this.held = Vec::new();
                this.pos = 0;
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let got = read.filled();
                let n = out.remaining().min(got.len());
                out.put_slice(&got[..n]);
                this.held.clear();
                this.held.extend_from_slice(&got[n..]);
                this.pos = 0;
                Poll::Ready(Ok(()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_share_one_socket_read_and_nothing_is_held_while_waiting() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let mut r = ReadAhead::new(rx);
        tx.write_all(b"\0\0\0\x05hello\0\0\0\x02hi").await.unwrap();
        let mut prefix = [0u8; 4];
        r.read_exact(&mut prefix).await.unwrap();
        assert_eq!(prefix, [0, 0, 0, 5]);
        assert_eq!(r.held.len() - r.pos, 11, "the rest of the read is held");
        let mut body = [0u8; 5];
        r.read_exact(&mut body).await.unwrap();
        assert_eq!(&body, b"hello");
        let mut next = [0u8; 6];
        r.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"\0\0\0\x02hi");
        // Nothing more has arrived: the read waits, and the buffer is gone meanwhile.
        let mut one = [0u8; 1];
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), r.read(&mut one))
                .await
                .is_err()
        );
        assert_eq!(r.held.capacity(), 0);
        // Large reads bypass the buffer; end of stream reads as 0.
        let big = vec![7u8; READ_AHEAD + 10];
        tx.write_all(&big).await.unwrap();
        drop(tx);
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, big);
    }
}
