//! A minimum data rate for request bodies, so a client trickling a body one byte at a time cannot hold a
//! connection (and its upstream request) forever: a body has `grace` to start with and earns one more second for
//! every `min_rate` bytes it delivers (Apache's `mod_reqtimeout` `body=...,MinRate=...` model). A body that falls
//! behind fails with [`BodyTooSlow`]; the forwarding layer answers 408 with a flow record.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The body fell behind the minimum rate.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "request body too slow: {received} bytes in {elapsed:?}, below {min_rate} bytes/s after a {grace:?} grace \
     (--request-body-timeout-secs, --request-body-min-rate)"
)]
pub struct BodyTooSlow {
    pub received: u64,
    pub elapsed: Duration,
    pub min_rate: u64,
    pub grace: Duration,
}

/// `inner` with the minimum-rate deadline applied.
#[derive(Debug)]
pub struct MinRateBody<B> {
    inner: B,
    start: Instant,
    received: u64,
    grace: Duration,
    min_rate: u64,
    deadline: Pin<Box<Sleep>>,
    tripped: TooSlowFlag,
}

/// Set once a [`MinRateBody`] has failed, for whoever sent it upstream: an HTTP/2 client resets the stream and
/// returns its own error, without the body's error as a source, so the failure must be told another way.
pub type TooSlowFlag = Arc<OnceLock<BodyTooSlow>>;

impl<B> MinRateBody<B> {
    pub fn new(inner: B, grace: Duration, min_rate: u64) -> Self {
        let start = Instant::now();
        MinRateBody {
            inner,
            start,
            received: 0,
            grace,
            min_rate: min_rate.max(1),
            deadline: Box::pin(tokio::time::sleep_until(start + grace)),
            tripped: TooSlowFlag::default(),
        }
    }

    /// Set when (and only if) this body fails for falling behind.
    pub fn tripped(&self) -> TooSlowFlag {
        self.tripped.clone()
    }

    fn earned(&self) -> Duration {
        self.grace + Duration::from_secs_f64(self.received as f64 / self.min_rate as f64)
    }
}

impl<B> Body for MinRateBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<crate::body::BoxError>,
{
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.received += d.len() as u64;
                    let until = this.start + this.earned();
                    this.deadline.as_mut().reset(until);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let slow = BodyTooSlow {
                        received: this.received,
                        elapsed: this.start.elapsed(),
                        min_rate: this.min_rate,
                        grace: this.grace,
                    };
                    let _ = this.tripped.set(slow.clone());
                    Poll::Ready(Some(Err(Box::new(slow))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether an error (or one of its sources) is a [`BodyTooSlow`].
pub fn too_slow<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTooSlow> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(slow) = err.downcast_ref::<BodyTooSlow>() {
            return Some(slow);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use http_body_util::StreamBody;

    fn trickle(
        rx: tokio::sync::mpsc::Receiver<Bytes>,
    ) -> MinRateBody<impl Body<Data = Bytes, Error = std::convert::Infallible> + Unpin> {
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b)));
        MinRateBody::new(StreamBody::new(stream), Duration::from_secs(10), 100)
    }

    use tokio_stream::StreamExt;

    #[tokio::test(start_paused = true)]
    async fn a_trickled_body_fails_once_it_falls_behind() {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let mut body = trickle(rx);
        let tripped = body.tripped();
        let feeder = tokio::spawn(async move {
            loop {
                if tx.send(Bytes::from_static(b"x")).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let start = Instant::now();
        let err = loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break e,
                None => panic!("ended"),
            }
        };
        let slow = too_slow(err.as_ref()).expect("BodyTooSlow");
        // 10 s grace plus 1 s earned per 100 bytes: the trickle (1 byte/s) fails a little after 10 s.
        assert!(start.elapsed() < Duration::from_secs(12), "{slow}");
        assert!(slow.received >= 9, "{slow}");
        let told = tripped
            .get()
            .expect("the flag tells whoever sent the body upstream");
        assert_eq!(told.received, slow.received);
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_at_the_rate_completes_however_long_it_takes() {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let mut body = trickle(rx);
        let tripped = body.tripped();
        tokio::spawn(async move {
            // 200 bytes/s for 60 s: well past the grace, always ahead of the rate.
            for _ in 0..60 {
                tx.send(Bytes::from(vec![0u8; 200])).await.unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let mut n = 0;
        while let Some(f) = body.frame().await {
            n += f.expect("no timeout").into_data().unwrap().len();
        }
        assert_eq!(n, 12_000);
        assert!(tripped.get().is_none(), "a body at the rate never trips");
    }
}
