//! `tollgate-demo`: the real thing on one machine, on its embedded default scenario (`deploy/examples/demo.yaml`).
//!
//! Creates a node and one pod per endpoint (network namespace + cgroup, real nginx inside), starts
//! `tollgate run --redirect ebpf` with the example policy (eBPF programs attached to the pods' cgroups, maps pinned),
//! sends real curl requests from inside the pods, and prints each answer and the flow log. Everything it created is
//! removed when it exits (an interrupted run is swept by the next one).

use std::process::ExitCode;

use anyhow::Result;
use tollgate_e2e::scenario::{CaseFile, EbpfScenario, HTTP_PORT, compact};
use tollgate_e2e::{require_root, require_tool};

const SCENARIO: &str = include_str!("../../../deploy/examples/demo.yaml");

fn main() -> ExitCode {
    match demo() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tollgate-demo: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn demo() -> Result<bool> {
    require_root();
    let case = CaseFile::parse("deploy/examples/demo.yaml", SCENARIO)?;
    println!(
        "== building node + {} pods (netns + cgroup, nginx in each)",
        case.endpoints.len()
    );
    let mut sc = EbpfScenario::new(case)?;
    for (key, pod) in &sc.pods {
        println!(
            "   pod {key:<16} ip {:<10} cgroup {}",
            pod.ip,
            pod.cgroup.path().display()
        );
    }
    println!("\n== starting tollgate run --redirect ebpf (policy: deploy/examples/demo.yaml)");
    sc.start_proxy()?;
    let any_pod = sc.pods.values().next().expect("the scenario has pods");
    let bpftool = require_tool("bpftool");
    let attached = std::process::Command::new(bpftool)
        .args(["cgroup", "show"])
        .arg(any_pod.cgroup.path())
        .output()?;
    println!("   eBPF programs on pod {}'s cgroup:", any_pod.name);
    for line in String::from_utf8_lossy(&attached.stdout).lines() {
        println!("     {line}");
    }

    println!("\n== requests (curl inside the pods; getpeername shows the real server)");
    let mut ok = true;
    let cases = sc.case.cases.clone();
    for c in &cases {
        let from = c["from"].as_str().unwrap_or_default();
        let to = c["to"].as_str().unwrap_or_default();
        let method = c["http"]["method"].as_str().unwrap_or("GET");
        let path = c["http"]["path"].as_str().unwrap_or("/");
        let expect = c["expect"].as_str().unwrap_or_default();
        let mut args = vec!["-X".to_string(), method.to_string()];
        if let Some(h) = c["http"]["headers"].as_mapping() {
            for (k, v) in h {
                args.push("-H".into());
                args.push(format!(
                    "{}: {}",
                    k.as_str().unwrap_or_default(),
                    v.as_str().unwrap_or_default()
                ));
            }
        }
        args.push(format!("http://{}:{HTTP_PORT}{path}", sc.pod(to).ip));
        let out = sc.curl(from, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let code: u16 = text
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let got = if code == 200 { "allow" } else { "deny" };
        let mark = if got == expect { "ok " } else { "BAD" };
        ok &= got == expect;
        println!(
            "   {mark} {from:<14} -> {to} {method:<6} {path:<16} => {code} (peer {}) expected {expect}",
            text.split_whitespace().nth(1).unwrap_or("-")
        );
    }
    let frontend = sc.pod("shop/frontend").ip;
    let out = sc.curl(
        "shop/api",
        &[&format!("http://{frontend}:{HTTP_PORT}/no-l7-policy-here")],
    )?;
    println!(
        "   ok  shop/api       -> shop/frontend GET /no-l7-policy-here => {} (no L7 policy: bypasses the proxy, no flow)",
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("?")
    );

    std::thread::sleep(std::time::Duration::from_millis(300));
    println!("\n== flow log ({})", sc.flow_path().display());
    for f in sc.flows() {
        println!("   {}", compact(&f));
    }
    println!("\n== cleaning up (proxy, pinned maps, pods, namespaces, cgroups)");
    Ok(ok)
}
