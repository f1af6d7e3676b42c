//! `tollgate run`: assembles the daemon (policy source + watcher, flow log, upstream pool, listener) and runs the
//! accept loop until SIGTERM/SIGINT, then drains: stop accepting, let in-flight requests finish (HTTP connections
//! get a graceful shutdown / GOAWAY) for up to `Limits::shutdown_grace`, then exit.

use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{RedirectMode, RunArgs};
use crate::datapath::{Datapath, DatapathOptions, DatapathPlan};
use crate::flow::FlowLog;
use crate::handoff;
use crate::inputs::Proxy;
use crate::listener;
use crate::original_dst::{OriginalDst, SoOriginalDst, Tproxy};
use crate::policy_source::{PolicyFiles, PolicyStore};
use crate::upstream::UpstreamPool;

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut limits = args.limits()?;
    limits.max_connections = open_file_budget(&args, &limits)?;
    let (policy, _watch, kube_updates) = load_policy(&args).await?;
    let flows = Arc::new(FlowLog::new(args.flow_ring, args.flow_sink())?);
    let datapath = match args.redirect {
        RedirectMode::Ebpf => Some(start_datapath(&args, &policy)?),
        _ => None,
    };
    if let Some(reconciler) = kube_updates {
        tokio::spawn(crate::kubernetes::watch::run_updates(
            reconciler,
            policy.clone(),
        ));
    }
    let original_dst: Arc<dyn OriginalDst> = match (&args.redirect, &datapath) {
        (RedirectMode::Tproxy, _) => Arc::new(Tproxy {
            listen: args.listen,
        }),
        (RedirectMode::SoOriginalDst, _) => Arc::new(SoOriginalDst),
        (RedirectMode::Ebpf, Some(dp)) => Arc::from(dp.original_dst()),
        (RedirectMode::Ebpf, None) => unreachable!("the datapath is started for --redirect ebpf"),
    };
    let shutdown = CancellationToken::new();
    // The DNS sockets are taken over BEFORE the main listener: taking the main listener tells the old process to
    // drain and exit, and its DNS sockets must already be ours by then (queued queries stay queued).
    let dns = start_dns(&args, &policy, &flows, datapath.as_ref(), shutdown.clone())?;
    // The TC transparent listener is taken over before the main one too, for the same reason.
    let tproxy_path = handoff::companion_path(&args.handoff_socket, "tproxy");
    let tproxy_listener = if datapath.is_some() && args.tproxy_port != 0 {
        let addr = std::net::SocketAddr::new(args.listen.ip(), args.tproxy_port);
        Some((addr, take_or_bind(&tproxy_path, addr, true)?, tproxy_path))
    } else {
        None
    };
    // Take over a running tollgate's listening socket if one serves the handoff socket (restart/upgrade without
    // losing a queued connection); otherwise bind afresh.
    let listener = take_or_bind(
        &args.handoff_socket,
        args.listen,
        args.redirect == RedirectMode::Tproxy,
    )?;
    let mesh = match args.mesh.tunnel_listen {
        Some(_) => Some(
            crate::mesh::Mesh::start(&args.mesh, args.kube.node_name.as_deref())
                .context("starting the node-to-node mTLS tunnel")?,
        ),
        None => None,
    };
    // One proxy state (one upstream pool, one connection budget) for every listener.
    let proxy = Arc::new(Proxy {
        policy,
        flows,
        upstream: UpstreamPool::new(args.mark, limits.connect_timeout),
        connections: Arc::new(Semaphore::new(limits.max_connections)),
        kafka_topics: Default::default(),
        kafka_budget: Arc::new(crate::kafka_state::budget::FrameBudget::new(
            limits.kafka_inflight_budget,
        )),
        limits,
        mesh,
        draining: CancellationToken::new(),
        parked: Default::default(),
    });
    let listeners = Listeners {
        main: (listener, original_dst),
        tproxy: tproxy_listener,
    };
    serve(&args, proxy, listeners, dns, shutdown).await
}

/// The listening sockets with how each recovers original destinations; the TC transparent one (eBPF mode) with
/// its handoff path.
struct Listeners {
    main: (tokio::net::TcpListener, Arc<dyn OriginalDst>),
    tproxy: Option<(
        std::net::SocketAddr,
        tokio::net::TcpListener,
        std::path::PathBuf,
    )>,
}

/// Starts the listeners and the services around them, serves until SIGTERM/SIGINT, then drains.
async fn serve(
    args: &RunArgs,
    proxy: Arc<Proxy>,
    listeners: Listeners,
    dns: Option<crate::dns::DnsHandle>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Cancelled once the drain period after `shutdown` is over: open connections are then asked to close.
    let close_connections = CancellationToken::new();
    if let (Some(mesh), Some(addr)) = (&proxy.mesh, args.mesh.tunnel_listen) {
        start_tunnel(mesh, addr, &proxy, close_connections.clone())?;
    }
    // Before "ready" is logged: a SIGTERM right after it must drain, not kill (start-up stays killable).
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tracing::info!(
        listen = %args.listen,
        redirect = ?args.redirect,
        mark = format!("{:#x}", args.mark),
        generation = proxy.policy.current().generation,
        "tollgate proxy ready"
    );
    if let Some((addr, tproxy_listener, tproxy_path)) = listeners.tproxy {
        let stop = shutdown.child_token();
        tracing::info!(listen = %addr, interfaces = ?args.tc_interfaces, "TC ingress steering listener ready");
        serve_handoff(tproxy_path, &tproxy_listener, stop.clone())?;
        let original_dst = Arc::new(Tproxy { listen: addr });
        let (proxy, close) = (proxy.clone(), close_connections.clone());
        tokio::spawn(listener::serve(
            tproxy_listener,
            original_dst,
            proxy,
            stop,
            close,
        ));
    }
    let (listener, original_dst) = listeners.main;
    serve_handoff(args.handoff_socket.clone(), &listener, shutdown.clone())?;
    let (policy, flows) = (&proxy.policy, &proxy.flows);
    // Observer API, admin/metrics server and flow export (observer.rs); ready from here on.
    let dns_metrics = dns.as_ref().map(crate::dns::DnsHandle::metrics);
    crate::observer::start_services(
        services_config(args)?,
        flows,
        policy,
        dns_metrics,
        proxy.parked.clone(),
        shutdown.clone(),
    )?;
    if let Some(addr) = args.ui_listen {
        crate::ui::start_local(addr, flows, policy, shutdown.clone()).await?;
    }
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
        stop.cancel();
    });
    start_admin(args, &proxy, shutdown.clone());
    let close = close_connections.clone();
    listener::serve(listener, original_dst, proxy.clone(), shutdown, close).await;
    drain(&proxy, dns.as_ref(), close_connections).await;
    Ok(())
}

/// Lets a successor take `listener` over through the handoff socket at `path` (then `stop` is cancelled).
fn serve_handoff(
    path: std::path::PathBuf,
    listener: &tokio::net::TcpListener,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    Ok(handoff::serve(path, listener.as_raw_fd(), stop)?)
}

/// The admin socket for the operator CLI (admin/). Without it the daemon still enforces: said loudly, not fatal.
fn start_admin(args: &RunArgs, proxy: &Proxy, shutdown: CancellationToken) {
    let proxy_cgroup = match (&args.redirect, &args.proxy_cgroup) {
        (RedirectMode::Ebpf, Some(p)) => Some(p.clone()),
        (RedirectMode::Ebpf, None) => own_cgroup().ok(),
        _ => None,
    };
    let (policy, flows, mesh) = (
        proxy.policy.clone(),
        proxy.flows.clone(),
        proxy.mesh.clone(),
    );
    let admin = crate::admin::LiveDaemon::new(args, policy, flows, mesh, proxy_cgroup);
    if let Err(e) = crate::admin::start(args, admin, shutdown) {
        tracing::error!(
            "{e:#}; `tollgate status` and the other operator commands cannot reach this daemon"
        );
    }
}

/// The policy store and its feed. Standalone mode reads files (watched; the guard keeps the watch); Kubernetes mode waits for
/// the first full list from the API server and returns the reconciler that feeds later states through the same
/// gate once the datapath is programmed.
async fn load_policy(
    args: &RunArgs,
) -> anyhow::Result<(
    Arc<PolicyStore>,
    Option<crate::policy_source::WatchGuard>,
    Option<crate::kubernetes::watch::Reconciler>,
)> {
    if args.kube.kubernetes {
        let (source, reconciler) = crate::kubernetes::start(&args.kube).await?;
        Ok((Arc::new(source), None, Some(reconciler)))
    } else {
        let (Some(policy_path), Some(endpoints_path)) = (&args.policy, &args.endpoints) else {
            anyhow::bail!("--policy and --endpoints are required without --kubernetes");
        };
        let files = PolicyFiles::load(policy_path, endpoints_path).with_context(|| {
            format!(
                "loading policy {} with endpoints {}",
                policy_path.display(),
                endpoints_path.display()
            )
        })?;
        let files = Arc::new(files);
        let watch = files
            .watch(args.recheck()?)
            .with_context(|| format!("watching {} for policy updates", policy_path.display()))?;
        Ok((files.store().clone(), Some(watch), None))
    }
}

/// The drain after the listener stopped: HTTP/1 responses start carrying `Connection: close`, open connections get
/// `--drain-secs` to finish, are then asked to close (HTTP/2 GOAWAY, tunnels closed) and get the shutdown grace;
/// the DNS proxy drains too and the flow writer gets a moment to flush.
async fn drain(
    proxy: &Proxy,
    dns: Option<&crate::dns::DnsHandle>,
    close_connections: CancellationToken,
) {
    proxy.draining.cancel();
    tracing::info!(
        "stopped accepting; serving open connections for up to {:?}, then asking them to close",
        proxy.limits.drain
    );
    let all = u32::try_from(proxy.limits.max_connections).unwrap_or(u32::MAX);
    let idle = tokio::time::timeout(proxy.limits.drain, proxy.connections.acquire_many(all))
        .await
        .is_ok();
    close_connections.cancel();
    let drained = if idle {
        Ok(())
    } else {
        tracing::info!(
            "drain period over: asking open connections to close, waiting up to {:?}",
            proxy.limits.shutdown_grace
        );
        tokio::time::timeout(
            proxy.limits.shutdown_grace,
            proxy.connections.acquire_many(all),
        )
        .await
        .map(drop)
    };
    let seen = proxy
        .flows
        .counters
        .seen
        .load(std::sync::atomic::Ordering::Relaxed);
    let lost = proxy
        .flows
        .counters
        .lost
        .load(std::sync::atomic::Ordering::Relaxed);
    if let Some(dns) = dns {
        dns.drain(proxy.limits.shutdown_grace).await;
    }
    if drained.is_err() {
        tracing::warn!("grace period over with connections still open; closing them");
    }
    tracing::info!(
        flows_seen = seen,
        flows_lost = lost,
        "tollgate proxy stopped"
    );
    // Give the flow writer a moment to flush what is queued.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

/// Raises the open-file limit for the configured connections and DNS queries; returns the connection limit to
/// serve (the default shrinks to fit; an explicit `--max-connections` that does not fit is an error).
fn open_file_budget(args: &RunArgs, limits: &crate::limits::Limits) -> anyhow::Result<usize> {
    use crate::fd_limit::{self, Demand, Plan};
    let dns_enabled = args.dns.dns_port != 0
        && (args.redirect == RedirectMode::Ebpf || args.dns.dns_upstream.is_some());
    let demand = Demand {
        max_connections: limits.max_connections as u64,
        explicit: args.max_connections.is_some(),
        dns: if dns_enabled {
            fd_limit::dns_descriptors(args.dns.dns_max_inflight, args.dns.dns_max_tcp_connections)
        } else {
            0
        },
    };
    let limit = fd_limit::raise(demand.descriptors())
        .context("raising the open-file limit (RLIMIT_NOFILE) for --max-connections")?;
    match fd_limit::plan(demand, limit)? {
        Plan::Serve { max_connections } => {
            tracing::debug!(open_file_limit = limit, max_connections, "open-file limit");
            Ok(max_connections as usize)
        }
        Plan::Shrink { max_connections } => {
            tracing::warn!(
                open_file_limit = limit,
                max_connections,
                default = limits.max_connections,
                "the hard open-file limit cannot carry the default --max-connections: serving fewer; raise \
                 LimitNOFILE / ulimit -n (2 per connection) or set --max-connections"
            );
            Ok(max_connections as usize)
        }
    }
}

/// The mTLS tunnel listener other node proxies connect to (HTTP/2 CONNECT streams into the connection pipeline).
fn start_tunnel(
    mesh: &Arc<crate::mesh::Mesh>,
    addr: std::net::SocketAddr,
    proxy: &Arc<Proxy>,
    close: CancellationToken,
) -> anyhow::Result<()> {
    let store = mesh.node_svid()?;
    let handler = Arc::new(crate::mesh_inbound::TunnelInbound {
        proxy: proxy.clone(),
        mesh: mesh.clone(),
        listen: addr,
        close,
    });
    let server = crate::tunnel::TunnelServer::new(&store, crate::mesh::tunnel_peers(mesh), handler)
        .context("building the tunnel's TLS configuration")?;
    let listener = listener::bind(addr, false, 1024)
        .with_context(|| format!("binding the tunnel listener {addr} (--tunnel-listen)"))?;
    tracing::info!(
        listen = %addr,
        node = %mesh.node_name,
        node_id = %mesh.node_id,
        nodes = mesh.nodes.len(),
        "mTLS tunnel listener ready"
    );
    tokio::spawn(async move {
        if let Err(e) = server.serve(listener).await {
            tracing::error!("tunnel listener stopped: {e}");
        }
    });
    Ok(())
}

/// Loads the eBPF redirect layer and keeps it programmed from every policy snapshot before it goes live.
fn start_datapath(args: &RunArgs, policy: &Arc<PolicyStore>) -> anyhow::Result<Arc<Datapath>> {
    let proxy_cgroup = match &args.proxy_cgroup {
        Some(p) => p.clone(),
        None => own_cgroup()?,
    };
    let opts = DatapathOptions {
        pin_root: args.bpf_pin_root.clone(),
        proxy_ipv4: args.proxy_address,
        http_port: args.listen.port(),
        dns_port: args.dns.dns_port,
        proxy_mark: args.mark,
        proxy_cgroup,
        tproxy_port: args.tproxy_port,
        tproxy_mark: args.tproxy_mark,
        tc_interfaces: args.tc_interfaces.clone(),
    };
    let datapath = Arc::new(Datapath::start(&opts).context("starting the eBPF redirect layer")?);
    let dp = datapath.clone();
    policy
        .set_before_apply(Box::new(move |snap| {
            dp.apply(DatapathPlan::new(&snap.engine, &snap.endpoints)?)
        }))
        .map_err(|e| anyhow::anyhow!("programming the eBPF maps from the policy: {e}"))?;
    tracing::info!(
        pin_root = %opts.pin_root.display(),
        proxy_cgroup = %opts.proxy_cgroup.display(),
        policy_entries = datapath.policy_entries(),
        "eBPF redirect layer attached"
    );
    Ok(datapath)
}

/// The DNS proxy: on the pod-facing proxy address with the eBPF layer (queries' resolvers from its maps, learned
/// IPs into its FQDN gate); without it only when `--dns-upstream` names the resolver.
fn start_dns(
    args: &RunArgs,
    policy: &Arc<PolicyStore>,
    flows: &Arc<FlowLog>,
    datapath: Option<&Arc<Datapath>>,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<crate::dns::DnsHandle>> {
    use crate::dns::{learn::FqdnGate, origin::EbpfQueryOrigin, server};
    let (ip, origin, gate): (_, Box<dyn server::QueryOrigin>, Option<Arc<dyn FqdnGate>>) =
        match (datapath, args.dns.dns_upstream) {
            (Some(dp), fallback) => (
                std::net::IpAddr::V4(args.proxy_address),
                Box::new(EbpfQueryOrigin {
                    reader: dp.reader(),
                    fallback,
                }),
                Some(dp.clone() as Arc<dyn FqdnGate>),
            ),
            (None, Some(upstream)) => (
                args.listen.ip(),
                Box::new(server::FixedUpstream(upstream)),
                None,
            ),
            (None, None) => return Ok(None),
        };
    if let Some(ring) = datapath.and_then(|dp| dp.take_fqdn_denials()) {
        tokio::spawn(crate::dns::denials::run(
            ring,
            policy.clone(),
            flows.clone(),
            shutdown.clone(),
        ));
    }
    crate::dns::start(
        &args.dns,
        ip,
        args.mark,
        &args.handoff_socket,
        policy.clone(),
        flows.clone(),
        origin,
        gate,
        shutdown,
    )
}

/// The observability services' configuration from the run flags.
fn services_config(args: &RunArgs) -> anyhow::Result<crate::observer::ServicesConfig> {
    // `--node-name` when given (it also reads `NODE_NAME`), else the host's name.
    let node_name = (args.kube.node_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(crate::observer::node_name);
    let hubble_metrics = crate::hubble_metrics::HubbleConfig::parse(
        &args.hubble_metrics,
        args.hubble_metrics_max_series,
        std::time::Duration::from_secs(args.hubble_metrics_expiry_secs),
    )?;
    let flow_export = args
        .flow_export
        .clone()
        .map(|path| crate::flow_export::Rotation {
            path,
            max_bytes: args.flow_export_max_bytes,
            keep: args.flow_export_keep,
        });
    let reload_every =
        std::time::Duration::from_secs_f64(args.hubble_flowlogs_reload_secs.max(0.05));
    Ok(crate::observer::ServicesConfig {
        node_name,
        observer_listen: args.observer_listen,
        observer_tls: (args.observer_tls_svid_dir.clone())
            .map(|dir| (dir, args.observer_tls_client_ids.clone())),
        metrics_listen: args.metrics_listen,
        metrics_max_series: args.metrics_max_series,
        hubble_metrics,
        flow_export,
        flow_logs: (args.hubble_flowlogs_config_path.clone()).map(|p| (p, reload_every)),
    })
}

/// This process's cgroup-v2 directory, from `/proc/self/cgroup` (`0::/path`).
fn own_cgroup() -> anyhow::Result<std::path::PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("no cgroup-v2 entry in /proc/self/cgroup; pass --proxy-cgroup")?;
    Ok(std::path::Path::new("/sys/fs/cgroup/unified").join(rel.trim_start_matches('/')))
}

/// Takes `addr`'s listening socket over from a running tollgate serving `path`, or binds it afresh.
fn take_or_bind(
    path: &std::path::Path,
    addr: std::net::SocketAddr,
    transparent: bool,
) -> anyhow::Result<tokio::net::TcpListener> {
    match handoff::take(path, addr)? {
        Some(fd) => {
            let std_listener = std::net::TcpListener::from(fd);
            std_listener
                .set_nonblocking(true)
                .context("taking over the listener")?;
            tracing::info!(path = %path.display(), %addr, "took over the listening socket of the running tollgate");
            tokio::net::TcpListener::from_std(std_listener).context("taking over the listener")
        }
        None => Ok(listener::bind(addr, transparent, 1024)?),
    }
}
