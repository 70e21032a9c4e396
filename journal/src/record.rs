//! Journal records: the on-disk boundary types (convention C8).
//!
//! These types are what the journal stores, so they are versioned and kept
//! apart from engine and MCP types; callers convert with their own `From`
//! impls. Rules that keep them decodable by bincode 2:
//!
//! * plain structs and externally tagged enums only: never `#[serde(tag)]`,
//!   `untagged`, `flatten`, `skip*`, `skip_serializing_if`, nor
//!   `serde_json::Value` (free-form payloads are JSON *strings*);
//! * never change a released variant or field: add a new variant at the
//!   **end** of [`BodyV1`] (bincode encodes the variant index), or add a new
//!   record version `V2` at the end of [`JournalRecord`].
//!
//! Every released shape has a golden fixture in `journal/tests/data/`.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A journal record as stored, tagged with its format version.
///
/// The version tag is bincode's variant index, i.e. the first payload byte
/// of a frame; [`crate::codec::decode`] checks it before decoding the rest,
/// so a record written by a newer binary reports
/// [`crate::codec::DecodeError::UnknownVersion`] instead of garbage. To add
/// `V2`, append the variant here, bump [`JournalRecord::LATEST_VERSION`],
/// and keep decoding `V1` (upcast it where callers want the new shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JournalRecord {
    /// Format version 1.
    V1(RecordV1),
}

impl JournalRecord {
    /// Highest version tag this build can decode (tags start at 0 for `V1`).
    pub const LATEST_VERSION: u32 = 0;

    /// The record's sequence number (its key in the store).
    pub fn seq(&self) -> u64 {
        match self {
            JournalRecord::V1(r) => r.seq,
        }
    }

    /// When the record was appended (wall clock of the writer, UTC).
    pub fn ts(&self) -> DateTime<Utc> {
        match self {
            JournalRecord::V1(r) => r.ts(),
        }
    }

    /// The record's body.
    pub fn body(&self) -> &BodyV1 {
        match self {
            JournalRecord::V1(r) => &r.body,
        }
    }

    /// The version tag of this record (0 for `V1`).
    pub fn version(&self) -> u32 {
        match self {
            JournalRecord::V1(_) => 0,
        }
    }

    /// The record as the current in-memory shape ([`RecordV1`]).
    pub fn into_v1(self) -> RecordV1 {
        match self {
            JournalRecord::V1(r) => r,
        }
    }
}

impl From<RecordV1> for JournalRecord {
    fn from(r: RecordV1) -> Self {
        JournalRecord::V1(r)
    }
}

/// Version 1 of a journal record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordV1 {
    /// Sequence number, strictly increasing, starting at 1.
    pub seq: u64,
    /// Append time: milliseconds since the Unix epoch, UTC.
    pub ts_ms: i64,
    /// What happened.
    pub body: BodyV1,
}

impl RecordV1 {
    /// [`RecordV1::ts_ms`] as a `DateTime` (the epoch if out of range).
    pub fn ts(&self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.ts_ms)
            .single()
            .unwrap_or(DateTime::UNIX_EPOCH)
    }
}

/// How a mutating command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// The command's effects are in place.
    Applied,
    /// The command had no effect on the host (failed before any side effect,
    /// or was fully rolled back).
    NotApplied,
    /// Unknown whether the effects happened (e.g. a timeout mid-call); the
    /// next reconcile must look at the host.
    Indeterminate,
}

/// Kind of a host object in the ownership ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ObjectKind {
    /// A libvirt domain.
    Domain,
    /// A libvirt network.
    Network,
    /// A file (disk image, seed ISO, key, ...).
    File,
    /// A snapshot.
    Snapshot,
    /// A firewall / forwarding rule.
    Rule,
}

impl ObjectKind {
    /// Stable lower-case name (for logs and the audit stream).
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Domain => "domain",
            ObjectKind::Network => "network",
            ObjectKind::File => "file",
            ObjectKind::Snapshot => "snapshot",
            ObjectKind::Rule => "rule",
        }
    }
}

/// Body of a version-1 record. Append new variants at the end only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BodyV1 {
    /// Intent of a mutating tool call; durable before its first side effect.
    CommandStarted {
        /// Operation id (shared by every record of this command).
        op_id: Uuid,
        /// Tool or CLI command name.
        tool: String,
        /// Cluster the command targets, if any.
        cluster: Option<String>,
        /// The call's parameters, as JSON.
        params_json: String,
    },
    /// End of a command.
    CommandFinished {
        /// Operation id.
        op_id: Uuid,
        /// Whether its effects happened.
        outcome: Outcome,
        /// Machine-readable error code, if it failed.
        error_code: Option<String>,
        /// Human-readable error message, if it failed.
        error_message: Option<String>,
        /// The result returned to the caller, as JSON.
        result_json: Option<String>,
    },
    /// Intent of a saga step; durable before the step's side effect.
    StepStarted {
        /// Operation id.
        op_id: Uuid,
        /// Step name (stable, idempotent).
        step: String,
        /// Node the step acts on, if any.
        node: Option<String>,
    },
    /// End of a saga step.
    StepFinished {
        /// Operation id.
        op_id: Uuid,
        /// Step name.
        step: String,
        /// Node the step acted on, if any.
        node: Option<String>,
        /// Whether the step succeeded.
        ok: bool,
        /// Free-form detail (error text, output summary).
        detail: Option<String>,
    },
    /// A cluster definition was accepted.
    ClusterDefined {
        /// Operation id.
        op_id: Uuid,
        /// Cluster name.
        cluster: String,
        /// The cluster spec, as JSON.
        spec_json: String,
    },
    /// A cluster was removed.
    ClusterRemoved {
        /// Operation id.
        op_id: Uuid,
        /// Cluster name.
        cluster: String,
    },
    /// The server created an object on the host (ownership ledger).
    ObjectCreated {
        /// Operation id.
        op_id: Uuid,
        /// Owning cluster.
        cluster: String,
        /// Object kind.
        kind: ObjectKind,
        /// Object id (libvirt name, path, ...).
        id: String,
    },
    /// The server removed an object from the host (ownership ledger).
    ObjectRemoved {
        /// Operation id.
        op_id: Uuid,
        /// Owning cluster.
        cluster: String,
        /// Object kind.
        kind: ObjectKind,
        /// Object id.
        id: String,
    },
    /// A node state change, for the audit stream.
    NodeEvent {
        /// Cluster name.
        cluster: String,
        /// Node name.
        node: String,
        /// Event kind (e.g. `"started"`, `"crashed"`).
        kind: String,
        /// Free-form detail.
        detail: Option<String>,
    },
    /// An SSH host key was pinned for a node (trust on first use).
    HostKeyPinned {
        /// Cluster name.
        cluster: String,
        /// Node name.
        node: String,
        /// The key in OpenSSH format (`ssh-ed25519 AAAA...`).
        key_openssh: String,
    },
    /// A failed operation began undoing what it did; its objects are removed next, and its
    /// outcome follows. Restart continues a rollback that was interrupted.
    RollbackStarted {
        /// Operation id.
        op_id: Uuid,
        /// Why (the error that made it roll back).
        reason: String,
    },
    /// Retention: the projection of every record before this one (bincode of
    /// `projection::Projection`). Records before a checkpoint are deleted once it is durable;
    /// replay starts from the last checkpoint.
    Checkpoint {
        /// The encoded projection.
        projection: Vec<u8>,
    },
}

impl BodyV1 {
    /// The operation id, for bodies that belong to an operation.
    pub fn op_id(&self) -> Option<Uuid> {
        match self {
            BodyV1::CommandStarted { op_id, .. }
            | BodyV1::CommandFinished { op_id, .. }
            | BodyV1::StepStarted { op_id, .. }
            | BodyV1::StepFinished { op_id, .. }
            | BodyV1::ClusterDefined { op_id, .. }
            | BodyV1::ClusterRemoved { op_id, .. }
            | BodyV1::ObjectCreated { op_id, .. }
            | BodyV1::ObjectRemoved { op_id, .. }
            | BodyV1::RollbackStarted { op_id, .. } => Some(*op_id),
            BodyV1::NodeEvent { .. } | BodyV1::HostKeyPinned { .. } | BodyV1::Checkpoint { .. } => {
                None
            }
        }
    }

    /// Stable name of the variant (for logs, the audit stream and fixtures).
    pub fn kind_name(&self) -> &'static str {
        match self {
            BodyV1::CommandStarted { .. } => "command_started",
            BodyV1::CommandFinished { .. } => "command_finished",
            BodyV1::StepStarted { .. } => "step_started",
            BodyV1::StepFinished { .. } => "step_finished",
            BodyV1::ClusterDefined { .. } => "cluster_defined",
            BodyV1::ClusterRemoved { .. } => "cluster_removed",
            BodyV1::ObjectCreated { .. } => "object_created",
            BodyV1::ObjectRemoved { .. } => "object_removed",
            BodyV1::NodeEvent { .. } => "node_event",
            BodyV1::HostKeyPinned { .. } => "host_key_pinned",
            BodyV1::RollbackStarted { .. } => "rollback_started",
            BodyV1::Checkpoint { .. } => "checkpoint",
        }
    }
}
