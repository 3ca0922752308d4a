//! The one L3/L4 allow policy of the benchmark, written N ways: as an iptables
//! ruleset for the legacy-CNI configuration and as a CiliumNetworkPolicy for
//! Myelin. Both hold `n` rules: `n - 1` that never match the benchmark traffic
//! (other source addresses, or the right source and other ports), then the one
//! rule that allows it, last, so every new connection walks the whole list.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// Comment on the iptables rule that allows the benchmark traffic (its counter
/// proves the path).
pub const MATCH_COMMENT: &str = "myelin-perf-match";
/// The chain holding the policy.
pub const CHAIN: &str = "MYELIN-PERF-POLICY";

/// What the policy allows: TCP from `client` to `server` on `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    pub client: Ipv4Addr,
    pub server: Ipv4Addr,
    /// Inclusive port range of the benchmark's servers.
    pub ports: (u16, u16),
    /// Total number of rules, >= 1; the matching one is the last.
    pub rules: u32,
}

/// A rule that does not match the benchmark traffic, number `i` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decoy {
    /// Another source address (172.16.0.0/12, never a benchmark address), the benchmark ports.
    Source(Ipv4Addr),
    /// The benchmark's client, another destination port (20000..=59999).
    Port(u16),
}

/// The `i`-th non-matching rule: even ones differ in L3, odd ones in L4.
#[must_use]
pub fn decoy(i: u32) -> Decoy {
    if i & 1 == 0 {
        Decoy::Source(Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 1)) + i / 2))
    } else {
        // 40,000 distinct ports; never one of the benchmark's (below 20000).
        Decoy::Port(20_000 + u16::try_from((i / 2) % 40_000).unwrap_or(0))
    }
}

/// An `iptables-restore` input (the filter table of the node's own netns) for the
/// node of the kernel-routing topology: stateful like legacy CNIs (established
/// traffic is accepted first, so rules are walked once per new connection), then
/// the policy chain for traffic to the server, then drop.
#[must_use]
pub fn iptables_ruleset(p: &PolicySpec) -> String {
    let (lo, hi) = p.ports;
    let mut s = String::new();
    let _ = writeln!(s, "*filter");
    let _ = writeln!(s, ":FORWARD DROP [0:0]");
    let _ = writeln!(s, ":{CHAIN} - [0:0]");
    let _ = writeln!(s, "-F FORWARD");
    let _ = writeln!(s, "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT");
    let _ = writeln!(s, "-A FORWARD -d {}/32 -j {CHAIN}", p.server);
    for i in 0..p.rules.saturating_sub(1) {
        match decoy(i) {
            Decoy::Source(src) => {
                let _ =
                    writeln!(s, "-A {CHAIN} -s {src}/32 -d {}/32 -p tcp -m tcp --dport {lo}:{hi} -j ACCEPT", p.server);
            }
            Decoy::Port(port) => {
                let _ = writeln!(
                    s,
                    "-A {CHAIN} -s {}/32 -d {}/32 -p tcp -m tcp --dport {port} -j ACCEPT",
                    p.client, p.server
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "-A {CHAIN} -s {}/32 -d {}/32 -p tcp -m tcp --dport {lo}:{hi} -m comment --comment {MATCH_COMMENT} -j ACCEPT",
        p.client, p.server
    );
    let _ = writeln!(s, "-A {CHAIN} -j DROP");
    let _ = writeln!(s, "COMMIT");
    s
}

/// A CiliumNetworkPolicy selecting the server pod (`app: <server_app>`) with `rules`
/// ingress rules: the decoys as `fromCIDR` (other sources) or `fromEndpoints` of the
/// client with other `toPorts`, and last the rule allowing the client's pod on the
/// benchmark ports.
#[must_use]
pub fn cilium_network_policy(
    p: &PolicySpec,
    name: &str,
    namespace: &str,
    client_app: &str,
    server_app: &str,
) -> String {
    let (lo, hi) = p.ports;
    let mut s = String::new();
    let _ = writeln!(s, "apiVersion: cilium.io/v2");
    let _ = writeln!(s, "kind: CiliumNetworkPolicy");
    let _ = writeln!(s, "metadata:");
    let _ = writeln!(s, "  name: {name}");
    let _ = writeln!(s, "  namespace: {namespace}");
    let _ = writeln!(s, "spec:");
    let _ = writeln!(s, "  endpointSelector:");
    let _ = writeln!(s, "    matchLabels: {{app: {server_app}}}");
    let _ = writeln!(s, "  ingress:");
    let ports = |s: &mut String| {
        let list: Vec<String> = (lo..=hi).map(|port| format!("{{port: \"{port}\", protocol: TCP}}")).collect();
        let _ = writeln!(s, "      toPorts: [{{ports: [{}]}}]", list.join(", "));
    };
    for i in 0..p.rules.saturating_sub(1) {
        match decoy(i) {
            Decoy::Source(src) => {
                let _ = writeln!(s, "    - fromCIDR: [\"{src}/32\"]");
                ports(&mut s);
            }
            Decoy::Port(port) => {
                let _ = writeln!(s, "    - fromEndpoints: [{{matchLabels: {{app: {client_app}}}}}]");
                let _ = writeln!(s, "      toPorts: [{{ports: [{{port: \"{port}\", protocol: TCP}}]}}]");
            }
        }
    }
    let _ = writeln!(s, "    - fromEndpoints: [{{matchLabels: {{app: {client_app}}}}}]");
    ports(&mut s);
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(rules: u32) -> PolicySpec {
        PolicySpec {
            client: Ipv4Addr::new(10, 201, 0, 2),
            server: Ipv4Addr::new(10, 201, 0, 3),
            ports: (15201, 15203),
            rules,
        }
    }

    #[test]
    fn decoys_never_match_the_benchmark_traffic_and_are_distinct() {
        let p = spec(10_000);
        let mut seen = std::collections::HashSet::new();
        for i in 0..p.rules - 1 {
            let d = decoy(i);
            match d {
                Decoy::Source(ip) => {
                    assert_ne!(ip, p.client);
                    assert!(Ipv4Addr::new(172, 16, 0, 0) <= ip && ip <= Ipv4Addr::new(172, 31, 255, 255), "{ip}");
                }
                Decoy::Port(port) => assert!(!(p.ports.0..=p.ports.1).contains(&port), "{port}"),
            }
            assert!(seen.insert(d), "decoy {i} repeats: {d:?}");
        }
    }

    #[test]
    fn iptables_ruleset_has_n_policy_rules_with_the_match_last() {
        for n in [1, 2, 1000, 10_000] {
            let text = iptables_ruleset(&spec(n));
            let policy: Vec<&str> = text.lines().filter(|l| l.starts_with(&format!("-A {CHAIN} -s"))).collect();
            assert_eq!(policy.len(), n as usize, "{n} rules");
            let last = policy.last().unwrap();
            assert!(last.contains(MATCH_COMMENT), "last rule is the match: {last}");
            assert!(last.contains("-s 10.201.0.2/32 -d 10.201.0.3/32") && last.contains("--dport 15201:15203"));
            assert_eq!(text.matches(MATCH_COMMENT).count(), 1);
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines[lines.len() - 2], format!("-A {CHAIN} -j DROP"));
            assert_eq!(lines[lines.len() - 1], "COMMIT");
        }
        let two = iptables_ruleset(&spec(2));
        assert!(two.contains(
            "-A MYELIN-PERF-POLICY -s 172.16.0.1/32 -d 10.201.0.3/32 -p tcp -m tcp --dport 15201:15203 -j ACCEPT"
        ));
        let three = iptables_ruleset(&spec(3));
        assert!(three.contains("-s 10.201.0.2/32 -d 10.201.0.3/32 -p tcp -m tcp --dport 20000 -j ACCEPT"));
    }

    #[test]
    fn cnp_has_n_ingress_rules_with_the_match_last() {
        for n in [1, 3, 1000] {
            let y = cilium_network_policy(&spec(n), "perf", "default", "perf-client", "perf-server");
            assert_eq!(y.matches("\n    - from").count(), n as usize, "{n} rules:\n{y}");
            assert!(y.contains("matchLabels: {app: perf-server}"));
            let last = y.lines().rev().take(2).collect::<Vec<_>>();
            assert!(last[1].contains("fromEndpoints: [{matchLabels: {app: perf-client}}]"), "{y}");
            assert!(last[0].contains("{port: \"15201\", protocol: TCP}, {port: \"15202\""), "{y}");
        }
        let y = cilium_network_policy(&spec(3), "perf", "default", "c", "s");
        assert!(y.contains("- fromCIDR: [\"172.16.0.1/32\"]"));
        assert!(y.contains("{port: \"20000\", protocol: TCP}"));
    }
}
