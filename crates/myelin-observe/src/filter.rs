//! GetFlows filters (`flow.FlowFilter`) with Hubble's semantics, compiled to a
//! predicate over [`FlowRecord`]s: no `flow.Flow` is built to decide, so a
//! filtered query over millions of stored flows costs a few integer compares
//! per flow.
//!
//! # Semantics (Hubble's)
//! - A flow passes when it matches **any** whitelist filter (or the whitelist
//!   is empty) and **no** blacklist filter.
//! - Within one `FlowFilter`, every field that is set must match (AND); an
//!   empty `FlowFilter` matches every flow.
//! - Within one repeated field, any value may match (OR).
//!
//! # Fields
//! | field | meaning here |
//! |---|---|
//! | `uuid` | the flow's `uuid` (`NODE/SEQUENCE` in Myelin); anything else is rejected |
//! | `source_ip`, `destination_ip` | an exact address (`10.0.0.1`, `fd00::1`) or a CIDR (`10.0.0.0/8`) |
//! | `source_pod`, `destination_pod` | `[namespace/][pod-name-prefix]`; no namespace means `default`; `ns/` is any pod of `ns` |
//! | `source_label`, `destination_label` | Kubernetes label selectors over Cilium labels: `k8s:app=web`, `app=web` (a key without a source matches any source), `app!=web`, `app in (a,b)`, `app notin (a,b)`, `app`, `!app`, `n>1`, `n<1`; commas AND requirements |
//! | `source_identity`, `destination_identity` | the side's security identity |
//! | `source_workload`, `destination_workload` | a `Workload{name, kind}`; an empty name or kind matches any |
//! | `source_cluster_name`, `destination_cluster_name` | the side's cluster name, exactly (empty names are rejected) |
//! | `verdict`, `traffic_direction`, `drop_reason_desc`, `ip_version` | enum values; unknown numbers are rejected; `drop_reason_desc` matches dropped flows only |
//! | `event_type` | Cilium monitor type (1 drop, 4 trace, 5 policy verdict; 0 any) and, with `match_sub_type`, the sub type |
//! | `protocol` | `tcp`, `udp`, `sctp`, `icmp` (v4 or v6), `icmpv4`, `icmpv6`, `vrrp`, `igmp`; case-insensitive |
//! | `source_port`, `destination_port` | a decimal port; TCP, UDP and SCTP flows only |
//! | `tcp_flags` | every flag set in one entry must be set on the (TCP) flow |
//! | `reply` | `is_reply`; a dropped flow whose direction is unknown counts as not a reply (as Hubble) |
//! | `encrypted` | Myelin encrypts nothing (yet): `false` matches every flow, `true` none |
//! | `node_name` | patterns `node` or `cluster/node` with `*` wildcards (lowercase, FQDN characters); a flow's node without a cluster is in cluster `default` |
//!
//! Rejected with an error naming the field (never silently ignored), because
//! Myelin's flows do not carry the data they select on: `source_ip_xlated`,
//! `source_service`/`destination_service` (no service load balancing yet),
//! `source_fqdn`/`destination_fqdn` and `dns_query` (no DNS visibility),
//! `http_*` (no L7 visibility), `interface`, `node_labels`, `trace_id`,
//! `ip_trace_id`, and `experimental.cel_expression`. Rejecting beats matching
//! nothing: a whitelist would come back empty and a blacklist would hide
//! nothing, both without saying why.
//!
//! # Cost
//! A compiled filter is the list of the tests its set fields make, cheapest
//! first (bit masks and byte sets over the record's integers, then short
//! lists, then cached lookups). Pod, namespace, label, workload and cluster
//! predicates depend only on a side's dictionary entry: each compiled side
//! predicate caches its decision per dictionary id. Dictionary ids are
//! append-only (an id never changes meaning), so the cache stays valid for
//! the life of a query; a compiled filter must only be used with records of
//! one dictionary. `node_name` remembers its answer for the last node.
//!
//! Label selectors: a side's labels are parsed as Cilium does
//! (`source:key=value`); a requirement whose key has no source looks at the
//! first label with that key, by key order, whatever its source (Cilium's
//! `any` source). An empty selector string is refused (Kubernetes would read
//! it as "select everything", which a user rarely means).

use std::net::IpAddr;

use crate::dict::{DictView, EndpointDesc};
use crate::proto::flow;
use crate::record::{self, FlowRecord};

/// Why a filter was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterErrorKind {
    /// The value is malformed.
    Invalid,
    /// The field is valid for Hubble but Myelin cannot evaluate it.
    Unsupported,
}

/// A filter that cannot be compiled: `path` names the field (for example
/// `whitelist[0].source_ip[1]`), `reason` says what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct FilterError {
    pub kind: FilterErrorKind,
    pub path: String,
    pub reason: String,
}

impl FilterError {
    fn invalid(path: String, reason: impl Into<String>) -> Self {
        Self { kind: FilterErrorKind::Invalid, path, reason: reason.into() }
    }

    fn unsupported(path: String, reason: impl Into<String>) -> Self {
        Self { kind: FilterErrorKind::Unsupported, path, reason: reason.into() }
    }
}

/// `[namespace/][pod-name-prefix]` split as Hubble does: the namespace, if the
/// string names one, and the pod name prefix. `"web"` is `(None, "web")`
/// (the filter then means namespace `default`), `"prod/"` is
/// `(Some("prod"), "")` (any pod of `prod`), `"prod/web-"` is
/// `(Some("prod"), "web-")`. Only the first `/` splits.
#[must_use]
pub fn pod_filter_parts(s: &str) -> (Option<&str>, &str) {
    match s.split_once('/') {
        Some((ns, pod)) => (Some(ns), pod),
        None => (None, s),
    }
}

/// The namespace Hubble assumes when a pod filter names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The cluster Hubble assumes for a node name without one.
pub const DEFAULT_CLUSTER: &str = "default";

/// Compiled whitelist and blacklist.
#[derive(Debug, Default)]
pub struct FlowFilters {
    whitelist: Vec<Compiled>,
    blacklist: Vec<Compiled>,
}

impl FlowFilters {
    /// Compile a request's filters. An invalid value or a field Myelin cannot
    /// evaluate is an error naming it, e.g.
    /// `whitelist[0].source_ip[1]: "10.0.0.300" is neither an IP address nor a CIDR`.
    pub fn compile(whitelist: &[flow::FlowFilter], blacklist: &[flow::FlowFilter]) -> Result<Self, FilterError> {
        let list = |name: &str, filters: &[flow::FlowFilter]| -> Result<Vec<Compiled>, FilterError> {
            filters.iter().enumerate().map(|(i, f)| Compiled::new(f, &format!("{name}[{i}]"))).collect()
        };
        Ok(Self { whitelist: list("whitelist", whitelist)?, blacklist: list("blacklist", blacklist)? })
    }

    /// Does the record pass? `dict` names its sides (the dictionary the
    /// record's ids come from); `node` is the node the record comes from.
    pub fn matches(&mut self, r: &FlowRecord, dict: &DictView, node: &str) -> bool {
        let wanted = self.whitelist.is_empty() || self.whitelist.iter_mut().any(|f| f.matches(r, dict, node));
        wanted && !self.blacklist.iter_mut().any(|f| f.matches(r, dict, node))
    }

    /// No whitelist and no blacklist: every record passes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.whitelist.is_empty() && self.blacklist.is_empty()
    }
}

/// A [`crate::server::FilterCompiler`]: the Observer service's filters.
pub fn compile_matcher(
    whitelist: &[flow::FlowFilter],
    blacklist: &[flow::FlowFilter],
) -> Result<crate::server::Matcher, String> {
    let mut filters = FlowFilters::compile(whitelist, blacklist).map_err(|e| e.to_string())?;
    if filters.is_empty() {
        return Ok(Box::new(|_, _, _| true));
    }
    Ok(Box::new(move |r, dict, node| filters.matches(r, dict, node)))
}

// ---------------------------------------------------------------------------
// One compiled FlowFilter
// ---------------------------------------------------------------------------

/// A set of bytes (protocol numbers, drop reasons).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ByteSet([u64; 4]);

impl ByteSet {
    fn insert(&mut self, b: u8) {
        self.0[usize::from(b >> 6)] |= 1 << (b & 63);
    }

    fn contains(&self, b: u8) -> bool {
        self.0[usize::from(b >> 6)] & (1 << (b & 63)) != 0
    }
}

/// An address or a CIDR, in the record's layout (IPv4 in the low 32 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Prefix {
    version: u8,
    net: u128,
    mask: u128,
}

impl Prefix {
    fn contains(&self, version: u8, ip: u128) -> bool {
        version == self.version && ip & self.mask == self.net
    }
}

/// `is_reply` values wanted.
#[derive(Clone, Copy, Debug)]
struct Reply {
    yes: bool,
    no: bool,
}

/// An `EventTypeFilter`.
#[derive(Clone, Copy, Debug)]
struct EventType {
    /// 0: any type.
    ty: i32,
    sub_type: Option<i32>,
}

const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;

/// One test a set field makes; a compiled filter holds only the tests of
/// the fields that are set, cheapest first.
#[derive(Debug)]
enum Check {
    Verdict(u32),
    Direction(u32),
    IpVersion(u32),
    DropReason(ByteSet),
    Protocol(ByteSet),
    EventType(Vec<EventType>),
    SrcPort(Vec<u16>),
    DstPort(Vec<u16>),
    TcpFlags(Vec<u16>),
    Reply(Reply),
    /// `encrypted` asks for encrypted flows only: Myelin has none.
    Never,
    SrcIp(Vec<Prefix>),
    DstIp(Vec<Prefix>),
    SrcIdentity(Vec<u32>),
    DstIdentity(Vec<u32>),
    Uuid(Vec<(String, u64)>),
    /// Per dictionary id (cached).
    Src(SidePredicate),
    Dst(SidePredicate),
    /// Per node (cached).
    Node(NodeFilter),
}

impl Check {
    #[inline]
    fn matches(&mut self, r: &FlowRecord, dict: &DictView, node: &str) -> bool {
        match self {
            Self::Verdict(m) => bit(*m, r.verdict),
            Self::Direction(m) => bit(*m, r.traffic_direction),
            Self::IpVersion(m) => {
                let v = match r.ip_version {
                    4 => flow::IpVersion::IPv4,
                    6 => flow::IpVersion::IPv6,
                    _ => flow::IpVersion::IpNotUsed,
                };
                *m & (1 << (v as u32)) != 0
            }
            Self::DropReason(set) => r.verdict == record::verdict::DROPPED && set.contains(r.drop_reason),
            Self::Protocol(set) => set.contains(r.protocol),
            Self::EventType(v) => v.iter().any(|e| event_type_matches(*e, r)),
            Self::SrcPort(v) => has_ports(r) && v.contains(&r.src_port),
            Self::DstPort(v) => has_ports(r) && v.contains(&r.dst_port),
            Self::TcpFlags(v) => {
                let flags = u16::from(r.tcp_flags);
                r.protocol == 6 && v.iter().any(|m| m & !flags == 0)
            }
            Self::Reply(want) => match r.is_reply() {
                Some(true) => want.yes,
                Some(false) => want.no,
                // Hubble: unknown counts as "not a reply" for dropped flows only.
                None => r.verdict == record::verdict::DROPPED && want.no,
            },
            Self::Never => false,
            Self::SrcIp(v) => v.iter().any(|p| p.contains(r.ip_version, r.src_ip)),
            Self::DstIp(v) => v.iter().any(|p| p.contains(r.ip_version, r.dst_ip)),
            Self::SrcIdentity(v) => v.contains(&side_identity(r.src_identity, r.src_ep, dict)),
            Self::DstIdentity(v) => v.contains(&side_identity(r.dst_identity, r.dst_ep, dict)),
            Self::Uuid(v) => v.iter().any(|(n, seq)| *seq == r.seq && n == node),
            Self::Src(side) => side.matches(r.src_ep, dict),
            Self::Dst(side) => side.matches(r.dst_ep, dict),
            Self::Node(nodes) => nodes.matches(node),
        }
    }
}

/// One compiled `FlowFilter`: every check must pass.
#[derive(Debug)]
struct Compiled {
    checks: Vec<Check>,
}

/// The `flow.Verdict` (etc.) values of a repeated enum field as a bit mask.
fn enum_mask(values: &[i32], path: &str, what: &str, valid: impl Fn(i32) -> bool) -> Result<Option<u32>, FilterError> {
    if values.is_empty() {
        return Ok(None);
    }
    let mut mask = 0u32;
    for (j, v) in values.iter().enumerate() {
        if !valid(*v) || !(0..32).contains(v) {
            return Err(FilterError::invalid(format!("{path}[{j}]"), format!("{v} is not a {what} value")));
        }
        mask |= 1 << v;
    }
    Ok(Some(mask))
}

fn reject(path: &str, field: &str, set: bool, reason: &str) -> Result<(), FilterError> {
    if set {
        return Err(FilterError::unsupported(format!("{path}.{field}"), reason));
    }
    Ok(())
}

const NO_SERVICES: &str =
    "not supported by Myelin yet (flows carry no service: Myelin has no service load balancing yet)";
const NO_DNS: &str = "not supported by Myelin yet (flows carry no DNS names: Myelin has no DNS visibility)";
const NO_L7: &str = "not supported by Myelin (no L7 visibility)";

impl Compiled {
    #[allow(clippy::too_many_lines)]
    fn new(f: &flow::FlowFilter, at: &str) -> Result<Self, FilterError> {
        // Every field named: a field added to the .proto must be decided here.
        let flow::FlowFilter {
            uuid,
            source_ip,
            source_ip_xlated,
            source_pod,
            source_fqdn,
            source_label,
            source_service,
            source_workload,
            source_cluster_name,
            source_identity,
            destination_ip,
            destination_pod,
            destination_fqdn,
            destination_label,
            destination_service,
            destination_workload,
            destination_cluster_name,
            destination_identity,
            traffic_direction,
            verdict,
            drop_reason_desc,
            interface,
            event_type,
            protocol,
            source_port,
            destination_port,
            tcp_flags,
            ip_version,
            reply,
            encrypted,
            http_status_code,
            http_method,
            http_path,
            http_url,
            http_header,
            dns_query,
            node_name,
            node_labels,
            trace_id,
            ip_trace_id,
            experimental,
        } = f;

        reject(
            at,
            "source_ip_xlated",
            !source_ip_xlated.is_empty(),
            "not supported by Myelin yet (flows carry no translated address: Myelin has no service load balancing yet)",
        )?;
        reject(at, "source_fqdn", !source_fqdn.is_empty(), NO_DNS)?;
        reject(at, "destination_fqdn", !destination_fqdn.is_empty(), NO_DNS)?;
        reject(at, "source_service", !source_service.is_empty(), NO_SERVICES)?;
        reject(at, "destination_service", !destination_service.is_empty(), NO_SERVICES)?;
        reject(
            at,
            "interface",
            !interface.is_empty(),
            "not supported by Myelin yet (flows do not carry their interface)",
        )?;
        reject(at, "http_status_code", !http_status_code.is_empty(), NO_L7)?;
        reject(at, "http_method", !http_method.is_empty(), NO_L7)?;
        reject(at, "http_path", !http_path.is_empty(), NO_L7)?;
        reject(at, "http_url", !http_url.is_empty(), NO_L7)?;
        reject(at, "http_header", !http_header.is_empty(), NO_L7)?;
        reject(
            at,
            "dns_query",
            !dns_query.is_empty(),
            "not supported by Myelin (no L7 visibility: DNS is not parsed)",
        )?;
        reject(at, "node_labels", !node_labels.is_empty(), "not supported by Myelin yet (flows carry no node labels)")?;
        reject(at, "trace_id", !trace_id.is_empty(), "not supported by Myelin (flows carry no trace context)")?;
        reject(at, "ip_trace_id", !ip_trace_id.is_empty(), "not supported by Myelin (flows carry no IP trace id)")?;
        if let Some(flow::flow_filter::Experimental { cel_expression }) = experimental {
            reject(
                at,
                "experimental.cel_expression",
                !cel_expression.is_empty(),
                "not supported by Myelin (CEL expressions are not evaluated; use the other fields)",
            )?;
        }

        // Cheapest first: integer tests on the record, then lists, then cached lookups.
        let mut checks = Vec::new();
        if let Some(m) =
            enum_mask(verdict, &format!("{at}.verdict"), "flow.Verdict", |v| flow::Verdict::try_from(v).is_ok())?
        {
            checks.push(Check::Verdict(m));
        }
        if let Some(m) =
            enum_mask(traffic_direction, &format!("{at}.traffic_direction"), "flow.TrafficDirection", |v| {
                flow::TrafficDirection::try_from(v).is_ok()
            })?
        {
            checks.push(Check::Direction(m));
        }
        if let Some(m) = enum_mask(ip_version, &format!("{at}.ip_version"), "flow.IPVersion", |v| {
            flow::IpVersion::try_from(v).is_ok()
        })? {
            checks.push(Check::IpVersion(m));
        }
        if !drop_reason_desc.is_empty() {
            let mut set = ByteSet::default();
            for (j, v) in drop_reason_desc.iter().enumerate() {
                match (flow::DropReason::try_from(*v), u8::try_from(*v)) {
                    (Ok(_), Ok(b)) => set.insert(b),
                    _ => {
                        return Err(FilterError::invalid(
                            format!("{at}.drop_reason_desc[{j}]"),
                            format!("{v} is not a flow.DropReason value"),
                        ))
                    }
                }
            }
            checks.push(Check::DropReason(set));
        }
        if !protocol.is_empty() {
            let mut set = ByteSet::default();
            for (j, p) in protocol.iter().enumerate() {
                let path = format!("{at}.protocol[{j}]");
                for n in protocol_numbers(p, &path)? {
                    set.insert(*n);
                }
            }
            checks.push(Check::Protocol(set));
        }
        if !reply.is_empty() {
            checks.push(Check::Reply(Reply { yes: reply.contains(&true), no: reply.contains(&false) }));
        }
        // Myelin encrypts nothing: `false` passes every flow (no check), `true` alone none.
        if !encrypted.is_empty() && !encrypted.contains(&false) {
            checks.push(Check::Never);
        }
        if !event_type.is_empty() {
            checks.push(Check::EventType(
                event_type
                    .iter()
                    .map(|e| EventType { ty: e.r#type, sub_type: e.match_sub_type.then_some(e.sub_type) })
                    .collect(),
            ));
        }
        let src_ports = ports(source_port, &format!("{at}.source_port"))?;
        if !src_ports.is_empty() {
            checks.push(Check::SrcPort(src_ports));
        }
        let dst_ports = ports(destination_port, &format!("{at}.destination_port"))?;
        if !dst_ports.is_empty() {
            checks.push(Check::DstPort(dst_ports));
        }
        if !tcp_flags.is_empty() {
            checks.push(Check::TcpFlags(tcp_flags.iter().map(tcp_mask).collect()));
        }
        let src_ips = prefixes(source_ip, &format!("{at}.source_ip"))?;
        if !src_ips.is_empty() {
            checks.push(Check::SrcIp(src_ips));
        }
        let dst_ips = prefixes(destination_ip, &format!("{at}.destination_ip"))?;
        if !dst_ips.is_empty() {
            checks.push(Check::DstIp(dst_ips));
        }
        if !source_identity.is_empty() {
            checks.push(Check::SrcIdentity(source_identity.clone()));
        }
        if !destination_identity.is_empty() {
            checks.push(Check::DstIdentity(destination_identity.clone()));
        }
        let uuids = uuids(uuid, &format!("{at}.uuid"))?;
        if !uuids.is_empty() {
            checks.push(Check::Uuid(uuids));
        }
        if let Some(side) =
            SidePredicate::new(source_pod, source_label, source_workload, source_cluster_name, &format!("{at}.source"))?
        {
            checks.push(Check::Src(side));
        }
        if let Some(side) = SidePredicate::new(
            destination_pod,
            destination_label,
            destination_workload,
            destination_cluster_name,
            &format!("{at}.destination"),
        )? {
            checks.push(Check::Dst(side));
        }
        if !node_name.is_empty() {
            let patterns = node_name
                .iter()
                .enumerate()
                .map(|(j, p)| {
                    NodePattern::parse(p).map_err(|e| {
                        FilterError::invalid(
                            format!("{at}.node_name[{j}]"),
                            format!("{p:?} is not a node name pattern: {e}"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            checks.push(Check::Node(NodeFilter { patterns, last: None }));
        }
        Ok(Compiled { checks })
    }

    /// Every set field matches.
    #[inline]
    fn matches(&mut self, r: &FlowRecord, dict: &DictView, node: &str) -> bool {
        self.checks.iter_mut().all(|c| c.matches(r, dict, node))
    }
}

/// TCP, UDP and SCTP carry ports.
fn has_ports(r: &FlowRecord) -> bool {
    matches!(r.protocol, 6 | 17 | 132)
}

fn bit(mask: u32, v: u8) -> bool {
    v < 32 && mask & (1 << v) != 0
}

fn event_type_matches(e: EventType, r: &FlowRecord) -> bool {
    (e.ty == 0 || e.ty == i32::from(r.event_type)) && e.sub_type.is_none_or(|s| s == i32::from(r.sub_type))
}

/// The identity a flow shows for one side (as [`crate::flowpb::endpoint`]).
fn side_identity(identity: u32, ep: u32, dict: &DictView) -> u32 {
    if identity != 0 {
        identity
    } else {
        dict.get(ep).map_or(0, |d| d.identity)
    }
}

fn protocol_numbers(p: &str, path: &str) -> Result<&'static [u8], FilterError> {
    Ok(match p.to_ascii_lowercase().as_str() {
        "tcp" => &[6],
        "udp" => &[17],
        "sctp" => &[132],
        "icmp" => &[1, 58],
        "icmpv4" => &[1],
        "icmpv6" => &[58],
        "vrrp" => &[112],
        "igmp" => &[2],
        "http" | "dns" | "kafka" => return Err(FilterError::unsupported(path.to_owned(), NO_L7)),
        _ => {
            return Err(FilterError::invalid(
                path.to_owned(),
                format!("{p:?} is not a protocol (tcp, udp, sctp, icmp, icmpv4, icmpv6, vrrp, igmp)"),
            ))
        }
    })
}

fn ports(values: &[String], path: &str) -> Result<Vec<u16>, FilterError> {
    values
        .iter()
        .enumerate()
        .map(|(j, p)| {
            // Decimal digits only (u16::from_str would take a leading '+').
            let n = if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) { p.parse::<u16>().ok() } else { None };
            n.ok_or_else(|| {
                FilterError::invalid(format!("{path}[{j}]"), format!("{p:?} is not a port number (0-65535)"))
            })
        })
        .collect()
}

fn tcp_mask(f: &flow::TcpFlags) -> u16 {
    use record::tcp;
    let mut m = 0u16;
    for (set, bit) in [
        (f.fin, u16::from(tcp::FIN)),
        (f.syn, u16::from(tcp::SYN)),
        (f.rst, u16::from(tcp::RST)),
        (f.psh, u16::from(tcp::PSH)),
        (f.ack, u16::from(tcp::ACK)),
        (f.urg, u16::from(tcp::URG)),
        (f.ece, u16::from(tcp::ECE)),
        (f.cwr, u16::from(tcp::CWR)),
        // NS is not recorded: a filter asking for it matches nothing, as on a flow without it.
        (f.ns, 0x100),
    ] {
        if set {
            m |= bit;
        }
    }
    m
}

fn prefixes(values: &[String], path: &str) -> Result<Vec<Prefix>, FilterError> {
    values
        .iter()
        .enumerate()
        .map(|(j, s)| parse_prefix(s).ok_or_else(|| FilterError::invalid(format!("{path}[{j}]"), ip_error(s))))
        .collect()
}

fn ip_error(s: &str) -> String {
    if s.contains('/') {
        format!("{s:?} is not a CIDR (an address and a prefix length, e.g. 10.0.0.0/8 or fd00::/64)")
    } else {
        format!("{s:?} is neither an IP address nor a CIDR (e.g. 10.0.0.1, 10.0.0.0/8, fd00::1)")
    }
}

fn parse_prefix(s: &str) -> Option<Prefix> {
    let (addr, len) = if s.contains('/') {
        let net: ipnet::IpNet = s.parse().ok()?;
        (net.addr(), net.prefix_len())
    } else {
        let a: IpAddr = s.parse().ok()?;
        (a, if a.is_ipv4() { 32 } else { 128 })
    };
    let (version, bits) = record::pack(addr);
    let (width, all) = if version == 4 { (32, u128::from(u32::MAX)) } else { (128, u128::MAX) };
    // The top `len` bits of the address's width (a shift by the whole width is no bits).
    let mask = all.checked_shl(width - u32::from(len)).unwrap_or(0) & all;
    Some(Prefix { version, net: bits & mask, mask })
}

fn uuids(values: &[String], path: &str) -> Result<Vec<(String, u64)>, FilterError> {
    values
        .iter()
        .enumerate()
        .map(|(j, s)| {
            s.rsplit_once('/')
                .and_then(|(node, seq)| {
                    let digits = !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit());
                    let seq = if digits { seq.parse::<u64>().ok() } else { None };
                    seq.filter(|_| !node.is_empty()).map(|seq| (node.to_owned(), seq))
                })
                .ok_or_else(|| {
                    FilterError::invalid(
                        format!("{path}[{j}]"),
                        format!("{s:?} is not a Myelin flow id (NODE/SEQUENCE, as in a flow's uuid)"),
                    )
                })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Side predicates: pod, labels, workload, cluster; cached per dictionary id
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct PodFilter {
    namespace: String,
    prefix: String,
}

#[derive(Debug)]
struct SidePredicate {
    pods: Vec<PodFilter>,
    labels: Vec<Selector>,
    /// (name, kind); empty strings match anything.
    workloads: Vec<(String, String)>,
    clusters: Vec<String>,
    /// Per dictionary id: [`UNKNOWN`], [`YES`] or [`NO`].
    cache: Vec<u8>,
}

/// What a side without a dictionary entry looks like (nothing known).
static NO_DESC: EndpointDesc = EndpointDesc {
    endpoint_id: 0,
    identity: 0,
    cluster: String::new(),
    namespace: String::new(),
    pod_name: String::new(),
    labels: Vec::new(),
    workload: None,
    node: String::new(),
};

impl SidePredicate {
    fn new(
        pods: &[String],
        labels: &[String],
        workloads: &[flow::Workload],
        clusters: &[String],
        side: &str,
    ) -> Result<Option<Self>, FilterError> {
        if pods.is_empty() && labels.is_empty() && workloads.is_empty() && clusters.is_empty() {
            return Ok(None);
        }
        let pods = pods
            .iter()
            .enumerate()
            .map(|(j, s)| {
                let path = format!("{side}_pod[{j}]");
                let (ns, prefix) = pod_filter_parts(s);
                if s.is_empty() {
                    return Err(FilterError::invalid(path, "empty: expected [namespace/][pod-name-prefix]"));
                }
                if ns == Some("") && prefix.is_empty() {
                    return Err(FilterError::invalid(
                        path,
                        "\"/\" names no namespace and no pod: expected [namespace/][pod-name-prefix]",
                    ));
                }
                if prefix.contains('/') {
                    return Err(FilterError::invalid(
                        path,
                        format!("{s:?} has more than one '/': expected [namespace/][pod-name-prefix]"),
                    ));
                }
                Ok(PodFilter { namespace: ns.unwrap_or(DEFAULT_NAMESPACE).to_owned(), prefix: prefix.to_owned() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let labels = labels
            .iter()
            .enumerate()
            .map(|(j, s)| {
                Selector::parse(s).map_err(|e| {
                    FilterError::invalid(format!("{side}_label[{j}]"), format!("{s:?} is not a label selector: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let workloads = workloads.iter().map(|w| (w.name.clone(), w.kind.clone())).collect();
        for (j, c) in clusters.iter().enumerate() {
            if c.is_empty() {
                return Err(FilterError::invalid(format!("{side}_cluster_name[{j}]"), "empty: name a cluster"));
            }
        }
        Ok(Some(Self { pods, labels, workloads, clusters: clusters.to_vec(), cache: Vec::new() }))
    }

    /// The cached decision, or a new one.
    #[inline]
    fn matches(&mut self, id: u32, dict: &DictView) -> bool {
        match self.cache.get(id as usize) {
            Some(&YES) => true,
            Some(&NO) => false,
            _ => self.decide(id, dict),
        }
    }

    #[cold]
    #[inline(never)]
    fn decide(&mut self, id: u32, dict: &DictView) -> bool {
        let i = id as usize;
        let desc = dict.get(id);
        let yes = self.eval(desc.map_or(&NO_DESC, |d| d));
        // An id beyond this snapshot of the dictionary may be named by a later
        // one: decide it again then.
        if id == 0 || desc.is_some() {
            if self.cache.len() <= i {
                self.cache.resize((dict.len() + 1).max(i + 1), UNKNOWN);
            }
            self.cache[i] = if yes { YES } else { NO };
        }
        yes
    }

    fn eval(&self, d: &EndpointDesc) -> bool {
        if !self.pods.is_empty() {
            let named = !(d.namespace.is_empty() && d.pod_name.is_empty());
            if !named || !self.pods.iter().any(|p| p.namespace == d.namespace && d.pod_name.starts_with(&p.prefix)) {
                return false;
            }
        }
        if !self.clusters.is_empty() && !self.clusters.contains(&d.cluster) {
            return false;
        }
        if !self.workloads.is_empty() {
            let Some((name, kind)) = &d.workload else { return false };
            if !self.workloads.iter().any(|(n, k)| (n.is_empty() || n == name) && (k.is_empty() || k == kind)) {
                return false;
            }
        }
        if !self.labels.is_empty() {
            let labels = LabelSet::new(&d.labels);
            if !self.labels.iter().any(|s| s.matches(&labels)) {
                return false;
            }
        }
        true
    }
}

// ---------------------------------------------------------------------------
// Label selectors (Kubernetes syntax over Cilium's source:key=value labels)
// ---------------------------------------------------------------------------

/// One Cilium label, split.
#[derive(Clone, Copy, Debug)]
struct Label<'a> {
    source: &'a str,
    key: &'a str,
    value: &'a str,
}

impl<'a> Label<'a> {
    /// `source:key=value`, `source:key`, `key=value` (source "unspec"),
    /// `$key` (reserved), as Cilium parses them.
    fn parse(s: &'a str) -> Self {
        let (source, rest) = if let Some(rest) = s.strip_prefix('$') {
            ("reserved", rest)
        } else if let Some((source, rest)) = s.split_once(':') {
            (source, rest)
        } else if let Some(rest) = s.strip_prefix("reserved.") {
            ("reserved", rest)
        } else {
            ("unspec", s)
        };
        match rest.split_once('=') {
            Some(("", key)) if source == "reserved" => Self { source, key, value: "" },
            Some((key, value)) => Self { source, key, value },
            None => Self { source, key: rest, value: "" },
        }
    }
}

/// A side's labels, ordered by key (Cilium's order: a key asked for without a
/// source takes the first label with that key).
struct LabelSet<'a>(Vec<Label<'a>>);

impl<'a> LabelSet<'a> {
    fn new(labels: &'a [String]) -> Self {
        let mut v: Vec<Label<'a>> = labels.iter().map(|l| Label::parse(l)).collect();
        v.sort_by(|a, b| a.key.cmp(b.key));
        Self(v)
    }

    /// The value of the first label with `key` (and `source`, unless any).
    fn get(&self, source: Option<&str>, key: &str) -> Option<&'a str> {
        self.0.iter().find(|l| l.key == key && source.is_none_or(|s| s == l.source)).map(|l| l.value)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    /// None: any source (the key was given without one, or as `any:`).
    source: Option<String>,
    key: String,
    op: Op,
}

impl Requirement {
    fn matches(&self, labels: &LabelSet<'_>) -> bool {
        let value = labels.get(self.source.as_deref(), &self.key);
        match &self.op {
            Op::In(vs) => value.is_some_and(|v| vs.iter().any(|w| w == v)),
            Op::NotIn(vs) => value.is_none_or(|v| !vs.iter().any(|w| w == v)),
            Op::Exists => value.is_some(),
            Op::NotExists => value.is_none(),
            Op::Gt(n) => value.and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v > *n),
            Op::Lt(n) => value.and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v < *n),
        }
    }
}

/// A label selector: requirements that must all hold.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector(Vec<Requirement>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Not,
    Eq,
    NotEq,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
}

fn tokenize(s: &str) -> Vec<Token> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let (tok, len) = match c {
            _ if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            b'!' if b.get(i + 1) == Some(&b'=') => (Token::NotEq, 2),
            b'!' => (Token::Not, 1),
            b'=' if b.get(i + 1) == Some(&b'=') => (Token::Eq, 2),
            b'=' => (Token::Eq, 1),
            b'>' => (Token::Gt, 1),
            b'<' => (Token::Lt, 1),
            b'(' => (Token::Open, 1),
            b')' => (Token::Close, 1),
            b',' => (Token::Comma, 1),
            _ => {
                let end = b[i..]
                    .iter()
                    .position(|c| c.is_ascii_whitespace() || b"!=><(),".contains(c))
                    .map_or(b.len(), |p| i + p);
                (Token::Ident(s[i..end].to_owned()), end - i)
            }
        };
        out.push(tok);
        i += len;
    }
    out
}

const SELECTOR_FORMS: &str = "expected key, !key, key=value, key!=value, key in (v1,v2), key notin (v1,v2), \
     key>N or key<N, joined by commas; a key may carry a source such as k8s:";

impl Selector {
    fn parse(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Err(format!("empty ({SELECTOR_FORMS})"));
        }
        let tokens = tokenize(s);
        let mut p = Parser { tokens: &tokens, at: 0 };
        let mut reqs = Vec::new();
        loop {
            reqs.push(p.requirement()?);
            match p.next() {
                None => break,
                Some(Token::Comma) => {}
                Some(t) => return Err(format!("unexpected {} after a requirement ({SELECTOR_FORMS})", describe(t))),
            }
        }
        Ok(Self(reqs))
    }

    fn matches(&self, labels: &LabelSet<'_>) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }
}

fn describe(t: &Token) -> String {
    match t {
        Token::Ident(s) => format!("{s:?}"),
        Token::Not => "'!'".into(),
        Token::Eq => "'='".into(),
        Token::NotEq => "'!='".into(),
        Token::Gt => "'>'".into(),
        Token::Lt => "'<'".into(),
        Token::Open => "'('".into(),
        Token::Close => "')'".into(),
        Token::Comma => "','".into(),
    }
}

struct Parser<'t> {
    tokens: &'t [Token],
    at: usize,
}

impl<'t> Parser<'t> {
    fn next(&mut self) -> Option<&'t Token> {
        let t = self.tokens.get(self.at);
        self.at += 1;
        t
    }

    fn peek(&self) -> Option<&'t Token> {
        self.tokens.get(self.at)
    }

    fn key(&mut self) -> Result<(Option<String>, String), String> {
        match self.next() {
            Some(Token::Ident(k)) => split_key(k),
            Some(t) => Err(format!("expected a label key, found {} ({SELECTOR_FORMS})", describe(t))),
            None => Err(format!("expected a label key at the end ({SELECTOR_FORMS})")),
        }
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        if self.peek() == Some(&Token::Not) {
            self.at += 1;
            let (source, key) = self.key()?;
            return Ok(Requirement { source, key, op: Op::NotExists });
        }
        let (source, key) = self.key()?;
        let op = match self.peek() {
            None | Some(Token::Comma) => Op::Exists,
            Some(Token::Eq) => {
                self.at += 1;
                Op::In(vec![self.value(&key)?])
            }
            Some(Token::NotEq) => {
                self.at += 1;
                Op::NotIn(vec![self.value(&key)?])
            }
            Some(t @ (Token::Gt | Token::Lt)) => {
                self.at += 1;
                let v = self.value(&key)?;
                let n = v.parse::<i64>().map_err(|_| format!("{v:?} after {} is not an integer", describe(t)))?;
                if *t == Token::Gt {
                    Op::Gt(n)
                } else {
                    Op::Lt(n)
                }
            }
            Some(Token::Ident(w)) if w == "in" || w == "notin" => {
                self.at += 1;
                let values = self.values(&key)?;
                if w == "in" {
                    Op::In(values)
                } else {
                    Op::NotIn(values)
                }
            }
            Some(t) => return Err(format!("unexpected {} after key {key:?} ({SELECTOR_FORMS})", describe(t))),
        };
        Ok(Requirement { source, key, op })
    }

    /// A value after an operator; empty at the end or before a comma.
    fn value(&mut self, key: &str) -> Result<String, String> {
        match self.peek() {
            Some(Token::Ident(v)) => {
                self.at += 1;
                check_value(v)?;
                Ok(v.clone())
            }
            None | Some(Token::Comma) => Ok(String::new()),
            Some(t) => Err(format!("expected a value for key {key:?}, found {}", describe(t))),
        }
    }

    fn values(&mut self, key: &str) -> Result<Vec<String>, String> {
        if self.next() != Some(&Token::Open) {
            return Err(format!("expected '(' after in/notin of key {key:?}"));
        }
        let mut out = Vec::new();
        loop {
            match self.next() {
                Some(Token::Ident(v)) => {
                    check_value(v)?;
                    out.push(v.clone());
                    match self.next() {
                        Some(Token::Comma) => {}
                        Some(Token::Close) => break,
                        _ => return Err(format!("expected ',' or ')' in the values of key {key:?}")),
                    }
                }
                Some(Token::Close) if out.is_empty() => {
                    return Err(format!("the values of key {key:?} are empty: name at least one"))
                }
                _ => return Err(format!("expected a value or ')' in the values of key {key:?}")),
            }
        }
        Ok(out)
    }
}

/// `source:key` or `key` (any source); the key checked as a Kubernetes label key.
fn split_key(k: &str) -> Result<(Option<String>, String), String> {
    let (source, key) = match k.split_once(':') {
        Some((source, key)) => {
            if source.is_empty() || !source.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
                return Err(format!("{source:?} in {k:?} is not a label source (such as k8s, reserved, container)"));
            }
            (if source == "any" { None } else { Some(source.to_owned()) }, key)
        }
        None => (None, k),
    };
    check_key(key).map_err(|e| format!("{key:?} is not a label key: {e}"))?;
    Ok((source, key.to_owned()))
}

fn alnum_name(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// `[prefix/]name`: a DNS subdomain prefix, a name of at most 63 characters.
fn check_key(key: &str) -> Result<(), &'static str> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            let ok = !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|part| {
                    let b = part.as_bytes();
                    !b.is_empty()
                        && b[0].is_ascii_alphanumeric()
                        && b[b.len() - 1].is_ascii_alphanumeric()
                        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                });
            if !ok {
                return Err("the part before '/' must be a lowercase DNS name");
            }
            name
        }
        None => key,
    };
    if alnum_name(name, 63) {
        Ok(())
    } else {
        Err("at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit")
    }
}

fn check_value(v: &str) -> Result<(), String> {
    if v.is_empty() || alnum_name(v, 63) {
        Ok(())
    } else {
        Err(format!(
            "{v:?} is not a label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter \
             or digit)"
        ))
    }
}

// ---------------------------------------------------------------------------
// Node name patterns
// ---------------------------------------------------------------------------

/// One element (cluster or node) of a node name pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Elem {
    /// Any FQDN-like name.
    Any,
    /// Literal characters and `*` (any run of `[-.0-9a-z]`).
    Glob(Vec<u8>),
}

impl Elem {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let s = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
        if s.is_empty() {
            return Err("empty pattern".into());
        }
        if s.ends_with('.') {
            return Err("more than one trailing dot".into());
        }
        if let Some(c) = s.chars().find(|c| !matches!(c, '*' | '.' | '-' | '_' | '0'..='9' | 'a'..='z')) {
            return Err(format!("{c:?} is not allowed (letters, digits, '-', '_', '.', and '*' as a wildcard)"));
        }
        Ok(Self::Glob(s.into_bytes()))
    }

    fn matches(&self, text: &str) -> bool {
        match self {
            Self::Any => {
                !text.is_empty()
                    && text.split('.').all(|part| {
                        !part.is_empty() && part.bytes().all(|c| matches!(c, b'-' | b'_' | b'0'..=b'9' | b'a'..=b'z'))
                    })
            }
            Self::Glob(p) => glob(p, text.as_bytes()),
        }
    }
}

/// `*` matches any run of `[-.0-9a-z]`; every other byte matches itself.
fn glob(p: &[u8], t: &[u8]) -> bool {
    // ok[j]: p[..i] matches t[..j], row by row over i.
    let mut ok = vec![false; t.len() + 1];
    ok[0] = true;
    for &pc in p {
        if pc == b'*' {
            for j in 1..=t.len() {
                ok[j] = ok[j] || (ok[j - 1] && matches!(t[j - 1], b'-' | b'.' | b'0'..=b'9' | b'a'..=b'z'));
            }
        } else {
            for j in (1..=t.len()).rev() {
                ok[j] = ok[j - 1] && t[j - 1] == pc;
            }
            ok[0] = false;
        }
    }
    ok[t.len()]
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct NodePattern {
    cluster: Elem,
    node: Elem,
}

impl NodePattern {
    fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty pattern".into());
        }
        let elem = |e: &str| if e.is_empty() { Ok(Elem::Any) } else { Elem::parse(e) };
        let mut parts = s.split('/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(node), None, None) => Ok(Self { cluster: Elem::Any, node: elem(node)? }),
            (Some(cluster), Some(node), None) => Ok(Self { cluster: elem(cluster)?, node: elem(node)? }),
            _ => Err("more than one '/' (expected node or cluster/node)".into()),
        }
    }

    fn matches(&self, node_name: &str) -> bool {
        if node_name.is_empty() {
            return false;
        }
        let (cluster, node) = node_name.split_once('/').unwrap_or((DEFAULT_CLUSTER, node_name));
        self.cluster.matches(cluster) && self.node.matches(node)
    }
}

#[derive(Debug)]
struct NodeFilter {
    patterns: Vec<NodePattern>,
    /// The last node asked about and the answer (a query's records come from one or a few nodes).
    last: Option<(String, bool)>,
}

impl NodeFilter {
    fn matches(&mut self, node: &str) -> bool {
        if let Some((n, yes)) = &self.last {
            if n == node {
                return *yes;
            }
        }
        let yes = self.patterns.iter().any(|p| p.matches(node));
        self.last = Some((node.to_owned(), yes));
        yes
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::dict::Dictionary;
    use crate::record::{direction, flags, tcp, verdict};

    const NODE: &str = "node1";

    fn desc(ns: &str, pod: &str, identity: u32, labels: &[&str]) -> EndpointDesc {
        let mut labels: Vec<String> = labels.iter().map(|s| (*s).to_owned()).collect();
        labels.sort();
        EndpointDesc {
            identity,
            namespace: ns.into(),
            pod_name: pod.into(),
            labels,
            node: NODE.into(),
            ..EndpointDesc::default()
        }
    }

    /// 1 default/xwing, 2 default/tiefighter, 3 empire/deathstar-7f, 4 kube-system/coredns-1, 5 world.
    fn dict() -> Arc<DictView> {
        let d = Dictionary::new();
        let mut xwing = desc("default", "xwing", 1001, &["k8s:app=xwing", "k8s:class=fighter", "k8s:org=alliance"]);
        xwing.workload = Some(("xwing".into(), "Deployment".into()));
        xwing.cluster = "c1".into();
        d.intern(xwing);
        d.intern(desc("default", "tiefighter", 1002, &["k8s:class=fighter", "k8s:org=empire", "k8s:size=3"]));
        let mut ds = desc("empire", "deathstar-7f", 1003, &["k8s:app=deathstar", "container:app=moon", "k8s:size=9"]);
        ds.workload = Some(("deathstar".into(), "StatefulSet".into()));
        d.intern(ds);
        d.intern(desc("kube-system", "coredns-1", 1004, &["k8s:k8s-app=kube-dns"]));
        d.intern(desc("", "", 2, &["reserved:world"]));
        d.view()
    }

    /// A TCP SYN from default/xwing (10.0.0.1:40000) to empire/deathstar (10.0.1.9:80), forwarded.
    fn rec() -> FlowRecord {
        FlowRecord {
            seq: 7,
            src_ip: u128::from(0x0a00_0001u32),
            dst_ip: u128::from(0x0a00_0109u32),
            ip_version: 4,
            protocol: 6,
            src_port: 40000,
            dst_port: 80,
            tcp_flags: tcp::SYN,
            event_type: 4,
            sub_type: 0,
            verdict: verdict::FORWARDED,
            traffic_direction: direction::EGRESS,
            flags: flags::REPLY_KNOWN,
            src_identity: 1001,
            dst_identity: 1003,
            src_ep: 1,
            dst_ep: 3,
            ..FlowRecord::default()
        }
    }

    fn ff() -> flow::FlowFilter {
        flow::FlowFilter::default()
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn pass(w: &[flow::FlowFilter], b: &[flow::FlowFilter], r: &FlowRecord) -> bool {
        let mut f = FlowFilters::compile(w, b).unwrap();
        let d = dict();
        let first = f.matches(r, &d, NODE);
        // Cached decisions give the same answer.
        assert_eq!(f.matches(r, &d, NODE), first);
        first
    }

    /// One whitelist filter.
    fn wl(f: flow::FlowFilter, r: &FlowRecord) -> bool {
        pass(&[f], &[], r)
    }

    fn err(w: &[flow::FlowFilter], b: &[flow::FlowFilter]) -> FilterError {
        FlowFilters::compile(w, b).expect_err("filter should be refused")
    }

    fn assert_err(f: flow::FlowFilter, path: &str, kind: FilterErrorKind) -> String {
        let e = err(&[f], &[]);
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("whitelist[0].{path}: ")), "{path}: {msg}");
        assert_eq!(e.kind, kind, "{msg}");
        msg
    }

    #[test]
    fn no_filters_pass_everything() {
        let f = FlowFilters::compile(&[], &[]).unwrap();
        assert!(f.is_empty());
        assert!(pass(&[], &[], &rec()));
        assert!(pass(&[], &[], &FlowRecord::default()));
        // An empty FlowFilter matches every flow: as a whitelist it lets all through,
        // as a blacklist it hides all.
        assert!(!FlowFilters::compile(&[ff()], &[]).unwrap().is_empty());
        assert!(pass(&[ff()], &[], &rec()));
        assert!(!pass(&[], &[ff()], &rec()));
    }

    #[test]
    fn whitelist_or_blacklist_nor_and_within_a_filter() {
        let r = rec(); // xwing -> deathstar, FORWARDED, tcp
        let src = |p: &str| flow::FlowFilter { source_pod: strs(&[p]), ..ff() };
        let dst = |p: &str| flow::FlowFilter { destination_pod: strs(&[p]), ..ff() };
        // `hubble observe --pod xwing`: source OR destination.
        assert!(pass(&[src("xwing"), dst("xwing")], &[], &r));
        assert!(pass(&[src("deathstar"), dst("empire/deathstar")], &[], &r));
        assert!(!pass(&[src("tiefighter"), dst("tiefighter")], &[], &r));
        // `--from-pod xwing --to-pod empire/deathstar`: one filter, AND.
        let both = |s: &str, d: &str| flow::FlowFilter { source_pod: strs(&[s]), destination_pod: strs(&[d]), ..ff() };
        assert!(wl(both("xwing", "empire/deathstar"), &r));
        assert!(!wl(both("xwing", "empire/tie"), &r));
        assert!(!wl(both("tiefighter", "empire/deathstar"), &r));
        // Values of one field: OR.
        assert!(wl(flow::FlowFilter { source_pod: strs(&["tiefighter", "xwing"]), ..ff() }, &r));
        // `--verdict FORWARDED --not --to-pod empire/`: whitelist AND NOT blacklist.
        let fwd = flow::FlowFilter { verdict: vec![flow::Verdict::Forwarded as i32], ..ff() };
        assert!(pass(std::slice::from_ref(&fwd), &[], &r));
        assert!(!pass(std::slice::from_ref(&fwd), &[dst("empire/")], &r));
        assert!(pass(std::slice::from_ref(&fwd), &[dst("kube-system/")], &r));
        // Blacklist alone: NOR over its filters.
        assert!(!pass(&[], &[dst("kube-system/"), src("xwing")], &r));
        assert!(pass(&[], &[dst("kube-system/"), src("tiefighter")], &r));
        // `--not --verdict FORWARDED`.
        assert!(!pass(&[], &[fwd], &r));
        // Different fields in one filter: AND.
        let f = flow::FlowFilter { verdict: vec![flow::Verdict::Dropped as i32], source_pod: strs(&["xwing"]), ..ff() };
        assert!(!wl(f, &r));
    }

    #[test]
    fn ip_exact_and_cidr() {
        let r = rec();
        let ip = |s: &[&str]| flow::FlowFilter { source_ip: strs(s), ..ff() };
        let dip = |s: &[&str]| flow::FlowFilter { destination_ip: strs(s), ..ff() };
        assert!(wl(ip(&["10.0.0.1"]), &r));
        assert!(!wl(ip(&["10.0.0.2"]), &r));
        assert!(wl(ip(&["10.0.0.2", "10.0.0.1"]), &r));
        assert!(wl(ip(&["10.0.0.0/24"]), &r));
        assert!(wl(ip(&["10.0.0.77/24"]), &r), "host bits of a CIDR are ignored");
        assert!(wl(ip(&["0.0.0.0/0"]), &r));
        assert!(!wl(ip(&["10.0.1.0/24"]), &r));
        assert!(wl(ip(&["10.0.0.1/32"]), &r));
        assert!(wl(dip(&["10.0.1.0/24"]), &r));
        assert!(!wl(dip(&["10.0.0.0/24"]), &r));
        assert!(!wl(ip(&["::/0"]), &r), "an IPv6 CIDR does not match an IPv4 flow");
        let mut v6 = rec();
        v6.ip_version = 6;
        v6.src_ip = u128::from("fd00::1:2".parse::<std::net::Ipv6Addr>().unwrap());
        assert!(wl(ip(&["fd00::1:2"]), &v6));
        assert!(wl(ip(&["fd00:0:0::1:2"]), &v6), "addresses compare as addresses, not strings");
        assert!(wl(ip(&["fd00::/64"]), &v6));
        assert!(!wl(ip(&["fd01::/64"]), &v6));
        assert!(!wl(ip(&["0.0.0.0/0"]), &v6));
        let mut no_ip = rec();
        no_ip.ip_version = 0;
        no_ip.src_ip = 0;
        assert!(!wl(ip(&["0.0.0.0/0"]), &no_ip));
    }

    #[test]
    fn pods_prefix_and_namespace() {
        let r = rec();
        let src = |p: &[&str]| flow::FlowFilter { source_pod: strs(p), ..ff() };
        let dst = |p: &[&str]| flow::FlowFilter { destination_pod: strs(p), ..ff() };
        assert!(wl(src(&["xwing"]), &r), "no namespace: default");
        assert!(wl(src(&["default/xwing"]), &r));
        assert!(wl(src(&["default/xw"]), &r), "pod name prefix");
        assert!(wl(src(&["default/"]), &r), "namespace only");
        assert!(!wl(src(&["empire/"]), &r));
        assert!(!wl(src(&["wing"]), &r), "a prefix, not a substring");
        assert!(!wl(src(&["/xwing"]), &r), "an empty namespace is a namespace");
        assert!(!wl(dst(&["deathstar"]), &r), "deathstar is not in default");
        assert!(wl(dst(&["empire/death"]), &r));
        assert!(wl(dst(&["empire/deathstar-7f"]), &r));
        assert!(!wl(dst(&["empire/deathstar-7f0"]), &r));
        // A side with no pod and no namespace matches no pod filter.
        let mut world = rec();
        world.dst_ep = 5;
        assert!(!wl(dst(&["default/"]), &world));
        world.dst_ep = 0;
        assert!(!wl(dst(&["default/"]), &world));

        assert_eq!(pod_filter_parts("web"), (None, "web"));
        assert_eq!(pod_filter_parts("prod/"), (Some("prod"), ""));
        assert_eq!(pod_filter_parts("prod/web-"), (Some("prod"), "web-"));
        assert_eq!(pod_filter_parts("a/b/c"), (Some("a"), "b/c"));
    }

    #[test]
    fn label_selector_forms() {
        let r = rec(); // src xwing: k8s:app=xwing k8s:class=fighter k8s:org=alliance
        let src = |s: &[&str]| flow::FlowFilter { source_label: strs(s), ..ff() };
        let dst = |s: &[&str]| flow::FlowFilter { destination_label: strs(s), ..ff() };
        for (sel, want) in [
            ("k8s:app=xwing", true),
            ("app=xwing", true),
            ("any:app=xwing", true),
            ("app==xwing", true),
            ("container:app=xwing", false),
            ("k8s:app=tiefighter", false),
            ("app!=tiefighter", true),
            ("app!=xwing", false),
            ("nope!=x", true),
            ("app in (a, xwing)", true),
            ("app in (a,b)", false),
            ("app notin (a,b)", true),
            ("app notin (xwing)", false),
            ("app", true),
            ("k8s:app", true),
            ("container:app", false),
            ("!app", false),
            ("!size", true),
            ("!container:app", true),
            ("app=xwing,org=alliance", true),
            ("app=xwing, org=empire", false),
            ("  class = fighter ,app ", true),
        ] {
            assert_eq!(wl(src(&[sel]), &r), want, "{sel}");
        }
        // Values of the field: OR.
        assert!(wl(src(&["org=empire", "org=alliance"]), &r));
        // Numbers: tiefighter size=3, deathstar size=9.
        let mut t = rec();
        t.src_ep = 2;
        assert!(wl(src(&["size>2"]), &t));
        assert!(!wl(src(&["size>3"]), &t));
        assert!(wl(src(&["size<4"]), &t));
        assert!(!wl(src(&["size<1"]), &t));
        assert!(!wl(src(&["size>2"]), &r), "no such label");
        // Two sources with the same key: a source picks one, no source takes the first.
        assert!(wl(dst(&["container:app=moon"]), &r));
        assert!(wl(dst(&["k8s:app=deathstar"]), &r));
        assert!(wl(dst(&["app in (deathstar, moon)"]), &r));
        // Reserved labels.
        let mut w = rec();
        w.dst_ep = 5;
        assert!(wl(dst(&["reserved:world"]), &w));
        assert!(wl(dst(&["world"]), &w));
        assert!(!wl(dst(&["reserved:host"]), &w));
        // A side with no labels: only negative requirements hold.
        w.dst_ep = 0;
        assert!(wl(dst(&["!app"]), &w));
        assert!(!wl(dst(&["app"]), &w));
        // Keys with a prefix.
        let d = Dictionary::new();
        d.intern(desc("prod", "web", 9, &["k8s:app.kubernetes.io/name=web", "k8s:io.kubernetes.pod.namespace=prod"]));
        let view = d.view();
        let mut web = rec();
        web.src_ep = 1;
        for sel in ["app.kubernetes.io/name=web", "k8s:io.kubernetes.pod.namespace=prod", "io.kubernetes.pod.namespace"]
        {
            let mut f = FlowFilters::compile(&[src(&[sel])], &[]).unwrap();
            assert!(f.matches(&web, &view, NODE), "{sel}");
        }
    }

    #[test]
    fn cilium_label_parsing() {
        let l = Label::parse("k8s:app=web");
        assert_eq!((l.source, l.key, l.value), ("k8s", "app", "web"));
        let l = Label::parse("reserved:world");
        assert_eq!((l.source, l.key, l.value), ("reserved", "world", ""));
        let l = Label::parse("$host");
        assert_eq!((l.source, l.key, l.value), ("reserved", "host", ""));
        let l = Label::parse("app=web");
        assert_eq!((l.source, l.key, l.value), ("unspec", "app", "web"));
        let l = Label::parse("k8s:a=b=c");
        assert_eq!((l.source, l.key, l.value), ("k8s", "a", "b=c"));
    }

    #[test]
    fn identity_workload_cluster() {
        let r = rec();
        let f = |v: &[u32]| flow::FlowFilter { source_identity: v.to_vec(), ..ff() };
        assert!(wl(f(&[1001]), &r));
        assert!(wl(f(&[5, 1001]), &r));
        assert!(!wl(f(&[1003]), &r));
        assert!(wl(flow::FlowFilter { destination_identity: vec![1003], ..ff() }, &r));
        // The record's identity wins; without one, the dictionary's (as the flow shows).
        let mut other = rec();
        other.src_identity = 4242;
        assert!(!wl(f(&[1001]), &other));
        assert!(wl(f(&[4242]), &other));
        other.src_identity = 0;
        assert!(wl(f(&[1001]), &other));
        other.src_ep = 0;
        assert!(wl(f(&[0]), &other));

        let w = |name: &str, kind: &str| flow::Workload { name: name.into(), kind: kind.into() };
        let sw = |v: Vec<flow::Workload>| flow::FlowFilter { source_workload: v, ..ff() };
        assert!(wl(sw(vec![w("xwing", "Deployment")]), &r));
        assert!(wl(sw(vec![w("xwing", "")]), &r));
        assert!(wl(sw(vec![w("", "Deployment")]), &r));
        assert!(wl(sw(vec![w("", "")]), &r), "any workload");
        assert!(!wl(sw(vec![w("xwing", "StatefulSet")]), &r));
        assert!(wl(sw(vec![w("no", ""), w("", "Deployment")]), &r));
        assert!(wl(flow::FlowFilter { destination_workload: vec![w("deathstar", "StatefulSet")], ..ff() }, &r));
        let mut t = rec();
        t.src_ep = 2; // tiefighter: no workload
        assert!(!wl(sw(vec![w("", "")]), &t));

        let c = |v: &[&str]| flow::FlowFilter { source_cluster_name: strs(v), ..ff() };
        assert!(wl(c(&["c1"]), &r));
        assert!(wl(c(&["c0", "c1"]), &r));
        assert!(!wl(c(&["c2"]), &r));
        assert!(!wl(flow::FlowFilter { destination_cluster_name: strs(&["c1"]), ..ff() }, &r));
    }

    #[test]
    fn verdict_direction_drop_reason_ip_version() {
        let r = rec();
        let v = |v: &[flow::Verdict]| flow::FlowFilter { verdict: v.iter().map(|x| *x as i32).collect(), ..ff() };
        assert!(wl(v(&[flow::Verdict::Forwarded]), &r));
        assert!(!wl(v(&[flow::Verdict::Dropped]), &r));
        assert!(wl(v(&[flow::Verdict::Dropped, flow::Verdict::Forwarded]), &r));

        let d = |d: &[flow::TrafficDirection]| flow::FlowFilter {
            traffic_direction: d.iter().map(|x| *x as i32).collect(),
            ..ff()
        };
        assert!(wl(d(&[flow::TrafficDirection::Egress]), &r));
        assert!(!wl(d(&[flow::TrafficDirection::Ingress]), &r));

        let reason = |d: &[flow::DropReason]| flow::FlowFilter {
            drop_reason_desc: d.iter().map(|x| *x as i32).collect(),
            ..ff()
        };
        let mut dropped = rec();
        dropped.verdict = verdict::DROPPED;
        dropped.drop_reason = 133;
        assert!(wl(reason(&[flow::DropReason::PolicyDenied]), &dropped));
        assert!(!wl(reason(&[flow::DropReason::PolicyDeny]), &dropped));
        assert!(wl(reason(&[flow::DropReason::PolicyDeny, flow::DropReason::PolicyDenied]), &dropped));
        let mut fwd = dropped;
        fwd.verdict = verdict::FORWARDED;
        assert!(!wl(reason(&[flow::DropReason::PolicyDenied]), &fwd), "dropped flows only");

        let ipv =
            |v: &[flow::IpVersion]| flow::FlowFilter { ip_version: v.iter().map(|x| *x as i32).collect(), ..ff() };
        assert!(wl(ipv(&[flow::IpVersion::IPv4]), &r));
        assert!(!wl(ipv(&[flow::IpVersion::IPv6]), &r));
        let mut arp = rec();
        arp.ip_version = 0;
        assert!(wl(ipv(&[flow::IpVersion::IpNotUsed]), &arp));
        assert!(!wl(ipv(&[flow::IpVersion::IPv4, flow::IpVersion::IPv6]), &arp));
    }

    #[test]
    fn event_types() {
        let r = rec(); // trace (4), sub type 0
        let e = |ty: i32, m: bool, sub: i32| flow::EventTypeFilter { r#type: ty, match_sub_type: m, sub_type: sub };
        let f = |v: Vec<flow::EventTypeFilter>| flow::FlowFilter { event_type: v, ..ff() };
        assert!(wl(f(vec![e(4, false, 0)]), &r));
        assert!(wl(f(vec![e(4, false, 9)]), &r), "sub_type ignored without match_sub_type");
        assert!(wl(f(vec![e(4, true, 0)]), &r));
        assert!(!wl(f(vec![e(4, true, 3)]), &r));
        assert!(!wl(f(vec![e(1, false, 0)]), &r));
        assert!(wl(f(vec![e(1, false, 0), e(4, false, 0)]), &r));
        assert!(wl(f(vec![e(0, false, 0)]), &r), "type 0: any");
        assert!(wl(f(vec![e(0, true, 0)]), &r));
        assert!(!wl(f(vec![e(0, true, 1)]), &r));
        let mut drop = rec();
        drop.event_type = 1;
        drop.sub_type = 133;
        assert!(wl(f(vec![e(1, true, 133)]), &drop));
        assert!(!wl(f(vec![e(9, false, 0)]), &drop));
    }

    #[test]
    fn protocols_and_ports() {
        let p = |v: &[&str]| flow::FlowFilter { protocol: strs(v), ..ff() };
        let r = rec();
        assert!(wl(p(&["tcp"]), &r));
        assert!(wl(p(&["TCP"]), &r), "case-insensitive");
        assert!(!wl(p(&["udp"]), &r));
        assert!(wl(p(&["udp", "tcp"]), &r));
        let with = |proto: u8| FlowRecord { protocol: proto, ..rec() };
        assert!(wl(p(&["icmp"]), &with(1)));
        assert!(wl(p(&["icmp"]), &with(58)));
        assert!(wl(p(&["ICMPv4"]), &with(1)));
        assert!(!wl(p(&["icmpv4"]), &with(58)));
        assert!(wl(p(&["icmpv6"]), &with(58)));
        assert!(!wl(p(&["icmpv6"]), &with(1)));
        assert!(wl(p(&["sctp"]), &with(132)));
        assert!(wl(p(&["udp"]), &with(17)));
        assert!(wl(p(&["vrrp"]), &with(112)));
        assert!(wl(p(&["igmp"]), &with(2)));
        assert!(!wl(p(&["tcp"]), &with(0)));

        let sp = |v: &[&str]| flow::FlowFilter { source_port: strs(v), ..ff() };
        let dp = |v: &[&str]| flow::FlowFilter { destination_port: strs(v), ..ff() };
        assert!(wl(dp(&["80"]), &r));
        assert!(wl(dp(&["443", "080"]), &r));
        assert!(!wl(dp(&["40000"]), &r));
        assert!(wl(sp(&["40000"]), &r));
        assert!(!wl(sp(&["80"]), &r));
        assert!(wl(dp(&["80"]), &with(17)));
        assert!(wl(dp(&["80"]), &with(132)));
        let icmp = FlowRecord { protocol: 1, src_port: 0, dst_port: 0, ..rec() };
        assert!(!wl(dp(&["0"]), &icmp), "ICMP has no ports");
        let zero = FlowRecord { dst_port: 0, ..rec() };
        assert!(wl(dp(&["0"]), &zero));
    }

    #[test]
    fn tcp_flags() {
        let fl = |syn: bool, ack: bool, fin: bool| flow::TcpFlags { syn, ack, fin, ..flow::TcpFlags::default() };
        let f = |v: Vec<flow::TcpFlags>| flow::FlowFilter { tcp_flags: v, ..ff() };
        let synack = FlowRecord { tcp_flags: tcp::SYN | tcp::ACK, ..rec() };
        let syn = rec();
        assert!(wl(f(vec![fl(true, false, false)]), &syn));
        assert!(wl(f(vec![fl(true, false, false)]), &synack), "the flow may have more flags");
        assert!(!wl(f(vec![fl(true, true, false)]), &syn), "every flag of the entry");
        assert!(wl(f(vec![fl(true, true, false)]), &synack));
        assert!(!wl(f(vec![fl(false, false, true)]), &syn));
        assert!(wl(f(vec![fl(false, false, true), fl(true, false, false)]), &syn), "entries: OR");
        assert!(wl(f(vec![fl(false, false, false)]), &syn), "an empty entry: any TCP flow");
        assert!(!wl(f(vec![fl(false, false, false)]), &FlowRecord { protocol: 17, ..rec() }), "TCP only");
        let ns = flow::TcpFlags { ns: true, ..flow::TcpFlags::default() };
        assert!(!wl(f(vec![ns]), &synack), "NS is never recorded");
        let all = FlowRecord { tcp_flags: 0xff, ..rec() };
        let every = flow::TcpFlags {
            fin: true,
            syn: true,
            rst: true,
            psh: true,
            ack: true,
            urg: true,
            ece: true,
            cwr: true,
            ns: false,
        };
        assert!(wl(f(vec![every]), &all));
        assert!(!wl(f(vec![every]), &synack));
    }

    #[test]
    fn reply_and_encrypted() {
        let f = |v: &[bool]| flow::FlowFilter { reply: v.to_vec(), ..ff() };
        let request = rec(); // known, not a reply
        let reply = FlowRecord { flags: flags::REPLY_KNOWN | flags::REPLY, ..rec() };
        let unknown = FlowRecord { flags: 0, ..rec() };
        let unknown_drop = FlowRecord { flags: 0, verdict: verdict::DROPPED, ..rec() };
        assert!(wl(f(&[false]), &request));
        assert!(!wl(f(&[true]), &request));
        assert!(wl(f(&[true]), &reply));
        assert!(!wl(f(&[false]), &reply));
        assert!(wl(f(&[true, false]), &reply));
        assert!(!wl(f(&[false]), &unknown));
        assert!(!wl(f(&[true, false]), &unknown));
        assert!(wl(f(&[false]), &unknown_drop), "unknown counts as not a reply when dropped");
        assert!(!wl(f(&[true]), &unknown_drop));

        let e = |v: &[bool]| flow::FlowFilter { encrypted: v.to_vec(), ..ff() };
        assert!(wl(e(&[false]), &request));
        assert!(!wl(e(&[true]), &request));
        assert!(wl(e(&[true, false]), &request));
    }

    #[test]
    fn node_name_patterns() {
        let yes = |pattern: &str, node: &str| -> bool {
            let f = flow::FlowFilter { node_name: strs(&[pattern]), ..ff() };
            let mut c = FlowFilters::compile(&[f], &[]).unwrap();
            c.matches(&rec(), &dict(), node)
        };
        assert!(yes("node1", "node1"));
        assert!(!yes("node1", "node10"), "whole name");
        assert!(!yes("node", "node1"));
        assert!(yes("node*", "node1"));
        assert!(yes("node*", "node"));
        assert!(yes("*1", "node1"));
        assert!(yes("n*e*", "node1"));
        assert!(!yes("k8s*", "node1"));
        assert!(yes("default/node1", "node1"), "a node without a cluster is in cluster default");
        assert!(!yes("c1/node1", "node1"));
        assert!(yes("c1/node1", "c1/node1"));
        assert!(yes("node1", "c1/node1"), "no cluster in the pattern: any cluster");
        assert!(yes("/node1", "c1/node1"));
        assert!(yes("c*/", "c1/node1"));
        assert!(yes("c1/", "c1/anything.example"));
        assert!(!yes("c2/", "c1/node1"));
        assert!(yes("NODE1", "node1"), "patterns are lowercased");
        assert!(yes("node1.", "node1"), "one trailing dot is dropped");
        assert!(yes(" node1 ", "node1"));
        assert!(yes("*.example.com", "k8s1.example.com"));
        assert!(!yes("*.example.com", "k8s1.example.org"));
        assert!(!yes("node*", "node_1"), "'*' does not cover '_'");
        assert!(yes("node_*", "node_1"));
        assert!(!yes("node*", ""), "a flow without a node matches no pattern");
        // OR across patterns, and the per-node cache follows the node.
        let f = flow::FlowFilter { node_name: strs(&["a", "b*"]), ..ff() };
        let mut c = FlowFilters::compile(&[f], &[]).unwrap();
        let d = dict();
        let r = rec();
        assert!(c.matches(&r, &d, "a"));
        assert!(!c.matches(&r, &d, "c"));
        assert!(c.matches(&r, &d, "b2"));
        assert!(c.matches(&r, &d, "b2"));
        assert!(!c.matches(&r, &d, "c"));
        assert!(c.matches(&r, &d, "a"));
    }

    #[test]
    fn glob_matching() {
        assert!(glob(b"", b""));
        assert!(!glob(b"", b"a"));
        assert!(glob(b"*", b""));
        assert!(glob(b"*", b"a.b-c"));
        assert!(!glob(b"*", b"A"));
        assert!(!glob(b"a*c", b"aXc"), "'*' covers lowercase FQDN characters only");
        assert!(glob(b"a*c", b"a-x.9c"));
        assert!(glob(b"a*b*c", b"axxbyyc"));
        assert!(!glob(b"a*b*c", b"axxbyy"));
        assert!(glob(b"**", b"abc"));
    }

    #[test]
    fn uuids() {
        let f = |v: &[&str]| flow::FlowFilter { uuid: strs(v), ..ff() };
        let r = rec(); // seq 7 on node1
        assert!(wl(f(&["node1/7"]), &r));
        assert!(wl(f(&["node1/8", "node1/7"]), &r));
        assert!(!wl(f(&["node1/8"]), &r));
        assert!(!wl(f(&["node2/7"]), &r));
        let mut c = FlowFilters::compile(&[f(&["c1/node1/7"])], &[]).unwrap();
        assert!(c.matches(&r, &dict(), "c1/node1"));
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let s = || strs(&["x"]);
        let cases: Vec<(&str, flow::FlowFilter)> = vec![
            ("source_ip_xlated", flow::FlowFilter { source_ip_xlated: strs(&["10.0.0.1"]), ..ff() }),
            ("source_fqdn", flow::FlowFilter { source_fqdn: s(), ..ff() }),
            ("destination_fqdn", flow::FlowFilter { destination_fqdn: s(), ..ff() }),
            ("source_service", flow::FlowFilter { source_service: s(), ..ff() }),
            ("destination_service", flow::FlowFilter { destination_service: s(), ..ff() }),
            (
                "interface",
                flow::FlowFilter { interface: vec![flow::NetworkInterface { index: 1, name: "eth0".into() }], ..ff() },
            ),
            ("http_status_code", flow::FlowFilter { http_status_code: strs(&["404"]), ..ff() }),
            ("http_method", flow::FlowFilter { http_method: strs(&["GET"]), ..ff() }),
            ("http_path", flow::FlowFilter { http_path: strs(&["/"]), ..ff() }),
            ("http_url", flow::FlowFilter { http_url: s(), ..ff() }),
            (
                "http_header",
                flow::FlowFilter { http_header: vec![flow::HttpHeader { key: "a".into(), value: "b".into() }], ..ff() },
            ),
            ("dns_query", flow::FlowFilter { dns_query: s(), ..ff() }),
            ("node_labels", flow::FlowFilter { node_labels: s(), ..ff() }),
            ("trace_id", flow::FlowFilter { trace_id: s(), ..ff() }),
            ("ip_trace_id", flow::FlowFilter { ip_trace_id: vec![1], ..ff() }),
            (
                "experimental.cel_expression",
                flow::FlowFilter {
                    experimental: Some(flow::flow_filter::Experimental { cel_expression: strs(&["true"]) }),
                    ..ff()
                },
            ),
            ("protocol[1]", flow::FlowFilter { protocol: strs(&["tcp", "http"]), ..ff() }),
            ("protocol[0]", flow::FlowFilter { protocol: strs(&["DNS"]), ..ff() }),
        ];
        for (path, f) in cases {
            let msg = assert_err(f.clone(), path, FilterErrorKind::Unsupported);
            assert!(msg.contains("not supported by Myelin"), "{msg}");
            // In the blacklist too, with its own path.
            let e = err(&[ff()], &[ff(), f]);
            assert!(e.to_string().starts_with(&format!("blacklist[1].{path}: not supported by Myelin")), "{e}");
        }
        assert_eq!(
            err(&[], &[ff(), flow::FlowFilter { http_status_code: strs(&["5+"]), ..ff() }]).to_string(),
            "blacklist[1].http_status_code: not supported by Myelin (no L7 visibility)"
        );
        // An empty experimental message sets nothing.
        let f = flow::FlowFilter { experimental: Some(flow::flow_filter::Experimental::default()), ..ff() };
        assert!(wl(f, &rec()));
    }

    #[test]
    fn invalid_values_are_refused_by_path() {
        use FilterErrorKind::Invalid;
        let msg = assert_err(
            flow::FlowFilter { source_ip: strs(&["10.0.0.1", "10.0.0.300"]), ..ff() },
            "source_ip[1]",
            Invalid,
        );
        assert!(
            msg.starts_with(r#"whitelist[0].source_ip[1]: "10.0.0.300" is neither an IP address nor a CIDR"#),
            "{msg}"
        );
        let msg = assert_err(
            flow::FlowFilter { destination_ip: strs(&["10.0.0.0/33"]), ..ff() },
            "destination_ip[0]",
            Invalid,
        );
        assert!(msg.contains("is not a CIDR"), "{msg}");
        assert_err(flow::FlowFilter { source_ip: strs(&[""]), ..ff() }, "source_ip[0]", Invalid);
        assert_err(flow::FlowFilter { source_ip: strs(&["fd00::/129"]), ..ff() }, "source_ip[0]", Invalid);

        assert_err(flow::FlowFilter { source_pod: strs(&["ok", ""]), ..ff() }, "source_pod[1]", Invalid);
        assert_err(flow::FlowFilter { destination_pod: strs(&["a/b/c"]), ..ff() }, "destination_pod[0]", Invalid);
        assert_err(flow::FlowFilter { destination_pod: strs(&["/"]), ..ff() }, "destination_pod[0]", Invalid);

        for bad in [
            "",
            " ",
            "app in (a",
            "app in ()",
            "app in a",
            "app=(x)",
            "app=a b",
            "=x",
            "!",
            "app>x",
            "app<",
            "app,",
            ":app",
            "K8S:app",
            "k8s:",
            "bad key",
            "app=bad value!",
            "-app",
            "app=-x",
            "UPPER.example/x",
        ] {
            let msg = assert_err(flow::FlowFilter { source_label: strs(&[bad]), ..ff() }, "source_label[0]", Invalid);
            assert!(msg.contains("is not a label selector"), "{bad}: {msg}");
        }
        assert_err(
            flow::FlowFilter { destination_label: strs(&["a", "a in ("]), ..ff() },
            "destination_label[1]",
            Invalid,
        );

        for bad in ["http", "+80", "-1", "65536", "", " 80", "8o"] {
            let msg = assert_err(flow::FlowFilter { source_port: strs(&[bad]), ..ff() }, "source_port[0]", Invalid);
            assert!(msg.contains("is not a port number"), "{msg}");
        }
        assert_err(flow::FlowFilter { destination_port: strs(&["80", "x"]), ..ff() }, "destination_port[1]", Invalid);

        let msg = assert_err(flow::FlowFilter { protocol: strs(&["tcp", "foo"]), ..ff() }, "protocol[1]", Invalid);
        assert!(msg.contains("\"foo\" is not a protocol"), "{msg}");

        assert_err(flow::FlowFilter { verdict: vec![1, 99], ..ff() }, "verdict[1]", Invalid);
        assert_err(flow::FlowFilter { verdict: vec![-1], ..ff() }, "verdict[0]", Invalid);
        assert_err(flow::FlowFilter { traffic_direction: vec![3], ..ff() }, "traffic_direction[0]", Invalid);
        assert_err(flow::FlowFilter { ip_version: vec![3], ..ff() }, "ip_version[0]", Invalid);
        let msg =
            assert_err(flow::FlowFilter { drop_reason_desc: vec![133, 159], ..ff() }, "drop_reason_desc[1]", Invalid);
        assert!(msg.contains("159 is not a flow.DropReason value"), "{msg}");
        assert_err(flow::FlowFilter { drop_reason_desc: vec![1000], ..ff() }, "drop_reason_desc[0]", Invalid);

        assert_err(flow::FlowFilter { source_cluster_name: strs(&[""]), ..ff() }, "source_cluster_name[0]", Invalid);
        assert_err(
            flow::FlowFilter { destination_cluster_name: strs(&["a", ""]), ..ff() },
            "destination_cluster_name[1]",
            Invalid,
        );

        for bad in ["", "a/b/c", "node!", "UPPER_ok/x?", "node..", "./node", " "] {
            let msg = assert_err(flow::FlowFilter { node_name: strs(&[bad]), ..ff() }, "node_name[0]", Invalid);
            assert!(msg.contains("is not a node name pattern"), "{bad}: {msg}");
        }

        for bad in ["", "abc", "node1/", "/7", "node1/x", "node1/+7"] {
            let msg = assert_err(flow::FlowFilter { uuid: strs(&[bad]), ..ff() }, "uuid[0]", Invalid);
            assert!(msg.contains("is not a Myelin flow id"), "{bad}: {msg}");
        }

        // The first bad filter of a list is named.
        let e = err(&[ff(), ff(), flow::FlowFilter { source_port: strs(&["x"]), ..ff() }], &[]);
        assert!(e.to_string().starts_with("whitelist[2].source_port[0]: "), "{e}");
    }

    #[test]
    fn side_cache_follows_a_growing_dictionary() {
        let d = Dictionary::new();
        d.intern(desc("default", "a", 1, &[]));
        let old = d.view();
        let f = flow::FlowFilter { source_pod: strs(&["prod/web"]), ..ff() };
        let mut c = FlowFilters::compile(&[f], &[]).unwrap();
        let r = FlowRecord { src_ep: 2, ..rec() };
        // Id 2 is not in this snapshot yet: no match, and not remembered.
        assert!(!c.matches(&r, &old, NODE));
        d.intern(desc("prod", "web-1", 2, &[]));
        let new = d.view();
        assert!(c.matches(&r, &new, NODE));
        assert!(!c.matches(&FlowRecord { src_ep: 1, ..rec() }, &new, NODE));
        // Many ids: every decision cached and right.
        for i in 0..500 {
            d.intern(desc(if i % 2 == 0 { "prod" } else { "dev" }, &format!("web-{i}"), 10 + i, &[]));
        }
        let big = d.view();
        for round in 0..2 {
            for (id, e) in big.iter() {
                let r = FlowRecord { src_ep: id, ..rec() };
                assert_eq!(c.matches(&r, &big, NODE), e.namespace == "prod", "id {id} round {round}");
            }
        }
    }

    #[test]
    fn compile_matcher_is_the_service_filter() {
        let compiler = compile_matcher;
        let mut all = compiler(&[], &[]).unwrap();
        assert!(all(&rec(), &dict(), NODE));
        let mut dropped = compiler(&[flow::FlowFilter { verdict: vec![2], ..ff() }], &[]).unwrap();
        assert!(!dropped(&rec(), &dict(), NODE));
        let e = compiler(&[flow::FlowFilter { dns_query: strs(&["x"]), ..ff() }], &[]).err().unwrap();
        assert_eq!(e, "whitelist[0].dns_query: not supported by Myelin (no L7 visibility: DNS is not parsed)");
    }

    // -----------------------------------------------------------------------
    // The compiled filters against a reference: Hubble's rules applied to the
    // flow.Flow that the record becomes (flowpb::to_flow), on random records,
    // dictionaries and filters.
    // -----------------------------------------------------------------------

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
            &v[self.below(v.len())]
        }

        fn chance(&mut self, one_in: usize) -> bool {
            self.below(one_in) == 0
        }

        /// 0 to 2 picks.
        fn some<T: Clone>(&mut self, v: &[T]) -> Vec<T> {
            if !self.chance(4) {
                return Vec::new();
            }
            (0..1 + self.below(2)).map(|_| self.pick(v).clone()).collect()
        }
    }

    const NAMESPACES: &[&str] = &["default", "prod", ""];
    const PODS: &[&str] = &["web-1", "web-2", "db-0", ""];
    const LABELS: &[&str] =
        &["k8s:app=web", "k8s:app=db", "container:app=web", "k8s:tier=1", "k8s:tier=5", "reserved:world"];
    const IPS: &[u32] = &[0x0a00_0001, 0x0a00_0002, 0x0a00_0102, 0xc633_6401];

    fn random_dict(rng: &mut Rng) -> Arc<DictView> {
        let d = Dictionary::new();
        for i in 0..30 {
            let labels: Vec<&str> = LABELS.iter().copied().filter(|_| rng.chance(3)).collect();
            let ns = rng.pick::<&str>(NAMESPACES);
            let pod = rng.pick::<&str>(PODS);
            let mut e = desc(ns, pod, 1000 + (i % 7), &labels);
            if rng.chance(2) {
                e.workload =
                    Some(((*rng.pick(&["web", "db"])).into(), (*rng.pick(&["Deployment", "StatefulSet"])).into()));
            }
            e.cluster = (*rng.pick(&["", "c1"])).into();
            d.intern(e);
        }
        d.view()
    }

    fn random_record(rng: &mut Rng, dict_len: usize) -> FlowRecord {
        let ip_version = *rng.pick(&[4u8, 4, 4, 6, 0]);
        let ip = |rng: &mut Rng| match ip_version {
            4 => u128::from(*rng.pick(IPS)),
            6 => 0xfd00_u128 << 112 | rng.below(3) as u128,
            _ => 0,
        };
        let verdict = *rng.pick(&[verdict::FORWARDED, verdict::DROPPED, verdict::UNKNOWN]);
        FlowRecord {
            seq: rng.below(4) as u64,
            src_ip: ip(rng),
            dst_ip: ip(rng),
            ip_version,
            protocol: *rng.pick(&[6u8, 17, 1, 58, 132, 2]),
            src_port: *rng.pick(&[0u16, 80, 443]),
            dst_port: *rng.pick(&[0u16, 80, 443]),
            tcp_flags: rng.next() as u8,
            event_type: *rng.pick(&[1u8, 4, 5]),
            sub_type: *rng.pick(&[0u8, 3, 133]),
            verdict,
            drop_reason: if verdict == verdict::DROPPED { *rng.pick(&[133u8, 181, 0]) } else { 0 },
            traffic_direction: *rng.pick(&[0u8, 1, 2]),
            flags: *rng.pick(&[0u8, flags::REPLY_KNOWN, flags::REPLY_KNOWN | flags::REPLY]),
            src_identity: *rng.pick(&[0u32, 1000, 1003, 2]),
            dst_identity: *rng.pick(&[0u32, 1001, 1004]),
            src_ep: rng.below(dict_len + 1) as u32,
            dst_ep: rng.below(dict_len + 1) as u32,
            ..FlowRecord::default()
        }
    }

    fn random_filter(rng: &mut Rng) -> flow::FlowFilter {
        let s = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect::<Vec<_>>();
        let pods = ["web", "default/", "prod/web-1", "prod/", "/", "default/db", "/web"];
        let pods: Vec<&str> = pods.iter().copied().filter(|p| *p != "/").collect();
        let selectors =
            ["app=web", "k8s:app=web", "container:app", "!app", "tier>2", "app in (web,db),tier", "reserved:world"];
        let ips = ["10.0.0.1", "10.0.0.0/24", "10.0.0.0/16", "fd00::1", "fd00::/64", "198.51.100.1", "0.0.0.0/0"];
        flow::FlowFilter {
            uuid: s(rng.some(&["node1/1", "node1/2", "node2/1"])),
            source_ip: s(rng.some(&ips)),
            destination_ip: s(rng.some(&ips)),
            source_pod: s(rng.some(&pods)),
            destination_pod: s(rng.some(&pods)),
            source_label: s(rng.some(&selectors)),
            destination_label: s(rng.some(&selectors)),
            source_workload: rng
                .some(&[("web", ""), ("", "StatefulSet"), ("db", "Deployment"), ("", "")])
                .into_iter()
                .map(|(n, k)| flow::Workload { name: n.into(), kind: k.into() })
                .collect(),
            destination_workload: Vec::new(),
            source_cluster_name: s(rng.some(&["c1", "c2"])),
            destination_cluster_name: s(rng.some(&["c1"])),
            source_identity: rng.some(&[1000, 1003, 2, 0]),
            destination_identity: rng.some(&[1001, 1004, 1002]),
            traffic_direction: rng.some(&[0, 1, 2]),
            verdict: rng.some(&[0, 1, 2]),
            drop_reason_desc: rng.some(&[133, 181, 0]),
            event_type: rng
                .some(&[(1, false, 0), (4, true, 0), (0, true, 133), (9, false, 0)])
                .into_iter()
                .map(|(t, m, s)| flow::EventTypeFilter { r#type: t, match_sub_type: m, sub_type: s })
                .collect(),
            protocol: s(rng.some(&["tcp", "UDP", "icmp", "icmpv6", "sctp", "igmp"])),
            source_port: s(rng.some(&["80", "443", "0"])),
            destination_port: s(rng.some(&["80", "443"])),
            tcp_flags: rng
                .some(&[0x02u8, 0x12, 0x01, 0x00])
                .into_iter()
                .map(|m| flow::TcpFlags {
                    fin: m & tcp::FIN != 0,
                    syn: m & tcp::SYN != 0,
                    ack: m & tcp::ACK != 0,
                    ..flow::TcpFlags::default()
                })
                .collect(),
            ip_version: rng.some(&[0, 1, 2]),
            reply: rng.some(&[true, false]),
            encrypted: rng.some(&[true, false]),
            node_name: s(rng.some(&["node1", "node*", "default/node1", "c1/", "other"])),
            ..ff()
        }
    }

    /// Hubble's rules over a flow.Flow, written field by field from the flow
    /// (not from the record), except `igmp`: flowpb has no IGMP layer4 yet, so
    /// `ip_protocol` (the record's) stands in. Labels and node patterns reuse
    /// the parsers above, which have their own tests.
    #[allow(clippy::too_many_lines)]
    fn reference(f: &flow::FlowFilter, fl: &flow::Flow, ip_protocol: u8) -> bool {
        use flow::layer4::Protocol as P;
        let l4 = fl.l4.as_ref().and_then(|l| l.protocol.as_ref());
        let ip_str = |src: bool| {
            fl.ip.as_ref().map_or(String::new(), |ip| if src { ip.source.clone() } else { ip.destination.clone() })
        };
        let ip_ok = |filters: &[String], src: bool| {
            let ev = ip_str(src);
            if ev.is_empty() {
                return false;
            }
            let a: IpAddr = ev.parse().unwrap();
            filters.iter().any(|s| {
                if s.contains('/') {
                    s.parse::<ipnet::IpNet>().unwrap().contains(&a)
                } else {
                    s.parse::<IpAddr>().unwrap() == a
                }
            })
        };
        let src = fl.source.clone().unwrap_or_default();
        let dst = fl.destination.clone().unwrap_or_default();
        let pod_ok = |filters: &[String], ep: &flow::Endpoint| {
            if ep.namespace.is_empty() && ep.pod_name.is_empty() {
                return false;
            }
            filters.iter().any(|s| {
                let (ns, prefix) = match s.split_once('/') {
                    Some((ns, p)) => (ns, p),
                    None => ("default", s.as_str()),
                };
                ns == ep.namespace && ep.pod_name.starts_with(prefix)
            })
        };
        let label_ok = |filters: &[String], ep: &flow::Endpoint| {
            let set = LabelSet::new(&ep.labels);
            filters.iter().any(|s| Selector::parse(s).unwrap().matches(&set))
        };
        let workload_ok = |filters: &[flow::Workload], ep: &flow::Endpoint| {
            ep.workloads.iter().any(|w| {
                filters
                    .iter()
                    .any(|f| (f.name.is_empty() || f.name == w.name) && (f.kind.is_empty() || f.kind == w.kind))
            })
        };
        let port = |src: bool| match l4 {
            Some(P::Tcp(t)) => Some(if src { t.source_port } else { t.destination_port }),
            Some(P::Udp(t)) => Some(if src { t.source_port } else { t.destination_port }),
            Some(P::Sctp(t)) => Some(if src { t.source_port } else { t.destination_port }),
            _ => None,
        };
        let port_ok = |filters: &[String], src: bool| {
            port(src).is_some_and(|p| filters.iter().any(|s| s.parse::<u32>().unwrap() == p))
        };
        let checks: Vec<bool> = vec![
            f.uuid.is_empty() || f.uuid.contains(&fl.uuid),
            f.source_ip.is_empty() || ip_ok(&f.source_ip, true),
            f.destination_ip.is_empty() || ip_ok(&f.destination_ip, false),
            f.source_pod.is_empty() || pod_ok(&f.source_pod, &src),
            f.destination_pod.is_empty() || pod_ok(&f.destination_pod, &dst),
            f.source_label.is_empty() || label_ok(&f.source_label, &src),
            f.destination_label.is_empty() || label_ok(&f.destination_label, &dst),
            f.source_workload.is_empty() || workload_ok(&f.source_workload, &src),
            f.destination_workload.is_empty() || workload_ok(&f.destination_workload, &dst),
            f.source_cluster_name.is_empty() || f.source_cluster_name.contains(&src.cluster_name),
            f.destination_cluster_name.is_empty() || f.destination_cluster_name.contains(&dst.cluster_name),
            f.source_identity.is_empty() || f.source_identity.contains(&src.identity),
            f.destination_identity.is_empty() || f.destination_identity.contains(&dst.identity),
            f.traffic_direction.is_empty() || f.traffic_direction.contains(&fl.traffic_direction),
            f.verdict.is_empty() || f.verdict.contains(&fl.verdict),
            f.drop_reason_desc.is_empty()
                || (fl.verdict == flow::Verdict::Dropped as i32 && f.drop_reason_desc.contains(&fl.drop_reason_desc)),
            f.event_type.is_empty()
                || fl.event_type.as_ref().is_some_and(|e| {
                    f.event_type.iter().any(|t| {
                        (t.r#type == 0 || t.r#type == e.r#type) && (!t.match_sub_type || t.sub_type == e.sub_type)
                    })
                }),
            f.protocol.is_empty()
                || f.protocol.iter().any(|p| match (p.to_ascii_lowercase().as_str(), l4) {
                    ("tcp", Some(P::Tcp(_)))
                    | ("udp", Some(P::Udp(_)))
                    | ("sctp", Some(P::Sctp(_)))
                    | ("icmp" | "icmpv4", Some(P::IcmPv4(_)))
                    | ("icmp" | "icmpv6", Some(P::IcmPv6(_))) => true,
                    // flowpb has no IGMP layer4 yet: the IP protocol number decides.
                    ("igmp", None) => ip_protocol == 2,
                    _ => false,
                }),
            f.source_port.is_empty() || port_ok(&f.source_port, true),
            f.destination_port.is_empty() || port_ok(&f.destination_port, false),
            f.tcp_flags.is_empty()
                || match l4 {
                    Some(P::Tcp(t)) => t.flags.as_ref().is_some_and(|fl| {
                        f.tcp_flags.iter().any(|w| {
                            !(w.fin && !fl.fin
                                || w.syn && !fl.syn
                                || w.rst && !fl.rst
                                || w.psh && !fl.psh
                                || w.ack && !fl.ack
                                || w.urg && !fl.urg
                                || w.ece && !fl.ece
                                || w.cwr && !fl.cwr
                                || w.ns && !fl.ns)
                        })
                    }),
                    _ => false,
                },
            f.ip_version.is_empty() || f.ip_version.contains(&fl.ip.as_ref().map_or(0, |ip| ip.ip_version)),
            f.reply.is_empty()
                || match fl.is_reply {
                    Some(v) => f.reply.contains(&v),
                    None => fl.verdict == flow::Verdict::Dropped as i32 && f.reply.contains(&false),
                },
            f.encrypted.is_empty() || f.encrypted.contains(&fl.ip.as_ref().is_some_and(|ip| ip.encrypted)),
            f.node_name.is_empty() || f.node_name.iter().any(|p| NodePattern::parse(p).unwrap().matches(&fl.node_name)),
        ];
        checks.into_iter().all(|c| c)
    }

    #[test]
    fn compiled_filters_agree_with_hubble_rules_on_flows() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut passed = 0usize;
        let mut total = 0usize;
        for round in 0..300 {
            let d = random_dict(&mut rng);
            let whitelist: Vec<_> = (0..rng.below(3)).map(|_| random_filter(&mut rng)).collect();
            let blacklist: Vec<_> = (0..rng.below(2)).map(|_| random_filter(&mut rng)).collect();
            let mut compiled = FlowFilters::compile(&whitelist, &blacklist).unwrap();
            for _ in 0..300 {
                let r = random_record(&mut rng, d.len());
                let node = *rng.pick(&["node1", "node2", "c1/node1"]);
                let fl = crate::flowpb::to_flow(&r, &d, &|_| None, node);
                let want = (whitelist.is_empty() || whitelist.iter().any(|f| reference(f, &fl, r.protocol)))
                    && !blacklist.iter().any(|f| reference(f, &fl, r.protocol));
                assert_eq!(
                    compiled.matches(&r, &d, node),
                    want,
                    "round {round}\nrecord {r:?}\nflow {fl:?}\nwhitelist {whitelist:?}\nblacklist {blacklist:?}"
                );
                total += 1;
                passed += usize::from(want);
            }
        }
        // The random filters select neither nothing nor everything.
        assert!(passed > total / 20 && passed < total * 19 / 20, "{passed} of {total} passed");
    }
}
