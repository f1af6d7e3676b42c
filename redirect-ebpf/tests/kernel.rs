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
    Direction, EndpointInfo, FlowKey, FourTuple, L7Kind, L7Redirect, Protocol, ProxyConfig,
    Redirect, RedirectOptions,
};
use tollgate_e2e::{ChildGuard, Node, POD_GATEWAY, Pod, require_root};

mod common;
use common::PinRoot;

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
    let IpAddr::V4(v4) = pod.ip else {
        unreachable!()
    };
    EndpointInfo {
        identity,
        ipv4: Some(v4),
        ipv6: None,
    }
}

/// Enrolls `pod`'s cgroup as an endpoint with `identity` and its IPv4 address.
#[track_caller]
fn enroll(redirect: &mut Redirect, pod: &Pod, identity: u32) {
    redirect
        .enroll(pod.cgroup.path(), endpoint(pod, identity))
        .unwrap();
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

/// Asserts that the probe output `out` has `key=want`; on failure shows `why` and the whole output.
#[track_caller]
fn expect_kv(out: &str, key: &str, want: &str, why: &str) {
    let got = kv(out, key);
    assert_eq!(
        got.as_deref(),
        Some(want),
        "{key}: {why}{}{out}",
        if why.is_empty() { "\n" } else { ":\n" }
    );
}

/// An egress DNS (UDP 53) L7 rule for `identity`, served by the config's DNS listener.
fn egress_dns(identity: u32) -> L7Redirect {
    L7Redirect {
        identity,
        direction: Direction::Egress,
        port: 53,
        end_port: 53,
        protocol: Protocol::Udp,
        kind: L7Kind::Dns,
        proxy_port: None,
    }
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
        assert!(
            first.contains("listening="),
            "server did not start: {first}"
        );
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
                Err(_) => {
                    panic!("no `{prefix}` line from the server within 10 s; got so far:\n{out}")
                }
            }
        }
    }
}

/// The proxy stand-in: accepts `n` connections in the node netns and the node's proxy cgroup.
/// The pin root as a process started by `ip netns exec` can reach it: that command remounts /sys, hiding bpffs, so go
/// through this (test) process's root, which still sees it.
fn pin_root_for_netns_exec(root: &PinRoot) -> PathBuf {
    PathBuf::from(format!("/proc/{}/root", std::process::id()))
        .join(root.0.strip_prefix("/").unwrap())
}

/// With `--pin-root` it also reads the flow's record from the pinned maps, as the proxy does.
fn proxy_standin(node: &Node, bind: &str, n: usize, transparent: bool, root: &PinRoot) -> Server {
    let mut cmd = node.command(probe());
    cmd.args(["accept", bind, &n.to_string(), "--pin-root"])
        .arg(pin_root_for_netns_exec(root));
    if transparent {
        cmd.arg("--transparent");
    }
    Server::start(cmd)
}

/// A redirect-probe UDP server run by `cmd` (in a pod or the node), answering with `tag`.
fn udp_serve(mut cmd: Command, bind: &str, tag: &str) -> Server {
    cmd.args(["udp-serve", bind, tag]);
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
    let client = node
        .add_pod("client", &format!("10.{net}.0.2"))
        .expect("client pod");
    let server = node
        .add_pod("server", &format!("10.{net}.0.3"))
        .expect("server pod");
    Cluster {
        node,
        client,
        server,
    }
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
    redirect
        .policy_upsert(&ingress_http(SERVER_ID, 8080))
        .unwrap();
    redirect
        .policy_upsert(&L7Redirect {
            identity: CLIENT_ID,
            direction: Direction::Egress,
            ..ingress_http(CLIENT_ID, 9091)
        })
        .unwrap();
    enroll(&mut redirect, &c.client, CLIENT_ID);
    redirect
        .attach_proxy_cgroup(c.node.proxy_cgroup.path())
        .unwrap();

    let _s8080 = serve_in_pod(&c.server, "0.0.0.0:8080", "server8080");
    let _s9090 = serve_in_pod(&c.server, "0.0.0.0:9090", "server9090");
    let _s9091 = serve_in_pod(&c.server, "0.0.0.0:9091", "server9091");
    let mut proxy = proxy_standin(&c.node, &format!("0.0.0.0:{HTTP_PORT}"), 3, false, &root);

    // 1. Destination with ingress L7 policy: lands on the proxy; the client still sees the server as its peer.
    let out = pod_probe(&c.client, &["tcp-connect", "10.201.0.3:8080"]);
    expect_kv(&out, "reply", "proxy", "client output");
    expect_kv(&out, "peer", "10.201.0.3:8080", "getpeername4 rewrite");
    let seen = proxy.read_until("end=0");
    let client_local: SocketAddr = kv(&out, "local").unwrap().parse().unwrap();
    assert_eq!(
        kv(&seen, "peer"),
        Some(client_local.to_string()),
        "proxy sees the pod as peer:\n{seen}"
    );
    expect_kv(
        &seen,
        "original_dst",
        "10.201.0.3:8080",
        "SO_ORIGINAL_DST via cgroup/getsockopt",
    );
    expect_kv(
        &seen,
        "map_original_dst",
        "10.201.0.3:8080",
        "OriginalDstReader",
    );
    assert_eq!(
        kv(&seen, "map_source_identity"),
        Some(CLIENT_ID.to_string()),
        "{seen}"
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
    assert_eq!(
        redirect.original_dst(FlowKey::Tuple(tuple)).unwrap(),
        Some(by_cookie)
    );

    // 2. No L7 policy on 9090: straight to the server, the proxy never sees it.
    let out = pod_probe(&c.client, &["tcp-connect", "10.201.0.3:9090"]);
    expect_kv(&out, "reply", "server9090", "bypass");

    // 3. The proxy's SO_MARK on the socket: never redirected, even to an L7 port.
    let mark = PROXY_MARK.to_string();
    let out = pod_probe(
        &c.client,
        &["tcp-connect", "10.201.0.3:8080", "--mark", &mark],
    );
    expect_kv(&out, "reply", "server8080", "marked socket must bypass");

    // 4. Egress L7 policy of the source identity on 9091: redirected.
    let out = pod_probe(&c.client, &["tcp-connect", "10.201.0.3:9091"]);
    expect_kv(&out, "reply", "proxy", "egress policy");
    let seen = proxy.read_until("end=1");
    expect_kv(&seen, "original_dst", "10.201.0.3:9091", "");

    // 4b. A per-rule proxy port overrides the config's listener for the kind.
    redirect
        .policy_upsert(&L7Redirect {
            proxy_port: Some(15009),
            ..ingress_http(SERVER_ID, 9092)
        })
        .unwrap();
    let mut special = proxy_standin(&c.node, "0.0.0.0:15009", 1, false, &root);
    let out = pod_probe(&c.client, &["tcp-connect", "10.201.0.3:9092"]);
    expect_kv(&out, "reply", "proxy", "per-rule proxy port");
    let seen = special.read_until("end=0");
    expect_kv(&seen, "original_dst", "10.201.0.3:9092", "");

    // 5. The server pod is not enrolled: its connects are never touched.
    let out = pod_probe(&c.server, &["tcp-connect", "10.201.0.3:8080"]);
    expect_kv(&out, "reply", "server8080", "unenrolled pod");

    // 6. A dual-stack (AF_INET6) socket talking IPv4-mapped: connect6 + getpeername6 + sockops normalise to IPv4.
    let out = pod_probe(&c.client, &["tcp-connect", "[::ffff:10.201.0.3]:8080"]);
    expect_kv(&out, "reply", "proxy", "connect6 (v4-mapped)");
    expect_kv(&out, "peer", "[::ffff:10.201.0.3]:8080", "getpeername6");
    let seen = proxy.read_until("end=2");
    expect_kv(&seen, "original_dst", "10.201.0.3:8080", "");

    // 7. Unenrolling detaches: the L7 port now reaches the server directly.
    redirect.unenroll(c.client.cgroup.path()).unwrap();
    let out = pod_probe(&c.client, &["tcp-connect", "10.201.0.3:8080"]);
    expect_kv(&out, "reply", "server8080", "after unenroll");
}

/// How many programs named `name` the kernel has attached to `cgroup` (for any attach type).
fn attached_count(cgroup: &Path, name: &str) -> usize {
    let out = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("bpftool is needed for this test: `apt-get install -y bpftool`");
    assert!(
        out.status.success(),
        "bpftool cgroup show: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == name))
        .count()
}

#[test]
fn pinned_maps_and_links_survive_the_loader_and_are_adopted_by_the_next_load() {
    preflight();
    let root = PinRoot::new("adopt");
    let c = cluster("rdpin", 202);
    let _s8080 = serve_in_pod(&c.server, "0.0.0.0:8080", "server8080");
    {
        let mut first = load(&root);
        first.ipcache_upsert(c.server.ip, SERVER_ID).unwrap();
        first.policy_upsert(&ingress_http(SERVER_ID, 8080)).unwrap();
        enroll(&mut first, &c.client, CLIENT_ID);
        assert_eq!(attached_count(c.client.cgroup.path(), "tg_connect4"), 1);
    } // the loader is gone: programs stay attached through their pinned links, state through pinned maps

    assert!(root.0.join("maps/tg_policy").exists(), "policy map pinned");
    assert_eq!(
        attached_count(c.client.cgroup.path(), "tg_connect4"),
        1,
        "link outlived the loader"
    );
    let mut proxy = proxy_standin(&c.node, &format!("0.0.0.0:{HTTP_PORT}"), 1, false, &root);
    let out = pod_probe(&c.client, &["tcp-connect", "10.202.0.3:8080"]);
    expect_kv(
        &out,
        "reply",
        "proxy",
        "redirect works with no loader alive",
    );
    let seen = proxy.read_until("end=0");
    let client_local: SocketAddr = kv(&out, "local").unwrap().parse().unwrap();

    // A second load adopts the maps: ipcache, policy and the flow record written before are all there.
    let mut second = load(&root);
    assert_eq!(
        second
            .ipcache_get(c.server.ip, 32)
            .unwrap()
            .map(|v| v.identity),
        Some(SERVER_ID),
        "ipcache entry kept"
    );
    assert_eq!(second.policy_len(), 1, "policy entry kept");
    let tuple = FourTuple {
        client: client_local,
        proxy: kv(&seen, "local").unwrap().parse().unwrap(),
        protocol: Protocol::Tcp,
        netns_cookie: 0,
    };
    let od = second
        .original_dst(FlowKey::Tuple(tuple))
        .unwrap()
        .expect("record written while no loader was alive");
    assert_eq!(od.addr, "10.202.0.3:8080".parse().unwrap());
    // Enrolling again adopts the pinned links instead of attaching a second copy.
    enroll(&mut second, &c.client, CLIENT_ID);
    assert_eq!(
        attached_count(c.client.cgroup.path(), "tg_connect4"),
        1,
        "no duplicate attach"
    );
    // policy_sync replaces the set: 8080 goes away, 8081 arrives.
    second
        .policy_sync(&[ingress_http(SERVER_ID, 8081)])
        .unwrap();
    assert_eq!(second.policy_len(), 1);
    let out = pod_probe(&c.client, &["tcp-connect", "10.202.0.3:8080"]);
    expect_kv(&out, "reply", "server8080", "after policy_sync");
}

#[test]
fn dns_over_udp_goes_to_the_dns_listener_and_replies_come_from_the_original_resolver() {
    preflight();
    let root = PinRoot::new("dns");
    let c = cluster("rddns", 203);
    let mut redirect = load(&root);
    redirect.policy_upsert(&egress_dns(CLIENT_ID)).unwrap();
    enroll(&mut redirect, &c.client, CLIENT_ID);
    // The "resolver" the pod asks (the server pod), and the proxy's DNS listener on the node.
    let _resolver = udp_serve(c.server.command(probe()), "0.0.0.0:53", "resolver");
    let mut dns = udp_serve(
        c.node.command(probe()),
        &format!("{POD_GATEWAY}:{DNS_PORT}"),
        "dnsproxy",
    );

    let out = pod_probe(&c.client, &["udp", "10.203.0.3:53", "query"]);
    expect_kv(&out, "reply", "dnsproxy", "sendmsg4 redirect");
    expect_kv(&out, "from", "10.203.0.3:53", "recvmsg4 rewrite");
    let seen = dns.read_until("datagram_from=");
    let from: SocketAddr = kv(&seen, "datagram_from").unwrap().parse().unwrap();
    let listener: SocketAddr = format!("{POD_GATEWAY}:{DNS_PORT}").parse().unwrap();
    let od = redirect
        .original_dst_of_datagram(from, listener, 0)
        .unwrap()
        .expect("the DNS listener finds the datagram's record by 4-tuple");
    assert_eq!(od.addr, "10.203.0.3:53".parse().unwrap());
    assert_eq!(od.source_identity, CLIENT_ID);
    assert_eq!(od.kind, Some(L7Kind::Dns));
    assert_eq!(od.protocol, Protocol::Udp);

    // A connected UDP socket (glibc's resolver): connect4 redirects, getpeername4 shows the resolver, and the
    // cgroup_skb egress recorder keys the flow by the tuple on the wire (the source port did not exist at connect).
    let out = pod_probe(&c.client, &["udp-connected", "10.203.0.3:53", "connected"]);
    expect_kv(&out, "reply", "dnsproxy", "connect4 UDP redirect");
    expect_kv(&out, "peer", "10.203.0.3:53", "getpeername4");
    let seen = dns.read_until("datagram_from=");
    let from: SocketAddr = kv(&seen, "datagram_from").unwrap().parse().unwrap();
    assert_eq!(Some(from.to_string()), kv(&out, "local"), "{seen}");
    let od = redirect
        .original_dst_of_datagram(from, listener, 0)
        .unwrap()
        .expect("connected-UDP record by the tuple on the wire");
    assert_eq!(od.addr, "10.203.0.3:53".parse().unwrap());
    assert_eq!(od.source_identity, CLIENT_ID);

    // A dual-stack socket sending to an IPv4-mapped resolver: sendmsg6 + recvmsg6.
    let out = pod_probe(&c.client, &["udp", "[::ffff:10.203.0.3]:53", "query6"]);
    expect_kv(&out, "reply", "dnsproxy", "sendmsg6 redirect");
    expect_kv(&out, "from", "[::ffff:10.203.0.3]:53", "recvmsg6 rewrite");

    // No DNS policy on 5353: the datagram goes to the resolver itself.
    let _other = udp_serve(c.server.command(probe()), "0.0.0.0:5353", "resolver5353");
    let out = pod_probe(&c.client, &["udp", "10.203.0.3:5353", "other"]);
    expect_kv(&out, "reply", "resolver5353", "no L7 policy on 5353");
    expect_kv(&out, "from", "10.203.0.3:5353", "");
}

#[test]
fn fqdn_restricted_identity_may_only_connect_to_allowed_out_of_cluster_ips() {
    preflight();
    let root = PinRoot::new("fqdn");
    let mut node = Node::new("rdfq").expect("node");
    let client = node.add_pod("client", "10.204.0.2").unwrap();
    let inside = node.add_pod("inside", "10.204.0.3").unwrap();
    let outside = node.add_pod("outside", "10.204.0.9").unwrap(); // not in the ipcache: "the world"
    let _s_in = serve_in_pod(&inside, "0.0.0.0:80", "inside");
    let _s_out = serve_in_pod(&outside, "0.0.0.0:80", "outside");
    let mut redirect = load(&root);
    redirect.ipcache_upsert(client.ip, CLIENT_ID).unwrap();
    redirect.ipcache_upsert(inside.ip, SERVER_ID).unwrap();
    enroll(&mut redirect, &client, CLIENT_ID);

    // Not restricted yet: everything goes.
    let out = pod_probe(&client, &["tcp-connect", "10.204.0.9:80"]);
    expect_kv(&out, "reply", "outside", "");

    redirect.set_fqdn_restricted(CLIENT_ID, true).unwrap();
    let out = pod_probe(&client, &["tcp-connect", "10.204.0.9:80"]);
    expect_kv(&out, "errno", "1", "EPERM for a world IP DNS never allowed");
    let out = pod_probe(&client, &["tcp-connect", "10.204.0.3:80"]);
    expect_kv(
        &out,
        "reply",
        "inside",
        "in-cluster identities are not FQDN-gated",
    );

    redirect
        .fqdn_allow(CLIENT_ID, outside.ip, Some(Duration::from_secs(60)))
        .unwrap();
    let out = pod_probe(&client, &["tcp-connect", "10.204.0.9:80"]);
    expect_kv(&out, "reply", "outside", "allowed by a DNS answer");

    // An expired answer no longer allows (TTL 0 expires at once).
    redirect
        .fqdn_allow(CLIENT_ID, outside.ip, Some(Duration::ZERO))
        .unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let out = pod_probe(&client, &["tcp-connect", "10.204.0.9:80"]);
    expect_kv(&out, "errno", "1", "expired");
    assert_eq!(redirect.fqdn_gc().unwrap(), 1);

    redirect.fqdn_allow(CLIENT_ID, outside.ip, None).unwrap();
    redirect.fqdn_remove(CLIENT_ID, outside.ip).unwrap();
    let out = pod_probe(&client, &["tcp-connect", "10.204.0.9:80"]);
    expect_kv(&out, "errno", "1", "removed");

    // The ipcache is a longest-prefix match: a /29 giving the outside pod an in-cluster identity lifts the gate,
    // removing the prefix restores it.
    redirect
        .ipcache_upsert_prefix("10.204.0.8".parse().unwrap(), 29, 3000, false)
        .unwrap();
    let out = pod_probe(&client, &["tcp-connect", "10.204.0.9:80"]);
    expect_kv(&out, "reply", "outside", "LPM prefix identity");
    redirect
        .ipcache_remove("10.204.0.8".parse().unwrap(), 29)
        .unwrap();
    let out = pod_probe(&client, &["tcp-connect", "10.204.0.9:80"]);
    expect_kv(&out, "errno", "1", "prefix removed");

    // DNS with L7 policy to an out-of-cluster resolver is not gated: it goes to the DNS proxy, which must see it
    // to learn the names. UDP without L7 policy to that resolver is gated.
    redirect.policy_upsert(&egress_dns(CLIENT_ID)).unwrap();
    let _dns = udp_serve(
        node.command(probe()),
        &format!("{POD_GATEWAY}:{DNS_PORT}"),
        "dnsproxy",
    );
    let out = pod_probe(&client, &["udp", "10.204.0.9:53", "query"]);
    expect_kv(
        &out,
        "reply",
        "dnsproxy",
        "DNS to a world resolver reaches the proxy",
    );
    let out = pod_probe(&client, &["udp", "10.204.0.9:5353", "query"]);
    expect_kv(&out, "errno", "1", "sendmsg4 FQDN gate");
}

#[test]
fn tc_ingress_steers_flows_to_local_l7_pods_into_the_transparent_listener() {
    preflight();
    let root = PinRoot::new("tc");
    let c = cluster("rdtc", 205);
    // Policy routing for steered packets: marked packets are delivered locally in the node.
    c.node
        .netns
        .sh(&format!(
            "ip rule add fwmark {TPROXY_MARK:#x} lookup 100 && ip route add local 0.0.0.0/0 dev lo table 100"
        ))
        .unwrap();
    let _s8080 = serve_in_pod(&c.server, "0.0.0.0:8080", "server8080");
    let _s9090 = serve_in_pod(&c.server, "0.0.0.0:9090", "server9090");
    let mut redirect = load(&root);
    redirect
        .ipcache_upsert_prefix(c.server.ip, 32, SERVER_ID, true)
        .unwrap();
    redirect
        .policy_upsert(&ingress_http(SERVER_ID, 8080))
        .unwrap();
    let netns = PathBuf::from("/var/run/netns").join(c.node.netns.name());
    // The client is NOT enrolled: only TC sees its traffic, at the node side of its veth.
    redirect
        .attach_tc(&c.client.host_veth, Some(&netns))
        .unwrap();
    let mut proxy = proxy_standin(&c.node, &format!("0.0.0.0:{TPROXY_PORT}"), 1, true, &root);

    let out = pod_probe(&c.client, &["tcp-connect", "10.205.0.3:8080"]);
    expect_kv(&out, "reply", "proxy", "steered into the proxy");
    expect_kv(&out, "peer", "10.205.0.3:8080", "");
    let seen = proxy.read_until("end=0");
    expect_kv(
        &seen,
        "local",
        "10.205.0.3:8080",
        "the transparent socket's local address is the original destination",
    );
    assert_eq!(kv(&seen, "peer"), kv(&out, "local"), "{seen}");

    let out = pod_probe(&c.client, &["tcp-connect", "10.205.0.3:9090"]);
    expect_kv(&out, "reply", "server9090", "no L7 policy on 9090");

    redirect
        .detach_tc(&c.client.host_veth, Some(&netns))
        .unwrap();
    let out = pod_probe(&c.client, &["tcp-connect", "10.205.0.3:8080"]);
    expect_kv(&out, "reply", "server8080", "after detach");
}

const GW6: &str = "fd00:ffff::1";

/// Gives `pod` the IPv6 address `ip` routed through the node via GW6 (the harness builds IPv4 only).
fn add_ipv6(node: &Node, pod: &Pod, ip: &str) {
    pod.netns
        .sh(&format!(
            "ip -6 addr add {ip}/128 dev eth0 nodad && ip -6 route add {GW6} dev eth0 && \
             ip -6 route add default via {GW6} dev eth0"
        ))
        .unwrap();
    node.netns
        .sh(&format!(
            "ip -6 addr add {GW6}/128 dev {veth} nodad 2>/dev/null; ip -6 route add {ip}/128 dev {veth}",
            veth = pod.host_veth
        ))
        .unwrap();
}

#[test]
fn ipv6_connect6_getpeername6_getsockopt_and_dns_sendmsg6_recvmsg6() {
    preflight();
    let root = PinRoot::new("v6");
    let c = cluster("rdv6", 206);
    add_ipv6(&c.node, &c.client, "fd00:206::2");
    add_ipv6(&c.node, &c.server, "fd00:206::3");
    let client6: IpAddr = "fd00:206::2".parse().unwrap();
    let server6: IpAddr = "fd00:206::3".parse().unwrap();
    let mut redirect = load(&root);
    redirect
        .set_config(ProxyConfig {
            ipv6: Some(GW6.parse().unwrap()),
            ..config()
        })
        .unwrap();
    redirect.ipcache_upsert(client6, CLIENT_ID).unwrap();
    redirect.ipcache_upsert(server6, SERVER_ID).unwrap();
    redirect
        .policy_upsert(&ingress_http(SERVER_ID, 8080))
        .unwrap();
    redirect.policy_upsert(&egress_dns(CLIENT_ID)).unwrap();
    redirect
        .enroll(
            c.client.cgroup.path(),
            EndpointInfo {
                identity: CLIENT_ID,
                ipv4: None,
                ipv6: Some("fd00:206::2".parse().unwrap()),
            },
        )
        .unwrap();
    redirect
        .attach_proxy_cgroup(c.node.proxy_cgroup.path())
        .unwrap();
    let _s9090 = serve_in_pod(&c.server, "[::]:9090", "server9090");
    let mut proxy = proxy_standin(&c.node, &format!("[::]:{HTTP_PORT}"), 1, false, &root);

    let out = pod_probe(&c.client, &["tcp-connect", "[fd00:206::3]:8080"]);
    expect_kv(&out, "reply", "proxy", "connect6");
    expect_kv(&out, "peer", "[fd00:206::3]:8080", "getpeername6");
    let seen = proxy.read_until("end=0");
    expect_kv(
        &seen,
        "original_dst",
        "[fd00:206::3]:8080",
        "IP6T_SO_ORIGINAL_DST via cgroup/getsockopt",
    );
    let cookie: u64 = kv(&seen, "cookie").unwrap().parse().unwrap();
    let od = redirect
        .original_dst(FlowKey::Cookie(cookie))
        .unwrap()
        .expect("v6 record re-keyed by sockops");
    assert_eq!(od.addr, "[fd00:206::3]:8080".parse().unwrap());
    assert_eq!(
        (od.source_identity, od.destination_identity),
        (CLIENT_ID, SERVER_ID)
    );

    let out = pod_probe(&c.client, &["tcp-connect", "[fd00:206::3]:9090"]);
    expect_kv(&out, "reply", "server9090", "v6 bypass");

    let mut dns = udp_serve(
        c.node.command(probe()),
        &format!("[{GW6}]:{DNS_PORT}"),
        "dnsproxy6",
    );
    let out = pod_probe(&c.client, &["udp", "[fd00:206::3]:53", "query"]);
    expect_kv(&out, "reply", "dnsproxy6", "sendmsg6");
    expect_kv(&out, "from", "[fd00:206::3]:53", "recvmsg6");
    let seen = dns.read_until("datagram_from=");
    let from: SocketAddr = kv(&seen, "datagram_from").unwrap().parse().unwrap();
    let listener: SocketAddr = format!("[{GW6}]:{DNS_PORT}").parse().unwrap();
    let od = redirect
        .original_dst_of_datagram(from, listener, 0)
        .unwrap()
        .expect("v6 datagram record by 4-tuple");
    assert_eq!(od.addr, "[fd00:206::3]:53".parse().unwrap());
    assert_eq!(od.source_identity, CLIENT_ID);
}

#[test]
fn loopback_proxy_inside_the_pod_netns_is_found_by_netns_cookie() {
    preflight();
    let root = PinRoot::new("lo");
    let c = cluster("rdlo", 207);
    let mut redirect = load(&root);
    redirect
        .set_config(ProxyConfig {
            ipv4: Some(Ipv4Addr::LOCALHOST),
            ..config()
        })
        .unwrap();
    redirect.ipcache_upsert(c.server.ip, SERVER_ID).unwrap();
    redirect
        .policy_upsert(&ingress_http(SERVER_ID, 8080))
        .unwrap();
    enroll(&mut redirect, &c.client, CLIENT_ID);
    redirect
        .attach_proxy_cgroup(c.node.proxy_cgroup.path())
        .unwrap();
    // The proxy's listener opened inside the pod's netns (127.0.0.1 there), but in the proxy's cgroup.
    let mut cmd = c.client.netns.command(probe());
    c.node.proxy_cgroup.enter_on_spawn(&mut cmd);
    cmd.args([
        "accept",
        &format!("127.0.0.1:{HTTP_PORT}"),
        "1",
        "--pin-root",
    ])
    .arg(pin_root_for_netns_exec(&root));
    let mut proxy = Server::start(cmd);

    let out = pod_probe(&c.client, &["tcp-connect", "10.207.0.3:8080"]);
    expect_kv(
        &out,
        "reply",
        "proxy",
        "redirected to the pod-local listener",
    );
    expect_kv(&out, "peer", "10.207.0.3:8080", "");
    let seen = proxy.read_until("end=0");
    expect_kv(&seen, "original_dst", "10.207.0.3:8080", "");
    expect_kv(&seen, "map_original_dst", "10.207.0.3:8080", "");
    // The 4-tuple record carries the pod netns's cookie: without it (or with another netns's) it is not found.
    let tuple = FourTuple {
        client: kv(&seen, "peer").unwrap().parse().unwrap(),
        proxy: kv(&seen, "local").unwrap().parse().unwrap(),
        protocol: Protocol::Tcp,
        netns_cookie: kv(&seen, "netns_cookie").unwrap().parse().unwrap(),
    };
    assert!(tuple.netns_cookie != 0);
    assert!(
        redirect
            .original_dst(FlowKey::Tuple(tuple))
            .unwrap()
            .is_some(),
        "found with the pod's netns cookie"
    );
    let other = FourTuple {
        netns_cookie: tuple.netns_cookie + 1,
        ..tuple
    };
    assert_eq!(
        redirect.original_dst(FlowKey::Tuple(other)).unwrap(),
        None,
        "another netns's loopback flow"
    );
}

#[test]
fn tc_ingress_steers_ipv6_flows_too() {
    preflight();
    let root = PinRoot::new("tc6");
    let c = cluster("rdtc6", 208);
    add_ipv6(&c.node, &c.client, "fd00:208::2");
    add_ipv6(&c.node, &c.server, "fd00:208::3");
    c.node
        .netns
        .sh(&format!(
            "ip -6 rule add fwmark {TPROXY_MARK:#x} lookup 100 && ip -6 route add local ::/0 dev lo table 100"
        ))
        .unwrap();
    let _s8080 = serve_in_pod(&c.server, "[::]:8080", "server8080");
    let mut redirect = load(&root);
    redirect
        .ipcache_upsert_prefix("fd00:208::3".parse().unwrap(), 128, SERVER_ID, true)
        .unwrap();
    redirect
        .policy_upsert(&ingress_http(SERVER_ID, 8080))
        .unwrap();
    let netns = PathBuf::from("/var/run/netns").join(c.node.netns.name());
    redirect
        .attach_tc(&c.client.host_veth, Some(&netns))
        .unwrap();
    let mut proxy = proxy_standin(&c.node, &format!("[::]:{TPROXY_PORT}"), 1, true, &root);

    let out = pod_probe(&c.client, &["tcp-connect", "[fd00:208::3]:8080"]);
    expect_kv(&out, "reply", "proxy", "steered into the proxy");
    let seen = proxy.read_until("end=0");
    expect_kv(&seen, "local", "[fd00:208::3]:8080", "");

    redirect
        .detach_tc(&c.client.host_veth, Some(&netns))
        .unwrap();
    let out = pod_probe(&c.client, &["tcp-connect", "[fd00:208::3]:8080"]);
    expect_kv(&out, "reply", "server8080", "after detach");
}
