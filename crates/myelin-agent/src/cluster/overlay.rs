//! The overlay on this node: the collect-metadata tunnel device with the overlay programs on it,
//! and, per other node, its pod CIDR routed into the device and its address in `tunnel_map`
//! (where `to_overlay` finds the tunnel endpoint of a destination pod).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use myelin_bpf::Datapath;
use myelin_netlink::tunnel::{self, TunnelKind};
use tracing::{info, warn};

/// The tunnel device's name per encapsulation.
#[must_use]
pub fn device_name(kind: TunnelKind) -> &'static str {
    match kind {
        TunnelKind::Vxlan => "myelin_vxlan",
        TunnelKind::Geneve => "myelin_geneve",
    }
}

pub struct Overlay {
    kind: TunnelKind,
    ifindex: u32,
    /// Source address of the node's own packets into the tunnel.
    src: Ipv4Addr,
    /// What the kernel and `tunnel_map` hold now: remote pod CIDR -> node address.
    installed: BTreeMap<Ipv4Net, Ipv4Addr>,
}

impl Overlay {
    /// Create (or adopt) the device with MTU `mtu`, attach the overlay programs, and adopt the
    /// routes and tunnel entries an earlier run left (they keep forwarding until the first sync).
    pub async fn setup(kind: TunnelKind, datapath: &Arc<Datapath>, mtu: u32, src: Ipv4Addr) -> Result<Self> {
        let name = device_name(kind);
        let link = tunnel::ensure_tunnel_device(kind, name, mtu).await.with_context(|| format!("creating {name}"))?;
        let dp = datapath.clone();
        let index = link.index;
        tokio::task::spawn_blocking(move || {
            dp.attach_tunnel(name, index)?;
            // Pods' packets for other nodes' pods go straight into the device.
            dp.set_overlay_device(index)
        })
        .await?
        .with_context(|| format!("attaching the overlay programs to {name}"))?;
        let mut installed = BTreeMap::new();
        let dp = datapath.clone();
        for t in tokio::task::spawn_blocking(move || dp.tunnels()).await?.context("reading tunnel_map")? {
            if let Ok(net) = Ipv4Net::new(t.network, t.prefix_len) {
                installed.insert(net, t.node);
            }
        }
        info!(device = name, ifindex = index, mtu, adopted = installed.len(), "overlay ready");
        Ok(Self { kind, ifindex: index, src, installed })
    }

    #[must_use]
    pub fn kind(&self) -> TunnelKind {
        self.kind
    }

    /// Make the routes and `tunnel_map` exactly `want` (remote pod CIDR -> node address).
    /// Errors are logged per entry; what failed is tried again at the next sync.
    pub async fn sync(&mut self, datapath: &Arc<Datapath>, want: &BTreeMap<Ipv4Net, Ipv4Addr>) {
        let gone: Vec<Ipv4Net> = self.installed.keys().filter(|n| !want.contains_key(n)).copied().collect();
        for net in gone {
            let dp = datapath.clone();
            let r = tokio::task::spawn_blocking(move || dp.delete_tunnel(net.network(), net.prefix_len())).await;
            if let Ok(Err(e)) = r {
                warn!(%net, error = %e, "removing a tunnel entry");
            }
            if let Err(e) = tunnel::delete_prefix_route(net.network(), net.prefix_len(), self.ifindex).await {
                warn!(%net, error = %e, "removing a route into the tunnel");
            }
            self.installed.remove(&net);
            info!(%net, "remote pod CIDR withdrawn");
        }
        for (net, node) in want {
            if self.installed.get(net) == Some(node) {
                continue;
            }
            let (dp, n, nd) = (datapath.clone(), *net, *node);
            match tokio::task::spawn_blocking(move || dp.upsert_tunnel(n.network(), n.prefix_len(), nd)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(%net, %node, error = %e, "writing a tunnel entry");
                    continue;
                }
                Err(e) => {
                    warn!(%net, error = %e, "tunnel entry task");
                    continue;
                }
            }
            if let Err(e) = tunnel::replace_prefix_route(net.network(), net.prefix_len(), self.ifindex, self.src).await
            {
                warn!(%net, error = %e, "routing a remote pod CIDR into the tunnel");
                continue;
            }
            self.installed.insert(*net, *node);
            info!(%net, %node, "remote pod CIDR routed through the overlay");
        }
    }
}
