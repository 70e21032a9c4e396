//! vmcluster's crash-safe command journal.
//!
//! Every mutating command is journaled before its first side effect
//! (write-ahead rule, convention P5), and saga steps are journaled before
//! each step's side effect. The journal is an append-only sequence of
//! versioned [`JournalRecord`]s keyed by a strictly increasing sequence
//! number starting at 1.
//!
//! # Durability
//!
//! A record acknowledged by [`Journal::append`] / [`Journal::append_batch`]
//! has survived `sled::Db::flush()`, which flushes sled's IO buffers and
//! calls fsync. It therefore survives SIGKILL of the process and, per sled's
//! documentation ("if this succeeds, it is guaranteed that all previous
//! writes will be recovered if the system crashes"), an OS crash or power
//! loss. Readers ([`Journal::read_since`], [`Journal::iter_all`],
//! [`Journal::subscribe`]) only ever see acknowledged (durable) records.
//! Dropping an `append` future after it was polled does not un-write the
//! record: it may still become durable.
//!
//! # Design
//!
//! * One dedicated writer thread owns all writes (sled 0.34.7 deadlocks on
//!   concurrent `flush_async`). It drains every pending request, writes them
//!   as one batch, flushes once and then answers all of them (group commit).
//! * If a write or flush fails, the journal is poisoned: every later append
//!   fails with [`JournalError::Poisoned`], because what reached the disk is
//!   unknown. Restart (reopen) to recover.
//! * Recovery policy on [`Journal::open`] (convention P7): a record that
//!   fails its checksum or does not decode *at the tail* (the last key) is
//!   discarded with a warning; a frame that fails anywhere else (magic,
//!   checksum, version, seq against its key) makes the journal refuse to open
//!   with [`JournalError::Corrupt`]. A record of an unknown (newer) version is
//!   never discarded: [`JournalError::UnsupportedVersion`].
//! * Opening is the replay: one pass decodes every record (from borrowed
//!   bytes) and folds it into the [`Projection`], which compaction keeps
//!   bounded (at most `compact_every` records follow the last checkpoint).
//! * Reads borrow the store's buffers ([`Store::visit_from`]) and decode in
//!   batches: no copy per record.
//! * Framing and encoding are in [`codec`]; the storage engine is behind the
//!   [`Store`] trait and lives in one file ([`sled_store`]).
//!
//! The crate knows nothing of libvirt, SSH or MCP.

pub mod codec;
pub mod event;
pub mod projection;
pub mod record;
pub mod sled_store;
pub mod store;

pub use codec::{DecodeError, EncodeError};
pub use event::{Event, EventFilter, EventKind, EventPage, OpIndex};
pub use projection::{OpInfo, Projection, StepInfo, StepState};
pub use record::{BodyV1, JournalRecord, ObjectKind, Outcome, RecordV1};
pub use sled_store::SledStore;
pub use store::{MemStore, Store, StoreError};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, mpsc};
use std::thread::JoinHandle;
use thiserror::Error;
use tokio::sync::{broadcast, oneshot};

/// Capacity of the live-tail broadcast; a slower subscriber gets
/// `RecvError::Lagged` and should catch up with [`Journal::read_since`].
pub const SUBSCRIBE_CAPACITY: usize = 4096;

/// Records between two checkpoints by default (see [`JournalOptions::compact_every`]).
pub const DEFAULT_COMPACT_EVERY: u64 = 100_000;

/// Retention settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalOptions {
    /// Finished operations the projection keeps (and checkpoints carry).
    pub retain_ops: usize,
    /// After this many records since the last checkpoint, the writer appends a checkpoint (the
    /// projection) and deletes every record before it, so reopening reads at most one
    /// checkpoint and this many records.
    pub compact_every: u64,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            retain_ops: projection::DEFAULT_RETAIN_OPS,
            compact_every: DEFAULT_COMPACT_EVERY,
        }
    }
}

/// Most requests the writer folds into one group commit.
const MAX_REQUESTS_PER_COMMIT: usize = 1024;

/// Errors of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JournalError {
    /// The journal directory is locked by another process (or handle).
    #[error("journal at {} is in use by another vmcluster process", path.display())]
    InUse {
        /// The journal directory.
        path: PathBuf,
    },
    /// The storage engine failed.
    #[error(transparent)]
    Store(StoreError),
    /// A record that is not the last one is corrupt (or keys are out of
    /// order); the journal refuses to start rather than guess state.
    #[error("journal is corrupt at seq {seq}: {reason}")]
    Corrupt {
        /// Sequence number (store key) of the bad record.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A record was written by a newer vmcluster with a record version this
    /// build does not know.
    #[error("journal record at seq {seq} has version tag {tag}, newer than this build supports")]
    UnsupportedVersion {
        /// Sequence number of the record.
        seq: u64,
        /// Its version tag.
        tag: u32,
    },
    /// A record could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// An earlier write or flush failed; nothing more is accepted.
    #[error("journal writer failed earlier ({reason}); restart to recover")]
    Poisoned {
        /// The original failure.
        reason: String,
    },
    /// The writer thread is gone (it panicked, or the journal is shutting down).
    #[error("journal writer thread is gone")]
    Closed,
}

impl From<StoreError> for JournalError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InUse { path } => JournalError::InUse { path },
            other => JournalError::Store(other),
        }
    }
}

/// What [`Journal::open`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Valid records in the journal (after any discard).
    pub records: u64,
    /// Whether a corrupt last record was discarded.
    pub discarded_tail: bool,
    /// Seq of the last checkpoint, if any (records before it are gone).
    pub checkpoint_seq: Option<u64>,
    /// Sequence number of the last valid record.
    pub last_seq: Option<u64>,
}

struct Request {
    bodies: Vec<BodyV1>,
    reply: Reply,
}

struct Inner {
    store: Arc<dyn Store>,
    tx: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    /// Highest durable seq; 0 = none (seqs start at 1).
    durable_seq: Arc<AtomicU64>,
    events: broadcast::Sender<RecordV1>,
    /// What the durable records add up to; updated by the writer before it acknowledges.
    projection: Arc<RwLock<Projection>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel makes the writer finish pending work, flush
        // and exit; wait for it so the store (and its lock) is released.
        drop(self.tx.take());
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

/// Handle to the journal: cheap to clone, `Send + Sync`. The writer thread
/// stops (after a final flush) when the last handle is dropped.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("last_seq", &self.last_seq())
            .finish_non_exhaustive()
    }
}

fn decode_at(seq: u64, bytes: &[u8]) -> Result<JournalRecord, JournalError> {
    let rec = codec::decode(bytes).map_err(|e| match e {
        DecodeError::UnknownVersion { tag } => JournalError::UnsupportedVersion { seq, tag },
        e => JournalError::Corrupt {
            seq,
            reason: e.to_string(),
        },
    })?;
    if rec.seq() != seq {
        return Err(JournalError::Corrupt {
            seq,
            reason: format!(
                "record says seq {} but is stored under key {seq}",
                rec.seq()
            ),
        });
    }
    Ok(rec)
}

/// Scans and validates the whole store in one pass; returns what was found and the next
/// sequence number to assign.
///
/// Every record is decoded and folded into `projection` in this one pass (a replay reads the
/// store once); a record that does not decode is forgiven only as the last one (a torn tail).
fn recover(
    store: &dyn Store,
    projection: &mut Projection,
) -> Result<(Recovery, u64), JournalError> {
    let mut checkpoint_seq: Option<u64> = None;
    let mut records = 0u64;
    let mut last_valid: Option<u64> = None;
    let mut max_key: Option<u64> = None;
    // A bad record is only forgivable if nothing follows it.
    let mut pending_bad: Option<(u64, String)> = None;
    let mut fatal: Option<JournalError> = None;

    store.visit_from(0, &mut |seq, bytes| {
        if let Some((bad_seq, reason)) = pending_bad.take() {
            fatal = Some(JournalError::Corrupt {
                seq: bad_seq,
                reason,
            });
            return false;
        }
        if let Some(prev) = max_key
            && seq <= prev
        {
            fatal = Some(JournalError::Corrupt {
                seq,
                reason: format!("sequence not increasing: {seq} after {prev}"),
            });
            return false;
        }
        max_key = Some(seq);
        match decode_at(seq, bytes) {
            Ok(rec) => {
                if matches!(rec.body(), BodyV1::Checkpoint { .. }) {
                    checkpoint_seq = Some(seq);
                }
                if let Err(e) = projection.apply(&rec.into_v1()) {
                    tracing::warn!(error = %e, "journal replay");
                }
                records += 1;
                last_valid = Some(seq);
            }
            Err(JournalError::Corrupt { reason, .. }) => pending_bad = Some((seq, reason)),
            Err(e) => {
                fatal = Some(e);
                return false;
            }
        }
        true
    })?;
    if let Some(e) = fatal {
        return Err(e);
    }
    let discarded_tail = match pending_bad {
        Some((seq, reason)) => {
            tracing::warn!(seq, %reason, "discarding corrupt journal tail record");
            store.remove(seq)?;
            store.flush()?;
            true
        }
        None => false,
    };
    // A compaction cut short: its checkpoint is durable, so what precedes it can go.
    if let Some(cp) = checkpoint_seq {
        let stale = store.remove_below(cp)?;
        if stale > 0 {
            tracing::info!(
                stale,
                checkpoint = cp,
                "finishing an interrupted journal compaction"
            );
            store.flush()?;
            records -= stale;
        }
    }
    // Never reuse a seq, even a discarded one: someone may have seen it.
    let next_seq = max_key.map_or(1, |k| k + 1);
    Ok((
        Recovery {
            records,
            discarded_tail,
            last_seq: last_valid,
            checkpoint_seq,
        },
        next_seq,
    ))
}

/// Decodes up to `limit` records with `from <= seq <= durable`, in order. A record that does
/// not decode becomes an `Err` item in its place, and reading goes on after it.
fn read_batch(
    store: &dyn Store,
    from: u64,
    durable: u64,
    limit: usize,
) -> Result<Vec<Result<RecordV1, JournalError>>, JournalError> {
    let mut out = Vec::new();
    if limit == 0 || from > durable {
        return Ok(out);
    }
    store.visit_from(from, &mut |seq, bytes| {
        if seq > durable {
            return false;
        }
        out.push(decode_at(seq, bytes).map(JournalRecord::into_v1));
        out.len() < limit
    })?;
    Ok(out)
}

/// Records read this many at a time by [`Journal::iter_all`].
const ITER_BATCH: usize = 1024;

/// [`Journal::iter_all`]: the store read in batches, each decoded from borrowed bytes.
struct AllRecords<'a> {
    store: &'a dyn Store,
    durable: u64,
    next: u64,
    buf: std::vec::IntoIter<Result<RecordV1, JournalError>>,
    done: bool,
}

impl Iterator for AllRecords<'_> {
    type Item = Result<RecordV1, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.buf.next() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            match read_batch(self.store, self.next, self.durable, ITER_BATCH) {
                Ok(batch) => {
                    if batch.len() < ITER_BATCH {
                        self.done = true;
                    }
                    // The next batch starts after the last record read (good or bad).
                    let last = batch.last().map(|r| match r {
                        Ok(rec) => rec.seq,
                        Err(JournalError::Corrupt { seq, .. })
                        | Err(JournalError::UnsupportedVersion { seq, .. }) => *seq,
                        Err(_) => u64::MAX - 1,
                    });
                    match last {
                        Some(l) => self.next = l + 1,
                        None => self.done = true,
                    }
                    self.buf = batch.into_iter();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Journal {
    /// Opens (creating if needed) the sled journal in `dir`, checks every
    /// record's frame (see the recovery policy above) and starts the writer
    /// thread. Blocking; scans everything.
    pub fn open(dir: &Path) -> Result<(Journal, Recovery), JournalError> {
        Self::open_with(dir, JournalOptions::default())
    }

    /// Like [`Journal::open`] with retention settings.
    pub fn open_with(
        dir: &Path,
        options: JournalOptions,
    ) -> Result<(Journal, Recovery), JournalError> {
        let store = SledStore::open(dir)?;
        Self::open_store_with(store, options)
    }

    /// Like [`Journal::open`] on any [`Store`] (e.g. [`MemStore`] in tests).
    pub fn open_store<S: Store>(store: S) -> Result<(Journal, Recovery), JournalError> {
        Self::open_store_with(store, JournalOptions::default())
    }

    /// Like [`Journal::open_store`] with retention settings.
    pub fn open_store_with<S: Store>(
        store: S,
        options: JournalOptions,
    ) -> Result<(Journal, Recovery), JournalError> {
        let store: Arc<dyn Store> = Arc::new(store);
        let mut proj = Projection::new(options.retain_ops);
        let (recovery, next_seq) = recover(store.as_ref(), &mut proj)?;
        let projection = Arc::new(RwLock::new(proj));
        let durable_seq = Arc::new(AtomicU64::new(recovery.last_seq.unwrap_or(0)));
        let (events, _) = broadcast::channel(SUBSCRIBE_CAPACITY);
        let (tx, rx) = mpsc::channel::<Request>();
        let writer = {
            let store = Arc::clone(&store);
            let durable_seq = Arc::clone(&durable_seq);
            let events = events.clone();
            let projection = Arc::clone(&projection);
            std::thread::Builder::new()
                .name("vmcluster-journal-writer".into())
                .spawn(move || {
                    let w = Writer {
                        store,
                        durable_seq,
                        events,
                        projection,
                        compact_every: options.compact_every.max(1),
                        since_checkpoint: recovery.records,
                    };
                    w.run(rx, next_seq)
                })
                .map_err(|e| JournalError::Store(StoreError::Io(format!("spawn writer: {e}"))))?
        };
        let journal = Journal {
            inner: Arc::new(Inner {
                store,
                tx: Some(tx),
                writer: Some(writer),
                durable_seq,
                events,
                projection,
            }),
        };
        Ok((journal, recovery))
    }

    /// Appends one record; returns it (with its seq and timestamp) once it
    /// is durable.
    pub async fn append(&self, body: BodyV1) -> Result<RecordV1, JournalError> {
        self.append_batch(vec![body])
            .await?
            .pop()
            .ok_or(JournalError::Closed)
    }

    /// Appends several records with consecutive seqs in one atomic store
    /// batch; returns them once they are durable. An empty batch is a no-op.
    pub async fn append_batch(&self, bodies: Vec<BodyV1>) -> Result<Vec<RecordV1>, JournalError> {
        if bodies.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        let tx = self.inner.tx.as_ref().ok_or(JournalError::Closed)?;
        tx.send(Request { bodies, reply })
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Up to `limit` durable records with `seq > since_seq`, in order; the first record that
    /// does not decode is an error. Blocking (reads the store).
    pub fn read_since(&self, since_seq: u64, limit: usize) -> Result<Vec<RecordV1>, JournalError> {
        let durable = self.inner.durable_seq.load(Ordering::Acquire);
        if limit == 0 || since_seq >= durable {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut failed = None;
        self.inner
            .store
            .visit_from(since_seq + 1, &mut |seq, bytes| {
                if seq > durable {
                    return false;
                }
                match decode_at(seq, bytes) {
                    Ok(r) => out.push(r.into_v1()),
                    Err(e) => {
                        failed = Some(e);
                        return false;
                    }
                }
                out.len() < limit
            })?;
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Every durable record (as of this call), in order, for replay. A record that does not
    /// decode is an `Err` item in its place. Blocking (reads the store in batches, lazily).
    pub fn iter_all(&self) -> impl Iterator<Item = Result<RecordV1, JournalError>> + '_ {
        AllRecords {
            store: self.inner.store.as_ref(),
            durable: self.inner.durable_seq.load(Ordering::Acquire),
            next: 1,
            buf: Vec::new().into_iter(),
            done: false,
        }
    }

    /// Sequence number of the last durable record.
    pub fn last_seq(&self) -> Option<u64> {
        match self.inner.durable_seq.load(Ordering::Acquire) {
            0 => None,
            s => Some(s),
        }
    }

    /// Reads the projection (what every durable record adds up to). Keep `f` short: the
    /// writer waits for it before acknowledging the next commit.
    pub fn view<R>(&self, f: impl FnOnce(&Projection) -> R) -> R {
        let p = self
            .inner
            .projection
            .read()
            .unwrap_or_else(|p| p.into_inner());
        f(&p)
    }

    /// Live tail: every record appended from now on, in seq order, sent
    /// after it is durable. Ends (`Closed`) when the journal shuts down.
    pub fn subscribe(&self) -> broadcast::Receiver<RecordV1> {
        self.inner.events.subscribe()
    }
}

type Reply = oneshot::Sender<Result<Vec<RecordV1>, JournalError>>;

/// Encoded frames keyed by seq, as handed to [`Store::put_batch`].
type Frames = Vec<(u64, Vec<u8>)>;

/// The single writer thread's state.
struct Writer {
    store: Arc<dyn Store>,
    durable_seq: Arc<AtomicU64>,
    events: broadcast::Sender<RecordV1>,
    projection: Arc<RwLock<Projection>>,
    compact_every: u64,
    since_checkpoint: u64,
}

impl Writer {
    /// Group commit of everything pending, until every handle is dropped.
    fn run(mut self, rx: mpsc::Receiver<Request>, mut next_seq: u64) {
        let mut poisoned: Option<String> = None;
        while let Ok(first) = rx.recv() {
            let mut requests = vec![first];
            while requests.len() < MAX_REQUESTS_PER_COMMIT {
                match rx.try_recv() {
                    Ok(r) => requests.push(r),
                    Err(_) => break,
                }
            }
            if let Some(reason) = &poisoned {
                for r in requests {
                    let _ = r.reply.send(Err(JournalError::Poisoned {
                        reason: reason.clone(),
                    }));
                }
                continue;
            }

            let mut items: Frames = Vec::new();
            let mut staged: Vec<(Reply, Vec<RecordV1>)> = Vec::with_capacity(requests.len());
            for Request { bodies, reply } in requests {
                match encode_request(bodies, next_seq) {
                    Ok((recs, frames)) => {
                        next_seq += recs.len() as u64;
                        items.extend(frames);
                        staged.push((reply, recs));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            if items.is_empty() {
                continue;
            }

            match self
                .store
                .put_batch(&items)
                .and_then(|()| self.store.flush())
            {
                Ok(()) => {
                    let all: Vec<&RecordV1> = staged.iter().flat_map(|(_, r)| r).collect();
                    self.publish(&all);
                    for (reply, recs) in staged {
                        let _ = reply.send(Ok(recs));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "journal write failed; journal is now poisoned");
                    poisoned = Some(e.to_string());
                    for (reply, _) in staged {
                        let _ = reply.send(Err(JournalError::Store(e.clone())));
                    }
                    continue;
                }
            }
            if self.since_checkpoint >= self.compact_every {
                match self.compact(next_seq) {
                    Ok(()) => next_seq += 1,
                    Err(e) => {
                        tracing::error!(error = %e, "journal compaction failed; journal is now poisoned");
                        poisoned = Some(e.to_string());
                    }
                }
            }
        }
        // All handles dropped: a last flush (a no-op after group commits).
        if poisoned.is_none()
            && let Err(e) = self.store.flush()
        {
            tracing::warn!(error = %e, "journal flush at shutdown failed");
        }
    }

    /// Makes durable records visible: folds them into the projection (before anyone is told,
    /// so whoever sees an ack sees its effect), advances the durable seq, broadcasts them.
    fn publish(&mut self, recs: &[&RecordV1]) {
        {
            let mut p = self.projection.write().unwrap_or_else(|p| p.into_inner());
            for r in recs {
                if let Err(e) = p.apply(r) {
                    tracing::warn!(error = %e, "journal projection");
                }
            }
        }
        if let Some(last) = recs.last() {
            self.durable_seq.store(last.seq, Ordering::Release);
        }
        self.since_checkpoint += recs.len() as u64;
        if self.events.receiver_count() > 0 {
            for r in recs {
                let _ = self.events.send((*r).clone());
            }
        }
    }

    /// Retention: appends the projection as a checkpoint at `seq`, then deletes every record
    /// before it. A crash between the two leaves both; the next open finishes the deletion.
    fn compact(&mut self, seq: u64) -> Result<(), JournalError> {
        let body = {
            let p = self.projection.read().unwrap_or_else(|p| p.into_inner());
            BodyV1::Checkpoint {
                projection: p.encode(),
            }
        };
        let (recs, frames) = encode_request(vec![body], seq)?;
        self.store.put_batch(&frames)?;
        self.store.flush()?;
        let refs: Vec<&RecordV1> = recs.iter().collect();
        self.publish(&refs);
        let removed = self.store.remove_below(seq)?;
        self.store.flush()?;
        self.since_checkpoint = 0;
        tracing::info!(checkpoint = seq, removed, "journal compacted");
        Ok(())
    }
}

/// Assigns seqs and timestamps to one request's bodies and encodes them.
fn encode_request(
    bodies: Vec<BodyV1>,
    first_seq: u64,
) -> Result<(Vec<RecordV1>, Frames), JournalError> {
    let ts_ms = chrono::Utc::now().timestamp_millis();
    let mut recs = Vec::with_capacity(bodies.len());
    let mut frames = Vec::with_capacity(bodies.len());
    for (i, body) in bodies.into_iter().enumerate() {
        let seq = first_seq + i as u64;
        let rec = JournalRecord::V1(RecordV1 { seq, ts_ms, body });
        frames.push((seq, codec::encode(&rec)?));
        recs.push(rec.into_v1());
    }
    Ok((recs, frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Journal>();
    }
}
