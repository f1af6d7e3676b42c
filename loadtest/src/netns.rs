//! The namespace topology of `topology = "netns"` scenarios: a node network namespace with IP forwarding and two
//! pod namespaces (client and server) joined to it by veth pairs, routed Cilium-style through `169.254.1.1` on the
//! node side (the same shape as the e2e harness in `tests/src/lib.rs`, written again here so this crate does not
//! depend on the tests).
//!
//! Names look like `tgload<role>-<pid>-<n>`: on drop every process whose network namespace is one of ours is killed
//! by PID (we started them all) and the namespace is deleted, which also removes its veths, routes and iptables
//! rules. [`sweep_stale`] removes namespaces left behind by runs that died (owner PID no longer alive). Processes are
//! never looked up or killed by name.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The client pod's address (the load generator runs there).
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
/// The server pod's address (the backend runs there).
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 20);
/// The node side of every pod's veth; peers listen here.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

const PREFIX: &str = "tgload";

static COUNTER: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "netns topology needs root (network namespaces, veths, iptables): run as root (sudo ./dev bench)"
    )]
    NotRoot,
    #[error("{cmd} failed: {detail} (is iproute2/iptables installed? ./dev setup)")]
    Command { cmd: String, detail: String },
    #[error("entering netns {name}: {source}")]
    Enter {
        name: String,
        source: std::io::Error,
    },
    #[error("nothing accepted TCP connections on {addr} in netns {name} within {timeout:?}")]
    NotReady {
        name: String,
        addr: SocketAddr,
        timeout: Duration,
    },
}

fn run(argv: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetnsError::Command {
            cmd: argv.join(" "),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            cmd: argv.join(" "),
            detail: format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            ),
        });
    }
    Ok(())
}

/// A network namespace this process created; dropped = its processes killed by PID, then deleted.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `tgload<role>-<pid>-<n>` with loopback up.
    pub fn new(role: &str) -> Result<Self, NetnsError> {
        let name = format!(
            "{PREFIX}{role}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for `nsenter --net=` and `setns`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs a command inside the namespace to completion.
    pub fn exec(&self, argv: &[&str]) -> Result<(), NetnsError> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        run(&full)
    }

    /// Runs a shell script inside the namespace.
    pub fn sh(&self, script: &str) -> Result<(), NetnsError> {
        self.exec(&["sh", "-c", script])
    }

    /// A command running `argv` inside this namespace pinned to `core`. `taskset` and `nsenter` both exec, so the
    /// child's PID is the program's PID (what /proc sampling and kill-by-PID use).
    pub fn command(&self, core: usize, argv: &[String]) -> Command {
        let mut cmd = Command::new("taskset");
        cmd.arg("-c")
            .arg(core.to_string())
            .arg("nsenter")
            .arg(format!("--net={}", self.path()))
            .arg("--")
            .args(argv);
        cmd
    }

    /// PIDs of processes whose network namespace is this one (never this process itself).
    pub fn pids(&self) -> Vec<i32> {
        let me = std::process::id() as i32;
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .filter(|&p| p != me)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs `f` on a new thread that has joined this namespace; sockets `f` opens live in it. Only that thread
    /// moves: network namespaces are per thread.
    pub fn run_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NetnsError> {
        let path = self.path();
        let name = self.name.clone();
        let handle = std::thread::spawn(move || -> Result<T, NetnsError> {
            let enter = |source| NetnsError::Enter {
                name: name.clone(),
                source,
            };
            let file = std::fs::File::open(&path).map_err(enter)?;
            // SAFETY: setns on an fd we just opened; affects only the calling thread for CLONE_NEWNET.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(enter(std::io::Error::last_os_error()));
            }
            Ok(f())
        });
        handle.join().expect("netns worker thread panicked")
    }

    /// Waits until `addr` accepts TCP connections from inside this namespace.
    pub fn wait_for_tcp(&self, addr: SocketAddr, timeout: Duration) -> Result<(), NetnsError> {
        let ok = self.run_in(move || {
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        })?;
        if ok {
            Ok(())
        } else {
            Err(NetnsError::NotReady {
                name: self.name.clone(),
                addr,
                timeout,
            })
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
            for pid in pids {
                // SAFETY: kill(2) on a PID found in a namespace this process created (everything in it was
                // started by this run).
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// The owner PID in a name this module made (`tgload<role>-<pid>-<n>`).
pub fn owner_pid(name: &str) -> Option<i32> {
    if !name.starts_with(PREFIX) {
        return None;
    }
    name.split('-').nth(1)?.parse().ok()
}

/// Deletes namespaces left by earlier runs whose owner process is gone.
pub fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if let Some(pid) = owner_pid(name)
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            drop(Netns { name: name.into() });
        }
    }
}

/// Node + client pod + server pod. Field order is drop order: pods first, then the node.
#[derive(Debug)]
pub struct Topology {
    pub client: Netns,
    pub server: Netns,
    pub node: Netns,
}

impl Topology {
    pub fn new() -> Result<Self, NetnsError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(NetnsError::NotRoot);
        }
        sweep_stale();
        let node = Netns::new("node")?;
        node.sh(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0",
        )?;
        let client = Netns::new("client")?;
        attach(&node, &client, CLIENT_IP)?;
        let server = Netns::new("server")?;
        attach(&node, &server, SERVER_IP)?;
        Ok(Topology {
            client,
            server,
            node,
        })
    }

    /// Diverts TCP from pods to `dst` (the server pod port tollgate guards) to an IP_TRANSPARENT listener on
    /// `on_port` in the node namespace (iptables TPROXY); sockets the node already owns (tollgate's upstream
    /// connections) are delivered locally. Other ports (direct rows, peers on the gateway) are not diverted.
    pub fn tproxy(&self, dst: SocketAddr, on_port: u16) -> Result<(), NetnsError> {
        self.node.sh(&format!(
            "set -e
             iptables -t mangle -N TG_DIVERT
             iptables -t mangle -A TG_DIVERT -j MARK --set-mark 0x1/0x1
             iptables -t mangle -A TG_DIVERT -j ACCEPT
             iptables -t mangle -A PREROUTING -p tcp -m socket -j TG_DIVERT
             iptables -t mangle -A PREROUTING -p tcp -d {ip} --dport {port} -j TPROXY --on-port {on_port} --tproxy-mark 0x1/0x1
             ip rule add fwmark 0x1/0x1 lookup 100
             ip route add local 0.0.0.0/0 dev lo table 100",
            ip = dst.ip(),
            port = dst.port()
        ))
    }
}

fn attach(node: &Netns, pod: &Netns, ip: Ipv4Addr) -> Result<(), NetnsError> {
    let host = format!(
        "tglv{}x{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let peer = format!("{host}p");
    node.exec(&[
        "ip", "link", "add", &host, "type", "veth", "peer", "name", &peer,
    ])?;
    node.exec(&["ip", "link", "set", &peer, "netns", pod.name()])?;
    pod.sh(&format!(
        "set -e
         ip link set {peer} name eth0
         ip addr add {ip}/32 dev eth0
         ip link set eth0 up
         ip route add {GATEWAY} dev eth0 scope link
         ip route add default via {GATEWAY} dev eth0"
    ))?;
    node.sh(&format!(
        "set -e
         ip addr add {GATEWAY}/32 dev {host}
         ip link set {host} up
         ip route add {ip}/32 dev {host}
         sysctl -qw net.ipv4.conf.{host}.rp_filter=0"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_only_for_our_names() {
        assert_eq!(owner_pid("tgloadnode-1234-0"), Some(1234));
        assert_eq!(owner_pid("tgnode-1234-0"), None);
        assert_eq!(owner_pid("tgloadnode-x-0"), None);
    }
}
