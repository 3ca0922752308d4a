//! The cluster component: this node's link to the cluster's shared state in etcd (Cilium's
//! kvstore mode). It owns the etcd connection; nobody else talks to etcd.
//!
//! ```text
//!  policy thread --AllocReq (blocking call, timeout; "cannot now" at once while disconnected)--+
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

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use myelin_bpf::Datapath;
use myelin_kvstore::{IdentityEvent, IpEvent, IpRecord, Kvstore, KvstoreConfig, NodeEvent, NodeRecord};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::policy::{ClusterView, PolicyHandle};
use crate::snapshot::{RemotePod, RemoteView, Snapshots};
use identities::{AllocReq, KvIdentities};
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
    connected_tx: watch::Sender<bool>,
}

/// Step 1: the allocator for the policy engine, and what the task will answer it from.
#[must_use]
pub fn prepare() -> (KvIdentities, Prepared) {
    let (tx, alloc_rx) = mpsc::unbounded_channel();
    let (connected_tx, connected) = watch::channel(false);
    (KvIdentities { tx, connected, timeout: Duration::from_secs(3) }, Prepared { alloc_rx, connected_tx })
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
    let mut connected = prepared.connected_tx.subscribe();
    let task = Task {
        settings,
        policy,
        datapath,
        snapshots,
        overlay,
        alloc_rx: prepared.alloc_rx,
        connected: prepared.connected_tx,
        status: status_tx,
        identities: BTreeMap::new(),
        nodes: BTreeMap::new(),
        ips: BTreeMap::new(),
        published: BTreeMap::new(),
        last_view: None,
    };
    tokio::spawn(task.run());
    let _ = tokio::time::timeout(first_wait, connected.wait_for(|c| *c)).await;
    status
}

struct Task {
    settings: ClusterSettings,
    policy: PolicyHandle,
    datapath: Arc<Datapath>,
    snapshots: Arc<Snapshots>,
    overlay: Option<Overlay>,
    alloc_rx: mpsc::UnboundedReceiver<AllocReq>,
    connected: watch::Sender<bool>,
    status: watch::Sender<ClusterStatus>,
    /// The cluster as last listed/watched (kept while disconnected: last known state).
    identities: BTreeMap<u32, myelin_policy::Labels>,
    nodes: BTreeMap<String, NodeRecord>,
    ips: BTreeMap<Ipv4Addr, IpRecord>,
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
/// Changes arriving within this window are pushed to the policy thread together.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// How often a node looks for identities no node references any more.
const IDENTITY_GC: Duration = Duration::from_secs(300);

impl Task {
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut sessions = 0u64;
        loop {
            let cfg =
                KvstoreConfig { cluster: self.settings.cluster.clone(), ..KvstoreConfig::new(self.settings.lease_ttl) };
            let connect = Kvstore::connect_with(&self.settings.endpoints, &self.settings.node, cfg);
            let kv = tokio::select! {
                r = connect => r,
                // Keep answering "cannot now" while connecting.
                Some(req) = self.alloc_rx.recv() => { refuse(req); continue; }
            };
            let end = match kv {
                Ok(kv) => {
                    sessions += 1;
                    backoff = BACKOFF_MIN;
                    let end = self.session(&kv, sessions).await;
                    self.connected.send_replace(false);
                    drop(kv);
                    end
                }
                Err(e) => End::Lost(e.to_string()),
            };
            match end {
                End::Stopped => return,
                End::Lost(reason) => {
                    warn!(%reason, retry_in = ?backoff, "kvstore unreachable; forwarding and enforcing with the last known state");
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
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
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
        let (mut id_next, mut node_next, mut ip_next) =
            (Some(BTreeMap::new()), Some(BTreeMap::new()), Some(BTreeMap::new()));
        self.connected.send_replace(true);
        info!(session = n, endpoints = ?s.endpoints, "kvstore connected");
        self.status.send_modify(|st| {
            st.connected = true;
            st.sessions = n;
        });
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
                    Some(AllocReq::Acquire { labels, reply }) => {
                        let r = kv.allocate(&labels).await;
                        match r {
                            Ok(id) => { let _ = reply.try_send(Some(id)); }
                            Err(e) => {
                                warn!(%labels, error = %e, "allocating a cluster identity");
                                let _ = reply.try_send(None);
                            }
                        }
                    }
                    Some(AllocReq::Release { labels }) => {
                        if let Err(e) = kv.release(&labels).await {
                            warn!(%labels, error = %e, "releasing a cluster identity");
                        }
                    }
                    None => return End::Stopped,
                },
                ev = idw.next() => match ev {
                    Some(Ok(IdentityEvent::Upsert { id, labels })) => {
                        let l = labels::from_kv(&labels);
                        match id_next.as_mut() { Some(m) => { m.insert(id, l); } None => { self.identities.insert(id, l); } }
                        dirty_at.get_or_insert(Instant::now() + DEBOUNCE);
                    }
                    Some(Ok(IdentityEvent::Delete { id })) => {
                        match id_next.as_mut() { Some(m) => { m.remove(&id); } None => { self.identities.remove(&id); } }
                        dirty_at.get_or_insert(Instant::now() + DEBOUNCE);
                    }
                    Some(Ok(IdentityEvent::Synced)) => {
                        if let Some(m) = id_next.take() { self.identities = m; }
                        dirty_at.get_or_insert(Instant::now());
                    }
                    Some(Err(e)) => return End::Lost(format!("identity watch: {e}")),
                    None => return End::Lost("identity watch ended".into()),
                },
                ev = nodew.next() => match ev {
                    Some(Ok(NodeEvent::Upsert(rec))) => {
                        match node_next.as_mut() { Some(m) => { m.insert(rec.name.clone(), rec); } None => { self.nodes.insert(rec.name.clone(), rec); } }
                        dirty_at.get_or_insert(Instant::now() + DEBOUNCE);
                    }
                    Some(Ok(NodeEvent::Delete { name })) => {
                        match node_next.as_mut() { Some(m) => { m.remove(&name); } None => { self.nodes.remove(&name); } }
                        dirty_at.get_or_insert(Instant::now() + DEBOUNCE);
                    }
                    Some(Ok(NodeEvent::Synced)) => {
                        if let Some(m) = node_next.take() { self.nodes = m; }
                        dirty_at.get_or_insert(Instant::now());
                    }
                    Some(Err(e)) => return End::Lost(format!("node watch: {e}")),
                    None => return End::Lost("node watch ended".into()),
                },
                ev = ipw.next() => match ev {
                    Some(Ok(IpEvent::Upsert(rec))) => {
                        match ip_next.as_mut() { Some(m) => { m.insert(rec.ip, rec); } None => { self.ips.insert(rec.ip, rec); } }
                        dirty_at.get_or_insert(Instant::now() + DEBOUNCE);
                    }
                    Some(Ok(IpEvent::Delete { ip })) => {
                        match ip_next.as_mut() { Some(m) => { m.remove(&ip); } None => { self.ips.remove(&ip); } }
                        dirty_at.get_or_insert(Instant::now() + DEBOUNCE);
                    }
                    Some(Ok(IpEvent::Synced)) => {
                        if let Some(m) = ip_next.take() { self.ips = m; }
                        dirty_at.get_or_insert(Instant::now());
                    }
                    Some(Err(e)) => return End::Lost(format!("ipcache watch: {e}")),
                    None => return End::Lost("ipcache watch ended".into()),
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
                    if id_next.is_none() && node_next.is_none() && ip_next.is_none() {
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
            identities: self.identities.clone(),
            remote_ips: self.ips.values().filter(|r| &r.node != me).map(|r| (r.ip, r.identity)).collect(),
        };
        if self.last_view.as_ref() != Some(&view) {
            let _ = self.policy.cluster_view(view.clone());
            self.last_view = Some(view);
            self.snapshots.publish_remote(RemoteView {
                by_ip: self
                    .ips
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
            .values()
            .filter(|n| &n.name != me)
            .filter_map(|n| n.pod_cidr.parse::<Ipv4Net>().ok().map(|c| (c.trunc(), n.ip)))
            .collect();
        if let Some(o) = self.overlay.as_mut() {
            o.sync(&self.datapath, &routes).await;
        }
        let (nodes, ids, ips) = (
            self.nodes.len().saturating_sub(1),
            self.identities.len(),
            self.last_view.as_ref().map_or(0, |v| v.remote_ips.len()),
        );
        self.status.send_modify(|s| {
            s.nodes = nodes;
            s.identities = ids;
            s.remote_ips = ips;
        });
    }
}

fn refuse(req: AllocReq) {
    if let AllocReq::Acquire { reply, .. } = req {
        let _ = reply.try_send(None);
    }
}
