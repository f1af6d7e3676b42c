//! The body and error types every HTTP layer and the upstream client share, kept apart so the layers that pass
//! bodies along (rate guard, upstream pool) need not import the HTTP service.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;

/// The error of any body in flight: hyper's, the rate guard's, or the upstream's.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response the proxy sends downstream.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
