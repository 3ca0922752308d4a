//! Names of everything a lab creates. Every name starts with `myl-<lab>-`, so
//! several labs coexist; names too long are truncated and suffixed with a hash
//! of the full name, so they stay unique.

use crate::error::{LabError, Result};

/// Longest lab name.
pub const MAX_LAB_NAME: usize = 12;
/// Longest network namespace name the lab creates.
pub const MAX_NETNS_NAME: usize = 48;
/// Node name reserved for the fabric.
pub const FABRIC: &str = "fab";
/// Node name reserved for the kvstore's namespace (and its directory in the lab's state).
pub const KVSTORE: &str = "kv";

/// Check a lab name: `[a-z0-9-]`, at most 12 characters, starting with a letter or digit.
pub fn check_lab_name(name: &str) -> Result<()> {
    let bad = |message: &str| Err(LabError::BadLabName { name: name.to_owned(), message: message.to_owned() });
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name.len() > MAX_LAB_NAME {
        return bad(&format!("is longer than {MAX_LAB_NAME} characters"));
    }
    if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return bad("may only contain lower-case letters, digits and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("must start and end with a letter or digit");
    }
    Ok(())
}

/// FNV-1a, 64 bit: a stable hash for name suffixes (no dependency, same on every build).
#[must_use]
pub fn fnv1a(data: &str) -> u64 {
    data.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// `name` if short enough, else a prefix of it, `-`, and 8 hex digits of its hash.
#[must_use]
pub fn shorten(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    let hash = format!("{:08x}", fnv1a(name) & 0xffff_ffff);
    let keep = max.saturating_sub(hash.len() + 1);
    let prefix: String = name.chars().take(keep).collect();
    format!("{}-{hash}", prefix.trim_end_matches('-'))
}

#[must_use]
pub fn node_netns(lab: &str, node: &str) -> String {
    shorten(&format!("myl-{lab}-{node}"), MAX_NETNS_NAME)
}

#[must_use]
pub fn fabric_netns(lab: &str) -> String {
    format!("myl-{lab}-{FABRIC}")
}

/// The namespace the lab's etcd members run in, wired to the fabric's underlay.
#[must_use]
pub fn kvstore_netns(lab: &str) -> String {
    format!("myl-{lab}-{KVSTORE}")
}

#[must_use]
pub fn external_netns(lab: &str, ext: &str) -> String {
    shorten(&format!("myl-{lab}-x-{ext}"), MAX_NETNS_NAME)
}

#[must_use]
pub fn pod_netns(lab: &str, namespace: &str, pod: &str) -> String {
    shorten(&format!("myl-{lab}-p-{namespace}-{pod}"), MAX_NETNS_NAME)
}

/// CNI_CONTAINERID of a pod.
#[must_use]
pub fn container_id(lab: &str, namespace: &str, pod: &str) -> String {
    shorten(&format!("myl-{lab}-{namespace}-{pod}"), 64)
}

/// Path of a named netns as `ip netns add` creates it.
#[must_use]
pub fn netns_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(NETNS_DIR).join(name)
}

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn lab_names() {
        for ok in ["myelin", "t1", "a-b", "abcdefghijkl"] {
            check_lab_name(ok).unwrap();
        }
        for bad in ["", "abcdefghijklm", "My", "a_b", "-a", "a-", "a/b"] {
            assert!(check_lab_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn short_names_are_kept_and_long_ones_hashed_within_the_limit() {
        assert_eq!(pod_netns("lab", "prod", "db"), "myl-lab-p-prod-db");
        let long = pod_netns("abcdefghijkl", &"n".repeat(63), &"p".repeat(63));
        assert!(long.len() <= MAX_NETNS_NAME, "{long}");
        assert!(long.starts_with("myl-abcdefghijkl-p-"), "{long}");
        let other = pod_netns("abcdefghijkl", &"n".repeat(63), &format!("{}q", "p".repeat(62)));
        assert_ne!(long, other, "truncated names stay unique");
        assert_eq!(long, pod_netns("abcdefghijkl", &"n".repeat(63), &"p".repeat(63)), "stable");
    }

    #[test]
    fn names_of_different_labs_differ() {
        assert_ne!(node_netns("a", "n1"), node_netns("b", "n1"));
        assert_ne!(fabric_netns("a"), node_netns("a", "n1"));
        assert_ne!(external_netns("a", "n1"), node_netns("a", "n1"));
        assert_ne!(kvstore_netns("a"), kvstore_netns("b"));
        assert_eq!(kvstore_netns("abcdefghijkl"), "myl-abcdefghijkl-kv");
    }
}
