//! The kill-point sweep (promise P1): the real server binary aborts (SIGABRT, no cleanup) at
//! every step of `cluster_define`, `cluster_start` and `cluster_destroy` in turn, before and
//! after the step's side effect. After each, a fresh server restarts on the same journal and
//! settles the operation; the test then checks that the host and the journal agree: the cluster
//! is complete or entirely absent, nothing owned is left behind, and the journal records the
//! operation's outcome. The second sweep does the same for `snapshot_create` (rolled back: no
//! snapshot, no paused node), `snapshot_revert` (rolled forward: the node is at the cut) and
//! `snapshot_delete` (rolled forward: the snapshot is gone).

use serde_json::{Value, json};
use vmcluster_tests::{McpClient, Scratch};

use crate::{cluster_scratch, host_objects, preflight};

const NAME: &str = "kp";

/// The server's environment, with `failpoints` (a `VMCLUSTER_FAILPOINTS` value) if any.
fn env(s: &Scratch, failpoints: Option<&str>) -> Vec<(String, String)> {
    let mut env = s.env("qemu:///system");
    if let Some(f) = failpoints {
        env.push(("VMCLUSTER_FAILPOINTS".into(), f.to_owned()));
    }
    env
}

/// Runs `tool` in a server that aborts at `failpoint`; returns once the server is gone.
async fn kill_at(s: &Scratch, failpoint: &str, tool: &str, args: Value) {
    kill_with(s, &format!("{failpoint}=abort"), tool, args).await;
}

/// Runs `tool` in a server with `failpoints`, one of which aborts it; returns once it is gone.
async fn kill_with(s: &Scratch, failpoints: &str, tool: &str, args: Value) {
    let c = McpClient::spawn(&env(s, Some(failpoints))).await;
    let r = c.try_call(tool, args).await;
    assert!(
        r.is_none(),
        "{failpoints}: the server should have aborted, answered {:?}",
        r.map(|r| r.envelope)
    );
    c.close().await;
}

/// The newest operation of `cluster`, as a restarted server reports it.
async fn newest_op(c: &McpClient, cluster: &str) -> Value {
    let l = c
        .call("op_list", json!({"cluster_name": cluster, "limit": 1}))
        .await;
    l.ok()["ops"][0].clone()
}

async fn last_op(c: &McpClient) -> Value {
    newest_op(c, NAME).await
}

#[track_caller]
fn check_absent(s: &Scratch, what: &str) {
    let objs = host_objects(NAME);
    assert!(
        objs.domains.is_empty() && objs.networks.is_empty() && !objs.bridge,
        "{what}: left behind {objs:?}"
    );
    let dir = s.path().join("overlays").join(NAME);
    assert!(!dir.exists(), "{what}: {} left behind", dir.display());
}

#[track_caller]
fn check_defined(s: &Scratch, what: &str, running: bool) {
    let objs = host_objects(NAME);
    assert_eq!(objs.domains, [format!("{NAME}_n1")], "{what}: {objs:?}");
    assert_eq!(objs.networks, [format!("{NAME}-net")], "{what}: {objs:?}");
    assert!(objs.bridge, "{what}: the network is active");
    let overlay = s.path().join("overlays").join(NAME).join("n1.qcow2");
    assert!(overlay.is_file(), "{what}: overlay");
    let state = crate::virsh(&["domstate", &format!("{NAME}_n1")]).join(" ");
    assert_eq!(state == "running", running, "{what}: domain state {state}");
}

fn points(steps: &[(&str, bool)]) -> Vec<String> {
    let mut v = Vec::new();
    for (step, node_scoped) in steps {
        for when in ["before", "after"] {
            v.push(if *node_scoped {
                format!("{step}:n1@{when}")
            } else {
                format!("{step}@{when}")
            });
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_at_any_step_leaves_host_and_journal_in_agreement() {
    let g = preflight();
    let s = cluster_scratch(&g, NAME, 140, &["n1"]);
    let define = json!({"topology_name": NAME});
    let destroy = json!({"cluster_name": NAME, "remove_overlays": true});

    // cluster_define: a kill anywhere is rolled back by the next server: nothing is left.
    let define_steps = [
        ("ensure_dir", false),
        ("ensure_network", false),
        ("start_network", false),
        ("ensure_overlay", true),
        ("ensure_seed", true),
        ("define_domain", true),
    ];
    for p in points(&define_steps) {
        kill_at(&s, &p, "cluster_define", define.clone()).await;
        let c = McpClient::spawn(&env(&s, None)).await;
        let op = last_op(&c).await;
        assert_eq!(op["tool"], "cluster_define", "{p}: {op}");
        assert_eq!(op["state"], "finished", "{p}: {op}");
        assert_eq!(op["outcome"], "not_applied", "{p}: {op}");
        let list = c.call("cluster_list", json!({})).await;
        assert_eq!(list.ok()["clusters"], json!([]), "{p}");
        check_absent(&s, &p);
        c.close().await;
    }

    // cluster_destroy: a kill anywhere is rolled forward: nothing is left, and it is applied.
    let destroy_steps = [
        ("stop_domain", true),
        ("undefine_domain", true),
        ("remove_node_files", true),
        ("remove_overlay", true),
        ("remove_network", false),
        ("remove_dir", false),
    ];
    for p in points(&destroy_steps) {
        let c = McpClient::spawn(&env(&s, None)).await;
        c.call("cluster_define", define.clone()).await.ok();
        c.close().await;
        check_defined(&s, &p, false);
        kill_at(&s, &p, "cluster_destroy", destroy.clone()).await;
        let c = McpClient::spawn(&env(&s, None)).await;
        let op = last_op(&c).await;
        assert_eq!(op["tool"], "cluster_destroy", "{p}: {op}");
        assert_eq!(op["outcome"], "applied", "{p}: {op}");
        let list = c.call("cluster_list", json!({})).await;
        assert_eq!(list.ok()["clusters"], json!([]), "{p}");
        check_absent(&s, &p);
        c.close().await;
    }

    // cluster_start: a kill anywhere is rolled forward: the node is powered on.
    let c = McpClient::spawn(&env(&s, None)).await;
    c.call("cluster_define", define.clone()).await.ok();
    c.close().await;
    let start = json!({"cluster_name": NAME, "wait_for_ssh": true, "ssh_timeout_s": 120});
    let start_steps = [
        ("start_network", false),
        ("start_domain", true),
        ("wait_ready", true),
    ];
    for p in points(&start_steps) {
        kill_at(&s, &p, "cluster_start", start.clone()).await;
        let c = McpClient::spawn(&env(&s, None)).await;
        let op = last_op(&c).await;
        assert_eq!(op["tool"], "cluster_start", "{p}: {op}");
        assert_eq!(op["outcome"], "applied", "{p}: {op}");
        check_defined(&s, &p, true);
        let stop = c
            .call(
                "cluster_stop",
                json!({"cluster_name": NAME, "mode": "destroy"}),
            )
            .await;
        stop.ok();
        c.close().await;
    }
    let c = McpClient::spawn(&env(&s, None)).await;
    crate::destroy_and_check_clean(&c, &s, NAME).await;
    c.close().await;
}

const SNAP: &str = "kps";

/// The snapshot sweep's nodes.
const SNAP_NODES: [&str; 2] = ["n1", "n2"];

/// `command` on every node of the snapshot sweep (waiting for their sessions); each node's
/// trimmed stdout.
async fn on_nodes(c: &McpClient, command: &str) -> Vec<String> {
    let r = c
        .call(
            "node_exec_all",
            json!({"cluster_name": SNAP, "command": command, "timeout_s": 180}),
        )
        .await;
    r.ok()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            assert_eq!(n["result"]["exit_code"], 0, "{command}: {n}");
            n["result"]["stdout"].as_str().unwrap().trim().to_owned()
        })
        .collect()
}

/// The snapshots libvirt holds, sorted, the same on every node.
#[track_caller]
fn snapshots() -> Vec<String> {
    let each: Vec<Vec<String>> = SNAP_NODES
        .iter()
        .map(|n| {
            let mut v = crate::virsh(&["snapshot-list", "--name", &format!("{SNAP}_{n}")]);
            v.sort();
            v
        })
        .collect();
    assert!(each.iter().all(|v| *v == each[0]), "nodes differ: {each:?}");
    each[0].clone()
}

/// Each node's domain state.
fn states() -> Vec<String> {
    SNAP_NODES
        .iter()
        .map(|n| crate::virsh(&["domstate", &format!("{SNAP}_{n}")]).join(" "))
        .collect()
}

#[track_caller]
fn check_settled(op: &Value, tool: &str, outcome: &str, what: &str) {
    assert_eq!(op["tool"], tool, "{what}: {op}");
    assert_eq!(op["state"], "finished", "{what}: {op}");
    assert_eq!(op["outcome"], outcome, "{what}: {op}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_a_snapshot_is_settled() {
    let g = preflight();
    let s = cluster_scratch(&g, SNAP, 144, &SNAP_NODES);
    let c = crate::up(&s, SNAP).await;
    on_nodes(&c, "echo cut > /root/state; sync").await;
    let create = |name: &str, memory: bool| json!({"cluster_name": SNAP, "snapshot_name": name, "include_memory": memory});
    c.call("snapshot_create", create("base", true)).await.ok();
    c.close().await;
    let running = ["running"; 2];

    // snapshot_create: a kill anywhere is rolled back: no new snapshot, the node runs again.
    let mut cases: Vec<(String, bool)> = points(&[
        ("suspend_domain", true),
        ("create_snapshot", true),
        ("resume_domain", true),
    ])
    .into_iter()
    .map(|p| (format!("{p}=abort"), true))
    .collect();
    cases.extend(
        points(&[("sync_disks", true)])
            .into_iter()
            .map(|p| (format!("{p}=abort"), false)),
    );
    // A kill while a failed create is deleting what it made.
    cases.push((
        "create_snapshot:n1@after=error,delete_snapshot:n1@before=abort".into(),
        true,
    ));
    for (spec, memory) in cases {
        kill_with(&s, &spec, "snapshot_create", create("x", memory)).await;
        let c = McpClient::spawn(&env(&s, None)).await;
        check_settled(
            &newest_op(&c, SNAP).await,
            "snapshot_create",
            "not_applied",
            &spec,
        );
        assert_eq!(snapshots(), ["base"], "{spec}");
        assert_eq!(states(), running, "{spec}: a paused node is resumed");
        let list = c.call("snapshot_list", json!({"cluster_name": SNAP})).await;
        assert_eq!(
            list.ok()["snapshots"].as_array().unwrap().len(),
            1,
            "{spec}"
        );
        c.close().await;
    }

    // snapshot_revert: a kill anywhere is rolled forward: every node is back at the cut.
    let mut cases: Vec<String> = points(&[("revert_snapshot", true)])
        .into_iter()
        .map(|p| format!("{p}=abort"))
        .collect();
    // n1 finishes its revert while n2 waits, then n2 dies after its own: restart reverts n2
    // again and leaves n1, whose revert the journal shows done, alone.
    let partial = "revert_snapshot:n2@before=delay:5000,revert_snapshot:n2@after=abort";
    cases.push(partial.into());
    for spec in cases {
        let c = McpClient::spawn(&env(&s, None)).await;
        on_nodes(&c, "echo later > /root/state; sync").await;
        c.close().await;
        kill_with(
            &s,
            &spec,
            "snapshot_revert",
            json!({"cluster_name": SNAP, "snapshot_name": "base"}),
        )
        .await;
        let c = McpClient::spawn(&env(&s, None)).await;
        let op = newest_op(&c, SNAP).await;
        check_settled(&op, "snapshot_revert", "applied", &spec);
        assert_eq!(on_nodes(&c, "cat /root/state").await, ["cut"; 2], "{spec}");
        assert_eq!(states(), running, "{spec}");
        if spec == partial {
            let reverts = |node: &str| {
                op["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|st| st["step"] == "revert_snapshot" && st["node"] == node)
                    .count()
            };
            assert_eq!((reverts("n1"), reverts("n2")), (1, 2), "{op}");
        }
        c.close().await;
    }

    // snapshot_delete: a kill anywhere is rolled forward: the snapshot is gone.
    for p in points(&[("delete_snapshot", true)]) {
        let c = McpClient::spawn(&env(&s, None)).await;
        c.call("snapshot_create", create("d", false)).await.ok();
        c.close().await;
        assert_eq!(snapshots(), ["base", "d"], "{p}");
        kill_at(
            &s,
            &p,
            "snapshot_delete",
            json!({"cluster_name": SNAP, "snapshot_name": "d"}),
        )
        .await;
        let c = McpClient::spawn(&env(&s, None)).await;
        check_settled(&newest_op(&c, SNAP).await, "snapshot_delete", "applied", &p);
        assert_eq!(snapshots(), ["base"], "{p}");
        c.close().await;
    }

    let c = McpClient::spawn(&env(&s, None)).await;
    crate::destroy_and_check_clean(&c, &s, SNAP).await;
    c.close().await;
}
