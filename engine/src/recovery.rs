//! How a restarted server settles operations the journal shows in flight: one fixed table.
//!
//! Restart runs in a fixed order, like libvirt's own daemon: load the journal (its projection),
//! rebuild the registry, let every node read its domain's live state from libvirt (the truth),
//! settle each unfinished operation by [`settle`], re-assert each cluster's network, and only
//! then accept calls.
//!
//! [`settle`] is a pure function of (operation kind, last step begun, that step's status), so
//! the table test below has one row per combination and the decision is never improvised:
//!
//! * **Roll back** operations that create things (`cluster_define`, `snapshot_create`): remove,
//!   newest first, every object the operation declared before creating it, then record
//!   `not_applied`. A cluster this operation first defined is forgotten again. Undo is "remove if
//!   present", so a crash in the middle of a rollback is settled by rolling back again.
//! * **Roll forward** operations whose every step is "make it so" and whose end state is what
//!   the caller asked (`cluster_destroy`, `cluster_start`, `cluster_stop`, `node_*`,
//!   `snapshot_delete`, `snapshot_revert` past its point of no return): run the remaining plan
//!   again without waiting for readiness, then record `applied`.
//! * **Declare indeterminate** what cannot be repeated or undone from the host (a command run
//!   over SSH, a file transfer): it may or may not have happened; the outcome says so, with why.
//! * Any other operation that began no step changed nothing: `not_applied`.

use serde::{Deserialize, Serialize};

/// The kinds of journaled operations, by tool name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OpKind {
    /// `cluster_define`.
    Define,
    /// `cluster_destroy`.
    Destroy,
    /// `cluster_start`.
    Start,
    /// `cluster_stop`.
    Stop,
    /// `node_crash`, `node_start`, `node_stop`, `node_reboot`.
    NodePower,
    /// `node_exec`, `node_exec_all`, `dmesg_mark`.
    Exec,
    /// `node_upload`, `node_download`.
    Transfer,
    /// `snapshot_create`.
    SnapshotCreate,
    /// `snapshot_revert`.
    SnapshotRevert,
    /// `snapshot_delete`.
    SnapshotDelete,
    /// Anything this build does not know (written by another version).
    Unknown,
}

impl OpKind {
    /// The kind of the tool named `tool`.
    pub fn of_tool(tool: &str) -> OpKind {
        match tool {
            "cluster_define" => OpKind::Define,
            "cluster_destroy" => OpKind::Destroy,
            "cluster_start" => OpKind::Start,
            "cluster_stop" => OpKind::Stop,
            "node_crash" | "node_start" | "node_stop" | "node_reboot" => OpKind::NodePower,
            "node_exec" | "node_exec_all" | "dmesg_mark" => OpKind::Exec,
            "node_upload" | "node_download" => OpKind::Transfer,
            "snapshot_create" => OpKind::SnapshotCreate,
            "snapshot_revert" => OpKind::SnapshotRevert,
            "snapshot_delete" => OpKind::SnapshotDelete,
            _ => OpKind::Unknown,
        }
    }

    /// Whether a failure of this kind in the running server is undone at once (a saga with
    /// compensations) rather than left for the caller to retry.
    pub fn undoes_on_failure(self) -> bool {
        matches!(self, OpKind::Define | OpKind::SnapshotCreate)
    }
}

/// Where the last step begun stands, as the journal shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Progress {
    /// No step began.
    NoStep,
    /// The step's intent is recorded, its outcome is not: it may or may not have happened.
    Started,
    /// The step succeeded (the process died before the next one began).
    Succeeded,
    /// The step failed (the process died before the command recorded its outcome).
    Failed,
    /// A rollback began and did not finish.
    RollingBack,
}

/// What restart does with an unfinished operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Settle {
    /// Nothing happened: record `not_applied`.
    NothingToDo,
    /// Undo what the operation declared, then record `not_applied`.
    RollBack,
    /// Run the rest of the plan, then record `applied`.
    RollForward,
    /// Record `indeterminate`: the host cannot tell.
    Indeterminate,
}

/// The fixed settlement table (see the module docs). `step` is the name of the last step
/// begun; it matters only where a kind has a point of no return.
pub fn settle(kind: OpKind, step: Option<&str>, progress: Progress) -> Settle {
    use OpKind::*;
    use Progress::*;
    match (kind, progress) {
        // A rollback in progress is always finished, whatever the kind.
        (_, RollingBack) => Settle::RollBack,
        (Exec | Transfer | Unknown, NoStep) => Settle::NothingToDo,
        (Exec | Transfer | Unknown, _) => Settle::Indeterminate,
        // A define records the cluster before its first step: even with no step begun there
        // may be a definition to forget.
        (Define | SnapshotCreate, _) => Settle::RollBack,
        // Revert: before any node was touched nothing changed; once one was reverted, the only
        // consistent end is every node reverted.
        (SnapshotRevert, NoStep) => Settle::NothingToDo,
        (SnapshotRevert, _) if step == Some("check_snapshot") => Settle::NothingToDo,
        (SnapshotRevert, _) => Settle::RollForward,
        (Destroy | Start | Stop | NodePower | SnapshotDelete, NoStep) => Settle::NothingToDo,
        (Destroy | Start | Stop | NodePower | SnapshotDelete, _) => Settle::RollForward,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OpKind::*;
    use Progress::*;
    use Settle::*;

    /// One row per (kind, step, status). Steps are those of each kind's plan (node-scoped ones
    /// stand for every node).
    #[test]
    fn settlement_table() {
        let define = [
            "ensure_dir",
            "ensure_network",
            "start_network",
            "ensure_extra_disks",
            "ensure_overlay",
            "ensure_seed",
            "define_domain",
        ];
        let destroy = [
            "stop_domain",
            "undefine_domain",
            "remove_node_files",
            "remove_overlay",
            "remove_network",
            "remove_dir",
        ];
        let start = ["start_network", "start_domain", "wait_ready"];
        let stop = ["stop_domain"];
        let node = ["stop_domain", "start_domain", "reboot_domain", "wait_ready"];
        let exec = ["exec"];
        let transfer = ["transfer"];
        let snap_create = ["pause_nodes", "take_snapshot", "resume_nodes"];
        let snap_revert = [
            "check_snapshot",
            "revert_snapshot",
            "start_domain",
            "wait_ready",
        ];
        let snap_delete = ["delete_snapshot"];
        let kinds: [(OpKind, &[&str], Settle); 10] = [
            (Define, &define, RollBack),
            (Destroy, &destroy, RollForward),
            (Start, &start, RollForward),
            (Stop, &stop, RollForward),
            (NodePower, &node, RollForward),
            (Exec, &exec, Indeterminate),
            (Transfer, &transfer, Indeterminate),
            (SnapshotCreate, &snap_create, RollBack),
            (SnapshotRevert, &snap_revert, RollForward),
            (SnapshotDelete, &snap_delete, RollForward),
        ];
        let mut rows = Vec::new();
        for (kind, steps, after_a_step) in kinds {
            let before_any_step = if after_a_step == RollBack {
                RollBack
            } else {
                NothingToDo
            };
            rows.push((kind, None, NoStep, before_any_step));
            for step in steps {
                for progress in [Started, Succeeded, Failed] {
                    let expected = if kind == SnapshotRevert && *step == "check_snapshot" {
                        NothingToDo
                    } else {
                        after_a_step
                    };
                    rows.push((kind, Some(*step), progress, expected));
                }
                rows.push((kind, Some(*step), RollingBack, RollBack));
            }
        }
        rows.push((Unknown, None, NoStep, NothingToDo));
        rows.push((Unknown, Some("anything"), Started, Indeterminate));
        let mut failures = Vec::new();
        for (kind, step, progress, expected) in &rows {
            let got = settle(*kind, *step, *progress);
            if got != *expected {
                failures.push(format!(
                    "{kind:?} {step:?} {progress:?}: expected {expected:?}, got {got:?}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert!(
            rows.len() > 100,
            "the table covers every row ({})",
            rows.len()
        );
    }

    #[test]
    fn tools_map_to_kinds() {
        for (tool, kind) in [
            ("cluster_define", Define),
            ("cluster_destroy", Destroy),
            ("node_reboot", NodePower),
            ("node_exec_all", Exec),
            ("snapshot_revert", SnapshotRevert),
            ("something_new", Unknown),
        ] {
            assert_eq!(OpKind::of_tool(tool), kind, "{tool}");
        }
    }
}
