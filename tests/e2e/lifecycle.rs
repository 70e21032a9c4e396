//! The whole lifecycle of a 3-node cluster over MCP, on real guests: define twice, start and
//! wait, status, handle (its SSH descriptors really work), crash and recover one node, graceful
//! shutdown, destroy leaving nothing behind.

use serde_json::json;
use vmcluster_tests::McpClient;

use crate::{cluster_scratch, host_objects, preflight, ssh, virsh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_lifecycle_over_mcp() {
    let g = preflight();
    let name = "lc3";
    let s = cluster_scratch(&g, name, 101, &["n1", "n2", "n3"]);
    let c = McpClient::spawn(&s.env("qemu:///system")).await;

    // Define, twice: the second converges to the same state without rewriting anything.
    let first = c
        .call("cluster_define", json!({"topology_name": name}))
        .await;
    let status = first.ok();
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3);
    for n in status["nodes"].as_array().unwrap() {
        assert_eq!(n["domain_state"], "shut off", "{n}");
        assert_eq!(
            n["domain_type"], "qemu",
            "nested KVM is broken on these machines: the probe must pick TCG"
        );
    }
    let overlay = s.path().join("overlays").join(name).join("n1.qcow2");
    let mtime = std::fs::metadata(&overlay).unwrap().modified().unwrap();
    let second = c
        .call("cluster_define", json!({"topology_name": name}))
        .await;
    second.ok();
    assert_ne!(first.envelope["op_id"], second.envelope["op_id"]);
    assert_eq!(
        std::fs::metadata(&overlay).unwrap().modified().unwrap(),
        mtime,
        "define must never rewrite an overlay"
    );
    let objs = host_objects(name);
    assert_eq!(objs.domains.len(), 3, "{objs:?}");
    assert_eq!(objs.networks.len(), 1, "{objs:?}");

    // Start and wait for every node to be ready.
    let started = c
        .call(
            "cluster_start",
            json!({"cluster_name": name, "wait_for_ssh": true, "ssh_timeout_s": 180}),
        )
        .await;
    for n in started.ok()["nodes"].as_array().unwrap() {
        assert_eq!(n["domain_state"], "running", "{n}");
        assert_eq!(n["phase"], "ready", "{n}");
        assert_eq!(n["ssh_reachable"], true);
    }

    // The handle's descriptors work with the system ssh client.
    let handle = c
        .call("cluster_handle", json!({"cluster_name": name}))
        .await;
    let h = handle.ok();
    assert!(
        h["kernel_version"]
            .as_str()
            .unwrap()
            .contains("cloud-amd64"),
        "{h}"
    );
    for n in h["nodes"].as_array().unwrap() {
        let out = ssh(
            n["ssh_key_path"].as_str().unwrap(),
            n["ssh_user"].as_str().unwrap(),
            n["ip"].as_str().unwrap(),
            n["ssh_port"].as_u64().unwrap(),
            "hostname",
        );
        assert!(
            out.status.success(),
            "ssh to {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            n["name"].as_str().unwrap()
        );
        assert!(
            n["host_key"]
                .as_str()
                .is_some_and(|k| k.starts_with("ssh-ed25519 ")),
            "{n}"
        );
    }
    let n2 = h["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "n2")
        .unwrap()
        .clone();
    let uptime = |n: &serde_json::Value| -> f64 {
        let out = ssh(
            n["ssh_key_path"].as_str().unwrap(),
            "root",
            n["ip"].as_str().unwrap(),
            22,
            "cut -d' ' -f1 /proc/uptime",
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("uptime")
    };
    let before = uptime(&n2);

    // Crash n2 and bring it back.
    let crashed = c
        .call("node_crash", json!({"cluster_name": name, "node": "n2", "restart_after": true, "wait_for_ssh": true, "ssh_timeout_s": 180}))
        .await;
    let node = &crashed.ok()["node"];
    assert_eq!(node["phase"], "ready", "{node}");
    let after = uptime(&n2);
    assert!(
        after < before + 1.0 && after < 120.0,
        "n2 did not reboot: uptime {before} -> {after}"
    );
    let status = c
        .call("cluster_status", json!({"cluster_name": name}))
        .await;
    assert!(
        status.ok()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["phase"] == "ready")
    );

    // Destroy one domain behind the server's back: status tells the truth without blocking.
    virsh(&["destroy", &format!("{name}_n3")]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let st = c
            .call("cluster_status", json!({"cluster_name": name}))
            .await;
        let n3 = st.ok()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "n3")
            .unwrap()
            .clone();
        if n3["domain_state"] == "shut off" {
            assert_eq!(n3["phase"], "down");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status never saw n3 stop: {n3}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // A network stopped behind the server's back is reported inactive.
    virsh(&["net-destroy", &format!("{name}-net")]);
    let st = c
        .call("cluster_status", json!({"cluster_name": name}))
        .await;
    assert_eq!(st.ok()["network_active"], false);
    c.call(
        "cluster_start",
        json!({"cluster_name": name, "wait_for_ssh": true, "ssh_timeout_s": 180}),
    )
    .await
    .ok();
    let st = c
        .call("cluster_status", json!({"cluster_name": name}))
        .await;
    assert_eq!(
        st.ok()["network_active"],
        true,
        "cluster_start brings the network back"
    );

    // Graceful shutdown ends with every node shut off.
    let stopped = c
        .call(
            "cluster_stop",
            json!({"cluster_name": name, "mode": "shutdown", "timeout_s": 90}),
        )
        .await;
    for n in stopped.ok()["nodes"].as_array().unwrap() {
        assert_eq!(n["domain_state"], "shut off", "{n}");
    }
    for d in ["n1", "n2", "n3"] {
        assert_eq!(
            virsh(&["domstate", &format!("{name}_{d}")]),
            vec!["shut off".to_owned()]
        );
    }

    // Destroy leaves nothing: no domain, network, bridge, seed, console log or overlay.
    crate::destroy_and_check_clean(&c, &s, name).await;
    let gone = c
        .call("cluster_status", json!({"cluster_name": name}))
        .await;
    assert_eq!(gone.code(), "NOT_FOUND");
    c.close().await;
}
