//! File tools: copy one file to or from a node over SFTP, atomically and checksummed.

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::JsonObject;
use rmcp::{Json, tool, tool_router};
use vmcluster_actors::files::{Direction, Transfer};
use vmcluster_engine::view::FileTransferResult;

use crate::envelope::{Envelope, Failure, ToolError, from_reply, input_schema, parse};
use crate::params::{NodeDownloadParams, NodeUploadParams};
use crate::server::VmclusterServer;

/// Parses an octal permission mode (`"0644"`, `"755"`, `"0o600"`).
fn mode(s: &str) -> Result<u32, Failure> {
    let digits = s.trim().trim_start_matches("0o");
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o7777 && !digits.is_empty())
        .ok_or_else(|| {
            Failure::new(
                ToolError::invalid(format!(
                    "mode {s:?} is not an octal permission mode such as \"0644\""
                )),
                None,
            )
        })
}

#[tool_router(router = files_router, vis = "pub(crate)")]
impl VmclusterServer {
    /// Copies a file to a node.
    #[tool(
        description = "Copy one file from the server's host to a node over SFTP. The node receives it in a temporary file next to remote_path, fsynced, with the mode applied; the node's sha256sum of it must match the host's SHA-256, and only then is it renamed over remote_path (atomic: readers see the old file or the new one). Returns size, sha256 and mode. Paths must be absolute; a missing local file, a remote directory or a file over the server's transfer limit (transfer_max_bytes, default 1 GiB) is refused without touching the node.",
        input_schema = input_schema::<NodeUploadParams>(),
        annotations(title = "Upload a file", read_only_hint = false, destructive_hint = true, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn node_upload(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<Json<Envelope<FileTransferResult>>, Failure> {
        let p: NodeUploadParams = parse(args)?;
        let mode = p.mode.as_deref().map(mode).transpose()?;
        let t = Transfer {
            direction: Direction::Upload { mode },
            local: p.local_path.into(),
            remote: p.remote_path,
        };
        from_reply(self.engine.transfer(&p.cluster_name, &p.node_name, t).await)
    }

    /// Copies a file from a node.
    #[tool(
        description = "Copy one file from a node to the server's host over SFTP. It is written to a temporary file next to local_path, fsynced, checked against the node's sha256sum of the original, and only then renamed over local_path (atomic). The copy keeps the node file's permission bits. Returns size, sha256 and mode. Paths must be absolute; a missing remote file is NOT_FOUND; a remote directory, a local directory or a file over the transfer limit is refused.",
        input_schema = input_schema::<NodeDownloadParams>(),
        annotations(title = "Download a file", read_only_hint = false, destructive_hint = true, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn node_download(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<Json<Envelope<FileTransferResult>>, Failure> {
        let p: NodeDownloadParams = parse(args)?;
        let t = Transfer {
            direction: Direction::Download,
            local: p.local_path.into(),
            remote: p.remote_path,
        };
        from_reply(self.engine.transfer(&p.cluster_name, &p.node_name, t).await)
    }
}

#[cfg(test)]
mod tests {
    use super::mode;

    #[test]
    fn modes_are_octal() {
        assert_eq!(mode("0644").unwrap(), 0o644);
        assert_eq!(mode("755").unwrap(), 0o755);
        assert_eq!(mode("0o600").unwrap(), 0o600);
        assert_eq!(mode("4755").unwrap(), 0o4755);
        for bad in ["", "0o", "8", "rwx", "17777", "-1"] {
            assert!(mode(bad).is_err(), "{bad}");
        }
    }
}
