//! Generates the tonic/prost code for proto/caldera/v1/worker.proto with a vendored protoc, so no
//! protoc is needed on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // read at run time: a build script compiled for another checkout may be reused from a shared
    // target dir, and a path baked in at compile time would then point there
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let proto = root.join("caldera/v1/worker.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &[proto], &[root])?;
    Ok(())
}
