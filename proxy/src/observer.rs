//! The Hubble-compatible `observer.Observer` gRPC service over the flow log: `GetFlows` (history, filters,
//! follow mode, field masks), `GetAgentEvents`, `GetNodes` and `ServerStatus`, plus the standard
//! `grpc.health.v1.Health` that `hubble status` checks first. Selection logic lives in `flow_filter` and
//! `field_mask` (pure); each flow record becomes Cilium's sequence of flows in `hubble::to_flows`; this module
//! does the streaming.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::agent_events::AgentEvents;
use crate::field_mask::FieldMask;
use crate::flow::{FlowLog, FlowRecord};
use crate::flow_filter::Selection;
use crate::hubble::{
    NodeInfo,
    flow::Flow,
    observer::{
        GetAgentEventsRequest, GetAgentEventsResponse, GetFlowsRequest, GetFlowsResponse,
        GetNodesRequest, GetNodesResponse, Node, ServerStatusRequest, ServerStatusResponse, Tls,
        get_flows_response,
        observer_server::{Observer, ObserverServer},
    },
    relay::NodeState,
    to_flows,
};
use crate::hubble_server::{self, tls::Identity, version};

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

/// The service state: the flow log, the agent events, and what this node reports about itself.
#[derive(Debug, Clone)]
pub struct ObserverService {
    flows: Arc<FlowLog>,
    node: Arc<NodeInfo>,
    /// The Observer API address, as `GetNodes` reports it.
    address: Arc<str>,
    events: Arc<AgentEvents>,
    started: Instant,
}

impl ObserverService {
    pub fn new(flows: Arc<FlowLog>, node_name: &str) -> Self {
        ObserverService {
            flows,
            node: Arc::new(NodeInfo {
                name: node_name.to_string(),
                labels: node_labels(node_name),
            }),
            address: "".into(),
            events: Arc::new(AgentEvents::default()),
            started: Instant::now(),
        }
    }

    /// Reports `address` as this node's Observer address in `GetNodes`.
    pub fn with_address(mut self, address: SocketAddr) -> Self {
        self.address = address.to_string().into();
        self
    }

    /// Serves `events` through `GetAgentEvents`.
    pub fn with_events(mut self, events: Arc<AgentEvents>) -> Self {
        self.events = events;
        self
    }
}

/// Hubble's `node_labels`: `kubernetes.io/hostname=<node>`, plus `TOLLGATE_NODE_LABELS` (`k=v,k2=v2`), since the
/// Kubernetes downward API cannot hand a pod its node's labels.
pub fn node_labels(node_name: &str) -> Vec<String> {
    let mut labels = vec![format!("kubernetes.io/hostname={node_name}")];
    if let Ok(extra) = std::env::var("TOLLGATE_NODE_LABELS") {
        labels.extend(
            extra
                .split(',')
                .map(str::trim)
                .filter(|l| l.contains('=') && !l.starts_with("kubernetes.io/hostname="))
                .map(String::from),
        );
    }
    labels
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

fn timestamp_ns(t: &prost_types::Timestamp) -> i128 {
    i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
}

impl Window {
    fn from_request(r: &GetFlowsRequest) -> Self {
        Window::from_times(r.number, r.first, r.follow, &r.since, &r.until)
    }

    fn from_times(
        number: u64,
        first: bool,
        follow: bool,
        since: &Option<prost_types::Timestamp>,
        until: &Option<prost_types::Timestamp>,
    ) -> Self {
        Window {
            number,
            first,
            follow,
            since: since.as_ref().map(timestamp_ns),
            until: until.as_ref().map(timestamp_ns),
        }
    }

    fn in_time_ns(&self, t: i128) -> bool {
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u)
    }

    fn in_time(&self, flow: &Flow) -> bool {
        match flow.time.as_ref() {
            Some(t) => self.in_time_ns(timestamp_ns(t)),
            None => self.since.is_none() && self.until.is_none(),
        }
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
    pub fn pick<T>(&self, selected: Vec<T>) -> Vec<T> {
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
type EventStream = Pin<Box<dyn Stream<Item = Result<GetAgentEventsResponse, Status>> + Send>>;

fn response(flow: Flow, node: &str) -> GetFlowsResponse {
    GetFlowsResponse {
        time: flow.time,
        node_name: node.to_string(),
        response_types: Some(get_flows_response::ResponseTypes::Flow(flow)),
    }
}

/// Everything that decides which flows a `GetFlows` stream sends, and in what shape.
struct Query {
    window: Window,
    selection: Selection,
    mask: Option<FieldMask>,
    node: Arc<NodeInfo>,
}

impl Query {
    fn compile(req: &GetFlowsRequest, node: Arc<NodeInfo>) -> Result<Self, Status> {
        let selection = Selection::compile(&req.whitelist, &req.blacklist)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let paths = req
            .experimental
            .as_ref()
            .and_then(|e| e.field_mask.as_ref())
            .map(|m| m.paths.clone())
            .unwrap_or_default();
        let mask =
            FieldMask::compile(&paths).map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Query {
            window: Window::from_request(req),
            selection,
            mask,
            node,
        })
    }

    /// The selected flows of one record, in Cilium's shape (see `hubble::to_flows`); filters see whole flows,
    /// the mask applies last.
    fn flows_of(&self, rec: &FlowRecord) -> Vec<Flow> {
        to_flows(rec, &self.node)
            .into_iter()
            .filter(|f| self.window.in_time(f) && self.selection.accepts(f))
            .collect()
    }

    /// The response carries the flow's time even when the mask leaves `time` out (the relay orders by it).
    fn shape(&self, f: Flow) -> GetFlowsResponse {
        let time = f.time;
        let f = match &self.mask {
            Some(m) => m.apply(&f),
            None => f,
        };
        GetFlowsResponse {
            time,
            ..response(f, &self.node.name)
        }
    }
}

#[tonic::async_trait]
impl Observer for ObserverService {
    type GetFlowsStream = FlowStream;
    type GetAgentEventsStream = EventStream;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let query = Query::compile(&request.into_inner(), self.node.clone())?;
        let window = query.window;
        // Subscribe before taking the history so no record falls between the two; duplicates are skipped by uuid.
        let live = window.follow.then(|| self.flows.subscribe());
        let history: Vec<FlowRecord> = self.flows.last(usize::MAX);
        let seen: HashSet<crate::flow::FlowId> = if window.follow {
            history.iter().map(|r| r.uuid).collect()
        } else {
            HashSet::new()
        };
        let selected: Vec<Flow> = history.iter().flat_map(|r| query.flows_of(r)).collect();
        let picked = window.pick(selected);
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            for f in picked {
                if tx.send(Ok(query.shape(f))).await.is_err() {
                    return;
                }
            }
            let Some(live) = live else { return };
            follow(live, seen, query, tx).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_agent_events(
        &self,
        request: Request<GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        let req = request.into_inner();
        let window = Window::from_times(req.number, req.first, req.follow, &req.since, &req.until);
        let live = window.follow.then(|| self.events.subscribe());
        let in_time = move |t: &prost_types::Timestamp| window.in_time_ns(timestamp_ns(t));
        let history: Vec<_> = self
            .events
            .history()
            .into_iter()
            .filter(|e| in_time(&e.time))
            .collect();
        let picked = window.pick(history);
        let node = self.node.name.clone();
        let event = move |e: crate::agent_events::Stamped| GetAgentEventsResponse {
            agent_event: Some(e.event),
            node_name: node.clone(),
            time: Some(e.time),
        };
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            for e in picked {
                if tx.send(Ok(event(e))).await.is_err() {
                    return;
                }
            }
            let Some(mut live) = live else { return };
            loop {
                tokio::select! {
                    got = live.recv() => match got {
                        Ok(e) if in_time(&e.time) => {
                            if tx.send(Ok(event(e))).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
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

    async fn get_nodes(
        &self,
        _request: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        let c = self.counts();
        Ok(Response::new(GetNodesResponse {
            nodes: vec![Node {
                name: self.node.name.clone(),
                version: version(),
                address: self.address.to_string(),
                state: NodeState::NodeConnected as i32,
                tls: Some(Tls {
                    enabled: false,
                    server_name: String::new(),
                }),
                uptime_ns: c.uptime_ns,
                num_flows: c.num_flows,
                max_flows: c.max_flows,
                seen_flows: c.seen_flows,
            }],
        }))
    }

    async fn server_status(
        &self,
        _request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let c = self.counts();
        Ok(Response::new(ServerStatusResponse {
            num_flows: c.num_flows,
            max_flows: c.max_flows,
            seen_flows: c.seen_flows,
            uptime_ns: c.uptime_ns,
            // A standalone node: itself, always reachable.
            num_connected_nodes: Some(1),
            num_unavailable_nodes: Some(0),
            unavailable_nodes: Vec::new(),
            version: version(),
            flows_rate: self.flows_rate(),
        }))
    }
}

/// Follow mode: new records as they come, until the client leaves or a flow passes `until`.
async fn follow(
    mut live: broadcast::Receiver<Arc<FlowRecord>>,
    seen: HashSet<crate::flow::FlowId>,
    query: Query,
    tx: mpsc::Sender<Result<GetFlowsResponse, Status>>,
) {
    loop {
        tokio::select! {
            got = live.recv() => match got {
                Ok(rec) => {
                    if seen.contains(&rec.uuid) {
                        continue;
                    }
                    for f in to_flows(&rec, &query.node) {
                        if query.window.past_until(&f) {
                            return;
                        }
                        if query.window.in_time(&f) && query.selection.accepts(&f)
                            && tx.send(Ok(query.shape(f))).await.is_err()
                        {
                            return;
                        }
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
}

/// What `ServerStatus` and `GetNodes` report. Counts are flow records (one per request, query or refused
/// connection); `GetFlows` sends each as Cilium's one to three flows (policy verdict, request, response).
struct Counts {
    num_flows: u64,
    max_flows: u64,
    seen_flows: u64,
    uptime_ns: u64,
}

impl ObserverService {
    fn counts(&self) -> Counts {
        Counts {
            num_flows: self.flows.len() as u64,
            max_flows: self.flows.capacity() as u64,
            seen_flows: self
                .flows
                .counters
                .seen
                .load(std::sync::atomic::Ordering::Relaxed),
            uptime_ns: u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Records per second over the last minute (over the uptime when shorter).
    fn flows_rate(&self) -> f64 {
        let now = crate::agent_events::now();
        let minute_ago = timestamp_ns(&now) - 60_000_000_000;
        let recent = self
            .flows
            .last(usize::MAX)
            .iter()
            .map(|r| crate::hubble::flow_time(&r.time))
            .filter(|t| timestamp_ns(t) >= minute_ago)
            .count();
        let span = self.started.elapsed().as_secs_f64().clamp(1.0, 60.0);
        recent as f64 / span
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
    let svc = ObserverService::new(flows, &node_name()).with_address(addr);
    Ok(tokio::spawn(serve_on(listener, svc, None, shutdown)))
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

/// Why the daemon's observability could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error(transparent)]
    Export(#[from] crate::flow_export::ExportError),
    #[error(transparent)]
    FlowLogs(#[from] crate::flow_logs::FlowLogsError),
    #[error(transparent)]
    ObserverTls(#[from] crate::hubble_server::tls::TlsError),
}

/// What the daemon's observability serves, built from the run flags by `run.rs`.
#[derive(Debug, Clone)]
pub struct ServicesConfig {
    /// The node name the Observer API and the Hubble flow logs report.
    pub node_name: String,
    pub observer_listen: SocketAddr,
    /// The Observer API over mTLS: `--observer-tls-svid-dir` and the client IDs it accepts.
    pub observer_tls: Option<(PathBuf, Vec<String>)>,
    /// The admin server (/metrics, /healthz, /readyz).
    pub metrics_listen: SocketAddr,
    pub metrics_max_series: usize,
    pub hubble_metrics: crate::hubble_metrics::HubbleConfig,
    /// `--flow-export`: the rotated JSON file.
    pub flow_export: Option<crate::flow_export::Rotation>,
    /// `--hubble-flowlogs-config-path` and how often it is re-read.
    pub flow_logs: Option<(PathBuf, std::time::Duration)>,
}

/// Starts the daemon's observability: the Observer API, the admin server (metrics fed from the flow log,
/// readiness set now: the policy is loaded and the proxy listeners are bound when `run` calls this) and the
/// optional flow export and Hubble flow logs.
pub fn start_services(
    config: ServicesConfig,
    flows: &Arc<FlowLog>,
    policy: &Arc<crate::policy_source::PolicyStore>,
    dns_metrics: Option<Arc<crate::dns::metrics::DnsMetrics>>,
    parked: Arc<crate::keepalive::ParkedCount>,
    shutdown: CancellationToken,
) -> Result<(), ServicesError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    if let Some(rotation) = config.flow_export {
        Arc::new(crate::flow_export::FlowExport::start(rotation)?).attach(flows);
    }
    if let Some((path, every)) = config.flow_logs {
        let node = NodeInfo {
            labels: node_labels(&config.node_name),
            name: config.node_name.clone(),
        };
        crate::flow_logs::FlowLogs::start(path, node, every)?.attach(flows);
    }
    let metrics = Arc::new(
        crate::metrics::Metrics::with_hubble(config.metrics_max_series, config.hubble_metrics)
            .with_dns(dns_metrics),
    );
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
            http_connections_parked: parked.get(),
        }),
    });
    let p = policy.clone();
    flows.set_revision_source(Box::new(move || p.current().generation));
    let events = Arc::new(AgentEvents::default());
    events.clone().watch(policy.clone(), shutdown.clone());
    let svc = ObserverService::new(flows.clone(), &config.node_name)
        .with_address(config.observer_listen)
        .with_events(events);
    let tls = config
        .observer_tls
        .as_ref()
        .map(|(dir, client_ids)| {
            Identity::load(
                "--observer-tls-svid-dir",
                dir,
                client_ids,
                "--observer-tls-client-id",
            )
        })
        .transpose()?;
    serve_observer(svc, config.observer_listen, tls, ready, shutdown.clone())?;
    serve_admin(admin, config.metrics_listen, shutdown);
    Ok(())
}

/// The Observer API (plain or mTLS); marks the daemon ready once it listens.
fn serve_observer(
    svc: ObserverService,
    observer_addr: SocketAddr,
    tls: Option<Identity>,
    ready: Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
) -> Result<(), ServicesError> {
    let acceptor = tls.as_ref().map(Identity::acceptor).transpose()?;
    tokio::spawn(async move {
        let Some(listener) = bind_patiently("observer API", observer_addr, &stop).await else {
            return;
        };
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        serve_on(listener, svc, acceptor, stop).await;
        // `tls` (the SVID file watcher) lives as long as the server.
        drop(tls);
    });
    Ok(())
}

/// Serves the Observer API and its health service on `listener` until `stop` (over mTLS with `acceptor`).
async fn serve_on(
    listener: tokio::net::TcpListener,
    svc: ObserverService,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    stop: CancellationToken,
) {
    let router = tonic::transport::Server::builder()
        .add_service(hubble_server::health())
        .add_service(ObserverServer::new(svc));
    let served = hubble_server::serve(router, listener, acceptor, "observer API", stop).await;
    if let Err(e) = served {
        tracing::error!("observer server stopped: {e}");
    }
}

/// The admin server: /metrics, /healthz, /readyz.
fn serve_admin(
    admin: Arc<crate::metrics::Admin>,
    metrics_addr: SocketAddr,
    shutdown: CancellationToken,
) {
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
