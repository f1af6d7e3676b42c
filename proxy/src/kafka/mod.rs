//! Kafka on the wire (issue 6, in progress): the pure request side — frame length checks, request header and body
//! decoding with the `kafka-protocol` crate for every API key and version it knows, and the topics each request
//! names (by name, or by topic id where the request uses ids). Not wired into the connection path yet: Kafka-policy
//! ports are still refused (fail closed) until the handler, the synthesized authorization-error responses and the
//! end-to-end tests exist.

pub mod request;
pub mod response;
