//! The lab's kvstore: a real etcd (1 or 3 members) in its own namespace on the underlay,
//! started before the agents, waited on until healthy, stopped with the lab.
//!
//! ```text
//!   fabric netns: bridge "underlay" 172.30.0.254/24
//!       |  k0 <-veth-> eth0 of myl-<lab>-kv: 172.30.0.250 (kv0), .251 (kv1), .252 (kv2)
//!   member kvN: etcd --name kvN, client http://<addr>:2379, peer http://<addr>:2380,
//!               data <state>/kv/kvN/data, log <state>/kv/kvN/etcd.log
//! ```
//!
//! Members run in their own session (`setsid`) so they outlive the CLI, like the agents; their
//! pids and start times are in lab.json, so `lab down` from any process stops them.

use crate::error::{io, LabError, Result};
use crate::lab::Lab;
use crate::plan::{KvMemberInfo, KvstoreInfo, ETCD_CLIENT_PORT};
use crate::spec::KvstoreKind;
use crate::status::{KvMemberStatus, KvstoreStatus};
use crate::sys;
use nix::sys::signal::Signal;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's etcd-server installs etcd, when it is not on PATH.
const ETCD_FALLBACK: &str = "/usr/bin/etcd";
/// How long one health probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Key of a member in [`Lab`]'s children (node names cannot contain '/').
fn child_key(member: &str) -> String {
    format!("kvstore/{member}")
}

/// The etcd binary: the one given, else on PATH, else Debian's.
fn etcd_binary(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    sys::which("etcd").or_else(|| Some(PathBuf::from(ETCD_FALLBACK)).filter(|p| p.is_file())).ok_or_else(|| {
        LabError::MissingBinary {
            binary: "etcd (for lab.yaml kvstore: etcd; install etcd-server, or set kvstore: none and routing: native)"
                .to_owned(),
            searched: format!("PATH, {ETCD_FALLBACK}"),
        }
    })
}

impl Lab {
    /// etcd client URLs of the lab's kvstore (`http://172.30.0.25x:2379`), as every agent is
    /// configured with; empty with `kvstore: none`.
    #[must_use]
    pub fn kvstore_endpoints(&self) -> Vec<String> {
        self.state.kvstore.as_ref().map(KvstoreInfo::endpoints).unwrap_or_default()
    }

    /// The network namespace file the etcd members run in (`/var/run/netns/myl-<lab>-kv`), to
    /// probe them from (the endpoints are reachable there and from every node); `None` with
    /// `kvstore: none`.
    #[must_use]
    pub fn kvstore_netns(&self) -> Option<PathBuf> {
        self.state.kvstore.as_ref().map(|kv| kv.netns_path.clone())
    }

    /// Kill etcd member `i` (0-based, `kv<i>`) with SIGKILL and wait until it is gone. Its data
    /// directory stays, for [`Lab::start_kvstore_member`].
    pub fn stop_kvstore_member(&mut self, i: usize) -> Result<()> {
        self.kv_member(i)?;
        self.stop_kvstore_process(i, Signal::SIGKILL)
    }

    /// Start etcd member `i` again with its data directory and wait until it is healthy. A
    /// member that is running already is only waited on.
    pub fn start_kvstore_member(&mut self, i: usize) -> Result<()> {
        let m = self.kv_member(i)?;
        if !m.pid.is_some_and(|p| sys::alive(p, m.start_time)) {
            self.spawn_kvstore_member(i)?;
        }
        self.wait_kvstore_member(i)
    }

    /// Start every etcd member, then wait until each is healthy. Nothing to do without a kvstore.
    pub(crate) fn start_kvstore(&mut self) -> Result<()> {
        let Some(kv) = self.state.kvstore.clone() else { return Ok(()) };
        self.say(&format!("starting etcd ({} member(s)): {}", kv.members.len(), kv.endpoints().join(", ")));
        for i in 0..kv.members.len() {
            self.spawn_kvstore_member(i)?;
        }
        for i in 0..kv.members.len() {
            self.wait_kvstore_member(i)?;
        }
        self.say("etcd is healthy");
        Ok(())
    }

    /// Stop every member (SIGTERM, then SIGKILL); their data goes with the state directory.
    pub(crate) fn stop_kvstore(&mut self) -> Result<()> {
        let members = self.state.kvstore.as_ref().map_or(0, |kv| kv.members.len());
        let mut first_err = None;
        for i in 0..members {
            if let Err(e) = self.stop_kvstore_process(i, Signal::SIGTERM) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// What `lab status` says about the kvstore.
    pub(crate) fn kvstore_status(&self) -> KvstoreStatus {
        let Some(kv) = &self.state.kvstore else {
            return KvstoreStatus { kind: KvstoreKind::None.to_string(), endpoints: Vec::new(), members: Vec::new() };
        };
        KvstoreStatus {
            kind: KvstoreKind::Etcd.to_string(),
            endpoints: kv.endpoints(),
            members: kv
                .members
                .iter()
                .map(|m| KvMemberStatus {
                    name: m.name.clone(),
                    address: m.address.clone(),
                    pid: m.pid,
                    running: m.pid.is_some_and(|p| sys::alive(p, m.start_time)),
                    log: m.log.display().to_string(),
                })
                .collect(),
        }
    }

    fn kv_member(&self, i: usize) -> Result<KvMemberInfo> {
        let kv = self.state.kvstore.as_ref().ok_or_else(|| {
            self.not_found("kvstore (lab.yaml kvstore is none; set kvstore: etcd)", &format!("member {i}"))
        })?;
        kv.members
            .get(i)
            .cloned()
            .ok_or_else(|| self.not_found("kvstore member (lab.yaml kvstore_members sets how many)", &format!("kv{i}")))
    }

    fn kv_error(m: &KvMemberInfo, message: String) -> LabError {
        LabError::Kvstore {
            member: m.name.clone(),
            address: m.address.clone(),
            message,
            log: m.log.clone(),
            tail: sys::tail(&m.log, 20),
        }
    }

    /// Start member `i` in the kvstore's netns, in a session of its own; record its pid.
    fn spawn_kvstore_member(&mut self, i: usize) -> Result<()> {
        let etcd = etcd_binary(self.etcd.as_deref())?;
        let m = self.kv_member(i)?;
        let Some(kv) = self.state.kvstore.clone() else { return Ok(()) };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&m.data_dir)
            .map_err(io("creating etcd data directory", &m.data_dir))?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&m.log).map_err(io("opening", &m.log))?;
        let log2 = log.try_clone().map_err(io("duplicating", &m.log))?;
        // `ip netns exec` and `setsid` both exec in place (we are not a process-group leader),
        // so the pid is etcd's.
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &kv.netns]);
        match sys::which("setsid") {
            Some(setsid) => {
                cmd.arg(setsid);
            }
            None => {
                std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            }
        }
        cmd.arg(&etcd).args(etcd_args(&kv, &m));
        // The caller's ETCD_* variables would override flags.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        let child = cmd.spawn().map_err(|e| LabError::Command {
            what: format!("starting etcd member {}", m.name),
            command: format!("{cmd:?}"),
            detail: e.to_string(),
        })?;
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        if let Some(kv) = self.state.kvstore.as_mut() {
            kv.members[i].pid = Some(pid);
            kv.members[i].start_time = sys::start_time(pid);
        }
        self.children.insert(child_key(&m.name), child);
        self.save()
    }

    /// Poll member `i`'s `/health` (from inside the kvstore's netns) until it answers healthy,
    /// it exits, or `kvstore_timeout` passes.
    fn wait_kvstore_member(&mut self, i: usize) -> Result<()> {
        let m = self.kv_member(i)?;
        let netns = self.kvstore_netns().unwrap_or_default();
        let key = child_key(&m.name);
        let deadline = Instant::now() + self.kvstore_timeout;
        let mut last;
        loop {
            if let Some(child) = self.children.get_mut(&key) {
                if let Ok(Some(status)) = child.try_wait() {
                    self.children.remove(&key);
                    return Err(Self::kv_error(&m, format!("exited ({status}) before it became healthy")));
                }
            } else if !m.pid.is_some_and(|p| sys::alive(p, m.start_time)) {
                return Err(Self::kv_error(&m, "is not running".into()));
            }
            match health(&netns, &m.address) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                return Err(Self::kv_error(
                    &m,
                    format!("not healthy after {:?} at {}/health: {last}", self.kvstore_timeout, m.client_url()),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Send `signal` to member `i` (SIGKILL after a grace period) and wait until it is gone.
    fn stop_kvstore_process(&mut self, i: usize, signal: Signal) -> Result<()> {
        let m = self.kv_member(i)?;
        if let Some(pid) = m.pid {
            let mut child = self.children.remove(&child_key(&m.name));
            let mut reap = || {
                if let Some(c) = child.as_mut() {
                    let _ = c.try_wait();
                }
            };
            if !sys::stop_process(pid, m.start_time, signal, Duration::from_secs(10), &mut reap) {
                return Err(Self::kv_error(&m, format!("pid {pid} does not exit even after SIGKILL")));
            }
        }
        if let Some(kv) = self.state.kvstore.as_mut() {
            kv.members[i].pid = None;
            kv.members[i].start_time = None;
        }
        self.save()
    }
}

/// The command line of one member: its own URLs, the whole initial cluster, a new cluster with
/// this lab's token (ignored by etcd on a restart with an existing data directory).
fn etcd_args(kv: &KvstoreInfo, m: &KvMemberInfo) -> Vec<String> {
    let (client, peer) = (m.client_url(), m.peer_url());
    [
        ("--name", m.name.clone()),
        ("--data-dir", m.data_dir.display().to_string()),
        ("--listen-client-urls", client.clone()),
        ("--advertise-client-urls", client),
        ("--listen-peer-urls", peer.clone()),
        ("--initial-advertise-peer-urls", peer),
        ("--initial-cluster", kv.initial_cluster()),
        ("--initial-cluster-state", "new".to_owned()),
        ("--initial-cluster-token", kv.cluster_token.clone()),
        ("--logger", "zap".to_owned()),
        ("--log-outputs", "stderr".to_owned()),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_owned(), value])
    .collect()
}

/// `GET /health` of the member at `address`, from inside `netns`: Ok when it says
/// `"health":"true"` (it has a leader and no alarm), else what it said.
fn health(netns: &Path, address: &str) -> std::result::Result<(), String> {
    let addr: SocketAddr =
        format!("{address}:{ETCD_CLIENT_PORT}").parse().map_err(|e| format!("bad address {address}: {e}"))?;
    let (status, body) = sys::in_netns(netns, || http_get(addr, "/health")).map_err(|e| e.to_string())??;
    if status == 200 && body.replace(' ', "").contains(r#""health":"true""#) {
        Ok(())
    } else {
        Err(format!("HTTP {status}: {}", body.trim()))
    }
}

/// A minimal HTTP/1.1 GET: status code and body (enough for etcd's small JSON answers).
fn http_get(addr: SocketAddr, path: &str) -> std::result::Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).map_err(|e| format!("connecting to {addr}: {e}"))?;
    s.set_read_timeout(Some(PROBE_TIMEOUT)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(PROBE_TIMEOUT)).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("writing to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("reading from {addr}: {e}"))?;
    parse_response(&String::from_utf8_lossy(&raw))
}

fn parse_response(text: &str) -> std::result::Result<(u16, String), String> {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {:?}", head.lines().next().unwrap_or("")))?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::plan::plan;
    use crate::spec::{LabSpec, NodeSpec};

    fn three_members() -> KvstoreInfo {
        let mut spec = LabSpec::demo();
        spec.nodes.push(NodeSpec { name: "node2".into(), pod_cidr: None });
        spec.kvstore_members = Some(3);
        plan("t4", spec, PathBuf::from("/run/myelin/lab/t4"), None).kvstore.unwrap()
    }

    #[test]
    fn each_member_listens_on_its_own_address_and_knows_the_whole_cluster() {
        let kv = three_members();
        let args = etcd_args(&kv, &kv.members[1]);
        let flag = |f: &str| args.iter().position(|a| a == f).map(|i| args[i + 1].as_str()).unwrap();
        assert_eq!(flag("--name"), "kv1");
        assert_eq!(flag("--listen-client-urls"), "http://172.30.0.251:2379");
        assert_eq!(flag("--advertise-client-urls"), "http://172.30.0.251:2379");
        assert_eq!(flag("--listen-peer-urls"), "http://172.30.0.251:2380");
        assert_eq!(flag("--initial-cluster").split(',').count(), 3);
        assert_eq!(flag("--initial-cluster-state"), "new");
        assert_eq!(flag("--initial-cluster-token"), kv.cluster_token);
        assert_eq!(flag("--data-dir"), "/run/myelin/lab/t4/kv/kv1/data");
    }

    #[test]
    fn http_responses_are_parsed_for_status_and_body() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"health\":\"true\"}";
        assert_eq!(parse_response(ok).unwrap(), (200, "{\"health\":\"true\"}".to_owned()));
        assert_eq!(parse_response("HTTP/1.1 503 Service Unavailable\r\n\r\n").unwrap().0, 503);
        assert!(parse_response("garbage").is_err());
    }
}
