//! Property tests of the topology boundary (promise P8: hostile input cannot crash the server or
//! reach libvirt unvalidated).
//!
//! * `Topology::from_yaml` never panics, on arbitrary text or on seed 000's example with random
//!   text spliced in, and a parsed topology survives a YAML round trip unchanged.
//! * `Topology::validate` never panics on generated topologies (names drawn from a charset with
//!   unsafe characters, random subnets, addresses, bridges, disks, host networks, 0..6 nodes),
//!   is deterministic, and refuses only with a non-empty list of violations.
//! * Whenever it accepts, the spec keeps every invariant the rest of the server relies on:
//!   addresses inside the subnet, distinct, never the network, broadcast or gateway address;
//!   every name safe for libvirt and paths; MACs, UUIDs and domain names distinct; per-node
//!   files directly inside `spec.dir`; no clash with an existing libvirt network.
//!
//! 256 cases per property keep the suite fast; proptest shrinks and records any failure.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use common::{EXAMPLE_TOPOLOGY, host};
use ipnet::Ipv4Net;
use proptest::prelude::*;
use vmcluster_engine::names::{self, MAX_CLUSTER_NAME, MAX_NODE_NAME};
use vmcluster_engine::topology::{
    Boot, ClusterSpec, DiskBus, DomainType, ExistingNetwork, ExtraDiskTopology, NetworkTopology,
    NodeTopology, SshTopology, Topology, TopologyError,
};

/// Paths under this directory do not exist on the generated host; everything else does.
const MISSING: &str = "/missing";

fn exists(p: &Path) -> bool {
    !p.starts_with(MISSING)
}

/// Mostly safe names, sometimes anything from a charset full of characters that are unsafe in
/// libvirt names, XML or paths (and sometimes too long).
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        100 => "[a-z0-9][a-z0-9._-]{0,8}",
        1 => "[a-zA-Z0-9._/'\"<>& -]{0,45}",
        1 => Just("..".to_owned()),
        1 => Just("-rf".to_owned()),
        1 => "[a-z]{30,45}",
    ]
}

/// A pool of node names small enough that duplicates happen.
fn node_name() -> impl Strategy<Value = String> {
    prop_oneof![20 => "n[0-9]{1,2}", 1 => name()]
}

fn subnet() -> impl Strategy<Value = String> {
    prop_oneof![
        30 => Just("10.0.0.0/24".to_owned()),
        10 => Just("10.0.0.0/16".to_owned()),
        2 => Just("10.0.0.0/29".to_owned()),
        1 => Just("10.0.0.0/30".to_owned()),
        1 => Just("10.0.0.0/31".to_owned()),
        1 => Just("10.0.0.4/24".to_owned()),
        1 => (any::<u32>(), 0u8..=33).prop_map(|(a, p)| format!("{}/{p}", std::net::Ipv4Addr::from(a))),
        1 => "[0-9./:a-f]{0,20}",
    ]
}

/// Addresses near 10.0.0.0 (inside or just outside the generated subnets), sometimes anything.
fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        100 => any::<u8>().prop_map(|d| format!("10.0.0.{d}")),
        4 => (0u8..=12).prop_map(|d| format!("10.0.0.{d}")),
        2 => (1u8..=9, any::<u8>()).prop_map(|(c, d)| format!("10.0.{c}.{d}")),
        1 => any::<u32>().prop_map(|a| std::net::Ipv4Addr::from(a).to_string()),
        1 => "[0-9.:/a-z]{0,18}",
    ]
}

fn bridge() -> impl Strategy<Value = String> {
    prop_oneof![
        30 => "virbr-[a-z0-9]{1,9}",
        1 => "vnet[0-9]",
        1 => "vmc[0-9a-f]{8}",
        1 => "[a-z0-9.-]{0,18}",
    ]
}

fn path() -> impl Strategy<Value = PathBuf> {
    prop_oneof![
        100 => "/d/[0-9]{1,3}\\.qcow2",
        1 => "/missing/[a-z]\\.img",
        1 => "[a-z]{1,3}/x\\.qcow2",
        1 => "/d/[a-z'\" &<]{1,4}\\.qcow2",
    ]
    .prop_map(PathBuf::from)
}

fn domain_type() -> impl Strategy<Value = Option<DomainType>> {
    prop::option::of(prop_oneof![
        Just(DomainType::Auto),
        Just(DomainType::Kvm),
        Just(DomainType::Qemu),
    ])
}

fn disk() -> impl Strategy<Value = ExtraDiskTopology> {
    (
        path(),
        prop_oneof![100 => 1u64..=64, 1 => Just(0u64), 1 => any::<u64>()],
        prop_oneof![
            Just(DiskBus::Virtio),
            Just(DiskBus::Scsi),
            Just(DiskBus::Sata)
        ],
    )
        .prop_map(|(path, size_gb, bus)| ExtraDiskTopology { path, size_gb, bus })
}

fn node() -> impl Strategy<Value = NodeTopology> {
    (
        (
            node_name(),
            prop_oneof![100 => "[a-z]{1,8}", 1 => ".{0,70}"],
            prop_oneof![100 => 1u32..=8, 1 => any::<u32>()],
            prop_oneof![100 => 64u64..=4096, 1 => 0u64..64, 1 => any::<u64>()],
            address(),
        ),
        (
            prop::collection::vec(disk(), 0..3),
            prop::option::weighted(0.1, path()),
            domain_type(),
            prop::option::weighted(0.1, path()),
            prop::option::weighted(0.1, path()),
            prop::option::weighted(0.2, prop_oneof![20 => "[a-z=/ ]{0,20}", 1 => ".{0,20}"]),
        ),
    )
        .prop_map(
            |(
                (name, role, vcpus, memory_mb, ip),
                (extra_disks, base_image, domain_type, kernel, initrd, cmdline),
            )| NodeTopology {
                name,
                role,
                vcpus,
                memory_mb,
                ip,
                extra_disks,
                base_image,
                domain_type,
                kernel,
                initrd,
                cmdline,
            },
        )
}

fn ssh() -> impl Strategy<Value = Option<SshTopology>> {
    prop::option::of(
        (
            prop::option::of(prop_oneof![
                10 => Just(PathBuf::from("/keys/id")),
                1 => Just(PathBuf::from("~/.ssh/id"))
            ]),
            prop::option::of(name()),
            prop::option::of(prop_oneof![30 => 1u64..=60, 1 => Just(0u64)]),
            prop::option::of(any::<u16>()),
        )
            .prop_map(|(key_path, user, connect_timeout_s, port)| SshTopology {
                key_path,
                user,
                connect_timeout_s,
                port,
            }),
    )
}

fn topology() -> impl Strategy<Value = Topology> {
    (
        (
            name(),
            path(),
            prop::option::of(prop_oneof![
                10 => Just(PathBuf::from("/srv/vm")),
                1 => Just(PathBuf::from("rel/dir")),
                5 => Just(PathBuf::from("/srv/it's & <ok>")),
            ]),
            domain_type(),
            prop::option::weighted(0.3, path()),
            prop::option::weighted(0.1, path()),
            prop::option::of("[a-z=/ &<]{0,20}"),
        ),
        (
            name(),
            bridge(),
            subnet(),
            prop::option::weighted(0.1, address()),
            // 0..6 nodes; an empty list is one rule, so it gets one share in nine.
            prop_oneof![1 => Just(0usize), 8 => 1usize..6]
                .prop_flat_map(|n| prop::collection::vec(node(), n)),
            ssh(),
            prop::collection::btree_map(name(), name(), 0..3),
        ),
    )
        .prop_map(
            |(
                (cluster_name, base_image, overlay_dir, domain_type, kernel, initrd, cmdline),
                (net_name, bridge, subnet, gateway, nodes, ssh, snapshots),
            )| Topology {
                cluster_name,
                base_image,
                overlay_dir,
                domain_type,
                kernel,
                initrd,
                cmdline,
                network: NetworkTopology {
                    name: net_name,
                    bridge,
                    subnet,
                    gateway,
                },
                nodes,
                ssh,
                snapshots,
            },
        )
}

/// libvirt networks already on the host: names, bridges and subnets drawn partly from the
/// pools the topology uses, so clashes happen without dominating.
fn networks() -> impl Strategy<Value = Vec<ExistingNetwork>> {
    let one = (
        prop_oneof![10 => "default|lab[0-9]", 1 => name()],
        prop::option::of(prop_oneof![10 => "virbr[0-9]", 1 => bridge()]),
        prop::option::of(
            prop_oneof![
                10 => (0u8..=255).prop_map(|c| format!("192.168.{c}.0/24")),
                1 => subnet(),
            ]
            .prop_filter_map("not a CIDR", |s| {
                s.parse::<Ipv4Net>().ok().map(|n| n.trunc())
            }),
        ),
    )
        .prop_map(|(name, bridge, subnet)| ExistingNetwork {
            name,
            bridge,
            subnet,
        });
    prop::collection::vec(one, 0..3)
}

/// Every invariant an accepted spec must hold.
#[track_caller]
fn check_spec(t: &Topology, nets: &[ExistingNetwork], spec: &ClusterSpec) {
    let net = &spec.network;
    assert_eq!(spec.name, t.cluster_name);
    names::check_name(&spec.name, MAX_CLUSTER_NAME).unwrap();
    names::check_name(&net.name, 64).unwrap();
    names::check_ifname(&net.bridge).unwrap();
    assert!(!net.bridge.starts_with("vnet") && !names::is_tap_name(&net.bridge));
    assert_eq!(
        net.subnet,
        net.subnet.trunc(),
        "host bits in {}",
        net.subnet
    );
    assert!(net.subnet.prefix_len() <= 30);
    assert!(net.subnet.contains(&net.gateway));
    assert!(net.gateway != net.subnet.network() && net.gateway != net.subnet.broadcast());
    for ex in nets {
        if ex.name == net.name {
            assert!(ex.subnet.is_none_or(|s| s == net.subnet), "{ex:?}");
        } else {
            assert!(
                ex.subnet
                    .is_none_or(|s| !s.contains(&net.subnet.network())
                        && !net.subnet.contains(&s.network())),
                "overlaps {ex:?}"
            );
            assert_ne!(ex.bridge.as_deref(), Some(net.bridge.as_str()), "{ex:?}");
        }
    }

    assert!(spec.dir.is_absolute(), "{}", spec.dir.display());
    assert_eq!(
        spec.dir.file_name().and_then(|f| f.to_str()),
        Some(&*spec.name)
    );
    assert!(spec.ssh.key_path.is_absolute());
    assert!(spec.ssh.connect_timeout_s >= 1);
    names::check_name(&spec.ssh.user, 32).unwrap();
    for (logical, real) in &spec.snapshots {
        names::check_name(logical, 64).unwrap();
        names::check_name(real, 64).unwrap();
    }

    assert!(!spec.nodes.is_empty());
    assert_eq!(spec.nodes.len(), t.nodes.len());
    let mut ips = BTreeSet::new();
    let mut macs = BTreeSet::new();
    let mut uuids = BTreeSet::new();
    let mut domains = BTreeSet::new();
    let mut disks = BTreeSet::new();
    for (n, nt) in spec.nodes.iter().zip(&t.nodes) {
        assert_eq!(n.name, nt.name, "nodes keep topology order");
        names::check_name(&n.name, MAX_NODE_NAME).unwrap();
        assert!(
            net.subnet.contains(&n.ip),
            "{} outside {}",
            n.ip,
            net.subnet
        );
        assert!(n.ip != net.subnet.network() && n.ip != net.subnet.broadcast());
        assert_ne!(n.ip, net.gateway);
        assert!(ips.insert(n.ip), "duplicate ip {}", n.ip);
        assert!(macs.insert(n.mac.clone()), "duplicate mac {}", n.mac);
        assert!(uuids.insert(n.uuid), "duplicate uuid {}", n.uuid);
        assert_eq!(n.domain_name, names::domain_name(&spec.name, &n.name));
        assert!(domains.insert(n.domain_name.clone()));
        assert!((1..=64).contains(&n.vcpus) && n.memory_mb >= 64);
        assert!(n.base_image.is_absolute() && exists(&n.base_image));
        for f in [&n.overlay, &n.seed_iso, &n.console_log] {
            let rest = f.strip_prefix(&spec.dir).expect("inside spec.dir");
            let parts: Vec<_> = rest.components().collect();
            assert!(
                matches!(parts[..], [Component::Normal(_)]),
                "{} is not directly in {}",
                f.display(),
                spec.dir.display()
            );
        }
        if let Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } = &n.boot
        {
            assert!(kernel.is_absolute() && exists(kernel));
            assert!(initrd.as_ref().is_none_or(|i| i.is_absolute() && exists(i)));
            assert!(!cmdline.chars().any(char::is_control));
        }
        let mut targets = BTreeSet::from(["vda".to_owned(), "vdb".to_owned()]);
        for d in &n.extra_disks {
            assert!(d.path.is_absolute());
            assert!((1..=16384).contains(&d.size_gb));
            assert!(disks.insert(d.path.clone()), "disk used twice");
            let letter = d.target.as_bytes()[2];
            assert!(
                d.target.len() == 3 && letter.is_ascii_lowercase(),
                "{}",
                d.target
            );
            assert!(
                targets.insert(d.target.clone()),
                "target {} twice",
                d.target
            );
        }
    }
}

fn validate_on(t: &Topology, nets: &[ExistingNetwork]) -> Result<ClusterSpec, TopologyError> {
    t.validate(&host(&exists, nets.to_vec()))
}

/// The example with `junk` inserted at byte `at` (moved to a char boundary).
fn splice(at: usize, junk: &str, cut: usize) -> String {
    let mut at = at % (EXAMPLE_TOPOLOGY.len() + 1);
    while !EXAMPLE_TOPOLOGY.is_char_boundary(at) {
        at -= 1;
    }
    let mut end = (at + cut).min(EXAMPLE_TOPOLOGY.len());
    while !EXAMPLE_TOPOLOGY.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}{junk}{}",
        &EXAMPLE_TOPOLOGY[..at],
        &EXAMPLE_TOPOLOGY[end..]
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn from_yaml_never_panics(text in any::<String>()) {
        let _ = Topology::from_yaml(&text);
    }

    #[test]
    fn from_yaml_never_panics_on_yamlish_text(text in "[ \n:\\-\\[\\]{}a-z0-9'\"#&*!|>%@`,.?/]{0,200}") {
        if let Ok(t) = Topology::from_yaml(&text) {
            let _ = validate_on(&t, &[]);
        }
    }

    /// Near-misses of a valid file reach the deepest parser and validator paths.
    #[test]
    fn damaged_example_never_panics(at in any::<usize>(), junk in ".{0,12}", cut in 0usize..8) {
        let text = splice(at, &junk, cut);
        match Topology::from_yaml(&text) {
            Ok(t) => {
                if let Ok(spec) = validate_on(&t, &[]) {
                    check_spec(&t, &[], &spec);
                }
            }
            Err(TopologyError::Malformed { message, .. }) => prop_assert!(!message.is_empty()),
            Err(e) => prop_assert!(false, "parsing returned {e:?}"),
        }
    }

    #[test]
    fn yaml_round_trip_is_lossless(t in topology()) {
        let text = serde_yaml::to_string(&t).unwrap();
        prop_assert_eq!(Topology::from_yaml(&text), Ok(t), "{}", text);
    }

    #[test]
    fn validate_never_panics_and_accepted_specs_hold_invariants(
        t in topology(),
        nets in networks(),
    ) {
        let first = validate_on(&t, &nets);
        prop_assert_eq!(&first, &validate_on(&t, &nets), "validation is deterministic");
        match first {
            Ok(spec) => check_spec(&t, &nets, &spec),
            Err(TopologyError::Invalid(v)) => {
                prop_assert!(!v.is_empty(), "refused without a reason");
                prop_assert!(v.iter().all(|v| !v.field.is_empty() && !v.message.is_empty()));
            }
            Err(e) => prop_assert!(false, "validate returned {e:?}"),
        }
    }

    /// The same properties on topologies that are valid except for one random node list, so
    /// the accepting branch is exercised often, not only by luck.
    #[test]
    fn mostly_valid_topologies_hold_invariants(
        nodes in prop::collection::vec(
            (node_name(), 2u8..=30, prop::collection::vec(disk(), 0..3)), 0..6),
    ) {
        let mut t = Topology::from_yaml(EXAMPLE_TOPOLOGY).unwrap();
        t.nodes = nodes
            .into_iter()
            .map(|(name, host, extra_disks)| NodeTopology {
                name,
                role: "node".into(),
                vcpus: 1,
                memory_mb: 256,
                ip: format!("192.168.100.{host}"),
                extra_disks,
                base_image: None,
                domain_type: None,
                kernel: None,
                initrd: None,
                cmdline: None,
            })
            .collect();
        let expect_ok = {
            let names: BTreeSet<_> = t.nodes.iter().map(|n| &n.name).collect();
            let ips: BTreeSet<_> = t.nodes.iter().map(|n| &n.ip).collect();
            let disks: Vec<_> = t.nodes.iter().flat_map(|n| &n.extra_disks).collect();
            let unique_disks: BTreeSet<_> = disks.iter().map(|d| &d.path).collect();
            !t.nodes.is_empty()
                && names.len() == t.nodes.len()
                && ips.len() == t.nodes.len()
                && t.nodes.iter().all(|n| {
                    names::check_name(&n.name, MAX_NODE_NAME).is_ok() && n.ip != "192.168.100.1"
                })
                && unique_disks.len() == disks.len()
                && disks.iter().all(|d| {
                    d.path.is_absolute()
                        && (1..=16384).contains(&d.size_gb)
                        && !d.path.to_str().unwrap().contains(['\'', '"'])
                })
        };
        let macs: BTreeMap<_, _> = t
            .nodes
            .iter()
            .map(|n| (names::mac_address(&t.cluster_name, &n.name), &n.name))
            .collect();
        let result = validate_on(&t, &[]);
        // A MAC collision between distinct names is the one rule this oracle does not model.
        if macs.len() == t.nodes.len() || !expect_ok {
            prop_assert_eq!(result.is_ok(), expect_ok, "{:?}", result);
        }
        if let Ok(spec) = result {
            check_spec(&t, &[], &spec);
        }
    }
}

/// The generators must reach both outcomes often, or the invariant checks above would be
/// vacuous (they run only on accepted specs). Fixed seed: this is a statement about the
/// generators, not a random test.
#[test]
fn generators_reach_both_outcomes() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut accepted, total) = (0, 1000);
    let mut fields = BTreeSet::new();
    for _ in 0..total {
        let t = topology().new_tree(&mut runner).unwrap().current();
        let nets = networks().new_tree(&mut runner).unwrap().current();
        match validate_on(&t, &nets) {
            Ok(spec) => {
                check_spec(&t, &nets, &spec);
                accepted += 1;
            }
            Err(TopologyError::Invalid(v)) => {
                // `nodes[3].extra_disks[1].size_gb` counts as `nodes[].extra_disks[].size_gb`,
                // `snapshots.<any name>` as `snapshots`.
                fields.extend(v.into_iter().map(|v| {
                    if v.field.starts_with("snapshots.") {
                        return "snapshots".to_owned();
                    }
                    let mut f = String::new();
                    let mut skip = false;
                    for ch in v.field.chars() {
                        match ch {
                            '[' => {
                                f.push('[');
                                skip = true;
                            }
                            ']' => {
                                f.push(']');
                                skip = false;
                            }
                            _ if skip => {}
                            _ => f.push(ch),
                        }
                    }
                    f
                }));
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(
        (total / 5..=total * 4 / 5).contains(&accepted),
        "{accepted} of {total} accepted"
    );
    // Most rules fire somewhere in the sample.
    for field in [
        "cluster_name",
        "base_image",
        "kernel",
        "initrd",
        "overlay_dir",
        "network.name",
        "network.bridge",
        "network.subnet",
        "network.gateway",
        "ssh.connect_timeout_s",
        "ssh.key_path",
        "ssh.user",
        "snapshots",
        "nodes",
        "nodes[].name",
        "nodes[].ip",
        "nodes[].vcpus",
        "nodes[].memory_mb",
        "nodes[].role",
        "nodes[].cmdline",
        "nodes[].extra_disks[].path",
        "nodes[].extra_disks[].size_gb",
    ] {
        assert!(
            fields.contains(field),
            "{field} never refused; saw {fields:?}"
        );
    }
}
