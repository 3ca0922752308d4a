//! The XDP prefilter's deny list (`prefilter4`): sources dropped on the
//! uplink before the stack sees them.

use std::net::Ipv4Addr;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::datapath::{decode, map_err};
use crate::skel_xdp::types;
use crate::{sys, BpfError, Datapath};

/// One deny-list prefix and what it dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrefilterRow {
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// Packets dropped.
    pub packets: u64,
    /// Bytes dropped.
    pub bytes: u64,
}

fn pkey(ip: Ipv4Addr, prefix_len: u8) -> Result<types::ipcache_key, BpfError> {
    if prefix_len > 32 {
        return Err(BpfError::Invalid(format!("prefilter prefix {ip}/{prefix_len}: longer than 32")));
    }
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
    let net = Ipv4Addr::from(u32::from(ip) & mask);
    Ok(types::ipcache_key { prefixlen: u32::from(prefix_len), ip4: u32::from_ne_bytes(net.octets()) })
}

impl Datapath {
    fn prefilter_map(&self) -> Result<&MapHandle, BpfError> {
        self.maps
            .prefilter4
            .as_ref()
            .ok_or_else(|| BpfError::Invalid("the XDP prefilter is not loaded (the kernel refused XDP)".into()))
    }

    /// Drop everything from `ip/prefix_len` at the uplink (XDP).
    pub fn prefilter_deny(&self, ip: Ipv4Addr, prefix_len: u8) -> Result<(), BpfError> {
        let k = pkey(ip, prefix_len)?;
        let v = types::prefilter_value { packets: 0, bytes: 0 };
        self.prefilter_map()?
            .update(sys::as_bytes(&k), sys::as_bytes(&v), MapFlags::NO_EXIST)
            .or_else(|e| if e.kind() == libbpf_rs::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
            .map_err(map_err("prefilter4", format!("adding {ip}/{prefix_len}")))
    }

    /// Stop dropping `ip/prefix_len`; false if it was not listed.
    pub fn prefilter_allow(&self, ip: Ipv4Addr, prefix_len: u8) -> Result<bool, BpfError> {
        let k = pkey(ip, prefix_len)?;
        match self.prefilter_map()?.delete(sys::as_bytes(&k)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(BpfError::Map { map: "prefilter4", op: format!("deleting {ip}/{prefix_len}"), source }),
        }
    }

    /// The deny list with its counters, sorted.
    pub fn prefilter(&self) -> Result<Vec<PrefilterRow>, BpfError> {
        let m = self.prefilter_map()?;
        let mut out = Vec::new();
        for kb in m.keys() {
            let k: types::ipcache_key = decode("prefilter4", &kb)?;
            let Some(vb) = m.lookup(&kb, MapFlags::ANY).map_err(map_err("prefilter4", "reading"))? else { continue };
            let v: types::prefilter_value = decode("prefilter4", &vb)?;
            out.push(PrefilterRow {
                network: Ipv4Addr::from(k.ip4.to_ne_bytes()),
                prefix_len: u8::try_from(k.prefixlen).unwrap_or(32),
                packets: v.packets,
                bytes: v.bytes,
            });
        }
        out.sort();
        Ok(out)
    }
}
