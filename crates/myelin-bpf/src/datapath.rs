//! The loaded datapath: pinned maps, program handles, TCX link pins.
//!
//! Pin layout under the per-node pin directory:
//! ```text
//! <pin_dir>/endpoints            HASH     endpoint_key -> endpoint_info
//! <pin_dir>/node_config          ARRAY    [node_config; 1]
//! <pin_dir>/metrics              PERCPU_HASH metrics_key -> metrics_value
//! <pin_dir>/ipcache              LPM_TRIE ipcache_key -> ipcache_value
//! <pin_dir>/policy_maps          HASH_OF_MAPS endpoint_id -> LPM_TRIE policy_key -> policy_entry
//! <pin_dir>/policy_stats         PERCPU_HASH policy_stats_key -> metrics_value
//! <pin_dir>/ct4                  LRU_HASH ct4_key -> ct4_entry
//! <pin_dir>/frag4                LRU_HASH frag4_key -> frag4_ports (loader-internal)
//! <pin_dir>/links/<ifname>/ingress   TCX link: from_container
//! <pin_dir>/links/<ifname>/egress    TCX link: to_container
//! ```
//! (bpffs refuses names containing '.', hence a directory per interface
//! rather than `<ifname>.ingress`; an ifname with a '.' is refused.)

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use libbpf_rs::query::LinkTypeInfo;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle, ProgramAttachType, ProgramHandle};

use crate::skel::{types, LxcSkelBuilder};
use crate::sys::{self, TcxHook};
use crate::{BpfError, EndpointEntry, MetricRow, NodeConfig};

/// The loaded pod-veth datapath.
///
/// Holds owned fds only (maps and programs, duplicated out of the libbpf
/// skeleton, which is dropped after loading because its borrowed, raw-pointer
/// based types are neither `Send` nor `Sync`). So `Datapath` is `Send + Sync`
/// without any `unsafe impl`; every method takes `&self` and is a single
/// syscall-level operation that the kernel serialises, so sharing it through
/// an `Arc` (a `Mutex` is only needed for multi-step read-modify-write logic
/// of your own) is fine. Dropping it closes the fds: pinned maps and pinned
/// links stay, and so does forwarding.
#[derive(Debug)]
pub struct Datapath {
    pin_dir: PathBuf,
    endpoints: MapHandle,
    pub(crate) node_config: MapHandle,
    metrics: MapHandle,
    pub(crate) ipcache: MapHandle,
    pub(crate) policy_maps: MapHandle,
    pub(crate) policy_stats: MapHandle,
    pub(crate) ct4: MapHandle,
    from_container: ProgramHandle,
    to_container: ProgramHandle,
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Datapath>();
};

fn ip_key(ip: Ipv4Addr) -> types::endpoint_key {
    // Network byte order in memory: the octets as they are.
    types::endpoint_key { ip4: u32::from_ne_bytes(ip.octets()) }
}

fn key_ip(k: types::endpoint_key) -> Ipv4Addr {
    Ipv4Addr::from(k.ip4.to_ne_bytes())
}

fn ip_u32(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub(crate) fn map_err(map: &'static str, op: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> BpfError {
    let op = op.into();
    move |source| BpfError::Map { map, op, source }
}

/// bpffs refuses any name containing '.', with a puzzling EPERM: say so
/// before trying to create such a directory.
fn check_pin_dir(pin_dir: &Path) -> Result<(), BpfError> {
    let mut prefix = PathBuf::new();
    for c in pin_dir.components() {
        prefix.push(c);
        if let std::path::Component::Normal(name) = c {
            if name.to_string_lossy().contains('.') && !prefix.exists() {
                return Err(BpfError::Invalid(format!(
                    "pin directory {}: bpffs refuses names containing '.' ({name:?}); \
                     use node_pin_dir() to derive a safe name",
                    pin_dir.display()
                )));
            }
        }
    }
    Ok(())
}

fn check_ifname(ifname: &str) -> Result<(), BpfError> {
    if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', '.', '\0']) {
        return Err(BpfError::Invalid(format!(
            "{ifname:?} is not a usable interface name (1-15 bytes, no '/', no '.': bpffs refuses dots)"
        )));
    }
    Ok(())
}

impl Datapath {
    /// Load the programs, creating `pin_dir` (and `pin_dir/links`) if needed.
    /// Maps are pinned by name in `pin_dir`; maps already pinned there (an
    /// agent restart) are reused with their contents. `pin_dir` must be on
    /// bpffs (see [`crate::ensure_bpffs`]).
    pub fn load(pin_dir: &Path) -> Result<Self, BpfError> {
        check_pin_dir(pin_dir)?;
        let links = pin_dir.join("links");
        std::fs::create_dir_all(&links).map_err(|source| BpfError::PinDir {
            action: "creating",
            path: links.clone(),
            source,
        })?;
        let load_err = |source| BpfError::Load { pin_dir: pin_dir.to_path_buf(), source };

        let mut builder = LxcSkelBuilder::default();
        builder.obj_builder.pin_root_path(pin_dir).map_err(load_err)?;
        let mut storage = std::mem::MaybeUninit::uninit();
        let open = builder.open(&mut storage).map_err(load_err)?;
        let skel = open.load().map_err(load_err)?;

        let dup = |name: &'static str, m: &libbpf_rs::MapMut<'_>| {
            MapHandle::try_from(m).map_err(map_err(name, "duplicating the map fd"))
        };
        let endpoints = dup("endpoints", &skel.maps.endpoints)?;
        let node_config = dup("node_config", &skel.maps.node_config)?;
        let metrics = dup("metrics", &skel.maps.metrics)?;
        let ipcache = dup("ipcache", &skel.maps.ipcache)?;
        let policy_maps = dup("policy_maps", &skel.maps.policy_maps)?;
        let policy_stats = dup("policy_stats", &skel.maps.policy_stats)?;
        let ct4 = dup("ct4", &skel.maps.ct4)?;
        let from_container = ProgramHandle::try_from(&skel.progs.from_container).map_err(load_err)?;
        let to_container = ProgramHandle::try_from(&skel.progs.to_container).map_err(load_err)?;
        drop(skel);

        Ok(Self {
            pin_dir: pin_dir.to_path_buf(),
            endpoints,
            node_config,
            metrics,
            ipcache,
            policy_maps,
            policy_stats,
            ct4,
            from_container,
            to_container,
        })
    }

    /// Size and verifier cost of each loaded program (for `myelin status`,
    /// and to keep an eye on the datapath's complexity).
    pub fn program_stats(&self) -> Result<Vec<crate::ProgramStat>, BpfError> {
        [("from_container", &self.from_container), ("to_container", &self.to_container)]
            .into_iter()
            .map(|(name, prog)| {
                let (verified_insns, xlated_insns, jited_bytes) = sys::prog_sizes(prog.as_fd())
                    .map_err(|e| BpfError::Invalid(format!("reading the info of program {name}: {e}")))?;
                Ok(crate::ProgramStat { name, verified_insns, xlated_insns, jited_bytes })
            })
            .collect()
    }

    /// The pin directory this datapath was loaded with.
    #[must_use]
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Write the node configuration (single entry of `node_config`),
    /// keeping the policy knobs ([`Datapath::set_allow_localhost`],
    /// [`Datapath::set_ct_timeouts`]) as they are.
    pub fn set_node_config(&self, cfg: &NodeConfig) -> Result<(), BpfError> {
        if cfg.pod_cidr_prefix > 32 {
            return Err(BpfError::Invalid(format!("pod CIDR prefix /{} is longer than 32", cfg.pod_cidr_prefix)));
        }
        let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(cfg.pod_cidr_prefix)).unwrap_or(0));
        let old = self
            .node_config
            .lookup(sys::as_bytes(&0u32), MapFlags::ANY)
            .map_err(map_err("node_config", "reading entry 0"))?
            .unwrap_or_default();
        let old: types::node_config = decode("node_config", &old)?;
        let v = types::node_config {
            node_ip4: ip_u32(cfg.node_ip),
            gateway_ip4: ip_u32(cfg.gateway),
            pod_cidr4: ip_u32(cfg.pod_cidr) & ip_u32(mask),
            pod_cidr4_mask: ip_u32(mask),
            ..old
        };
        self.node_config
            .update(sys::as_bytes(&0u32), sys::as_bytes(&v), MapFlags::ANY)
            .map_err(map_err("node_config", "writing entry 0"))
    }

    /// Read the node configuration back (all zero until set).
    pub fn node_config(&self) -> Result<NodeConfig, BpfError> {
        let raw = self
            .node_config
            .lookup(sys::as_bytes(&0u32), MapFlags::ANY)
            .map_err(map_err("node_config", "reading entry 0"))?
            .unwrap_or_default();
        let v: types::node_config = decode("node_config", &raw)?;
        Ok(NodeConfig {
            node_ip: Ipv4Addr::from(v.node_ip4.to_ne_bytes()),
            gateway: Ipv4Addr::from(v.gateway_ip4.to_ne_bytes()),
            pod_cidr: Ipv4Addr::from(v.pod_cidr4.to_ne_bytes()),
            pod_cidr_prefix: u8::try_from(u32::from_be_bytes(v.pod_cidr4_mask.to_ne_bytes()).count_ones())
                .unwrap_or(32),
        })
    }

    /// Insert or replace the endpoint owning `ip`.
    pub fn upsert_endpoint(&self, ip: Ipv4Addr, ep: &EndpointEntry) -> Result<(), BpfError> {
        let v = types::endpoint_info {
            ifindex: ep.ifindex,
            endpoint_id: ep.endpoint_id,
            identity: ep.identity,
            flags: ep.flags,
            mac: ep.mac,
            host_mac: ep.host_mac,
        };
        self.endpoints
            .update(sys::as_bytes(&ip_key(ip)), sys::as_bytes(&v), MapFlags::ANY)
            .map_err(map_err("endpoints", format!("upserting {ip}")))
    }

    /// Delete the endpoint owning `ip`; false if there was none.
    pub fn delete_endpoint(&self, ip: Ipv4Addr) -> Result<bool, BpfError> {
        match self.endpoints.delete(sys::as_bytes(&ip_key(ip))) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(BpfError::Map { map: "endpoints", op: format!("deleting {ip}"), source }),
        }
    }

    /// Look one endpoint up.
    pub fn endpoint(&self, ip: Ipv4Addr) -> Result<Option<EndpointEntry>, BpfError> {
        let raw = self
            .endpoints
            .lookup(sys::as_bytes(&ip_key(ip)), MapFlags::ANY)
            .map_err(map_err("endpoints", format!("looking up {ip}")))?;
        raw.map(|r| decode::<types::endpoint_info>("endpoints", &r).map(EndpointEntry::from)).transpose()
    }

    /// All endpoints, sorted by address.
    pub fn endpoints(&self) -> Result<Vec<(Ipv4Addr, EndpointEntry)>, BpfError> {
        let mut out = Vec::new();
        for k in self.endpoints.keys() {
            let key: types::endpoint_key = decode("endpoints", &k)?;
            // An entry deleted between keys() and lookup() is simply skipped.
            if let Some(ep) = self.endpoint(key_ip(key))? {
                out.push((key_ip(key), ep));
            }
        }
        out.sort_by_key(|(ip, _)| *ip);
        Ok(out)
    }

    fn link_path(&self, ifname: &str, hook: TcxHook) -> PathBuf {
        let leaf = match hook {
            TcxHook::Ingress => "ingress",
            TcxHook::Egress => "egress",
        };
        self.link_dir(ifname).join(leaf)
    }

    fn link_dir(&self, ifname: &str) -> PathBuf {
        self.pin_dir.join("links").join(ifname)
    }

    /// The ifindex a pinned TCX link at `path` is attached to, if it is a
    /// live TCX link of the expected hook (0 if its device is gone).
    fn pinned_link_ifindex(path: &Path, hook: TcxHook) -> Option<u32> {
        if !path.exists() {
            return None;
        }
        let link = Link::open(path).ok()?;
        let info = link.info().ok()?;
        match info.info {
            LinkTypeInfo::Tcx(t) => {
                let right_hook = match hook {
                    TcxHook::Ingress => matches!(t.attach_type, ProgramAttachType::TcxIngress),
                    TcxHook::Egress => matches!(t.attach_type, ProgramAttachType::TcxEgress),
                };
                right_hook.then_some(t.ifindex)
            }
            _ => None,
        }
    }

    fn attach_one(&self, ifname: &str, ifindex: u32, hook: TcxHook) -> Result<bool, BpfError> {
        let path = self.link_path(ifname, hook);
        if path.exists() {
            if Self::pinned_link_ifindex(&path, hook) == Some(ifindex) {
                return Ok(false); // adopt: a previous process attached it
            }
            // Stale (device gone or recreated with another ifindex) or not a
            // TCX link of this hook: replace it.
            remove_pin(&path)?;
        }
        let dir = self.link_dir(ifname);
        std::fs::create_dir_all(&dir).map_err(|source| BpfError::PinDir { action: "creating", path: dir, source })?;
        let (prog, prog_name, hook_name) = match hook {
            TcxHook::Ingress => (&self.from_container, "from_container", "ingress"),
            TcxHook::Egress => (&self.to_container, "to_container", "egress"),
        };
        let link = sys::tcx_link_create(prog.as_fd(), ifindex, hook).map_err(|source| BpfError::Attach {
            prog: prog_name,
            hook: hook_name,
            ifname: ifname.to_string(),
            ifindex,
            source,
        })?;
        sys::obj_pin(link.as_fd(), &path).map_err(|source| BpfError::PinLink {
            ifname: ifname.to_string(),
            path: path.clone(),
            source,
        })?;
        // Dropping `link` closes our fd; the pin keeps the link attached.
        Ok(true)
    }

    /// Attach `from_container` at TCX ingress and `to_container` at TCX
    /// egress of the host-side veth `ifname`/`ifindex` (in the calling
    /// thread's netns) and pin both links at `pin_dir/links/<ifname>/ingress`
    /// and `.../egress`, so they survive this process.
    ///
    /// Idempotent: if both links are pinned already and attached to `ifindex`
    /// (agent restart), they are adopted as they are and `Ok(false)` is
    /// returned. A pinned link whose device disappeared or has another
    /// ifindex is unpinned and replaced. `Ok(true)` when anything was newly
    /// attached.
    pub fn attach_endpoint(&self, ifname: &str, ifindex: u32) -> Result<bool, BpfError> {
        check_ifname(ifname)?;
        if ifindex == 0 {
            return Err(BpfError::Invalid(format!("ifindex 0 for {ifname}")));
        }
        let ingress = self.attach_one(ifname, ifindex, TcxHook::Ingress)?;
        let egress = match self.attach_one(ifname, ifindex, TcxHook::Egress) {
            Ok(v) => v,
            Err(e) => {
                if ingress {
                    // Don't leave half an endpoint plumbed by this call.
                    let _ = remove_pin(&self.link_path(ifname, TcxHook::Ingress));
                }
                return Err(e);
            }
        };
        Ok(ingress || egress)
    }

    /// Both links of `ifname` are pinned and attached to a live device.
    #[must_use]
    pub fn endpoint_attached(&self, ifname: &str) -> bool {
        if check_ifname(ifname).is_err() {
            return false;
        }
        [TcxHook::Ingress, TcxHook::Egress]
            .into_iter()
            .all(|hook| matches!(Self::pinned_link_ifindex(&self.link_path(ifname, hook), hook), Some(i) if i != 0))
    }

    /// Remove both link pins of `ifname` (which detaches the programs unless
    /// someone else holds the links open). Ok even if absent.
    pub fn detach_endpoint(&self, ifname: &str) -> Result<(), BpfError> {
        check_ifname(ifname)?;
        remove_pin(&self.link_path(ifname, TcxHook::Ingress))?;
        remove_pin(&self.link_path(ifname, TcxHook::Egress))?;
        let dir = self.link_dir(ifname);
        match std::fs::remove_dir(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(BpfError::PinDir { action: "removing", path: dir, source }),
        }
    }

    /// Interface names that have a link pin directory (attached or stale),
    /// sorted: what a restarted agent compares with its endpoints to find
    /// leftovers to detach.
    pub fn pinned_endpoints(&self) -> Result<Vec<String>, BpfError> {
        let links = self.pin_dir.join("links");
        let rd = match std::fs::read_dir(&links) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(BpfError::PinDir { action: "reading", path: links, source }),
        };
        let mut names: Vec<String> =
            rd.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()).collect();
        names.sort();
        Ok(names)
    }

    /// All metric rows, summed over CPUs, sorted by (endpoint, direction, reason).
    pub fn metrics(&self) -> Result<Vec<MetricRow>, BpfError> {
        let mut out = Vec::new();
        for k in self.metrics.keys() {
            let key: types::metrics_key = decode("metrics", &k)?;
            let Some(per_cpu) = self
                .metrics
                .lookup_percpu(&k, MapFlags::ANY)
                .map_err(map_err("metrics", format!("reading {key:?}")))?
            else {
                continue;
            };
            let mut row = MetricRow {
                endpoint_id: key.endpoint_id,
                direction: key.direction,
                reason: key.reason,
                packets: 0,
                bytes: 0,
            };
            for cpu in &per_cpu {
                let v: types::metrics_value = decode("metrics", cpu)?;
                row.packets = row.packets.wrapping_add(v.packets);
                row.bytes = row.bytes.wrapping_add(v.bytes);
            }
            out.push(row);
        }
        out.sort_by_key(|r| (r.endpoint_id, r.direction, r.reason));
        Ok(out)
    }

    /// Delete every metric row of `endpoint_id` (when the endpoint goes away).
    pub fn delete_metrics(&self, endpoint_id: u32) -> Result<(), BpfError> {
        let keys: Vec<Vec<u8>> = self.metrics.keys().collect();
        for k in keys {
            let key: types::metrics_key = decode("metrics", &k)?;
            if key.endpoint_id != endpoint_id {
                continue;
            }
            match self.metrics.delete(&k) {
                Ok(()) => {}
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(source) => return Err(BpfError::Map { map: "metrics", op: format!("deleting {key:?}"), source }),
            }
        }
        Ok(())
    }
}

/// Cumulative run-time statistics of one program (see [`endpoint_run_stats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProgramRunStats {
    /// The kernel's program id.
    pub prog_id: u32,
    /// Nanoseconds spent in the program, summed over runs.
    pub run_time_ns: u64,
    /// Number of runs.
    pub run_cnt: u64,
}

/// Run-time statistics of the programs attached to the endpoint `ifname`
/// through the links pinned under `pin_dir` by [`Datapath::attach_endpoint`]
/// (possibly by another process, e.g. the agent): `[from_container (TCX
/// ingress), to_container (TCX egress)]`. The kernel counts only while the
/// sysctl `kernel.bpf_stats_enabled` is 1; the figures are cumulative, so
/// take differences.
pub fn endpoint_run_stats(pin_dir: &Path, ifname: &str) -> Result<[ProgramRunStats; 2], BpfError> {
    check_ifname(ifname)?;
    let one = |leaf: &str| -> Result<ProgramRunStats, BpfError> {
        let path = pin_dir.join("links").join(ifname).join(leaf);
        let bad = |what: String| BpfError::Invalid(format!("{}: {what}", path.display()));
        let link = Link::open(&path).map_err(|e| bad(format!("opening the pinned link: {e}")))?;
        let info = link.info().map_err(|e| bad(format!("reading the link info: {e}")))?;
        let fd = libbpf_rs::Program::fd_from_id(info.prog_id)
            .map_err(|e| bad(format!("opening program id {}: {e}", info.prog_id)))?;
        let (run_time_ns, run_cnt) = sys::prog_run_stats(fd.as_fd())
            .map_err(|e| bad(format!("reading the info of program id {}: {e}", info.prog_id)))?;
        Ok(ProgramRunStats { prog_id: info.prog_id, run_time_ns, run_cnt })
    };
    Ok([one("ingress")?, one("egress")?])
}

pub(crate) fn decode<T: sys::Pod>(map: &'static str, raw: &[u8]) -> Result<T, BpfError> {
    sys::from_bytes(raw).ok_or(BpfError::Layout { map, got: raw.len(), expected: std::mem::size_of::<T>() })
}

fn remove_pin(path: &Path) -> Result<(), BpfError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BpfError::PinDir { action: "removing", path: path.to_path_buf(), source }),
    }
}

impl From<types::endpoint_info> for EndpointEntry {
    fn from(v: types::endpoint_info) -> Self {
        Self {
            ifindex: v.ifindex,
            endpoint_id: v.endpoint_id,
            identity: v.identity,
            flags: v.flags,
            mac: v.mac,
            host_mac: v.host_mac,
        }
    }
}
