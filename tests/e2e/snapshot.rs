//! Cluster-wide snapshots on real guests: a revert really brings files, processes and clocks
//! back (memory) or reboots into the disk state (disk); a missing name changes nothing; a
//! create that fails on one node leaves no snapshot anywhere and every node running; stopped
//! and running nodes mix; destroy leaves no snapshot behind, inside the disks included.

use serde_json::{Value, json};
use vmcluster_tests::{Called, McpClient};

use crate::{cluster_scratch, preflight, virsh};

/// Each node's trimmed stdout of a successful `node_exec_all`, in topology order.
#[track_caller]
fn outputs(r: &Called) -> Vec<String> {
    r.ok()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            assert_eq!(n["result"]["exit_code"], 0, "{n}");
            n["result"]["stdout"].as_str().unwrap().trim().to_owned()
        })
        .collect()
}

/// Runs `command` on `nodes` (all when `None`) and returns each node's stdout.
async fn on(c: &McpClient, name: &str, nodes: Option<&[&str]>, command: &str) -> Vec<String> {
    let mut args = json!({"cluster_name": name, "command": command});
    if let Some(n) = nodes {
        args["nodes"] = json!(n);
    }
    outputs(&c.call("node_exec_all", args).await)
}

/// Prints the kernel's id of the current boot (a new one at every boot, kept by a memory
/// revert, which resumes the same boot).
const BOOT_ID: &str = "cat /proc/sys/kernel/random/boot_id";

/// Seconds since boot on each node.
async fn uptimes(c: &McpClient, name: &str, nodes: Option<&[&str]>) -> Vec<f64> {
    on(c, name, nodes, "cut -d' ' -f1 /proc/uptime")
        .await
        .iter()
        .map(|u| u.parse().unwrap())
        .collect()
}

/// `field` of every node in a status-shaped result.
fn node_field(result: &Value, field: &str) -> Vec<String> {
    result["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes in {result}"))
        .iter()
        .map(|n| n[field].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The per-node `action`s of a revert result.
fn actions(result: &Value) -> Vec<String> {
    result["reverted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["action"].as_str().unwrap().to_owned())
        .collect()
}

/// The snapshot names libvirt holds for `domain`.
fn libvirt_snapshots(domain: &str) -> Vec<String> {
    virsh(&["snapshot-list", domain, "--name"])
}

/// The internal snapshots stored inside a qcow2 image.
fn image_snapshots(path: &std::path::Path) -> Vec<String> {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(path)
        .output()
        .expect("qemu-img");
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["snapshots"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverts_bring_back_files_processes_and_clocks_on_three_nodes() {
    let g = preflight();
    let name = "sn3";
    let s = cluster_scratch(&g, name, 120, &["n1", "n2", "n3"]);
    let c = crate::up(&s, name).await;
    let keys_before = node_field(
        c.call("cluster_handle", json!({"cluster_name": name}))
            .await
            .ok(),
        "host_key",
    );

    // The state to come back to: a file and a running process on every node, in this boot.
    let boot_ids = on(&c, name, None, BOOT_ID).await;
    let pids = on(
        &c,
        name,
        None,
        "echo one > /root/first; sleep 10000 </dev/null >/dev/null 2>&1 & echo $!",
    )
    .await;
    let snap = |n: &str, mem: bool| json!({"cluster_name": name, "snapshot_name": n, "include_memory": mem, "description": format!("{n} cut")});
    let mem = c.call("snapshot_create", snap("mem", true)).await;
    let mem = mem.ok();
    assert_eq!(mem["complete"], true, "{mem}");
    for n in mem["nodes"].as_array().unwrap() {
        assert_eq!(
            (
                n["present"].as_bool(),
                n["kind"].as_str(),
                n["domain_state"].as_str()
            ),
            (Some(true), Some("memory"), Some("running")),
            "{n}"
        );
        assert!(n["vm_state_bytes"].as_u64().unwrap() > 0, "{n}");
    }
    let disk = c.call("snapshot_create", snap("disk", false)).await;
    let disk = disk.ok();
    for n in disk["nodes"].as_array().unwrap() {
        assert_eq!(n["kind"], "disk", "{n}");
    }
    let listed = c.call("snapshot_list", json!({"cluster_name": name})).await;
    let names: Vec<&str> = listed.ok()["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["snapshot_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mem", "disk"]);
    assert_eq!(libvirt_snapshots(&format!("{name}_n2")), ["disk", "mem"]);

    // Everything changes after the cut.
    let check_pid =
        |i: usize| format!("kill -0 {} 2>/dev/null && echo alive || echo gone", pids[i]);
    for (i, node) in ["n1", "n2", "n3"].iter().enumerate() {
        let args = json!({"cluster_name": name, "node_name": node,
            // The killed process lingers until the guest's init reaps it: wait (10 s at most).
            "command": format!("echo two > /root/second && rm /root/first && kill {p} && sync; \
                for _ in $(seq 100); do kill -0 {p} 2>/dev/null || break; sleep 0.1; done", p = pids[i])});
        c.call("node_exec", args).await.ok();
        assert_eq!(on(&c, name, Some(&[*node]), &check_pid(i)).await, ["gone"]);
    }
    // Two collects: the second returns only what is new, so the cursor is at the log's end.
    for _ in 0..2 {
        c.call("dmesg_collect", json!({"cluster_name": name}))
            .await
            .ok();
    }
    // Guest time passes after the cut (a guest-side wait, so the clocks differ clearly).
    let before_revert = on(&c, name, None, "sleep 8; cut -d' ' -f1 /proc/uptime").await;
    let before_revert: Vec<f64> = before_revert.iter().map(|u| u.parse().unwrap()).collect();

    // Memory: files, processes and clocks come back, no reboot.
    let r = c
        .call(
            "snapshot_revert",
            json!({"cluster_name": name, "snapshot_name": "mem"}),
        )
        .await;
    let r = r.ok();
    assert_eq!(actions(r), ["resumed_from_memory"; 3]);
    assert_eq!(node_field(r, "phase"), ["ready"; 3], "{r}");
    let after_mem = uptimes(&c, name, None).await;
    for (a, b) in after_mem.iter().zip(&before_revert) {
        assert!(
            a < b,
            "uptime went back: {after_mem:?} vs {before_revert:?}"
        );
    }
    assert_eq!(on(&c, name, None, BOOT_ID).await, boot_ids, "no reboot");
    assert_eq!(on(&c, name, None, "ls /root").await, ["first"; 3]);
    for (i, node) in ["n1", "n2", "n3"].iter().enumerate() {
        assert_eq!(
            on(&c, name, Some(&[*node]), &check_pid(i)).await,
            ["alive"],
            "the process started before the cut runs again on {node}"
        );
    }
    // The dmesg cursor was reset with the session: the whole (reverted) log comes back.
    let collected = c.call("dmesg_collect", json!({"cluster_name": name})).await;
    for n in collected.ok()["nodes"].as_array().unwrap() {
        assert!(
            n["lines"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["text"].as_str().unwrap().starts_with("Linux version")),
            "{}: no boot line after the revert",
            n["node"]
        );
    }
    let keys_after = node_field(
        c.call("cluster_handle", json!({"cluster_name": name}))
            .await
            .ok(),
        "host_key",
    );
    assert_eq!(keys_after, keys_before, "same disks, same pinned host keys");

    // Disk: the nodes reboot into the disk state of the cut.
    on(
        &c,
        name,
        None,
        "echo three > /root/third && rm /root/first && sync",
    )
    .await;
    let r = c
        .call(
            "snapshot_revert",
            json!({"cluster_name": name, "snapshot_name": "disk", "ssh_timeout_s": 180}),
        )
        .await;
    assert_eq!(actions(r.ok()), ["rebooted"; 3]);
    assert_eq!(on(&c, name, None, "ls /root").await, ["first"; 3]);
    let after_disk = on(&c, name, None, BOOT_ID).await;
    for (i, (a, b)) in after_disk.iter().zip(&boot_ids).enumerate() {
        assert_ne!(a, b, "node {} did not reboot", i + 1);
        assert_eq!(
            on(&c, name, Some(&[["n1", "n2", "n3"][i]]), &check_pid(i)).await,
            ["gone"],
            "a reboot leaves no process of the old boot"
        );
    }

    // A name no node holds changes nothing.
    let missing = c
        .call(
            "snapshot_revert",
            json!({"cluster_name": name, "snapshot_name": "nope"}),
        )
        .await;
    assert_eq!(missing.code(), "NOT_FOUND", "{}", missing.envelope);
    assert_eq!(missing.envelope["op_id"], Value::Null);
    let st = c
        .call("cluster_status", json!({"cluster_name": name}))
        .await;
    assert_eq!(node_field(st.ok(), "domain_state"), ["running"; 3]);
    assert_eq!(node_field(st.ok(), "phase"), ["ready"; 3]);
    assert_eq!(on(&c, name, None, "ls /root").await, ["first"; 3]);

    // Delete: per-node status, then it is gone; destroy takes the other one.
    let del = c
        .call(
            "snapshot_delete",
            json!({"cluster_name": name, "snapshot_name": "mem"}),
        )
        .await;
    let statuses: Vec<&str> = del.ok()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["deleted"; 3]);
    assert_eq!(libvirt_snapshots(&format!("{name}_n1")), ["disk"]);
    let overlay = s.path().join("overlays").join(name).join("n1.qcow2");
    assert_eq!(image_snapshots(&overlay), ["disk"], "the data went too");

    crate::destroy_and_check_clean(&c, &s, name).await;
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_nodes_failed_creates_and_destroy_leave_no_snapshot() {
    let g = preflight();
    let name = "sf3";
    let s = cluster_scratch(&g, name, 121, &["n1", "n2", "n3"]);
    let c = McpClient::spawn(&s.env("qemu:///system")).await;
    c.call("cluster_define", json!({"topology_name": name}))
        .await
        .ok();
    // Before the first boot (every node off): disk-only on every node.
    let r = c
        .call(
            "snapshot_create",
            json!({"cluster_name": name, "snapshot_name": "pristine"}),
        )
        .await;
    for n in r.ok()["nodes"].as_array().unwrap() {
        assert_eq!(
            (n["kind"].as_str(), n["domain_state"].as_str()),
            (Some("disk"), Some("shut off")),
            "{n}"
        );
    }
    c.call(
        "cluster_start",
        json!({"cluster_name": name, "ssh_timeout_s": 180}),
    )
    .await
    .ok();
    let up: &[&str] = &["n1", "n2"];

    // Two running nodes and a stopped one in one cut.
    c.call(
        "node_stop",
        json!({"cluster_name": name, "node_name": "n3", "mode": "destroy"}),
    )
    .await
    .ok();
    on(&c, name, Some(up), "echo one > /root/first").await;
    let r = c
        .call(
            "snapshot_create",
            json!({"cluster_name": name, "snapshot_name": "mixed", "include_memory": true}),
        )
        .await;
    let kinds: Vec<(String, String, u64)> = r.ok()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["kind"].as_str().unwrap().to_owned(),
                n["domain_state"].as_str().unwrap().to_owned(),
                n["vm_state_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds.iter().map(|k| (&*k.0, &*k.1)).collect::<Vec<_>>(),
        [
            ("memory", "running"),
            ("memory", "running"),
            ("disk", "shut off")
        ]
    );
    assert!(
        kinds[0].2 > 0 && kinds[1].2 > 0 && kinds[2].2 == 0,
        "{kinds:?}"
    );
    on(
        &c,
        name,
        Some(up),
        "rm /root/first && echo two > /root/second",
    )
    .await;
    let r = c
        .call(
            "snapshot_revert",
            json!({"cluster_name": name, "snapshot_name": "mixed"}),
        )
        .await;
    let r = r.ok();
    assert_eq!(
        actions(r),
        ["resumed_from_memory", "resumed_from_memory", "left_off"]
    );
    assert_eq!(
        node_field(r, "domain_state"),
        ["running", "running", "shut off"]
    );
    assert_eq!(on(&c, name, Some(up), "ls /root").await, ["first"; 2]);
    c.close().await;

    // The next server fails n2's snapshot step after libvirt took it.
    let mut env = s.env("qemu:///system");
    env.push((
        "VMCLUSTER_FAILPOINTS".into(),
        "create_snapshot:n2@after=error".into(),
    ));
    let c = McpClient::spawn(&env).await;
    let failed = c
        .call(
            "snapshot_create",
            json!({"cluster_name": name, "snapshot_name": "doomed", "include_memory": true}),
        )
        .await;
    let err = failed.err();
    assert_eq!(err["node"], "n2", "{err}");
    assert_eq!(err["nodes"].as_array().unwrap().len(), 1, "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("create_snapshot"),
        "{err}"
    );
    for n in ["n1", "n2", "n3"] {
        assert_eq!(
            libvirt_snapshots(&format!("{name}_{n}")),
            ["mixed", "pristine"],
            "{n} kept a piece of the failed snapshot"
        );
    }
    assert_eq!(
        virsh(&["domstate", &format!("{name}_n1")]),
        ["running"],
        "the cut resumed what it paused"
    );
    assert_eq!(virsh(&["domstate", &format!("{name}_n2")]), ["running"]);
    assert_eq!(virsh(&["domstate", &format!("{name}_n3")]), ["shut off"]);
    let listed = c.call("snapshot_list", json!({"cluster_name": name})).await;
    let snaps = listed.ok()["snapshots"].as_array().unwrap().clone();
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    assert!(snaps.iter().all(|s| s["complete"] == true), "{snaps:?}");
    c.close().await;

    // Back before the first boot: every node was off then, so every node is off now. A node
    // booted from that disk makes itself a new host key, which is accepted (none was pinned at
    // the cut), and its disk is the pristine one.
    let c = McpClient::spawn(&s.env("qemu:///system")).await;
    let r = c
        .call(
            "snapshot_revert",
            json!({"cluster_name": name, "snapshot_name": "pristine"}),
        )
        .await;
    assert_eq!(actions(r.ok()), ["left_off"; 3]);
    assert_eq!(node_field(r.ok(), "domain_state"), ["shut off"; 3]);
    c.call(
        "node_start",
        json!({"cluster_name": name, "node_name": "n1", "ssh_timeout_s": 180}),
    )
    .await
    .ok();
    assert_eq!(on(&c, name, Some(&["n1"]), "ls /root | wc -l").await, ["0"]);

    // Destroy keeping the disks: no snapshot survives inside them either.
    c.call(
        "cluster_destroy",
        json!({"cluster_name": name, "remove_overlays": false}),
    )
    .await
    .ok();
    for n in ["n1", "n2", "n3"] {
        let overlay = s
            .path()
            .join("overlays")
            .join(name)
            .join(format!("{n}.qcow2"));
        assert!(overlay.is_file());
        assert_eq!(image_snapshots(&overlay), Vec::<String>::new(), "{n}");
    }
    c.call("cluster_define", json!({"topology_name": name}))
        .await
        .ok();
    crate::destroy_and_check_clean(&c, &s, name).await;
    c.close().await;
}
