//! Read-mostly state published as immutable snapshots: the API, and later
//! flow enrichment, read them without taking any lock the components use.
//! Each component publishes its own snapshot after every change it makes.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use myelin_api::{AppliedPolicy, Endpoint, IpamState};
use myelin_policy::IdentityTable;

use crate::policy::rules::RuleIndex;

/// What the endpoints component publishes.
#[derive(Debug, Clone, Default)]
pub struct EndpointsView {
    /// Every endpoint record, by id (identities as the policy component last
    /// reported them; [`Snapshots::endpoint`] merges the current ones).
    pub by_id: BTreeMap<u32, Endpoint>,
    /// Endpoints adopted at start.
    pub adopted: usize,
    /// Endpoint id by address.
    pub by_ip: HashMap<Ipv4Addr, u32>,
}

/// What the policy component publishes. The heavy parts are shared between
/// consecutive snapshots when they did not change.
#[derive(Debug, Clone, Default)]
pub struct PolicyView {
    /// The applied policies (not the built-in ones).
    pub policies: Arc<Vec<AppliedPolicy>>,
    /// Warnings of the applied policies.
    pub warnings: Arc<Vec<String>>,
    /// Every identity and its labels.
    pub table: Arc<IdentityTable>,
    /// References on each workload identity.
    pub refcounts: Arc<HashMap<u32, u64>>,
    /// Every rule id handed out and not yet pruned.
    pub rules: Arc<RuleIndex>,
    /// The identity of each endpoint, by endpoint id.
    pub identity_of: Arc<HashMap<u32, u32>>,
    /// Namespace labels.
    pub namespaces: Arc<BTreeMap<String, BTreeMap<String, String>>>,
    /// Policy map entries installed (all endpoints, both directions).
    pub policy_entries: u64,
}

/// A pod of another node, as the kvstore names it (what the cluster component publishes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePod {
    pub identity: u32,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub node: String,
}

/// What the cluster component publishes: other nodes' pods by address.
#[derive(Debug, Clone, Default)]
pub struct RemoteView {
    pub by_ip: HashMap<Ipv4Addr, RemotePod>,
}

/// The published snapshots.
#[derive(Debug, Default)]
pub struct Snapshots {
    pub endpoints: ArcSwap<EndpointsView>,
    pub policy: ArcSwap<PolicyView>,
    pub remote: ArcSwap<RemoteView>,
    /// What the IPAM component publishes: the pool and its allocations.
    pub ipam: ArcSwap<IpamState>,
    /// Bumped after every publish (caches derived from the snapshots compare it).
    pub generation: std::sync::atomic::AtomicU64,
    /// The generation, for components that wait for a change (the cluster component).
    pub changed: tokio::sync::watch::Sender<u64>,
}

impl Snapshots {
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Publish a new endpoints view.
    pub fn publish_endpoints(&self, view: EndpointsView) {
        self.endpoints.store(Arc::new(view));
        let g = self.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
        self.changed.send_replace(g + 1);
    }

    /// Publish a new policy view.
    pub fn publish_policy(&self, view: PolicyView) {
        self.policy.store(Arc::new(view));
        let g = self.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
        self.changed.send_replace(g + 1);
    }

    /// Publish the IPAM component's state.
    pub fn publish_ipam(&self, view: IpamState) {
        self.ipam.store(Arc::new(view));
        let g = self.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
        self.changed.send_replace(g + 1);
    }

    /// Publish a new view of other nodes' pods.
    pub fn publish_remote(&self, view: RemoteView) {
        self.remote.store(Arc::new(view));
        let g = self.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
        self.changed.send_replace(g + 1);
    }

    /// One endpoint with its current identity.
    #[must_use]
    pub fn endpoint(&self, id: u32) -> Option<Endpoint> {
        let eps = self.endpoints.load();
        let mut ep = eps.by_id.get(&id)?.clone();
        if let Some(i) = self.policy.load().identity_of.get(&id) {
            ep.identity = *i;
        }
        Some(ep)
    }

    /// Every endpoint with its current identity.
    #[must_use]
    pub fn endpoint_list(&self) -> Vec<Endpoint> {
        let eps = self.endpoints.load();
        let pol = self.policy.load();
        eps.by_id
            .values()
            .map(|e| {
                let mut e = e.clone();
                if let Some(i) = pol.identity_of.get(&e.id) {
                    e.identity = *i;
                }
                e
            })
            .collect()
    }

    /// The endpoint of a container interface.
    #[must_use]
    pub fn find(&self, container_id: &str, ifname: &str) -> Option<Endpoint> {
        let id = self
            .endpoints
            .load()
            .by_id
            .values()
            .find(|e| e.container_id == container_id && e.ifname == ifname)
            .map(|e| e.id)?;
        self.endpoint(id)
    }

    /// The local endpoint holding an address.
    #[must_use]
    pub fn endpoint_by_ip(&self, ip: Ipv4Addr) -> Option<Endpoint> {
        let id = *self.endpoints.load().by_ip.get(&ip)?;
        self.endpoint(id)
    }
}
