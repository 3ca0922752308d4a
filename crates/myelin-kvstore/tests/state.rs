//! Liveness, the node registry and the ipcache against a real etcd (started per test, see
//! `support`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use myelin_kvstore::{IdentityEvent, Kvstore, KvstoreConfig, KvstoreError};
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
    let (reason, took) = wait_lost(&a, TTL + REQUEST_TIMEOUT).await;
    assert!(reason.contains("no keep-alive answer") || reason.contains("keep-alive stream failed"), "{reason}");
    eprintln!("lease reported lost {took:?} after the freeze: {reason}");

    // HTTP/2 keep-alive pings drop the silent connection, so the watch fails too.
    let ev = tokio::time::timeout(WAIT, w.next()).await.expect("the watch hangs on a frozen etcd");
    assert!(matches!(ev, Some(Err(KvstoreError::Etcd { .. }))), "{ev:?}");
}
