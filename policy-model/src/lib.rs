//! Tollgate's pure policy engine.
//!
//! **Owns:** parsing and validating `cilium.io/v2` CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy and
//! `networking.k8s.io/v1` NetworkPolicy documents; endpoint identities; compiling policies into per-(identity,
//! direction, port) lookup structures with compiled HTTP/Kafka/DNS matchers; connection and request verdicts
//! with the reason (which rule allowed, or why denied); the FQDN cache data structure; the conformance-case
//! runner.
//!
//! **Must not touch:** any I/O (files, sockets, eBPF maps), async runtimes, threads, or the clock. Callers read
//! files, pass time in (`now`), and own the datapath. Everything here is deterministic: the same input gives the
//! same identities, verdicts and errors.

pub mod conformance;
pub mod dns;
mod engine;
mod error;
pub mod fqdn;
pub mod http;
mod identity;
pub mod kafka;
pub mod labels;
pub mod load;
mod spec;
mod verdict;

#[cfg(test)]
mod semantics_tests;

pub use engine::PolicyEngine;
pub use error::PolicyError;
pub use fqdn::FqdnCache;
pub use identity::{Endpoint, EndpointTable, Identity};
pub use load::{Policy, PolicyLoad, load_policies};
pub use verdict::{
    ConnectionVerdict, Decision, Direction, DnsQuery, Flow, HeaderAction, HttpRequest,
    KafkaRequest, L7Kind, L7Port, PolicyKind, Protocol, Reason, RequestVerdict, RuleRef,
};
