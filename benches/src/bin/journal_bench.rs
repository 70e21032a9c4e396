//! The journal bench. Writes a JSON report (path: first argument, default
//! `target/bench/journal.json`) and prints it. Run it in release (`scripts/bench` does).
//!
//! Measured, each against its target from the crash-safe journal issue:
//! - **durable appends** (each awaited until flushed) from many concurrent appenders, sharing
//!   flushes by group commit: ops/s for 1, 16, 64 and 256 appenders (target ≥ 20,000 ops/s);
//! - **replay of 1,000,000 records** of a realistic mix (commands with parameters and results,
//!   steps, objects, node events): reopening the journal (validating every record) plus
//!   decoding every record in order, as a restarting server does (target ≤ 2 s); also the
//!   event stream over the same journal (every record as an event, with the op index);
//! - **restart to serving** with 100 defined clusters of 3 nodes: `Engine::start` on libvirt's
//!   `test:///default` driver (kept alive by a witness connection, as a real libvirtd keeps its
//!   domains) until the first `cluster_list` and `cluster_status` are answered (target ≤ 300 ms).
//!
//! Each figure is the median of several runs, with the runs themselves in the report.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use vmcluster_actors::Engine;
use vmcluster_actors::events::EventFeed;
use vmcluster_benches::op_records;
use vmcluster_journal::{EventFilter, Journal, JournalOptions};
use vmcluster_tests::{Scratch, TopologySpec, topology_yaml};

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Durable appends from `tasks` concurrent appenders, `total` in all: ops/s.
async fn appends(dir: &std::path::Path, tasks: u64, total: u64) -> f64 {
    let (j, _) = Journal::open_with(dir, raw()).unwrap();
    let per = total / tasks;
    let t0 = Instant::now();
    let hs: Vec<_> = (0..tasks)
        .map(|t| {
            let j = j.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    let body = op_records(t * per + i).swap_remove((i % 10) as usize);
                    j.append(body).await.unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.await.unwrap();
    }
    let dt = t0.elapsed();
    (per * tasks) as f64 / dt.as_secs_f64()
}

/// Process CPU time (user + system, every thread) so far, from `/proc/self/stat` (USER_HZ is
/// 100 on Linux): on a shared machine, wall time says how long it took here and now, CPU time
/// what it costs.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) end with ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the ')'.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// One replay, as a restarting server reads the journal, timed (wall, CPU).
#[derive(Debug, Clone, Copy)]
struct Timed {
    wall: Duration,
    cpu: Duration,
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Timed) {
    let (w, c) = (Instant::now(), cpu());
    let v = f();
    (
        v,
        Timed {
            wall: w.elapsed(),
            cpu: cpu().saturating_sub(c),
        },
    )
}

/// Journal options that never compact: the replay bench reads a million raw records.
fn raw() -> JournalOptions {
    JournalOptions {
        compact_every: u64::MAX,
        ..JournalOptions::default()
    }
}

/// Replay: `Journal::open` decodes every record once and folds it into the projection (this is
/// what a restart does before serving).
fn replay_open(dir: &std::path::Path, options: JournalOptions, expect: u64) -> Timed {
    // The journal is closed after the clock stops (closing is not part of a replay).
    let ((n, _journal), t) = timed(|| {
        let (j, rec) = Journal::open_with(dir, options).unwrap();
        (rec.records, j)
    });
    assert_eq!(n, expect);
    t
}

/// An auditor's full read after opening: `iter_all` decodes every record again.
fn read_all(dir: &std::path::Path) -> Timed {
    let (j, _) = Journal::open_with(dir, raw()).unwrap();
    let (n, read) = timed(|| j.iter_all().map(Result::unwrap).count() as u64);
    assert_eq!(n, 1_000_000);
    read
}

/// Writes 100k operations (1M records) in batches of 10k.
async fn write_1m(dir: &std::path::Path, options: JournalOptions) -> Duration {
    let t0 = Instant::now();
    let (j, _) = Journal::open_with(dir, options).unwrap();
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..100_000u64 {
        batch.extend(op_records(i));
        if batch.len() >= 10_000 {
            j.append_batch(std::mem::take(&mut batch)).await.unwrap();
        }
    }
    j.append_batch(batch).await.unwrap();
    assert!(j.last_seq() >= Some(1_000_000));
    t0.elapsed()
}

async fn restart(scratch: &Scratch, first: &str) -> (Duration, Duration, Duration, Duration) {
    let (t0, c0) = (Instant::now(), cpu());
    let engine = Engine::start(scratch.config("test:///default"))
        .await
        .expect("engine");
    let started = t0.elapsed();
    let list = engine.list().await.expect("cluster_list");
    let listed = t0.elapsed();
    assert_eq!(list.clusters.len(), 100);
    engine.status(first).await.expect("cluster_status");
    let status = t0.elapsed();
    let cpu_used = cpu().saturating_sub(c0);
    engine.shutdown().await;
    (started, listed, status, cpu_used)
}

/// Section 1: durable appends with group commit. Returns the report and the best rate with
/// many (≥ 64) appenders.
async fn bench_appends(tmp: &std::path::Path) -> (serde_json::Value, f64) {
    let mut rows = serde_json::Map::new();
    let mut best_many = 0f64;
    for (tasks, total) in [(1u64, 2_000u64), (16, 40_000), (64, 80_000), (256, 100_000)] {
        let mut runs = Vec::new();
        for r in 0..3 {
            let dir = tmp.join(format!("append-{tasks}-{r}"));
            runs.push(appends(&dir, tasks, total).await.round());
            std::fs::remove_dir_all(&dir).unwrap();
        }
        runs.sort_by(f64::total_cmp);
        let med = runs[1];
        if tasks >= 64 {
            best_many = best_many.max(med);
        }
        eprintln!("appends: {tasks} appenders: {med} ops/s ({runs:?})");
        rows.insert(
            format!("appenders_{tasks}"),
            json!({ "ops_per_s": med, "runs": runs, "appends": total }),
        );
    }
    (serde_json::Value::Object(rows), best_many)
}

/// Section 2: replay of 1M records (compaction off), and restart after a history of 1M records
/// with compaction on. Returns the report and the median replay time (ms).
async fn bench_replay(tmp: &std::path::Path) -> (serde_json::Value, f64) {
    let big = tmp.join("replay-1m");
    let write = write_1m(&big, raw()).await;
    let size: u64 = walk_size(&big);
    eprintln!("replay: wrote 1M records in {write:?}, {size} bytes on disk");
    let compacted = tmp.join("replay-1m-compacted");
    write_1m(&compacted, JournalOptions::default()).await;
    let compacted_records = {
        let (_, rec) = Journal::open(&compacted).unwrap();
        rec.records
    };
    let (mut opens, mut reads, mut compacts) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        let (big, compacted) = (big.clone(), compacted.clone());
        let (o, r, c) = tokio::task::spawn_blocking(move || {
            (
                replay_open(&big, raw(), 1_000_000),
                read_all(&big),
                replay_open(&compacted, JournalOptions::default(), compacted_records),
            )
        })
        .await
        .unwrap();
        eprintln!("replay: open {o:?}; iter_all {r:?}; open after compaction {c:?}");
        opens.push(o);
        reads.push(r);
        compacts.push(c);
    }
    let summary = |v: &[Timed]| {
        let mut wall: Vec<Duration> = v.iter().map(|t| t.wall).collect();
        let mut cpu: Vec<Duration> = v.iter().map(|t| t.cpu).collect();
        json!({
            "wall_ms": ms(median(&mut wall)),
            "cpu_ms": ms(median(&mut cpu)),
            "runs_wall_ms": runs_ms(&v.iter().map(|t| t.wall).collect::<Vec<_>>()),
            "runs_cpu_ms": runs_ms(&v.iter().map(|t| t.cpu).collect::<Vec<_>>()),
        })
    };
    let replay_ms = {
        let mut wall: Vec<Duration> = opens.iter().map(|t| t.wall).collect();
        ms(median(&mut wall))
    };
    // The event stream over the same journal: every record as an event, from a cold index.
    let (events_ms, event_count) = tokio::task::spawn_blocking({
        let big = big.clone();
        move || {
            let (j, _) = Journal::open_with(&big, raw()).unwrap();
            let feed = EventFeed::new(j);
            let t0 = Instant::now();
            let mut since = 0;
            let mut n = 0;
            loop {
                let page = feed.read(since, 10_000, &EventFilter::all()).unwrap();
                n += page.events.len();
                since = page.next_since;
                if !page.more {
                    break;
                }
            }
            (ms(t0.elapsed()), n)
        }
    })
    .await
    .unwrap();
    assert_eq!(event_count, 1_000_000);
    eprintln!("events: 1M events read in {events_ms} ms");
    std::fs::remove_dir_all(&big).unwrap();
    std::fs::remove_dir_all(&compacted).unwrap();
    let report = json!({
        "records": 1_000_000,
        "bytes_on_disk": size,
        "write_s": (write.as_secs_f64() * 100.0).round() / 100.0,
        "open_replays_into_projection": summary(&opens),
        "iter_all_after_open": summary(&reads),
        "open_after_1m_with_compaction": summary(&compacts),
        "records_kept_after_compaction": compacted_records,
        "events_read_all_ms": events_ms,
    });
    (report, replay_ms)
}

fn runs_ms(v: &[Duration]) -> Vec<f64> {
    v.iter().map(|d| ms(*d)).collect()
}

/// Section 3: restart to serving with 100 defined clusters of 3 nodes. Returns the report and
/// the median time to the first answered `cluster_status` (ms).
async fn bench_restart(runs: usize) -> (serde_json::Value, f64) {
    let witness = virt::connect::Connect::open(Some("test:///default")).expect("test driver");
    let scratch = Scratch::new("journal-bench-restart");
    let base = scratch.fake_base_image();
    let names: Vec<String> = (0..100).map(|i| format!("rb{i:03}")).collect();
    let octets = (10u8..=250).filter(|o| *o != 122);
    for (name, octet) in names.iter().zip(octets) {
        scratch.write_topology(
            name,
            &topology_yaml(&TopologySpec {
                cluster: name,
                octet,
                nodes: &["n1", "n2", "n3"],
                base_image: &base,
                kernel: None,
                memory_mb: 256,
            }),
        );
    }
    let t0 = Instant::now();
    let engine = Engine::start(scratch.config("test:///default"))
        .await
        .expect("engine");
    for chunk in names.chunks(10) {
        let defines = chunk.iter().map(|n| engine.define(n));
        for r in futures::future::join_all(defines).await {
            r.result.expect("define");
        }
    }
    let records = engine.journal().last_seq().unwrap_or(0);
    engine.shutdown().await;
    let setup = t0.elapsed();
    eprintln!("restart: 100 clusters defined in {setup:?} ({records} journal records)");
    let (mut starts, mut lists, mut statuses, mut cpus) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (s, l, st, c) = restart(&scratch, &names[0]).await;
        eprintln!("restart: engine {s:?}, cluster_list {l:?}, cluster_status {st:?} (cpu {c:?})");
        starts.push(s);
        lists.push(l);
        statuses.push(st);
        cpus.push(c);
    }
    drop(witness);
    let (start_runs, list_runs, status_runs) =
        (runs_ms(&starts), runs_ms(&lists), runs_ms(&statuses));
    let serving_ms = ms(median(&mut statuses));
    let report = json!({
        "clusters": 100,
        "nodes_per_cluster": 3,
        "journal_records": records,
        "engine_started_ms": ms(median(&mut starts)),
        "cluster_list_answered_ms": ms(median(&mut lists)),
        "cluster_status_answered_ms": serving_ms,
        "runs_engine_started_ms": start_runs,
        "runs_cluster_list_ms": list_runs,
        "runs_cluster_status_ms": status_runs,
        "cpu_ms": ms(median(&mut cpus)),
        "runs_cpu_ms": runs_ms(&cpus),
    });
    (report, serving_ms)
}

/// `journal-bench [OUT] [appends|replay|restart]...` (default: every section).
#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "target/bench/journal.json".into()),
    );
    let mut sections: Vec<String> = args.collect();
    if sections.is_empty() {
        sections = ["appends", "replay", "restart"].map(String::from).to_vec();
    }
    let tmp = tempfile::Builder::new()
        .prefix("journal-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mut report = serde_json::Map::new();
    let mut targets = serde_json::Map::new();
    report.insert("bench".into(), json!("vmcluster journal"));
    report.insert("when".into(), json!(chrono::Utc::now().to_rfc3339()));
    report.insert(
        "machine".into(),
        json!({
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "load_average": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
            "disk": "/var/tmp",
        }),
    );
    for s in &sections {
        match s.as_str() {
            "appends" => {
                let (r, best) = bench_appends(tmp.path()).await;
                report.insert("durable_appends".into(), r);
                targets.insert(
                    "durable_appends_ge_20k_ops_s".into(),
                    json!(best >= 20_000.0),
                );
            }
            "replay" => {
                let (r, t) = bench_replay(tmp.path()).await;
                report.insert("replay_1m".into(), r);
                targets.insert("replay_1m_le_2s".into(), json!(t <= 2_000.0));
            }
            "restart" => {
                let (r, t) = bench_restart(5).await;
                report.insert("restart_to_serving".into(), r);
                targets.insert("restart_to_serving_le_300ms".into(), json!(t <= 300.0));
            }
            other => panic!("unknown section {other:?}: appends, replay or restart"),
        }
    }
    report.insert("targets".into(), serde_json::Value::Object(targets));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).expect("report dir");
    }
    let text = serde_json::to_string_pretty(&report).unwrap();
    std::fs::write(&out, &text).expect("write report");
    println!("{text}");
}

fn walk_size(p: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            total += if m.is_dir() {
                walk_size(&e.path())
            } else {
                m.len()
            };
        }
    }
    total
}
