//! Cross-node configurations: a client pod on node A, a server pod on node B.
//!
//! ```text
//!  cross-kernel-vxlan   [client]=veth=[node A  vxlan0]~~UDP 8472~~[vxlan0  node B]=veth=[server]
//!                                      eth0 ──veth── br0 (fabric netns) ──veth── eth0
//!                       kernel VXLAN (VNI 4242, local/remote, dstport 8472, MTU 1450), pods MTU 1450,
//!                       routes: pod CIDR of the other node via its tunnel address (onlink, static neighbour)
//!  cross-native-kernel  the same without VXLAN: pod CIDR of the other node via its underlay address
//!  cross-myelin-vxlan   a 2-node Myelin lab (routing: vxlan, kvstore: etcd): the agents' myelin_vxlan
//!  cross-myelin-native  a 2-node Myelin lab (routing: native, kvstore: etcd)
//! ```
//! Every namespace is created by this process and removed when the [`Target`] drops.

use crate::error::{PerfError, Result};
use crate::load;
use crate::sys;
use crate::topo::{self, Check, Counters, Kind, Target, CLIENT_APP, DENIED_PORT, SERVER_APP};
use myelin_api::{ClusterStatus, Status};
use myelin_lab::{Lab, LabOptions, LabSpec};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// VNI of the kernel VXLAN baseline.
pub const KERNEL_VNI: u32 = 4242;
/// The VXLAN port both the baseline and Myelin use.
pub const VXLAN_PORT: u16 = 8472;
/// MTU of the kernel baseline's VXLAN device and of its pods over VXLAN (1500 - 50).
pub const VXLAN_MTU: u32 = 1450;
/// Myelin's tunnel device.
pub const MYELIN_VXLAN: &str = "myelin_vxlan";
/// How long the agents may take to learn each other's pod after the lab is up.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);

/// Node and pod addresses of the kernel baselines (inside namespaces of their own).
const NODE_IP: [Ipv4Addr; 2] = [Ipv4Addr::new(172, 31, 0, 1), Ipv4Addr::new(172, 31, 0, 2)];
const POD_IP: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 210, 1, 2), Ipv4Addr::new(10, 210, 2, 2)];
const POD_CIDR: [&str; 2] = ["10.210.1.0/24", "10.210.2.0/24"];
const TUNNEL_IP: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 210, 255, 1), Ipv4Addr::new(10, 210, 255, 2)];
const TUNNEL_MAC: [&str; 2] = ["02:00:00:00:aa:01", "02:00:00:00:aa:02"];
const LXC_MAC: [&str; 2] = ["02:00:00:00:0a:01", "02:00:00:00:0b:01"];
const POD_MAC: [&str; 2] = ["02:00:00:00:0a:02", "02:00:00:00:0b:02"];

/// MTU of `dev` in `netns` (from `ip -o link show`).
pub(crate) fn link_mtu(netns: &Path, dev: &str) -> Result<u32> {
    let mut cmd = sys::ns_command(netns, "ip");
    cmd.args(["-o", "link", "show", "dev", dev]);
    let out = String::from_utf8_lossy(&sys::run(&format!("reading the MTU of {dev}"), &mut cmd, None)?).into_owned();
    parse_mtu(&out).ok_or_else(|| PerfError::Invalid {
        what: format!("ip link show {dev} in {}", netns.display()),
        message: format!("no mtu in {out:?}"),
    })
}

pub(crate) fn parse_mtu(line: &str) -> Option<u32> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mtu")?;
    words.next()?.parse().ok()
}

/// Does `dev` exist in `netns`?
fn has_link(netns: &Path, dev: &str) -> Result<bool> {
    Ok(sys::parse_net_dev(&sys::read_proc_net(netns, "dev")?, dev).is_some())
}

fn reachable(t: &Target, timeout: Duration) -> Result<bool> {
    load::port_reachable(&t.client_ns, &t.server_ns, SocketAddrV4::new(t.server_ip, DENIED_PORT), timeout)
}

fn word(b: bool, yes: &'static str, no: &'static str) -> &'static str {
    if b {
        yes
    } else {
        no
    }
}

impl Target {
    /// Build the kernel baseline: two node namespaces on a bridge, a pod on each, routed by
    /// the node kernels over a kernel VXLAN device (`vxlan`) or natively.
    pub fn build_cross_kernel(vxlan: bool) -> Result<Target> {
        let kind = Kind::CrossKernel { vxlan };
        let tag = topo::short_tag(&kind);
        let mut t = Target::empty(kind);
        let [fab, node_a, node_b, client, server] = ["f", "a", "b", "c", "s"].map(|role| topo::netns_name(&tag, role));
        t.owned_netns = vec![fab.clone(), node_a.clone(), node_b.clone(), client.clone(), server.clone()];
        // Recorded before creation: a failure from here on removes what exists.
        let adds: Vec<String> = t.owned_netns.iter().map(|n| format!("netns add {n}")).collect();
        sys::ip_batch("creating the cross-node namespaces", None, &adds)?;
        t.client_ns = topo::netns_path(&client);
        t.server_ns = topo::netns_path(&server);
        t.client_ip = POD_IP[0];
        t.server_ip = POD_IP[1];
        let nodes = [&node_a, &node_b];
        let pods = [&client, &server];
        let mut links = Vec::new();
        for i in 0..2 {
            links.push(format!("link add u{i} netns {fab} type veth peer name eth0 netns {}", nodes[i]));
            links.push(format!(
                "link add lxc0 netns {} address {} type veth peer name eth0 netns {} address {}",
                nodes[i], LXC_MAC[i], pods[i], POD_MAC[i]
            ));
        }
        sys::ip_batch("creating the underlay and pod veths", None, &links)?;
        sys::ip_batch(
            "wiring the fabric bridge",
            Some(&fab),
            &[
                "link set lo up".into(),
                "link add br0 type bridge".into(),
                "link set br0 up".into(),
                "link set u0 master br0 up".into(),
                "link set u1 master br0 up".into(),
            ],
        )?;
        let pod_mtu = if vxlan { VXLAN_MTU } else { 1500 };
        for i in 0..2 {
            let other = 1 - i;
            let mut lines = vec![
                "link set lo up".to_owned(),
                format!("addr add {}/24 dev eth0", NODE_IP[i]),
                "link set eth0 up".into(),
                format!("link set lxc0 mtu {pod_mtu} up"),
                format!("route add {}/32 dev lxc0", POD_IP[i]),
                format!("neigh replace {} lladdr {} dev lxc0 nud permanent", POD_IP[i], POD_MAC[i]),
            ];
            if vxlan {
                lines.extend([
                    format!(
                        "link add vxlan0 address {} type vxlan id {KERNEL_VNI} local {} remote {} dstport {VXLAN_PORT} dev eth0",
                        TUNNEL_MAC[i], NODE_IP[i], NODE_IP[other]
                    ),
                    format!("link set vxlan0 mtu {VXLAN_MTU} up"),
                    format!("addr add {}/32 dev vxlan0", TUNNEL_IP[i]),
                    format!("neigh replace {} lladdr {} dev vxlan0 nud permanent", TUNNEL_IP[other], TUNNEL_MAC[other]),
                    format!("route add {} via {} dev vxlan0 onlink", POD_CIDR[other], TUNNEL_IP[other]),
                ]);
            } else {
                lines.push(format!("route add {} via {} dev eth0", POD_CIDR[other], NODE_IP[other]));
            }
            sys::ip_batch(&format!("plumbing node {}", ["A", "B"][i]), Some(nodes[i]), &lines)?;
            let node_ns = topo::netns_path(nodes[i]);
            topo::sysctl(&node_ns, "net/ipv4/conf/lxc0/proxy_arp", "1")?;
            topo::sysctl(&node_ns, "net/ipv4/ip_forward", "1")?;
            sys::ip_batch(
                "plumbing a pod",
                Some(pods[i]),
                &[
                    "link set lo up".into(),
                    format!("addr add {}/32 dev eth0", POD_IP[i]),
                    format!("link set eth0 mtu {pod_mtu} up"),
                    "route add 169.254.1.1/32 dev eth0 scope link".into(),
                    "route add default via 169.254.1.1 dev eth0".into(),
                    format!("neigh replace 169.254.1.1 lladdr {} dev eth0 nud permanent", LXC_MAC[i]),
                ],
            )?;
        }
        let (a, b) = (topo::netns_path(&node_a), topo::netns_path(&node_b));
        t.node_ns = Some(a.clone());
        t.server_node_ns = Some(b);
        t.tunnel_if = vxlan.then(|| "vxlan0".to_owned());
        t.underlay_if = Some("eth0".into());
        // The path depends on node A's forwarding: off, the server must be unreachable.
        topo::sysctl(&a, "net/ipv4/ip_forward", "0")?;
        let off = reachable(&t, PROBE_TIMEOUT)?;
        topo::sysctl(&a, "net/ipv4/ip_forward", "1")?;
        let on = reachable(&t, Duration::from_secs(3))?;
        t.setup_checks.push(Check {
            claim: "traffic is routed by node A's kernel to node B".into(),
            evidence: format!(
                "with node A ip_forward=0 the server was {}; with ip_forward=1 {}",
                word(off, "reachable", "unreachable"),
                word(on, "reachable", "unreachable")
            ),
            ok: !off && on,
        });
        let mtus = (link_mtu(&t.client_ns, "eth0")?, link_mtu(&t.server_ns, "eth0")?);
        t.setup_checks.push(Check {
            claim: format!("pods have MTU {pod_mtu}"),
            evidence: format!("client eth0 MTU {}, server eth0 MTU {}", mtus.0, mtus.1),
            ok: mtus == (pod_mtu, pod_mtu),
        });
        t.start_iperf()?;
        Ok(t)
    }

    /// Build a 2-node Myelin lab (kvstore: etcd, routing vxlan or native), client pod on n1 and
    /// server pod on n2, and wait until both agents know the other node's pod. A lab whose
    /// client cannot reach its server is an error that says so (the path is not worked around).
    pub fn build_cross_myelin(index: usize, vxlan: bool, bin_dir: Option<PathBuf>) -> Result<Target> {
        let kind = Kind::CrossMyelin { vxlan };
        let mut t = Target::empty(kind);
        let name = format!("pf{}x{}", std::process::id() % 100_000, index % 100);
        let routing = if vxlan { "vxlan" } else { "native" };
        let yaml = format!(
            "nodes: [{{name: n1}}, {{name: n2}}]\nrouting: {routing}\nkvstore: etcd\nnamespaces: [{{name: default}}]\npods:\n  \
             - {{name: client, namespace: default, node: n1, labels: {{app: {CLIENT_APP}}}}}\n  \
             - {{name: server, namespace: default, node: n2, labels: {{app: {SERVER_APP}}}}}\n"
        );
        let spec = LabSpec::from_yaml(&yaml, "cross-node benchmark lab")?;
        let lab = Lab::up(spec, &name, LabOptions { bin_dir, ..LabOptions::default() })?;
        let found = (lab.pod("default", "client"), lab.pod("default", "server"), lab.node("n1"), lab.node("n2"));
        t.lab = Some(lab); // torn down on drop from here on
        let (client, server, n1, n2) = (found.0?, found.1?, found.2?, found.3?);
        t.client_ip = topo::pod_ipv4(&name, &client)?;
        t.server_ip = topo::pod_ipv4(&name, &server)?;
        t.client_ns = client.netns_path.clone();
        t.server_ns = server.netns_path.clone();
        t.node_ns = Some(n1.netns_path.clone());
        t.server_node_ns = Some(n2.netns_path.clone());
        t.client_endpoint = client.endpoint_id;
        t.agent_socket = Some(n1.agent_socket.clone());
        t.server_endpoint = server.endpoint_id;
        t.server_agent_socket = Some(n2.agent_socket.clone());
        t.tunnel_if = vxlan.then(|| MYELIN_VXLAN.to_owned());
        t.underlay_if = Some("eth0".into());

        // Both agents connected to etcd and know the other node and its pod.
        let started = Instant::now();
        let mut seen: Vec<(String, ClusterStatus)> = Vec::new();
        for n in [&n1, &n2] {
            let c = wait_cluster(&n.name, &n.agent_socket, started + CLUSTER_TIMEOUT)?;
            seen.push((n.name.clone(), c));
        }
        t.setup_checks.push(Check {
            claim: "both agents are connected to etcd and know the remote pod".into(),
            evidence: format!(
                "{} after {:.1} s",
                seen.iter()
                    .map(|(n, c)| format!(
                        "{n}: connected={}, routing={}, nodes={}, identities={}, remote_ips={}",
                        c.connected, c.routing, c.nodes, c.identities, c.remote_ips
                    ))
                    .collect::<Vec<_>>()
                    .join("; "),
                started.elapsed().as_secs_f64()
            ),
            ok: seen.iter().all(|(_, c)| c.connected && c.routing == routing && c.nodes >= 1 && c.remote_ips >= 1),
        });
        let tunnel = has_link(&n1.netns_path, MYELIN_VXLAN)?;
        t.setup_checks.push(Check {
            claim: if vxlan { "n1 has the agent's VXLAN device" } else { "no tunnel device on n1 (native routing)" }
                .into(),
            evidence: format!(
                "{MYELIN_VXLAN} {} on n1; pod MTU client {}, server {}",
                word(tunnel, "present", "absent"),
                link_mtu(&t.client_ns, "eth0")?,
                link_mtu(&t.server_ns, "eth0")?
            ),
            ok: tunnel == vxlan,
        });
        let reached = reachable(&t, Duration::from_secs(3))?;
        if !reached {
            return Err(PerfError::Invalid {
                what: kind.id(),
                message: format!(
                    "the lab is up and the agents are told about each other, but the client pod {} cannot open a \
                     TCP connection to the server pod {}:{DENIED_PORT} on the other node within 3 s: the Myelin \
                     {routing} path does not forward (not worked around; see the agent logs under {})",
                    t.client_ip,
                    t.server_ip,
                    t.lab.as_ref().map(|l| l.state_dir().display().to_string()).unwrap_or_default()
                ),
            });
        }
        t.start_iperf()?;
        Ok(t)
    }
}

/// Poll a node's `/v1/status` until its cluster link is up and it knows a remote pod.
fn wait_cluster(node: &str, socket: &Path, deadline: Instant) -> Result<ClusterStatus> {
    let client = myelin_api::Client::new(socket);
    loop {
        let status: Status = client
            .get("/v1/status")
            .map_err(|source| PerfError::Api { what: format!("GET /v1/status of {node}"), source })?;
        let cluster = status.cluster.ok_or_else(|| PerfError::Invalid {
            what: format!("GET /v1/status of {node}"),
            message: "no cluster status: the agent has no kvstore configured".into(),
        })?;
        if cluster.connected && cluster.nodes >= 1 && cluster.remote_ips >= 1 {
            return Ok(cluster);
        }
        if Instant::now() >= deadline {
            return Err(PerfError::Invalid {
                what: format!("agent of {node}"),
                message: format!(
                    "did not learn the other node's pod within {} s: {cluster:?}",
                    CLUSTER_TIMEOUT.as_secs()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks from the counters moved during the measurements of a cross-node configuration.
pub(crate) fn verify(kind: Kind, vxlan: bool, d: &Counters) -> Vec<Check> {
    let n = |v: Option<u64>| v.unwrap_or(0);
    let mut checks = vec![Check {
        claim: "the server pod on node B received the benchmark traffic".into(),
        evidence: format!("server eth0 received +{} packets", n(d.server_rx)),
        ok: n(d.server_rx) > 0,
    }];
    if matches!(kind, Kind::CrossMyelin { .. }) {
        // Across nodes the client's eBPF program sends the packet on itself (forwarded): into the
        // tunnel device (VXLAN) or out of the uplink to the next hop the FIB names (native), so
        // n1's kernel routes none of it; n2's eBPF program (tunnel device or uplink ingress)
        // puts it straight into the server pod (forwarded).
        checks.push(Check {
            claim: "eBPF on the client endpoint sent the traffic to n2 itself, without n1's routing".into(),
            evidence: format!(
                "client endpoint egress \"forwarded\" +{} packets, \"to-stack\" +{}; n1 Ip:ForwDatagrams +{}",
                n(d.ebpf_forwarded),
                n(d.ebpf_to_stack),
                n(d.node_forwarded)
            ),
            ok: n(d.ebpf_forwarded) > 0 && n(d.node_forwarded) * 10 < n(d.ebpf_forwarded).max(1),
        });
        checks.push(Check {
            claim: "eBPF on n2 delivered it straight into the server pod".into(),
            evidence: format!(
                "server endpoint ingress \"forwarded\" +{} packets; n2 kernel routed +{} packets (both directions)",
                n(d.ebpf_server_forwarded),
                n(d.server_node_forwarded)
            ),
            ok: n(d.ebpf_server_forwarded) > 0,
        });
    } else {
        checks.push(Check {
            claim: "the node kernels routed the traffic (no eBPF)".into(),
            evidence: format!(
                "node A Ip:ForwDatagrams +{}, node B +{}",
                n(d.node_forwarded),
                n(d.server_node_forwarded)
            ),
            ok: n(d.node_forwarded) > 0 && n(d.server_node_forwarded) > 0,
        });
    }
    let dev = if matches!(kind, Kind::CrossMyelin { .. }) { MYELIN_VXLAN } else { "vxlan0" };
    if vxlan {
        checks.push(Check {
            claim: format!("the traffic crossed the VXLAN tunnel ({dev}) between the nodes"),
            evidence: format!(
                "node A {dev} sent +{} packets, node B {dev} received +{}; node A underlay eth0 sent +{}",
                n(d.tunnel_tx),
                n(d.tunnel_rx),
                n(d.underlay_tx)
            ),
            ok: n(d.tunnel_tx) > 0 && n(d.tunnel_rx) > 0 && n(d.underlay_tx) >= n(d.tunnel_tx),
        });
    } else {
        checks.push(Check {
            claim: "the traffic left node A on the underlay, unencapsulated".into(),
            evidence: format!("node A underlay eth0 sent +{} packets (no tunnel device)", n(d.underlay_tx)),
            ok: n(d.underlay_tx) > 0,
        });
    }
    checks
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_mtu() {
        let line = "4: myelin_vxlan: <BROADCAST,MULTICAST,NOARP,UP,LOWER_UP> mtu 1450 qdisc noqueue state UNKNOWN";
        assert_eq!(parse_mtu(line), Some(1450));
        assert_eq!(parse_mtu("2: eth0: <UP>"), None);
    }

    #[test]
    fn cross_checks_need_the_tunnel_counters() {
        let d = Counters {
            server_rx: Some(100),
            node_forwarded: Some(90),
            server_node_forwarded: Some(90),
            tunnel_tx: Some(90),
            tunnel_rx: Some(88),
            underlay_tx: Some(95),
            ..Counters::default()
        };
        assert!(verify(Kind::CrossKernel { vxlan: true }, true, &d).iter().all(|c| c.ok));
        let no_tunnel = Counters { tunnel_rx: Some(0), ..d };
        assert!(!verify(Kind::CrossKernel { vxlan: true }, true, &no_tunnel).iter().all(|c| c.ok));
        // Myelin: the eBPF counters on both ends are what prove its path.
        let my = Counters {
            ebpf_forwarded: Some(90),
            ebpf_to_stack: Some(0),
            node_forwarded: Some(0),
            ebpf_server_forwarded: Some(0),
            ..d
        };
        assert!(!verify(Kind::CrossMyelin { vxlan: true }, true, &my).iter().all(|c| c.ok));
        let routed = Counters { ebpf_server_forwarded: Some(85), node_forwarded: Some(90), ..my };
        assert!(!verify(Kind::CrossMyelin { vxlan: true }, true, &routed).iter().all(|c| c.ok), "n1 routed it");
        let my = Counters { ebpf_server_forwarded: Some(85), ..my };
        assert!(verify(Kind::CrossMyelin { vxlan: true }, true, &my).iter().all(|c| c.ok));
        assert!(verify(Kind::CrossMyelin { vxlan: false }, false, &my).iter().all(|c| c.ok));
    }
}
