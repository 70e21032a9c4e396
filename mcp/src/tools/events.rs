//! The event stream as a tool: `events_read` pages through every journaled state change.
//! (The same stream is also an MCP resource with update notifications: see `resources`.)

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::JsonObject;
use rmcp::{Json, tool, tool_router};
use vmcluster_journal::{EventFilter, EventPage};

use crate::envelope::{Envelope, Failure, ToolError, input_schema, parse};
use crate::params::EventsReadParams;
use crate::server::VmclusterServer;

#[tool_router(router = events_router, vis = "pub(crate)")]
impl VmclusterServer {
    /// Reads the event stream.
    #[tool(
        description = "Read the event stream: every journaled state change (op.started, op.finished with its outcome and error, step.started, step.finished, cluster.defined, cluster.removed, object.created, object.removed, node.state, host_key.pinned, host_key.forgotten), oldest first, each with its sequence number, RFC 3339 time, cluster, node, op_id, tool and a short detail. Returns at most `limit` events with seq > `since` (optionally only one cluster's); pass `next_since` back as `since` to read on (`more` says whether anything follows). Subscribe to the resource vmcluster://events (or vmcluster://clusters/{name}/events) to be told when new events arrive.",
        input_schema = input_schema::<EventsReadParams>(),
        annotations(title = "Read events", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn events_read(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<Json<Envelope<EventPage>>, Failure> {
        let p: EventsReadParams = parse(args)?;
        if !(1..=1000).contains(&p.limit) {
            return Err(Failure::new(
                ToolError::invalid(format!("limit must be between 1 and 1000, got {}", p.limit)),
                None,
            ));
        }
        if p.cluster.as_deref().is_some_and(str::is_empty) {
            return Err(Failure::new(
                ToolError::invalid("cluster must not be empty"),
                None,
            ));
        }
        let filter = EventFilter { cluster: p.cluster };
        match self
            .engine
            .events()
            .read_async(p.since, p.limit, filter)
            .await
        {
            Ok(page) => Ok(Json(Envelope::ok(page, None))),
            Err(e) => Err(Failure::new(ToolError::from_engine(&e.into()), None)),
        }
    }
}
