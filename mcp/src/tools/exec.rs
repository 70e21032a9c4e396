//! Remote execution tools: one node, or many at once.

use std::collections::BTreeMap;

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::JsonObject;
use rmcp::{Json, tool, tool_router};
use vmcluster_actors::exec::{DEFAULT_OUTPUT_CAP, ExecRequest, valid_env_name};
use vmcluster_engine::ErrorCode;
use vmcluster_engine::view::{ExecAllResult, NodeExecOutcome, NodeExecResult};

use crate::envelope::{Envelope, Failure, NodeFailure, ToolError, input_schema, parse};
use crate::params::{NodeExecAllParams, NodeExecParams, seconds};
use crate::server::VmclusterServer;

/// Largest output cap a caller may ask for.
const MAX_OUTPUT_CAP: usize = 16 * 1024 * 1024;

fn request(
    command: String,
    timeout_s: u64,
    stdin: Option<String>,
    env: BTreeMap<String, String>,
    cap: Option<usize>,
) -> Result<ExecRequest, Failure> {
    let bad = |m: String| Failure::new(ToolError::invalid(m), None);
    if command.trim().is_empty() {
        return Err(bad("command must not be empty".into()));
    }
    let timeout = seconds("timeout_s", timeout_s).map_err(bad)?;
    if let Some(k) = env.keys().find(|k| !valid_env_name(k)) {
        return Err(bad(format!("env name {k:?} is not a valid variable name")));
    }
    let output_cap = cap.unwrap_or(DEFAULT_OUTPUT_CAP);
    if output_cap == 0 || output_cap > MAX_OUTPUT_CAP {
        return Err(bad(format!(
            "max_output_bytes must be between 1 and {MAX_OUTPUT_CAP}"
        )));
    }
    Ok(ExecRequest {
        command,
        timeout,
        stdin: stdin.map(String::into_bytes),
        env,
        output_cap,
        spill: None,
        tool: None,
    })
}

#[tool_router(router = exec_router, vis = "pub(crate)")]
impl VmclusterServer {
    /// Runs a command on one node.
    #[tool(
        description = "Run a shell command on one node over its pooled SSH session. Returns exit_code, stdout, stderr (each capped at max_output_bytes, with truncated and the full sizes; a truncated stream is kept in full, up to 64 MiB, as the MCP resource named by stdout_uri / stderr_uri), duration_ms and timed_out. A non-zero exit is a successful call carrying that exit code; a command that outlives timeout_s is killed on the node (with its children) and returns timed_out=true. A node that cannot be reached is an SSH error, never an exit code.",
        input_schema = input_schema::<NodeExecParams>(),
        annotations(title = "Run on a node", read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false)
    )]
    pub async fn node_exec(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<Json<Envelope<NodeExecResult>>, Failure> {
        let p: NodeExecParams = parse(args)?;
        let req = request(p.command, p.timeout_s, p.stdin, p.env, p.max_output_bytes)?;
        let reply = self
            .engine
            .exec(&p.cluster_name, Some(vec![p.node_name.clone()]), req)
            .await;
        let op_id = reply.op_id;
        let outcome = match reply.result {
            Ok(mut v) => v.pop().map(|(_, r)| r).unwrap_or_else(|| {
                Err(vmcluster_actors::EngineError::Internal("no result".into()))
            }),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(exec) => Ok(Json(Envelope::ok(
                NodeExecResult {
                    cluster_name: p.cluster_name,
                    node: p.node_name,
                    exec,
                },
                op_id,
            ))),
            Err(e) => Err(Failure::new(ToolError::from_engine(&e), op_id)),
        }
    }

    /// Runs a command on many nodes.
    #[tool(
        description = "Run a shell command on many nodes in parallel (default: all). Returns per-node results (or per-node errors for nodes that could not be reached) and failed_nodes (unreachable, timed out, or non-zero exit). With require_all=true (default) the call fails with COMMAND_FAILED (or SSH when a node was unreachable) unless every node exited 0; the per-node results come back either way.",
        input_schema = input_schema::<NodeExecAllParams>(),
        annotations(title = "Run on many nodes", read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false)
    )]
    pub async fn node_exec_all(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<Json<Envelope<ExecAllResult>>, Failure> {
        let p: NodeExecAllParams = parse(args)?;
        if p.nodes.as_ref().is_some_and(|n| n.is_empty()) {
            return Err(Failure::new(
                ToolError::invalid("nodes must not be empty (omit it for every node)"),
                None,
            ));
        }
        let req = request(p.command, p.timeout_s, p.stdin, p.env, p.max_output_bytes)?;
        let reply = self.engine.exec(&p.cluster_name, p.nodes, req).await;
        let op_id = reply.op_id;
        let outcomes = match reply.result {
            Ok(v) => v,
            Err(e) => return Err(Failure::new(ToolError::from_engine(&e), op_id)),
        };
        let mut failures = Vec::new();
        let results: Vec<NodeExecOutcome> = outcomes
            .into_iter()
            .map(|(node, r)| match r {
                Ok(x) => {
                    if x.timed_out || x.exit_code != Some(0) {
                        let why = if x.timed_out {
                            "timed out".to_owned()
                        } else {
                            format!("exited with {:?}", x.exit_code)
                        };
                        failures.push(NodeFailure {
                            node: node.clone(),
                            code: ErrorCode::CommandFailed,
                            message: why,
                        });
                    }
                    NodeExecOutcome {
                        node,
                        result: Some(x),
                        error_code: None,
                        error: None,
                    }
                }
                Err(e) => {
                    failures.push(NodeFailure {
                        node: node.clone(),
                        code: e.code(),
                        message: e.to_string(),
                    });
                    NodeExecOutcome {
                        node,
                        result: None,
                        error_code: Some(e.code()),
                        error: Some(e.to_string()),
                    }
                }
            })
            .collect();
        let result = ExecAllResult {
            cluster_name: p.cluster_name,
            failed_nodes: failures.iter().map(|f| f.node.clone()).collect(),
            all_succeeded: failures.is_empty(),
            results,
        };
        if p.require_all && !failures.is_empty() {
            let error = ToolError::from_node_failures(failures, result.results.len());
            return Err(Failure::with_result(error, op_id, &result));
        }
        Ok(Json(Envelope::ok(result, op_id)))
    }
}
