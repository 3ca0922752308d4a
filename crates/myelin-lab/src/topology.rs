//! The lab's network: the fabric namespace with its two bridges, one namespace
//! per node and per external host, the veths between them, addresses and routes.

use crate::error::Result;
use crate::lab::Lab;
use crate::naming;
use crate::plan::{UNDERLAY, WORLD};
use crate::spec::Routing;
use crate::sys;

impl Lab {
    /// Routes to the known pod CIDRs: the fabric knows each node's (as a BGP-speaking router
    /// would), so external hosts reach pods with their own addresses; in native routing every
    /// node routes the others' via their underlay address (with an overlay the agent routes them
    /// through its tunnel device instead). `replace`: running it again is harmless.
    pub(crate) fn route_pod_cidrs(&self) -> Result<()> {
        let s = &self.state;
        let known: Vec<_> = s.nodes.iter().filter(|n| !n.pod_cidr.is_empty()).collect();
        let fab: Vec<String> =
            known.iter().map(|n| format!("route replace {} via {}", n.pod_cidr, n.address)).collect();
        if !fab.is_empty() {
            sys::ip_batch("routing pod CIDRs on the fabric", Some(&s.fabric_netns), &fab)?;
        }
        if s.routing == Routing::Native {
            for n in &s.nodes {
                let lines: Vec<String> = known
                    .iter()
                    .filter(|m| m.name != n.name)
                    .map(|m| format!("route replace {} via {}", m.pod_cidr, m.address))
                    .collect();
                if !lines.is_empty() {
                    sys::ip_batch(&format!("routing pod CIDRs on node {}", n.name), Some(&n.netns), &lines)?;
                }
            }
        }
        Ok(())
    }

    /// Create the fabric, node and external namespaces and wire them.
    pub(crate) fn build_topology(&mut self) -> Result<()> {
        let s = self.state.clone();
        self.say(&format!(
            "creating {} network namespaces (fabric, {}{} node(s), {} external host(s))",
            1 + s.kvstore.iter().count() + s.nodes.len() + s.external.len(),
            if s.kvstore.is_some() { "kvstore, " } else { "" },
            s.nodes.len(),
            s.external.len()
        ));
        let mut adds = vec![format!("netns add {}", s.fabric_netns)];
        adds.extend(s.kvstore.iter().map(|kv| format!("netns add {}", kv.netns)));
        adds.extend(s.nodes.iter().map(|n| format!("netns add {}", n.netns)));
        adds.extend(s.external.iter().map(|x| format!("netns add {}", x.netns)));
        self.ip_batch_root("creating network namespaces", &adds)?;

        self.say("wiring the fabric: bridges underlay 172.30.0.0/24 and world 198.51.100.0/24");
        let mut fab = vec![
            "link set lo up".to_owned(),
            "link add underlay type bridge".to_owned(),
            "link add world type bridge".to_owned(),
            format!("addr add {UNDERLAY}.254/24 dev underlay"),
            format!("addr add {WORLD}.254/24 dev world"),
            "link set underlay up".to_owned(),
            "link set world up".to_owned(),
        ];
        for (i, n) in s.nodes.iter().enumerate() {
            fab.push(format!("link add u{i} type veth peer name eth0 netns {}", n.netns));
            fab.push(format!("link set u{i} master underlay up"));
        }
        if let Some(kv) = &s.kvstore {
            fab.push(format!("link add k0 type veth peer name eth0 netns {}", kv.netns));
            fab.push("link set k0 master underlay up".to_owned());
        }
        for (j, x) in s.external.iter().enumerate() {
            fab.push(format!("link add w{j} type veth peer name eth0 netns {}", x.netns));
            fab.push(format!("link set w{j} master world up"));
        }
        sys::ip_batch("wiring the fabric", Some(&s.fabric_netns), &fab)?;
        sys::sysctl_in(&naming::netns_path(&s.fabric_netns), "net/ipv4/ip_forward", "1")?;

        for n in &s.nodes {
            let lines = vec![
                "link set lo up".to_owned(),
                format!("addr add {}/24 dev eth0", n.address),
                "link set eth0 up".to_owned(),
                format!("route add default via {UNDERLAY}.254"),
            ];
            sys::ip_batch(&format!("configuring node {}", n.name), Some(&n.netns), &lines)?;
        }
        // Pod CIDRs the lab hands out are routed now; ones the agents claim from a cluster
        // pool once they are known (after the agents start).
        self.route_pod_cidrs()?;
        if let Some(kv) = &s.kvstore {
            // One address per etcd member on the kvstore's single link.
            let mut lines = vec!["link set lo up".to_owned()];
            lines.extend(kv.members.iter().map(|m| format!("addr add {}/24 dev eth0", m.address)));
            lines.push("link set eth0 up".to_owned());
            lines.push(format!("route add default via {UNDERLAY}.254"));
            sys::ip_batch("configuring the kvstore's namespace", Some(&kv.netns), &lines)?;
        }
        for x in &s.external {
            let lines = vec![
                "link set lo up".to_owned(),
                format!("addr add {}/24 dev eth0", x.ip),
                "link set eth0 up".to_owned(),
                format!("route add default via {WORLD}.254"),
            ];
            sys::ip_batch(&format!("configuring external host {}", x.name), Some(&x.netns), &lines)?;
        }
        Ok(())
    }
}
