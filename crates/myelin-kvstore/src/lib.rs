//! Cluster-wide state on etcd v3: security identity allocation (the same label set gets the same
//! numeric identity on every node), the node registry and the ipcache (which node hosts which
//! endpoint address, with which identity).
//!
//! # Key layout
//!
//! Cilium's kvstore layout, under our name. Identities live under [`KvstoreConfig::prefix`]
//! (default [`DEFAULT_PREFIX`] = `myelin/state/identities/v1`; Cilium uses
//! `cilium/state/identities/v1`):
//!
//! - `<prefix>/id/<id>` -> the label set, canonical encoding (see [`labels`]), e.g.
//!   `k8s:app=web;k8s:io.kubernetes.pod.namespace=default`. `<id>` is decimal. Not bound to a
//!   lease: it outlives the nodes that use it until [`Kvstore::gc`] removes it.
//! - `<prefix>/value/<labels>/<node>` -> `<id>`: node `<node>`'s reference to the identity,
//!   bound to that node's lease, so it disappears when the node stops renewing it.
//!
//! Per-node state lives under [`KvstoreConfig::state_root`] (default [`DEFAULT_STATE_ROOT`] =
//! `myelin/state`; Cilium's is `cilium/state`) and [`KvstoreConfig::cluster`] (default
//! [`DEFAULT_CLUSTER`]), each key bound to the lease of the node that wrote it:
//!
//! - `<state_root>/nodes/v1/<cluster>/<node>` -> [`NodeRecord`] as JSON, e.g.
//!   `{"Name":"node-a","IPv4":"192.168.0.2","IPv4AllocCIDR":"10.0.1.0/24","Cluster":"default"}`
//!   (Cilium: `cilium/state/nodes/v1/<cluster>/<node>`). Written by [`Kvstore::register_node`].
//! - `<state_root>/ip/v1/<cluster>/<ip>` -> [`IpRecord`] as JSON, e.g.
//!   `{"IP":"10.0.1.5","ID":300,"HostIP":"192.168.0.2","Node":"node-a",`
//!   `"K8sNamespace":"default","K8sPodName":"web-1"}`
//!   (Cilium: `cilium/state/ip/v1/<cluster>/<ip>`; `<ip>` is dotted IPv4). Written by
//!   [`Kvstore::upsert_ip`] and [`Kvstore::sync_ips`]. The last writer of an address owns it;
//!   [`Kvstore::delete_ip`] deletes only a key bound to this node's lease.
//!
//! The JSON field names are Cilium's where it has the field; the documents are not meant to be
//! read by Cilium (its node object has a list of addresses, not one `IPv4`).
//!
//! # Allocation
//!
//! [`Kvstore::allocate`] reuses the id of an existing reference (any node's) or of an existing
//! `id/` key holding the labels (adopting it with a transaction that checks the `id/` key still
//! holds them). Otherwise it picks a free id in the configured range (default 256..=65535, like
//! Cilium's cluster-wide range), starting from a hash of the labels so racing nodes with the same
//! labels try the same id, and claims it with one transaction that requires both that the `id/`
//! key was never created (`create_revision == 0`) and that no reference to the labels was written
//! since it read none (a range compare over `value/<labels>/`: every key's `mod_revision` is at
//! most the read's revision, so a malformed reference that was already there does not block the
//! labels forever); it then writes the `id/` key and this node's
//! reference. A node that loses the race re-reads and adopts the winner's id, so one label set
//! never gets two ids even when nodes allocate it at the same moment.
//!
//! # Watches
//!
//! [`Kvstore::watch_identities`], [`Kvstore::watch_nodes`] and [`Kvstore::watch_ips`] deliver
//! the current content as upserts, then a `Synced` event, then every change from the listing's
//! revision + 1, so nothing is missed or seen twice between the two. Node and ipcache watches
//! cover this node's cluster only. A watch that fails (etcd unreachable, its revision compacted)
//! delivers one error and ends.
//!
//! Malformed content under a prefix (a foreign key, a non-numeric id, a value that is not a
//! canonical label set, JSON that does not decode, a record whose name, address or cluster
//! differs from its key, identity 0, a pod CIDR that is not an IPv4 network) is logged with
//! `tracing::warn` and skipped, in listings and in the watch alike; the deletion of a
//! well-formed key is reported even if its value was skipped.
//!
//! # Liveness
//!
//! Every request fails with [`KvstoreError::Timeout`] after [`KvstoreConfig::request_timeout`]
//! instead of waiting for a dead etcd, and HTTP/2 keep-alive pings drop a silent connection (so
//! watches on it fail) within about twice that. The lease counts as lost ([`Kvstore::health`]
//! turns `Some(reason)`) when etcd reports it expired, when the keep-alive stream fails, or when
//! no renewal has been confirmed for a whole TTL; writes then fail with
//! [`KvstoreError::LeaseLost`].
//!
//! # Out of scope
//!
//! Reconnecting is the caller's job: a [`Kvstore`] whose lease is lost, or a watch that ended
//! with an error, is not repaired. The caller connects a new [`Kvstore`] (a new lease), writes
//! this node's state again ([`Kvstore::register_node`], [`Kvstore::sync_ips`] with the full
//! desired set, [`Kvstore::allocate`] for identities in use) and starts new watches, whose
//! listings replace what it knew. Also not here: IPv6 and CIDR entries in the ipcache, watching
//! other clusters, and caching (every allocation reads the `id/` range).

pub mod labels;
mod podcidrs;
mod policies;
mod state;
mod watching;

use std::collections::HashSet;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KeyValue, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, warn};

pub use labels::{Label, Labels};
pub use policies::{PolicyEvent, PolicyWatch};
pub use state::{IpEvent, IpRecord, IpWatch, NodeEvent, NodeRecord, NodeWatch, SyncStats};
pub use watching::Watch;

/// Cilium's `cilium/state/identities/v1`, under our name.
pub const DEFAULT_PREFIX: &str = "myelin/state/identities/v1";
/// First id of the default cluster-wide range (Cilium's too; lower ids are reserved).
pub const DEFAULT_ID_MIN: u32 = 256;
/// Last id of the default cluster-wide range.
pub const DEFAULT_ID_MAX: u32 = 65535;
/// Root of the node registry and the ipcache (Cilium's `cilium/state`, under our name).
pub const DEFAULT_STATE_ROOT: &str = "myelin/state";
/// The cluster name used in node and ipcache keys unless configured (Cilium's default too).
pub const DEFAULT_CLUSTER: &str = "default";
/// How long one etcd request may take before it fails with [`KvstoreError::Timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How many read-and-claim rounds [`Kvstore::allocate`] tries before giving up.
const MAX_ATTEMPTS: u32 = 32;

#[derive(Debug, thiserror::Error)]
pub enum KvstoreError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("etcd {op} failed: {source}")]
    Etcd {
        op: String,
        #[source]
        source: Box<etcd_client::Error>,
    },
    #[error("no free identity in {min}..={max}: every id is taken")]
    Exhausted { min: u32, max: u32 },
    #[error("allocating an identity for `{labels}` did not settle after {attempts} attempts (etcd contention or inconsistent references)")]
    Contention { labels: String, attempts: u32 },
    #[error("etcd {op} got no answer within {after:?} (request_timeout): check that etcd is up and reachable")]
    Timeout { op: String, after: Duration },
    #[error("this node's etcd lease {lease_id:x} is gone ({reason}); its keys are no longer kept: connect a new Kvstore and resync this node's state")]
    LeaseLost { lease_id: i64, reason: String },
}

pub type Result<T, E = KvstoreError> = std::result::Result<T, E>;

fn etcd_err(op: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> KvstoreError {
    let op = op.into();
    move |source| KvstoreError::Etcd { op, source: Box::new(source) }
}

/// Runs one etcd request, failing with [`KvstoreError::Timeout`] if it does not finish within
/// `after`. The channel's own timeout (`ConnectOptions::with_timeout`, the same duration) covers
/// a connected endpoint only; a request waiting for a connection to a dead endpoint is bounded
/// here. Whichever fires first, the error is the same.
async fn bounded<T>(
    after: Duration,
    op: impl Into<String>,
    fut: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(after, fut).await {
        // tonic reports its channel timeout as a `Cancelled` status with this message.
        Ok(Err(etcd_client::Error::GRpcStatus(s))) if s.message() == "Timeout expired" => {
            Err(KvstoreError::Timeout { op: op.into(), after })
        }
        Ok(r) => r.map_err(etcd_err(op)),
        Err(_) => Err(KvstoreError::Timeout { op: op.into(), after }),
    }
}

/// Settings; [`KvstoreConfig::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct KvstoreConfig {
    /// Key prefix of the identities, without a trailing `/` (default [`DEFAULT_PREFIX`]).
    pub prefix: String,
    /// Root of the node registry and the ipcache, without a trailing `/` (default
    /// [`DEFAULT_STATE_ROOT`]). Independent of `prefix`, which names the identities in full.
    pub state_root: String,
    /// This node's cluster, the `<cluster>` segment of node and ipcache keys (default
    /// [`DEFAULT_CLUSTER`]): 1..=63 lowercase ASCII letters, digits and '-', starting and
    /// ending with a letter or digit.
    pub cluster: String,
    /// Allocation range, inclusive.
    pub id_min: u32,
    pub id_max: u32,
    /// TTL of this node's lease (whole seconds, rounded up; at least 1 s). Renewed every third.
    pub lease_ttl: Duration,
    /// How long connecting to etcd may take.
    pub connect_timeout: Duration,
    /// How long one request may take (default [`DEFAULT_REQUEST_TIMEOUT`]); also the HTTP/2
    /// keep-alive interval and ping timeout, so a connection to a dead or frozen etcd is dropped
    /// (and a watch on it fails) within about twice this.
    pub request_timeout: Duration,
}

impl KvstoreConfig {
    pub fn new(lease_ttl: Duration) -> Self {
        KvstoreConfig {
            prefix: DEFAULT_PREFIX.to_string(),
            state_root: DEFAULT_STATE_ROOT.to_string(),
            cluster: DEFAULT_CLUSTER.to_string(),
            id_min: DEFAULT_ID_MIN,
            id_max: DEFAULT_ID_MAX,
            lease_ttl,
            connect_timeout: Duration::from_secs(5),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |field, reason: String| Err(KvstoreError::Invalid { field, reason });
        if self.prefix.is_empty() || self.prefix.ends_with('/') || !printable_no_space(&self.prefix) {
            return bad("prefix", format!("`{}`: must be non-empty, printable, without a trailing '/'", self.prefix));
        }
        if self.state_root.is_empty() || self.state_root.ends_with('/') || !printable_no_space(&self.state_root) {
            return bad(
                "state_root",
                format!("`{}`: must be non-empty, printable, without a trailing '/'", self.state_root),
            );
        }
        validate_cluster(&self.cluster)?;
        if self.id_min == 0 || self.id_min > self.id_max {
            return bad("id_range", format!("{}..={}: must be non-empty and start above 0", self.id_min, self.id_max));
        }
        if self.lease_ttl < Duration::from_secs(1) || self.lease_ttl > Duration::from_secs(86_400) {
            return bad("lease_ttl", format!("{:?}: must be between 1 s and 1 day", self.lease_ttl));
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be above zero".to_string());
        }
        if self.request_timeout < Duration::from_millis(10) || self.request_timeout > Duration::from_secs(3600) {
            return bad("request_timeout", format!("{:?}: must be between 10 ms and 1 hour", self.request_timeout));
        }
        Ok(())
    }
}

fn printable_no_space(s: &str) -> bool {
    s.chars().all(|c| !c.is_control() && !c.is_whitespace())
}

/// A DNS label: what Kubernetes and Cilium accept as a cluster name, and never a key separator.
fn validate_cluster(cluster: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let ok = !cluster.is_empty()
        && cluster.len() <= 63
        && cluster.chars().all(ok_char)
        && !cluster.starts_with('-')
        && !cluster.ends_with('-');
    if !ok {
        return Err(KvstoreError::Invalid {
            field: "cluster",
            reason: format!(
                "`{cluster}`: must be a DNS label: 1..=63 of a-z, 0-9 and '-', not starting or ending with '-'"
            ),
        });
    }
    Ok(())
}

fn validate_node(node: &str) -> Result<()> {
    if node.is_empty() || node.len() > 253 || node.contains('/') || !printable_no_space(node) {
        return Err(KvstoreError::Invalid {
            field: "node_name",
            reason: format!("`{node}`: must be 1..=253 printable characters without whitespace or '/'"),
        });
    }
    Ok(())
}

/// A change to the identity table, from [`Kvstore::watch_identities`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityEvent {
    /// `id` exists (or changed) and holds `labels`.
    Upsert { id: u32, labels: Labels },
    /// `id` was deleted.
    Delete { id: u32 },
    /// The initial listing has been delivered; events after this come from the etcd watch.
    Synced,
}

/// The receiving end of [`Kvstore::watch_identities`]; dropping it stops the watch.
pub type IdentityWatch = Watch<IdentityEvent>;

/// One node's connection to the cluster's etcd, with the node's lease kept alive in the
/// background for as long as this value lives.
pub struct Kvstore {
    client: Client,
    node: String,
    lease_id: i64,
    cfg: KvstoreConfig,
    lease_state: watch::Receiver<Option<String>>,
    keepalive: JoinHandle<()>,
}

impl Drop for Kvstore {
    fn drop(&mut self) {
        // The lease is not revoked here (that needs a round trip): it expires after its TTL.
        // `close` revokes it at once.
        self.keepalive.abort();
    }
}

impl Kvstore {
    /// Connects with the default settings and this lease TTL; see [`Kvstore::connect_with`].
    pub async fn connect<E: AsRef<str>>(endpoints: &[E], node_name: &str, lease_ttl: Duration) -> Result<Self> {
        Self::connect_with(endpoints, node_name, KvstoreConfig::new(lease_ttl)).await
    }

    /// Connects to etcd (`endpoints` like `http://127.0.0.1:2379`), grants this node's lease and
    /// keeps it alive in a background task.
    pub async fn connect_with<E: AsRef<str>>(endpoints: &[E], node_name: &str, cfg: KvstoreConfig) -> Result<Self> {
        let eps: Vec<String> = endpoints.iter().map(|e| e.as_ref().trim().to_string()).collect();
        if eps.is_empty() || eps.iter().any(String::is_empty) {
            return Err(KvstoreError::Invalid {
                field: "endpoints",
                reason: format!("{eps:?}: need at least one non-empty etcd endpoint"),
            });
        }
        validate_node(node_name)?;
        cfg.validate()?;
        let shown = eps.join(",");
        let rt = cfg.request_timeout;
        let opts = ConnectOptions::new()
            .with_connect_timeout(cfg.connect_timeout)
            .with_timeout(rt)
            .with_keep_alive(rt, rt)
            .with_keep_alive_while_idle(true);
        let mut client = match tokio::time::timeout(cfg.connect_timeout, Client::connect(&eps, Some(opts))).await {
            Ok(r) => r.map_err(etcd_err(format!("connect to {shown}")))?,
            Err(_) => {
                return Err(KvstoreError::Timeout { op: format!("connect to {shown}"), after: cfg.connect_timeout })
            }
        };
        let ttl = cfg.lease_ttl.as_secs() as i64 + i64::from(cfg.lease_ttl.subsec_nanos() > 0);
        let grant = bounded(rt, format!("lease grant (TTL {ttl} s) at {shown}"), client.lease_grant(ttl, None)).await?;
        let lease_id = grant.id();
        let (keeper, stream) =
            bounded(rt, format!("lease {lease_id:x} keep-alive"), client.lease_keep_alive(lease_id)).await?;
        // Renew three times per TTL (etcd may grant a longer TTL than asked; use what it granted).
        let granted = Duration::from_secs(grant.ttl().max(1) as u64);
        let interval = (granted / 3).max(Duration::from_millis(200));
        let (tx, lease_state) = watch::channel(None);
        let keepalive = tokio::spawn(keep_lease_alive(keeper, stream, lease_id, interval, granted, tx));
        Ok(Kvstore { client, node: node_name.to_string(), lease_id, cfg, lease_state, keepalive })
    }

    pub fn node_name(&self) -> &str {
        &self.node
    }

    pub fn lease_id(&self) -> i64 {
        self.lease_id
    }

    pub fn config(&self) -> &KvstoreConfig {
        &self.cfg
    }

    /// The state of this node's lease: `None` while it is kept alive, `Some(reason)` once it is
    /// lost (etcd reported it expired, the keep-alive stream failed, or no keep-alive answer
    /// arrived for a whole TTL). Lost is final: every key bound to the lease is gone or about
    /// to go, and calls that write with it fail with [`KvstoreError::LeaseLost`]. The caller
    /// then connects a new [`Kvstore`] and writes this node's state again (e.g.
    /// [`Kvstore::register_node`], [`Kvstore::sync_ips`]).
    pub fn health(&self) -> watch::Receiver<Option<String>> {
        self.lease_state.clone()
    }

    /// Stops renewing and revokes the lease, so this node's keys go at once.
    pub async fn close(mut self) -> Result<()> {
        self.keepalive.abort();
        let lease = self.lease_id;
        bounded(self.cfg.request_timeout, format!("lease {lease:x} revoke"), self.client.lease_revoke(lease)).await?;
        Ok(())
    }

    fn check_lease(&self) -> Result<()> {
        match self.lease_state.borrow().as_ref() {
            None => Ok(()),
            Some(reason) => Err(KvstoreError::LeaseLost { lease_id: self.lease_id, reason: reason.clone() }),
        }
    }

    fn id_prefix(&self) -> String {
        format!("{}/id/", self.cfg.prefix)
    }

    fn id_key(&self, id: u32) -> String {
        format!("{}/id/{id}", self.cfg.prefix)
    }

    fn value_root(&self) -> String {
        format!("{}/value/", self.cfg.prefix)
    }

    fn value_prefix(&self, canon: &str) -> String {
        format!("{}/value/{canon}/", self.cfg.prefix)
    }

    fn value_key(&self, canon: &str) -> String {
        format!("{}/value/{canon}/{}", self.cfg.prefix, self.node)
    }

    async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        let mut client = self.client.clone();
        let mut resp = bounded(
            self.cfg.request_timeout,
            format!("get {prefix}*"),
            client.get(prefix, Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok((resp.take_kvs(), rev))
    }

    async fn txn(&self, txn: Txn, what: &str) -> Result<etcd_client::TxnResponse> {
        let mut client = self.client.clone();
        bounded(self.cfg.request_timeout, format!("transaction ({what})"), client.txn(txn)).await
    }

    /// The cluster-wide identity of `labels`, allocating one if no node has; records this node's
    /// reference to it (bound to this node's lease).
    pub async fn allocate(&self, labels: &Labels) -> Result<u32> {
        let canon = labels.canonical();
        for _ in 0..MAX_ATTEMPTS {
            self.check_lease()?;
            // 1. Any node's reference to these labels.
            let (refs, refs_rev) = self.get_prefix(&self.value_prefix(&canon)).await?;
            let mut referenced: Vec<u32> = Vec::new();
            for kv in &refs {
                match parse_reference(&self.cfg.prefix, kv) {
                    Some((l, _node, id)) if l == canon => referenced.push(id),
                    Some(_) => {} // labels that merely share our prefix cannot occur (see labels.rs), skip
                    None => {}
                }
            }
            referenced.sort_unstable();
            referenced.dedup();
            if referenced.len() > 1 {
                warn!(labels = %canon, ids = ?referenced, "references disagree on the identity of one label set; using the lowest");
            }
            let mut adopted = false;
            for id in &referenced {
                if self.adopt(*id, &canon).await? {
                    return Ok(*id);
                }
                adopted = true;
            }
            if adopted {
                // The referenced id no longer holds these labels (or the race moved on): re-read.
                continue;
            }
            // 2. An `id/` key that holds these labels (its references may all have expired).
            let (ids, _) = self.get_prefix(&self.id_prefix()).await?;
            let mut used = HashSet::new();
            let mut existing: Option<u32> = None;
            for kv in &ids {
                let Some(id) = parse_id_key(&self.cfg.prefix, kv.key()) else { continue };
                used.insert(id);
                if kv.value() == canon.as_bytes() {
                    existing = Some(existing.map_or(id, |e: u32| e.min(id)));
                }
            }
            if let Some(id) = existing {
                if self.adopt(id, &canon).await? {
                    return Ok(id);
                }
                continue;
            }
            // 3. A new id, claimed atomically.
            let id = self.pick_free(&used, &canon)?;
            let txn = Txn::new()
                .when([
                    Compare::create_revision(self.id_key(id), CompareOp::Equal, 0),
                    // No reference to these labels was written since step 1 read none (keys
                    // already there then are malformed ones, skipped above).
                    Compare::mod_revision(self.value_prefix(&canon), CompareOp::Less, refs_rev + 1).with_prefix(),
                ])
                .and_then([
                    TxnOp::put(self.id_key(id), canon.clone(), None),
                    TxnOp::put(
                        self.value_key(&canon),
                        id.to_string(),
                        Some(PutOptions::new().with_lease(self.lease_id)),
                    ),
                ]);
            if self.txn(txn, "claim a new identity").await?.succeeded() {
                return Ok(id);
            }
            // Lost a race: another node took this id or allocated these labels. Re-read.
        }
        Err(KvstoreError::Contention { labels: canon, attempts: MAX_ATTEMPTS })
    }

    /// Adds this node's reference to `id` if `id/<id>` holds `canon` (or is missing, when it is
    /// recreated from a surviving reference). False when `id/<id>` holds other labels.
    async fn adopt(&self, id: u32, canon: &str) -> Result<bool> {
        let put_ref =
            TxnOp::put(self.value_key(canon), id.to_string(), Some(PutOptions::new().with_lease(self.lease_id)));
        let txn =
            Txn::new().when([Compare::value(self.id_key(id), CompareOp::Equal, canon)]).and_then([put_ref.clone()]);
        if self.txn(txn, "reference an identity").await?.succeeded() {
            return Ok(true);
        }
        let txn = Txn::new()
            .when([Compare::create_revision(self.id_key(id), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(self.id_key(id), canon, None), put_ref]);
        let recreated = self.txn(txn, "recreate a referenced identity").await?.succeeded();
        if recreated {
            warn!(id, labels = %canon, "identity key was missing while references to it existed; recreated it");
        }
        Ok(recreated)
    }

    fn pick_free(&self, used: &HashSet<u32>, canon: &str) -> Result<u32> {
        let (min, max) = (self.cfg.id_min, self.cfg.id_max);
        let size = u64::from(max - min) + 1;
        let start = fnv1a(canon.as_bytes()) % size;
        (0..size)
            .map(|i| min + ((start + i) % size) as u32)
            .find(|id| !used.contains(id))
            .ok_or(KvstoreError::Exhausted { min, max })
    }

    /// Deletes this node's reference to `labels`; true if there was one.
    pub async fn release(&self, labels: &Labels) -> Result<bool> {
        let key = self.value_key(&labels.canonical());
        let mut client = self.client.clone();
        let resp =
            bounded(self.cfg.request_timeout, format!("delete {key}"), client.delete(key.as_str(), None)).await?;
        Ok(resp.deleted() > 0)
    }

    /// The labels of `id`, if it exists (malformed content is logged and reads as absent).
    pub async fn lookup(&self, id: u32) -> Result<Option<Labels>> {
        let key = self.id_key(id);
        let mut client = self.client.clone();
        let resp = bounded(self.cfg.request_timeout, format!("get {key}"), client.get(key.as_str(), None)).await?;
        Ok(resp.kvs().first().and_then(|kv| parse_id_labels(&key, kv.value())))
    }

    /// Every identity now (as [`IdentityEvent::Upsert`]s, by id, then [`IdentityEvent::Synced`]),
    /// then each change as the etcd watch reports it, starting right after the listing's revision.
    pub async fn watch_identities(&self) -> Result<IdentityWatch> {
        let prefix = self.cfg.prefix.clone();
        let order = |e: &IdentityEvent| match e {
            IdentityEvent::Upsert { id, .. } | IdentityEvent::Delete { id } => *id,
            IdentityEvent::Synced => u32::MAX,
        };
        self.watch_prefix(
            "identity",
            self.id_prefix(),
            move |kind, kv| decode_event(&prefix, kind, kv),
            order,
            IdentityEvent::Synced,
        )
        .await
    }

    /// Deletes every `id/<id>` whose label set no node references any more, each in a transaction
    /// that requires the key unchanged since it was read and no reference to its labels (so an
    /// allocation that adopts it concurrently either wins, and the key stays, or fails and
    /// retries). Returns the deleted ids. Malformed `id/` content is left alone.
    pub async fn gc(&self) -> Result<Vec<u32>> {
        let (ids, _) = self.get_prefix(&self.id_prefix()).await?;
        let (refs, _) = self.get_prefix(&self.value_root()).await?;
        let referenced: HashSet<String> =
            refs.iter().filter_map(|kv| parse_reference(&self.cfg.prefix, kv)).map(|(l, _, _)| l).collect();
        let mut deleted = Vec::new();
        for kv in &ids {
            let Some(id) = parse_id_key(&self.cfg.prefix, kv.key()) else { continue };
            let key = self.id_key(id);
            let Some(labels) = parse_id_labels(&key, kv.value()) else { continue };
            let canon = labels.canonical();
            if referenced.contains(&canon) {
                continue;
            }
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision()),
                    Compare::create_revision(self.value_prefix(&canon), CompareOp::Equal, 0).with_prefix(),
                ])
                .and_then([TxnOp::delete(key.as_str(), Some(DeleteOptions::new()))]);
            let resp = self.txn(txn, "delete an unreferenced identity").await?;
            let removed = resp.op_responses().iter().any(|r| matches!(r, TxnOpResponse::Delete(d) if d.deleted() > 0));
            if resp.succeeded() && removed {
                deleted.push(id);
            }
        }
        Ok(deleted)
    }
}

/// Renews the lease every `interval`. The lease counts as lost on the first failure, or when no
/// renewal has been confirmed for a whole `ttl`: by then etcd has expired it (or soon will), so
/// waiting longer for a silent etcd would only hide that this node's keys are gone.
async fn keep_lease_alive(
    mut keeper: LeaseKeeper,
    mut stream: LeaseKeepAliveStream,
    lease_id: i64,
    interval: Duration,
    ttl: Duration,
    state: watch::Sender<Option<String>>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut confirmed = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let renew = async {
            keeper.keep_alive().await.map_err(|e| format!("sending a keep-alive failed: {e}"))?;
            match stream.message().await {
                Ok(Some(resp)) if resp.ttl() > 0 => Ok(()),
                Ok(Some(_)) => Err("etcd reports the lease expired".to_string()),
                Ok(None) => Err("etcd closed the keep-alive stream".to_string()),
                Err(e) => Err(format!("keep-alive stream failed: {e}")),
            }
        };
        let failure = match tokio::time::timeout_at(confirmed + ttl, renew).await {
            Ok(Ok(())) => {
                confirmed = tokio::time::Instant::now();
                None
            }
            Ok(Err(reason)) => Some(reason),
            Err(_) => Some(format!("no keep-alive answer from etcd for {ttl:?} (the lease TTL)")),
        };
        if let Some(reason) = failure {
            error!(lease = format!("{lease_id:x}"), %reason, "etcd lease lost");
            let _ = state.send(Some(reason));
            return;
        }
    }
}

/// FNV-1a, 64 bit: a stable hash (the same on every node and build) for the first id to try.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// `<prefix>/id/<id>` -> id; anything else under `id/` is logged and skipped.
fn parse_id_key(prefix: &str, key: &[u8]) -> Option<u32> {
    let shown = String::from_utf8_lossy(key);
    let rest = shown.strip_prefix(prefix).and_then(|r| r.strip_prefix("/id/"));
    match rest.map(|r| (r, r.parse::<u32>())) {
        Some((r, Ok(id))) if id > 0 && r == id.to_string() => Some(id),
        _ => {
            warn!(key = %shown, "skipping a key under the identity prefix that is not `id/<decimal id>`");
            None
        }
    }
}

fn parse_id_labels(key: &str, value: &[u8]) -> Option<Labels> {
    let parsed = std::str::from_utf8(value)
        .map_err(|e| e.to_string())
        .and_then(|s| Labels::parse_canonical(s).map_err(|e| e.to_string()));
    match parsed {
        Ok(l) => Some(l),
        Err(e) => {
            warn!(%key, error = %e, "skipping an identity whose value is not a canonical label set");
            None
        }
    }
}

/// `<prefix>/value/<labels>/<node>` -> `<id>` as (labels, node, id); malformed ones are logged
/// and skipped.
fn parse_reference(prefix: &str, kv: &KeyValue) -> Option<(String, String, u32)> {
    let key = String::from_utf8_lossy(kv.key());
    let parsed = key
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix("/value/"))
        .and_then(|r| r.rsplit_once('/'))
        .filter(|(labels, node)| !node.is_empty() && Labels::parse_canonical(labels).is_ok());
    let id = std::str::from_utf8(kv.value()).ok().and_then(|v| v.parse::<u32>().ok()).filter(|id| *id > 0);
    match (parsed, id) {
        (Some((labels, node)), Some(id)) => Some((labels.to_string(), node.to_string(), id)),
        _ => {
            warn!(key = %key, value = %String::from_utf8_lossy(kv.value()), "skipping a malformed identity reference");
            None
        }
    }
}

fn decode_event(prefix: &str, kind: EventType, kv: &KeyValue) -> Option<IdentityEvent> {
    let id = parse_id_key(prefix, kv.key())?;
    match kind {
        EventType::Delete => Some(IdentityEvent::Delete { id }),
        EventType::Put => {
            let key = String::from_utf8_lossy(kv.key());
            parse_id_labels(&key, kv.value()).map(|labels| IdentityEvent::Upsert { id, labels })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn config_and_node_are_checked_naming_the_field() {
        let mut c = KvstoreConfig::new(Duration::from_millis(500));
        assert!(c.validate().unwrap_err().to_string().contains("invalid lease_ttl"));
        c.lease_ttl = Duration::from_secs(2);
        c.id_min = 10;
        c.id_max = 9;
        assert!(c.validate().unwrap_err().to_string().contains("invalid id_range"));
        c.id_max = 10;
        c.prefix = "myelin/".into();
        assert!(c.validate().unwrap_err().to_string().contains("invalid prefix"));
        c.prefix = DEFAULT_PREFIX.into();
        assert!(c.validate().is_ok());
        c.state_root = "".into();
        assert!(c.validate().unwrap_err().to_string().contains("invalid state_root"));
        c.state_root = DEFAULT_STATE_ROOT.into();
        for bad in ["", "a/b", "Prod", "-x", "x-", "a_b", &"x".repeat(64)] {
            c.cluster = bad.to_string();
            assert!(c.validate().unwrap_err().to_string().contains("invalid cluster"), "{bad}");
        }
        c.cluster = "prod-eu-1".into();
        c.request_timeout = Duration::ZERO;
        assert!(c.validate().unwrap_err().to_string().contains("invalid request_timeout"));
        c.request_timeout = DEFAULT_REQUEST_TIMEOUT;
        assert!(c.validate().is_ok());
        assert!(validate_node("a/b").unwrap_err().to_string().contains("invalid node_name"));
        assert!(validate_node("").is_err());
        assert!(validate_node("node-1").is_ok());
    }

    #[test]
    fn id_keys_parse_strictly() {
        let p = DEFAULT_PREFIX;
        assert_eq!(parse_id_key(p, format!("{p}/id/256").as_bytes()), Some(256));
        for bad in ["abc", "0256", "0", "-1", "256/x", "99999999999", ""] {
            assert_eq!(parse_id_key(p, format!("{p}/id/{bad}").as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn fnv_is_stable() {
        // Every node must agree on the first id to try: this pins the function.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
