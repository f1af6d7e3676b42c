//! Kernel tests: load the real programs, enroll real cgroups, and send real connections between network namespaces
//! built by the `tollgate_e2e` harness. Run as root (`sudo ./dev test`); they fail loudly otherwise.
//!
//! Layout per test: a node netns (the proxy stand-in runs there, in the node's proxy cgroup), a client pod
//! 10.x.0.2 and a server pod 10.x.0.3 routed through it. The proxy is reachable from pods at the node side of their
//! veth, 169.254.1.1 (the harness's POD_GATEWAY). Every test has its own pin root, purged on drop (also on panic).

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use redirect_ebpf::{
    Direction, EndpointInfo, FlowKey, FourTuple, L7Kind, L7Redirect, Protocol, ProxyConfig, Redirect,
    RedirectOptions,
};
use tollgate_e2e::{ChildGuard, Node, POD_GATEWAY, Pod, require_root};

const CLIENT_ID: u32 = 1000;
const SERVER_ID: u32 = 2000;
const HTTP_PORT: u16 = 15001;
const DNS_PORT: u16 = 15053;
const TPROXY_PORT: u16 = 15006;
const PROXY_MARK: u32 = 0x77;
const TPROXY_MARK: u32 = 0x200;

fn probe() -> &'static str {
    env!("CARGO_BIN_EXE_redirect-probe")
}

fn preflight() {
    require_root();
    assert!(
        Path::new("/sys/fs/bpf").join(".").exists(),
        "bpffs is not mounted: `mount -t bpf bpf /sys/fs/bpf`"
    );
}

/// Purges the test's pin root (links and maps) on drop, also when the test panics.
struct PinRoot(PathBuf);

impl PinRoot {
    fn new(tag: &str) -> Self {
        let path = PathBuf::from(format!("/sys/fs/bpf/tollgate-test-{}-{tag}", std::process::id()));
        let _ = Redirect::purge(&path);
        PinRoot(path)
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        if let Err(e) = Redirect::purge(&self.0) {
            eprintln!("cleanup: purging {}: {e}", self.0.display());
        }
    }
}

fn gateway() -> Ipv4Addr {
    POD_GATEWAY.parse().unwrap()
}

fn config() -> ProxyConfig {
    ProxyConfig {
        ipv4: Some(gateway()),
        ipv6: None,
        http_port: HTTP_PORT,
        kafka_port: 15002,
        dns_port: DNS_PORT,
        tproxy_port: TPROXY_PORT,
        proxy_mark: PROXY_MARK,
        tproxy_mark: TPROXY_MARK,
    }
}

fn load(root: &PinRoot) -> Redirect {
    Redirect::load(RedirectOptions {
        pin_root: root.0.clone(),
        proxy: config(),
    })
    .unwrap_or_else(|e| panic!("Redirect::load: {e}"))
}

fn endpoint(pod: &Pod, identity: u32) -> EndpointInfo {
    let IpAddr::V4(v4) = pod.ip else { unreachable!() };
    EndpointInfo {
        identity,
        ipv4: Some(v4),
        ipv6: None,
    }
}

fn ingress_http(identity: u32, port: u16) -> L7Redirect {
    L7Redirect {
        identity,
        direction: Direction::Ingress,
        port,
        end_port: port,
        protocol: Protocol::Tcp,
        kind: L7Kind::Http,
        proxy_port: None,
    }
}

/// key=value lines printed by redirect-probe.
fn kv(out: &str, key: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
}

/// Runs redirect-probe to completion (it exits 2 after printing `error=` on socket errors) and returns stdout.
fn run_probe(mut cmd: Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(2),
        "{cmd:?} failed ({}): {}{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn pod_probe(pod: &Pod, args: &[&str]) -> String {
    let mut cmd = pod.command(probe());
    cmd.args(args);
    run_probe(cmd)
}

/// A long-running redirect-probe whose stdout lines arrive on a channel.
struct Server {
    _child: ChildGuard,
    lines: mpsc::Receiver<String>,
}

impl Server {
    fn start(mut cmd: Command) -> Server {
        cmd.stdout(Stdio::piped()).stdin(Stdio::null());
        let mut child = ChildGuard::spawn(&mut cmd).expect("spawning redirect-probe server");
        let stdout = child.child_mut().stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            _child: child,
            lines: rx,
        };
        let first = server.read_until("listening=");
        assert!(first.contains("listening="), "server did not start: {first}");
        server
    }

    /// Lines up to and including the first one starting with `prefix` (10 s at most).
    fn read_until(&mut self, prefix: &str) -> String {
        let mut out = String::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(10)) {
                Ok(line) => {
                    let done = line.starts_with(prefix);
                    out.push_str(&line);
                    out.push('\n');
                    if done {
                        return out;
                    }
                }
                Err(_) => panic!("no `{prefix}` line from the server within 10 s; got so far:\n{out}"),
            }
        }
    }
}

/// The proxy stand-in: accepts `n` connections in the node netns and the node's proxy cgroup.
fn proxy_standin(node: &Node, bind: &str, n: usize, transparent: bool) -> Server {
    let mut cmd = node.command(probe());
    cmd.args(["accept", bind, &n.to_string()]);
    if transparent {
        cmd.arg("--transparent");
    }
    Server::start(cmd)
}

fn serve_in_pod(pod: &Pod, bind: &str, tag: &str) -> Server {
    let mut cmd = pod.command(probe());
    cmd.args(["serve-tcp", bind, tag]);
    Server::start(cmd)
}

struct Cluster {
    node: Node,
    client: Pod,
    server: Pod,
}

fn cluster(tag: &str, net: u8) -> Cluster {
    let mut node = Node::new(tag).expect("creating node netns");
    let client = node.add_pod("client", &format!("10.{net}.0.2")).expect("client pod");
    let server = node.add_pod("server", &format!("10.{net}.0.3")).expect("server pod");
    Cluster { node, client, server }
}

#[test]
fn connect4_redirects_only_l7_flows_and_the_proxy_recovers_the_original_destination() {
    preflight();
    let root = PinRoot::new("egress");
    let c = cluster("rdeg", 201);
    let mut redirect = load(&root);
    redirect.ipcache_upsert(c.client.ip, CLIENT_ID).unwrap();
    redirect.ipcache_upsert(c.server.ip, SERVER_ID).unwrap();
    // Ingress L7 policy on the server's 8080, egress L7 policy of the client on 9091.
    redirect.policy_upsert(&ingress_http(SERVER_ID, 8080)).unwrap();
    redirect
        .policy_upsert(&L7Redirect {
            identity: CLIENT_ID,
            direction: Direction::Egress,
            ..ingress_http(CLIENT_ID, 9091)
        })
        .unwrap();
    redirect.enroll(c.client.cgroup.path(), endpoint(&c.client, CLIENT_ID)).unwrap();
    redirect.attach_proxy_cgroup(c.node.proxy_cgroup.path()).unwrap();

    let _s8080 = serve_in_pod(&c.server, "0.0.0.0:8080", "server8080");
    let _s9090 = serve_in_pod(&c.server, "0.0.0.0:9090", "server9090");
    let _s9091 = serve_in_pod(&c.server, "0.0.0.0:9091", "server9091");
    let mut proxy = proxy_standin(&c.node, &format!("0.0.0.0:{HTTP_PORT}"), 2, false);

    // 1. Destination with ingress L7 policy: lands on the proxy; the client still sees the server as its peer.
    let out = pod_probe(&c.client, &["tcp-connect", "10.201.0.3:8080"]);
    assert_eq!(kv(&out, "reply").as_deref(), Some("proxy"), "client output:\n{out}");
    assert_eq!(kv(&out, "peer").as_deref(), Some("10.201.0.3:8080"), "getpeername4 rewrite:\n{out}");
    let seen = proxy.read_until("end=0");
    let client_local: SocketAddr = kv(&out, "local").unwrap().parse().unwrap();
    assert_eq!(kv(&seen, "peer"), Some(client_local.to_string()), "proxy sees the pod as peer:\n{seen}");
    assert_eq!(
        kv(&seen, "original_dst").as_deref(),
        Some("10.201.0.3:8080"),
        "SO_ORIGINAL_DST via cgroup/getsockopt:\n{seen}"
    );
    let cookie: u64 = kv(&seen, "cookie").unwrap().parse().unwrap();
    let by_cookie = redirect
        .original_dst(FlowKey::Cookie(cookie))
        .unwrap()
        .expect("sockops re-keyed the record by the accepted socket's cookie");
    assert_eq!(by_cookie.addr, "10.201.0.3:8080".parse().unwrap());
    assert_eq!(by_cookie.source_identity, CLIENT_ID);
    assert_eq!(by_cookie.destination_identity, SERVER_ID);
    assert_eq!(by_cookie.kind, Some(L7Kind::Http));
    assert_eq!(by_cookie.proxy_port, HTTP_PORT);
    let tuple = FourTuple {
        client: client_local,
        proxy: kv(&seen, "local").unwrap().parse().unwrap(),
        protocol: Protocol::Tcp,
        netns_cookie: 0,
    };
    assert_eq!(redirect.original_dst(FlowKey::Tuple(tuple)).unwrap(), Some(by_cookie));

    // 2. No L7 policy on 9090: straight to the server, the proxy never sees it.
    let out = pod_probe(&c.client, &["tcp-connect", "10.201.0.3:9090"]);
    assert_eq!(kv(&out, "reply").as_deref(), Some("server9090"), "bypass:\n{out}");

    // 3. The proxy's SO_MARK on the socket: never redirected, even to an L7 port.
    let mark = PROXY_MARK.to_string();
    let out = pod_probe(&c.client, &["tcp-connect", "10.201.0.3:8080", "--mark", &mark]);
    assert_eq!(kv(&out, "reply").as_deref(), Some("server8080"), "marked socket must bypass:\n{out}");

    // 4. Egress L7 policy of the source identity on 9091: redirected.
    let out = pod_probe(&c.client, &["tcp-connect", "10.201.0.3:9091"]);
    assert_eq!(kv(&out, "reply").as_deref(), Some("proxy"), "egress policy:\n{out}");
    let seen = proxy.read_until("end=1");
    assert_eq!(kv(&seen, "original_dst").as_deref(), Some("10.201.0.3:9091"), "{seen}");

    // 5. The server pod is not enrolled: its connects are never touched.
    let out = pod_probe(&c.server, &["tcp-connect", "10.201.0.3:8080"]);
    assert_eq!(kv(&out, "reply").as_deref(), Some("server8080"), "unenrolled pod:\n{out}");

    // 6. Unenrolling detaches: the L7 port now reaches the server directly.
    redirect.unenroll(c.client.cgroup.path()).unwrap();
    let out = pod_probe(&c.client, &["tcp-connect", "10.201.0.3:8080"]);
    assert_eq!(kv(&out, "reply").as_deref(), Some("server8080"), "after unenroll:\n{out}");
}
