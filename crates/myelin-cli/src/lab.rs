//! `myelin lab up|down|status|exec` (and the hidden `enter` that `exec` runs).

use crate::output::{self, Format};
use anyhow::Result;
use myelin_lab::{Lab, LabOptions, LabSpec, LabStatus};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const DEFAULT_NAME: &str = "myelin";

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Build a lab: fabric, nodes running myelin-agent, pods plumbed by myelin-cni.
    Up {
        /// Lab description (nodes, routing, kvstore, namespaces, pods, external hosts); default: a demo lab.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        #[command(flatten)]
        name: NameArg,
    },
    /// Remove a lab and everything it created (idempotent).
    Down {
        #[command(flatten)]
        name: NameArg,
    },
    /// Nodes, routing, kvstore, pods and external hosts of a lab.
    Status {
        #[command(flatten)]
        name: NameArg,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Run a command in a pod (`namespace/pod`), a node or an external host.
    Exec {
        #[command(flatten)]
        name: NameArg,
        /// `namespace/pod`, a node name or an external host name.
        target: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
    /// Internal: enter a netns (and cgroup) and exec a command.
    #[command(hide = true)]
    Enter(EnterArgs),
}

#[derive(Debug, clap::Args)]
pub struct NameArg {
    /// Lab name (a-z, 0-9, '-', at most 12 characters).
    #[arg(long, default_value = DEFAULT_NAME)]
    name: String,
}

#[derive(Debug, clap::Args)]
pub struct EnterArgs {
    /// Network namespace file to enter.
    #[arg(long)]
    netns: PathBuf,
    /// cgroup v2 directory to move into first.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

pub fn run(cmd: Command) -> Result<i32> {
    match cmd {
        Command::Up { file, name } => up(file, &name.name),
        Command::Down { name } => {
            if Lab::down_by_name(&name.name)? {
                outln!("lab {} removed", name.name);
            } else {
                outln!("lab {} does not exist; nothing to do", name.name);
            }
            Ok(0)
        }
        Command::Status { name, output } => {
            let lab = Lab::load(&name.name)?;
            let status = lab.status();
            if output == Format::Json {
                output::json(&status)?;
            } else {
                print_status(&status);
            }
            Ok(0)
        }
        Command::Exec { name, target, command } => {
            // Become the command (no child to orphan: signals sent to `myelin lab exec` reach
            // it, and its exit status is ours). Nothing here has started a thread.
            let t = Lab::load(&name.name)?.exec_target(&target)?;
            Ok(become_command(&t.netns, t.cgroup.as_deref(), &command))
        }
        Command::Enter(args) => Ok(enter(&args)),
    }
}

fn up(file: Option<PathBuf>, name: &str) -> Result<i32> {
    let spec = match &file {
        Some(f) => LabSpec::from_file(f)?,
        None => LabSpec::demo(),
    };
    let started = std::time::Instant::now();
    let progress: myelin_lab::ProgressFn = Arc::new(move |line: &str| {
        eprintln!("[{:>5.1}s] {line}", started.elapsed().as_secs_f64());
    });
    let opts = LabOptions { progress: Some(progress), ..LabOptions::default() };
    let lab = Lab::up(spec, name, opts)?;
    let status = lab.status();
    eprintln!("[{:>5.1}s] lab {name} is up", started.elapsed().as_secs_f64());
    print_status(&status);
    print_examples(&status);
    Ok(0)
}

fn print_status(s: &LabStatus) {
    outln!("lab {} (state in {})", s.name, s.state_dir);
    let mut nodes = output::table(["NODE", "ADDRESS", "POD CIDR", "AGENT", "SOCKET"]);
    for n in &s.nodes {
        let agent = match (n.agent_pid, n.agent_running) {
            (Some(pid), true) => format!("running (pid {pid})"),
            (Some(pid), false) => format!("DEAD (pid {pid}, see {})", n.agent_log),
            (None, _) => "not started".to_owned(),
        };
        nodes.add_row(vec![n.name.clone(), n.addresses.join(","), n.pod_cidr.clone(), agent, n.agent_socket.clone()]);
    }
    outln!("{nodes}");
    print_kvstore(s);
    if !s.pods.is_empty() {
        let mut pods = output::table(["POD", "NODE", "IP", "ENDPOINT", "LABELS"]);
        for p in &s.pods {
            pods.add_row(vec![
                format!("{}/{}", p.namespace, p.name),
                p.node.clone(),
                p.ip.clone().unwrap_or_else(|| "-".into()),
                p.endpoint_id.map_or_else(|| "-".into(), |i| i.to_string()),
                output::labels(&p.labels),
            ]);
        }
        outln!("{pods}");
    }
    if !s.external.is_empty() {
        let mut ext = output::table(["EXTERNAL", "IP"]);
        for x in &s.external {
            ext.add_row(vec![x.name.clone(), x.ip.clone()]);
        }
        outln!("{ext}");
    }
}

/// One line for routing and the kvstore, and one per etcd member.
fn print_kvstore(s: &LabStatus) {
    let kv = &s.kvstore;
    if kv.members.is_empty() {
        outln!("routing {}, kvstore {}", s.routing, kv.kind);
        return;
    }
    outln!("routing {}, kvstore {} ({} member(s)): {}", s.routing, kv.kind, kv.members.len(), kv.endpoints.join(","));
    for m in &kv.members {
        let state = match (m.pid, m.running) {
            (Some(pid), true) => format!("running (pid {pid})"),
            (Some(pid), false) => format!("DEAD (pid {pid}, see {})", m.log),
            (None, _) => format!("stopped (see {})", m.log),
        };
        outln!("  {} {} {state}", m.name, m.address);
    }
}

fn print_examples(s: &LabStatus) {
    let name = if s.name == DEFAULT_NAME { String::new() } else { format!(" --name {}", s.name) };
    outln!("\nTry:");
    let pods: Vec<_> = s.pods.iter().filter(|p| p.ip.is_some()).collect();
    if let [a, b, ..] = pods.as_slice() {
        outln!(
            "  myelin lab exec{name} {}/{} -- ping -c 3 {}",
            a.namespace,
            a.name,
            b.ip.as_deref().unwrap_or_default()
        );
    }
    if let (Some(a), Some(x)) = (pods.first(), s.external.first()) {
        outln!(
            "  myelin lab exec{name} {}/{} -- ping -c 3 {}    # to external host {}",
            a.namespace,
            a.name,
            x.ip,
            x.name
        );
    }
    if let Some(a) = pods.first() {
        outln!("  myelin lab exec{name} {}/{} -- ip addr", a.namespace, a.name);
    }
    if let Some(n) = s.nodes.first() {
        outln!("  myelin endpoint list --lab {} --node {}", s.name, n.name);
        outln!("  myelin status --lab {} --node {}", s.name, n.name);
    }
    outln!("  myelin lab down{name}");
}

/// `myelin lab enter`: join the cgroup, enter the netns, exec. Returns only on error.
pub fn enter(args: &EnterArgs) -> i32 {
    become_command(&args.netns, args.cgroup.as_deref(), &args.command)
}

/// Threads of this process, from /proc/self/status.
fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok())
}

/// Join `cgroup` (if any), setns() into `netns` and exec `command` in place: the process becomes
/// the command. Must run while the process has a single thread (setns() moves only the calling
/// thread). Returns only on error, with the exit code to use: 125 when the cgroup or netns
/// cannot be entered, 126 when the command cannot run, 127 when it is not found.
pub fn become_command(netns: &Path, cgroup: Option<&Path>, command: &[OsString]) -> i32 {
    use std::os::unix::process::CommandExt;
    let fail = |msg: String| {
        eprintln!("myelin lab: {msg}");
        125
    };
    match thread_count() {
        Some(1) => {}
        n => {
            return fail(format!(
                "entering {} needs a single-threaded process, this one has {n:?} threads",
                netns.display()
            ))
        }
    }
    let Some((prog, rest)) = command.split_first() else {
        return fail("no command given".into());
    };
    if let Some(cg) = cgroup {
        let procs = cg.join("cgroup.procs");
        if let Err(e) = std::fs::write(&procs, std::process::id().to_string()) {
            return fail(format!("joining cgroup {}: {e}", cg.display()));
        }
    }
    let file = match std::fs::File::open(netns) {
        Ok(f) => f,
        Err(e) => return fail(format!("opening netns {}: {e}", netns.display())),
    };
    if let Err(e) = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET) {
        return fail(format!("entering netns {}: {e}", netns.display()));
    }
    drop(file);
    let err = std::process::Command::new(prog).args(rest).exec();
    eprintln!("myelin lab: cannot run {}: {err}", prog.to_string_lossy());
    if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}
