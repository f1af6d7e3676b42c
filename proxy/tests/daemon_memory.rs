//! The daemon's allocator settings, read from the running binary (`allocator.rs`, `main.rs`): transparent huge
//! pages off from before `main` (no anonymous huge page at all, mimalloc's first arena included) and the purger
//! thread running. A daemon with huge pages on held 16 of its 17.5 MiB of anonymous memory in them while idle.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: memory, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: \"8090\", protocol: TCP}]
          rules:
            http:
              - {method: GET, path: \"/ok\"}
";

const ENDPOINTS: &str = "endpoints:
  - {name: client, namespace: default, labels: {app: client}, ip: 10.0.1.10}
  - {name: server, namespace: default, labels: {app: server}, ip: 10.0.1.20}
";

/// Kills the daemon when the test ends, passed or not.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &std::path::Path) -> Daemon {
    std::fs::write(dir.join("policy.yaml"), POLICY).unwrap();
    std::fs::write(dir.join("endpoints.yaml"), ENDPOINTS).unwrap();
    let arg = |name: &str| dir.join(name).display().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "run",
            "--redirect",
            "so-original-dst",
            "--listen",
            "127.0.0.1:0",
        ])
        .args([
            "--policy",
            &arg("policy.yaml"),
            "--endpoints",
            &arg("endpoints.yaml"),
        ])
        .args(["--handoff-socket", &arg("handoff.sock")])
        .args(["--admin-socket", &arg("admin.sock")])
        .env("TOLLGATE_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tollgate run");
    let stderr = child.stderr.take().unwrap();
    let daemon = Daemon(child);
    let ready = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("tollgate proxy ready"));
    assert!(ready, "tollgate run ended before it was ready");
    daemon
}

fn status_field(pid: u32, file: &str, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/{file}"))
        .trim()
        .to_string()
}

fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn the_daemon_runs_without_huge_pages_and_with_its_purger() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path());
    let pid = daemon.0.id();
    assert_eq!(status_field(pid, "status", "THP_enabled:"), "0");
    assert_eq!(
        status_field(pid, "smaps_rollup", "AnonHugePages:"),
        "0 kB",
        "huge pages faulted before the switch (mimalloc's first arena)"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !thread_names(pid).iter().any(|n| n == "tollgate-purge") {
        assert!(
            Instant::now() < deadline,
            "no tollgate-purge thread: {:?}",
            thread_names(pid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
