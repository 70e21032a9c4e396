//! Journaled operations: the write-ahead discipline every mutating command follows.
//!
//! 1. [`Op::begin`] appends `CommandStarted` and waits until it is durable, before anything on
//!    the host changes.
//! 2. [`Op::step`] appends `StepStarted` (durable) before the step's side effect and
//!    `StepFinished` after it; a failed step becomes [`EngineError::Step`] naming it. A cancelled
//!    operation stops here, between two steps, never inside one.
//! 3. Inside a step, [`Op::will_create`] declares an object *before* creating it (durable), so
//!    the ownership ledger can never miss an object the host has; undo is "remove if present".
//! 4. [`Op::finish`] appends `CommandFinished` with the outcome; only then is the result
//!    returned to the caller.
//!
//! Durability: every record above is acknowledged only after the journal's group commit has
//! flushed it (sled `flush`: write + fsync), so it survives SIGKILL and power loss alike.
//!
//! Failpoints (`VMCLUSTER_FAILPOINTS`) let tests make a chosen step fail or abort the process
//! before or after its side effect, or hold it open for a while:
//! `step[:node][@before|@after]=error|abort|delay:<ms>`, comma-separated.

use std::future::Future;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use vmcluster_engine::plan::Step;
use vmcluster_journal::{BodyV1, Journal, ObjectKind, Outcome};

use crate::error::{EngineError, Result};

/// How far an operation has come, for progress notifications.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpProgress {
    /// Steps finished so far.
    pub done: u32,
    /// Steps in the plan, when known.
    pub total: Option<u32>,
    /// The step running now, or the last one finished (`define_domain worker-1`).
    pub current: Option<String>,
}

/// What the caller of a command can do to it while it runs.
#[derive(Debug, Clone, Default)]
pub struct OpControl {
    /// Cancels the operation at its next step boundary.
    pub cancel: CancellationToken,
    /// Receives progress updates.
    pub progress: Option<watch::Sender<OpProgress>>,
}

/// One journaled command in flight.
#[derive(Debug, Clone)]
pub struct Op {
    /// Its id (returned to clients as `op_id`).
    pub id: Uuid,
    cluster: String,
    journal: Journal,
    control: OpControl,
}

impl Op {
    /// Records the intent of a command under a fresh id; nothing may change on the host before
    /// this returns.
    pub async fn begin(
        journal: &Journal,
        tool: &str,
        cluster: &str,
        params: &serde_json::Value,
    ) -> Result<Op> {
        Op::begin_with(
            journal,
            Uuid::now_v7(),
            OpControl::default(),
            tool,
            cluster,
            params,
        )
        .await
    }

    /// Like [`Op::begin`] with an id chosen by the caller (so it can answer "still running,
    /// here is its id" before the command ends) and the caller's controls.
    pub async fn begin_with(
        journal: &Journal,
        id: Uuid,
        control: OpControl,
        tool: &str,
        cluster: &str,
        params: &serde_json::Value,
    ) -> Result<Op> {
        journal
            .append(BodyV1::CommandStarted {
                op_id: id,
                tool: tool.to_owned(),
                cluster: Some(cluster.to_owned()),
                params_json: params.to_string(),
            })
            .await?;
        Ok(Op {
            id,
            cluster: cluster.to_owned(),
            journal: journal.clone(),
            control,
        })
    }

    /// Takes over an operation the journal shows unfinished (restart settles it).
    pub fn resume(journal: &Journal, id: Uuid, cluster: &str) -> Op {
        Op {
            id,
            cluster: cluster.to_owned(),
            journal: journal.clone(),
            control: OpControl::default(),
        }
    }

    /// Sets the number of steps for progress reports.
    pub fn plan_len(&self, total: usize) {
        if let Some(p) = &self.control.progress {
            p.send_modify(|p| p.total = Some(total as u32));
        }
    }

    /// Appends a record that belongs to this op.
    pub async fn record(&self, body: BodyV1) -> Result<()> {
        self.journal.append(body).await?;
        Ok(())
    }

    /// Declares that this op is about to create an object on the host. Call it before the
    /// side effect: the ledger may then hold an object that was never made (undo removes it
    /// "if present"), but never miss one that was.
    pub async fn will_create(&self, kind: ObjectKind, id: impl Into<String>) -> Result<()> {
        self.record(BodyV1::ObjectCreated {
            op_id: self.id,
            cluster: self.cluster.clone(),
            kind,
            id: id.into(),
        })
        .await
    }

    /// Records that this op removed an object from the host.
    pub async fn removed(&self, kind: ObjectKind, id: impl Into<String>) -> Result<()> {
        self.record(BodyV1::ObjectRemoved {
            op_id: self.id,
            cluster: self.cluster.clone(),
            kind,
            id: id.into(),
        })
        .await
    }

    /// Runs one step between its durable intent and its outcome record. A cancelled operation
    /// does not begin the step.
    pub async fn step<T, F>(&self, step: &Step, work: F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let node = step.node().map(str::to_owned);
        if self.control.cancel.is_cancelled() {
            return Err(EngineError::Cancelled(step.name()));
        }
        if let Some(p) = &self.control.progress {
            let label = match &node {
                Some(n) => format!("{} {n}", step.name()),
                None => step.name().to_owned(),
            };
            p.send_modify(|p| p.current = Some(label));
        }
        self.record(BodyV1::StepStarted {
            op_id: self.id,
            step: step.name().to_owned(),
            node: node.clone(),
        })
        .await?;
        let started = std::time::Instant::now();
        let res: Result<T> = async {
            failpoint(step.name(), node.as_deref(), When::Before)?;
            let v = work.await?;
            failpoint(step.name(), node.as_deref(), When::After)?;
            Ok(v)
        }
        .await;
        tracing::debug!(op = %self.id, step = step.name(), ?node, ok = res.is_ok(), elapsed_ms = started.elapsed().as_millis() as u64, "step finished");
        let (ok, detail) = match &res {
            Ok(_) => (true, None),
            Err(e) => (false, Some(e.to_string())),
        };
        self.record(BodyV1::StepFinished {
            op_id: self.id,
            step: step.name().to_owned(),
            node: node.clone(),
            ok,
            detail,
        })
        .await?;
        if let Some(p) = &self.control.progress {
            p.send_modify(|p| p.done += 1);
        }
        res.map_err(|e| EngineError::Step {
            step: step.name(),
            node,
            source: Box::new(e),
        })
    }

    /// Records the command's outcome: `applied` on success; on error `outcome_on_error`
    /// (`NotApplied` when nothing is left of it, `Indeterminate` when part of it may remain).
    pub async fn finish<T: serde::Serialize>(&self, res: &Result<T>, outcome_on_error: Outcome) {
        let body = match res {
            Ok(v) => BodyV1::CommandFinished {
                op_id: self.id,
                outcome: Outcome::Applied,
                error_code: None,
                error_message: None,
                result_json: serde_json::to_string(v).ok(),
            },
            Err(e) => BodyV1::CommandFinished {
                op_id: self.id,
                outcome: outcome_on_error,
                error_code: Some(e.code().as_str().to_owned()),
                error_message: Some(e.to_string()),
                result_json: None,
            },
        };
        if let Err(e) = self.journal.append(body).await {
            tracing::error!(op = %self.id, error = %e, "cannot record the outcome of an operation");
        }
    }
}

/// Whether a failpoint fires before or after the step's side effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Before.
    Before,
    /// After.
    After,
}

/// Fires the failpoint configured for `step` on `node`, if any.
pub fn failpoint(step: &str, node: Option<&str>, when: When) -> Result<()> {
    let Ok(spec) = std::env::var("VMCLUSTER_FAILPOINTS") else {
        return Ok(());
    };
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (target, action) = item.split_once('=').unwrap_or((item, "error"));
        let (target, at) = match target.split_once('@') {
            Some((t, "after")) => (t, When::After),
            Some((t, _)) => (t, When::Before),
            None => (target, When::Before),
        };
        let (fs, fnode) = match target.split_once(':') {
            Some((s, n)) => (s, Some(n)),
            None => (target, None),
        };
        if fs != step || at != when || (fnode.is_some() && fnode != node) {
            continue;
        }
        if action == "abort" {
            tracing::error!(step, ?node, ?when, "failpoint: aborting the process");
            std::process::abort();
        }
        if let Some(ms) = action.strip_prefix("delay:") {
            // Holds the step open (blocking this worker thread, like a slow libvirt call).
            std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
            return Ok(());
        }
        return Err(EngineError::Internal(format!("failpoint {item} fired")));
    }
    Ok(())
}

/// The id and controls a caller gives a command before sending it, so it can report
/// "still running, op_id ..." or cancel it while it runs.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// The id the operation will be journaled under.
    pub op_id: Uuid,
    /// Cancellation and progress.
    pub control: OpControl,
}

impl Ticket {
    /// A fresh ticket (UUIDv7: ids sort by start time).
    pub fn new() -> Ticket {
        Ticket {
            op_id: Uuid::now_v7(),
            control: OpControl::default(),
        }
    }
}

impl Default for Ticket {
    fn default() -> Self {
        Ticket::new()
    }
}
