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
