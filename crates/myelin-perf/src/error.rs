//! Errors of the benchmark library: each says what was being done and with what.

use std::path::PathBuf;

pub type Result<T, E = PerfError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    #[error("{tool} is not installed (Debian package: {package}); run scripts/setup.sh")]
    MissingTool { tool: &'static str, package: &'static str },
    #[error("{what}: `{command}` failed: {detail}")]
    Command { what: String, command: String, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {}: {source}", path.display())]
    Setns {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("lab: {0}")]
    Lab(#[from] myelin_lab::LabError),
    #[error("agent API ({what}): {source}")]
    Api {
        what: String,
        #[source]
        source: myelin_api::ClientError,
    },
    #[error("{what}: timed out after {seconds:.1} s")]
    Timeout { what: String, seconds: f64 },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error("interrupted")]
    Interrupted,
}

/// `map_err` helper for I/O errors.
pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PerfError {
    let what = what.into();
    move |source| PerfError::Io { what, source }
}
