//! Fixtures shared by the engine's integration tests: seed 000's example topology and the host
//! facts every test validates it against.
//!
//! Each test binary uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use vmcluster_engine::topology::{
    ClusterSpec, DomainType, ExistingNetwork, HostFacts, Topology, TopologyError,
};

/// Seed 000's example topology, as committed in `tests/data/`.
pub const EXAMPLE_TOPOLOGY: &str = include_str!("../data/example-3node.yaml");

/// The server's default overlay directory in every test.
pub const OVERLAY_DIR: &str = "/var/lib/vmcluster/overlays";
/// The server's default SSH key in every test.
pub const SSH_KEY: &str = "/etc/vmcluster/ssh/vmcluster_id_ed25519";

/// A host where every file exists.
pub fn all_exist(_: &Path) -> bool {
    true
}

/// Host facts with the test defaults, the given file oracle and existing networks.
pub fn host<'a>(
    exists: &'a (dyn Fn(&Path) -> bool + Sync),
    networks: Vec<ExistingNetwork>,
) -> HostFacts<'a> {
    HostFacts {
        networks,
        exists,
        overlay_dir: PathBuf::from(OVERLAY_DIR),
        ssh_key_path: PathBuf::from(SSH_KEY),
        ssh_user: "root".to_owned(),
        domain_type: DomainType::Auto,
    }
}

/// Parses and validates `yaml` on a host where every file exists and no network exists.
pub fn validate(yaml: &str) -> Result<ClusterSpec, TopologyError> {
    Topology::from_yaml(yaml)?.validate(&host(&all_exist, Vec::new()))
}

/// The validated example topology (panics with the violations if it does not validate).
#[track_caller]
pub fn example_spec() -> ClusterSpec {
    validate(EXAMPLE_TOPOLOGY).unwrap_or_else(|e| panic!("the example must validate: {e}"))
}

/// `text` with each `(from, to)` applied once; `from` must occur exactly once, so an edit that
/// no longer matches the fixture fails loudly instead of silently testing the unchanged file.
#[track_caller]
pub fn patch(text: &str, edits: &[(&str, &str)]) -> String {
    let mut out = text.to_owned();
    for (from, to) in edits {
        let n = out.matches(from).count();
        assert_eq!(
            n, 1,
            "{from:?} occurs {n} times in the fixture, expected once"
        );
        out = out.replacen(from, to, 1);
    }
    out
}
