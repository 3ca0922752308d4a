//! The policy compiler: policies + endpoints + identities -> per-endpoint policy map entries.
//!
//! # The policy map and its lookup (what the datapath implements)
//!
//! One LPM trie per endpoint (or one shared trie with the endpoint in the key; the entries are
//! the same). Key, in network byte order so the trie's bit order works:
//!
//! ```text
//! struct policy_key {            // BPF_MAP_TYPE_LPM_TRIE, BPF_F_NO_PREALLOC
//!     __u32 prefixlen;           // bits of the fields below that are significant
//!     __be32 identity;           // peer identity, 0 = any identity
//!     __u8  direction;           // 0 ingress, 1 egress
//!     __u8  protocol;            // IP protocol; 0 = any protocol
//!     __be16 port;               // destination port; ICMP: the ICMP type
//! };
//! prefixlen = 40                        when protocol == 0 (port must be 0)
//!           = 48 + port_prefix_len      otherwise (port_prefix_len 0..=16)
//! ```
//!
//! A packet's key is (peer identity, direction, protocol, dport) with prefixlen 64, where dport
//! is the L4 destination port for TCP/UDP/SCTP, the ICMP type for ICMP/ICMPv6 and 0 otherwise.
//! The lookup has at most three steps:
//!
//! 1. with the peer's identity;
//! 2. only if step 1 finds NO entry, again with identity 0 ("any peer");
//! 3. only if steps 1-2 give no decision — no entry, or an entry whose rule id is 0 (the compiler
//!    emits those only to restore the direction's default under a wider entry: `rule` None) —
//!    and only when the peer is a pod (its identity is a workload identity,
//!    [`crate::identity::is_workload`]): again with the pseudo-identity
//!    [`pod_in_cidr`]`(c)`, where c is the CIDR identity of the longest policy CIDR prefix
//!    containing the peer pod's address (`world` when none does). That prefix -> pseudo-identity
//!    LPM is [`crate::identity::IdentityTable::pod_cidr_prefixes`].
//!
//! If the steps find nothing, the direction's default applies: deny when the endpoint is
//! enforced in that direction, allow otherwise (a rule-less entry carries that default too). The
//! value is the entry's verdict (and rule id for drop attribution). Non-pod peers never take
//! step 3.
//!
//! The compiler guarantees that this lookup yields exactly the policy semantics:
//!
//! - deny beats allow, and a rule of the peer's identity never hides a wildcard rule that should
//!   apply: wildcard rules are folded into each specific identity's entries;
//! - Kubernetes NetworkPolicy `ipBlock` selects any address in the block, pod addresses
//!   included, exactly per address (two pods sharing an identity are told apart by address):
//!   its rules also cover the pseudo-identities [`pod_in_cidr`]`(c)` whose prefix lies in the
//!   block and in none of its excepts, and only those rules do (selectors, entities and
//!   CiliumNetworkPolicy CIDR rules never cover them: a CNP CIDR selects no cluster endpoint,
//!   as in Cilium). Step 3 entries are allows only (NetworkPolicy has no deny) and are reached
//!   only where no rule of the peer's identity or of the wildcard applies, so deny precedence
//!   holds. When both an identity rule and an `ipBlock` rule allow a pod, the identity rule is
//!   the one reported. Named ports of an egress `ipBlock` rule resolve against no pod reached by
//!   address (they match nothing there). Exact by address as long as every prefix the policies
//!   name ([`crate::cidr_prefixes`]) has a CIDR identity in the table, as the agent ensures.
//!
//! [`evaluate`] implements this lookup literally and is what the tests check.
//!
//! [`pod_in_cidr`]: crate::identity::pod_in_cidr

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::identity::{is_pod_in_cidr, is_workload, Identity};
use crate::labels::Labels;
use crate::matching::{
    flatten, is_wildcard_peer, peer_matches, resolve_named, selects_pod_addresses, Endpoint, EndpointId, FlatRule,
    PolicyInput,
};
use crate::model::{Direction, PeerKind, PortSpec, RuleRef, Verdict};

/// One entry of the policy map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEntry {
    /// Peer identity; 0 = any identity.
    pub identity: Identity,
    pub direction: Direction,
    /// IP protocol; 0 = any protocol (then `port` and `port_prefix_len` are 0).
    pub protocol: u8,
    /// First port of the block (ICMP: the type).
    pub port: u16,
    /// Significant leading bits of `port`: 16 exact, 0 any, else an aligned power-of-two block.
    pub port_prefix_len: u8,
    pub verdict: Verdict,
    /// The rule that decided; None for entries that restore the default verdict under a wider
    /// entry. Shared: every entry a rule produces points at one copy.
    pub rule: Option<Arc<RuleRef>>,
}

impl PolicyEntry {
    /// The LPM prefix length of the entry's key (see the module docs).
    #[must_use]
    pub fn lpm_prefix_len(&self) -> u32 {
        if self.protocol == 0 {
            40
        } else {
            48 + u32::from(self.port_prefix_len)
        }
    }

    /// Whether the entry only restores the direction's default under a wider entry (no rule):
    /// for the datapath's step 3 it is "no decision" (the agent writes it with rule id 0).
    #[must_use]
    pub fn restores_default(&self) -> bool {
        self.rule.is_none()
    }

    /// Whether the entry's key covers (protocol, port).
    #[must_use]
    pub fn covers(&self, protocol: u8, port: u16) -> bool {
        if self.protocol == 0 {
            return true;
        }
        if self.protocol != protocol {
            return false;
        }
        let plen = u32::from(self.port_prefix_len);
        plen == 0 || (port >> (16 - plen)) == (self.port >> (16 - plen))
    }
}

/// Policy of one endpoint in one direction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionPolicy {
    /// Default deny in this direction (a lookup miss drops).
    pub enforced: bool,
    pub entries: Vec<PolicyEntry>,
}

/// Policy of one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPolicy {
    pub endpoint: EndpointId,
    pub identity: Identity,
    pub ingress: DirectionPolicy,
    pub egress: DirectionPolicy,
}

impl EndpointPolicy {
    #[must_use]
    pub fn direction(&self, d: Direction) -> &DirectionPolicy {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// Compiler output for every endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompiledPolicy {
    pub endpoints: BTreeMap<EndpointId, EndpointPolicy>,
}

/// Result of a lookup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evaluation {
    pub verdict: Verdict,
    /// The deciding rule; None for the default verdict.
    pub rule: Option<RuleRef>,
    /// The entry that matched, if any.
    pub entry: Option<PolicyEntry>,
    pub enforced: bool,
}

/// Looks up (peer, protocol, port) exactly as the datapath does (see the module docs):
///
/// 1. longest prefix match among the entries of the peer's identity;
/// 2. only if step 1 found no entry, among identity 0's entries;
/// 3. only if steps 1-2 gave no decision (no entry, or an entry without a rule, which only
///    restores the default), the peer is a pod (a workload identity) and `peer_pod_cidr` is
///    Some: among the entries of `peer_pod_cidr`, the [`pod_in_cidr`] pseudo-identity of the
///    peer's address ([`crate::identity::IdentityTable::pod_cidr_lookup`]);
/// 4. else the entry of steps 1-2 if there was one (it carries the default verdict), else the
///    direction's default: deny when enforced, allow otherwise.
///
/// An endpoint the compiled policy does not know is not enforced (allow).
///
/// [`pod_in_cidr`]: crate::identity::pod_in_cidr
#[must_use]
pub fn evaluate(
    compiled: &CompiledPolicy,
    endpoint: EndpointId,
    direction: Direction,
    peer: Identity,
    peer_pod_cidr: Option<Identity>,
    protocol: u8,
    port: u16,
) -> Evaluation {
    let Some(ep) = compiled.endpoints.get(&endpoint) else {
        return Evaluation { verdict: Verdict::Allow, rule: None, entry: None, enforced: false };
    };
    let dp = ep.direction(direction);
    let lpm = |id: Identity| {
        dp.entries
            .iter()
            .filter(|e| e.identity == id && e.direction == direction && e.covers(protocol, port))
            .max_by_key(|e| e.lpm_prefix_len())
    };
    let mut hit = lpm(peer).or_else(|| lpm(0));
    if hit.is_none_or(PolicyEntry::restores_default) && is_workload(peer) {
        if let Some(e) = peer_pod_cidr.and_then(lpm) {
            hit = Some(e);
        }
    }
    match hit {
        Some(e) => Evaluation {
            verdict: e.verdict,
            rule: e.rule.as_deref().cloned(),
            entry: Some(e.clone()),
            enforced: dp.enforced,
        },
        None => Evaluation {
            verdict: if dp.enforced { Verdict::Deny } else { Verdict::Allow },
            rule: None,
            entry: None,
            enforced: dp.enforced,
        },
    }
}

/// The minimal set of aligned power-of-two blocks covering `lo..=hi`, as (start, prefix length).
#[must_use]
pub fn port_range_blocks(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    while lo <= hi {
        // Largest block aligned at lo that fits in lo..=hi.
        let mut size: u32 = if lo == 0 { 1 << 16 } else { lo & lo.wrapping_neg() };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        let plen = 16 - size.trailing_zeros();
        out.push((u16::try_from(lo).unwrap_or(0), u8::try_from(plen).unwrap_or(16)));
        lo += size;
    }
    out
}

/// Value of the policy function at a point: the deciding rule (by ordinal) or no rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Val {
    Miss,
    Allow(u32),
    Deny(u32),
}

/// A piecewise-constant function over ports 0..=65535; adjacent segments differ.
#[derive(Clone, Debug)]
struct Pw {
    starts: Vec<u32>,
    vals: Vec<Val>,
}

impl Pw {
    fn constant(v: Val) -> Self {
        Pw { starts: vec![0], vals: vec![v] }
    }

    fn seg(&self, port: u32) -> usize {
        self.starts.partition_point(|s| *s <= port).saturating_sub(1)
    }

    fn seg_end(&self, i: usize) -> u32 {
        self.starts.get(i + 1).map_or(65535, |s| s - 1)
    }

    fn uniform(&self, lo: u32, hi: u32) -> Option<Val> {
        let i = self.seg(lo);
        (self.seg_end(i) >= hi).then(|| self.vals[i])
    }

    fn agrees(&self, other: &Pw, lo: u32, hi: u32) -> bool {
        let mut pos = lo;
        while pos <= hi {
            let (i, j) = (self.seg(pos), other.seg(pos));
            if self.vals[i] != other.vals[j] {
                return false;
            }
            pos = self.seg_end(i).min(other.seg_end(j)) + 1;
        }
        true
    }
}

/// Deny beats allow; among rules of one verdict the lowest ordinal decides.
fn decide(deny: Option<u32>, allow: Option<u32>) -> Val {
    match (deny, allow) {
        (Some(d), _) => Val::Deny(d),
        (None, Some(a)) => Val::Allow(a),
        (None, None) => Val::Miss,
    }
}

/// One port interval contributed by a rule.
#[derive(Clone, Copy, Debug)]
struct Item {
    proto: u8,
    lo: u16,
    hi: u16,
    ord: u32,
    deny: bool,
}

/// The policy function of one identity class.
struct ClassFn {
    other: Val,
    protos: BTreeMap<u8, Pw>,
}

fn build_class(l3_deny: Option<u32>, l3_allow: Option<u32>, items: &[Item]) -> ClassFn {
    let other = decide(l3_deny, l3_allow);
    let mut by_proto: BTreeMap<u8, Vec<&Item>> = BTreeMap::new();
    for it in items {
        by_proto.entry(it.proto).or_default().push(it);
    }
    let mut protos = BTreeMap::new();
    for (proto, its) in by_proto {
        // Sweep: +1 at lo, -1 at hi+1.
        let mut events: Vec<(u32, bool, u32, bool)> = Vec::with_capacity(its.len() * 2);
        for it in its {
            events.push((u32::from(it.lo), true, it.ord, it.deny));
            events.push((u32::from(it.hi) + 1, false, it.ord, it.deny));
        }
        events.sort_unstable_by_key(|e| e.0);
        let mut deny: BTreeMap<u32, u32> = BTreeMap::new();
        let mut allow: BTreeMap<u32, u32> = BTreeMap::new();
        let mut pw = Pw { starts: vec![0], vals: vec![other] };
        let mut i = 0;
        while i < events.len() {
            let pos = events[i].0;
            while i < events.len() && events[i].0 == pos {
                let (_, add, ord, is_deny) = events[i];
                let set = if is_deny { &mut deny } else { &mut allow };
                if add {
                    *set.entry(ord).or_insert(0) += 1;
                } else if let Some(c) = set.get_mut(&ord) {
                    *c -= 1;
                    if *c == 0 {
                        set.remove(&ord);
                    }
                }
                i += 1;
            }
            if pos > 65535 {
                break;
            }
            let d = [l3_deny, deny.keys().next().copied()].into_iter().flatten().min();
            let a = [l3_allow, allow.keys().next().copied()].into_iter().flatten().min();
            let v = decide(d, a);
            if pos == 0 {
                pw.vals[0] = v;
            } else if pw.vals.last() != Some(&v) {
                pw.starts.push(pos);
                pw.vals.push(v);
            }
        }
        protos.insert(proto, pw);
    }
    ClassFn { other, protos }
}

/// A rule prepared for one endpoint and direction.
struct Prepared<'a> {
    ord: u32,
    deny: bool,
    wildcard: bool,
    ids: Rc<Vec<Identity>>,
    l3: bool,
    items: Vec<Item>,
    /// Egress named ports: (protocol, name).
    named: Vec<(crate::model::Protocol, &'a str)>,
}

struct Emitter<'a> {
    identity: Identity,
    direction: Direction,
    default: Verdict,
    refs: &'a [Arc<RuleRef>],
    out: &'a mut Vec<PolicyEntry>,
}

impl Emitter<'_> {
    fn emit(&mut self, protocol: u8, port: u32, plen: u32, v: Val) {
        let (verdict, rule) = match v {
            Val::Miss => (self.default, None),
            Val::Allow(o) => (Verdict::Allow, self.refs.get(o as usize).cloned()),
            Val::Deny(o) => (Verdict::Deny, self.refs.get(o as usize).cloned()),
        };
        self.out.push(PolicyEntry {
            identity: self.identity,
            direction: self.direction,
            protocol,
            port: u16::try_from(port).unwrap_or(0),
            port_prefix_len: u8::try_from(plen).unwrap_or(16),
            verdict,
            rule,
        });
    }

    /// Emits entries for block `lo..lo+2^(16-plen)` so that lookups in it yield `f`, given that
    /// without entries here they would yield `inherited`.
    fn block(&mut self, proto: u8, f: &Pw, inherited: &Pw, lo: u32, plen: u32) {
        let hi = lo + (1u32 << (16 - plen)) - 1;
        if f.agrees(inherited, lo, hi) {
            return;
        }
        if let Some(v) = f.uniform(lo, hi) {
            self.emit(proto, lo, plen, v);
            return;
        }
        let half = 1u32 << (15 - plen);
        self.block(proto, f, inherited, lo, plen + 1);
        self.block(proto, f, inherited, lo + half, plen + 1);
    }

    /// Emits a class's entries. `fallback` is what lookups yield when the class has no entry:
    /// the wildcard class's function for a specific identity, Miss for the wildcard class.
    fn class(&mut self, f: &ClassFn, fallback: &ClassFn) {
        let any_entry = f.other != fallback.other;
        if any_entry {
            self.emit(0, 0, 0, f.other);
        }
        let protos: BTreeSet<u8> = f.protos.keys().chain(fallback.protos.keys()).copied().collect();
        for p in protos {
            let own = f.protos.get(&p).cloned().unwrap_or_else(|| Pw::constant(f.other));
            let inherited = if any_entry {
                Pw::constant(f.other)
            } else {
                fallback.protos.get(&p).cloned().unwrap_or_else(|| Pw::constant(fallback.other))
            };
            self.block(p, &own, &inherited, 0, 0);
        }
    }
}

/// Compiles every endpoint's policy.
#[must_use]
pub fn compile(input: &PolicyInput<'_>) -> CompiledPolicy {
    compile_selected(input, |_| true)
}

/// Compiles the policy of the endpoints in `subjects` only (ids of `input.endpoints`; others are
/// ignored). Named ports of egress rules still resolve against every endpoint of the input, so
/// the result equals [`compile`]'s restricted to `subjects`: a caller that knows only some
/// endpoints changed (and the identities, the policies and the other endpoints' named ports did
/// not) recompiles just those.
#[must_use]
pub fn compile_for(input: &PolicyInput<'_>, subjects: &BTreeSet<EndpointId>) -> CompiledPolicy {
    compile_selected(input, |ep| subjects.contains(&ep.id))
}

/// The identities each rule's peers cover (None: any identity), computed on first use: only
/// rules of specs that select a compiled endpoint are ever resolved. For Kubernetes
/// NetworkPolicy `ipBlock` peers this includes the [`pod_in_cidr`] pseudo-identities.
///
/// [`pod_in_cidr`]: crate::identity::pod_in_cidr
struct PeerIds<'i, 'a> {
    input: &'i PolicyInput<'a>,
    universe: Option<Vec<(Identity, Option<Labels>)>>,
    by_peer: HashMap<(&'a PeerKind, bool), Rc<Vec<Identity>>>,
    by_rule: Vec<Option<Option<Rc<Vec<Identity>>>>>,
}

impl<'i, 'a> PeerIds<'i, 'a> {
    fn new(input: &'i PolicyInput<'a>, rules: usize) -> Self {
        PeerIds { input, universe: None, by_peer: HashMap::new(), by_rule: vec![None; rules] }
    }

    fn resolve(&mut self, ord: usize, fr: &FlatRule<'a>) -> Option<Rc<Vec<Identity>>> {
        if let Some(done) = &self.by_rule[ord] {
            return done.clone();
        }
        let ids = if is_wildcard_peer(fr.rule) {
            None
        } else {
            let table = self.input.identities;
            let universe = self.universe.get_or_insert_with(|| {
                let mut u: Vec<(Identity, Option<Labels>)> =
                    table.all_ids().into_iter().filter_map(|id| table.labels(id).map(|l| (id, Some(l)))).collect();
                u.extend(table.pod_cidr_ids().into_iter().map(|id| (id, None)));
                u
            });
            let pods = selects_pod_addresses(fr.policy.kind, fr.rule);
            let mut ids = BTreeSet::new();
            for peer in fr.rule.peers.iter().flatten() {
                let set = self.by_peer.entry((&peer.kind, pods)).or_insert_with(|| {
                    Rc::new(
                        universe
                            .iter()
                            .filter(|(id, l)| peer_matches(&peer.kind, pods, *id, l.as_ref(), table))
                            .map(|(id, _)| *id)
                            .collect(),
                    )
                });
                ids.extend(set.iter().copied());
            }
            Some(Rc::new(ids.into_iter().collect()))
        };
        self.by_rule[ord] = Some(ids.clone());
        ids
    }
}

fn compile_selected(input: &PolicyInput<'_>, subject: impl Fn(&Endpoint) -> bool) -> CompiledPolicy {
    let flat = flatten(input.policies);
    let refs: Vec<Arc<RuleRef>> = flat.iter().map(|f| Arc::new(f.rule_ref.clone())).collect();
    // The rules of each (policy, spec): a contiguous run of ordinals in flatten's order.
    let mut spans: BTreeMap<(usize, usize), Range<usize>> = BTreeMap::new();
    for (ord, fr) in flat.iter().enumerate() {
        spans.entry((fr.policy_index, fr.spec)).and_modify(|r| r.end = ord + 1).or_insert(ord..ord + 1);
    }
    let mut peers = PeerIds::new(input, flat.len());
    let mut out = CompiledPolicy::default();
    for ep in input.endpoints.iter().filter(|e| subject(e)) {
        let selected: BTreeSet<(usize, usize)> = input
            .policies
            .iter()
            .enumerate()
            .flat_map(|(pi, p)| {
                p.specs.iter().enumerate().filter(|(_, s)| s.subject.matches(&ep.labels)).map(move |(si, _)| (pi, si))
            })
            .collect();
        if selected.is_empty() {
            continue;
        }
        // Ordinals of the selected specs' rules, ascending (specs sort in flatten's order).
        let ords: Vec<usize> = selected.iter().filter_map(|k| spans.get(k)).flat_map(Clone::clone).collect();
        let mut epol = EndpointPolicy { endpoint: ep.id, identity: ep.identity, ..EndpointPolicy::default() };
        for dir in [Direction::Ingress, Direction::Egress] {
            let dp = compile_direction(input, ep, dir, &flat, &ords, &mut peers, &refs, &selected);
            match dir {
                Direction::Ingress => epol.ingress = dp,
                Direction::Egress => epol.egress = dp,
            }
        }
        out.endpoints.insert(ep.id, epol);
    }
    out
}

#[allow(clippy::too_many_lines)]
#[allow(clippy::too_many_arguments)]
fn compile_direction<'a>(
    input: &PolicyInput<'a>,
    ep: &Endpoint,
    dir: Direction,
    flat: &[FlatRule<'a>],
    ords: &[usize],
    peers: &mut PeerIds<'_, 'a>,
    refs: &[Arc<RuleRef>],
    selected: &BTreeSet<(usize, usize)>,
) -> DirectionPolicy {
    let enforced = selected.iter().any(|(pi, si)| {
        let s = &input.policies[*pi].specs[*si];
        match dir {
            Direction::Ingress => s.enforce_ingress,
            Direction::Egress => s.enforce_egress,
        }
    });
    let mut prepared: Vec<Prepared<'_>> = Vec::new();
    for &ord in ords {
        let fr = &flat[ord];
        if fr.rule.direction != dir {
            continue;
        }
        let deny = fr.rule.verdict == Verdict::Deny;
        if !enforced && !deny {
            // Without default deny an allow changes nothing: deny beats allow, and a miss allows.
            continue;
        }
        let ids = peers.resolve(ord, fr);
        let ord = u32::try_from(ord).unwrap_or(u32::MAX);
        let mut p = Prepared {
            ord,
            deny,
            wildcard: ids.is_none(),
            ids: ids.unwrap_or_default(),
            l3: fr.rule.ports.is_none(),
            items: Vec::new(),
            named: Vec::new(),
        };
        for pm in fr.rule.ports.iter().flatten() {
            match &pm.port {
                PortSpec::All | PortSpec::Number(_) => {
                    let (lo, hi) = match pm.port {
                        PortSpec::Number(n) => {
                            let lo = u16::try_from(n).unwrap_or(0);
                            let hi = pm.end_port.map_or(lo, |e| u16::try_from(e).unwrap_or(lo));
                            (lo, hi)
                        }
                        _ => (0, 65535),
                    };
                    for &proto in pm.protocol.numbers() {
                        p.items.push(Item { proto, lo, hi, ord, deny });
                    }
                }
                PortSpec::Named(name) => match dir {
                    Direction::Ingress => {
                        for (proto, port) in resolve_named(ep, name, pm.protocol) {
                            p.items.push(Item { proto, lo: port, hi: port, ord, deny });
                        }
                    }
                    Direction::Egress => p.named.push((pm.protocol, name.as_str())),
                },
            }
        }
        prepared.push(p);
    }
    if prepared.is_empty() {
        return DirectionPolicy { enforced, entries: Vec::new() };
    }

    // Identity classes: 0 plus every identity some rule names, plus peers whose named ports
    // resolve for an egress rule.
    let mut own: BTreeMap<Identity, Vec<usize>> = BTreeMap::new();
    let mut wildcard: Vec<usize> = Vec::new();
    let mut named_ports_by_id: BTreeMap<Identity, Vec<&Endpoint>> = BTreeMap::new();
    let any_named = prepared.iter().any(|p| !p.named.is_empty());
    if any_named {
        for e in input.endpoints {
            named_ports_by_id.entry(e.identity).or_default().push(e);
        }
    }
    for (i, p) in prepared.iter().enumerate() {
        if p.wildcard {
            wildcard.push(i);
            if !p.named.is_empty() {
                for (id, eps) in &named_ports_by_id {
                    let hit = p
                        .named
                        .iter()
                        .any(|(proto, name)| eps.iter().any(|e| resolve_named(e, name, *proto).next().is_some()));
                    if hit {
                        own.entry(*id).or_default();
                    }
                }
            }
        } else {
            for id in p.ids.iter() {
                own.entry(*id).or_default().push(i);
            }
        }
    }

    // A pod-in-CIDR class is looked up in step 3 only, which the datapath reaches only where the
    // peer's own class (which includes every wildcard rule) has no rule: the wildcard rules
    // match nothing there, so the class is its own rules alone.
    let class_fn = |id: Option<Identity>, own_rules: &[usize]| -> ClassFn {
        let mut l3_deny = None;
        let mut l3_allow = None;
        let mut items = Vec::new();
        let inherited: &[usize] = if id.is_some_and(is_pod_in_cidr) { &[] } else { &wildcard };
        for &i in inherited.iter().chain(own_rules.iter()) {
            let p = &prepared[i];
            if p.l3 {
                let slot = if p.deny { &mut l3_deny } else { &mut l3_allow };
                *slot = Some(slot.map_or(p.ord, |o: u32| o.min(p.ord)));
            }
            items.extend_from_slice(&p.items);
            if let Some(id) = id {
                for (proto, name) in &p.named {
                    for e in named_ports_by_id.get(&id).into_iter().flatten() {
                        for (pr, port) in resolve_named(e, name, *proto) {
                            items.push(Item { proto: pr, lo: port, hi: port, ord: p.ord, deny: p.deny });
                        }
                    }
                }
            }
        }
        build_class(l3_deny, l3_allow, &items)
    };

    let default = if enforced { Verdict::Deny } else { Verdict::Allow };
    let mut entries = Vec::new();
    let f0 = class_fn(None, &[]);
    let miss = ClassFn { other: Val::Miss, protos: BTreeMap::new() };
    Emitter { identity: 0, direction: dir, default, refs, out: &mut entries }.class(&f0, &miss);
    for (id, rules) in &own {
        let f = class_fn(Some(*id), rules);
        // Step 3 has no fallback lookup: a pod-in-CIDR class falls back to "no rule".
        let fallback = if is_pod_in_cidr(*id) { &miss } else { &f0 };
        Emitter { identity: *id, direction: dir, default, refs, out: &mut entries }.class(&f, fallback);
    }
    DirectionPolicy { enforced, entries }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_blocks_examples() {
        assert_eq!(port_range_blocks(80, 80), vec![(80, 16)]);
        assert_eq!(port_range_blocks(0, 65535), vec![(0, 0)]);
        assert_eq!(port_range_blocks(1, 65535).len(), 16);
        assert_eq!(port_range_blocks(8000, 8007), vec![(8000, 13)]);
        assert_eq!(port_range_blocks(80, 83), vec![(80, 14)]);
        assert_eq!(port_range_blocks(79, 81), vec![(79, 16), (80, 15)]);
        assert_eq!(port_range_blocks(65535, 65535), vec![(65535, 16)]);
    }
}
