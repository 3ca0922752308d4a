//! A real Prometheus (Debian's `prometheus`, started by the test) scrapes a
//! small HTTP server that serves `Metrics` fed with a synthetic flow stream;
//! every PromQL expression of the dashboards in `dashboards/` must return data,
//! and the counters must equal what was sent.
//!
//! Needs `prometheus` on PATH (scripts/setup.sh installs it): without it the
//! test fails, saying so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::float_cmp)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use myelin_observe::metrics::{
    AgentSource, AgentStats, LostSource, MapUse, Metrics, MetricsConfig, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE,
};
use myelin_observe::testing::{
    dashboard_queries, dashboards_dir, Connector, Prometheus, PrometheusOptions, ScrapeTarget, Synthetic,
};

/// What the fake agent serves.
struct Feed {
    metrics: Metrics,
    syn: Synthetic,
    batches: u64,
    lost: u64,
    frozen: bool,
    scrapes: u64,
    content_types: Vec<&'static str>,
}

impl Feed {
    /// A scrape of `/metrics` first adds one batch of flows (until frozen), so
    /// every counter grows between scrapes and `rate()` has something to show.
    fn scrape(&mut self, path: &str, accept: Option<&str>) -> (&'static str, String) {
        if path == "/metrics" {
            self.scrapes += 1;
            if !self.frozen {
                for r in self.syn.batch() {
                    self.metrics.observe(&r);
                }
                self.batches += 1;
                self.lost += 5;
                self.metrics.set_lost_events(LostSource::PerfEventRingBuffer, self.lost);
                self.metrics.flush(&self.syn.dict.view());
            }
            let (ct, body) = self.metrics.handle().encode_for_accept(accept);
            self.content_types.push(ct);
            (ct, body)
        } else {
            // Always the text format, whatever the scraper asks for.
            (TEXT_CONTENT_TYPE, self.metrics.encode())
        }
    }
}

struct Agent;

impl AgentSource for Agent {
    fn agent_stats(&self) -> AgentStats {
        AgentStats {
            endpoints: 3,
            identities: 8,
            policy_entries: 42,
            maps: vec![
                MapUse { name: "ct".into(), entries: 1_200, max_entries: 65_536 },
                MapUse { name: "ipcache".into(), entries: 12, max_entries: 16_384 },
            ],
            flow_ring_len: 1_000,
            flow_ring_capacity: 65_536,
            pod_traffic: Vec::new(),
        }
    }
}

/// The HTTP server, stopped and joined on drop.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// The listening socket, to wake the accept loop (shutdown works whatever
    /// namespace the socket is in; a connection would not reach it from here).
    listener: TcpListener,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        self.stop.store(true, Ordering::SeqCst);
        let _ = nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(mut s: TcpStream, feed: &Mutex<Feed>) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(s.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut accept = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("accept") {
                accept = Some(v.trim().to_owned());
            }
        }
    }
    let (status, ct, body) = if path == "/metrics" || path == "/metrics-text" {
        let (ct, body) = feed.lock().unwrap().scrape(&path, accept.as_deref());
        ("200 OK", ct, body)
    } else {
        ("404 Not Found", "text/plain", String::from("not found\n"))
    };
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body.as_bytes())
}

fn serve(feed: Arc<Mutex<Feed>>) -> Server {
    serve_on(TcpListener::bind("127.0.0.1:0").unwrap(), feed)
}

fn serve_on(listener: TcpListener, feed: Arc<Mutex<Feed>>) -> Server {
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let waker = listener.try_clone().unwrap();
    let thread = std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop2.load(Ordering::SeqCst) {
                break;
            }
            if let Ok(s) = conn {
                let _ = handle(s, &feed);
            }
        }
    });
    Server { addr, stop, listener: waker, thread: Some(thread) }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let queries = dashboard_queries(&dashboards_dir()).expect("dashboards");
    assert!(queries.len() >= 10, "dashboards have {} queries", queries.len());

    let metrics = Metrics::new(&MetricsConfig::for_dashboards()).unwrap();
    metrics.set_agent_source(Arc::new(Agent));
    let feed = Arc::new(Mutex::new(Feed {
        metrics,
        syn: Synthetic::new(),
        batches: 0,
        lost: 0,
        frozen: false,
        scrapes: 0,
        content_types: Vec::new(),
    }));
    let server = serve(feed.clone());
    let addr = server.addr.to_string();
    let prom = Prometheus::start(&PrometheusOptions {
        targets: vec![
            ScrapeTarget::new("myelin", &addr, "/metrics"),
            ScrapeTarget::new("myelin-text", &addr, "/metrics-text"),
        ],
        ..PrometheusOptions::default()
    })
    .expect("start prometheus");
    let fail = |e: &dyn std::fmt::Display| -> ! { panic!("{e}\n--- prometheus log ---\n{}", prom.log()) };

    prom.wait_targets_up(Duration::from_secs(60)).unwrap_or_else(|e| fail(&e));
    // Three fed scrapes, then one more that Prometheus has stored: rate() has samples to work on.
    wait_until("three scrapes", Duration::from_secs(60), || feed.lock().unwrap().scrapes >= 3);
    prom.wait_scraped_since(SystemTime::now(), Duration::from_secs(60)).unwrap_or_else(|e| fail(&e));

    let mut problems = Vec::new();
    for q in &queries {
        let promql = q.promql("1m").unwrap_or_else(|e| fail(&e));
        match prom.query(&promql) {
            Ok(samples) if samples.iter().any(|s| s.value.is_finite() && s.value > 0.0) => {}
            Ok(samples) => {
                problems.push(format!("{} / {}: {promql}: no positive sample: {samples:?}", q.file, q.panel))
            }
            Err(e) => problems.push(format!("{} / {}: {promql}: {e}", q.file, q.panel)),
        }
    }
    assert!(problems.is_empty(), "dashboard queries without data:\n{}", problems.join("\n"));

    // Stop feeding; once Prometheus has scraped after that, the counters equal what was sent.
    let batches = {
        let mut f = feed.lock().unwrap();
        f.frozen = true;
        f.batches
    };
    prom.wait_scraped_since(SystemTime::now(), Duration::from_secs(60)).unwrap_or_else(|e| fail(&e));
    let c = Synthetic::counts();
    let one = |promql: &str| -> f64 {
        let s = prom.query(promql).unwrap_or_else(|e| fail(&e));
        assert_eq!(s.len(), 1, "{promql}: {s:?}");
        s[0].value
    };
    #[allow(clippy::cast_precision_loss)]
    let total = |per_batch: u64| (per_batch * batches) as f64;
    for job in ["myelin", "myelin-text"] {
        assert_eq!(one(&format!("sum(hubble_flows_processed_total{{job=\"{job}\"}})")), total(c.flows), "{job}");
        assert_eq!(
            one(&format!("sum(hubble_drop_total{{job=\"{job}\",reason=\"POLICY_DENIED\",protocol=\"TCP\"}})")),
            total(c.policy_denied_tcp_drops),
            "{job}"
        );
        assert_eq!(one(&format!("sum(hubble_policy_verdicts_total{{job=\"{job}\"}})")), total(c.policy_verdicts));
        assert_eq!(one(&format!("sum(myelin_tcp_handshake_seconds_count{{job=\"{job}\"}})")), total(c.handshakes));
        assert_eq!(one(&format!("sum(hubble_icmp_total{{job=\"{job}\"}})")), total(c.icmp));
        assert_eq!(one(&format!("sum(myelin_flow_events_total{{job=\"{job}\"}})")), total(c.flows));
        assert_eq!(
            one(&format!("hubble_lost_events_total{{job=\"{job}\",source=\"perf_event_ring_buffer\"}}")),
            total(5)
        );
    }
    // Prometheus asked for OpenMetrics and got it on /metrics; /metrics-text served the text format.
    let f = feed.lock().unwrap();
    assert!(f.content_types.iter().all(|ct| *ct == OPENMETRICS_CONTENT_TYPE), "{:?}", f.content_types);
    drop(f);
    drop(prom);
    drop(server);
}

/// A network namespace of the test's own, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(name: &str) -> Self {
        let run = |args: &[&str]| {
            let st = std::process::Command::new("ip").args(args).status().expect("run ip");
            assert!(st.success(), "ip {args:?}: {st} (the test needs root)");
        };
        let ns = Self { name: name.to_owned() };
        run(&["netns", "add", name]);
        run(&["-n", name, "link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/run/netns/{}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Run `f` on a thread of its own that entered the namespace at `path` (sockets it
/// creates stay in that namespace; the thread, and its namespace change, end here).
fn in_netns<T: Send>(path: &std::path::Path, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(path).expect("open netns");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    })
}

/// What a lab test does: the target is only reachable inside a namespace, so
/// Prometheus runs there (`nsenter`) and the test reaches its API through a
/// connector that opens sockets from inside.
#[test]
fn prometheus_scrapes_inside_a_network_namespace() {
    let ns = Netns::new(&format!("myelin-prom-{}", std::process::id()));
    let path = ns.path();
    let listener = in_netns(&path, || TcpListener::bind("127.0.0.1:0").unwrap());
    let mut syn = Synthetic::new();
    let mut metrics = Metrics::new(&MetricsConfig::default()).unwrap();
    for r in syn.batch() {
        metrics.observe(&r);
    }
    metrics.flush(&syn.dict.view());
    let feed = Arc::new(Mutex::new(Feed {
        metrics,
        syn,
        batches: 1,
        lost: 0,
        frozen: true,
        scrapes: 0,
        content_types: Vec::new(),
    }));
    let server = serve_on(listener, feed);
    let connect_path = path.clone();
    let prom = Prometheus::start(&PrometheusOptions {
        targets: vec![ScrapeTarget::new("lab", &server.addr.to_string(), "/metrics")],
        command_prefix: vec!["nsenter".into(), format!("--net={}", path.display())],
        connect: Some(Connector(Arc::new(move |addr, timeout| {
            in_netns(&connect_path, || TcpStream::connect_timeout(&addr, timeout))
        }))),
        ..PrometheusOptions::default()
    })
    .expect("start prometheus in the namespace");
    let fail = |e: &dyn std::fmt::Display| -> ! { panic!("{e}\n--- prometheus log ---\n{}", prom.log()) };
    prom.wait_targets_up(Duration::from_secs(60)).unwrap_or_else(|e| fail(&e));
    prom.wait_scraped_since(SystemTime::now(), Duration::from_secs(60)).unwrap_or_else(|e| fail(&e));
    let v = prom.query("sum(hubble_flows_processed_total)").unwrap_or_else(|e| fail(&e));
    #[allow(clippy::cast_precision_loss)]
    let flows = Synthetic::counts().flows as f64;
    assert_eq!(v[0].value, flows);
    drop(prom);
    drop(server);
    drop(ns);
}
