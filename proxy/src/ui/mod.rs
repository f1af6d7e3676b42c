//! The web UI (`tollgate run --ui-listen`, and `tollgate relay` over its merged stream): a live service map per
//! namespace, the flow table with `tollgate observe`'s filters, drop reasons ranked, HTTP endpoints with latency
//! quantiles, DNS names with the `toFQDNs` rules they fed, and per flow the rule that allowed it or why it was
//! denied. Served from the binary itself (assets embedded), read-only.
//!
//! - `workload`, `aggregate`, `query`: pure (names, counting, filters), tested without sockets;
//! - `hub`: [`UiHub`], the state any flow source pushes Hubble flows into;
//! - `local`: this daemon's flow log and policy as that source;
//! - `server`: HTTP, JSON and server-sent events; `assets`: the embedded page.
//!
//! Mounting it over another flow source (what `tollgate relay` does with its merged stream): build
//! `UiHub::new("relay", Limits::default(), hub::RING, None)` (or with a `PolicyLens` for the `toFQDNs` column),
//! call [`UiHub::ingest`] with every Hubble flow received, and `server::serve(addr, hub, shutdown)`.

pub mod aggregate;
pub mod assets;
pub mod hub;
pub mod local;
pub mod query;
pub mod server;
pub mod workload;

pub use hub::UiHub;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// Starts the UI of this daemon on `addr`: flows from `flows`, `toFQDNs` rules from `policy`.
pub async fn start_local(
    addr: SocketAddr,
    flows: &Arc<crate::flow::FlowLog>,
    policy: &Arc<crate::policy_source::PolicyStore>,
    shutdown: CancellationToken,
) -> Result<SocketAddr, server::UiError> {
    let name = crate::observer::node_name();
    let node = crate::hubble::NodeInfo {
        labels: crate::observer::node_labels(&name),
        name: name.clone(),
    };
    let hub = Arc::new(UiHub::new(
        &format!("node {name}"),
        aggregate::Limits::default(),
        hub::RING,
        Some(Box::new(local::LivePolicy(policy.clone()))),
    ));
    local::attach(flows, hub.clone(), node, shutdown.clone());
    let local = server::serve(addr, hub, shutdown).await?;
    tracing::info!(addr = %local, "web UI ready");
    Ok(local)
}
