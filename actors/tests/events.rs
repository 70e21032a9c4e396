//! The event feed over a real journal (sled in a temporary directory): pages, tails and
//! followers that fall behind the journal's broadcast and must re-read instead of dropping
//! events.

use vmcluster_actors::events::{EventFeed, FollowItem};
use vmcluster_journal::{BodyV1, EventFilter, EventKind, Journal, SUBSCRIBE_CAPACITY};

fn node_event(cluster: &str, i: u64) -> BodyV1 {
    BodyV1::NodeEvent {
        cluster: cluster.to_owned(),
        node: format!("n{i}"),
        kind: "running".into(),
        detail: None,
    }
}

fn command(op: uuid::Uuid, cluster: &str) -> BodyV1 {
    BodyV1::CommandStarted {
        op_id: op,
        tool: "cluster_start".into(),
        cluster: Some(cluster.into()),
        params_json: "{}".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_lags_behind_the_broadcast_still_sees_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path()).unwrap();
    let feed = EventFeed::new(journal.clone());
    journal.append(node_event("a", 0)).await.unwrap();
    let mut rx = feed.follow(0, EventFilter::all());
    // The backlog, then the marker.
    assert!(matches!(rx.recv().await, Some(Ok(FollowItem::Event(e))) if e.seq == 1));
    assert_eq!(
        rx.recv().await.unwrap().unwrap(),
        FollowItem::CaughtUp { last_seq: 1 }
    );
    // Nobody reads while far more records than the broadcast keeps are appended.
    let chunks = 3 * SUBSCRIBE_CAPACITY as u64 / 500 + 1;
    let total = chunks * 500;
    for chunk in 0..chunks {
        let bodies = (0..500).map(|i| node_event("a", chunk * 500 + i)).collect();
        journal.append_batch(bodies).await.unwrap();
    }
    let last = journal.last_seq().unwrap();
    assert_eq!(last, total + 1);
    let mut seen = Vec::new();
    while seen.last() != Some(&last) {
        match rx.recv().await.expect("the follower ended").unwrap() {
            FollowItem::Event(e) => seen.push(e.seq),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        (2..=last).collect::<Vec<_>>(),
        "every event, once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_tails_and_cluster_filters_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path()).unwrap();
    let op = uuid::Uuid::now_v7();
    journal.append(command(op, "b")).await.unwrap();
    for i in 0..3000 {
        let cluster = if i % 3 == 0 { "b" } else { "a" };
        journal
            .append_batch(vec![node_event(cluster, i)])
            .await
            .unwrap();
    }
    journal
        .append(BodyV1::CommandFinished {
            op_id: op,
            outcome: vmcluster_journal::Outcome::Applied,
            error_code: None,
            error_message: None,
            result_json: None,
        })
        .await
        .unwrap();
    // A fresh feed (empty index) still knows which cluster the last record's op belongs to.
    let feed = EventFeed::new(journal.clone());
    let tail = feed.tail(5, &EventFilter::cluster("b")).unwrap();
    assert_eq!(tail.len(), 5);
    let last = tail.last().unwrap();
    assert_eq!(last.kind, EventKind::OpFinished);
    assert_eq!(last.cluster.as_deref(), Some("b"));
    assert_eq!(last.seq, journal.last_seq().unwrap());
    let all_b = feed
        .read(0, usize::MAX, &EventFilter::cluster("b"))
        .unwrap();
    assert_eq!(all_b.events.len(), 1 + 1000 + 1);
    assert_eq!(all_b.events[all_b.events.len() - 5..], tail[..]);
    assert!(!all_b.more);
    let page = feed.read(0, 10, &EventFilter::cluster("a")).unwrap();
    assert_eq!(page.events.len(), 10);
    assert!(page.more);
    assert_eq!(page.next_since, page.events[9].seq);
    let whole_tail = feed.tail(3, &EventFilter::all()).unwrap();
    let seqs: Vec<u64> = whole_tail.iter().map(|e| e.seq).collect();
    let l = journal.last_seq().unwrap();
    assert_eq!(seqs, [l - 2, l - 1, l]);
    assert!(
        feed.tail(5, &EventFilter::cluster("nobody"))
            .unwrap()
            .is_empty()
    );
}
