//! Observability tools: the serial console (and, with the dmesg tools, the kernel log).

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::JsonObject;
use rmcp::{Json, tool, tool_router};
use vmcluster_engine::view::ConsoleTail;

use crate::envelope::{Envelope, Failure, ToolError, from_result, input_schema, parse};
use crate::params::NodeConsoleParams;
use crate::server::VmclusterServer;

#[tool_router(router = observe_router, vis = "pub(crate)")]
impl VmclusterServer {
    /// Tail of a node's serial console.
    #[tool(
        description = "The last lines of a node's serial console, captured to a file by libvirt across every boot. Works when SSH and the guest network are dead: kernel panics, boot failures and the guest's own messages land here.",
        input_schema = input_schema::<NodeConsoleParams>(),
        annotations(title = "Node console", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn node_console(&self, Parameters(args): Parameters<JsonObject>) -> Result<Json<Envelope<ConsoleTail>>, Failure> {
        let p: NodeConsoleParams = parse(args)?;
        if !(1..=5000).contains(&p.lines) {
            return Err(Failure::new(ToolError::invalid(format!("lines must be between 1 and 5000, got {}", p.lines)), None));
        }
        from_result(self.engine.console(&p.cluster_name, &p.node_name, p.lines).await)
    }
}
