//! SSH to the nodes (russh): connect, authenticate with the cluster key, run commands.
//!
//! A session is one TCP connection that carries many channels, so a NodeActor keeps one and
//! reuses it. `nodelay` is on (russh's default costs ~40 ms per round trip on auth alone).
//! A session knows when it is gone ([`SshSession::gone_signal`]): the server hung up, the
//! connection failed, or it stopped answering; its owner then makes a new one. SFTP runs on a channel of
//! the same session ([`SshSession::sftp`]).
//!
//! **Network rule:** before any packet leaves for a guest, [`guard_route`] checks that the
//! cluster's bridge exists on this host. A guest address with no bridge behind it would route
//! out of the machine; we refuse instead.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::ChannelMsg;
use russh::client;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use tokio::sync::watch;

/// Why an SSH operation failed (the node name is added by the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshError {
    /// The bridge the node lives on does not exist: we refuse to send packets anywhere else.
    #[error("bridge {0:?} does not exist on this host; refusing to connect")]
    NoBridge(String),
    /// TCP connect failed or timed out.
    #[error("connect to {addr}: {message}")]
    Connect {
        /// Address.
        addr: SocketAddr,
        /// Why.
        message: String,
    },
    /// The server refused our key.
    #[error("authentication as {user:?} was refused")]
    AuthRefused {
        /// User.
        user: String,
    },
    /// The protocol failed after connecting.
    #[error("{0}")]
    Protocol(String),
    /// The node presented a host key other than the one pinned for it.
    #[error("host key changed: pinned {pinned}, presented {presented}; refusing to connect")]
    HostKeyChanged {
        /// The pinned key.
        pinned: String,
        /// The key the node presented.
        presented: String,
    },
    /// The channel closed, or the server refused the request, before the command started.
    #[error("the server closed the channel before the command started")]
    NotStarted,
    /// A command outlived its timeout.
    #[error("command timed out after {0:?}")]
    Timeout(Duration),
}

/// Checks that `bridge` exists here, so a connection to a guest stays on this host.
pub fn guard_route(bridge: &str) -> Result<(), SshError> {
    if std::path::Path::new("/sys/class/net").join(bridge).exists() {
        Ok(())
    } else {
        Err(SshError::NoBridge(bridge.to_owned()))
    }
}

/// Where and how to reach one node.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// Address and port.
    pub addr: SocketAddr,
    /// Login user.
    pub user: String,
    /// Private key.
    pub key: Arc<PrivateKey>,
    /// Bridge the node's NIC is on (checked before connecting).
    pub bridge: String,
    /// Per-attempt connect timeout.
    pub connect_timeout: Duration,
    /// The host key pinned for this node (`algorithm base64`), once one was seen.
    pub pinned: Option<String>,
}

/// What a command produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status, when the command exited.
    pub exit_code: Option<u32>,
    /// Signal name, when it was killed by one.
    pub signal: Option<String>,
    /// Standard output (at most the `keep` bytes given to [`SshSession::run`]).
    pub stdout: Vec<u8>,
    /// Standard error (at most `keep` bytes).
    pub stderr: Vec<u8>,
    /// Full size of standard output, kept or not.
    pub stdout_total: u64,
    /// Full size of standard error, kept or not.
    pub stderr_total: u64,
}

impl ExecOutput {
    /// Output with everything kept (for tests and small commands).
    pub fn new(exit_code: Option<u32>, stdout: &[u8], stderr: &[u8]) -> ExecOutput {
        ExecOutput {
            exit_code,
            signal: None,
            stdout: stdout.to_vec(),
            stderr: stderr.to_vec(),
            stdout_total: stdout.len() as u64,
            stderr_total: stderr.len() as u64,
        }
    }
}

/// Appends `data` to `buf` while it holds less than `keep` bytes; counts everything.
fn keep_some(buf: &mut Vec<u8>, total: &mut u64, data: &[u8], keep: usize) {
    *total += data.len() as u64;
    let room = keep.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

#[derive(Debug)]
struct Client {
    seen_key: Arc<Mutex<Option<PublicKey>>>,
    pinned: Option<String>,
    /// Set to true when the connection ends.
    gone: Arc<watch::Sender<bool>>,
}

/// A host key as `algorithm base64`, without its comment: the form we pin and compare.
pub fn key_id(key: &PublicKey) -> Option<String> {
    let text = key.to_openssh().ok()?;
    let mut parts = text.split_whitespace();
    Some(format!("{} {}", parts.next()?, parts.next()?))
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // Trust on first use: the first key seen is pinned by the NodeActor; after that only
        // that key is accepted.
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Ok(false);
        };
        *self.seen_key.lock().unwrap_or_else(|p| p.into_inner()) = Some(key.clone());
        Ok(match &self.pinned {
            Some(p) => key_id(key).as_deref() == Some(p.as_str()),
            None => true,
        })
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        tracing::debug!(?reason, "SSH connection ended");
        self.gone.send_replace(true);
        Ok(())
    }
}

/// One authenticated SSH connection to a node.
pub struct SshSession {
    handle: client::Handle<Client>,
    host_key: Option<PublicKey>,
    /// True once the connection ended, or once the server stopped answering (a channel could
    /// not even be opened in time: the TCP connection may look alive for a while, but the owner
    /// must reconnect).
    gone: Arc<watch::Sender<bool>>,
    /// Whether the login shell is `/bin/sh` itself (see [`SshSession::detect_shell`]).
    login_shell_is_sh: AtomicBool,
    /// The connection's SFTP session, opened on first use and kept (see [`SshSession::sftp`]).
    sftp: tokio::sync::Mutex<Option<Arc<Sftp>>>,
}

/// An SFTP session on one channel of a connection, with what its server supports.
pub struct Sftp {
    /// The protocol client.
    pub raw: russh_sftp::client::RawSftpSession,
    /// `fsync@openssh.com`.
    pub fsync: bool,
    /// `posix-rename@openssh.com`.
    pub posix_rename: bool,
}

impl std::fmt::Debug for Sftp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sftp")
            .field("fsync", &self.fsync)
            .field("posix_rename", &self.posix_rename)
            .finish()
    }
}

impl std::fmt::Debug for SshSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshSession")
            .field("closed", &self.handle.is_closed())
            .finish()
    }
}

/// Opens a TCP connection to `target` and closes it: the "port open" readiness check.
pub async fn tcp_probe(target: &SshTarget) -> Result<(), SshError> {
    guard_route(&target.bridge)?;
    let addr = target.addr;
    match tokio::time::timeout(target.connect_timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(SshError::Connect {
            addr,
            message: e.to_string(),
        }),
        Err(_) => Err(SshError::Connect {
            addr,
            message: "timed out".into(),
        }),
    }
}

impl SshSession {
    /// Connects and authenticates.
    pub async fn connect(target: &SshTarget) -> Result<SshSession, SshError> {
        guard_route(&target.bridge)?;
        let config = Arc::new(client::Config {
            nodelay: true,
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 3,
            ..Default::default()
        });
        let seen_key = Arc::new(Mutex::new(None));
        let gone = Arc::new(watch::Sender::new(false));
        let addr = target.addr;
        let connect = client::connect(
            config,
            addr,
            Client {
                seen_key: seen_key.clone(),
                pinned: target.pinned.clone(),
                gone: gone.clone(),
            },
        );
        let mut handle = match tokio::time::timeout(target.connect_timeout, connect).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                let seen = seen_key
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .and_then(key_id);
                if let (Some(pinned), Some(presented)) = (&target.pinned, seen)
                    && *pinned != presented
                {
                    return Err(SshError::HostKeyChanged {
                        pinned: pinned.clone(),
                        presented,
                    });
                }
                return Err(SshError::Connect {
                    addr,
                    message: e.to_string(),
                });
            }
            Err(_) => {
                return Err(SshError::Connect {
                    addr,
                    message: "timed out".into(),
                });
            }
        };
        // The cluster key is ed25519, which has no RSA hash to negotiate.
        let auth = handle
            .authenticate_publickey(
                &target.user,
                PrivateKeyWithHashAlg::new(target.key.clone(), None),
            )
            .await
            .map_err(|e| SshError::Protocol(format!("authenticate: {e}")))?;
        if !auth.success() {
            return Err(SshError::AuthRefused {
                user: target.user.clone(),
            });
        }
        let host_key = seen_key.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(SshSession {
            handle,
            host_key,
            gone,
            login_shell_is_sh: AtomicBool::new(false),
            sftp: tokio::sync::Mutex::new(None),
        })
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed() || *self.gone.borrow()
    }

    /// A receiver that turns true when the connection is gone (and errs once the session and
    /// its connection task are both dropped).
    pub fn gone_signal(&self) -> watch::Receiver<bool> {
        self.gone.subscribe()
    }

    /// Finds out whether the login shell is `/bin/sh` itself, so commands can run in it
    /// directly instead of in a second `/bin/sh` (one process start less per command, which a
    /// TCG guest feels). Also proves that a command runs. Call once, right after connecting.
    pub async fn detect_shell(&self, timeout: Duration) -> Result<bool, SshError> {
        // `-ef` compares inodes after following links: /proc/$$/exe is the running shell.
        let out = self
            .exec("[ /proc/$$/exe -ef /bin/sh ] && echo vmc-sh; true", timeout)
            .await?;
        if out.exit_code != Some(0) {
            return Err(SshError::Protocol(format!(
                "a test command exited with {:?}: {}",
                out.exit_code,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let is_sh = String::from_utf8_lossy(&out.stdout).trim() == "vmc-sh";
        self.login_shell_is_sh.store(is_sh, Ordering::Relaxed);
        Ok(is_sh)
    }

    /// Whether [`SshSession::detect_shell`] found the login shell to be `/bin/sh`.
    pub fn login_shell_is_sh(&self) -> bool {
        self.login_shell_is_sh.load(Ordering::Relaxed)
    }

    /// The connection's SFTP session (the node's `sftp` subsystem), opened on first use.
    ///
    /// It stays open for the connection's life and is shared by transfers: closing an SFTP
    /// channel means closing it while its `sftp-server` still runs, and dropbear then sometimes
    /// fails or closes the *next* channel opened on the connection.
    pub async fn sftp(&self, timeout: Duration) -> Result<Arc<Sftp>, SshError> {
        let mut cached = self.sftp.lock().await;
        if let Some(s) = cached.as_ref() {
            return Ok(s.clone());
        }
        let (raw, version) = self.open_sftp(timeout).await?;
        let has = |ext: &str| version.extensions.contains_key(ext);
        let s = Arc::new(Sftp {
            fsync: has("fsync@openssh.com"),
            posix_rename: has("posix-rename@openssh.com"),
            raw,
        });
        *cached = Some(s.clone());
        Ok(s)
    }

    /// Forgets `s` (after it failed at the protocol level); the next transfer opens another.
    pub async fn forget_sftp(&self, s: &Arc<Sftp>) {
        let mut cached = self.sftp.lock().await;
        if cached.as_ref().is_some_and(|c| Arc::ptr_eq(c, s)) {
            *cached = None;
        }
    }

    async fn open_sftp(
        &self,
        timeout: Duration,
    ) -> Result<
        (
            russh_sftp::client::RawSftpSession,
            russh_sftp::protocol::Version,
        ),
        SshError,
    > {
        let setup = async {
            // dropbear sometimes closes a channel opened right after another one closed, before
            // answering its first request (seen with exec too): the subsystem never started,
            // so asking again is safe.
            let mut attempt = 0;
            let ch = loop {
                let mut ch = self
                    .handle
                    .channel_open_session()
                    .await
                    .map_err(|e| SshError::Protocol(format!("open channel: {e}")))?;
                ch.request_subsystem(true, "sftp")
                    .await
                    .map_err(|e| SshError::Protocol(format!("sftp subsystem: {e}")))?;
                // Some(true): started; Some(false): refused; None: closed without an answer.
                let answer = loop {
                    match ch.wait().await {
                        Some(ChannelMsg::Success) => break Some(true),
                        Some(ChannelMsg::Failure) => break Some(false),
                        None => break None,
                        Some(_) => {}
                    }
                };
                match answer {
                    Some(true) => break ch,
                    Some(false) if attempt + 1 >= 3 => {
                        return Err(SshError::Protocol(
                            "the node refused the sftp subsystem (no SFTP server installed?)"
                                .into(),
                        ));
                    }
                    Some(false) => tracing::debug!(attempt, "sftp subsystem refused; retrying"),
                    None => tracing::debug!(attempt, "sftp channel closed before it started"),
                }
                attempt += 1;
                if attempt >= 3 || self.is_closed() {
                    return Err(SshError::Protocol(
                        "the node closed the sftp channel before it started".into(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            };
            let config = russh_sftp::client::Config {
                request_timeout_secs: timeout.as_secs().max(1),
                ..Default::default()
            };
            let sftp =
                russh_sftp::client::RawSftpSession::new_with_config(ch.into_stream(), config);
            let version = sftp
                .init()
                .await
                .map_err(|e| SshError::Protocol(format!("sftp init: {e}")))?;
            Ok((sftp, version))
        };
        match tokio::time::timeout(timeout, setup).await {
            Ok(r) => r,
            Err(_) => Err(SshError::Protocol(format!(
                "the node's SFTP server did not answer within {timeout:?}"
            ))),
        }
    }

    /// The server's host key (`algorithm base64`).
    pub fn host_key(&self) -> Option<String> {
        self.host_key.as_ref().and_then(key_id)
    }

    /// Runs `command`, feeding it `stdin` (then EOF), and collects its output until it exits or
    /// `timeout` passes, keeping at most `keep` bytes of each stream (the rest is counted). On
    /// timeout the output gathered so far comes back with `timed_out` set; the caller decides
    /// how to stop the remote command: `kill` is run on another channel, and the command's own
    /// channel is only let go once the server ended it (dropbear mishandles a channel closed
    /// under a live child; see [`SshSession::sftp`]). [`SshError::NotStarted`] means the command
    /// cannot have run (the channel never opened, or the server refused it).
    pub async fn run(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
        keep: usize,
        kill: Option<&str>,
    ) -> Result<(ExecOutput, bool), SshError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let setup = async {
            // Until the exec request is out, the command cannot have started.
            let ch = self.handle.channel_open_session().await.map_err(|e| {
                tracing::debug!(error = %e, "cannot open a channel");
                SshError::NotStarted
            })?;
            ch.exec(true, command).await.map_err(|e| {
                tracing::debug!(error = %e, "cannot send the exec request");
                SshError::NotStarted
            })?;
            if let Some(input) = stdin {
                ch.data(input)
                    .await
                    .map_err(|e| SshError::Protocol(format!("stdin: {e}")))?;
            }
            ch.eof()
                .await
                .map_err(|e| SshError::Protocol(format!("stdin eof: {e}")))?;
            Ok::<_, SshError>(ch)
        };
        let mut ch = match tokio::time::timeout_at(deadline, setup).await {
            Ok(r) => r?,
            Err(_) => {
                self.gone.send_replace(true);
                return Err(SshError::Protocol(format!(
                    "the node's SSH server did not answer within {timeout:?}; the connection is dropped"
                )));
            }
        };
        let mut out = ExecOutput::default();
        // Whether the server confirmed the command started (or produced anything): a channel
        // that dies before that never ran the command, so running it again is safe.
        let mut started = false;
        loop {
            match tokio::time::timeout_at(deadline, ch.wait()).await {
                Err(_) => {
                    if let Some(kill) = kill {
                        // Best effort within a short budget: the node may be too sick to answer.
                        let killed = self.run(kill, None, Duration::from_secs(10), 4096, None);
                        let _ = Box::pin(killed).await;
                        let drain = async { while ch.wait().await.is_some() {} };
                        let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
                    }
                    return Ok((out, true));
                }
                Ok(None) if !started => return Err(SshError::NotStarted),
                // A server always reports how the command ended; a channel that closes without
                // saying means the connection went away under it.
                Ok(None) if out.exit_code.is_none() && out.signal.is_none() => {
                    return Err(SshError::Protocol(
                        "the connection was lost while the command ran".into(),
                    ));
                }
                Ok(None) => return Ok((out, false)),
                Ok(Some(msg)) => match msg {
                    ChannelMsg::Success => started = true,
                    ChannelMsg::Failure if !started => return Err(SshError::NotStarted),
                    ChannelMsg::Data { data } => {
                        started = true;
                        keep_some(&mut out.stdout, &mut out.stdout_total, &data, keep)
                    }
                    ChannelMsg::ExtendedData { data, ext: 1 } => {
                        started = true;
                        keep_some(&mut out.stderr, &mut out.stderr_total, &data, keep)
                    }
                    ChannelMsg::ExitStatus { exit_status } => {
                        started = true;
                        out.exit_code = Some(exit_status)
                    }
                    ChannelMsg::ExitSignal { signal_name, .. } => {
                        started = true;
                        out.signal = Some(format!("{signal_name:?}"))
                    }
                    _ => {}
                },
            }
        }
    }

    /// Runs `command` and collects its output; fails with [`SshError::Timeout`] after `timeout`.
    pub async fn exec(&self, command: &str, timeout: Duration) -> Result<ExecOutput, SshError> {
        match self.run(command, None, timeout, 1 << 20, None).await? {
            (_, true) => Err(SshError::Timeout(timeout)),
            (out, false) => Ok(out),
        }
    }

    /// Closes the connection politely.
    pub async fn close(&self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}
