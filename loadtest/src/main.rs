//! `tollgate-load` CLI: `run` measures one target, `report` renders saved JSON results as a Markdown table.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tollgate_load::client::{Protocol, Target};
use tollgate_load::engine::{self, Mode, RunConfig};
use tollgate_load::progress::Progress;
use tollgate_load::report::{self, RunResult};
use tollgate_load::scenario::{self, Scenario};

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
    },
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
        } => {
            let out = std::path::absolute(&out)
                .with_context(|| format!("resolving {}", out.display()))?;
            let opts = scenario::RunOptions { tollgate_bin };
            let mut md = String::new();
            let mut progress = Progress::new();
            for file in &files {
                let s = Scenario::load(file)?;
                let dir = out.join(&s.name);
                let result = scenario::run(&s, &dir.join("work"), opts.clone(), &mut progress)?;
                std::fs::write(
                    dir.join("results.json"),
                    serde_json::to_vec_pretty(&result)?,
                )
                .with_context(|| format!("writing {}/results.json", dir.display()))?;
                let command = command
                    .clone()
                    .unwrap_or_else(|| format!("tollgate-load scenario {}", file.display()));
                md.push_str(&format!(
                    "## {}\n\nReproduce: `{command}` (scenario `{}`)\n\n",
                    s.name,
                    file.display()
                ));
                md.push_str(&report::headlines(&result));
                if result.idle.iter().any(|i| i.connections > 0) {
                    md.push_str(&report::idle_markdown(&result.idle));
                }
                let plots = plots.clone().unwrap_or_else(|| dir.clone());
                std::fs::create_dir_all(&plots)
                    .with_context(|| format!("creating {}", plots.display()))?;
                for g in &result.groups {
                    md.push_str(&report::markdown(g));
                    if let Some(first) = g.first() {
                        let svg = plots.join(format!("{}-{}.svg", s.name, first.mode));
                        let title = format!("{} {}: latency by percentile", s.name, first.mode);
                        tollgate_load::plot::percentile_curves(&svg, &title, g)?;
                        md.push_str(&format!("\n![{title}]({})\n", svg.display()));
                    }
                    md.push('\n');
                }
                if s.rates.len() > 1 {
                    let svg = plots.join(format!("{}-latency-vs-rate.svg", s.name));
                    let title = format!("{}: p50 and p99 latency vs offered rate", s.name);
                    tollgate_load::plot::latency_vs_rate(&svg, &title, &result.groups)?;
                    md.push_str(&format!("![{title}]({})\n\n", svg.display()));
                }
            }
            drop(progress);
            std::fs::write(out.join("summary.md"), &md)
                .with_context(|| format!("writing {}/summary.md", out.display()))?;
            if let Some(path) = &benchmarks {
                std::fs::write(path, report::benchmarks_document(&md))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            print!("{md}");
        }
    }
    Ok(())
}
