//! Compiles proto/workload.proto (the SPIFFE Workload API subset Tollgate uses) with tonic-prost-build. Needs
//! `protoc` (Debian: protobuf-compiler, installed by .ci/install-deps).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(true)
        // The server half is used by the tests' in-process Workload API server.
        .build_server(true)
        .compile_protos(&["proto/workload.proto"], &["proto"])?;
    Ok(())
}
