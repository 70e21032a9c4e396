//! The end-to-end bench on real guests. Writes a JSON report (path: first argument, default
//! `target/bench/e2e.json`) and prints it.
//!
//! Measured in one run, on fresh clusters of the project's test guest:
//! - `cluster_define` of 3 nodes (and of 1);
//! - `cluster_start` → every node ready, for 1 node and for 3 nodes;
//! - the by-hand floor for the same boots: `virsh start` of domains defined beforehand plus a
//!   `ssh true` poll loop every 200 ms, so each vmcluster figure is reported as a ratio;
//! - `cluster_status` latency (p50/p99) on 3 running nodes, and again after one node was
//!   destroyed behind the server's back;
//! - `node_exec true` over the pooled session against a freshly spawned `ssh node true`, and
//!   `node_exec_all true` on 3 nodes against one `node_exec`;
//! - `node_upload` and `node_download` of 16 MiB (SFTP, the node's `sha256sum` check included).
//! - `snapshot_create` and `snapshot_revert` (to every node ready again) on 1 node and on 3,
//!   with memory and disk-only (median of a few runs each), and the by-hand floors of a memory
//!   revert (`virsh snapshot-revert --running` of every domain at once plus the `ssh true` poll)
//!   and of a memory snapshot (`virsh suspend`, `snapshot-create-as`, `resume`, all at once).
//!
//! Runs only inside the isolated test host (`scripts/bench` takes care of it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use vmcluster_actors::exec::ExecRequest;
use vmcluster_actors::files::{Direction, Transfer};
use vmcluster_actors::snapshot::{CreateRequest, RevertRequest};
use vmcluster_actors::{Engine, StopMode};
use vmcluster_benches::percentiles_us;
use vmcluster_tests::{Scratch, TopologySpec, topology_yaml};

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn virsh(args: &[&str]) -> bool {
    Command::new("virsh")
        .args(["-q", "-c", "qemu:///system"])
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

fn ssh_true(key: &Path, ip: &str) -> bool {
    vmcluster_tests::system_ssh(key, "root", ip, 22, 2)
        .arg("true")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The by-hand floor: `virsh start` every domain at once, then poll `ssh true` until all answer.
fn floor(domains: &[String], ips: &[String], key: &Path) -> Duration {
    let t0 = Instant::now();
    let starts: Vec<_> = domains
        .iter()
        .map(|d| {
            Command::new("virsh")
                .args(["-q", "-c", "qemu:///system", "start", d])
                .spawn()
                .expect("virsh")
        })
        .collect();
    for mut s in starts {
        assert!(s.wait().unwrap().success(), "virsh start failed");
    }
    await_ssh(ips, key, t0);
    t0.elapsed()
}

/// Polls `ssh true` on every node (every 200 ms, all at once) until each answers.
fn await_ssh(ips: &[String], key: &Path, t0: Instant) {
    let handles: Vec<_> = ips
        .iter()
        .map(|ip| {
            let (ip, key) = (ip.clone(), key.to_owned());
            std::thread::spawn(move || {
                while !ssh_true(&key, &ip) {
                    assert!(
                        t0.elapsed() < Duration::from_secs(300),
                        "{ip} never answered"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// Median of `d`.
fn median(d: &mut [Duration]) -> Duration {
    d.sort();
    d[d.len() / 2]
}

/// Median times of snapshot create and revert on `cluster` (running, every node ready):
/// `(create, revert)` with memory, then disk-only.
async fn snapshot_times(engine: &Engine, cluster: &str, runs: usize) -> [(Duration, Duration); 2] {
    let mut out = [(Duration::ZERO, Duration::ZERO); 2];
    for (i, include_memory) in [true, false].into_iter().enumerate() {
        let (mut creates, mut reverts) = (Vec::new(), Vec::new());
        for r in 0..runs {
            let name = format!("bench-{include_memory}-{r}");
            let t = Instant::now();
            engine
                .snapshot_create(
                    cluster,
                    CreateRequest {
                        snapshot_name: name.clone(),
                        description: None,
                        include_memory,
                    },
                )
                .await
                .result
                .expect("snapshot create");
            creates.push(t.elapsed());
            let t = Instant::now();
            engine
                .snapshot_revert(
                    cluster,
                    RevertRequest {
                        snapshot_name: name.clone(),
                        restart_after: true,
                        wait_for_ssh: true,
                        ssh_timeout: Duration::from_secs(300),
                    },
                )
                .await
                .result
                .expect("snapshot revert");
            reverts.push(t.elapsed());
            engine
                .snapshot_delete(cluster, &name)
                .await
                .result
                .expect("snapshot delete");
        }
        out[i] = (median(&mut creates), median(&mut reverts));
    }
    out
}

/// The by-hand floor of a memory revert: `virsh snapshot-revert --running` of every domain at
/// once, then `ssh true` polled every 200 ms until every node answers. Median of `runs`.
fn revert_floor(
    domains: &[String],
    ips: &[String],
    key: &Path,
    snapshot: &str,
    runs: usize,
) -> Duration {
    let mut times = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        let reverts: Vec<_> = domains
            .iter()
            .map(|d| {
                Command::new("virsh")
                    .args([
                        "-q",
                        "-c",
                        "qemu:///system",
                        "snapshot-revert",
                        d,
                        snapshot,
                        "--running",
                    ])
                    .spawn()
                    .expect("virsh")
            })
            .collect();
        for mut r in reverts {
            assert!(r.wait().unwrap().success(), "virsh snapshot-revert failed");
        }
        await_ssh(ips, key, t0);
        times.push(t0.elapsed());
    }
    median(&mut times)
}

/// Runs `virsh ARGS <domain> EXTRA` for every domain at once and waits for all.
fn virsh_all(domains: &[String], verb: &str, extra: &[&str]) {
    let children: Vec<_> = domains
        .iter()
        .map(|d| {
            Command::new("virsh")
                .args(["-q", "-c", "qemu:///system", verb, d])
                .args(extra)
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("virsh")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "virsh {verb} failed");
    }
}

/// The by-hand floor of a memory snapshot of running domains: `virsh suspend`, then
/// `virsh snapshot-create-as` (internal, with memory), then `virsh resume`, each for every domain
/// at once. Median of `runs` (each snapshot is deleted again, untimed).
fn create_floor(domains: &[String], runs: usize) -> Duration {
    let mut times = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        virsh_all(domains, "suspend", &[]);
        virsh_all(domains, "snapshot-create-as", &["hand"]);
        virsh_all(domains, "resume", &[]);
        times.push(t0.elapsed());
        virsh_all(domains, "snapshot-delete", &["hand"]);
    }
    median(&mut times)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    (a.as_secs_f64() / b.as_secs_f64() * 100.0).round() / 100.0
}

async fn status_latency(engine: &Engine, cluster: &str, n: usize) -> (f64, f64, f64) {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        engine.status(cluster).await.expect("status");
        samples.push(t.elapsed());
    }
    percentiles_us(&mut samples)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    assert_eq!(
        std::env::var("VMCLUSTER_TESTHOST").as_deref(),
        Ok("1"),
        "run inside scripts/testhost (scripts/bench)"
    );
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench/e2e.json"));
    let guest = PathBuf::from(std::env::var("VMCLUSTER_GUEST_DIR").expect("VMCLUSTER_GUEST_DIR"));
    let (kernel, initrd, base) = (
        guest.join("vmlinuz"),
        guest.join("initrd.img"),
        guest.join("base.qcow2"),
    );
    let scratch = Scratch::new("e2e-bench");
    let names: [(&str, u8, &[&str]); 4] = [
        ("b1", 131, &["n1"]),
        ("f1", 132, &["n1"]),
        ("b3", 133, &["n1", "n2", "n3"]),
        ("f3", 134, &["n1", "n2", "n3"]),
    ];
    for (name, octet, nodes) in names {
        scratch.write_topology(
            name,
            &topology_yaml(&TopologySpec {
                cluster: name,
                octet,
                nodes,
                base_image: &base,
                kernel: Some((&kernel, &initrd)),
                memory_mb: 192,
            }),
        );
    }
    let config = scratch.config("qemu:///system");
    let key = config.ssh_key_path.clone();
    let engine = Engine::start(config).await.expect("engine");

    // Floors' clusters are defined first (untimed); this also warms the accelerator probe.
    for f in ["f1", "f3"] {
        engine.define(f).await.result.expect("define floor cluster");
    }
    let t = Instant::now();
    engine.define("b3").await.result.expect("define b3");
    let define_3 = t.elapsed();
    let t = Instant::now();
    engine.define("b1").await.result.expect("define b1");
    let define_1 = t.elapsed();

    let budget = Duration::from_secs(300);
    let t = Instant::now();
    engine
        .start_cluster("b1", true, budget)
        .await
        .result
        .expect("start b1");
    let start_1 = t.elapsed();
    engine
        .stop_cluster("b1", StopMode::Destroy, budget)
        .await
        .result
        .expect("stop b1");
    let floor_1 = floor(&["f1_n1".into()], &["192.168.132.11".into()], &key);
    virsh(&["destroy", "f1_n1"]);

    let t = Instant::now();
    engine
        .start_cluster("b3", true, budget)
        .await
        .result
        .expect("start b3");
    let start_3 = t.elapsed();
    let (up_p50, up_p99, up_max) = status_latency(&engine, "b3", 2000).await;
    // Exec over the pooled session, against a freshly spawned `ssh node true`.
    let true_on = |nodes: Option<Vec<String>>| {
        let engine = engine.clone();
        async move {
            let t = Instant::now();
            let r = engine
                .exec(
                    "b3",
                    nodes,
                    ExecRequest::new("true", Duration::from_secs(30)),
                )
                .await;
            for (n, out) in r.result.expect("exec") {
                assert_eq!(
                    out.unwrap_or_else(|e| panic!("{n}: {e}")).exit_code,
                    Some(0)
                );
            }
            t.elapsed()
        }
    };
    let mut one = Vec::new();
    let mut all = Vec::new();
    for _ in 0..200 {
        one.push(true_on(Some(vec!["n1".into()])).await);
        all.push(true_on(None).await);
    }
    let mut fresh = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        assert!(ssh_true(&key, "192.168.133.11"), "ssh true failed");
        fresh.push(t.elapsed());
    }
    // Files: 16 MiB up and down again, each verified by the node's sha256sum.
    let size: usize = 16 << 20;
    let files = scratch.path().join("bench-files");
    std::fs::create_dir_all(&files).expect("files dir");
    let up_src = files.join("up.bin");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(&up_src, &data).expect("write bench file");
    let transfer = |direction, local: &Path| Transfer {
        direction,
        local: local.to_owned(),
        remote: "/root/bench.bin".into(),
    };
    let t = Instant::now();
    let up = engine
        .transfer(
            "b3",
            "n1",
            transfer(Direction::Upload { mode: None }, &up_src),
        )
        .await
        .result
        .expect("upload");
    let upload = t.elapsed();
    let down_dst = files.join("down.bin");
    let t = Instant::now();
    let down = engine
        .transfer("b3", "n1", transfer(Direction::Download, &down_dst))
        .await
        .result
        .expect("download");
    let download = t.elapsed();
    assert_eq!(up.sha256, down.sha256);
    assert_eq!(std::fs::read(&down_dst).expect("read back"), data);
    let mib_s =
        |d: Duration| ((size as f64 / (1 << 20) as f64) / d.as_secs_f64() * 10.0).round() / 10.0;
    let (exec_p50, exec_p99, _) = percentiles_us(&mut one);
    let (all_p50, all_p99, _) = percentiles_us(&mut all);
    let (ssh_p50, ssh_p99, _) = percentiles_us(&mut fresh);
    // One node destroyed behind the server's back.
    virsh(&["destroy", "b3_n3"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while engine.status("b3").await.unwrap().nodes[2].domain_state
        != vmcluster_engine::state::DomainState::ShutOff
    {
        assert!(Instant::now() < deadline, "status never saw b3_n3 stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (dead_p50, dead_p99, dead_max) = status_latency(&engine, "b3", 2000).await;
    engine
        .stop_cluster("b3", StopMode::Destroy, budget)
        .await
        .result
        .expect("stop b3");
    let floor_3 = floor(
        &["f3_n1".into(), "f3_n2".into(), "f3_n3".into()],
        &[
            "192.168.134.11".into(),
            "192.168.134.12".into(),
            "192.168.134.13".into(),
        ],
        &key,
    );

    for d in ["f3_n1", "f3_n2", "f3_n3"] {
        virsh(&["destroy", d]);
    }

    // Snapshots, one cluster running at a time: 1 node, then 3.
    const SNAPSHOT_RUNS: usize = 3;
    let mut snaps = Vec::new();
    let mut floors = Vec::new();
    let mut create_floors = Vec::new();
    for (cluster, octet, n) in [("b1", 131, 1), ("b3", 133, 3)] {
        engine
            .start_cluster(cluster, true, budget)
            .await
            .result
            .expect("start for snapshots");
        snaps.push(snapshot_times(&engine, cluster, SNAPSHOT_RUNS).await);
        let floor = CreateRequest {
            snapshot_name: "floor".into(),
            description: None,
            include_memory: true,
        };
        engine
            .snapshot_create(cluster, floor)
            .await
            .result
            .expect("floor snapshot");
        let domains: Vec<String> = (1..=n).map(|i| format!("{cluster}_n{i}")).collect();
        let ips: Vec<String> = (1..=n)
            .map(|i| format!("192.168.{octet}.{}", 10 + i))
            .collect();
        floors.push(revert_floor(&domains, &ips, &key, "floor", SNAPSHOT_RUNS));
        create_floors.push(create_floor(&domains, SNAPSHOT_RUNS));
        engine
            .snapshot_delete(cluster, "floor")
            .await
            .result
            .expect("delete floor snapshot");
        engine
            .stop_cluster(cluster, StopMode::Destroy, budget)
            .await
            .result
            .expect("stop after snapshots");
    }
    let [[(cm1, rm1), (cd1, rd1)], [(cm3, rm3), (cd3, rd3)]] = [snaps[0], snaps[1]];
    let pair = |one: Duration, three: Duration| json!({ "nodes_1": secs(one), "nodes_3": secs(three), "ratio_3_over_1": ratio(three, one) });

    for (name, _, _) in names {
        engine.destroy(name, true).await.result.expect("destroy");
    }
    engine.shutdown().await;

    let report = json!({
        "bench": "vmcluster e2e",
        "when": chrono::Utc::now().to_rfc3339(),
        "machine": { "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "accelerator": "probed (TCG on these machines)" },
        "guest": guest.display().to_string(),
        "define_s": { "nodes_3": secs(define_3), "nodes_1": secs(define_1) },
        "start_to_all_ready_s": {
            "nodes_1": secs(start_1),
            "nodes_3": secs(start_3),
            "ratio_3_over_1": (start_3.as_secs_f64() / start_1.as_secs_f64() * 100.0).round() / 100.0,
        },
        "by_hand_floor_s": {
            "what": "virsh start (domains defined beforehand) + `ssh true` polled every 200 ms",
            "nodes_1": secs(floor_1),
            "nodes_3": secs(floor_3),
            "ratio_3_over_1": (floor_3.as_secs_f64() / floor_1.as_secs_f64() * 100.0).round() / 100.0,
        },
        "vmcluster_over_floor": {
            "nodes_1": (start_1.as_secs_f64() / floor_1.as_secs_f64() * 100.0).round() / 100.0,
            "nodes_3": (start_3.as_secs_f64() / floor_3.as_secs_f64() * 100.0).round() / 100.0,
        },
        "cluster_status_us": {
            "samples": 2000,
            "three_nodes_up": { "p50": up_p50, "p99": up_p99, "max": up_max },
            "one_node_destroyed": { "p50": dead_p50, "p99": dead_p99, "max": dead_max },
        },
        "exec_us": {
            "node_exec_true": { "p50": exec_p50, "p99": exec_p99, "samples": 200 },
            "node_exec_all_true_3_nodes": { "p50": all_p50, "p99": all_p99, "samples": 200 },
            "fresh_ssh_true": { "p50": ssh_p50, "p99": ssh_p99, "samples": 20, "what": "ssh -o BatchMode=yes root@node true, a new process and connection each time" },
            "exec_over_fresh_ssh": (exec_p50 / ssh_p50 * 1000.0).round() / 1000.0,
            "exec_all_over_exec": (all_p50 / exec_p50 * 100.0).round() / 100.0,
        },
        "files": {
            "what": "node_upload then node_download of 16 MiB of noise to n1 of b3 (3 nodes up): SFTP, temp file, fsync, the node's sha256sum check, rename",
            "upload_s": secs(upload),
            "upload_mib_per_s": mib_s(upload),
            "download_s": secs(download),
            "download_mib_per_s": mib_s(download),
        },
        "snapshot_s": {
            "what": "median of 3 runs; create = pause, snapshot, resume every node; revert = until every node is ready again (memory: resumed in place; disk: powered off and booted)",
            "create_with_memory": pair(cm1, cm3),
            "revert_with_memory": pair(rm1, rm3),
            "revert_with_memory_by_hand_floor": pair(floors[0], floors[1]),
            "create_with_memory_by_hand_floor": pair(create_floors[0], create_floors[1]),
            "revert_with_memory_over_floor": { "nodes_1": ratio(rm1, floors[0]), "nodes_3": ratio(rm3, floors[1]) },
            "create_disk_only": pair(cd1, cd3),
            "revert_disk_only": pair(rd1, rd3),
        },
        "targets": {
            "snapshot_create_3_le_1.3x_1": cm3.as_secs_f64() <= 1.3 * cm1.as_secs_f64() && cd3.as_secs_f64() <= 1.3 * cd1.as_secs_f64(),
            "snapshot_revert_3_le_1.3x_1": rm3.as_secs_f64() <= 1.3 * rm1.as_secs_f64() && rd3.as_secs_f64() <= 1.3 * rd1.as_secs_f64(),
            "node_exec_le_0.1x_fresh_ssh": exec_p50 <= 0.1 * ssh_p50,
            "node_exec_all_3_le_1.3x_node_exec": all_p50 <= 1.3 * exec_p50,
            "cluster_status_p50_le_2ms": up_p50 <= 2000.0 && dead_p50 <= 2000.0,
            "start_3_le_1.25x_start_1": start_3.as_secs_f64() <= 1.25 * start_1.as_secs_f64(),
            "define_3_le_1s": define_3.as_secs_f64() <= 1.0,
        },
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).expect("report dir");
    }
    let text = serde_json::to_string_pretty(&report).unwrap();
    std::fs::write(&out, &text).expect("write report");
    println!("{text}");
}
