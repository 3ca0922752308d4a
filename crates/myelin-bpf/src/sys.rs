//! The only place with `unsafe`: thin wrappers around libbpf C calls that
//! libbpf-rs 0.27 does not expose (link creation for TCX, XDP and cgroup
//! hooks, link program replacement, pinning a raw link fd, object info,
//! program load probes), and byte views of the skeleton's plain-old-data
//! types.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use libbpf_rs::libbpf_sys;

use crate::skel::types;
use crate::skel_cgskb::types as cgskb_types;
use crate::skel_lb::types as lb_types;
use crate::skel_overlay::types as overlay_types;
use crate::skel_process::types as process_types;
use crate::skel_xdp::types as xdp_types;

/// TCX hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TcxHook {
    Ingress,
    Egress,
}

impl TcxHook {
    fn attach_type(self) -> libbpf_sys::bpf_attach_type {
        match self {
            Self::Ingress => libbpf_sys::BPF_TCX_INGRESS,
            Self::Egress => libbpf_sys::BPF_TCX_EGRESS,
        }
    }
}

fn neg_errno(ret: i32) -> io::Error {
    io::Error::from_raw_os_error(ret.checked_neg().unwrap_or(libc::EINVAL))
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Create a TCX link of `prog` on `ifindex` (in the calling thread's netns),
/// appended after any existing TCX programs. Returns the link fd.
pub(crate) fn tcx_link_create(prog: BorrowedFd<'_>, ifindex: u32, hook: TcxHook) -> io::Result<OwnedFd> {
    let target = i32::try_from(ifindex).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: plain FFI call; `prog` is a valid program fd for the duration of
    // the call and NULL opts are allowed (defaults: append, no revision check).
    let ret = unsafe { libbpf_sys::bpf_link_create(prog.as_raw_fd(), target, hook.attach_type(), std::ptr::null()) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    // SAFETY: on success bpf_link_create returns a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

/// Create a BPF link of `prog` to `target` (an ifindex for XDP, a cgroup fd
/// for cgroup hooks) with attach type `attach`. Returns the link fd.
pub(crate) fn link_create(
    prog: BorrowedFd<'_>,
    target: i32,
    attach: libbpf_sys::bpf_attach_type,
) -> io::Result<OwnedFd> {
    // SAFETY: plain FFI call; `prog` is valid for the call; NULL opts = defaults.
    let ret = unsafe { libbpf_sys::bpf_link_create(prog.as_raw_fd(), target, attach, std::ptr::null()) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    // SAFETY: on success bpf_link_create returns a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

/// Replace the program of a live link atomically (BPF_LINK_UPDATE): packets
/// see the old program or the new one, the hook is never empty.
pub(crate) fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain FFI call on two valid fds; NULL opts = unconditional replace.
    let ret = unsafe { libbpf_sys::bpf_link_update(link.as_raw_fd(), prog.as_raw_fd(), std::ptr::null()) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    Ok(())
}

/// What identifies a loaded program's behaviour: its tag (a hash of its
/// instructions with map references blanked) and the ids of the maps it uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProgIdentity {
    pub id: u32,
    pub tag: [u8; 8],
    pub map_ids: Vec<u32>,
}

pub(crate) fn prog_identity(fd: BorrowedFd<'_>) -> io::Result<ProgIdentity> {
    let mut map_ids = vec![0u32; 64];
    let mut info =
        libbpf_sys::bpf_prog_info { nr_map_ids: 64, map_ids: map_ids.as_mut_ptr() as u64, ..Default::default() };
    let mut len = u32::try_from(std::mem::size_of::<libbpf_sys::bpf_prog_info>())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `info` points at `map_ids` (64 u32s, alive for the call) and
    // says so in nr_map_ids; every other array pointer is NULL.
    let ret = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    map_ids.truncate(usize::try_from(info.nr_map_ids.min(64)).unwrap_or(0));
    map_ids.sort_unstable();
    Ok(ProgIdentity { id: info.id, tag: info.tag, map_ids })
}

/// (type, key size, value size, max entries, flags, id) of a map.
pub(crate) fn map_shape(fd: BorrowedFd<'_>) -> io::Result<(u32, u32, u32, u32, u32, u32)> {
    let mut info = libbpf_sys::bpf_map_info::default();
    let mut len = u32::try_from(std::mem::size_of::<libbpf_sys::bpf_map_info>())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `info` is a zeroed bpf_map_info of `len` bytes.
    let ret = unsafe { libbpf_sys::bpf_map_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    Ok((info.type_, info.key_size, info.value_size, info.max_entries, info.map_flags, info.id))
}

/// The pin path libbpf chose for a map of an opened object (None: not pinned).
pub(crate) fn open_map_pin_path(map: &libbpf_rs::OpenMap<'_>) -> Option<std::path::PathBuf> {
    use libbpf_rs::AsRawLibbpf;
    let ptr = map.as_libbpf_object();
    // SAFETY: `ptr` is a valid bpf_map of an open object for the borrow of
    // `map`; libbpf returns NULL or a NUL-terminated string it owns.
    let path = unsafe { libbpf_sys::bpf_map__pin_path(ptr.as_ptr()) };
    if path.is_null() {
        return None;
    }
    // SAFETY: non-NULL, NUL-terminated, owned by libbpf while `map` lives.
    let c = unsafe { std::ffi::CStr::from_ptr(path) };
    Some(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(c.to_bytes())))
}

/// Pin any BPF object fd at `path` (on bpffs).
pub(crate) fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: `c` is a valid NUL-terminated string and `fd` a valid fd for the call.
    let ret = unsafe { libbpf_sys::bpf_obj_pin(fd.as_raw_fd(), c.as_ptr()) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    Ok(())
}

/// Does the kernel know TCX? Queries the TCX ingress hook of `lo`
/// (ifindex 1 in every netns): non-intrusive, nothing is attached.
pub(crate) fn tcx_query_lo() -> io::Result<()> {
    let mut opts = libbpf_sys::bpf_prog_query_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_prog_query_opts>() as libbpf_sys::size_t,
        ..Default::default()
    };
    // SAFETY: `opts` is a properly sized, zero-initialised options struct whose
    // output pointers are NULL (only counts are returned).
    let ret = unsafe { libbpf_sys::bpf_prog_query_opts(1, libbpf_sys::BPF_TCX_INGRESS, &mut opts) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    Ok(())
}

/// libbpf's program type probe: Ok(true) supported, Ok(false) not.
pub(crate) fn probe_prog_type(ty: libbpf_sys::bpf_prog_type) -> io::Result<bool> {
    // SAFETY: plain FFI call, NULL opts are required by the API.
    let ret = unsafe { libbpf_sys::libbpf_probe_bpf_prog_type(ty, std::ptr::null()) };
    probe_ret(ret)
}

/// libbpf's map type probe.
pub(crate) fn probe_map_type(ty: libbpf_sys::bpf_map_type) -> io::Result<bool> {
    // SAFETY: plain FFI call, NULL opts are required by the API.
    let ret = unsafe { libbpf_sys::libbpf_probe_bpf_map_type(ty, std::ptr::null()) };
    probe_ret(ret)
}

/// libbpf's helper probe.
pub(crate) fn probe_helper(prog: libbpf_sys::bpf_prog_type, helper: libbpf_sys::bpf_func_id) -> io::Result<bool> {
    // SAFETY: plain FFI call, NULL opts are required by the API.
    let ret = unsafe { libbpf_sys::libbpf_probe_bpf_helper(prog, helper, std::ptr::null()) };
    probe_ret(ret)
}

fn probe_ret(ret: i32) -> io::Result<bool> {
    match ret {
        1 => Ok(true),
        0 => Ok(false),
        r => Err(neg_errno(r)),
    }
}

/// Really load a trivial program (`r0 = 0; exit`) of type `prog_type` with
/// expected attach type `attach`: the kernel refuses an attach type it does
/// not know for that program type (e.g. `BPF_CGROUP_INET_SOCK_RELEASE`
/// before 5.9), which libbpf's program type probe does not check.
pub(crate) fn probe_attach_type_load(
    prog_type: libbpf_sys::bpf_prog_type,
    attach: libbpf_sys::bpf_attach_type,
) -> io::Result<()> {
    let opts = libbpf_sys::bpf_prog_load_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_prog_load_opts>() as libbpf_sys::size_t,
        expected_attach_type: attach,
        ..Default::default()
    };
    load_trivial(prog_type, opts)
}

/// Load `r0 = 0; exit` with `opts`, and close it.
fn load_trivial(prog_type: libbpf_sys::bpf_prog_type, mut opts: libbpf_sys::bpf_prog_load_opts) -> io::Result<()> {
    let insns = [
        // BPF_MOV64_IMM(BPF_REG_0, 0)
        libbpf_sys::bpf_insn { code: 0xb7, ..Default::default() },
        // BPF_EXIT_INSN()
        libbpf_sys::bpf_insn { code: 0x95, ..Default::default() },
    ];
    let license = c"GPL";
    // SAFETY: `insns` outlives the call and its length is passed; `opts` is a
    // sized, zero-initialised struct; the strings are NUL-terminated.
    let fd = unsafe {
        libbpf_sys::bpf_prog_load(
            prog_type,
            c"myelin_probe".as_ptr(),
            license.as_ptr(),
            insns.as_ptr(),
            insns.len() as libbpf_sys::size_t,
            &mut opts,
        )
    };
    if fd < 0 {
        return Err(neg_errno(fd));
    }
    // SAFETY: a successful load returns a new fd we own; dropping closes it.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

/// Ids of the programs attached to the cgroup `cgroup` (an open cgroup v2
/// directory) at `attach`, directly (not inherited from ancestors).
pub(crate) fn cgroup_prog_ids(cgroup: BorrowedFd<'_>, attach: libbpf_sys::bpf_attach_type) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut count = 64u32;
    let mut flags = 0u32;
    // SAFETY: `ids` holds `count` u32s and outlives the call; the kernel
    // writes at most `count` ids and the real count back into `count`.
    let ret =
        unsafe { libbpf_sys::bpf_prog_query(cgroup.as_raw_fd(), attach, 0, &mut flags, ids.as_mut_ptr(), &mut count) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    ids.truncate(usize::try_from(count.min(64)).unwrap_or(0));
    Ok(ids)
}

/// Really load a trivial BTF-attached program (`r0 = 0; exit`) of type
/// `prog_type` / `attach` against the vmlinux function `func`: this is what
/// kernel lockdown or a missing config refuses, unlike libbpf's type probe.
pub(crate) fn probe_btf_prog_load(
    prog_type: libbpf_sys::bpf_prog_type,
    attach: libbpf_sys::bpf_attach_type,
    func: &str,
) -> io::Result<()> {
    let name = CString::new(func).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `name` is a valid C string; libbpf parses vmlinux BTF itself.
    let btf_id = unsafe { libbpf_sys::libbpf_find_vmlinux_btf_id(name.as_ptr(), attach) };
    if btf_id < 0 {
        return Err(neg_errno(btf_id));
    }
    let opts = libbpf_sys::bpf_prog_load_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_prog_load_opts>() as libbpf_sys::size_t,
        expected_attach_type: attach,
        attach_btf_id: btf_id.unsigned_abs(),
        ..Default::default()
    };
    load_trivial(prog_type, opts)
}

/// (instructions the verifier processed, translated instructions, JITed bytes)
/// of a loaded program.
pub(crate) fn prog_sizes(fd: BorrowedFd<'_>) -> io::Result<(u32, u32, u32)> {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = u32::try_from(std::mem::size_of::<libbpf_sys::bpf_prog_info>())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `info` is a zeroed bpf_prog_info of `len` bytes; with every
    // array pointer NULL the kernel only fills in scalars.
    let ret = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    Ok((info.verified_insns, info.xlated_prog_len / 8, info.jited_prog_len))
}

/// How many more file descriptors this process may open at once while
/// keeping `reserve` free. When `needed` more do not fit, the
/// `RLIMIT_NOFILE` soft limit is first raised toward the hard limit (no
/// privilege needed; the process-wide limit stays raised).
pub(crate) fn fd_budget(needed: usize, reserve: usize) -> usize {
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 256;
    }
    let want = u64::try_from(open.saturating_add(needed).saturating_add(reserve)).unwrap_or(u64::MAX);
    if lim.rlim_cur < want && lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: want.min(lim.rlim_max), rlim_max: lim.rlim_max };
        // SAFETY: `raised` is a valid rlimit; lowering nothing, raising the
        // soft limit up to the hard limit needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = raised.rlim_cur;
        }
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX).saturating_sub(open.saturating_add(reserve))
}

/// (run_time_ns, run_cnt) of a loaded program: cumulative, counted only
/// while `kernel.bpf_stats_enabled` is 1.
pub(crate) fn prog_run_stats(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = u32::try_from(std::mem::size_of::<libbpf_sys::bpf_prog_info>())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: as in prog_sizes: a zeroed info of `len` bytes, NULL arrays.
    let ret = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    Ok((info.run_time_ns, info.run_cnt))
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if ret != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// Plain-old-data types from the skeleton that are safe to view as bytes:
/// `#[repr(C)]`, only integer fields and arrays of them, and no padding
/// (checked at compile time below against the sum of their fields).
///
/// # Safety
/// Implement only for types meeting the above; any byte pattern must be valid.
pub(crate) unsafe trait Pod: Copy + Default {}

// SAFETY: all these are #[repr(C)] structs of u8/u16/u32/u64 fields without
// padding (the asserts below fail the build if a layout grows padding).
unsafe impl Pod for types::endpoint_key {}
// SAFETY: as above.
unsafe impl Pod for types::endpoint_info {}
// SAFETY: as above.
unsafe impl Pod for types::node_config {}
// SAFETY: as above.
unsafe impl Pod for types::metrics_key {}
// SAFETY: as above.
unsafe impl Pod for types::metrics_value {}
// SAFETY: as above.
unsafe impl Pod for types::ipcache_key {}
// SAFETY: as above.
unsafe impl Pod for types::ipcache_value {}
// SAFETY: as above.
unsafe impl Pod for types::policy_key {}
// SAFETY: as above.
unsafe impl Pod for types::policy_entry {}
// SAFETY: as above.
unsafe impl Pod for types::policy_stats_key {}
// SAFETY: as above.
unsafe impl Pod for types::ct4_key {}
// SAFETY: as above.
unsafe impl Pod for types::ct4_entry {}
// SAFETY: as above.
unsafe impl Pod for types::event {}
// SAFETY: as above.
unsafe impl Pod for types::abi_meta {}
// SAFETY: as above.
unsafe impl Pod for lb_types::lb4_key {}
// SAFETY: as above.
unsafe impl Pod for lb_types::lb4_service {}
// SAFETY: as above.
unsafe impl Pod for lb_types::lb4_backend {}
// SAFETY: as above.
unsafe impl Pod for lb_types::lb4_reverse_nat {}
// SAFETY: as above.
unsafe impl Pod for xdp_types::prefilter_value {}
// SAFETY: as above.
unsafe impl Pod for overlay_types::tunnel_key {}
// SAFETY: as above.
unsafe impl Pod for overlay_types::tunnel_value {}
// SAFETY: as above.
unsafe impl Pod for overlay_types::overlay_dev {}
// SAFETY: as above.
unsafe impl Pod for xdp_types::ipcache_key {}
// SAFETY: as above.
unsafe impl Pod for process_types::process_event {}
// SAFETY: as above.
unsafe impl Pod for cgskb_types::cgroup_traffic_value {}
// SAFETY: a u32 is plain data.
unsafe impl Pod for u32 {}
// SAFETY: a u16 is plain data.
unsafe impl Pod for u16 {}
// SAFETY: a u64 is plain data.
unsafe impl Pod for u64 {}

const _: () = {
    use std::mem::size_of;
    assert!(size_of::<types::endpoint_key>() == 4);
    assert!(size_of::<types::endpoint_info>() == 4 * 4 + 6 + 6);
    assert!(size_of::<types::node_config>() == 10 * 4 + 1 + 1 + 2 + 3 * 4);
    assert!(size_of::<types::ipcache_key>() == 4 + 4);
    assert!(size_of::<types::ipcache_value>() == 4 + 4);
    assert!(size_of::<types::policy_key>() == 4 + 4 + 1 + 1 + 2);
    assert!(size_of::<types::policy_entry>() == 1 + 1 + 1 + 1 + 4);
    assert!(size_of::<types::policy_stats_key>() == 4 + 4 + 1 + 1 + 2);
    assert!(size_of::<types::ct4_key>() == 4 + 4 + 2 + 2 + 1 + 3);
    assert!(size_of::<types::ct4_entry>() == 6 * 8 + 7 * 4 + 1 + 1 + 2);
    assert!(size_of::<types::event>() == 8 + 8 + 4 + 9 * 4);
    assert!(size_of::<types::abi_meta>() == 8);
    assert!(size_of::<process_types::process_event>() == 8 + 8 + 8 * 4 + 16 + 256);
    assert!(size_of::<lb_types::lb4_key>() == 4 + 2 + 2 + 1 + 3);
    assert!(size_of::<lb_types::lb4_service>() == 4 + 2 + 2 + 4);
    assert!(size_of::<lb_types::lb4_backend>() == 4 + 2 + 1 + 1);
    assert!(size_of::<lb_types::lb4_reverse_nat>() == 4 + 2 + 2);
    assert!(size_of::<xdp_types::prefilter_value>() == 16);
    assert!(size_of::<cgskb_types::cgroup_traffic_value>() == 4 * 8);
    assert!(size_of::<types::metrics_key>() == 4 + 1 + 1 + 2);
    assert!(size_of::<types::metrics_value>() == 8 + 8);
};

/// View a POD value as its bytes (host byte order, exactly as the kernel sees it).
pub(crate) fn as_bytes<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: T: Pod has no padding, so every byte is initialised; the slice
    // borrows `v` and covers exactly size_of::<T>() bytes.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// Read a POD value from bytes; None if the length differs.
pub(crate) fn from_bytes<T: Pod>(b: &[u8]) -> Option<T> {
    if b.len() != std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; any byte pattern is a valid T (Pod); the read is
    // unaligned-safe.
    Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}

/// Run `prog` on `data` `repeat` times in the kernel (BPF_PROG_TEST_RUN, no
/// context). Returns the program's return value and the kernel's average
/// run time in ns.
pub(crate) fn prog_test_run(prog: BorrowedFd<'_>, data: &[u8], repeat: u32) -> io::Result<(u32, u32)> {
    let mut out = vec![0u8; data.len() + 256];
    let mut opts = libbpf_sys::bpf_test_run_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as libbpf_sys::size_t,
        data_in: data.as_ptr().cast(),
        data_size_in: u32::try_from(data.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        data_out: out.as_mut_ptr().cast(),
        data_size_out: u32::try_from(out.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        repeat: i32::try_from(repeat).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        ..Default::default()
    };
    // SAFETY: `opts` points at `data` and `out`, both alive and of the sizes
    // given, for the duration of the call; the kernel writes at most
    // `data_size_out` bytes into `out`.
    let ret = unsafe { libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    Ok((opts.retval, opts.duration))
}

/// Open a perf event for the tracepoint with id `id` (from tracefs
/// `events/<category>/<name>/id`) on CPU 0 for all processes: what a
/// BPF_PERF_EVENT link attaches a tracepoint program to (the program then
/// runs on every CPU).
pub(crate) fn perf_event_open_tracepoint(id: u64) -> io::Result<OwnedFd> {
    let mut attr = libbpf_sys::perf_event_attr {
        type_: libbpf_sys::PERF_TYPE_TRACEPOINT,
        size: u32::try_from(std::mem::size_of::<libbpf_sys::perf_event_attr>())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        config: id,
        ..Default::default()
    };
    attr.__bindgen_anon_1.sample_period = 1;
    attr.__bindgen_anon_2.wakeup_events = 1;
    // SAFETY: perf_event_open(2) reads `attr` (alive, of the size given in
    // attr.size) and returns a new fd or -1.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            std::ptr::addr_of!(attr),
            -1 as libc::pid_t,
            0 as libc::c_int,
            -1 as libc::c_int,
            libc::c_ulong::from(libbpf_sys::PERF_FLAG_FD_CLOEXEC),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: on success perf_event_open returns a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Return the C allocator's free pages to the kernel (`malloc_trim(0)`: every glibc arena, whole
/// free pages anywhere in them). For processes whose RSS would otherwise stay at the
/// high-water mark of a large transient allocation (a big policy parsed and compiled).
/// Milliseconds on a heap of ~100 MiB; a no-op on other C libraries.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointers; it only hands free arena pages back to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Make the C allocator use one arena for all threads (`mallopt(M_ARENA_MAX, 1)`); call it
/// first thing in `main`, before any thread starts. glibc gives each allocating thread an
/// arena of its own, and a page freed in one arena cannot serve another: in the agent (API
/// workers, policy, endpoints, GC, flow ingest, history, metrics) the transient megabytes of a
/// large policy apply stayed spread over arenas. Measured in a lab, RSS after applying a
/// 10,000-rule policy and then a 1-rule one, flipped three times: 90–93 MiB with glibc's
/// default arenas, 54 MiB with one (and 80 MiB with the 10,000 rules in force either way).
/// Thread caches (tcache) still serve small allocations without the arena lock. Returns false
/// when the C library refused (or is not glibc).
#[must_use]
pub fn use_one_allocator_arena() -> bool {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt takes two integers; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1) == 1
    }
    #[cfg(not(target_env = "gnu"))]
    false
}
