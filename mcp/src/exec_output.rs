//! The exec-output family of MCP resources (dispatched from `resources`):
//!
//! - `vmcluster://exec/{op_id}/{node}/{stream}`: the full stdout or stderr of a command whose
//!   tool result was truncated (the result names the URI). Kept on disk with bounded retention,
//!   so an old one may be gone: reading it is then a `RESOURCE_NOT_FOUND` error whose data is
//!   the usual typed error (`code: NOT_FOUND`).
//!

use base64::Engine as _;
use rmcp::ErrorData;
use rmcp::model::{ReadResourceResult, Resource, ResourceContents, ResourceTemplate};
use vmcluster_actors::outputs::URI_PREFIX as EXEC_PREFIX;

/// The URI prefix of this family.
pub const PREFIX: &str = EXEC_PREFIX;
use vmcluster_actors::{Engine, EngineError};
use vmcluster_engine::ErrorCode;

use crate::envelope::ToolError;

/// The URI templates clients can discover (`resources/templates/list`).
pub fn templates() -> Vec<ResourceTemplate> {
    vec![
        ResourceTemplate::new(
            format!("{EXEC_PREFIX}{{op_id}}/{{node}}/{{stream}}"),
            "exec-output",
        )
        .with_title("Full output of a truncated command")
        .with_description(
            "The whole stdout or stderr (stream = stdout|stderr, up to 64 MiB) of a node_exec / \
             node_exec_all command whose result was truncated; the result's stdout_uri / \
             stderr_uri name it. The most recent outputs are kept; older ones are evicted.",
        )
        .with_mime_type("text/plain"),
    ]
}

/// The concrete resources that exist now (`resources/list`).
pub async fn list(engine: &Engine) -> Vec<Resource> {
    engine
        .exec_outputs()
        .await
        .into_iter()
        .rev()
        .map(|o| {
            Resource::new(
                o.uri(),
                format!("{} of {} (op {})", o.stream.as_str(), o.node, o.op_id),
            )
            .with_mime_type("text/plain")
            .with_size(o.size)
        })
        .collect()
}

/// Reads one resource (`resources/read`).
pub async fn read(engine: &Engine, uri: &str) -> Result<ReadResourceResult, ErrorData> {
    match uri {
        u if u.starts_with(EXEC_PREFIX) => {
            let bytes = engine.exec_output(u).await.map_err(error)?;
            Ok(ReadResourceResult::new(vec![contents(u, bytes)]))
        }
        _ => Err(error(EngineError::NotFound {
            kind: "resource",
            name: uri.to_owned(),
        })),
    }
}

/// Text when the bytes are UTF-8, else a base64 blob.
fn contents(uri: &str, bytes: Vec<u8>) -> ResourceContents {
    match String::from_utf8(bytes) {
        Ok(text) => ResourceContents::text(text, uri),
        Err(e) => ResourceContents::blob(
            base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
            uri,
        )
        .with_mime_type("application/octet-stream"),
    }
}

/// A protocol error carrying the typed tool error as its data.
pub(crate) fn error(e: EngineError) -> ErrorData {
    let typed = ToolError::from_engine(&e);
    let data = serde_json::to_value(&typed).ok();
    match typed.code {
        ErrorCode::NotFound => ErrorData::resource_not_found(typed.message, data),
        ErrorCode::InvalidArgument => ErrorData::invalid_params(typed.message, data),
        _ => ErrorData::internal_error(typed.message, data),
    }
}
