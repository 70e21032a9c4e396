//! The real `vmcluster serve` binary behind a real MCP client, on libvirt's test driver: the
//! server's identity, every tool's advertised contract (schemas, annotations), a lifecycle in
//! success envelopes, and hostile input answered by typed tool errors that change nothing.
//!
//! Every result goes through [`McpClient::call`], which validates it against the tool's
//! advertised output schema, failures included (convention P8).

use std::sync::Arc;

use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};
use vmcluster_tests::McpClient;

use crate::{Fixture, dir_names};

/// The advertised contract of one tool: `(name, read_only, destructive, idempotent)`.
const TOOLS: [(&str, bool, bool, bool); 27] = [
    ("cluster_define", false, false, true),
    ("cluster_start", false, false, true),
    ("cluster_stop", false, false, true),
    ("cluster_destroy", false, true, false),
    ("cluster_status", true, false, true),
    ("cluster_handle", true, false, true),
    ("cluster_list", true, false, true),
    ("node_crash", false, true, false),
    ("node_start", false, false, true),
    ("node_stop", false, false, true),
    ("node_reboot", false, false, false),
    ("node_exec", false, true, false),
    ("node_exec_all", false, true, false),
    ("node_console", true, false, true),
    ("dmesg_mark", false, false, false),
    ("dmesg_collect", true, false, false),
    ("op_status", true, false, true),
    ("op_wait", true, false, true),
    ("op_list", true, false, true),
    ("op_cancel", false, false, true),
    ("events_read", true, false, true),
    ("snapshot_create", false, false, false),
    ("snapshot_list", true, false, true),
    ("snapshot_revert", false, true, false),
    ("snapshot_delete", false, true, false),
    ("node_upload", false, true, true),
    ("node_download", false, true, true),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_identity_and_tool_contracts() {
    let f = Fixture::new("itmcpinfo", &["n1"]);
    let c = McpClient::spawn(&f.env()).await;
    let info = c.service.peer_info().expect("initialize result");
    let server = info.server_info.as_ref().expect("serverInfo");
    assert_eq!(server.name, "vmcluster");
    assert_eq!(
        server.version,
        env!("CARGO_PKG_VERSION"),
        "the workspace version"
    );
    assert_eq!(server.version, "0.1.0");
    assert!(info.capabilities.tools.is_some(), "advertises tools");
    assert!(
        info.capabilities.resources.is_some(),
        "advertises resources"
    );
    assert!(
        info.instructions
            .as_deref()
            .is_some_and(|i| i.contains("cluster_define")),
        "instructions explain the workflow"
    );

    let mut listed: Vec<&str> = c.tools().iter().map(|t| t.name.as_ref()).collect();
    listed.sort_unstable();
    let mut expected: Vec<&str> = TOOLS.iter().map(|t| t.0).collect();
    expected.sort_unstable();
    assert_eq!(listed, expected, "exactly the documented tools");

    for (name, read_only, destructive, idempotent) in TOOLS {
        let t = c.tools().iter().find(|t| t.name == name).unwrap();
        assert!(
            t.description.as_deref().is_some_and(|d| d.len() > 20),
            "{name}: description"
        );
        assert_eq!(
            t.input_schema.get("type"),
            Some(&json!("object")),
            "{name}: input schema"
        );
        assert_eq!(
            t.input_schema.get("additionalProperties"),
            Some(&json!(false)),
            "{name}: unknown arguments must be refused by the schema too"
        );
        let out = t
            .output_schema
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: output schema"));
        for field in ["success", "result", "error", "op_id"] {
            assert!(
                out["properties"].get(field).is_some(),
                "{name}: output schema lacks {field}: {out:?}"
            );
        }
        let a = t
            .annotations
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: annotations"));
        assert!(
            a.title.as_deref().is_some_and(|s| !s.is_empty()),
            "{name}: title"
        );
        assert_eq!(a.read_only_hint, Some(read_only), "{name}: readOnlyHint");
        assert_eq!(
            a.destructive_hint,
            Some(destructive),
            "{name}: destructiveHint"
        );
        assert_eq!(
            a.idempotent_hint,
            Some(idempotent),
            "{name}: idempotentHint"
        );
        assert_eq!(a.open_world_hint, Some(false), "{name}: openWorldHint");
    }
    c.close().await;
}

/// The `nodes` of a status envelope as `(name, domain_state, phase)`.
fn states(result: &Value) -> Vec<(String, String, String)> {
    result["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes in {result}"))
        .iter()
        .map(|n| {
            let s = |k: &str| n[k].as_str().unwrap().to_owned();
            (s("name"), s("domain_state"), s("phase"))
        })
        .collect()
}

fn all(nodes: &[&str], state: &str, phase: &str) -> Vec<(String, String, String)> {
    nodes
        .iter()
        .map(|n| ((*n).to_owned(), state.to_owned(), phase.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_over_mcp() {
    let f = Fixture::new("itmcplife", &["n1", "n2"]);
    let nodes = ["n1", "n2"];
    let c = McpClient::spawn(&f.env()).await;
    let cluster = json!({"cluster_name": f.name});

    let r = c
        .call("cluster_define", json!({"topology_name": f.name}))
        .await;
    assert_eq!(states(r.ok()), all(&nodes, "shut off", "down"));
    assert_eq!(r.ok()["network_active"], true);
    assert!(r.envelope["op_id"].is_string(), "{}", r.envelope);
    assert_eq!(r.envelope["error"], Value::Null);

    let r = c
        .call(
            "cluster_start",
            json!({"cluster_name": f.name, "wait_for_ssh": false, "ssh_timeout_s": 5}),
        )
        .await;
    assert_eq!(states(r.ok()), all(&nodes, "running", "domain_running"));
    assert!(r.envelope["op_id"].is_string());

    let r = c.call("cluster_status", cluster.clone()).await;
    assert_eq!(
        states(r.ok()).iter().map(|s| &s.1).collect::<Vec<_>>(),
        ["running", "running"]
    );
    assert_eq!(r.envelope["op_id"], Value::Null, "reads are not journaled");
    let r = c.call("cluster_list", json!({})).await;
    assert_eq!(r.ok()["clusters"][0]["cluster_name"], f.name.as_str());
    assert_eq!(r.ok()["clusters"][0]["running"], 2);

    // Single-node tools.
    let node = |n: &str, extra: Value| {
        let mut a = json!({"cluster_name": f.name, "node_name": n});
        a.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        a
    };
    let r = c
        .call("node_stop", node("n1", json!({"mode": "destroy"})))
        .await;
    assert_eq!(r.ok()["node"]["domain_state"], "shut off");
    assert_eq!(r.ok()["cluster_name"], f.name.as_str());
    let r = c
        .call("node_reboot", node("n1", json!({"wait_for_ssh": false})))
        .await;
    assert_eq!(r.code(), "FAILED_PRECONDITION");
    assert_eq!(r.err()["recoverable"], false);
    let r = c
        .call("node_start", node("n1", json!({"wait_for_ssh": false})))
        .await;
    assert_eq!(r.ok()["node"]["domain_state"], "running");
    let r = c
        .call(
            "node_crash",
            json!({"cluster_name": f.name, "node": "n2", "restart_after": false}),
        )
        .await;
    assert_eq!(r.ok()["node"]["domain_state"], "shut off");

    let r = c
        .call(
            "cluster_stop",
            json!({"cluster_name": f.name, "mode": "destroy"}),
        )
        .await;
    assert_eq!(states(r.ok()), all(&nodes, "shut off", "down"));
    let r = c.call("cluster_handle", cluster.clone()).await;
    assert_eq!(r.code(), "FAILED_PRECONDITION");

    let r = c
        .call(
            "cluster_destroy",
            json!({"cluster_name": f.name, "remove_overlays": true}),
        )
        .await;
    assert_eq!(states(r.ok()), all(&nodes, "undefined", "down"));
    assert!(r.envelope["op_id"].is_string());
    let r = c.call("cluster_status", cluster).await;
    assert_eq!(r.code(), "NOT_FOUND");
    assert_eq!(
        c.call("cluster_list", json!({})).await.ok()["clusters"],
        json!([])
    );
    assert!(!f.cluster_dir().exists());
    c.close().await;
}

/// One hostile or mistaken request and the error it must get.
struct Bad {
    tool: &'static str,
    args: Value,
    code: &'static str,
    /// Fields the error's `violations` must name, in order.
    violations: &'static [&'static str],
    /// Text the message must contain.
    says: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_typed_error_and_changes_nothing() {
    let f = Fixture::new("itbad", &["n1", "n2"]);
    let good = f.yaml(512);
    let o = f.octet;
    let topologies = [
        (
            "malformed",
            "cluster_name: [unclosed\nnodes: {\n".to_owned(),
        ),
        (
            "outside",
            good.replace(&format!("ip: 192.168.{o}.12"), "ip: 10.9.9.12"),
        ),
        (
            "dupip",
            good.replace(
                &format!("ip: 192.168.{o}.12"),
                &format!("ip: 192.168.{o}.11"),
            ),
        ),
        ("dupname", good.replace("name: n2", "name: n1")),
        ("unknownfield", format!("{good}bogus: 1\n")),
    ];
    for (name, yaml) in &topologies {
        assert_ne!(yaml, &good, "{name} must differ from the valid topology");
        f.scratch.write_topology(name, yaml);
    }
    let define = |t: &str| json!({"topology_name": t});
    let base = f.base.to_str().unwrap();
    let scratch = f.scratch.path().to_str().unwrap();
    #[rustfmt::skip]
    let cases = [
        Bad { tool: "cluster_define", args: define("nope"), code: "NOT_FOUND", violations: &[], says: "topology" },
        Bad { tool: "cluster_define", args: define("malformed"), code: "INVALID_ARGUMENT", violations: &[], says: "Malformed" },
        Bad { tool: "cluster_define", args: define("unknownfield"), code: "INVALID_ARGUMENT", violations: &[], says: "bogus" },
        Bad { tool: "cluster_define", args: define("outside"), code: "INVALID_ARGUMENT", violations: &["nodes[1].ip"], says: "outside the subnet" },
        Bad { tool: "cluster_define", args: define("dupip"), code: "INVALID_ARGUMENT", violations: &["nodes[1].ip"], says: "already used" },
        Bad { tool: "cluster_define", args: define("dupname"), code: "INVALID_ARGUMENT", violations: &["nodes[1].name"], says: "duplicate node name" },
        Bad { tool: "cluster_define", args: define("../etc/passwd"), code: "INVALID_ARGUMENT", violations: &[], says: "topology_name" },
        Bad { tool: "cluster_define", args: json!({}), code: "INVALID_ARGUMENT", violations: &[], says: "topology_name" },
        Bad { tool: "cluster_start", args: json!({"cluster_name": "itbad", "wait_for_ssh": false}), code: "NOT_FOUND", violations: &[], says: "itbad" },
        Bad { tool: "cluster_status", args: json!({"cluster_name": "x", "bogus": 1}), code: "INVALID_ARGUMENT", violations: &[], says: "bogus" },
        Bad { tool: "cluster_start", args: json!({"cluster_name": "x", "ssh_timeout_s": "soon"}), code: "INVALID_ARGUMENT", violations: &[], says: "expected u64" },
        Bad { tool: "cluster_start", args: json!({"cluster_name": "x", "ssh_timeout_s": 0}), code: "INVALID_ARGUMENT", violations: &[], says: "ssh_timeout_s" },
        Bad { tool: "cluster_start", args: json!({"cluster_name": "x", "ssh_timeout_s": -1}), code: "INVALID_ARGUMENT", violations: &[], says: "expected u64" },
        Bad { tool: "cluster_stop", args: json!({"cluster_name": "x", "mode": "gently"}), code: "INVALID_ARGUMENT", violations: &[], says: "gently" },
        Bad { tool: "cluster_stop", args: json!({"cluster_name": "x", "timeout_s": 3601}), code: "INVALID_ARGUMENT", violations: &[], says: "timeout_s" },
        Bad { tool: "cluster_destroy", args: json!({"cluster_name": "x", "remove_overlays": "yes"}), code: "INVALID_ARGUMENT", violations: &[], says: "expected a boolean" },
        Bad { tool: "cluster_list", args: json!({"all": true}), code: "INVALID_ARGUMENT", violations: &[], says: "all" },
        Bad { tool: "cluster_handle", args: json!({"cluster_name": 7}), code: "INVALID_ARGUMENT", violations: &[], says: "expected a string" },
        Bad { tool: "node_crash", args: json!({"cluster_name": "ghost", "node": "n1", "wait_for_ssh": false}), code: "NOT_FOUND", violations: &[], says: "ghost" },
        Bad { tool: "node_start", args: json!({"cluster_name": "x"}), code: "INVALID_ARGUMENT", violations: &[], says: "node_name" },
        Bad { tool: "node_stop", args: json!({"cluster_name": "x", "node_name": "n1", "timeout_s": 0}), code: "INVALID_ARGUMENT", violations: &[], says: "timeout_s" },
        Bad { tool: "node_reboot", args: json!({"cluster_name": "x", "node_name": "n1", "hard": 1}), code: "INVALID_ARGUMENT", violations: &[], says: "expected a boolean" },
        Bad { tool: "node_exec", args: json!({"cluster_name": "x", "node_name": "n1", "command": "  "}), code: "INVALID_ARGUMENT", violations: &[], says: "command" },
        Bad { tool: "node_exec", args: json!({"cluster_name": "x", "node_name": "n1", "command": "true", "env": {"A-B": "1"}}), code: "INVALID_ARGUMENT", violations: &[], says: "A-B" },
        Bad { tool: "node_exec", args: json!({"cluster_name": "x", "node_name": "n1", "command": "true", "max_output_bytes": 0}), code: "INVALID_ARGUMENT", violations: &[], says: "max_output_bytes" },
        Bad { tool: "node_exec", args: json!({"cluster_name": "ghost", "node_name": "n1", "command": "true"}), code: "NOT_FOUND", violations: &[], says: "ghost" },
        Bad { tool: "node_exec_all", args: json!({"cluster_name": "x", "command": "true", "nodes": []}), code: "INVALID_ARGUMENT", violations: &[], says: "nodes" },
        Bad { tool: "node_exec_all", args: json!({"cluster_name": "x", "command": "true", "timeout_s": 0}), code: "INVALID_ARGUMENT", violations: &[], says: "timeout_s" },
        Bad { tool: "snapshot_create", args: json!({"cluster_name": "x", "snapshot_name": "../etc"}), code: "INVALID_ARGUMENT", violations: &[], says: "snapshot_name \"../etc\" contains '/'" },
        Bad { tool: "snapshot_create", args: json!({"cluster_name": "x", "snapshot_name": "a'/><x"}), code: "INVALID_ARGUMENT", violations: &[], says: "contains '\\''" },
        Bad { tool: "snapshot_create", args: json!({"cluster_name": "x", "snapshot_name": "s".repeat(65)}), code: "INVALID_ARGUMENT", violations: &[], says: "the limit is 64" },
        Bad { tool: "snapshot_create", args: json!({"cluster_name": "x", "snapshot_name": ""}), code: "INVALID_ARGUMENT", violations: &[], says: "is empty" },
        Bad { tool: "snapshot_create", args: json!({"cluster_name": "x", "snapshot_name": "-rf"}), code: "INVALID_ARGUMENT", violations: &[], says: "must start with" },
        Bad { tool: "snapshot_create", args: json!({"cluster_name": "x", "snapshot_name": "s1", "description": "\u{1b}[2J"}), code: "INVALID_ARGUMENT", violations: &[], says: "description" },
        Bad { tool: "snapshot_create", args: json!({"cluster_name": "x", "snapshot_name": "s1", "description": "d".repeat(1025)}), code: "INVALID_ARGUMENT", violations: &[], says: "description" },
        Bad { tool: "snapshot_create", args: json!({"cluster_name": "x", "snapshot_name": "s1", "include_memory": "yes"}), code: "INVALID_ARGUMENT", violations: &[], says: "expected a boolean" },
        Bad { tool: "snapshot_create", args: json!({"cluster_name": "ghost", "snapshot_name": "s1"}), code: "NOT_FOUND", violations: &[], says: "ghost" },
        Bad { tool: "snapshot_list", args: json!({"cluster_name": "ghost"}), code: "NOT_FOUND", violations: &[], says: "ghost" },
        Bad { tool: "snapshot_revert", args: json!({"cluster_name": "x", "snapshot_name": "s1", "ssh_timeout_s": 0}), code: "INVALID_ARGUMENT", violations: &[], says: "ssh_timeout_s" },
        Bad { tool: "snapshot_revert", args: json!({"cluster_name": "x", "snapshot_name": "s 1"}), code: "INVALID_ARGUMENT", violations: &[], says: "snapshot_name" },
        Bad { tool: "snapshot_revert", args: json!({"cluster_name": "ghost", "snapshot_name": "s1"}), code: "NOT_FOUND", violations: &[], says: "ghost" },
        Bad { tool: "snapshot_delete", args: json!({"cluster_name": "x", "snapshot_name": "s1", "force": true}), code: "INVALID_ARGUMENT", violations: &[], says: "force" },
        Bad { tool: "snapshot_delete", args: json!({"cluster_name": "x"}), code: "INVALID_ARGUMENT", violations: &[], says: "snapshot_name" },
        Bad { tool: "snapshot_delete", args: json!({"cluster_name": "x", "snapshot_name": "a&b"}), code: "INVALID_ARGUMENT", violations: &[], says: "contains '&'" },
        Bad { tool: "node_upload", args: json!({"cluster_name": "x", "node_name": "n1", "local_path": "/no/such/file", "remote_path": "/tmp/a"}), code: "INVALID_ARGUMENT", violations: &[], says: "local_path" },
        Bad { tool: "node_upload", args: json!({"cluster_name": "x", "node_name": "n1", "local_path": base, "remote_path": "tmp/a"}), code: "INVALID_ARGUMENT", violations: &[], says: "absolute" },
        Bad { tool: "node_upload", args: json!({"cluster_name": "x", "node_name": "n1", "local_path": "base.qcow2", "remote_path": "/tmp/a"}), code: "INVALID_ARGUMENT", violations: &[], says: "absolute" },
        Bad { tool: "node_upload", args: json!({"cluster_name": "x", "node_name": "n1", "local_path": scratch, "remote_path": "/tmp/a"}), code: "INVALID_ARGUMENT", violations: &[], says: "regular file" },
        Bad { tool: "node_upload", args: json!({"cluster_name": "x", "node_name": "n1", "local_path": base, "remote_path": "/tmp/"}), code: "INVALID_ARGUMENT", violations: &[], says: "remote_path" },
        Bad { tool: "node_upload", args: json!({"cluster_name": "x", "node_name": "n1", "local_path": base, "remote_path": "/tmp/a", "mode": "rwx"}), code: "INVALID_ARGUMENT", violations: &[], says: "mode" },
        Bad { tool: "node_upload", args: json!({"cluster_name": "x", "node_name": "n1", "local_path": base, "remote_path": "/tmp/a", "owner": "root"}), code: "INVALID_ARGUMENT", violations: &[], says: "owner" },
        Bad { tool: "node_upload", args: json!({"cluster_name": "ghost", "node_name": "n1", "local_path": base, "remote_path": "/tmp/a"}), code: "NOT_FOUND", violations: &[], says: "ghost" },
        Bad { tool: "node_download", args: json!({"cluster_name": "x", "node_name": "n1", "remote_path": "/tmp/../etc/shadow", "local_path": "/tmp/s"}), code: "INVALID_ARGUMENT", violations: &[], says: "normalised" },
        Bad { tool: "node_download", args: json!({"cluster_name": "x", "node_name": "n1", "remote_path": "/etc/hostname", "local_path": scratch}), code: "INVALID_ARGUMENT", violations: &[], says: "directory" },
        Bad { tool: "node_download", args: json!({"cluster_name": "x", "node_name": "n1", "remote_path": "/etc/hostname", "local_path": "/no/such/dir/h"}), code: "INVALID_ARGUMENT", violations: &[], says: "does not exist" },
        Bad { tool: "node_download", args: json!({"cluster_name": "x", "node_name": "n1", "remote_path": "/etc/hostname"}), code: "INVALID_ARGUMENT", violations: &[], says: "local_path" },
    ];
    let c = McpClient::spawn(&f.env()).await;
    for b in &cases {
        let r = c.call(b.tool, b.args.clone()).await;
        let what = format!("{} {}", b.tool, b.args);
        assert!(r.is_error, "{what}: isError must be set: {}", r.envelope);
        let err = r.err();
        assert_eq!(err["code"], b.code, "{what}: {err}");
        assert_eq!(err["recoverable"], false, "{what}: {err}");
        assert_eq!(r.envelope["result"], Value::Null, "{what}");
        assert_eq!(
            r.envelope["op_id"],
            Value::Null,
            "{what}: refused before journaling"
        );
        let message = err["message"].as_str().unwrap();
        assert!(
            message.contains(b.says),
            "{what}: message {message:?} lacks {:?}",
            b.says
        );
        let fields: Vec<&str> = err["violations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, b.violations, "{what}: {err}");
    }
    // A name the server does not know is a protocol error, and the server keeps serving.
    let unknown = c
        .service
        .call_tool(CallToolRequestParams::new("cluster_explode"))
        .await;
    assert!(unknown.is_err(), "{unknown:?}");

    assert_eq!(
        c.call("cluster_list", json!({})).await.ok()["clusters"],
        json!([])
    );
    let overlays = f.scratch.path().join("overlays");
    assert_eq!(
        dir_names(&overlays),
        Vec::<String>::new(),
        "nothing was created"
    );
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_status_calls_all_answer() {
    let f = Fixture::new("itmcpconc", &["n1", "n2", "n3"]);
    let c = Arc::new(McpClient::spawn(&f.env()).await);
    let defined = c
        .call("cluster_define", json!({"topology_name": f.name}))
        .await
        .ok()
        .clone();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (c, name) = (c.clone(), f.name.clone());
        calls.spawn(async move {
            c.call("cluster_status", json!({"cluster_name": name}))
                .await
        });
    }
    let mut answers = 0;
    while let Some(r) = calls.join_next().await {
        let r = r.expect("call task");
        assert_eq!(r.ok(), &defined);
        answers += 1;
    }
    assert_eq!(answers, 20);
    Arc::try_unwrap(c).expect("sole owner").close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_outputs_are_discoverable_resources_and_unknown_ones_are_not_found() {
    let f = Fixture::new("itres", &["n1"]);
    let c = McpClient::spawn(&f.env()).await;
    let templates = c.resource_templates().await;
    let exec = templates
        .iter()
        .find(|t| t.uri_template == "vmcluster://exec/{op_id}/{node}/{stream}")
        .unwrap_or_else(|| panic!("no exec output template in {templates:?}"));
    assert!(
        exec.description
            .as_deref()
            .is_some_and(|d| d.contains("truncated"))
    );
    assert_eq!(
        exec_uris(c.resource_uris().await),
        Vec::<String>::new(),
        "nothing kept yet"
    );
    for uri in [
        "vmcluster://exec/0190b3c4-6f1e-7a2b-9c3d-4e5f60718293/n1/stdout",
        "vmcluster://exec/not-an-op/n1/stdout",
        "vmcluster://exec/0190b3c4-6f1e-7a2b-9c3d-4e5f60718293/../stdout",
        "file:///etc/passwd",
    ] {
        let (code, data) = c.read_resource(uri).await.unwrap_err();
        assert_eq!(code, -32002, "{uri}: RESOURCE_NOT_FOUND");
        let data = data.unwrap_or_else(|| panic!("{uri}: typed error data"));
        assert_eq!(data["code"], "NOT_FOUND", "{uri}: {data}");
        assert_eq!(data["recoverable"], false, "{uri}: {data}");
    }
    c.close().await;
}

/// The exec-output URIs among `uris` (the event stream's resources are listed too).
fn exec_uris(uris: Vec<String>) -> Vec<String> {
    uris.into_iter()
        .filter(|u| u.starts_with("vmcluster://exec/"))
        .collect()
}
