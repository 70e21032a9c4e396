//! The control socket: a unix socket in the state directory through which a running server
//! answers local clients (`vmcluster events` and every other CLI verb), while its stdin/stdout
//! belong to MCP.
//!
//! # Protocol
//!
//! Line-delimited JSON. The client writes one [`ControlRequest`] per line; the server answers
//! each with [`ControlResponse`] lines:
//!
//! * `{"request":"hello"}` → one `{"type":"hello","version":…,"pid":…,"last_seq":…}`;
//! * `{"request":"events","since":0,"cluster":null,"follow":false}` → one
//!   `{"type":"event","event":{…}}` per event after `since`, then `{"type":"end","last_seq":N}`;
//!   with `"follow":true`, the backlog, one `{"type":"caught_up","last_seq":N}`, then live
//!   events until the client hangs up or the server stops (the connection just closes);
//! * `{"request":"cli","argv":["vmcluster","status","demo"],"cwd":"/home/u"}` → one
//!   `{"type":"cli","exit_code":0,"output":{"stdout":…,"stderr":…}}`: a CLI verb run by the
//!   server, which owns the journal (the CLI sends every verb here when a server runs);
//! * anything else → `{"type":"error","code":"INVALID_ARGUMENT","message":…}`.
//!
//! New requests are new variants of [`ControlRequest`]; a client that sends one to an older
//! server gets an `error` line back.
//!
//! # The socket file
//!
//! `<state_dir>/control.sock`, mode 0600 (only the server's user, and root, may connect). It is
//! bound inside a fresh private directory, given its mode, then hard-linked into place, so it
//! is never reachable with looser permissions and never replaces a file that appeared
//! meanwhile. A socket left by a server that died is removed only when nothing answers on it;
//! a live one means another server runs, and this one refuses to start its socket. The server
//! removes its socket on a clean shutdown (only if it is still its own).

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use vmcluster_actors::Engine;
use vmcluster_actors::events::FollowItem;
use vmcluster_journal::{Event, EventFilter};

/// File name of the socket in the state directory.
pub const SOCKET_NAME: &str = "control.sock";

/// Longest request line the server reads.
const MAX_REQUEST: usize = 64 * 1024;

/// Where the control socket of the server using `state_dir` lives.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

/// A request from a local client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlRequest {
    /// Who is there.
    Hello,
    /// The event stream.
    Events {
        /// Only events with a greater sequence number.
        #[serde(default)]
        since: u64,
        /// Only this cluster's events.
        #[serde(default)]
        cluster: Option<String>,
        /// Keep the connection open and send live events after the backlog.
        #[serde(default)]
        follow: bool,
    },
    /// Run one CLI verb in the server (the journal and libvirt connection are the server's).
    Cli {
        /// The command line, program name first (as the CLI process got it).
        argv: Vec<String>,
        /// The CLI's working directory (relative local paths are relative to it).
        #[serde(default)]
        cwd: Option<String>,
    },
}

/// One line of an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlResponse {
    /// Answer to [`ControlRequest::Hello`].
    Hello {
        /// Server version.
        version: String,
        /// Server process id.
        pid: u32,
        /// Newest journal sequence number.
        last_seq: u64,
    },
    /// One event.
    Event {
        /// The event.
        event: Event,
    },
    /// Following: the backlog is delivered, live events come next.
    CaughtUp {
        /// The cursor at that point.
        last_seq: u64,
    },
    /// Not following: every event asked for has been sent.
    End {
        /// Pass as `since` to read on.
        last_seq: u64,
    },
    /// Answer to [`ControlRequest::Cli`]: what the verb printed, and its exit status.
    Cli {
        /// The process exit status the verb asks for.
        exit_code: i32,
        /// Its text.
        output: crate::cli::Output,
    },
    /// The request failed.
    Error {
        /// Stable error code.
        code: String,
        /// What went wrong.
        message: String,
    },
}

/// The listening control socket of a running server.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    /// Device and inode of the socket file we made, so shutdown never removes another's.
    identity: (u64, u64),
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ControlServer {
    /// Binds the socket at `path` and starts answering on it.
    pub fn start(engine: Engine, path: &Path) -> io::Result<ControlServer> {
        let std_listener = bind(path)?;
        let m = std::fs::symlink_metadata(path)?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(std_listener)?;
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            conns.spawn(serve_conn(engine.clone(), stream));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "control socket accept failed");
                        }
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
            conns.shutdown().await;
        });
        tracing::info!(path = %path.display(), "control socket listening");
        Ok(ControlServer {
            path: path.to_path_buf(),
            identity: (m.dev(), m.ino()),
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops answering, closes every connection and removes the socket file.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.remove_file();
    }

    fn remove_file(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.identity => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the control socket");
                }
            }
            _ => {}
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            self.remove_file();
        }
    }
}

/// Binds a fresh owner-only socket at `path` (see the module docs).
fn bind(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another server answers on {}", path.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "removing a stale control socket");
                std::fs::remove_file(path)?;
            }
            Err(e) => return Err(e),
        },
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let parent = path.parent().unwrap_or(Path::new("."));
    // A private (0700) directory: nobody else can reach the socket before its mode is set.
    let private = tempfile::Builder::new()
        .prefix(".control-")
        .tempdir_in(parent)?;
    let staged = private.path().join("s");
    let listener = std::os::unix::net::UnixListener::bind(&staged)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
    // A hard link fails if something took the name meanwhile (rename would replace it).
    std::fs::hard_link(&staged, path)?;
    Ok(listener)
}

/// Connects to the control socket at `path`; `Ok(None)` when no server answers there.
pub async fn connect(path: &Path) -> io::Result<Option<UnixStream>> {
    match UnixStream::connect(path).await {
        Ok(s) => Ok(Some(s)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

async fn write_line(w: &mut OwnedWriteHalf, r: &ControlResponse) -> io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

fn error(code: &str, message: impl Into<String>) -> ControlResponse {
    ControlResponse::Error {
        code: code.to_owned(),
        message: message.into(),
    }
}

/// Answers one connection until the client hangs up.
async fn serve_conn(engine: Engine, stream: UnixStream) {
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let mut line = String::new();
    loop {
        line.clear();
        let n = match (&mut reader)
            .take(MAX_REQUEST as u64)
            .read_line(&mut line)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "control connection read failed");
                return;
            }
        };
        if n == 0 {
            return;
        }
        if !line.ends_with('\n') && n >= MAX_REQUEST {
            let _ = write_line(&mut w, &error("INVALID_ARGUMENT", "request line too long")).await;
            return;
        }
        let req: ControlRequest = match serde_json::from_str(line.trim_end()) {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("invalid request: {e}");
                if write_line(&mut w, &error("INVALID_ARGUMENT", msg))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
        };
        let res = match req {
            ControlRequest::Hello => {
                let hello = ControlResponse::Hello {
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    pid: std::process::id(),
                    last_seq: engine.events().last_seq(),
                };
                write_line(&mut w, &hello).await
            }
            ControlRequest::Events {
                since,
                cluster,
                follow,
            } => {
                let filter = EventFilter { cluster };
                if follow {
                    follow_events(&engine, since, filter, &mut reader, &mut w).await;
                    return;
                }
                read_events(&engine, since, filter, &mut w).await
            }
            ControlRequest::Cli { argv, cwd } => {
                let answer = match crate::cli::parse_from(&argv) {
                    Ok(crate::cli::Cli {
                        command: crate::cli::Command::Serve | crate::cli::Command::Events { .. },
                        ..
                    }) => error(
                        "INVALID_ARGUMENT",
                        "`serve` and `events` run in their own process",
                    ),
                    Ok(mut cli) => {
                        if let Some(cwd) = &cwd {
                            crate::cli::absolutize(&mut cli.command, std::path::Path::new(cwd));
                        }
                        let mut output = crate::cli::Output::default();
                        let exit_code =
                            crate::cli::run(&engine, cli.command, cli.json, &mut output).await;
                        ControlResponse::Cli { exit_code, output }
                    }
                    Err(usage) => error("INVALID_ARGUMENT", usage),
                };
                write_line(&mut w, &answer).await
            }
        };
        if res.is_err() {
            return;
        }
    }
}

async fn read_events(
    engine: &Engine,
    since: u64,
    filter: EventFilter,
    w: &mut OwnedWriteHalf,
) -> io::Result<()> {
    let mut cursor = since;
    loop {
        let page = match engine
            .events()
            .read_async(cursor, 1024, filter.clone())
            .await
        {
            Ok(p) => p,
            Err(e) => return write_line(w, &error("JOURNAL", e.to_string())).await,
        };
        for event in page.events {
            write_line(w, &ControlResponse::Event { event }).await?;
        }
        cursor = page.next_since;
        if !page.more {
            return write_line(w, &ControlResponse::End { last_seq: cursor }).await;
        }
    }
}

/// Streams events until the client hangs up (EOF on its side) or the feed ends.
async fn follow_events(
    engine: &Engine,
    since: u64,
    filter: EventFilter,
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    w: &mut OwnedWriteHalf,
) {
    let mut rx = engine.events().follow(since, filter);
    let mut sink = Vec::new();
    loop {
        tokio::select! {
            item = rx.recv() => {
                let line = match item {
                    Some(Ok(FollowItem::Event(event))) => ControlResponse::Event { event },
                    Some(Ok(FollowItem::CaughtUp { last_seq })) => ControlResponse::CaughtUp { last_seq },
                    Some(Err(e)) => error("JOURNAL", e.to_string()),
                    None => return,
                };
                if write_line(w, &line).await.is_err() {
                    return;
                }
            }
            // Anything the client sends while following is ignored; EOF means it left.
            n = reader.read_until(b'\n', &mut sink) => {
                match n {
                    Ok(0) | Err(_) => return,
                    Ok(_) => sink.clear(),
                }
            }
        }
    }
}
