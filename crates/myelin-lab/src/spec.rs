//! `lab.yaml`: what a lab is made of, parsed and validated.
//!
//! ```yaml
//! nodes: [{name: node1}, {name: node2}, {name: node3}]
//! routing: vxlan        # native | vxlan | geneve; default vxlan with several nodes, native with one
//! kvstore: etcd         # etcd | none; default etcd with several nodes, none with one
//! kvstore_members: 3    # 1 | 3 etcd members (default 1), at 172.30.0.250, .251, .252
//! namespaces:
//!   - name: prod
//!     labels: {env: prod}
//! pods:
//!   - name: web
//!     namespace: prod
//!     node: node2
//!     labels: {app: web}
//!     ports: [{name: http, port: 80, protocol: TCP}]
//! external: [{name: world1}]
//! ```

use crate::error::{LabError, Result};
use crate::naming;
use myelin_api::{Labels, NamedPort};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Longest node or external host name (they end up in netns, socket and bpffs paths).
pub const MAX_HOST_NAME: usize = 32;
/// Longest namespace or pod name (Kubernetes DNS label).
pub const MAX_OBJECT_NAME: usize = 63;

/// A whole lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabSpec {
    pub nodes: Vec<NodeSpec>,
    #[serde(default)]
    pub namespaces: Vec<NamespaceSpec>,
    #[serde(default)]
    pub pods: Vec<PodSpec>,
    #[serde(default)]
    pub external: Vec<ExternalSpec>,
    /// Extra settings for every node's agent, as in its TOML config (e.g.
    /// `{monitor_aggregation: none, debug_api: true}`); the agent rejects
    /// unknown keys. Keys the lab sets itself cannot be overridden.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub agent: std::collections::BTreeMap<String, serde_json::Value>,
    /// How pods on different nodes reach each other; see [`LabSpec::routing_mode`] for the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<Routing>,
    /// The cluster's key-value store; see [`LabSpec::kvstore_kind`] for the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvstore: Option<KvstoreKind>,
    /// Members of the etcd cluster: 1 or 3 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvstore_members: Option<u8>,
    /// The cluster's pod address pool (e.g. `10.244.0.0/16`): nodes claim their /24 from it in
    /// etcd instead of getting one from the lab (needs `kvstore: etcd`; no node sets `podCIDR`).
    #[serde(default, rename = "clusterPool", skip_serializing_if = "Option::is_none")]
    pub cluster_pool: Option<String>,
}

/// How pods on different nodes reach each other (the agent's `routing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Routing {
    /// The underlay routes every node's pod CIDR.
    Native,
    /// A VXLAN overlay between the nodes.
    Vxlan,
    /// A Geneve overlay between the nodes.
    Geneve,
}

impl Routing {
    /// The name used in lab.yaml and in the agent's config.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Routing::Native => "native",
            Routing::Vxlan => "vxlan",
            Routing::Geneve => "geneve",
        }
    }
}

impl std::fmt::Display for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for Routing {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "native" => Ok(Routing::Native),
            "vxlan" => Ok(Routing::Vxlan),
            "geneve" => Ok(Routing::Geneve),
            _ => Err(format!("routing: {s:?} is not one of native, vxlan, geneve")),
        }
    }
}

/// The key-value store the lab runs for its agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum KvstoreKind {
    /// A real etcd in its own network namespace on the underlay.
    Etcd,
    /// No kvstore: identities are node-local.
    None,
}

impl KvstoreKind {
    /// The name used in lab.yaml and in `lab status`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            KvstoreKind::Etcd => "etcd",
            KvstoreKind::None => "none",
        }
    }
}

impl std::fmt::Display for KvstoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for KvstoreKind {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "etcd" => Ok(KvstoreKind::Etcd),
            "none" => Ok(KvstoreKind::None),
            _ => Err(format!("kvstore: {s:?} is not one of etcd, none")),
        }
    }
}

/// One node: a netns running its own agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    /// This node's pod CIDR (IPv4, /8 to /29); default `10.244.<i+1>.0/24`.
    #[serde(default, rename = "podCIDR", skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
}

/// A Kubernetes-like namespace and its labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
}

/// A pod: a netns plumbed by the CNI plugin on its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub node: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub ports: Vec<NamedPort>,
}

/// A host on the "world" side of the fabric, standing for the internet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalSpec {
    pub name: String,
}

fn default_namespace() -> String {
    "default".to_owned()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

impl PodSpec {
    /// A pod with labels and no ports.
    #[must_use]
    pub fn new(namespace: &str, name: &str, node: &str, labels_: &[(&str, &str)]) -> Self {
        Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            node: node.to_owned(),
            labels: labels(labels_),
            ports: Vec::new(),
        }
    }

    /// `namespace/name`.
    #[must_use]
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl LabSpec {
    /// The lab `myelin lab up` builds without `-f`: one node, two namespaces,
    /// a three-tier app and one external host.
    #[must_use]
    pub fn demo() -> Self {
        let http = || vec![NamedPort { name: "http".into(), port: 80, protocol: "TCP".into() }];
        let mut frontend = PodSpec::new("default", "frontend", "node1", &[("app", "frontend")]);
        frontend.ports = http();
        let mut backend = PodSpec::new("prod", "backend", "node1", &[("app", "backend"), ("tier", "api")]);
        backend.ports = http();
        let mut db = PodSpec::new("prod", "db", "node1", &[("app", "db")]);
        db.ports = vec![NamedPort { name: "postgres".into(), port: 5432, protocol: "TCP".into() }];
        Self {
            nodes: vec![NodeSpec { name: "node1".into(), pod_cidr: None }],
            namespaces: vec![
                NamespaceSpec { name: "default".into(), labels: Labels::new() },
                NamespaceSpec { name: "prod".into(), labels: labels(&[("env", "prod")]) },
            ],
            pods: vec![frontend, backend, db],
            external: vec![ExternalSpec { name: "world1".into() }],
            agent: std::collections::BTreeMap::new(),
            routing: None,
            kvstore: None,
            kvstore_members: None,
            cluster_pool: None,
        }
    }

    /// `routing`, or its default: `vxlan` with more than one node, `native` with one.
    #[must_use]
    pub fn routing_mode(&self) -> Routing {
        self.routing.unwrap_or(if self.nodes.len() > 1 { Routing::Vxlan } else { Routing::Native })
    }

    /// `kvstore`, or its default: `etcd` with more than one node, `none` with one.
    #[must_use]
    pub fn kvstore_kind(&self) -> KvstoreKind {
        self.kvstore.unwrap_or(if self.nodes.len() > 1 { KvstoreKind::Etcd } else { KvstoreKind::None })
    }

    /// How many etcd members the lab runs: 0 without a kvstore, else `kvstore_members` (default 1).
    #[must_use]
    pub fn kvstore_member_count(&self) -> usize {
        match self.kvstore_kind() {
            KvstoreKind::None => 0,
            KvstoreKind::Etcd => self.kvstore_members.map_or(1, usize::from),
        }
    }

    /// Parse and validate YAML; `source_name` (a file name) prefixes errors.
    pub fn from_yaml(text: &str, source_name: &str) -> Result<Self> {
        let spec: Self = serde_saphyr::from_str(text)
            .map_err(|e| LabError::Parse { source_name: source_name.to_owned(), message: e.to_string() })?;
        spec.validate().map_err(|e| match e {
            LabError::Invalid { field, message } => {
                LabError::Invalid { field: format!("{source_name}: {field}"), message }
            }
            other => other,
        })?;
        Ok(spec)
    }

    /// Read, parse and validate a lab.yaml file.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io("reading", path))?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// Check names, references and that every derived netns name is unique.
    pub fn validate(&self) -> Result<()> {
        if self.nodes.is_empty() {
            return Err(invalid("nodes", "a lab needs at least one node"));
        }
        let mut hosts = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let field = format!("nodes[{i}].name");
            check_name(&field, &n.name, MAX_HOST_NAME)?;
            if n.name == naming::FABRIC
                || n.name == naming::KVSTORE
                || n.name.starts_with("p-")
                || n.name.starts_with("x-")
            {
                return Err(invalid(&field, &format!("{:?} is reserved (fab, kv, p-*, x-*)", n.name)));
            }
            if let Some(prev) = hosts.insert(n.name.clone(), field.clone()) {
                return Err(invalid(&field, &format!("{:?} is already used by {prev}", n.name)));
            }
            if let Some(cidr) = &n.pod_cidr {
                check_pod_cidr(&format!("nodes[{i}].podCIDR"), cidr)?;
            }
        }
        if self.nodes.len() > 200 {
            return Err(invalid("nodes", "at most 200 nodes"));
        }
        if self.external.len() > 200 {
            return Err(invalid("external", "at most 200 external hosts"));
        }
        self.check_routing_and_kvstore()?;
        for (i, x) in self.external.iter().enumerate() {
            let field = format!("external[{i}].name");
            check_name(&field, &x.name, MAX_HOST_NAME)?;
            if let Some(prev) = hosts.insert(x.name.clone(), field.clone()) {
                return Err(invalid(&field, &format!("{:?} is already used by {prev}", x.name)));
            }
        }
        let mut namespaces = BTreeSet::new();
        for (i, ns) in self.namespaces.iter().enumerate() {
            let field = format!("namespaces[{i}].name");
            check_name(&field, &ns.name, MAX_OBJECT_NAME)?;
            if !namespaces.insert(ns.name.as_str()) {
                return Err(invalid(&field, &format!("namespace {:?} is declared twice", ns.name)));
            }
            for k in ns.labels.keys() {
                check_label_key(&format!("namespaces[{i}].labels"), k)?;
            }
        }
        let mut pods = BTreeSet::new();
        for (i, p) in self.pods.iter().enumerate() {
            check_pod(p, &format!("pods[{i}]"), &namespaces, &self.nodes)?;
            if !pods.insert((p.namespace.as_str(), p.name.as_str())) {
                return Err(invalid(&format!("pods[{i}].name"), &format!("pod {} is declared twice", p.key())));
            }
        }
        // Derived names must not collide (e.g. pod "a-b"/"c" vs "a"/"b-c").
        let probe = "x";
        let mut netns = BTreeMap::new();
        let mut all = vec![
            (naming::fabric_netns(probe), "fabric".to_owned()),
            (naming::kvstore_netns(probe), "the kvstore".to_owned()),
        ];
        all.extend(
            self.nodes.iter().enumerate().map(|(i, n)| (naming::node_netns(probe, &n.name), format!("nodes[{i}]"))),
        );
        all.extend(
            self.external
                .iter()
                .enumerate()
                .map(|(i, x)| (naming::external_netns(probe, &x.name), format!("external[{i}]"))),
        );
        all.extend(
            self.pods
                .iter()
                .enumerate()
                .map(|(i, p)| (naming::pod_netns(probe, &p.namespace, &p.name), format!("pods[{i}]"))),
        );
        for (name, field) in all {
            if let Some(prev) = netns.insert(name.clone(), field.clone()) {
                return Err(invalid(&field, &format!("its network namespace name collides with that of {prev}")));
            }
        }
        Ok(())
    }

    /// `routing`, `kvstore` and `kvstore_members` fit together.
    fn check_routing_and_kvstore(&self) -> Result<()> {
        if let Some(pool) = &self.cluster_pool {
            check_pod_cidr("clusterPool", pool)?;
            if self.kvstore_kind() == KvstoreKind::None {
                return Err(invalid("clusterPool", "needs kvstore: etcd (nodes claim their pod CIDR there)"));
            }
            if let Some(n) = self.nodes.iter().find(|n| n.pod_cidr.is_some()) {
                return Err(invalid(
                    "clusterPool",
                    &format!(
                        "node {} sets podCIDR too: with a cluster pool the nodes claim theirs; remove one",
                        n.name
                    ),
                ));
            }
        }
        if let Some(n) = self.kvstore_members {
            if n != 1 && n != 3 {
                return Err(invalid("kvstore_members", &format!("{n} is not allowed; use 1 or 3")));
            }
            if self.kvstore_kind() == KvstoreKind::None {
                let why = if self.kvstore.is_some() { "" } else { " (the default with one node)" };
                return Err(invalid(
                    "kvstore_members",
                    &format!("is set but kvstore is none{why}; set kvstore: etcd or remove kvstore_members"),
                ));
            }
        }
        let routing = self.routing_mode();
        if routing != Routing::Native && self.kvstore_kind() == KvstoreKind::None {
            let defaulted = if self.routing.is_some() { "" } else { " (the default with more than one node)" };
            let kv =
                if self.kvstore.is_some() { "kvstore: none" } else { "kvstore is none (the default with one node)" };
            return Err(invalid(
                "routing",
                &format!(
                    "{routing}{defaulted} needs kvstore: etcd (the overlay learns the other nodes from it), \
                     but {kv}; set kvstore: etcd, or routing: native"
                ),
            ));
        }
        Ok(())
    }

    /// Index of a node by name.
    #[must_use]
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }
}

/// A pod CIDR: `a.b.c.d/n`, network address, n in 8..=29.
fn check_pod_cidr(field: &str, cidr: &str) -> Result<()> {
    let bad = |why: &str| Err(invalid(field, &format!("{cidr:?} {why}")));
    let Some((addr, len)) = cidr.split_once('/') else { return bad("is not an IPv4 CIDR like 10.244.1.0/24") };
    let (Ok(addr), Ok(len)) = (addr.parse::<std::net::Ipv4Addr>(), len.parse::<u8>()) else {
        return bad("is not an IPv4 CIDR like 10.244.1.0/24");
    };
    if !(8..=29).contains(&len) {
        return bad("must have a prefix length from /8 to /29");
    }
    let mask = u32::MAX << (32 - u32::from(len));
    if u32::from(addr) & !mask != 0 {
        return bad("has host bits set; give the network address");
    }
    Ok(())
}

pub(crate) fn check_pod(p: &PodSpec, at: &str, namespaces: &BTreeSet<&str>, nodes: &[NodeSpec]) -> Result<()> {
    check_name(&format!("{at}.name"), &p.name, MAX_OBJECT_NAME)?;
    check_name(&format!("{at}.namespace"), &p.namespace, MAX_OBJECT_NAME)?;
    // `default` always exists, as in Kubernetes.
    if !namespaces.contains(p.namespace.as_str()) && p.namespace != "default" {
        return Err(invalid(
            &format!("{at}.namespace"),
            &format!("namespace {:?} is not declared under namespaces", p.namespace),
        ));
    }
    if !nodes.iter().any(|n| n.name == p.node) {
        return Err(invalid(&format!("{at}.node"), &format!("node {:?} is not declared under nodes", p.node)));
    }
    for k in p.labels.keys() {
        check_label_key(&format!("{at}.labels"), k)?;
    }
    let mut seen = BTreeSet::new();
    for (j, port) in p.ports.iter().enumerate() {
        let f = format!("{at}.ports[{j}]");
        check_name(&format!("{f}.name"), &port.name, 15)?;
        if !seen.insert(port.name.as_str()) {
            return Err(invalid(&format!("{f}.name"), &format!("port name {:?} is used twice", port.name)));
        }
        if port.port == 0 {
            return Err(invalid(&format!("{f}.port"), "must be 1..=65535"));
        }
        if !matches!(port.protocol.as_str(), "TCP" | "UDP" | "SCTP") {
            return Err(invalid(&format!("{f}.protocol"), &format!("{:?} is not TCP, UDP or SCTP", port.protocol)));
        }
    }
    Ok(())
}

fn invalid(field: &str, message: &str) -> LabError {
    LabError::Invalid { field: field.to_owned(), message: message.to_owned() }
}

/// A DNS label: `[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most `max` characters.
pub(crate) fn check_name(field: &str, name: &str, max: usize) -> Result<()> {
    if name.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if name.len() > max {
        return Err(invalid(field, &format!("{name:?} is longer than {max} characters")));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if !name.chars().all(ok_char) || name.starts_with('-') || name.ends_with('-') {
        return Err(invalid(
            field,
            &format!("{name:?} is not a DNS label (lower-case letters, digits and '-', starting and ending with a letter or digit)"),
        ));
    }
    Ok(())
}

fn check_label_key(field: &str, key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= 253
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(invalid(field, &format!("{key:?} is not a valid label key")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {

    #[test]
    fn the_cluster_example_is_a_valid_lab() {
        let spec =
            LabSpec::from_yaml(include_str!("../../../examples/labs/cluster.yaml"), "examples/labs/cluster.yaml")
                .unwrap();
        assert_eq!(spec.nodes.len(), 3);
        assert_eq!(spec.routing_mode(), Routing::Vxlan);
        assert_eq!(spec.kvstore_member_count(), 3);
        assert_eq!(spec.cluster_pool.as_deref(), Some("10.244.0.0/16"));
    }

    use super::*;

    const GOOD: &str = r"
nodes:
  - name: node1
  - name: node2
namespaces:
  - name: default
  - name: prod
    labels: {env: prod}
pods:
  - name: web
    namespace: prod
    node: node2
    labels: {app: web}
    ports:
      - {name: http, port: 80, protocol: TCP}
  - name: client
    node: node1
external:
  - name: world1
";

    fn err(yaml: &str) -> String {
        LabSpec::from_yaml(yaml, "lab.yaml").unwrap_err().to_string()
    }

    #[test]
    fn parses_a_good_file() {
        let spec = LabSpec::from_yaml(GOOD, "lab.yaml").unwrap();
        assert_eq!(spec.nodes.len(), 2);
        assert_eq!(spec.pods[0].ports[0], NamedPort { name: "http".into(), port: 80, protocol: "TCP".into() });
        assert_eq!(spec.pods[1].namespace, "default", "namespace defaults to default");
        assert_eq!(spec.namespaces[1].labels["env"], "prod");
        assert_eq!(spec.external[0].name, "world1");
    }

    #[test]
    fn demo_is_valid_and_round_trips_through_yaml() {
        let demo = LabSpec::demo();
        demo.validate().unwrap();
        assert_eq!(demo.nodes[0].name, "node1");
        assert_eq!(demo.pods.len(), 3);
        assert!(demo.pods.iter().any(|p| p.ports.iter().any(|n| n.name == "http" && n.port == 80)));
        let yaml = serde_saphyr::to_string(&demo).unwrap();
        assert_eq!(LabSpec::from_yaml(&yaml, "demo").unwrap(), demo);
    }

    #[test]
    fn unknown_and_missing_fields_are_named() {
        let e = err("nodes: [{name: n1, cpu: 2}]");
        assert!(e.contains("cpu"), "{e}");
        let e = err("nodes: [{name: n1}]\npods: [{name: a, node: n1, lables: {}}]");
        assert!(e.contains("lables"), "{e}");
        let e = err("nodes: [{name: n1}]\nnamespaces: [{name: default}]\npods: [{name: a}]");
        assert!(e.contains("node"), "{e}");
        assert!(e.starts_with("lab.yaml"), "{e}");
    }

    #[test]
    fn routing_and_kvstore_default_by_node_count() {
        let one = LabSpec::from_yaml("nodes: [{name: n1}]", "lab.yaml").unwrap();
        assert_eq!(
            (one.routing_mode(), one.kvstore_kind(), one.kvstore_member_count()),
            (Routing::Native, KvstoreKind::None, 0)
        );
        let two = LabSpec::from_yaml("nodes: [{name: n1}, {name: n2}]", "lab.yaml").unwrap();
        assert_eq!(
            (two.routing_mode(), two.kvstore_kind(), two.kvstore_member_count()),
            (Routing::Vxlan, KvstoreKind::Etcd, 1)
        );
        let three = LabSpec::from_yaml(
            "nodes: [{name: n1}, {name: n2}, {name: n3}]\nrouting: native\nkvstore: etcd\nkvstore_members: 3",
            "lab.yaml",
        )
        .unwrap();
        assert_eq!(
            (three.routing_mode(), three.kvstore_kind(), three.kvstore_member_count()),
            (Routing::Native, KvstoreKind::Etcd, 3)
        );
        let geneve = LabSpec::from_yaml("nodes: [{name: n1}]\nrouting: geneve\nkvstore: etcd", "lab.yaml").unwrap();
        assert_eq!(geneve.routing_mode(), Routing::Geneve);
        let native =
            LabSpec::from_yaml("nodes: [{name: n1}, {name: n2}]\nrouting: native\nkvstore: none", "lab.yaml").unwrap();
        assert_eq!((native.routing_mode(), native.kvstore_member_count()), (Routing::Native, 0));
        let demo = LabSpec::demo();
        assert_eq!(
            (demo.routing_mode(), demo.kvstore_kind()),
            (Routing::Native, KvstoreKind::None),
            "demo is unchanged"
        );
    }

    #[test]
    fn routing_and_kvstore_errors_say_what_is_allowed_and_how_to_fix_it() {
        let e = err("nodes: [{name: n1}]\nrouting: ipip");
        assert!(e.contains("routing") && e.contains("native, vxlan, geneve"), "{e}");
        let e = err("nodes: [{name: n1}]\nkvstore: consul");
        assert!(e.contains("kvstore") && e.contains("etcd, none"), "{e}");
        let e = err("nodes: [{name: n1}, {name: n2}]\nkvstore: etcd\nkvstore_members: 5");
        assert!(e.contains("use 1 or 3"), "{e}");
        let e = err("nodes: [{name: n1}, {name: n2}]\nrouting: vxlan\nkvstore: none");
        assert!(e.contains("routing: vxlan needs kvstore: etcd") && e.contains("routing: native"), "{e}");
        let e = err("nodes: [{name: n1}, {name: n2}]\nkvstore: none");
        assert!(e.contains("the default with more than one node"), "{e}");
    }

    #[test]
    fn each_validation_error_names_its_field() {
        let cases: &[(&str, &str)] = &[
            ("nodes: []", "nodes"),
            ("nodes: [{name: Node1}]", "nodes[0].name"),
            ("nodes: [{name: n1}, {name: n1}]", "nodes[1].name"),
            ("nodes: [{name: fab}]", "nodes[0].name"),
            ("nodes: [{name: kv}]", "nodes[0].name"),
            ("nodes: [{name: n1}]\nkvstore_members: 3", "kvstore_members"),
            ("nodes: [{name: n1}]\nkvstore: etcd\nkvstore_members: 2", "kvstore_members"),
            ("nodes: [{name: n1}, {name: n2}]\nkvstore_members: 0", "kvstore_members"),
            ("nodes: [{name: n1}, {name: n2}]\nkvstore: none\nkvstore_members: 1", "kvstore_members"),
            ("nodes: [{name: n1}]\nrouting: vxlan", "routing"),
            ("nodes: [{name: n1}, {name: n2}]\nkvstore: none", "routing"),
            ("nodes: [{name: n1}, {name: n2}]\nrouting: geneve\nkvstore: none", "routing"),
            ("nodes: [{name: n1, podCIDR: 10.1.0.5/24}]", "nodes[0].podCIDR"),
            ("nodes: [{name: n1, podCIDR: 10.1.0.0/30}]", "nodes[0].podCIDR"),
            ("nodes: [{name: n1, podCIDR: banana}]", "nodes[0].podCIDR"),
            ("nodes: [{name: n1}]\nexternal: [{name: n1}]", "external[0].name"),
            (&format!("nodes: [{{name: {}}}]", "a".repeat(33)), "nodes[0].name"),
            ("nodes: [{name: n1}]\nnamespaces: [{name: a}, {name: a}]", "namespaces[1].name"),
            ("nodes: [{name: n1}]\nnamespaces: [{name: a}]\npods: [{name: p, namespace: b, node: n1}]", "pods[0].namespace"),
            ("nodes: [{name: n1}]\nnamespaces: [{name: a}]\npods: [{name: p, namespace: a, node: n9}]", "pods[0].node"),
            ("nodes: [{name: n1}]\nnamespaces: [{name: a}]\npods: [{name: p_1, namespace: a, node: n1}]", "pods[0].name"),
            (
                "nodes: [{name: n1}]\nnamespaces: [{name: a}]\npods: [{name: p, namespace: a, node: n1}, {name: p, namespace: a, node: n1}]",
                "pods[1].name",
            ),
            (
                "nodes: [{name: n1}]\nnamespaces: [{name: a}]\npods: [{name: p, namespace: a, node: n1, ports: [{name: http, port: 0}]}]",
                "pods[0].ports[0].port",
            ),
            (
                "nodes: [{name: n1}]\nnamespaces: [{name: a}]\npods: [{name: p, namespace: a, node: n1, ports: [{name: http, port: 80, protocol: ICMP}]}]",
                "pods[0].ports[0].protocol",
            ),
            (
                "nodes: [{name: n1}]\nnamespaces: [{name: a-b}, {name: a}]\npods: [{name: c, namespace: a-b, node: n1}, {name: b-c, namespace: a, node: n1}]",
                "pods[1]",
            ),
        ];
        for (yaml, field) in cases {
            let e = err(yaml);
            assert!(e.starts_with(&format!("lab.yaml: {field}")), "expected an error about {field}, got: {e}");
        }
    }
}
