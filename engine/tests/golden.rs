//! Golden files for everything the engine generates (domain XML, network XML, NoCloud seeds,
//! the derived spec of seed 000's example), plus structural checks that parse the output back.
//!
//! The snapshots under `tests/snapshots/` are the reviewed output: a change to a generator shows
//! up as a snapshot diff to review "VERY CAREFULLY" (libvirt's `qemuxmlconftest` rule). Refresh
//! them with `INSTA_UPDATE=always cargo test -p vmcluster-engine --test golden` (or
//! `cargo insta review`); CI (`CI=true`) never writes them. The structural tests read the XML
//! with `roxmltree` and the seeds with `serde_yaml`, so they hold whatever the formatting: owner
//! tag, MAC and tap, disks and their targets, the read-only seed, the console log, the
//! accelerator, and escaping of hostile text.

mod common;

use std::path::Path;

use common::{all_exist, host, patch, validate};
use roxmltree::{Document, Node};
use vmcluster_engine::names;
use vmcluster_engine::seed::{SeedFiles, normalize_public_key, seed_files};
use vmcluster_engine::topology::{ClusterSpec, DiskBus, NodeSpec, Topology};
use vmcluster_engine::xml::{self, Accel, Owner};

/// A fixed operation id, so the owner tag is stable in the snapshots.
const OP: u128 = 0x0190_f5a0_7c1e_7a3b_9d2e_4f6a_8b0c_1d2e;

/// A cluster of one direct-kernel-boot node with a scsi and a virtio extra disk.
const KERNEL_TOPOLOGY: &str = "\
cluster_name: golden
base_image: /var/lib/vmcluster/images/base.qcow2
domain_type: qemu
kernel: /var/lib/vmcluster/guest/vmlinuz
initrd: /var/lib/vmcluster/guest/initrd.img
cmdline: console=ttyS0 root=/dev/vda rw quiet
network:
  name: golden-net
  bridge: virbr-golden
  subnet: 10.10.0.0/24
nodes:
  - name: db-0
    role: database
    vcpus: 2
    memory_mb: 1024
    ip: 10.10.0.10
    extra_disks:
      - {path: /var/lib/vmcluster/disks/db-0-scsi.qcow2, size_gb: 8, bus: scsi}
      - {path: /var/lib/vmcluster/disks/db-0-data.qcow2, size_gb: 4, bus: virtio}
";

const PUBLIC_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGoldenKeyForTests+/0123456789abcdefABCDEF user@laptop";

fn owner(spec: &ClusterSpec, node: Option<&NodeSpec>) -> Owner {
    Owner {
        cluster: spec.name.clone(),
        node: node.map(|n| n.name.clone()),
        op: uuid::Uuid::from_u128(OP),
    }
}

fn kernel_spec() -> ClusterSpec {
    validate(KERNEL_TOPOLOGY).unwrap()
}

fn kernel_domain() -> (ClusterSpec, String) {
    let spec = kernel_spec();
    let node = &spec.nodes[0];
    let x = xml::domain_xml(&spec, node, Accel::Qemu, &owner(&spec, Some(node)));
    (spec, x)
}

fn disk_domain() -> (ClusterSpec, String) {
    let spec = common::example_spec();
    let node = &spec.nodes[0];
    let x = xml::domain_xml(&spec, node, Accel::Kvm, &owner(&spec, Some(node)));
    (spec, x)
}

fn render_seed(s: &SeedFiles) -> String {
    format!(
        "# meta-data\n{}# user-data\n{}# network-config\n{}",
        s.meta_data, s.user_data, s.network_config
    )
}

fn seeds_for(user: &str) -> (ClusterSpec, SeedFiles) {
    let yaml = patch(
        common::EXAMPLE_TOPOLOGY,
        &[("user: root", &format!("user: {user}"))],
    );
    let spec = validate(&yaml).unwrap();
    let key = normalize_public_key(PUBLIC_KEY).unwrap();
    let seed = seed_files(&spec, &spec.nodes[1], &key);
    (spec, seed)
}

// ---------------------------------------------------------------------------------------------
// Golden files.

#[test]
fn golden_domain_kernel_boot_tcg() {
    insta::assert_snapshot!("domain_kernel_boot_tcg", kernel_domain().1);
}

#[test]
fn golden_domain_disk_boot_kvm() {
    insta::assert_snapshot!("domain_disk_boot_kvm", disk_domain().1);
}

#[test]
fn golden_network() {
    let spec = common::example_spec();
    insta::assert_snapshot!("network", xml::network_xml(&spec, &owner(&spec, None)));
}

#[test]
fn golden_seed_root() {
    insta::assert_snapshot!("seed_root", render_seed(&seeds_for("root").1));
}

#[test]
fn golden_seed_user() {
    insta::assert_snapshot!("seed_user", render_seed(&seeds_for("debian").1));
}

#[test]
fn golden_example_spec() {
    insta::assert_yaml_snapshot!("example_spec", common::example_spec());
}

// ---------------------------------------------------------------------------------------------
// Structure, independent of formatting.

#[track_caller]
fn parse(x: &str) -> Document<'_> {
    Document::parse(x).unwrap_or_else(|e| panic!("not well-formed XML ({e}):\n{x}"))
}

/// The only element called `path[last]` reached by following `path` from the root element.
#[track_caller]
fn one<'a, 'i>(doc: &'a Document<'i>, path: &[&str]) -> Node<'a, 'i> {
    let mut found = vec![doc.root_element()];
    for name in path {
        found = found
            .iter()
            .flat_map(|n| n.children().filter(|c| c.tag_name().name() == *name))
            .collect();
    }
    assert_eq!(found.len(), 1, "expected one {path:?}");
    found[0]
}

/// Every element called `path[last]` under `path`.
fn all<'a, 'i>(doc: &'a Document<'i>, path: &[&str]) -> Vec<Node<'a, 'i>> {
    let mut found = vec![doc.root_element()];
    for name in path {
        found = found
            .iter()
            .flat_map(|n| n.children().filter(|c| c.tag_name().name() == *name))
            .collect();
    }
    found
}

#[track_caller]
fn check_attr(n: Node<'_, '_>, attr: &str, want: &str) {
    assert_eq!(
        n.attribute(attr),
        Some(want),
        "<{} {attr}=…>",
        n.tag_name().name()
    );
}

/// One `<disk>` reduced to `(target, bus, source, driver type, read-only)`.
fn disks(doc: &Document<'_>) -> Vec<(String, String, String, String, bool)> {
    all(doc, &["devices", "disk"])
        .into_iter()
        .map(|d| {
            let child = |name: &str| {
                d.children()
                    .find(|c| c.tag_name().name() == name)
                    .unwrap_or_else(|| panic!("disk without <{name}>"))
            };
            check_attr(d, "type", "file");
            check_attr(d, "device", "disk");
            (
                child("target").attribute("dev").unwrap().to_owned(),
                child("target").attribute("bus").unwrap().to_owned(),
                child("source").attribute("file").unwrap().to_owned(),
                child("driver").attribute("type").unwrap().to_owned(),
                d.children().any(|c| c.tag_name().name() == "readonly"),
            )
        })
        .collect()
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// Structural facts every node's domain XML must show.
#[track_caller]
fn check_domain(x: &str, spec: &ClusterSpec, node: &NodeSpec, accel: Accel) {
    let doc = parse(x);
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "domain");
    check_attr(root, "type", accel.as_str());
    assert_eq!(one(&doc, &["name"]).text(), Some(node.domain_name.as_str()));
    assert_eq!(
        one(&doc, &["uuid"]).text(),
        Some(node.uuid.to_string().as_str())
    );
    assert_eq!(
        one(&doc, &["memory"]).text(),
        Some(node.memory_mb.to_string().as_str())
    );
    check_attr(one(&doc, &["memory"]), "unit", "MiB");
    assert_eq!(
        one(&doc, &["vcpu"]).text(),
        Some(node.vcpus.to_string().as_str())
    );
    assert_eq!(xml::parse_owner(x), Some(owner(spec, Some(node))));

    let cpu = all(&doc, &["cpu"]);
    match accel {
        Accel::Kvm => {
            assert_eq!(cpu.len(), 1, "kvm needs a <cpu>");
            check_attr(cpu[0], "mode", "host-passthrough");
        }
        Accel::Qemu => assert!(cpu.is_empty(), "TCG cannot pass the host CPU through"),
    }

    // Root overlay, then the seed (read-only, raw, always vdb), then the extra disks.
    let mut want = vec![
        (
            "vda".to_owned(),
            "virtio".to_owned(),
            s(&node.overlay),
            "qcow2".to_owned(),
            false,
        ),
        (
            "vdb".to_owned(),
            "virtio".to_owned(),
            s(&node.seed_iso),
            "raw".to_owned(),
            true,
        ),
    ];
    for d in &node.extra_disks {
        let bus = match d.bus {
            DiskBus::Virtio => "virtio",
            DiskBus::Scsi => "scsi",
            DiskBus::Sata => "sata",
        };
        want.push((
            d.target.clone(),
            bus.to_owned(),
            s(&d.path),
            "qcow2".to_owned(),
            false,
        ));
    }
    assert_eq!(disks(&doc), want);
    let scsi = all(&doc, &["devices", "controller"])
        .into_iter()
        .any(|c| c.attribute("type") == Some("scsi"));
    assert_eq!(
        scsi,
        node.extra_disks.iter().any(|d| d.bus == DiskBus::Scsi),
        "a virtio-scsi controller exactly when a scsi disk exists"
    );

    let nic = one(&doc, &["devices", "interface"]);
    check_attr(nic, "type", "network");
    let nic_child = |name: &str| {
        nic.children()
            .find(|c| c.tag_name().name() == name)
            .unwrap()
    };
    check_attr(nic_child("source"), "network", &spec.network.name);
    check_attr(nic_child("mac"), "address", &node.mac);
    check_attr(nic_child("target"), "dev", &node.tap);
    check_attr(nic_child("model"), "type", "virtio");

    let log = one(&doc, &["devices", "serial", "log"]);
    check_attr(log, "file", &s(&node.console_log));
    check_attr(log, "append", "on");
}

#[test]
fn kernel_boot_tcg_domain_structure() {
    let (spec, x) = kernel_domain();
    let node = &spec.nodes[0];
    check_domain(&x, &spec, node, Accel::Qemu);
    let doc = parse(&x);
    assert_eq!(
        one(&doc, &["os", "kernel"]).text(),
        Some("/var/lib/vmcluster/guest/vmlinuz")
    );
    assert_eq!(
        one(&doc, &["os", "initrd"]).text(),
        Some("/var/lib/vmcluster/guest/initrd.img")
    );
    assert_eq!(
        one(&doc, &["os", "cmdline"]).text(),
        Some("console=ttyS0 root=/dev/vda rw quiet")
    );
    assert!(all(&doc, &["os", "boot"]).is_empty());
    let targets: Vec<_> = disks(&doc).into_iter().map(|d| (d.0, d.1)).collect();
    assert_eq!(
        targets,
        [
            ("vda", "virtio"),
            ("vdb", "virtio"),
            ("sda", "scsi"),
            ("vdc", "virtio")
        ]
        .map(|(t, b)| (t.to_owned(), b.to_owned()))
    );
    assert!(
        all(&doc, &["devices", "controller"])
            .iter()
            .any(|c| c.attribute("type") == Some("scsi")
                && c.attribute("model") == Some("virtio-scsi"))
    );
}

#[test]
fn disk_boot_kvm_domain_structure() {
    let (spec, x) = disk_domain();
    check_domain(&x, &spec, &spec.nodes[0], Accel::Kvm);
    let doc = parse(&x);
    check_attr(one(&doc, &["os", "boot"]), "dev", "hd");
    for absent in ["kernel", "initrd", "cmdline"] {
        assert!(all(&doc, &["os", absent]).is_empty(), "{absent}");
    }
    assert!(
        !all(&doc, &["devices", "controller"])
            .iter()
            .any(|c| c.attribute("type") == Some("scsi")),
        "no scsi disk, no scsi controller"
    );
}

#[test]
fn every_node_of_the_example_in_both_accelerators() {
    let spec = common::example_spec();
    for node in &spec.nodes {
        for accel in [Accel::Kvm, Accel::Qemu] {
            let x = xml::domain_xml(&spec, node, accel, &owner(&spec, Some(node)));
            check_domain(&x, &spec, node, accel);
        }
    }
}

#[test]
fn network_structure_round_trips() {
    let spec = common::example_spec();
    let x = xml::network_xml(&spec, &owner(&spec, None));
    let doc = parse(&x);
    check_attr(one(&doc, &["forward"]), "mode", "nat");
    check_attr(one(&doc, &["bridge"]), "name", "virbr-example0");
    check_attr(one(&doc, &["ip"]), "address", "192.168.100.1");
    check_attr(one(&doc, &["ip"]), "prefix", "24");
    check_attr(one(&doc, &["dns"]), "enable", "no");
    assert!(
        doc.descendants().all(|n| n.tag_name().name() != "dhcp"),
        "addresses come from the seeds, never from DHCP"
    );
    let parsed = xml::parse_network(&x).unwrap();
    assert_eq!(parsed.name, spec.network.name);
    assert_eq!(parsed.bridge.as_deref(), Some("virbr-example0"));
    assert_eq!(parsed.subnet, Some(spec.network.subnet));
    let o = xml::parse_owner(&x).unwrap();
    assert_eq!(o, owner(&spec, None));
    assert_eq!(o.node, None);
}

#[test]
fn a_network_read_back_is_seen_as_ours_by_validation() {
    // What parse_network reports for our own network lets a re-define adopt it.
    let spec = common::example_spec();
    let existing = xml::parse_network(&xml::network_xml(&spec, &owner(&spec, None))).unwrap();
    let topology = Topology::from_yaml(common::EXAMPLE_TOPOLOGY).unwrap();
    let again = topology
        .validate(&host(&all_exist, vec![existing]))
        .unwrap();
    assert_eq!(again, spec);
}

#[test]
fn parse_network_reads_libvirt_forms() {
    // libvirt's stock default network: netmask instead of prefix, an IPv6 range first.
    let x = "<network>\n  <name>default</name>\n  <uuid>9a05da11-e96b-47f3-8253-a3a482e445f5</uuid>\n  <forward mode='nat'/>\n  <bridge name='virbr0' stp='on' delay='0'/>\n  <ip family='ipv6' address='fd00::1' prefix='64'/>\n  <ip address='192.168.122.1' netmask='255.255.255.0'>\n    <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp>\n  </ip>\n</network>";
    let n = xml::parse_network(x).unwrap();
    assert_eq!(n.name, "default");
    assert_eq!(n.bridge.as_deref(), Some("virbr0"));
    assert_eq!(
        n.subnet.map(|s| s.to_string()).as_deref(),
        Some("192.168.122.0/24")
    );
    assert_eq!(
        xml::parse_owner(x),
        None,
        "a stranger's network has no owner"
    );

    let isolated =
        "<network><name>iso</name><ip family='ipv4' address='10.9.0.5' prefix='16'/></network>";
    let n = xml::parse_network(isolated).unwrap();
    assert_eq!(
        (n.bridge, n.subnet.map(|s| s.to_string())),
        (None, Some("10.9.0.0/16".to_owned()))
    );
    let bare = xml::parse_network("<network><name>bare</name></network>").unwrap();
    assert_eq!(bare.subnet, None);
    assert!(xml::parse_network("<network><bridge name='x'/></network>").is_none());
    assert!(xml::parse_network("<network><name>x</name>").is_none());
}

#[test]
fn parse_owner_refuses_lookalikes() {
    let tag = |ns: &str, op: &str| {
        format!(
            "<domain><metadata><o:owner xmlns:o='{ns}' cluster='c' node='n' op='{op}'/></metadata></domain>"
        )
    };
    let op = uuid::Uuid::from_u128(OP).to_string();
    assert_eq!(
        xml::parse_owner(&tag(xml::OWNER_NS, &op)),
        Some(Owner {
            cluster: "c".into(),
            node: Some("n".into()),
            op: uuid::Uuid::from_u128(OP)
        }),
        "any prefix works, the namespace is what counts"
    );
    assert_eq!(
        xml::parse_owner(&tag("https://example.invalid/owner", &op)),
        None
    );
    assert_eq!(xml::parse_owner(&tag(xml::OWNER_NS, "not-a-uuid")), None);
    assert_eq!(
        xml::parse_owner("<domain><metadata><owner cluster='c' op='x'/></metadata></domain>"),
        None
    );
    assert_eq!(xml::parse_owner("<domain><metadata>"), None);
}

#[test]
fn hostile_text_is_escaped_and_round_trips() {
    let cmdline = "console=ttyS0 a=1&b=2 <x> \"q\" 'y' &amp;";
    let yaml = KERNEL_TOPOLOGY
        .replace(
            "cmdline: console=ttyS0 root=/dev/vda rw quiet",
            &format!("cmdline: '{}'", cmdline.replace('\'', "''")),
        )
        .replace(
            "/var/lib/vmcluster/disks/db-0-data.qcow2",
            "'/var/lib/vm & co/<data>.qcow2'",
        );
    let yaml = format!("overlay_dir: \"/srv/it's & <ok>\"\n{yaml}");
    let spec = validate(&yaml).unwrap();
    let node = &spec.nodes[0];
    let x = xml::domain_xml(&spec, node, Accel::Qemu, &owner(&spec, Some(node)));
    let doc = parse(&x);
    assert_eq!(one(&doc, &["os", "cmdline"]).text(), Some(cmdline));
    let sources: Vec<_> = disks(&doc).into_iter().map(|d| d.2).collect();
    assert_eq!(
        sources,
        [
            "/srv/it's & <ok>/golden/db-0.qcow2",
            "/srv/it's & <ok>/golden/db-0-seed.iso",
            "/var/lib/vmcluster/disks/db-0-scsi.qcow2",
            "/var/lib/vm & co/<data>.qcow2",
        ]
    );
    check_attr(
        one(&doc, &["devices", "serial", "log"]),
        "file",
        "/srv/it's & <ok>/golden/db-0.console.log",
    );
    check_domain(&x, &spec, node, Accel::Qemu);
}

// ---------------------------------------------------------------------------------------------
// Seeds, read back as YAML.

#[track_caller]
fn yaml(text: &str) -> serde_yaml::Value {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("not YAML ({e}):\n{text}"))
}

#[track_caller]
fn check_seed_common(spec: &ClusterSpec, node: &NodeSpec, seed: &SeedFiles) {
    let meta = yaml(&seed.meta_data);
    assert_eq!(
        meta["instance-id"].as_str(),
        Some(names::instance_id(&spec.name, &node.name).as_str())
    );
    assert_eq!(meta["local-hostname"].as_str(), Some(node.name.as_str()));

    assert!(
        seed.user_data.starts_with("#cloud-config\n"),
        "{}",
        seed.user_data
    );
    let user = yaml(&seed.user_data);
    assert_eq!(user["hostname"].as_str(), Some(node.name.as_str()));
    assert_eq!(user["ssh_pwauth"].as_bool(), Some(false));

    let net = yaml(&seed.network_config);
    assert_eq!(net["version"].as_u64(), Some(2));
    let nic = &net["ethernets"]["nic0"];
    assert_eq!(nic["match"]["macaddress"].as_str(), Some(node.mac.as_str()));
    assert_eq!(
        nic["addresses"][0].as_str(),
        Some(format!("{}/{}", node.ip, spec.network.subnet.prefix_len()).as_str())
    );
    assert_eq!(nic["routes"][0]["to"].as_str(), Some("0.0.0.0/0"));
    assert_eq!(
        nic["routes"][0]["via"].as_str(),
        Some(spec.network.gateway.to_string().as_str())
    );
}

#[test]
fn root_seed_enables_root_login_with_the_key() {
    let (spec, seed) = seeds_for("root");
    check_seed_common(&spec, &spec.nodes[1], &seed);
    let user = yaml(&seed.user_data);
    assert_eq!(user["disable_root"].as_bool(), Some(false));
    let key = normalize_public_key(PUBLIC_KEY).unwrap();
    assert_eq!(user["ssh_authorized_keys"][0].as_str(), Some(key.as_str()));
    assert!(user.get("users").is_none(), "{}", seed.user_data);
}

#[test]
fn user_seed_creates_the_user_with_the_key() {
    let (spec, seed) = seeds_for("debian");
    check_seed_common(&spec, &spec.nodes[1], &seed);
    let user = yaml(&seed.user_data);
    assert!(user.get("disable_root").is_none(), "{}", seed.user_data);
    let users = user["users"].as_sequence().unwrap();
    assert_eq!(users[0].as_str(), Some("default"));
    let debian = &users[1];
    assert_eq!(debian["name"].as_str(), Some("debian"));
    assert_eq!(debian["lock_passwd"].as_bool(), Some(true));
    assert_eq!(debian["sudo"].as_str(), Some("ALL=(ALL) NOPASSWD:ALL"));
    let key = normalize_public_key(PUBLIC_KEY).unwrap();
    assert_eq!(
        debian["ssh_authorized_keys"][0].as_str(),
        Some(key.as_str())
    );
}

#[test]
fn seeds_differ_per_node() {
    let spec = common::example_spec();
    let key = normalize_public_key(PUBLIC_KEY).unwrap();
    let seeds: Vec<_> = spec
        .nodes
        .iter()
        .map(|n| seed_files(&spec, n, &key))
        .collect();
    for (n, seed) in spec.nodes.iter().zip(&seeds) {
        check_seed_common(&spec, n, seed);
    }
    let ids: std::collections::BTreeSet<_> = seeds.iter().map(|s| s.meta_data.clone()).collect();
    assert_eq!(ids.len(), spec.nodes.len());
}

#[test]
fn public_keys_are_normalized_or_refused() {
    assert_eq!(
        normalize_public_key(PUBLIC_KEY).unwrap(),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGoldenKeyForTests+/0123456789abcdefABCDEF vmcluster"
    );
    // Whatever follows the key material (the comment, or an injection attempt) is dropped.
    assert_eq!(
        normalize_public_key("ssh-ed25519 AAAA\nruncmd: [reboot]").unwrap(),
        "ssh-ed25519 AAAA vmcluster"
    );
    for bad in [
        "",
        "ssh-ed25519",
        "ssh-ed25519 AAAA\"",
        "ssh-ed25519\" AAAA",
        "ssh ed25519: AAAA",
        "ecdsa-sha2-nistp256 AAAA#x",
    ] {
        assert!(normalize_public_key(bad).is_err(), "{bad:?} accepted");
    }
}
