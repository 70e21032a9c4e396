//! The storage seam: a tiny ordered `u64 -> bytes` store.
//!
//! The journal only needs put-batch, flush (durability barrier), ordered
//! scan, last key and remove. The production engine is
//! [`crate::sled_store::SledStore`], the only file that knows sled; swapping
//! the engine means writing one new file that implements [`Store`].
//! [`MemStore`] is an in-memory backend with separate *live* and *durable*
//! images, for fast tests and crash simulation (convention P5).
//!
//! Concurrency contract: all methods take `&self` so readers can scan while
//! the journal's single writer thread writes, but the journal guarantees
//! that only that one thread ever calls `put_batch`, `flush` and `remove`
//! (sled 0.34.7 deadlocks under concurrent `flush_async`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use thiserror::Error;

/// Errors of a [`Store`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    /// Another process (or another handle in this one) holds the store's lock.
    #[error("journal at {} is in use by another vmcluster process", path.display())]
    InUse {
        /// The journal directory.
        path: PathBuf,
    },
    /// The store could not be opened.
    #[error("cannot open journal at {}: {message}", path.display())]
    Open {
        /// The journal directory.
        path: PathBuf,
        /// What the engine said.
        message: String,
    },
    /// A key is not an 8-byte big-endian sequence number.
    #[error("journal store holds a key of {len} bytes (expected 8)")]
    BadKey {
        /// Length of the key found.
        len: usize,
    },
    /// An I/O or engine error while reading or writing.
    #[error("journal store I/O error: {0}")]
    Io(String),
}

/// Item yielded by [`Store::scan_from`].
pub type ScanItem = Result<(u64, Vec<u8>), StoreError>;

/// An ordered, durable `u64 -> bytes` map.
pub trait Store: Send + Sync + 'static {
    /// Writes all items as one atomic batch (not yet durable).
    fn put_batch(&self, items: &[(u64, Vec<u8>)]) -> Result<(), StoreError>;
    /// Makes every earlier write durable (fsync); returns only when it is.
    fn flush(&self) -> Result<(), StoreError>;
    /// Entries with key `>= seq`, in ascending key order.
    fn scan_from(&self, seq: u64) -> Box<dyn Iterator<Item = ScanItem> + '_>;
    /// Calls `visit` with each entry with key `>= seq`, in ascending key order, until it
    /// returns `false`. The value is only borrowed: an engine that can lend its own buffers
    /// overrides this to save a copy per entry (the default goes through
    /// [`Store::scan_from`]). Replay reads every record this way.
    fn visit_from(
        &self,
        seq: u64,
        visit: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        for item in self.scan_from(seq) {
            let (k, v) = item?;
            if !visit(k, &v) {
                break;
            }
        }
        Ok(())
    }
    /// The highest key, if any.
    fn last_seq(&self) -> Result<Option<u64>, StoreError>;
    /// Removes one key (not yet durable).
    fn remove(&self, seq: u64) -> Result<(), StoreError>;
    /// Removes every key below `seq` (not yet durable); returns how many.
    fn remove_below(&self, seq: u64) -> Result<u64, StoreError> {
        let keys: Vec<u64> = self
            .scan_from(0)
            .map(|i| i.map(|(k, _)| k))
            .take_while(|k| !matches!(k, Ok(k) if *k >= seq))
            .collect::<Result<_, _>>()?;
        for k in &keys {
            self.remove(*k)?;
        }
        Ok(keys.len() as u64)
    }
}

impl<S: Store + ?Sized> Store for Box<S> {
    fn put_batch(&self, items: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        (**self).put_batch(items)
    }
    fn flush(&self) -> Result<(), StoreError> {
        (**self).flush()
    }
    fn scan_from(&self, seq: u64) -> Box<dyn Iterator<Item = ScanItem> + '_> {
        (**self).scan_from(seq)
    }
    fn visit_from(
        &self,
        seq: u64,
        visit: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        (**self).visit_from(seq, visit)
    }
    fn last_seq(&self) -> Result<Option<u64>, StoreError> {
        (**self).last_seq()
    }
    fn remove(&self, seq: u64) -> Result<(), StoreError> {
        (**self).remove(seq)
    }
    fn remove_below(&self, seq: u64) -> Result<u64, StoreError> {
        (**self).remove_below(seq)
    }
}

#[derive(Debug, Default)]
struct MemState {
    live: BTreeMap<u64, Vec<u8>>,
    durable: BTreeMap<u64, Vec<u8>>,
    flushes: u64,
}

/// In-memory [`Store`] with a *live* image (what readers see) and a
/// *durable* image (what survives a simulated crash; updated by `flush`).
///
/// Clones share the same state, so a test can keep a clone after handing
/// one to [`crate::Journal::open_store`], then call [`MemStore::crash_image`]
/// to get the store a restarted process would find.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    state: Arc<Mutex<MemState>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new, independent store holding only the durable image (as after a
    /// power loss right now).
    pub fn crash_image(&self) -> MemStore {
        let durable = self.lock().durable.clone();
        MemStore {
            state: Arc::new(Mutex::new(MemState {
                live: durable.clone(),
                durable,
                flushes: 0,
            })),
        }
    }

    /// Number of successful `flush` calls (to observe group commit).
    pub fn flush_count(&self) -> u64 {
        self.lock().flushes
    }

    /// Writes a raw value directly into both images (to plant corruption).
    pub fn put_raw(&self, seq: u64, value: Vec<u8>) {
        let mut s = self.lock();
        s.live.insert(seq, value.clone());
        s.durable.insert(seq, value);
    }
}

impl Store for MemStore {
    fn put_batch(&self, items: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        let mut s = self.lock();
        for (k, v) in items {
            s.live.insert(*k, v.clone());
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut s = self.lock();
        s.durable = s.live.clone();
        s.flushes += 1;
        Ok(())
    }

    fn scan_from(&self, seq: u64) -> Box<dyn Iterator<Item = ScanItem> + '_> {
        // Snapshot the range so no lock is held while the caller iterates.
        let items: Vec<ScanItem> = self
            .lock()
            .live
            .range(seq..)
            .map(|(k, v)| Ok((*k, v.clone())))
            .collect();
        Box::new(items.into_iter())
    }

    fn last_seq(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.lock().live.keys().next_back().copied())
    }

    fn remove(&self, seq: u64) -> Result<(), StoreError> {
        self.lock().live.remove(&seq);
        Ok(())
    }
}
