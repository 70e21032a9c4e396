//! Files over SFTP and full exec outputs as MCP resources, on a real guest: round trips with
//! checksums compared to this host's SHA-256, modes applied on the node, atomic replacement
//! with no temporary file left behind, the size limit, refused requests that touch nothing, and
//! a truncated command output read back in full through `resources/read`.

use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{cluster_scratch, preflight};

/// `len` bytes of deterministic noise (xorshift), so a transfer cannot pass by luck.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Names in `dir` that look like our temporary files.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".vmc-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_move_atomically_with_checksums_and_outputs_are_resources() {
    let g = preflight();
    let name = "fx1";
    let s = cluster_scratch(&g, name, 110, &["n1"]);
    let mut env = s.env("qemu:///system");
    let limit: usize = 8 << 20;
    env.push(("VMCLUSTER_TRANSFER_MAX_BYTES".into(), limit.to_string()));
    let c = crate::up_env(&env, name).await;
    let sh = |command: &str| {
        let c = &c;
        let command = command.to_owned();
        async move {
            let r = c
                .call(
                    "node_exec",
                    json!({"cluster_name": name, "node_name": "n1", "command": command, "timeout_s": 120}),
                )
                .await;
            let r = r.ok();
            assert_eq!(r["exit_code"], 0, "{command}: {r}");
            r["stdout"].as_str().unwrap().to_owned()
        }
    };
    let files = s.path().join("files");
    std::fs::create_dir_all(&files).unwrap();

    // Upload 3 MiB with a mode; the node's copy has the same SHA-256 and that mode.
    let data = noise(3 << 20, 7);
    let local = files.join("data.bin");
    std::fs::write(&local, &data).unwrap();
    let up = |local: &Path, remote: &str, mode: Option<&str>| {
        let mut a = json!({"cluster_name": name, "node_name": "n1",
            "local_path": local.to_str().unwrap(), "remote_path": remote});
        if let Some(m) = mode {
            a["mode"] = json!(m);
        }
        a
    };
    let r = c
        .call("node_upload", up(&local, "/root/data.bin", Some("0640")))
        .await;
    assert!(r.envelope["op_id"].is_string(), "journaled: {}", r.envelope);
    let r = r.ok().clone();
    assert_eq!(r["size"], data.len());
    assert_eq!(r["sha256"], sha256_hex(&data));
    assert_eq!(r["mode"], "0640");
    let on_node = sh("stat -c %a /root/data.bin; sha256sum /root/data.bin; ls -a /root").await;
    let mut lines = on_node.lines();
    assert_eq!(lines.next(), Some("640"));
    assert!(
        lines.next().unwrap().starts_with(&sha256_hex(&data)),
        "{on_node}"
    );
    assert!(
        !on_node.contains(".vmc-"),
        "a temporary file was left: {on_node}"
    );

    // Replacing it keeps its mode unless told otherwise, and swaps the content whole.
    let data2 = noise(1 << 20, 11);
    std::fs::write(&local, &data2).unwrap();
    let r = c
        .call("node_upload", up(&local, "/root/data.bin", None))
        .await;
    assert_eq!(r.ok()["mode"], "0640");
    assert!(
        sh("sha256sum /root/data.bin")
            .await
            .starts_with(&sha256_hex(&data2))
    );

    // Download: the same bytes back, with the node file's mode, and nothing else left here.
    let back = files.join("back.bin");
    let down = |remote: &str, local: &Path| {
        json!({"cluster_name": name, "node_name": "n1",
            "remote_path": remote, "local_path": local.to_str().unwrap()})
    };
    let r = c.call("node_download", down("/root/data.bin", &back)).await;
    let r = r.ok().clone();
    assert_eq!(r["sha256"], sha256_hex(&data2));
    assert_eq!(std::fs::read(&back).unwrap(), data2);
    {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(&back).unwrap().permissions().mode();
        assert_eq!(m & 0o7777, 0o640);
    }
    assert_eq!(temp_files(&files), Vec::<String>::new());

    // Over the limit: refused before anything is journaled or sent, in both directions.
    let big = files.join("big.bin");
    std::fs::write(&big, noise(limit + 1, 3)).unwrap();
    let r = c.call("node_upload", up(&big, "/root/big.bin", None)).await;
    assert_eq!(r.code(), "INVALID_ARGUMENT", "{}", r.envelope);
    assert!(r.err()["message"].as_str().unwrap().contains("limit"));
    assert_eq!(r.envelope["op_id"], Value::Null);
    sh(&format!("head -c {} /dev/zero > /root/big.bin", limit + 1)).await;
    let big_back = files.join("big-back.bin");
    let r = c
        .call("node_download", down("/root/big.bin", &big_back))
        .await;
    assert_eq!(r.code(), "INVALID_ARGUMENT", "{}", r.envelope);
    assert!(!big_back.exists());
    assert_eq!(temp_files(&files), Vec::<String>::new());

    // Refused requests: typed errors, nothing written on either side.
    let missing = files.join("missing.bin");
    let refused = [
        (
            "node_upload",
            up(&missing, "/root/m.bin", None),
            "INVALID_ARGUMENT",
        ),
        (
            "node_upload",
            up(&local, "root/rel.bin", None),
            "INVALID_ARGUMENT",
        ),
        ("node_upload", up(&local, "/root", None), "INVALID_ARGUMENT"),
        (
            "node_upload",
            up(&local, "/no/such/dir/x", None),
            "FAILED_PRECONDITION",
        ),
        (
            "node_upload",
            up(&local, "/root/m.bin", Some("999")),
            "INVALID_ARGUMENT",
        ),
        (
            "node_download",
            down("/root/nope.bin", &files.join("n")),
            "NOT_FOUND",
        ),
        (
            "node_download",
            down("/root", &files.join("n")),
            "INVALID_ARGUMENT",
        ),
        (
            "node_download",
            down("/root/data.bin", &files),
            "INVALID_ARGUMENT",
        ),
        (
            "node_download",
            down("tmp/x", &files.join("n")),
            "INVALID_ARGUMENT",
        ),
    ];
    for (tool, args, code) in refused {
        let r = c.call(tool, args.clone()).await;
        assert_eq!(r.code(), code, "{tool} {args}: {}", r.envelope);
    }
    // A write the node refuses (procfs) fails cleanly and leaves no temporary file.
    let r = c.call("node_upload", up(&local, "/proc/vmc-x", None)).await;
    assert!(r.is_error, "{}", r.envelope);
    let root = sh("ls -a /root /proc | grep -c 'vmc-' || true").await;
    assert_eq!(root.trim(), "0", "temporary files left on the node");
    assert_eq!(
        sh("ls /root").await.split_whitespace().collect::<Vec<_>>(),
        ["big.bin", "data.bin"]
    );
    assert_eq!(temp_files(&files), Vec::<String>::new());
    assert!(!files.join("n").exists());

    // A huge output is capped in the result, flagged, and readable in full as a resource.
    let r = c
        .call(
            "node_exec",
            json!({"cluster_name": name, "node_name": "n1", "max_output_bytes": 1000,
                "command": "head -c 2000000 /dev/zero | tr '\\000' x; echo done >&2"}),
        )
        .await;
    let r = r.ok().clone();
    assert_eq!(
        (
            r["stdout"].as_str().unwrap().len(),
            r["truncated"].as_bool(),
            r["stdout_bytes"].as_u64()
        ),
        (1000, Some(true), Some(2_000_000))
    );
    assert_eq!(r["stderr"], "done\n");
    assert_eq!(r["stderr_uri"], Value::Null, "stderr was not cut");
    let uri = r["stdout_uri"].as_str().expect("stdout_uri").to_owned();
    assert!(uri.starts_with("vmcluster://exec/"), "{uri}");
    let (full, mime) = c.read_resource(&uri).await.expect("read the full output");
    assert_eq!(full.len(), 2_000_000);
    assert!(full.iter().all(|b| *b == b'x'));
    assert_eq!(mime.as_deref(), Some("text/plain"));
    assert!(c.resource_uris().await.contains(&uri));
    let templates = c.resource_templates().await;
    assert!(
        templates
            .iter()
            .any(|t| t.uri_template == "vmcluster://exec/{op_id}/{node}/{stream}"),
        "{templates:?}"
    );
    // Binary output comes back as a blob, byte for byte.
    let r = c
        .call(
            "node_exec",
            json!({"cluster_name": name, "node_name": "n1", "max_output_bytes": 10,
                "command": "cat /root/data.bin"}),
        )
        .await;
    let uri = r.ok()["stdout_uri"].as_str().unwrap().to_owned();
    let (bytes, mime) = c.read_resource(&uri).await.expect("read binary output");
    assert_eq!(sha256_hex(&bytes), sha256_hex(&data2));
    assert_eq!(mime.as_deref(), Some("application/octet-stream"));
    // Unknown (or evicted) outputs are a typed NOT_FOUND.
    let gone = uri.replace("/stdout", "/stderr");
    let (code, data) = c.read_resource(&gone).await.unwrap_err();
    assert_eq!(code, -32002, "RESOURCE_NOT_FOUND");
    assert_eq!(data.unwrap()["code"], "NOT_FOUND");
    let (code, _) = c
        .read_resource("vmcluster://nothing/here")
        .await
        .unwrap_err();
    assert_eq!(code, -32002);

    // Commands run in the login shell when it is /bin/sh: a lone command that outlives its
    // timeout is still found by its tag and killed, and $0 / variables behave as with sh -c.
    let r = c
        .call(
            "node_exec",
            json!({"cluster_name": name, "node_name": "n1", "command": "sleep 313", "timeout_s": 2}),
        )
        .await;
    assert_eq!(r.ok()["timed_out"], true);
    assert_eq!(
        sh("ps -o args | grep -c '[s]leep 313' || true")
            .await
            .trim(),
        "0"
    );
    let r = c
        .call(
            "node_exec",
            json!({"cluster_name": name, "node_name": "n1", "env": {"A": "x'y z"},
                "command": "printf '%s|' \"$A\" \"$(readlink /proc/$$/exe)\"; # trailing comment"}),
        )
        .await;
    let out = r.ok()["stdout"].as_str().unwrap().to_owned();
    assert!(
        out.starts_with("x'y z|/") && out.ends_with("/dash|"),
        "the command ran in the login shell (dash), with its variable: {out}"
    );

    crate::destroy_and_check_clean(&c, &s, name).await;
    c.close().await;
}
