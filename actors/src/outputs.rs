//! Full outputs of commands whose result was truncated, kept on disk so a client can read them
//! later as MCP resources (`vmcluster://exec/<op_id>/<node>/<stream>`).
//!
//! One file per stream under `<state_dir>/exec-outputs/`, named `<op_id>.<stream>.<node>`, at
//! most [`STORED_OUTPUT_CEILING`] bytes each (what a command printed beyond that is counted in
//! the result but not kept). Retention is bounded: after each write the oldest files (by op id,
//! a time-ordered UUIDv7) go until at most [`MAX_FILES`] files and [`MAX_BYTES`] bytes remain.
//! Files are written to a temporary name and renamed, so a reader never sees half a file.
//!
//! **Invariant:** nothing here knows MCP; the URI is just the stable name a result carries.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use crate::error::{EngineError, Result};

/// Most bytes of one stream kept on disk (and collected in memory while a command runs).
pub const STORED_OUTPUT_CEILING: usize = 64 * 1024 * 1024;
/// Most output files kept.
pub const MAX_FILES: usize = 64;
/// Most bytes kept over all output files.
pub const MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Prefix of every exec output URI.
pub const URI_PREFIX: &str = "vmcluster://exec/";

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// Its name in URIs and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn parse(s: &str) -> Option<Stream> {
        match s {
            "stdout" => Some(Stream::Stdout),
            "stderr" => Some(Stream::Stderr),
            _ => None,
        }
    }
}

/// The URI of one stored output.
pub fn uri(op_id: Uuid, node: &str, stream: Stream) -> String {
    format!("{URI_PREFIX}{op_id}/{node}/{}", stream.as_str())
}

/// Splits an exec output URI into its parts; `None` when it is not one.
pub fn parse_uri(uri: &str) -> Option<(Uuid, String, Stream)> {
    let rest = uri.strip_prefix(URI_PREFIX)?;
    let mut parts = rest.split('/');
    let (op, node, stream) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || vmcluster_engine::names::check_name(node, 64).is_err() {
        return None;
    }
    Some((
        Uuid::parse_str(op).ok()?,
        node.to_owned(),
        Stream::parse(stream)?,
    ))
}

/// One kept output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOutput {
    /// The operation that produced it.
    pub op_id: Uuid,
    /// Node.
    pub node: String,
    /// Stream.
    pub stream: Stream,
    /// Bytes kept.
    pub size: u64,
}

impl StoredOutput {
    /// Its URI.
    pub fn uri(&self) -> String {
        uri(self.op_id, &self.node, self.stream)
    }
}

/// The on-disk store of full outputs (cheap to clone).
#[derive(Debug, Clone)]
pub struct OutputStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    max_files: usize,
    max_bytes: u64,
    /// Serialises writes and evictions.
    lock: Mutex<()>,
}

fn file_name(op_id: Uuid, node: &str, stream: Stream) -> String {
    format!("{}.{}.{node}", op_id.simple(), stream.as_str())
}

fn parse_file_name(name: &str) -> Option<(Uuid, String, Stream)> {
    let (op, rest) = name.split_once('.')?;
    let (stream, node) = rest.split_once('.')?;
    if node.ends_with(".tmp") || vmcluster_engine::names::check_name(node, 64).is_err() {
        return None;
    }
    Some((
        Uuid::try_parse(op).ok()?,
        node.to_owned(),
        Stream::parse(stream)?,
    ))
}

impl OutputStore {
    /// Opens (creating) the store in `dir` with the default retention.
    pub fn open(dir: &Path) -> Result<OutputStore> {
        OutputStore::with_limits(dir, MAX_FILES, MAX_BYTES)
    }

    /// Opens the store with a given retention (tests use small ones).
    pub fn with_limits(dir: &Path, max_files: usize, max_bytes: u64) -> Result<OutputStore> {
        crate::host::ensure_dir(dir)?;
        // Temporary files of a process that died mid-write are garbage.
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(OutputStore {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                max_files,
                max_bytes,
                lock: Mutex::new(()),
            }),
        })
    }

    /// Keeps `bytes` (cut at [`STORED_OUTPUT_CEILING`]) as the output of `op_id` on `node`,
    /// evicts the oldest outputs beyond the retention, and returns the output's URI. Blocking.
    pub fn save(&self, op_id: Uuid, node: &str, stream: Stream, bytes: &[u8]) -> Result<String> {
        let bytes = &bytes[..bytes.len().min(STORED_OUTPUT_CEILING)];
        let name = file_name(op_id, node, stream);
        let path = self.inner.dir.join(&name);
        let tmp = self.inner.dir.join(format!("{name}.tmp"));
        let _guard = self.inner.lock.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                EngineError::io(format!("keep output in {}", path.display()), e)
            })?;
        self.evict(&name);
        Ok(uri(op_id, node, stream))
    }

    /// Every kept output, oldest first.
    pub fn list(&self) -> Vec<StoredOutput> {
        let mut v: Vec<(String, StoredOutput)> = std::fs::read_dir(&self.inner.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let (op_id, node, stream) = parse_file_name(&name)?;
                        let size = e.metadata().ok()?.len();
                        Some((
                            name,
                            StoredOutput {
                                op_id,
                                node,
                                stream,
                                size,
                            },
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.into_iter().map(|(_, o)| o).collect()
    }

    /// The kept output of `op_id` on `node`; `NOT_FOUND` when it was never kept or was evicted.
    pub fn read(&self, op_id: Uuid, node: &str, stream: Stream) -> Result<Vec<u8>> {
        let path = self.inner.dir.join(file_name(op_id, node, stream));
        std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => EngineError::NotFound {
                kind: "exec output",
                name: format!(
                    "{} (never kept, or evicted by newer outputs: the last {} are kept)",
                    uri(op_id, node, stream),
                    self.inner.max_files
                ),
            },
            _ => EngineError::io(format!("read {}", path.display()), e),
        })
    }

    fn evict(&self, keep: &str) {
        let mut files: Vec<(String, u64)> = std::fs::read_dir(&self.inner.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        parse_file_name(&name)?;
                        Some((name, e.metadata().ok()?.len()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        let mut count = files.len();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        for (name, size) in files {
            if count <= self.inner.max_files && total <= self.inner.max_bytes {
                break;
            }
            if name == keep {
                continue;
            }
            if std::fs::remove_file(self.inner.dir.join(&name)).is_ok() {
                count -= 1;
                total -= size;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_reject_garbage() {
        let op = Uuid::now_v7();
        let u = uri(op, "node-1.a", Stream::Stderr);
        assert_eq!(
            parse_uri(&u),
            Some((op, "node-1.a".to_owned(), Stream::Stderr))
        );
        for bad in [
            "vmcluster://exec/",
            "vmcluster://exec/not-a-uuid/n1/stdout",
            &format!("vmcluster://exec/{op}/n1/stdin"),
            &format!("vmcluster://exec/{op}/../stdout"),
            &format!("vmcluster://exec/{op}/n1/stdout/x"),
            &format!("vmcluster://events/{op}/n1/stdout"),
        ] {
            assert_eq!(parse_uri(bad), None, "{bad}");
        }
    }

    #[test]
    fn outputs_are_kept_read_back_and_evicted_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutputStore::with_limits(dir.path(), 3, 1000).unwrap();
        let ops: Vec<Uuid> = (0..4)
            .map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(2));
                Uuid::now_v7()
            })
            .collect();
        for (i, op) in ops.iter().enumerate() {
            let u = store
                .save(*op, "n1", Stream::Stdout, format!("out{i}").as_bytes())
                .unwrap();
            assert_eq!(parse_uri(&u).unwrap().0, *op);
        }
        let kept: Vec<Uuid> = store.list().iter().map(|o| o.op_id).collect();
        assert_eq!(kept, ops[1..], "the oldest is evicted first");
        assert_eq!(store.read(ops[3], "n1", Stream::Stdout).unwrap(), b"out3");
        let gone = store.read(ops[0], "n1", Stream::Stdout).unwrap_err();
        assert_eq!(gone.code(), vmcluster_engine::ErrorCode::NotFound);
        // A byte budget evicts too, but never the output just written.
        store
            .save(Uuid::now_v7(), "n2", Stream::Stderr, &[b'x'; 999])
            .unwrap();
        assert_eq!(store.list().len(), 1);
        assert!(
            std::fs::read_dir(dir.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp"))
        );
    }
}
