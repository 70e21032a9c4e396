//! A define that fails on one node names the step and the node, undoes what it made on the
//! real host (domains, network, bridge, files: a saga's compensations), leaves what it did not
//! make alone, and succeeds when run again once the cause is gone.

use serde_json::json;
use vmcluster_tests::McpClient;

use crate::{cluster_scratch, host_objects, preflight};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_define_converges_on_rerun() {
    let g = preflight();
    let name = "pd2";
    let s = cluster_scratch(&g, name, 102, &["n1", "n2"]);
    // Something squats on n2's overlay path, so creating it must fail.
    let squatter = s.path().join("overlays").join(name).join("n2.qcow2");
    std::fs::create_dir_all(squatter.join("x")).unwrap();
    let c = McpClient::spawn(&s.env("qemu:///system")).await;

    let failed = c
        .call("cluster_define", json!({"topology_name": name}))
        .await;
    let err = failed.err();
    assert_eq!(err["step"], "ensure_overlay", "{err}");
    assert_eq!(err["node"], "n2", "{err}");
    assert!(
        failed.envelope["op_id"].is_string(),
        "a journaled failure carries its op_id"
    );
    assert_eq!(
        failed.envelope["outcome"], "not_applied",
        "{}",
        failed.envelope
    );
    let objs = host_objects(name);
    assert!(
        objs.domains.is_empty() && objs.networks.is_empty() && !objs.bridge,
        "n1's domain and the network were made before the failure and undone: {objs:?}"
    );
    assert!(
        !s.path()
            .join("overlays")
            .join(name)
            .join("n1.qcow2")
            .exists(),
        "n1's overlay was undone"
    );
    assert!(
        squatter.join("x").is_dir(),
        "the squatter is not ours and stays"
    );

    std::fs::remove_dir_all(&squatter).unwrap();
    let ok = c
        .call("cluster_define", json!({"topology_name": name}))
        .await;
    assert_eq!(ok.ok()["nodes"].as_array().unwrap().len(), 2);
    let objs = host_objects(name);
    assert_eq!(objs.domains.len(), 2, "{objs:?}");
    assert_eq!(objs.networks.len(), 1, "{objs:?}");
    assert!(
        s.path()
            .join("overlays")
            .join(name)
            .join("n2.qcow2")
            .is_file()
    );

    crate::destroy_and_check_clean(&c, &s, name).await;
    c.close().await;
}
