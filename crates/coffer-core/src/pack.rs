//! Packs (format v2): many blobs in one stored object, so that a terabyte of
//! photos is tens of thousands of objects rather than millions, and the
//! operator no longer sees each chunk's size.
//!
//! ```text
//! pack    = blob ‖ … ‖ blob ‖ header ‖ header length u32 LE
//! header  = nonce (16) ‖ tag (16) ‖ SIV(plain), AD = "pack header" ‖ pack kind ‖ repository id ‖ nonce
//! plain   = version u8 (1) ‖ pack kind u8 (0 data, 1 tree) ‖ count u32 LE ‖ count × entry ‖ zero padding
//! entry   = blob id (32) ‖ offset u32 LE ‖ stored length u32 LE ‖ plaintext length u32 LE
//! ```
//!
//! Each blob is a chunk or tree encoded exactly as a v1 object
//! ([`crate::blob::encode`]), so a repack copies it without decrypting. The
//! blobs lie back to back from offset 0 and the entries list them in that
//! order: a reader checks that they tile the pack exactly. The zero padding
//! makes the whole pack's length a Padmé length ([`crate::blob::padme`]),
//! so pack sizes say little about the blobs inside. A pack's id is the keyed
//! hash of all its stored bytes ([`Keys::pack_id`]), so a damaged pack is
//! found by hashing it, without the header key; it is stored as
//! `data/<xx>/<id>` (chunk blobs only) or `tree/<xx>/<id>` (tree blobs only,
//! so that data can go to a cold storage class and trees stay at hand).
//! `docs/format.md` is the byte-level reference.

use crate::blob::{OBJECT_ALIGN, padme};
use crate::crypto::{Keys, NONCE_LEN, ObjectKind, TAG_LEN, fill_random};
use crate::error::{Error, Result};
use crate::id::Id;

/// The header's format version.
pub const HEADER_VERSION: u8 = 1;
/// Bytes of one header entry.
pub const ENTRY_LEN: usize = 32 + 4 + 4 + 4;
/// Version, kind and count.
const PLAIN_FIXED: usize = 1 + 1 + 4;
/// Nonce and tag around the header's plaintext.
const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// The header length after the header.
pub const TRAILER_LEN: usize = 4;
/// The most bytes a header may take (some 380,000 blobs): a reader refuses
/// a larger one before reading it.
pub const MAX_HEADER_LEN: usize = 16 << 20;
/// The most blob bytes one pack may hold: offsets are 32-bit.
pub const MAX_BLOB_BYTES: u64 = u32::MAX as u64 - (MAX_HEADER_LEN + TRAILER_LEN) as u64;

/// Which blobs a pack holds, and so where it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PackKind {
    Data,
    Tree,
}

impl PackKind {
    pub fn code(self) -> u8 {
        match self {
            PackKind::Data => 0,
            PackKind::Tree => 1,
        }
    }

    pub fn from_code(code: u8) -> Option<PackKind> {
        match code {
            0 => Some(PackKind::Data),
            1 => Some(PackKind::Tree),
            _ => None,
        }
    }

    /// Bound into the header as associated data: a pack moved from
    /// `data/` to `tree/` does not authenticate.
    fn tag(self) -> &'static [u8] {
        match self {
            PackKind::Data => b"data",
            PackKind::Tree => b"tree",
        }
    }

    /// The kind of every blob in a pack of this kind.
    pub fn blob_kind(self) -> ObjectKind {
        match self {
            PackKind::Data => ObjectKind::Chunk,
            PackKind::Tree => ObjectKind::Tree,
        }
    }

    pub fn of_blob(kind: ObjectKind) -> Option<PackKind> {
        match kind {
            ObjectKind::Chunk => Some(PackKind::Data),
            ObjectKind::Tree => Some(PackKind::Tree),
            _ => None,
        }
    }

    /// The folder its packs are stored in.
    pub fn dir(self) -> &'static str {
        match self {
            PackKind::Data => "data/",
            PackKind::Tree => "tree/",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PackKind::Data => "data pack",
            PackKind::Tree => "tree pack",
        }
    }
}

/// The key a pack is stored under: `data/ab/ab12…` or `tree/ab/ab12…`.
pub fn pack_key(kind: PackKind, id: &Id) -> String {
    let hex = id.to_hex();
    format!("{}{}/{hex}", kind.dir(), &hex[..2])
}

/// Parses a listed key back into a pack id, if it is a well-formed name of
/// that kind (temporary and misplaced names are not packs).
pub fn parse_pack_key(kind: PackKind, key: &str) -> Option<Id> {
    let (dir, name) = key.strip_prefix(kind.dir())?.split_once('/')?;
    if dir.len() != 2 || !name.starts_with(dir) {
        return None;
    }
    Id::from_hex(name)
}

/// Where one blob lies in its pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub id: Id,
    pub offset: u32,
    /// Stored (encrypted, padded) length.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
}

impl PackEntry {
    pub fn end(&self) -> u64 {
        u64::from(self.offset) + u64::from(self.length)
    }

    /// Appends the entry's 44 bytes (shared with index objects).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.raw_length.to_le_bytes());
    }

    /// Reads an entry from exactly [`ENTRY_LEN`] bytes.
    pub fn decode(b: &[u8; ENTRY_LEN]) -> PackEntry {
        let word = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[..32]);
        PackEntry { id: Id(id), offset: word(32), length: word(36), raw_length: word(40) }
    }
}

/// A complete pack, ready to store.
#[derive(Debug)]
pub struct FinishedPack {
    pub id: Id,
    pub kind: PackKind,
    /// The stored bytes, at an [`OBJECT_ALIGN`]ed address when the writer
    /// had the room it was given (a local store writes them to the device
    /// from where they lie).
    pub bytes: crate::backend::Bytes,
    pub entries: Vec<PackEntry>,
}

/// Buffers of packs already stored, for the next packs to be built in: a
/// fresh 40 MiB buffer is mapped page by page as blobs are copied in, a
/// page fault and a zeroed page every 4 KiB (some 8 % of a first backup's
/// CPU time).
#[derive(Debug, Default)]
pub struct BufferPool {
    spare: std::sync::Mutex<Vec<Vec<u8>>>,
}

/// Buffers a pool keeps at most: enough for the packs sealed while others
/// upload; more would only hold memory.
const POOL_MAX: usize = 2;

impl BufferPool {
    /// The smallest spare buffer with room for `capacity` bytes, if there
    /// is one (a tree pack does not take a data pack's buffer from it).
    fn take(&self, capacity: usize) -> Option<Vec<u8>> {
        let mut spare = self.spare.lock().ok()?;
        let (at, _) =
            spare.iter().enumerate().filter(|(_, b)| b.capacity() >= capacity).min_by_key(|(_, b)| b.capacity())?;
        Some(spare.swap_remove(at))
    }

    fn give(&self, mut buf: Vec<u8>) {
        if let Ok(mut spare) = self.spare.lock()
            && spare.len() < POOL_MAX
        {
            buf.clear();
            spare.push(buf);
        }
    }
}

/// A stored pack's bytes, whose buffer goes back to its pool once the
/// store is done with them.
struct PooledBytes {
    buf: Vec<u8>,
    start: usize,
    home: Option<std::sync::Arc<BufferPool>>,
}

impl AsRef<[u8]> for PooledBytes {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

impl Drop for PooledBytes {
    fn drop(&mut self) {
        if let Some(pool) = self.home.take() {
            pool.give(std::mem::take(&mut self.buf));
        }
    }
}

/// Builds one pack in memory, blob by blob.
#[derive(Debug)]
pub struct PackWriter {
    kind: PackKind,
    /// The pack from `start` on; the bytes before only align it.
    buf: Vec<u8>,
    start: usize,
    entries: Vec<PackEntry>,
    /// Where the buffer goes once the pack is stored.
    home: Option<std::sync::Arc<BufferPool>>,
}

impl PackWriter {
    pub fn new(kind: PackKind) -> PackWriter {
        PackWriter { kind, buf: Vec::new(), start: 0, entries: Vec::new(), home: None }
    }

    /// [`PackWriter::with_capacity`] in a buffer of `pool`'s where it has
    /// one, and giving the buffer back to it once the pack is stored.
    pub fn in_pool(kind: PackKind, capacity: usize, pool: &std::sync::Arc<BufferPool>) -> PackWriter {
        let mut w = match pool.take(capacity + OBJECT_ALIGN) {
            Some(buf) => PackWriter::aligned_in(kind, buf),
            None => PackWriter::with_capacity(kind, capacity),
        };
        w.home = Some(pool.clone());
        w
    }

    /// A writer whose pack starts at an [`OBJECT_ALIGN`]ed address and has
    /// room for `capacity` bytes: it is never moved while it grows (each
    /// move of a 32 MiB pack copied it, and doubled its footprint for a
    /// moment), and a local store writes it with direct I/O from where it
    /// lies instead of copying it into an aligned buffer. Untouched room
    /// costs address space, not memory.
    pub fn with_capacity(kind: PackKind, capacity: usize) -> PackWriter {
        PackWriter::aligned_in(kind, Vec::with_capacity(capacity + OBJECT_ALIGN))
    }

    /// A writer whose pack starts at the first aligned address of `buf`
    /// (empty, with the room wanted).
    fn aligned_in(kind: PackKind, mut buf: Vec<u8>) -> PackWriter {
        buf.clear();
        let start = crate::blob::aligned_offset(&buf, OBJECT_ALIGN);
        buf.resize(start, 0);
        PackWriter { kind, buf, start, entries: Vec::new(), home: None }
    }

    pub fn kind(&self) -> PackKind {
        self.kind
    }

    /// Blob bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// Whether `stored_len` more bytes of blobs still fit.
    pub fn fits(&self, stored_len: usize) -> bool {
        self.len() as u64 + stored_len as u64 <= MAX_BLOB_BYTES
            && PLAIN_FIXED + (self.entries.len() + 1) * ENTRY_LEN + SEAL_OVERHEAD <= MAX_HEADER_LEN
    }

    /// Appends an encoded blob (see [`crate::blob::encode`]).
    pub fn add(&mut self, id: Id, stored: &[u8], raw_length: u32) -> Result<()> {
        // Readers refuse an empty blob (no encoding is empty), so never write one.
        if stored.is_empty() {
            return Err(Error::InvalidInput(format!("blob {id} is empty; a {} holds encoded blobs", self.kind.name())));
        }
        if !self.fits(stored.len()) {
            return Err(Error::InvalidInput(format!("a {} cannot hold {} more bytes", self.kind.name(), stored.len())));
        }
        let entry = PackEntry { id, offset: self.len() as u32, length: stored.len() as u32, raw_length };
        self.buf.extend_from_slice(stored);
        self.entries.push(entry);
        Ok(())
    }

    /// Seals the header, pads the pack to a Padmé length and names it.
    pub fn finish(self, keys: &Keys, repo_id: &[u8; 32]) -> FinishedPack {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        self.finish_with_nonce(keys, repo_id, nonce)
    }

    fn finish_with_nonce(self, keys: &Keys, repo_id: &[u8; 32], nonce: [u8; NONCE_LEN]) -> FinishedPack {
        let blob_bytes = self.len();
        let PackWriter { kind, mut buf, start, entries, home } = self;
        let plain_len = PLAIN_FIXED + entries.len() * ENTRY_LEN;
        let unpadded = blob_bytes + SEAL_OVERHEAD + plain_len + TRAILER_LEN;
        let padding = (padme(unpadded as u64) as usize - unpadded).min(MAX_HEADER_LEN - SEAL_OVERHEAD - plain_len);
        let mut plain = Vec::with_capacity(plain_len + padding);
        plain.push(HEADER_VERSION);
        plain.push(kind.code());
        plain.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for e in &entries {
            e.encode_into(&mut plain);
        }
        plain.resize(plain_len + padding, 0);
        let sealed = keys.seal_pack_header(&header_ad(kind, repo_id, &nonce), &plain);
        let header_len = (NONCE_LEN + sealed.len()) as u32;
        buf.reserve_exact(header_len as usize + TRAILER_LEN);
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(&sealed);
        buf.extend_from_slice(&header_len.to_le_bytes());
        let id = keys.pack_id(&buf[start..]);
        let bytes = match home {
            Some(home) => crate::backend::Bytes::from_owner(PooledBytes { buf, start, home: Some(home) }),
            None => crate::backend::Bytes::from(buf).slice(start..),
        };
        FinishedPack { id, kind, bytes, entries }
    }
}

fn header_ad<'a>(kind: PackKind, repo_id: &'a [u8; 32], nonce: &'a [u8; NONCE_LEN]) -> [&'a [u8]; 4] {
    [b"pack header", kind.tag(), repo_id, nonce]
}

/// The header length a pack's last [`TRAILER_LEN`] bytes give, checked
/// against the pack's length: how many bytes before the trailer to read.
pub fn header_len(kind: PackKind, id: &Id, pack_len: u64, trailer: [u8; TRAILER_LEN]) -> Result<usize> {
    let len = u32::from_le_bytes(trailer) as usize;
    let bad = |why: String| Error::corrupt(kind.name(), id.to_hex(), why);
    if len < SEAL_OVERHEAD + PLAIN_FIXED {
        return Err(bad(format!("its header length {len} is too short for a header")));
    }
    if len > MAX_HEADER_LEN {
        return Err(bad(format!("its header length {len} is over the limit of {MAX_HEADER_LEN}")));
    }
    if (len + TRAILER_LEN) as u64 > pack_len {
        return Err(bad(format!("its header length {len} is more than the pack's {pack_len} bytes")));
    }
    Ok(len)
}

/// Authenticates and decodes the header of the pack `id` of `pack_len`
/// bytes, given its last bytes (`tail`: at least the header and the
/// trailer). The entries tile the blob area exactly.
pub fn decode_header(
    keys: &Keys,
    repo_id: &[u8; 32],
    kind: PackKind,
    id: &Id,
    pack_len: u64,
    tail: &[u8],
) -> Result<Vec<PackEntry>> {
    let bad = |why: &str| Error::corrupt(kind.name(), id.to_hex(), why);
    let Some(trailer_at) = tail.len().checked_sub(TRAILER_LEN) else {
        return Err(bad("it is shorter than its trailer"));
    };
    let trailer: [u8; TRAILER_LEN] = tail[trailer_at..].try_into().map_err(|_| bad("short trailer"))?;
    let len = header_len(kind, id, pack_len, trailer)?;
    let Some(header_at) = trailer_at.checked_sub(len) else {
        return Err(bad("fewer bytes than its header length were given"));
    };
    let header = &tail[header_at..trailer_at];
    let (nonce, sealed) = header.split_at(NONCE_LEN);
    let nonce: &[u8; NONCE_LEN] = nonce.try_into().map_err(|_| bad("short nonce"))?;
    let plain = keys
        .open_pack_header(&header_ad(kind, repo_id, nonce), sealed)
        .ok_or_else(|| bad("its header does not authenticate (altered, truncated, or another kind of pack)"))?;
    let blob_area = pack_len - (len + TRAILER_LEN) as u64;
    parse_plain(&plain, kind, blob_area).map_err(|why| bad(&why))
}

/// Parses an authenticated header's plaintext (public for the fuzz target):
/// `blob_area` is the pack's length before its header.
pub fn parse_plain(plain: &[u8], kind: PackKind, blob_area: u64) -> std::result::Result<Vec<PackEntry>, String> {
    if plain.len() < PLAIN_FIXED {
        return Err("its header is too short".into());
    }
    if plain[0] != HEADER_VERSION {
        return Err(format!("its header has version {}, this coffer reads {HEADER_VERSION}", plain[0]));
    }
    if PackKind::from_code(plain[1]) != Some(kind) {
        return Err(format!("its header names pack kind {}", plain[1]));
    }
    let count = u32::from_le_bytes([plain[2], plain[3], plain[4], plain[5]]) as usize;
    let body = &plain[PLAIN_FIXED..];
    let Some(entries_len) = count.checked_mul(ENTRY_LEN).filter(|&n| n <= body.len()) else {
        return Err(format!("its header lists {count} blobs but has room for {}", body.len() / ENTRY_LEN));
    };
    let (listed, padding) = body.split_at(entries_len);
    if padding.iter().any(|&b| b != 0) {
        return Err("its header's padding is not zero".into());
    }
    let mut entries = Vec::with_capacity(count);
    let mut next = 0u64;
    for raw in listed.as_chunks::<ENTRY_LEN>().0 {
        let e = PackEntry::decode(raw);
        if e.length == 0 {
            return Err(format!("blob {} has length 0", e.id));
        }
        if u64::from(e.offset) != next {
            return Err(format!(
                "blob {} is not where the one before it ends (offset {}, expected {next})",
                e.id, e.offset
            ));
        }
        next = e.end();
        entries.push(e);
    }
    if next != blob_area {
        return Err(format!("its blobs take {next} bytes, the pack has {blob_area} before its header"));
    }
    Ok(entries)
}

/// Bytes of a pack's end read at first: the header of a pack of up to
/// some 1,400 blobs and its trailer, in one request.
pub const TAIL_GUESS: u64 = 64 << 10;

/// Reads and decodes the header of the stored pack `id` of `pack_len`
/// bytes (its length as listed): one ranged read of its tail, and a second
/// one when the header is longer than [`TAIL_GUESS`].
pub async fn fetch_header(
    backend: &dyn crate::backend::Backend,
    keys: &Keys,
    repo_id: &[u8; 32],
    kind: PackKind,
    id: &Id,
    pack_len: u64,
) -> Result<Vec<PackEntry>> {
    crate::repo::read_twice(|| fetch_header_once(backend, keys, repo_id, kind, id, pack_len)).await
}

async fn fetch_header_once(
    backend: &dyn crate::backend::Backend,
    keys: &Keys,
    repo_id: &[u8; 32],
    kind: PackKind,
    id: &Id,
    pack_len: u64,
) -> Result<Vec<PackEntry>> {
    let key = pack_key(kind, id);
    if pack_len < TRAILER_LEN as u64 {
        return Err(Error::corrupt(kind.name(), id.to_hex(), format!("it is only {pack_len} bytes long")));
    }
    let first = pack_len.min(TAIL_GUESS);
    let mut tail = backend.get_range(&key, pack_len - first, first).await?;
    let trailer_at = tail.len() - TRAILER_LEN;
    let trailer: [u8; TRAILER_LEN] =
        tail[trailer_at..].try_into().map_err(|_| Error::corrupt(kind.name(), id.to_hex(), "short trailer"))?;
    let needed = (header_len(kind, id, pack_len, trailer)? + TRAILER_LEN) as u64;
    if needed > first {
        tail = backend.get_range(&key, pack_len - needed, needed).await?;
    }
    decode_header(keys, repo_id, kind, id, pack_len, &tail)
}

/// Checks a whole pack: its bytes hash to its id, and its header decodes.
pub fn verify(keys: &Keys, repo_id: &[u8; 32], kind: PackKind, id: &Id, bytes: &[u8]) -> Result<Vec<PackEntry>> {
    if keys.pack_id(bytes) != *id {
        return Err(id_mismatch(kind, id));
    }
    decode_header(keys, repo_id, kind, id, bytes.len() as u64, bytes)
}

/// A pack whose bytes do not hash to its id (`check` hashes a pack piece
/// by piece, so it compares the id itself).
pub fn id_mismatch(kind: PackKind, id: &Id) -> Error {
    Error::corrupt(kind.name(), id.to_hex(), "its content does not hash to its name (altered or truncated)")
}

/// The stored bytes of one blob of a pack read whole.
pub fn blob_bytes<'a>(pack: &'a [u8], entry: &PackEntry) -> Option<&'a [u8]> {
    pack.get(entry.offset as usize..usize::try_from(entry.end()).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::{self, Compression};

    fn keys() -> Keys {
        Keys::from_master(&[7; 64])
    }

    const REPO: [u8; 32] = [9; 32];

    fn blob(keys: &Keys, data: &[u8]) -> (Id, Vec<u8>) {
        let id = keys.id(data);
        (id, blob::encode(keys, &REPO, ObjectKind::Chunk, &id, data, Compression { level: 0 }))
    }

    /// A writer given room builds its pack where it started, at an aligned
    /// address (what the local store's direct write needs), and the pack
    /// is the same as one built without room.
    #[test]
    fn a_writer_with_room_keeps_its_pack_aligned_and_in_place() {
        let keys = keys();
        let mut w = PackWriter::with_capacity(PackKind::Data, 1 << 20);
        let first = w.buf.as_ptr();
        for i in 0..20u8 {
            let (id, stored) = blob(&keys, &[i; 30_000]);
            w.add(id, &stored, 30_000).unwrap();
        }
        assert_eq!(w.buf.as_ptr(), first, "the buffer never moved");
        let pack = w.finish_with_nonce(&keys, &REPO, [5; NONCE_LEN]);
        assert_eq!(pack.bytes.as_ptr().align_offset(OBJECT_ALIGN), 0);
        let entries = verify(&keys, &REPO, PackKind::Data, &pack.id, &pack.bytes).unwrap();
        assert_eq!(entries.len(), 20);
        let mut plain = PackWriter::new(PackKind::Data);
        for i in 0..20u8 {
            let (id, stored) = blob(&keys, &[i; 30_000]);
            plain.add(id, &stored, 30_000).unwrap();
        }
        assert_eq!(plain.finish_with_nonce(&keys, &REPO, [5; NONCE_LEN]).bytes, pack.bytes);
    }

    /// A pack built in a pooled buffer is the same pack; once its bytes
    /// are dropped the buffer is back in the pool, and the next writer
    /// builds in it.
    #[test]
    fn pooled_buffers_come_back_and_are_reused() {
        let keys = keys();
        let pool = std::sync::Arc::new(BufferPool::default());
        let build = |w: &mut PackWriter| {
            for i in 0..10u8 {
                let (id, stored) = blob(&keys, &[i; 10_000]);
                w.add(id, &stored, 10_000).unwrap();
            }
        };
        let mut w = PackWriter::in_pool(PackKind::Data, 1 << 20, &pool);
        build(&mut w);
        let first_buffer = w.buf.as_ptr();
        let pack = w.finish_with_nonce(&keys, &REPO, [5; NONCE_LEN]);
        let mut plain = PackWriter::new(PackKind::Data);
        build(&mut plain);
        assert_eq!(pack.bytes, plain.finish_with_nonce(&keys, &REPO, [5; NONCE_LEN]).bytes);
        assert_eq!(pool.spare.lock().unwrap().len(), 0, "in use until the bytes are dropped");
        drop(pack);
        assert_eq!(pool.spare.lock().unwrap().len(), 1);
        let mut again = PackWriter::in_pool(PackKind::Data, 1 << 20, &pool);
        assert_eq!(again.buf.as_ptr(), first_buffer, "the next pack is built in the same buffer");
        assert!(again.is_empty());
        assert_eq!(again.len(), 0, "no bytes of the last pack");
        build(&mut again);
        let pack = again.finish_with_nonce(&keys, &REPO, [5; NONCE_LEN]);
        assert_eq!(pack.bytes.as_ptr().align_offset(OBJECT_ALIGN), 0);
        verify(&keys, &REPO, PackKind::Data, &pack.id, &pack.bytes).unwrap();
        // A writer needing more room than the spare has allocates its own.
        drop(pack);
        assert!(PackWriter::in_pool(PackKind::Data, 64 << 20, &pool).buf.as_ptr() != first_buffer);
    }

    fn pack_of(keys: &Keys, blobs: &[&[u8]]) -> FinishedPack {
        let mut w = PackWriter::new(PackKind::Data);
        for data in blobs {
            let (id, stored) = blob(keys, data);
            w.add(id, &stored, data.len() as u32).unwrap();
        }
        w.finish(keys, &REPO)
    }

    #[test]
    fn a_pack_round_trips_and_its_blobs_decode() {
        let keys = keys();
        let datas: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + usize::from(i) * 333]).collect();
        let refs: Vec<&[u8]> = datas.iter().map(Vec::as_slice).collect();
        let pack = pack_of(&keys, &refs);
        assert_eq!(pack.bytes.len() as u64, padme(pack.bytes.len() as u64), "a Padmé length");
        let entries = verify(&keys, &REPO, PackKind::Data, &pack.id, &pack.bytes).unwrap();
        assert_eq!(entries, pack.entries);
        for (e, data) in entries.iter().zip(&datas) {
            let stored = blob_bytes(&pack.bytes, e).unwrap();
            let plain = blob::decode(&keys, &REPO, ObjectKind::Chunk, &e.id, stored, 1 << 20).unwrap();
            assert_eq!(&plain, data);
            assert_eq!(e.raw_length as usize, data.len());
        }
        // Reading only the tail works as well as the whole pack.
        let tail_len = u32::from_le_bytes(pack.bytes[pack.bytes.len() - 4..].try_into().unwrap()) as usize + 4;
        let tail = &pack.bytes[pack.bytes.len() - tail_len..];
        assert_eq!(
            decode_header(&keys, &REPO, PackKind::Data, &pack.id, pack.bytes.len() as u64, tail).unwrap(),
            entries
        );
    }

    #[test]
    fn tampering_is_detected_and_named() {
        let keys = keys();
        let pack = pack_of(&keys, &[b"one blob", b"and another one"]);
        let check = |bytes: &[u8], kind: PackKind| verify(&keys, &REPO, kind, &pack.id, bytes);
        for at in [0, 10, pack.bytes.len() - 40, pack.bytes.len() - 1] {
            let mut bad = pack.bytes.to_vec();
            bad[at] ^= 1;
            let err = check(&bad, PackKind::Data).unwrap_err().to_string();
            assert!(err.contains(&pack.id.to_hex()) && err.contains("does not hash"), "{err}");
        }
        let err = check(&pack.bytes[..pack.bytes.len() - 1], PackKind::Data).unwrap_err().to_string();
        assert!(err.contains("does not hash"), "{err}");
        // Right bytes in the wrong folder: the hash matches, the header does not.
        let err = check(&pack.bytes, PackKind::Tree).unwrap_err().to_string();
        assert!(err.contains("does not authenticate"), "{err}");
        // Another repository's key.
        let other = Keys::from_master(&[8; 64]);
        assert!(verify(&other, &REPO, PackKind::Data, &other.pack_id(&pack.bytes), &pack.bytes).is_err());
        // A header that claims to be longer than the pack.
        let mut long = pack.bytes.to_vec();
        let n = long.len();
        long[n - 4..].copy_from_slice(&(n as u32).to_le_bytes());
        let err = decode_header(&keys, &REPO, PackKind::Data, &pack.id, n as u64, &long).unwrap_err().to_string();
        assert!(err.contains("more than the pack"), "{err}");
    }

    #[test]
    fn headers_are_fetched_with_one_or_two_ranged_reads() {
        use crate::backend::{Backend, local::LocalBackend};
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBackend::new(dir.path());
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let keys = keys();
        for blobs in [3usize, 2000] {
            let mut w = PackWriter::new(PackKind::Data);
            for i in 0..blobs {
                let (id, stored) = blob(&keys, &(i as u32).to_le_bytes());
                w.add(id, &stored, 4).unwrap();
            }
            let pack = w.finish(&keys, &REPO);
            let key = pack_key(PackKind::Data, &pack.id);
            let path = dir.path().join(&key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let len = pack.bytes.len() as u64;
            rt.block_on(store.put(&key, pack.bytes.clone())).unwrap();
            let before = store.wire_stats();
            let got = rt.block_on(fetch_header(&store, &keys, &REPO, PackKind::Data, &pack.id, len)).unwrap();
            assert_eq!(got, pack.entries);
            let reads = store.wire_stats().since(&before).gets;
            // 2000 entries take 88,000 bytes of header: more than the first guess.
            assert_eq!(reads, if blobs == 3 { 1 } else { 2 }, "{blobs} blobs");
            // A pack listed with the wrong length (truncated, or grown).
            let err = rt.block_on(fetch_header(&store, &keys, &REPO, PackKind::Data, &pack.id, len - 1)).unwrap_err();
            assert!(err.to_string().contains(&pack.id.to_hex()), "{err}");
        }
    }

    #[test]
    fn pack_keys_round_trip() {
        let id = Id([0xab; 32]);
        let key = pack_key(PackKind::Tree, &id);
        assert!(key.starts_with("tree/ab/abab"));
        assert_eq!(parse_pack_key(PackKind::Tree, &key), Some(id));
        assert_eq!(parse_pack_key(PackKind::Data, &key), None);
        assert_eq!(parse_pack_key(PackKind::Tree, &format!("{key}.tmp-1")), None);
        assert_eq!(parse_pack_key(PackKind::Tree, "tree/cd/abab"), None);
    }

    #[test]
    fn an_empty_pack_is_still_a_valid_pack() {
        let keys = keys();
        let pack = PackWriter::new(PackKind::Tree).finish(&keys, &REPO);
        assert!(verify(&keys, &REPO, PackKind::Tree, &pack.id, &pack.bytes).unwrap().is_empty());
    }

    proptest::proptest! {
        /// Any bytes as a pack's tail: an error, never a panic, and never
        /// an allocation beyond the input's size.
        #[test]
        fn arbitrary_tails_never_panic(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), extra in 0u64..1 << 40) {
            let keys = keys();
            let _ = decode_header(&keys, &REPO, PackKind::Data, &Id([0; 32]), tail.len() as u64 + extra, &tail);
        }

        /// Header plaintexts that authenticate but are malformed: parsed
        /// without panicking, and accepted only when the entries tile.
        #[test]
        fn arbitrary_header_plaintexts_never_panic(plain in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400), area in 0u64..100_000) {
            if let Ok(entries) = parse_plain(&plain, PackKind::Data, area) {
                proptest::prop_assert_eq!(entries.iter().map(|e| u64::from(e.length)).sum::<u64>(), area);
            }
        }
    }

    /// The test vector of docs/format.md: a tree pack of two blobs under the
    /// all-sevens master key, repository id all nines and nonce all fives.
    #[test]
    fn test_vector() {
        let keys = keys();
        let mut w = PackWriter::new(PackKind::Tree);
        for data in [&b"first tree"[..], b"second tree"] {
            let id = keys.id(data);
            let stored = blob::encode(&keys, &REPO, ObjectKind::Tree, &id, data, Compression { level: 0 });
            w.add(id, &stored, data.len() as u32).unwrap();
        }
        let pack = w.finish_with_nonce(&keys, &REPO, [5; NONCE_LEN]);
        assert_eq!(pack.bytes.len(), 224);
        assert_eq!(pack.id.to_hex(), PACK_VECTOR_ID);
        assert_eq!(hex::encode(&pack.bytes), PACK_VECTOR_BYTES);
        assert_eq!(verify(&keys, &REPO, PackKind::Tree, &pack.id, &pack.bytes).unwrap(), pack.entries);
        let spans: Vec<(u32, u32, u32)> = pack.entries.iter().map(|e| (e.offset, e.length, e.raw_length)).collect();
        assert_eq!(spans, [(0, 42, 10), (42, 44, 11)], "as the index vector (index::tests::test_vector) lists them");
    }

    const PACK_VECTOR_ID: &str = "c6c6b183d8ec1e4d2eb7af2c8f4ec7a50363b6b0a4d3a6ae9c4fab3b0612e714";
    const PACK_VECTOR_BYTES: &str = concat!(
        "6f54db7ff83a0966a0962a109ec47b18a83ba5fca18d540f2b39eeb364ba229b",
        "7f277aeb6b428b66711ad3e0b10ea0d8959f159fad58c38014214f8d79f80d19",
        "e4a22fc76cb0bf7d17b88779392e81b057a8f4011da105050505050505050505",
        "050505050505c4968d600845c20549220e75c0b0b31353dcf3dc0f2cdc97b3b1",
        "0ee7dbc56e208aea026da0da1d9db506a83d793741136fe014f21173a56a8846",
        "f72e64d10fd159a86aa6a26d112d9cece599b146d947ed227079987cf0f754c5",
        "c5fc28ff5432b0becece5ece78bce5fa6a324f7f8e6e0032f4b05eb186000000",
    );
}
