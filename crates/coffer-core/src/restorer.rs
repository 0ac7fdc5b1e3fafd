//! Restoring a snapshot into a folder.
//!
//! The trees are walked first: directories, symlinks and special files are
//! created, and every file to write is listed (with `--overwrite if-changed`,
//! files that look unchanged are re-hashed to decide). File contents are then
//! fetched with many requests in flight but a bounded number of bytes: the
//! chunks, taken a window at a time in the files' order, are grouped by pack,
//! and chunks lying near each other in a pack share one ranged read. Each
//! chunk is decrypted where it lies in that read's buffer and written at its
//! offset (files are pre-sized, so chunks can land in any order; a chunk of
//! zeros is not written at all, so holes stay holes).
//! Metadata is applied after the contents, hard links are made once the file
//! they point to is complete, and directories get their metadata last,
//! deepest first, so that writing into a directory does not disturb its
//! mtime. With `verify`, every file written is then read back and each chunk
//! range re-hashed with the repository's keyed id.
//!
//! A damaged or missing chunk fails only the file that needs it: the error
//! names the file and the chunk, and every other file is still restored.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use rayon::prelude::*;

use crate::backend::Backend;
use crate::crypto::{Keys, ObjectKind};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::BlobSet;
use crate::metadata;
use crate::packer::{READ_GAP, READ_MAX, RangeRead, plan_reads};
use crate::progress::Progress;
use crate::repo::{Repository, decode_chunk_ref_in, fetch_blob, locate_blob};
use crate::tree::{ChunkRef, Node, NodeKind, valid_name};
use crate::walk::snapshot_components;

/// Plaintext bytes of chunks in flight (fetched or being fetched, decoded,
/// not yet written) when the options do not say: room for 32 chunks of the
/// default average size. The stored form of a chunk is at most ~12% larger
/// than its plaintext (padding), and both exist while it is decoded, so
/// restore's chunk buffers stay under about twice this. (Measured on a local
/// repository, 16, 32 and 64 MiB restore equally fast.)
pub const DEFAULT_BYTES_IN_FLIGHT: usize = 32 * 1024 * 1024;

/// What to do with an entry that already exists in the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overwrite {
    /// Rewrite every file, symlink and special file from the snapshot.
    #[default]
    Always,
    /// Leave a file alone when it already holds what the snapshot has: the
    /// same size and mtime, *and* the same content. The content is checked by
    /// re-hashing each chunk's range of the existing file with the
    /// repository's keyed id and comparing with the chunk's id (restic's
    /// `if-changed` trusts size and mtime alone; reading the file is the
    /// price of never keeping one that was changed without its mtime
    /// moving). Such a file keeps its inode; its permissions and owner are
    /// set only if they differ. Anything else is rewritten.
    IfChanged,
    /// Never replace or modify an entry that already exists in the target,
    /// whatever it holds (it is counted as skipped). Missing entries are
    /// still restored, and existing directories are still entered.
    Never,
}

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Snapshot paths to restore; empty restores everything.
    pub includes: Vec<PathBuf>,
    /// Chunk fetches in flight; 0 uses the backend's own preference.
    pub concurrency: usize,
    /// Plaintext bytes of chunks in flight; 0 uses [`DEFAULT_BYTES_IN_FLIGHT`].
    /// A chunk larger than this is still restored, alone.
    pub max_bytes_in_flight: usize,
    pub overwrite: Overwrite,
    /// After writing, read back every file this restore wrote (and check
    /// every hard link it made) and compare it with the snapshot, each
    /// chunk's range re-hashed with the repository's keyed id; a difference
    /// is a problem of that file. Entries left alone by `overwrite` are not
    /// read (with `IfChanged` their content was compared already).
    pub verify: bool,
    /// After restoring, delete what the target holds that the snapshot does
    /// not, within what was restored (the whole snapshot, or the included
    /// paths): the target then mirrors the snapshot.
    pub delete: bool,
}

/// One entry that could not be restored.
#[derive(Clone, Debug)]
pub struct RestoreProblem {
    pub path: PathBuf,
    pub message: String,
}

#[derive(Clone, Debug, Default)]
pub struct RestoreOutcome {
    /// Files whose content was written.
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Names created as hard links to a file restored in the same run.
    pub hardlinks: u64,
    /// Bytes of file content written (holes included).
    pub bytes: u64,
    /// Existing entries left as they were (`--overwrite never`, or unchanged
    /// files with `--overwrite if-changed`).
    pub skipped: u64,
    /// Content bytes of the files skipped because they were unchanged.
    pub skipped_bytes: u64,
    /// Files (and hard links) read back and found as in the snapshot.
    pub verified_files: u64,
    pub verified_bytes: u64,
    /// Files that did not read back as in the snapshot (each is also a problem).
    pub verify_failures: u64,
    /// Entries of the target the snapshot does not have, deleted
    /// (`delete`), each counted once (a folder with what is in it).
    pub deleted: u64,
    /// The most plaintext bytes of chunks that were in flight at once.
    pub peak_bytes_in_flight: u64,
    pub problems: Vec<RestoreProblem>,
}

/// Where a file stands in the restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileState {
    /// To be written from the snapshot.
    Write,
    /// Exists with the snapshot's size and mtime: compare the content.
    Check,
    /// Exists with the snapshot's content: left as it is.
    Same,
    /// Could not be restored (reported already).
    Failed,
}

struct FileJob {
    path: PathBuf,
    /// Where the content is written: a new name in the same folder, renamed
    /// over `path` once every chunk landed (see [`temp_name`]).
    temp: PathBuf,
    node: Node,
    remaining: AtomicUsize,
    /// Opened at the first chunk written, closed after the last one.
    handle: Mutex<Option<Arc<File>>>,
    /// Held while a chunk is written. The kernel serialises writes to one
    /// file anyway (the inode's lock), but a writer that finds it taken
    /// spins while the owner copies: up to a sixth of a restore's CPU went
    /// there. Waiting here sleeps instead, and the core goes to a fetch.
    writing: Mutex<()>,
}

impl FileJob {
    fn handle(&self) -> std::io::Result<Arc<File>> {
        let mut slot = self.handle.lock().map_err(|_| std::io::Error::other("lock poisoned"))?;
        if let Some(f) = &*slot {
            return Ok(f.clone());
        }
        let f = Arc::new(open_no_follow(&self.temp, false)?);
        *slot = Some(f.clone());
        Ok(f)
    }

    fn close(&self) {
        if let Ok(mut slot) = self.handle.lock() {
            slot.take();
        }
    }
}

/// A name to create as a hard link to an earlier file of the restore.
struct LinkJob {
    path: PathBuf,
    /// Index of the file in [`Plan::files`].
    source: usize,
}

struct Plan {
    files: Vec<FileJob>,
    states: Vec<FileState>,
    links: Vec<LinkJob>,
    /// Directories and other entries whose metadata is applied at the end.
    others: Vec<(PathBuf, Node)>,
}

/// Which entries an include list selects.
struct Selection {
    includes: Vec<Vec<Vec<u8>>>,
}

impl Selection {
    /// (restore this entry, descend into it)
    fn check(&self, comps: &[Vec<u8>]) -> (bool, bool) {
        if self.includes.is_empty() {
            return (true, true);
        }
        let mut restore = false;
        let mut descend = false;
        for inc in &self.includes {
            if comps.starts_with(inc) {
                return (true, true);
            }
            if inc.starts_with(comps) {
                // An ancestor of an included path: create it, look inside.
                restore = true;
                descend = true;
            }
        }
        (restore, descend)
    }
}

/// Deletes what `dir` (a folder of the target) holds that the snapshot
/// does not (`seen`), within the selection: an entry outside the included
/// paths is left alone, as is everything in a folder the restore only
/// passes through. Symbolic links are removed, never followed.
fn delete_extra(
    dir: &Path,
    selection: &Selection,
    seen: &HashSet<PathBuf>,
    comps: &mut Vec<Vec<u8>>,
    outcome: &mut RestoreOutcome,
    progress: &dyn Progress,
) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            progress.warning(dir, &format!("cannot list it to delete what the snapshot lacks: {e}"));
            outcome.problems.push(RestoreProblem { path: dir.to_path_buf(), message: e.to_string() });
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        comps.push(entry.file_name().as_bytes().to_vec());
        let inside = selection.includes.is_empty() || selection.includes.iter().any(|inc| comps.starts_with(inc));
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if seen.contains(&path) {
            if is_dir {
                delete_extra(&path, selection, seen, comps, outcome, progress);
            }
        } else if inside {
            let removed = if is_dir { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            match removed {
                Ok(()) => outcome.deleted += 1,
                Err(e) => {
                    let message = format!("cannot delete it (not in the snapshot): {e}");
                    progress.warning(&path, &message);
                    outcome.problems.push(RestoreProblem { path: path.clone(), message });
                }
            }
        }
        comps.pop();
    }
}

/// The key that identifies the file behind several hard-linked names, if
/// the node is one of them.
pub(crate) fn link_key(node: &Node) -> Option<(u64, u64)> {
    (node.kind == NodeKind::File && node.links > 1 && node.inode != 0).then_some((node.device, node.inode))
}

struct Planner<'a> {
    repo: &'a Repository,
    /// Random once per restore; each file's temporary name adds its index
    /// (see [`temp_name`]), so naming costs no system call per file.
    temp_seed: u64,
    selection: Selection,
    overwrite: Overwrite,
    plan: Plan,
    /// The file written for each hard-linked (device, inode) seen so far.
    link_sources: HashMap<(u64, u64), usize>,
    /// Every path of the snapshot that the restore covers (for `delete`).
    seen: HashSet<PathBuf>,
    outcome: RestoreOutcome,
    progress: &'a dyn Progress,
}

impl Planner<'_> {
    fn problem(&mut self, path: &Path, message: impl std::fmt::Display) {
        let message = message.to_string();
        self.progress.warning(path, &message);
        self.outcome.problems.push(RestoreProblem { path: path.to_path_buf(), message });
    }

    fn plan_tree(&mut self, tree_id: &Id, dir: &Path, comps: &mut Vec<Vec<u8>>) -> Result<()> {
        let tree = match self.repo.load_tree(tree_id) {
            Ok(t) => t,
            Err(e @ (Error::Corrupt { .. } | Error::Missing { .. })) => {
                self.problem(dir, e);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        for node in tree.nodes {
            if !valid_name(&node.name) {
                self.problem(dir, format!("skipping unsafe name {:?}", node.name_lossy()));
                continue;
            }
            comps.push(node.name.clone());
            let (restore, descend) = self.selection.check(comps);
            if restore {
                let path = dir.join(OsStr::from_bytes(&node.name));
                self.seen.insert(path.clone());
                self.plan_node(&path, node, descend, comps)?;
            }
            comps.pop();
        }
        Ok(())
    }

    /// What is at `path` now; `Err(())` when that could not be found out
    /// (reported as a problem).
    fn existing(&mut self, path: &Path) -> std::result::Result<Option<std::fs::Metadata>, ()> {
        match std::fs::symlink_metadata(path) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => {
                self.problem(path, e);
                Err(())
            }
        }
    }

    fn plan_node(&mut self, path: &Path, node: Node, descend: bool, comps: &mut Vec<Vec<u8>>) -> Result<()> {
        let Ok(existing) = self.existing(path) else { return Ok(()) };
        if node.kind != NodeKind::Dir && existing.is_some() && self.overwrite == Overwrite::Never {
            self.outcome.skipped += 1;
            return Ok(());
        }
        match node.kind {
            NodeKind::Dir => {
                match &existing {
                    Some(m) if m.is_dir() => {}
                    Some(_) if self.overwrite == Overwrite::Never => {
                        self.problem(
                            path,
                            "something that is not a directory is in the way (left as it is: --overwrite never)",
                        );
                        return Ok(());
                    }
                    _ => {
                        if let Err(e) = make_dir(path) {
                            self.problem(path, e);
                            return Ok(());
                        }
                    }
                }
                self.outcome.dirs += 1;
                if let (true, Some(sub)) = (descend, node.subtree) {
                    self.plan_tree(&sub, path, comps)?;
                }
                self.plan.others.push((path.to_path_buf(), node));
            }
            NodeKind::File => self.plan_file(path, node, existing),
            NodeKind::Symlink => {
                let target = node.target.clone().unwrap_or_default();
                let _ = std::fs::remove_file(path);
                if let Err(e) = std::os::unix::fs::symlink(OsStr::from_bytes(&target), path) {
                    self.problem(path, e);
                    return Ok(());
                }
                self.outcome.symlinks += 1;
                self.plan.others.push((path.to_path_buf(), node));
            }
            NodeKind::Fifo => {
                let _ = std::fs::remove_file(path);
                let mode = nix::sys::stat::Mode::from_bits_truncate(node.mode);
                if let Err(e) = nix::unistd::mkfifo(path, mode) {
                    self.problem(path, e);
                    return Ok(());
                }
                self.plan.others.push((path.to_path_buf(), node));
            }
            NodeKind::CharDevice | NodeKind::BlockDevice => {
                let _ = std::fs::remove_file(path);
                let kind = if node.kind == NodeKind::CharDevice {
                    nix::sys::stat::SFlag::S_IFCHR
                } else {
                    nix::sys::stat::SFlag::S_IFBLK
                };
                let mode = nix::sys::stat::Mode::from_bits_truncate(node.mode);
                if let Err(e) = nix::sys::stat::mknod(path, kind, mode, node.rdev as nix::libc::dev_t) {
                    self.problem(path, format!("cannot create the device node: {e}"));
                    return Ok(());
                }
                self.plan.others.push((path.to_path_buf(), node));
            }
            NodeKind::Socket => {
                // A socket belongs to the process that made it; there is
                // nothing to restore but a name no program listens on.
                tracing::info!("{}: socket not restored", path.display());
            }
        }
        Ok(())
    }

    fn plan_file(&mut self, path: &Path, node: Node, existing: Option<std::fs::Metadata>) {
        let total: u64 = node.content.iter().map(|c| u64::from(c.1)).sum();
        if total != node.size {
            self.problem(path, format!("chunk lengths add up to {total} bytes, the file has {}", node.size));
            return;
        }
        let key = link_key(&node);
        if let Some(&source) = key.as_ref().and_then(|k| self.link_sources.get(k)) {
            let first = &self.plan.files[source];
            if first.node.content == node.content {
                self.plan.links.push(LinkJob { path: path.to_path_buf(), source });
                return;
            }
            // The file changed between reading its two names: keep both
            // contents rather than one of them under both names.
            let message = format!(
                "recorded as a hard link of {} but with other content (changed during the backup?); restored as a separate file",
                first.path.display()
            );
            self.progress.warning(path, &message);
        }
        let state = match (&existing, self.overwrite) {
            (Some(m), Overwrite::IfChanged)
                if m.is_file()
                    && m.len() == node.size
                    && m.mtime() == node.mtime.sec
                    && m.mtime_nsec() == i64::from(node.mtime.nsec) =>
            {
                FileState::Check
            }
            _ => FileState::Write,
        };
        let index = self.plan.files.len();
        if let Some(key) = key {
            self.link_sources.entry(key).or_insert(index);
        }
        let remaining = AtomicUsize::new(node.content.len());
        self.plan.files.push(FileJob {
            path: path.to_path_buf(),
            temp: temp_name(path, self.temp_seed.wrapping_add(index as u64)),
            node,
            remaining,
            handle: Mutex::new(None),
            writing: Mutex::new(()),
        });
        self.plan.states.push(state);
    }
}

/// Creates a directory, replacing whatever non-directory is in the way. An
/// existing symlink is replaced, never followed: restore must not write
/// outside its target, whatever the target already holds.
fn make_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => std::fs::remove_file(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir(path)
}

/// Marks the names restore writes to before renaming; a restore that was
/// killed leaves them behind, and nothing else uses the prefix.
pub const TEMP_PREFIX: &str = ".coffer-tmp-";

/// A fresh name next to `path`: `.coffer-tmp-` and `n` in 16 hex digits,
/// where `n` is the restore's random seed plus the file's index.
/// A file is written under it and renamed over `path` only when complete,
/// so a chunk that fails to fetch or decode, a full disk or a crash never
/// leaves a half-written file under the final name, and whatever was there
/// before stays as it was. A new inode also means nothing at `path` is ever
/// written through: not a symlink, not a file with other names (hard links,
/// maybe outside the target), whose other names keep what they hold.
fn temp_name(path: &Path, n: u64) -> PathBuf {
    path.with_file_name(format!("{TEMP_PREFIX}{n:016x}"))
}

/// Makes the job's temporary name an empty regular file of `size` bytes
/// (all of it a hole), ready for chunks to be written at their offsets.
fn prepare_file(job: &FileJob) -> std::io::Result<()> {
    if let Ok(m) = std::fs::symlink_metadata(&job.path)
        && m.is_dir()
    {
        return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "a directory is in the way of the file"));
    }
    open_no_follow(&job.temp, true)?.set_len(job.node.size)
}

/// Puts a complete file under its final name, replacing (never following)
/// whatever is there.
fn finish_file(job: &FileJob) -> std::io::Result<()> {
    std::fs::rename(&job.temp, &job.path)
}

/// Removes the temporary file of a file that could not be restored.
fn discard_file(job: &FileJob) {
    match std::fs::remove_file(&job.temp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("could not remove {}: {e}", job.temp.display()),
    }
}

/// Opens a file for writing without following a symlink at its name; a
/// created file must be new (`O_EXCL`).
fn open_no_follow(path: &Path, create: bool) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create_new(create).custom_flags(nix::libc::O_NOFOLLOW).open(path)
}

/// Opens a file for reading without following a symlink at its name.
fn open_read_no_follow(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW).open(path)
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// True when every byte is zero (memcmp against a static zero block, which
/// runs at memory speed).
pub(crate) fn is_all_zero(data: &[u8]) -> bool {
    data.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// The most one `pwrite` hands the kernel.
///
/// The page cache takes each write in folios as large as the write (up to
/// 2 MiB on ext4 since Linux 6.16), and a large folio needs a large block
/// of free memory. On a VM that hands free memory back to its host in large
/// blocks, those are the blocks the host must fault in again: restoring a
/// 2 GiB file in whole chunks (about 1 MiB each) took 2.3–3.3 s there, with
/// 2.0–3.5 s of system time, against 1.4–1.7 s (1.3–1.6 s) in 256 KiB
/// writes. Smaller writes cost 4 system calls per MiB instead of 1, which
/// is nothing beside the copy.
const MAX_WRITE: usize = 256 << 10;

/// `write_all_at` in pieces of at most [`MAX_WRITE`].
fn write_at_in_pieces(file: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    let mut at = offset;
    for piece in data.chunks(MAX_WRITE) {
        file.write_all_at(piece, at)?;
        at += piece.len() as u64;
    }
    Ok(())
}

/// Writes `data` at `offset` of a pre-sized file, leaving out the 64 KiB
/// blocks (aligned in the file) that are all zeros, so that they stay holes.
fn write_sparse(file: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    const BLOCK: u64 = 64 * 1024;
    let mut run = None;
    let mut pos = 0usize;
    while pos < data.len() {
        let at = offset + pos as u64;
        let end = (pos + (BLOCK - at % BLOCK) as usize).min(data.len());
        if is_all_zero(&data[pos..end]) {
            if let Some(start) = run.take() {
                write_at_in_pieces(file, &data[start..pos], offset + start as u64)?;
            }
        } else if run.is_none() {
            run = Some(pos);
        }
        pos = end;
    }
    if let Some(start) = run {
        write_at_in_pieces(file, &data[start..], offset + start as u64)?;
    }
    Ok(())
}

/// The ids of all-zero plaintexts, by length: what a hole of that length
/// hashes to, without reading it.
#[derive(Default)]
struct ZeroIds(Mutex<HashMap<u32, Id>>);

impl ZeroIds {
    fn get(&self, keys: &Keys, len: u32) -> Id {
        if let Some(id) = self.0.lock().ok().and_then(|m| m.get(&len).copied()) {
            return id;
        }
        let id = keys.id(&vec![0u8; len as usize]);
        if let Ok(mut m) = self.0.lock() {
            m.insert(len, id);
        }
        id
    }
}

/// True when `offset..offset + len` of `file` is a hole (reads as zeros
/// without being stored), as far as the file system says (`SEEK_DATA`).
/// File systems that cannot tell report data everywhere.
fn is_hole(file: &File, offset: u64, len: u64) -> bool {
    use nix::unistd::{Whence, lseek};
    let Ok(start) = nix::libc::off_t::try_from(offset) else { return false };
    match lseek(file, start, Whence::SeekData) {
        Ok(data) => u64::try_from(data).is_ok_and(|d| d >= offset + len),
        // No data at or after `offset`: the rest of the file is a hole.
        Err(nix::errno::Errno::ENXIO) => true,
        Err(_) => false,
    }
}

/// Compares the file at `path` with a node's content: its length, and each
/// chunk's range of bytes hashed with the repository's keyed id against the
/// chunk's id. Holes are not read: they hash as zeros. Returns why the file
/// differs, or `None` when it holds exactly the snapshot's content.
fn content_differs(
    path: &Path,
    content: &[ChunkRef],
    size: u64,
    keys: &Keys,
    zero_ids: &ZeroIds,
) -> std::io::Result<Option<String>> {
    let file = open_read_no_follow(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Some("is not a regular file".into()));
    }
    if meta.len() != size {
        return Ok(Some(format!("has {} bytes, the snapshot has {size}", meta.len())));
    }
    let mut buf = Vec::new();
    let mut offset = 0u64;
    for c in content {
        let len = u64::from(c.1);
        let id = if len > 0 && is_hole(&file, offset, len) {
            zero_ids.get(keys, c.1)
        } else {
            buf.resize(c.1 as usize, 0);
            file.read_exact_at(&mut buf, offset)?;
            keys.id(&buf)
        };
        if id != c.0 {
            return Ok(Some(format!("bytes {offset}..{} differ from chunk {}", offset + len, c.0)));
        }
        offset += len;
    }
    Ok(None)
}

/// Counts plaintext bytes in flight, and returns its permit, when dropped.
/// The restore's memory bound: plaintext bytes of chunks in flight.
struct Budget {
    semaphore: tokio::sync::Semaphore,
    total: u32,
    in_flight: AtomicU64,
    peak: AtomicU64,
}

impl Budget {
    /// Waits until `bytes` fit (a read larger than the whole budget waits
    /// for all of it, and then runs alone).
    async fn take(&self, bytes: u64) -> Result<InFlight<'_>> {
        let permits = bytes.min(u64::from(self.total)) as u32;
        let permit = self
            .semaphore
            .acquire_many(permits)
            .await
            .map_err(|e| Error::InvalidInput(format!("restore budget: {e}")))?;
        let now = self.in_flight.fetch_add(bytes, Ordering::AcqRel) + bytes;
        self.peak.fetch_max(now, Ordering::AcqRel);
        Ok(InFlight { counter: &self.in_flight, len: bytes, _permit: permit })
    }
}

struct InFlight<'a> {
    counter: &'a AtomicU64,
    len: u64,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.len, Ordering::AcqRel);
    }
}

/// A budget of this many bytes is shared by at least this many reads, so
/// that a high-latency store always has several requests in flight (with
/// the default budget, four reads of 8 MiB).
const READS_PER_BUDGET: u64 = 4;

/// Chunks are planned into ranged reads this many at a time (or this many
/// bytes of them): enough to find the neighbours within a pack, few enough
/// that the plan's memory does not grow with the snapshot.
const WINDOW_PIECES: usize = 8192;
const WINDOW_BYTES: u64 = 256 << 20;

/// One chunk to write at an offset of a file.
#[derive(Clone, Copy, Debug)]
struct Piece {
    file: usize,
    offset: u64,
    chunk: ChunkRef,
}

/// What a piece came to: whether its chunk is all zeros, or why it failed.
type PieceResult = std::result::Result<bool, String>;

/// A chunk's plaintext as decoded for a piece, or why it is not.
type DecodedPiece<'a> = std::result::Result<Cow<'a, [u8]>, String>;

/// The message a failed piece reports for its file.
fn piece_message(chunk: &ChunkRef, e: &Error) -> String {
    match e {
        Error::Io { .. } => e.to_string(),
        _ => format!("chunk {}: {e}", chunk.0),
    }
}

/// A unit of the restore's fetching.
enum Fetch {
    /// A ranged read of a pack, and the pieces it serves: its part `k`
    /// holds the chunk of piece `k`.
    Read(RangeRead, Vec<Piece>),
    /// A piece whose chunk cannot be read: not in the index, or longer than
    /// a chunk can be.
    Unreadable(Piece, Error),
}

/// Cuts the pieces into planning windows, in the order of the files.
fn windows(mut pieces: impl Iterator<Item = Piece>) -> impl Iterator<Item = Vec<Piece>> {
    std::iter::from_fn(move || {
        let mut window = Vec::new();
        let mut bytes = 0u64;
        while window.len() < WINDOW_PIECES && bytes < WINDOW_BYTES {
            let Some(piece) = pieces.next() else { break };
            bytes += u64::from(piece.chunk.1);
            window.push(piece);
        }
        (!window.is_empty()).then_some(window)
    })
}

/// Plans a window's pieces into ranged reads: neighbours in a pack share a
/// read, which serves at most `cap` bytes of plaintext (a single larger
/// chunk is read alone).
fn plan_fetches(blobs: &BlobSet, limit: u64, window: Vec<Piece>, cap: u64) -> Vec<Fetch> {
    let mut out = Vec::new();
    let mut located = Vec::with_capacity(window.len());
    let mut wanted = Vec::with_capacity(window.len());
    for piece in window {
        match locate_blob(blobs, ObjectKind::Chunk, &piece.chunk.0, limit) {
            Ok(loc) => {
                wanted.push(loc);
                located.push(piece);
            }
            Err(e) => out.push(Fetch::Unreadable(piece, e)),
        }
    }
    for read in plan_reads(&wanted, READ_GAP, cap) {
        let mut group = Vec::new();
        let mut plain = 0u64;
        for part in &read.parts {
            let len = u64::from(located[part.0].chunk.1);
            if !group.is_empty() && plain + len > cap {
                out.push(sub_read(&read, std::mem::take(&mut group), &located));
                plain = 0;
            }
            plain += len;
            group.push(part.clone());
        }
        if !group.is_empty() {
            out.push(sub_read(&read, group, &located));
        }
    }
    out
}

/// The part of `read` that covers `parts`, with its own pieces.
fn sub_read(read: &RangeRead, parts: Vec<(usize, std::ops::Range<usize>)>, located: &[Piece]) -> Fetch {
    let start = parts.iter().map(|p| p.1.start).min().unwrap_or(0);
    let end = parts.iter().map(|p| p.1.end).max().unwrap_or(start);
    let pieces = parts.iter().map(|p| located[p.0]).collect();
    let parts = parts.into_iter().enumerate().map(|(k, (_, r))| (k, r.start - start..r.end - start)).collect();
    let sub = RangeRead {
        pack: read.pack,
        kind: read.kind,
        offset: read.offset + start as u64,
        length: (end - start) as u64,
        parts,
    };
    Fetch::Read(sub, pieces)
}

/// Fetches one ranged read and writes its pieces. A piece the shared read
/// cannot serve (the read failed, or its range overlaps another's) is read
/// alone, so that it fails with its own error and fails only its file.
#[allow(clippy::too_many_arguments)]
async fn fetch_pieces(
    backend: &dyn Backend,
    blobs: &BlobSet,
    limit: u64,
    writer: &Arc<Writer>,
    read: RangeRead,
    pieces: &[Piece],
    budget: &Budget,
    zero_chunks: &Mutex<HashSet<Id>>,
) -> Vec<PieceResult> {
    let known_zero: Vec<bool> = match zero_chunks.lock() {
        Ok(z) => pieces.iter().map(|p| z.contains(&p.chunk.0)).collect(),
        Err(_) => vec![false; pieces.len()],
    };
    if known_zero.iter().all(|&z| z) {
        return vec![Ok(true); pieces.len()];
    }
    let plain: u64 = pieces.iter().zip(&known_zero).filter(|(_, z)| !**z).map(|(p, _)| u64::from(p.chunk.1)).sum();
    let _in_flight = match budget.take(plain).await {
        Ok(g) => g,
        Err(e) => return pieces.iter().map(|p| Err(piece_message(&p.chunk, &e))).collect(),
    };
    let mut results = match read.fetch(backend).await {
        Ok(buf) if buf.len() as u64 == read.length => {
            let (writer, owned) = (writer.clone(), pieces.to_vec());
            on_cpu_pool(move || writer.write_range(buf, &read.parts, &owned, &known_zero, false))
                .await
                .unwrap_or_else(|e| vec![Some(Err(format!("restore task failed: {e}"))); pieces.len()])
        }
        _ => vec![None; pieces.len()],
    };
    for (slot, piece) in results.iter_mut().zip(pieces) {
        if slot.is_some() {
            continue;
        }
        let piece = *piece;
        *slot = Some(match fetch_blob(backend, blobs, ObjectKind::Chunk, &piece.chunk.0, limit).await {
            Ok(stored) => {
                let writer = writer.clone();
                let len = stored.len();
                on_cpu_pool(move || writer.write_range(stored, &[(0, 0..len)], &[piece], &[false], true))
                    .await
                    .map_err(|e| format!("restore task failed: {e}"))
                    .and_then(|mut r| r.pop().flatten().ok_or_else(|| "restore task lost a piece".to_string()))
                    .unwrap_or_else(Err)
            }
            Err(e) => Err(piece_message(&piece.chunk, &e)),
        });
    }
    results.into_iter().map(|r| r.unwrap_or_else(|| Err("not restored".to_string()))).collect()
}

/// Runs CPU work (decoding, hashing) on rayon's pool, one thread per core,
/// rather than on tokio's blocking pool, whose dozens of threads would only
/// contend for the same cores.
pub(crate) async fn on_cpu_pool<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> std::result::Result<T, tokio::sync::oneshot::error::RecvError> {
    let (done, result) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let _ = done.send(work());
    });
    result.await
}

/// Decodes chunks and writes them into the files being restored.
struct Writer {
    keys: Arc<Keys>,
    repo_id: [u8; 32],
    max_len: usize,
    files: Arc<Vec<FileJob>>,
}

impl Writer {
    /// Decodes the chunks of one ranged read where they lie in `buf` and
    /// writes each to its pieces. A piece whose range overlaps an earlier
    /// one's (an index that gives two chunks one place), or that fails to
    /// decode in a shared read (not `alone`), is left `None`, to be read alone; a
    /// piece known to be zeros is not decoded.
    fn write_range(
        &self,
        mut buf: Vec<u8>,
        parts: &[(usize, std::ops::Range<usize>)],
        pieces: &[Piece],
        known_zero: &[bool],
        alone: bool,
    ) -> Vec<Option<PieceResult>> {
        let mut out: Vec<Option<PieceResult>> = vec![None; pieces.len()];
        let total = buf.len();
        let mut rest: &mut [u8] = &mut buf;
        let mut consumed = 0usize;
        // The chunk decoded last, for the pieces that repeat it.
        let mut last: Option<(std::ops::Range<usize>, Id, DecodedPiece<'_>)> = None;
        for (k, range) in parts {
            let (k, piece) = (*k, &pieces[*k]);
            if known_zero[k] {
                out[k] = Some(Ok(true));
                continue;
            }
            if let Some((r, id, decoded)) = &last
                && r == range
                && *id == piece.chunk.0
            {
                out[k] = Some(self.write(piece, decoded));
                continue;
            }
            if range.start < consumed || range.end > total {
                continue;
            }
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(range.start - consumed);
            let (stored, tail) = tail.split_at_mut(range.len());
            rest = tail;
            consumed = range.end;
            let decoded = decode_chunk_ref_in(&self.keys, &self.repo_id, self.max_len, &piece.chunk, stored)
                .map_err(|e| piece_message(&piece.chunk, &e));
            if decoded.is_err() && !alone {
                // Left to be read alone: a bit flipped on the way is not
                // damage at rest, and a second failure is reported as its own.
                continue;
            }
            out[k] = Some(self.write(piece, &decoded));
            last = Some((range.clone(), piece.chunk.0, decoded));
        }
        out
    }

    /// Writes one piece's decoded plaintext: `true` when it is all zeros,
    /// which the pre-sized file holds already.
    fn write(&self, piece: &Piece, decoded: &DecodedPiece) -> PieceResult {
        let data = decoded.as_ref().map_err(Clone::clone)?;
        if is_all_zero(data) {
            return Ok(true);
        }
        let job = &self.files[piece.file];
        let written = job.handle().and_then(|f| {
            let _writing = job.writing.lock();
            write_sparse(&f, data, piece.offset)
        });
        written.map(|()| false).map_err(|e| Error::io(&job.path, e).to_string())
    }
}

/// What a restore of `root` (only `includes`, when given) reads: its
/// files, their content bytes and the chunks they are made of. Trees only
/// are read, so this works on a repository whose data packs are archived.
pub(crate) fn needed_chunks(repo: &Repository, root: &Id, includes: &[PathBuf]) -> Result<(u64, u64, HashSet<Id>)> {
    let selection =
        Selection { includes: includes.iter().map(|p| snapshot_components(p)).collect::<Result<Vec<_>>>()? };
    for path in includes {
        crate::walk::find(repo, root, path)?;
    }
    if includes.is_empty() {
        repo.warm_tree_cache(root);
    }
    fn walk(
        repo: &Repository,
        selection: &Selection,
        tree: &Id,
        comps: &mut Vec<Vec<u8>>,
        out: &mut (u64, u64, HashSet<Id>),
    ) -> Result<()> {
        for node in repo.load_tree(tree)?.nodes {
            comps.push(node.name.clone());
            let (restore, descend) = selection.check(comps);
            if restore {
                match (node.kind, node.subtree) {
                    (NodeKind::Dir, Some(sub)) if descend => walk(repo, selection, &sub, comps, out)?,
                    (NodeKind::File, _) => {
                        out.0 += 1;
                        out.1 += node.size;
                        out.2.extend(node.content.iter().map(|c| c.0));
                    }
                    _ => {}
                }
            }
            comps.pop();
        }
        Ok(())
    }
    let mut out = (0, 0, HashSet::new());
    walk(repo, &selection, root, &mut Vec::new(), &mut out)?;
    Ok(out)
}

/// Restores the tree `root` (a snapshot's root tree) into `options.target`.
pub fn restore(
    repo: &Repository,
    root: &Id,
    options: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreOutcome> {
    let includes = options.includes.iter().map(|p| snapshot_components(p)).collect::<Result<Vec<_>>>()?;
    // An include that names nothing is a typo, not a request for an empty restore.
    for path in &options.includes {
        crate::walk::find(repo, root, path)?;
    }
    std::fs::create_dir_all(&options.target).map_err(|e| Error::io(&options.target, e))?;
    let mut seed = [0u8; 8];
    crate::crypto::fill_random(&mut seed);
    let mut planner = Planner {
        repo,
        temp_seed: u64::from_le_bytes(seed),
        selection: Selection { includes },
        overwrite: options.overwrite,
        plan: Plan { files: Vec::new(), states: Vec::new(), links: Vec::new(), others: Vec::new() },
        link_sources: HashMap::new(),
        seen: HashSet::new(),
        outcome: RestoreOutcome::default(),
        progress,
    };
    if options.includes.is_empty() {
        // Planning reads the trees one directory at a time; fetch those the
        // cache lacks first, many at once. (With includes, only part of the
        // snapshot's trees are read.)
        repo.warm_tree_cache(root);
    }
    planner.plan_tree(root, &options.target, &mut Vec::new())?;
    let Planner { plan, mut outcome, seen, selection, .. } = planner;
    let Plan { files, mut states, links, others } = plan;
    let keys = repo.keys().clone();
    let zero_ids = ZeroIds::default();

    // Files that look unchanged: compare their content, in parallel.
    let checked: Vec<(usize, bool)> = (0..files.len())
        .into_par_iter()
        .filter(|&i| states[i] == FileState::Check)
        .map(|i| {
            let f = &files[i];
            let same = matches!(content_differs(&f.path, &f.node.content, f.node.size, &keys, &zero_ids), Ok(None));
            (i, same)
        })
        .collect();
    let chown = metadata::can_chown();
    for (i, same) in checked {
        states[i] =
            if same && !shared_with_wrong_metadata(&files[i], chown) { FileState::Same } else { FileState::Write };
    }

    let problem = |outcome: &mut RestoreOutcome, path: &Path, message: String| {
        progress.warning(path, &message);
        outcome.problems.push(RestoreProblem { path: path.to_path_buf(), message });
    };

    for (f, state) in files.iter().zip(states.iter_mut()) {
        if *state == FileState::Write
            && let Err(e) = prepare_file(f)
        {
            problem(&mut outcome, &f.path, e.to_string());
            discard_file(f);
            *state = FileState::Failed;
        }
    }

    let writing = |i: &usize| states[*i] == FileState::Write;
    let total_bytes: u64 = (0..files.len()).filter(writing).map(|i| files[i].node.size).sum();
    let total_files = (0..files.len()).filter(writing).count() as u64;
    progress.set_total(total_files, total_bytes);
    // Empty files are complete already.
    for _ in (0..files.len()).filter(writing).filter(|&i| files[i].node.content.is_empty()) {
        progress.file_done();
    }

    let files = Arc::new(files);
    let failed: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
    let pieces = (0..files.len()).filter(writing).flat_map(|fi| {
        files[fi].node.content.iter().scan(0u64, move |offset, c| {
            let at = *offset;
            *offset += u64::from(c.1);
            Some(Piece { file: fi, offset: at, chunk: *c })
        })
    });

    let concurrency = if options.concurrency == 0 { repo.backend().concurrency().max(2) } else { options.concurrency };
    let budget = match options.max_bytes_in_flight {
        0 => DEFAULT_BYTES_IN_FLIGHT,
        n => n,
    }
    .min(u32::MAX as usize) as u32;
    let budget = Budget {
        semaphore: tokio::sync::Semaphore::new(budget as usize),
        total: budget,
        in_flight: AtomicU64::new(0),
        peak: AtomicU64::new(0),
    };
    // Chunks known to be all zeros: nothing to fetch or write for them.
    let zero_chunks: Mutex<HashSet<Id>> = Mutex::new(HashSet::new());
    let backend = repo.backend().clone();
    let blobs = repo.blob_set()?;
    let writer = Arc::new(Writer {
        keys: keys.clone(),
        repo_id: *repo.repo_id(),
        max_len: repo.max_chunk_len(),
        files: files.clone(),
    });
    let limit = repo.stored_limit(ObjectKind::Chunk);
    // One read serves at most this much plaintext, so that several reads
    // are in flight within the budget.
    let read_cap = (u64::from(budget.total) / READS_PER_BUDGET).clamp(1, READ_MAX);
    let fetches = windows(pieces).flat_map(|window| plan_fetches(&blobs, limit, window, read_cap));
    repo.runtime().block_on(async {
        futures_util::stream::iter(fetches)
            .map(|fetch| {
                let (backend, blobs, writer) = (backend.clone(), blobs.clone(), writer.clone());
                let (budget, zero_chunks, failed, files) = (&budget, &zero_chunks, &failed, &files);
                async move {
                    let (pieces, results) = match fetch {
                        Fetch::Read(read, pieces) => {
                            let results =
                                fetch_pieces(&*backend, &blobs, limit, &writer, read, &pieces, budget, zero_chunks)
                                    .await;
                            (pieces, results)
                        }
                        Fetch::Unreadable(piece, e) => (vec![piece], vec![Err(piece_message(&piece.chunk, &e))]),
                    };
                    for (piece, result) in pieces.iter().zip(results) {
                        match result {
                            Ok(zero) => {
                                if zero && let Ok(mut z) = zero_chunks.lock() {
                                    z.insert(piece.chunk.0);
                                }
                                progress.bytes_done(u64::from(piece.chunk.1));
                            }
                            Err(msg) => {
                                if let Ok(mut f) = failed.lock() {
                                    f.push((piece.file, msg));
                                }
                            }
                        }
                        let job = &files[piece.file];
                        if job.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                            job.close();
                            progress.file_done();
                        }
                    }
                }
            })
            .buffer_unordered(concurrency)
            .collect::<Vec<()>>()
            .await;
    });
    outcome.peak_bytes_in_flight = budget.peak.load(Ordering::Acquire);

    let mut failed = failed.into_inner().map_err(|_| Error::InvalidInput("poisoned".into()))?;
    failed.sort();
    failed.dedup_by(|a, b| a.0 == b.0);
    for (fi, msg) in failed {
        problem(&mut outcome, &files[fi].path, msg);
        discard_file(&files[fi]);
        states[fi] = FileState::Failed;
    }

    for (f, state) in files.iter().zip(states.iter_mut()) {
        match state {
            FileState::Write => {
                if let Err(e) = finish_file(f) {
                    problem(&mut outcome, &f.path, format!("cannot put the restored file in place: {e}"));
                    discard_file(f);
                    *state = FileState::Failed;
                    continue;
                }
                outcome.files += 1;
                outcome.bytes += f.node.size;
                if let Err(e) = metadata::apply(&f.path, &f.node, chown) {
                    problem(&mut outcome, &f.path, format!("setting metadata: {e}"));
                }
            }
            FileState::Same => {
                outcome.skipped += 1;
                outcome.skipped_bytes += f.node.size;
                // Its mtime is the snapshot's already; touch nothing that is
                // right. (A file with other names and wrong metadata was
                // rewritten instead: see `shared_with_wrong_metadata`.)
                if !metadata_right(&f.path, &f.node, chown)
                    && let Err(e) = metadata::apply(&f.path, &f.node, chown)
                {
                    problem(&mut outcome, &f.path, format!("setting metadata: {e}"));
                }
            }
            FileState::Check | FileState::Failed => {}
        }
    }

    // Hard links, now that the files they name are complete.
    let mut linked = Vec::new();
    for link in &links {
        let source = &files[link.source];
        match states[link.source] {
            FileState::Write | FileState::Same => {}
            _ => {
                let msg =
                    format!("not restored: it is a hard link of {}, which was not restored", source.path.display());
                problem(&mut outcome, &link.path, msg);
                continue;
            }
        }
        match make_hard_link(&source.path, &link.path) {
            Ok(true) => {
                outcome.hardlinks += 1;
                linked.push(link);
            }
            Ok(false) => outcome.skipped += 1,
            Err(e) => problem(&mut outcome, &link.path, format!("cannot link to {}: {e}", source.path.display())),
        }
    }

    // Directories were pushed after their contents: applying in order sets
    // every directory's metadata after everything inside it.
    for (path, node) in &others {
        if let Err(e) = metadata::apply(path, node, chown) {
            problem(&mut outcome, path, format!("setting metadata: {e}"));
        }
    }

    if options.verify {
        let results: Vec<(usize, std::io::Result<Option<String>>)> = (0..files.len())
            .into_par_iter()
            .filter(|&i| states[i] == FileState::Write)
            .map(|i| {
                let f = &files[i];
                (i, content_differs(&f.path, &f.node.content, f.node.size, &keys, &zero_ids))
            })
            .collect();
        for (i, result) in results {
            let f = &files[i];
            match result {
                Ok(None) => {
                    outcome.verified_files += 1;
                    outcome.verified_bytes += f.node.size;
                }
                Ok(Some(why)) => {
                    outcome.verify_failures += 1;
                    problem(&mut outcome, &f.path, format!("verification failed: {why}"));
                }
                Err(e) => {
                    outcome.verify_failures += 1;
                    problem(&mut outcome, &f.path, format!("verification failed: cannot read it back: {e}"));
                }
            }
        }
        for link in linked {
            let source = &files[link.source].path;
            let same_file = match (std::fs::symlink_metadata(source), std::fs::symlink_metadata(&link.path)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
            if same_file {
                outcome.verified_files += 1;
            } else {
                outcome.verify_failures += 1;
                let msg = format!("verification failed: not a hard link of {}", source.display());
                problem(&mut outcome, &link.path, msg);
            }
        }
    }
    if options.delete {
        delete_extra(&options.target, &selection, &seen, &mut Vec::new(), &mut outcome, progress);
    }
    Ok(outcome)
}

/// Whether the mode, and the owner where restore sets owners, of `path` are
/// the snapshot's.
fn metadata_right(path: &Path, node: &Node, chown: bool) -> bool {
    std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.mode() & 0o7777 == node.mode && (!chown || (m.uid() == node.uid && m.gid() == node.gid)))
}

/// Whether an unchanged file's metadata would have to be set on an inode
/// with other names: chmod or chown there would change a file that may lie
/// outside the target (a link planted to make restore change it), so such
/// a file is written anew instead, as `prepare_file` does for any write.
fn shared_with_wrong_metadata(job: &FileJob, chown: bool) -> bool {
    let shared = std::fs::symlink_metadata(&job.path).map_or(true, |m| m.nlink() > 1);
    shared && !metadata_right(&job.path, &job.node, chown)
}

/// Makes `path` a hard link to `source`, replacing what is in the way.
/// Returns false when it already was one.
fn make_hard_link(source: &Path, path: &Path) -> std::io::Result<bool> {
    let src = std::fs::symlink_metadata(source)?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.dev() == src.dev() && m.ino() == src.ino() => return Ok(false),
        Ok(m) if m.is_dir() => {
            return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "a directory is in the way"));
        }
        Ok(_) => std::fs::remove_file(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::hard_link(source, path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(p: &str) -> Vec<Vec<u8>> {
        snapshot_components(Path::new(p)).unwrap()
    }

    #[test]
    fn selection_restores_included_subtrees_and_their_parents() {
        let all = Selection { includes: vec![] };
        assert_eq!(all.check(&comps("/a/b")), (true, true));
        let sel = Selection { includes: vec![comps("/home/ana/Pictures/2024")] };
        assert_eq!(sel.check(&comps("/home")), (true, true), "ancestor: create and descend");
        assert_eq!(sel.check(&comps("/home/ana/Pictures/2024")), (true, true));
        assert_eq!(sel.check(&comps("/home/ana/Pictures/2024/x.jpg")), (true, true));
        assert_eq!(sel.check(&comps("/home/ana/Pictures/2023")), (false, false));
        assert_eq!(sel.check(&comps("/home/bob")), (false, false));
        assert_eq!(sel.check(&comps("/home/ana/Pictures/20245")), (false, false), "component-wise, not string prefix");
    }

    #[test]
    fn zero_test() {
        assert!(is_all_zero(&[]));
        assert!(is_all_zero(&vec![0u8; 200_001]));
        for at in [0, 1, 65_535, 65_536, 200_000] {
            let mut v = vec![0u8; 200_001];
            v[at] = 1;
            assert!(!is_all_zero(&v), "{at}");
        }
    }

    #[test]
    fn sparse_writes_leave_zero_blocks_out() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&p).unwrap();
        let size = 4 << 20;
        f.set_len(size).unwrap();
        // Data at the start, zeros, data across a block boundary, zeros.
        let mut data = vec![0u8; 1 << 20];
        data[..10].fill(1);
        data[300_000..400_000].fill(2);
        let offset = 100_000;
        write_sparse(&f, &data, offset).unwrap();
        let mut back = vec![0u8; size as usize];
        f.read_exact_at(&mut back, 0).unwrap();
        let mut want = vec![0u8; size as usize];
        want[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
        assert!(back == want);
        // Two runs of data are at most 2 + 3 blocks of 64 KiB.
        assert!(f.metadata().unwrap().blocks() * 512 <= 5 * 64 * 1024, "{}", f.metadata().unwrap().blocks());
    }

    #[test]
    fn runs_longer_than_one_write_land_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&p).unwrap();
        // A run of data several MAX_WRITE long, not aligned to it, then a
        // hole, then a run that ends the buffer.
        let mut data: Vec<u8> = (0..3 * MAX_WRITE + 12_345).map(|i| (i % 251) as u8 | 1).collect();
        let hole = MAX_WRITE + 64 * 1024;
        data[hole..hole + 2 * 64 * 1024].fill(0);
        let offset = 64 * 1024 - 7;
        let size = (offset as usize + data.len()) as u64;
        f.set_len(size).unwrap();
        write_sparse(&f, &data, offset).unwrap();
        let mut back = vec![0u8; size as usize];
        f.read_exact_at(&mut back, 0).unwrap();
        assert!(back[..offset as usize].iter().all(|&b| b == 0));
        assert!(back[offset as usize..] == data[..]);
    }

    #[test]
    fn content_check_reads_data_and_hashes_holes() {
        let keys = Keys::generate();
        let zero_ids = ZeroIds::default();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data = b"some data".to_vec();
        let zeros = vec![0u8; 1 << 20];
        let content = vec![ChunkRef(keys.id(&zeros), 1 << 20), ChunkRef(keys.id(&data), data.len() as u32)];
        let size = (1 << 20) + data.len() as u64;
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(&data, 1 << 20).unwrap();
        assert_eq!(content_differs(&p, &content, size, &keys, &zero_ids).unwrap(), None);
        f.write_all_at(b"X", 5).unwrap();
        let why = content_differs(&p, &content, size, &keys, &zero_ids).unwrap().unwrap();
        assert!(why.contains("bytes 0..1048576"), "{why}");
        f.write_all_at(&[0], 5).unwrap();
        f.write_all_at(b"S", 1 << 20).unwrap();
        assert!(content_differs(&p, &content, size, &keys, &zero_ids).unwrap().is_some());
        f.set_len(size - 1).unwrap();
        let why = content_differs(&p, &content, size, &keys, &zero_ids).unwrap().unwrap();
        assert!(why.contains("bytes"), "{why}");
    }
}
