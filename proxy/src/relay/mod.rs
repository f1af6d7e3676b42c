//! `tollgate relay`: the cluster-wide Observer, with Hubble relay's semantics. It discovers every node's tollgate
//! (`discovery`: static list, peers file, or the DaemonSet's pods through kube-rs), keeps one connection per
//! node with jittered capped backoff (`peers`), and serves `observer.Observer` over all of them (`service`):
//! `GetFlows` pushed down to the nodes and merged in time order through a bounded sort buffer (`merge`),
//! `GetNodes` and `ServerStatus` added up, `node_status` events when nodes leave or rejoin a stream, plus
//! `grpc.health.v1.Health`. Node connections use mTLS with SPIFFE SVIDs (`hubble_server::tls`, shared with the
//! node's Observer API); the relay's own listener may too.

pub mod discovery;
pub mod merge;
pub mod peers;
pub mod service;
pub mod ui_feed;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::hubble::observer::observer_server::ObserverServer;
use crate::hubble_server::{self, tls};
use peers::{Backoff, Dialer, PeerPool, PeerSpec};
use service::{MergeConfig, RelayService};

/// `tollgate relay` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// Where the relay serves the Observer API (`hubble observe --server ADDR`).
    #[arg(long, default_value = "0.0.0.0:4245", env = "TOLLGATE_RELAY_LISTEN")]
    pub listen: SocketAddr,
    /// A node's Observer, `host:port` or `name=host:port` (repeat for every node).
    #[arg(long = "peer")]
    pub peers: Vec<String>,
    /// A file of peers, one `host:port` or `name=host:port` per line (`#` comments); re-read when it changes.
    #[arg(long)]
    pub peers_file: Option<PathBuf>,
    /// How often the peers file is checked for changes.
    #[arg(long, default_value_t = 1.0)]
    pub peers_file_reload_secs: f64,
    /// Discover nodes as the tollgate DaemonSet's pods (in-cluster config or $KUBECONFIG).
    #[arg(long)]
    pub kubernetes: bool,
    /// Namespace of the DaemonSet's pods.
    #[arg(long, default_value = "kube-system", env = "POD_NAMESPACE")]
    pub kubernetes_namespace: String,
    /// Label selector of the DaemonSet's pods.
    #[arg(long, default_value = "app.kubernetes.io/name=tollgate")]
    pub kubernetes_selector: String,
    /// The Observer port on each pod.
    #[arg(long, default_value_t = 4245)]
    pub kubernetes_port: u16,
    /// mTLS to the nodes: the relay's SVID directory (svid.pem, svid.key, bundle.pem; `tollgate certs issue`),
    /// re-read on change. Without it the relay connects in plain text.
    #[arg(long)]
    pub peer_tls_svid_dir: Option<PathBuf>,
    /// SPIFFE IDs the nodes may present (repeat); default: any ID of the relay SVID's trust domain.
    #[arg(long = "peer-tls-server-id")]
    pub peer_tls_server_ids: Vec<String>,
    /// mTLS on the relay's own listener with this SVID directory; clients must present an SVID too.
    #[arg(long)]
    pub tls_svid_dir: Option<PathBuf>,
    /// SPIFFE IDs clients of the relay may present (repeat); default: any ID of the trust domain.
    #[arg(long = "tls-client-id")]
    pub tls_client_ids: Vec<String>,
    /// Flows held to put several nodes' streams in time order (Hubble relay's --sort-buffer-len-max).
    #[arg(long, default_value_t = 1000)]
    pub sort_buffer_len_max: usize,
    /// A held flow is sent after this long even if the buffer is not full (--sort-buffer-drain-timeout).
    #[arg(long, default_value_t = 1000)]
    pub sort_buffer_drain_timeout_ms: u64,
    /// Connecting to a node gives up after this long.
    #[arg(long, default_value_t = 5.0)]
    pub dial_timeout_secs: f64,
    /// A connected node is re-checked this often.
    #[arg(long, default_value_t = 2.0)]
    pub probe_interval_secs: f64,
    /// Reconnect delays double from 0.2 s up to this (each drawn in [half, full]).
    #[arg(long, default_value_t = 10.0)]
    pub retry_max_secs: f64,
    /// Serve the web UI over every node's flows on this address (as `tollgate run --ui-listen` does for one
    /// node). Off by default; read-only but shows every flow: keep it on loopback or behind a proxy.
    #[arg(long, env = "TOLLGATE_RELAY_UI_LISTEN")]
    pub ui_listen: Option<SocketAddr>,
}

fn secs(s: f64, min: f64) -> Duration {
    Duration::from_secs_f64(if s.is_finite() { s.max(min) } else { min })
}

/// Runs the relay until SIGINT/SIGTERM.
pub async fn run(args: RelayArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let statics: Vec<PeerSpec> = args
        .peers
        .iter()
        .map(|p| discovery::parse_peer("--peer", p))
        .collect::<Result<_, _>>()?;
    let sources = discovery_sources(&args, &shutdown).await?;
    if statics.is_empty() && sources.is_empty() {
        anyhow::bail!(
            "no nodes to relay: pass --peer host:port (repeat), --peers-file FILE or --kubernetes"
        );
    }
    let peer_tls = tls::Identity::load_if_given(
        "--peer-tls-svid-dir",
        args.peer_tls_svid_dir.as_deref(),
        &args.peer_tls_server_ids,
        "--peer-tls-server-id",
    )?;
    let server_name =
        (!args.peer_tls_server_ids.is_empty()).then(|| args.peer_tls_server_ids.join(","));
    let pool = PeerPool::new(peer_dialer(&args, peer_tls.as_ref())?, server_name);
    tokio::spawn(follow_discovery(
        pool.clone(),
        statics,
        sources,
        shutdown.clone(),
    ));
    let svc = Arc::new(RelayService::new(
        pool.clone(),
        MergeConfig {
            buffer_len: args.sort_buffer_len_max,
            max_wait: Duration::from_millis(args.sort_buffer_drain_timeout_ms),
        },
    ));
    if let Some(addr) = args.ui_listen {
        ui_feed::start(addr, svc.clone(), shutdown.clone())
            .await
            .with_context(|| format!("relay: web UI on {addr} (--ui-listen)"))?;
    }
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let served = serve(&args, svc, peer_tls.is_some(), &shutdown).await;
    pool.stop();
    served
}

/// The peers file and the DaemonSet's pods, as configured: each a stream of the node list it currently names.
async fn discovery_sources(
    args: &RelayArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<tokio::sync::watch::Receiver<Vec<PeerSpec>>>> {
    let mut sources = Vec::new();
    if let Some(path) = &args.peers_file {
        sources.push(discovery::watch_file(
            path.clone(),
            secs(args.peers_file_reload_secs, 0.05),
            shutdown.clone(),
        )?);
    }
    if args.kubernetes {
        let config = kube::Config::infer().await.context(
            "--kubernetes: no in-cluster service account and no usable $KUBECONFIG; run the relay in the cluster or set KUBECONFIG",
        )?;
        let client = crate::kubernetes::api::client(config, "relay")?;
        sources.push(discovery::watch_pods(
            client,
            discovery::PodSelector {
                namespace: args.kubernetes_namespace.clone(),
                labels: args.kubernetes_selector.clone(),
                port: args.kubernetes_port,
            },
            shutdown.clone(),
        ));
    }
    Ok(sources)
}

/// How the relay reaches each node: timeouts, probes, backoff and the optional mTLS client identity.
fn peer_dialer(args: &RelayArgs, peer_tls: Option<&tls::Identity>) -> anyhow::Result<Dialer> {
    Ok(Dialer {
        tls: peer_tls.map(|i| i.connector()).transpose()?,
        connect_timeout: secs(args.dial_timeout_secs, 0.1),
        probe_every: secs(args.probe_interval_secs, 0.1),
        backoff: Backoff {
            first: Duration::from_millis(200),
            max: secs(args.retry_max_secs, 0.2),
        },
    })
}

/// Serves the merged Observer API (and health) on `--listen`, over mTLS when `--tls-svid-dir` is set, until
/// `shutdown`.
async fn serve(
    args: &RelayArgs,
    svc: Arc<RelayService>,
    peer_tls: bool,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "relay: cannot listen on {}; pick a free address with --listen",
                args.listen
            )
        })?;
    let own_tls = tls::Identity::load_if_given(
        "--tls-svid-dir",
        args.tls_svid_dir.as_deref(),
        &args.tls_client_ids,
        "--tls-client-id",
    )?;
    tracing::info!(listen = %args.listen, tls = own_tls.is_some(), peer_tls, "tollgate relay ready");
    let router = tonic::transport::Server::builder()
        .add_service(hubble_server::health())
        .add_service(ObserverServer::from_arc(svc));
    let acceptor = own_tls.as_ref().map(tls::Identity::acceptor).transpose()?;
    let served = hubble_server::serve(
        router,
        listener,
        acceptor,
        "relay listener",
        shutdown.clone(),
    )
    .await;
    served.context("relay server")
}

/// Keeps the pool equal to the union of the static peers and every discovery source, until `shutdown`.
pub async fn follow_discovery(
    pool: std::sync::Arc<PeerPool>,
    statics: Vec<PeerSpec>,
    mut sources: Vec<tokio::sync::watch::Receiver<Vec<PeerSpec>>>,
    shutdown: CancellationToken,
) {
    loop {
        let mut lists = vec![statics.clone()];
        lists.extend(sources.iter_mut().map(|s| s.borrow_and_update().clone()));
        pool.reconcile(&discovery::union(&lists));
        if sources.is_empty() {
            shutdown.cancelled().await;
            return;
        }
        let changed =
            futures::future::select_all(sources.iter_mut().map(|s| Box::pin(s.changed())));
        tokio::select! {
            (r, _, _) = changed => if r.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("relay: stopping");
    shutdown.cancel();
}
