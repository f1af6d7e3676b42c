//! Parking idle HTTP/1 keep-alive connections. Between two requests a connection needs its socket and its framing
//! state, not hyper's read and write buffers (8 KiB each) and connection state. Once a connection has moved no
//! bytes for [`PARK_AFTER`], has no request in flight and the client's bytes end between two messages, the
//! connection task ends hyper's session (an idle hyper connection closes at once on a graceful shutdown), keeps the
//! socket open ([`Parkable`] swallows that one shutdown), and waits for the client's next bytes holding nothing
//! else; those bytes start a new session with the same service. nginx likewise frees a keep-alive connection's
//! request buffers once it is idle.
//!
//! A session that ends any other way than the one asked for (an error, a request that raced the decision and was
//! answered with `Connection: close`, an upgrade) is never resumed: the connection closes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::activity::{Activity, RequestClock};

/// How long an HTTP/1 keep-alive connection moves no bytes before it is parked. Long enough that a client
/// sending request after request never pays for a new session; short against any keep-alive timeout.
pub const PARK_AFTER: Duration = Duration::from_millis(200);

/// Whether the connection task asked the current session to end so the connection can park, shared with the
/// I/O hyper holds. Holds the connection's started-request count at that moment (plus one; 0: not parking).
#[derive(Debug, Clone, Default)]
pub struct ParkFlag(Arc<AtomicU64>);

impl ParkFlag {
    fn set(&self, requests_started: u64) {
        self.0.store(requests_started + 1, Ordering::Relaxed);
    }

    pub fn clear(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed) != 0
    }

    /// True when parking was asked and no request started since: the session ended idle, as asked, and the
    /// client was never told to close.
    pub fn parked_idle(&self, requests: &RequestClock) -> bool {
        let at = self.0.load(Ordering::Relaxed);
        at != 0 && at == requests.started_count() + 1
    }
}

/// How many HTTP/1 connections are parked right now (the `tollgate_http_connections_parked` gauge).
#[derive(Debug, Default)]
pub struct ParkedCount(AtomicU64);

impl ParkedCount {
    /// Counts one parked connection until the returned guard is dropped.
    pub fn enter(&self) -> impl Drop + '_ {
        struct Leave<'a>(&'a AtomicU64);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.0.fetch_add(1, Ordering::Relaxed);
        Leave(&self.0)
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the supervisor of an HTTP/1 session needs to decide that the connection may park.
#[derive(Debug)]
pub struct Park {
    pub flag: ParkFlag,
    /// The framing guard's "the client's bytes end between two messages".
    pub between_messages: Arc<AtomicBool>,
}

impl Park {
    /// Resolves (and marks the flag) once the connection may be parked: no bytes for [`PARK_AFTER`], no request
    /// in flight, nothing of a next message received. Never resolves without a `Park` (HTTP/2).
    pub async fn when_idle(park: Option<&Park>, activity: &Activity, requests: &RequestClock) {
        let Some(park) = park else {
            return std::future::pending().await;
        };
        loop {
            activity.idle(PARK_AFTER).await;
            if requests.in_flight() == 0 && park.between_messages.load(Ordering::Relaxed) {
                park.flag.set(requests.started_count());
                return;
            }
            tokio::time::sleep(PARK_AFTER).await;
        }
    }
}

/// The I/O of a parkable connection: everything passes through, except a shutdown asked while parking (the
/// session ends; the connection does not).
#[derive(Debug)]
pub struct Parkable<T> {
    inner: T,
    parking: ParkFlag,
}

impl<T> Parkable<T> {
    pub fn new(inner: T, parking: ParkFlag) -> Self {
        Parkable { inner, parking }
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    fn shutdown_unless_parking(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>>
    where
        T: AsyncWrite + Unpin,
    {
        if self.parking.is_set() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Parkable<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

crate::http_detect::write_through_inner!(Parkable, shutdown_unless_parking);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn shutdown_is_swallowed_only_while_parking() {
        let (a, mut b) = tokio::io::duplex(64);
        let flag = ParkFlag::default();
        let mut io = Parkable::new(a, flag.clone());
        flag.set(0);
        io.shutdown().await.unwrap();
        io.write_all(b"still open").await.unwrap();
        flag.clear();
        io.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut b, &mut got)
            .await
            .unwrap();
        assert_eq!(got, b"still open");
    }

    #[test]
    fn parked_idle_only_when_no_request_started_since() {
        let requests = RequestClock::default();
        let flag = ParkFlag::default();
        assert!(!flag.parked_idle(&requests), "never asked to park");
        requests.request_started();
        flag.set(requests.started_count());
        assert!(flag.parked_idle(&requests));
        requests.request_started();
        assert!(
            !flag.parked_idle(&requests),
            "a request raced the decision: hyper answered it and closed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn parks_only_with_nothing_in_flight_and_between_messages() {
        let (activity, requests) = (Activity::new(), RequestClock::default());
        let park = Park {
            flag: ParkFlag::default(),
            between_messages: Arc::new(AtomicBool::new(false)),
        };
        requests.request_started();
        let when = Park::when_idle(Some(&park), &activity, &requests);
        tokio::pin!(when);
        let mid_message = tokio::time::timeout(PARK_AFTER * 10, when.as_mut()).await;
        assert!(mid_message.is_err(), "parked with a partial message");
        park.between_messages.store(true, Ordering::Relaxed);
        let in_flight = tokio::time::timeout(PARK_AFTER * 10, when.as_mut()).await;
        assert!(in_flight.is_err(), "parked with a request in flight");
        requests.request_done();
        tokio::time::timeout(PARK_AFTER * 3, when.as_mut())
            .await
            .expect("an idle connection parks");
        assert!(park.flag.parked_idle(&requests));
    }
}
