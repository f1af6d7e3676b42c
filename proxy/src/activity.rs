//! Idle detection: wraps a connection's I/O and remembers when bytes last moved in either direction, so the
//! connection task can close connections idle for longer than `Limits::idle_timeout`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Shared last-activity clock of one connection (milliseconds since the connection started).
#[derive(Debug, Clone)]
pub struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long since bytes last moved.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    /// When the connection will have been idle for `timeout` if no byte moves before.
    pub fn idle_deadline(&self, timeout: Duration) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + timeout
    }

    /// Resolves once the connection has been idle for `timeout` (checks at a quarter of the timeout).
    pub async fn idle(&self, timeout: Duration) {
        let tick = (timeout / 4).max(Duration::from_millis(50));
        loop {
            let idle = self.idle_for();
            if idle >= timeout {
                return;
            }
            tokio::time::sleep((timeout - idle).min(tick)).await;
        }
    }
}

/// Request-level activity of one HTTP connection: when a request last started or was answered, whether any has
/// started, how many have started, and how many are still in flight (head received, response body not yet
/// finished). Bytes alone (h2 PINGs, WINDOW_UPDATEs) do not count as activity here.
#[derive(Debug, Default)]
pub struct RequestClock {
    clock: Activity,
    started: AtomicU64,
    in_flight: AtomicU64,
}

impl RequestClock {
    /// A request head arrived; it stays in flight until [`RequestClock::request_done`].
    pub fn request_started(&self) {
        self.clock.touch();
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A response head was sent.
    pub fn responded(&self) {
        self.clock.touch();
    }

    /// A request's exchange is over: its response body was sent (or dropped), or it was refused.
    pub fn request_done(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn started(&self) -> bool {
        self.started_count() > 0
    }

    /// How many requests have started on this connection.
    pub fn started_count(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Requests whose exchange is not over yet.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// When no request will have started or been answered for `timeout` if none does before.
    pub fn idle_deadline(&self, timeout: Duration) -> Instant {
        self.clock.idle_deadline(timeout)
    }

    /// Resolves once no request has started or been answered for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        self.clock.idle(timeout).await
    }
}

/// I/O that updates an [`Activity`] whenever bytes are read or written.
#[derive(Debug)]
pub struct Tracked<T> {
    inner: T,
    activity: Activity,
}

impl<T> Tracked<T> {
    pub fn new(inner: T, activity: Activity) -> Self {
        Tracked { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
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
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn idle_resolves_only_after_silence() {
        let (a, mut b) = tokio::io::duplex(64);
        let act = Activity::new();
        let mut t = Tracked::new(a, act.clone());
        tokio::time::sleep(Duration::from_secs(2)).await;
        t.write_all(b"x").await.unwrap();
        assert!(act.idle_for() < Duration::from_millis(10));
        let mut buf = [0u8; 1];
        b.read_exact(&mut buf).await.unwrap();
        let started = tokio::time::Instant::now();
        act.idle(Duration::from_secs(3)).await;
        assert!(started.elapsed() >= Duration::from_secs(3));
    }
}
