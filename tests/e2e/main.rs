//! Real-guest end-to-end tests: real libvirtd and QEMU (TCG here) booting the project's test
//! guest, driven through the real `vmcluster` binary behind a real MCP client.
//!
//! They only run inside the isolated test host made by `scripts/testhost` (a network namespace
//! with no route out, private libvirt state); [`preflight`] refuses to run anywhere else, so no
//! packet can leave the machine. `scripts/test` builds them with `--features e2e` and runs them
//! one at a time (two cores cannot boot several clusters at once in reasonable time).

mod cli;
mod events;
mod exec;
mod files;
mod inputs;
mod killpoints;
mod lifecycle;
mod notready;
mod partial;
mod randomkill;
mod reconnect;
mod restart;
mod snapshot;

use std::path::PathBuf;
use std::process::Command;

use vmcluster_tests::{Scratch, TopologySpec, topology_yaml};

/// The test guest built by `scripts/build-guest-image`.
#[derive(Debug)]
pub struct Guest {
    /// Kernel.
    pub kernel: PathBuf,
    /// Initrd.
    pub initrd: PathBuf,
    /// Root disk image.
    pub base: PathBuf,
}

/// Checks that we are inside the isolated test host, and finds the guest image.
#[track_caller]
pub fn preflight() -> Guest {
    assert_eq!(
        std::env::var("VMCLUSTER_TESTHOST").as_deref(),
        Ok("1"),
        "real-guest tests run only inside scripts/testhost (an isolated network namespace)"
    );
    let routes = std::fs::read_to_string("/proc/net/route").expect("read routes");
    assert!(
        !routes
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some("00000000")),
        "the test host has a default route; refusing to run"
    );
    let dir = PathBuf::from(
        std::env::var("VMCLUSTER_GUEST_DIR").expect("VMCLUSTER_GUEST_DIR (scripts/test sets it)"),
    );
    let g = Guest {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        base: dir.join("base.qcow2"),
    };
    for p in [&g.kernel, &g.initrd, &g.base] {
        assert!(p.exists(), "{} is missing", p.display());
    }
    g
}

/// A scratch root with a topology `name` of `nodes` on subnet `192.168.<octet>.0/24`.
pub fn cluster_scratch(g: &Guest, name: &str, octet: u8, nodes: &[&str]) -> Scratch {
    let s = Scratch::new(name);
    s.write_topology(
        name,
        &topology_yaml(&TopologySpec {
            cluster: name,
            octet,
            nodes,
            base_image: &g.base,
            kernel: Some((&g.kernel, &g.initrd)),
            memory_mb: 192,
        }),
    );
    s
}

/// A server on scratch `s` with cluster `name` defined and started (every node ready).
pub async fn up(s: &Scratch, name: &str) -> vmcluster_tests::McpClient {
    up_env(&s.env("qemu:///system"), name).await
}

/// [`up`] with the server's environment given.
pub async fn up_env(env: &[(String, String)], name: &str) -> vmcluster_tests::McpClient {
    let c = vmcluster_tests::McpClient::spawn(env).await;
    c.call("cluster_define", serde_json::json!({"topology_name": name}))
        .await
        .ok();
    c.call(
        "cluster_start",
        serde_json::json!({"cluster_name": name, "ssh_timeout_s": 180}),
    )
    .await
    .ok();
    c
}

/// Runs `virsh -c qemu:///system ARGS` and returns its stdout lines.
pub fn virsh(args: &[&str]) -> Vec<String> {
    let out = Command::new("virsh")
        .arg("-c")
        .arg("qemu:///system")
        .args(args)
        .output()
        .expect("virsh");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What exists on the host for cluster `name`: its domains, its network, its bridge.
#[derive(Debug, PartialEq, Eq)]
pub struct HostObjects {
    /// Domains whose name starts with `<name>_`.
    pub domains: Vec<String>,
    /// Networks named `<name>-net`.
    pub networks: Vec<String>,
    /// Whether the bridge exists.
    pub bridge: bool,
}

/// Lists what exists on the host for cluster `name`.
pub fn host_objects(name: &str) -> HostObjects {
    let prefix = format!("{name}_");
    let net = format!("{name}-net");
    HostObjects {
        domains: virsh(&["list", "--all", "--name"])
            .into_iter()
            .filter(|d| d.starts_with(&prefix))
            .collect(),
        networks: virsh(&["net-list", "--all", "--name"])
            .into_iter()
            .filter(|n| *n == net)
            .collect(),
        bridge: bridge_exists(name),
    }
}

/// Destroys cluster `name` with its disks and checks that nothing of it is left on the host: no
/// domain, network, bridge, snapshot metadata, or cluster directory under the scratch root's
/// overlays.
pub async fn destroy_and_check_clean(c: &vmcluster_tests::McpClient, s: &Scratch, name: &str) {
    c.call(
        "cluster_destroy",
        serde_json::json!({"cluster_name": name, "remove_overlays": true}),
    )
    .await
    .ok();
    let objs = host_objects(name);
    assert!(
        objs.domains.is_empty() && objs.networks.is_empty() && !objs.bridge,
        "{objs:?}"
    );
    assert!(
        !s.path().join("overlays").join(name).exists(),
        "cluster directory left behind"
    );
    assert_eq!(
        snapshot_metadata(name),
        Vec::<String>::new(),
        "libvirt still keeps snapshot metadata"
    );
}

/// libvirt's snapshot metadata directories of cluster `name`'s domains (the test host's
/// private `/var/lib/libvirt`).
pub fn snapshot_metadata(name: &str) -> Vec<String> {
    let prefix = format!("{name}_");
    std::fs::read_dir("/var/lib/libvirt/qemu/snapshot")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|d| d.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// The bridge name the harness gives cluster `name` (see `topology_yaml`).
pub fn bridge_exists(name: &str) -> bool {
    let yaml_prefix = format!("vt{name:.8}");
    std::fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(&yaml_prefix))
        })
        .unwrap_or(false)
}

/// Runs a command on a node with the system `ssh` client, as a downstream user of the handle.
pub fn ssh(key: &str, user: &str, ip: &str, port: u64, cmd: &str) -> std::process::Output {
    vmcluster_tests::system_ssh(std::path::Path::new(key), user, ip, port as u16, 5)
        .arg(cmd)
        .output()
        .expect("ssh")
}
