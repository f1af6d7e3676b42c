//! Kafka on the wire, without I/O: what the proxy's Kafka handler decides from and answers with.
//!
//! - `request`: frame length checks, the request header decoded ahead of the body, header and body decoding with
//!   the `kafka-protocol` crate for every API key and version it knows, and the topics each request names (by name
//!   or by id).
//! - `response`: the local error responses (29 TOPIC_AUTHORIZATION_FAILED on every topic/partition, or the API's
//!   closest authorization error) and the Metadata response filter.
//!
//! Owns no sockets, no policy and no flow records: the proxy's `kafka` module decides and forwards. Its own crate
//! so the fuzz targets build exactly this code and nothing of the daemon.
#![forbid(unsafe_code)]

pub mod request;
pub mod response;
