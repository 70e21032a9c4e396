//! Bad inputs against the real libvirtd: each gives a typed error and leaves the host exactly as
//! it was.

use serde_json::json;
use vmcluster_tests::McpClient;

use crate::{cluster_scratch, preflight, virsh};

fn host_snapshot(s: &vmcluster_tests::Scratch) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut files: Vec<String> = walk(&s.path().join("overlays"));
    files.sort();
    (
        virsh(&["list", "--all", "--name"]),
        virsh(&["net-list", "--all", "--name"]),
        files,
    )
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path().display().to_string());
            out.extend(walk(&e.path()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_give_typed_errors_and_change_nothing() {
    let g = preflight();
    let s = cluster_scratch(&g, "good", 103, &["n1"]);
    let base = g.base.display().to_string();
    let bad = |ips: &[(&str, &str)]| {
        let mut y = format!(
            "cluster_name: bad\nbase_image: {base}\nnetwork: {{name: bad-net, bridge: vtbad0, subnet: 192.168.104.0/24}}\nnodes:\n"
        );
        for (n, ip) in ips {
            y.push_str(&format!("  - {{name: {n}, ip: {ip}}}\n"));
        }
        y
    };
    s.write_topology("malformed", "cluster_name: [unclosed\n");
    s.write_topology("outside", &bad(&[("n1", "10.9.9.9")]));
    s.write_topology(
        "dupip",
        &bad(&[("n1", "192.168.104.11"), ("n2", "192.168.104.11")]),
    );
    s.write_topology(
        "dupname",
        &bad(&[("n1", "192.168.104.11"), ("n1", "192.168.104.12")]),
    );
    s.write_topology("gateway", &bad(&[("n1", "192.168.104.1")]));
    let c = McpClient::spawn(&s.env("qemu:///system")).await;
    let before = host_snapshot(&s);

    let cases: [(&str, serde_json::Value, &str, Option<&str>); 7] = [
        (
            "cluster_define",
            json!({"topology_name": "nosuch"}),
            "NOT_FOUND",
            None,
        ),
        (
            "cluster_define",
            json!({"topology_name": "malformed"}),
            "INVALID_ARGUMENT",
            None,
        ),
        (
            "cluster_define",
            json!({"topology_name": "outside"}),
            "INVALID_ARGUMENT",
            Some("nodes[0].ip"),
        ),
        (
            "cluster_define",
            json!({"topology_name": "dupip"}),
            "INVALID_ARGUMENT",
            Some("nodes[1].ip"),
        ),
        (
            "cluster_define",
            json!({"topology_name": "dupname"}),
            "INVALID_ARGUMENT",
            Some("nodes[1].name"),
        ),
        (
            "cluster_define",
            json!({"topology_name": "gateway"}),
            "INVALID_ARGUMENT",
            Some("nodes[0].ip"),
        ),
        (
            "cluster_start",
            json!({"cluster_name": "undefined-cluster"}),
            "NOT_FOUND",
            None,
        ),
    ];
    for (tool, args, code, field) in cases {
        let r = c.call(tool, args.clone()).await;
        assert_eq!(r.code(), code, "{tool} {args}: {}", r.envelope);
        assert!(r.err()["recoverable"].is_boolean());
        if let Some(f) = field {
            let fields: Vec<&str> = r.err()["violations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["field"].as_str().unwrap())
                .collect();
            assert!(
                fields.contains(&f),
                "{tool} {args}: expected a violation of {f}, got {fields:?}"
            );
        }
        assert_eq!(host_snapshot(&s), before, "{tool} {args} changed the host");
    }
    c.close().await;
}
