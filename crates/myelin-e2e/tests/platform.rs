//! The agent's platform: components that do not wait for each other, stable
//! rule ids that resolve after an edit and a restart, and the init identity
//! of endpoints whose labels are not known yet. Real agents in a lab.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use myelin_api::{
    Endpoint, EndpointAddRequest, IdentityInfo, LabelsUpdate, PolicyApply, PolicyChange, PolicyFile, PolicyStat,
    RuleInfo, Stall, Status,
};
use myelin_e2e::*;
use nix::sys::signal::Signal;
use std::net::SocketAddr;
use std::time::Duration;

const LAB: &str = "
nodes: [{name: node1}]
namespaces: [{name: x}]
pods:
  - {name: a, namespace: x, node: node1, labels: {app: a}}
  - {name: b, namespace: x, node: node1, labels: {app: b}}
agent: {debug_api: true, gc_interval_s: 1}
";

fn apply(c: &myelin_api::Client, yaml: &str) -> PolicyChange {
    let body = PolicyApply { files: vec![PolicyFile { name: "test.yaml".into(), content: yaml.into() }] };
    c.post("/v1/policies", &body).unwrap_or_else(|e| panic!("apply: {e}\n{yaml}"))
}

fn stall(c: &myelin_api::Client, component: &str, millis: u64) {
    let _: Stall = c.post("/v1/debug/stall", &Stall { component: component.into(), millis }).expect("stall");
}

fn gc_runs(c: &myelin_api::Client) -> u64 {
    c.get::<Status>("/v1/status").expect("status").datapath.gc_runs
}

#[test]
fn components_do_not_wait_for_each_other() {
    let lab = LabGuard::up(LAB, "plat");
    let c = client(lab.lab(), "node1");
    let ns = NetnsGuard::new("pladd");

    // The policy component is busy: an ADD (which needs it) waits, while reads,
    // the IPAM booking and conntrack GC go on.
    stall(&c, "policy", 5000);
    let add_req = EndpointAddRequest {
        container_id: "stall-add".into(),
        netns: ns.path().display().to_string(),
        ifname: "eth0".into(),
        namespace: Some("x".into()),
        pod_name: Some("c".into()),
        labels: [("app".to_string(), "c".to_string())].into(),
        ports: vec![],
        labels_pending: false,
    };
    let c2 = c.clone();
    let add = std::thread::spawn(move || c2.post::<_, Endpoint>("/v1/endpoints", &add_req));
    let gc0 = gc_runs(&c);
    for path in ["/v1/endpoints", "/v1/identities", "/v1/policies", "/v1/rules", "/v1/ipam", "/v1/status"] {
        let r: serde_json::Value = c.get(path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert!(!r.is_null());
        assert!(!add.is_finished(), "GET {path} answered while the ADD still waits for the busy policy component");
    }
    let eps: Vec<Endpoint> = c.get("/v1/endpoints").expect("endpoints");
    assert_eq!(eps.len(), 2, "the new endpoint is not committed before its policy is in place");
    wait_for("conntrack GC to run while the policy component is busy", Duration::from_secs(4), || {
        (gc_runs(&c) >= gc0 + 2).then_some(())
    });
    assert!(!add.is_finished(), "GC ran while the ADD was still waiting");
    let ep = add.join().expect("add thread").expect("the ADD completes once the policy component is free");
    assert!(ep.identity >= 256, "{ep:?}");

    // The endpoints component is busy: a DEL waits, a policy apply does not.
    stall(&c, "endpoints", 5000);
    let c3 = c.clone();
    let del = std::thread::spawn(move || c3.delete::<myelin_api::Deleted>("/v1/endpoints/by-container/stall-add/eth0"));
    let change = apply(
        &c,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: x}\n\
         spec: {endpointSelector: {matchLabels: {app: b}}, ingress: [{fromEndpoints: [{matchLabels: {app: a}}]}]}\n",
    );
    assert_eq!(change.policies.len(), 1);
    assert!(!del.is_finished(), "the policy apply finished while the DEL waits for the busy endpoints component");
    assert!(del.join().expect("del thread").expect("DEL").existed);
}

/// The real mix, no stalls: 24 CNI-style ADDs at once, policies applied and replaced in a loop,
/// API reads in a loop and conntrack GC on its timer, all at the same time. Every ADD and apply
/// succeeds, every endpoint ends up with its policy's identity, reads keep being answered (a
/// read never waits for a write: the longest is reported and must stay far below an ADD
/// burst's length), and GC keeps running.
#[test]
fn concurrent_adds_applies_reads_and_gc_all_make_progress() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let lab = LabGuard::up(LAB, "conc");
    let c = client(lab.lab(), "node1");
    let done = Arc::new(AtomicBool::new(false));
    let gc0 = gc_runs(&c);

    let reader = {
        let (c, done) = (c.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut n, mut longest) = (0u32, Duration::ZERO);
            while !done.load(Ordering::Relaxed) {
                for path in ["/v1/endpoints", "/v1/identities", "/v1/status", "/v1/policies"] {
                    let t = std::time::Instant::now();
                    let r: serde_json::Value = c.get(path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
                    assert!(!r.is_null());
                    longest = longest.max(t.elapsed());
                    n += 1;
                }
            }
            (n, longest)
        })
    };
    let applier = {
        let (c, done) = (c.clone(), done.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !done.load(Ordering::Relaxed) || n < 5 {
                let port = 8000 + n % 7;
                let change = apply(
                    &c,
                    &format!(
                        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, namespace: x}}\n\
                         spec: {{endpointSelector: {{matchLabels: {{app: c0}}}}, ingress: [{{fromEndpoints: \
                         [{{matchLabels: {{app: c1}}}}], toPorts: [{{ports: [{{port: '{port}', protocol: TCP}}]}}]}}]}}\n"
                    ),
                );
                assert_eq!(change.policies.len(), 1);
                n += 1;
            }
            n
        })
    };
    let t0 = std::time::Instant::now();
    let adds: Vec<_> = (0..24)
        .map(|i| {
            let c = c.clone();
            std::thread::spawn(move || {
                let ns = NetnsGuard::new("conc");
                let req = EndpointAddRequest {
                    container_id: format!("conc-{i}"),
                    netns: ns.path().display().to_string(),
                    ifname: "eth0".into(),
                    namespace: Some("x".into()),
                    pod_name: Some(format!("c{i}")),
                    labels: [("app".to_string(), format!("c{}", i % 4))].into(),
                    ports: vec![],
                    labels_pending: false,
                };
                let ep: Endpoint = c.post("/v1/endpoints", &req).unwrap_or_else(|e| panic!("ADD {i}: {e}"));
                (ns, ep)
            })
        })
        .collect();
    let added: Vec<(NetnsGuard, Endpoint)> = adds.into_iter().map(|h| h.join().expect("ADD thread")).collect();
    let burst = t0.elapsed();
    done.store(true, Ordering::Relaxed);
    let applies = applier.join().expect("apply thread");
    let (reads, longest) = reader.join().expect("read thread");
    eprintln!("24 ADDs in {burst:?} alongside {applies} applies and {reads} reads (longest read {longest:?})");

    let mut ips: Vec<&str> = added.iter().map(|(_, e)| e.ipv4.as_str()).collect();
    ips.sort_unstable();
    ips.dedup();
    assert_eq!(ips.len(), 24, "24 distinct addresses");
    let ids: Vec<IdentityInfo> = c.get("/v1/identities").expect("identities");
    for (_, e) in &added {
        let want = format!("c{}", e.pod_name.as_deref().unwrap_or("c0")[1..].parse::<usize>().unwrap() % 4);
        let info = ids.iter().find(|i| i.id == e.identity).unwrap_or_else(|| panic!("identity {} listed", e.identity));
        let has = info.labels.iter().any(|(k, v)| (k == "app" || k == "k8s:app") && *v == want);
        assert!(has, "{e:?} has app={want}: {info:?}");
    }
    assert!(applies >= 5 && reads >= 4, "applies {applies}, reads {reads}");
    assert!(longest < burst.max(Duration::from_millis(500)), "a read waited {longest:?} (burst {burst:?})");
    wait_for("GC to keep running", Duration::from_secs(5), || (gc_runs(&c) > gc0).then_some(()));
    for (_, e) in &added {
        let _: myelin_api::Deleted =
            c.delete(&format!("/v1/endpoints/by-container/{}/eth0", e.container_id)).expect("DEL");
    }
}

#[test]
fn rule_ids_resolve_after_an_edit_and_an_agent_restart() {
    let mut lab = LabGuard::up(LAB, "rule");
    let c = client(lab.lab(), "node1");
    let (a_ns, b_ns, b_ip) = (pod_ns(lab.lab(), "x", "a"), pod_ns(lab.lab(), "x", "b"), pod_ip(lab.lab(), "x", "b"));
    let policy = |port: u16| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: web, namespace: x}}\n\
             spec:\n  endpointSelector: {{matchLabels: {{app: b}}}}\n  ingress:\n  \
             - fromEndpoints: [{{matchLabels: {{app: a}}}}]\n    toPorts: [{{ports: [{{port: '{port}', protocol: TCP}}]}}]\n"
        )
    };
    let b_id = endpoint_id(lab.lab(), "x", "b");
    // A connection allowed by the rule names it in the policy counters.
    let serve = |port: u16| {
        let l = in_ns(&b_ns, move || std::net::TcpListener::bind((b_ip, port)).expect("bind"));
        echo_once(l)
    };
    apply(&c, &policy(8080));
    let h = serve(8080);
    let s = tcp_connect(&a_ns, SocketAddr::new(b_ip.into(), 8080)).expect("allowed by the rule");
    echo_roundtrip(s, 16);
    h.join().expect("server");
    let allowed_by = |c: &myelin_api::Client| -> Vec<u32> {
        let stats: Vec<PolicyStat> = c.get("/v1/metrics/policy").expect("stats");
        let mut ids: Vec<u32> = stats
            .iter()
            .filter(|s| s.endpoint_id == b_id && s.verdict == "allow" && s.rule_id != 0 && s.direction == "ingress")
            .map(|s| s.rule_id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    let first = allowed_by(&c);
    assert_eq!(first.len(), 1, "one rule allowed it: {first:?}");
    let r1 = first[0];
    let info: RuleInfo = c.get(&format!("/v1/rules/{r1}")).expect("rule");
    assert_eq!(
        (info.kind.as_str(), info.namespace.as_deref(), info.name.as_str()),
        ("CiliumNetworkPolicy", Some("x"), "web")
    );
    assert_eq!((info.revision, info.path.as_str(), info.retired), (1, "spec.ingress[0]", None));

    // Re-applying the same policy keeps the id; editing the rule gives a new one.
    apply(&c, &policy(8080));
    let again: RuleInfo = c.get(&format!("/v1/rules/{r1}")).expect("rule");
    assert_eq!(again.retired, None, "an unchanged rule keeps its id: {again:?}");
    apply(&c, &policy(8081));
    let h = serve(8081);
    let s = tcp_connect(&a_ns, SocketAddr::new(b_ip.into(), 8081)).expect("allowed by the edited rule");
    echo_roundtrip(s, 16);
    h.join().expect("server");
    let ids = allowed_by(&c);
    let r2 = *ids.iter().find(|i| **i != r1).unwrap_or_else(|| panic!("a new id for the edited rule: {ids:?}"));
    let old: RuleInfo = c.get(&format!("/v1/rules/{r1}")).expect("the old id still resolves");
    assert!(old.retired.is_some(), "{old:?}");
    assert_eq!((old.revision, old.path.as_str(), old.name.as_str()), (1, "spec.ingress[0]", "web"));
    let new: RuleInfo = c.get(&format!("/v1/rules/{r2}")).expect("new rule");
    assert_eq!((new.revision, new.retired, new.policy_uid.as_str()), (3, None, old.policy_uid.as_str()));

    // ... and both survive the agent's restart.
    lab.lab_mut().restart_agent("node1", Signal::SIGKILL).expect("restart");
    let c = client(lab.lab(), "node1");
    let old2: RuleInfo = c.get(&format!("/v1/rules/{r1}")).expect("old id after restart");
    assert_eq!(old2, old);
    let new2: RuleInfo = c.get(&format!("/v1/rules/{r2}")).expect("new id after restart");
    assert_eq!(new2, new);
    let stats: Vec<PolicyStat> = c.get("/v1/metrics/policy").expect("stats");
    assert!(stats
        .iter()
        .any(|s| s.rule_id == r2 && s.rule.as_deref().is_some_and(|d| d.contains("x/web spec.ingress[0]"))));
}

#[test]
fn an_endpoint_whose_labels_are_unknown_is_init_until_they_are_set() {
    let lab = LabGuard::up(LAB, "init");
    let c = client(lab.lab(), "node1");
    let ns = NetnsGuard::new("plini");
    let req = EndpointAddRequest {
        container_id: "init-pod".into(),
        netns: ns.path().display().to_string(),
        ifname: "eth0".into(),
        namespace: Some("x".into()),
        pod_name: Some("later".into()),
        labels: Default::default(),
        ports: vec![],
        labels_pending: true,
    };
    let ep: Endpoint = c.post("/v1/endpoints", &req).expect("ADD");
    assert_eq!(ep.identity, 5, "reserved:init until the labels are known: {ep:?}");
    let init: IdentityInfo = c.get("/v1/identities/5").expect("init identity");
    assert!(init.endpoints.contains(&ep.id));
    let ip: std::net::Ipv4Addr = ep.ipv4.parse().expect("ip");

    // Nothing reaches it and it reaches nothing but DNS, though no policy selects x.
    let (a_ns, a_ip) = (pod_ns(lab.lab(), "x", "a"), pod_ip(lab.lab(), "x", "a"));
    let l = tcp_listen(&ns.path(), ip);
    let port = l.local_addr().expect("addr").port();
    assert!(
        !tcp_probe(&a_ns, SocketAddr::new(ip.into(), port)).reached("x/a -> init pod"),
        "x/a -> init pod is denied"
    );
    let l2 = tcp_listen(&a_ns, a_ip);
    let port2 = l2.local_addr().expect("addr").port();
    assert!(
        !tcp_probe(&ns.path(), SocketAddr::new(a_ip.into(), port2)).reached("init pod -> x/a"),
        "init pod -> x/a is denied"
    );
    let stats: Vec<PolicyStat> = c.get("/v1/metrics/policy").expect("stats");
    assert!(stats.iter().any(|s| s.endpoint_id == ep.id && s.verdict == "default-deny"), "{stats:?}");

    // The orchestrator sets its labels: a workload identity, no policy, traffic flows.
    let upd: Endpoint = c
        .put(
            &format!("/v1/endpoints/{}/labels", ep.id),
            &LabelsUpdate { labels: [("app".into(), "c".into())].into(), ports: None },
        )
        .expect("labels");
    assert!(upd.identity >= 256 && !upd.labels_pending, "{upd:?}");
    let h = echo_once(l);
    let s = tcp_connect(&a_ns, SocketAddr::new(ip.into(), port)).expect("x/a -> the pod once it has its labels");
    echo_roundtrip(s, 16);
    h.join().expect("server");
    let _: myelin_api::Deleted = c.delete("/v1/endpoints/by-container/init-pod/eth0").expect("DEL");
}

fn add_request(container: &str, ns: &NetnsGuard, pod: &str) -> EndpointAddRequest {
    EndpointAddRequest {
        container_id: container.into(),
        netns: ns.path().display().to_string(),
        ifname: "eth0".into(),
        namespace: Some("x".into()),
        pod_name: Some(pod.into()),
        labels: [("app".to_string(), pod.to_string())].into(),
        ports: vec![],
        labels_pending: false,
    }
}

fn allocation_of(c: &myelin_api::Client, owner: &str) -> Option<String> {
    let ipam: myelin_api::IpamState = c.get("/v1/ipam").expect("GET /v1/ipam");
    ipam.allocations.into_iter().find(|a| a.owner == owner).map(|a| a.ip)
}

/// IPAM is a component of its own: while it is busy, an ADD waits for its address but the
/// endpoints component goes on (a DEL completes, labels change, reads are answered), and the
/// DEL's address is released once IPAM is free. Its bookings are crash-consistent with the
/// endpoint records: an agent killed between the address booking and the endpoint record
/// (the ADD held at the busy policy component) releases the address and removes the veth on
/// the next start, and the same ADD then succeeds.
#[test]
fn ipam_is_its_own_component_and_a_crash_between_booking_and_record_loses_nothing() {
    let mut lab = LabGuard::up(LAB, "ipamc");
    let c = client(lab.lab(), "node1");
    let (ns1, ns2) = (NetnsGuard::new("ipam1"), NetnsGuard::new("ipam2"));

    let first: Endpoint = c.post("/v1/endpoints", &add_request("ipam-first", &ns1, "first")).expect("ADD");
    assert_eq!(allocation_of(&c, "ipam-first/eth0").as_deref(), Some(first.ipv4.as_str()));

    stall(&c, "ipam", 5000);
    let c2 = c.clone();
    let req = add_request("ipam-second", &ns2, "second");
    let add = std::thread::spawn(move || c2.post::<_, Endpoint>("/v1/endpoints", &req));
    let gone: myelin_api::Deleted =
        c.delete("/v1/endpoints/by-container/ipam-first/eth0").expect("DEL while IPAM is busy");
    assert!(gone.existed);
    let a = endpoint_id(lab.lab(), "x", "a");
    let relabelled: Endpoint = c
        .put(
            &format!("/v1/endpoints/{a}/labels"),
            &LabelsUpdate { labels: [("app".to_string(), "a".to_string())].into(), ports: None },
        )
        .expect("labels while IPAM is busy");
    assert_eq!(relabelled.id, a);
    assert!(
        allocation_of(&c, "ipam-first/eth0").is_some(),
        "the DEL's address is released by IPAM, after its record, once IPAM is free"
    );
    assert!(!add.is_finished(), "the DEL and the labels update finished while the ADD waits for its address");
    let second = add.join().expect("add thread").expect("the ADD completes once IPAM is free");
    assert_eq!(allocation_of(&c, "ipam-second/eth0").as_deref(), Some(second.ipv4.as_str()));
    wait_for("the DEL's address to be released", Duration::from_secs(5), || {
        allocation_of(&c, "ipam-first/eth0").is_none().then_some(())
    });

    // Crash between the booking and the record.
    let ns3 = NetnsGuard::new("ipam3");
    stall(&c, "policy", 20_000);
    let c3 = c.clone();
    let req = add_request("ipam-crash", &ns3, "crash");
    let add = std::thread::spawn(move || c3.post::<_, Endpoint>("/v1/endpoints", &req));
    let booked =
        wait_for("the ADD's address to be booked", Duration::from_secs(10), || allocation_of(&c, "ipam-crash/eth0"));
    let host_if = myelin_netlink::host_ifname("ipam-crash", "eth0");
    let node_netns = lab.lab().node("node1").expect("node1").netns;
    wait_for("the ADD's veth to exist", Duration::from_secs(10), || {
        ip_n(&node_netns, &["link", "show", &host_if]).contains(&host_if).then_some(())
    });
    let eps: Vec<Endpoint> = c.get("/v1/endpoints").expect("endpoints");
    assert!(eps.iter().all(|e| e.container_id != "ipam-crash"), "no record before the policy is in place");
    lab.lab_mut().restart_agent("node1", Signal::SIGKILL).expect("restart the agent after SIGKILL");
    assert!(add.join().expect("add thread").is_err(), "the killed agent never answered the ADD");
    let c = client(lab.lab(), "node1");
    assert_eq!(allocation_of(&c, "ipam-crash/eth0"), None, "the booking of the interrupted ADD is released");
    assert!(!ip_n(&node_netns, &["link", "show"]).contains(&host_if), "its veth is removed");
    assert_eq!(
        allocation_of(&c, "ipam-second/eth0").as_deref(),
        Some(second.ipv4.as_str()),
        "a recorded endpoint keeps its address"
    );
    let again: Endpoint = c.post("/v1/endpoints", &add_request("ipam-crash", &ns3, "crash")).expect("ADD again");
    assert_ne!(again.ipv4, booked, "round robin: the released address is not handed out first");
    assert_eq!(allocation_of(&c, "ipam-crash/eth0").as_deref(), Some(again.ipv4.as_str()));
    assert!(ping(lab.lab(), "x/a", &again.ipv4), "the re-added pod is reachable");
}

/// The pods' socket traffic, counted by the cgroup_skb programs on the node's cgroup (the lab
/// gives each agent one, holding its pods' cgroups), is named by pod through
/// `GET /v1/cgroup-traffic` and `myelin_pod_socket_*_total`: what a ping in pod a sends to b
/// and gets back is a's, under a's cgroup; b, where nothing ran, has no traffic of its own.
#[test]
fn pod_socket_traffic_is_counted_per_pod_and_exported() {
    use myelin_observe::testing::{http_get_via, parse_samples, sample_value, Connector};
    let lab = LabGuard::up(LAB, "cgtr");
    let l = lab.lab();
    let c = client(l, "node1");
    let status: Status = c.get("/v1/status").expect("status");
    let feature = status.features.iter().find(|f| f.name == "cgroup_traffic").expect("cgroup_traffic reported");
    assert!(feature.available, "{feature:?}");

    let b_ip = pod_ip(l, "x", "b").to_string();
    let out = exec(l, "x/a", &["ping", "-c", "5", "-i", "0.2", "-s", "1000", "-W", "2", &b_ip]);
    assert!(out.status.success(), "ping from a: {}", String::from_utf8_lossy(&out.stdout));

    let rows: Vec<myelin_api::CgroupTraffic> = c.get("/v1/cgroup-traffic").expect("GET /v1/cgroup-traffic");
    let a = rows
        .iter()
        .find(|r| r.namespace.as_deref() == Some("x") && r.pod.as_deref() == Some("a"))
        .unwrap_or_else(|| panic!("a row for x/a: {rows:#?}"));
    assert_eq!(a.endpoint_id, Some(endpoint_id(l, "x", "a")));
    let container = &l.pod("x", "a").expect("pod a").container_id;
    assert!(a.cgroup.as_deref().is_some_and(|cg| cg.ends_with(container.as_str())), "{a:?}");
    assert!(a.egress_packets >= 5 && a.egress_bytes >= 5 * 1028, "5 echo requests of 1028 bytes: {a:?}");
    assert!(a.ingress_packets >= 5 && a.ingress_bytes >= 5 * 1028, "5 echo replies: {a:?}");
    assert!(
        rows.iter().all(|r| r.pod.as_deref() != Some("b") || r.egress_packets == 0),
        "nothing ran in b: the kernel answered the echo requests, no socket of b's: {rows:#?}"
    );

    let (code, table, err) = myelin(&["endpoint", "traffic", "--lab", l.name()]);
    assert_eq!(code, 0, "{err}");
    assert!(table.lines().any(|line| line.contains(" x/a ") && line.contains(container.as_str())), "{table}");

    let node = l.node("node1").expect("node1");
    let ns = node.netns_path.clone();
    let via = Connector(std::sync::Arc::new(move |addr: SocketAddr, timeout: Duration| {
        let ns = ns.clone();
        in_ns(&ns, move || std::net::TcpStream::connect_timeout(&addr, timeout))
    }));
    let target: SocketAddr = format!("{}:9965", node.address).parse().expect("metrics address");
    let (code, text) = http_get_via(Some(&via), target, "/metrics", Duration::from_secs(5)).expect("scrape");
    assert_eq!(code, 200, "{text}");
    let samples = parse_samples(&text).expect("exposition parses");
    let pod = |dir: &'static str| [("namespace", "x"), ("pod", "a"), ("direction", dir)];
    let bytes = sample_value(&samples, "myelin_pod_socket_bytes_total", &pod("egress")).unwrap_or(0.0);
    let packets = sample_value(&samples, "myelin_pod_socket_packets_total", &pod("ingress")).unwrap_or(0.0);
    assert!(bytes >= 5.0 * 1028.0 && packets >= 5.0, "egress bytes {bytes}, ingress packets {packets}:\n{text}");
}
