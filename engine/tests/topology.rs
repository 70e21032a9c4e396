//! Topology parsing and validation as one data-driven table: `(case, yaml, host facts) →
//! outcome`, where the outcome is "valid", "malformed at this line and column" or the exact set
//! of violations (by field, with a message substring).
//!
//! Every rule of `Topology::validate` has at least one row that breaks it and, where a boundary
//! exists, a row that sits just inside it. Each row starts from seed 000's example topology and
//! applies textual edits that must match exactly once, so a fixture change cannot silently turn
//! a failing row into a test of the unchanged file. The table reports every failing row, not
//! just the first. Below it: the derived `ClusterSpec` of the example, the resolution of defaults
//! and overrides, and the "all violations at once" promise.

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use common::{EXAMPLE_TOPOLOGY, OVERLAY_DIR, SSH_KEY, all_exist, host, patch, validate};
use vmcluster_engine::names;
use vmcluster_engine::topology::{
    Boot, DEFAULT_CMDLINE, DiskBus, DiskSpec, DomainType, ExistingNetwork, Topology, TopologyError,
    Violation,
};

/// What a row expects.
#[derive(Debug)]
enum Expect {
    /// The topology validates.
    Valid,
    /// Parsing fails: the message holds `message`, and the reported line and column are
    /// where `at` first occurs in the text.
    Malformed {
        message: &'static str,
        at: &'static str,
    },
    /// Validation fails with exactly these `(field, message substring)` violations.
    Invalid(Vec<(String, String)>),
}

/// One row of the table.
#[derive(Debug)]
struct Case {
    name: &'static str,
    yaml: String,
    /// Absolute paths that do not exist on the host (everything else does).
    missing: Vec<PathBuf>,
    /// libvirt networks already defined on the host.
    networks: Vec<ExistingNetwork>,
    expect: Expect,
}

impl Case {
    fn new(name: &'static str, yaml: String, expect: Expect) -> Case {
        Case {
            name,
            yaml,
            missing: Vec::new(),
            networks: Vec::new(),
            expect,
        }
    }

    fn missing(mut self, paths: &[&str]) -> Case {
        self.missing = paths.iter().map(PathBuf::from).collect();
        self
    }

    fn network(mut self, name: &str, bridge: Option<&str>, subnet: Option<&str>) -> Case {
        self.networks.push(ExistingNetwork {
            name: name.to_owned(),
            bridge: bridge.map(str::to_owned),
            subnet: subnet.map(|s| s.parse().unwrap()),
        });
        self
    }
}

/// The example with `edits` applied.
#[track_caller]
fn ex(edits: &[(&str, &str)]) -> String {
    patch(EXAMPLE_TOPOLOGY, edits)
}

fn invalid(expected: &[(&str, &str)]) -> Expect {
    Expect::Invalid(
        expected
            .iter()
            .map(|(f, m)| (f.to_string(), m.to_string()))
            .collect(),
    )
}

fn malformed(message: &'static str, at: &'static str) -> Expect {
    Expect::Malformed { message, at }
}

/// A small valid topology that rows can extend with extra nodes or disks.
fn minimal(nodes: &str) -> String {
    format!(
        "cluster_name: mini\nbase_image: /images/base.qcow2\nnetwork:\n  name: mini-net\n  bridge: virbr-mini\n  subnet: 10.0.0.0/24\nnodes:{nodes}"
    )
}

/// A node of [`minimal`] with `n` extra disks on `bus`.
fn node_with_disks(n: usize, bus: &str) -> String {
    let mut y = "\n  - name: n0\n    ip: 10.0.0.10\n    extra_disks:\n".to_owned();
    for j in 0..n {
        y.push_str(&format!(
            "      - {{path: /disks/d{j}.qcow2, size_gb: 1, bus: {bus}}}\n"
        ));
    }
    y
}

/// Two node names of cluster `c` whose derived MACs collide (found by search: 24 bits).
fn mac_twins(cluster: &str) -> (String, String) {
    let mut seen = std::collections::HashMap::new();
    for i in 0.. {
        let name = format!("n{i}");
        if let Some(twin) = seen.insert(names::mac_address(cluster, &name), name.clone()) {
            return (twin, name);
        }
    }
    unreachable!()
}

const CONTROLLER_DISK: &str = "/var/lib/vmcluster/disks/example-3node-controller-data0.qcow2";
const WORKER_DISK: &str = "/var/lib/vmcluster/disks/example-3node-worker-0-data0.qcow2";
const BASE: &str = "/var/lib/libvirt/images/debian-12-genericcloud-amd64.qcow2";
const SUBNET: &str = "subnet: 192.168.100.0/24";
const BRIDGE: &str = "bridge: virbr-example0";
const CLUSTER: &str = "cluster_name: example-3node";
const CLIENT: &str = "- name: client-0";
const CLIENT_IP: &str = "ip: 192.168.100.20";
const CONTROLLER_VCPUS: &str = "role: controller\n    vcpus: 2";
const CONTROLLER_MEM: &str = "memory_mb: 2048\n    ip: 192.168.100.10";
const CONTROLLER_SIZE: &str = "controller-data0.qcow2\n        size_gb: 20";
const SSH_USER: &str = "user: root";

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    use Expect::Valid;
    let long41 = "c".repeat(41);
    let long40 = "c".repeat(40);
    let long33 = "n".repeat(33);
    let long32 = "n".repeat(32);
    let (twin_a, twin_b) = mac_twins("mini");
    let mut c = vec![
        // The fixture itself, and boundaries that must stay valid.
        Case::new("example as shipped", EXAMPLE_TOPOLOGY.to_owned(), Valid),
        Case::new("cluster name of exactly 40", ex(&[(CLUSTER, &format!("cluster_name: {long40}"))]), Valid),
        Case::new("node name of exactly 32", ex(&[(CLIENT, &format!("- name: {long32}"))]), Valid),
        Case::new("names with dot, dash, underscore", ex(&[(CLUSTER, "cluster_name: a.b-c_d"), (CLIENT, "- name: C.l_i-0")]), Valid),
        Case::new("/16 subnet", ex(&[(SUBNET, "subnet: 192.168.0.0/16")]), Valid),
        Case::new("/30 subnet with one node", minimal("\n  - {name: a, ip: 10.0.0.2}").replace("10.0.0.0/24", "10.0.0.0/30"), Valid),
        Case::new("explicit gateway frees .1", ex(&[(SUBNET, "subnet: 192.168.100.0/24\n  gateway: 192.168.100.254"), (CLIENT_IP, "ip: 192.168.100.1")]), Valid),
        Case::new("bridge of exactly 15", ex(&[(BRIDGE, "bridge: virbr-example1x")]), Valid),
        Case::new("bridge vmc-prefixed but not hex", ex(&[(BRIDGE, "bridge: vmc0123abcz")]), Valid),
        Case::new("64 vcpus, 64 MiB", ex(&[(CONTROLLER_VCPUS, "role: controller\n    vcpus: 64"), (CONTROLLER_MEM, "memory_mb: 64\n    ip: 192.168.100.10")]), Valid),
        Case::new("disk of 16384 GiB", ex(&[(CONTROLLER_SIZE, "controller-data0.qcow2\n        size_gb: 16384")]), Valid),
        Case::new("24 virtio disks (vdc..vdz)", minimal(&node_with_disks(24, "virtio")), Valid),
        Case::new("26 scsi disks (sda..sdz)", minimal(&node_with_disks(26, "scsi")), Valid),
        Case::new("disjoint existing network", EXAMPLE_TOPOLOGY.to_owned(), Valid)
            .network("default", Some("virbr0"), Some("192.168.122.0/24")),
        Case::new("same network already defined (adopted)", EXAMPLE_TOPOLOGY.to_owned(), Valid)
            .network("example-3node-net", Some("virbr-example0"), Some("192.168.100.0/24")),
        Case::new("same network name without IPv4", EXAMPLE_TOPOLOGY.to_owned(), Valid)
            .network("example-3node-net", None, None),
        Case::new("missing extra disk is created, not required", EXAMPLE_TOPOLOGY.to_owned(), Valid)
            .missing(&[CONTROLLER_DISK]),
        Case::new("missing ssh key is generated, not required", EXAMPLE_TOPOLOGY.to_owned(), Valid)
            .missing(&[SSH_KEY]),

        // Parsing: unknown fields anywhere, syntax, types, required fields.
        Case::new("unknown top-level field", format!("{EXAMPLE_TOPOLOGY}clustr_size: 3\n"),
            malformed("unknown field `clustr_size`", "clustr_size")),
        Case::new("unknown network field", ex(&[(SUBNET, "subnet: 192.168.100.0/24\n  dhcp: true")]),
            malformed("unknown field `dhcp`", "dhcp")),
        Case::new("unknown node field", ex(&[(CLIENT_IP, "ip: 192.168.100.20\n    mac: 52:54:00:00:00:01")]),
            malformed("unknown field `mac`", "mac:")),
        Case::new("unknown extra disk field", ex(&[(CONTROLLER_SIZE, "controller-data0.qcow2\n        format: qcow2\n        size_gb: 20")]),
            malformed("unknown field `format`", "format:")),
        Case::new("unknown ssh field", ex(&[(SSH_USER, "user: root\n  password: hunter2")]),
            malformed("unknown field `password`", "password")),
        Case::new("seed 000 typo: memory instead of memory_mb", ex(&[(CONTROLLER_MEM, "memory: 2048\n    ip: 192.168.100.10")]),
            malformed("unknown field `memory`", "memory:")),
        Case::new("mapping value in a scalar", ex(&[(CLUSTER, "cluster_name: a: b")]),
            malformed("mapping values are not allowed in this context", ": b")),
        Case::new("subnet given as a list", ex(&[(SUBNET, "subnet: [192.168.100.0/24]")]),
            malformed("network.subnet: invalid type: sequence, expected a string", "[192")),
        Case::new("tab indentation", ex(&[("  name: example-3node-net", "\tname: example-3node-net")]),
            malformed("found character that cannot start any token", "\tname")),
        Case::new("vcpus not a number", ex(&[(CONTROLLER_VCPUS, "role: controller\n    vcpus: two")]),
            malformed("nodes[0].vcpus: invalid type: string \"two\", expected u32", "two\n")),
        Case::new("negative vcpus", ex(&[(CONTROLLER_VCPUS, "role: controller\n    vcpus: -1")]),
            malformed("invalid type: integer `-1`, expected u32", "-1\n")),
        Case::new("unknown disk bus", ex(&[(CONTROLLER_SIZE, "controller-data0.qcow2\n        size_gb: 20\n        bus: nvme\n        # was virtio:")]),
            malformed("unknown variant `nvme`", "nvme")),
        Case::new("unknown domain type", format!("domain_type: xen\n{EXAMPLE_TOPOLOGY}"),
            malformed("unknown variant `xen`, expected one of `auto`, `kvm`, `qemu`", "xen")),
        Case::new("nodes not a list", minimal(" controller"),
            malformed("invalid type: string \"controller\", expected a sequence", "controller")),
        Case::new("not a mapping", "- a\n- b\n".to_owned(),
            malformed("invalid type: sequence, expected struct Topology", "- a")),
        Case::new("missing cluster_name", ex(&[("cluster_name: example-3node\n", "")]),
            malformed("missing field `cluster_name`", "base_image")),
        Case::new("missing base_image", ex(&[(&format!("base_image: {BASE}\n"), "")]),
            malformed("missing field `base_image`", "cluster_name")),
        Case::new("missing network bridge", ex(&[("  bridge: virbr-example0\n", "")]),
            malformed("missing field `bridge`", "name: example-3node-net")),
        Case::new("missing node ip", ex(&[("    ip: 192.168.100.20\n", "")]),
            malformed("missing field `ip`", "name: client-0")),
        Case::new("missing disk size", ex(&[("\n        size_gb: 20\n        bus: virtio\n  - name: worker-0", "\n        bus: virtio\n  - name: worker-0")]),
            malformed("missing field `size_gb`", "path: /var/lib/vmcluster/disks/example-3node-controller")),
        Case::new("missing nodes", minimal("").replace("nodes:", ""),
            malformed("missing field `nodes`", "cluster_name")),
        Case::new("empty file", String::new(),
            malformed("missing field `cluster_name`", "")),

        // Names: cluster, nodes, network, snapshots, ssh user.
        Case::new("cluster path traversal", ex(&[(CLUSTER, "cluster_name: ../x")]),
            invalid(&[("cluster_name", "\"../x\" contains '/'")])),
        Case::new("cluster quote", ex(&[(CLUSTER, "cluster_name: \"a'b\"")]),
            invalid(&[("cluster_name", "contains '\\''")])),
        Case::new("cluster double quote", ex(&[(CLUSTER, "cluster_name: 'a\"b'")]),
            invalid(&[("cluster_name", "contains '\"'")])),
        Case::new("cluster angle bracket", ex(&[(CLUSTER, "cluster_name: a<b")]),
            invalid(&[("cluster_name", "contains '<'")])),
        Case::new("cluster leading dash", ex(&[(CLUSTER, "cluster_name: -rf")]),
            invalid(&[("cluster_name", "must start with a letter or a digit")])),
        Case::new("cluster leading dot", ex(&[(CLUSTER, "cluster_name: .hidden")]),
            invalid(&[("cluster_name", "must start with a letter or a digit")])),
        Case::new("cluster dot-dot", ex(&[(CLUSTER, "cluster_name: ..")]),
            invalid(&[("cluster_name", "must start with a letter or a digit")])),
        Case::new("cluster too long", ex(&[(CLUSTER, &format!("cluster_name: {long41}"))]),
            invalid(&[("cluster_name", "is 41 characters long, the limit is 40")])),
        Case::new("cluster empty", ex(&[(CLUSTER, "cluster_name: ''")]),
            invalid(&[("cluster_name", "is empty")])),
        Case::new("cluster space", ex(&[(CLUSTER, "cluster_name: my cluster")]),
            invalid(&[("cluster_name", "contains ' '")])),
        Case::new("cluster non-ASCII", ex(&[(CLUSTER, "cluster_name: clüster")]),
            invalid(&[("cluster_name", "contains 'ü'")])),
        Case::new("node path traversal", ex(&[(CLIENT, "- name: ../x")]),
            invalid(&[("nodes[2].name", "\"../x\" contains '/'")])),
        Case::new("node quote", ex(&[(CLIENT, "- name: \"it's\"")]),
            invalid(&[("nodes[2].name", "contains '\\''")])),
        Case::new("node angle bracket", ex(&[(CLIENT, "- name: <script>")]),
            invalid(&[("nodes[2].name", "contains '<'")])),
        Case::new("node leading dash", ex(&[(CLIENT, "- name: -x")]),
            invalid(&[("nodes[2].name", "must start with a letter or a digit")])),
        Case::new("node too long", ex(&[(CLIENT, &format!("- name: {long33}"))]),
            invalid(&[("nodes[2].name", "is 33 characters long, the limit is 32")])),
        Case::new("node empty", ex(&[(CLIENT, "- name: ''")]),
            invalid(&[("nodes[2].name", "is empty")])),
        Case::new("duplicate node names", ex(&[("- name: worker-0", "- name: controller")]),
            invalid(&[("nodes[1].name", "duplicate node name \"controller\"")])),
        Case::new("network name unsafe", ex(&[("name: example-3node-net", "name: net/x")]),
            invalid(&[("network.name", "\"net/x\" contains '/'")])),
        Case::new("network name too long", ex(&[("name: example-3node-net", &format!("name: {}", "n".repeat(65)))]),
            invalid(&[("network.name", "is 65 characters long, the limit is 64")])),
        Case::new("snapshot name unsafe", ex(&[("baseline: clean-boot", "baseline: ../x")]),
            invalid(&[("snapshots.baseline", "snapshot name \"../x\" contains '/'")])),
        Case::new("snapshot logical name unsafe", ex(&[("baseline: clean-boot", "\"-x\": clean-boot")]),
            invalid(&[("snapshots.-x", "logical name must start with a letter or a digit")])),
        Case::new("snapshot name empty", ex(&[("baseline: clean-boot", "baseline: ''")]),
            invalid(&[("snapshots.baseline", "snapshot name \"\" is empty")])),
        Case::new("snapshot name chained through a logical name", ex(&[("baseline: clean-boot", "baseline: clean-boot\n  clean-boot: other")]),
            invalid(&[("snapshots.baseline", "snapshot name \"clean-boot\" is also a logical name")])),
        Case::new("ssh user unsafe", ex(&[(SSH_USER, "user: root;id")]),
            invalid(&[("ssh.user", "\"root;id\" contains ';'")])),

        // Addresses.
        Case::new("ip not IPv4", ex(&[(CLIENT_IP, "ip: 192.168.100.300")]),
            invalid(&[("nodes[2].ip", "\"192.168.100.300\" is not an IPv4 address")])),
        Case::new("ip is IPv6", ex(&[(CLIENT_IP, "ip: fe80::1")]),
            invalid(&[("nodes[2].ip", "\"fe80::1\" is not an IPv4 address")])),
        Case::new("ip with prefix", ex(&[(CLIENT_IP, "ip: 192.168.100.20/24")]),
            invalid(&[("nodes[2].ip", "is not an IPv4 address")])),
        Case::new("ip outside subnet", ex(&[(CLIENT_IP, "ip: 192.168.101.20")]),
            invalid(&[("nodes[2].ip", "192.168.101.20 is outside the subnet 192.168.100.0/24")])),
        Case::new("ip is network address", ex(&[(CLIENT_IP, "ip: 192.168.100.0")]),
            invalid(&[("nodes[2].ip", "192.168.100.0 is the network or broadcast address of 192.168.100.0/24")])),
        Case::new("ip is broadcast", ex(&[(CLIENT_IP, "ip: 192.168.100.255")]),
            invalid(&[("nodes[2].ip", "192.168.100.255 is the network or broadcast address")])),
        Case::new("ip is default gateway", ex(&[(CLIENT_IP, "ip: 192.168.100.1")]),
            invalid(&[("nodes[2].ip", "192.168.100.1 is the gateway")])),
        Case::new("ip is explicit gateway", ex(&[(SUBNET, "subnet: 192.168.100.0/24\n  gateway: 192.168.100.254"), (CLIENT_IP, "ip: 192.168.100.254")]),
            invalid(&[("nodes[2].ip", "192.168.100.254 is the gateway")])),
        Case::new("duplicate ip", ex(&[(CLIENT_IP, "ip: 192.168.100.11")]),
            invalid(&[("nodes[2].ip", "192.168.100.11 is already used by node \"worker-0\"")])),
        Case::new("three nodes on one ip", ex(&[(CLIENT_IP, "ip: 192.168.100.10"), ("ip: 192.168.100.11", "ip: 192.168.100.10")]),
            invalid(&[("nodes[1].ip", "already used by node \"controller\""), ("nodes[2].ip", "already used by node \"worker-0\"")])),

        // Subnet and gateway.
        Case::new("subnet with host bits", ex(&[(SUBNET, "subnet: 192.168.100.5/24")]),
            invalid(&[("network.subnet", "192.168.100.5/24 has host bits set; did you mean 192.168.100.0/24?")])),
        Case::new("subnet /31", ex(&[(SUBNET, "subnet: 192.168.100.0/31")]),
            invalid(&[("network.subnet", "192.168.100.0/31 is too small: use /30 or larger")])),
        Case::new("subnet /32", ex(&[(SUBNET, "subnet: 192.168.100.10/32")]),
            invalid(&[("network.subnet", "is too small")])),
        Case::new("subnet without prefix", ex(&[(SUBNET, "subnet: 192.168.100.0")]),
            invalid(&[("network.subnet", "\"192.168.100.0\" is not an IPv4 CIDR like 192.168.100.0/24")])),
        Case::new("subnet IPv6", ex(&[(SUBNET, "subnet: 2001:db8::/64")]),
            invalid(&[("network.subnet", "is not an IPv4 CIDR")])),
        Case::new("subnet prefix 33", ex(&[(SUBNET, "subnet: 192.168.100.0/33")]),
            invalid(&[("network.subnet", "is not an IPv4 CIDR")])),
        Case::new("gateway outside subnet", ex(&[(SUBNET, "subnet: 192.168.100.0/24\n  gateway: 192.168.101.1")]),
            invalid(&[("network.gateway", "\"192.168.101.1\" is not a host address in 192.168.100.0/24")])),
        Case::new("gateway is network address", ex(&[(SUBNET, "subnet: 192.168.100.0/24\n  gateway: 192.168.100.0")]),
            invalid(&[("network.gateway", "is not a host address")])),
        Case::new("gateway is broadcast", ex(&[(SUBNET, "subnet: 192.168.100.0/24\n  gateway: 192.168.100.255")]),
            invalid(&[("network.gateway", "is not a host address")])),
        Case::new("gateway not an address", ex(&[(SUBNET, "subnet: 192.168.100.0/24\n  gateway: router")]),
            invalid(&[("network.gateway", "\"router\" is not a host address")])),

        // Bridge.
        Case::new("bridge too long", ex(&[(BRIDGE, "bridge: virbr-example-00")]),
            invalid(&[("network.bridge", "is 16 characters long, the limit is 15")])),
        Case::new("bridge with dot", ex(&[(BRIDGE, "bridge: br.100")]),
            invalid(&[("network.bridge", "contains '.'")])),
        Case::new("bridge with slash", ex(&[(BRIDGE, "bridge: br/0")]),
            invalid(&[("network.bridge", "contains '/'")])),
        Case::new("bridge vnet0", ex(&[(BRIDGE, "bridge: vnet0")]),
            invalid(&[("network.bridge", "\"vnet0\" uses a prefix reserved for tap devices")])),
        Case::new("bridge tap-shaped", ex(&[(BRIDGE, "bridge: vmc0123abcd")]),
            invalid(&[("network.bridge", "\"vmc0123abcd\" uses a prefix reserved for tap devices")])),

        // Existing libvirt networks.
        Case::new("subnet inside an existing network", EXAMPLE_TOPOLOGY.to_owned(),
            invalid(&[("network.subnet", "192.168.100.0/24 overlaps 192.168.0.0/16 of existing libvirt network \"lab\"")]))
            .network("lab", Some("virbr9"), Some("192.168.0.0/16")),
        Case::new("subnet around an existing network", EXAMPLE_TOPOLOGY.to_owned(),
            invalid(&[("network.subnet", "overlaps 192.168.100.128/25 of existing libvirt network \"half\"")]))
            .network("half", None, Some("192.168.100.128/25")),
        Case::new("same network name, other subnet", EXAMPLE_TOPOLOGY.to_owned(),
            invalid(&[("network.name", "libvirt network \"example-3node-net\" already exists with subnet 10.1.0.0/24")]))
            .network("example-3node-net", Some("virbr-example0"), Some("10.1.0.0/24")),
        Case::new("same network name, other bridge", EXAMPLE_TOPOLOGY.to_owned(),
            invalid(&[("network.bridge", "libvirt network \"example-3node-net\" already exists with bridge \"virbr-other\"")]))
            .network("example-3node-net", Some("virbr-other"), Some("192.168.100.0/24")),
        Case::new("tcg is a synonym of qemu", format!("domain_type: tcg\n{EXAMPLE_TOPOLOGY}"), Valid),
        Case::new("bridge used by another network", EXAMPLE_TOPOLOGY.to_owned(),
            invalid(&[("network.bridge", "bridge \"virbr-example0\" is used by libvirt network \"other\"")]))
            .network("other", Some("virbr-example0"), None),
        Case::new("both clashes with one network", EXAMPLE_TOPOLOGY.to_owned(),
            invalid(&[("network.subnet", "of existing libvirt network \"other\""), ("network.bridge", "is used by libvirt network \"other\"")]))
            .network("other", Some("virbr-example0"), Some("192.168.100.0/24")),

        // Files.
        Case::new("missing base image", EXAMPLE_TOPOLOGY.to_owned(),
            invalid(&[("base_image", &format!("{BASE} does not exist"))]))
            .missing(&[BASE]),
        Case::new("relative base image", ex(&[(&format!("base_image: {BASE}"), "base_image: images/base.qcow2")]),
            invalid(&[("base_image", "images/base.qcow2 must be an absolute path")])),
        Case::new("missing kernel and initrd", format!("{EXAMPLE_TOPOLOGY}kernel: /boot/vmlinuz\ninitrd: /boot/initrd.img\n"),
            invalid(&[("kernel", "/boot/vmlinuz does not exist"), ("initrd", "/boot/initrd.img does not exist")]))
            .missing(&["/boot/vmlinuz", "/boot/initrd.img"]),
        Case::new("relative kernel", format!("{EXAMPLE_TOPOLOGY}kernel: vmlinuz\n"),
            invalid(&[("kernel", "vmlinuz must be an absolute path")])),
        Case::new("initrd without kernel", format!("{EXAMPLE_TOPOLOGY}initrd: /boot/initrd.img\n"),
            invalid(&[("initrd", "initrd needs kernel")])),
        Case::new("missing per-node base image", ex(&[(CONTROLLER_VCPUS, "role: controller\n    base_image: /images/other.qcow2\n    vcpus: 2")]),
            invalid(&[("nodes[0].base_image", "/images/other.qcow2 does not exist")]))
            .missing(&["/images/other.qcow2"]),
        Case::new("relative per-node kernel", ex(&[(CONTROLLER_VCPUS, "role: controller\n    kernel: boot/vmlinuz\n    vcpus: 2")]),
            invalid(&[("nodes[0].kernel", "boot/vmlinuz must be an absolute path")])),
        Case::new("missing per-node initrd", format!("{}kernel: /boot/vmlinuz\n", ex(&[(CONTROLLER_VCPUS, "role: controller\n    initrd: /boot/other.img\n    vcpus: 2")])),
            invalid(&[("nodes[0].initrd", "/boot/other.img does not exist")]))
            .missing(&["/boot/other.img"]),
        Case::new("per-node initrd without any kernel", ex(&[(CONTROLLER_VCPUS, "role: controller\n    initrd: /boot/other.img\n    vcpus: 2")]),
            invalid(&[("nodes[0].initrd", "initrd needs kernel")])),
        Case::new("relative overlay_dir", format!("overlay_dir: overlays\n{EXAMPLE_TOPOLOGY}"),
            invalid(&[("overlay_dir", "overlays must be an absolute path")])),
        Case::new("relative ssh key", ex(&[("key_path: /etc/vmcluster/ssh/vmcluster_id_ed25519", "key_path: ~/.ssh/id_ed25519")]),
            invalid(&[("ssh.key_path", "~/.ssh/id_ed25519 must be an absolute path")])),
        Case::new("cmdline with control characters", format!("{EXAMPLE_TOPOLOGY}kernel: /boot/vmlinuz\ncmdline: \"console=ttyS0\\nsingle\"\n"),
            invalid(&[("nodes[0].cmdline", "must not contain control characters"), ("nodes[1].cmdline", "control"), ("nodes[2].cmdline", "control")])),

        // Resources and roles.
        Case::new("zero vcpus", ex(&[(CONTROLLER_VCPUS, "role: controller\n    vcpus: 0")]),
            invalid(&[("nodes[0].vcpus", "0 is outside 1..=64")])),
        Case::new("65 vcpus", ex(&[(CONTROLLER_VCPUS, "role: controller\n    vcpus: 65")]),
            invalid(&[("nodes[0].vcpus", "65 is outside 1..=64")])),
        Case::new("63 MiB", ex(&[(CONTROLLER_MEM, "memory_mb: 63\n    ip: 192.168.100.10")]),
            invalid(&[("nodes[0].memory_mb", "63 MiB is below the 64 MiB minimum")])),
        Case::new("empty role", ex(&[("role: controller", "role: ''")]),
            invalid(&[("nodes[0].role", "must be 1 to 64 printable characters")])),
        Case::new("role with a tab", ex(&[("role: controller", "role: \"a\\tb\"")]),
            invalid(&[("nodes[0].role", "printable")])),
        Case::new("role too long", ex(&[("role: controller", &format!("role: {}", "r".repeat(65)))]),
            invalid(&[("nodes[0].role", "1 to 64")])),

        // Extra disks.
        Case::new("disk of 0 GiB", ex(&[(CONTROLLER_SIZE, "controller-data0.qcow2\n        size_gb: 0")]),
            invalid(&[("nodes[0].extra_disks[0].size_gb", "0 is outside 1..=16384")])),
        Case::new("disk of 16385 GiB", ex(&[(CONTROLLER_SIZE, "controller-data0.qcow2\n        size_gb: 16385")]),
            invalid(&[("nodes[0].extra_disks[0].size_gb", "16385 is outside")])),
        Case::new("disk is the base image", ex(&[(CONTROLLER_DISK, BASE)]),
            invalid(&[("nodes[0].extra_disks[0].path", "is already used as an image, overlay, seed or console log")])),
        Case::new("disk is another node's overlay", ex(&[(CONTROLLER_DISK, "/var/lib/vmcluster/overlays/example-3node/worker-0.qcow2")]),
            invalid(&[("nodes[0].extra_disks[0].path", "is already used as an image, overlay, seed or console log")])),
        Case::new("disk shared by two nodes", ex(&[(WORKER_DISK, CONTROLLER_DISK)]),
            invalid(&[("nodes[1].extra_disks[0].path", &format!("{CONTROLLER_DISK} is used twice"))])),
        Case::new("relative disk path", ex(&[(CONTROLLER_DISK, "disks/data0.qcow2")]),
            invalid(&[("nodes[0].extra_disks[0].path", "disks/data0.qcow2 must be an absolute path")])),
        Case::new("disk path with a quote", ex(&[(CONTROLLER_DISK, "\"/var/lib/x'y.qcow2\"")]),
            invalid(&[("nodes[0].extra_disks[0].path", "contains characters unsafe in a path")])),
        Case::new("25 virtio disks", minimal(&node_with_disks(25, "virtio")),
            invalid(&[("nodes[0].extra_disks[24]", "too many disks")])),
        Case::new("27 sata disks", minimal(&node_with_disks(27, "sata")),
            invalid(&[("nodes[0].extra_disks[26]", "too many disks")])),

        // Whole-file rules.
        Case::new("no nodes", minimal(" []"),
            invalid(&[("nodes", "a cluster needs at least one node")])),
        Case::new("connect timeout 0", ex(&[("connect_timeout_s: 30", "connect_timeout_s: 0")]),
            invalid(&[("ssh.connect_timeout_s", "must be at least 1")])),
        Case::new("derived MACs collide", minimal(&format!("\n  - {{name: {twin_a}, ip: 10.0.0.10}}\n  - {{name: {twin_b}, ip: 10.0.0.11}}")),
            invalid(&[("nodes[1].name", &format!("collides with node \"{twin_a}\"; rename one"))])),
    ];
    // Hundreds of disks must be refused one by one, never overflow the device-letter counter.
    let many: Vec<(String, String)> = (24..200)
        .map(|j| (format!("nodes[0].extra_disks[{j}]"), "too many disks".to_owned()))
        .collect();
    c.push(Case::new("200 virtio disks", minimal(&node_with_disks(200, "virtio")), Expect::Invalid(many)));
    let many: Vec<(String, String)> = (26..300)
        .map(|j| (format!("nodes[0].extra_disks[{j}]"), "too many disks".to_owned()))
        .collect();
    c.push(Case::new("300 scsi disks", minimal(&node_with_disks(300, "scsi")), Expect::Invalid(many)));
    c
}

/// 1-based `(line, column)` of the first occurrence of `needle` in `text`.
fn position(text: &str, needle: &str) -> Option<(usize, usize)> {
    let at = text.find(needle)?;
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = at - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    Some((line, column))
}

/// Matches `actual` against the expected `(field, substring)` multiset; `Err` explains the
/// difference (missing and unexpected violations).
fn diff_violations(actual: &[Violation], expected: &[(String, String)]) -> Result<(), String> {
    let mut unmatched: Vec<&Violation> = actual.iter().collect();
    let mut missing = Vec::new();
    for (field, sub) in expected {
        match unmatched
            .iter()
            .position(|v| &v.field == field && v.message.contains(sub.as_str()))
        {
            Some(i) => {
                unmatched.remove(i);
            }
            None => missing.push(format!("{field}: …{sub}…")),
        }
    }
    if missing.is_empty() && unmatched.is_empty() {
        return Ok(());
    }
    Err(format!(
        "missing {missing:?}, unexpected {:?}",
        unmatched
            .iter()
            .map(|v| format!("{}: {}", v.field, v.message))
            .collect::<Vec<_>>()
    ))
}

/// Runs one row; `Err` describes how the outcome differs from the expectation.
fn run(case: &Case) -> Result<(), String> {
    let exists = |p: &Path| !case.missing.iter().any(|m| m == p);
    let host = host(&exists, case.networks.clone());
    let outcome = Topology::from_yaml(&case.yaml).and_then(|t| t.validate(&host));
    match (&case.expect, outcome) {
        (Expect::Valid, Ok(_)) => Ok(()),
        (
            Expect::Malformed { message, at },
            Err(TopologyError::Malformed {
                message: m,
                line,
                column,
            }),
        ) => {
            if !m.contains(message) {
                return Err(format!("message {m:?} lacks {message:?}"));
            }
            let want =
                position(&case.yaml, at).ok_or_else(|| format!("{at:?} is not in the yaml"))?;
            if (line, column) == (Some(want.0), Some(want.1)) {
                Ok(())
            } else {
                Err(format!(
                    "position {line:?}:{column:?}, expected {want:?} ({m})"
                ))
            }
        }
        (Expect::Invalid(expected), Err(TopologyError::Invalid(actual))) => {
            diff_violations(&actual, expected)
        }
        (expect, got) => Err(format!("expected {expect:?}, got {got:?}")),
    }
}

#[test]
fn validation_table() {
    let cases = cases();
    let mut names = std::collections::BTreeSet::new();
    for c in &cases {
        assert!(names.insert(c.name), "duplicate case name {:?}", c.name);
    }
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| run(c).err().map(|e| format!("  {}: {e}", c.name)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Asserts that `yaml` is refused with exactly `expected` (by field and message substring).
#[track_caller]
fn check_invalid(yaml: &str, expected: &[(&str, &str)]) {
    let Expect::Invalid(expected) = invalid(expected) else {
        unreachable!()
    };
    match validate(yaml) {
        Err(TopologyError::Invalid(actual)) => {
            if let Err(e) = diff_violations(&actual, &expected) {
                panic!("{e}");
            }
        }
        other => panic!("expected violations, got {other:?}"),
    }
}

#[test]
fn all_violations_of_a_file_are_reported_together() {
    let yaml = ex(&[
        (CLUSTER, "cluster_name: ../etc"),
        (BRIDGE, "bridge: vnet7"),
        (CONTROLLER_VCPUS, "role: controller\n    vcpus: 0"),
        (CONTROLLER_MEM, "memory_mb: 8\n    ip: 192.168.100.10"),
        ("- name: worker-0", "- name: controller"),
        (CLIENT_IP, "ip: 192.168.100.10"),
        (
            CONTROLLER_SIZE,
            "controller-data0.qcow2\n        size_gb: 0",
        ),
        ("connect_timeout_s: 30", "connect_timeout_s: 0"),
        ("baseline: clean-boot", "baseline: <none>"),
    ]);
    let expected = [
        ("cluster_name", "contains '/'"),
        ("network.bridge", "reserved for tap devices"),
        ("nodes[0].vcpus", "outside 1..=64"),
        ("nodes[0].memory_mb", "below the 64 MiB minimum"),
        ("nodes[1].name", "duplicate node name"),
        ("nodes[2].ip", "already used by node \"controller\""),
        ("nodes[0].extra_disks[0].size_gb", "outside 1..=16384"),
        ("ssh.connect_timeout_s", "at least 1"),
        ("snapshots.baseline", "contains '<'"),
    ];
    check_invalid(&yaml, &expected);
    // The error's one-line message names every violation's field.
    let err = validate(&yaml).unwrap_err().to_string();
    assert!(err.starts_with("Invalid topology: cluster_name: "), "{err}");
    for (field, _) in expected {
        assert!(
            err.contains(&format!("{field}: ")),
            "{field} missing in {err}"
        );
    }
}

#[test]
fn host_facts_are_checked_together_with_the_file() {
    let missing = [PathBuf::from(BASE)];
    let exists = |p: &Path| !missing.iter().any(|m| m == p);
    let lab = ExistingNetwork {
        name: "lab".into(),
        bridge: Some("virbr-example0".into()),
        subnet: Some("192.168.100.0/23".parse().unwrap()),
    };
    let yaml = ex(&[(CLIENT_IP, "ip: 192.168.100.1")]);
    let err = Topology::from_yaml(&yaml)
        .unwrap()
        .validate(&host(&exists, vec![lab]))
        .unwrap_err();
    let TopologyError::Invalid(v) = err else {
        panic!("{err:?}")
    };
    let expected = [
        ("base_image", "does not exist"),
        ("network.subnet", "overlaps 192.168.100.0/23"),
        ("network.bridge", "is used by libvirt network \"lab\""),
        ("nodes[2].ip", "is the gateway"),
    ]
    .map(|(f, m)| (f.to_owned(), m.to_owned()));
    diff_violations(&v, &expected).unwrap();
}

#[test]
fn malformed_errors_carry_a_position_in_their_message() {
    let yaml = format!("{EXAMPLE_TOPOLOGY}clustr_size: 3\n");
    let err = Topology::from_yaml(&yaml).unwrap_err();
    let (line, _) = position(&yaml, "clustr_size").unwrap();
    let TopologyError::Malformed { ref message, .. } = err else {
        panic!("{err:?}")
    };
    assert!(message.contains(&format!("line {line}")), "{message}");
    assert!(
        err.to_string()
            .starts_with("Malformed topology: unknown field"),
        "{err}"
    );
}

#[test]
fn example_derives_the_expected_spec() {
    let spec = common::example_spec();
    let dir = Path::new(OVERLAY_DIR).join("example-3node");
    assert_eq!(spec.name, "example-3node");
    assert_eq!(spec.dir, dir);
    assert_eq!(spec.network.name, "example-3node-net");
    assert_eq!(spec.network.bridge, "virbr-example0");
    assert_eq!(spec.network.subnet.to_string(), "192.168.100.0/24");
    assert_eq!(spec.network.gateway, Ipv4Addr::new(192, 168, 100, 1));
    assert_eq!(spec.ssh.user, "root");
    assert_eq!(spec.ssh.key_path, Path::new(SSH_KEY));
    assert_eq!((spec.ssh.port, spec.ssh.connect_timeout_s), (22, 30));
    assert_eq!(
        spec.snapshots.get("baseline").map(String::as_str),
        Some("clean-boot")
    );

    let rows: Vec<_> = spec
        .nodes
        .iter()
        .map(|n| {
            (
                n.name.as_str(),
                n.role.as_str(),
                n.ip.to_string(),
                n.vcpus,
                n.memory_mb,
                n.domain_name.as_str(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                "controller",
                "controller",
                "192.168.100.10".to_owned(),
                2,
                2048,
                "example-3node_controller"
            ),
            (
                "worker-0",
                "worker",
                "192.168.100.11".to_owned(),
                2,
                2048,
                "example-3node_worker-0"
            ),
            (
                "client-0",
                "client",
                "192.168.100.20".to_owned(),
                1,
                2048,
                "example-3node_client-0"
            ),
        ]
    );
    for n in &spec.nodes {
        assert_eq!(n.overlay, dir.join(format!("{}.qcow2", n.name)));
        assert_eq!(n.seed_iso, dir.join(format!("{}-seed.iso", n.name)));
        assert_eq!(n.console_log, dir.join(format!("{}.console.log", n.name)));
        assert_eq!(n.base_image, Path::new(BASE));
        assert_eq!(n.boot, Boot::Disk);
        assert_eq!(n.domain_type, DomainType::Auto);
        assert_eq!(n.mac, names::mac_address("example-3node", &n.name));
        assert!(n.mac.starts_with("52:54:00:"), "{}", n.mac);
        assert_eq!(n.uuid, names::domain_uuid("example-3node", &n.name));
        assert_eq!(n.tap, names::tap_name("example-3node", &n.name));
        assert!(names::is_tap_name(&n.tap), "{}", n.tap);
    }
    check_distinct(spec.nodes.iter().map(|n| n.mac.clone()));
    check_distinct(spec.nodes.iter().map(|n| n.uuid.to_string()));
    check_distinct(spec.nodes.iter().map(|n| n.tap.clone()));

    let disk = |path: &str| DiskSpec {
        path: path.into(),
        size_gb: 20,
        bus: DiskBus::Virtio,
        target: "vdc".into(),
    };
    assert_eq!(spec.nodes[0].extra_disks, [disk(CONTROLLER_DISK)]);
    assert_eq!(spec.nodes[1].extra_disks, [disk(WORKER_DISK)]);
    assert_eq!(spec.nodes[2].extra_disks, []);
    assert_eq!(
        spec.node("worker-0").map(|n| n.ip),
        Some(Ipv4Addr::new(192, 168, 100, 11))
    );
    assert!(spec.node("worker-1").is_none());

    // Validation is a pure function of the file and the host facts.
    assert_eq!(common::example_spec(), spec);
}

#[track_caller]
fn check_distinct(items: impl IntoIterator<Item = String>) {
    let items: Vec<String> = items.into_iter().collect();
    let set: std::collections::BTreeSet<&String> = items.iter().collect();
    assert_eq!(set.len(), items.len(), "not distinct: {items:?}");
}

#[test]
fn defaults_and_overrides_resolve_per_node() {
    let yaml = minimal(
        "
  - name: a
    ip: 10.0.0.10
  - name: b
    ip: 10.0.0.11
    vcpus: 4
    domain_type: kvm
    kernel: /boot/b/vmlinuz
    cmdline: console=ttyS0 quiet
    base_image: /images/b.qcow2
    extra_disks:
      - {path: /d/1.qcow2, size_gb: 1}
      - {path: /d/2.qcow2, size_gb: 2, bus: scsi}
      - {path: /d/3.qcow2, size_gb: 3, bus: sata}
      - {path: /d/4.qcow2, size_gb: 4, bus: virtio}
",
    );
    let yaml = format!(
        "overlay_dir: /srv/vm\ndomain_type: qemu\nkernel: /boot/vmlinuz\ninitrd: /boot/initrd.img\n{yaml}"
    );
    let spec = validate(&yaml).unwrap();
    assert_eq!(spec.dir, Path::new("/srv/vm/mini"));
    assert_eq!(spec.network.gateway, Ipv4Addr::new(10, 0, 0, 1));
    // No ssh section: the server's defaults.
    assert_eq!(spec.ssh.user, "root");
    assert_eq!(spec.ssh.key_path, Path::new(SSH_KEY));
    assert_eq!((spec.ssh.port, spec.ssh.connect_timeout_s), (22, 30));
    assert!(spec.snapshots.is_empty());

    let (a, b) = (&spec.nodes[0], &spec.nodes[1]);
    assert_eq!((a.role.as_str(), a.vcpus, a.memory_mb), ("node", 1, 512));
    assert_eq!(a.domain_type, DomainType::Qemu);
    assert_eq!(a.base_image, Path::new("/images/base.qcow2"));
    assert_eq!(a.overlay, Path::new("/srv/vm/mini/a.qcow2"));
    assert_eq!(
        a.boot,
        Boot::Kernel {
            kernel: "/boot/vmlinuz".into(),
            initrd: Some("/boot/initrd.img".into()),
            cmdline: DEFAULT_CMDLINE.into(),
        }
    );
    assert_eq!(b.vcpus, 4);
    assert_eq!(b.domain_type, DomainType::Kvm);
    assert_eq!(b.base_image, Path::new("/images/b.qcow2"));
    assert_eq!(
        b.boot,
        Boot::Kernel {
            kernel: "/boot/b/vmlinuz".into(),
            initrd: Some("/boot/initrd.img".into()),
            cmdline: "console=ttyS0 quiet".into(),
        }
    );
    let targets: Vec<_> = b
        .extra_disks
        .iter()
        .map(|d| (d.target.as_str(), d.bus, d.size_gb))
        .collect();
    assert_eq!(
        targets,
        [
            ("vdc", DiskBus::Virtio, 1),
            ("sda", DiskBus::Scsi, 2),
            ("sdb", DiskBus::Sata, 3),
            ("vdd", DiskBus::Virtio, 4),
        ]
    );
}

#[test]
fn the_host_default_accelerator_and_ssh_apply_when_the_file_is_silent() {
    let yaml = minimal("\n  - {name: a, ip: 10.0.0.10}");
    let mut facts = host(&all_exist, Vec::new());
    facts.domain_type = DomainType::Kvm;
    facts.ssh_user = "debian".into();
    facts.ssh_key_path = "/keys/id".into();
    let spec = Topology::from_yaml(&yaml)
        .unwrap()
        .validate(&facts)
        .unwrap();
    assert_eq!(spec.nodes[0].domain_type, DomainType::Kvm);
    assert_eq!(spec.ssh.user, "debian");
    assert_eq!(spec.ssh.key_path, Path::new("/keys/id"));

    // A bad default from the host is reported against the field it lands in.
    facts.ssh_user = "no body".into();
    let err = Topology::from_yaml(&yaml)
        .unwrap()
        .validate(&facts)
        .unwrap_err();
    assert!(
        matches!(&err, TopologyError::Invalid(v) if v.len() == 1 && v[0].field == "ssh.user"),
        "{err:?}"
    );
}

#[test]
fn mac_twins_really_collide() {
    // Guards the "derived MACs collide" row: the pair must share a MAC and nothing else.
    let (a, b) = mac_twins("mini");
    assert_ne!(a, b);
    assert_eq!(
        names::mac_address("mini", &a),
        names::mac_address("mini", &b)
    );
    assert_ne!(
        names::domain_uuid("mini", &a),
        names::domain_uuid("mini", &b)
    );
}
