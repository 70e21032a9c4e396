//! What the tools return: cluster status, handles and summaries (seed 000's shapes, extended).
//!
//! These are plain serializable types with JSON schemas; the MCP layer wraps them in its
//! `{success, result, error}` envelope and advertises their schema as the tool's output schema.

use serde::{Deserialize, Serialize};

use crate::state::{DomainState, Readiness, SshSession};

/// One node in a [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// Role from the topology.
    pub role: String,
    /// Static IPv4 address.
    pub ip: String,
    /// libvirt domain name.
    pub domain: String,
    /// Domain state as libvirt last reported it.
    pub domain_state: DomainState,
    /// Readiness phase reached since the last boot.
    pub phase: Readiness,
    /// Whether SSH authenticated and ran a command since the last boot.
    pub ssh_reachable: bool,
    /// The pooled SSH session right now: `none`, `connecting` (boot probe or reconnect) or
    /// `connected`.
    pub ssh_session: SshSession,
    /// How many times the session was re-established after dropping, in this boot.
    pub ssh_reconnects: u64,
    /// Accelerator the domain was defined with (`kvm` or `qemu`).
    pub domain_type: String,
    /// The last readiness error, if the node failed to come up.
    pub last_error: Option<String>,
}

/// A cluster's state, answered from actor state without touching the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ClusterStatus {
    /// Cluster name.
    pub cluster_name: String,
    /// libvirt network name.
    pub network: String,
    /// Whether the network is active.
    pub network_active: bool,
    /// Nodes in topology order.
    pub nodes: Vec<NodeStatus>,
}

/// SSH descriptor of one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeHandle {
    /// Node name.
    pub name: String,
    /// Role.
    pub role: String,
    /// Address.
    pub ip: String,
    /// SSH port.
    pub ssh_port: u16,
    /// SSH user.
    pub ssh_user: String,
    /// Private key to use.
    pub ssh_key_path: String,
    /// Pinned host key (OpenSSH format) once known.
    pub host_key: Option<String>,
}

/// Everything a downstream tool needs to reach the cluster directly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ClusterHandle {
    /// Cluster name.
    pub cluster_name: String,
    /// Where artifacts land on the nodes.
    pub artifact_path: String,
    /// `uname -r` of the first node.
    pub kernel_version: String,
    /// Per-node kernel versions (they can differ after per-node overrides).
    pub kernel_versions: std::collections::BTreeMap<String, String>,
    /// Nodes.
    pub nodes: Vec<NodeHandle>,
}

/// One line of `cluster_list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ClusterSummary {
    /// Cluster name.
    pub cluster_name: String,
    /// Number of nodes.
    pub nodes: usize,
    /// Nodes whose domain is running.
    pub running: usize,
    /// libvirt network name.
    pub network: String,
    /// Subnet.
    pub subnet: String,
}

/// The answer of `cluster_list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ClusterList {
    /// Defined clusters, by name.
    pub clusters: Vec<ClusterSummary>,
}

/// The answer of a single-node tool (`node_crash`, `node_start`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeResult {
    /// Cluster name.
    pub cluster_name: String,
    /// The node after the operation.
    pub node: NodeStatus,
}

/// What a command run on a node produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExecResult {
    /// Exit status; absent when the command was killed or timed out.
    pub exit_code: Option<i64>,
    /// The signal that killed it, if one did.
    pub signal: Option<String>,
    /// Standard output (capped; see `truncated`).
    pub stdout: String,
    /// Standard error (capped; see `truncated`).
    pub stderr: String,
    /// Wall-clock time of the command.
    pub duration_ms: u64,
    /// Whether it outlived its timeout (it was then killed on the node).
    pub timed_out: bool,
    /// Whether stdout or stderr was cut at the output cap.
    pub truncated: bool,
    /// Full size of stdout.
    pub stdout_bytes: u64,
    /// Full size of stderr.
    pub stderr_bytes: u64,
    /// When stdout was truncated: an MCP resource holding it in full (up to 64 MiB), kept
    /// until newer outputs evict it.
    pub stdout_uri: Option<String>,
    /// When stderr was truncated: an MCP resource holding it in full (up to 64 MiB).
    pub stderr_uri: Option<String>,
}

/// The answer of `node_exec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeExecResult {
    /// Cluster name.
    pub cluster_name: String,
    /// Node name.
    pub node: String,
    /// The command's outcome.
    #[serde(flatten)]
    pub exec: ExecResult,
}

/// One node's share of `node_exec_all`: a result, or why the node could not run the command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeExecOutcome {
    /// Node name.
    pub node: String,
    /// The outcome, when the node ran the command.
    pub result: Option<ExecResult>,
    /// Error code (`SSH`, `TIMEOUT`, ...), when it could not.
    pub error_code: Option<crate::ErrorCode>,
    /// Error message, when it could not.
    pub error: Option<String>,
}

/// The answer of `node_exec_all`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExecAllResult {
    /// Cluster name.
    pub cluster_name: String,
    /// Per-node outcomes, in topology order.
    pub results: Vec<NodeExecOutcome>,
    /// Nodes that could not run the command, timed out, or exited non-zero.
    pub failed_nodes: Vec<String>,
    /// Whether every node exited 0.
    pub all_succeeded: bool,
}

/// The end of a node's serial console log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConsoleTail {
    /// Cluster name.
    pub cluster_name: String,
    /// Node name.
    pub node: String,
    /// The log file on the host.
    pub path: String,
    /// The last lines, oldest first.
    pub lines: Vec<String>,
}

/// The answer of `dmesg_mark`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DmesgMarkResult {
    /// Cluster name.
    pub cluster_name: String,
    /// The marker, to pass as `since_marker` to `dmesg_collect`.
    pub marker: String,
    /// Nodes whose kernel log now holds it.
    pub nodes: Vec<String>,
}

/// One node's kernel log selection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeDmesg {
    /// Node name.
    pub node: String,
    /// The selected lines, oldest first, each classified.
    pub lines: Vec<crate::dmesg::KmsgLine>,
    /// Lines that matched before the cap.
    pub matched: usize,
    /// Whether the cap cut the selection.
    pub truncated: bool,
    /// Reports per class (panic, oops, bug, warning, kasan, ...) among the matched lines.
    pub counts: std::collections::BTreeMap<crate::dmesg::Class, usize>,
    /// Kernel timestamp (µs) of the last line returned: the node's new cursor.
    pub cursor: Option<u64>,
}

/// The answer of `dmesg_collect`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DmesgCollectResult {
    /// Cluster name.
    pub cluster_name: String,
    /// Per-node selections, in the order asked.
    pub nodes: Vec<NodeDmesg>,
}

/// Whether an operation is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpState {
    /// Still running (or accepted and not yet journaled).
    Running,
    /// Finished; see `outcome`.
    Finished,
}

/// How a finished operation ended (Jepsen's three: ok, fail, info).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpOutcome {
    /// Its effects are in place.
    Applied,
    /// Nothing of it remains on the host (refused, failed before any effect, or rolled back).
    NotApplied,
    /// Part of it may have happened; `error` says what is known.
    Indeterminate,
}

/// One step of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OpStep {
    /// Step name (`define_domain`).
    pub step: String,
    /// Node it acted on.
    pub node: Option<String>,
    /// `started`, `succeeded` or `failed`.
    pub state: String,
    /// Error text of a failed step.
    pub detail: Option<String>,
}

/// An operation's error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OpError {
    /// Stable error code.
    pub code: String,
    /// What went wrong.
    pub message: String,
}

/// An operation as the journal records it (`op_status`, `op_wait`, `op_list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OpStatus {
    /// Operation id.
    pub op_id: String,
    /// Tool that started it.
    pub tool: String,
    /// Target cluster.
    pub cluster_name: Option<String>,
    /// Running or finished.
    pub state: OpState,
    /// Outcome, once finished.
    pub outcome: Option<OpOutcome>,
    /// When it started (RFC 3339), if it reached the journal.
    pub started_at: Option<String>,
    /// When it finished (RFC 3339).
    pub finished_at: Option<String>,
    /// Its steps, in the order they began.
    pub steps: Vec<OpStep>,
    /// Whether it was rolled back (undone) after a failure or a crash.
    pub rolled_back: bool,
    /// Its error, if it failed.
    pub error: Option<OpError>,
    /// Its result, if it succeeded (the same JSON the tool returned).
    pub result: Option<serde_json::Value>,
}

/// Operations, newest first (`op_list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OpList {
    /// The operations.
    pub ops: Vec<OpStatus>,
    /// Finished operations the server no longer remembers (retention).
    pub retired: u64,
}

/// The answer of `node_upload` and `node_download`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FileTransferResult {
    /// Cluster name.
    pub cluster_name: String,
    /// Node name.
    pub node: String,
    /// The file on this host.
    pub local_path: String,
    /// The file on the node.
    pub remote_path: String,
    /// Bytes transferred (the file's size).
    pub size: u64,
    /// SHA-256 of the content (hex), checked on both sides.
    pub sha256: String,
    /// Permission bits of the written file, in octal (`"0644"`).
    pub mode: String,
    /// Wall-clock time of the transfer, verification included.
    pub duration_ms: u64,
}
