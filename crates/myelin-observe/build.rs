//! Generates the Rust types and the gRPC service of the Observer API from
//! proto/ (Myelin's own .proto files, wire-compatible with Hubble's).

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("../../proto");
    let files = ["flow/flow.proto", "observer/observer.proto", "relay/relay.proto"].map(|f| root.join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let result = tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&files, std::slice::from_ref(&root));
    if let Err(e) = result {
        // A build script reports failure by panicking; say what to do.
        #[allow(clippy::panic)]
        {
            panic!(
                "myelin-observe build: compiling {}: {e} (protoc and the well-known .proto files are needed: \
                 scripts/setup.sh installs protobuf-compiler and libprotobuf-dev)",
                root.display()
            );
        }
    }
}
