//! The MCP server: one struct holding the [`Engine`], with the tool groups' routers merged and
//! the resources (see `resources`) dispatched.
//!
//! Each tool method does the same four things and nothing more: parse its typed parameters,
//! check them, send one request to the engine, and convert the reply (see `envelope`).

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{
    Implementation, ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ServerCapabilities, ServerConfig,
    SubscribeRequestParams, SubscriptionFilter, UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, RoleServer, SubscriptionContext};
use rmcp::{ErrorData, ServerHandler, ServiceExt, tool_handler};
use vmcluster_actors::Engine;

use crate::resources;

/// What the server tells clients about itself.
const INSTRUCTIONS: &str = "vmcluster runs clusters of QEMU/KVM virtual machines through libvirt. Declare a cluster in a topology YAML file (in the server's topology_dir), then: cluster_define(topology_name) -> cluster_start(cluster_name, wait_for_ssh=true) -> cluster_status / cluster_handle -> cluster_stop -> cluster_destroy(remove_overlays=true). snapshot_create / snapshot_revert take and restore a consistent cut of every node (include_memory=true: revert resumes without reboot). Every result is {success, result, error{code, message, recoverable}, op_id}; failures also set isError. Every state change is an event: read them with events_read, or subscribe to the resource vmcluster://events (or vmcluster://clusters/{name}/events). A truncated node_exec output names a resource (stdout_uri / stderr_uri) holding it in full.";

/// The vmcluster MCP server.
#[derive(Debug, Clone)]
pub struct VmclusterServer {
    pub(crate) engine: Engine,
    tool_router: ToolRouter<VmclusterServer>,
    /// This session's resource subscriptions (`resources/subscribe`).
    pub(crate) subscriptions: Arc<resources::Subscriptions>,
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
                + VmclusterServer::ops_router()
                + VmclusterServer::events_router()
                + VmclusterServer::snapshot_router()
                + VmclusterServer::files_router(),
            subscriptions: Arc::default(),
        }
    }

    /// Serves MCP over stdin/stdout until the client closes the stream.
    pub async fn serve_stdio(self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let service = self.serve(rmcp::transport::stdio()).await?;
        service.waiting().await?;
        Ok(())
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for VmclusterServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
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
        resources::list(self).await
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(resources::templates())
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        resources::read(self, &request.uri).await.map(Into::into)
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        resources::subscribe(self, &request.uri, context.peer)
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        resources::unsubscribe(self, &request.uri)
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        resources::accepted_filter(requested)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        resources::listen(self, context).await
    }
}
