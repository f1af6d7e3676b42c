//! The daemon-wide Kafka state every Kafka connection shares, held by the connection inputs (`inputs::Proxy`) and
//! used by the `kafka` handler; apart from `kafka` so the inputs do not depend on the handler that depends on them.
//!
//! - `topic_ids`: topic ids learned from Metadata responses, per broker, for requests that name topics by id.
//! - `budget`: the process-wide memory budget for request frames being received.

pub mod budget;
pub mod topic_ids;

pub use topic_ids::TopicIds;
