//! Connection tracking (`ct4`): dump, garbage collection, flush, lifetimes;
//! and the node-wide policy knobs stored in `node_config`.

use std::net::Ipv4Addr;
use std::time::Duration;

use libbpf_rs::{MapCore, MapFlags};

use crate::datapath::{decode, map_err};
use crate::skel::types::{self, ct_default_timeout as T, node_flags as NF};
use crate::{sys, BpfError, Datapath, CT_F_ESTABLISHED, CT_F_FIN_FWD, CT_F_FIN_REV, CT_F_RST};

const NODE_F_NO_ALLOW_LOCALHOST: u32 = NF::NODE_F_NO_ALLOW_LOCALHOST.0;

/// One tracked connection, keyed by the tuple of its first packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtEntry {
    /// Source of the original direction.
    pub saddr: Ipv4Addr,
    /// Destination of the original direction.
    pub daddr: Ipv4Addr,
    /// Source port (host order); ICMP echo: the identifier; else 0.
    pub sport: u16,
    /// Destination port (host order); ICMP echo: the identifier; else 0.
    pub dport: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// `CT_F_*` bits ([`crate::CT_F_ESTABLISHED`], ...).
    pub flags: u32,
    /// Deadline on the `CLOCK_MONOTONIC` clock, in ns (`bpf_ktime_get_ns`).
    pub expires_ns: u64,
    /// Creation time on the same clock.
    pub created_ns: u64,
    /// Time left before expiry when dumped (zero if expired).
    pub lifetime_left: Duration,
    /// Rule that allowed the sender's egress (0: no rule / no policy).
    pub egress_rule_id: u32,
    /// Rule that allowed the receiver's ingress (0: no rule / no policy / not a local pod).
    pub ingress_rule_id: u32,
    /// Identity of the original direction's source, as policy last saw it.
    pub src_identity: u32,
    /// Identity of the original direction's destination.
    pub dst_identity: u32,
    /// TCP: SYN to SYN-ACK as seen at the endpoint (None: not measured).
    pub handshake: Option<Duration>,
    /// Packets in the original direction.
    pub fwd_packets: u64,
    /// Bytes in the original direction.
    pub fwd_bytes: u64,
    /// Packets in the reply direction.
    pub rev_packets: u64,
    /// Bytes in the reply direction.
    pub rev_bytes: u64,
}

impl CtEntry {
    /// TCP handshake completed (a non-SYN packet seen).
    #[must_use]
    pub fn established(&self) -> bool {
        self.flags & CT_F_ESTABLISHED != 0
    }

    /// TCP closing: RST, or FIN both ways.
    #[must_use]
    pub fn closing(&self) -> bool {
        self.flags & CT_F_RST != 0 || self.flags & (CT_F_FIN_FWD | CT_F_FIN_REV) == (CT_F_FIN_FWD | CT_F_FIN_REV)
    }

    fn from_raw(k: &types::ct4_key, v: &types::ct4_entry, now_ns: u64) -> Self {
        Self {
            saddr: Ipv4Addr::from(k.saddr.to_ne_bytes()),
            daddr: Ipv4Addr::from(k.daddr.to_ne_bytes()),
            sport: u16::from_be(k.sport),
            dport: u16::from_be(k.dport),
            protocol: k.protocol,
            flags: v.flags,
            expires_ns: v.expires_ns,
            created_ns: v.created_ns,
            lifetime_left: Duration::from_nanos(v.expires_ns.saturating_sub(now_ns)),
            egress_rule_id: v.egress_rule_id,
            ingress_rule_id: v.ingress_rule_id,
            src_identity: v.src_identity,
            dst_identity: v.dst_identity,
            handshake: (v.handshake_us != 0).then(|| Duration::from_micros(u64::from(v.handshake_us))),
            fwd_packets: v.fwd_packets,
            fwd_bytes: v.fwd_bytes,
            rev_packets: v.rev_packets,
            rev_bytes: v.rev_bytes,
        }
    }
}

/// Connection-tracking lifetimes (whole seconds, 1..=u32::MAX s), refreshed
/// by every packet. [`Default`] is Cilium's: 60 s, 6 h, 10 s, 60 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtTimeouts {
    /// TCP until the handshake completed.
    pub tcp_syn: Duration,
    /// TCP established.
    pub tcp_established: Duration,
    /// TCP after RST or FIN both ways.
    pub tcp_closing: Duration,
    /// UDP, ICMP and everything else.
    pub other: Duration,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        let s = |t: T| Duration::from_secs(u64::from(t.0));
        Self {
            tcp_syn: s(T::CT_DEFAULT_TCP_SYN_S),
            tcp_established: s(T::CT_DEFAULT_TCP_ESTABLISHED_S),
            tcp_closing: s(T::CT_DEFAULT_TCP_CLOSING_S),
            other: s(T::CT_DEFAULT_OTHER_S),
        }
    }
}

fn secs(name: &str, d: Duration) -> Result<u32, BpfError> {
    match u32::try_from(d.as_secs()) {
        Ok(s) if s >= 1 && d.subsec_nanos() == 0 => Ok(s),
        _ => Err(BpfError::Invalid(format!(
            "conntrack timeout {name} = {d:?}: must be whole seconds between 1 s and {} s",
            u32::MAX
        ))),
    }
}

impl Datapath {
    pub(crate) fn read_node_config_raw(&self) -> Result<types::node_config, BpfError> {
        let raw = self
            .maps
            .node_config
            .lookup(sys::as_bytes(&0u32), MapFlags::ANY)
            .map_err(map_err("node_config", "reading entry 0"))?
            .unwrap_or_default();
        decode("node_config", &raw)
    }

    pub(crate) fn write_node_config_raw(&self, v: &types::node_config) -> Result<(), BpfError> {
        self.maps
            .node_config
            .update(sys::as_bytes(&0u32), sys::as_bytes(v), MapFlags::ANY)
            .map_err(map_err("node_config", "writing entry 0"))
    }

    /// Let the node (identity host) reach its local pods whatever their
    /// ingress policy says (Cilium's allow-localhost). On by default.
    /// Read-modify-write of `node_config`: don't race it with
    /// [`Datapath::set_node_config`] or [`Datapath::set_ct_timeouts`].
    pub fn set_allow_localhost(&self, on: bool) -> Result<(), BpfError> {
        let mut v = self.read_node_config_raw()?;
        if on {
            v.flags &= !NODE_F_NO_ALLOW_LOCALHOST;
        } else {
            v.flags |= NODE_F_NO_ALLOW_LOCALHOST;
        }
        self.write_node_config_raw(&v)
    }

    /// Whether allow-localhost is on.
    pub fn allow_localhost(&self) -> Result<bool, BpfError> {
        Ok(self.read_node_config_raw()?.flags & NODE_F_NO_ALLOW_LOCALHOST == 0)
    }

    /// Set the connection-tracking lifetimes (applied to packets from now on).
    pub fn set_ct_timeouts(&self, t: &CtTimeouts) -> Result<(), BpfError> {
        let mut v = self.read_node_config_raw()?;
        v.ct_tcp_syn_s = secs("tcp_syn", t.tcp_syn)?;
        v.ct_tcp_established_s = secs("tcp_established", t.tcp_established)?;
        v.ct_tcp_closing_s = secs("tcp_closing", t.tcp_closing)?;
        v.ct_other_s = secs("other", t.other)?;
        self.write_node_config_raw(&v)
    }

    /// The connection-tracking lifetimes in force.
    pub fn ct_timeouts(&self) -> Result<CtTimeouts, BpfError> {
        let v = self.read_node_config_raw()?;
        let d = CtTimeouts::default();
        let pick = |s: u32, dflt: Duration| {
            if s == 0 {
                dflt
            } else {
                Duration::from_secs(u64::from(s))
            }
        };
        Ok(CtTimeouts {
            tcp_syn: pick(v.ct_tcp_syn_s, d.tcp_syn),
            tcp_established: pick(v.ct_tcp_established_s, d.tcp_established),
            tcp_closing: pick(v.ct_tcp_closing_s, d.tcp_closing),
            other: pick(v.ct_other_s, d.other),
        })
    }

    fn ct_raw(&self) -> Result<Vec<(Vec<u8>, types::ct4_key, types::ct4_entry)>, BpfError> {
        let mut out = Vec::new();
        for kb in self.maps.ct4.keys() {
            let k: types::ct4_key = decode("ct4", &kb)?;
            // An entry evicted or deleted between keys() and lookup() is skipped.
            let Some(vb) =
                self.maps.ct4.lookup(&kb, MapFlags::ANY).map_err(map_err("ct4", format!("reading {k:?}")))?
            else {
                continue;
            };
            let v: types::ct4_entry = decode("ct4", &vb)?;
            out.push((kb, k, v));
        }
        Ok(out)
    }

    /// All tracked connections (expired ones not yet collected included),
    /// sorted by (protocol, source, destination).
    pub fn ct_entries(&self) -> Result<Vec<CtEntry>, BpfError> {
        let now = sys::monotonic_ns();
        let mut out: Vec<CtEntry> = self.ct_raw()?.iter().map(|(_, k, v)| CtEntry::from_raw(k, v, now)).collect();
        out.sort_by_key(|e| (e.protocol, e.saddr, e.sport, e.daddr, e.dport));
        Ok(out)
    }

    /// Delete the connections that expired by now; returns how many. The
    /// agent calls this periodically (the LRU also evicts under pressure).
    pub fn ct_gc(&self) -> Result<usize, BpfError> {
        self.ct_gc_at(sys::monotonic_ns())
    }

    /// [`Datapath::ct_gc`] as if the monotonic clock read `now_ns`.
    pub fn ct_gc_at(&self, now_ns: u64) -> Result<usize, BpfError> {
        Ok(self.ct_gc_report_at(now_ns)?.0)
    }

    /// [`Datapath::ct_gc`], also saying how many connections stay tracked:
    /// (removed, remaining).
    pub fn ct_gc_report(&self) -> Result<(usize, usize), BpfError> {
        self.ct_gc_report_at(sys::monotonic_ns())
    }

    fn ct_gc_report_at(&self, now_ns: u64) -> Result<(usize, usize), BpfError> {
        let (mut removed, mut remaining) = (0, 0);
        for (kb, k, v) in self.ct_raw()? {
            if v.expires_ns > now_ns {
                remaining += 1;
                continue;
            }
            removed += usize::from(self.ct_delete_raw(&kb, &k)?);
        }
        Ok((removed, remaining))
    }

    /// Delete every tracked connection; returns how many.
    pub fn ct_flush(&self) -> Result<usize, BpfError> {
        let mut removed = 0;
        for (kb, k, _) in self.ct_raw()? {
            removed += usize::from(self.ct_delete_raw(&kb, &k)?);
        }
        Ok(removed)
    }

    /// The `CLOCK_MONOTONIC` reading the datapath's CT deadlines compare with.
    #[must_use]
    pub fn monotonic_now_ns() -> u64 {
        sys::monotonic_ns()
    }

    fn ct_delete_raw(&self, kb: &[u8], k: &types::ct4_key) -> Result<bool, BpfError> {
        match self.maps.ct4.delete(kb) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(BpfError::Map { map: "ct4", op: format!("deleting {k:?}"), source }),
        }
    }
}
