//! Runs a scenario: starts its services, checks that every measured proxy enforces the rules (one allowed and one
//! denied request), measures idle memory, then runs the rounds. Within a round every mode (each open-loop rate, then
//! closed loop) runs against every target in file order (direct, tollgate, nginx, haproxy), then every external
//! generator (wrk, h2load) does the same, so drifts of the machine spread over all rows instead of landing on one.
//! The load average is read before and after each round.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::client::{Connection, Protocol, Target};
use crate::engine::{self, Mode, RunConfig};
use crate::external::{self, ExternalSpec, ToolOutput};
use crate::peers::RuleSet;
use crate::procstat;
use crate::progress::Progress;
use crate::quiet::{self, LoadSample};
use crate::report::{
    ExternalResult, IdleCost, ProxyCost, RoundLoad, RunResult, ScenarioResult, ShownConfig,
};
use crate::scenario::{Env, Place, RunOptions, Running, Scenario, ScenarioError, TargetSpec};
use crate::stats::Recorder;

fn sample(r: &Running) -> Result<procstat::ProcSample, ScenarioError> {
    procstat::sample(r.pid()).map_err(|source| ScenarioError::Proc {
        name: r.name.clone(),
        source,
    })
}

fn mode_label(mode: &Mode) -> String {
    match mode {
        Mode::Open { rate, .. } => format!("open@{rate}rps"),
        Mode::Closed { .. } => "closed".into(),
    }
}

/// Runs `f` on a current-thread tokio runtime where the load generator lives.
fn in_client<T: Send + 'static>(
    env: &Env,
    f: impl AsyncFnOnce() -> T + Send + 'static,
) -> Result<T, ScenarioError> {
    env.in_client(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(f())
    })
}

/// Opens `n` connections to `target` from the client side, one request each, holds them idle and returns the
/// proxy's RSS (KiB) before and with them, and how many opened and answered.
fn idle_rss(
    env: &Env,
    target: Target,
    pid: u32,
    n: usize,
) -> Result<(u64, u64, usize), ScenarioError> {
    in_client(env, async move || {
        let before = procstat::sample(pid).map(|s| s.rss_kib).unwrap_or(0);
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            if let Ok(mut c) = Connection::open(&target).await
                && c.send().await
            {
                conns.push(c);
            }
        }
        let after = settled_rss_kib(pid).await;
        let opened = conns.len();
        drop(conns);
        (before, after, opened)
    })
}

/// The proxy's RSS (KiB) once it stops changing: sampled every 500 ms from 1 s on, until two samples in a row
/// are within 1% (or 10 s). A proxy that frees a connection's request buffers when it goes idle, or whose
/// allocator returns freed pages after a delay, is measured at its steady state, as a node holding idle pods'
/// connections would see it; one that settles at once is measured at 1 s as before.
async fn settled_rss_kib(pid: u32) -> u64 {
    let rss = || procstat::sample(pid).map(|s| s.rss_kib).unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut last = rss();
    for _ in 0..18 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss();
        if now.abs_diff(last) * 100 <= last {
            return now;
        }
        last = now;
    }
    last
}

/// One request to `target` on a fresh connection: its answer, or why there was none.
fn ask(env: &Env, target: Target) -> Result<Result<crate::client::Answer, String>, ScenarioError> {
    in_client(env, async move || {
        let mut c = Connection::open(&target).await.map_err(|e| e.to_string())?;
        c.answer()
            .await
            .ok_or_else(|| "no HTTP answer (connection failed or closed)".to_string())
    })
}

/// Refuses to measure a proxy that does not enforce the scenario's rules: the bench path must succeed and
/// [`RuleSet::DENIED_PATH`] must be denied (403, or gRPC PERMISSION_DENIED).
fn check_enforcement(
    s: &Scenario,
    env: &Env,
    t: &TargetSpec,
    workdir: &Path,
) -> Result<(), ScenarioError> {
    let allowed = s.target(t.addr);
    let denied = Target {
        path: RuleSet::DENIED_PATH.into(),
        ..allowed.clone()
    };
    let grpc = s.protocol == Protocol::Grpc;
    let method = s.rule_set().method().to_string();
    for (target, want_denied) in [(allowed, false), (denied, true)] {
        let path = target.path.clone();
        let answer = ask(env, target)?;
        let good = match &answer {
            Ok(a) if want_denied => a.denied(),
            Ok(a) => a.ok(grpc),
            Err(_) => false,
        };
        if !good {
            let expected = if want_denied {
                "a denial (HTTP 403 or grpc-status 7)"
            } else {
                "a success"
            };
            return Err(ScenarioError::Enforcement {
                label: t.label.clone(),
                detail: format!(
                    "{method} {path} got {}, expected {expected} (its configuration is in {})",
                    answer.map_or_else(|e| e, |a| a.to_string()),
                    workdir.display()
                ),
            });
        }
    }
    Ok(())
}

/// [`check_enforcement`] for every measured target of an HTTP scenario (DNS and Kafka enforcement is proven by
/// the topology tests instead).
fn check_all_enforce(s: &Scenario, env: &Env, workdir: &Path) -> Result<(), ScenarioError> {
    if s.is_http() {
        for t in s.targets.iter().filter(|t| t.measure.is_some()) {
            check_enforcement(s, env, t, workdir)?;
        }
    }
    Ok(())
}

/// Idle RSS of every measured target's proxy, and with `idle_connections` its growth per held connection.
fn measure_idle(
    s: &Scenario,
    env: &Env,
    running: &[Running],
    progress: &mut Progress,
) -> Result<Vec<IdleCost>, ScenarioError> {
    let mut idle = Vec::new();
    for t in &s.targets {
        let Some(r) = measured(running, t) else {
            continue;
        };
        let mut cost = IdleCost {
            label: t.label.clone(),
            idle_rss_kib: sample(r)?.rss_kib,
            connections: 0,
            rss_before_kib: 0,
            rss_with_connections_kib: 0,
        };
        if s.idle_connections > 0 {
            progress.note(&format!(
                "{}: {} idle connections through {}",
                s.name, s.idle_connections, t.label
            ));
            let (before, after, opened) =
                idle_rss(env, s.target(t.addr), r.pid(), s.idle_connections)?;
            if opened < s.idle_connections {
                return Err(ScenarioError::Idle {
                    label: t.label.clone(),
                    opened,
                    wanted: s.idle_connections,
                });
            }
            cost.connections = opened;
            cost.rss_before_kib = before;
            cost.rss_with_connections_kib = after;
        }
        idle.push(cost);
    }
    Ok(idle)
}

fn measured<'a>(running: &'a [Running], t: &TargetSpec) -> Option<&'a Running> {
    let m = t.measure.as_ref()?;
    running.iter().find(|r| &r.name == m)
}

/// Runs `f` and charges the measured proxy's CPU over it.
fn charged<T>(
    proxy: Option<&Running>,
    f: impl FnOnce() -> Result<T, ScenarioError>,
) -> Result<(T, Option<ProxyCost>), ScenarioError> {
    let before = proxy.map(sample).transpose()?;
    let t0 = Instant::now();
    let out = f()?;
    let wall_secs = t0.elapsed().as_secs_f64();
    let cost = match (proxy, before) {
        (Some(r), Some(b)) => {
            let a = sample(r)?;
            Some(ProxyCost {
                cpu_secs: a.cpu_secs - b.cpu_secs,
                sys_secs: a.sys_secs - b.sys_secs,
                wall_secs,
                rss_kib: a.rss_kib,
            })
        }
        _ => None,
    };
    Ok((out, cost))
}

/// One run of our own generator against one target.
fn run_ours(
    s: &Scenario,
    env: &Env,
    t: &TargetSpec,
    mode: Mode,
    proxy: Option<&Running>,
) -> Result<(Recorder, Option<ProxyCost>), ScenarioError> {
    let cfg = RunConfig {
        target: s.target(t.addr),
        mode,
        connections: s.connections,
        warmup: Duration::from_secs_f64(s.warmup),
    };
    charged(proxy, || {
        Ok(in_client(env, async move || engine::run(&cfg).await)??)
    })
}

/// The URL, Host and (gRPC) body file an external generator sends to `t`.
fn external_request(s: &Scenario, t: &TargetSpec, workdir: &Path) -> external::Request {
    external::Request {
        url: format!("http://{}{}", t.addr, s.request_path()),
        host: crate::scenario::DNS_NAME.into(),
        grpc_body: (s.protocol == Protocol::Grpc)
            .then(|| workdir.join("grpc-body.bin").display().to_string()),
    }
}

/// One run of an external generator against one target, in the client pod pinned to the load core.
fn run_external(
    s: &Scenario,
    env: &Env,
    spec: &ExternalSpec,
    t: &TargetSpec,
    workdir: &Path,
    proxy: Option<&Running>,
) -> Result<(ToolOutput, Option<ProxyCost>), ScenarioError> {
    let argv = external::argv(spec, &external_request(s, t, workdir));
    let fail = |detail: String| ScenarioError::External {
        program: spec.tool.program().into(),
        package: spec.tool.package().into(),
        label: t.label.clone(),
        detail,
    };
    charged(proxy, || {
        let out = env
            .command(Place::Client, s.load_core, &argv)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| fail(format!("{e} (install it: ./dev setup)")))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(fail(format!(
                "{}: {}{}",
                out.status,
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        external::parse(spec.tool, &text).map_err(|e| fail(e.to_string()))
    })
}

fn load_sample(opts: &RunOptions) -> Result<LoadSample, ScenarioError> {
    quiet::sample(10, opts.load_window).map_err(ScenarioError::LoadAvg)
}

/// What the rounds measured.
struct Rounds {
    groups: Vec<Vec<RunResult>>,
    externals: Vec<ExternalResult>,
    loads: Vec<RoundLoad>,
}

fn run_rounds(
    s: &Scenario,
    env: &Env,
    running: &[Running],
    workdir: &Path,
    opts: &RunOptions,
    progress: &mut Progress,
) -> Result<Rounds, ScenarioError> {
    let modes = s.modes();
    let rounds = opts.rounds.unwrap_or(s.rounds).max(1);
    let per_round = (modes.len() + s.external.len()) * s.targets.len();
    let total = rounds * per_round;
    let mut out = Rounds {
        groups: vec![Vec::new(); modes.len()],
        externals: Vec::new(),
        loads: Vec::new(),
    };
    let mut n = 0;
    for round in 1..=rounds {
        let before = load_sample(opts)?;
        // Again before every round: a proxy is measured only while it is seen to deny.
        check_all_enforce(s, env, workdir)?;
        for (m, mode) in modes.iter().enumerate() {
            let duration = match mode {
                Mode::Open { duration, .. } | Mode::Closed { duration } => *duration,
            };
            for t in &s.targets {
                n += 1;
                let what = format!("{} r{round} {} {}", s.name, t.label, mode_label(mode));
                progress.start(n, total, &what, duration);
                let (rec, proxy) = run_ours(s, env, t, *mode, measured(running, t))?;
                out.groups[m].push(run_result(s, t, mode, round, rec, proxy));
            }
        }
        for spec in &s.external {
            for t in &s.targets {
                n += 1;
                let what = format!("{} r{round} {} {}", s.name, t.label, spec.name());
                progress.start(n, total, &what, Duration::from_secs_f64(spec.duration));
                let (output, proxy) = run_external(s, env, spec, t, workdir, measured(running, t))?;
                out.externals.push(ExternalResult {
                    label: t.label.clone(),
                    generator: spec.name(),
                    round,
                    output,
                    proxy,
                });
            }
        }
        let after = load_sample(opts)?;
        out.loads.push(RoundLoad {
            round,
            before,
            after,
        });
    }
    progress.finish();
    Ok(out)
}

fn run_result(
    s: &Scenario,
    t: &TargetSpec,
    mode: &Mode,
    round: usize,
    rec: Recorder,
    proxy: Option<ProxyCost>,
) -> RunResult {
    RunResult {
        label: t.label.clone(),
        mode: mode_label(mode),
        round,
        connections: s.connections,
        payload: s.payload,
        response_bytes: match s.protocol {
            Protocol::Http1 | Protocol::Http2 | Protocol::Grpc => s.response_bytes,
            Protocol::Dns | Protocol::Kafka => 0,
        },
        protocol: format!("{:?}", s.protocol).to_lowercase(),
        summary: rec.summary().into(),
        proxy,
    }
}

/// Runs the whole scenario: services, enforcement checks, idle memory, then the rounds.
pub fn run(
    s: &Scenario,
    workdir: &Path,
    opts: RunOptions,
    progress: &mut Progress,
) -> Result<ScenarioResult, ScenarioError> {
    std::fs::create_dir_all(workdir).map_err(|source| ScenarioError::Write {
        path: workdir.into(),
        source,
    })?;
    let body = workdir.join("grpc-body.bin");
    std::fs::write(
        &body,
        crate::client::request_body(Protocol::Grpc, s.payload),
    )
    .map_err(|source| ScenarioError::Write { path: body, source })?;
    crate::scenario::pin_self(s.load_core);
    progress.note(&format!("{}: starting services", s.name));
    // Declared before `running` so the services are killed before their namespaces go.
    let env = Env::new(s, opts.clone())?;
    let mut running = Vec::new();
    for svc in &s.services {
        running.push(crate::scenario::start(s, svc, workdir, &env)?);
    }
    std::thread::sleep(Duration::from_millis(500));
    check_all_enforce(s, &env, workdir)?;
    let idle = measure_idle(s, &env, &running, progress)?;
    let rounds = run_rounds(s, &env, &running, workdir, &opts, progress)?;
    for r in &mut running {
        if let Some(status) = r.exited() {
            return Err(ScenarioError::NotReady {
                name: r.name.clone(),
                detail: format!("exited during the run with {status}"),
                log: workdir.join(format!("{}.log", r.name)),
            });
        }
    }
    Ok(ScenarioResult {
        name: s.name.clone(),
        groups: rounds.groups,
        idle,
        externals: rounds.externals,
        rounds: rounds.loads,
        configs: running
            .iter()
            .filter_map(|r| {
                Some(ShownConfig {
                    service: r.name.clone(),
                    text: r.config.clone()?,
                })
            })
            .collect(),
        notes: s.notes.clone(),
    })
}
