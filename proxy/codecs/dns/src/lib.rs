//! DNS messages, without I/O: the DNS proxy's query checks, the answers it builds itself, and the inspection of
//! upstream responses (CNAME chains, addresses learned for `toFQDNs`, 0x20 case restore).
//!
//! Owns no sockets, no policy and no flow records: the proxy's `dns` module does. Its own crate so the fuzz target
//! builds exactly this code and nothing of the daemon.
#![forbid(unsafe_code)]

pub mod message;
#[cfg(any(test, feature = "testutil"))]
pub mod testutil;
pub mod wire;
