//! Mutual authentication between node proxies (issue 7): where a destination pod runs, which X.509-SVID a local
//! workload's connections carry, who a tunnelled peer is, and what the tunnel listener does with its streams.
//!
//! A connection from a local pod to a pod of another node (the endpoint's `node`, located by `--nodes`) leaves
//! through [`crate::tunnel::TunnelClient`] as an HTTP/2 CONNECT stream inside mTLS, authenticated with the SOURCE
//! workload's SVID (`spiffe://<td>/ns/<ns>/sa/<sa>`), to the destination node's proxy, which must prove the node
//! proxies' own ID (`--node-spiffe-id`). The destination maps the proven ID back to an identity ([`tunnel_source`]),
//! runs the same connection pipeline as for local traffic with that identity (ingress L7 policy included), and
//! forwards to the local pod. Rules with `authentication.mode: required` are satisfied only this way.
//!
//! The decisions here (`route`, `tunnel_source`, `workload_id`) are pure and tested without sockets; `Mesh`
//! holds the SVID stores and carries them out.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certs::{AllowedIds, DevCa, PeerRejection, SpiffeId, SvidStore, TrustDomain};
use policy_model::{EndpointTable, Identity};

use crate::decision::{Auth, Downstream};
use crate::flow::{DropReason, FlowEndpoint, FlowRecord};
use crate::flow_record::{FlowBuilder, FlowOutcome};
use crate::upstream::{TunnelDialer, UpstreamStream};

/// The ID node proxies present when `--node-spiffe-id` is not given: the DaemonSet's service account.
pub const DEFAULT_NODE_SERVICE_ACCOUNT: (&str, &str) = ("kube-system", "tollgate");

/// `tollgate run` flags of the node-to-node tunnel.
#[derive(Debug, Clone, clap::Args)]
pub struct MeshArgs {
    /// Where this node's mTLS tunnel listens for other node proxies (e.g. `<node-ip>:15008`, the HBONE port).
    /// Unset: no tunnel; connections to pods of other nodes go direct, and rules requiring authentication refuse
    /// them. Needs --node-name, --nodes and --svid-source.
    #[arg(long, env = "TOLLGATE_TUNNEL_LISTEN")]
    pub tunnel_listen: Option<SocketAddr>,
    /// YAML file `nodes: [{name: node-a, tunnel: "10.0.0.1:15008"}, ...]`: where each node's tunnel listens.
    /// Endpoints name their node with `node:`.
    #[arg(long, env = "TOLLGATE_NODES")]
    pub nodes: Option<PathBuf>,
    /// Where SVIDs come from: `dev-ca:DIR` (a `tollgate certs ca` directory: the proxy issues its own and its
    /// workloads' SVIDs and renews them at half-life) or `files:DIR` (`DIR/node/` for the proxy and
    /// `DIR/<namespace>/<service-account>/` per workload, each with svid.pem, svid.key, bundle.pem; re-read when
    /// they change, e.g. by a SPIRE agent helper or cert-manager).
    #[arg(long, env = "TOLLGATE_SVID_SOURCE", value_parser = parse_svid_source)]
    pub svid_source: Option<SvidSourceArg>,
    /// The trust domain of this cluster's workloads.
    #[arg(long, default_value = "cluster.local", env = "TOLLGATE_TRUST_DOMAIN")]
    pub trust_domain: String,
    /// The SPIFFE ID every node proxy presents (default `spiffe://<trust-domain>/ns/kube-system/sa/tollgate`).
    #[arg(long, env = "TOLLGATE_NODE_SPIFFE_ID")]
    pub node_spiffe_id: Option<String>,
    /// Lifetime of the SVIDs issued in `dev-ca:` mode; each is renewed at half-life.
    #[arg(long, default_value_t = 3600.0)]
    pub svid_ttl_secs: f64,
}

/// A parsed `--svid-source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SvidSourceArg {
    DevCa(PathBuf),
    Files(PathBuf),
}

fn parse_svid_source(s: &str) -> Result<SvidSourceArg, String> {
    match s.split_once(':') {
        Some(("dev-ca", dir)) if !dir.is_empty() => Ok(SvidSourceArg::DevCa(dir.into())),
        Some(("files", dir)) if !dir.is_empty() => Ok(SvidSourceArg::Files(dir.into())),
        _ => Err(format!(
            "`{s}` is not an SVID source; use dev-ca:DIR (a `tollgate certs ca` directory) or files:DIR"
        )),
    }
}

/// Why the mesh could not start or an SVID could not be had; each names the file or ID and the fix.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("--tunnel-listen needs {0}")]
    Missing(&'static str),
    #[error("{what} `{value}` is not valid: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("reading the node list {}: {reason}", path.display())]
    Nodes { path: PathBuf, reason: String },
    #[error("loading the development CA from {}: {source}; create it with `tollgate certs ca --out {}`", dir.display(), dir.display())]
    DevCa {
        dir: PathBuf,
        #[source]
        source: certs::DevCaError,
    },
    #[error("no SVID for {id}: {reason}")]
    Svid { id: SpiffeId, reason: String },
}

#[derive(Debug, serde::Deserialize)]
struct NodesFile {
    nodes: Vec<NodeEntry>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    name: String,
    tunnel: SocketAddr,
}

/// Parses a `--nodes` file: node name -> tunnel address.
pub fn parse_nodes(file: &str, text: &str) -> Result<BTreeMap<String, SocketAddr>, MeshError> {
    let err = |reason: String| MeshError::Nodes {
        path: file.into(),
        reason,
    };
    let parsed: NodesFile = serde_yaml::from_str(text).map_err(|e| err(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (i, n) in parsed.nodes.into_iter().enumerate() {
        if n.name.is_empty() {
            return Err(err(format!("nodes[{i}].name is empty")));
        }
        if out.insert(n.name.clone(), n.tunnel).is_some() {
            return Err(err(format!(
                "nodes[{i}].name: node {} is listed twice",
                n.name
            )));
        }
    }
    Ok(out)
}

/// The SPIFFE ID of a workload: `spiffe://<td>/ns/<namespace>/sa/<service-account>`.
pub fn workload_id(td: &TrustDomain, ep: &policy_model::Endpoint) -> Result<SpiffeId, String> {
    SpiffeId::workload(td, &ep.namespace, ep.service_account())
        .map_err(|e| format!("pod {}/{}: {e}", ep.namespace, ep.name))
}

/// Whether a pod runs on `this_node`: named so, or enrolled here (a cgroup) when the endpoint names no node.
pub fn is_local(ep: &policy_model::Endpoint, this_node: &str) -> bool {
    match &ep.node {
        Some(n) => n == this_node,
        None => ep.cgroup.is_some(),
    }
}

/// How a connection to `dst` leaves this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Straight to the destination (a local pod, or anything that is not a pod of a known other node).
    Direct,
    /// Through the tunnel of `node`, listening at `tunnel`.
    Tunnel { node: String, tunnel: SocketAddr },
}

/// Where a connection to `dst` goes: through the tunnel when `dst` is a pod of another node in `nodes`; for a pod of
/// this node only when the connection must be authenticated (`auth_required`, only asked then: it costs a policy
/// evaluation): it then goes through this node's own tunnel listener, so `authentication.mode: required` means a real mTLS handshake with the source's SVID on one node
/// as across nodes. Other same-node connections stay in-process.
pub fn route(
    endpoints: &EndpointTable,
    this_node: &str,
    nodes: &BTreeMap<String, SocketAddr>,
    dst: IpAddr,
    auth_required: impl FnOnce() -> bool,
) -> Route {
    let Some(node) = endpoints.by_ip(dst).and_then(|e| e.node.as_deref()) else {
        return Route::Direct;
    };
    if node == this_node && !auth_required() {
        return Route::Direct;
    }
    match nodes.get(node) {
        Some(&tunnel) => Route::Tunnel {
            node: node.to_string(),
            tunnel,
        },
        None => Route::Direct,
    }
}

/// Who a tunnelled peer is: the identity of the pods running as the certificate's namespace and service account.
/// `reported` is the source address the remote node proxy sent (`forwarded: for=`); it picks the pod when pods of
/// one service account have different labels, and must belong to that service account. The address alone never
/// decides the identity.
pub fn tunnel_source(
    endpoints: &EndpointTable,
    td: &TrustDomain,
    peer: &SpiffeId,
    reported: Option<SocketAddr>,
) -> Result<(Identity, Option<SocketAddr>), String> {
    if peer.trust_domain() != td {
        return Err(format!(
            "{peer} is not a workload of this cluster's trust domain {}",
            td.as_str()
        ));
    }
    let Some((ns, sa)) = peer.namespace_and_service_account() else {
        return Err(format!(
            "{peer} is not a workload ID (spiffe://<td>/ns/<namespace>/sa/<service-account>)"
        ));
    };
    let matches = |e: &policy_model::Endpoint| e.namespace == ns && e.service_account() == sa;
    if let Some(addr) = reported
        && let Some(ep) = endpoints.by_ip(addr.ip())
    {
        if !matches(ep) {
            return Err(format!(
                "the reported source {} is pod {}/{} (service account {}), not a pod of {peer}",
                addr.ip(),
                ep.namespace,
                ep.name,
                ep.service_account()
            ));
        }
        return Ok((endpoints.identity_of_ip(addr.ip()), Some(addr)));
    }
    let mut identities: Vec<Identity> = endpoints
        .iter_with_identity()
        .filter(|(e, _)| matches(e))
        .map(|(_, id)| id)
        .collect();
    identities.sort();
    identities.dedup();
    match identities.as_slice() {
        [one] => Ok((*one, reported)),
        [] => Err(format!(
            "no known pod runs as service account {sa} in namespace {ns}"
        )),
        _ => Err(format!(
            "pods of {peer} have {} different identities and the source address did not say which",
            identities.len()
        )),
    }
}

/// SVIDs per SPIFFE ID, issued or loaded on first use and kept up to date by their source.
enum SvidProvider {
    DevCa { ca: Arc<DevCa>, ttl: Duration },
    Files { dir: PathBuf },
}

/// The node's tunnel configuration and the SVID stores of the node proxy and of local workloads.
pub struct Mesh {
    pub node_name: String,
    pub trust_domain: TrustDomain,
    /// What every node proxy presents, and what this one requires of the nodes it tunnels to.
    pub node_id: SpiffeId,
    pub nodes: BTreeMap<String, SocketAddr>,
    provider: SvidProvider,
    /// Stores by SPIFFE ID with the task that renews each (dropping the handle stops it).
    stores: Mutex<HashMap<SpiffeId, (Arc<SvidStore>, certs::SourceHandle)>>,
    pub tunnels: crate::tunnel::TunnelClient,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("node_name", &self.node_name)
            .field("node_id", &self.node_id)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// Reads the flags, the node list and the SVID source. Needs a tokio runtime (SVID renewal tasks).
    pub fn start(args: &MeshArgs, node_name: Option<&str>) -> Result<Arc<Mesh>, MeshError> {
        let node_name = node_name.ok_or(MeshError::Missing(
            "--node-name (or NODE_NAME): which node of --nodes this is",
        ))?;
        let nodes_path = args.nodes.as_ref().ok_or(MeshError::Missing(
            "--nodes FILE: where each node's tunnel listens",
        ))?;
        let source = args
            .svid_source
            .as_ref()
            .ok_or(MeshError::Missing("--svid-source dev-ca:DIR or files:DIR"))?;
        let trust_domain =
            TrustDomain::new(&args.trust_domain).map_err(|e| MeshError::Invalid {
                what: "--trust-domain",
                value: args.trust_domain.clone(),
                reason: e.to_string(),
            })?;
        let node_id = match &args.node_spiffe_id {
            Some(s) => SpiffeId::parse(s).map_err(|e| MeshError::Invalid {
                what: "--node-spiffe-id",
                value: s.clone(),
                reason: e.to_string(),
            })?,
            None => SpiffeId::workload(
                &trust_domain,
                DEFAULT_NODE_SERVICE_ACCOUNT.0,
                DEFAULT_NODE_SERVICE_ACCOUNT.1,
            )
            .expect("a valid default"),
        };
        let text = std::fs::read_to_string(nodes_path).map_err(|e| MeshError::Nodes {
            path: nodes_path.clone(),
            reason: e.to_string(),
        })?;
        let nodes = parse_nodes(&nodes_path.display().to_string(), &text)?;
        if !nodes.contains_key(node_name) {
            return Err(MeshError::Nodes {
                path: nodes_path.clone(),
                reason: format!("this node ({node_name}) is not listed"),
            });
        }
        let provider = match source {
            SvidSourceArg::DevCa(dir) => SvidProvider::DevCa {
                ca: Arc::new(DevCa::load(dir).map_err(|source| MeshError::DevCa {
                    dir: dir.clone(),
                    source,
                })?),
                ttl: Duration::from_secs_f64(args.svid_ttl_secs.max(1.0)),
            },
            SvidSourceArg::Files(dir) => SvidProvider::Files { dir: dir.clone() },
        };
        let mesh = Arc::new(Mesh {
            node_name: node_name.to_string(),
            trust_domain,
            node_id,
            nodes,
            provider,
            stores: Mutex::new(HashMap::new()),
            tunnels: crate::tunnel::TunnelClient::default(),
        });
        // Fail at start-up, not at the first connection, when the node's own SVID is missing.
        mesh.svid(&mesh.node_id.clone())?;
        Ok(mesh)
    }

    /// The (renewed) SVID store of `id`, issued or loaded on first use.
    pub fn svid(&self, id: &SpiffeId) -> Result<Arc<SvidStore>, MeshError> {
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((store, _)) = stores.get(id) {
            return Ok(store.clone());
        }
        let started = match &self.provider {
            SvidProvider::DevCa { ca, ttl } => {
                certs::DevCaSource::new(ca.clone(), id.clone(), *ttl).start()
            }
            SvidProvider::Files { dir } => {
                let sub = if *id == self.node_id {
                    dir.join("node")
                } else {
                    match id.namespace_and_service_account() {
                        Some((ns, sa)) => dir.join(ns).join(sa),
                        None => dir.join(id.path().trim_start_matches('/')),
                    }
                };
                certs::FileSource::new(&certs::SvidFiles::in_dir(&sub)).start()
            }
        };
        let (store, handle) = started.map_err(|e| MeshError::Svid {
            id: id.clone(),
            reason: e.to_string(),
        })?;
        if store.svid().spiffe_id() != id {
            return Err(MeshError::Svid {
                id: id.clone(),
                reason: format!(
                    "the SVID found is for {}, not {id}",
                    store.svid().spiffe_id()
                ),
            });
        }
        stores.insert(id.clone(), (store.clone(), handle));
        Ok(store)
    }

    /// The node proxies' own store (server side of the tunnel).
    pub fn node_svid(&self) -> Result<Arc<SvidStore>, MeshError> {
        self.svid(&self.node_id)
    }

    /// Where a connection from `client` to `dst` goes and how the flow records describe it.
    pub fn outbound(
        self: &Arc<Self>,
        endpoints: &EndpointTable,
        client: SocketAddr,
        dst: SocketAddr,
        auth_required: impl FnOnce() -> bool,
    ) -> Result<Option<(Downstream, crate::upstream::Dial)>, String> {
        let Route::Tunnel { node, tunnel } = route(
            endpoints,
            &self.node_name,
            &self.nodes,
            dst.ip(),
            auth_required,
        ) else {
            return Ok(None);
        };
        // Only pods of THIS node get an SVID from us: anything else (a plain connection from another node steered
        // here by TC, the host) must never be authenticated by its address.
        let Some(source) = endpoints
            .by_ip(client.ip())
            .filter(|e| is_local(e, &self.node_name))
        else {
            return Ok(None);
        };
        let source_id = workload_id(&self.trust_domain, source)?;
        let store = self.svid(&source_id).map_err(|e| e.to_string())?;
        let down = Downstream {
            addr: client,
            auth: Auth::Outbound {
                node_id: self.node_id.to_string(),
            },
        };
        let dial = TunnelDial {
            mesh: self.clone(),
            source: store,
            pool_key: format!("{source_id} via {tunnel}"),
            source_id,
            client,
            node,
            tunnel,
        };
        Ok(Some((down, crate::upstream::Dial::Tunnel(Arc::new(dial)))))
    }
}

/// Opens CONNECT streams to one node's proxy as one source workload.
#[derive(Debug)]
struct TunnelDial {
    mesh: Arc<Mesh>,
    source: Arc<SvidStore>,
    source_id: SpiffeId,
    /// Upstream pool key (asked per request): one pool per (source identity, node tunnel).
    pool_key: String,
    client: SocketAddr,
    node: String,
    tunnel: SocketAddr,
}

impl TunnelDialer for TunnelDial {
    fn dial(
        &self,
        dst: SocketAddr,
    ) -> Pin<Box<dyn std::future::Future<Output = std::io::Result<UpstreamStream>> + Send + '_>>
    {
        Box::pin(async move {
            let expected = AllowedIds::ids([self.mesh.node_id.clone()]);
            match self
                .mesh
                .tunnels
                .open(&self.source, self.tunnel, &expected, dst, Some(self.client))
                .await
            {
                Ok(t) => Ok(UpstreamStream::new(t.stream)),
                Err(e) => {
                    tracing::warn!(node = %self.node, %dst, source = %self.source_id, "tunnel: {e}");
                    let kind = match e {
                        crate::tunnel::TunnelError::Refused { .. } => {
                            std::io::ErrorKind::ConnectionRefused
                        }
                        _ => std::io::ErrorKind::Other,
                    };
                    Err(std::io::Error::new(
                        kind,
                        format!("through the tunnel of node {}: {e}", self.node),
                    ))
                }
            }
        })
    }

    fn pool_key(&self) -> String {
        self.pool_key.clone()
    }
}

/// Which client certificates the tunnel listener accepts at the handshake: workload IDs of this trust domain (and
/// the node proxies' ID). Which workload may reach which pod is the policy's call, per CONNECT.
pub fn tunnel_peers(mesh: &Mesh) -> AllowedIds {
    let td = mesh.trust_domain.clone();
    let node = mesh.node_id.clone();
    AllowedIds::predicate(
        format!(
            "workload IDs spiffe://{}/ns/<namespace>/sa/<service-account>",
            td.as_str()
        ),
        move |id| {
            *id == node
                || (id.trust_domain() == &td && id.namespace_and_service_account().is_some())
        },
    )
}

/// The flow record of a refused tunnel handshake: who tried (their node's address and, when the certificate named
/// one, the SPIFFE ID), and the named reason.
pub fn refused_record(
    peer_addr: SocketAddr,
    listen: SocketAddr,
    rejection: Option<&PeerRejection>,
    error: &std::io::Error,
) -> FlowRecord {
    let flow = FlowBuilder::new(
        FlowEndpoint::new(peer_addr, Identity::WORLD.0),
        FlowEndpoint::new(listen, Identity::HOST.0),
        "TCP",
    )
    .tunnel_peer(rejection.and_then(|r| r.peer_id()).map(|id| id.to_string()));
    flow.finish(FlowOutcome::Dropped {
        reason: DropReason::AuthRequired,
        policy: match rejection {
            Some(r) => format!("mTLS tunnel handshake refused ({}): {r}", r.code()),
            None => format!("mTLS tunnel handshake failed: {error}"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Verdict;

    const ENDPOINTS: &str = "endpoints:
  - {name: web-1, namespace: prod, labels: {app: web, io.cilium.k8s.policy.serviceaccount: web}, ip: 10.0.1.10, node: a}
  - {name: web-2, namespace: prod, labels: {app: web, io.cilium.k8s.policy.serviceaccount: web}, ip: 10.0.1.11, node: a}
  - {name: canary, namespace: prod, labels: {app: web, track: canary, io.cilium.k8s.policy.serviceaccount: shared}, ip: 10.0.1.12, node: a}
  - {name: stable, namespace: prod, labels: {app: web, io.cilium.k8s.policy.serviceaccount: shared}, ip: 10.0.1.13, node: a}
  - {name: api, namespace: prod, labels: {app: api}, ip: 10.0.2.20, node: b}
  - {name: lost, namespace: prod, labels: {app: api}, ip: 10.0.3.30, node: c}
  - {name: nowhere, namespace: prod, labels: {app: x}, ip: 10.0.4.40}
";

    fn table() -> EndpointTable {
        EndpointTable::from_yaml("e.yaml", ENDPOINTS).unwrap()
    }

    fn td() -> TrustDomain {
        TrustDomain::new("cluster.local").unwrap()
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn routes_pods_of_other_listed_nodes_through_their_tunnel() {
        let nodes = parse_nodes(
            "nodes.yaml",
            "nodes: [{name: a, tunnel: \"192.168.0.1:15008\"}, {name: b, tunnel: \"192.168.0.2:15008\"}]",
        )
        .unwrap();
        let t = table();
        let r = |ip: &str| route(&t, "a", &nodes, ip.parse().unwrap(), || false);
        assert_eq!(
            r("10.0.2.20"),
            Route::Tunnel {
                node: "b".into(),
                tunnel: "192.168.0.2:15008".parse().unwrap()
            }
        );
        assert_eq!(r("10.0.1.11"), Route::Direct, "same node");
        assert_eq!(
            route(&t, "a", &nodes, "10.0.1.11".parse().unwrap(), || true),
            Route::Tunnel {
                node: "a".into(),
                tunnel: "192.168.0.1:15008".parse().unwrap()
            },
            "same node, authentication required: through our own tunnel"
        );
        assert_eq!(r("10.0.3.30"), Route::Direct, "node c has no tunnel");
        // Only this node's pods are ever given an SVID as a source.
        let ep = |ip: &str| t.by_ip(ip.parse().unwrap()).unwrap().clone();
        assert!(is_local(&ep("10.0.1.10"), "a"));
        assert!(!is_local(&ep("10.0.2.20"), "a"));
        let mut unnamed = ep("10.0.4.40");
        assert!(!is_local(&unnamed, "a"), "no node, not enrolled here");
        unnamed.cgroup = Some("/cg".into());
        assert!(is_local(&unnamed, "a"), "no node, enrolled here");
        assert_eq!(r("10.0.4.40"), Route::Direct, "no node");
        assert_eq!(r("8.8.8.8"), Route::Direct, "not a pod");
    }

    #[test]
    fn node_lists_are_validated() {
        for (text, want) in [
            ("nodes: [{name: a, tunnel: nope}]", "nodes[0].tunnel"),
            (
                "nodes: [{name: a, tunnel: \"1.1.1.1:1\"}, {name: a, tunnel: \"1.1.1.2:1\"}]",
                "listed twice",
            ),
            ("nodes: [{name: a, tunel: \"1.1.1.1:1\"}]", "unknown field"),
        ] {
            let e = parse_nodes("n.yaml", text).unwrap_err().to_string();
            assert!(e.contains("n.yaml") && e.contains(want), "{text}: {e}");
        }
        assert_eq!(
            parse_svid_source("dev-ca:/x"),
            Ok(SvidSourceArg::DevCa("/x".into()))
        );
        assert!(
            parse_svid_source("spire:/x")
                .unwrap_err()
                .contains("dev-ca:DIR")
        );
    }

    #[test]
    fn the_certificate_names_the_source_identity_not_the_address() {
        let t = table();
        let web = t.identity_of_ip("10.0.1.10".parse().unwrap());
        // No address: the service account's pods share one identity.
        assert_eq!(
            tunnel_source(
                &t,
                &td(),
                &id("spiffe://cluster.local/ns/prod/sa/web"),
                None
            ),
            Ok((web, None))
        );
        // A reported address of another service account's pod is refused, whatever the certificate allows.
        let lie: SocketAddr = "10.0.2.20:1234".parse().unwrap();
        let e = tunnel_source(
            &t,
            &td(),
            &id("spiffe://cluster.local/ns/prod/sa/web"),
            Some(lie),
        )
        .unwrap_err();
        assert!(e.contains("not a pod of"), "{e}");
        // An address that is no pod does not matter.
        let node: SocketAddr = "192.168.0.1:1".parse().unwrap();
        assert_eq!(
            tunnel_source(
                &t,
                &td(),
                &id("spiffe://cluster.local/ns/prod/sa/web"),
                Some(node)
            ),
            Ok((web, Some(node)))
        );
        // One service account, two identities: the address picks, and must be one of them.
        let shared = id("spiffe://cluster.local/ns/prod/sa/shared");
        let canary: SocketAddr = "10.0.1.12:5".parse().unwrap();
        assert_eq!(
            tunnel_source(&t, &td(), &shared, Some(canary)),
            Ok((t.identity_of_ip(canary.ip()), Some(canary)))
        );
        assert!(
            tunnel_source(&t, &td(), &shared, None)
                .unwrap_err()
                .contains("different identities")
        );
        for (peer, want) in [
            ("spiffe://other.td/ns/prod/sa/web", "trust domain"),
            ("spiffe://cluster.local/admin", "not a workload ID"),
            ("spiffe://cluster.local/ns/prod/sa/ghost", "no known pod"),
            ("spiffe://cluster.local/ns/dev/sa/web", "no known pod"),
        ] {
            let e = tunnel_source(&t, &td(), &id(peer), None).unwrap_err();
            assert!(e.contains(want), "{peer}: {e}");
        }
    }

    #[test]
    fn workload_ids_come_from_namespace_and_service_account() {
        let t = table();
        let web = t.by_ip("10.0.1.10".parse().unwrap()).unwrap();
        let api = t.by_ip("10.0.2.20".parse().unwrap()).unwrap();
        assert_eq!(
            workload_id(&td(), web).unwrap().to_string(),
            "spiffe://cluster.local/ns/prod/sa/web"
        );
        assert_eq!(
            workload_id(&td(), api).unwrap().to_string(),
            "spiffe://cluster.local/ns/prod/sa/default"
        );
    }

    #[test]
    fn refused_handshakes_name_the_reason_and_the_presented_id() {
        let r = PeerRejection::IdNotAllowed {
            id: id("spiffe://cluster.local/admin"),
            allowed: "workloads".into(),
        };
        let err = std::io::Error::other("x");
        let rec = refused_record(
            "192.168.0.1:5000".parse().unwrap(),
            "192.168.0.2:15008".parse().unwrap(),
            Some(&r),
            &err,
        );
        assert_eq!(rec.verdict, Verdict::Dropped);
        assert_eq!(rec.drop_reason, Some(DropReason::AuthRequired));
        assert_eq!(
            rec.peer_spiffe_id.as_deref(),
            Some("spiffe://cluster.local/admin")
        );
        assert!(rec.policy.contains("ID_NOT_ALLOWED"), "{}", rec.policy);
        let rec = refused_record(
            "192.168.0.1:5000".parse().unwrap(),
            "192.168.0.2:15008".parse().unwrap(),
            Some(&PeerRejection::NoCertificate),
            &err,
        );
        assert_eq!(rec.peer_spiffe_id, None);
        assert!(rec.policy.contains("NO_CERTIFICATE"), "{}", rec.policy);
    }
}
