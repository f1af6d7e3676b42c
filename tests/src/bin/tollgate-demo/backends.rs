//! The servers behind the demo's non-HTTP rules, each a real one in its pod: a Python gRPC server (grpcio) in
//! media/library, dnsmasq as the cluster resolver in kube-system/resolver, two "outside" hosts (namespaces with
//! nginx on 443) at the IPs the resolver hands out, and a Kafka-protocol broker (Tansu) in stream/broker with its
//! topics created. Everything is started before the proxy, so set-up traffic never crosses the redirect.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tollgate_e2e::dns::start_dnsmasq;
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

const GRPC_PROTO: &str = r#"syntax = "proto3";
package media;
service Library {
  rpc FetchAlbum (Album) returns (Album);
  rpc BrowseAlbum (Album) returns (Album);
  rpc RemoveAlbum (Album) returns (Album);
}
message Album { string id = 1; }
"#;

const GRPC_SERVER: &str = r#"
import sys, grpc
from concurrent import futures
sys.path.insert(0, sys.argv[1])
import media_pb2, media_pb2_grpc
class Library(media_pb2_grpc.LibraryServicer):
    def FetchAlbum(self, req, ctx): return media_pb2.Album(id="fetched " + req.id)
    def BrowseAlbum(self, req, ctx): return media_pb2.Album(id="browsed " + req.id)
    def RemoveAlbum(self, req, ctx): return media_pb2.Album(id="removed " + req.id)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
media_pb2_grpc.add_LibraryServicer_to_server(Library(), server)
server.add_insecure_port(sys.argv[2])
server.start()
server.wait_for_termination()
"#;

/// Prints `OK <reply>` or `ERR <status code number> <details>`.
pub const GRPC_CLIENT: &str = r#"
import sys, grpc
sys.path.insert(0, sys.argv[1])
import media_pb2, media_pb2_grpc
ch = grpc.insecure_channel(sys.argv[2])
stub = media_pb2_grpc.LibraryStub(ch)
try:
    r = getattr(stub, sys.argv[3])(media_pb2.Album(id="a1"), timeout=5)
    print("OK", r.id)
except grpc.RpcError as e:
    print("ERR", e.code().value[0], e.details())
"#;

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
    dir.write("media.proto", GRPC_PROTO)?;
    dir.write("server.py", GRPC_SERVER)?;
    dir.write("client.py", GRPC_CLIENT)?;
    let out = Command::new(python())
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(dir.path())
        .arg(format!("--python_out={}", dir.path().display()))
        .arg(format!("--grpc_python_out={}", dir.path().display()))
        .arg(dir.path().join("media.proto"))
        .output()?;
    ensure!(
        out.status.success(),
        "grpc_tools.protoc failed (python3 needs grpcio and grpcio-tools: run `sudo ./dev setup`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
