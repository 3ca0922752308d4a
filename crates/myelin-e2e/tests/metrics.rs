//! A real Prometheus (Debian's, started in the lab's fabric namespace) scrapes
//! a lab agent's metrics endpoint: counters match the traffic sent, and every
//! query of every dashboard in `dashboards/` returns data.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::float_cmp)]

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use myelin_e2e::*;
use myelin_observe::testing::{
    dashboard_queries, dashboards_dir, http_get_via, promtool_check_metrics, Connector, Prometheus, PrometheusOptions,
    ScrapeTarget,
};

const LAB: &str = "
nodes: [{name: node1}]
namespaces: [{name: x}, {name: y}]
pods:
  - {name: a, namespace: x, node: node1, labels: {app: a}}
  - {name: b, namespace: x, node: node1, labels: {app: b}}
  - {name: c, namespace: y, node: node1, labels: {app: c}}
";

const POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: '8080', protocol: TCP}]}]
";

/// Allowed TCP connections a -> b:8080, and denied UDP datagrams c -> b:9999.
const CONNS: u64 = 5;
const DENIED: u64 = 7;

#[test]
fn prometheus_scrapes_the_agent_counters_match_and_every_dashboard_query_has_data() {
    let g = LabGuard::up(LAB, "prom");
    let l = g.lab();
    let c = client(l, "node1");
    let body = myelin_api::PolicyApply {
        files: vec![myelin_api::PolicyFile { name: "p.yaml".into(), content: POLICY.into() }],
    };
    let _: myelin_api::PolicyChange = c.post("/v1/policies", &body).unwrap();

    // Prometheus lives in the fabric namespace, where the node's underlay address is.
    let fabric = myelin_lab::naming::netns_path(&myelin_lab::naming::fabric_netns(l.name()));
    let node = l.node("node1").unwrap();
    let target = node.metrics_listen();
    let connect_ns = fabric.clone();
    let prom = Prometheus::start(&PrometheusOptions {
        targets: vec![ScrapeTarget::new("myelin", &target, "/metrics")],
        command_prefix: vec!["nsenter".into(), format!("--net={}", fabric.display())],
        connect: Some(Connector(Arc::new(move |addr: SocketAddr, timeout: Duration| {
            in_ns(&connect_ns, move || TcpStream::connect_timeout(&addr, timeout))
        }))),
        ..PrometheusOptions::default()
    })
    .expect("start prometheus in the lab's fabric namespace (scripts/setup.sh installs it)");
    let fail = |e: &dyn std::fmt::Display| -> ! { panic!("{e}\n--- prometheus log ---\n{}", prom.log()) };
    prom.wait_targets_up(Duration::from_secs(60)).unwrap_or_else(|e| fail(&e));

    // Known traffic.
    send_known_traffic(l);

    // Counters as Prometheus sees them, once the agent folded them (about a second) and
    // Prometheus scraped: wait for the expected values, with a deadline.
    let q1 = |promql: &str| -> f64 {
        let v = prom.query(promql).unwrap_or_else(|e| fail(&e));
        v.first().map_or(0.0, |s| s.value)
    };
    let expect = |rounds: f64| {
        [
            // One ingress verdict per new connection, naming the rule (l3-l4).
            (r#"sum(hubble_policy_verdicts_total{direction="ingress",action="forwarded",match="l3-l4"})"#, CONNS),
            // One handshake latency per connection, at b.
            ("sum(myelin_tcp_handshake_seconds_count)", CONNS),
            // Each denied datagram: a policy-verdict and a drop event, both DROPPED (as Hubble counts).
            (r#"sum(hubble_drop_total{reason="POLICY_DENIED",protocol="UDP"})"#, 2 * DENIED),
            (r#"sum(hubble_policy_verdicts_total{direction="ingress",action="dropped"})"#, DENIED),
        ]
        .map(|(q, n)| (q, rounds * n as f64))
    };
    let wait_counters = |rounds: f64| {
        let mut want: Vec<(&str, f64)> = expect(rounds).to_vec();
        want.push(("sum(hubble_lost_events_total)", 0.0));
        want.push(("myelin_endpoints", 3.0));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got: Vec<f64> = want.iter().map(|(q, _)| q1(q)).collect();
            if want.iter().zip(&got).all(|((_, w), g)| g == w) {
                return;
            }
            if Instant::now() > deadline {
                let table: Vec<String> =
                    want.iter().zip(&got).map(|((q, w), g)| format!("{q}: got {g}, want {w}")).collect();
                fail(&table.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    wait_counters(1.0);
    // Flows per workload pair (the dashboards' labels): a -> b seen, named by workload.
    let pair = q1(r#"sum(hubble_flows_processed_total{source="x/a",destination="x/b",verdict="FORWARDED"})"#);
    let all = prom.query("hubble_flows_processed_total").unwrap_or_else(|e| fail(&e));
    assert!(pair >= CONNS as f64, "flows a -> b by workload: {pair}; {all:#?}");

    // The agent's own exposition passes promtool (the text format, as curl gets it).
    let fabric2 = fabric.clone();
    let via = Connector(Arc::new(move |addr: SocketAddr, timeout: Duration| {
        in_ns(&fabric2, move || TcpStream::connect_timeout(&addr, timeout))
    }));
    let (code, text) = http_get_via(Some(&via), target.parse().unwrap(), "/metrics", Duration::from_secs(5)).unwrap();
    assert_eq!(code, 200, "{text}");
    promtool_check_metrics(&text).unwrap_or_else(|e| panic!("promtool check metrics: {e}"));
    for name in ["myelin_identities", "myelin_policy_entries", "myelin_bpf_map_pressure", "myelin_flow_ring_flows"] {
        assert!(text.lines().any(|l| l.starts_with(name)), "{name} exported:\n{text}");
    }

    // The same traffic again: the counters double, and the series now have increases for
    // rate() (a series first scraped at its current value has none).
    send_known_traffic(l);
    wait_counters(2.0);

    // Every dashboard query returns data (a 1m rate needs two scrapes after the traffic).
    prom.wait_scraped_since(SystemTime::now(), Duration::from_secs(30)).unwrap_or_else(|e| fail(&e));
    prom.wait_scraped_since(SystemTime::now(), Duration::from_secs(30)).unwrap_or_else(|e| fail(&e));
    let queries = dashboard_queries(&dashboards_dir()).unwrap();
    assert!(queries.len() >= 20, "the dashboards have their panels: {}", queries.len());
    let mut empty = Vec::new();
    for q in &queries {
        let promql = q.promql("1m").unwrap();
        let v = prom.query(&promql).unwrap_or_else(|e| fail(&e));
        if v.is_empty() || v.iter().all(|s| !s.value.is_finite()) {
            empty.push(format!("{} / {}: {promql}", q.file, q.panel));
        }
    }
    assert!(empty.is_empty(), "dashboard queries without data:\n{}", empty.join("\n"));
}

/// CONNS allowed TCP connections a -> b:8080 (echoed), DENIED UDP datagrams c -> b:9999, a ping a -> c.
fn send_known_traffic(l: &myelin_lab::Lab) {
    let (a_ns, b_ns, c_ns) = (pod_ns(l, "x", "a"), pod_ns(l, "x", "b"), pod_ns(l, "y", "c"));
    let (b_ip, c_ip) = (pod_ip(l, "x", "b"), pod_ip(l, "y", "c"));
    for _ in 0..CONNS {
        let srv = in_ns(&b_ns, move || std::net::TcpListener::bind((b_ip, 8080)).unwrap());
        let h = echo_once(srv);
        echo_roundtrip(tcp_connect(&a_ns, SocketAddr::new(b_ip.into(), 8080)).unwrap(), 16);
        h.join().unwrap();
    }
    in_ns(&c_ns, move || {
        let s = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        for _ in 0..DENIED {
            s.send_to(b"denied", (b_ip, 9999)).unwrap();
        }
    });
    assert!(ping(l, "x/a", &c_ip.to_string()));
}
