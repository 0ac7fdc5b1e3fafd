//! A repository in a local folder (or a mounted network share).
//!
//! A write goes to a temporary name in the final folder, is fsynced, and is
//! renamed into place; the folders touched are fsynced in one parallel batch
//! by [`Backend::sync`], before any snapshot that depends on them is written.
//! Objects are written with direct I/O where the file system allows it (see
//! [`super::direct`]); `COFFER_NO_DIRECT_IO` set to anything turns that off.
//!
//! Several threads of one process sync the same handle (the backup's
//! pipeline, its lock's refresh thread), so a sync cannot simply drain the
//! set of dirty folders: one that found the set emptied by another must
//! still wait for, and report, the fsyncs of everything dirtied before it
//! was called. Each sync therefore starts one shared batch for the folders
//! it takes and waits for every batch still running. A failed folder fsync
//! is final for the handle: the kernel may forget the error once reported
//! (so a retry could succeed without the rename being durable), so every
//! later sync fails too and no snapshot can be written on top of it.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use super::direct::DirectWriter;
use super::rule::{KeyMatch, Op, Selector, Turn};
use super::{Backend, BackendError, BackendResult, BlockingRead, Bytes, Entry, WireCounters, WireStats};

/// Temporary files carry this marker; names containing it are never listed.
const TEMP_MARKER: &str = ".tmp-";

/// A failed folder fsync: the folder and what the kernel said.
#[derive(Clone, Debug)]
struct SyncFailure {
    dir: PathBuf,
    kind: std::io::ErrorKind,
    message: String,
}

impl SyncFailure {
    fn to_error(&self) -> BackendError {
        BackendError::Io {
            key: self.dir.display().to_string(),
            error: std::io::Error::new(self.kind, format!("fsync of the folder failed: {}", self.message)),
        }
    }
}

/// The fsyncs of one set of folders, awaited by every sync that needs them.
type Batch = Shared<BoxFuture<'static, Result<(), SyncFailure>>>;

#[derive(Default)]
struct Durability {
    /// Folders that received a rename or a removal since a sync last took them.
    dirty: BTreeSet<PathBuf>,
    /// Batches started and not yet seen finished.
    running: Vec<Batch>,
    /// The first folder fsync that failed (see the module's doc).
    failed: Option<SyncFailure>,
}

pub struct LocalBackend {
    root: PathBuf,
    durability: Mutex<Durability>,
    wire: WireCounters,
    direct: Arc<DirectWriter>,
    /// Injected folder fsync failures, for tests (see
    /// [`LocalBackend::fail_dir_fsyncs`]).
    fsync_faults: Mutex<Vec<Selector>>,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> LocalBackend {
        LocalBackend {
            root: root.into(),
            durability: Mutex::new(Durability::default()),
            wire: WireCounters::default(),
            direct: Arc::new(DirectWriter::new(std::env::var_os("COFFER_NO_DIRECT_IO").is_none())),
            fsync_faults: Mutex::new(Vec::new()),
        }
    }

    /// For tests: the fsyncs of folders whose path contains `pattern`
    /// fail, after `skip` of them have passed, `times` times (`None`: for
    /// ever), as a failing disk's would.
    pub fn fail_dir_fsyncs(&self, pattern: &str, skip: usize, times: Option<usize>) {
        if let Ok(mut faults) = self.fsync_faults.lock() {
            faults.push(Selector::new(Op::Fsync, pattern, KeyMatch::Contains, skip, times));
        }
    }

    /// How many folder fsyncs the injected faults have failed so far.
    pub fn dir_fsync_faults_applied(&self) -> usize {
        self.fsync_faults.lock().map(|f| f.iter().map(Selector::applied).sum()).unwrap_or(0)
    }

    /// Whether an injected fault fails the fsync of `dir`.
    fn fsync_fault(&self, dir: &Path) -> bool {
        let Ok(mut faults) = self.fsync_faults.lock() else { return false };
        let key = dir.to_string_lossy();
        faults.iter_mut().any(|f| f.turn(Op::Fsync, &key) == Turn::Applies)
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

    /// Counts a finished read (whole or ranged) and names what went wrong.
    fn read_done(&self, key: &str, res: std::io::Result<Read>) -> BackendResult<Vec<u8>> {
        match res {
            Ok(Read::Data(data)) => {
                self.wire.received(data.len() as u64);
                Ok(data)
            }
            Ok(Read::TooLarge { size, limit }) => Err(BackendError::TooLarge { key: key.to_string(), size, limit }),
            Ok(Read::Short { offset, len, got }) => Err(super::short_range(key, offset, len, got)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BackendError::NotFound { key: key.to_string() }),
            Err(e) => Err(BackendError::Io { key: key.to_string(), error: e }),
        }
    }

    /// Runs a read of `key` on the blocking pool.
    async fn read_off_thread(
        &self,
        key: &str,
        read: impl FnOnce(&Path) -> std::io::Result<Read> + Send + 'static,
    ) -> BackendResult<Vec<u8>> {
        let path = self.path(key);
        self.wire.get();
        let res = tokio::task::spawn_blocking(move || read(&path))
            .await
            .map_err(|e| BackendError::Io { key: key.to_string(), error: std::io::Error::other(e) })?;
        self.read_done(key, res)
    }

    fn mark_dirty(&self, dir: PathBuf) {
        if let Ok(mut d) = self.durability.lock() {
            d.dirty.insert(dir);
        }
    }

    /// A batch that fsyncs `dirs` in parallel; its result is the first
    /// failure.
    fn start_batch(&self, dirs: BTreeSet<PathBuf>) -> Batch {
        let tasks: Vec<_> = dirs
            .into_iter()
            .map(|dir| {
                let injected = self.fsync_fault(&dir);
                tokio::task::spawn_blocking(move || {
                    let result =
                        if injected { Err(std::io::Error::other("injected failure")) } else { fsync_dir(&dir) };
                    result.map_err(|e| SyncFailure { dir, kind: e.kind(), message: e.to_string() })
                })
            })
            .collect();
        async move {
            let mut first = None;
            for t in tasks {
                let result = t.await.unwrap_or_else(|e| {
                    Err(SyncFailure {
                        dir: PathBuf::from("sync"),
                        kind: std::io::ErrorKind::Other,
                        message: e.to_string(),
                    })
                });
                if let Err(f) = result {
                    first.get_or_insert(f);
                }
            }
            first.map_or(Ok(()), Err)
        }
        .boxed()
        .shared()
    }
}

impl BlockingRead for LocalBackend {
    fn get_blocking(&self, key: &str, max_len: u64) -> BackendResult<Vec<u8>> {
        self.wire.get();
        self.read_done(key, read_bounded(&self.path(key), max_len))
    }

    fn get_range_blocking(&self, key: &str, offset: u64, len: u64) -> BackendResult<Vec<u8>> {
        self.wire.get();
        self.read_done(key, read_range(&self.path(key), offset, len))
    }
}

/// What a read of a file found, short of an I/O error.
enum Read {
    Data(Vec<u8>),
    /// The file holds `size` bytes, more than `limit`; nothing was read.
    TooLarge {
        size: u64,
        limit: u64,
    },
    /// The file ends before the range `offset..offset + len` does: `got`
    /// bytes of it exist.
    Short {
        offset: u64,
        len: u64,
        got: u64,
    },
}

/// Reads exactly `len` bytes at `offset`.
fn read_range(path: &Path, offset: u64, len: u64) -> std::io::Result<Read> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let Some(end) = offset.checked_add(len).filter(|&end| end <= size) else {
        return Ok(Read::Short { offset, len, got: size.saturating_sub(offset) });
    };
    let mut data = vec![0u8; (end - offset) as usize];
    match file.read_exact_at(&mut data, offset) {
        Ok(()) => Ok(Read::Data(data)),
        // Shrunk since its size was read.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(Read::Short { offset, len, got: 0 }),
        Err(e) => Err(e),
    }
}

/// Reads a whole file of at most `max_len` bytes. The size is checked
/// before a byte is read, and the read stops after `max_len + 1` bytes in
/// case the file grows meanwhile.
fn read_bounded(path: &Path, max_len: u64) -> std::io::Result<Read> {
    read_bounded_into(path, max_len, Vec::new())
}

/// [`read_bounded`] into `data`'s memory (see [`Backend::get_into`]).
fn read_bounded_into(path: &Path, max_len: u64, mut data: Vec<u8>) -> std::io::Result<Read> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    if size > max_len {
        return Ok(Read::TooLarge { size, limit: max_len });
    }
    data.clear();
    data.reserve_exact(size as usize);
    file.take(max_len.saturating_add(1)).read_to_end(&mut data)?;
    if data.len() as u64 > max_len {
        return Ok(Read::TooLarge { size: data.len() as u64, limit: max_len });
    }
    Ok(Read::Data(data))
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
            // Deleted since the folder was read (a lock released, a pack
            // pruned): gone, as if listed a moment later.
            let size = match entry.metadata() {
                Ok(m) => m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            out.push(Entry { key, size, storage_class: None });
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

    async fn get(&self, key: &str, max_len: u64) -> BackendResult<Vec<u8>> {
        self.read_off_thread(key, move |path| read_bounded(path, max_len)).await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> BackendResult<Vec<u8>> {
        self.read_off_thread(key, move |path| read_range(path, offset, len)).await
    }

    async fn get_into(&self, key: &str, max_len: u64, buf: Vec<u8>) -> BackendResult<Vec<u8>> {
        self.read_off_thread(key, move |path| read_bounded_into(path, max_len, buf)).await
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

    /// A file another process wrote was fsynced before its rename, but its
    /// name may not be durable until its folder is: that folder joins the
    /// next sync's batch.
    fn adopt(&self, keys: &[String]) {
        for key in keys {
            if let Some(dir) = self.path(key).parent() {
                self.mark_dirty(dir.to_path_buf());
            }
        }
    }

    async fn sync(&self) -> BackendResult<()> {
        // Take the folders dirtied so far, and note every batch that other
        // syncs started for earlier ones: all of them must finish, and
        // succeed, before this sync may say that what was written is durable.
        let waits: Vec<Batch> = {
            let mut d = self.durability.lock().map_err(|_| BackendError::Io {
                key: self.root.display().to_string(),
                error: std::io::Error::other("sync state poisoned"),
            })?;
            if let Some(f) = &d.failed {
                return Err(f.to_error());
            }
            if !d.dirty.is_empty() {
                let batch = self.start_batch(std::mem::take(&mut d.dirty));
                d.running.push(batch);
            }
            d.running.clone()
        };
        let mut first = None;
        for batch in waits {
            if let Err(f) = batch.await {
                first.get_or_insert(f);
            }
        }
        let mut d = self.durability.lock().map_err(|_| BackendError::Io {
            key: self.root.display().to_string(),
            error: std::io::Error::other("sync state poisoned"),
        })?;
        d.running.retain(|b| b.peek().is_none());
        if let Some(f) = first {
            d.failed.get_or_insert(f);
        }
        match &d.failed {
            Some(f) => Err(f.to_error()),
            None => Ok(()),
        }
    }

    async fn create(&self) -> BackendResult<()> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&root)?;
            // The folders of docs/format.md; packs fan out by their id's
            // first byte.
            for top in ["keys", "snapshots", "locks", "data", "tree", "index"] {
                std::fs::create_dir_all(root.join(top))?;
            }
            for top in ["data", "tree"] {
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

    /// A file another process left is made durable by the next sync once
    /// adopted: its folder is fsynced (here, an injected failure of that
    /// fsync shows the sync reached it), and only then.
    #[test]
    fn adopted_objects_have_their_folders_synced() {
        let dir = tempfile::tempdir().unwrap();
        let earlier = LocalBackend::new(dir.path().join("repo"));
        rt().block_on(async {
            earlier.create().await.unwrap();
            earlier.put("data/ab/abcd", Bytes::from_static(b"pack")).await.unwrap();
        });
        // A new process: it never wrote into data/ab.
        let b = LocalBackend::new(dir.path().join("repo"));
        b.fail_dir_fsyncs("data/ab", 0, None);
        rt().block_on(async {
            b.sync().await.unwrap();
            assert_eq!(b.dir_fsync_faults_applied(), 0, "nothing dirty, nothing synced");
            b.adopt(&["data/ab/abcd".to_string()]);
            let err = b.sync().await.unwrap_err();
            assert!(err.to_string().contains("fsync of the folder failed"), "{err}");
            assert_eq!(b.dir_fsync_faults_applied(), 1);
        });
    }

    #[test]
    fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path().join("repo"));
        rt().block_on(async {
            b.create().await.unwrap();
            b.put("data/ab/abcd", Bytes::from_static(b"data")).await.unwrap();
            b.sync().await.unwrap();
            assert_eq!(b.get("data/ab/abcd", u64::MAX).await.unwrap(), b"data");
            assert!(b.get("data/ab/none", u64::MAX).await.unwrap_err().is_not_found());
            // A leftover temporary file is not listed.
            std::fs::write(dir.path().join("repo/data/ab/abce.tmp-1234"), b"partial").unwrap();
            let list = b.list("data/").await.unwrap();
            assert_eq!(list, vec![Entry { key: "data/ab/abcd".into(), size: 4, storage_class: None }]);
            b.delete("data/ab/abcd").await.unwrap();
            b.delete("data/ab/abcd").await.unwrap();
            assert!(b.list("data/").await.unwrap().is_empty());
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
            b.put("data/ab/abcd", Bytes::from_static(b"data")).await.unwrap();
        });
        let reads = b.blocking_reads().expect("a local folder reads by blocking calls");
        assert_eq!(reads.get_blocking("data/ab/abcd", u64::MAX).unwrap(), b"data");
        assert!(reads.get_blocking("data/ab/none", u64::MAX).unwrap_err().is_not_found());
        std::fs::create_dir(dir.path().join("repo/data/ab/abce")).unwrap();
        let err = reads.get_blocking("data/ab/abce", u64::MAX).unwrap_err();
        assert!(matches!(err, BackendError::Io { ref key, .. } if key == "data/ab/abce"), "{err}");
        let stats = b.wire_stats();
        assert_eq!((stats.gets, stats.bytes_down), (3, 4));
    }
}
