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
//! A head asking to switch protocols (`Upgrade`, `CONNECT`) is followed by a pause: the bytes after it are held
//! until the service says whether the switch happened ([`UpgradeSignal`]). Switched: they are tunnel bytes and
//! pass untouched from then on. Declined (an h2c upgrade, a 403, an upstream that did not switch): they are the
//! next requests and are tracked like any others.
//!
//! Leading empty lines before a request line are passed on (hyper ignores them, as RFC 9112 section 2.2 allows)
//! and never mistaken for the request line.
//!
//! Everything it does not understand (HTTP/2 preface, parse errors, oversized heads) it passes through untouched
//! and stops tracking: hyper then applies its own rules (400 / 431).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};

use tokio::io::{AsyncRead, ReadBuf};

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
    /// After a head asking to switch protocols: holding what follows until the switch is settled.
    AwaitUpgrade,
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
    /// The current message asked to switch protocols: once its body is done, wait for the outcome.
    upgrade_pending: bool,
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
            upgrade_pending: false,
            max_head,
            refused: 0,
        }
    }

    /// True when the bytes fed so far end exactly between two messages: no partial head, no body outstanding.
    pub fn between_messages(&self) -> bool {
        self.state == State::Head && self.head.is_empty()
    }

    /// Bytes still held back (an incomplete head); released at EOF so hyper sees what the client sent.
    pub fn take_held(&mut self) -> Vec<u8> {
        let held = self.head.split_off(self.released.min(self.head.len()));
        self.head.clear();
        self.released = 0;
        held
    }

    /// The state after a message's last byte: the next head, or a pause while a protocol switch is settled.
    fn message_done(&mut self) -> State {
        if std::mem::take(&mut self.upgrade_pending) {
            State::AwaitUpgrade
        } else {
            State::Head
        }
    }

    /// The service's answer to the pending protocol switch. Switched: what was held (and everything after) is
    /// tunnel data. Declined: what was held is the next requests, tracked as usual.
    pub fn settle_upgrade(&mut self, switched: bool, out: &mut Vec<u8>) {
        if self.state != State::AwaitUpgrade {
            return;
        }
        let held = std::mem::take(&mut self.head);
        if switched {
            self.state = State::Passthrough;
            out.extend_from_slice(&held);
        } else {
            self.state = State::Head;
            self.feed(&held, out);
        }
    }

    /// Feeds bytes read from the client; appends what hyper may see to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match self.state {
                State::Passthrough => {
                    out.extend_from_slice(input);
                    return;
                }
                State::AwaitUpgrade => {
                    // Held whole: tunnel bytes must not be parsed (or rewritten), requests not yet released.
                    if self.head.len() + input.len() > self.max_head {
                        // A client that talks past an unanswered upgrade: give hyper everything and stop.
                        out.extend_from_slice(&self.head);
                        out.extend_from_slice(input);
                        self.head.clear();
                        self.state = State::Passthrough;
                        return;
                    }
                    self.head.extend_from_slice(input);
                    return;
                }
                State::Head => {
                    self.head.extend_from_slice(input);
                    input = &[];
                    if self.release_lines(out) {
                        // The head is complete and `head` holds what followed it (body or pipelined requests):
                        // continue with those bytes, then give the buffer back so its capacity serves the next
                        // head (no allocation per request on a keep-alive connection).
                        let mut rest = std::mem::take(&mut self.head);
                        self.feed(&rest, out);
                        if self.head.is_empty() {
                            rest.clear();
                            self.head = rest;
                        }
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
                        self.message_done()
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
    /// Once the head is complete, `head` keeps only the bytes after it, and the result is `true`.
    fn release_lines(&mut self, out: &mut Vec<u8>) -> bool {
        loop {
            // The current line starts after the last newline; the request line may be partly released already.
            let start = self.head[..self.released]
                .iter()
                .rposition(|&c| c == b'\n')
                .map_or(0, |i| i + 1);
            let in_request_line = start == 0;
            let Some(nl) = self.head[self.released..].iter().position(|&c| c == b'\n') else {
                // A lone CR at the start may be the first half of an empty line: wait for the next byte.
                if in_request_line && self.head != *b"\r" {
                    out.extend_from_slice(&self.head[self.released..]);
                    self.released = self.head.len();
                }
                return false;
            };
            let end = self.released + nl + 1;
            let line_is_empty = matches!(&self.head[start..end], b"\n" | b"\r\n");
            if in_request_line && line_is_empty {
                // An empty line before the request line: hyper skips it, so must we (it is not the request line).
                out.extend_from_slice(&self.head[self.released..end]);
                self.head.drain(..end);
                self.released = 0;
                continue;
            }
            if !in_request_line && !line_is_empty {
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
            out.extend_from_slice(&self.head[self.released..end]);
            self.released = end;
            if line_is_empty {
                let (framing, switches) = framing_of(&self.head[..end]);
                self.head.drain(..end);
                self.released = 0;
                self.seen_te = false;
                self.seen_cl = false;
                self.upgrade_pending = switches;
                self.state = match framing {
                    State::Head => self.message_done(),
                    other => other,
                };
                return true;
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
                b'\n' if empty && self.upgrade_pending => State::AwaitUpgrade,
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

/// The body framing of a complete head (anything hyper would refuse is passed through untracked), and whether the
/// head asks to switch protocols (`Upgrade`, `CONNECT`): its body, if any, is followed, then the outcome awaited.
fn framing_of(head: &[u8]) -> (State, bool) {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return (State::Passthrough, false);
    }
    let mut te: Option<&[u8]> = None;
    let mut cl: Option<&[u8]> = None;
    let mut switches = req.method == Some("CONNECT");
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            cl = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            switches = true;
        }
    }
    if te.is_some() && cl.is_some() {
        return (State::Passthrough, false);
    }
    if let Some(te) = te {
        let last = te.rsplit(|&c| c == b',').next().unwrap_or(b"");
        return if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            (State::ChunkSize(0, false), switches)
        } else {
            (State::Passthrough, false)
        };
    }
    let framing = match cl.map(|v| {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    }) {
        None | Some(Some(0)) => State::Head,
        Some(Some(n)) => State::Body(n),
        Some(None) => return (State::Passthrough, false),
    };
    (framing, switches)
}

/// Whether a protocol switch the guard is waiting for happened, told by the HTTP service (which sees the response)
/// to the guard (which holds the bytes after the request). At most one switch is pending per connection: the
/// guard releases nothing after an upgrade head until it is settled.
#[derive(Debug, Default)]
pub struct UpgradeSignal {
    /// 0: nothing to tell, 1: switched, 2: declined.
    outcome: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

impl UpgradeSignal {
    /// Called for every HTTP/1 request that asked to switch protocols, once its response is known.
    pub fn settle(&self, switched: bool) {
        self.outcome
            .store(if switched { 1 } else { 2 }, Ordering::Release);
        if let Some(w) = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            w.wake();
        }
    }

    fn take(&self, cx: &Context<'_>) -> Option<bool> {
        *self.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
        match self.outcome.swap(0, Ordering::AcqRel) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }
}

/// How many heads a [`FramingGuard`] refused, readable after the guard was handed to hyper: hyper's error for such
/// a head is a generic parse error, and the flow record must say it was a smuggling attempt.
#[derive(Debug, Clone, Default)]
pub struct FramingRefusals(Arc<AtomicU32>);

impl FramingRefusals {
    pub fn count(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

/// I/O wrapper applying [`FramingTracker`] to what the client sends; writes pass straight through.
#[derive(Debug)]
pub struct FramingGuard<T> {
    inner: T,
    tracker: FramingTracker,
    upgrade: Arc<UpgradeSignal>,
    refusals: FramingRefusals,
    /// Whether the bytes tracked so far end between two messages, readable while hyper holds the guard.
    between: Arc<AtomicBool>,
    ready: Vec<u8>,
    pos: usize,
    eof: bool,
}

impl<T> FramingGuard<T> {
    pub fn new(inner: T, max_head: usize, upgrade: Arc<UpgradeSignal>) -> Self {
        FramingGuard {
            inner,
            tracker: FramingTracker::new(max_head),
            upgrade,
            refusals: FramingRefusals::default(),
            between: Arc::new(AtomicBool::new(true)),
            ready: Vec::new(),
            pos: 0,
            eof: false,
        }
    }

    /// A handle on the count of refused heads, to read once hyper has reported its error.
    pub fn refusals(&self) -> FramingRefusals {
        self.refusals.clone()
    }

    /// A handle telling whether the client's bytes tracked so far end exactly between two messages (no partial
    /// head, no body outstanding): with no request in flight, hyper is then idle.
    pub fn between_messages(&self) -> Arc<AtomicBool> {
        self.between.clone()
    }

    /// Taken back from hyper between requests: `unread` is what hyper had read but not parsed (handed out again
    /// first). True when the next session may start here: the tracked bytes end between two messages and the
    /// client has not closed. Frees what the buffers kept from earlier messages.
    pub fn park(&mut self, unread: &[u8]) -> bool {
        if !unread.is_empty() {
            let mut ready = unread.to_vec();
            ready.extend_from_slice(&self.ready[self.pos..]);
            (self.ready, self.pos) = (ready, 0);
        }
        if self.pos >= self.ready.len() {
            (self.ready, self.pos) = (Vec::new(), 0);
        }
        let between = self.tracker.between_messages();
        if self.tracker.head.is_empty() {
            self.tracker.head = Vec::new();
        }
        between && !self.eof
    }

    /// True when bytes wait for the next reader (or the client closed).
    pub fn has_input(&self) -> bool {
        self.pos < self.ready.len() || self.eof
    }

    /// True once the client closed its side and every byte it sent was handed out.
    pub fn client_closed(&self) -> bool {
        self.eof && self.pos >= self.ready.len()
    }
}

impl<T: AsyncRead + Unpin> FramingGuard<T> {
    /// Reads from the client and tracks what arrived until there is something to hand out (or the client closed).
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            self.refusals
                .0
                .store(self.tracker.refused, Ordering::Relaxed);
            self.between
                .store(self.tracker.between_messages(), Ordering::Relaxed);
            if self.has_input() || matches!(self.tracker.state, State::Passthrough) {
                return Poll::Ready(Ok(()));
            }
            if self.tracker.state == State::AwaitUpgrade
                && let Some(switched) = self.upgrade.take(cx)
            {
                self.tracker.settle_upgrade(switched, &mut self.ready);
                continue;
            }
            // Uninitialised: the read fills what it returns, and nothing else is looked at.
            let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
            let mut rb = ReadBuf::uninit(&mut scratch);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                self.eof = true;
                self.ready = self.tracker.take_held();
                self.pos = 0;
            } else {
                self.tracker.feed(rb.filled(), &mut self.ready);
            }
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
        ready!(this.poll_fill(cx))?;
        if crate::http_detect::read_buffered(buf, &this.ready, &mut this.pos) {
            if this.pos == this.ready.len() {
                this.ready.clear();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if this.eof {
            return Poll::Ready(Ok(()));
        }
        // Passthrough: tunnel bytes go straight to the reader.
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

crate::http_detect::write_through_inner!(FramingGuard);

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

    /// Splits `input` at pseudo-random points (a fixed seed per round, so failures reproduce).
    fn run_split(input: &[u8], seed: u64) -> Vec<u8> {
        let mut t = FramingTracker::new(64 * 1024);
        let mut out = Vec::new();
        let (mut rest, mut x) = (input, seed | 1);
        while !rest.is_empty() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = ((x % 23) as usize + 1).min(rest.len());
            t.feed(&rest[..n], &mut out);
            rest = &rest[n..];
        }
        out.extend(t.take_held());
        out
    }

    #[test]
    fn output_does_not_depend_on_how_the_input_was_split() {
        let streams: [&[u8]; 4] = [
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\r\nPOST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\n\r\n",
            b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /d HTTP/1.1\r\n\r\n",
            SMUGGLE,
        ];
        for input in streams {
            let (whole, _) = run(input, input.len());
            for seed in 0..200 {
                assert_eq!(
                    run_split(input, seed),
                    whole,
                    "seed {seed}: {}",
                    String::from_utf8_lossy(input)
                );
            }
            assert_eq!(whole.len(), input.len());
        }
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
    fn h2_preface_and_garbage_switch_to_passthrough() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04";
        let (out, _) = run(preface, 4);
        assert_eq!(out, preface);
        let (out, _) = run(b"GARBAGE\r\n\r\nmore", 2);
        assert_eq!(out, b"GARBAGE\r\n\r\nmore");
    }

    const WS: &[u8] =
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

    /// After a switch, the bytes are tunnel data: released unchanged, even ones that look like a smuggling head.
    #[test]
    fn bytes_after_a_switched_upgrade_pass_untouched() {
        let after = SMUGGLE;
        for step in [1, 3, 1000] {
            let mut t = FramingTracker::new(64 * 1024);
            let mut out = Vec::new();
            for chunk in [WS, after].concat().chunks(step) {
                t.feed(chunk, &mut out);
            }
            assert_eq!(
                out, WS,
                "step {step}: nothing after the upgrade head before it is settled"
            );
            assert_eq!(t.state, State::AwaitUpgrade);
            t.settle_upgrade(true, &mut out);
            t.feed(b"\x81\x05hello", &mut out);
            assert_eq!(out, [WS, after, b"\x81\x05hello"].concat(), "step {step}");
            assert_eq!((t.refused, t.state.clone()), (0, State::Passthrough));
        }
    }

    /// A declined upgrade (h2c, a 403, an upstream that did not switch) leaves an HTTP/1.1 connection whose next
    /// requests are still guarded.
    #[test]
    fn a_declined_upgrade_keeps_the_guard_on() {
        let h2c = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
        let connect = b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n";
        let with_body = b"POST /up HTTP/1.1\r\nHost: x\r\nUpgrade: foo\r\nConnection: upgrade\r\nContent-Length: 4\r\n\r\nbody";
        for first in [WS, h2c, connect, with_body] {
            for step in [1, 5, 4096] {
                let mut t = FramingTracker::new(64 * 1024);
                let mut out = Vec::new();
                for chunk in [first, SMUGGLE].concat().chunks(step) {
                    t.feed(chunk, &mut out);
                }
                assert_eq!(out, first);
                t.settle_upgrade(false, &mut out);
                assert_eq!(
                    t.refused,
                    1,
                    "{} step {step}",
                    String::from_utf8_lossy(first)
                );
                assert_eq!(out.len(), first.len() + SMUGGLE.len());
            }
        }
    }

    /// Empty lines before a request line are skipped by hyper; they must not pass for the request line (which made
    /// the next line look like a header and two empty lines look like a whole head).
    #[test]
    fn leading_empty_lines_are_not_the_request_line() {
        for lead in [&b"\r\n"[..], b"\r\n\r\n", b"\n", b"\n\r\n\n"] {
            for step in [1, 2, 4096] {
                let input = [lead, SMUGGLE].concat();
                let (out, t) = run(&input, step);
                assert_eq!(t.refused, 1, "{lead:?} step {step}");
                assert_eq!(out.len(), input.len());
            }
        }
        let mut t = FramingTracker::new(1024);
        let mut out = Vec::new();
        t.feed(b"GET / HTTP/1.1", &mut out);
        t.feed(
            b"\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            &mut out,
        );
        assert_eq!(
            t.refused, 1,
            "a CRLF ending a released request line is not an empty line"
        );
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
