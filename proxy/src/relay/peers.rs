//! One connection per node: the relay's view of every discovered node's Observer, kept current by a task per
//! node that connects, asks `ServerStatus` and `GetNodes` (name, version, uptime, flow counts) and re-checks
//! every `PROBE_EVERY`; a failure marks the node unavailable and reconnects with jittered, capped exponential
//! backoff. `GetFlows` streams read the pool; they never dial nodes themselves.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::hubble::observer::{
    GetNodesRequest, ServerStatusRequest, ServerStatusResponse, observer_client::ObserverClient,
};

/// Where a node's Observer is: `address` (host:port) is the key; `name` what discovery knows it as.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerSpec {
    pub name: String,
    pub address: String,
}

/// What the relay knows about one node right now.
#[derive(Debug, Clone)]
pub enum Link {
    /// Never reached yet.
    Connecting,
    /// Reachable; `generation` grows with every new connection.
    Connected {
        channel: tonic::transport::Channel,
        generation: u64,
    },
    /// Lost or never reached; `reason` says why.
    Unavailable { reason: String },
}

/// A node's state and its last `ServerStatus`.
#[derive(Debug, Clone)]
pub struct PeerState {
    pub link: Link,
    /// The node's own name (from its `GetNodes`), once known.
    pub node_name: Option<String>,
    pub status: Option<ServerStatusResponse>,
}

impl PeerState {
    pub fn channel(&self) -> Option<(tonic::transport::Channel, u64)> {
        match &self.link {
            Link::Connected {
                channel,
                generation,
            } => Some((channel.clone(), *generation)),
            _ => None,
        }
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.link, Link::Connected { .. })
    }
}

/// One node in the pool.
#[derive(Debug)]
pub struct Peer {
    pub spec: PeerSpec,
    state: watch::Sender<PeerState>,
    /// Wakes the connection task to re-check now (a `GetFlows` stream from this node failed).
    recheck: Notify,
    stop: CancellationToken,
}

impl Peer {
    /// The name flows and `GetNodes` use: the node's own, else discovery's.
    pub fn name(&self) -> String {
        self.state
            .borrow()
            .node_name
            .clone()
            .unwrap_or_else(|| self.spec.name.clone())
    }

    pub fn state(&self) -> PeerState {
        self.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<PeerState> {
        self.state.subscribe()
    }

    /// A stream from this node failed: check the connection now instead of at the next probe.
    pub fn report_failure(&self) {
        self.recheck.notify_one();
    }
}

/// Reconnect delays: doubling from `first` to `max`, each drawn uniformly in [d/2, d] so nodes that failed
/// together do not retry together.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay before attempt `attempt` (0-based), given a random `unit` in [0, 1).
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let base = self
            .first
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.max);
        base.mul_f64(0.5 + unit.clamp(0.0, 1.0) / 2.0)
    }
}

/// How the pool reaches nodes.
#[derive(Clone)]
pub struct Dialer {
    pub tls: Option<TlsConnector>,
    pub connect_timeout: Duration,
    pub probe_every: Duration,
    pub backoff: Backoff,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("tls", &self.tls.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("probe_every", &self.probe_every)
            .field("backoff", &self.backoff)
            .finish()
    }
}

/// Every discovered node, by address.
#[derive(Debug)]
pub struct PeerPool {
    peers: Mutex<BTreeMap<String, Arc<Peer>>>,
    /// Bumped whenever nodes join or leave, so open `GetFlows` streams pick up new nodes.
    members: watch::Sender<u64>,
    dialer: Dialer,
    pub tls_server_name: Option<String>,
}

impl PeerPool {
    pub fn new(dialer: Dialer, tls_server_name: Option<String>) -> Arc<Self> {
        Arc::new(PeerPool {
            peers: Mutex::new(BTreeMap::new()),
            members: watch::Sender::new(0),
            dialer,
            tls_server_name,
        })
    }

    pub fn peers(&self) -> Vec<Arc<Peer>> {
        self.lock().values().cloned().collect()
    }

    pub fn members(&self) -> watch::Receiver<u64> {
        self.members.subscribe()
    }

    pub fn uses_tls(&self) -> bool {
        self.dialer.tls.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Peer>>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the pool match `specs`: new nodes get a connection task, vanished ones are stopped.
    pub fn reconcile(self: &Arc<Self>, specs: &[PeerSpec]) {
        let mut changed = false;
        {
            let mut peers = self.lock();
            peers.retain(|addr, p| {
                let keep = specs
                    .iter()
                    .any(|s| &s.address == addr && s.name == p.spec.name);
                if !keep {
                    tracing::info!(node = %p.name(), address = %addr, "relay: node left discovery");
                    p.stop.cancel();
                    changed = true;
                }
                keep
            });
            for spec in specs {
                if peers.contains_key(&spec.address) {
                    continue;
                }
                tracing::info!(node = %spec.name, address = %spec.address, "relay: node discovered");
                let peer = Arc::new(Peer {
                    spec: spec.clone(),
                    state: watch::Sender::new(PeerState {
                        link: Link::Connecting,
                        node_name: None,
                        status: None,
                    }),
                    recheck: Notify::new(),
                    stop: CancellationToken::new(),
                });
                peers.insert(spec.address.clone(), peer.clone());
                tokio::spawn(maintain(peer, self.dialer.clone()));
                changed = true;
            }
        }
        if changed {
            self.members.send_modify(|g| *g += 1);
        }
    }

    /// Stops every connection task.
    pub fn stop(&self) {
        for p in self.lock().values() {
            p.stop.cancel();
        }
    }
}

/// Asks the node who it is and how it is doing; the connection counts as up only when this answers.
async fn probe(
    channel: &tonic::transport::Channel,
    timeout: Duration,
) -> Result<(ServerStatusResponse, Option<String>), String> {
    let mut client = ObserverClient::new(channel.clone());
    let status = tokio::time::timeout(timeout, client.server_status(ServerStatusRequest {}))
        .await
        .map_err(|_| format!("ServerStatus did not answer within {timeout:?}"))?
        .map_err(|s| format!("ServerStatus: {}", s.message()))?
        .into_inner();
    // A node's own name is in its GetNodes; an older node without it keeps discovery's name.
    let name = match tokio::time::timeout(timeout, client.get_nodes(GetNodesRequest {})).await {
        Ok(Ok(r)) => r.into_inner().nodes.into_iter().next().map(|n| n.name),
        _ => None,
    }
    .filter(|n| !n.is_empty());
    Ok((status, name))
}

/// The connection task of one node: connect, probe, re-probe; on failure mark unavailable and back off.
async fn maintain(peer: Arc<Peer>, dialer: Dialer) {
    let (mut attempt, mut generation) = (0u32, 0u64);
    let mut channel: Option<tonic::transport::Channel> = None;
    loop {
        let result = match &channel {
            Some(c) => probe(c, dialer.connect_timeout).await,
            None => match crate::hubble_server::tls::dial(
                &peer.spec.address,
                dialer.tls.clone(),
                dialer.connect_timeout,
            )
            .await
            {
                Ok(c) => {
                    let r = probe(&c, dialer.connect_timeout).await;
                    if r.is_ok() {
                        generation += 1;
                        channel = Some(c);
                    }
                    r
                }
                Err(e) => Err(format!(
                    "cannot connect to {}: {}",
                    peer.spec.address,
                    crate::error_chain::error_chain(&e)
                )),
            },
        };
        let wait = match result {
            Ok((status, node_name)) => {
                attempt = 0;
                let c = channel.clone().expect("set on success");
                peer.state.send_modify(|s| {
                    if !s.is_connected() {
                        tracing::info!(node = %node_name.as_deref().unwrap_or(&peer.spec.name), address = %peer.spec.address, "relay: node connected");
                    }
                    s.link = Link::Connected {
                        channel: c,
                        generation,
                    };
                    s.status = Some(status);
                    if node_name.is_some() {
                        s.node_name = node_name;
                    }
                });
                dialer.probe_every
            }
            Err(reason) => {
                channel = None;
                peer.state.send_modify(|s| {
                    if !matches!(&s.link, Link::Unavailable { reason: r } if *r == reason) {
                        tracing::warn!(node = %peer.spec.name, address = %peer.spec.address, "relay: node unavailable: {reason}");
                    }
                    s.link = Link::Unavailable { reason };
                });
                let d = dialer.backoff.delay(attempt, jitter());
                attempt = attempt.saturating_add(1);
                d
            }
        };
        let started = Instant::now();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = peer.recheck.notified() => {
                // Re-check soon, but not in a tight loop if a stream keeps failing.
                let floor = Duration::from_millis(50).saturating_sub(started.elapsed());
                tokio::time::sleep(floor).await;
            }
            _ = peer.stop.cancelled() => return,
        }
    }
}

/// A number in [0, 1) good enough for jitter (no crypto): the clock's nanoseconds, mixed.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let x = u64::from(nanos).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    x as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jittered_within_half() {
        let b = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(50));
        assert_eq!(b.delay(3, 0.0), Duration::from_millis(400));
        assert_eq!(
            b.delay(10, 0.0),
            Duration::from_secs(1),
            "capped at max, then halved"
        );
        assert_eq!(b.delay(u32::MAX, 1.0), Duration::from_secs(2));
        for i in 0..1000 {
            let u = jitter();
            assert!((0.0..1.0).contains(&u), "{u}");
            let d = b.delay(i % 8, u);
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_secs(2));
        }
    }
}
