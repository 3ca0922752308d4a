//! Label sets and their one canonical string encoding.
//!
//! A label is `source:key=value` (`k8s:app=web`, `reserved:host=`). A label set is encoded as its
//! labels sorted bytewise by `(source, key, value)` and joined by `;`, e.g.
//! `k8s:app=web;k8s:io.kubernetes.pod.namespace=default`. The encoding is what the identity keys
//! hold and what the per-node reference keys embed, so two nodes that see the same labels in any
//! order produce the same bytes.
//!
//! Rules that keep the encoding unambiguous, checked by [`Label::new`]:
//! - source: non-empty, ASCII letters, digits, `.`, `_`, `-`;
//! - key: non-empty, printable, no whitespace, no `;` and no `=` (it may hold `/` and `:`,
//!   e.g. `app.kubernetes.io/name`, `cidr:10.0.0.0/8`);
//! - value: may be empty, printable, no whitespace, no `;` and no `/` (so the reference key
//!   `value/<labels>/<node>` splits at its last `/`, and the prefix `value/<labels>/` matches no
//!   other label set);
//! - one value per `source:key`.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::KvstoreError;

/// One label, `source:key=value`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    source: String,
    key: String,
    value: String,
}

fn invalid(reason: String) -> KvstoreError {
    KvstoreError::Invalid { field: "labels", reason }
}

fn printable_no_space(s: &str) -> bool {
    s.chars().all(|c| !c.is_control() && !c.is_whitespace())
}

impl Label {
    /// A label, checked against the encoding rules in the module doc.
    pub fn new(source: &str, key: &str, value: &str) -> Result<Self, KvstoreError> {
        let shown = format!("{source}:{key}={value}");
        if source.is_empty() || !source.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
            return Err(invalid(format!(
                "label `{shown}`: source must be non-empty ASCII letters, digits, '.', '_' or '-'"
            )));
        }
        if key.is_empty() || !printable_no_space(key) || key.contains([';', '=']) {
            return Err(invalid(format!(
                "label `{shown}`: key must be non-empty, printable, without whitespace, ';' or '='"
            )));
        }
        if !printable_no_space(value) || value.contains([';', '/']) {
            return Err(invalid(format!("label `{shown}`: value must be printable, without whitespace, ';' or '/'")));
        }
        Ok(Label { source: source.to_string(), key: key.to_string(), value: value.to_string() })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}={}", self.source, self.key, self.value)
    }
}

impl FromStr for Label {
    type Err = KvstoreError;

    /// `source:key=value`; the source ends at the first `:`, the key at the first `=` after it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (source, rest) =
            s.split_once(':').ok_or_else(|| invalid(format!("label `{s}`: expected `source:key=value`, no ':'")))?;
        let (key, value) =
            rest.split_once('=').ok_or_else(|| invalid(format!("label `{s}`: expected `source:key=value`, no '='")))?;
        Label::new(source, key, value)
    }
}

/// A non-empty set of labels; [`fmt::Display`] gives the canonical encoding.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(BTreeSet<Label>);

impl Labels {
    /// A label set from labels in any order; exact duplicates collapse, and two values for one
    /// `source:key` are refused.
    pub fn new(labels: impl IntoIterator<Item = Label>) -> Result<Self, KvstoreError> {
        let set: BTreeSet<Label> = labels.into_iter().collect();
        if set.is_empty() {
            return Err(invalid("a label set needs at least one label".to_string()));
        }
        let mut prev: Option<&Label> = None;
        for l in &set {
            if let Some(p) = prev {
                if p.source == l.source && p.key == l.key {
                    return Err(invalid(format!(
                        "`{}:{}` has two values, `{}` and `{}`",
                        l.source, l.key, p.value, l.value
                    )));
                }
            }
            prev = Some(l);
        }
        Ok(Labels(set))
    }

    /// Parses a `;`-separated list in any order (the canonical encoding, or a hand-written one).
    pub fn parse(s: &str) -> Result<Self, KvstoreError> {
        let labels = s.split(';').map(Label::from_str).collect::<Result<Vec<_>, _>>()?;
        Labels::new(labels)
    }

    /// Parses stored content, which must be exactly the canonical encoding.
    pub fn parse_canonical(s: &str) -> Result<Self, KvstoreError> {
        let labels = Labels::parse(s)?;
        if labels.canonical() != s {
            return Err(invalid(format!("`{s}` is not canonical (expected `{}`)", labels.canonical())));
        }
        Ok(labels)
    }

    /// The canonical encoding (see the module doc).
    pub fn canonical(&self) -> String {
        self.to_string()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Label> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a label set is never empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{l}")?;
        }
        Ok(())
    }
}

impl FromStr for Labels {
    type Err = KvstoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Labels::parse(s)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn canonical_is_sorted_and_order_independent() {
        let a = Labels::parse("k8s:io.kubernetes.pod.namespace=default;k8s:app=web").unwrap();
        let b = Labels::parse("k8s:app=web;k8s:io.kubernetes.pod.namespace=default;k8s:app=web").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.canonical(), "k8s:app=web;k8s:io.kubernetes.pod.namespace=default");
        assert_eq!(Labels::parse_canonical(&a.canonical()).unwrap(), a);
        let slash = Labels::parse("cidr:10.0.0.0/8=;k8s:app.kubernetes.io/name=db").unwrap();
        assert_eq!(slash.canonical(), "cidr:10.0.0.0/8=;k8s:app.kubernetes.io/name=db");
    }

    #[test]
    fn bad_labels_are_refused_naming_the_problem() {
        for (input, needle) in [
            ("", "no ':'"),
            ("k8s:app", "no '='"),
            (":app=web", "source"),
            ("k8s:=web", "key"),
            ("k8s:app=a/b", "value"),
            ("k8s:app=a b", "value"),
            ("k8s:app=web;k8s:app=db", "two values"),
        ] {
            let err = Labels::parse(input).unwrap_err().to_string();
            assert!(err.contains("invalid labels") && err.contains(needle), "{input:?}: {err}");
        }
        let err = Labels::parse_canonical("k8s:b=1;k8s:a=1").unwrap_err().to_string();
        assert!(err.contains("not canonical"), "{err}");
    }
}
