//! The one error type every actor reply carries, with its stable [`ErrorCode`].
//!
//! Messages are short and capitalised; `Display` never repeats a source's text twice. The MCP
//! layer maps an [`EngineError`] to the `{code, message, recoverable, ...}` envelope once.

use vmcluster_engine::ErrorCode;
use vmcluster_engine::state::Readiness;
use vmcluster_engine::topology::TopologyError;
use vmcluster_journal::JournalError;

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A named thing does not exist.
    #[error("No {kind} named {name:?}")]
    NotFound {
        /// What kind of thing (`cluster`, `node`, `topology`).
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The topology cannot be used.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// A request argument is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request clashes with existing state.
    #[error("{0}")]
    Conflict(String),
    /// The operation is impossible in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// libvirt failed.
    #[error("libvirt {action} failed: {message}")]
    Libvirt {
        /// What we asked libvirt to do.
        action: String,
        /// libvirt's message.
        message: String,
    },
    /// A node could not be reached or commanded over SSH.
    #[error("SSH to node {node:?} failed: {message}")]
    Ssh {
        /// The node.
        node: String,
        /// What failed.
        message: String,
    },
    /// A node did not become ready in time.
    #[error("Node {node:?} not ready after {waited_s} s (last phase reached: {}){}{}", phase.as_str(), detail.as_deref().map(|d| format!("; last error: {d}")).unwrap_or_default(), console_tail.as_deref().map(|t| format!("\n--- console tail ---\n{t}")).unwrap_or_default())]
    NotReady {
        /// The node.
        node: String,
        /// The last readiness phase it reached.
        phase: Readiness,
        /// How long we waited.
        waited_s: u64,
        /// The last probe error.
        detail: Option<String>,
        /// The end of its serial console log.
        console_tail: Option<String>,
    },
    /// A bounded wait expired.
    #[error("{0}")]
    Timeout(String),
    /// A local file or process operation failed.
    #[error("{action}: {message}")]
    Io {
        /// What we tried.
        action: String,
        /// Why it failed.
        message: String,
    },
    /// The journal failed; nothing was done.
    #[error("Journal: {0}")]
    Journal(#[from] JournalError),
    /// A step of a multi-step command failed.
    #[error("Step {step}{} failed: {source}", node.as_deref().map(|n| format!(" on node {n:?}")).unwrap_or_default())]
    Step {
        /// The step's stable name.
        step: &'static str,
        /// The node it acted on.
        node: Option<String>,
        /// What went wrong.
        source: Box<EngineError>,
    },
    /// Several nodes failed; each failure is listed.
    #[error("{} of {total} nodes failed: {}", failures.len(), failures.iter().map(|(n, e)| format!("{n}: {e}")).collect::<Vec<_>>().join("; "))]
    Nodes {
        /// Nodes in the request.
        total: usize,
        /// Per-node failures.
        failures: Vec<(String, EngineError)>,
    },
    /// A bug.
    #[error("Internal error: {0}")]
    Internal(String),
    /// The caller cancelled the operation; it stopped between two steps.
    #[error("Cancelled before step {0}")]
    Cancelled(&'static str),
}

impl EngineError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::NotFound { .. } => ErrorCode::NotFound,
            EngineError::Topology(_) | EngineError::InvalidArgument(_) => {
                ErrorCode::InvalidArgument
            }
            EngineError::Conflict(_) => ErrorCode::Conflict,
            EngineError::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            EngineError::Libvirt { .. } => ErrorCode::Libvirt,
            EngineError::Ssh { .. } => ErrorCode::Ssh,
            EngineError::NotReady { .. } | EngineError::Timeout(_) => ErrorCode::Timeout,
            EngineError::Io { .. } => ErrorCode::Io,
            EngineError::Journal(_) => ErrorCode::Journal,
            EngineError::Step { source, .. } => source.code(),
            EngineError::Nodes { failures, .. } => failures
                .first()
                .map(|(_, e)| e.code())
                .unwrap_or(ErrorCode::Internal),
            EngineError::Internal(_) => ErrorCode::Internal,
            EngineError::Cancelled(_) => ErrorCode::Cancelled,
        }
    }

    /// The node this error is about, when there is exactly one.
    pub fn node(&self) -> Option<&str> {
        match self {
            EngineError::Ssh { node, .. } | EngineError::NotReady { node, .. } => Some(node),
            EngineError::Step { node: Some(n), .. } => Some(n),
            EngineError::Step { source, .. } => source.node(),
            EngineError::Nodes { failures, .. } if failures.len() == 1 => Some(&failures[0].0),
            _ => None,
        }
    }

    /// The failed step's name, for multi-step commands.
    pub fn step(&self) -> Option<&'static str> {
        match self {
            EngineError::Step { step, .. } => Some(step),
            _ => None,
        }
    }

    /// Shorthand for an I/O failure.
    pub fn io(action: impl Into<String>, e: impl std::fmt::Display) -> EngineError {
        EngineError::Io {
            action: action.into(),
            message: e.to_string(),
        }
    }

    /// Shorthand for a libvirt failure.
    pub fn libvirt(action: impl Into<String>, e: &virt::error::Error) -> EngineError {
        EngineError::Libvirt {
            action: action.into(),
            message: e.message().to_owned(),
        }
    }
}

/// Result alias.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
