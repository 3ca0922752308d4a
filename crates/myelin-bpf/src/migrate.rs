//! Map migration across ABI versions: entries of a map whose layout changed
//! are copied from the old map (moved aside by the loader) into the new one,
//! converted where the value layout changed.
//!
//! | map          | old layout          | new layout           | how                                   |
//! |--------------|---------------------|----------------------|---------------------------------------|
//! | any          | same key and value  | other size or flags  | copied as they are                    |
//! | ct4          | v1 (64 B values)    | v2 (80 B)            | converted: identities from endpoints/ipcache, TCP flags seen from the state |
//! | node_config  | v1 (40 B)           | v2 (56 B)            | converted: the new settings take their defaults |
//! | policy_maps  | other outer shape   | same inner tries     | the inner tries themselves are moved  |
//! | anything else| other key or value  |                      | starts empty (reported)               |

use std::os::fd::{AsFd, AsRawFd};

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::loader::MapShape;
use crate::skel::types;
use crate::{sys, BpfError};

const MAP_TYPE_HASH_OF_MAPS: u32 = 13;
const PERCPU_TYPES: [u32; 4] = [5, 6, 10, 21]; // PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH, PERCPU_CGROUP_STORAGE
const MAP_TYPE_RINGBUF: u32 = 27;

/// What happened to one map during an upgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapMigration {
    /// Map name.
    pub map: String,
    /// Its layout before.
    pub from: MapShape,
    /// Its layout now.
    pub to: MapShape,
    /// Entries carried over.
    pub copied: usize,
    /// Entries that could not be carried over.
    pub skipped: usize,
    /// How: "copied", "converted ...", "inner maps moved", "nothing to carry".
    pub how: String,
}

/// Converts one old value (given its key) to the new layout; None skips it.
type Converter = fn(&[u8], &[u8], &Context<'_>) -> Option<Vec<u8>>;

/// Look-ups a converter may need (identities of addresses, from the new maps).
pub(crate) struct Context<'a> {
    pub identity_of: &'a dyn Fn(u32) -> u32,
    pub now_ns: u64,
}

fn err(map: &str, op: String) -> impl FnOnce(libbpf_rs::Error) -> BpfError + '_ {
    move |source| BpfError::Map { map: "migration", op: format!("{map}: {op}"), source }
}

/// Copy `old` into `new`. With `only_missing`, keys present in `new` are left
/// alone (the catch-up pass after the programs switched).
pub(crate) fn migrate(
    name: &str,
    old: &MapHandle,
    new: &MapHandle,
    ctx: &Context<'_>,
    only_missing: bool,
) -> Result<MapMigration, BpfError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| BpfError::PinDir { action: "reading the layout of", path: what.into(), source }
    };
    let (from, _) = MapShape::of(old).map_err(io(name))?;
    let (to, _) = MapShape::of(new).map_err(io(name))?;
    let mut m = MapMigration { map: name.to_string(), from, to, copied: 0, skipped: 0, how: String::new() };
    if from.map_type == MAP_TYPE_RINGBUF || to.map_type == MAP_TYPE_RINGBUF {
        m.how = "nothing to carry (ring buffer)".into();
        return Ok(m);
    }
    let convert: Option<Converter> = match (name, from.value_size, to.value_size) {
        (_, a, b) if a == b && from.key_size == to.key_size => None,
        ("ct4", 64, 80) => Some(ct4_v1_to_v2),
        ("node_config", 40, 56) => Some(node_config_v1_to_v2),
        _ => {
            m.how = format!("not carried over: no converter from {from} to {to}");
            m.skipped = old.keys().count();
            return Ok(m);
        }
    };
    let keys: Vec<Vec<u8>> = old.keys().collect();
    let percpu = PERCPU_TYPES.contains(&from.map_type);
    for k in keys {
        if only_missing && new.lookup(&k, MapFlags::ANY).ok().flatten().is_some() {
            continue;
        }
        if from.map_type == MAP_TYPE_HASH_OF_MAPS {
            // Values read back as inner map ids; the new outer map takes fds.
            let Some(v) = old.lookup(&k, MapFlags::ANY).map_err(err(name, "reading".into()))? else { continue };
            let id = v.get(..4).map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
            let Ok(inner) = MapHandle::from_map_id(id) else {
                m.skipped += 1;
                continue;
            };
            let fd = u32::try_from(inner.as_fd().as_raw_fd()).unwrap_or(0);
            new.update(&k, sys::as_bytes(&fd), MapFlags::ANY).map_err(err(name, "writing".into()))?;
            m.copied += 1;
            continue;
        }
        if percpu {
            let Some(vals) = old.lookup_percpu(&k, MapFlags::ANY).map_err(err(name, "reading".into()))? else {
                continue;
            };
            new.update_percpu(&k, &vals, MapFlags::ANY).map_err(err(name, "writing".into()))?;
            m.copied += 1;
            continue;
        }
        let Some(v) = old.lookup(&k, MapFlags::ANY).map_err(err(name, "reading".into()))? else { continue };
        let v = match convert {
            None => v,
            Some(f) => match f(&k, &v, ctx) {
                Some(n) => n,
                None => {
                    m.skipped += 1;
                    continue;
                }
            },
        };
        match new.update(&k, &v, MapFlags::ANY) {
            Ok(()) => m.copied += 1,
            Err(_) => m.skipped += 1, // e.g. the new map is smaller and full
        }
    }
    m.how = match (convert.is_some(), from.map_type == MAP_TYPE_HASH_OF_MAPS) {
        (_, true) => "inner maps moved".into(),
        (true, _) => format!("converted (value {} B -> {} B)", from.value_size, to.value_size),
        (false, _) => "copied".into(),
    };
    Ok(m)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4).map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8).map_or(0, |s| u64::from_ne_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]))
}

/// ct4 v1 value: 6 x u64 (expires, created, fwd packets/bytes, rev
/// packets/bytes), then egress rule, ingress rule, flags, pad (u32 each).
fn ct4_v1_to_v2(key: &[u8], v1: &[u8], ctx: &Context<'_>) -> Option<Vec<u8>> {
    if v1.len() != 64 || key.len() != std::mem::size_of::<types::ct4_key>() {
        return None;
    }
    let k: types::ct4_key = sys::from_bytes(key)?;
    let flags = u32_at(v1, 56);
    let (syn, fin, rst) = (0x02u8, 0x01u8, 0x04u8);
    let mut fwd_seen = 0u8;
    let mut rev_seen = 0u8;
    if flags & crate::CT_F_SYN_SEEN != 0 {
        fwd_seen |= syn;
    }
    if flags & crate::CT_F_REPLY_SEEN != 0 && flags & crate::CT_F_ESTABLISHED != 0 && k.protocol == 6 {
        rev_seen |= syn; // the SYN-ACK went by: no handshake to measure any more
    }
    if flags & crate::CT_F_FIN_FWD != 0 {
        fwd_seen |= fin;
    }
    if flags & crate::CT_F_FIN_REV != 0 {
        rev_seen |= fin;
    }
    if flags & crate::CT_F_RST != 0 {
        fwd_seen |= rst;
        rev_seen |= rst;
    }
    let e = types::ct4_entry {
        expires_ns: u64_at(v1, 0),
        created_ns: u64_at(v1, 8),
        fwd_packets: u64_at(v1, 16),
        fwd_bytes: u64_at(v1, 24),
        rev_packets: u64_at(v1, 32),
        rev_bytes: u64_at(v1, 40),
        egress_rule_id: u32_at(v1, 48),
        ingress_rule_id: u32_at(v1, 52),
        flags,
        src_identity: (ctx.identity_of)(k.saddr),
        dst_identity: (ctx.identity_of)(k.daddr),
        handshake_us: 0,
        last_report_s: u32::try_from(ctx.now_ns / 1_000_000_000).unwrap_or(0),
        fwd_tcp_seen: fwd_seen,
        rev_tcp_seen: rev_seen,
        _pad: 0,
    };
    Some(sys::as_bytes(&e).to_vec())
}

/// node_config v1: the first 40 bytes of v2; the rest (events) default to 0.
fn node_config_v1_to_v2(_key: &[u8], v1: &[u8], _ctx: &Context<'_>) -> Option<Vec<u8>> {
    if v1.len() != 40 {
        return None;
    }
    let mut v = vec![0u8; std::mem::size_of::<types::node_config>()];
    v[..40].copy_from_slice(v1);
    Some(v)
}
