//! Prometheus metrics of flows, with Hubble's names, labels and context
//! options, plus Myelin's own: TCP handshake latency per workload pair, flow
//! events per second, and the agent's gauges (endpoints, identities, policy
//! entries, BPF map pressure, flow ring use).
//!
//! ```text
//!  ingest thread                                    HTTP handler (axum, any thread)
//!  -------------                                    -------------------------------
//!  Metrics::observe(&FlowRecord)  (hot path)        MetricsHandle::encode()
//!    one hash-map update per flow, keyed by small      calls the AgentSource (gauges),
//!    integers (dictionary ids, enums, ports):          encodes the Registry
//!    no label strings, no prometheus-client            (families: a lock per family,
//!    family touched                                     held while that family encodes)
//!  Metrics::flush(&DictView)  (about once a second,
//!    from the pipeline's tick)
//!    new keys: names resolved once through the
//!    dictionary, the family's counter handle cached;
//!    known keys: one atomic add per counter
//! ```
//!
//! Folding happens on the ingest thread's one-second tick ([`MetricsSink`]),
//! not on scrape: a scrape sees counts at most about a second old, and never
//! waits for the ingest thread (the registry is shared read-only; counters are
//! atomics; families lock only while one label set is created or one family is
//! encoded).
//!
//! Configuration uses Hubble's syntax, one metric per entry (or several
//! separated by spaces): `name[:option=value[;option=value]...]`, e.g.
//! `drop:sourceContext=namespace;destinationContext=namespace`. Metrics:
//! `flow`, `drop`, `policy`, `tcp`, `port-distribution`, `icmp` (Hubble's) and
//! `handshake` (Myelin's). Options: `sourceContext`, `destinationContext`,
//! `sourceEgressContext`, `sourceIngressContext`, `destinationEgressContext`,
//! `destinationIngressContext` (values `identity`, `namespace`, `pod`,
//! `pod-name`, `pod-short`, `dns`, `ip`, `reserved-identity`, `workload`,
//! `workload-name`, `app`, several joined by `|`: the first non-empty wins; they
//! add a `source` / `destination` label) and `labelsContext` (a `,` list of
//! `source_ip`, `source_pod`, `source_namespace`, `source_workload`,
//! `source_workload_kind`, `source_app`, the same six with `destination_`, and
//! `traffic_direction`; each is a label of its own). Unlike Hubble, an unknown
//! option is an error, and a direction-specific context alone
//! (`sourceEgressContext` without `sourceContext`) still adds its label.
//!
//! Where Myelin differs from Hubble on purpose: `hubble_icmp_total` labels
//! ICMPv6 with `family="IPv6"` (Hubble says IPv4); the `dns` context is always
//! empty (no DNS visibility yet); `pod`/`pod-short` are empty for a side without
//! a pod (Hubble gives `namespace/`), so a `|` chain falls through to the next.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use crate::dict::{DictView, Dictionary, EndpointDesc};
use crate::flowpb::drop_reason_name;
use crate::pipeline::{Sink, Stats};
use crate::proto::flow;
use crate::record::{self, flags, tcp, verdict, FlowRecord};

/// Content type of [`MetricsHandle::encode`] (Prometheus text format 0.0.4).
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of [`MetricsHandle::encode_openmetrics`].
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the agent enables by default: every flow metric, no context labels.
pub const DEFAULT_METRICS: &[&str] = &["flow", "drop", "policy", "tcp", "port-distribution", "icmp", "handshake"];

/// The metrics the dashboards in `dashboards/` expect: flows, drops and policy
/// verdicts per workload pair (falling back to the pod, then the reserved
/// identity, for sides without a workload).
pub const DASHBOARD_METRICS: &[&str] = &[
    "flow:sourceContext=workload|pod|reserved-identity;destinationContext=workload|pod|reserved-identity",
    "drop:sourceContext=workload|pod|reserved-identity;destinationContext=workload|pod|reserved-identity",
    "policy:sourceContext=workload|pod|reserved-identity;destinationContext=workload|pod|reserved-identity",
    "tcp",
    "port-distribution",
    "icmp",
    "handshake",
];

/// Upper bounds of the handshake latency histogram, in microseconds (+Inf follows).
pub const HANDSHAKE_BUCKETS_US: [u32; 16] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
];
const NB: usize = HANDSHAKE_BUCKETS_US.len() + 1;

/// Settings of the metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Metrics and their options, Hubble's syntax (see the module docs).
    pub metrics: Vec<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { metrics: DEFAULT_METRICS.iter().map(|s| (*s).to_owned()).collect() }
    }
}

impl MetricsConfig {
    /// The configuration the dashboards in `dashboards/` are written for.
    #[must_use]
    pub fn for_dashboards() -> Self {
        Self { metrics: DASHBOARD_METRICS.iter().map(|s| (*s).to_owned()).collect() }
    }
}

/// A metrics configuration that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetricsError {
    #[error(
        "metrics {spec:?}: unknown metric {name:?}; Myelin exports flow, drop, policy, tcp, port-distribution, icmp \
         and handshake"
    )]
    UnknownMetric { spec: String, name: String },
    #[error(
        "metrics {spec:?}: {name:?} is a Hubble metric Myelin does not export yet; use flow, drop, policy, tcp, \
         port-distribution, icmp or handshake"
    )]
    Unsupported { spec: String, name: String },
    #[error("metrics {spec:?}: metric {name:?} is configured twice; give it once, with all its options")]
    Duplicate { spec: String, name: String },
    #[error("metrics {spec:?}: option {option:?}: {reason}")]
    Option { spec: String, option: String, reason: String },
}

// ---------------------------------------------------------------------------
// Context options
// ---------------------------------------------------------------------------

/// One way to name a side of a flow (`sourceContext=...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ctx {
    Identity,
    Namespace,
    Pod,
    PodName,
    PodShort,
    Dns,
    Ip,
    ReservedIdentity,
    Workload,
    WorkloadName,
    App,
}

const CTX_NAMES: &str = "identity, namespace, pod, pod-name, pod-short, dns, ip, reserved-identity, workload, \
                         workload-name, app";

impl Ctx {
    fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "identity" => Self::Identity,
            "namespace" => Self::Namespace,
            "pod" => Self::Pod,
            "pod-name" => Self::PodName,
            "pod-short" => Self::PodShort,
            "dns" => Self::Dns,
            "ip" => Self::Ip,
            "reserved-identity" => Self::ReservedIdentity,
            "workload" => Self::Workload,
            "workload-name" => Self::WorkloadName,
            "app" => Self::App,
            _ => return None,
        })
    }

    fn value(self, side: &Side<'_>) -> String {
        let d = side.desc;
        let with_ns = |name: &str| match d.map(|d| d.namespace.as_str()) {
            _ if name.is_empty() => String::new(),
            Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
            _ => name.to_owned(),
        };
        match self {
            Self::Identity => d.map(|d| d.labels.join(",")).unwrap_or_default(),
            Self::Namespace => d.map(|d| d.namespace.clone()).unwrap_or_default(),
            Self::Pod => with_ns(d.map_or("", |d| d.pod_name.as_str())),
            Self::PodName => d.map(|d| d.pod_name.clone()).unwrap_or_default(),
            Self::PodShort => with_ns(short_pod_name(d.map_or("", |d| d.pod_name.as_str()))),
            Self::Dns => String::new(),
            Self::Ip => side.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            Self::ReservedIdentity => d.map(|d| reserved_identity(&d.labels).to_owned()).unwrap_or_default(),
            Self::Workload => with_ns(workload(d).0),
            Self::WorkloadName => workload(d).0.to_owned(),
            Self::App => d.map(|d| app(&d.labels).to_owned()).unwrap_or_default(),
        }
    }

    fn needs_desc(self) -> bool {
        !matches!(self, Self::Ip | Self::Dns)
    }
}

/// `labelsContext` labels, in the order they are added.
const LABELS: [&str; 13] = [
    "source_ip",
    "source_pod",
    "source_namespace",
    "source_workload",
    "source_workload_kind",
    "source_app",
    "destination_ip",
    "destination_pod",
    "destination_namespace",
    "destination_workload",
    "destination_workload_kind",
    "destination_app",
    "traffic_direction",
];

/// A value computed from one side of a flow: a context chain (the first
/// non-empty value wins) or one field of `labelsContext` (0 ip, 1 pod,
/// 2 namespace, 3 workload, 4 workload kind, 5 app).
#[derive(Clone, Debug, PartialEq, Eq)]
enum SideFn {
    Chain(Vec<Ctx>),
    Field(usize),
}

impl SideFn {
    fn eval(&self, side: &Side<'_>) -> String {
        let d = side.desc;
        match self {
            Self::Chain(list) => list.iter().map(|c| c.value(side)).find(|v| !v.is_empty()).unwrap_or_default(),
            Self::Field(0) => side.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            Self::Field(1) => d.map(|d| d.pod_name.clone()).unwrap_or_default(),
            Self::Field(2) => d.map(|d| d.namespace.clone()).unwrap_or_default(),
            Self::Field(3) => workload(d).0.to_owned(),
            Self::Field(4) => workload(d).1.to_owned(),
            Self::Field(_) => d.map(|d| app(&d.labels).to_owned()).unwrap_or_default(),
        }
    }
}

/// Hubble's context options of one metric.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ContextOptions {
    source: Vec<Ctx>,
    source_egress: Vec<Ctx>,
    source_ingress: Vec<Ctx>,
    destination: Vec<Ctx>,
    destination_egress: Vec<Ctx>,
    destination_ingress: Vec<Ctx>,
    /// Indexes into [`LABELS`], sorted.
    labels: Vec<usize>,
}

impl ContextOptions {
    fn has_source(&self) -> bool {
        !(self.source.is_empty() && self.source_egress.is_empty() && self.source_ingress.is_empty())
    }

    fn has_destination(&self) -> bool {
        !(self.destination.is_empty() && self.destination_egress.is_empty() && self.destination_ingress.is_empty())
    }

    fn is_empty(&self) -> bool {
        !self.has_source() && !self.has_destination() && self.labels.is_empty()
    }

    fn all_ctx(&self) -> impl Iterator<Item = Ctx> + '_ {
        [
            &self.source,
            &self.source_egress,
            &self.source_ingress,
            &self.destination,
            &self.destination_egress,
            &self.destination_ingress,
        ]
        .into_iter()
        .flatten()
        .copied()
    }

    /// Whether the labels need the dictionary descriptions of the sides.
    fn needs_desc(&self) -> bool {
        self.all_ctx().any(Ctx::needs_desc) || self.labels.iter().any(|&i| !matches!(i, 0 | 6 | 12))
    }

    /// Whether the labels need the addresses.
    fn needs_ip(&self) -> bool {
        self.all_ctx().any(|c| c == Ctx::Ip) || self.labels.iter().any(|&i| matches!(i, 0 | 6))
    }

    /// The source- or destination-context chain that applies to a flow going `dir`.
    fn chain(plain: &[Ctx], ingress: &[Ctx], egress: &[Ctx], dir: u8) -> Vec<Ctx> {
        match dir {
            record::direction::INGRESS if !ingress.is_empty() => ingress.to_vec(),
            record::direction::EGRESS if !egress.is_empty() => egress.to_vec(),
            _ => plain.to_vec(),
        }
    }

    /// Every side value these options may ask for (to precompute per side).
    fn side_fns(&self) -> Vec<SideFn> {
        let mut out: Vec<SideFn> = Vec::new();
        let lists = [
            &self.source,
            &self.source_egress,
            &self.source_ingress,
            &self.destination,
            &self.destination_egress,
            &self.destination_ingress,
        ];
        let fns = lists
            .into_iter()
            .filter(|l| !l.is_empty())
            .map(|l| SideFn::Chain(l.clone()))
            .chain(self.labels.iter().filter(|&&i| i < 12).map(|&i| SideFn::Field(i % 6)));
        for f in fns {
            if !out.contains(&f) {
                out.push(f);
            }
        }
        out
    }

    /// Add the context labels of a flow going `dir`; `get(source, f)` computes a
    /// value of the source (true) or destination side. `invert` swaps the sides
    /// (for flows from the server to the client, like the SYN-ACK of a handshake).
    fn append(&self, out: &mut Labels, dir: u8, invert: bool, get: &dyn Fn(bool, &SideFn) -> String) {
        let get = |src: bool, f: &SideFn| get(src != invert, f);
        for &i in &self.labels {
            let v = match i {
                0..=5 => get(true, &SideFn::Field(i)),
                6..=11 => get(false, &SideFn::Field(i - 6)),
                _ => match dir {
                    record::direction::INGRESS => "ingress",
                    record::direction::EGRESS => "egress",
                    _ => "unknown",
                }
                .to_owned(),
            };
            out.push((LABELS[i], v));
        }
        if self.has_source() {
            let chain = Self::chain(&self.source, &self.source_ingress, &self.source_egress, dir);
            out.push(("source", get(true, &SideFn::Chain(chain))));
        }
        if self.has_destination() {
            let chain = Self::chain(&self.destination, &self.destination_ingress, &self.destination_egress, dir);
            out.push(("destination", get(false, &SideFn::Chain(chain))));
        }
    }

    /// Whether the labels depend on the direction of the flow.
    fn needs_dir(&self) -> bool {
        !(self.source_egress.is_empty()
            && self.source_ingress.is_empty()
            && self.destination_egress.is_empty()
            && self.destination_ingress.is_empty())
            || self.labels.contains(&12)
    }
}

/// `web-5d8f7-abcde` -> `web`: Hubble's `pod-short` drops one or two trailing
/// `-[a-z0-9]+` segments.
fn short_pod_name(name: &str) -> &str {
    let seg_ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let mut end = name.len();
    for _ in 0..2 {
        match name[..end].rfind('-') {
            Some(i) if i > 0 && seg_ok(&name[i + 1..end]) => end = i,
            _ => break,
        }
    }
    &name[..end]
}

fn reserved_identity(labels: &[String]) -> &str {
    if let Some(l) = labels.iter().find(|l| l.as_str() == "reserved:kube-apiserver") {
        return l;
    }
    labels.iter().find(|l| l.starts_with("reserved:")).map_or("", String::as_str)
}

fn app(labels: &[String]) -> &str {
    const KEYS: [&str; 3] = ["k8s:app.kubernetes.io/name=", "k8s:k8s-app=", "k8s:app="];
    for l in labels {
        for k in KEYS {
            if let Some(v) = l.strip_prefix(k) {
                if !v.is_empty() {
                    return v;
                }
            }
        }
    }
    ""
}

fn workload(d: Option<&EndpointDesc>) -> (&str, &str) {
    d.and_then(|d| d.workload.as_ref()).map_or(("", ""), |(name, kind)| (name.as_str(), kind.as_str()))
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Flow,
    Drop,
    Policy,
    Tcp,
    PortDistribution,
    Icmp,
    Handshake,
}

impl Kind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "flow" => Self::Flow,
            "drop" => Self::Drop,
            "policy" => Self::Policy,
            "tcp" => Self::Tcp,
            "port-distribution" => Self::PortDistribution,
            "icmp" => Self::Icmp,
            "handshake" => Self::Handshake,
            _ => return None,
        })
    }
}

/// Hubble metrics that exist but need what Myelin does not have yet (L7, DNS, ...).
const HUBBLE_NOT_YET: [&str; 9] =
    ["dns", "http", "httpV2", "kafka", "flows-to-world", "sctp", "flows-per-pod", "nld", "flows-per-node"];

fn parse_specs(entries: &[String]) -> Result<Vec<(Kind, ContextOptions)>, MetricsError> {
    let mut out: Vec<(Kind, ContextOptions)> = Vec::new();
    for spec in entries.iter().flat_map(|e| e.split_whitespace()) {
        let (name, options) = spec.split_once(':').unwrap_or((spec, ""));
        let kind = match Kind::parse(name) {
            Some(k) => k,
            None if HUBBLE_NOT_YET.contains(&name) => {
                return Err(MetricsError::Unsupported { spec: spec.to_owned(), name: name.to_owned() })
            }
            None => return Err(MetricsError::UnknownMetric { spec: spec.to_owned(), name: name.to_owned() }),
        };
        if out.iter().any(|(k, _)| *k == kind) {
            return Err(MetricsError::Duplicate { spec: spec.to_owned(), name: name.to_owned() });
        }
        let mut ctx = parse_options(spec, options)?;
        if kind == Kind::Handshake && ctx.is_empty() {
            // The handshake histogram is per workload pair unless told otherwise.
            let chain = vec![Ctx::Workload, Ctx::Pod, Ctx::ReservedIdentity];
            ctx.source = chain.clone();
            ctx.destination = chain;
        }
        out.push((kind, ctx));
    }
    Ok(out)
}

fn parse_options(spec: &str, options: &str) -> Result<ContextOptions, MetricsError> {
    let err = |option: &str, reason: String| MetricsError::Option {
        spec: spec.to_owned(),
        option: option.to_owned(),
        reason,
    };
    let mut o = ContextOptions::default();
    let mut seen: HashSet<String> = HashSet::new();
    for option in options.split(';').filter(|s| !s.is_empty()) {
        let Some((key, value)) = option.split_once('=') else {
            return Err(err(option, "expected key=value, e.g. sourceContext=namespace".into()));
        };
        if value.is_empty() {
            return Err(err(key, "empty value".into()));
        }
        let lower = key.to_ascii_lowercase();
        if !seen.insert(lower.clone()) {
            return Err(err(key, "given twice".into()));
        }
        let contexts = || -> Result<Vec<Ctx>, MetricsError> {
            value
                .split('|')
                .map(|c| {
                    Ctx::parse(c).ok_or_else(|| {
                        err(key, format!("unknown context {c:?}; expected one of {CTX_NAMES} (joined by \"|\")"))
                    })
                })
                .collect()
        };
        match lower.as_str() {
            "sourcecontext" => o.source = contexts()?,
            "sourceegresscontext" => o.source_egress = contexts()?,
            "sourceingresscontext" => o.source_ingress = contexts()?,
            "destinationcontext" => o.destination = contexts()?,
            "destinationegresscontext" => o.destination_egress = contexts()?,
            "destinationingresscontext" => o.destination_ingress = contexts()?,
            "labelscontext" => {
                let mut labels = Vec::new();
                for l in value.split(',') {
                    let Some(i) = LABELS.iter().position(|n| *n == l) else {
                        return Err(err(
                            key,
                            format!("unknown label {l:?}; expected one of {} (joined by \",\")", LABELS.join(", ")),
                        ));
                    };
                    if !labels.contains(&i) {
                        labels.push(i);
                    }
                }
                labels.sort_unstable();
                o.labels = labels;
            }
            _ => {
                return Err(err(
                    key,
                    "unknown option; expected sourceContext, destinationContext, sourceEgressContext, \
                     sourceIngressContext, destinationEgressContext, destinationIngressContext or labelsContext"
                        .into(),
                ))
            }
        }
    }
    Ok(o)
}

// ---------------------------------------------------------------------------
// Names of numbers (Hubble's label values)
// ---------------------------------------------------------------------------

/// Cilium's monitor event types (the datapath uses Cilium's numbers).
const EV_DROP: u8 = myelin_bpf::EVENT_DROP;
const EV_CAPTURE: u8 = 3;
const EV_TRACE: u8 = myelin_bpf::EVENT_TRACE;
const EV_POLICY_VERDICT: u8 = myelin_bpf::EVENT_POLICY_VERDICT;
const EV_ACCESS_LOG: u8 = 129;

fn verdict_name(v: u8) -> &'static str {
    flow::Verdict::try_from(i32::from(v)).map_or("VERDICT_UNKNOWN", |v| v.as_str_name())
}

/// `v1.FlowProtocol`: the L4 protocol of drop, trace, policy-verdict and capture events.
fn protocol_name(event_type: u8, protocol: u8) -> &'static str {
    match event_type {
        EV_DROP | EV_CAPTURE | EV_TRACE | EV_POLICY_VERDICT => match protocol {
            6 => "TCP",
            17 => "UDP",
            1 => "ICMPv4",
            58 => "ICMPv6",
            132 => "SCTP",
            _ => "Unknown L4",
        },
        EV_ACCESS_LOG => "Unknown L7",
        _ => "Unknown flow",
    }
}

/// Cilium's trace observation point names (the trace event's sub type).
fn obs_point_name(sub_type: u8) -> &'static str {
    match sub_type {
        0 => "to-endpoint",
        1 => "to-proxy",
        2 => "to-host",
        3 => "to-stack",
        4 => "to-overlay",
        5 => "from-endpoint",
        6 => "from-proxy",
        7 => "from-host",
        8 => "from-stack",
        9 => "from-overlay",
        10 => "from-network",
        11 => "to-network",
        12 => "from-crypto",
        13 => "to-crypto",
        _ => "",
    }
}

fn match_name(m: u8) -> &'static str {
    match m {
        0 => "none",
        1 => "l3-only",
        2 => "l3-l4",
        3 => "l4-only",
        4 => "all",
        _ => "unknown",
    }
}

fn direction_name(d: u8) -> &'static str {
    match d {
        record::direction::INGRESS => "ingress",
        record::direction::EGRESS => "egress",
        _ => "traffic_direction_unknown",
    }
}

/// An ICMP type and code as Hubble labels them (gopacket's names).
fn icmp_type_name(v6: bool, t: u8, c: u8) -> String {
    let (name, codes): (&str, &[&str]) = if v6 {
        match t {
            1 => (
                "DestinationUnreachable",
                &[
                    "NoRouteToDst",
                    "AdminProhibited",
                    "BeyondScopeOfSrc",
                    "AddressUnreachable",
                    "PortUnreachable",
                    "SrcAddressFailedPolicy",
                    "RejectRouteToDst",
                ],
            ),
            2 => ("PacketTooBig", &[]),
            3 => ("TimeExceeded", &["HopLimitExceeded", "FragmentReassemblyTimeExceeded"]),
            4 => ("ParameterProblem", &["ErroneousHeaderField", "UnrecognizedNextHeader", "UnrecognizedIPv6Option"]),
            128 => ("EchoRequest", &[]),
            129 => ("EchoReply", &[]),
            133 => ("RouterSolicitation", &[]),
            134 => ("RouterAdvertisement", &[]),
            135 => ("NeighborSolicitation", &[]),
            136 => ("NeighborAdvertisement", &[]),
            137 => ("Redirect", &[]),
            _ => return format!("{t}({c})"),
        }
    } else {
        match t {
            0 => ("EchoReply", &[]),
            3 => (
                "DestinationUnreachable",
                &[
                    "Net",
                    "Host",
                    "Protocol",
                    "Port",
                    "FragmentationNeeded",
                    "SourceRoutingFailed",
                    "NetUnknown",
                    "HostUnknown",
                    "SourceIsolated",
                    "NetAdminProhibited",
                    "HostAdminProhibited",
                    "NetTOS",
                    "HostTOS",
                    "CommAdminProhibited",
                    "HostPrecedence",
                    "PrecedenceCutoff",
                ],
            ),
            4 => ("SourceQuench", &[]),
            5 => ("Redirect", &["Net", "Host", "TOS+Net", "TOS+Host"]),
            8 => ("EchoRequest", &[]),
            9 => ("RouterAdvertisement", &[]),
            10 => ("RouterSolicitation", &[]),
            11 => ("TimeExceeded", &["TTLExceeded", "FragmentReassemblyTimeExceeded"]),
            12 => ("ParameterProblem", &["PointerIndicatesError", "MissingOption", "BadLength"]),
            13 => ("TimestampRequest", &[]),
            14 => ("TimestampReply", &[]),
            15 => ("InfoRequest", &[]),
            16 => ("InfoReply", &[]),
            17 => ("AddressMaskRequest", &[]),
            18 => ("AddressMaskReply", &[]),
            _ => return format!("{t}({c})"),
        }
    };
    match codes.get(usize::from(c)) {
        _ if codes.is_empty() && c == 0 => name.to_owned(),
        Some(code) => format!("{name}({code})"),
        None => format!("{name}(Code: {c})"),
    }
}

// ---------------------------------------------------------------------------
// Metric types of our own (implemented on prometheus-client's traits)
// ---------------------------------------------------------------------------

/// A histogram of handshake latencies with fixed buckets ([`HANDSHAKE_BUCKETS_US`]),
/// added to in batches (pre-aggregated bucket counts) and summed exactly in
/// microseconds.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram {
    inner: Arc<Mutex<HistogramData>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct HistogramData {
    /// Per bucket (not cumulative); the last one is +Inf.
    buckets: [u64; NB],
    sum_us: u64,
    count: u64,
}

impl HistogramData {
    fn observe(&mut self, us: u32) {
        let i = HANDSHAKE_BUCKETS_US.partition_point(|b| *b < us);
        self.buckets[i] += 1;
        self.sum_us += u64::from(us);
        self.count += 1;
    }

    fn add(&mut self, other: &Self) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum_us += other.sum_us;
        self.count += other.count;
    }
}

impl LatencyHistogram {
    fn add(&self, d: &HistogramData) {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).add(d);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let d = *self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut buckets = [(0.0, 0u64); NB];
        for (i, b) in buckets.iter_mut().enumerate() {
            let bound = HANDSHAKE_BUCKETS_US.get(i).map_or(f64::MAX, |us| f64::from(*us) / 1e6);
            *b = (bound, d.buckets[i]);
        }
        #[allow(clippy::cast_precision_loss)]
        let sum = d.sum_us as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, d.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A counter whose total is set from a cumulative count kept elsewhere (the
/// kernel's lost-event counters).
#[derive(Clone, Debug, Default)]
struct TotalCounter(Arc<AtomicU64>);

impl TypedMetric for TotalCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for TotalCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, u64, u64>(&self.0.load(Ordering::Relaxed), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

// ---------------------------------------------------------------------------
// Agent metrics
// ---------------------------------------------------------------------------

/// Fill level of one BPF map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapUse {
    pub name: String,
    pub entries: u64,
    pub max_entries: u64,
}

/// What the sockets of one pod sent and received (the cgroup_skb counters of its cgroups).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodTraffic {
    pub namespace: String,
    pub pod: String,
    pub ingress_packets: u64,
    pub ingress_bytes: u64,
    pub egress_packets: u64,
    pub egress_bytes: u64,
}

/// What the agent reports about itself at each scrape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentStats {
    /// Endpoints managed by this agent.
    pub endpoints: u64,
    /// Security identities known to this agent.
    pub identities: u64,
    /// Entries in the policy maps (all endpoints, both directions).
    pub policy_entries: u64,
    /// BPF maps and how full they are.
    pub maps: Vec<MapUse>,
    /// Flows in the in-memory ring, and its capacity.
    pub flow_ring_len: u64,
    pub flow_ring_capacity: u64,
    /// Socket traffic per pod (empty: cgroup accounting is off).
    pub pod_traffic: Vec<PodTraffic>,
}

/// Implemented by the agent: called at each scrape, on the HTTP handler's
/// thread. It should read published snapshots, not take locks the agent's
/// components hold for long.
pub trait AgentSource: Send + Sync {
    fn agent_stats(&self) -> AgentStats;
}

/// Where lost events were lost (Hubble's `source` label values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostSource {
    /// The datapath could not queue events to the agent (the BPF ring buffer was full).
    PerfEventRingBuffer,
    /// The agent dropped decoded events before the observer took them.
    ObserverEventsQueue,
    /// Flows overwritten in the in-memory ring before a reader got them.
    HubbleRingBuffer,
}

impl LostSource {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerfEventRingBuffer => "perf_event_ring_buffer",
            Self::ObserverEventsQueue => "observer_events_queue",
            Self::HubbleRingBuffer => "hubble_ring_buffer",
        }
    }
}

type Labels = Vec<(&'static str, String)>;
type F64Gauge = Gauge<f64, AtomicU64>;

/// What scrapes read: shared between the ingest thread and HTTP handlers.
struct Shared {
    registry: Registry,
    lost: Family<Labels, TotalCounter>,
    events_total: Counter,
    events_per_second: F64Gauge,
    endpoints: Gauge,
    identities: Gauge,
    policy_entries: Gauge,
    map_entries: Family<Labels, Gauge>,
    map_max_entries: Family<Labels, Gauge>,
    map_pressure: Family<Labels, F64Gauge>,
    ring_len: Gauge,
    ring_capacity: Gauge,
    pod_packets: Family<Labels, TotalCounter>,
    pod_bytes: Family<Labels, TotalCounter>,
    agent: RwLock<Option<Arc<dyn AgentSource>>>,
}

/// The shareable side of [`Metrics`]: encode for a scrape, set lost-event
/// counts and the agent's source of gauges. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct MetricsHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MetricsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsHandle").finish_non_exhaustive()
    }
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl MetricsHandle {
    /// Set the cumulative number of events lost at `source` (e.g. the kernel's
    /// per-CPU lost counters, summed). Exported as `hubble_lost_events_total{source}`.
    pub fn set_lost_events(&self, source: LostSource, total: u64) {
        self.shared.lost.get_or_create(&vec![("source", source.as_str().to_owned())]).0.store(total, Ordering::Relaxed);
    }

    /// The agent's gauges come from `source`, called at each scrape.
    pub fn set_agent_source(&self, source: Arc<dyn AgentSource>) {
        *self.shared.agent.write().unwrap_or_else(PoisonError::into_inner) = Some(source);
    }

    /// Set the agent's gauges once (instead of a source called at each scrape).
    pub fn set_agent_stats(&self, stats: &AgentStats) {
        self.apply_agent(stats);
    }

    fn apply_agent(&self, a: &AgentStats) {
        let s = &self.shared;
        s.endpoints.set(gauge_value(a.endpoints));
        s.identities.set(gauge_value(a.identities));
        s.policy_entries.set(gauge_value(a.policy_entries));
        s.ring_len.set(gauge_value(a.flow_ring_len));
        s.ring_capacity.set(gauge_value(a.flow_ring_capacity));
        for m in &a.maps {
            let l = vec![("map_name", m.name.clone())];
            s.map_entries.get_or_create(&l).set(gauge_value(m.entries));
            s.map_max_entries.get_or_create(&l).set(gauge_value(m.max_entries));
            #[allow(clippy::cast_precision_loss)]
            let pressure = if m.max_entries == 0 { 0.0 } else { m.entries as f64 / m.max_entries as f64 };
            s.map_pressure.get_or_create(&l).set(pressure);
        }
        // Pods come and go: their series with them.
        s.pod_packets.clear();
        s.pod_bytes.clear();
        for t in &a.pod_traffic {
            for (direction, packets, bytes) in
                [("ingress", t.ingress_packets, t.ingress_bytes), ("egress", t.egress_packets, t.egress_bytes)]
            {
                let l = vec![
                    ("namespace", t.namespace.clone()),
                    ("pod", t.pod.clone()),
                    ("direction", direction.to_owned()),
                ];
                s.pod_packets.get_or_create(&l).0.store(packets, Ordering::Relaxed);
                s.pod_bytes.get_or_create(&l).0.store(bytes, Ordering::Relaxed);
            }
        }
    }

    fn refresh_agent(&self) {
        let source = self.shared.agent.read().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(source) = source {
            self.apply_agent(&source.agent_stats());
        }
    }

    /// The OpenMetrics text of every metric (what prometheus-client writes).
    #[must_use]
    pub fn encode_openmetrics(&self) -> String {
        self.refresh_agent();
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.shared.registry) {
            tracing::warn!(error = %e, "encoding metrics failed; the scrape is incomplete");
        }
        out
    }

    /// The Prometheus text format (0.0.4) of every metric: what `promtool check
    /// metrics` checks and every Prometheus scrapes. Serve with [`TEXT_CONTENT_TYPE`].
    #[must_use]
    pub fn encode(&self) -> String {
        openmetrics_to_text(&self.encode_openmetrics())
    }

    /// The body and content type for a scrape that sent `accept`: OpenMetrics when
    /// the scraper asks for it (Prometheus does), else the text format.
    #[must_use]
    pub fn encode_for_accept(&self, accept: Option<&str>) -> (&'static str, String) {
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            (OPENMETRICS_CONTENT_TYPE, self.encode_openmetrics())
        } else {
            (TEXT_CONTENT_TYPE, self.encode())
        }
    }
}

/// OpenMetrics text -> Prometheus text 0.0.4: counter families are named with
/// their `_total` suffix, `# UNIT` and `# EOF` go.
fn openmetrics_to_text(om: &str) -> String {
    let counters: HashSet<&str> =
        om.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or(line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((tag, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) && !name.ends_with("_total") {
                    let _ = writeln!(out, "{tag}{name}_total {tail}");
                } else {
                    let _ = writeln!(out, "{line}");
                }
            }
            None => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The hot path
// ---------------------------------------------------------------------------

/// A fast hasher for the compact keys (multiply-rotate per word, randomly
/// seeded, 64-bit finaliser).
#[derive(Clone, Copy, Debug)]
struct Seeded(u64);

impl Seeded {
    fn new() -> Self {
        Self(std::collections::hash_map::RandomState::new().hash_one(0x6d79_656c_696e_u64))
    }
}

struct Mix(u64);

impl BuildHasher for Seeded {
    type Hasher = Mix;
    fn build_hasher(&self) -> Mix {
        Mix(self.0)
    }
}

impl Hasher for Mix {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    #[inline]
    fn write_u128(&mut self, v: u128) {
        #[allow(clippy::cast_possible_truncation)]
        self.write_u64(v as u64);
        self.write_u64((v >> 64) as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// What the metrics need from one flow, unpacked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sum {
    event_type: u8,
    /// The trace observation point (trace events only).
    sub_type: u8,
    verdict: u8,
    protocol: u8,
    /// Dropped flows only.
    drop_reason: u8,
    dir: u8,
    /// Policy verdicts only.
    match_type: u8,
    ip_version: u8,
    /// FIN, SYN, RST, and ACK with a SYN (TCP only).
    tcp_flags: u8,
    /// Destination port of a flow the port distribution counts (TCP, UDP, SCTP).
    port: u16,
    /// ICMP only.
    icmp_type: u8,
    icmp_code: u8,
    /// The source is the host (identity 1): the policy metric skips it, as Hubble does.
    src_host: bool,
    /// The port distribution counts the flow (forwarded or redirected, known not to be a reply, L4).
    port_counted: bool,
}

impl Sum {
    #[inline]
    fn of(r: &FlowRecord) -> Self {
        let fwd = r.verdict == verdict::FORWARDED || r.verdict == verdict::REDIRECTED;
        let not_reply = r.flags & (flags::REPLY_KNOWN | flags::REPLY) == flags::REPLY_KNOWN;
        let l4_port = matches!(r.protocol, 6 | 17 | 132);
        let icmp = matches!(r.protocol, 1 | 58);
        let port_counted = fwd && not_reply && (l4_port || icmp);
        let tcp_flags = if r.protocol == 6 {
            let f = r.tcp_flags & (tcp::FIN | tcp::SYN | tcp::RST);
            if f & tcp::SYN != 0 {
                f | (r.tcp_flags & tcp::ACK)
            } else {
                f
            }
        } else {
            0
        };
        Self {
            event_type: r.event_type,
            sub_type: if r.event_type == EV_TRACE { r.sub_type } else { 0 },
            verdict: r.verdict,
            protocol: r.protocol,
            drop_reason: if r.verdict == verdict::DROPPED { r.drop_reason } else { 0 },
            dir: r.traffic_direction,
            match_type: if r.event_type == EV_POLICY_VERDICT { r.match_type } else { 0 },
            ip_version: r.ip_version,
            tcp_flags,
            port: if port_counted && l4_port { r.dst_port } else { 0 },
            icmp_type: if icmp { r.icmp_type } else { 0 },
            icmp_code: if icmp { r.icmp_code } else { 0 },
            src_host: r.src_identity == 1,
            port_counted,
        }
    }

    #[inline]
    fn pack(&self) -> (u64, u64) {
        let w0 = u64::from(self.event_type)
            | (u64::from(self.sub_type) << 8)
            | (u64::from(self.verdict) << 16)
            | (u64::from(self.protocol) << 24)
            | (u64::from(self.drop_reason) << 32)
            | (u64::from(self.dir) << 40)
            | (u64::from(self.match_type) << 48)
            | (u64::from(self.ip_version) << 56);
        let w1 = u64::from(self.tcp_flags)
            | (u64::from(self.port) << 8)
            | (u64::from(self.icmp_type) << 24)
            | (u64::from(self.icmp_code) << 32)
            | (u64::from(self.src_host) << 40)
            | (u64::from(self.port_counted) << 41);
        (w0, w1)
    }

    fn unpack(w0: u64, w1: u64) -> Self {
        #[allow(clippy::cast_possible_truncation)]
        let port = (w1 >> 8) as u16;
        Self {
            event_type: byte(w0, 0),
            sub_type: byte(w0, 8),
            verdict: byte(w0, 16),
            protocol: byte(w0, 24),
            drop_reason: byte(w0, 32),
            dir: byte(w0, 40),
            match_type: byte(w0, 48),
            ip_version: byte(w0, 56),
            tcp_flags: byte(w1, 0),
            port,
            icmp_type: byte(w1, 24),
            icmp_code: byte(w1, 32),
            src_host: (w1 >> 40) & 1 != 0,
            port_counted: (w1 >> 41) & 1 != 0,
        }
    }

    fn forwarded(&self) -> bool {
        self.verdict == verdict::FORWARDED || self.verdict == verdict::REDIRECTED
    }
}

// Masks of the packed [`Sum`] words.
const M_EVENT: u64 = 0xff;
const M_SUB: u64 = 0xff << 8;
const M_VERDICT: u64 = 0xff << 16;
const M_PROTO: u64 = 0xff << 24;
const M_REASON: u64 = 0xff << 32;
const M_DIR: u64 = 0xff << 40;
const M_MATCH: u64 = 0xff << 48;
const M_IPV: u64 = 0xff << 56;
const M1_FLAGS: u64 = 0xff;
const M1_PORT: u64 = 0xffff << 8;
const M1_ICMP: u64 = 0xffff << 24;
const M1_HOST: u64 = 1 << 40;
const M1_PORT_COUNTED: u64 = 1 << 41;

#[allow(clippy::cast_possible_truncation)]
fn byte(w: u64, shift: u32) -> u8 {
    (w >> shift) as u8
}

/// The key of one group of metrics for one flow (24 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    /// The packed [`Sum`], masked to what the group's metrics need.
    w0: u64,
    w1: u64,
    /// The sides: `src << 32 | dst`, side classes ([`Mode::Class`]) or dictionary ids
    /// ([`Mode::Exact`]); 0 without context labels.
    b: u64,
}

impl Hash for Key {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(self.w0);
        h.write_u64(self.w1);
        h.write_u64(self.b);
    }
}

/// A key with the addresses ([`Mode::Exact`], and the handshake histogram).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ExactKey {
    k: Key,
    sip: u128,
    dip: u128,
}

impl Hash for ExactKey {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.k.hash(h);
        h.write_u128(self.sip);
        h.write_u128(self.dip);
    }
}

/// How a metric's keys name the sides of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// No label depends on the sides.
    Plain,
    /// Labels depend on the dictionary description only: sides are keyed by
    /// their class (sides with the same label values share one), so pods of one
    /// workload aggregate into one key.
    Class,
    /// Labels depend on addresses: sides are keyed by dictionary id and address.
    Exact,
}

fn mode_of(ctx: &ContextOptions) -> Mode {
    if ctx.needs_ip() {
        Mode::Exact
    } else if ctx.needs_desc() {
        Mode::Class
    } else {
        Mode::Plain
    }
}

/// A side class not known yet when the flow was observed: the dictionary id,
/// resolved at the next flush.
const PROVISIONAL: u32 = 1 << 31;

/// Side classes: the label values of each dictionary entry, computed once per
/// entry, and interned so that entries with equal values share a class.
struct Classes {
    /// The side values every class-mode metric may ask for.
    fns: Vec<SideFn>,
    /// Class of each dictionary id (index 0: no description, class 0).
    of: Vec<u32>,
    /// Values of each class, in `fns` order (class 0: no values, all empty).
    values: Vec<Vec<String>>,
    index: HashMap<Vec<String>, u32>,
}

impl Classes {
    #[inline]
    fn get(&self, id: u32) -> u32 {
        self.of.get(id as usize).copied().unwrap_or(PROVISIONAL | (id & !PROVISIONAL))
    }

    fn resolve(&self, class: u32) -> u32 {
        if class & PROVISIONAL == 0 {
            class
        } else {
            self.of.get((class & !PROVISIONAL) as usize).copied().unwrap_or(0)
        }
    }

    /// Classify the dictionary entries added since the last call.
    fn extend(&mut self, dict: &DictView) {
        while self.of.len() <= dict.len() {
            let id = u32::try_from(self.of.len()).unwrap_or(u32::MAX);
            let side = Side { desc: dict.get(id).map(AsRef::as_ref), ip: None };
            let values: Vec<String> = self.fns.iter().map(|f| f.eval(&side)).collect();
            let next = u32::try_from(self.values.len()).unwrap_or(u32::MAX);
            let class = *self.index.entry(values.clone()).or_insert(next);
            if class == next {
                self.values.push(values);
            }
            self.of.push(class);
        }
    }

    fn value(&self, class: u32, f: &SideFn) -> String {
        let i = self.fns.iter().position(|x| x == f);
        i.and_then(|i| self.values.get(self.resolve(class) as usize)?.get(i).cloned()).unwrap_or_default()
    }
}

/// One side of a flow, as labels see it.
struct Side<'a> {
    desc: Option<&'a EndpointDesc>,
    ip: Option<IpAddr>,
}

/// Computes the context labels of a key, whatever its mode.
#[allow(clippy::too_many_arguments)]
fn context_labels(
    ctx: &ContextOptions,
    mode: Mode,
    k: &ExactKey,
    dir: u8,
    ip_version: u8,
    invert: bool,
    classes: &Classes,
    dict: &DictView,
    out: &mut Labels,
) {
    #[allow(clippy::cast_possible_truncation)]
    let (src, dst) = ((k.k.b >> 32) as u32, k.k.b as u32);
    match mode {
        Mode::Plain => ctx.append(out, dir, invert, &|_, _| String::new()),
        Mode::Class => ctx.append(out, dir, invert, &|s, f| classes.value(if s { src } else { dst }, f)),
        Mode::Exact => {
            let side = |id: u32, ip: u128| Side {
                desc: dict.get(id).map(AsRef::as_ref),
                ip: if ip == 0 { None } else { record::addr(ip_version, ip) },
            };
            let (s, d) = (side(src, k.sip), side(dst, k.dip));
            ctx.append(out, dir, invert, &|is_src, f| f.eval(if is_src { &s } else { &d }));
        }
    }
}

/// Flows of one key since the last flush (16 bytes).
struct Slot {
    pending: u64,
    /// Flushes in a row without flows (the slot goes after [`IDLE_FLUSHES`]).
    idle: u32,
    /// Index of the key's counters in [`Pending::handles`] ([`NO_HANDLE`]: not resolved yet).
    handle: u32,
}

const NO_HANDLE: u32 = u32::MAX;

/// A key without flows for this many flushes (about seconds) is forgotten
/// (its series stay; a new flow re-resolves its names).
const IDLE_FLUSHES: u32 = 120;

/// Pre-aggregated counts per key, and the counters each key adds to once its
/// names are resolved.
struct Pending<K> {
    map: HashMap<K, Slot, Seeded>,
    handles: Vec<Option<Box<[Counter]>>>,
    free: Vec<u32>,
}

impl<K: Hash + Eq> Pending<K> {
    fn new() -> Self {
        Self { map: HashMap::with_hasher(Seeded::new()), handles: Vec::new(), free: Vec::new() }
    }

    #[inline]
    fn add(&mut self, k: K) {
        match self.map.get_mut(&k) {
            Some(slot) => slot.pending += 1,
            None => {
                self.map.insert(k, Slot { pending: 1, idle: 0, handle: NO_HANDLE });
            }
        }
    }

    /// Add the pending counts to their counters (resolving new keys), forget idle keys.
    fn fold(&mut self, resolve: impl Fn(&K) -> Box<[Counter]>) {
        let Self { map, handles, free } = self;
        map.retain(|k, slot| {
            if slot.pending == 0 {
                slot.idle += 1;
                if slot.idle <= IDLE_FLUSHES {
                    return true;
                }
                if let Some(h) = handles.get_mut(slot.handle as usize) {
                    *h = None;
                    free.push(slot.handle);
                }
                return false;
            }
            if slot.handle == NO_HANDLE {
                let h = Some(resolve(k));
                slot.handle = match free.pop() {
                    Some(i) => {
                        handles[i as usize] = h;
                        i
                    }
                    None => {
                        handles.push(h);
                        u32::try_from(handles.len() - 1).unwrap_or(NO_HANDLE)
                    }
                };
            }
            if let Some(Some(counters)) = handles.get(slot.handle as usize) {
                for c in counters.iter() {
                    c.inc_by(slot.pending);
                }
            }
            slot.pending = 0;
            slot.idle = 0;
            true
        });
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// One counter metric of Hubble's: its options and family.
struct CounterSpec {
    kind: Kind,
    ctx: ContextOptions,
    family: Family<Labels, Counter>,
}

impl CounterSpec {
    /// Whether the metric counts a flow.
    #[inline]
    fn counts(&self, s: &Sum) -> bool {
        match self.kind {
            Kind::Flow => true,
            Kind::Drop => s.verdict == verdict::DROPPED,
            Kind::Policy => s.event_type == EV_POLICY_VERDICT && !s.src_host,
            Kind::Tcp => s.tcp_flags & (tcp::FIN | tcp::SYN | tcp::RST) != 0 && s.forwarded() && s.ip_version != 0,
            Kind::PortDistribution => s.port_counted,
            Kind::Icmp => matches!(s.protocol, 1 | 58),
            Kind::Handshake => false,
        }
    }

    /// The parts of the packed [`Sum`] the metric's labels depend on.
    fn mask(&self) -> (u64, u64) {
        let dir = if self.ctx.needs_dir() { M_DIR } else { 0 };
        let (m0, m1) = match self.kind {
            Kind::Flow => (M_EVENT | M_SUB | M_VERDICT | M_PROTO, 0),
            Kind::Drop => (M_EVENT | M_VERDICT | M_PROTO | M_REASON, 0),
            Kind::Policy => (M_EVENT | M_VERDICT | M_DIR | M_MATCH, M1_HOST),
            Kind::Tcp => (M_VERDICT | M_PROTO | M_IPV, M1_FLAGS),
            Kind::PortDistribution => (M_PROTO, M1_PORT | M1_PORT_COUNTED),
            Kind::Icmp => (M_PROTO, M1_ICMP),
            Kind::Handshake => (0, 0),
        };
        (m0 | dir, m1)
    }

    /// Hubble's labels of a flow (without the context), one set per counter;
    /// none when the metric does not count it.
    fn base_labels(&self, f: &Sum) -> Vec<Labels> {
        if !self.counts(f) {
            return Vec::new();
        }
        let s = |v: &str| v.to_owned();
        match self.kind {
            Kind::Flow => {
                let (typ, subtype) = match f.event_type {
                    EV_DROP => ("Drop", String::new()),
                    EV_CAPTURE => ("Capture", String::new()),
                    EV_TRACE => ("Trace", s(obs_point_name(f.sub_type))),
                    EV_POLICY_VERDICT => ("PolicyVerdict", String::new()),
                    EV_ACCESS_LOG => ("L7", String::new()),
                    t => ("Unknown", t.to_string()),
                };
                vec![vec![
                    ("protocol", s(protocol_name(f.event_type, f.protocol))),
                    ("type", s(typ)),
                    ("subtype", subtype),
                    ("verdict", s(verdict_name(f.verdict))),
                ]]
            }
            Kind::Drop => vec![vec![
                ("reason", s(drop_reason_name(f.drop_reason))),
                ("protocol", s(protocol_name(f.event_type, f.protocol))),
            ]],
            Kind::Policy => vec![vec![
                ("direction", s(direction_name(f.dir))),
                ("match", s(match_name(f.match_type))),
                ("action", verdict_name(f.verdict).to_ascii_lowercase()),
            ]],
            Kind::Tcp => {
                let family = if f.ip_version == 6 { "IPv6" } else { "IPv4" };
                let mut names = Vec::new();
                if f.tcp_flags & tcp::FIN != 0 {
                    names.push("FIN");
                }
                if f.tcp_flags & tcp::SYN != 0 {
                    names.push(if f.tcp_flags & tcp::ACK != 0 { "SYN-ACK" } else { "SYN" });
                }
                if f.tcp_flags & tcp::RST != 0 {
                    names.push("RST");
                }
                names.into_iter().map(|n| vec![("flag", s(n)), ("family", s(family))]).collect()
            }
            Kind::PortDistribution => {
                let proto = match f.protocol {
                    6 => "TCP",
                    17 => "UDP",
                    132 => "SCTP",
                    1 => "ICMPv4",
                    _ => "ICMPv6",
                };
                vec![vec![("protocol", s(proto)), ("port", f.port.to_string())]]
            }
            Kind::Icmp => {
                let v6 = f.protocol == 58;
                vec![vec![
                    ("family", s(if v6 { "IPv6" } else { "IPv4" })),
                    ("type", icmp_type_name(v6, f.icmp_type, f.icmp_code)),
                ]]
            }
            Kind::Handshake => Vec::new(),
        }
    }
}

/// Metrics that share one pre-aggregation map: the same [`Mode`] (and, for
/// context modes, metrics whose key spaces do not multiply each other's).
struct Group {
    spec: GroupSpec,
    pending: Pending<Key>,
    exact: Pending<ExactKey>,
}

struct GroupSpec {
    mode: Mode,
    members: Vec<CounterSpec>,
    /// What the members need of the packed [`Sum`].
    mask: (u64, u64),
    /// Some member counts every flow (no need to ask each).
    all: bool,
}

impl Group {
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.pending.len() + self.exact.len()
    }
}

impl GroupSpec {
    fn resolve(&self, k: &ExactKey, classes: &Classes, dict: &DictView) -> Box<[Counter]> {
        let s = Sum::unpack(k.k.w0, k.k.w1);
        let mut out = Vec::new();
        for m in &self.members {
            for mut labels in m.base_labels(&s) {
                context_labels(&m.ctx, self.mode, k, s.dir, s.ip_version, false, classes, dict, &mut labels);
                out.push(m.family.get_or_create(&labels).clone());
            }
        }
        out.into_boxed_slice()
    }
}

struct HsSlot {
    pending: HistogramData,
    idle: u32,
    histogram: Option<LatencyHistogram>,
}

/// The handshake latency histogram (Myelin's).
struct HsMetric {
    ctx: ContextOptions,
    mode: Mode,
    need_dir: bool,
    family: Family<Labels, LatencyHistogram>,
    pending: HashMap<ExactKey, HsSlot, Seeded>,
}

/// The metrics of one node's flows. Owned by the ingest thread (`observe` is
/// the hot path); [`Metrics::handle`] is what HTTP handlers share.
pub struct Metrics {
    handle: MetricsHandle,
    groups: Vec<Group>,
    handshake: Option<HsMetric>,
    classes: Classes,
    /// Some metric keys sides by class.
    any_class: bool,
    observed: u64,
    last_flush: Instant,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: usize = self.groups.iter().map(|g| g.pending.len() + g.exact.len()).sum();
        f.debug_struct("Metrics").field("groups", &self.groups.len()).field("keys", &keys).finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics as `config` asks (every entry checked first: nothing is half-made).
    pub fn new(config: &MetricsConfig) -> Result<Self, MetricsError> {
        let specs = parse_specs(&config.metrics)?;
        let mut registry = Registry::default();
        let lost = Family::<Labels, TotalCounter>::default();
        registry.sub_registry_with_prefix("hubble").register(
            "lost_events",
            "Events lost before they became flows, by where they were lost",
            lost.clone(),
        );
        let mut groups: Vec<Group> = Vec::new();
        let mut handshake = None;
        let mut fns: Vec<SideFn> = Vec::new();
        for (kind, ctx) in specs {
            let mode = mode_of(&ctx);
            if mode == Mode::Class {
                for f in ctx.side_fns() {
                    if !fns.contains(&f) {
                        fns.push(f);
                    }
                }
            }
            let (name, help) = match kind {
                Kind::Flow => ("flows_processed", "Flows processed, by type, subtype, verdict and protocol"),
                Kind::Drop => ("drop", "Dropped flows, by drop reason and protocol"),
                Kind::Policy => ("policy_verdicts", "Network policy verdicts, by direction, match type and action"),
                Kind::Tcp => ("tcp_flags", "TCP flags seen in forwarded flows (SYN, SYN-ACK, FIN, RST)"),
                Kind::PortDistribution => {
                    ("port_distribution", "Forwarded flows that are not replies, by destination port")
                }
                Kind::Icmp => ("icmp", "ICMP messages, by family and type"),
                Kind::Handshake => {
                    let family = Family::<Labels, LatencyHistogram>::default();
                    registry.sub_registry_with_prefix("myelin").register_with_unit(
                        "tcp_handshake",
                        "TCP handshake latency measured in the datapath (SYN to SYN-ACK at the endpoint), by the \
                         connection's client (source) and server (destination)",
                        Unit::Seconds,
                        family.clone(),
                    );
                    let pending = HashMap::with_hasher(Seeded::new());
                    handshake = Some(HsMetric { need_dir: ctx.needs_dir(), ctx, mode, family, pending });
                    continue;
                }
            };
            let family = Family::<Labels, Counter>::default();
            registry.sub_registry_with_prefix("hubble").register(name, help, family.clone());
            let spec = CounterSpec { kind, ctx, family };
            // Plain metrics share one map (their keys have no sides: few combinations). With
            // sides, ports and TCP flags get maps of their own so they do not multiply the
            // other metrics' keys.
            let family_of = |k: Kind| match k {
                Kind::PortDistribution => 1,
                Kind::Tcp => 2,
                _ => 0,
            };
            let together = |g: &Group| {
                g.spec.mode == mode
                    && (mode == Mode::Plain || g.spec.members.iter().all(|m| family_of(m.kind) == family_of(kind)))
            };
            let (m0, m1) = spec.mask();
            let (m0, m1) = if mode == Mode::Exact { (m0 | M_IPV, m1) } else { (m0, m1) };
            let all = kind == Kind::Flow;
            match groups.iter_mut().find(|g| together(g)) {
                Some(g) => {
                    g.spec.mask = (g.spec.mask.0 | m0, g.spec.mask.1 | m1);
                    g.spec.all |= all;
                    g.spec.members.push(spec);
                }
                None => groups.push(Group {
                    spec: GroupSpec { mode, members: vec![spec], mask: (m0, m1), all },
                    pending: Pending::new(),
                    exact: Pending::new(),
                }),
            }
        }
        let myelin = registry.sub_registry_with_prefix("myelin");
        let events_total = Counter::default();
        myelin.register(
            "flow_events",
            "Flow events observed (every event, whatever metrics are enabled)",
            events_total.clone(),
        );
        let events_per_second = F64Gauge::default();
        myelin.register(
            "flow_events_per_second",
            "Flow events per second over the last second",
            events_per_second.clone(),
        );
        let endpoints = Gauge::default();
        myelin.register("endpoints", "Endpoints managed by this agent", endpoints.clone());
        let identities = Gauge::default();
        myelin.register("identities", "Security identities known to this agent", identities.clone());
        let policy_entries = Gauge::default();
        myelin.register("policy_entries", "Entries in the policy maps of all endpoints", policy_entries.clone());
        let map_entries = Family::<Labels, Gauge>::default();
        myelin.register("bpf_map_entries", "Entries in a BPF map", map_entries.clone());
        let map_max_entries = Family::<Labels, Gauge>::default();
        myelin.register("bpf_map_max_entries", "Capacity of a BPF map", map_max_entries.clone());
        let map_pressure = Family::<Labels, F64Gauge>::default();
        myelin.register("bpf_map_pressure", "Fill ratio of a BPF map (entries / capacity)", map_pressure.clone());
        let ring_len = Gauge::default();
        myelin.register("flow_ring_flows", "Flows held in the in-memory flow ring", ring_len.clone());
        let ring_capacity = Gauge::default();
        myelin.register("flow_ring_capacity", "Capacity of the in-memory flow ring", ring_capacity.clone());
        let pod_packets = Family::<Labels, TotalCounter>::default();
        myelin.register(
            "pod_socket_packets",
            "Packets sent (egress) and received (ingress) by the sockets of a pod's cgroups",
            pod_packets.clone(),
        );
        let pod_bytes = Family::<Labels, TotalCounter>::default();
        myelin.register(
            "pod_socket_bytes",
            "Bytes (IP packets) sent and received by the sockets of a pod's cgroups",
            pod_bytes.clone(),
        );

        let any_class = groups.iter().any(|g| g.spec.mode == Mode::Class)
            || handshake.as_ref().is_some_and(|h| h.mode == Mode::Class);
        let shared = Arc::new(Shared {
            registry,
            lost,
            events_total,
            events_per_second,
            endpoints,
            identities,
            policy_entries,
            map_entries,
            map_max_entries,
            map_pressure,
            ring_len,
            ring_capacity,
            pod_packets,
            pod_bytes,
            agent: RwLock::new(None),
        });
        let handle = MetricsHandle { shared };
        // Lost events are never silent: the series exists (at 0) from the start.
        handle.set_lost_events(LostSource::PerfEventRingBuffer, 0);
        Ok(Self {
            handle,
            groups,
            handshake,
            classes: Classes { fns, of: vec![0], values: vec![Vec::new()], index: HashMap::new() },
            any_class,
            observed: 0,
            last_flush: Instant::now(),
        })
    }

    /// What HTTP handlers share.
    #[must_use]
    pub fn handle(&self) -> MetricsHandle {
        self.handle.clone()
    }

    /// Count one flow (the hot path): one update of a small hash map keyed by
    /// integers per group of metrics (one group unless context labels are
    /// configured); no strings, no prometheus-client call.
    #[inline]
    pub fn observe(&mut self, r: &FlowRecord) {
        self.observed += 1;
        if self.groups.is_empty() && self.handshake.is_none() {
            return;
        }
        let sum = Sum::of(r);
        let (w0, w1) = sum.pack();
        let classes = if self.any_class {
            (u64::from(self.classes.get(r.src_ep)) << 32) | u64::from(self.classes.get(r.dst_ep))
        } else {
            0
        };
        for g in &mut self.groups {
            let spec = &g.spec;
            if !spec.all && !spec.members.iter().any(|m| m.counts(&sum)) {
                continue;
            }
            let (w0, w1) = (w0 & spec.mask.0, w1 & spec.mask.1);
            match spec.mode {
                Mode::Plain => g.pending.add(Key { w0, w1, b: 0 }),
                Mode::Class => g.pending.add(Key { w0, w1, b: classes }),
                Mode::Exact => g.exact.add(ExactKey {
                    k: Key { w0, w1, b: (u64::from(r.src_ep) << 32) | u64::from(r.dst_ep) },
                    sip: r.src_ip,
                    dip: r.dst_ip,
                }),
            }
        }
        if r.flags & flags::HANDSHAKE != 0 {
            if let Some(h) = &mut self.handshake {
                let dir = if h.need_dir { u64::from(r.traffic_direction) << 40 } else { 0 };
                let key = match h.mode {
                    Mode::Plain => ExactKey { k: Key { w0: dir, w1: 0, b: 0 }, sip: 0, dip: 0 },
                    Mode::Class => ExactKey { k: Key { w0: dir, w1: 0, b: classes }, sip: 0, dip: 0 },
                    Mode::Exact => ExactKey {
                        k: Key {
                            w0: dir | (u64::from(r.ip_version) << 56),
                            w1: 0,
                            b: (u64::from(r.src_ep) << 32) | u64::from(r.dst_ep),
                        },
                        sip: r.src_ip,
                        dip: r.dst_ip,
                    },
                };
                match h.pending.get_mut(&key) {
                    Some(slot) => slot.pending.observe(r.handshake_us),
                    None => {
                        let mut slot = HsSlot { pending: HistogramData::default(), idle: 0, histogram: None };
                        slot.pending.observe(r.handshake_us);
                        h.pending.insert(key, slot);
                    }
                }
            }
        }
    }

    /// Fold what was counted since the last flush into the registry. Call it
    /// about once a second on the thread that observes ([`MetricsSink`] does);
    /// `dict` names the sides of flows seen for the first time.
    pub fn flush(&mut self, dict: &DictView) {
        let now = Instant::now();
        let secs = now.duration_since(self.last_flush).as_secs_f64();
        let shared = &self.handle.shared;
        if secs > 0.0 {
            #[allow(clippy::cast_precision_loss)]
            shared.events_per_second.set(self.observed as f64 / secs);
        }
        shared.events_total.inc_by(self.observed);
        self.observed = 0;
        self.last_flush = now;
        if self.any_class {
            self.classes.extend(dict);
        }
        let classes = &self.classes;
        for g in &mut self.groups {
            let spec = &g.spec;
            g.pending.fold(|k| spec.resolve(&ExactKey { k: *k, sip: 0, dip: 0 }, classes, dict));
            g.exact.fold(|k| spec.resolve(k, classes, dict));
        }
        if let Some(h) = &mut self.handshake {
            let (ctx, mode, family) = (&h.ctx, h.mode, &h.family);
            h.pending.retain(|key, slot| {
                if slot.pending.count == 0 {
                    slot.idle += 1;
                    return slot.idle <= IDLE_FLUSHES;
                }
                let histogram = slot.histogram.get_or_insert_with(|| {
                    let mut labels = Labels::new();
                    let (dir, ipv) = (byte(key.k.w0, 40), byte(key.k.w0, 56));
                    // The SYN-ACK goes from the server to the client: name the client as the source.
                    context_labels(ctx, mode, key, dir, ipv, true, classes, dict, &mut labels);
                    family.get_or_create(&labels).clone()
                });
                histogram.add(&slot.pending);
                slot.pending = HistogramData::default();
                slot.idle = 0;
                true
            });
        }
    }

    /// See [`MetricsHandle::encode`].
    #[must_use]
    pub fn encode(&self) -> String {
        self.handle.encode()
    }

    /// See [`MetricsHandle::set_lost_events`].
    pub fn set_lost_events(&self, source: LostSource, total: u64) {
        self.handle.set_lost_events(source, total);
    }

    /// See [`MetricsHandle::set_agent_source`].
    pub fn set_agent_source(&self, source: Arc<dyn AgentSource>) {
        self.handle.set_agent_source(source);
    }
}

/// Metrics as a sink of the ingest pipeline: every batch is observed on the
/// ingest thread; the one-second tick sets the kernel's lost-event count and
/// folds into the registry.
pub struct MetricsSink {
    metrics: Metrics,
    dict: Arc<Dictionary>,
}

impl std::fmt::Debug for MetricsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsSink").field("metrics", &self.metrics).finish_non_exhaustive()
    }
}

impl MetricsSink {
    #[must_use]
    pub fn new(metrics: Metrics, dict: Arc<Dictionary>) -> Self {
        Self { metrics, dict }
    }
}

impl Sink for MetricsSink {
    fn batch(&mut self, records: &[FlowRecord]) {
        for r in records {
            self.metrics.observe(r);
        }
    }

    fn tick(&mut self, stats: &Stats) {
        self.metrics.set_lost_events(LostSource::PerfEventRingBuffer, stats.lost_kernel.load(Ordering::Relaxed));
        self.metrics.flush(&self.dict.view());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::float_cmp)]
mod tests {
    use super::*;
    use crate::testing::{parse_samples, sample_sum, sample_value, Sample, Synthetic};

    fn metrics(specs: &[&str]) -> Metrics {
        Metrics::new(&MetricsConfig { metrics: specs.iter().map(|s| (*s).to_owned()).collect() }).unwrap()
    }

    fn scrape(m: &Metrics) -> Vec<Sample> {
        parse_samples(&m.encode()).unwrap()
    }

    fn drop_tcp(src_ep: u32, dst_ep: u32) -> FlowRecord {
        FlowRecord {
            ip_version: 4,
            protocol: 6,
            tcp_flags: tcp::SYN,
            dst_port: 81,
            event_type: 1,
            sub_type: 133,
            verdict: verdict::DROPPED,
            drop_reason: 133,
            traffic_direction: record::direction::INGRESS,
            src_ep,
            dst_ep,
            src_identity: 1001,
            dst_identity: 1002,
            ..FlowRecord::default()
        }
    }

    #[test]
    fn ten_policy_drops_are_ten() {
        let mut m = metrics(&["drop", "flow"]);
        for _ in 0..10 {
            m.observe(&drop_tcp(0, 0));
        }
        // Nothing reaches the registry before a flush.
        assert_eq!(sample_sum(&scrape(&m), "hubble_drop_total", &[]), 0.0);
        m.flush(&DictView::default());
        let s = scrape(&m);
        assert_eq!(
            sample_value(&s, "hubble_drop_total", &[("reason", "POLICY_DENIED"), ("protocol", "TCP")]),
            Some(10.0)
        );
        assert_eq!(
            sample_value(
                &s,
                "hubble_flows_processed_total",
                &[("protocol", "TCP"), ("type", "Drop"), ("subtype", ""), ("verdict", "DROPPED")]
            ),
            Some(10.0)
        );
        // A second round adds to the same series (cached counters).
        for _ in 0..5 {
            m.observe(&drop_tcp(0, 0));
        }
        m.flush(&DictView::default());
        assert_eq!(
            sample_value(&scrape(&m), "hubble_drop_total", &[("reason", "POLICY_DENIED"), ("protocol", "TCP")]),
            Some(15.0)
        );
        assert_eq!(m.groups.iter().map(Group::keys).collect::<Vec<_>>(), [1]);
        assert_eq!(sample_value(&scrape(&m), "myelin_flow_events_total", &[]), Some(15.0));
    }

    #[test]
    fn a_known_stream_counts_exactly() {
        let mut syn = Synthetic::new();
        let mut m = metrics(DEFAULT_METRICS);
        let batches = 7u32;
        for _ in 0..batches {
            for r in syn.batch() {
                m.observe(&r);
            }
        }
        m.flush(&syn.dict.view());
        let s = scrape(&m);
        let n = f64::from(batches);
        let c = Synthetic::counts();
        #[allow(clippy::cast_precision_loss)]
        let per = |x: u64| x as f64 * n;
        assert_eq!(sample_sum(&s, "hubble_flows_processed_total", &[]), per(c.flows));
        assert_eq!(
            sample_value(&s, "hubble_drop_total", &[("reason", "POLICY_DENIED"), ("protocol", "TCP")]),
            Some(per(c.policy_denied_tcp_drops))
        );
        assert_eq!(sample_sum(&s, "hubble_drop_total", &[]), per(c.policy_denied_tcp_drops));
        // Traces: to-endpoint for most, to-stack for the ping out.
        let trace = |sub: &str, proto: &str| {
            sample_value(
                &s,
                "hubble_flows_processed_total",
                &[("protocol", proto), ("type", "Trace"), ("subtype", sub), ("verdict", "FORWARDED")],
            )
        };
        assert_eq!(trace("to-stack", "ICMPv4"), Some(n));
        assert_eq!(trace("to-endpoint", "ICMPv4"), Some(n));
        assert_eq!(trace("to-endpoint", "UDP"), Some(n));
        assert_eq!(trace("to-endpoint", "TCP"), Some(7.0 * n));
        // Policy verdicts: the allow and the default deny; the host's verdict is not counted.
        assert_eq!(
            sample_value(
                &s,
                "hubble_policy_verdicts_total",
                &[("direction", "ingress"), ("match", "l3-l4"), ("action", "forwarded")]
            ),
            Some(n)
        );
        assert_eq!(
            sample_value(
                &s,
                "hubble_policy_verdicts_total",
                &[("direction", "ingress"), ("match", "none"), ("action", "dropped")]
            ),
            Some(n)
        );
        assert_eq!(sample_sum(&s, "hubble_policy_verdicts_total", &[]), per(c.policy_verdicts));
        let flag = |f: &str| sample_value(&s, "hubble_tcp_flags_total", &[("flag", f), ("family", "IPv4")]);
        // Forwarded SYNs: client->web verdict + trace, web->db, host->web verdict + trace.
        assert_eq!(flag("SYN"), Some(5.0 * n));
        assert_eq!(flag("SYN-ACK"), Some(2.0 * n));
        assert_eq!(flag("FIN"), Some(n));
        assert_eq!(flag("RST"), None);
        // Ports of forwarded non-replies: 80 (verdict, SYN, ACK, FIN, host verdict, host SYN), 5432, UDP 53,
        // ICMP (the echo request; the reply is a reply).
        let port =
            |p: &str, n: &str| sample_value(&s, "hubble_port_distribution_total", &[("protocol", p), ("port", n)]);
        assert_eq!(port("TCP", "80"), Some(6.0 * n));
        assert_eq!(port("TCP", "5432"), Some(n));
        assert_eq!(port("UDP", "53"), Some(n));
        assert_eq!(port("ICMPv4", "0"), Some(n));
        assert_eq!(sample_sum(&s, "hubble_port_distribution_total", &[]), 9.0 * n);
        let icmp = |t: &str| sample_value(&s, "hubble_icmp_total", &[("family", "IPv4"), ("type", t)]);
        assert_eq!(icmp("EchoRequest"), Some(n));
        assert_eq!(icmp("EchoReply"), Some(n));
        // Handshakes, named client -> server.
        let hs = |src: &str, dst: &str| {
            sample_value(&s, "myelin_tcp_handshake_seconds_count", &[("source", src), ("destination", dst)])
        };
        assert_eq!(hs("default/client", "prod/web"), Some(n));
        assert_eq!(hs("prod/web", "prod/db"), Some(n));
        assert_eq!(sample_sum(&s, "myelin_tcp_handshake_seconds_count", &[]), per(c.handshakes));
        assert_eq!(sample_value(&s, "myelin_flow_events_total", &[]), Some(per(c.flows)));
    }

    #[test]
    fn context_options_change_labels() {
        let syn = Synthetic::new();
        let view = syn.dict.view();
        // Ids in the synthetic dictionary: 1 client (default), 2 web (prod), 3 db (prod), 4 world, 5 host.
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("drop", &[]),
            ("drop:sourceContext=namespace;destinationContext=namespace", &[("source", "default"), ("destination", "prod")]),
            ("drop:sourceContext=pod;destinationContext=pod-name", &[
                ("source", "default/client-7c9d5-xk2p4"),
                ("destination", "web-5d8f7-abcde"),
            ]),
            ("drop:sourceContext=pod-short;destinationContext=workload", &[
                ("source", "default/client"),
                ("destination", "prod/web"),
            ]),
            ("drop:sourceContext=workload-name;destinationContext=app", &[("source", "client"), ("destination", "web")]),
            ("drop:sourceContext=identity;destinationContext=ip", &[
                ("source", "k8s:app=client,k8s:io.kubernetes.pod.namespace=default"),
                ("destination", "10.0.1.20"),
            ]),
            ("drop:destinationContext=dns|ip", &[("destination", "10.0.1.20")]),
            // Direction-specific contexts win for their direction (this flow is ingress).
            ("drop:sourceContext=namespace;sourceIngressContext=pod-name;sourceEgressContext=app", &[(
                "source",
                "client-7c9d5-xk2p4",
            )]),
            ("drop:sourceEgressContext=app", &[("source", "")]),
            ("drop:labelsContext=source_namespace,destination_workload,destination_workload_kind,traffic_direction", &[
                ("source_namespace", "default"),
                ("destination_workload", "web"),
                ("destination_workload_kind", "Deployment"),
                ("traffic_direction", "ingress"),
            ]),
            ("drop:labelsContext=source_ip,source_pod,source_app,destination_ip,destination_namespace,destination_pod,destination_app,source_workload,source_workload_kind", &[
                ("source_ip", "10.0.1.10"),
                ("source_pod", "client-7c9d5-xk2p4"),
                ("source_app", "client"),
                ("source_workload", "client"),
                ("source_workload_kind", "Deployment"),
                ("destination_ip", "10.0.1.20"),
                ("destination_namespace", "prod"),
                ("destination_pod", "web-5d8f7-abcde"),
                ("destination_app", "web"),
            ]),
        ];
        for (spec, ctx) in cases {
            let mut m = metrics(&[spec]);
            let mut r = drop_tcp(1, 2);
            r.src_ip = v4("10.0.1.10");
            r.dst_ip = v4("10.0.1.20");
            m.observe(&r);
            m.flush(&view);
            let mut want: Vec<(&str, &str)> = vec![("reason", "POLICY_DENIED"), ("protocol", "TCP")];
            want.extend_from_slice(ctx);
            assert_eq!(sample_value(&scrape(&m), "hubble_drop_total", &want), Some(1.0), "{spec}: {}", m.encode());
        }
        // A chain falls through empty values: the world has no workload or pod.
        let mut m = metrics(&["drop:destinationContext=workload|pod|reserved-identity"]);
        m.observe(&drop_tcp(1, 4));
        m.observe(&drop_tcp(1, 2));
        m.flush(&view);
        let s = scrape(&m);
        let d = |dst: &str| {
            sample_value(
                &s,
                "hubble_drop_total",
                &[("reason", "POLICY_DENIED"), ("protocol", "TCP"), ("destination", dst)],
            )
        };
        assert_eq!(d("reserved:world"), Some(1.0));
        assert_eq!(d("prod/web"), Some(1.0));
    }

    fn v4(s: &str) -> u128 {
        record::pack(s.parse().unwrap()).1
    }

    #[test]
    fn pods_of_a_workload_share_a_key_and_idle_keys_go() {
        let dict = Dictionary::new();
        let web = |pod: &str| EndpointDesc {
            namespace: "prod".into(),
            pod_name: pod.into(),
            workload: Some(("web".into(), "Deployment".into())),
            ..EndpointDesc::default()
        };
        let client =
            dict.intern(EndpointDesc { namespace: "default".into(), pod_name: "c".into(), ..Default::default() });
        let (w1, w2) = (dict.intern(web("web-1")), dict.intern(web("web-2")));
        let mut m = metrics(&["flow:sourceContext=workload|pod;destinationContext=workload"]);
        let flow = |dst| FlowRecord { src_ep: client, dst_ep: dst, event_type: 4, verdict: 1, ..FlowRecord::default() };
        let value = |m: &Metrics| {
            sample_sum(
                &scrape(m),
                "hubble_flows_processed_total",
                &[("source", "default/c"), ("destination", "prod/web")],
            )
        };
        // Before the first flush the sides are not classified yet: one provisional key per pod.
        m.observe(&flow(w1));
        m.observe(&flow(w2));
        assert_eq!(m.groups[0].keys(), 2);
        m.flush(&dict.view());
        assert_eq!(value(&m), 2.0);
        // Then both pods are one class: one more key, whatever the pod.
        for _ in 0..10 {
            m.observe(&flow(w1));
            m.observe(&flow(w2));
        }
        assert_eq!(m.groups[0].keys(), 3);
        m.flush(&dict.view());
        assert_eq!(value(&m), 22.0);
        // Keys without flows go after IDLE_FLUSHES flushes; their series stay and count on.
        for _ in 0..=IDLE_FLUSHES {
            m.flush(&dict.view());
        }
        assert_eq!(m.groups[0].keys(), 0);
        m.observe(&flow(w2));
        m.flush(&dict.view());
        assert_eq!(value(&m), 23.0);
        assert_eq!(scrape(&m).iter().filter(|s| s.name == "hubble_flows_processed_total").count(), 1);
    }

    #[test]
    fn handshake_histogram_buckets() {
        let syn = Synthetic::new();
        let mut m = metrics(&["handshake"]);
        // SYN-ACKs from web (2) to client (1): the client is the source of the connection.
        for us in [10, 25, 26, 100, 999, 1_000, 3_000_000] {
            let r = FlowRecord {
                protocol: 6,
                ip_version: 4,
                tcp_flags: tcp::SYN | tcp::ACK,
                flags: flags::HANDSHAKE | flags::REPLY_KNOWN | flags::REPLY,
                handshake_us: us,
                src_ep: 2,
                dst_ep: 1,
                event_type: 4,
                verdict: verdict::FORWARDED,
                ..FlowRecord::default()
            };
            m.observe(&r);
        }
        m.flush(&syn.dict.view());
        let s = scrape(&m);
        let pair = [("source", "default/client"), ("destination", "prod/web")];
        let bucket = |le: &str| {
            let mut l = pair.to_vec();
            l.push(("le", le));
            sample_value(&s, "myelin_tcp_handshake_seconds_bucket", &l)
        };
        assert_eq!(bucket("0.000025"), Some(2.0)); // 10, 25 (bounds are inclusive)
        assert_eq!(bucket("0.00005"), Some(3.0)); // + 26
        assert_eq!(bucket("0.0001"), Some(4.0)); // + 100
        assert_eq!(bucket("0.001"), Some(6.0)); // + 999, 1000
        assert_eq!(bucket("2.5"), Some(6.0));
        assert_eq!(bucket("+Inf"), Some(7.0)); // + 3 s
        assert_eq!(sample_value(&s, "myelin_tcp_handshake_seconds_count", &pair), Some(7.0));
        let sum = sample_value(&s, "myelin_tcp_handshake_seconds_sum", &pair).unwrap();
        assert!((sum - 3.002_16).abs() < 1e-9, "{sum}");
        // Every bucket of the series is there, in order, with +Inf last.
        let les: Vec<&str> = s
            .iter()
            .filter(|x| x.name == "myelin_tcp_handshake_seconds_bucket")
            .map(|x| x.labels["le"].as_str())
            .collect();
        assert_eq!(les.len(), NB);
        assert_eq!(les.last(), Some(&"+Inf"));
    }

    #[test]
    fn malformed_options_are_rejected_naming_the_option() {
        let cases: &[(&str, &str)] = &[
            ("drop:sourceContext=nmespace", "option \"sourceContext\": unknown context \"nmespace\""),
            ("drop:srcContext=namespace", "option \"srcContext\": unknown option"),
            ("drop:sourceContext", "option \"sourceContext\": expected key=value"),
            ("drop:sourceContext=", "option \"sourceContext\": empty value"),
            ("drop:sourceContext=namespace|", "option \"sourceContext\": unknown context \"\""),
            ("drop:labelsContext=source_namespace,src_pod", "option \"labelsContext\": unknown label \"src_pod\""),
            ("drop:sourceContext=pod;sourcecontext=namespace", "option \"sourcecontext\": given twice"),
            ("flows:sourceContext=pod", "unknown metric \"flows\""),
            ("dns:query", "\"dns\" is a Hubble metric Myelin does not export yet"),
            (":sourceContext=pod", "unknown metric \"\""),
        ];
        for (spec, want) in cases {
            let e = Metrics::new(&MetricsConfig { metrics: vec![(*spec).to_owned()] }).unwrap_err().to_string();
            assert!(e.contains(want), "{spec}: {e}");
            assert!(e.contains(&format!("{spec:?}")), "{spec}: the error names the entry: {e}");
        }
        let e = Metrics::new(&MetricsConfig { metrics: vec!["drop".into(), "flow drop:sourceContext=pod".into()] })
            .unwrap_err();
        assert_eq!(e, MetricsError::Duplicate { spec: "drop:sourceContext=pod".into(), name: "drop".into() }, "{e}");
        // Hubble's syntax is case-insensitive in option keys and context values; spaces separate metrics.
        Metrics::new(&MetricsConfig { metrics: vec!["drop:SourceContext=Namespace flow".into()] }).unwrap();
    }

    #[test]
    fn encoded_output_is_promtool_clean() {
        let mut syn = Synthetic::new();
        let mut m = Metrics::new(&MetricsConfig::for_dashboards()).unwrap();
        for _ in 0..3 {
            for r in syn.batch() {
                m.observe(&r);
            }
        }
        m.flush(&syn.dict.view());
        m.set_lost_events(LostSource::PerfEventRingBuffer, 12);
        m.handle().set_agent_stats(&AgentStats {
            endpoints: 3,
            identities: 7,
            policy_entries: 40,
            maps: vec![MapUse { name: "ct".into(), entries: 100, max_entries: 1000 }],
            flow_ring_len: 42,
            flow_ring_capacity: 4096,
            pod_traffic: vec![PodTraffic {
                namespace: "x".into(),
                pod: "a".into(),
                ingress_packets: 5,
                ingress_bytes: 500,
                egress_packets: 6,
                egress_bytes: 600,
            }],
        });
        let text = m.encode();
        if let Err(e) = crate::testing::promtool_check_metrics(&text) {
            panic!("{e}\n--- exposition ---\n{text}");
        }
        let s = parse_samples(&text).unwrap();
        assert_eq!(sample_value(&s, "hubble_lost_events_total", &[("source", "perf_event_ring_buffer")]), Some(12.0));
        assert_eq!(sample_value(&s, "myelin_bpf_map_pressure", &[("map_name", "ct")]), Some(0.1));
        assert_eq!(sample_value(&s, "myelin_endpoints", &[]), Some(3.0));
        let pod = |dir: &'static str| [("namespace", "x"), ("pod", "a"), ("direction", dir)];
        assert_eq!(sample_value(&s, "myelin_pod_socket_bytes_total", &pod("egress")), Some(600.0));
        assert_eq!(sample_value(&s, "myelin_pod_socket_packets_total", &pod("ingress")), Some(5.0));
        assert!(text.contains("# TYPE hubble_drop_total counter"), "{text}");
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
        // The OpenMetrics form carries the same samples.
        let (ct, om) =
            m.handle().encode_for_accept(Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"));
        assert_eq!(ct, OPENMETRICS_CONTENT_TYPE);
        assert!(om.ends_with("# EOF\n") && om.contains("# TYPE hubble_drop counter"), "{om}");
        assert_eq!(parse_samples(&om).unwrap(), s);
        assert_eq!(m.handle().encode_for_accept(Some("text/plain")).0, TEXT_CONTENT_TYPE);
    }

    #[test]
    fn agent_source_is_read_at_each_scrape_and_lost_events_start_at_zero() {
        struct Src(AtomicU64);
        impl AgentSource for Src {
            fn agent_stats(&self) -> AgentStats {
                AgentStats { endpoints: self.0.fetch_add(1, Ordering::Relaxed), ..AgentStats::default() }
            }
        }
        let m = metrics(&[]);
        let s = scrape(&m);
        assert_eq!(sample_value(&s, "hubble_lost_events_total", &[("source", "perf_event_ring_buffer")]), Some(0.0));
        m.set_agent_source(Arc::new(Src(AtomicU64::new(5))));
        assert_eq!(sample_value(&scrape(&m), "myelin_endpoints", &[]), Some(5.0));
        assert_eq!(sample_value(&scrape(&m), "myelin_endpoints", &[]), Some(6.0));
    }

    #[test]
    fn the_sink_folds_on_tick() {
        let mut syn = Synthetic::new();
        let m = metrics(&["flow"]);
        let handle = m.handle();
        let mut sink = MetricsSink::new(m, syn.dict.clone());
        sink.batch(&syn.batch());
        assert_eq!(sample_sum(&parse_samples(&handle.encode()).unwrap(), "hubble_flows_processed_total", &[]), 0.0);
        let stats = Stats::default();
        stats.lost_kernel.store(3, Ordering::Relaxed);
        sink.tick(&stats);
        let s = parse_samples(&handle.encode()).unwrap();
        #[allow(clippy::cast_precision_loss)]
        let flows = Synthetic::counts().flows as f64;
        assert_eq!(sample_sum(&s, "hubble_flows_processed_total", &[]), flows);
        assert_eq!(sample_value(&s, "hubble_lost_events_total", &[("source", "perf_event_ring_buffer")]), Some(3.0));
        assert!(sample_value(&s, "myelin_flow_events_per_second", &[]).unwrap() > 0.0);
    }

    #[test]
    fn the_handle_is_shareable() {
        fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
        assert_send_sync::<MetricsHandle>();
        fn assert_send<T: Send>() {}
        assert_send::<Metrics>();
    }

    #[test]
    fn names_follow_hubble() {
        assert_eq!(short_pod_name("web-5d8f7-abcde"), "web");
        assert_eq!(short_pod_name("my-app-5d8f7-abcde"), "my-app");
        assert_eq!(short_pod_name("db-0"), "db");
        assert_eq!(short_pod_name("web"), "web");
        assert_eq!(short_pod_name("Web-X"), "Web-X");
        assert_eq!(icmp_type_name(false, 3, 3), "DestinationUnreachable(Port)");
        assert_eq!(icmp_type_name(false, 3, 42), "DestinationUnreachable(Code: 42)");
        assert_eq!(icmp_type_name(false, 8, 1), "EchoRequest(Code: 1)");
        assert_eq!(icmp_type_name(false, 200, 1), "200(1)");
        assert_eq!(icmp_type_name(true, 128, 0), "EchoRequest");
        assert_eq!(icmp_type_name(true, 1, 4), "DestinationUnreachable(PortUnreachable)");
        assert_eq!(obs_point_name(13), "to-crypto");
        assert_eq!(
            reserved_identity(&["reserved:world".into(), "reserved:kube-apiserver".into()]),
            "reserved:kube-apiserver"
        );
        assert_eq!(app(&["k8s:k8s-app=dns".into()]), "dns");
    }

    #[test]
    fn text_conversion_renames_counters_only() {
        let om = "# HELP a_b Help.\n# TYPE a_b counter\na_b_total{x=\"1\"} 2\n# HELP g G.\n# TYPE g gauge\ng 1\n\
                  # HELP h H.\n# TYPE h_seconds histogram\n# UNIT h_seconds seconds\nh_seconds_count 0\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(om),
            "# HELP a_b_total Help.\n# TYPE a_b_total counter\na_b_total{x=\"1\"} 2\n# HELP g G.\n# TYPE g gauge\ng 1\n\
             # HELP h H.\n# TYPE h_seconds histogram\nh_seconds_count 0\n"
        );
    }
}
