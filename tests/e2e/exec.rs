//! Remote execution over the nodes' pooled SSH sessions: output and exit codes kept apart,
//! timeouts that kill the command on the node, concurrency over one connection, caps, stdin and
//! environment, and per-node outcomes when a node is gone.

use serde_json::json;

use crate::{cluster_scratch, preflight, virsh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_on_one_node_and_on_all() {
    let g = preflight();
    let name = "ex3";
    let s = cluster_scratch(&g, name, 107, &["n1", "n2", "n3"]);
    let c = crate::up(&s, name).await;
    let exec = |node: &str, command: &str| json!({"cluster_name": name, "node_name": node, "command": command});

    // stdout, stderr and the exit code come back apart; a non-zero exit is a success.
    let r = c
        .call("node_exec", exec("n1", "echo out; echo err >&2; exit 3"))
        .await;
    let r = r.ok();
    assert_eq!(
        (
            r["stdout"].as_str(),
            r["stderr"].as_str(),
            r["exit_code"].as_i64()
        ),
        (Some("out\n"), Some("err\n"), Some(3))
    );
    assert_eq!(r["timed_out"], false);
    assert_eq!(r["node"], "n1");

    // stdin and environment.
    let mut args = exec("n2", "cat; echo \"$GREETING\"");
    args["stdin"] = json!("hello\n");
    args["env"] = json!({"GREETING": "it's me"});
    assert_eq!(
        c.call("node_exec", args).await.ok()["stdout"],
        "hello\nit's me\n"
    );

    // A command that outlives its timeout is killed on the node, children included.
    let mut args = exec("n1", "sleep 311 & sleep 312; echo never");
    args["timeout_s"] = json!(2);
    let r = c.call("node_exec", args).await;
    let r = r.ok();
    assert_eq!(r["timed_out"], true, "{r}");
    assert!(r["exit_code"].is_null() && r["stdout"] == "", "{r}");
    let ps = c
        .call(
            "node_exec",
            exec("n1", "ps -o args | grep -c '[s]leep 31' || true"),
        )
        .await;
    assert_eq!(
        ps.ok()["stdout"].as_str().unwrap().trim(),
        "0",
        "the timed-out command is still running"
    );

    // Huge output is capped, flagged, and its full size reported.
    let mut args = exec("n3", "head -c 300000 /dev/zero | tr '\\000' x");
    args["max_output_bytes"] = json!(1000);
    let r = c.call("node_exec", args).await;
    let r = r.ok();
    assert_eq!(
        (
            r["stdout"].as_str().unwrap().len(),
            r["truncated"].as_bool(),
            r["stdout_bytes"].as_u64()
        ),
        (1000, Some(true), Some(300000))
    );

    // 20 concurrent commands on one node over its one connection.
    let calls = (0..20).map(|i| c.call("node_exec", exec("n2", &format!("sleep 1; echo {i}"))));
    for (i, r) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(r.ok()["stdout"].as_str().unwrap().trim(), i.to_string());
    }

    // All nodes, then with one destroyed behind the server's back.
    let all = c
        .call(
            "node_exec_all",
            json!({"cluster_name": name, "command": "hostname"}),
        )
        .await;
    let all = all.ok();
    let hosts: Vec<&str> = all["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"]["stdout"].as_str().unwrap().trim())
        .collect();
    assert_eq!(hosts, ["n1", "n2", "n3"]);
    assert_eq!(all["all_succeeded"], true);
    virsh(&["destroy", &format!("{name}_n3")]);
    let strict = c
        .call(
            "node_exec_all",
            json!({"cluster_name": name, "command": "true", "require_all": true}),
        )
        .await;
    assert_eq!(strict.code(), "SSH", "{}", strict.envelope);
    assert_eq!(strict.err()["nodes"][0]["node"], "n3");
    let results = &strict.envelope["result"]["results"];
    assert_eq!(
        results[0]["result"]["exit_code"], 0,
        "per-node results come back on failure too"
    );
    assert_eq!(results[2]["error_code"], "SSH");
    let lenient = c
        .call(
            "node_exec_all",
            json!({"cluster_name": name, "command": "true", "require_all": false}),
        )
        .await;
    let lenient = lenient.ok();
    assert_eq!(lenient["failed_nodes"], json!(["n3"]));
    assert_eq!(lenient["all_succeeded"], false);
    let one = c.call("node_exec", exec("n3", "true")).await;
    assert_eq!(
        one.code(),
        "SSH",
        "an unreachable node is an error, never an exit code: {}",
        one.envelope
    );
    let nonzero = c.call("node_exec_all", json!({"cluster_name": name, "nodes": ["n1", "n2"], "command": "test $(hostname) = n1"})).await;
    assert_eq!(nonzero.code(), "COMMAND_FAILED");
    assert_eq!(nonzero.envelope["result"]["failed_nodes"], json!(["n2"]));

    // Kernel evidence: a planted WARNING after a marker is classified; a collect without a marker
    // returns only what is new since the previous one.
    let mark = c
        .call(
            "dmesg_mark",
            json!({"cluster_name": name, "nodes": ["n1", "n2"]}),
        )
        .await;
    let marker = mark.ok()["marker"].as_str().unwrap().to_owned();
    let plant = "echo '<4>WARNING: CPU: 0 PID: 1 at vmc/test.c:1 planted+0x0/0x1' > /dev/kmsg";
    c.call("node_exec", exec("n1", plant)).await.ok();
    let collected = c
        .call(
            "dmesg_collect",
            json!({"cluster_name": name, "nodes": ["n1", "n2"], "since_marker": marker, "filter_level": "warn+"}),
        )
        .await;
    let nodes = collected.ok()["nodes"].as_array().unwrap().clone();
    assert_eq!(nodes[0]["counts"]["warning"], 1, "{}", nodes[0]);
    let planted = nodes[0]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["text"].as_str().unwrap().contains("planted"));
    let planted = planted.unwrap_or_else(|| panic!("no planted line: {}", nodes[0]));
    assert_eq!(
        (planted["class"].as_str(), planted["severity"].as_str()),
        (Some("warning"), Some("warning"))
    );
    assert!(
        nodes[1]["lines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| !l["text"].as_str().unwrap().contains("planted"))
    );
    c.call(
        "node_exec",
        exec("n1", "echo '<6>vmc-fresh-line' > /dev/kmsg"),
    )
    .await
    .ok();
    let fresh = c
        .call(
            "dmesg_collect",
            json!({"cluster_name": name, "nodes": ["n1"]}),
        )
        .await;
    let texts: Vec<String> = fresh.ok()["nodes"][0]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap().to_owned())
        .collect();
    assert!(texts.iter().any(|t| t == "vmc-fresh-line"), "{texts:?}");
    assert!(
        !texts.iter().any(|t| t.contains("planted")),
        "the cursor must skip what was already returned: {texts:?}"
    );
    let again = c
        .call(
            "dmesg_collect",
            json!({"cluster_name": name, "nodes": ["n1"]}),
        )
        .await;
    let again = again.ok()["nodes"][0]["lines"].as_array().unwrap().clone();
    assert!(
        !again.iter().any(|l| l["text"] == "vmc-fresh-line"),
        "{again:?}"
    );
    let missing = c
        .call(
            "dmesg_collect",
            json!({"cluster_name": name, "nodes": ["n1"], "since_marker": "no-such-marker"}),
        )
        .await;
    assert_eq!(missing.code(), "NOT_FOUND", "{}", missing.envelope);

    // The serial console stays readable once the guest's network is gone.
    let mut down = exec(
        "n2",
        "echo vmc-console-probe-42 > /dev/console; setsid sh -c 'sleep 1; ip link set eth0 down' </dev/null >/dev/null 2>&1 &",
    );
    down["timeout_s"] = json!(5);
    c.call("node_exec", down).await.ok();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut args = exec("n2", "true");
        args["timeout_s"] = json!(3);
        let probe = c.call("node_exec", args).await;
        // The old connection may hang rather than fail: a timeout counts as "unreachable" too.
        if probe.is_error || probe.envelope["result"]["timed_out"] == true {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "n2's network never went down"
        );
    }
    let console = c
        .call(
            "node_console",
            json!({"cluster_name": name, "node_name": "n2", "lines": 200}),
        )
        .await;
    let lines: Vec<String> = console.ok()["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("vmc-console-probe-42")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("vmcluster-guest: READY")),
        "{lines:?}"
    );

    crate::destroy_and_check_clean(&c, &s, name).await;
    c.close().await;
}
