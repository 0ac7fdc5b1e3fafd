//! The FUSE file system: answers the kernel's requests from the inode
//! table, the trees of the snapshots and the chunk store.
//!
//! Requests arrive on several FUSE worker threads at once. The repository's
//! methods block, so each worker waits for its own fetch while the others go
//! on; sequential readers have the next chunks fetched in the background.
//! No lock is held while waiting for the repository.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use coffer_core::crypto::ObjectKind;
use coffer_core::repo::Repository;
use coffer_core::snapshot::Snapshot;
use coffer_core::tree::{ChunkRef, Node, NodeKind, Timestamp, Tree};
use coffer_core::{Error, Id};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, OpenAccMode,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyXattr,
    Request,
};

use crate::chunks::ChunkStore;
use crate::inodes::{Inodes, What, is_hard_linked};
use crate::layout::Layout;
use crate::lru::Lru;

/// How long the kernel may keep what it learnt about a snapshot's entries:
/// they never change.
const TTL_SNAPSHOT: Duration = Duration::from_secs(24 * 3600);
/// How long for the folders above the snapshots, which a backup can change.
const TTL_MADE: Duration = Duration::from_secs(1);
/// Listing or looking up a missing name in a folder above the snapshots
/// re-reads the snapshot list at most this often.
const REFRESH_DEBOUNCE: Duration = Duration::from_secs(1);
/// Block size reported to `stat`: `cp`, `cat` and most programs read and
/// write that much at a time (at least 128 KiB, in coreutils).
///
/// 256 KiB, not more: with direct I/O each read is one request, and 8,192
/// requests per 2 GiB cost little, but a copy out of the mount writes in the
/// same sizes, and the kernel fills the destination's page cache with folios
/// as large as each write. With 1 MiB, `cp` of a 2 GiB file spent 2.9–6.7
/// CPU-seconds writing on a VM whose free memory is handed back to the host
/// in large blocks (a large folio lands on memory the host must fault in
/// again), against 0.6–0.8 s with 128 or 256 KiB writes; see
/// docs/performance.md ("What `cp` out of the mount measures").
const BLOCK_SIZE: u32 = 256 << 10;

/// Settings of a mounted file system, derived from [`crate::MountOptions`].
pub struct Settings {
    pub cache_bytes: u64,
    pub tree_cache_bytes: u64,
    pub prefetch_bytes: u64,
    pub max_in_flight: usize,
    /// Threads reading (from a local folder) and decoding prefetched chunks.
    pub workers: usize,
    /// Reads through the kernel's page cache (see `MountOptions::page_cache`).
    pub page_cache: bool,
}

pub struct CofferFs {
    repo: Arc<Repository>,
    inodes: RwLock<Inodes>,
    chunks: Arc<ChunkStore>,
    trees: Mutex<Lru<Id, Arc<Tree>>>,
    snapshots: Mutex<HashMap<Id, Snapshot>>,
    /// When the snapshot list was last read; held while it is re-read.
    refreshed: Mutex<Option<Instant>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_handle: AtomicU64,
    prefetch_bytes: u64,
    mounted_at: SystemTime,
    uid: u32,
    gid: u32,
    /// Whether files are opened for direct I/O (see the `init` method).
    direct_io: bool,
    page_cache: bool,
}

enum Handle {
    File(Arc<OpenFile>),
    /// The entries of a folder as they were when it was opened, so that a
    /// listing read in several requests is consistent.
    Dir(Arc<Vec<Listed>>),
}

/// One entry of a folder listing, with its attributes for `readdirplus`
/// (a listing and the `stat` of every entry in one request, as `ls -l`
/// and Samba want them).
struct Listed {
    name: Vec<u8>,
    attr: FileAttr,
    ttl: Duration,
}

struct OpenFile {
    path: String,
    /// The folder the file is in, and its entry there: a reader that gets
    /// to the end of the file has the next files' first chunks fetched.
    tree: Arc<Tree>,
    index: usize,
    chunks: Vec<ChunkRef>,
    /// Where each chunk starts in the file.
    starts: Vec<u64>,
    size: u64,
    /// The last chunk a read touched, to tell sequential readers.
    last_chunk: AtomicUsize,
}

/// Whatever keeps the repository from giving the bytes (a damaged or
/// missing object, a failing backend) is an I/O error for the reader.
fn errno_of(_e: &Error) -> Errno {
    Errno::EIO
}

fn system_time(t: &Timestamp) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(t.nsec.min(999_999_999)));
    if t.sec >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.sec as u64) + nanos
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + nanos
    }
}

fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Socket => FileType::Socket,
        NodeKind::CharDevice => FileType::CharDevice,
        NodeKind::BlockDevice => FileType::BlockDevice,
    }
}

/// The attributes of a snapshot's entry, as recorded.
fn node_attr(ino: u64, node: &Node) -> FileAttr {
    let size = match node.kind {
        NodeKind::File => node.size,
        NodeKind::Symlink => node.target.as_ref().map_or(0, |t| t.len() as u64),
        _ => 0,
    };
    let nlink = if is_hard_linked(node) { u32::try_from(node.links).unwrap_or(u32::MAX) } else { 1 };
    let mtime = system_time(&node.mtime);
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: system_time(&node.ctime),
        crtime: mtime,
        kind: file_type(node.kind),
        perm: (node.mode & 0o7777) as u16,
        nlink,
        uid: node.uid,
        gid: node.gid,
        rdev: node.rdev as u32,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

fn dir_attr(ino: u64, time: SystemTime, uid: u32, gid: u32) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: time,
        mtime: time,
        ctime: time,
        crtime: time,
        kind: FileType::Directory,
        perm: 0o555,
        nlink: 1,
        uid,
        gid,
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

/// What a request found at an inode.
enum Found {
    /// A folder or link the mount makes, with its attributes.
    Made(FileAttr, What),
    /// An entry of a snapshot: entry `.2` of the tree `.1`.
    Entry(FileAttr, Arc<Tree>, usize),
}

impl Found {
    fn attr(&self) -> &FileAttr {
        match self {
            Found::Made(a, _) | Found::Entry(a, _, _) => a,
        }
    }

    fn ttl(&self) -> Duration {
        match self {
            Found::Made(_, What::Snapshot { .. }) | Found::Entry(..) => TTL_SNAPSHOT,
            Found::Made(..) => TTL_MADE,
        }
    }
}

impl CofferFs {
    pub fn new(repo: Arc<Repository>, settings: &Settings) -> Result<CofferFs, Error> {
        let blobs = repo.blob_set()?;
        let chunks = Arc::new(ChunkStore::new(
            repo.clone(),
            blobs,
            settings.cache_bytes,
            settings.max_in_flight,
            settings.workers,
        ));
        let fs = CofferFs {
            repo,
            inodes: RwLock::new(Inodes::new()),
            chunks,
            trees: Mutex::new(Lru::new(settings.tree_cache_bytes)),
            snapshots: Mutex::new(HashMap::new()),
            refreshed: Mutex::new(None),
            handles: Mutex::new(HashMap::new()),
            direct_io: false,
            page_cache: settings.page_cache,
            next_handle: AtomicU64::new(1),
            prefetch_bytes: settings.prefetch_bytes,
            mounted_at: SystemTime::now(),
            uid: nix_euid(),
            gid: nix_egid(),
        };
        fs.refresh(Duration::ZERO)?;
        Ok(fs)
    }

    /// The chunk store, for tests of its bound.
    pub fn chunk_store(&self) -> &Arc<ChunkStore> {
        &self.chunks
    }

    /// Re-reads the snapshot list unless it was read less than `min_age`
    /// ago. Snapshots already known are not fetched again; one that cannot
    /// be read is left out with a warning.
    pub fn refresh(&self, min_age: Duration) -> Result<(), Error> {
        let mut refreshed = self.refreshed.lock().unwrap_or_else(|e| e.into_inner());
        if refreshed.is_some_and(|t| t.elapsed() < min_age) {
            return Ok(());
        }
        let ids = self.repo.list_ids(ObjectKind::Snapshot)?;
        let known: HashSet<Id> = self.snapshots.lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect();
        let mut loaded = Vec::new();
        for id in ids.iter().filter(|id| !known.contains(*id)) {
            match self.repo.load_snapshot(id) {
                Ok(s) => loaded.push((*id, s)),
                Err(e) => tracing::warn!("snapshot {} is left out of the mount: {e}", id.short()),
            }
        }
        let mut snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        if !loaded.is_empty() && refreshed.is_some() {
            // New snapshots bring new packs: read the index again.
            match self.repo.reload_blob_set() {
                Ok(blobs) => self.chunks.set_blobs(blobs),
                Err(e) => tracing::warn!("cannot read the index again, new snapshots may not read: {e}"),
            }
        }
        snapshots.retain(|id, _| ids.binary_search(id).is_ok());
        snapshots.extend(loaded);
        let mut list: Vec<(Id, Snapshot)> = snapshots.iter().map(|(id, s)| (*id, s.clone())).collect();
        list.sort_by(|a, b| (a.1.timestamp().ok(), &a.1.time, a.0).cmp(&(b.1.timestamp().ok(), &b.1.time, b.0)));
        let layout = Layout::new(&list);
        self.inodes.write().unwrap_or_else(|e| e.into_inner()).apply(&layout, &snapshots);
        *refreshed = Some(Instant::now());
        Ok(())
    }

    fn inode(&self, ino: u64) -> Option<crate::inodes::Inode> {
        self.inodes.read().unwrap_or_else(|e| e.into_inner()).get(ino).cloned()
    }

    fn path(&self, ino: u64) -> String {
        self.inodes.read().unwrap_or_else(|e| e.into_inner()).path(ino)
    }

    /// A tree, from the cache or the repository. A tree that cannot be read
    /// is logged with the folder that needs it.
    fn tree(&self, id: &Id, ino: u64) -> Result<Arc<Tree>, Errno> {
        if let Some(t) = self.trees.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            return Ok(t);
        }
        match self.repo.load_tree(id) {
            Ok(tree) => {
                let cost: u64 =
                    tree.nodes.iter().map(|n| 200 + n.name.len() as u64 + 40 * n.content.len() as u64).sum();
                let tree = Arc::new(tree);
                self.trees.lock().unwrap_or_else(|e| e.into_inner()).insert(*id, tree.clone(), cost);
                Ok(tree)
            }
            Err(e) => {
                tracing::error!("{}: cannot read its folder listing (tree {}): {e}", self.path(ino), id.to_hex());
                Err(errno_of(&e))
            }
        }
    }

    /// The tree a folder inode shows, if it is a snapshot's folder or one of
    /// its subfolders.
    fn tree_of(what: &What) -> Option<Id> {
        match what {
            What::Snapshot { tree, .. } => Some(*tree),
            What::Entry { subtree, .. } => *subtree,
            _ => None,
        }
    }

    fn find(&self, ino: u64) -> Result<Found, Errno> {
        let inode = self.inode(ino).ok_or(Errno::ENOENT)?;
        match inode.what {
            What::Folder { .. } => Ok(Found::Made(dir_attr(ino, self.mounted_at, self.uid, self.gid), inode.what)),
            What::Snapshot { time, uid, gid, .. } => Ok(Found::Made(dir_attr(ino, time, uid, gid), inode.what)),
            What::Latest { ref target } => {
                let mut attr = dir_attr(ino, self.mounted_at, self.uid, self.gid);
                attr.kind = FileType::Symlink;
                attr.perm = 0o777;
                attr.size = target.len() as u64;
                Ok(Found::Made(attr, inode.what))
            }
            What::Entry { dir, index, .. } => {
                let tree = self.tree(&dir, inode.parent)?;
                let node = tree.nodes.get(index as usize).ok_or(Errno::EIO)?;
                Ok(Found::Entry(node_attr(ino, node), tree.clone(), index as usize))
            }
        }
    }

    fn lookup_name(&self, parent: u64, name: &[u8]) -> Result<Found, Errno> {
        let inode = self.inode(parent).ok_or(Errno::ENOENT)?;
        if let What::Folder { entries } = &inode.what {
            let ino = match entries.get(name) {
                Some(&ino) => ino,
                None => {
                    // Perhaps a snapshot made since the list was read.
                    let _ = self.refresh(REFRESH_DEBOUNCE);
                    let again = self.inode(parent).ok_or(Errno::ENOENT)?;
                    match again.what {
                        What::Folder { entries } => entries.get(name).copied().ok_or(Errno::ENOENT)?,
                        _ => return Err(Errno::ENOENT),
                    }
                }
            };
            return self.find(ino);
        }
        let dir = Self::tree_of(&inode.what).ok_or(Errno::ENOTDIR)?;
        let tree = self.tree(&dir, parent)?;
        let index = tree.nodes.binary_search_by(|n| n.name.as_slice().cmp(name)).map_err(|_| Errno::ENOENT)?;
        let node = &tree.nodes[index];
        let ino = self.inodes.write().unwrap_or_else(|e| e.into_inner()).entry(parent, dir, index as u32, node);
        let attr = node_attr(ino, node);
        Ok(Found::Entry(attr, tree, index))
    }

    /// The listing an `opendir` made.
    fn listing(&self, fh: FileHandle) -> Option<Arc<Vec<Listed>>> {
        match self.handles.lock().unwrap_or_else(|e| e.into_inner()).get(&fh.0) {
            Some(Handle::Dir(d)) => Some(d.clone()),
            _ => None,
        }
    }

    fn new_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap_or_else(|e| e.into_inner()).insert(fh, handle);
        fh
    }

    fn open_dir(&self, ino: u64) -> Result<Vec<Listed>, Errno> {
        let inode = self.inode(ino).ok_or(Errno::ENOENT)?;
        let this = self.find(ino)?;
        let parent = self.find(inode.parent)?;
        let mut out = vec![
            Listed { name: b".".to_vec(), attr: *this.attr(), ttl: this.ttl() },
            Listed { name: b"..".to_vec(), attr: *parent.attr(), ttl: parent.ttl() },
        ];
        if let What::Folder { .. } = inode.what {
            // A listing is a re-read: show snapshots made since.
            if let Err(e) = self.refresh(REFRESH_DEBOUNCE) {
                tracing::warn!("cannot re-read the snapshot list: {e}");
            }
            let Some(What::Folder { entries }) = self.inode(ino).map(|i| i.what) else { return Err(Errno::ENOENT) };
            for (name, &child) in entries.iter() {
                // Folders and links the mount makes: no I/O to find them.
                let found = self.find(child)?;
                out.push(Listed { name: name.clone(), attr: *found.attr(), ttl: found.ttl() });
            }
            return Ok(out);
        }
        let dir = Self::tree_of(&inode.what).ok_or(Errno::ENOTDIR)?;
        let tree = self.tree(&dir, ino)?;
        let mut inodes = self.inodes.write().unwrap_or_else(|e| e.into_inner());
        for (i, node) in tree.nodes.iter().enumerate() {
            let child = inodes.entry(ino, dir, i as u32, node);
            out.push(Listed { name: node.name.clone(), attr: node_attr(child, node), ttl: TTL_SNAPSHOT });
        }
        Ok(out)
    }

    fn open_file(&self, ino: u64) -> Result<OpenFile, Errno> {
        let Found::Entry(_, tree, index) = self.find(ino)? else { return Err(Errno::EISDIR) };
        let node = &tree.nodes[index];
        if node.kind != NodeKind::File {
            return Err(Errno::EINVAL);
        }
        let mut starts = Vec::with_capacity(node.content.len());
        let mut size = 0u64;
        for c in &node.content {
            starts.push(size);
            size += u64::from(c.1);
        }
        let path = self.path(ino);
        if size != node.size {
            tracing::error!("{path}: its chunks hold {size} bytes, the snapshot records {}", node.size);
            return Err(Errno::EIO);
        }
        Ok(OpenFile {
            path,
            chunks: node.content.clone(),
            tree: tree.clone(),
            index,
            starts,
            size,
            last_chunk: AtomicUsize::new(usize::MAX),
        })
    }

    /// The bytes of `file` from `offset`, at most `size` of them. A read
    /// within one chunk (most of them) is answered from the cached chunk
    /// itself, without a copy.
    fn read_file(&self, file: &OpenFile, offset: u64, size: u32) -> Result<Bytes, Errno> {
        if offset >= file.size || size == 0 {
            return Ok(Bytes::Owned(Vec::new()));
        }
        let end = file.size.min(offset.saturating_add(u64::from(size)));
        let first = file.starts.partition_point(|&s| s <= offset).saturating_sub(1);
        let last = file.starts.partition_point(|&s| s < end).saturating_sub(1);
        let previous = file.last_chunk.swap(last, Ordering::Relaxed);
        if first == previous || first == previous.wrapping_add(1) {
            self.prefetch_after(file, last + 1);
        }
        let mut out = Vec::new();
        for i in first..=last {
            let chunk = &file.chunks[i];
            let data = self.chunks.get(chunk).map_err(|e| {
                tracing::error!(
                    "{}: chunk {} (bytes {}..) cannot be read: {e}",
                    file.path,
                    chunk.0.to_hex(),
                    file.starts[i]
                );
                errno_of(&e)
            })?;
            let start = file.starts[i];
            let from = (offset.max(start) - start) as usize;
            let to = (end.min(start + data.len() as u64) - start) as usize;
            if first == last {
                return Ok(Bytes::Chunk(data, from..to.max(from)));
            }
            if from < to {
                if out.is_empty() {
                    out.reserve_exact((end - offset) as usize);
                }
                out.extend_from_slice(&data[from..to]);
            }
        }
        Ok(Bytes::Owned(out))
    }

    /// Starts fetching what a sequential reader needs next: the file's
    /// chunks from `from` on and, once that reaches the end of the file, the
    /// chunks of the files after it in its folder, which `cp -r`, `rsync`
    /// and photo viewers read next (in name order, as they are listed).
    /// Bounded by the prefetch window, in bytes and in fetches.
    fn prefetch_after(&self, file: &OpenFile, from: usize) {
        let next_files = file.tree.nodes.get(file.index + 1..).unwrap_or_default().iter();
        let next_chunks = next_files.filter(|n| n.kind == NodeKind::File).flat_map(|n| n.content.iter());
        let mut ahead = 0u64;
        let wanted =
            file.chunks.iter().skip(from).chain(next_chunks).take(self.chunks.max_in_flight()).take_while(|c| {
                ahead += u64::from(c.1);
                ahead <= self.prefetch_bytes
            });
        self.chunks.prefetch_all(wanted.copied());
    }
}

/// What a read answers with.
enum Bytes {
    /// A range of one decrypted chunk.
    Chunk(crate::chunks::Chunk, std::ops::Range<usize>),
    /// Bytes gathered from several chunks.
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Chunk(c, r) => &c[r.clone()],
            Bytes::Owned(v) => v,
        }
    }
}

fn nix_euid() -> u32 {
    // SAFETY: geteuid and getegid cannot fail and touch no memory.
    unsafe { libc::geteuid() }
}

fn nix_egid() -> u32 {
    // SAFETY: as above.
    unsafe { libc::getegid() }
}

impl fuser::Filesystem for CofferFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // The largest read-ahead the kernel offers (it does not offer more
        // than its default): fewer round trips for sequential readers.
        if let Err(max) = config.set_max_readahead(1 << 20) {
            let _ = config.set_max_readahead(max);
        }
        // Listings come with every entry's attributes, where the kernel can.
        let plus = InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO;
        if config.add_capabilities(plus).is_err() {
            tracing::debug!("the kernel does not offer readdirplus");
        }
        // Reads go straight from the decrypted chunk into the reader's
        // buffer, not through the kernel's page cache: that cache would
        // take a second copy of every byte (and, for a large file, as much
        // memory as the file), and the chunk cache serves repeated reads
        // already. Only where the kernel still lets such files be mapped
        // (Linux 6.6 and later), so that image viewers and programs that
        // mmap their input keep working.
        self.direct_io = !self.page_cache && config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP).is_ok();
        if !self.page_cache && !self.direct_io {
            tracing::info!(
                "the kernel cannot map files opened for direct I/O (Linux < 6.6): reading through its page cache"
            );
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup_name(parent.0, name.as_bytes()) {
            Ok(found) => reply.entry(&found.ttl(), found.attr(), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.find(ino.0) {
            Ok(found) => reply.attr(&found.ttl(), found.attr()),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.find(ino.0) {
            Ok(Found::Made(_, What::Latest { target })) => reply.data(&target),
            Ok(Found::Entry(_, tree, i)) if tree.nodes[i].kind == NodeKind::Symlink => {
                reply.data(tree.nodes[i].target.as_deref().unwrap_or_default())
            }
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.open_file(ino.0) {
            Ok(file) => {
                // Whatever the reader does next, it reads the first chunk
                // (a header, a thumbnail, or the start of a copy): fetch it
                // now rather than when the first read asks.
                if let Some(first) = file.chunks.first() {
                    self.chunks.prefetch(*first);
                }
                // The content never changes: the kernel may keep its cached
                // pages (all reads' with --page-cache; a mapping's otherwise).
                let mut flags = FopenFlags::FOPEN_KEEP_CACHE;
                if self.direct_io {
                    flags |= FopenFlags::FOPEN_DIRECT_IO;
                }
                reply.opened(FileHandle(self.new_handle(Handle::File(Arc::new(file)))), flags)
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let file = match self.handles.lock().unwrap_or_else(|e| e.into_inner()).get(&fh.0) {
            Some(Handle::File(f)) => f.clone(),
            _ => return reply.error(Errno::EBADF),
        };
        match self.read_file(&file, offset, size) {
            Ok(data) => reply.data(data.as_slice()),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.lock().unwrap_or_else(|e| e.into_inner()).remove(&fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.open_dir(ino.0) {
            Ok(entries) => {
                reply.opened(FileHandle(self.new_handle(Handle::Dir(Arc::new(entries)))), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(entries) = self.listing(fh) else { return reply.error(Errno::EBADF) };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(e.attr.ino, i as u64 + 1, e.attr.kind, OsStr::from_bytes(&e.name)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let Some(entries) = self.listing(fh) else { return reply.error(Errno::EBADF) };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(e.attr.ino, i as u64 + 1, OsStr::from_bytes(&e.name), &e.ttl, &e.attr, Generation(0)) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.handles.lock().unwrap_or_else(|e| e.into_inner()).remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: fuser::ReplyStatfs) {
        let files = self.inodes.read().unwrap_or_else(|e| e.into_inner()).count() as u64;
        reply.statfs(0, 0, 0, files, 0, BLOCK_SIZE, 255, BLOCK_SIZE);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let value = match self.find(ino.0) {
            Ok(Found::Entry(_, tree, i)) => {
                tree.nodes[i].xattrs.iter().find(|x| x.name == name.as_bytes()).map(|x| x.value.clone())
            }
            Ok(_) => None,
            Err(e) => return reply.error(e),
        };
        match value {
            None => reply.error(Errno::NO_XATTR),
            Some(v) if size == 0 => reply.size(v.len() as u32),
            Some(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Some(v) => reply.data(&v),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let mut list = Vec::new();
        match self.find(ino.0) {
            Ok(Found::Entry(_, tree, i)) => {
                for x in &tree.nodes[i].xattrs {
                    list.extend_from_slice(&x.name);
                    list.push(0);
                }
            }
            Ok(_) => {}
            Err(e) => return reply.error(e),
        }
        if size == 0 {
            reply.size(list.len() as u32)
        } else if list.len() > size as usize {
            reply.error(Errno::ERANGE)
        } else {
            reply.data(&list)
        }
    }

    // Everything that would change the file system is refused. The mount is
    // also read-only for the kernel, which refuses most of these itself.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, _target: &std::path::Path, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_and_after_1970() {
        let t = system_time(&Timestamp { sec: -2, nsec: 500_000_000 });
        assert_eq!(SystemTime::UNIX_EPOCH.duration_since(t).unwrap(), Duration::from_millis(1500));
        let t = system_time(&Timestamp { sec: 3, nsec: 7 });
        assert_eq!(t.duration_since(SystemTime::UNIX_EPOCH).unwrap(), Duration::from_nanos(3_000_000_007));
    }
}
