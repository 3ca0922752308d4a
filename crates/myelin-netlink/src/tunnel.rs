//! The overlay's kernel side: a collect-metadata ("external") VXLAN or Geneve device, whose
//! tunnel key the eBPF programs on it set and read, and routes of other nodes' pod CIDRs into it.

use std::net::Ipv4Addr;

use rtnetlink::packet_route::link::{InfoData, InfoGeneve, InfoKind, LinkFlags};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::{
    errno_of, route_dst, route_oif, route_table, LinkInfo, NetlinkError, Netns, Nl, Result, EEXIST, ENODEV, ENOENT,
    EOPNOTSUPP, ESRCH, RT_TABLE_MAIN,
};

/// Which overlay encapsulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelKind {
    Vxlan,
    Geneve,
}

impl TunnelKind {
    /// The UDP port: Cilium's VXLAN port 8472 (the Linux default, not IANA's 4789), Geneve's 6081.
    #[must_use]
    pub fn port(self) -> u16 {
        match self {
            TunnelKind::Vxlan => 8472,
            TunnelKind::Geneve => 6081,
        }
    }

    /// Bytes the encapsulation adds over IPv4: outer IP 20 + UDP 8 + VXLAN/Geneve 8 + inner
    /// Ethernet 14 (Geneve without options).
    #[must_use]
    pub fn overhead(self) -> u32 {
        50
    }
}

/// Create (if missing) the collect-metadata tunnel device `name`, without ARP (the eBPF programs
/// address its packets; there is no neighbour to resolve), with `mtu`, and set it up. A link of
/// that name that exists is reused; its MTU is set again.
pub async fn ensure_tunnel_device(kind: TunnelKind, name: &str, mtu: u32) -> Result<LinkInfo> {
    crate::validate_ifname(name)?;
    let nl = Nl::connect(Netns::Current)?;
    if nl.link_by_name(name).await?.is_none() {
        let msg = match kind {
            TunnelKind::Vxlan => LinkVxlan::new(name, 0).port(kind.port()).collect_metadata(true).build(),
            TunnelKind::Geneve => LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Geneve)
                .name(name.to_owned())
                .set_info_data(InfoData::Geneve(vec![InfoGeneve::CollectMetadata, InfoGeneve::Port(kind.port())]))
                .build(),
        };
        match nl.handle.link().add(msg).execute().await {
            Ok(()) => {}
            Err(e) if errno_of(&e) == Some(EEXIST) => {}
            Err(e) if errno_of(&e) == Some(EOPNOTSUPP) => {
                return Err(match kind {
                    TunnelKind::Vxlan => NetlinkError::Unsupported {
                        kind: "VXLAN",
                        config: "CONFIG_VXLAN",
                        fix: "use routing = \"native\" or a kernel with VXLAN",
                    },
                    TunnelKind::Geneve => NetlinkError::Unsupported {
                        kind: "Geneve",
                        config: "CONFIG_GENEVE",
                        fix: "use routing = \"vxlan\" (or native), or a kernel with Geneve",
                    },
                })
            }
            Err(e) => {
                return Err(nl.err(format!("creating {kind:?} device {name} (external, port {})", kind.port()))(e))
            }
        }
    }
    let link = nl.require_link(name).await?;
    let mut set = LinkUnspec::new_with_index(link.index).mtu(mtu).up().build();
    set.header.flags |= LinkFlags::Noarp;
    set.header.change_mask |= LinkFlags::Noarp;
    nl.handle.link().set(set).execute().await.map_err(nl.err(format!("setting {name} up, noarp, mtu {mtu}")))?;
    nl.require_link(name).await
}

/// `ip route replace NET/LEN dev <ifindex> scope link src SRC`: a prefix routed into a device.
pub async fn replace_prefix_route(net: Ipv4Addr, len: u8, ifindex: u32, src: Ipv4Addr) -> Result<()> {
    let nl = Nl::connect(Netns::Current)?;
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(net, len)
        .output_interface(ifindex)
        .pref_source(src)
        .scope(RouteScope::Link)
        .build();
    nl.replace_route(msg, format!("replacing route {net}/{len} dev index {ifindex} src {src}")).await
}

/// Delete `NET/LEN dev <ifindex>`; `Ok(false)` if there was no such route.
pub async fn delete_prefix_route(net: Ipv4Addr, len: u8, ifindex: u32) -> Result<bool> {
    let nl = Nl::connect(Netns::Current)?;
    let mut msg = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(net, len).output_interface(ifindex).build();
    msg.header.scope = RouteScope::NoWhere;
    msg.header.protocol = rtnetlink::packet_route::route::RouteProtocol::Unspec;
    match nl.handle.route().del(msg).execute().await {
        Ok(()) => Ok(true),
        Err(e) if matches!(errno_of(&e), Some(ESRCH | ENOENT | ENODEV)) => Ok(false),
        Err(e) => Err(nl.err(format!("deleting route {net}/{len} dev index {ifindex}"))(e)),
    }
}

/// The main table's IPv4 routes through `ifindex`: (network, prefix length).
pub async fn prefix_routes(ifindex: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
    let nl = Nl::connect(Netns::Current)?;
    Ok(nl
        .routes_v4()
        .await?
        .iter()
        .filter(|r| route_table(r) == RT_TABLE_MAIN && route_oif(r) == Some(ifindex))
        .filter_map(|r| route_dst(r).map(|d| (d, r.header.destination_prefix_length)))
        .collect())
}
