//! Integration tests of `Journal` on real sled (in a tempdir) and on `MemStore`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use uuid::Uuid;
use vmcluster_journal::store::ScanItem;
use vmcluster_journal::{
    BodyV1, Journal, JournalError, JournalRecord, MemStore, ObjectKind, Outcome, SledStore, Store,
    StoreError, codec,
};

fn step(i: u64) -> BodyV1 {
    BodyV1::StepStarted {
        op_id: Uuid::from_u128(i as u128),
        step: format!("step-{i}"),
        node: Some(format!("node-{}", i % 3)),
    }
}

async fn fill(j: &Journal, n: u64) {
    for i in 0..n {
        j.append(step(i)).await.unwrap();
    }
}

#[tokio::test]
async fn round_trip_and_seq_continues_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, rec) = Journal::open(dir.path()).unwrap();
        assert_eq!(rec.records, 0);
        assert_eq!(rec.last_seq, None);
        assert!(!rec.discarded_tail);
        assert_eq!(j.last_seq(), None);

        let body = BodyV1::CommandStarted {
            op_id: Uuid::now_v7(),
            tool: "cluster_up".into(),
            cluster: Some("lab".into()),
            params_json: r#"{"nodes":3}"#.into(),
        };
        let r1 = j.append(body.clone()).await.unwrap();
        assert_eq!(r1.seq, 1);
        assert_eq!(r1.body, body);
        let before = chrono::Utc::now().timestamp_millis();
        assert!((before - r1.ts_ms).abs() < 60_000);
        let r2 = j
            .append(BodyV1::CommandFinished {
                op_id: body.op_id().unwrap(),
                outcome: Outcome::Applied,
                error_code: None,
                error_message: None,
                result_json: Some("{}".into()),
            })
            .await
            .unwrap();
        assert_eq!(r2.seq, 2);
        assert_eq!(j.last_seq(), Some(2));
        let all = j.read_since(0, 100).unwrap();
        assert_eq!(all, vec![r1.clone(), r2.clone()]);
        assert_eq!(j.read_since(1, 100).unwrap(), vec![r2.clone()]);
        assert_eq!(j.read_since(2, 100).unwrap(), vec![]);
        assert_eq!(j.read_since(u64::MAX, 100).unwrap(), vec![]);
        assert_eq!(j.read_since(0, 1).unwrap(), vec![r1.clone()]);
        assert_eq!(j.read_since(0, 0).unwrap(), vec![]);
        let replay: Vec<_> = j.iter_all().collect::<Result<_, _>>().unwrap();
        assert_eq!(replay, vec![r1, r2]);
    }
    // Reopen: records kept, seq continues.
    let (j, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.records, 2);
    assert_eq!(rec.last_seq, Some(2));
    assert!(!rec.discarded_tail);
    assert_eq!(j.last_seq(), Some(2));
    let r3 = j.append(step(3)).await.unwrap();
    assert_eq!(r3.seq, 3);
    assert_eq!(j.read_since(0, 10).unwrap().len(), 3);
}

#[tokio::test]
async fn append_batch_assigns_consecutive_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path()).unwrap();
    j.append(step(0)).await.unwrap();
    let recs = j.append_batch((1..=5).map(step).collect()).await.unwrap();
    assert_eq!(
        recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![2, 3, 4, 5, 6]
    );
    assert!(j.append_batch(vec![]).await.unwrap().is_empty());
    assert_eq!(j.last_seq(), Some(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_from_16_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path()).unwrap();
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let j = j.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..50u64 {
                seqs.push(j.append(step(t * 1000 + i)).await.unwrap().seq);
            }
            seqs
        }));
    }
    let all = tokio::time::timeout(Duration::from_secs(120), async {
        let mut all = Vec::new();
        for t in tasks {
            let seqs = t.await.unwrap();
            // Each task sees its own appends in increasing order.
            assert!(seqs.windows(2).all(|w| w[0] < w[1]));
            all.extend(seqs);
        }
        all
    })
    .await
    .expect("concurrent appends deadlocked");
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), 800);
    assert_eq!(unique, (1..=800).collect::<HashSet<_>>());
    drop(j);

    let (j, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.records, 800);
    assert_eq!(rec.last_seq, Some(800));
    assert_eq!(j.read_since(0, usize::MAX).unwrap().len(), 800);
}

#[tokio::test]
async fn garbage_tail_is_discarded_and_seq_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, _) = Journal::open(dir.path()).unwrap();
        fill(&j, 5).await;
    }
    {
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.last_seq().unwrap(), Some(5));
        store
            .put_batch(&[(5, b"\x4a\x00garbage".to_vec())])
            .unwrap();
        store.flush().unwrap();
    }
    let (j, rec) = Journal::open(dir.path()).unwrap();
    assert!(rec.discarded_tail);
    assert_eq!(rec.records, 4);
    assert_eq!(rec.last_seq, Some(4));
    let recs = j.read_since(0, 100).unwrap();
    assert_eq!(
        recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.body, step(i as u64));
    }
    // The discarded seq is not reused.
    assert_eq!(j.append(step(9)).await.unwrap().seq, 6);
    drop(j);
    let (_, rec) = Journal::open(dir.path()).unwrap();
    assert!(!rec.discarded_tail);
    assert_eq!(rec.records, 5);
}

#[tokio::test]
async fn truncated_and_bitflipped_tail_are_discarded() {
    for mode in ["truncate", "bitflip", "empty"] {
        let store = MemStore::new();
        {
            let (j, _) = Journal::open_store(store.clone()).unwrap();
            fill(&j, 3).await;
        }
        let (_, last) = store.scan_from(3).next().unwrap().unwrap();
        let bad = match mode {
            "truncate" => last[..last.len() / 2].to_vec(),
            "bitflip" => {
                let mut b = last.clone();
                let n = b.len();
                b[n - 1] ^= 0x10;
                b
            }
            _ => Vec::new(),
        };
        store.put_raw(3, bad);
        let (j, rec) = Journal::open_store(store.clone()).unwrap();
        assert!(rec.discarded_tail, "{mode}");
        assert_eq!(rec.records, 2, "{mode}");
        assert_eq!(j.last_seq(), Some(2), "{mode}");
    }
}

#[tokio::test]
async fn corruption_in_the_middle_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, _) = Journal::open(dir.path()).unwrap();
        fill(&j, 10).await;
    }
    {
        let store = SledStore::open(dir.path()).unwrap();
        let (seq, mut bytes) = store.scan_from(4).next().unwrap().unwrap();
        assert_eq!(seq, 4);
        let mid = bytes.len() / 2 + 3;
        bytes[mid] ^= 0x01; // one bit in the payload
        store.put_batch(&[(4, bytes)]).unwrap();
        store.flush().unwrap();
    }
    let err = Journal::open(dir.path()).unwrap_err();
    match &err {
        JournalError::Corrupt { seq, reason } => {
            assert_eq!(*seq, 4);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(err.to_string().contains("seq 4"), "{err}");
    // Refusing did not modify anything: still refuses.
    assert!(matches!(
        Journal::open(dir.path()),
        Err(JournalError::Corrupt { seq: 4, .. })
    ));
}

/// A frame with a valid checksum and header (version, seq) whose body does not decode: what
/// only a writer bug could store.
fn malformed_body(seq: u64) -> Vec<u8> {
    let mut payload = vec![0u8]; // version tag V1
    payload.push(seq as u8); // varint seq (< 251)
    payload.extend_from_slice(&[0xff; 7]); // no valid ts + body
    let mut f = vec![codec::FRAME_MAGIC];
    f.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    f.extend_from_slice(&payload);
    assert_eq!(codec::check(&f).unwrap(), seq);
    assert!(codec::decode(&f).is_err());
    f
}

#[tokio::test]
async fn a_tail_that_does_not_decode_is_discarded_though_its_checksum_is_right() {
    let store = MemStore::new();
    {
        let (j, _) = Journal::open_store(store.clone()).unwrap();
        fill(&j, 4).await;
    }
    store.put_raw(5, malformed_body(5));
    let (j, rec) = Journal::open_store(store.clone()).unwrap();
    assert!(rec.discarded_tail);
    assert_eq!((rec.records, rec.last_seq), (4, Some(4)));
    assert_eq!(j.iter_all().count(), 4);
    assert_eq!(
        j.append(step(9)).await.unwrap().seq,
        6,
        "seq 5 is never reused"
    );
}

#[tokio::test]
async fn a_body_that_does_not_decode_in_the_middle_refuses_to_open() {
    let store = MemStore::new();
    {
        let (j, _) = Journal::open_store(store.clone()).unwrap();
        fill(&j, 3000).await;
    }
    // Its checksum is right, but opening decodes every body (the replay), so it is caught.
    let bad = {
        // A frame that claims seq 1500 needs a two-byte varint; build it by hand.
        let mut payload = vec![0u8, 251, 0xdc, 0x05]; // tag 0, varint u16 marker + 1500 LE
        payload.extend_from_slice(&[0xff; 7]);
        let mut f = vec![codec::FRAME_MAGIC];
        f.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        f.extend_from_slice(&payload);
        assert_eq!(codec::check(&f).unwrap(), 1500);
        f
    };
    store.put_raw(1500, bad);
    assert!(matches!(
        Journal::open_store(store),
        Err(JournalError::Corrupt { seq: 1500, .. })
    ));
}

#[tokio::test]
async fn the_projection_never_holds_a_discarded_tail() {
    let store = MemStore::new();
    {
        let (j, _) = Journal::open_store(store.clone()).unwrap();
        fill(&j, 5).await;
    }
    store.put_raw(6, malformed_body(6));
    let (j, rec) = Journal::open_store(store.clone()).unwrap();
    assert!(rec.discarded_tail);
    let seqs: Vec<u64> = j.iter_all().map(|r| r.unwrap().seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    drop(j);
    store.put_raw(3, b"junk".to_vec());
    assert!(matches!(
        Journal::open_store(store),
        Err(JournalError::Corrupt { seq: 3, .. })
    ));
}

#[tokio::test]
async fn two_bad_tail_records_refuse_to_open() {
    let store = MemStore::new();
    {
        let (j, _) = Journal::open_store(store.clone()).unwrap();
        fill(&j, 4).await;
    }
    store.put_raw(3, b"junk".to_vec());
    store.put_raw(4, b"junk".to_vec());
    assert!(matches!(
        Journal::open_store(store),
        Err(JournalError::Corrupt { seq: 3, .. })
    ));
}

#[tokio::test]
async fn record_under_wrong_key_is_corrupt() {
    let store = MemStore::new();
    {
        let (j, _) = Journal::open_store(store.clone()).unwrap();
        fill(&j, 3).await;
    }
    let (_, two) = store.scan_from(2).next().unwrap().unwrap();
    store.put_raw(1, two); // valid frame claiming seq 2, stored at key 1
    match Journal::open_store(store) {
        Err(JournalError::Corrupt { seq: 1, reason }) => {
            assert!(reason.contains("seq 2"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unknown_version_at_tail_is_not_discarded() {
    let store = MemStore::new();
    {
        let (j, _) = Journal::open_store(store.clone()).unwrap();
        fill(&j, 2).await;
    }
    // A well-formed frame whose version tag is 1 (a future V2).
    let frame = codec::encode(&JournalRecord::V1(vmcluster_journal::RecordV1 {
        seq: 3,
        ts_ms: 0,
        body: step(3),
    }))
    .unwrap();
    let mut payload = frame[codec::HEADER_LEN..].to_vec();
    assert_eq!(payload[0], 0, "V1 tag is 0");
    payload[0] = 1;
    let mut v2 = vec![codec::FRAME_MAGIC];
    v2.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    v2.extend_from_slice(&payload);
    assert_eq!(
        codec::decode(&v2),
        Err(codec::DecodeError::UnknownVersion { tag: 1 })
    );
    store.put_raw(3, v2);
    assert_eq!(
        Journal::open_store(store.clone()).unwrap_err(),
        JournalError::UnsupportedVersion { seq: 3, tag: 1 }
    );
    // And it is still there.
    assert_eq!(store.last_seq().unwrap(), Some(3));
}

#[tokio::test]
async fn second_open_reports_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path()).unwrap();
    let err = Journal::open(dir.path()).unwrap_err();
    assert_eq!(
        err,
        JournalError::InUse {
            path: dir.path().to_path_buf()
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("is in use by another vmcluster process"),
        "{msg}"
    );
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    // After the last handle is dropped the lock is released.
    let j2 = j.clone();
    drop(j);
    assert!(Journal::open(dir.path()).is_err(), "a clone still holds it");
    drop(j2);
    Journal::open(dir.path()).unwrap();
}

#[tokio::test]
async fn subscribe_sees_appends_in_order_then_closes() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path()).unwrap();
    j.append(step(100)).await.unwrap(); // before subscribing: not seen
    let mut rx = j.subscribe();
    let mut expected = Vec::new();
    for i in 0..10 {
        expected.push(j.append(step(i)).await.unwrap());
    }
    expected.extend(j.append_batch((10..15).map(step).collect()).await.unwrap());
    for want in &expected {
        let got = rx.recv().await.unwrap();
        assert_eq!(&got, want);
        // Anything broadcast is already readable (durable).
        assert!(j.last_seq().unwrap() >= got.seq);
    }
    assert!(rx.try_recv().is_err());
    drop(j);
    assert!(matches!(
        rx.recv().await,
        Err(tokio::sync::broadcast::error::RecvError::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_flushes_less_than_once_per_append() {
    let store = MemStore::new();
    let (j, _) = Journal::open_store(store.clone()).unwrap();
    let flushes_at_start = store.flush_count();
    let mut tasks = Vec::new();
    for t in 0..32u64 {
        let j = j.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                j.append(step(t * 100 + i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let flushes = store.flush_count() - flushes_at_start;
    assert!(flushes <= 640, "{flushes}");
    eprintln!("640 appends from 32 tasks took {flushes} flushes");
    assert_eq!(j.last_seq(), Some(640));
    // Everything acknowledged is in the durable image.
    let crashed = store.crash_image();
    drop(j);
    let (_, rec) = Journal::open_store(crashed).unwrap();
    assert_eq!(rec.records, 640);
}

/// A store whose `flush` blocks while the gate is closed, and says when one is blocked.
#[derive(Clone)]
struct GatedStore {
    inner: MemStore,
    /// (gate open, flushes blocked at the gate)
    gate: Arc<(std::sync::Mutex<(bool, usize)>, std::sync::Condvar)>,
}

impl GatedStore {
    fn set_open(&self, open: bool) {
        self.gate.0.lock().unwrap().0 = open;
        self.gate.1.notify_all();
    }

    /// Blocks until a flush waits at the closed gate.
    fn await_blocked_flush(&self) {
        let mut g = self.gate.0.lock().unwrap();
        while g.1 == 0 {
            g = self.gate.1.wait(g).unwrap();
        }
    }
}

impl Store for GatedStore {
    fn put_batch(&self, items: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        self.inner.put_batch(items)
    }
    fn flush(&self) -> Result<(), StoreError> {
        let mut g = self.gate.0.lock().unwrap();
        g.1 += 1;
        self.gate.1.notify_all();
        while !g.0 {
            g = self.gate.1.wait(g).unwrap();
        }
        g.1 -= 1;
        drop(g);
        self.inner.flush()
    }
    fn scan_from(&self, seq: u64) -> Box<dyn Iterator<Item = ScanItem> + '_> {
        self.inner.scan_from(seq)
    }
    fn last_seq(&self) -> Result<Option<u64>, StoreError> {
        self.inner.last_seq()
    }
    fn remove(&self, seq: u64) -> Result<(), StoreError> {
        self.inner.remove(seq)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_queued_during_a_flush_share_the_next_flush() {
    let store = GatedStore {
        inner: MemStore::new(),
        gate: Arc::new((std::sync::Mutex::new((true, 0)), std::sync::Condvar::new())),
    };
    let (j, _) = Journal::open_store(store.clone()).unwrap();
    store.set_open(false);
    let first = {
        let j = j.clone();
        tokio::spawn(async move { j.append(step(0)).await.unwrap() })
    };
    // Once the writer is stuck in the first flush, queue ten more: polling an append once
    // hands its request to the writer.
    tokio::task::spawn_blocking({
        let store = store.clone();
        move || store.await_blocked_flush()
    })
    .await
    .unwrap();
    let mut rest: Vec<_> = (1..=10).map(|i| Box::pin(j.append(step(i)))).collect();
    std::future::poll_fn(|cx| {
        for f in rest.iter_mut() {
            assert!(
                f.as_mut().poll(cx).is_pending(),
                "acknowledged before its flush"
            );
        }
        std::task::Poll::Ready(())
    })
    .await;
    assert_eq!(
        j.last_seq(),
        None,
        "nothing is acknowledged before its flush"
    );
    let before = store.inner.flush_count();
    store.set_open(true);
    assert_eq!(first.await.unwrap().seq, 1);
    for f in rest {
        f.await.unwrap();
    }
    let flushes = store.inner.flush_count() - before;
    // One for the first append, then one for all ten.
    assert_eq!(flushes, 2, "no group commit: {flushes} flushes");
    assert_eq!(j.last_seq(), Some(11));
}

#[tokio::test]
async fn acknowledged_records_survive_simulated_crash() {
    let store = MemStore::new();
    let (j, _) = Journal::open_store(store.clone()).unwrap();
    let r = j.append(step(1)).await.unwrap();
    let image = store.crash_image(); // "power loss" right after the ack
    let (j2, rec) = Journal::open_store(image).unwrap();
    assert_eq!(rec.last_seq, Some(r.seq));
    assert_eq!(j2.read_since(0, 10).unwrap()[0], r);
    drop(j);
}

/// A store whose flush starts failing after `ok_flushes` successes.
#[derive(Clone)]
struct FailingStore {
    inner: MemStore,
    flushes_left: Arc<AtomicU64>,
}

impl Store for FailingStore {
    fn put_batch(&self, items: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        self.inner.put_batch(items)
    }
    fn flush(&self) -> Result<(), StoreError> {
        let left = self.flushes_left.load(Ordering::SeqCst);
        if left == 0 {
            return Err(StoreError::Io("disk on fire".into()));
        }
        self.flushes_left.store(left - 1, Ordering::SeqCst);
        self.inner.flush()
    }
    fn scan_from(&self, seq: u64) -> Box<dyn Iterator<Item = ScanItem> + '_> {
        self.inner.scan_from(seq)
    }
    fn last_seq(&self) -> Result<Option<u64>, StoreError> {
        self.inner.last_seq()
    }
    fn remove(&self, seq: u64) -> Result<(), StoreError> {
        self.inner.remove(seq)
    }
}

#[tokio::test]
async fn failed_flush_poisons_the_journal() {
    let store = FailingStore {
        inner: MemStore::new(),
        flushes_left: Arc::new(AtomicU64::new(1)),
    };
    let (j, _) = Journal::open_store(store).unwrap();
    j.append(step(1)).await.unwrap();
    let err = j.append(step(2)).await.unwrap_err();
    assert!(
        matches!(err, JournalError::Store(StoreError::Io(_))),
        "{err:?}"
    );
    let err = j
        .append(BodyV1::ObjectCreated {
            op_id: Uuid::nil(),
            cluster: "c".into(),
            kind: ObjectKind::Domain,
            id: "d".into(),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, JournalError::Poisoned { .. }), "{err:?}");
    // Readers only see the durable record.
    assert_eq!(j.last_seq(), Some(1));
    assert_eq!(j.read_since(0, 10).unwrap().len(), 1);
}

/// Retention: past `compact_every` records the writer checkpoints the projection and deletes
/// what precedes it; a reopened journal holds only the checkpoint and what followed, and its
/// projection is the same as before (clusters, ledger, recent ops, open ops).
#[tokio::test]
async fn compaction_keeps_the_projection_and_bounds_the_records() {
    use vmcluster_journal::{JournalOptions, ObjectKind, Outcome};
    let dir = tempfile::tempdir().unwrap();
    let opts = JournalOptions {
        retain_ops: 50,
        compact_every: 100,
    };
    let open_op = uuid::Uuid::now_v7();
    let before = {
        let (j, _) = Journal::open_with(dir.path(), opts).unwrap();
        j.append(BodyV1::CommandStarted {
            op_id: open_op,
            tool: "cluster_start".into(),
            cluster: Some("lab".into()),
            params_json: "{}".into(),
        })
        .await
        .unwrap();
        for i in 0..200u32 {
            let op = uuid::Uuid::now_v7();
            j.append_batch(vec![
                BodyV1::CommandStarted {
                    op_id: op,
                    tool: "cluster_define".into(),
                    cluster: Some(format!("c{i}")),
                    params_json: "{}".into(),
                },
                BodyV1::ClusterDefined {
                    op_id: op,
                    cluster: format!("c{i}"),
                    spec_json: "{}".into(),
                },
                BodyV1::ObjectCreated {
                    op_id: op,
                    cluster: format!("c{i}"),
                    kind: ObjectKind::Domain,
                    id: format!("c{i}_n1"),
                },
                BodyV1::CommandFinished {
                    op_id: op,
                    outcome: Outcome::Applied,
                    error_code: None,
                    error_message: None,
                    result_json: None,
                },
            ])
            .await
            .unwrap();
        }
        let p = j.view(|p| p.clone());
        assert_eq!(p.clusters.len(), 200);
        assert_eq!(p.ops.len(), 51, "50 finished ops kept, plus the open one");
        assert!(p.open_ops.contains(&open_op));
        let on_disk = j.iter_all().count();
        assert!(
            on_disk <= 100 + 4 + 1,
            "compaction bounds the records: {on_disk}"
        );
        p
    };
    let (j, rec) = Journal::open_with(dir.path(), opts).unwrap();
    assert!(rec.checkpoint_seq.is_some());
    assert!(rec.records <= 105, "{rec:?}");
    let after = j.view(|p| p.clone());
    assert_eq!(after.clusters, before.clusters);
    assert_eq!(after.objects, before.objects);
    assert_eq!(after.ops, before.ops);
    assert_eq!(after.open_ops, before.open_ops);
    assert!(after.last_seq >= before.last_seq);
    // Sequence numbers go on after the checkpoint.
    let last = j.last_seq().unwrap();
    assert!(last >= before.last_seq);
    let r = j
        .append(BodyV1::NodeEvent {
            cluster: "lab".into(),
            node: "n1".into(),
            kind: "started".into(),
            detail: None,
        })
        .await
        .unwrap();
    assert_eq!(r.seq, last + 1);
}
