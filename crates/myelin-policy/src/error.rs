//! Errors of policy parsing and validation.

use std::fmt;

use serde::Serialize;
use thiserror::Error;

/// One problem found in a policy document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Issue {
    pub file: String,
    /// 1-based index of the YAML document in the file.
    pub document: usize,
    /// `Kind namespace/name` when known.
    pub policy: Option<String>,
    /// Field path, e.g. `spec.ingress[0].toPorts[0].ports[0].port` (empty: the whole document).
    pub path: String,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.document)?;
        if let Some(p) = &self.policy {
            write!(f, " ({p})")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a set of policy documents was rejected. The whole input is rejected; every problem found
/// is listed, one per line.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// The text is not valid YAML.
    #[error("{file}: invalid YAML: {message}")]
    Yaml { file: String, message: String },
    /// Documents parsed as YAML but are not valid policies.
    #[error("{}", join_lines(.0))]
    Invalid(Vec<Issue>),
}

impl PolicyError {
    /// The individual problems (empty for YAML syntax errors).
    #[must_use]
    pub fn issues(&self) -> &[Issue] {
        match self {
            Self::Yaml { .. } => &[],
            Self::Invalid(v) => v,
        }
    }
}

fn join_lines(issues: &[Issue]) -> String {
    issues.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}
