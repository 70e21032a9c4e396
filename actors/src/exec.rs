//! Remote execution on a node: the shell wrapper that makes a command killable, output caps,
//! and the result a tool returns.
//!
//! Every command runs as `exec [env K=V …] /bin/sh -c '<command>' vmc-exec-<id>`: the trailing
//! argument becomes the shell's `$0`, a unique tag in its command line. When the command
//! outlives its timeout, a second channel finds the tagged process through `/proc` and kills it
//! with all its descendants (`/proc/<pid>/task/*/children`), so nothing is left running on the
//! node. The kill script never contains the whole tag, so it cannot match itself.

use std::collections::BTreeMap;
use std::time::Duration;

use vmcluster_engine::view::ExecResult;

use crate::error::{EngineError, Result};
use crate::ssh::{ExecOutput, SshSession};

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

/// The remote command line for `req`, tagged with `tag`.
pub fn wrap(req: &ExecRequest, tag: &str) -> String {
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

/// Runs `req` over `session`; kills it on the node when it times out.
pub async fn run(session: &SshSession, node: &str, req: &ExecRequest) -> Result<ExecResult> {
    let ssh_err = |e: crate::ssh::SshError| EngineError::Ssh {
        node: node.to_owned(),
        message: e.to_string(),
    };
    let tag = format!("vmc-exec-{}", uuid::Uuid::new_v4().simple());
    let started = std::time::Instant::now();
    let command = wrap(req, &tag);
    let mut attempt = 0;
    let (out, timed_out) = loop {
        match session
            .run(&command, req.stdin.as_deref(), req.timeout)
            .await
        {
            // The command never started: retrying cannot run it twice.
            Err(crate::ssh::SshError::NotStarted) if attempt < 3 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            other => break other.map_err(ssh_err)?,
        }
    };
    if timed_out {
        // Best effort within a short budget: the node may be too sick to answer.
        let _ = session
            .run(&kill_script(&tag), None, Duration::from_secs(10))
            .await;
    }
    Ok(result(out, timed_out, started.elapsed(), req.output_cap))
}

fn result(out: ExecOutput, timed_out: bool, elapsed: Duration, cap: usize) -> ExecResult {
    let (stdout, stdout_truncated) = capped(&out.stdout, cap);
    let (stderr, stderr_truncated) = capped(&out.stderr, cap);
    ExecResult {
        exit_code: out.exit_code.map(|c| c as i64),
        signal: out.signal,
        stdout,
        stderr,
        duration_ms: elapsed.as_millis() as u64,
        timed_out,
        truncated: stdout_truncated || stderr_truncated,
        stdout_bytes: out.stdout.len() as u64,
        stderr_bytes: out.stderr.len() as u64,
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
            wrap(&req, "vmc-exec-t"),
            r"exec env X='1 2' /bin/sh -c 'echo '\''a b'\''' vmc-exec-t"
        );
        req.env.clear();
        assert_eq!(
            wrap(&req, "vmc-exec-t"),
            r"exec /bin/sh -c 'echo '\''a b'\''' vmc-exec-t"
        );
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
        let out = ExecOutput {
            exit_code: Some(0),
            signal: None,
            stdout: vec![b'x'; 10],
            stderr: b"e".to_vec(),
        };
        let r = result(out, false, Duration::from_millis(5), 4);
        assert_eq!(
            (r.stdout.as_str(), r.truncated, r.stdout_bytes),
            ("xxxx", true, 10)
        );
        assert_eq!(r.stderr, "e");
    }
}
