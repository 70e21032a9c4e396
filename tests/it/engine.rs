//! The engine in this process (`vmcluster_actors::Engine`) on libvirt's test driver and a real
//! sled journal: what `cluster_define` builds on the host, idempotence, the lifecycle verbs,
//! conflicts and unknown names, replay after a restart, and partial defines that converge.
//!
//! Tests that need a process of their own (a failpoint set through the environment, a restart
//! that really drops the test driver's state) drive the built binary instead.

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use vmcluster_actors::{Engine, EngineError, NodeOp, Reply, StopMode};
use vmcluster_engine::state::{DomainState, Readiness};
use vmcluster_engine::view::ClusterStatus;
use vmcluster_tests::{McpClient, vmcluster_bin};

use crate::{Fixture, dir_names, eventually, file_identity};

const T: Duration = Duration::from_secs(5);

async fn engine(f: &Fixture) -> Engine {
    Engine::start(f.config()).await.expect("engine starts")
}

/// The value of a successful command, with its op id.
#[track_caller]
fn applied<T: std::fmt::Debug>(r: Reply<T>) -> (T, uuid::Uuid) {
    let op = r.op_id.expect("a journaled command has an op_id");
    (r.result.expect("command succeeds"), op)
}

/// The error of a failed command.
#[track_caller]
fn failed<T: std::fmt::Debug>(r: Result<T, EngineError>) -> EngineError {
    match r {
        Ok(v) => panic!("unexpectedly succeeded: {v:?}"),
        Err(e) => e,
    }
}

#[track_caller]
fn check_code(e: &EngineError, code: &str) {
    assert_eq!(e.code().as_str(), code, "{e}");
}

/// Every node is in `state`/`phase`.
#[track_caller]
fn check_nodes(s: &ClusterStatus, state: DomainState, phase: Readiness) {
    for n in &s.nodes {
        assert_eq!(
            (n.domain_state, n.phase),
            (state, phase),
            "node {}: {s:?}",
            n.name
        );
    }
}

fn node<'a>(s: &'a ClusterStatus, name: &str) -> &'a vmcluster_engine::view::NodeStatus {
    s.nodes
        .iter()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("no node {name} in {s:?}"))
}

/// Status with whatever volatile (last_error of readiness probes) is left out.
fn stable(mut s: ClusterStatus) -> ClusterStatus {
    for n in &mut s.nodes {
        n.last_error = None;
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn define_builds_the_cluster_and_is_idempotent() {
    let f = Fixture::with_extra_disk("itdef", &["n1", "n2", "n3"]);
    let e = engine(&f).await;

    let (s, op1) = applied(e.define(&f.name).await);
    assert_eq!(s.cluster_name, f.name);
    assert_eq!(s.network, format!("{}-net", f.name));
    assert!(s.network_active, "{s:?}");
    assert_eq!(
        s.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["n1", "n2", "n3"],
        "topology order"
    );
    check_nodes(&s, DomainState::ShutOff, Readiness::Down);
    for (i, n) in s.nodes.iter().enumerate() {
        assert_eq!(n.ip, format!("192.168.{}.{}", f.octet, 11 + i));
        assert_eq!(n.domain, format!("{}_{}", f.name, n.name));
        assert_eq!(
            n.domain_type, "qemu",
            "auto resolves to qemu on the test driver"
        );
        assert!(!n.ssh_reachable);
    }
    // The wire strings clients see.
    let wire = serde_json::to_value(&s).unwrap();
    assert_eq!(wire["nodes"][0]["domain_state"], "shut off");
    assert_eq!(wire["nodes"][0]["phase"], "down");
    // What landed on disk.
    for n in &f.nodes {
        file_identity(&f.overlay(n));
        file_identity(&f.seed(n));
    }
    let disk = f.extra_disk.clone().unwrap();
    file_identity(&disk);
    assert_eq!(
        e.status(&f.name).await.unwrap(),
        s,
        "status answers what define returned"
    );

    let before: Vec<_> = f
        .nodes
        .iter()
        .map(|n| file_identity(&f.overlay(n)))
        .collect();
    let disk_before = file_identity(&disk);
    let seeds_before: Vec<_> = f.nodes.iter().map(|n| file_identity(&f.seed(n))).collect();
    let (again, op2) = applied(e.define(&f.name).await);
    assert_ne!(op1, op2, "every define is its own journaled operation");
    assert_eq!(
        stable(again),
        stable(s),
        "define converges on the same cluster"
    );
    let after: Vec<_> = f
        .nodes
        .iter()
        .map(|n| file_identity(&f.overlay(n)))
        .collect();
    assert_eq!(before, after, "overlays are never rewritten");
    let seeds_after: Vec<_> = f.nodes.iter().map(|n| file_identity(&f.seed(n))).collect();
    assert_eq!(
        seeds_before, seeds_after,
        "an unchanged seed is not rebuilt"
    );
    assert_eq!(
        disk_before,
        file_identity(&disk),
        "extra disks are never rewritten"
    );
    assert_eq!(e.list().await.unwrap().clusters.len(), 1);
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_start_stop_crash_destroy() {
    let f = Fixture::with_extra_disk("itlife", &["n1", "n2", "n3"]);
    let e = engine(&f).await;
    applied(e.define(&f.name).await);

    let (s, _) = applied(e.start_cluster(&f.name, false, T).await);
    check_nodes(&s, DomainState::Running, Readiness::DomainRunning);
    let list = e.list().await.unwrap();
    let summary = list
        .clusters
        .iter()
        .find(|c| c.cluster_name == f.name)
        .expect("listed");
    assert_eq!((summary.nodes, summary.running), (3, 3));
    assert_eq!(summary.subnet, format!("192.168.{}.0/24", f.octet));
    // Nothing answers on the test driver, and the probe refuses to leave the host: every node
    // records why it is not ready, without the network being touched.
    let (eng, name) = (&e, &f.name);
    eventually("every readiness probe to give up", move || async move {
        let s = eng.status(name).await.unwrap();
        s.nodes.iter().all(|n| n.last_error.is_some()).then_some(s)
    })
    .await;
    let s = e.status(&f.name).await.unwrap();
    let why = s.nodes[0].last_error.as_deref().unwrap();
    assert!(why.contains("refusing to connect"), "{why}");
    check_nodes(&s, DomainState::Running, Readiness::DomainRunning);

    let stop = NodeOp::Stop {
        mode: StopMode::Destroy,
        timeout: T,
    };
    let (r, _) = applied(e.node(&f.name, "n2", stop).await);
    assert_eq!(r.cluster_name, f.name);
    assert_eq!(
        (r.node.name.as_str(), r.node.domain_state, r.node.phase),
        ("n2", DomainState::ShutOff, Readiness::Down)
    );
    let crash = NodeOp::Crash {
        restart_after: false,
        wait_for_ssh: false,
        ssh_timeout: T,
    };
    let (r, _) = applied(e.node(&f.name, "n3", crash).await);
    assert_eq!(r.node.domain_state, DomainState::ShutOff);
    let s = e.status(&f.name).await.unwrap();
    assert_eq!(node(&s, "n1").domain_state, DomainState::Running);
    assert_eq!(node(&s, "n2").domain_state, DomainState::ShutOff);
    assert_eq!(node(&s, "n3").domain_state, DomainState::ShutOff);
    let reboot = NodeOp::Reboot {
        hard: true,
        wait_for_ssh: false,
        ssh_timeout: T,
    };
    check_code(
        &failed(e.node(&f.name, "n2", reboot).await.result),
        "FAILED_PRECONDITION",
    );
    let start = NodeOp::Start {
        wait_for_ssh: false,
        ssh_timeout: T,
    };
    let (r, _) = applied(e.node(&f.name, "n2", start).await);
    assert_eq!(r.node.domain_state, DomainState::Running);

    let (s, _) = applied(e.stop_cluster(&f.name, StopMode::Destroy, T).await);
    check_nodes(&s, DomainState::ShutOff, Readiness::Down);
    assert_eq!(e.list().await.unwrap().clusters[0].running, 0);
    check_code(&failed(e.handle(&f.name).await), "FAILED_PRECONDITION");

    let (s, _) = applied(e.destroy(&f.name, true).await);
    check_nodes(&s, DomainState::Undefined, Readiness::Down);
    assert!(!s.network_active);
    assert!(e.list().await.unwrap().clusters.is_empty());
    check_code(&failed(e.status(&f.name).await), "NOT_FOUND");
    assert!(!f.cluster_dir().exists(), "cluster directory removed");
    assert!(
        !f.extra_disk.as_ref().unwrap().exists(),
        "extra disk removed"
    );
    check_code(&failed(e.destroy(&f.name, true).await.result), "NOT_FOUND");
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_keeping_overlays_then_redefine_reuses_them() {
    let f = Fixture::with_extra_disk("itkeep", &["n1", "n2"]);
    let e = engine(&f).await;
    applied(e.define(&f.name).await);
    let overlays: Vec<_> = f
        .nodes
        .iter()
        .map(|n| file_identity(&f.overlay(n)))
        .collect();
    let disk = f.extra_disk.clone().unwrap();
    let disk_id = file_identity(&disk);

    applied(e.destroy(&f.name, false).await);
    assert!(e.list().await.unwrap().clusters.is_empty());
    check_code(&failed(e.status(&f.name).await), "NOT_FOUND");
    let kept: Vec<_> = f
        .nodes
        .iter()
        .map(|n| file_identity(&f.overlay(n)))
        .collect();
    assert_eq!(kept, overlays, "overlays kept untouched");
    assert_eq!(file_identity(&disk), disk_id, "extra disk kept");
    for n in &f.nodes {
        assert!(!f.seed(n).exists(), "seed of {n} removed");
    }

    let (s, _) = applied(e.define(&f.name).await);
    check_nodes(&s, DomainState::ShutOff, Readiness::Down);
    let reused: Vec<_> = f
        .nodes
        .iter()
        .map(|n| file_identity(&f.overlay(n)))
        .collect();
    assert_eq!(reused, overlays, "re-define reuses the kept overlays");
    assert_eq!(file_identity(&disk), disk_id);

    // The disk is still ours (the journal's ledger): a full destroy removes it.
    applied(e.destroy(&f.name, true).await);
    assert!(!disk.exists());
    assert!(!f.cluster_dir().exists());
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_topology_is_a_conflict_and_changes_nothing() {
    let f = Fixture::new("itconf", &["n1", "n2"]);
    let e = engine(&f).await;
    let (s, _) = applied(e.define(&f.name).await);
    let files = dir_names(&f.cluster_dir());
    let seed = file_identity(&f.seed("n1"));

    f.write_topology(f.yaml(1024));
    let r = e.define(&f.name).await;
    assert_eq!(r.op_id, None, "refused before anything was journaled");
    let err = failed(r.result);
    check_code(&err, "CONFLICT");
    assert!(err.to_string().contains("destroy it first"), "{err}");
    assert_eq!(stable(e.status(&f.name).await.unwrap()), stable(s));
    assert_eq!(dir_names(&f.cluster_dir()), files);
    assert_eq!(
        file_identity(&f.seed("n1")),
        seed,
        "not even the seed was rewritten"
    );
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_are_not_found() {
    let f = Fixture::new("itunk", &["n1"]);
    let e = engine(&f).await;
    let start = NodeOp::Start {
        wait_for_ssh: false,
        ssh_timeout: T,
    };
    // Unknown cluster, for every verb.
    check_code(&failed(e.status("nope").await), "NOT_FOUND");
    check_code(&failed(e.handle("nope").await), "NOT_FOUND");
    for r in [
        e.start_cluster("nope", false, T).await,
        e.stop_cluster("nope", StopMode::Destroy, T).await,
        e.destroy("nope", true).await,
    ] {
        assert_eq!(r.op_id, None);
        check_code(&failed(r.result), "NOT_FOUND");
    }
    check_code(
        &failed(e.node("nope", "n1", start).await.result),
        "NOT_FOUND",
    );
    check_code(&failed(e.define("nope").await.result), "NOT_FOUND");

    applied(e.define(&f.name).await);
    let r = e.node(&f.name, "n9", start).await;
    assert_eq!(r.op_id, None);
    let err = failed(r.result);
    check_code(&err, "NOT_FOUND");
    assert!(err.to_string().contains("n9"), "{err}");
    check_nodes(
        &e.status(&f.name).await.unwrap(),
        DomainState::ShutOff,
        Readiness::Down,
    );
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_of_a_stopped_cluster_is_a_failed_precondition() {
    let f = Fixture::new("ithandle", &["n1", "n2"]);
    let e = engine(&f).await;
    applied(e.define(&f.name).await);
    let err = failed(e.handle(&f.name).await);
    check_code(&err, "FAILED_PRECONDITION");
    assert!(err.to_string().contains("cluster_start"), "{err}");
    e.shutdown().await;
}

/// A second engine on the same state directory in this process: the journal is released by
/// the first and replayed by the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_engine_replays_the_journal() {
    let f = Fixture::new("itreplay", &["n1", "n2"]);
    let a = engine(&f).await;
    let (defined, _) = applied(a.define(&f.name).await);
    a.shutdown().await;

    let b = engine(&f).await;
    let s = b
        .status(&f.name)
        .await
        .expect("the cluster survives a restart");
    assert_eq!(s.cluster_name, f.name);
    let ids = |s: &ClusterStatus| {
        s.nodes
            .iter()
            .map(|n| (n.name.clone(), n.ip.clone(), n.domain.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&s), ids(&defined));
    assert_eq!(b.list().await.unwrap().clusters.len(), 1);
    // Whatever the driver kept, the new engine reports what libvirt says now.
    for n in &s.nodes {
        assert_eq!(
            n.domain_state,
            libvirt_state(&n.domain),
            "{}: {s:?}",
            n.name
        );
        assert_eq!(n.phase, Readiness::Down);
    }
    // It can be torn down by the new engine.
    applied(b.destroy(&f.name, true).await);
    assert!(b.list().await.unwrap().clusters.is_empty());
    b.shutdown().await;
}

/// The state of `domain` as a connection of this process of our own sees it.
fn libvirt_state(domain: &str) -> DomainState {
    let conn = virt::connect::Connect::open(Some(crate::TEST_URI)).expect("open test driver");
    match conn.lookup_domain_by_name(domain) {
        Err(_) => DomainState::Undefined,
        Ok(d) if d.is_active().expect("is_active") => DomainState::Running,
        Ok(_) => DomainState::ShutOff,
    }
}

fn cli(f: &Fixture, args: &[&str]) -> serde_json::Value {
    let out = Command::new(vmcluster_bin())
        .arg("--json")
        .args(args)
        .envs(f.env())
        .env_remove("VMCLUSTER_FAILPOINTS")
        .output()
        .expect("run vmcluster");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A restart is a new process, and the test driver's domains die with the old one: the cluster
/// is still known (from the journal) and reports its domains truthfully as `undefined`.
#[test]
fn restart_in_a_new_process_reports_what_libvirt_has() {
    let f = Fixture::new("itrestart", &["n1", "n2"]);
    let defined = cli(&f, &["define", &f.name]);
    assert_eq!(defined["success"], true, "{defined}");
    assert_eq!(defined["result"]["nodes"][1]["domain_state"], "shut off");

    let status = cli(&f, &["status", &f.name]);
    assert_eq!(status["success"], true, "{status}");
    let nodes = status["result"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    for n in nodes {
        assert_eq!(n["domain_state"], "undefined", "{status}");
        assert_eq!(n["phase"], "down");
    }
    assert_eq!(status["result"]["network_active"], false, "{status}");
    assert_eq!(nodes[0]["domain"], format!("{}_n1", f.name));
}

/// Every step of `cluster_define` fails in turn (an injected error, before and after its side
/// effect): the error names that step, everything the earlier steps made is undone, the cluster
/// is not defined, and the journal says `not_applied` with a rollback (promise P3). Without the
/// failpoint the same define then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_define_step_failure_unwinds_cleanly() {
    let f = Fixture::new("itunwind", &["n1", "n2"]);
    let steps = [
        ("ensure_dir", None),
        ("ensure_network", None),
        ("start_network", None),
        ("ensure_overlay", Some("n1")),
        ("ensure_seed", Some("n1")),
        ("define_domain", Some("n1")),
        ("ensure_overlay", Some("n2")),
        ("ensure_seed", Some("n2")),
        ("define_domain", Some("n2")),
    ];
    for (step, node) in steps {
        for when in ["before", "after"] {
            let target = match node {
                Some(n) => format!("{step}:{n}@{when}"),
                None => format!("{step}@{when}"),
            };
            let mut env = f.env();
            env.push(("VMCLUSTER_FAILPOINTS".into(), target.clone()));
            let c = McpClient::spawn(&env).await;
            let r = c
                .call("cluster_define", json!({"topology_name": f.name}))
                .await;
            let err = r.err();
            assert_eq!(err["step"], step, "{target}: {err}");
            assert_eq!(err["node"].as_str(), node, "{target}: {err}");
            assert_eq!(
                r.envelope["outcome"], "not_applied",
                "{target}: {}",
                r.envelope
            );
            let op = r.envelope["op_id"].as_str().expect("journaled").to_owned();
            let st = c.call("op_status", json!({"op_id": op})).await;
            let st = st.ok();
            assert_eq!(st["state"], "finished", "{target}: {st}");
            assert_eq!(st["outcome"], "not_applied", "{target}: {st}");
            assert_eq!(st["rolled_back"], true, "{target}: {st}");
            let last = st["steps"].as_array().unwrap().last().unwrap().clone();
            assert_eq!(
                (last["step"].as_str(), last["state"].as_str()),
                (Some(step), Some("failed")),
                "{target}: {st}"
            );
            // Nothing is left: no cluster, no files, no domains.
            let s = c
                .call("cluster_status", json!({"cluster_name": f.name}))
                .await;
            assert_eq!(s.code(), "NOT_FOUND", "{target}: the cluster is forgotten");
            assert!(
                !f.cluster_dir().exists(),
                "{target}: {:?} left behind",
                f.cluster_dir()
            );
            let list = c.call("cluster_list", json!({})).await;
            assert_eq!(list.ok()["clusters"], json!([]), "{target}");
            c.close().await;
        }
    }
    let c = McpClient::spawn(&f.env()).await;
    let r = c
        .call("cluster_define", json!({"topology_name": f.name}))
        .await;
    for n in r.ok()["nodes"].as_array().unwrap() {
        assert_eq!(n["domain_state"], "shut off", "{}", r.envelope);
    }
    assert_eq!(r.envelope["outcome"], "applied");
    assert!(f.overlay("n2").is_file());
    c.close().await;
}

/// A slow operation answers `{state: running, op_id}` when its wait runs out, and goes on:
/// `op_wait` returns its journaled outcome and result; `op_list` shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_operation_returns_running_then_op_wait_finishes_it() {
    let f = Fixture::new("itwait", &["n1"]);
    let mut env = f.env();
    env.push((
        "VMCLUSTER_FAILPOINTS".into(),
        "ensure_seed:n1=delay:1500".into(),
    ));
    let c = McpClient::spawn(&env).await;
    let r = c
        .call(
            "cluster_define",
            json!({"topology_name": f.name, "wait_s": 0}),
        )
        .await;
    assert_eq!(r.envelope["state"], "running", "{}", r.envelope);
    assert_eq!(r.envelope["success"], true);
    assert!(r.envelope["result"].is_null());
    let op = r.envelope["op_id"].as_str().unwrap().to_owned();
    let st = c.call("op_status", json!({"op_id": op})).await;
    assert_eq!(st.ok()["state"], "running", "{}", st.envelope);
    let w = c.call("op_wait", json!({"op_id": op, "wait_s": 60})).await;
    let w = w.ok();
    assert_eq!(w["state"], "finished", "{w}");
    assert_eq!(w["outcome"], "applied", "{w}");
    assert_eq!(w["result"]["cluster_name"], f.name.as_str(), "{w}");
    assert_eq!(w["result"]["nodes"][0]["domain_state"], "shut off", "{w}");
    let l = c.call("op_list", json!({"cluster_name": f.name})).await;
    assert_eq!(l.ok()["ops"][0]["op_id"], op.as_str());
    // Bad handles are typed errors.
    let bad = c.call("op_status", json!({"op_id": "nope"})).await;
    assert_eq!(bad.code(), "INVALID_ARGUMENT");
    let unknown = c
        .call(
            "op_status",
            json!({"op_id": uuid::Uuid::now_v7().to_string()}),
        )
        .await;
    assert_eq!(unknown.code(), "NOT_FOUND");
    let w = c
        .call("op_wait", json!({"op_id": op, "wait_s": 3601}))
        .await;
    assert_eq!(w.code(), "INVALID_ARGUMENT");
    c.close().await;
}

/// With a progress token, a define reports each finished step as an MCP progress
/// notification, counting up to the plan's length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn define_sends_progress_notifications() {
    let f = Fixture::new("itprog", &["n1", "n2"]);
    let c = McpClient::spawn(&f.env()).await;
    let r = c
        .call_with_progress("cluster_define", json!({"topology_name": f.name}), "p1")
        .await;
    r.ok();
    // Notifications travel on the same stream ahead of the response, but the client handles
    // them on its own task: wait (bounded) for the last one.
    let plan = 3 + 2 * 3;
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = c.progress();
        if seen.iter().any(|(p, _, _)| *p as usize == plan) {
            break;
        }
        c.call("cluster_list", json!({})).await.ok();
    }
    let done: Vec<usize> = seen.iter().map(|(p, _, _)| *p as usize).collect();
    assert!(
        done.windows(2).all(|w| w[0] <= w[1]),
        "progress only grows: {done:?}"
    );
    assert_eq!(done.last(), Some(&plan), "{seen:?}");
    assert!(
        seen.iter().all(|(_, t, _)| *t == Some(plan as f64)),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(_, _, m)| m.as_deref() == Some("define_domain n2")),
        "messages name the step: {seen:?}"
    );
    c.close().await;
}

/// `op_cancel` stops a define between two steps: it is rolled back and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_define_stops_between_steps_and_rolls_back() {
    let f = Fixture::new("itcancel", &["n1"]);
    let mut env = f.env();
    env.push((
        "VMCLUSTER_FAILPOINTS".into(),
        "ensure_overlay:n1=delay:1500".into(),
    ));
    let c = McpClient::spawn(&env).await;
    let r = c
        .call(
            "cluster_define",
            json!({"topology_name": f.name, "wait_s": 0}),
        )
        .await;
    let op = r.envelope["op_id"].as_str().unwrap().to_owned();
    // Wait until the slow step has begun, then cancel.
    let mut seen = false;
    for _ in 0..200 {
        let st = c.call("op_status", json!({"op_id": op})).await;
        if st.ok()["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["step"] == "ensure_overlay")
        {
            seen = true;
            break;
        }
        let w = c.call("op_wait", json!({"op_id": op, "wait_s": 0})).await;
        assert_eq!(w.ok()["state"], "running");
    }
    assert!(seen, "the op reached ensure_overlay");
    let cancel = c.call("op_cancel", json!({"op_id": op})).await;
    assert_eq!(cancel.ok()["state"], "running");
    let w = c.call("op_wait", json!({"op_id": op, "wait_s": 60})).await;
    let w = w.ok();
    assert_eq!(w["outcome"], "not_applied", "{w}");
    assert_eq!(w["error"]["code"], "CANCELLED", "{w}");
    assert_eq!(w["rolled_back"], true, "{w}");
    let steps: Vec<&str> = w["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps.last(),
        Some(&"ensure_overlay"),
        "stopped after the step in flight: {w}"
    );
    assert!(!f.cluster_dir().exists());
    let again = c.call("op_cancel", json!({"op_id": op})).await;
    assert_eq!(again.code(), "FAILED_PRECONDITION");
    c.close().await;
}

/// Something squats on n2's overlay path: define fails in `ensure_overlay` on n2 after n1 is
/// complete, and converges once the squatter is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squatter_on_an_overlay_path_fails_then_converges() {
    let f = Fixture::new("itsquat", &["n1", "n2"]);
    let squatter = f.overlay("n2");
    std::fs::create_dir_all(squatter.join("x")).unwrap();
    let e = engine(&f).await;

    let r = e.define(&f.name).await;
    assert!(r.op_id.is_some(), "the failure is journaled");
    let err = failed(r.result);
    assert_eq!(err.step(), Some("ensure_overlay"), "{err}");
    assert_eq!(err.node(), Some("n2"), "{err}");
    // Rolled back: n1's overlay is gone, the cluster is not defined, the squatter stays.
    assert!(e.status(&f.name).await.is_err(), "the cluster is forgotten");
    assert!(!f.overlay("n1").exists(), "what the define made is undone");
    assert!(squatter.join("x").is_dir(), "the squatter is left alone");

    std::fs::remove_dir_all(&squatter).unwrap();
    let (s, _) = applied(e.define(&f.name).await);
    check_nodes(&s, DomainState::ShutOff, Readiness::Down);
    file_identity(&f.overlay("n2"));
    applied(e.destroy(&f.name, true).await);
    assert!(!f.cluster_dir().exists());
    e.shutdown().await;
}

/// A server killed while it writes a seed ISO leaves the ISO's staging directory (the files the
/// ISO writer reads) and a partial ISO behind; restart's rollback removes them with everything
/// else, so the cluster's directory goes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_write_cut_short_leaves_nothing_after_restart() {
    let f = Fixture::new("itseedcut", &["n1"]);
    let mut env = f.env();
    env.push((
        "VMCLUSTER_FAILPOINTS".into(),
        "ensure_seed:n1@after=abort".into(),
    ));
    let c = McpClient::spawn(&env).await;
    let r = c
        .try_call("cluster_define", json!({"topology_name": f.name}))
        .await;
    assert!(r.is_none(), "the server should have aborted");
    c.close().await;
    // What a kill in the middle of the write leaves.
    let iso = std::fs::read_dir(f.cluster_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "iso"))
        .expect("the seed ISO");
    let name = iso.file_name().unwrap().to_string_lossy().into_owned();
    let staging = iso.with_file_name(format!(".{name}.staging"));
    std::fs::create_dir(&staging).unwrap();
    std::fs::write(staging.join("user-data"), "#cloud-config\n").unwrap();
    std::fs::write(iso.with_file_name(format!(".{name}.tmp")), "partial").unwrap();

    let c = McpClient::spawn(&f.env()).await;
    let list = c.call("cluster_list", json!({})).await;
    assert_eq!(list.ok()["clusters"], json!([]), "rolled back");
    assert!(
        !f.cluster_dir().exists(),
        "{:?} left behind: {:?}",
        f.cluster_dir(),
        std::fs::read_dir(f.cluster_dir())
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    c.close().await;
}
