//! Helpers for tests of other builds' datapaths (upgrade tests): load an
//! object as the agent of that build did, and plumb it the way it did.
//! Not for production use.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use libbpf_rs::{MapCore, MapFlags, MapHandle, Object};

use crate::loader::MapShape;
use crate::objects::{Hook, ObjectSpec, ProgramSpec, TcDir};
use crate::sys::{self, TcxHook};
use crate::BpfError;

pub use crate::objects::testing::LXC_ABI_V1;

/// An object loaded with its maps pinned in a pin directory, as an older
/// agent left it.
pub struct LegacyDatapath {
    pin_dir: PathBuf,
    spec: &'static ObjectSpec,
    obj: Object,
}

impl std::fmt::Debug for LegacyDatapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyDatapath").field("pin_dir", &self.pin_dir).field("object", &self.spec.name).finish()
    }
}

/// A map that [`LegacyDatapath::load_over`] replaced by one of the older layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replaced {
    /// Map name (and pin name).
    pub map: String,
    /// Its layout as this build's datapath made it.
    pub from: MapShape,
    /// Its layout as the older object declares it.
    pub to: MapShape,
    /// Entries carried over.
    pub copied: usize,
    /// Entries the converter left out (or the new map refused).
    pub left_out: usize,
}

/// Converts one entry of a map of this build's layout to the older one: (map name, key, value) ->
/// the older value, or None to leave the entry out.
pub type Downgrade<'a> = &'a dyn Fn(&str, &[u8], &[u8]) -> Option<Vec<u8>>;

impl LegacyDatapath {
    /// Load `spec` (an older build's object) into a pin directory that a newer datapath made, as
    /// if the older build had made it. Every pinned map whose layout `spec` declares differently
    /// is unpinned (programs still attached keep using it) and replaced by a map of the older
    /// layout, pinned under the same name, holding the old map's entries as `convert` turns them
    /// (the key is kept; only plain maps: a per-CPU, map-in-map or ring buffer map whose layout
    /// differs, or whose key size differs, is an error). Maps of the same layout are reused as
    /// they are, with their contents, as the older build would have reused them.
    pub fn load_over(
        pin_dir: &Path,
        spec: &'static ObjectSpec,
        convert: Downgrade<'_>,
    ) -> Result<(Self, Vec<Replaced>), BpfError> {
        let err = |source| BpfError::Load { pin_dir: pin_dir.to_path_buf(), object: spec.name, source };
        let mut b = libbpf_rs::ObjectBuilder::default();
        b.pin_root_path(pin_dir).map_err(err)?;
        let open = b.open_memory(spec.bytes).map_err(err)?;
        let mut old_maps: Vec<(String, MapHandle, MapShape, MapShape)> = Vec::new();
        for map in open.maps() {
            let Some(crate::loader::PinnedMap { name, pin, want, have, handle: old }) =
                crate::loader::pinned_map(&map, "legacy")?
            else {
                continue;
            };
            if have == want {
                continue;
            }
            // Hash, array, LRU hash, LPM trie: values read and written whole.
            if ![1, 2, 9, 11].contains(&have.map_type)
                || have.map_type != want.map_type
                || have.key_size != want.key_size
            {
                return Err(BpfError::Invalid(format!(
                    "map {name}: cannot turn {have} into {want} (only plain maps with the same key)"
                )));
            }
            std::fs::remove_file(&pin).map_err(|source| BpfError::PinDir {
                action: "unpinning",
                path: pin.clone(),
                source,
            })?;
            old_maps.push((name, old, have, want));
        }
        let obj = open.load().map_err(err)?;
        let me = Self { pin_dir: pin_dir.to_path_buf(), spec, obj };
        let mut replaced = Vec::new();
        for (name, old, from, to) in old_maps {
            let new = me.map(&name)?;
            let mut r = Replaced { map: name.clone(), from, to, copied: 0, left_out: 0 };
            let keys: Vec<Vec<u8>> = old.keys().collect();
            for k in keys {
                let Some(v) = old.lookup(&k, MapFlags::ANY).map_err(|source| BpfError::Map {
                    map: "legacy",
                    op: format!("reading {name}"),
                    source,
                })?
                else {
                    continue;
                };
                match convert(&name, &k, &v) {
                    Some(v) if new.update(&k, &v, MapFlags::ANY).is_ok() => r.copied += 1,
                    _ => r.left_out += 1,
                }
            }
            replaced.push(r);
        }
        Ok((me, replaced))
    }

    /// Load `spec` into `pin_dir` (maps pinned by name).
    pub fn load(pin_dir: &Path, spec: &'static ObjectSpec) -> Result<Self, BpfError> {
        std::fs::create_dir_all(pin_dir.join("links")).map_err(|source| BpfError::PinDir {
            action: "creating",
            path: pin_dir.join("links"),
            source,
        })?;
        let mut b = libbpf_rs::ObjectBuilder::default();
        let err = |source| BpfError::Load { pin_dir: pin_dir.to_path_buf(), object: spec.name, source };
        b.pin_root_path(pin_dir).map_err(err)?;
        let obj = b.open_memory(spec.bytes).map_err(err)?.load().map_err(err)?;
        Ok(Self { pin_dir: pin_dir.to_path_buf(), spec, obj })
    }

    /// A map of the object, by name.
    pub fn map(&self, name: &str) -> Result<MapHandle, BpfError> {
        let m = self
            .obj
            .maps()
            .find(|m| m.name() == name)
            .ok_or_else(|| BpfError::Invalid(format!("{} has no map {name}", self.spec.name)))?;
        MapHandle::try_from(&m).map_err(|source| BpfError::Map { map: "legacy", op: format!("dup {name}"), source })
    }

    /// Write raw bytes under a raw key.
    pub fn write(&self, map: &str, key: &[u8], value: &[u8]) -> Result<(), BpfError> {
        self.map(map)?.update(key, value, MapFlags::ANY).map_err(|source| BpfError::Map {
            map: "legacy",
            op: format!("writing {map}"),
            source,
        })
    }

    /// The names of the object's maps that are pinned in the pin directory.
    #[must_use]
    pub fn pinned_maps(&self) -> Vec<String> {
        self.obj.maps().filter(|m| m.is_pinned()).map(|m| m.name().to_string_lossy().into_owned()).collect()
    }

    /// The kernel id of a program of the object, by name.
    #[must_use]
    pub fn prog_id(&self, name: &str) -> Option<u32> {
        self.obj.progs().find(|p| p.name() == name).and_then(|p| libbpf_rs::Program::id_from_fd(p.as_fd()).ok())
    }

    /// Replace the programs of the pod veth links pinned at `links/<ifname>/ingress|egress` (by
    /// whichever build) with this object's, atomically (BPF_LINK_UPDATE, as
    /// [`crate::Datapath::activate`] does the other way): the hooks are never empty. Returns the
    /// number of links updated.
    pub fn update_endpoint_links(&self, ifname: &str) -> Result<usize, BpfError> {
        let dir = self.pin_dir.join("links").join(ifname);
        let mut n = 0;
        for (p, _, leaf, prog) in self.pod_programs()? {
            let path = dir.join(leaf);
            let link = libbpf_rs::Link::open(&path)
                .map_err(|e| BpfError::Invalid(format!("opening the pinned link {}: {e}", path.display())))?;
            sys::link_update(link.as_fd(), prog.as_fd()).map_err(|source| BpfError::Attach {
                prog: p.name,
                hook: "link update",
                mode: "link",
                ifname: ifname.to_string(),
                ifindex: 0,
                source,
            })?;
            n += 1;
        }
        Ok(n)
    }

    /// The pod veth programs: spec, TCX hook, link pin leaf (`ingress`/`egress`) and program.
    #[allow(clippy::type_complexity)]
    fn pod_programs(
        &self,
    ) -> Result<Vec<(&'static ProgramSpec, TcxHook, &'static str, libbpf_rs::Program<'_>)>, BpfError> {
        let mut out = Vec::new();
        for p in self.spec.programs {
            let (hook, leaf) = match p.hook {
                Hook::PodVeth(TcDir::Ingress) => (TcxHook::Ingress, "ingress"),
                Hook::PodVeth(TcDir::Egress) => (TcxHook::Egress, "egress"),
                _ => continue,
            };
            let prog = self
                .obj
                .progs()
                .find(|x| x.name() == p.name)
                .ok_or_else(|| BpfError::Invalid(format!("no program {}", p.name)))?;
            out.push((p, hook, leaf, prog));
        }
        Ok(out)
    }

    /// Attach the pod veth programs with TCX links pinned at
    /// `links/<ifname>/ingress|egress`, as every ABI so far did.
    pub fn attach_endpoint(&self, ifname: &str, ifindex: u32) -> Result<(), BpfError> {
        let dir = self.pin_dir.join("links").join(ifname);
        std::fs::create_dir_all(&dir).map_err(|source| BpfError::PinDir {
            action: "creating",
            path: dir.clone(),
            source,
        })?;
        for (p, hook, leaf, prog) in self.pod_programs()? {
            let link = sys::tcx_link_create(prog.as_fd(), ifindex, hook).map_err(|source| BpfError::Attach {
                prog: p.name,
                hook: leaf,
                mode: "tcx",
                ifname: ifname.to_string(),
                ifindex,
                source,
            })?;
            sys::obj_pin(link.as_fd(), &dir.join(leaf)).map_err(|source| BpfError::PinLink {
                ifname: ifname.to_string(),
                path: dir.join(leaf),
                source,
            })?;
        }
        Ok(())
    }
}

/// The id of the program a pinned link runs.
pub fn link_prog_id(path: &Path) -> Result<u32, BpfError> {
    let link = libbpf_rs::Link::open(path).map_err(|e| BpfError::Invalid(format!("{}: {e}", path.display())))?;
    Ok(link.info().map_err(|e| BpfError::Invalid(format!("{}: {e}", path.display())))?.prog_id)
}

/// The id of a pinned link itself: it stays the same when the link's program is replaced
/// (BPF_LINK_UPDATE), and changes when the link is replaced by another.
pub fn link_id(path: &Path) -> Result<u32, BpfError> {
    let link = libbpf_rs::Link::open(path).map_err(|e| BpfError::Invalid(format!("{}: {e}", path.display())))?;
    Ok(link.info().map_err(|e| BpfError::Invalid(format!("{}: {e}", path.display())))?.id)
}

/// The id of a loaded program of `dp`, by name.
pub fn prog_id(dp: &crate::Datapath, name: &str) -> Option<u32> {
    dp.progs.iter().find(|(n, _, _)| *n == name).and_then(|(_, _, p)| libbpf_rs::Program::id_from_fd(p.as_fd()).ok())
}

/// Run the loaded program `name` of `dp` on the packet `data` (an Ethernet
/// frame), `repeat` times, in the kernel (BPF_PROG_TEST_RUN on the loopback
/// device). Every run has the program's full effect on maps and the event
/// ring: benchmarks use it as a real event source. Returns the program's
/// return value and its average run time in ns.
pub fn run_program(dp: &crate::Datapath, name: &str, data: &[u8], repeat: u32) -> Result<(u32, u32), BpfError> {
    let (_, _, prog) = dp
        .progs
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| BpfError::Invalid(format!("no loaded program named {name}")))?;
    sys::prog_test_run(prog.as_fd(), data, repeat).map_err(|e| BpfError::Invalid(format!("test run of {name}: {e}")))
}

/// Ids of the programs attached directly to the cgroup (v2) directory
/// `cgroup` at `hook`, whoever attached them (to tell one attachment from two).
pub fn cgroup_prog_ids(cgroup: &Path, hook: crate::objects::CgroupHook) -> Result<Vec<u32>, BpfError> {
    crate::attach::cgroup_prog_ids(cgroup, hook)
}
