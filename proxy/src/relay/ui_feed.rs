//! The web UI over the relay's merged stream (`tollgate relay --ui-listen`): one in-process follow request to the
//! relay's own Observer, every flow it yields pushed into a [`UiHub`]. Served by the same `ui::server` a node uses,
//! so the cluster view and a node's view are the same page.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use super::service::RelayService;
use crate::hubble::observer::observer_server::Observer;
use crate::hubble::observer::{GetFlowsRequest, get_flows_response::ResponseTypes};
use crate::ui::{UiHub, aggregate, hub, server};

/// Starts the UI on `addr`, fed from `relay`; the feed reconnects after the merged stream ends.
pub async fn start(
    addr: SocketAddr,
    relay: Arc<RelayService>,
    shutdown: CancellationToken,
) -> Result<SocketAddr, server::UiError> {
    let ui = Arc::new(UiHub::new(
        "relay",
        aggregate::Limits::default(),
        hub::RING,
        None,
    ));
    tokio::spawn(feed(relay, ui.clone(), shutdown.clone()));
    let local = server::serve(addr, ui, shutdown).await?;
    tracing::info!(addr = %local, "web UI ready (all nodes through the relay)");
    Ok(local)
}

/// Follows every node's flows (the newest `hub::RING` first, then live) until shutdown.
async fn feed(relay: Arc<RelayService>, ui: Arc<UiHub>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let req = GetFlowsRequest {
            follow: true,
            number: hub::RING as u64,
            ..Default::default()
        };
        match relay.get_flows(tonic::Request::new(req)).await {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    let item = tokio::select! {
                        item = stream.next() => item,
                        _ = shutdown.cancelled() => return,
                    };
                    match item {
                        Some(Ok(r)) => {
                            if let Some(ResponseTypes::Flow(f)) = r.response_types {
                                ui.ingest(f);
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!("web UI: the relay's flow stream failed: {e}");
                            break;
                        }
                        None => break,
                    }
                }
            }
            Err(e) => tracing::warn!("web UI: the relay refused its own flow request: {e}"),
        }
        // The merged stream ended (every node gone, or an error): ask again shortly.
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
