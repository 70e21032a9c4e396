//! NoCloud seeds: the `meta-data`, `user-data` and `network-config` files of each node.
//!
//! They follow what stock cloud-init (Debian and Ubuntu cloud images) accepts: network-config v2
//! matching the NIC by MAC address (cloud images call it `ens3` or `enp1s0`, never `eth0`), a
//! static address and a default route; `#cloud-config` user-data that installs the key for the
//! configured user, and sets `disable_root: false` when that user is root (cloud-init otherwise
//! plants a refusing command in root's `authorized_keys`). The project's test guest applies these
//! files by the same rules, so a seed that a real image would reject fails the tests too.

use std::fmt::Write as _;

use crate::topology::{ClusterSpec, NodeSpec};

/// The three files of a NoCloud seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFiles {
    /// `meta-data`.
    pub meta_data: String,
    /// `user-data`.
    pub user_data: String,
    /// `network-config`.
    pub network_config: String,
}

impl SeedFiles {
    /// A digest of the three files (hex SHA-256), to tell whether a seed must be rebuilt.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [&self.meta_data, &self.user_data, &self.network_config] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// A public key that cannot be written safely into user-data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Unusable SSH public key: expected '<algorithm> <base64> [comment]'")]
pub struct BadPublicKey;

/// Reduces an OpenSSH public key line to `algorithm base64 vmcluster` after checking its shape.
pub fn normalize_public_key(line: &str) -> Result<String, BadPublicKey> {
    let mut parts = line.split_whitespace();
    let (Some(algo), Some(b64)) = (parts.next(), parts.next()) else {
        return Err(BadPublicKey);
    };
    let algo_ok = !algo.is_empty()
        && algo
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '@' | '.'));
    let b64_ok = !b64.is_empty()
        && b64
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='));
    if !(algo_ok && b64_ok) {
        return Err(BadPublicKey);
    }
    Ok(format!("{algo} {b64} vmcluster"))
}

/// Builds the seed of `node`. `public_key` must come from [`normalize_public_key`].
pub fn seed_files(spec: &ClusterSpec, node: &NodeSpec, public_key: &str) -> SeedFiles {
    let meta_data = format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        crate::names::instance_id(&spec.name, &node.name),
        node.name
    );
    let mut user_data = format!("#cloud-config\nhostname: {}\n", node.name);
    if spec.ssh.user == "root" {
        let _ = write!(
            user_data,
            "disable_root: false\nssh_pwauth: false\nssh_authorized_keys:\n  - {public_key}\n"
        );
    } else {
        let _ = write!(
            user_data,
            "ssh_pwauth: false\nusers:\n  - default\n  - name: {}\n    shell: /bin/sh\n    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    lock_passwd: true\n    ssh_authorized_keys:\n      - {public_key}\n",
            spec.ssh.user
        );
    }
    let network_config = format!(
        "version: 2\nethernets:\n  nic0:\n    match:\n      macaddress: \"{}\"\n    addresses:\n      - {}/{}\n    routes:\n      - to: 0.0.0.0/0\n        via: {}\n",
        node.mac,
        node.ip,
        spec.network.subnet.prefix_len(),
        spec.network.gateway
    );
    SeedFiles {
        meta_data,
        user_data,
        network_config,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_keys_are_checked_and_normalized() {
        assert_eq!(
            normalize_public_key("ssh-ed25519 AAAAC3Nza+/= me@host\n").unwrap(),
            "ssh-ed25519 AAAAC3Nza+/= vmcluster"
        );
        assert!(normalize_public_key("ssh-ed25519").is_err());
        assert!(normalize_public_key("ssh-ed25519 AAA\"; rm -rf /").is_err());
        assert!(normalize_public_key("").is_err());
    }
}
