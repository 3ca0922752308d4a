//! Helpers for tests of other builds' datapaths (upgrade tests): load an
//! object as the agent of that build did, and plumb it the way it did.
//! Not for production use.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use libbpf_rs::{MapCore, MapFlags, MapHandle, Object};

use crate::objects::{Hook, ObjectSpec, TcDir};
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

impl LegacyDatapath {
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

    /// Attach the pod veth programs with TCX links pinned at
    /// `links/<ifname>/ingress|egress`, as every ABI so far did.
    pub fn attach_endpoint(&self, ifname: &str, ifindex: u32) -> Result<(), BpfError> {
        let dir = self.pin_dir.join("links").join(ifname);
        std::fs::create_dir_all(&dir).map_err(|source| BpfError::PinDir {
            action: "creating",
            path: dir.clone(),
            source,
        })?;
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
