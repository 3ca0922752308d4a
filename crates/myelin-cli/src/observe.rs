//! `myelin observe`: flows from the agents' Observer API (Hubble's gRPC),
//! with `hubble observe`'s filters and output; `myelin observe status|nodes|namespaces`.
//!
//! ```text
//!  flags (in order) --filter--> whitelist/blacklist FlowFilters --+
//!  --last/--first/--since/--until/--follow ----------------------+--> GetFlowsRequest
//!
//!  one socket:  GetFlows stream -----------------------------------> Printer (compact|table|json)
//!  a lab:       GetFlows per node, concurrently --merge (time order)--> Printer
//!                 (no --follow: collect, sort, apply --last/--first;
//!                  --follow: k-way merge, a quiet node holds back at most merge::WINDOW)
//! ```

mod client;
mod filter;
mod merge;
mod print;
mod when;

use crate::output::{self, Format};
use anyhow::{bail, Context, Result};
use clap::{ArgAction, ArgMatches};
use client::{connect, status_text, Target, TargetArgs};
use comfy_table::Cell;
use merge::{Limit, Merger};
use myelin_observe::proto::observer::{
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse, GetNodesRequest, GetNodesResponse,
    Namespace, ServerStatusRequest, ServerStatusResponse,
};
use print::{ColorWhen, Options, Output, Printer};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Flows printed by a plain `myelin observe` (as `hubble observe`).
const DEFAULT_LAST: u64 = 20;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    flows: FlowArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Flow buffer use, flows seen, uptime and version of the agents (Hubble's ServerStatus).
    Status(InfoArgs),
    /// Nodes the Observer API(s) know, with their state.
    Nodes(InfoArgs),
    /// Namespaces that had flows recently.
    Namespaces(InfoArgs),
}

#[derive(Debug, clap::Args)]
struct InfoArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
}

#[derive(Debug, clap::Args)]
struct FlowArgs {
    #[command(flatten)]
    target: TargetArgs,

    /// Output: compact (one line per flow), table, or json (one protojson GetFlowsResponse per line).
    #[arg(short, long, value_enum, default_value_t, help_heading = "Output")]
    output: Output,
    /// Colour: auto (on a terminal), always, never.
    #[arg(long, value_enum, default_value_t, value_name = "WHEN", help_heading = "Output")]
    color: ColorWhen,
    /// Name the policies that allowed or denied each flow.
    #[arg(long, help_heading = "Output")]
    print_policy_names: bool,
    /// Print the node that observed each flow.
    #[arg(long, help_heading = "Output")]
    print_node_name: bool,

    /// The last N flows [default: 20, when no other selection is given].
    #[arg(long, value_name = "N", help_heading = "Selection")]
    last: Option<u64>,
    /// The first N flows (the oldest kept).
    #[arg(long, value_name = "N", help_heading = "Selection")]
    first: Option<u64>,
    /// Every flow kept.
    #[arg(long, help_heading = "Selection")]
    all: bool,
    /// Flows since a time: a duration ago (30s, 5m, 2h, 1h30m, 2d) or a time (2024-05-01T12:00:00Z).
    #[arg(long, value_name = "WHEN", help_heading = "Selection")]
    since: Option<String>,
    /// Flows until a time (same forms as --since).
    #[arg(long, value_name = "WHEN", help_heading = "Selection")]
    until: Option<String>,
    /// Keep printing new flows as they happen (also after --since or --last).
    #[arg(short, long, help_heading = "Selection")]
    follow: bool,

    #[command(flatten)]
    filters: FilterArgs,
}

/// Filter flags take a value each and may repeat: values of one flag OR, different flags AND.
/// Only their order matters to `--not`; they are read from the parsed matches (`filter_flags`).
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Filters (hubble observe's; values of one flag OR, flags AND)")]
#[allow(dead_code)]
struct FilterArgs {
    /// Negate the next filter flag: flows matching it are left out.
    #[arg(long, action = ArgAction::Append, num_args = 0, default_missing_value = "true",
          value_parser = clap::value_parser!(bool))]
    not: Vec<bool>,
    /// Flows from a pod: [NAMESPACE/]POD-NAME-PREFIX (NAMESPACE/ alone: the whole namespace).
    #[arg(long = "from-pod", id = "from-pod", value_name = "POD")]
    from_pod: Vec<String>,
    /// Flows to a pod: [NAMESPACE/]POD-NAME-PREFIX.
    #[arg(long = "to-pod", id = "to-pod", value_name = "POD")]
    to_pod: Vec<String>,
    /// Flows from or to a pod.
    #[arg(long = "pod", id = "pod", value_name = "POD")]
    pod: Vec<String>,
    /// Flows from pods of a namespace.
    #[arg(long = "from-namespace", id = "from-namespace", value_name = "NS")]
    from_namespace: Vec<String>,
    /// Flows to pods of a namespace.
    #[arg(long = "to-namespace", id = "to-namespace", value_name = "NS")]
    to_namespace: Vec<String>,
    /// Flows from or to pods of a namespace.
    #[arg(short = 'n', long = "namespace", id = "namespace", value_name = "NS")]
    namespace: Vec<String>,
    /// Flows from endpoints with labels (a selector: app=web, k8s:app=web, 'env in (a,b)', !app).
    #[arg(long = "from-label", id = "from-label", value_name = "SELECTOR")]
    from_label: Vec<String>,
    /// Flows to endpoints with labels.
    #[arg(long = "to-label", id = "to-label", value_name = "SELECTOR")]
    to_label: Vec<String>,
    /// Flows from or to endpoints with labels.
    #[arg(short = 'l', long = "label", id = "label", value_name = "SELECTOR")]
    label: Vec<String>,
    /// Flows from an IP address or CIDR.
    #[arg(long = "from-ip", id = "from-ip", value_name = "IP")]
    from_ip: Vec<String>,
    /// Flows to an IP address or CIDR.
    #[arg(long = "to-ip", id = "to-ip", value_name = "IP")]
    to_ip: Vec<String>,
    /// Flows from or to an IP address or CIDR.
    #[arg(long = "ip", id = "ip", value_name = "IP")]
    ip: Vec<String>,
    /// Flows from a security identity (a number or host, world, remote-node, health, ...).
    #[arg(long = "from-identity", id = "from-identity", value_name = "ID")]
    from_identity: Vec<String>,
    /// Flows to a security identity.
    #[arg(long = "to-identity", id = "to-identity", value_name = "ID")]
    to_identity: Vec<String>,
    /// Flows from or to a security identity.
    #[arg(long = "identity", id = "identity", value_name = "ID")]
    identity: Vec<String>,
    /// Flows from a port.
    #[arg(long = "from-port", id = "from-port", value_name = "PORT")]
    from_port: Vec<String>,
    /// Flows to a port.
    #[arg(long = "to-port", id = "to-port", value_name = "PORT")]
    to_port: Vec<String>,
    /// Flows from or to a port.
    #[arg(long = "port", id = "port", value_name = "PORT")]
    port: Vec<String>,
    /// L4 or L7 protocol: tcp, udp, sctp, icmp, icmpv4, icmpv6, http, dns, ...
    #[arg(long = "protocol", id = "protocol", value_name = "PROTO")]
    protocol: Vec<String>,
    /// Verdict: FORWARDED, DROPPED, ERROR, AUDIT, REDIRECTED, TRACED, TRANSLATED.
    #[arg(long = "verdict", id = "verdict", value_name = "VERDICT")]
    verdict: Vec<String>,
    /// Drop reason, as flow.DropReason names it: POLICY_DENIED, POLICY_DENY, ...
    #[arg(long = "drop-reason-desc", id = "drop-reason-desc", value_name = "REASON")]
    drop_reason_desc: Vec<String>,
    /// Event type: trace, drop, policy-verdict, l7, capture, debug, agent or a number; TYPE:SUBTYPE
    /// matches a sub-type too (trace:to-endpoint, trace:to-stack, drop:133).
    #[arg(short = 't', long = "type", id = "type", value_name = "TYPE[:SUBTYPE]")]
    r#type: Vec<String>,
    /// Traffic direction: ingress or egress.
    #[arg(long = "traffic-direction", id = "traffic-direction", value_name = "DIR")]
    traffic_direction: Vec<String>,
    /// Node name pattern (node1, node*, cluster/node1).
    #[arg(long = "node-name", id = "node-name", value_name = "NAME")]
    node_name: Vec<String>,
    /// TCP flags the packet has (all of them): SYN, SYN,ACK, RST, ...
    #[arg(long = "tcp-flags", id = "tcp-flags", value_name = "FLAGS")]
    tcp_flags: Vec<String>,
}

/// The filter flags (and `--not`) of a command line, in the order given.
fn filter_flags(m: &ArgMatches) -> Vec<(usize, &'static str, Option<String>)> {
    let mut events = Vec::new();
    for &flag in filter::FLAGS {
        if let (Some(idx), Some(vals)) = (m.indices_of(flag), m.get_many::<String>(flag)) {
            events.extend(idx.zip(vals).map(|(i, v)| (i, flag, Some(v.clone()))));
        }
    }
    if m.value_source("not") == Some(clap::parser::ValueSource::CommandLine) {
        if let Some(idx) = m.indices_of("not") {
            events.extend(idx.map(|i| (i, "not", None)));
        }
    }
    events.sort_by_key(|(i, _, _)| *i);
    events
}

/// The whitelist and blacklist the flags ask for.
fn filters(
    m: &ArgMatches,
) -> Result<(Vec<myelin_observe::proto::flow::FlowFilter>, Vec<myelin_observe::proto::flow::FlowFilter>)> {
    let mut f = filter::Filters::default();
    for (_, flag, value) in filter_flags(m) {
        match value {
            None => f.not()?,
            Some(v) => f.set(flag, &v)?,
        }
    }
    f.finish()
}

/// The GetFlows request, and what a merge of several nodes keeps.
fn request(a: &FlowArgs, m: &ArgMatches, now: chrono::DateTime<chrono::Utc>) -> Result<(GetFlowsRequest, Limit)> {
    let (first, last) = (a.first.filter(|n| *n > 0), a.last.filter(|n| *n > 0));
    if first.is_some() && last.is_some() {
        bail!("--first and --last cannot be combined");
    }
    if first.is_some() && a.all {
        bail!("--first and --all cannot be combined");
    }
    if last.is_some() && a.all {
        bail!("--last and --all cannot be combined");
    }
    if first.is_some() && a.follow {
        bail!("--first and --follow cannot be combined (--first reads from the oldest flow; follow with --since or --last)");
    }
    if a.until.is_some() && a.follow {
        bail!("--until and --follow cannot be combined (a followed stream has no end)");
    }
    let since = a.since.as_deref().map(|s| when::parse_time("since", s, now)).transpose()?;
    let until = a.until.as_deref().map(|s| when::parse_time("until", s, now)).transpose()?;
    if let (Some(s), Some(u)) = (since, until) {
        if s > u {
            bail!("--since {} is after --until {}", s.to_rfc3339(), u.to_rfc3339());
        }
    }
    let mut number = first.or(last).unwrap_or(0);
    if since.is_none() && until.is_none() && first.is_none() {
        if a.all {
            number = u64::MAX;
        } else if last.is_none() && !a.follow {
            number = DEFAULT_LAST;
        }
    }
    let (whitelist, blacklist) = filters(m)?;
    let limit = match (first, number) {
        (_, 0) | (_, u64::MAX) => Limit::All,
        (Some(_), n) => Limit::First(usize::try_from(n).unwrap_or(usize::MAX)),
        (None, n) => Limit::Last(usize::try_from(n).unwrap_or(usize::MAX)),
    };
    let req = GetFlowsRequest {
        number,
        first: first.is_some(),
        follow: a.follow,
        whitelist,
        blacklist,
        since: since.map(when::timestamp),
        until: until.map(when::timestamp),
        ..GetFlowsRequest::default()
    };
    Ok((req, limit))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")
}

/// `myelin observe ...`; `m` are the parsed arguments of `observe` (for the flags' order).
pub fn run(a: Args, m: &ArgMatches) -> Result<i32> {
    match a.command {
        Some(Sub::Status(i)) => runtime()?.block_on(status(&i)),
        Some(Sub::Nodes(i)) => runtime()?.block_on(nodes(&i)),
        Some(Sub::Namespaces(i)) => runtime()?.block_on(namespaces(&i)),
        None => {
            let f = a.flows;
            let (req, limit) = request(&f, m, chrono::Utc::now())?;
            let targets = f.target.targets()?;
            let opts = Options {
                output: f.output,
                color: f.output != Output::Json && f.color.enabled(),
                policy_names: f.print_policy_names,
                node_name: f.print_node_name,
            };
            let mut printer = Printer::new(opts, f.follow);
            runtime()?.block_on(flows(&targets, req, limit, &mut printer))
        }
    }
}

/// Run GetFlows against the targets and print what comes back.
async fn flows(targets: &[Target], req: GetFlowsRequest, limit: Limit, printer: &mut Printer) -> Result<i32> {
    let code = match targets {
        [one] => {
            stream(one, req, &mut |r| printer.print(&r)).await?;
            0
        }
        _ if req.follow => follow_merged(targets, req, printer).await?,
        _ => {
            let answers = ask(targets, |t| {
                let req = req.clone();
                async move { collect(&t, req).await }
            })
            .await;
            let (per_node, failed) = successes(answers)?;
            for r in merge::merge_all(per_node, limit) {
                printer.print(&r)?;
            }
            i32::from(failed > 0)
        }
    };
    printer.finish();
    Ok(code)
}

/// Open a GetFlows stream on one target.
async fn open(t: &Target, req: GetFlowsRequest) -> Result<tonic::Streaming<GetFlowsResponse>> {
    let mut c = connect(t).await?;
    Ok(c.get_flows(req).await.map_err(|s| anyhow::anyhow!("{}: GetFlows: {}", t.name, status_text(&s)))?.into_inner())
}

/// The next response of a stream (None at its end).
async fn next(t: &Target, s: &mut tonic::Streaming<GetFlowsResponse>) -> Result<Option<GetFlowsResponse>> {
    s.message().await.map_err(|s| anyhow::anyhow!("{}: GetFlows: {}", t.name, status_text(&s)))
}

/// GetFlows on one target, each response handed to `each` as it arrives.
async fn stream(t: &Target, req: GetFlowsRequest, each: &mut dyn FnMut(GetFlowsResponse) -> Result<()>) -> Result<()> {
    let mut s = open(t, req).await?;
    while let Some(r) = next(t, &mut s).await? {
        each(r)?;
    }
    Ok(())
}

async fn collect(t: &Target, req: GetFlowsRequest) -> Result<Vec<GetFlowsResponse>> {
    let mut out = Vec::new();
    stream(t, req, &mut |r| {
        out.push(r);
        Ok(())
    })
    .await?;
    Ok(out)
}

enum Event {
    Resp(Box<GetFlowsResponse>),
    End(Option<anyhow::Error>),
}

/// Follow every target at once, printing their flows merged in time order.
async fn follow_merged(targets: &[Target], req: GetFlowsRequest, printer: &mut Printer) -> Result<i32> {
    let (tx, mut rx) = mpsc::channel::<(usize, Event)>(4096);
    for (i, t) in targets.iter().enumerate() {
        let (tx, t, req) = (tx.clone(), t.clone(), req.clone());
        tokio::spawn(async move {
            let result = async {
                let mut s = open(&t, req).await?;
                while let Some(r) = next(&t, &mut s).await? {
                    if tx.send((i, Event::Resp(Box::new(r)))).await.is_err() {
                        break;
                    }
                }
                Ok::<_, anyhow::Error>(())
            }
            .await;
            let _ = tx.send((i, Event::End(result.err()))).await;
        });
    }
    drop(tx);
    let mut merger = Merger::new(targets.len(), merge::WINDOW);
    let mut failed = 0usize;
    loop {
        let deadline = merger.deadline().map(tokio::time::Instant::from_std);
        tokio::select! {
            ev = rx.recv() => match ev {
                Some((i, Event::Resp(r))) => merger.push(i, *r, Instant::now()),
                Some((i, Event::End(err))) => {
                    if let Some(e) = err {
                        failed += 1;
                        eprintln!("myelin: {}", crate::one_line(&e));
                    }
                    merger.close(i);
                }
                None => {
                    for i in 0..targets.len() {
                        merger.close(i);
                    }
                }
            },
            () = sleep_until(deadline) => {}
        }
        for r in merger.ready(Instant::now()) {
            printer.print(&r)?;
        }
        if merger.done() {
            break;
        }
    }
    if failed == targets.len() {
        bail!("no node answered");
    }
    Ok(i32::from(failed > 0))
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Ask every target the same unary question, concurrently.
async fn ask<T, F, Fut>(targets: &[Target], call: F) -> Vec<(Target, Result<T>)>
where
    F: Fn(Target) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let answers = futures::future::join_all(targets.iter().cloned().map(&call)).await;
    targets.iter().cloned().zip(answers).collect()
}

/// The answers that came, and how many targets failed. Failures are reported on
/// stderr; when nobody answered, the (first) error is returned instead.
fn successes<T>(answers: Vec<(Target, Result<T>)>) -> Result<(Vec<T>, usize)> {
    let total = answers.len();
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for (_, a) in answers {
        match a {
            Ok(v) => ok.push(v),
            Err(e) => errors.push(e),
        }
    }
    if ok.is_empty() && total > 0 {
        let mut errors = errors.into_iter();
        let first = errors.next().unwrap_or_else(|| anyhow::anyhow!("no Observer API answered"));
        for e in errors {
            eprintln!("myelin: {}", crate::one_line(&e));
        }
        return Err(first);
    }
    for e in &errors {
        eprintln!("myelin: {}", crate::one_line(e));
    }
    Ok((ok, errors.len()))
}

fn uptime(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

fn flows_rate(r: &ServerStatusResponse) -> String {
    let up = Duration::from_nanos(r.uptime_ns).as_secs_f64();
    let rate = if r.flows_rate > 0.0 {
        r.flows_rate
    } else if up > 0.0 {
        r.seen_flows as f64 / up
    } else {
        0.0
    };
    format!("{rate:.2}")
}

async fn status(i: &InfoArgs) -> Result<i32> {
    let targets = i.target.targets()?;
    let answers = ask(&targets, |t| async move {
        let mut c = connect(&t).await?;
        c.server_status(ServerStatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| anyhow::anyhow!("{}: ServerStatus: {}", t.name, status_text(&s)))
    })
    .await;
    let failed = answers.iter().filter(|(_, a)| a.is_err()).count();
    if failed == answers.len() {
        // Nobody answered: the (first) error is the whole answer.
        if let Some((_, Err(e))) = answers.into_iter().next() {
            return Err(e);
        }
        bail!("no Observer API to ask");
    }
    if i.output == Format::Json {
        if let ([(_, Ok(s))], None) = (answers.as_slice(), &i.target.lab) {
            outln!("{}", serde_json::to_string_pretty(s)?);
        } else {
            let v: Vec<serde_json::Value> = answers
                .iter()
                .map(|(t, a)| match a {
                    Ok(s) => serde_json::json!({"node": t.name, "status": s}),
                    Err(e) => serde_json::json!({"node": t.name, "error": crate::one_line(e)}),
                })
                .collect();
            output::json(&v)?;
        }
    } else {
        let mut t = output::table(["NODE", "FLOWS (CURRENT/MAX)", "SEEN FLOWS", "FLOWS/S", "UPTIME", "VERSION"]);
        for (target, a) in &answers {
            match a {
                Ok(s) => {
                    let pct = if s.max_flows > 0 { s.num_flows as f64 * 100.0 / s.max_flows as f64 } else { 0.0 };
                    t.add_row(vec![
                        Cell::new(&target.name),
                        Cell::new(format!("{}/{} ({pct:.2}%)", s.num_flows, s.max_flows)),
                        Cell::new(s.seen_flows),
                        Cell::new(flows_rate(s)),
                        Cell::new(uptime(s.uptime_ns)),
                        Cell::new(&s.version),
                    ]);
                }
                Err(e) => {
                    t.add_row(vec![Cell::new(&target.name), Cell::new("unreachable (see below)")]);
                    eprintln!("myelin: {}", crate::one_line(e));
                }
            }
        }
        outln!("{t}");
    }
    Ok(i32::from(failed > 0))
}

async fn nodes(i: &InfoArgs) -> Result<i32> {
    let targets = i.target.targets()?;
    let answers = ask(&targets, |t| async move {
        let mut c = connect(&t).await?;
        c.get_nodes(GetNodesRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| anyhow::anyhow!("{}: GetNodes: {}", t.name, status_text(&s)))
    })
    .await;
    let (ok, failed) = successes(answers)?;
    let mut all = GetNodesResponse { nodes: ok.into_iter().flat_map(|r| r.nodes).collect() };
    all.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    if i.output == Format::Json {
        outln!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        let mut t = output::table(["NAME", "STATUS", "AGE", "FLOWS (CURRENT/MAX)", "SEEN FLOWS", "VERSION"]);
        for n in &all.nodes {
            let state = myelin_observe::proto::relay::NodeState::try_from(n.state)
                .map_or("UNKNOWN", |s| s.as_str_name())
                .trim_start_matches("NODE_");
            t.add_row(vec![
                Cell::new(&n.name),
                Cell::new(state),
                Cell::new(uptime(n.uptime_ns)),
                Cell::new(format!("{}/{}", n.num_flows, n.max_flows)),
                Cell::new(n.seen_flows),
                Cell::new(&n.version),
            ]);
        }
        outln!("{t}");
    }
    Ok(i32::from(failed > 0))
}

async fn namespaces(i: &InfoArgs) -> Result<i32> {
    let targets = i.target.targets()?;
    let answers = ask(&targets, |t| async move {
        let mut c = connect(&t).await?;
        c.get_namespaces(GetNamespacesRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| anyhow::anyhow!("{}: GetNamespaces: {}", t.name, status_text(&s)))
    })
    .await;
    let (ok, failed) = successes(answers)?;
    let seen: std::collections::BTreeSet<(String, String)> =
        ok.into_iter().flat_map(|r| r.namespaces).map(|n| (n.cluster, n.namespace)).collect();
    let all = GetNamespacesResponse {
        namespaces: seen.into_iter().map(|(cluster, namespace)| Namespace { cluster, namespace }).collect(),
    };
    if i.output == Format::Json {
        outln!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        let mut t = output::table(["CLUSTER", "NAMESPACE"]);
        for n in &all.namespaces {
            t.add_row(vec![n.cluster.as_str(), n.namespace.as_str()]);
        }
        outln!("{t}");
    }
    Ok(i32::from(failed > 0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use clap::{CommandFactory, FromArgMatches, Parser};
    use myelin_observe::proto::flow::FlowFilter;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        a: Args,
    }

    fn parse(argv: &[&str]) -> (Args, ArgMatches) {
        let m = T::command().try_get_matches_from(std::iter::once("observe").chain(argv.iter().copied())).unwrap();
        let t = T::from_arg_matches(&m).unwrap();
        (t.a, m)
    }

    fn req(argv: &[&str]) -> Result<(GetFlowsRequest, Limit)> {
        let (a, m) = parse(argv);
        request(&a.flows, &m, chrono::Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap())
    }

    #[test]
    fn flags_keep_their_command_line_order_for_not() {
        let (_, m) = parse(&[
            "--verdict",
            "DROPPED",
            "--not",
            "-n",
            "kube-system",
            "--to-port",
            "53",
            "--not",
            "--to-port",
            "80",
        ]);
        let ev: Vec<(&str, Option<String>)> = filter_flags(&m).into_iter().map(|(_, f, v)| (f, v)).collect();
        assert_eq!(
            ev,
            vec![
                ("verdict", Some("DROPPED".into())),
                ("not", None),
                ("namespace", Some("kube-system".into())),
                ("to-port", Some("53".into())),
                ("not", None),
                ("to-port", Some("80".into())),
            ]
        );
        let (r, _) =
            req(&["--verdict", "DROPPED", "--not", "-n", "kube-system", "--to-port", "53", "--not", "--to-port", "80"])
                .unwrap();
        assert_eq!(r.whitelist.len(), 1);
        assert_eq!(r.whitelist[0].verdict, vec![2]);
        assert_eq!(r.whitelist[0].destination_port, vec!["53".to_owned()]);
        assert_eq!(r.blacklist.len(), 2, "{:?}", r.blacklist);
        assert!(r.blacklist.iter().all(|f| f.destination_port == vec!["80".to_owned()]));
        assert_eq!(r.blacklist[0].source_pod, vec!["kube-system/".to_owned()]);
        assert_eq!(r.blacklist[1].destination_pod, vec!["kube-system/".to_owned()]);
    }

    #[test]
    fn selection_defaults_like_hubble() {
        let (r, l) = req(&[]).unwrap();
        assert_eq!((r.number, r.first, r.follow, l), (20, false, false, Limit::Last(20)));
        assert!(r.whitelist.is_empty() && r.blacklist.is_empty() && r.since.is_none());
        let (r, l) = req(&["-f"]).unwrap();
        assert_eq!((r.number, r.follow, l), (0, true, Limit::All));
        let (r, l) = req(&["--last", "5", "-f"]).unwrap();
        assert_eq!((r.number, r.follow, l), (5, true, Limit::Last(5)));
        let (r, l) = req(&["--first", "3"]).unwrap();
        assert_eq!((r.number, r.first, l), (3, true, Limit::First(3)));
        let (r, _) = req(&["--all"]).unwrap();
        assert_eq!(r.number, u64::MAX);
        // --since: every flow since then (no default number), and with --follow too.
        let (r, l) = req(&["--since", "5m", "--follow"]).unwrap();
        assert_eq!((r.number, r.follow, l), (0, true, Limit::All));
        assert_eq!(r.since.unwrap().seconds, chrono::Utc.with_ymd_and_hms(2024, 5, 1, 11, 55, 0).unwrap().timestamp());
        let (r, _) = req(&["--since", "2024-05-01T10:00:00Z", "--until", "2024-05-01T11:00:00Z"]).unwrap();
        assert_eq!(r.until.unwrap().seconds - r.since.unwrap().seconds, 3600);
    }

    #[test]
    fn selection_errors_are_precise() {
        for (argv, want) in [
            (&["--first", "1", "--last", "2"][..], "--first and --last cannot be combined"),
            (&["--first", "1", "-f"][..], "--first and --follow cannot be combined"),
            (&["--until", "1m", "-f"][..], "--until and --follow cannot be combined"),
            (&["--all", "--last", "3"][..], "--last and --all cannot be combined"),
            (&["--since", "1m", "--until", "1h"][..], "is after --until"),
            (&["--since", "soon"][..], "--since \"soon\": not a time"),
            (&["--verdict", "BLOCKED"][..], "--verdict BLOCKED: not a verdict; use FORWARDED, DROPPED"),
            (&["--ip", "10.0.0.1", "-n", "x"][..], "cannot be combined"),
        ] {
            let e = req(argv).unwrap_err().to_string();
            assert!(e.contains(want), "{argv:?}: {e}");
        }
        // Unknown flags and subcommand mixes are clap's errors.
        let m = T::command().try_get_matches_from(["observe", "--verdic", "DROPPED"]);
        assert!(m.is_err());
        let m = T::command().try_get_matches_from(["observe", "--verdict", "DROPPED", "status"]);
        assert!(m.is_err());
    }

    #[test]
    fn every_filter_flag_reaches_the_request() {
        let (r, _) = req(&[
            "--from-pod",
            "x/a",
            "--to-namespace",
            "y",
            "--from-label",
            "app=a",
            "--from-identity",
            "1234",
            "--to-port",
            "81",
            "--protocol",
            "tcp",
            "--verdict",
            "DROPPED",
            "--drop-reason-desc",
            "POLICY_DENIED",
            "-t",
            "policy-verdict",
            "--traffic-direction",
            "ingress",
            "--node-name",
            "node1",
            "--tcp-flags",
            "SYN",
        ])
        .unwrap();
        let want = FlowFilter {
            source_pod: vec!["x/a".into()],
            destination_pod: vec!["y/".into()],
            source_label: vec!["app=a".into()],
            source_identity: vec![1234],
            destination_port: vec!["81".into()],
            protocol: vec!["tcp".into()],
            verdict: vec![2],
            drop_reason_desc: vec![133],
            event_type: vec![myelin_observe::proto::flow::EventTypeFilter { r#type: 5, ..Default::default() }],
            traffic_direction: vec![1],
            node_name: vec!["node1".into()],
            tcp_flags: vec![myelin_observe::proto::flow::TcpFlags { syn: true, ..Default::default() }],
            ..FlowFilter::default()
        };
        assert_eq!(r.whitelist, vec![want]);
        let (r, _) = req(&["--to-ip", "10.0.0.0/8", "--from-ip", "10.1.2.3", "--to-label", "k8s:app=b"]).unwrap();
        assert_eq!(r.whitelist[0].destination_ip, vec!["10.0.0.0/8".to_owned()]);
        assert_eq!(r.whitelist[0].source_ip, vec!["10.1.2.3".to_owned()]);
        assert_eq!(r.whitelist[0].destination_label, vec!["k8s:app=b".to_owned()]);
        // Hubble's conflict: --to-ip and --to-namespace both say where the flow goes.
        assert!(req(&["--to-ip", "10.0.0.1", "--to-namespace", "y"]).is_err());
    }

    #[test]
    fn uptime_is_short() {
        assert_eq!(uptime(59_000_000_000), "59s");
        assert_eq!(uptime(3_725_000_000_000), "1h2m");
        assert_eq!(uptime(90_061_000_000_000), "1d1h");
    }
}
