//! The event feed: the journal read as a stream of [`Event`]s, by page or live.
//!
//! Events are derived from journal records ([`Event::from_record`]); nothing else is stored.
//! An [`OpIndex`] shared by every reader supplies the cluster of records that only carry an
//! operation id. It is built lazily (the first read scans the journal up to where it reads) and
//! then kept up to date by whoever reads further. It keeps every operation it has seen (a few
//! tens of bytes each, names interned), so its size grows with the journal's operations, not
//! with its records.
//!
//! Following ([`EventFeed::follow`]) first subscribes to the journal's broadcast, then reads the
//! backlog from the journal, then forwards live records. A follower that falls behind the
//! broadcast (`Lagged`) re-reads what it missed from the journal, so no event is ever dropped:
//! every follower sees every durable record after its cursor exactly once, in order.

use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc};
use vmcluster_journal::{Event, EventFilter, EventPage, Journal, JournalError, OpIndex, RecordV1};

/// Records read from the journal per batch (backlog and catch-up).
const BATCH: usize = 1024;

/// What a follower receives.
#[derive(Debug, Clone, PartialEq)]
pub enum FollowItem {
    /// An event that passed the filter.
    Event(Event),
    /// The backlog (everything durable when following began) has been delivered; live events
    /// follow. `last_seq` is the cursor at that point.
    CaughtUp {
        /// The newest sequence number delivered or skipped so far.
        last_seq: u64,
    },
}

#[derive(Debug, Default)]
struct Indexed {
    ops: OpIndex,
    /// Every record with `seq <= through` has been noted.
    through: u64,
}

/// Shared, cheap to clone.
#[derive(Clone)]
pub struct EventFeed {
    journal: Journal,
    index: Arc<Mutex<Indexed>>,
}

impl std::fmt::Debug for EventFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventFeed")
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

impl EventFeed {
    /// A feed over `journal`.
    pub fn new(journal: Journal) -> EventFeed {
        EventFeed {
            journal,
            index: Arc::new(Mutex::new(Indexed::default())),
        }
    }

    /// The newest durable sequence number (0 when the journal is empty).
    pub fn last_seq(&self) -> u64 {
        self.journal.last_seq().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Indexed> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes every record up to `upto` in the index (blocking: reads the journal).
    fn index_through(&self, idx: &mut Indexed, upto: u64) -> Result<(), JournalError> {
        while idx.through < upto {
            let recs = self.journal.read_since(idx.through, BATCH)?;
            let Some(last) = recs.last().map(|r| r.seq) else {
                idx.through = upto;
                break;
            };
            for r in &recs {
                idx.ops.note(r);
            }
            idx.through = last;
        }
        Ok(())
    }

    /// Events of `recs` (consecutive records of the journal), the index brought up to date
    /// first. Blocking when the index lags.
    fn derive(&self, recs: &[RecordV1]) -> Result<Vec<Event>, JournalError> {
        let Some(first) = recs.first() else {
            return Ok(Vec::new());
        };
        let mut idx = self.lock();
        self.index_through(&mut idx, first.seq.saturating_sub(1))?;
        let mut out = Vec::with_capacity(recs.len());
        for r in recs {
            // Noting is idempotent: a record may be noted by several readers.
            idx.ops.note(r);
            out.push(Event::from_record(r, &idx.ops));
            // `recs` are consecutive journal records, so the index now covers this one too.
            idx.through = idx.through.max(r.seq);
        }
        Ok(out)
    }

    /// Up to `limit` events with `seq > since` that pass `filter`, oldest first. Blocking
    /// (reads the journal); see [`EventFeed::read_async`].
    pub fn read(
        &self,
        since: u64,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<EventPage, JournalError> {
        let last_seq = self.last_seq();
        let mut events = Vec::new();
        let mut cursor = since;
        while events.len() < limit && cursor < last_seq {
            // Read no more than the page needs: every record is an event without a filter; with
            // one, read ahead a little.
            let want = limit - events.len();
            let batch = match filter.cluster {
                None => want.min(BATCH),
                Some(_) => want.saturating_mul(4).clamp(64, BATCH),
            };
            let recs = self.journal.read_since(cursor, batch)?;
            if recs.is_empty() {
                break;
            }
            for e in self.derive(&recs)? {
                cursor = e.seq;
                if filter.matches(&e) {
                    events.push(e);
                    if events.len() >= limit {
                        break;
                    }
                }
            }
        }
        let next_since = cursor.max(since);
        Ok(EventPage {
            events,
            next_since,
            last_seq,
            more: next_since < last_seq,
        })
    }

    /// [`EventFeed::read`] off the async runtime.
    pub async fn read_async(
        &self,
        since: u64,
        limit: usize,
        filter: EventFilter,
    ) -> Result<EventPage, JournalError> {
        let feed = self.clone();
        tokio::task::spawn_blocking(move || feed.read(since, limit, &filter))
            .await
            .map_err(|_| JournalError::Closed)?
    }

    /// The newest `n` events that pass `filter`, oldest first. Blocking: reads backwards in
    /// windows of the journal until it has `n` or reaches the start.
    pub fn tail(&self, n: usize, filter: &EventFilter) -> Result<Vec<Event>, JournalError> {
        let last = self.last_seq();
        let mut hi = last;
        let mut window = (n.max(1) as u64).saturating_mul(2).max(BATCH as u64);
        let mut found: Vec<Event> = Vec::new();
        while hi > 0 && found.len() < n {
            let lo = hi.saturating_sub(window);
            let page = self.read_range(lo, hi, filter)?;
            // Older windows go in front.
            let mut page = page;
            page.extend(found);
            found = page;
            hi = lo;
            window = window.saturating_mul(2);
        }
        let skip = found.len().saturating_sub(n);
        Ok(found.split_off(skip))
    }

    /// Events with `lo < seq <= hi` that pass `filter`.
    fn read_range(
        &self,
        lo: u64,
        hi: u64,
        filter: &EventFilter,
    ) -> Result<Vec<Event>, JournalError> {
        let mut out = Vec::new();
        let mut cursor = lo;
        while cursor < hi {
            let recs = self.journal.read_since(cursor, BATCH)?;
            let Some(last) = recs.last().map(|r| r.seq) else {
                break;
            };
            let recs: Vec<RecordV1> = recs.into_iter().filter(|r| r.seq <= hi).collect();
            out.extend(
                self.derive(&recs)?
                    .into_iter()
                    .filter(|e| filter.matches(e)),
            );
            if last >= hi {
                break;
            }
            cursor = last;
        }
        Ok(out)
    }

    /// [`EventFeed::tail`] off the async runtime.
    pub async fn tail_async(
        &self,
        n: usize,
        filter: EventFilter,
    ) -> Result<Vec<Event>, JournalError> {
        let feed = self.clone();
        tokio::task::spawn_blocking(move || feed.tail(n, &filter))
            .await
            .map_err(|_| JournalError::Closed)?
    }

    /// Every event after `since` that passes `filter`, then live ones as they become durable,
    /// with one [`FollowItem::CaughtUp`] between the two. The stream ends when the receiver is
    /// dropped (the task stops) or the journal shuts down; an `Err` item is the last one.
    pub fn follow(
        &self,
        since: u64,
        filter: EventFilter,
    ) -> mpsc::Receiver<Result<FollowItem, JournalError>> {
        let (tx, rx) = mpsc::channel(256);
        let feed = self.clone();
        tokio::spawn(async move {
            if let Err(e) = feed.follow_loop(since, filter, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }

    /// Sends the events of journal records after `*cursor`, read from the journal until it
    /// has no more; advances `*cursor`. `Ok(false)`: the receiver is gone.
    async fn catch_up(
        &self,
        cursor: &mut u64,
        filter: &EventFilter,
        tx: &mpsc::Sender<Result<FollowItem, JournalError>>,
    ) -> Result<bool, JournalError> {
        loop {
            let page = self.read_async(*cursor, BATCH, filter.clone()).await?;
            for e in page.events {
                if tx.send(Ok(FollowItem::Event(e))).await.is_err() {
                    return Ok(false);
                }
            }
            *cursor = page.next_since;
            if !page.more {
                return Ok(true);
            }
        }
    }

    async fn follow_loop(
        &self,
        since: u64,
        filter: EventFilter,
        tx: &mpsc::Sender<Result<FollowItem, JournalError>>,
    ) -> Result<(), JournalError> {
        // Subscribe before reading the backlog: a record made durable in between is then both
        // read and received, and the cursor drops the duplicate.
        let mut live = self.journal.subscribe();
        let mut cursor = since;
        if !self.catch_up(&mut cursor, &filter, tx).await? {
            return Ok(());
        }
        if tx
            .send(Ok(FollowItem::CaughtUp { last_seq: cursor }))
            .await
            .is_err()
        {
            return Ok(());
        }
        loop {
            let rec = tokio::select! {
                r = live.recv() => r,
                () = tx.closed() => return Ok(()),
            };
            match rec {
                Ok(rec) if rec.seq <= cursor => {}
                Ok(rec) => {
                    let feed = self.clone();
                    let seq = rec.seq;
                    let needs_index = self.lock().through < seq.saturating_sub(1);
                    let events = if needs_index {
                        tokio::task::spawn_blocking(move || feed.derive(&[rec]))
                            .await
                            .map_err(|_| JournalError::Closed)??
                    } else {
                        self.derive(&[rec])?
                    };
                    cursor = seq;
                    for e in events.into_iter().filter(|e| filter.matches(e)) {
                        if tx.send(Ok(FollowItem::Event(e))).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(
                        missed,
                        cursor,
                        "event follower lagged; re-reading the journal"
                    );
                    if !self.catch_up(&mut cursor, &filter, tx).await? {
                        return Ok(());
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
}

/// Reads events from the journal in `dir` without a server: opens it (taking its lock for the
/// duration), reads every event after `since` that passes `filter`, and closes it. Blocking.
///
/// Returns `Ok(None)` when there is no journal there at all (nothing was ever recorded); a
/// journal held by a running server is [`JournalError::InUse`].
pub fn read_offline(
    dir: &std::path::Path,
    since: u64,
    filter: &EventFilter,
) -> Result<Option<EventPage>, JournalError> {
    if !dir.exists() {
        return Ok(None);
    }
    let (journal, _) = Journal::open(dir)?;
    let feed = EventFeed::new(journal);
    let mut page = feed.read(since, usize::MAX, filter)?;
    page.more = false;
    Ok(Some(page))
}
