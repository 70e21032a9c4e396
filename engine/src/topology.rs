//! Topology files (seed 000's YAML format, unchanged) and their validation into a [`ClusterSpec`].
//!
//! Parsing is strict (unknown fields are refused with their line and column). Validation looks at
//! the whole file at once and reports every problem it finds, each with the field it concerns, so
//! a user fixes a topology in one round trip. Nothing here touches the host: facts about the host
//! (which files exist, which libvirt networks exist) come in through [`HostFacts`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::names::{self, MAX_CLUSTER_NAME, MAX_NODE_NAME};

/// Which accelerator a domain uses.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DomainType {
    /// Probe whether KVM really runs a guest on this host; use TCG (`qemu`) otherwise.
    #[default]
    Auto,
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's TCG emulator (slow, works everywhere). `tcg` is accepted as a synonym.
    #[serde(alias = "tcg")]
    Qemu,
}

impl FromStr for DomainType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DomainType::Auto),
            "kvm" => Ok(DomainType::Kvm),
            "qemu" | "tcg" => Ok(DomainType::Qemu),
            other => Err(format!(
                "unknown domain type {other:?}; expected auto, kvm or qemu"
            )),
        }
    }
}

/// The bus an extra disk hangs on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    /// virtio-blk (`vdX`).
    #[default]
    Virtio,
    /// virtio-scsi (`sdX`).
    Scsi,
    /// AHCI (`sdX`).
    Sata,
}

/// A topology file as written by the user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// The cluster's name: the identity every tool uses.
    pub cluster_name: String,
    /// qcow2 (or raw) image every node's overlay is backed by.
    pub base_image: PathBuf,
    /// Where overlays, seeds and console logs go (default: the server's `overlay_dir`).
    #[serde(default)]
    pub overlay_dir: Option<PathBuf>,
    /// `auto` (default), `kvm` or `qemu`.
    #[serde(default)]
    pub domain_type: Option<DomainType>,
    /// Direct kernel boot: the kernel image (nodes boot from the disk when absent).
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// Direct kernel boot: the initrd.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Direct kernel boot: the kernel command line.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// The cluster's private NAT network.
    pub network: NetworkTopology,
    /// The machines.
    pub nodes: Vec<NodeTopology>,
    /// How to reach the nodes over SSH.
    #[serde(default)]
    pub ssh: Option<SshTopology>,
    /// Logical snapshot names (`baseline: clean-boot`).
    #[serde(default)]
    pub snapshots: BTreeMap<String, String>,
}

/// The `network:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkTopology {
    /// libvirt network name.
    pub name: String,
    /// Host bridge name (at most 15 characters).
    pub bridge: String,
    /// IPv4 subnet in CIDR form, e.g. `192.168.100.0/24`.
    pub subnet: String,
    /// Host-side address of the bridge (default: the subnet's first address).
    #[serde(default)]
    pub gateway: Option<String>,
}

/// One entry of `nodes:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeTopology {
    /// Node name, unique in the cluster.
    pub name: String,
    /// Free-form role (`control`, `worker`, ...).
    #[serde(default = "default_role")]
    pub role: String,
    /// Virtual CPUs (default 1).
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Memory in MiB (default 512).
    #[serde(default = "default_memory")]
    pub memory_mb: u64,
    /// Static IPv4 address inside the network's subnet.
    pub ip: String,
    /// Additional disks, created (qcow2) when absent.
    #[serde(default)]
    pub extra_disks: Vec<ExtraDiskTopology>,
    /// Per-node override of `base_image`.
    #[serde(default)]
    pub base_image: Option<PathBuf>,
    /// Per-node override of `domain_type`.
    #[serde(default)]
    pub domain_type: Option<DomainType>,
    /// Per-node override of `kernel`.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// Per-node override of `initrd`.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Per-node override of `cmdline`.
    #[serde(default)]
    pub cmdline: Option<String>,
}

fn default_role() -> String {
    "node".to_owned()
}
fn default_vcpus() -> u32 {
    1
}
fn default_memory() -> u64 {
    512
}

/// One extra disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtraDiskTopology {
    /// Absolute path of the disk image (created when absent, never overwritten).
    pub path: PathBuf,
    /// Virtual size in GiB.
    pub size_gb: u64,
    /// `virtio` (default), `scsi` or `sata`.
    #[serde(default)]
    pub bus: DiskBus,
}

/// The `ssh:` section.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SshTopology {
    /// Private key (default: the server's `ssh_key_path`).
    #[serde(default)]
    pub key_path: Option<PathBuf>,
    /// Login user (default: the server's `ssh_user`).
    #[serde(default)]
    pub user: Option<String>,
    /// Per-attempt TCP connect timeout in seconds (default 30).
    #[serde(default)]
    pub connect_timeout_s: Option<u64>,
    /// SSH port (default 22).
    #[serde(default)]
    pub port: Option<u16>,
}

/// A libvirt network that already exists on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingNetwork {
    /// Its name.
    pub name: String,
    /// Its bridge, when it has one.
    pub bridge: Option<String>,
    /// Its IPv4 subnet, when it has one.
    pub subnet: Option<Ipv4Net>,
}

/// What validation needs to know about the host.
pub struct HostFacts<'a> {
    /// libvirt networks that exist now.
    pub networks: Vec<ExistingNetwork>,
    /// Whether a file exists.
    pub exists: &'a (dyn Fn(&Path) -> bool + Sync),
    /// Default overlay directory from the config.
    pub overlay_dir: PathBuf,
    /// Default SSH key from the config.
    pub ssh_key_path: PathBuf,
    /// Default SSH user from the config.
    pub ssh_user: String,
    /// Default accelerator from the config.
    pub domain_type: DomainType,
}

impl std::fmt::Debug for HostFacts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostFacts")
            .field("networks", &self.networks)
            .finish_non_exhaustive()
    }
}

/// One problem found in a topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Violation {
    /// Path of the offending field (`nodes[1].ip`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// Why a topology was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TopologyError {
    /// The text is not YAML of the topology schema.
    #[error("Malformed topology: {message}")]
    Malformed {
        /// The parser's message (with line and column when known).
        message: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// 1-based column, when known.
        column: Option<usize>,
    },
    /// The topology parsed but breaks rules.
    #[error("Invalid topology: {}", .0.iter().map(|v| format!("{}: {}", v.field, v.message)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Violation>),
}

/// How a node boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Boot {
    /// From its first disk (stock cloud images).
    Disk,
    /// Direct kernel boot.
    Kernel {
        /// Kernel image.
        kernel: PathBuf,
        /// Initrd, if any.
        initrd: Option<PathBuf>,
        /// Command line.
        cmdline: String,
    },
}

/// A validated extra disk with its guest device name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    /// Image path.
    pub path: PathBuf,
    /// Virtual size in GiB.
    pub size_gb: u64,
    /// Bus.
    pub bus: DiskBus,
    /// Guest device (`vdc`, `sda`, ...).
    pub target: String,
}

/// A validated node with every derived identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Node name.
    pub name: String,
    /// Role.
    pub role: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Static address.
    pub ip: Ipv4Addr,
    /// Deterministic MAC.
    pub mac: String,
    /// libvirt domain name.
    pub domain_name: String,
    /// Fixed domain UUID.
    pub uuid: uuid::Uuid,
    /// Host tap device name.
    pub tap: String,
    /// Backing image of the overlay.
    pub base_image: PathBuf,
    /// The node's qcow2 overlay.
    pub overlay: PathBuf,
    /// Its NoCloud seed ISO.
    pub seed_iso: PathBuf,
    /// Its serial console log.
    pub console_log: PathBuf,
    /// How it boots.
    pub boot: Boot,
    /// Requested accelerator (`Auto` is resolved by the host probe at define time).
    pub domain_type: DomainType,
    /// Extra disks.
    pub extra_disks: Vec<DiskSpec>,
}

/// A validated network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSpec {
    /// libvirt network name.
    pub name: String,
    /// Bridge name.
    pub bridge: String,
    /// Subnet.
    pub subnet: Ipv4Net,
    /// Bridge address (the nodes' default gateway).
    pub gateway: Ipv4Addr,
}

/// Validated SSH settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshSpec {
    /// Private key path.
    pub key_path: PathBuf,
    /// User.
    pub user: String,
    /// Port.
    pub port: u16,
    /// Per-attempt connect timeout.
    pub connect_timeout_s: u64,
}

/// A whole validated cluster: what `cluster_define` converges the host to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSpec {
    /// Cluster name.
    pub name: String,
    /// Directory holding this cluster's overlays, seeds and console logs.
    pub dir: PathBuf,
    /// Network.
    pub network: NetSpec,
    /// Nodes, in topology order.
    pub nodes: Vec<NodeSpec>,
    /// SSH settings.
    pub ssh: SshSpec,
    /// Logical snapshot names.
    pub snapshots: BTreeMap<String, String>,
}

impl ClusterSpec {
    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// Default command line for direct kernel boot.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 root=/dev/vda rw";

impl Topology {
    /// Parses a topology from YAML text.
    pub fn from_yaml(text: &str) -> Result<Topology, TopologyError> {
        serde_yaml::from_str(text).map_err(|e| {
            let loc = e.location();
            TopologyError::Malformed {
                message: e.to_string(),
                line: loc.as_ref().map(|l| l.line()),
                column: loc.as_ref().map(|l| l.column()),
            }
        })
    }

    /// Validates the whole topology against the host and derives the [`ClusterSpec`].
    pub fn validate(&self, host: &HostFacts<'_>) -> Result<ClusterSpec, TopologyError> {
        let mut v = Vec::new();
        let mut bad = |field: String, message: String| v.push(Violation { field, message });

        if let Err(e) = names::check_name(&self.cluster_name, MAX_CLUSTER_NAME) {
            bad(
                "cluster_name".into(),
                format!("{:?} {e}", self.cluster_name),
            );
        }
        let check_file = |bad: &mut dyn FnMut(String, String), field: &str, p: &Path| {
            if !p.is_absolute() {
                bad(
                    field.into(),
                    format!("{} must be an absolute path", p.display()),
                );
            } else if !(host.exists)(p) {
                bad(field.into(), format!("{} does not exist", p.display()));
            }
        };
        check_file(&mut bad, "base_image", &self.base_image);
        if let Some(k) = &self.kernel {
            check_file(&mut bad, "kernel", k);
        }
        if let Some(i) = &self.initrd {
            check_file(&mut bad, "initrd", i);
            if self.kernel.is_none() {
                bad("initrd".into(), "initrd needs kernel".into());
            }
        }

        // Network.
        let net = &self.network;
        if let Err(e) = names::check_name(&net.name, 64) {
            bad("network.name".into(), format!("{:?} {e}", net.name));
        }
        if let Err(e) = names::check_ifname(&net.bridge) {
            bad("network.bridge".into(), format!("{:?} {e}", net.bridge));
        } else if net.bridge.starts_with("vnet") || names::is_tap_name(&net.bridge) {
            bad(
                "network.bridge".into(),
                format!("{:?} uses a prefix reserved for tap devices", net.bridge),
            );
        }
        let subnet = match Ipv4Net::from_str(&net.subnet) {
            Ok(s) if s.prefix_len() > 30 => {
                bad(
                    "network.subnet".into(),
                    format!("{} is too small: use /30 or larger", net.subnet),
                );
                None
            }
            Ok(s) if s.network() != s.addr() => {
                bad(
                    "network.subnet".into(),
                    format!(
                        "{} has host bits set; did you mean {}?",
                        net.subnet,
                        s.trunc()
                    ),
                );
                None
            }
            Ok(s) => Some(s),
            Err(_) => {
                bad(
                    "network.subnet".into(),
                    format!("{:?} is not an IPv4 CIDR like 192.168.100.0/24", net.subnet),
                );
                None
            }
        };
        let gateway = subnet.and_then(|s| match &net.gateway {
            None => s.hosts().next(),
            Some(g) => match Ipv4Addr::from_str(g) {
                Ok(g) if s.contains(&g) && g != s.network() && g != s.broadcast() => Some(g),
                _ => {
                    bad(
                        "network.gateway".into(),
                        format!("{g:?} is not a host address in {s}"),
                    );
                    None
                }
            },
        });
        if let Some(s) = subnet {
            for ex in &host.networks {
                if ex.name == net.name {
                    if ex.subnet.is_some_and(|es| es != s) {
                        bad(
                            "network.name".into(),
                            format!(
                                "libvirt network {:?} already exists with subnet {}",
                                ex.name,
                                ex.subnet.unwrap()
                            ),
                        );
                    }
                    if ex.bridge.as_deref().is_some_and(|b| b != net.bridge) {
                        bad(
                            "network.bridge".into(),
                            format!(
                                "libvirt network {:?} already exists with bridge {:?}",
                                ex.name,
                                ex.bridge.as_deref().unwrap_or_default()
                            ),
                        );
                    }
                    continue;
                }
                if let Some(es) = ex.subnet
                    && (es.contains(&s.network()) || s.contains(&es.network()))
                {
                    bad(
                        "network.subnet".into(),
                        format!(
                            "{s} overlaps {es} of existing libvirt network {:?}",
                            ex.name
                        ),
                    );
                }
                if ex.bridge.as_deref() == Some(net.bridge.as_str()) {
                    bad(
                        "network.bridge".into(),
                        format!(
                            "bridge {:?} is used by libvirt network {:?}",
                            net.bridge, ex.name
                        ),
                    );
                }
            }
        }

        // SSH.
        let ssh_t = self.ssh.clone().unwrap_or_default();
        let ssh = SshSpec {
            key_path: ssh_t
                .key_path
                .clone()
                .unwrap_or_else(|| host.ssh_key_path.clone()),
            user: ssh_t.user.clone().unwrap_or_else(|| host.ssh_user.clone()),
            port: ssh_t.port.unwrap_or(22),
            connect_timeout_s: ssh_t.connect_timeout_s.unwrap_or(30),
        };
        if let Err(e) = names::check_name(&ssh.user, 32) {
            bad("ssh.user".into(), format!("{:?} {e}", ssh.user));
        }
        if ssh.connect_timeout_s == 0 {
            bad("ssh.connect_timeout_s".into(), "must be at least 1".into());
        }
        if !ssh.key_path.is_absolute() {
            bad(
                "ssh.key_path".into(),
                format!("{} must be an absolute path", ssh.key_path.display()),
            );
        }
        for (logical, real) in &self.snapshots {
            if let Err(e) = names::check_name(logical, 64) {
                bad(format!("snapshots.{logical}"), format!("logical name {e}"));
            }
            if let Err(e) = names::check_name(real, 64) {
                bad(
                    format!("snapshots.{logical}"),
                    format!("snapshot name {real:?} {e}"),
                );
            }
            // `a: b` with `b: c` would make `b` mean two snapshots.
            if logical != real && self.snapshots.contains_key(real) {
                bad(
                    format!("snapshots.{logical}"),
                    format!(
                        "snapshot name {real:?} is also a logical name; names must resolve in one step"
                    ),
                );
            }
        }

        // Nodes.
        let overlay_root = self
            .overlay_dir
            .clone()
            .unwrap_or_else(|| host.overlay_dir.clone());
        if !overlay_root.is_absolute() {
            bad(
                "overlay_dir".into(),
                format!("{} must be an absolute path", overlay_root.display()),
            );
        }
        let dir = overlay_root.join(&self.cluster_name);
        if self.nodes.is_empty() {
            bad("nodes".into(), "a cluster needs at least one node".into());
        }
        let mut seen_names = BTreeSet::new();
        let mut seen_ips = BTreeMap::new();
        let mut seen_macs = BTreeMap::new();
        let mut seen_disks = BTreeSet::new();
        let mut nodes = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let f = |k: &str| format!("nodes[{i}].{k}");
            if let Err(e) = names::check_name(&n.name, MAX_NODE_NAME) {
                bad(f("name"), format!("{:?} {e}", n.name));
            }
            if !seen_names.insert(n.name.clone()) {
                bad(f("name"), format!("duplicate node name {:?}", n.name));
            }
            if n.vcpus == 0 || n.vcpus > 64 {
                bad(f("vcpus"), format!("{} is outside 1..=64", n.vcpus));
            }
            if n.memory_mb < 64 {
                bad(
                    f("memory_mb"),
                    format!("{} MiB is below the 64 MiB minimum", n.memory_mb),
                );
            }
            if n.role.is_empty() || n.role.len() > 64 || n.role.chars().any(|c| c.is_control()) {
                bad(f("role"), "must be 1 to 64 printable characters".into());
            }
            let ip = match Ipv4Addr::from_str(&n.ip) {
                Ok(ip) => Some(ip),
                Err(_) => {
                    bad(f("ip"), format!("{:?} is not an IPv4 address", n.ip));
                    None
                }
            };
            if let (Some(ip), Some(s)) = (ip, subnet) {
                if !s.contains(&ip) {
                    bad(f("ip"), format!("{ip} is outside the subnet {s}"));
                } else if ip == s.network() || ip == s.broadcast() {
                    bad(
                        f("ip"),
                        format!("{ip} is the network or broadcast address of {s}"),
                    );
                } else if Some(ip) == gateway {
                    bad(
                        f("ip"),
                        format!("{ip} is the gateway (the host's address on the bridge)"),
                    );
                }
            }
            if let Some(ip) = ip
                && let Some(other) = seen_ips.insert(ip, n.name.clone())
            {
                bad(f("ip"), format!("{ip} is already used by node {other:?}"));
            }
            let mac = names::mac_address(&self.cluster_name, &n.name);
            if let Some(other) = seen_macs.insert(mac.clone(), n.name.clone())
                && other != n.name
            {
                bad(
                    f("name"),
                    format!("derived MAC {mac} collides with node {other:?}; rename one"),
                );
            }
            let base_image = n
                .base_image
                .clone()
                .unwrap_or_else(|| self.base_image.clone());
            if let Some(b) = &n.base_image {
                check_file(&mut bad, &f("base_image"), b);
            }
            let kernel = n.kernel.clone().or_else(|| self.kernel.clone());
            let initrd = n.initrd.clone().or_else(|| self.initrd.clone());
            if let Some(k) = &n.kernel {
                check_file(&mut bad, &f("kernel"), k);
            }
            if let Some(k) = &n.initrd {
                check_file(&mut bad, &f("initrd"), k);
                if kernel.is_none() {
                    bad(f("initrd"), "initrd needs kernel".into());
                }
            }
            let cmdline = n.cmdline.clone().or_else(|| self.cmdline.clone());
            if let Some(c) = &cmdline
                && c.chars().any(|c| c.is_control())
            {
                bad(f("cmdline"), "must not contain control characters".into());
            }
            let boot = match kernel {
                Some(kernel) => Boot::Kernel {
                    kernel,
                    initrd,
                    cmdline: cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.to_owned()),
                },
                None => Boot::Disk,
            };
            let mut extra = Vec::new();
            let (mut vd, mut sd) = (2u8, 0u8); // vda = root, vdb = seed
            for (j, d) in n.extra_disks.iter().enumerate() {
                let df = format!("nodes[{i}].extra_disks[{j}]");
                if !d.path.is_absolute() {
                    bad(
                        format!("{df}.path"),
                        format!("{} must be an absolute path", d.path.display()),
                    );
                }
                if d.path
                    .to_str()
                    .is_none_or(|s| s.chars().any(|c| c.is_control() || c == '\'' || c == '"'))
                {
                    bad(
                        format!("{df}.path"),
                        "contains characters unsafe in a path".into(),
                    );
                }
                // An extra disk must never be one of the files vmcluster or the topology uses
                // for something else (it would be attached read-write to a second purpose).
                let node_file = |p: &Path| {
                    self.nodes.iter().any(|m| {
                        let own = dir.join(&m.name);
                        [".qcow2", "-seed.iso", ".console.log"]
                            .iter()
                            .any(|suffix| p == Path::new(&format!("{}{suffix}", own.display())))
                    })
                };
                let image = |p: &Path| {
                    p == self.base_image
                        || self.kernel.as_deref() == Some(p)
                        || self.initrd.as_deref() == Some(p)
                        || self.nodes.iter().any(|m| {
                            [&m.base_image, &m.kernel, &m.initrd]
                                .iter()
                                .any(|x| x.as_deref() == Some(p))
                        })
                };
                if node_file(&d.path) || image(&d.path) {
                    bad(
                        format!("{df}.path"),
                        format!(
                            "{} is already used as an image, overlay, seed or console log",
                            d.path.display()
                        ),
                    );
                }
                if !seen_disks.insert(d.path.clone()) {
                    bad(
                        format!("{df}.path"),
                        format!("{} is used twice", d.path.display()),
                    );
                }
                if d.size_gb == 0 || d.size_gb > 16384 {
                    bad(
                        format!("{df}.size_gb"),
                        format!("{} is outside 1..=16384", d.size_gb),
                    );
                }
                // Saturating, and capped past `z`: such disks are refused just below, and a
                // topology with hundreds of disks must not overflow the counters.
                let target = match d.bus {
                    DiskBus::Virtio => {
                        vd = vd.saturating_add(1);
                        format!("vd{}", (b'a' + vd.min(27) - 1) as char)
                    }
                    DiskBus::Scsi | DiskBus::Sata => {
                        sd = sd.saturating_add(1);
                        format!("sd{}", (b'a' + sd.min(27) - 1) as char)
                    }
                };
                if vd > 26 || sd > 26 {
                    bad(df.clone(), "too many disks".into());
                }
                extra.push(DiskSpec {
                    path: d.path.clone(),
                    size_gb: d.size_gb,
                    bus: d.bus,
                    target,
                });
            }
            if let Some(ip) = ip {
                nodes.push(NodeSpec {
                    name: n.name.clone(),
                    role: n.role.clone(),
                    vcpus: n.vcpus,
                    memory_mb: n.memory_mb,
                    ip,
                    mac,
                    domain_name: names::domain_name(&self.cluster_name, &n.name),
                    uuid: names::domain_uuid(&self.cluster_name, &n.name),
                    tap: names::tap_name(&self.cluster_name, &n.name),
                    base_image,
                    overlay: dir.join(format!("{}.qcow2", n.name)),
                    seed_iso: dir.join(format!("{}-seed.iso", n.name)),
                    console_log: dir.join(format!("{}.console.log", n.name)),
                    boot,
                    domain_type: n
                        .domain_type
                        .or(self.domain_type)
                        .unwrap_or(host.domain_type),
                    extra_disks: extra,
                });
            }
        }
        if !v.is_empty() {
            return Err(TopologyError::Invalid(v));
        }
        let (Some(subnet), Some(gateway)) = (subnet, gateway) else {
            unreachable!("subnet and gateway are set when there is no violation")
        };
        Ok(ClusterSpec {
            name: self.cluster_name.clone(),
            dir,
            network: NetSpec {
                name: net.name.clone(),
                bridge: net.bridge.clone(),
                subnet,
                gateway,
            },
            nodes,
            ssh,
            snapshots: self.snapshots.clone(),
        })
    }
}
