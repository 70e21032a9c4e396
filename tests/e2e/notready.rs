//! A node that never becomes ready fails with an error naming the node, the last readiness
//! phase it reached, and the tail of its serial console.

use serde_json::json;
use vmcluster_tests::McpClient;

use crate::{Guest, preflight};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_gets_ready_is_reported_with_phase_and_console() {
    let g: Guest = preflight();
    let name = "nr1";
    // Nothing listens on port 2222 in the guest: the domain runs, the port never opens.
    let s = crate::cluster_scratch(&g, name, 106, &["n1"]);
    let path = s.path().join("topologies").join(format!("{name}.yaml"));
    let yaml = std::fs::read_to_string(&path)
        .unwrap()
        .replace("ssh:\n", "ssh:\n  port: 2222\n");
    std::fs::write(&path, yaml).unwrap();
    let c = McpClient::spawn(&s.env("qemu:///system")).await;
    c.call("cluster_define", json!({"topology_name": name}))
        .await
        .ok();

    let r = c
        .call(
            "cluster_start",
            json!({"cluster_name": name, "wait_for_ssh": true, "ssh_timeout_s": 25}),
        )
        .await;
    let err = r.err();
    assert_eq!(err["code"], "TIMEOUT", "{err}");
    assert_eq!(err["node"], "n1", "{err}");
    let msg = err["nodes"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("last phase reached: domain_running"),
        "the last phase must be named: {msg}"
    );
    assert!(
        msg.contains("console tail") && msg.contains("vmcluster-guest: READY"),
        "console tail missing: {msg}"
    );
    let st = c
        .call("cluster_status", json!({"cluster_name": name}))
        .await;
    let n1 = &st.ok()["nodes"][0];
    assert_eq!(n1["domain_state"], "running");
    assert_eq!(n1["phase"], "domain_running");
    assert!(
        n1["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("port")),
        "{n1}"
    );

    crate::destroy_and_check_clean(&c, &s, name).await;
    c.close().await;
}
