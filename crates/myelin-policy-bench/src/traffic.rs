//! The traffic of the benchmarks, run on netns worker threads: a UDP echo
//! server and a UDP request/response client (one packet each way per round
//! trip), TCP listeners and a TCP connect probe.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Echo UDP datagrams on `port` until `stop` is set (checked at least every 100 ms).
pub fn udp_echo(port: u16, ready: std::sync::mpsc::Sender<std::io::Result<()>>, stop: Arc<AtomicBool>) {
    let sock = match UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
        .and_then(|s| s.set_read_timeout(Some(Duration::from_millis(100))).map(|()| s))
    {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    }
}

/// Result of [`udp_rr`].
#[derive(Debug, Default)]
pub struct RrResult {
    /// Round-trip times in ns of the answered requests.
    pub rtt_ns: Vec<u64>,
    pub lost: u32,
}

/// `count` request/response round trips to `dst`, one at a time; a request
/// unanswered within `timeout` counts as lost.
pub fn udp_rr(dst: SocketAddrV4, count: u32, timeout: Duration) -> std::io::Result<RrResult> {
    let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
    sock.connect(dst)?;
    sock.set_read_timeout(Some(timeout))?;
    let mut out = RrResult { rtt_ns: Vec::with_capacity(count as usize), lost: 0 };
    let mut buf = [0u8; 64];
    for seq in 0..count {
        let msg = seq.to_be_bytes();
        let t = Instant::now();
        sock.send(&msg)?;
        loop {
            match sock.recv(&mut buf) {
                Ok(n) if n == msg.len() && buf[..n] == msg => {
                    out.rtt_ns.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
                    break;
                }
                Ok(_) => {} // a late answer to an earlier request
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    out.lost += 1;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(out)
}

/// Accept and drop TCP connections on `port` until `stop` is set and a
/// connection (the wake-up of [`wake_listener`]) arrives.
pub fn tcp_listen(port: u16, ready: std::sync::mpsc::Sender<std::io::Result<()>>, stop: Arc<AtomicBool>) {
    let l = match TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)) {
        Ok(l) => {
            let _ = ready.send(Ok(()));
            l
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    for conn in l.incoming() {
        drop(conn);
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
}

/// Wake a [`tcp_listen`] of this netns (over loopback: no policy involved).
pub fn wake_listener(port: u16) {
    let _ = TcpStream::connect_timeout(
        &SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(1),
    );
}

/// Connect to `dst`: Ok(time to connected) or the error (a timeout when policy drops the SYN).
pub fn tcp_connect(dst: SocketAddrV4, timeout: Duration) -> std::io::Result<Duration> {
    let t = Instant::now();
    let s = TcpStream::connect_timeout(&SocketAddr::V4(dst), timeout)?;
    let took = t.elapsed();
    drop(s);
    Ok(took)
}
