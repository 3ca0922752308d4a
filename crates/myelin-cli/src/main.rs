//! `myelin`: the command-line tool. This file only parses and dispatches; each
//! subcommand lives in its own module.
#![forbid(unsafe_code)]

/// `println!` that ends the program quietly (exit 141, like SIGPIPE) when stdout
/// is a closed pipe, e.g. `myelin endpoint list | head`.
macro_rules! outln {
    ($($t:tt)*) => { $crate::output::write_line(format_args!($($t)*)) };
}

mod agent;
mod endpoint;
mod lab;
mod observe;
mod output;
mod perf;
mod policy;
mod status;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "myelin", version, about = "eBPF networking for containers: agent status, endpoints and a local lab")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Health, node, pod CIDR and kernel features of an agent.
    Status(status::Args),
    /// Endpoints (pod interfaces) of an agent.
    #[command(subcommand, alias = "ep")]
    Endpoint(endpoint::Command),
    /// A hermetic local cluster of network namespaces.
    #[command(subcommand)]
    Lab(lab::Command),
    /// Network policy: apply, get, delete, validate, explain.
    #[command(subcommand)]
    Policy(policy::Command),
    /// Security identities derived from labels.
    #[command(subcommand, alias = "id")]
    Identity(policy::IdentityCommand),
    /// Flows: every forwarded and dropped packet, named by pod, identity and policy (Hubble's filters).
    Observe(Box<observe::Args>),
    /// Datapath benchmarks: Myelin against kernel routing, iptables and a bare veth.
    Perf(perf::Args),
}

fn main() {
    // The matches are kept: `observe` needs the order of its filter flags (`--not`).
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // `lab enter` must run before anything could start a thread: it setns()es the
    // whole (single-threaded) process and execs.
    if let Command::Lab(lab::Command::Enter(args)) = &cli.command {
        std::process::exit(lab::enter(args));
    }
    let result = match cli.command {
        Command::Status(a) => status::run(&a),
        Command::Endpoint(c) => endpoint::run(c),
        Command::Lab(c) => lab::run(c),
        Command::Perf(a) => perf::run(&a),
        Command::Policy(c) => policy::run(c),
        Command::Identity(c) => policy::run_identity(c),
        Command::Observe(a) => match matches.subcommand_matches("observe") {
            Some(m) => observe::run(*a, m),
            None => Err(anyhow::anyhow!("internal: no arguments parsed for observe")),
        },
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("myelin: {}", one_line(&e));
            std::process::exit(1);
        }
    }
}

/// `error: cause: cause`, on one line (multi-line causes such as log tails stay as they are).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain().map(ToString::to_string) {
        // Many errors already embed their source's message; don't say it twice.
        if !line.contains(&cause) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&cause);
        }
    }
    line
}
