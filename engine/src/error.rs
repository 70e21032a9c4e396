//! Stable error codes shared by every layer.
//!
//! Each error type in the workspace maps itself to one [`ErrorCode`]; the MCP layer turns the
//! code into the `{code, message, recoverable}` envelope exactly once. The strings are part of
//! the public contract: clients branch on them, so they never change.

use serde::{Deserialize, Serialize};

/// A stable, machine-readable error class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The named cluster, node, topology or operation does not exist.
    NotFound,
    /// The request or the topology is malformed or violates a rule.
    InvalidArgument,
    /// The request clashes with existing state (an object we do not own, a busy cluster).
    Conflict,
    /// A bounded wait expired; the work may still be running.
    Timeout,
    /// libvirt refused or failed.
    Libvirt,
    /// SSH to a node failed (connect, authenticate or run).
    Ssh,
    /// A local file or process operation failed.
    Io,
    /// The journal could not record the command.
    Journal,
    /// The operation is not possible in the node's or cluster's current state.
    FailedPrecondition,
    /// A command ran but failed on at least one node (non-zero exit or timeout) where every
    /// node was required to succeed.
    CommandFailed,
    /// A bug: the server reached a state it should never reach.
    Internal,
    /// The operation was cancelled (between two steps; its outcome is journaled).
    Cancelled,
}

impl ErrorCode {
    /// The wire string of this code (`NOT_FOUND`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Libvirt => "LIBVIRT",
            ErrorCode::Ssh => "SSH",
            ErrorCode::Io => "IO",
            ErrorCode::Journal => "JOURNAL",
            ErrorCode::FailedPrecondition => "FAILED_PRECONDITION",
            ErrorCode::CommandFailed => "COMMAND_FAILED",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Cancelled => "CANCELLED",
        }
    }

    /// Whether retrying the same request later may succeed without changing it.
    pub fn recoverable(self) -> bool {
        matches!(
            self,
            ErrorCode::Timeout
                | ErrorCode::Libvirt
                | ErrorCode::Ssh
                | ErrorCode::Io
                | ErrorCode::Conflict
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
