//! Test support (not part of the API): a real Prometheus server started in a
//! temporary directory, `promtool check metrics`, a parser of the Prometheus
//! text format, the PromQL of the Grafana dashboards in `dashboards/`, and a
//! synthetic flow stream with known counts.
//!
//! # A real Prometheus scraping real targets
//!
//! ```no_run
//! use std::time::{Duration, SystemTime};
//! use myelin_observe::testing::{Prometheus, PrometheusOptions, ScrapeTarget};
//!
//! // Each target: a job name, host:port, and the path of its metrics (an agent's
//! // `metrics_url` from `myelin lab status -o json` gives both).
//! let prom = Prometheus::start(&PrometheusOptions {
//!     targets: vec![ScrapeTarget::new("node1", "10.0.0.1:9965", "/metrics")],
//!     ..PrometheusOptions::default() // scrape every second, 30 s to start
//! })
//! .expect("start prometheus (run scripts/setup.sh if it is missing)");
//! prom.wait_targets_up(Duration::from_secs(30)).expect("targets up");
//! // ... send traffic, then make sure a scrape happened after it:
//! let sent = SystemTime::now();
//! prom.wait_scraped_since(sent, Duration::from_secs(30)).expect("scraped after the traffic");
//! let v = prom.query("sum(hubble_drop_total{reason=\"POLICY_DENIED\"})").expect("query");
//! assert_eq!(v[0].value, 10.0);
//! // For every panel of every dashboard: the query, with Grafana's variables replaced.
//! for q in myelin_observe::testing::dashboard_queries(&myelin_observe::testing::dashboards_dir()).unwrap() {
//!     let promql = q.promql("1m").unwrap();
//!     assert!(!prom.query(&promql).unwrap().is_empty(), "{} / {}: {promql}", q.file, q.panel);
//! }
//! // Dropping `prom` kills Prometheus and removes its directory (also on panic).
//! ```
//!
//! In a lab, the agents' metrics addresses are only reachable from the lab's
//! namespaces: start Prometheus in one with `command_prefix: vec!["nsenter".into(),
//! "--net=/run/netns/NAME".into()]` and give a [`Connector`] that opens its TCP
//! connections from a thread that entered the same namespace (`setns`), so the
//! test can reach the API on that namespace's 127.0.0.1.
//!
//! `Prometheus::start` needs Debian's `prometheus` (`scripts/setup.sh` installs
//! it) or `MYELIN_PROMETHEUS=/path/to/prometheus`; `promtool_check_metrics`
//! needs its `promtool` (or `MYELIN_PROMTOOL`). Both fail with a message saying
//! so when the binary is missing: tests do not skip.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::dict::{Dictionary, EndpointDesc};
use crate::record::{direction, flags, pack, tcp, verdict, FlowRecord};

/// What went wrong in a test helper (tests `expect` these, so the message says it all).
#[derive(Debug, thiserror::Error)]
pub enum TestingError {
    #[error(
        "{0} not found on PATH (or at ${1}): it comes with Debian's prometheus package; run scripts/setup.sh, or \
         set {1}=/path/to/{0}"
    )]
    Missing(&'static str, &'static str),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Failed(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestingError {
    let what = what.into();
    move |source| TestingError::Io { what, source }
}

fn find_binary(name: &'static str, env: &'static str) -> Result<PathBuf, TestingError> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(TestingError::Missing(name, env)) };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file()).ok_or(TestingError::Missing(name, env))
}

// ---------------------------------------------------------------------------
// promtool and the text format
// ---------------------------------------------------------------------------

/// Run `promtool check metrics` on `text`; Ok when it exits 0 and reports nothing.
pub fn promtool_check_metrics(text: &str) -> Result<(), TestingError> {
    let promtool = find_binary("promtool", "MYELIN_PROMTOOL")?;
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io(format!("running {}", promtool.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).map_err(io("writing metrics to promtool"))?;
    }
    let out = child.wait_with_output().map_err(io("waiting for promtool"))?;
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && report.trim().is_empty() {
        Ok(())
    } else {
        Err(TestingError::Failed(format!("promtool check metrics ({}): {report}", out.status)))
    }
}

/// One sample of the Prometheus text format.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parse the samples of a Prometheus text (0.0.4) or OpenMetrics exposition.
pub fn parse_samples(text: &str) -> Result<Vec<Sample>, TestingError> {
    let bad = |line: &str, why: &str| TestingError::Failed(format!("exposition line {line:?}: {why}"));
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| bad(line, "no value"))?;
        let name = line[..name_end].to_owned();
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let mut end = None;
            loop {
                // key
                let Some(&(start, c)) = chars.peek() else { return Err(bad(line, "unterminated labels")) };
                if c == '}' {
                    end = Some(start + 1);
                    break;
                }
                if c == ',' {
                    chars.next();
                    continue;
                }
                let mut key = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                    chars.next();
                }
                chars.next(); // '='
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(bad(line, "label value without quotes"));
                }
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c)) => value.push(c),
                            None => return Err(bad(line, "dangling escape")),
                        },
                        Some((_, '"')) => break,
                        Some((_, c)) => value.push(c),
                        None => return Err(bad(line, "unterminated label value")),
                    }
                }
                labels.insert(key.trim().to_owned(), value);
                if end.is_some() {
                    break;
                }
            }
            let end = end.ok_or_else(|| bad(line, "unterminated labels"))?;
            rest = &r[end..];
        }
        let value = rest.split_whitespace().next().ok_or_else(|| bad(line, "no value"))?;
        let value: f64 = value.parse().map_err(|_| bad(line, "value is not a number"))?;
        out.push(Sample { name, labels, value });
    }
    Ok(out)
}

/// The value of the sample named `name` whose labels are exactly `labels`.
#[must_use]
pub fn sample_value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
        .map(|s| s.value)
}

/// The sum of the samples named `name` that carry at least `labels`.
#[must_use]
pub fn sample_sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v)))
        .map(|s| s.value)
        .sum()
}

// ---------------------------------------------------------------------------
// HTTP (enough for Prometheus' API)
// ---------------------------------------------------------------------------

/// Opens TCP connections, e.g. from inside a network namespace: a socket keeps
/// the namespace it was created in, so a function that creates it on a thread
/// that entered the namespace returns a stream any thread can use.
#[derive(Clone)]
pub struct Connector(pub Arc<dyn Fn(SocketAddr, Duration) -> std::io::Result<TcpStream> + Send + Sync>);

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

/// `GET path` over HTTP/1.0 (the server closes the connection after the body).
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), TestingError> {
    http_get_via(None, addr, path, timeout)
}

/// [`http_get`] over a connection `connect` opens (None: from this thread's namespace).
pub fn http_get_via(
    connect: Option<&Connector>,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), TestingError> {
    let what = format!("GET http://{addr}{path}");
    let s = match connect {
        Some(c) => (c.0)(addr, timeout),
        None => TcpStream::connect_timeout(&addr, timeout),
    };
    let mut s = s.map_err(io(what.clone()))?;
    s.set_read_timeout(Some(timeout)).map_err(io(what.clone()))?;
    s.set_write_timeout(Some(timeout)).map_err(io(what.clone()))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n").map_err(io(what.clone()))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(io(what.clone()))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) =
        text.split_once("\r\n\r\n").ok_or_else(|| TestingError::Failed(format!("{what}: no header end")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| TestingError::Failed(format!("{what}: bad status line in {head:?}")))?;
    Ok((status, body.to_owned()))
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------

/// One scrape target.
#[derive(Clone, Debug)]
pub struct ScrapeTarget {
    pub job: String,
    /// `host:port`.
    pub address: String,
    pub metrics_path: String,
}

impl ScrapeTarget {
    #[must_use]
    pub fn new(job: &str, address: &str, metrics_path: &str) -> Self {
        Self { job: job.into(), address: address.into(), metrics_path: metrics_path.into() }
    }
}

/// How to run Prometheus.
#[derive(Clone, Debug)]
pub struct PrometheusOptions {
    pub targets: Vec<ScrapeTarget>,
    /// Scrape interval (and timeout).
    pub scrape_interval: Duration,
    /// How long Prometheus may take to become ready.
    pub start_timeout: Duration,
    /// Run Prometheus through this command, e.g. `["nsenter", "--net=/run/netns/NAME"]`
    /// to scrape targets only reachable from a network namespace (a lab's). It must
    /// exec Prometheus (not fork it), so that killing the child kills Prometheus.
    pub command_prefix: Vec<String>,
    /// How to reach Prometheus' API (on 127.0.0.1 of its namespace); None: directly.
    pub connect: Option<Connector>,
}

impl Default for PrometheusOptions {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            scrape_interval: Duration::from_secs(1),
            start_timeout: Duration::from_secs(30),
            command_prefix: Vec::new(),
            connect: None,
        }
    }
}

/// One element of a query's result.
#[derive(Clone, Debug, PartialEq)]
pub struct QuerySample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A Prometheus server of its own (config, storage, port on 127.0.0.1): killed
/// and its directory removed when dropped, also when a test panics.
#[derive(Debug)]
pub struct Prometheus {
    child: Option<Child>,
    dir: PathBuf,
    addr: SocketAddr,
    jobs: Vec<String>,
    connect: Option<Connector>,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16, TestingError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("binding 127.0.0.1:0 to find a free port"))?;
    Ok(l.local_addr().map_err(io("local address"))?.port())
}

fn duration_str(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

impl Prometheus {
    /// Start Prometheus scraping `opts.targets`, and wait until it is ready.
    pub fn start(opts: &PrometheusOptions) -> Result<Self, TestingError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let binary = find_binary("prometheus", "MYELIN_PROMETHEUS")?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "myelin-prometheus-{}-{nanos}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut me = Self {
            child: None,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            jobs: opts.targets.iter().map(|t| t.job.clone()).collect(),
            connect: opts.connect.clone(),
        };
        std::fs::create_dir_all(me.dir.join("data")).map_err(io(format!("creating {}", me.dir.display())))?;
        let interval = duration_str(opts.scrape_interval);
        let mut config = format!(
            "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  evaluation_interval: {interval}\n\
             scrape_configs:\n"
        );
        for t in &opts.targets {
            config.push_str(&format!(
                "  - job_name: {:?}\n    metrics_path: {:?}\n    static_configs:\n      - targets: [{:?}]\n",
                t.job, t.metrics_path, t.address
            ));
        }
        let config_path = me.dir.join("prometheus.yml");
        std::fs::write(&config_path, config).map_err(io(format!("writing {}", config_path.display())))?;

        // The port is free when picked, but another process may take it before
        // Prometheus binds: retry a few times on "address already in use".
        for attempt in 0..4 {
            me.addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let log_path = me.dir.join("prometheus.log");
            let log = std::fs::File::create(&log_path).map_err(io(format!("creating {}", log_path.display())))?;
            let log2 = log.try_clone().map_err(io("log file"))?;
            let mut cmd = match opts.command_prefix.split_first() {
                Some((first, rest)) => {
                    let mut c = Command::new(first);
                    c.args(rest).arg(&binary);
                    c
                }
                None => Command::new(&binary),
            };
            let child = cmd
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!("--storage.tsdb.path={}", me.dir.join("data").display()))
                .arg(format!("--web.listen-address={}", me.addr))
                .arg("--log.level=info")
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .spawn()
                .map_err(io(format!("starting {}", binary.display())))?;
            me.child = Some(child);
            let deadline = Instant::now() + opts.start_timeout;
            loop {
                if let Some(c) = me.child.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        me.child = None;
                        let log = me.log();
                        if log.contains("address already in use") && attempt < 3 {
                            break;
                        }
                        return Err(TestingError::Failed(format!(
                            "prometheus exited ({status}) before it was ready; its log:\n{}",
                            tail(&log, 40)
                        )));
                    }
                }
                if let Ok((200, _)) = http_get_via(me.connect.as_ref(), me.addr, "/-/ready", Duration::from_secs(1)) {
                    return Ok(me);
                }
                if Instant::now() > deadline {
                    return Err(TestingError::Failed(format!(
                        "prometheus not ready at {} after {:?}; its log:\n{}",
                        me.addr,
                        opts.start_timeout,
                        tail(&me.log(), 40)
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Err(TestingError::Failed("prometheus could not bind a free port on 127.0.0.1 in 4 attempts".into()))
    }

    /// Where its HTTP API listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its directory (config, storage, log).
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process id of Prometheus (None once it exited).
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    fn api(&self, path: &str) -> Result<serde_json::Value, TestingError> {
        let (status, body) = http_get_via(self.connect.as_ref(), self.addr, path, Duration::from_secs(10))?;
        let v: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| TestingError::Failed(format!("GET {path}: {status}: not JSON ({e}): {body}")))?;
        if v["status"] != "success" {
            return Err(TestingError::Failed(format!("GET {path}: {status}: {} {}", v["errorType"], v["error"])));
        }
        Ok(v["data"].clone())
    }

    /// `/api/v1/targets`: the active targets (job, health, lastError, ...).
    pub fn targets(&self) -> Result<Vec<serde_json::Value>, TestingError> {
        Ok(self.api("/api/v1/targets")?["activeTargets"].as_array().cloned().unwrap_or_default())
    }

    /// Wait until every configured target is up (it was scraped successfully).
    pub fn wait_targets_up(&self, timeout: Duration) -> Result<(), TestingError> {
        let deadline = Instant::now() + timeout;
        loop {
            let targets = self.targets()?;
            let up = |job: &str| {
                targets.iter().any(|t| t["labels"]["job"] == job && t["health"] == "up" && t["lastError"] == "")
            };
            if self.jobs.iter().all(|j| up(j)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TestingError::Failed(format!(
                    "targets not all up after {timeout:?}: {}",
                    serde_json::Value::Array(targets)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until every target was scraped successfully after `since` (its `up`
    /// sample is newer and is 1), so what the target served after `since` is in
    /// the database.
    pub fn wait_scraped_since(&self, since: SystemTime, timeout: Duration) -> Result<(), TestingError> {
        // Prometheus may shift a scrape's timestamp by a few milliseconds to align it with the
        // interval (scrape timestamp tolerance): only a scrape 25 ms past `since` counts.
        let since = since.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()) + 0.025;
        let deadline = Instant::now() + timeout;
        loop {
            // `timestamp()` gives the samples' own timestamps only when applied to a plain
            // selector (on `up == 1` it would give the evaluation time): ask for both apart.
            let ts = self.query("timestamp(up)")?;
            let up = self.query("up")?;
            let of = |v: &[QuerySample], job: &str| {
                v.iter().find(|s| s.labels.get("job").is_some_and(|j| j == job)).map(|s| s.value)
            };
            let done = |job: &str| of(&ts, job).is_some_and(|t| t > since) && of(&up, job) == Some(1.0);
            if self.jobs.iter().all(|j| done(j)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TestingError::Failed(format!(
                    "no successful scrape of every target after {since} within {timeout:?}: {ts:?} {up:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An instant query (now): its samples (a scalar is one sample without labels).
    pub fn query(&self, promql: &str) -> Result<Vec<QuerySample>, TestingError> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(promql)))?;
        let value = |v: &serde_json::Value| -> Result<f64, TestingError> {
            let s = v[1].as_str().ok_or_else(|| TestingError::Failed(format!("query {promql}: bad value {v}")))?;
            s.parse().map_err(|_| TestingError::Failed(format!("query {promql}: bad number {s:?}")))
        };
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .map(|a| a.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    let labels = r["metric"]
                        .as_object()
                        .map(|m| {
                            m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect()
                        })
                        .unwrap_or_default();
                    Ok(QuerySample { labels, value: value(&r["value"])? })
                })
                .collect(),
            Some("scalar") => Ok(vec![QuerySample { labels: BTreeMap::new(), value: value(&data["result"])? }]),
            other => Err(TestingError::Failed(format!("query {promql}: result type {other:?} is not supported here"))),
        }
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// Dashboards
// ---------------------------------------------------------------------------

/// `dashboards/` at the root of the repository.
#[must_use]
pub fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dashboards")
}

/// The PromQL of one panel target.
#[derive(Clone, Debug)]
pub struct DashboardQuery {
    pub file: String,
    pub panel: String,
    /// As written in the dashboard (may use Grafana's `$__rate_interval`, ...).
    pub expr: String,
}

impl DashboardQuery {
    /// The expression with Grafana's interval variables set to `interval`; an
    /// error names any other variable (the test cannot know its value).
    pub fn promql(&self, interval: &str) -> Result<String, TestingError> {
        let e = ["$__rate_interval", "$__interval", "$__range"]
            .iter()
            .fold(self.expr.clone(), |e, v| e.replace(v, interval));
        if let Some(i) = e.find('$') {
            return Err(TestingError::Failed(format!(
                "{} / {}: variable {:?} has no value in tests: {}",
                self.file,
                self.panel,
                &e[i..e.len().min(i + 24)],
                self.expr
            )));
        }
        Ok(e)
    }
}

fn collect_panels(v: &serde_json::Value, file: &str, out: &mut Vec<DashboardQuery>) {
    for p in v["panels"].as_array().map(|a| a.as_slice()).unwrap_or_default() {
        let title = p["title"].as_str().unwrap_or_default().to_owned();
        for t in p["targets"].as_array().map(|a| a.as_slice()).unwrap_or_default() {
            if let Some(expr) = t["expr"].as_str() {
                out.push(DashboardQuery { file: file.to_owned(), panel: title.clone(), expr: expr.to_owned() });
            }
        }
        collect_panels(p, file, out);
    }
}

/// Every panel target of every `*.json` dashboard in `dir`.
pub fn dashboard_queries(dir: &Path) -> Result<Vec<DashboardQuery>, TestingError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(format!("reading {}", dir.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(io(format!("reading {}", f.display())))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| TestingError::Failed(format!("{}: not JSON: {e}", f.display())))?;
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let before = out.len();
        collect_panels(&v, &name, &mut out);
        if out.len() == before {
            return Err(TestingError::Failed(format!("{}: no panel with a PromQL target", f.display())));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// A synthetic flow stream
// ---------------------------------------------------------------------------

/// The endpoints of the synthetic stream.
pub const CLIENT: &str = "default/client";
pub const WEB: &str = "prod/web";
pub const DB: &str = "prod/db";

/// What one [`Synthetic::batch`] contains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchCounts {
    /// Every flow.
    pub flows: u64,
    /// Flows with verdict DROPPED, reason POLICY_DENIED (133), protocol TCP.
    pub policy_denied_tcp_drops: u64,
    /// Policy verdicts counted by `hubble_policy_verdicts_total` (not from the host).
    pub policy_verdicts: u64,
    /// Flows carrying a TCP handshake latency.
    pub handshakes: u64,
    /// ICMPv4 messages.
    pub icmp: u64,
}

/// A small node: a client (default), web and db (prod), the world and the host;
/// each [`Synthetic::batch`] is the same set of flows between them.
#[derive(Debug)]
pub struct Synthetic {
    pub dict: Arc<Dictionary>,
    seq: u64,
    client: (u32, u128),
    web: (u32, u128),
    db: (u32, u128),
    world: (u32, u128),
    host: (u32, u128),
}

fn pod(ns: &str, pod: &str, app: &str, kind: &str, identity: u32) -> EndpointDesc {
    EndpointDesc {
        endpoint_id: identity - 1000,
        identity,
        cluster: "default".into(),
        namespace: ns.into(),
        pod_name: pod.into(),
        labels: vec![format!("k8s:app={app}"), format!("k8s:io.kubernetes.pod.namespace={ns}")],
        workload: Some((app.into(), kind.into())),
        node: "node1".into(),
    }
}

fn v4(s: &str) -> u128 {
    s.parse::<std::net::IpAddr>().map_or(0, |ip| pack(ip).1)
}

impl Default for Synthetic {
    fn default() -> Self {
        Self::new()
    }
}

impl Synthetic {
    #[must_use]
    pub fn new() -> Self {
        let dict = Dictionary::new();
        let client = (dict.intern(pod("default", "client-7c9d5-xk2p4", "client", "Deployment", 1001)), v4("10.0.1.10"));
        let web = (dict.intern(pod("prod", "web-5d8f7-abcde", "web", "Deployment", 1002)), v4("10.0.1.20"));
        let db = (dict.intern(pod("prod", "db-0", "db", "StatefulSet", 1003)), v4("10.0.1.30"));
        let world = (
            dict.intern(EndpointDesc { identity: 2, labels: vec!["reserved:world".into()], ..EndpointDesc::default() }),
            v4("198.51.100.7"),
        );
        let host = (
            dict.intern(EndpointDesc { identity: 1, labels: vec!["reserved:host".into()], ..EndpointDesc::default() }),
            v4("10.0.1.1"),
        );
        Self { dict, seq: 0, client, web, db, world, host }
    }

    /// What each batch contains.
    #[must_use]
    pub fn counts() -> BatchCounts {
        BatchCounts { flows: 14, policy_denied_tcp_drops: 2, policy_verdicts: 2, handshakes: 2, icmp: 2 }
    }

    fn rec(
        &mut self,
        src: (u32, u128),
        dst: (u32, u128),
        identities: (u32, u32),
        f: impl FnOnce(&mut FlowRecord),
    ) -> FlowRecord {
        let mut r = FlowRecord {
            time_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0)),
            seq: self.seq,
            ip_version: 4,
            src_ip: src.1,
            dst_ip: dst.1,
            src_ep: src.0,
            dst_ep: dst.0,
            src_identity: identities.0,
            dst_identity: identities.1,
            event_type: myelin_bpf::EVENT_TRACE,
            verdict: verdict::FORWARDED,
            traffic_direction: direction::INGRESS,
            flags: flags::REPLY_KNOWN,
            trace_reason: 1,
            ..FlowRecord::default()
        };
        self.seq += 1;
        f(&mut r);
        r
    }

    /// One batch of flows (see [`Synthetic::counts`]).
    pub fn batch(&mut self) -> Vec<FlowRecord> {
        let (c, w, d, world, host) = (self.client, self.web, self.db, self.world, self.host);
        let tcp_ = |port: u16, fl: u8| {
            move |r: &mut FlowRecord| {
                r.protocol = 6;
                r.src_port = 40_000;
                r.dst_port = port;
                r.tcp_flags = fl;
            }
        };
        let reply = |r: &mut FlowRecord| {
            r.flags |= flags::REPLY;
            r.trace_reason = 3;
            std::mem::swap(&mut r.src_port, &mut r.dst_port);
        };
        vec![
            // client -> web:80, allowed: verdict, SYN, SYN-ACK (handshake 180 us), ACK, FIN.
            self.rec(c, w, (1001, 1002), |r| {
                tcp_(80, tcp::SYN)(r);
                r.event_type = myelin_bpf::EVENT_POLICY_VERDICT;
                r.policy_verdict = 1;
                r.match_type = 2;
                r.sub_type = 0;
            }),
            self.rec(c, w, (1001, 1002), tcp_(80, tcp::SYN)),
            self.rec(w, c, (1002, 1001), |r| {
                tcp_(80, tcp::SYN | tcp::ACK)(r);
                reply(r);
                r.traffic_direction = direction::EGRESS;
                r.flags |= flags::HANDSHAKE;
                r.handshake_us = 180;
            }),
            self.rec(c, w, (1001, 1002), tcp_(80, tcp::ACK)),
            self.rec(c, w, (1001, 1002), tcp_(80, tcp::FIN | tcp::ACK)),
            // client -> db:5432, denied by default: a policy verdict and a drop.
            self.rec(c, d, (1001, 1003), |r| {
                tcp_(5432, tcp::SYN)(r);
                r.event_type = myelin_bpf::EVENT_POLICY_VERDICT;
                r.verdict = verdict::DROPPED;
                r.drop_reason = 133;
                r.policy_verdict = 3;
                r.match_type = 0;
                r.flags = 0;
                r.trace_reason = 0;
            }),
            self.rec(c, d, (1001, 1003), |r| {
                tcp_(5432, tcp::SYN)(r);
                r.event_type = myelin_bpf::EVENT_DROP;
                r.sub_type = 133;
                r.verdict = verdict::DROPPED;
                r.drop_reason = 133;
                r.flags = 0;
                r.trace_reason = 0;
            }),
            // web -> db:5432 allowed (no verdict event: established), SYN-ACK with a 2.4 ms handshake.
            self.rec(w, d, (1002, 1003), tcp_(5432, tcp::SYN)),
            self.rec(d, w, (1003, 1002), |r| {
                tcp_(5432, tcp::SYN | tcp::ACK)(r);
                reply(r);
                r.flags |= flags::HANDSHAKE;
                r.handshake_us = 2_400;
            }),
            // web -> db UDP 53.
            self.rec(w, d, (1002, 1003), |r| {
                r.protocol = 17;
                r.src_port = 53_000;
                r.dst_port = 53;
            }),
            // client -> world ping, to-stack; the reply comes back to-endpoint.
            self.rec(c, world, (1001, 2), |r| {
                r.protocol = 1;
                r.icmp_type = 8;
                r.sub_type = 3;
                r.traffic_direction = direction::EGRESS;
            }),
            self.rec(world, c, (2, 1001), |r| {
                r.protocol = 1;
                r.icmp_type = 0;
                reply(r);
            }),
            // host -> web:80: a policy verdict from the host (not counted by the policy metric) and the SYN.
            self.rec(host, w, (1, 1002), |r| {
                tcp_(80, tcp::SYN)(r);
                r.event_type = myelin_bpf::EVENT_POLICY_VERDICT;
                r.policy_verdict = 1;
                r.match_type = 4;
            }),
            self.rec(host, w, (1, 1002), tcp_(80, tcp::SYN)),
        ]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_is_killed_and_its_directory_removed_even_on_panic() {
        let seen = std::sync::Mutex::new(None);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let prom = Prometheus::start(&PrometheusOptions::default()).expect("start prometheus");
            assert_eq!(prom.query("vector(42)").unwrap()[0].value, 42.0);
            *seen.lock().unwrap() = Some((prom.pid().unwrap(), prom.dir().to_path_buf()));
            panic!("a failing test");
        }));
        assert!(result.is_err());
        let (pid, dir) = seen.lock().unwrap().clone().expect("prometheus ran");
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "prometheus {pid} still runs");
        assert!(!dir.exists(), "{} still exists", dir.display());
    }

    #[test]
    fn samples_parse_with_escapes() {
        let s = parse_samples("# HELP x y z\na{b=\"c\\\"d\",e=\"\\n\"} 2.5\nf 1e3 123\ng +Inf\n").unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].labels["b"], "c\"d");
        assert_eq!(s[0].labels["e"], "\n");
        assert_eq!(sample_value(&s, "a", &[("b", "c\"d"), ("e", "\n")]), Some(2.5));
        assert_eq!(sample_value(&s, "f", &[]), Some(1000.0));
        assert_eq!(sample_value(&s, "g", &[]), Some(f64::INFINITY));
    }
}

/// SplitMix64: a small deterministic generator for synthetic flows (benchmarks, property tests).
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    #[allow(clippy::should_implement_trait)] // not an Iterator: it never ends
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Mostly small values up to `max`, sometimes the extremes 0 and `max`.
    pub fn pick(&mut self, max: u64) -> u64 {
        match self.below(8) {
            0 => 0,
            1 => max,
            2 => self.next() & max,
            _ => self.below(8.min(max) + 1),
        }
    }
}
