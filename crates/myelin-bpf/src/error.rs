//! Errors of the loader. Each says what was being done, on what, and what to do.

use std::path::PathBuf;

/// Everything that can go wrong while loading, plumbing or reading the datapath.
#[derive(thiserror::Error, Debug)]
pub enum BpfError {
    /// bpffs could not be checked or mounted.
    #[error("mounting bpffs at {path}: {source} (run as root, or mount it yourself: `mount -t bpf bpffs {path}`)", path = path.display())]
    Bpffs {
        /// Where bpffs was expected.
        path: PathBuf,
        /// The failing system call.
        source: std::io::Error,
    },

    /// A pin directory (or a file in it) could not be created, read or removed.
    #[error("{action} {path}: {source} (is {path} on a bpffs mount? call ensure_bpffs first)", path = path.display())]
    PinDir {
        /// What was being done ("creating", "removing", ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The failing system call.
        source: std::io::Error,
    },

    /// Opening or loading an eBPF object failed (verifier, pinned map mismatch, missing privileges).
    #[error("loading the {object} programs with maps pinned under {pin_dir}: {source} \
             (run as root; the verifier log is on stderr)",
             pin_dir = pin_dir.display())]
    Load {
        /// The pin directory used for the maps.
        pin_dir: PathBuf,
        /// The object (lxc, netdev, xdp, sock).
        object: &'static str,
        /// libbpf's error.
        source: libbpf_rs::Error,
    },

    /// A map operation failed.
    #[error("{op} in map `{map}`: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// What was being done, with the key.
        op: String,
        /// libbpf's error.
        source: libbpf_rs::Error,
    },

    /// A map returned a value whose size does not match the ABI of this build.
    #[error("map `{map}` holds {got}-byte values, this build expects {expected}: the pinned map comes from another build; remove the pin directory and reload")]
    Layout {
        /// Map name.
        map: &'static str,
        /// Size found.
        got: usize,
        /// Size expected.
        expected: usize,
    },

    /// Attaching a program to an interface (or a cgroup) failed.
    #[error(
        "attaching {prog} at {mode} {hook} of {ifname} (ifindex {ifindex}): {source} \
             (does {ifname} exist in this thread's network namespace? TCX needs kernel >= 6.6; \
             set the attach mode to tc on older kernels)"
    )]
    Attach {
        /// Program name.
        prog: &'static str,
        /// "ingress", "egress", "xdp", "cgroup", "link update".
        hook: &'static str,
        /// "tcx", "tc" or "link".
        mode: &'static str,
        /// Interface name (or cgroup path).
        ifname: String,
        /// Interface index (0 for cgroups).
        ifindex: u32,
        /// The failing system call.
        source: std::io::Error,
    },

    /// Pinning a link failed.
    #[error("pinning the link of {ifname} at {path}: {source}", path = path.display())]
    PinLink {
        /// Interface name.
        ifname: String,
        /// Pin path.
        path: PathBuf,
        /// The failing system call.
        source: std::io::Error,
    },

    /// An argument was out of range.
    #[error("invalid argument: {0}")]
    Invalid(String),
}
