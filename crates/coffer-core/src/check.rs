//! Verifying a repository: every snapshot decrypts; every index object
//! decrypts and its packs are stored at the length it gives; every pack's
//! header agrees with the index; every tree reachable from the snapshots
//! decrypts and parses under its id; every chunk they reference is in an
//! indexed pack; and, when asked, every pack (or a subset) is downloaded,
//! hashed against its id, and every blob in it authenticated. Damage is
//! reported with the snapshots and paths that depend on the damaged object
//! (for a pack, on any blob in it); objects no snapshot references are
//! reported for information only (an interrupted backup or a `forget`
//! leaves them, and a prune removes them).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use futures_util::StreamExt;

use crate::crypto::ObjectKind;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{BlobLocation, BlobSet, PackInfo};
use crate::pack::{PackKind, pack_key};
use crate::repo::{Repository, fetch_blob};
use crate::snapshot::Snapshot;
use crate::tree::{NodeKind, Tree};

/// Which packs `--read-data` downloads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ReadData {
    None,
    All,
    /// restic's `N/M`: packs whose id's first byte modulo M is N - 1, so
    /// that running 1/M … M/M in turn reads everything once.
    Bucket {
        n: u32,
        m: u32,
    },
    /// A random share of the packs (at least one).
    Percent(f64),
}

impl FromStr for ReadData {
    type Err = Error;

    /// Parses `--read-data-subset`: `N/M` or `P%`.
    fn from_str(s: &str) -> Result<ReadData> {
        let bad =
            || Error::InvalidInput(format!("bad subset {s:?}: expected N/M (1 <= N <= M <= 256) or P% (0 < P <= 100)"));
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            return if p > 0.0 && p <= 100.0 { Ok(ReadData::Percent(p)) } else { Err(bad()) };
        }
        let (n, m) = s.split_once('/').ok_or_else(bad)?;
        let (n, m): (u32, u32) = (n.trim().parse().map_err(|_| bad())?, m.trim().parse().map_err(|_| bad())?);
        if n == 0 || n > m || m > 256 {
            return Err(bad());
        }
        Ok(ReadData::Bucket { n, m })
    }
}

/// A snapshot and a path in it that depend on a damaged object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Usage {
    pub snapshot: Id,
    /// `/`-separated path in the snapshot; directories end in `/`.
    pub path: String,
}

/// A damaged or missing object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Damage {
    /// `snapshot`, `index`, `data pack`, `tree pack`, `tree` or `chunk`.
    pub kind: &'static str,
    pub id: Id,
    /// `missing`, or what is wrong with it.
    pub problem: String,
    /// What depends on it (empty for a snapshot or an index object).
    pub used_by: Vec<Usage>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub snapshots: u64,
    pub trees: u64,
    pub chunks: u64,
    /// Chunks downloaded and authenticated (`--read-data`).
    pub chunks_read: u64,
    /// Packs the index names and the store lists.
    pub packs: u64,
    /// Packs downloaded and hashed (`--read-data`).
    pub packs_read: u64,
    /// Index objects read.
    pub indexes: u64,
    pub damage: Vec<Damage>,
    /// Packs no index object names (an interrupted backup's; the next
    /// backup indexes them): information, not damage.
    pub unindexed_packs: Vec<Id>,
    /// Index objects naming packs that do not exist (deleted behind
    /// coffer's back, or an old index object put back): information, since
    /// what such packs held counts as absent, and the chunks a snapshot
    /// still needs from them are reported as missing.
    pub stale_indexes: Vec<Id>,
    pub unreferenced_trees: Vec<Id>,
    pub unreferenced_chunks: Vec<Id>,
    /// Packs in an archive storage class (Glacier, Deep Archive): their
    /// headers are not read (a read fails until they are restored), so
    /// only their listing, length and index entries are checked.
    pub archived_packs: u64,
    /// Packs `--read-data` selected but could not download because they
    /// are archived without a restored copy: not checked, not damage.
    pub archived_unread: Vec<Id>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }
}

/// What went wrong reading one object, as reported (the error's message
/// without the object name, which the report carries).
pub(crate) fn problem(e: &Error) -> String {
    match e {
        Error::Missing { .. } => "missing".into(),
        Error::Corrupt { reason, .. } => format!("damaged: {reason}"),
        other => format!("unreadable: {other}"),
    }
}

/// What is wrong with a pack no index names whose header cannot be read.
pub(crate) fn unreadable_header(e: &Error) -> String {
    format!("in no index, and its header cannot be read: {}", problem(e))
}

/// Packs selected for reading.
fn select(packs: &[PackInfo], read: ReadData) -> Vec<PackInfo> {
    let mut all: Vec<PackInfo> = packs.to_vec();
    all.sort_by_key(|p| p.id);
    match read {
        ReadData::None => Vec::new(),
        ReadData::All => all,
        ReadData::Bucket { n, m } => all.into_iter().filter(|p| u32::from(p.id.0[0]) % m == n - 1).collect(),
        ReadData::Percent(p) => {
            let want = ((all.len() as f64 * p / 100.0) as usize).max(1).min(all.len());
            let mut keyed: Vec<(Id, PackInfo)> = all.into_iter().map(|p| (Id::random(), p)).collect();
            keyed.sort_by_key(|k| k.0);
            keyed.into_iter().take(want).map(|(_, p)| p).collect()
        }
    }
}

/// Damage found, keyed by what is damaged.
#[derive(Default)]
struct Found {
    /// Blobs: (kind, id) → problem.
    blobs: HashMap<Id, (&'static str, String)>,
    /// Packs: id → (kind, problem).
    packs: BTreeMap<Id, (PackKind, String)>,
}

impl Found {
    fn pack(&mut self, kind: PackKind, id: Id, problem: String) {
        self.packs.entry(id).or_insert((kind, problem));
    }
}

/// Checks the repository.
pub fn check(repo: &Repository, read: ReadData) -> Result<CheckReport> {
    let mut report = CheckReport::default();

    // Snapshots.
    let mut snapshots: Vec<(Id, Snapshot)> = Vec::new();
    // From the repository, not the cache: a good cached copy says nothing
    // about the stored object.
    for id in repo.list_ids(ObjectKind::Snapshot)? {
        match repo.fetch_snapshot(&id) {
            Ok(s) => snapshots.push((id, s)),
            Err(e) => report.damage.push(Damage { kind: "snapshot", id, problem: problem(&e), used_by: Vec::new() }),
        }
    }
    report.snapshots = snapshots.len() as u64;

    // The index, against fresh listings of the packs, every index object
    // read from the repository: as with snapshots, a good cached copy says
    // nothing about the stored object.
    let options = crate::index::LoadOptions { from_repository: true, ..Default::default() };
    let loaded = repo.runtime().block_on(crate::index::load_with(repo, options))?;
    let mut found = Found::default();
    report.indexes = loaded.indexes.len() as u64;
    for (id, e) in &loaded.unreadable {
        report.damage.push(Damage { kind: "index", id: *id, problem: problem(e), used_by: Vec::new() });
    }
    for m in &loaded.mismatched {
        found.pack(m.kind, m.id, m.problem());
    }
    for (kind, id, e) in &loaded.unreadable_packs {
        found.pack(*kind, *id, unreadable_header(e));
    }
    report.unindexed_packs = loaded.recovered.packs.iter().map(|p| p.id).collect();
    report.stale_indexes = loaded.stale.iter().map(|(id, _)| *id).collect();
    let set = repo.set_blob_set(loaded.blobs);
    report.packs = set.packs().len() as u64;
    let archived = loaded.archived;

    // Trees, level by level from the roots, each distinct tree once, with
    // many fetches in flight.
    let mut seen: HashSet<Id> = HashSet::new();
    let mut chunks: HashMap<Id, u32> = HashMap::new();
    let mut level: Vec<Id> = snapshots.iter().map(|(_, s)| s.tree).filter(|t| seen.insert(*t)).collect();
    while !level.is_empty() {
        let fetched = fetch_all(repo, &set, ObjectKind::Tree, std::mem::take(&mut level));
        for (id, stored) in fetched {
            match stored.and_then(|b| repo.decode_tree(&id, &b)) {
                Ok(tree) => {
                    for node in tree.nodes {
                        match (node.kind, node.subtree) {
                            (NodeKind::Dir, Some(sub)) if seen.insert(sub) => level.push(sub),
                            _ => chunks.extend(node.content.iter().map(|c| (c.0, c.1))),
                        }
                    }
                }
                Err(e) => {
                    found.blobs.insert(id, ("tree", problem(&e)));
                }
            }
        }
    }
    report.trees = seen.len() as u64;
    report.chunks = chunks.len() as u64;
    for id in chunks.keys().filter(|id| !set.contains(ObjectKind::Chunk, id)) {
        found.blobs.insert(*id, ("chunk", "missing".into()));
    }

    // Packs: downloaded whole and hashed when asked, else their headers
    // compared with the index.
    let to_read = select(set.packs(), read);
    let read_ids: HashSet<Id> = to_read.iter().map(|p| p.id).collect();
    let headers_only: Vec<PackInfo> =
        set.packs().iter().filter(|p| !read_ids.contains(&p.id) && !archived.contains_key(&p.id)).copied().collect();
    report.archived_packs = set.packs().iter().filter(|p| archived.contains_key(&p.id)).count() as u64;
    let mut by_pack: HashMap<Id, Vec<(Id, BlobLocation)>> = HashMap::new();
    for (id, loc) in set.iter() {
        by_pack.entry(loc.pack).or_default().push((id, loc));
    }
    for (pack, problem) in compare_headers(repo, &headers_only, &by_pack) {
        found.pack(pack.kind, pack.id, problem);
    }
    report.packs_read = to_read.len() as u64;
    let outcome = read_packs(repo, &to_read, &by_pack, &chunks);
    report.chunks_read = outcome.chunks_read;
    report.packs_read -= outcome.archived.len() as u64;
    report.archived_unread = outcome.archived.iter().map(|p| p.id).collect();
    report.archived_unread.sort();
    for (pack, problem) in outcome.packs {
        found.pack(pack.kind, pack.id, problem);
    }
    for (id, kind, e) in outcome.blobs {
        found.blobs.entry(id).or_insert((kind, problem(&e)));
    }

    let referenced = |kind: ObjectKind, id: &Id| match kind {
        ObjectKind::Tree => seen.contains(id),
        _ => chunks.contains_key(id),
    };
    report.unreferenced_trees =
        set.ids(ObjectKind::Tree).into_iter().filter(|t| !referenced(ObjectKind::Tree, t)).collect();
    report.unreferenced_chunks =
        set.ids(ObjectKind::Chunk).into_iter().filter(|c| !referenced(ObjectKind::Chunk, c)).collect();

    if !found.blobs.is_empty() || !found.packs.is_empty() {
        // A damaged pack affects whatever uses a blob in it.
        let mut wanted: HashMap<Id, (&'static str, String)> = found.blobs.clone();
        for pack in found.packs.keys() {
            for (id, loc) in by_pack.get(pack).into_iter().flatten() {
                wanted.entry(*id).or_insert((if loc.kind == PackKind::Tree { "tree" } else { "chunk" }, String::new()));
            }
        }
        let usage = attribute(repo, &snapshots, &wanted)?;
        let used = |ids: &mut dyn Iterator<Item = Id>| {
            let mut v: Vec<Usage> = ids.flat_map(|id| usage.get(&id).cloned().unwrap_or_default()).collect();
            v.sort();
            v.dedup();
            v
        };
        let mut damage: Vec<Damage> = found
            .blobs
            .into_iter()
            .map(|(id, (kind, problem))| Damage { kind, id, problem, used_by: used(&mut std::iter::once(id)) })
            .collect();
        for (id, (kind, problem)) in found.packs {
            let blobs = by_pack.get(&id).map(|b| b.iter().map(|(id, _)| *id).collect::<Vec<_>>()).unwrap_or_default();
            damage.push(Damage { kind: kind.name(), id, problem, used_by: used(&mut blobs.into_iter()) });
        }
        damage.sort_by(|a, b| (a.kind, a.id).cmp(&(b.kind, b.id)));
        report.damage.extend(damage);
    }
    Ok(report)
}

/// Downloads every pack of `set` as `check --read-data` does and returns
/// those that are damaged, with what is wrong: a pack that does not hash to
/// its name, whose header disagrees with the index, or holding a blob that
/// does not authenticate (what `repair packs` looks for when no pack is
/// named). Chunk lengths are not compared with trees here: the trees are
/// not read.
pub(crate) fn damaged_packs(repo: &Repository, set: &BlobSet) -> Vec<(PackInfo, String)> {
    let mut by_pack: HashMap<Id, Vec<(Id, BlobLocation)>> = HashMap::new();
    for (id, loc) in set.iter() {
        by_pack.entry(loc.pack).or_default().push((id, loc));
    }
    let outcome = read_packs(repo, set.packs(), &by_pack, &HashMap::new());
    let mut found = Found::default();
    for (pack, problem) in outcome.packs {
        found.pack(pack.kind, pack.id, problem);
    }
    for (id, kind, e) in outcome.blobs {
        let blob_kind = if kind == ObjectKind::Tree.name() { ObjectKind::Tree } else { ObjectKind::Chunk };
        let Some(loc) = set.get(blob_kind, &id) else { continue };
        found.pack(loc.kind, loc.pack, format!("its {kind} {id} is {}", problem(&e)));
    }
    let lengths: HashMap<Id, u64> = set.packs().iter().map(|p| (p.id, p.length)).collect();
    found
        .packs
        .into_iter()
        .map(|(id, (kind, problem))| (PackInfo { id, kind, length: lengths.get(&id).copied().unwrap_or(0) }, problem))
        .collect()
}

/// Fetches blobs with the backend's concurrency.
fn fetch_all(repo: &Repository, set: &BlobSet, kind: ObjectKind, ids: Vec<Id>) -> Vec<(Id, Result<Vec<u8>>)> {
    let backend = repo.backend().clone();
    let concurrency = backend.concurrency().max(1);
    let limit = repo.stored_limit(kind);
    repo.runtime().block_on(
        futures_util::stream::iter(ids)
            .map(|id| {
                let backend = backend.clone();
                async move { (id, fetch_blob(&*backend, set, kind, &id, limit).await) }
            })
            .buffer_unordered(concurrency)
            .collect(),
    )
}

/// Whether a pack's header lists every blob the index puts in it, at the
/// same place.
fn header_problem(header: &[crate::pack::PackEntry], expected: &[(Id, BlobLocation)]) -> Option<String> {
    let entries: HashMap<Id, (u32, u32)> = header.iter().map(|e| (e.id, (e.offset, e.length))).collect();
    let wrong = expected.iter().filter(|(id, loc)| entries.get(id) != Some(&(loc.offset, loc.length))).count();
    (wrong > 0).then(|| format!("damaged: its header disagrees with the index on {wrong} blobs"))
}

/// Reads the header of each pack (one or two ranged reads) and compares it
/// with the index.
fn compare_headers(
    repo: &Repository,
    packs: &[PackInfo],
    by_pack: &HashMap<Id, Vec<(Id, BlobLocation)>>,
) -> Vec<(PackInfo, String)> {
    let backend = repo.backend().clone();
    let (keys, repo_id) = (repo.keys().clone(), *repo.repo_id());
    let concurrency = backend.concurrency().max(1);
    let results: Vec<Option<(PackInfo, String)>> = repo.runtime().block_on(
        futures_util::stream::iter(packs.iter().copied())
            .map(|pack| {
                let (backend, keys) = (backend.clone(), keys.clone());
                async move {
                    let header =
                        crate::pack::fetch_header(&*backend, &keys, &repo_id, pack.kind, &pack.id, pack.length).await;
                    let expected = by_pack.get(&pack.id).map(Vec::as_slice).unwrap_or_default();
                    match header {
                        Ok(entries) => header_problem(&entries, expected).map(|p| (pack, p)),
                        Err(e) => Some((pack, problem(&e))),
                    }
                }
            })
            .buffer_unordered(concurrency)
            .collect(),
    );
    results.into_iter().flatten().collect()
}

/// Bytes of packs being downloaded or checked at once, unless a single pack
/// is larger: enough to keep a few requests in flight.
const READ_BUDGET: u64 = 128 * 1024 * 1024;

#[derive(Default)]
struct ReadOutcome {
    chunks_read: u64,
    packs: Vec<(PackInfo, String)>,
    blobs: Vec<(Id, &'static str, Error)>,
    /// Packs that could not be read because they are archived.
    archived: Vec<PackInfo>,
}

/// Downloads packs whole: each must hash to its id and its header agree
/// with the index, and every blob the index puts in it must authenticate
/// (decryption with the id bound, the id recomputed from the plaintext, a
/// chunk's length as the trees recorded it). Checking runs on rayon's pool;
/// the backend's concurrency bounds the requests in flight and
/// [`READ_BUDGET`] the bytes.
fn read_packs(
    repo: &Repository,
    packs: &[PackInfo],
    by_pack: &HashMap<Id, Vec<(Id, BlobLocation)>>,
    chunk_lens: &HashMap<Id, u32>,
) -> ReadOutcome {
    let backend = repo.backend().clone();
    let keys = repo.keys().clone();
    let repo_id = *repo.repo_id();
    let max_chunk = repo.max_chunk_len();
    let concurrency = backend.concurrency().clamp(1, 8);
    let budget_cap = packs.iter().map(|p| p.length).max().unwrap_or(0).max(READ_BUDGET);
    let budget = Arc::new(tokio::sync::Semaphore::new(budget_cap.min(u32::MAX as u64) as usize));
    // Buffers of packs checked, for the next packs to be read into (see
    // `Backend::get_into`): at most one per read in flight.
    let buffers: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
    let results: Vec<ReadOutcome> = repo.runtime().block_on(
        futures_util::stream::iter(packs.iter().copied())
            .map(|pack| {
                let (backend, keys, budget, buffers) =
                    (backend.clone(), Arc::clone(&keys), Arc::clone(&budget), &buffers);
                let expected: Vec<(Id, BlobLocation)> = by_pack.get(&pack.id).cloned().unwrap_or_default();
                let lens: Vec<Option<u32>> = expected.iter().map(|(id, _)| chunk_lens.get(id).copied()).collect();
                async move {
                    let mut out = ReadOutcome::default();
                    let want = pack.length.clamp(1, budget_cap).min(u32::MAX as u64) as u32;
                    let _permit = match budget.acquire_many_owned(want).await {
                        Ok(p) => p,
                        Err(e) => {
                            out.packs.push((pack, format!("unreadable: read budget: {e}")));
                            return out;
                        }
                    };
                    // A pack that fails is downloaded and checked once more:
                    // a bit flipped on the way is not damage at rest.
                    for attempt in 1..=2 {
                        let spare = buffers.lock().ok().and_then(|mut b| b.pop()).unwrap_or_default();
                        let bytes = match backend.get_into(&pack_key(pack.kind, &pack.id), pack.length, spare).await {
                            Ok(b) => b,
                            Err(e) if e.is_not_found() => {
                                out.packs.push((pack, "missing".into()));
                                return out;
                            }
                            Err(e) if e.is_archived() => {
                                out.archived.push(pack);
                                return out;
                            }
                            Err(e) => {
                                out.packs.push((pack, problem(&Error::from(e))));
                                return out;
                            }
                        };
                        let (keys, expected, lens) = (Arc::clone(&keys), expected.clone(), lens.clone());
                        let checked = crate::restorer::on_cpu_pool(move || {
                            let mut bytes = bytes;
                            let out = check_pack(&keys, &repo_id, max_chunk, pack, &mut bytes, &expected, &lens);
                            (out, bytes)
                        });
                        out = match checked.await {
                            Ok((out, bytes)) => {
                                if let Ok(mut spare) = buffers.lock() {
                                    spare.push(bytes);
                                }
                                out
                            }
                            Err(e) => ReadOutcome {
                                packs: vec![(pack, format!("unreadable: checking task failed: {e}"))],
                                ..ReadOutcome::default()
                            },
                        };
                        if out.packs.is_empty() && out.blobs.is_empty() {
                            break;
                        }
                        if attempt == 1 {
                            tracing::warn!("{} pack {} did not check; reading it again", pack.kind.name(), pack.id);
                        }
                    }
                    out
                }
            })
            .buffer_unordered(concurrency)
            .collect(),
    );
    let mut all = ReadOutcome::default();
    for r in results {
        all.chunks_read += r.chunks_read;
        all.packs.extend(r.packs);
        all.blobs.extend(r.blobs);
        all.archived.extend(r.archived);
    }
    all
}

/// Checks one downloaded pack (see [`read_packs`]): its header against the
/// index, its id by hashing, and every blob the index puts in it.
///
/// One pass over the bytes: each blob is hashed into the pack's id and then
/// decrypted where it lies, while it is still in the core's cache (hashing
/// the whole pack first and then copying each blob out to decode it went
/// over every byte three times). The header is read first, before any blob
/// is decrypted over it; a blob that overlaps the one before it (only a
/// damaged or forged index puts two blobs in one place) is decoded from a
/// copy taken before anything changed.
fn check_pack(
    keys: &crate::crypto::Keys,
    repo_id: &[u8; 32],
    max_chunk: usize,
    pack: PackInfo,
    bytes: &mut [u8],
    expected: &[(Id, BlobLocation)],
    lens: &[Option<u32>],
) -> ReadOutcome {
    let mut out = ReadOutcome::default();
    let header = crate::pack::decode_header(keys, repo_id, pack.kind, &pack.id, bytes.len() as u64, bytes);
    let kind = pack.kind.blob_kind();
    let mut order: Vec<usize> = (0..expected.len()).collect();
    order.sort_by_key(|&i| expected[i].1.offset);
    let mut in_place = Vec::with_capacity(order.len());
    let mut copies = Vec::new();
    let mut end_so_far = 0usize;
    for i in order {
        let (id, loc) = &expected[i];
        let start = loc.offset as usize;
        match start.checked_add(loc.length as usize).filter(|&end| end <= bytes.len()) {
            None => out.blobs.push((
                *id,
                kind.name(),
                Error::corrupt(kind.name(), id.to_hex(), "it lies past the pack's end"),
            )),
            Some(end) if start < end_so_far => copies.push((i, bytes[start..end].to_vec())),
            Some(end) => {
                end_so_far = end;
                in_place.push((i, start..end));
            }
        }
    }
    let check = |out: &mut ReadOutcome, i: usize, stored: &mut [u8]| {
        if let Err(e) = check_blob(keys, repo_id, max_chunk, kind, &expected[i].0, lens[i], stored) {
            out.blobs.push((expected[i].0, kind.name(), e));
        }
        out.chunks_read += u64::from(kind == ObjectKind::Chunk);
    };
    let mut hasher = keys.pack_hasher();
    let mut hashed = 0;
    for (i, range) in in_place {
        hasher.update(&bytes[hashed..range.end]);
        hashed = range.end;
        check(&mut out, i, &mut bytes[range]);
    }
    hasher.update(&bytes[hashed..]);
    for (i, mut copy) in copies {
        check(&mut out, i, &mut copy);
    }
    // Every blob was checked even when the pack as a whole fails: that
    // names the blobs that are lost and spares those that are not.
    if Id(*hasher.finalize().as_bytes()) != pack.id {
        out.packs.push((pack, problem(&crate::pack::id_mismatch(pack.kind, &pack.id))));
    } else {
        match header {
            Ok(header) => {
                if let Some(p) = header_problem(&header, expected) {
                    out.packs.push((pack, p));
                }
            }
            Err(e) => out.packs.push((pack, problem(&e))),
        }
    }
    out
}

/// Authenticates one blob where it lies (decrypting it there): a chunk
/// must also have the length its trees recorded, a tree must parse.
fn check_blob(
    keys: &crate::crypto::Keys,
    repo_id: &[u8; 32],
    max_chunk: usize,
    kind: ObjectKind,
    id: &Id,
    len: Option<u32>,
    stored: &mut [u8],
) -> Result<()> {
    match (kind, len) {
        (ObjectKind::Chunk, Some(len)) => {
            crate::repo::decode_chunk_ref_in(keys, repo_id, max_chunk, &crate::tree::ChunkRef(*id, len), stored)
                .map(drop)
        }
        (ObjectKind::Chunk, None) => crate::blob::decode_in_place(keys, repo_id, kind, id, stored, max_chunk).map(drop),
        _ => crate::blob::decode_in_place(keys, repo_id, kind, id, stored, crate::repo::MAX_TREE_LEN)
            .and_then(|plain| Tree::from_bytes(&id.to_hex(), &plain))
            .map(drop),
    }
}

/// For each damaged object, the snapshots and paths that depend on it.
/// Walks every snapshot again, skipping subtrees already found clean.
fn attribute(
    repo: &Repository,
    snapshots: &[(Id, Snapshot)],
    bad: &HashMap<Id, (&'static str, String)>,
) -> Result<HashMap<Id, Vec<Usage>>> {
    struct Walk<'a> {
        repo: &'a Repository,
        bad: &'a HashMap<Id, (&'static str, String)>,
        clean: HashSet<Id>,
        usage: HashMap<Id, Vec<Usage>>,
    }
    impl Walk<'_> {
        /// Returns whether anything below `tree` is damaged.
        fn tree(&mut self, snapshot: Id, tree: Id, path: &str) -> bool {
            if self.clean.contains(&tree) {
                return false;
            }
            if self.bad.contains_key(&tree) {
                self.usage.entry(tree).or_default().push(Usage { snapshot, path: path.to_string() });
                return true;
            }
            // It decoded in the first pass; a failure now is reported there.
            let Ok(t): Result<Tree> = self.repo.load_tree(&tree) else { return true };
            let mut tainted = false;
            for node in &t.nodes {
                let mut p = format!("{path}{}", node.name_lossy());
                match (node.kind, node.subtree) {
                    (NodeKind::Dir, Some(sub)) => {
                        p.push('/');
                        tainted |= self.tree(snapshot, sub, &p);
                    }
                    _ => {
                        for c in &node.content {
                            if self.bad.contains_key(&c.0) {
                                self.usage.entry(c.0).or_default().push(Usage { snapshot, path: p.clone() });
                                tainted = true;
                            }
                        }
                    }
                }
            }
            if !tainted {
                self.clean.insert(tree);
            }
            tainted
        }
    }
    let mut w = Walk { repo, bad, clean: HashSet::new(), usage: HashMap::new() };
    for (id, s) in snapshots {
        w.tree(*id, s.tree, "/");
    }
    Ok(w.usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_parse_as_restic() {
        assert_eq!("1/5".parse::<ReadData>().unwrap(), ReadData::Bucket { n: 1, m: 5 });
        assert_eq!("5/5".parse::<ReadData>().unwrap(), ReadData::Bucket { n: 5, m: 5 });
        assert_eq!("2.5%".parse::<ReadData>().unwrap(), ReadData::Percent(2.5));
        for bad in ["0/5", "6/5", "1/257", "x", "1/", "0%", "101%", "/3"] {
            assert!(bad.parse::<ReadData>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn buckets_partition_the_packs() {
        let packs: Vec<PackInfo> =
            (0..=255u8).map(|b| PackInfo { id: Id([b; 32]), kind: PackKind::Data, length: 1 }).collect();
        let mut all = Vec::new();
        for n in 1..=3 {
            let part = select(&packs, ReadData::Bucket { n, m: 3 });
            assert!(part.iter().all(|p| u32::from(p.id.0[0]) % 3 == n - 1));
            all.extend(part.into_iter().map(|p| p.id));
        }
        all.sort();
        assert_eq!(all.len(), 256, "every pack in exactly one bucket");
        all.dedup();
        assert_eq!(all.len(), 256);
        assert_eq!(select(&packs, ReadData::Percent(10.0)).len(), 25);
        assert_eq!(select(&packs, ReadData::Percent(0.01)).len(), 1, "at least one");
        assert_eq!(select(&packs, ReadData::None).len(), 0);
    }
}
