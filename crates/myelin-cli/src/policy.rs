//! `myelin policy apply|get|delete|validate|explain` and `myelin identity list|get`.

use crate::agent::AgentArgs;
use crate::output::{self, Format};
use anyhow::{bail, Context, Result};
use myelin_api::{
    AppliedPolicy, Client, ExplainRequest, ExplainResponse, IdentityInfo, PolicyApply, PolicyChange, PolicyDelete,
    PolicyFile,
};
use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Apply CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and NetworkPolicy files, all or nothing.
    Apply {
        /// YAML files (multi-document allowed).
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Show the applied policies.
    Get {
        #[command(flatten)]
        agent: AgentArgs,
        #[arg(short, long, value_enum, default_value_t)]
        output: PolicyFormat,
    },
    /// Delete policies by NAME (`namespace/name`, `name`, or `Kind/namespace/name`) or by file.
    Delete {
        names: Vec<String>,
        #[arg(short = 'f', long = "file")]
        files: Vec<PathBuf>,
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Check policy files without applying them (needs no agent).
    Validate {
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
    },
    /// Which verdict a flow gets and which rules decide it, evaluated from the applied policies.
    Explain {
        /// `namespace/pod`, an IPv4 address or a CIDR.
        #[arg(long)]
        from: String,
        /// `namespace/pod`, an IPv4 address or a CIDR.
        #[arg(long)]
        to: String,
        /// `PORT/PROTO` (e.g. 80/TCP, 53/UDP, 8/ICMP for echo request).
        #[arg(long)]
        port: String,
        #[command(flatten)]
        agent: AgentArgs,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PolicyFormat {
    #[default]
    Table,
    Yaml,
    Json,
}

#[derive(Debug, clap::Subcommand)]
pub enum IdentityCommand {
    /// List security identities: reserved, workload (from labels) and CIDR.
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        agent: AgentArgs,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// One identity, its labels and the endpoints using it.
    Get {
        id: u32,
        #[command(flatten)]
        agent: AgentArgs,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
}

fn read_files(files: &[PathBuf]) -> Result<Vec<PolicyFile>> {
    files
        .iter()
        .map(|p| {
            let content = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Ok(PolicyFile { name: p.display().to_string(), content })
        })
        .collect()
}

/// Validate locally, with the same parser the agent uses: a bad file never leaves this machine.
fn validate(files: &[PolicyFile]) -> Result<Vec<myelin_policy::Policy>> {
    let refs: Vec<(&str, &str)> = files.iter().map(|f| (f.name.as_str(), f.content.as_str())).collect();
    myelin_policy::parse_files(&refs).map_err(|e| anyhow::anyhow!("{e}\nnothing was applied"))
}

/// The agents a command acts on: one, or with `--lab` and no `--node`, every node of the lab.
fn targets(agent: &AgentArgs) -> Result<Vec<(String, Client)>> {
    match (&agent.lab, &agent.node) {
        (Some(lab), None) => {
            let lab = myelin_lab::Lab::load(lab)?;
            Ok(lab.nodes().into_iter().map(|n| (n.name.clone(), Client::new(&n.agent_socket))).collect())
        }
        _ => Ok(vec![(String::new(), agent.client()?)]),
    }
}

fn prefix(node: &str) -> String {
    if node.is_empty() {
        String::new()
    } else {
        format!("{node}: ")
    }
}

pub fn run(cmd: Command) -> Result<i32> {
    match cmd {
        Command::Apply { files, agent } => {
            let files = read_files(&files)?;
            validate(&files)?;
            let body = PolicyApply { files };
            for (node, client) in targets(&agent)? {
                let r: PolicyChange =
                    client.post("/v1/policies", &body).with_context(|| format!("{}applying", prefix(&node)))?;
                for p in &r.policies {
                    outln!("{}{p} applied", prefix(&node));
                }
                for w in &r.warnings {
                    outln!("{}warning: {w}", prefix(&node));
                }
                outln!("{}{} endpoint(s) updated", prefix(&node), r.endpoints_updated);
            }
        }
        Command::Get { agent, output } => {
            let ps: Vec<AppliedPolicy> = agent.get("/v1/policies")?;
            match output {
                PolicyFormat::Json => output::json(&ps)?,
                PolicyFormat::Yaml => {
                    for (i, p) in ps.iter().enumerate() {
                        if i > 0 {
                            outln!("---");
                        }
                        outln!("{}", p.yaml.trim_end());
                    }
                }
                PolicyFormat::Table => {
                    let mut t = output::table(["KIND", "NAMESPACE", "NAME", "WARNINGS"]);
                    for p in &ps {
                        t.add_row(vec![
                            p.kind.clone(),
                            p.namespace.clone().unwrap_or_else(|| "-".into()),
                            p.name.clone(),
                            p.warnings.join("; "),
                        ]);
                    }
                    outln!("{t}");
                }
            }
        }
        Command::Delete { names, files, agent } => {
            let mut ids = names;
            if !files.is_empty() {
                let files = read_files(&files)?;
                for p in validate(&files)? {
                    ids.push(format!("{}/{}", p.kind, p.id()));
                }
            }
            if ids.is_empty() {
                bail!("name the policies to delete, or give -f FILE");
            }
            let body = PolicyDelete { ids };
            for (node, client) in targets(&agent)? {
                let r: PolicyChange =
                    client.post("/v1/policies/delete", &body).with_context(|| format!("{}deleting", prefix(&node)))?;
                for p in &r.policies {
                    outln!("{}{p} deleted", prefix(&node));
                }
            }
        }
        Command::Validate { files } => {
            let files = read_files(&files)?;
            let ps = validate(&files)
                .map_err(|e| anyhow::anyhow!("{}", e.to_string().replace("\nnothing was applied", "")))?;
            for p in &ps {
                outln!("{} {}: valid", p.kind, p.id());
                for w in &p.warnings {
                    outln!("  warning: {w}");
                }
            }
        }
        Command::Explain { from, to, port, agent, output } => {
            let (port, protocol) = parse_port(&port)?;
            let req = ExplainRequest { from, to, protocol, port };
            let r: ExplainResponse = agent.client()?.post("/v1/policies/explain", &req).context("explain")?;
            if output == Format::Json {
                output::json(&r)?;
            } else {
                outln!("{}", r.text.trim_end());
            }
            return Ok(if r.verdict == "allow" { 0 } else { 2 });
        }
    }
    Ok(0)
}

fn parse_port(s: &str) -> Result<(u16, String)> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let port: u16 = port.parse().with_context(|| format!("--port {s:?}: expected PORT/PROTO, e.g. 80/TCP"))?;
    Ok((port, proto.to_ascii_uppercase()))
}

pub fn run_identity(cmd: IdentityCommand) -> Result<i32> {
    match cmd {
        IdentityCommand::List { agent, output } => {
            let ids: Vec<IdentityInfo> = agent.get("/v1/identities")?;
            if output == Format::Json {
                output::json(&ids)?;
            } else {
                let mut t = output::table(["ID", "SCOPE", "LABELS", "ENDPOINTS"]);
                for i in &ids {
                    t.add_row(vec![
                        i.id.to_string(),
                        i.scope.clone(),
                        output::labels(&i.labels),
                        i.endpoints.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                    ]);
                }
                outln!("{t}");
            }
        }
        IdentityCommand::Get { id, agent, output } => {
            let i: IdentityInfo = agent.get(&format!("/v1/identities/{id}"))?;
            if output == Format::Json {
                output::json(&i)?;
            } else {
                outln!("identity {} ({})", i.id, i.scope);
                for (k, v) in &i.labels {
                    outln!("  {k}={v}");
                }
                outln!("endpoints: {}", i.endpoints.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "));
            }
        }
    }
    Ok(0)
}
