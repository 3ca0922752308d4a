//! Semantic checks shared by the parser (which reports precise field paths while decoding) and
//! [`Policy::validate`] (for policies built in code).

use std::net::IpAddr;

use ipnet::Ipv4Net;

use crate::error::{Issue, PolicyError};
use crate::model::{PeerKind, Policy, PolicyKind, PortMatch, PortSpec, Protocol, Verdict};

/// Parses `a.b.c.d/n` or a bare `a.b.c.d` (a /32). Host bits are cleared.
///
/// # Errors
/// A message for anything else (IPv6 is not supported yet).
pub fn parse_cidr(s: &str) -> Result<Ipv4Net, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<Ipv4Net>() {
        return Ok(n.trunc());
    }
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => return Ok(Ipv4Net::from(a)),
        Ok(IpAddr::V6(_)) => return Err(format!("{s:?}: IPv6 is not supported yet")),
        Err(_) => {}
    }
    if s.parse::<ipnet::Ipv6Net>().is_ok() {
        return Err(format!("{s:?}: IPv6 is not supported yet"));
    }
    Err(format!("{s:?} is not a valid CIDR (like 10.0.0.0/8)"))
}

/// Why `except` is not a valid exception of `cidr`.
#[must_use]
pub fn except_problem(cidr: Ipv4Net, except: Ipv4Net) -> Option<String> {
    (!cidr.contains(&except)).then(|| format!("{except} is not inside cidr {cidr}"))
}

/// Whether `name` is a valid named port (IANA service name: 1-15 characters of lowercase
/// letters, digits and `-`, at least one letter, no leading, trailing or double `-`).
#[must_use]
pub fn is_valid_port_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// Problems of a port match, as (field path, message).
#[must_use]
pub fn port_problems(pm: &PortMatch) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let port_path = if matches!(pm.protocol, Protocol::Icmp | Protocol::Icmpv6) {
        format!("{}.type", pm.path)
    } else {
        format!("{}.port", pm.path)
    };
    let end_path = format!("{}.endPort", pm.path);
    match (&pm.port, pm.protocol) {
        (PortSpec::Number(t), Protocol::Icmp | Protocol::Icmpv6) => {
            if !(0..=255).contains(t) {
                out.push((port_path, format!("{t} is not an ICMP type (0-255)")));
            }
        }
        (PortSpec::Number(p), _) => {
            if !(1..=65535).contains(p) {
                out.push((port_path, format!("{p} is not a port number (1-65535)")));
            }
        }
        (PortSpec::Named(n), _) => {
            if !is_valid_port_name(n) {
                out.push((
                    port_path,
                    format!(
                        "{n:?} is not a port number or a valid port name (up to 15 lowercase \
                         letters, digits and '-', with at least one letter)"
                    ),
                ));
            }
        }
        (PortSpec::All, _) => {}
    }
    if let Some(end) = pm.end_port {
        match &pm.port {
            PortSpec::Named(_) => out.push((end_path, "endPort cannot be used with a named port".to_owned())),
            PortSpec::All => out.push((end_path, "endPort needs a port".to_owned())),
            PortSpec::Number(p) => {
                if !(1..=65535).contains(&end) {
                    out.push((end_path, format!("{end} is not a port number (1-65535)")));
                } else if end < *p {
                    out.push((end_path, format!("endPort {end} is below port {p}")));
                }
            }
        }
    }
    out
}

/// ICMP type numbers by Cilium's names.
#[must_use]
pub fn icmp_type_by_name(name: &str, protocol: Protocol) -> Option<u8> {
    if let Ok(n) = name.parse::<u8>() {
        return Some(n);
    }
    let v4: &[(&str, u8)] = &[
        ("EchoReply", 0),
        ("DestinationUnreachable", 3),
        ("Redirect", 5),
        ("Echo", 8),
        ("EchoRequest", 8),
        ("RouterAdvertisement", 9),
        ("RouterSelection", 10),
        ("TimeExceeded", 11),
        ("ParameterProblem", 12),
        ("Timestamp", 13),
        ("TimestampReply", 14),
    ];
    let v6: &[(&str, u8)] = &[
        ("DestinationUnreachable", 1),
        ("PacketTooBig", 2),
        ("TimeExceeded", 3),
        ("ParameterProblem", 4),
        ("EchoRequest", 128),
        ("EchoReply", 129),
        ("RouterSolicitation", 133),
        ("RouterAdvertisement", 134),
        ("NeighborSolicitation", 135),
        ("NeighborAdvertisement", 136),
    ];
    let table = if protocol == Protocol::Icmpv6 { v6 } else { v4 };
    table.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Why `name` is not a DNS subdomain (Kubernetes object names).
#[must_use]
pub fn dns_subdomain_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("is empty");
    }
    if name.len() > 253 {
        return Some("is longer than 253 characters");
    }
    let ok = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    (!ok).then_some("is not a valid name (lowercase letters, digits, '-' and '.')")
}

/// Why `name` is not a DNS label (namespace names).
#[must_use]
pub fn dns_label_problem(name: &str) -> Option<&'static str> {
    if name.len() > 63 {
        return Some("is longer than 63 characters");
    }
    match dns_subdomain_problem(name) {
        Some(p) => Some(p),
        None if name.contains('.') => Some("is not a valid namespace name (no '.')"),
        None => None,
    }
}

/// Every problem of a policy built in code, as (field path, message).
#[must_use]
pub fn policy_issues(policy: &Policy) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(p) = dns_subdomain_problem(&policy.name) {
        out.push(("metadata.name".to_owned(), format!("{:?} {p}", policy.name)));
    }
    match (&policy.namespace, policy.kind.is_namespaced()) {
        (None, true) => out
            .push(("metadata.namespace".to_owned(), format!("{} is namespaced: a namespace is required", policy.kind))),
        (Some(_), false) => out.push((
            "metadata.namespace".to_owned(),
            format!("{} is cluster-scoped: remove metadata.namespace", policy.kind),
        )),
        (Some(ns), true) => {
            if let Some(p) = dns_label_problem(ns) {
                out.push(("metadata.namespace".to_owned(), format!("{ns:?} {p}")));
            }
        }
        (None, false) => {}
    }
    for spec in &policy.specs {
        for (i, r) in spec.subject.match_expressions.iter().enumerate() {
            if let Some(p) = r.problem() {
                out.push((format!("{}.endpointSelector.matchExpressions[{i}]", spec.path), p));
            }
        }
        for rule in &spec.rules {
            if policy.kind == PolicyKind::NetworkPolicy && rule.verdict == Verdict::Deny {
                out.push((
                    rule.section.clone(),
                    "a Kubernetes NetworkPolicy has allow rules only: express denies as a CiliumNetworkPolicy"
                        .to_owned(),
                ));
            }
            for peer in rule.peers.iter().flatten() {
                match &peer.kind {
                    PeerKind::Selector(sel) => {
                        for (i, r) in sel.match_expressions.iter().enumerate() {
                            if let Some(p) = r.problem() {
                                out.push((format!("{}.matchExpressions[{i}]", peer.path), p));
                            }
                        }
                    }
                    PeerKind::Cidr { cidr, except } => {
                        for (i, e) in except.iter().enumerate() {
                            if let Some(p) = except_problem(*cidr, *e) {
                                out.push((format!("{}.except[{i}]", peer.path), p));
                            }
                        }
                    }
                    PeerKind::Entity(_) => {}
                }
            }
            for pm in rule.ports.iter().flatten() {
                out.extend(port_problems(pm));
            }
        }
    }
    out
}

impl Policy {
    /// Checks a policy (typically one built in code; parsed policies are already checked).
    ///
    /// # Errors
    /// [`PolicyError::Invalid`] listing every problem.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let issues: Vec<Issue> = policy_issues(self)
            .into_iter()
            .map(|(path, message)| Issue {
                file: self.file.clone(),
                document: self.document,
                policy: Some(self.label()),
                path,
                message,
            })
            .collect();
        if issues.is_empty() {
            Ok(())
        } else {
            Err(PolicyError::Invalid(issues))
        }
    }
}
