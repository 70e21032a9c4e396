//! The MCP server: one struct holding the [`Engine`], with the tool groups' routers merged.
//!
//! Each tool method does the same four things and nothing more: parse its typed parameters,
//! check them, send one request to the engine, and convert the reply (see `envelope`).

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{
    Implementation, ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt, tool_handler};
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
                + VmclusterServer::files_router(),
        }
    }

    /// Serves MCP over stdin/stdout until the client closes the stream.
    pub async fn serve_stdio(self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let service = self.serve(rmcp::transport::stdio()).await?;
        service.waiting().await?;
        Ok(())
    }
}

const INSTRUCTIONS: &str = "vmcluster runs clusters of QEMU/KVM virtual machines through libvirt. Declare a cluster in a topology YAML file (in the server's topology_dir), then: cluster_define(topology_name) -> cluster_start(cluster_name, wait_for_ssh=true) -> cluster_status / cluster_handle -> cluster_stop -> cluster_destroy(remove_overlays=true). Every result is {success, result, error{code, message, recoverable}, op_id}; failures also set isError. A truncated node_exec output names a resource (stdout_uri / stderr_uri) holding it in full.";

#[tool_handler(router = self.tool_router)]
impl ServerHandler for VmclusterServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("vmcluster", env!("CARGO_PKG_VERSION")))
        .with_instructions(INSTRUCTIONS.to_owned())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(
            crate::resources::list(&self.engine).await,
        ))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(
            crate::resources::templates(),
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        crate::resources::read(&self.engine, &request.uri)
            .await
            .map(Into::into)
    }
}
