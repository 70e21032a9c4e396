//! Moving files between this host and a node over SFTP (`node_upload`, `node_download`).
//!
//! Both directions follow one discipline:
//!
//! 1. everything checkable on this host is checked before the command is journaled (absolute
//!    paths, the local file, the size limit), so a refused request changes nothing;
//! 2. the receiving side writes a temporary file in the target's own directory
//!    (`.<name>.vmc-<id>.tmp`), fsyncs it and applies the mode;
//! 3. the node computes the SHA-256 of its copy with `sha256sum` over the pooled session, and
//!    it must equal what this host hashed while streaming; a mismatch is an error;
//! 4. only then is the temporary file renamed over the target (`posix-rename@openssh.com` on
//!    the node, `rename(2)` here), so readers see the old file or the new one, never a mix;
//!    on any failure the temporary file is removed.
//!
//! Transfers are pipelined (up to [`IN_FLIGHT`] requests of [`CHUNK`] bytes outstanding) on one
//! channel of the node's SSH connection.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use ractor::ActorRef;
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmcluster_engine::view::FileTransferResult;
use vmcluster_journal::Journal;

use crate::cluster::Reply;
use crate::error::{EngineError, Result};
use crate::exec::{ExecRequest, shell_quote};
use crate::node::NodeMsg;
use crate::ops::Op;
use crate::ssh::Sftp;

/// Bytes per SFTP read or write request.
pub const CHUNK: usize = 64 * 1024;
/// Requests outstanding at once.
pub const IN_FLIGHT: usize = 16;
/// How long a transfer waits for the node's SSH session.
const SESSION_WAIT: Duration = Duration::from_secs(30);
/// Budget of one SFTP request.
const SFTP_TIMEOUT: Duration = Duration::from_secs(60);

/// Which way a file goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// This host → node, with the mode to give the file there (default: the replaced file's,
    /// else 0644).
    Upload {
        /// Permission bits.
        mode: Option<u32>,
    },
    /// Node → this host (the file keeps the node copy's permission bits).
    Download,
}

/// One file transfer.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// Direction.
    pub direction: Direction,
    /// The file on this host (absolute).
    pub local: PathBuf,
    /// The file on the node (absolute).
    pub remote: String,
}

impl Transfer {
    /// The tool's name.
    pub fn tool(&self) -> &'static str {
        match self.direction {
            Direction::Upload { .. } => "node_upload",
            Direction::Download => "node_download",
        }
    }

    /// Checks what can be checked on this host, before anything is journaled or sent.
    pub fn check(&self, limit: u64) -> Result<()> {
        check_remote_path(&self.remote)?;
        let local = &self.local;
        let bad = |m: String| Err(EngineError::InvalidArgument(m));
        if !local.is_absolute() {
            return bad(format!("local_path {local:?} must be an absolute path"));
        }
        if local.file_name().is_none() {
            return bad(format!("local_path {local:?} must name a file"));
        }
        match self.direction {
            Direction::Upload { mode } => {
                if mode.is_some_and(|m| m > 0o7777) {
                    return bad(format!(
                        "mode {:o} is not a permission mode",
                        mode.unwrap_or(0)
                    ));
                }
                let meta = match std::fs::metadata(local) {
                    Ok(m) => m,
                    Err(e) => return bad(format!("local_path {local:?} cannot be read: {e}")),
                };
                if !meta.is_file() {
                    return bad(format!("local_path {local:?} is not a regular file"));
                }
                if meta.len() > limit {
                    return bad(format!(
                        "local_path {local:?} is {} bytes, over the transfer limit of {limit} bytes (transfer_max_bytes)",
                        meta.len()
                    ));
                }
            }
            Direction::Download => {
                if local.is_dir() {
                    return bad(format!(
                        "local_path {local:?} is a directory; give the file's full path"
                    ));
                }
                let parent = local.parent().unwrap_or(Path::new("/"));
                if !parent.is_dir() {
                    return bad(format!(
                        "the directory of local_path {local:?} does not exist"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Checks a path on a node: absolute, normalised, naming a file.
pub fn check_remote_path(p: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(EngineError::InvalidArgument(format!(
            "remote_path {p:?} {why}"
        )))
    };
    if !p.starts_with('/') {
        return bad("must be an absolute path");
    }
    if p.len() > 4096 || p.contains('\0') {
        return bad("is not a valid path");
    }
    if p.ends_with('/') {
        return bad("must name a file, not a directory");
    }
    if p[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return bad("must be normalised (no empty, `.` or `..` components)");
    }
    Ok(())
}

/// `(directory, file name)` of a checked absolute path.
fn split_remote(p: &str) -> (&str, &str) {
    let i = p.rfind('/').unwrap_or(0);
    (if i == 0 { "/" } else { &p[..i] }, &p[i + 1..])
}

fn temp_name(name: &str) -> String {
    format!(
        ".{name}.vmc-{}.tmp",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

fn is_status(e: &SftpError, code: StatusCode) -> bool {
    matches!(e, SftpError::Status(s) if s.status_code == code)
}

fn sftp_err(node: &str, what: String, e: SftpError) -> EngineError {
    match &e {
        SftpError::Status(s) if s.status_code == StatusCode::PermissionDenied => {
            EngineError::FailedPrecondition(format!("{what} on node {node:?}: permission denied"))
        }
        _ => EngineError::Ssh {
            node: node.to_owned(),
            message: format!("{what}: {e}"),
        },
    }
}

/// Runs one transfer as a journaled command.
pub async fn run(
    journal: &Journal,
    cluster: &str,
    node: &str,
    actor: ActorRef<NodeMsg>,
    limit: u64,
    t: Transfer,
) -> Reply<FileTransferResult> {
    if let Err(e) = t.check(limit) {
        return Reply {
            op_id: None,
            result: Err(e),
        };
    }
    let mode = match t.direction {
        Direction::Upload { mode } => mode.map(|m| format!("{m:04o}")),
        Direction::Download => None,
    };
    let params = json!({
        "node": node,
        "local_path": t.local.display().to_string(),
        "remote_path": t.remote,
        "mode": mode,
    });
    let op = match Op::begin(journal, t.tool(), cluster, &params).await {
        Ok(op) => op,
        Err(e) => {
            return Reply {
                op_id: None,
                result: Err(e),
            };
        }
    };
    let started = Instant::now();
    let moved = match t.direction {
        Direction::Upload { mode } => upload(node, &actor, &t.local, &t.remote, mode, limit).await,
        Direction::Download => download(node, &actor, &t.remote, &t.local, limit).await,
    };
    let result = moved.map(|(size, sha256, mode)| FileTransferResult {
        cluster_name: cluster.to_owned(),
        node: node.to_owned(),
        local_path: t.local.display().to_string(),
        remote_path: t.remote.clone(),
        size,
        sha256,
        mode: format!("{mode:04o}"),
        duration_ms: started.elapsed().as_millis() as u64,
    });
    // A failed transfer removed its temporary file: nothing was applied.
    op.finish(&result, vmcluster_journal::Outcome::NotApplied)
        .await;
    Reply {
        op_id: Some(op.id),
        result,
    }
}

/// The node's SHA-256 of `path` (`sha256sum` over the pooled session).
async fn node_sha256(
    actor: &ActorRef<NodeMsg>,
    node: &str,
    path: &str,
    size: u64,
) -> Result<String> {
    // Hashing is CPU-bound on the node; allow a slow (TCG) guest about 4 MiB/s.
    let budget = Duration::from_secs(60 + size / (4 << 20));
    let request = ExecRequest::new(format!("sha256sum {}", shell_quote(path)), budget);
    let out = crate::cluster::ask(actor, |reply| NodeMsg::Exec { request, reply }, None).await??;
    let hex = out.stdout.split_whitespace().next().unwrap_or_default();
    if out.exit_code != Some(0) || hex.len() != 64 {
        return Err(EngineError::Ssh {
            node: node.to_owned(),
            message: format!(
                "`sha256sum {path}` failed (exit {:?}): {}",
                out.exit_code,
                out.stderr.trim()
            ),
        });
    }
    Ok(hex.to_ascii_lowercase())
}

fn mismatch(node: &str, path: &str, here: &str, there: &str) -> EngineError {
    EngineError::Io {
        action: format!("verify {path} on node {node:?}"),
        message: format!("SHA-256 mismatch: this host has {here}, the node has {there}"),
    }
}

async fn lease(
    node: &str,
    actor: &ActorRef<NodeMsg>,
) -> Result<(crate::node::Lease, std::sync::Arc<Sftp>)> {
    let lease = crate::cluster::ask(
        actor,
        |reply| NodeMsg::Session {
            wait: SESSION_WAIT,
            reply,
        },
        None,
    )
    .await??;
    let sftp = lease
        .session
        .sftp(SFTP_TIMEOUT)
        .await
        .map_err(|e| EngineError::Ssh {
            node: node.to_owned(),
            message: e.to_string(),
        })?;
    Ok((lease, sftp))
}

/// After a failed transfer: an SFTP session that failed below the file level is not reused.
async fn settle<T>(lease: &crate::node::Lease, sftp: &std::sync::Arc<Sftp>, res: &Result<T>) {
    if let Err(EngineError::Ssh { .. }) = res {
        lease.session.forget_sftp(sftp).await;
    }
}

async fn upload(
    node: &str,
    actor: &ActorRef<NodeMsg>,
    local: &Path,
    remote: &str,
    mode: Option<u32>,
    limit: u64,
) -> Result<(u64, String, u32)> {
    let (lease, session) = lease(node, actor).await?;
    let res = upload_on(node, actor, &session, local, remote, mode, limit).await;
    settle(&lease, &session, &res).await;
    res
}

async fn upload_on(
    node: &str,
    actor: &ActorRef<NodeMsg>,
    session: &Sftp,
    local: &Path,
    remote: &str,
    mode: Option<u32>,
    limit: u64,
) -> Result<(u64, String, u32)> {
    let (sftp, fsync, posix_rename) = (&session.raw, session.fsync, session.posix_rename);
    let existing = match sftp.stat(remote).await {
        Ok(a) if a.attrs.is_dir() => {
            return Err(EngineError::InvalidArgument(format!(
                "remote_path {remote:?} is a directory on node {node:?}; give the file's full path"
            )));
        }
        Ok(a) => a.attrs.permissions,
        Err(e) if is_status(&e, StatusCode::NoSuchFile) => None,
        Err(e) => return Err(sftp_err(node, format!("stat {remote}"), e)),
    };
    let (dir, name) = split_remote(remote);
    match sftp.stat(dir).await {
        Ok(a) if a.attrs.is_dir() => {}
        Ok(_) => {
            return Err(EngineError::FailedPrecondition(format!(
                "{dir} is not a directory on node {node:?}"
            )));
        }
        Err(e) if is_status(&e, StatusCode::NoSuchFile) => {
            return Err(EngineError::FailedPrecondition(format!(
                "directory {dir} does not exist on node {node:?}"
            )));
        }
        Err(e) => return Err(sftp_err(node, format!("stat {dir}"), e)),
    }
    if !posix_rename && existing.is_some() {
        return Err(EngineError::FailedPrecondition(format!(
            "the SFTP server of node {node:?} cannot replace files atomically (no posix-rename@openssh.com)"
        )));
    }
    let mode = mode.unwrap_or_else(|| existing.map(|m| m & 0o7777).unwrap_or(0o644));
    let tmp = format!("{}/{}", dir.trim_end_matches('/'), temp_name(name));
    let mut created = false;
    let res = async {
        let attrs = FileAttributes {
            permissions: Some(0o600),
            ..FileAttributes::empty()
        };
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUDE;
        let handle = sftp
            .open(tmp.as_str(), flags, attrs)
            .await
            .map_err(|e| sftp_err(node, format!("create {tmp}"), e))?
            .handle;
        created = true;
        let io = |e: std::io::Error| EngineError::io(format!("read {}", local.display()), e);
        let mut file = tokio::fs::File::open(local).await.map_err(io)?;
        let mut hasher = Sha256::new();
        let mut offset = 0u64;
        let mut inflight = FuturesUnordered::new();
        loop {
            let mut buf = vec![0u8; CHUNK];
            let mut n = 0;
            while n < CHUNK {
                match file.read(&mut buf[n..]).await.map_err(io)? {
                    0 => break,
                    k => n += k,
                }
            }
            if n == 0 {
                break;
            }
            buf.truncate(n);
            hasher.update(&buf);
            if offset + n as u64 > limit {
                return Err(EngineError::InvalidArgument(format!(
                    "{} grew past the transfer limit of {limit} bytes while being sent",
                    local.display()
                )));
            }
            while inflight.len() >= IN_FLIGHT {
                if let Some(r) = inflight.next().await {
                    let r: Result<_, SftpError> = r;
                    r.map_err(|e| sftp_err(node, format!("write {tmp}"), e))?;
                }
            }
            inflight.push(sftp.write(handle.as_str(), offset, buf));
            offset += n as u64;
        }
        while let Some(r) = inflight.next().await {
            r.map_err(|e| sftp_err(node, format!("write {tmp}"), e))?;
        }
        if fsync {
            sftp.fsync(handle.as_str())
                .await
                .map_err(|e| sftp_err(node, format!("fsync {tmp}"), e))?;
        }
        let perms = FileAttributes {
            permissions: Some(mode),
            ..FileAttributes::empty()
        };
        sftp.fsetstat(handle.as_str(), perms)
            .await
            .map_err(|e| sftp_err(node, format!("chmod {tmp}"), e))?;
        sftp.close(handle.as_str())
            .await
            .map_err(|e| sftp_err(node, format!("close {tmp}"), e))?;
        let here = hex::encode(hasher.finalize());
        let there = node_sha256(actor, node, &tmp, offset).await?;
        if here != there {
            return Err(mismatch(node, remote, &here, &there));
        }
        if posix_rename {
            let data = russh_sftp::extensions::HardlinkExtension {
                // posix-rename@openssh.com has the same body as hardlink: two paths.
                oldpath: tmp.clone(),
                newpath: remote.to_owned(),
            };
            let data: Vec<u8> = data
                .try_into()
                .map_err(|e| EngineError::Internal(format!("encode a rename request: {e}")))?;
            match sftp.extended("posix-rename@openssh.com", data).await {
                Ok(Packet::Status(s)) if s.status_code == StatusCode::Ok => {}
                Ok(Packet::Status(s)) => {
                    return Err(sftp_err(
                        node,
                        format!("rename {tmp}"),
                        SftpError::Status(s),
                    ));
                }
                Ok(_) => {
                    return Err(sftp_err(
                        node,
                        format!("rename {tmp}"),
                        SftpError::UnexpectedPacket,
                    ));
                }
                Err(e) => return Err(sftp_err(node, format!("rename {tmp}"), e)),
            }
        } else {
            sftp.rename(tmp.as_str(), remote)
                .await
                .map_err(|e| sftp_err(node, format!("rename {tmp}"), e))?;
        }
        Ok((offset, here, mode))
    }
    .await;
    if res.is_err() && created {
        let _ = sftp.remove(tmp.as_str()).await;
    }
    res
}

async fn download(
    node: &str,
    actor: &ActorRef<NodeMsg>,
    remote: &str,
    local: &Path,
    limit: u64,
) -> Result<(u64, String, u32)> {
    let (lease, session) = lease(node, actor).await?;
    let res = download_on(node, actor, &session.raw, remote, local, limit).await;
    settle(&lease, &session, &res).await;
    res
}

async fn download_on(
    node: &str,
    actor: &ActorRef<NodeMsg>,
    sftp: &RawSftpSession,
    remote: &str,
    local: &Path,
    limit: u64,
) -> Result<(u64, String, u32)> {
    let attrs = match sftp.stat(remote).await {
        Ok(a) => a.attrs,
        Err(e) if is_status(&e, StatusCode::NoSuchFile) => {
            return Err(EngineError::NotFound {
                kind: "remote file",
                name: format!("{remote} on node {node}"),
            });
        }
        Err(e) => return Err(sftp_err(node, format!("stat {remote}"), e)),
    };
    if attrs.is_dir() {
        return Err(EngineError::InvalidArgument(format!(
            "remote_path {remote:?} is a directory on node {node:?}"
        )));
    }
    if !attrs.is_regular() {
        return Err(EngineError::InvalidArgument(format!(
            "remote_path {remote:?} is not a regular file on node {node:?}"
        )));
    }
    let size = attrs.len();
    if size > limit {
        return Err(EngineError::InvalidArgument(format!(
            "remote_path {remote:?} is {size} bytes, over the transfer limit of {limit} bytes (transfer_max_bytes)"
        )));
    }
    let mode = attrs.permissions.map(|m| m & 0o7777).unwrap_or(0o644);
    let parent = local.parent().unwrap_or(Path::new("/")).to_owned();
    let name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(temp_name(&name));
    let changed = || {
        EngineError::Conflict(format!(
            "{remote} on node {node:?} changed while being read"
        ))
    };
    let io =
        |what: &str, e: std::io::Error| EngineError::io(format!("{what} {}", tmp.display()), e);
    let mut created = false;
    let res = async {
        let handle = sftp
            .open(remote, OpenFlags::READ, FileAttributes::empty())
            .await
            .map_err(|e| sftp_err(node, format!("open {remote}"), e))?
            .handle;
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create_new(true).mode(0o600);
            tokio::fs::OpenOptions::from(o)
                .open(&tmp)
                .await
                .map_err(|e| io("create", e))?
        };
        created = true;
        let mut hasher = Sha256::new();
        // Reads for every chunk of the size the node reported, then one that must hit EOF.
        let mut next = 0u64;
        let mut window = FuturesOrdered::new();
        let mut eof_issued = false;
        let mut written = 0u64;
        loop {
            while window.len() < IN_FLIGHT && !eof_issued {
                eof_issued = next >= size;
                let len = (size - next).min(CHUNK as u64) as u32;
                let (offset, h, sftp) = (next, handle.clone(), &sftp);
                window.push_back(async move {
                    (offset, len.max(1), sftp.read(h, offset, len.max(1)).await)
                });
                next += len as u64;
            }
            let Some((offset, len, r)) = window.next().await else {
                break;
            };
            let data = match r {
                Ok(d) => d.data,
                Err(e) if is_status(&e, StatusCode::Eof) => Vec::new(),
                Err(e) => return Err(sftp_err(node, format!("read {remote}"), e)),
            };
            if offset >= size {
                // The read past the end.
                if !data.is_empty() {
                    return Err(changed());
                }
                continue;
            }
            if data.len() > len as usize || (data.len() < len as usize && data.is_empty()) {
                return Err(changed());
            }
            let mut chunk = data;
            // A short read: fetch the rest of this chunk before going on.
            while chunk.len() < len as usize {
                let at = offset + chunk.len() as u64;
                let want = len - chunk.len() as u32;
                match sftp.read(handle.as_str(), at, want).await {
                    Ok(d) if !d.data.is_empty() => chunk.extend_from_slice(&d.data),
                    Ok(_) => return Err(changed()),
                    Err(e) if is_status(&e, StatusCode::Eof) => return Err(changed()),
                    Err(e) => return Err(sftp_err(node, format!("read {remote}"), e)),
                }
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| io("write", e))?;
            written += chunk.len() as u64;
        }
        if written != size {
            return Err(changed());
        }
        let _ = sftp.close(handle.as_str()).await;
        file.sync_all().await.map_err(|e| io("fsync", e))?;
        drop(file);
        let here = hex::encode(hasher.finalize());
        let there = node_sha256(actor, node, remote, size).await?;
        if here != there {
            return Err(mismatch(node, remote, &here, &there));
        }
        {
            use std::os::unix::fs::PermissionsExt;
            tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
                .await
                .map_err(|e| io("chmod", e))?;
        }
        tokio::fs::rename(&tmp, local)
            .await
            .map_err(|e| io("rename", e))?;
        // Make the rename itself durable.
        let dir = parent.clone();
        let _ = tokio::task::spawn_blocking(move || {
            std::fs::File::open(dir).and_then(|d| d.sync_all())
        })
        .await;
        Ok((size, here, mode))
    }
    .await;
    if res.is_err() && created {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_must_be_absolute_normalised_files() {
        for ok in ["/a", "/root/x.bin", "/opt/vmcluster/artifacts/a-b_c.1"] {
            assert!(check_remote_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "a",
            "./a",
            "/",
            "/tmp/",
            "/tmp//a",
            "/tmp/../etc/x",
            "/./a",
            "/a\0b",
            "",
        ] {
            let e = check_remote_path(bad).unwrap_err();
            assert_eq!(
                e.code(),
                vmcluster_engine::ErrorCode::InvalidArgument,
                "{bad}"
            );
        }
        assert_eq!(split_remote("/a"), ("/", "a"));
        assert_eq!(split_remote("/tmp/x/y"), ("/tmp/x", "y"));
    }

    #[test]
    fn local_checks_happen_before_anything() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"12345").unwrap();
        let up = |local: PathBuf, mode| Transfer {
            direction: Direction::Upload { mode },
            local,
            remote: "/tmp/f".into(),
        };
        assert!(up(file.clone(), Some(0o755)).check(5).is_ok());
        let code = |t: Transfer, limit| t.check(limit).unwrap_err().code();
        use vmcluster_engine::ErrorCode::InvalidArgument;
        assert_eq!(
            code(up(file.clone(), None), 4),
            InvalidArgument,
            "over the limit"
        );
        assert_eq!(code(up(dir.path().join("nope"), None), 5), InvalidArgument);
        assert_eq!(code(up(dir.path().to_owned(), None), 5), InvalidArgument);
        assert_eq!(code(up("rel/f".into(), None), 5), InvalidArgument);
        assert_eq!(code(up(file.clone(), Some(0o17777)), 5), InvalidArgument);
        let down = |local: PathBuf| Transfer {
            direction: Direction::Download,
            local,
            remote: "/tmp/f".into(),
        };
        assert!(down(dir.path().join("new")).check(5).is_ok());
        assert_eq!(code(down(dir.path().to_owned()), 5), InvalidArgument);
        assert_eq!(code(down(dir.path().join("no/such")), 5), InvalidArgument);
    }
}
