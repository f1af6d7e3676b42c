//! `tollgate-load`: the load generator used as Tollgate's yardstick and by users against their own clusters.
//!
//! Layout: [`schedule`] (when requests are due), [`stats`] (HdrHistogram + achieved rate), [`report`]
//! (JSON/Markdown rendering) [`kube_scale`] (the Kubernetes scale bench's section) and [`tunnel_bench`] (the mTLS tunnel bench's section), all pure; [`client`] (one HTTP/1.1, HTTP/2 or gRPC connection) and [`engine`]
//! (open and closed loop drivers) do the I/O.

pub mod client;
pub mod dns;
pub mod engine;
pub mod external;
pub mod kafka;
pub mod kube_scale;
pub mod netns;
pub mod peers;
pub mod plot;
pub mod procstat;
pub mod progress;
pub mod quiet;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod schedule;
pub mod spread;
pub mod stats;
pub mod tunnel_bench;
