//! A whole node from a conformance case file: one pod per endpoint (netns + cgroup), real nginx in every pod, and
//! `tollgate run --redirect ebpf` in the node netns with the case's policies and an endpoints file that enrolls every
//! pod's cgroup. Used by the eBPF end-to-end tests and by the demo (`tollgate-demo`), so both run the same thing.
//!
//! Drop order: the proxy is stopped, the pinned eBPF state removed (which detaches the programs), then the servers,
//! pods and node go.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::{
    ChildGuard, Nginx, Node, POD_GATEWAY, Pod, TempDir, conformance_dir, require_tool, tollgate_bin,
};

/// The proxy's HTTP listener port in the node.
pub const PROXY_PORT: u16 = 15001;
/// Every pod's nginx serves HTTP/1.1 here ...
pub const HTTP_PORT: u16 = 8080;
/// ... and h2c (prior knowledge) here.
pub const H2C_PORT: u16 = 8081;

/// A conformance case file (`policy-model/conformance/*.yaml`), kept as loose values: the engine parses the policies.
#[derive(Debug, Deserialize)]
pub struct CaseFile {
    pub name: String,
    pub policies: Vec<serde_yaml::Value>,
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub cases: Vec<serde_yaml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EndpointSpec {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub ip: String,
    /// The node the pod runs on (two-node tests, `mesh.rs`).
    #[serde(default)]
    pub node: Option<String>,
}

impl EndpointSpec {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl CaseFile {
    /// Loads `<name>.yaml` from the repository's conformance folder (never a copy).
    pub fn load(name: &str) -> Result<Self> {
        let path = conformance_dir().join(format!("{name}.yaml"));
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Parses a case file's text; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<Self> {
        serde_yaml::from_str(text).with_context(|| format!("parsing {origin}"))
    }

    /// The policies as one multi-document YAML file, exactly as a user would `kubectl apply` them.
    pub fn policies_yaml(&self) -> Result<String> {
        let docs: Result<Vec<String>> = self
            .policies
            .iter()
            .map(|p| serde_yaml::to_string(p).map_err(Into::into))
            .collect();
        Ok(docs?.join("---\n"))
    }
}

/// A running node built from a case file.
#[derive(Debug)]
pub struct EbpfScenario {
    /// Running proxies, oldest first (two overlap during a planned restart).
    proxies: Vec<ChildGuard>,
    /// How many times the proxy was started (its log is appended to across restarts).
    starts: usize,
    pub pin_root: PathBuf,
    pub dir: TempDir,
    pub servers: Vec<Nginx>,
    pub pods: BTreeMap<String, Pod>,
    pub node: Node,
    pub case: CaseFile,
}

impl EbpfScenario {
    /// Builds the node and pods and starts nginx in every pod; the proxy is started by [`Self::start_proxy`].
    pub fn new(case: CaseFile) -> Result<Self> {
        require_tool("nginx");
        require_tool("nsenter");
        let bpffs = Path::new("/sys/fs/bpf");
        if !is_bpffs(bpffs) {
            bail!(
                "bpffs is not mounted at /sys/fs/bpf: mount it with `mount -t bpf bpf /sys/fs/bpf` (./dev setup does)"
            );
        }
        sweep_stale_pins();
        let mut node = Node::new(&case.name)?;
        let dir = TempDir::new(&case.name)?;
        let pin_root = bpffs.join(format!(
            "tollgate-test-{}-{}",
            std::process::id(),
            crate::next_id()
        ));
        let mut pods = BTreeMap::new();
        let mut servers = Vec::new();
        let mut endpoints = String::from("endpoints:\n");
        for ep in &case.endpoints {
            let pod = node.add_pod(&ep.name, &ep.ip)?;
            servers.push(Nginx::start(&pod, HTTP_PORT, H2C_PORT)?);
            let labels: Vec<String> = ep
                .labels
                .iter()
                .map(|(k, v)| format!("{k:?}: {v:?}"))
                .collect();
            endpoints.push_str(&format!(
                "  - {{name: {}, namespace: {}, labels: {{{}}}, ip: {}, cgroup: {:?}}}\n",
                ep.name,
                ep.namespace,
                labels.join(", "),
                ep.ip,
                pod.cgroup.path().display().to_string()
            ));
            pods.insert(ep.key(), pod);
        }
        dir.write("policy.yaml", &case.policies_yaml()?)?;
        dir.write("endpoints.yaml", &endpoints)?;
        Ok(EbpfScenario {
            proxies: Vec::new(),
            starts: 0,
            pin_root,
            dir,
            servers,
            pods,
            node,
            case,
        })
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.yaml")
    }

    pub fn flow_path(&self) -> PathBuf {
        self.dir.path().join("flows.jsonl")
    }

    pub fn proxy_log_path(&self) -> PathBuf {
        self.dir.path().join("tollgate.log")
    }

    pub fn pod(&self, key: &str) -> &Pod {
        self.pods
            .get(key)
            .unwrap_or_else(|| panic!("no pod {key} in scenario {}", self.case.name))
    }

    /// Starts `tollgate run --redirect ebpf` in the node (its own cgroup, never enrolled) and waits until it serves.
    pub fn start_proxy(&mut self) -> Result<()> {
        let args = self.ebpf_args();
        self.start_proxy_with(&args)
    }

    /// The listener and redirect flags of `tollgate run --redirect ebpf` for this scenario.
    pub fn ebpf_args(&self) -> Vec<String> {
        vec![
            "--listen".to_string(),
            format!("0.0.0.0:{PROXY_PORT}"),
            "--redirect".into(),
            "ebpf".into(),
            "--proxy-address".into(),
            POD_GATEWAY.into(),
            "--bpf-pin-root".into(),
            self.pin_root.display().to_string(),
        ]
    }

    /// Starts the proxy with other listener/redirect flags (e.g. `--redirect so-original-dst` behind iptables).
    pub fn start_proxy_with(&mut self, redirect_args: &[String]) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.proxy_log_path())?;
        let mut cmd = self.node.command(tollgate_bin());
        cmd.arg("run")
            .arg("--policy")
            .arg(self.policy_path())
            .arg("--endpoints")
            .arg(self.dir.path().join("endpoints.yaml"))
            .args(redirect_args)
            .arg("--handoff-socket")
            .arg(self.dir.path().join("handoff.sock"))
            .arg("--flow-log")
            .arg(self.flow_path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = ChildGuard::spawn(&mut cmd)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.child_mut().try_wait()? {
                bail!(
                    "tollgate exited with {status} during start-up:\n{}",
                    self.proxy_log()
                );
            }
            // Logged after the listener is bound (a TCP probe would itself show up as an ERROR flow).
            if self.proxy_log().matches("tollgate proxy ready").count() > self.starts {
                break;
            }
            if Instant::now() > deadline {
                bail!("tollgate not ready after 20 s:\n{}", self.proxy_log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.proxies.push(child);
        self.starts += 1;
        Ok(())
    }

    /// Kills every running proxy hard (SIGKILL), as a crash or OOM kill would; pinned state stays.
    pub fn kill_proxy(&mut self) {
        for mut p in self.proxies.drain(..) {
            let _ = p.child_mut().kill();
            let _ = p.child_mut().wait();
        }
    }

    /// Stops the oldest running proxy with SIGTERM (it stops accepting and drains) and waits for it to exit.
    pub fn terminate_oldest_proxy(&mut self) -> Result<std::process::ExitStatus> {
        anyhow::ensure!(!self.proxies.is_empty(), "no proxy running");
        self.proxies.remove(0).terminate(Duration::from_secs(10))
    }

    /// Removes the pinned eBPF state: detaches every program from the pods (used to switch redirect mechanisms).
    pub fn remove_pins(&self) {
        let _ = fs::remove_dir_all(&self.pin_root);
    }

    /// Fails if the proxy died.
    pub fn assert_proxy_running(&mut self) -> Result<()> {
        anyhow::ensure!(!self.proxies.is_empty(), "the proxy is not started");
        for p in &mut self.proxies {
            p.assert_running().with_context(|| {
                fs::read_to_string(self.dir.path().join("tollgate.log")).unwrap_or_default()
            })?;
        }
        Ok(())
    }

    pub fn proxy_log(&self) -> String {
        fs::read_to_string(self.proxy_log_path()).unwrap_or_default()
    }

    /// Every flow record written so far (JSON lines).
    pub fn flows(&self) -> Vec<Value> {
        fs::read_to_string(self.flow_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (up to 5 s) for a flow after index `after` that satisfies `pred`.
    pub fn wait_flow(&self, after: usize, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(f) = self.flows().into_iter().skip(after).find(|f| pred(f)) {
                return Some(f);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// curl from one of the scenario's pods; see [`curl_from`].
    pub fn curl(&self, from: &str, args: &[&str]) -> Result<Output> {
        curl_from(self.pod(from), args)
    }
}

impl Drop for EbpfScenario {
    fn drop(&mut self) {
        self.kill_proxy();
        // Unpinning the links detaches the programs from the pod cgroups; unpinning the maps frees them.
        let _ = fs::remove_dir_all(&self.pin_root);
    }
}

fn is_bpffs(path: &Path) -> bool {
    fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == path.to_str() && l.contains(" bpf "))
        })
        .unwrap_or(false)
}

/// Removes pin roots left by test processes that no longer exist.
fn sweep_stale_pins() {
    if let Ok(entries) = fs::read_dir("/sys/fs/bpf") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(pid) = name
                .strip_prefix("tollgate-test-")
                .and_then(|r| r.split('-').next()?.parse::<i32>().ok())
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// curl from a pod; `-w` prints `status remote_ip:remote_port` (the remote address is the client's getpeername,
/// which the eBPF layer must keep showing the real server).
pub fn curl_from(pod: &Pod, args: &[&str]) -> Result<Output> {
    let curl = require_tool("curl");
    let out = pod
        .command(curl)
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{remote_ip}:%{remote_port}",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    Ok(out)
}

/// One flow record as a compact line, like `hubble observe` prints it.
pub fn compact(f: &Value) -> String {
    let side = |s: &Value| {
        let who = match (s["namespace"].as_str(), s["pod"].as_str()) {
            (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
            _ => s["ip"].as_str().unwrap_or("?").to_string(),
        };
        format!("{who}:{}", s["port"])
    };
    let l7 = match f["l7"]["http"].as_object() {
        Some(h) => format!(
            " {} {} => {}",
            h.get("method").and_then(Value::as_str).unwrap_or(""),
            h.get("url").and_then(Value::as_str).unwrap_or(""),
            h.get("code").and_then(Value::as_u64).unwrap_or(0)
        ),
        None => String::new(),
    };
    format!(
        "{} {} -> {} {}{} {} ({})",
        f["time"].as_str().unwrap_or(""),
        side(&f["source"]),
        side(&f["destination"]),
        f["protocol"].as_str().unwrap_or(""),
        l7,
        f["verdict"].as_str().unwrap_or(""),
        f["policy"].as_str().unwrap_or("")
    )
}

/// Runs `cmd`, returning stdout as text; fails with stderr.
pub fn stdout_of(cmd: &mut Command) -> Result<String> {
    let out = crate::run(cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}
