//! Test-only crate: see `tests/podman.rs`, where podman (runc, CNI network
//! backend) runs containers on a network plumbed by `myelin-cni` and a real
//! `myelin-agent`.
#![forbid(unsafe_code)]
