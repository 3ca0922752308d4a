//! A [`FlowRecord`] as a Hubble `flow.Flow`: the dictionary names both sides,
//! the agent's rule index names the policy (also for rules edited since).

use std::net::IpAddr;

use crate::dict::{DictView, EndpointDesc};
use crate::directory::PolicyName;
use crate::proto::flow;
use crate::record::{self, flags, point, tcp, FlowRecord};

/// Cilium's name of a drop reason (what `hubble observe` prints).
#[must_use]
pub fn drop_reason_name(reason: u8) -> &'static str {
    flow::DropReason::try_from(i32::from(reason)).map_or("UNKNOWN_REASON", |d| d.as_str_name())
}

/// The endpoint message of one side.
#[must_use]
pub fn endpoint(desc: Option<&EndpointDesc>, identity: u32) -> flow::Endpoint {
    match desc {
        Some(d) => flow::Endpoint {
            id: d.endpoint_id,
            identity: if identity != 0 { identity } else { d.identity },
            cluster_name: d.cluster.clone(),
            namespace: d.namespace.clone(),
            labels: d.labels.clone(),
            pod_name: d.pod_name.clone(),
            workloads: d
                .workload
                .iter()
                .map(|(name, kind)| flow::Workload { name: name.clone(), kind: kind.clone() })
                .collect(),
        },
        None => flow::Endpoint { identity, ..flow::Endpoint::default() },
    }
}

fn policy(p: PolicyName) -> flow::Policy {
    flow::Policy {
        name: p.name,
        namespace: p.namespace,
        labels: vec![format!("k8s:io.cilium.k8s.policy.derived-from={}", p.kind)],
        revision: p.revision,
        kind: p.kind,
    }
}

fn timestamp(ns: u64) -> crate::proto::Timestamp {
    crate::proto::Timestamp {
        seconds: i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX),
        nanos: i32::try_from(ns % 1_000_000_000).unwrap_or(0),
    }
}

fn ip_string(version: u8, v: u128) -> String {
    record::addr(version, v).map(|a| a.to_string()).unwrap_or_default()
}

/// The Layer4 message of a record.
#[must_use]
pub fn layer4(r: &FlowRecord) -> Option<flow::Layer4> {
    use flow::layer4::Protocol as P;
    let proto = match r.protocol {
        6 => P::Tcp(flow::Tcp {
            source_port: u32::from(r.src_port),
            destination_port: u32::from(r.dst_port),
            flags: Some(flow::TcpFlags {
                fin: r.tcp_flags & tcp::FIN != 0,
                syn: r.tcp_flags & tcp::SYN != 0,
                rst: r.tcp_flags & tcp::RST != 0,
                psh: r.tcp_flags & tcp::PSH != 0,
                ack: r.tcp_flags & tcp::ACK != 0,
                urg: r.tcp_flags & tcp::URG != 0,
                ece: r.tcp_flags & tcp::ECE != 0,
                cwr: r.tcp_flags & tcp::CWR != 0,
                ns: false,
            }),
        }),
        17 => P::Udp(flow::Udp { source_port: u32::from(r.src_port), destination_port: u32::from(r.dst_port) }),
        132 => P::Sctp(flow::Sctp { source_port: u32::from(r.src_port), destination_port: u32::from(r.dst_port) }),
        1 => P::IcmPv4(flow::IcmPv4 { r#type: u32::from(r.icmp_type), code: u32::from(r.icmp_code) }),
        58 => P::IcmPv6(flow::IcmPv6 { r#type: u32::from(r.icmp_type), code: u32::from(r.icmp_code) }),
        _ => return None,
    };
    Some(flow::Layer4 { protocol: Some(proto) })
}

/// The flow of a record. `rule` names rule ids; `node` is the node the record comes from.
/// The deprecated fields (drop_reason, reply, Summary) are filled too, as Hubble does, for
/// older clients.
#[allow(deprecated)]
pub fn to_flow(r: &FlowRecord, dict: &DictView, rule: &dyn Fn(u32) -> Option<PolicyName>, node: &str) -> flow::Flow {
    let src = dict.get(r.src_ep).map(AsRef::as_ref);
    let dst = dict.get(r.dst_ep).map(AsRef::as_ref);
    let mut f = flow::Flow {
        time: Some(timestamp(r.time_ns)),
        uuid: format!("{node}/{}", r.seq),
        verdict: i32::from(r.verdict),
        drop_reason: u32::from(r.drop_reason),
        drop_reason_desc: i32::from(r.drop_reason),
        r#type: flow::FlowType::L3L4 as i32,
        node_name: node.to_owned(),
        source: Some(endpoint(src, r.src_identity)),
        destination: Some(endpoint(dst, r.dst_identity)),
        l4: layer4(r),
        event_type: Some(flow::CiliumEventType { r#type: i32::from(r.event_type), sub_type: i32::from(r.sub_type) }),
        traffic_direction: i32::from(r.traffic_direction),
        policy_match_type: u32::from(r.match_type),
        trace_observation_point: i32::from(r.obs_point),
        trace_reason: i32::from(r.trace_reason),
        is_reply: r.is_reply(),
        reply: r.is_reply().unwrap_or(false),
        ..flow::Flow::default()
    };
    if r.ip_version != 0 {
        f.ip = Some(flow::Ip {
            source: ip_string(r.ip_version, r.src_ip),
            destination: ip_string(r.ip_version, r.dst_ip),
            ip_version: if r.ip_version == 4 { flow::IpVersion::IPv4 } else { flow::IpVersion::IPv6 } as i32,
            ..flow::Ip::default()
        });
    }
    if r.eth_src != 0 || r.eth_dst != 0 {
        f.ethernet =
            Some(flow::Ethernet { source: record::mac_string(r.eth_src), destination: record::mac_string(r.eth_dst) });
    }
    if r.rule_id != 0 {
        if let Some(p) = rule(r.rule_id) {
            let p = policy(p);
            let ingress = r.traffic_direction == record::direction::INGRESS;
            let allowed = r.policy_verdict == myelin_bpf::VERDICT_ALLOW;
            match (ingress, allowed) {
                (true, true) => f.ingress_allowed_by.push(p),
                (false, true) => f.egress_allowed_by.push(p),
                (true, false) => f.ingress_denied_by.push(p),
                (false, false) => f.egress_denied_by.push(p),
            }
        }
    }
    if r.flags & flags::TUNNEL != 0 {
        // The datapath stores the other node's address as it is on the wire (network order).
        let remote = IpAddr::V4(std::net::Ipv4Addr::from(r.tunnel_remote.to_ne_bytes())).to_string();
        // Sent into the overlay: the remote node is the outer destination; received from it
        // (delivered to a pod, or dropped by its policy): the outer source.
        let (source, destination) =
            if r.obs_point == point::TO_OVERLAY { (String::new(), remote) } else { (remote, String::new()) };
        f.tunnel = Some(flow::Tunnel {
            protocol: flow::tunnel::Protocol::Vxlan as i32,
            ip: Some(flow::Ip { source, destination, ip_version: flow::IpVersion::IPv4 as i32, ..flow::Ip::default() }),
            ..flow::Tunnel::default()
        });
    }
    f.summary = summary(r);
    f.extensions = extensions(r);
    f
}

/// Myelin's additions to a flow, as a `google.protobuf.Struct` in `extensions`
/// (any protobuf/JSON consumer can read a Struct): the TCP handshake latency
/// measured in the datapath (SYN to SYN-ACK at the endpoint), on the flow of
/// the SYN-ACK.
#[must_use]
pub fn extensions(r: &FlowRecord) -> Option<crate::proto::wkt::Any> {
    use prost::Message;
    use prost_types::value::Kind;
    if r.flags & flags::HANDSHAKE == 0 {
        return None;
    }
    let mut fields = std::collections::BTreeMap::new();
    fields.insert(
        "tcp_handshake_us".to_owned(),
        prost_types::Value { kind: Some(Kind::NumberValue(f64::from(r.handshake_us))) },
    );
    let s = prost_types::Struct { fields };
    Some(crate::proto::wkt::Any {
        type_url: "type.googleapis.com/google.protobuf.Struct".into(),
        value: s.encode_to_vec(),
    })
}

/// The TCP handshake latency a flow carries in its extensions (microseconds).
#[must_use]
pub fn handshake_us(f: &flow::Flow) -> Option<u32> {
    use prost::Message;
    let any = f.extensions.as_ref()?;
    if !any.type_url.ends_with("google.protobuf.Struct") {
        return None;
    }
    let s = prost_types::Struct::decode(any.value.as_slice()).ok()?;
    match s.fields.get("tcp_handshake_us")?.kind.as_ref()? {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        prost_types::value::Kind::NumberValue(n) => Some(*n as u32),
        _ => None,
    }
}

/// Hubble's one-line summary of the L4 part.
#[must_use]
pub fn summary(r: &FlowRecord) -> String {
    match r.protocol {
        6 => {
            let mut names = Vec::new();
            for (bit, name) in [
                (tcp::SYN, "SYN"),
                (tcp::ACK, "ACK"),
                (tcp::PSH, "PSH"),
                (tcp::FIN, "FIN"),
                (tcp::RST, "RST"),
                (tcp::URG, "URG"),
                (tcp::ECE, "ECE"),
                (tcp::CWR, "CWR"),
            ] {
                if r.tcp_flags & bit != 0 {
                    names.push(name);
                }
            }
            format!("TCP Flags: {}", names.join(", "))
        }
        17 => "UDP".into(),
        132 => "SCTP".into(),
        1 => format!("ICMPv4 {}", icmp4_name(r.icmp_type)),
        58 => format!("ICMPv6 {}", icmp6_name(r.icmp_type)),
        _ => String::new(),
    }
}

fn icmp4_name(t: u8) -> &'static str {
    match t {
        0 => "EchoReply",
        3 => "DestinationUnreachable",
        5 => "Redirect",
        8 => "EchoRequest",
        11 => "TimeExceeded",
        12 => "ParameterProblem",
        _ => "Other",
    }
}

fn icmp6_name(t: u8) -> &'static str {
    match t {
        1 => "DestinationUnreachable",
        2 => "PacketTooBig",
        3 => "TimeExceeded",
        128 => "EchoRequest",
        129 => "EchoReply",
        135 => "NeighborSolicitation",
        136 => "NeighborAdvertisement",
        _ => "Other",
    }
}
