//! Compiles `edge.proto` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "decloud/edge/v1/edge.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Tunnel payloads decode as `Bytes` slices of tonic's receive buffer: no copy per frame.
        .bytes(".decloud.edge.v1.TunnelFrame")
        .compile_fds(fds)?;
    Ok(())
}
