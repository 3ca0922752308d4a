//! From a datapath event to a [`FlowRecord`]: decode the captured headers,
//! name both sides (a dictionary id each, cached until the directory's
//! generation moves), map Cilium's monitor numbers to Hubble's.
//!
//! The hot path is one header parse and two hash lookups per event; the
//! directory is asked only on a cache miss.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use myelin_bpf::RawEvent;

use crate::decode::decode;
use crate::dict::{Dictionary, EndpointDesc};
use crate::directory::Directory;
use crate::record::{self, flags, point, FlowRecord};

/// Converts `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) to unix time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    offset_ns: i128,
}

impl Clock {
    /// Read both clocks now.
    #[must_use]
    pub fn now() -> Self {
        let mono = i128::from(myelin_bpf::Datapath::monotonic_now_ns());
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(0));
        Self { offset_ns: real - mono }
    }

    #[must_use]
    pub fn unix_ns(&self, ktime_ns: u64) -> u64 {
        u64::try_from(i128::from(ktime_ns) + self.offset_ns).unwrap_or(0)
    }
}

/// Side key of the naming cache: the address, the identity and whether it is the endpoint
/// the event is about.
type SideKey = (u128, u32, u32);

/// Turns events into records. Owned by the ingest thread.
pub struct Ingest {
    dir: Arc<dyn Directory>,
    dict: Arc<Dictionary>,
    clock: Clock,
    cache: HashMap<SideKey, u32>,
    generation: u64,
    next_seq: u64,
}

use myelin_bpf::{EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE};

impl Ingest {
    #[must_use]
    pub fn new(dir: Arc<dyn Directory>, dict: Arc<Dictionary>, first_seq: u64) -> Self {
        let generation = dir.generation();
        Self { dir, dict, clock: Clock::now(), cache: HashMap::new(), generation, next_seq: first_seq }
    }

    /// Re-read the clocks (they drift apart over hours; NTP steps the real one).
    pub fn resync_clock(&mut self) {
        self.clock = Clock::now();
    }

    /// The sequence number the next record will get.
    #[must_use]
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// One record from one event.
    pub fn record(&mut self, e: &RawEvent<'_>) -> FlowRecord {
        let gen = self.dir.generation();
        if gen != self.generation {
            self.cache.clear();
            self.generation = gen;
        }
        let h = decode(e.packet);
        let mut r = FlowRecord {
            time_ns: self.clock.unix_ns(e.ktime_ns),
            seq: self.next_seq,
            src_ip: h.src_ip,
            dst_ip: h.dst_ip,
            ip_version: h.ip_version,
            protocol: h.protocol,
            src_port: h.src_port,
            dst_port: h.dst_port,
            tcp_flags: h.tcp_flags,
            icmp_type: h.icmp_type,
            icmp_code: h.icmp_code,
            event_type: e.event_type,
            sub_type: e.sub_type,
            src_identity: e.src_identity,
            dst_identity: e.dst_identity,
            rule_id: e.rule_id,
            ifindex: e.ifindex,
            orig_len: e.orig_len,
            endpoint_id: e.endpoint_id,
            trace_reason: e.trace_reason,
            policy_verdict: e.verdict,
            match_type: e.match_type,
            eth_src: if h.ethertype == 0 { 0 } else { record::mac_u64(h.eth_src) },
            eth_dst: if h.ethertype == 0 { 0 } else { record::mac_u64(h.eth_dst) },
            ..FlowRecord::default()
        };
        self.next_seq += 1;
        // Traffic direction is the datapath's view of the endpoint concerned.
        r.traffic_direction =
            if e.direction == myelin_bpf::DIR_INGRESS { record::direction::INGRESS } else { record::direction::EGRESS };
        match e.event_type {
            EVENT_DROP => {
                r.verdict = record::verdict::DROPPED;
                r.drop_reason = e.sub_type;
            }
            EVENT_TRACE => {
                r.verdict = record::verdict::FORWARDED;
                r.obs_point = if e.sub_type == 0 { point::TO_ENDPOINT } else { e.sub_type };
            }
            EVENT_POLICY_VERDICT => {
                let allowed = e.verdict == myelin_bpf::VERDICT_ALLOW;
                r.verdict = if allowed { record::verdict::FORWARDED } else { record::verdict::DROPPED };
                if !allowed {
                    r.drop_reason = if e.verdict == myelin_bpf::VERDICT_DENY {
                        myelin_bpf::DROP_POLICY_DENY
                    } else {
                        myelin_bpf::DROP_POLICY
                    };
                }
            }
            _ => r.verdict = record::verdict::UNKNOWN,
        }
        if e.trace_reason != 0 {
            r.flags |= flags::REPLY_KNOWN;
            if e.flags & myelin_bpf::EVENT_F_REPLY != 0 {
                r.flags |= flags::REPLY;
            }
        }
        if e.flags & myelin_bpf::EVENT_F_HANDSHAKE != 0 {
            r.flags |= flags::HANDSHAKE;
            r.handshake_us = e.handshake_us;
        }
        if e.flags & myelin_bpf::EVENT_F_TUNNEL != 0 {
            r.flags |= flags::TUNNEL;
            r.tunnel_remote = e.tunnel_remote;
        }
        r.src_ep = self.side(h.ip_version, h.src_ip, e.src_identity);
        r.dst_ep = self.side(h.ip_version, h.dst_ip, e.dst_identity);
        r
    }

    /// The dictionary id of one side of a flow.
    fn side(&mut self, ip_version: u8, ip: u128, identity: u32) -> u32 {
        let key = (ip, identity, u32::from(ip_version));
        if let Some(id) = self.cache.get(&key) {
            return *id;
        }
        let desc = match record::addr(ip_version, ip) {
            Some(addr) => self.describe(addr, identity),
            None => EndpointDesc { identity, labels: self.dir.identity_labels(identity), ..EndpointDesc::default() },
        };
        let id = self.dict.intern(desc);
        self.cache.insert(key, id);
        id
    }

    fn describe(&self, addr: IpAddr, identity: u32) -> EndpointDesc {
        match self.dir.endpoint_by_ip(addr) {
            Some(mut d) => {
                // The event's identity is what the datapath decided with.
                if identity != 0 {
                    d.identity = identity;
                }
                d
            }
            None => EndpointDesc { identity, labels: self.dir.identity_labels(identity), ..EndpointDesc::default() },
        }
    }
}
