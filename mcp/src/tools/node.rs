//! Single-node tools: crash, start, stop, reboot.

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::JsonObject;
use rmcp::service::RequestContext;
use rmcp::{Json, RoleServer, tool, tool_router};
use vmcluster_actors::NodeOp;
use vmcluster_engine::view::NodeResult;

use crate::envelope::{Envelope, Failure, ToolError, from_submitted, input_schema, parse};
use crate::params::{CrashParams, NodeRebootParams, NodeStartParams, NodeStopParams, seconds};
use crate::server::VmclusterServer;
use crate::tools::cluster::stop_mode;

fn checked(name: &str, v: u64) -> Result<std::time::Duration, Failure> {
    seconds(name, v).map_err(|m| Failure::new(ToolError::invalid(m), None))
}

#[tool_router(router = node_router, vis = "pub(crate)")]
impl VmclusterServer {
    /// Crashes a node.
    #[tool(
        description = "Simulate an unclean node failure (immediate power-off, like pulling the plug). With restart_after (default true) the node is powered on again, and with wait_for_ssh (default true) the call returns once it is ready.",
        input_schema = input_schema::<CrashParams>(),
        annotations(title = "Crash node", read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false)
    )]
    pub async fn node_crash(
        &self,
        Parameters(args): Parameters<JsonObject>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<Envelope<NodeResult>>, Failure> {
        let p: CrashParams = parse(args)?;
        let ssh_timeout = checked("ssh_timeout_s", p.ssh_timeout_s)?;
        let op = NodeOp::Crash {
            restart_after: p.restart_after,
            wait_for_ssh: p.wait_for_ssh,
            ssh_timeout,
        };
        self.node_op(&ctx, p.wait_s, &p.cluster_name, &p.node, op)
            .await
    }

    /// Starts a node.
    #[tool(
        description = "Power one node on; with wait_for_ssh (default true) wait until it is ready.",
        input_schema = input_schema::<NodeStartParams>(),
        annotations(title = "Start node", read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn node_start(
        &self,
        Parameters(args): Parameters<JsonObject>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<Envelope<NodeResult>>, Failure> {
        let p: NodeStartParams = parse(args)?;
        let ssh_timeout = checked("ssh_timeout_s", p.ssh_timeout_s)?;
        let op = NodeOp::Start {
            wait_for_ssh: p.wait_for_ssh,
            ssh_timeout,
        };
        self.node_op(&ctx, p.wait_s, &p.cluster_name, &p.node_name, op)
            .await
    }

    /// Stops a node.
    #[tool(
        description = "Power one node off: mode=shutdown (default, ACPI, forced after timeout_s) or mode=destroy (at once).",
        input_schema = input_schema::<NodeStopParams>(),
        annotations(title = "Stop node", read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn node_stop(
        &self,
        Parameters(args): Parameters<JsonObject>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<Envelope<NodeResult>>, Failure> {
        let p: NodeStopParams = parse(args)?;
        let timeout = checked("timeout_s", p.timeout_s)?;
        let op = NodeOp::Stop {
            mode: stop_mode(p.mode),
            timeout,
        };
        self.node_op(&ctx, p.wait_s, &p.cluster_name, &p.node_name, op)
            .await
    }

    /// Reboots a node.
    #[tool(
        description = "Reboot one running node (hard=true resets it instead of asking the guest); with wait_for_ssh (default true) wait until it is ready again.",
        input_schema = input_schema::<NodeRebootParams>(),
        annotations(title = "Reboot node", read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false)
    )]
    pub async fn node_reboot(
        &self,
        Parameters(args): Parameters<JsonObject>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<Envelope<NodeResult>>, Failure> {
        let p: NodeRebootParams = parse(args)?;
        let ssh_timeout = checked("ssh_timeout_s", p.ssh_timeout_s)?;
        let op = NodeOp::Reboot {
            hard: p.hard,
            wait_for_ssh: p.wait_for_ssh,
            ssh_timeout,
        };
        self.node_op(&ctx, p.wait_s, &p.cluster_name, &p.node_name, op)
            .await
    }
}

impl VmclusterServer {
    /// Runs a node operation as a slow tool: bounded wait, cancellation and progress from
    /// `ctx`, and the `{state: running, op_id}` answer when `wait_s` runs out.
    async fn node_op(
        &self,
        ctx: &RequestContext<RoleServer>,
        wait_s: u64,
        cluster: &str,
        node: &str,
        op: NodeOp,
    ) -> Result<Json<Envelope<NodeResult>>, Failure> {
        let (opts, _guard) = crate::slow::submit(ctx, wait_s)?;
        from_submitted(
            &self.engine,
            self.engine.node_with(cluster, node, op, opts).await,
        )
    }
}
