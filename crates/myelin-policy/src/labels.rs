//! Labels and Kubernetes-style label selectors.
//!
//! Keys may carry a Cilium label source prefix: `k8s:` and `any:` are stripped when labels are
//! stored and when selectors match, so `k8s:app` in a selector matches the pod label `app`.
//! Other sources (`reserved:`, `cidr:`) are kept: the reserved identities carry labels such as
//! `reserved:host`, which a selector can name explicitly.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Label key holding an endpoint's namespace in its security labels.
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Prefix of namespace labels copied into an endpoint's security labels.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// Label Kubernetes puts on every namespace, naming it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Strips the `k8s:` / `any:` source prefix of a label key.
#[must_use]
pub fn normalize_key(key: &str) -> &str {
    key.strip_prefix("k8s:").or_else(|| key.strip_prefix("any:")).unwrap_or(key)
}

/// A set of labels (key -> value). Keys are stored without `k8s:`/`any:` prefixes.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "BTreeMap<String, String>", into = "BTreeMap<String, String>")]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts a label; a `k8s:`/`any:` prefix on the key is stripped.
    pub fn insert(&mut self, key: impl AsRef<str>, value: impl Into<String>) {
        self.0.insert(normalize_key(key.as_ref()).to_owned(), value.into());
    }

    /// Value of a label; the key may carry a `k8s:`/`any:` prefix.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(normalize_key(key)).map(String::as_str)
    }

    #[must_use]
    pub fn contains_key(&self, key: &str) -> bool {
        self.0.contains_key(normalize_key(key))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[must_use]
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        map.into_iter().collect()
    }
}

impl From<Labels> for BTreeMap<String, String> {
    fn from(labels: Labels) -> Self {
        labels.0
    }
}

impl<K: AsRef<str>, V: Into<String>> FromIterator<(K, V)> for Labels {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        let mut labels = Labels::new();
        for (k, v) in iter {
            labels.insert(k, v);
        }
        labels
    }
}

impl<K: AsRef<str>, V: Into<String>, const N: usize> From<[(K, V); N]> for Labels {
    fn from(arr: [(K, V); N]) -> Self {
        arr.into_iter().collect()
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if v.is_empty() {
                write!(f, "{k}")?;
            } else {
                write!(f, "{k}={v}")?;
            }
        }
        Ok(())
    }
}

/// The security-relevant labels of a pod: its own labels, its namespace as
/// `io.kubernetes.pod.namespace=<ns>`, and each namespace label as
/// `io.cilium.k8s.namespace.labels.<k>=<v>`. Like Kubernetes, every namespace is taken to carry
/// `kubernetes.io/metadata.name=<ns>` even when the caller does not list it.
#[must_use]
pub fn security_labels(pod_labels: &Labels, namespace: &str, namespace_labels: &Labels) -> Labels {
    let mut out = pod_labels.clone();
    out.insert(POD_NAMESPACE_LABEL, namespace);
    out.insert(format!("{NAMESPACE_LABELS_PREFIX}{NAMESPACE_NAME_LABEL}"), namespace);
    for (k, v) in namespace_labels.iter() {
        out.insert(format!("{NAMESPACE_LABELS_PREFIX}{k}"), v);
    }
    out
}

/// Operator of a selector requirement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Operator {
    /// Parses the Kubernetes spelling of an operator.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "In" => Some(Self::In),
            "NotIn" => Some(Self::NotIn),
            "Exists" => Some(Self::Exists),
            "DoesNotExist" => Some(Self::DoesNotExist),
            _ => None,
        }
    }
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl Requirement {
    #[must_use]
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Operator::NotIn => value.is_none_or(|v| self.values.iter().all(|x| x != v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }

    /// Why this requirement is malformed, if it is (Kubernetes rules: In/NotIn need values,
    /// Exists/DoesNotExist take none).
    #[must_use]
    pub fn problem(&self) -> Option<String> {
        match self.operator {
            Operator::In | Operator::NotIn if self.values.is_empty() => {
                Some(format!("operator {:?} needs at least one value", self.operator))
            }
            Operator::Exists | Operator::DoesNotExist if !self.values.is_empty() => {
                Some(format!("operator {:?} takes no values", self.operator))
            }
            _ => None,
        }
    }
}

/// A Kubernetes label selector. The empty selector matches every label set.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// The selector matching everything.
    #[must_use]
    pub fn everything() -> Self {
        Self::default()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    #[must_use]
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v.as_str()))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Whether the selector names `key` (after source-prefix stripping) in matchLabels or
    /// matchExpressions.
    #[must_use]
    pub fn mentions_key(&self, key: &str) -> bool {
        self.match_labels.keys().any(|k| normalize_key(k) == key)
            || self.match_expressions.iter().any(|r| normalize_key(&r.key) == key)
    }

    /// Adds `key=value` as a matchLabels requirement.
    #[must_use]
    pub fn with_label(mut self, key: &str, value: &str) -> Self {
        self.match_labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// AND of two selectors.
    #[must_use]
    pub fn and(mut self, other: &LabelSelector) -> Self {
        for (k, v) in &other.match_labels {
            if let Some(existing) = self.match_labels.get(k) {
                if existing != v {
                    // Contradiction: keep both requirements by moving this one to an expression.
                    self.match_expressions.push(Requirement {
                        key: k.clone(),
                        operator: Operator::In,
                        values: vec![v.clone()],
                    });
                    continue;
                }
            }
            self.match_labels.insert(k.clone(), v.clone());
        }
        self.match_expressions.extend(other.match_expressions.iter().cloned());
        self
    }

    /// Rewrites every key `k` to `prefix + k` (used to turn a namespaceSelector into a selector
    /// on `io.cilium.k8s.namespace.labels.<k>`).
    #[must_use]
    pub fn with_key_prefix(&self, prefix: &str) -> Self {
        LabelSelector {
            match_labels: self
                .match_labels
                .iter()
                .map(|(k, v)| (format!("{prefix}{}", normalize_key(k)), v.clone()))
                .collect(),
            match_expressions: self
                .match_expressions
                .iter()
                .map(|r| Requirement {
                    key: format!("{prefix}{}", normalize_key(&r.key)),
                    operator: r.operator,
                    values: r.values.clone(),
                })
                .collect(),
        }
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("{} (all)");
        }
        let mut parts: Vec<String> = self.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for r in &self.match_expressions {
            parts.push(match r.operator {
                Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

/// Whether `key` is a valid Kubernetes label key (optional DNS-subdomain prefix + `/` + name of
/// at most 63 characters), after stripping a `k8s:`/`any:`/`reserved:` source.
#[must_use]
pub fn is_valid_label_key(key: &str) -> bool {
    let key = normalize_key(key);
    let key = key.strip_prefix("reserved:").unwrap_or(key);
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty()
            || p.len() > 253
            || !p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            return false;
        }
    }
    is_valid_label_value(name) && !name.is_empty()
}

/// Whether `value` is a valid Kubernetes label value (empty, or at most 63 characters of
/// alphanumerics, `-`, `_`, `.`, beginning and ending with an alphanumeric).
#[must_use]
pub fn is_valid_label_value(value: &str) -> bool {
    if value.is_empty() {
        return true;
    }
    value.len() <= 63
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(labels: &[(&str, &str)], exprs: &[(&str, Operator, &[&str])]) -> LabelSelector {
        LabelSelector {
            match_labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            match_expressions: exprs
                .iter()
                .map(|(k, op, vals)| Requirement {
                    key: (*k).to_owned(),
                    operator: *op,
                    values: vals.iter().map(|v| (*v).to_owned()).collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn selector_semantics_table() {
        use Operator::*;
        let web = Labels::from([("app", "web"), ("tier", "front")]);
        let db = Labels::from([("app", "db")]);
        let none = Labels::new();
        #[allow(clippy::type_complexity)]
        let table: Vec<(LabelSelector, [bool; 3])> = vec![
            (sel(&[], &[]), [true, true, true]),
            (sel(&[("app", "web")], &[]), [true, false, false]),
            (sel(&[("k8s:app", "web")], &[]), [true, false, false]),
            (sel(&[("any:app", "db")], &[]), [false, true, false]),
            (sel(&[("app", "web"), ("tier", "back")], &[]), [false, false, false]),
            (sel(&[], &[("app", In, &["web", "db"])]), [true, true, false]),
            (sel(&[], &[("app", NotIn, &["web"])]), [false, true, true]),
            (sel(&[], &[("tier", Exists, &[])]), [true, false, false]),
            (sel(&[], &[("tier", DoesNotExist, &[])]), [false, true, true]),
            (sel(&[], &[("k8s:tier", DoesNotExist, &[])]), [false, true, true]),
            (sel(&[("app", "web")], &[("tier", In, &["front"])]), [true, false, false]),
            (sel(&[("app", "")], &[]), [false, false, false]),
        ];
        for (i, (s, want)) in table.iter().enumerate() {
            let got = [s.matches(&web), s.matches(&db), s.matches(&none)];
            assert_eq!(&got, want, "row {i}: selector {s}");
        }
    }

    #[test]
    fn requirement_problems() {
        let r = |op, vals: &[&str]| Requirement {
            key: "a".into(),
            operator: op,
            values: vals.iter().map(|v| (*v).to_owned()).collect(),
        };
        assert!(r(Operator::In, &[]).problem().is_some());
        assert!(r(Operator::NotIn, &[]).problem().is_some());
        assert!(r(Operator::Exists, &["x"]).problem().is_some());
        assert!(r(Operator::DoesNotExist, &["x"]).problem().is_some());
        assert!(r(Operator::In, &["x"]).problem().is_none());
        assert!(r(Operator::Exists, &[]).problem().is_none());
    }

    #[test]
    fn security_labels_include_namespace() {
        let l = security_labels(&Labels::from([("k8s:app", "web")]), "prod", &Labels::from([("team", "a")]));
        assert_eq!(l.get("app"), Some("web"));
        assert_eq!(l.get("k8s:io.kubernetes.pod.namespace"), Some("prod"));
        assert_eq!(l.get("io.cilium.k8s.namespace.labels.team"), Some("a"));
        assert_eq!(l.get("io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name"), Some("prod"));
    }

    #[test]
    fn label_key_validation() {
        assert!(is_valid_label_key("app"));
        assert!(is_valid_label_key("k8s:app.kubernetes.io/name"));
        assert!(is_valid_label_key("reserved:host"));
        assert!(!is_valid_label_key(""));
        assert!(!is_valid_label_key("bad key"));
        assert!(!is_valid_label_key("/x"));
        assert!(is_valid_label_value(""));
        assert!(!is_valid_label_value("-x"));
    }
}
