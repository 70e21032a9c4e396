//! The pooled SSH session comes back by itself: the guest kills the dropbear process serving
//! our connection (and holds new logins back for a while); the status shows the session
//! reconnecting, a command arriving meanwhile waits for the new session within its own timeout
//! (and one with too short a timeout fails with SSH), the status then counts one reconnect, and
//! the journal holds the `ssh_lost` / `ssh_restored` node events. A reboot makes a fresh session
//! too.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vmcluster_journal::{BodyV1, Journal};
use vmcluster_tests::McpClient;

use crate::{cluster_scratch, preflight};

/// Polls `cluster_status` until node 0 satisfies `f` (status is answered from memory; this is
/// how a client awaits a state change).
async fn await_node(c: &McpClient, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = c
            .call("cluster_status", json!({"cluster_name": name}))
            .await;
        let node = st.ok()["nodes"][0].clone();
        if f(&node) {
            return node;
        }
        assert!(Instant::now() < deadline, "never {what}: {node}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_session_is_reestablished_and_commands_wait_for_it() {
    let g = preflight();
    let name = "rc1";
    let s = cluster_scratch(&g, name, 111, &["n1"]);
    let c = crate::up(&s, name).await;
    let exec = |command: &str, timeout_s: u64| json!({"cluster_name": name, "node_name": "n1", "command": command, "timeout_s": timeout_s});
    let node = await_node(&c, name, "connected", |n| n["ssh_session"] == "connected").await;
    assert_eq!(node["ssh_reconnects"], 0);

    // In the guest, detached from our command: stop the listening dropbear (new logins hang),
    // kill the dropbear child serving our connection ($PPID of the command's shell), and let
    // logins through again 3 s later.
    let drop = "conn=$PPID; master=$(cut -d' ' -f4 /proc/$conn/stat); \
        setsid sh -c \"sleep 0.5; kill -STOP $master; kill $conn; sleep 3; kill -CONT $master\" \
        </dev/null >/dev/null 2>&1 &";
    c.call("node_exec", exec(drop, 10)).await.ok();
    await_node(&c, name, "reconnecting", |n| {
        n["ssh_session"] == "connecting"
    })
    .await;

    // Too short a budget: an SSH error that says it is reconnecting, not an exit code.
    let t = Instant::now();
    let short = c.call("node_exec", exec("true", 1)).await;
    assert_eq!(short.code(), "SSH", "{}", short.envelope);
    assert!(
        short.err()["message"]
            .as_str()
            .unwrap()
            .contains("reconnecting"),
        "{}",
        short.envelope
    );
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "it waited its budget"
    );
    // A command with time to spare waits for the new session and runs.
    let r = c.call("node_exec", exec("hostname", 60)).await;
    assert_eq!(r.ok()["stdout"], "n1\n");
    let node = await_node(&c, name, "reconnected", |n| n["ssh_reconnects"] == 1).await;
    assert_eq!(node["ssh_session"], "connected");
    assert_eq!(node["phase"], "ready");

    // A reboot starts a new boot with a fresh session (and a fresh count).
    c.call(
        "node_reboot",
        json!({"cluster_name": name, "node_name": "n1", "ssh_timeout_s": 180}),
    )
    .await
    .ok();
    let r = c.call("node_exec", exec("cat /proc/uptime", 30)).await;
    let uptime: f64 = r.ok()["stdout"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(uptime < 120.0, "not rebooted? uptime {uptime}");
    let node = await_node(&c, name, "connected", |n| n["ssh_session"] == "connected").await;
    assert_eq!(node["ssh_reconnects"], 0);

    crate::destroy_and_check_clean(&c, &s, name).await;
    c.close().await;

    // The journal tells the session's story as node events (among the state changes).
    let (journal, _) = Journal::open(&s.path().join("state/journal")).expect("open journal");
    let events: Vec<String> = journal
        .iter_all()
        .filter_map(|r| match r.expect("record").body {
            BodyV1::NodeEvent { node, kind, .. } if node == "n1" && kind.starts_with("ssh_") => {
                Some(kind)
            }
            _ => None,
        })
        .collect();
    assert_eq!(events, ["ssh_lost", "ssh_restored"], "{events:?}");
}
