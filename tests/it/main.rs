//! Fast integration tests: everything short of booting a guest, in seconds, on any machine.
//!
//! All of them run against libvirt's `test:///default` driver (no daemon; its state lives in
//! the process that opened it, nothing boots, there is no network) and real sled journals in
//! scratch directories. Never `qemu:///system`, never a libvirtd: real guests are the `e2e`
//! suite's business, inside an isolated network namespace.
//!
//! * [`engine`]: the actors' [`vmcluster_actors::Engine`] in this process (define, lifecycle,
//!   idempotence, conflicts, restart, partial failures).
//! * [`mcp`]: the real binary behind a real MCP client (tool listing, schemas, envelopes,
//!   hostile input).
//! * [`snapshot`]: cluster snapshots over MCP (naming, kinds, revert actions, refusals).
//! * [`cli`]: the binary's one-shot verbs (`--json` envelopes, exit codes, human output).
//! * [`events`]: the event stream (`events_read`, the event resources and their notifications,
//!   `vmcluster events` with and without a server, the control socket).
//!
//! Every in-process engine of this binary shares the driver's one default connection, so each
//! fixture gets its own cluster name and subnet ([`Fixture::new`] hands out octets). Nothing
//! sleeps for a fixed time: asynchronous changes are awaited with [`eventually`].
//!
//! The binary must be built first: `cargo build --bins`.

mod cli;
mod engine;
mod events;
mod mcp;
mod snapshot;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use vmcluster_tests::{Scratch, TopologySpec, topology_yaml};

/// The libvirt URI of every test here.
pub const TEST_URI: &str = "test:///default";

/// How long any asynchronous change may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Third octets of test subnets, unique in this process (the test driver's own `default`
/// network is 192.168.122.0/24, far above where this starts).
static NEXT_OCTET: AtomicU8 = AtomicU8::new(20);

/// A scratch root with a fake base image and a topology for one cluster.
#[derive(Debug)]
pub struct Fixture {
    /// The scratch root (removed on drop).
    pub scratch: Scratch,
    /// Cluster (and topology) name.
    pub name: String,
    /// Node names.
    pub nodes: Vec<String>,
    /// Third octet of its subnet.
    pub octet: u8,
    /// The fake base image.
    pub base: PathBuf,
    /// The extra disk of the first node, when it has one.
    pub extra_disk: Option<PathBuf>,
}

impl Fixture {
    /// Cluster `name` of `nodes` with no extra disk.
    pub fn new(name: &str, nodes: &[&str]) -> Fixture {
        Fixture::build(name, nodes, false)
    }

    /// Cluster `name` of `nodes`; the first node has a 1 GiB extra disk outside the cluster
    /// directory.
    pub fn with_extra_disk(name: &str, nodes: &[&str]) -> Fixture {
        Fixture::build(name, nodes, true)
    }

    fn build(name: &str, nodes: &[&str], extra: bool) -> Fixture {
        let octet = NEXT_OCTET.fetch_add(1, Ordering::Relaxed);
        assert!(octet < 120, "out of test subnets");
        let scratch = Scratch::new(name);
        let base = scratch.fake_base_image();
        let extra_disk = extra.then(|| {
            scratch
                .path()
                .join("disks")
                .join(format!("{name}-data.qcow2"))
        });
        let f = Fixture {
            scratch,
            name: name.to_owned(),
            nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
            octet,
            base,
            extra_disk,
        };
        f.write_topology(f.yaml(512));
        f
    }

    /// The topology text, with `memory_mb` per node.
    pub fn yaml(&self, memory_mb: u64) -> String {
        let nodes: Vec<&str> = self.nodes.iter().map(String::as_str).collect();
        let mut y = topology_yaml(&TopologySpec {
            cluster: &self.name,
            octet: self.octet,
            nodes: &nodes,
            base_image: &self.base,
            kernel: None,
            memory_mb,
        });
        if let Some(d) = &self.extra_disk {
            let first_ip = format!("    ip: 192.168.{}.11\n", self.octet);
            let disk = format!(
                "{first_ip}    extra_disks:\n      - path: {}\n        size_gb: 1\n",
                d.display()
            );
            assert!(y.contains(&first_ip), "{y}");
            y = y.replacen(&first_ip, &disk, 1);
        }
        y
    }

    /// (Re)writes `topologies/<name>.yaml`.
    pub fn write_topology(&self, yaml: String) {
        self.scratch.write_topology(&self.name, &yaml);
    }

    /// An engine configuration on the test driver.
    pub fn config(&self) -> vmcluster_engine::config::Config {
        self.scratch.config(TEST_URI)
    }

    /// The environment of a `vmcluster` process on the test driver.
    pub fn env(&self) -> Vec<(String, String)> {
        self.scratch.env(TEST_URI)
    }

    /// The cluster's directory (overlays, seeds, console logs).
    pub fn cluster_dir(&self) -> PathBuf {
        self.scratch.path().join("overlays").join(&self.name)
    }

    /// Node `node`'s overlay.
    pub fn overlay(&self, node: &str) -> PathBuf {
        self.cluster_dir().join(format!("{node}.qcow2"))
    }

    /// Node `node`'s seed ISO.
    pub fn seed(&self, node: &str) -> PathBuf {
        self.cluster_dir().join(format!("{node}-seed.iso"))
    }
}

/// Identity of a file's content on disk: a rewrite (even through a temporary file renamed into
/// place) changes the inode or the modification time.
#[track_caller]
pub fn file_identity(p: &Path) -> (u64, std::time::SystemTime) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(m.is_file(), "{} is not a regular file", p.display());
    (m.ino(), m.modified().expect("mtime"))
}

/// Names in a directory (empty when it does not exist).
pub fn dir_names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(p) {
        Ok(rd) => rd
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", p.display()),
    };
    v.sort();
    v
}

/// Polls `probe` until it yields a value or [`DEADLINE`] passes (then fails with `what`).
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
