//! The MCP server: one struct holding the [`Engine`], with the tool groups' routers merged.
//!
//! Each tool method does the same four things and nothing more: parse its typed parameters,
//! check them, send one request to the engine, and convert the reply (see `envelope`).

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::{ServerHandler, ServiceExt, tool_handler};
use vmcluster_actors::Engine;

/// The vmcluster MCP server.
#[derive(Debug, Clone)]
pub struct VmclusterServer {
    pub(crate) engine: Engine,
    tool_router: ToolRouter<VmclusterServer>,
}

impl VmclusterServer {
    /// A server over `engine`.
    pub fn new(engine: Engine) -> VmclusterServer {
        VmclusterServer {
            engine,
            tool_router: VmclusterServer::cluster_router()
                + VmclusterServer::node_router()
                + VmclusterServer::exec_router()
                + VmclusterServer::observe_router()
                + VmclusterServer::dmesg_router()
                + VmclusterServer::snapshot_router(),
        }
    }

    /// Serves MCP over stdin/stdout until the client closes the stream.
    pub async fn serve_stdio(self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let service = self.serve(rmcp::transport::stdio()).await?;
        service.waiting().await?;
        Ok(())
    }
}

#[tool_handler(
    router = self.tool_router,
    name = "vmcluster",
    instructions = "vmcluster runs clusters of QEMU/KVM virtual machines through libvirt. Declare a cluster in a topology YAML file (in the server's topology_dir), then: cluster_define(topology_name) -> cluster_start(cluster_name, wait_for_ssh=true) -> cluster_status / cluster_handle -> cluster_stop -> cluster_destroy(remove_overlays=true). snapshot_create / snapshot_revert take and restore a consistent cut of every node (include_memory=true: revert resumes without reboot). Every result is {success, result, error{code, message, recoverable}, op_id}; failures also set isError."
)]
impl ServerHandler for VmclusterServer {}
