//! `myelin endpoint list|get|labels|metrics|traffic`.

use crate::agent::AgentArgs;
use crate::output::{self, Format};
use anyhow::{bail, Context, Result};
use myelin_api::{CgroupTraffic, DatapathMetric, Endpoint, EndpointPolicy, Labels, LabelsUpdate};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List endpoints.
    #[command(alias = "ls")]
    List(Common),
    /// Show one endpoint.
    Get {
        id: u32,
        #[command(flatten)]
        common: Common,
    },
    /// Set labels: `k=v` adds or changes, `k-` removes; --replace drops all others.
    Labels {
        id: u32,
        /// `key=value` or `key-`.
        #[arg(required = true)]
        labels: Vec<String>,
        /// Replace the label set instead of merging into it.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Per-endpoint datapath counters (packets and bytes by verdict).
    Metrics(Common),
    /// What the sockets of each pod cgroup sent and received (needs cgroup_root in the agent config).
    Traffic(Common),
}

#[derive(Debug, clap::Args)]
pub struct Common {
    #[command(flatten)]
    agent: AgentArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
}

pub fn run(cmd: Command) -> Result<i32> {
    match cmd {
        Command::List(c) => {
            let mut eps: Vec<Endpoint> = c.agent.get("/v1/endpoints")?;
            eps.sort_by_key(|e| e.id);
            if c.output == Format::Json {
                output::json(&eps)?;
            } else {
                print_list(&eps);
            }
        }
        Command::Get { id, common } => {
            let ep: Endpoint = common.agent.get(&format!("/v1/endpoints/{id}"))?;
            let policy: EndpointPolicy = common.agent.get(&format!("/v1/endpoints/{id}/policy"))?;
            if common.output == Format::Json {
                output::json(&serde_json::json!({"endpoint": ep, "policy": policy}))?;
            } else {
                print_one(&ep);
                print_policy(&policy);
            }
        }
        Command::Labels { id, labels, replace, common } => {
            let client = common.agent.client()?;
            let path = format!("/v1/endpoints/{id}");
            let current: Endpoint = client.get(&path).with_context(|| format!("GET {path}"))?;
            let new = apply_labels(if replace { Labels::new() } else { current.labels }, &labels)?;
            let update = LabelsUpdate { labels: new, ports: None };
            let ep: Endpoint =
                client.put(&format!("{path}/labels"), &update).with_context(|| format!("PUT {path}/labels"))?;
            if common.output == Format::Json {
                output::json(&ep)?;
            } else {
                outln!("endpoint {}: {}", ep.id, output::labels(&ep.labels));
            }
        }
        Command::Metrics(c) => {
            let mut m: Vec<DatapathMetric> = c.agent.get("/v1/metrics/datapath")?;
            m.sort_by(|a, b| (a.endpoint_id, &a.direction, a.reason).cmp(&(b.endpoint_id, &b.direction, b.reason)));
            if c.output == Format::Json {
                output::json(&m)?;
            } else {
                let mut t = output::table(["ENDPOINT", "DIRECTION", "REASON", "PACKETS", "BYTES"]);
                for r in &m {
                    t.add_row(vec![
                        r.endpoint_id.to_string(),
                        r.direction.clone(),
                        format!("{} ({})", r.reason_name, r.reason),
                        r.packets.to_string(),
                        r.bytes.to_string(),
                    ]);
                }
                outln!("{t}");
            }
        }
        Command::Traffic(c) => {
            let rows: Vec<CgroupTraffic> = c.agent.get("/v1/cgroup-traffic")?;
            if c.output == Format::Json {
                output::json(&rows)?;
            } else {
                let mut t =
                    output::table(["POD", "ENDPOINT", "CGROUP", "RX PACKETS", "RX BYTES", "TX PACKETS", "TX BYTES"]);
                for r in &rows {
                    let pod = match (&r.namespace, &r.pod) {
                        (Some(ns), Some(p)) => format!("{ns}/{p}"),
                        _ => "-".into(),
                    };
                    t.add_row(vec![
                        pod,
                        r.endpoint_id.map_or_else(|| "-".into(), |i| i.to_string()),
                        r.cgroup.clone().unwrap_or_else(|| format!("(gone: id {})", r.cgroup_id)),
                        r.ingress_packets.to_string(),
                        r.ingress_bytes.to_string(),
                        r.egress_packets.to_string(),
                        r.egress_bytes.to_string(),
                    ]);
                }
                outln!("{t}");
            }
        }
    }
    Ok(0)
}

/// Apply `k=v` / `k-` arguments to a label set.
fn apply_labels(mut labels: Labels, args: &[String]) -> Result<Labels> {
    for a in args {
        if let Some((k, v)) = a.split_once('=') {
            if k.is_empty() {
                bail!("label {a:?}: empty key");
            }
            labels.insert(k.to_owned(), v.to_owned());
        } else if let Some(k) = a.strip_suffix('-').filter(|k| !k.is_empty()) {
            labels.remove(k);
        } else {
            bail!("label {a:?}: expected key=value (set) or key- (remove)");
        }
    }
    Ok(labels)
}

fn print_list(eps: &[Endpoint]) {
    let mut t = output::table(["ID", "POD", "IPV4", "IDENTITY", "HOST IF", "LABELS"]);
    for e in eps {
        let pod = match (&e.namespace, &e.pod_name) {
            (Some(ns), Some(p)) => format!("{ns}/{p}"),
            (_, Some(p)) => p.clone(),
            _ => e.container_id.chars().take(20).collect(),
        };
        t.add_row(vec![
            e.id.to_string(),
            pod,
            e.ipv4.clone(),
            e.identity.to_string(),
            e.host_ifname.clone(),
            output::labels(&e.labels),
        ]);
    }
    outln!("{t}");
}

fn print_one(e: &Endpoint) {
    let mut t = output::table([]);
    let ports = e.ports.iter().map(|p| format!("{}={}/{}", p.name, p.port, p.protocol)).collect::<Vec<_>>().join(",");
    for (k, v) in [
        ("ID", e.id.to_string()),
        ("Container", e.container_id.clone()),
        ("Pod", format!("{}/{}", e.namespace.as_deref().unwrap_or("-"), e.pod_name.as_deref().unwrap_or("-"))),
        ("IPv4", e.ipv4.clone()),
        ("Gateway", e.gateway.clone()),
        ("MAC", e.mac.clone()),
        ("Host interface", format!("{} (ifindex {}, {})", e.host_ifname, e.host_ifindex, e.host_mac)),
        ("Netns", format!("{} ({})", e.netns, e.ifname)),
        ("Identity", e.identity.to_string()),
        ("Labels", output::labels(&e.labels)),
        ("Named ports", ports),
    ] {
        t.add_row(vec![k.to_owned(), v]);
    }
    outln!("{t}");
}

/// Enforcement per direction and the entries the datapath holds for the endpoint.
fn print_policy(p: &EndpointPolicy) {
    let state = |on: bool| if on { "enforced (default deny)" } else { "not enforced (default allow)" };
    outln!("Ingress policy: {}", state(p.ingress_enforced));
    outln!("Egress policy:  {}", state(p.egress_enforced));
    if p.entries.is_empty() {
        return;
    }
    let mut t = output::table(["DIRECTION", "PEER IDENTITY", "PROTO", "PORTS", "VERDICT", "RULE"]);
    for e in &p.entries {
        let proto = match e.protocol {
            0 => "any".to_owned(),
            1 => "ICMP".to_owned(),
            6 => "TCP".to_owned(),
            17 => "UDP".to_owned(),
            132 => "SCTP".to_owned(),
            n => n.to_string(),
        };
        let ports = if e.protocol == 0 || e.port_prefix_len == 0 {
            "any".to_owned()
        } else if e.port_prefix_len == 16 {
            e.port.to_string()
        } else {
            let span = 1u32 << (16 - u32::from(e.port_prefix_len));
            format!("{}-{}", e.port, u32::from(e.port) + span - 1)
        };
        let peer = if e.identity == 0 { "any".to_owned() } else { e.identity.to_string() };
        t.add_row(vec![
            e.direction.clone(),
            peer,
            proto,
            ports,
            e.verdict.clone(),
            e.rule.clone().unwrap_or_else(|| if e.rule_id == 0 { "-".into() } else { e.rule_id.to_string() }),
        ]);
    }
    outln!("{t}");
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn label_arguments_merge_and_remove() {
        let start: Labels = [("app".to_owned(), "web".to_owned()), ("tier".to_owned(), "fe".to_owned())].into();
        let got = apply_labels(start, &["env=prod".into(), "tier-".into(), "app=api".into()]).unwrap();
        let want: Labels = [("app".to_owned(), "api".to_owned()), ("env".to_owned(), "prod".to_owned())].into();
        assert_eq!(got, want);
        assert!(apply_labels(Labels::new(), &["novalue".into()]).is_err());
        assert!(apply_labels(Labels::new(), &["=v".into()]).is_err());
    }
}
