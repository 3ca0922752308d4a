//! Per-cgroup traffic accounting, read out of the `cgroup_skb` object's
//! `cgroup_traffic` map (LRU per-CPU hash, cgroup v2 id -> packets and bytes
//! per direction). The programs run once attached with
//! [`crate::Datapath::attach_cgroup`]; they count every packet that a socket
//! of a cgroup below the attached one sends or receives, under the socket's
//! own cgroup (a pod's cgroup), and never drop anything.

use libbpf_rs::{MapCore, MapFlags};

use crate::datapath::{decode, map_err};
use crate::skel_cgskb::types;
use crate::{BpfError, Datapath};

/// Traffic of one cgroup, summed over CPUs; cumulative since the first
/// packet counted (or since the LRU evicted the row and it came back).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CgroupTraffic {
    /// The cgroup v2 id (the inode number of the cgroup directory).
    pub cgroup_id: u64,
    /// Packets received by its sockets.
    pub ingress_packets: u64,
    /// Their bytes (IP packets).
    pub ingress_bytes: u64,
    /// Packets sent by its sockets.
    pub egress_packets: u64,
    /// Their bytes (IP packets).
    pub egress_bytes: u64,
}

impl Datapath {
    fn cgroup_traffic_map(&self) -> Result<&libbpf_rs::MapHandle, BpfError> {
        self.maps.cgroup_traffic.as_ref().ok_or_else(|| {
            BpfError::Invalid(format!(
                "the cgroup_skb object is not loaded (loaded: {:?}, unavailable: {:?})",
                self.objects(),
                self.unavailable()
            ))
        })
    }

    /// Traffic per cgroup, sorted by cgroup id.
    pub fn cgroup_traffic(&self) -> Result<Vec<CgroupTraffic>, BpfError> {
        let map = self.cgroup_traffic_map()?;
        let mut out = Vec::new();
        for k in map.keys() {
            let cgroup_id: u64 = decode("cgroup_traffic", &k)?;
            // A row evicted between keys() and lookup() is skipped.
            let Some(per_cpu) = map
                .lookup_percpu(&k, MapFlags::ANY)
                .map_err(map_err("cgroup_traffic", format!("reading cgroup {cgroup_id}")))?
            else {
                continue;
            };
            let mut row = CgroupTraffic { cgroup_id, ..CgroupTraffic::default() };
            for cpu in &per_cpu {
                let v: types::cgroup_traffic_value = decode("cgroup_traffic", cpu)?;
                row.ingress_packets = row.ingress_packets.wrapping_add(v.ingress_packets);
                row.ingress_bytes = row.ingress_bytes.wrapping_add(v.ingress_bytes);
                row.egress_packets = row.egress_packets.wrapping_add(v.egress_packets);
                row.egress_bytes = row.egress_bytes.wrapping_add(v.egress_bytes);
            }
            out.push(row);
        }
        out.sort_by_key(|r| r.cgroup_id);
        Ok(out)
    }

    /// Traffic of one cgroup (None: nothing counted for it).
    pub fn cgroup_traffic_of(&self, cgroup_id: u64) -> Result<Option<CgroupTraffic>, BpfError> {
        Ok(self.cgroup_traffic()?.into_iter().find(|r| r.cgroup_id == cgroup_id))
    }

    /// Forget the row of `cgroup_id` (its pod went away); false if there was none.
    pub fn delete_cgroup_traffic(&self, cgroup_id: u64) -> Result<bool, BpfError> {
        match self.cgroup_traffic_map()?.delete(crate::sys::as_bytes(&cgroup_id)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(source) => {
                Err(BpfError::Map { map: "cgroup_traffic", op: format!("deleting cgroup {cgroup_id}"), source })
            }
        }
    }
}
