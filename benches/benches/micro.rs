//! Criterion micro-benchmarks: topology validation, XML generation, journal appends (durable,
//! group commit), journal replay, `cluster_status` through the actors (libvirt test driver), and
//! the event stream (records mapped to events, a page read). The journal's targets are in
//! `src/bin/journal_bench.rs`.

use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use vmcluster_engine::topology::{DomainType, HostFacts, Topology};
use vmcluster_engine::xml::{self, Accel, Owner};
use vmcluster_journal::{BodyV1, Journal};

const TOPOLOGY: &str = "cluster_name: bench
base_image: /bench/base.qcow2
network: {name: bench-net, bridge: vtbench0, subnet: 192.168.200.0/24}
nodes:
  - {name: n1, ip: 192.168.200.11}
  - {name: n2, ip: 192.168.200.12, extra_disks: [{path: /bench/d2.qcow2, size_gb: 1}]}
  - {name: n3, ip: 192.168.200.13}
";

fn facts(exists: &(dyn Fn(&Path) -> bool + Sync)) -> HostFacts<'_> {
    HostFacts {
        networks: vec![],
        exists,
        overlay_dir: "/bench/overlays".into(),
        ssh_key_path: "/bench/key".into(),
        ssh_user: "root".into(),
        domain_type: DomainType::Qemu,
    }
}

fn engine_pure(c: &mut Criterion) {
    let yes = |_: &Path| true;
    c.bench_function("topology_parse_and_validate_3_nodes", |b| {
        b.iter(|| {
            Topology::from_yaml(TOPOLOGY)
                .unwrap()
                .validate(&facts(&yes))
                .unwrap()
        })
    });
    let spec = Topology::from_yaml(TOPOLOGY)
        .unwrap()
        .validate(&facts(&yes))
        .unwrap();
    let owner = Owner {
        cluster: "bench".into(),
        node: Some("n2".into()),
        op: uuid::Uuid::nil(),
    };
    c.bench_function("domain_xml", |b| {
        b.iter(|| xml::domain_xml(&spec, &spec.nodes[1], Accel::Qemu, &owner))
    });
}

fn body(i: u64) -> BodyV1 {
    BodyV1::StepFinished {
        op_id: uuid::Uuid::from_u128(i as u128),
        step: "define_domain".into(),
        node: Some(format!("n{}", i % 5)),
        ok: true,
        detail: None,
    }
}

fn journal(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("journal");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    // 2,000 durable appends from 32 concurrent tasks: group commit shares each flush.
    g.throughput(criterion::Throughput::Elements(2_000));
    g.bench_function("durable_append_2000_from_32_tasks", |b| {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        b.to_async(&rt).iter(|| {
            let j = j.clone();
            async move {
                let hs: Vec<_> = (0..32u64)
                    .map(|t| {
                        let j = j.clone();
                        tokio::spawn(async move {
                            for i in 0..62u64 {
                                j.append(body(t * 100 + i)).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for h in hs {
                    h.await.unwrap();
                }
            }
        })
    });
    g.throughput(criterion::Throughput::Elements(100_000));
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, _) = Journal::open(dir.path()).unwrap();
        rt.block_on(async {
            for chunk in 0..100u64 {
                j.append_batch((0..1000).map(|i| body(chunk * 1000 + i)).collect())
                    .await
                    .unwrap();
            }
        });
    }
    g.bench_function("reopen_and_replay_100k", |b| {
        b.iter(|| {
            let (j, rec) = Journal::open(dir.path()).unwrap();
            assert_eq!(rec.records, 100_000);
            assert_eq!(j.iter_all().count(), 100_000);
        })
    });
    g.finish();
}

fn status(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let scratch = vmcluster_tests::Scratch::new("bench-status");
    let base = scratch.fake_base_image();
    scratch.write_topology(
        "bench",
        &TOPOLOGY
            .replace("/bench/base.qcow2", &base.display().to_string())
            .replace(
                "/bench/d2.qcow2",
                &scratch.path().join("d2.qcow2").display().to_string(),
            ),
    );
    let engine = rt.block_on(async {
        let e = vmcluster_actors::Engine::start(scratch.config("test:///default"))
            .await
            .unwrap();
        e.define("bench").await.result.unwrap();
        e
    });
    c.bench_function("cluster_status_3_nodes_test_driver", |b| {
        b.to_async(&rt)
            .iter(|| async { engine.status("bench").await.unwrap() })
    });
}

fn events(c: &mut Criterion) {
    use vmcluster_journal::{Event, EventFilter, OpIndex, RecordV1};
    let mut g = c.benchmark_group("events");
    // The pure mapping: 1,000 records of 100 operations into events, op index included.
    let op = |i: u64| uuid::Uuid::from_u128(i as u128 + 1);
    let records: Vec<RecordV1> = (0..1000u64)
        .map(|i| RecordV1 {
            seq: i + 1,
            ts_ms: 1_750_000_000_000 + i as i64,
            body: if i % 10 == 0 {
                BodyV1::CommandStarted {
                    op_id: op(i / 10),
                    tool: "cluster_define".into(),
                    cluster: Some(format!("c{}", i / 10 % 7)),
                    params_json: r#"{"topology_name":"c"}"#.into(),
                }
            } else {
                BodyV1::StepFinished {
                    op_id: op(i / 10),
                    step: "define_domain".into(),
                    node: Some("n1".into()),
                    ok: true,
                    detail: None,
                }
            },
        })
        .collect();
    g.throughput(criterion::Throughput::Elements(1000));
    g.bench_function("from_record_1000", |b| {
        b.iter(|| {
            let mut ops = OpIndex::new();
            records
                .iter()
                .map(|r| {
                    ops.note(r);
                    Event::from_record(r, &ops)
                })
                .filter(|e| e.cluster.is_some())
                .count()
        })
    });
    // A page of 100 events of one cluster out of a 100,000-record journal (warm op index).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path()).unwrap();
    rt.block_on(async {
        for chunk in 0..100u64 {
            j.append_batch((0..1000).map(|i| body(chunk * 1000 + i)).collect())
                .await
                .unwrap();
        }
    });
    let feed = vmcluster_actors::events::EventFeed::new(j);
    feed.read(0, usize::MAX, &EventFilter::all()).unwrap();
    g.throughput(criterion::Throughput::Elements(100));
    g.bench_function("feed_read_page_100_at_50k", |b| {
        b.iter(|| feed.read(50_000, 100, &EventFilter::all()).unwrap())
    });
    g.finish();
}

criterion_group!(benches, engine_pure, journal, status, events);
criterion_main!(benches);
