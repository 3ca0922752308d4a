//! Errors of the lab library.

use std::path::PathBuf;

/// Everything that can go wrong building, inspecting or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// lab.yaml could not be parsed (syntax, unknown or missing field).
    #[error("{source_name}: {message}")]
    Parse { source_name: String, message: String },
    /// lab.yaml parsed but is inconsistent; `field` is a path like `pods[1].node`.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// A lab name that cannot be used.
    #[error("lab name {name:?}: {message}")]
    BadLabName { name: String, message: String },
    /// No lab of that name on this machine.
    #[error("no lab named {name:?} (no state file at {path}); `myelin lab up --name {name}` creates it")]
    NoSuchLab { name: String, path: PathBuf },
    /// A lab of that name exists already.
    #[error("a lab named {name:?} exists already (state at {path}); run `myelin lab down --name {name}` first")]
    LabExists { name: String, path: PathBuf },
    /// A helper binary is missing.
    #[error("cannot find {binary} (looked in: {searched}); `cargo build --workspace --bins` builds it, or set MYELIN_BIN_DIR")]
    MissingBinary { binary: String, searched: String },
    /// An external command failed.
    #[error("{what}: `{command}` failed: {detail}")]
    Command { what: String, command: String, detail: String },
    /// A file-system operation failed.
    #[error("{what} {path}: {source}")]
    Io { what: String, path: PathBuf, source: std::io::Error },
    /// An agent did not become healthy.
    #[error("agent of node {node}: {message}\n--- last lines of {log} ---\n{tail}")]
    Agent { node: String, message: String, log: PathBuf, tail: String },
    /// An etcd member of the lab's kvstore did not start, become healthy or stop.
    #[error("kvstore member {member} ({address}): {message}\n--- last lines of {log} ---\n{tail}")]
    Kvstore { member: String, address: String, message: String, log: PathBuf, tail: String },
    /// A call to an agent's API failed.
    #[error("{what} (agent {socket}): {source}")]
    Api { what: String, socket: PathBuf, source: myelin_api::ClientError },
    /// The CNI plugin failed.
    #[error("CNI {command} for pod {pod}: {message}")]
    Cni { command: String, pod: String, message: String },
    /// A node, pod or external host that this lab does not have.
    #[error("lab {lab} has no {kind} {name:?}")]
    NotFound { lab: String, kind: &'static str, name: String },
    /// The lab's state file is unreadable.
    #[error("state file {path}: {message}")]
    State { path: PathBuf, message: String },
    /// Processes in the lab's cgroups or namespaces did not end.
    #[error("{message}")]
    Processes { message: String },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys { what: String, source: nix::Error },
}

/// Result with [`LabError`].
pub type Result<T, E = LabError> = std::result::Result<T, E>;

pub(crate) fn io(what: impl Into<String>, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    let path = path.into();
    move |source| LabError::Io { what, path, source }
}
