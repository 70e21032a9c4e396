//! The command line: `vmcluster serve` (MCP over stdio) and one verb per tool, on the same
//! engine. Human-readable output by default; `--json` prints the tool's envelope instead.

use std::fmt::Write as _;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use vmcluster_actors::{Engine, NodeOp, Reply, StopMode};
use vmcluster_engine::snapshot::{
    SnapshotDeleteResult, SnapshotInfo, SnapshotList, SnapshotRevertResult,
};
use vmcluster_engine::view::{ClusterHandle, ClusterList, ClusterStatus, NodeResult, NodeStatus};

use crate::envelope::{Envelope, ToolError};

pub mod events;
pub mod tools;

/// What a verb prints: a verb runs in this process or, when a server runs, inside the server
/// (over its control socket), and either way its text comes back here.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Output {
    /// For standard output.
    pub stdout: String,
    /// For standard error.
    pub stderr: String,
}

/// `writeln!` into a `String` (which cannot fail).
macro_rules! outln {
    ($o:expr, $($t:tt)*) => {{
        let _ = writeln!($o, $($t)*);
    }};
}

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "vmcluster",
    version,
    about = "Run clusters of QEMU/KVM virtual machines through libvirt."
)]
pub struct Cli {
    /// Print the JSON envelope `{success, result, error, op_id}` instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How to stop a node or cluster.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// ACPI power button, forced after the timeout.
    Shutdown,
    /// Immediate power-off.
    Destroy,
}

impl From<ModeArg> for StopMode {
    fn from(m: ModeArg) -> StopMode {
        match m {
            ModeArg::Shutdown => StopMode::Shutdown,
            ModeArg::Destroy => StopMode::Destroy,
        }
    }
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve MCP over stdin/stdout.
    Serve,
    /// Define (or converge) a cluster from <topology>.yaml in the topology directory.
    Define {
        /// Topology name.
        topology: String,
    },
    /// Boot every node.
    Start {
        /// Cluster name.
        cluster: String,
        /// Return once the domains run, without waiting for SSH.
        #[arg(long)]
        no_wait: bool,
        /// Readiness budget per node, in seconds.
        #[arg(long, default_value_t = 120)]
        ssh_timeout: u64,
    },
    /// Stop every node.
    Stop {
        /// Cluster name.
        cluster: String,
        /// How.
        #[arg(long, value_enum, default_value_t = ModeArg::Shutdown)]
        mode: ModeArg,
        /// Graceful budget in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Tear a cluster down.
    Destroy {
        /// Cluster name.
        cluster: String,
        /// Also delete overlay disks.
        #[arg(long)]
        remove_overlays: bool,
    },
    /// Show a cluster's state.
    Status {
        /// Cluster name.
        cluster: String,
    },
    /// Show how to reach a running cluster's nodes.
    Handle {
        /// Cluster name.
        cluster: String,
    },
    /// List defined clusters.
    List,
    /// Act on one node.
    Node {
        /// What to do.
        #[command(subcommand)]
        action: NodeAction,
    },
    /// Print the event stream (every journaled state change), through the running server's
    /// control socket or, with no server, from the journal.
    Events {
        /// Keep printing new events as they happen (waits for a server when none runs).
        #[arg(long)]
        follow: bool,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Only this cluster's events.
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Cluster-wide snapshots.
    Snapshot {
        /// What to do.
        #[command(subcommand)]
        action: SnapshotAction,
    },
    /// Run a shell command on every node, or on some (`node_exec_all`); exits 1 unless every
    /// node ran it with exit code 0.
    Exec {
        /// Cluster.
        cluster: String,
        /// Only these nodes (repeat; default: every node).
        #[arg(long = "node")]
        nodes: Vec<String>,
        /// Budget in seconds; the command is killed on the node when it passes.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// The command line (put it after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// The kernel log: markers and classified lines.
    Dmesg {
        /// What to do.
        #[command(subcommand)]
        action: tools::DmesgAction,
    },
    /// The tail of a node's serial console (works when SSH is dead).
    Console {
        /// Cluster.
        cluster: String,
        /// Node.
        node: String,
        /// How many lines.
        #[arg(long, default_value_t = 50)]
        lines: u64,
    },
    /// Copy a file to a node (SFTP, checksummed, atomic on the node).
    Upload {
        /// Cluster.
        cluster: String,
        /// Node.
        node: String,
        /// File on this host.
        local: String,
        /// Absolute path on the node.
        remote: String,
        /// Mode in octal (e.g. 0755).
        #[arg(long)]
        mode: Option<String>,
    },
    /// Copy a file from a node (checksummed, atomic here).
    Download {
        /// Cluster.
        cluster: String,
        /// Node.
        node: String,
        /// Absolute path on the node.
        remote: String,
        /// Path on this host.
        local: String,
    },
    /// Journaled operations: list, status, wait, cancel.
    Op {
        /// What to do.
        #[command(subcommand)]
        action: tools::OpAction,
    },
}

/// Snapshot verbs (the `snapshot_*` tools).
#[derive(Debug, Subcommand)]
pub enum SnapshotAction {
    /// Snapshot every node as one consistent cut.
    Create {
        /// Cluster.
        cluster: String,
        /// Snapshot (or logical) name.
        name: String,
        /// Keep running nodes' memory: a revert resumes them without a reboot.
        #[arg(long)]
        memory: bool,
        /// Free text kept with the snapshot.
        #[arg(long)]
        description: Option<String>,
    },
    /// List the cluster's snapshots.
    List {
        /// Cluster.
        cluster: String,
    },
    /// Revert every node to a snapshot.
    Revert {
        /// Cluster.
        cluster: String,
        /// Snapshot (or logical) name.
        name: String,
        /// Leave every node shut off.
        #[arg(long)]
        no_restart: bool,
        /// Do not wait for readiness.
        #[arg(long)]
        no_wait: bool,
        /// Readiness budget in seconds.
        #[arg(long, default_value_t = 120)]
        ssh_timeout: u64,
    },
    /// Delete a snapshot from every node.
    Delete {
        /// Cluster.
        cluster: String,
        /// Snapshot (or logical) name.
        name: String,
    },
}

/// Single-node verbs.
#[derive(Debug, Subcommand)]
pub enum NodeAction {
    /// Power a node off uncleanly (and by default on again).
    Crash {
        /// Cluster.
        cluster: String,
        /// Node.
        node: String,
        /// Leave it off.
        #[arg(long)]
        no_restart: bool,
        /// Do not wait for readiness after the restart.
        #[arg(long)]
        no_wait: bool,
        /// Readiness budget in seconds.
        #[arg(long, default_value_t = 120)]
        ssh_timeout: u64,
    },
    /// Power a node on.
    Start {
        /// Cluster.
        cluster: String,
        /// Node.
        node: String,
        /// Do not wait for readiness.
        #[arg(long)]
        no_wait: bool,
        /// Readiness budget in seconds.
        #[arg(long, default_value_t = 120)]
        ssh_timeout: u64,
    },
    /// Power a node off.
    Stop {
        /// Cluster.
        cluster: String,
        /// Node.
        node: String,
        /// How.
        #[arg(long, value_enum, default_value_t = ModeArg::Shutdown)]
        mode: ModeArg,
        /// Graceful budget in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Reboot a node.
    Reboot {
        /// Cluster.
        cluster: String,
        /// Node.
        node: String,
        /// Reset instead of asking the guest.
        #[arg(long)]
        hard: bool,
        /// Do not wait for readiness.
        #[arg(long)]
        no_wait: bool,
        /// Readiness budget in seconds.
        #[arg(long, default_value_t = 120)]
        ssh_timeout: u64,
    },
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Runs one CLI verb (not `serve`) and returns the process exit code.
pub async fn run(engine: &Engine, command: Command, json: bool, out: &mut Output) -> i32 {
    match command {
        Command::Serve | Command::Events { .. } => unreachable!("handled by main"),
        Command::Define { topology } => {
            emit(out, engine.define(&topology).await, json, print_status)
        }
        Command::Start {
            cluster,
            no_wait,
            ssh_timeout,
        } => emit(
            out,
            engine
                .start_cluster(&cluster, !no_wait, secs(ssh_timeout))
                .await,
            json,
            print_status,
        ),
        Command::Stop {
            cluster,
            mode,
            timeout,
        } => emit(
            out,
            engine
                .stop_cluster(&cluster, mode.into(), secs(timeout))
                .await,
            json,
            print_status,
        ),
        Command::Destroy {
            cluster,
            remove_overlays,
        } => emit(
            out,
            engine.destroy(&cluster, remove_overlays).await,
            json,
            print_status,
        ),
        Command::Status { cluster } => {
            settle(engine, &cluster).await;
            emit(
                out,
                plain(engine.status(&cluster).await),
                json,
                print_status,
            )
        }
        Command::Handle { cluster } => {
            settle(engine, &cluster).await;
            emit(
                out,
                plain(engine.handle(&cluster).await),
                json,
                print_handle,
            )
        }
        Command::List => emit(out, plain(engine.list().await), json, print_list),
        Command::Node { action } => {
            let (cluster, node, op) = match action {
                NodeAction::Crash {
                    cluster,
                    node,
                    no_restart,
                    no_wait,
                    ssh_timeout,
                } => (
                    cluster,
                    node,
                    NodeOp::Crash {
                        restart_after: !no_restart,
                        wait_for_ssh: !no_wait,
                        ssh_timeout: secs(ssh_timeout),
                    },
                ),
                NodeAction::Start {
                    cluster,
                    node,
                    no_wait,
                    ssh_timeout,
                } => (
                    cluster,
                    node,
                    NodeOp::Start {
                        wait_for_ssh: !no_wait,
                        ssh_timeout: secs(ssh_timeout),
                    },
                ),
                NodeAction::Stop {
                    cluster,
                    node,
                    mode,
                    timeout,
                } => (
                    cluster,
                    node,
                    NodeOp::Stop {
                        mode: mode.into(),
                        timeout: secs(timeout),
                    },
                ),
                NodeAction::Reboot {
                    cluster,
                    node,
                    hard,
                    no_wait,
                    ssh_timeout,
                } => (
                    cluster,
                    node,
                    NodeOp::Reboot {
                        hard,
                        wait_for_ssh: !no_wait,
                        ssh_timeout: secs(ssh_timeout),
                    },
                ),
            };
            emit(
                out,
                engine.node(&cluster, &node, op).await,
                json,
                print_node,
            )
        }
        Command::Snapshot { action } => snapshot(engine, action, json, out).await,
        Command::Exec {
            cluster,
            nodes,
            timeout,
            command,
        } => tools::exec(engine, cluster, nodes, timeout, command, json, out).await,
        Command::Dmesg { action } => tools::dmesg(engine, action, json, out).await,
        Command::Console {
            cluster,
            node,
            lines,
        } => tools::console(engine, cluster, node, lines, json, out).await,
        Command::Upload {
            cluster,
            node,
            local,
            remote,
            mode,
        } => {
            let t = tools::Transfer {
                cluster,
                node,
                local,
                remote,
                mode,
            };
            tools::copy(engine, true, t, json, out).await
        }
        Command::Download {
            cluster,
            node,
            remote,
            local,
        } => {
            let t = tools::Transfer {
                cluster,
                node,
                local,
                remote,
                mode: None,
            };
            tools::copy(engine, false, t, json, out).await
        }
        Command::Op { action } => tools::op(engine, action, json, out).await,
    }
}

async fn snapshot(engine: &Engine, action: SnapshotAction, json: bool, out: &mut Output) -> i32 {
    use vmcluster_actors::snapshot::{CreateRequest, RevertRequest};
    match action {
        SnapshotAction::Create {
            cluster,
            name,
            memory,
            description,
        } => {
            let request = CreateRequest {
                snapshot_name: name,
                description,
                include_memory: memory,
            };
            emit(
                out,
                engine.snapshot_create(&cluster, request).await,
                json,
                print_snapshot,
            )
        }
        SnapshotAction::List { cluster } => emit(
            out,
            plain(engine.snapshot_list(&cluster).await),
            json,
            |l: &SnapshotList, o: &mut String| {
                if l.snapshots.is_empty() {
                    outln!(o, "no snapshots of {}", l.cluster_name);
                }
                l.snapshots.iter().for_each(|s| print_snapshot(s, o));
            },
        ),
        SnapshotAction::Revert {
            cluster,
            name,
            no_restart,
            no_wait,
            ssh_timeout,
        } => {
            let request = RevertRequest {
                snapshot_name: name,
                restart_after: !no_restart,
                wait_for_ssh: !no_wait,
                ssh_timeout: secs(ssh_timeout),
            };
            emit(
                out,
                engine.snapshot_revert(&cluster, request).await,
                json,
                |r: &SnapshotRevertResult, o: &mut String| {
                    for n in &r.reverted {
                        let action = serde_json::to_value(n.action).unwrap_or_default();
                        outln!(
                            o,
                            "{}/{}  {}",
                            r.status.cluster_name,
                            n.node,
                            action.as_str().unwrap_or("?")
                        );
                    }
                    print_status(&r.status, o);
                },
            )
        }
        SnapshotAction::Delete { cluster, name } => {
            let reply = engine.snapshot_delete(&cluster, &name).await;
            // A node that could not delete it fails the verb, as it fails the tool.
            let failed = matches!(&reply.result, Ok(r) if !r.all_deleted);
            let code = emit(
                out,
                reply,
                json,
                |r: &SnapshotDeleteResult, o: &mut String| {
                    for n in &r.nodes {
                        outln!(
                            o,
                            "{}/{}  {}  {:?}{}",
                            r.cluster_name,
                            n.node,
                            r.snapshot_name,
                            n.status,
                            n.error
                                .as_deref()
                                .map(|e| format!(": {e}"))
                                .unwrap_or_default()
                        );
                    }
                },
            );
            if failed { 1 } else { code }
        }
    }
}

fn print_snapshot(s: &SnapshotInfo, o: &mut String) {
    outln!(
        o,
        "{}  {}{}  created {}  {}{}",
        s.cluster_name,
        s.snapshot_name,
        if s.logical_names.is_empty() {
            String::new()
        } else {
            format!(" ({})", s.logical_names.join(", "))
        },
        s.created_at.as_deref().unwrap_or("?"),
        if s.complete { "complete" } else { "INCOMPLETE" },
        s.description
            .as_deref()
            .map(|d| format!("  {d:?}"))
            .unwrap_or_default()
    );
    for n in &s.nodes {
        let kind = n
            .kind
            .map(|k| format!("{k:?}").to_lowercase())
            .unwrap_or_else(|| "missing".into());
        outln!(o, "  {:<14} {kind}", n.node);
    }
}

/// A fresh CLI process learns each running node's readiness by probing it again; wait (briefly)
/// until every probe has an answer, so a one-shot `status` reports what a long-running server
/// would. The server itself never waits: its probes run continuously.
async fn settle(engine: &Engine, cluster: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Ok(s) = engine.status(cluster).await {
        let pending = s.nodes.iter().any(|n| {
            n.domain_state == vmcluster_engine::state::DomainState::Running
                && n.phase != vmcluster_engine::state::Readiness::Ready
                && n.last_error.is_none()
        });
        if !pending || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn plain<T>(r: vmcluster_actors::Result<T>) -> Reply<T> {
    Reply {
        op_id: None,
        result: r,
    }
}

fn emit<T: Serialize>(
    out: &mut Output,
    reply: Reply<T>,
    json: bool,
    human: fn(&T, &mut String),
) -> i32 {
    let (code, env) = match reply.result {
        Ok(v) => (0, Envelope::ok(v, reply.op_id)),
        Err(e) => (
            1,
            Envelope {
                success: false,
                result: None,
                error: Some(ToolError::from_engine(&e)),
                op_id: reply.op_id.map(|u| u.to_string()),
                state: None,
                outcome: None,
            },
        ),
    };
    if json {
        outln!(
            out.stdout,
            "{}",
            serde_json::to_string_pretty(&env).unwrap_or_default()
        );
    } else if let Some(v) = &env.result {
        human(v, &mut out.stdout);
    }
    if let Some(e) = &env.error
        && !json
    {
        outln!(out.stderr, "error [{}]: {}", e.code, e.message);
    }
    code
}

fn phase_word(n: &NodeStatus) -> String {
    let phase = serde_json::to_value(n.phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let state = serde_json::to_value(n.domain_state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    format!("{state:<10} {phase}")
}

fn print_status(s: &ClusterStatus, o: &mut String) {
    outln!(
        o,
        "cluster {}  network {} ({})",
        s.cluster_name,
        s.network,
        if s.network_active {
            "active"
        } else {
            "inactive"
        }
    );
    outln!(
        o,
        "  {:<14} {:<10} {:<16} {:<10} PHASE",
        "NODE",
        "ROLE",
        "IP",
        "STATE"
    );
    for n in &s.nodes {
        outln!(
            o,
            "  {:<14} {:<10} {:<16} {}",
            n.name,
            n.role,
            n.ip,
            phase_word(n)
        );
        if let Some(e) = &n.last_error {
            outln!(o, "      last error: {e}");
        }
    }
}

fn print_node(r: &NodeResult, o: &mut String) {
    let n = &r.node;
    outln!(
        o,
        "{}/{}  {}  {}",
        r.cluster_name,
        n.name,
        n.ip,
        phase_word(n)
    );
}

fn print_handle(h: &ClusterHandle, o: &mut String) {
    outln!(
        o,
        "cluster {}  kernel {}  artifacts {}",
        h.cluster_name,
        h.kernel_version,
        h.artifact_path
    );
    for n in &h.nodes {
        outln!(
            o,
            "  {:<14} ssh -i {} -p {} {}@{}",
            n.name,
            n.ssh_key_path,
            n.ssh_port,
            n.ssh_user,
            n.ip
        );
    }
}

fn print_list(l: &ClusterList, o: &mut String) {
    if l.clusters.is_empty() {
        outln!(o, "no clusters defined");
    }
    for c in &l.clusters {
        outln!(
            o,
            "{:<24} {} node(s), {} running, network {} {}",
            c.cluster_name,
            c.nodes,
            c.running,
            c.network,
            c.subnet
        );
    }
}

/// Parses the command line.
pub fn parse() -> Cli {
    Cli::parse()
}

/// Runs the verb of `argv` in the server answering on `socket`, if one does: `None` when no
/// server runs (the caller then runs it in this process).
pub async fn through_server(socket: &std::path::Path, argv: Vec<String>) -> Option<(i32, Output)> {
    use crate::control::{ControlRequest, ControlResponse};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = crate::control::connect(socket).await.ok().flatten()?;
    let failed = |message: String| {
        Some((
            2,
            Output {
                stdout: String::new(),
                stderr: format!("error: {message}\n"),
            },
        ))
    };
    let (r, mut w) = stream.into_split();
    let cwd = std::env::current_dir()
        .ok()
        .map(|d| d.to_string_lossy().into_owned());
    let mut line = serde_json::to_vec(&ControlRequest::Cli { argv, cwd }).unwrap_or_default();
    line.push(b'\n');
    if let Err(e) = w.write_all(&line).await {
        return failed(format!(
            "cannot talk to the server on {}: {e}",
            socket.display()
        ));
    }
    let answer = BufReader::new(r).lines().next_line().await;
    match answer.map(|l| l.map(|l| serde_json::from_str::<ControlResponse>(&l))) {
        Ok(Some(Ok(ControlResponse::Cli { exit_code, output }))) => Some((exit_code, output)),
        Ok(Some(Ok(ControlResponse::Error { code, message }))) => {
            failed(format!("[{code}] {message}"))
        }
        Ok(Some(Ok(other))) => failed(format!("unexpected answer from the server: {other:?}")),
        Ok(Some(Err(e))) => failed(format!("unexpected answer from the server: {e}")),
        Ok(None) | Err(_) => failed(
            "the server went away before answering; what it did is in the journal (`vmcluster events`, op_list)"
                .into(),
        ),
    }
}

/// Makes the local paths of `command` absolute against `cwd` (the CLI's working directory),
/// so a verb run by the server reads and writes where the user meant.
pub fn absolutize(command: &mut Command, cwd: &std::path::Path) {
    if let Command::Upload { local, .. } | Command::Download { local, .. } = command
        && std::path::Path::new(local.as_str()).is_relative()
    {
        *local = cwd.join(&*local).to_string_lossy().into_owned();
    }
}

/// Parses a verb sent by a CLI to a running server (`argv` as that CLI got it, program name
/// first); the usage error's text otherwise.
pub fn parse_from(argv: &[String]) -> Result<Cli, String> {
    Cli::try_parse_from(argv).map_err(|e| e.to_string())
}
