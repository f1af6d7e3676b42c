//! `tollgate-load` CLI: `run` measures one target, `report` renders saved JSON results as a Markdown table.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tollgate_load::client::{Protocol, Target};
use tollgate_load::engine::{self, Mode, RunConfig};
use tollgate_load::kube_scale;
use tollgate_load::progress::Progress;
use tollgate_load::quiet::{self, Gate, Verdict};
use tollgate_load::report::{self, RunResult, ScenarioResult};
use tollgate_load::runner;
use tollgate_load::scenario::{self, Scenario};
use tollgate_load::tunnel_bench;

#[derive(Debug, Parser)]
#[command(
    name = "tollgate-load",
    about = "Open-loop / closed-loop load for HTTP/1.1, HTTP/2, gRPC unary, DNS and Kafka produce"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Measure one target; prints a Markdown row, optionally writes the JSON result.
    Run(RunArgs),
    /// Render saved JSON results (first = baseline) as a Markdown table.
    Report { files: Vec<PathBuf> },
    /// Run a scenario file: start backend and peers pinned to cores, load every target, write
    /// OUT/results.json and OUT/summary.md.
    Scenario {
        /// Scenario files, run one after the other; each gets OUT/<name>/ and a section in the summary.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, default_value = "loadtest-out")]
        out: PathBuf,
        /// Directory for the SVG percentile curves (one per scenario and mode); linked from the summary by this
        /// path as given, so pass it relative to where the summary is read.
        #[arg(long)]
        plots: Option<PathBuf>,
        /// Also write the summary as a standalone BENCHMARKS.md-style document here.
        #[arg(long)]
        benchmarks: Option<PathBuf>,
        /// The reproduce command to print in the document (defaults to this scenario run).
        #[arg(long)]
        command: Option<String>,
        /// The tollgate binary for `kind = "tollgate"` services (default: `tollgate` next to this executable).
        #[arg(long)]
        tollgate_bin: Option<PathBuf>,
        /// Rounds per scenario (overrides the scenario's `rounds`, default 3).
        #[arg(long)]
        rounds: Option<usize>,
        /// The quiet-machine threshold: the 1-minute load average before the start and the other runnable tasks
        /// between rounds must not exceed it, or BENCHMARKS.md is not written.
        #[arg(long, default_value_t = quiet::DEFAULT_MAX_LOAD)]
        max_load: f64,
        /// Write BENCHMARKS.md even from a busy machine, with a bold NOT PUBLISHABLE line above every table.
        #[arg(long)]
        allow_busy: bool,
        /// Criterion's output directory (`target/criterion`) after a run of the `kubernetes_scale` bench: adds the
        /// "Kubernetes scale" section from its estimates and RSS reading.
        #[arg(long)]
        kubernetes_scale: Option<PathBuf>,
        /// The rounds `tests/tests/tunnel_bench.rs` wrote (`TOLLGATE_TUNNEL_BENCH_OUT`): adds the "mTLS tunnel (two
        /// hops)" section.
        #[arg(long)]
        tunnel_bench: Option<PathBuf>,
    },
}

/// The `scenario` subcommand's arguments.
struct ScenarioArgs {
    files: Vec<PathBuf>,
    out: PathBuf,
    plots: Option<PathBuf>,
    benchmarks: Option<PathBuf>,
    command: Option<String>,
    opts: scenario::RunOptions,
    max_load: f64,
    allow_busy: bool,
    kubernetes_scale: Option<PathBuf>,
    tunnel_bench: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Address to connect to (the backend, tollgate's redirect target, a peer proxy, a DNS server, a Kafka broker).
    #[arg(long)]
    target: SocketAddr,
    /// Host header / :authority.
    #[arg(long, default_value = "backend")]
    authority: String,
    /// Request path; for Kafka the topic.
    #[arg(long, default_value = "/")]
    path: String,
    #[arg(long, value_enum, default_value = "http1")]
    protocol: Protocol,
    /// Requests per second (open loop). Omit for closed-loop maximum throughput.
    #[arg(long)]
    rate: Option<f64>,
    /// Total run time in seconds, warm-up included.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds at the start that are sent but not recorded.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    #[arg(long, default_value_t = 4)]
    connections: u64,
    /// Request body bytes (0 = GET for HTTP).
    #[arg(long, default_value_t = 0)]
    payload: usize,
    /// Name of this row in reports.
    #[arg(long, default_value = "target")]
    label: String,
    /// Write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn secs(v: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .with_context(|| format!("{flag} {v} is not a non-negative number of seconds"))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(a) => {
            let duration = secs(a.duration, "--duration")?;
            let mode = match a.rate {
                Some(rate) => Mode::Open { rate, duration },
                None => Mode::Closed { duration },
            };
            let cfg = RunConfig {
                target: Target {
                    addr: a.target,
                    authority: a.authority,
                    path: a.path,
                    protocol: a.protocol,
                    payload: a.payload,
                },
                mode,
                connections: a.connections,
                warmup: secs(a.warmup, "--warmup")?,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let rec = rt.block_on(engine::run(&cfg))?;
            let result = RunResult {
                label: a.label,
                mode: match a.rate {
                    Some(r) => format!("open@{r}rps"),
                    None => "closed".into(),
                },
                round: 0,
                connections: a.connections,
                payload: a.payload,
                response_bytes: 0,
                protocol: format!("{:?}", a.protocol).to_lowercase(),
                summary: rec.summary().into(),
                proxy: None,
            };
            if let Some(path) = &a.json {
                std::fs::write(path, serde_json::to_vec_pretty(&result)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            print!("{}", report::markdown(&[result]));
        }
        Cmd::Report { files } => {
            let mut results = Vec::new();
            for f in &files {
                let text =
                    std::fs::read(f).with_context(|| format!("reading result {}", f.display()))?;
                results.push(serde_json::from_slice::<RunResult>(&text).with_context(|| {
                    format!("{} is not a tollgate-load JSON result", f.display())
                })?);
            }
            print!("{}", report::markdown(&results));
        }
        Cmd::Scenario {
            files,
            out,
            plots,
            benchmarks,
            command,
            tollgate_bin,
            rounds,
            max_load,
            allow_busy,
            kubernetes_scale,
            tunnel_bench,
        } => scenario_cmd(ScenarioArgs {
            files,
            out,
            plots,
            benchmarks,
            command,
            opts: scenario::RunOptions {
                tollgate_bin,
                rounds,
                load_window: Duration::from_secs(1),
            },
            max_load,
            allow_busy,
            kubernetes_scale,
            tunnel_bench,
        })?,
    }
    Ok(())
}

/// Runs the scenario files, renders the report, and writes BENCHMARKS.md only when the load gate allows it.
fn scenario_cmd(a: ScenarioArgs) -> anyhow::Result<()> {
    let out =
        std::path::absolute(&a.out).with_context(|| format!("resolving {}", a.out.display()))?;
    let initial = quiet::sample(10, Duration::from_secs(1)).context("reading /proc/loadavg")?;
    let mut gate = Gate::new(a.max_load, a.allow_busy, initial.one_min);
    gate.record(initial);
    eprintln!(
        "tollgate-load: 1-minute load {:.2}, {:.1} other runnable tasks (threshold {:.2})",
        initial.one_min, initial.runnable_others, a.max_load
    );
    if let Verdict::BusyRefused(why) = gate.verdict()
        && a.benchmarks.is_some()
    {
        eprintln!(
            "tollgate-load: NOT PUBLISHABLE: {why}; the results will be printed but not written to BENCHMARKS.md \
             (stop builds and tests and re-run, or pass --allow-busy)"
        );
    }
    let mut md = String::new();
    let mut progress = Progress::new();
    for file in &a.files {
        let s = Scenario::load(file)?;
        let dir = out.join(&s.name);
        let result = runner::run(&s, &dir.join("work"), a.opts.clone(), &mut progress)?;
        for l in &result.rounds {
            gate.record(l.before);
            gate.record(l.after);
        }
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_vec_pretty(&result)?,
        )
        .with_context(|| format!("writing {}/results.json", dir.display()))?;
        let command = a
            .command
            .clone()
            .unwrap_or_else(|| format!("tollgate-load scenario {}", file.display()));
        let link = a.plots.clone().unwrap_or_else(|| dir.clone());
        md.push_str(&section(
            &s,
            file,
            &command,
            &result,
            &plot_dir(&a, &out, &link),
            &link,
        )?);
    }
    drop(progress);
    if let Some(dir) = &a.kubernetes_scale {
        let (medians, rss, daemon_rss) = kube_scale::read(dir)?;
        md.push_str(&kube_scale::markdown(&medians, rss, daemon_rss));
    }
    if let Some(path) = &a.tunnel_bench {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading {} (run tests/tests/tunnel_bench.rs with TOLLGATE_TUNNEL_BENCH_OUT; ./dev bench does)",
                path.display()
            )
        })?;
        let rounds =
            tunnel_bench::parse(&text).with_context(|| format!("parsing {}", path.display()))?;
        md.push_str(&tunnel_bench::markdown(&rounds));
    }
    let verdict = gate.verdict();
    if let Some(banner) = verdict.banner() {
        md = quiet::mark_tables(&md, &banner);
    }
    std::fs::write(out.join("summary.md"), &md)
        .with_context(|| format!("writing {}/summary.md", out.display()))?;
    print!("{md}");
    let Some(path) = &a.benchmarks else {
        return Ok(());
    };
    let machine = match &verdict {
        Verdict::Quiet => report::machine_line(a.max_load, gate.worst()),
        Verdict::BusyAllowed(why) => {
            format!("**NOT PUBLISHABLE: {why}; written because of --allow-busy.**")
        }
        Verdict::BusyRefused(why) => anyhow::bail!(
            "NOT PUBLISHABLE: {why}; not writing {}. Re-run on a quiet machine (stop builds and tests), or pass \
             --allow-busy to write it marked as not publishable",
            path.display()
        ),
    };
    std::fs::write(path, report::benchmarks_document(&md, &machine))
        .with_context(|| format!("writing {}", path.display()))?;
    if let Some(plots) = &a.plots {
        publish_plots(&out.join("plots"), plots)?;
    }
    Ok(())
}

/// Where plots are drawn: with `--benchmarks` and `--plots`, a staging directory under `out` (they replace the
/// published ones only when BENCHMARKS.md is written, so a refused busy run leaves both untouched); else `link`.
fn plot_dir(a: &ScenarioArgs, out: &std::path::Path, link: &std::path::Path) -> PathBuf {
    match (&a.benchmarks, &a.plots) {
        (Some(_), Some(_)) => out.join("plots"),
        _ => link.to_path_buf(),
    }
}

/// Replaces the SVGs in `dest` with the staged ones.
fn publish_plots(staged: &std::path::Path, dest: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let svgs = |dir: &std::path::Path| -> anyhow::Result<Vec<PathBuf>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "svg") {
                v.push(p);
            }
        }
        Ok(v)
    };
    for old in svgs(dest)? {
        std::fs::remove_file(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    for new in svgs(staged)? {
        let to = dest.join(new.file_name().unwrap_or_default());
        std::fs::copy(&new, &to)
            .with_context(|| format!("copying {} to {}", new.display(), to.display()))?;
    }
    Ok(())
}

/// One scenario's part of the report: configurations, headline, external generators, idle memory, load per
/// round, and the full tables with plots (plots show the last round).
fn section(
    s: &Scenario,
    file: &std::path::Path,
    command: &str,
    result: &ScenarioResult,
    plots: &std::path::Path,
    link: &std::path::Path,
) -> anyhow::Result<String> {
    let mut md = format!(
        "## {}\n\nReproduce: `{command}` (scenario `{}`)\n\n",
        s.name,
        file.display()
    );
    md.push_str(&report::headlines(result));
    md.push_str(&report::external_markdown(result));
    if result.idle.iter().any(|i| i.connections > 0) {
        md.push_str(&report::idle_markdown(&result.idle));
    }
    md.push_str(&report::rounds_markdown(result));
    md.push_str(&report::configs_markdown(result));
    std::fs::create_dir_all(plots).with_context(|| format!("creating {}", plots.display()))?;
    let last = result
        .groups
        .iter()
        .flatten()
        .map(|r| r.round)
        .max()
        .unwrap_or(0);
    let last_round: Vec<Vec<RunResult>> = result
        .groups
        .iter()
        .map(|g| g.iter().filter(|r| r.round == last).cloned().collect())
        .collect();
    for (g, shown) in result.groups.iter().zip(&last_round) {
        md.push_str(&report::markdown(g));
        if let Some(first) = shown.first() {
            let svg = plots.join(format!("{}-{}.svg", s.name, first.mode));
            let title = format!(
                "{} {}: latency by percentile (round {last})",
                s.name, first.mode
            );
            tollgate_load::plot::percentile_curves(&svg, &title, shown)?;
            let shown = link.join(svg.file_name().unwrap_or_default());
            md.push_str(&format!("\n![{title}]({})\n", shown.display()));
        }
        md.push('\n');
    }
    if s.rates.len() > 1 {
        let svg = plots.join(format!("{}-latency-vs-rate.svg", s.name));
        let title = format!(
            "{}: p50 and p99 latency vs offered rate (round {last})",
            s.name
        );
        tollgate_load::plot::latency_vs_rate(&svg, &title, &last_round)?;
        let shown = link.join(svg.file_name().unwrap_or_default());
        md.push_str(&format!("![{title}]({})\n\n", shown.display()));
    }
    Ok(md)
}
