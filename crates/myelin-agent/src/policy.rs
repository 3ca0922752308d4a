//! The node's policy engine: identities from labels, the applied policies,
//! and the reconciliation that turns them into per-endpoint policy maps and
//! ipcache entries in the datapath.
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
use myelin_bpf::{Datapath, PolicyMapEntry};
use myelin_policy as pol;
use pol::{CidrIdentityAllocator, Identity, IdentityAllocator, IdentityTable, IpCache, Labels, Policy};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;
use tracing::{info, warn};

/// A policy as applied: the parsed model and the document it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredPolicy {
    pub policy: Policy,
    pub yaml: String,
}

/// Numeric ids of rules, stable for as long as the agent's store lives: the
/// datapath and flow events name a rule by this number.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RuleTable {
    ids: BTreeMap<String, u32>,
    next: u32,
}

impl RuleTable {
    fn key(r: &pol::RuleRef) -> String {
        format!("{}|{}|{}", r.kind, r.policy, r.section)
    }

    pub fn intern(&mut self, r: &pol::RuleRef) -> u32 {
        let key = Self::key(r);
        if let Some(id) = self.ids.get(&key) {
            return *id;
        }
        self.next = self.next.max(1);
        let id = self.next;
        self.next += 1;
        self.ids.insert(key, id);
        id
    }

    /// `(kind, policy, section)` of a rule id.
    #[must_use]
    pub fn describe(&self, id: u32) -> Option<String> {
        self.ids.iter().find(|(_, v)| **v == id).map(|(k, _)| k.replace('|', " "))
    }
}

/// What the engine persists (besides the policies themselves).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineState {
    pub identities: Option<IdentityAllocator>,
    pub cidrs: Option<CidrIdentityAllocator>,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub rules: RuleTable,
}

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
pub struct Rollback(Vec<(String, Option<StoredPolicy>)>);

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
    rules: RuleTable,
    /// Fingerprint of what was last pushed to the datapath, per endpoint (None: no policy).
    installed: HashMap<u32, Option<Digest>>,
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
}

/// The result of one reconciliation.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SyncReport {
    pub endpoints_updated: usize,
    pub ipcache_changes: usize,
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
    pub fn new(state: EngineState, policies: Vec<StoredPolicy>, node_ips: Vec<Ipv4Addr>) -> Self {
        let policies: BTreeMap<String, StoredPolicy> = policies.into_iter().map(|p| (key_of(&p.policy), p)).collect();
        let (mut keys, mut models, mut yamls) = (Vec::new(), Vec::new(), Vec::new());
        for (k, p) in policies {
            keys.push(k);
            models.push(p.policy);
            yamls.push(p.yaml);
        }
        let mut this = Self {
            keys,
            models,
            yamls,
            epoch: 0,
            cidr_epoch: None,
            persisted_epoch: None,
            identities: state.identities.unwrap_or_default(),
            cidrs: state.cidrs.unwrap_or_default(),
            namespaces: state.namespaces,
            rules: state.rules,
            installed: HashMap::new(),
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
            rules: self.rules.clone(),
        }
    }

    pub fn policies(&self) -> impl Iterator<Item = AppliedRef<'_>> {
        self.models.iter().zip(&self.yamls).map(|(policy, yaml)| AppliedRef { policy, yaml })
    }

    #[must_use]
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.values().flatten().cloned().collect()
    }

    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.namespaces.get(ns).cloned().unwrap_or_default()
    }

    pub fn set_namespace_labels(&mut self, ns: &str, labels: BTreeMap<String, String>) {
        self.epoch += 1;
        self.namespaces.insert(ns.to_owned(), labels);
    }

    /// The security labels of an endpoint: pod labels, its namespace, and the namespace's labels.
    #[must_use]
    pub fn security_labels(&self, ep: &ApiEndpoint) -> Labels {
        self.security_labels_of(ep.namespace.as_deref(), &ep.labels)
    }

    #[must_use]
    pub fn security_labels_of(&self, namespace: Option<&str>, labels: &BTreeMap<String, String>) -> Labels {
        let ns = namespace.unwrap_or("default");
        let pod: Labels = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let nsl: Labels = self.namespace_labels(ns).into_iter().collect();
        pol::security_labels(&pod, ns, &nsl)
    }

    /// Start from what the datapath already enforces (after an agent restart),
    /// so that the first sync rewrites nothing that is already right.
    pub fn seed_from_datapath(&mut self, endpoints: &[ApiEndpoint], dp: &Datapath) {
        for e in endpoints {
            if let Ok(current) = dp.endpoint_policy(e.id) {
                self.installed.insert(e.id, current.as_ref().map(policy_digest));
            }
        }
        if let Ok(rows) = dp.ipcache() {
            self.ipcache = rows.into_iter().map(|(ip, len, id)| ((ip, len), id)).collect();
        }
    }

    /// Forget what was installed for an endpoint that is gone.
    pub fn forget(&mut self, endpoint_id: u32) {
        self.installed.remove(&endpoint_id);
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
            .filter_map(|(k, (policy, yaml))| {
                serde_json::to_string(&StoredRef { policy, yaml }).ok().map(|j| (k.clone(), j))
            })
            .collect()
    }

    /// Take a reference on the identity of these labels.
    pub fn acquire(&mut self, labels: &Labels) -> Result<Identity, EngineError> {
        Ok(self.identities.acquire(labels)?)
    }

    /// Drop a reference; unknown and reserved ids are ignored.
    pub fn release(&mut self, id: Identity) {
        if id != 0 {
            if let Err(e) = self.identities.release(id) {
                warn!(identity = id, error = %e, "releasing identity");
            }
        }
    }

    #[must_use]
    pub fn identities(&self) -> &IdentityAllocator {
        &self.identities
    }

    #[must_use]
    pub fn table(&self) -> IdentityTable {
        IdentityTable::from_allocators(&self.identities, &self.cidrs)
    }

    #[must_use]
    pub fn rules(&self) -> &RuleTable {
        &self.rules
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
            let old = self.put(&key, Some(p));
            undo.0.push((key, old));
        }
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
                undo.0.push((k.clone(), Some(p)));
            }
        }
        Ok((undo, keys))
    }

    /// Undo an `insert` or a `remove`.
    pub fn restore(&mut self, undo: Rollback) {
        for (key, old) in undo.0.into_iter().rev() {
            self.put(&key, old);
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
    fn desired_ipcache(&self, endpoints: &[ApiEndpoint]) -> BTreeMap<(Ipv4Addr, u8), u32> {
        let mut want = BTreeMap::new();
        for (p, id) in self.cidrs.prefixes() {
            want.insert((p.network(), p.prefix_len()), *id);
        }
        for ip in &self.node_ips {
            want.insert((*ip, 32), pol::ReservedIdentity::Host as u32);
        }
        for e in endpoints {
            if let Ok(ip) = e.ipv4.parse::<Ipv4Addr>() {
                want.insert((ip, 32), e.identity);
            }
        }
        want
    }

    /// The ipcache model for explain (pods, node addresses, CIDR identities).
    fn ipcache_model(&self, endpoints: &[ApiEndpoint]) -> IpCache {
        let pods: Vec<(Ipv4Addr, Identity)> =
            endpoints.iter().filter_map(|e| e.ipv4.parse().ok().map(|ip| (ip, e.identity))).collect();
        IpCache::build(&pods, &self.node_ips, &[], &self.cidrs)
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
    pub fn sync(&mut self, endpoints: &[ApiEndpoint], dp: &Datapath) -> Result<SyncReport, EngineError> {
        self.refresh_cidrs()?;
        let table = self.table();
        let global = (self.epoch, Self::table_digest(&table));
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
        let want = self.desired_ipcache(endpoints);
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
        let cidrs: Vec<(Ipv4Addr, u8, u32)> = self
            .table()
            .pod_cidr_prefixes()
            .into_iter()
            .map(|(net, id)| (net.network(), net.prefix_len(), id))
            .collect();
        report.ipcache_changes += dp.set_policy_cidrs(&cidrs)?;

        // Rule ids by rule ordinal, interned once per rule (not once per entry).
        let mut rule_ids: HashMap<u32, u32> = HashMap::new();
        let mut changes: Vec<myelin_bpf::EndpointPolicyUpdate> = Vec::new();
        let mut digests: Vec<(u32, Option<Digest>)> = Vec::new();
        for e in endpoints {
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
                        rule_id: x
                            .rule
                            .as_ref()
                            .map_or(0, |r| *rule_ids.entry(r.index).or_insert_with(|| self.rules.intern(r))),
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
        }
        self.installed.retain(|id, _| live.contains(id));
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
        endpoints: &[ApiEndpoint],
        from: pol::FlowPeer,
        to: pol::FlowPeer,
        protocol: u8,
        port: u16,
    ) -> Result<pol::Explanation, EngineError> {
        self.refresh_cidrs()?;
        let eps: Vec<pol::Endpoint> = endpoints.iter().map(|e| self.policy_endpoint(e)).collect();
        let table = self.table();
        let ipcache = self.ipcache_model(endpoints);
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

    #[test]
    fn splits_documents_like_the_parser_counts_them() {
        let d = split_documents("a: 1\n---\n\n---\n# c\nb: 2\n---\n");
        assert_eq!(d.len(), 2);
        assert!(d[1].contains("b: 2"));
        assert_eq!(split_documents("x: 1").len(), 1);
    }

    #[test]
    fn rule_ids_are_stable_and_distinct() {
        let mut t = RuleTable::default();
        let r = |s: &str| pol::RuleRef {
            policy: "default/p".into(),
            kind: pol::PolicyKind::CiliumNetworkPolicy,
            section: s.into(),
            index: 9,
        };
        let a = t.intern(&r("spec.ingress[0]"));
        let b = t.intern(&r("spec.ingress[1]"));
        assert_ne!(a, b);
        assert_eq!(t.intern(&r("spec.ingress[0]")), a);
        assert!(t.describe(b).unwrap().contains("spec.ingress[1]"));
        assert!(a >= 1);
    }
}
