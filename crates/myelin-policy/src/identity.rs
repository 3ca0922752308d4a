//! Numeric security identities: reserved ones (Cilium's numbers), workload identities allocated
//! per security label set, CIDR identities in the local scope, and the ipcache model that maps
//! addresses to identities.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::labels::Labels;

/// A numeric security identity. 0 in a policy entry means "any identity".
pub type Identity = u32;

/// Reserved identities, with Cilium's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(u32)]
pub enum ReservedIdentity {
    Unknown = 0,
    Host = 1,
    World = 2,
    Unmanaged = 3,
    Health = 4,
    Init = 5,
    RemoteNode = 6,
    KubeApiserver = 7,
    Ingress = 8,
    WorldIpv4 = 9,
    WorldIpv6 = 10,
}

impl ReservedIdentity {
    pub const ALL: [ReservedIdentity; 11] = [
        Self::Unknown,
        Self::Host,
        Self::World,
        Self::Unmanaged,
        Self::Health,
        Self::Init,
        Self::RemoteNode,
        Self::KubeApiserver,
        Self::Ingress,
        Self::WorldIpv4,
        Self::WorldIpv6,
    ];

    #[must_use]
    pub const fn id(self) -> Identity {
        self as Identity
    }

    #[must_use]
    pub fn from_id(id: Identity) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.id() == id)
    }

    /// Cilium's name of the identity (`reserved:<name>` is its label).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Host => "host",
            Self::World => "world",
            Self::Unmanaged => "unmanaged",
            Self::Health => "health",
            Self::Init => "init",
            Self::RemoteNode => "remote-node",
            Self::KubeApiserver => "kube-apiserver",
            Self::Ingress => "ingress",
            Self::WorldIpv4 => "world-ipv4",
            Self::WorldIpv6 => "world-ipv6",
        }
    }

    /// The identity's label set: `reserved:<name>` (world-ipv4/6 also carry `reserved:world`).
    #[must_use]
    pub fn labels(self) -> Labels {
        let mut l = Labels::new();
        l.insert(format!("reserved:{}", self.name()), "");
        if matches!(self, Self::WorldIpv4 | Self::WorldIpv6) {
            l.insert("reserved:world", "");
        }
        l
    }
}

/// First identity allocated to workloads.
pub const MIN_WORKLOAD_IDENTITY: Identity = 256;
/// Last identity of the cluster-local workload range.
pub const MAX_WORKLOAD_IDENTITY: Identity = 65535;
/// Bit marking identities of the local scope (CIDR identities).
pub const LOCAL_SCOPE_FLAG: Identity = 1 << 24;
/// Last local-scope identity.
pub const MAX_LOCAL_IDENTITY: Identity = (1 << 25) - 1;

/// Whether `id` is a workload identity (allocated from labels).
#[must_use]
pub fn is_workload(id: Identity) -> bool {
    (MIN_WORKLOAD_IDENTITY..LOCAL_SCOPE_FLAG).contains(&id)
}

/// Whether `id` is in the local scope (CIDR identities).
#[must_use]
pub fn is_local_scope(id: Identity) -> bool {
    (LOCAL_SCOPE_FLAG..=MAX_LOCAL_IDENTITY).contains(&id)
}

/// Bit marking the "pod inside CIDR" pseudo-identities (see [`pod_in_cidr`]).
pub const POD_IN_CIDR_FLAG: Identity = 1 << 30;

/// The pseudo-identity "a pod whose address lies in the prefix of CIDR identity `cidr_id`"
/// (`cidr_id | POD_IN_CIDR_FLAG`). `pod_in_cidr(world)` stands for a pod whose address lies in
/// no policy prefix.
///
/// No packet carries it and the ipcache never resolves to it: it exists only as a key of policy
/// entries. Only Kubernetes NetworkPolicy `ipBlock` peers cover it, with exactly the CIDR
/// semantics `cidr_id` itself has (its prefix inside the block's cidr and inside none of the
/// excepts); selectors, entities and CiliumNetworkPolicy CIDR peers never do. The datapath looks
/// it up in step 3 for a pod peer (see [`crate::compile`](mod@crate::compile)); [`IdentityTable::pod_cidr_prefixes`]
/// is the LPM that finds it for an address.
#[must_use]
pub const fn pod_in_cidr(cidr_id: Identity) -> Identity {
    cidr_id | POD_IN_CIDR_FLAG
}

/// Whether `id` is a [`pod_in_cidr`] pseudo-identity.
#[must_use]
pub const fn is_pod_in_cidr(id: Identity) -> bool {
    id & POD_IN_CIDR_FLAG != 0
}

/// The CIDR identity (or `world`) a [`pod_in_cidr`] pseudo-identity stands for; None for any
/// other identity.
#[must_use]
pub const fn pod_in_cidr_base(id: Identity) -> Option<Identity> {
    if is_pod_in_cidr(id) {
        Some(id & !POD_IN_CIDR_FLAG)
    } else {
        None
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("identity {0} is not allocated")]
    NotAllocated(Identity),
    #[error("the identity range {0}..={1} is exhausted")]
    Exhausted(Identity, Identity),
}

/// Allocates workload identities: the same label set gets the same id while it is in use.
///
/// Ids are handed out from a cursor that only moves forward (wrapping at the end of the range),
/// so a released id is not reused until every other id of the range has been handed out.
/// The whole state is serde-serializable: persist it and restore it after a restart to keep ids
/// (refcounts are persisted too: after restoring, do not acquire again for endpoints the
/// restored state already counts).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(from = "AllocatorState", into = "AllocatorState")]
pub struct IdentityAllocator {
    min: Identity,
    max: Identity,
    next: Identity,
    by_labels: BTreeMap<Labels, Identity>,
    by_id: BTreeMap<Identity, (Labels, u64)>,
}

/// Persisted form of [`IdentityAllocator`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AllocatorState {
    pub min: Identity,
    pub max: Identity,
    pub next: Identity,
    pub identities: Vec<AllocatedIdentity>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AllocatedIdentity {
    pub id: Identity,
    pub labels: Labels,
    pub refcount: u64,
}

impl From<AllocatorState> for IdentityAllocator {
    fn from(s: AllocatorState) -> Self {
        let mut a = IdentityAllocator {
            min: s.min,
            max: s.max.max(s.min),
            next: s.next.clamp(s.min, s.max.max(s.min)),
            by_labels: BTreeMap::new(),
            by_id: BTreeMap::new(),
        };
        for e in s.identities {
            a.by_labels.insert(e.labels.clone(), e.id);
            a.by_id.insert(e.id, (e.labels, e.refcount));
        }
        a
    }
}

impl From<IdentityAllocator> for AllocatorState {
    fn from(a: IdentityAllocator) -> Self {
        AllocatorState {
            min: a.min,
            max: a.max,
            next: a.next,
            identities: a
                .by_id
                .into_iter()
                .map(|(id, (labels, refcount))| AllocatedIdentity { id, labels, refcount })
                .collect(),
        }
    }
}

impl Default for IdentityAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl IdentityAllocator {
    /// An allocator over the cluster-local workload range 256..=65535.
    #[must_use]
    pub fn new() -> Self {
        Self::with_range(MIN_WORKLOAD_IDENTITY, MAX_WORKLOAD_IDENTITY)
    }

    /// An allocator over `min..=max` (tests use small ranges).
    #[must_use]
    pub fn with_range(min: Identity, max: Identity) -> Self {
        IdentityAllocator { min, max: max.max(min), next: min, by_labels: BTreeMap::new(), by_id: BTreeMap::new() }
    }

    /// Returns the id of `labels`, allocating one if needed, and takes a reference.
    ///
    /// # Errors
    /// [`IdentityError::Exhausted`] when every id of the range is in use.
    pub fn acquire(&mut self, labels: &Labels) -> Result<Identity, IdentityError> {
        if let Some(&id) = self.by_labels.get(labels) {
            if let Some(entry) = self.by_id.get_mut(&id) {
                entry.1 += 1;
            }
            return Ok(id);
        }
        let span = u64::from(self.max - self.min) + 1;
        let mut candidate = self.next;
        for _ in 0..span {
            if !self.by_id.contains_key(&candidate) {
                self.next = if candidate >= self.max { self.min } else { candidate + 1 };
                self.by_labels.insert(labels.clone(), candidate);
                self.by_id.insert(candidate, (labels.clone(), 1));
                return Ok(candidate);
            }
            candidate = if candidate >= self.max { self.min } else { candidate + 1 };
        }
        Err(IdentityError::Exhausted(self.min, self.max))
    }

    /// Drops a reference; returns true when the identity was freed.
    ///
    /// # Errors
    /// [`IdentityError::NotAllocated`] for an id that is not in use.
    pub fn release(&mut self, id: Identity) -> Result<bool, IdentityError> {
        let entry = self.by_id.get_mut(&id).ok_or(IdentityError::NotAllocated(id))?;
        entry.1 = entry.1.saturating_sub(1);
        if entry.1 == 0 {
            if let Some((labels, _)) = self.by_id.remove(&id) {
                self.by_labels.remove(&labels);
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Id of a label set, without taking a reference.
    #[must_use]
    pub fn lookup(&self, labels: &Labels) -> Option<Identity> {
        self.by_labels.get(labels).copied()
    }

    #[must_use]
    pub fn labels(&self, id: Identity) -> Option<&Labels> {
        self.by_id.get(&id).map(|(l, _)| l)
    }

    #[must_use]
    pub fn refcount(&self, id: Identity) -> u64 {
        self.by_id.get(&id).map_or(0, |(_, c)| *c)
    }

    /// All allocated identities and their labels.
    pub fn iter(&self) -> impl Iterator<Item = (Identity, &Labels)> {
        self.by_id.iter().map(|(id, (l, _))| (*id, l))
    }
}

/// Allocates local-scope CIDR identities, `(1 << 24) | n`, one per prefix. Allocation is
/// idempotent; [`CidrIdentityAllocator::retain`] frees prefixes no longer used. Ids are not
/// reused until the range wraps.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CidrIdentityAllocator {
    next: u32,
    by_prefix: BTreeMap<Ipv4Net, Identity>,
}

impl CidrIdentityAllocator {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The identity of `prefix` (normalized to its network address), allocating one if needed.
    ///
    /// # Errors
    /// [`IdentityError::Exhausted`] when the local scope is full.
    pub fn allocate(&mut self, prefix: Ipv4Net) -> Result<Identity, IdentityError> {
        let prefix = prefix.trunc();
        if let Some(&id) = self.by_prefix.get(&prefix) {
            return Ok(id);
        }
        let used: BTreeSet<Identity> = self.by_prefix.values().copied().collect();
        let span = LOCAL_SCOPE_FLAG - 1;
        for _ in 0..span {
            self.next = if self.next >= span { 1 } else { self.next + 1 };
            let id = LOCAL_SCOPE_FLAG | self.next;
            if !used.contains(&id) {
                self.by_prefix.insert(prefix, id);
                return Ok(id);
            }
        }
        Err(IdentityError::Exhausted(LOCAL_SCOPE_FLAG + 1, MAX_LOCAL_IDENTITY))
    }

    /// Frees every prefix not in `keep`.
    pub fn retain(&mut self, keep: &BTreeSet<Ipv4Net>) {
        self.by_prefix.retain(|p, _| keep.contains(p));
    }

    #[must_use]
    pub fn lookup(&self, prefix: Ipv4Net) -> Option<Identity> {
        self.by_prefix.get(&prefix.trunc()).copied()
    }

    /// prefix -> identity.
    #[must_use]
    pub fn prefixes(&self) -> &BTreeMap<Ipv4Net, Identity> {
        &self.by_prefix
    }
}

/// What the policy engine knows about identities: labels of workload identities and the prefix
/// of each CIDR identity. Reserved identities are implicit.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdentityTable {
    /// Workload identity -> security labels.
    pub workloads: BTreeMap<Identity, Labels>,
    /// CIDR identity -> prefix.
    pub cidrs: BTreeMap<Identity, Ipv4Net>,
}

impl IdentityTable {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// From an allocator's identities and a CIDR allocator's prefixes.
    #[must_use]
    pub fn from_allocators(workloads: &IdentityAllocator, cidrs: &CidrIdentityAllocator) -> Self {
        IdentityTable {
            workloads: workloads.iter().map(|(id, l)| (id, l.clone())).collect(),
            cidrs: cidrs.prefixes().iter().map(|(p, id)| (*id, *p)).collect(),
        }
    }

    /// Labels of any identity: reserved (`reserved:<name>`), CIDR (`cidr:<prefix>` and
    /// `reserved:world`), workload, or — for display only — a [`pod_in_cidr`] pseudo-identity
    /// (`pod-in-cidr:<prefix>`; no selector ever matches it). None for an unknown id.
    #[must_use]
    pub fn labels(&self, id: Identity) -> Option<Labels> {
        if let Some(base) = pod_in_cidr_base(id) {
            let prefix = self.pod_cidr_prefix(base)?;
            let mut l = Labels::new();
            l.insert(format!("pod-in-cidr:{prefix}"), "");
            return Some(l);
        }
        if let Some(r) = ReservedIdentity::from_id(id) {
            return Some(r.labels());
        }
        if let Some(p) = self.cidrs.get(&id) {
            let mut l = Labels::new();
            l.insert(format!("cidr:{p}"), "");
            l.insert("reserved:world", "");
            return Some(l);
        }
        self.workloads.get(&id).cloned()
    }

    /// Every identity that policies can name individually: reserved ones except `unknown`,
    /// workloads and CIDR identities.
    #[must_use]
    pub fn all_ids(&self) -> Vec<Identity> {
        let mut v: Vec<Identity> =
            ReservedIdentity::ALL.iter().filter(|r| **r != ReservedIdentity::Unknown).map(|r| r.id()).collect();
        v.extend(self.workloads.keys().copied());
        v.extend(self.cidrs.keys().copied());
        v
    }

    /// The prefix a [`pod_in_cidr`] base stands for: a CIDR identity's prefix, or 0.0.0.0/0 for
    /// `world` (a pod address inside no policy prefix).
    fn pod_cidr_prefix(&self, base: Identity) -> Option<Ipv4Net> {
        if base == ReservedIdentity::World.id() {
            return Some(Ipv4Net::default());
        }
        self.cidrs.get(&base).copied()
    }

    /// Every [`pod_in_cidr`] pseudo-identity of this table: one per CIDR identity, plus
    /// `pod_in_cidr(world)`.
    #[must_use]
    pub fn pod_cidr_ids(&self) -> Vec<Identity> {
        std::iter::once(ReservedIdentity::World.id()).chain(self.cidrs.keys().copied()).map(pod_in_cidr).collect()
    }

    /// The contents of the datapath's step-3 LPM map: every CIDR identity's prefix ->
    /// `pod_in_cidr(that identity)`, plus `0.0.0.0/0 -> pod_in_cidr(world)` (unless a CIDR
    /// identity has the /0 itself). Looking a pod's address up here by longest prefix match gives
    /// the pseudo-identity to look up in step 3 (see [`crate::compile`](mod@crate::compile)).
    ///
    /// It depends on the CIDR identities only, not on pods: it changes when the policies' prefixes
    /// do. The same answer per address: [`IdentityTable::pod_cidr_lookup`].
    #[must_use]
    pub fn pod_cidr_prefixes(&self) -> BTreeMap<Ipv4Net, Identity> {
        let mut out: BTreeMap<Ipv4Net, Identity> =
            self.cidrs.iter().map(|(id, p)| (p.trunc(), pod_in_cidr(*id))).collect();
        out.entry(Ipv4Net::default()).or_insert(pod_in_cidr(ReservedIdentity::World.id()));
        out
    }

    /// Longest prefix match of `ip` over [`IdentityTable::pod_cidr_prefixes`]: the matching
    /// prefix and the step-3 pseudo-identity of a pod with this address. Always an answer (the
    /// /0 catches everything). Linear in the number of CIDR identities.
    #[must_use]
    pub fn pod_cidr_lookup(&self, ip: Ipv4Addr) -> (Ipv4Net, Identity) {
        self.cidrs
            .iter()
            .filter(|(_, p)| p.contains(&ip))
            .max_by_key(|(_, p)| p.prefix_len())
            .map_or((Ipv4Net::default(), pod_in_cidr(ReservedIdentity::World.id())), |(id, p)| {
                (p.trunc(), pod_in_cidr(*id))
            })
    }
}

/// The ipcache model: IPv4 prefixes -> identity, looked up by longest prefix match. Addresses
/// matching nothing are `world` (2).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpCache {
    entries: BTreeMap<Ipv4Net, Identity>,
}

impl IpCache {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the ipcache: pod addresses (/32) -> their identity, this node's addresses -> host,
    /// other nodes' addresses -> remote-node, and every CIDR identity's prefix.
    #[must_use]
    pub fn build(
        pods: &[(Ipv4Addr, Identity)],
        host_addrs: &[Ipv4Addr],
        remote_node_addrs: &[Ipv4Addr],
        cidrs: &CidrIdentityAllocator,
    ) -> Self {
        let mut c = IpCache::new();
        for (p, id) in cidrs.prefixes() {
            c.insert(*p, *id);
        }
        for a in remote_node_addrs {
            c.insert(Ipv4Net::from(*a), ReservedIdentity::RemoteNode.id());
        }
        for a in host_addrs {
            c.insert(Ipv4Net::from(*a), ReservedIdentity::Host.id());
        }
        for (a, id) in pods {
            c.insert(Ipv4Net::from(*a), *id);
        }
        c
    }

    pub fn insert(&mut self, prefix: Ipv4Net, id: Identity) {
        self.entries.insert(prefix.trunc(), id);
    }

    pub fn remove(&mut self, prefix: Ipv4Net) -> Option<Identity> {
        self.entries.remove(&prefix.trunc())
    }

    /// Longest-prefix match; `world` when nothing matches.
    #[must_use]
    pub fn lookup(&self, ip: Ipv4Addr) -> Identity {
        self.lookup_prefix(ip).map_or(ReservedIdentity::World.id(), |(_, id)| id)
    }

    /// The matching prefix and its identity, if any.
    #[must_use]
    pub fn lookup_prefix(&self, ip: Ipv4Addr) -> Option<(Ipv4Net, Identity)> {
        (0..=32u8).rev().find_map(|len| {
            let net = Ipv4Net::new(ip, len).ok()?.trunc();
            self.entries.get(&net).map(|id| (net, *id))
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Ipv4Net, &Identity)> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn reserved_numbers_match_cilium() {
        let want = [
            ("unknown", 0),
            ("host", 1),
            ("world", 2),
            ("unmanaged", 3),
            ("health", 4),
            ("init", 5),
            ("remote-node", 6),
            ("kube-apiserver", 7),
            ("ingress", 8),
            ("world-ipv4", 9),
            ("world-ipv6", 10),
        ];
        for (r, (name, id)) in ReservedIdentity::ALL.iter().zip(want) {
            assert_eq!((r.name(), r.id()), (name, id));
            assert_eq!(ReservedIdentity::from_id(id), Some(*r));
        }
    }

    #[test]
    fn allocator_same_labels_same_id_and_refcount() {
        let mut a = IdentityAllocator::new();
        let web = Labels::from([("app", "web")]);
        let db = Labels::from([("app", "db")]);
        let w1 = a.acquire(&web).unwrap_or_else(|e| panic!("{e}"));
        let d1 = a.acquire(&db).unwrap_or_else(|e| panic!("{e}"));
        let w2 = a.acquire(&web).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(w1, 256);
        assert_eq!(d1, 257);
        assert_eq!(w1, w2);
        assert_eq!(a.refcount(w1), 2);
        assert_eq!(a.release(w1), Ok(false));
        assert_eq!(a.lookup(&web), Some(w1));
        assert_eq!(a.release(w1), Ok(true));
        assert_eq!(a.lookup(&web), None);
        assert_eq!(a.release(w1), Err(IdentityError::NotAllocated(w1)));
        // Released ids are not reused immediately.
        let w3 = a.acquire(&web).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(w3, 258);
        let x = a.acquire(&Labels::from([("app", "x")])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(x, 259);
    }

    #[test]
    fn allocator_wraps_and_exhausts() {
        let mut a = IdentityAllocator::with_range(256, 258);
        let ids: Vec<Identity> = (0..3)
            .map(|i| a.acquire(&Labels::from([("i", i.to_string())])).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        assert_eq!(ids, vec![256, 257, 258]);
        assert!(matches!(a.acquire(&Labels::from([("i", "x")])), Err(IdentityError::Exhausted(256, 258))));
        assert_eq!(a.release(257), Ok(true));
        assert_eq!(a.acquire(&Labels::from([("i", "y")])), Ok(257));
    }

    #[test]
    fn allocator_state_round_trips() {
        let mut a = IdentityAllocator::new();
        let web = Labels::from([("app", "web")]);
        let db = Labels::from([("app", "db")]);
        let w = a.acquire(&web).unwrap_or_else(|e| panic!("{e}"));
        let d = a.acquire(&db).unwrap_or_else(|e| panic!("{e}"));
        a.release(w).unwrap_or_else(|e| panic!("{e}"));
        let json = serde_json::to_string(&a).unwrap_or_else(|e| panic!("{e}"));
        let mut b: IdentityAllocator = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.lookup(&db), Some(d));
        assert_eq!(b.refcount(d), 1);
        // The cursor survives the restart: web's released id is not handed out again.
        let w2 = b.acquire(&web).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(w2, 258);
    }

    #[test]
    fn cidr_identities_are_local_scope_and_stable() {
        let mut c = CidrIdentityAllocator::new();
        let a = c.allocate(net("10.0.0.0/8")).unwrap_or_else(|e| panic!("{e}"));
        let b = c.allocate(net("10.1.0.0/16")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a, (1 << 24) | 1);
        assert_eq!(b, (1 << 24) | 2);
        assert_eq!(c.allocate(net("10.9.9.9/8")), Ok(a));
        assert!(is_local_scope(a) && !is_workload(a));
        c.retain(&BTreeSet::from([net("10.1.0.0/16")]));
        assert_eq!(c.lookup(net("10.0.0.0/8")), None);
        assert_eq!(c.allocate(net("10.0.0.0/8")), Ok((1 << 24) | 3));
    }

    #[test]
    fn ipcache_longest_prefix_match() {
        let mut cidrs = CidrIdentityAllocator::new();
        let big = cidrs.allocate(net("10.0.0.0/8")).unwrap_or_else(|e| panic!("{e}"));
        let small = cidrs.allocate(net("10.1.0.0/16")).unwrap_or_else(|e| panic!("{e}"));
        let c = IpCache::build(
            &[(Ipv4Addr::new(10, 1, 0, 5), 300)],
            &[Ipv4Addr::new(192, 168, 0, 1)],
            &[Ipv4Addr::new(192, 168, 0, 2)],
            &cidrs,
        );
        assert_eq!(c.lookup(Ipv4Addr::new(10, 1, 0, 5)), 300);
        assert_eq!(c.lookup(Ipv4Addr::new(10, 1, 0, 6)), small);
        assert_eq!(c.lookup(Ipv4Addr::new(10, 2, 0, 6)), big);
        assert_eq!(c.lookup(Ipv4Addr::new(192, 168, 0, 1)), 1);
        assert_eq!(c.lookup(Ipv4Addr::new(192, 168, 0, 2)), 6);
        assert_eq!(c.lookup(Ipv4Addr::new(8, 8, 8, 8)), 2);
    }
}
