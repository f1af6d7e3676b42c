//! HTTP/1 request-framing guard against request smuggling.
//!
//! hyper resolves a request carrying both `Transfer-Encoding` and `Content-Length` by ignoring the length (RFC 9112
//! section 6.1 allows it), but such a request is the classic smuggling vector and the safe answer is to refuse it.
//! hyper exposes no hook for that, so this wrapper sits between the socket and hyper and follows the HTTP/1 message
//! framing itself: it releases a head to hyper line by line (holding back only the current incomplete header
//! line), and when the second of the two framing headers appears it breaks that header's *name* (an invalid token
//! character), which makes hyper reject the head with its own `400 Bad Request` and close the connection, in order
//! after earlier pipelined responses. Bodies are followed (Content-Length, chunked) so that body bytes are never
//! mistaken for a head.
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
    /// The current head so far (kept whole to decide the body framing once complete).
    head: Vec<u8>,
    /// Offset in `head` of the first byte not yet released to hyper (the start of an incomplete header line).
    released: usize,
    seen_te: bool,
    seen_cl: bool,
    max_head: usize,
    /// Heads refused so far (for tests and logs).
    pub refused: u32,
}

impl FramingTracker {
    pub fn new(max_head: usize) -> Self {
        FramingTracker {
            state: State::Head,
            head: Vec::new(),
            released: 0,
            seen_te: false,
            seen_cl: false,
            max_head,
            refused: 0,
        }
    }

    /// Bytes still held back (an incomplete head); released at EOF so hyper sees what the client sent.
    pub fn take_held(&mut self) -> Vec<u8> {
        let held = self.head.split_off(self.released.min(self.head.len()));
        self.head.clear();
        self.released = 0;
        held
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
                    self.head.extend_from_slice(input);
                    input = &[];
                    if let Some(rest) = self.release_lines(out) {
                        // The head is complete: continue with what followed it (body or pipelined requests).
                        let mut more = Vec::new();
                        self.feed(&rest, &mut more);
                        out.extend_from_slice(&more);
                    } else if self.head.len() > self.max_head {
                        out.extend_from_slice(&self.head[self.released..]);
                        self.head.clear();
                        self.released = 0;
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

    /// Releases every complete line of the head to `out`, breaking the name of a `Transfer-Encoding` or
    /// `Content-Length` line when the other one was already seen in this head. The request line is released even
    /// while incomplete (it is never rewritten), so hyper can detect the protocol and run its header timeout.
    /// Returns the bytes after the head once the head is complete.
    fn release_lines(&mut self, out: &mut Vec<u8>) -> Option<Vec<u8>> {
        loop {
            let start = self.released;
            let Some(nl) = self.head[start..].iter().position(|&c| c == b'\n') else {
                if start == 0 || !self.head[..start].contains(&b'\n') {
                    // Still in the request line.
                    out.extend_from_slice(&self.head[start..]);
                    self.released = self.head.len();
                }
                return None;
            };
            let end = start + nl + 1;
            let first_line = !self.head[..start].contains(&b'\n');
            let line_is_empty = matches!(&self.head[start..end], b"\n" | b"\r\n");
            if !first_line && !line_is_empty {
                let line = &self.head[start..end];
                let te = starts_with_name(line, b"transfer-encoding");
                let cl = starts_with_name(line, b"content-length");
                if (te && self.seen_cl) || (cl && self.seen_te) {
                    self.head[start] = b'(';
                    self.refused += 1;
                }
                self.seen_te |= te;
                self.seen_cl |= cl;
            }
            out.extend_from_slice(&self.head[start..end]);
            self.released = end;
            if line_is_empty && !first_line {
                let rest = self.head.split_off(end);
                let head = std::mem::take(&mut self.head);
                self.released = 0;
                self.seen_te = false;
                self.seen_cl = false;
                self.state = framing_of(&head);
                return Some(rest);
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
}

/// `name:` at the start of a header line (case-insensitive).
fn starts_with_name(line: &[u8], name: &[u8]) -> bool {
    line.len() > name.len()
        && line[..name.len()].eq_ignore_ascii_case(name)
        && line[name.len()] == b':'
}

/// The body framing of a complete head; anything hyper would refuse (or that switches protocols) is passed
/// through untracked.
fn framing_of(head: &[u8]) -> State {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
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
    if method_connect || upgrade || (te.is_some() && cl.is_some()) {
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

    #[test]
    fn whichever_framing_header_comes_second_is_broken() {
        let input =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n";
        let (out, t) = run(input, 2);
        assert_eq!(t.refused, 1);
        assert!(String::from_utf8_lossy(&out).contains("\r\n(ontent-length: 3\r\n"));
    }

    #[test]
    fn the_request_line_is_released_before_it_is_complete() {
        // hyper's protocol detection and header-read timeout need to see bytes from a slow client.
        let mut t = FramingTracker::new(1024);
        let mut out = Vec::new();
        t.feed(b"GET /slo", &mut out);
        assert_eq!(out, b"GET /slo");
        t.feed(b"w HTTP/1.1\r\nHost: se", &mut out);
        assert_eq!(out, b"GET /slow HTTP/1.1\r\n");
        t.feed(b"rver\r\n\r\n", &mut out);
        assert_eq!(out, b"GET /slow HTTP/1.1\r\nHost: server\r\n\r\n");
    }
}
