//! Identity allocation against a real etcd (started per test, see `support`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};
use myelin_kvstore::{IdentityEvent, IdentityWatch, Kvstore, KvstoreConfig, Labels, DEFAULT_PREFIX};
use support::Etcd;
use tokio::task::JoinSet;

const TTL: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(15);

fn set(i: usize) -> Labels {
    Labels::parse(&format!("k8s:io.kubernetes.pod.namespace=ns-{};k8s:app=app-{i}", i % 3)).unwrap()
}

async fn node(etcd: &Etcd, name: &str) -> Kvstore {
    Kvstore::connect(&[etcd.endpoint.as_str()], name, TTL).await.unwrap()
}

async fn next(w: &mut IdentityWatch) -> IdentityEvent {
    tokio::time::timeout(WAIT, w.next()).await.expect("no identity event within the deadline").unwrap().unwrap()
}

/// Checks the stored state: every reference names an id whose key holds the reference's labels,
/// and all references to one label set name the same id. Returns labels -> id.
async fn check_consistency(etcd: &Etcd) -> HashMap<String, u32> {
    let mut c = etcd.client().await;
    let prefix = format!("{DEFAULT_PREFIX}/");
    let resp = c.get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await.unwrap();
    let mut ids = HashMap::new();
    let mut refs: HashMap<String, HashSet<u32>> = HashMap::new();
    for kv in resp.kvs() {
        let key = kv.key_str().unwrap();
        let value = kv.value_str().unwrap().to_string();
        if let Some(id) = key.strip_prefix(&format!("{DEFAULT_PREFIX}/id/")) {
            if let Ok(id) = id.parse::<u32>() {
                ids.insert(id, value);
            }
        } else if let Some(rest) = key.strip_prefix(&format!("{DEFAULT_PREFIX}/value/")) {
            let (labels, _node) = rest.rsplit_once('/').unwrap();
            if let Ok(id) = value.parse::<u32>() {
                refs.entry(labels.to_string()).or_default().insert(id);
            }
        }
    }
    let mut out = HashMap::new();
    for (labels, set) in refs {
        assert_eq!(set.len(), 1, "references to `{labels}` disagree: {set:?}");
        let id = *set.iter().next().unwrap();
        assert_eq!(ids.get(&id), Some(&labels), "reference to `{labels}` names id {id}, whose key does not hold them");
        out.insert(labels, id);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_nodes_agree_on_ids() {
    let etcd = Etcd::start().await;
    let a = Arc::new(node(&etcd, "node-a").await);
    let b = Arc::new(node(&etcd, "node-b").await);
    // 50 new label sets, each allocated by both nodes at the same moment.
    let mut tasks = JoinSet::new();
    for i in 0..50 {
        for (n, kv) in [("a", a.clone()), ("b", b.clone())] {
            tasks.spawn(async move { (i, n, kv.allocate(&set(i)).await.unwrap()) });
        }
    }
    let mut got: HashMap<usize, HashMap<&str, u32>> = HashMap::new();
    while let Some(r) = tasks.join_next().await {
        let (i, n, id) = r.unwrap();
        got.entry(i).or_default().insert(n, id);
    }
    let mut distinct = HashSet::new();
    for i in 0..50 {
        let (ia, ib) = (got[&i]["a"], got[&i]["b"]);
        assert_eq!(ia, ib, "set {i}: node-a got {ia}, node-b got {ib}");
        assert!((256..=65535).contains(&ia), "set {i}: id {ia} out of range");
        distinct.insert(ia);
        assert_eq!(a.lookup(ia).await.unwrap(), Some(set(i)));
    }
    assert_eq!(distinct.len(), 50, "label sets share ids");
    let stored = check_consistency(&etcd).await;
    assert_eq!(stored.len(), 50);

    // Nodes whose ranges differ try different ids for the same new labels, so only the claim's
    // "no reference to these labels yet" guard keeps them from minting two ids.
    let mut cfg = KvstoreConfig::new(TTL);
    cfg.id_min = 30_000;
    cfg.id_max = 30_100;
    let c = Arc::new(Kvstore::connect_with(&[etcd.endpoint.as_str()], "node-c", cfg).await.unwrap());
    let mut tasks = JoinSet::new();
    for i in 100..130 {
        for (n, kv) in [("a", a.clone()), ("c", c.clone())] {
            tasks.spawn(async move { (i, n, kv.allocate(&set(i)).await.unwrap()) });
        }
    }
    let mut got: HashMap<usize, HashMap<&str, u32>> = HashMap::new();
    while let Some(r) = tasks.join_next().await {
        let (i, n, id) = r.unwrap();
        got.entry(i).or_default().insert(n, id);
    }
    for (i, ids) in &got {
        assert_eq!(ids["a"], ids["c"], "set {i}: nodes with different ranges minted two ids");
    }
    assert_eq!(check_consistency(&etcd).await.len(), 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_release_and_reconnect_keep_ids() {
    let etcd = Etcd::start().await;
    let a = node(&etcd, "node-a").await;
    let id1 = a.allocate(&set(1)).await.unwrap();
    let id2 = a.allocate(&set(2)).await.unwrap();
    assert_ne!(id1, id2);
    assert_eq!(a.allocate(&set(1)).await.unwrap(), id1, "allocating again is idempotent");
    assert_eq!(a.lookup(id1).await.unwrap(), Some(set(1)));
    assert_eq!(a.lookup(id2).await.unwrap(), Some(set(2)));
    let unused = (256..=65535).find(|i| *i != id1 && *i != id2).unwrap();
    assert_eq!(a.lookup(unused).await.unwrap(), None);

    // Closed (lease revoked, every reference gone): the id keys alone bring the same ids back.
    a.close().await.unwrap();
    let mut raw = etcd.client().await;
    let refs = raw.get(format!("{DEFAULT_PREFIX}/value/"), Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(refs.kvs().len(), 0, "close() revokes the lease");
    let a = node(&etcd, "node-a").await;
    assert_eq!(a.allocate(&set(2)).await.unwrap(), id2);
    assert_eq!(a.allocate(&set(1)).await.unwrap(), id1);

    // Dropped without revoking: the old lease still holds the references; the new client reuses.
    drop(a);
    let a = node(&etcd, "node-a").await;
    assert_eq!(a.allocate(&set(1)).await.unwrap(), id1);
    let key = format!("{DEFAULT_PREFIX}/value/{}/node-a", set(1));
    let stored = raw.get(key.as_str(), None).await.unwrap();
    assert_eq!(stored.kvs()[0].lease(), a.lease_id(), "the reference moved to the new client's lease");

    assert!(a.release(&set(1)).await.unwrap());
    assert!(!a.release(&set(1)).await.unwrap(), "a second release finds nothing");
    assert_eq!(raw.get(key, None).await.unwrap().kvs().len(), 0);
    assert_eq!(a.lookup(id1).await.unwrap(), Some(set(1)), "release keeps the identity itself");

    // Errors name what is wrong.
    let err = Kvstore::connect(&[etcd.endpoint.as_str()], "bad/node", TTL).await.err().unwrap().to_string();
    assert!(err.contains("invalid node_name"), "{err}");
    let no_etcd: [&str; 0] = [];
    let err = Kvstore::connect(&no_etcd, "n", TTL).await.err().unwrap().to_string();
    assert!(err.contains("invalid endpoints"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_lists_then_follows_and_skips_malformed() {
    let etcd = Etcd::start().await;
    let a = node(&etcd, "node-a").await;
    let mut first = [a.allocate(&set(1)).await.unwrap(), a.allocate(&set(2)).await.unwrap()];
    let labels_of = |id: u32, ids: &[u32; 2]| if id == ids[0] { set(1) } else { set(2) };
    let by_id = first;
    first.sort_unstable();
    let mut w = a.watch_identities().await.unwrap();
    for id in first {
        assert_eq!(next(&mut w).await, IdentityEvent::Upsert { id, labels: labels_of(id, &by_id) });
    }
    assert_eq!(next(&mut w).await, IdentityEvent::Synced);

    let id3 = a.allocate(&set(3)).await.unwrap();
    assert_eq!(next(&mut w).await, IdentityEvent::Upsert { id: id3, labels: set(3) });

    // Malformed content written behind the allocator's back: skipped, and the watch goes on.
    let mut raw = etcd.client().await;
    let p = DEFAULT_PREFIX;
    raw.put(format!("{p}/id/not-a-number"), set(4).to_string(), None).await.unwrap();
    raw.put(format!("{p}/id/0400"), set(4).to_string(), None).await.unwrap();
    raw.put(format!("{p}/id/4000"), "garbage without labels", None).await.unwrap();
    raw.put(format!("{p}/id/4001"), "k8s:b=1;k8s:a=1", None).await.unwrap(); // not canonical
    raw.put(format!("{p}/id/4002"), vec![0xff, 0xfe], None).await.unwrap(); // not UTF-8
    raw.put(format!("{p}/id/4003"), set(4).to_string(), None).await.unwrap();
    assert_eq!(next(&mut w).await, IdentityEvent::Upsert { id: 4003, labels: set(4) });
    raw.delete(format!("{p}/id/4003"), None).await.unwrap();
    assert_eq!(next(&mut w).await, IdentityEvent::Delete { id: 4003 });
    assert_eq!(a.lookup(4000).await.unwrap(), None, "a malformed identity reads as absent");

    // Malformed references are skipped by allocation too.
    raw.put(format!("{p}/value/garbage"), "x", None).await.unwrap();
    raw.put(format!("{p}/value/{}/node-x", set(5)), "not-a-number", None).await.unwrap();
    let id5 = a.allocate(&set(5)).await.unwrap();
    assert_eq!(next(&mut w).await, IdentityEvent::Upsert { id: id5, labels: set(5) });
    assert_eq!(a.lookup(id5).await.unwrap(), Some(set(5)));

    // A second watcher's listing skips the malformed keys as well.
    let mut w2 = a.watch_identities().await.unwrap();
    let mut listed = Vec::new();
    loop {
        match next(&mut w2).await {
            IdentityEvent::Upsert { id, .. } => listed.push(id),
            IdentityEvent::Synced => break,
            other => panic!("unexpected {other:?} in a listing"),
        }
    }
    let mut want = vec![by_id[0], by_id[1], id3, id5];
    want.sort_unstable();
    assert_eq!(listed, want);
}

async fn wait_delete(events: &mut etcd_client::WatchStream) {
    loop {
        let resp = events.message().await.unwrap().unwrap();
        if resp.events().iter().any(|e| e.event_type() == EventType::Delete) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_expire_with_the_lease() {
    let etcd = Etcd::start().await;
    let a = node(&etcd, "node-a").await;
    let b = node(&etcd, "node-b").await;
    let id = a.allocate(&set(7)).await.unwrap();
    assert_eq!(b.allocate(&set(7)).await.unwrap(), id);
    let key = format!("{DEFAULT_PREFIX}/value/{}/node-a", set(7));
    let mut raw = etcd.client().await;
    let resp = raw.get(key.as_str(), None).await.unwrap();
    assert_eq!(resp.kvs()[0].lease(), a.lease_id(), "the reference is bound to node-a's lease");

    let (_watcher, mut events) = raw.watch(key.as_str(), Some(WatchOptions::new())).await.unwrap();
    // While node-a lives its keep-alive holds the reference well past the TTL.
    let held = tokio::time::timeout(TTL * 5 / 2, wait_delete(&mut events)).await;
    assert!(held.is_err(), "node-a's reference was deleted while its client was alive");

    drop(a);
    tokio::time::timeout(WAIT, wait_delete(&mut events)).await.expect("the reference outlived the lease");
    let key_b = format!("{DEFAULT_PREFIX}/value/{}/node-b", set(7));
    assert_eq!(raw.get(key_b, None).await.unwrap().kvs().len(), 1, "node-b's reference stays");
    assert_eq!(b.lookup(id).await.unwrap(), Some(set(7)), "the identity outlives one node's lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_only_unreferenced_ids() {
    let etcd = Etcd::start().await;
    let a = node(&etcd, "node-a").await;
    let b = node(&etcd, "node-b").await;
    let id1 = a.allocate(&set(1)).await.unwrap();
    let id2 = a.allocate(&set(2)).await.unwrap();
    assert_eq!(b.allocate(&set(2)).await.unwrap(), id2);
    let mut raw = etcd.client().await;
    raw.put(format!("{DEFAULT_PREFIX}/id/5000"), "garbage", None).await.unwrap();

    assert_eq!(b.gc().await.unwrap(), Vec::<u32>::new(), "everything is referenced");
    a.close().await.unwrap();
    assert_eq!(b.gc().await.unwrap(), vec![id1]);
    assert_eq!(b.lookup(id1).await.unwrap(), None);
    assert_eq!(b.lookup(id2).await.unwrap(), Some(set(2)), "node-b still references set 2");
    let garbage = raw.get(format!("{DEFAULT_PREFIX}/id/5000"), None).await.unwrap();
    assert_eq!(garbage.kvs().len(), 1, "gc leaves malformed content alone");

    // gc racing allocations of unreferenced (but still stored) label sets never leaves a
    // reference to a deleted or different identity.
    let d = node(&etcd, "node-d").await;
    for i in 10..40 {
        d.allocate(&set(i)).await.unwrap();
    }
    d.close().await.unwrap();
    let e = Arc::new(node(&etcd, "node-e").await);
    let mut tasks = JoinSet::new();
    for i in 10..40 {
        let e = e.clone();
        tasks.spawn(async move { e.allocate(&set(i)).await.unwrap() });
    }
    let mut collected = 0;
    for _ in 0..3 {
        collected += b.gc().await.unwrap().len();
    }
    let mut allocated = HashSet::new();
    while let Some(r) = tasks.join_next().await {
        allocated.insert(r.unwrap());
    }
    let stored = check_consistency(&etcd).await;
    for i in 10..40 {
        let id = stored[&set(i).to_string()];
        assert!(allocated.contains(&id));
        assert_eq!(e.lookup(id).await.unwrap(), Some(set(i)));
    }
    eprintln!("gc collected {collected} ids while 30 were being re-allocated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_lease_and_unreachable_etcd_give_clear_errors() {
    let etcd = Etcd::start().await;
    let a = node(&etcd, "node-a").await;
    a.allocate(&set(1)).await.unwrap();
    // The lease disappears behind the client's back (as after a long partition).
    etcd.client().await.lease_revoke(a.lease_id()).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match a.allocate(&set(2)).await {
            Err(myelin_kvstore::KvstoreError::LeaseLost { lease_id, reason }) => {
                assert_eq!(lease_id, a.lease_id());
                assert!(reason.contains("expired"), "{reason}");
                break;
            }
            // Until the keep-alive task notices, etcd itself refuses the revoked lease.
            Err(e) => assert!(e.to_string().contains("lease not found"), "{e}"),
            Ok(id) => panic!("allocated {id} on a revoked lease"),
        }
        assert!(tokio::time::Instant::now() < deadline, "the lost lease was never reported");
        tokio::time::sleep(Duration::from_millis(100)).await; // poll interval of the deadline wait
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let nowhere = format!("http://127.0.0.1:{port}");
    let err = Kvstore::connect(&[nowhere.as_str()], "node-b", TTL).await.err().expect("connected to nothing");
    let msg = err.to_string();
    assert!(msg.starts_with("etcd ") && msg.contains(&nowhere), "{msg}");
}
