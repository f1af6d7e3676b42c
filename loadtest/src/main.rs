//! `tollgate-load`: the binary's edge. Parses the command line, runs one load, prints JSON and a Markdown row.

use std::time::Duration;

use clap::Parser;
use tollgate_load::engine::{Mode, RunSpec, run};
use tollgate_load::http::{HttpClient, HttpTarget, HttpVersion};
use tollgate_load::report::{Row, markdown};

/// Load an HTTP target at a constant rate (open loop, latency from intended send time) or as fast as it answers.
#[derive(Debug, Parser)]
#[command(name = "tollgate-load", version)]
struct Args {
    /// Target URL (http:// only; --h2 speaks HTTP/2 with prior knowledge).
    #[arg(long)]
    url: hyper::Uri,
    /// Speak HTTP/2 (h2c prior knowledge) instead of HTTP/1.1.
    #[arg(long)]
    h2: bool,
    /// Requests per second (open loop). Without it, closed loop: --connections workers as fast as answers come.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of load, warm-up included (bounded: at most 3600).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds at the start whose requests are not recorded.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Connections to the target.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Request body bytes (0: GET; more: POST).
    #[arg(long, default_value_t = 0)]
    payload: usize,
    /// Name of this target in the Markdown row.
    #[arg(long, default_value = "target")]
    name: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.duration > 0.0 && args.duration <= 3600.0,
        "--duration must be in (0, 3600] seconds"
    );
    anyhow::ensure!(
        args.warmup >= 0.0 && args.warmup < args.duration,
        "--warmup must be shorter than --duration"
    );
    if let Some(rate) = args.rate {
        anyhow::ensure!(
            rate > 0.0 && rate <= 1_000_000.0,
            "--rate must be in (0, 1000000]"
        );
    }
    let client = HttpClient::new(HttpTarget {
        url: args.url.clone(),
        version: if args.h2 {
            HttpVersion::Http2
        } else {
            HttpVersion::Http1
        },
        connections: args.connections,
        payload: args.payload,
    })?;
    let spec = RunSpec {
        mode: match args.rate {
            Some(rate) => Mode::OpenLoop { rate },
            None => Mode::ClosedLoop {
                workers: args.connections,
            },
        },
        duration: Duration::from_secs_f64(args.duration),
        warmup: Duration::from_secs_f64(args.warmup),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(client, spec));
    let json = serde_json::json!({
        "target": args.name,
        "url": args.url.to_string(),
        "spec": spec,
        "dispatch_rps": result.dispatch_rps,
        "summary": result.summary,
    });
    println!("{}", serde_json::to_string_pretty(&json)?);
    eprint!(
        "{}",
        markdown(&[Row {
            name: &args.name,
            summary: &result.summary,
        }])
    );
    Ok(())
}
