//! The agent's own durable state in an embedded redb database:
//! endpoints (written by the endpoints component), IPAM allocations (the IPAM
//! component) and counters. The datapath's state lives in
//! pinned maps; this is what the agent needs to rebuild and adopt it.

// redb's error type is large; it only travels the (cold) write path.
#![allow(clippy::result_large_err)]

use myelin_api::Endpoint;
use redb::{Database, ReadableTable, TableDefinition};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

const ENDPOINTS: TableDefinition<u32, &str> = TableDefinition::new("endpoints");
const IPAM: TableDefinition<u32, &str> = TableDefinition::new("ipam");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const POLICIES: TableDefinition<&str, &str> = TableDefinition::new("policies");
const KV: TableDefinition<&str, &str> = TableDefinition::new("kv");
const RULES: TableDefinition<u32, &str> = TableDefinition::new("rules");

/// redb's page cache (read cache and write buffer together).
const STORE_CACHE_BYTES: usize = 4 << 20;

const NEXT_ENDPOINT_ID: &str = "next_endpoint_id";
const IPAM_CURSOR: &str = "ipam_cursor";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {message}")]
    Db { path: PathBuf, message: String },
    #[error("state store {path}: endpoint {id} is corrupt: {source}")]
    Corrupt { path: PathBuf, id: u32, source: serde_json::Error },
}

pub struct Store {
    db: Database,
    path: PathBuf,
}

/// What the store holds, read in one go at start.
pub struct Snapshot {
    pub endpoints: Vec<Endpoint>,
    pub allocations: Vec<(Ipv4Addr, String)>,
    pub next_endpoint_id: u32,
    pub ipam_cursor: Option<Ipv4Addr>,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("state.redb");
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Db { path: path.clone(), message: e.to_string() })?;
        // redb keeps every page it writes in its cache, up to 1 GiB by default: with a policy
        // set rewritten at each apply, that is memory that only grows. The store is read whole
        // once at start; a small cache is enough.
        let db = redb::Builder::new()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(&path)
            .map_err(|e| StoreError::Db { path: path.clone(), message: e.to_string() })?;
        let store = Self { db, path };
        // Create the tables so that reads never meet a missing table.
        store.write(|tx| {
            tx.open_table(ENDPOINTS)?;
            tx.open_table(IPAM)?;
            tx.open_table(META)?;
            tx.open_table(POLICIES)?;
            tx.open_table(KV)?;
            tx.open_table(RULES)?;
            Ok(())
        })?;
        Ok(store)
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db { path: self.path.clone(), message: e.to_string() }
    }

    fn write(&self, f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        f(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let eps = tx.open_table(ENDPOINTS).map_err(|e| self.err(e))?;
        let mut endpoints = Vec::new();
        for row in eps.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let ep: Endpoint = serde_json::from_str(v.value()).map_err(|source| StoreError::Corrupt {
                path: self.path.clone(),
                id: k.value(),
                source,
            })?;
            endpoints.push(ep);
        }
        let ipam = tx.open_table(IPAM).map_err(|e| self.err(e))?;
        let mut allocations = Vec::new();
        for row in ipam.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            allocations.push((Ipv4Addr::from(k.value()), v.value().to_owned()));
        }
        let meta = tx.open_table(META).map_err(|e| self.err(e))?;
        let get = |k: &str| -> Result<Option<u64>, StoreError> {
            Ok(meta.get(k).map_err(|e| self.err(e))?.map(|v| v.value()))
        };
        let next_endpoint_id = u32::try_from(get(NEXT_ENDPOINT_ID)?.unwrap_or(1)).unwrap_or(1).max(1);
        let ipam_cursor = get(IPAM_CURSOR)?.and_then(|v| u32::try_from(v).ok()).map(Ipv4Addr::from);
        Ok(Snapshot { endpoints, allocations, next_endpoint_id, ipam_cursor })
    }

    /// Record an address allocation and the pool's cursor in one transaction (the
    /// IPAM component), before anything is plumbed: a crash never hands the address out twice.
    pub fn record_allocation(&self, ip: Ipv4Addr, owner: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(IPAM)?.insert(u32::from(ip), owner)?;
            tx.open_table(META)?.insert(IPAM_CURSOR, u64::from(u32::from(ip)))?;
            Ok(())
        })
    }

    /// Book endpoint ids below `next_endpoint_id` (the endpoints component): ids are
    /// handed out only once booked, so a crash never hands one out twice.
    pub fn book_endpoint_ids(&self, next_endpoint_id: u32) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(META)?.insert(NEXT_ENDPOINT_ID, u64::from(next_endpoint_id))?;
            Ok(())
        })
    }

    /// All stored policies, as JSON documents keyed by policy key.
    pub fn policies(&self) -> Result<Vec<(String, String)>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(POLICIES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push((k.value().to_owned(), v.value().to_owned()));
        }
        Ok(out)
    }

    /// Replace the whole policy set and the engine state in one transaction.
    pub fn put_policies(&self, policies: &[(String, String)], engine_state: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut t = tx.open_table(POLICIES)?;
            let old: Vec<String> = t.iter()?.filter_map(Result::ok).map(|(k, _)| k.value().to_owned()).collect();
            for k in old {
                t.remove(k.as_str())?;
            }
            for (k, v) in policies {
                t.insert(k.as_str(), v.as_str())?;
            }
            tx.open_table(KV)?.insert("policy_engine", engine_state)?;
            Ok(())
        })
    }

    /// Every stored rule record (see `policy::rules`); unreadable ones are skipped.
    pub fn rules(&self) -> Result<Vec<crate::policy::rules::RuleInfo>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(RULES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (_, v) = row.map_err(|e| self.err(e))?;
            if let Ok(r) = serde_json::from_str(v.value()) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Write changed rule records and forget pruned ones, in one transaction.
    pub fn put_rules(&self, changed: &[crate::policy::rules::RuleInfo], pruned: &[u32]) -> Result<(), StoreError> {
        if changed.is_empty() && pruned.is_empty() {
            return Ok(());
        }
        let rows: Vec<(u32, String)> =
            changed.iter().filter_map(|r| serde_json::to_string(r).ok().map(|j| (r.id, j))).collect();
        self.write(|tx| {
            let mut t = tx.open_table(RULES)?;
            for (id, json) in &rows {
                t.insert(*id, json.as_str())?;
            }
            for id in pruned {
                t.remove(*id)?;
            }
            Ok(())
        })
    }

    pub fn get_kv(&self, key: &str) -> Result<Option<String>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(KV).map_err(|e| self.err(e))?;
        Ok(t.get(key).map_err(|e| self.err(e))?.map(|v| v.value().to_owned()))
    }

    pub fn put_kv(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(KV)?.insert(key, value)?;
            Ok(())
        })
    }

    pub fn release_allocation(&self, ip: Ipv4Addr) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(IPAM)?.remove(u32::from(ip))?;
            Ok(())
        })
    }

    pub fn put_endpoint(&self, ep: &Endpoint) -> Result<(), StoreError> {
        let json = serde_json::to_string(ep).map_err(|e| self.err(e))?;
        self.write(|tx| {
            tx.open_table(ENDPOINTS)?.insert(ep.id, json.as_str())?;
            Ok(())
        })
    }

    /// Remove an endpoint record (its address is released after, by the IPAM component).
    pub fn remove_endpoint(&self, id: u32) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(ENDPOINTS)?.remove(id)?;
            Ok(())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;

    /// An endpoint record for tests: container `c<id>`, netns `/x`.
    pub(crate) fn ep(id: u32, ip: &str) -> Endpoint {
        Endpoint {
            id,
            container_id: format!("c{id}"),
            netns: "/x".into(),
            ifname: "eth0".into(),
            host_ifname: "lxc".into(),
            host_ifindex: 3,
            ipv4: ip.into(),
            gateway: "10.0.0.1".into(),
            mac: "aa:bb:cc:dd:ee:ff".into(),
            host_mac: "aa:bb:cc:dd:ee:fe".into(),
            namespace: None,
            pod_name: None,
            labels: Default::default(),
            ports: vec![],
            identity: 0,
            created: 0,
            labels_pending: false,
        }
    }

    #[test]
    fn survives_reopen() {
        let dir = std::env::temp_dir().join(format!("myelin-store-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let s = Store::open(&dir).unwrap();
            s.book_endpoint_ids(3).unwrap();
            s.record_allocation(Ipv4Addr::new(10, 0, 0, 2), "c1/eth0").unwrap();
            s.put_endpoint(&ep(1, "10.0.0.2")).unwrap();
            s.record_allocation(Ipv4Addr::new(10, 0, 0, 3), "c2/eth0").unwrap();
            s.put_endpoint(&ep(2, "10.0.0.3")).unwrap();
            s.remove_endpoint(2).unwrap();
            s.release_allocation(Ipv4Addr::new(10, 0, 0, 3)).unwrap();
        }
        let s = Store::open(&dir).unwrap();
        let snap = s.snapshot().unwrap();
        assert_eq!(snap.endpoints.len(), 1);
        assert_eq!(snap.endpoints[0].id, 1);
        assert_eq!(snap.allocations, vec![(Ipv4Addr::new(10, 0, 0, 2), "c1/eth0".to_owned())]);
        assert_eq!(snap.next_endpoint_id, 3);
        assert_eq!(snap.ipam_cursor, Some(Ipv4Addr::new(10, 0, 0, 3)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
