//! The configurations under test, each built in namespaces of its own and torn
//! down on drop (also when the benchmark fails or panics). Nothing is created in
//! the root netns: veths are created straight into their namespaces.
//!
//! ```text
//!  physical        [client eth0]=========veth=========[eth0 server]
//!  kernel-routing  [client eth0]==veth==[vc  node  vs]==veth==[eth0 server]
//!                   /32 + default via 169.254.1.1, static neighbours, node ip_forward=1
//!  iptables-N      kernel-routing + node FORWARD: established accept, N-rule chain, drop
//!  myelin[-N]      myelin-lab: node netns with the real agent, two pods plumbed by the
//!                   real CNI, forwarded by the eBPF datapath (bpf_redirect_peer);
//!                   -N: a CiliumNetworkPolicy with N rules applied through the CLI
//! ```

use crate::error::{io, PerfError, Result};
use crate::load::{self, IperfServer};
use crate::rules::{self, PolicySpec};
use crate::sys;
use myelin_api::{Client, DatapathMetric};
use myelin_lab::{Lab, LabOptions, LabSpec};
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Ports of the benchmark servers: iperf3, TCP_RR, TCP_CRR. The policies allow exactly these.
pub const STREAM_PORT: u16 = 15201;
pub const RR_PORT: u16 = 15202;
pub const CRR_PORT: u16 = 15203;
pub const PORTS: (u16, u16) = (STREAM_PORT, CRR_PORT);
/// A port no policy allows: probed to show a policy is enforced.
pub const DENIED_PORT: u16 = 15299;
/// How long a probe that should be dropped is given.
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);

/// eBPF datapath reason code "forwarded" (bpf/include/myelin_abi.h).
pub const REASON_FORWARDED: u8 = 0;
/// eBPF datapath reason code "to-stack": handed to the node's kernel stack.
pub const REASON_TO_STACK: u8 = 1;

/// Labels of the lab pods (the CNP selects on them).
pub const CLIENT_APP: &str = "perf-client";
pub const SERVER_APP: &str = "perf-server";

/// The IPv4 address a lab gave pod `p` (lab `lab`).
pub(crate) fn pod_ipv4(lab: &str, p: &myelin_lab::PodInfo) -> Result<Ipv4Addr> {
    p.ip.as_deref().and_then(|s| s.parse().ok()).ok_or_else(|| PerfError::Invalid {
        what: format!("lab {lab} pod {}", p.name),
        message: "has no IPv4 address".into(),
    })
}

/// One configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Kind {
    /// Two namespaces joined by one veth pair.
    Physical,
    /// Pods routed by the node's kernel, no filtering.
    KernelRouting,
    /// Kernel routing plus an iptables ruleset of `rules` rules.
    Iptables { rules: u32 },
    /// The Myelin lab; with `rules`, a CNP of that many rules.
    Myelin { rules: Option<u32> },
    /// The Myelin lab with flow events off (monitor aggregation "off"): the cost of
    /// observability is `myelin` against this.
    MyelinNoFlows,
    /// Two nodes: client pod on node A, server pod on node B, routed by the nodes' kernels,
    /// over a plain kernel VXLAN device (`vxlan: true`) or natively over the underlay.
    CrossKernel { vxlan: bool },
    /// A two-node Myelin lab (etcd), routing `vxlan` or `native`.
    CrossMyelin { vxlan: bool },
}

impl Kind {
    /// Stable id, e.g. `iptables-1000`.
    #[must_use]
    pub fn id(&self) -> String {
        match self {
            Kind::Physical => "physical".into(),
            Kind::KernelRouting => "kernel-routing".into(),
            Kind::Iptables { rules } => format!("iptables-{rules}"),
            Kind::Myelin { rules: None } => "myelin".into(),
            Kind::Myelin { rules: Some(n) } => format!("myelin-{n}"),
            Kind::MyelinNoFlows => "myelin-noflows".into(),
            Kind::CrossKernel { vxlan: true } => "cross-kernel-vxlan".into(),
            Kind::CrossKernel { vxlan: false } => "cross-native-kernel".into(),
            Kind::CrossMyelin { vxlan: true } => "cross-myelin-vxlan".into(),
            Kind::CrossMyelin { vxlan: false } => "cross-myelin-native".into(),
        }
    }

    /// What the configuration is, for people.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Kind::Physical => "bare veth pair between two netns (no routing, no eBPF)".into(),
            Kind::KernelRouting => {
                "pods on veths routed by the node's kernel (ip_forward, /32 routes, static neighbours)".into()
            }
            Kind::Iptables { rules } => {
                format!("kernel routing + iptables FORWARD policy, {rules} rule(s), match last")
            }
            Kind::Myelin { rules: None } => {
                "Myelin lab: real agent + CNI, eBPF datapath, no policy, flow events at the default aggregation".into()
            }
            Kind::MyelinNoFlows => "Myelin lab as `myelin`, flow events off".into(),
            Kind::Myelin { rules: Some(n) } => {
                format!("Myelin lab with a CiliumNetworkPolicy of {n} rule(s), match last")
            }
            Kind::CrossKernel { vxlan: true } => format!(
                "two node netns on a bridge, each with a kernel VXLAN device (VNI {}, dstport 8472, MTU 1450); \
                 pods (MTU 1450) routed by the node kernels; no eBPF",
                crate::cross::KERNEL_VNI
            ),
            Kind::CrossKernel { vxlan: false } => {
                "two node netns on a bridge; pods routed by the node kernels, pod CIDRs routed via the other node; no eBPF"
                    .into()
            }
            Kind::CrossMyelin { vxlan: true } => {
                "2-node Myelin lab, routing: vxlan, kvstore: etcd (agent's myelin_vxlan, eBPF datapath)".into()
            }
            Kind::CrossMyelin { vxlan: false } => {
                "2-node Myelin lab, routing: native, kvstore: etcd (eBPF datapath, underlay routes the pod CIDRs)".into()
            }
        }
    }
}

/// A claim about the path a configuration takes and the evidence for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Check {
    pub claim: String,
    pub evidence: String,
    pub ok: bool,
}

/// Counters that prove the path, read before and after the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// `Ip: ForwDatagrams` of the node: packets its kernel routed.
    pub node_forwarded: Option<u64>,
    /// Packets of the iptables rule that allows the benchmark traffic.
    pub rule_packets: Option<u64>,
    /// eBPF "forwarded" packets at the client pod's endpoint (egress from the pod).
    pub ebpf_forwarded: Option<u64>,
    /// Packets received by the server's interface.
    pub server_rx: Option<u64>,
    /// Cross-node: packets sent by the client node's tunnel device (VXLAN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel_tx: Option<u64>,
    /// Cross-node: packets received by the server node's tunnel device (VXLAN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel_rx: Option<u64>,
    /// Cross-node: packets sent by the client node's underlay interface.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub underlay_tx: Option<u64>,
    /// Cross-node: `Ip: ForwDatagrams` of the server's node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_node_forwarded: Option<u64>,
    /// Cross-node Myelin: eBPF "to-stack" packets at the client pod's endpoint (egress), i.e.
    /// handed to the node's kernel to be routed to the other node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ebpf_to_stack: Option<u64>,
    /// Cross-node Myelin: eBPF "forwarded" packets at the server pod's endpoint (ingress on
    /// the server's node): delivered straight into the pod by the datapath.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ebpf_server_forwarded: Option<u64>,
}

impl Counters {
    /// `self - before`, field by field.
    #[must_use]
    pub fn delta(&self, before: &Counters) -> Counters {
        let d = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?));
        Counters {
            node_forwarded: d(self.node_forwarded, before.node_forwarded),
            rule_packets: d(self.rule_packets, before.rule_packets),
            ebpf_forwarded: d(self.ebpf_forwarded, before.ebpf_forwarded),
            server_rx: d(self.server_rx, before.server_rx),
            tunnel_tx: d(self.tunnel_tx, before.tunnel_tx),
            tunnel_rx: d(self.tunnel_rx, before.tunnel_rx),
            underlay_tx: d(self.underlay_tx, before.underlay_tx),
            server_node_forwarded: d(self.server_node_forwarded, before.server_node_forwarded),
            ebpf_to_stack: d(self.ebpf_to_stack, before.ebpf_to_stack),
            ebpf_server_forwarded: d(self.ebpf_server_forwarded, before.ebpf_server_forwarded),
        }
    }
}

/// A built configuration. Dropping it removes everything it created.
pub struct Target {
    pub kind: Kind,
    pub client_ns: PathBuf,
    pub server_ns: PathBuf,
    pub node_ns: Option<PathBuf>,
    pub client_ip: Ipv4Addr,
    pub server_ip: Ipv4Addr,
    /// Checks made while building (probes), before any measurement.
    pub setup_checks: Vec<Check>,
    pub(crate) server_if: String,
    pub(crate) owned_netns: Vec<String>,
    pub(crate) lab: Option<Lab>,
    pub(crate) client_endpoint: Option<u32>,
    pub(crate) agent_socket: Option<PathBuf>,
    pub(crate) iperf: Option<IperfServer>,
    /// Cross-node: the server's node, the tunnel device (both nodes) and the underlay interface.
    pub(crate) server_node_ns: Option<PathBuf>,
    pub(crate) tunnel_if: Option<String>,
    pub(crate) underlay_if: Option<String>,
    /// Cross-node Myelin: the server's endpoint and its node's agent.
    pub(crate) server_endpoint: Option<u32>,
    pub(crate) server_agent_socket: Option<PathBuf>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("kind", &self.kind).field("client_ns", &self.client_ns).finish_non_exhaustive()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.iperf = None;
        if let Some(lab) = self.lab.take() {
            let name = lab.name().to_owned();
            if lab.down().is_err() {
                let _ = Lab::down_by_name(&name);
            }
        }
        if !self.owned_netns.is_empty() {
            let lines: Vec<String> = self.owned_netns.iter().map(|n| format!("netns del {n}")).collect();
            let mut cmd = std::process::Command::new("ip");
            cmd.args(["-force", "-batch", "-"]);
            let _ = sys::run("deleting benchmark namespaces", &mut cmd, Some((lines.join("\n") + "\n").as_bytes()));
        }
    }
}

pub(crate) fn netns_path(name: &str) -> PathBuf {
    myelin_lab::naming::netns_path(name)
}

/// Unique per process and configuration: `mperf-<pid>-<tag>-<role>`.
pub(crate) fn netns_name(tag: &str, role: &str) -> String {
    format!("mperf-{}-{tag}-{role}", std::process::id())
}

pub(crate) fn short_tag(kind: &Kind) -> String {
    match kind {
        Kind::Physical => "phy".into(),
        Kind::KernelRouting => "kr".into(),
        Kind::Iptables { rules } => format!("ipt{rules}"),
        Kind::Myelin { rules } => format!("my{}", rules.map(|r| r.to_string()).unwrap_or_default()),
        Kind::MyelinNoFlows => "mynf".into(),
        Kind::CrossKernel { vxlan } => if *vxlan { "xkv" } else { "xkn" }.into(),
        Kind::CrossMyelin { vxlan } => if *vxlan { "xmv" } else { "xmn" }.into(),
    }
}

pub(crate) fn sysctl(netns: &Path, key: &str, value: &str) -> Result<()> {
    let file = Path::new("/proc/sys").join(key);
    sys::in_netns(netns, || std::fs::write(&file, value))?.map_err(io(format!(
        "writing {value} to {} in {}",
        file.display(),
        netns.display()
    )))
}

impl Target {
    pub(crate) fn empty(kind: Kind) -> Target {
        Target {
            kind,
            client_ns: PathBuf::new(),
            server_ns: PathBuf::new(),
            node_ns: None,
            client_ip: Ipv4Addr::UNSPECIFIED,
            server_ip: Ipv4Addr::UNSPECIFIED,
            setup_checks: Vec::new(),
            server_if: "eth0".into(),
            owned_netns: Vec::new(),
            lab: None,
            client_endpoint: None,
            agent_socket: None,
            iperf: None,
            server_node_ns: None,
            tunnel_if: None,
            underlay_if: None,
            server_endpoint: None,
            server_agent_socket: None,
        }
    }

    /// Build a namespace configuration (physical, kernel-routing, iptables-N).
    pub fn build_netns(kind: Kind) -> Result<Target> {
        let tag = short_tag(&kind);
        let mut t = Target::empty(kind);
        let (client, server) = (netns_name(&tag, "c"), netns_name(&tag, "s"));
        t.owned_netns = vec![client.clone(), server.clone()];
        let node = (!matches!(kind, Kind::Physical)).then(|| netns_name(&tag, "n"));
        if let Some(n) = &node {
            t.owned_netns.push(n.clone());
        }
        // Recorded before creation: a failure from here on removes what exists.
        let adds: Vec<String> = t.owned_netns.iter().map(|n| format!("netns add {n}")).collect();
        sys::ip_batch("creating benchmark namespaces", None, &adds)?;
        t.client_ns = netns_path(&client);
        t.server_ns = netns_path(&server);
        match &node {
            None => {
                t.client_ip = Ipv4Addr::new(10, 200, 0, 1);
                t.server_ip = Ipv4Addr::new(10, 200, 0, 2);
                sys::ip_batch(
                    "creating the veth pair",
                    None,
                    &[format!("link add eth0 netns {client} type veth peer name eth0 netns {server}")],
                )?;
                for (ns, ip) in [(&client, t.client_ip), (&server, t.server_ip)] {
                    sys::ip_batch(
                        "addressing",
                        Some(ns),
                        &["link set lo up".into(), format!("addr add {ip}/24 dev eth0"), "link set eth0 up".into()],
                    )?;
                }
            }
            Some(n) => {
                t.client_ip = Ipv4Addr::new(10, 201, 0, 2);
                t.server_ip = Ipv4Addr::new(10, 201, 0, 3);
                let node_ns = netns_path(n);
                sys::ip_batch(
                    "creating the pod veths",
                    None,
                    &[
                        format!("link add vc netns {n} address 02:00:00:00:01:01 type veth peer name eth0 netns {client} address 02:00:00:00:01:02"),
                        format!("link add vs netns {n} address 02:00:00:00:02:01 type veth peer name eth0 netns {server} address 02:00:00:00:02:02"),
                    ],
                )?;
                sys::ip_batch(
                    "plumbing the node",
                    Some(n),
                    &[
                        "link set lo up".into(),
                        "addr add 10.201.255.1/32 dev lo".into(),
                        "link set vc up".into(),
                        "link set vs up".into(),
                        "route add 10.201.0.2/32 dev vc".into(),
                        "route add 10.201.0.3/32 dev vs".into(),
                        "neigh replace 10.201.0.2 lladdr 02:00:00:00:01:02 dev vc nud permanent".into(),
                        "neigh replace 10.201.0.3 lladdr 02:00:00:00:02:02 dev vs nud permanent".into(),
                    ],
                )?;
                for dev in ["vc", "vs"] {
                    sysctl(&node_ns, &format!("net/ipv4/conf/{dev}/proxy_arp"), "1")?;
                }
                for (ns, ip, gw_mac) in
                    [(&client, t.client_ip, "02:00:00:00:01:01"), (&server, t.server_ip, "02:00:00:00:02:01")]
                {
                    sys::ip_batch(
                        "plumbing a pod",
                        Some(ns),
                        &[
                            "link set lo up".into(),
                            format!("addr add {ip}/32 dev eth0"),
                            "link set eth0 up".into(),
                            "route add 169.254.1.1/32 dev eth0 scope link".into(),
                            "route add default via 169.254.1.1 dev eth0".into(),
                            format!("neigh replace 169.254.1.1 lladdr {gw_mac} dev eth0 nud permanent"),
                        ],
                    )?;
                }
                // Routing depends on the node's forwarding: off, the server must be unreachable.
                sysctl(&node_ns, "net/ipv4/ip_forward", "0")?;
                let off = load::port_reachable(
                    &t.client_ns,
                    &t.server_ns,
                    SocketAddrV4::new(t.server_ip, DENIED_PORT),
                    PROBE_TIMEOUT,
                )?;
                sysctl(&node_ns, "net/ipv4/ip_forward", "1")?;
                let on = load::port_reachable(
                    &t.client_ns,
                    &t.server_ns,
                    SocketAddrV4::new(t.server_ip, DENIED_PORT),
                    Duration::from_secs(3),
                )?;
                t.node_ns = Some(node_ns.clone());
                if let Kind::Iptables { rules: n_rules } = kind {
                    let text = rules::iptables_ruleset(&PolicySpec {
                        client: t.client_ip,
                        server: t.server_ip,
                        ports: PORTS,
                        rules: n_rules,
                    });
                    let mut cmd = sys::ns_command(&node_ns, "iptables-restore");
                    cmd.arg("-w");
                    sys::run(&format!("loading {n_rules} iptables rules"), &mut cmd, Some(text.as_bytes()))?;
                    let blocked = !load::port_reachable(
                        &t.client_ns,
                        &t.server_ns,
                        SocketAddrV4::new(t.server_ip, DENIED_PORT),
                        PROBE_TIMEOUT,
                    )?;
                    t.setup_checks.push(Check {
                        claim: "the iptables policy is enforced".into(),
                        evidence: format!(
                            "TCP to unlisted port {DENIED_PORT} {}",
                            if blocked { "dropped" } else { "got through" }
                        ),
                        ok: blocked,
                    });
                }
                t.setup_checks.push(Check {
                    claim: "traffic is routed by the node's kernel".into(),
                    evidence: format!(
                        "with node ip_forward=0 the server was {}; with ip_forward=1 {}",
                        if off { "reachable" } else { "unreachable" },
                        if on { "reachable" } else { "unreachable" }
                    ),
                    ok: !off && on,
                });
            }
        }
        t.start_iperf()?;
        Ok(t)
    }

    /// Build a Myelin lab (one node, two pods); with `rules`, apply a CNP through `policy_cli`.
    /// `index` tells the labs of one run apart (lab names are short).
    pub fn build_myelin(
        index: usize,
        kind: Kind,
        bin_dir: Option<PathBuf>,
        policy_cli: Option<&Path>,
    ) -> Result<Target> {
        let rules = match kind {
            Kind::Myelin { rules } => rules,
            _ => None,
        };
        let mut t = Target::empty(kind);
        let name = format!("pf{}m{}", std::process::id() % 100_000, index % 100);
        let agent = if kind == Kind::MyelinNoFlows { "agent: {monitor_aggregation: \"off\"}\n" } else { "" };
        let yaml = format!(
            "nodes: [{{name: n1}}]\nnamespaces: [{{name: default}}]\npods:\n  \
             - {{name: client, namespace: default, node: n1, labels: {{app: {CLIENT_APP}}}}}\n  \
             - {{name: server, namespace: default, node: n1, labels: {{app: {SERVER_APP}}}}}\n{agent}"
        );
        let spec = LabSpec::from_yaml(&yaml, "benchmark lab")?;
        let lab = Lab::up(spec, &name, LabOptions { bin_dir: bin_dir.clone(), ..LabOptions::default() })?;
        let (client, server, node) = (lab.pod("default", "client")?, lab.pod("default", "server")?, lab.node("n1")?);
        t.lab = Some(lab);
        t.client_ip = pod_ipv4(&name, &client)?;
        t.server_ip = pod_ipv4(&name, &server)?;
        t.client_ns = client.netns_path.clone();
        t.server_ns = server.netns_path.clone();
        t.node_ns = Some(node.netns_path.clone());
        t.client_endpoint = client.endpoint_id;
        t.agent_socket = Some(node.agent_socket.clone());
        if let Some(n) = rules {
            let cli =
                policy_cli.ok_or_else(|| PerfError::Invalid { what: t.kind.id(), message: "no policy CLI".into() })?;
            let yaml = rules::cilium_network_policy(
                &PolicySpec { client: t.client_ip, server: t.server_ip, ports: PORTS, rules: n },
                &format!("perf-{n}"),
                "default",
                CLIENT_APP,
                SERVER_APP,
            );
            let file = t.lab.as_ref().map(|l| l.state_dir().join(format!("perf-policy-{n}.yaml"))).unwrap_or_default();
            std::fs::write(&file, yaml).map_err(io(format!("writing {}", file.display())))?;
            let mut cmd = std::process::Command::new(cli);
            cmd.args(["policy", "apply", "--lab", &name, "-f"]).arg(&file);
            sys::run(&format!("applying a {n}-rule CiliumNetworkPolicy"), &mut cmd, None)?;
            t.start_iperf()?;
            let allowed = load::port_reachable(
                &t.client_ns,
                &t.server_ns,
                SocketAddrV4::new(t.server_ip, RR_PORT),
                Duration::from_secs(3),
            )?;
            let blocked = !load::port_reachable(
                &t.client_ns,
                &t.server_ns,
                SocketAddrV4::new(t.server_ip, DENIED_PORT),
                PROBE_TIMEOUT,
            )?;
            t.setup_checks.push(Check {
                claim: "the CiliumNetworkPolicy is enforced".into(),
                evidence: format!(
                    "allowed port {RR_PORT} {}, unlisted port {DENIED_PORT} {}",
                    if allowed { "reachable" } else { "unreachable" },
                    if blocked { "dropped" } else { "got through" }
                ),
                ok: allowed && blocked,
            });
        } else {
            t.start_iperf()?;
        }
        Ok(t)
    }

    pub(crate) fn start_iperf(&mut self) -> Result<()> {
        self.iperf = Some(IperfServer::start(&self.server_ns, SocketAddrV4::new(self.server_ip, STREAM_PORT))?);
        Ok(())
    }

    /// The agent's pid when this is a lab.
    #[must_use]
    pub fn agent_pid(&self) -> Option<i32> {
        self.lab.as_ref().and_then(|l| l.nodes().first().and_then(|n| n.agent_pid))
    }

    /// Read the counters that prove this configuration's path.
    pub fn counters(&self) -> Result<Counters> {
        let mut c =
            Counters { server_rx: Some(sys::link_packets(&self.server_ns, &self.server_if)?.0), ..Counters::default() };
        if let Some(node) = &self.node_ns {
            c.node_forwarded = Some(sys::forwarded_datagrams(node)?);
        }
        if let (Some(node), Some(dev)) = (&self.node_ns, &self.tunnel_if) {
            c.tunnel_tx = Some(sys::link_packets(node, dev)?.1);
        }
        if let (Some(node), Some(dev)) = (&self.server_node_ns, &self.tunnel_if) {
            c.tunnel_rx = Some(sys::link_packets(node, dev)?.0);
        }
        if let (Some(node), Some(dev)) = (&self.node_ns, &self.underlay_if) {
            c.underlay_tx = Some(sys::link_packets(node, dev)?.1);
        }
        if let (Some(node), Kind::Iptables { .. }) = (&self.node_ns, self.kind) {
            let mut cmd = sys::ns_command(node, "iptables-save");
            cmd.args(["-c", "-t", "filter"]);
            let out = sys::run("reading iptables counters", &mut cmd, None)?;
            c.rule_packets =
                Some(match_rule_packets(&String::from_utf8_lossy(&out)).ok_or_else(|| PerfError::Invalid {
                    what: "iptables-save -c".into(),
                    message: format!("no rule commented {}", rules::MATCH_COMMENT),
                })?);
        }
        let metrics = |sock: &Path| -> Result<Vec<DatapathMetric>> {
            Client::new(sock)
                .get("/v1/metrics/datapath")
                .map_err(|source| PerfError::Api { what: "GET /v1/metrics/datapath".into(), source })
        };
        let sum = |rows: &[DatapathMetric], ep: u32, direction: &str, reason: u8| -> u64 {
            rows.iter()
                .filter(|r| r.endpoint_id == ep && r.direction == direction && r.reason == reason)
                .map(|r| r.packets)
                .sum()
        };
        if let (Some(sock), Some(ep)) = (&self.agent_socket, self.client_endpoint) {
            let rows = metrics(sock)?;
            c.ebpf_forwarded = Some(sum(&rows, ep, "egress", REASON_FORWARDED));
            if self.server_agent_socket.is_some() {
                c.ebpf_to_stack = Some(sum(&rows, ep, "egress", REASON_TO_STACK));
            }
        }
        if let (Some(sock), Some(ep)) = (&self.server_agent_socket, self.server_endpoint) {
            c.ebpf_server_forwarded = Some(sum(&metrics(sock)?, ep, "ingress", REASON_FORWARDED));
        }
        if let Some(node) = &self.server_node_ns {
            c.server_node_forwarded = Some(sys::forwarded_datagrams(node)?);
        }
        Ok(c)
    }

    /// Checks from the counters moved during the measurements (`delta`) plus the setup checks.
    #[must_use]
    pub fn verify(&self, delta: &Counters) -> Vec<Check> {
        let mut checks = self.setup_checks.clone();
        let n = |v: Option<u64>| v.unwrap_or(0);
        match self.kind {
            Kind::Physical => checks.push(Check {
                claim: "client and server share one veth pair (no node)".into(),
                evidence: format!("server eth0 received {} packets", n(delta.server_rx)),
                ok: n(delta.server_rx) > 0,
            }),
            Kind::KernelRouting | Kind::Iptables { .. } => {
                checks.push(Check {
                    claim: "the node forwarded the benchmark traffic".into(),
                    evidence: format!("node Ip:ForwDatagrams +{}", n(delta.node_forwarded)),
                    ok: n(delta.node_forwarded) > 0,
                });
                if matches!(self.kind, Kind::Iptables { .. }) {
                    checks.push(Check {
                        claim: "new connections reached the matching (last) rule".into(),
                        evidence: format!("rule {} counted +{} packets", rules::MATCH_COMMENT, n(delta.rule_packets)),
                        ok: n(delta.rule_packets) > 0,
                    });
                }
            }
            Kind::Myelin { .. } | Kind::MyelinNoFlows => {
                checks.push(Check {
                    claim: "the eBPF datapath forwarded the benchmark traffic".into(),
                    evidence: format!(
                        "client endpoint egress \"forwarded\" +{} packets; node kernel routed +{} packets",
                        n(delta.ebpf_forwarded),
                        n(delta.node_forwarded)
                    ),
                    ok: n(delta.ebpf_forwarded) > 0,
                });
            }
            Kind::CrossKernel { vxlan } | Kind::CrossMyelin { vxlan } => {
                checks.extend(crate::cross::verify(self.kind, vxlan, delta));
            }
        }
        checks
    }
}

/// Packet counter of the rule commented [`rules::MATCH_COMMENT`] in `iptables-save -c` output.
pub(crate) fn match_rule_packets(save: &str) -> Option<u64> {
    let line = save.lines().find(|l| l.contains(rules::MATCH_COMMENT))?;
    let counters = line.strip_prefix('[')?.split(']').next()?;
    counters.split(':').next()?.parse().ok()
}

/// The `myelin` binary when it has `policy apply` (Err: why not).
pub fn policy_cli(bin_dir: Option<&Path>) -> std::result::Result<PathBuf, String> {
    let bin = myelin_lab::find_binary("myelin", bin_dir).map_err(|e| e.to_string())?;
    let out = std::process::Command::new(&bin)
        .args(["policy", "apply", "--help"])
        .output()
        .map_err(|e| format!("running {} policy apply --help: {e}", bin.display()))?;
    let help = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && help.contains("--lab") {
        Ok(bin)
    } else {
        Err(format!("{} has no `policy apply --lab` yet (eBPF policy enforcement is being built)", bin.display()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_match_rule_counter() {
        let save = "*filter\n:FORWARD DROP [0:0]\n[5:300] -A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
                    [0:0] -A MYELIN-PERF-POLICY -s 172.16.0.1/32 -j ACCEPT\n\
                    [42:2520] -A MYELIN-PERF-POLICY -s 10.201.0.2/32 -d 10.201.0.3/32 -p tcp -m tcp --dport 15201:15203 -m comment --comment myelin-perf-match -j ACCEPT\nCOMMIT\n";
        assert_eq!(match_rule_packets(save), Some(42));
        assert_eq!(match_rule_packets("*filter\nCOMMIT\n"), None);
    }

    #[test]
    fn ids_and_deltas() {
        assert_eq!(Kind::Iptables { rules: 1000 }.id(), "iptables-1000");
        assert_eq!(Kind::Myelin { rules: None }.id(), "myelin");
        assert_eq!(Kind::Myelin { rules: Some(10_000) }.id(), "myelin-10000");
        let a = Counters {
            node_forwarded: Some(10),
            rule_packets: None,
            ebpf_forwarded: Some(5),
            server_rx: Some(1),
            tunnel_tx: Some(7),
            ..Counters::default()
        };
        let b = Counters {
            node_forwarded: Some(25),
            rule_packets: Some(3),
            ebpf_forwarded: Some(5),
            server_rx: Some(9),
            tunnel_tx: Some(70),
            underlay_tx: Some(4),
            ..Counters::default()
        };
        let d = b.delta(&a);
        assert_eq!(
            d,
            Counters {
                node_forwarded: Some(15),
                rule_packets: None,
                ebpf_forwarded: Some(0),
                server_rx: Some(8),
                tunnel_tx: Some(63),
                ..Counters::default()
            }
        );
        assert_eq!(Kind::CrossKernel { vxlan: true }.id(), "cross-kernel-vxlan");
        assert_eq!(Kind::CrossMyelin { vxlan: false }.id(), "cross-myelin-native");
    }
}
