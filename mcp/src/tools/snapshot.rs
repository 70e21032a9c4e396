//! Snapshot tools: cluster-wide create (a consistent cut), list, revert, delete.

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::JsonObject;
use rmcp::{Json, tool, tool_router};
use vmcluster_actors::snapshot::{CreateRequest, RevertRequest};
use vmcluster_engine::snapshot::{
    DeleteStatus, SnapshotDeleteResult, SnapshotInfo, SnapshotList, SnapshotRevertResult,
};

use crate::envelope::{
    Envelope, Failure, NodeFailure, ToolError, from_reply, from_result, input_schema, parse,
};
use crate::params::{
    ClusterParams, SnapshotCreateParams, SnapshotDeleteParams, SnapshotRevertParams, seconds,
};
use crate::server::VmclusterServer;

#[tool_router(router = snapshot_router, vis = "pub(crate)")]
impl VmclusterServer {
    /// Takes a cluster-wide snapshot.
    #[tool(
        description = "Snapshot every node of a cluster under one name, as one consistent cut: every running node is paused, all nodes are snapshotted at once (libvirt internal qcow2 snapshots), then resumed, so no node runs ahead of another inside the snapshot. include_memory=true keeps running nodes' memory: a revert resumes them where they were (processes and clocks included) without a reboot. include_memory=false (default) keeps disk state only (running nodes' file systems are synced first): a revert boots the nodes from it. Shut-off nodes are snapshotted disk-only either way; running, paused and shut-off nodes can be mixed. All or nothing: if any node fails, the snapshots already taken are removed and the error names the node; paused nodes are always resumed. A name that already exists on any node is refused (CONFLICT). A logical name from the topology's snapshots: map stands for its real name.",
        input_schema = input_schema::<SnapshotCreateParams>(),
        annotations(title = "Create cluster snapshot", read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false)
    )]
    pub async fn snapshot_create(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<Json<Envelope<SnapshotInfo>>, Failure> {
        let p: SnapshotCreateParams = parse(args)?;
        let request = CreateRequest {
            snapshot_name: p.snapshot_name,
            description: p.description,
            include_memory: p.include_memory,
        };
        from_reply(self.engine.snapshot_create(&p.cluster_name, request).await)
    }

    /// Lists a cluster's snapshots.
    #[tool(
        description = "List the cluster's snapshots, oldest first, with per-node metadata: whether the node holds it, its kind (memory: revert resumes without reboot; disk: revert boots from the disk state), the node's domain state at the cut, creation time and the guest memory stored for it (vm_state_bytes). complete is true when every node holds it and its creation finished (only complete snapshots can be reverted); created_by_vmcluster tells which ones vmcluster may delete.",
        input_schema = input_schema::<ClusterParams>(),
        annotations(title = "List cluster snapshots", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn snapshot_list(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<Json<Envelope<SnapshotList>>, Failure> {
        let p: ClusterParams = parse(args)?;
        from_result(self.engine.snapshot_list(&p.cluster_name).await)
    }

    /// Reverts a cluster to a snapshot.
    #[tool(
        description = "Revert every node of the cluster to a snapshot. The snapshot must exist and be complete on every node; that is checked before any node is touched (a missing name is NOT_FOUND and changes nothing). With restart_after=true (default), nodes that were running at the cut come back: from memory for a memory snapshot (no reboot; processes, clocks and uptime go back), else powered off and booted from the restored disks; nodes that were off at the cut stay off. restart_after=false leaves every node shut off with its disks restored. A node whose revert fails is retried before the call gives up and names it. Afterwards every node's SSH session, readiness and dmesg cursor start afresh (host keys stay pinned: same disks); with wait_for_ssh (default true) the call returns once the restarted nodes are ready. Everything written since the snapshot is lost.",
        input_schema = input_schema::<SnapshotRevertParams>(),
        annotations(title = "Revert cluster to snapshot", read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false)
    )]
    pub async fn snapshot_revert(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<Json<Envelope<SnapshotRevertResult>>, Failure> {
        let p: SnapshotRevertParams = parse(args)?;
        let ssh_timeout = seconds("ssh_timeout_s", p.ssh_timeout_s)
            .map_err(|m| Failure::new(ToolError::invalid(m), None))?;
        let request = RevertRequest {
            snapshot_name: p.snapshot_name,
            restart_after: p.restart_after,
            wait_for_ssh: p.wait_for_ssh,
            ssh_timeout,
        };
        from_reply(self.engine.snapshot_revert(&p.cluster_name, request).await)
    }

    /// Deletes a cluster snapshot.
    #[tool(
        description = "Delete a snapshot (data and metadata) from every node that holds it, with per-node status (deleted, absent, failed). Refused without changing anything when no node holds that name (NOT_FOUND) or when vmcluster did not create it (CONFLICT: it is left for whoever made it). If a node fails, the others are still deleted, the call fails with the per-node results attached.",
        input_schema = input_schema::<SnapshotDeleteParams>(),
        annotations(title = "Delete cluster snapshot", read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false)
    )]
    pub async fn snapshot_delete(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<Json<Envelope<SnapshotDeleteResult>>, Failure> {
        let p: SnapshotDeleteParams = parse(args)?;
        let reply = self
            .engine
            .snapshot_delete(&p.cluster_name, &p.snapshot_name)
            .await;
        let op_id = reply.op_id;
        let result = reply
            .result
            .map_err(|e| Failure::new(ToolError::from_engine(&e), op_id))?;
        let failures: Vec<NodeFailure> = result
            .nodes
            .iter()
            .filter(|n| n.status == DeleteStatus::Failed)
            .map(|n| NodeFailure {
                node: n.node.clone(),
                code: n
                    .error_code
                    .unwrap_or(vmcluster_engine::ErrorCode::Internal),
                message: n.error.clone().unwrap_or_default(),
            })
            .collect();
        if !failures.is_empty() {
            let error = ToolError::from_node_failures(failures, result.nodes.len());
            return Err(Failure::with_result(error, op_id, &result));
        }
        Ok(Json(Envelope::ok(result, op_id)))
    }
}
