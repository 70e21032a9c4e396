//! Cluster-wide snapshots: create (a consistent cut), list, revert, delete.
//!
//! A cluster snapshot is one libvirt internal snapshot per node, all with the same name (see
//! `vmcluster_engine::snapshot` for why internal, and what memory vs disk means per node).
//!
//! * **Create** pauses every running node, snapshots every node at once, then resumes the
//!   nodes it paused, so no node runs ahead of another inside the snapshot. It is all or
//!   nothing: if any node fails, the snapshots already taken are deleted again (on every node
//!   whose snapshot step started, since a step can fail after libvirt did its part) and the
//!   error names the node. The paused nodes are resumed whatever happens.
//! * **Revert** first checks that the snapshot exists on every node and that its creation
//!   finished; only then does it touch a domain. A node that fails to revert is retried (with
//!   libvirt's `force`) before the call gives up, so a transient failure does not leave the
//!   cluster half reverted. Every NodeActor is then reset: pooled SSH session dropped, dmesg
//!   cursor cleared, readiness probed afresh (the host key pin stays: same disk).
//! * **Delete** removes the snapshot from every node that holds it and reports each node; it
//!   refuses, changing nothing, a name no node holds or a snapshot vmcluster did not create.
//!
//! Everything is journaled through [`Op`]: the create's parameters (`include_memory`, the
//! nodes' states at the cut) are the ledger's memory of each snapshot's kind, and
//! `ObjectCreated`/`ObjectRemoved` of kind `Snapshot` (id `<node>/<snapshot>`) record which
//! node holds which snapshot. A removed cluster forgets its snapshots.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::time::Duration;

use futures::future::join_all;
use serde_json::json;
use uuid::Uuid;
use vmcluster_engine::plan::{self, Step};
use vmcluster_engine::snapshot::{
    self as snap, DeleteStatus, NodeDelete, NodeRevert, NodeSnapshotInfo, RevertAction,
    SnapshotDeleteResult, SnapshotInfo, SnapshotList, SnapshotMeta, SnapshotRevertResult,
};
use vmcluster_engine::state::DomainState;
use vmcluster_engine::topology::ClusterSpec;
use vmcluster_journal::{BodyV1, Journal, ObjectKind, Outcome};

use crate::cluster::{Ctx, Reply, Resolved, ask_node, pinned_key};
use crate::error::{EngineError, Result};
use crate::exec::ExecRequest;
use crate::host;
use crate::libvirt::RevertTo;
use crate::node::NodeMsg;
use crate::ops::Op;

/// The journal's tool name of a create (the ledger reads its parameters back).
const CREATE_TOOL: &str = "snapshot_create";
/// How many times a node's revert is tried before the call gives up on it.
const REVERT_ATTEMPTS: u32 = 3;

/// What `snapshot_create` is asked to take.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// Snapshot name, or a logical name from the topology's `snapshots:` map.
    pub snapshot_name: String,
    /// Free text kept with the snapshot.
    pub description: Option<String>,
    /// Keep running nodes' memory, so a revert resumes them without a reboot.
    pub include_memory: bool,
}

/// What `snapshot_revert` is asked to do.
#[derive(Debug, Clone)]
pub struct RevertRequest {
    /// Snapshot name, or a logical name.
    pub snapshot_name: String,
    /// Bring the nodes that ran at the cut back up (else every node is left shut off).
    pub restart_after: bool,
    /// Wait until those nodes are ready.
    pub wait_for_ssh: bool,
    /// Readiness budget.
    pub ssh_timeout: Duration,
}

fn check_name(name: &str) -> Result<()> {
    snap::check_snapshot_name(name)
        .map_err(|e| EngineError::InvalidArgument(format!("snapshot_name {name:?} {e}")))
}

/// The cluster a snapshot command targets and the snapshot's real name (a logical name from
/// the topology resolved), after checking the name asked for.
async fn target(ctx: &Ctx, cluster: &str, requested: &str) -> Result<(Resolved, String)> {
    check_name(requested)?;
    let resolved = ctx.resolve(cluster).await?;
    let real = snap::resolve_name(&resolved.spec.snapshots, requested);
    Ok((resolved, real))
}

/// `real`, with the logical name it was asked by when they differ (for messages).
fn shown(real: &str, requested: &str) -> String {
    if real == requested {
        real.to_owned()
    } else {
        format!("{real} (logical name {requested})")
    }
}

/// What the journal knows about one snapshot of a cluster.
#[derive(Debug, Clone, Default)]
struct Ledger {
    /// The create operation.
    op_id: Option<Uuid>,
    /// `include_memory` of the create.
    include_memory: Option<bool>,
    /// The nodes' states at the cut (before the cut's pause).
    states: BTreeMap<String, DomainState>,
    /// Nodes whose host key was pinned at the cut (their disks hold that key).
    pinned: BTreeSet<String>,
    /// Nodes holding it (created and not removed).
    nodes: BTreeSet<String>,
    /// How the create ended.
    outcome: Option<Outcome>,
    /// Journal sequence number of its first record (orders snapshots taken in one second).
    seq: u64,
}

impl Ledger {
    fn complete(&self) -> bool {
        self.outcome == Some(Outcome::Applied)
    }
}

/// The snapshots this cluster's operations created and did not remove, by name.
fn ledger(journal: &Journal, cluster: &str) -> Result<BTreeMap<String, Ledger>> {
    type CreateParams = (bool, BTreeMap<String, DomainState>, BTreeSet<String>);
    let mut creates: HashMap<Uuid, CreateParams> = HashMap::new();
    let mut outcomes: HashMap<Uuid, Outcome> = HashMap::new();
    let mut out: BTreeMap<String, Ledger> = BTreeMap::new();
    for rec in journal.iter_all() {
        let rec = rec?;
        let seq = rec.seq;
        match rec.body {
            BodyV1::CommandStarted {
                op_id,
                tool,
                cluster: Some(c),
                params_json,
            } if c == cluster && tool == CREATE_TOOL => {
                let v: serde_json::Value = serde_json::from_str(&params_json).unwrap_or_default();
                let mem = v["include_memory"].as_bool().unwrap_or(true);
                let states = serde_json::from_value(v["node_states"].clone()).unwrap_or_default();
                let pinned = serde_json::from_value(v["pinned_nodes"].clone()).unwrap_or_default();
                creates.insert(op_id, (mem, states, pinned));
            }
            BodyV1::CommandFinished { op_id, outcome, .. } => {
                outcomes.insert(op_id, outcome);
            }
            BodyV1::ObjectCreated {
                op_id,
                cluster: c,
                kind: ObjectKind::Snapshot,
                id,
            } if c == cluster => {
                if let Some((node, name)) = id.split_once('/') {
                    let e = out.entry(name.to_owned()).or_default();
                    if e.op_id != Some(op_id) {
                        *e = Ledger {
                            op_id: Some(op_id),
                            seq,
                            ..Ledger::default()
                        };
                    }
                    e.nodes.insert(node.to_owned());
                }
            }
            BodyV1::ObjectRemoved {
                cluster: c,
                kind: ObjectKind::Snapshot,
                id,
                ..
            } if c == cluster => {
                if let Some((node, name)) = id.split_once('/')
                    && let Some(e) = out.get_mut(name)
                {
                    e.nodes.remove(node);
                    if e.nodes.is_empty() {
                        out.remove(name);
                    }
                }
            }
            BodyV1::ClusterRemoved { cluster: c, .. } if c == cluster => out.clear(),
            _ => {}
        }
    }
    for e in out.values_mut() {
        if let Some(op) = e.op_id {
            if let Some((mem, states, pinned)) = creates.get(&op) {
                e.include_memory = Some(*mem);
                e.states = states.clone();
                e.pinned = pinned.clone();
            }
            e.outcome = outcomes.get(&op).copied();
        }
    }
    Ok(out)
}

/// One node's snapshots as libvirt reports them, and the VM-state sizes in its disk.
struct NodeSnaps {
    metas: Vec<SnapshotMeta>,
    sizes: Option<BTreeMap<String, u64>>,
}

/// Reads every node's snapshots (and, with `sizes`, their stored memory sizes) at once.
async fn gather(ctx: &Ctx, spec: &ClusterSpec, sizes: bool) -> Result<Vec<NodeSnaps>> {
    let reads = join_all(spec.nodes.iter().map(|n| async move {
        let metas = ctx.virt.snapshots(&n.domain_name).await?;
        let sizes = if sizes && !metas.is_empty() {
            host::image_snapshots(&n.overlay).await.ok()
        } else {
            None
        };
        Ok::<_, EngineError>(NodeSnaps { metas, sizes })
    }))
    .await;
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for (n, r) in spec.nodes.iter().zip(reads) {
        match r {
            Ok(s) => out.push(s),
            Err(e) => failures.push((n.name.clone(), e)),
        }
    }
    if failures.is_empty() {
        Ok(out)
    } else {
        Err(EngineError::Nodes {
            total: spec.nodes.len(),
            failures,
        })
    }
}

fn rfc3339(secs: i64) -> Option<String> {
    chrono::DateTime::from_timestamp(secs, 0).map(|t| t.to_rfc3339())
}

/// The cluster-wide view of snapshot `name` from the nodes' libvirt data and the ledger.
fn info(
    spec: &ClusterSpec,
    name: &str,
    nodes: &[NodeSnaps],
    ledger: Option<&Ledger>,
) -> SnapshotInfo {
    let metas: Vec<Option<&SnapshotMeta>> = nodes
        .iter()
        .map(|n| n.metas.iter().find(|m| m.name == name))
        .collect();
    let include_memory = ledger
        .and_then(|l| l.include_memory)
        .unwrap_or_else(|| metas.iter().flatten().any(|m| m.has_memory));
    let per_node: Vec<NodeSnapshotInfo> = spec
        .nodes
        .iter()
        .zip(nodes.iter().zip(&metas))
        .map(|(n, (ns, meta))| {
            let state = meta.map(|m| {
                ledger
                    .and_then(|l| l.states.get(&n.name).copied())
                    .unwrap_or(m.state)
            });
            NodeSnapshotInfo {
                node: n.name.clone(),
                domain: n.domain_name.clone(),
                present: meta.is_some(),
                kind: meta
                    .zip(state)
                    .map(|(m, s)| snap::node_kind(s, include_memory && m.has_memory)),
                domain_state: state,
                created_at: meta.and_then(|m| m.created_s).and_then(rfc3339),
                vm_state_bytes: meta
                    .and(ns.sizes.as_ref())
                    .and_then(|s| s.get(name).copied()),
            }
        })
        .collect();
    let all_present = per_node.iter().all(|n| n.present);
    SnapshotInfo {
        cluster_name: spec.name.clone(),
        snapshot_name: name.to_owned(),
        logical_names: snap::logical_names(&spec.snapshots, name),
        description: metas.iter().flatten().find_map(|m| m.description.clone()),
        include_memory,
        created_at: metas
            .iter()
            .flatten()
            .filter_map(|m| m.created_s)
            .min()
            .and_then(rfc3339),
        complete: all_present && ledger.is_none_or(Ledger::complete),
        created_by_vmcluster: ledger.is_some(),
        op_id: ledger.and_then(|l| l.op_id).map(|u| u.to_string()),
        nodes: per_node,
    }
}

/// `snapshot_list`: every snapshot any node of the cluster holds, oldest first.
pub(crate) async fn list(ctx: Ctx, cluster: String) -> Result<SnapshotList> {
    let resolved = ctx.resolve(&cluster).await?;
    let spec = &resolved.spec;
    let nodes = gather(&ctx, spec, true).await?;
    let ledger = ledger(&ctx.journal, &spec.name)?;
    let mut names: BTreeMap<String, i64> = BTreeMap::new();
    for m in nodes.iter().flat_map(|n| &n.metas) {
        let t = names.entry(m.name.clone()).or_insert(i64::MAX);
        *t = (*t).min(m.created_s.unwrap_or(i64::MAX));
    }
    // Oldest first; the journal orders snapshots taken within the same second.
    let mut order: Vec<(i64, u64, String)> = names
        .into_iter()
        .map(|(n, t)| (t, ledger.get(&n).map_or(u64::MAX, |l| l.seq), n))
        .collect();
    order.sort();
    Ok(SnapshotList {
        cluster_name: spec.name.clone(),
        snapshots: order
            .into_iter()
            .map(|(_, _, n)| info(spec, &n, &nodes, ledger.get(&n)))
            .collect(),
    })
}

/// Runs `steps` on their nodes at once, each journaled, and returns each node's outcome.
/// `work` gets the step's node.
async fn run_phase<T, F, Fut>(op: &Op, steps: &[Step], work: F) -> Vec<(String, Result<T>)>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    join_all(steps.iter().map(|s| {
        let node = s.node().unwrap_or_default().to_owned();
        let fut = work(node.clone());
        async move { (node, op.step(s, fut).await) }
    }))
    .await
}

/// The domain name of `node`.
fn domain_of<'a>(spec: &'a ClusterSpec, node: &str) -> Result<&'a str> {
    spec.node(node)
        .map(|n| n.domain_name.as_str())
        .ok_or_else(|| EngineError::Internal(format!("node {node} not in spec")))
}

/// Every node's current domain state, from libvirt.
async fn node_states(ctx: &Ctx, spec: &ClusterSpec) -> Result<Vec<(String, DomainState)>> {
    let states = join_all(
        spec.nodes
            .iter()
            .map(|n| async move { (n.name.clone(), ctx.virt.domain_state(&n.domain_name).await) }),
    )
    .await;
    states.into_iter().map(|(n, s)| s.map(|s| (n, s))).collect()
}

/// Which nodes hold snapshot `name` now, from libvirt.
async fn holders(ctx: &Ctx, spec: &ClusterSpec, name: &str) -> Result<Vec<(String, bool)>> {
    let found = join_all(spec.nodes.iter().map(|n| async move {
        (
            n.name.clone(),
            ctx.virt.snapshot(&n.domain_name, name).await,
        )
    }))
    .await;
    found
        .into_iter()
        .map(|(n, r)| r.map(|m| (n, m.is_some())))
        .collect()
}

/// `snapshot_create`: a consistent cut of every node, all or nothing.
pub(crate) async fn create(ctx: Ctx, cluster: String, req: CreateRequest) -> Reply<SnapshotInfo> {
    if let Err(e) = req
        .description
        .as_deref()
        .map_or(Ok(()), snap::check_description)
    {
        return Reply::refused(EngineError::InvalidArgument(format!("description {e}")));
    }
    let (resolved, real) = match target(&ctx, &cluster, &req.snapshot_name).await {
        Ok(t) => t,
        Err(e) => return Reply::refused(e),
    };
    let spec = resolved.spec.clone();
    let _guard = ctx.lock(&spec.name).await;
    // Everything is checked before anything changes.
    let states = match node_states(&ctx, &spec).await {
        Ok(s) => s,
        Err(e) => return Reply::refused(e),
    };
    let unfit: Vec<String> = states
        .iter()
        .filter(|(_, s)| {
            !matches!(
                s,
                DomainState::Running | DomainState::Paused | DomainState::ShutOff
            )
        })
        .map(|(n, s)| format!("{n} is {}", serde_json::to_value(s).unwrap_or_default()))
        .collect();
    if !unfit.is_empty() {
        return Reply::refused(EngineError::FailedPrecondition(format!(
            "A snapshot needs every node running, paused or shut off: {}",
            unfit.join(", ")
        )));
    }
    let taken: Vec<String> = match holders(&ctx, &spec, &real).await {
        Ok(h) => h.into_iter().filter(|(_, y)| *y).map(|(n, _)| n).collect(),
        Err(e) => return Reply::refused(e),
    };
    if !taken.is_empty() {
        return Reply::refused(EngineError::Conflict(format!(
            "A snapshot named {} already exists on node(s) {}; delete it first or choose another name",
            shown(&real, &req.snapshot_name),
            taken.join(", ")
        )));
    }
    let params = json!({
        "snapshot_name": real,
        "requested_name": req.snapshot_name,
        "description": req.description,
        "include_memory": req.include_memory,
        "node_states": states.iter().cloned().collect::<BTreeMap<_, _>>(),
        "pinned_nodes": spec
            .nodes
            .iter()
            .filter(|n| pinned_key(&ctx.journal, &spec.name, &n.name).is_some())
            .map(|n| n.name.clone())
            .collect::<Vec<_>>(),
    });
    let op = match Op::begin(&ctx.journal, CREATE_TOOL, &spec.name, &params).await {
        Ok(op) => op,
        Err(e) => return Reply::refused(e),
    };
    let running: Vec<String> = states
        .iter()
        .filter(|(_, s)| *s == DomainState::Running)
        .map(|(n, _)| n.clone())
        .collect();
    let all: Vec<String> = states.iter().map(|(n, _)| n.clone()).collect();
    let (result, leftover) = cut(&ctx, &op, &resolved, &real, &req, &running, &all).await;
    let result = match result {
        Ok(()) => match gather(&ctx, &spec, true).await {
            Ok(nodes) => {
                let ledger = ledger(&ctx.journal, &spec.name).unwrap_or_default();
                let mut i = info(&spec, &real, &nodes, ledger.get(&real));
                // This op's outcome is recorded below; it succeeded.
                i.complete = i.nodes.iter().all(|n| n.present);
                Ok(i)
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let outcome = if leftover {
        vmcluster_journal::Outcome::Indeterminate
    } else {
        vmcluster_journal::Outcome::NotApplied
    };
    op.finish(&result, outcome).await;
    Reply {
        op_id: Some(op.id),
        result,
    }
}

/// Runs the create plan. Returns the outcome and whether a failed create left anything behind
/// (an undo that failed).
async fn cut(
    ctx: &Ctx,
    op: &Op,
    resolved: &Resolved,
    real: &str,
    req: &CreateRequest,
    running: &[String],
    all: &[String],
) -> (Result<()>, bool) {
    let spec = &resolved.spec;
    let xml = snap::snapshot_xml(real, req.description.as_deref());
    let mut failures: Vec<(String, EngineError)> = Vec::new();
    let mut attempted: Vec<String> = Vec::new();
    for phase in plan::snapshot_create_plan(running, all, req.include_memory) {
        let Some(first) = phase.first() else { continue };
        match first {
            Step::SyncDisks(_) => {
                // Best effort: a node whose guest cannot be reached still gets a
                // crash-consistent disk snapshot.
                for (n, r) in run_phase(op, &phase, |node| async move {
                    let a = resolved.node(&node)?;
                    let out = ask_node(&a, |reply| NodeMsg::Exec {
                        request: ExecRequest::new("sync", Duration::from_secs(60)),
                        reply,
                    })
                    .await?;
                    match out.exit_code {
                        Some(0) => Ok(()),
                        c => Err(EngineError::Internal(format!("`sync` exited with {c:?}"))),
                    }
                })
                .await
                {
                    if let Err(e) = r {
                        tracing::warn!(node = %n, error = %e, "could not flush the guest's file systems before a disk snapshot");
                    }
                }
            }
            Step::SuspendDomain(_) => {
                for (n, r) in run_phase(op, &phase, |node| async move {
                    ctx.virt
                        .suspend_domain(domain_of(spec, &node)?)
                        .await
                        .map(drop)
                })
                .await
                {
                    if let Err(e) = r {
                        failures.push((n, e));
                    }
                }
            }
            Step::CreateSnapshot(_) => {
                if !failures.is_empty() {
                    continue;
                }
                attempted = phase
                    .iter()
                    .filter_map(|s| s.node().map(str::to_owned))
                    .collect();
                let xml = &xml;
                for (n, r) in run_phase(op, &phase, |node| async move {
                    // Declared before it is made, so a crash in between leaves a ledger entry
                    // that restart's rollback removes if present.
                    op.will_create(ObjectKind::Snapshot, format!("{node}/{real}"))
                        .await?;
                    ctx.virt
                        .create_snapshot(domain_of(spec, &node)?, xml.clone())
                        .await
                })
                .await
                {
                    if let Err(e) = r {
                        failures.push((n, e));
                    }
                }
            }
            Step::ResumeDomain(_) => {
                for (n, r) in run_phase(op, &phase, |node| async move {
                    ctx.virt.resume_domain(domain_of(spec, &node)?).await
                })
                .await
                {
                    if let Err(e) = r {
                        failures.push((n, e));
                    }
                }
            }
            other => {
                failures.push((
                    other.node().unwrap_or_default().to_owned(),
                    EngineError::Internal(format!("step {} is not part of a cut", other.name())),
                ));
            }
        }
    }
    if failures.is_empty() {
        return (Ok(()), false);
    }
    // Undo: every node whose snapshot step started may hold the snapshot.
    let undo: Vec<Step> = attempted.into_iter().map(Step::DeleteSnapshot).collect();
    let mut leftover = false;
    for (n, r) in run_phase(op, &undo, |node| async move {
        if ctx
            .virt
            .delete_snapshot(domain_of(spec, &node)?, real)
            .await?
        {
            op.removed(ObjectKind::Snapshot, format!("{node}/{real}"))
                .await?;
        }
        Ok(())
    })
    .await
    {
        if let Err(e) = r {
            leftover = true;
            failures.push((
                n,
                EngineError::Internal(format!("the snapshot could not be removed again: {e}")),
            ));
        }
    }
    (
        Err(EngineError::Nodes {
            total: all.len(),
            failures,
        }),
        leftover,
    )
}

/// `snapshot_revert`: checks the snapshot is whole, then reverts every node.
pub(crate) async fn revert(
    ctx: Ctx,
    cluster: String,
    req: RevertRequest,
) -> Reply<SnapshotRevertResult> {
    let (resolved, real) = match target(&ctx, &cluster, &req.snapshot_name).await {
        Ok(t) => t,
        Err(e) => return Reply::refused(e),
    };
    let spec = resolved.spec.clone();
    let _guard = ctx.lock(&spec.name).await;
    let checked = revert_plan(&ctx, &spec, &real, &req.snapshot_name, req.restart_after).await;
    let plan = match checked {
        Ok(p) => p,
        Err(e) => return Reply::refused(e),
    };
    let params = json!({
        "snapshot_name": real,
        "requested_name": req.snapshot_name,
        "restart_after": req.restart_after,
        "wait_for_ssh": req.wait_for_ssh,
        "ssh_timeout_s": req.ssh_timeout.as_secs(),
    });
    let op = match Op::begin(&ctx.journal, "snapshot_revert", &spec.name, &params).await {
        Ok(op) => op,
        Err(e) => return Reply::refused(e),
    };
    let result = revert_all(&ctx, &op, &resolved, &real, &req, &plan).await;
    op.finish(&result, vmcluster_journal::Outcome::Indeterminate)
        .await;
    Reply {
        op_id: Some(op.id),
        result,
    }
}

/// Checks that `real` is whole on every node (present everywhere, its creation finished) and
/// says how each node is to be reverted. Reads only; the same answer at restart as at the call.
async fn revert_plan(
    ctx: &Ctx,
    spec: &ClusterSpec,
    real: &str,
    requested: &str,
    restart_after: bool,
) -> Result<Vec<NodePlan>> {
    let nodes = gather(ctx, spec, false).await?;
    let ledger = ledger(&ctx.journal, &spec.name)?;
    let info = info(spec, real, &nodes, ledger.get(real));
    let missing: Vec<&str> = info
        .nodes
        .iter()
        .filter(|n| !n.present)
        .map(|n| n.node.as_str())
        .collect();
    if missing.len() == info.nodes.len() {
        return Err(EngineError::NotFound {
            kind: "snapshot",
            name: shown(real, requested),
        });
    }
    if !missing.is_empty() {
        return Err(EngineError::FailedPrecondition(format!(
            "Snapshot {} is incomplete: node(s) {} do not hold it; nothing was reverted",
            shown(real, requested),
            missing.join(", ")
        )));
    }
    if !info.complete {
        return Err(EngineError::FailedPrecondition(format!(
            "Snapshot {} is incomplete: its creation did not finish; nothing was reverted",
            shown(real, requested)
        )));
    }
    let l = ledger.get(real);
    let plan: Vec<NodePlan> = info
        .nodes
        .iter()
        .zip(&nodes)
        .map(|(n, ns)| NodePlan {
            node: n.node.clone(),
            action: snap::revert_action(
                n.domain_state.unwrap_or(DomainState::ShutOff),
                n.kind.unwrap_or(snap::SnapshotKind::Disk),
                restart_after,
            ),
            has_memory: ns.metas.iter().any(|m| m.name == real && m.has_memory),
            unpin: l.is_some_and(|l| !l.pinned.contains(&n.node)),
        })
        .collect();
    Ok(plan)
}

/// What reverting one node takes.
#[derive(Debug, Clone)]
struct NodePlan {
    node: String,
    action: RevertAction,
    /// Whether libvirt stored memory for it (even if the user did not want it).
    has_memory: bool,
    /// No host key was pinned at the cut: the restored disk may predate the node's key (a node
    /// snapshotted before its first boot makes a new one), so the pin is forgotten.
    unpin: bool,
}

/// Reverts one node as `action` says. Idempotent: it can be run again after any failure.
async fn revert_node(
    ctx: &Ctx,
    domain: &str,
    real: &str,
    action: RevertAction,
    has_memory: bool,
    force: bool,
) -> Result<()> {
    let virt = &ctx.virt;
    match action {
        RevertAction::ResumedFromMemory => {
            virt.revert_snapshot(domain, real, RevertTo::Running, force)
                .await
        }
        RevertAction::Rebooted | RevertAction::LeftOff => {
            // The disks go back; the memory (if libvirt stored any) is not wanted.
            virt.destroy_domain(domain).await?;
            if has_memory {
                virt.revert_snapshot(domain, real, RevertTo::Paused, force)
                    .await?;
                virt.destroy_domain(domain).await?;
            } else {
                virt.revert_snapshot(domain, real, RevertTo::AsTaken, force)
                    .await?;
            }
            if action == RevertAction::Rebooted {
                virt.start_domain(domain).await?;
            }
            Ok(())
        }
    }
}

async fn revert_all(
    ctx: &Ctx,
    op: &Op,
    resolved: &Resolved,
    real: &str,
    req: &RevertRequest,
    plan: &[NodePlan],
) -> Result<SnapshotRevertResult> {
    let spec = &resolved.spec;
    let how: HashMap<&str, &NodePlan> = plan.iter().map(|p| (p.node.as_str(), p)).collect();
    let mut attempts: HashMap<String, u32> = HashMap::new();
    let mut pending: Vec<String> = plan.iter().map(|p| p.node.clone()).collect();
    let mut errors: Vec<(String, EngineError)> = Vec::new();
    for attempt in 1..=REVERT_ATTEMPTS {
        let steps: Vec<Step> = pending.iter().cloned().map(Step::RevertSnapshot).collect();
        let how = &how;
        let outcomes = run_phase(op, &steps, |node| async move {
            let p = how[node.as_str()];
            revert_node(
                ctx,
                domain_of(spec, &node)?,
                real,
                p.action,
                p.has_memory,
                attempt > 1,
            )
            .await?;
            // The guest's state was replaced: new session, cursor and readiness probe.
            let a = resolved.node(&node)?;
            if p.unpin {
                ask_node(&a, |reply| NodeMsg::Unpin { reply }).await?;
            }
            let ready_timeout = req.ssh_timeout;
            ask_node(&a, |reply| NodeMsg::Reset {
                ready_timeout,
                reply,
            })
            .await
            .map(drop)
        })
        .await;
        errors.clear();
        for (n, r) in outcomes {
            *attempts.entry(n.clone()).or_default() = attempt;
            if let Err(e) = r {
                errors.push((n, e));
            }
        }
        pending = errors.iter().map(|(n, _)| n.clone()).collect();
        if pending.is_empty() {
            break;
        }
        tracing::warn!(attempt, nodes = ?pending, "snapshot revert failed on some nodes; retrying them");
    }
    if !errors.is_empty() {
        // Whatever state those nodes are in now, their actors must re-read it.
        for (n, _) in &errors {
            if let Ok(a) = resolved.node(n) {
                let ready_timeout = req.ssh_timeout;
                let _ = ask_node(&a, |reply| NodeMsg::Reset {
                    ready_timeout,
                    reply,
                })
                .await;
            }
        }
        return Err(EngineError::Nodes {
            total: plan.len(),
            failures: errors,
        });
    }
    if req.wait_for_ssh {
        let up: Vec<&String> = plan
            .iter()
            .filter(|p| p.action != RevertAction::LeftOff)
            .map(|p| &p.node)
            .collect();
        let waits = join_all(up.iter().map(|n| async move {
            let a = resolved.node(n)?;
            let timeout = req.ssh_timeout;
            ask_node(&a, |reply| NodeMsg::WaitReady { timeout, reply }).await
        }))
        .await;
        let failures: Vec<(String, EngineError)> = up
            .iter()
            .zip(waits)
            .filter_map(|(n, r)| r.err().map(|e| ((*n).clone(), e)))
            .collect();
        if !failures.is_empty() {
            return Err(EngineError::Nodes {
                total: plan.len(),
                failures,
            });
        }
    }
    Ok(SnapshotRevertResult {
        status: ctx.status(&spec.name).await?,
        snapshot_name: real.to_owned(),
        reverted: plan
            .iter()
            .map(|p| NodeRevert {
                node: p.node.clone(),
                action: p.action,
                attempts: attempts.get(&p.node).copied().unwrap_or(1),
            })
            .collect(),
    })
}

/// `snapshot_delete`: removes the snapshot from every node that holds it.
pub(crate) async fn delete(
    ctx: Ctx,
    cluster: String,
    requested: String,
) -> Reply<SnapshotDeleteResult> {
    let (resolved, real) = match target(&ctx, &cluster, &requested).await {
        Ok(t) => t,
        Err(e) => return Reply::refused(e),
    };
    let spec = resolved.spec.clone();
    let _guard = ctx.lock(&spec.name).await;
    let holding = match holders(&ctx, &spec, &real).await {
        Ok(h) => h,
        Err(e) => return Reply::refused(e),
    };
    if !holding.iter().any(|(_, y)| *y) {
        return Reply::refused(EngineError::NotFound {
            kind: "snapshot",
            name: shown(&real, &requested),
        });
    }
    let owned = match ledger(&ctx.journal, &spec.name) {
        Ok(l) => l.get(&real).map(|l| l.nodes.clone()).unwrap_or_default(),
        Err(e) => return Reply::refused(e),
    };
    let foreign: Vec<&str> = holding
        .iter()
        .filter(|(n, y)| *y && !owned.contains(n))
        .map(|(n, _)| n.as_str())
        .collect();
    if !foreign.is_empty() {
        return Reply::refused(EngineError::Conflict(format!(
            "Snapshot {} on node(s) {} was not created by vmcluster, so it is left alone (remove it with `virsh snapshot-delete` if you mean to); nothing was deleted",
            shown(&real, &requested),
            foreign.join(", ")
        )));
    }
    let op = match Op::begin(
        &ctx.journal,
        "snapshot_delete",
        &spec.name,
        &json!({ "snapshot_name": real, "requested_name": requested }),
    )
    .await
    {
        Ok(op) => op,
        Err(e) => return Reply::refused(e),
    };
    let mut outcomes = delete_on(&ctx, &op, &spec, &real, &holding).await;
    let nodes: Vec<NodeDelete> = spec
        .nodes
        .iter()
        .map(|n| {
            let (status, err) = match outcomes.remove(&n.name) {
                None | Some(Ok(false)) => (DeleteStatus::Absent, None),
                Some(Ok(true)) => (DeleteStatus::Deleted, None),
                Some(Err(e)) => (DeleteStatus::Failed, Some(e)),
            };
            NodeDelete {
                node: n.name.clone(),
                status,
                error_code: err.as_ref().map(EngineError::code),
                error: err.map(|e| e.to_string()),
            }
        })
        .collect();
    let all_deleted = nodes.iter().all(|n| n.status != DeleteStatus::Failed);
    let result = SnapshotDeleteResult {
        cluster_name: spec.name.clone(),
        snapshot_name: real.clone(),
        nodes,
        all_deleted,
    };
    let journaled: Result<&SnapshotDeleteResult> = if all_deleted {
        Ok(&result)
    } else {
        Err(EngineError::FailedPrecondition(format!(
            "Snapshot {real} could not be deleted on every node"
        )))
    };
    op.finish(&journaled, vmcluster_journal::Outcome::Indeterminate)
        .await;
    Reply {
        op_id: Some(op.id),
        result: Ok(result),
    }
}

/// Deletes `real` from every node of `holding` that holds it, journaling each removal; each
/// node's answer: deleted (`true`), already gone (`false`), or the error.
async fn delete_on(
    ctx: &Ctx,
    op: &Op,
    spec: &ClusterSpec,
    real: &str,
    holding: &[(String, bool)],
) -> HashMap<String, Result<bool>> {
    let steps: Vec<Step> = holding
        .iter()
        .filter(|(_, y)| *y)
        .map(|(n, _)| Step::DeleteSnapshot(n.clone()))
        .collect();
    run_phase(op, &steps, |node| async move {
        let gone = ctx
            .virt
            .delete_snapshot(domain_of(spec, &node)?, real)
            .await?;
        if gone {
            op.removed(ObjectKind::Snapshot, format!("{node}/{real}"))
                .await?;
        }
        Ok(gone)
    })
    .await
    .into_iter()
    .collect()
}

/// Restart's roll-forward of a `snapshot_revert` cut short: the nodes whose revert step did
/// not finish are reverted again from the snapshot (the plan is read from the snapshot and the
/// ledger, so it is the one the call made), without waiting for readiness.
pub(crate) async fn roll_forward_revert(
    ctx: &Ctx,
    op: &Op,
    cluster: &str,
    params: &serde_json::Value,
    done: &BTreeSet<String>,
) -> Result<serde_json::Value> {
    let resolved = ctx.resolve(cluster).await?;
    let real = params["snapshot_name"].as_str().unwrap_or_default();
    check_name(real)?;
    let restart_after = params["restart_after"].as_bool().unwrap_or(true);
    let mut plan = revert_plan(ctx, &resolved.spec, real, real, restart_after).await?;
    plan.retain(|p| !done.contains(&p.node));
    let req = RevertRequest {
        snapshot_name: real.to_owned(),
        restart_after,
        wait_for_ssh: false,
        ssh_timeout: Duration::from_secs(params["ssh_timeout_s"].as_u64().unwrap_or(120)),
    };
    let r = revert_all(ctx, op, &resolved, real, &req, &plan).await?;
    Ok(serde_json::to_value(r).unwrap_or_default())
}

/// Restart's roll-forward of a `snapshot_delete` cut short: every node still holding the
/// snapshot loses it.
pub(crate) async fn roll_forward_delete(
    ctx: &Ctx,
    op: &Op,
    cluster: &str,
    params: &serde_json::Value,
) -> Result<serde_json::Value> {
    let resolved = ctx.resolve(cluster).await?;
    let real = params["snapshot_name"].as_str().unwrap_or_default();
    check_name(real)?;
    let holding = holders(ctx, &resolved.spec, real).await?;
    let failures: Vec<(String, EngineError)> = delete_on(ctx, op, &resolved.spec, real, &holding)
        .await
        .into_iter()
        .filter_map(|(n, r)| r.err().map(|e| (n, e)))
        .collect();
    if !failures.is_empty() {
        return Err(EngineError::Nodes {
            total: holding.len(),
            failures,
        });
    }
    Ok(json!({ "cluster_name": cluster, "snapshot_name": real }))
}
