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
use std::collections::BTreeMap;
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

type Installed = (bool, bool, Vec<PolicyMapEntry>);

pub struct PolicyEngine {
    policies: BTreeMap<String, StoredPolicy>,
    identities: IdentityAllocator,
    cidrs: CidrIdentityAllocator,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    rules: RuleTable,
    /// What was last pushed to the datapath, per endpoint (None: no policy).
    installed: BTreeMap<u32, Option<Installed>>,
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
        let mut warnings = BTreeMap::new();
        let policies: BTreeMap<String, StoredPolicy> = policies
            .into_iter()
            .map(|p| {
                if !p.policy.warnings.is_empty() {
                    warnings.insert(p.policy.id(), p.policy.warnings.clone());
                }
                (key_of(&p.policy), p)
            })
            .collect();
        Self {
            policies,
            identities: state.identities.unwrap_or_default(),
            cidrs: state.cidrs.unwrap_or_default(),
            namespaces: state.namespaces,
            rules: state.rules,
            installed: BTreeMap::new(),
            ipcache: BTreeMap::new(),
            node_ips,
            warnings,
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

    pub fn policies(&self) -> impl Iterator<Item = &StoredPolicy> {
        self.policies.values()
    }

    #[must_use]
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.values().flatten().cloned().collect()
    }

    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.namespaces.get(ns).cloned().unwrap_or_default()
    }

    pub fn set_namespace_labels(&mut self, ns: &str, labels: BTreeMap<String, String>) {
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
                self.installed.insert(e.id, current);
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

    /// `(key, json)` of every policy, for the store.
    #[must_use]
    pub fn stored(&self) -> Vec<(String, String)> {
        self.policies
            .iter()
            .filter_map(|(k, p)| serde_json::to_string(p).ok().map(|j| (k.clone(), j)))
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

    /// Insert or replace policies (by kind and id). Returns the previous set, for rollback.
    pub fn insert(&mut self, new: Vec<StoredPolicy>) -> BTreeMap<String, StoredPolicy> {
        let old = self.policies.clone();
        for p in new {
            if p.policy.warnings.is_empty() {
                self.warnings.remove(&p.policy.id());
            } else {
                self.warnings.insert(p.policy.id(), p.policy.warnings.clone());
            }
            self.policies.insert(key_of(&p.policy), p);
        }
        old
    }

    /// Remove policies by `namespace/name` or `name` (optionally `Kind/...`); all must exist.
    pub fn remove(&mut self, ids: &[String]) -> Result<(BTreeMap<String, StoredPolicy>, Vec<String>), EngineError> {
        let mut keys = Vec::new();
        for id in ids {
            let matches: Vec<String> =
                self.policies.iter().filter(|(k, p)| *k == id || p.policy.id() == *id).map(|(k, _)| k.clone()).collect();
            match matches.len() {
                0 => return Err(EngineError::NotFound(format!("no policy {id:?} is applied (see `myelin policy get`)"))),
                1 => keys.extend(matches),
                _ => {
                    return Err(EngineError::NotFound(format!(
                        "{id:?} names several policies ({}); qualify it with the kind",
                        matches.join(", ")
                    )))
                }
            }
        }
        let old = self.policies.clone();
        for k in &keys {
            if let Some(p) = self.policies.remove(k) {
                self.warnings.remove(&p.policy.id());
            }
        }
        Ok((old, keys))
    }

    pub fn restore(&mut self, old: BTreeMap<String, StoredPolicy>) {
        self.policies = old;
    }

    fn inputs(&mut self, endpoints: &[ApiEndpoint]) -> Result<(Vec<Policy>, Vec<pol::Endpoint>), EngineError> {
        let policies: Vec<Policy> = self.policies.values().map(|p| p.policy.clone()).collect();
        let prefixes = pol::cidr_prefixes(&policies);
        for p in &prefixes {
            self.cidrs.allocate(*p)?;
        }
        self.cidrs.retain(&prefixes);
        let eps = endpoints
            .iter()
            .map(|e| pol::Endpoint {
                id: u64::from(e.id),
                namespace: e.namespace.clone().unwrap_or_else(|| "default".into()),
                labels: self.security_labels(e),
                identity: e.identity,
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
            })
            .collect();
        Ok((policies, eps))
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

    /// Compile everything and push what changed to the datapath.
    pub fn sync(&mut self, endpoints: &[ApiEndpoint], dp: &Datapath) -> Result<SyncReport, EngineError> {
        let (policies, eps) = self.inputs(endpoints)?;
        let table = self.table();
        let compiled = pol::compile(&pol::PolicyInput { policies: &policies, endpoints: &eps, identities: &table });
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

        let mut changes: Vec<myelin_bpf::EndpointPolicyUpdate> = Vec::new();
        for e in endpoints {
            let desired: Option<Installed> = compiled.endpoints.get(&u64::from(e.id)).map(|p| {
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
                        rule_id: x.rule.as_ref().map_or(0, |r| self.rules.intern(r)),
                    })
                    .collect();
                entries.sort();
                (p.ingress.enforced, p.egress.enforced, entries)
            });
            if self.installed.get(&e.id) == Some(&desired) {
                continue;
            }
            changes.push((e.id, desired));
        }
        // One batch for every changed endpoint: each swapped atomically, one
        // RCU grace period in all (not one per endpoint).
        if !changes.is_empty() {
            if let Err(err) = dp.set_endpoint_policies(&changes) {
                // Some may have switched: forget them all, the next sync rewrites them.
                for (id, _) in &changes {
                    self.installed.remove(id);
                }
                return Err(err.into());
            }
            report.endpoints_updated = changes.len();
            self.installed.extend(changes);
        }
        let live: std::collections::BTreeSet<u32> = endpoints.iter().map(|e| e.id).collect();
        self.installed.retain(|id, _| live.contains(id));
        if report.endpoints_updated > 0 || report.ipcache_changes > 0 {
            info!(endpoints = report.endpoints_updated, ipcache = report.ipcache_changes, "policy synced");
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
        let (policies, eps) = self.inputs(endpoints)?;
        let table = self.table();
        let ipcache = self.ipcache_model(endpoints);
        Ok(pol::explain(
            &pol::PolicyInput { policies: &policies, endpoints: &eps, identities: &table },
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
        if line.starts_with("---") && line[3..].trim().is_empty() {
            docs.push(std::mem::take(&mut cur));
        } else if line.trim() == "..." {
            docs.push(std::mem::take(&mut cur));
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    docs.push(cur);
    docs.into_iter()
        .filter(|d| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')))
        .collect()
}

#[cfg(test)]
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
        let r = |s: &str| pol::RuleRef { policy: "default/p".into(), kind: pol::PolicyKind::CiliumNetworkPolicy, section: s.into(), index: 9 };
        let a = t.intern(&r("spec.ingress[0]"));
        let b = t.intern(&r("spec.ingress[1]"));
        assert_ne!(a, b);
        assert_eq!(t.intern(&r("spec.ingress[0]")), a);
        assert!(t.describe(b).unwrap().contains("spec.ingress[1]"));
        assert!(a >= 1);
    }
}
