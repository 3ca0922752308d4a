//! Stable rule ids.
//!
//! The datapath names the rule that decided a packet by a 32-bit id, and flow
//! history keeps that id for as long as it keeps the flow, so an id must keep
//! meaning the same rule: it is the identity of (policy, rule path, rule
//! content). Re-applying a policy with the rule unchanged keeps its id; an
//! edited rule gets a new id, and the old one is retired, not reused: it still
//! resolves (to the policy's name, uid, revision and the rule's path) until
//! it has been retired longer than the retention (flow history's horizon).
//! Ids are never handed out twice. A retired rule whose content comes back
//! (a policy edited back, or deleted and applied again) gets its old id back:
//! the index holds one id per distinct (policy, path, content), so flipping a
//! policy between two versions does not grow it.

use std::collections::{BTreeMap, HashMap, HashSet};

pub use myelin_api::RuleInfo;

/// The key of a rule in force: (policy key, path, content digest).
type Live = (String, String, u64);

/// Every rule id ever handed out and not yet pruned.
#[derive(Debug, Clone, Default)]
pub struct RuleIndex {
    by_id: HashMap<u32, RuleInfo>,
    live: HashMap<Live, u32>,
    /// Keys of retired ids (not yet pruned), so that a rule coming back gets its id back.
    retired: HashMap<Live, u32>,
    next: u32,
    /// Ids whose record changed since [`RuleIndex::take_dirty`].
    dirty: HashSet<u32>,
    /// Ids pruned since [`RuleIndex::take_dirty`].
    pruned: Vec<u32>,
}

/// The policy a rule belongs to, for [`RuleIndex::resolve`].
pub struct PolicyMeta<'a> {
    pub key: &'a str,
    pub kind: &'a str,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub uid: &'a str,
    pub revision: u64,
}

impl RuleIndex {
    /// Rebuild from stored records (and the next id to hand out).
    #[must_use]
    pub fn from_records(records: Vec<RuleInfo>, next: u32, live_keys: Vec<(Live, u32)>) -> Self {
        let by_id: HashMap<u32, RuleInfo> = records.into_iter().map(|r| (r.id, r)).collect();
        let max = by_id.keys().copied().max().unwrap_or(0);
        let (mut live, mut retired) = (HashMap::new(), HashMap::new());
        for (key, id) in live_keys {
            match by_id.get(&id).map(|r| r.retired.is_none()) {
                Some(true) => live.insert(key, id),
                Some(false) => retired.insert(key, id),
                None => None,
            };
        }
        Self { by_id, live, retired, next: next.max(max + 1).max(1), dirty: HashSet::new(), pruned: Vec::new() }
    }

    /// The id of this rule as applied now; a new id if its content is new.
    pub fn resolve(&mut self, policy: &PolicyMeta<'_>, path: &str, digest: u64, now: u64) -> u32 {
        let key = (policy.key.to_owned(), path.to_owned(), digest);
        if let Some(id) = self.live.get(&key) {
            return *id;
        }
        if let Some(id) = self.retired.remove(&key) {
            if let Some(r) = self.by_id.get_mut(&id) {
                r.retired = None;
                r.policy_uid = policy.uid.to_owned();
                r.revision = policy.revision;
                self.dirty.insert(id);
                self.live.insert(key, id);
                return id;
            }
        }
        let id = self.next.max(1);
        self.next = id.wrapping_add(1).max(1);
        self.by_id.insert(
            id,
            RuleInfo {
                id,
                kind: policy.kind.to_owned(),
                namespace: policy.namespace.map(str::to_owned),
                name: policy.name.to_owned(),
                policy_uid: policy.uid.to_owned(),
                revision: policy.revision,
                path: path.to_owned(),
                created: now,
                retired: None,
            },
        );
        self.live.insert(key, id);
        self.dirty.insert(id);
        id
    }

    /// Retire every rule in force that is not in `in_force` (its policy was
    /// edited or deleted).
    pub fn retire_others(&mut self, in_force: &HashSet<u32>, now: u64) {
        let gone: Vec<Live> =
            self.live.iter().filter(|(_, id)| !in_force.contains(id)).map(|(k, _)| k.clone()).collect();
        for k in gone {
            if let Some(id) = self.live.remove(&k) {
                if let Some(r) = self.by_id.get_mut(&id) {
                    r.retired = Some(now);
                    self.dirty.insert(id);
                    self.retired.insert(k, id);
                }
            }
        }
    }

    /// Forget ids retired before `cutoff` (unix seconds).
    pub fn prune(&mut self, cutoff: u64) -> usize {
        let old: Vec<u32> =
            self.by_id.values().filter(|r| r.retired.is_some_and(|t| t < cutoff)).map(|r| r.id).collect();
        for id in &old {
            self.by_id.remove(id);
            self.dirty.remove(id);
        }
        if !old.is_empty() {
            let gone: HashSet<u32> = old.iter().copied().collect();
            self.retired.retain(|_, id| !gone.contains(id));
        }
        self.pruned.extend(&old);
        old.len()
    }

    #[must_use]
    pub fn get(&self, id: u32) -> Option<&RuleInfo> {
        self.by_id.get(&id)
    }

    /// `Kind namespace/name path` of a rule id.
    #[must_use]
    pub fn describe(&self, id: u32) -> Option<String> {
        self.get(id).map(RuleInfo::describe)
    }

    /// Every known rule, by id.
    #[must_use]
    pub fn all(&self) -> BTreeMap<u32, RuleInfo> {
        self.by_id.iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    /// The next id to hand out (persisted so ids are never reused).
    #[must_use]
    pub fn next_id(&self) -> u32 {
        self.next
    }

    /// The keys of every id in force or retired (not yet pruned), for persistence.
    #[must_use]
    pub fn live_keys(&self) -> Vec<(Live, u32)> {
        self.live.iter().chain(&self.retired).map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Ids known (in force or retired, not pruned).
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Records changed and ids pruned since the last call (to persist).
    pub fn take_dirty(&mut self) -> (Vec<RuleInfo>, Vec<u32>) {
        let changed = self.dirty.drain().filter_map(|id| self.by_id.get(&id).cloned()).collect();
        (changed, std::mem::take(&mut self.pruned))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn meta(revision: u64) -> PolicyMeta<'static> {
        PolicyMeta {
            key: "CiliumNetworkPolicy/default/p",
            kind: "CiliumNetworkPolicy",
            namespace: Some("default"),
            name: "p",
            uid: "u1",
            revision,
        }
    }

    #[test]
    fn unchanged_rules_keep_their_id_edited_ones_get_a_new_one_and_the_old_still_resolves() {
        let mut idx = RuleIndex::default();
        let a = idx.resolve(&meta(1), "spec.ingress[0]", 11, 100);
        let b = idx.resolve(&meta(1), "spec.ingress[1]", 22, 100);
        assert_ne!(a, b);
        idx.retire_others(&[a, b].into(), 100);
        // Revision 2: rule 0 unchanged, rule 1 edited.
        assert_eq!(idx.resolve(&meta(2), "spec.ingress[0]", 11, 200), a);
        let b2 = idx.resolve(&meta(2), "spec.ingress[1]", 23, 200);
        assert!(b2 != a && b2 != b);
        idx.retire_others(&[a, b2].into(), 200);
        let old = idx.get(b).expect("retired ids resolve");
        assert_eq!((old.revision, old.retired, old.path.as_str()), (1, Some(200), "spec.ingress[1]"));
        assert_eq!(idx.get(b2).unwrap().revision, 2);
        assert!(idx.describe(b).unwrap().contains("default/p spec.ingress[1]"));
        // Pruned only after the retention; ids are never reused.
        assert_eq!(idx.prune(150), 0);
        assert_eq!(idx.prune(201), 1);
        assert!(idx.get(b).is_none());
        let c = idx.resolve(&meta(3), "spec.ingress[2]", 33, 300);
        assert!(c > b2);
    }

    #[test]
    fn a_rule_that_comes_back_gets_its_retired_id_back_and_the_index_stays_bounded() {
        let mut idx = RuleIndex::default();
        let a = idx.resolve(&meta(1), "spec.ingress[0]", 11, 100);
        idx.retire_others(&[a].into(), 100);
        let mut flips = Vec::new();
        for rev in 2..12 {
            // Flip between two contents of the same rule, as `apply big; apply small; ...` does.
            let digest = if rev % 2 == 0 { 12 } else { 11 };
            let id = idx.resolve(&meta(rev), "spec.ingress[0]", digest, 100 + rev);
            idx.retire_others(&[id].into(), 100 + rev);
            flips.push(id);
        }
        assert_eq!(idx.len(), 2, "one id per distinct content");
        assert!(flips.iter().all(|&id| id == a || id == flips[0]), "{flips:?}");
        let back = idx.get(a).unwrap();
        assert_eq!((back.retired, back.revision), (None, 11), "revived, describing the revision in force");
        // Revival survives persistence: a retired key comes back after a restart too.
        let (dirty, _) = idx.take_dirty();
        let mut again = RuleIndex::from_records(dirty, idx.next_id(), idx.live_keys());
        let b = flips[0];
        assert_eq!(again.get(b).unwrap().retired, Some(111));
        assert_eq!(again.resolve(&meta(12), "spec.ingress[0]", 12, 200), b);
        // Pruned ids are forgotten for good: the content then gets a fresh id.
        again.retire_others(&[b].into(), 200);
        assert_eq!(again.prune(201), 1);
        let fresh = again.resolve(&meta(13), "spec.ingress[0]", 11, 300);
        assert!(fresh > b && fresh != a);
    }

    #[test]
    fn survives_a_round_trip_through_records() {
        let mut idx = RuleIndex::default();
        let a = idx.resolve(&meta(1), "spec.ingress[0]", 11, 100);
        let (dirty, _) = idx.take_dirty();
        let back = RuleIndex::from_records(dirty, idx.next_id(), idx.live_keys());
        let mut back = back;
        assert_eq!(back.resolve(&meta(1), "spec.ingress[0]", 11, 101), a);
        assert!(back.resolve(&meta(1), "spec.ingress[0]", 12, 101) > a);
    }
}
