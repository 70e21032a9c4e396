//! The event stream of a real 1-node cluster: `vmcluster events --follow --json`, started as a
//! separate process against the running server, prints define → start → stop → destroy as they
//! happen, in order, nothing missing (consecutive sequence numbers) and nothing twice, and what
//! it printed is exactly what `events_read` returns.

use std::time::Duration;

use serde_json::{Value, json};
use vmcluster_tests::{EventsFollower, McpClient, event_story as story};

use crate::{cluster_scratch, preflight};

/// How long the follower may take to print an operation's last event once the tool returned
/// (the events are durable by then).
const PRINTED: Duration = Duration::from_secs(30);

/// Index of the first event at or after `from` with `kind` whose detail is `detail` (panics if
/// none).
#[track_caller]
fn find(events: &[Value], from: usize, kind: &str, detail: &str) -> usize {
    from + events[from..]
        .iter()
        .position(|e| e["kind"] == kind && e["detail"] == detail)
        .unwrap_or_else(|| panic!("no {kind} {detail} after #{from}:\n{}", story(events)))
}

/// Awaits the follower's `op.finished` line of the operation `called` returned.
async fn until_finished(f: &mut EventsFollower, called: &vmcluster_tests::Called) -> Vec<Value> {
    let op = called.envelope["op_id"].clone();
    assert!(op.is_string(), "{}", called.envelope);
    f.until(PRINTED, |e| e["kind"] == "op.finished" && e["op_id"] == op)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_prints_a_real_lifecycle_in_order() {
    let g = preflight();
    let name = "ev1";
    let s = cluster_scratch(&g, name, 130, &["n1"]);
    let env = s.env("qemu:///system");
    let c = McpClient::spawn(&env).await;
    let mut follower = EventsFollower::spawn(&env, &[]);

    let mut printed = Vec::new();
    let r = c
        .call("cluster_define", json!({"topology_name": name}))
        .await;
    r.ok();
    printed.extend(until_finished(&mut follower, &r).await);
    let r = c
        .call(
            "cluster_start",
            json!({"cluster_name": name, "wait_for_ssh": true, "ssh_timeout_s": 180}),
        )
        .await;
    assert_eq!(r.ok()["nodes"][0]["phase"], "ready");
    printed.extend(until_finished(&mut follower, &r).await);
    let r = c
        .call(
            "cluster_stop",
            json!({"cluster_name": name, "mode": "shutdown", "timeout_s": 90}),
        )
        .await;
    assert_eq!(r.ok()["nodes"][0]["domain_state"], "shut off");
    printed.extend(until_finished(&mut follower, &r).await);
    // Destroy with the disks, and check that nothing is left on the host.
    crate::destroy_and_check_clean(&c, &s, name).await;
    printed.extend(
        follower
            .until(PRINTED, |e| {
                e["kind"] == "op.finished" && e["tool"] == "cluster_destroy"
            })
            .await,
    );
    follower.kill().await;

    // Nothing missing, nothing twice: the journal's sequence numbers, consecutive from 1.
    let seqs: Vec<u64> = printed.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "{}",
        story(&printed)
    );
    assert!(
        printed.iter().all(|e| e["cluster"] == name),
        "{}",
        story(&printed)
    );

    // The operations, in order, each applied.
    let ops: Vec<(String, String, String)> = printed
        .iter()
        .filter(|e| e["kind"].as_str().unwrap().starts_with("op."))
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_owned();
            (s("tool"), s("kind"), s("outcome"))
        })
        .collect();
    let expected: Vec<(String, String, String)> = [
        "cluster_define",
        "cluster_start",
        "cluster_stop",
        "cluster_destroy",
    ]
    .iter()
    .flat_map(|t| {
        [
            (t.to_string(), "op.started".to_owned(), String::new()),
            (
                t.to_string(),
                "op.finished".to_owned(),
                "applied".to_owned(),
            ),
        ]
    })
    .collect();
    assert_eq!(ops, expected, "{}", story(&printed));

    // What each operation changed, inside it.
    let op_at = |tool: &str, kind: &str| {
        printed
            .iter()
            .position(|e| e["tool"] == tool && e["kind"] == kind)
            .unwrap()
    };
    let (define, defined) = (
        op_at("cluster_define", "op.started"),
        op_at("cluster_define", "op.finished"),
    );
    let dom = find(
        &printed,
        define,
        "object.created",
        &format!("domain {name}_n1"),
    );
    let net = find(
        &printed,
        define,
        "object.created",
        &format!("network {name}-net"),
    );
    let cd = printed
        .iter()
        .position(|e| e["kind"] == "cluster.defined")
        .unwrap();
    assert!(
        define < cd && cd < net && net < dom && dom < defined,
        "{}",
        story(&printed)
    );

    let (start, started) = (
        op_at("cluster_start", "op.started"),
        op_at("cluster_start", "op.finished"),
    );
    let running = find(&printed, start, "node.state", "running");
    let ready = find(&printed, running, "node.state", "ready");
    assert!(
        ready < started,
        "ready is journaled before start returns:\n{}",
        story(&printed)
    );
    let pinned = printed
        .iter()
        .position(|e| e["kind"] == "host_key.pinned")
        .expect("the host key is pinned on first contact");
    assert!(start < pinned && pinned < started);
    assert_eq!(printed[pinned]["node"], "n1");
    assert!(
        printed[pinned]["detail"]
            .as_str()
            .unwrap()
            .starts_with("ssh-ed25519 ")
    );

    let (stop, stopped) = (
        op_at("cluster_stop", "op.started"),
        op_at("cluster_stop", "op.finished"),
    );
    let off = find(&printed, stop, "node.state", "shut off");
    assert!(off < stopped, "{}", story(&printed));

    let (destroy, destroyed) = (
        op_at("cluster_destroy", "op.started"),
        op_at("cluster_destroy", "op.finished"),
    );
    let removed = find(
        &printed,
        destroy,
        "object.removed",
        &format!("domain {name}_n1"),
    );
    let gone = destroy
        + printed[destroy..]
            .iter()
            .position(|e| e["kind"] == "cluster.removed")
            .expect("cluster.removed");
    assert!(removed < gone && gone < destroyed, "{}", story(&printed));
    for (i, e) in printed.iter().enumerate() {
        if e["kind"] == "step.started" {
            let done = printed[i..]
                .iter()
                .find(|f| {
                    f["kind"] == "step.finished"
                        && f["detail"] == e["detail"]
                        && f["node"] == e["node"]
                })
                .unwrap_or_else(|| panic!("step {e} never finished"));
            assert_eq!(done["outcome"], "ok", "{done}");
        }
    }

    // The follower printed exactly what the server's events_read returns.
    let page = c.call("events_read", json!({"limit": 1000})).await;
    assert_eq!(page.ok()["events"].as_array().unwrap()[..], printed[..]);
    c.close().await;
}
