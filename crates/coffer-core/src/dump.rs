//! `dump`: one file of a snapshot written out as a byte stream, or a folder
//! (or the whole snapshot) as a tar archive.
//!
//! Content is streamed: a producer thread walks the trees in name order and
//! starts chunk fetches ahead of the writer, with a bounded number of
//! plaintext bytes in flight (the permit of each chunk is returned once it
//! is written out), so memory does not grow with the size of a file or of
//! the snapshot.
//!
//! The archive is GNU tar: GNU long-name and long-link entries carry names
//! and symlink targets of any length as raw bytes (not UTF-8 is fine), GNU
//! base-256 numbers carry large sizes and ids, and a PAX extended header is
//! added where the GNU header cannot say enough: mtimes with nanoseconds or
//! before 1970, and extended attributes (`SCHILY.xattr.*`, as GNU tar and
//! bsdtar read them). Entries are named by their path in the snapshot,
//! without the leading `/` (as restic's dump does). A file with several
//! names in the archive is stored once and its other names are hard-link
//! entries. Sockets cannot be archived and are left out.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use crate::crypto::ObjectKind;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::{Repository, fetch_blob};
use crate::restorer::{DEFAULT_BYTES_IN_FLIGHT, is_all_zero, link_key};
use crate::tree::{ChunkRef, Node, NodeKind};
use crate::walk;

#[derive(Clone, Debug, Default)]
pub struct DumpOptions {
    /// Chunk fetches in flight; 0 uses the backend's own preference.
    pub concurrency: usize,
    /// Plaintext bytes of chunks fetched ahead of the writer; 0 uses
    /// [`DEFAULT_BYTES_IN_FLIGHT`].
    pub max_bytes_in_flight: usize,
}

/// What a path of a snapshot names, for `dump`.
#[derive(Clone, Debug)]
pub enum Dumpable {
    /// A regular file: its content is written as it is.
    File { path: PathBuf, node: Node },
    /// A folder, or the whole snapshot (`node` is `None`): written as a tar
    /// archive. `path` is the folder's path in the snapshot, relative (empty
    /// for the root).
    Folder { path: PathBuf, node: Option<Node>, tree: Id },
}

impl Dumpable {
    /// True when the output is a tar archive.
    pub fn is_archive(&self) -> bool {
        matches!(self, Dumpable::Folder { .. })
    }
}

/// What was written.
#[derive(Clone, Debug, Default)]
pub struct DumpOutcome {
    /// Entries in the archive (1 for a file).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Finds what `path` names in the snapshot whose root tree is `root`. A
/// path that is not in the snapshot, and entries that are neither files nor
/// folders, are errors.
pub fn find(repo: &Repository, root: &Id, path: &Path) -> Result<Dumpable> {
    use std::os::unix::ffi::OsStrExt;
    let rel: PathBuf =
        walk::snapshot_components(path)?.iter().map(|c| PathBuf::from(std::ffi::OsStr::from_bytes(c))).collect();
    match walk::find(repo, root, path)? {
        None => Ok(Dumpable::Folder { path: PathBuf::new(), node: None, tree: *root }),
        Some(node) => match (node.kind, node.subtree) {
            (NodeKind::File, _) => Ok(Dumpable::File { path: rel, node }),
            (NodeKind::Dir, Some(tree)) => Ok(Dumpable::Folder { path: rel, node: Some(node), tree }),
            (kind, _) => {
                let what = match kind {
                    NodeKind::Symlink => {
                        format!("a symlink to {}", String::from_utf8_lossy(node.target.as_deref().unwrap_or_default()))
                    }
                    NodeKind::Fifo => "a FIFO".into(),
                    NodeKind::Socket => "a socket".into(),
                    NodeKind::CharDevice => "a character device".into(),
                    _ => "a block device".into(),
                };
                Err(Error::InvalidInput(format!(
                    "{} is {what}: dump writes files and folders",
                    Path::new("/").join(&rel).display()
                )))
            }
        },
    }
}

/// Writes `what` to `out`: a file's content, or a folder as a tar archive.
/// Stops at the first problem; a damaged or missing chunk is reported with
/// the file that needs it and the chunk's id. Errors writing to `out` are
/// [`Error::Io`] with the path `<output>`.
pub fn write(repo: &Repository, what: &Dumpable, out: &mut dyn Write, options: &DumpOptions) -> Result<DumpOutcome> {
    let concurrency = match options.concurrency {
        0 => repo.backend().concurrency().max(2),
        n => n,
    };
    let budget = match options.max_bytes_in_flight {
        0 => DEFAULT_BYTES_IN_FLIGHT,
        n => n,
    }
    .min(u32::MAX as usize) as u32;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(concurrency * 4);
    let fetcher = Fetcher {
        repo,
        blobs: repo.blob_set()?,
        semaphore: Arc::new(tokio::sync::Semaphore::new(budget as usize)),
        budget,
        zero_chunks: Arc::new(Mutex::new(HashSet::new())),
    };
    std::thread::scope(|scope| {
        scope.spawn(move || produce(&fetcher, what, &tx));
        // The receiver is dropped when this returns, which stops the producer.
        consume(repo, what, rx, out)
    })
}

/// One decoded chunk on its way out, holding its share of the byte budget
/// until it is dropped.
enum Piece {
    Data(crate::blob::Decoded, #[allow(dead_code)] tokio::sync::OwnedSemaphorePermit),
    Zeros(u32),
}

impl Piece {
    fn bytes(&self) -> Option<&[u8]> {
        match self {
            Piece::Data(d, _) => Some(d),
            Piece::Zeros(_) => None,
        }
    }

    fn len(&self) -> usize {
        match self {
            Piece::Data(d, _) => d.len(),
            Piece::Zeros(n) => *n as usize,
        }
    }
}

/// What the producer sends, in archive order: an entry, then the chunks of
/// its content.
enum Msg {
    Entry { path: PathBuf, node: Box<Node>, link_to: Option<PathBuf> },
    Chunk(tokio::task::JoinHandle<Result<Piece>>),
    Failed(Error),
}

struct Fetcher<'a> {
    repo: &'a Repository,
    blobs: Arc<crate::index::BlobSet>,
    semaphore: Arc<tokio::sync::Semaphore>,
    budget: u32,
    /// Chunks seen to be all zeros: not fetched again.
    zero_chunks: Arc<Mutex<HashSet<Id>>>,
}

impl Fetcher<'_> {
    /// Starts fetching a chunk once its bytes fit in the budget.
    fn start(&self, chunk: ChunkRef) -> Result<Msg> {
        if self.zero_chunks.lock().is_ok_and(|z| z.contains(&chunk.0)) {
            return Ok(Msg::Chunk(self.repo.runtime().spawn(async move { Ok(Piece::Zeros(chunk.1)) })));
        }
        let permit = self
            .repo
            .runtime()
            .block_on(self.semaphore.clone().acquire_many_owned(chunk.1.min(self.budget)))
            .map_err(|e| Error::InvalidInput(format!("dump budget: {e}")))?;
        let backend = self.repo.backend().clone();
        let blobs = self.blobs.clone();
        let keys = self.repo.keys().clone();
        let repo_id = *self.repo.repo_id();
        let max_len = self.repo.max_chunk_len();
        let limit = self.repo.stored_limit(ObjectKind::Chunk);
        let zero_chunks = self.zero_chunks.clone();
        Ok(Msg::Chunk(self.repo.runtime().spawn(async move {
            // A chunk that fails to authenticate is read once more, as
            // restore does: a bit flipped on the way is not damage at rest.
            let data = crate::repo::read_twice(|| {
                let (backend, blobs, keys) = (backend.clone(), blobs.clone(), keys.clone());
                async move {
                    let stored = fetch_blob(&*backend, &blobs, ObjectKind::Chunk, &chunk.0, limit).await?;
                    tokio::task::spawn_blocking(move || {
                        crate::repo::decode_chunk_ref(&keys, &repo_id, max_len, &chunk, stored)
                    })
                    .await
                    .map_err(|e| Error::InvalidInput(format!("dump task failed: {e}")))?
                }
            })
            .await?;
            if is_all_zero(&data) {
                if let Ok(mut z) = zero_chunks.lock() {
                    z.insert(chunk.0);
                }
                return Ok(Piece::Zeros(chunk.1));
            }
            Ok(Piece::Data(data, permit))
        })))
    }
}

/// Walks what is dumped and sends its entries and chunk fetches in order.
fn produce(fetcher: &Fetcher<'_>, what: &Dumpable, tx: &SyncSender<Msg>) {
    // A send fails only when the writer stopped: stop too.
    let stopped = || Error::InvalidInput("the writer stopped".into());
    let send_content = |node: &Node| -> Result<()> {
        for c in &node.content {
            let msg = fetcher.start(*c)?;
            tx.send(msg).map_err(|_| stopped())?;
        }
        Ok(())
    };
    let result = match what {
        Dumpable::File { node, .. } => send_content(node),
        Dumpable::Folder { path, node, tree } => {
            let mut first_names: HashMap<(u64, u64), (PathBuf, Vec<ChunkRef>)> = HashMap::new();
            let mut entry = |path: &Path, node: &Node| -> Result<()> {
                let mut link_to = None;
                if let Some(key) = link_key(node) {
                    match first_names.get(&key) {
                        Some((first, content)) if *content == node.content => link_to = Some(first.clone()),
                        Some(_) => {}
                        None => {
                            first_names.insert(key, (path.to_path_buf(), node.content.clone()));
                        }
                    }
                }
                let content = node.kind == NodeKind::File && link_to.is_none();
                tx.send(Msg::Entry { path: path.to_path_buf(), node: Box::new(node.clone()), link_to })
                    .map_err(|_| stopped())?;
                if content {
                    send_content(node)?;
                }
                Ok(())
            };
            let top = match node {
                Some(n) => entry(path, n),
                None => Ok(()),
            };
            top.and_then(|()| {
                walk::walk(fetcher.repo, tree, path, &mut |p, n| {
                    entry(p, n)?;
                    Ok(true)
                })
            })
        }
    };
    if let Err(e) = result {
        let _ = tx.send(Msg::Failed(e));
    }
}

fn output_error(e: std::io::Error) -> Error {
    Error::io("<output>", e)
}

fn damaged(path: &Path, e: Error) -> Error {
    Error::corrupt("file", Path::new("/").join(path).display().to_string(), e.to_string())
}

/// Waits for the next chunk of a file.
fn next_piece(repo: &Repository, rx: &Receiver<Msg>) -> Result<Piece> {
    match rx.recv() {
        Ok(Msg::Chunk(handle)) => {
            repo.runtime().block_on(handle).map_err(|e| Error::InvalidInput(format!("dump task failed: {e}")))?
        }
        Ok(Msg::Failed(e)) => Err(e),
        Ok(Msg::Entry { .. }) | Err(_) => Err(Error::InvalidInput("dump: the content of a file ended early".into())),
    }
}

fn write_zeros(out: &mut dyn Write, mut n: usize) -> std::io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    while n > 0 {
        let k = n.min(ZEROS.len());
        out.write_all(&ZEROS[..k])?;
        n -= k;
    }
    Ok(())
}

fn consume(repo: &Repository, what: &Dumpable, rx: Receiver<Msg>, out: &mut dyn Write) -> Result<DumpOutcome> {
    match what {
        Dumpable::File { path, node } => {
            check_lengths(path, node)?;
            for _ in &node.content {
                let piece = next_piece(repo, &rx).map_err(|e| damaged(path, e))?;
                match piece.bytes() {
                    Some(b) => out.write_all(b),
                    None => write_zeros(out, piece.len()),
                }
                .map_err(output_error)?;
            }
            out.flush().map_err(output_error)?;
            Ok(DumpOutcome { entries: 1, bytes: node.size })
        }
        Dumpable::Folder { .. } => {
            let mut outcome = DumpOutcome::default();
            let mut builder = tar::Builder::new(out);
            let written = loop {
                match rx.recv() {
                    Ok(Msg::Entry { path, node, link_to }) => {
                        match write_entry(repo, &mut builder, &rx, &path, &node, link_to.as_deref()) {
                            Ok(true) => {
                                outcome.entries += 1;
                                if node.kind == NodeKind::File && link_to.is_none() {
                                    outcome.bytes += node.size;
                                }
                            }
                            Ok(false) => {}
                            Err(e) => break Err(e),
                        }
                    }
                    Ok(Msg::Failed(e)) => break Err(e),
                    Ok(Msg::Chunk(_)) => break Err(Error::InvalidInput("dump: a chunk without its file".into())),
                    Err(_) => break Ok(()),
                }
            };
            if let Err(e) = written {
                // Dropping the builder would end the archive properly, making
                // a truncated entry look like a complete archive to some readers.
                std::mem::forget(builder);
                return Err(e);
            }
            builder.finish().map_err(output_error)?;
            builder.get_mut().flush().map_err(output_error)?;
            Ok(outcome)
        }
    }
}

fn check_lengths(path: &Path, node: &Node) -> Result<()> {
    let total: u64 = node.content.iter().map(|c| u64::from(c.1)).sum();
    if total != node.size {
        return Err(damaged(
            path,
            Error::InvalidInput(format!("chunk lengths add up to {total} bytes, the file has {}", node.size)),
        ));
    }
    Ok(())
}

/// Reads a file's content from the producer, for the tar builder. A chunk
/// that cannot be had is kept in `error` (the builder sees an I/O error).
struct ContentReader<'a> {
    repo: &'a Repository,
    rx: &'a Receiver<Msg>,
    chunks_left: usize,
    piece: Option<Piece>,
    pos: usize,
    error: Option<Error>,
}

impl Read for ContentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(piece) = &self.piece
                && self.pos < piece.len()
            {
                let n = buf.len().min(piece.len() - self.pos);
                match piece.bytes() {
                    Some(b) => buf[..n].copy_from_slice(&b[self.pos..self.pos + n]),
                    None => buf[..n].fill(0),
                }
                self.pos += n;
                return Ok(n);
            }
            self.piece = None;
            if self.chunks_left == 0 || buf.is_empty() {
                return Ok(0);
            }
            self.chunks_left -= 1;
            self.pos = 0;
            match next_piece(self.repo, self.rx) {
                Ok(p) => self.piece = Some(p),
                Err(e) => {
                    let msg = e.to_string();
                    self.error = Some(e);
                    return Err(std::io::Error::other(msg));
                }
            }
        }
    }
}

/// Appends one entry (and its content) to the archive; false when the
/// entry cannot be archived and was left out.
fn write_entry(
    repo: &Repository,
    builder: &mut tar::Builder<&mut dyn Write>,
    rx: &Receiver<Msg>,
    path: &Path,
    node: &Node,
    link_to: Option<&Path>,
) -> Result<bool> {
    use tar::EntryType;
    let mut header = tar::Header::new_gnu();
    header.set_mode(node.mode & 0o7777);
    header.set_uid(u64::from(node.uid));
    header.set_gid(u64::from(node.gid));
    // Names longer than the field (32 bytes) are left out; the ids stay.
    if let Some(user) = &node.user {
        let _ = header.set_username(user);
    }
    if let Some(group) = &node.group {
        let _ = header.set_groupname(group);
    }
    header.set_mtime(u64::try_from(node.mtime.sec).unwrap_or(0));
    header.set_size(0);
    let kind = match (node.kind, link_to) {
        (NodeKind::File, Some(_)) => EntryType::Link,
        (NodeKind::File, None) => EntryType::Regular,
        (NodeKind::Dir, _) => EntryType::Directory,
        (NodeKind::Symlink, _) => EntryType::Symlink,
        (NodeKind::Fifo, _) => EntryType::Fifo,
        (NodeKind::CharDevice, _) => EntryType::Char,
        (NodeKind::BlockDevice, _) => EntryType::Block,
        (NodeKind::Socket, _) => {
            tracing::info!("{}: a socket cannot be archived; left out", path.display());
            return Ok(false);
        }
    };
    header.set_entry_type(kind);
    if matches!(node.kind, NodeKind::CharDevice | NodeKind::BlockDevice) {
        let dev = node.rdev as nix::libc::dev_t;
        let major = u32::try_from(nix::sys::stat::major(dev)).unwrap_or(u32::MAX);
        let minor = u32::try_from(nix::sys::stat::minor(dev)).unwrap_or(u32::MAX);
        header.set_device_major(major).map_err(output_error)?;
        header.set_device_minor(minor).map_err(output_error)?;
    }
    write_pax(builder, node).map_err(output_error)?;
    match (node.kind, link_to) {
        (_, Some(first)) => builder.append_link(&mut header, path, first).map_err(output_error)?,
        (NodeKind::Symlink, _) => {
            let target = node.target.as_deref().unwrap_or_default();
            if target.len() <= 100 {
                header.set_link_name_literal(target).map_err(output_error)?;
            } else {
                write_gnu_long_link(builder, target).map_err(output_error)?;
                header.set_link_name_literal(&target[..100]).map_err(output_error)?;
            }
            builder.append_data(&mut header, path, std::io::empty()).map_err(output_error)?;
        }
        (NodeKind::File, None) => {
            check_lengths(path, node)?;
            header.set_size(node.size);
            let mut reader =
                ContentReader { repo, rx, chunks_left: node.content.len(), piece: None, pos: 0, error: None };
            let written = builder.append_data(&mut header, path, &mut reader);
            if let Some(e) = reader.error {
                return Err(damaged(path, e));
            }
            written.map_err(output_error)?;
        }
        _ => builder.append_data(&mut header, path, std::io::empty()).map_err(output_error)?,
    }
    Ok(true)
}

/// The PAX records an entry needs beyond the GNU header: an mtime with
/// nanoseconds or before 1970, and extended attributes.
fn pax_records(node: &Node) -> Vec<(String, Vec<u8>)> {
    let mut records = Vec::new();
    let (sec, nsec) = (node.mtime.sec, node.mtime.nsec);
    if nsec != 0 || sec < 0 {
        let value = if sec < 0 && nsec > 0 {
            // -1.25 s is sec -2, nsec 750 000 000.
            format!("-{}.{:09}", -(sec + 1), 1_000_000_000 - nsec)
        } else {
            format!("{sec}.{nsec:09}")
        };
        records.push(("mtime".to_string(), value.into_bytes()));
    }
    for x in &node.xattrs {
        match std::str::from_utf8(&x.name) {
            Ok(name) if !name.contains('=') => records.push((format!("SCHILY.xattr.{name}"), x.value.clone())),
            _ => tracing::warn!("extended attribute {:?} cannot be named in a tar archive; left out", x.name),
        }
    }
    records
}

fn write_pax(builder: &mut tar::Builder<&mut dyn Write>, node: &Node) -> std::io::Result<()> {
    let records = pax_records(node);
    if records.is_empty() {
        return Ok(());
    }
    let mut data = Vec::new();
    for (key, value) in &records {
        // "<len> <key>=<value>\n", where <len> counts the whole record.
        let rest = key.len() + value.len() + 3;
        let digits = rest.to_string().len();
        let mut len = rest + digits;
        if len.to_string().len() > digits {
            len += 1;
        }
        data.extend_from_slice(format!("{len} {key}=").as_bytes());
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    let mut header = tar::Header::new_ustar();
    set_raw_name(&mut header, b"././@PaxHeader");
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_entry_type(tar::EntryType::XHeader);
    header.set_cksum();
    builder.append(&header, data.as_slice())
}

/// A GNU long-link entry: the target of the symlink that follows, as raw
/// bytes (the header's own field holds 100).
fn write_gnu_long_link(builder: &mut tar::Builder<&mut dyn Write>, target: &[u8]) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    set_raw_name(&mut header, b"././@LongLink");
    header.set_mode(0o644);
    header.set_size(target.len() as u64 + 1);
    header.set_entry_type(tar::EntryType::GNULongLink);
    header.set_cksum();
    builder.append(&header, target.chain(&[0u8][..]))
}

fn set_raw_name(header: &mut tar::Header, name: &[u8]) {
    let field = &mut header.as_old_mut().name;
    field.fill(0);
    field[..name.len()].copy_from_slice(name);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Timestamp;

    #[test]
    fn pax_mtime_records() {
        let mut node = Node::new(b"x".to_vec(), NodeKind::File);
        node.mtime = Timestamp { sec: 1_700_000_000, nsec: 0 };
        assert!(pax_records(&node).is_empty());
        node.mtime = Timestamp { sec: 1_700_000_000, nsec: 5 };
        assert_eq!(pax_records(&node), vec![("mtime".into(), b"1700000000.000000005".to_vec())]);
        node.mtime = Timestamp { sec: -2, nsec: 750_000_000 };
        assert_eq!(pax_records(&node), vec![("mtime".into(), b"-1.250000000".to_vec())]);
        node.mtime = Timestamp { sec: -2, nsec: 0 };
        assert_eq!(pax_records(&node), vec![("mtime".into(), b"-2.000000000".to_vec())]);
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        // A record whose length crosses a power of ten when its own digits
        // are added.
        let mut node = Node::new(b"x".to_vec(), NodeKind::File);
        // "SCHILY.xattr.user.a" is 19 bytes: 19 + 76 + 3 = 98, 2 digits make 100, which has 3.
        node.xattrs = vec![crate::tree::Xattr { name: b"user.a".to_vec(), value: vec![b'v'; 76] }];
        let mut out = Vec::new();
        let mut builder = tar::Builder::new(&mut out as &mut dyn Write);
        write_pax(&mut builder, &node).unwrap();
        std::mem::forget(builder);
        let data = &out[512..];
        let space = data.iter().position(|&b| b == b' ').unwrap();
        let len: usize = std::str::from_utf8(&data[..space]).unwrap().parse().unwrap();
        assert_eq!(data[len - 1], b'\n');
        assert_eq!(len, 101);
        assert!(data[len..].iter().all(|&b| b == 0), "the record is exactly {len} bytes");
    }
}
