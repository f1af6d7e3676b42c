//! What a denied query is answered with (`--dns-deny-response`) and the validated runtime options the DNS proxy
//! runs with, built from the flags by `dns::start` and read by `server`.

use std::time::Duration;

use clap::ValueEnum;

/// What a denied query is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DenyResponse {
    /// REFUSED (rcode 5): the client knows it was policy, and does not cache a negative answer.
    Refused,
    /// NXDOMAIN (rcode 3): the name "does not exist" for this pod.
    Nxdomain,
}

/// The validated runtime options of the DNS proxy.
#[derive(Debug, Clone)]
pub struct DnsOptions {
    pub deny_response: DenyResponse,
    pub upstream_timeout: Duration,
    pub mark: u32,
    /// `--dns-max-tcp-connections` (named in the records of refused connections).
    pub max_tcp_connections: usize,
}
