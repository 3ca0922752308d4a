//! Security labels as the policy engine holds them (`app` -> `web`, `reserved:init` -> ``: keys
//! without a `k8s:` source) and as the kvstore encodes them (`k8s:app=web`, `reserved:init=`).

use myelin_kvstore::{Label, Labels as KvLabels};
use myelin_policy::Labels;

/// The kvstore form: a key with a `source:` prefix other than `k8s`/`any` keeps it (`reserved`,
/// `cidr`), every other key is `k8s:`. Fails on labels the kvstore encoding cannot carry (a value
/// with `/`, `;` or whitespace), naming the label.
pub fn to_kv(labels: &Labels) -> Result<KvLabels, String> {
    let mut out = Vec::with_capacity(labels.len());
    for (k, v) in labels.iter() {
        let (source, key) = match k.split_once(':') {
            Some((s, rest)) if !s.is_empty() && !s.contains('.') && !s.contains('/') => (s, rest),
            _ => ("k8s", k),
        };
        out.push(Label::new(source, key, v).map_err(|e| format!("label {k}={v}: {e}"))?);
    }
    KvLabels::new(out).map_err(|e| e.to_string())
}

/// The policy engine's form of kvstore labels.
#[must_use]
pub fn from_kv(labels: &KvLabels) -> Labels {
    labels
        .iter()
        .map(|l| {
            if l.source() == "k8s" {
                (l.key().to_owned(), l.value())
            } else {
                (format!("{}:{}", l.source(), l.key()), l.value())
            }
        })
        .map(|(k, v)| (k, v.to_owned()))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_pod_namespace_and_reserved_labels() {
        let l: Labels = [
            ("app", "web"),
            ("io.kubernetes.pod.namespace", "prod"),
            ("io.cilium.k8s.namespace.labels.env", "prod"),
            ("app.kubernetes.io/name", "shop"),
        ]
        .into();
        let kv = to_kv(&l).unwrap();
        assert!(kv.canonical().contains("k8s:app=web"), "{}", kv.canonical());
        assert!(kv.canonical().contains("k8s:app.kubernetes.io/name=shop"), "{}", kv.canonical());
        assert_eq!(from_kv(&kv), l);
        let init = myelin_policy::ReservedIdentity::Init.labels();
        let kv = to_kv(&init).unwrap();
        assert_eq!(kv.canonical(), "reserved:init=");
        assert_eq!(from_kv(&kv), init);
    }

    #[test]
    fn a_value_the_encoding_cannot_carry_is_an_error_naming_it() {
        let l: Labels = [("app", "a/b")].into();
        let e = to_kv(&l).unwrap_err();
        assert!(e.contains("app=a/b"), "{e}");
    }
}
