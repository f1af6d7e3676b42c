//! Full mTLS handshakes per second per core: the node-to-node tunnel's TLS stack (crate `certs`, rustls + ring)
//! against HAProxy (OpenSSL) on the same box. A measurement, not a correctness test, so `#[ignore]`d:
//!
//! `cargo test -p tollgate-e2e --release --test mtls_bench -- --ignored --nocapture`
//!
//! Both servers present an SVID (ECDSA P-256) from one dev CA, require a client SVID from it, speak TLS 1.3 only
//! with ALPN h2 and never resume sessions nor send tickets (HAProxy: `no-tls-tickets`, `tune.ssl.cachesize 0`, and
//! OpenSSL's `NumTickets = 0` through `OPENSSL_CONF`). Both are pinned to
//! CPU 1 (HAProxy with `nbthread 1`), the load generator (`tollgate-tls-bench load`, the same rustls client for
//! both) to CPU 0. Rounds alternate the servers; each round runs one server for `BENCH_SECS` (default 5) with
//! `BENCH_CONNECTIONS` (default 32) concurrent handshake loops. Server CPU time (utime + stime from
//! `/proc/<pid>/stat`) over the round gives handshakes per server CPU-second, i.e. per core, which does not depend
//! on whether the one-core client could saturate the server.
//!
//! What each server does after the handshake differs a little: tollgate-tls-bench writes `ok` and closes; HAProxy
//! (`mode http`) answers an HTTP/2 `GET /` with `http-request return status 200`, which costs it an HTTP/2 session
//! setup on top of the handshake. The client needs that answer either way: it proves the server accepted its
//! certificate (TLS 1.3 clients finish before the server has checked theirs).
//! To size that extra, each round also runs the same request against the same HAProxy process over plain TCP
//! (`proto h2`, no TLS); the table subtracts HAProxy's CPU per h2c request from its CPU per TLS connection for an
//! estimate of the handshake alone.
//!
//! Fails when haproxy or taskset is missing, CPU 0 or 1 is not usable, any handshake failed (client or server side),
//! no handshake happened or a server sent session tickets. Servers are stopped by PID; the temporary directory is removed.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use certs::{DevCa, SpiffeId, TrustDomain, write_svid_files};
use tollgate_e2e::{ChildGuard, TempDir, require_tool, run};

const SERVER_CPU: &str = "1";
const CLIENT_CPU: &str = "0";
const WARMUP_SECS: &str = "1";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// CPU seconds (user + system, all threads) a process has used, from /proc/<pid>/stat.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/stat: {e} (did the server die?)"));
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| -> f64 {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("/proc/{pid}/stat field {i} unreadable: {stat}"))
    };
    // After "pid (comm)": state is index 0, utime index 11, stime index 12.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (field(11) + field(12)) / hz
}

/// The CPUs a process may run on, as /proc/<pid>/status says (`Cpus_allowed_list`).
fn cpus_allowed(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// A free loopback port (bound then released; the servers bind it right after).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

fn wait_for_tcp(addr: SocketAddr, server: &mut ChildGuard, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        server
            .assert_running()
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on {addr} within 10 s");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Tollgate,
    Haproxy,
    /// The same HAProxy process answering the same HTTP/2 request without TLS: its cost for the HTTP/2 part.
    HaproxyH2c,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Tollgate => "tollgate (rustls)",
            Server::Haproxy => "haproxy (OpenSSL)",
            Server::HaproxyH2c => "haproxy h2c, no TLS (requests)",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Round {
    round: usize,
    server: Server,
    handshakes: u64,
    secs: f64,
    per_sec: f64,
    server_cpu: f64,
}

impl Round {
    fn per_cpu_sec(&self) -> f64 {
        self.handshakes as f64 / self.server_cpu
    }
    fn server_util(&self) -> f64 {
        self.server_cpu / self.secs
    }
}

/// Runs the load generator on CLIENT_CPU against `addr` and returns its JSON report, failing on any failure.
fn load(
    bin: &Path,
    addr: SocketAddr,
    client_dir: &Path,
    secs: &str,
    server: Server,
) -> serde_json::Value {
    let connections = env_or("BENCH_CONNECTIONS", "32");
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", CLIENT_CPU])
        .arg(bin)
        .args(["load", "--connect", &addr.to_string(), "--svid-dir"])
        .arg(client_dir)
        .args(["--connections", &connections, "--duration-secs", secs]);
    match server {
        Server::Tollgate => {}
        Server::Haproxy => {
            cmd.arg("--openssl-compatible");
        }
        Server::HaproxyH2c => {
            cmd.arg("--plain-h2c");
        }
    }
    let out =
        run(&mut cmd).unwrap_or_else(|e| panic!("load generator against {}: {e:#}", server.name()));
    let text = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("load generator printed no JSON ({e}): {text}"));
    let failures = report["failures"].as_u64().expect("failures");
    let handshakes = report["handshakes"].as_u64().expect("handshakes");
    assert_eq!(
        failures,
        0,
        "{}: {failures} handshakes failed (and {handshakes} succeeded): {}",
        server.name(),
        report["errors"]
    );
    assert!(
        handshakes > 0,
        "{}: no handshake happened: {report}",
        server.name()
    );
    // Same work on both sides: neither server may issue session tickets (the client would not use them anyway).
    assert_eq!(
        report["tickets_received"].as_u64(),
        Some(0),
        "{}: the server sent TLS 1.3 session tickets: {report}",
        server.name()
    );
    report
}

fn measure(
    bin: &Path,
    addr: SocketAddr,
    pid: u32,
    client_dir: &Path,
    secs: &str,
    server: Server,
    round: usize,
) -> Round {
    let before = cpu_secs(pid);
    let report = load(bin, addr, client_dir, secs, server);
    let after = cpu_secs(pid);
    let r = Round {
        round,
        server,
        handshakes: report["handshakes"].as_u64().expect("handshakes"),
        secs: report["secs"].as_f64().expect("secs"),
        per_sec: report["per_sec"].as_f64().expect("per_sec"),
        server_cpu: after - before,
    };
    assert!(
        r.server_cpu > 0.0,
        "{}: no server CPU time measured for {} handshakes",
        server.name(),
        r.handshakes
    );
    eprintln!(
        "round {round} {}: {} handshakes in {:.2} s, server CPU {:.2} s; negotiated {}",
        server.name(),
        r.handshakes,
        r.secs,
        r.server_cpu,
        report["negotiated"]
    );
    r
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture, release build, as root"]
fn mtls_full_handshakes_per_core_tollgate_vs_haproxy() {
    let haproxy_bin = require_tool("haproxy");
    require_tool("taskset");
    let bin = Path::new(env!("CARGO_BIN_EXE_tollgate-tls-bench"));
    let rounds: usize = env_or("BENCH_ROUNDS", "3").parse().expect("BENCH_ROUNDS");
    let secs = env_or("BENCH_SECS", "5");
    assert!(rounds > 0, "BENCH_ROUNDS must be at least 1");

    // Both CPUs must be usable by this process (taskset fails loudly otherwise, but say why up front).
    let mine = cpus_allowed(std::process::id());
    eprintln!(
        "this process may run on CPUs {mine}; servers on CPU {SERVER_CPU}, load generator on CPU {CLIENT_CPU}"
    );

    // Certificates: one dev CA, a server SVID (both servers present it) and a client SVID.
    let dir = TempDir::new("mtls-bench").expect("temp dir");
    let td = TrustDomain::new("bench.tollgate.test").expect("trust domain");
    let ca = DevCa::create(&td, Duration::from_secs(24 * 3600)).expect("dev CA");
    let now = SystemTime::now();
    let issue = |id: &str| {
        ca.issue(
            &SpiffeId::parse(id).expect("SPIFFE ID"),
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        )
        .expect("issuing an SVID")
    };
    let server_svid = issue("spiffe://bench.tollgate.test/ns/bench/sa/server");
    let client_svid = issue("spiffe://bench.tollgate.test/ns/bench/sa/client");
    let server_dir = dir.path().join("server");
    let client_dir = dir.path().join("client");
    let server_files =
        write_svid_files(&server_svid, &ca.bundle(), &server_dir).expect("server SVID files");
    write_svid_files(&client_svid, &ca.bundle(), &client_dir).expect("client SVID files");
    // HAProxy's `crt`: certificate chain and key in one PEM file.
    let haproxy_pem = dir
        .write(
            "haproxy-svid.pem",
            &format!("{}{}", server_svid.chain_pem(), server_svid.key_pem()),
        )
        .expect("haproxy pem");

    // The Tollgate TLS server, pinned to SERVER_CPU (taskset execs it: the PID is the server's).
    let tollgate_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", SERVER_CPU])
        .arg(bin)
        .args([
            "serve",
            "--listen",
            &tollgate_addr.to_string(),
            "--svid-dir",
        ])
        .arg(&server_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut tollgate = ChildGuard::spawn(&mut cmd).expect("starting tollgate-tls-bench serve");
    // Ready when it says so: a TCP probe would count as a failed handshake on the server side.
    let mut tollgate_out =
        BufReader::new(tollgate.child_mut().stdout.take().expect("piped stdout"));
    let mut ready = String::new();
    tollgate_out
        .read_line(&mut ready)
        .expect("reading the server's stdout");
    assert!(
        ready.starts_with("listening on "),
        "tollgate-tls-bench serve did not start: {ready:?}"
    );

    // HAProxy on the same CPU, one thread, no session cache, no tickets.
    let haproxy_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let h2c_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let conf = format!(
        "global
  nbthread 1
  cpu-map 1/1 {SERVER_CPU}
  maxconn 4096
  tune.ssl.cachesize 0
defaults
  mode http
  timeout connect 5s
  timeout client 10s
  timeout server 10s
  timeout http-request 10s
frontend bench
  bind {haproxy_addr} ssl crt {crt} ca-file {ca} verify required alpn h2 ssl-min-ver TLSv1.3 no-tls-tickets
  http-request return status 200
frontend bench_h2c
  bind {h2c_addr} proto h2
  http-request return status 200
",
        crt = haproxy_pem.display(),
        ca = server_files.bundle.display(),
    );
    let conf_path = dir.write("haproxy.cfg", &conf).expect("haproxy.cfg");
    // `no-tls-tickets` and no session cache still leave OpenSSL sending two TLS 1.3 NewSessionTickets per handshake
    // (checked with `openssl s_client -msg`); HAProxy 2.6 has no setting for that, OpenSSL's own config does.
    // Tollgate's server_config sends none (send_tls13_tickets = 0), so HAProxy sends none either.
    let openssl_conf = dir
        .write(
            "openssl.cnf",
            "openssl_conf = default_conf
[default_conf]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
NumTickets = 0
",
        )
        .expect("openssl.cnf");
    run(Command::new(&haproxy_bin)
        .env("OPENSSL_CONF", &openssl_conf)
        .arg("-c")
        .arg("-f")
        .arg(&conf_path))
    .unwrap_or_else(|e| panic!("haproxy refused its configuration: {e:#}\n{conf}"));
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", SERVER_CPU])
        .arg(&haproxy_bin)
        .env("OPENSSL_CONF", &openssl_conf)
        .arg("-db")
        .arg("-f")
        .arg(&conf_path)
        .stdin(Stdio::null());
    let mut haproxy = ChildGuard::spawn(&mut cmd).expect("starting haproxy");
    wait_for_tcp(haproxy_addr, &mut haproxy, "haproxy");

    for (guard, want) in [(&tollgate, "tollgate-tls-be"), (&haproxy, "haproxy")] {
        let pid = guard.id();
        assert_eq!(comm(pid), want, "PID {pid} is not the server process");
        assert_eq!(
            cpus_allowed(pid),
            SERVER_CPU,
            "{want} (PID {pid}) is not pinned to CPU {SERVER_CPU}"
        );
    }

    let servers = [
        (Server::Tollgate, tollgate_addr, tollgate.id()),
        (Server::Haproxy, haproxy_addr, haproxy.id()),
        (Server::HaproxyH2c, h2c_addr, haproxy.id()),
    ];
    // Warm-up (not reported): caches, page faults, the first allocations.
    for &(server, addr, _) in &servers {
        load(bin, addr, &client_dir, WARMUP_SECS, server);
    }

    let mut results = Vec::new();
    for round in 1..=rounds {
        // Alternate which server goes first, so drift on the shared machine does not favour one.
        let order: Vec<_> = if round % 2 == 1 {
            servers.to_vec()
        } else {
            servers.iter().rev().copied().collect()
        };
        for (server, addr, pid) in order {
            results.push(measure(bin, addr, pid, &client_dir, &secs, server, round));
        }
    }

    // Server-side view of the Tollgate server: every accepted connection must have completed.
    haproxy
        .assert_running()
        .expect("haproxy died during the benchmark");
    tollgate
        .terminate(Duration::from_secs(5))
        .expect("stopping tollgate-tls-bench serve");
    let mut text = String::new();
    tollgate_out
        .read_to_string(&mut text)
        .expect("reading the server's stdout");
    let server_report: serde_json::Value = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("tollgate-tls-bench serve printed no final report: {text}"));
    let server_failures = server_report["failures"].as_u64().unwrap_or(u64::MAX);
    haproxy
        .terminate(Duration::from_secs(5))
        .expect("stopping haproxy");

    let table = render(&results, &secs);
    println!("{table}");
    assert_eq!(
        server_failures, 0,
        "the Tollgate server saw failed handshakes: {server_report}"
    );
    drop(dir);
}

fn render(results: &[Round], secs: &str) -> String {
    let connections = env_or("BENCH_CONNECTIONS", "32");
    let mut t = format!(
        "\nFull mTLS handshakes (TLS 1.3, ECDSA P-256 SVIDs both ways, no resumption); server on CPU {SERVER_CPU}, \
         rustls load generator ({connections} concurrent loops) on CPU {CLIENT_CPU}, {secs} s per run.\n\n\
         | round | server | handshakes | secs | handshakes/s | server CPU s | server core busy | handshakes per server CPU-s |\n\
         | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    );
    for r in results {
        t.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.0} | {:.2} | {:.0}% | {:.0} |\n",
            r.round,
            r.server.name(),
            r.handshakes,
            r.secs,
            r.per_sec,
            r.server_cpu,
            r.server_util() * 100.0,
            r.per_cpu_sec()
        ));
    }
    let of = |s: Server| results.iter().filter(move |r| r.server == s);
    let rate = |s: Server| mean(of(s).map(|r| r.per_sec));
    let per_cpu = |s: Server| mean(of(s).map(|r| r.per_cpu_sec()));
    t.push_str(
        "\n| mean over rounds | handshakes/s | handshakes per server CPU-s (per core) |\n| --- | ---: | ---: |\n",
    );
    for s in [Server::Tollgate, Server::Haproxy, Server::HaproxyH2c] {
        t.push_str(&format!(
            "| {} | {:.0} | {:.0} |\n",
            s.name(),
            rate(s),
            per_cpu(s)
        ));
    }
    t.push_str(&format!(
        "| ratio tollgate / haproxy | {:.2} | {:.2} |\n",
        rate(Server::Tollgate) / rate(Server::Haproxy),
        per_cpu(Server::Tollgate) / per_cpu(Server::Haproxy)
    ));
    // HAProxy's CPU per TLS connection minus its CPU per h2c connection: the handshake alone (TCP accept and close
    // stay counted on both sides, as does Tollgate's `ok` + close_notify).
    let handshake_only = 1.0 / (1.0 / per_cpu(Server::Haproxy) - 1.0 / per_cpu(Server::HaproxyH2c));
    t.push_str(&format!(
        "| haproxy, HTTP/2 part subtracted (estimate) | | {handshake_only:.0} |\n\
         | ratio tollgate / haproxy without its HTTP/2 part | | {:.2} |\n",
        per_cpu(Server::Tollgate) / handshake_only
    ));
    t.push_str(
        "\n| round | ratio handshakes/s | ratio per server CPU-s |\n| ---: | ---: | ---: |\n",
    );
    let rounds = results.iter().map(|r| r.round).max().unwrap_or(0);
    for round in 1..=rounds {
        let find = |s: Server| {
            results
                .iter()
                .find(|r| r.round == round && r.server == s)
                .expect("both servers ran in every round")
        };
        let (a, b) = (find(Server::Tollgate), find(Server::Haproxy));
        t.push_str(&format!(
            "| {round} | {:.2} | {:.2} |\n",
            a.per_sec / b.per_sec,
            a.per_cpu_sec() / b.per_cpu_sec()
        ));
    }
    t
}
