//! Compiles proto/ (Tollgate's Hubble-compatible flow, observer and relay messages, and the standard gRPC health
//! service) into Rust with tonic-prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(
            &[
                "proto/flow/flow.proto",
                "proto/relay/relay.proto",
                "proto/observer/observer.proto",
                "proto/grpc/health/v1/health.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
