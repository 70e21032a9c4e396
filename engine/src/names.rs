//! Deterministic names and identities derived from `(cluster, node)`.
//!
//! Everything the server creates on the host is named from the cluster and node names alone, so a
//! restarted server (or a re-run `cluster_define`) finds exactly what it made before: the domain
//! name, its UUID, its MAC address and its tap device are pure functions of the two names.

use sha2::{Digest, Sha256};

/// Longest cluster name accepted (keeps domain names and paths short).
pub const MAX_CLUSTER_NAME: usize = 40;
/// Longest node name accepted.
pub const MAX_NODE_NAME: usize = 32;
/// Linux limit on interface names (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

fn digest(cluster: &str, node: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(cluster.as_bytes());
    h.update(b":");
    h.update(node.as_bytes());
    h.finalize().into()
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("is empty")]
    Empty,
    /// The name is longer than allowed.
    #[error("is {len} characters long, the limit is {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name holds a character that is unsafe in libvirt names, XML or file paths.
    #[error("contains {ch:?}; use letters, digits, '-', '_' or '.'")]
    BadChar {
        /// The first offending character.
        ch: char,
    },
    /// The name must start with a letter or digit.
    #[error("must start with a letter or a digit")]
    BadStart,
}

/// Checks a name that becomes part of libvirt object names and file paths.
///
/// Allowed: ASCII letters, digits, `-`, `_`, `.`; first character alphanumeric (so `.` and `..`
/// and leading dashes, which read as options, are impossible).
pub fn check_name(name: &str, max: usize) -> Result<(), NameError> {
    let first = name.chars().next().ok_or(NameError::Empty)?;
    if name.len() > max {
        return Err(NameError::TooLong {
            len: name.len(),
            max,
        });
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(NameError::BadChar { ch });
    }
    if !first.is_ascii_alphanumeric() {
        return Err(NameError::BadStart);
    }
    Ok(())
}

/// Checks a Linux interface (bridge) name.
pub fn check_ifname(name: &str) -> Result<(), NameError> {
    check_name(name, MAX_IFNAME)?;
    if name.contains('.') {
        return Err(NameError::BadChar { ch: '.' });
    }
    Ok(())
}

/// The libvirt domain name of a node (seed 000's `{cluster}_{node}` convention).
pub fn domain_name(cluster: &str, node: &str) -> String {
    format!("{cluster}_{node}")
}

/// A fixed UUID for the node's domain, so "define if absent" is idempotent across restarts.
pub fn domain_uuid(cluster: &str, node: &str) -> uuid::Uuid {
    let d = digest(cluster, node);
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_custom_bytes(b).into_uuid()
}

/// A deterministic locally administered MAC in QEMU's `52:54:00` range.
pub fn mac_address(cluster: &str, node: &str) -> String {
    let d = digest(cluster, node);
    format!("52:54:00:{:02x}:{:02x}:{:02x}", d[16], d[17], d[18])
}

/// The host-side tap device name of the node's NIC (at most 15 characters, never `vnet*`).
pub fn tap_name(cluster: &str, node: &str) -> String {
    let d = digest(cluster, node);
    format!("vmc{}", hex::encode(&d[20..24]))
}

/// Whether `name` has the shape of a node tap device (so a bridge may not use it).
pub fn is_tap_name(name: &str) -> bool {
    name.len() == 11 && name.starts_with("vmc") && name[3..].chars().all(|c| c.is_ascii_hexdigit())
}

/// The NoCloud instance id: a pure function of the names, so a re-defined node keeps it and
/// cloud-init does not re-run its first-boot modules on a kept overlay.
pub fn instance_id(cluster: &str, node: &str) -> String {
    let d = digest(cluster, node);
    format!("vmc-{cluster}-{node}-{}", hex::encode(&d[24..28]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(check_name("web-0", 32), Ok(()));
        assert_eq!(check_name("", 32), Err(NameError::Empty));
        assert_eq!(
            check_name("../etc", 32),
            Err(NameError::BadChar { ch: '/' })
        );
        assert_eq!(check_name("..", 32), Err(NameError::BadStart));
        assert_eq!(check_name("-rf", 32), Err(NameError::BadStart));
        assert_eq!(check_name("a'b", 32), Err(NameError::BadChar { ch: '\'' }));
        assert_eq!(check_name("a<b", 32), Err(NameError::BadChar { ch: '<' }));
        assert!(matches!(
            check_name(&"x".repeat(33), 32),
            Err(NameError::TooLong { .. })
        ));
        assert!(check_ifname("virbr-example0").is_ok());
        assert!(check_ifname("virbr-example-00").is_err());
    }

    #[test]
    fn identities_are_deterministic_and_distinct() {
        assert_eq!(mac_address("c", "n1"), mac_address("c", "n1"));
        assert_ne!(mac_address("c", "n1"), mac_address("c", "n2"));
        assert_ne!(mac_address("c1", "n"), mac_address("c2", "n"));
        assert_eq!(domain_uuid("c", "n1"), domain_uuid("c", "n1"));
        let tap = tap_name("a-rather-long-cluster-name", "node-with-long-name");
        assert!(tap.len() <= MAX_IFNAME && !tap.starts_with("vnet"), "{tap}");
        assert!(mac_address("c", "n").starts_with("52:54:00:"));
    }
}
