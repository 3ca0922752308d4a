//! Loading many objects into one per-node pin directory, and noticing what
//! an upgrade changed.
//!
//! Every object is opened with the node's pin directory as its pin root, so
//! maps pinned by name are shared between objects and reused across agent
//! restarts. Before an object loads, each of its pinned maps is compared with
//! what is pinned already (type, key and value size, max entries, flags): a
//! map whose layout changed (an upgrade) is moved aside to
//! `<pin_dir>/migrate/<name>` while the old programs keep using it, the new
//! object creates and pins the new map, and [`crate::migrate`] copies (and
//! converts) the entries. The old maps go away once the links run the new
//! programs ([`crate::Datapath::activate`]).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use libbpf_rs::{MapCore, MapFlags, MapHandle, Object, ObjectBuilder};

use crate::objects::ObjectSpec;
use crate::{sys, BpfError};

/// The ABI of this build (`MYELIN_ABI_VERSION` in bpf/include/myelin_abi.h).
#[must_use]
pub fn abi_version() -> u32 {
    env!("MYELIN_ABI_VERSION").parse().unwrap_or(0)
}

/// The layout of a map as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MapShape {
    /// `BPF_MAP_TYPE_*`.
    pub map_type: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Capacity.
    pub max_entries: u32,
    /// Creation flags.
    pub flags: u32,
}

/// A map of an object being opened that is pinned already: its pin, the layout the object
/// declares and the layout of the pinned map.
pub(crate) struct PinnedMap {
    pub name: String,
    pub pin: PathBuf,
    pub want: MapShape,
    pub have: MapShape,
    pub handle: MapHandle,
}

/// The pinned map `map` would reuse (None: not pinned, or nothing pinned at its path yet).
/// `what` names the map in errors.
pub(crate) fn pinned_map(map: &libbpf_rs::OpenMap<'_>, what: &'static str) -> Result<Option<PinnedMap>, BpfError> {
    let Some(pin) = sys::open_map_pin_path(map) else { return Ok(None) };
    if !pin.exists() {
        return Ok(None);
    }
    let want = MapShape {
        map_type: map.map_type() as u32,
        key_size: map.key_size(),
        value_size: map.value_size(),
        max_entries: map.max_entries(),
        flags: map.map_flags(),
    };
    let handle = MapHandle::from_pinned_path(&pin).map_err(|source| BpfError::Map {
        map: what,
        op: format!("opening {}", pin.display()),
        source,
    })?;
    let (have, _) = MapShape::of(&handle).map_err(|source| BpfError::PinDir {
        action: "reading the layout of",
        path: pin.clone(),
        source,
    })?;
    Ok(Some(PinnedMap { name: map.name().to_string_lossy().into_owned(), pin, want, have, handle }))
}

impl MapShape {
    pub(crate) fn of(map: &impl AsFd) -> Result<(Self, u32), std::io::Error> {
        let (map_type, key_size, value_size, max_entries, flags, id) = sys::map_shape(map.as_fd())?;
        Ok((Self { map_type, key_size, value_size, max_entries, flags }, id))
    }
}

impl std::fmt::Display for MapShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {} key {} B value {} B max {} flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

/// A pinned map whose layout changed, moved aside for migration.
#[derive(Clone, Debug)]
pub(crate) struct Moved {
    pub name: String,
    pub old_path: PathBuf,
}

pub(crate) struct Loaded {
    pub objects: Vec<(&'static ObjectSpec, Object)>,
    /// The ABI recorded in the pin directory before this load (None: fresh).
    pub previous_abi: Option<u32>,
    pub moved: Vec<Moved>,
}

fn load_err(pin_dir: &Path, object: &'static str) -> impl FnOnce(libbpf_rs::Error) -> BpfError {
    let pin_dir = pin_dir.to_path_buf();
    move |source| BpfError::Load { pin_dir, object, source }
}

/// The directory where maps of an upgrade in progress wait.
pub(crate) fn migrate_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("migrate")
}

fn read_abi(pin_dir: &Path) -> Result<Option<u32>, BpfError> {
    let meta = pin_dir.join("abi_meta");
    if meta.exists() {
        let m = MapHandle::from_pinned_path(&meta).map_err(|source| BpfError::Map {
            map: "abi_meta",
            op: "opening the pinned map".into(),
            source,
        })?;
        let v = m
            .lookup(sys::as_bytes(&0u32), MapFlags::ANY)
            .map_err(|source| BpfError::Map { map: "abi_meta", op: "reading entry 0".into(), source })?
            .and_then(|b| b.get(..4).map(|v| u32::from_ne_bytes([v[0], v[1], v[2], v[3]])));
        return Ok(v.filter(|v| *v != 0));
    }
    // Maps pinned by a datapath older than the ABI record: version 1.
    Ok(pin_dir.join("endpoints").exists().then_some(1))
}

/// Open, check against the pins, and load `specs` (in order) into `pin_dir`;
/// the programs named in `skip` are left out (not loaded, the rest of their
/// object is).
pub(crate) fn load(pin_dir: &Path, specs: &[&'static ObjectSpec], skip: &[&str]) -> Result<Loaded, BpfError> {
    let previous_abi = read_abi(pin_dir)?;
    let migrate = migrate_dir(pin_dir);
    let mut moved: Vec<Moved> = Vec::new();
    let mut objects = Vec::new();
    for spec in specs {
        let mut builder = ObjectBuilder::default();
        builder.pin_root_path(pin_dir).map_err(load_err(pin_dir, spec.name))?;
        let mut open = builder.open_memory(spec.bytes).map_err(load_err(pin_dir, spec.name))?;
        for mut prog in open.progs_mut() {
            if skip.iter().any(|n| prog.name() == *n) {
                prog.set_autoload(false);
            }
        }
        for map in open.maps() {
            let Some(PinnedMap { name, pin, want, have, handle }) = pinned_map(&map, "pinned map")? else { continue };
            drop(handle);
            // The ring buffer's size is rounded by the kernel; compare what matters.
            let same = if want.map_type == 27 {
                have.map_type == 27 && have.max_entries == want.max_entries
            } else {
                have == want
            };
            if same {
                continue;
            }
            std::fs::create_dir_all(&migrate).map_err(|source| BpfError::PinDir {
                action: "creating",
                path: migrate.clone(),
                source,
            })?;
            let old_path = migrate.join(&name);
            if old_path.exists() {
                // An upgrade was interrupted after moving the old map: the
                // old data waits there already; what is pinned now is a
                // half-filled new map. Start it over.
                std::fs::remove_file(&pin).map_err(|source| BpfError::PinDir {
                    action: "removing",
                    path: pin.clone(),
                    source,
                })?;
            } else {
                std::fs::rename(&pin, &old_path).map_err(|source| BpfError::PinDir {
                    action: "moving aside",
                    path: pin.clone(),
                    source,
                })?;
            }
            moved.push(Moved { name, old_path });
        }
        let obj = open.load().map_err(load_err(pin_dir, spec.name))?;
        objects.push((*spec, obj));
    }
    // Maps moved aside by an interrupted earlier upgrade whose new map is
    // compatible by now still need their entries copied.
    if let Ok(rd) = std::fs::read_dir(&migrate) {
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if moved.iter().any(|m| m.name == name) {
                continue;
            }
            moved.push(Moved { name, old_path: e.path() });
        }
    }
    Ok(Loaded { objects, previous_abi, moved })
}

/// Record this build's ABI in the pin directory's `abi_meta`.
pub(crate) fn write_abi(abi_meta: &MapHandle) -> Result<(), BpfError> {
    let mut v = [0u8; 8];
    v[..4].copy_from_slice(&abi_version().to_ne_bytes());
    abi_meta.update(sys::as_bytes(&0u32), &v, MapFlags::ANY).map_err(|source| BpfError::Map {
        map: "abi_meta",
        op: "writing the ABI version".into(),
        source,
    })
}
