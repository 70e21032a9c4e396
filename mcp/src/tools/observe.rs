//! Observability tools: the serial console and the kernel log (marks, classified collects).

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::JsonObject;
use rmcp::{Json, tool, tool_router};
use vmcluster_engine::ErrorCode;
use vmcluster_engine::dmesg;
use vmcluster_engine::view::{ConsoleTail, DmesgCollectResult, DmesgMarkResult, NodeDmesg};

use crate::envelope::{
    Envelope, Failure, NodeFailure, ToolError, from_result, input_schema, parse,
};
use crate::params::{DmesgCollectParams, DmesgMarkParams, NodeConsoleParams};
use crate::server::VmclusterServer;

#[tool_router(router = observe_router, vis = "pub(crate)")]
impl VmclusterServer {
    /// Tail of a node's serial console.
    #[tool(
        description = "The last lines of a node's serial console, captured to a file by libvirt across every boot. Works when SSH and the guest network are dead: kernel panics, boot failures and the guest's own messages land here.",
        input_schema = input_schema::<NodeConsoleParams>(),
        annotations(title = "Node console", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn node_console(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<Json<Envelope<ConsoleTail>>, Failure> {
        let p: NodeConsoleParams = parse(args)?;
        if !(1..=5000).contains(&p.lines) {
            return Err(Failure::new(
                ToolError::invalid(format!("lines must be between 1 and 5000, got {}", p.lines)),
                None,
            ));
        }
        from_result(
            self.engine
                .console(&p.cluster_name, &p.node_name, p.lines)
                .await,
        )
    }
}

#[tool_router(router = dmesg_router, vis = "pub(crate)")]
impl VmclusterServer {
    /// Marks the kernel logs.
    #[tool(
        description = "Write one fresh marker line into the kernel log (/dev/kmsg) of each node (default: all) and return it; pass it to dmesg_collect as since_marker to read only what the kernel logged after this point. A node that cannot be reached fails the call.",
        input_schema = input_schema::<DmesgMarkParams>(),
        annotations(title = "Mark kernel logs", read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false)
    )]
    pub async fn dmesg_mark(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<Json<Envelope<DmesgMarkResult>>, Failure> {
        let p: DmesgMarkParams = parse(args)?;
        let (marker, reply) = self.engine.dmesg_mark(&p.cluster_name, p.nodes).await;
        let op_id = reply.op_id;
        let outcomes = reply
            .result
            .map_err(|e| Failure::new(ToolError::from_engine(&e), op_id))?;
        let total = outcomes.len();
        let mut nodes = Vec::new();
        let mut failures = Vec::new();
        for (node, r) in outcomes {
            match r {
                Ok(x) if x.exit_code == Some(0) => nodes.push(node),
                Ok(x) => failures.push(NodeFailure {
                    node,
                    code: ErrorCode::CommandFailed,
                    message: format!(
                        "writing to /dev/kmsg exited with {:?}: {}",
                        x.exit_code,
                        x.stderr.trim()
                    ),
                }),
                Err(e) => failures.push(NodeFailure {
                    node,
                    code: e.code(),
                    message: e.to_string(),
                }),
            }
        }
        let result = DmesgMarkResult {
            cluster_name: p.cluster_name,
            marker,
            nodes,
        };
        if !failures.is_empty() {
            return Err(Failure::with_result(
                ToolError::from_node_failures(failures, total),
                op_id,
                &result,
            ));
        }
        Ok(Json(Envelope::ok(result, op_id)))
    }

    /// Collects kernel logs.
    #[tool(
        description = "Read each node's kernel log (default: all nodes): the lines after since_marker (from dmesg_mark), or, without it, only what is new since the previous collect on that node. filter_level is all, warn+ or err+. Every line is classified (panic, oops, bug, warning, kasan, ubsan, hung_task, rcu_stall, oom_kill, call_trace, lockup) and counted per class; max_lines caps each node (truncated says so). A node that cannot be reached, or whose log lacks the marker, fails the call; it is never an empty success.",
        input_schema = input_schema::<DmesgCollectParams>(),
        annotations(title = "Collect kernel logs", read_only_hint = true, destructive_hint = false, idempotent_hint = false, open_world_hint = false)
    )]
    pub async fn dmesg_collect(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<Json<Envelope<DmesgCollectResult>>, Failure> {
        let p: DmesgCollectParams = parse(args)?;
        if let Some(m) = &p.since_marker
            && !dmesg::is_valid_marker(m)
        {
            return Err(Failure::new(
                ToolError::invalid(format!(
                    "since_marker {m:?} is not a marker dmesg_mark returns"
                )),
                None,
            ));
        }
        if !(1..=10_000).contains(&p.max_lines) {
            return Err(Failure::new(
                ToolError::invalid(format!(
                    "max_lines must be between 1 and 10000, got {}",
                    p.max_lines
                )),
                None,
            ));
        }
        let outcomes = self
            .engine
            .dmesg_collect(
                &p.cluster_name,
                p.nodes,
                p.since_marker,
                p.filter_level,
                p.max_lines,
            )
            .await
            .map_err(|e| Failure::new(ToolError::from_engine(&e), None))?;
        let total = outcomes.len();
        let mut nodes = Vec::new();
        let mut failures = Vec::new();
        for (node, r) in outcomes {
            match r {
                Ok(c) => nodes.push(NodeDmesg {
                    node,
                    matched: c.matched,
                    truncated: c.truncated,
                    counts: c.counts,
                    cursor: c.last_micros,
                    lines: c.lines,
                }),
                Err(e) => failures.push(NodeFailure {
                    node,
                    code: e.code(),
                    message: e.to_string(),
                }),
            }
        }
        let result = DmesgCollectResult {
            cluster_name: p.cluster_name,
            nodes,
        };
        if !failures.is_empty() {
            return Err(Failure::with_result(
                ToolError::from_node_failures(failures, total),
                None,
                &result,
            ));
        }
        Ok(Json(Envelope::ok(result, None)))
    }
}
