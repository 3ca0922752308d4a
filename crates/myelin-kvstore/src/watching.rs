//! One watch implementation for every kind of state: list a prefix, deliver the listing as
//! upserts (in a stable order), then `Synced`, then follow the etcd watch from the listing's
//! revision + 1. Each kind supplies a decode function that turns a put or a delete into its
//! event, or logs and skips malformed content by returning `None`.

use etcd_client::{EventType, KeyValue, WatchOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::error;

use crate::{bounded, Kvstore, KvstoreError, Result};

/// The receiving end of a watch ([`Kvstore::watch_identities`], [`Kvstore::watch_nodes`],
/// [`Kvstore::watch_ips`]); dropping it stops the watch.
pub struct Watch<E> {
    rx: mpsc::Receiver<Result<E>>,
    task: JoinHandle<()>,
}

impl<E> Watch<E> {
    /// The next event; `Some(Err(_))` once if the etcd watch fails (etcd unreachable, the watched
    /// revision compacted), after which the watch has ended and this returns `None`. The caller
    /// then starts a new watch (on a new [`Kvstore`] if the connection is gone), whose listing
    /// replaces everything it knew.
    pub async fn next(&mut self) -> Option<Result<E>> {
        self.rx.recv().await
    }
}

impl<E> Drop for Watch<E> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Kvstore {
    /// Watches `prefix` (which ends in `/`). `decode` maps a put or delete to an event (`None`:
    /// skipped, after logging why); the listing's events are sorted by `order`.
    pub(crate) async fn watch_prefix<E, K, D, O>(
        &self,
        what: &'static str,
        prefix: String,
        decode: D,
        order: O,
        synced: E,
    ) -> Result<Watch<E>>
    where
        E: Send + 'static,
        K: Ord,
        D: Fn(EventType, &KeyValue) -> Option<E> + Send + 'static,
        O: FnMut(&E) -> K,
    {
        let (kvs, rev) = self.get_prefix(&prefix).await?;
        let mut initial: Vec<E> = kvs.iter().filter_map(|kv| decode(EventType::Put, kv)).collect();
        initial.sort_by_key(order);
        let mut client = self.client.clone();
        let (watcher, mut stream) = bounded(
            self.cfg.request_timeout,
            format!("watch {prefix}*"),
            client.watch(prefix.as_str(), Some(WatchOptions::new().with_prefix().with_start_revision(rev + 1))),
        )
        .await?;
        let (tx, rx) = mpsc::channel(1024);
        let task = tokio::spawn(async move {
            let _watcher = watcher; // dropping it would end the watch
            for e in initial.into_iter().chain(std::iter::once(synced)) {
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            loop {
                let failure = match stream.message().await {
                    Ok(Some(resp)) if resp.canceled() => Some(format!(
                        "etcd canceled the watch on {prefix} (compacted to {}): {}",
                        resp.compact_revision(),
                        resp.cancel_reason()
                    )),
                    Ok(Some(resp)) => {
                        for ev in resp.events() {
                            let Some(e) = ev.kv().and_then(|kv| decode(ev.event_type(), kv)) else { continue };
                            if tx.send(Ok(e)).await.is_err() {
                                return;
                            }
                        }
                        None
                    }
                    Ok(None) => Some(format!("etcd closed the watch on {prefix}")),
                    Err(e) => Some(format!("watch on {prefix}: {e}")),
                };
                if let Some(reason) = failure {
                    error!(%reason, "{what} watch ended");
                    let _ = tx
                        .send(Err(KvstoreError::Etcd {
                            op: format!("{what} watch"),
                            source: Box::new(etcd_client::Error::WatchError(reason)),
                        }))
                        .await;
                    return;
                }
            }
        });
        Ok(Watch { rx, task })
    }
}
