//! Printing GetFlows responses: `compact` (Hubble's one line per flow),
//! `table` (aligned columns), `json` (one protojson `GetFlowsResponse` per
//! line). Lost events and node status go to stderr, except in json, where
//! they are lines like the flows.

use super::filter::TRACE_POINTS;
use super::when::stamp_milli;
use anyhow::Result;
use myelin_observe::proto::flow::{self, layer4::Protocol, Flow};
use myelin_observe::proto::observer::{get_flows_response::ResponseTypes, GetFlowsResponse};
use myelin_observe::proto::wkt::Any;
use prost::Message;

/// `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// One line per flow, like `hubble observe`.
    #[default]
    Compact,
    /// One protojson GetFlowsResponse per line (Hubble's field names).
    Json,
    /// Aligned columns.
    Table,
}

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorWhen {
    /// When stdout is a terminal (and NO_COLOR is not set).
    #[default]
    Auto,
    Always,
    Never,
}

impl ColorWhen {
    pub fn enabled(self) -> bool {
        use std::io::IsTerminal;
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Auto => {
                std::io::stdout().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                    && std::env::var("TERM").map_or(true, |t| t != "dumb")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub output: Output,
    pub color: bool,
    pub policy_names: bool,
    pub node_name: bool,
}

#[derive(Clone, Copy)]
enum Hue {
    Red = 31,
    Green = 32,
    Yellow = 33,
    Blue = 34,
    Magenta = 35,
    Cyan = 36,
}

fn paint(on: bool, hue: Hue, s: &str) -> String {
    if on && !s.is_empty() {
        format!("\x1b[{}m{s}\x1b[0m", hue as u8)
    } else {
        s.to_owned()
    }
}

/// Cilium's monitor message types as the flows carry them.
const MSG_DROP: i32 = 1;
const MSG_CAPTURE: i32 = 3;
const MSG_TRACE: i32 = 4;
const MSG_POLICY_VERDICT: i32 = 5;
const MSG_TRACE_SOCK: i32 = 7;

/// The monitor's text for a drop reason (what `hubble observe` shows for drops).
pub fn drop_reason_text(reason: i32) -> String {
    let text = match reason {
        130 => "Invalid source mac",
        131 => "Invalid destination mac",
        132 => "Invalid source ip",
        133 => "Policy denied",
        134 => "Invalid packet",
        135 => "CT: Truncated or invalid header",
        136 => "Fragmentation needed",
        137 => "CT: Unknown L4 protocol",
        138 => "CT: Can't create entry from packet",
        139 => "Unsupported L3 protocol",
        140 => "Missed tail call",
        141 => "Error writing to packet",
        142 => "Unknown L4 protocol",
        143 => "Unknown ICMPv4 code",
        144 => "Unknown ICMPv4 type",
        145 => "Unknown ICMPv6 code",
        146 => "Unknown ICMPv6 type",
        147 => "Error retrieving tunnel key",
        148 => "Error retrieving tunnel options",
        149 => "Invalid Geneve option",
        150 => "Unknown L3 target address",
        151 => "Stale or unroutable IP",
        152 => "No matching local container found",
        153 => "Error while correcting L3 checksum",
        154 => "Error while correcting L4 checksum",
        155 => "CT: Map insertion failed",
        156 => "Invalid IPv6 extension header",
        157 => "IP fragmentation not supported",
        158 => "Service backend not found",
        160 => "No tunnel/encapsulation endpoint (datapath BUG!)",
        161 => "NAT 46/64 not enabled",
        162 => "Reached EDT rate-limiting drop horizon",
        163 => "Unknown connection tracking state",
        164 => "Local host is unreachable",
        165 => "No configuration available to perform policy decision",
        166 => "Unsupported L2 protocol",
        167 => "No mapping for NAT masquerade",
        168 => "Unsupported protocol for NAT masquerade",
        169 => "FIB lookup failed",
        170 => "Encapsulation traffic is prohibited",
        171 => "Invalid identity",
        172 => "Unknown sender",
        173 => "NAT not needed",
        174 => "Is a ClusterIP",
        175 => "First logical datagram fragment not found",
        176 => "Forbidden ICMPv6 message",
        177 => "Denied by LB src range check",
        178 => "Socket lookup failed",
        179 => "Socket assign failed",
        180 => "Proxy redirection not supported for protocol",
        181 => "Policy denied by denylist",
        182 => "VLAN traffic disallowed by VLAN filter",
        183 => "Incorrect VNI from VTEP",
        184 => "Failed to update or lookup TC buffer",
        185 => "No SID was found for the IP address",
        186 => "SRv6 state was removed during tail call",
        187 => "L3 translation from IPv4 to IPv6 failed (NAT46)",
        188 => "L3 translation from IPv6 to IPv4 failed (NAT64)",
        189 => "Authentication required",
        190 => "No conntrack map found",
        191 => "No nat map found",
        192 => "Invalid ClusterID",
        193 => "Unsupported packet protocol for DSR encapsulation",
        194 => "No egress gateway found",
        195 => "Traffic is unencrypted",
        196 => "TTL exceeded",
        197 => "No node ID found",
        198 => "Rate limited",
        202 => "Host datapath not ready",
        _ => return flow::DropReason::try_from(reason).map_or_else(|_| reason.to_string(), |r| r.as_str_name().into()),
    };
    text.into()
}

fn match_type_text(m: u32) -> &'static str {
    match m {
        0 => "none",
        1 => "L3-Only",
        2 => "L3-L4",
        3 => "L4-Only",
        4 => "all",
        _ => "unknown",
    }
}

/// Hubble's TYPE column: the observation point, the drop reason, the policy
/// verdict's match and direction, or the L7 record type.
pub fn flow_type(f: &Flow) -> String {
    if let Some(l7) = &f.l7 {
        let kind = flow::L7FlowType::try_from(l7.r#type).map_or("unknown".into(), |t| t.as_str_name().to_lowercase());
        let proto = match &l7.record {
            Some(flow::layer7::Record::Http(_)) => "http",
            Some(flow::layer7::Record::Dns(_)) => "dns",
            Some(flow::layer7::Record::Kafka(_)) => "kafka",
            None => "l7",
        };
        return format!("{proto}-{kind}");
    }
    let Some(et) = &f.event_type else { return "UNKNOWN".into() };
    match et.r#type {
        MSG_TRACE => TRACE_POINTS
            .iter()
            .find(|(_, n)| *n == et.sub_type)
            .map_or_else(|| et.sub_type.to_string(), |(name, _)| (*name).to_owned()),
        MSG_DROP => drop_reason_text(et.sub_type),
        MSG_POLICY_VERDICT => {
            let dir = flow::TrafficDirection::try_from(f.traffic_direction)
                .map_or("TRAFFIC_DIRECTION_UNKNOWN", |d| d.as_str_name());
            format!("policy-verdict:{} {dir}", match_type_text(f.policy_match_type))
        }
        MSG_CAPTURE => flow::DebugCapturePoint::try_from(f.debug_capture_point)
            .map_or_else(|_| f.debug_capture_point.to_string(), |p| p.as_str_name().into()),
        MSG_TRACE_SOCK => match flow::SocketTranslationPoint::try_from(f.sock_xlate_point) {
            Ok(flow::SocketTranslationPoint::SockXlatePointPostDirectionFwd) => "post-xlate-fwd".into(),
            Ok(flow::SocketTranslationPoint::SockXlatePointPostDirectionRev) => "post-xlate-rev".into(),
            Ok(flow::SocketTranslationPoint::SockXlatePointPreDirectionFwd) => "pre-xlate-fwd".into(),
            Ok(flow::SocketTranslationPoint::SockXlatePointPreDirectionRev) => "pre-xlate-rev".into(),
            _ => f.sock_xlate_point.to_string(),
        },
        _ => "UNKNOWN".into(),
    }
}

/// The VERDICT column; policy verdict events say ALLOWED / DENIED / AUDITED.
fn verdict(f: &Flow, color: bool) -> String {
    use flow::Verdict as V;
    let pv = f.event_type.as_ref().is_some_and(|e| e.r#type == MSG_POLICY_VERDICT);
    let v = V::try_from(f.verdict).unwrap_or(V::Unknown);
    let (text, hue) = match v {
        V::Forwarded | V::Redirected => (if pv { "ALLOWED" } else { v.as_str_name() }, Some(Hue::Green)),
        V::Dropped | V::Error => (if pv { "DENIED" } else { v.as_str_name() }, Some(Hue::Red)),
        V::Audit => (if pv { "AUDITED" } else { v.as_str_name() }, Some(Hue::Yellow)),
        V::Traced => (v.as_str_name(), Some(Hue::Blue)),
        V::Translated => (v.as_str_name(), Some(Hue::Cyan)),
        V::Unknown => (v.as_str_name(), None),
    };
    hue.map_or_else(|| text.to_owned(), |h| paint(color, h, text))
}

/// ` BY name (Kind), ns/name2 (Kind)` for the policies that decided.
fn policy_names(f: &Flow) -> String {
    use flow::Verdict as V;
    let lists: [&Vec<flow::Policy>; 2] = match V::try_from(f.verdict) {
        Ok(V::Dropped | V::Error) => [&f.ingress_denied_by, &f.egress_denied_by],
        _ => [&f.ingress_allowed_by, &f.egress_allowed_by],
    };
    let names: Vec<String> = lists
        .into_iter()
        .flatten()
        .map(|p| {
            let name = if p.namespace.is_empty() { p.name.clone() } else { format!("{}/{}", p.namespace, p.name) };
            if p.kind.is_empty() {
                name
            } else {
                format!("{name} ({})", p.kind)
            }
        })
        .collect();
    if names.is_empty() {
        String::new()
    } else {
        format!(" BY {}", names.join(", "))
    }
}

fn ports(f: &Flow) -> (u32, u32) {
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(Protocol::Tcp(t)) => (t.source_port, t.destination_port),
        Some(Protocol::Udp(u)) => (u.source_port, u.destination_port),
        Some(Protocol::Sctp(s)) => (s.source_port, s.destination_port),
        _ => (0, 0),
    }
}

/// `ns/pod:port`, `ns/service:port`, `name1,name2:port` or `ip:port` (no port when 0).
fn hostname(ip: &str, port: u32, ep: Option<&flow::Endpoint>, svc: Option<&flow::Service>, names: &[String]) -> String {
    let join = |ns: &str, name: &str| if ns.is_empty() { name.to_owned() } else { format!("{ns}/{name}") };
    let host = match (ep, svc) {
        (Some(e), _) if !e.pod_name.is_empty() => join(&e.namespace, &e.pod_name),
        (_, Some(s)) if !s.name.is_empty() => join(&s.namespace, &s.name),
        _ if !names.is_empty() => names.join(","),
        _ => ip.to_owned(),
    };
    if port == 0 {
        host
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Source and destination names of a flow.
pub fn hosts(f: &Flow) -> (String, String) {
    let Some(ip) = &f.ip else {
        return f.ethernet.as_ref().map(|e| (e.source.clone(), e.destination.clone())).unwrap_or_default();
    };
    let (sp, dp) = ports(f);
    (
        hostname(&ip.source, sp, f.source.as_ref(), f.source_service.as_ref(), &f.source_names),
        hostname(&ip.destination, dp, f.destination.as_ref(), f.destination_service.as_ref(), &f.destination_names),
    )
}

/// `(ID:12345)`, or a reserved identity's name: `(world)`.
pub fn identity(id: u32) -> String {
    match myelin_policy::ReservedIdentity::from_id(id) {
        Some(r) => format!("({})", r.name()),
        None => format!("(ID:{id})"),
    }
}

fn icmp_name(v6: bool, t: u32) -> &'static str {
    match (v6, t) {
        (false, 0) => "EchoReply",
        (false, 3) => "DestinationUnreachable",
        (false, 5) => "Redirect",
        (false, 8) => "EchoRequest",
        (false, 11) => "TimeExceeded",
        (false, 12) => "ParameterProblem",
        (true, 1) => "DestinationUnreachable",
        (true, 2) => "PacketTooBig",
        (true, 3) => "TimeExceeded",
        (true, 128) => "EchoRequest",
        (true, 129) => "EchoReply",
        (true, 135) => "NeighborSolicitation",
        (true, 136) => "NeighborAdvertisement",
        _ => "Other",
    }
}

/// The SUMMARY: the flow's own summary, else one made from its L4 header.
#[allow(deprecated)]
pub fn summary(f: &Flow) -> String {
    if !f.summary.is_empty() {
        return f.summary.clone();
    }
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(Protocol::Tcp(t)) => {
            let fl = t.flags.unwrap_or_default();
            let names: Vec<&str> = [
                (fl.syn, "SYN"),
                (fl.ack, "ACK"),
                (fl.psh, "PSH"),
                (fl.fin, "FIN"),
                (fl.rst, "RST"),
                (fl.urg, "URG"),
                (fl.ece, "ECE"),
                (fl.cwr, "CWR"),
                (fl.ns, "NS"),
            ]
            .into_iter()
            .filter_map(|(on, n)| on.then_some(n))
            .collect();
            format!("TCP Flags: {}", names.join(", "))
        }
        Some(Protocol::Udp(_)) => "UDP".into(),
        Some(Protocol::Sctp(_)) => "SCTP".into(),
        Some(Protocol::IcmPv4(i)) => format!("ICMPv4 {}", icmp_name(false, i.r#type)),
        Some(Protocol::IcmPv6(i)) => format!("ICMPv6 {}", icmp_name(true, i.r#type)),
        Some(Protocol::Vrrp(_)) => "VRRP".into(),
        Some(Protocol::Igmp(_)) => "IGMP".into(),
        None => String::new(),
    }
}

/// Text Myelin put in `extensions`: the TCP handshake latency (`tcp_handshake_us`
/// of a Struct) as `TCP handshake 312us`, other Struct fields as `key=value`, a
/// StringValue as it is; other types are skipped.
pub fn extension_text(f: &Flow) -> Option<String> {
    let any: &Any = f.extensions.as_ref()?;
    match any.well_known_name()? {
        "StringValue" => String::decode(any.value.as_slice()).ok().filter(|s| !s.is_empty()),
        "Struct" => {
            let s = pbjson_types::Struct::decode(any.value.as_slice()).ok()?;
            let mut parts: Vec<String> = s
                .fields
                .iter()
                .map(|(k, v)| {
                    let number = match &v.kind {
                        Some(pbjson_types::value::Kind::NumberValue(n)) => Some(*n),
                        _ => None,
                    };
                    match (k.as_str(), number) {
                        ("tcp_handshake_us", Some(us)) if us >= 1000.0 => format!("TCP handshake {:.2}ms", us / 1000.0),
                        ("tcp_handshake_us", Some(us)) => format!("TCP handshake {us}us"),
                        (_, Some(n)) => format!("{k}={n}"),
                        _ => {
                            let v = serde_json::to_value(v).map_or_else(
                                |_| "?".into(),
                                |j| match j {
                                    serde_json::Value::String(s) => s,
                                    other => other.to_string(),
                                },
                            );
                            format!("{k}={v}")
                        }
                    }
                })
                .collect();
            parts.sort();
            (!parts.is_empty()).then(|| parts.join(" "))
        }
        _ => None,
    }
}

/// One compact line (without the trailing newline).
pub fn compact(f: &Flow, o: &Options) -> String {
    let (mut src, mut dst) = hosts(f);
    let mut src_id = identity(f.source.as_ref().map_or(0, |e| e.identity));
    let mut dst_id = identity(f.destination.as_ref().map_or(0, |e| e.identity));
    let arrow = match f.is_reply {
        None => "<>",
        Some(true) => {
            std::mem::swap(&mut src, &mut dst);
            std::mem::swap(&mut src_id, &mut dst_id);
            "<-"
        }
        Some(false) => "->",
    };
    let node = if o.node_name { format!(" [{}]", f.node_name) } else { String::new() };
    let policies = if o.policy_names { policy_names(f) } else { String::new() };
    let ext = extension_text(f).map(|t| format!(" [{t}]")).unwrap_or_default();
    let c = o.color;
    format!(
        "{}{node}: {} {} {arrow} {} {} {} {}{policies} ({}){ext}",
        stamp_milli(f.time.as_ref()),
        paint(c, Hue::Cyan, &src),
        paint(c, Hue::Magenta, &src_id),
        paint(c, Hue::Cyan, &dst),
        paint(c, Hue::Magenta, &dst_id),
        flow_type(f),
        verdict(f, c),
        summary(f),
    )
}

/// The lines a response prints to stdout (flows, json) and to stderr (lost
/// events, node status in compact and table).
pub enum Line {
    Out(String),
    Err(String),
}

/// What a lost-events response says.
pub fn lost_text(r: &GetFlowsResponse, l: &flow::LostEvent) -> String {
    let src = flow::LostEventSource::try_from(l.source).map_or("UNKNOWN_LOST_EVENT_SOURCE", |s| s.as_str_name());
    let cpu = l.cpu.map_or("N/A".into(), |c| c.to_string());
    let node = if r.node_name.is_empty() { String::new() } else { format!(" [{}]", r.node_name) };
    format!("{}{node}: EVENTS LOST: {src} CPU({cpu}) {}", stamp_milli(r.time.as_ref()), l.num_events_lost)
}

fn node_status_text(r: &GetFlowsResponse, s: &myelin_observe::proto::relay::NodeStatusEvent) -> String {
    let state = myelin_observe::proto::relay::NodeState::try_from(s.state_change)
        .map_or("UNKNOWN_NODE_STATE", |st| st.as_str_name());
    let msg = if s.message.is_empty() { String::new() } else { format!(": {}", s.message) };
    format!("{} [{}]: {state} {}{msg}", stamp_milli(r.time.as_ref()), r.node_name, s.node_names.join(", "))
}

/// Prints responses in one format. Tables are aligned over everything when the
/// output ends (`finish`), or row by row while following.
pub struct Printer {
    pub opts: Options,
    streaming: bool,
    rows: Vec<Vec<(String, String)>>,
    widths: Vec<usize>,
    header_done: bool,
}

impl Printer {
    pub fn new(opts: Options, streaming: bool) -> Self {
        Self { opts, streaming, rows: Vec::new(), widths: Vec::new(), header_done: false }
    }

    /// What printing one response produces.
    pub fn lines(&mut self, r: &GetFlowsResponse) -> Result<Vec<Line>> {
        if self.opts.output == Output::Json {
            // A value the JSON mapping cannot express (an enum number this build has no
            // name for) costs that one line, said on stderr, not the whole stream.
            return Ok(vec![match serde_json::to_string(r) {
                Ok(s) => Line::Out(s),
                Err(e) => Line::Err(format!(
                    "myelin: a response from {} at {} cannot be written as JSON ({e}); skipped",
                    if r.node_name.is_empty() { "the agent" } else { r.node_name.as_str() },
                    stamp_milli(r.time.as_ref()),
                )),
            }]);
        }
        Ok(match &r.response_types {
            Some(ResponseTypes::Flow(f)) => match self.opts.output {
                Output::Table => self.table_row(f),
                _ => vec![Line::Out(compact(f, &self.opts))],
            },
            Some(ResponseTypes::LostEvents(l)) => vec![Line::Err(lost_text(r, l))],
            Some(ResponseTypes::NodeStatus(s)) => vec![Line::Err(node_status_text(r, s))],
            None => vec![],
        })
    }

    /// Print one response.
    pub fn print(&mut self, r: &GetFlowsResponse) -> Result<()> {
        for l in self.lines(r)? {
            match l {
                Line::Out(s) => outln!("{s}"),
                Line::Err(s) => eprintln!("{s}"),
            }
        }
        Ok(())
    }

    /// Print what is buffered (the table).
    pub fn finish(&mut self) {
        for l in self.flush_table() {
            if let Line::Out(s) = l {
                outln!("{s}");
            }
        }
    }

    fn header(&self) -> Vec<(String, String)> {
        let mut h = vec!["TIMESTAMP"];
        if self.opts.node_name {
            h.push("NODE");
        }
        h.extend(["SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]);
        h.into_iter().map(|s| (s.to_owned(), s.to_owned())).collect()
    }

    fn table_row(&mut self, f: &Flow) -> Vec<Line> {
        let (src, dst) = hosts(f);
        let c = self.opts.color;
        let plain_verdict = verdict(f, false);
        let policies = if self.opts.policy_names { policy_names(f) } else { String::new() };
        let mut row = vec![(stamp_milli(f.time.as_ref()), stamp_milli(f.time.as_ref()))];
        if self.opts.node_name {
            row.push((f.node_name.clone(), f.node_name.clone()));
        }
        let ext = extension_text(f).map(|t| format!(" [{t}]")).unwrap_or_default();
        row.extend([
            (src.clone(), paint(c, Hue::Cyan, &src)),
            (dst.clone(), paint(c, Hue::Cyan, &dst)),
            (flow_type(f), flow_type(f)),
            (format!("{plain_verdict}{policies}"), format!("{}{policies}", verdict(f, c))),
            (format!("{}{ext}", summary(f)), format!("{}{ext}", summary(f))),
        ]);
        if !self.header_done {
            self.header_done = true;
            self.rows.push(self.header());
        }
        self.rows.push(row);
        if self.streaming {
            self.flush_table()
        } else {
            Vec::new()
        }
    }

    /// Lay out the buffered rows: columns padded to the widest cell so far, 3 spaces apart.
    fn flush_table(&mut self) -> Vec<Line> {
        for row in &self.rows {
            if self.widths.len() < row.len() {
                self.widths.resize(row.len(), 0);
            }
            for (i, (plain, _)) in row.iter().enumerate() {
                self.widths[i] = self.widths[i].max(plain.chars().count());
            }
        }
        let mut out = Vec::new();
        for row in std::mem::take(&mut self.rows) {
            let mut line = String::new();
            let last = row.len().saturating_sub(1);
            for (i, (plain, shown)) in row.iter().enumerate() {
                line.push_str(shown);
                if i < last {
                    let pad = self.widths[i] - plain.chars().count() + 3;
                    line.push_str(&" ".repeat(pad));
                }
            }
            out.push(Line::Out(line));
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, deprecated)]
pub(crate) mod tests {
    use super::*;
    use myelin_observe::proto::Timestamp;

    pub(crate) fn ep(ns: &str, pod: &str, identity: u32) -> flow::Endpoint {
        flow::Endpoint {
            identity,
            namespace: ns.into(),
            pod_name: pod.into(),
            labels: vec![format!("k8s:app={pod}")],
            ..Default::default()
        }
    }

    pub(crate) fn tcp(sport: u32, dport: u32, syn: bool, ack: bool) -> Option<flow::Layer4> {
        Some(flow::Layer4 {
            protocol: Some(Protocol::Tcp(flow::Tcp {
                source_port: sport,
                destination_port: dport,
                flags: Some(flow::TcpFlags { syn, ack, ..Default::default() }),
            })),
        })
    }

    /// A forwarded TCP SYN from x/a to x/b seen at the destination endpoint.
    pub(crate) fn forwarded(secs: i64) -> Flow {
        Flow {
            time: Some(Timestamp { seconds: secs, nanos: 123_456_789 }),
            verdict: flow::Verdict::Forwarded as i32,
            ip: Some(flow::Ip {
                source: "10.244.1.2".into(),
                destination: "10.244.1.3".into(),
                ip_version: flow::IpVersion::IPv4 as i32,
                ..Default::default()
            }),
            l4: tcp(40000, 80, true, false),
            source: Some(ep("x", "a", 4242)),
            destination: Some(ep("x", "b", 4343)),
            r#type: flow::FlowType::L3L4 as i32,
            node_name: "node1".into(),
            is_reply: Some(false),
            event_type: Some(flow::CiliumEventType { r#type: 4, sub_type: 0 }),
            traffic_direction: flow::TrafficDirection::Ingress as i32,
            trace_observation_point: flow::TraceObservationPoint::ToEndpoint as i32,
            summary: "TCP Flags: SYN".into(),
            ..Default::default()
        }
    }

    /// A policy-verdict deny of x/a -> y/c:81, decided by a named policy.
    pub(crate) fn denied(secs: i64) -> Flow {
        Flow {
            time: Some(Timestamp { seconds: secs, nanos: 0 }),
            verdict: flow::Verdict::Dropped as i32,
            drop_reason_desc: flow::DropReason::PolicyDeny as i32,
            ip: Some(flow::Ip {
                source: "10.244.1.2".into(),
                destination: "10.244.2.9".into(),
                ip_version: flow::IpVersion::IPv4 as i32,
                ..Default::default()
            }),
            l4: tcp(40001, 81, true, false),
            source: Some(ep("x", "a", 4242)),
            destination: Some(ep("y", "c", 4444)),
            node_name: "node2".into(),
            event_type: Some(flow::CiliumEventType { r#type: 5, sub_type: 0 }),
            traffic_direction: flow::TrafficDirection::Ingress as i32,
            policy_match_type: 2,
            ingress_denied_by: vec![flow::Policy {
                name: "deny-81".into(),
                namespace: "y".into(),
                kind: "CiliumNetworkPolicy".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn plain() -> Options {
        Options::default()
    }

    #[test]
    fn compact_forwarded_trace_flow() {
        assert_eq!(
            compact(&forwarded(1234), &plain()),
            "Jan  1 00:20:34.123: x/a:40000 (ID:4242) -> x/b:80 (ID:4343) to-endpoint FORWARDED (TCP Flags: SYN)"
        );
    }

    #[test]
    fn compact_reply_flips_and_unknown_direction_is_both_ways() {
        let mut f = forwarded(0);
        f.is_reply = Some(true);
        f.summary = String::new();
        f.l4 = tcp(80, 40000, true, true);
        f.source = Some(ep("x", "b", 4343));
        f.destination = Some(ep("x", "a", 4242));
        assert_eq!(
            compact(&f, &plain()),
            "Jan  1 00:00:00.123: x/a:40000 (ID:4242) <- x/b:80 (ID:4343) to-endpoint FORWARDED (TCP Flags: SYN, ACK)"
        );
        f.is_reply = None;
        assert!(compact(&f, &plain()).contains("x/b:80 (ID:4343) <> x/a:40000 (ID:4242)"));
    }

    #[test]
    fn compact_policy_verdict_with_policy_names() {
        let f = denied(0);
        assert_eq!(
            compact(&f, &plain()),
            "Jan  1 00:00:00.000: x/a:40001 (ID:4242) <> y/c:81 (ID:4444) policy-verdict:L3-L4 INGRESS DENIED \
             (TCP Flags: SYN)"
        );
        let o = Options { policy_names: true, node_name: true, ..plain() };
        assert_eq!(
            compact(&f, &o),
            "Jan  1 00:00:00.000 [node2]: x/a:40001 (ID:4242) <> y/c:81 (ID:4444) policy-verdict:L3-L4 INGRESS \
             DENIED BY y/deny-81 (CiliumNetworkPolicy) (TCP Flags: SYN)"
        );
    }

    #[test]
    fn compact_drop_shows_the_reason_and_world_without_pods() {
        let f = Flow {
            time: Some(Timestamp { seconds: 60, nanos: 0 }),
            verdict: flow::Verdict::Dropped as i32,
            ip: Some(flow::Ip {
                source: "198.51.100.10".into(),
                destination: "10.244.1.3".into(),
                ..Default::default()
            }),
            l4: Some(flow::Layer4 { protocol: Some(Protocol::IcmPv4(flow::IcmPv4 { r#type: 8, code: 0 })) }),
            source: Some(flow::Endpoint { identity: 2, ..Default::default() }),
            destination: Some(ep("x", "b", 4343)),
            event_type: Some(flow::CiliumEventType { r#type: 1, sub_type: 133 }),
            is_reply: Some(false),
            ..Default::default()
        };
        assert_eq!(
            compact(&f, &plain()),
            "Jan  1 00:01:00.000: 198.51.100.10 (world) -> x/b (ID:4343) Policy denied DROPPED (ICMPv4 EchoRequest)"
        );
    }

    #[test]
    fn colour_only_when_asked() {
        let o = Options { color: true, ..plain() };
        let line = compact(&forwarded(0), &o);
        assert!(line.contains("\x1b[32mFORWARDED\x1b[0m") && line.contains("\x1b[36mx/a:40000\x1b[0m"), "{line:?}");
        assert!(!compact(&forwarded(0), &plain()).contains('\x1b'));
        assert!(compact(&denied(0), &o).contains("\x1b[31mDENIED\x1b[0m"));
    }

    #[test]
    fn extensions_text_is_shown() {
        let mut f = forwarded(0);
        f.extensions = Some(Any::pack("StringValue", &"handshake 312us".to_string()));
        assert!(compact(&f, &plain()).ends_with("(TCP Flags: SYN) [handshake 312us]"));
        // What the agent puts there (myelin_observe::flowpb::extensions): a Struct.
        let mut r = myelin_observe::record::FlowRecord {
            flags: myelin_observe::record::flags::HANDSHAKE,
            handshake_us: 312,
            ..Default::default()
        };
        f.extensions = myelin_observe::flowpb::extensions(&r);
        assert!(compact(&f, &plain()).ends_with("(TCP Flags: SYN) [TCP handshake 312us]"), "{}", compact(&f, &plain()));
        r.handshake_us = 1250;
        f.extensions = myelin_observe::flowpb::extensions(&r);
        assert!(compact(&f, &plain()).ends_with("[TCP handshake 1.25ms]"), "{}", compact(&f, &plain()));
        f.extensions = Some(Any { type_url: "type.googleapis.com/other.Thing".into(), value: vec![1] });
        assert!(compact(&f, &plain()).ends_with("(TCP Flags: SYN)"));
    }

    #[test]
    fn json_lines_are_protojson_responses() {
        let mut p = Printer::new(Options { output: Output::Json, ..plain() }, false);
        let r = GetFlowsResponse {
            node_name: "node2".into(),
            time: denied(7).time,
            response_types: Some(ResponseTypes::Flow(denied(7))),
        };
        let lines = p.lines(&r).unwrap();
        let [Line::Out(s)] = lines.as_slice() else { panic!("one stdout line") };
        assert!(!s.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(s).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:07Z");
        assert_eq!(v["node_name"], "node2");
        let f = &v["flow"];
        assert_eq!(f["verdict"], "DROPPED");
        assert_eq!(f["drop_reason_desc"], "POLICY_DENY");
        assert_eq!(f["IP"]["source"], "10.244.1.2");
        assert_eq!(f["IP"]["ipVersion"], "IPv4");
        assert_eq!(f["l4"]["TCP"]["destination_port"], 81);
        assert_eq!(f["l4"]["TCP"]["flags"]["SYN"], true);
        assert_eq!(f["traffic_direction"], "INGRESS");
        assert_eq!(f["ingress_denied_by"][0]["name"], "deny-81");
        assert_eq!(f["destination"]["pod_name"], "c");
        // Lost events are json lines too (on stdout).
        let lost = GetFlowsResponse {
            response_types: Some(ResponseTypes::LostEvents(flow::LostEvent {
                source: flow::LostEventSource::HubbleRingBuffer as i32,
                num_events_lost: 3,
                ..Default::default()
            })),
            ..Default::default()
        };
        let lines = p.lines(&lost).unwrap();
        let [Line::Out(s)] = lines.as_slice() else { panic!("one stdout line") };
        assert_eq!(s, r#"{"lost_events":{"source":"HUBBLE_RING_BUFFER","num_events_lost":"3"}}"#);
    }

    #[test]
    fn json_a_response_it_cannot_encode_is_reported_not_fatal() {
        let mut p = Printer::new(Options { output: Output::Json, ..plain() }, false);
        let mut f = forwarded(0);
        f.verdict = 99;
        let r = GetFlowsResponse {
            node_name: "node1".into(),
            response_types: Some(ResponseTypes::Flow(f)),
            ..Default::default()
        };
        let lines = p.lines(&r).unwrap();
        let [Line::Err(s)] = lines.as_slice() else { panic!("one stderr line") };
        assert!(s.contains("node1") && s.contains("cannot be written as JSON"), "{s}");
    }

    #[test]
    fn lost_events_go_to_stderr_in_compact() {
        let mut p = Printer::new(plain(), false);
        let lost = GetFlowsResponse {
            node_name: "node1".into(),
            time: Some(Timestamp { seconds: 0, nanos: 0 }),
            response_types: Some(ResponseTypes::LostEvents(flow::LostEvent {
                source: flow::LostEventSource::PerfEventRingBuffer as i32,
                num_events_lost: 12,
                cpu: Some(1),
                ..Default::default()
            })),
        };
        let lines = p.lines(&lost).unwrap();
        let [Line::Err(s)] = lines.as_slice() else { panic!("one stderr line") };
        assert_eq!(s, "Jan  1 00:00:00.000 [node1]: EVENTS LOST: PERF_EVENT_RING_BUFFER CPU(1) 12");
    }

    #[test]
    fn table_aligns_columns() {
        let mut p = Printer::new(Options { output: Output::Table, ..plain() }, false);
        for f in [forwarded(0), denied(1)] {
            let r = GetFlowsResponse { response_types: Some(ResponseTypes::Flow(f)), ..Default::default() };
            assert!(p.lines(&r).unwrap().is_empty(), "buffered until finish");
        }
        let lines: Vec<String> = p
            .flush_table()
            .into_iter()
            .map(|l| match l {
                Line::Out(s) | Line::Err(s) => s,
            })
            .collect();
        assert_eq!(
            lines,
            vec![
                "TIMESTAMP             SOURCE      DESTINATION   TYPE                           VERDICT     SUMMARY",
                "Jan  1 00:00:00.123   x/a:40000   x/b:80        to-endpoint                    FORWARDED   TCP Flags: SYN",
                "Jan  1 00:00:01.000   x/a:40001   y/c:81        policy-verdict:L3-L4 INGRESS   DENIED      TCP Flags: SYN",
            ]
        );
    }

    #[test]
    fn drop_reason_texts() {
        assert_eq!(drop_reason_text(133), "Policy denied");
        assert_eq!(drop_reason_text(181), "Policy denied by denylist");
        assert_eq!(drop_reason_text(203), "DROP_EP_NOT_READY");
        assert_eq!(drop_reason_text(250), "250");
    }
}
