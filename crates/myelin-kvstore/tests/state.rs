//! Liveness, the node registry and the ipcache against a real etcd (started per test, see
//! `support`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use myelin_kvstore::{
    IdentityEvent, IpEvent, IpRecord, Kvstore, KvstoreConfig, KvstoreError, NodeEvent, NodeRecord, SyncStats, Watch,
};
use support::Etcd;

const TTL: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(15);

fn cfg() -> KvstoreConfig {
    let mut c = KvstoreConfig::new(TTL);
    c.request_timeout = REQUEST_TIMEOUT;
    c
}

async fn node(etcd: &Etcd, name: &str) -> Kvstore {
    Kvstore::connect_with(&[etcd.endpoint.as_str()], name, cfg()).await.unwrap()
}

const NODES: &str = "myelin/state/nodes/v1/default";
const IPS: &str = "myelin/state/ip/v1/default";

async fn next<E>(w: &mut Watch<E>) -> E {
    tokio::time::timeout(WAIT, w.next()).await.expect("no event within the deadline").unwrap().unwrap()
}

/// The events up to and including `Synced`.
async fn listing<E: PartialEq + std::fmt::Debug>(w: &mut Watch<E>, synced: E) -> Vec<E> {
    let mut out = Vec::new();
    loop {
        let e = next(w).await;
        if e == synced {
            return out;
        }
        out.push(e);
    }
}

fn node_rec(name: &str, last: u8) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        ip: Ipv4Addr::new(192, 168, 0, last),
        pod_cidr: format!("10.0.{last}.0/24"),
        cluster: "default".into(),
    }
}

fn ip_rec(node: &str, ip: [u8; 4], identity: u32) -> IpRecord {
    IpRecord {
        ip: Ipv4Addr::from(ip),
        identity,
        host_ip: Ipv4Addr::new(192, 168, 0, 1),
        node: node.into(),
        namespace: Some("default".into()),
        pod: Some(format!("pod-{}", ip[3])),
    }
}

fn invalid_field(err: KvstoreError) -> &'static str {
    match err {
        KvstoreError::Invalid { field, .. } => field,
        other => panic!("expected an invalid-input error, got {other}"),
    }
}

/// Waits until `health()` reports the lease lost; returns the reason and how long it took.
async fn wait_lost(kv: &Kvstore, within: Duration) -> (String, Duration) {
    let start = Instant::now();
    let mut health = kv.health();
    let state = tokio::time::timeout(within, health.wait_for(Option::is_some))
        .await
        .unwrap_or_else(|_| panic!("health() still reports a live lease after {within:?}"))
        .unwrap();
    (state.clone().unwrap(), start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_etcd_is_reported_and_calls_fail_fast() {
    let mut etcd = Etcd::start().await;
    let a = node(&etcd, "node-a").await;
    assert_eq!(*a.health().borrow(), None);
    let mut w = a.watch_identities().await.unwrap();
    assert_eq!(w.next().await.unwrap().unwrap(), IdentityEvent::Synced);

    etcd.kill();
    let (reason, took) = wait_lost(&a, TTL * 2).await;
    eprintln!("lease reported lost after {took:?}: {reason}");

    // The watch reports the failure once and ends.
    let ev = tokio::time::timeout(WAIT, w.next()).await.expect("the watch did not notice etcd died");
    assert!(matches!(ev, Some(Err(KvstoreError::Etcd { .. }))), "{ev:?}");
    assert!(tokio::time::timeout(WAIT, w.next()).await.unwrap().is_none(), "the watch ends after its error");

    // Requests fail within the request timeout instead of waiting for etcd to come back.
    let start = Instant::now();
    let err = a.lookup(256).await.expect_err("lookup on a dead etcd succeeded");
    assert!(start.elapsed() < REQUEST_TIMEOUT + Duration::from_millis(500), "took {:?}: {err}", start.elapsed());
    let err = a.allocate(&"k8s:app=web".parse().unwrap()).await.expect_err("allocated on a dead etcd");
    assert!(matches!(err, KvstoreError::LeaseLost { .. }), "{err}");
    assert!(err.to_string().contains("connect a new Kvstore"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_etcd_is_noticed_within_a_ttl_and_calls_time_out() {
    let etcd = Etcd::start().await;
    let a = node(&etcd, "node-a").await;
    let mut w = a.watch_identities().await.unwrap();
    assert_eq!(w.next().await.unwrap().unwrap(), IdentityEvent::Synced);

    etcd.freeze();
    let start = Instant::now();
    let err = a.lookup(256).await.expect_err("lookup on a frozen etcd succeeded");
    let took = start.elapsed();
    assert!(matches!(err, KvstoreError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("request_timeout"), "{err}");
    assert!(took >= REQUEST_TIMEOUT && took < REQUEST_TIMEOUT + Duration::from_millis(500), "took {took:?}");

    // No keep-alive answer for a TTL marks the lease lost (the last renewal was at most a third
    // of a TTL before the freeze, so within about one TTL of it).
    let (reason, _) = wait_lost(&a, TTL + REQUEST_TIMEOUT).await;
    assert!(reason.contains("no keep-alive answer") || reason.contains("keep-alive stream failed"), "{reason}");
    eprintln!("lease reported lost {:?} after the freeze: {reason}", start.elapsed());

    // HTTP/2 keep-alive pings drop the silent connection, so the watch fails too.
    let ev = tokio::time::timeout(WAIT, w.next()).await.expect("the watch hangs on a frozen etcd");
    assert!(matches!(ev, Some(Err(KvstoreError::Etcd { .. }))), "{ev:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_registry_is_watched_and_expires_with_the_lease() {
    let etcd = Etcd::start().await;
    let a = node(&etcd, "node-a").await;
    let b = node(&etcd, "node-b").await;
    a.register_node(&node_rec("node-a", 1)).await.unwrap();
    let mut w = b.watch_nodes().await.unwrap();
    assert_eq!(listing(&mut w, NodeEvent::Synced).await, vec![NodeEvent::Upsert(node_rec("node-a", 1))]);

    let c = node(&etcd, "node-c").await;
    c.register_node(&node_rec("node-c", 3)).await.unwrap();
    assert_eq!(next(&mut w).await, NodeEvent::Upsert(node_rec("node-c", 3)));
    let mut moved = node_rec("node-c", 3);
    moved.ip = Ipv4Addr::new(192, 168, 7, 3);
    c.register_node(&moved).await.unwrap();
    assert_eq!(next(&mut w).await, NodeEvent::Upsert(moved));

    // Dropped without close: the record goes when the lease expires, within about a TTL.
    drop(c);
    let start = Instant::now();
    assert_eq!(next(&mut w).await, NodeEvent::Delete { name: "node-c".into() });
    let took = start.elapsed();
    eprintln!("node-c's record was deleted {took:?} after its Kvstore was dropped");
    // etcd expires a lease at most a TTL after its last renewal, checking expiry every 500 ms and
    // revoking through raft; allow for that and a loaded machine, not for a second TTL of renewal.
    assert!(took < TTL * 2, "node-c's record outlived its lease TTL by far: {took:?}");

    // A node registers only itself, in its cluster, with a valid pod CIDR.
    let err = a.register_node(&node_rec("node-b", 2)).await.unwrap_err();
    assert_eq!(invalid_field(err), "node.name");
    let mut other = node_rec("node-a", 1);
    other.cluster = "other".into();
    assert_eq!(invalid_field(a.register_node(&other).await.unwrap_err()), "node.cluster");
    let mut bad = node_rec("node-a", 1);
    bad.pod_cidr = "10.0.1.1/24".into();
    let err = a.register_node(&bad).await.unwrap_err();
    assert!(err.to_string().contains("10.0.1.0/24"), "{err}");
    assert_eq!(invalid_field(err), "node.pod_cidr");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipcache_changes_are_watched_and_deletes_respect_ownership() {
    let etcd = Etcd::start().await;
    let a = node(&etcd, "node-a").await;
    let b = node(&etcd, "node-b").await;
    let mut w = b.watch_ips().await.unwrap();
    assert_eq!(listing(&mut w, IpEvent::Synced).await, vec![]);

    let pod = ip_rec("node-a", [10, 0, 1, 5], 300);
    a.upsert_ip(&pod).await.unwrap();
    assert_eq!(next(&mut w).await, IpEvent::Upsert(pod.clone()));

    // The address is reused on node-b before node-a cleaned up: node-a's delete must not
    // remove node-b's entry.
    let reused = IpRecord { node: "node-b".into(), identity: 301, ..pod.clone() };
    b.upsert_ip(&reused).await.unwrap();
    assert_eq!(next(&mut w).await, IpEvent::Upsert(reused.clone()));
    assert!(!a.delete_ip(pod.ip).await.unwrap(), "node-a deleted node-b's entry");
    let mut raw = etcd.client().await;
    let stored = raw.get(format!("{IPS}/10.0.1.5"), None).await.unwrap();
    assert_eq!(stored.kvs()[0].lease(), b.lease_id(), "node-b's entry stays");
    assert!(b.delete_ip(pod.ip).await.unwrap());
    assert_eq!(next(&mut w).await, IpEvent::Delete { ip: pod.ip });
    assert!(!b.delete_ip(pod.ip).await.unwrap(), "a second delete finds nothing");

    let other = ip_rec("node-a", [10, 0, 1, 6], 302);
    a.upsert_ip(&other).await.unwrap();
    assert_eq!(next(&mut w).await, IpEvent::Upsert(other.clone()));
    assert!(a.delete_ip(other.ip).await.unwrap());
    assert_eq!(next(&mut w).await, IpEvent::Delete { ip: other.ip });

    // A node writes only its own entries, with a real identity.
    assert_eq!(invalid_field(a.upsert_ip(&ip_rec("node-b", [10, 0, 1, 7], 300)).await.unwrap_err()), "ip.node");
    assert_eq!(invalid_field(a.upsert_ip(&ip_rec("node-a", [10, 0, 1, 7], 0)).await.unwrap_err()), "ip.identity");
}

/// Address -> (record, lease) of every stored ipcache entry.
async fn stored_ips(etcd: &Etcd) -> Vec<(IpRecord, i64)> {
    let mut raw = etcd.client().await;
    let resp = raw.get(format!("{IPS}/"), Some(GetOptions::new().with_prefix())).await.unwrap();
    let mut out: Vec<(IpRecord, i64)> =
        resp.kvs().iter().map(|kv| (serde_json::from_slice(kv.value()).unwrap(), kv.lease())).collect();
    out.sort_by_key(|(r, _)| r.ip);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_ips_leaves_exactly_the_desired_entries() {
    let etcd = Etcd::start().await;
    let old = node(&etcd, "node-a").await;
    let b = node(&etcd, "node-b").await;
    for last in 1..=3 {
        old.upsert_ip(&ip_rec("node-a", [10, 0, 1, last], 300)).await.unwrap();
    }
    let foreign = ip_rec("node-b", [10, 0, 2, 9], 400);
    b.upsert_ip(&foreign).await.unwrap();
    // node-a restarts: its old lease still holds .1-.3 until it expires.
    let old_lease = old.lease_id();
    drop(old);
    let a = node(&etcd, "node-a").await;
    let desired = vec![
        ip_rec("node-a", [10, 0, 1, 2], 300),
        ip_rec("node-a", [10, 0, 1, 3], 333),
        ip_rec("node-a", [10, 0, 1, 4], 300),
    ];
    let stats = a.sync_ips(&desired).await.unwrap();
    // .2 moves to the new lease, .3 changed, .4 is new; .1 is stale (its Node is node-a).
    assert_eq!(stats, SyncStats { put: 3, deleted: 1, unchanged: 0 });
    let want: Vec<(IpRecord, i64)> =
        desired.iter().map(|r| (r.clone(), a.lease_id())).chain([(foreign.clone(), b.lease_id())]).collect();
    assert_eq!(stored_ips(&etcd).await, want);
    assert_eq!(a.sync_ips(&desired).await.unwrap(), SyncStats { put: 0, deleted: 0, unchanged: 3 });

    // Entries on this node's lease go too, whatever their Node says, and an empty sync clears all.
    let mut raw = etcd.client().await;
    let odd = r#"{"IP":"10.0.1.8","ID":5,"HostIP":"1.2.3.4","Node":"somebody"}"#;
    raw.put(format!("{IPS}/10.0.1.8"), odd, Some(etcd_client::PutOptions::new().with_lease(a.lease_id())))
        .await
        .unwrap();
    assert_eq!(a.sync_ips(&desired[..1]).await.unwrap(), SyncStats { put: 0, deleted: 3, unchanged: 1 });

    // The old lease expiring takes nothing that was re-written.
    let deadline = Instant::now() + WAIT;
    while raw.lease_time_to_live(old_lease, None).await.unwrap().ttl() > 0 {
        assert!(Instant::now() < deadline, "node-a's old lease never expired");
        tokio::time::sleep(Duration::from_millis(100)).await; // poll interval of the deadline wait
    }
    assert_eq!(stored_ips(&etcd).await, vec![(desired[0].clone(), a.lease_id()), (foreign.clone(), b.lease_id())]);

    // Bad input names the field.
    let twice = [desired[0].clone(), desired[0].clone()];
    assert_eq!(invalid_field(a.sync_ips(&twice).await.unwrap_err()), "desired");
    assert_eq!(invalid_field(a.sync_ips(std::slice::from_ref(&foreign)).await.unwrap_err()), "ip.node");
}

async fn put_all(raw: &mut etcd_client::Client, kvs: &[(String, String)]) {
    for (k, v) in kvs {
        raw.put(k.as_str(), v.as_str(), None).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_nodes_and_ips_are_skipped() {
    let etcd = Etcd::start().await;
    let a = node(&etcd, "node-a").await;
    let mut raw = etcd.client().await;
    let ip_json = |key_ip: &str, value: &str| (format!("{IPS}/{key_ip}"), value.to_string());
    let bad_ips = [
        ip_json("not-an-ip", r#"{"IP":"10.0.0.1","ID":300,"HostIP":"1.1.1.1","Node":"n"}"#),
        ip_json("010.0.0.1", r#"{"IP":"10.0.0.1","ID":300,"HostIP":"1.1.1.1","Node":"n"}"#),
        ip_json("10.0.0.1/extra", r#"{"IP":"10.0.0.1","ID":300,"HostIP":"1.1.1.1","Node":"n"}"#),
        ip_json("10.0.0.2", "not json"),
        ip_json("10.0.0.3", r#"{"IP":"10.0.0.99","ID":300,"HostIP":"1.1.1.1","Node":"n"}"#),
        ip_json("10.0.0.4", r#"{"IP":"10.0.0.4","ID":0,"HostIP":"1.1.1.1","Node":"n"}"#),
        ip_json("10.0.0.5", r#"{"IP":"10.0.0.5","ID":300,"Node":"n"}"#),
        ip_json("10.0.0.6", r#"{"IP":"10.0.0.6","ID":300,"HostIP":"1.1.1.1","Node":"a/b"}"#),
    ];
    let node_json = |key: &str, value: &str| (format!("{NODES}/{key}"), value.to_string());
    let bad_nodes = [
        node_json("n1/extra", r#"{"Name":"n1","IPv4":"1.1.1.1","IPv4AllocCIDR":"10.1.0.0/24","Cluster":"default"}"#),
        node_json("n2", "{"),
        node_json("n3", r#"{"Name":"other","IPv4":"1.1.1.1","IPv4AllocCIDR":"10.1.0.0/24","Cluster":"default"}"#),
        node_json("n4", r#"{"Name":"n4","IPv4":"1.1.1.1","IPv4AllocCIDR":"10.1.0.0/24","Cluster":"prod"}"#),
        node_json("n5", r#"{"Name":"n5","IPv4":"1.1.1.1","IPv4AllocCIDR":"10.1.0.1/24","Cluster":"default"}"#),
        node_json("n6", r#"{"Name":"n6","IPv4":"1.1.1.1","IPv4AllocCIDR":"fd00::/64","Cluster":"default"}"#),
        node_json("n7", r#"{"Name":"n7","IPv4":"not-an-ip","IPv4AllocCIDR":"10.1.0.0/24","Cluster":"default"}"#),
    ];
    // Malformed content already there is left out of the listing...
    put_all(&mut raw, &bad_ips).await;
    put_all(&mut raw, &bad_nodes).await;
    raw.put(format!("{IPS}/10.0.0.9"), vec![0xff, 0xfe], None).await.unwrap(); // not UTF-8
    let good_ip = ip_rec("node-a", [10, 0, 0, 10], 300);
    a.upsert_ip(&good_ip).await.unwrap();
    a.register_node(&node_rec("node-a", 1)).await.unwrap();
    // Another cluster's node is not this cluster's watch's business.
    raw.put("myelin/state/nodes/v1/prod/n9", r#"{"Name":"n9"}"#, None).await.unwrap();
    let mut ips = a.watch_ips().await.unwrap();
    let mut nodes = a.watch_nodes().await.unwrap();
    assert_eq!(listing(&mut ips, IpEvent::Synced).await, vec![IpEvent::Upsert(good_ip.clone())]);
    assert_eq!(listing(&mut nodes, NodeEvent::Synced).await, vec![NodeEvent::Upsert(node_rec("node-a", 1))]);

    // ... and so is malformed content written while watching; the good entries after it arrive.
    raw.delete(format!("{IPS}/not-an-ip"), None).await.unwrap();
    raw.delete(format!("{IPS}/10.0.0.10"), None).await.unwrap();
    assert_eq!(next(&mut ips).await, IpEvent::Delete { ip: good_ip.ip }, "deletes of foreign keys are skipped");
    put_all(&mut raw, &bad_ips).await;
    put_all(&mut raw, &bad_nodes).await;
    let later = ip_rec("node-a", [10, 0, 0, 11], 301);
    a.upsert_ip(&later).await.unwrap();
    a.register_node(&node_rec("node-a", 2)).await.unwrap();
    assert_eq!(next(&mut ips).await, IpEvent::Upsert(later));
    assert_eq!(next(&mut nodes).await, NodeEvent::Upsert(node_rec("node-a", 2)));
}

/// Nodes claiming pod CIDRs from one pool at the same moment get different subnets; a node
/// claiming again gets the one it holds; a full pool is an error naming the fix; a released
/// subnet goes to the next claimant.
#[tokio::test]
async fn pod_cidrs_from_one_pool_never_collide() {
    let etcd = Etcd::start().await;
    let pool = (Ipv4Addr::new(10, 250, 0, 0), 22); // four /24s
    let names = ["n1", "n2", "n3", "n4"];
    let mut nodes = Vec::new();
    for n in names {
        nodes.push(node(&etcd, n).await);
    }
    // All four at the same moment.
    let (c1, c2, c3, c4) = tokio::join!(
        nodes[0].claim_pod_cidr(pool.0, pool.1, 24),
        nodes[1].claim_pod_cidr(pool.0, pool.1, 24),
        nodes[2].claim_pod_cidr(pool.0, pool.1, 24),
        nodes[3].claim_pod_cidr(pool.0, pool.1, 24)
    );
    let mut got: Vec<(Ipv4Addr, u8)> = vec![c1.unwrap(), c2.unwrap(), c3.unwrap(), c4.unwrap()];
    let again = nodes[2].claim_pod_cidr(pool.0, pool.1, 24).await.unwrap();
    assert_eq!(again, got[2], "a node keeps its CIDR");
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 4, "four nodes, four different /24s: {got:?}");
    let fifth = node(&etcd, "n5").await;
    let e = fifth.claim_pod_cidr(pool.0, pool.1, 24).await.unwrap_err().to_string();
    assert!(e.contains("no free /24") && e.contains("larger pool"), "{e}");
    assert!(!nodes[0].release_pod_cidr(again.0, 24, "n1").await.unwrap(), "only the holder frees a CIDR");
    let held = nodes[3].claim_pod_cidr(pool.0, pool.1, 24).await.unwrap();
    assert!(nodes[3].release_pod_cidr(held.0, held.1, "n4").await.unwrap());
    assert_eq!(fifth.claim_pod_cidr(pool.0, pool.1, 24).await.unwrap(), held, "the freed /24 is reused");
}
