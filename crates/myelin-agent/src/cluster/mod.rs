//! The cluster component: this node's link to the cluster's shared state in etcd (Cilium's
//! kvstore mode). It owns the etcd connection; nobody else talks to etcd.
//!
//! ```text
//!  policy thread --AllocReq (blocking call, timeout; held while reconnecting, refused while down)-+
//!      ^                                                                                       v
//!      | PolicyCmd::Cluster (remote identities + pod addresses, debounced)      [cluster task] (tokio)
//!      | PolicyCmd::ClusterResync (after every (re)connect)                      owns Kvstore
//!      +--------------------------------------------------------------------------|    |  ^
//!  Snapshots.changed (watch) --> this node's pods --> ip/v1 entries (leased) -----+    |  | watches:
//!  overlay: routes + tunnel_map per remote node (blocking BPF calls on the pool) <----+  | identities,
//!  status: watch<ClusterStatus> --> API                                                 | nodes, ips
//! ```
//! Failure semantics: while etcd is unreachable the datapath keeps the last known state (nothing
//! is withdrawn), new pods get node-local identities, and the task reconnects with backoff; a new
//! session re-registers the node, rewrites this node's entries, re-lists every watched prefix
//! (entries that vanished meanwhile are withdrawn) and asks the policy thread to re-reference
//! its identities.

pub mod identities;
pub mod labels;
pub mod overlay;
pub mod podcidr;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use myelin_bpf::Datapath;
use myelin_kvstore::{IdentityEvent, IpEvent, IpRecord, Kvstore, KvstoreConfig, NodeEvent, NodeRecord, PolicyEvent};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::policy::{ClusterView, PolicyHandle, PolicyPublish};
use crate::snapshot::{RemotePod, RemoteView, Snapshots};
use identities::{AllocReq, KvIdentities, Link};
use overlay::Overlay;

/// How the cluster component connects and what it announces.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub endpoints: Vec<String>,
    pub cluster: String,
    pub node: String,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub lease_ttl: Duration,
}

pub use myelin_api::ClusterStatus;

/// What the cluster task answers: allocation requests from the policy engine's
/// [`KvIdentities`], handed out by [`prepare`] before the policy component starts.
pub struct Prepared {
    alloc_rx: mpsc::UnboundedReceiver<AllocReq>,
    link_tx: watch::Sender<Link>,
    publish_tx: mpsc::UnboundedSender<PolicyPublish>,
    publish_rx: mpsc::UnboundedReceiver<PolicyPublish>,
}

impl Prepared {
    /// Where the policy component sends the policies applied or deleted through this agent.
    #[must_use]
    pub fn publisher(&self) -> mpsc::UnboundedSender<PolicyPublish> {
        self.publish_tx.clone()
    }
}

/// Step 1: the allocator for the policy engine, and what the task will answer it from.
#[must_use]
pub fn prepare() -> (KvIdentities, Prepared) {
    let (tx, alloc_rx) = mpsc::unbounded_channel();
    let (link_tx, link) = watch::channel(Link::Reconnecting);
    let (publish_tx, publish_rx) = mpsc::unbounded_channel();
    (KvIdentities { tx, link, timeout: Duration::from_secs(3) }, Prepared { alloc_rx, link_tx, publish_tx, publish_rx })
}

/// Step 2: start the task. Waits (up to `first_wait`) for the first session so that pods
/// created right after start get cluster-wide identities; etcd being down is not an error.
pub async fn start(
    prepared: Prepared,
    settings: ClusterSettings,
    policy: PolicyHandle,
    datapath: Arc<Datapath>,
    snapshots: Arc<Snapshots>,
    overlay: Option<Overlay>,
    first_wait: Duration,
) -> watch::Receiver<ClusterStatus> {
    let routing = overlay.as_ref().map_or("native", |o| match o.kind() {
        myelin_netlink::tunnel::TunnelKind::Vxlan => "vxlan",
        myelin_netlink::tunnel::TunnelKind::Geneve => "geneve",
    });
    let (status_tx, status) = watch::channel(ClusterStatus {
        endpoints: settings.endpoints.clone(),
        routing: routing.to_owned(),
        ..Default::default()
    });
    let mut link = prepared.link_tx.subscribe();
    let task = Task {
        settings,
        policy,
        datapath,
        snapshots,
        overlay,
        alloc_rx: prepared.alloc_rx,
        link: prepared.link_tx,
        pending: Vec::new(),
        publish_rx: prepared.publish_rx,
        unpublished: BTreeMap::new(),
        status: status_tx,
        identities: Watched::default(),
        nodes: Watched::default(),
        ips: Watched::default(),
        published: BTreeMap::new(),
        last_view: None,
    };
    tokio::spawn(task.run());
    let _ = tokio::time::timeout(first_wait, link.wait_for(|l| *l != Link::Reconnecting)).await;
    status
}

struct Task {
    settings: ClusterSettings,
    policy: PolicyHandle,
    datapath: Arc<Datapath>,
    snapshots: Arc<Snapshots>,
    overlay: Option<Overlay>,
    alloc_rx: mpsc::UnboundedReceiver<AllocReq>,
    link: watch::Sender<Link>,
    /// Allocation requests held while reconnecting, answered by the next session.
    pending: Vec<AllocReq>,
    publish_rx: mpsc::UnboundedReceiver<PolicyPublish>,
    /// Policy changes made through this agent and not yet in etcd: key -> document (None:
    /// deleted). Written first in the next session, so its listing includes them.
    unpublished: BTreeMap<String, Option<String>>,
    status: watch::Sender<ClusterStatus>,
    /// The cluster as last listed/watched (kept while disconnected: last known state).
    identities: Watched<u32, myelin_policy::Labels>,
    nodes: Watched<String, NodeRecord>,
    ips: Watched<Ipv4Addr, IpRecord>,
    /// This node's ip/v1 entries as written in the current session.
    published: BTreeMap<Ipv4Addr, IpRecord>,
    last_view: Option<ClusterView>,
}

/// Why a session ended.
enum End {
    Lost(String),
    Stopped,
}

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long connecting to one member may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Changes arriving within this window are pushed to the policy thread together.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// How often a node looks for identities no node references any more.
const IDENTITY_GC: Duration = Duration::from_secs(300);

impl Task {
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut sessions = 0u64;
        // One member at a time, the next one after a failure: the etcd client does not fail
        // over between endpoints by itself (a dead member's connection fails every call).
        let n = self.settings.endpoints.len().max(1);
        let (mut next, mut failed_in_round) = (0usize, 0usize);
        loop {
            let cfg = KvstoreConfig {
                cluster: self.settings.cluster.clone(),
                connect_timeout: CONNECT_TIMEOUT,
                ..KvstoreConfig::new(self.settings.lease_ttl)
            };
            let endpoints = vec![self.settings.endpoints[next % n].clone()];
            let node = self.settings.node.clone();
            let connect = async move { Kvstore::connect_with(&endpoints, &node, cfg).await };
            tokio::pin!(connect);
            let kv = loop {
                tokio::select! {
                    r = &mut connect => break r,
                    req = self.alloc_rx.recv() => match req {
                        Some(req) => self.hold_or_refuse(req),
                        None => return,
                    },
                    Some(p) = self.publish_rx.recv() => self.queue_publish(p),
                }
            };
            match kv {
                Ok(kv) => {
                    sessions += 1;
                    backoff = BACKOFF_MIN;
                    failed_in_round = 0;
                    info!(endpoint = %self.settings.endpoints[next % n], "connected to an etcd member");
                    let end = self.session(&kv, sessions).await;
                    drop(kv);
                    next += 1;
                    match end {
                        End::Stopped => return,
                        // Straight to the next connect: requests wait for it.
                        End::Lost(reason) => {
                            self.link.send_replace(Link::Reconnecting);
                            warn!(%reason, "kvstore session lost; reconnecting");
                            self.status.send_modify(|s| {
                                s.connected = false;
                                s.last_error = Some(reason);
                            });
                        }
                    }
                    continue;
                }
                Err(e) if failed_in_round + 1 < n => {
                    // Another member may answer: try it at once, requests keep waiting.
                    warn!(error = %e, "kvstore member unreachable; trying the next");
                    failed_in_round += 1;
                    next += 1;
                    continue;
                }
                Err(e) => {
                    failed_in_round = 0;
                    next += 1;
                    let reason = e.to_string();
                    warn!(%reason, retry_in = ?backoff, "kvstore unreachable; forwarding and enforcing with the last known state");
                    self.link.send_replace(Link::Down);
                    for req in std::mem::take(&mut self.pending) {
                        refuse(req);
                    }
                    self.status.send_modify(|s| {
                        s.connected = false;
                        s.last_error = Some(reason);
                    });
                }
            }
            let until = Instant::now() + backoff;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => break,
                    req = self.alloc_rx.recv() => match req {
                        Some(req) => refuse(req),
                        None => return,
                    },
                    Some(p) = self.publish_rx.recv() => self.queue_publish(p),
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn queue_publish(&mut self, p: PolicyPublish) {
        match p {
            PolicyPublish::Upsert(docs) => {
                for (k, y) in docs {
                    self.unpublished.insert(k, Some(y));
                }
            }
            PolicyPublish::Delete(keys) => {
                for k in keys {
                    self.unpublished.insert(k, None);
                }
            }
        }
    }

    /// Write the queued policy changes to etcd (what fails stays queued).
    async fn publish_policies(&mut self, kv: &Kvstore) -> myelin_kvstore::Result<()> {
        while let Some((key, doc)) = self.unpublished.pop_first() {
            let r = match &doc {
                Some(yaml) => kv.put_policy(&key, yaml).await,
                None => kv.delete_policy(&key).await.map(|_| ()),
            };
            match r {
                Ok(()) => {}
                Err(e @ myelin_kvstore::KvstoreError::Invalid { .. }) => {
                    warn!(%key, error = %e, "a policy the kvstore cannot hold stays on this node only");
                }
                Err(e) => {
                    self.unpublished.insert(key, doc);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// While reconnecting a request waits for the next session; while down it is refused.
    fn hold_or_refuse(&mut self, req: AllocReq) {
        if *self.link.borrow() == Link::Down {
            refuse(req);
        } else {
            self.pending.push(req);
        }
    }

    /// Answer one allocation request in a session; an etcd failure keeps an allocation for the
    /// next session and ends this one.
    async fn serve(&mut self, kv: &Kvstore, req: AllocReq) -> Result<(), String> {
        match req {
            AllocReq::Acquire { labels, reply } => match kv.allocate(&labels).await {
                Ok(id) => {
                    let _ = reply.try_send(Some(id));
                    Ok(())
                }
                Err(
                    e @ (myelin_kvstore::KvstoreError::Invalid { .. } | myelin_kvstore::KvstoreError::Exhausted { .. }),
                ) => {
                    warn!(%labels, error = %e, "allocating a cluster identity");
                    let _ = reply.try_send(None);
                    Ok(())
                }
                Err(e) => {
                    self.pending.push(AllocReq::Acquire { labels, reply });
                    Err(format!("allocating an identity: {e}"))
                }
            },
            AllocReq::Release { labels } => {
                if let Err(e) = kv.release(&labels).await {
                    warn!(%labels, error = %e, "releasing a cluster identity (its reference ends with the lease)");
                }
                Ok(())
            }
        }
    }

    /// One connected session: announce, list and watch, until the connection or lease is lost.
    async fn session(&mut self, kv: &Kvstore, n: u64) -> End {
        let s = &self.settings;
        let node = NodeRecord {
            name: s.node.clone(),
            ip: s.node_ip,
            pod_cidr: s.pod_cidr.to_string(),
            cluster: s.cluster.clone(),
        };
        if let Err(e) = kv.register_node(&node).await {
            return End::Lost(format!("registering node {}: {e}", s.node));
        }
        let desired = self.local_ips();
        if let Err(e) = kv.sync_ips(&desired.values().cloned().collect::<Vec<_>>()).await {
            return End::Lost(format!("writing this node's ipcache entries: {e}"));
        }
        self.published = desired;
        let (mut idw, mut nodew, mut ipw) =
            match (kv.watch_identities().await, kv.watch_nodes().await, kv.watch_ips().await) {
                (Ok(a), Ok(b), Ok(c)) => (a, b, c),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                    return End::Lost(format!("starting the watches: {e}"))
                }
            };
        let mut health = kv.health();
        let mut changed = self.snapshots.changed.subscribe();
        // Listings replace the last known state once each is complete (entries gone meanwhile
        // are withdrawn then, not before).
        self.identities.relist();
        self.nodes.relist();
        self.ips.relist();
        self.status.send_modify(|st| {
            st.connected = true;
            st.sessions = n;
        });
        self.link.send_replace(Link::Up);
        info!(session = n, "kvstore connected");
        // Policies applied here while etcd was away go in before the listing below.
        if let Err(e) = self.publish_policies(kv).await {
            return End::Lost(format!("writing this node's policy changes: {e}"));
        }
        let mut polw = match kv.watch_policies().await {
            Ok(w) => w,
            Err(e) => return End::Lost(format!("starting the policy watch: {e}")),
        };
        let mut pol_listing: Option<Vec<(String, String)>> = Some(Vec::new());
        // Allocations that waited for this session.
        while !self.pending.is_empty() {
            let req = self.pending.remove(0);
            if let Err(reason) = self.serve(kv, req).await {
                return End::Lost(reason);
            }
        }
        let _ = self.policy.cluster_resync();
        let mut dirty_at: Option<Instant> = None;
        let mut gc_at = Instant::now() + IDENTITY_GC;
        loop {
            let flush = async {
                match dirty_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                req = self.alloc_rx.recv() => match req {
                    Some(req) => {
                        if let Err(reason) = self.serve(kv, req).await {
                            return End::Lost(reason);
                        }
                    }
                    None => return End::Stopped,
                },
                ev = idw.next() => match ev {
                    Some(Ok(e)) => {
                        let change = match e {
                            IdentityEvent::Upsert { id, labels } => Change::Upsert(id, labels::from_kv(&labels)),
                            IdentityEvent::Delete { id } => Change::Delete(id),
                            IdentityEvent::Synced => Change::Synced,
                        };
                        dirty_at.get_or_insert(self.identities.apply(change));
                    }
                    Some(Err(e)) => return End::Lost(format!("identity watch: {e}")),
                    None => return End::Lost("identity watch ended".into()),
                },
                ev = nodew.next() => match ev {
                    Some(Ok(e)) => {
                        let change = match e {
                            NodeEvent::Upsert(rec) => Change::Upsert(rec.name.clone(), rec),
                            NodeEvent::Delete { name } => Change::Delete(name),
                            NodeEvent::Synced => Change::Synced,
                        };
                        dirty_at.get_or_insert(self.nodes.apply(change));
                    }
                    Some(Err(e)) => return End::Lost(format!("node watch: {e}")),
                    None => return End::Lost("node watch ended".into()),
                },
                ev = ipw.next() => match ev {
                    Some(Ok(e)) => {
                        let change = match e {
                            IpEvent::Upsert(rec) => Change::Upsert(rec.ip, rec),
                            IpEvent::Delete { ip } => Change::Delete(ip),
                            IpEvent::Synced => Change::Synced,
                        };
                        dirty_at.get_or_insert(self.ips.apply(change));
                    }
                    Some(Err(e)) => return End::Lost(format!("ipcache watch: {e}")),
                    None => return End::Lost("ipcache watch ended".into()),
                },
                p = self.publish_rx.recv() => {
                    let Some(p) = p else { return End::Stopped };
                    self.queue_publish(p);
                    if let Err(e) = self.publish_policies(kv).await {
                        return End::Lost(format!("writing a policy change: {e}"));
                    }
                }
                ev = polw.next() => match ev {
                    Some(Ok(PolicyEvent::Upsert { key, yaml })) => match pol_listing.as_mut() {
                        Some(l) => l.push((key, yaml)),
                        None => { let _ = self.policy.cluster_policies(vec![(key, yaml)], vec![], false); }
                    },
                    Some(Ok(PolicyEvent::Delete { key })) => {
                        let _ = self.policy.cluster_policies(vec![], vec![key], false);
                    }
                    Some(Ok(PolicyEvent::Synced)) => {
                        let listing = pol_listing.take().unwrap_or_default();
                        let _ = self.policy.cluster_policies(listing, vec![], true);
                    }
                    Some(Err(e)) => return End::Lost(format!("policy watch: {e}")),
                    None => return End::Lost("policy watch ended".into()),
                },
                r = changed.changed() => {
                    if r.is_err() { return End::Stopped; }
                    if let Err(e) = self.publish_local(kv).await {
                        return End::Lost(format!("publishing this node's pods: {e}"));
                    }
                }
                r = health.changed() => {
                    let lost = if r.is_err() { Some("lease keeper stopped".to_owned()) } else { health.borrow().clone() };
                    if let Some(reason) = lost { return End::Lost(reason); }
                }
                () = flush => {
                    dirty_at = None;
                    // Only once every listing is complete: a partial view would withdraw entries.
                    if self.identities.listed() && self.nodes.listed() && self.ips.listed() {
                        self.push().await;
                    }
                }
                () = tokio::time::sleep_until(gc_at) => {
                    gc_at = Instant::now() + IDENTITY_GC;
                    match kv.gc().await {
                        Ok(ids) if !ids.is_empty() => info!(identities = ?ids, "unused cluster identities removed"),
                        Ok(_) => {}
                        Err(e) => warn!(error = %e, "identity garbage collection"),
                    }
                }
            }
        }
    }

    /// This node's pods as ipcache entries.
    fn local_ips(&self) -> BTreeMap<Ipv4Addr, IpRecord> {
        self.snapshots
            .endpoint_list()
            .into_iter()
            .filter(|e| e.identity != 0)
            .filter_map(|e| {
                let ip: Ipv4Addr = e.ipv4.parse().ok()?;
                Some((
                    ip,
                    IpRecord {
                        ip,
                        identity: e.identity,
                        host_ip: self.settings.node_ip,
                        node: self.settings.node.clone(),
                        namespace: e.namespace.clone(),
                        pod: e.pod_name.clone(),
                    },
                ))
            })
            .collect()
    }

    /// Write what changed of this node's pods.
    async fn publish_local(&mut self, kv: &Kvstore) -> myelin_kvstore::Result<()> {
        let want = self.local_ips();
        let gone: Vec<Ipv4Addr> = self.published.keys().filter(|ip| !want.contains_key(ip)).copied().collect();
        for ip in gone {
            kv.delete_ip(ip).await?;
            self.published.remove(&ip);
        }
        for (ip, rec) in want {
            if self.published.get(&ip) != Some(&rec) {
                kv.upsert_ip(&rec).await?;
                self.published.insert(ip, rec);
            }
        }
        Ok(())
    }

    /// Hand the current view to the policy thread and the overlay.
    async fn push(&mut self) {
        let me = &self.settings.node;
        let view = ClusterView {
            identities: self.identities.live.clone(),
            remote_ips: self.ips.live.values().filter(|r| &r.node != me).map(|r| (r.ip, r.identity)).collect(),
            remote_nodes: self.nodes.live.values().filter(|n| &n.name != me).map(|n| n.ip).collect(),
        };
        if self.last_view.as_ref() != Some(&view) {
            let _ = self.policy.cluster_view(view.clone());
            self.last_view = Some(view);
            self.snapshots.publish_remote(RemoteView {
                by_ip: self
                    .ips
                    .live
                    .values()
                    .filter(|r| &r.node != me)
                    .map(|r| {
                        let pod = RemotePod {
                            identity: r.identity,
                            namespace: r.namespace.clone(),
                            pod: r.pod.clone(),
                            node: r.node.clone(),
                        };
                        (r.ip, pod)
                    })
                    .collect(),
            });
        }
        let routes: BTreeMap<Ipv4Net, Ipv4Addr> = self
            .nodes
            .live
            .values()
            .filter(|n| &n.name != me)
            .filter_map(|n| n.pod_cidr.parse::<Ipv4Net>().ok().map(|c| (c.trunc(), n.ip)))
            .collect();
        if let Some(o) = self.overlay.as_mut() {
            o.sync(&self.datapath, &routes).await;
        }
        let (nodes, ids, ips) = (
            self.nodes.live.len().saturating_sub(1),
            self.identities.live.len(),
            self.last_view.as_ref().map_or(0, |v| v.remote_ips.len()),
        );
        self.status.send_modify(|s| {
            s.nodes = nodes;
            s.identities = ids;
            s.remote_ips = ips;
        });
    }
}

/// One watched change, whatever the prefix.
enum Change<K, V> {
    Upsert(K, V),
    Delete(K),
    Synced,
}

/// A watched prefix as this node knows it: `live` is what the datapath and the policy engine
/// follow (the last known state, kept while disconnected); a new session's listing goes to
/// `next` and replaces `live` once complete, so what vanished meanwhile is withdrawn only then.
struct Watched<K, V> {
    live: BTreeMap<K, V>,
    next: Option<BTreeMap<K, V>>,
}

impl<K, V> Default for Watched<K, V> {
    fn default() -> Self {
        Self { live: BTreeMap::new(), next: None }
    }
}

impl<K: Ord, V> Watched<K, V> {
    /// A new listing starts.
    fn relist(&mut self) {
        self.next = Some(BTreeMap::new());
    }

    /// The listing is complete (changes apply to `live` directly).
    fn listed(&self) -> bool {
        self.next.is_none()
    }

    /// Apply a change; returns when to push the view (a completed listing at once, else after
    /// the debounce).
    fn apply(&mut self, change: Change<K, V>) -> Instant {
        let target = self.next.as_mut().unwrap_or(&mut self.live);
        match change {
            Change::Upsert(k, v) => {
                target.insert(k, v);
            }
            Change::Delete(k) => {
                target.remove(&k);
            }
            Change::Synced => {
                if let Some(m) = self.next.take() {
                    self.live = m;
                }
                return Instant::now();
            }
        }
        Instant::now() + DEBOUNCE
    }
}

fn refuse(req: AllocReq) {
    if let AllocReq::Acquire { reply, .. } = req {
        let _ = reply.try_send(None);
    }
}
