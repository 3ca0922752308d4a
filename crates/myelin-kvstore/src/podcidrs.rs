//! Pod CIDRs handed to nodes from one cluster pool (Cilium's cluster-pool IPAM, with etcd in
//! place of the operator): `<state_root>/podcidrs/v1/<cluster>/<network>/<prefix length>` ->
//! the node holding it. A node claims the first free subnet of the pool with a transaction that
//! requires the key never to have been created, so two nodes never hold one subnet. Claims are
//! not bound to the lease: a node keeps its CIDR across restarts and etcd outages (its pods keep
//! their addresses); freeing the CIDR of a node that left for good is an operator's act
//! ([`Kvstore::release_pod_cidr`]).

use std::net::Ipv4Addr;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use tracing::warn;

use crate::{bounded, Kvstore, KvstoreError, Result};

fn invalid(field: &'static str, reason: String) -> KvstoreError {
    KvstoreError::Invalid { field, reason }
}

/// The subnets of `pool` (network, prefix length) of length `mask`, in address order.
fn subnets(pool: (Ipv4Addr, u8), mask: u8) -> Result<impl Iterator<Item = Ipv4Addr>> {
    let (net, len) = pool;
    if len > 30 || u32::from(net) & !prefix_mask(len) != 0 {
        return Err(invalid("cluster pool", format!("{net}/{len}: a network address with a prefix of at most /30")));
    }
    if mask < len || mask > 30 {
        return Err(invalid(
            "pod CIDR mask size",
            format!("/{mask}: must be between the pool's /{len} and /30 (a /24 gives a node 253 pods)"),
        ));
    }
    let count = 1u64 << (mask - len);
    let step = 1u64 << (32 - mask);
    let base = u64::from(u32::from(net));
    Ok((0..count).map(move |i| Ipv4Addr::from(u32::try_from(base + i * step).unwrap_or(u32::MAX))))
}

fn prefix_mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

impl Kvstore {
    fn podcidr_prefix(&self) -> String {
        format!("{}/podcidrs/v1/{}/", self.cfg.state_root, self.cfg.cluster)
    }

    /// This node's pod CIDR from the pool `pool_net/pool_len`, subnets of `/mask`: the one it
    /// already holds, else the first free one, claimed atomically. Errors when the pool is full.
    pub async fn claim_pod_cidr(&self, pool_net: Ipv4Addr, pool_len: u8, mask: u8) -> Result<(Ipv4Addr, u8)> {
        let candidates: Vec<Ipv4Addr> = subnets((pool_net, pool_len), mask)?.collect();
        for _ in 0..8 {
            let prefix = self.podcidr_prefix();
            let mut client = self.client.clone();
            let resp = bounded(
                self.cfg.request_timeout,
                format!("get {prefix}*"),
                client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
            )
            .await?;
            let mut taken = std::collections::HashSet::new();
            for kv in resp.kvs() {
                let key = String::from_utf8_lossy(kv.key());
                let holder = String::from_utf8_lossy(kv.value());
                let parsed = key.strip_prefix(&prefix).and_then(|rest| {
                    let (n, l) = rest.split_once('/')?;
                    Some((n.parse::<Ipv4Addr>().ok()?, l.parse::<u8>().ok()?))
                });
                match parsed {
                    Some((n, l)) if holder == self.node => return Ok((n, l)),
                    Some((n, _)) => {
                        taken.insert(n);
                    }
                    None => warn!(%key, "skipping a key under the pod CIDR prefix that is not <network>/<length>"),
                }
            }
            let Some(free) = candidates.iter().find(|n| !taken.contains(*n)) else {
                return Err(invalid(
                    "cluster pool",
                    format!(
                        "{pool_net}/{pool_len} has no free /{mask} left ({} held): use a larger pool or mask size",
                        taken.len()
                    ),
                ));
            };
            let key = format!("{prefix}{free}/{mask}");
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.as_str(), self.node.as_str(), None)]);
            let mut client = self.client.clone();
            let r = bounded(self.cfg.request_timeout, format!("claim {key}"), client.txn(txn)).await?;
            if r.succeeded() {
                return Ok((*free, mask));
            }
            // Another node claimed it first: read again.
        }
        Err(KvstoreError::Contention { labels: format!("pod CIDR from {pool_net}/{pool_len}"), attempts: 8 })
    }

    /// Frees `net/len` if `node` holds it; `Ok(false)` otherwise.
    pub async fn release_pod_cidr(&self, net: Ipv4Addr, len: u8, node: &str) -> Result<bool> {
        let key = format!("{}{net}/{len}", self.podcidr_prefix());
        let txn = Txn::new()
            .when([Compare::value(key.as_str(), CompareOp::Equal, node)])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        let mut client = self.client.clone();
        Ok(bounded(self.cfg.request_timeout, format!("release {key}"), client.txn(txn)).await?.succeeded())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn subnets_of_a_pool_in_order_and_bad_sizes_named() {
        let s: Vec<Ipv4Addr> = subnets((Ipv4Addr::new(10, 244, 0, 0), 16), 24).unwrap().take(3).collect();
        assert_eq!(s, [Ipv4Addr::new(10, 244, 0, 0), Ipv4Addr::new(10, 244, 1, 0), Ipv4Addr::new(10, 244, 2, 0)]);
        assert_eq!(subnets((Ipv4Addr::new(10, 244, 0, 0), 16), 24).unwrap().count(), 256);
        assert!(subnets((Ipv4Addr::new(10, 244, 0, 0), 16), 8).is_err());
        assert!(subnets((Ipv4Addr::new(10, 244, 1, 0), 16), 24).is_err(), "host bits set");
    }
}
