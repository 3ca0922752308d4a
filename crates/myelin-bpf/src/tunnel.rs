//! The overlay's `tunnel_map`: pod prefixes of other nodes -> the node's underlay address, read
//! by `to_overlay` to set the tunnel key of what the node routes into its tunnel device.

use std::net::Ipv4Addr;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::datapath::{decode, map_err};
use crate::skel_overlay::types;
use crate::{sys, BpfError, Datapath};

/// One pod prefix and the node that holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelRoute {
    /// Network address of the prefix.
    pub network: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// The node's underlay address (the tunnel's remote end).
    pub node: Ipv4Addr,
}

fn tkey(ip: Ipv4Addr, prefix_len: u8) -> Result<types::tunnel_key, BpfError> {
    if prefix_len > 32 {
        return Err(BpfError::Invalid(format!("tunnel prefix {ip}/{prefix_len}: longer than 32")));
    }
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
    let net = Ipv4Addr::from(u32::from(ip) & mask);
    Ok(types::tunnel_key { prefixlen: u32::from(prefix_len), ip4: u32::from_ne_bytes(net.octets()) })
}

impl Datapath {
    fn tunnel_map(&self) -> Result<&MapHandle, BpfError> {
        self.maps
            .tunnel_map
            .as_ref()
            .ok_or_else(|| BpfError::Invalid("the overlay is not loaded (no tunnel_map)".into()))
    }

    /// Send what the node routes into its tunnel device towards `ip/prefix_len` to `node`.
    pub fn upsert_tunnel(&self, ip: Ipv4Addr, prefix_len: u8, node: Ipv4Addr) -> Result<(), BpfError> {
        if node.is_unspecified() {
            return Err(BpfError::Invalid(format!(
                "tunnel {ip}/{prefix_len}: the node address 0.0.0.0 is no endpoint"
            )));
        }
        let k = tkey(ip, prefix_len)?;
        let v = types::tunnel_value { remote_ip4: u32::from_ne_bytes(node.octets()), flags: 0 };
        self.tunnel_map()?
            .update(sys::as_bytes(&k), sys::as_bytes(&v), MapFlags::ANY)
            .map_err(map_err("tunnel_map", format!("setting {ip}/{prefix_len} -> {node}")))
    }

    /// Forget `ip/prefix_len`; false if it was not there.
    pub fn delete_tunnel(&self, ip: Ipv4Addr, prefix_len: u8) -> Result<bool, BpfError> {
        let k = tkey(ip, prefix_len)?;
        match self.tunnel_map()?.delete(sys::as_bytes(&k)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(BpfError::Map { map: "tunnel_map", op: format!("deleting {ip}/{prefix_len}"), source }),
        }
    }

    /// Send pods' packets for other nodes' pods straight into the tunnel device `ifindex` (0:
    /// no overlay; the pod programs then ask the kernel's FIB for the next hop).
    pub fn set_overlay_device(&self, ifindex: u32) -> Result<(), BpfError> {
        let m =
            self.maps.overlay_dev.as_ref().ok_or_else(|| {
                BpfError::Invalid("the datapath has no overlay_dev map (an older lxc object?)".into())
            })?;
        let v = types::overlay_dev { ifindex, flags: 0 };
        m.update(sys::as_bytes(&0u32), sys::as_bytes(&v), MapFlags::ANY)
            .map_err(map_err("overlay_dev", format!("setting ifindex {ifindex}")))
    }

    /// Every pod prefix with its node, sorted.
    pub fn tunnels(&self) -> Result<Vec<TunnelRoute>, BpfError> {
        let m = self.tunnel_map()?;
        let mut out = Vec::new();
        for kb in m.keys() {
            let k: types::tunnel_key = decode("tunnel_map", &kb)?;
            let Some(vb) = m.lookup(&kb, MapFlags::ANY).map_err(map_err("tunnel_map", "reading"))? else { continue };
            let v: types::tunnel_value = decode("tunnel_map", &vb)?;
            out.push(TunnelRoute {
                network: Ipv4Addr::from(k.ip4.to_ne_bytes()),
                prefix_len: u8::try_from(k.prefixlen).unwrap_or(32),
                node: Ipv4Addr::from(v.remote_ip4.to_ne_bytes()),
            });
        }
        out.sort();
        Ok(out)
    }
}
