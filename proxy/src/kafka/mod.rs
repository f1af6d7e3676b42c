//! Kafka on the wire: ports whose policy has `kafka` rules.
//!
//! - `request` and `response`, re-exported from the `tollgate-kafka-codec` crate (`proxy/codecs/kafka`, pure, also
//!   what the fuzz target builds): frame checks, request decoding and the topics a request names; the local error
//!   responses and the Metadata response filter.
//! - `policy`: the pure decision for one request (forward, or answer locally with which error code), topics named
//!   by id resolved through `kafka_state::topic_ids`.
//! - `frame_read`: reading one request frame under those rules (deadline, the frame budget of `kafka_state`, header
//!   decided first).
//! - `conn_error`: why a connection closes, and the verdict its record carries.
//! - `read_ahead`: the read-ahead on both sockets of a connection, holding memory only while it holds bytes.
//! - `handler`: the connection loop that carries decisions out, keeping responses in request order.
//! - `record`: the flow record of each request and of an error that closes a connection, from a typed outcome.

mod conn_error;
mod frame_read;
pub mod handler;
pub mod policy;
mod read_ahead;
mod record;

pub use tollgate_kafka_codec::{request, response};
