//! The DNS proxy: owns pods' redirected port-53 traffic (UDP and TCP), enforces `rules.dns` per source identity,
//! forwards allowed queries to the resolver the pod asked, and learns FQDN -> IP from the answers for `toFQDNs`
//! (the policy snapshot's cache and the kernel's FQDN gate), before the answer is released.
//!
//! Parts: `message` (pure DNS handling, the `tollgate-dns-codec` crate in `proxy/codecs/dns`), `learn` (FQDN learning plan + application), `server` (listeners and
//! forwarder), `batch` (batched UDP receive), `record` (flow records), `metrics` (counters, hold histogram), `origin` (where a query was going,
//! from the eBPF maps), `options` (the validated options `start` hands the server). `start` wires them for `tollgate run`, including the socket handoff on restart.

pub mod batch;
pub mod denials;
pub mod learn;
pub use tollgate_dns_codec::message;
pub mod metrics;
pub mod options;
pub mod origin;
pub mod record;
pub mod server;

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::flow::FlowLog;
use crate::handoff;
use crate::policy_source::PolicyStore;
pub use options::{DenyResponse, DnsOptions};

/// `tollgate run` flags of the DNS proxy.
#[derive(Debug, Clone, Args)]
pub struct DnsArgs {
    /// DNS listener port (UDP and TCP) on `--proxy-address` (eBPF) or the `--listen` address; the redirect layer
    /// sends pods' port-53 traffic here for identities with DNS rules. 0 disables the DNS proxy.
    #[arg(long, default_value_t = 15053, env = "TOLLGATE_DNS_PORT")]
    pub dns_port: u16,
    /// Answer for denied queries.
    #[arg(
        long,
        value_enum,
        default_value = "refused",
        env = "TOLLGATE_DNS_DENY_RESPONSE"
    )]
    pub dns_deny_response: DenyResponse,
    /// Resolver used when a query has no redirect record (no eBPF layer, e.g. benchmarks or a node-local DNS
    /// listener); without it such queries get SERVFAIL.
    #[arg(long, env = "TOLLGATE_DNS_UPSTREAM")]
    pub dns_upstream: Option<SocketAddr>,
    /// Seconds to wait for the resolver before answering SERVFAIL.
    #[arg(long, default_value_t = 2.0)]
    pub dns_upstream_timeout_secs: f64,
    /// Learned IPs stay allowed at least this many seconds, whatever the TTL (clients that cache answers longer
    /// than the TTL keep connecting).
    #[arg(long, default_value_t = 0.0, env = "TOLLGATE_DNS_MIN_TTL")]
    pub dns_min_ttl_secs: f64,
    /// Queries in flight before new ones get SERVFAIL (overload).
    #[arg(long, default_value_t = 8192)]
    pub dns_max_inflight: usize,
    /// DNS-over-TCP client connections open at once; a connection beyond it is closed at once (RST) with a
    /// DROPPED record (a client falling back to TCP retries; a flood cannot exhaust descriptors).
    #[arg(long, default_value_t = 1024)]
    pub dns_max_tcp_connections: usize,
    /// Seconds between FQDN cache / kernel map garbage collections.
    #[arg(long, default_value_t = 5.0)]
    pub dns_gc_secs: f64,
}

fn secs(name: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .map_err(|e| anyhow::anyhow!("--{name} {v}: {e}; give a non-negative number of seconds"))
}

/// The running DNS proxy's handles (for the drain at shutdown, and its metrics for `/metrics`).
#[derive(Debug)]
pub struct DnsHandle {
    pub server: Arc<server::DnsServer>,
    pub max_inflight: usize,
}

impl DnsHandle {
    /// The proxy's counters, for the admin server.
    pub fn metrics(&self) -> Arc<metrics::DnsMetrics> {
        self.server.metrics.clone()
    }

    /// Waits (up to `grace`) for queries in flight, so their answers are sent before the process exits.
    pub async fn drain(&self, grace: Duration) {
        let all = u32::try_from(self.max_inflight).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(grace, self.server.inflight.acquire_many(all)).await;
    }
}

/// Handoff socket path for one DNS socket, next to the main one.
pub fn handoff_path(main: &Path, which: &str) -> PathBuf {
    handoff::companion_path(main, &format!("dns-{which}"))
}

/// Binds (or takes over from a running tollgate) the DNS UDP and TCP sockets on `addr` and serves them; offers
/// them to a successor over `<handoff>.dns-udp` / `.dns-tcp`. `None` when `--dns-port 0`.
#[allow(clippy::too_many_arguments)]
pub fn start(
    args: &DnsArgs,
    ip: IpAddr,
    mark: u32,
    handoff_socket: &Path,
    policy: Arc<PolicyStore>,
    flows: Arc<FlowLog>,
    origin: Box<dyn server::QueryOrigin>,
    gate: Option<Arc<dyn learn::FqdnGate>>,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<DnsHandle>> {
    if args.dns_port == 0 {
        return Ok(None);
    }
    let addr = SocketAddr::new(ip, args.dns_port);
    let opts = DnsOptions {
        deny_response: args.dns_deny_response,
        upstream_timeout: secs("dns-upstream-timeout-secs", args.dns_upstream_timeout_secs)?,
        mark,
        max_tcp_connections: args.dns_max_tcp_connections,
    };
    let cache = policy.current().fqdn.clone();
    let server = Arc::new(server::DnsServer {
        policy,
        flows,
        learner: learn::Learner {
            cache,
            gate,
            min_ttl: secs("dns-min-ttl-secs", args.dns_min_ttl_secs)?,
        },
        origin,
        opts,
        inflight: Arc::new(tokio::sync::Semaphore::new(args.dns_max_inflight)),
        tcp_connections: Arc::new(tokio::sync::Semaphore::new(args.dns_max_tcp_connections)),
        sockets: server::SocketPool::default(),
        metrics: Arc::default(),
    });
    let udp_path = handoff_path(handoff_socket, "udp");
    let tcp_path = handoff_path(handoff_socket, "tcp");
    let udp = match handoff::take(&udp_path, addr)? {
        Some(fd) => {
            tracing::info!(%addr, "took over the DNS UDP socket of the running tollgate");
            std::net::UdpSocket::from(fd)
        }
        None => bind_udp(addr)?,
    };
    udp.set_nonblocking(true).context("DNS UDP socket")?;
    let tcp = match handoff::take(&tcp_path, addr)? {
        Some(fd) => {
            tracing::info!(%addr, "took over the DNS TCP listener of the running tollgate");
            std::net::TcpListener::from(fd)
        }
        None => crate::listener::bind(addr, false, 1024)?
            .into_std()
            .context("DNS TCP listener")?,
    };
    tcp.set_nonblocking(true).context("DNS TCP listener")?;
    let udp = Arc::new(tokio::net::UdpSocket::from_std(udp).context("DNS UDP socket")?);
    let tcp = Arc::new(tokio::net::TcpListener::from_std(tcp).context("DNS TCP listener")?);
    // Each socket stops being served here once a successor confirms it holds it (or at shutdown).
    let udp_stop = shutdown.child_token();
    let tcp_stop = shutdown.child_token();
    handoff::serve(udp_path, udp.as_raw_fd(), udp_stop.clone())?;
    handoff::serve(tcp_path, tcp.as_raw_fd(), tcp_stop.clone())?;
    tokio::spawn(server.clone().serve_udp(udp, udp_stop));
    tokio::spawn(server.clone().serve_tcp(tcp, tcp_stop));
    let gc_every = secs("dns-gc-secs", args.dns_gc_secs)?.max(Duration::from_millis(100));
    let gc_server = server.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(gc_every);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let (cached, kernel) = gc_server.learner.gc(std::time::SystemTime::now());
                    if cached + kernel > 0 {
                        tracing::debug!(cached, kernel, "FQDN GC removed expired entries");
                    }
                }
                _ = shutdown.cancelled() => break,
            }
        }
    });
    tracing::info!(%addr, deny = ?args.dns_deny_response, "DNS proxy ready (UDP and TCP)");
    Ok(Some(DnsHandle {
        server,
        max_inflight: args.dns_max_inflight,
    }))
}

fn bind_udp(addr: SocketAddr) -> anyhow::Result<std::net::UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, None)
        .with_context(|| format!("creating the DNS UDP socket for {addr}"))?;
    // Bursts of queries must queue, not drop, while a restart hands the socket over.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into()).with_context(|| {
        format!("binding the DNS UDP listener on {addr}; is another DNS proxy on that port? pick --dns-port")
    })?;
    Ok(s.into())
}
