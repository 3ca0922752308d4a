//! The Observer API's messages and service, generated from proto/ with
//! Hubble's package names (`flow`, `observer`, `relay`) and field numbers.

#[allow(clippy::all, clippy::pedantic, missing_docs, clippy::unwrap_used, clippy::expect_used)]
pub mod flow {
    tonic::include_proto!("flow");
}

#[allow(clippy::all, clippy::pedantic, missing_docs, clippy::unwrap_used, clippy::expect_used)]
pub mod relay {
    tonic::include_proto!("relay");
}

#[allow(clippy::all, clippy::pedantic, missing_docs, clippy::unwrap_used, clippy::expect_used)]
pub mod observer {
    tonic::include_proto!("observer");
}
