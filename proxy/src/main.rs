//! `tollgate`: the binary's edge. Parses the command line and hands off to the library; nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The data path makes many small, short-lived allocations per request on every runtime thread: mimalloc's
/// thread-local free lists serve them cheaper than glibc malloc's arenas, and return freed pages to the system.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Sidecar-less L7 policy proxy for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node proxy daemon (standalone mode: policy and endpoints from files, hot-reloaded).
    Run(Box<tollgate::config::RunArgs>),
    /// Check policies offline.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Show flows from a running daemon's Observer API (like `hubble observe`).
    Observe(Box<tollgate::observe_cli::ObserveArgs>),
    /// The cluster-wide Observer: every node's flows merged in time order (like Hubble relay).
    Relay(Box<tollgate::relay::RelayArgs>),
    /// Print the CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy CRDs (for clusters without Cilium).
    Crds,
    /// Development CA: create a CA and issue SPIFFE X.509-SVIDs (demo and tests; not for production).
    #[command(subcommand)]
    Certs(tollgate::certs_cli::CertsCommand),
    /// The local daemon's state over its admin socket: redirect mode, programs, maps, policy generation, listeners,
    /// tunnel, flow ring (with --server: an Observer's or relay's node count).
    Status(tollgate::operator_cli::StatusArgs),
    /// Endpoints the local daemon knows: identity, labels, enforcement, L7 ports.
    #[command(subcommand)]
    Endpoint(tollgate::operator_cli::EndpointCommand),
    /// The local daemon's pinned eBPF maps, readable.
    #[command(subcommand)]
    Bpf(tollgate::operator_cli::BpfCommand),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// The local daemon's effective rules per endpoint, with the policy objects they come from.
    Get(tollgate::operator_cli::PolicyGetArgs),
    /// Trace a connection (and request) through the LIVE daemon's policy: verdict and the rule or reason
    /// (exit code 0 allowed, 1 denied).
    Trace(Box<tollgate::operator_cli::TraceArgs>),
    /// Run conformance case files (policies + endpoints + expected verdicts); ends with `N passed, N failed`.
    Test {
        /// Case files or directories of `*.yaml` case files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Validate policy files or directories; prints every error with file, document, field path and reason.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

/// Transparent huge pages off before anything allocates, mimalloc's own start-up included (`allocator.rs`: huge
/// pages made an idle daemon's memory several times what it holds). An `.init_array` entry runs before `main`; its
/// priority 100 runs before mimalloc's constructor (101): the arena mimalloc maps then never gets a huge page.
#[used]
#[unsafe(link_section = ".init_array.00100")]
static SMALL_PAGES_FIRST: extern "C" fn() = small_pages_first;

extern "C" fn small_pages_first() {
    // Errors are reported by `main` (nothing may print this early).
    let _ = tollgate::allocator::small_pages_only();
}

fn main() -> ExitCode {
    if !tollgate::allocator::transparent_huge_pages_disabled() {
        eprintln!(
            "tollgate: transparent huge pages stay on (prctl refused): idle memory will be higher"
        );
    }
    let cli = Cli::parse();
    let ok = match cli.command {
        Command::Run(args) => return run_daemon(*args),
        Command::Observe(args) => return observe(*args),
        Command::Status(args) => return status(args),
        Command::Endpoint(cmd) => tollgate::operator_cli::endpoint(cmd),
        Command::Bpf(cmd) => tollgate::operator_cli::bpf(cmd),
        Command::Policy(PolicyCommand::Get(args)) => tollgate::operator_cli::policy_get(args),
        Command::Policy(PolicyCommand::Trace(args)) => tollgate::operator_cli::policy_trace(*args),
        Command::Relay(args) => return relay(*args),
        Command::Crds => match tollgate::kubernetes::crd::manifests() {
            Ok(yaml) => {
                print!("{yaml}");
                Ok(true)
            }
            Err(e) => Err(anyhow::anyhow!("rendering the CRDs: {e}")),
        },
        Command::Certs(cmd) => tollgate::certs_cli::run(cmd),
        Command::Policy(PolicyCommand::Test { files }) => tollgate::policy_cli::test(&files),
        Command::Policy(PolicyCommand::Validate { paths }) => {
            tollgate::policy_cli::validate(&paths)
        }
    };
    match ok {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("tollgate: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr (`TOLLGATE_LOG` filter, default info), the allocator tuned for a long-running process
/// (`allocator.rs`) and the runtime, for the long-running commands: `threads` workers (default: the CPUs this
/// process may run on), or one thread for everything when that is one.
fn daemon_runtime(threads: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    tollgate::allocator::start_purger();
    let threads = threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        usize::from,
    );
    tracing::debug!(threads, "runtime worker threads");
    if threads == 1 {
        // Only `spawn_blocking` threads are started (file reads and the like), under their own name.
        tokio::runtime::Builder::new_current_thread()
            .thread_name("tollgate-blocking")
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

fn run_daemon(args: tollgate::config::RunArgs) -> ExitCode {
    let runtime = daemon_runtime(args.worker_threads);
    block_on_edge(runtime, "tollgate", tollgate::run::run(args))
}

fn relay(args: tollgate::relay::RelayArgs) -> ExitCode {
    let runtime = daemon_runtime(None);
    block_on_edge(runtime, "tollgate relay", tollgate::relay::run(args))
}

/// A single-threaded runtime, for the short-lived client commands.
fn client_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn observe(args: tollgate::observe_cli::ObserveArgs) -> ExitCode {
    let run = tollgate::observe_cli::run(args);
    block_on_edge(client_runtime(), "tollgate observe", run)
}

fn status(args: tollgate::operator_cli::StatusArgs) -> ExitCode {
    let run = tollgate::operator_cli::status(args);
    block_on_edge(client_runtime(), "tollgate status", run)
}

/// Runs a command's future on `runtime` and turns the outcome into the exit code (2 with the error on stderr).
fn block_on_edge(
    runtime: std::io::Result<tokio::runtime::Runtime>,
    what: &str,
    fut: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("{what}: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{what}: {err:#}");
            ExitCode::from(2)
        }
    }
}
