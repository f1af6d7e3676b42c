//! `tollgate-demo`: the real thing on one machine, on its embedded default scenario (`deploy/examples/demo.yaml`).
//!
//! Creates a node and one pod per endpoint (network namespace + cgroup, real nginx inside), the servers behind the
//! gRPC, DNS and Kafka rules (`backends`), starts `tollgate run --redirect ebpf` with the example policy (eBPF
//! programs attached to the pods' cgroups, maps pinned, the web UI and the Observer API on), replays every case of
//! the file as a real request from a real client (`steps`), then prints `tollgate status`, the flow table
//! (`tollgate observe`) and the UI address. With `--keep` it then stays up until Ctrl-C or SIGTERM. Everything it
//! created is removed when it exits, also when interrupted (`signals`): processes by PID, pinned maps, namespaces,
//! cgroups.
//!
//! Exit status: 0 when every case got its expected verdict, 1 when one did not, 2 when the demo could not run.

mod backends;
mod forward;
mod signals;
mod steps;

use std::net::SocketAddr;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tollgate_e2e::scenario::{CaseFile, EbpfScenario};
use tollgate_e2e::{require_root, require_tool, tollgate_bin};

use backends::Backends;
use signals::Stop;
use steps::Verdict;

const SCENARIO: &str = include_str!("../../../../deploy/examples/demo.yaml");
/// Inside the node namespace; the demo forwards a host loopback port to each.
const UI_PORT: u16 = 12000;
const OBSERVER_PORT: u16 = 4245;

fn main() -> ExitCode {
    let stop = signals::watch();
    let keep = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--keep") => true,
        Some(other) => {
            eprintln!(
                "tollgate-demo: unknown argument {other:?}; usage: tollgate-demo [--keep]  (--keep: stay up \
                 serving the UI and the Observer API until Ctrl-C or SIGTERM)"
            );
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let result = demo(keep, &stop);
    // Every guard was dropped inside `demo`: the cleanup is done by now.
    println!("   done in {:.1} s", started.elapsed().as_secs_f64());
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tollgate-demo: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn demo(keep: bool, stop: &Stop) -> Result<bool> {
    require_root();
    for tool in ["dig", "python3", "dnsmasq", "bpftool"] {
        require_tool(tool);
    }
    let case = CaseFile::parse("deploy/examples/demo.yaml", SCENARIO)?;
    println!(
        "== building node + {} pods (netns + cgroup, nginx in each)",
        case.endpoints.len()
    );
    let mut sc = EbpfScenario::new(case)?;
    for (key, pod) in &sc.pods {
        println!(
            "   pod {key:<20} ip {:<10} cgroup {}",
            pod.ip,
            pod.cgroup.path().display()
        );
    }
    stop.check()?;
    println!("\n== servers behind the gRPC, DNS and Kafka rules");
    let backends = Backends::start(&mut sc)?;
    stop.check()?;

    println!(
        "\n== starting tollgate run --redirect ebpf (policy: deploy/examples/demo.yaml), UI and Observer API on"
    );
    let mut args = sc.ebpf_args();
    args.extend([
        "--observer-listen".to_string(),
        format!("127.0.0.1:{OBSERVER_PORT}"),
        "--ui-listen".to_string(),
        format!("127.0.0.1:{UI_PORT}"),
    ]);
    sc.start_proxy_with(&args)?;
    let node_ns = sc.node.netns.name().to_string();
    let ui = forward::start(&node_ns, UI_PORT, ([127, 0, 0, 1], UI_PORT).into())?;
    let observer = forward::start(
        &node_ns,
        OBSERVER_PORT,
        ([127, 0, 0, 1], OBSERVER_PORT).into(),
    )?;
    show_attached(&sc)?;

    println!("\n== requests: every case of the file, from a real client inside its pod");
    let mut ok = true;
    for case in sc.case.cases.clone() {
        stop.check()?;
        let expect = case["expect"].as_str().unwrap_or_default();
        let o = steps::replay(&sc, &backends, &case)?;
        let want = if expect == "allow" {
            Verdict::Allowed
        } else {
            Verdict::Denied
        };
        let good = o.verdict == want;
        ok &= good;
        println!(
            "   {} [{}] {:<7} {}  => {}{}",
            if good { "ok " } else { "BAD" },
            o.protocol,
            o.verdict.word(),
            o.request,
            o.answer,
            if good {
                String::new()
            } else {
                format!("  (expected {expect})")
            }
        );
    }
    sc.assert_proxy_running()?;

    let admin_socket = sc.dir.path().join("admin.sock");
    println!(
        "\n== tollgate status --admin-socket {}",
        admin_socket.display()
    );
    show(
        Command::new(tollgate_bin())
            .arg("status")
            .arg("--admin-socket")
            .arg(&admin_socket),
    )?;

    // The flow log is written asynchronously; give the last records a moment.
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "\n== tollgate observe --server {observer} --last 100   (the flow table, from the Observer API)"
    );
    show(Command::new(tollgate_bin()).args([
        "observe",
        "--server",
        &observer.to_string(),
        "--last",
        "100",
    ]))?;

    print_addresses(ui, observer, &admin_socket, keep);
    if keep {
        while !stop.requested() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!(
        "\n== cleaning up (proxy, servers, pinned maps, pods, namespaces, cgroups; processes by PID)"
    );
    drop(backends);
    drop(sc);
    Ok(ok)
}

fn show_attached(sc: &EbpfScenario) -> Result<()> {
    let any_pod = sc.pods.values().next().expect("the scenario has pods");
    let attached = Command::new(require_tool("bpftool"))
        .args(["cgroup", "show"])
        .arg(any_pod.cgroup.path())
        .output()?;
    println!("   eBPF programs on pod {}'s cgroup:", any_pod.name);
    for line in String::from_utf8_lossy(&attached.stdout).lines() {
        println!("     {line}");
    }
    Ok(())
}

/// Runs one of the operator commands and prints its output indented; fails (naming the command) when it fails.
fn show(cmd: &mut Command) -> Result<()> {
    let out = cmd.output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("   {line}");
    }
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn print_addresses(ui: SocketAddr, observer: SocketAddr, admin: &std::path::Path, keep: bool) {
    println!(
        "\n== web UI: http://{ui}/   (tollgate run --ui-listen, forwarded from the node namespace)"
    );
    println!("   Observer API (Hubble-compatible gRPC): {observer}");
    if !keep {
        println!("   (run `./dev demo --keep` to keep the node up and browse the UI)");
        return;
    }
    println!("\n== staying up until Ctrl-C or SIGTERM. From another terminal on this machine:");
    println!("   open          http://{ui}/");
    println!("   hubble        hubble observe --server {observer} --last 50");
    println!(
        "   tollgate      {} observe --server {observer} -f",
        tollgate_bin().display()
    );
    println!(
        "   status        {} status --admin-socket {}",
        tollgate_bin().display(),
        admin.display()
    );
}
