//! The loaded datapath: every object of [`crate::objects`] the kernel
//! supports, loaded into one per-node pin directory, with typed access to
//! the shared maps. Attaching lives in `attach.rs`, policy in `policy.rs`,
//! conntrack in `conntrack.rs`, events in `events.rs`, services in
//! `services.rs`.
//!
//! Pin layout under the per-node pin directory:
//! ```text
//! <pin_dir>/abi_meta             ARRAY    [abi_meta; 1]: the ABI that made these maps
//! <pin_dir>/endpoints            HASH     endpoint_key -> endpoint_info
//! <pin_dir>/node_config          ARRAY    [node_config; 1]
//! <pin_dir>/metrics              PERCPU_HASH metrics_key -> metrics_value
//! <pin_dir>/ipcache              LPM_TRIE ipcache_key -> ipcache_value
//! <pin_dir>/policy_cidrs         LPM_TRIE ipcache_key -> ipcache_value (policy CIDR -> CIDR identity)
//! <pin_dir>/policy_maps          HASH_OF_MAPS endpoint_id -> LPM_TRIE policy_key -> policy_entry
//! <pin_dir>/policy_stats         PERCPU_HASH policy_stats_key -> metrics_value
//! <pin_dir>/ct4                  LRU_HASH ct4_key -> ct4_entry
//! <pin_dir>/frag4                LRU_HASH frag4_key -> frag4_ports (datapath-internal)
//! <pin_dir>/events               RINGBUF  struct event + packet bytes
//! <pin_dir>/events_lost          PERCPU_ARRAY [u64; 1]
//! <pin_dir>/lb4_*                socket load balancing (services.rs)
//! <pin_dir>/lb4_sock_slots       SK_STORAGE lb4_sock_backends (per socket: its lb4_sock_revnat entries)
//! <pin_dir>/cgroup_traffic       LRU_PERCPU_HASH cgroup id -> cgroup_traffic_value (cgroup_skb)
//! <pin_dir>/prefilter4           LPM_TRIE ipcache_key -> prefilter_value (XDP)
//! <pin_dir>/tunnel_map           LPM_TRIE tunnel_key -> tunnel_value (overlay: pod prefix -> node)
//! <pin_dir>/overlay_dev          ARRAY[1] overlay_dev (the tunnel device pods' packets go straight into)
//! <pin_dir>/links/<ifname>/ingress|egress        pod veth (TCX links)
//! <pin_dir>/links/<ifname>/uplink_in|uplink_out  uplink (TCX links)
//! <pin_dir>/links/<ifname>/xdp                   uplink XDP link
//! <pin_dir>/links/cgroup/<program>               cgroup links
//! <pin_dir>/migrate/<map>        maps of an upgrade in progress (old layout)
//! ```
//! (bpffs refuses names containing '.', hence a directory per interface.)

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use libbpf_rs::{Link, MapCore, MapFlags, MapHandle, ProgramHandle};

use crate::loader::{self, Moved};
use crate::migrate::MapMigration;
use crate::objects::{self, Hook, ObjectSpec};
use crate::skel::types;
use crate::{sys, BpfError, EndpointEntry, MetricRow, NodeConfig};

/// How tc programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttachMode {
    /// TCX links (kernel >= 6.6), pinned so they outlive the agent.
    Tcx,
    /// A clsact qdisc and direct-action bpf filters set up over netlink
    /// (older kernels); they outlive the agent by themselves.
    Tc,
}

impl AttachMode {
    /// "tcx" or "tc".
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Tc => "tc",
        }
    }
}

/// What to load.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Objects to load; None = every object whose feature probe passes.
    pub objects: Option<Vec<&'static ObjectSpec>>,
    /// None = TCX when the kernel has it, else clsact.
    pub attach_mode: Option<AttachMode>,
}

/// An object that was not loaded, and why; or one program of a loaded
/// object that was left out (its attach type is newer than this kernel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable {
    /// Object name; for a program left out of a loaded object, the
    /// program's name (unique across objects).
    pub object: &'static str,
    /// The probes it needs, and what they said.
    pub reason: String,
}

/// What loading found of a previous datapath, and what activation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpgradeReport {
    /// The ABI recorded in the pin directory before (None: a fresh directory).
    pub previous_abi: Option<u32>,
    /// This build's ABI.
    pub abi: u32,
    /// Maps whose layout changed, and how their entries were carried over.
    pub migrated: Vec<MapMigration>,
    /// Links whose program was replaced by [`Datapath::activate`].
    pub links_updated: usize,
    /// Links that already ran this build's programs.
    pub links_current: usize,
}

/// The shared maps, as owned handles.
#[derive(Debug)]
pub(crate) struct Maps {
    pub endpoints: MapHandle,
    pub node_config: MapHandle,
    pub metrics: MapHandle,
    pub ipcache: MapHandle,
    pub policy_cidrs: MapHandle,
    pub policy_maps: MapHandle,
    pub policy_stats: MapHandle,
    pub ct4: MapHandle,
    pub events_lost: MapHandle,
    pub abi_meta: MapHandle,
    pub lb4_services: Option<MapHandle>,
    pub lb4_backends: Option<MapHandle>,
    pub lb4_reverse_nat: Option<MapHandle>,
    pub prefilter4: Option<MapHandle>,
    pub tunnel_map: Option<MapHandle>,
    pub overlay_dev: Option<MapHandle>,
    pub cgroup_traffic: Option<MapHandle>,
}

/// The loaded datapath.
///
/// Holds owned fds only (maps and programs, duplicated out of the libbpf
/// objects, which are dropped after loading). So `Datapath` is `Send + Sync`;
/// every method takes `&self` and is a single syscall-level operation that the
/// kernel serialises (a `Mutex` is only needed for multi-step read-modify-write
/// logic of your own). Dropping it closes the fds: pinned maps and pinned
/// links stay, and so does forwarding.
#[derive(Debug)]
pub struct Datapath {
    pub(crate) pin_dir: PathBuf,
    pub(crate) mode: AttachMode,
    pub(crate) maps: Maps,
    pub(crate) progs: Vec<(&'static str, Hook, ProgramHandle)>,
    loaded: Vec<&'static str>,
    unavailable: Vec<Unavailable>,
    pub(crate) upgrade: Mutex<(UpgradeReport, Vec<Moved>)>,
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

pub(crate) fn ip_u32(ip: Ipv4Addr) -> u32 {
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

/// Which objects the kernel supports, from the feature probes.
fn supported(features: &[crate::FeatureProbe]) -> (Vec<&'static ObjectSpec>, Vec<Unavailable>) {
    let mut ok = Vec::new();
    let mut not = Vec::new();
    for spec in objects::ALL {
        let have = |n: &str| features.iter().any(|f| f.name == n && f.available);
        if spec.requires_any.iter().any(|n| have(n)) && spec.requires_all.iter().all(|n| have(n)) {
            ok.push(spec);
        } else {
            let why: Vec<String> = spec
                .requires_any
                .iter()
                .chain(spec.requires_all.iter())
                .filter(|n| !have(n))
                .map(|n| missing_feature(features, n))
                .collect();
            not.push(Unavailable { object: spec.name, reason: why.join("; ") });
        }
    }
    (ok, not)
}

/// Why feature `n` is missing, from its probe.
fn missing_feature(features: &[crate::FeatureProbe], n: &str) -> String {
    features.iter().find(|f| f.name == n).map_or(format!("{n}: not probed"), |f| format!("{n}: {}", f.detail))
}

/// The programs of `specs` whose own probes fail: left out of their objects.
fn programs_without_features(specs: &[&'static ObjectSpec], features: &[crate::FeatureProbe]) -> Vec<Unavailable> {
    let mut out = Vec::new();
    for spec in specs {
        for p in spec.programs {
            let missing: Vec<String> = p
                .requires
                .iter()
                .filter(|n| !features.iter().any(|f| f.name == **n && f.available))
                .map(|n| missing_feature(features, n))
                .collect();
            if !missing.is_empty() {
                out.push(Unavailable {
                    object: p.name,
                    reason: format!("program of object {} left out: {}", spec.name, missing.join("; ")),
                });
            }
        }
    }
    out
}

fn take_map(obj: &libbpf_rs::Object, name: &'static str) -> Option<Result<MapHandle, BpfError>> {
    obj.maps()
        .find(|m| m.name() == name)
        .map(|m| MapHandle::try_from(&m).map_err(map_err(name, "duplicating the map fd")))
}

impl Datapath {
    /// Load every object the kernel supports into `pin_dir` (created if
    /// needed). Maps are pinned by name in `pin_dir`; maps already pinned
    /// there (an agent restart) are reused with their contents, and maps whose
    /// layout changed (an upgrade) are migrated. Nothing is attached and no
    /// existing link changes until [`Datapath::activate`]. `pin_dir` must be
    /// on bpffs (see [`crate::ensure_bpffs`]).
    pub fn load(pin_dir: &Path) -> Result<Self, BpfError> {
        Self::load_with(pin_dir, &LoadOptions::default())
    }

    /// [`Datapath::load`] with explicit objects and attach mode.
    pub fn load_with(pin_dir: &Path, opts: &LoadOptions) -> Result<Self, BpfError> {
        Self::load_probed(pin_dir, opts, &crate::probe_features())
    }

    /// [`Datapath::load_with`] deciding by the given feature probes instead
    /// of probing (tests: what a kernel without a feature gets).
    #[doc(hidden)]
    pub fn load_probed(pin_dir: &Path, opts: &LoadOptions, features: &[crate::FeatureProbe]) -> Result<Self, BpfError> {
        check_pin_dir(pin_dir)?;
        let links = pin_dir.join("links");
        std::fs::create_dir_all(&links).map_err(|source| BpfError::PinDir {
            action: "creating",
            path: links.clone(),
            source,
        })?;
        let (specs, mut unavailable) = match &opts.objects {
            Some(list) => (list.clone(), Vec::new()),
            None => supported(features),
        };
        let left_out = programs_without_features(&specs, features);
        let skip: Vec<&str> = left_out.iter().map(|u| u.object).collect();
        let tcx = features.iter().any(|f| f.name == "tcx" && f.available);
        let mode = opts.attach_mode.unwrap_or(if tcx { AttachMode::Tcx } else { AttachMode::Tc });

        let loaded = loader::load(pin_dir, &specs, &skip)?;
        let find = |name: &'static str| -> Option<Result<MapHandle, BpfError>> {
            loaded.objects.iter().find_map(|(_, o)| take_map(o, name))
        };
        let need = |name: &'static str| -> Result<MapHandle, BpfError> {
            find(name).unwrap_or_else(|| {
                Err(BpfError::Invalid(format!("map {name} is in none of the loaded objects (load lxc first)")))
            })
        };
        let maps = Maps {
            endpoints: need("endpoints")?,
            node_config: need("node_config")?,
            metrics: need("metrics")?,
            ipcache: need("ipcache")?,
            policy_cidrs: need("policy_cidrs")?,
            policy_maps: need("policy_maps")?,
            policy_stats: need("policy_stats")?,
            ct4: need("ct4")?,
            events_lost: need("events_lost")?,
            abi_meta: need("abi_meta")?,
            lb4_services: find("lb4_services").transpose()?,
            lb4_backends: find("lb4_backends").transpose()?,
            lb4_reverse_nat: find("lb4_reverse_nat").transpose()?,
            prefilter4: find("prefilter4").transpose()?,
            tunnel_map: find("tunnel_map").transpose()?,
            overlay_dev: find("overlay_dev").transpose()?,
            cgroup_traffic: find("cgroup_traffic").transpose()?,
        };
        let mut progs = Vec::new();
        for (spec, obj) in &loaded.objects {
            for p in spec.programs.iter().filter(|p| !skip.contains(&p.name)) {
                let prog = obj
                    .progs_mut()
                    .find(|x| x.name() == p.name)
                    .ok_or_else(|| BpfError::Invalid(format!("object {} has no program {}", spec.name, p.name)))?;
                let handle = ProgramHandle::try_from(&prog).map_err(|source| BpfError::Load {
                    pin_dir: pin_dir.to_path_buf(),
                    object: spec.name,
                    source,
                })?;
                progs.push((p.name, p.hook, handle));
            }
        }
        unavailable.extend(left_out);
        let names = loaded.objects.iter().map(|(s, _)| s.name).collect();
        let previous_abi = loaded.previous_abi;
        let moved = loaded.moved.clone();
        drop(loaded);

        let dp = Self {
            pin_dir: pin_dir.to_path_buf(),
            mode,
            maps,
            progs,
            loaded: names,
            unavailable,
            upgrade: Mutex::new((
                UpgradeReport { previous_abi, abi: loader::abi_version(), ..UpgradeReport::default() },
                Vec::new(),
            )),
        };
        dp.migrate_moved(moved, false)?;
        loader::write_abi(&dp.maps.abi_meta)?;
        Ok(dp)
    }

    /// Copy the entries of maps moved aside into their new maps (see
    /// migrate.rs); with `catch_up`, only keys the new maps lack.
    pub(crate) fn migrate_moved(&self, moved: Vec<Moved>, catch_up: bool) -> Result<(), BpfError> {
        if moved.is_empty() {
            return Ok(());
        }
        let identity_of = |ip: u32| -> u32 {
            let ip = Ipv4Addr::from(ip.to_ne_bytes());
            match self.endpoint(ip) {
                Ok(Some(ep)) if ep.flags & crate::EP_F_HOST != 0 => crate::IDENTITY_HOST,
                Ok(Some(ep)) => ep.identity,
                _ => self.ipcache_lookup(ip).ok().flatten().unwrap_or(0),
            }
        };
        let ctx = crate::migrate::Context { identity_of: &identity_of, now_ns: sys::monotonic_ns() };
        let mut report = Vec::new();
        // Endpoints and the ipcache first: the converters look identities up.
        let mut order = moved.clone();
        order.sort_by_key(|m| usize::from(!matches!(m.name.as_str(), "endpoints" | "ipcache")));
        for m in &order {
            let new_path = self.pin_dir.join(&m.name);
            let (Ok(old), Ok(new)) = (MapHandle::from_pinned_path(&m.old_path), MapHandle::from_pinned_path(&new_path))
            else {
                continue;
            };
            report.push(crate::migrate::migrate(&m.name, &old, &new, &ctx, catch_up)?);
        }
        let mut up = self.upgrade.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !catch_up {
            up.0.migrated = report;
            up.1 = moved;
        }
        Ok(())
    }

    /// Objects loaded, by name.
    #[must_use]
    pub fn objects(&self) -> &[&'static str] {
        &self.loaded
    }

    /// Objects the kernel could not take, and why (for the agent's status).
    #[must_use]
    pub fn unavailable(&self) -> &[Unavailable] {
        &self.unavailable
    }

    /// How tc programs are attached.
    #[must_use]
    pub fn attach_mode(&self) -> AttachMode {
        self.mode
    }

    /// What loading found of a previous datapath (and, after
    /// [`Datapath::activate`], what activation did).
    #[must_use]
    pub fn upgrade_report(&self) -> UpgradeReport {
        self.upgrade.lock().unwrap_or_else(std::sync::PoisonError::into_inner).0.clone()
    }

    pub(crate) fn prog(&self, hook: Hook) -> Option<(&'static str, &ProgramHandle)> {
        self.progs.iter().find(|(_, h, _)| *h == hook).map(|(n, _, p)| (*n, p))
    }

    /// Entries and capacity of the maps whose filling matters to operators
    /// (endpoints, ipcache, policy CIDRs, conntrack capacity): for map
    /// pressure metrics. Counts keys (one syscall per entry): call it off the
    /// async workers. The conntrack map's entries are not counted here (GC
    /// knows them, see [`Datapath::ct_gc_report`]); its entries are reported as 0.
    pub fn map_usage(&self) -> Result<Vec<(&'static str, u64, u64)>, BpfError> {
        let mut out = Vec::new();
        for (name, map, count) in [
            ("endpoints", &self.maps.endpoints, true),
            ("ipcache", &self.maps.ipcache, true),
            ("policy_cidrs", &self.maps.policy_cidrs, true),
            ("ct4", &self.maps.ct4, false),
        ] {
            let (_, _, _, max, _, _) = sys::map_shape(map.as_fd()).map_err(|e| BpfError::Map {
                map: name,
                op: "reading its info".into(),
                source: libbpf_rs::Error::from(e),
            })?;
            let entries = if count { map.keys().count() as u64 } else { 0 };
            out.push((name, entries, u64::from(max)));
        }
        Ok(out)
    }

    /// Size and verifier cost of each loaded program (for `myelin status`,
    /// and to keep an eye on the datapath's complexity).
    pub fn program_stats(&self) -> Result<Vec<crate::ProgramStat>, BpfError> {
        self.progs
            .iter()
            .map(|(name, _, prog)| {
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
            .maps
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
        self.maps
            .node_config
            .update(sys::as_bytes(&0u32), sys::as_bytes(&v), MapFlags::ANY)
            .map_err(map_err("node_config", "writing entry 0"))
    }

    /// Read the node configuration back (all zero until set).
    pub fn node_config(&self) -> Result<NodeConfig, BpfError> {
        let raw = self
            .maps
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
        self.maps
            .endpoints
            .update(sys::as_bytes(&ip_key(ip)), sys::as_bytes(&v), MapFlags::ANY)
            .map_err(map_err("endpoints", format!("upserting {ip}")))
    }

    /// Delete the endpoint owning `ip`; false if there was none.
    pub fn delete_endpoint(&self, ip: Ipv4Addr) -> Result<bool, BpfError> {
        match self.maps.endpoints.delete(sys::as_bytes(&ip_key(ip))) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(BpfError::Map { map: "endpoints", op: format!("deleting {ip}"), source }),
        }
    }

    /// Look one endpoint up.
    pub fn endpoint(&self, ip: Ipv4Addr) -> Result<Option<EndpointEntry>, BpfError> {
        let raw = self
            .maps
            .endpoints
            .lookup(sys::as_bytes(&ip_key(ip)), MapFlags::ANY)
            .map_err(map_err("endpoints", format!("looking up {ip}")))?;
        raw.map(|r| decode::<types::endpoint_info>("endpoints", &r).map(EndpointEntry::from)).transpose()
    }

    /// All endpoints, sorted by address.
    pub fn endpoints(&self) -> Result<Vec<(Ipv4Addr, EndpointEntry)>, BpfError> {
        let mut out = Vec::new();
        for k in self.maps.endpoints.keys() {
            let key: types::endpoint_key = decode("endpoints", &k)?;
            // An entry deleted between keys() and lookup() is simply skipped.
            if let Some(ep) = self.endpoint(key_ip(key))? {
                out.push((key_ip(key), ep));
            }
        }
        out.sort_by_key(|(ip, _)| *ip);
        Ok(out)
    }

    /// All metric rows, summed over CPUs, sorted by (endpoint, direction, reason).
    pub fn metrics(&self) -> Result<Vec<MetricRow>, BpfError> {
        let mut out = Vec::new();
        for k in self.maps.metrics.keys() {
            let key: types::metrics_key = decode("metrics", &k)?;
            let Some(per_cpu) = self
                .maps
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
        let keys: Vec<Vec<u8>> = self.maps.metrics.keys().collect();
        for k in keys {
            let key: types::metrics_key = decode("metrics", &k)?;
            if key.endpoint_id != endpoint_id {
                continue;
            }
            match self.maps.metrics.delete(&k) {
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
/// through the TCX links pinned under `pin_dir` by
/// [`Datapath::attach_endpoint`] (possibly by another process, e.g. the
/// agent): `[from_container (ingress), to_container (egress)]`. The kernel
/// counts only while the sysctl `kernel.bpf_stats_enabled` is 1; the figures
/// are cumulative, so take differences.
pub fn endpoint_run_stats(pin_dir: &Path, ifname: &str) -> Result<[ProgramRunStats; 2], BpfError> {
    crate::attach::check_ifname(ifname)?;
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
