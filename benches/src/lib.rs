//! Shared pieces of vmcluster's benchmarks: percentiles and the JSON report.
//!
//! Speed and memory targets live here, never in timed tests: `benches/benches/micro.rs`
//! (criterion) and `benches/src/bin/e2e_bench.rs` (real guests, JSON results, each figure next
//! to the by-hand floor measured in the same run).

use std::time::Duration;

/// p50, p99 and max of a sample, in microseconds.
pub fn percentiles_us(samples: &mut [Duration]) -> (f64, f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1e6
    };
    (at(0.50), at(0.99), at(1.0))
}

/// One operation's worth of records (10), shaped like a real `cluster_define` of one node.
pub fn op_records(i: u64) -> Vec<vmcluster_journal::BodyV1> {
    let op_id = uuid::Uuid::from_u128(0x0197_0000_0000_7000_8000_0000_0000_0000 + i as u128);
    let cluster = format!("cluster-{:03}", i % 100);
    let node = Some(format!("n{}", i % 3 + 1));
    let step = |name: &str| vmcluster_journal::BodyV1::StepStarted {
        op_id,
        step: name.into(),
        node: node.clone(),
    };
    let done = |name: &str| vmcluster_journal::BodyV1::StepFinished {
        op_id,
        step: name.into(),
        node: node.clone(),
        ok: true,
        detail: None,
    };
    let object = |kind: vmcluster_journal::ObjectKind, id: String| {
        vmcluster_journal::BodyV1::ObjectCreated {
            op_id,
            cluster: cluster.clone(),
            kind,
            id,
        }
    };
    vec![
        vmcluster_journal::BodyV1::CommandStarted {
            op_id,
            tool: "cluster_define".into(),
            cluster: Some(cluster.clone()),
            params_json: format!(r#"{{"topology_name":"{cluster}"}}"#),
        },
        step("ensure_overlay"),
        object(
            vmcluster_journal::ObjectKind::File,
            format!("/var/lib/vmcluster/overlays/{cluster}/n1.qcow2"),
        ),
        done("ensure_overlay"),
        step("define_domain"),
        object(
            vmcluster_journal::ObjectKind::Domain,
            format!("{cluster}_n1"),
        ),
        done("define_domain"),
        vmcluster_journal::BodyV1::NodeEvent {
            cluster: cluster.clone(),
            node: "n1".into(),
            kind: "shut off".into(),
            detail: None,
        },
        vmcluster_journal::BodyV1::HostKeyPinned {
            cluster: cluster.clone(),
            node: "n1".into(),
            key_openssh:
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq8R0fZ4b2H8xkU1gQ2b4d3cV9a0n6m7Yt1Lw5sXeQp"
                    .into(),
        },
        vmcluster_journal::BodyV1::CommandFinished {
            op_id,
            outcome: vmcluster_journal::Outcome::Applied,
            error_code: None,
            error_message: None,
            result_json: Some(format!(
                r#"{{"cluster_name":"{cluster}","network":"{cluster}-net","network_active":true,"nodes":[{{"name":"n1","role":"control","ip":"192.168.10.11","domain":"{cluster}_n1","domain_state":"shut off","phase":"down","ssh_reachable":false,"domain_type":"qemu","last_error":null}}]}}"#
            )),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_ranks() {
        let mut s: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let (p50, p99, max) = percentiles_us(&mut s);
        assert_eq!((p50.round(), p99.round(), max.round()), (51.0, 99.0, 100.0));
    }
}
