//! Operation handles: op_status, op_wait, op_list, op_cancel (answered from the journal).

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::JsonObject;
use rmcp::{Json, tool, tool_router};
use uuid::Uuid;
use vmcluster_engine::view::{OpList, OpStatus};

use crate::envelope::{Envelope, Failure, ToolError, from_result, input_schema, parse};
use crate::params::{OpListParams, OpParams, OpWaitParams, wait_seconds};
use crate::server::VmclusterServer;

fn op_id(s: &str) -> Result<Uuid, Failure> {
    Uuid::parse_str(s).map_err(|e| {
        Failure::new(
            ToolError::invalid(format!("Invalid argument op_id: {e}")),
            None,
        )
    })
}

#[tool_router(router = ops_router, vis = "pub(crate)")]
impl VmclusterServer {
    /// Reports an operation.
    #[tool(
        description = "The journaled history of one operation (any mutating tool's op_id): running or finished, its outcome (applied, not_applied: nothing of it remains, indeterminate: part of it may have happened), its steps, whether it was rolled back, and its error or result. Survives server restarts.",
        input_schema = input_schema::<OpParams>(),
        annotations(title = "Operation status", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn op_status(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<Json<Envelope<OpStatus>>, Failure> {
        let p: OpParams = parse(args)?;
        from_result(self.engine.op_status(op_id(&p.op_id)?))
    }

    /// Waits for an operation.
    #[tool(
        description = "Wait up to wait_s seconds (default 50) for an operation to finish, then report it as op_status does. Returns state=running if it is still going; call again to keep waiting.",
        input_schema = input_schema::<OpWaitParams>(),
        annotations(title = "Wait for operation", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn op_wait(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<Json<Envelope<OpStatus>>, Failure> {
        let p: OpWaitParams = parse(args)?;
        let id = op_id(&p.op_id)?;
        let wait = wait_seconds(p.wait_s).map_err(|m| Failure::new(ToolError::invalid(m), None))?;
        from_result(self.engine.op_wait(id, wait).await)
    }

    /// Lists operations.
    #[tool(
        description = "Recent operations, newest first (optionally one cluster's), each as op_status reports it. The server keeps the last 10000 finished operations; `retired` counts older ones.",
        input_schema = input_schema::<OpListParams>(),
        annotations(title = "List operations", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn op_list(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<Json<Envelope<OpList>>, Failure> {
        let p: OpListParams = parse(args)?;
        if !(1..=1000).contains(&p.limit) {
            return Err(Failure::new(
                ToolError::invalid(format!("limit must be between 1 and 1000, got {}", p.limit)),
                None,
            ));
        }
        from_result(Ok(self.engine.op_list(p.cluster_name.as_deref(), p.limit)))
    }

    /// Cancels an operation.
    #[tool(
        description = "Ask a running operation to stop. It stops at its next step boundary, never inside a step: a cluster_define is then rolled back (not_applied); other operations keep what their finished steps did (indeterminate). Returns the operation as it stands; follow with op_wait.",
        input_schema = input_schema::<OpParams>(),
        annotations(title = "Cancel operation", read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn op_cancel(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<Json<Envelope<OpStatus>>, Failure> {
        let p: OpParams = parse(args)?;
        from_result(self.engine.op_cancel(op_id(&p.op_id)?))
    }
}
