//! Flow events out of the datapath: one ring buffer (`events`) shared by
//! every program, read by [`EventReader`]; the lost-event counters; and the
//! event settings in `node_config` (monitor aggregation, capture length).

use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use libbpf_rs::{MapCore, MapFlags, MapHandle, RingBuffer, RingBufferBuilder};

use crate::datapath::{decode, map_err};
use crate::skel::types;
use crate::{sys, BpfError, Datapath};

/// Cilium's monitor aggregation levels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MonitorAggregation {
    /// An event for every packet.
    None,
    /// Every packet, but no from-* traces.
    Low,
    /// Drops; traces and verdicts when a connection starts, sees a new TCP
    /// flag (SYN, FIN, RST), or every monitor interval.
    #[default]
    Medium,
    /// Drops; traces and verdicts when a connection starts or closes, or
    /// every monitor interval.
    Maximum,
    /// No events at all (observability off).
    Off,
}

impl MonitorAggregation {
    /// Parse `none`, `low`, `medium`, `maximum` (Cilium's names) or `off`.
    pub fn parse(s: &str) -> Result<Self, BpfError> {
        match s {
            "off" => Ok(Self::Off),
            "none" | "disabled" => Ok(Self::None),
            "low" | "lowest" => Ok(Self::Low),
            "medium" => Ok(Self::Medium),
            "maximum" | "max" => Ok(Self::Maximum),
            other => {
                Err(BpfError::Invalid(format!("monitor aggregation {other:?}: use none, low, medium, maximum or off")))
            }
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Low => 1,
            Self::Medium => 2,
            Self::Maximum => 3,
            Self::Off => 4,
        }
    }

    /// Cilium's name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::Maximum => "maximum",
            Self::Off => "off",
        }
    }
}

/// Flow event settings of the node (kept in `node_config`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventSettings {
    /// Which packets make events.
    pub aggregation: MonitorAggregation,
    /// Packet bytes captured per event (0..=256; 0 = none).
    pub capture_len: u16,
    /// Report an active connection again after this long (seconds, >= 1).
    pub monitor_interval_s: u32,
    /// Wake the reader when this many bytes are queued (>= 1).
    pub wakeup_bytes: u32,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            aggregation: MonitorAggregation::Medium,
            capture_len: 128,
            monitor_interval_s: 5,
            wakeup_bytes: 64 * 1024,
        }
    }
}

/// One event as the datapath wrote it: the header and the packet bytes.
#[derive(Clone, Copy, Debug)]
pub struct RawEvent<'a> {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when it happened.
    pub ktime_ns: u64,
    /// [`crate::EVENT_DROP`], [`crate::EVENT_TRACE`], [`crate::EVENT_POLICY_VERDICT`].
    pub event_type: u8,
    /// Drop reason, trace point, or 0.
    pub sub_type: u8,
    /// [`crate::DIR_INGRESS`] / [`crate::DIR_EGRESS`], from `endpoint_id`'s view.
    pub direction: u8,
    /// [`crate::TRACE_REASON_NEW`], ...
    pub trace_reason: u8,
    /// Policy verdict ([`crate::VERDICT_ALLOW`], ...), 0 if none was taken.
    pub verdict: u8,
    /// Policy match ([`crate::MATCH_L3_L4`], ...).
    pub match_type: u8,
    /// `EVENT_F_*`.
    pub flags: u8,
    /// `skb->len`.
    pub orig_len: u32,
    /// Interface the program ran on.
    pub ifindex: u32,
    /// The local endpoint concerned (0: none).
    pub endpoint_id: u32,
    /// Identity of the packet's source.
    pub src_identity: u32,
    /// Identity of the packet's destination.
    pub dst_identity: u32,
    /// The deciding rule (0: none).
    pub rule_id: u32,
    /// TCP handshake latency measured on this packet (with [`crate::EVENT_F_HANDSHAKE`]).
    pub handshake_us: u32,
    /// Overlay: the other node (with [`crate::EVENT_F_TUNNEL`]).
    pub tunnel_remote: u32,
    /// The packet's first bytes, from its Ethernet header.
    pub packet: &'a [u8],
}

impl<'a> RawEvent<'a> {
    /// Decode a ring buffer record; None if it is too short.
    #[must_use]
    pub fn parse(record: &'a [u8]) -> Option<Self> {
        let hdr = std::mem::size_of::<types::event>();
        let e: types::event = sys::from_bytes(record.get(..hdr)?)?;
        let cap = usize::from(e.cap_len);
        let packet = record.get(hdr..hdr + cap).unwrap_or(&record[hdr..]);
        Some(Self {
            ktime_ns: e.ktime_ns,
            event_type: e.r#type,
            sub_type: e.sub_type,
            direction: e.direction,
            trace_reason: e.trace_reason,
            verdict: e.verdict,
            match_type: e.match_type,
            flags: e.flags,
            orig_len: e.orig_len,
            ifindex: e.ifindex,
            endpoint_id: e.endpoint_id,
            src_identity: e.src_identity,
            dst_identity: e.dst_identity,
            rule_id: e.rule_id,
            handshake_us: e.handshake_us,
            tunnel_remote: e.tunnel_remote,
            packet,
        })
    }
}

/// Reads the `events` ring buffer of a pin directory. The callback sees every
/// record (in place, no copy); it runs on the thread calling [`EventReader::poll`].
pub struct EventReader {
    ring: RingBuffer<'static>,
    lost: MapHandle,
}

impl std::fmt::Debug for EventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReader").finish_non_exhaustive()
    }
}

impl EventReader {
    /// Open the ring of the datapath pinned at `pin_dir`.
    pub fn open(pin_dir: &Path, mut on_record: impl FnMut(&[u8]) + 'static) -> Result<Self, BpfError> {
        let events = MapHandle::from_pinned_path(pin_dir.join("events"))
            .map_err(map_err("events", "opening the pinned ring buffer"))?;
        let lost = MapHandle::from_pinned_path(pin_dir.join("events_lost"))
            .map_err(map_err("events_lost", "opening the pinned map"))?;
        let mut b = RingBufferBuilder::new();
        b.add(&events, move |data: &[u8]| {
            on_record(data);
            0
        })
        .map_err(map_err("events", "adding the ring buffer"))?;
        let ring = b.build().map_err(map_err("events", "mapping the ring buffer"))?;
        Ok(Self { ring, lost })
    }

    /// Wait up to `timeout` for records and hand every available one to the
    /// callback. Returns how many were consumed.
    pub fn poll(&self, timeout: Duration) -> Result<usize, BpfError> {
        let n = self.ring.poll_raw(timeout);
        if n < 0 && n != -libc::EINTR {
            return Err(BpfError::Invalid(format!(
                "polling the events ring: {}",
                std::io::Error::from_raw_os_error(-n)
            )));
        }
        // The datapath wakes the reader only once a batch is queued
        // (`wakeup_bytes`): whatever arrived without a wakeup is drained
        // here, so a short timeout bounds how stale a quiet ring gets.
        Ok(usize::try_from(n).unwrap_or(0) + self.drain()?)
    }

    /// Hand every record available now to the callback, without waiting.
    pub fn drain(&self) -> Result<usize, BpfError> {
        let n = self.ring.consume_raw();
        if n < 0 {
            return Err(BpfError::Invalid(format!(
                "reading the events ring: {}",
                std::io::Error::from_raw_os_error(-n)
            )));
        }
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Events the datapath could not queue (ring full), per CPU, since the
    /// maps were created.
    pub fn lost_per_cpu(&self) -> Result<Vec<u64>, BpfError> {
        lost_per_cpu(&self.lost)
    }

    /// The ring's epoll fd (to wait on it elsewhere).
    #[must_use]
    pub fn epoll_fd(&self) -> i32 {
        self.ring.epoll_fd()
    }
}

fn lost_per_cpu(map: &MapHandle) -> Result<Vec<u64>, BpfError> {
    let Some(per_cpu) =
        map.lookup_percpu(sys::as_bytes(&0u32), MapFlags::ANY).map_err(map_err("events_lost", "reading entry 0"))?
    else {
        return Ok(Vec::new());
    };
    per_cpu.iter().map(|b| decode::<u64>("events_lost", b)).collect()
}

impl Datapath {
    /// Events the datapath could not queue, per CPU.
    pub fn events_lost(&self) -> Result<Vec<u64>, BpfError> {
        lost_per_cpu(&self.maps.events_lost)
    }

    /// Set the flow event settings (applied to packets from now on).
    pub fn set_event_settings(&self, s: &EventSettings) -> Result<(), BpfError> {
        if usize::from(s.capture_len) > 256 {
            return Err(BpfError::Invalid(format!("capture length {}: at most 256 bytes", s.capture_len)));
        }
        if s.monitor_interval_s == 0 || s.wakeup_bytes == 0 {
            return Err(BpfError::Invalid("monitor interval and wakeup bytes must be at least 1".into()));
        }
        let mut v = self.read_node_config_raw()?;
        v.monitor_aggregation = s.aggregation.code() + 1;
        v.capture_len = if s.capture_len == 0 { 0xffff } else { s.capture_len };
        v.monitor_interval_s = s.monitor_interval_s;
        v.wakeup_bytes = s.wakeup_bytes;
        self.write_node_config_raw(&v)
    }

    /// The flow event settings in force.
    pub fn event_settings(&self) -> Result<EventSettings, BpfError> {
        let v = self.read_node_config_raw()?;
        let d = EventSettings::default();
        let aggregation = match v.monitor_aggregation {
            1 => MonitorAggregation::None,
            2 => MonitorAggregation::Low,
            4 => MonitorAggregation::Maximum,
            5 => MonitorAggregation::Off,
            _ => MonitorAggregation::Medium,
        };
        Ok(EventSettings {
            aggregation,
            capture_len: match v.capture_len {
                0 => d.capture_len,
                0xffff => 0,
                n => n.min(256),
            },
            monitor_interval_s: if v.monitor_interval_s == 0 { d.monitor_interval_s } else { v.monitor_interval_s },
            wakeup_bytes: if v.wakeup_bytes == 0 { d.wakeup_bytes } else { v.wakeup_bytes },
        })
    }

    /// Open a reader on this datapath's ring (see [`EventReader::open`]).
    pub fn event_reader(&self, on_record: impl FnMut(&[u8]) + 'static) -> Result<EventReader, BpfError> {
        let _ = self.maps.events_lost.as_fd();
        EventReader::open(&self.pin_dir, on_record)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::MonitorAggregation as M;

    #[test]
    fn every_level_parses_back_from_its_name_and_bad_names_say_the_choices() {
        for m in [M::None, M::Low, M::Medium, M::Maximum, M::Off] {
            assert_eq!(M::parse(m.name()).unwrap(), m);
        }
        let e = M::parse("loud").unwrap_err().to_string();
        assert!(e.contains("\"loud\"") && e.contains("maximum or off"), "{e}");
    }
}
