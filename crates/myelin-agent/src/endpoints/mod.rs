//! The endpoints component: one thread that owns the endpoint records and
//! writes them to the store; it publishes an [`EndpointsView`] snapshot after
//! every change.
//!
//! ```text
//!  API (CNI ADD/DEL, labels) --EndpointCmd--> [endpoints thread] records, endpoint ids (booked in blocks)
//!      ^                                          | spawns one task per ADD / DEL
//!      | answered when the task reports back      v
//!      +------ EndpointCmd::Plumbed ------ plumbing task: address from [ipam thread] (booked in the
//!              / Unplumbed                   store), then veth, policy, programs, routes (plumb.rs)
//!  DEL: unplumbing task -> Unplumbed -> record removed -> IpamCmd::Release (ordered before later ADDs)
//! ```
//!
//! An ADD gets its endpoint id here and its address from the IPAM component
//! ([`crate::ipam`]), then is plumbed by its own task ([`plumb::Plumber`]) so
//! that concurrent ADDs overlap in the kernel; the task reports back and the
//! record is committed. A DEL is the reverse: the record goes before the
//! address, so every record has its address booked and a crash in between
//! leaves only an allocation, which the next start releases. ADDs and DELs of
//! one container interface are served in order.

pub mod plumb;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use myelin_api::{Endpoint, EndpointAddRequest, ErrorCode, LabelsUpdate};
use myelin_netlink as nl;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::ipam::{IpamError, IpamHandle};
use crate::snapshot::{EndpointsView, Snapshots};
use crate::store::{Store, StoreError};
use plumb::Plumber;

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("network namespace {0} does not exist (was the container removed?)")]
    NetnsNotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Netlink(#[from] nl::NetlinkError),
    #[error(transparent)]
    Bpf(#[from] myelin_bpf::BpfError),
    #[error("policy: {0}")]
    Policy(String),
    #[error("the endpoints component is not running")]
    Gone,
}

impl EndpointError {
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::NetnsNotFound(_) | Self::Netlink(nl::NetlinkError::NetnsNotFound(_)) => ErrorCode::NetnsNotFound,
            Self::AlreadyExists(_) => ErrorCode::AlreadyExists,
            Self::Ipam(IpamError::Exhausted(..)) => ErrorCode::PoolExhausted,
            _ => ErrorCode::Internal,
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, EndpointError>>;

/// What the endpoints component is asked to do.
pub enum EndpointCmd {
    Add {
        req: EndpointAddRequest,
        reply: Reply<Endpoint>,
    },
    Del {
        container_id: String,
        ifname: String,
        reply: Reply<bool>,
    },
    /// Replace an endpoint's labels (and named ports); answers the updated record.
    Labels {
        id: u32,
        update: LabelsUpdate,
        reply: Reply<Endpoint>,
    },
    /// A plumbing task finished (internal); a failed one has released its address.
    Plumbed {
        owner: String,
        id: u32,
        result: Result<Endpoint, EndpointError>,
    },
    /// An unplumbing task finished (internal).
    Unplumbed {
        owner: String,
        id: u32,
    },
    /// Debug: keep the component busy for a while; answered as the stall begins.
    Stall {
        duration: Duration,
        reply: oneshot::Sender<()>,
    },
}

/// Sends commands to the endpoints component.
#[derive(Clone)]
pub struct EndpointsHandle {
    tx: mpsc::UnboundedSender<EndpointCmd>,
}

impl EndpointsHandle {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> EndpointCmd) -> Result<T, EndpointError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| EndpointError::Gone)?;
        rx.await.map_err(|_| EndpointError::Gone)?
    }

    pub async fn add(&self, req: EndpointAddRequest) -> Result<Endpoint, EndpointError> {
        self.ask(|reply| EndpointCmd::Add { req, reply }).await
    }

    pub async fn delete(&self, container_id: String, ifname: String) -> Result<bool, EndpointError> {
        self.ask(|reply| EndpointCmd::Del { container_id, ifname, reply }).await
    }

    pub async fn labels(&self, id: u32, update: LabelsUpdate) -> Result<Endpoint, EndpointError> {
        self.ask(|reply| EndpointCmd::Labels { id, update, reply }).await
    }

    pub async fn stall(&self, duration: Duration) -> Result<(), EndpointError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(EndpointCmd::Stall { duration, reply: tx }).map_err(|_| EndpointError::Gone)?;
        rx.await.map_err(|_| EndpointError::Gone)
    }
}

/// Owner key of an address allocation: one per container interface.
pub fn owner_key(container_id: &str, ifname: &str) -> String {
    format!("{container_id}/{ifname}")
}

/// A request waiting for a container interface that has an ADD or DEL in flight.
enum Waiting {
    Add(EndpointAddRequest, Reply<Endpoint>),
    Del(String, String, Reply<bool>),
}

/// What is in flight for a container interface.
struct InFlight {
    /// Replies of the ADD (a retried ADD joins the first).
    adds: Vec<Reply<Endpoint>>,
    /// A DEL in flight.
    dels: Vec<Reply<bool>>,
    /// Requests for this interface that come after.
    queue: VecDeque<Waiting>,
    netns: String,
}

/// Endpoint ids are booked in the store this many at a time (a start skips what was booked
/// and not handed out).
const ID_BLOCK: u32 = 64;

/// The state the component starts from (see [`restore`]).
pub struct Restored {
    pub records: Vec<Endpoint>,
    pub next_id: u32,
    pub adopted: usize,
}

/// The allocation owners of endpoint records (what the IPAM component keeps at start).
#[must_use]
pub fn owners(records: &[Endpoint]) -> std::collections::HashSet<String> {
    records.iter().map(|e| owner_key(&e.container_id, &e.ifname)).collect()
}

/// Remove what ADDs a crash interrupted left (the veths of `orphans`, the allocations the
/// IPAM component released at start), and adopt what exists in the kernel (nothing that
/// forwards is touched).
pub async fn restore(
    records: Vec<Endpoint>,
    next_id: u32,
    orphans: &[(Ipv4Addr, String)],
    plumber: &Plumber,
) -> Restored {
    for (_, owner) in orphans {
        if let Some((cid, ifname)) = owner.rsplit_once('/') {
            let _ = nl::delete_link(&nl::host_ifname(cid, ifname)).await;
        }
    }
    let mut adopted = 0;
    for ep in &records {
        if plumber.adopt(ep).await {
            adopted += 1;
        }
    }
    // Ids were booked before use; never below a stored record's.
    let next_id = records.iter().map(|e| e.id.saturating_add(1)).fold(next_id.max(1), u32::max);
    Restored { records, next_id, adopted }
}

/// Start the component on its own thread.
pub fn spawn(
    restored: Restored,
    store: Arc<Store>,
    ipam: IpamHandle,
    plumber: Plumber,
    snapshots: Arc<Snapshots>,
    runtime: tokio::runtime::Handle,
) -> std::io::Result<EndpointsHandle> {
    let (tx, mut rx) = mpsc::unbounded_channel::<EndpointCmd>();
    let mut comp = Component {
        records: restored.records.into_iter().map(|e| (e.id, e)).collect(),
        next_id: restored.next_id,
        booked: restored.next_id,
        adopted: restored.adopted,
        store,
        ipam,
        plumber,
        snapshots,
        runtime,
        tx: tx.clone(),
        in_flight: HashMap::new(),
    };
    comp.publish();
    std::thread::Builder::new().name("endpoints".into()).spawn(move || {
        while let Some(cmd) = rx.blocking_recv() {
            comp.handle(cmd);
        }
    })?;
    Ok(EndpointsHandle { tx })
}

struct Component {
    records: BTreeMap<u32, Endpoint>,
    next_id: u32,
    /// Ids below this are booked in the store.
    booked: u32,
    adopted: usize,
    store: Arc<Store>,
    ipam: IpamHandle,
    plumber: Plumber,
    snapshots: Arc<Snapshots>,
    runtime: tokio::runtime::Handle,
    tx: mpsc::UnboundedSender<EndpointCmd>,
    in_flight: HashMap<String, InFlight>,
}

impl Component {
    fn handle(&mut self, cmd: EndpointCmd) {
        match cmd {
            EndpointCmd::Add { req, reply } => self.add(req, reply),
            EndpointCmd::Del { container_id, ifname, reply } => self.del(&container_id, &ifname, reply),
            EndpointCmd::Labels { id, update, reply } => self.labels(id, update, reply),
            EndpointCmd::Plumbed { owner, id, result } => self.plumbed(&owner, id, result),
            EndpointCmd::Unplumbed { owner, id } => self.unplumbed(&owner, id),
            EndpointCmd::Stall { duration, reply } => {
                // Answer first: the caller learns the component is busy from now on.
                let _ = reply.send(());
                std::thread::sleep(duration);
            }
        }
    }

    fn find(&self, container_id: &str, ifname: &str) -> Option<&Endpoint> {
        self.records.values().find(|e| e.container_id == container_id && e.ifname == ifname)
    }

    fn add(&mut self, req: EndpointAddRequest, reply: Reply<Endpoint>) {
        let owner = owner_key(&req.container_id, &req.ifname);
        if let Some(f) = self.in_flight.get_mut(&owner) {
            if f.dels.is_empty() && f.queue.is_empty() && f.netns == req.netns {
                f.adds.push(reply); // a retried ADD: answered with the first
            } else {
                f.queue.push_back(Waiting::Add(req, reply));
            }
            return;
        }
        if let Err(e) = validate_add(&req) {
            let _ = reply.send(Err(e));
            return;
        }
        if let Some(existing) = self.find(&req.container_id, &req.ifname) {
            let r = if existing.netns == req.netns {
                Ok(self.snapshots.endpoint(existing.id).unwrap_or_else(|| existing.clone()))
            // a retried ADD
            } else {
                Err(EndpointError::AlreadyExists(format!(
                    "container {} already has interface {} in {}; DEL it first",
                    req.container_id, req.ifname, existing.netns
                )))
            };
            let _ = reply.send(r);
            return;
        }
        if !Path::new(&req.netns).exists() {
            let _ = reply.send(Err(EndpointError::NetnsNotFound(req.netns)));
            return;
        }
        let id = match self.book_id() {
            Ok(id) => id,
            Err(e) => {
                let _ = reply.send(Err(e.into()));
                return;
            }
        };
        self.in_flight.insert(
            owner.clone(),
            InFlight { adds: vec![reply], dels: Vec::new(), queue: VecDeque::new(), netns: req.netns.clone() },
        );
        let (plumber, ipam, tx) = (self.plumber.clone(), self.ipam.clone(), self.tx.clone());
        self.runtime.spawn(async move {
            let result = match ipam.allocate(&owner).await {
                Ok(ip) => {
                    let r = plumber.plumb(&req, id, ip).await;
                    if r.is_err() {
                        release(&ipam, ip, &owner).await;
                    }
                    r
                }
                Err(e) => Err(e.into()),
            };
            let _ = tx.send(EndpointCmd::Plumbed { owner, id, result });
        });
    }

    /// The next endpoint id, booking a block in the store when the booked ones run out.
    fn book_id(&mut self) -> Result<u32, StoreError> {
        if self.next_id >= self.booked {
            let booked = self.next_id.saturating_add(ID_BLOCK);
            self.store.book_endpoint_ids(booked)?;
            self.booked = booked;
        }
        let id = self.next_id;
        self.next_id += 1;
        Ok(id)
    }

    fn plumbed(&mut self, owner: &str, id: u32, result: Result<Endpoint, EndpointError>) {
        let result = match result {
            Ok(ep) => match self.store.put_endpoint(&ep) {
                Ok(()) => {
                    self.records.insert(id, ep.clone());
                    Ok(ep)
                }
                Err(e) => {
                    // Not recorded: undo the kernel side, then free the address.
                    let (plumber, ipam, owner) = (self.plumber.clone(), self.ipam.clone(), owner.to_owned());
                    self.runtime.spawn(async move {
                        plumber.unplumb(&ep.host_ifname, ep.id).await;
                        if let Ok(ip) = ep.ipv4.parse() {
                            release(&ipam, ip, &owner).await;
                        }
                    });
                    Err(e.into())
                }
            },
            Err(e) => Err(e),
        };
        self.publish();
        let Some(f) = self.in_flight.remove(owner) else { return };
        for reply in f.adds {
            let _ = reply.send(clone_result(&result));
        }
        self.replay(f.queue);
    }

    fn del(&mut self, container_id: &str, ifname: &str, reply: Reply<bool>) {
        let owner = owner_key(container_id, ifname);
        if let Some(f) = self.in_flight.get_mut(&owner) {
            if !f.dels.is_empty() && f.queue.is_empty() {
                f.dels.push(reply);
            } else {
                f.queue.push_back(Waiting::Del(container_id.to_owned(), ifname.to_owned(), reply));
            }
            return;
        }
        let Some(ep) = self.find(container_id, ifname).cloned() else {
            // Nothing recorded; still remove a veth an interrupted ADD may have left.
            let name = nl::host_ifname(container_id, ifname);
            self.runtime.spawn(async move {
                let _ = nl::delete_link(&name).await;
            });
            let _ = reply.send(Ok(false));
            return;
        };
        self.in_flight.insert(
            owner.clone(),
            InFlight { adds: Vec::new(), dels: vec![reply], queue: VecDeque::new(), netns: ep.netns.clone() },
        );
        let (plumber, tx) = (self.plumber.clone(), self.tx.clone());
        self.runtime.spawn(async move {
            plumber.unplumb(&ep.host_ifname, ep.id).await;
            let _ = tx.send(EndpointCmd::Unplumbed { owner, id: ep.id });
        });
    }

    fn unplumbed(&mut self, owner: &str, id: u32) {
        let result = match self.records.get(&id).cloned() {
            Some(ep) => {
                match self.store.remove_endpoint(id) {
                    Ok(()) => {
                        // After the record: a crash in between leaves only the allocation.
                        if let Ok(ip) = ep.ipv4.parse::<Ipv4Addr>() {
                            self.ipam.release_later(ip, owner);
                        }
                        self.records.remove(&id);
                        info!(endpoint = id, container = %ep.container_id, "endpoint deleted");
                        Ok(true)
                    }
                    Err(e) => Err(EndpointError::from(e)),
                }
            }
            None => Ok(false),
        };
        self.publish();
        let Some(f) = self.in_flight.remove(owner) else { return };
        for reply in f.dels {
            let _ = reply.send(clone_result(&result));
        }
        self.replay(f.queue);
    }

    fn labels(&mut self, id: u32, update: LabelsUpdate, reply: Reply<Endpoint>) {
        let r = (|| {
            for (k, v) in &update.labels {
                validate_label(k, v)?;
            }
            let ep = self.records.get(&id).ok_or_else(|| EndpointError::NotFound(format!("no endpoint {id}")))?;
            let owner = owner_key(&ep.container_id, &ep.ifname);
            if self.in_flight.contains_key(&owner) {
                return Err(EndpointError::AlreadyExists(format!(
                    "endpoint {id} has an ADD or DEL in flight; retry when it is done"
                )));
            }
            let mut ep = ep.clone();
            ep.labels = update.labels;
            ep.labels_pending = false;
            if let Some(ports) = update.ports {
                ep.ports = ports;
            }
            self.store.put_endpoint(&ep)?;
            self.records.insert(id, ep.clone());
            Ok(ep)
        })();
        self.publish();
        let _ = reply.send(r);
    }

    /// Serve, in order, the requests that waited for an interface's ADD or DEL.
    fn replay(&mut self, queue: VecDeque<Waiting>) {
        for w in queue {
            match w {
                Waiting::Add(req, reply) => self.add(req, reply),
                Waiting::Del(cid, ifname, reply) => self.del(&cid, &ifname, reply),
            }
        }
    }

    fn publish(&self) {
        self.snapshots.publish_endpoints(EndpointsView {
            by_ip: self.records.values().filter_map(|e| e.ipv4.parse().ok().map(|ip| (ip, e.id))).collect(),
            by_id: self.records.clone(),
            adopted: self.adopted,
        });
    }
}

/// Release an address a failed ADD booked (logged when it cannot be: the next start releases it).
async fn release(ipam: &IpamHandle, ip: Ipv4Addr, owner: &str) {
    if let Err(e) = ipam.release(ip, owner).await {
        warn!(%ip, %owner, error = %e, "releasing the address of a failed ADD");
    }
}

fn clone_result<T: Clone>(r: &Result<T, EndpointError>) -> Result<T, EndpointError> {
    match r {
        Ok(v) => Ok(v.clone()),
        Err(e) => Err(match e {
            EndpointError::BadRequest(m) => EndpointError::BadRequest(m.clone()),
            EndpointError::NotFound(m) => EndpointError::NotFound(m.clone()),
            EndpointError::NetnsNotFound(m) => EndpointError::NetnsNotFound(m.clone()),
            EndpointError::AlreadyExists(m) => EndpointError::AlreadyExists(m.clone()),
            EndpointError::Ipam(i) => EndpointError::Ipam(i.clone()),
            other => EndpointError::Policy(other.to_string()),
        }),
    }
}

fn validate_add(req: &EndpointAddRequest) -> Result<(), EndpointError> {
    let bad = |m: String| Err(EndpointError::BadRequest(m));
    if req.container_id.is_empty() {
        return bad("container_id is empty".into());
    }
    if req.container_id.contains('/') {
        return bad(format!("container_id {:?} must not contain '/'", req.container_id));
    }
    if req.ifname.is_empty() || req.ifname.len() > 15 || req.ifname.contains(['/', ' ']) {
        return bad(format!("ifname {:?} is not a valid interface name (1-15 chars, no '/' or space)", req.ifname));
    }
    if req.netns.is_empty() {
        return bad("netns is empty: the container's network namespace path is required".into());
    }
    for (k, v) in &req.labels {
        validate_label(k, v)?;
    }
    Ok(())
}

pub fn validate_label(k: &str, v: &str) -> Result<(), EndpointError> {
    let ok_key = !k.is_empty() && k.len() <= 253 && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    let ok_val = v.len() <= 63 && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok_key {
        return Err(EndpointError::BadRequest(format!("label key {k:?} is not a valid label key")));
    }
    if !ok_val {
        return Err(EndpointError::BadRequest(format!("label {k}={v:?}: value is not a valid label value")));
    }
    Ok(())
}
