//! Parsing of policy files: multi-document YAML -> [`Policy`].
//!
//! Each document is read into a generic tree first (serde-saphyr, which reports YAML syntax
//! errors with line and column), then decoded field by field. Decoding is strict: unknown fields,
//! wrong types and invalid values are errors naming the file, the document (1-based), the policy
//! and the field path. Every problem of every document is collected and the whole input is
//! rejected if there is any.
//!
//! Defaults: a namespaced policy without `metadata.namespace` goes to `default` (as kubectl does).
//! Document numbers are 1-based and count non-empty documents only (the YAML reader drops empty
//! ones). Scalars follow YAML 1.1 like kubectl: `app: y` is a boolean, and a label value must be
//! a string, so quote such values.

use std::collections::BTreeMap;

use crate::tree::{Map, Value};
use ipnet::Ipv4Net;

use crate::error::{Issue, PolicyError};
use crate::labels::{
    is_valid_label_key, is_valid_label_value, LabelSelector, Operator, Requirement, NAMESPACE_LABELS_PREFIX,
    POD_NAMESPACE_LABEL,
};
use crate::model::{
    Direction, Entity, Peer, PeerKind, Policy, PolicyKind, PolicyRule, PolicySpec, PortMatch, PortSpec, Protocol,
    Verdict,
};
use crate::validate;

/// Parses every policy document of one file. Empty documents are skipped.
///
/// # Errors
/// [`PolicyError::Yaml`] for YAML syntax errors, [`PolicyError::Invalid`] listing every problem
/// otherwise (including duplicate policy names within the file).
pub fn parse_documents(file_name: &str, yaml: &str) -> Result<Vec<Policy>, PolicyError> {
    parse_files(&[(file_name, yaml)])
}

/// Parses several files as one apply: names must be unique across all of them.
///
/// # Errors
/// As [`parse_documents`].
pub fn parse_files(files: &[(&str, &str)]) -> Result<Vec<Policy>, PolicyError> {
    let mut policies = Vec::new();
    let mut issues = Vec::new();
    for (file, yaml) in files {
        let docs: Vec<Value> = serde_saphyr::from_multiple(yaml)
            .map_err(|e| PolicyError::Yaml { file: (*file).to_owned(), message: e.to_string() })?;
        for (i, v) in docs.iter().enumerate() {
            if v.is_null() {
                continue;
            }
            let mut d = Doc { file, index: i + 1, label: None, issues: Vec::new() };
            let policy = d.document(v);
            issues.append(&mut d.issues);
            if let Some(p) = policy {
                policies.push(p);
            }
        }
    }
    issues.extend(duplicate_issues(&policies));
    if issues.is_empty() {
        crate::model::share_selectors(&mut policies);
        Ok(policies)
    } else {
        Err(PolicyError::Invalid(issues))
    }
}

/// Issues for policies sharing kind, namespace and name.
#[must_use]
pub fn duplicate_issues(policies: &[Policy]) -> Vec<Issue> {
    let mut seen: BTreeMap<(PolicyKind, Option<&str>, &str), &Policy> = BTreeMap::new();
    let mut out = Vec::new();
    for p in policies {
        let key = (p.kind, p.namespace.as_deref(), p.name.as_str());
        if let Some(first) = seen.get(&key) {
            out.push(Issue {
                file: p.file.clone(),
                document: p.document,
                policy: Some(p.label()),
                path: "metadata.name".to_owned(),
                message: format!(
                    "duplicate policy: {} is also defined in {} document {}",
                    p.label(),
                    first.file,
                    first.document
                ),
            });
        } else {
            seen.insert(key, p);
        }
    }
    out
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

pub(crate) fn idx(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) => format!("a string ({s:?})"),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a mapping".to_owned(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_ascii_lowercase().chars().collect();
    let b: Vec<char> = b.to_ascii_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// CNP fields we recognise but do not implement.
const UNSUPPORTED_RULE_FIELDS: &[&str] = &[
    "fromRequires",
    "toRequires",
    "fromNodes",
    "toNodes",
    "fromGroups",
    "toGroups",
    "toServices",
    "toFQDNs",
    "authentication",
];

struct Doc<'a> {
    file: &'a str,
    index: usize,
    label: Option<String>,
    issues: Vec<Issue>,
}

impl Doc<'_> {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        self.issues.push(Issue {
            file: self.file.to_owned(),
            document: self.index,
            policy: self.label.clone(),
            path: path.to_owned(),
            message: message.into(),
        });
    }

    /// The value as a mapping whose keys are all in `allowed`.
    fn obj<'v>(&mut self, v: &'v Value, path: &str, allowed: &[&str]) -> Option<&'v Map<String, Value>> {
        let Value::Object(m) = v else {
            self.err(path, format!("expected a mapping, found {}", describe(v)));
            return None;
        };
        for k in m.keys() {
            if !allowed.contains(&k.as_str()) {
                let hint = allowed
                    .iter()
                    .filter(|a| edit_distance(a, k) <= 2)
                    .min_by_key(|a| edit_distance(a, k))
                    .map(|a| format!(" (did you mean {a:?}?)"))
                    .unwrap_or_default();
                self.err(&join(path, k), format!("unknown field{hint}"));
            }
        }
        Some(m)
    }

    fn string(&mut self, v: &Value, path: &str) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                self.err(path, format!("expected a string, found {}", describe(other)));
                None
            }
        }
    }

    fn opt_string(&mut self, m: &Map<String, Value>, key: &str, path: &str) -> Option<String> {
        match m.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => self.string(v, &join(path, key)),
        }
    }

    fn req_string(&mut self, m: &Map<String, Value>, key: &str, path: &str) -> Option<String> {
        match m.get(key) {
            None | Some(Value::Null) => {
                self.err(&join(path, key), "required field is missing");
                None
            }
            Some(v) => self.string(v, &join(path, key)),
        }
    }

    fn opt_bool(&mut self, m: &Map<String, Value>, key: &str, path: &str) -> Option<bool> {
        match m.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(v) => {
                self.err(&join(path, key), format!("expected true or false, found {}", describe(v)));
                None
            }
        }
    }

    /// An optional list: None when absent or null.
    fn opt_list<'v>(&mut self, m: &'v Map<String, Value>, key: &str, path: &str) -> Option<&'v [Value]> {
        match m.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(a),
            Some(v) => {
                self.err(&join(path, key), format!("expected a list, found {}", describe(v)));
                None
            }
        }
    }

    fn int(&mut self, v: &Value, path: &str) -> Option<i64> {
        match v {
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Some(i)
                } else {
                    self.err(path, format!("{n} is not an integer"));
                    None
                }
            }
            other => {
                self.err(path, format!("expected an integer, found {}", describe(other)));
                None
            }
        }
    }

    fn document(&mut self, v: &Value) -> Option<Policy> {
        let Value::Object(top) = v else {
            self.err("", format!("expected a mapping, found {}", describe(v)));
            return None;
        };
        let api = self.req_string(top, "apiVersion", "");
        let kind_s = self.req_string(top, "kind", "");
        let kind = match kind_s.as_deref() {
            Some("CiliumNetworkPolicy") => PolicyKind::CiliumNetworkPolicy,
            Some("CiliumClusterwideNetworkPolicy") => PolicyKind::CiliumClusterwideNetworkPolicy,
            Some("NetworkPolicy") => PolicyKind::NetworkPolicy,
            Some(other) => {
                self.err(
                    "kind",
                    format!(
                        "unknown kind {other:?} (expected CiliumNetworkPolicy, \
                         CiliumClusterwideNetworkPolicy or NetworkPolicy)"
                    ),
                );
                return None;
            }
            None => return None,
        };
        let want_api = match kind {
            PolicyKind::NetworkPolicy => "networking.k8s.io/v1",
            _ => "cilium.io/v2",
        };
        if let Some(api) = &api {
            if api != want_api {
                self.err("apiVersion", format!("{api:?} is not an apiVersion of {kind} (expected {want_api})"));
            }
        }
        let (name, namespace) = self.metadata(top.get("metadata"), kind)?;
        self.label = Some(match &namespace {
            Some(ns) => format!("{kind} {ns}/{name}"),
            None => format!("{kind} {name}"),
        });
        let mut policy = Policy {
            kind,
            name,
            namespace,
            file: self.file.to_owned(),
            document: self.index,
            specs: Vec::new(),
            warnings: Vec::new(),
        };
        match kind {
            PolicyKind::NetworkPolicy => {
                self.obj(v, "", &["apiVersion", "kind", "metadata", "spec", "status"]);
                match top.get("spec") {
                    None | Some(Value::Null) => self.err("spec", "required field is missing"),
                    Some(spec) => {
                        let mut warnings = Vec::new();
                        if let Some(s) = self.knp_spec(spec, &policy, &mut warnings) {
                            policy.specs.push(s);
                        }
                        policy.warnings = warnings;
                    }
                }
            }
            _ => {
                self.obj(v, "", &["apiVersion", "kind", "metadata", "spec", "specs", "status"]);
                let mut warnings = Vec::new();
                let mut any = false;
                if let Some(spec) = top.get("spec").filter(|s| !s.is_null()) {
                    any = true;
                    if let Some(s) = self.cnp_spec(spec, "spec", &policy, &mut warnings) {
                        policy.specs.push(s);
                    }
                }
                if let Some(list) = self.opt_list(top, "specs", "") {
                    any = any || !list.is_empty();
                    for (i, spec) in list.iter().enumerate() {
                        if let Some(s) = self.cnp_spec(spec, &idx("specs", i), &policy, &mut warnings) {
                            policy.specs.push(s);
                        }
                    }
                }
                if !any {
                    self.err("spec", "required field is missing (spec or specs)");
                }
                policy.warnings = warnings;
            }
        }
        let before = self.issues.len();
        if before == 0 {
            for issue in validate::policy_issues(&policy) {
                self.err(&issue.0, issue.1);
            }
        }
        Some(policy)
    }

    fn metadata(&mut self, v: Option<&Value>, kind: PolicyKind) -> Option<(String, Option<String>)> {
        let Some(v) = v.filter(|v| !v.is_null()) else {
            self.err("metadata", "required field is missing");
            return None;
        };
        let m = self.obj(
            v,
            "metadata",
            &[
                "name",
                "namespace",
                "labels",
                "annotations",
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "managedFields",
                "finalizers",
                "ownerReferences",
            ],
        )?;
        let name = self.req_string(m, "name", "metadata")?;
        if let Some(problem) = validate::dns_subdomain_problem(&name) {
            self.err("metadata.name", format!("{name:?} {problem}"));
        }
        let ns = self.opt_string(m, "namespace", "metadata");
        if let Some(ns) = &ns {
            if let Some(problem) = validate::dns_label_problem(ns) {
                self.err("metadata.namespace", format!("{ns:?} {problem}"));
            }
        }
        let namespace = if kind.is_namespaced() {
            Some(ns.unwrap_or_else(|| "default".to_owned()))
        } else {
            if ns.is_some() {
                self.err("metadata.namespace", format!("{kind} is cluster-scoped: remove metadata.namespace"));
            }
            None
        };
        Some((name, namespace))
    }

    fn selector(&mut self, v: &Value, path: &str) -> Option<LabelSelector> {
        let m = self.obj(v, path, &["matchLabels", "matchExpressions"])?;
        let mut sel = LabelSelector::default();
        let mut ok = true;
        if let Some(ml) = m.get("matchLabels").filter(|v| !v.is_null()) {
            let p = join(path, "matchLabels");
            match ml {
                Value::Object(map) => {
                    for (k, v) in map {
                        let kp = join(&p, k);
                        if !is_valid_label_key(k) {
                            self.err(&kp, format!("{k:?} is not a valid label key"));
                            ok = false;
                        }
                        let Some(val) = self.string(v, &kp) else {
                            ok = false;
                            continue;
                        };
                        if !is_valid_label_value(&val) {
                            self.err(&kp, format!("{val:?} is not a valid label value"));
                            ok = false;
                        }
                        sel.match_labels.insert(k.clone(), val);
                    }
                }
                other => {
                    self.err(&p, format!("expected a mapping, found {}", describe(other)));
                    ok = false;
                }
            }
        }
        if let Some(list) = self.opt_list(m, "matchExpressions", path) {
            for (i, e) in list.iter().enumerate() {
                let ep = idx(&join(path, "matchExpressions"), i);
                match self.requirement(e, &ep) {
                    Some(r) => sel.match_expressions.push(r),
                    None => ok = false,
                }
            }
        }
        ok.then_some(sel)
    }

    fn requirement(&mut self, v: &Value, path: &str) -> Option<Requirement> {
        let m = self.obj(v, path, &["key", "operator", "values"])?;
        let key = self.req_string(m, "key", path)?;
        if !is_valid_label_key(&key) {
            self.err(&join(path, "key"), format!("{key:?} is not a valid label key"));
            return None;
        }
        let op_s = self.req_string(m, "operator", path)?;
        let Some(operator) = Operator::parse(&op_s) else {
            self.err(
                &join(path, "operator"),
                format!("{op_s:?} is not a selector operator (In, NotIn, Exists, DoesNotExist)"),
            );
            return None;
        };
        let mut values = Vec::new();
        if let Some(list) = self.opt_list(m, "values", path) {
            for (i, v) in list.iter().enumerate() {
                values.push(self.string(v, &idx(&join(path, "values"), i))?);
            }
        }
        let r = Requirement { key, operator, values };
        if let Some(problem) = r.problem() {
            self.err(&join(path, "values"), problem);
            return None;
        }
        Some(r)
    }

    fn cidr(&mut self, v: &Value, path: &str) -> Option<Ipv4Net> {
        let s = self.string(v, path)?;
        match validate::parse_cidr(&s) {
            Ok(n) => Some(n),
            Err(msg) => {
                self.err(path, msg);
                None
            }
        }
    }

    fn cnp_spec(&mut self, v: &Value, path: &str, policy: &Policy, warnings: &mut Vec<String>) -> Option<PolicySpec> {
        let m = self.obj(
            v,
            path,
            &[
                "endpointSelector",
                "nodeSelector",
                "ingress",
                "ingressDeny",
                "egress",
                "egressDeny",
                "enableDefaultDeny",
                "labels",
                "description",
                "log",
            ],
        )?;
        if m.get("nodeSelector").is_some_and(|v| !v.is_null()) {
            self.err(
                &join(path, "nodeSelector"),
                "host policies (nodeSelector) are not supported yet; select pods with \
                 endpointSelector",
            );
            return None;
        }
        let subject = match m.get("endpointSelector") {
            None | Some(Value::Null) => {
                self.err(&join(path, "endpointSelector"), "required field is missing");
                None
            }
            Some(s) => self.selector(s, &join(path, "endpointSelector")),
        };
        let subject = subject.map(|s| scope(s, policy));
        let mut dd_ingress = None;
        let mut dd_egress = None;
        if let Some(dd) = m.get("enableDefaultDeny").filter(|v| !v.is_null()) {
            let dp = join(path, "enableDefaultDeny");
            if let Some(dm) = self.obj(dd, &dp, &["ingress", "egress"]) {
                dd_ingress = self.opt_bool(dm, "ingress", &dp);
                dd_egress = self.opt_bool(dm, "egress", &dp);
            }
        }
        if let Some(d) = m.get("description").filter(|v| !v.is_null()) {
            self.string(d, &join(path, "description"));
        }
        let mut rules = Vec::new();
        let mut present = [false; 2];
        for (key, dir, verdict) in [
            ("ingress", Direction::Ingress, Verdict::Allow),
            ("ingressDeny", Direction::Ingress, Verdict::Deny),
            ("egress", Direction::Egress, Verdict::Allow),
            ("egressDeny", Direction::Egress, Verdict::Deny),
        ] {
            let Some(list) = self.opt_list(m, key, path) else {
                continue;
            };
            present[usize::from(dir == Direction::Egress)] = true;
            for (i, r) in list.iter().enumerate() {
                let rp = idx(&join(path, key), i);
                if let Some(rule) = self.cnp_rule(r, &rp, dir, verdict, policy, warnings) {
                    rules.push(rule);
                }
            }
        }
        Some(PolicySpec {
            path: path.to_owned(),
            subject: subject?,
            enforce_ingress: dd_ingress.unwrap_or(present[0]),
            enforce_egress: dd_egress.unwrap_or(present[1]),
            rules,
        })
    }

    #[allow(clippy::too_many_lines)]
    fn cnp_rule(
        &mut self,
        v: &Value,
        path: &str,
        direction: Direction,
        verdict: Verdict,
        policy: &Policy,
        warnings: &mut Vec<String>,
    ) -> Option<PolicyRule> {
        let pre = match direction {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        };
        let f_endpoints = format!("{pre}Endpoints");
        let f_cidr = format!("{pre}CIDR");
        let f_cidrset = format!("{pre}CIDRSet");
        let f_entities = format!("{pre}Entities");
        let mut allowed: Vec<&str> = vec![&f_endpoints, &f_cidr, &f_cidrset, &f_entities, "toPorts", "icmps"];
        allowed.extend(UNSUPPORTED_RULE_FIELDS.iter().copied().filter(|f| {
            // Only the fields of this direction are known; the others stay "unknown".
            f.starts_with(pre) || *f == "authentication"
        }));
        let m = self.obj(v, path, &allowed)?;
        let errors_before = self.issues.len();
        for f in UNSUPPORTED_RULE_FIELDS {
            if m.contains_key(f) && allowed.contains(f) {
                self.err(&join(path, f), "is not supported yet");
            }
        }
        let mut peers = Vec::new();
        if let Some(list) = self.opt_list(m, &f_endpoints, path) {
            for (i, s) in list.iter().enumerate() {
                let p = idx(&join(path, &f_endpoints), i);
                if let Some(sel) = self.selector(s, &p) {
                    peers.push(Peer { path: p, kind: PeerKind::Selector(std::sync::Arc::new(scope(sel, policy))) });
                }
            }
        }
        if let Some(list) = self.opt_list(m, &f_cidr, path) {
            for (i, c) in list.iter().enumerate() {
                let p = idx(&join(path, &f_cidr), i);
                if let Some(cidr) = self.cidr(c, &p) {
                    peers.push(Peer { path: p, kind: PeerKind::Cidr { cidr, except: Vec::new() } });
                }
            }
        }
        if let Some(list) = self.opt_list(m, &f_cidrset, path) {
            for (i, c) in list.iter().enumerate() {
                let p = idx(&join(path, &f_cidrset), i);
                if let Some(peer) = self.cidr_set(c, &p, &["cidr", "except"]) {
                    peers.push(peer);
                }
            }
        }
        if let Some(list) = self.opt_list(m, &f_entities, path) {
            for (i, e) in list.iter().enumerate() {
                let p = idx(&join(path, &f_entities), i);
                let Some(s) = self.string(e, &p) else {
                    continue;
                };
                match Entity::parse(&s) {
                    Some(ent) => peers.push(Peer { path: p, kind: PeerKind::Entity(ent) }),
                    None => self.err(
                        &p,
                        format!(
                            "unknown entity {s:?} (expected one of: {})",
                            Entity::ALL.map(Entity::as_str).join(", ")
                        ),
                    ),
                }
            }
        }
        let mut ports: Vec<PortMatch> = Vec::new();
        let mut has_l4 = false;
        let mut l7 = Vec::new();
        if let Some(list) = self.opt_list(m, "toPorts", path) {
            for (i, tp) in list.iter().enumerate() {
                let tpp = idx(&join(path, "toPorts"), i);
                let Some(tm) = self.obj(
                    tp,
                    &tpp,
                    &["ports", "rules", "listener", "serverNames", "terminatingTLS", "originatingTLS"],
                ) else {
                    continue;
                };
                for f in ["listener", "serverNames", "terminatingTLS", "originatingTLS"] {
                    if tm.contains_key(f) {
                        self.err(&join(&tpp, f), "is not supported yet");
                    }
                }
                match self.opt_list(tm, "ports", &tpp) {
                    Some(list) if !list.is_empty() => {
                        has_l4 = true;
                        for (j, pv) in list.iter().enumerate() {
                            let pp = idx(&join(&tpp, "ports"), j);
                            if let Some(pm) = self.port(pv, &pp, &["port", "endPort", "protocol"], false) {
                                ports.push(pm);
                            }
                        }
                    }
                    _ => self.err(&join(&tpp, "ports"), "required field is missing (list at least one port)"),
                }
                if let Some(rv) = tm.get("rules").filter(|v| !v.is_null()) {
                    let rp = join(&tpp, "rules");
                    if let Some(rm) = self.obj(rv, &rp, &["http", "kafka", "dns", "l7proto", "l7"]) {
                        let kinds: Vec<String> =
                            rm.iter().filter(|(_, v)| !v.is_null()).map(|(k, _)| k.clone()).collect();
                        if !kinds.is_empty() {
                            if verdict == Verdict::Deny {
                                self.err(&rp, "L7 rules are not allowed in deny rules");
                            } else {
                                warnings.push(format!(
                                    "{rp}: L7 rules ({}) are accepted but not enforced yet: \
                                     traffic on these ports is allowed without L7 filtering",
                                    kinds.join(", ")
                                ));
                                l7.extend(kinds);
                            }
                        }
                    }
                }
            }
        }
        if let Some(list) = self.opt_list(m, "icmps", path) {
            for (i, ic) in list.iter().enumerate() {
                let icp = idx(&join(path, "icmps"), i);
                let Some(im) = self.obj(ic, &icp, &["fields"]) else {
                    continue;
                };
                match self.opt_list(im, "fields", &icp) {
                    Some(fields) if !fields.is_empty() => {
                        has_l4 = true;
                        for (j, f) in fields.iter().enumerate() {
                            let fp = idx(&join(&icp, "fields"), j);
                            if let Some(pm) = self.icmp_field(f, &fp) {
                                ports.push(pm);
                            }
                        }
                    }
                    _ => self.err(&join(&icp, "fields"), "required field is missing (list at least one ICMP type)"),
                }
            }
        }
        if self.issues.len() > errors_before {
            return None;
        }
        let peers = if !peers.is_empty() {
            Some(peers)
        } else if has_l4 {
            None
        } else {
            Some(Vec::new())
        };
        Some(PolicyRule { direction, verdict, section: path.to_owned(), peers, ports: has_l4.then_some(ports), l7 })
    }

    fn cidr_set(&mut self, v: &Value, path: &str, fields: &[&str]) -> Option<Peer> {
        let m = self.obj(v, path, fields)?;
        let cidr_v = match m.get("cidr") {
            None | Some(Value::Null) => {
                self.err(&join(path, "cidr"), "required field is missing");
                return None;
            }
            Some(c) => c,
        };
        let cidr = self.cidr(cidr_v, &join(path, "cidr"))?;
        let mut except = Vec::new();
        let mut ok = true;
        if let Some(list) = self.opt_list(m, "except", path) {
            for (i, e) in list.iter().enumerate() {
                let ep = idx(&join(path, "except"), i);
                match self.cidr(e, &ep) {
                    Some(n) => {
                        if let Some(problem) = validate::except_problem(cidr, n) {
                            self.err(&ep, problem);
                            ok = false;
                        }
                        except.push(n);
                    }
                    None => ok = false,
                }
            }
        }
        ok.then(|| Peer { path: path.to_owned(), kind: PeerKind::Cidr { cidr, except } })
    }

    /// A port entry. `knp`: Kubernetes defaults (protocol TCP) and spelling.
    fn port(&mut self, v: &Value, path: &str, fields: &[&str], knp: bool) -> Option<PortMatch> {
        let m = self.obj(v, path, fields)?;
        let protocol = match m.get("protocol") {
            None | Some(Value::Null) => Some(if knp { Protocol::Tcp } else { Protocol::Any }),
            Some(pv) => {
                let pp = join(path, "protocol");
                let s = self.string(pv, &pp)?;
                match (s.as_str(), knp) {
                    ("TCP", _) => Some(Protocol::Tcp),
                    ("UDP", _) => Some(Protocol::Udp),
                    ("SCTP", _) => Some(Protocol::Sctp),
                    ("ANY", false) => Some(Protocol::Any),
                    _ => {
                        let want = if knp { "TCP, UDP, SCTP" } else { "TCP, UDP, SCTP, ANY" };
                        self.err(&pp, format!("{s:?} is not a protocol ({want})"));
                        None
                    }
                }
            }
        };
        let port = match m.get("port") {
            None | Some(Value::Null) => Some(PortSpec::All),
            Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                match s.parse::<i64>() {
                    Ok(n) => Some(PortSpec::Number(n)),
                    Err(_) => {
                        self.err(&join(path, "port"), format!("{s} is not a port number (1-65535)"));
                        None
                    }
                }
            }
            Some(Value::String(s)) => Some(PortSpec::Named(s.clone())),
            Some(n @ Value::Number(_)) => self.int(n, &join(path, "port")).map(PortSpec::Number),
            Some(other) => {
                self.err(&join(path, "port"), format!("expected a port number or name, found {}", describe(other)));
                None
            }
        };
        let end_port = match m.get("endPort") {
            None | Some(Value::Null) => None,
            Some(v) => Some(self.int(v, &join(path, "endPort"))?),
        };
        let pm = PortMatch { path: path.to_owned(), protocol: protocol?, port: port?, end_port };
        let problems = validate::port_problems(&pm);
        let ok = problems.is_empty();
        for (p, msg) in problems {
            self.err(&p, msg);
        }
        ok.then_some(pm)
    }

    fn icmp_field(&mut self, v: &Value, path: &str) -> Option<PortMatch> {
        let m = self.obj(v, path, &["type", "family"])?;
        let family = self.opt_string(m, "family", path);
        let protocol = match family.as_deref() {
            None | Some("IPv4") => Protocol::Icmp,
            Some("IPv6") => Protocol::Icmpv6,
            Some(other) => {
                self.err(&join(path, "family"), format!("{other:?} is not an ICMP family (IPv4, IPv6)"));
                return None;
            }
        };
        let tp = join(path, "type");
        let ty = match m.get("type") {
            None | Some(Value::Null) => {
                self.err(&tp, "required field is missing");
                return None;
            }
            Some(Value::String(s)) => match validate::icmp_type_by_name(s, protocol) {
                Some(t) => i64::from(t),
                None => {
                    self.err(&tp, format!("{s:?} is not an ICMP type name or number (0-255)"));
                    return None;
                }
            },
            Some(v) => self.int(v, &tp)?,
        };
        let pm = PortMatch { path: path.to_owned(), protocol, port: PortSpec::Number(ty), end_port: None };
        let problems = validate::port_problems(&pm);
        let ok = problems.is_empty();
        for (p, msg) in problems {
            self.err(&p, msg);
        }
        ok.then_some(pm)
    }

    #[allow(clippy::too_many_lines)]
    fn knp_spec(&mut self, v: &Value, policy: &Policy, warnings: &mut Vec<String>) -> Option<PolicySpec> {
        let path = "spec";
        let m = self.obj(v, path, &["podSelector", "policyTypes", "ingress", "egress"])?;
        let ns = policy.namespace.clone().unwrap_or_else(|| "default".to_owned());
        let subject = match m.get("podSelector") {
            None | Some(Value::Null) => {
                self.err("spec.podSelector", "required field is missing (use {} to select all pods)");
                None
            }
            Some(s) => self.selector(s, "spec.podSelector").map(|s| s.with_label(POD_NAMESPACE_LABEL, &ns)),
        };
        let ingress = self.opt_list(m, "ingress", path);
        let egress = self.opt_list(m, "egress", path);
        let mut types = None;
        if let Some(list) = self.opt_list(m, "policyTypes", path) {
            let mut t = [false; 2];
            for (i, tv) in list.iter().enumerate() {
                let tp = idx("spec.policyTypes", i);
                match self.string(tv, &tp).as_deref() {
                    Some("Ingress") => t[0] = true,
                    Some("Egress") => t[1] = true,
                    Some(other) => self.err(&tp, format!("{other:?} is not a policy type (Ingress, Egress)")),
                    None => {}
                }
            }
            types = Some(t);
        }
        let [enforce_ingress, enforce_egress] = types.unwrap_or([true, egress.is_some_and(|e| !e.is_empty())]);
        let mut rules = Vec::new();
        for (key, dir, list, enforced) in [
            ("ingress", Direction::Ingress, ingress, enforce_ingress),
            ("egress", Direction::Egress, egress, enforce_egress),
        ] {
            let Some(list) = list else { continue };
            if !enforced && !list.is_empty() {
                warnings.push(format!(
                    "spec.{key}: ignored because spec.policyTypes does not list {}",
                    if dir == Direction::Ingress { "Ingress" } else { "Egress" }
                ));
            }
            let peer_key = if dir == Direction::Ingress { "from" } else { "to" };
            for (i, r) in list.iter().enumerate() {
                let rp = idx(&join(path, key), i);
                let Some(rm) = self.obj(r, &rp, &[peer_key, "ports"]) else {
                    continue;
                };
                let before = self.issues.len();
                let mut peers = Vec::new();
                if let Some(pl) = self.opt_list(rm, peer_key, &rp) {
                    for (j, pv) in pl.iter().enumerate() {
                        let pp = idx(&join(&rp, peer_key), j);
                        if let Some(peer) = self.knp_peer(pv, &pp, &ns) {
                            peers.push(peer);
                        }
                    }
                }
                let mut ports = Vec::new();
                if let Some(pl) = self.opt_list(rm, "ports", &rp) {
                    for (j, pv) in pl.iter().enumerate() {
                        let pp = idx(&join(&rp, "ports"), j);
                        if let Some(pm) = self.port(pv, &pp, &["protocol", "port", "endPort"], true) {
                            ports.push(pm);
                        }
                    }
                }
                if self.issues.len() > before || !enforced {
                    continue;
                }
                rules.push(PolicyRule {
                    direction: dir,
                    verdict: Verdict::Allow,
                    section: rp,
                    peers: (!peers.is_empty()).then_some(peers),
                    ports: (!ports.is_empty()).then_some(ports),
                    l7: Vec::new(),
                });
            }
        }
        Some(PolicySpec { path: path.to_owned(), subject: subject?, enforce_ingress, enforce_egress, rules })
    }

    fn knp_peer(&mut self, v: &Value, path: &str, ns: &str) -> Option<Peer> {
        let m = self.obj(v, path, &["podSelector", "namespaceSelector", "ipBlock"])?;
        let pod = m.get("podSelector").filter(|v| !v.is_null());
        let nsel = m.get("namespaceSelector").filter(|v| !v.is_null());
        let ip = m.get("ipBlock").filter(|v| !v.is_null());
        if let Some(ip) = ip {
            if pod.is_some() || nsel.is_some() {
                self.err(path, "ipBlock cannot be combined with podSelector or namespaceSelector in one peer");
                return None;
            }
            let mut peer = self.cidr_set(ip, &join(path, "ipBlock"), &["cidr", "except"])?;
            peer.path = path.to_owned();
            return Some(peer);
        }
        let pod_sel = match pod {
            Some(p) => Some(self.selector(p, &join(path, "podSelector"))?),
            None => None,
        };
        let ns_sel = match nsel {
            Some(n) => Some(self.selector(n, &join(path, "namespaceSelector"))?),
            None => None,
        };
        let sel = match (pod_sel, ns_sel) {
            (None, None) => {
                self.err(path, "a peer needs podSelector, namespaceSelector or ipBlock");
                return None;
            }
            (Some(p), None) => p.with_label(POD_NAMESPACE_LABEL, ns),
            (p, Some(n)) => {
                let mut s = n.with_key_prefix(NAMESPACE_LABELS_PREFIX);
                s.match_expressions.push(Requirement {
                    key: POD_NAMESPACE_LABEL.to_owned(),
                    operator: Operator::Exists,
                    values: Vec::new(),
                });
                match p {
                    Some(p) => s.and(&p),
                    None => s,
                }
            }
        };
        Some(Peer { path: path.to_owned(), kind: PeerKind::Selector(std::sync::Arc::new(sel)) })
    }
}

/// Cilium's namespace scoping: in a namespaced policy a selector that does not name
/// `io.kubernetes.pod.namespace` itself only selects endpoints of the policy's namespace.
fn scope(sel: LabelSelector, policy: &Policy) -> LabelSelector {
    match (&policy.namespace, policy.kind.is_namespaced()) {
        (Some(ns), true) if !sel.mentions_key(POD_NAMESPACE_LABEL) => sel.with_label(POD_NAMESPACE_LABEL, ns),
        _ => sel,
    }
}
