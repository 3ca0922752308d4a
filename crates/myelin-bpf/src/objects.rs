//! The eBPF objects Myelin loads, and where each of their programs attaches.
//!
//! One object per attach point, each compiled by build.rs from
//! `bpf/datapath/<name>.bpf.c` (with its own skeleton for the types). Maps
//! are shared between objects by pinning: two objects that declare the same
//! map (through the same `lib/*.h`) use one map in the node's pin directory.
//!
//! | object   | program            | hook                                  | needs (probe)     |
//! |----------|--------------------|---------------------------------------|-------------------|
//! | lxc      | from_container     | tc ingress of each pod's host veth    | tcx or tc         |
//! |          | to_container       | tc egress of each pod's host veth     |                   |
//! | netdev   | from_netdev        | tc ingress of the node's uplink       | tcx or tc         |
//! |          | to_netdev          | tc egress of the node's uplink        |                   |
//! | xdp      | prefilter          | XDP on the node's uplink              | xdp               |
//! | sock     | sock4_connect, ... | cgroup sock_addr hooks of the pods' cgroup | cgroup_sock_addr |
//! |          | sock_release       | cgroup/sock_release of the pods' cgroup | cgroup_sock_release (this program only) |
//! |          | sock4_post_bind    | cgroup/post_bind4 of the pods' cgroup | cgroup_post_bind4 (this program only) |
//! | cgroup_skb | traffic_ingress  | cgroup_skb/ingress of the pods' cgroup | cgroup_skb       |
//! |          | traffic_egress     | cgroup_skb/egress of the pods' cgroup |                   |
//! | process  | process_exec       | tp_btf sched_process_exec             | tp_btf + tracepoint |
//! |          | process_exit       | tracepoint sched/sched_process_exit   |                   |

/// Direction of a tc hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcDir {
    /// Packets arriving on the device.
    Ingress,
    /// Packets leaving through the device.
    Egress,
}

/// A cgroup hook: sock_addr (`BPF_PROG_TYPE_CGROUP_SOCK_ADDR`), sock
/// (`BPF_PROG_TYPE_CGROUP_SOCK`) or skb (`BPF_PROG_TYPE_CGROUP_SKB`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CgroupHook {
    /// `connect()` of IPv4 sockets.
    Connect4,
    /// `sendmsg()`/`sendto()` of unconnected IPv4 UDP sockets.
    Sendmsg4,
    /// `recvmsg()` of IPv4 UDP sockets.
    Recvmsg4,
    /// `getpeername()` of IPv4 sockets.
    Getpeername4,
    /// A socket is released (`cgroup/sock_release`, kernel >= 5.9).
    SockRelease,
    /// After `bind()` of an IPv4 socket (`cgroup/post_bind4`); returning 0 fails the bind with EPERM.
    PostBind4,
    /// Packets received by sockets (`cgroup_skb/ingress`).
    SkbIngress,
    /// Packets sent by sockets (`cgroup_skb/egress`).
    SkbEgress,
}

/// Where a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// tc on the host side of a pod's veth.
    PodVeth(TcDir),
    /// tc on the node's uplink.
    Uplink(TcDir),
    /// XDP on the node's uplink.
    UplinkXdp,
    /// tc on the node's tunnel device (VXLAN or Geneve, collect-metadata mode).
    Tunnel(TcDir),
    /// A cgroup hook on the cgroup holding the node's pods.
    Cgroup(CgroupHook),
    /// A BTF-typed raw tracepoint (`tp_btf/<name>`), host-wide.
    TpBtf(&'static str),
    /// A classic tracepoint (`tracepoint/<category>/<name>`, through a perf
    /// event), host-wide.
    Tracepoint(&'static str, &'static str),
}

impl Hook {
    /// Whether the hook is host-wide tracing (attached once per node, not per device).
    #[must_use]
    pub fn is_tracing(self) -> bool {
        matches!(self, Self::TpBtf(_) | Self::Tracepoint(..))
    }
}

/// One program of an object.
#[derive(Debug)]
pub struct ProgramSpec {
    /// The C function name (also the program's name in the kernel).
    pub name: &'static str,
    /// Where it attaches.
    pub hook: Hook,
    /// Feature probes (see [`crate::probe_features`]) that must all be
    /// available for this program to load (its attach type may be newer
    /// than its object's program type); without them the rest of the
    /// object still loads and the program is reported unavailable.
    pub requires: &'static [&'static str],
}

/// One eBPF object: its ELF bytes and its programs.
pub struct ObjectSpec {
    /// Short name (`lxc`, `netdev`, `xdp`, `sock`).
    pub name: &'static str,
    pub(crate) bytes: &'static [u8],
    /// Its programs.
    pub programs: &'static [ProgramSpec],
    /// Feature probes (see [`crate::probe_features`]) of which at least one
    /// must be available for the object to load.
    pub requires_any: &'static [&'static str],
    /// Feature probes that must all be available for the object to load.
    pub requires_all: &'static [&'static str],
}

impl std::fmt::Debug for ObjectSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectSpec").field("name", &self.name).field("programs", &self.programs).finish_non_exhaustive()
    }
}

/// ELF bytes aligned for libelf (include_bytes! gives no alignment).
#[repr(C, align(8))]
pub(crate) struct Aligned<B: ?Sized>(pub(crate) B);

macro_rules! object_bytes {
    ($name:literal) => {{
        static BYTES: &$crate::objects::Aligned<[u8]> =
            &$crate::objects::Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".bpf.o")));
        &BYTES.0
    }};
}

/// The pod veth programs.
pub static LXC: ObjectSpec = ObjectSpec {
    name: "lxc",
    bytes: object_bytes!("lxc"),
    programs: &[
        ProgramSpec { name: "from_container", hook: Hook::PodVeth(TcDir::Ingress), requires: &[] },
        ProgramSpec { name: "to_container", hook: Hook::PodVeth(TcDir::Egress), requires: &[] },
    ],
    requires_any: &["tcx", "tc"],
    requires_all: &[],
};

/// The uplink tc programs.
pub static NETDEV: ObjectSpec = ObjectSpec {
    name: "netdev",
    bytes: object_bytes!("netdev"),
    programs: &[
        ProgramSpec { name: "from_netdev", hook: Hook::Uplink(TcDir::Ingress), requires: &[] },
        ProgramSpec { name: "to_netdev", hook: Hook::Uplink(TcDir::Egress), requires: &[] },
    ],
    requires_any: &["tcx", "tc"],
    requires_all: &[],
};

/// The overlay: tc programs on the node's tunnel device (the sender's identity rides in the VNI).
pub static OVERLAY: ObjectSpec = ObjectSpec {
    name: "overlay",
    bytes: object_bytes!("overlay"),
    programs: &[
        ProgramSpec { name: "from_overlay", hook: Hook::Tunnel(TcDir::Ingress), requires: &[] },
        ProgramSpec { name: "to_overlay", hook: Hook::Tunnel(TcDir::Egress), requires: &[] },
    ],
    requires_any: &["tcx", "tc"],
    requires_all: &[],
};

/// The uplink XDP prefilter.
pub static XDP: ObjectSpec = ObjectSpec {
    name: "xdp",
    bytes: object_bytes!("xdp"),
    programs: &[ProgramSpec { name: "prefilter", hook: Hook::UplinkXdp, requires: &[] }],
    requires_any: &["xdp"],
    requires_all: &[],
};

/// Socket-level load balancing.
pub static SOCK: ObjectSpec = ObjectSpec {
    name: "sock",
    bytes: object_bytes!("sock"),
    programs: &[
        ProgramSpec { name: "sock4_connect", hook: Hook::Cgroup(CgroupHook::Connect4), requires: &[] },
        ProgramSpec { name: "sock4_sendmsg", hook: Hook::Cgroup(CgroupHook::Sendmsg4), requires: &[] },
        ProgramSpec { name: "sock4_recvmsg", hook: Hook::Cgroup(CgroupHook::Recvmsg4), requires: &[] },
        ProgramSpec { name: "sock4_getpeername", hook: Hook::Cgroup(CgroupHook::Getpeername4), requires: &[] },
        ProgramSpec {
            name: "sock_release",
            hook: Hook::Cgroup(CgroupHook::SockRelease),
            requires: &["cgroup_sock_release"],
        },
        ProgramSpec {
            name: "sock4_post_bind",
            hook: Hook::Cgroup(CgroupHook::PostBind4),
            requires: &["cgroup_post_bind4"],
        },
    ],
    requires_any: &["cgroup_sock_addr"],
    requires_all: &[],
};

/// Per-cgroup traffic accounting (cgroup_skb).
pub static CGROUP_SKB: ObjectSpec = ObjectSpec {
    name: "cgroup_skb",
    bytes: object_bytes!("cgroup_skb"),
    programs: &[
        ProgramSpec { name: "traffic_ingress", hook: Hook::Cgroup(CgroupHook::SkbIngress), requires: &[] },
        ProgramSpec { name: "traffic_egress", hook: Hook::Cgroup(CgroupHook::SkbEgress), requires: &[] },
    ],
    requires_any: &["cgroup_skb"],
    requires_all: &[],
};

/// Process exec and exit events (runtime visibility).
pub static PROCESS: ObjectSpec = ObjectSpec {
    name: "process",
    bytes: object_bytes!("process"),
    programs: &[
        ProgramSpec { name: "process_exec", hook: Hook::TpBtf("sched_process_exec"), requires: &[] },
        ProgramSpec { name: "process_exit", hook: Hook::Tracepoint("sched", "sched_process_exit"), requires: &[] },
    ],
    requires_any: &["tp_btf"],
    requires_all: &["tp_btf", "tracepoint"],
};

/// Every object, in load order (lxc first: it creates the shared maps).
pub static ALL: [&ObjectSpec; 7] = [&LXC, &NETDEV, &OVERLAY, &XDP, &SOCK, &CGROUP_SKB, &PROCESS];

/// The program attached at `hook`, and the object that holds it.
#[must_use]
pub fn program_for(hook: Hook) -> Option<(&'static ObjectSpec, &'static ProgramSpec)> {
    ALL.iter().find_map(|o| o.programs.iter().find(|p| p.hook == hook).map(|p| (*o, p)))
}

#[doc(hidden)]
pub mod testing {
    //! Objects that exist only for tests.
    use super::{Hook, ObjectSpec, ProgramSpec, TcDir};

    /// The ABI v1 datapath (bpf/testdata/abi-v1): what an agent of the
    /// first release left pinned, for upgrade tests.
    pub static LXC_ABI_V1: ObjectSpec = ObjectSpec {
        name: "lxc_v1",
        bytes: object_bytes!("lxc_v1"),
        programs: &[
            ProgramSpec { name: "from_container", hook: Hook::PodVeth(TcDir::Ingress), requires: &[] },
            ProgramSpec { name: "to_container", hook: Hook::PodVeth(TcDir::Egress), requires: &[] },
        ],
        requires_any: &["tcx"],
        requires_all: &[],
    };
}
