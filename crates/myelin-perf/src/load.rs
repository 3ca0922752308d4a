//! Load generators. TCP_RR and TCP_CRR are ours: a server thread and a client
//! thread, each a fresh OS thread that setns()es into its namespace (never a
//! shared thread), recording every transaction's latency in a histogram.
//! TCP_STREAM is iperf3, run in the namespaces with nsenter.
//!
//! ```text
//!   caller ──spawn──> server thread (setns server netns) bind, "ready" ─┐
//!          ──spawn──> client thread (setns client netns) <──────────────┘
//!                     timed loop: [connect] write req, read resp [read EOF]
//!          ──join both; a waker in the server netns unblocks a stuck accept
//! ```

use crate::error::{io, PerfError, Result};
use crate::stats::Histogram;
use crate::sys;
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Transactions done before the clock starts (neighbour resolution, slow paths).
const WARMUP: u32 = 20;

/// One request/response run.
#[derive(Debug, Clone)]
pub struct RrConfig {
    pub duration: Duration,
    /// Request and response size in bytes.
    pub size: usize,
    /// TCP_CRR: a new connection for every transaction (the server closes first,
    /// so TIME_WAIT stays on the server and the client never runs out of ports).
    pub connect_per_transaction: bool,
    /// CPUs to pin the (client, server) threads to; None lets the scheduler place them.
    pub pin: Option<(usize, usize)>,
}

/// Pin the calling thread to `cpu` (best effort: a refused pin leaves it unpinned).
fn pin_to(cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        let mut set = nix::sched::CpuSet::new();
        if set.set(cpu).is_ok() {
            let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct RrOutcome {
    pub transactions: u64,
    pub elapsed: Duration,
    /// Nanoseconds per transaction (for CRR: connect, request, response, close).
    pub latency: Histogram,
    /// Machine-wide busy CPU seconds during the timed loop (all cores, all processes).
    pub cpu_busy_seconds: f64,
}

impl RrOutcome {
    #[must_use]
    pub fn per_second(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let n = self.transactions as f64;
        n / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Run TCP_RR or TCP_CRR from a thread in `client_ns` to a server thread in `server_ns`
/// listening on `server`.
pub fn request_response(
    client_ns: &Path,
    server_ns: &Path,
    server: SocketAddrV4,
    cfg: &RrConfig,
    cancel: &Arc<AtomicBool>,
) -> Result<RrOutcome> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    let srv = {
        let (ns, stop, size, crr) = (server_ns.to_path_buf(), stop.clone(), cfg.size, cfg.connect_per_transaction);
        let cpu = cfg.pin.map(|p| p.1);
        std::thread::Builder::new()
            .name("perf-rr-server".into())
            .spawn(move || {
                pin_to(cpu);
                serve(&ns, server, size, crr, &stop, &ready_tx)
            })
            .map_err(io("spawning the RR server thread"))?
    };
    let ready = ready_rx.recv_timeout(IO_TIMEOUT).unwrap_or_else(|_| {
        Err(PerfError::Timeout { what: "RR server start".into(), seconds: IO_TIMEOUT.as_secs_f64() })
    });
    let outcome = match ready {
        Ok(()) => {
            let (ns, cfg, cancel) = (client_ns.to_path_buf(), cfg.clone(), cancel.clone());
            std::thread::Builder::new()
                .name("perf-rr-client".into())
                .spawn(move || client(&ns, server, &cfg, &cancel))
                .map_err(io("spawning the RR client thread"))?
                .join()
                .unwrap_or_else(|_| Err(PerfError::Invalid { what: "RR client".into(), message: "panicked".into() }))
        }
        Err(e) => Err(e),
    };
    // Unblock a server still waiting in accept (CRR always, RR when the client failed).
    stop.store(true, Ordering::SeqCst);
    let _ = sys::in_netns(server_ns, || TcpStream::connect_timeout(&SocketAddr::V4(server), CONNECT_TIMEOUT));
    let served =
        srv.join().unwrap_or_else(|_| Err(PerfError::Invalid { what: "RR server".into(), message: "panicked".into() }));
    let outcome = outcome?;
    served?;
    Ok(outcome)
}

fn serve(
    ns: &Path,
    addr: SocketAddrV4,
    size: usize,
    crr: bool,
    stop: &AtomicBool,
    ready: &mpsc::Sender<Result<()>>,
) -> Result<()> {
    let listener = match sys::enter_netns(ns).and_then(|()| {
        TcpListener::bind(addr).map_err(io(format!("binding the RR server to {addr} in {}", ns.display())))
    }) {
        Ok(l) => l,
        Err(e) => {
            let text = e.to_string();
            let _ = ready.send(Err(e));
            return Err(PerfError::Invalid { what: "RR server".into(), message: text });
        }
    };
    let _ = ready.send(Ok(()));
    let mut buf = vec![0u8; size];
    loop {
        let (mut conn, _) = listener.accept().map_err(io("accepting an RR connection"))?;
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        conn.set_nodelay(true).map_err(io("TCP_NODELAY"))?;
        conn.set_read_timeout(Some(IO_TIMEOUT)).map_err(io("SO_RCVTIMEO"))?;
        if crr {
            // One transaction, then the server closes first.
            if conn.read_exact(&mut buf).is_ok() {
                let _ = conn.write_all(&buf);
            }
            continue;
        }
        while conn.read_exact(&mut buf).is_ok() {
            if conn.write_all(&buf).is_err() {
                break;
            }
        }
        return Ok(());
    }
}

fn client(ns: &Path, server: SocketAddrV4, cfg: &RrConfig, cancel: &AtomicBool) -> Result<RrOutcome> {
    pin_to(cfg.pin.map(|p| p.0));
    sys::enter_netns(ns)?;
    let to = SocketAddr::V4(server);
    let connect = || -> Result<TcpStream> {
        let s = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)
            .map_err(io(format!("connecting to {server} from {}", ns.display())))?;
        s.set_nodelay(true).map_err(io("TCP_NODELAY"))?;
        s.set_read_timeout(Some(IO_TIMEOUT)).map_err(io("SO_RCVTIMEO"))?;
        Ok(s)
    };
    let req = vec![b'm'; cfg.size];
    let mut resp = vec![0u8; cfg.size];
    let mut persistent = if cfg.connect_per_transaction { None } else { Some(connect()?) };
    let mut one = |persistent: &mut Option<TcpStream>| -> Result<()> {
        if let Some(s) = persistent.as_mut() {
            s.write_all(&req).map_err(io("sending a request"))?;
            s.read_exact(&mut resp).map_err(io("reading a response"))?;
        } else {
            let mut s = connect()?;
            s.write_all(&req).map_err(io("sending a request"))?;
            s.read_exact(&mut resp).map_err(io("reading a response"))?;
            let mut end = [0u8; 1];
            match s.read(&mut end) {
                Ok(0) => {}
                Ok(_) => {
                    return Err(PerfError::Invalid {
                        what: "CRR".into(),
                        message: "server sent more than the response".into(),
                    })
                }
                Err(e) => return Err(io("waiting for the server's close")(e)),
            }
        }
        Ok(())
    };
    for _ in 0..WARMUP {
        one(&mut persistent)?;
    }
    let mut latency = Histogram::default();
    let mut transactions = 0u64;
    let (busy0, _) = sys::cpu_ticks()?;
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let mut now = start;
    while now < deadline {
        if cancel.load(Ordering::Relaxed) {
            return Err(PerfError::Interrupted);
        }
        one(&mut persistent)?;
        let t = Instant::now();
        latency.record(u64::try_from((t - now).as_nanos()).unwrap_or(u64::MAX));
        transactions += 1;
        now = t;
    }
    let elapsed = now - start;
    let (busy1, _) = sys::cpu_ticks()?;
    #[allow(clippy::cast_precision_loss)]
    let cpu_busy_seconds = busy1.saturating_sub(busy0) as f64 / sys::USER_HZ;
    Ok(RrOutcome { transactions, elapsed, latency, cpu_busy_seconds })
}

/// An iperf3 server in a netns, killed on drop.
#[derive(Debug)]
pub struct IperfServer {
    child: Child,
}

impl IperfServer {
    /// Start `iperf3 -s` bound to `addr` in `netns` and wait until it listens.
    pub fn start(netns: &Path, addr: SocketAddrV4) -> Result<IperfServer> {
        let mut cmd = sys::ns_command(netns, "iperf3");
        cmd.args(["-s", "-B", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(io(format!("starting iperf3 -s in {}", netns.display())))?;
        let mut server = IperfServer { child };
        sys::wait_until(
            &format!("iperf3 -s listening on {addr} in {}", netns.display()),
            Duration::from_secs(10),
            || {
                if let Some(status) = server.child.try_wait().map_err(io("checking iperf3 -s"))? {
                    return Err(PerfError::Invalid { what: "iperf3 -s".into(), message: format!("exited: {status}") });
                }
                sys::tcp_listening(netns, addr.port())
            },
        )?;
        Ok(server)
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One TCP_STREAM run.
#[derive(Debug, Clone)]
pub struct StreamOutcome {
    /// Received by the server, all streams together.
    pub bits_per_second: f64,
    pub retransmits: u64,
    pub cpu_busy_seconds: f64,
    pub elapsed: Duration,
}

/// `iperf3 -c` from `client_ns` for `seconds` with `streams` parallel streams.
pub fn iperf_stream(client_ns: &Path, server: SocketAddrV4, streams: u32, seconds: u32) -> Result<StreamOutcome> {
    let mut cmd: Command = sys::ns_command(client_ns, "iperf3");
    cmd.args([
        "-c",
        &server.ip().to_string(),
        "-p",
        &server.port().to_string(),
        "-t",
        &seconds.to_string(),
        "-P",
        &streams.to_string(),
        "-J",
        "--connect-timeout",
        "3000",
    ]);
    let (busy0, _) = sys::cpu_ticks()?;
    let start = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().map_err(io("running iperf3 -c"))?;
    let elapsed = start.elapsed();
    let (busy1, _) = sys::cpu_ticks()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| PerfError::Invalid {
        what: format!("iperf3 -c {server} from {}", client_ns.display()),
        message: format!("output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr).trim()),
    })?;
    if let Some(err) = v.get("error").and_then(serde_json::Value::as_str) {
        return Err(PerfError::Invalid {
            what: format!("iperf3 -c {server} from {}", client_ns.display()),
            message: err.to_owned(),
        });
    }
    let bits_per_second =
        v.pointer("/end/sum_received/bits_per_second").and_then(serde_json::Value::as_f64).ok_or_else(|| {
            PerfError::Invalid { what: "iperf3 JSON".into(), message: "no end.sum_received.bits_per_second".into() }
        })?;
    let retransmits = v.pointer("/end/sum_sent/retransmits").and_then(serde_json::Value::as_u64).unwrap_or(0);
    #[allow(clippy::cast_precision_loss)]
    let cpu_busy_seconds = busy1.saturating_sub(busy0) as f64 / sys::USER_HZ;
    Ok(StreamOutcome { bits_per_second, retransmits, cpu_busy_seconds, elapsed })
}

/// Can a thread in `client_ns` open a TCP connection to `to` within `timeout`?
/// A listener is put on `to` in `server_ns` for the probe. Used to show that a
/// policy blocks a port it does not allow (and that unfiltered paths do not).
pub fn port_reachable(client_ns: &Path, server_ns: &Path, to: SocketAddrV4, timeout: Duration) -> Result<bool> {
    let listener = sys::in_netns(server_ns, || TcpListener::bind(to))?
        .map_err(io(format!("binding a probe listener to {to} in {}", server_ns.display())))?;
    let ns: PathBuf = client_ns.to_path_buf();
    let reached = sys::in_netns(&ns, || TcpStream::connect_timeout(&SocketAddr::V4(to), timeout).is_ok())?;
    drop(listener);
    Ok(reached)
}
