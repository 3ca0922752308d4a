//! The `myelin` CLI against a real lab: what a user types, what a script parses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use myelin_e2e::{myelin, LabGuard};
use serde_json::Value;

const LAB: &str = r"
nodes: [{name: node1}]
namespaces: [{name: prod, labels: {env: prod}}]
pods:
  - {name: web, namespace: prod, node: node1, labels: {app: web}, ports: [{name: http, port: 80, protocol: TCP}]}
  - {name: cli, namespace: prod, node: node1, labels: {app: cli}}
";

const POLICY: &str = r"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: cli}}]
    toPorts: [{ports: [{port: http, protocol: TCP}], rules: {http: [{method: GET}]}}]
";

fn json(args: &[&str]) -> Value {
    let (code, out, err) = myelin(args);
    assert_eq!(code, 0, "myelin {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("myelin {args:?} -o json is not JSON ({e}): {out}"))
}

#[test]
fn status_endpoints_policy_and_identities_from_the_cli() {
    let g = LabGuard::up(LAB, "cli");
    let name = g.lab().name().to_owned();
    let lab = ["--lab", name.as_str()];

    let st = json(&[&["lab", "status", "--name", &name, "-o", "json"][..]].concat());
    assert_eq!(st["pods"].as_array().unwrap().len(), 2);
    for key in ["name", "nodes", "pods", "external"] {
        assert!(st.get(key).is_some(), "lab status has {key}");
    }
    let s = json(&[&["status", "-o", "json"][..], &lab].concat());
    assert_eq!(s["healthy"], true);
    assert_eq!(s["endpoints"], 2);
    assert!(s["features"].as_array().unwrap().iter().any(|f| f["name"] == "tcx" && f["available"] == true));

    let eps = json(&[&["endpoint", "list", "-o", "json"][..], &lab].concat());
    let web = eps.as_array().unwrap().iter().find(|e| e["pod_name"] == "web").unwrap().clone();
    let web_id = web["id"].to_string();

    // Validate needs no agent; a bad file fails with the field path.
    let file = std::env::temp_dir().join(format!("myelin-cli-{}.yaml", std::process::id()));
    std::fs::write(&file, POLICY).unwrap();
    let f = file.to_str().unwrap();
    let (code, out, _) = myelin(&["policy", "validate", "-f", f]);
    assert_eq!(code, 0);
    assert!(out.contains("prod/web: valid") && out.contains("warning"), "L7 rules are reported as not enforced: {out}");
    let bad = std::env::temp_dir().join(format!("myelin-cli-bad-{}.yaml", std::process::id()));
    std::fs::write(&bad, POLICY.replace("port: http", "port: '0'")).unwrap();
    let (code, _, err) = myelin(&["policy", "validate", "-f", bad.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("spec.ingress[0].toPorts[0].ports[0].port"), "{err}");

    let (code, out, err) = myelin(&[&["policy", "apply", "-f", f][..], &lab].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("CiliumNetworkPolicy/prod/web applied") && out.contains("not enforced"), "{out}");
    let got = json(&[&["policy", "get", "-o", "json"][..], &lab].concat());
    assert_eq!(got[0]["name"], "web");
    let (_, yaml, _) = myelin(&[&["policy", "get", "-o", "yaml"][..], &lab].concat());
    assert!(yaml.contains("kind: CiliumNetworkPolicy"));

    // endpoint get shows enforcement and the compiled entries, named by rule.
    let ep = json(&[&["endpoint", "get", &web_id, "-o", "json"][..], &lab].concat());
    assert_eq!(ep["policy"]["ingress_enforced"], true);
    assert_eq!(ep["policy"]["egress_enforced"], false);
    let entries = ep["policy"]["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["port"] == 80
            && e["protocol"] == 6
            && e["verdict"] == "allow"
            && e["rule"].as_str().unwrap().contains("prod/web spec.ingress[0]")),
        "{entries:?}"
    );
    let (_, table, _) = myelin(&[&["endpoint", "get", &web_id][..], &lab].concat());
    assert!(table.contains("enforced (default deny)"));

    // explain: verdict in the exit code, reasons in the text.
    let (code, out, _) = myelin(
        &[&["policy", "explain", "--from", "prod/cli", "--to", "prod/web", "--port", "80/TCP"][..], &lab].concat(),
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("final verdict: allow") && out.contains("spec.ingress[0]"), "{out}");
    let (code, out, _) = myelin(
        &[&["policy", "explain", "--from", "prod/cli", "--to", "prod/web", "--port", "81/TCP"][..], &lab].concat(),
    );
    assert_eq!(code, 2, "deny exits 2: {out}");
    assert!(out.contains("final verdict: deny"));

    let ids = json(&[&["identity", "list", "-o", "json"][..], &lab].concat());
    let web_identity = ep["endpoint"]["identity"].as_u64().unwrap();
    let entry = ids.as_array().unwrap().iter().find(|i| i["id"] == web_identity).expect("web's identity listed");
    assert_eq!(entry["labels"]["io.cilium.k8s.namespace.labels.env"], "prod");
    assert_eq!(entry["labels"]["io.kubernetes.pod.namespace"], "prod");
    assert!(
        ids.as_array().unwrap().iter().any(|i| i["id"] == 2 && i["scope"] == "reserved"),
        "world is reserved identity 2"
    );

    let (code, _, err) = myelin(&[&["policy", "delete", "prod/web"][..], &lab].concat());
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = myelin(&[&["policy", "delete", "prod/web"][..], &lab].concat());
    assert_ne!(code, 0);
    assert!(err.contains("no policy"), "{err}");
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&bad);
}

#[test]
fn the_shipped_examples_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut n = 0;
    for f in std::fs::read_dir(&dir).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml") {
            let (code, out, err) = myelin(&["policy", "validate", "-f", p.to_str().unwrap()]);
            assert_eq!(code, 0, "{}: {err}", p.display());
            assert!(out.contains("valid"));
            n += 1;
        }
    }
    assert!(n >= 1, "examples/ has policies");
}
