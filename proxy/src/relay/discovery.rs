//! Which nodes the relay reads: a static list (`--peer`), a peers file re-read when it changes (`--peers-file`),
//! and in Kubernetes the tollgate DaemonSet's pods found by label selector (`--kubernetes-selector`), each a
//! running pod with an IP, named after its node. Every source publishes its full current list; the relay's pool
//! reconciles to the union.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::peers::PeerSpec;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerParseError {
    #[error(
        "{origin}: {entry:?} is not a peer; write host:port or name=host:port (e.g. node-a=10.0.0.5:4245)"
    )]
    Malformed { origin: String, entry: String },
}

/// Parses one peer: `host:port` (named after its address) or `name=host:port`.
pub fn parse_peer(origin: &str, entry: &str) -> Result<PeerSpec, PeerParseError> {
    let bad = || PeerParseError::Malformed {
        origin: origin.to_string(),
        entry: entry.to_string(),
    };
    let entry = entry.trim();
    let (name, address) = match entry.split_once('=') {
        Some((n, a)) => (n.trim(), a.trim()),
        None => (entry, entry),
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    if name.is_empty() || host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(PeerSpec {
        name: name.to_string(),
        address: address.to_string(),
    })
}

/// Parses a peers file: one peer per line as [`parse_peer`] reads it; blank lines and `#` comments ignored.
pub fn parse_peers_file(path: &Path, text: &str) -> Result<Vec<PeerSpec>, PeerParseError> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i, l.split('#').next().unwrap_or("").trim()))
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| parse_peer(&format!("{}:{}", path.display(), i + 1), l))
        .collect()
}

/// The union of every source's list, one entry per address (the first name wins), sorted.
pub fn union(lists: &[Vec<PeerSpec>]) -> Vec<PeerSpec> {
    let mut by_addr: BTreeMap<&str, &PeerSpec> = BTreeMap::new();
    for spec in lists.iter().flatten() {
        by_addr.entry(&spec.address).or_insert(spec);
    }
    let mut out: Vec<PeerSpec> = by_addr.into_values().cloned().collect();
    out.sort();
    out
}

/// Watches a peers file: publishes its list now (an unreadable or malformed file at start is an error) and after
/// every change; a bad edit later is logged and the previous list stays.
pub fn watch_file(
    path: PathBuf,
    every: Duration,
    shutdown: CancellationToken,
) -> Result<watch::Receiver<Vec<PeerSpec>>, anyhow::Error> {
    let read = |p: &Path| -> anyhow::Result<Vec<PeerSpec>> {
        let text = std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("--peers-file {}: cannot read it: {e}", p.display()))?;
        Ok(parse_peers_file(p, &text)?)
    };
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    };
    let (tx, rx) = watch::channel(read(&path)?);
    let mut seen = stamp(&path);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => return,
            }
            let now = stamp(&path);
            if now == seen {
                continue;
            }
            seen = now;
            match read(&path) {
                Ok(list) => {
                    tracing::info!(file = %path.display(), peers = list.len(), "relay: peers file changed");
                    tx.send_replace(list);
                }
                Err(e) => tracing::warn!("{e:#}; keeping the previous peer list"),
            }
        }
    });
    Ok(rx)
}

/// Where to find the DaemonSet's pods.
#[derive(Debug, Clone)]
pub struct PodSelector {
    pub namespace: String,
    pub labels: String,
    /// The Observer port on each pod.
    pub port: u16,
}

/// A tollgate pod as a peer: running, with an IP, not being deleted; named after its node.
pub fn peer_of_pod(pod: &Pod, port: u16) -> Option<PeerSpec> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .or_else(|| pod.metadata.name.clone())?;
    let address = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    Some(PeerSpec { name, address })
}

/// Watches the selected pods (kube-rs watcher: list + watch, re-list after errors, retried with backoff) and
/// publishes the peers after each change. The first list is awaited by callers through the receiver.
pub fn watch_pods(
    client: kube::Client,
    sel: PodSelector,
    shutdown: CancellationToken,
) -> watch::Receiver<Vec<PeerSpec>> {
    let (tx, rx) = watch::channel(Vec::new());
    tokio::spawn(async move {
        let api: kube::Api<Pod> = kube::Api::namespaced(client, &sel.namespace);
        let config = watcher::Config::default().labels(&sel.labels);
        let stream = kube::runtime::WatchStreamExt::default_backoff(watcher::watcher(api, config));
        futures::pin_mut!(stream);
        let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
        let mut relist: Option<BTreeMap<String, Pod>> = None;
        loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                _ = shutdown.cancelled() => return,
            };
            let Some(ev) = ev else { return };
            let key = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
            match ev {
                Ok(Event::Init) => relist = Some(BTreeMap::new()),
                Ok(Event::InitApply(p)) => {
                    relist.get_or_insert_with(BTreeMap::new).insert(key(&p), p);
                }
                Ok(Event::InitDone) => pods = relist.take().unwrap_or_default(),
                Ok(Event::Apply(p)) => {
                    pods.insert(key(&p), p);
                }
                Ok(Event::Delete(p)) => {
                    pods.remove(&key(&p));
                }
                Err(e) => {
                    tracing::warn!(namespace = %sel.namespace, selector = %sel.labels, "relay: watching tollgate pods: {e}; retrying");
                    continue;
                }
            }
            if relist.is_some() {
                continue;
            }
            let peers = union(&[pods
                .values()
                .filter_map(|p| peer_of_pod(p, sel.port))
                .collect()]);
            tx.send_if_modified(|cur| {
                let changed = *cur != peers;
                *cur = peers;
                changed
            });
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, address: &str) -> PeerSpec {
        PeerSpec {
            name: name.into(),
            address: address.into(),
        }
    }

    #[test]
    fn peers_parse_with_or_without_a_name() {
        assert_eq!(
            parse_peer("--peer", "10.0.0.5:4245"),
            Ok(spec("10.0.0.5:4245", "10.0.0.5:4245"))
        );
        assert_eq!(
            parse_peer("--peer", " a = node-a.svc:4245 "),
            Ok(spec("a", "node-a.svc:4245"))
        );
        assert_eq!(
            parse_peer("--peer", "[fd00::1]:4245"),
            Ok(spec("[fd00::1]:4245", "[fd00::1]:4245"))
        );
        for bad in ["10.0.0.5", "a=", "=1.2.3.4:1", "x:0", "x:port", ":80"] {
            let e = parse_peer("--peer", bad).unwrap_err();
            assert!(
                e.to_string().contains("host:port or name=host:port"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn peers_file_skips_comments_and_names_the_bad_line() {
        let p = Path::new("/etc/peers");
        let list = parse_peers_file(p, "# nodes\na=1.1.1.1:4245\n\n1.1.1.2:4245 # b\n").unwrap();
        assert_eq!(
            list,
            [
                spec("a", "1.1.1.1:4245"),
                spec("1.1.1.2:4245", "1.1.1.2:4245")
            ]
        );
        let e = parse_peers_file(p, "a=1.1.1.1:4245\nnonsense\n").unwrap_err();
        assert!(
            e.to_string().starts_with("/etc/peers:2: \"nonsense\""),
            "{e}"
        );
    }

    #[test]
    fn union_keeps_one_entry_per_address() {
        let u = union(&[
            vec![spec("a", "1.1.1.1:1"), spec("b", "1.1.1.2:1")],
            vec![spec("a-again", "1.1.1.1:1"), spec("c", "1.1.1.3:1")],
        ]);
        assert_eq!(
            u,
            [
                spec("a", "1.1.1.1:1"),
                spec("b", "1.1.1.2:1"),
                spec("c", "1.1.1.3:1")
            ]
        );
    }

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn only_running_pods_with_an_ip_are_peers_named_after_their_node() {
        let running = pod(serde_json::json!({
            "metadata": {"name": "tollgate-x7k2p", "namespace": "kube-system"},
            "spec": {"nodeName": "worker-1", "containers": []},
            "status": {"phase": "Running", "podIP": "10.244.1.7"}
        }));
        assert_eq!(
            peer_of_pod(&running, 4245),
            Some(spec("worker-1", "10.244.1.7:4245"))
        );
        let pending = pod(serde_json::json!({
            "metadata": {"name": "tollgate-abcde"},
            "spec": {"nodeName": "worker-2", "containers": []},
            "status": {"phase": "Pending"}
        }));
        assert_eq!(peer_of_pod(&pending, 4245), None);
        let deleting = pod(serde_json::json!({
            "metadata": {"name": "tollgate-q", "deletionTimestamp": "2026-12-06T00:00:00Z"},
            "spec": {"nodeName": "worker-3", "containers": []},
            "status": {"phase": "Running", "podIP": "10.244.3.2"}
        }));
        assert_eq!(peer_of_pod(&deleting, 4245), None);
        let v6 = pod(serde_json::json!({
            "metadata": {"name": "tollgate-v6"},
            "spec": {"nodeName": "worker-4", "containers": []},
            "status": {"phase": "Running", "podIP": "fd00::7"}
        }));
        assert_eq!(
            peer_of_pod(&v6, 4245),
            Some(spec("worker-4", "[fd00::7]:4245"))
        );
    }
}
