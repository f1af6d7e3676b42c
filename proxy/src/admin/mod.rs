//! The daemon's admin socket (`--admin-socket`, a Unix socket, mode 0600) and what it answers: status, endpoints,
//! effective policy, policy traces against the live snapshot, and the pinned eBPF maps. `tollgate status`,
//! `endpoint`, `policy get|trace` and `bpf list` (`operator_cli`) are its clients.
//!
//! Owns: the wire format ([`protocol`]), the pure answers ([`handlers`], over a [`handlers::DaemonView`]), the
//! bounded server ([`server`]) and the client side ([`client`]). [`LiveDaemon`] is the view of the running daemon.

pub mod client;
pub mod handlers;
pub mod protocol;
pub mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{RedirectMode, RunArgs};
use crate::flow::FlowLog;
use crate::policy_source::{PolicySnapshot, PolicyStore, ReloadError};
use protocol::{FlowStatus, Listener, TunnelStatus};

/// Where the CLI looks when `--admin-socket` is not given (the daemon's default: beside the handoff socket).
pub const DEFAULT_SOCKET: &str = "/run/tollgate/admin.sock";

/// The admin socket path `tollgate run` serves: `--admin-socket`, else `admin.sock` beside `--handoff-socket`.
pub fn socket_path(args: &RunArgs) -> PathBuf {
    args.admin_socket
        .clone()
        .unwrap_or_else(|| args.handoff_socket.with_file_name("admin.sock"))
}

/// The running daemon as the admin handlers see it.
#[derive(Debug)]
pub struct LiveDaemon {
    pub policy: Arc<PolicyStore>,
    pub flows: Arc<FlowLog>,
    pub mesh: Option<Arc<crate::mesh::Mesh>>,
    pub redirect: RedirectMode,
    /// `--bpf-pin-root` with `--redirect ebpf`.
    pub pin_root: Option<PathBuf>,
    pub proxy_cgroup: Option<PathBuf>,
    pub node: Option<String>,
    pub listeners: Vec<Listener>,
}

impl LiveDaemon {
    pub fn new(
        args: &RunArgs,
        policy: Arc<PolicyStore>,
        flows: Arc<FlowLog>,
        mesh: Option<Arc<crate::mesh::Mesh>>,
        proxy_cgroup: Option<PathBuf>,
    ) -> Self {
        let ebpf = args.redirect == RedirectMode::Ebpf;
        LiveDaemon {
            policy,
            flows,
            mesh,
            redirect: args.redirect,
            pin_root: ebpf.then(|| args.bpf_pin_root.clone()),
            proxy_cgroup,
            node: args.kube.node_name.clone(),
            listeners: listeners(args),
        }
    }
}

fn listeners(args: &RunArgs) -> Vec<Listener> {
    let l = |name: &str, address: String| Listener {
        name: name.into(),
        address,
    };
    let ebpf = args.redirect == RedirectMode::Ebpf;
    let mut out = vec![l("proxy (HTTP, gRPC, Kafka)", args.listen.to_string())];
    if ebpf && args.tproxy_port != 0 {
        out.push(l(
            "TC ingress (transparent)",
            std::net::SocketAddr::new(args.listen.ip(), args.tproxy_port).to_string(),
        ));
    }
    if args.dns.dns_port != 0 && (ebpf || args.dns.dns_upstream.is_some()) {
        let ip = if ebpf {
            std::net::IpAddr::V4(args.proxy_address)
        } else {
            args.listen.ip()
        };
        out.push(l(
            "DNS proxy (UDP+TCP)",
            std::net::SocketAddr::new(ip, args.dns.dns_port).to_string(),
        ));
    }
    out.push(l("Observer gRPC", args.observer_listen.to_string()));
    out.push(l("metrics/health", args.metrics_listen.to_string()));
    if let Some(t) = args.mesh.tunnel_listen {
        out.push(l("mTLS tunnel", t.to_string()));
    }
    out.push(l("admin socket", socket_path(args).display().to_string()));
    out.push(l(
        "handoff socket",
        args.handoff_socket.display().to_string(),
    ));
    out
}

impl handlers::DaemonView for LiveDaemon {
    fn snapshot(&self) -> Arc<PolicySnapshot> {
        self.policy.current()
    }
    fn rejected_updates(&self) -> u64 {
        self.policy.rejected_updates()
    }
    fn last_reload_error(&self) -> Option<ReloadError> {
        self.policy.last_error()
    }
    fn redirect_mode(&self) -> String {
        match self.redirect {
            RedirectMode::Tproxy => "tproxy",
            RedirectMode::SoOriginalDst => "so-original-dst",
            RedirectMode::Ebpf => "ebpf",
        }
        .into()
    }
    fn node(&self) -> Option<String> {
        self.node.clone()
    }
    fn listeners(&self) -> Vec<Listener> {
        self.listeners.clone()
    }
    fn datapath(&self) -> Option<(String, Result<redirect_ebpf::inspect::Inspection, String>)> {
        let root = self.pin_root.as_ref()?;
        Some((
            root.display().to_string(),
            redirect_ebpf::inspect::inspect(root).map_err(|e| e.to_string()),
        ))
    }
    fn cgroup_id(&self, path: &str) -> Option<u64> {
        cgroup_inode(Path::new(path))
    }
    fn proxy_cgroup(&self) -> Option<(u64, String)> {
        let p = self.proxy_cgroup.as_ref()?;
        Some((cgroup_inode(p)?, p.display().to_string()))
    }
    fn tunnel(&self) -> Option<TunnelStatus> {
        let mesh = self.mesh.as_ref()?;
        let not_after = mesh.node_svid().ok().map(|s| s.svid().not_after());
        Some(TunnelStatus {
            node: mesh.node_name.clone(),
            node_id: mesh.node_id.to_string(),
            svid_expiry: not_after.map(crate::flow::rfc3339),
            svid_expires_in_secs: not_after.map(|t| match t.duration_since(SystemTime::now()) {
                Ok(left) => left.as_secs() as i64,
                Err(past) => -(past.duration().as_secs() as i64),
            }),
            peers: mesh
                .nodes
                .iter()
                .filter(|(name, _)| **name != mesh.node_name)
                .map(|(name, addr)| Listener {
                    name: name.clone(),
                    address: addr.to_string(),
                })
                .collect(),
        })
    }
    fn flows(&self) -> FlowStatus {
        use std::sync::atomic::Ordering::Relaxed;
        FlowStatus {
            ring_capacity: self.flows.capacity(),
            ring_len: self.flows.len(),
            seen: self.flows.counters.seen.load(Relaxed),
            lost: self.flows.counters.lost.load(Relaxed),
        }
    }
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A cgroup v2 id is the inode number of its directory.
fn cgroup_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Binds the admin socket and serves it until `shutdown`.
pub fn start(
    args: &RunArgs,
    daemon: LiveDaemon,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let path = socket_path(args);
    let listener = server::bind(&path).with_context(|| {
        format!(
            "binding the admin socket {} (--admin-socket): is its directory writable by this user?",
            path.display()
        )
    })?;
    tracing::info!(path = %path.display(), "admin socket ready");
    tokio::spawn(server::serve(
        listener,
        path,
        Arc::new(daemon),
        server::AdminLimits::default(),
        shutdown,
    ));
    Ok(())
}
