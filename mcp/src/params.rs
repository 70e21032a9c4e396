//! Typed tool parameters (seed 000's names and defaults). Unknown fields are refused; each
//! field's doc comment becomes its description in the JSON schema.

use schemars::JsonSchema;
use serde::Deserialize;

fn yes() -> bool {
    true
}
fn ssh_timeout() -> u64 {
    120
}
fn stop_timeout() -> u64 {
    60
}
fn wait_s() -> u64 {
    DEFAULT_WAIT_S
}

/// How long a slow tool waits for its operation by default: under the 60 s most MCP clients
/// give a call, so a long operation answers `{state: running, op_id}` instead of timing out.
pub const DEFAULT_WAIT_S: u64 = 50;

/// `cluster_define`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefineParams {
    /// Topology file name in the topology directory, without `.yaml`.
    pub topology_name: String,
    /// Seconds to wait for the operation before answering `{state: "running", op_id}` while
    /// it goes on (0-3600; follow it with op_wait / op_status). Default 50.
    #[serde(default = "wait_s")]
    pub wait_s: u64,
}

/// Tools that take just a cluster.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterParams {
    /// Cluster name.
    pub cluster_name: String,
}

/// Tools without parameters.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// `cluster_start`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartParams {
    /// Cluster name.
    pub cluster_name: String,
    /// Wait until every node is ready (SSH works, cloud-init finished). Default true.
    #[serde(default = "yes")]
    pub wait_for_ssh: bool,
    /// Readiness budget per node in seconds (1-3600). Default 120.
    #[serde(default = "ssh_timeout")]
    pub ssh_timeout_s: u64,
    /// Seconds to wait for the operation before answering `{state: "running", op_id}` while
    /// it goes on (0-3600; follow it with op_wait / op_status). Default 50.
    #[serde(default = "wait_s")]
    pub wait_s: u64,
}

/// How to stop.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StopModeParam {
    /// ACPI power button, forced off after `timeout_s`.
    #[default]
    Shutdown,
    /// Immediate power-off.
    Destroy,
}

/// `cluster_stop`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StopParams {
    /// Cluster name.
    pub cluster_name: String,
    /// `shutdown` (default) or `destroy`.
    #[serde(default)]
    pub mode: StopModeParam,
    /// Seconds to wait for a graceful shutdown before forcing power-off (1-3600). Default 60.
    #[serde(default = "stop_timeout")]
    pub timeout_s: u64,
    /// Seconds to wait for the operation before answering `{state: "running", op_id}` while
    /// it goes on (0-3600; follow it with op_wait / op_status). Default 50.
    #[serde(default = "wait_s")]
    pub wait_s: u64,
}

/// `cluster_destroy`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DestroyParams {
    /// Cluster name.
    pub cluster_name: String,
    /// Also delete the nodes' overlay disks and the extra disks vmcluster created. Default false.
    #[serde(default)]
    pub remove_overlays: bool,
    /// Seconds to wait for the operation before answering `{state: "running", op_id}` while
    /// it goes on (0-3600; follow it with op_wait / op_status). Default 50.
    #[serde(default = "wait_s")]
    pub wait_s: u64,
}

/// `node_crash`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CrashParams {
    /// Cluster name.
    pub cluster_name: String,
    /// Node name.
    #[serde(alias = "node_name")]
    pub node: String,
    /// Power the node on again after the crash. Default true.
    #[serde(default = "yes")]
    pub restart_after: bool,
    /// After restarting, wait until it is ready. Default true.
    #[serde(default = "yes")]
    pub wait_for_ssh: bool,
    /// Readiness budget in seconds (1-3600). Default 120.
    #[serde(default = "ssh_timeout")]
    pub ssh_timeout_s: u64,
    /// Seconds to wait for the operation before answering `{state: "running", op_id}` while
    /// it goes on (0-3600; follow it with op_wait / op_status). Default 50.
    #[serde(default = "wait_s")]
    pub wait_s: u64,
}

/// `node_start`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeStartParams {
    /// Cluster name.
    pub cluster_name: String,
    /// Node name.
    #[serde(alias = "node")]
    pub node_name: String,
    /// Wait until it is ready. Default true.
    #[serde(default = "yes")]
    pub wait_for_ssh: bool,
    /// Readiness budget in seconds (1-3600). Default 120.
    #[serde(default = "ssh_timeout")]
    pub ssh_timeout_s: u64,
    /// Seconds to wait for the operation before answering `{state: "running", op_id}` while
    /// it goes on (0-3600; follow it with op_wait / op_status). Default 50.
    #[serde(default = "wait_s")]
    pub wait_s: u64,
}

/// `node_stop`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeStopParams {
    /// Cluster name.
    pub cluster_name: String,
    /// Node name.
    #[serde(alias = "node")]
    pub node_name: String,
    /// `shutdown` (default) or `destroy`.
    #[serde(default)]
    pub mode: StopModeParam,
    /// Graceful budget in seconds (1-3600). Default 60.
    #[serde(default = "stop_timeout")]
    pub timeout_s: u64,
    /// Seconds to wait for the operation before answering `{state: "running", op_id}` while
    /// it goes on (0-3600; follow it with op_wait / op_status). Default 50.
    #[serde(default = "wait_s")]
    pub wait_s: u64,
}

/// `node_reboot`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeRebootParams {
    /// Cluster name.
    pub cluster_name: String,
    /// Node name.
    #[serde(alias = "node")]
    pub node_name: String,
    /// Reset the machine instead of asking the guest to reboot. Default false.
    #[serde(default)]
    pub hard: bool,
    /// Wait until it is ready again. Default true.
    #[serde(default = "yes")]
    pub wait_for_ssh: bool,
    /// Readiness budget in seconds (1-3600). Default 120.
    #[serde(default = "ssh_timeout")]
    pub ssh_timeout_s: u64,
    /// Seconds to wait for the operation before answering `{state: "running", op_id}` while
    /// it goes on (0-3600; follow it with op_wait / op_status). Default 50.
    #[serde(default = "wait_s")]
    pub wait_s: u64,
}

/// Checks a duration parameter.
pub fn seconds(name: &str, v: u64) -> Result<std::time::Duration, String> {
    if (1..=3600).contains(&v) {
        Ok(std::time::Duration::from_secs(v))
    } else {
        Err(format!("{name} must be between 1 and 3600, got {v}"))
    }
}

fn exec_timeout() -> u64 {
    30
}

/// `node_exec`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeExecParams {
    /// Cluster name.
    pub cluster_name: String,
    /// Node name.
    #[serde(alias = "node")]
    pub node_name: String,
    /// Shell command (run by `/bin/sh -c` on the node).
    pub command: String,
    /// Seconds before the command is killed on the node (1-3600). Default 30.
    #[serde(default = "exec_timeout")]
    pub timeout_s: u64,
    /// Text fed to the command's standard input.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Cap on each of stdout and stderr in the result, in bytes (1 to 16 MiB). Default 65536.
    #[serde(default)]
    pub max_output_bytes: Option<usize>,
}

/// `node_exec_all`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeExecAllParams {
    /// Cluster name.
    pub cluster_name: String,
    /// Shell command (run by `/bin/sh -c` on every node).
    pub command: String,
    /// Nodes to run on (default: every node).
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
    /// When true (default), the call fails unless every node ran the command and exited 0;
    /// the per-node results are returned either way.
    #[serde(default = "yes")]
    pub require_all: bool,
    /// Seconds before the command is killed on a node (1-3600). Default 30.
    #[serde(default = "exec_timeout")]
    pub timeout_s: u64,
    /// Text fed to the command's standard input on every node.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Cap on each of stdout and stderr per node, in bytes (1 to 16 MiB). Default 65536.
    #[serde(default)]
    pub max_output_bytes: Option<usize>,
}

fn console_lines() -> usize {
    50
}

/// `node_console`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeConsoleParams {
    /// Cluster name.
    pub cluster_name: String,
    /// Node name.
    #[serde(alias = "node")]
    pub node_name: String,
    /// How many of the last lines to return (1-5000). Default 50.
    #[serde(default = "console_lines")]
    pub lines: usize,
}

fn dmesg_max_lines() -> usize {
    500
}

/// `dmesg_mark`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DmesgMarkParams {
    /// Cluster name.
    pub cluster_name: String,
    /// Nodes to mark (default: every node).
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
}

/// `dmesg_collect`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DmesgCollectParams {
    /// Cluster name.
    pub cluster_name: String,
    /// Nodes to read (default: every node).
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
    /// Marker returned by `dmesg_mark`: only lines after it. Without it, only lines that are new
    /// since the previous collect on that node (in the current boot).
    #[serde(default)]
    pub since_marker: Option<String>,
    /// `all` (default), `warn+` or `err+`.
    #[serde(default)]
    pub filter_level: vmcluster_engine::dmesg::FilterLevel,
    /// Cap on lines per node (1-10000). Default 500.
    #[serde(default = "dmesg_max_lines")]
    pub max_lines: usize,
}

/// Checks a `wait_s` parameter.
pub fn wait_seconds(v: u64) -> Result<std::time::Duration, String> {
    if v <= 3600 {
        Ok(std::time::Duration::from_secs(v))
    } else {
        Err(format!("wait_s must be between 0 and 3600, got {v}"))
    }
}

/// `op_status` and `op_cancel`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpParams {
    /// Operation id (the `op_id` of a tool result).
    pub op_id: String,
}

/// `op_wait`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpWaitParams {
    /// Operation id.
    pub op_id: String,
    /// Seconds to wait for it to finish (0-3600). Default 50.
    #[serde(default = "wait_s")]
    pub wait_s: u64,
}

fn op_list_limit() -> usize {
    50
}

/// `op_list`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpListParams {
    /// Only this cluster's operations.
    #[serde(default)]
    pub cluster_name: Option<String>,
    /// At most this many, newest first (1-1000). Default 50.
    #[serde(default = "op_list_limit")]
    pub limit: usize,
}

fn events_limit() -> usize {
    100
}

/// `events_read`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsReadParams {
    /// Only events with a greater sequence number (default 0: from the start). Pass the
    /// previous result's `next_since` to read on.
    #[serde(default)]
    pub since: u64,
    /// Most events to return (1-1000). Default 100.
    #[serde(default = "events_limit")]
    pub limit: usize,
    /// Only this cluster's events.
    #[serde(default)]
    pub cluster: Option<String>,
}

/// `snapshot_create`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    /// Cluster name.
    pub cluster_name: String,
    /// Snapshot name: 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit.
    /// A logical name from the topology's `snapshots:` map (`baseline`) stands for its real
    /// name (`clean-boot`).
    pub snapshot_name: String,
    /// Free text kept with the snapshot (at most 1024 characters).
    #[serde(default)]
    pub description: Option<String>,
    /// true: running nodes' memory is kept too, so a revert resumes them where they were
    /// (processes, clocks) without a reboot. false (default): disk state only (running nodes'
    /// file systems are synced first), and a revert boots the nodes from it.
    #[serde(default)]
    pub include_memory: bool,
}

/// `snapshot_delete`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotDeleteParams {
    /// Cluster name.
    pub cluster_name: String,
    /// Snapshot name, or a logical name from the topology's `snapshots:` map.
    pub snapshot_name: String,
}

/// `snapshot_revert`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRevertParams {
    /// Cluster name.
    pub cluster_name: String,
    /// Snapshot name, or a logical name from the topology's `snapshots:` map.
    pub snapshot_name: String,
    /// Bring the nodes that were running at the snapshot back up: from memory for a memory
    /// snapshot, by booting from the restored disks otherwise. false leaves every node shut off
    /// with its disks restored. Default true.
    #[serde(default = "yes")]
    pub restart_after: bool,
    /// Wait until the restarted nodes are ready (SSH works). Default true.
    #[serde(default = "yes")]
    pub wait_for_ssh: bool,
    /// Readiness budget per node in seconds (1-3600). Default 120.
    #[serde(default = "ssh_timeout")]
    pub ssh_timeout_s: u64,
}

/// `node_upload`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeUploadParams {
    /// Cluster name.
    pub cluster_name: String,
    /// Node name.
    #[serde(alias = "node")]
    pub node_name: String,
    /// Absolute path of an existing regular file on the server's host.
    pub local_path: String,
    /// Absolute path of the file on the node; its directory must exist. An existing file is
    /// replaced atomically; a directory is refused.
    pub remote_path: String,
    /// Permission bits on the node, in octal (`"0644"`, `"755"`). Default: the replaced file's,
    /// else 0644.
    #[serde(default)]
    pub mode: Option<String>,
}

/// `node_download`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeDownloadParams {
    /// Cluster name.
    pub cluster_name: String,
    /// Node name.
    #[serde(alias = "node")]
    pub node_name: String,
    /// Absolute path of a regular file on the node.
    pub remote_path: String,
    /// Absolute path on the server's host; its directory must exist. An existing file is
    /// replaced atomically; a directory is refused.
    pub local_path: String,
}
