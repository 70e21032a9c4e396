//! Tests of the kernel-log parser and classifier behind `dmesg_mark` / `dmesg_collect`.
//!
//! * `parse` on a realistic `dmesg -r` capture: timestamps exact to the microsecond, levels and
//!   facilities from PRI, continuation lines inheriting their record, caller ids, odd input.
//! * `classify`: a table with every class, the kernel's real headline variants, and negatives
//!   (boot lines, userspace messages, follow-up lines of a report, markers).
//! * `select`: filter boundaries, marker and cursor semantics, capping, counts over all lines.
//! * Properties: arbitrary input never panics, one line out per non-blank line in, well-formed
//!   records round-trip, and `select` keeps its invariants.

use proptest::prelude::*;
use vmcluster_engine::ErrorCode;
use vmcluster_engine::dmesg::{
    Class, Collected, FilterLevel, KmsgLine, MarkerNotFound, Severity, Since, classify,
    is_valid_marker, marker_line, parse, select,
};

/// A guest's `dmesg -r` after a boot, a mark and a very bad afternoon.
const CAPTURE: &str = "\
<5>[    0.000000] Linux version 6.8.0-45-generic (buildd@lcy02-amd64-115) (x86_64-linux-gnu-gcc-13 (Ubuntu 13.2.0-23ubuntu4) 13.2.0, GNU ld (GNU Binutils for Ubuntu) 2.42) #45-Ubuntu SMP PREEMPT_DYNAMIC Fri Aug 30 12:02:04 UTC 2024 (Ubuntu 6.8.0-45.45-generic 6.8.12)
<6>[    0.000000] Command line: BOOT_IMAGE=/vmlinuz root=/dev/vda1 console=ttyS0 panic_on_warn=0
<6>[    0.000000] BIOS-provided physical RAM map:
<6>[    0.000000] BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable
<6>[    0.012345] kasan: KernelAddressSanitizer initialized
<6>[    0.104310] rcu: Hierarchical RCU implementation.
<6>[    0.104311] rcu: \tRCU event tracing is enabled.
<7>[    0.120000] PCI: Using configuration type 1 for base access
<6>[    1.204001] NMI watchdog: Enabled. Permanently consumes one hw-PMU counter.
<6>[    4.770265] EXT4-fs (vda1): mounted filesystem 2c8a3f0e-3b1a-4f7e-9a0c-6d0c1a2b3c4d r/w with ordered data mode. Quota mode: none.
<30>[    5.000001] systemd[1]: Started systemd-journald.service - Journal Service.
<13>[   10.000000] vmcluster-mark:run-1
<4>[   12.000001] ------------[ cut here ]------------
<4>[   12.000001] WARNING: CPU: 0 PID: 1 at kernel/foo.c:12 bar+0x1/0x2
<4>[   12.000002] Modules linked in: virtio_net
<4>[   12.000003] Call Trace:
<4>[   12.000003]  <TASK>
<4>[   12.000003]  dump_stack_lvl+0x48/0x70
 continuation without a prefix
<4>[   12.000004] ---[ end trace 0000000000000000 ]---
<6>[   13.500000] a.out[812]: segfault at 0 ip 0000000000401136 sp 00007ffd3c1a2b40 error 6 in a.out[401000+1000]
<6>[   13.600000] traps: a.out[813] general protection fault ip:401136 sp:7ffd3c1a2b40 error:0 in a.out[401000+1000]
<1>[   20.100000] BUG: kernel NULL pointer dereference, address: 0000000000000008
<1>[   20.100001] #PF: supervisor read access in kernel mode
<4>[   20.100002] Oops: 0000 [#1] PREEMPT SMP NOPTI
<3>[   21.000000] ==================================================================
<3>[   21.000001] BUG: KASAN: slab-out-of-bounds in foo_write+0x3c/0x80
<3>[   21.000002] Write of size 8 at addr ffff888003a1c0f8 by task stress/123
<3>[   22.000000] UBSAN: shift-out-of-bounds in lib/foo.c:42:17
<3>[   22.000001] shift exponent 64 is too large for 64-bit type 'long unsigned int'
<3>[  150.000000] INFO: task kworker:12 blocked for more than 120 seconds.
<3>[  150.000001]       Not tainted 6.8.0-45-generic #45-Ubuntu
<3>[  150.000002] \"echo 0 > /proc/sys/kernel/hung_task_timeout_secs\" disables this message.
<3>[  160.000000] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:
<3>[  160.000001] rcu: \t0-...!: (1 GPs behind) idle=8d4c/1/0x4000000000000000 softirq=1/1 fqs=0
<4>[  170.000000] stress invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0
<6>[  170.000001] oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/user.slice,task=stress,pid=123,uid=0
<3>[  170.000002] Out of memory: Killed process 123 (stress) total-vm:1049600kB, anon-rss:1012312kB, file-rss:4kB, shmem-rss:0kB, UID:0 pgtables:2020kB oom_score_adj:0
<0>[  180.000000] watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [spin:140]
<0>[  190.000000] Kernel panic - not syncing: Fatal exception
<0>[  190.000001] Kernel Offset: 0x2a000000 from 0xffffffff81000000 (relocation range: 0xffffffff80000000-0xffffffffbfffffff)
<0>[  190.000002] ---[ end Kernel panic - not syncing: Fatal exception ]---
";

/// Lines in [`CAPTURE`].
const CAPTURE_LINES: usize = 42;

/// `<PRI>[ timestamp] text` for tests that build their own logs.
fn rec(level: u8, micros: u64, text: &str) -> String {
    format!(
        "<{level}>[{:>5}.{:06}] {text}\n",
        micros / 1_000_000,
        micros % 1_000_000
    )
}

fn texts(collected: &Collected) -> Vec<&str> {
    collected.lines.iter().map(|l| l.text.as_str()).collect()
}

fn find<'a>(lines: &'a [KmsgLine], needle: &str) -> &'a KmsgLine {
    lines
        .iter()
        .find(|l| l.text.contains(needle))
        .unwrap_or_else(|| panic!("no line contains {needle:?}"))
}

// ---------------------------------------------------------------------------------------------
// parse

#[test]
fn parses_every_line_of_a_capture() {
    let lines = parse(CAPTURE);
    assert_eq!(lines.len(), CAPTURE_LINES);
    assert_eq!(lines.len(), CAPTURE.lines().count());

    let ext4 = find(&lines, "EXT4-fs");
    assert_eq!(ext4.micros, 4_770_265);
    assert_eq!(ext4.severity, Severity::Info);
    assert_eq!(ext4.facility, 0);
    assert!(!ext4.continuation);
    assert!(ext4.text.starts_with("EXT4-fs (vda1): mounted filesystem"));
    assert_eq!(ext4.class, None);

    let first = &lines[0];
    assert_eq!(first.micros, 0);
    assert_eq!(first.severity, Severity::Notice);
    assert!(first.text.starts_with("Linux version 6.8.0"));

    let warning = find(&lines, "WARNING: CPU: 0");
    assert_eq!(warning.micros, 12_000_001);
    assert_eq!(warning.severity, Severity::Warning);
    assert_eq!(
        warning.text,
        "WARNING: CPU: 0 PID: 1 at kernel/foo.c:12 bar+0x1/0x2"
    );
    assert_eq!(warning.class, Some(Class::Warning));

    // Facilities: systemd logs as daemon (3), the marker as user (1).
    let journald = find(&lines, "systemd-journald");
    assert_eq!((journald.facility, journald.severity), (3, Severity::Info));
    let mark = find(&lines, "vmcluster-mark:run-1");
    assert_eq!((mark.facility, mark.severity), (1, Severity::Notice));
    assert_eq!(mark.text, "vmcluster-mark:run-1");
    assert_eq!(mark.class, None);

    let panic = find(&lines, "Kernel panic - not syncing: Fatal");
    assert_eq!(panic.severity, Severity::Emerg);
    assert_eq!(panic.micros, 190_000_000);
}

#[test]
fn leading_spaces_of_stack_frames_are_kept() {
    let lines = parse(CAPTURE);
    let frame = find(&lines, "dump_stack_lvl");
    assert_eq!(frame.text, " dump_stack_lvl+0x48/0x70");
    assert_eq!(find(&lines, "<TASK>").text, " <TASK>");
}

#[test]
fn continuation_lines_inherit_their_record() {
    let lines = parse(CAPTURE);
    let cont = find(&lines, "continuation without a prefix");
    assert!(cont.continuation);
    assert_eq!(cont.text, " continuation without a prefix");
    assert_eq!(cont.micros, 12_000_003);
    assert_eq!(cont.severity, Severity::Warning);
    assert_eq!(cont.facility, 0);

    let out = "<3>[    1.000000] first line\nsecond line\n\tthird line\n<6>[    2.000000] next\n";
    let lines = parse(out);
    assert_eq!(lines.len(), 4);
    for l in &lines[1..3] {
        assert!(l.continuation);
        assert_eq!((l.micros, l.severity), (1_000_000, Severity::Err));
    }
    assert_eq!(lines[2].text, "\tthird line");
    assert!(!lines[3].continuation);
}

#[test]
fn a_continuation_can_be_classified() {
    let lines =
        parse("<4>[    3.000000] ------------[ cut here ]------------\nWARNING: at x.c:1\n");
    assert_eq!(lines[1].class, Some(Class::Warning));
    assert_eq!(lines[1].severity, Severity::Warning);
}

#[test]
fn lines_before_any_record_get_the_default_level() {
    let lines = parse("dmesg: garbage before\n<6>[    1.000000] ok\n");
    assert_eq!(lines.len(), 2);
    assert!(lines[0].continuation);
    assert_eq!(lines[0].severity, Severity::Warning);
    assert_eq!((lines[0].micros, lines[0].facility), (0, 0));
    assert_eq!(lines[0].text, "dmesg: garbage before");
}

#[test]
fn blank_lines_and_crlf_are_dropped() {
    let lines = parse("\n<6>[    1.000000] a\r\n   \r\n\n<6>[    2.000000] b\r\n");
    assert_eq!(
        lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert!(parse("").is_empty());
    assert!(parse("\n\n \t\n").is_empty());
}

#[test]
fn timestamps_are_exact() {
    let out = "<6>[123456.789012] big\n<6>[    0.000001] tiny\n<6>[    4.5] short fraction\n<6>[    4.123456789] nanos\n<6>[0.000000] unpadded\n";
    let micros: Vec<u64> = parse(out).iter().map(|l| l.micros).collect();
    assert_eq!(
        micros,
        [123_456_789_012, 1, 4_500_000, 4_123_456, 0],
        "{out}"
    );
}

#[test]
fn records_without_a_timestamp_inherit_the_previous_one() {
    let lines = parse("<6>no timestamp first\n<6>[    7.000000] stamped\n<3>no timestamp\n");
    assert_eq!(lines[0].micros, 0);
    assert_eq!(lines[0].text, "no timestamp first");
    assert!(!lines[0].continuation);
    assert_eq!(lines[2].micros, 7_000_000);
    assert_eq!(lines[2].severity, Severity::Err);
}

#[test]
fn malformed_timestamps_stay_in_the_text() {
    for (input, text) in [
        ("<6>[ bad ] x", "[ bad ] x"),
        ("<6>[    1.] x", "[    1.] x"),
        ("<6>[.5] x", "[.5] x"),
        ("<6>[    1.000000 x", "[    1.000000 x"),
        (
            "<6>[99999999999999999999.000000] x",
            "[99999999999999999999.000000] x",
        ),
    ] {
        let lines = parse(input);
        assert_eq!(lines.len(), 1, "{input}");
        assert_eq!(lines[0].text, text, "{input}");
        assert_eq!(lines[0].micros, 0, "{input}");
        assert!(!lines[0].continuation, "{input}");
    }
}

#[test]
fn malformed_prefixes_are_continuations() {
    for input in [
        "<>[ 1.0] x",
        "<x>[ 1.0] x",
        "<12345>[ 1.0] x",
        "<6[ 1.0] x",
        "6>[ 1.0] x",
    ] {
        let lines = parse(input);
        assert_eq!(lines.len(), 1, "{input}");
        assert!(lines[0].continuation, "{input}");
        assert_eq!(lines[0].text, input);
    }
}

#[test]
fn pri_splits_into_facility_and_level() {
    let lines = parse("<0>a\n<7>b\n<14>c\n<191>d\n<2047>e\n<2048>f\n");
    let got: Vec<(u8, Severity, bool)> = lines
        .iter()
        .map(|l| (l.facility, l.severity, l.continuation))
        .collect();
    assert_eq!(
        got,
        [
            (0, Severity::Emerg, false),
            (0, Severity::Debug, false),
            (1, Severity::Info, false),
            (23, Severity::Debug, false),
            (255, Severity::Debug, false),
            // Facility 256 does not exist: not a prefix, so a continuation of the record before.
            (255, Severity::Debug, true),
        ]
    );
}

#[test]
fn caller_ids_stay_in_the_text_and_do_not_hide_the_class() {
    let lines = parse(
        "<4>[   12.000001][    T1] WARNING: CPU: 0 PID: 1 at kernel/foo.c:12 bar+0x1/0x2\n\
         <0>[   13.000000] [   C0] Kernel panic - not syncing: Fatal exception in interrupt\n\
         <13>[   14.000000][  T812] vmcluster-mark:m1\n\
         <6>[   15.000000][  T812] after\n",
    );
    assert_eq!(lines[0].micros, 12_000_001);
    assert_eq!(
        lines[0].text,
        "[    T1] WARNING: CPU: 0 PID: 1 at kernel/foo.c:12 bar+0x1/0x2"
    );
    assert_eq!(lines[0].class, Some(Class::Warning));
    assert_eq!(lines[1].class, Some(Class::Panic));
    // A marker is found behind a caller id too.
    let c = select(&lines, Since::Marker("m1"), FilterLevel::All, 10).unwrap();
    assert_eq!(texts(&c), ["[  T812] after"]);
}

#[test]
fn invalid_utf8_replaced_by_the_caller_parses() {
    let bytes =
        b"<6>[    1.000000] caf\xc3\xa9 \xff\xfe bytes\n<3>[    2.000000] BUG: \xf0\x9f\x92\xa5\n";
    let text = String::from_utf8_lossy(bytes);
    let lines = parse(&text);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0].text, "café \u{fffd}\u{fffd} bytes");
    assert_eq!(lines[1].class, Some(Class::Bug));
}

#[test]
fn classes_in_the_capture() {
    let lines = parse(CAPTURE);
    let classified: Vec<(Class, &str)> = lines
        .iter()
        .filter_map(|l| l.class.map(|c| (c, l.text.as_str())))
        .collect();
    let classes: Vec<Class> = classified.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        classes,
        [
            Class::Warning,
            Class::CallTrace,
            Class::Bug,
            Class::Oops,
            Class::Kasan,
            Class::Ubsan,
            Class::HungTask,
            Class::RcuStall,
            Class::OomKill,
            Class::Lockup,
            Class::Panic,
        ],
        "{classified:#?}"
    );
}

#[test]
fn kmsg_line_serializes_in_snake_case() {
    let line = &parse("<3>[  160.000000] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:")[0];
    let json = serde_json::to_value(line).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "micros": 160_000_000u64,
            "severity": "err",
            "facility": 0,
            "text": "rcu: INFO: rcu_sched detected stalls on CPUs/tasks:",
            "continuation": false,
            "class": "rcu_stall",
        })
    );
    let back: KmsgLine = serde_json::from_value(json).unwrap();
    assert_eq!(&back, line);
}

// ---------------------------------------------------------------------------------------------
// classify

#[test]
fn classification_table() {
    use Class::*;
    let table: &[(&str, Option<Class>)] = &[
        // Panic
        ("Kernel panic - not syncing: Fatal exception", Some(Panic)),
        (
            "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
            Some(Panic),
        ),
        (
            "Kernel panic - not syncing: hung_task: blocked tasks",
            Some(Panic),
        ),
        ("Kernel panic - not syncing: Hard LOCKUP", Some(Panic)),
        (
            "Kernel panic - not syncing: KASAN: panic_on_warn set ...",
            Some(Panic),
        ),
        (
            "---[ end Kernel panic - not syncing: Fatal exception ]---",
            None,
        ),
        // Oops
        ("Oops: 0000 [#1] PREEMPT SMP NOPTI", Some(Oops)),
        (
            "Oops: general protection fault, probably for non-canonical address 0xdffffc0000000001: 0000 [#1] PREEMPT SMP KASAN NOPTI",
            Some(Oops),
        ),
        ("general protection fault: 0000 [#1] SMP PTI", Some(Oops)),
        (
            "general protection fault, probably for non-canonical address 0x6b6b6b6b6b6b6b6b: 0000 [#1] SMP",
            Some(Oops),
        ),
        (
            "Internal error: Oops: 0000000096000005 [#1] PREEMPT SMP",
            Some(Oops),
        ),
        (
            "traps: a.out[813] general protection fault ip:401136 sp:7ffd3c1a2b40 error:0",
            None,
        ),
        // Bug
        (
            "BUG: kernel NULL pointer dereference, address: 0000000000000008",
            Some(Bug),
        ),
        (
            "BUG: unable to handle page fault for address: ffffffffc0201000",
            Some(Bug),
        ),
        (
            "BUG: sleeping function called from invalid context at mm/slab.h:494",
            Some(Bug),
        ),
        (
            "BUG: scheduling while atomic: swapper/0/0/0x00000002",
            Some(Bug),
        ),
        (
            "BUG: workqueue lockup - pool cpus=0 node=0 flags=0x0 nice=0 stuck for 31s!",
            Some(Bug),
        ),
        ("kernel BUG at mm/slub.c:4312!", Some(Bug)),
        // Warning
        (
            "WARNING: CPU: 0 PID: 1 at kernel/foo.c:12 bar+0x1/0x2",
            Some(Warning),
        ),
        ("WARNING: at kernel/foo.c:12 bar+0x1/0x2()", Some(Warning)),
        (
            "WARNING: possible circular locking dependency detected",
            Some(Warning),
        ),
        ("  WARNING: suspicious RCU usage", Some(Warning)),
        ("no WARNING here", None),
        ("myapp: WARNING: disk almost full", None),
        ("Warning: unable to open an initial console.", None),
        // Kasan
        (
            "BUG: KASAN: slab-out-of-bounds in foo_write+0x3c/0x80",
            Some(Kasan),
        ),
        ("BUG: KASAN: use-after-free in bar+0x10/0x20", Some(Kasan)),
        (
            "KASAN: null-ptr-deref in range [0x0000000000000008-0x000000000000000f]",
            Some(Kasan),
        ),
        ("kasan: KernelAddressSanitizer initialized", None),
        // Ubsan
        ("UBSAN: shift-out-of-bounds in lib/foo.c:42:17", Some(Ubsan)),
        (
            "UBSAN: array-index-out-of-bounds in drivers/bar.c:7:3",
            Some(Ubsan),
        ),
        ("UBSAN: Undefined behaviour in lib/foo.c:1:2", Some(Ubsan)),
        // HungTask
        (
            "INFO: task kworker:12 blocked for more than 120 seconds.",
            Some(HungTask),
        ),
        (
            "INFO: task jbd2/vda1-8:201 blocked for more than 245 seconds.",
            Some(HungTask),
        ),
        (
            "\"echo 0 > /proc/sys/kernel/hung_task_timeout_secs\" disables this message.",
            None,
        ),
        ("myapp: request blocked for more than 5 seconds", None),
        // RcuStall
        (
            "rcu: INFO: rcu_sched detected stalls on CPUs/tasks:",
            Some(RcuStall),
        ),
        (
            "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
            Some(RcuStall),
        ),
        (
            "rcu: INFO: rcu_preempt self-detected stall on CPU",
            Some(RcuStall),
        ),
        (
            "rcu: INFO: rcu_preempt detected expedited stalls on CPUs/tasks: { 1-... } 21002 jiffies s: 1065 root: 0x2/.",
            Some(RcuStall),
        ),
        (
            "INFO: rcu_sched detected stalls on CPUs/tasks:",
            Some(RcuStall),
        ),
        ("INFO: rcu_sched self-detected stall on CPU", Some(RcuStall)),
        ("rcu: Hierarchical RCU implementation.", None),
        (
            "rcu: rcu_sched kthread starved for 10502 jiffies! g8857 f0x0 RCU_GP_WAIT_FQS(5)",
            None,
        ),
        // OomKill
        (
            "Out of memory: Killed process 123 (stress) total-vm:1049600kB, anon-rss:1012312kB",
            Some(OomKill),
        ),
        ("Out of memory: Killed process 123 (stress)", Some(OomKill)),
        (
            "Memory cgroup out of memory: Killed process 321 (python3) total-vm:2000kB",
            Some(OomKill),
        ),
        (
            "Out of memory: Kill process 123 (stress) score 974 or sacrifice child",
            Some(OomKill),
        ),
        (
            "Out of memory (oom_kill_allocating_task): Killed process 7 (x)",
            Some(OomKill),
        ),
        (
            "stress invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0",
            None,
        ),
        (
            "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom",
            None,
        ),
        (
            "oom_reaper: reaped process 123 (stress), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB",
            None,
        ),
        // CallTrace
        ("Call Trace:", Some(CallTrace)),
        (" Call Trace:", Some(CallTrace)),
        ("Call trace:", Some(CallTrace)),
        (" <TASK>", None),
        (" dump_stack_lvl+0x48/0x70", None),
        // Lockup
        (
            "watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [spin:140]",
            Some(Lockup),
        ),
        (
            "NMI watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [swapper/0:1]",
            Some(Lockup),
        ),
        (
            "BUG: soft lockup - CPU#0 stuck for 61s! [kworker/0:1:12]",
            Some(Lockup),
        ),
        (
            "watchdog: Watchdog detected hard LOCKUP on cpu 1",
            Some(Lockup),
        ),
        (
            "NMI watchdog: Watchdog detected hard LOCKUP on cpu 0",
            Some(Lockup),
        ),
        (
            "NMI watchdog: Enabled. Permanently consumes one hw-PMU counter.",
            None,
        ),
        // Caller ids
        (
            "[    T1] WARNING: CPU: 0 PID: 1 at a.c:1 f+0x0/0x1",
            Some(Warning),
        ),
        (
            "[  C12] BUG: KASAN: wild-memory-access in g+0x1/0x2",
            Some(Kasan),
        ),
        ("[ X1] WARNING: not a caller id", None),
        // Other negatives
        ("", None),
        ("   ", None),
        (
            "EXT4-fs (vda1): mounted filesystem with ordered data mode.",
            None,
        ),
        ("vmcluster-mark:WARNING:x", None),
        ("vmcluster-mark:BUG:", None),
        (
            "a.out[812]: segfault at 0 ip 0000000000401136 sp 00007ffd3c1a2b40 error 6",
            None,
        ),
        ("Run /init as init process", None),
        ("------------[ cut here ]------------", None),
        ("---[ end trace 0000000000000000 ]---", None),
    ];
    let mut failures = Vec::new();
    for (text, want) in table {
        let got = classify(text);
        if got != *want {
            failures.push(format!("{text:?}: want {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Every class appears in the table.
    for class in [
        Panic, Oops, Bug, Warning, Kasan, Ubsan, HungTask, RcuStall, OomKill, CallTrace, Lockup,
    ] {
        assert!(
            table.iter().any(|(_, c)| *c == Some(class)),
            "{class:?} untested"
        );
    }
}

#[test]
fn class_wire_names() {
    use Class::*;
    for (class, name) in [
        (Panic, "panic"),
        (Oops, "oops"),
        (Bug, "bug"),
        (Warning, "warning"),
        (Kasan, "kasan"),
        (Ubsan, "ubsan"),
        (HungTask, "hung_task"),
        (RcuStall, "rcu_stall"),
        (OomKill, "oom_kill"),
        (CallTrace, "call_trace"),
        (Lockup, "lockup"),
    ] {
        assert_eq!(class.as_str(), name);
        assert_eq!(serde_json::to_value(class).unwrap(), name);
        assert_eq!(serde_json::from_value::<Class>(name.into()).unwrap(), class);
    }
}

// ---------------------------------------------------------------------------------------------
// severities and filter levels

const ALL_SEVERITIES: [Severity; 8] = [
    Severity::Emerg,
    Severity::Alert,
    Severity::Crit,
    Severity::Err,
    Severity::Warning,
    Severity::Notice,
    Severity::Info,
    Severity::Debug,
];

#[test]
fn severities_round_trip_their_levels_and_names() {
    let names = [
        "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
    ];
    for (level, (severity, name)) in ALL_SEVERITIES.iter().zip(names).enumerate() {
        let level = level as u8;
        assert_eq!(Severity::from_level(level), Some(*severity));
        assert_eq!(severity.level(), level);
        assert_eq!(severity.as_str(), name);
        assert_eq!(serde_json::to_value(severity).unwrap(), name);
    }
    assert_eq!(Severity::from_level(8), None);
    assert_eq!(Severity::from_level(255), None);
}

#[test]
fn filter_level_boundaries() {
    for severity in ALL_SEVERITIES {
        let level = severity.level();
        assert!(FilterLevel::All.admits(severity));
        assert_eq!(
            FilterLevel::WarnPlus.admits(severity),
            level <= 4,
            "{severity:?}"
        );
        assert_eq!(
            FilterLevel::ErrPlus.admits(severity),
            level <= 3,
            "{severity:?}"
        );
    }
    // The exact edges.
    assert!(FilterLevel::WarnPlus.admits(Severity::Warning));
    assert!(!FilterLevel::WarnPlus.admits(Severity::Notice));
    assert!(FilterLevel::ErrPlus.admits(Severity::Err));
    assert!(!FilterLevel::ErrPlus.admits(Severity::Warning));
}

#[test]
fn filter_level_wire_names() {
    for (filter, name) in [
        (FilterLevel::All, "all"),
        (FilterLevel::WarnPlus, "warn+"),
        (FilterLevel::ErrPlus, "err+"),
    ] {
        assert_eq!(name.parse::<FilterLevel>().unwrap(), filter);
        assert_eq!(filter.to_string(), name);
        assert_eq!(serde_json::to_value(filter).unwrap(), name);
        assert_eq!(
            serde_json::from_value::<FilterLevel>(name.into()).unwrap(),
            filter
        );
    }
    assert_eq!(FilterLevel::default(), FilterLevel::All);
    for bad in ["", "warn", "err", "ALL", "warn+ ", "debug+"] {
        let err = bad.parse::<FilterLevel>().unwrap_err();
        assert!(err.to_string().contains("warn+"), "{err}");
        assert!(serde_json::from_value::<FilterLevel>(bad.into()).is_err());
    }
}

#[test]
fn select_filters_the_capture() {
    let lines = parse(CAPTURE);
    let warn = select(&lines, Since::Start, FilterLevel::WarnPlus, 1000).unwrap();
    assert!(warn.lines.iter().all(|l| l.severity.level() <= 4));
    assert!(warn.lines.iter().any(|l| l.severity == Severity::Warning));
    assert!(!texts(&warn).iter().any(|t| t.contains("EXT4")));
    let err = select(&lines, Since::Start, FilterLevel::ErrPlus, 1000).unwrap();
    assert!(err.lines.iter().all(|l| l.severity.level() <= 3));
    assert!(!texts(&err).iter().any(|t| t.starts_with("WARNING:")));
    assert!(texts(&err).iter().any(|t| t.starts_with("BUG: KASAN")));
    let all = select(&lines, Since::Start, FilterLevel::All, 1000).unwrap();
    assert_eq!(all.lines, lines);
    assert!(err.matched < warn.matched && warn.matched < all.matched);
    // Counts follow the filter: the WARNING and the Oops are level 4.
    assert_eq!(warn.counts.get(&Class::Warning), Some(&1));
    assert_eq!(err.counts.get(&Class::Warning), None);
    assert_eq!(err.counts.get(&Class::Oops), None);
    assert_eq!(err.counts.get(&Class::Bug), Some(&1));
}

// ---------------------------------------------------------------------------------------------
// markers

#[test]
fn marker_line_and_validation() {
    assert_eq!(marker_line("run-1"), "<5>vmcluster-mark:run-1");
    // What the kernel logs for it parses back as a notice with the marker text.
    let logged = parse(&format!("<13>[   10.000000] {}", &marker_line("abc")[3..]));
    assert_eq!(logged[0].severity, Severity::Notice);
    assert_eq!(logged[0].text, "vmcluster-mark:abc");

    for ok in [
        "a",
        "run-1",
        "A_b:c-9",
        "0190f3c4-7d1e-7cc1-b1a0-000000000000",
        &"x".repeat(80),
    ] {
        assert!(is_valid_marker(ok), "{ok:?}");
    }
    for bad in [
        "",
        &"x".repeat(81),
        "a b",
        "a;reboot",
        "a'b",
        "a\"b",
        "$(id)",
        "a`b`",
        "a\nb",
        "a/b",
        "a.b",
        "a>b",
        "é",
    ] {
        assert!(!is_valid_marker(bad), "{bad:?}");
    }
}

#[test]
fn select_after_a_marker() {
    let lines = parse(CAPTURE);
    let c = select(&lines, Since::Marker("run-1"), FilterLevel::All, 1000).unwrap();
    let marker_at = lines
        .iter()
        .position(|l| l.text == "vmcluster-mark:run-1")
        .unwrap();
    assert_eq!(c.lines, lines[marker_at + 1..]);
    assert!(!texts(&c).iter().any(|t| t.contains("vmcluster-mark")));
    assert!(!texts(&c).iter().any(|t| t.contains("EXT4")));
    assert_eq!(c.lines[0].text, "------------[ cut here ]------------");
    assert!(!c.truncated);
    assert_eq!(c.last_micros, Some(190_000_002));
}

#[test]
fn a_missing_marker_is_an_error() {
    let lines = parse(CAPTURE);
    for id in [
        "nope",
        "run",
        "run-",
        "run-10",
        "un-1",
        "vmcluster-mark:run-1",
    ] {
        let err = select(&lines, Since::Marker(id), FilterLevel::All, 1000).unwrap_err();
        assert_eq!(
            err,
            MarkerNotFound {
                marker: id.to_owned()
            }
        );
        assert!(
            err.to_string().contains("not found in the kernel log"),
            "{err}"
        );
        assert!(err.to_string().contains(id));
        assert_eq!(err.code(), ErrorCode::NotFound);
    }
    // An empty log has no marker either.
    assert!(select(&[], Since::Marker("run-1"), FilterLevel::All, 10).is_err());
    // A userspace line merely mentioning the marker is not the marker.
    let lines = parse("<6>[    1.000000] echo vmcluster-mark:m\n<6>[    2.000000] after\n");
    assert!(select(&lines, Since::Marker("m"), FilterLevel::All, 10).is_err());
}

#[test]
fn marker_on_the_last_line_selects_nothing() {
    let out = format!(
        "{}{}",
        rec(6, 1_000_000, "boot"),
        rec(13, 2_000_000, "vmcluster-mark:m")
    );
    let lines = parse(&out);
    let c = select(&lines, Since::Marker("m"), FilterLevel::All, 10).unwrap();
    assert!(c.lines.is_empty());
    assert_eq!(c.matched, 0);
    assert!(c.counts.is_empty());
    assert!(!c.truncated);
    assert_eq!(c.last_micros, Some(2_000_000));
}

#[test]
fn the_most_recent_marker_wins() {
    let out = [
        rec(13, 1_000_000, "vmcluster-mark:m"),
        rec(4, 2_000_000, "WARNING: first"),
        rec(13, 3_000_000, "vmcluster-mark:m"),
        rec(4, 4_000_000, "WARNING: second"),
        rec(13, 5_000_000, "vmcluster-mark:other"),
        rec(6, 6_000_000, "tail"),
    ]
    .concat();
    let lines = parse(&out);
    let c = select(&lines, Since::Marker("m"), FilterLevel::All, 10).unwrap();
    // Other markers are ordinary lines.
    assert_eq!(
        texts(&c),
        ["WARNING: second", "vmcluster-mark:other", "tail"]
    );
    assert_eq!(c.counts.get(&Class::Warning), Some(&1));
}

#[test]
fn marker_and_filter_combine() {
    let lines = parse(CAPTURE);
    let c = select(&lines, Since::Marker("run-1"), FilterLevel::ErrPlus, 1000).unwrap();
    assert!(c.lines.iter().all(|l| l.severity.level() <= 3));
    assert_eq!(
        c.lines[0].text,
        "BUG: kernel NULL pointer dereference, address: 0000000000000008"
    );
    // The cursor covers the whole log even when the filter hides its last lines.
    assert_eq!(c.last_micros, Some(190_000_002));
}

// ---------------------------------------------------------------------------------------------
// cursor

#[test]
fn cursor_is_strictly_after() {
    let lines = parse(CAPTURE);
    let c = select(&lines, Since::After(12_000_003), FilterLevel::All, 1000).unwrap();
    assert!(c.lines.iter().all(|l| l.micros > 12_000_003));
    // The whole Call Trace record, continuation included, is at 12.000003: none of it is in.
    assert_eq!(c.lines[0].text, "---[ end trace 0000000000000000 ]---");
    let c = select(&lines, Since::After(12_000_002), FilterLevel::All, 1000).unwrap();
    assert_eq!(c.lines[0].text, "Call Trace:");
    assert!(c.lines[3].continuation);

    let everything = select(&lines, Since::After(0), FilterLevel::All, 1000).unwrap();
    assert!(everything.lines.iter().all(|l| l.micros > 0));
    assert_eq!(
        everything.lines[0].text,
        "kasan: KernelAddressSanitizer initialized"
    );
}

#[test]
fn cursor_past_the_end_selects_nothing() {
    let lines = parse(CAPTURE);
    let c = select(&lines, Since::After(190_000_002), FilterLevel::All, 1000).unwrap();
    assert!(c.lines.is_empty());
    assert!(!c.truncated);
    assert_eq!(c.last_micros, Some(190_000_002));
    // A cursor from a longer previous boot: the new, shorter log yields nothing, and the cursor
    // handed back is this boot's.
    let c = select(&lines, Since::After(u64::MAX), FilterLevel::All, 1000).unwrap();
    assert!(c.lines.is_empty());
    assert_eq!(c.last_micros, Some(190_000_002));
}

#[test]
fn empty_log() {
    let c = select(&[], Since::Start, FilterLevel::All, 10).unwrap();
    assert_eq!(
        c,
        Collected {
            lines: vec![],
            matched: 0,
            counts: Default::default(),
            truncated: false,
            last_micros: None,
        }
    );
    let c = select(&[], Since::After(5), FilterLevel::ErrPlus, 0).unwrap();
    assert!(c.lines.is_empty() && !c.truncated && c.last_micros.is_none());
}

// ---------------------------------------------------------------------------------------------
// capping and counts

#[test]
fn capping_keeps_the_oldest_and_counts_everything() {
    let out: String = (1..=10u64)
        .map(|i| rec(4, i * 1_000_000, &format!("WARNING: number {i}")))
        .collect();
    let lines = parse(&out);
    let c = select(&lines, Since::Start, FilterLevel::All, 3).unwrap();
    assert_eq!(
        texts(&c),
        [
            "WARNING: number 1",
            "WARNING: number 2",
            "WARNING: number 3"
        ]
    );
    assert!(c.truncated);
    assert_eq!(c.matched, 10);
    assert_eq!(c.counts.get(&Class::Warning), Some(&10));
    assert_eq!(c.last_micros, Some(3_000_000));

    // Paging with the cursor walks the rest without loss or repetition.
    let mut seen = texts(&c).iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut cursor = c.last_micros.unwrap();
    loop {
        let page = select(&lines, Since::After(cursor), FilterLevel::All, 3).unwrap();
        seen.extend(page.lines.iter().map(|l| l.text.clone()));
        cursor = page.last_micros.unwrap();
        if !page.truncated {
            break;
        }
    }
    let want: Vec<String> = (1..=10).map(|i| format!("WARNING: number {i}")).collect();
    assert_eq!(seen, want);

    // Exactly at the cap: not truncated.
    let c = select(&lines, Since::Start, FilterLevel::All, 10).unwrap();
    assert!(!c.truncated);
    assert_eq!(c.lines.len(), 10);
}

#[test]
fn a_cut_does_not_split_a_record() {
    // A three-line record at 2 s; a cap of 3 would cut it after its first line.
    let out = [
        rec(4, 1_000_000, "one"),
        rec(4, 1_500_000, "two"),
        rec(4, 2_000_000, "Call Trace:"),
        " frame_a+0x1/0x2\n".to_owned(),
        " frame_b+0x1/0x2\n".to_owned(),
        rec(4, 3_000_000, "after"),
    ]
    .concat();
    let lines = parse(&out);
    let c = select(&lines, Since::Start, FilterLevel::All, 3).unwrap();
    assert_eq!(texts(&c), ["one", "two"]);
    assert!(c.truncated);
    assert_eq!(c.last_micros, Some(1_500_000));
    let next = select(&lines, Since::After(1_500_000), FilterLevel::All, 3).unwrap();
    assert_eq!(
        texts(&next),
        ["Call Trace:", " frame_a+0x1/0x2", " frame_b+0x1/0x2"]
    );
    assert!(next.truncated);
    assert_eq!(next.last_micros, Some(2_000_000));

    // A record longer than the cap is cut anyway rather than returning nothing.
    let c = select(&lines, Since::After(1_500_000), FilterLevel::All, 2).unwrap();
    assert_eq!(texts(&c), ["Call Trace:", " frame_a+0x1/0x2"]);
    assert!(c.truncated);
}

#[test]
fn a_cap_of_zero_returns_only_counts() {
    let lines = parse(CAPTURE);
    let c = select(&lines, Since::Marker("run-1"), FilterLevel::All, 0).unwrap();
    assert!(c.lines.is_empty());
    assert!(c.truncated);
    assert_eq!(c.last_micros, None);
    assert_eq!(c.matched, CAPTURE_LINES - 12);
    assert_eq!(c.counts.values().sum::<usize>(), 11);
}

#[test]
fn counts_in_the_capture_after_the_marker() {
    let lines = parse(CAPTURE);
    let c = select(&lines, Since::Marker("run-1"), FilterLevel::All, 5).unwrap();
    assert!(c.truncated);
    // Five lines would split the Call Trace record at 12.000003: the cut backs off before it.
    assert_eq!(c.lines.len(), 3);
    assert_eq!(c.last_micros, Some(12_000_002));
    let counts: Vec<(Class, usize)> = c.counts.iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(
        counts,
        [
            (Class::Panic, 1),
            (Class::Oops, 1),
            (Class::Bug, 1),
            (Class::Warning, 1),
            (Class::Kasan, 1),
            (Class::Ubsan, 1),
            (Class::HungTask, 1),
            (Class::RcuStall, 1),
            (Class::OomKill, 1),
            (Class::CallTrace, 1),
            (Class::Lockup, 1),
        ]
    );
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["counts"]["hung_task"], 1);
    assert_eq!(json["counts"]["call_trace"], 1);
    assert_eq!(json["truncated"], true);
    let back: Collected = serde_json::from_value(json).unwrap();
    assert_eq!(back, c);
}

#[test]
fn collected_has_a_json_schema() {
    let schema = serde_json::to_value(schemars::schema_for!(Collected)).unwrap();
    let text = schema.to_string();
    for word in [
        "lines",
        "counts",
        "truncated",
        "last_micros",
        "micros",
        "severity",
    ] {
        assert!(text.contains(word), "{word} missing from {text}");
    }
}

// ---------------------------------------------------------------------------------------------
// properties

/// Lines that look almost like `dmesg -r` records, broken in every way.
fn near_record() -> impl Strategy<Value = String> {
    (
        prop::option::of("<[0-9x]{0,5}>?"),
        prop::option::of("\\[ {0,6}[0-9]{0,22}\\.?[0-9]{0,12}\\]?"),
        prop::option::of("\\[ {0,5}[TCX]?[0-9]{0,6}\\]"),
        prop::sample::select(vec![
            "",
            " ",
            "WARNING: ",
            "Kernel panic - not syncing: ",
            "BUG: KASAN: ",
            "vmcluster-mark:",
            "Call Trace:",
            "rcu: INFO: rcu_",
        ]),
        "\\PC{0,30}",
    )
        .prop_map(|(pri, ts, caller, head, tail)| {
            format!(
                "{}{}{}{head}{tail}",
                pri.unwrap_or_default(),
                ts.unwrap_or_default(),
                caller.unwrap_or_default()
            )
        })
}

fn filter_level() -> impl Strategy<Value = FilterLevel> {
    prop::sample::select(vec![
        FilterLevel::All,
        FilterLevel::WarnPlus,
        FilterLevel::ErrPlus,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC*|(.|\n|\r)*") {
        let lines = parse(&text);
        prop_assert_eq!(lines.len(), text.lines().filter(|l| !l.trim().is_empty()).count());
        for line in &lines {
            prop_assert_eq!(line.class, classify(&line.text));
        }
        let _ = select(&lines, Since::Start, FilterLevel::All, 5);
    }

    #[test]
    fn near_records_never_panic(
        raw in prop::collection::vec(near_record(), 0..30),
        since in prop::option::of(0u64..200_000_000),
        marker in prop::option::of("[a-z]{0,2}"),
        filter in filter_level(),
        max_lines in 0usize..40,
    ) {
        let text = raw.join("\n");
        let lines = parse(&text);
        let since = match (&marker, since) {
            (Some(m), _) => Since::Marker(m),
            (None, Some(t)) => Since::After(t),
            (None, None) => Since::Start,
        };
        if let Ok(c) = select(&lines, since, filter, max_lines) {
            prop_assert!(c.lines.len() <= max_lines);
            prop_assert!(c.lines.len() <= c.matched);
            prop_assert_eq!(c.truncated, c.matched > max_lines);
            prop_assert!(c.lines.iter().all(|l| filter.admits(l.severity)));
            if let Since::After(t) = since {
                prop_assert!(c.lines.iter().all(|l| l.micros > t));
            }
            let classified = c.lines.iter().filter(|l| l.class.is_some()).count();
            prop_assert!(classified <= c.counts.values().sum::<usize>());
            prop_assert!(c.counts.values().sum::<usize>() <= c.matched);
            if c.truncated {
                prop_assert!(!c.lines.is_empty() || max_lines == 0);
            }
        }
    }

    #[test]
    fn well_formed_records_round_trip(
        records in prop::collection::vec(
            (0u16..2048, 0u64..10_000_000_000_000, "[^\n\r]{0,40}"),
            1..20,
        ),
    ) {
        let mut text = String::new();
        for (pri, micros, body) in &records {
            text.push_str(&format!(
                "<{pri}>[{:>5}.{:06}] {body}\n",
                micros / 1_000_000,
                micros % 1_000_000
            ));
        }
        let lines = parse(&text);
        prop_assert_eq!(lines.len(), records.len());
        for (line, (pri, micros, body)) in lines.iter().zip(&records) {
            prop_assert_eq!(line.micros, *micros);
            prop_assert_eq!(line.severity.level(), (pri & 7) as u8);
            prop_assert_eq!(u16::from(line.facility), pri >> 3);
            prop_assert_eq!(&line.text, body);
            prop_assert!(!line.continuation);
        }
    }

    #[test]
    fn valid_markers_are_found_and_excluded(
        id in "[A-Za-z0-9:_-]{1,80}",
        before in 0usize..5,
        after in 0usize..5,
    ) {
        prop_assert!(is_valid_marker(&id));
        let mut text = String::new();
        for i in 0..before {
            text.push_str(&rec(6, i as u64, "before"));
        }
        text.push_str(&format!("<13>[   50.000000] {}\n", &marker_line(&id)[3..]));
        for i in 0..after {
            text.push_str(&rec(6, 60_000_000 + i as u64, "after"));
        }
        let lines = parse(&text);
        let c = select(&lines, Since::Marker(&id), FilterLevel::All, 100).unwrap();
        prop_assert_eq!(c.lines.len(), after);
        prop_assert!(c.lines.iter().all(|l| l.text == "after"));
    }
}
