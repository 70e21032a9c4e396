//! Journaled operations: the write-ahead discipline every mutating command follows.
//!
//! 1. [`Op::begin`] appends `CommandStarted` and waits until it is durable, before anything on
//!    the host changes.
//! 2. [`Op::step`] appends `StepStarted` (durable) before the step's side effect and
//!    `StepFinished` after it; a failed step becomes [`EngineError::Step`] naming it.
//! 3. [`Op::finish`] appends `CommandFinished` with the outcome; only then is the result
//!    returned to the caller.
//!
//! Failpoints (`VMCLUSTER_FAILPOINTS`) let tests make a chosen step fail or abort the process
//! before or after its side effect: `step[:node][@before|@after]=error|abort`, comma-separated.

use std::future::Future;

use uuid::Uuid;
use vmcluster_engine::plan::Step;
use vmcluster_journal::{BodyV1, Journal, ObjectKind, Outcome};

use crate::error::{EngineError, Result};

/// One journaled command in flight.
#[derive(Debug, Clone)]
pub struct Op {
    /// Its id (returned to clients as `op_id`).
    pub id: Uuid,
    cluster: String,
    journal: Journal,
}

impl Op {
    /// Records the intent of a command; nothing may change on the host before this returns.
    pub async fn begin(
        journal: &Journal,
        tool: &str,
        cluster: &str,
        params: &serde_json::Value,
    ) -> Result<Op> {
        let id = Uuid::now_v7();
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
        })
    }

    /// Appends a record that belongs to this op.
    pub async fn record(&self, body: BodyV1) -> Result<()> {
        self.journal.append(body).await?;
        Ok(())
    }

    /// Records that this op created an object on the host.
    pub async fn created(&self, kind: ObjectKind, id: impl Into<String>) -> Result<()> {
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

    /// Runs one step between its durable intent and its outcome record.
    pub async fn step<T, F>(&self, step: &Step, work: F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let node = step.node().map(str::to_owned);
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
        res.map_err(|e| EngineError::Step {
            step: step.name(),
            node,
            source: Box::new(e),
        })
    }

    /// Records the command's outcome. `applied` is what a failed command changed anyway.
    pub async fn finish<T: serde::Serialize>(&self, res: &Result<T>, applied_on_error: bool) {
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
                outcome: if applied_on_error {
                    Outcome::Indeterminate
                } else {
                    Outcome::NotApplied
                },
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
        return Err(EngineError::Internal(format!("failpoint {item} fired")));
    }
    Ok(())
}
