//! The node registry and the ipcache: per-node state bound to the node's lease, watched by every
//! other node. Key layout and JSON names are in the crate docs.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use etcd_client::{Compare, CompareOp, EventType, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{bounded, validate_node, Kvstore, KvstoreError, Result, Watch};

/// One node in the registry, stored as JSON at `<state_root>/nodes/v1/<cluster>/<name>`.
/// JSON names follow Cilium's node object where it has one (`Name`, `Cluster`, `IPv4AllocCIDR`);
/// the node address is a single `IPv4` (Cilium keeps a list of typed addresses).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's name, the last key segment (JSON `Name`).
    #[serde(rename = "Name")]
    pub name: String,
    /// The address other nodes reach it at, e.g. the tunnel endpoint (JSON `IPv4`).
    #[serde(rename = "IPv4")]
    pub ip: Ipv4Addr,
    /// The node's pod CIDR, an IPv4 network like `10.0.1.0/24` (JSON `IPv4AllocCIDR`).
    #[serde(rename = "IPv4AllocCIDR")]
    pub pod_cidr: String,
    /// The node's cluster, the `<cluster>` key segment (JSON `Cluster`).
    #[serde(rename = "Cluster")]
    pub cluster: String,
}

/// One ipcache entry, stored as JSON at `<state_root>/ip/v1/<cluster>/<ip>`. JSON names are
/// Cilium's `IPIdentityPair` names where it has them (`IP`, `ID`, `HostIP`, `K8sNamespace`,
/// `K8sPodName`) plus `Node`, the node that owns the entry; the two optional fields are left out
/// when `None`. Unknown JSON fields are ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpRecord {
    /// The endpoint's address, the last key segment (JSON `IP`).
    #[serde(rename = "IP")]
    pub ip: Ipv4Addr,
    /// Its security identity, never 0 (JSON `ID`).
    #[serde(rename = "ID")]
    pub identity: u32,
    /// The address of the node hosting it, the tunnel endpoint (JSON `HostIP`).
    #[serde(rename = "HostIP")]
    pub host_ip: Ipv4Addr,
    /// The name of the node hosting it (JSON `Node`).
    #[serde(rename = "Node")]
    pub node: String,
    /// Kubernetes namespace, for display (JSON `K8sNamespace`).
    #[serde(rename = "K8sNamespace", default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Kubernetes pod name, for display (JSON `K8sPodName`).
    #[serde(rename = "K8sPodName", default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// A change to the node registry, from [`Kvstore::watch_nodes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// The node is registered (or its record changed).
    Upsert(NodeRecord),
    /// The node's key was deleted (its lease expired or was revoked).
    Delete { name: String },
    /// The initial listing has been delivered; events after this come from the etcd watch.
    Synced,
}

/// A change to the ipcache, from [`Kvstore::watch_ips`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpEvent {
    /// The address maps to this record (new or changed).
    Upsert(IpRecord),
    /// The address's key was deleted.
    Delete { ip: Ipv4Addr },
    /// The initial listing has been delivered; events after this come from the etcd watch.
    Synced,
}

/// The receiving end of [`Kvstore::watch_nodes`]; dropping it stops the watch.
pub type NodeWatch = Watch<NodeEvent>;
/// The receiving end of [`Kvstore::watch_ips`]; dropping it stops the watch.
pub type IpWatch = Watch<IpEvent>;

/// What [`Kvstore::sync_ips`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Entries written: missing, different, or held by an older lease of this node.
    pub put: usize,
    /// This node's stale entries deleted.
    pub deleted: usize,
    /// Entries already stored as desired, on this node's lease.
    pub unchanged: usize,
}

/// Checks `a.b.c.d/len`: a valid address, `len` in 0..=32, no bits set past the prefix.
pub(crate) fn check_ipv4_cidr(cidr: &str) -> std::result::Result<(), String> {
    let (addr, len) = cidr.split_once('/').ok_or_else(|| format!("`{cidr}` is not `a.b.c.d/len`"))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| format!("`{cidr}`: `{addr}` is not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l: &u8| *l <= 32 && len == l.to_string())
        .ok_or_else(|| format!("`{cidr}`: prefix length `{len}` is not 0..=32"))?;
    let host_bits = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
    if u32::from(addr) & host_bits != 0 {
        let network = Ipv4Addr::from(u32::from(addr) & !host_bits);
        return Err(format!("`{cidr}`: bits are set past the /{len} prefix (the network is `{network}/{len}`)"));
    }
    Ok(())
}

fn invalid(field: &'static str, reason: String) -> KvstoreError {
    KvstoreError::Invalid { field, reason }
}

fn to_json<T: Serialize>(field: &'static str, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| invalid(field, format!("cannot be encoded as JSON: {e}")))
}

/// The last key segment after `prefix` (which ends in `/`), if it is one segment.
fn key_segment<'k>(prefix: &str, key: &'k str) -> Option<&'k str> {
    key.strip_prefix(prefix).filter(|s| !s.is_empty() && !s.contains('/'))
}

/// `<prefix><node>` -> node name; anything else is logged and skipped.
fn parse_node_key(prefix: &str, key: &str) -> Option<String> {
    match key_segment(prefix, key) {
        Some(name) if validate_node(name).is_ok() => Some(name.to_string()),
        _ => {
            warn!(%key, "skipping a key under the node prefix that is not `{prefix}<node name>`");
            None
        }
    }
}

/// `<prefix><ip>` -> the address, in its canonical dotted form only.
fn parse_ip_key(prefix: &str, key: &str) -> Option<Ipv4Addr> {
    let ip = key_segment(prefix, key).and_then(|s| s.parse::<Ipv4Addr>().ok().filter(|ip| ip.to_string() == s));
    if ip.is_none() {
        warn!(%key, "skipping a key under the ipcache prefix that is not `{prefix}<IPv4 address>`");
    }
    ip
}

fn decode_node(prefix: &str, cluster: &str, kind: EventType, kv: &KeyValue) -> Option<NodeEvent> {
    let key = String::from_utf8_lossy(kv.key());
    let name = parse_node_key(prefix, &key)?;
    if kind == EventType::Delete {
        return Some(NodeEvent::Delete { name });
    }
    let checked = serde_json::from_slice::<NodeRecord>(kv.value())
        .map_err(|e| format!("not a node record: {e}"))
        .and_then(|rec| {
            if rec.name != name {
                Err(format!("Name `{}` differs from the key's `{name}`", rec.name))
            } else if rec.cluster != cluster {
                Err(format!("Cluster `{}` differs from the key's `{cluster}`", rec.cluster))
            } else {
                check_ipv4_cidr(&rec.pod_cidr).map(|()| rec).map_err(|e| format!("IPv4AllocCIDR {e}"))
            }
        });
    match checked {
        Ok(rec) => Some(NodeEvent::Upsert(rec)),
        Err(error) => {
            warn!(%key, %error, value = %String::from_utf8_lossy(kv.value()), "skipping a malformed node record");
            None
        }
    }
}

fn check_ip_record(rec: &IpRecord) -> std::result::Result<(), String> {
    if rec.identity == 0 {
        return Err("ID is 0, which is no identity".to_string());
    }
    validate_node(&rec.node).map_err(|e| format!("Node: {e}"))
}

fn decode_ip(prefix: &str, kind: EventType, kv: &KeyValue) -> Option<IpEvent> {
    let key = String::from_utf8_lossy(kv.key());
    let ip = parse_ip_key(prefix, &key)?;
    if kind == EventType::Delete {
        return Some(IpEvent::Delete { ip });
    }
    let checked = serde_json::from_slice::<IpRecord>(kv.value())
        .map_err(|e| format!("not an ipcache record: {e}"))
        .and_then(|rec| {
            if rec.ip != ip {
                return Err(format!("IP {} differs from the key's {ip}", rec.ip));
            }
            check_ip_record(&rec).map(|()| rec)
        });
    match checked {
        Ok(rec) => Some(IpEvent::Upsert(rec)),
        Err(error) => {
            warn!(%key, %error, value = %String::from_utf8_lossy(kv.value()), "skipping a malformed ipcache record");
            None
        }
    }
}

/// Just the owner of an ipcache value, read leniently so a record that is otherwise malformed
/// still tells [`Kvstore::sync_ips`] whose it is.
#[derive(Deserialize)]
struct Owner {
    #[serde(rename = "Node")]
    node: String,
}

impl Kvstore {
    fn nodes_prefix(&self) -> String {
        format!("{}/nodes/v1/{}/", self.cfg.state_root, self.cfg.cluster)
    }

    fn ips_prefix(&self) -> String {
        format!("{}/ip/v1/{}/", self.cfg.state_root, self.cfg.cluster)
    }

    fn ip_key(&self, ip: Ipv4Addr) -> String {
        format!("{}{ip}", self.ips_prefix())
    }

    fn with_lease(&self) -> Option<PutOptions> {
        Some(PutOptions::new().with_lease(self.lease_id))
    }

    /// Writes this node's record (bound to the lease, so it disappears within a TTL of the node
    /// going away). `rec.name` and `rec.cluster` must be this node's and the configured cluster.
    pub async fn register_node(&self, rec: &NodeRecord) -> Result<()> {
        self.check_lease()?;
        if rec.name != self.node {
            return Err(invalid(
                "node.name",
                format!("`{}`: a node registers itself, so it must be `{}`", rec.name, self.node),
            ));
        }
        if rec.cluster != self.cfg.cluster {
            return Err(invalid(
                "node.cluster",
                format!("`{}`: must be the configured cluster `{}`", rec.cluster, self.cfg.cluster),
            ));
        }
        check_ipv4_cidr(&rec.pod_cidr).map_err(|e| invalid("node.pod_cidr", e))?;
        let key = format!("{}{}", self.nodes_prefix(), rec.name);
        let value = to_json("node", rec)?;
        let mut client = self.client.clone();
        bounded(self.cfg.request_timeout, format!("put {key}"), client.put(key.as_str(), value, self.with_lease()))
            .await?;
        Ok(())
    }

    /// Every registered node of this cluster now (as [`NodeEvent::Upsert`]s, by name, then
    /// [`NodeEvent::Synced`]), then each change. Malformed keys and records are logged and skipped.
    pub async fn watch_nodes(&self) -> Result<NodeWatch> {
        let prefix = self.nodes_prefix();
        let (p, cluster) = (prefix.clone(), self.cfg.cluster.clone());
        let order = |e: &NodeEvent| match e {
            NodeEvent::Upsert(r) => r.name.clone(),
            NodeEvent::Delete { name } => name.clone(),
            NodeEvent::Synced => String::new(),
        };
        self.watch_prefix("node", prefix, move |kind, kv| decode_node(&p, &cluster, kind, kv), order, NodeEvent::Synced)
            .await
    }

    fn check_own_ip(&self, rec: &IpRecord) -> Result<()> {
        if rec.node != self.node {
            return Err(invalid(
                "ip.node",
                format!("`{}` for {}: a node writes its own entries, so it must be `{}`", rec.node, rec.ip, self.node),
            ));
        }
        if rec.identity == 0 {
            return Err(invalid("ip.identity", format!("0 for {}: must be a security identity above 0", rec.ip)));
        }
        Ok(())
    }

    /// Maps `rec.ip` to `rec` (bound to this node's lease). `rec.node` must be this node. An
    /// entry another node wrote for the address is replaced: the last writer owns it.
    pub async fn upsert_ip(&self, rec: &IpRecord) -> Result<()> {
        self.check_lease()?;
        self.check_own_ip(rec)?;
        let key = self.ip_key(rec.ip);
        let value = to_json("ip", rec)?;
        let mut client = self.client.clone();
        bounded(self.cfg.request_timeout, format!("put {key}"), client.put(key.as_str(), value, self.with_lease()))
            .await?;
        Ok(())
    }

    /// Deletes the entry for `ip` if it is bound to this node's lease (one transaction comparing
    /// the key's lease), so a node never deletes the entry another node wrote for a reused
    /// address. True if it deleted one.
    pub async fn delete_ip(&self, ip: Ipv4Addr) -> Result<bool> {
        let key = self.ip_key(ip);
        let txn = Txn::new()
            .when([Compare::lease(key.as_str(), CompareOp::Equal, self.lease_id)])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        let resp = self.txn(txn, &format!("delete {key} if this node's")).await?;
        Ok(resp.succeeded() && deleted_any(&resp))
    }

    /// Makes this node's ipcache entries exactly `desired` (all with `node` = this node, distinct
    /// addresses): writes the missing and changed ones and those still bound to an older lease of
    /// this node, and deletes this node's entries not in `desired` (this node's = bound to its
    /// lease or naming it in `Node`), each only if unchanged since it was read. For after a
    /// reconnect, when the old lease's entries are gone or about to go.
    pub async fn sync_ips(&self, desired: &[IpRecord]) -> Result<SyncStats> {
        self.check_lease()?;
        let mut want: HashMap<Ipv4Addr, String> = HashMap::new();
        for rec in desired {
            self.check_own_ip(rec)?;
            if want.insert(rec.ip, to_json("ip", rec)?).is_some() {
                return Err(invalid("desired", format!("{} is listed twice: each address maps to one entry", rec.ip)));
            }
        }
        let prefix = self.ips_prefix();
        let (kvs, _) = self.get_prefix(&prefix).await?;
        let mut stats = SyncStats::default();
        let mut present: HashSet<Ipv4Addr> = HashSet::new();
        let mut stale = Vec::new();
        for kv in &kvs {
            let key = String::from_utf8_lossy(kv.key());
            let Some(ip) = parse_ip_key(&prefix, &key) else { continue };
            let ours = kv.lease() == self.lease_id
                || serde_json::from_slice::<Owner>(kv.value()).is_ok_and(|o| o.node == self.node);
            match want.get(&ip) {
                Some(value) if kv.lease() == self.lease_id && kv.value() == value.as_bytes() => {
                    stats.unchanged += 1;
                    present.insert(ip);
                }
                Some(_) => {}
                None if ours => stale.push((key.into_owned(), kv.mod_revision())),
                None => {}
            }
        }
        let puts: Vec<TxnOp> = want
            .iter()
            .filter(|(ip, _)| !present.contains(ip))
            .map(|(ip, value)| TxnOp::put(self.ip_key(*ip), value.as_str(), self.with_lease()))
            .collect();
        // etcd allows 128 operations per transaction by default.
        for chunk in puts.chunks(64) {
            self.txn(Txn::new().and_then(chunk.to_vec()), "write this node's ipcache entries").await?;
            stats.put += chunk.len();
        }
        for (key, rev) in stale {
            let txn = Txn::new()
                .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)])
                .and_then([TxnOp::delete(key.as_str(), None)]);
            let resp = self.txn(txn, &format!("delete stale {key}")).await?;
            if resp.succeeded() && deleted_any(&resp) {
                stats.deleted += 1;
            }
        }
        Ok(stats)
    }

    /// Every ipcache entry of this cluster now (as [`IpEvent::Upsert`]s, by address, then
    /// [`IpEvent::Synced`]), then each change. Malformed keys and records are logged and skipped.
    pub async fn watch_ips(&self) -> Result<IpWatch> {
        let prefix = self.ips_prefix();
        let p = prefix.clone();
        let order = |e: &IpEvent| match e {
            IpEvent::Upsert(r) => u32::from(r.ip),
            IpEvent::Delete { ip } => u32::from(*ip),
            IpEvent::Synced => u32::MAX,
        };
        self.watch_prefix("ipcache", prefix, move |kind, kv| decode_ip(&p, kind, kv), order, IpEvent::Synced).await
    }
}

fn deleted_any(resp: &etcd_client::TxnResponse) -> bool {
    resp.op_responses().iter().any(|r| matches!(r, TxnOpResponse::Delete(d) if d.deleted() > 0))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn cidrs_are_checked() {
        for ok in ["10.0.1.0/24", "0.0.0.0/0", "10.0.0.7/32", "192.168.0.0/16"] {
            assert_eq!(check_ipv4_cidr(ok), Ok(()), "{ok}");
        }
        for bad in ["10.0.1.0", "10.0.1.1/24", "10.0.1.0/33", "10.0.1.0/024", "10.0.1/24", "x/8", "10.0.0.0/", "::/0"] {
            assert!(check_ipv4_cidr(bad).is_err(), "{bad}");
        }
        assert!(check_ipv4_cidr("10.0.1.1/24").unwrap_err().contains("10.0.1.0/24"));
    }

    #[test]
    fn keys_parse_strictly() {
        let p = "myelin/state/ip/v1/default/";
        assert_eq!(parse_ip_key(p, &format!("{p}10.0.0.1")), Some(Ipv4Addr::new(10, 0, 0, 1)));
        for bad in ["", "10.0.0.1/x", "010.0.0.1", "10.0.0", "fd00::1", "10.0.0.256"] {
            assert_eq!(parse_ip_key(p, &format!("{p}{bad}")), None, "{bad}");
        }
        let n = "myelin/state/nodes/v1/default/";
        assert_eq!(parse_node_key(n, &format!("{n}node-1")).as_deref(), Some("node-1"));
        assert_eq!(parse_node_key(n, &format!("{n}a/b")), None);
        assert_eq!(parse_node_key(n, n), None);
    }

    #[test]
    fn json_uses_the_documented_names() {
        let rec = IpRecord {
            ip: Ipv4Addr::new(10, 0, 1, 5),
            identity: 300,
            host_ip: Ipv4Addr::new(192, 168, 0, 2),
            node: "node-a".into(),
            namespace: Some("default".into()),
            pod: None,
        };
        assert_eq!(
            serde_json::to_string(&rec).unwrap(),
            r#"{"IP":"10.0.1.5","ID":300,"HostIP":"192.168.0.2","Node":"node-a","K8sNamespace":"default"}"#
        );
        let node = NodeRecord {
            name: "node-a".into(),
            ip: Ipv4Addr::new(192, 168, 0, 2),
            pod_cidr: "10.0.1.0/24".into(),
            cluster: "default".into(),
        };
        assert_eq!(
            serde_json::to_string(&node).unwrap(),
            r#"{"Name":"node-a","IPv4":"192.168.0.2","IPv4AllocCIDR":"10.0.1.0/24","Cluster":"default"}"#
        );
    }
}
