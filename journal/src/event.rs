//! The event stream: every journal record, seen as a state change a person or agent can follow.
//!
//! An [`Event`] is derived from one [`RecordV1`] by a pure function, [`Event::from_record`]; it
//! is never stored. Its [`EventKind`] is a stable vocabulary (`op.started`, `step.finished`,
//! `cluster.defined`, `node.state`, ...) that the CLI, the control socket and the MCP resources
//! and tools share.
//!
//! Some records name their cluster only through their operation (`CommandFinished`,
//! `StepStarted`, `StepFinished` carry just the `op_id`). An [`OpIndex`], fed every record in
//! order with [`OpIndex::note`], remembers each operation's tool and cluster so the events of
//! those records still say which cluster they belong to.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::SecondsFormat;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::record::{BodyV1, Outcome, RecordV1};

/// Longest `detail` an event carries; longer text is cut (on a character boundary) and ends
/// with `…`.
pub const MAX_DETAIL: usize = 240;

/// What kind of state change an event is. The names are stable: scripts match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum EventKind {
    /// A mutating command was accepted and journaled before its first side effect.
    #[serde(rename = "op.started")]
    OpStarted,
    /// A command ended; `outcome` says whether its effects happened.
    #[serde(rename = "op.finished")]
    OpFinished,
    /// A step of a command is about to change the host.
    #[serde(rename = "step.started")]
    StepStarted,
    /// A step ended; `outcome` is `ok` or `failed`.
    #[serde(rename = "step.finished")]
    StepFinished,
    /// A cluster definition was accepted.
    #[serde(rename = "cluster.defined")]
    ClusterDefined,
    /// A cluster was removed.
    #[serde(rename = "cluster.removed")]
    ClusterRemoved,
    /// An object (domain, network, file, ...) was created on the host.
    #[serde(rename = "object.created")]
    ObjectCreated,
    /// An object was removed from the host.
    #[serde(rename = "object.removed")]
    ObjectRemoved,
    /// A node changed state (domain state, readiness).
    #[serde(rename = "node.state")]
    NodeState,
    /// A node's SSH host key was pinned on first contact.
    #[serde(rename = "host_key.pinned")]
    HostKeyPinned,
    /// A node's pinned host key was forgotten (it got a fresh disk).
    #[serde(rename = "host_key.forgotten")]
    HostKeyForgotten,
    /// A failed, cancelled or interrupted command began undoing what it did.
    #[serde(rename = "op.rollback")]
    OpRollback,
    /// Retention: the journal checkpointed its state and dropped the records before it.
    #[serde(rename = "journal.checkpoint")]
    JournalCheckpoint,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 13] = [
        EventKind::OpStarted,
        EventKind::OpFinished,
        EventKind::StepStarted,
        EventKind::StepFinished,
        EventKind::ClusterDefined,
        EventKind::ClusterRemoved,
        EventKind::ObjectCreated,
        EventKind::ObjectRemoved,
        EventKind::NodeState,
        EventKind::HostKeyPinned,
        EventKind::HostKeyForgotten,
        EventKind::OpRollback,
        EventKind::JournalCheckpoint,
    ];

    /// The stable name (`op.started`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::OpStarted => "op.started",
            EventKind::OpFinished => "op.finished",
            EventKind::StepStarted => "step.started",
            EventKind::StepFinished => "step.finished",
            EventKind::ClusterDefined => "cluster.defined",
            EventKind::ClusterRemoved => "cluster.removed",
            EventKind::ObjectCreated => "object.created",
            EventKind::ObjectRemoved => "object.removed",
            EventKind::NodeState => "node.state",
            EventKind::HostKeyPinned => "host_key.pinned",
            EventKind::HostKeyForgotten => "host_key.forgotten",
            EventKind::OpRollback => "op.rollback",
            EventKind::JournalCheckpoint => "journal.checkpoint",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an operation or a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventOutcome {
    /// `op.finished`: the command's effects are in place.
    Applied,
    /// `op.finished`: the command changed nothing.
    NotApplied,
    /// `op.finished`: unknown how much of the command happened (it failed after changing
    /// something).
    Indeterminate,
    /// `step.finished`: the step succeeded.
    Ok,
    /// `step.finished`: the step failed.
    Failed,
}

impl EventOutcome {
    /// The stable name (`applied`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Applied => "applied",
            EventOutcome::NotApplied => "not_applied",
            EventOutcome::Indeterminate => "indeterminate",
            EventOutcome::Ok => "ok",
            EventOutcome::Failed => "failed",
        }
    }
}

impl From<Outcome> for EventOutcome {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Applied => EventOutcome::Applied,
            Outcome::NotApplied => EventOutcome::NotApplied,
            Outcome::Indeterminate => EventOutcome::Indeterminate,
        }
    }
}

/// Why an operation or a step failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EventError {
    /// The stable error code (`NOT_FOUND`, `TIMEOUT`, ...), when one was recorded (a failed
    /// step records only its message; its operation's `op.finished` carries the code).
    pub code: Option<String>,
    /// What went wrong.
    pub message: String,
}

/// One state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// The journal sequence number: strictly increasing, the cursor for `since`.
    pub seq: u64,
    /// When it was journaled (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// What happened.
    pub kind: EventKind,
    /// The cluster concerned, when there is one.
    pub cluster: Option<String>,
    /// The node concerned, when there is one.
    pub node: Option<String>,
    /// The operation this belongs to (the `op_id` its tool call returned).
    pub op_id: Option<String>,
    /// The tool (or CLI verb) of that operation (`cluster_define`, ...).
    pub tool: Option<String>,
    /// A short description: the step's name, the object's kind and id, the node's new state,
    /// the command's parameters.
    pub detail: Option<String>,
    /// How an operation (`op.finished`) or step (`step.finished`) ended.
    pub outcome: Option<EventOutcome>,
    /// Why it failed, when it did.
    pub error: Option<EventError>,
}

/// What one operation's later records need from its `CommandStarted`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpInfo {
    /// Tool or CLI command name.
    pub tool: Arc<str>,
    /// The cluster it targets.
    pub cluster: Option<Arc<str>>,
}

/// Operation id → tool and cluster, learned from `CommandStarted` records.
///
/// Names are interned, so an index of many operations on few clusters stays small (a few tens
/// of bytes per operation).
#[derive(Debug, Clone, Default)]
pub struct OpIndex {
    ops: HashMap<Uuid, OpInfo>,
    names: HashSet<Arc<str>>,
}

impl OpIndex {
    /// An empty index.
    pub fn new() -> OpIndex {
        OpIndex::default()
    }

    /// Learns from `rec` (only `CommandStarted` teaches anything). Idempotent, so a record
    /// may be noted more than once.
    pub fn note(&mut self, rec: &RecordV1) {
        if let BodyV1::CommandStarted {
            op_id,
            tool,
            cluster,
            ..
        } = &rec.body
        {
            let tool = self.intern(tool);
            let cluster = cluster.as_deref().map(|c| self.intern(c));
            self.ops.insert(*op_id, OpInfo { tool, cluster });
        }
    }

    /// What is known of operation `op_id`.
    pub fn get(&self, op_id: &Uuid) -> Option<&OpInfo> {
        self.ops.get(op_id)
    }

    /// How many operations it knows.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether it knows none.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.names.insert(a.clone());
        a
    }
}

/// Cuts `s` to [`MAX_DETAIL`] bytes (on a character boundary), marking the cut.
fn short(s: &str) -> String {
    if s.len() <= MAX_DETAIL {
        return s.to_owned();
    }
    let mut end = MAX_DETAIL;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl Event {
    /// The event of `rec`. `ops` must have noted every earlier record (it supplies the cluster
    /// and tool of records that only carry an `op_id`); the record itself need not be noted.
    pub fn from_record(rec: &RecordV1, ops: &OpIndex) -> Event {
        let info = rec.body.op_id().and_then(|id| ops.get(&id));
        let mut e = Event {
            seq: rec.seq,
            time: rec.ts().to_rfc3339_opts(SecondsFormat::Millis, true),
            kind: EventKind::OpStarted,
            cluster: info.and_then(|i| i.cluster.as_deref().map(str::to_owned)),
            node: None,
            op_id: rec.body.op_id().map(|u| u.to_string()),
            tool: info.map(|i| i.tool.to_string()),
            detail: None,
            outcome: None,
            error: None,
        };
        match &rec.body {
            BodyV1::CommandStarted {
                tool,
                cluster,
                params_json,
                ..
            } => {
                e.kind = EventKind::OpStarted;
                e.tool = Some(tool.clone());
                e.cluster = cluster.clone();
                e.detail = Some(short(params_json)).filter(|p| p != "{}" && !p.is_empty());
            }
            BodyV1::CommandFinished {
                outcome,
                error_code,
                error_message,
                ..
            } => {
                e.kind = EventKind::OpFinished;
                e.outcome = Some((*outcome).into());
                if error_code.is_some() || error_message.is_some() {
                    e.error = Some(EventError {
                        code: error_code.clone(),
                        message: error_message.as_deref().map(short).unwrap_or_default(),
                    });
                }
            }
            BodyV1::StepStarted { step, node, .. } => {
                e.kind = EventKind::StepStarted;
                e.node = node.clone();
                e.detail = Some(step.clone());
            }
            BodyV1::StepFinished {
                step,
                node,
                ok,
                detail,
                ..
            } => {
                e.kind = EventKind::StepFinished;
                e.node = node.clone();
                e.detail = Some(step.clone());
                e.outcome = Some(if *ok {
                    EventOutcome::Ok
                } else {
                    EventOutcome::Failed
                });
                if !ok {
                    e.error = Some(EventError {
                        code: None,
                        message: detail.as_deref().map(short).unwrap_or_default(),
                    });
                }
            }
            BodyV1::ClusterDefined { cluster, .. } => {
                e.kind = EventKind::ClusterDefined;
                e.cluster = Some(cluster.clone());
            }
            BodyV1::ClusterRemoved { cluster, .. } => {
                e.kind = EventKind::ClusterRemoved;
                e.cluster = Some(cluster.clone());
            }
            BodyV1::ObjectCreated {
                cluster, kind, id, ..
            } => {
                e.kind = EventKind::ObjectCreated;
                e.cluster = Some(cluster.clone());
                e.detail = Some(short(&format!("{} {id}", kind.as_str())));
            }
            BodyV1::ObjectRemoved {
                cluster, kind, id, ..
            } => {
                e.kind = EventKind::ObjectRemoved;
                e.cluster = Some(cluster.clone());
                e.detail = Some(short(&format!("{} {id}", kind.as_str())));
            }
            BodyV1::NodeEvent {
                cluster,
                node,
                kind,
                detail,
            } => {
                e.kind = EventKind::NodeState;
                e.cluster = Some(cluster.clone());
                e.node = Some(node.clone());
                e.detail = Some(short(&match detail {
                    Some(d) if !d.is_empty() => format!("{kind}: {d}"),
                    _ => kind.clone(),
                }));
            }
            BodyV1::HostKeyPinned {
                cluster,
                node,
                key_openssh,
            } => {
                e.cluster = Some(cluster.clone());
                e.node = Some(node.clone());
                if key_openssh.is_empty() {
                    e.kind = EventKind::HostKeyForgotten;
                } else {
                    e.kind = EventKind::HostKeyPinned;
                    e.detail = Some(short(key_openssh));
                }
            }
            BodyV1::RollbackStarted { reason, .. } => {
                e.kind = EventKind::OpRollback;
                e.detail = Some(short(reason));
            }
            BodyV1::Checkpoint { projection } => {
                e.kind = EventKind::JournalCheckpoint;
                e.detail = Some(format!("{} bytes", projection.len()));
            }
        }
        e
    }
}

/// Which events a reader wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only events of this cluster (events of no cluster are left out too).
    pub cluster: Option<String>,
}

impl EventFilter {
    /// Every event.
    pub fn all() -> EventFilter {
        EventFilter::default()
    }

    /// The events of `cluster`.
    pub fn cluster(cluster: impl Into<String>) -> EventFilter {
        EventFilter {
            cluster: Some(cluster.into()),
        }
    }

    /// Whether `e` passes.
    pub fn matches(&self, e: &Event) -> bool {
        match &self.cluster {
            Some(c) => e.cluster.as_deref() == Some(c.as_str()),
            None => true,
        }
    }
}

/// One page of events, as `events_read` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EventPage {
    /// The events with `seq > since` that pass the filter, oldest first, at most `limit`.
    pub events: Vec<Event>,
    /// Pass this as `since` to read on: the last sequence number this read looked at.
    pub next_since: u64,
    /// The newest sequence number in the journal when this was read (0: empty journal).
    pub last_seq: u64,
    /// Whether more records follow `next_since` (read again to get them).
    pub more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ObjectKind;

    fn rec(seq: u64, body: BodyV1) -> RecordV1 {
        RecordV1 {
            seq,
            ts_ms: 1_700_000_000_123,
            body,
        }
    }

    #[test]
    fn kind_names_match_their_serde_names() {
        for k in EventKind::ALL {
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.as_str())
            );
        }
    }

    #[test]
    fn op_records_get_their_cluster_from_the_index() {
        let op = Uuid::now_v7();
        let started = rec(
            1,
            BodyV1::CommandStarted {
                op_id: op,
                tool: "cluster_define".into(),
                cluster: Some("c1".into()),
                params_json: r#"{"topology_name":"c1"}"#.into(),
            },
        );
        let step = rec(
            2,
            BodyV1::StepFinished {
                op_id: op,
                step: "define_domain".into(),
                node: Some("n1".into()),
                ok: false,
                detail: Some("boom".into()),
            },
        );
        let finished = rec(
            3,
            BodyV1::CommandFinished {
                op_id: op,
                outcome: Outcome::Indeterminate,
                error_code: Some("LIBVIRT".into()),
                error_message: Some("boom".into()),
                result_json: None,
            },
        );
        let mut ops = OpIndex::new();
        let e = Event::from_record(&started, &ops);
        assert_eq!(e.kind, EventKind::OpStarted);
        assert_eq!(e.time, "2023-11-14T22:13:20.123Z");
        assert_eq!(e.cluster.as_deref(), Some("c1"));
        assert_eq!(e.detail.as_deref(), Some(r#"{"topology_name":"c1"}"#));
        ops.note(&started);
        ops.note(&started);
        assert_eq!(ops.len(), 1);

        let e = Event::from_record(&step, &ops);
        assert_eq!(
            (
                e.kind,
                e.cluster.as_deref(),
                e.node.as_deref(),
                e.tool.as_deref()
            ),
            (
                EventKind::StepFinished,
                Some("c1"),
                Some("n1"),
                Some("cluster_define")
            )
        );
        assert_eq!(e.outcome, Some(EventOutcome::Failed));
        assert_eq!(e.error.unwrap().message, "boom");

        let e = Event::from_record(&finished, &ops);
        assert_eq!(e.kind, EventKind::OpFinished);
        assert_eq!(e.outcome, Some(EventOutcome::Indeterminate));
        assert_eq!(e.error.unwrap().code.as_deref(), Some("LIBVIRT"));
        assert_eq!(e.op_id, Some(op.to_string()));

        // Without the index the event still exists, only without a cluster.
        let e = Event::from_record(&finished, &OpIndex::new());
        assert_eq!((e.kind, e.cluster), (EventKind::OpFinished, None));
    }

    #[test]
    fn objects_nodes_and_keys() {
        let op = Uuid::now_v7();
        let ops = OpIndex::new();
        let e = Event::from_record(
            &rec(
                5,
                BodyV1::ObjectCreated {
                    op_id: op,
                    cluster: "c".into(),
                    kind: ObjectKind::Domain,
                    id: "c_n1".into(),
                },
            ),
            &ops,
        );
        assert_eq!(
            (e.kind, e.detail.as_deref()),
            (EventKind::ObjectCreated, Some("domain c_n1"))
        );
        let e = Event::from_record(
            &rec(
                6,
                BodyV1::NodeEvent {
                    cluster: "c".into(),
                    node: "n1".into(),
                    kind: "not ready".into(),
                    detail: Some("x".repeat(1000)),
                },
            ),
            &ops,
        );
        assert_eq!(e.kind, EventKind::NodeState);
        assert!(e.detail.as_ref().unwrap().starts_with("not ready: xxx"));
        assert!(e.detail.as_ref().unwrap().len() <= MAX_DETAIL + "…".len());
        let forget = BodyV1::HostKeyPinned {
            cluster: "c".into(),
            node: "n1".into(),
            key_openssh: String::new(),
        };
        assert_eq!(
            Event::from_record(&rec(7, forget), &ops).kind,
            EventKind::HostKeyForgotten
        );
        assert!(EventFilter::cluster("c").matches(&e));
        assert!(!EventFilter::cluster("d").matches(&e));
        assert!(EventFilter::all().matches(&e));
    }

    #[test]
    fn short_cuts_on_char_boundaries() {
        let s = "é".repeat(MAX_DETAIL);
        let cut = short(&s);
        assert!(cut.ends_with('…'));
        assert!(cut.len() <= MAX_DETAIL + '…'.len_utf8());
    }
}
