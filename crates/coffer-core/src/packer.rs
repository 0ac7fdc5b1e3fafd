//! Writing packs (format v2): blobs go into one of several open packs of
//! their kind, chosen at random, so that a pack's blobs are not one file's
//! run of chunks in order; a pack that reaches its target size is sealed,
//! uploaded, and listed in the next index object. Index objects are written
//! as packs complete (every [`PackerOptions::index_every`] packs), not only
//! at the end, so that a killed backup leaves most of what it uploaded
//! indexed and reusable.
//!
//! Reading back: [`plan_reads`] groups the blobs wanted from each pack into
//! as few ranged reads as possible, merging blobs that lie next to each
//! other.

use std::sync::{Arc, Mutex};

use crate::backend::{Backend, Bytes};
use crate::crypto::{Keys, ObjectKind, fill_random};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{BlobLocation, Index, IndexedPack};
use crate::pack::{BufferPool, FinishedPack, PackKind, PackWriter, pack_key};
use crate::repo::object_key;

/// How packs are cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackerOptions {
    /// Blob bytes at which a data pack is sealed (the design's 32 MiB).
    pub data_target: usize,
    /// The same for tree packs (4 MiB).
    pub tree_target: usize,
    /// Packs of each kind open at once (at least 2).
    pub open_packs: usize,
    /// Completed packs per index object.
    pub index_every: usize,
}

impl Default for PackerOptions {
    fn default() -> Self {
        PackerOptions { data_target: 32 << 20, tree_target: 4 << 20, open_packs: 2, index_every: 8 }
    }
}

impl PackerOptions {
    fn target(&self, kind: PackKind) -> usize {
        match kind {
            PackKind::Data => self.data_target,
            PackKind::Tree => self.tree_target,
        }
    }

    /// An open pack's room: its target, the largest blob that may take it
    /// past the target (a chunk's stored form is at most about 9 MiB; a
    /// larger tree only makes the buffer move), and its header with Padmé
    /// padding (under a sixteenth of the pack). A target beyond any a
    /// repository may set (only tests use one) gets no room up front.
    fn capacity(&self, kind: PackKind) -> usize {
        let target = self.target(kind);
        if target > *crate::config::PACK_SIZE_RANGE.end() as usize {
            return 0;
        }
        let overshoot = match kind {
            PackKind::Data => 9 << 20,
            PackKind::Tree => 1 << 20,
        };
        let blobs = target + overshoot;
        blobs + blobs / 16 + (64 << 10)
    }
}

/// Sealed packs uploading at once. A pack waiting for its upload holds
/// its whole buffer; beyond this many, `add` waits, and with it the
/// backup's reader, so that memory is the open packs plus these, however
/// slow the store.
const MAX_UPLOADS: usize = 3;

/// What a packer has stored so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub packs: Vec<IndexedPack>,
    pub indexes: Vec<Id>,
    pub pack_bytes: u64,
}

#[derive(Default)]
struct State {
    /// Open packs: data ones first, then tree ones.
    open: Vec<PackWriter>,
    /// Completed packs not yet in an index object.
    unindexed: Vec<IndexedPack>,
    stored: Stored,
}

/// Packs blobs and stores them. Shared by the tasks of a backup: `add` may
/// be called from many at once.
pub struct Packer {
    backend: Arc<dyn Backend>,
    keys: Arc<Keys>,
    repo_id: [u8; 32],
    options: PackerOptions,
    state: Mutex<State>,
    /// Permits for [`MAX_UPLOADS`] pack uploads.
    uploads: tokio::sync::Semaphore,
    /// Buffers of stored packs, for the next ones.
    pool: Arc<BufferPool>,
    /// The repository's cache folder: index objects written are kept there.
    cache_dir: Option<std::path::PathBuf>,
}

impl Packer {
    pub fn new(backend: Arc<dyn Backend>, keys: Arc<Keys>, repo_id: [u8; 32], options: PackerOptions) -> Packer {
        let open_packs = options.open_packs.max(2);
        let options = PackerOptions { open_packs, index_every: options.index_every.max(1), ..options };
        let pool = Arc::new(BufferPool::default());
        let mut open = Vec::with_capacity(2 * open_packs);
        for kind in [PackKind::Data, PackKind::Tree] {
            open.extend((0..open_packs).map(|_| PackWriter::in_pool(kind, options.capacity(kind), &pool)));
        }
        Packer {
            backend,
            keys,
            repo_id,
            options,
            state: Mutex::new(State { open, ..State::default() }),
            uploads: tokio::sync::Semaphore::new(MAX_UPLOADS),
            pool,
            cache_dir: None,
        }
    }

    /// Keeps a copy of every index object written in the cache folder.
    pub fn with_cache(mut self, dir: Option<&std::path::Path>) -> Packer {
        self.cache_dir = dir.map(std::path::Path::to_path_buf);
        self
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| Error::InvalidInput("packer state poisoned".into()))
    }

    /// Adds an encoded blob (see [`crate::blob::encode`]) of `raw_length`
    /// plaintext bytes. When its pack is full, seals and stores it before
    /// returning, and writes an index object when enough packs completed.
    pub async fn add(&self, kind: ObjectKind, id: Id, stored: &[u8], raw_length: u32) -> Result<()> {
        let pack_kind =
            PackKind::of_blob(kind).ok_or_else(|| Error::InvalidInput(format!("a {} is not a blob", kind.name())))?;
        // Wait while the store is behind by MAX_UPLOADS packs: this blob
        // could fill another.
        drop(self.uploads.acquire().await.map_err(|e| Error::InvalidInput(format!("pack uploads: {e}")))?);
        for done in self.place(pack_kind, id, stored, raw_length)? {
            self.store(done).await?;
        }
        Ok(())
    }

    /// Puts a blob into a random open pack of its kind; returns the packs
    /// that are now to be stored (no lock is held while they upload).
    fn place(&self, kind: PackKind, id: Id, stored: &[u8], raw_length: u32) -> Result<Vec<PackWriter>> {
        let mut state = self.state()?;
        let first = match kind {
            PackKind::Data => 0,
            PackKind::Tree => self.options.open_packs,
        };
        let writer = &mut state.open[first + random_below(self.options.open_packs)];
        let mut done = Vec::new();
        if !writer.fits(stored.len()) {
            // Only near the 4 GiB a pack's offsets allow: seal it first.
            done.push(std::mem::replace(writer, PackWriter::in_pool(kind, self.options.capacity(kind), &self.pool)));
        }
        writer.add(id, stored, raw_length)?;
        if writer.len() >= self.options.target(kind) {
            done.push(std::mem::replace(writer, PackWriter::in_pool(kind, self.options.capacity(kind), &self.pool)));
        }
        Ok(done)
    }

    /// Seals and stores one pack, then writes an index object if enough
    /// packs await one.
    async fn store(&self, writer: PackWriter) -> Result<()> {
        if writer.is_empty() {
            return Ok(());
        }
        let FinishedPack { id, kind, bytes, entries } = writer.finish(&self.keys, &self.repo_id);
        let length = bytes.len() as u64;
        {
            let _upload =
                self.uploads.acquire().await.map_err(|e| Error::InvalidInput(format!("pack uploads: {e}")))?;
            self.backend.put(&pack_key(kind, &id), bytes).await?;
        }
        let pending = {
            let mut state = self.state()?;
            state.unindexed.push(IndexedPack { id, kind, length, blobs: entries });
            state.stored.pack_bytes += length;
            (state.unindexed.len() >= self.options.index_every).then(|| std::mem::take(&mut state.unindexed))
        };
        if let Some(packs) = pending {
            self.write_index(packs).await?;
        }
        Ok(())
    }

    /// Writes an index object for `packs`, once they are durable; returns
    /// its id.
    pub async fn write_index(&self, packs: Vec<IndexedPack>) -> Result<Id> {
        self.backend.sync().await?;
        let index = Index { packs };
        let (id, stored) = index.seal(&self.keys, &self.repo_id);
        self.backend.put(&object_key(ObjectKind::Index, &id), Bytes::from(stored.clone())).await?;
        if let Some(dir) = &self.cache_dir {
            crate::cache::write(dir, ObjectKind::Index, &id, &stored);
        }
        let mut state = self.state()?;
        state.stored.indexes.push(id);
        state.stored.packs.extend(index.packs);
        Ok(id)
    }

    /// Seals every open pack that holds anything, stores it, and writes the
    /// index objects still due; everything is durable when this returns.
    pub async fn flush(&self) -> Result<Stored> {
        let open: Vec<PackWriter> = {
            let mut state = self.state()?;
            state
                .open
                .iter_mut()
                .map(|w| {
                    let kind = w.kind();
                    std::mem::replace(w, PackWriter::in_pool(kind, self.options.capacity(kind), &self.pool))
                })
                .collect()
        };
        futures_util::future::try_join_all(open.into_iter().map(|w| self.store(w))).await?;
        let rest = std::mem::take(&mut self.state()?.unindexed);
        if !rest.is_empty() {
            self.write_index(rest).await?;
        }
        self.backend.sync().await?;
        Ok(self.state()?.stored.clone())
    }
}

/// A uniformly random number below `n` (n > 0).
fn random_below(n: usize) -> usize {
    let mut b = [0u8; 8];
    fill_random(&mut b);
    (u64::from_le_bytes(b) % n as u64) as usize
}

/// Blobs of a pack at most this far apart are fetched in one ranged read
/// by restore and mount: reading the bytes between costs less than another
/// round trip (about 2.5 ms at 100 MB/s, an eighth of a 20 ms round trip).
pub const READ_GAP: u64 = 256 << 10;

/// The longest ranged read restore and mount make of several blobs: a few
/// chunks' round trips saved, and on S3 a few requests fewer, each of
/// which costs the server more than its bytes do (SeaweedFS spent twice
/// restic's CPU on a restore read in 4 MiB ranges; see docs/s3.md), while a
/// longer read would only delay the first of its chunks.
pub const READ_MAX: u64 = 8 << 20;

/// One ranged read of a pack, and the blobs it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeRead {
    pub pack: Id,
    pub kind: PackKind,
    pub offset: u64,
    pub length: u64,
    /// For each blob: its place in the caller's list, and where it lies in
    /// the range read.
    pub parts: Vec<(usize, std::ops::Range<usize>)>,
}

impl RangeRead {
    /// Reads the range from the pack.
    pub async fn fetch(&self, backend: &dyn Backend) -> crate::backend::BackendResult<Vec<u8>> {
        backend.get_range(&pack_key(self.kind, &self.pack), self.offset, self.length).await
    }
}

/// Groups reads of blobs into ranged reads of their packs: blobs of one
/// pack that lie next to each other, or at most `max_gap` bytes apart, are
/// read in one range of at most `max_len` bytes (a single blob longer than
/// that is still read whole). The order of packs follows the first blob
/// wanted from each.
pub fn plan_reads(wanted: &[BlobLocation], max_gap: u64, max_len: u64) -> Vec<RangeRead> {
    let mut order: Vec<usize> = (0..wanted.len()).collect();
    let first_of: std::collections::HashMap<Id, usize> =
        wanted.iter().enumerate().rev().map(|(i, l)| (l.pack, i)).collect();
    order.sort_by_key(|&i| (first_of[&wanted[i].pack], wanted[i].offset, i));
    let mut reads: Vec<RangeRead> = Vec::new();
    for i in order {
        let loc = &wanted[i];
        let (start, end) = (u64::from(loc.offset), u64::from(loc.offset) + u64::from(loc.length));
        if let Some(r) = reads.last_mut()
            && r.pack == loc.pack
            && start <= r.offset + r.length + max_gap
            && end.max(r.offset + r.length) - r.offset <= max_len
        {
            r.length = r.length.max(end - r.offset);
            let at = (start - r.offset) as usize;
            r.parts.push((i, at..at + loc.length as usize));
            continue;
        }
        reads.push(RangeRead {
            pack: loc.pack,
            kind: loc.kind,
            offset: start,
            length: end - start,
            parts: vec![(i, 0..loc.length as usize)],
        });
    }
    reads
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::backend::local::LocalBackend;
    use crate::blob::{self, Compression};
    use crate::index::BlobSet;
    use crate::pack::{self, parse_pack_key};

    const REPO: [u8; 32] = [5; 32];

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
    }

    /// A blob's id, plaintext and encoding.
    type TestBlob = (Id, Vec<u8>, Vec<u8>);

    /// Blobs of `n` distinct plaintexts of about `size` bytes.
    fn blobs(keys: &Keys, kind: ObjectKind, n: usize, size: usize) -> Vec<TestBlob> {
        (0..n)
            .map(|i| {
                let plain: Vec<u8> = (0..size + i).map(|j| (i * 31 + j * 7) as u8).collect();
                let id = keys.id(&plain);
                let stored = blob::encode(keys, &REPO, kind, &id, &plain, Compression { level: 0 });
                (id, plain, stored)
            })
            .collect()
    }

    /// A new local store, created as `init` creates one.
    fn v2_store(dir: &std::path::Path) -> Arc<LocalBackend> {
        let store = Arc::new(LocalBackend::new(dir.join("repo")));
        runtime().block_on(store.create()).unwrap();
        store
    }

    /// Adds every blob of `sets` to `packer`, in order, and flushes it.
    fn pack_all(rt: &tokio::runtime::Runtime, packer: &Packer, sets: &[(ObjectKind, &[TestBlob])]) -> Stored {
        rt.block_on(async {
            for (kind, list) in sets {
                for (id, plain, enc) in list.iter() {
                    packer.add(*kind, *id, enc, plain.len() as u32).await.unwrap();
                }
            }
            packer.flush().await.unwrap()
        })
    }

    #[test]
    fn packs_are_cut_at_their_target_indexed_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let backend: Arc<dyn Backend> = v2_store(dir.path());
        let keys = Arc::new(Keys::from_master(&[1; 64]));
        let options = PackerOptions { data_target: 40_000, tree_target: 10_000, open_packs: 2, index_every: 3 };
        let packer = Packer::new(backend.clone(), keys.clone(), REPO, options);
        let chunks = blobs(&keys, ObjectKind::Chunk, 60, 4000);
        let trees = blobs(&keys, ObjectKind::Tree, 10, 900);
        let stored = pack_all(&rt, &packer, &[(ObjectKind::Chunk, &chunks), (ObjectKind::Tree, &trees)]);

        // Every pack listed is indexed, none twice, and each but the last of
        // each open slot reached its target.
        let listed: HashSet<Id> = ["data/", "tree/"]
            .iter()
            .flat_map(|p| rt.block_on(backend.list(p)).unwrap())
            .filter_map(|e| parse_pack_key(PackKind::Data, &e.key).or_else(|| parse_pack_key(PackKind::Tree, &e.key)))
            .collect();
        let indexed: HashSet<Id> = stored.packs.iter().map(|p| p.id).collect();
        assert_eq!(listed, indexed);
        assert_eq!(indexed.len(), stored.packs.len());
        let data_packs = stored.packs.iter().filter(|p| p.kind == PackKind::Data).count();
        // 60 blobs of ~4 KiB stored, 40 KB target: about 6 full packs, at
        // most 2 partial ones (the open slots at the end).
        assert!((6..=8).contains(&data_packs), "{data_packs} data packs");
        assert_eq!(stored.indexes.len(), stored.packs.len().div_ceil(3));
        assert_eq!(stored.pack_bytes, stored.packs.iter().map(|p| p.length).sum::<u64>());

        // The index objects open, and every blob reads back through the set.
        let mut indexes = Vec::new();
        for id in &stored.indexes {
            let bytes = rt.block_on(backend.get(&object_key(ObjectKind::Index, id), u64::MAX)).unwrap();
            indexes.push(Index::open(&keys, &REPO, id, &bytes).unwrap());
        }
        let refs: Vec<&Index> = indexes.iter().collect();
        let set = BlobSet::build(&refs, |_, id| listed.contains(id));
        assert_eq!(set.len(), 70);
        let wanted: Vec<(ObjectKind, &TestBlob)> =
            chunks.iter().map(|b| (ObjectKind::Chunk, b)).chain(trees.iter().map(|b| (ObjectKind::Tree, b))).collect();
        let locations: Vec<BlobLocation> = wanted.iter().map(|(k, b)| set.get(*k, &b.0).unwrap()).collect();
        let reads = plan_reads(&locations, 0, u64::MAX);
        assert_eq!(reads.len(), stored.packs.len(), "every blob of a pack in one read");
        let mut seen = 0;
        for r in &reads {
            let bytes = rt.block_on(backend.get_range(&pack_key(r.kind, &r.pack), r.offset, r.length)).unwrap();
            for (i, range) in &r.parts {
                let (kind, (id, plain, _)) = wanted[*i];
                let got = blob::decode(&keys, &REPO, kind, id, &bytes[range.clone()], 1 << 20).unwrap();
                assert_eq!(&got, plain);
                seen += 1;
            }
        }
        assert_eq!(seen, 70);
        // And every pack verifies whole, against its header and its name.
        for p in &stored.packs {
            let bytes = rt.block_on(backend.get(&pack_key(p.kind, &p.id), u64::MAX)).unwrap();
            assert_eq!(pack::verify(&keys, &REPO, p.kind, &p.id, &bytes).unwrap(), p.blobs);
        }
    }

    #[test]
    fn blobs_are_spread_over_the_open_packs() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let backend: Arc<dyn Backend> = v2_store(dir.path());
        let keys = Arc::new(Keys::from_master(&[1; 64]));
        let options = PackerOptions { data_target: usize::MAX, open_packs: 3, ..PackerOptions::default() };
        let packer = Packer::new(backend, keys.clone(), REPO, options);
        // The backup's upload tasks run on the runtime's threads.
        fn is_send<T: Send>(_: &T) {}
        is_send(&packer.add(ObjectKind::Chunk, Id([0; 32]), b"", 0));
        let stored = pack_all(&rt, &packer, &[(ObjectKind::Chunk, &blobs(&keys, ObjectKind::Chunk, 300, 100))]);
        let sizes: Vec<usize> = stored.packs.iter().map(|p| p.blobs.len()).collect();
        // Three open packs, 300 blobs at random: each gets a share far from 0
        // (the chance that one gets fewer than 50 is below one in a billion).
        assert_eq!(sizes.len(), 3, "{sizes:?}");
        assert!(sizes.iter().all(|&n| n >= 50), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 300);
    }

    #[test]
    fn packs_nobody_indexed_are_indexed_again_from_their_headers() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let backend: Arc<dyn Backend> = v2_store(dir.path());
        let keys = Arc::new(Keys::from_master(&[1; 64]));
        let options = PackerOptions { data_target: 20_000, tree_target: 5_000, ..PackerOptions::default() };
        let packer = Packer::new(backend.clone(), keys.clone(), REPO, options);
        let (chunks, trees) = (blobs(&keys, ObjectKind::Chunk, 40, 1500), blobs(&keys, ObjectKind::Tree, 12, 1500));
        let mut stored = pack_all(&rt, &packer, &[(ObjectKind::Chunk, &chunks), (ObjectKind::Tree, &trees)]);
        // As if the backup had been killed before writing its index objects.
        for id in &stored.indexes {
            std::fs::remove_file(dir.path().join("repo").join(object_key(ObjectKind::Index, id))).unwrap();
        }
        // And one pack damaged: cut short by a byte.
        let damaged = stored.packs.remove(0);
        let damaged_path = dir.path().join("repo").join(pack_key(damaged.kind, &damaged.id));
        let bytes = std::fs::read(&damaged_path).unwrap();
        std::fs::write(&damaged_path, &bytes[..bytes.len() - 1]).unwrap();

        let mut listed = Vec::new();
        for kind in [PackKind::Data, PackKind::Tree] {
            for e in rt.block_on(backend.list(kind.dir())).unwrap() {
                if let Some(id) = parse_pack_key(kind, &e.key) {
                    listed.push((kind, id, e.size));
                }
            }
        }
        let (index, failed) = rt.block_on(crate::index::index_packs(&*backend, &keys, &REPO, &listed, 4));
        stored.packs.sort_by_key(|p| (p.kind, p.id));
        assert_eq!(index.packs, stored.packs, "every intact pack indexed as its packer indexed it");
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].1, damaged.id);
        assert!(failed[0].2.to_string().contains(&damaged.id.to_hex()), "{}", failed[0].2);
    }

    fn loc(pack: u8, offset: u32, length: u32) -> BlobLocation {
        BlobLocation { pack: Id([pack; 32]), kind: PackKind::Data, offset, length }
    }

    #[test]
    fn reads_merge_neighbours_and_respect_the_limits() {
        let wanted = [loc(1, 100, 50), loc(2, 0, 10), loc(1, 0, 100), loc(1, 160, 40), loc(1, 1000, 10)];
        // No gap allowed: 0..150 merge, 160..200 and 1000..1010 do not.
        let reads = plan_reads(&wanted, 0, u64::MAX);
        let spans: Vec<(u8, u64, u64)> = reads.iter().map(|r| (r.pack.0[0], r.offset, r.length)).collect();
        assert_eq!(spans, [(1, 0, 150), (1, 160, 40), (1, 1000, 10), (2, 0, 10)]);
        assert_eq!(reads[0].parts, [(2, 0..100), (0, 100..150)]);
        // A gap of 10 bridged; the read limit splits again.
        let reads = plan_reads(&wanted, 10, u64::MAX);
        let spans: Vec<(u64, u64)> = reads.iter().map(|r| (r.offset, r.length)).collect();
        assert_eq!(spans, [(0, 200), (1000, 10), (0, 10)]);
        assert_eq!(reads[0].parts[2], (3, 160..200));
        let reads = plan_reads(&wanted, 10, 160);
        let spans: Vec<(u64, u64)> = reads.iter().map(|r| (r.offset, r.length)).collect();
        assert_eq!(spans, [(0, 150), (160, 40), (1000, 10), (0, 10)]);
        // The same blob wanted twice is read once per request, from one range.
        let twice = [loc(3, 0, 8), loc(3, 0, 8)];
        let reads = plan_reads(&twice, 0, u64::MAX);
        assert_eq!(reads.len(), 1);
        assert_eq!(reads[0].parts, [(0, 0..8), (1, 0..8)]);
    }
}
