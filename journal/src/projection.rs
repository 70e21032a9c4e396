//! The journal's projection: what the records add up to, folded in seq order.
//!
//! Replay and every later append go through one pure function, [`Projection::apply`], so the
//! state a restarted server rebuilds is exactly the state the running server had:
//!
//! * the clusters that are defined (their specs, as JSON);
//! * the ownership ledger: every object an operation declared it may have created and that no
//!   operation removed since (the leak check compares the host against it);
//! * pinned SSH host keys;
//! * every operation's history: its steps, the objects it created and removed, whether it began
//!   a rollback, and its outcome once finished. `op_status`, `op_wait` and `op_list` answer from
//!   here, and restart settles every operation without an outcome.
//!
//! Sequences that cannot happen (a step of an unknown op, a second outcome) are reported as a
//! [`FoldError`] and otherwise ignored: the caller logs them; replay never guesses around them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::record::{BodyV1, ObjectKind, Outcome, RecordV1};

/// How many finished operations the projection keeps (oldest forgotten first). Unfinished
/// operations are always kept.
pub const DEFAULT_RETAIN_OPS: usize = 10_000;

/// A record that does not fit the history before it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("journal record {seq} ({kind}) does not fit: {reason}")]
pub struct FoldError {
    /// Its seq.
    pub seq: u64,
    /// Its kind name.
    pub kind: &'static str,
    /// Why.
    pub reason: String,
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepState {
    /// Intent recorded; no outcome (the process may have died inside it).
    Started,
    /// Finished successfully.
    Succeeded,
    /// Finished with an error.
    Failed,
}

/// One step of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepInfo {
    /// Step name.
    pub step: String,
    /// Node, if node-scoped.
    pub node: Option<String>,
    /// Where it stands.
    pub state: StepState,
    /// Error text of a failed step.
    pub detail: Option<String>,
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    /// Seq of the outcome record.
    pub seq: u64,
    /// When (ms since the epoch).
    pub ts_ms: i64,
    /// Outcome.
    pub outcome: Outcome,
    /// Error code, if it failed.
    pub error_code: Option<String>,
    /// Error message, if it failed.
    pub error_message: Option<String>,
    /// Result returned to the caller, as JSON.
    pub result_json: Option<String>,
}

/// One operation as the journal knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpInfo {
    /// Its id.
    pub op_id: Uuid,
    /// Tool name.
    pub tool: String,
    /// Target cluster.
    pub cluster: Option<String>,
    /// Parameters, as JSON.
    pub params_json: String,
    /// Seq of its start record.
    pub started_seq: u64,
    /// When it started (ms since the epoch).
    pub started_ms: i64,
    /// Its steps in the order they started.
    pub steps: Vec<StepInfo>,
    /// Objects it declared (before creating them), in order.
    pub created: Vec<(ObjectKind, String)>,
    /// Objects it removed, in order.
    pub removed: Vec<(ObjectKind, String)>,
    /// It recorded a new cluster definition.
    pub defined_cluster: bool,
    /// It recorded a cluster's removal.
    pub removed_cluster: bool,
    /// It began rolling back (with this reason).
    pub rollback: Option<String>,
    /// Its outcome, once finished.
    pub finished: Option<Finished>,
}

impl OpInfo {
    /// The last step begun, if any.
    pub fn last_step(&self) -> Option<&StepInfo> {
        self.steps.last()
    }
}

/// A defined cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// Its spec, as JSON.
    pub spec_json: String,
    /// The operation that defined it.
    pub defined_by: Uuid,
}

/// What the journal adds up to. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Projection {
    /// Defined clusters by name.
    pub clusters: BTreeMap<String, ClusterRecord>,
    /// Ownership ledger: cluster → (kind, id) → the op that declared it.
    pub objects: BTreeMap<String, BTreeMap<(ObjectKind, String), Uuid>>,
    /// Pinned host keys: (cluster, node) → OpenSSH key.
    pub host_keys: BTreeMap<(String, String), String>,
    /// Operations by id (UUIDv7: id order is start order).
    pub ops: BTreeMap<Uuid, OpInfo>,
    /// Operations without an outcome.
    pub open_ops: BTreeSet<Uuid>,
    /// Finished operations forgotten so far (retention).
    pub retired_ops: u64,
    /// Seq of the last record applied.
    pub last_seq: u64,
    /// How many finished operations to keep.
    pub retain_ops: usize,
}

impl Default for Projection {
    fn default() -> Self {
        Projection::new(DEFAULT_RETAIN_OPS)
    }
}

impl Projection {
    /// An empty projection keeping `retain_ops` finished operations.
    pub fn new(retain_ops: usize) -> Projection {
        Projection {
            clusters: BTreeMap::new(),
            objects: BTreeMap::new(),
            host_keys: BTreeMap::new(),
            ops: BTreeMap::new(),
            open_ops: BTreeSet::new(),
            retired_ops: 0,
            last_seq: 0,
            retain_ops,
        }
    }

    /// Folds `rec` into the projection.
    pub fn apply(&mut self, rec: &RecordV1) -> Result<(), FoldError> {
        self.last_seq = self.last_seq.max(rec.seq);
        let err = |reason: String| FoldError {
            seq: rec.seq,
            kind: rec.body.kind_name(),
            reason,
        };
        match &rec.body {
            BodyV1::CommandStarted {
                op_id,
                tool,
                cluster,
                params_json,
            } => {
                if self.ops.contains_key(op_id) {
                    return Err(err(format!("op {op_id} started twice")));
                }
                self.ops.insert(
                    *op_id,
                    OpInfo {
                        op_id: *op_id,
                        tool: tool.clone(),
                        cluster: cluster.clone(),
                        params_json: params_json.clone(),
                        started_seq: rec.seq,
                        started_ms: rec.ts_ms,
                        steps: Vec::new(),
                        created: Vec::new(),
                        removed: Vec::new(),
                        defined_cluster: false,
                        removed_cluster: false,
                        rollback: None,
                        finished: None,
                    },
                );
                self.open_ops.insert(*op_id);
            }
            BodyV1::CommandFinished {
                op_id,
                outcome,
                error_code,
                error_message,
                result_json,
            } => {
                let op = self.open_op(op_id).map_err(err)?;
                op.finished = Some(Finished {
                    seq: rec.seq,
                    ts_ms: rec.ts_ms,
                    outcome: *outcome,
                    error_code: error_code.clone(),
                    error_message: error_message.clone(),
                    result_json: result_json.clone(),
                });
                self.open_ops.remove(op_id);
                self.retire();
            }
            BodyV1::StepStarted { op_id, step, node } => {
                let op = self.open_op(op_id).map_err(err)?;
                op.steps.push(StepInfo {
                    step: step.clone(),
                    node: node.clone(),
                    state: StepState::Started,
                    detail: None,
                });
            }
            BodyV1::StepFinished {
                op_id,
                step,
                node,
                ok,
                detail,
            } => {
                let op = self.open_op(op_id).map_err(err)?;
                let Some(s) =
                    op.steps.iter_mut().rev().find(|s| {
                        s.step == *step && s.node == *node && s.state == StepState::Started
                    })
                else {
                    return Err(err(format!("step {step} finished without starting")));
                };
                s.state = if *ok {
                    StepState::Succeeded
                } else {
                    StepState::Failed
                };
                s.detail = detail.clone();
            }
            BodyV1::ClusterDefined {
                op_id,
                cluster,
                spec_json,
            } => {
                self.clusters.insert(
                    cluster.clone(),
                    ClusterRecord {
                        spec_json: spec_json.clone(),
                        defined_by: *op_id,
                    },
                );
                if let Some(op) = self.ops.get_mut(op_id) {
                    op.defined_cluster = true;
                }
            }
            BodyV1::ClusterRemoved { op_id, cluster } => {
                self.clusters.remove(cluster);
                self.host_keys.retain(|(c, _), _| c != cluster);
                if let Some(op) = self.ops.get_mut(op_id) {
                    op.removed_cluster = true;
                }
            }
            BodyV1::ObjectCreated {
                op_id,
                cluster,
                kind,
                id,
            } => {
                self.objects
                    .entry(cluster.clone())
                    .or_default()
                    .insert((*kind, id.clone()), *op_id);
                if let Some(op) = self.ops.get_mut(op_id) {
                    op.created.push((*kind, id.clone()));
                }
            }
            BodyV1::ObjectRemoved {
                op_id,
                cluster,
                kind,
                id,
            } => {
                if let Some(objs) = self.objects.get_mut(cluster) {
                    objs.remove(&(*kind, id.clone()));
                    if objs.is_empty() {
                        self.objects.remove(cluster);
                    }
                }
                if let Some(op) = self.ops.get_mut(op_id) {
                    op.removed.push((*kind, id.clone()));
                }
            }
            BodyV1::NodeEvent { .. } => {}
            BodyV1::HostKeyPinned {
                cluster,
                node,
                key_openssh,
            } => {
                let k = (cluster.clone(), node.clone());
                if key_openssh.is_empty() {
                    self.host_keys.remove(&k);
                } else {
                    self.host_keys.insert(k, key_openssh.clone());
                }
            }
            BodyV1::RollbackStarted { op_id, reason } => {
                let op = self.open_op(op_id).map_err(err)?;
                op.rollback = Some(reason.clone());
            }
            BodyV1::Checkpoint { projection } => {
                let mut p = Projection::decode(projection).map_err(err)?;
                p.retain_ops = self.retain_ops;
                p.last_seq = rec.seq;
                p.retire();
                *self = p;
            }
        }
        Ok(())
    }

    fn open_op(&mut self, op_id: &Uuid) -> Result<&mut OpInfo, String> {
        match self.ops.get_mut(op_id) {
            Some(op) if op.finished.is_none() => Ok(op),
            Some(_) => Err(format!("op {op_id} already finished")),
            None => Err(format!("unknown op {op_id}")),
        }
    }

    /// Forgets the oldest finished operations beyond the retention bound.
    fn retire(&mut self) {
        let finished = self.ops.len() - self.open_ops.len();
        if finished <= self.retain_ops {
            return;
        }
        let mut excess = finished - self.retain_ops;
        let victims: Vec<Uuid> = self
            .ops
            .iter()
            .filter(|(id, _)| !self.open_ops.contains(id))
            .map(|(id, _)| *id)
            .take(excess)
            .collect();
        for id in victims {
            self.ops.remove(&id);
            self.retired_ops += 1;
            excess -= 1;
        }
        debug_assert_eq!(excess, 0);
    }

    /// The projection as a checkpoint body (bincode).
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("a projection always encodes")
    }

    /// Decodes [`Projection::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Result<Projection, String> {
        bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .map(|(p, _)| p)
            .map_err(|e| format!("undecodable checkpoint: {e}"))
    }

    /// The objects of `cluster` still owned (declared and not removed).
    pub fn owned(&self, cluster: &str) -> impl Iterator<Item = (ObjectKind, &str)> + '_ {
        self.objects
            .get(cluster)
            .into_iter()
            .flat_map(|m| m.keys().map(|(k, id)| (*k, id.as_str())))
    }

    /// Operations without an outcome, oldest first.
    pub fn unfinished(&self) -> Vec<&OpInfo> {
        self.open_ops
            .iter()
            .filter_map(|id| self.ops.get(id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, body: BodyV1) -> RecordV1 {
        RecordV1 {
            seq,
            ts_ms: seq as i64,
            body,
        }
    }

    fn op(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn started(id: Uuid) -> BodyV1 {
        BodyV1::CommandStarted {
            op_id: id,
            tool: "cluster_define".into(),
            cluster: Some("lab".into()),
            params_json: "{}".into(),
        }
    }

    fn finished(id: Uuid) -> BodyV1 {
        BodyV1::CommandFinished {
            op_id: id,
            outcome: Outcome::Applied,
            error_code: None,
            error_message: None,
            result_json: None,
        }
    }

    #[test]
    fn ledger_follows_created_and_removed() {
        let mut p = Projection::default();
        let a = op(1);
        for (i, b) in [
            started(a),
            BodyV1::ObjectCreated {
                op_id: a,
                cluster: "lab".into(),
                kind: ObjectKind::Domain,
                id: "lab_n1".into(),
            },
            BodyV1::ObjectCreated {
                op_id: a,
                cluster: "lab".into(),
                kind: ObjectKind::File,
                id: "/x".into(),
            },
            BodyV1::ObjectRemoved {
                op_id: a,
                cluster: "lab".into(),
                kind: ObjectKind::File,
                id: "/x".into(),
            },
        ]
        .into_iter()
        .enumerate()
        {
            p.apply(&rec(i as u64 + 1, b)).unwrap();
        }
        let owned: Vec<_> = p.owned("lab").collect();
        assert_eq!(owned, vec![(ObjectKind::Domain, "lab_n1")]);
        assert_eq!(p.unfinished().len(), 1);
        assert_eq!(p.ops[&a].created.len(), 2);
    }

    #[test]
    fn steps_fold_into_states() {
        let mut p = Projection::default();
        let a = op(1);
        let bodies = [
            started(a),
            BodyV1::StepStarted {
                op_id: a,
                step: "ensure_dir".into(),
                node: None,
            },
            BodyV1::StepFinished {
                op_id: a,
                step: "ensure_dir".into(),
                node: None,
                ok: true,
                detail: None,
            },
            BodyV1::StepStarted {
                op_id: a,
                step: "define_domain".into(),
                node: Some("n1".into()),
            },
        ];
        for (i, b) in bodies.into_iter().enumerate() {
            p.apply(&rec(i as u64 + 1, b)).unwrap();
        }
        let steps = &p.ops[&a].steps;
        assert_eq!(steps[0].state, StepState::Succeeded);
        assert_eq!(steps[1].state, StepState::Started);
        assert_eq!(p.ops[&a].last_step().unwrap().step, "define_domain");
    }

    #[test]
    fn impossible_sequences_are_reported() {
        let mut p = Projection::default();
        let a = op(1);
        let e = p
            .apply(&rec(
                1,
                BodyV1::StepStarted {
                    op_id: a,
                    step: "s".into(),
                    node: None,
                },
            ))
            .unwrap_err();
        assert!(e.reason.contains("unknown op"), "{e}");
        p.apply(&rec(2, started(a))).unwrap();
        p.apply(&rec(3, finished(a))).unwrap();
        let e = p.apply(&rec(4, finished(a))).unwrap_err();
        assert!(e.reason.contains("already finished"), "{e}");
        let e = p.apply(&rec(5, started(a))).unwrap_err();
        assert!(e.reason.contains("started twice"), "{e}");
    }

    #[test]
    fn retention_forgets_oldest_finished_ops_only() {
        let mut p = Projection::new(2);
        let mut seq = 0;
        let mut next = |p: &mut Projection, b| {
            seq += 1;
            p.apply(&rec(seq, b)).unwrap();
        };
        next(&mut p, started(op(1))); // stays open
        for i in 2..=5 {
            next(&mut p, started(op(i)));
            next(&mut p, finished(op(i)));
        }
        let ids: Vec<u128> = p.ops.keys().map(|u| u.as_u128()).collect();
        assert_eq!(ids, vec![1, 4, 5]);
        assert_eq!(p.retired_ops, 2);
    }

    #[test]
    fn cluster_removal_forgets_its_host_keys() {
        let mut p = Projection::default();
        let a = op(1);
        p.apply(&rec(1, started(a))).unwrap();
        p.apply(&rec(
            2,
            BodyV1::ClusterDefined {
                op_id: a,
                cluster: "lab".into(),
                spec_json: "{}".into(),
            },
        ))
        .unwrap();
        p.apply(&rec(
            3,
            BodyV1::HostKeyPinned {
                cluster: "lab".into(),
                node: "n1".into(),
                key_openssh: "ssh-ed25519 AAAA".into(),
            },
        ))
        .unwrap();
        assert_eq!(p.host_keys.len(), 1);
        p.apply(&rec(
            4,
            BodyV1::ClusterRemoved {
                op_id: a,
                cluster: "lab".into(),
            },
        ))
        .unwrap();
        assert!(p.host_keys.is_empty());
        assert!(p.clusters.is_empty());
        assert!(p.ops[&a].defined_cluster && p.ops[&a].removed_cluster);
    }
}
