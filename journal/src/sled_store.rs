//! [`Store`] on sled 0.34.7: the only file that knows the storage engine.
//!
//! Keys are sequence numbers as big-endian `u64` (so sled's byte order is
//! numeric order), in the tree `records`. sled holds an exclusive file lock
//! on its directory; a second open fails with [`StoreError::InUse`].
//! Durability comes from `Db::flush()` (fsync). Never call `flush_async`
//! concurrently: it deadlocks 0.34.7 (sled#1308); the journal calls
//! `flush` from its single writer thread only.

use crate::store::{ScanItem, Store, StoreError};
use std::path::{Path, PathBuf};

const TREE: &str = "records";

/// sled-backed [`Store`].
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .finish()
    }
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn key_to_seq(k: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = k
        .try_into()
        .map_err(|_| StoreError::BadKey { len: k.len() })?;
    Ok(u64::from_be_bytes(arr))
}

impl SledStore {
    /// Opens (creating if needed) the store in directory `dir`.
    ///
    /// sled releases its file lock from a background thread after the last handle drops, so a
    /// store reopened right after being closed (a restarted server, a CLI verb after a test)
    /// can see its own previous lock for a moment: a locked store is retried for up to two
    /// seconds before it is reported as in use by another process.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match Self::try_open(dir) {
                Err(StoreError::InUse { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn try_open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open().map_err(|e| {
            let message = e.to_string();
            // sled 0.34.7 reports a failed `try_lock_exclusive` as an
            // `io::Error` of kind Other: "could not acquire lock on ...".
            if message.contains("could not acquire lock") {
                StoreError::InUse {
                    path: dir.to_path_buf(),
                }
            } else {
                StoreError::Open {
                    path: dir.to_path_buf(),
                    message,
                }
            }
        })?;
        let tree = db.open_tree(TREE).map_err(|e| StoreError::Open {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(SledStore {
            path: dir.to_path_buf(),
            db,
            tree,
        })
    }

    /// The directory this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Store for SledStore {
    fn put_batch(&self, items: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (seq, value) in items {
            batch.insert(&seq.to_be_bytes(), value.as_slice());
        }
        self.tree.apply_batch(batch).map_err(io)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(io)
    }

    fn scan_from(&self, seq: u64) -> Box<dyn Iterator<Item = ScanItem> + '_> {
        Box::new(self.tree.range(seq.to_be_bytes()..).map(|kv| {
            let (k, v) = kv.map_err(io)?;
            Ok((key_to_seq(&k)?, v.to_vec()))
        }))
    }

    fn visit_from(
        &self,
        seq: u64,
        visit: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        // Lends sled's own buffer: no copy per record.
        for kv in self.tree.range(seq.to_be_bytes()..) {
            let (k, v) = kv.map_err(io)?;
            if !visit(key_to_seq(&k)?, &v) {
                break;
            }
        }
        Ok(())
    }

    fn last_seq(&self) -> Result<Option<u64>, StoreError> {
        match self.tree.last().map_err(io)? {
            Some((k, _)) => Ok(Some(key_to_seq(&k)?)),
            None => Ok(None),
        }
    }

    fn remove(&self, seq: u64) -> Result<(), StoreError> {
        self.tree.remove(seq.to_be_bytes()).map(|_| ()).map_err(io)
    }

    fn remove_below(&self, seq: u64) -> Result<u64, StoreError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in self.tree.range(..seq.to_be_bytes()) {
            let (k, _) = kv.map_err(io)?;
            batch.remove(k);
            n += 1;
        }
        self.tree.apply_batch(batch).map_err(io)?;
        Ok(n)
    }
}
