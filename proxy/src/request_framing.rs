//! HTTP/1 request-framing guard against request smuggling.
//!
//! hyper resolves a request carrying both `Transfer-Encoding` and `Content-Length` by ignoring the length (RFC 9112
//! section 6.1 allows it), but such a request is the classic smuggling vector and the safe answer is to refuse it.
//! hyper exposes no hook for that, so this wrapper sits between the socket and hyper and follows the HTTP/1 message
//! framing itself: it holds back each request head until it is complete, and if the head carries both framing
//! headers it breaks the `Transfer-Encoding` header *name* (an invalid token character), which makes hyper reject
//! the head with its own `400 Bad Request` and close the connection, in order after earlier pipelined responses.
//!
//! Everything it does not understand (HTTP/2 preface, parse errors, oversized heads, upgrades, CONNECT) it passes
//! through untouched and stops tracking: hyper then applies its own rules (400 / 431 / protocol switch).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Accumulating a request head (held back from hyper until complete).
    Head,
    /// Forwarding `n` more body bytes.
    Body(u64),
    /// Chunked body: reading a chunk-size line (value so far, in an extension?).
    ChunkSize(u64, bool),
    /// Chunked body: `n` data bytes left, then the CRLF after them.
    ChunkData(u64),
    ChunkDataEnd,
    /// Chunked body: trailer section; `true` while the current line is still empty.
    Trailer(bool),
    /// Not tracking any more: bytes pass unchanged.
    Passthrough,
}

/// The pure framing tracker: bytes in, (possibly rewritten) bytes out.
#[derive(Debug)]
pub struct FramingTracker {
    state: State,
    head: Vec<u8>,
    max_head: usize,
    /// Heads refused so far (for tests and logs).
    pub refused: u32,
}

impl FramingTracker {
    pub fn new(max_head: usize) -> Self {
        FramingTracker {
            state: State::Head,
            head: Vec::new(),
            max_head,
            refused: 0,
        }
    }

    /// Bytes still held back (an incomplete head); released at EOF so hyper sees what the client sent.
    pub fn take_held(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.head)
    }

    /// Feeds bytes read from the client; appends what hyper may see to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match self.state {
                State::Passthrough => {
                    out.extend_from_slice(input);
                    return;
                }
                State::Head => {
                    let start = self.head.len().saturating_sub(3);
                    self.head.extend_from_slice(input);
                    input = &[];
                    if let Some(end) = head_end(&self.head, start) {
                        let rest = self.head.split_off(end);
                        let mut head = std::mem::take(&mut self.head);
                        self.state = self.inspect(&mut head);
                        out.extend_from_slice(&head);
                        // Continue with what followed the head (body or pipelined requests).
                        let mut more = Vec::new();
                        self.feed(&rest, &mut more);
                        out.extend_from_slice(&more);
                    } else if self.head.len() > self.max_head {
                        out.append(&mut self.head);
                        self.state = State::Passthrough;
                    }
                }
                State::Body(n) => {
                    let take = (n.min(input.len() as u64)) as usize;
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.state = if n - take as u64 == 0 {
                        State::Head
                    } else {
                        State::Body(n - take as u64)
                    };
                }
                State::ChunkData(n) => {
                    let take = (n.min(input.len() as u64)) as usize;
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.state = if n - take as u64 == 0 {
                        State::ChunkDataEnd
                    } else {
                        State::ChunkData(n - take as u64)
                    };
                }
                _ => {
                    let b = input[0];
                    out.push(b);
                    input = &input[1..];
                    self.state = self.step_chunk_byte(b);
                }
            }
        }
    }

    fn step_chunk_byte(&self, b: u8) -> State {
        match self.state {
            State::ChunkSize(v, ext) => match b {
                b'\n' if v == 0 => State::Trailer(true),
                b'\n' => State::ChunkData(v),
                b'\r' => State::ChunkSize(v, ext),
                _ if ext => State::ChunkSize(v, true),
                b';' | b' ' | b'\t' => State::ChunkSize(v, true),
                _ => match (char::from(b).to_digit(16), v.checked_mul(16)) {
                    (Some(d), Some(m)) => State::ChunkSize(m + u64::from(d), false),
                    // Not a chunk size hyper would accept either: stop tracking, hyper rejects it.
                    _ => State::Passthrough,
                },
            },
            State::ChunkDataEnd => match b {
                b'\n' => State::ChunkSize(0, false),
                _ => State::ChunkDataEnd,
            },
            State::Trailer(empty) => match b {
                b'\n' if empty => State::Head,
                b'\n' => State::Trailer(true),
                b'\r' => State::Trailer(empty),
                _ => State::Trailer(false),
            },
            ref other => other.clone(),
        }
    }

    /// Decides the framing of a complete head, rewriting it if it must be refused.
    fn inspect(&mut self, head: &mut [u8]) -> State {
        let mut headers = [httparse::EMPTY_HEADER; 256];
        let mut req = httparse::Request::new(&mut headers);
        let parsed = matches!(req.parse(head), Ok(httparse::Status::Complete(_)));
        if !parsed {
            return State::Passthrough;
        }
        let method_connect = req.method == Some("CONNECT");
        let mut te: Option<&[u8]> = None;
        let mut cl: Option<&[u8]> = None;
        let mut upgrade = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = Some(h.value);
            } else if h.name.eq_ignore_ascii_case("content-length") {
                cl = Some(h.value);
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        if te.is_some() && cl.is_some() {
            self.refused += 1;
            break_header_name(head, b"transfer-encoding");
            return State::Passthrough;
        }
        if method_connect || upgrade {
            return State::Passthrough;
        }
        if let Some(te) = te {
            let last = te.rsplit(|&c| c == b',').next().unwrap_or(b"");
            return if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                State::ChunkSize(0, false)
            } else {
                State::Passthrough
            };
        }
        match cl.map(|v| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        }) {
            None | Some(Some(0)) => State::Head,
            Some(Some(n)) => State::Body(n),
            Some(None) => State::Passthrough,
        }
    }
}

/// End (exclusive) of the head: the first empty line at or after `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' && i > 0 {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// Replaces the first character of every header line named `name` with `(`, which no token may contain.
fn break_header_name(head: &mut [u8], name: &[u8]) {
    let mut line_start = 0;
    while line_start < head.len() {
        let line_end = head[line_start..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(head.len(), |p| line_start + p + 1);
        let line = &head[line_start..line_end];
        if line.len() > name.len() && line[..name.len()].eq_ignore_ascii_case(name) {
            head[line_start] = b'(';
        }
        line_start = line_end;
    }
}

/// I/O wrapper applying [`FramingTracker`] to what the client sends; writes pass straight through.
#[derive(Debug)]
pub struct FramingGuard<T> {
    inner: T,
    tracker: FramingTracker,
    ready: Vec<u8>,
    pos: usize,
    eof: bool,
}

impl<T> FramingGuard<T> {
    pub fn new(inner: T, max_head: usize) -> Self {
        FramingGuard {
            inner,
            tracker: FramingTracker::new(max_head),
            ready: Vec::new(),
            pos: 0,
            eof: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FramingGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.pos < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.pos);
                buf.put_slice(&this.ready[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.ready.len() {
                    this.ready.clear();
                    this.pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if matches!(this.tracker.state, State::Passthrough) {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut scratch = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        this.eof = true;
                        this.ready = this.tracker.take_held();
                        this.pos = 0;
                    } else {
                        let data = rb.filled().to_vec();
                        this.tracker.feed(&data, &mut this.ready);
                    }
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FramingGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns the output and the tracker.
    fn run(input: &[u8], step: usize) -> (Vec<u8>, FramingTracker) {
        let mut t = FramingTracker::new(64 * 1024);
        let mut out = Vec::new();
        for chunk in input.chunks(step) {
            t.feed(chunk, &mut out);
        }
        out.extend(t.take_held());
        (out, t)
    }

    const SMUGGLE: &[u8] =
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn te_plus_cl_breaks_the_te_header_name() {
        for step in [1, 3, 7, 1000] {
            let (out, t) = run(SMUGGLE, step);
            assert_eq!(t.refused, 1, "step {step}");
            let text = String::from_utf8_lossy(&out);
            assert!(
                text.contains("\r\n(ransfer-Encoding: chunked\r\n"),
                "step {step}: {text}"
            );
            assert_eq!(out.len(), SMUGGLE.len());
            // hyper's parser (httparse) refuses the rewritten head.
            let mut h = [httparse::EMPTY_HEADER; 16];
            assert!(httparse::Request::new(&mut h).parse(&out).is_err());
        }
    }

    #[test]
    fn te_plus_cl_in_a_pipelined_second_request_is_caught_after_bodies() {
        let input = [
            &b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"[..],
            b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n",
            SMUGGLE,
        ]
        .concat();
        for step in [1, 2, 5, 64, 4096] {
            let (out, t) = run(&input, step);
            assert_eq!(t.refused, 1, "step {step}");
            assert_eq!(out.len(), input.len());
        }
    }

    #[test]
    fn body_bytes_that_look_like_headers_are_not_inspected() {
        let body = b"x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let input = [
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
            body,
        ]
        .concat();
        let (out, t) = run(&input, 3);
        assert_eq!(t.refused, 0);
        assert_eq!(out, input);
    }

    #[test]
    fn ordinary_traffic_passes_unchanged() {
        let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n";
        let (out, t) = run(input, 5);
        assert_eq!((out.as_slice(), t.refused), (&input[..], 0));
    }

    #[test]
    fn h2_preface_upgrades_and_garbage_switch_to_passthrough() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04";
        let (out, _) = run(preface, 4);
        assert_eq!(out, preface);
        let ws = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello\r\n\r\n";
        let (out, t) = run(ws, 3);
        assert_eq!(
            (out.as_slice(), t.state.clone()),
            (&ws[..], State::Passthrough)
        );
        let (out, _) = run(b"GARBAGE\r\n\r\nmore", 2);
        assert_eq!(out, b"GARBAGE\r\n\r\nmore");
    }

    #[test]
    fn an_oversized_head_is_released_for_hyper_to_refuse() {
        let mut t = FramingTracker::new(100);
        let mut out = Vec::new();
        t.feed(&[b'a'; 150], &mut out);
        assert_eq!(out.len(), 150);
        assert_eq!(t.state, State::Passthrough);
    }
}
