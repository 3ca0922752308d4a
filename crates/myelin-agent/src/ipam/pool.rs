//! The address pool of one node's pod CIDR. Pure logic: the IPAM component
//! (`super`) owns it and persists what it hands out.
//!
//! Addresses are handed out round-robin from a cursor (as host-local IPAM
//! does), so a just-released address is the last to be reused: stale
//! neighbour or conntrack state of a deleted pod never meets a new one.

use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error(
        "address pool {0} is exhausted ({1} addresses in use); delete unused pods or give the node a larger pod_cidr"
    )]
    Exhausted(Ipv4Net, usize),
    #[error("address {0} is not in the pool {1}")]
    OutOfRange(Ipv4Addr, Ipv4Net),
    #[error("address {0} is already allocated to {1}")]
    InUse(Ipv4Addr, String),
    #[error("booking the address: {0}")]
    Store(String),
    #[error("the IPAM component is not running")]
    Gone,
}

#[derive(Debug, Clone)]
pub struct Ipam {
    cidr: Ipv4Net,
    gateway: Ipv4Addr,
    first: u32,
    last: u32,
    allocated: BTreeMap<u32, String>,
    /// The last address handed out.
    cursor: u32,
}

impl Ipam {
    /// A pool over `cidr` minus its network, broadcast and gateway (first host) addresses.
    #[must_use]
    pub fn new(cidr: Ipv4Net) -> Self {
        let net = u32::from(cidr.network());
        let bcast = u32::from(cidr.broadcast());
        let gateway = Ipv4Addr::from(net + 1);
        Self { cidr, gateway, first: net + 2, last: bcast - 1, allocated: BTreeMap::new(), cursor: net + 1 }
    }

    #[must_use]
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    #[must_use]
    pub fn cursor(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.cursor)
    }

    /// Restore the round-robin position (from the store).
    pub fn set_cursor(&mut self, ip: Ipv4Addr) {
        let v = u32::from(ip);
        if v >= self.first - 1 && v <= self.last {
            self.cursor = v;
        }
    }

    #[must_use]
    pub fn capacity(&self) -> usize {
        (self.last - self.first + 1) as usize
    }

    #[must_use]
    pub fn in_use(&self) -> usize {
        self.allocated.len()
    }

    /// Record an allocation known from the store.
    pub fn reserve(&mut self, ip: Ipv4Addr, owner: &str) -> Result<(), IpamError> {
        let v = u32::from(ip);
        if v < self.first || v > self.last {
            return Err(IpamError::OutOfRange(ip, self.cidr));
        }
        if let Some(o) = self.allocated.get(&v) {
            if o != owner {
                return Err(IpamError::InUse(ip, o.clone()));
            }
        }
        self.allocated.insert(v, owner.to_owned());
        Ok(())
    }

    /// Hand out the next free address after the cursor.
    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr, IpamError> {
        let size = self.last - self.first + 1;
        for step in 1..=size {
            let candidate = self.first + (self.cursor.wrapping_sub(self.first).wrapping_add(step)) % size;
            if let std::collections::btree_map::Entry::Vacant(slot) = self.allocated.entry(candidate) {
                slot.insert(owner.to_owned());
                self.cursor = candidate;
                return Ok(Ipv4Addr::from(candidate));
            }
        }
        Err(IpamError::Exhausted(self.cidr, self.allocated.len()))
    }

    /// Release an address; false when it was not allocated.
    pub fn release(&mut self, ip: Ipv4Addr) -> bool {
        self.allocated.remove(&u32::from(ip)).is_some()
    }

    #[must_use]
    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// Every allocation, in address order.
    pub fn allocations(&self) -> impl Iterator<Item = (Ipv4Addr, &str)> {
        self.allocated.iter().map(|(k, v)| (Ipv4Addr::from(*k), v.as_str()))
    }

    #[must_use]
    pub fn owner(&self, ip: Ipv4Addr) -> Option<&str> {
        self.allocated.get(&u32::from(ip)).map(String::as_str)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn pool(c: &str) -> Ipam {
        Ipam::new(c.parse().unwrap())
    }

    #[test]
    fn skips_network_gateway_and_broadcast() {
        let mut p = pool("10.0.0.0/29"); // .0 net, .1 gw, .2-.6 pods, .7 bcast
        assert_eq!(p.capacity(), 5);
        let got: Vec<_> = (0..5).map(|i| p.allocate(&format!("c{i}")).unwrap()).collect();
        assert_eq!(got.first(), Some(&Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(got.last(), Some(&Ipv4Addr::new(10, 0, 0, 6)));
        assert!(matches!(p.allocate("x"), Err(IpamError::Exhausted(_, 5))));
    }

    #[test]
    fn round_robin_does_not_reuse_a_released_address_first() {
        let mut p = pool("10.0.0.0/29");
        let a = p.allocate("a").unwrap();
        assert!(p.release(a));
        let b = p.allocate("b").unwrap();
        assert_ne!(a, b);
        assert!(!p.release(Ipv4Addr::new(10, 0, 0, 200)));
    }

    #[test]
    fn many_add_del_cycles_never_duplicate() {
        let mut p = pool("10.1.0.0/24");
        let mut live = HashSet::new();
        for i in 0..2000u32 {
            let ip = p.allocate(&i.to_string()).unwrap();
            assert!(live.insert(ip), "duplicate {ip}");
            if i % 3 != 0 {
                let victim = *live.iter().next().unwrap();
                live.remove(&victim);
                p.release(victim);
            }
            if live.len() > 200 {
                let victim = *live.iter().next().unwrap();
                live.remove(&victim);
                p.release(victim);
            }
        }
    }

    #[test]
    fn reserve_restores_and_detects_conflicts() {
        let mut p = pool("10.0.0.0/24");
        p.reserve(Ipv4Addr::new(10, 0, 0, 9), "a").unwrap();
        p.reserve(Ipv4Addr::new(10, 0, 0, 9), "a").unwrap();
        assert!(matches!(p.reserve(Ipv4Addr::new(10, 0, 0, 9), "b"), Err(IpamError::InUse(..))));
        assert!(matches!(p.reserve(Ipv4Addr::new(10, 0, 0, 1), "b"), Err(IpamError::OutOfRange(..))));
        p.set_cursor(Ipv4Addr::new(10, 0, 0, 8));
        assert_eq!(p.allocate("c").unwrap(), Ipv4Addr::new(10, 0, 0, 10));
    }
}
