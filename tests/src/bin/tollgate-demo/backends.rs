//! The servers behind the demo's non-HTTP rules, each a real one in its pod: a Python gRPC server (grpcio) in
//! media/library, dnsmasq as the cluster resolver in kube-system/resolver, two "outside" hosts (namespaces with
//! nginx on 443) at the IPs the resolver hands out, and a Kafka-protocol broker (Tansu) in stream/broker with its
//! topics created. Everything is started before the proxy, so set-up traffic never crosses the redirect.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use tollgate_e2e::dns::start_dnsmasq;
use tollgate_e2e::grpc::write_library_service;
use tollgate_e2e::kafka::start_tansu;
use tollgate_e2e::scenario::EbpfScenario;
use tollgate_e2e::{ChildGuard, Nginx, Pod, TempDir, require_tool};

pub const GRPC_SERVER_POD: &str = "media/library";
pub const GRPC_PORT: u16 = 50051;
pub const RESOLVER_POD: &str = "kube-system/resolver";
pub const BROKER_POD: &str = "stream/broker";
pub const KAFKA_PORT: u16 = 9092;
pub const TOPICS: &[&str] = &["events", "audit"];

/// What the resolver serves: the allowed name, and the refused one (whose IP must stay closed).
const RECORDS: &[(&str, &str)] = &[
    ("telemetry.example.net", "203.0.113.40"),
    ("tracker.example.org", "192.0.2.77"),
];

/// The running servers; dropped (killed by PID, namespaces deleted) before the scenario itself.
pub struct Backends {
    pub grpc_dir: TempDir,
    _grpc: ChildGuard,
    _dnsmasq: ChildGuard,
    _outside: Vec<(Pod, Nginx)>,
    _broker: ChildGuard,
}

impl Backends {
    pub fn start(sc: &mut EbpfScenario) -> Result<Self> {
        let (grpc_dir, grpc) = start_grpc(sc.pod(GRPC_SERVER_POD))?;
        println!(
            "   media/library        gRPC server media.Library on :{GRPC_PORT} (python grpcio)"
        );
        let resolver = sc.pod(RESOLVER_POD);
        let records: Vec<String> = RECORDS.iter().map(|(n, ip)| format!("{n},{ip}")).collect();
        let dnsmasq = start_dnsmasq(
            resolver,
            &resolver.ip.to_string(),
            &records,
            // dnsmasq's default TTL for its own records is 0, which would expire the toFQDNs grant at once.
            &["--local-ttl=300".to_string()],
            RECORDS[0],
        )?;
        println!(
            "   kube-system/resolver dnsmasq on :53 ({} names)",
            RECORDS.len()
        );
        let mut outside = Vec::new();
        for (i, (_, ip)) in RECORDS.iter().enumerate() {
            let pod = sc.node.add_pod(&format!("outside{i}"), ip)?;
            let nginx = Nginx::start(&pod, 443, 8443)?;
            println!("   outside host         {ip:<13} nginx on :443 (plain HTTP)");
            outside.push((pod, nginx));
        }
        let broker = start_broker(sc)?;
        println!(
            "   stream/broker        Kafka broker (Tansu) on :{KAFKA_PORT}, topics {TOPICS:?}"
        );
        Ok(Backends {
            grpc_dir,
            _grpc: grpc,
            _dnsmasq: dnsmasq,
            _outside: outside,
            _broker: broker,
        })
    }
}

fn python() -> PathBuf {
    require_tool("python3")
}

/// Generates the stubs with grpc_tools.protoc and starts the server; returns once it listens.
fn start_grpc(pod: &Pod) -> Result<(TempDir, ChildGuard)> {
    let dir = TempDir::new("demo-grpc")?;
    write_library_service(dir.path(), &python())?;
    let mut server = ChildGuard::spawn(
        pod.command(python())
            .arg(dir.path().join("server.py"))
            .arg(dir.path())
            .arg(format!("0.0.0.0:{GRPC_PORT}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    pod.netns
        .wait_for_tcp((pod.ip, GRPC_PORT).into(), Duration::from_secs(15))
        .context("the gRPC server in media/library did not start listening")?;
    server.assert_running()?;
    Ok((dir, server))
}

/// Tansu, the Kafka-protocol broker the Kafka tests use, with the demo's topics.
fn start_broker(sc: &EbpfScenario) -> Result<ChildGuard> {
    start_tansu(sc.pod(BROKER_POD), KAFKA_PORT, sc.dir.path(), TOPICS)
}
