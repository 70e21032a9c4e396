//! The CLI's tool verbs on a real guest while a server holds the state directory: the server
//! runs them (through its control socket), and relative local paths are the caller's.

use std::process::{Command, Output};

use serde_json::{Value, json};
use vmcluster_tests::vmcluster_bin;

use crate::{cluster_scratch, preflight};

#[track_caller]
fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_verbs_reach_real_guests_through_the_server() {
    let g = preflight();
    let name = "cli1";
    let s = cluster_scratch(&g, name, 145, &["n1"]);
    let c = crate::up(&s, name).await;
    let work = s.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let cli = |args: &[&str]| {
        Command::new(vmcluster_bin())
            .args(args)
            .envs(s.env("qemu:///system"))
            .env_remove("RUST_LOG")
            .current_dir(&work)
            .output()
            .expect("run vmcluster")
    };

    // exec: each node's output, stdout and stderr kept apart; a non-zero exit fails the verb.
    let out = cli(&["exec", name, "--", "echo", "hello;", "echo", "oops", ">&2"]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{o}{e}");
    assert!(o.contains("── n1: exit 0") && o.contains("hello\n"), "{o}");
    assert!(e.contains("oops") && !o.contains("oops"), "{o} / {e}");
    let out = cli(&["exec", name, "--node", "n1", "--", "exit 3"]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{o}{e}");
    assert!(
        o.contains("exit 3") && e.contains("COMMAND_FAILED"),
        "{o} / {e}"
    );

    // upload / download with paths relative to the caller's directory.
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(work.join("payload.bin"), &payload).unwrap();
    let out = cli(&[
        "upload",
        name,
        "n1",
        "payload.bin",
        "/root/payload.bin",
        "--mode",
        "0600",
    ]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let out = cli(&["download", name, "n1", "/root/payload.bin", "back.bin"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(
        std::fs::read(work.join("back.bin")).unwrap() == payload,
        "round trip"
    );

    // dmesg: a marker, a planted warning, and a collect after the marker.
    let out = cli(&["dmesg", "mark", name]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{o}{e}");
    let marker = o.split_whitespace().next().expect("a marker").to_owned();
    let plant = "echo '<4>WARNING: CPU: 0 PID: 1 at cli/test.c:1 planted+0x0/0x1' > /dev/kmsg";
    assert_eq!(cli(&["exec", name, "--", plant]).status.code(), Some(0));
    let out = cli(&[
        "--json", "dmesg", "collect", name, "--since", &marker, "--level", "warn+",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON envelope");
    let lines = v["result"]["nodes"][0]["lines"].as_array().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l["class"] == "warning" && l["text"].as_str().unwrap().contains("cli/test.c")),
        "{v}"
    );

    // console: the serial console's tail.
    let out = cli(&["console", name, "n1", "--lines", "20"]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{o}{e}");
    assert!(!o.trim().is_empty(), "an empty console");

    // The server journaled what the CLI asked of it.
    let ops = c
        .call("op_list", json!({"cluster_name": name, "limit": 20}))
        .await;
    let tools: Vec<String> = ops.ok()["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["tool"].as_str().unwrap().to_owned())
        .collect();
    for t in [
        "node_exec_all",
        "node_upload",
        "node_download",
        "dmesg_mark",
    ] {
        assert!(tools.iter().any(|x| x == t), "{t} not in {tools:?}");
    }
    let out = cli(&["op", "list", "--cluster", name, "--limit", "3"]);
    assert_eq!(text(&out).0.lines().count(), 3, "{:?}", text(&out));

    crate::destroy_and_check_clean(&c, &s, name).await;
    c.close().await;
}
