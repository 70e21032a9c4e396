//! libvirt XML: what we generate (domains, networks) and the little we read back (ownership,
//! network facts).
//!
//! Every object the server creates carries an owner tag in its `<metadata>`:
//! `<vmc:owner xmlns:vmc="…" cluster="…" node="…" op="…"/>`. That tag is how the server finds
//! what it made, refuses to touch what it did not make, and proves after `cluster_destroy` that
//! nothing is left. Generated XML is golden-tested (see `tests/`), so any change is reviewed.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use quick_xml::escape::escape;

use crate::topology::{Boot, ClusterSpec, DiskBus, ExistingNetwork, NodeSpec};

/// XML namespace of the owner tag.
pub const OWNER_NS: &str = "https://vmcluster.dev/xmlns/owner/1";

/// Who made a libvirt object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Cluster name.
    pub cluster: String,
    /// Node name (domains only).
    pub node: Option<String>,
    /// The operation that created it.
    pub op: uuid::Uuid,
}

/// A concrete accelerator (after `auto` was resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Accel {
    /// Hardware.
    Kvm,
    /// TCG.
    Qemu,
}

impl Accel {
    /// libvirt's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Qemu => "qemu",
        }
    }
}

fn e(s: &str) -> std::borrow::Cow<'_, str> {
    escape(s)
}

fn owner_xml(o: &Owner) -> String {
    let node = o
        .node
        .as_deref()
        .map(|n| format!(" node=\"{}\"", e(n)))
        .unwrap_or_default();
    format!(
        "  <metadata>\n    <vmc:owner xmlns:vmc=\"{OWNER_NS}\" cluster=\"{}\"{node} op=\"{}\"/>\n  </metadata>\n",
        e(&o.cluster),
        o.op
    )
}

/// The domain XML of one node.
pub fn domain_xml(spec: &ClusterSpec, node: &NodeSpec, accel: Accel, owner: &Owner) -> String {
    let mut x = String::new();
    let p = |p: &std::path::Path| escape(p.to_string_lossy().as_ref()).into_owned();
    let _ = writeln!(x, "<domain type='{}'>", accel.as_str());
    let _ = writeln!(x, "  <name>{}</name>", e(&node.domain_name));
    let _ = writeln!(x, "  <uuid>{}</uuid>", node.uuid);
    let _ = writeln!(
        x,
        "  <title>vmcluster {}/{}</title>",
        e(&spec.name),
        e(&node.name)
    );
    x.push_str(&owner_xml(owner));
    let _ = writeln!(x, "  <memory unit='MiB'>{}</memory>", node.memory_mb);
    let _ = writeln!(x, "  <vcpu>{}</vcpu>", node.vcpus);
    x.push_str("  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n");
    match &node.boot {
        Boot::Disk => x.push_str("    <boot dev='hd'/>\n"),
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            let _ = writeln!(x, "    <kernel>{}</kernel>", p(kernel));
            if let Some(i) = initrd {
                let _ = writeln!(x, "    <initrd>{}</initrd>", p(i));
            }
            let _ = writeln!(x, "    <cmdline>{}</cmdline>", e(cmdline));
        }
    }
    x.push_str("  </os>\n  <features><acpi/><apic/></features>\n");
    if accel == Accel::Kvm {
        x.push_str("  <cpu mode='host-passthrough'/>\n");
    }
    x.push_str(
        "  <clock offset='utc'/>\n  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n  <devices>\n",
    );
    let _ = writeln!(
        x,
        "    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='{}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>",
        p(&node.overlay)
    );
    let _ = writeln!(
        x,
        "    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <source file='{}'/>\n      <target dev='vdb' bus='virtio'/>\n      <readonly/>\n    </disk>",
        p(&node.seed_iso)
    );
    for d in &node.extra_disks {
        let bus = match d.bus {
            DiskBus::Virtio => "virtio",
            DiskBus::Scsi => "scsi",
            DiskBus::Sata => "sata",
        };
        let _ = writeln!(
            x,
            "    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='{}'/>\n      <target dev='{}' bus='{bus}'/>\n    </disk>",
            p(&d.path),
            d.target
        );
    }
    if node.extra_disks.iter().any(|d| d.bus == DiskBus::Scsi) {
        x.push_str("    <controller type='scsi' model='virtio-scsi'/>\n");
    }
    let _ = writeln!(
        x,
        "    <interface type='network'>\n      <source network='{}'/>\n      <mac address='{}'/>\n      <target dev='{}'/>\n      <model type='virtio'/>\n      <rom enabled='no'/>\n    </interface>",
        e(&spec.network.name),
        node.mac,
        node.tap
    );
    let _ = writeln!(
        x,
        "    <serial type='pty'>\n      <log file='{}' append='on'/>\n      <target port='0'/>\n    </serial>",
        p(&node.console_log)
    );
    x.push_str(
        "    <console type='pty'>\n      <target type='serial' port='0'/>\n    </console>\n    <controller type='usb' model='none'/>\n    <memballoon model='none'/>\n    <rng model='virtio'>\n      <backend model='random'>/dev/urandom</backend>\n    </rng>\n  </devices>\n</domain>\n",
    );
    x
}

/// The NAT network XML of a cluster (no DHCP, no DNS: addresses come from the seeds).
pub fn network_xml(spec: &ClusterSpec, owner: &Owner) -> String {
    let n = &spec.network;
    format!(
        "<network>\n  <name>{}</name>\n{}  <forward mode='nat'/>\n  <bridge name='{}' stp='off' delay='0'/>\n  <dns enable='no'/>\n  <ip address='{}' prefix='{}'/>\n</network>\n",
        e(&n.name),
        owner_xml(owner),
        e(&n.bridge),
        n.gateway,
        n.subnet.prefix_len()
    )
}

/// Reads the owner tag of a libvirt object's XML, if it carries one.
pub fn parse_owner(xml: &str) -> Option<Owner> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let tag = doc
        .descendants()
        .find(|n| n.tag_name().name() == "owner" && n.tag_name().namespace() == Some(OWNER_NS))?;
    Some(Owner {
        cluster: tag.attribute("cluster")?.to_owned(),
        node: tag.attribute("node").map(str::to_owned),
        op: tag.attribute("op")?.parse().ok()?,
    })
}

/// Reads name, bridge and IPv4 subnet of an existing libvirt network.
pub fn parse_network(xml: &str) -> Option<ExistingNetwork> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let root = doc.root_element();
    let child = |name: &str| root.children().find(|c| c.tag_name().name() == name);
    let name = child("name")?.text()?.to_owned();
    let bridge = child("bridge")
        .and_then(|b| b.attribute("name"))
        .map(str::to_owned);
    let subnet = root
        .children()
        .filter(|c| {
            c.tag_name().name() == "ip" && c.attribute("family").is_none_or(|f| f == "ipv4")
        })
        .find_map(|ip| {
            let addr: Ipv4Addr = ip.attribute("address")?.parse().ok()?;
            let prefix = match (ip.attribute("prefix"), ip.attribute("netmask")) {
                (Some(p), _) => p.parse().ok()?,
                (None, Some(m)) => u32::from(m.parse::<Ipv4Addr>().ok()?).count_ones() as u8,
                _ => return None,
            };
            ipnet::Ipv4Net::new(addr, prefix).ok().map(|n| n.trunc())
        });
    Some(ExistingNetwork {
        name,
        bridge,
        subnet,
    })
}
