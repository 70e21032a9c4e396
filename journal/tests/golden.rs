//! Golden fixtures: one encoded frame per `BodyV1` variant in `tests/data/`.
//!
//! Normal runs decode the committed files and compare them field by field
//! with the values below, and check that encoding still yields the same
//! bytes, so released record versions keep decoding. Regenerate (only for a
//! *new* variant or version; never rewrite a released file) with
//! `UPDATE_EXPECT=1 cargo test -p vmcluster-journal --test golden`.

use std::path::PathBuf;
use uuid::Uuid;
use vmcluster_journal::{BodyV1, JournalRecord, ObjectKind, Outcome, RecordV1, codec};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

const OP: Uuid = Uuid::from_u128(0x0190_2d6e_4b5a_7c3d_8e9f_0a1b_2c3d_4e5f);
const TS: i64 = 1_700_000_000_123;

/// Every `BodyV1` variant with fixed values. The match in `fixture_name`
/// is exhaustive: a new variant fails to compile until it gets a fixture.
fn fixtures() -> Vec<RecordV1> {
    let bodies = vec![
        BodyV1::CommandStarted {
            op_id: OP,
            tool: "cluster_up".into(),
            cluster: Some("lab".into()),
            params_json: r#"{"name":"lab","nodes":3}"#.into(),
        },
        BodyV1::CommandFinished {
            op_id: OP,
            outcome: Outcome::Indeterminate,
            error_code: Some("timeout".into()),
            error_message: Some("libvirt did not answer in 30 s".into()),
            result_json: None,
        },
        BodyV1::StepStarted {
            op_id: OP,
            step: "define_domain".into(),
            node: Some("lab-1".into()),
        },
        BodyV1::StepFinished {
            op_id: OP,
            step: "define_domain".into(),
            node: None,
            ok: true,
            detail: Some("uuid=1234".into()),
        },
        BodyV1::ClusterDefined {
            op_id: OP,
            cluster: "lab".into(),
            spec_json: r#"{"nodes":[{"name":"lab-1"}]}"#.into(),
        },
        BodyV1::ClusterRemoved {
            op_id: OP,
            cluster: "lab".into(),
        },
        BodyV1::ObjectCreated {
            op_id: OP,
            cluster: "lab".into(),
            kind: ObjectKind::Network,
            id: "vmc-lab-net".into(),
        },
        BodyV1::ObjectRemoved {
            op_id: OP,
            cluster: "lab".into(),
            kind: ObjectKind::Rule,
            id: "nat-2222".into(),
        },
        BodyV1::NodeEvent {
            cluster: "lab".into(),
            node: "lab-2".into(),
            kind: "crashed".into(),
            detail: None,
        },
        BodyV1::HostKeyPinned {
            cluster: "lab".into(),
            node: "lab-1".into(),
            key_openssh: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0g vmcluster".into(),
        },
        BodyV1::RollbackStarted {
            op_id: OP,
            reason: "step define_domain on lab-2 failed: libvirt refused".into(),
        },
        BodyV1::Checkpoint {
            projection: vec![0, 1, 2, 3, 250, 255],
        },
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| RecordV1 {
            seq: i as u64 + 1,
            ts_ms: TS + i as i64,
            body,
        })
        .collect()
}

fn fixture_name(body: &BodyV1) -> &'static str {
    match body {
        BodyV1::CommandStarted { .. }
        | BodyV1::CommandFinished { .. }
        | BodyV1::StepStarted { .. }
        | BodyV1::StepFinished { .. }
        | BodyV1::ClusterDefined { .. }
        | BodyV1::ClusterRemoved { .. }
        | BodyV1::ObjectCreated { .. }
        | BodyV1::ObjectRemoved { .. }
        | BodyV1::NodeEvent { .. }
        | BodyV1::HostKeyPinned { .. }
        | BodyV1::RollbackStarted { .. }
        | BodyV1::Checkpoint { .. } => body.kind_name(),
    }
}

fn path_of(rec: &RecordV1) -> PathBuf {
    data_dir().join(format!("v1_{}.bin", fixture_name(&rec.body)))
}

#[test]
fn v1_fixtures_decode() {
    let fixtures = fixtures();
    let names: std::collections::HashSet<_> =
        fixtures.iter().map(|r| fixture_name(&r.body)).collect();
    assert_eq!(names.len(), fixtures.len(), "one fixture per variant");

    if std::env::var_os("UPDATE_EXPECT").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(data_dir()).unwrap();
        for rec in &fixtures {
            let bytes = codec::encode(&JournalRecord::V1(rec.clone())).unwrap();
            std::fs::write(path_of(rec), bytes).unwrap();
        }
    }

    for want in fixtures {
        let path = path_of(&want);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; generate with UPDATE_EXPECT=1 (new variants only)",
                path.display()
            )
        });
        let got = codec::decode(&bytes)
            .unwrap_or_else(|e| panic!("{} no longer decodes: {e}", path.display()));
        assert_eq!(got.version(), 0, "{}", path.display());
        assert_eq!(got.seq(), want.seq, "{}: seq", path.display());
        let got = got.into_v1();
        assert_eq!(got.seq, want.seq, "{}: seq", path.display());
        assert_eq!(got.ts_ms, want.ts_ms, "{}: ts_ms", path.display());
        assert_eq!(got.body, want.body, "{}: body", path.display());
        // The wire format is stable: encoding today gives the same bytes.
        let again = codec::encode(&JournalRecord::V1(want)).unwrap();
        assert_eq!(again, bytes, "{}: encoding changed", path.display());
    }
}
