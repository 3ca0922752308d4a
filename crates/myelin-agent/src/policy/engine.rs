//! The node's policy engine: identities from labels, the applied policies,
//! and the reconciliation that turns them into the datapath's policy state:
//! per-endpoint policy maps, the endpoint entries' identities, the ipcache
//! and the pod-in-CIDR prefixes. It is the only writer of those maps; the
//! policy component (`policy/mod.rs`) drives it from one thread.
//!
//! ```text
//!  apply/delete (API) --> policies --+
//!  endpoints + namespace labels -----+--> compile (myelin-policy, pure) --> diff --> datapath
//!  identities (allocator) -----------+                                    (only changed endpoints,
//!                                                                          each swapped atomically,
//!                                                                          all in one batch)
//! ```
//! Bad input never reaches this far: `parse_files` rejects a whole apply.

use myelin_api::Endpoint as ApiEndpoint;
use myelin_bpf::{Datapath, EndpointEntry, PolicyMapEntry};
use myelin_policy as pol;
use pol::{CidrIdentityAllocator, Identity, IdentityAllocator, IdentityTable, IpCache, Labels, Policy};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;
use tracing::{info, warn};

use super::rules::{PolicyMeta, RuleIndex, RuleInfo};

/// A policy as applied: the parsed model and the document it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredPolicy {
    pub policy: Policy,
    pub yaml: String,
}

/// A policy's identity across edits: its uid and how many times it was applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRevision {
    pub uid: String,
    pub revision: u64,
}

/// What the engine persists (besides the policies themselves and the rule records).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineState {
    pub identities: Option<IdentityAllocator>,
    pub cidrs: Option<CidrIdentityAllocator>,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Per policy key.
    #[serde(default)]
    pub revisions: BTreeMap<String, PolicyRevision>,
    /// Rule ids: the next to hand out, and the rules in force by (policy key, path, content).
    #[serde(default)]
    pub next_rule_id: u32,
    #[serde(default)]
    pub live_rules: Vec<((String, String, u64), u32)>,
    /// Uids handed out so far (to make new ones unique).
    #[serde(default)]
    pub uid_counter: u64,
    /// Cluster-wide identities this node's endpoints hold (from the kvstore), with local
    /// reference counts: the kvstore is asked once per label set, not once per endpoint.
    #[serde(default)]
    pub cluster_refs: BTreeMap<Identity, (Labels, u64)>,
}

/// Node-local identities handed out while the kvstore cannot answer (etcd down): a range of
/// their own, disjoint from the cluster-wide 256..=65535 and below the local-scope (CIDR) bit,
/// so they fit a 24-bit VNI. Endpoints holding one are moved to a cluster-wide identity once the
/// kvstore answers again ([`PolicyEngine::unreconciled`]).
pub const NODE_LOCAL_MIN: Identity = 0x00FF_0000;
pub const NODE_LOCAL_MAX: Identity = 0x00FF_FFFF;

/// Cluster-wide identities, as the kvstore hands them out. Implemented by the cluster
/// component; the policy thread calls it (it may block, never for longer than its timeout).
pub trait ClusterIdentities: Send {
    /// The cluster-wide identity of `labels`, this node's reference recorded; None when the
    /// kvstore cannot answer now (the engine then falls back to a node-local identity).
    fn acquire(&mut self, labels: &Labels) -> Option<Identity>;
    /// This node no longer uses `labels` (best effort: the reference also ends with the lease).
    fn release(&mut self, labels: &Labels);
}

/// What the kvstore says about the rest of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Every cluster-wide identity and its security labels.
    pub identities: BTreeMap<Identity, Labels>,
    /// Pods of other nodes: address -> identity.
    pub remote_ips: BTreeMap<Ipv4Addr, Identity>,
    /// Other nodes' addresses (their own traffic is `remote-node`).
    pub remote_nodes: BTreeSet<Ipv4Addr>,
}

/// Labels of an endpoint whose labels are not known yet (reserved:init).
#[must_use]
pub fn init_labels() -> Labels {
    pol::ReservedIdentity::Init.labels()
}

/// Key prefix of the built-in policies (sorted after every user policy key).
const BUILTIN: &str = "~builtin/";

/// The built-in policy of endpoints whose labels are not known yet (identity
/// init): enforced both ways, DNS out, nothing in (the node reaches every pod
/// anyway, allow-localhost). A policy selecting `reserved:init` adds to it.
const INIT_POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: myelin-init-default
spec:
  endpointSelector:
    matchLabels:
      \"reserved:init\": \"\"
  ingress:
    - fromEntities: [host]
  egress:
    - toPorts:
        - ports:
            - {port: \"53\", protocol: UDP}
            - {port: \"53\", protocol: TCP}
";

/// A 128-bit fingerprint (two independent SipHashes): enough to tell "changed" from "same"
/// without keeping a copy of what it summarizes.
type Digest = u128;

fn digest(value: &impl Hash) -> Digest {
    let half = |seed: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        seed.hash(&mut h);
        value.hash(&mut h);
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

/// Fingerprint of an endpoint's policy as pushed to the datapath: `(ingress enforced, egress
/// enforced, entries sorted)`, the form `Datapath::endpoint_policy` reads back.
fn policy_digest(p: &(bool, bool, Vec<PolicyMapEntry>)) -> Digest {
    digest(p)
}

/// A policy as the engine holds it, borrowed.
pub struct AppliedRef<'a> {
    pub policy: &'a Policy,
    pub yaml: &'a String,
}

#[derive(Serialize)]
struct StoredRef<'a> {
    policy: &'a Policy,
    yaml: &'a str,
}

/// How to undo an `insert` or a `remove`: the previous value of every key touched, newest last.
#[derive(Debug, Default)]
pub struct Rollback(Vec<(String, Option<StoredPolicy>, Option<PolicyRevision>)>);

impl Rollback {
    /// Undo `later` too (it happened after this one).
    pub fn extend(&mut self, later: Rollback) {
        self.0.extend(later.0);
    }
}

pub struct PolicyEngine {
    /// Applied policies, sorted by key; `models[i]` and `yamls[i]` belong to `keys[i]`. Kept
    /// apart so the compiler borrows `models` as is (no copy of the policies per sync).
    keys: Vec<String>,
    models: Vec<Policy>,
    yamls: Vec<String>,
    /// Bumped on every change of the policies or namespace labels.
    epoch: u64,
    /// The epoch the CIDR identities were last derived for.
    cidr_epoch: Option<u64>,
    /// The epoch whose policies the store holds.
    persisted_epoch: Option<u64>,
    identities: IdentityAllocator,
    cidrs: CidrIdentityAllocator,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    revisions: BTreeMap<String, PolicyRevision>,
    uid_counter: u64,
    rules: RuleIndex,
    /// The endpoints of this node, as the compiler and the datapath entries need them.
    endpoints: BTreeMap<u32, ApiEndpoint>,
    /// The endpoint entry last written per endpoint (identity included).
    entries: HashMap<u32, (Ipv4Addr, EndpointEntry)>,
    /// Fingerprint of what was last pushed to the datapath, per endpoint (None: no policy).
    installed: HashMap<u32, Option<Digest>>,
    /// Policy map entries installed, per endpoint (for the metrics).
    installed_entries: HashMap<u32, usize>,
    /// Per endpoint, the fingerprint of its compile inputs at the last successful sync, and
    /// whether it has named ports (they feed other endpoints' egress rules).
    compiled_inputs: HashMap<u32, (Digest, bool)>,
    /// `(epoch, identity table fingerprint)` of the last successful sync; None: compile all.
    compiled_global: Option<(u64, Digest)>,
    /// What was last pushed to the ipcache.
    ipcache: BTreeMap<(Ipv4Addr, u8), u32>,
    node_ips: Vec<Ipv4Addr>,
    /// Warnings of the applied policies (L7 rules not enforced, ...).
    warnings: BTreeMap<String, Vec<String>>,
    /// The kvstore's identity allocation (None: identities are node-local).
    cluster: Option<Box<dyn ClusterIdentities>>,
    /// Cluster identities held by this node's endpoints, with local reference counts.
    cluster_refs: BTreeMap<Identity, (Labels, u64)>,
    /// The rest of the cluster, as last reported by the kvstore.
    view: ClusterView,
}

/// The result of one reconciliation.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SyncReport {
    pub endpoints_updated: usize,
    pub ipcache_changes: usize,
    pub entries_written: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Policy(#[from] pol::PolicyError),
    #[error("identity allocation: {0}")]
    Identity(#[from] pol::IdentityError),
    #[error("{0}")]
    NotFound(String),
    #[error("programming the datapath: {0}")]
    Datapath(#[from] myelin_bpf::BpfError),
}

impl PolicyEngine {
    /// An engine with the stored state, policies and rule records; `endpoints`
    /// are the node's endpoints as the store knows them (their identities as
    /// the stored allocator counts them: nothing is acquired again).
    pub fn new(
        state: EngineState,
        policies: Vec<StoredPolicy>,
        rules: Vec<RuleInfo>,
        endpoints: Vec<ApiEndpoint>,
        node_ips: Vec<Ipv4Addr>,
    ) -> Self {
        let mut policies: BTreeMap<String, StoredPolicy> =
            policies.into_iter().map(|p| (key_of(&p.policy), p)).collect();
        match PolicyEngine::prepare(&[("built-in init policy".to_owned(), INIT_POLICY.to_owned())]) {
            Ok(builtin) => {
                for p in builtin {
                    policies.insert(format!("{BUILTIN}{}", key_of(&p.policy)), p);
                }
            }
            Err(e) => warn!(error = %e, "the built-in init policy does not parse"),
        }
        let (mut keys, mut models, mut yamls) = (Vec::new(), Vec::new(), Vec::new());
        for (k, p) in policies {
            keys.push(k);
            models.push(p.policy);
            yamls.push(p.yaml);
        }
        // Read back from the store, equal selectors are separate allocations again.
        pol::share_selectors(&mut models);
        let rules = RuleIndex::from_records(rules, state.next_rule_id, state.live_rules);
        let mut this = Self {
            keys,
            models,
            yamls,
            epoch: 0,
            cidr_epoch: None,
            persisted_epoch: None,
            identities: state.identities.unwrap_or_default(),
            cluster: None,
            cluster_refs: state.cluster_refs,
            view: ClusterView::default(),
            cidrs: state.cidrs.unwrap_or_default(),
            namespaces: state.namespaces,
            revisions: state.revisions,
            uid_counter: state.uid_counter,
            rules,
            endpoints: endpoints.into_iter().map(|e| (e.id, e)).collect(),
            entries: HashMap::new(),
            installed: HashMap::new(),
            installed_entries: HashMap::new(),
            compiled_inputs: HashMap::new(),
            compiled_global: None,
            ipcache: BTreeMap::new(),
            node_ips,
            warnings: BTreeMap::new(),
        };
        this.rebuild_warnings();
        this
    }

    fn rebuild_warnings(&mut self) {
        self.warnings =
            self.models.iter().filter(|p| !p.warnings.is_empty()).map(|p| (p.id(), p.warnings.clone())).collect();
    }

    /// Put `value` under `key` (None: remove it); returns the previous value.
    fn put(&mut self, key: &str, value: Option<StoredPolicy>) -> Option<StoredPolicy> {
        self.epoch += 1;
        match (self.keys.binary_search_by(|k| k.as_str().cmp(key)), value) {
            (Ok(i), Some(v)) => Some(StoredPolicy {
                policy: std::mem::replace(&mut self.models[i], v.policy),
                yaml: std::mem::replace(&mut self.yamls[i], v.yaml),
            }),
            (Ok(i), None) => {
                self.keys.remove(i);
                Some(StoredPolicy { policy: self.models.remove(i), yaml: self.yamls.remove(i) })
            }
            (Err(i), Some(v)) => {
                self.keys.insert(i, key.to_owned());
                self.models.insert(i, v.policy);
                self.yamls.insert(i, v.yaml);
                None
            }
            (Err(_), None) => None,
        }
    }

    #[must_use]
    pub fn state(&self) -> EngineState {
        EngineState {
            identities: Some(self.identities.clone()),
            cidrs: Some(self.cidrs.clone()),
            namespaces: self.namespaces.clone(),
            revisions: self.revisions.clone(),
            next_rule_id: self.rules.next_id(),
            live_rules: self.rules.live_keys(),
            uid_counter: self.uid_counter,
            cluster_refs: self.cluster_refs.clone(),
        }
    }

    /// The applied policies (not the built-in ones).
    pub fn policies(&self) -> impl Iterator<Item = AppliedRef<'_>> {
        self.keys
            .iter()
            .zip(self.models.iter().zip(&self.yamls))
            .filter(|(k, _)| !k.starts_with(BUILTIN))
            .map(|(_, (policy, yaml))| AppliedRef { policy, yaml })
    }

    #[must_use]
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.values().flatten().cloned().collect()
    }

    /// Bumped by every change of the policies or namespace labels.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Every namespace's labels.
    #[must_use]
    pub fn namespaces(&self) -> &BTreeMap<String, BTreeMap<String, String>> {
        &self.namespaces
    }

    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.namespaces.get(ns).cloned().unwrap_or_default()
    }

    pub fn set_namespace_labels(&mut self, ns: &str, labels: BTreeMap<String, String>) {
        self.epoch += 1;
        self.namespaces.insert(ns.to_owned(), labels);
    }

    /// The security labels of an endpoint: pod labels, its namespace, and the namespace's labels;
    /// `reserved:init` while its labels are not known.
    #[must_use]
    pub fn security_labels(&self, ep: &ApiEndpoint) -> Labels {
        if ep.labels_pending {
            return init_labels();
        }
        self.security_labels_of(ep.namespace.as_deref(), &ep.labels)
    }

    /// Add or update an endpoint (its labels, ports, address); returns its identity. The
    /// datapath follows at the next [`PolicyEngine::sync`].
    pub fn upsert_endpoint(&mut self, mut ep: ApiEndpoint) -> Result<Identity, EngineError> {
        let labels = self.security_labels(&ep);
        let id = if ep.labels_pending { pol::ReservedIdentity::Init.id() } else { self.acquire(&labels)? };
        let old = self.endpoints.get(&ep.id).map(|e| e.identity);
        match old {
            Some(o) if o == id => self.release(id), // the reference it holds already
            Some(o) => self.release(o),
            None => {}
        }
        ep.identity = id;
        self.endpoints.insert(ep.id, ep);
        Ok(id)
    }

    /// Remove an endpoint; the datapath follows at the next sync.
    pub fn remove_endpoint(&mut self, endpoint_id: u32) -> Option<ApiEndpoint> {
        let ep = self.endpoints.remove(&endpoint_id)?;
        self.release(ep.identity);
        Some(ep)
    }

    /// Recompute the identities of a namespace's endpoints (after its labels changed).
    /// Returns the endpoints whose identity changed.
    pub fn refresh_namespace(&mut self, ns: &str) -> Result<Vec<(u32, Identity)>, EngineError> {
        let ids: Vec<u32> = self
            .endpoints
            .values()
            .filter(|e| e.namespace.as_deref().unwrap_or("default") == ns)
            .map(|e| e.id)
            .collect();
        let mut changed = Vec::new();
        for id in ids {
            let Some(ep) = self.endpoints.get(&id).cloned() else { continue };
            let before = ep.identity;
            let after = self.upsert_endpoint(ep)?;
            if after != before {
                changed.push((id, after));
            }
        }
        Ok(changed)
    }

    /// The node's endpoints as the engine holds them (identities included).
    pub fn endpoints(&self) -> impl Iterator<Item = &ApiEndpoint> {
        self.endpoints.values()
    }

    #[must_use]
    pub fn security_labels_of(&self, namespace: Option<&str>, labels: &BTreeMap<String, String>) -> Labels {
        let ns = namespace.unwrap_or("default");
        let pod: Labels = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let nsl: Labels = self.namespace_labels(ns).into_iter().collect();
        pol::security_labels(&pod, ns, &nsl)
    }

    /// Policy map entries installed in the datapath, all endpoints and directions.
    #[must_use]
    pub fn policy_entries(&self) -> u64 {
        self.installed_entries.values().map(|n| *n as u64).sum()
    }

    /// Start from what the datapath already enforces (after an agent restart),
    /// so that the first sync rewrites nothing that is already right.
    pub fn seed_from_datapath(&mut self, dp: &Datapath) {
        for e in self.endpoints.values() {
            if let Ok(current) = dp.endpoint_policy(e.id) {
                self.installed.insert(e.id, current.as_ref().map(policy_digest));
                self.installed_entries.insert(e.id, current.as_ref().map_or(0, |p| p.2.len()));
            }
        }
        if let Ok(rows) = dp.endpoints() {
            let by_ip: HashMap<Ipv4Addr, u32> =
                self.endpoints.values().filter_map(|e| e.ipv4.parse().ok().map(|ip| (ip, e.id))).collect();
            for (ip, entry) in rows {
                if let Some(id) = by_ip.get(&ip) {
                    self.entries.insert(*id, (ip, entry));
                }
            }
        }
        if let Ok(rows) = dp.ipcache() {
            self.ipcache = rows.into_iter().map(|(ip, len, id)| ((ip, len), id)).collect();
        }
    }

    /// The policy epoch to persist, if the policies changed since they were last persisted.
    #[must_use]
    pub fn unpersisted(&self) -> Option<u64> {
        (self.persisted_epoch != Some(self.epoch)).then_some(self.epoch)
    }

    /// The policies of `epoch` are in the store.
    pub fn persisted(&mut self, epoch: u64) {
        self.persisted_epoch = Some(epoch);
    }

    /// `(key, json)` of every policy, for the store.
    #[must_use]
    pub fn stored(&self) -> Vec<(String, String)> {
        self.keys
            .iter()
            .zip(self.models.iter().zip(&self.yamls))
            .filter(|(k, _)| !k.starts_with(BUILTIN))
            .filter_map(|(k, (policy, yaml))| {
                serde_json::to_string(&StoredRef { policy, yaml }).ok().map(|j| (k.clone(), j))
            })
            .collect()
    }

    /// Take identities from the kvstore from now on. Node-local identities move to their own
    /// range ([`NODE_LOCAL_MIN`]..) when the allocator holds none yet.
    pub fn set_cluster(&mut self, cluster: Box<dyn ClusterIdentities>) {
        if self.identities.iter().next().is_none() {
            self.identities = IdentityAllocator::with_range(NODE_LOCAL_MIN, NODE_LOCAL_MAX);
        }
        self.cluster = Some(cluster);
    }

    /// Take a reference on the identity of these labels: the cluster-wide one when a kvstore is
    /// in use and answers, else a node-local one.
    pub fn acquire(&mut self, labels: &Labels) -> Result<Identity, EngineError> {
        if let Some(cluster) = self.cluster.as_mut() {
            if let Some((id, (_, n))) = self.cluster_refs.iter_mut().find(|(_, (l, _))| l == labels) {
                *n += 1;
                return Ok(*id);
            }
            if let Some(id) = cluster.acquire(labels) {
                self.cluster_refs.insert(id, (labels.clone(), 1));
                return Ok(id);
            }
            warn!(%labels, "the kvstore cannot allocate now: a node-local identity until it can");
        }
        Ok(self.identities.acquire(labels)?)
    }

    /// Drop a reference; unknown and reserved ids are ignored.
    pub fn release(&mut self, id: Identity) {
        if let Some((labels, n)) = self.cluster_refs.get_mut(&id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                let labels = labels.clone();
                self.cluster_refs.remove(&id);
                if let Some(c) = self.cluster.as_mut() {
                    c.release(&labels);
                }
            }
            return;
        }
        if pol::is_workload(id) {
            if let Err(e) = self.identities.release(id) {
                warn!(identity = id, error = %e, "releasing identity");
            }
        }
    }

    /// The rest of the cluster changed; the datapath follows at the next sync.
    pub fn set_view(&mut self, view: ClusterView) -> bool {
        if self.view == view {
            return false;
        }
        self.view = view;
        true
    }

    /// Endpoints holding a node-local identity although a kvstore is in use (it could not
    /// answer when they came): they get a cluster-wide one when it can.
    #[must_use]
    pub fn unreconciled(&self) -> Vec<u32> {
        if self.cluster.is_none() {
            return Vec::new();
        }
        self.endpoints.values().filter(|e| self.identities.labels(e.identity).is_some()).map(|e| e.id).collect()
    }

    /// After a kvstore reconnect: record this node's reference to every cluster identity it
    /// holds again, and move endpoints whose identity the kvstore no longer agrees with (or
    /// that hold a node-local one) to the kvstore's. Returns the endpoints that changed.
    pub fn resync_cluster(&mut self) -> Result<Vec<u32>, EngineError> {
        let Some(cluster) = self.cluster.as_mut() else { return Ok(Vec::new()) };
        let mut stale = Vec::new();
        for (id, (labels, _)) in &self.cluster_refs {
            match cluster.acquire(labels) {
                Some(now) if now == *id => {}
                Some(now) => {
                    warn!(old = id, new = now, %labels, "the kvstore holds another identity for these labels now");
                    stale.push(*id);
                }
                None => return Ok(Vec::new()), // it cannot answer after all: try again later
            }
        }
        let mut moved: Vec<u32> =
            self.endpoints.values().filter(|e| stale.contains(&e.identity)).map(|e| e.id).collect();
        for id in &stale {
            // Endpoints holding it acquire again below; their old references go with the entry.
            self.cluster_refs.remove(id);
        }
        moved.extend(self.unreconciled());
        let mut changed = Vec::new();
        for id in moved {
            let Some(mut ep) = self.endpoints.get(&id).cloned() else { continue };
            let before = ep.identity;
            if stale.contains(&before) {
                // Its reference went with the stale entry: do not release it again.
                ep.identity = 0;
                self.endpoints.insert(id, ep.clone());
            }
            let after = self.upsert_endpoint(ep)?;
            if after != before {
                changed.push(id);
            }
        }
        Ok(changed)
    }

    #[must_use]
    pub fn identities(&self) -> &IdentityAllocator {
        &self.identities
    }

    #[must_use]
    pub fn table(&self) -> IdentityTable {
        let mut t = IdentityTable::from_allocators(&self.identities, &self.cidrs);
        for (id, labels) in &self.view.identities {
            t.workloads.insert(*id, labels.clone());
        }
        for (id, (labels, _)) in &self.cluster_refs {
            t.workloads.insert(*id, labels.clone());
        }
        t
    }

    #[must_use]
    pub fn rules(&self) -> &RuleIndex {
        &self.rules
    }

    /// Rule records changed (and ids pruned) since the last call, for the store.
    pub fn take_rule_changes(&mut self) -> (Vec<RuleInfo>, Vec<u32>) {
        self.rules.take_dirty()
    }

    /// Forget rule ids retired before `cutoff` (unix seconds).
    pub fn prune_rules(&mut self, cutoff: u64) -> usize {
        self.rules.prune(cutoff)
    }

    /// The revision record of a policy key (a new uid at its first apply).
    fn bump_revision(&mut self, key: &str) -> Option<PolicyRevision> {
        let old = self.revisions.get(key).cloned();
        let next = match &old {
            Some(r) => PolicyRevision { uid: r.uid.clone(), revision: r.revision + 1 },
            None => {
                self.uid_counter += 1;
                PolicyRevision { uid: new_uid(self.uid_counter), revision: 1 }
            }
        };
        self.revisions.insert(key.to_owned(), next);
        old
    }

    /// The document of the applied policy `key` (e.g. `CiliumNetworkPolicy/prod/web`).
    #[must_use]
    pub fn policy_yaml(&self, key: &str) -> Option<&str> {
        self.keys.iter().position(|k| k == key).map(|i| self.yamls[i].as_str())
    }

    /// Keys of the applied policies (not the built-in ones).
    #[must_use]
    pub fn policy_keys(&self) -> Vec<String> {
        self.keys.iter().filter(|k| !k.starts_with(BUILTIN)).cloned().collect()
    }

    /// Parse and validate a whole apply; nothing changes unless every document is valid.
    /// Returns the policies that would be applied, keyed, with their documents.
    pub fn prepare(files: &[(String, String)]) -> Result<Vec<StoredPolicy>, EngineError> {
        let refs: Vec<(&str, &str)> = files.iter().map(|(n, c)| (n.as_str(), c.as_str())).collect();
        let policies = pol::parse_files(&refs)?;
        Ok(policies
            .into_iter()
            .map(|p| {
                let yaml = files
                    .iter()
                    .find(|(n, _)| *n == p.file)
                    .and_then(|(_, c)| split_documents(c).into_iter().nth(p.document.saturating_sub(1)))
                    .unwrap_or_default();
                StoredPolicy { policy: p, yaml }
            })
            .collect())
    }

    /// Insert or replace policies (by kind and id). Returns how to undo it.
    pub fn insert(&mut self, new: Vec<StoredPolicy>) -> Rollback {
        let mut undo = Rollback::default();
        for p in new {
            if p.policy.warnings.is_empty() {
                self.warnings.remove(&p.policy.id());
            } else {
                self.warnings.insert(p.policy.id(), p.policy.warnings.clone());
            }
            let key = key_of(&p.policy);
            let rev = self.bump_revision(&key);
            let old = self.put(&key, Some(p));
            undo.0.push((key, old, rev));
        }
        // Across policies too (each apply's own are shared by the parser).
        pol::share_selectors(&mut self.models);
        undo
    }

    /// Remove policies by `namespace/name` or `name` (optionally `Kind/...`); all must exist.
    pub fn remove(&mut self, ids: &[String]) -> Result<(Rollback, Vec<String>), EngineError> {
        let mut keys = Vec::new();
        for id in ids {
            let matches: Vec<String> = self
                .keys
                .iter()
                .zip(&self.models)
                .filter(|(k, _)| !k.starts_with(BUILTIN))
                .filter(|(k, p)| *k == id || p.id() == *id)
                .map(|(k, _)| k.clone())
                .collect();
            match matches.len() {
                0 => {
                    return Err(EngineError::NotFound(format!("no policy {id:?} is applied (see `myelin policy get`)")))
                }
                1 => keys.extend(matches),
                _ => {
                    return Err(EngineError::NotFound(format!(
                        "{id:?} names several policies ({}); qualify it with the kind",
                        matches.join(", ")
                    )))
                }
            }
        }
        let mut undo = Rollback::default();
        for k in &keys {
            if let Some(p) = self.put(k, None) {
                self.warnings.remove(&p.policy.id());
                let rev = self.revisions.remove(k);
                undo.0.push((k.clone(), Some(p), rev));
            }
        }
        Ok((undo, keys))
    }

    /// Undo an `insert` or a `remove`.
    pub fn restore(&mut self, undo: Rollback) {
        for (key, old, rev) in undo.0.into_iter().rev() {
            self.put(&key, old);
            match rev {
                Some(r) => self.revisions.insert(key, r),
                None => self.revisions.remove(&key),
            };
        }
        self.rebuild_warnings();
    }

    /// Derive the CIDR identities from the policies, when they changed since the last time.
    fn refresh_cidrs(&mut self) -> Result<(), EngineError> {
        if self.cidr_epoch == Some(self.epoch) {
            return Ok(());
        }
        let prefixes = pol::cidr_prefixes(&self.models);
        for p in &prefixes {
            self.cidrs.allocate(*p)?;
        }
        self.cidrs.retain(&prefixes);
        self.cidr_epoch = Some(self.epoch);
        Ok(())
    }

    /// An endpoint as the compiler sees it.
    fn policy_endpoint(&self, e: &ApiEndpoint) -> pol::Endpoint {
        pol::Endpoint {
            id: u64::from(e.id),
            namespace: e.namespace.clone().unwrap_or_else(|| "default".into()),
            labels: self.security_labels(e),
            identity: e.identity,
            ipv4: e.ipv4.parse().ok(),
            named_ports: e
                .ports
                .iter()
                .filter_map(|p| {
                    let proto = match p.protocol.to_ascii_uppercase().as_str() {
                        "TCP" => pol::Protocol::Tcp,
                        "UDP" => pol::Protocol::Udp,
                        "SCTP" => pol::Protocol::Sctp,
                        _ => return None,
                    };
                    Some(pol::NamedPort { name: p.name.clone(), protocol: proto, port: p.port })
                })
                .collect(),
        }
    }

    /// Fingerprint of what the compiler reads of one endpoint (its security labels follow from
    /// these and the namespace labels, which are covered by the epoch).
    fn endpoint_digest(e: &ApiEndpoint) -> Digest {
        let ports: Vec<(&str, u16, &str)> =
            e.ports.iter().map(|p| (p.name.as_str(), p.port, p.protocol.as_str())).collect();
        digest(&(e.id, e.namespace.as_deref(), &e.labels, e.identity, ports))
    }

    /// Fingerprint of the identity table (every id and its labels, CIDR identities too).
    fn table_digest(table: &IdentityTable) -> Digest {
        digest(&(&table.workloads, &table.cidrs))
    }

    /// The ipcache as the policies and endpoints need it.
    fn desired_ipcache(&self) -> BTreeMap<(Ipv4Addr, u8), u32> {
        let mut want = BTreeMap::new();
        for (p, id) in self.cidrs.prefixes() {
            want.insert((p.network(), p.prefix_len()), *id);
        }
        for ip in &self.node_ips {
            want.insert((*ip, 32), pol::ReservedIdentity::Host as u32);
        }
        for ip in &self.view.remote_nodes {
            want.insert((*ip, 32), pol::ReservedIdentity::RemoteNode.id());
        }
        for (ip, id) in &self.view.remote_ips {
            want.insert((*ip, 32), *id);
        }
        for e in self.endpoints.values() {
            if let Ok(ip) = e.ipv4.parse::<Ipv4Addr>() {
                want.insert((ip, 32), e.identity);
            }
        }
        want
    }

    /// The ipcache model for explain (pods, node addresses, CIDR identities).
    fn ipcache_model(&self) -> IpCache {
        let mut pods: Vec<(Ipv4Addr, Identity)> =
            self.endpoints.values().filter_map(|e| e.ipv4.parse().ok().map(|ip| (ip, e.identity))).collect();
        pods.extend(self.view.remote_ips.iter().map(|(ip, id)| (*ip, *id)));
        let remote_nodes: Vec<Ipv4Addr> = self.view.remote_nodes.iter().copied().collect();
        IpCache::build(&pods, &self.node_ips, &remote_nodes, &self.cidrs)
    }

    /// The datapath entry of an endpoint (None: its record is incomplete).
    fn endpoint_entry(e: &ApiEndpoint) -> Option<(Ipv4Addr, EndpointEntry)> {
        let ip = e.ipv4.parse().ok()?;
        let mac = myelin_netlink::parse_mac(&e.mac).ok()?;
        let host_mac = myelin_netlink::parse_mac(&e.host_mac).ok()?;
        Some((
            ip,
            EndpointEntry { ifindex: e.host_ifindex, endpoint_id: e.id, identity: e.identity, flags: 0, mac, host_mac },
        ))
    }

    /// Rule ids of every rule of every policy, by (kind, policy id, section); the ids of rules
    /// no longer applied are retired. Rules get ids whether or not they select a local endpoint
    /// now, so an id does not depend on which pods happen to run here.
    fn rule_ids(&mut self) -> HashMap<(pol::PolicyKind, String, String), u32> {
        let now = now_secs();
        let mut out = HashMap::new();
        let mut in_force = std::collections::HashSet::new();
        for (i, p) in self.models.iter().enumerate() {
            let key = &self.keys[i];
            let rev = self
                .revisions
                .get(key)
                .cloned()
                .unwrap_or_else(|| PolicyRevision { uid: format!("builtin-{}", p.name), revision: 1 });
            let kind = p.kind.to_string();
            let meta = PolicyMeta {
                key,
                kind: &kind,
                namespace: p.namespace.as_deref(),
                name: &p.name,
                uid: &rev.uid,
                revision: rev.revision,
            };
            let id = p.id();
            for spec in &p.specs {
                for rule in &spec.rules {
                    let content = digest(&serde_json::to_string(rule).unwrap_or_default());
                    #[allow(clippy::cast_possible_truncation)]
                    let rid = self.rules.resolve(&meta, &rule.section, content as u64, now);
                    in_force.insert(rid);
                    out.insert((p.kind, id.clone(), rule.section.clone()), rid);
                }
            }
        }
        self.rules.retire_others(&in_force, now);
        out
    }

    /// Compile and push what changed to the datapath.
    ///
    /// Incremental when it can be: an endpoint's compiled policy depends on the policies, the
    /// identity table, its own labels, identity and named ports, and (through egress rules with
    /// named ports) the named ports of every endpoint. So when the policies, namespace labels
    /// and identity table are as at the last sync, and no endpoint that came, went or changed
    /// has named ports, only the endpoints that came or changed are compiled (the identity of an
    /// existing set gained or lost a member: nobody else's entries can change). Otherwise, for
    /// example when an endpoint brings a new identity that selectors may match, all are.
    ///
    /// Order of the writes: ipcache and pod-in-CIDR prefixes (new identities resolve), the
    /// policies of every changed endpoint (one batch), then the endpoint entries (a new
    /// endpoint's entry only once its policy is in place), then what removed endpoints leave.
    pub fn sync(&mut self, dp: &Datapath) -> Result<SyncReport, EngineError> {
        self.refresh_cidrs()?;
        let rule_ids = self.rule_ids();
        let table = self.table();
        let global = (self.epoch, Self::table_digest(&table));
        let endpoints: Vec<&ApiEndpoint> = self.endpoints.values().collect();
        let inputs: Vec<(Digest, bool)> =
            endpoints.iter().map(|e| (Self::endpoint_digest(e), !e.ports.is_empty())).collect();
        let live: BTreeSet<u32> = endpoints.iter().map(|e| e.id).collect();

        // Which endpoints to compile: None = all of them.
        let subset: Option<BTreeSet<u32>> = (|| {
            if self.compiled_global != Some(global) {
                return None;
            }
            let mut subset = BTreeSet::new();
            for (e, input) in endpoints.iter().zip(&inputs) {
                let before = self.compiled_inputs.get(&e.id);
                if before.map(|b| b.0) != Some(input.0) || !self.installed.contains_key(&e.id) {
                    if input.1 || before.is_some_and(|b| b.1) {
                        return None; // named ports changed: other endpoints' egress may follow
                    }
                    subset.insert(e.id);
                }
            }
            let gone_with_ports = self.compiled_inputs.iter().any(|(id, (_, ports))| *ports && !live.contains(id));
            (!gone_with_ports).then_some(subset)
        })();

        // The compiler's view of the endpoints: all of them for a full compile; for a partial one
        // the subjects plus every endpoint with named ports (egress named-port resolution).
        let eps: Vec<pol::Endpoint> = endpoints
            .iter()
            .filter(|e| subset.as_ref().is_none_or(|s| s.contains(&e.id) || !e.ports.is_empty()))
            .map(|e| self.policy_endpoint(e))
            .collect();
        let input = pol::PolicyInput { policies: &self.models, endpoints: &eps, identities: &table };
        let compiled = match &subset {
            None => pol::compile(&input),
            Some(s) => pol::compile_for(&input, &s.iter().map(|id| u64::from(*id)).collect()),
        };
        let mut report = SyncReport::default();

        // ipcache first: new identities must resolve before entries naming them apply.
        let want = self.desired_ipcache();
        for (k, id) in &want {
            if self.ipcache.get(k) != Some(id) {
                dp.upsert_ipcache(k.0, k.1, *id)?;
                report.ipcache_changes += 1;
            }
        }
        for k in self.ipcache.keys().filter(|k| !want.contains_key(*k)).copied().collect::<Vec<_>>() {
            dp.delete_ipcache(k.0, k.1)?;
            report.ipcache_changes += 1;
        }
        self.ipcache = want;
        // The pod-in-CIDR step of policy lookups (Kubernetes ipBlock selects pods by address).
        let cidrs: Vec<(Ipv4Addr, u8, u32)> =
            table.pod_cidr_prefixes().into_iter().map(|(net, id)| (net.network(), net.prefix_len(), id)).collect();
        report.ipcache_changes += dp.set_policy_cidrs(&cidrs)?;

        let mut changes: Vec<myelin_bpf::EndpointPolicyUpdate> = Vec::new();
        let mut digests: Vec<(u32, Option<Digest>)> = Vec::new();
        for e in &endpoints {
            if subset.as_ref().is_some_and(|s| !s.contains(&e.id)) {
                continue;
            }
            let desired = compiled.endpoints.get(&u64::from(e.id)).map(|p| {
                let mut entries: Vec<PolicyMapEntry> = p
                    .ingress
                    .entries
                    .iter()
                    .chain(p.egress.entries.iter())
                    .map(|x| PolicyMapEntry {
                        identity: x.identity,
                        direction: x.direction.as_u8(),
                        protocol: x.protocol,
                        port: x.port,
                        port_prefix_len: x.port_prefix_len,
                        deny: x.verdict == pol::Verdict::Deny,
                        default: x.rule.is_none(),
                        rule_id: x.rule.as_ref().map_or(0, |r| {
                            rule_ids.get(&(r.kind, r.policy.clone(), r.section.clone())).copied().unwrap_or(0)
                        }),
                    })
                    .collect();
                entries.sort();
                (p.ingress.enforced, p.egress.enforced, entries)
            });
            let d = desired.as_ref().map(policy_digest);
            if self.installed.get(&e.id) == Some(&d) {
                continue;
            }
            digests.push((e.id, d));
            changes.push((e.id, desired));
        }
        drop(compiled);
        // One batch for every changed endpoint: each swapped atomically, one
        // RCU grace period in all (not one per endpoint).
        if !changes.is_empty() {
            if let Err(err) = dp.set_endpoint_policies(&changes) {
                // Some may have switched: forget them all, the next sync rewrites them.
                for (id, _) in &changes {
                    self.installed.remove(id);
                }
                self.compiled_global = None;
                return Err(err.into());
            }
            report.endpoints_updated = changes.len();
            self.installed.extend(digests);
            for (id, desired) in &changes {
                self.installed_entries.insert(*id, desired.as_ref().map_or(0, |p| p.2.len()));
            }
        }

        // Endpoint entries (identity included), after their policies.
        for e in &endpoints {
            let Some(want) = Self::endpoint_entry(e) else { continue };
            if self.entries.get(&e.id) != Some(&want) {
                if let Some((old_ip, _)) = self.entries.get(&e.id) {
                    if *old_ip != want.0 {
                        dp.delete_endpoint(*old_ip)?;
                    }
                }
                dp.upsert_endpoint(want.0, &want.1)?;
                self.entries.insert(e.id, want);
                report.entries_written += 1;
            }
        }
        // What removed endpoints leave behind: entry first (no packet is attributed to
        // them any more), then policy and counters.
        let gone: Vec<u32> = self.entries.keys().filter(|id| !live.contains(id)).copied().collect();
        let mut clears = Vec::new();
        for id in gone {
            if let Some((ip, _)) = self.entries.remove(&id) {
                dp.delete_endpoint(ip)?;
            }
            clears.push((id, None));
        }
        for id in self.installed.keys().filter(|id| !live.contains(id)) {
            if !clears.iter().any(|(c, _)| c == id) {
                clears.push((*id, None));
            }
        }
        if !clears.is_empty() {
            dp.set_endpoint_policies(&clears)?;
            for (id, _) in &clears {
                dp.delete_metrics(*id)?;
                dp.delete_policy_stats(*id)?;
            }
        }
        self.installed.retain(|id, _| live.contains(id));
        self.installed_entries.retain(|id, _| live.contains(id));
        self.compiled_inputs = endpoints.iter().map(|e| e.id).zip(inputs).collect();
        self.compiled_global = Some(global);
        if report.endpoints_updated > 0 || report.ipcache_changes > 0 {
            info!(
                endpoints = report.endpoints_updated,
                ipcache = report.ipcache_changes,
                compiled = subset.as_ref().map_or(endpoints.len(), BTreeSet::len),
                "policy synced"
            );
        }
        Ok(report)
    }

    /// Offline evaluation of one flow against the applied policies.
    pub fn explain(
        &mut self,
        from: pol::FlowPeer,
        to: pol::FlowPeer,
        protocol: u8,
        port: u16,
    ) -> Result<pol::Explanation, EngineError> {
        self.refresh_cidrs()?;
        let eps: Vec<pol::Endpoint> = self.endpoints.values().map(|e| self.policy_endpoint(e)).collect();
        let table = self.table();
        let ipcache = self.ipcache_model();
        Ok(pol::explain(
            &pol::PolicyInput { policies: &self.models, endpoints: &eps, identities: &table },
            &ipcache,
            from,
            to,
            protocol,
            port,
        ))
    }
}

/// Unix seconds now.
#[must_use]
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A policy uid: unique per agent store (a counter) and across agents (time and pid).
fn new_uid(counter: u64) -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let d = digest(&(t, counter, std::process::id()));
    let hex = format!("{d:032x}");
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// The key a policy is applied under: `<Kind>/<namespace>/<name>` or `<Kind>/<name>`.
#[must_use]
pub fn policy_key(p: &Policy) -> String {
    key_of(p)
}

fn key_of(p: &Policy) -> String {
    format!("{}/{}", p.kind, p.id())
}

/// Split a multi-document YAML text into its non-empty documents.
#[must_use]
pub fn split_documents(text: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let separator = line.strip_prefix("---").is_some_and(|rest| rest.trim().is_empty());
        if separator || line.trim() == "..." {
            docs.push(std::mem::take(&mut cur));
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    docs.push(cur);
    docs.into_iter().filter(|d| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A kvstore stand-in: hands out 1000, 1001, ... per new label set while `up`.
    struct FakeCluster {
        up: std::sync::Arc<std::sync::atomic::AtomicBool>,
        ids: std::sync::Arc<std::sync::Mutex<BTreeMap<Labels, Identity>>>,
        released: std::sync::Arc<std::sync::Mutex<Vec<Labels>>>,
    }

    impl ClusterIdentities for FakeCluster {
        fn acquire(&mut self, labels: &Labels) -> Option<Identity> {
            if !self.up.load(std::sync::atomic::Ordering::SeqCst) {
                return None;
            }
            let mut ids = self.ids.lock().unwrap();
            let next = 1000 + ids.len() as u32;
            Some(*ids.entry(labels.clone()).or_insert(next))
        }
        fn release(&mut self, labels: &Labels) {
            self.released.lock().unwrap().push(labels.clone());
        }
    }

    fn ep(id: u32, app: &str) -> ApiEndpoint {
        ApiEndpoint {
            id,
            container_id: format!("c{id}"),
            netns: String::new(),
            ifname: "eth0".into(),
            host_ifname: format!("h{id}"),
            host_ifindex: id,
            ipv4: format!("10.0.0.{id}"),
            gateway: "10.0.0.1".into(),
            mac: String::new(),
            host_mac: String::new(),
            namespace: Some("default".into()),
            pod_name: Some(format!("p{id}")),
            labels: [("app".to_owned(), app.to_owned())].into_iter().collect(),
            ports: vec![],
            identity: 0,
            created: 0,
            labels_pending: false,
        }
    }

    #[test]
    fn cluster_identities_are_shared_fall_back_to_node_local_and_are_reconciled() {
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let fake = FakeCluster { up: up.clone(), ids: Default::default(), released: Default::default() };
        let released = fake.released.clone();
        let mut e = PolicyEngine::new(EngineState::default(), vec![], vec![], vec![], vec![]);
        e.set_cluster(Box::new(fake));
        let a = e.upsert_endpoint(ep(2, "web")).unwrap();
        let b = e.upsert_endpoint(ep(3, "web")).unwrap();
        assert_eq!((a, b), (1000, 1000), "one label set, one cluster identity, asked once");
        assert!(e.table().workloads.contains_key(&1000));

        // The kvstore cannot answer: a node-local identity from its own range.
        up.store(false, std::sync::atomic::Ordering::SeqCst);
        let c = e.upsert_endpoint(ep(4, "db")).unwrap();
        assert!((NODE_LOCAL_MIN..=NODE_LOCAL_MAX).contains(&c), "{c}");
        assert_eq!(e.unreconciled(), vec![4]);
        // Known labels still resolve without the kvstore.
        assert_eq!(e.upsert_endpoint(ep(5, "web")).unwrap(), 1000);

        // Back: the resync moves it to a cluster identity.
        up.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(e.resync_cluster().unwrap(), vec![4]);
        assert_eq!(e.endpoints().find(|x| x.id == 4).unwrap().identity, 1001);
        assert!(e.unreconciled().is_empty());

        // The last endpoint of a label set gives the node's reference back.
        for id in [2, 3, 5] {
            e.remove_endpoint(id);
        }
        assert_eq!(released.lock().unwrap().len(), 1, "released once, when the last user went");

        // Remote identities and pods are in the table and the ipcache.
        let view = ClusterView {
            identities: [(2000, Labels::from([("app", "remote")]))].into_iter().collect(),
            remote_ips: [(Ipv4Addr::new(10, 9, 0, 5), 2000)].into_iter().collect(),
            remote_nodes: [Ipv4Addr::new(172, 30, 0, 11)].into_iter().collect(),
        };
        assert!(e.set_view(view.clone()));
        assert!(!e.set_view(view), "an unchanged view is no change");
        assert!(e.table().workloads.contains_key(&2000));
        assert_eq!(e.desired_ipcache().get(&(Ipv4Addr::new(10, 9, 0, 5), 32)), Some(&2000));
        assert_eq!(e.desired_ipcache().get(&(Ipv4Addr::new(172, 30, 0, 11), 32)), Some(&6), "remote-node");
    }

    #[test]
    fn splits_documents_like_the_parser_counts_them() {
        let d = split_documents("a: 1\n---\n\n---\n# c\nb: 2\n---\n");
        assert_eq!(d.len(), 2);
        assert!(d[1].contains("b: 2"));
        assert_eq!(split_documents("x: 1").len(), 1);
    }
}
