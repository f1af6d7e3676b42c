//! The body and error types every HTTP layer and the upstream client share, kept apart so the layers that pass
//! bodies along (rate guard, upstream pool) need not import the HTTP service.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;

/// The error of any body in flight: hyper's, the rate guard's, or the upstream's.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response the proxy sends downstream.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A response body that holds something until hyper has sent it (its last frame written) or dropped it: how the
/// HTTP layers learn that a request's exchange is over without a second box around the body.
#[derive(Debug)]
pub struct Holding<B, T> {
    body: B,
    _held: T,
}

impl<B, T> Holding<B, T> {
    pub fn new(body: B, held: T) -> Self {
        Holding { body, _held: held }
    }
}

impl<B: http_body::Body + Unpin, T: Unpin> http_body::Body for Holding<B, T> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
