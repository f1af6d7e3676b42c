//! The relay's `observer.Observer`: one cluster-wide view over every node's Observer. `GetFlows` pushes the
//! request (filters, field mask, number, since/until) down to each node and merges the answers in time order
//! through the sort buffer (`merge`); `GetNodes` and `ServerStatus` ask every connected node now and add up.
//!
//! A followed stream has two phases, split at the instant T0 the request arrived: the history (each node's flows
//! up to T0, merged, trimmed to `--last N` over all nodes), then each node's flows after T0. A node that drops
//! out of a followed stream is announced with a `node_status` event (NODE_UNAVAILABLE), the other nodes keep
//! flowing, and when it comes back it is announced again (NODE_CONNECTED) and resumes after the last flow it
//! sent; a node discovered while the stream is open joins it.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::merge::{SortBuffer, Tail, TimeNs};
use super::peers::{Link, Peer, PeerPool};
use crate::hubble::observer::{
    GetAgentEventsRequest, GetAgentEventsResponse, GetFlowsRequest, GetFlowsResponse,
    GetNodesRequest, GetNodesResponse, Node, ServerStatusRequest, ServerStatusResponse, Tls,
    get_flows_response::ResponseTypes, observer_client::ObserverClient, observer_server::Observer,
};
use crate::hubble::relay::{NodeState, NodeStatusEvent};

/// How the relay merges (Hubble relay's `--sort-buffer-len-max` and `--sort-buffer-drain-timeout`).
#[derive(Debug, Clone, Copy)]
pub struct MergeConfig {
    pub buffer_len: usize,
    pub max_wait: Duration,
}

#[derive(Debug, Clone)]
pub struct RelayService {
    pool: Arc<PeerPool>,
    merge: MergeConfig,
    started: Instant,
    /// How long `GetNodes`/`ServerStatus` wait for a node.
    ask_timeout: Duration,
}

impl RelayService {
    pub fn new(pool: Arc<PeerPool>, merge: MergeConfig) -> Self {
        RelayService {
            pool,
            merge,
            started: Instant::now(),
            ask_timeout: Duration::from_secs(3),
        }
    }
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;
type EventStream = Pin<Box<dyn Stream<Item = Result<GetAgentEventsResponse, Status>> + Send>>;
type Out = mpsc::Sender<Result<GetFlowsResponse, Status>>;

fn now_ts() -> prost_types::Timestamp {
    crate::agent_events::now()
}

fn ns(t: &prost_types::Timestamp) -> TimeNs {
    i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
}

fn ts(ns: TimeNs) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(ns.div_euclid(1_000_000_000)).unwrap_or(i64::MAX),
        nanos: i32::try_from(ns.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
}

/// A `node_status` event.
pub fn node_status(state: NodeState, names: Vec<String>, message: String) -> GetFlowsResponse {
    GetFlowsResponse {
        response_types: Some(ResponseTypes::NodeStatus(NodeStatusEvent {
            state_change: state as i32,
            node_names: names,
            message,
        })),
        node_name: String::new(),
        time: Some(now_ts()),
    }
}

/// What one node's task hands the merger.
enum Item {
    Flow(GetFlowsResponse),
    Status(GetFlowsResponse),
}

fn flow_time(r: &GetFlowsResponse) -> TimeNs {
    r.time
        .as_ref()
        .or(match &r.response_types {
            Some(ResponseTypes::Flow(f)) => f.time.as_ref(),
            _ => None,
        })
        .map_or(0, ns)
}

/// The history request sent to every node: the client's, ending at `t0` when following.
fn history_request(req: &GetFlowsRequest, t0: Option<TimeNs>) -> GetFlowsRequest {
    let mut r = req.clone();
    r.follow = false;
    if let Some(t0) = t0 {
        let until = r.until.as_ref().map_or(t0, |u| ns(u).min(t0));
        r.until = Some(ts(until));
    }
    r
}

/// Does a followed request want any history?
fn wants_history(req: &GetFlowsRequest) -> bool {
    !req.follow || req.number > 0 || req.since.is_some()
}

/// The live request for one node: flows after `after` (T0, or the last flow this node sent), no history count.
fn live_request(req: &GetFlowsRequest, after: TimeNs) -> GetFlowsRequest {
    let mut r = req.clone();
    r.follow = true;
    r.number = 0;
    r.first = false;
    let since = r.since.as_ref().map_or(after + 1, |s| ns(s).max(after + 1));
    r.since = Some(ts(since));
    r
}

#[tonic::async_trait]
impl Observer for RelayService {
    type GetFlowsStream = FlowStream;
    type GetAgentEventsStream = EventStream;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let req = request.into_inner();
        // Refuse a bad request here, once, rather than once per node.
        crate::flow_filter::Selection::compile(&req.whitelist, &req.blacklist)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let paths = req
            .experimental
            .as_ref()
            .and_then(|e| e.field_mask.as_ref())
            .map(|m| m.paths.clone())
            .unwrap_or_default();
        crate::field_mask::FieldMask::compile(&paths)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (tx, rx) = mpsc::channel(256);
        let (pool, merge) = (self.pool.clone(), self.merge);
        tokio::spawn(async move {
            let t0 = ns(&now_ts());
            announce(&pool, &tx).await;
            if wants_history(&req) {
                let hist = history_request(&req, req.follow.then_some(t0));
                if !history(&pool, hist, merge, &tx).await {
                    return;
                }
            }
            if req.follow {
                follow(pool, req, t0, merge, tx).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_agent_events(
        &self,
        _request: Request<GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        Err(Status::unimplemented(
            "tollgate relay does not merge agent events (as Hubble relay); ask a node's observer directly (tollgate observe --server NODE:4245)",
        ))
    }

    async fn get_nodes(
        &self,
        _request: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        let nodes = self
            .ask_all()
            .await
            .into_iter()
            .map(|(peer, status)| {
                let connected = status.is_some();
                let s = status.unwrap_or_default();
                Node {
                    name: peer.name(),
                    version: s.version,
                    address: peer.spec.address.clone(),
                    state: if connected {
                        NodeState::NodeConnected
                    } else {
                        NodeState::NodeUnavailable
                    } as i32,
                    tls: Some(Tls {
                        enabled: self.pool.uses_tls(),
                        server_name: self.pool.tls_server_name.clone().unwrap_or_default(),
                    }),
                    uptime_ns: s.uptime_ns,
                    num_flows: s.num_flows,
                    max_flows: s.max_flows,
                    seen_flows: s.seen_flows,
                }
            })
            .collect();
        Ok(Response::new(GetNodesResponse { nodes }))
    }

    async fn server_status(
        &self,
        _request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let mut out = ServerStatusResponse {
            uptime_ns: u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            version: crate::hubble_server::version(),
            ..Default::default()
        };
        let (mut up, mut down) = (0u32, Vec::new());
        for (peer, status) in self.ask_all().await {
            match status {
                Some(s) => {
                    up += 1;
                    out.num_flows += s.num_flows;
                    out.max_flows += s.max_flows;
                    out.seen_flows += s.seen_flows;
                    out.flows_rate += s.flows_rate;
                }
                None => down.push(peer.name()),
            }
        }
        out.num_connected_nodes = Some(up);
        out.num_unavailable_nodes = Some(u32::try_from(down.len()).unwrap_or(u32::MAX));
        out.unavailable_nodes = down;
        Ok(Response::new(out))
    }
}

impl RelayService {
    /// Every node's `ServerStatus` now (`None`: not connected, or no answer within the timeout).
    async fn ask_all(&self) -> Vec<(Arc<Peer>, Option<ServerStatusResponse>)> {
        let asks = self.pool.peers().into_iter().map(|peer| {
            let timeout = self.ask_timeout;
            async move {
                let status = match peer.state().channel() {
                    Some((ch, _)) => {
                        let mut c = ObserverClient::new(ch);
                        match tokio::time::timeout(timeout, c.server_status(ServerStatusRequest {}))
                            .await
                        {
                            Ok(Ok(r)) => Some(r.into_inner()),
                            _ => {
                                peer.report_failure();
                                None
                            }
                        }
                    }
                    None => None,
                };
                (peer, status)
            }
        });
        futures::future::join_all(asks).await
    }
}

/// The stream's first events, as Hubble relay sends them: which nodes take part and which do not.
async fn announce(pool: &PeerPool, tx: &Out) {
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for p in pool.peers() {
        match p.state().link {
            Link::Connected { .. } => up.push(p.name()),
            _ => down.push(p.name()),
        }
    }
    if !up.is_empty() {
        let _ = tx
            .send(Ok(node_status(NodeState::NodeConnected, up, String::new())))
            .await;
    }
    if !down.is_empty() {
        let _ = tx
            .send(Ok(node_status(
                NodeState::NodeUnavailable,
                down,
                "not reachable now; see the relay's log".into(),
            )))
            .await;
    }
}

/// The history phase: every connected node's answer to `req`, merged in time order, trimmed to the request's
/// number over all nodes. Returns false when the client has left.
async fn history(pool: &PeerPool, req: GetFlowsRequest, merge: MergeConfig, tx: &Out) -> bool {
    let (itx, mut irx) = mpsc::channel::<Item>(256);
    for peer in pool.peers() {
        let Some((ch, _)) = peer.state().channel() else {
            continue;
        };
        let (itx, req) = (itx.clone(), req.clone());
        tokio::spawn(async move {
            let mut client = ObserverClient::new(ch);
            let result = async {
                let mut s = client.get_flows(req).await?.into_inner();
                while let Some(r) = s.message().await? {
                    if matches!(r.response_types, Some(ResponseTypes::Flow(_)))
                        && itx.send(Item::Flow(r)).await.is_err()
                    {
                        break;
                    }
                }
                Ok::<_, Status>(())
            }
            .await;
            if let Err(e) = result {
                peer.report_failure();
                let ev = node_status(
                    NodeState::NodeError,
                    vec![peer.name()],
                    format!("GetFlows on {}: {}", peer.spec.address, e.message()),
                );
                let _ = itx.send(Item::Status(ev)).await;
            }
        });
    }
    drop(itx);
    let n = usize::try_from(req.number).unwrap_or(usize::MAX);
    let mut buf = SortBuffer::new(merge.buffer_len, Duration::MAX);
    let mut tail = Tail::new(if req.first { 0 } else { n });
    let mut sent_first = 0usize;
    let mut emit = |r: GetFlowsResponse, out: &mut Vec<GetFlowsResponse>| {
        if req.first && req.number > 0 {
            if sent_first < n {
                sent_first += 1;
                out.push(r);
            }
        } else {
            tail.push(r);
        }
    };
    let mut ready = Vec::new();
    while let Some(item) = irx.recv().await {
        match item {
            Item::Status(ev) => {
                if tx.send(Ok(ev)).await.is_err() {
                    return false;
                }
            }
            Item::Flow(r) => {
                let t = flow_time(&r);
                for out in buf.push(t, r, Instant::now()) {
                    emit(out, &mut ready);
                }
            }
        }
        for r in ready.drain(..) {
            if tx.send(Ok(r)).await.is_err() {
                return false;
            }
        }
    }
    for out in buf.drain() {
        emit(out, &mut ready);
    }
    if buf.out_of_order() > 0 {
        tracing::debug!(
            late = buf.out_of_order(),
            "relay: flows arrived too late for the sort buffer"
        );
    }
    ready.extend(tail.into_vec());
    for r in ready {
        if tx.send(Ok(r)).await.is_err() {
            return false;
        }
    }
    true
}

/// The live phase: one task per node (joining as nodes are discovered), merged through the sort buffer until
/// the client leaves, or every node's stream has passed `until`.
async fn follow(
    pool: Arc<PeerPool>,
    req: GetFlowsRequest,
    t0: TimeNs,
    merge: MergeConfig,
    tx: Out,
) {
    let (itx, mut irx) = mpsc::channel::<Item>(256);
    let stop = CancellationToken::new();
    let _stop_all = stop.clone().drop_guard();
    let mut members = pool.members();
    let mut running: BTreeMap<String, CancellationToken> = BTreeMap::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut buf = SortBuffer::new(merge.buffer_len, merge.max_wait);
    let mut first_round = true;
    loop {
        // Nodes that joined or left discovery.
        let peers = pool.peers();
        running.retain(|addr, tok| {
            let keep = peers.iter().any(|p| &p.spec.address == addr);
            if !keep {
                tok.cancel();
            }
            keep
        });
        for peer in peers {
            let addr = peer.spec.address.clone();
            if running.contains_key(&addr) || finished.contains(&addr) {
                continue;
            }
            if !first_round {
                let _ = tx
                    .send(Ok(node_status(
                        NodeState::NodeConnected,
                        vec![peer.name()],
                        "node discovered; joining this stream".into(),
                    )))
                    .await;
            }
            let tok = stop.child_token();
            running.insert(addr.clone(), tok.clone());
            let (itx, req, done) = (itx.clone(), req.clone(), done_tx.clone());
            tokio::spawn(async move {
                follow_node(peer, req, t0, itx, tok).await;
                let _ = done.send(addr);
            });
        }
        first_round = false;
        let deadline = buf.next_deadline();
        tokio::select! {
            got = irx.recv() => match got {
                Some(Item::Flow(r)) => {
                    let t = flow_time(&r);
                    for out in buf.push(t, r, Instant::now()) {
                        if tx.send(Ok(out)).await.is_err() { return; }
                    }
                }
                Some(Item::Status(ev)) => {
                    if tx.send(Ok(ev)).await.is_err() { return; }
                }
                None => return,
            },
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d.into()).await, None => std::future::pending().await } } => {
                for out in buf.due(Instant::now()) {
                    if tx.send(Ok(out)).await.is_err() { return; }
                }
            }
            Some(addr) = done_rx.recv() => {
                running.remove(&addr);
                // Only a stream bounded by `until` ends by itself; a cancelled one may join again later.
                if req.until.is_some() {
                    finished.insert(addr);
                }
                if running.is_empty() && req.until.is_some() {
                    while let Ok(item) = irx.try_recv() {
                        if let Item::Flow(r) = item { let t = flow_time(&r); for out in buf.push(t, r, Instant::now()) { if tx.send(Ok(out)).await.is_err() { return; } } }
                    }
                    for out in buf.drain() {
                        if tx.send(Ok(out)).await.is_err() { return; }
                    }
                    return;
                }
            }
            changed = members.changed() => {
                if changed.is_err() { return; }
            }
            _ = tx.closed() => return,
        }
    }
}

/// One node's part of a followed stream: waits until the node is connected, follows its flows after T0 (or
/// after the last one it sent), and on failure announces the node unavailable (once per outage), waits for the
/// pool to offer a new connection (or re-checks the same one every second) and resumes, announcing the node
/// again. Ends when the node's stream passes `until`, or when cancelled.
async fn follow_node(
    peer: Arc<Peer>,
    req: GetFlowsRequest,
    t0: TimeNs,
    out: mpsc::Sender<Item>,
    stop: CancellationToken,
) {
    let mut state = peer.subscribe();
    let mut last = t0;
    let mut down = false;
    let mut used_generation = 0u64;
    let mut retry_at: Option<Instant> = None;
    loop {
        let channel = loop {
            let cur = state.borrow_and_update().clone();
            if let Some((ch, generation)) = cur.channel()
                && (generation > used_generation || retry_at.is_none_or(|t| Instant::now() >= t))
            {
                used_generation = generation;
                break ch;
            }
            tokio::select! {
                r = state.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.cancelled() => return,
            }
        };
        let mut client = ObserverClient::new(channel);
        let result: Result<(), Status> = async {
            let mut s = tokio::select! {
                r = client.get_flows(live_request(&req, last)) => r?.into_inner(),
                _ = stop.cancelled() => return Ok(()),
            };
            if std::mem::take(&mut down) {
                let ev = node_status(
                    NodeState::NodeConnected,
                    vec![peer.name()],
                    "node reconnected; its flows resume".into(),
                );
                if out.send(Item::Status(ev)).await.is_err() {
                    return Ok(());
                }
            }
            loop {
                let msg = tokio::select! {
                    m = s.message() => m?,
                    _ = stop.cancelled() => return Ok(()),
                };
                let Some(r) = msg else {
                    // Past `until`: done. Otherwise the node went away cleanly (a restart): like a failure.
                    return if req.until.is_some() {
                        Ok(())
                    } else {
                        Err(Status::unavailable("the node ended the stream"))
                    };
                };
                if matches!(r.response_types, Some(ResponseTypes::Flow(_))) {
                    last = last.max(flow_time(&r));
                    if out.send(Item::Flow(r)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        .await;
        let Err(e) = result else { return };
        peer.report_failure();
        retry_at = Some(Instant::now() + Duration::from_secs(1));
        if !down {
            down = true;
            let ev = node_status(
                NodeState::NodeUnavailable,
                vec![peer.name()],
                format!(
                    "lost the flow stream of {}: {}; flows from the other nodes continue",
                    peer.spec.address,
                    e.message()
                ),
            );
            if out.send(Item::Status(ev)).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        })
    }

    #[test]
    fn a_followed_request_splits_at_t0_without_gap_or_overlap() {
        let t0 = 100_000_000_000;
        let req = GetFlowsRequest {
            number: 20,
            follow: true,
            ..Default::default()
        };
        let h = history_request(&req, Some(t0));
        assert!(!h.follow);
        assert_eq!(h.number, 20);
        assert_eq!(h.until, at(100));
        let l = live_request(&req, t0);
        assert!(l.follow && l.number == 0);
        assert_eq!(ns(l.since.as_ref().unwrap()), t0 + 1);
        // The client's own window is kept where it is narrower.
        let req = GetFlowsRequest {
            follow: true,
            since: at(150),
            until: at(90),
            ..Default::default()
        };
        assert_eq!(history_request(&req, Some(t0)).until, at(90));
        assert_eq!(live_request(&req, t0).since, at(150));
        // A resumed node starts after the last flow it sent.
        assert_eq!(
            ns(live_request(&req, 200_000_000_000).since.as_ref().unwrap()),
            200_000_000_001
        );
    }

    #[test]
    fn history_only_when_asked() {
        let follow = |number, since| GetFlowsRequest {
            follow: true,
            number,
            since,
            ..Default::default()
        };
        assert!(!wants_history(&follow(0, None)));
        assert!(wants_history(&follow(5, None)));
        assert!(wants_history(&follow(0, at(1))));
        assert!(wants_history(&GetFlowsRequest::default()));
    }

    #[test]
    fn timestamps_round_trip() {
        for n in [
            0i128,
            1,
            999_999_999,
            1_000_000_000,
            1_765_000_000_123_456_789,
        ] {
            assert_eq!(ns(&ts(n)), n);
        }
    }
}
