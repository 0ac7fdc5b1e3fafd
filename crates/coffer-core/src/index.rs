//! Index objects (format v2): which blob is in which pack, so that a backup
//! knows what is stored and a restore where to read it without opening
//! every pack's header.
//!
//! ```text
//! index/<id>  sealed like a snapshot (random nonce, kind "index", its name bound)
//! plaintext = version u32 LE (1) ‖ pack count u32 LE ‖ pack ‖ … ‖ pack
//! pack      = pack id (32) ‖ pack kind u8 ‖ pack length u64 LE ‖ blob count u32 LE ‖ blob count × entry
//! entry     = as in a pack header (crate::pack): blob id ‖ offset ‖ stored length ‖ plaintext length
//! ```
//!
//! The id is the keyed hash of the plaintext, as a snapshot's. Which blobs
//! exist is the union of the index objects' entries whose packs a fresh
//! LIST of `data/` and `tree/` shows ([`BlobSet::build`]): a pack lost from
//! the store takes its blobs with it, so a backup uploads them again.

use std::collections::HashMap;

use crate::blob;
use crate::crypto::{Keys, ObjectKind};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::pack::{ENTRY_LEN, PackEntry, PackKind};
use crate::repo::object_key;

pub const VERSION: u32 = 1;
/// The largest index plaintext a reader accepts (some 1.5 million blobs);
/// writers start a new index object well before.
pub const MAX_INDEX_LEN: usize = 64 << 20;
/// The most bytes a stored index object can take (docs/format.md §13).
pub const MAX_STORED: u64 = blob::max_stored_random_len(MAX_INDEX_LEN);
/// Pack id, kind, length, blob count.
const PACK_FIXED: usize = 32 + 1 + 8 + 4;

/// One pack as an index lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedPack {
    pub id: Id,
    pub kind: PackKind,
    /// The pack's stored length (compared with a listing's by `check`).
    pub length: u64,
    pub blobs: Vec<PackEntry>,
}

/// The content of one index object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Index {
    pub packs: Vec<IndexedPack>,
}

impl Index {
    pub fn blob_count(&self) -> usize {
        self.packs.iter().map(|p| p.blobs.len()).sum()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.packs.len() * PACK_FIXED + self.blob_count() * ENTRY_LEN);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for p in &self.packs {
            out.extend_from_slice(&p.id.0);
            out.push(p.kind.code());
            out.extend_from_slice(&p.length.to_le_bytes());
            out.extend_from_slice(&(p.blobs.len() as u32).to_le_bytes());
            for b in &p.blobs {
                b.encode_into(&mut out);
            }
        }
        out
    }

    /// Decodes a plaintext. Counts are checked against the bytes there are
    /// before anything is allocated, and every blob must lie inside its
    /// pack.
    pub fn decode(plain: &[u8]) -> std::result::Result<Index, String> {
        let mut r = Reader { data: plain };
        let version = r.u32()?;
        if version != VERSION {
            return Err(format!("index version {version}, this coffer reads {VERSION}"));
        }
        let count = r.u32()? as usize;
        if count.checked_mul(PACK_FIXED).is_none_or(|n| n > r.data.len()) {
            return Err(format!("it lists {count} packs in {} bytes", r.data.len()));
        }
        let mut packs = Vec::with_capacity(count);
        for _ in 0..count {
            let id = Id(r.take::<32>()?);
            let [code] = r.take::<1>()?;
            let kind = PackKind::from_code(code).ok_or_else(|| format!("pack {id} has unknown kind {code}"))?;
            let length = u64::from_le_bytes(r.take::<8>()?);
            let n = r.u32()? as usize;
            if n.checked_mul(ENTRY_LEN).is_none_or(|b| b > r.data.len()) {
                return Err(format!("pack {id} lists {n} blobs in {} bytes", r.data.len()));
            }
            let mut blobs = Vec::with_capacity(n);
            for _ in 0..n {
                let e = PackEntry::decode(&r.take::<ENTRY_LEN>()?);
                if e.end() > length {
                    return Err(format!("blob {} ends at {} in pack {id} of {length} bytes", e.id, e.end()));
                }
                blobs.push(e);
            }
            packs.push(IndexedPack { id, kind, length, blobs });
        }
        if !r.data.is_empty() {
            return Err(format!("{} bytes follow the last pack", r.data.len()));
        }
        Ok(Index { packs })
    }

    /// Seals the index for storing: its id and stored bytes.
    pub fn seal(&self, keys: &Keys, repo_id: &[u8; 32]) -> (Id, Vec<u8>) {
        let plain = self.encode();
        let id = keys.id(&plain);
        let stored =
            blob::seal_random(keys, repo_id, ObjectKind::Index, &object_key(ObjectKind::Index, &id), b"", &plain);
        (id, stored)
    }

    /// Opens the stored index `id`, checking that its content has that id.
    pub fn open(keys: &Keys, repo_id: &[u8; 32], id: &Id, stored: &[u8]) -> Result<Index> {
        let name = object_key(ObjectKind::Index, id);
        let plain = blob::open_random(keys, repo_id, ObjectKind::Index, &name, b"", stored, MAX_INDEX_LEN)?;
        if keys.id(&plain) != *id {
            return Err(Error::corrupt("index", name, "content does not match its id"));
        }
        Index::decode(&plain).map_err(|why| Error::corrupt("index", name, why))
    }
}

/// Rebuilds the index entries of stored packs from their headers (what a
/// listing shows that no index object names: the packs of a backup killed
/// before it indexed them, or every pack for `repair index`). Each pack
/// costs one or two ranged reads; `width` run at once. A pack whose header
/// cannot be read is returned with its error, not indexed.
pub async fn index_packs(
    backend: &dyn crate::backend::Backend,
    keys: &Keys,
    repo_id: &[u8; 32],
    packs: &[(PackKind, Id, u64)],
    width: usize,
) -> (Index, Vec<(PackKind, Id, Error)>) {
    use futures_util::StreamExt;
    let results: Vec<_> = futures_util::stream::iter(packs.iter().copied())
        .map(|(kind, id, length)| async move {
            let header = crate::pack::fetch_header(backend, keys, repo_id, kind, &id, length).await;
            (kind, id, length, header)
        })
        .buffer_unordered(width.max(1))
        .collect()
        .await;
    let mut index = Index::default();
    let mut failed = Vec::new();
    for (kind, id, length, header) in results {
        match header {
            Ok(blobs) => index.packs.push(IndexedPack { id, kind, length, blobs }),
            Err(e) => failed.push((kind, id, e)),
        }
    }
    index.packs.sort_by_key(|p| (p.kind, p.id));
    (index, failed)
}

/// What is stored, as the index objects and fresh listings of the packs
/// say (see [`load`]).
#[derive(Debug, Default)]
pub struct Loaded {
    pub blobs: BlobSet,
    /// Index objects read.
    pub indexes: Vec<Id>,
    /// Listed packs that no index object names (a killed backup's). Their
    /// headers were read and their blobs are in `blobs`; `recovered` holds
    /// their entries, for a backup to write as an index object.
    pub unindexed: Vec<(PackKind, Id, u64)>,
    /// The index entries rebuilt from the headers of `unindexed` packs.
    pub recovered: Index,
    /// Unindexed packs whose header could not be read: their blobs count
    /// as absent (and are stored again by the next backup).
    pub unreadable_packs: Vec<(PackKind, Id, Error)>,
    /// Packs listed at another length, or in the folder of another kind,
    /// than their index gives: damaged or moved, so their blobs count as
    /// absent and are stored again.
    pub mismatched: Vec<Mismatch>,
    /// Index objects that could not be read, with why: their packs count as
    /// unindexed.
    pub unreadable: Vec<(Id, Error)>,
    /// Index objects that name packs the listing does not show, with how
    /// many: a pack deleted behind coffer's back, or an old index object
    /// put back (a rollback). Their other entries count as usual.
    pub stale: Vec<(Id, usize)>,
    /// Every listed pack and its length.
    pub listed: HashMap<Id, (PackKind, u64)>,
    /// Listed packs in an archive storage class (Glacier, Deep Archive):
    /// their bytes, headers included, cannot be read until restored.
    /// The class of each, as listed.
    pub archived: HashMap<Id, String>,
    /// The index objects themselves, when asked for (prune rewrites them).
    pub objects: Vec<(Id, Index)>,
}

/// A listed pack that is not where, or not as long as, its index says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The folder it is listed in, its id and its listed length.
    pub kind: PackKind,
    pub id: Id,
    pub length: u64,
    /// The kind and length its index gives.
    pub indexed: (PackKind, u64),
}

impl Mismatch {
    /// What is wrong, for reports.
    pub fn problem(&self) -> String {
        if self.kind != self.indexed.0 {
            format!(
                "it is stored among the {} packs, but its index gives it as a {} pack (moved?)",
                self.kind.name(),
                self.indexed.0.name()
            )
        } else {
            format!("damaged: it is stored with {} bytes, not the {} its index gives", self.length, self.indexed.1)
        }
    }
}

/// [`load_async`] on the calling thread.
pub fn load(repo: &crate::Repository) -> Result<Loaded> {
    repo.runtime().block_on(load_async(repo))
}

/// Reads every index object (from the local cache where it has a copy,
/// authenticated as if fetched) and lists `data/` and `tree/`: the blobs
/// that exist are those of listed packs, at the length their index gives,
/// and those of listed packs no index names, read from their headers.
pub async fn load_async(repo: &crate::Repository) -> Result<Loaded> {
    load_with(repo, LoadOptions::default()).await
}

/// How [`load_with`] reads the index.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Keep the index objects read in [`Loaded::objects`] (prune rewrites
    /// them).
    pub keep_objects: bool,
    /// Read every index object from the repository, not the local cache
    /// (`check`: a good cached copy says nothing about the stored object).
    /// The cache is still refreshed with what was read.
    pub from_repository: bool,
}

/// [`load_async`] with options.
pub async fn load_with(repo: &crate::Repository, options: LoadOptions) -> Result<Loaded> {
    use futures_util::StreamExt;
    let backend = repo.backend();
    let mut ids: Vec<Id> = backend
        .list("index/")
        .await?
        .iter()
        .filter_map(|e| crate::repo::parse_object_key(ObjectKind::Index, &e.key))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut listed: HashMap<Id, (PackKind, u64)> = HashMap::new();
    let mut archived = HashMap::new();
    for kind in [PackKind::Data, PackKind::Tree] {
        for e in backend.list(kind.dir()).await? {
            if let Some(id) = crate::pack::parse_pack_key(kind, &e.key) {
                listed.insert(id, (kind, e.size));
                if e.is_archived() {
                    archived.insert(id, e.storage_class.unwrap_or_default());
                }
            }
        }
    }
    let (keys, repo_id, cache) = (repo.keys(), repo.repo_id(), repo.cache_dir());
    let width = backend.concurrency().max(1);
    let opened: Vec<(Id, Result<Index>)> = futures_util::stream::iter(ids.iter().copied())
        .map(|id| async move {
            if let Some(dir) = cache.filter(|_| !options.from_repository)
                && let Some(bytes) = crate::cache::read(dir, ObjectKind::Index, &id)
            {
                match Index::open(keys, repo_id, &id, &bytes) {
                    Ok(index) => return (id, Ok(index)),
                    Err(e) => {
                        tracing::warn!("ignoring the cached copy of index {id}: {e}");
                        crate::cache::remove(dir, ObjectKind::Index, &id);
                    }
                }
            }
            let index = crate::repo::read_twice(|| async {
                let bytes = crate::repo::fetch(&**backend, ObjectKind::Index, &id, MAX_STORED).await?;
                let index = Index::open(keys, repo_id, &id, &bytes)?;
                if let Some(dir) = cache {
                    crate::cache::write(dir, ObjectKind::Index, &id, &bytes);
                }
                Ok(index)
            })
            .await;
            (id, index)
        })
        .buffer_unordered(width)
        .collect()
        .await;
    if let Some(dir) = cache {
        crate::cache::retain(dir, ObjectKind::Index, &ids);
    }
    let mut loaded = Loaded::default();
    let mut indexes = Vec::new();
    let mut names = Vec::new();
    for (id, index) in opened {
        match index {
            Ok(index) => {
                loaded.indexes.push(id);
                names.push(id);
                indexes.push(index);
            }
            Err(e) => {
                tracing::warn!("index {id} cannot be read, its packs are read from their headers: {e}");
                loaded.unreadable.push((id, e));
            }
        }
    }
    loaded.indexes.sort();
    let mut named: std::collections::HashSet<Id> = std::collections::HashSet::new();
    let mut mismatched = std::collections::BTreeMap::new();
    for (name, index) in names.iter().zip(&indexes) {
        let gone = index.packs.iter().filter(|p| !listed.contains_key(&p.id)).count();
        if gone > 0 {
            loaded.stale.push((*name, gone));
        }
    }
    loaded.stale.sort();
    for p in indexes.iter().flat_map(|i| &i.packs) {
        named.insert(p.id);
        if let Some(&(kind, size)) = listed.get(&p.id)
            && (kind != p.kind || size != p.length)
        {
            mismatched.insert((kind, p.id), Mismatch { kind, id: p.id, length: size, indexed: (p.kind, p.length) });
        }
    }
    loaded.unindexed =
        listed.iter().filter(|(id, _)| !named.contains(*id)).map(|(id, &(kind, size))| (kind, *id, size)).collect();
    loaded.unindexed.sort();
    // An archived pack's header cannot be read (a GET fails until it is
    // restored): its blobs count as absent without asking.
    let (cold, readable): (Vec<_>, Vec<_>) =
        loaded.unindexed.iter().copied().partition(|(_, id, _)| archived.contains_key(id));
    if !readable.is_empty() {
        let (recovered, failed) = index_packs(&**backend, keys, repo_id, &readable, width).await;
        for (kind, id, e) in &failed {
            tracing::warn!("{} pack {id} is in no index and its header cannot be read: {e}", kind.name());
        }
        loaded.recovered = recovered;
        loaded.unreadable_packs = failed;
    }
    for (kind, id, _) in cold {
        let key = crate::pack::pack_key(kind, &id);
        tracing::warn!("{} pack {id} is in no index and archived: its header cannot be read", kind.name());
        let class = archived.get(&id).cloned().unwrap_or_default();
        loaded.unreadable_packs.push((kind, id, Error::from(crate::backend::BackendError::Archived { key, class })));
    }
    loaded.archived = archived;
    let refs: Vec<&Index> = indexes.iter().chain(std::iter::once(&loaded.recovered)).collect();
    loaded.blobs = BlobSet::build(&refs, |kind, id| {
        listed.get(id).is_some_and(|&(k, _)| k == kind) && !mismatched.contains_key(&(kind, *id))
    });
    loaded.mismatched = mismatched.into_values().collect();
    loaded.listed = listed;
    if options.keep_objects {
        loaded.objects = names.into_iter().zip(indexes).collect();
    }
    Ok(loaded)
}

struct Reader<'a> {
    data: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let (head, rest) = self.data.split_first_chunk::<N>().ok_or("it ends inside an entry")?;
        self.data = rest;
        Ok(*head)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        self.take::<4>().map(u32::from_le_bytes)
    }
}

/// Where a blob can be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: Id,
    pub kind: PackKind,
    pub offset: u32,
    pub length: u32,
}

/// One blob in memory: 44 bytes (its plaintext length is in the trees that
/// reference it, so it is not kept).
#[derive(Clone, Copy, Debug)]
struct Slot {
    id: Id,
    /// Index into [`BlobSet::packs`].
    pack: u32,
    offset: u32,
    length: u32,
}

/// A pack of the set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackInfo {
    pub id: Id,
    pub kind: PackKind,
    pub length: u64,
}

/// Every stored blob, looked up by kind and id: sorted slots searched by
/// halving, 44 bytes a blob plus 48 a pack — about 45 bytes per blob with
/// 1 MiB chunks in 32 MiB packs, 56 in the worst case of four 8 MiB chunks
/// to a pack.
#[derive(Debug, Default)]
pub struct BlobSet {
    slots: Vec<Slot>,
    packs: Vec<PackInfo>,
    /// Blobs found in more than one pack (an interrupted backup's pack
    /// uploaded again, two clients at once); one copy is kept.
    duplicates: usize,
}

impl BlobSet {
    /// The blobs of `indexes` whose packs `listed` says are stored. A pack
    /// several indexes list counts once.
    pub fn build<'a>(indexes: &[&'a Index], listed: impl Fn(PackKind, &Id) -> bool) -> BlobSet {
        let mut pack_numbers: HashMap<Id, u32> = HashMap::new();
        let mut packs = Vec::new();
        let mut chosen: Vec<&'a IndexedPack> = Vec::new();
        for p in indexes.iter().flat_map(|i| &i.packs) {
            if !listed(p.kind, &p.id) || pack_numbers.contains_key(&p.id) {
                continue;
            }
            pack_numbers.insert(p.id, packs.len() as u32);
            packs.push(PackInfo { id: p.id, kind: p.kind, length: p.length });
            chosen.push(p);
        }
        let total = chosen.iter().map(|p| p.blobs.len()).sum();
        let mut slots = Vec::with_capacity(total);
        for (number, p) in chosen.iter().enumerate() {
            slots.extend(p.blobs.iter().map(|b| Slot {
                id: b.id,
                pack: number as u32,
                offset: b.offset,
                length: b.length,
            }));
        }
        // By id, then kind: one copy of each (kind, id).
        let kind_of = |s: &Slot| packs[s.pack as usize].kind;
        slots.sort_unstable_by_key(|s| (s.id, kind_of(s)));
        let before = slots.len();
        slots.dedup_by(|a, b| a.id == b.id && kind_of(a) == kind_of(b));
        let duplicates = before - slots.len();
        slots.shrink_to_fit();
        packs.shrink_to_fit();
        BlobSet { slots, packs, duplicates }
    }

    pub fn get(&self, kind: ObjectKind, id: &Id) -> Option<BlobLocation> {
        let want = PackKind::of_blob(kind)?;
        let start = self.slots.partition_point(|s| s.id < *id);
        self.slots[start..].iter().take_while(|s| s.id == *id).find_map(|s| {
            let p = self.packs[s.pack as usize];
            (p.kind == want).then_some(BlobLocation { pack: p.id, kind: p.kind, offset: s.offset, length: s.length })
        })
    }

    /// The ids of every blob of a kind, sorted.
    pub fn ids(&self, kind: ObjectKind) -> Vec<Id> {
        let Some(want) = PackKind::of_blob(kind) else { return Vec::new() };
        let mut ids: Vec<Id> =
            self.slots.iter().filter(|s| self.packs[s.pack as usize].kind == want).map(|s| s.id).collect();
        ids.dedup();
        ids
    }

    /// Every blob with where it is.
    pub fn iter(&self) -> impl Iterator<Item = (Id, BlobLocation)> + '_ {
        self.slots.iter().map(|s| {
            let p = self.packs[s.pack as usize];
            (s.id, BlobLocation { pack: p.id, kind: p.kind, offset: s.offset, length: s.length })
        })
    }

    pub fn contains(&self, kind: ObjectKind, id: &Id) -> bool {
        self.get(kind, id).is_some()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn packs(&self) -> &[PackInfo] {
        &self.packs
    }

    pub fn duplicates(&self) -> usize {
        self.duplicates
    }

    /// The bytes the set holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>() + self.packs.capacity() * std::mem::size_of::<PackInfo>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> Id {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
        b[8..16].copy_from_slice(&n.to_le_bytes());
        Id(b)
    }

    /// `packs` packs of `per_pack` blobs of 1 MiB each, numbered from `first`.
    fn index(first: u64, packs: u64, per_pack: u64, kind: PackKind) -> Index {
        let packs = (0..packs)
            .map(|p| {
                let blobs = (0..per_pack)
                    .map(|b| PackEntry {
                        id: id(first + p * per_pack + b),
                        offset: (b << 20) as u32,
                        length: 1 << 20,
                        raw_length: (1 << 20) - 100,
                    })
                    .collect();
                IndexedPack { id: id(u64::MAX - first - p), kind, length: per_pack << 20, blobs }
            })
            .collect();
        Index { packs }
    }

    #[test]
    fn an_index_round_trips_sealed_and_refuses_alteration() {
        let keys = Keys::from_master(&[3; 64]);
        let repo = [4u8; 32];
        let idx = index(0, 3, 4, PackKind::Data);
        assert_eq!(Index::decode(&idx.encode()).unwrap(), idx);
        let (name, stored) = idx.seal(&keys, &repo);
        assert_eq!(Index::open(&keys, &repo, &name, &stored).unwrap(), idx);
        let mut bad = stored.clone();
        bad[20] ^= 1;
        assert!(Index::open(&keys, &repo, &name, &bad).is_err());
        // Stored under another index's name.
        let (other, _) = index(100, 1, 1, PackKind::Data).seal(&keys, &repo);
        assert!(Index::open(&keys, &repo, &other, &stored).is_err());
    }

    #[test]
    fn malformed_plaintexts_are_refused_with_a_reason() {
        let good = index(0, 2, 2, PackKind::Tree).encode();
        let err = |b: &[u8]| Index::decode(b).unwrap_err();
        assert!(err(&good[..good.len() - 1]).contains("lists 2 blobs in 87 bytes"));
        assert!(err(&good[..6]).contains("ends inside"));
        assert!(err(&[good.as_slice(), &[0]].concat()).contains("follow the last pack"));
        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(err(&huge).contains("lists 4294967295 packs"));
        let mut kind = good.clone();
        kind[8 + 32] = 9;
        assert!(err(&kind).contains("unknown kind 9"));
        let mut short = good.clone();
        // The first pack's length: its blobs no longer fit in it.
        short[8 + 33..8 + 41].copy_from_slice(&10u64.to_le_bytes());
        assert!(err(&short).contains("ends at"));
    }

    #[test]
    fn the_set_keeps_listed_packs_once_and_tells_kinds_apart() {
        let data = index(0, 2, 3, PackKind::Data);
        let again = Index { packs: vec![data.packs[0].clone()] };
        let mut trees = index(0, 1, 2, PackKind::Tree);
        trees.packs[0].id = id(777);
        let lost = data.packs[1].id;
        let set = BlobSet::build(&[&data, &again, &trees], |_, p| *p != lost);
        // Pack 0's three blobs (listed twice, counted once) and the trees.
        assert_eq!((set.len(), set.packs().len(), set.duplicates()), (5, 2, 0));
        assert_eq!(
            set.get(ObjectKind::Chunk, &id(1)),
            Some(BlobLocation { pack: data.packs[0].id, kind: PackKind::Data, offset: 1 << 20, length: 1 << 20 })
        );
        // Same id, other kind: the tree pack's copy.
        assert_eq!(set.get(ObjectKind::Tree, &id(1)).map(|l| l.pack), Some(id(777)));
        assert!(!set.contains(ObjectKind::Chunk, &id(4)), "its pack is not listed");
        assert!(!set.contains(ObjectKind::Snapshot, &id(1)));
        // The same blob in two packs (an upload repeated): one copy.
        let mut twice = index(0, 1, 3, PackKind::Data);
        twice.packs[0].id = id(999);
        let set = BlobSet::build(&[&data, &twice], |_, _| true);
        assert_eq!((set.len(), set.duplicates()), (6, 3));
    }

    /// Issue 19's bound: an index of a million blobs (1 MiB chunks in 32 MiB
    /// packs) encoded, decoded and loaded costs at most 48 bytes per blob.
    #[test]
    fn a_million_blobs_cost_at_most_48_bytes_each() {
        let blobs = 1_000_000u64;
        let idx = index(0, blobs / 32 + 1, 32, PackKind::Data);
        let decoded = Index::decode(&idx.encode()).unwrap();
        drop(idx);
        let set = BlobSet::build(&[&decoded], |_, _| true);
        assert!(set.len() as u64 >= blobs);
        let per_blob = set.heap_bytes() as f64 / set.len() as f64;
        assert!(per_blob <= 48.0, "{per_blob:.2} bytes per blob");
        assert_eq!(std::mem::size_of::<Slot>(), 44);
        assert_eq!(set.get(ObjectKind::Chunk, &id(123_456)).map(|l| l.offset), Some((123_456 % 32) << 20));
    }

    /// The test vector of docs/format.md: the index of the pack of
    /// `pack::tests::test_vector`.
    #[test]
    fn test_vector() {
        let keys = Keys::from_master(&[7; 64]);
        let entry = |data: &[u8], offset, length| PackEntry {
            id: keys.id(data),
            offset,
            length,
            raw_length: data.len() as u32,
        };
        let pack = Id::from_hex("c6c6b183d8ec1e4d2eb7af2c8f4ec7a50363b6b0a4d3a6ae9c4fab3b0612e714").unwrap();
        let idx = Index {
            packs: vec![IndexedPack {
                id: pack,
                kind: PackKind::Tree,
                length: 224,
                blobs: vec![entry(b"first tree", 0, 42), entry(b"second tree", 42, 44)],
            }],
        };
        let plain = idx.encode();
        assert_eq!(hex::encode(&plain), INDEX_VECTOR);
        assert_eq!(keys.id(&plain).to_hex(), INDEX_VECTOR_ID);
        let (id, stored) = idx.seal(&keys, &[9; 32]);
        assert_eq!(Index::open(&keys, &[9; 32], &id, &stored).unwrap(), idx);
    }

    const INDEX_VECTOR: &str = concat!(
        "01000000",
        "01000000",
        "c6c6b183d8ec1e4d2eb7af2c8f4ec7a50363b6b0a4d3a6ae9c4fab3b0612e714",
        "01",
        "e000000000000000",
        "02000000",
        "0fff3600421d57f8783e212245c274a72cfbcb89e916f725757c00f3381ba7b1",
        "00000000",
        "2a000000",
        "0a000000",
        "addb0249d3c05db70f258e6f2c848add15f69dce97b4e30e9129d21b540fa141",
        "2a000000",
        "2c000000",
        "0b000000",
    );
    const INDEX_VECTOR_ID: &str = "1ec1307ce66175296cb93b427bea31e813c1952dbb501e62ef630aaa480b12ac";

    proptest::proptest! {
        #[test]
        fn arbitrary_plaintexts_never_panic(plain in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            if let Ok(idx) = Index::decode(&plain) {
                proptest::prop_assert_eq!(idx.encode(), plain);
            }
        }
    }
}
