//! Kernel plumbing of one endpoint, run as its own task so that concurrent
//! ADDs overlap: a veth pair (netlink), the policy and the datapath entry (the
//! policy component), the programs (a TCX attach waits for an RCU grace
//! period, on a blocking thread), the host route and neighbour. Undone in
//! reverse when a step fails, so a failed ADD leaves nothing behind.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use myelin_api::{Endpoint, EndpointAddRequest};
use myelin_bpf::Datapath;
use myelin_netlink as nl;
use tracing::{debug, info, warn};

use super::EndpointError;
use crate::policy::PolicyHandle;

/// What a plumbing job needs.
#[derive(Clone)]
pub struct Plumber {
    pub datapath: Arc<Datapath>,
    pub policy: PolicyHandle,
    pub gateway: Ipv4Addr,
    /// Pod interface MTU (None: the kernel's default); the overlay's sets it below the
    /// uplink's by the encapsulation overhead.
    pub mtu: Option<u32>,
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Run a blocking datapath call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, myelin_bpf::BpfError> + Send + 'static,
) -> Result<T, EndpointError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EndpointError::BadRequest(format!("datapath task failed: {e}")))?
        .map_err(EndpointError::from)
}

impl Plumber {
    /// Plumb endpoint `id` at `ip` for `req`.
    pub async fn plumb(&self, req: &EndpointAddRequest, id: u32, ip: Ipv4Addr) -> Result<Endpoint, EndpointError> {
        let host_ifname = nl::host_ifname(&req.container_id, &req.ifname);
        let t0 = Instant::now();
        let veth = nl::create_pod_veth(&nl::PodVeth {
            host_ifname: host_ifname.clone(),
            netns_path: req.netns.clone().into(),
            pod_ifname: req.ifname.clone(),
            pod_ip: ip,
            gateway: self.gateway,
            mtu: self.mtu,
        })
        .await?;
        let mut ep = Endpoint {
            id,
            container_id: req.container_id.clone(),
            netns: req.netns.clone(),
            ifname: req.ifname.clone(),
            host_ifname: host_ifname.clone(),
            host_ifindex: veth.host.index,
            ipv4: ip.to_string(),
            gateway: self.gateway.to_string(),
            mac: nl::format_mac(&veth.pod_mac),
            host_mac: nl::format_mac(&veth.host.mac),
            namespace: req.namespace.clone(),
            pod_name: req.pod_name.clone(),
            labels: req.labels.clone(),
            ports: req.ports.clone(),
            identity: 0,
            created: now(),
            labels_pending: req.labels_pending,
        };
        let wired = async {
            let t_veth = t0.elapsed();
            // The endpoint's policy is in place before its first packet can pass:
            // policy map, then endpoint entry (both by the policy component), then the programs.
            let ids = self.policy.endpoints(vec![ep.clone()], vec![]).await.map_err(EndpointError::Policy)?;
            ep.identity = ids.get(&id).copied().unwrap_or(0);
            let t_policy = t0.elapsed();
            let dp = self.datapath.clone();
            let (name, index) = (host_ifname.clone(), veth.host.index);
            blocking(move || dp.attach_endpoint(&name, index)).await?;
            let t_attach = t0.elapsed();
            nl::replace_host_route(ip, veth.host.index).await?;
            nl::replace_neighbour(ip, veth.pod_mac, veth.host.index).await?;
            debug!(endpoint = id, veth = ?t_veth, policy = ?t_policy, attach = ?t_attach, routes = ?t0.elapsed(),
                "plumbing timings (cumulative)");
            Ok::<(), EndpointError>(())
        }
        .await;
        if let Err(e) = wired {
            self.unplumb(&host_ifname, id).await;
            return Err(e);
        }
        info!(endpoint = id, %ip, identity = ep.identity, container = %req.container_id, "endpoint added");
        Ok(ep)
    }

    /// Undo the kernel side of an endpoint; best effort, logs what fails. The policy
    /// component removes its entry first (no packet is attributed to it any more), then its
    /// policy and counters; then the programs and the veth go.
    pub async fn unplumb(&self, host_ifname: &str, id: u32) {
        if let Err(e) = self.policy.endpoints(vec![], vec![id]).await {
            warn!(endpoint = id, error = %e, "removing the endpoint's datapath state");
        }
        let dp = self.datapath.clone();
        let name = host_ifname.to_owned();
        if let Err(e) = blocking(move || dp.detach_endpoint(&name)).await {
            warn!(endpoint = id, error = %e, "detaching");
        }
        // Deleting the host side removes the pair, its route and its neighbour entry.
        if let Err(e) = nl::delete_link(host_ifname).await {
            warn!(endpoint = id, error = %e, "deleting veth");
        }
    }

    /// Make sure an endpoint known from the store is wired; touch nothing that is.
    /// Returns whether it was adopted whole.
    pub async fn adopt(&self, ep: &Endpoint) -> bool {
        let link = match nl::link_by_name(&ep.host_ifname).await {
            Ok(Some(l)) if l.index == ep.host_ifindex => l,
            Ok(_) => {
                warn!(endpoint = ep.id, ifname = %ep.host_ifname, "host veth is gone; endpoint kept until CNI DEL");
                return false;
            }
            Err(e) => {
                warn!(endpoint = ep.id, error = %e, "cannot inspect host veth");
                return false;
            }
        };
        let Ok(ip) = ep.ipv4.parse::<Ipv4Addr>() else { return false };
        let dp = self.datapath.clone();
        let name = ep.host_ifname.clone();
        let mut ok = true;
        match blocking(move || dp.attach_endpoint(&name, link.index)).await {
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
        ok
    }

    /// CNI CHECK: everything the endpoint needs is in place.
    pub async fn check(&self, ep: &Endpoint) -> Result<(), EndpointError> {
        let ip: Ipv4Addr =
            ep.ipv4.parse().map_err(|_| EndpointError::BadRequest("stored address is corrupt".into()))?;
        match nl::link_by_name(&ep.host_ifname).await? {
            Some(l) if l.index == ep.host_ifindex && l.up => {}
            Some(_) => return Err(EndpointError::NotFound(format!("host veth {} changed or is down", ep.host_ifname))),
            None => return Err(EndpointError::NotFound(format!("host veth {} is missing", ep.host_ifname))),
        }
        let dp = self.datapath.clone();
        let name = ep.host_ifname.clone();
        if !blocking(move || Ok(dp.endpoint_attached(&name))).await? {
            return Err(EndpointError::NotFound(format!("datapath programs are not attached to {}", ep.host_ifname)));
        }
        let dp = self.datapath.clone();
        let in_map = blocking(move || dp.endpoint(ip)).await?.is_some_and(|e| e.endpoint_id == ep.id);
        if !in_map {
            return Err(EndpointError::NotFound(format!("endpoint {} is missing from the datapath map", ep.id)));
        }
        let gw = ep.gateway.parse().unwrap_or(self.gateway);
        nl::check_pod_interface(Path::new(&ep.netns), &ep.ifname, ip, gw).await?;
        Ok(())
    }
}
