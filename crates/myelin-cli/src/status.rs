//! `myelin status`.

use crate::agent::AgentArgs;
use crate::output::{self, Format};
use anyhow::Result;
use comfy_table::Cell;
use myelin_api::Status;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    agent: AgentArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
}

pub fn run(a: &Args) -> Result<i32> {
    let s: Status = a.agent.get("/v1/status")?;
    if a.output == Format::Json {
        output::json(&s)?;
        return Ok(if s.healthy { 0 } else { 1 });
    }
    let mut t = output::table([]);
    for (k, v) in [
        ("Health", if s.healthy { "healthy".to_owned() } else { "UNHEALTHY".to_owned() }),
        ("Node", s.node.clone()),
        ("Node IP", s.node_ip.clone()),
        ("Pod CIDR", s.pod_cidr.clone()),
        ("Gateway", s.gateway.clone()),
        ("Endpoints", format!("{} ({} adopted at start)", s.endpoints, s.adopted_endpoints)),
        ("BPF dir", s.bpf_dir.clone()),
        ("Version", s.version.clone()),
    ] {
        t.add_row(vec![Cell::new(k), Cell::new(v)]);
    }
    outln!("{t}");
    let mut f = output::table(["FEATURE", "AVAILABLE", "DETAIL"]);
    for feat in &s.features {
        f.add_row(vec![feat.name.as_str(), if feat.available { "yes" } else { "no" }, feat.detail.as_str()]);
    }
    outln!("{f}");
    Ok(if s.healthy { 0 } else { 1 })
}
