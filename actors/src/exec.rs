//! Remote execution on a node: the shell wrapper that makes a command killable, output caps,
//! and the result a tool returns.
//!
//! An SSH server runs every command through the login shell (`$SHELL -c '<line>'`), and under
//! TCG every process start costs tens of milliseconds, so the wrapper starts as few as it can:
//!
//! - when the login shell is `/bin/sh` itself (checked once per session,
//!   [`SshSession::detect_shell`]), the line is `: vmc-exec-<id>; [export K='V' …;] <command>`,
//!   run by that shell: no process besides the shell, exactly `/bin/sh -c` semantics;
//! - otherwise it is `exec [env K=V …] /bin/sh -c '<command>' vmc-exec-<id>` (the shell
//!   replaces itself with `/bin/sh`; `env` only when there are variables).
//!
//! Either way the shell's command line holds the unique tag. When the command outlives its
//! timeout, a second channel finds the tagged process through `/proc` and kills it with all
//! its descendants (`/proc/<pid>/task/*/children`), so nothing is left running on the node.
//! The kill script never contains the whole tag, so it cannot match itself.
//!
//! While it runs, up to [`STORED_OUTPUT_CEILING`] bytes of each stream are kept; the result
//! carries at most the request's cap, and when that cut a stream, the full stream goes to the
//! [`OutputStore`] and the result names it by URI.

use std::collections::BTreeMap;
use std::time::Duration;

use uuid::Uuid;
use vmcluster_engine::view::ExecResult;

use crate::error::Result;
use crate::outputs::{OutputStore, STORED_OUTPUT_CEILING, Stream};
use crate::ssh::{ExecOutput, SshError, SshSession};

/// Default cap on each of stdout and stderr in a tool result.
pub const DEFAULT_OUTPUT_CAP: usize = 64 * 1024;

/// What to run.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// Shell command.
    pub command: String,
    /// Budget; the command is killed on the node when it passes.
    pub timeout: Duration,
    /// Bytes fed to the command's stdin (then EOF).
    pub stdin: Option<Vec<u8>>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Cap on each of stdout and stderr in the result.
    pub output_cap: usize,
    /// Where a truncated stream is kept in full (none: it is only cut).
    pub spill: Option<Spill>,
    /// The tool the journal records it under (default: `node_exec` for one node named,
    /// `node_exec_all` otherwise).
    pub tool: Option<&'static str>,
}

/// Where the full output of a truncated command goes.
#[derive(Debug, Clone)]
pub struct Spill {
    /// The store.
    pub store: OutputStore,
    /// The operation the command belongs to.
    pub op_id: Uuid,
}

impl ExecRequest {
    /// A plain command with default settings.
    pub fn new(command: impl Into<String>, timeout: Duration) -> ExecRequest {
        ExecRequest {
            command: command.into(),
            timeout,
            stdin: None,
            env: BTreeMap::new(),
            output_cap: DEFAULT_OUTPUT_CAP,
            spill: None,
            tool: None,
        }
    }
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Whether `k` may be an environment variable name.
pub fn valid_env_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && k.len() <= 128
}

/// The remote command line for `req`, tagged with `tag`; `login_is_sh` says whether the login
/// shell that will run it is `/bin/sh` itself.
pub fn wrap(req: &ExecRequest, tag: &str, login_is_sh: bool) -> String {
    if login_is_sh {
        let exports: String = req
            .env
            .iter()
            .map(|(k, v)| format!("export {k}={}; ", shell_quote(v)))
            .collect();
        // A newline (not `;`) before the command: a command ending in a comment or a
        // here-document still parses as it would on its own.
        return format!(": {tag}; {exports}\n{}", req.command);
    }
    // `env` costs one more process start, which a TCG guest feels: only use it when needed.
    let env: String = req
        .env
        .iter()
        .map(|(k, v)| format!("{k}={} ", shell_quote(v)))
        .collect();
    let env = if env.is_empty() {
        String::new()
    } else {
        format!("env {env}")
    };
    format!("exec {env}/bin/sh -c {} {tag}", shell_quote(&req.command))
}

/// The script that kills the process tagged `tag` and its descendants.
pub fn kill_script(tag: &str) -> String {
    // Split the tag so this script's own command line never contains it.
    let (a, b) = tag.split_at(tag.len() / 2);
    format!(
        "t={a}; t=\"$t{b}\"; kt() {{ for c in $(cat /proc/$1/task/*/children 2>/dev/null); do kt $c; done; kill -KILL $1 2>/dev/null; }}; \
         for p in /proc/[0-9]*; do if tr '\\000' ' ' < $p/cmdline 2>/dev/null | grep -q -- \"$t\"; then kt ${{p#/proc/}}; fi; done; true"
    )
}

fn capped(bytes: &[u8], cap: usize) -> (String, bool) {
    if bytes.len() <= cap {
        return (String::from_utf8_lossy(bytes).into_owned(), false);
    }
    // Cut on a character boundary of the lossy text.
    let text = String::from_utf8_lossy(&bytes[..cap]).into_owned();
    (text, true)
}

/// Each node's outcome of a multi-node command, in request order.
pub type NodeOutcomes = Vec<(String, Result<ExecResult>)>;

/// Each node's kernel-log selection of a `dmesg_collect`, in request order.
pub type NodeCollections = Vec<(String, Result<vmcluster_engine::dmesg::Collected>)>;

/// What one run of a command on a node gave.
#[derive(Debug)]
pub struct Ran {
    out: ExecOutput,
    timed_out: bool,
    elapsed: Duration,
}

/// Runs `req` over `session` within `timeout`; kills it on the node when it times out.
/// [`SshError::NotStarted`] with the session closed means the command never ran and the caller
/// may run it again on a new session.
pub async fn run(
    session: &SshSession,
    req: &ExecRequest,
    timeout: Duration,
) -> Result<Ran, SshError> {
    let tag = format!("vmc-exec-{}", uuid::Uuid::new_v4().simple());
    let started = std::time::Instant::now();
    let command = wrap(req, &tag, session.login_shell_is_sh());
    let mut attempt = 0;
    let (out, timed_out) = loop {
        match session
            .run(
                &command,
                req.stdin.as_deref(),
                timeout.saturating_sub(started.elapsed()),
                STORED_OUTPUT_CEILING.max(req.output_cap),
                Some(&kill_script(&tag)),
            )
            .await
        {
            // The server refused the channel (it is alive): retrying cannot run it twice.
            Err(SshError::NotStarted) if attempt < 3 && !session.is_closed() => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            other => break other?,
        }
    };
    Ok(Ran {
        out,
        timed_out,
        elapsed: started.elapsed(),
    })
}

/// The tool result of a run: streams cut at the request's cap; a cut stream is kept in full in
/// the request's spill store (when it has one) and named by URI.
pub async fn finish(node: &str, req: &ExecRequest, ran: Ran) -> ExecResult {
    let mut r = result(&ran.out, ran.timed_out, ran.elapsed, req.output_cap);
    if let Some(spill) = &req.spill {
        let cut = [
            (Stream::Stdout, r.stdout_bytes > req.output_cap as u64),
            (Stream::Stderr, r.stderr_bytes > req.output_cap as u64),
        ];
        for (stream, was_cut) in cut {
            if !was_cut {
                continue;
            }
            let (store, op_id, owned) = (spill.store.clone(), spill.op_id, node.to_owned());
            let bytes = match stream {
                Stream::Stdout => ran.out.stdout.clone(),
                Stream::Stderr => ran.out.stderr.clone(),
            };
            let saved =
                tokio::task::spawn_blocking(move || store.save(op_id, &owned, stream, &bytes))
                    .await;
            match saved {
                Ok(Ok(uri)) => match stream {
                    Stream::Stdout => r.stdout_uri = Some(uri),
                    Stream::Stderr => r.stderr_uri = Some(uri),
                },
                Ok(Err(e)) => tracing::warn!(%node, error = %e, "cannot keep a full output"),
                Err(e) => tracing::warn!(%node, error = %e, "cannot keep a full output"),
            }
        }
    }
    r
}

fn result(out: &ExecOutput, timed_out: bool, elapsed: Duration, cap: usize) -> ExecResult {
    let (stdout, stdout_truncated) = capped(&out.stdout, cap);
    let (stderr, stderr_truncated) = capped(&out.stderr, cap);
    ExecResult {
        exit_code: out.exit_code.map(|c| c as i64),
        signal: out.signal.clone(),
        stdout,
        stderr,
        duration_ms: elapsed.as_millis() as u64,
        timed_out,
        truncated: stdout_truncated
            || stderr_truncated
            || out.stdout_total > cap as u64
            || out.stderr_total > cap as u64,
        stdout_bytes: out.stdout_total,
        stderr_bytes: out.stderr_total,
        stdout_uri: None,
        stderr_uri: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        let mut req = ExecRequest::new("echo 'a b'", Duration::from_secs(1));
        req.env.insert("X".into(), "1 2".into());
        assert_eq!(
            wrap(&req, "vmc-exec-t", false),
            r"exec env X='1 2' /bin/sh -c 'echo '\''a b'\''' vmc-exec-t"
        );
        assert_eq!(
            wrap(&req, "vmc-exec-t", true),
            ": vmc-exec-t; export X='1 2'; \necho 'a b'"
        );
        req.env.clear();
        assert_eq!(
            wrap(&req, "vmc-exec-t", false),
            r"exec /bin/sh -c 'echo '\''a b'\''' vmc-exec-t"
        );
        assert_eq!(wrap(&req, "vmc-exec-t", true), ": vmc-exec-t; \necho 'a b'");
    }

    #[test]
    fn kill_script_does_not_contain_its_tag() {
        let tag = "vmc-exec-0123456789abcdef";
        assert!(!kill_script(tag).contains(tag));
    }

    #[test]
    fn env_names_are_checked() {
        assert!(valid_env_name("PATH") && valid_env_name("_x1"));
        assert!(
            !valid_env_name("1X")
                && !valid_env_name("A-B")
                && !valid_env_name("")
                && !valid_env_name("A=B")
        );
    }

    #[test]
    fn output_is_capped_with_flags() {
        let out = ExecOutput::new(Some(0), &[b'x'; 10], b"e");
        let r = result(&out, false, Duration::from_millis(5), 4);
        assert_eq!(
            (r.stdout.as_str(), r.truncated, r.stdout_bytes),
            ("xxxx", true, 10)
        );
        assert_eq!(r.stderr, "e");
    }
}
