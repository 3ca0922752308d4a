//! Helpers shared by the end-to-end tests: lab guards, traffic in namespaces,
//! waiting for conditions with deadlines. Tests panic with context.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

pub mod netpol;

use myelin_api::{Client, DatapathMetric};
use myelin_lab::{Lab, LabOptions, LabSpec};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Fail (not skip) when the tests cannot do what they claim.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "these tests load eBPF programs and build network namespaces: run them as root (./test.sh)"
    );
}

/// A short lab name unique to this process and call.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let p: String = prefix.chars().take(4).collect();
    format!("{p}{}{n}", std::process::id() % 100_000)
}

/// A lab that is torn down when dropped, even when the test panics.
pub struct LabGuard(Option<Lab>);

impl LabGuard {
    pub fn up(yaml: &str, prefix: &str) -> Self {
        require_root();
        let spec = LabSpec::from_yaml(yaml, "test lab").expect("lab spec");
        let name = unique_name(prefix);
        let lab = Lab::up(spec, &name, LabOptions::default()).unwrap_or_else(|e| panic!("lab up {name}: {e}"));
        Self(Some(lab))
    }

    pub fn lab(&self) -> &Lab {
        self.0.as_ref().expect("lab")
    }

    pub fn lab_mut(&mut self) -> &mut Lab {
        self.0.as_mut().expect("lab")
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Some(lab) = self.0.take() {
            let name = lab.name().to_owned();
            if let Err(e) = lab.down() {
                eprintln!("lab down {name}: {e}");
                let _ = Lab::down_by_name(&name);
            }
        }
    }
}

/// Poll `f` until it returns Some, or panic after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run `f` on a thread inside the network namespace at `path`. Sockets made
/// there stay in that namespace after the thread is gone.
pub fn in_ns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    myelin_netlink::in_netns(path, f).unwrap_or_else(|e| panic!("entering {}: {e}", path.display()))
}

/// [`in_ns`] that reports a failure to enter the namespace instead of panicking.
pub fn try_in_ns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    myelin_netlink::in_netns(path, f).map_err(|e| format!("cannot enter {}: {e}", path.display()))
}

/// What one probe found. "Blocked" and "could not run the probe" are different results: a
/// test that expects a connection to be blocked must never pass because its probe failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The target answered.
    Reached,
    /// The network said no: refused, reset, unreachable, or no reply within the timeout.
    Blocked,
    /// The probe itself failed (could not enter the netns, bind a socket, unexpected error
    /// or reply, thread panicked): nothing is known about the network.
    HarnessError(String),
}

impl Probe {
    /// True for reached, false for blocked; panics with the harness error otherwise.
    #[must_use]
    pub fn reached(&self, what: &str) -> bool {
        match self {
            Probe::Reached => true,
            Probe::Blocked => false,
            Probe::HarnessError(e) => panic!("{what}: the probe could not run (this is not \"blocked\"): {e}"),
        }
    }

    /// "reach", "blocked" or "HARNESS ERROR: ..." for reports.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Probe::Reached => "reach".into(),
            Probe::Blocked => "blocked".into(),
            Probe::HarnessError(e) => format!("HARNESS ERROR: {e}"),
        }
    }
}

/// Classify a socket error of a probe: the kinds by which the network (or a policy) says no
/// are [`Probe::Blocked`]; anything else is a [`Probe::HarnessError`] naming `doing`.
#[must_use]
pub fn classify_io_error(doing: &str, e: &std::io::Error) -> Probe {
    use std::io::ErrorKind as K;
    match e.kind() {
        // No reply in time (connect_timeout says TimedOut, a socket read timeout WouldBlock).
        K::TimedOut | K::WouldBlock
        // A RST or ICMP error came back.
        | K::ConnectionRefused | K::ConnectionReset | K::ConnectionAborted
        | K::HostUnreachable | K::NetworkUnreachable
        // EPERM from connect/send: a local filter (nftables, cgroup BPF) dropped it.
        | K::PermissionDenied => Probe::Blocked,
        _ => Probe::HarnessError(format!("{doing}: {e} ({:?})", e.kind())),
    }
}

/// The message of a panic payload, for harness errors.
#[must_use]
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".to_owned())
}

pub fn pod_ns(lab: &Lab, ns: &str, pod: &str) -> PathBuf {
    lab.pod(ns, pod).unwrap_or_else(|e| panic!("{e}")).netns_path
}

pub fn pod_ip(lab: &Lab, ns: &str, pod: &str) -> std::net::Ipv4Addr {
    lab.pod(ns, pod).unwrap().ip.expect("pod has an address").parse().unwrap()
}

pub fn endpoint_id(lab: &Lab, ns: &str, pod: &str) -> u32 {
    lab.pod(ns, pod).unwrap().endpoint_id.expect("pod has an endpoint")
}

pub fn node_ns(lab: &Lab, node: &str) -> PathBuf {
    lab.node(node).unwrap().netns_path
}

pub fn client(lab: &Lab, node: &str) -> Client {
    lab.client(node).unwrap()
}

/// Run a command in a lab target (pod `ns/name`, node or external host).
pub fn exec(lab: &Lab, target: &str, argv: &[&str]) -> Output {
    lab.exec_command(target, argv).unwrap().output().unwrap_or_else(|e| panic!("exec in {target}: {e}"))
}

/// ICMP echo from a lab target: true when a reply came, false when none did (ping exits 1);
/// panics when ping could not run (`lab enter` failed, bad arguments, no route: any other exit).
pub fn ping(lab: &Lab, target: &str, ip: &str) -> bool {
    ping_probe(lab, target, ip).reached(&format!("ping {ip} from {target}"))
}

/// [`ping`] as a [`Probe`].
pub fn ping_probe(lab: &Lab, target: &str, ip: &str) -> Probe {
    ping_outcome(&exec(lab, target, &["ping", "-c", "2", "-i", "0.2", "-W", "2", ip]))
}

/// iputils ping: exit 0 = a reply came, 1 = no reply, 2 = error; `myelin lab enter` exits
/// 125-127 when it cannot enter the target or run the command.
#[must_use]
pub fn ping_outcome(out: &Output) -> Probe {
    match out.status.code() {
        Some(0) => Probe::Reached,
        Some(1) => Probe::Blocked,
        _ => Probe::HarnessError(format!(
            "ping exited with {}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Run the `myelin` CLI (found like the lab finds its binaries): (exit code, stdout, stderr).
pub fn myelin(args: &[&str]) -> (i32, String, String) {
    let bin = myelin_lab::find_binary("myelin", None).unwrap_or_else(|e| panic!("{e}"));
    let out =
        std::process::Command::new(bin).args(args).output().unwrap_or_else(|e| panic!("running myelin {args:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A TCP listener in a namespace, on `ip:0`.
pub fn tcp_listen(ns: &Path, ip: std::net::Ipv4Addr) -> TcpListener {
    in_ns(ns, move || TcpListener::bind((ip, 0)).expect("bind"))
}

/// Connect from inside a namespace (with a timeout); Err when not reached.
pub fn tcp_connect(ns: &Path, to: SocketAddr) -> std::io::Result<TcpStream> {
    in_ns(ns, move || TcpStream::connect_timeout(&to, Duration::from_secs(3)))
}

/// A TCP connect from inside a namespace as a [`Probe`]: refused, reset, unreachable or timed out
/// is [`Probe::Blocked`]; any other error is a harness error, never "blocked".
pub fn tcp_probe(ns: &Path, to: SocketAddr) -> Probe {
    match try_in_ns(ns, move || TcpStream::connect_timeout(&to, Duration::from_secs(3))) {
        Ok(Ok(_)) => Probe::Reached,
        Ok(Err(e)) => classify_io_error(&format!("TCP connect to {to}"), &e),
        Err(e) => Probe::HarnessError(e),
    }
}

/// Serve one echo connection on `l` in the background; returns the peer address seen.
pub fn echo_once(l: TcpListener) -> std::thread::JoinHandle<SocketAddr> {
    std::thread::spawn(move || {
        let (mut s, peer) = l.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        peer
    })
}

/// Send `len` bytes and read them back; panics on any mismatch.
pub fn echo_roundtrip(mut s: TcpStream, len: usize) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mut back = vec![0u8; len];
    let writer = {
        let mut w = s.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || w.write_all(&data).expect("write"))
    };
    s.read_exact(&mut back).expect("read echo");
    writer.join().unwrap();
    assert!(back == data, "echoed data differs");
}

/// One UDP request/response from `from_ns` to a socket bound in `to_ns`: true when the echo
/// came back, false when the network said no; panics when the probe itself failed.
pub fn udp_roundtrip(from_ns: &Path, to_ns: &Path, to_ip: std::net::Ipv4Addr) -> bool {
    let server = in_ns(to_ns, move || UdpSocket::bind((to_ip, 0)).expect("udp bind"));
    let addr = server.local_addr().unwrap();
    server.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let srv = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        if let Ok((n, peer)) = server.recv_from(&mut buf) {
            let _ = server.send_to(&buf[..n], peer);
        }
    });
    let c = in_ns(from_ns, || UdpSocket::bind(("0.0.0.0", 0)).expect("udp bind"));
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 64];
    let outcome = match c.send_to(b"myelin-udp-probe", addr) {
        Err(e) => classify_io_error("UDP send", &e),
        Ok(_) => match c.recv_from(&mut buf) {
            Ok((16, _)) if &buf[..16] == b"myelin-udp-probe" => Probe::Reached,
            Ok((n, peer)) => Probe::HarnessError(format!("unexpected UDP reply of {n} bytes from {peer}")),
            Err(e) => classify_io_error("UDP receive", &e),
        },
    };
    srv.join().unwrap();
    outcome.reached(&format!("UDP round trip to {addr}"))
}

/// Datapath counters of a node, summed per (endpoint, direction, reason).
pub fn metric(lab: &Lab, node: &str, endpoint: u32, direction: &str, reason: u8) -> (u64, u64) {
    let rows: Vec<DatapathMetric> = client(lab, node).get("/v1/metrics/datapath").expect("metrics");
    rows.iter()
        .filter(|r| r.endpoint_id == endpoint && r.direction == direction && r.reason == reason)
        .fold((0, 0), |(p, b), r| (p + r.packets, b + r.bytes))
}

/// Read or write a sysctl inside a namespace (/proc/sys/net follows the thread's netns).
pub fn sysctl(ns: &Path, key: &str, value: Option<&str>) -> String {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.map(str::to_owned);
    in_ns(ns, move || {
        if let Some(v) = value {
            std::fs::write(&path, v).unwrap_or_else(|e| panic!("writing {path}: {e}"));
        }
        std::fs::read_to_string(&path).unwrap().trim().to_owned()
    })
}

/// `ip -n NS ...` output (for assertions about links and routes).
pub fn ip_n(netns: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("ip").arg("-n").arg(netns).args(args).output().expect("ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The result of one CNI plugin run.
pub struct CniRun {
    pub code: i32,
    pub stdout: serde_json::Value,
    pub raw: String,
}

/// Run the real `myelin-cni` binary as a container runtime does.
pub fn run_cni(command: &str, config: &serde_json::Value, env: &[(&str, &str)]) -> CniRun {
    let bin = myelin_lab::find_binary("myelin-cni", None).expect("myelin-cni binary");
    let mut cmd = std::process::Command::new(bin);
    cmd.env_clear().env("CNI_COMMAND", command).env("CNI_PATH", "/opt/cni/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn myelin-cni");
    child.stdin.take().unwrap().write_all(config.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let stdout = if raw.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&raw).unwrap_or_else(|e| panic!("CNI output is not JSON ({e}): {raw}"))
    };
    CniRun { code: out.status.code().unwrap_or(-1), stdout, raw }
}

/// A network namespace made with `ip netns add`, deleted on drop.
pub struct NetnsGuard {
    pub name: String,
}

impl NetnsGuard {
    pub fn new(prefix: &str) -> Self {
        let name = unique_name(prefix);
        let ok = std::process::Command::new("ip").args(["netns", "add", &name]).status().expect("ip").success();
        assert!(ok, "ip netns add {name}");
        Self { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Number of entries in a pinned BPF map, read with bpftool (independent of the agent).
pub fn pinned_map_len(path: &Path) -> usize {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(path)
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool map dump {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    v.as_array().map_or(0, Vec::len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn output(code: i32) -> Output {
        Output { status: std::process::ExitStatus::from_raw(code << 8), stdout: Vec::new(), stderr: b"why".to_vec() }
    }

    #[test]
    fn ping_exit_codes_separate_no_reply_from_could_not_run() {
        assert_eq!(ping_outcome(&output(0)), Probe::Reached);
        assert_eq!(ping_outcome(&output(1)), Probe::Blocked);
        // 2: ping's own error; 125-127: `myelin lab enter` could not enter or run it.
        for code in [2, 125, 126, 127] {
            assert!(matches!(ping_outcome(&output(code)), Probe::HarnessError(e) if e.contains("why")), "exit {code}");
        }
        let killed = Output { status: std::process::ExitStatus::from_raw(9), stdout: Vec::new(), stderr: Vec::new() };
        assert!(matches!(ping_outcome(&killed), Probe::HarnessError(_)));
    }

    #[test]
    #[should_panic(expected = "the probe could not run")]
    fn a_harness_error_never_reads_as_blocked() {
        let _ = ping_outcome(&output(125)).reached("ping");
    }

    #[test]
    fn socket_errors_are_classified() {
        use std::io::{Error, ErrorKind};
        for k in [ErrorKind::TimedOut, ErrorKind::WouldBlock, ErrorKind::ConnectionRefused, ErrorKind::HostUnreachable]
        {
            assert_eq!(classify_io_error("x", &Error::from(k)), Probe::Blocked, "{k:?}");
        }
        for k in [ErrorKind::AddrInUse, ErrorKind::InvalidInput, ErrorKind::Other] {
            assert!(matches!(classify_io_error("x", &Error::from(k)), Probe::HarnessError(_)), "{k:?}");
        }
    }
}

/// Clients of an agent's Observer API (Hubble's gRPC service) over its unix socket.
pub mod observer {
    use myelin_observe::proto::flow::{Flow, FlowFilter};
    use myelin_observe::proto::observer::observer_client::ObserverClient;
    use myelin_observe::proto::observer::{
        get_flows_response::ResponseTypes, GetFlowsRequest, GetFlowsResponse, ServerStatusRequest, ServerStatusResponse,
    };
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
    }

    async fn connect(socket: &Path) -> Result<ObserverClient<tonic::transport::Channel>, String> {
        let path = socket.to_path_buf();
        let channel = tonic::transport::Endpoint::try_from("http://observer.invalid")
            .map_err(|e| e.to_string())?
            .connect_with_connector(tower::service_fn(move |_| {
                let path: PathBuf = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                }
            }))
            .await
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
        Ok(ObserverClient::new(channel))
    }

    /// GetFlows without follow: every response until the server ends the stream.
    pub fn get_flows(socket: &Path, req: GetFlowsRequest) -> Result<Vec<GetFlowsResponse>, String> {
        runtime().block_on(async {
            let mut c = connect(socket).await?;
            let mut stream =
                c.get_flows(req).await.map_err(|s| format!("GetFlows: {:?}: {}", s.code(), s.message()))?.into_inner();
            let mut out = Vec::new();
            while let Some(r) = stream.message().await.map_err(|s| format!("GetFlows stream: {s}"))? {
                out.push(r);
            }
            Ok(out)
        })
    }

    /// GetFlows with follow: responses until `done` says enough, or the deadline.
    pub fn follow(
        socket: &Path,
        req: GetFlowsRequest,
        deadline: Duration,
        mut done: impl FnMut(&[GetFlowsResponse]) -> bool,
    ) -> Result<Vec<GetFlowsResponse>, String> {
        runtime().block_on(async {
            let mut c = connect(socket).await?;
            let mut stream =
                c.get_flows(req).await.map_err(|s| format!("GetFlows: {:?}: {}", s.code(), s.message()))?.into_inner();
            let mut out = Vec::new();
            let end = tokio::time::Instant::now() + deadline;
            loop {
                if done(&out) {
                    return Ok(out);
                }
                match tokio::time::timeout_at(end, stream.message()).await {
                    Ok(Ok(Some(r))) => out.push(r),
                    Ok(Ok(None)) => return Ok(out),
                    Ok(Err(s)) => return Err(format!("GetFlows stream: {s}")),
                    Err(_) => return Ok(out),
                }
            }
        })
    }

    pub fn server_status(socket: &Path) -> Result<ServerStatusResponse, String> {
        runtime().block_on(async {
            let mut c = connect(socket).await?;
            Ok(c.server_status(ServerStatusRequest {}).await.map_err(|s| format!("ServerStatus: {s}"))?.into_inner())
        })
    }

    /// The flows of responses.
    #[must_use]
    pub fn flows(rs: &[GetFlowsResponse]) -> Vec<Flow> {
        rs.iter()
            .filter_map(|r| match &r.response_types {
                Some(ResponseTypes::Flow(f)) => Some(f.clone()),
                _ => None,
            })
            .collect()
    }

    /// A request for everything in the buffer matching `whitelist`.
    #[must_use]
    pub fn all(whitelist: Vec<FlowFilter>) -> GetFlowsRequest {
        GetFlowsRequest { whitelist, ..GetFlowsRequest::default() }
    }
}
