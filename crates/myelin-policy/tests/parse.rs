#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use common::*;
use myelin_policy::*;

fn testdata(name: &str) -> String {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn testdata_files_parse() {
    let cnp = parse_documents("cnp-web.yaml", &testdata("cnp-web.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cnp.len(), 2);
    assert_eq!(cnp[0].id(), "shop/web");
    assert_eq!(cnp[0].specs[0].rules.len(), 3);
    assert_eq!(cnp[0].warnings.len(), 1, "{:?}", cnp[0].warnings);
    assert!(cnp[0].warnings[0].starts_with("spec.ingress[0].toPorts[0].rules: L7 rules (http)"));
    assert_eq!(cnp[1].specs[0].path, "specs[0]");
    assert_eq!(cnp[1].specs[0].rules.len(), 4);
    let ccnp = parse_documents("ccnp-baseline.yaml", &testdata("ccnp-baseline.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ccnp[0].namespace, None);
    assert!(!ccnp[0].specs[0].enforce_ingress && !ccnp[0].specs[0].enforce_egress);
    let knp = parse_documents("knp-db.yaml", &testdata("knp-db.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(knp.len(), 3);
    assert!(knp[1].specs[0].enforce_ingress && knp[1].specs[0].rules.is_empty());
    assert!(!knp[2].specs[0].enforce_egress);
    // All three files as one apply.
    let all = parse_files(&[
        ("a.yaml", &testdata("cnp-web.yaml")),
        ("b.yaml", &testdata("ccnp-baseline.yaml")),
        ("c.yaml", &testdata("knp-db.yaml")),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all.len(), 6);
}

#[test]
fn multi_document_with_empty_documents_and_default_namespace() {
    let p = parse(
        "---\n---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec:\n  endpointSelector: {}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b, namespace: x}\nspec:\n  podSelector: {}\n---\n",
    );
    assert_eq!(p.len(), 2);
    assert_eq!(p[0].namespace.as_deref(), Some("default"));
    // Empty documents are not counted.
    assert_eq!(p[0].document, 1);
    assert_eq!(p[1].document, 2);
    assert_eq!(p[1].id(), "x/b");
}

#[test]
fn namespace_scoping_of_selectors() {
    let p = parse(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints:
        - {}
        - matchLabels: {app: x}
        - matchLabels: {"k8s:io.kubernetes.pod.namespace": other, app: yy}
        - matchExpressions: [{key: io.kubernetes.pod.namespace, operator: Exists}]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: b}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{}]
"#,
    );
    let ns = |n: &str, app: &str| security_labels(&Labels::from([("app", app)]), n, &Labels::new());
    let spec = &p[0].specs[0];
    assert!(spec.subject.matches(&ns("prod", "web")));
    assert!(!spec.subject.matches(&ns("dev", "web")));
    let sels: Vec<&LabelSelector> = spec.rules[0]
        .peers
        .iter()
        .flatten()
        .map(|p| match &p.kind {
            PeerKind::Selector(s) => &**s,
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(sels[0].matches(&ns("prod", "z")) && !sels[0].matches(&ns("dev", "z")));
    assert!(sels[1].matches(&ns("prod", "x")) && !sels[1].matches(&ns("dev", "x")));
    assert!(sels[2].matches(&ns("other", "yy")) && !sels[2].matches(&ns("prod", "yy")));
    assert!(sels[3].matches(&ns("dev", "q")));
    // Cluster-wide: not scoped.
    let ccnp = &p[1].specs[0];
    assert!(ccnp.subject.matches(&ns("dev", "web")));
}

/// Each case: YAML body, then the exact expected error line.
#[test]
fn malformed_policies_name_file_document_and_path() {
    let cnp = |spec: &str| {
        format!("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: web\n  namespace: default\nspec:\n{spec}")
    };
    let knp = |spec: &str| {
        format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: db\n  namespace: shop\nspec:\n{spec}")
    };
    let pre = "test.yaml: document 1 (CiliumNetworkPolicy default/web): ";
    let kpre = "test.yaml: document 1 (NetworkPolicy shop/db): ";
    let cases: Vec<(String, String)> = vec![
        (
            cnp("  endpointSelector: {}\n  ingress:\n    - toPorts:\n        - ports:\n            - port: \"70000\"\n"),
            format!("{pre}spec.ingress[0].toPorts[0].ports[0].port: 70000 is not a port number (1-65535)"),
        ),
        (
            cnp("  endpointSelector: {}\n  ingress:\n    - toPorts:\n        - ports:\n            - port: 0\n"),
            format!("{pre}spec.ingress[0].toPorts[0].ports[0].port: 0 is not a port number (1-65535)"),
        ),
        (
            cnp("  endpointSelector: {}\n  ingress:\n    - toPort:\n        - ports: []\n"),
            format!("{pre}spec.ingress[0].toPort: unknown field (did you mean \"toPorts\"?)"),
        ),
        (
            cnp("  endpointSelector: {}\n  egress:\n    - toCIDR: [\"10.0.0.0/33\"]\n"),
            format!("{pre}spec.egress[0].toCIDR[0]: \"10.0.0.0/33\" is not a valid CIDR (like 10.0.0.0/8)"),
        ),
        (
            cnp("  endpointSelector: {}\n  egress:\n    - toCIDRSet:\n        - cidr: 10.1.0.0/16\n          except: [10.2.0.0/16]\n"),
            format!("{pre}spec.egress[0].toCIDRSet[0].except[0]: 10.2.0.0/16 is not inside cidr 10.1.0.0/16"),
        ),
        (
            cnp("  endpointSelector: {}\n  ingress:\n    - toPorts:\n        - ports:\n            - port: \"80\"\n              endPort: 79\n"),
            format!("{pre}spec.ingress[0].toPorts[0].ports[0].endPort: endPort 79 is below port 80"),
        ),
        (
            cnp("  endpointSelector: {}\n  ingress:\n    - toPorts:\n        - ports:\n            - port: http\n              endPort: 90\n"),
            format!("{pre}spec.ingress[0].toPorts[0].ports[0].endPort: endPort cannot be used with a named port"),
        ),
        (
            cnp("  endpointSelector: {}\n  ingress:\n    - toPorts:\n        - ports:\n            - port: \"80\"\n              protocol: HTTP\n"),
            format!("{pre}spec.ingress[0].toPorts[0].ports[0].protocol: \"HTTP\" is not a protocol (TCP, UDP, SCTP, ANY)"),
        ),
        (
            cnp("  endpointSelector: {}\n  ingress:\n    - fromEntities: [wrld]\n"),
            format!("{pre}spec.ingress[0].fromEntities[0]: unknown entity \"wrld\" (expected one of: world, world-ipv4, world-ipv6, host, remote-node, cluster, all, init, health, unmanaged, kube-apiserver, ingress)"),
        ),
        (
            cnp("  endpointSelector:\n    matchExpressions:\n      - {key: app, operator: Equals, values: [a]}\n"),
            format!("{pre}spec.endpointSelector.matchExpressions[0].operator: \"Equals\" is not a selector operator (In, NotIn, Exists, DoesNotExist)"),
        ),
        (
            cnp("  endpointSelector:\n    matchExpressions:\n      - {key: app, operator: In, values: []}\n"),
            format!("{pre}spec.endpointSelector.matchExpressions[0].values: operator In needs at least one value"),
        ),
        (
            cnp("  endpointSelector:\n    matchLabels:\n      app: [web]\n"),
            format!("{pre}spec.endpointSelector.matchLabels.app: expected a string, found a list"),
        ),
        (
            cnp("  nodeSelector: {}\n"),
            format!("{pre}spec.nodeSelector: host policies (nodeSelector) are not supported yet; select pods with endpointSelector"),
        ),
        (
            cnp("  endpointSelector: {}\n  ingress:\n    - toPorts:\n        - ports:\n            - port: Web_Port\n"),
            format!("{pre}spec.ingress[0].toPorts[0].ports[0].port: \"Web_Port\" is not a port number or a valid port name (up to 15 lowercase letters, digits and '-', with at least one letter)"),
        ),
        (
            cnp("  endpointSelector: {}\n  ingressDeny:\n    - toPorts:\n        - ports:\n            - port: \"80\"\n          rules:\n            http: [{}]\n"),
            format!("{pre}spec.ingressDeny[0].toPorts[0].rules: L7 rules are not allowed in deny rules"),
        ),
        (
            cnp("  endpointSelector: {}\n  egress:\n    - toFQDNs: [{matchName: example.com}]\n"),
            format!("{pre}spec.egress[0].toFQDNs: is not supported yet"),
        ),
        (
            cnp("  endpointSelector: {}\n  enableDefaultDeny: {ingress: \"no\"}\n"),
            format!("{pre}spec.enableDefaultDeny.ingress: expected true or false, found a string (\"no\")"),
        ),
        (
            knp("  podSelector: {}\n  ingress:\n    - from:\n        - ipBlock: {cidr: 10.0.0.0/8}\n          podSelector: {}\n"),
            format!("{kpre}spec.ingress[0].from[0]: ipBlock cannot be combined with podSelector or namespaceSelector in one peer"),
        ),
        (
            knp("  podSelector: {}\n  ingress:\n    - ports:\n        - port: 80\n          protocol: ANY\n"),
            format!("{kpre}spec.ingress[0].ports[0].protocol: \"ANY\" is not a protocol (TCP, UDP, SCTP)"),
        ),
        (
            knp("  podSelector: {}\n  policyTypes: [Ingres]\n"),
            format!("{kpre}spec.policyTypes[0]: \"Ingres\" is not a policy type (Ingress, Egress)"),
        ),
        (
            knp("  ingress: []\n"),
            format!("{kpre}spec.podSelector: required field is missing (use {{}} to select all pods)"),
        ),
        (
            knp("  podSelector: {}\n  egress:\n    - to:\n        - ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}\n"),
            format!("{kpre}spec.egress[0].to[0].ipBlock.except[0]: 192.168.0.0/16 is not inside cidr 10.0.0.0/8"),
        ),
        (
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  namespace: default\nspec:\n  endpointSelector: {}\n".to_owned(),
            "test.yaml: document 1: metadata.name: required field is missing".to_owned(),
        ),
        (
            "apiVersion: cilium.io/v2\nkind: CiliumNetwrkPolicy\nmetadata: {name: a}\n".to_owned(),
            "test.yaml: document 1: kind: unknown kind \"CiliumNetwrkPolicy\" (expected CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy)".to_owned(),
        ),
        (
            "apiVersion: cilium.io/v1\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec: {endpointSelector: {}}\n".to_owned(),
            "test.yaml: document 1: apiVersion: \"cilium.io/v1\" is not an apiVersion of CiliumNetworkPolicy (expected cilium.io/v2)".to_owned(),
        ),
        (
            "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {endpointSelector: {}}\n".to_owned(),
            "test.yaml: document 1: metadata.namespace: CiliumClusterwideNetworkPolicy is cluster-scoped: remove metadata.namespace".to_owned(),
        ),
    ];
    for (i, (yaml, want)) in cases.iter().enumerate() {
        let got = parse_err(yaml);
        assert!(got.lines().any(|l| l == want), "case {i}: want line\n  {want}\ngot\n  {}", got.replace('\n', "\n  "));
    }
    assert!(cases.len() >= 12);
}

#[test]
fn duplicate_names_and_whole_input_rejected() {
    let doc = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {endpointSelector: {}}\n";
    let err = parse_err(&format!("{doc}---\n{doc}"));
    assert_eq!(
        err,
        "test.yaml: document 2 (CiliumNetworkPolicy x/a): metadata.name: duplicate policy: CiliumNetworkPolicy x/a is also defined in test.yaml document 1"
    );
    // One bad document rejects the whole input, and every problem is listed.
    let bad = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: b, namespace: x}\nspec:\n  endpointSelector: {}\n  ingres: []\n  egress: [{toEntities: [nope]}]\n";
    let err = parse_documents("f.yaml", &format!("{doc}---\n{bad}")).unwrap_err();
    assert_eq!(err.issues().len(), 2, "{err}");
    assert_eq!(err.issues()[0].document, 2);
    assert_eq!(err.issues()[0].path, "spec.ingres");
}

#[test]
fn yaml_syntax_error_is_reported() {
    let err = parse_documents("bad.yaml", "a: [1, 2\nb: c: d\n").unwrap_err();
    assert!(matches!(err, PolicyError::Yaml { .. }), "{err}");
    assert!(err.to_string().starts_with("bad.yaml: invalid YAML:"), "{err}");
}

#[test]
fn knp_policy_types_inference() {
    let p = parse(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec:\n  podSelector: {}\n  egress: [{}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b}\nspec:\n  podSelector: {}\n  egress: []\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: c}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n",
    );
    let s = |i: usize| (p[i].specs[0].enforce_ingress, p[i].specs[0].enforce_egress);
    assert_eq!(s(0), (true, true));
    assert_eq!(s(1), (true, false));
    assert_eq!(s(2), (false, true));
}

#[test]
fn validate_catches_problems_in_code_built_policies() {
    let mut p = parse("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - toPorts: [{ports: [{port: \"80\"}]}]\n").remove(0);
    assert!(p.validate().is_ok());
    if let Some(ports) = p.specs[0].rules[0].ports.as_mut() {
        ports[0].port = PortSpec::Number(70000);
    }
    let err = p.validate().unwrap_err().to_string();
    assert_eq!(
        err,
        "test.yaml: document 1 (CiliumNetworkPolicy default/a): spec.ingress[0].toPorts[0].ports[0].port: 70000 is not a port number (1-65535)"
    );
}

/// Equal peer selectors are one allocation after parsing, and again after a round trip through
/// storage (JSON) and `share_selectors`; different ones stay apart.
#[test]
fn equal_selectors_are_shared_after_parsing_and_after_storage() {
    let yaml = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  \
                endpointSelector: {matchLabels: {app: db}}\n  ingress:\n  \
                - fromEndpoints: [{matchLabels: {app: a}}]\n    toPorts: [{ports: [{port: '80', protocol: TCP}]}]\n  \
                - fromEndpoints: [{matchLabels: {app: a}}]\n    toPorts: [{ports: [{port: '81', protocol: TCP}]}]\n  \
                - fromEndpoints: [{matchLabels: {app: b}}]\n";
    let selectors = |policies: &[Policy]| -> Vec<std::sync::Arc<LabelSelector>> {
        policies[0].specs[0]
            .rules
            .iter()
            .flat_map(|r| r.peers.iter().flatten())
            .map(|p| match &p.kind {
                PeerKind::Selector(s) => s.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let parsed = parse(yaml);
    let s = selectors(&parsed);
    assert_eq!(s.len(), 3);
    assert!(std::sync::Arc::ptr_eq(&s[0], &s[1]), "the two app=a selectors are one");
    assert!(!std::sync::Arc::ptr_eq(&s[0], &s[2]) && s[0] != s[2]);
    let mut stored: Vec<Policy> = serde_json::from_str(&serde_json::to_string(&parsed).unwrap()).unwrap();
    assert!(!std::sync::Arc::ptr_eq(&selectors(&stored)[0], &selectors(&stored)[1]), "deserializing shares nothing");
    myelin_policy::share_selectors(&mut stored);
    let s = selectors(&stored);
    assert!(std::sync::Arc::ptr_eq(&s[0], &s[1]));
    assert_eq!(stored, parsed, "sharing changes no value");
}
