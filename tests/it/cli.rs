//! The binary's one-shot verbs on libvirt's test driver: `--json` prints exactly one envelope
//! on stdout (logs go to stderr), exit codes follow success, and the human output reads well.
//!
//! The test driver's state lives in one process, so each check is a single verb in a process
//! of its own; only the journal (in the scratch state directory) carries over between them.

use std::process::{Command, Output};

use serde_json::Value;
use vmcluster_tests::vmcluster_bin;

use crate::Fixture;

fn run(f: &Fixture, args: &[&str]) -> Output {
    Command::new(vmcluster_bin())
        .args(args)
        .envs(f.env())
        .env_remove("VMCLUSTER_FAILPOINTS")
        .env_remove("RUST_LOG")
        .output()
        .expect("run vmcluster")
}

/// Runs `vmcluster --json <args>`: the exit code and stdout parsed as one JSON document.
#[track_caller]
fn json(f: &Fixture, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = run(f, &all);
    (out.status.code().expect("exit code"), envelope(&out))
}

/// Stdout must be exactly one JSON envelope.
#[track_caller]
fn envelope(out: &Output) -> Value {
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let keys: Vec<&str> = v
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 6, "{v}");
    for k in ["success", "result", "error", "op_id", "state", "outcome"] {
        assert!(keys.contains(&k), "envelope lacks {k}: {v}");
    }
    v
}

#[test]
fn json_define_prints_a_success_envelope() {
    let f = Fixture::new("itclidef", &["n1", "n2"]);
    let (code, v) = json(&f, &["define", &f.name]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["success"], true);
    assert_eq!(v["error"], Value::Null);
    assert!(v["op_id"].as_str().is_some_and(|s| s.len() == 36), "{v}");
    assert_eq!(v["result"]["cluster_name"], f.name.as_str());
    let nodes = v["result"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    for n in nodes {
        assert_eq!(n["domain_state"], "shut off", "{v}");
        assert_eq!(n["phase"], "down");
    }
}

#[test]
fn json_status_of_an_unknown_cluster_exits_1_with_not_found() {
    let f = Fixture::new("itclinf", &["n1"]);
    let (code, v) = json(&f, &["status", "nope"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["success"], false);
    assert_eq!(v["result"], Value::Null);
    assert_eq!(v["op_id"], Value::Null);
    assert_eq!(v["error"]["code"], "NOT_FOUND");
    assert_eq!(v["error"]["recoverable"], false);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("nope"),
        "{v}"
    );
}

#[test]
fn snapshot_verbs_answer_with_the_tools_envelopes() {
    let f = Fixture::new("itclisnap", &["n1"]);
    assert_eq!(json(&f, &["define", &f.name]).0, 0);
    let (code, v) = json(&f, &["snapshot", "list", &f.name]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["result"]["snapshots"], Value::Array(vec![]), "{v}");
    let (code, v) = json(&f, &["snapshot", "create", &f.name, "../x", "--memory"]);
    assert_eq!(
        (code, &v["error"]["code"]),
        (1, &Value::from("INVALID_ARGUMENT")),
        "{v}"
    );
    assert_eq!(v["op_id"], Value::Null, "refused before journaling");
    let (code, v) = json(&f, &["snapshot", "revert", "ghost", "s1"]);
    assert_eq!(
        (code, &v["error"]["code"]),
        (1, &Value::from("NOT_FOUND")),
        "{v}"
    );
    let (code, v) = json(&f, &["snapshot", "delete", &f.name, "baseline"]);
    assert_eq!(
        (code, &v["error"]["code"]),
        (1, &Value::from("NOT_FOUND")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("clean-boot (logical name baseline)"),
        "{v}"
    );
}

#[test]
fn json_invalid_topology_lists_its_violations() {
    let f = Fixture::new("itcliinv", &["n1", "n2"]);
    f.write_topology(f.yaml(512).replace("name: n2", "name: n1"));
    let (code, v) = json(&f, &["define", &f.name]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["error"]["code"], "INVALID_ARGUMENT");
    assert_eq!(v["error"]["violations"][0]["field"], "nodes[1].name", "{v}");
    let (code, v) = json(&f, &["list"]);
    assert_eq!((code, &v["result"]["clusters"]), (0, &Value::Array(vec![])));
}

#[test]
fn json_stdout_holds_only_the_envelope_even_when_logging() {
    let f = Fixture::new("itclilog", &["n1"]);
    let out = Command::new(vmcluster_bin())
        .args(["--json", "define", &f.name])
        .envs(f.env())
        .env("VMCLUSTER_LOG_LEVEL", "debug")
        .env_remove("RUST_LOG")
        .env_remove("VMCLUSTER_FAILPOINTS")
        .output()
        .expect("run vmcluster");
    assert_eq!(out.status.code(), Some(0));
    let v = envelope(&out);
    assert_eq!(v["success"], true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("DEBUG") || stderr.contains("INFO"),
        "the logs went to stderr: {stderr}"
    );
}

#[test]
fn human_list_and_errors() {
    let f = Fixture::new("itclihum", &["n1", "n2"]);
    let out = run(&f, &["list"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "no clusters defined\n"
    );

    let out = run(&f, &["define", &f.name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!(
            "cluster {}  network {}-net (active)",
            f.name, f.name
        )),
        "{text}"
    );
    assert!(text.contains("shut off"), "{text}");

    // The journal carries the cluster into the next process.
    let out = run(&f, &["list"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or_default();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        words,
        [
            f.name.as_str(),
            "2",
            "node(s),",
            "0",
            "running,",
            "network",
            &format!("{}-net", f.name),
            &format!("192.168.{}.0/24", f.octet),
        ],
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");

    // Errors go to stderr, with the code; nothing on stdout.
    let out = run(&f, &["status", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error [NOT_FOUND]"), "{err}");
}

#[test]
fn version_and_bad_configuration() {
    let f = Fixture::new("itcliver", &["n1"]);
    let out = run(&f, &["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("vmcluster {}", env!("CARGO_PKG_VERSION"))
    );
    // A configuration that cannot be read stops the process before anything runs.
    let out = Command::new(vmcluster_bin())
        .args(["--json", "list"])
        .envs(f.env())
        .env("VMCLUSTER_CONFIG", f.scratch.path().join("missing.yaml"))
        .output()
        .expect("run vmcluster");
    assert_eq!(out.status.code(), Some(2));
    // With --json the failure is still an envelope on stdout, so scripts never parse nothing.
    let env: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON envelope");
    assert_eq!(env["success"], false);
    assert_eq!(env["error"]["code"], "INVALID_ARGUMENT");
    assert!(
        env["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing.yaml"),
        "{env}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error [INVALID_ARGUMENT]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With a server running, every verb runs inside it (the server owns the journal and the
/// libvirt connection). On the test driver, domains live in the process that defined them, so
/// only a verb run by the server can see the server's domains, and vice versa.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbs_run_inside_a_running_server() {
    let f = Fixture::new("itcliserver", &["n1"]);
    let c = vmcluster_tests::McpClient::spawn(&f.env()).await;
    let (code, v) = json(&f, &["define", &f.name]);
    assert_eq!(code, 0, "{v}");
    let state = || async {
        let status = c
            .call(
                "cluster_status",
                serde_json::json!({"cluster_name": f.name}),
            )
            .await;
        status.ok()["nodes"][0]["domain_state"].clone()
    };
    assert_eq!(state().await, "shut off");
    let (code, v) = json(&f, &["start", &f.name, "--no-wait"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        state().await,
        "running",
        "the server's domain was started by the CLI"
    );
    let (code, v) = json(&f, &["status", &f.name]);
    assert_eq!(
        (code, &v["result"]["nodes"][0]["domain_state"]),
        (0, &"running".into()),
        "{v}"
    );
    // A usage error is caught before anything is sent.
    let out = run(&f, &["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Usage"),
        "{out:?}"
    );
    c.close().await;

    // With the server gone, the CLI opens the journal itself.
    let (code, v) = json(&f, &["list"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["result"]["clusters"][0]["cluster_name"], f.name.as_str());
}

/// The tool verbs answer with the tools' own envelopes: `op list` reads the journal, and
/// `exec` on nodes that are not running fails per node (exit status 1), never with an exit code.
#[test]
fn tool_verbs_answer_with_the_tools_envelopes() {
    let f = Fixture::new("itclitools", &["n1", "n2"]);
    assert_eq!(json(&f, &["define", &f.name]).0, 0);
    let (code, v) = json(&f, &["op", "list", "--cluster", &f.name]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["result"]["ops"][0]["tool"], "cluster_define", "{v}");
    let op_id = v["result"]["ops"][0]["op_id"].as_str().unwrap().to_owned();
    let (code, v) = json(&f, &["op", "status", &op_id]);
    assert_eq!(
        (code, &v["result"]["outcome"]),
        (0, &"applied".into()),
        "{v}"
    );

    let (code, v) = json(&f, &["exec", &f.name, "--", "true"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["success"], false, "{v}");
    let results = v["result"]["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{v}");
    for r in results {
        assert!(r["result"].is_null() && r["error_code"].is_string(), "{r}");
    }
    let out = run(&f, &["exec", &f.name, "--node", "n9", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"),
        "{out:?}"
    );
}
