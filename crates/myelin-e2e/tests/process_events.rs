//! Process events with pod attribution: the agent attaches the `process` object's tracing
//! programs (tp_btf sched_process_exec, tracepoint sched_process_exit) and names the pod each
//! process ran in.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use myelin_api::ProcessEventInfo;
use myelin_e2e::*;

#[test]
fn execs_and_exits_in_a_pod_are_reported_with_the_pod() {
    let g = LabGuard::up(
        "nodes: [{name: node1}]\nagent: {process_events: true}\nnamespaces: [{name: default}]\npods:\n  \
         - {name: a, namespace: default, node: node1}\n  - {name: b, namespace: default, node: node1}\n",
        "proc",
    );
    let lab = g.lab();
    let st: myelin_api::Status = client(lab, "node1").get("/v1/status").unwrap();
    assert!(st.features.iter().any(|f| f.name == "process_events" && f.available), "{:?}", st.features);

    // A shell in pod a runs sleep; nothing runs in b.
    let out = exec(lab, "default/a", &["sh", "-c", "sleep 0.3; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let events = wait_for("sleep's exec and exit in default/a", Duration::from_secs(10), || {
        let ev: Vec<ProcessEventInfo> = client(lab, "node1").get("/v1/process-events?pod=default/a").ok()?;
        let exec = ev.iter().any(|e| e.kind == "exec" && e.filename.ends_with("/sleep") && e.comm == "sleep");
        let exit = ev.iter().any(|e| e.kind == "exit" && e.comm == "sh" && e.exit_code == 3 << 8);
        (exec && exit).then_some(ev)
    });
    let a = endpoint_id(lab, "default", "a");
    assert!(events.iter().all(|e| e.pod.as_deref() == Some("default/a") && e.endpoint_id == Some(a)), "{events:#?}");
    let b: Vec<ProcessEventInfo> = client(lab, "node1").get("/v1/process-events?pod=default/b").unwrap();
    assert!(b.is_empty(), "nothing ran in b: {b:#?}");
    // Processes outside the pods (this test's own, the machine's) are not reported as pods'.
    let all: Vec<ProcessEventInfo> = client(lab, "node1").get("/v1/process-events").unwrap();
    assert!(all.iter().all(|e| e.pod.is_some()), "only pods' processes are kept");
}

#[test]
fn process_events_off_is_a_clear_error() {
    let g = LabGuard::up(
        "nodes: [{name: node1}]\nnamespaces: [{name: default}]\npods:\n  - {name: a, namespace: default, node: node1}\n",
        "procx",
    );
    let e = client(g.lab(), "node1").get::<Vec<ProcessEventInfo>>("/v1/process-events").unwrap_err().to_string();
    assert!(e.contains("process_events = true"), "{e}");
}
