//! What the server knows survives the server: a cluster defined and started by one server
//! process is reported, handled and destroyed by the next one (the journal holds the clusters
//! and the pinned host keys, libvirt the live state, and readiness is probed again).

use serde_json::json;
use vmcluster_tests::McpClient;

use crate::{cluster_scratch, preflight};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_answers_for_clusters_defined_before() {
    let g = preflight();
    let name = "rs1";
    let s = cluster_scratch(&g, name, 105, &["n1"]);
    let first = McpClient::spawn(&s.env("qemu:///system")).await;
    first
        .call("cluster_define", json!({"topology_name": name}))
        .await
        .ok();
    first
        .call(
            "cluster_start",
            json!({"cluster_name": name, "ssh_timeout_s": 180}),
        )
        .await
        .ok();
    first.close().await;

    let second = McpClient::spawn(&s.env("qemu:///system")).await;
    let list = second.call("cluster_list", json!({})).await;
    assert_eq!(list.ok()["clusters"][0]["cluster_name"], name);
    // The new server re-probes the running node; wait (bounded) until it has an answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let st = second
            .call("cluster_status", json!({"cluster_name": name}))
            .await;
        let n1 = st.ok()["nodes"][0].clone();
        assert_eq!(n1["domain_state"], "running", "{n1}");
        if n1["phase"] == "ready" {
            break;
        }
        assert!(n1["last_error"].is_null(), "{n1}");
        assert!(
            std::time::Instant::now() < deadline,
            "node never became ready again: {n1}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let handle = second
        .call("cluster_handle", json!({"cluster_name": name}))
        .await;
    assert!(
        handle.ok()["kernel_version"]
            .as_str()
            .is_some_and(|k| !k.is_empty())
    );

    // The host key pinned by the first server still guards the second: a node that comes back
    // with another key is refused, with an SSH error that says so.
    let wipe = json!({"cluster_name": name, "node_name": "n1",
        "command": "rm -f /etc/dropbear/dropbear_ed25519_host_key && sync"});
    second.call("node_exec", wipe).await.ok();
    let crashed = second
        .call(
            "node_crash",
            json!({"cluster_name": name, "node": "n1", "restart_after": true, "wait_for_ssh": true, "ssh_timeout_s": 90}),
        )
        .await;
    assert_eq!(crashed.code(), "SSH", "{}", crashed.envelope);
    let message = crashed.err()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("host key changed"), "{message}");
    let exec = second
        .call(
            "node_exec",
            json!({"cluster_name": name, "node_name": "n1", "command": "true"}),
        )
        .await;
    assert_eq!(
        exec.code(),
        "SSH",
        "no command may run on a node with a changed key: {}",
        exec.envelope
    );
    crate::destroy_and_check_clean(&second, &s, name).await;
    second.close().await;
}
