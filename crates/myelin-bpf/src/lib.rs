//! Myelin's eBPF loader: the only crate with `unsafe` (confined to `sys` and
//! the generated skeletons).
//!
//! - `build.rs` compiles `bpf/datapath/*.bpf.c` (clang, `-nostdinc`) and
//!   generates a libbpf-rs skeleton per object; map key/value types come from
//!   BTF (`skel*::types`), never hand-mirrored.
//! - [`objects`]: the objects (pod veth, uplink tc, uplink XDP, cgroup socket
//!   load balancing) and the hook of each program. [`Datapath::load`] loads
//!   every object the kernel supports into one per-node pin directory (maps
//!   shared by pinning, reused across restarts, migrated when their layout
//!   changed, see `loader.rs` and `migrate.rs`); [`Datapath::activate`] swaps
//!   the programs of live links atomically.
//! - Attaching (`attach.rs`): TCX links (or clsact over netlink on kernels
//!   without TCX), XDP links, cgroup links; pinned, adopted after restarts.
//! - Identity-based L3/L4 policy ([`Datapath::set_endpoint_policies`]), the
//!   `ipcache`, connection tracking ([`Datapath::ct_entries`],
//!   [`Datapath::ct_gc`]), per-rule counters, flow events ([`EventReader`]),
//!   services ([`Datapath::upsert_service`]), the XDP prefilter, process
//!   exec/exit events ([`ProcessReader`], tp_btf and tracepoint programs),
//!   per-cgroup traffic ([`Datapath::cgroup_traffic`], cgroup_skb programs).
//!   Semantics: `bpf/include/myelin_abi.h`.
//! - [`ensure_bpffs`], [`remove_pin_dir`], [`probe_features`].

mod attach;
mod bpffs;
mod cgroup_traffic;
mod conntrack;
mod datapath;
mod error;
mod events;
mod loader;
mod migrate;
pub mod objects;
mod policy;
mod prefilter;
mod probe;
mod process;
mod services;
mod sys;
#[doc(hidden)]
pub mod testing;
mod tunnel;

macro_rules! skeleton {
    ($module:ident, $file:literal) => {
        #[allow(
            unsafe_code,
            unused_imports,
            dead_code,
            clippy::all,
            clippy::pedantic,
            clippy::unwrap_used,
            clippy::expect_used
        )]
        mod $module {
            include!(concat!(env!("OUT_DIR"), "/", $file));
        }
    };
}

// The ABI types shared by every object come from the pod veth object's
// skeleton; the service and prefilter types from their own objects'.
skeleton!(skel, "lxc.skel.rs");
skeleton!(skel_lb, "sock.skel.rs");
skeleton!(skel_xdp, "xdp.skel.rs");
skeleton!(skel_process, "process.skel.rs");
skeleton!(skel_overlay, "overlay.skel.rs");
skeleton!(skel_cgskb, "cgroup_skb.skel.rs");

use std::net::Ipv4Addr;

pub use bpffs::{ensure_bpffs, remove_pin_dir};
pub use cgroup_traffic::CgroupTraffic;
pub use conntrack::{CtEntry, CtTimeouts};
pub use datapath::{
    endpoint_run_stats, AttachMode, Datapath, LoadOptions, ProgramRunStats, Unavailable, UpgradeReport,
};
pub use error::BpfError;
pub use events::{EventReader, EventSettings, MonitorAggregation, RawEvent};
pub use loader::{abi_version, MapShape};
pub use migrate::MapMigration;
pub use policy::{DesiredPolicy, EndpointPolicyUpdate, PolicyMapEntry, PolicyStatRow};
pub use prefilter::PrefilterRow;
pub use probe::{probe_features, FeatureProbe};
pub use process::{ProcessEvent, ProcessEventKind, ProcessReader};
pub use services::{Backend, Frontend, ServiceRow};
pub use sys::{release_free_memory, use_one_allocator_arena};
pub use tunnel::TunnelRoute;

/// The default bpffs mount point.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// The per-node pin directory `<bpffs_root>/myelin/<node>`, with the node
/// name made safe for bpffs (which refuses '.', so `node1.example.com`
/// becomes `node1_example_com`; '/' is replaced too).
#[must_use]
pub fn node_pin_dir(bpffs_root: &std::path::Path, node: &str) -> std::path::PathBuf {
    let safe: String = node.chars().map(|c| if c == '.' || c == '/' || c == '\0' { '_' } else { c }).collect();
    bpffs_root.join("myelin").join(if safe.is_empty() { "_".to_string() } else { safe })
}

/// A local endpoint as stored in the `endpoints` map (keyed by its IPv4 address).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointEntry {
    /// Host-side veth ifindex, in the node netns.
    pub ifindex: u32,
    /// Agent-assigned endpoint id (metrics key).
    pub endpoint_id: u32,
    /// Security identity; 0 = unknown.
    pub identity: u32,
    /// `EP_F_*` flags ([`EP_F_HOST`]).
    pub flags: u32,
    /// Pod-side interface MAC.
    pub mac: [u8; 6],
    /// Host-side veth MAC (the pod's gateway MAC, used in ARP replies).
    pub host_mac: [u8; 6],
}

/// Node-wide settings (the single entry of `node_config`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeConfig {
    /// The node's primary address.
    pub node_ip: Ipv4Addr,
    /// The pods' default gateway address.
    pub gateway: Ipv4Addr,
    /// This node's pod CIDR (network address).
    pub pod_cidr: Ipv4Addr,
    /// Its prefix length (0..=32).
    pub pod_cidr_prefix: u8,
}

/// Size and verifier cost of one loaded program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProgramStat {
    /// Program name.
    pub name: &'static str,
    /// Instructions the verifier processed (all paths): its complexity.
    pub verified_insns: u32,
    /// Instructions after load (what runs, before JIT).
    pub xlated_insns: u32,
    /// Size of the JITed code in bytes.
    pub jited_bytes: u32,
}

/// One metrics row, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MetricRow {
    /// Endpoint id (0: not attributable, e.g. spoofed source).
    pub endpoint_id: u32,
    /// [`DIR_INGRESS`] (towards the endpoint) or [`DIR_EGRESS`] (sent by it).
    pub direction: u8,
    /// One of the `REASON_*` / `DROP_*` constants.
    pub reason: u8,
    /// Packets.
    pub packets: u64,
    /// Bytes (`skb->len`, L2 included).
    pub bytes: u64,
}

use skel::types::{
    ct_flags as Ct, metric_dir as Dir, myelin_reason as R, policy_verdict as V, reserved_identity as Id,
};

/// Reserved endpoint flag: the node itself (never redirected to).
pub const EP_F_HOST: u32 = 1;

/// Metric direction: towards the endpoint.
pub const DIR_INGRESS: u8 = Dir::METRIC_DIR_INGRESS.0 as u8;
/// Metric direction: sent by the endpoint.
pub const DIR_EGRESS: u8 = Dir::METRIC_DIR_EGRESS.0 as u8;

/// Redirected by eBPF straight to its target.
pub const REASON_FORWARDED: u8 = R::REASON_FORWARDED.0 as u8;
/// Handed to the node's stack.
pub const REASON_TO_STACK: u8 = R::REASON_TO_STACK.0 as u8;
/// ARP request answered by the datapath.
pub const REASON_ARP_REPLY: u8 = R::REASON_ARP_REPLY.0 as u8;
/// Delivered to the endpoint from the node's stack.
pub const REASON_FROM_STACK: u8 = R::REASON_FROM_STACK.0 as u8;
/// Dropped: source address not the endpoint's own.
pub const DROP_INVALID_SIP: u8 = R::DROP_INVALID_SIP.0 as u8;
/// Dropped: malformed packet.
pub const DROP_INVALID: u8 = R::DROP_INVALID.0 as u8;
/// Dropped: policy denied.
pub const DROP_POLICY: u8 = R::DROP_POLICY.0 as u8;
/// Dropped: policy denied by an explicit deny rule.
pub const DROP_POLICY_DENY: u8 = R::DROP_POLICY_DENY.0 as u8;
/// Dropped: overlay, no node holds the destination (or a packet without a tunnel key).
pub const DROP_NO_TUNNEL_ENDPOINT: u8 = R::DROP_NO_TUNNEL_ENDPOINT.0 as u8;

/// Reserved identity: unknown (also the "any peer" wildcard in policy entries).
pub const IDENTITY_UNKNOWN: u32 = Id::IDENTITY_UNKNOWN.0;
/// Reserved identity: the node itself.
pub const IDENTITY_HOST: u32 = Id::IDENTITY_HOST.0;
/// Reserved identity: anything outside the cluster not in the ipcache.
pub const IDENTITY_WORLD: u32 = Id::IDENTITY_WORLD.0;

/// Policy direction of [`PolicyMapEntry::direction`]: towards the endpoint
/// (same value as [`DIR_INGRESS`]).
pub const POLICY_INGRESS: u8 = DIR_INGRESS;
/// Policy direction: sent by the endpoint (same value as [`DIR_EGRESS`]).
pub const POLICY_EGRESS: u8 = DIR_EGRESS;

/// [`PolicyStatRow::verdict`]: allowed by a rule (or by a non-enforced direction, rule 0).
pub const VERDICT_ALLOW: u8 = V::POLICY_VERDICT_ALLOW.0 as u8;
/// [`PolicyStatRow::verdict`]: denied by an explicit deny rule (drop reason 181).
pub const VERDICT_DENY: u8 = V::POLICY_VERDICT_DENY.0 as u8;
/// [`PolicyStatRow::verdict`]: no entry matched in an enforced direction (drop reason 133).
pub const VERDICT_DEFAULT_DENY: u8 = V::POLICY_VERDICT_DEFAULT_DENY.0 as u8;

/// [`CtEntry::flags`]: TCP SYN seen in the original direction.
pub const CT_F_SYN_SEEN: u32 = Ct::CT_F_SYN_SEEN.0;
/// [`CtEntry::flags`]: TCP handshake done (a non-SYN packet seen).
pub const CT_F_ESTABLISHED: u32 = Ct::CT_F_ESTABLISHED.0;
/// [`CtEntry::flags`]: a packet seen in the reply direction.
pub const CT_F_REPLY_SEEN: u32 = Ct::CT_F_REPLY_SEEN.0;
/// [`CtEntry::flags`]: FIN seen in the original direction.
pub const CT_F_FIN_FWD: u32 = Ct::CT_F_FIN_FWD.0;
/// [`CtEntry::flags`]: FIN seen in the reply direction.
pub const CT_F_FIN_REV: u32 = Ct::CT_F_FIN_REV.0;
/// [`CtEntry::flags`]: RST seen.
pub const CT_F_RST: u32 = Ct::CT_F_RST.0;

/// Human name of a policy verdict code.
#[must_use]
pub fn verdict_name(verdict: u8) -> &'static str {
    match V(u32::from(verdict)) {
        V::POLICY_VERDICT_ALLOW => "allow",
        V::POLICY_VERDICT_DENY => "deny",
        V::POLICY_VERDICT_DEFAULT_DENY => "default-deny",
        _ => "unknown",
    }
}

/// Human name of a reason code (Cilium-compatible numbers for drops).
#[must_use]
pub fn reason_name(reason: u8) -> &'static str {
    match R(u32::from(reason)) {
        R::REASON_FORWARDED => "forwarded",
        R::REASON_TO_STACK => "to-stack",
        R::REASON_ARP_REPLY => "arp-reply",
        R::REASON_FROM_STACK => "from-stack",
        R::DROP_INVALID_SMAC => "invalid-source-mac",
        R::DROP_INVALID_DMAC => "invalid-destination-mac",
        R::DROP_INVALID_SIP => "invalid-source-ip",
        R::DROP_POLICY => "policy-denied",
        R::DROP_INVALID => "invalid-packet",
        R::DROP_UNSUPPORTED_L3 => "unsupported-l3-protocol",
        R::DROP_NO_TUNNEL_ENDPOINT => "no-tunnel-endpoint",
        R::DROP_FIB_LOOKUP_FAILED => "fib-lookup-failed",
        R::DROP_UNKNOWN_SENDER => "unknown-sender",
        R::DROP_POLICY_DENY => "policy-deny-rule",
        _ => "unknown",
    }
}

/// Whether a reason code is a drop.
#[must_use]
pub fn reason_is_drop(reason: u8) -> bool {
    reason >= 130
}

use skel::types::{event_flags as Ef, event_type as Ev, policy_match as Pm, trace_point as Tp, trace_reason as Tr};

/// Event type: a drop (sub-type = drop reason). Cilium's monitor number.
pub const EVENT_DROP: u8 = Ev::EVENT_DROP.0 as u8;
/// Event type: a trace (sub-type = observation point).
pub const EVENT_TRACE: u8 = Ev::EVENT_TRACE.0 as u8;
/// Event type: a policy decision.
pub const EVENT_POLICY_VERDICT: u8 = Ev::EVENT_POLICY_VERDICT.0 as u8;

/// Trace point: delivered to an endpoint.
pub const TRACE_TO_LXC: u8 = Tp::TRACE_TO_LXC.0 as u8;
/// Trace point: handed to the node, for the node itself.
pub const TRACE_TO_HOST: u8 = Tp::TRACE_TO_HOST.0 as u8;
/// Trace point: handed to the node's stack to be routed.
pub const TRACE_TO_STACK: u8 = Tp::TRACE_TO_STACK.0 as u8;
/// Trace point: into the overlay.
pub const TRACE_TO_OVERLAY: u8 = Tp::TRACE_TO_OVERLAY.0 as u8;
/// Trace point: sent by an endpoint.
pub const TRACE_FROM_LXC: u8 = Tp::TRACE_FROM_LXC.0 as u8;
/// Trace point: from the node's stack towards an endpoint.
pub const TRACE_FROM_STACK: u8 = Tp::TRACE_FROM_STACK.0 as u8;
/// Trace point: out of the overlay.
pub const TRACE_FROM_OVERLAY: u8 = Tp::TRACE_FROM_OVERLAY.0 as u8;
/// Trace point: arrived on the uplink.
pub const TRACE_FROM_NETWORK: u8 = Tp::TRACE_FROM_NETWORK.0 as u8;
/// Trace point: leaving through the uplink.
pub const TRACE_TO_NETWORK: u8 = Tp::TRACE_TO_NETWORK.0 as u8;

/// Connection-tracking state of an event's packet: a new connection.
pub const TRACE_REASON_NEW: u8 = Tr::TRACE_REASON_NEW.0 as u8;
/// ... an established connection, original direction.
pub const TRACE_REASON_ESTABLISHED: u8 = Tr::TRACE_REASON_ESTABLISHED.0 as u8;
/// ... a reply.
pub const TRACE_REASON_REPLY: u8 = Tr::TRACE_REASON_REPLY.0 as u8;
/// ... an ICMP error about a tracked connection.
pub const TRACE_REASON_RELATED: u8 = Tr::TRACE_REASON_RELATED.0 as u8;

/// Event flag: the packet is a reply.
pub const EVENT_F_REPLY: u8 = Ef::EVENT_F_REPLY.0 as u8;
/// Event flag: `handshake_us` was measured on this packet.
pub const EVENT_F_HANDSHAKE: u8 = Ef::EVENT_F_HANDSHAKE.0 as u8;
/// Event flag: `tunnel_remote` is set.
pub const EVENT_F_TUNNEL: u8 = Ef::EVENT_F_TUNNEL.0 as u8;

/// Policy match: none (default verdict).
pub const MATCH_NONE: u8 = Pm::POLICY_MATCH_NONE.0 as u8;
/// Policy match: peer identity, any port.
pub const MATCH_L3_ONLY: u8 = Pm::POLICY_MATCH_L3_ONLY.0 as u8;
/// Policy match: peer identity and port.
pub const MATCH_L3_L4: u8 = Pm::POLICY_MATCH_L3_L4.0 as u8;
/// Policy match: any peer, port.
pub const MATCH_L4_ONLY: u8 = Pm::POLICY_MATCH_L4_ONLY.0 as u8;
/// Policy match: any peer, any port.
pub const MATCH_ALL: u8 = Pm::POLICY_MATCH_ALL.0 as u8;

/// Pseudo-identities "pod inside this CIDR identity" (Kubernetes
/// NetworkPolicy ipBlock semantics; see `myelin_abi.h`).
pub const POD_IN_CIDR_FLAG: u32 = 1 << 30;
