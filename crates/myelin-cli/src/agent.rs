//! Which agent a command talks to: `--agent SOCKET`, `$MYELIN_AGENT_SOCKET`,
//! the default socket, or a lab node (`--lab NAME [--node NODE]`).

use anyhow::{bail, Context, Result};
use myelin_api::{Client, AGENT_SOCKET_ENV, DEFAULT_AGENT_SOCKET};
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Agent API socket.
    #[arg(long, env = AGENT_SOCKET_ENV, default_value = DEFAULT_AGENT_SOCKET, conflicts_with = "lab")]
    pub agent: PathBuf,
    /// Talk to the agent of a lab node instead.
    #[arg(long)]
    pub lab: Option<String>,
    /// Node of the lab (needed when the lab has several).
    #[arg(long, requires = "lab")]
    pub node: Option<String>,
}

impl AgentArgs {
    pub fn client(&self) -> Result<Client> {
        let Some(lab_name) = &self.lab else {
            return Ok(Client::new(&self.agent).with_timeout(std::time::Duration::from_secs(30)));
        };
        let lab = myelin_lab::Lab::load(lab_name)?;
        let nodes = lab.nodes();
        let node = match (&self.node, nodes.as_slice()) {
            (Some(n), _) => lab.node(n)?,
            (None, [only]) => only.clone(),
            (None, _) => bail!(
                "lab {lab_name} has {} nodes; pick one with --node ({})",
                nodes.len(),
                nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        };
        Ok(Client::new(&node.agent_socket))
    }

    pub fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let c = self.client()?;
        c.get(path).with_context(|| format!("GET {path}"))
    }
}
