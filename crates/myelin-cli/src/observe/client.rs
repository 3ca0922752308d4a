//! Which Observer API(s) a command talks to, and the gRPC client over a unix
//! socket: `--observer-socket PATH` (repeatable), `$MYELIN_OBSERVER_SOCKET`,
//! the default socket next to the agent's API socket, or a lab's nodes
//! (`--lab NAME [--node NODE]`: one node, or all of them).

use anyhow::{bail, Context, Result};
use myelin_observe::proto::observer::observer_client::ObserverClient;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

pub const OBSERVER_SOCKET_ENV: &str = "MYELIN_OBSERVER_SOCKET";

/// The agent's default Observer socket: `observer.sock` next to its API socket.
pub fn default_socket() -> PathBuf {
    Path::new(myelin_api::DEFAULT_AGENT_SOCKET).with_file_name("observer.sock")
}

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Agents")]
pub struct TargetArgs {
    /// Observer API socket of an agent; repeat it to merge several agents' flows
    /// [default: $MYELIN_OBSERVER_SOCKET, else /run/myelin/observer.sock].
    #[arg(long = "observer-socket", value_name = "PATH", conflicts_with = "lab")]
    pub observer_socket: Vec<PathBuf>,
    /// Ask the agents of a lab: every node (their flows merged in time order), or --node.
    #[arg(long, value_name = "NAME")]
    pub lab: Option<String>,
    /// Only this node of the lab.
    #[arg(long, value_name = "NODE", requires = "lab")]
    pub node: Option<String>,
}

/// One Observer API to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The node's name (lab) or the socket path.
    pub name: String,
    pub socket: PathBuf,
}

impl TargetArgs {
    pub fn targets(&self) -> Result<Vec<Target>> {
        let Some(lab_name) = &self.lab else {
            // The environment is read here, not by clap, so that it never conflicts with --lab.
            let from_env = std::env::var_os(OBSERVER_SOCKET_ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
            let sockets = if self.observer_socket.is_empty() {
                vec![from_env.unwrap_or_else(default_socket)]
            } else {
                self.observer_socket.clone()
            };
            return Ok(sockets.into_iter().map(|s| Target { name: s.display().to_string(), socket: s }).collect());
        };
        let lab = myelin_lab::Lab::load(lab_name)?;
        let nodes = lab.status().nodes;
        let pick: Vec<Target> = nodes
            .iter()
            .filter(|n| self.node.as_ref().is_none_or(|want| *want == n.name))
            .map(|n| Target { name: n.name.clone(), socket: PathBuf::from(&n.observer_socket) })
            .collect();
        if pick.is_empty() {
            bail!(
                "lab {lab_name} has no node {:?}; its nodes: {}",
                self.node.as_deref().unwrap_or_default(),
                nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        Ok(pick)
    }
}

/// An error with its causes on one line (tonic's transport errors say little alone).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// A gRPC status as one line: `invalid argument: since is after until`.
pub fn status_text(s: &tonic::Status) -> String {
    let code = format!("{:?}", s.code());
    let mut words = String::new();
    for (i, ch) in code.chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            words.push(' ');
        }
        words.push(ch.to_ascii_lowercase());
    }
    if s.message().is_empty() {
        words
    } else {
        format!("{words}: {}", s.message())
    }
}

/// Connect to the Observer API at a unix socket.
pub async fn connect(t: &Target) -> Result<ObserverClient<Channel>> {
    let path = t.socket.clone();
    if !path.exists() {
        bail!(
            "{}: no Observer API socket at {} (is the agent running? it serves the API on its observer_socket; \
             pick another with --observer-socket, ${OBSERVER_SOCKET_ENV} or --lab)",
            t.name,
            path.display()
        );
    }
    // The URI is required by the API but unused: the connector dials the socket.
    let channel = Endpoint::try_from("http://observer.invalid")?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .map_err(|e| anyhow::anyhow!(chain(&e)))
        .with_context(|| format!("{}: connecting to the Observer API at {}", t.name, t.socket.display()))?;
    Ok(ObserverClient::new(channel).max_decoding_message_size(64 << 20))
}
