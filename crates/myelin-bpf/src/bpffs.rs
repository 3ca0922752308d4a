//! bpffs mounting and pin directory removal.

use std::io;
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::statfs::statfs;

use crate::BpfError;

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> Result<bool, nix::Error> {
    let st = statfs(path)?;
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    let magic = st.filesystem_type().0 as i64;
    Ok(magic == BPF_FS_MAGIC)
}

/// Make sure `root` (normally `/sys/fs/bpf`) is a bpffs mount: create the
/// directory if needed and mount bpffs there unless it (or a bpffs it lies
/// in) is mounted already. Idempotent.
pub fn ensure_bpffs(root: &Path) -> Result<(), BpfError> {
    std::fs::create_dir_all(root).map_err(|source| BpfError::PinDir {
        action: "creating",
        path: root.to_path_buf(),
        source,
    })?;
    let err = |e: nix::Error| BpfError::Bpffs { path: root.to_path_buf(), source: io::Error::from(e) };
    if is_bpffs(root).map_err(err)? {
        return Ok(());
    }
    mount(Some("bpffs"), root, Some("bpf"), MsFlags::empty(), Some("mode=0700")).map_err(err)?;
    if !is_bpffs(root).map_err(err)? {
        return Err(BpfError::Bpffs {
            path: root.to_path_buf(),
            source: io::Error::other("mounted, but statfs does not report bpffs"),
        });
    }
    Ok(())
}

/// Remove a whole pin directory tree (maps, link pins), e.g. for `lab down`
/// and tests. Removing a link pin detaches the link when nothing else holds
/// it; removing a map pin frees the map once no program uses it. Ok if absent.
pub fn remove_pin_dir(pin_dir: &Path) -> Result<(), BpfError> {
    match std::fs::remove_dir_all(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BpfError::PinDir { action: "removing", path: pin_dir.to_path_buf(), source }),
    }
}

/// `TRACEFS_MAGIC` from linux/magic.h.
const TRACEFS_MAGIC: i64 = 0x7472_6163;

/// The id of tracepoint `category/name`, from tracefs. Mounts tracefs at
/// `/sys/kernel/tracing` when no tracefs is mounted there or under debugfs.
pub(crate) fn tracepoint_id(category: &str, name: &str) -> Result<u64, BpfError> {
    let rel = format!("events/{category}/{name}/id");
    let roots = [Path::new("/sys/kernel/tracing"), Path::new("/sys/kernel/debug/tracing")];
    let read = |root: &Path| std::fs::read_to_string(root.join(&rel)).ok();
    let text = match roots.iter().find_map(|r| read(r)) {
        Some(t) => t,
        None => {
            let root = roots[0];
            #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
            let mounted = statfs(root).is_ok_and(|st| st.filesystem_type().0 as i64 == TRACEFS_MAGIC);
            if !mounted {
                mount(Some("tracefs"), root, Some("tracefs"), MsFlags::empty(), None::<&str>)
                    .map_err(|e| BpfError::Invalid(format!("mounting tracefs at {}: {e}", root.display())))?;
            }
            read(root).ok_or_else(|| {
                BpfError::Invalid(format!("tracepoint {category}/{name}: {} not found", root.join(&rel).display()))
            })?
        }
    };
    text.trim().parse().map_err(|e| BpfError::Invalid(format!("tracepoint {category}/{name}: id {text:?}: {e}")))
}
