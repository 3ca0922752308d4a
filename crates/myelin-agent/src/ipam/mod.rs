//! The IPAM component: one thread that owns the node's address pool and its
//! rows in the store, and publishes an [`IpamState`] snapshot after every
//! change (what `GET /v1/ipam` serves, without asking the thread).
//!
//! ```text
//!   plumbing task of an ADD --IpamCmd::Allocate--> [ipam thread] --> store: allocation row + cursor
//!        (answered with the address)                    |               (one transaction, fsynced)
//!   endpoints thread (DEL done, record removed)         +--> Snapshots::ipam (ArcSwap)
//!        --IpamCmd::Release (fire and forget)-->        |
//! ```
//!
//! Crash consistency with the endpoint records (written by the endpoints
//! component) comes from the order of the two writes: an address is booked
//! before its endpoint record exists and released after the record is gone,
//! so every endpoint record has its allocation. A crash in between leaves an
//! allocation without a record, which [`restore`] releases on the next start.
//! Commands are served in order: a release sent before an allocation is done
//! before it (a DEL's address is free for the ADD that follows it).

mod pool;

pub use pool::{Ipam, IpamError};

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use myelin_api::{Allocation, IpamState};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::snapshot::Snapshots;
use crate::store::{Snapshot, Store, StoreError};

type Reply<T> = oneshot::Sender<Result<T, IpamError>>;

/// What the IPAM component is asked to do.
pub enum IpamCmd {
    /// Book the next free address for `owner` (a container interface).
    Allocate { owner: String, reply: Reply<Ipv4Addr> },
    /// Release `ip` if `owner` holds it; answers whether it did.
    Release { ip: Ipv4Addr, owner: String, reply: Option<Reply<bool>> },
    /// Debug: keep the component busy for a while; answered as the stall begins.
    Stall { duration: Duration, reply: oneshot::Sender<()> },
}

/// Sends commands to the IPAM component.
#[derive(Clone)]
pub struct IpamHandle {
    tx: mpsc::UnboundedSender<IpamCmd>,
}

impl IpamHandle {
    /// The next free address, booked in the store for `owner`.
    pub async fn allocate(&self, owner: &str) -> Result<Ipv4Addr, IpamError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(IpamCmd::Allocate { owner: owner.to_owned(), reply: tx }).map_err(|_| IpamError::Gone)?;
        rx.await.map_err(|_| IpamError::Gone)?
    }

    /// Release `ip` if `owner` holds it, and wait until it is released in the store.
    pub async fn release(&self, ip: Ipv4Addr, owner: &str) -> Result<bool, IpamError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(IpamCmd::Release { ip, owner: owner.to_owned(), reply: Some(tx) }).map_err(|_| IpamError::Gone)?;
        rx.await.map_err(|_| IpamError::Gone)?
    }

    /// Release without waiting for the answer; ordered before any later command.
    /// A failure is logged (the address stays booked and the next start releases it).
    pub fn release_later(&self, ip: Ipv4Addr, owner: &str) {
        if self.tx.send(IpamCmd::Release { ip, owner: owner.to_owned(), reply: None }).is_err() {
            warn!(%ip, %owner, "the IPAM component is not running; the address is released on the next start");
        }
    }

    pub async fn stall(&self, duration: Duration) -> Result<(), IpamError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(IpamCmd::Stall { duration, reply: tx }).map_err(|_| IpamError::Gone)?;
        rx.await.map_err(|_| IpamError::Gone)
    }
}

/// Rebuild the pool from the store: allocations whose owner has an endpoint
/// record are kept; the others (left by an ADD a crash interrupted) are
/// released in the store and returned, so that their owner's leftovers can be
/// removed.
pub fn restore(
    store: &Store,
    snap: &Snapshot,
    pod_cidr: ipnet::Ipv4Net,
    owners: &HashSet<String>,
) -> Result<(Ipam, Vec<(Ipv4Addr, String)>), StoreError> {
    let mut pool = Ipam::new(pod_cidr);
    if let Some(c) = snap.ipam_cursor {
        pool.set_cursor(c);
    }
    let mut orphans = Vec::new();
    for (ip, owner) in &snap.allocations {
        if owners.contains(owner) {
            if let Err(e) = pool.reserve(*ip, owner) {
                warn!(%ip, %owner, error = %e, "stored allocation does not fit the pod CIDR");
            }
        } else {
            warn!(%ip, %owner, "releasing an allocation left by an interrupted ADD");
            store.release_allocation(*ip)?;
            orphans.push((*ip, owner.clone()));
        }
    }
    Ok((pool, orphans))
}

/// Start the component on its own thread (its store writes block).
pub fn spawn(pool: Ipam, store: Arc<Store>, snapshots: Arc<Snapshots>) -> std::io::Result<IpamHandle> {
    let (tx, mut rx) = mpsc::unbounded_channel::<IpamCmd>();
    let mut comp = Component { pool, store, snapshots };
    comp.publish();
    std::thread::Builder::new().name("ipam".into()).spawn(move || {
        while let Some(cmd) = rx.blocking_recv() {
            comp.handle(cmd);
        }
    })?;
    Ok(IpamHandle { tx })
}

struct Component {
    pool: Ipam,
    store: Arc<Store>,
    snapshots: Arc<Snapshots>,
}

impl Component {
    fn handle(&mut self, cmd: IpamCmd) {
        match cmd {
            IpamCmd::Allocate { owner, reply } => {
                let r = self.allocate(&owner);
                let _ = reply.send(r);
            }
            IpamCmd::Release { ip, owner, reply } => {
                let r = self.release(ip, &owner);
                match reply {
                    Some(reply) => {
                        let _ = reply.send(r);
                    }
                    None => {
                        if let Err(e) = r {
                            warn!(%ip, %owner, error = %e, "releasing an address");
                        }
                    }
                }
            }
            IpamCmd::Stall { duration, reply } => {
                let _ = reply.send(());
                std::thread::sleep(duration);
            }
        }
    }

    fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr, IpamError> {
        let ip = self.pool.allocate(owner)?;
        if let Err(e) = self.store.record_allocation(ip, owner) {
            self.pool.release(ip);
            return Err(IpamError::Store(e.to_string()));
        }
        self.publish();
        Ok(ip)
    }

    fn release(&mut self, ip: Ipv4Addr, owner: &str) -> Result<bool, IpamError> {
        match self.pool.owner(ip) {
            None => return Ok(false),
            Some(o) if o != owner => return Err(IpamError::InUse(ip, o.to_owned())),
            Some(_) => {}
        }
        self.store.release_allocation(ip).map_err(|e| IpamError::Store(e.to_string()))?;
        self.pool.release(ip);
        self.publish();
        Ok(true)
    }

    fn publish(&self) {
        self.snapshots.publish_ipam(IpamState {
            cidr: self.pool.cidr().to_string(),
            gateway: self.pool.gateway().to_string(),
            capacity: self.pool.capacity(),
            allocations: self
                .pool
                .allocations()
                .map(|(ip, owner)| Allocation { ip: ip.to_string(), owner: owner.to_owned() })
                .collect(),
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    struct TempStore(std::path::PathBuf);
    impl TempStore {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("myelin-ipam-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Self(dir)
        }
        fn open(&self) -> Arc<Store> {
            Arc::new(Store::open(&self.0).unwrap())
        }
    }
    impl Drop for TempStore {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn start(store: &Arc<Store>, cidr: &str, owners: &[&str]) -> (IpamHandle, Arc<Snapshots>, Vec<(Ipv4Addr, String)>) {
        let snap = store.snapshot().unwrap();
        let owners: HashSet<String> = owners.iter().map(|s| (*s).to_owned()).collect();
        let (pool, orphans) = restore(store, &snap, cidr.parse().unwrap(), &owners).unwrap();
        let snapshots = Snapshots::new();
        let h = spawn(pool, store.clone(), snapshots.clone()).unwrap();
        (h, snapshots, orphans)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_allocations_are_distinct_booked_and_published() {
        let t = TempStore::new("concurrent");
        let store = t.open();
        let (h, snapshots, _) = start(&store, "10.9.0.0/24", &[]);
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let h = h.clone();
                tokio::spawn(async move { (format!("c{i}/eth0"), h.allocate(&format!("c{i}/eth0")).await.unwrap()) })
            })
            .collect();
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap());
        }
        let distinct: HashSet<Ipv4Addr> = got.iter().map(|(_, ip)| *ip).collect();
        assert_eq!(distinct.len(), 64, "every ADD got its own address");
        let stored = store.snapshot().unwrap().allocations;
        assert_eq!(stored.len(), 64, "each allocation is in the store before it is answered");
        for (owner, ip) in &got {
            assert!(stored.contains(&(*ip, owner.clone())), "{ip} booked for {owner}");
        }
        assert_eq!(snapshots.ipam.load().allocations.len(), 64, "the snapshot follows");
        assert_eq!(snapshots.ipam.load().cidr, "10.9.0.0/24");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn release_needs_the_owner_and_comes_before_later_allocations() {
        let t = TempStore::new("release");
        let store = t.open();
        // A /29: 5 addresses for pods.
        let (h, snapshots, _) = start(&store, "10.9.1.0/29", &[]);
        let mut ips = Vec::new();
        for i in 0..5 {
            ips.push(h.allocate(&format!("c{i}/eth0")).await.unwrap());
        }
        assert!(matches!(h.allocate("c5/eth0").await, Err(IpamError::Exhausted(..))));
        assert!(matches!(h.release(ips[0], "c9/eth0").await, Err(IpamError::InUse(..))), "not the owner");
        assert!(!h.release(Ipv4Addr::new(10, 9, 1, 200), "c0/eth0").await.unwrap(), "never allocated");
        // Fire and forget, then allocate at once: the release is served first.
        h.release_later(ips[2], "c2/eth0");
        assert_eq!(h.allocate("c5/eth0").await.unwrap(), ips[2]);
        assert_eq!(snapshots.ipam.load().allocations.len(), 5);
        assert!(store.snapshot().unwrap().allocations.contains(&(ips[2], "c5/eth0".to_owned())));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_keeps_owned_allocations_and_the_cursor_and_releases_orphans() {
        let t = TempStore::new("restore");
        let store = t.open();
        let (a, b, c) = {
            let (h, _, _) = start(&store, "10.9.2.0/24", &[]);
            let a = h.allocate("a/eth0").await.unwrap();
            let b = h.allocate("b/eth0").await.unwrap();
            let c = h.allocate("c/eth0").await.unwrap();
            (a, b, c)
        };
        // A new component from what the store holds, where only a and c have endpoint
        // records: b's ADD was interrupted.
        let (h, snapshots, orphans) = start(&store, "10.9.2.0/24", &["a/eth0", "c/eth0"]);
        assert_eq!(orphans, vec![(b, "b/eth0".to_owned())]);
        let stored = store.snapshot().unwrap().allocations;
        assert_eq!(stored, vec![(a, "a/eth0".to_owned()), (c, "c/eth0".to_owned())], "b released in the store");
        assert_eq!(snapshots.ipam.load().allocations.len(), 2);
        // Round robin resumes after the last address handed out, not at b's.
        let d = h.allocate("d/eth0").await.unwrap();
        assert_eq!(u32::from(d), u32::from(c) + 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_ipam_holds_allocations_but_not_its_snapshot() {
        let t = TempStore::new("stall");
        let store = t.open();
        let (h, snapshots, _) = start(&store, "10.9.3.0/24", &[]);
        h.allocate("a/eth0").await.unwrap();
        h.stall(Duration::from_millis(400)).await.unwrap();
        let started = std::time::Instant::now();
        let pending = tokio::spawn({
            let h = h.clone();
            async move { h.allocate("b/eth0").await }
        });
        // The snapshot is read without the thread.
        assert_eq!(snapshots.ipam.load().allocations.len(), 1);
        pending.await.unwrap().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300), "the allocation waited for the stall");
        assert_eq!(snapshots.ipam.load().allocations.len(), 2);
    }
}
