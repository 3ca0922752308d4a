//! `myelin observe`'s filter flags, turned into GetFlows whitelist and
//! blacklist `FlowFilter`s the way `hubble observe` does it:
//!
//! - Flags are applied in command-line order. `--not` sends the next filter
//!   flag (only that one) to the blacklist; two `--not` in a row are an error.
//! - Each list (whitelist, blacklist) is built as two filters, `left` and
//!   `right`, ORed by the server. A `--from-x`/`--to-x` flag goes into both; a
//!   flag that means "either side" (`--pod`, `--ip`, `--label`, `--identity`,
//!   `--port`) puts the source form into `left` and the destination form into
//!   `right`. When both end up equal, one filter is sent.
//! - Namespaces are applied last, to the pod filters: `--from-namespace N`
//!   makes every source pod `N/pod` (or `N/` when no pod was given),
//!   `--to-namespace` the same for destinations, and `-n N` applies to the
//!   source in `left` and the destination in `right`. A pod already naming
//!   another namespace is an error.
//! - Some flags cannot be combined (`--ip` with `--namespace`, `--port` with
//!   `--to-port`, ...), exactly Hubble's groups.
//!
//! Values are checked here (Hubble leaves most of that to the server), so a
//! typo is an error that names the flag and lists what is accepted.

use anyhow::{bail, Result};
use myelin_observe::proto::flow::{self, EventTypeFilter, FlowFilter, TcpFlags};
use myelin_policy::ReservedIdentity;

/// Every filter flag, by its long name.
pub const FLAGS: &[&str] = &[
    "from-pod",
    "to-pod",
    "pod",
    "from-namespace",
    "to-namespace",
    "namespace",
    "from-label",
    "to-label",
    "label",
    "from-ip",
    "to-ip",
    "ip",
    "from-identity",
    "to-identity",
    "identity",
    "from-port",
    "to-port",
    "port",
    "protocol",
    "verdict",
    "drop-reason-desc",
    "type",
    "traffic-direction",
    "node-name",
    "tcp-flags",
];

/// Flags that cannot be used together in one list (Hubble's conflict groups).
const CONFLICTS: &[&[&str]] = &[
    &["from-ip", "ip", "from-namespace", "namespace"],
    &["from-ip", "ip", "from-pod", "pod"],
    &["to-ip", "ip", "to-namespace", "namespace"],
    &["to-ip", "ip", "to-pod", "pod"],
    &["to-pod", "namespace"],
    &["from-pod", "namespace"],
    &["label", "from-label"],
    &["label", "to-label"],
    &["port", "to-port"],
    &["port", "from-port"],
    &["identity", "to-identity"],
    &["identity", "from-identity"],
];

/// Cilium's monitor message types (`--type NAME`).
pub const EVENT_TYPES: &[(&str, i32)] =
    &[("drop", 1), ("debug", 2), ("capture", 3), ("trace", 4), ("policy-verdict", 5), ("l7", 129), ("agent", 130)];

/// The monitor's trace observation points (the sub-type of trace events).
pub const TRACE_POINTS: &[(&str, i32)] = &[
    ("to-endpoint", 0),
    ("to-proxy", 1),
    ("to-host", 2),
    ("to-stack", 3),
    ("to-overlay", 4),
    ("from-endpoint", 5),
    ("from-proxy", 6),
    ("from-host", 7),
    ("from-stack", 8),
    ("from-overlay", 9),
    ("from-network", 10),
    ("to-network", 11),
    ("from-crypto", 12),
    ("to-crypto", 13),
];

/// Agent notification sub-types (`--type agent:NAME`).
const AGENT_SUBTYPES: &[(&str, i32)] = &[
    ("unspecified", 0),
    ("message", 1),
    ("agent-started", 2),
    ("endpoint-regenerate-success", 3),
    ("endpoint-regenerate-failure", 4),
    ("policy-updated", 5),
    ("policy-deleted", 6),
    ("endpoint-created", 7),
    ("endpoint-deleted", 8),
    ("ipcache-upserted", 9),
    ("ipcache-deleted", 10),
    ("service-upserted", 11),
    ("service-deleted", 12),
];

const PROTOCOLS: &[&str] = &["tcp", "udp", "sctp", "icmp", "icmpv4", "icmpv6", "vrrp", "igmp", "http", "dns", "kafka"];

/// One list (whitelist or blacklist) under construction.
#[derive(Debug, Default)]
struct Tracker {
    left: Option<FlowFilter>,
    right: Option<FlowFilter>,
    ns: Vec<String>,
    src_ns: Vec<String>,
    dst_ns: Vec<String>,
    changed: Vec<&'static str>,
}

impl Tracker {
    fn left(&mut self) -> &mut FlowFilter {
        self.left.get_or_insert_with(FlowFilter::default)
    }

    fn right(&mut self) -> &mut FlowFilter {
        self.right.get_or_insert_with(FlowFilter::default)
    }

    fn both(&mut self, f: impl Fn(&mut FlowFilter)) {
        f(self.left());
        f(self.right());
    }

    fn check_conflicts(&self) -> Result<()> {
        for group in CONFLICTS {
            for a in group.iter().filter(|a| self.changed.contains(a)) {
                if let Some(b) = group.iter().find(|b| *b != a && self.changed.contains(b)) {
                    bail!("filters --{a} and --{b} cannot be combined{}", conflict_hint(a, b));
                }
            }
        }
        Ok(())
    }

    /// A pod (or service) naming a namespace other than the one asked for.
    fn check_namespaces(&self) -> Result<()> {
        for f in [&self.left, &self.right].into_iter().flatten() {
            let src = f.source_pod.iter().chain(&f.source_service);
            let dst = f.destination_pod.iter().chain(&f.destination_service);
            for (namespaces, names, flag) in [
                (&self.ns, src.clone().chain(dst.clone()).collect::<Vec<_>>(), "--namespace"),
                (&self.src_ns, src.collect(), "--from-namespace"),
                (&self.dst_ns, dst.collect(), "--to-namespace"),
            ] {
                for ns in namespaces {
                    for name in &names {
                        if let Some((pod_ns, _)) = name.split_once('/') {
                            if pod_ns != ns {
                                bail!(
                                    "namespace conflict: {flag} {ns} does not contain {name:?} (drop the namespace \
                                     from the pod, or the {flag} flag)"
                                );
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The filters this list sends: none, `left`, or `left` and `right`.
    fn finish(mut self) -> Vec<FlowFilter> {
        if self.left.is_none()
            && self.right.is_none()
            && self.ns.is_empty()
            && self.src_ns.is_empty()
            && self.dst_ns.is_empty()
        {
            return Vec::new();
        }
        let (mut left, mut right) = (self.left.take().unwrap_or_default(), self.right.take().unwrap_or_default());
        if !self.dst_ns.is_empty() {
            apply_dst(&mut left, &self.dst_ns);
            apply_dst(&mut right, &self.dst_ns);
        }
        if !self.src_ns.is_empty() {
            apply_src(&mut left, &self.src_ns);
            apply_src(&mut right, &self.src_ns);
        }
        if !self.ns.is_empty() {
            apply_src(&mut left, &self.ns);
            apply_dst(&mut right, &self.ns);
        }
        if left == right {
            vec![left]
        } else {
            vec![left, right]
        }
    }
}

fn conflict_hint(a: &str, b: &str) -> &'static str {
    let pair = |x: &str, y: &str| (a == x && b == y) || (a == y && b == x);
    if pair("from-pod", "namespace") || pair("to-pod", "namespace") {
        " (name the namespace in the pod instead: NAMESPACE/POD)"
    } else if b.starts_with("from-") || b.starts_with("to-") || a.starts_with("from-") || a.starts_with("to-") {
        " (the flag without from-/to- already matches either side)"
    } else {
        ""
    }
}

/// `pod` -> `ns/pod` for every namespace; names with a namespace stay.
fn add_namespaces(names: &[String], namespaces: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for n in names {
        if n.contains('/') {
            out.push(n.clone());
        } else {
            out.extend(namespaces.iter().map(|ns| format!("{ns}/{n}")));
        }
    }
    out
}

fn apply_src(f: &mut FlowFilter, namespaces: &[String]) {
    if f.source_pod.is_empty() && f.source_service.is_empty() {
        f.source_pod = vec![String::new()];
    }
    f.source_pod = add_namespaces(&f.source_pod, namespaces);
    f.source_service = add_namespaces(&f.source_service, namespaces);
}

fn apply_dst(f: &mut FlowFilter, namespaces: &[String]) {
    if f.destination_pod.is_empty() && f.destination_service.is_empty() {
        f.destination_pod = vec![String::new()];
    }
    f.destination_pod = add_namespaces(&f.destination_pod, namespaces);
    f.destination_service = add_namespaces(&f.destination_service, namespaces);
}

/// Builds the whitelist and blacklist from filter flags given in order.
#[derive(Debug, Default)]
pub struct Filters {
    white: Tracker,
    black: Tracker,
    negate_next: bool,
}

impl Filters {
    /// `--not`: the next filter flag goes to the blacklist.
    pub fn not(&mut self) -> Result<()> {
        if self.negate_next {
            bail!("--not --not: two --not in a row (--not applies to the one filter flag after it)");
        }
        self.negate_next = true;
        Ok(())
    }

    /// Apply one filter flag (its long name, without `--`) with its value.
    pub fn set(&mut self, flag: &str, value: &str) -> Result<()> {
        let Some(name) = FLAGS.iter().copied().find(|f| *f == flag) else {
            bail!("--{flag} is not a filter flag");
        };
        let t = if std::mem::take(&mut self.negate_next) { &mut self.black } else { &mut self.white };
        if !t.changed.contains(&name) {
            t.changed.push(name);
        }
        t.check_conflicts()?;
        let v = value.to_owned();
        let nonempty = || -> Result<()> {
            if value.trim().is_empty() {
                bail!("--{flag}: empty value");
            }
            Ok(())
        };
        match name {
            "from-pod" | "to-pod" | "pod" => {
                nonempty()?;
                match name {
                    "from-pod" => t.both(|f| f.source_pod.push(v.clone())),
                    "to-pod" => t.both(|f| f.destination_pod.push(v.clone())),
                    _ => {
                        t.left().source_pod.push(v.clone());
                        t.right().destination_pod.push(v);
                    }
                }
            }
            "from-namespace" | "to-namespace" | "namespace" => {
                nonempty()?;
                if value.contains('/') {
                    bail!("--{flag} {value:?}: a namespace has no '/' (for a pod, use --pod NAMESPACE/POD)");
                }
                match name {
                    "from-namespace" => t.src_ns.push(v),
                    "to-namespace" => t.dst_ns.push(v),
                    _ => t.ns.push(v),
                }
            }
            "from-label" | "to-label" | "label" => {
                nonempty()?;
                match name {
                    "from-label" => t.both(|f| f.source_label.push(v.clone())),
                    "to-label" => t.both(|f| f.destination_label.push(v.clone())),
                    _ => {
                        t.left().source_label.push(v.clone());
                        t.right().destination_label.push(v);
                    }
                }
            }
            "from-ip" | "to-ip" | "ip" => {
                check_ip(flag, value)?;
                match name {
                    "from-ip" => t.both(|f| f.source_ip.push(v.clone())),
                    "to-ip" => t.both(|f| f.destination_ip.push(v.clone())),
                    _ => {
                        t.left().source_ip.push(v.clone());
                        t.right().destination_ip.push(v);
                    }
                }
            }
            "from-identity" | "to-identity" | "identity" => {
                let id = parse_identity(flag, value)?;
                match name {
                    "from-identity" => t.both(|f| f.source_identity.push(id)),
                    "to-identity" => t.both(|f| f.destination_identity.push(id)),
                    _ => {
                        t.left().source_identity.push(id);
                        t.right().destination_identity.push(id);
                    }
                }
            }
            "from-port" | "to-port" | "port" => {
                if value.parse::<u16>().is_err() {
                    bail!("--{flag} {value:?}: not a port number (0-65535)");
                }
                match name {
                    "from-port" => t.both(|f| f.source_port.push(v.clone())),
                    "to-port" => t.both(|f| f.destination_port.push(v.clone())),
                    _ => {
                        t.left().source_port.push(v.clone());
                        t.right().destination_port.push(v);
                    }
                }
            }
            "protocol" => {
                if !PROTOCOLS.contains(&value.to_ascii_lowercase().as_str()) {
                    bail!("--protocol {value:?}: not a protocol; use {}", PROTOCOLS.join(", "));
                }
                t.both(|f| f.protocol.push(v.clone()));
            }
            "verdict" => {
                let verdict = parse_verdict(value)?;
                t.both(|f| f.verdict.push(verdict));
            }
            "drop-reason-desc" => {
                let r = parse_drop_reason(value)?;
                t.both(|f| f.drop_reason_desc.push(r));
            }
            "type" => {
                let e = parse_event_type(value)?;
                t.both(|f| f.event_type.push(e));
            }
            "traffic-direction" => {
                let d = match value.to_ascii_lowercase().as_str() {
                    "ingress" => flow::TrafficDirection::Ingress,
                    "egress" => flow::TrafficDirection::Egress,
                    _ => bail!("--traffic-direction {value:?}: use ingress or egress"),
                };
                t.both(|f| f.traffic_direction.push(d as i32));
            }
            "node-name" => {
                nonempty()?;
                t.both(|f| f.node_name.push(v.clone()));
            }
            "tcp-flags" => {
                let flags = parse_tcp_flags(value)?;
                t.both(|f| f.tcp_flags.push(flags));
            }
            _ => bail!("--{flag} is not a filter flag"),
        }
        t.check_namespaces()
    }

    /// The whitelist and the blacklist.
    pub fn finish(self) -> Result<(Vec<FlowFilter>, Vec<FlowFilter>)> {
        if self.negate_next {
            bail!("--not must be followed by the filter flag it negates (e.g. --not --verdict FORWARDED)");
        }
        Ok((self.white.finish(), self.black.finish()))
    }
}

fn check_ip(flag: &str, value: &str) -> Result<()> {
    if value.parse::<std::net::IpAddr>().is_ok() || value.parse::<ipnet::IpNet>().is_ok() {
        return Ok(());
    }
    bail!("--{flag} {value:?}: not an IP address or CIDR (e.g. 10.244.1.5 or 10.244.0.0/16)")
}

fn enum_names(names: impl Iterator<Item = &'static str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

/// `--verdict`: a `flow.Verdict` name (any case).
pub fn parse_verdict(value: &str) -> Result<i32> {
    use flow::Verdict as V;
    match V::from_str_name(&value.to_ascii_uppercase()) {
        Some(v) if v != V::Unknown => Ok(v as i32),
        _ => bail!(
            "--verdict {value}: not a verdict; use {}",
            enum_names(
                [V::Forwarded, V::Dropped, V::Error, V::Audit, V::Redirected, V::Traced, V::Translated]
                    .iter()
                    .map(|v| v.as_str_name())
            )
        ),
    }
}

/// `--drop-reason-desc`: a `flow.DropReason` name (any case).
pub fn parse_drop_reason(value: &str) -> Result<i32> {
    if value.is_empty() {
        bail!("--drop-reason-desc: empty value");
    }
    match flow::DropReason::from_str_name(&value.to_ascii_uppercase()) {
        Some(r) if r != flow::DropReason::Unknown => Ok(r as i32),
        _ => bail!(
            "--drop-reason-desc {value}: not a drop reason; use a flow.DropReason name such as POLICY_DENIED \
             (no rule allowed it), POLICY_DENY (a deny rule), INVALID_SOURCE_IP, CT_MAP_INSERTION_FAILED, \
             UNKNOWN_L3_TARGET_ADDRESS, STALE_OR_UNROUTABLE_IP, AUTH_REQUIRED"
        ),
    }
}

/// `--type NAME[:SUBTYPE]`, names or numbers, as Hubble parses it.
pub fn parse_event_type(value: &str) -> Result<EventTypeFilter> {
    let (ty, sub) = match value.split_once(':') {
        Some((t, s)) => (t, Some(s)),
        None => (value, None),
    };
    let named = EVENT_TYPES.iter().find(|(n, _)| *n == ty).map(|(_, v)| *v);
    let type_num = match named {
        Some(v) => v,
        None => match ty.parse::<u32>().ok().and_then(|n| i32::try_from(n).ok()) {
            Some(v) => v,
            None => bail!(
                "--type {value}: {ty:?} is not an event type; use {} or a number",
                enum_names(EVENT_TYPES.iter().map(|(n, _)| *n))
            ),
        },
    };
    let mut f = EventTypeFilter { r#type: type_num, match_sub_type: false, sub_type: 0 };
    if let Some(sub) = sub {
        let names: &[(&str, i32)] = match named {
            Some(4) => TRACE_POINTS,
            Some(130) => AGENT_SUBTYPES,
            _ => &[],
        };
        let sub_num = match names.iter().find(|(n, _)| *n == sub) {
            Some((_, v)) => *v,
            None => match sub.parse::<u32>().ok().and_then(|n| i32::try_from(n).ok()) {
                Some(v) => v,
                None if names.is_empty() => {
                    bail!("--type {value}: sub-type {sub:?} is not a number ({ty} has no named sub-types)")
                }
                None => bail!(
                    "--type {value}: {sub:?} is not a sub-type of {ty}; use {} or a number",
                    enum_names(names.iter().map(|(n, _)| *n))
                ),
            },
        };
        f.match_sub_type = true;
        f.sub_type = sub_num;
    }
    Ok(f)
}

/// `--identity`: a number or a reserved identity's name.
pub fn parse_identity(flag: &str, value: &str) -> Result<u32> {
    if let Ok(n) = value.parse::<u32>() {
        return Ok(n);
    }
    // Cilium's reserved identities by name ("unknown" names no peer).
    let named = || ReservedIdentity::ALL.into_iter().filter(|r| r.id() != 0);
    if let Some(r) = named().find(|r| r.name() == value) {
        return Ok(r.id());
    }
    bail!(
        "--{flag} {value:?}: not a security identity; use a number or one of {}",
        enum_names(named().map(ReservedIdentity::name))
    )
}

/// `--tcp-flags SYN,ACK`: packets with (at least) these flags.
pub fn parse_tcp_flags(value: &str) -> Result<TcpFlags> {
    let mut f = TcpFlags::default();
    for name in value.split(',') {
        match name.trim().to_ascii_uppercase().as_str() {
            "SYN" => f.syn = true,
            "FIN" => f.fin = true,
            "RST" => f.rst = true,
            "PSH" => f.psh = true,
            "ACK" => f.ack = true,
            "URG" => f.urg = true,
            "ECE" => f.ece = true,
            "CWR" => f.cwr = true,
            "NS" => f.ns = true,
            _ => {
                bail!("--tcp-flags {value}: {name:?} is not a TCP flag; use SYN, FIN, RST, PSH, ACK, URG, ECE, CWR, NS")
            }
        }
    }
    Ok(f)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Build from `--flag value` pairs (`not` without a value).
    fn build(args: &[(&str, &str)]) -> Result<(Vec<FlowFilter>, Vec<FlowFilter>)> {
        let mut f = Filters::default();
        for (k, v) in args {
            if *k == "not" {
                f.not()?;
            } else {
                f.set(k, v)?;
            }
        }
        f.finish()
    }

    fn ff(edit: impl FnOnce(&mut FlowFilter)) -> FlowFilter {
        let mut f = FlowFilter::default();
        edit(&mut f);
        f
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn no_flags_no_filters() {
        assert_eq!(build(&[]).unwrap(), (vec![], vec![]));
    }

    #[test]
    fn from_and_to_flags_go_into_one_filter() {
        let (w, b) = build(&[("from-pod", "x/a"), ("to-port", "80"), ("verdict", "DROPPED")]).unwrap();
        assert!(b.is_empty());
        assert_eq!(
            w,
            vec![ff(|f| {
                f.source_pod = s(&["x/a"]);
                f.destination_port = s(&["80"]);
                f.verdict = vec![flow::Verdict::Dropped as i32];
            })]
        );
    }

    #[test]
    fn either_side_flags_make_two_filters() {
        for (flag, value) in [("pod", "x/a"), ("ip", "10.0.0.1"), ("label", "app=web"), ("port", "53")] {
            let (w, _) = build(&[(flag, value)]).unwrap();
            assert_eq!(w.len(), 2, "--{flag}: {w:?}");
            let (l, r) = (&w[0], &w[1]);
            match flag {
                "pod" => assert_eq!((&l.source_pod, &r.destination_pod), (&s(&[value]), &s(&[value]))),
                "ip" => assert_eq!((&l.source_ip, &r.destination_ip), (&s(&[value]), &s(&[value]))),
                "label" => assert_eq!((&l.source_label, &r.destination_label), (&s(&[value]), &s(&[value]))),
                _ => assert_eq!((&l.source_port, &r.destination_port), (&s(&[value]), &s(&[value]))),
            }
            assert!(l.destination_pod.is_empty() && r.source_pod.is_empty() && l.destination_ip.is_empty());
        }
        let (w, _) = build(&[("identity", "world")]).unwrap();
        assert_eq!((w[0].source_identity.clone(), w[1].destination_identity.clone()), (vec![2], vec![2]));
        // A common flag lands in both halves of an either-side filter.
        let (w, _) = build(&[("pod", "x/a"), ("verdict", "forwarded")]).unwrap();
        assert!(w.iter().all(|f| f.verdict == vec![flow::Verdict::Forwarded as i32]));
    }

    #[test]
    fn repeated_flags_are_ored_within_a_field() {
        let (w, _) =
            build(&[("verdict", "DROPPED"), ("verdict", "AUDIT"), ("to-pod", "x/b"), ("to-pod", "y/")]).unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].verdict, vec![2, 4]);
        assert_eq!(w[0].destination_pod, s(&["x/b", "y/"]));
    }

    #[test]
    fn namespaces_become_pod_prefixes() {
        // --from-namespace alone: every source pod of that namespace.
        let (w, _) = build(&[("from-namespace", "x")]).unwrap();
        assert_eq!(w, vec![ff(|f| f.source_pod = s(&["x/"]))]);
        // Several namespaces OR, and apply to a pod without namespace.
        let (w, _) = build(&[("to-namespace", "x"), ("to-namespace", "y"), ("to-pod", "web")]).unwrap();
        assert_eq!(w, vec![ff(|f| f.destination_pod = s(&["x/web", "y/web"]))]);
        // -n: source namespace in one filter, destination namespace in the other.
        let (w, _) = build(&[("namespace", "x")]).unwrap();
        assert_eq!(w, vec![ff(|f| f.source_pod = s(&["x/"])), ff(|f| f.destination_pod = s(&["x/"]))]);
        // -n with --pod: namespaced pod on either side.
        let (w, _) = build(&[("namespace", "x"), ("pod", "a")]).unwrap();
        assert_eq!(w, vec![ff(|f| f.source_pod = s(&["x/a"])), ff(|f| f.destination_pod = s(&["x/a"]))]);
        // --from-namespace with --to-pod: both sides constrained, one filter.
        let (w, _) = build(&[("from-namespace", "x"), ("to-pod", "y/b")]).unwrap();
        assert_eq!(
            w,
            vec![ff(|f| {
                f.source_pod = s(&["x/"]);
                f.destination_pod = s(&["y/b"]);
            })]
        );
    }

    #[test]
    fn a_pod_in_another_namespace_is_a_conflict() {
        let e = build(&[("from-namespace", "x"), ("from-pod", "y/a")]).unwrap_err().to_string();
        assert!(e.contains("namespace conflict") && e.contains("\"y/a\""), "{e}");
        let e = build(&[("namespace", "x"), ("pod", "y/a")]).unwrap_err().to_string();
        assert!(e.contains("namespace conflict"), "{e}");
        // The same namespace is fine.
        assert!(build(&[("from-namespace", "x"), ("from-pod", "x/a")]).is_ok());
    }

    #[test]
    fn hubbles_conflicting_flags_are_refused() {
        for (a, b) in [
            (("ip", "10.0.0.1"), ("namespace", "x")),
            (("from-ip", "10.0.0.1"), ("from-pod", "x/a")),
            (("to-pod", "x/a"), ("namespace", "x")),
            (("port", "80"), ("to-port", "81")),
            (("label", "a=b"), ("from-label", "c=d")),
            (("identity", "2"), ("to-identity", "3")),
        ] {
            let e = build(&[a, b]).unwrap_err().to_string();
            assert!(e.contains("cannot be combined") && e.contains(a.0) && e.contains(b.0), "{e}");
        }
        // Different sides do not conflict, nor do the same flags in different lists.
        assert!(build(&[("from-ip", "10.0.0.1"), ("to-namespace", "x")]).is_ok());
        assert!(build(&[("port", "80"), ("not", ""), ("to-port", "81")]).is_ok());
    }

    #[test]
    fn not_negates_only_the_next_flag() {
        let (w, b) = build(&[("not", ""), ("verdict", "FORWARDED"), ("from-pod", "x/a")]).unwrap();
        assert_eq!(w, vec![ff(|f| f.source_pod = s(&["x/a"]))]);
        assert_eq!(b, vec![ff(|f| f.verdict = vec![1])]);
        // --not with an either-side flag blacklists both directions.
        let (w, b) = build(&[("not", ""), ("ip", "10.0.0.1")]).unwrap();
        assert!(w.is_empty());
        assert_eq!(b, vec![ff(|f| f.source_ip = s(&["10.0.0.1"])), ff(|f| f.destination_ip = s(&["10.0.0.1"]))]);
        // --not -n x: flows touching namespace x are excluded.
        let (_, b) = build(&[("not", ""), ("namespace", "kube-system")]).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].source_pod, s(&["kube-system/"]));
        // Each negation needs its own --not.
        let (w, b) = build(&[("not", ""), ("to-port", "53"), ("to-port", "80")]).unwrap();
        assert_eq!(b[0].destination_port, s(&["53"]));
        assert_eq!(w[0].destination_port, s(&["80"]));
        assert!(build(&[("not", ""), ("not", ""), ("verdict", "DROPPED")])
            .unwrap_err()
            .to_string()
            .contains("--not --not"));
        assert!(build(&[("verdict", "DROPPED"), ("not", "")]).unwrap_err().to_string().contains("followed by"));
    }

    #[test]
    fn label_forms_pass_through_as_selectors() {
        for sel in ["app=web", "k8s:app=web", "app", "!app", "env in (prod,dev)", "reserved:world"] {
            let (w, _) = build(&[("from-label", sel)]).unwrap();
            assert_eq!(w[0].source_label, s(&[sel]), "{sel}");
        }
        let (w, _) = build(&[("to-label", "a=1"), ("to-label", "b=2")]).unwrap();
        assert_eq!(w[0].destination_label, s(&["a=1", "b=2"]));
        assert!(build(&[("label", " ")]).is_err());
    }

    #[test]
    fn event_types_as_hubble_parses_them() {
        let t = |v: &str| parse_event_type(v).unwrap();
        assert_eq!(t("trace"), EventTypeFilter { r#type: 4, match_sub_type: false, sub_type: 0 });
        assert_eq!(t("drop"), EventTypeFilter { r#type: 1, match_sub_type: false, sub_type: 0 });
        assert_eq!(t("policy-verdict"), EventTypeFilter { r#type: 5, match_sub_type: false, sub_type: 0 });
        assert_eq!(t("trace:to-endpoint"), EventTypeFilter { r#type: 4, match_sub_type: true, sub_type: 0 });
        assert_eq!(t("trace:to-stack"), EventTypeFilter { r#type: 4, match_sub_type: true, sub_type: 3 });
        assert_eq!(t("drop:133"), EventTypeFilter { r#type: 1, match_sub_type: true, sub_type: 133 });
        assert_eq!(t("4:5"), EventTypeFilter { r#type: 4, match_sub_type: true, sub_type: 5 });
        let e = parse_event_type("traces").unwrap_err().to_string();
        assert!(e.contains("not an event type") && e.contains("policy-verdict"), "{e}");
        let e = parse_event_type("trace:to-moon").unwrap_err().to_string();
        assert!(e.contains("to-endpoint"), "{e}");
        assert!(parse_event_type("drop:policy").unwrap_err().to_string().contains("no named sub-types"));
        // Several --type flags OR.
        let (w, _) = build(&[("type", "drop"), ("type", "policy-verdict")]).unwrap();
        assert_eq!(w[0].event_type.len(), 2);
    }

    #[test]
    fn bad_values_name_the_flag_and_the_fix() {
        let e = parse_verdict("BLOCKED").unwrap_err().to_string();
        assert!(e.starts_with("--verdict BLOCKED: not a verdict; use FORWARDED, DROPPED"), "{e}");
        assert_eq!(parse_verdict("dropped").unwrap(), 2);
        assert_eq!(parse_drop_reason("policy_denied").unwrap(), 133);
        assert_eq!(parse_drop_reason("POLICY_DENY").unwrap(), 181);
        assert!(parse_drop_reason("DENIED").unwrap_err().to_string().contains("POLICY_DENIED"));
        for (flag, value, want) in [
            ("from-ip", "10.0.0.300", "not an IP address or CIDR"),
            ("to-port", "http", "not a port number"),
            ("port", "70000", "not a port number"),
            ("protocol", "quic", "not a protocol"),
            ("traffic-direction", "inbound", "ingress or egress"),
            ("identity", "nobody", "not a security identity"),
            ("tcp-flags", "SYN,BOGUS", "not a TCP flag"),
            ("from-namespace", "x/y", "a namespace has no '/'"),
        ] {
            let e = build(&[(flag, value)]).unwrap_err().to_string();
            assert!(e.contains(&format!("--{flag}")) && e.contains(want), "--{flag} {value}: {e}");
        }
        assert!(build(&[("from-ip", "10.244.0.0/16")]).is_ok());
        assert!(build(&[("to-ip", "fd00::1")]).is_ok());
        assert_eq!(parse_tcp_flags("syn,ack").unwrap(), TcpFlags { syn: true, ack: true, ..TcpFlags::default() });
    }
}
