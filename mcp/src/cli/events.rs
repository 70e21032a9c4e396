//! `vmcluster events`: the event stream on the command line.
//!
//! With a server running, the events come through its control socket (`control.sock` in the
//! state directory). With none, the command opens the journal itself, prints what is there and
//! closes it again (the journal is locked while open, so a server cannot start in that
//! instant; opening waits up to two seconds for the lock, so it only delays one).
//!
//! `--follow` keeps going: through a server's socket it prints live events; with no server it
//! prints the journal, then waits for a server to start (checking for its socket every 250 ms;
//! the journal is never held meanwhile) and follows through it from where it stopped. When
//! the server stops, it reads whatever the server journaled last, and waits again. Nothing is
//! printed twice and nothing is skipped: the cursor is the last sequence number printed.
//!
//! Output: one line per event; `--json` prints each event as one JSON object per line (the
//! same objects `events_read` returns).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use vmcluster_engine::config::Config;
use vmcluster_journal::{Event, EventFilter, EventKind, JournalError};

use crate::control::{self, ControlRequest, ControlResponse};

/// How often `--follow` without a server looks for one.
const SERVER_POLL: Duration = Duration::from_millis(250);

/// What `vmcluster events` was asked.
#[derive(Debug, Clone)]
pub struct EventsArgs {
    /// Keep printing new events.
    pub follow: bool,
    /// Only events after this sequence number.
    pub since: u64,
    /// Only this cluster's events.
    pub cluster: Option<String>,
    /// One JSON object per line.
    pub json: bool,
}

/// Why a run stopped early.
#[derive(Debug)]
enum Stop {
    /// Stdout is closed (e.g. `| head`): a normal end.
    Closed,
    /// A real failure, with its message.
    Failed(String),
}

struct Printer {
    json: bool,
    /// Last sequence number printed or skipped; the resume point.
    cursor: u64,
    out: std::io::Stdout,
}

impl Printer {
    fn print(&mut self, e: &Event) -> Result<(), Stop> {
        if e.seq <= self.cursor {
            return Ok(());
        }
        self.cursor = e.seq;
        let line = if self.json {
            serde_json::to_string(e).map_err(|e| Stop::Failed(e.to_string()))?
        } else {
            human(e)
        };
        let mut out = self.out.lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|_| Stop::Closed)
    }
}

/// One event as a line of text.
pub fn human(e: &Event) -> String {
    let place = match (&e.cluster, &e.node) {
        (Some(c), Some(n)) => format!("{c}/{n}"),
        (Some(c), None) => c.clone(),
        (None, Some(n)) => format!("-/{n}"),
        (None, None) => "-".to_owned(),
    };
    let mut what = Vec::new();
    if matches!(e.kind, EventKind::OpStarted | EventKind::OpFinished)
        && let Some(t) = &e.tool
    {
        what.push(t.clone());
    }
    if let Some(d) = &e.detail {
        what.push(d.clone());
    }
    if let Some(o) = e.outcome {
        what.push(o.as_str().to_owned());
    }
    if let Some(err) = &e.error {
        match &err.code {
            Some(c) => what.push(format!("[{c}] {}", err.message)),
            None => what.push(err.message.clone()),
        }
    }
    if matches!(e.kind, EventKind::OpStarted | EventKind::OpFinished)
        && let Some(op) = &e.op_id
    {
        what.push(format!("op={op}"));
    }
    format!(
        "{} {:>7} {:<18} {:<24} {}",
        e.time,
        e.seq,
        e.kind.as_str(),
        place,
        what.join(" ")
    )
}

/// Runs `vmcluster events`; returns the exit code.
pub async fn run(config: &Config, args: EventsArgs) -> i32 {
    let mut p = Printer {
        json: args.json,
        cursor: args.since,
        out: std::io::stdout(),
    };
    match follow_or_read(config, &args, &mut p).await {
        Ok(()) | Err(Stop::Closed) => 0,
        Err(Stop::Failed(m)) => {
            eprintln!("error: {m}");
            1
        }
    }
}

async fn follow_or_read(config: &Config, args: &EventsArgs, p: &mut Printer) -> Result<(), Stop> {
    let socket = control::socket_path(&config.state_dir);
    let journal = config.state_dir.join("journal");
    let filter = EventFilter {
        cluster: args.cluster.clone(),
    };
    let mut waiting_said = false;
    loop {
        let stream = control::connect(&socket)
            .await
            .map_err(|e| Stop::Failed(format!("cannot connect to {}: {e}", socket.display())))?;
        if let Some(stream) = stream {
            waiting_said = false;
            let finished = through_server(stream, args, p).await?;
            if finished {
                return Ok(());
            }
            // The server went away while we followed: read what it journaled last, below.
        }
        match offline(&journal, &filter, p).await? {
            Ok(()) => {}
            // A process holds the journal without answering on the socket: a one-shot CLI
            // verb, or a server just starting or stopping.
            Err(JournalError::InUse { .. }) if args.follow => {}
            Err(JournalError::InUse { path }) => {
                return Err(Stop::Failed(format!(
                    "the journal at {} is in use by a process that does not answer on {} (a one-shot vmcluster command?); try again",
                    path.display(),
                    socket.display()
                )));
            }
            Err(e) => return Err(Stop::Failed(e.to_string())),
        }
        if !args.follow {
            return Ok(());
        }
        if !waiting_said {
            eprintln!(
                "vmcluster events: no server is running; waiting for one to follow through (Ctrl-C to stop)"
            );
            waiting_said = true;
        }
        wait_for_socket(&socket).await;
    }
}

/// Reads the journal directly (no server). The outer error stops the run; the inner one is
/// the journal's.
async fn offline(
    journal: &Path,
    filter: &EventFilter,
    p: &mut Printer,
) -> Result<Result<(), JournalError>, Stop> {
    let dir: PathBuf = journal.to_path_buf();
    let since = p.cursor;
    let f = filter.clone();
    let page = match tokio::task::spawn_blocking(move || {
        vmcluster_actors::events::read_offline(&dir, since, &f)
    })
    .await
    {
        Ok(Ok(page)) => page,
        Ok(Err(e)) => return Ok(Err(e)),
        Err(e) => return Err(Stop::Failed(format!("reading the journal: {e}"))),
    };
    if let Some(page) = page {
        for e in &page.events {
            p.print(e)?;
        }
        p.cursor = p.cursor.max(page.next_since);
    }
    Ok(Ok(()))
}

async fn wait_for_socket(socket: &Path) {
    loop {
        tokio::time::sleep(SERVER_POLL).await;
        if matches!(control::connect(socket).await, Ok(Some(_))) {
            return;
        }
    }
}

/// Streams from a server. `Ok(true)`: done (not following); `Ok(false)`: the server went away
/// while following.
async fn through_server(
    stream: tokio::net::UnixStream,
    args: &EventsArgs,
    p: &mut Printer,
) -> Result<bool, Stop> {
    let (r, mut w) = stream.into_split();
    let req = ControlRequest::Events {
        since: p.cursor,
        cluster: args.cluster.clone(),
        follow: args.follow,
    };
    let mut line = serde_json::to_vec(&req).map_err(|e| Stop::Failed(e.to_string()))?;
    line.push(b'\n');
    if w.write_all(&line).await.is_err() {
        return Ok(false);
    }
    let mut lines = BufReader::new(r).lines();
    loop {
        let Ok(Some(line)) = lines.next_line().await else {
            return Ok(false);
        };
        let resp: ControlResponse = serde_json::from_str(&line)
            .map_err(|e| Stop::Failed(format!("unexpected answer from the server: {e}")))?;
        match resp {
            ControlResponse::Event { event } => p.print(&event)?,
            ControlResponse::CaughtUp { last_seq } => p.cursor = p.cursor.max(last_seq),
            ControlResponse::End { last_seq } => {
                p.cursor = p.cursor.max(last_seq);
                return Ok(true);
            }
            ControlResponse::Error { code, message } => {
                return Err(Stop::Failed(format!("[{code}] {message}")));
            }
            other => {
                return Err(Stop::Failed(format!(
                    "unexpected answer from the server: {other:?}"
                )));
            }
        }
    }
}
