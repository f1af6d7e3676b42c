//! `tollgate run` configuration: command-line flags (also settable through `TOLLGATE_*` environment variables) and
//! their validation into the runtime types.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::flow::FlowSink;
use crate::limits::Limits;
use crate::upstream::DEFAULT_MARK;

/// How redirected connections reach the proxy, which decides how their original destination is recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RedirectMode {
    /// iptables/nft TPROXY or `bpf_sk_assign`: IP_TRANSPARENT listener, destination = local address.
    Tproxy,
    /// iptables REDIRECT/DNAT or the eBPF getsockopt hook: destination from `SO_ORIGINAL_DST`.
    SoOriginalDst,
    /// Tollgate's own eBPF redirect layer: loads it, programs its maps from the policy and endpoints (enrolling each
    /// endpoint's `cgroup:`), and reads the original destination from its maps.
    Ebpf,
}

fn parse_mark(s: &str) -> Result<u32, String> {
    let r = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16)
    } else {
        s.parse()
    };
    r.map_err(|e| format!("{s:?} is not a mark (decimal or 0x-hex u32): {e}"))
}

/// `tollgate run`: the node proxy daemon in standalone mode.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Policy file, or directory of `*.yaml` policy files (CiliumNetworkPolicy / NetworkPolicy); watched and
    /// hot-reloaded.
    #[arg(long, env = "TOLLGATE_POLICY", required_unless_present = "kubernetes")]
    pub policy: Option<PathBuf>,
    /// Endpoints file (`endpoints:` list: name, namespace, labels, ip); watched with the policy.
    #[arg(
        long,
        env = "TOLLGATE_ENDPOINTS",
        required_unless_present = "kubernetes"
    )]
    pub endpoints: Option<PathBuf>,
    /// Address the redirected connections arrive on.
    #[arg(long, default_value = "0.0.0.0:15001", env = "TOLLGATE_LISTEN")]
    pub listen: SocketAddr,
    /// How connections are redirected to the proxy.
    #[arg(long, value_enum, default_value = "tproxy", env = "TOLLGATE_REDIRECT")]
    pub redirect: RedirectMode,
    /// With `--redirect ebpf`: the IPv4 address pods reach the proxy at (the node side of their veth).
    #[arg(long, default_value = "169.254.1.1", env = "TOLLGATE_PROXY_ADDRESS")]
    pub proxy_address: std::net::Ipv4Addr,
    /// With `--redirect ebpf`: where the redirect layer's maps and links are pinned (on bpffs), so a restart keeps
    /// them.
    #[arg(long, default_value = redirect_ebpf::DEFAULT_PIN_ROOT, env = "TOLLGATE_BPF_PIN_ROOT")]
    pub bpf_pin_root: PathBuf,
    /// With `--redirect ebpf`: the proxy's own cgroup-v2 directory (default: the one this process runs in). It gets
    /// the socket re-keying programs, never the redirecting ones.
    #[arg(long, env = "TOLLGATE_PROXY_CGROUP")]
    pub proxy_cgroup: Option<PathBuf>,
    /// With `--redirect ebpf`: port of a transparent (IP_TRANSPARENT) listener for connections the TC program steers
    /// in at `--tc-interface`s with `bpf_sk_assign` (ingress to local pods from unenrolled sources: other nodes, the
    /// outside world). 0 = no ingress steering.
    #[arg(long, default_value_t = 0, env = "TOLLGATE_TPROXY_PORT")]
    pub tproxy_port: u16,
    /// skb mark the TC program puts on steered packets. The node must deliver marked packets locally:
    /// `ip rule add fwmark <mark> lookup 100` and `ip route add local 0.0.0.0/0 dev lo table 100`.
    #[arg(long, value_parser = parse_mark, default_value_t = 0x200, env = "TOLLGATE_TPROXY_MARK")]
    pub tproxy_mark: u32,
    /// With `--redirect ebpf` and `--tproxy-port`: an interface to attach the TC ingress program to (the node side
    /// of a pod's veth, or the node uplink). Repeat the flag for several.
    #[arg(long = "tc-interface")]
    pub tc_interfaces: Vec<String>,
    /// Unix socket for handing the listener over to a restarting/upgraded tollgate on this node (no lost
    /// connections); a new process takes the socket from whoever serves this path.
    #[arg(
        long,
        default_value = "/run/tollgate/handoff.sock",
        env = "TOLLGATE_HANDOFF_SOCKET"
    )]
    pub handoff_socket: PathBuf,
    /// Unix socket the operator CLI (`tollgate status`, `endpoint`, `policy get|trace`, `bpf list`) talks to; mode
    /// 0600. Default: `admin.sock` beside --handoff-socket.
    #[arg(long, env = "TOLLGATE_ADMIN_SOCKET")]
    pub admin_socket: Option<PathBuf>,
    /// SO_MARK on every upstream socket, so the redirect layer never loops it back (decimal or 0x-hex).
    #[arg(long, value_parser = parse_mark, default_value_t = DEFAULT_MARK, env = "TOLLGATE_MARK")]
    pub mark: u32,
    /// Flow log: `-` for stdout or a file path (JSON lines, appended).
    #[arg(long, env = "TOLLGATE_FLOW_LOG")]
    pub flow_log: Option<String>,
    /// Flow records kept in memory.
    #[arg(long, default_value_t = 4096)]
    pub flow_ring: usize,
    /// Hubble-compatible Observer gRPC API (`tollgate observe`, `hubble observe --server`).
    #[arg(
        long,
        default_value = "127.0.0.1:4245",
        env = "TOLLGATE_OBSERVER_LISTEN"
    )]
    pub observer_listen: SocketAddr,
    /// Serve the Observer API over mTLS with this SVID directory (svid.pem, svid.key, bundle.pem, as
    /// `tollgate certs issue` writes them; re-read on change): clients such as `tollgate relay` must present an
    /// SVID of the same trust domain.
    #[arg(long, env = "TOLLGATE_OBSERVER_TLS_SVID_DIR")]
    pub observer_tls_svid_dir: Option<std::path::PathBuf>,
    /// With --observer-tls-svid-dir: only these client SPIFFE IDs (repeat), e.g. the relay's.
    #[arg(long = "observer-tls-client-id")]
    pub observer_tls_client_ids: Vec<String>,
    /// Admin HTTP server: Prometheus `/metrics`, `/healthz`, `/readyz`.
    #[arg(
        long,
        default_value = "127.0.0.1:9965",
        env = "TOLLGATE_METRICS_LISTEN"
    )]
    pub metrics_listen: SocketAddr,
    /// Serve the web UI (service map, flows, drops, HTTP endpoints, DNS) on this address, e.g. 127.0.0.1:12000.
    /// Off by default; it is read-only but shows every flow, so keep it on loopback or behind a proxy.
    #[arg(long, env = "TOLLGATE_UI_LISTEN")]
    pub ui_listen: Option<SocketAddr>,
    /// Most distinct (protocol, verdict, source, destination) label sets in `tollgate_requests_total`; further
    /// identities are counted as `other`.
    #[arg(long, default_value_t = 1000)]
    pub metrics_max_series: usize,
    /// Hubble metric families in Cilium's syntax, e.g.
    /// `dns;drop;flow;httpV2:sourceContext=namespace;destinationContext=workload-name;policy`
    /// (contexts: namespace, workload-name, pod, identity; `labelsContext=source_namespace,...`).
    #[arg(long, default_value = "dns;drop;flow;httpV2;policy")]
    pub hubble_metrics: String,
    /// Most label sets per `hubble_*` family; further ones are counted under `overflow`.
    #[arg(long, default_value_t = 10_000)]
    pub hubble_metrics_max_series: usize,
    /// Seconds after which a `hubble_*` series naming an endpoint (context labels) and no longer fed is removed,
    /// so deleted pods' series go away.
    #[arg(long, default_value_t = 600)]
    pub hubble_metrics_expiry_secs: u64,
    /// Export flows as JSON lines to this file for log shippers, rotated by size.
    #[arg(long, env = "TOLLGATE_FLOW_EXPORT")]
    pub flow_export: Option<PathBuf>,
    /// Rotate the export file before it grows beyond this many bytes.
    #[arg(long, default_value_t = 100 * 1024 * 1024)]
    pub flow_export_max_bytes: u64,
    /// Rotated export files kept (`<path>.1` newest .. `<path>.N`).
    #[arg(long, default_value_t = 5)]
    pub flow_export_keep: u32,
    /// Cilium's dynamic flow logs: a YAML file with a `flowLogs` list, each a named export with its own file
    /// (`filePath`, `fileMaxSizeMb`, `fileMaxBackups`), `includeFilters`, `excludeFilters`, `fieldMask` and `end`;
    /// lines are Hubble JSON. The file is re-read when it changes: no restart.
    #[arg(long, env = "TOLLGATE_HUBBLE_FLOWLOGS_CONFIG_PATH")]
    pub hubble_flowlogs_config_path: Option<PathBuf>,
    /// Seconds between checks of the flow-log configuration file for changes.
    #[arg(long, default_value_t = 5.0)]
    pub hubble_flowlogs_reload_secs: f64,
    /// Seconds between periodic policy re-checks (inotify triggers reloads immediately; this is the fallback).
    #[arg(long, default_value_t = 2.0)]
    pub recheck_secs: f64,
    /// Largest request head in bytes (431 beyond it).
    #[arg(long, default_value_t = Limits::default().max_header_bytes)]
    pub max_header_bytes: usize,
    /// Most header fields per HTTP/1 request (431 beyond it).
    #[arg(long, default_value_t = Limits::default().max_headers)]
    pub max_headers: usize,
    /// Seconds a client has to send a complete request head.
    #[arg(long, default_value_t = Limits::default().header_read_timeout.as_secs_f64())]
    pub header_read_timeout_secs: f64,
    /// Seconds without traffic after which a connection is closed.
    #[arg(long, default_value_t = Limits::default().idle_timeout.as_secs_f64())]
    pub idle_timeout_secs: f64,
    /// Seconds a request body has to start arriving; it earns one more second per --request-body-min-rate bytes
    /// (408 when it falls behind).
    #[arg(long, default_value_t = Limits::default().body_grace.as_secs_f64())]
    pub request_body_timeout_secs: f64,
    /// Minimum request body rate in bytes per second once the grace is used up.
    #[arg(long, default_value_t = Limits::default().body_min_rate)]
    pub request_body_min_rate: u64,
    /// Seconds open connections keep being served after a restart handoff or SIGTERM before they are asked to
    /// close (hitless upgrades: clients finish on the old process, new connections go to the new one).
    #[arg(long, default_value_t = Limits::default().drain.as_secs_f64())]
    pub drain_secs: f64,
    /// Concurrent downstream connections (503 / close beyond it). Default: 16384, or fewer when the hard
    /// open-file limit cannot carry that many (2 descriptors each; a warning says so). A value given here that
    /// the limit cannot carry stops the daemon at start-up instead.
    #[arg(long, env = "TOLLGATE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Threads serving connections. Default: the CPUs this process may run on (its affinity mask, e.g. a
    /// cpuset). With one, the whole daemon runs on a single-threaded runtime, as linkerd2-proxy does on one core:
    /// no work-stealing queues, and waking another task is a local queue push.
    #[arg(long, env = "TOLLGATE_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,
    /// HTTP/2 max concurrent streams per connection.
    #[arg(long, default_value_t = Limits::default().h2_max_concurrent_streams)]
    pub h2_max_concurrent_streams: u32,
    /// Largest Kafka request frame in bytes; a bigger one closes that connection (raise it with clients'
    /// `max.request.size` / `message.max.bytes`).
    #[arg(long, default_value_t = Limits::default().kafka_max_frame)]
    pub kafka_max_frame_bytes: usize,
    /// Largest Kafka response frame in bytes (Fetch responses up to consumers' `fetch.max.bytes`).
    #[arg(long, default_value_t = Limits::default().kafka_max_response)]
    pub kafka_max_response_bytes: usize,
    /// Bytes of Kafka request frames being received, all connections together; three quarters of it are for
    /// the parts of frames beyond their first 64 KiB, so it must be at least 4/3 of --kafka-max-frame-bytes.
    #[arg(long, default_value_t = Limits::default().kafka_inflight_budget)]
    pub kafka_inflight_budget_bytes: usize,
    /// Seconds a Kafka request frame has from its first byte to its last, waiting for budget included.
    #[arg(long, default_value_t = Limits::default().kafka_frame_timeout.as_secs_f64())]
    pub kafka_frame_timeout_secs: f64,
    #[command(flatten)]
    pub dns: crate::dns::DnsArgs,
    /// Kubernetes mode: policies and endpoints from the API server instead of --policy/--endpoints.
    #[command(flatten)]
    pub kube: crate::kubernetes::KubeArgs,
    #[command(flatten)]
    pub mesh: crate::mesh::MeshArgs,
}

fn secs(name: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .map_err(|e| anyhow::anyhow!("--{name} {v}: {e}; give a non-negative number of seconds"))
}

/// The smallest budget whose share for frame bodies holds `body` bytes.
fn least_kafka_budget(body: usize) -> usize {
    let mut budget = body + body / 3;
    while crate::kafka_state::budget::FrameBudget::bulk_share(budget) < body {
        budget += 1;
    }
    budget
}

impl RunArgs {
    pub fn limits(&self) -> anyhow::Result<Limits> {
        anyhow::ensure!(
            self.max_connections != Some(0),
            "--max-connections must be at least 1"
        );
        anyhow::ensure!(self.max_headers > 0, "--max-headers must be at least 1");
        self.check_kafka_budget()?;
        Ok(Limits {
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            header_read_timeout: secs("header-read-timeout-secs", self.header_read_timeout_secs)?,
            idle_timeout: secs("idle-timeout-secs", self.idle_timeout_secs)?,
            body_grace: secs("request-body-timeout-secs", self.request_body_timeout_secs)?,
            body_min_rate: self.request_body_min_rate.max(1),
            max_connections: self
                .max_connections
                .unwrap_or(Limits::default().max_connections),
            h2_max_concurrent_streams: self.h2_max_concurrent_streams,
            drain: secs("drain-secs", self.drain_secs)?,
            kafka_max_frame: self.kafka_max_frame_bytes,
            kafka_max_response: self.kafka_max_response_bytes,
            kafka_inflight_budget: self.kafka_inflight_budget_bytes,
            kafka_frame_timeout: secs("kafka-frame-timeout-secs", self.kafka_frame_timeout_secs)?,
            ..Limits::default()
        })
    }

    /// The largest frame must fit in the budget's share for frame bodies, or it could never complete.
    fn check_kafka_budget(&self) -> anyhow::Result<()> {
        use crate::kafka_state::budget::{FrameBudget, HEAD_BYTES};
        let bodies = FrameBudget::bulk_share(self.kafka_inflight_budget_bytes);
        let largest = (self.kafka_max_frame_bytes + 4).saturating_sub(HEAD_BYTES);
        anyhow::ensure!(
            largest <= bodies,
            "--kafka-inflight-budget-bytes {} leaves {bodies} bytes for frame bodies, too few for a frame of \
             --kafka-max-frame-bytes {}: give a budget of at least {}",
            self.kafka_inflight_budget_bytes,
            self.kafka_max_frame_bytes,
            least_kafka_budget(largest)
        );
        Ok(())
    }

    pub fn flow_sink(&self) -> FlowSink {
        self.flow_log
            .as_deref()
            .map(FlowSink::parse)
            .unwrap_or(FlowSink::None)
    }

    pub fn recheck(&self) -> anyhow::Result<Duration> {
        secs("recheck-secs", self.recheck_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_parse_hex_and_decimal() {
        assert_eq!(parse_mark("0xb00"), Ok(0xb00));
        assert_eq!(parse_mark("2816"), Ok(0xb00));
        assert!(parse_mark("zz").unwrap_err().contains("not a mark"));
    }

    fn run_args(flags: &[&str]) -> RunArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let base = ["tollgate", "--policy", "p.yaml", "--endpoints", "e.yaml"];
        <Cli as clap::Parser>::try_parse_from(base.iter().chain(flags))
            .unwrap()
            .run
    }

    #[test]
    fn the_kafka_budget_must_hold_the_largest_frame() {
        let limits = run_args(&[]).limits().unwrap();
        assert_eq!(limits.kafka_max_frame, 8 << 20);
        assert_eq!(limits.kafka_inflight_budget, 24 << 20);
        assert_eq!(limits.kafka_frame_timeout, Duration::from_secs(30));
        let err = run_args(&["--kafka-max-frame-bytes", "33554432"])
            .limits()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--kafka-inflight-budget-bytes 25165824 leaves 18874368 bytes")
                && err.contains("at least"),
            "{err}"
        );
        // The budget the message asks for is enough, and one byte less is not.
        let least: usize = err.rsplit(' ').next().unwrap().parse().unwrap();
        let with = |b: usize| {
            run_args(&[
                "--kafka-max-frame-bytes",
                "33554432",
                "--kafka-inflight-budget-bytes",
                &b.to_string(),
            ])
            .limits()
        };
        assert!(with(least).is_ok());
        assert!(with(least - 1).is_err());
    }
}
