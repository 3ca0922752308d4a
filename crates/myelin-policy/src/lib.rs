//! Pure policy logic for Myelin: labels and selectors, security identities and the ipcache
//! model, CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy / Kubernetes NetworkPolicy
//! parsing with strict validation, the compiler to policy-map entries (see [`compile`] for the
//! exact key and lookup semantics the datapath implements), a reference evaluator and `explain`.
//!
//! No kernel, no I/O: inputs are strings and values, outputs are values.
#![forbid(unsafe_code)]

pub mod compile;
pub mod error;
pub mod explain;
pub mod identity;
pub mod labels;
pub mod matching;
pub mod model;
pub mod parse;
pub mod reference;
pub mod tree;
pub mod validate;

pub use compile::{
    compile, compile_for, evaluate, port_range_blocks, CompiledPolicy, DirectionPolicy, EndpointPolicy, Evaluation,
    PolicyEntry,
};
pub use error::{Issue, PolicyError};
pub use explain::{explain, DirectionExplanation, Explanation, FlowPeer, PodCidrStep};
pub use identity::{
    is_pod_in_cidr, is_workload, pod_in_cidr, pod_in_cidr_base, CidrIdentityAllocator, Identity, IdentityAllocator,
    IdentityError, IdentityTable, IpCache, ReservedIdentity, POD_IN_CIDR_FLAG,
};
pub use labels::{security_labels, LabelSelector, Labels, Operator, Requirement};
pub use matching::{Endpoint, EndpointId, NamedPort, PolicyInput};
pub use model::{
    share_selectors, Direction, Entity, Peer, PeerKind, Policy, PolicyKind, PolicyRule, PolicySpec, PortMatch,
    PortSpec, Protocol, RuleRef, Verdict,
};
pub use parse::{parse_documents, parse_files};
pub use reference::{reference_verdict, ReferenceResult, RuleMatch};

use std::collections::BTreeSet;

/// Every CIDR prefix the policies use (cidrs and excepts): allocate a CIDR identity for each so
/// the ipcache resolves addresses inside them.
#[must_use]
pub fn cidr_prefixes(policies: &[Policy]) -> BTreeSet<ipnet::Ipv4Net> {
    let mut out = BTreeSet::new();
    for p in policies {
        for s in &p.specs {
            for r in &s.rules {
                for peer in r.peers.iter().flatten() {
                    if let PeerKind::Cidr { cidr, except } = &peer.kind {
                        if cidr.prefix_len() > 0 {
                            out.insert(*cidr);
                        }
                        out.extend(except.iter().copied());
                    }
                }
            }
        }
    }
    out
}
