//! Generates the Rust types and the gRPC service of the Observer API from
//! proto/ (Myelin's own .proto files, wire-compatible with Hubble's), and their
//! protojson (proto3 JSON mapping) serde impls with Hubble's proto field names.
//!
//! The well-known message types the protos use (Timestamp, FieldMask, Any) are
//! our own (`proto::wkt`), with the JSON forms the mapping prescribes (RFC 3339
//! time in UTC with `Z`, a field mask as one string, `Any` with its `@type`).
//! The wrapper types (BoolValue, Int32Value, UInt32Value) stay plain
//! `Option<bool>`/`Option<i32>`/`Option<u32>`, whose JSON is the bare value.

use std::path::{Path, PathBuf};

fn fail(what: &str, e: &dyn std::fmt::Display) -> ! {
    // A build script reports failure by panicking; say what to do.
    #[allow(clippy::panic)]
    {
        panic!(
            "myelin-observe build: {what}: {e} (protoc and the well-known .proto files are needed: \
             scripts/setup.sh installs protobuf-compiler and libprotobuf-dev)"
        );
    }
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("../../proto");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    let files = ["flow/flow.proto", "observer/observer.proto", "relay/relay.proto"].map(|f| root.join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let descriptors = out.join("observer_descriptors.bin");
    let result = tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(&descriptors)
        .extern_path(".google.protobuf.Timestamp", "crate::proto::wkt::Timestamp")
        .extern_path(".google.protobuf.FieldMask", "crate::proto::wkt::FieldMask")
        .extern_path(".google.protobuf.Any", "crate::proto::wkt::Any")
        .compile_protos(&files, std::slice::from_ref(&root));
    if let Err(e) = result {
        fail(&format!("compiling {}", root.display()), &e);
    }
    protojson(&descriptors, &out);
}

/// serde impls following the proto3 JSON mapping, with the proto field names
/// (`IP`, `l4`, `TCP`, `destination_port`), as `hubble observe -o jsonpb` prints.
fn protojson(descriptors: &Path, out: &Path) {
    let bytes = std::fs::read(descriptors).unwrap_or_else(|e| fail(&format!("reading {}", descriptors.display()), &e));
    let mut b = pbjson_build::Builder::new();
    if let Err(e) = b.register_descriptors(&bytes) {
        fail("reading the descriptor set", &e);
    }
    if let Err(e) = b.out_dir(out).preserve_proto_field_names().build(&[".flow", ".observer", ".relay"]) {
        fail("generating the protojson serde impls", &e);
    }
}
