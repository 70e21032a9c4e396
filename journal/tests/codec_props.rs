//! Property tests of the frame codec: decode never panics, and
//! encode -> decode round-trips arbitrary records.

use proptest::prelude::*;
use uuid::Uuid;
use vmcluster_journal::codec::{self, DecodeError, FRAME_MAGIC, HEADER_LEN};
use vmcluster_journal::{BodyV1, JournalRecord, ObjectKind, Outcome, RecordV1};

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

fn s() -> impl Strategy<Value = String> {
    ".{0,40}"
}

fn os() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(s())
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Applied),
        Just(Outcome::NotApplied),
        Just(Outcome::Indeterminate)
    ]
}

fn kind() -> impl Strategy<Value = ObjectKind> {
    prop_oneof![
        Just(ObjectKind::Domain),
        Just(ObjectKind::Network),
        Just(ObjectKind::File),
        Just(ObjectKind::Snapshot),
        Just(ObjectKind::Rule)
    ]
}

fn body() -> impl Strategy<Value = BodyV1> {
    prop_oneof![
        (uuid(), s(), os(), s()).prop_map(|(op_id, tool, cluster, params_json)| {
            BodyV1::CommandStarted {
                op_id,
                tool,
                cluster,
                params_json,
            }
        }),
        (uuid(), outcome(), os(), os(), os()).prop_map(
            |(op_id, outcome, error_code, error_message, result_json)| BodyV1::CommandFinished {
                op_id,
                outcome,
                error_code,
                error_message,
                result_json
            }
        ),
        (uuid(), s(), os()).prop_map(|(op_id, step, node)| BodyV1::StepStarted {
            op_id,
            step,
            node
        }),
        (uuid(), s(), os(), any::<bool>(), os()).prop_map(|(op_id, step, node, ok, detail)| {
            BodyV1::StepFinished {
                op_id,
                step,
                node,
                ok,
                detail,
            }
        }),
        (uuid(), s(), s()).prop_map(|(op_id, cluster, spec_json)| BodyV1::ClusterDefined {
            op_id,
            cluster,
            spec_json
        }),
        (uuid(), s()).prop_map(|(op_id, cluster)| BodyV1::ClusterRemoved { op_id, cluster }),
        (uuid(), s(), kind(), s()).prop_map(|(op_id, cluster, kind, id)| BodyV1::ObjectCreated {
            op_id,
            cluster,
            kind,
            id
        }),
        (uuid(), s(), kind(), s()).prop_map(|(op_id, cluster, kind, id)| BodyV1::ObjectRemoved {
            op_id,
            cluster,
            kind,
            id
        }),
        (s(), s(), s(), os()).prop_map(|(cluster, node, kind, detail)| BodyV1::NodeEvent {
            cluster,
            node,
            kind,
            detail
        }),
        (s(), s(), s()).prop_map(|(cluster, node, key_openssh)| BodyV1::HostKeyPinned {
            cluster,
            node,
            key_openssh
        }),
        (uuid(), s()).prop_map(|(op_id, reason)| BodyV1::RollbackStarted { op_id, reason }),
        proptest::collection::vec(any::<u8>(), 0..64)
            .prop_map(|projection| BodyV1::Checkpoint { projection }),
    ]
}

fn record() -> impl Strategy<Value = JournalRecord> {
    (any::<u64>(), any::<i64>(), body())
        .prop_map(|(seq, ts_ms, body)| JournalRecord::V1(RecordV1 { seq, ts_ms, body }))
}

/// A frame with a valid header around `payload`, so decoding reaches bincode.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![FRAME_MAGIC];
    f.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = codec::decode(&bytes);
    }

    #[test]
    fn decode_arbitrary_payload_with_valid_checksum_never_panics(
        payload in proptest::collection::vec(any::<u8>(), 0..256)
    ) {
        let _ = codec::decode(&framed(&payload));
    }

    #[test]
    fn check_accepts_what_decode_accepts_and_reads_the_same_seq(rec in record()) {
        let bytes = codec::encode(&rec).unwrap();
        prop_assert_eq!(codec::check(&bytes).unwrap(), rec.seq());
    }

    #[test]
    fn check_refuses_whatever_fails_before_the_body(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        // check never panics, and a frame it refuses never decodes.
        if codec::check(&bytes).is_err() {
            prop_assert!(codec::decode(&bytes).is_err());
        }
        if let Ok(rec) = codec::decode(&bytes) {
            prop_assert_eq!(codec::check(&bytes).unwrap(), rec.seq());
        }
    }

    #[test]
    fn check_on_valid_checksum_payloads_never_panics(
        payload in proptest::collection::vec(any::<u8>(), 0..256)
    ) {
        let framed = framed(&payload);
        if codec::check(&framed).is_err() {
            prop_assert!(codec::decode(&framed).is_err());
        }
    }

    #[test]
    fn encode_decode_round_trips(rec in record()) {
        let bytes = codec::encode(&rec).unwrap();
        prop_assert_eq!(codec::decode(&bytes).unwrap(), rec);
    }

    #[test]
    fn any_single_bit_flip_is_detected(rec in record(), bit in any::<prop::sample::Index>()) {
        let mut bytes = codec::encode(&rec).unwrap();
        let i = bit.index(bytes.len() * 8);
        bytes[i / 8] ^= 1 << (i % 8);
        prop_assert!(codec::decode(&bytes).is_err());
    }

    #[test]
    fn mutated_valid_payload_never_panics(
        rec in record(),
        cut in any::<prop::sample::Index>(),
        junk in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        // Truncate a real payload and append junk, with a recomputed checksum.
        let bytes = codec::encode(&rec).unwrap();
        let payload = &bytes[HEADER_LEN..];
        let mut p = payload[..cut.index(payload.len() + 1)].to_vec();
        p.extend_from_slice(&junk);
        let _ = codec::decode(&framed(&p));
    }
}

#[test]
fn short_inputs_are_typed_errors() {
    assert_eq!(codec::decode(&[]), Err(DecodeError::Truncated { len: 0 }));
    assert_eq!(
        codec::decode(&[FRAME_MAGIC, 0, 0, 0, 0]),
        Err(DecodeError::Truncated { len: 5 })
    );
    assert_eq!(
        codec::decode(&[0, 0, 0, 0, 0, 0]),
        Err(DecodeError::BadMagic { found: 0 })
    );
    assert!(matches!(
        codec::decode(&[FRAME_MAGIC, 0, 0, 0, 0, 0]),
        Err(DecodeError::Checksum { .. })
    ));
}

#[test]
fn huge_length_prefix_is_rejected_without_allocating() {
    // Tag V1, seq, ts, variant CommandStarted, uuid bytes len, then a string
    // whose varint length claims an absurd number of bytes.
    let mut p = vec![0u8, 1, 2, 0, 16];
    p.extend_from_slice(&[0u8; 16]);
    p.push(253);
    for claimed in [u64::MAX, 1 << 40] {
        let mut p = p.clone();
        p.extend_from_slice(&claimed.to_le_bytes());
        match codec::decode(&framed(&p)) {
            Err(DecodeError::Malformed(m)) => assert!(m.to_lowercase().contains("limit"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    let rec = JournalRecord::V1(RecordV1 {
        seq: 1,
        ts_ms: 2,
        body: BodyV1::ClusterRemoved {
            op_id: Uuid::nil(),
            cluster: "c".into(),
        },
    });
    let bytes = codec::encode(&rec).unwrap();
    let mut p = bytes[HEADER_LEN..].to_vec();
    p.push(0);
    assert_eq!(
        codec::decode(&framed(&p)),
        Err(DecodeError::TrailingBytes { extra: 1 })
    );
}
