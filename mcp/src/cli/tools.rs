//! CLI verbs that call an MCP tool in-process: `exec`, `dmesg`, `console`, `upload`,
//! `download` and `op`. Each builds the tool's JSON arguments, calls the very function the MCP
//! server routes to (same validation, same result, same errors), and prints the envelope
//! (`--json`) or a human rendering of it.

use std::fmt::Write as _;

use clap::Subcommand;
use rmcp::handler::server::wrapper::Parameters;
use serde::Serialize;
use serde_json::{Value, json};
use vmcluster_actors::Engine;

use super::Output;
use crate::envelope::{Envelope, Failure};
use crate::server::VmclusterServer;

/// `vmcluster dmesg ...`.
#[derive(Debug, Subcommand)]
pub enum DmesgAction {
    /// Write one fresh marker into each node's kernel log (`dmesg_mark`).
    Mark {
        /// Cluster.
        cluster: String,
        /// Only these nodes (repeat; default: every node).
        #[arg(long = "node")]
        nodes: Vec<String>,
    },
    /// Kernel lines after a marker, or new since the last collect (`dmesg_collect`).
    Collect {
        /// Cluster.
        cluster: String,
        /// Only these nodes (repeat; default: every node).
        #[arg(long = "node")]
        nodes: Vec<String>,
        /// Lines after this marker (from `dmesg mark`).
        #[arg(long)]
        since: Option<String>,
        /// `all`, `warn+` or `err+`.
        #[arg(long, default_value = "all")]
        level: String,
    },
}

/// `vmcluster op ...`.
#[derive(Debug, Subcommand)]
pub enum OpAction {
    /// Recent operations, newest first (`op_list`).
    List {
        /// Only this cluster's.
        #[arg(long)]
        cluster: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u64,
    },
    /// One operation's journaled history (`op_status`).
    Status {
        /// Operation id.
        op_id: String,
    },
    /// Wait for an operation to finish (`op_wait`).
    Wait {
        /// Operation id.
        op_id: String,
        /// Longest wait in seconds.
        #[arg(long, default_value_t = 50)]
        wait: u64,
    },
    /// Stop a running operation at its next step boundary (`op_cancel`).
    Cancel {
        /// Operation id.
        op_id: String,
    },
}

/// A tool's answer as its envelope, success or failure alike.
fn envelope<T: Serialize>(r: Result<rmcp::Json<Envelope<T>>, Failure>) -> Value {
    match r {
        Ok(rmcp::Json(env)) => serde_json::to_value(env).unwrap_or_default(),
        Err(Failure(env)) => env,
    }
}

fn args(v: Value) -> Parameters<rmcp::model::JsonObject> {
    Parameters(match v {
        Value::Object(m) => m,
        _ => Default::default(),
    })
}

/// Drops `null` members, so an omitted option is omitted from the tool's arguments.
fn compact(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.retain(|_, x| !x.is_null() && x.as_array().is_none_or(|a| !a.is_empty()));
    }
    v
}

/// Prints `env` (or its human rendering) and returns the exit status: 0 on success.
fn emit(out: &mut Output, env: &Value, json: bool, human: fn(&Value, &mut Output)) -> i32 {
    let ok = env["success"] == true;
    if json {
        let _ = writeln!(
            out.stdout,
            "{}",
            serde_json::to_string_pretty(env).unwrap_or_default()
        );
    } else {
        if !env["result"].is_null() {
            human(&env["result"], out);
        }
        if !ok {
            let _ = writeln!(
                out.stderr,
                "error [{}]: {}",
                env["error"]["code"].as_str().unwrap_or("INTERNAL"),
                env["error"]["message"].as_str().unwrap_or("")
            );
        }
    }
    if ok { 0 } else { 1 }
}

/// `vmcluster exec`: `node_exec_all` on the chosen nodes.
pub async fn exec(
    engine: &Engine,
    cluster: String,
    nodes: Vec<String>,
    timeout: u64,
    command: Vec<String>,
    json: bool,
    out: &mut Output,
) -> i32 {
    let server = VmclusterServer::new(engine.clone());
    let a = compact(json!({
        "cluster_name": cluster,
        "nodes": nodes,
        "command": command.join(" "),
        "timeout_s": timeout,
    }));
    let env = envelope(server.node_exec_all(args(a)).await);
    emit(out, &env, json, |r, out| {
        for n in r["results"].as_array().into_iter().flatten() {
            let node = n["node"].as_str().unwrap_or("?");
            let x = &n["result"];
            if x.is_null() {
                let _ = writeln!(
                    out.stderr,
                    "── {node}: {} {}",
                    n["error_code"].as_str().unwrap_or(""),
                    n["error"].as_str().unwrap_or("")
                );
                continue;
            }
            let mut flags = String::new();
            if x["timed_out"] == true {
                flags.push_str(", timed out");
            }
            if x["truncated"] == true {
                flags.push_str(", truncated");
            }
            let _ = writeln!(
                out.stdout,
                "── {node}: exit {} ({} ms{flags})",
                x["exit_code"], x["duration_ms"]
            );
            out.stdout.push_str(x["stdout"].as_str().unwrap_or(""));
            out.stderr.push_str(x["stderr"].as_str().unwrap_or(""));
        }
    })
}

/// `vmcluster dmesg mark|collect`.
pub async fn dmesg(engine: &Engine, action: DmesgAction, json: bool, out: &mut Output) -> i32 {
    let server = VmclusterServer::new(engine.clone());
    match action {
        DmesgAction::Mark { cluster, nodes } => {
            let a = compact(json!({"cluster_name": cluster, "nodes": nodes}));
            let env = envelope(server.dmesg_mark(args(a)).await);
            emit(out, &env, json, |r, out| {
                let _ = writeln!(
                    out.stdout,
                    "{}  (on {})",
                    r["marker"].as_str().unwrap_or(""),
                    r["nodes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            })
        }
        DmesgAction::Collect {
            cluster,
            nodes,
            since,
            level,
        } => {
            let a = compact(json!({
                "cluster_name": cluster,
                "nodes": nodes,
                "since_marker": since,
                "filter_level": level,
            }));
            let env = envelope(server.dmesg_collect(args(a)).await);
            emit(out, &env, json, |r, out| {
                for n in r["nodes"].as_array().into_iter().flatten() {
                    let node = n["node"].as_str().unwrap_or("?");
                    for l in n["lines"].as_array().into_iter().flatten() {
                        let class = l["class"]
                            .as_str()
                            .map(|c| format!("[{c}] "))
                            .unwrap_or_default();
                        let _ = writeln!(
                            out.stdout,
                            "{node}: {class}{}",
                            l["text"].as_str().unwrap_or("")
                        );
                    }
                }
            })
        }
    }
}

/// `vmcluster console`: `node_console`.
pub async fn console(
    engine: &Engine,
    cluster: String,
    node: String,
    lines: u64,
    json: bool,
    out: &mut Output,
) -> i32 {
    let server = VmclusterServer::new(engine.clone());
    let a = json!({"cluster_name": cluster, "node_name": node, "lines": lines});
    let env = envelope(server.node_console(args(a)).await);
    emit(out, &env, json, |r, out| {
        for l in r["lines"].as_array().into_iter().flatten() {
            let _ = writeln!(out.stdout, "{}", l.as_str().unwrap_or(""));
        }
    })
}

/// What `vmcluster upload|download` moves.
#[derive(Debug)]
pub struct Transfer {
    /// Cluster.
    pub cluster: String,
    /// Node.
    pub node: String,
    /// Path on this host (absolute: see [`super::absolutize`]).
    pub local: String,
    /// Path on the node.
    pub remote: String,
    /// Mode of the uploaded file (octal).
    pub mode: Option<String>,
}

/// `vmcluster upload` (`node_upload`) or `vmcluster download` (`node_download`).
pub async fn copy(engine: &Engine, upload: bool, c: Transfer, json: bool, out: &mut Output) -> i32 {
    let server = VmclusterServer::new(engine.clone());
    let a = compact(json!({
        "cluster_name": c.cluster,
        "node_name": c.node,
        "local_path": c.local,
        "remote_path": c.remote,
        "mode": c.mode,
    }));
    let env = if upload {
        envelope(server.node_upload(args(a)).await)
    } else {
        envelope(server.node_download(args(a)).await)
    };
    emit(out, &env, json, |r, out| {
        let _ = writeln!(
            out.stdout,
            "{} ↔ {}:{}  {} bytes  mode {}  sha256 {}  ({} ms)",
            r["local_path"].as_str().unwrap_or(""),
            r["node"].as_str().unwrap_or(""),
            r["remote_path"].as_str().unwrap_or(""),
            r["size"],
            r["mode"].as_str().unwrap_or(""),
            r["sha256"].as_str().unwrap_or(""),
            r["duration_ms"]
        );
    })
}

/// `vmcluster op list|status|wait|cancel`.
pub async fn op(engine: &Engine, action: OpAction, json: bool, out: &mut Output) -> i32 {
    let server = VmclusterServer::new(engine.clone());
    let env = match action {
        OpAction::List { cluster, limit } => {
            let a = compact(json!({"cluster_name": cluster, "limit": limit}));
            envelope(server.op_list(args(a)).await)
        }
        OpAction::Status { op_id } => {
            envelope(server.op_status(args(json!({"op_id": op_id}))).await)
        }
        OpAction::Wait { op_id, wait } => envelope(
            server
                .op_wait(args(json!({"op_id": op_id, "wait_s": wait})))
                .await,
        ),
        OpAction::Cancel { op_id } => {
            envelope(server.op_cancel(args(json!({"op_id": op_id}))).await)
        }
    };
    emit(out, &env, json, |r, out| {
        let ops: Vec<&Value> = match r["ops"].as_array() {
            Some(list) => list.iter().collect(),
            None => vec![r],
        };
        for o in ops {
            let _ = writeln!(
                out.stdout,
                "{}  {:<16} {:<20} {:<9} {}",
                o["op_id"].as_str().unwrap_or(""),
                o["tool"].as_str().unwrap_or(""),
                o["cluster_name"].as_str().unwrap_or("-"),
                o["state"].as_str().unwrap_or(""),
                o["outcome"].as_str().unwrap_or("")
            );
        }
    })
}
