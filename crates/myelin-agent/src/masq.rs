//! Masquerade of pod-to-world traffic, done by the kernel (nftables) in the
//! node's netns: pods' sources are rewritten to the node address when the
//! packet leaves through the uplink. The eBPF datapath hands such packets to
//! the stack; replies are de-NATed by conntrack and routed back to the pod.

use ipnet::Ipv4Net;
use std::io::Write;
use std::process::{Command, Stdio};

/// Install (atomically replace) the `ip myelin` nftables table.
pub fn install(pod_cidr: Ipv4Net, uplink: &str, native: &[Ipv4Net]) -> Result<(), String> {
    if uplink.contains('"') {
        return Err(format!("uplink name {uplink:?} is not a valid interface name"));
    }
    let mut keep: Vec<String> = vec![pod_cidr.to_string()];
    keep.extend(native.iter().map(ToString::to_string));
    let keep = keep.join(", ");
    let ruleset = format!(
        "add table ip myelin\n\
         delete table ip myelin\n\
         table ip myelin {{\n\
           chain postrouting {{\n\
             type nat hook postrouting priority srcnat; policy accept;\n\
             ip saddr {pod_cidr} ip daddr != {{ {keep} }} oifname \"{uplink}\" counter masquerade\n\
           }}\n\
         }}\n"
    );
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft (install the nftables package): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(ruleset.as_bytes()).map_err(|e| format!("writing to nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("waiting for nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("nft rejected the masquerade table: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}
