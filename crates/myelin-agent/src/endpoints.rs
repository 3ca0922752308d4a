//! Endpoint lifecycle: CNI ADD/DEL/CHECK turned into veths, addresses,
//! routes, datapath map entries and TCX links — and adoption of all of it
//! after an agent restart without touching what already forwards.
//!
//! Every change runs under one lock, in this order, and is undone in reverse
//! on failure, so a failed ADD leaves nothing behind:
//!   allocate address (store) -> veth pair (netlink) -> map entry ->
//!   TCX links (pinned) -> host route + neighbour -> endpoint record (store)

use crate::ipam::{Ipam, IpamError};
use crate::policy::{EngineError, EngineState, PolicyEngine, StoredPolicy};
use crate::store::{Store, StoreError};
use myelin_api::{Endpoint, EndpointAddRequest, ErrorCode, LabelsUpdate};
use myelin_bpf::{Datapath, EndpointEntry};
use myelin_netlink as nl;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

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
    #[error(transparent)]
    Engine(#[from] EngineError),
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
            Self::Engine(EngineError::Policy(_)) => ErrorCode::BadRequest,
            Self::Engine(EngineError::NotFound(_)) => ErrorCode::NotFound,
            _ => ErrorCode::Internal,
        }
    }
}

/// Owner key of an address allocation: one per container interface.
fn owner_key(container_id: &str, ifname: &str) -> String {
    format!("{container_id}/{ifname}")
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn parse_ip(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
}

pub struct Endpoints {
    store: Store,
    datapath: Datapath,
    ipam: Ipam,
    by_id: BTreeMap<u32, Endpoint>,
    next_id: u32,
    adopted: usize,
    policy: PolicyEngine,
}

impl Endpoints {
    /// Rebuild from the store and adopt what still exists in the kernel.
    pub async fn restore(
        store: Store,
        datapath: Datapath,
        pod_cidr: ipnet::Ipv4Net,
        node_ips: Vec<Ipv4Addr>,
    ) -> Result<Self, EndpointError> {
        let snap = store.snapshot()?;
        let mut ipam = Ipam::new(pod_cidr);
        if let Some(c) = snap.ipam_cursor {
            ipam.set_cursor(c);
        }
        let state: EngineState = match store.get_kv("policy_engine")? {
            Some(j) => serde_json::from_str(&j)
                .map_err(|e| EndpointError::BadRequest(format!("stored policy engine state is corrupt: {e}")))?,
            None => EngineState::default(),
        };
        let mut policies = Vec::new();
        for (key, json) in store.policies()? {
            match serde_json::from_str::<StoredPolicy>(&json) {
                Ok(p) => policies.push(p),
                Err(e) => warn!(policy = %key, error = %e, "stored policy is unreadable; dropped"),
            }
        }
        let policy = PolicyEngine::new(state, policies, node_ips);
        let mut this =
            Self { store, datapath, ipam, by_id: BTreeMap::new(), next_id: snap.next_endpoint_id, adopted: 0, policy };
        let known: std::collections::HashSet<String> =
            snap.endpoints.iter().map(|e| owner_key(&e.container_id, &e.ifname)).collect();
        for (ip, owner) in &snap.allocations {
            if known.contains(owner) {
                if let Err(e) = this.ipam.reserve(*ip, owner) {
                    warn!(%ip, %owner, error = %e, "stored allocation does not fit the pod CIDR");
                }
            } else {
                // An ADD that died between allocation and record: undo it.
                warn!(%ip, %owner, "releasing an allocation left by an interrupted ADD");
                if let Some((cid, ifname)) = owner.rsplit_once('/') {
                    let _ = nl::delete_link(&nl::host_ifname(cid, ifname)).await;
                }
                this.store.release_allocation(*ip)?;
            }
        }
        for ep in snap.endpoints {
            this.adopt(&ep).await;
            this.by_id.insert(ep.id, ep);
        }
        let eps = this.list();
        this.policy.seed_from_datapath(&eps, &this.datapath);
        this.policy.sync(&eps, &this.datapath)?;
        Ok(this)
    }

    fn persist_policy(&mut self) -> Result<(), EndpointError> {
        let state = serde_json::to_string(&self.policy.state())
            .map_err(|e| EndpointError::BadRequest(format!("serializing the policy state: {e}")))?;
        // Rewrite the policies only when they changed (not on every endpoint ADD/DEL).
        match self.policy.unpersisted() {
            Some(epoch) => {
                self.store.put_policies(&self.policy.stored(), &state)?;
                self.policy.persisted(epoch);
            }
            None => self.store.put_kv("policy_engine", &state)?,
        }
        Ok(())
    }

    /// Recompile and push what changed; on failure the caller decides what to undo.
    fn sync_policy(&mut self) -> Result<crate::policy::SyncReport, EndpointError> {
        let eps = self.list();
        Ok(self.policy.sync(&eps, &self.datapath)?)
    }

    pub fn explain(
        &mut self,
        from: myelin_policy::FlowPeer,
        to: myelin_policy::FlowPeer,
        protocol: u8,
        port: u16,
    ) -> Result<myelin_policy::Explanation, EndpointError> {
        let eps = self.list();
        Ok(self.policy.explain(&eps, from, to, protocol, port)?)
    }

    #[must_use]
    pub fn policy(&self) -> &PolicyEngine {
        &self.policy
    }

    /// Push a changed policy set to the datapath and persist it; if the datapath
    /// refuses, go back to the previous set (`old`) so nothing stays half-applied.
    fn commit_policy_change(
        &mut self,
        old: crate::policy::Rollback,
    ) -> Result<crate::policy::SyncReport, EndpointError> {
        match self.sync_policy() {
            Ok(report) => {
                self.persist_policy()?;
                Ok(report)
            }
            Err(e) => {
                self.policy.restore(old);
                if let Err(again) = self.sync_policy() {
                    warn!(error = %again, "restoring the previous policy set");
                }
                Err(e)
            }
        }
    }

    /// Apply policy files, all or nothing.
    pub fn apply_policies(&mut self, files: &[(String, String)]) -> Result<myelin_api::PolicyChange, EndpointError> {
        let new = PolicyEngine::prepare(files)?;
        let names: Vec<String> = new.iter().map(|p| format!("{}/{}", p.policy.kind, p.policy.id())).collect();
        let warnings: Vec<String> = new.iter().flat_map(|p| p.policy.warnings.clone()).collect();
        let old = self.policy.insert(new);
        let report = self.commit_policy_change(old)?;
        info!(policies = ?names, endpoints = report.endpoints_updated, "policies applied");
        Ok(myelin_api::PolicyChange { policies: names, warnings, endpoints_updated: report.endpoints_updated })
    }

    /// Delete policies, all or nothing.
    pub fn delete_policies(&mut self, ids: &[String]) -> Result<myelin_api::PolicyChange, EndpointError> {
        let (old, keys) = self.policy.remove(ids)?;
        let report = self.commit_policy_change(old)?;
        Ok(myelin_api::PolicyChange { policies: keys, warnings: vec![], endpoints_updated: report.endpoints_updated })
    }

    /// Set a namespace's labels; identities of its endpoints follow.
    pub fn set_namespace_labels(
        &mut self,
        ns: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<myelin_api::NamespaceLabels, EndpointError> {
        for (k, v) in &labels {
            validate_label(k, v)?;
        }
        self.policy.set_namespace_labels(ns, labels.clone());
        let ids: Vec<u32> =
            self.by_id.values().filter(|e| e.namespace.as_deref().unwrap_or("default") == ns).map(|e| e.id).collect();
        for id in ids {
            self.refresh_identity(id)?;
        }
        self.sync_policy()?;
        self.persist_policy()?;
        Ok(myelin_api::NamespaceLabels { labels })
    }

    /// Recompute an endpoint's identity from its labels and put it in the datapath.
    fn refresh_identity(&mut self, id: u32) -> Result<(), EndpointError> {
        let Some(ep) = self.by_id.get(&id).cloned() else { return Ok(()) };
        let labels = self.policy.security_labels(&ep);
        let new_id = self.policy.acquire(&labels)?;
        if new_id == ep.identity {
            self.policy.release(new_id);
            return Ok(());
        }
        let mut ep = ep;
        let old_id = ep.identity;
        ep.identity = new_id;
        if let (Some(ip), Some(mac), Some(host_mac)) =
            (parse_ip(&ep.ipv4), nl::parse_mac(&ep.mac).ok(), nl::parse_mac(&ep.host_mac).ok())
        {
            self.datapath.upsert_endpoint(
                ip,
                &EndpointEntry {
                    ifindex: ep.host_ifindex,
                    endpoint_id: ep.id,
                    identity: new_id,
                    flags: 0,
                    mac,
                    host_mac,
                },
            )?;
        }
        self.store.put_endpoint(&ep)?;
        self.by_id.insert(id, ep);
        self.policy.release(old_id);
        Ok(())
    }

    /// Make sure an endpoint known from the store is wired; touch nothing that is.
    async fn adopt(&mut self, ep: &Endpoint) {
        let link = match nl::link_by_name(&ep.host_ifname).await {
            Ok(Some(l)) if l.index == ep.host_ifindex => l,
            Ok(_) => {
                warn!(endpoint = ep.id, ifname = %ep.host_ifname, "host veth is gone; endpoint kept until CNI DEL");
                return;
            }
            Err(e) => {
                warn!(endpoint = ep.id, error = %e, "cannot inspect host veth");
                return;
            }
        };
        let Some(ip) = parse_ip(&ep.ipv4) else { return };
        let entry = match self.entry_for(ep, &link) {
            Some(e) => e,
            None => return,
        };
        let mut ok = true;
        // Writing the same value into a hash map is atomic per entry: traffic does not notice.
        if let Err(e) = self.datapath.upsert_endpoint(ip, &entry) {
            warn!(endpoint = ep.id, error = %e, "restoring map entry");
            ok = false;
        }
        match self.datapath.attach_endpoint(&ep.host_ifname, link.index) {
            Ok(false) => {}
            Ok(true) => info!(endpoint = ep.id, "links were missing; attached again"),
            Err(e) => {
                warn!(endpoint = ep.id, error = %e, "attaching");
                ok = false;
            }
        }
        if let Err(e) = nl::replace_host_route(ip, link.index).await {
            warn!(endpoint = ep.id, error = %e, "restoring route");
        }
        if ok {
            self.adopted += 1;
        }
    }

    fn entry_for(&self, ep: &Endpoint, link: &nl::LinkInfo) -> Option<EndpointEntry> {
        let mac = nl::parse_mac(&ep.mac).ok()?;
        Some(EndpointEntry {
            ifindex: link.index,
            endpoint_id: ep.id,
            identity: ep.identity,
            flags: 0,
            mac,
            host_mac: link.mac,
        })
    }

    #[must_use]
    pub fn adopted(&self) -> usize {
        self.adopted
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    #[must_use]
    pub fn ipam_state(&self) -> myelin_api::IpamState {
        myelin_api::IpamState {
            cidr: self.ipam.cidr().to_string(),
            gateway: self.ipam.gateway().to_string(),
            capacity: self.ipam.capacity(),
            allocations: self
                .ipam
                .allocations()
                .map(|(ip, owner)| myelin_api::Allocation { ip: ip.to_string(), owner: owner.to_owned() })
                .collect(),
        }
    }

    pub fn datapath(&self) -> &Datapath {
        &self.datapath
    }

    #[must_use]
    pub fn list(&self) -> Vec<Endpoint> {
        self.by_id.values().cloned().collect()
    }

    #[must_use]
    pub fn get(&self, id: u32) -> Option<&Endpoint> {
        self.by_id.get(&id)
    }

    #[must_use]
    pub fn find(&self, container_id: &str, ifname: &str) -> Option<&Endpoint> {
        self.by_id.values().find(|e| e.container_id == container_id && e.ifname == ifname)
    }

    pub async fn add(&mut self, req: EndpointAddRequest) -> Result<Endpoint, EndpointError> {
        validate_add(&req)?;
        if let Some(existing) = self.find(&req.container_id, &req.ifname) {
            if existing.netns == req.netns {
                return Ok(existing.clone()); // a retried ADD
            }
            return Err(EndpointError::AlreadyExists(format!(
                "container {} already has interface {} in {}; DEL it first",
                req.container_id, req.ifname, existing.netns
            )));
        }
        if !Path::new(&req.netns).exists() {
            return Err(EndpointError::NetnsNotFound(req.netns));
        }
        let owner = owner_key(&req.container_id, &req.ifname);
        let sec = self.policy.security_labels_of(req.namespace.as_deref(), &req.labels);
        let identity = self.policy.acquire(&sec)?;
        let ip = match self.ipam.allocate(&owner) {
            Ok(ip) => ip,
            Err(e) => {
                self.policy.release(identity);
                return Err(e.into());
            }
        };
        let id = self.next_id;
        if let Err(e) = self.store.record_allocation(ip, &owner, id + 1) {
            self.ipam.release(ip);
            self.policy.release(identity);
            return Err(e.into());
        }
        self.next_id += 1;
        match self.plumb(&req, id, ip, identity).await {
            Ok(ep) => {
                info!(endpoint = id, %ip, identity, container = %req.container_id, "endpoint added");
                self.persist_policy()?;
                Ok(ep)
            }
            Err(e) => {
                self.policy.release(identity);
                self.ipam.release(ip);
                if let Err(se) = self.store.release_allocation(ip) {
                    warn!(error = %se, "releasing address after failed ADD");
                }
                Err(e)
            }
        }
    }

    async fn plumb(
        &mut self,
        req: &EndpointAddRequest,
        id: u32,
        ip: Ipv4Addr,
        identity: u32,
    ) -> Result<Endpoint, EndpointError> {
        let host_ifname = nl::host_ifname(&req.container_id, &req.ifname);
        let gateway = self.ipam.gateway();
        let t0 = std::time::Instant::now();
        let veth = nl::create_pod_veth(&nl::PodVeth {
            host_ifname: host_ifname.clone(),
            netns_path: req.netns.clone().into(),
            pod_ifname: req.ifname.clone(),
            pod_ip: ip,
            gateway,
            mtu: None,
        })
        .await?;
        let ep = Endpoint {
            id,
            container_id: req.container_id.clone(),
            netns: req.netns.clone(),
            ifname: req.ifname.clone(),
            host_ifname: host_ifname.clone(),
            host_ifindex: veth.host.index,
            ipv4: ip.to_string(),
            gateway: gateway.to_string(),
            mac: nl::format_mac(&veth.pod_mac),
            host_mac: nl::format_mac(&veth.host.mac),
            namespace: req.namespace.clone(),
            pod_name: req.pod_name.clone(),
            labels: req.labels.clone(),
            ports: req.ports.clone(),
            identity,
            created: now(),
        };
        // The endpoint's policy is in place before its first packet can pass:
        // policy map, then endpoint entry, then the programs.
        self.by_id.insert(id, ep.clone());
        let wired = async {
            let t_veth = t0.elapsed();
            self.sync_policy()?;
            let t_policy = t0.elapsed();
            let entry = EndpointEntry {
                ifindex: veth.host.index,
                endpoint_id: id,
                identity,
                flags: 0,
                mac: veth.pod_mac,
                host_mac: veth.host.mac,
            };
            self.datapath.upsert_endpoint(ip, &entry)?;
            self.datapath.attach_endpoint(&host_ifname, veth.host.index)?;
            let t_attach = t0.elapsed();
            nl::replace_host_route(ip, veth.host.index).await?;
            nl::replace_neighbour(ip, veth.pod_mac, veth.host.index).await?;
            let t_routes = t0.elapsed();
            self.store.put_endpoint(&ep)?;
            debug!(endpoint = id, veth = ?t_veth, policy = ?t_policy, attach = ?t_attach, routes = ?t_routes,
                stored = ?t0.elapsed(), "plumbing timings (cumulative)");
            Ok::<(), EndpointError>(())
        }
        .await;
        if let Err(e) = wired {
            self.by_id.remove(&id);
            self.unplumb(&host_ifname, ip, id).await;
            if let Err(se) = self.sync_policy() {
                warn!(error = %se, "re-syncing policy after a failed ADD");
            }
            return Err(e);
        }
        Ok(ep)
    }

    /// Undo the kernel side of an endpoint; best effort, logs what fails.
    async fn unplumb(&mut self, host_ifname: &str, ip: Ipv4Addr, id: u32) {
        if let Err(e) = self.datapath.delete_endpoint(ip) {
            warn!(endpoint = id, error = %e, "deleting map entry");
        }
        if let Err(e) = self.datapath.detach_endpoint(host_ifname) {
            warn!(endpoint = id, error = %e, "detaching");
        }
        // Deleting the host side removes the pair, its route and its neighbour entry.
        if let Err(e) = nl::delete_link(host_ifname).await {
            warn!(endpoint = id, error = %e, "deleting veth");
        }
        if let Err(e) = self.datapath.delete_metrics(id) {
            warn!(endpoint = id, error = %e, "deleting counters");
        }
        if let Err(e) = self.datapath.clear_endpoint_policy(id) {
            warn!(endpoint = id, error = %e, "deleting the policy map");
        }
        if let Err(e) = self.datapath.delete_policy_stats(id) {
            warn!(endpoint = id, error = %e, "deleting policy counters");
        }
        self.policy.forget(id);
    }

    /// CNI DEL: idempotent; `Ok(false)` when there was nothing to delete.
    pub async fn delete(&mut self, container_id: &str, ifname: &str) -> Result<bool, EndpointError> {
        let Some(ep) = self.find(container_id, ifname).cloned() else {
            // Nothing recorded; still remove a veth an interrupted ADD may have left.
            let _ = nl::delete_link(&nl::host_ifname(container_id, ifname)).await;
            return Ok(false);
        };
        let ip = parse_ip(&ep.ipv4);
        if let Some(ip) = ip {
            self.unplumb(&ep.host_ifname, ip, ep.id).await;
        }
        self.store.remove_endpoint(ep.id, ip)?;
        if let Some(ip) = ip {
            self.ipam.release(ip);
        }
        self.by_id.remove(&ep.id);
        self.policy.release(ep.identity);
        if let Err(e) = self.sync_policy() {
            warn!(error = %e, "re-syncing policy after DEL");
        }
        self.persist_policy()?;
        info!(endpoint = ep.id, container = %container_id, "endpoint deleted");
        Ok(true)
    }

    /// CNI CHECK: the endpoint exists and everything it needs is in place.
    pub async fn check(&self, container_id: &str, ifname: &str) -> Result<Endpoint, EndpointError> {
        let ep = self.find(container_id, ifname).cloned().ok_or_else(|| {
            EndpointError::NotFound(format!("no endpoint for container {container_id} interface {ifname}"))
        })?;
        let ip = parse_ip(&ep.ipv4).ok_or_else(|| EndpointError::BadRequest("stored address is corrupt".into()))?;
        let link = nl::link_by_name(&ep.host_ifname).await?;
        match link {
            Some(l) if l.index == ep.host_ifindex && l.up => {}
            Some(_) => return Err(EndpointError::NotFound(format!("host veth {} changed or is down", ep.host_ifname))),
            None => return Err(EndpointError::NotFound(format!("host veth {} is missing", ep.host_ifname))),
        }
        if !self.datapath.endpoint_attached(&ep.host_ifname) {
            return Err(EndpointError::NotFound(format!("datapath programs are not attached to {}", ep.host_ifname)));
        }
        let in_map = self.datapath.endpoints()?.into_iter().any(|(a, e)| a == ip && e.endpoint_id == ep.id);
        if !in_map {
            return Err(EndpointError::NotFound(format!("endpoint {} is missing from the datapath map", ep.id)));
        }
        let gw = parse_ip(&ep.gateway).unwrap_or(self.ipam.gateway());
        nl::check_pod_interface(Path::new(&ep.netns), &ep.ifname, ip, gw).await?;
        Ok(ep)
    }

    pub fn update_labels(&mut self, id: u32, update: LabelsUpdate) -> Result<Endpoint, EndpointError> {
        for (k, v) in &update.labels {
            validate_label(k, v)?;
        }
        let ep = self.by_id.get(&id).ok_or_else(|| EndpointError::NotFound(format!("no endpoint {id}")))?;
        let mut ep = ep.clone();
        ep.labels = update.labels;
        if let Some(ports) = update.ports {
            ep.ports = ports;
        }
        self.store.put_endpoint(&ep)?;
        self.by_id.insert(id, ep);
        self.refresh_identity(id)?;
        self.sync_policy()?;
        self.persist_policy()?;
        self.by_id.get(&id).cloned().ok_or_else(|| EndpointError::NotFound(format!("no endpoint {id}")))
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

fn validate_label(k: &str, v: &str) -> Result<(), EndpointError> {
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
