//! `tollgate-demo` end to end, as root: the binary `./dev demo` runs, on its embedded scenario
//! (deploy/examples/demo.yaml). It must exit 0 and show, for every protocol, an allowed and a denied request
//! answered as the case file expects (the demo itself exits 1 when a client's answer differs and 2 when a step
//! cannot run); `tollgate status` and the flow table must be in its output; nothing it created may be left behind.
//! With `--keep` it must serve the web UI and the Observer API on the host until SIGTERM, then clean up and exit 0.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tollgate_e2e::{built_binary, require_root, require_tool, tollgate_bin};

/// Every protocol the demo covers, as its verdict lines label them.
const PROTOCOLS: &[&str] = &["HTTP", "gRPC", "DNS", "toFQDNs", "Kafka"];

fn assert_verdicts(out: &str) {
    assert!(
        !out.contains("   BAD ["),
        "a case got the wrong verdict:\n{out}"
    );
    for p in PROTOCOLS {
        for v in ["allowed", "denied "] {
            let line = format!("   ok  [{p}] {v}");
            assert!(
                out.contains(&line),
                "no `{line}` line in the demo's output:\n{out}"
            );
        }
    }
    for shown in [
        "Redirect mode:   ebpf",
        "Pinned maps:",
        "Kafka request produce",
        "DNS Query",
    ] {
        assert!(
            out.contains(shown),
            "`{shown}` missing from the demo's output:\n{out}"
        );
    }
}

/// Nothing named after the demo's PID is left: namespaces, cgroups, pinned maps.
fn assert_cleaned_up(pid: u32) {
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left: Vec<String> = String::from_utf8_lossy(&netns.stdout)
        .lines()
        .filter(|l| l.contains(&format!("-{pid}-")))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let cgroups = Path::new(tollgate_e2e::CGROUP2_ROOT).join(tollgate_e2e::CGROUP_TEST_DIR);
    for entry in std::fs::read_dir(&cgroups).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        assert!(
            !name.starts_with(&format!("{pid}-")),
            "cgroup left behind: {name}"
        );
    }
    for entry in std::fs::read_dir("/sys/fs/bpf").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        assert!(
            !name.starts_with(&format!("tollgate-test-{pid}-")),
            "pinned maps left behind: {name}"
        );
    }
}

#[test]
fn demo_shows_allowed_and_denied_for_every_protocol_and_cleans_up() {
    require_root();
    let child = Command::new(built_binary("tollgate-demo"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tollgate-demo");
    let pid = child.id();
    let out = child.wait_with_output().expect("tollgate-demo output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the demo failed ({}):\n{text}",
        out.status
    );
    assert_verdicts(&text);
    assert_cleaned_up(pid);
}

/// Stops a `--keep` demo with SIGTERM when the test fails half-way (so it cleans up), and waits for it.
struct Stopper(Child);

impl Drop for Stopper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: signalling our own child by PID.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
}

#[test]
fn demo_keep_serves_ui_and_observer_until_sigterm() {
    require_root();
    let curl = require_tool("curl");
    let mut child = Stopper(
        Command::new(built_binary("tollgate-demo"))
            .arg("--keep")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("tollgate-demo --keep"),
    );
    let child = &mut child.0;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    // The last line the demo prints before it waits.
    while !seen.contains("   status        ") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push_str(&(line + "\n")),
            Err(_) => {
                panic!("the demo never reached its --keep state:\n{seen}");
            }
        }
    }
    assert_verdicts(&seen);
    let find = |prefix: &str| {
        seen.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(prefix)
                    .map(str::trim)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| panic!("no `{prefix}` line:\n{seen}"))
    };
    // The UI page and the Observer API answer on the host addresses the demo printed.
    let ui = find("open");
    let page = Command::new(&curl)
        .args(["-sS", "--max-time", "5", &ui])
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&page.stdout);
    assert!(
        page.contains("<html") || page.contains("<!doctype"),
        "UI page at {ui}: {page}"
    );
    let hubble = find("hubble");
    let server = hubble.split_whitespace().nth(3).expect("--server ADDR");
    let flows = Command::new(tollgate_bin())
        .args(["observe", "--server", server, "--last", "200"])
        .output()
        .unwrap();
    let flows = String::from_utf8_lossy(&flows.stdout);
    assert!(
        flows.contains("TOPIC_AUTHORIZATION_FAILED"),
        "observe via {server}:\n{flows}"
    );

    // SAFETY: signalling our own child by PID.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not exit within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "the demo's exit after SIGTERM: {status}");
    assert_cleaned_up(pid);
}
