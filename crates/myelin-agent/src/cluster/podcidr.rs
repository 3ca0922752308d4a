//! This node's pod CIDR from the cluster pool (`cluster_pool_ipv4_cidr`): the one the store
//! remembers (a restart keeps it, with or without etcd), else one claimed in etcd. The agent
//! cannot start without a pod CIDR, so the first start waits for etcd (each member in turn, up
//! to a deadline) and fails with the reason if none answers.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use myelin_kvstore::{Kvstore, KvstoreConfig};
use tracing::{info, warn};

use crate::config::Config;
use crate::store::Store;

const STORE_KEY: &str = "pod_cidr";
/// How long a first start waits for etcd to hand out a pod CIDR.
const DEADLINE: Duration = Duration::from_secs(60);

/// The pod CIDR to use: `pod_cidr` from the config, else the store's, else a claim from the pool.
pub async fn resolve(cfg: &Config, store: &Store) -> Result<Ipv4Net> {
    if let Some(c) = cfg.pod_cidr {
        return Ok(c);
    }
    let pool = cfg.cluster_pool_ipv4_cidr.context("pod_cidr or cluster_pool_ipv4_cidr")?;
    if let Some(text) = store.get_kv(STORE_KEY)? {
        let c: Ipv4Net = text.parse().with_context(|| format!("the stored pod CIDR {text:?} is corrupt"))?;
        if pool.contains(&c) {
            info!(pod_cidr = %c, "pod CIDR from the store (claimed from the pool earlier)");
            return Ok(c);
        }
        warn!(stored = %c, %pool, "the stored pod CIDR is outside the configured pool; claiming a new one");
    }
    let deadline = Instant::now() + DEADLINE;
    let mut last = String::new();
    let mut attempt = 0usize;
    while Instant::now() < deadline {
        let ep = &cfg.kvstore_endpoints[attempt % cfg.kvstore_endpoints.len().max(1)];
        attempt += 1;
        let kcfg = KvstoreConfig {
            cluster: cfg.cluster_name.clone(),
            connect_timeout: Duration::from_secs(2),
            ..KvstoreConfig::new(Duration::from_secs(cfg.kvstore_lease_ttl_s))
        };
        let claimed = async {
            let kv = Kvstore::connect_with(&[ep.as_str()], &cfg.node_name, kcfg).await?;
            let r = kv.claim_pod_cidr(pool.network(), pool.prefix_len(), cfg.cluster_pool_ipv4_mask_size).await;
            let _ = kv.close().await;
            r
        }
        .await;
        match claimed {
            Ok((net, len)) => {
                let c = Ipv4Net::new(net, len).context("the claimed pod CIDR")?;
                store.put_kv(STORE_KEY, &c.to_string())?;
                info!(pod_cidr = %c, %pool, "pod CIDR claimed from the cluster pool");
                return Ok(c);
            }
            Err(e @ myelin_kvstore::KvstoreError::Invalid { .. }) => {
                bail!("claiming a pod CIDR from {pool}: {e}")
            }
            Err(e) => {
                last = e.to_string();
                warn!(endpoint = %ep, error = %last, "claiming a pod CIDR: etcd did not answer; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    bail!(
        "no pod CIDR: this node has none stored and etcd ({}) did not hand one out within {DEADLINE:?}: {last}",
        cfg.kvstore_endpoints.join(", ")
    )
}
