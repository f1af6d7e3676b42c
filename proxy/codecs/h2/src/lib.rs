//! HTTP/2 frames, without I/O: the proxy watches both directions of an h2 connection it serves to name what the h2
//! library refused by itself (its GOAWAYs with their debug data, its stream resets, its own 431 answers) and to
//! count the client's SETTINGS frames. h2 keeps all of that to itself, so the proxy reads it off the wire.
//!
//! Owns no sockets and no policy: `proxy/src/h2_watch.rs` does. Its own crate so the fuzz target builds exactly
//! this code and nothing of the daemon.
#![forbid(unsafe_code)]

pub mod h2_frames;
