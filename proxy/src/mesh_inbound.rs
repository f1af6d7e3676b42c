//! The destination side of the node-to-node tunnel: each authenticated CONNECT stream is checked (the peer's
//! SPIFFE ID names a workload, the target is a pod of this node) and then served by the same pipeline as a local
//! connection ([`crate::connection::dispatch`]) with the identity the certificate proved. Kept apart from
//! `mesh.rs` (routing, SVIDs, dialing) so the tunnel configuration does not depend on the connection pipeline.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use certs::{PeerRejection, SpiffeId};
use policy_model::{EndpointTable, Identity};

use crate::decision::{Auth, Downstream};
use crate::flow::{DropReason, FlowEndpoint, FlowRecord};
use crate::flow_record::{FlowBuilder, FlowOutcome};
use crate::inputs::Proxy;
use crate::mesh::{Mesh, is_local, refused_record, tunnel_source};

/// The destination side: what the tunnel listener does with authenticated CONNECT streams.
#[derive(Debug)]
pub struct TunnelInbound {
    pub proxy: Arc<Proxy>,
    pub mesh: Arc<Mesh>,
    /// The tunnel listener's address (the destination of refused-handshake records).
    pub listen: SocketAddr,
    /// Cancelled when open connections must close (end of the drain period).
    pub close: tokio_util::sync::CancellationToken,
}

impl TunnelInbound {
    /// Whether `dst` is a pod of this node: named so, or enrolled here when the endpoint names no node.
    fn local(&self, endpoints: &EndpointTable, dst: SocketAddr) -> bool {
        endpoints
            .by_ip(dst.ip())
            .is_some_and(|e| is_local(e, &self.mesh.node_name))
    }

    /// The downstream a tunnel stream is served as, or the record of why it is refused.
    fn downstream(
        &self,
        peer: &SpiffeId,
        dst: SocketAddr,
        reported: Option<SocketAddr>,
    ) -> Result<Downstream, Box<(http::StatusCode, FlowRecord)>> {
        let snap = self.proxy.policy.current();
        let refuse = |code, reason: DropReason, policy: String| {
            let src = FlowEndpoint::new(
                reported.unwrap_or(SocketAddr::new([0, 0, 0, 0].into(), 0)),
                Identity::UNKNOWN.0,
            );
            let flow = FlowBuilder::new(src, crate::decision::flow_endpoint(&snap, dst), "TCP")
                .tunnel_peer(Some(peer.to_string()));
            Box::new((code, flow.finish(FlowOutcome::Dropped { reason, policy })))
        };
        if !self.local(&snap.endpoints, dst) {
            return Err(refuse(
                http::StatusCode::MISDIRECTED_REQUEST,
                DropReason::PolicyDenied,
                format!(
                    "tunnel from {peer}: {dst} is not a pod of node {}",
                    self.mesh.node_name
                ),
            ));
        }
        let (identity, addr) =
            tunnel_source(&snap.endpoints, &self.mesh.trust_domain, peer, reported).map_err(
                |why| {
                    refuse(
                        http::StatusCode::FORBIDDEN,
                        DropReason::PolicyDenied,
                        format!("tunnel peer not mapped to an identity: {why}"),
                    )
                },
            )?;
        Ok(Downstream {
            addr: addr.unwrap_or(SocketAddr::new([0, 0, 0, 0].into(), 0)),
            auth: Auth::Inbound {
                spiffe_id: peer.to_string(),
                identity,
            },
        })
    }
}

impl crate::tunnel::InboundHandler for TunnelInbound {
    fn admit(
        &self,
        peer: &SpiffeId,
        dst: SocketAddr,
        reported: Option<SocketAddr>,
    ) -> Result<(), http::StatusCode> {
        let down = match self.downstream(peer, dst, reported) {
            Ok(d) => d,
            Err(refused) => {
                let (code, rec) = *refused;
                tracing::warn!(%peer, %dst, "tunnel stream refused: {}", rec.policy);
                self.proxy.flows.record(rec);
                return Err(code);
            }
        };
        // A connection the policy denies is refused on the CONNECT itself (the source node sees 403), with the
        // same DROPPED record a plain connection would get, naming the certificate's ID.
        let snap = self.proxy.policy.current();
        if let crate::decision::ConnectionPlan::Drop {
            reason,
            drop_reason,
            direction,
        } = crate::decision::plan_connection(&snap, &down, dst)
        {
            let flow = FlowBuilder::connection(&snap, &down, dst, "TCP").direction(direction);
            let rec = flow.finish(FlowOutcome::Dropped {
                reason: drop_reason,
                policy: format!("{peer} is not allowed by policy: {reason}"),
            });
            tracing::info!(%peer, %dst, "tunnel stream refused: {}", rec.policy);
            self.proxy.flows.record(rec);
            return Err(http::StatusCode::FORBIDDEN);
        }
        Ok(())
    }

    fn serve(
        &self,
        tunnel: crate::tunnel::InboundTunnel,
    ) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let proxy = self.proxy.clone();
        let close = self.close.clone();
        let down = self.downstream(&tunnel.peer_id, tunnel.original_dst, tunnel.reported_source);
        Box::pin(async move {
            // Mapped again: a reload between admit and here may have removed the peer's pods.
            let Ok(down) = down else { return };
            // Held for the stream's life.
            let permit = proxy.connections.clone().try_acquire_owned().ok();
            let conn = crate::inputs::Accepted {
                proxy,
                down,
                dst: tunnel.original_dst,
                dial: crate::upstream::Dial::Direct,
                shutdown: close,
            };
            let serving = crate::connection::dispatch(conn, tunnel.stream, permit.is_some());
            if let Some(serving) = serving {
                serving.await
            }
        })
    }

    fn refused(
        &self,
        peer_addr: SocketAddr,
        rejection: Option<PeerRejection>,
        error: &std::io::Error,
    ) {
        let rec = refused_record(peer_addr, self.listen, rejection.as_ref(), error);
        tracing::warn!(%peer_addr, "tunnel handshake refused: {}", rec.policy);
        self.proxy.flows.record(rec);
    }
}
