//! The policy component: one thread that owns the policy engine (policies,
//! identities, namespaces, rule ids, compiler caches) and is the only writer
//! of the datapath's policy state (policy maps, endpoint entries, ipcache,
//! pod-in-CIDR prefixes). It takes commands from a channel and answers each
//! on its own oneshot; it publishes a [`PolicyView`] snapshot after every
//! change.
//!
//! Endpoint changes arriving together (concurrent CNI ADDs) are applied as one
//! batch: one compile, one `BPF_MAP_UPDATE_BATCH` of policy maps (one RCU
//! grace period for all of them), one store write.

pub mod engine;
pub mod rules;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use myelin_api::{AppliedPolicy, Endpoint, NamespaceLabels, PolicyChange};
use myelin_bpf::Datapath;
use myelin_policy as pol;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::snapshot::{PolicyView, Snapshots};
use crate::store::Store;
pub use engine::{ClusterIdentities, ClusterView, EngineError, EngineState, PolicyEngine, StoredPolicy};

/// What the policy component is asked to do.
pub enum PolicyCmd {
    /// Add or update (`upserts`) and remove endpoints; answer each endpoint's identity once
    /// its policy and entry are in the datapath.
    Endpoints { upserts: Vec<Endpoint>, removes: Vec<u32>, reply: oneshot::Sender<Result<HashMap<u32, u32>, String>> },
    /// Apply policy files, all or nothing.
    Apply { files: Vec<(String, String)>, reply: oneshot::Sender<Result<PolicyChange, EngineError>> },
    /// Delete policies, all or nothing.
    Delete { ids: Vec<String>, reply: oneshot::Sender<Result<PolicyChange, EngineError>> },
    /// Set a namespace's labels; its endpoints' identities follow.
    Namespace {
        name: String,
        labels: BTreeMap<String, String>,
        reply: oneshot::Sender<Result<NamespaceLabels, EngineError>>,
    },
    /// Evaluate a flow against the applied policies.
    Explain {
        from: pol::FlowPeer,
        to: pol::FlowPeer,
        protocol: u8,
        port: u16,
        reply: oneshot::Sender<Result<pol::Explanation, EngineError>>,
    },
    /// The rest of the cluster changed (from the kvstore): its identities and pod addresses.
    Cluster { view: engine::ClusterView },
    /// Policies from the cluster (the kvstore): documents to apply where they differ from what
    /// is applied, keys to delete; `full` is a complete listing (policies not in it go). Each
    /// document is applied on its own: one that does not parse is logged and skipped.
    FromCluster { upserts: Vec<(String, String)>, deletes: Vec<String>, full: bool },
    /// The kvstore is reachable again: re-reference this node's cluster identities and give
    /// endpoints that got a node-local identity meanwhile a cluster-wide one.
    ClusterResync,
    /// Debug: keep the component busy for a while (to prove nobody else waits for it);
    /// answered as the stall begins.
    Stall { duration: Duration, reply: oneshot::Sender<()> },
}

/// Sends commands to the policy component.
#[derive(Clone)]
pub struct PolicyHandle {
    tx: mpsc::UnboundedSender<PolicyCmd>,
}

/// The component stopped (it only stops when the agent does).
#[derive(Debug, thiserror::Error)]
#[error("the policy component is not running")]
pub struct Gone;

impl PolicyHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> PolicyCmd) -> Result<T, Gone> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    /// See [`PolicyCmd::Cluster`]; not answered.
    pub fn cluster_view(&self, view: ClusterView) -> Result<(), Gone> {
        self.tx.send(PolicyCmd::Cluster { view }).map_err(|_| Gone)
    }

    /// See [`PolicyCmd::FromCluster`]; not answered.
    pub fn cluster_policies(
        &self,
        upserts: Vec<(String, String)>,
        deletes: Vec<String>,
        full: bool,
    ) -> Result<(), Gone> {
        self.tx.send(PolicyCmd::FromCluster { upserts, deletes, full }).map_err(|_| Gone)
    }

    /// See [`PolicyCmd::ClusterResync`]; not answered.
    pub fn cluster_resync(&self) -> Result<(), Gone> {
        self.tx.send(PolicyCmd::ClusterResync).map_err(|_| Gone)
    }

    /// See [`PolicyCmd::Endpoints`].
    pub async fn endpoints(&self, upserts: Vec<Endpoint>, removes: Vec<u32>) -> Result<HashMap<u32, u32>, String> {
        self.ask(|reply| PolicyCmd::Endpoints { upserts, removes, reply }).await.map_err(|e| e.to_string())?
    }

    pub async fn apply(&self, files: Vec<(String, String)>) -> Result<Result<PolicyChange, EngineError>, Gone> {
        self.ask(|reply| PolicyCmd::Apply { files, reply }).await
    }

    pub async fn delete(&self, ids: Vec<String>) -> Result<Result<PolicyChange, EngineError>, Gone> {
        self.ask(|reply| PolicyCmd::Delete { ids, reply }).await
    }

    pub async fn namespace(
        &self,
        name: String,
        labels: BTreeMap<String, String>,
    ) -> Result<Result<NamespaceLabels, EngineError>, Gone> {
        self.ask(|reply| PolicyCmd::Namespace { name, labels, reply }).await
    }

    pub async fn explain(
        &self,
        from: pol::FlowPeer,
        to: pol::FlowPeer,
        protocol: u8,
        port: u16,
    ) -> Result<Result<pol::Explanation, EngineError>, Gone> {
        self.ask(|reply| PolicyCmd::Explain { from, to, protocol, port, reply }).await
    }

    pub async fn stall(&self, duration: Duration) -> Result<(), Gone> {
        self.ask(|reply| PolicyCmd::Stall { duration, reply }).await
    }
}

/// Settings of the component.
#[derive(Debug, Clone)]
pub struct PolicySettings {
    /// Keep ids of retired rules resolvable this long (flow history's horizon).
    pub rule_retention: Duration,
    /// Where policies applied or deleted through this agent's API go to be shared with the
    /// cluster (the cluster component; None: no kvstore).
    pub publish: Option<mpsc::UnboundedSender<PolicyPublish>>,
}

/// A change made through this agent's API, for the cluster to share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyPublish {
    /// `(key, document)` of each policy applied.
    Upsert(Vec<(String, String)>),
    /// Keys of the policies deleted.
    Delete(Vec<String>),
}

/// Start the component on its own thread; the engine is synced to the
/// datapath once before this returns (after a restart: rewriting nothing that
/// is already right).
pub fn spawn(
    mut engine: PolicyEngine,
    datapath: Arc<Datapath>,
    store: Arc<Store>,
    snapshots: Arc<Snapshots>,
    settings: PolicySettings,
) -> Result<PolicyHandle, EngineError> {
    engine.seed_from_datapath(&datapath);
    engine.sync(&datapath)?;
    let mut comp = Component { engine, datapath, store, snapshots, settings, published_epoch: None };
    comp.persist();
    comp.publish();
    let (tx, mut rx) = mpsc::unbounded_channel::<PolicyCmd>();
    std::thread::Builder::new()
        .name("policy".into())
        .spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                comp.run(batch);
            }
        })
        .map_err(|e| EngineError::NotFound(format!("starting the policy thread: {e}")))?;
    Ok(PolicyHandle { tx })
}

struct Component {
    engine: PolicyEngine,
    datapath: Arc<Datapath>,
    store: Arc<Store>,
    snapshots: Arc<Snapshots>,
    settings: PolicySettings,
    /// The policy epoch of the last published policy list.
    published_epoch: Option<u64>,
}

type EndpointReply = oneshot::Sender<Result<HashMap<u32, u32>, String>>;

impl Component {
    /// Run a batch of commands in order; consecutive endpoint changes share one sync.
    fn run(&mut self, batch: Vec<PolicyCmd>) {
        let mut pending: Vec<(Vec<u32>, EndpointReply)> = Vec::new();
        for cmd in batch {
            match cmd {
                PolicyCmd::Endpoints { upserts, removes, reply } => {
                    let mut ids = Vec::new();
                    let mut failed = None;
                    for id in removes {
                        self.engine.remove_endpoint(id);
                    }
                    for ep in upserts {
                        ids.push(ep.id);
                        if let Err(e) = self.engine.upsert_endpoint(ep) {
                            failed = Some(e.to_string());
                        }
                    }
                    match failed {
                        Some(e) => {
                            let _ = reply.send(Err(e));
                        }
                        None => pending.push((ids, reply)),
                    }
                }
                other => {
                    self.flush_endpoints(std::mem::take(&mut pending));
                    self.run_one(other);
                }
            }
        }
        self.flush_endpoints(pending);
    }

    fn flush_endpoints(&mut self, pending: Vec<(Vec<u32>, EndpointReply)>) {
        if pending.is_empty() {
            return;
        }
        let result = self.engine.sync(&self.datapath).map_err(|e| e.to_string());
        self.persist();
        self.publish();
        let identities: HashMap<u32, u32> = self.engine.endpoints().map(|e| (e.id, e.identity)).collect();
        for (ids, reply) in pending {
            let answer = result
                .clone()
                .map(|_| ids.iter().filter_map(|id| identities.get(id).map(|i| (*id, *i))).collect::<HashMap<_, _>>());
            let _ = reply.send(answer);
        }
    }

    fn run_one(&mut self, cmd: PolicyCmd) {
        match cmd {
            PolicyCmd::Endpoints { .. } => {}
            PolicyCmd::Apply { files, reply } => {
                let r = self.apply(&files);
                drop(files);
                let _ = reply.send(r);
                release_free_memory();
            }
            PolicyCmd::Delete { ids, reply } => {
                let r = self.engine.remove(&ids).and_then(|(old, keys)| {
                    let report = self.commit(old)?;
                    if let Some(p) = &self.settings.publish {
                        let _ = p.send(PolicyPublish::Delete(keys.clone()));
                    }
                    Ok(PolicyChange { policies: keys, warnings: vec![], endpoints_updated: report.endpoints_updated })
                });
                let _ = reply.send(r);
                release_free_memory();
            }
            PolicyCmd::Namespace { name, labels, reply } => {
                self.engine.set_namespace_labels(&name, labels.clone());
                let r = self
                    .engine
                    .refresh_namespace(&name)
                    .and_then(|_| self.engine.sync(&self.datapath))
                    .map(|_| NamespaceLabels { labels });
                self.persist();
                self.publish();
                let _ = reply.send(r);
            }
            PolicyCmd::Cluster { view } => {
                if self.engine.set_view(view) {
                    if let Err(e) = self.engine.sync(&self.datapath) {
                        warn!(error = %e, "applying the cluster's identities and addresses");
                    }
                    self.publish();
                }
            }
            PolicyCmd::FromCluster { upserts, deletes, full } => self.apply_cluster_policies(upserts, deletes, full),
            PolicyCmd::ClusterResync => {
                match self.engine.resync_cluster() {
                    Ok(changed) if !changed.is_empty() => {
                        info!(endpoints = changed.len(), "endpoints moved to cluster-wide identities")
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "re-referencing cluster identities"),
                }
                if let Err(e) = self.engine.sync(&self.datapath) {
                    warn!(error = %e, "syncing after the kvstore came back");
                }
                self.persist();
                self.publish();
            }
            PolicyCmd::Explain { from, to, protocol, port, reply } => {
                let _ = reply.send(self.engine.explain(from, to, protocol, port));
            }
            PolicyCmd::Stall { duration, reply } => {
                // Answer first: the caller learns the component is busy from now on.
                let _ = reply.send(());
                std::thread::sleep(duration);
            }
        }
    }

    fn apply(&mut self, files: &[(String, String)]) -> Result<PolicyChange, EngineError> {
        let new = PolicyEngine::prepare(files)?;
        let names: Vec<String> = new.iter().map(|p| format!("{}/{}", p.policy.kind, p.policy.id())).collect();
        let warnings: Vec<String> = new.iter().flat_map(|p| p.policy.warnings.clone()).collect();
        let shared: Vec<(String, String)> =
            new.iter().map(|p| (engine::policy_key(&p.policy), p.yaml.clone())).collect();
        let old = self.engine.insert(new);
        let report = self.commit(old)?;
        if let Some(p) = &self.settings.publish {
            let _ = p.send(PolicyPublish::Upsert(shared));
        }
        info!(policies = ?names, endpoints = report.endpoints_updated, "policies applied");
        Ok(PolicyChange { policies: names, warnings, endpoints_updated: report.endpoints_updated })
    }

    /// Apply what the cluster holds: each differing document on its own (a bad one is logged and
    /// skipped, the others go in), then the deletions, in one commit.
    fn apply_cluster_policies(&mut self, upserts: Vec<(String, String)>, deletes: Vec<String>, full: bool) {
        let mut new = Vec::new();
        let mut listed = std::collections::HashSet::new();
        for (key, yaml) in upserts {
            listed.insert(key.clone());
            if self.engine.policy_yaml(&key) == Some(yaml.as_str()) {
                continue; // what this node applied (or already has)
            }
            match PolicyEngine::prepare(&[(format!("kvstore:{key}"), yaml)]) {
                Ok(ps) if ps.len() == 1 && engine::policy_key(&ps[0].policy) == key => new.extend(ps),
                Ok(ps) => warn!(
                    %key,
                    found = ?ps.iter().map(|p| engine::policy_key(&p.policy)).collect::<Vec<_>>(),
                    "a kvstore policy must hold exactly the policy its key names; skipped"
                ),
                Err(e) => warn!(%key, error = %e, "a kvstore policy does not parse; skipped, nothing else changed"),
            }
        }
        let mut gone: Vec<String> = deletes.into_iter().filter(|k| self.engine.policy_yaml(k).is_some()).collect();
        if full {
            gone.extend(self.engine.policy_keys().into_iter().filter(|k| !listed.contains(k)));
        }
        if new.is_empty() && gone.is_empty() {
            return;
        }
        let (applied, removed) = (new.len(), gone.len());
        let mut undo = self.engine.insert(new);
        if !gone.is_empty() {
            match self.engine.remove(&gone) {
                Ok((more, _)) => undo.extend(more),
                Err(e) => warn!(error = %e, "removing policies the cluster deleted"),
            }
        }
        match self.commit(undo) {
            Ok(report) => info!(applied, removed, endpoints = report.endpoints_updated, "policies from the cluster"),
            Err(e) => warn!(error = %e, "the datapath refused the cluster's policies; the previous set stays"),
        }
    }

    /// Push a changed policy set to the datapath and persist it; if the datapath refuses, go
    /// back to the previous set so nothing stays half-applied.
    fn commit(&mut self, old: engine::Rollback) -> Result<engine::SyncReport, EngineError> {
        match self.engine.sync(&self.datapath) {
            Ok(report) => {
                self.persist();
                self.publish();
                Ok(report)
            }
            Err(e) => {
                self.engine.restore(old);
                if let Err(again) = self.engine.sync(&self.datapath) {
                    warn!(error = %again, "restoring the previous policy set");
                }
                self.publish();
                Err(e)
            }
        }
    }

    /// Write what changed to the store: policies when they changed, the engine state, and the
    /// rule records (retired ids past the retention are pruned first).
    fn persist(&mut self) {
        let cutoff = engine::now_secs().saturating_sub(self.settings.rule_retention.as_secs());
        let pruned = self.engine.prune_rules(cutoff);
        if pruned > 0 {
            info!(pruned, "retired rule ids past their retention forgotten");
        }
        let state = match serde_json::to_string(&self.engine.state()) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "serializing the policy state");
                return;
            }
        };
        let (rules, gone) = self.engine.take_rule_changes();
        let r = match self.engine.unpersisted() {
            Some(epoch) => {
                self.store.put_policies(&self.engine.stored(), &state).map(|()| self.engine.persisted(epoch))
            }
            None => self.store.put_kv("policy_engine", &state),
        }
        .and_then(|()| self.store.put_rules(&rules, &gone));
        if let Err(e) = r {
            warn!(error = %e, "persisting the policy state");
        }
    }

    fn publish(&mut self) {
        let old = self.snapshots.policy.load_full();
        // Any change of the policies (or namespace labels) bumps the engine's epoch.
        let policies_changed = self.published_epoch != Some(self.engine.epoch());
        let policies = if policies_changed {
            Arc::new(
                self.engine
                    .policies()
                    .map(|p| AppliedPolicy {
                        kind: p.policy.kind.to_string(),
                        namespace: p.policy.namespace.clone(),
                        name: p.policy.name.clone(),
                        yaml: p.yaml.clone(),
                        warnings: p.policy.warnings.clone(),
                    })
                    .collect(),
            )
        } else {
            old.policies.clone()
        };
        let table = self.engine.table();
        let table = if *old.table == table { old.table.clone() } else { Arc::new(table) };
        let refcounts: HashMap<u32, u64> =
            table.workloads.keys().map(|id| (*id, self.engine.identities().refcount(*id))).collect();
        let rules = if policies_changed { Arc::new(self.engine.rules().clone()) } else { old.rules.clone() };
        self.published_epoch = Some(self.engine.epoch());
        self.snapshots.publish_policy(PolicyView {
            policies,
            warnings: Arc::new(self.engine.warnings()),
            table,
            refcounts: Arc::new(refcounts),
            rules,
            identity_of: Arc::new(self.engine.endpoints().map(|e| (e.id, e.identity)).collect()),
            namespaces: Arc::new(self.engine.namespaces().clone()),
            policy_entries: self.engine.policy_entries(),
        });
    }
}

/// Give the allocator's free pages back to the kernel. Applying a large policy parses and
/// compiles megabytes that are freed right after; glibc keeps such pages in the arenas, so the
/// agent's RSS would stay at the high-water mark of the largest apply. Called after the answer
/// has been sent.
fn release_free_memory() {
    myelin_bpf::release_free_memory();
}
