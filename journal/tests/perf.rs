//! Hand-run throughput measurements (ignored by default). Run with
//! `cargo test -p vmcluster-journal --release --test perf -- --ignored --nocapture`.

use std::time::Instant;
use uuid::Uuid;
use vmcluster_journal::{BodyV1, Journal};

fn body(i: u64) -> BodyV1 {
    BodyV1::StepFinished {
        op_id: Uuid::from_u128(i as u128),
        step: "define_domain".into(),
        node: Some(format!("lab-{}", i % 5)),
        ok: true,
        detail: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement; run by hand in release mode"]
async fn perf_concurrent_appends() {
    for (tasks, per_task) in [(1u64, 2_000u64), (32, 625)] {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        let t0 = Instant::now();
        let mut hs = Vec::new();
        for t in 0..tasks {
            let j = j.clone();
            hs.push(tokio::spawn(async move {
                for i in 0..per_task {
                    j.append(body(t * per_task + i)).await.unwrap();
                }
            }));
        }
        for h in hs {
            h.await.unwrap();
        }
        let dt = t0.elapsed();
        let n = tasks * per_task;
        println!(
            "{n} durable appends from {tasks} tasks: {:.2} s, {:.0} appends/s, {:.1} us/append",
            dt.as_secs_f64(),
            n as f64 / dt.as_secs_f64(),
            dt.as_secs_f64() * 1e6 / n as f64
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement; run by hand in release mode"]
async fn perf_reopen_and_scan_100k() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, _) = Journal::open(dir.path()).unwrap();
        let t0 = Instant::now();
        for b in 0..100u64 {
            j.append_batch((0..1000).map(|i| body(b * 1000 + i)).collect())
                .await
                .unwrap();
        }
        println!(
            "fill 100k via append_batch(1000): {:.2} s",
            t0.elapsed().as_secs_f64()
        );
    }
    let t0 = Instant::now();
    let (j, rec) = Journal::open(dir.path()).unwrap();
    let open = t0.elapsed();
    assert_eq!(rec.records, 100_000);
    let t1 = Instant::now();
    let mut n = 0usize;
    for r in j.iter_all() {
        r.unwrap();
        n += 1;
    }
    let scan = t1.elapsed();
    assert_eq!(n, 100_000);
    let t2 = Instant::now();
    let page = j.read_since(50_000, 1000).unwrap();
    let page_t = t2.elapsed();
    assert_eq!(page.len(), 1000);
    println!(
        "reopen+validate 100k: {:.3} s; replay (iter_all) 100k: {:.3} s ({:.2} M rec/s); read_since page of 1000: {:.2} ms",
        open.as_secs_f64(),
        scan.as_secs_f64(),
        n as f64 / scan.as_secs_f64() / 1e6,
        page_t.as_secs_f64() * 1e3
    );
}
