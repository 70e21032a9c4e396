//! Cluster-wide snapshots, the pure parts: name rules, the snapshot XML we send libvirt and the
//! little we read back, what a revert does to each node, and the tools' result types.
//!
//! A cluster snapshot is one libvirt *internal* snapshot per node, all with the same name
//! (libvirt 9.0 cannot revert external snapshots). On a running node an internal snapshot always
//! holds the guest's memory (libvirt refuses a disk-only internal snapshot of a running VM); on
//! a shut-off node it holds the disks only. Whether a revert resumes a node from memory or
//! cold-boots it from the snapshot's disks is therefore our decision, made per node from the
//! state the node was in and the kind the user asked for ([`revert_action`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::names::{self, NameError};
use crate::state::DomainState;
use crate::view::ClusterStatus;

/// Longest snapshot name accepted.
pub const MAX_SNAPSHOT_NAME: usize = 64;
/// Longest description accepted, in characters.
pub const MAX_DESCRIPTION: usize = 1024;

/// Checks a snapshot name: it becomes a libvirt object name, a qcow2 snapshot tag and part of
/// journal ids, so it gets the strict charset of every other name (letters, digits, `-`, `_`,
/// `.`, starting with a letter or digit) and at most [`MAX_SNAPSHOT_NAME`] characters.
pub fn check_snapshot_name(name: &str) -> Result<(), NameError> {
    names::check_name(name, MAX_SNAPSHOT_NAME)
}

/// Checks a description: bounded, and no control characters other than newline and tab (it
/// is escaped into XML, but a terminal should not get escape sequences back from a listing).
pub fn check_description(d: &str) -> Result<(), String> {
    let len = d.chars().count();
    if len > MAX_DESCRIPTION {
        return Err(format!(
            "is {len} characters long, the limit is {MAX_DESCRIPTION}"
        ));
    }
    if let Some(c) = d
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\t'))
    {
        return Err(format!("contains the control character {c:?}"));
    }
    Ok(())
}

/// The real snapshot name behind `requested`: a logical name from the topology's `snapshots:`
/// map (`baseline: clean-boot`) resolves to its snapshot name; any other name is itself.
pub fn resolve_name(logical: &BTreeMap<String, String>, requested: &str) -> String {
    logical
        .get(requested)
        .cloned()
        .unwrap_or_else(|| requested.to_owned())
}

/// The logical names that point at `real`.
pub fn logical_names(logical: &BTreeMap<String, String>, real: &str) -> Vec<String> {
    logical
        .iter()
        .filter(|(_, r)| r.as_str() == real)
        .map(|(l, _)| l.clone())
        .collect()
}

/// The `<domainsnapshot>` XML for creating an internal snapshot named `name`. The name must
/// have passed [`check_snapshot_name`]; both texts are escaped anyway.
pub fn snapshot_xml(name: &str, description: Option<&str>) -> String {
    let esc = |s: &str| quick_xml::escape::escape(s).into_owned();
    let mut x = format!("<domainsnapshot>\n  <name>{}</name>\n", esc(name));
    if let Some(d) = description {
        x.push_str(&format!("  <description>{}</description>\n", esc(d)));
    }
    x.push_str("</domainsnapshot>\n");
    x
}

/// What libvirt says about one node's snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: Option<String>,
    /// The domain's state when it was taken.
    pub state: DomainState,
    /// When it was taken (seconds since the Unix epoch).
    pub created_s: Option<i64>,
    /// Whether it holds the guest's memory.
    pub has_memory: bool,
}

/// Reads a `virDomainSnapshotGetXMLDesc` document (top-level fields only: the embedded
/// `<domain>` has its own `<name>`).
pub fn parse_snapshot_xml(xml: &str) -> Option<SnapshotMeta> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let root = doc.root_element();
    if root.tag_name().name() != "domainsnapshot" {
        return None;
    }
    let child = |tag: &str| {
        root.children()
            .find(|c| c.is_element() && c.tag_name().name() == tag)
    };
    let text = |tag: &str| child(tag).and_then(|c| c.text()).map(str::to_owned);
    let state = match text("state").as_deref() {
        Some("running" | "blocked") => DomainState::Running,
        Some("paused") => DomainState::Paused,
        Some("shutoff" | "disk-snapshot") => DomainState::ShutOff,
        Some("shutdown") => DomainState::ShuttingDown,
        Some("crashed") => DomainState::Crashed,
        Some("pmsuspended") => DomainState::PmSuspended,
        _ => DomainState::Unknown,
    };
    let memory = child("memory").and_then(|m| m.attribute("snapshot"));
    let has_memory = match memory {
        Some(m) => m != "no",
        // Old libvirt omits <memory>: an active domain's internal snapshot has memory.
        None => state.is_active(),
    };
    Some(SnapshotMeta {
        name: text("name")?,
        description: text("description"),
        state,
        created_s: text("creationTime").and_then(|t| t.trim().parse().ok()),
        has_memory,
    })
}

/// What a node's snapshot restores.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// Memory and disks: a revert resumes the node where it was (processes, clocks, TCP state),
    /// without a reboot.
    Memory,
    /// Disks only: a revert boots the node from the snapshot's disk state.
    Disk,
}

/// The kind of one node's snapshot: memory when the user asked for it and the node was running
/// (or paused) at the cut, so its memory exists; disks only otherwise.
pub fn node_kind(state_at_cut: DomainState, include_memory: bool) -> SnapshotKind {
    if include_memory && state_at_cut.is_active() {
        SnapshotKind::Memory
    } else {
        SnapshotKind::Disk
    }
}

/// What a revert does to one node.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RevertAction {
    /// Memory and disks restored; the node runs on from the snapshot point (no reboot).
    ResumedFromMemory,
    /// Disks restored; the node was powered off and booted from them.
    Rebooted,
    /// Disks restored; the node is left shut off (it was off at the cut, or the caller asked
    /// for no restart).
    LeftOff,
}

/// What reverting one node does: a memory snapshot of a node that ran at the cut resumes it
/// (when the caller wants the node back up); a node that ran at the cut boots from the disk
/// state otherwise; a node that was off at the cut (or every node, without `restart_after`)
/// ends shut off with its disks restored.
pub fn revert_action(
    state_at_cut: DomainState,
    kind: SnapshotKind,
    restart_after: bool,
) -> RevertAction {
    match (restart_after, state_at_cut.is_active(), kind) {
        (false, _, _) | (true, false, _) => RevertAction::LeftOff,
        (true, true, SnapshotKind::Memory) => RevertAction::ResumedFromMemory,
        (true, true, SnapshotKind::Disk) => RevertAction::Rebooted,
    }
}

/// One node's share of a cluster snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeSnapshotInfo {
    /// Node name.
    pub node: String,
    /// libvirt domain name.
    pub domain: String,
    /// Whether libvirt holds this node's snapshot.
    pub present: bool,
    /// What reverting restores on this node (`memory`: resumes without reboot; `disk`: boots
    /// from the snapshot's disks). Absent when the snapshot is not present.
    pub kind: Option<SnapshotKind>,
    /// The node's domain state at the cut (before the cut's pause).
    pub domain_state: Option<DomainState>,
    /// When libvirt took it (RFC 3339, UTC).
    pub created_at: Option<String>,
    /// Bytes of guest memory stored inside the node's disk for it (qcow2 `vm-state-size`; 0 for
    /// a disk-only snapshot); absent when the image could not be read.
    pub vm_state_bytes: Option<u64>,
}

/// A cluster snapshot: the same name on every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SnapshotInfo {
    /// Cluster name.
    pub cluster_name: String,
    /// The snapshot's (real) name, as libvirt knows it.
    pub snapshot_name: String,
    /// Logical names from the topology's `snapshots:` map that point at it.
    pub logical_names: Vec<String>,
    /// Description given at creation.
    pub description: Option<String>,
    /// Whether memory was requested at creation (`include_memory`).
    pub include_memory: bool,
    /// When the cut was taken (RFC 3339, UTC; the earliest node's time).
    pub created_at: Option<String>,
    /// Present on every node and its creation finished: only a complete snapshot can be
    /// reverted.
    pub complete: bool,
    /// Whether vmcluster created it (only those can be deleted through vmcluster).
    pub created_by_vmcluster: bool,
    /// The operation that created it.
    pub op_id: Option<String>,
    /// Per-node metadata, in topology order.
    pub nodes: Vec<NodeSnapshotInfo>,
}

/// The answer of `snapshot_list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SnapshotList {
    /// Cluster name.
    pub cluster_name: String,
    /// Snapshots, oldest first.
    pub snapshots: Vec<SnapshotInfo>,
}

/// What a revert did to one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeRevert {
    /// Node name.
    pub node: String,
    /// What happened to it.
    pub action: RevertAction,
    /// Attempts it took (a failed revert is retried before the call gives up).
    pub attempts: u32,
}

/// The answer of `snapshot_revert`: the cluster's status afterwards (seed 000's `ClusterStatus`
/// fields) plus what happened to each node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SnapshotRevertResult {
    /// The cluster after the revert.
    #[serde(flatten)]
    pub status: ClusterStatus,
    /// The snapshot reverted to (its real name).
    pub snapshot_name: String,
    /// Per-node actions, in topology order.
    pub reverted: Vec<NodeRevert>,
}

/// One node's outcome in `snapshot_delete`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DeleteStatus {
    /// Its snapshot was deleted (data and metadata).
    Deleted,
    /// It had no snapshot of that name.
    Absent,
    /// Deleting failed (see `error`).
    Failed,
}

/// One node's share of `snapshot_delete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeDelete {
    /// Node name.
    pub node: String,
    /// What happened.
    pub status: DeleteStatus,
    /// Error code when it failed.
    pub error_code: Option<crate::ErrorCode>,
    /// Error message when it failed.
    pub error: Option<String>,
}

/// The answer of `snapshot_delete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SnapshotDeleteResult {
    /// Cluster name.
    pub cluster_name: String,
    /// The snapshot's (real) name.
    pub snapshot_name: String,
    /// Per-node outcomes, in topology order.
    pub nodes: Vec<NodeDelete>,
    /// Whether no node still holds it.
    pub all_deleted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_anything_that_could_escape_xml_or_paths() {
        for bad in [
            "",
            "a/b",
            "../x",
            ".hidden",
            "-rf",
            "a b",
            "a'b",
            "a\"b",
            "a<b",
            "a&b",
            "a\nb",
            "é",
            &"x".repeat(65),
        ] {
            assert!(check_snapshot_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["clean-boot", "s1", "v1.2_rc", &"x".repeat(64)] {
            assert!(check_snapshot_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn descriptions_are_bounded_and_free_of_control_characters() {
        assert!(check_description("before the upgrade\n\tsecond line <&>").is_ok());
        assert!(check_description("a\u{1b}[31m").is_err());
        assert!(check_description(&"d".repeat(MAX_DESCRIPTION)).is_ok());
        assert!(check_description(&"d".repeat(MAX_DESCRIPTION + 1)).is_err());
    }

    #[test]
    fn xml_escapes_the_description() {
        let x = snapshot_xml("s1", Some("<x>&'\""));
        assert!(x.contains("<name>s1</name>"));
        assert!(x.contains("&lt;x&gt;&amp;"), "{x}");
        let back = parse_snapshot_xml(&x).unwrap();
        assert_eq!(back.description.as_deref(), Some("<x>&'\""));
    }

    #[test]
    fn logical_names_resolve_and_real_names_pass_through() {
        let m: BTreeMap<String, String> = [("baseline".into(), "clean-boot".into())].into();
        assert_eq!(resolve_name(&m, "baseline"), "clean-boot");
        assert_eq!(resolve_name(&m, "clean-boot"), "clean-boot");
        assert_eq!(resolve_name(&m, "other"), "other");
        assert_eq!(logical_names(&m, "clean-boot"), ["baseline"]);
        assert!(logical_names(&m, "other").is_empty());
    }

    #[test]
    fn parses_libvirt_snapshot_documents() {
        let running = "<domainsnapshot>\n  <name>mem1</name>\n  <state>paused</state>\n  <creationTime>1795477999</creationTime>\n  <memory snapshot='internal'/>\n  <disks><disk name='vda' snapshot='internal'/><disk name='vdb' snapshot='no'/></disks>\n  <domain type='qemu'><name>exp1</name></domain>\n</domainsnapshot>";
        let m = parse_snapshot_xml(running).unwrap();
        assert_eq!(
            m,
            SnapshotMeta {
                name: "mem1".into(),
                description: None,
                state: DomainState::Paused,
                created_s: Some(1795477999),
                has_memory: true,
            }
        );
        let off = "<domainsnapshot><name>off1</name><description>d</description><state>shutoff</state><creationTime>5</creationTime><memory snapshot='no'/><domain><name>x</name></domain></domainsnapshot>";
        let m = parse_snapshot_xml(off).unwrap();
        assert_eq!(
            (m.name.as_str(), m.state, m.has_memory),
            ("off1", DomainState::ShutOff, false)
        );
        assert_eq!(parse_snapshot_xml("<domain/>"), None);
        assert_eq!(parse_snapshot_xml("not xml"), None);
    }

    #[test]
    fn kinds_and_revert_actions_cover_every_case() {
        use DomainState::{Paused, Running, ShutOff};
        use RevertAction::*;
        use SnapshotKind::*;
        let table = [
            // (state at cut, include_memory, restart_after) -> (kind, action)
            ((Running, true, true), (Memory, ResumedFromMemory)),
            ((Paused, true, true), (Memory, ResumedFromMemory)),
            ((Running, false, true), (Disk, Rebooted)),
            ((ShutOff, true, true), (Disk, LeftOff)),
            ((ShutOff, false, true), (Disk, LeftOff)),
            ((Running, true, false), (Memory, LeftOff)),
            ((Running, false, false), (Disk, LeftOff)),
        ];
        for ((state, mem, restart), (kind, action)) in table {
            let k = node_kind(state, mem);
            assert_eq!(k, kind, "{state:?} {mem}");
            assert_eq!(
                revert_action(state, k, restart),
                action,
                "{state:?} {mem} {restart}"
            );
        }
    }
}
