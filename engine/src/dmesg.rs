//! The kernel log behind `dmesg_mark` and `dmesg_collect`: parsing `dmesg -r` output, classifying
//! kernel failure reports (panic, Oops, BUG, WARNING, KASAN, UBSAN, hung task, RCU stall, OOM
//! kill, lockup, call trace) and selecting what was logged after a marker or a cursor.
//!
//! The actors run `dmesg -r` on a guest and hand its output (decoded lossily as UTF-8) to
//! [`parse`]; [`select`] then cuts, filters, counts and caps the records. `dmesg_mark` writes
//! [`marker_line`] to `/dev/kmsg`, which puts a record with the text `vmcluster-mark:<id>` into the
//! ring buffer; [`Since::Marker`] finds it again. A marker that is gone (the node rebooted, or the
//! ring buffer wrapped) is an error, [`MarkerNotFound`], never an empty success.
//!
//! **Format.** busybox and util-linux both print raw records as `<PRI>[  SECONDS.MICROS] text`,
//! with `PRI = facility * 8 + level`. The timestamp is missing when the kernel was built without
//! `CONFIG_PRINTK_TIME`; with `CONFIG_PRINTK_CALLER` the text starts with a caller id such as
//! `[    T1]` or `[ C0]`, which [`KmsgLine::text`] keeps and [`classify`] looks past. A line without a
//! `<PRI>` prefix continues the record before it.
//!
//! **Classification** looks at the headline of each report, anchored where the kernel puts it, so
//! that a userspace message merely mentioning "WARNING:" is not a kernel warning and one report
//! counts once per class: the follow-up lines of a report (the `hung_task_timeout_secs` hint,
//! `invoked oom-killer` and `oom-kill:` before the kill line, `---[ end Kernel panic ...`) are not
//! classified. Some failures legitimately carry two headlines (a NULL dereference prints `BUG:`
//! and then `Oops:`; a panic usually follows an Oops), and each is counted in its own class.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ErrorCode;

/// A kernel log level, from `KERN_EMERG` (0) to `KERN_DEBUG` (7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// 0: the system is unusable.
    Emerg,
    /// 1: action must be taken immediately.
    Alert,
    /// 2: critical conditions.
    Crit,
    /// 3: error conditions.
    Err,
    /// 4: warning conditions.
    Warning,
    /// 5: normal but significant condition.
    Notice,
    /// 6: informational.
    Info,
    /// 7: debug-level messages.
    Debug,
}

impl Severity {
    /// The severity of a numeric level, `None` above 7.
    pub fn from_level(level: u8) -> Option<Severity> {
        Some(match level {
            0 => Severity::Emerg,
            1 => Severity::Alert,
            2 => Severity::Crit,
            3 => Severity::Err,
            4 => Severity::Warning,
            5 => Severity::Notice,
            6 => Severity::Info,
            7 => Severity::Debug,
            _ => return None,
        })
    }

    /// The numeric level: 0 for `emerg` (most severe) to 7 for `debug`.
    pub fn level(self) -> u8 {
        self as u8
    }

    /// The wire name (`emerg`, ..., `debug`).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Emerg => "emerg",
            Severity::Alert => "alert",
            Severity::Crit => "crit",
            Severity::Err => "err",
            Severity::Warning => "warning",
            Severity::Notice => "notice",
            Severity::Info => "info",
            Severity::Debug => "debug",
        }
    }
}

/// Which severities `dmesg_collect` returns.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum FilterLevel {
    /// Every record.
    #[default]
    #[serde(rename = "all")]
    All,
    /// `emerg` through `warning`.
    #[serde(rename = "warn+")]
    WarnPlus,
    /// `emerg` through `err`.
    #[serde(rename = "err+")]
    ErrPlus,
}

impl FilterLevel {
    /// Whether a record of `severity` passes this filter.
    pub fn admits(self, severity: Severity) -> bool {
        match self {
            FilterLevel::All => true,
            FilterLevel::WarnPlus => severity.level() <= Severity::Warning.level(),
            FilterLevel::ErrPlus => severity.level() <= Severity::Err.level(),
        }
    }

    /// The wire name (`all`, `warn+`, `err+`).
    pub fn as_str(self) -> &'static str {
        match self {
            FilterLevel::All => "all",
            FilterLevel::WarnPlus => "warn+",
            FilterLevel::ErrPlus => "err+",
        }
    }
}

impl std::fmt::Display for FilterLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A filter level that is not `all`, `warn+` or `err+`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Unknown filter level {0:?}; use \"all\", \"warn+\" or \"err+\"")]
pub struct UnknownFilterLevel(pub String);

impl FromStr for FilterLevel {
    type Err = UnknownFilterLevel;

    /// Parses the wire names exactly (`all`, `warn+`, `err+`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(FilterLevel::All),
            "warn+" => Ok(FilterLevel::WarnPlus),
            "err+" => Ok(FilterLevel::ErrPlus),
            _ => Err(UnknownFilterLevel(s.to_owned())),
        }
    }
}

/// The kind of kernel failure report a line heads.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// `Kernel panic - not syncing: ...`.
    Panic,
    /// `Oops: ...`, `Internal error: Oops: ...` (arm64) or `general protection fault ...`.
    Oops,
    /// `BUG: ...` or `kernel BUG at ...` (other than KASAN and soft lockups).
    Bug,
    /// `WARNING: ...` (a `WARN()` splat or a lockdep report).
    Warning,
    /// `BUG: KASAN: ...` or `KASAN: ...`.
    Kasan,
    /// `UBSAN: ...`.
    Ubsan,
    /// `INFO: task ... blocked for more than N seconds.`
    HungTask,
    /// `rcu: INFO: rcu_sched detected stalls ...` and the other RCU stall headlines.
    RcuStall,
    /// `Out of memory: Killed process ...` (also the memcg and old `Kill process` forms).
    OomKill,
    /// `Call Trace:` (x86) or `Call trace:` (arm64).
    CallTrace,
    /// `BUG: soft lockup - CPU#...` or `Watchdog detected hard LOCKUP ...`.
    Lockup,
}

impl Class {
    /// The wire name (`panic`, `oops`, ..., `lockup`).
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Panic => "panic",
            Class::Oops => "oops",
            Class::Bug => "bug",
            Class::Warning => "warning",
            Class::Kasan => "kasan",
            Class::Ubsan => "ubsan",
            Class::HungTask => "hung_task",
            Class::RcuStall => "rcu_stall",
            Class::OomKill => "oom_kill",
            Class::CallTrace => "call_trace",
            Class::Lockup => "lockup",
        }
    }
}

/// One line of the kernel log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct KmsgLine {
    /// Time since boot in microseconds, exactly as printed. Monotonic within a boot (up to small
    /// cross-CPU skew), restarting at each boot. A record printed without a timestamp carries
    /// the previous record's, or 0 at the start of the log.
    pub micros: u64,
    /// Log level.
    pub severity: Severity,
    /// Syslog facility: 0 for the kernel, 1 (user) for lines written to `/dev/kmsg`.
    pub facility: u8,
    /// The text after the timestamp, unchanged (a `CONFIG_PRINTK_CALLER` id stays in it).
    pub text: String,
    /// Whether the line had no `<PRI>` prefix: it continues the record before it and carries that
    /// record's timestamp, severity and facility. A line before any record gets timestamp 0,
    /// facility 0 and the kernel's default message level, `warning`.
    pub continuation: bool,
    /// The failure report this line heads, if any (see [`classify`]).
    pub class: Option<Class>,
}

/// Parses the output of `dmesg -r`, one [`KmsgLine`] per non-blank line. Never fails: whatever
/// does not start with a well-formed `<PRI>` prefix is a continuation line, and a malformed
/// timestamp is left in the text. Decode the guest's bytes with `String::from_utf8_lossy`.
pub fn parse(output: &str) -> Vec<KmsgLine> {
    let mut lines = Vec::new();
    // (micros, severity, facility) of the last record.
    let mut last: Option<(u64, Severity, u8)> = None;
    for raw in output.lines() {
        if raw.trim().is_empty() {
            continue;
        }
        let (micros, severity, facility, text, continuation) = match parse_record(raw) {
            Some(record) => {
                let micros = record
                    .micros
                    .unwrap_or_else(|| last.map_or(0, |(micros, _, _)| micros));
                last = Some((micros, record.severity, record.facility));
                (micros, record.severity, record.facility, record.text, false)
            }
            None => {
                let (micros, severity, facility) = last.unwrap_or((0, Severity::Warning, 0));
                (micros, severity, facility, raw, true)
            }
        };
        lines.push(KmsgLine {
            micros,
            severity,
            facility,
            text: text.to_owned(),
            continuation,
            class: classify(text),
        });
    }
    lines
}

/// The parts of a line with a `<PRI>` prefix.
struct Record<'a> {
    micros: Option<u64>,
    severity: Severity,
    facility: u8,
    text: &'a str,
}

/// Splits `<PRI>[  SECONDS.MICROS] text` (timestamp optional); `None` without a valid prefix.
fn parse_record(line: &str) -> Option<Record<'_>> {
    let rest = line.strip_prefix('<')?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if !(1..=4).contains(&digits) || rest.as_bytes().get(digits) != Some(&b'>') {
        return None;
    }
    let pri: u16 = rest[..digits].parse().ok()?;
    let facility = u8::try_from(pri >> 3).ok()?;
    let severity = Severity::from_level((pri & 7) as u8)?;
    let rest = &rest[digits + 1..];
    let (micros, text) = match parse_timestamp(rest) {
        Some((micros, after)) => (Some(micros), after.strip_prefix(' ').unwrap_or(after)),
        None => (None, rest),
    };
    Some(Record {
        micros,
        severity,
        facility,
        text,
    })
}

/// Parses a leading `[  SECONDS.FRACTION]` into microseconds and the text after the `]`.
fn parse_timestamp(s: &str) -> Option<(u64, &str)> {
    let inner_and_rest = s.strip_prefix('[')?;
    let end = inner_and_rest.find(']')?;
    let inner = inner_and_rest[..end].trim_matches(' ');
    let (secs, frac) = inner.split_once('.')?;
    let all_digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(secs) || !all_digits(frac) || frac.len() > 9 {
        return None;
    }
    let secs: u64 = secs.parse().ok()?;
    let frac_value: u64 = frac.parse().ok()?;
    // The kernel prints six digits; scale anything else to microseconds.
    let len = frac.len() as u32;
    let frac_micros = if len <= 6 {
        frac_value * 10u64.pow(6 - len)
    } else {
        frac_value / 10u64.pow(len - 6)
    };
    let micros = secs.checked_mul(1_000_000)?.checked_add(frac_micros)?;
    Some((micros, &inner_and_rest[end + 1..]))
}

/// The text with leading whitespace and a `CONFIG_PRINTK_CALLER` id (`[    T1]`, `[ C0]`)
/// removed: where the kernel's own message starts.
fn message_body(text: &str) -> &str {
    let t = text.trim_start();
    if let Some(rest) = t.strip_prefix('[')
        && let Some(end) = rest.get(..16).unwrap_or(rest).find(']')
    {
        let id = rest[..end].trim();
        let mut chars = id.chars();
        let kind_ok = matches!(chars.next(), Some('T' | 'C'));
        let num = chars.as_str();
        if kind_ok && !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()) {
            return rest[end + 1..].trim_start();
        }
    }
    t
}

/// The failure report `text` (one line's text, as in [`KmsgLine::text`]) heads, if any.
///
/// Rules, most specific first, on the text after leading whitespace and a caller id:
/// * starts with `Kernel panic - not syncing` → [`Class::Panic`];
/// * starts with `BUG: KASAN:` or `KASAN:` → [`Class::Kasan`] (the boot line `kasan: ...` is not);
/// * starts with `UBSAN:` → [`Class::Ubsan`];
/// * contains `BUG: soft lockup` or `detected hard LOCKUP` → [`Class::Lockup`];
/// * contains `INFO: rcu_`, `rcu_sched detected stall`, `rcu_preempt detected stall` or
///   `self-detected stall` → [`Class::RcuStall`];
/// * starts with `INFO: task` and contains `blocked for more than` → [`Class::HungTask`];
/// * contains `out of memory` (any case) and `Killed process` or `Kill process` →
///   [`Class::OomKill`];
/// * starts with `Oops` or `general protection fault`, or contains `Internal error: Oops` →
///   [`Class::Oops`] (so `traps: a.out[1] general protection fault ...`, a userspace fault, is
///   not);
/// * starts with `BUG:` or `kernel BUG at` → [`Class::Bug`];
/// * starts with `WARNING:` → [`Class::Warning`];
/// * starts with `Call Trace:` or `Call trace:` → [`Class::CallTrace`].
pub fn classify(text: &str) -> Option<Class> {
    let b = message_body(text);
    let class = if b.starts_with("Kernel panic - not syncing") {
        Class::Panic
    } else if b.starts_with("BUG: KASAN:") || b.starts_with("KASAN:") {
        Class::Kasan
    } else if b.starts_with("UBSAN:") {
        Class::Ubsan
    } else if b.contains("BUG: soft lockup") || b.contains("detected hard LOCKUP") {
        Class::Lockup
    } else if b.contains("INFO: rcu_")
        || b.contains("rcu_sched detected stall")
        || b.contains("rcu_preempt detected stall")
        || b.contains("self-detected stall")
    {
        Class::RcuStall
    } else if b.starts_with("INFO: task") && b.contains("blocked for more than") {
        Class::HungTask
    } else if (b.contains("Killed process") || b.contains("Kill process"))
        && b.to_ascii_lowercase().contains("out of memory")
    {
        Class::OomKill
    } else if b.starts_with("Oops")
        || b.starts_with("general protection fault")
        || b.contains("Internal error: Oops")
    {
        Class::Oops
    } else if b.starts_with("BUG:") || b.starts_with("kernel BUG at") {
        Class::Bug
    } else if b.starts_with("WARNING:") {
        Class::Warning
    } else if b.starts_with("Call Trace:") || b.starts_with("Call trace:") {
        Class::CallTrace
    } else {
        return None;
    };
    Some(class)
}

/// What the text of a marker record starts with.
const MARKER_PREFIX: &str = "vmcluster-mark:";

/// Longest marker id [`is_valid_marker`] accepts.
pub const MAX_MARKER_LEN: usize = 80;

/// The line `dmesg_mark` writes to `/dev/kmsg` for marker `id` (no trailing newline):
/// `<5>vmcluster-mark:<id>`. The kernel logs it as a `notice` of facility 1 (user) with the text
/// `vmcluster-mark:<id>`. `id` must pass [`is_valid_marker`]: it goes into a shell command.
pub fn marker_line(id: &str) -> String {
    format!("<5>{MARKER_PREFIX}{id}")
}

/// Whether `id` is a safe marker id: 1 to [`MAX_MARKER_LEN`] characters from `A-Z a-z 0-9 : _ -`.
pub fn is_valid_marker(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_MARKER_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
}

/// Whether `line` is the record `marker_line(id)` produced.
fn is_marker(line: &KmsgLine, id: &str) -> bool {
    message_body(&line.text)
        .trim_end()
        .strip_prefix(MARKER_PREFIX)
        .is_some_and(|rest| rest == id)
}

/// Where [`select`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since<'a> {
    /// The whole log.
    Start,
    /// The lines after the most recent record written by [`marker_line`] with this id (the
    /// marker record itself excluded). Matched exactly: marker `a` does not match `ab`.
    Marker(&'a str),
    /// The lines whose timestamp is strictly greater than this many microseconds (a cursor from
    /// [`Collected::last_micros`]). Timestamps restart at boot, so a cursor from before a reboot
    /// selects whatever the new boot logged after that time.
    After(u64),
}

/// What [`select`] returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Collected {
    /// The matching lines, oldest first, at most `max_lines` of them.
    pub lines: Vec<KmsgLine>,
    /// How many lines matched before the cap.
    pub matched: usize,
    /// Per class, how many matching lines (before the cap) head a report of that class.
    pub counts: BTreeMap<Class, usize>,
    /// Whether the cap dropped matching lines.
    pub truncated: bool,
    /// The cursor to continue from with [`Since::After`]: the timestamp of the last returned line
    /// when truncated, otherwise of the last line of the log. `None` when the log is empty or a
    /// cap of 0 returned nothing.
    pub last_micros: Option<u64>,
}

/// The marker asked for is not in the kernel log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "Marker {marker:?} not found in the kernel log; the node may have rebooted or the ring \
     buffer wrapped since it was written"
)]
pub struct MarkerNotFound {
    /// The marker id looked for.
    pub marker: String,
}

impl MarkerNotFound {
    /// The stable error code: [`ErrorCode::NotFound`].
    pub fn code(&self) -> ErrorCode {
        ErrorCode::NotFound
    }
}

/// Selects the lines after `since` that `filter` admits, counts them per class and keeps the
/// first `max_lines`.
///
/// Capping keeps the *oldest* lines: the first report is usually the cause and later ones its
/// fallout, and it lets a caller page forward with `Since::After(last_micros)`. So that paging
/// loses nothing, a cut never splits lines sharing one timestamp (a multi-line record): it backs
/// off to the previous timestamp, returning fewer than `max_lines`, unless every kept line has
/// the same timestamp. Counts and `matched` cover every matching line, before the cap.
pub fn select(
    lines: &[KmsgLine],
    since: Since<'_>,
    filter: FilterLevel,
    max_lines: usize,
) -> Result<Collected, MarkerNotFound> {
    let (tail, after) = match since {
        Since::Start => (lines, None),
        Since::Marker(id) => {
            let at = lines
                .iter()
                .rposition(|line| is_marker(line, id))
                .ok_or_else(|| MarkerNotFound {
                    marker: id.to_owned(),
                })?;
            (&lines[at + 1..], None)
        }
        Since::After(micros) => (lines, Some(micros)),
    };
    let matching: Vec<&KmsgLine> = tail
        .iter()
        .filter(|line| after.is_none_or(|micros| line.micros > micros))
        .filter(|line| filter.admits(line.severity))
        .collect();

    let mut counts = BTreeMap::new();
    for class in matching.iter().filter_map(|line| line.class) {
        *counts.entry(class).or_insert(0) += 1;
    }

    let truncated = matching.len() > max_lines;
    let mut keep = matching.len().min(max_lines);
    if truncated && keep > 0 {
        let next = matching[keep].micros;
        let boundary = matching[..keep]
            .iter()
            .rposition(|line| line.micros != next)
            .map_or(0, |i| i + 1);
        if boundary > 0 {
            keep = boundary;
        }
    }
    let last_micros = if truncated {
        keep.checked_sub(1).map(|i| matching[i].micros)
    } else {
        lines.last().map(|line| line.micros)
    };
    Ok(Collected {
        lines: matching[..keep].iter().map(|&line| line.clone()).collect(),
        matched: matching.len(),
        counts,
        truncated,
        last_micros,
    })
}
