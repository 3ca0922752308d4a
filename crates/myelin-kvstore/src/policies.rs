//! Network policies shared by the cluster: `policy apply` on any node writes them here and every
//! agent applies what it watches, so one apply is in force cluster-wide.
//!
//! `<state_root>/policies/v1/<cluster>/<key>` -> the policy's YAML document, where `<key>` is the
//! agent's policy key: `<Kind>/<namespace>/<name>` or `<Kind>/<name>` for cluster-wide kinds
//! (e.g. `CiliumNetworkPolicy/prod/web`). Not bound to a lease: a policy outlives the node that
//! applied it. The content is not parsed here; an agent that cannot apply a document logs it
//! and keeps what it enforces.

use etcd_client::{EventType, KeyValue};
use tracing::warn;

use crate::{bounded, Kvstore, KvstoreError, Result, Watch};

/// A change to the cluster's policies, from [`Kvstore::watch_policies`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyEvent {
    /// The policy `key` holds `yaml` now.
    Upsert { key: String, yaml: String },
    /// The policy `key` was deleted.
    Delete { key: String },
    /// The initial listing has been delivered.
    Synced,
}

pub type PolicyWatch = Watch<PolicyEvent>;

/// Longest document accepted (etcd's default request limit is 1.5 MiB).
const MAX_POLICY_BYTES: usize = 1024 * 1024;

/// A policy key: 2 or 3 `/`-separated segments, each non-empty and printable without whitespace.
fn check_key(key: &str) -> std::result::Result<(), String> {
    let parts: Vec<&str> = key.split('/').collect();
    if !(2..=3).contains(&parts.len())
        || parts.iter().any(|p| p.is_empty() || p.chars().any(|c| c.is_control() || c.is_whitespace()))
    {
        return Err(format!("`{key}`: expected <Kind>/<namespace>/<name> or <Kind>/<name>"));
    }
    Ok(())
}

fn decode(prefix: &str, kind: EventType, kv: &KeyValue) -> Option<PolicyEvent> {
    let full = String::from_utf8_lossy(kv.key());
    let Some(key) = full.strip_prefix(prefix).filter(|k| check_key(k).is_ok()) else {
        warn!(key = %full, "skipping a key under the policy prefix that is not `{prefix}<Kind>/[<namespace>/]<name>`");
        return None;
    };
    if kind == EventType::Delete {
        return Some(PolicyEvent::Delete { key: key.to_owned() });
    }
    match std::str::from_utf8(kv.value()) {
        Ok(yaml) if !yaml.trim().is_empty() && yaml.len() <= MAX_POLICY_BYTES => {
            Some(PolicyEvent::Upsert { key: key.to_owned(), yaml: yaml.to_owned() })
        }
        _ => {
            warn!(key = %full, bytes = kv.value().len(), "skipping a policy that is empty, too large or not UTF-8");
            None
        }
    }
}

impl Kvstore {
    fn policies_prefix(&self) -> String {
        format!("{}/policies/v1/{}/", self.cfg.state_root, self.cfg.cluster)
    }

    /// Writes policy `key` (see the module docs) with its YAML document.
    pub async fn put_policy(&self, key: &str, yaml: &str) -> Result<()> {
        check_key(key).map_err(|reason| KvstoreError::Invalid { field: "policy key", reason })?;
        if yaml.trim().is_empty() || yaml.len() > MAX_POLICY_BYTES {
            return Err(KvstoreError::Invalid {
                field: "policy document",
                reason: format!("{} bytes: must be non-empty and at most {MAX_POLICY_BYTES}", yaml.len()),
            });
        }
        let k = format!("{}{key}", self.policies_prefix());
        let mut client = self.client.clone();
        bounded(self.cfg.request_timeout, format!("put {k}"), client.put(k.as_str(), yaml, None)).await?;
        Ok(())
    }

    /// Deletes policy `key`; `Ok(false)` when it was not there.
    pub async fn delete_policy(&self, key: &str) -> Result<bool> {
        check_key(key).map_err(|reason| KvstoreError::Invalid { field: "policy key", reason })?;
        let k = format!("{}{key}", self.policies_prefix());
        let mut client = self.client.clone();
        let resp = bounded(self.cfg.request_timeout, format!("delete {k}"), client.delete(k.as_str(), None)).await?;
        Ok(resp.deleted() > 0)
    }

    /// Every policy of this cluster now (by key), then [`PolicyEvent::Synced`], then each change.
    pub async fn watch_policies(&self) -> Result<PolicyWatch> {
        let prefix = self.policies_prefix();
        let p = prefix.clone();
        let order = |e: &PolicyEvent| match e {
            PolicyEvent::Upsert { key, .. } | PolicyEvent::Delete { key } => key.clone(),
            PolicyEvent::Synced => String::new(),
        };
        self.watch_prefix("policy", prefix, move |kind, kv| decode(&p, kind, kv), order, PolicyEvent::Synced).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kind_namespace_name_or_kind_name() {
        assert!(check_key("CiliumNetworkPolicy/prod/web").is_ok());
        assert!(check_key("CiliumClusterwideNetworkPolicy/all").is_ok());
        for bad in ["web", "a/b/c/d", "a//b", "a/b c", ""] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }
}
