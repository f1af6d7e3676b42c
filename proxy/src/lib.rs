//! Tollgate's node proxy: the `tollgate` daemon and CLI.
//!
//! This crate owns the data path: transparent listeners and original-destination recovery, per-connection protocol
//! dispatch (HTTP family, opaque TCP), enforcement of policy decisions on real sockets, upstream connections (marked
//! with SO_MARK), limits, the flow log, and policy hot reload in standalone mode. Policy *decisions* live in
//! `policy-model` (pure) and are only carried out here; the redirect datapath lives in `redirect-ebpf`. This crate
//! must not re-implement policy semantics; eBPF programs are loaded only through `redirect-ebpf` (see `datapath`).

pub mod accept;
pub mod activity;
pub mod admin;
pub mod agent_events;
pub mod allocator;
pub mod body;
pub mod body_rate;
pub mod certs_cli;
pub mod config;
#[cfg(test)]
pub(crate) mod conformance;
pub mod connection;
pub mod datapath;
pub mod decision;
pub mod dns;
pub mod error_chain;
pub mod fd_limit;
pub mod field_mask;
pub mod flow;
pub mod flow_export;
pub mod flow_filter;
pub mod flow_logs;
pub mod flow_logs_config;
pub mod flow_record;
pub mod fqdn_cache;
pub mod grpc;
pub mod h2_refusal;
pub mod h2_watch;
pub mod handoff;
pub mod header_actions;
pub mod http;
pub mod http_detect;
pub mod hubble;
pub mod hubble_metrics;
pub mod hubble_server;
pub mod inputs;
pub mod kafka;
pub mod kafka_state;
pub mod keepalive;
pub mod kubernetes;
pub mod limits;
pub mod linger;
pub mod listener;
pub mod mesh;
pub mod mesh_inbound;
pub mod metrics;
pub mod observe_cli;
pub mod observer;
pub mod operator_cli;
pub mod original_dst;
pub mod policy_adapter;
pub mod policy_attribution;
pub mod policy_cli;
pub mod policy_source;
pub mod relay;
pub mod request_framing;
pub mod request_path;
pub mod run;
pub mod tcp;
pub mod tunnel;
pub mod ui;
pub mod upstream;
