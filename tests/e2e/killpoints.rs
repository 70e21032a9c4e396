//! The kill-point sweep (promise P1): the real server binary aborts (SIGABRT, no cleanup) at
//! every step of `cluster_define`, `cluster_start` and `cluster_destroy` in turn, before and
//! after the step's side effect. After each, a fresh server restarts on the same journal and
//! settles the operation; the test then checks that the host and the journal agree: the cluster
//! is complete or entirely absent, nothing owned is left behind, and the journal records the
//! operation's outcome.

use serde_json::{Value, json};
use vmcluster_tests::{McpClient, Scratch};

use crate::{cluster_scratch, host_objects, preflight};

const NAME: &str = "kp";

fn env(s: &Scratch, failpoint: Option<&str>) -> Vec<(String, String)> {
    let mut env = s.env("qemu:///system");
    if let Some(f) = failpoint {
        env.push(("VMCLUSTER_FAILPOINTS".into(), format!("{f}=abort")));
    }
    env
}

/// Runs `tool` in a server that aborts at `failpoint`; returns once the server is gone.
async fn kill_at(s: &Scratch, failpoint: &str, tool: &str, args: Value) {
    let c = McpClient::spawn(&env(s, Some(failpoint))).await;
    let r = c.try_call(tool, args).await;
    assert!(
        r.is_none(),
        "{failpoint}: the server should have aborted, answered {:?}",
        r.map(|r| r.envelope)
    );
    c.close().await;
}

/// The newest operation of the cluster, as a restarted server reports it.
async fn last_op(c: &McpClient) -> Value {
    let l = c
        .call("op_list", json!({"cluster_name": NAME, "limit": 1}))
        .await;
    l.ok()["ops"][0].clone()
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
