//! The Hubble-compatible `observer.Observer` gRPC service over the flow log: `GetFlows` (history, filters,
//! follow mode) and `ServerStatus`. Selection logic lives in `flow_filter` (pure); this module does the streaming.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::flow::{FlowLog, FlowRecord};
use crate::flow_filter::Selection;
use crate::hubble::{
    flow::Flow,
    observer::{
        GetFlowsRequest, GetFlowsResponse, ServerStatusRequest, ServerStatusResponse,
        get_flows_response,
        observer_server::{Observer, ObserverServer},
    },
    to_flow,
};

#[derive(Debug, thiserror::Error)]
pub enum ObserverError {
    #[error(
        "observer: cannot listen on {addr}: {source}; pick a free address with --observer-listen"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The service state: the flow log and this node's name for `node_name`.
#[derive(Debug, Clone)]
pub struct ObserverService {
    flows: Arc<FlowLog>,
    node_name: Arc<str>,
    started: Instant,
}

impl ObserverService {
    pub fn new(flows: Arc<FlowLog>, node_name: &str) -> Self {
        ObserverService {
            flows,
            node_name: node_name.into(),
            started: Instant::now(),
        }
    }
}

/// This node's name for flows: `NODE_NAME` (set from the downward API in a DaemonSet), else the hostname.
pub fn node_name() -> String {
    if let Ok(n) = std::env::var("NODE_NAME")
        && !n.is_empty()
    {
        return n;
    }
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// What a `GetFlows` request asks for, apart from the filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub number: u64,
    pub first: bool,
    pub follow: bool,
    /// Nanoseconds since the epoch.
    pub since: Option<i128>,
    pub until: Option<i128>,
}

impl Window {
    fn from_request(r: &GetFlowsRequest) -> Self {
        let ns = |t: &prost_types::Timestamp| {
            i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
        };
        Window {
            number: r.number,
            first: r.first,
            follow: r.follow,
            since: r.since.as_ref().map(ns),
            until: r.until.as_ref().map(ns),
        }
    }

    fn in_time(&self, flow: &Flow) -> bool {
        let Some(t) = flow.time.as_ref() else {
            return self.since.is_none() && self.until.is_none();
        };
        let t = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u)
    }

    /// A followed stream ends with the first flow after `until`.
    fn past_until(&self, flow: &Flow) -> bool {
        let t = flow.time.as_ref().map_or(0, |t| {
            i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
        });
        self.until.is_some_and(|u| t > u)
    }

    /// Picks the historical flows to send, oldest first. `number == 0` means all of them unless following (then
    /// only new flows are sent, like `hubble observe -f`).
    pub fn pick(&self, selected: Vec<Flow>) -> Vec<Flow> {
        let n = match (self.number, self.follow) {
            (0, true) if self.since.is_none() => 0,
            (0, _) => selected.len(),
            (n, _) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        if self.first {
            selected.into_iter().take(n).collect()
        } else {
            let skip = selected.len().saturating_sub(n);
            selected.into_iter().skip(skip).collect()
        }
    }
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;

fn response(flow: Flow, node: &str) -> GetFlowsResponse {
    GetFlowsResponse {
        time: flow.time,
        node_name: node.to_string(),
        response_types: Some(get_flows_response::ResponseTypes::Flow(flow)),
    }
}

#[tonic::async_trait]
impl Observer for ObserverService {
    type GetFlowsStream = FlowStream;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let req = request.into_inner();
        let selection = Selection::compile(&req.whitelist, &req.blacklist)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let window = Window::from_request(&req);
        // Subscribe before taking the history so no record falls between the two; duplicates are skipped by uuid.
        let live = window.follow.then(|| self.flows.subscribe());
        let history: Vec<FlowRecord> = self.flows.last(usize::MAX);
        let seen: HashSet<String> = if window.follow {
            history.iter().map(|r| r.uuid.clone()).collect()
        } else {
            HashSet::new()
        };
        let node = self.node_name.clone();
        let selected: Vec<Flow> = history
            .iter()
            .map(|r| to_flow(r, &node))
            .filter(|f| window.in_time(f) && selection.accepts(f))
            .collect();
        let picked = window.pick(selected);
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            for f in picked {
                if tx.send(Ok(response(f, &node))).await.is_err() {
                    return;
                }
            }
            let Some(mut live) = live else { return };
            loop {
                tokio::select! {
                    got = live.recv() => match got {
                        Ok(rec) => {
                            if seen.contains(&rec.uuid) {
                                continue;
                            }
                            let f = to_flow(&rec, &node);
                            if window.past_until(&f) {
                                return;
                            }
                            if window.in_time(&f) && selection.accepts(&f)
                                && tx.send(Ok(response(f, &node))).await.is_err()
                            {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(skipped = n, "observer follower fell behind; skipped flows");
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn server_status(
        &self,
        _request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        Ok(Response::new(ServerStatusResponse {
            num_flows: self.flows.len() as u64,
            max_flows: self.flows.capacity() as u64,
            seen_flows: self
                .flows
                .counters
                .seen
                .load(std::sync::atomic::Ordering::Relaxed),
            uptime_ns: u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX),
        }))
    }
}

/// Binds `addr` now (so a taken port fails startup) and serves the Observer until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    flows: Arc<FlowLog>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ObserverError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ObserverError::Bind { addr, source })?;
    let svc = ObserverService::new(flows, &node_name());
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    Ok(tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(ObserverServer::new(svc))
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await;
        if let Err(e) = r {
            tracing::error!("observer server stopped: {e}");
        }
    }))
}

/// Binds `addr`, retrying while another tollgate on this node (the one a restart is taking over from) still
/// holds it; gives up only on shutdown.
async fn bind_patiently(
    what: &'static str,
    addr: SocketAddr,
    shutdown: &CancellationToken,
) -> Option<tokio::net::TcpListener> {
    let mut warned = false;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(listen = %addr, "{what} ready");
                return Some(l);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if !warned {
                    tracing::warn!(listen = %addr, "{what}: address in use (a draining tollgate, or pick another address); retrying");
                    warned = true;
                }
            }
            Err(e) => {
                tracing::error!(listen = %addr, "{what}: cannot listen: {e}");
                return None;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            _ = shutdown.cancelled() => return None,
        }
    }
}

/// Starts the daemon's observability: the Observer API, the admin server (metrics fed from the flow log,
/// readiness set now: the policy is loaded and the proxy listeners are bound when `run` calls this) and the
/// optional flow export.
pub fn start_services(
    args: &crate::config::RunArgs,
    flows: &Arc<FlowLog>,
    policy: &Arc<crate::policy_source::PolicySource>,
    shutdown: CancellationToken,
) -> Result<(), crate::flow_export::ExportError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    if let Some(path) = &args.flow_export {
        let export = Arc::new(crate::flow_export::FlowExport::start(
            crate::flow_export::Rotation {
                path: path.clone(),
                max_bytes: args.flow_export_max_bytes,
                keep: args.flow_export_keep,
            },
        )?);
        export.attach(flows);
    }
    let metrics = Arc::new(crate::metrics::Metrics::new(args.metrics_max_series));
    metrics.attach(flows);
    let (f, p) = (flows.clone(), policy.clone());
    let ready = Arc::new(AtomicBool::new(false));
    let admin = Arc::new(crate::metrics::Admin {
        metrics,
        // The policy is loaded and the proxy listeners are bound already; ready once the observer listens too.
        ready: ready.clone(),
        gauges: Box::new(move || crate::metrics::Gauges {
            flows_seen: f.counters.seen.load(Ordering::Relaxed),
            flows_lost: f.counters.lost.load(Ordering::Relaxed),
            policy_generation: p.current().generation,
            policy_reload_errors: p.rejected_updates(),
        }),
    });
    let (observer_addr, metrics_addr) = (args.observer_listen, args.metrics_listen);
    let svc = ObserverService::new(flows.clone(), &node_name());
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let Some(listener) = bind_patiently("observer API", observer_addr, &stop).await else {
            return;
        };
        ready.store(true, Ordering::Relaxed);
        let r = tonic::transport::Server::builder()
            .add_service(ObserverServer::new(svc))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.cancelled_owned(),
            )
            .await;
        if let Err(e) = r {
            tracing::error!("observer server stopped: {e}");
        }
    });
    tokio::spawn(async move {
        let Some(listener) = bind_patiently(
            "admin server (/metrics, /healthz, /readyz)",
            metrics_addr,
            &shutdown,
        )
        .await
        else {
            return;
        };
        crate::metrics::serve_on(listener, admin, shutdown).await;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flows(n: i64) -> Vec<Flow> {
        (0..n)
            .map(|i| Flow {
                time: Some(prost_types::Timestamp {
                    seconds: 100 + i,
                    nanos: 0,
                }),
                uuid: i.to_string(),
                ..Default::default()
            })
            .collect()
    }

    fn ids(v: Vec<Flow>) -> Vec<String> {
        v.into_iter().map(|f| f.uuid).collect()
    }

    fn window(number: u64, first: bool, follow: bool) -> Window {
        Window {
            number,
            first,
            follow,
            since: None,
            until: None,
        }
    }

    #[test]
    fn number_first_and_follow() {
        assert_eq!(ids(window(2, false, false).pick(flows(5))), ["3", "4"]);
        assert_eq!(ids(window(2, true, false).pick(flows(5))), ["0", "1"]);
        assert_eq!(ids(window(0, false, false).pick(flows(3))), ["0", "1", "2"]);
        assert!(
            window(0, false, true).pick(flows(3)).is_empty(),
            "follow alone: only new flows"
        );
        assert_eq!(ids(window(1, false, true).pick(flows(3))), ["2"]);
        assert_eq!(ids(window(9, false, false).pick(flows(2))), ["0", "1"]);
    }

    #[test]
    fn since_and_until_bound_time() {
        let w = Window {
            since: Some(101_000_000_000),
            until: Some(103_000_000_000),
            ..window(0, false, false)
        };
        let kept: Vec<Flow> = flows(6).into_iter().filter(|f| w.in_time(f)).collect();
        assert_eq!(ids(kept), ["1", "2", "3"]);
    }
}
