//! The policy thread's view of cluster-wide identity allocation: a blocking call with a timeout
//! that the cluster component answers from etcd. While the component is reconnecting (a member
//! went, the lease is being renewed on another) requests wait for the new session, up to the
//! timeout; once it knows etcd is unreachable the answer is "cannot now" at once, so the policy
//! thread never waits on a dead etcd.

use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use myelin_kvstore::Labels as KvLabels;
use myelin_policy::{Identity, Labels};
use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::labels::to_kv;
use crate::policy::ClusterIdentities;

/// The kvstore link as the allocator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// A session is up.
    Up,
    /// Starting, or a session just ended and the next connect is under way: requests wait.
    Reconnecting,
    /// A connect failed: etcd is unreachable; requests are refused at once.
    Down,
}

/// A request from the policy thread to the cluster component.
pub enum AllocReq {
    /// Allocate (or adopt) the identity of these labels and record this node's reference.
    Acquire { labels: KvLabels, reply: std_mpsc::SyncSender<Option<Identity>> },
    /// Drop this node's reference.
    Release { labels: KvLabels },
}

/// The [`ClusterIdentities`] the policy engine uses when a kvstore is configured.
pub struct KvIdentities {
    pub(super) tx: mpsc::UnboundedSender<AllocReq>,
    pub(super) link: watch::Receiver<Link>,
    pub(super) timeout: Duration,
}

impl ClusterIdentities for KvIdentities {
    fn acquire(&mut self, labels: &Labels) -> Option<Identity> {
        if *self.link.borrow() == Link::Down {
            return None;
        }
        let labels = match to_kv(labels) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "labels the kvstore cannot hold: a node-local identity");
                return None;
            }
        };
        let (reply, rx) = std_mpsc::sync_channel(1);
        self.tx.send(AllocReq::Acquire { labels, reply }).ok()?;
        match rx.recv_timeout(self.timeout) {
            Ok(answer) => answer,
            Err(_) => {
                warn!(timeout = ?self.timeout, "the kvstore did not allocate in time");
                None
            }
        }
    }

    fn release(&mut self, labels: &Labels) {
        if let Ok(labels) = to_kv(labels) {
            let _ = self.tx.send(AllocReq::Release { labels });
        }
    }
}
