//! Watches the bytes of one downstream HTTP connection on their way between the socket and hyper. When the client
//! speaks HTTP/2 it reads both directions' frames (`tollgate_h2_codec::h2_frames`): what the server side writes
//! becomes refusal records ([`RefusalLog`]: the h2 library's GOAWAYs, resets and 431s, which hyper never reports),
//! and the client's SETTINGS frames are counted: past [`SETTINGS_PER_WINDOW`] in [`SETTINGS_WINDOW`] the proxy
//! writes its own GOAWAY ENHANCE_YOUR_CALM and ends the connection (h2 only applies backpressure to SETTINGS).
//! Only connections whose first bytes are the HTTP/2 preface get one (`http_detect.rs`); a stream that turns out
//! not to be HTTP/2 anyway passes through untouched.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tollgate_h2_codec::h2_frames::{self, Frame, FrameReader};

use crate::flow::DropReason;
use crate::h2_refusal::{self, Refusal, RefusalLog};

/// SETTINGS frames a client may send in [`SETTINGS_WINDOW`] (CVE-2019-9515: each one costs the server an ACK).
pub const SETTINGS_PER_WINDOW: usize = 100;
pub const SETTINGS_WINDOW: Duration = Duration::from_secs(10);

/// Where refusals go (the connection builds the flow record).
pub type Sink = Box<dyn FnMut(Refusal) + Send>;

/// Counts a client's SETTINGS frames over a sliding window; memory is at most [`SETTINGS_PER_WINDOW`] instants.
#[derive(Debug, Default)]
pub struct SettingsFlood {
    recent: VecDeque<Instant>,
}

impl SettingsFlood {
    /// Records one SETTINGS frame received at `now`; `true` when it is one too many.
    pub fn over(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= SETTINGS_WINDOW)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= SETTINGS_PER_WINDOW {
            return true;
        }
        self.recent.push_back(now);
        false
    }
}

/// The watched I/O.
pub struct H2Watch<T> {
    inner: T,
    client: FrameReader,
    server: FrameReader,
    log: RefusalLog,
    sink: Sink,
    settings: SettingsFlood,
    last_stream: u32,
    /// Set once a GOAWAY naming a refusal was written: the connection's end then needs no record of its own.
    goaway_seen: Arc<AtomicBool>,
    /// The proxy's own GOAWAY still to write; once written (`cut`), reads end and h2's writes are dropped.
    goaway: Vec<u8>,
    cut: bool,
}

impl<T> std::fmt::Debug for H2Watch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Watch")
            .field("client", &self.client)
            .field("server", &self.server)
            .field("cut", &self.cut)
            .finish_non_exhaustive()
    }
}

impl<T> H2Watch<T> {
    pub fn new(inner: T, log: RefusalLog, sink: Sink, goaway_seen: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            client: FrameReader::from_client(),
            server: FrameReader::from_server(),
            log,
            sink,
            settings: SettingsFlood::default(),
            last_stream: 0,
            goaway_seen,
            goaway: Vec::new(),
            cut: false,
        }
    }

    fn client_bytes(&mut self, bytes: &[u8]) {
        let (settings, last_stream) = (&mut self.settings, &mut self.last_stream);
        let mut flood = false;
        self.client.feed(bytes, &mut |f| match f {
            Frame::Settings { ack: false } => flood |= settings.over(Instant::now()),
            Frame::Headers { stream, .. } => *last_stream = (*last_stream).max(stream),
            _ => {}
        });
        if flood && self.goaway.is_empty() && !self.cut {
            self.goaway = h2_frames::goaway(
                self.last_stream,
                u32::from(h2::Reason::ENHANCE_YOUR_CALM),
                h2_refusal::SETTINGS_FLOOD.as_bytes(),
            );
            let why = format!(
                "HTTP/2 SETTINGS flood (CVE-2019-9515): more than {SETTINGS_PER_WINDOW} SETTINGS frames within \
                 {SETTINGS_WINDOW:?}; connection closed with GOAWAY ENHANCE_YOUR_CALM"
            );
            self.record(Refusal {
                stream: 0,
                code: 0,
                reason: DropReason::LimitExceeded,
                why,
            });
        }
    }

    fn server_bytes(&mut self, bytes: &[u8]) {
        if !self.client.is_http2() {
            return;
        }
        let mut found = Vec::new();
        let log = &mut self.log;
        self.server
            .feed(bytes, &mut |f| found.extend(log.server_frame(&f)));
        for r in found {
            self.record(r);
        }
    }

    fn record(&mut self, r: Refusal) {
        if r.stream == 0 {
            self.goaway_seen.store(true, Ordering::Relaxed);
        }
        (self.sink)(r);
    }
}

impl<T: AsyncWrite + Unpin> H2Watch<T> {
    /// Writes the pending GOAWAY, which must start at a frame boundary of h2's output. Ready(()) when nothing is
    /// left to write.
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.goaway.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.goaway))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.goaway.drain(..n);
        }
        self.cut = true;
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for H2Watch<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.goaway.is_empty() {
                if !this.server.at_frame_boundary() {
                    // h2 is mid-frame: its next write finishes the frame; poll again until it did.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                // The socket's readiness wakes this task when it was full.
                std::task::ready!(this.poll_goaway(cx))?;
            }
            if this.cut {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            if this.client.is_http2() {
                this.client_bytes(&buf.filled()[before..]);
            }
            if this.goaway.is_empty() {
                return Poll::Ready(Ok(()));
            }
            // Refused: what was just read never reaches h2.
            buf.set_filled(before);
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for H2Watch<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.cut {
            return Poll::Ready(Ok(data.len()));
        }
        let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, data))?;
        this.server_bytes(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.cut {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tollgate_h2_codec::h2_frames::{PREFACE, frame, kind};

    #[test]
    fn settings_flood_counts_a_sliding_window() {
        let mut f = SettingsFlood::default();
        let t0 = Instant::now();
        for i in 0..SETTINGS_PER_WINDOW {
            assert!(!f.over(t0 + Duration::from_millis(i as u64)), "{i}");
        }
        assert!(f.over(t0 + Duration::from_secs(1)));
        // Once the first ones are older than the window there is room again.
        assert!(!f.over(t0 + SETTINGS_WINDOW + Duration::from_millis(1)));
        assert!(f.recent.len() <= SETTINGS_PER_WINDOW);
    }

    type Watched = (
        H2Watch<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        Arc<Mutex<Vec<Refusal>>>,
        Arc<AtomicBool>,
    );

    fn watched() -> Watched {
        let (a, b) = tokio::io::duplex(1 << 16);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let goaway = Arc::new(AtomicBool::new(false));
        let w = H2Watch::new(
            a,
            RefusalLog::new(4, 1000),
            Box::new(move |r| s.lock().unwrap().push(r)),
            goaway.clone(),
        );
        (w, b, seen, goaway)
    }

    #[tokio::test]
    async fn settings_flood_writes_goaway_and_ends_reads() {
        let (mut w, mut client, seen, goaway) = watched();
        let mut out = PREFACE.to_vec();
        for _ in 0..=SETTINGS_PER_WINDOW {
            out.extend(frame(kind::SETTINGS, 0, 0, &[]));
        }
        client.write_all(&out).await.unwrap();
        let mut sink = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = w.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            sink.extend_from_slice(&buf[..n]);
        }
        assert!(
            sink.len() < out.len(),
            "the frame over the limit never reaches h2"
        );
        let mut got = vec![0u8; 9 + 8 + h2_refusal::SETTINGS_FLOOD.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, h2_frames::goaway(0, 11, b"settings_flood"));
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].reason, DropReason::LimitExceeded);
        assert!(
            seen[0]
                .why
                .starts_with("HTTP/2 SETTINGS flood (CVE-2019-9515)"),
            "{}",
            seen[0].why
        );
        assert!(goaway.load(Ordering::Relaxed));
        // h2's later writes are dropped: the GOAWAY was the last frame.
        assert_eq!(w.write(b"late").await.unwrap(), 4);
    }

    #[tokio::test]
    async fn http1_passes_through_and_reports_nothing() {
        let (mut w, mut client, seen, goaway) = watched();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = w.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        w.write_all(&h2_frames::goaway(0, 11, b"too_many_resets"))
            .await
            .unwrap();
        assert!(seen.lock().unwrap().is_empty());
        assert!(!goaway.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn server_refusals_become_records() {
        let (mut w, mut client, seen, goaway) = watched();
        client.write_all(PREFACE).await.unwrap();
        let mut buf = [0u8; 64];
        let _ = w.read(&mut buf).await.unwrap();
        let mut out = frame(kind::RST_STREAM, 0, 1, &1u32.to_be_bytes());
        out.extend(frame(kind::RST_STREAM, 0, 3, &8u32.to_be_bytes()));
        out.extend(h2_frames::goaway(3, 11, b"too_many_resets"));
        // Split mid-frame: the reader keeps its place.
        w.write_all(&out[..5]).await.unwrap();
        w.write_all(&out[5..]).await.unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0].reason, DropReason::InvalidRequest);
        assert!(
            seen[0].why.ends_with("stream 1 reset with PROTOCOL_ERROR"),
            "{}",
            seen[0].why
        );
        assert!(
            seen[1].why.starts_with("HTTP/2 rapid reset flood"),
            "{}",
            seen[1].why
        );
        assert!(goaway.load(Ordering::Relaxed));
    }
}
