//! Operation handles: `op_status`, `op_wait`, `op_list`, `op_cancel`, and the bounded wait of
//! every slow command.
//!
//! A command gets its op id before it is sent, so a caller whose wait runs out can return
//! `{state: running, op_id}` while the work goes on. Answers come from the journal's projection
//! (the same records restart replays). The only thing the journal cannot know is a command
//! refused before it was journaled (bad input, unknown cluster): the tracker remembers those
//! refusals, and every running command's cancellation token, for as long as the process lives.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use vmcluster_engine::view::{OpError, OpList, OpOutcome, OpState, OpStatus, OpStep};
use vmcluster_journal::{Journal, OpInfo, Outcome, StepState};

use crate::error::{EngineError, Result};

/// How many refused commands the tracker remembers.
const REMEMBER_REFUSED: usize = 1024;

#[derive(Debug)]
struct Tracked {
    tool: String,
    cluster: Option<String>,
    cancel: CancellationToken,
    done: watch::Sender<bool>,
    /// Set when the command was refused before it reached the journal.
    refused: Option<OpError>,
}

/// Commands in flight in this process, and recent refusals.
#[derive(Debug, Default)]
pub struct OpTracker {
    ops: Mutex<HashMap<Uuid, Tracked>>,
    refused_order: Mutex<std::collections::VecDeque<Uuid>>,
}

impl OpTracker {
    /// Registers a command about to be sent.
    pub fn register(
        &self,
        op_id: Uuid,
        tool: &str,
        cluster: Option<&str>,
        cancel: CancellationToken,
    ) {
        let (done, _) = watch::channel(false);
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).insert(
            op_id,
            Tracked {
                tool: tool.to_owned(),
                cluster: cluster.map(str::to_owned),
                cancel,
                done,
                refused: None,
            },
        );
    }

    /// Marks a command done. `refused` is its error when it never reached the journal.
    pub fn complete(&self, op_id: Uuid, refused: Option<&EngineError>) {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        match refused {
            Some(e) => {
                if let Some(t) = ops.get_mut(&op_id) {
                    t.refused = Some(OpError {
                        code: e.code().as_str().to_owned(),
                        message: e.to_string(),
                    });
                    t.done.send_replace(true);
                }
                let mut order = self.refused_order.lock().unwrap_or_else(|p| p.into_inner());
                order.push_back(op_id);
                while order.len() > REMEMBER_REFUSED {
                    if let Some(old) = order.pop_front() {
                        ops.remove(&old);
                    }
                }
            }
            None => {
                // The journal has its outcome now; the tracker's entry is no longer needed.
                if let Some(t) = ops.remove(&op_id) {
                    t.done.send_replace(true);
                }
            }
        }
    }

    fn refused(&self, op_id: Uuid) -> Option<OpStatus> {
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let t = ops.get(&op_id)?;
        Some(OpStatus {
            op_id: op_id.to_string(),
            tool: t.tool.clone(),
            cluster_name: t.cluster.clone(),
            state: if t.refused.is_some() {
                OpState::Finished
            } else {
                OpState::Running
            },
            outcome: t.refused.as_ref().map(|_| OpOutcome::NotApplied),
            started_at: None,
            finished_at: None,
            steps: Vec::new(),
            rolled_back: false,
            error: t.refused.clone(),
            result: None,
        })
    }

    /// Requests cancellation; `false` when the command is not running in this process.
    pub fn cancel(&self, op_id: Uuid) -> bool {
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        match ops.get(&op_id) {
            Some(t) if t.refused.is_none() => {
                t.cancel.cancel();
                true
            }
            _ => false,
        }
    }

    fn done_rx(&self, op_id: Uuid) -> Option<watch::Receiver<bool>> {
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        ops.get(&op_id).map(|t| t.done.subscribe())
    }
}

fn rfc3339(ms: i64) -> Option<String> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// An operation's status from its journal history.
pub fn status_of(op: &OpInfo) -> OpStatus {
    let finished = op.finished.as_ref();
    OpStatus {
        op_id: op.op_id.to_string(),
        tool: op.tool.clone(),
        cluster_name: op.cluster.clone(),
        state: if finished.is_some() {
            OpState::Finished
        } else {
            OpState::Running
        },
        outcome: finished.map(|f| match f.outcome {
            Outcome::Applied => OpOutcome::Applied,
            Outcome::NotApplied => OpOutcome::NotApplied,
            Outcome::Indeterminate => OpOutcome::Indeterminate,
        }),
        started_at: rfc3339(op.started_ms),
        finished_at: finished.and_then(|f| rfc3339(f.ts_ms)),
        steps: op
            .steps
            .iter()
            .map(|s| OpStep {
                step: s.step.clone(),
                node: s.node.clone(),
                state: match s.state {
                    StepState::Started => "started",
                    StepState::Succeeded => "succeeded",
                    StepState::Failed => "failed",
                }
                .to_owned(),
                detail: s.detail.clone(),
            })
            .collect(),
        rolled_back: op.rollback.is_some(),
        error: finished.and_then(|f| {
            f.error_code.as_ref().map(|code| OpError {
                code: code.clone(),
                message: f.error_message.clone().unwrap_or_default(),
            })
        }),
        result: finished
            .and_then(|f| f.result_json.as_deref())
            .and_then(|j| serde_json::from_str(j).ok()),
    }
}

/// `op_status`.
pub fn op_status(journal: &Journal, tracker: &OpTracker, op_id: Uuid) -> Result<OpStatus> {
    if let Some(s) = journal.view(|p| p.ops.get(&op_id).map(status_of)) {
        return Ok(s);
    }
    tracker.refused(op_id).ok_or_else(|| EngineError::NotFound {
        kind: "operation",
        name: format!(
            "{op_id} (never recorded, or older than the {} operations the server keeps)",
            journal.view(|p| p.retain_ops)
        ),
    })
}

/// `op_wait`: the status once the operation finishes, or as it stands when `wait` runs out.
pub async fn op_wait(
    journal: &Journal,
    tracker: &OpTracker,
    op_id: Uuid,
    wait: Duration,
) -> Result<OpStatus> {
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribe before looking, so no outcome slips between the look and the wait.
    let mut records = journal.subscribe();
    let mut done = tracker.done_rx(op_id);
    loop {
        let s = op_status(journal, tracker, op_id)?;
        if s.state == OpState::Finished {
            return Ok(s);
        }
        let tracker_done = async {
            match done.as_mut() {
                Some(rx) => {
                    let _ = rx.changed().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return op_status(journal, tracker, op_id),
            r = records.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r {
                    return op_status(journal, tracker, op_id);
                }
            }
            _ = tracker_done => { done = None; }
        }
    }
}

/// `op_list`: newest first, optionally one cluster's, at most `limit`.
pub fn op_list(journal: &Journal, cluster: Option<&str>, limit: usize) -> OpList {
    journal.view(|p| OpList {
        ops: p
            .ops
            .values()
            .rev()
            .filter(|o| cluster.is_none_or(|c| o.cluster.as_deref() == Some(c)))
            .take(limit)
            .map(status_of)
            .collect(),
        retired: p.retired_ops,
    })
}
