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
//!
//! # Flow of data
//! [`load_policies`] (YAML -> validated [`Policy`] or [`PolicyError`] with file, document and field path) ->
//! [`PolicyEngine::compile`] (against an [`EndpointTable`]; or a [`LiveEngine`] patched one endpoint or policy
//! object at a time, which reuses every compiled piece the patch does not touch) -> queries [`PolicyEngine::connection`],
//! [`PolicyEngine::http`], [`PolicyEngine::kafka`], [`PolicyEngine::dns`], [`PolicyEngine::l7_ports`].
//!
//! # Semantics where the upstream behaviour was unclear (decided here)
//! - Deny-only policies (`ingressDeny`/`egressDeny` without `ingress`/`egress`) do not switch a direction to
//!   default-deny; they only subtract.
//! - `ingress: [{}]` (a Cilium rule with no L3 selector and no ports) allows nothing; a rule with only `toPorts`
//!   allows those ports from/to every peer. NetworkPolicy keeps Kubernetes meaning (`{}` = everything).
//! - CIDR, `ipBlock` and `toFQDNs` peers match only addresses that are not known endpoints (identity WORLD).
//! - Endpoint selectors (including `{}`) never select reserved identities (host, world) unless they name a
//!   `reserved:` label; use `fromEntities` for those. `cluster` = every endpoint identity plus host.
//! - Named ports resolve against the destination endpoint's `named_ports`; an unknown name never matches
//!   (fails closed) rather than rejecting the policy, because endpoints come and go after policies load.
//! - NetworkPolicy `namespaceSelector` sees one namespace label, `kubernetes.io/metadata.name` (no namespace
//!   objects are watched); selectors on other namespace labels match nothing.
//! - Kafka: a request naming several topics is allowed only if every topic is allowed by some rule that also
//!   matches its API key, version and client id (different rules may allow different topics). A request without
//!   topics needs one rule matching key/version/client id.
//! - HTTP: the first rule (in policy order) whose method, path, host and headers all match decides, and its
//!   `headerMatches` actions are returned. `headerMatches[].secret` is rejected (no secret store yet).
//! - A request with L7 rules in both directions (egress of the client, ingress of the server) must pass both.

#![forbid(unsafe_code)]

pub mod conformance;
pub mod dns;
pub mod effective;
mod engine;
mod error;
pub mod fqdn;
pub mod http;
mod identity;
pub mod kafka;
pub mod labels;
mod live;
pub mod load;
mod selector_index;
mod spec;
mod verdict;

#[cfg(test)]
mod live_tests;
#[cfg(test)]
mod semantics_tests;

pub use engine::PolicyEngine;
pub use error::PolicyError;
pub use fqdn::FqdnCache;
pub use identity::{Endpoint, EndpointTable, Identity};
pub use live::LiveEngine;
pub use load::{Policy, PolicyLoad, load_policies};
pub use spec::cilium_spec_schema;
pub use verdict::{
    ConnectionVerdict, Decision, Direction, DnsQuery, Flow, HeaderAction, HttpRequest,
    KafkaRequest, L7Kind, L7Port, PolicyKind, Protocol, Reason, RequestVerdict, RuleRef,
};
