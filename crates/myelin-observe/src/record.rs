//! The observer's own flow record: fixed size, no heap, cheap to copy, to
//! filter and to compress. Names (pods, namespaces, labels) are not in it:
//! each side of a flow points into the [`crate::dict::Dictionary`], which
//! captured them when the flow was seen (pods come and go; their flows keep
//! their names). Rule ids stay ids: the agent keeps them resolvable for as
//! long as history keeps flows (stable rule ids).
//!
//! Numbers follow Hubble's protobuf enums where one exists (verdict,
//! observation point, trace reason, traffic direction), so converting to a
//! `flow.Flow` is a copy.

use std::net::IpAddr;

/// `flow.Verdict`.
pub mod verdict {
    pub const UNKNOWN: u8 = 0;
    pub const FORWARDED: u8 = 1;
    pub const DROPPED: u8 = 2;
    pub const ERROR: u8 = 3;
    pub const AUDIT: u8 = 4;
    pub const REDIRECTED: u8 = 5;
    pub const TRACED: u8 = 6;
    pub const TRANSLATED: u8 = 7;
}

/// `flow.TrafficDirection`.
pub mod direction {
    pub const UNKNOWN: u8 = 0;
    pub const INGRESS: u8 = 1;
    pub const EGRESS: u8 = 2;
}

/// `flow.TraceObservationPoint` (TO_ENDPOINT is 101).
pub mod point {
    pub const UNKNOWN: u8 = 0;
    pub const TO_PROXY: u8 = 1;
    pub const TO_HOST: u8 = 2;
    pub const TO_STACK: u8 = 3;
    pub const TO_OVERLAY: u8 = 4;
    pub const FROM_ENDPOINT: u8 = 5;
    pub const FROM_PROXY: u8 = 6;
    pub const FROM_HOST: u8 = 7;
    pub const FROM_STACK: u8 = 8;
    pub const FROM_OVERLAY: u8 = 9;
    pub const FROM_NETWORK: u8 = 10;
    pub const TO_NETWORK: u8 = 11;
    pub const TO_ENDPOINT: u8 = 101;
}

/// Bits of [`FlowRecord::flags`].
pub mod flags {
    /// `is_reply` is known (Hubble's BoolValue is set).
    pub const REPLY_KNOWN: u8 = 1 << 0;
    /// The packet is a reply.
    pub const REPLY: u8 = 1 << 1;
    /// `handshake_us` holds the TCP handshake latency of the connection.
    pub const HANDSHAKE: u8 = 1 << 2;
    /// `tunnel_remote` is set.
    pub const TUNNEL: u8 = 1 << 3;
}

/// TCP flag bits of [`FlowRecord::tcp_flags`] (as on the wire).
pub mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// One flow event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowRecord {
    /// Unix time of the event, in nanoseconds.
    pub time_ns: u64,
    /// Position in this node's stream of flows (strictly increasing).
    pub seq: u64,
    /// Addresses: IPv4 in the low 32 bits (ip_version 4), or IPv6 (6); 0 = no IP header.
    pub src_ip: u128,
    pub dst_ip: u128,
    pub ip_version: u8,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, 132 SCTP).
    pub protocol: u8,
    /// TCP/UDP/SCTP ports; 0 otherwise.
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP flags ([`tcp`]).
    pub tcp_flags: u8,
    /// ICMP type and code (ICMPv4 or ICMPv6 by `protocol`).
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// Cilium monitor event type (1 drop, 4 trace, 5 policy verdict) and sub type.
    pub event_type: u8,
    pub sub_type: u8,
    /// [`verdict`].
    pub verdict: u8,
    /// Cilium drop reason (130..), 0 when not dropped.
    pub drop_reason: u8,
    /// [`direction`].
    pub traffic_direction: u8,
    /// [`point`] (trace events).
    pub obs_point: u8,
    /// Hubble TraceReason (1 new, 2 established, 3 reply, 4 related).
    pub trace_reason: u8,
    /// The datapath's policy verdict: 0 none, 1 allow, 2 deny, 3 default deny.
    pub policy_verdict: u8,
    /// Cilium policy match type (0 none, 1 L3, 2 L3-L4, 3 L4, 4 all).
    pub match_type: u8,
    /// [`flags`].
    pub flags: u8,
    /// Security identities of the source and the destination.
    pub src_identity: u32,
    pub dst_identity: u32,
    /// Dictionary ids of the source and destination descriptions (0: none).
    pub src_ep: u32,
    pub dst_ep: u32,
    /// The rule that decided (0: none, or the default verdict).
    pub rule_id: u32,
    /// TCP handshake latency, microseconds ([`flags::HANDSHAKE`]).
    pub handshake_us: u32,
    /// Interface the datapath saw the packet on (node netns).
    pub ifindex: u32,
    /// Length of the packet.
    pub orig_len: u32,
    /// Overlay: the other node's address ([`flags::TUNNEL`]).
    pub tunnel_remote: u32,
    /// The local endpoint the event is about (datapath endpoint id, 0: none).
    pub endpoint_id: u32,
    /// Ethernet addresses (48 bits), 0 when not captured.
    pub eth_src: u64,
    pub eth_dst: u64,
}

impl FlowRecord {
    /// The source address, if the packet had an IP header.
    #[must_use]
    pub fn src_addr(&self) -> Option<IpAddr> {
        addr(self.ip_version, self.src_ip)
    }

    /// The destination address, if the packet had an IP header.
    #[must_use]
    pub fn dst_addr(&self) -> Option<IpAddr> {
        addr(self.ip_version, self.dst_ip)
    }

    /// `is_reply`, when known.
    #[must_use]
    pub fn is_reply(&self) -> Option<bool> {
        (self.flags & flags::REPLY_KNOWN != 0).then_some(self.flags & flags::REPLY != 0)
    }
}

/// An address as the record stores it.
#[must_use]
pub fn addr(ip_version: u8, v: u128) -> Option<IpAddr> {
    match ip_version {
        4 => Some(IpAddr::V4(std::net::Ipv4Addr::from(u32::try_from(v & 0xffff_ffff).unwrap_or(0)))),
        6 => Some(IpAddr::V6(std::net::Ipv6Addr::from(v))),
        _ => None,
    }
}

/// Store an address.
#[must_use]
pub fn pack(ip: IpAddr) -> (u8, u128) {
    match ip {
        IpAddr::V4(v) => (4, u128::from(u32::from(v))),
        IpAddr::V6(v) => (6, u128::from(v)),
    }
}

/// A MAC as 48 bits.
#[must_use]
pub fn mac_u64(m: [u8; 6]) -> u64 {
    m.iter().fold(0, |acc, b| (acc << 8) | u64::from(*b))
}

/// `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn mac_string(m: u64) -> String {
    let b = m.to_be_bytes();
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[2], b[3], b[4], b[5], b[6], b[7])
}
