//! Cluster lifecycle tools: define, start, stop, destroy, status, handle, list.

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::JsonObject;
use rmcp::service::RequestContext;
use rmcp::{Json, RoleServer, tool, tool_router};
use vmcluster_actors::StopMode;
use vmcluster_engine::view::{ClusterHandle, ClusterList, ClusterStatus};

use crate::envelope::{
    Envelope, Failure, ToolError, from_result, from_submitted, input_schema, parse,
};
use crate::params::{
    ClusterParams, DefineParams, DestroyParams, NoParams, StartParams, StopModeParam, StopParams,
    seconds,
};
use crate::server::VmclusterServer;

fn checked(name: &str, v: u64) -> Result<std::time::Duration, Failure> {
    seconds(name, v).map_err(|m| Failure::new(ToolError::invalid(m), None))
}

/// Maps the parameter to the engine's stop mode.
pub fn stop_mode(m: StopModeParam) -> StopMode {
    match m {
        StopModeParam::Shutdown => StopMode::Shutdown,
        StopModeParam::Destroy => StopMode::Destroy,
    }
}

#[tool_router(router = cluster_router, vis = "pub(crate)")]
impl VmclusterServer {
    /// Defines a cluster from a topology file.
    #[tool(
        description = "Provision a cluster from the topology file <topology_name>.yaml: its NAT network, one qcow2 overlay and NoCloud seed per node, extra disks, and the libvirt domains. The whole topology is validated first (nothing changes on error). Idempotent and converging: after a partial failure, calling it again completes the cluster; existing overlays are never overwritten.",
        input_schema = input_schema::<DefineParams>(),
        annotations(title = "Define cluster", read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn cluster_define(
        &self,
        Parameters(args): Parameters<JsonObject>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<Envelope<ClusterStatus>>, Failure> {
        let p: DefineParams = parse(args)?;
        let (opts, _guard) = crate::slow::submit(&ctx, p.wait_s)?;
        from_submitted(
            &self.engine,
            self.engine.define_with(&p.topology_name, opts).await,
        )
    }

    /// Boots a cluster.
    #[tool(
        description = "Boot every node of a defined cluster in parallel. With wait_for_ssh (default true) it returns once every node is ready (domain running, SSH port open, SSH login works, cloud-init finished) or fails naming each node that was not, with its last phase and console tail.",
        input_schema = input_schema::<StartParams>(),
        annotations(title = "Start cluster", read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn cluster_start(
        &self,
        Parameters(args): Parameters<JsonObject>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<Envelope<ClusterStatus>>, Failure> {
        let p: StartParams = parse(args)?;
        let t = checked("ssh_timeout_s", p.ssh_timeout_s)?;
        let (opts, _guard) = crate::slow::submit(&ctx, p.wait_s)?;
        from_submitted(
            &self.engine,
            self.engine
                .start_cluster_with(&p.cluster_name, p.wait_for_ssh, t, opts)
                .await,
        )
    }

    /// Stops a cluster.
    #[tool(
        description = "Stop every running node. mode=shutdown (default) presses the ACPI power button and waits up to timeout_s for power-off, then forces it; mode=destroy powers off at once.",
        input_schema = input_schema::<StopParams>(),
        annotations(title = "Stop cluster", read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn cluster_stop(
        &self,
        Parameters(args): Parameters<JsonObject>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<Envelope<ClusterStatus>>, Failure> {
        let p: StopParams = parse(args)?;
        let t = checked("timeout_s", p.timeout_s)?;
        let (opts, _guard) = crate::slow::submit(&ctx, p.wait_s)?;
        from_submitted(
            &self.engine,
            self.engine
                .stop_cluster_with(&p.cluster_name, stop_mode(p.mode), t, opts)
                .await,
        )
    }

    /// Destroys a cluster.
    #[tool(
        description = "Tear a cluster down: power off and undefine every domain (with snapshot metadata), remove seeds and console logs, and remove the network. With remove_overlays=true the overlay disks and the extra disks vmcluster created are deleted too. Leaves nothing vmcluster made behind.",
        input_schema = input_schema::<DestroyParams>(),
        annotations(title = "Destroy cluster", read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false)
    )]
    pub async fn cluster_destroy(
        &self,
        Parameters(args): Parameters<JsonObject>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<Envelope<ClusterStatus>>, Failure> {
        let p: DestroyParams = parse(args)?;
        let (opts, _guard) = crate::slow::submit(&ctx, p.wait_s)?;
        from_submitted(
            &self.engine,
            self.engine
                .destroy_with(&p.cluster_name, p.remove_overlays, opts)
                .await,
        )
    }

    /// Reports a cluster's state.
    #[tool(
        description = "Per-node domain state and readiness phase, answered from the server's live state (libvirt events and readiness probes) without touching the network.",
        input_schema = input_schema::<ClusterParams>(),
        annotations(title = "Cluster status", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn cluster_status(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<Json<Envelope<ClusterStatus>>, Failure> {
        let p: ClusterParams = parse(args)?;
        from_result(self.engine.status(&p.cluster_name).await)
    }

    /// Returns SSH descriptors of a running cluster.
    #[tool(
        description = "A ClusterHandle for direct SSH access: per-node ip, port, user, key path and pinned host key, the artifact path, and kernel versions (read over SSH). Requires every node to be running.",
        input_schema = input_schema::<ClusterParams>(),
        annotations(title = "Cluster handle", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn cluster_handle(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<Json<Envelope<ClusterHandle>>, Failure> {
        let p: ClusterParams = parse(args)?;
        from_result(self.engine.handle(&p.cluster_name).await)
    }

    /// Lists clusters.
    #[tool(
        description = "Every defined cluster with its node count, running nodes, network and subnet.",
        input_schema = input_schema::<NoParams>(),
        annotations(title = "List clusters", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn cluster_list(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<Json<Envelope<ClusterList>>, Failure> {
        let _: NoParams = parse(args)?;
        from_result(self.engine.list().await)
    }
}
