//! Step plans of `cluster_define` and `cluster_destroy`, as pure data.
//!
//! Plans are what the journal records and what replay resumes, so their content, their order
//! and the step names are part of the on-disk contract: the full lists are spelled out here,
//! and `Step::name()` is pinned for every variant (an added variant fails to compile until it
//! is listed). Structural rules follow: everything define creates, destroy with
//! `remove_overlays` removes, and nothing is torn down while something still uses it.

mod common;

use vmcluster_engine::plan::{Step, define_plan, destroy_plan, snapshot_create_plan};
use vmcluster_engine::topology::ClusterSpec;

/// `name` or `name(node)`, the way the journal and errors show a step.
fn show(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .map(|s| match s.node() {
            Some(n) => format!("{}({n})", s.name()),
            None => s.name().to_owned(),
        })
        .collect()
}

#[track_caller]
fn check_plan(steps: &[Step], want: &[&str]) {
    assert_eq!(show(steps), want);
}

/// A spec of `nodes` (with or without an extra disk each), from a minimal topology.
fn spec_of(nodes: &[(&str, bool)]) -> ClusterSpec {
    let mut y = "cluster_name: p\nbase_image: /b.qcow2\nnetwork: {name: p-net, bridge: virbr-p, subnet: 10.1.0.0/24}\nnodes:\n".to_owned();
    for (i, (name, disk)) in nodes.iter().enumerate() {
        y.push_str(&format!("  - name: {name}\n    ip: 10.1.0.{}\n", 10 + i));
        if *disk {
            y.push_str(&format!(
                "    extra_disks: [{{path: /disks/{name}.qcow2, size_gb: 1}}]\n"
            ));
        }
    }
    common::validate(&y).unwrap()
}

#[test]
fn define_plan_of_the_example() {
    // controller and worker-0 have an extra disk, client-0 has none.
    check_plan(
        &define_plan(&common::example_spec()),
        &[
            "ensure_dir",
            "ensure_network",
            "start_network",
            "ensure_extra_disks(controller)",
            "ensure_overlay(controller)",
            "ensure_seed(controller)",
            "define_domain(controller)",
            "ensure_extra_disks(worker-0)",
            "ensure_overlay(worker-0)",
            "ensure_seed(worker-0)",
            "define_domain(worker-0)",
            "ensure_overlay(client-0)",
            "ensure_seed(client-0)",
            "define_domain(client-0)",
        ],
    );
}

#[test]
fn define_plan_without_extra_disks() {
    check_plan(
        &define_plan(&spec_of(&[("a", false), ("b", false), ("c", false)])),
        &[
            "ensure_dir",
            "ensure_network",
            "start_network",
            "ensure_overlay(a)",
            "ensure_seed(a)",
            "define_domain(a)",
            "ensure_overlay(b)",
            "ensure_seed(b)",
            "define_domain(b)",
            "ensure_overlay(c)",
            "ensure_seed(c)",
            "define_domain(c)",
        ],
    );
    check_plan(
        &define_plan(&spec_of(&[("solo", true)])),
        &[
            "ensure_dir",
            "ensure_network",
            "start_network",
            "ensure_extra_disks(solo)",
            "ensure_overlay(solo)",
            "ensure_seed(solo)",
            "define_domain(solo)",
        ],
    );
}

#[test]
fn destroy_plan_keeping_overlays() {
    check_plan(
        &destroy_plan(&common::example_spec(), false),
        &[
            "stop_domain(controller)",
            "undefine_domain(controller)",
            "remove_node_files(controller)",
            "stop_domain(worker-0)",
            "undefine_domain(worker-0)",
            "remove_node_files(worker-0)",
            "stop_domain(client-0)",
            "undefine_domain(client-0)",
            "remove_node_files(client-0)",
            "remove_network",
        ],
    );
}

#[test]
fn destroy_plan_removing_overlays() {
    check_plan(
        &destroy_plan(&common::example_spec(), true),
        &[
            "stop_domain(controller)",
            "undefine_domain(controller)",
            "remove_node_files(controller)",
            "remove_overlay(controller)",
            "stop_domain(worker-0)",
            "undefine_domain(worker-0)",
            "remove_node_files(worker-0)",
            "remove_overlay(worker-0)",
            "stop_domain(client-0)",
            "undefine_domain(client-0)",
            "remove_node_files(client-0)",
            "remove_overlay(client-0)",
            "remove_network",
            "remove_dir",
        ],
    );
}

/// Every variant once, with the name the journal stores. The `match` makes this list
/// exhaustive: a new variant does not compile until it is named here.
fn every_step() -> Vec<(Step, &'static str)> {
    let n = || "n".to_owned();
    let all = vec![
        (Step::EnsureDir, "ensure_dir"),
        (Step::EnsureNetwork, "ensure_network"),
        (Step::StartNetwork, "start_network"),
        (Step::EnsureExtraDisks(n()), "ensure_extra_disks"),
        (Step::EnsureOverlay(n()), "ensure_overlay"),
        (Step::EnsureSeed(n()), "ensure_seed"),
        (Step::DefineDomain(n()), "define_domain"),
        (Step::StopDomain(n()), "stop_domain"),
        (Step::UndefineDomain(n()), "undefine_domain"),
        (Step::RemoveNodeFiles(n()), "remove_node_files"),
        (Step::RemoveOverlay(n()), "remove_overlay"),
        (Step::RemoveNetwork, "remove_network"),
        (Step::RemoveDir, "remove_dir"),
        (Step::StartDomain(n()), "start_domain"),
        (Step::WaitReady(n()), "wait_ready"),
        (Step::RebootDomain(n()), "reboot_domain"),
        (Step::SyncDisks(n()), "sync_disks"),
        (Step::SuspendDomain(n()), "suspend_domain"),
        (Step::CreateSnapshot(n()), "create_snapshot"),
        (Step::ResumeDomain(n()), "resume_domain"),
        (Step::DeleteSnapshot(n()), "delete_snapshot"),
        (Step::RevertSnapshot(n()), "revert_snapshot"),
    ];
    for (s, _) in &all {
        match s {
            Step::EnsureDir
            | Step::EnsureNetwork
            | Step::StartNetwork
            | Step::EnsureExtraDisks(_)
            | Step::EnsureOverlay(_)
            | Step::EnsureSeed(_)
            | Step::DefineDomain(_)
            | Step::StopDomain(_)
            | Step::UndefineDomain(_)
            | Step::RemoveNodeFiles(_)
            | Step::RemoveOverlay(_)
            | Step::RemoveNetwork
            | Step::RemoveDir
            | Step::StartDomain(_)
            | Step::WaitReady(_)
            | Step::RebootDomain(_)
            | Step::SyncDisks(_)
            | Step::SuspendDomain(_)
            | Step::CreateSnapshot(_)
            | Step::ResumeDomain(_)
            | Step::DeleteSnapshot(_)
            | Step::RevertSnapshot(_) => {}
        }
    }
    all
}

#[test]
fn step_names_are_stable() {
    let all = every_step();
    let names: Vec<&str> = all.iter().map(|(s, _)| s.name()).collect();
    let want: Vec<&str> = all.iter().map(|(_, w)| *w).collect();
    assert_eq!(names, want);
    let unique: std::collections::BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "two steps share a journal name");
}

#[test]
fn node_steps_name_their_node_and_cluster_steps_do_not() {
    for (step, name) in every_step() {
        let cluster_wide = matches!(
            step,
            Step::EnsureDir
                | Step::EnsureNetwork
                | Step::StartNetwork
                | Step::RemoveNetwork
                | Step::RemoveDir
        );
        let want = if cluster_wide { None } else { Some("n") };
        assert_eq!(step.node(), want, "{name}");
    }
}

/// The position of `step` in `plan`.
#[track_caller]
fn at(plan: &[Step], step: &Step) -> usize {
    plan.iter()
        .position(|s| s == step)
        .unwrap_or_else(|| panic!("{step:?} missing from {:?}", show(plan)))
}

#[test]
fn plans_respect_dependencies_and_leave_nothing() {
    for spec in [
        common::example_spec(),
        spec_of(&[
            ("a", true),
            ("b", false),
            ("c", true),
            ("d", false),
            ("e", true),
        ]),
        spec_of(&[("only", false)]),
    ] {
        let define = define_plan(&spec);
        let destroy = destroy_plan(&spec, true);
        let network = at(&define, &Step::StartNetwork);
        assert!(at(&define, &Step::EnsureNetwork) < network);
        for n in &spec.nodes {
            let name = || n.name.clone();
            // A domain is defined only once its disks, seed and network exist.
            let domain = at(&define, &Step::DefineDomain(name()));
            assert!(at(&define, &Step::EnsureOverlay(name())) < domain);
            assert!(at(&define, &Step::EnsureSeed(name())) < domain);
            assert!(network < domain && at(&define, &Step::EnsureDir) < domain);
            let disks = define
                .iter()
                .position(|s| *s == Step::EnsureExtraDisks(name()));
            assert_eq!(disks.is_some(), !n.extra_disks.is_empty(), "{}", n.name);
            assert!(disks.is_none_or(|d| d < domain));

            // Destroy undoes each of them, the domain first.
            let stop = at(&destroy, &Step::StopDomain(name()));
            let undefine = at(&destroy, &Step::UndefineDomain(name()));
            assert!(stop < undefine);
            assert!(undefine < at(&destroy, &Step::RemoveNodeFiles(name())));
            assert!(undefine < at(&destroy, &Step::RemoveOverlay(name())));
            assert!(undefine < at(&destroy, &Step::RemoveNetwork));
        }
        assert_eq!(destroy.last(), Some(&Step::RemoveDir));
        // Each plan names every step at most once.
        for plan in [&define, &destroy, &destroy_plan(&spec, false)] {
            let unique: std::collections::BTreeSet<String> = show(plan).into_iter().collect();
            assert_eq!(unique.len(), plan.len(), "{:?}", show(plan));
        }
        // Keeping overlays keeps exactly the overlays and the directory.
        let keep = destroy_plan(&spec, false);
        let dropped: Vec<&Step> = destroy.iter().filter(|s| !keep.contains(s)).collect();
        assert!(
            dropped
                .iter()
                .all(|s| matches!(s, Step::RemoveOverlay(_) | Step::RemoveDir)),
            "{dropped:?}"
        );
        assert_eq!(dropped.len(), spec.nodes.len() + 1);
        assert!(keep.iter().all(|s| destroy.contains(s)));
    }
}

#[test]
fn a_snapshot_cut_pauses_running_nodes_around_the_snapshots_and_always_resumes_them() {
    let v = |xs: &[&str]| xs.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let (running, all) = (v(&["a", "b"]), v(&["a", "b", "c"]));
    let names = |phases: Vec<Vec<Step>>| -> Vec<Vec<String>> {
        phases
            .iter()
            .map(|p| {
                p.iter()
                    .map(|s| format!("{}:{}", s.name(), s.node().unwrap()))
                    .collect()
            })
            .collect()
    };
    let memory = names(snapshot_create_plan(&running, &all, true));
    assert_eq!(
        memory,
        [
            v(&["suspend_domain:a", "suspend_domain:b"]),
            v(&[
                "create_snapshot:a",
                "create_snapshot:b",
                "create_snapshot:c"
            ]),
            v(&["resume_domain:a", "resume_domain:b"]),
        ]
    );
    // Disk-only: the running guests flush their file systems first.
    let disk = names(snapshot_create_plan(&running, &all, false));
    assert_eq!(disk[0], v(&["sync_disks:a", "sync_disks:b"]));
    assert_eq!(disk[1..], memory[..]);
    // Nothing runs: nothing to pause, sync or resume.
    assert_eq!(
        names(snapshot_create_plan(&[], &all, false)),
        [v(&[
            "create_snapshot:a",
            "create_snapshot:b",
            "create_snapshot:c"
        ])]
    );
}
