//! Compiles proto/ (Tollgate's Hubble-compatible flow and observer messages) into Rust with tonic-prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(
            &["proto/flow/flow.proto", "proto/observer/observer.proto"],
            &["proto"],
        )?;
    Ok(())
}
