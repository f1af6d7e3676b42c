//! The daemon's own memory at cluster scale (issue 21): `tollgate run --kubernetes` against the test API server
//! (a separate process, so its copy of the objects is not counted) serving the scale bench's cluster: 20,000 pods
//! on 100 nodes, 1,000 CiliumNetworkPolicies, 100 namespaces (`proxy/tests/support/scale.rs`). Its RSS is read from
//! /proc once the first full list is compiled and the RSS has settled. A benchmark, not a CI test (a release
//! daemon needs ~1 s to compile that list, a debug one much longer): `./dev bench` runs it against the release
//! binary (`TOLLGATE_BIN`) and the report shows the figure (`TOLLGATE_SCALE_DAEMON_RSS_OUT`). Goal: <= 150 MB.

#[allow(dead_code)]
#[path = "../../proxy/tests/support/scale.rs"]
mod scale;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tollgate_e2e::{ChildGuard, TempDir, built_binary, status_kib, tollgate_bin};

const PODS: usize = 20_000;
const APPS: usize = 1_000;
const GOAL_MIB: f64 = 150.0;

fn rss_mib(pid: u32) -> f64 {
    status_kib(pid, "VmRSS") as f64 / 1024.0
}

/// The RSS once two samples a second apart are within 1% (at most 30 s).
fn settled_rss_mib(pid: u32) -> f64 {
    let mut last = rss_mib(pid);
    for _ in 0..30 {
        std::thread::sleep(Duration::from_secs(1));
        let now = rss_mib(pid);
        if (now - last).abs() <= last / 100.0 {
            return now;
        }
        last = now;
    }
    last
}

#[test]
#[ignore = "benchmark: `./dev bench` runs it against the release binary"]
fn daemon_rss_with_20000_pods_and_1000_policies() {
    let dir = TempDir::new("k8s-scale").unwrap();
    let fixtures = dir.path().join("fixtures");
    std::fs::create_dir_all(&fixtures).unwrap();
    scale::write_fixtures(&fixtures, PODS, APPS);
    let mut cmd = Command::new(built_binary("tollgate-fake-apiserver"));
    cmd.arg(&fixtures).stdout(Stdio::piped());
    let mut apiserver = ChildGuard::spawn(&mut cmd).unwrap();
    let mut url = String::new();
    let stdout = apiserver.child_mut().stdout.take().unwrap();
    BufReader::new(stdout).read_line(&mut url).unwrap();
    let kubeconfig = dir
        .write(
            "kubeconfig",
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n\
                 users:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
                 current-context: test\n",
                url.trim()
            ),
        )
        .unwrap();
    let stderr_path = dir.path().join("tollgate.stderr");
    let mut cmd = Command::new(tollgate_bin());
    cmd.args(["run", "--kubernetes", "--node-name", "node-0"])
        .args(["--redirect", "so-original-dst", "--listen", "127.0.0.1:0"])
        .arg("--handoff-socket")
        .arg(dir.path().join("handoff.sock"))
        .arg("--admin-socket")
        .arg(dir.path().join("admin.sock"))
        .env("KUBECONFIG", &kubeconfig)
        .env("TOLLGATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let start = Instant::now();
    let mut daemon = ChildGuard::spawn(&mut cmd).unwrap();
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    while !stderr().contains("tollgate proxy ready") {
        let exited = daemon.child_mut().try_wait().unwrap();
        assert!(
            exited.is_none(),
            "tollgate exited: {exited:?}\n{}",
            stderr()
        );
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "not ready after 300 s:\n{}",
            stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready = start.elapsed();
    let pid = daemon.child_mut().id();
    let rss = settled_rss_mib(pid);
    eprintln!(
        "kubernetes_scale_daemon: tollgate run --kubernetes with {PODS} pods and {APPS} policies: ready after \
         {:.1} s, RSS {rss:.0} MiB (goal <= {GOAL_MIB:.0})",
        ready.as_secs_f64()
    );
    if let Ok(path) = std::env::var("TOLLGATE_SCALE_DAEMON_RSS_OUT") {
        std::fs::write(path, format!("{rss:.1}\n")).unwrap();
    }
    assert!(
        rss <= GOAL_MIB,
        "daemon RSS {rss:.0} MiB over {GOAL_MIB} MiB"
    );
}
