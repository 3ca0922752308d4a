//! Services for socket-level load balancing (the `sock` object): frontends
//! and their backends in `lb4_services`, `lb4_backends`, `lb4_reverse_nat`
//! (semantics in `myelin_abi.h`).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::datapath::{decode, ip_u32, map_err};
use crate::skel_lb::types;
use crate::{sys, BpfError, Datapath};

/// A service frontend: address, port, protocol (6 TCP, 17 UDP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    /// The virtual address clients connect to.
    pub address: Ipv4Addr,
    /// The port clients connect to.
    pub port: u16,
    /// IP protocol number.
    pub protocol: u8,
}

/// A backend of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// Where connections go.
    pub address: Ipv4Addr,
    /// Its port.
    pub port: u16,
}

/// One service as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRow {
    /// The frontend.
    pub frontend: Frontend,
    /// Its backends, in slot order.
    pub backends: Vec<Backend>,
}

struct LbMaps<'a> {
    services: &'a MapHandle,
    backends: &'a MapHandle,
    revnat: &'a MapHandle,
}

fn key(f: Frontend, slot: u16) -> types::lb4_key {
    types::lb4_key {
        address: ip_u32(f.address),
        dport: f.port.to_be(),
        backend_slot: slot,
        proto: f.protocol,
        _pad: [0; 3],
    }
}

/// A stable id for a backend address: the same backend of several services
/// shares one `lb4_backends` entry.
fn backend_id(b: Backend, proto: u8) -> u32 {
    // FNV-1a over (address, port, proto), never 0.
    let mut h: u32 = 0x811c_9dc5;
    for byte in b.address.octets().into_iter().chain(b.port.to_be_bytes()).chain([proto]) {
        h ^= u32::from(byte);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

/// rev_nat_index of a frontend: stable, never 0 (collisions only cost a
/// wrong getpeername() for two frontends hashing alike; they are checked).
fn rev_nat_index(f: Frontend) -> u16 {
    let h = backend_id(Backend { address: f.address, port: f.port }, f.protocol);
    u16::try_from(h % 65_535).unwrap_or(0) + 1
}

impl Datapath {
    fn lb(&self) -> Result<LbMaps<'_>, BpfError> {
        match (&self.maps.lb4_services, &self.maps.lb4_backends, &self.maps.lb4_reverse_nat) {
            (Some(services), Some(backends), Some(revnat)) => Ok(LbMaps { services, backends, revnat }),
            _ => Err(BpfError::Invalid(
                "socket load balancing is not loaded (the kernel refused cgroup sock_addr programs)".into(),
            )),
        }
    }

    /// Create or replace the service `frontend` with `backends`. Backends go
    /// in before the service entry names them, so a connect() sees the old
    /// set or the new one; slots beyond the new count are removed after.
    pub fn upsert_service(&self, frontend: Frontend, backends: &[Backend]) -> Result<(), BpfError> {
        if !matches!(frontend.protocol, 6 | 17) {
            return Err(BpfError::Invalid(format!("service {frontend:?}: protocol must be 6 (TCP) or 17 (UDP)")));
        }
        let count = u16::try_from(backends.len())
            .map_err(|_| BpfError::Invalid(format!("service {frontend:?}: {} backends is too many", backends.len())))?;
        let lb = self.lb()?;
        let old = self.service(frontend)?.map_or(0, |s| s.backends.len());
        for (i, b) in backends.iter().enumerate() {
            let id = backend_id(*b, frontend.protocol);
            let v = types::lb4_backend {
                address: ip_u32(b.address),
                port: b.port.to_be(),
                proto: frontend.protocol,
                flags: 0,
            };
            lb.backends
                .update(sys::as_bytes(&id), sys::as_bytes(&v), MapFlags::ANY)
                .map_err(map_err("lb4_backends", format!("writing backend {b:?}")))?;
            let slot = types::lb4_service { backend_id: id, count: 0, rev_nat_index: 0, flags: 0 };
            let k = key(frontend, u16::try_from(i + 1).unwrap_or(u16::MAX));
            lb.services
                .update(sys::as_bytes(&k), sys::as_bytes(&slot), MapFlags::ANY)
                .map_err(map_err("lb4_services", format!("writing slot {} of {frontend:?}", i + 1)))?;
        }
        let rev = rev_nat_index(frontend);
        let rn = types::lb4_reverse_nat { address: ip_u32(frontend.address), port: frontend.port.to_be(), _pad: 0 };
        lb.revnat
            .update(sys::as_bytes(&rev), sys::as_bytes(&rn), MapFlags::ANY)
            .map_err(map_err("lb4_reverse_nat", format!("writing {frontend:?}")))?;
        let svc = types::lb4_service { backend_id: 0, count, rev_nat_index: rev, flags: 0 };
        lb.services
            .update(sys::as_bytes(&key(frontend, 0)), sys::as_bytes(&svc), MapFlags::ANY)
            .map_err(map_err("lb4_services", format!("writing {frontend:?}")))?;
        for slot in backends.len() + 1..=old {
            let _ = lb.services.delete(sys::as_bytes(&key(frontend, u16::try_from(slot).unwrap_or(u16::MAX))));
        }
        self.gc_backends()
    }

    /// Remove a service; false if there was none.
    pub fn delete_service(&self, frontend: Frontend) -> Result<bool, BpfError> {
        let lb = self.lb()?;
        let Some(old) = self.service(frontend)? else { return Ok(false) };
        let _ = lb.services.delete(sys::as_bytes(&key(frontend, 0)));
        for slot in 1..=old.backends.len() {
            let _ = lb.services.delete(sys::as_bytes(&key(frontend, u16::try_from(slot).unwrap_or(u16::MAX))));
        }
        let _ = lb.revnat.delete(sys::as_bytes(&rev_nat_index(frontend)));
        self.gc_backends()?;
        Ok(true)
    }

    /// One service, if it exists.
    pub fn service(&self, frontend: Frontend) -> Result<Option<ServiceRow>, BpfError> {
        let lb = self.lb()?;
        let Some(raw) = lb
            .services
            .lookup(sys::as_bytes(&key(frontend, 0)), MapFlags::ANY)
            .map_err(map_err("lb4_services", format!("reading {frontend:?}")))?
        else {
            return Ok(None);
        };
        let svc: types::lb4_service = decode("lb4_services", &raw)?;
        let mut backends = Vec::new();
        for slot in 1..=svc.count {
            let Some(raw) = lb
                .services
                .lookup(sys::as_bytes(&key(frontend, slot)), MapFlags::ANY)
                .map_err(map_err("lb4_services", format!("reading slot {slot} of {frontend:?}")))?
            else {
                continue;
            };
            let s: types::lb4_service = decode("lb4_services", &raw)?;
            if let Some(raw) = lb
                .backends
                .lookup(sys::as_bytes(&s.backend_id), MapFlags::ANY)
                .map_err(map_err("lb4_backends", format!("reading backend {}", s.backend_id)))?
            {
                let b: types::lb4_backend = decode("lb4_backends", &raw)?;
                backends.push(Backend { address: Ipv4Addr::from(b.address.to_ne_bytes()), port: u16::from_be(b.port) });
            }
        }
        Ok(Some(ServiceRow { frontend, backends }))
    }

    /// Every service, sorted by frontend.
    pub fn services(&self) -> Result<Vec<ServiceRow>, BpfError> {
        let lb = self.lb()?;
        let mut fronts = BTreeSet::new();
        for kb in lb.services.keys() {
            let k: types::lb4_key = decode("lb4_services", &kb)?;
            if k.backend_slot == 0 {
                fronts.insert(Frontend {
                    address: Ipv4Addr::from(k.address.to_ne_bytes()),
                    port: u16::from_be(k.dport),
                    protocol: k.proto,
                });
            }
        }
        let mut out = Vec::new();
        for f in fronts {
            if let Some(s) = self.service(f)? {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Drop backend entries no service slot names.
    fn gc_backends(&self) -> Result<(), BpfError> {
        let lb = self.lb()?;
        let mut used = BTreeSet::new();
        for kb in lb.services.keys() {
            let k: types::lb4_key = decode("lb4_services", &kb)?;
            if k.backend_slot == 0 {
                continue;
            }
            if let Some(raw) = lb.services.lookup(&kb, MapFlags::ANY).map_err(map_err("lb4_services", "reading"))? {
                let s: types::lb4_service = decode("lb4_services", &raw)?;
                used.insert(s.backend_id);
            }
        }
        let ids: Vec<Vec<u8>> = lb.backends.keys().collect();
        for kb in ids {
            let id: u32 = decode("lb4_backends", &kb)?;
            if !used.contains(&id) {
                let _ = lb.backends.delete(&kb);
            }
        }
        Ok(())
    }
}
