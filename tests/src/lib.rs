//! The namespace harness every end-to-end test stands on.
//!
//! A "node" is a network namespace with IP forwarding on; a "pod" is a network namespace plus a cgroup-v2 group,
//! joined to its node by a veth pair and routed through the node (Cilium-style: the pod holds its IP as a /32 and
//! routes everything via 169.254.1.1 on the node side, so pod-to-pod traffic crosses the node's IP stack where TPROXY,
//! TC and the proxy live). Nothing here touches the host's own network namespace.
//!
//! Everything a test creates is removed on `Drop`, also when the test panics: processes are killed by PID, then
//! cgroups and namespaces are deleted. Names carry the creating process's PID so a later run can sweep what a
//! killed run left behind (`sweep_stale`).
//!
//! Tests that need root or a program fail loudly (`require_root`, `require_tool`): they never skip and pass.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod browser;
pub mod dns;
pub mod grpc;
pub mod kafka;
pub mod mesh;
pub mod scenario;

/// Where the cgroup-v2 hierarchy is mounted on the project's machines (hybrid layout).
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";
/// All test cgroups live below this directory, one subdirectory per harness object.
pub const CGROUP_TEST_DIR: &str = "tollgate-test";
/// The node-side gateway address every pod routes through.
pub const POD_GATEWAY: &str = "169.254.1.1";

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub(crate) fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Panics unless running as root: namespaces, cgroups and eBPF need it.
/// For checking a running scenario by hand with tools CI lacks (the real `hubble` CLI): with
/// `TOLLGATE_E2E_HOLD_SECS=N`, prints where to look and keeps the scenario up N seconds. Does nothing otherwise.
pub fn hold_for_hand_check(what: &str) {
    let Some(secs) = std::env::var("TOLLGATE_E2E_HOLD_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return;
    };
    eprintln!("holding {secs} s for a hand check: {what}");
    std::thread::sleep(std::time::Duration::from_secs(secs));
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (network namespaces, cgroups, eBPF): run the suite with `sudo ./dev test`"
    );
}

/// A `/proc/<pid>/status` figure in KiB (`VmRSS`, `VmHWM`, ...); panics when the process or the field is gone.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Returns the path of `name` on PATH, or panics naming the program and the set-up command that installs it.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in
        std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
    {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "this test needs `{name}`, which is not installed: run `sudo ./dev setup` (it runs .ci/install-deps)"
    );
}

/// The workspace root (the checkout), found from this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `policy-model/conformance/`, the project's own conformance cases. Tests load the cases from there directly,
/// never from a copy.
pub fn conformance_dir() -> PathBuf {
    let dir = workspace_root().join("policy-model/conformance");
    assert!(
        dir.is_dir(),
        "conformance cases not found at {}: they are part of the repository",
        dir.display()
    );
    dir
}

/// The `tollgate` binary: `$TOLLGATE_BIN` if set (benchmarks point it at a release build), else the one built in the
/// same target directory as this test.
pub fn tollgate_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TOLLGATE_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "TOLLGATE_BIN={} is not a file", p.display());
        return p;
    }
    built_binary("tollgate")
}

/// A binary of the workspace: from `$TOLLGATE_BIN_DIR` when set (`./dev bench` runs a debug benchmark harness
/// against its release binaries, so only what is measured is built with LTO), else built into the same target
/// directory as the running test executable.
pub fn built_binary(name: &str) -> PathBuf {
    let profile_dir = match std::env::var_os("TOLLGATE_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            // Test executables live in <target>/<profile>/deps/, binaries (like the demo) in <target>/<profile>/.
            let exe = std::env::current_exe().expect("current_exe");
            let dir = exe.parent().expect("an executable has a directory");
            let dir = if dir.ends_with("deps") {
                dir.parent().expect("deps/ has a parent")
            } else {
                dir
            };
            dir.to_path_buf()
        }
    };
    let bin = profile_dir.join(name);
    assert!(
        bin.is_file(),
        "{} not found: build it first with `cargo build --workspace --bins` (./dev test does)",
        bin.display()
    );
    bin
}

/// Runs a command to completion and fails with its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}{}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn kill_and_reap(pid: i32) {
    // SAFETY: kill(2) with a PID we read from a namespace or cgroup we created.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Removes namespaces and cgroups left by earlier test processes that died without cleaning up (e.g. SIGKILL).
/// Only objects whose name carries a PID that is no longer alive are touched.
pub fn sweep_stale() {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if let Some(pid) = owner_pid(name)
                && !pid_alive(pid)
            {
                let ns = Netns {
                    name: name.to_string(),
                };
                drop(ns); // Drop kills what runs inside and deletes it.
            }
        }
    }
    let root = Path::new(CGROUP2_ROOT).join(CGROUP_TEST_DIR);
    if let Ok(entries) = fs::read_dir(&root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(pid) = name.split('-').next().and_then(|p| p.parse::<i32>().ok())
                && !pid_alive(pid)
            {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
}

/// Namespace names look like `tg<kind>-<pid>-<n>`; returns `<pid>`.
fn owner_pid(name: &str) -> Option<i32> {
    if !name.starts_with("tg") {
        return None;
    }
    name.split('-').nth(1)?.parse().ok()
}

/// A network namespace created by a test, deleted on drop after killing every process inside it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `tg<kind>-<pid>-<n>` with loopback up.
    pub fn new(kind: &str) -> Result<Self> {
        let name = format!("tg{kind}-{}-{}", std::process::id(), next_id());
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs a command inside the namespace to completion; fails with its stderr.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        let mut cmd = self.command(argv[0]);
        cmd.args(&argv[1..]);
        run(&mut cmd)
    }

    /// Runs a shell snippet inside the namespace.
    pub fn sh(&self, script: &str) -> Result<Output> {
        self.exec(&["sh", "-c", script])
    }

    /// PIDs of processes whose network namespace is this one.
    pub fn pids(&self) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until something accepts TCP connections on `addr` from inside this namespace.
    pub fn wait_for_tcp(&self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let probe = format!("exec 3<>/dev/tcp/{}/{}", addr.ip(), addr.port());
        loop {
            let ok = self
                .command("bash")
                .args(["-c", &probe])
                .stderr(Stdio::null())
                .status()?
                .success();
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "nothing listens on {addr} in netns {} after {timeout:?}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            pids.into_iter().for_each(kill_and_reap);
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A cgroup-v2 group under `/sys/fs/cgroup/unified/tollgate-test/`, removed on drop after killing its processes.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    procs_file: CString,
}

impl Cgroup {
    /// Creates `tollgate-test/<pid>-<n>-<name>`.
    pub fn new(name: &str) -> Result<Self> {
        let root = Path::new(CGROUP2_ROOT);
        if !root.join("cgroup.procs").exists() {
            bail!(
                "cgroup v2 is not mounted at {CGROUP2_ROOT}: mount it with `mount -t cgroup2 none {CGROUP2_ROOT}`"
            );
        }
        let path =
            root.join(CGROUP_TEST_DIR)
                .join(format!("{}-{}-{name}", std::process::id(), next_id()));
        fs::create_dir_all(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        let procs_file = CString::new(path.join("cgroup.procs").to_string_lossy().as_bytes())?;
        Ok(Cgroup { path, procs_file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves a running process into this cgroup.
    pub fn add_pid(&self, pid: u32) -> Result<()> {
        fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))?
            .write_all(pid.to_string().as_bytes())
            .with_context(|| format!("moving pid {pid} into {}", self.path.display()))
    }

    /// PIDs currently in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Makes `cmd` join this cgroup in the child, after fork and before exec, so every process it starts (including
    /// `ip netns exec`, which remounts /sys and would hide the cgroup mount) is accounted here from its first
    /// instruction.
    pub fn enter_on_spawn(&self, cmd: &mut Command) {
        let procs = self.procs_file.clone();
        // SAFETY: the closure only makes async-signal-safe syscalls (open, write, close) on pre-built buffers.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" means "the writing process" in cgroup.procs.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

fn remove_cgroup_tree(path: &Path) {
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    for _ in 0..100 {
        let pids: Vec<i32> = fs::read_to_string(path.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default();
        if pids.is_empty() {
            break;
        }
        pids.into_iter().for_each(kill_and_reap);
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = fs::remove_dir(path);
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.path);
        // Leave no empty parent behind either; fails harmlessly while other tests still use it.
        let _ = fs::remove_dir(Path::new(CGROUP2_ROOT).join(CGROUP_TEST_DIR));
    }
}

/// A child process killed (by PID) and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    what: String,
}

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        let what = format!("{cmd:?}");
        let child = cmd.spawn().with_context(|| format!("spawning {what}"))?;
        Ok(ChildGuard { child, what })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Fails if the process has already exited (e.g. a server that could not bind).
    pub fn assert_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early with {status}", self.what);
        }
        Ok(())
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit; SIGKILL after that.
    pub fn terminate(mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        // SAFETY: signalling our own child by PID.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Ok(self.child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM first so servers such as nginx take their workers down with them; SIGKILL after 2 s.
            // SAFETY: signalling our own child by PID.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node: a network namespace with forwarding on, its own cgroup for the proxy (never enrolled in the redirect
/// layer), and the pods attached to it.
#[derive(Debug)]
pub struct Node {
    // Field order matters for Drop: pods first, then the node's cgroup and namespace.
    pods_created: u32,
    pub proxy_cgroup: Cgroup,
    pub netns: Netns,
}

/// A pod: a network namespace holding `ip/32` on its `eth0`, plus a cgroup its processes run in.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub ip: IpAddr,
    /// The node-side end of the pod's veth pair (where TC programs attach).
    pub host_veth: String,
    pub cgroup: Cgroup,
    pub netns: Netns,
}

impl Node {
    pub fn new(tag: &str) -> Result<Self> {
        require_root();
        sweep_stale();
        let netns = Netns::new("node")?;
        netns.sh(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
             net.ipv6.conf.all.forwarding=1",
        )?;
        let proxy_cgroup = Cgroup::new(&format!("{tag}-proxy"))?;
        Ok(Node {
            pods_created: 0,
            proxy_cgroup,
            netns,
        })
    }

    /// Creates a pod with `ip` (IPv4) routed through this node.
    pub fn add_pod(&mut self, name: &str, ip: &str) -> Result<Pod> {
        let addr: IpAddr = ip
            .parse()
            .with_context(|| format!("pod {name}: bad IP {ip}"))?;
        let netns = Netns::new("pod")?;
        let cgroup = Cgroup::new(name)?;
        self.pods_created += 1;
        // Interface names are limited to 15 bytes; make them unique per node and process.
        let host_veth = format!("tgv{}x{}", std::process::id() % 100_000, next_id());
        let tmp_peer = format!("{host_veth}p");
        self.netns.exec(&[
            "ip", "link", "add", &host_veth, "type", "veth", "peer", "name", &tmp_peer,
        ])?;
        self.netns
            .exec(&["ip", "link", "set", &tmp_peer, "netns", netns.name()])?;
        netns.exec(&["ip", "link", "set", &tmp_peer, "name", "eth0"])?;
        netns.exec(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
        netns.exec(&["ip", "link", "set", "eth0", "up"])?;
        netns.exec(&[
            "ip",
            "route",
            "add",
            POD_GATEWAY,
            "dev",
            "eth0",
            "scope",
            "link",
        ])?;
        netns.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            POD_GATEWAY,
            "dev",
            "eth0",
        ])?;
        self.netns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{POD_GATEWAY}/32"),
            "dev",
            &host_veth,
        ])?;
        self.netns.exec(&["ip", "link", "set", &host_veth, "up"])?;
        self.netns
            .exec(&["ip", "route", "add", &format!("{ip}/32"), "dev", &host_veth])?;
        self.netns
            .sh(&format!("sysctl -qw net.ipv4.conf.{host_veth}.rp_filter=0"))?;
        Ok(Pod {
            name: name.to_string(),
            ip: addr,
            host_veth,
            cgroup,
            netns,
        })
    }

    /// A command that runs inside the node's namespace and the proxy's cgroup.
    ///
    /// Uses `nsenter --net` rather than `ip netns exec`: the latter remounts /sys, which hides bpffs
    /// (/sys/fs/bpf) and the cgroup mount from the proxy, and the proxy needs both for the eBPF redirect layer.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns.name()))
            .arg("--")
            .arg(program);
        self.proxy_cgroup.enter_on_spawn(&mut cmd);
        cmd
    }
}

impl Pod {
    /// A command that runs inside the pod: its cgroup first, then its network namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = self.netns.command(program);
        self.cgroup.enter_on_spawn(&mut cmd);
        cmd
    }

    /// Runs a shell snippet in the pod to completion.
    pub fn sh(&self, script: &str) -> Result<Output> {
        run(self.command("sh").args(["-c", script]))
    }
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "tollgate-{tag}-{}-{}",
            std::process::id(),
            next_id()
        ));
        fs::create_dir_all(&path)?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&self, name: &str, contents: &str) -> Result<PathBuf> {
        let p = self.path.join(name);
        fs::write(&p, contents).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A real nginx serving inside a pod: `GET` of any path answers 200 with a body naming the server and the path.
/// Keep-alive connections are not closed after nginx's default 1000 requests (load runs reuse them).
/// `http1_port` serves HTTP/1.1, `h2c_port` HTTP/2 with prior knowledge (nginx 1.22 syntax).
#[derive(Debug)]
pub struct Nginx {
    pub process: ChildGuard,
    pub dir: TempDir,
}

impl Nginx {
    pub fn start(pod: &Pod, http1_port: u16, h2c_port: u16) -> Result<Self> {
        let nginx = require_tool("nginx");
        let dir = TempDir::new("nginx")?;
        let d = dir.path().display();
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\ndaemon off;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log {d}/access.log;\n  keepalive_requests 1000000;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{\n    listen {http1_port};\n    listen {h2c_port} http2;\n\
                 location / {{ default_type text/plain; return 200 \"{name} $request_method $request_uri\\n\"; }}\n  }}\n}}\n",
            name = pod.name
        );
        let conf_path = dir.write("nginx.conf", &conf)?;
        let mut cmd = pod.command(nginx);
        cmd.arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut process = ChildGuard::spawn(&mut cmd)?;
        for port in [http1_port, h2c_port] {
            pod.netns
                .wait_for_tcp(SocketAddr::new(pod.ip, port), Duration::from_secs(10))?;
        }
        process.assert_running()?;
        Ok(Nginx { process, dir })
    }
}

/// Diverts every pod TCP connection through `node` to an IP_TRANSPARENT listener on `port` (iptables TPROXY in
/// the node netns): packets of sockets the node already has are delivered locally, every other pod TCP packet
/// goes to the proxy.
pub fn tproxy_all_tcp(node: &Node, port: u16) -> Result<()> {
    node.netns.sh(&format!(
        "set -e
         iptables -t mangle -N TG_DIVERT
         iptables -t mangle -A TG_DIVERT -j MARK --set-mark 0x1/0x1
         iptables -t mangle -A TG_DIVERT -j ACCEPT
         iptables -t mangle -A PREROUTING -p tcp -m socket -j TG_DIVERT
         iptables -t mangle -A PREROUTING -p tcp -j TPROXY --on-port {port} --tproxy-mark 0x1/0x1
         ip rule add fwmark 0x1/0x1 lookup 100
         ip route add local 0.0.0.0/0 dev lo table 100"
    ))?;
    Ok(())
}
