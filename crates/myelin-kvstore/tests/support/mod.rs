//! Test support: a real etcd (Debian's `etcd-server`, `/usr/bin/etcd`, or `$MYELIN_ETCD`) on
//! 127.0.0.1 with free ports and a temporary data dir, killed and removed on drop (and killed by
//! the kernel if the test process dies without unwinding).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub struct Etcd {
    child: Option<Child>,
    pub endpoint: String,
    log: PathBuf,
    // Dropped after the process is killed (field order and Drop below).
    _dir: TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_ports() -> (u16, u16) {
    // Both listeners are held at once so the two ports differ; another process may still take
    // one before etcd binds it, and `start` then retries.
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}

fn etcd_binary() -> PathBuf {
    let bin = std::env::var_os("MYELIN_ETCD").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    assert!(bin.exists(), "{} is missing: install etcd-server (scripts/setup.sh)", bin.display());
    bin
}

impl Etcd {
    /// Starts etcd and waits (deadline 30 s) until it answers a status request.
    pub async fn start() -> Etcd {
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start().await {
                Ok(e) => return e,
                Err(log) => last = log,
            }
        }
        panic!("etcd did not start after 5 attempts; last log:\n{last}");
    }

    async fn try_start() -> Result<Etcd, String> {
        let dir = tempfile::Builder::new().prefix("myelin-kvstore-etcd-").tempdir().unwrap();
        let (client_port, peer_port) = free_ports();
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = dir.path().join("etcd.log");
        let out = File::create(&log).unwrap();
        // setpriv (util-linux, always on Debian) makes the kernel kill etcd if this test thread
        // dies without running Drop (a test runner's SIGKILL on timeout).
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .arg(etcd_binary())
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut etcd = Etcd { child: Some(child), endpoint, log, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = etcd.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                return Err(format!("etcd exited ({status}):\n{}", etcd.log_text()));
            }
            if etcd.answers().await {
                return Ok(etcd);
            }
            assert!(Instant::now() < deadline, "etcd did not answer within 30 s; log:\n{}", etcd.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await; // poll interval of the deadline wait
        }
    }

    async fn answers(&self) -> bool {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(Duration::from_secs(1));
        let Ok(mut c) = etcd_client::Client::connect([self.endpoint.as_str()], Some(opts)).await else {
            return false;
        };
        c.status().await.is_ok()
    }

    /// Kills etcd now (SIGKILL) and waits for it: connections are reset, new ones refused.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Stops etcd (SIGSTOP) without closing anything: connections stay open and new ones are
    /// accepted by the kernel, but nothing answers, like a hung or partitioned server. Drop
    /// still kills it.
    pub fn freeze(&self) {
        let status = Command::new("kill").args(["-STOP", &self.pid().to_string()]).status().unwrap();
        assert!(status.success(), "kill -STOP {} failed", self.pid());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().to_path_buf()
    }

    /// A plain etcd client, for writing and checking keys directly.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint.as_str()], None).await.unwrap()
    }
}
