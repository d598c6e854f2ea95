//! Compiles `proto/` with protox (pure Rust, no `protoc`) and writes the descriptor set for reflection.
use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTO_FILES: &[&str] = &[
    "common/v1/common.proto",
    "availability/v1/availability.proto",
    "reservation/v1/reservation.proto",
    "sourcing/v1/sourcing.proto",
    "replenishment/v1/replenishment.proto",
];

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let descriptors = protox::compile(PROTO_FILES, [&root])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("descriptors.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
