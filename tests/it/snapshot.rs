//! Cluster snapshots over MCP on libvirt's test driver (which keeps snapshot metadata but
//! boots nothing): naming and logical names, per-node kinds for a mix of running and stopped
//! nodes, what a revert does to each node, refusals that change nothing, a failure on one node
//! that leaves no snapshot anywhere, and delete with per-node status.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use vmcluster_journal::{BodyV1, ObjectKind};
use vmcluster_tests::McpClient;

use crate::{Fixture, eventually};

/// `(node, present, kind, domain_state)` of each node of a snapshot.
fn per_node(snapshot: &Value) -> Vec<(String, bool, Value, Value)> {
    snapshot["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes in {snapshot}"))
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().to_owned(),
                n["present"].as_bool().unwrap(),
                n["kind"].clone(),
                n["domain_state"].clone(),
            )
        })
        .collect()
}

/// Names listed by `snapshot_list`.
async fn names(c: &McpClient, cluster: &str) -> Vec<String> {
    let l = c
        .call("snapshot_list", json!({"cluster_name": cluster}))
        .await;
    l.ok()["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["snapshot_name"].as_str().unwrap().to_owned())
        .collect()
}

/// Domain states of the cluster's nodes, in order.
async fn states(c: &McpClient, cluster: &str) -> Vec<String> {
    let s = c
        .call("cluster_status", json!({"cluster_name": cluster}))
        .await;
    s.ok()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["domain_state"].as_str().unwrap().to_owned())
        .collect()
}

/// A server on `f` (with `failpoints`, if any) whose cluster is defined and running (domains
/// up, readiness not awaited: the test driver has no guests).
async fn running(f: &Fixture, failpoints: Option<&str>) -> McpClient {
    let mut env = f.env();
    if let Some(fp) = failpoints {
        env.push(("VMCLUSTER_FAILPOINTS".into(), fp.into()));
    }
    let c = McpClient::spawn(&env).await;
    c.call("cluster_define", json!({"topology_name": f.name}))
        .await
        .ok();
    c.call(
        "cluster_start",
        json!({"cluster_name": f.name, "wait_for_ssh": false}),
    )
    .await
    .ok();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_round_trip_on_the_test_driver() {
    let f = Fixture::new("itsnap", &["n1", "n2"]);
    let name = f.name.as_str();
    let c = running(&f, None).await;
    assert!(names(&c, name).await.is_empty());

    // A memory snapshot of two running nodes.
    let r = c
        .call(
            "snapshot_create",
            json!({"cluster_name": name, "snapshot_name": "s1", "description": "first <cut> & more", "include_memory": true}),
        )
        .await;
    assert!(r.envelope["op_id"].is_string(), "{}", r.envelope);
    let s1 = r.ok();
    assert_eq!(s1["snapshot_name"], "s1");
    assert_eq!(s1["description"], "first <cut> & more");
    assert_eq!(
        (
            &s1["complete"],
            &s1["created_by_vmcluster"],
            &s1["include_memory"]
        ),
        (&json!(true), &json!(true), &json!(true)),
        "{s1}"
    );
    let running = json!("running");
    assert_eq!(
        per_node(s1),
        [
            ("n1".into(), true, json!("memory"), running.clone()),
            ("n2".into(), true, json!("memory"), running.clone()),
        ]
    );
    assert!(s1["created_at"].as_str().is_some_and(|t| t.contains('T')));
    // The cut resumed every node it paused.
    assert_eq!(states(&c, name).await, ["running", "running"]);

    // The same name again is a conflict and changes nothing.
    let again = c
        .call(
            "snapshot_create",
            json!({"cluster_name": name, "snapshot_name": "s1"}),
        )
        .await;
    assert_eq!(again.code(), "CONFLICT", "{}", again.envelope);
    assert_eq!(
        again.envelope["op_id"],
        Value::Null,
        "refused before journaling"
    );

    // The topology's logical name stands for its real name.
    let r = c
        .call(
            "snapshot_create",
            json!({"cluster_name": name, "snapshot_name": "baseline"}),
        )
        .await;
    let base = r.ok();
    assert_eq!(base["snapshot_name"], "clean-boot");
    assert_eq!(base["logical_names"], json!(["baseline"]));
    assert_eq!(base["include_memory"], false);
    assert_eq!(per_node(base)[0].2, json!("disk"));

    // A stopped node and a running one: the stopped one is disk-only.
    c.call(
        "node_stop",
        json!({"cluster_name": name, "node_name": "n2", "mode": "destroy"}),
    )
    .await
    .ok();
    let r = c
        .call(
            "snapshot_create",
            json!({"cluster_name": name, "snapshot_name": "mixed", "include_memory": true}),
        )
        .await;
    assert_eq!(
        per_node(r.ok()),
        [
            ("n1".into(), true, json!("memory"), running.clone()),
            ("n2".into(), true, json!("disk"), json!("shut off")),
        ]
    );
    assert_eq!(states(&c, name).await, ["running", "shut off"]);
    assert_eq!(names(&c, name).await, ["s1", "clean-boot", "mixed"]);

    // Back to s1: both nodes ran at the cut, so both resume from memory.
    let r = c
        .call(
            "snapshot_revert",
            json!({"cluster_name": name, "snapshot_name": "s1", "wait_for_ssh": false}),
        )
        .await;
    let rev = r.ok();
    let actions: Vec<&str> = rev["reverted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["resumed_from_memory", "resumed_from_memory"]);
    assert_eq!(rev["snapshot_name"], "s1");
    assert_eq!(
        rev["cluster_name"], name,
        "the cluster status is part of the result"
    );
    eventually("both nodes running after the revert", || async {
        (states(&c, name).await == ["running", "running"]).then_some(())
    })
    .await;

    // Back to the mixed cut: n2 was off then, so it is off again.
    let r = c
        .call(
            "snapshot_revert",
            json!({"cluster_name": name, "snapshot_name": "mixed", "wait_for_ssh": false}),
        )
        .await;
    let actions: Vec<String> = r.ok()["reverted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, ["resumed_from_memory", "left_off"]);
    eventually("n2 off after the revert", || async {
        (states(&c, name).await == ["running", "shut off"]).then_some(())
    })
    .await;

    // An unknown name changes nothing.
    let missing = c
        .call(
            "snapshot_revert",
            json!({"cluster_name": name, "snapshot_name": "nope", "wait_for_ssh": false}),
        )
        .await;
    assert_eq!(missing.code(), "NOT_FOUND", "{}", missing.envelope);
    assert_eq!(missing.envelope["op_id"], Value::Null);
    assert_eq!(states(&c, name).await, ["running", "shut off"]);

    // Delete through the logical name, with per-node status; a second delete finds nothing.
    let r = c
        .call(
            "snapshot_delete",
            json!({"cluster_name": name, "snapshot_name": "baseline"}),
        )
        .await;
    let del = r.ok();
    assert_eq!(del["snapshot_name"], "clean-boot");
    assert_eq!(del["all_deleted"], true);
    let statuses: Vec<&str> = del["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["deleted", "deleted"]);
    let gone = c
        .call(
            "snapshot_delete",
            json!({"cluster_name": name, "snapshot_name": "clean-boot"}),
        )
        .await;
    assert_eq!(gone.code(), "NOT_FOUND", "{}", gone.envelope);
    assert_eq!(names(&c, name).await, ["s1", "mixed"]);

    // Destroy takes the remaining snapshots with the domains.
    c.call(
        "cluster_destroy",
        json!({"cluster_name": name, "remove_overlays": true}),
    )
    .await
    .ok();
    let list = c.call("snapshot_list", json!({"cluster_name": name})).await;
    assert_eq!(list.code(), "NOT_FOUND");
    c.close().await;

    // Everything was journaled: each node's steps, and the snapshots as owned objects.
    let dir = f.scratch.path().join("state").join("journal");
    let (journal, _) = eventually("the server to release its journal", || async {
        vmcluster_journal::Journal::open(&dir).ok()
    })
    .await;
    let (mut steps, mut created, mut removed) = (BTreeSet::new(), Vec::new(), Vec::new());
    for rec in journal.iter_all() {
        match rec.expect("journal record").body {
            BodyV1::StepStarted { step, node, .. } => {
                steps.insert(format!("{step}:{}", node.unwrap_or_default()));
            }
            BodyV1::ObjectCreated {
                kind: ObjectKind::Snapshot,
                id,
                ..
            } => created.push(id),
            BodyV1::ObjectRemoved {
                kind: ObjectKind::Snapshot,
                id,
                ..
            } => removed.push(id),
            _ => {}
        }
    }
    for step in [
        "suspend_domain:n1",
        "create_snapshot:n2",
        "resume_domain:n2",
        "sync_disks:n1",
        "revert_snapshot:n2",
        "delete_snapshot:n1",
    ] {
        assert!(steps.contains(step), "{step} not journaled: {steps:?}");
    }
    created.sort();
    assert_eq!(
        created,
        [
            "n1/clean-boot",
            "n1/mixed",
            "n1/s1",
            "n2/clean-boot",
            "n2/mixed",
            "n2/s1"
        ]
    );
    removed.sort();
    assert_eq!(removed, ["n1/clean-boot", "n2/clean-boot"]);
}

/// A failpoint makes n2's snapshot step fail after libvirt took it: the create fails naming
/// n2, no node keeps the snapshot (n2's included), and every node runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_fails_on_one_node_leaves_no_snapshot() {
    let f = Fixture::new("itsnapfail", &["n1", "n2", "n3"]);
    let name = f.name.as_str();
    let c = running(&f, Some("create_snapshot:n2@after=error")).await;
    let r = c
        .call(
            "snapshot_create",
            json!({"cluster_name": name, "snapshot_name": "doomed", "include_memory": true}),
        )
        .await;
    let err = r.err();
    assert_eq!(err["node"], "n2", "{err}");
    assert_eq!(err["nodes"][0]["node"], "n2", "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("create_snapshot"),
        "{err}"
    );
    assert!(r.envelope["op_id"].is_string(), "journaled: {}", r.envelope);
    assert!(names(&c, name).await.is_empty(), "a snapshot survived");
    assert_eq!(states(&c, name).await, ["running", "running", "running"]);
    c.close().await;
}

/// A node whose revert keeps failing is retried, then named; the others are reverted (the call
/// finishes what it can rather than stopping half way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revert_that_keeps_failing_on_one_node_names_it_after_retries() {
    let f = Fixture::new("itsnaprev", &["n1", "n2"]);
    let name = f.name.as_str();
    let c = running(&f, Some("revert_snapshot:n2=error")).await;
    c.call(
        "snapshot_create",
        json!({"cluster_name": name, "snapshot_name": "s1", "include_memory": true}),
    )
    .await
    .ok();
    let r = c
        .call(
            "snapshot_revert",
            json!({"cluster_name": name, "snapshot_name": "s1", "wait_for_ssh": false}),
        )
        .await;
    let err = r.err();
    assert_eq!(err["node"], "n2", "{err}");
    assert_eq!(err["nodes"].as_array().unwrap().len(), 1, "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("revert_snapshot"),
        "{err}"
    );
    assert!(r.envelope["op_id"].is_string());
    c.close().await;
    let dir = f.scratch.path().join("state").join("journal");
    let (journal, _) = eventually("the server to release its journal", || async {
        vmcluster_journal::Journal::open(&dir).ok()
    })
    .await;
    let attempts = |node: &str| {
        journal
            .iter_all()
            .filter(|r| {
                matches!(&r.as_ref().unwrap().body,
                    BodyV1::StepStarted { step, node: Some(n), .. } if step == "revert_snapshot" && n == node)
            })
            .count()
    };
    assert_eq!(
        (attempts("n1"), attempts("n2")),
        (1, 3),
        "n2 retried, n1 done once"
    );
}
