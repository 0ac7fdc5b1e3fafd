//! A repository in a local folder (or a mounted network share).
//!
//! A write goes to a temporary name in the final folder, is fsynced, and is
//! renamed into place; the folders touched are fsynced in one parallel batch
//! by [`Backend::sync`], before any snapshot that depends on them is written.
//! Objects are written with direct I/O where the file system allows it (see
//! [`super::direct`]); `COFFER_NO_DIRECT_IO` set to anything turns that off.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::direct::DirectWriter;
use super::{Backend, BackendError, BackendResult, BlockingRead, Bytes, Entry, WireCounters, WireStats};

/// Temporary files carry this marker; names containing it are never listed.
const TEMP_MARKER: &str = ".tmp-";

pub struct LocalBackend {
    root: PathBuf,
    /// Folders that received a rename since the last sync.
    dirty_dirs: Mutex<BTreeSet<PathBuf>>,
    wire: WireCounters,
    direct: Arc<DirectWriter>,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> LocalBackend {
        LocalBackend {
            root: root.into(),
            dirty_dirs: Mutex::new(BTreeSet::new()),
            wire: WireCounters::default(),
            direct: Arc::new(DirectWriter::new(std::env::var_os("COFFER_NO_DIRECT_IO").is_none())),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn io(key: &str) -> impl FnOnce(std::io::Error) -> BackendError + '_ {
        move |source| BackendError::Io { key: key.to_string(), error: source }
    }

    /// Counts a finished read and names what went wrong.
    fn read_done(&self, key: &str, res: std::io::Result<Vec<u8>>) -> BackendResult<Vec<u8>> {
        match res {
            Ok(data) => {
                self.wire.received(data.len() as u64);
                Ok(data)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BackendError::NotFound { key: key.to_string() }),
            Err(e) => Err(BackendError::Io { key: key.to_string(), error: e }),
        }
    }

    fn mark_dirty(&self, dir: PathBuf) {
        if let Ok(mut dirty) = self.dirty_dirs.lock() {
            dirty.insert(dir);
        }
    }
}

impl BlockingRead for LocalBackend {
    fn get_blocking(&self, key: &str) -> BackendResult<Vec<u8>> {
        self.wire.get();
        self.read_done(key, std::fs::read(self.path(key)))
    }
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn write_atomic(path: &Path, data: &[u8], direct: &DirectWriter) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("object path has no parent"))?;
    let mut rnd = [0u8; 8];
    crate::crypto::fill_random(&mut rnd);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("object");
    let tmp = dir.join(format!("{name}{TEMP_MARKER}{}", hex::encode(rnd)));
    let result = (|| {
        let f = match direct.create(&tmp, data)? {
            Some(f) => f,
            None => {
                let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
                f.write_all(data)?;
                f
            }
        };
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn list_dir(root: &Path, prefix: &str, out: &mut Vec<Entry>) -> std::io::Result<()> {
    let dir = root.join(prefix);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.contains(TEMP_MARKER) {
            continue;
        }
        let ft = entry.file_type()?;
        let key = format!("{prefix}{name}");
        if ft.is_dir() {
            list_dir(root, &format!("{key}/"), out)?;
        } else if ft.is_file() {
            let size = entry.metadata()?.len();
            out.push(Entry { key, size });
        }
    }
    Ok(())
}

#[async_trait]
impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn concurrency(&self) -> usize {
        // Enough parallel fsyncs to keep a disk's queue full.
        16
    }

    fn wire_stats(&self) -> WireStats {
        self.wire.stats()
    }

    async fn put(&self, key: &str, data: Bytes) -> BackendResult<()> {
        let path = self.path(key);
        let p = path.clone();
        self.wire.put(data.len() as u64);
        let direct = self.direct.clone();
        tokio::task::spawn_blocking(move || write_atomic(&p, &data, &direct))
            .await
            .map_err(|e| BackendError::Io { key: key.to_string(), error: std::io::Error::other(e) })?
            .map_err(Self::io(key))?;
        if let Some(dir) = path.parent() {
            self.mark_dirty(dir.to_path_buf());
        }
        Ok(())
    }

    async fn get(&self, key: &str) -> BackendResult<Vec<u8>> {
        let path = self.path(key);
        self.wire.get();
        let res = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .map_err(|e| BackendError::Io { key: key.to_string(), error: std::io::Error::other(e) })?;
        self.read_done(key, res)
    }

    fn blocking_reads(&self) -> Option<&dyn BlockingRead> {
        Some(self)
    }

    async fn list(&self, prefix: &str) -> BackendResult<Vec<Entry>> {
        let root = self.root.clone();
        let p = prefix.to_string();
        self.wire.list();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            list_dir(&root, &p, &mut out).map(|_| out)
        })
        .await
        .map_err(|e| BackendError::Io { key: prefix.to_string(), error: std::io::Error::other(e) })?
        .map_err(Self::io(prefix))
    }

    async fn delete(&self, key: &str) -> BackendResult<()> {
        let path = self.path(key);
        self.wire.delete();
        match tokio::task::spawn_blocking(move || std::fs::remove_file(&path)).await {
            Ok(Ok(())) => {
                if let Some(dir) = self.path(key).parent() {
                    self.mark_dirty(dir.to_path_buf());
                }
                Ok(())
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Ok(Err(e)) => Err(BackendError::Io { key: key.to_string(), error: e }),
            Err(e) => Err(BackendError::Io { key: key.to_string(), error: std::io::Error::other(e) }),
        }
    }

    async fn sync(&self) -> BackendResult<()> {
        let dirs: Vec<PathBuf> = match self.dirty_dirs.lock() {
            Ok(mut d) => std::mem::take(&mut *d).into_iter().collect(),
            Err(_) => Vec::new(),
        };
        let tasks: Vec<_> =
            dirs.into_iter().map(|d| tokio::task::spawn_blocking(move || fsync_dir(&d).map_err(|e| (d, e)))).collect();
        let mut first_err = None;
        for t in tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err((d, e))) => {
                    first_err.get_or_insert(BackendError::Io { key: d.display().to_string(), error: e });
                }
                Err(e) => {
                    first_err.get_or_insert(BackendError::Io { key: "sync".into(), error: std::io::Error::other(e) });
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    async fn create(&self) -> BackendResult<()> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&root)?;
            for top in ["keys", "snapshots", "locks", "chunks", "trees"] {
                std::fs::create_dir_all(root.join(top))?;
            }
            for top in ["chunks", "trees"] {
                for i in 0..=255u8 {
                    std::fs::create_dir_all(root.join(top).join(format!("{i:02x}")))?;
                }
                fsync_dir(&root.join(top))?;
            }
            fsync_dir(&root)?;
            if let Some(parent) = root.parent() {
                let _ = fsync_dir(parent);
            }
            Ok(())
        })
        .await
        .map_err(|e| BackendError::Io { key: String::new(), error: std::io::Error::other(e) })?
        .map_err(|error| BackendError::Io { key: String::new(), error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap()
    }

    #[test]
    fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path().join("repo"));
        rt().block_on(async {
            b.create().await.unwrap();
            b.put("chunks/ab/abcd", Bytes::from_static(b"data")).await.unwrap();
            b.sync().await.unwrap();
            assert_eq!(b.get("chunks/ab/abcd").await.unwrap(), b"data");
            assert!(b.get("chunks/ab/none").await.unwrap_err().is_not_found());
            // A leftover temporary file is not listed.
            std::fs::write(dir.path().join("repo/chunks/ab/abce.tmp-1234"), b"partial").unwrap();
            let list = b.list("chunks/").await.unwrap();
            assert_eq!(list, vec![Entry { key: "chunks/ab/abcd".into(), size: 4 }]);
            b.delete("chunks/ab/abcd").await.unwrap();
            b.delete("chunks/ab/abcd").await.unwrap();
            assert!(b.list("chunks/").await.unwrap().is_empty());
            assert!(b.list("nothing/").await.unwrap().is_empty());
            let expected = WireStats { puts: 1, gets: 2, lists: 3, deletes: 2, heads: 0, bytes_up: 4, bytes_down: 4 };
            assert_eq!(b.wire_stats(), expected);
        });
    }

    #[test]
    fn blocking_reads_match_get_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path().join("repo"));
        rt().block_on(async {
            b.create().await.unwrap();
            b.put("chunks/ab/abcd", Bytes::from_static(b"data")).await.unwrap();
        });
        let reads = b.blocking_reads().expect("a local folder reads by blocking calls");
        assert_eq!(reads.get_blocking("chunks/ab/abcd").unwrap(), b"data");
        assert!(reads.get_blocking("chunks/ab/none").unwrap_err().is_not_found());
        std::fs::create_dir(dir.path().join("repo/chunks/ab/abce")).unwrap();
        let err = reads.get_blocking("chunks/ab/abce").unwrap_err();
        assert!(matches!(err, BackendError::Io { ref key, .. } if key == "chunks/ab/abce"), "{err}");
        let stats = b.wire_stats();
        assert_eq!((stats.gets, stats.bytes_down), (3, 4));
    }
}
