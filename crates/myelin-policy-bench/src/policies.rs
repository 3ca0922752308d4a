//! The policies the benchmarks apply, as CiliumNetworkPolicy YAML.

use std::fmt::Write;

pub const NAMESPACE: &str = "bench";
/// UDP port of the request/response traffic of the per-packet benchmark.
pub const RR_PORT: u16 = 7000;
/// TCP ports the bulk policy alternates between.
pub const BULK_PORTS: [u16; 2] = [8080, 8081];

/// Selects every `app=bulk` endpoint (the server and the bulk endpoints):
/// ingress from `role=client` on TCP `port` only.
#[must_use]
pub fn bulk(port: u16) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: bulk, namespace: {NAMESPACE}}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: bulk}}}}\n  ingress:\n\
         \x20 - fromEndpoints: [{{matchLabels: {{role: client}}}}]\n    toPorts: [{{ports: [{{port: '{port}', protocol: TCP}}]}}]\n"
    )
}

/// Selects the server (`role=server`) with `rules` ingress rules; only the
/// last one allows the benchmark's traffic (UDP RR_PORT from the client).
/// The others: the client on other TCP and UDP ports, and the world on TCP
/// ports, each rule its own port, so each is its own datapath entry.
#[must_use]
pub fn rules(rules: usize) -> String {
    let mut y = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: rules, namespace: {NAMESPACE}}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{role: server}}}}\n  ingress:\n"
    );
    for i in 0..rules.saturating_sub(1) {
        let port = 20_000 + i;
        let _ = match i % 3 {
            0 => writeln!(y, "  - fromEndpoints: [{{matchLabels: {{role: client}}}}]\n    toPorts: [{{ports: [{{port: '{port}', protocol: TCP}}]}}]"),
            1 => writeln!(y, "  - fromEndpoints: [{{matchLabels: {{role: client}}}}]\n    toPorts: [{{ports: [{{port: '{port}', protocol: UDP}}]}}]"),
            _ => writeln!(y, "  - fromEntities: [world]\n    toPorts: [{{ports: [{{port: '{port}', protocol: TCP}}]}}]"),
        };
    }
    let _ = writeln!(
        y,
        "  - fromEndpoints: [{{matchLabels: {{role: client}}}}]\n    toPorts: [{{ports: [{{port: '{RR_PORT}', protocol: UDP}}]}}]"
    );
    y
}
