//! The gRPC service the gRPC tests and the demo run (`package media; service Library`): its .proto, a real grpcio
//! server and clients as Python scripts, and the generated stubs, written into one directory.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};

pub const GRPC_PROTO: &str = r#"syntax = "proto3";
package media;
service Library {
  rpc FetchAlbum (Album) returns (Album);
  rpc BrowseAlbum (Album) returns (Album);
  rpc RemoveAlbum (Album) returns (Album);
  rpc UploadTracks (stream Album) returns (Album);
}
message Album { string id = 1; }
"#;

pub const GRPC_SERVER: &str = r#"
import sys, grpc
from concurrent import futures
sys.path.insert(0, sys.argv[1])
import media_pb2, media_pb2_grpc
class Library(media_pb2_grpc.LibraryServicer):
    def FetchAlbum(self, req, ctx): return media_pb2.Album(id="fetched " + req.id)
    def BrowseAlbum(self, req, ctx): return media_pb2.Album(id="browsed " + req.id)
    def RemoveAlbum(self, req, ctx): return media_pb2.Album(id="removed " + req.id)
    def UploadTracks(self, reqs, ctx): return media_pb2.Album(id="uploaded %d" % sum(1 for _ in reqs))
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

/// A client-streaming call sending `argv[3]` messages `argv[4]` seconds apart. Prints
/// `OK <reply> <seconds>` or `ERR <status code number> <seconds> <details>`.
pub const GRPC_TRICKLE_CLIENT: &str = r#"
import sys, time, grpc
sys.path.insert(0, sys.argv[1])
import media_pb2, media_pb2_grpc
stub = media_pb2_grpc.LibraryStub(grpc.insecure_channel(sys.argv[2]))
def tracks():
    for _ in range(int(sys.argv[3])):
        yield media_pb2.Album(id="t")
        time.sleep(float(sys.argv[4]))
t0 = time.monotonic()
try:
    r = stub.UploadTracks(tracks(), timeout=30)
    print("OK", r.id.replace(" ", "_"), round(time.monotonic() - t0, 2))
except grpc.RpcError as e:
    print("ERR", e.code().value[0], round(time.monotonic() - t0, 2), e.details())
"#;

/// Writes the .proto, `server.py`, `client.py` and `trickle.py` into `dir` and generates the stubs there with
/// `py -m grpc_tools.protoc`.
pub fn write_library_service(dir: &Path, py: &Path) -> Result<()> {
    for (name, text) in [
        ("media.proto", GRPC_PROTO),
        ("server.py", GRPC_SERVER),
        ("client.py", GRPC_CLIENT),
        ("trickle.py", GRPC_TRICKLE_CLIENT),
    ] {
        std::fs::write(dir.join(name), text).with_context(|| format!("writing {name}"))?;
    }
    let out = Command::new(py)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(dir)
        .arg(format!("--python_out={}", dir.display()))
        .arg(format!("--grpc_python_out={}", dir.display()))
        .arg(dir.join("media.proto"))
        .output()
        .context("running grpc_tools.protoc")?;
    ensure!(
        out.status.success(),
        "grpc_tools.protoc failed (python3 needs grpcio and grpcio-tools: run `sudo ./dev setup`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
