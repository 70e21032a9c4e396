//! Step plans: the ordered, named steps of each multi-step command, as pure data.
//!
//! The actors execute a plan step by step and journal each step's intent before its side
//! effect. Every step is idempotent ("create if absent", "remove if present"), so re-running a
//! plan after any partial failure converges on the same end state.

use serde::{Deserialize, Serialize};

use crate::topology::ClusterSpec;

/// One step of a plan. Node-scoped steps carry the node's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Create the cluster directory (owned marker included).
    EnsureDir,
    /// Define the libvirt network if absent (adopt ours, refuse a stranger's).
    EnsureNetwork,
    /// Start the network if inactive and mark it autostart.
    StartNetwork,
    /// Create the node's extra disks that do not exist.
    EnsureExtraDisks(String),
    /// Create the node's overlay if absent (never overwrite).
    EnsureOverlay(String),
    /// Write the node's seed ISO (content-checked, rewritten only when it differs).
    EnsureSeed(String),
    /// Define the node's domain if absent, with its fixed UUID.
    DefineDomain(String),
    /// Power the node off (forcefully).
    StopDomain(String),
    /// Undefine the node's domain (with snapshot metadata).
    UndefineDomain(String),
    /// Remove the node's seed ISO and console log.
    RemoveNodeFiles(String),
    /// Remove the node's overlay and the extra disks we created.
    RemoveOverlay(String),
    /// Stop and undefine the network.
    RemoveNetwork,
    /// Remove the cluster directory when empty.
    RemoveDir,
    /// Power the node on if it is off.
    StartDomain(String),
    /// Wait until the node is ready (SSH login works, cloud-init finished).
    WaitReady(String),
    /// Reboot the node (ACPI or reset).
    RebootDomain(String),
    /// Flush the node's file systems (best effort, over SSH) before a disk-only snapshot.
    SyncDisks(String),
    /// Pause the node's CPUs for the cluster-wide cut.
    SuspendDomain(String),
    /// Take the node's internal snapshot.
    CreateSnapshot(String),
    /// Resume a node the cut paused (always run, whatever happened in between).
    ResumeDomain(String),
    /// Delete the node's snapshot if present (data and metadata).
    DeleteSnapshot(String),
    /// Revert the node to the snapshot and power it as the revert asks.
    RevertSnapshot(String),
}

impl Step {
    /// Stable name used in the journal and in errors (`define_domain`).
    pub fn name(&self) -> &'static str {
        match self {
            Step::EnsureDir => "ensure_dir",
            Step::EnsureNetwork => "ensure_network",
            Step::StartNetwork => "start_network",
            Step::EnsureExtraDisks(_) => "ensure_extra_disks",
            Step::EnsureOverlay(_) => "ensure_overlay",
            Step::EnsureSeed(_) => "ensure_seed",
            Step::DefineDomain(_) => "define_domain",
            Step::StopDomain(_) => "stop_domain",
            Step::UndefineDomain(_) => "undefine_domain",
            Step::RemoveNodeFiles(_) => "remove_node_files",
            Step::RemoveOverlay(_) => "remove_overlay",
            Step::RemoveNetwork => "remove_network",
            Step::RemoveDir => "remove_dir",
            Step::StartDomain(_) => "start_domain",
            Step::WaitReady(_) => "wait_ready",
            Step::RebootDomain(_) => "reboot_domain",
            Step::SyncDisks(_) => "sync_disks",
            Step::SuspendDomain(_) => "suspend_domain",
            Step::CreateSnapshot(_) => "create_snapshot",
            Step::ResumeDomain(_) => "resume_domain",
            Step::DeleteSnapshot(_) => "delete_snapshot",
            Step::RevertSnapshot(_) => "revert_snapshot",
        }
    }

    /// The node this step acts on, if any.
    pub fn node(&self) -> Option<&str> {
        match self {
            Step::EnsureExtraDisks(n)
            | Step::EnsureOverlay(n)
            | Step::EnsureSeed(n)
            | Step::DefineDomain(n)
            | Step::StopDomain(n)
            | Step::UndefineDomain(n)
            | Step::RemoveNodeFiles(n)
            | Step::RemoveOverlay(n)
            | Step::StartDomain(n)
            | Step::WaitReady(n)
            | Step::RebootDomain(n)
            | Step::SyncDisks(n)
            | Step::SuspendDomain(n)
            | Step::CreateSnapshot(n)
            | Step::ResumeDomain(n)
            | Step::DeleteSnapshot(n)
            | Step::RevertSnapshot(n) => Some(n),
            _ => None,
        }
    }
}

/// The plan of `cluster_define`.
pub fn define_plan(spec: &ClusterSpec) -> Vec<Step> {
    let mut steps = vec![Step::EnsureDir, Step::EnsureNetwork, Step::StartNetwork];
    for n in &spec.nodes {
        let name = n.name.clone();
        if !n.extra_disks.is_empty() {
            steps.push(Step::EnsureExtraDisks(name.clone()));
        }
        steps.push(Step::EnsureOverlay(name.clone()));
        steps.push(Step::EnsureSeed(name.clone()));
        steps.push(Step::DefineDomain(name));
    }
    steps
}

/// The plan of `cluster_destroy`.
pub fn destroy_plan(spec: &ClusterSpec, remove_overlays: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    for n in &spec.nodes {
        steps.push(Step::StopDomain(n.name.clone()));
        steps.push(Step::UndefineDomain(n.name.clone()));
        steps.push(Step::RemoveNodeFiles(n.name.clone()));
        if remove_overlays {
            steps.push(Step::RemoveOverlay(n.name.clone()));
        }
    }
    steps.push(Step::RemoveNetwork);
    if remove_overlays {
        steps.push(Step::RemoveDir);
    }
    steps
}

/// The plan of `snapshot_create`, as phases: the steps of one phase run on their nodes at once,
/// and a phase starts when the previous one ended. `running` are the nodes whose CPUs run at
/// the cut (they are paused for it, so no node runs ahead inside the snapshot, and resumed
/// whatever happened: the resume phase always runs); `all` are every node, in topology order.
/// A disk-only snapshot first flushes the running nodes' file systems. If the snapshot phase
/// fails anywhere, the undo is a `DeleteSnapshot` on every node it was attempted on.
pub fn snapshot_create_plan(
    running: &[String],
    all: &[String],
    include_memory: bool,
) -> Vec<Vec<Step>> {
    let each = |f: fn(String) -> Step, nodes: &[String]| nodes.iter().cloned().map(f).collect();
    let mut phases = Vec::new();
    if !include_memory && !running.is_empty() {
        phases.push(each(Step::SyncDisks, running));
    }
    if !running.is_empty() {
        phases.push(each(Step::SuspendDomain, running));
    }
    phases.push(each(Step::CreateSnapshot, all));
    if !running.is_empty() {
        phases.push(each(Step::ResumeDomain, running));
    }
    phases
}
