//! The pods' socket traffic: the cgroup_skb programs count what the sockets of
//! each cgroup under `cgroup_root` send and receive; this names the cgroups by
//! pod. Read on demand (API, scrape) on a blocking thread: the counters are
//! one map dump, the names a walk of the cgroup tree.
//!
//! A cgroup belongs to an endpoint when its directory name contains the
//! endpoint's container id (containerd's `cri-containerd-<id>.scope` for the
//! sandbox, the lab's pod cgroups), or else when one of its processes is in
//! the endpoint's network namespace (any runtime, while the pod runs).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use myelin_api::{CgroupTraffic, Endpoint};
use myelin_bpf::{BpfError, Datapath};

/// Directories visited at most, and how deep (a pod's cgroups are a few levels down).
const MAX_DIRS: usize = 20_000;
const MAX_DEPTH: usize = 8;

/// Whether the cgroup_skb programs are attached (both ways).
#[must_use]
pub fn accounting_on(datapath: &Datapath) -> bool {
    use myelin_bpf::objects::CgroupHook;
    [CgroupHook::SkbIngress, CgroupHook::SkbEgress].into_iter().all(|h| datapath.cgroup_attached(h))
}

/// Every counted cgroup, named by pod where the agent can tell.
pub fn traffic(datapath: &Datapath, root: &Path, endpoints: &[Endpoint]) -> Result<Vec<CgroupTraffic>, BpfError> {
    let rows = datapath.cgroup_traffic()?;
    let dirs = cgroup_dirs(root);
    // Network namespace inode of each endpoint (its netns path is a bind mount of it).
    let netns: Vec<(u64, &Endpoint)> =
        endpoints.iter().filter_map(|e| std::fs::metadata(&e.netns).ok().map(|m| (m.ino(), e))).collect();
    Ok(rows
        .into_iter()
        .map(|r| {
            let dir = dirs.get(&r.cgroup_id);
            let ep = dir.and_then(|d| owner(d, endpoints, &netns));
            CgroupTraffic {
                cgroup_id: r.cgroup_id,
                cgroup: dir.map(|d| d.strip_prefix(root).unwrap_or(d).display().to_string()),
                endpoint_id: ep.map(|e| e.id),
                namespace: ep.and_then(|e| e.namespace.clone()),
                pod: ep.and_then(|e| e.pod_name.clone()),
                ingress_packets: r.ingress_packets,
                ingress_bytes: r.ingress_bytes,
                egress_packets: r.egress_packets,
                egress_bytes: r.egress_bytes,
            }
        })
        .collect())
}

/// cgroup id (the directory's inode number) -> directory, for `root` and what is below it.
fn cgroup_dirs(root: &Path) -> HashMap<u64, PathBuf> {
    let mut out = HashMap::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        if out.len() >= MAX_DIRS {
            break;
        }
        let Ok(meta) = std::fs::metadata(&dir) else { continue };
        out.insert(meta.ino(), dir.clone());
        if depth >= MAX_DEPTH {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    out
}

/// The endpoint a cgroup directory belongs to.
fn owner<'a>(dir: &Path, endpoints: &'a [Endpoint], netns: &[(u64, &'a Endpoint)]) -> Option<&'a Endpoint> {
    let name = dir.file_name()?.to_string_lossy();
    if let Some(e) = endpoints.iter().find(|e| !e.container_id.is_empty() && name.contains(e.container_id.as_str())) {
        return Some(e);
    }
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    procs.split_whitespace().find_map(|pid| {
        let ino = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?.ino();
        netns.iter().find(|(i, _)| *i == ino).map(|(_, e)| *e)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ep(id: u32, container_id: &str, netns: &str) -> Endpoint {
        Endpoint {
            container_id: container_id.into(),
            netns: netns.into(),
            namespace: Some("x".into()),
            pod_name: Some(format!("p{id}")),
            ..crate::store::tests::ep(id, "10.0.0.2")
        }
    }

    #[test]
    fn a_cgroup_is_named_by_container_id_or_by_the_netns_of_its_processes() {
        let root = std::env::temp_dir().join(format!("myelin-cg-test-{}", std::process::id()));
        let by_name = root.join("kubepods").join("cri-containerd-abc123.scope");
        let by_proc = root.join("other");
        std::fs::create_dir_all(&by_name).unwrap();
        std::fs::create_dir_all(&by_proc).unwrap();
        // This test process's netns is "the pod's" netns of endpoint 2.
        std::fs::write(by_proc.join("cgroup.procs"), format!("{}\n", std::process::id())).unwrap();
        let eps = vec![ep(1, "abc123", "/nonexistent"), ep(2, "zzz", "/proc/self/ns/net")];
        let netns: Vec<(u64, &Endpoint)> =
            eps.iter().filter_map(|e| std::fs::metadata(&e.netns).ok().map(|m| (m.ino(), e))).collect();
        let dirs = cgroup_dirs(&root);
        assert_eq!(dirs.len(), 4, "root, kubepods, the scope, other: {dirs:?}");
        assert_eq!(owner(&by_name, &eps, &netns).map(|e| e.id), Some(1));
        assert_eq!(owner(&by_proc, &eps, &netns).map(|e| e.id), Some(2));
        assert_eq!(owner(&root.join("kubepods"), &eps, &netns).map(|e| e.id), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
