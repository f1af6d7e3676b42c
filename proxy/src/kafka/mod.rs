//! Kafka on the wire: ports whose policy has `kafka` rules.
//!
//! - `request`: frame length checks, request header and body decoding with the `kafka-protocol` crate for every
//!   API key and version it knows, and the topics each request names (by name, or by id).
//! - `policy`: the pure decision for one request (forward, or answer locally with which error code).
//! - `response`: the local error responses (29 TOPIC_AUTHORIZATION_FAILED on every topic/partition, or the API's
//!   closest authorization error) and the Metadata response filter.
//! - `topic_ids`: topic ids learned from Metadata responses, for requests that name topics by id.
//! - `budget`: the process-wide memory budget for request frames being received.
//! - `frame_read`: reading one request frame under those rules (deadline, budget, header decided first).
//! - `conn_error`: why a connection closes, and the verdict its record carries.
//! - `handler`: the connection loop that carries decisions out, keeping responses in request order.

pub mod budget;
mod conn_error;
mod frame_read;
pub mod handler;
pub mod policy;
pub mod request;
pub mod response;
pub mod topic_ids;

pub use topic_ids::TopicIds;
