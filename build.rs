//! Compiles the gRPC contract and keeps its descriptor set for server reflection.
//!
//! The proto files are parsed by protox, a protobuf compiler in Rust that
//! bundles the well-known types (`google/protobuf/duration.proto`, ...), so
//! the build needs no system `protoc` and no `libprotobuf-dev`.

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let files = ["proto/stocklock/v1/stocklock.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    std::fs::write(out_dir.join("stocklock_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
