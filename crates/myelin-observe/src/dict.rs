//! The dictionary of flow sides: each distinct description of a source or a
//! destination (its endpoint, identity, namespace, pod, labels, workload) is
//! stored once and named by a small id that flow records carry. Append-only:
//! an id, once given, always means the same description, so records stored
//! long ago keep the names they were seen with. Readers take a snapshot
//! without locks; only the ingest thread appends.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

/// One side of flows, as it was when the flows were seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EndpointDesc {
    /// The datapath endpoint id on its node (0: not a local endpoint).
    pub endpoint_id: u32,
    pub identity: u32,
    pub cluster: String,
    pub namespace: String,
    pub pod_name: String,
    /// `key=value` labels, Cilium style (`k8s:app=web`, `reserved:world`), sorted.
    pub labels: Vec<String>,
    /// Owning workload (name, kind), e.g. ("web", "Deployment").
    pub workload: Option<(String, String)>,
    /// The node it runs on (empty when unknown).
    pub node: String,
}

/// A read-only view of the dictionary: ids 1..=len.
#[derive(Debug, Default)]
pub struct DictView {
    entries: Vec<Arc<EndpointDesc>>,
}

impl DictView {
    /// The description of `id` (0 and unknown ids: None).
    #[must_use]
    pub fn get(&self, id: u32) -> Option<&Arc<EndpointDesc>> {
        let i = usize::try_from(id).ok()?.checked_sub(1)?;
        self.entries.get(i)
    }

    /// Every (id, description).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Arc<EndpointDesc>)> {
        self.entries.iter().enumerate().map(|(i, e)| (u32::try_from(i + 1).unwrap_or(u32::MAX), e))
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The dictionary: lock-free snapshots for readers, one writer.
#[derive(Debug, Default)]
pub struct Dictionary {
    view: ArcSwap<DictView>,
    /// Writer side only (ingest thread).
    index: std::sync::Mutex<HashMap<Arc<EndpointDesc>, u32>>,
}

impl Dictionary {
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A snapshot.
    #[must_use]
    pub fn view(&self) -> Arc<DictView> {
        self.view.load_full()
    }

    /// The id of `desc`, adding it if new. Only the ingest path calls this
    /// (the index lock is never taken by readers).
    pub fn intern(&self, desc: EndpointDesc) -> u32 {
        let mut index = self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(id) = index.get(&desc) {
            return *id;
        }
        let desc = Arc::new(desc);
        let old = self.view.load_full();
        let mut entries = old.entries.clone();
        entries.push(desc.clone());
        let id = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        self.view.store(Arc::new(DictView { entries }));
        index.insert(desc, id);
        id
    }

    /// Restore entries read back from history (ids in order, starting at 1).
    pub fn restore(&self, entries: Vec<EndpointDesc>) {
        let mut index = self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entries: Vec<Arc<EndpointDesc>> = entries.into_iter().map(Arc::new).collect();
        index.clear();
        for (i, e) in entries.iter().enumerate() {
            index.insert(e.clone(), u32::try_from(i + 1).unwrap_or(u32::MAX));
        }
        self.view.store(Arc::new(DictView { entries }));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_deduplicated() {
        let d = Dictionary::new();
        let a = EndpointDesc { identity: 300, pod_name: "a".into(), ..EndpointDesc::default() };
        let b = EndpointDesc { identity: 301, pod_name: "b".into(), ..EndpointDesc::default() };
        let ia = d.intern(a.clone());
        let ib = d.intern(b.clone());
        assert_eq!((ia, ib), (1, 2));
        assert_eq!(d.intern(a.clone()), ia);
        let v = d.view();
        assert_eq!(v.get(ia).unwrap().pod_name, "a");
        assert!(v.get(0).is_none() && v.get(3).is_none());
        let d2 = Dictionary::new();
        d2.restore(v.iter().map(|(_, e)| (**e).clone()).collect());
        assert_eq!(d2.intern(b), ib);
    }
}
