//! Scenario files (`loadtest/scenarios/*.toml`) and the runner that starts the backend and peers pinned to
//! cores, runs the load against every target at every rate, and samples the measured proxy from /proc.
//!
//! Everything runs on this machine's loopback; processes are pinned with `taskset` (proxy/peers on
//! `proxy_core`, backend and load generator on `load_core`). Started processes are killed by PID on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::Deserialize;

use crate::client::{Protocol, Target};
use crate::engine::{self, Mode, RunConfig};
use crate::peers;
use crate::procstat;
use crate::report::{ProxyCost, RunResult};

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

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default = "http1")]
    pub protocol: Protocol,
    /// Request body bytes.
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
    /// L7 rules in every peer's config.
    #[serde(default = "default_rules")]
    pub rules: usize,
    #[serde(default)]
    pub proxy_core: usize,
    #[serde(default = "one")]
    pub load_core: usize,
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
    NginxBackend {
        name: String,
        port: u16,
    },
    NginxPeer {
        name: String,
        port: u16,
        backend_port: u16,
    },
    HaproxyPeer {
        name: String,
        port: u16,
        backend_port: u16,
    },
    /// Any other process (tollgate, dnsmasq, a broker): `{workdir}` in arguments is replaced; pinned to
    /// `proxy_core` unless `core` says otherwise.
    Command {
        name: String,
        cmd: Vec<String>,
        port: u16,
        core: Option<usize>,
    },
}

impl Service {
    pub fn name(&self) -> &str {
        match self {
            Service::NginxBackend { name, .. }
            | Service::NginxPeer { name, .. }
            | Service::HaproxyPeer { name, .. }
            | Service::Command { name, .. } => name,
        }
    }
    fn port(&self) -> u16 {
        match self {
            Service::NginxBackend { port, .. }
            | Service::NginxPeer { port, .. }
            | Service::HaproxyPeer { port, .. }
            | Service::Command { port, .. } => *port,
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
    #[error("starting service {name} ({program}): {source} (install it: ./dev setup)")]
    Spawn {
        name: String,
        program: String,
        source: std::io::Error,
    },
    #[error("service {name} did not accept connections on 127.0.0.1:{port} within 10 s; see {log}")]
    NotReady {
        name: String,
        port: u16,
        log: PathBuf,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Run(#[from] engine::RunError),
    #[error("sampling /proc for service {name}: {source}")]
    Proc {
        name: String,
        source: std::io::Error,
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

    /// The path every request asks for: the last peer rule (worst case for first-match rule lists).
    pub fn request_path(&self) -> String {
        peers::rule_path(self.rules.saturating_sub(1))
    }
}

/// A started service, killed by PID when dropped.
#[derive(Debug)]
pub struct Running {
    pub name: String,
    child: Child,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
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

/// Starts `svc` pinned with taskset and waits until its port accepts connections.
pub fn start(s: &Scenario, svc: &Service, workdir: &Path) -> Result<Running, ScenarioError> {
    let w = workdir.to_string_lossy().to_string();
    let (core, argv): (usize, Vec<String>) = match svc {
        Service::NginxBackend { port, .. } => {
            let conf = write(
                workdir.join("backend.conf"),
                &peers::nginx_backend(&w, *port, s.response_bytes),
            )?;
            (
                s.load_core,
                vec![
                    "nginx".into(),
                    "-p".into(),
                    w.clone(),
                    "-c".into(),
                    conf.display().to_string(),
                ],
            )
        }
        Service::NginxPeer {
            port, backend_port, ..
        } => {
            let conf = write(
                workdir.join("peer-nginx.conf"),
                &peers::nginx_peer(&w, *port, *backend_port, s.rules),
            )?;
            (
                s.proxy_core,
                vec![
                    "nginx".into(),
                    "-p".into(),
                    w.clone(),
                    "-c".into(),
                    conf.display().to_string(),
                ],
            )
        }
        Service::HaproxyPeer {
            port, backend_port, ..
        } => {
            let conf = write(
                workdir.join("peer-haproxy.cfg"),
                &peers::haproxy_peer(*port, *backend_port, s.rules),
            )?;
            (
                s.proxy_core,
                vec![
                    "haproxy".into(),
                    "-db".into(),
                    "-f".into(),
                    conf.display().to_string(),
                ],
            )
        }
        Service::Command { cmd, core, .. } => (
            core.unwrap_or(s.proxy_core),
            cmd.iter().map(|a| a.replace("{workdir}", &w)).collect(),
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
    // taskset execs the program, so the child's PID is the service's PID.
    let child = Command::new("taskset")
        .arg("-c")
        .arg(core.to_string())
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|source| ScenarioError::Spawn {
            name: svc.name().into(),
            program: argv[0].clone(),
            source,
        })?;
    let running = Running {
        name: svc.name().into(),
        child,
    };
    let port = svc.port();
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(running);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(ScenarioError::NotReady {
        name: svc.name().into(),
        port,
        log: log_path,
    })
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

/// Runs the whole scenario; `progress` is told each run as it starts. Returns results grouped by mode.
pub fn run(
    s: &Scenario,
    workdir: &Path,
    mut progress: impl FnMut(usize, usize, &str, &Mode),
) -> Result<Vec<Vec<RunResult>>, ScenarioError> {
    std::fs::create_dir_all(workdir).map_err(|source| ScenarioError::Write {
        path: workdir.into(),
        source,
    })?;
    pin_self(s.load_core);
    let mut running = Vec::new();
    for svc in &s.services {
        running.push(start(s, svc, workdir)?);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let modes = s.modes();
    let total = modes.len() * s.targets.len();
    let mut groups = Vec::new();
    let mut n = 0;
    for mode in &modes {
        let mut group = Vec::new();
        for t in &s.targets {
            n += 1;
            progress(n, total, &t.label, mode);
            let measured = t
                .measure
                .as_ref()
                .map(|m| running.iter().find(|r| &r.name == m).expect("validated"));
            let before = measured
                .map(|r| {
                    procstat::sample(r.pid()).map_err(|source| ScenarioError::Proc {
                        name: r.name.clone(),
                        source,
                    })
                })
                .transpose()?;
            let cfg = RunConfig {
                target: Target {
                    addr: t.addr,
                    authority: "backend".into(),
                    path: s.request_path(),
                    protocol: s.protocol,
                    payload: s.payload,
                },
                mode: *mode,
                connections: s.connections,
                warmup: Duration::from_secs_f64(s.warmup),
            };
            let t0 = std::time::Instant::now();
            let rec = rt.block_on(engine::run(&cfg))?;
            let wall = t0.elapsed().as_secs_f64();
            let proxy = match (measured, before) {
                (Some(r), Some(b)) => {
                    let a = procstat::sample(r.pid()).map_err(|source| ScenarioError::Proc {
                        name: r.name.clone(),
                        source,
                    })?;
                    Some(ProxyCost {
                        cpu_secs: a.cpu_secs - b.cpu_secs,
                        wall_secs: wall,
                        rss_kib: a.rss_kib,
                    })
                }
                _ => None,
            };
            group.push(RunResult {
                label: t.label.clone(),
                mode: match mode {
                    Mode::Open { rate, .. } => format!("open@{rate}rps"),
                    Mode::Closed { .. } => "closed".into(),
                },
                connections: s.connections,
                payload: s.payload,
                protocol: format!("{:?}", s.protocol).to_lowercase(),
                summary: rec.summary().into(),
                proxy,
            });
        }
        groups.push(group);
    }
    Ok(groups)
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
