//! Per-endpoint policy tries, the ipcache and the per-rule counters.
//!
//! The exact datapath semantics (key layout, lookup order, how enforcement
//! is encoded) are documented once, in `bpf/include/myelin_abi.h`. In short:
//! an endpoint's whole policy is one LPM trie, built aside and swapped into
//! `policy_maps[endpoint_id]` with one map update; a direction that is not
//! enforced gets the "any peer, any protocol: allow" entry flagged
//! `POLICY_F_UNENFORCED`, so "nothing matched" means "default deny" in the
//! datapath and enforcement swaps atomically with the rules.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use crate::datapath::{decode, map_err};
use crate::skel::types::{self, policy_entry_flags as PF, policy_prefix as PP};
use crate::{sys, BpfError, Datapath, DIR_EGRESS, DIR_INGRESS, VERDICT_ALLOW, VERDICT_DENY};

const PREFIX_ANY_PROTO: u32 = PP::POLICY_PREFIX_ANY_PROTO.0;
const PREFIX_ANY_PORT: u32 = PP::POLICY_PREFIX_ANY_PORT.0;
const F_UNENFORCED: u8 = PF::POLICY_F_UNENFORCED.0 as u8;
const F_SYNTHETIC: u8 = PF::POLICY_F_SYNTHETIC.0 as u8;
const F_DEFAULT: u8 = PF::POLICY_F_DEFAULT.0 as u8;

/// The match type (for flow events) of an entry with this key.
fn match_of(k: &types::policy_key) -> u8 {
    match (k.identity == 0, k.prefixlen <= PREFIX_ANY_PROTO) {
        (true, true) => crate::MATCH_ALL,
        (true, false) => crate::MATCH_L4_ONLY,
        (false, true) => crate::MATCH_L3_ONLY,
        (false, false) => crate::MATCH_L3_L4,
    }
}
/// `BPF_F_NO_PREALLOC`: required for LPM tries, and must match the template.
const BPF_F_NO_PREALLOC: u32 = 1;

/// A policy key as a sortable tuple: (prefixlen, identity, direction, protocol, dport).
type KeyId = (u32, u32, u8, u8, u16);

/// One entry of an endpoint's policy trie, as the policy compiler emits it.
///
/// Meaning (see `myelin_abi.h`): traffic between the endpoint and a peer of
/// `identity` (0 = any peer, consulted only when no entry of the peer's own
/// identity matched) in `direction` ([`crate::POLICY_INGRESS`] /
/// [`crate::POLICY_EGRESS`]), of `protocol` (IP protocol number; 0 = any
/// protocol, then `port` and `port_prefix_len` must be 0), to destination
/// ports in the aligned block given by the first `port_prefix_len` bits of
/// `port` (16 = exactly `port`, 0 = any port; bits of `port` beyond the
/// prefix must be 0). For ICMP the "port" is the ICMP type (echo request = 8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyMapEntry {
    /// Peer security identity; 0 = any peer.
    pub identity: u32,
    /// 0 ingress, 1 egress (from the endpoint's point of view).
    pub direction: u8,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 132 SCTP); 0 = any.
    pub protocol: u8,
    /// Destination port (host byte order), or the ICMP type.
    pub port: u16,
    /// How many leading bits of `port` are significant (0..=16).
    pub port_prefix_len: u8,
    /// Deny (drop reason 181) rather than allow.
    pub deny: bool,
    /// The agent's id of the rule this entry comes from (flow events, counters).
    pub rule_id: u32,
    /// The entry only restores the direction's default verdict under a
    /// wider entry (the compiler's "no rule here"): the datapath treats it
    /// as no match (drop reason 133, not 181, in an enforced direction).
    /// `deny` is then the default verdict and `rule_id` is 0.
    pub default: bool,
}

impl PolicyMapEntry {
    fn key(&self) -> Result<types::policy_key, BpfError> {
        let bad = |why: &str| BpfError::Invalid(format!("policy entry {self:?}: {why}"));
        if self.direction != DIR_INGRESS && self.direction != DIR_EGRESS {
            return Err(bad("direction must be 0 (ingress) or 1 (egress)"));
        }
        if self.port_prefix_len > 16 {
            return Err(bad("port_prefix_len must be 0..=16"));
        }
        let prefixlen = if self.protocol == 0 {
            if self.port != 0 || self.port_prefix_len != 0 {
                return Err(bad("an any-protocol entry (protocol 0) cannot have a port"));
            }
            PREFIX_ANY_PROTO
        } else {
            let mask = u16::MAX.checked_shl(16 - u32::from(self.port_prefix_len)).unwrap_or(0);
            if self.port & !mask != 0 {
                return Err(bad("port has bits set beyond port_prefix_len (not an aligned block)"));
            }
            PREFIX_ANY_PORT + u32::from(self.port_prefix_len)
        };
        Ok(types::policy_key {
            prefixlen,
            identity: self.identity,
            direction: self.direction,
            protocol: self.protocol,
            dport: self.port.to_be(),
        })
    }

    fn from_raw(k: &types::policy_key, v: &types::policy_entry) -> Self {
        let port_prefix_len = u8::try_from(k.prefixlen.saturating_sub(PREFIX_ANY_PORT).min(16)).unwrap_or(16);
        let any_proto = k.prefixlen <= PREFIX_ANY_PROTO;
        Self {
            identity: k.identity,
            direction: k.direction,
            protocol: if any_proto { 0 } else { k.protocol },
            port: if any_proto { 0 } else { u16::from_be(k.dport) },
            port_prefix_len: if any_proto { 0 } else { port_prefix_len },
            deny: v.verdict != VERDICT_ALLOW,
            rule_id: v.rule_id,
            default: v.flags & F_DEFAULT != 0,
        }
    }
}

/// One row of `policy_stats`, summed over CPUs: how many packets a rule decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyStatRow {
    /// The endpoint whose policy decided.
    pub endpoint_id: u32,
    /// The deciding rule (0: no rule — default deny, or a non-enforced direction's allow).
    pub rule_id: u32,
    /// [`crate::DIR_INGRESS`] or [`crate::DIR_EGRESS`], from the endpoint's view.
    pub direction: u8,
    /// [`crate::VERDICT_ALLOW`], [`crate::VERDICT_DENY`] or [`crate::VERDICT_DEFAULT_DENY`].
    pub verdict: u8,
    /// Packets.
    pub packets: u64,
    /// Bytes (`skb->len`).
    pub bytes: u64,
}

fn trie_fd(trie: &MapHandle) -> Result<u32, BpfError> {
    u32::try_from(trie.as_fd().as_raw_fd()).map_err(|_| BpfError::Invalid("negative map fd".to_string()))
}

/// A new, filled policy trie of one endpoint, not yet visible to the datapath.
fn build_trie(
    endpoint_id: u32,
    ingress_enforced: bool,
    egress_enforced: bool,
    entries: &[PolicyMapEntry],
) -> Result<MapHandle, BpfError> {
    let mut trie: BTreeMap<KeyId, (types::policy_key, types::policy_entry)> = BTreeMap::new();
    for e in entries {
        let k = e.key()?;
        let v = types::policy_entry {
            verdict: if e.deny { VERDICT_DENY } else { VERDICT_ALLOW },
            flags: if e.default { F_DEFAULT } else { 0 },
            r#match: if e.default { crate::MATCH_NONE } else { match_of(&k) },
            _pad: 0,
            rule_id: if e.default { 0 } else { e.rule_id },
        };
        let id = (k.prefixlen, k.identity, k.direction, k.protocol, k.dport);
        match trie.get(&id) {
            Some((_, old)) if old.verdict == VERDICT_DENY || !e.deny => {}
            _ => {
                trie.insert(id, (k, v));
            }
        }
    }
    for (dir, enforced) in [(DIR_INGRESS, ingress_enforced), (DIR_EGRESS, egress_enforced)] {
        if enforced {
            continue;
        }
        let k = types::policy_key { prefixlen: PREFIX_ANY_PROTO, identity: 0, direction: dir, protocol: 0, dport: 0 };
        trie.entry((k.prefixlen, 0, dir, 0, 0)).and_modify(|(_, v)| v.flags |= F_UNENFORCED).or_insert((
            k,
            types::policy_entry {
                verdict: VERDICT_ALLOW,
                flags: F_UNENFORCED | F_SYNTHETIC,
                r#match: crate::MATCH_ALL,
                _pad: 0,
                rule_id: 0,
            },
        ));
    }

    let max_entries = u32::try_from(trie.len().max(1)).map_err(|_| {
        BpfError::Invalid(format!("endpoint {endpoint_id}: {} policy entries is more than a map holds", trie.len()))
    })?;
    let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
        map_flags: BPF_F_NO_PREALLOC,
        ..Default::default()
    };
    let inner = MapHandle::create(
        MapType::LpmTrie,
        Some(format!("pol_{endpoint_id}")),
        std::mem::size_of::<types::policy_key>() as u32,
        std::mem::size_of::<types::policy_entry>() as u32,
        max_entries,
        &opts,
    )
    .map_err(map_err(
        "policy_maps",
        format!("creating the policy trie of endpoint {endpoint_id} ({max_entries} entries)"),
    ))?;
    for (k, v) in trie.values() {
        inner
            .update(sys::as_bytes(k), sys::as_bytes(v), MapFlags::ANY)
            .map_err(map_err("policy_maps", format!("endpoint {endpoint_id}: writing {k:?}")))?;
    }
    Ok(inner)
}

fn ipcache_key(ip: Ipv4Addr, prefix_len: u8) -> Result<types::ipcache_key, BpfError> {
    if prefix_len > 32 {
        return Err(BpfError::Invalid(format!("ipcache prefix {ip}/{prefix_len}: longer than 32")));
    }
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
    let net = Ipv4Addr::from(u32::from(ip) & mask);
    Ok(types::ipcache_key { prefixlen: u32::from(prefix_len), ip4: u32::from_ne_bytes(net.octets()) })
}

/// The desired policy of one endpoint for [`Datapath::set_endpoint_policies`]:
/// `Some((ingress_enforced, egress_enforced, entries))`, or `None` for "no
/// policy" (allow all).
pub type EndpointPolicyUpdate = (u32, Option<DesiredPolicy>);

/// `(ingress_enforced, egress_enforced, entries)`, as [`Datapath::set_endpoint_policy`] takes them.
pub type DesiredPolicy = (bool, bool, Vec<PolicyMapEntry>);

/// File descriptors kept free for everything else while a batch holds one
/// fd per new policy trie.
const FD_RESERVE: usize = 128;

impl Datapath {
    /// Replace the whole policy of `endpoint_id` atomically: a new trie is
    /// built and filled aside, then swapped in with one update of
    /// `policy_maps`; every packet sees either the old or the new policy.
    ///
    /// `ingress_enforced` / `egress_enforced`: whether "no entry matched"
    /// means deny (drop reason 133) or allow in that direction. Entries with
    /// the same key: a deny beats an allow, otherwise the first one is kept.
    ///
    /// Each call waits for one RCU grace period (see
    /// [`Self::set_endpoint_policies`]); to change many endpoints, use that.
    pub fn set_endpoint_policy(
        &self,
        endpoint_id: u32,
        ingress_enforced: bool,
        egress_enforced: bool,
        entries: &[PolicyMapEntry],
    ) -> Result<(), BpfError> {
        let inner = build_trie(endpoint_id, ingress_enforced, egress_enforced, entries)?;
        let fd = trie_fd(&inner)?;
        self.maps
            .policy_maps
            .update(sys::as_bytes(&endpoint_id), sys::as_bytes(&fd), MapFlags::ANY)
            .map_err(map_err("policy_maps", format!("swapping in the policy of endpoint {endpoint_id}")))
        // Dropping `inner` closes our fd; the outer map holds the trie.
    }

    /// Replace (`Some`) or remove (`None`) the policies of many endpoints at
    /// once. Each endpoint's policy is swapped atomically, exactly as
    /// [`Self::set_endpoint_policy`] / [`Self::clear_endpoint_policy`] do;
    /// different endpoints may switch at slightly different instants, but
    /// when this returns every program run that started since sees the new
    /// policies.
    ///
    /// Why a batch: the kernel makes every update of a map-in-map from user
    /// space wait for an RCU grace period (`maybe_wait_bpf_programs()` ->
    /// `synchronize_rcu()`, several ms, ~15 ms on a busy VM). A
    /// `BPF_MAP_UPDATE_BATCH` (`generic_map_update_batch()`, which
    /// HASH_OF_MAPS has) waits once per call since Linux 6.8 (commit
    /// 37ba5b59d6ad), and `BPF_MAP_DELETE_BATCH` once per call since 5.18.
    /// So all new tries are built and filled first, then swapped in with one
    /// batch update, and the removals go in one batch delete: two grace
    /// periods at most, whatever the number of endpoints. (On older kernels
    /// the batch still works, it just waits per element.)
    ///
    /// The new tries are held open (one fd each) until the swap: if the
    /// process's `RLIMIT_NOFILE` soft limit is too low for the batch, it is
    /// raised toward the hard limit, and failing that the batch is split.
    ///
    /// An endpoint id may appear only once. On error some endpoints may have
    /// switched and others not (each still atomically): call again with the
    /// same updates, which is idempotent.
    pub fn set_endpoint_policies(&self, updates: &[EndpointPolicyUpdate]) -> Result<(), BpfError> {
        let mut seen = std::collections::BTreeSet::new();
        for (id, _) in updates {
            if !seen.insert(*id) {
                return Err(BpfError::Invalid(format!("endpoint {id} appears twice in one batch of policy updates")));
            }
        }
        let sets: Vec<(u32, &DesiredPolicy)> =
            updates.iter().filter_map(|(id, p)| p.as_ref().map(|p| (*id, p))).collect();
        let clears: Vec<u32> = updates.iter().filter(|(_, p)| p.is_none()).map(|(id, _)| *id).collect();

        let chunk = sys::fd_budget(sets.len(), FD_RESERVE).max(1);
        for part in sets.chunks(chunk) {
            // Build and fill every new trie aside: nothing is visible yet.
            let tries = part
                .iter()
                .map(|(id, (ing, eg, entries))| build_trie(*id, *ing, *eg, entries))
                .collect::<Result<Vec<_>, _>>()?;
            let mut keys = Vec::with_capacity(part.len() * 4);
            let mut values = Vec::with_capacity(part.len() * 4);
            for ((id, _), trie) in part.iter().zip(&tries) {
                keys.extend_from_slice(sys::as_bytes(id));
                values.extend_from_slice(sys::as_bytes(&trie_fd(trie)?));
            }
            let count =
                u32::try_from(part.len()).map_err(|_| BpfError::Invalid("too many endpoints in one batch".into()))?;
            self.maps.policy_maps.update_batch(&keys, &values, count, MapFlags::ANY, MapFlags::ANY).map_err(
                map_err(
                    "policy_maps",
                    format!(
                        "swapping in the policies of {} endpoints (first {}) with one batch update",
                        part.len(),
                        part[0].0
                    ),
                ),
            )?;
            // Dropping `tries` closes our fds; the outer map holds the tries.
        }

        if !clears.is_empty() {
            self.clear_endpoint_policies(&clears)?;
        }
        Ok(())
    }

    /// Remove the policies of `ids` with one batch delete (one grace period);
    /// ids without a policy are skipped.
    fn clear_endpoint_policies(&self, ids: &[u32]) -> Result<(), BpfError> {
        let mut present = Vec::with_capacity(ids.len());
        for id in ids {
            // A lookup on the outer map does not wait for a grace period.
            let found = self
                .maps
                .policy_maps
                .lookup(sys::as_bytes(id), MapFlags::ANY)
                .map_err(map_err("policy_maps", format!("looking up endpoint {id}")))?;
            if found.is_some() {
                present.push(*id);
            }
        }
        if present.is_empty() {
            return Ok(());
        }
        let keys: Vec<u8> = present.iter().flat_map(|id| id.to_ne_bytes()).collect();
        let count =
            u32::try_from(present.len()).map_err(|_| BpfError::Invalid("too many endpoints in one batch".into()))?;
        match self.maps.policy_maps.delete_batch(&keys, count, MapFlags::ANY, MapFlags::ANY) {
            Ok(()) => Ok(()),
            // Someone else removed one meanwhile (the batch stops at it):
            // finish one by one, ignoring the absent ones.
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {
                present.iter().try_for_each(|id| self.clear_endpoint_policy(*id))
            }
            Err(source) => Err(BpfError::Map {
                map: "policy_maps",
                op: format!("deleting the policies of {} endpoints with one batch delete", present.len()),
                source,
            }),
        }
    }

    /// Remove the policy of `endpoint_id`: back to "no policy, allow all"
    /// (also what an endpoint's removal should do). Ok if there was none.
    pub fn clear_endpoint_policy(&self, endpoint_id: u32) -> Result<(), BpfError> {
        match self.maps.policy_maps.delete(sys::as_bytes(&endpoint_id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(BpfError::Map {
                map: "policy_maps",
                op: format!("deleting the policy of endpoint {endpoint_id}"),
                source,
            }),
        }
    }

    /// The policy of `endpoint_id` as installed: `(ingress_enforced,
    /// egress_enforced, entries sorted)`, or `None` if it has no policy.
    pub fn endpoint_policy(&self, endpoint_id: u32) -> Result<Option<(bool, bool, Vec<PolicyMapEntry>)>, BpfError> {
        let mut attempt = 0;
        let inner = loop {
            let Some(raw) = self
                .maps
                .policy_maps
                .lookup(sys::as_bytes(&endpoint_id), MapFlags::ANY)
                .map_err(map_err("policy_maps", format!("looking up endpoint {endpoint_id}")))?
            else {
                return Ok(None);
            };
            let id: u32 = decode("policy_maps", &raw)?;
            match MapHandle::from_map_id(id) {
                Ok(m) => break m,
                // Swapped out and freed between the two calls: read again.
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound && attempt < 8 => {
                    attempt += 1;
                }
                Err(source) => {
                    return Err(BpfError::Map {
                        map: "policy_maps",
                        op: format!("opening the policy trie (map id {id}) of endpoint {endpoint_id}"),
                        source,
                    })
                }
            }
        };
        let (mut ingress_enforced, mut egress_enforced) = (true, true);
        let mut out = Vec::new();
        for kb in inner.keys() {
            let k: types::policy_key = decode("policy_maps", &kb)?;
            let Some(vb) = inner
                .lookup(&kb, MapFlags::ANY)
                .map_err(map_err("policy_maps", format!("endpoint {endpoint_id}: reading {k:?}")))?
            else {
                continue;
            };
            let v: types::policy_entry = decode("policy_maps", &vb)?;
            if v.flags & F_UNENFORCED != 0 {
                if k.direction == DIR_INGRESS {
                    ingress_enforced = false;
                } else {
                    egress_enforced = false;
                }
            }
            if v.flags & F_SYNTHETIC == 0 {
                out.push(PolicyMapEntry::from_raw(&k, &v));
            }
        }
        out.sort();
        Ok(Some((ingress_enforced, egress_enforced, out)))
    }

    /// Endpoint ids that have a policy installed, sorted.
    pub fn policy_endpoints(&self) -> Result<Vec<u32>, BpfError> {
        let mut ids =
            self.maps.policy_maps.keys().map(|k| decode::<u32>("policy_maps", &k)).collect::<Result<Vec<_>, _>>()?;
        ids.sort_unstable();
        Ok(ids)
    }

    /// Map the prefix `ip/prefix_len` to `identity` (host bits of `ip` are
    /// ignored). Longest prefix wins; addresses in no prefix are world (2).
    /// The node's own addresses belong here as identity host (1).
    pub fn upsert_ipcache(&self, ip: Ipv4Addr, prefix_len: u8, identity: u32) -> Result<(), BpfError> {
        let k = ipcache_key(ip, prefix_len)?;
        let v = types::ipcache_value { identity, flags: 0 };
        self.maps
            .ipcache
            .update(sys::as_bytes(&k), sys::as_bytes(&v), MapFlags::ANY)
            .map_err(map_err("ipcache", format!("upserting {ip}/{prefix_len} -> {identity}")))
    }

    /// The identity the ipcache gives `ip` (longest prefix), if any.
    pub fn ipcache_lookup(&self, ip: Ipv4Addr) -> Result<Option<u32>, BpfError> {
        let k = ipcache_key(ip, 32)?;
        let v = self
            .maps
            .ipcache
            .lookup(sys::as_bytes(&k), MapFlags::ANY)
            .map_err(map_err("ipcache", format!("looking up {ip}")))?;
        v.map(|b| decode::<types::ipcache_value>("ipcache", &b).map(|v| v.identity)).transpose()
    }

    /// Make `policy_cidrs` hold exactly `prefixes` (network, prefix length,
    /// CIDR identity): the prefixes of every policy CIDR, for the pod-in-CIDR
    /// step of policy lookups. Adds and changes go in before removals, so a
    /// lookup never misses a prefix that stays. Returns how many changed.
    pub fn set_policy_cidrs(&self, prefixes: &[(Ipv4Addr, u8, u32)]) -> Result<usize, BpfError> {
        let want: BTreeMap<(Ipv4Addr, u8), u32> = prefixes.iter().map(|(ip, l, id)| ((*ip, *l), *id)).collect();
        let have: BTreeMap<(Ipv4Addr, u8), u32> =
            self.policy_cidrs()?.into_iter().map(|(ip, l, id)| ((ip, l), id)).collect();
        let mut changes = 0;
        for ((ip, len), id) in &want {
            if have.get(&(*ip, *len)) != Some(id) {
                let k = ipcache_key(*ip, *len)?;
                let v = types::ipcache_value { identity: *id, flags: 0 };
                self.maps
                    .policy_cidrs
                    .update(sys::as_bytes(&k), sys::as_bytes(&v), MapFlags::ANY)
                    .map_err(map_err("policy_cidrs", format!("upserting {ip}/{len} -> {id}")))?;
                changes += 1;
            }
        }
        for (ip, len) in have.keys() {
            if !want.contains_key(&(*ip, *len)) {
                let k = ipcache_key(*ip, *len)?;
                match self.maps.policy_cidrs.delete(sys::as_bytes(&k)) {
                    Ok(()) => changes += 1,
                    Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(BpfError::Map { map: "policy_cidrs", op: format!("deleting {ip}/{len}"), source })
                    }
                }
            }
        }
        Ok(changes)
    }

    /// Every policy CIDR prefix `(network, prefix_len, CIDR identity)`, sorted.
    pub fn policy_cidrs(&self) -> Result<Vec<(Ipv4Addr, u8, u32)>, BpfError> {
        lpm_rows(&self.maps.policy_cidrs, "policy_cidrs")
    }

    /// Delete the prefix `ip/prefix_len`; false if it was absent.
    pub fn delete_ipcache(&self, ip: Ipv4Addr, prefix_len: u8) -> Result<bool, BpfError> {
        let k = ipcache_key(ip, prefix_len)?;
        match self.maps.ipcache.delete(sys::as_bytes(&k)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(BpfError::Map { map: "ipcache", op: format!("deleting {ip}/{prefix_len}"), source }),
        }
    }

    /// All ipcache prefixes `(network, prefix_len, identity)`, sorted.
    pub fn ipcache(&self) -> Result<Vec<(Ipv4Addr, u8, u32)>, BpfError> {
        lpm_rows(&self.maps.ipcache, "ipcache")
    }

    /// All policy decision counters, summed over CPUs, sorted by
    /// (endpoint, direction, rule, verdict).
    pub fn policy_stats(&self) -> Result<Vec<PolicyStatRow>, BpfError> {
        let mut out = Vec::new();
        for kb in self.maps.policy_stats.keys() {
            let k: types::policy_stats_key = decode("policy_stats", &kb)?;
            let Some(per_cpu) = self
                .maps
                .policy_stats
                .lookup_percpu(&kb, MapFlags::ANY)
                .map_err(map_err("policy_stats", format!("reading {k:?}")))?
            else {
                continue;
            };
            let mut row = PolicyStatRow {
                endpoint_id: k.endpoint_id,
                rule_id: k.rule_id,
                direction: k.direction,
                verdict: k.verdict,
                packets: 0,
                bytes: 0,
            };
            for cpu in &per_cpu {
                let v: types::metrics_value = decode("policy_stats", cpu)?;
                row.packets = row.packets.wrapping_add(v.packets);
                row.bytes = row.bytes.wrapping_add(v.bytes);
            }
            out.push(row);
        }
        out.sort_by_key(|r| (r.endpoint_id, r.direction, r.rule_id, r.verdict));
        Ok(out)
    }

    /// Delete every policy counter of `endpoint_id` (when the endpoint goes away).
    pub fn delete_policy_stats(&self, endpoint_id: u32) -> Result<(), BpfError> {
        let keys: Vec<Vec<u8>> = self.maps.policy_stats.keys().collect();
        for kb in keys {
            let k: types::policy_stats_key = decode("policy_stats", &kb)?;
            if k.endpoint_id != endpoint_id {
                continue;
            }
            match self.maps.policy_stats.delete(&kb) {
                Ok(()) => {}
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(BpfError::Map { map: "policy_stats", op: format!("deleting {k:?}"), source })
                }
            }
        }
        Ok(())
    }
}

/// Every entry of an LPM trie of ipcache_key -> ipcache_value, sorted.
fn lpm_rows(map: &MapHandle, name: &'static str) -> Result<Vec<(Ipv4Addr, u8, u32)>, BpfError> {
    let mut out = Vec::new();
    for kb in map.keys() {
        let k: types::ipcache_key = decode(name, &kb)?;
        let Some(vb) = map.lookup(&kb, MapFlags::ANY).map_err(map_err(name, format!("reading {k:?}")))? else {
            continue;
        };
        let v: types::ipcache_value = decode(name, &vb)?;
        out.push((Ipv4Addr::from(k.ip4.to_ne_bytes()), u8::try_from(k.prefixlen).unwrap_or(32), v.identity));
    }
    out.sort_unstable();
    Ok(out)
}
