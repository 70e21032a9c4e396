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

/// `cluster_define`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefineParams {
    /// Topology file name in the topology directory, without `.yaml`.
    pub topology_name: String,
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
