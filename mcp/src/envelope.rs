//! The result envelope every tool returns, and the one place engine errors become tool errors.
//!
//! Shape (seed 000's, extended): `{success, result, error: {code, message, recoverable, ...},
//! op_id}`. A failure is returned as a tool result with `isError: true` and the same envelope in
//! `structuredContent`, so clients branch on `error.code` instead of parsing prose. JSON-RPC
//! errors are reserved for requests the protocol itself rejects.

use rmcp::handler::server::tool::IntoCallToolResult;
use rmcp::model::{CallToolResponse, CallToolResult, JsonObject};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use vmcluster_actors::{Engine, EngineError, Reply, Submitted};
use vmcluster_engine::ErrorCode;
use vmcluster_engine::view::{OpOutcome, OpState};

/// One node's share of a multi-node failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeFailure {
    /// Node name.
    pub node: String,
    /// Its error code.
    pub code: ErrorCode,
    /// What went wrong there.
    pub message: String,
}

/// A typed tool error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolError {
    /// Stable code (`NOT_FOUND`, `INVALID_ARGUMENT`, `CONFLICT`, `TIMEOUT`, `LIBVIRT`, `SSH`, ...).
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// Whether retrying the same request later may succeed.
    pub recoverable: bool,
    /// The node concerned, when there is one.
    pub node: Option<String>,
    /// The failed step of a multi-step command.
    pub step: Option<String>,
    /// Per-node failures of a multi-node command.
    pub nodes: Vec<NodeFailure>,
    /// Topology violations, one per offending field.
    pub violations: Vec<vmcluster_engine::topology::Violation>,
}

impl ToolError {
    /// Maps an engine error (the only such mapping in the server).
    pub fn from_engine(e: &EngineError) -> ToolError {
        let code = e.code();
        let inner = match e {
            EngineError::Step { source, .. } => source.as_ref(),
            other => other,
        };
        let nodes = match inner {
            EngineError::Nodes { failures, .. } => failures
                .iter()
                .map(|(n, e)| NodeFailure {
                    node: n.clone(),
                    code: e.code(),
                    message: e.to_string(),
                })
                .collect(),
            _ => Vec::new(),
        };
        let violations = match inner {
            EngineError::Topology(vmcluster_engine::topology::TopologyError::Invalid(v)) => {
                v.clone()
            }
            _ => Vec::new(),
        };
        ToolError {
            code,
            message: e.to_string(),
            recoverable: code.recoverable(),
            node: e.node().map(str::to_owned),
            step: e.step().map(str::to_owned),
            nodes,
            violations,
        }
    }

    /// One error for a multi-node call in which `failures` of `total` nodes failed. Its code is
    /// the first failure's that is not `COMMAND_FAILED` (an unreachable node says more than a
    /// non-zero exit), else `COMMAND_FAILED`.
    pub fn from_node_failures(failures: Vec<NodeFailure>, total: usize) -> ToolError {
        let code = failures
            .iter()
            .map(|f| f.code)
            .find(|c| *c != ErrorCode::CommandFailed)
            .or(failures.first().map(|f| f.code))
            .unwrap_or(ErrorCode::Internal);
        let message = format!(
            "{} of {total} nodes failed: {}",
            failures.len(),
            failures
                .iter()
                .map(|f| format!("{}: {}", f.node, f.message))
                .collect::<Vec<_>>()
                .join("; ")
        );
        ToolError {
            code,
            message,
            recoverable: code.recoverable(),
            nodes: failures,
            ..ToolError::invalid("")
        }
    }

    /// An `INVALID_ARGUMENT` error.
    pub fn invalid(message: impl Into<String>) -> ToolError {
        ToolError {
            code: ErrorCode::InvalidArgument,
            message: message.into(),
            recoverable: false,
            node: None,
            step: None,
            nodes: Vec::new(),
            violations: Vec::new(),
        }
    }
}

/// The envelope of every tool result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope<T> {
    /// Whether the tool did what was asked.
    pub success: bool,
    /// The result, when successful.
    pub result: Option<T>,
    /// The error, when not.
    pub error: Option<ToolError>,
    /// Id of the journaled operation (mutating tools only).
    pub op_id: Option<String>,
    /// Mutating tools: `running` when the call's wait ran out and the operation goes on
    /// (`result` is then empty; follow `op_id` with op_wait), else `finished`.
    pub state: Option<OpState>,
    /// Mutating tools, once finished: `applied`, `not_applied` (nothing of it remains) or
    /// `indeterminate` (part of it may have happened; see `error`).
    pub outcome: Option<OpOutcome>,
}

impl<T> Envelope<T> {
    /// A success.
    pub fn ok(result: T, op_id: Option<uuid::Uuid>) -> Envelope<T> {
        let journaled = op_id.is_some();
        Envelope {
            success: true,
            result: Some(result),
            error: None,
            op_id: op_id.map(|u| u.to_string()),
            state: journaled.then_some(OpState::Finished),
            outcome: journaled.then_some(OpOutcome::Applied),
        }
    }
}

/// A failed tool call: converts to `isError: true` with the envelope as structured content.
#[derive(Debug)]
pub struct Failure(pub serde_json::Value);

impl Failure {
    /// Wraps a tool error.
    pub fn new(error: ToolError, op_id: Option<uuid::Uuid>) -> Failure {
        let env: Envelope<()> = Envelope {
            success: false,
            result: None,
            error: Some(error),
            op_id: op_id.map(|u| u.to_string()),
            state: None,
            outcome: None,
        };
        Failure(serde_json::to_value(env).unwrap_or_default())
    }
}

impl Failure {
    /// A failure that still carries a result (per-node outcomes of a strict multi-node call).
    pub fn with_result<T: Serialize>(
        error: ToolError,
        op_id: Option<uuid::Uuid>,
        result: &T,
    ) -> Failure {
        let env = Envelope {
            success: false,
            result: Some(result),
            error: Some(error),
            op_id: op_id.map(|u| u.to_string()),
            state: None,
            outcome: None,
        };
        Failure(serde_json::to_value(env).unwrap_or_default())
    }
}

impl IntoCallToolResult for Failure {
    fn into_call_tool_result(self) -> Result<CallToolResponse, rmcp::ErrorData> {
        Ok(CallToolResult::structured_error(self.0).into())
    }
}

/// What a tool method returns.
pub type ToolResult<T> = Result<rmcp::Json<Envelope<T>>, Failure>;

/// Turns an engine answer into a tool result.
pub fn from_result<T>(r: vmcluster_actors::Result<T>) -> ToolResult<T> {
    match r {
        Ok(v) => Ok(rmcp::Json(Envelope::ok(v, None))),
        Err(e) => Err(Failure::new(ToolError::from_engine(&e), None)),
    }
}

/// Turns a journaled command's reply into a tool result.
pub fn from_reply<T>(r: Reply<T>) -> ToolResult<T> {
    match r.result {
        Ok(v) => Ok(rmcp::Json(Envelope::ok(v, r.op_id))),
        Err(e) => Err(Failure::new(ToolError::from_engine(&e), r.op_id)),
    }
}

/// Parses raw tool arguments into typed parameters; a mismatch is an `INVALID_ARGUMENT` tool
/// error (so the model can correct itself), never a protocol error.
pub fn parse<P: DeserializeOwned>(args: JsonObject) -> Result<P, Failure> {
    // The error names the offending argument (`ssh_timeout_s: invalid type ...`), so a model
    // knows what to correct.
    serde_path_to_error::deserialize(serde_json::Value::Object(args)).map_err(|e| {
        let path = e.path().to_string();
        let message = if path == "." {
            format!("Invalid arguments: {}", e.inner())
        } else {
            format!("Invalid argument {path}: {}", e.inner())
        };
        Failure::new(ToolError::invalid(message), None)
    })
}

/// The input schema advertised for parameters of type `P`.
pub fn input_schema<P: JsonSchema + 'static>() -> std::sync::Arc<JsonObject> {
    rmcp::handler::server::common::schema_for_input::<P>()
        .expect("parameter types are JSON objects")
}

/// Turns a slow command's answer into a tool result: its reply with the journaled outcome, or
/// `{success: true, state: running, op_id}` when the wait ran out first.
pub fn from_submitted<T>(engine: &Engine, s: Submitted<T>) -> ToolResult<T> {
    match s {
        Submitted::Running { op_id } => Ok(rmcp::Json(Envelope {
            success: true,
            result: None,
            error: None,
            op_id: Some(op_id.to_string()),
            state: Some(OpState::Running),
            outcome: None,
        })),
        Submitted::Done(r) => match r.result {
            Ok(v) => Ok(rmcp::Json(Envelope::ok(v, r.op_id))),
            Err(e) => {
                let outcome = match r.op_id {
                    None => OpOutcome::NotApplied,
                    Some(id) => engine
                        .op_status(id)
                        .ok()
                        .and_then(|s| s.outcome)
                        .unwrap_or(OpOutcome::Indeterminate),
                };
                let env: Envelope<()> = Envelope {
                    success: false,
                    result: None,
                    error: Some(ToolError::from_engine(&e)),
                    op_id: r.op_id.map(|u| u.to_string()),
                    state: Some(OpState::Finished),
                    outcome: Some(outcome),
                };
                Err(Failure(serde_json::to_value(env).unwrap_or_default()))
            }
        },
    }
}
