//! The backup pipeline.
//!
//! ```text
//! walk (sorted, excludes) ─► compare with the parent's node ─► read + chunk + hash   (calling thread)
//!                                                                  │ new chunk ids only
//!                                                                  ▼
//!                                                       compress + encrypt          (rayon pool)
//!                                                                  ▼
//!                                                       put, many in flight         (tokio)
//! trees are assembled bottom-up as each directory's walk ends; the snapshot is
//! written only after every put has finished and the backend has synced.
//! ```
//!
//! Hashing happens on the walking thread, so a chunk's id is known at once:
//! trees are built without waiting on the pool, and a chunk that is already
//! stored is never compressed or encrypted. Memory is bounded by the byte
//! budget of chunks between the reader and the backend
//! ([`BackupOptions::bytes_in_flight`]), not by the size of the data set.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crate::blob::{self, Compression, Plaintext};
use crate::chunker::{Chunker, StreamChunker, is_zero};
use crate::crypto::{Keys, ObjectKind};
use crate::error::{Error, Result};
use crate::exclude::Excludes;
use crate::id::Id;
use crate::index::BlobSet;
use crate::metadata::{self, OwnerNames};
use crate::packer::Packer;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::snapshot::{SNAPSHOT_VERSION, Snapshot, Summary};
use crate::tree::{ChunkRef, Node, NodeKind, Timestamp, Tree};

/// Which earlier snapshot to compare against.
#[derive(Clone, Debug, Default)]
pub enum ParentChoice {
    /// The latest snapshot of the same host and paths.
    #[default]
    Auto,
    /// This snapshot.
    Snapshot(Id),
    /// None: read every file.
    None,
}

#[derive(Clone, Debug)]
pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    pub excludes: Excludes,
    pub tags: Vec<String>,
    /// The host name recorded; the machine's own by default.
    pub host: Option<String>,
    pub parent: ParentChoice,
    /// Read and hash everything, write nothing.
    pub dry_run: bool,
    /// Plaintext bytes of chunks allowed between the reader and the backend.
    /// The default, 24 MiB, keeps both cores of a small machine busy (32 MiB
    /// measured no faster) while a backup's peak memory stays near the
    /// 64 MiB that opening the repository (argon2id) takes anyway.
    pub bytes_in_flight: usize,
    pub change: ChangeDetection,
    /// Do not descend into directories on other file systems (mount points
    /// are kept, empty).
    pub one_file_system: bool,
    /// The time to record instead of the backup's start (importing old
    /// backups, tests of retention). Never in the future: the next backup
    /// trusts files modified before its parent's time (see
    /// [`TIMESTAMP_GRANULARITY_S`]), so a future time could hide a change.
    pub time: Option<jiff::ZonedDateTime>,
}

/// Which file attributes tell that a file changed since the parent snapshot.
/// Size and mtime always count; inode and ctime churn on some file systems
/// (network shares, FUSE, removable media) and can be ignored there.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChangeDetection {
    pub ignore_inode: bool,
    pub ignore_ctime: bool,
}

/// Coarsest timestamp granularity of the file systems coffer expects to
/// read (FAT's 2 s). A file whose mtime is this close to the start of the
/// parent backup may have changed again within the same timestamp tick after
/// it was read, so it is read again rather than trusted.
pub const TIMESTAMP_GRANULARITY_S: i64 = 2;

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            paths: Vec::new(),
            excludes: Excludes::default(),
            tags: Vec::new(),
            host: None,
            parent: ParentChoice::Auto,
            dry_run: false,
            bytes_in_flight: 24 * 1024 * 1024,
            change: ChangeDetection::default(),
            one_file_system: false,
            time: None,
        }
    }
}

/// What a backup did.
#[derive(Clone, Debug)]
pub struct BackupOutcome {
    /// `None` for a dry run.
    pub snapshot_id: Option<Id>,
    pub snapshot: Snapshot,
    pub parent: Option<Id>,
    /// What the per-host state noticed (see [`crate::state`]): a backup
    /// checks it itself, against the one listing of `snapshots/` it takes
    /// under its lock, so the caller should not list again to check.
    pub state: crate::state::StateReport,
}

/// A counting semaphore over bytes, blocking the reader when the pipeline
/// behind it is full.
struct ByteBudget {
    used: Mutex<usize>,
    freed: Condvar,
    cap: usize,
}

impl ByteBudget {
    fn acquire(&self, n: usize) {
        let Ok(mut used) = self.used.lock() else { return };
        // One item larger than the whole budget may pass alone.
        while *used > 0 && *used + n > self.cap {
            used = match self.freed.wait(used) {
                Ok(u) => u,
                Err(_) => return,
            };
        }
        *used += n;
    }

    fn release(&self, n: usize) {
        if let Ok(mut used) = self.used.lock() {
            *used = used.saturating_sub(n);
        }
        self.freed.notify_all();
    }
}

/// Tracks uploads in flight and the first failure among them.
#[derive(Default)]
struct InFlight {
    state: Mutex<(usize, Option<Error>)>,
    done: Condvar,
}

impl InFlight {
    fn start(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.0 += 1;
        }
    }

    fn finish(&self, result: Result<()>) {
        if let Ok(mut s) = self.state.lock() {
            s.0 -= 1;
            if let Err(e) = result {
                s.1.get_or_insert(e);
            }
        }
        self.done.notify_all();
    }

    fn failed(&self) -> bool {
        self.state.lock().map(|s| s.1.is_some()).unwrap_or(true)
    }

    /// Waits for every upload; returns the first error.
    fn wait(&self) -> Result<()> {
        let mut s = self.state.lock().map_err(|_| Error::InvalidInput("upload tracker poisoned".into()))?;
        while s.0 > 0 {
            s = self.done.wait(s).map_err(|_| Error::InvalidInput("upload tracker poisoned".into()))?;
        }
        match s.1.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// State shared between the walking thread and the upload tasks.
struct Uploader {
    keys: Arc<Keys>,
    repo_id: [u8; 32],
    compression: Compression,
    handle: tokio::runtime::Handle,
    /// `None` for a dry run, which stores nothing.
    packer: Option<Arc<Packer>>,
    budget: Arc<ByteBudget>,
    inflight: Arc<InFlight>,
    /// The blobs the repository has, from the index loaded under the lock.
    known: Arc<BlobSet>,
    new_ids: Mutex<HashSet<(bool, Id)>>,
    /// Plaintext bytes of new blobs (what a dry run reports as added).
    plain_added: AtomicU64,
    chunks_added: AtomicU64,
    trees_added: AtomicU64,
    /// The repository's cache folder: every tree this backup stores is
    /// copied there, so the next backup reads its parent's trees without a
    /// request (see [`crate::cache`]).
    cache_dir: Option<Arc<std::path::Path>>,
}

impl Uploader {
    fn has_chunk(&self, id: &Id) -> bool {
        self.known.contains(ObjectKind::Chunk, id)
            || self.new_ids.lock().map(|s| s.contains(&(false, *id))).unwrap_or(false)
    }

    /// Claims an id for upload; false if it is stored or being stored.
    fn claim(&self, kind: ObjectKind, id: &Id) -> bool {
        if self.known.contains(kind, id) {
            return false;
        }
        self.new_ids.lock().map(|mut s| s.insert((kind == ObjectKind::Tree, *id))).unwrap_or(false)
    }

    /// Stores a blob unless the repository has it. `plaintext` is encoded
    /// on the rayon pool and packed from the runtime.
    fn store(&self, kind: ObjectKind, id: Id, plaintext: Plaintext) {
        if !self.claim(kind, &id) {
            return;
        }
        match kind {
            ObjectKind::Tree => self.trees_added.fetch_add(1, Ordering::Relaxed),
            _ => self.chunks_added.fetch_add(1, Ordering::Relaxed),
        };
        let len = plaintext.len();
        self.plain_added.fetch_add(len as u64, Ordering::Relaxed);
        let Some(packer) = self.packer.clone() else { return };
        self.budget.acquire(len);
        self.inflight.start();
        let keys = self.keys.clone();
        let repo_id = self.repo_id;
        let compression = self.compression;
        let handle = self.handle.clone();
        let budget = self.budget.clone();
        let inflight = self.inflight.clone();
        let cache_dir = self.cache_dir.clone().filter(|_| kind == ObjectKind::Tree);
        rayon::spawn(move || {
            let stored = blob::encode_owned(&keys, &repo_id, kind, &id, plaintext, compression);
            handle.spawn(async move {
                // Chunks are at most 8 MiB and trees at most 256 MiB, so the
                // length always fits.
                let result = packer.add(kind, id, &stored, len as u32).await;
                if result.is_ok()
                    && let Some(dir) = &cache_dir
                {
                    crate::cache::write(dir, kind, &id, &stored);
                }
                budget.release(len);
                inflight.finish(result);
            });
        });
    }
}

/// The walk: everything the walking thread needs.
struct Walker<'a> {
    repo: &'a Repository,
    up: &'a Uploader,
    chunker: Chunker,
    excludes: &'a Excludes,
    owners: OwnerNames,
    progress: &'a dyn Progress,
    summary: Summary,
    /// The chunker's look-ahead buffer, kept from file to file.
    buffer: Vec<u8>,
    change: ChangeDetection,
    /// Files of the parent with an mtime at or after this instant are read
    /// again (see [`TIMESTAMP_GRANULARITY_S`]).
    racy_since: Option<Timestamp>,
    one_file_system: bool,
    /// The device of the backed-up path being walked.
    device: u64,
    /// Content of multiply-linked files already read in this backup, by
    /// (device, inode): a hard link is read once.
    hard_links: HashMap<(u64, u64), (Vec<ChunkRef>, u64)>,
    /// Ids of all-zero chunks by length: holes of sparse files are neither
    /// scanned nor hashed twice.
    zero_ids: HashMap<usize, Id>,
    /// The backup's shared lock: checked at every entry, so a backup whose
    /// lock was lost stops early instead of at the end.
    lock: Option<&'a crate::lock::LockGuard>,
}

/// The backed-up paths arranged as a tree of path components, so that the
/// snapshot's root mirrors the absolute paths (as restic's does).
#[derive(Default)]
struct PathTrie {
    children: BTreeMap<Vec<u8>, PathTrie>,
    /// This path itself was named for backup.
    target: bool,
}

impl PathTrie {
    fn insert(&mut self, path: &Path) {
        let mut node = self;
        for comp in path.components() {
            if let Component::Normal(name) = comp {
                node = node.children.entry(name.as_bytes().to_vec()).or_default();
            }
        }
        node.target = true;
    }
}

impl Walker<'_> {
    fn warn(&mut self, path: &Path, message: impl std::fmt::Display) {
        self.summary.errors += 1;
        self.progress.warning(path, &message.to_string());
    }

    fn load_parent_tree(&mut self, parent: Option<&Node>, path: &Path) -> Option<Tree> {
        let id = parent.filter(|n| n.kind == NodeKind::Dir)?.subtree?;
        match self.repo.load_tree(&id) {
            Ok(t) => Some(t),
            Err(e) => {
                // Not fatal: the files are read again instead.
                tracing::warn!("{}: cannot use the parent snapshot's tree: {e}", path.display());
                None
            }
        }
    }

    /// Stores a directory's listing. A listing larger than any client will
    /// read back is refused here, so no snapshot can reference one.
    fn store_tree(&mut self, tree: &Tree, path: &Path) -> Result<Id> {
        let plain = tree.to_bytes();
        if plain.len() > crate::repo::MAX_TREE_LEN {
            return Err(Error::InvalidInput(format!(
                "{}: the directory's listing takes {} bytes, more than the {} a tree may hold",
                path.display(),
                plain.len(),
                crate::repo::MAX_TREE_LEN
            )));
        }
        let id = self.repo.keys().id(&plain);
        self.up.store(ObjectKind::Tree, id, Plaintext::copy_of(&plain));
        Ok(id)
    }

    /// Builds the tree for one level of the path trie.
    fn archive_trie(&mut self, trie: &PathTrie, fs_path: &Path, parent: Option<&Tree>) -> Result<Id> {
        let mut nodes = Vec::new();
        for (name, child) in &trie.children {
            let name_os = OsStr::from_bytes(name);
            let path = fs_path.join(name_os);
            let parent_node = parent.and_then(|t| t.find(name));
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    self.warn(&path, e);
                    continue;
                }
            };
            if child.target {
                self.device = meta.dev();
                if let Some(node) = self.archive_entry(&path, name_os, &meta, parent_node)? {
                    nodes.push(node);
                }
            } else {
                let mut node = metadata::node_from_metadata(name_os, &meta, &self.owners);
                let ptree = self.load_parent_tree(parent_node, &path);
                node.subtree = Some(self.archive_trie(child, &path, ptree.as_ref())?);
                node.kind = NodeKind::Dir;
                nodes.push(node);
            }
        }
        self.store_tree(&Tree::new(nodes), fs_path)
    }

    /// Archives one entry; `None` when it could not be read (a warning was
    /// reported). Errors are reserved for failures of the whole backup.
    fn archive_entry(
        &mut self,
        path: &Path,
        name: &OsStr,
        meta: &Metadata,
        parent: Option<&Node>,
    ) -> Result<Option<Node>> {
        if self.up.inflight.failed() {
            return Err(self.up.inflight.wait().err().unwrap_or_else(|| Error::InvalidInput("upload failed".into())));
        }
        if let Some(lock) = self.lock {
            lock.alive()?;
        }
        let mut node = metadata::node_from_metadata(name, meta, &self.owners);
        match metadata::read_xattrs(path) {
            Ok(x) => node.xattrs = x,
            Err(e) => self.warn(path, format!("extended attributes not read: {e}")),
        }
        match node.kind {
            NodeKind::Dir => {
                self.summary.dirs += 1;
                if self.one_file_system && node.device != self.device {
                    // A mount point: kept, but not entered.
                    node.subtree = Some(self.store_tree(&Tree::new(Vec::new()), path)?);
                    return Ok(Some(node));
                }
                let ptree = self.load_parent_tree(parent, path);
                node.subtree = Some(self.archive_dir(path, ptree.as_ref())?);
            }
            NodeKind::File => return self.archive_file(path, node, parent),
            NodeKind::Symlink => match std::fs::read_link(path) {
                Ok(t) => node.target = Some(t.as_os_str().as_bytes().to_vec()),
                Err(e) => {
                    self.warn(path, e);
                    return Ok(None);
                }
            },
            _ => {}
        }
        Ok(Some(node))
    }

    fn archive_dir(&mut self, path: &Path, parent: Option<&Tree>) -> Result<Id> {
        let mut entries: Vec<(OsString, PathBuf)> = Vec::new();
        match std::fs::read_dir(path) {
            Ok(rd) => {
                for entry in rd {
                    match entry {
                        Ok(e) => entries.push((e.file_name(), e.path())),
                        Err(e) => self.warn(path, e),
                    }
                }
            }
            Err(e) => self.warn(path, e),
        }
        entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut nodes = Vec::with_capacity(entries.len());
        for (name, child) in entries {
            if self.excludes.is_excluded(&child) {
                continue;
            }
            let meta = match std::fs::symlink_metadata(&child) {
                Ok(m) => m,
                Err(e) => {
                    self.warn(&child, e);
                    continue;
                }
            };
            if (meta.is_dir() && self.excludes.is_tagged_dir(&child))
                || (meta.is_file() && self.excludes.is_too_large(meta.len()))
            {
                continue;
            }
            let parent_node = parent.and_then(|t| t.find(name.as_bytes()));
            if let Some(node) = self.archive_entry(&child, &name, &meta, parent_node)? {
                nodes.push(node);
            }
        }
        self.store_tree(&Tree::new(nodes), path)
    }

    fn archive_file(&mut self, path: &Path, mut node: Node, parent: Option<&Node>) -> Result<Option<Node>> {
        if let Some(p) = parent.filter(|p| self.unchanged(p, &node)) {
            // Invariant 4: reuse the parent's chunk list only if every chunk
            // it names is still in the repository.
            if p.content.iter().all(|c| self.up.has_chunk(&c.0)) {
                node.content = p.content.clone();
                node.size = p.size;
                self.summary.files_unchanged += 1;
                self.summary.bytes_total += node.size;
                return Ok(Some(node));
            }
            tracing::info!("{}: a chunk of the parent's copy is missing; reading the file again", path.display());
        }
        let link_key = (node.device, node.inode);
        if node.links > 1
            && let Some((content, size)) = self.hard_links.get(&link_key)
        {
            node.content = content.clone();
            node.size = *size;
            self.summary.files_unchanged += 1;
            self.summary.bytes_total += node.size;
            return Ok(Some(node));
        }
        self.progress.file_started(path);
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                self.warn(path, e);
                return Ok(None);
            }
        };
        let buffer = std::mem::take(&mut self.buffer);
        let mut stream = StreamChunker::with_buffer(&self.chunker, file, buffer, node.size as usize);
        let mut content = Vec::new();
        let mut size = 0u64;
        loop {
            match stream.next_chunk_into(Plaintext::copy_of) {
                Ok(Some(chunk)) => {
                    size +=
                        queue_chunk(self.repo.keys(), &mut self.zero_ids, self.up, self.progress, chunk, &mut content)
                }
                Ok(None) => break,
                Err(e) => {
                    self.buffer = stream.into_buffer();
                    self.warn(path, format!("read failed after {size} bytes: {e}"));
                    return Ok(None);
                }
            }
        }
        self.buffer = stream.into_buffer();
        if let Some(what) = changed_while_read(path, &node, size, self.change) {
            // The snapshot keeps what was read, with the size read and the
            // times seen before reading: the next backup finds the file's
            // times different and reads it again.
            self.progress.warning(path, &format!("changed while it was read ({what}); stored as read"));
            self.summary.files_changed_while_read += 1;
        }
        if node.links > 1 {
            self.hard_links.insert(link_key, (content.clone(), size));
        }
        node.content = content;
        node.size = size;
        self.summary.bytes_read += size;
        self.summary.bytes_total += size;
        match parent {
            Some(_) => self.summary.files_changed += 1,
            None => self.summary.files_new += 1,
        }
        self.progress.file_done();
        Ok(Some(node))
    }
}

impl Walker<'_> {
    /// Archives a stream (`backup --stdin`) as the one file of the
    /// snapshot's root, read to its end. Unlike a file's, a read error
    /// fails the backup: there is no source to read again, so a snapshot
    /// without it, or with only part of it, would be a silent loss.
    fn archive_stream(
        &mut self,
        name: &[u8],
        reader: &mut dyn std::io::Read,
        parent: Option<&Tree>,
        time: Timestamp,
    ) -> Result<Id> {
        let path = Path::new("/").join(OsStr::from_bytes(name));
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let mut node = Node::new(name.to_vec(), NodeKind::File);
        node.mode = 0o644;
        node.uid = uid;
        node.gid = gid;
        node.user = self.owners.user(uid);
        node.group = self.owners.group(gid);
        node.mtime = time;
        node.ctime = time;
        node.links = 1;
        self.progress.file_started(&path);
        let buffer = std::mem::take(&mut self.buffer);
        let mut stream = StreamChunker::with_buffer(&self.chunker, reader, buffer, usize::MAX);
        let mut content = Vec::new();
        let mut size = 0u64;
        loop {
            // A stream may be long: stop early, not at its end, when an
            // upload failed or the lock was lost.
            if self.up.inflight.failed() {
                return Err(self
                    .up
                    .inflight
                    .wait()
                    .err()
                    .unwrap_or_else(|| Error::InvalidInput("upload failed".into())));
            }
            if let Some(lock) = self.lock {
                lock.alive()?;
            }
            match stream.next_chunk_into(Plaintext::copy_of) {
                Ok(Some(chunk)) => {
                    size +=
                        queue_chunk(self.repo.keys(), &mut self.zero_ids, self.up, self.progress, chunk, &mut content)
                }
                Ok(None) => break,
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        self.buffer = stream.into_buffer();
        node.content = content;
        node.size = size;
        self.summary.bytes_read += size;
        self.summary.bytes_total += size;
        match parent.and_then(|t| t.find(name)) {
            Some(p) if p.kind == NodeKind::File => self.summary.files_changed += 1,
            _ => self.summary.files_new += 1,
        }
        self.progress.file_done();
        self.store_tree(&Tree::new(vec![node]), Path::new("/"))
    }
}

/// A chunk's id; an all-zero chunk's is computed once per length, in
/// `zero_ids`, so the holes of a sparse file are not hashed again.
/// Queues one chunk of a file or stream for upload, appends it to the
/// content list and counts its bytes; returns its length. (Not a method:
/// the chunker holds a borrow of the walker meanwhile.)
fn queue_chunk(
    keys: &Keys,
    zero_ids: &mut HashMap<usize, Id>,
    up: &Uploader,
    progress: &dyn Progress,
    chunk: Plaintext,
    content: &mut Vec<ChunkRef>,
) -> u64 {
    let len = chunk.len();
    let id = chunk_id(keys, zero_ids, &chunk);
    content.push(ChunkRef(id, len as u32));
    up.store(ObjectKind::Chunk, id, chunk);
    progress.bytes_done(len as u64);
    len as u64
}

fn chunk_id(keys: &Keys, zero_ids: &mut HashMap<usize, Id>, chunk: &Plaintext) -> Id {
    if is_zero(chunk.as_slice()) {
        *zero_ids.entry(chunk.len()).or_insert_with(|| keys.id(chunk.as_slice()))
    } else {
        keys.id(chunk.as_slice())
    }
}

/// What about a file differs, after it was read to its end, from what its
/// node (taken before reading) says and from the `read` bytes it gave; `None`
/// if nothing does. A file written to while it is read can hold a mix of old
/// and new data, which the snapshot keeps as it was read; the user is told.
fn changed_while_read(path: &Path, before: &Node, read: u64, change: ChangeDetection) -> Option<&'static str> {
    if read != before.size {
        return Some("its size changed");
    }
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Some("it was removed") };
    if meta.len() != read {
        Some("its size changed")
    } else if metadata::mtime(&meta) != before.mtime {
        Some("its modification time changed")
    } else if meta.ino() != before.inode && !change.ignore_inode {
        Some("it was replaced")
    } else if metadata::ctime(&meta) != before.ctime && !change.ignore_ctime {
        Some("its status change time changed")
    } else {
        None
    }
}

impl Walker<'_> {
    /// Whether a file looks unchanged since the parent snapshot.
    fn unchanged(&self, parent: &Node, now: &Node) -> bool {
        unchanged(parent, now, self.change, self.racy_since)
    }
}

fn unchanged(parent: &Node, now: &Node, change: ChangeDetection, racy_since: Option<Timestamp>) -> bool {
    parent.kind == NodeKind::File
        && now.kind == NodeKind::File
        && parent.size == now.size
        && parent.mtime == now.mtime
        && (change.ignore_ctime || parent.ctime == now.ctime)
        && (change.ignore_inode || parent.inode == now.inode)
        && racy_since.is_none_or(|since| parent.mtime < since)
}

/// Makes `path` absolute without resolving a symlink at its end, so that a
/// symlink named for backup is stored as a symlink.
pub fn absolute_path(path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path).map_err(|e| Error::io(path, e))?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name))
            if !matches!(abs.components().next_back(), Some(Component::ParentDir | Component::CurDir)) =>
        {
            let parent = std::fs::canonicalize(parent).map_err(|e| Error::io(parent, e))?;
            Ok(parent.join(name))
        }
        _ => std::fs::canonicalize(&abs).map_err(|e| Error::io(&abs, e)),
    }
}

/// Resolves and checks the paths to back up: each must exist. Nothing is
/// written before this succeeds.
pub fn resolve_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if paths.is_empty() {
        return Err(Error::InvalidInput("nothing to back up: give at least one path".into()));
    }
    let mut out = Vec::new();
    for p in paths {
        std::fs::symlink_metadata(p).map_err(|e| Error::io(p, e))?;
        out.push(absolute_path(p)?);
    }
    out.sort();
    out.dedup();
    // A path inside another named path is already covered by it.
    let all = out.clone();
    out.retain(|p| !all.iter().any(|q| q != p && p.starts_with(q)));
    Ok(out)
}

/// What a backup reads.
enum Source<'a> {
    /// The files and directories of [`BackupOptions::paths`].
    Paths,
    /// One stream, stored as the file `/NAME` (a single path component).
    Stream { name: Vec<u8>, reader: &'a mut dyn std::io::Read },
}

/// Runs a backup of [`BackupOptions::paths`] and, unless it is a dry run,
/// writes the snapshot.
pub fn backup(repo: &Repository, options: &BackupOptions, progress: &dyn Progress) -> Result<BackupOutcome> {
    run_backup(repo, options, Source::Paths, progress)
}

/// Backs up what `reader` gives, to its end, as one file named `name` at the
/// snapshot's root (`/NAME`; the snapshot's paths are `["/NAME"]`), as
/// restic's `backup --stdin` does. `options.paths` must be empty; excludes
/// and the change-detection options do not apply: the stream is always read,
/// and its chunks dedup with what the repository already has. The file gets
/// mode 0644, this process's user and group, and the snapshot's time as its
/// modification time. A read error fails the backup and writes no
/// snapshot: a reader can report a failed producer (a command that exited
/// non-zero) by an error at its end.
pub fn backup_stream(
    repo: &Repository,
    options: &BackupOptions,
    name: &str,
    reader: &mut dyn std::io::Read,
    progress: &dyn Progress,
) -> Result<BackupOutcome> {
    if !options.paths.is_empty() {
        return Err(Error::InvalidInput("a backup of a stream takes no paths".into()));
    }
    let name = stream_name(name)?;
    run_backup(repo, options, Source::Stream { name, reader }, progress)
}

/// The file name of a stream (see [`backup_stream`]), checked: one path
/// component, a leading `/` allowed (and dropped).
pub fn stream_name(name: &str) -> Result<Vec<u8>> {
    let bare = name.trim_start_matches('/');
    if !crate::tree::valid_name(bare.as_bytes()) {
        return Err(Error::InvalidInput(format!(
            "{name:?} cannot name the file at the snapshot's root: it must be one path component (not empty, `.` or `..`, and without `/`)"
        )));
    }
    Ok(bare.as_bytes().to_vec())
}

fn run_backup(
    repo: &Repository,
    options: &BackupOptions,
    source: Source<'_>,
    progress: &dyn Progress,
) -> Result<BackupOutcome> {
    let start = Instant::now();
    // The snapshot's time is when the backup started: every file was read
    // after it, which is what the next backup's racy-timestamp check needs.
    let started_at = jiff::ZonedDateTime::now();
    if let Some(t) = &options.time
        && t.timestamp() > started_at.timestamp()
    {
        return Err(Error::InvalidInput(format!("the snapshot time {t} is in the future")));
    }
    let now = options.time.clone().unwrap_or(started_at);
    let (paths, path_strings) = match &source {
        Source::Paths => {
            let paths = resolve_paths(&options.paths)?;
            let strings = paths.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            (paths, strings)
        }
        // A stream's parent (by default) is the latest snapshot of the same
        // host and stream name, found as for paths.
        Source::Stream { name, .. } => (Vec::new(), vec![format!("/{}", String::from_utf8_lossy(name))]),
    };
    let host = options.host.clone().unwrap_or_else(crate::repo::host_name);

    // Invariant 6: the shared lock is held from before the first look at the
    // repository (the snapshots, the chunk listing this backup reuses
    // chunks from) until the snapshot is written, so prune's exclusive phase
    // cannot delete anything in between. A dry run writes nothing and needs
    // no lock.
    let lock = if options.dry_run { None } else { Some(repo.lock_shared("backup")?) };

    // One listing of the snapshots serves the per-host state and the choice
    // of the parent.
    let listed = repo.list_ids(ObjectKind::Snapshot)?;
    let state = repo.check_state_listed(&listed);
    let snapshots = repo.load_snapshots(&listed)?;
    let parent_id = match &options.parent {
        ParentChoice::None => None,
        ParentChoice::Snapshot(id) => Some(*id),
        ParentChoice::Auto => {
            snapshots.iter().rev().find(|(_, s)| s.host == host && s.paths == path_strings).map(|(id, _)| *id)
        }
    };
    // Invariant 5: which blobs exist comes from the index checked against
    // fresh listings of the packs, loaded under the lock.
    let loaded = crate::index::load(repo)?;
    let packer = (!options.dry_run).then(|| Arc::new(repo.packer()));
    if let Some(packer) = &packer
        && !loaded.recovered.packs.is_empty()
    {
        // Packs an interrupted backup uploaded but did not index: their
        // headers were read, and are now written down as an index object,
        // so their blobs are reused here and by every later command.
        tracing::info!("indexing {} packs an earlier backup left unindexed", loaded.recovered.packs.len());
        // Their names become durable with this backup's (the killed one may
        // not have synced its folders), before any snapshot uses them.
        let keys: Vec<String> = loaded.recovered.packs.iter().map(|p| crate::pack::pack_key(p.kind, &p.id)).collect();
        repo.backend().adopt(&keys);
        repo.runtime().block_on(packer.write_index(loaded.recovered.packs.clone()))?;
    }
    let known = repo.set_blob_set(loaded.blobs);
    // A lock that could not be refreshed while the index loaded: stop
    // before relying on what was read.
    if let Some(lock) = &lock {
        lock.alive()?;
    }

    let (parent_tree, racy_since) = match parent_id {
        Some(id) => {
            let snap = match snapshots.iter().find(|(sid, _)| *sid == id) {
                Some((_, s)) => s.clone(),
                None => repo.load_snapshot(&id)?,
            };
            let since = snap.timestamp().ok().map(|t| Timestamp {
                sec: t.as_second().saturating_sub(TIMESTAMP_GRANULARITY_S),
                nsec: t.subsec_nanosecond().max(0) as u32,
            });
            // The walk reads the parent's trees one directory at a time;
            // any the cache lacks are fetched first, many at once. A
            // stream's backup reads only the root.
            if matches!(source, Source::Paths) {
                repo.warm_tree_cache(&snap.tree);
            }
            (Some(repo.load_tree(&snap.tree)?), since)
        }
        None => (None, None),
    };
    let host_previous = snapshots.iter().rev().find(|(_, s)| s.host == host);

    let up = Uploader {
        keys: repo.keys().clone(),
        repo_id: *repo.repo_id(),
        compression: repo.compression(),
        handle: repo.runtime().handle().clone(),
        packer: packer.clone(),
        budget: Arc::new(ByteBudget {
            used: Mutex::new(0),
            freed: Condvar::new(),
            cap: options.bytes_in_flight.max(1),
        }),
        inflight: Arc::new(InFlight::default()),
        known,
        new_ids: Mutex::new(HashSet::new()),
        plain_added: AtomicU64::new(0),
        chunks_added: AtomicU64::new(0),
        trees_added: AtomicU64::new(0),
        cache_dir: repo.cache_dir().map(Arc::from),
    };
    let mut walker = Walker {
        repo,
        up: &up,
        chunker: repo.chunker()?,
        excludes: &options.excludes,
        owners: OwnerNames::default(),
        progress,
        summary: Summary::default(),
        buffer: Vec::new(),
        change: options.change,
        racy_since,
        one_file_system: options.one_file_system,
        device: 0,
        hard_links: HashMap::new(),
        zero_ids: HashMap::new(),
        lock: lock.as_ref(),
    };

    let walked = match source {
        Source::Stream { name, reader } => {
            let ts = now.timestamp();
            let time = Timestamp { sec: ts.as_second(), nsec: ts.subsec_nanosecond().max(0) as u32 };
            walker.archive_stream(&name, reader, parent_tree.as_ref(), time)
        }
        Source::Paths => {
            let mut trie = PathTrie::default();
            for p in &paths {
                trie.insert(p);
            }
            if trie.target {
                // `/` itself was named: the root tree is the file system's root.
                walker.device = std::fs::symlink_metadata("/").map(|m| m.dev()).unwrap_or(0);
                walker.archive_dir(Path::new("/"), parent_tree.as_ref())
            } else {
                walker.archive_trie(&trie, Path::new("/"), parent_tree.as_ref())
            }
        }
    };
    // Wait for the uploads even when the walk failed, so no task outlives us.
    let uploaded = up.inflight.wait();
    let root = walked?;
    uploaded?;
    // Invariants 1 and 2: every pack and index object the snapshot relies
    // on is durable before it is written (the flush syncs).
    let stored = match &packer {
        Some(packer) => Some(repo.runtime().block_on(packer.flush())?),
        None => None,
    };
    if stored.is_some() {
        // What this handle reads through must now include the new packs
        // (the lost-lock confirmation below reads this snapshot's trees).
        repo.forget_blob_set();
    }

    let mut summary = walker.summary;
    summary.bytes_added = match &stored {
        Some(stored) => stored.pack_bytes,
        None => up.plain_added.load(Ordering::Relaxed),
    };
    summary.chunks_added = up.chunks_added.load(Ordering::Relaxed);
    summary.trees_added = up.trees_added.load(Ordering::Relaxed);
    summary.duration_ms = start.elapsed().as_millis() as u64;

    let euid = nix::unistd::geteuid();
    let snapshot = Snapshot {
        version: SNAPSHOT_VERSION,
        time: now.timestamp().display_with_offset(now.offset()).to_string(),
        host,
        user: OwnerNames::default().user(euid.as_raw()).unwrap_or_default(),
        uid: euid.as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        paths: path_strings,
        tags: options.tags.clone(),
        tree: root,
        parent: parent_id,
        host_sequence: host_previous.map_or(1, |(_, s)| s.host_sequence + 1),
        host_previous: host_previous.map(|(id, _)| *id),
        original: None,
        summary,
        program_version: format!("coffer {}", crate::VERSION),
    };
    let snapshot_id = match &lock {
        None => None,
        Some(lock) => {
            // Re-read our own lock just before committing: if it was lost,
            // a prune may have deleted chunks this snapshot reuses.
            lock.check()?;
            let id = repo.save_snapshot(&snapshot)?;
            // And once more after: the lock may have been lost in the
            // window between the check and the write landing.
            if let Err(lost) = lock.check() {
                confirm_after_lost_lock(repo, &id, &lost)?;
            }
            Some(id)
        }
    };
    if let Some(lock) = lock
        && let Err(e) = lock.release()
    {
        // The snapshot is written; a lock left behind turns stale and is
        // ignored, so this is not the backup's failure.
        tracing::warn!("could not remove the backup's lock: {e}");
    }
    Ok(BackupOutcome { snapshot_id, snapshot, parent: parent_id, state })
}

/// The backup's lock was found lost right after its snapshot was written.
/// Until then every check passed, so the only data the snapshot can be
/// missing is what a prune deleted in that window (at most the margin
/// before the stale time, see docs/threat-model.md). Under a fresh shared
/// lock, which waits for any prune to finish, every tree and chunk the
/// snapshot references is looked up in fresh listings; if anything is
/// missing, or this cannot be shown, the snapshot is removed again and the
/// backup fails, so that no snapshot ever references deleted data.
fn confirm_after_lost_lock(repo: &Repository, id: &Id, lost: &Error) -> Result<()> {
    tracing::warn!("{lost}, after snapshot {id} was written: checking that everything it references still exists");
    let missing = (|| -> Result<Option<String>> {
        let shared = repo.lock_shared("backup (confirming its snapshot)")?;
        // One fresh load of the index, under the new lock, serves both the
        // marking and the lookups below.
        let stored = repo.reload_blob_set()?;
        let mut marks = crate::prune::Marks::default();
        match crate::prune::mark_snapshots(repo, &HashSet::from([*id]), &mut marks, Some(&shared)) {
            Ok(()) => {}
            Err(Error::Missing { kind, id }) => return Ok(Some(format!("{kind} {id} it references is missing"))),
            Err(e) => return Err(e),
        }
        for (kind, marked) in [(ObjectKind::Tree, &marks.trees), (ObjectKind::Chunk, &marks.chunks)] {
            let gone = marked.iter().filter(|m| !stored.contains(kind, m)).count();
            if gone > 0 {
                return Ok(Some(format!("{gone} {}s it references are missing", kind.name())));
            }
        }
        shared.release()?;
        Ok(None)
    })();
    let reason = match missing {
        Ok(None) => {
            tracing::warn!("snapshot {id}: everything it references still exists; it stands");
            return Ok(());
        }
        Ok(Some(why)) => why,
        Err(e) => format!("it could not be checked ({e})"),
    };
    if let Err(e) = repo.remove_snapshot(id) {
        tracing::error!("could not remove snapshot {id}, which may reference deleted data: {e}");
    } else {
        repo.forgotten(&[*id]);
    }
    Err(Error::CommitLost { snapshot: *id, reason })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::backend::local::LocalBackend;
    use crate::key::KdfParams;
    use crate::progress::NoProgress;
    use crate::repo::InitOptions;

    #[test]
    fn byte_budget_blocks_until_released() {
        let budget = Arc::new(ByteBudget { used: Mutex::new(0), freed: Condvar::new(), cap: 10 });
        budget.acquire(8);
        // An item larger than the cap passes only when nothing else is in flight.
        let b2 = budget.clone();
        let waiter = std::thread::spawn(move || {
            b2.acquire(20);
            b2.release(20);
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished(), "must wait for the first item");
        budget.release(8);
        waiter.join().unwrap();
        assert_eq!(*budget.used.lock().unwrap(), 0);
    }

    #[test]
    fn change_detection_compares_size_times_and_inode() {
        let mut a = Node::new(b"f".to_vec(), NodeKind::File);
        a.size = 10;
        a.inode = 5;
        let same = a.clone();
        let strict = ChangeDetection::default();
        assert!(unchanged(&a, &same, strict, None));
        for change in [
            |n: &mut Node| n.size = 11,
            |n: &mut Node| n.mtime.nsec = 1,
            |n: &mut Node| n.ctime.sec = 1,
            |n: &mut Node| n.inode = 6,
            |n: &mut Node| n.kind = NodeKind::Symlink,
        ] {
            let mut b = a.clone();
            change(&mut b);
            assert!(!unchanged(&a, &b, strict, None));
        }
        let mut moved = a.clone();
        moved.inode = 99;
        moved.ctime.sec = 99;
        assert!(unchanged(&a, &moved, ChangeDetection { ignore_inode: true, ignore_ctime: true }, None));
        assert!(!unchanged(&a, &moved, ChangeDetection { ignore_inode: true, ignore_ctime: false }, None));
        // Modified within the timestamp granularity of the parent backup: read again.
        let mut recent = a.clone();
        recent.mtime = Timestamp { sec: 1000, nsec: 0 };
        assert!(!unchanged(&recent, &recent, strict, Some(Timestamp { sec: 1000, nsec: 0 })));
        assert!(unchanged(&recent, &recent, strict, Some(Timestamp { sec: 1000, nsec: 1 })));
    }

    #[test]
    fn paths_are_checked_and_nested_ones_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::create_dir_all(a.join("b")).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("link")).unwrap();
        let got = resolve_paths(&[a.join("b"), a.clone(), dir.path().join("link")]).unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(got, vec![root.join("a"), root.join("link")], "the symlink itself, not its target");
        assert!(matches!(resolve_paths(&[dir.path().join("missing")]), Err(Error::Io { .. })));
        assert!(resolve_paths(&[]).is_err());
    }

    fn test_repo(dir: &Path) -> Repository {
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.join("repo")));
        let options =
            InitOptions { kdf: KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }, ..Default::default() };
        Repository::init(backend, b"pw", &options).unwrap()
    }

    #[test]
    fn stream_is_one_file_at_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let repo = test_repo(dir.path());
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let out =
            backup_stream(&repo, &BackupOptions::default(), "/db.sql", &mut data.as_slice(), &NoProgress).unwrap();
        assert_eq!(out.snapshot.paths, ["/db.sql"]);
        assert_eq!((out.snapshot.summary.files_new, out.snapshot.summary.bytes_read), (1, data.len() as u64));
        let root = repo.load_tree(&out.snapshot.tree).unwrap();
        assert_eq!(root.nodes.len(), 1);
        let node = &root.nodes[0];
        assert_eq!(
            (node.name.as_slice(), node.kind, node.mode, node.size),
            (b"db.sql".as_slice(), NodeKind::File, 0o644, data.len() as u64)
        );
        assert_eq!(node.uid, nix::unistd::geteuid().as_raw());
        let back: Vec<u8> = node.content.iter().flat_map(|c| repo.load_chunk(&c.0).unwrap().to_vec()).collect();
        assert_eq!(back, data);
        // The same bytes again: the previous snapshot is the parent, and no
        // chunk is new.
        let again =
            backup_stream(&repo, &BackupOptions::default(), "db.sql", &mut data.as_slice(), &NoProgress).unwrap();
        assert_eq!(again.parent, out.snapshot_id);
        assert_eq!((again.snapshot.summary.chunks_added, again.snapshot.summary.files_changed), (0, 1));
    }

    #[test]
    fn stream_read_error_leaves_no_snapshot() {
        struct Failing(usize);
        impl std::io::Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("the producer failed"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(7);
                self.0 -= n;
                Ok(n)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let repo = test_repo(dir.path());
        let err =
            backup_stream(&repo, &BackupOptions::default(), "stdin", &mut Failing(100_000), &NoProgress).unwrap_err();
        assert!(err.to_string().contains("the producer failed"), "{err}");
        assert!(repo.list_ids(ObjectKind::Snapshot).unwrap().is_empty());
        for bad in ["", "/", "a/b", "..", "."] {
            assert!(stream_name(bad).is_err(), "{bad:?}");
        }
        let options = BackupOptions { paths: vec![dir.path().to_path_buf()], ..Default::default() };
        assert!(backup_stream(&repo, &options, "stdin", &mut [].as_slice(), &NoProgress).is_err());
    }

    #[test]
    fn failed_upload_leaves_no_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let repo_dir = dir.path().join("repo");
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(&repo_dir));
        let options =
            InitOptions { kdf: KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }, ..Default::default() };
        let repo = Repository::init(backend, b"pw", &options).unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), vec![7u8; 100_000]).unwrap();
        // Make every data pack folder unwritable by replacing it with a file.
        for i in 0..=255u8 {
            let d = repo_dir.join("data").join(format!("{i:02x}"));
            std::fs::remove_dir(&d).unwrap();
            std::fs::write(&d, b"").unwrap();
        }
        let err = backup(&repo, &BackupOptions { paths: vec![src], ..Default::default() }, &NoProgress).unwrap_err();
        assert!(matches!(err, Error::Backend(_)), "{err}");
        assert!(repo.list_ids(ObjectKind::Snapshot).unwrap().is_empty());
    }
}
