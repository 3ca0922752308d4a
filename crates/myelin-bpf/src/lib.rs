//! Myelin's eBPF loader: the only crate with `unsafe` (confined to `sys` and
//! the generated skeleton).
//!
//! - `build.rs` compiles `bpf/datapath/*.bpf.c` and generates libbpf-rs
//!   skeletons; map key/value types come from BTF (`skel::types`), never
//!   hand-mirrored.
//! - [`Datapath`] loads the pod-veth programs with maps pinned by name in a
//!   per-node pin directory (reused across restarts), writes/reads the maps
//!   and attaches TCX links pinned under `<pin_dir>/links/`.
//! - Identity-based L3/L4 policy ([`Datapath::set_endpoint_policy`], per
//!   endpoint, swapped atomically; [`Datapath::set_endpoint_policies`] for
//!   many endpoints with one RCU grace period), the `ipcache` of peer identities
//!   ([`Datapath::upsert_ipcache`]), connection tracking
//!   ([`Datapath::ct_entries`], [`Datapath::ct_gc`]) and per-rule counters
//!   ([`Datapath::policy_stats`]). Semantics: `bpf/include/myelin_abi.h`.
//! - [`ensure_bpffs`], [`remove_pin_dir`], [`probe_features`].

mod bpffs;
mod conntrack;
mod datapath;
mod error;
mod policy;
mod probe;
mod sys;

#[allow(unsafe_code, unused_imports, clippy::all, clippy::pedantic, clippy::unwrap_used, clippy::expect_used)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/lxc.skel.rs"));
}

use std::net::Ipv4Addr;

pub use bpffs::{ensure_bpffs, remove_pin_dir};
pub use conntrack::{CtEntry, CtTimeouts};
pub use datapath::{endpoint_run_stats, Datapath, ProgramRunStats};
pub use error::BpfError;
pub use policy::{DesiredPolicy, EndpointPolicyUpdate, PolicyMapEntry, PolicyStatRow};
pub use probe::{probe_features, FeatureProbe};

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
