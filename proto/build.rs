//! Compiles the `.proto` files with protox (pure Rust, so a fresh machine
//! needs no `protoc`) and generates prost messages and tonic services.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/shoal/v1/package.proto",
        "proto/shoal/v1/swarm.proto",
        "proto/shoal/v1/controller.proto",
        "proto/shoal/v1/admin.proto",
        "proto/shoal/v1/local.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // Payloads and hashes are `bytes::Bytes`: frames pass through without copies.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
