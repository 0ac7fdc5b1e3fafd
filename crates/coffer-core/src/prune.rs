//! Prune: delete the packs that hold nothing a snapshot references, and
//! repack those that hold mostly garbage.
//!
//! The protocol (invariant 6), so that a backup running at the same time is
//! never blocked for long and never loses a blob it decided to reuse:
//!
//! 1. Under a **shared** lock: list the snapshots (set S1), mark every tree
//!    and chunk they reach, and load the index against fresh listings of
//!    the packs. Each pack is then kept, deleted (no marked blob in it), or
//!    repacked (its unused share is above `--max-unused`, within
//!    `--max-repack` bytes). Backups run alongside; what they upload after
//!    the index was loaded is not considered.
//! 2. Still under the shared lock, repack: the marked blobs of the packs to
//!    repack are read with ranged reads and written, as they are (never
//!    decrypted), into new packs, which the packer indexes as they complete.
//! 3. Release the shared lock and take the **exclusive** one. It cannot be
//!    had while any backup holds its shared lock, so every backup that could
//!    have reused a blob of a doomed pack has finished (or given up).
//! 4. List the snapshots again (S2). A snapshot in S2 but not in S1 was
//!    written by a backup that ran meanwhile: mark what it reaches, and keep
//!    every doomed pack holding one of those blobs that no new pack has.
//! 5. Write the index of every kept pack as new index objects, then delete
//!    the index objects read in step 1, then the doomed packs. A crash
//!    anywhere leaves each blob of every snapshot in an indexed, or at worst
//!    listed and unindexed, pack (which the next load reads from its header).
//!
//! Marking stops at the first snapshot or tree that cannot be read: deleting
//! on a partial view would lose data. Trees come through
//! [`Repository::load_tree_async`], so the local cache spares re-downloading
//! them.

use std::collections::HashSet;

use futures_util::StreamExt;

use crate::backend::{RestoreStatus, RetrievalTier};
use crate::crypto::ObjectKind;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{BlobLocation, Index, IndexedPack, Loaded};
use crate::lock::{LockGuard, PRUNE};
use crate::pack::{PackKind, pack_key};
use crate::packer::{Packer, plan_reads};
use crate::repo::{Repository, object_key};

#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Plan and count, change nothing (and take no exclusive lock).
    pub dry_run: bool,
    /// Snapshots to leave out of the marking as if they were gone: what
    /// `forget --prune --dry-run` would free, with nothing removed.
    pub assume_forgotten: Vec<Id>,
    /// A pack whose unused bytes exceed this share (in percent) of its
    /// length is repacked; 100 never repacks.
    pub max_unused_percent: f64,
    /// At most this many bytes of packs are repacked in one run.
    pub max_repack_bytes: Option<u64>,
    /// Repack packs in an archive storage class too. They must be restored
    /// first: prune asks for that (bulk retrieval) and repacks those whose
    /// copies are ready, the others on a later run.
    pub repack_cold: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            dry_run: false,
            assume_forgotten: Vec::new(),
            max_unused_percent: 10.0,
            max_repack_bytes: None,
            repack_cold: false,
        }
    }
}

/// Days a restored copy of an archived pack is kept for `--repack-cold`:
/// enough for a prune a day later to find it.
const REPACK_RESTORE_DAYS: u32 = 3;

/// What prune found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PruneOutcome {
    pub dry_run: bool,
    pub snapshots: usize,
    /// Snapshots written while prune was marking, marked in its exclusive phase.
    pub snapshots_added_meanwhile: usize,
    pub trees_kept: usize,
    pub chunks_kept: usize,
    /// Unreferenced blobs removed from the repository (or, with `dry_run`,
    /// that would be), by deleting or repacking their packs.
    pub trees_deleted: usize,
    pub chunks_deleted: usize,
    /// Stored bytes of the packs deleted, repacked ones included.
    pub bytes_deleted: u64,
    /// Packs deleted because nothing in them is used.
    pub packs_deleted: usize,
    /// Packs whose used blobs were copied into new packs, then deleted.
    pub packs_repacked: usize,
    /// Packs left as they are.
    pub packs_kept: usize,
    /// Bytes of blobs read to repack.
    pub bytes_to_download: u64,
    /// Bytes of new packs written (an estimate when `dry_run`).
    pub bytes_to_upload: u64,
    /// Unused bytes left in kept packs (below `--max-unused`, or beyond
    /// `--max-repack`).
    pub unused_bytes_kept: u64,
    /// Index objects replaced by new ones.
    pub index_objects_replaced: usize,
    /// Objects the snapshots reference that are in no stored pack: damage
    /// that prune leaves as it is (`coffer check` reports where).
    pub missing: usize,
    /// Packs in an archive storage class that hold unused blobs but were
    /// kept, not repacked (without `--repack-cold`, or not restored yet),
    /// and the unused bytes they keep.
    pub cold_packs_not_repacked: usize,
    pub cold_unused_bytes_kept: u64,
    /// Archived packs `--repack-cold` asked the store to restore this run:
    /// a later prune repacks them once their copies are ready.
    pub cold_restores_requested: usize,
    /// Packs prune would delete or repack that Object Lock still retains:
    /// kept, and when a later prune can reclaim them, by day.
    pub locked_packs_kept: usize,
    pub locked_bytes_kept: u64,
    pub reclaimable: Vec<Reclaimable>,
}

/// Bytes Object Lock keeps until a date.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reclaimable {
    /// The day retention ends (UTC), and the time (seconds since the epoch)
    /// the last of them is released.
    pub date: String,
    pub until: i64,
    pub packs: usize,
    pub bytes: u64,
}

/// What is reachable from a set of snapshots.
#[derive(Default)]
pub(crate) struct Marks {
    pub(crate) trees: HashSet<Id>,
    pub(crate) chunks: HashSet<Id>,
}

impl Marks {
    fn has(&self, kind: PackKind, id: &Id) -> bool {
        match kind {
            PackKind::Data => self.chunks.contains(id),
            PackKind::Tree => self.trees.contains(id),
        }
    }
}

/// What becomes of one pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Keep,
    Delete,
    Repack,
}

/// A stored pack as the index and the marks see it.
struct PackUse {
    pack: IndexedPack,
    /// Stored bytes of its blobs that are used, counting only the copy the
    /// blob set chose (a blob stored twice is used in one pack).
    used_bytes: u64,
    used_blobs: usize,
    fate: Fate,
}

pub fn prune(repo: &Repository, options: &PruneOptions) -> Result<PruneOutcome> {
    let shared = repo.lock_shared(PRUNE)?;
    let mut outcome = PruneOutcome { dry_run: options.dry_run, ..PruneOutcome::default() };
    let mut s1: HashSet<Id> = repo.list_ids(ObjectKind::Snapshot)?.into_iter().collect();
    for id in &options.assume_forgotten {
        s1.remove(id);
    }
    let loaded = repo.runtime().block_on(crate::index::load_with(
        repo,
        crate::index::LoadOptions { keep_objects: true, ..Default::default() },
    ))?;
    let Loaded { blobs, objects, recovered, indexes, archived, .. } = loaded;
    let set = repo.set_blob_set(blobs);
    let mut marks = Marks::default();
    mark_snapshots(repo, &s1, &mut marks, Some(&shared))?;
    outcome.missing = marks.trees.iter().filter(|id| !set.contains(ObjectKind::Tree, id)).count()
        + marks.chunks.iter().filter(|id| !set.contains(ObjectKind::Chunk, id)).count();
    if outcome.missing > 0 {
        tracing::warn!(
            "{} objects referenced by snapshots are missing from the repository; run `coffer check`",
            outcome.missing
        );
    }

    let mut packs = plan(&set, objects.iter().map(|(_, i)| i).chain(std::iter::once(&recovered)), &marks, options);
    cold_packs(repo, &mut packs, &archived, options, &mut outcome)?;
    locked_packs(repo, &mut packs, &mut outcome)?;
    count(&mut outcome, &marks, &packs);
    if options.dry_run {
        outcome.snapshots = s1.len();
        shared.release()?;
        return Ok(outcome);
    }
    // Repack under the shared lock, as a backup stores: new packs first.
    let packer = repo.packer();
    let mut copied: HashSet<(PackKind, Id)> = HashSet::new();
    let repack: Vec<&PackUse> = packs.iter().filter(|p| p.fate == Fate::Repack).collect();
    let (downloaded, uploaded) = repack_packs(repo, &packer, &repack, &set, &marks, &shared, &mut copied)?;
    shared.check()?;
    shared.release()?;

    let exclusive = repo.lock_exclusive(PRUNE)?;
    let s2: HashSet<Id> = repo.list_ids(ObjectKind::Snapshot)?.into_iter().collect();
    let added: HashSet<Id> = s2.difference(&s1).copied().collect();
    if !added.is_empty() {
        tracing::info!("{} snapshots were written while prune was marking; marking them too", added.len());
        // Their trees may be in packs stored since the index was loaded.
        repo.reload_blob_set()?;
        let mut late = Marks::default();
        mark_snapshots(repo, &added, &mut late, Some(&exclusive))?;
        // A doomed pack holding a blob a new snapshot uses, which no new
        // pack has, is kept.
        for p in packs.iter_mut().filter(|p| p.fate != Fate::Keep) {
            let needed =
                p.pack.blobs.iter().any(|b| late.has(p.pack.kind, &b.id) && !copied.contains(&(p.pack.kind, b.id)));
            if needed {
                p.fate = Fate::Keep;
            }
        }
        marks.trees.extend(late.trees);
        marks.chunks.extend(late.chunks);
        count(&mut outcome, &marks, &packs);
    }
    // What the repack really read and wrote, in place of the plan's estimate.
    outcome.bytes_to_download = downloaded;
    outcome.bytes_to_upload = uploaded;
    outcome.snapshots = s2.len();
    outcome.snapshots_added_meanwhile = added.len();

    exclusive.check()?;
    let nothing_to_do = packs.iter().all(|p| p.fate == Fate::Keep) && indexes.len() <= 1;
    if nothing_to_do {
        exclusive.release()?;
        return Ok(outcome);
    }
    // The index of every kept pack, in new objects, before the old ones go.
    // (Many small index objects, one or more per backup, become few.)
    let kept: Vec<IndexedPack> = packs.iter().filter(|p| p.fate == Fate::Keep).map(|p| p.pack.clone()).collect();
    outcome.index_objects_replaced = replace_index(repo, &packer, kept, &indexes, &exclusive)?.removed;
    let doomed: Vec<String> =
        packs.iter().filter(|p| p.fate != Fate::Keep).map(|p| pack_key(p.pack.kind, &p.pack.id)).collect();
    delete(repo, &doomed, &exclusive)?;
    for p in packs.iter().filter(|p| p.fate != Fate::Keep && p.pack.kind == PackKind::Tree) {
        for b in p.pack.blobs.iter().filter(|b| !marks.trees.contains(&b.id)) {
            repo.forget_cached(ObjectKind::Tree, &b.id);
        }
    }
    repo.forget_blob_set();
    exclusive.release()?;
    Ok(outcome)
}

/// Keeps archived packs chosen for repacking (they cannot be read), unless
/// `--repack-cold` asks for them: then those whose restored copy is ready
/// are repacked, and a restore is asked for the others. Deleting an
/// archived pack needs no read, so fully unused ones go as usual.
fn cold_packs(
    repo: &Repository,
    packs: &mut [PackUse],
    archived: &std::collections::HashMap<Id, String>,
    options: &PruneOptions,
    outcome: &mut PruneOutcome,
) -> Result<()> {
    let classes = repo.backend().storage_classes();
    for p in packs.iter_mut().filter(|p| p.fate == Fate::Repack && archived.contains_key(&p.pack.id)) {
        if options.repack_cold
            && let Some(classes) = classes
        {
            let key = pack_key(p.pack.kind, &p.pack.id);
            let status = repo.runtime().block_on(classes.restore_status(&key))?;
            match status {
                RestoreStatus::Readable { .. } => continue,
                RestoreStatus::InProgress => {}
                RestoreStatus::Archived if options.dry_run => {}
                RestoreStatus::Archived => {
                    repo.runtime().block_on(classes.request_restore(&key, REPACK_RESTORE_DAYS, RetrievalTier::Bulk))?;
                    outcome.cold_restores_requested += 1;
                }
            }
        }
        p.fate = Fate::Keep;
        outcome.cold_packs_not_repacked += 1;
        outcome.cold_unused_bytes_kept += blob_bytes(&p.pack).saturating_sub(p.used_bytes);
    }
    if outcome.cold_restores_requested > 0 {
        tracing::info!(
            "asked the store to restore {} archived packs to repack (bulk retrieval, hours); run prune --repack-cold again once they are",
            outcome.cold_restores_requested
        );
    }
    Ok(())
}

/// Keeps the packs Object Lock still retains that prune would delete or
/// repack (deleting one would fail, or, in a versioned bucket, hide it
/// while it stays billed), and notes when they can go.
fn locked_packs(repo: &Repository, packs: &mut [PackUse], outcome: &mut PruneOutcome) -> Result<()> {
    let doomed: Vec<String> =
        packs.iter().filter(|p| p.fate != Fate::Keep).map(|p| pack_key(p.pack.kind, &p.pack.id)).collect();
    let retained = crate::retention::still_retained(repo, &doomed)?;
    if retained.is_empty() {
        return Ok(());
    }
    let mut by_day: std::collections::BTreeMap<String, Reclaimable> = std::collections::BTreeMap::new();
    for p in packs.iter_mut().filter(|p| p.fate != Fate::Keep) {
        let Some(&until) = retained.get(&pack_key(p.pack.kind, &p.pack.id)) else { continue };
        p.fate = Fate::Keep;
        outcome.locked_packs_kept += 1;
        outcome.locked_bytes_kept += p.pack.length;
        let date = crate::retention::date(until).get(..10).unwrap_or_default().to_string();
        let day = by_day.entry(date.clone()).or_insert_with(|| Reclaimable { date, ..Default::default() });
        day.until = day.until.max(until);
        day.packs += 1;
        day.bytes += p.pack.length;
    }
    outcome.reclaimable = by_day.into_values().collect();
    Ok(())
}

/// Decides each pack's fate. Packs that several index objects list count
/// once; a pack whose blobs were all chosen from other copies is unused.
fn plan<'a>(
    set: &crate::index::BlobSet,
    indexes: impl Iterator<Item = &'a Index>,
    marks: &Marks,
    options: &PruneOptions,
) -> Vec<PackUse> {
    let stored: HashSet<Id> = set.packs().iter().map(|p| p.id).collect();
    let mut seen = HashSet::new();
    let mut packs = Vec::new();
    for p in indexes.flat_map(|i| &i.packs) {
        // Packs the set left out (not listed, or listed at another length)
        // are damage for `check` and `repair`, not prune's to delete.
        if !stored.contains(&p.id) || !seen.insert(p.id) {
            continue;
        }
        let mut used_bytes = 0;
        let mut used_blobs = 0;
        for b in &p.blobs {
            let chosen = set.get(p.kind.blob_kind(), &b.id).is_some_and(|l| l.pack == p.id && l.offset == b.offset);
            if chosen && marks.has(p.kind, &b.id) {
                used_bytes += u64::from(b.length);
                used_blobs += 1;
            }
        }
        let fate = if used_blobs == 0 { Fate::Delete } else { Fate::Keep };
        packs.push(PackUse { pack: p.clone(), used_bytes, used_blobs, fate });
    }
    // Repack the packs with the largest unused share first, within the
    // byte budget.
    // Of its blobs' bytes: a pack's header and padding are no garbage, and
    // counting them would repack small packs over and over.
    let unused_share = |p: &PackUse| 1.0 - p.used_bytes as f64 / blob_bytes(&p.pack).max(1) as f64;
    let mut order: Vec<usize> = (0..packs.len())
        .filter(|&i| packs[i].fate == Fate::Keep && unused_share(&packs[i]) * 100.0 > options.max_unused_percent)
        .collect();
    order.sort_by(|&a, &b| unused_share(&packs[b]).total_cmp(&unused_share(&packs[a])));
    let mut budget = options.max_repack_bytes.unwrap_or(u64::MAX);
    for i in order {
        if packs[i].pack.length > budget {
            continue;
        }
        budget -= packs[i].pack.length;
        packs[i].fate = Fate::Repack;
    }
    packs
}

fn count(outcome: &mut PruneOutcome, marks: &Marks, packs: &[PackUse]) {
    outcome.trees_kept = marks.trees.len();
    outcome.chunks_kept = marks.chunks.len();
    let gone = |p: &&PackUse| p.fate != Fate::Keep;
    outcome.packs_deleted = packs.iter().filter(|p| p.fate == Fate::Delete).count();
    outcome.packs_repacked = packs.iter().filter(|p| p.fate == Fate::Repack).count();
    outcome.packs_kept = packs.iter().filter(|p| p.fate == Fate::Keep).count();
    outcome.bytes_deleted = packs.iter().filter(gone).map(|p| p.pack.length).sum();
    let unused = |p: &PackUse| p.pack.blobs.len() - p.used_blobs;
    outcome.trees_deleted = packs.iter().filter(gone).filter(|p| p.pack.kind == PackKind::Tree).map(unused).sum();
    outcome.chunks_deleted = packs.iter().filter(gone).filter(|p| p.pack.kind == PackKind::Data).map(unused).sum();
    let repacked = packs.iter().filter(|p| p.fate == Fate::Repack);
    outcome.bytes_to_download = repacked.clone().map(|p| p.used_bytes).sum();
    // Blob bytes plus a header entry each; Padmé adds at most 12 %.
    outcome.bytes_to_upload = repacked.map(|p| p.used_bytes + 44 * p.used_blobs as u64).sum();
    outcome.unused_bytes_kept =
        packs.iter().filter(|p| p.fate == Fate::Keep).map(|p| blob_bytes(&p.pack).saturating_sub(p.used_bytes)).sum();
}

/// The bytes of a pack's blobs.
fn blob_bytes(pack: &IndexedPack) -> u64 {
    pack.blobs.iter().map(|b| u64::from(b.length)).sum()
}

/// Copies the used blobs of `packs` into new packs, as they are stored
/// (they stay encrypted: a blob's encoding does not depend on its pack).
/// Returns the bytes read and the bytes of new packs written.
fn repack_packs(
    repo: &Repository,
    packer: &Packer,
    packs: &[&PackUse],
    set: &crate::index::BlobSet,
    marks: &Marks,
    lock: &LockGuard,
    copied: &mut HashSet<(PackKind, Id)>,
) -> Result<(u64, u64)> {
    if packs.is_empty() {
        return Ok((0, 0));
    }
    let mut wanted: Vec<BlobLocation> = Vec::new();
    let mut blobs: Vec<(ObjectKind, Id, u32)> = Vec::new();
    for p in packs {
        for b in &p.pack.blobs {
            let kind = p.pack.kind.blob_kind();
            let chosen = set.get(kind, &b.id).is_some_and(|l| l.pack == p.pack.id && l.offset == b.offset);
            if chosen && marks.has(p.pack.kind, &b.id) && copied.insert((p.pack.kind, b.id)) {
                wanted.push(BlobLocation { pack: p.pack.id, kind: p.pack.kind, offset: b.offset, length: b.length });
                blobs.push((kind, b.id, b.raw_length));
            }
        }
    }
    let reads = plan_reads(&wanted, 0, 8 << 20);
    let wanted = &wanted;
    let downloaded: u64 = reads.iter().map(|r| r.length).sum();
    let backend = repo.backend();
    let width = backend.concurrency().clamp(1, 8);
    let stored = repo.runtime().block_on(async {
        let mut fetches = futures_util::stream::iter(reads)
            .map(|r| async move {
                let bytes = r.fetch(&**backend).await;
                (r, bytes)
            })
            .buffer_unordered(width);
        while let Some((r, bytes)) = fetches.next().await {
            lock.alive()?;
            let bytes = bytes?;
            for (i, range) in &r.parts {
                let (kind, id, raw) = blobs[*i];
                let blob = bytes
                    .get(range.clone())
                    .ok_or_else(|| Error::corrupt(r.kind.name(), r.pack.to_hex(), "a ranged read came back short"))?;
                // Copied only once it authenticates: the old pack is deleted
                // after this, so a blob damaged on the way must not be the
                // one that stays. One that fails is read again alone, and a
                // second failure stops the prune before it deletes anything.
                if authentic(repo, kind, &id, blob).is_ok() {
                    packer.add(kind, id, blob, raw).await?;
                    continue;
                }
                let limit = repo.stored_limit(kind);
                let alone = crate::repo::fetch_blob_at(&**backend, kind, &id, &wanted[*i], limit).await?;
                authentic(repo, kind, &id, &alone)?;
                packer.add(kind, id, &alone, raw).await?;
            }
        }
        packer.flush().await
    })?;
    Ok((downloaded, stored.pack_bytes))
}

/// What [`replace_index`] wrote and removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct IndexReplaced {
    pub(crate) written: Vec<Id>,
    pub(crate) removed: usize,
}

/// Replaces the index objects `old` by new ones listing `packs`, in the
/// only safe order: the new objects are written and made durable, the
/// generation is bumped, and only then are the old objects deleted (a crash
/// in between leaves packs named twice, which count once). An old object
/// whose name a new one has (the same content, so the same id: a rerun
/// with nothing changed) is not deleted, or the index would be lost.
pub(crate) fn replace_index(
    repo: &Repository,
    packer: &Packer,
    packs: Vec<IndexedPack>,
    old: &[Id],
    lock: &LockGuard,
) -> Result<IndexReplaced> {
    let written = repo.runtime().block_on(async {
        let mut written = Vec::new();
        for part in split_index(packs) {
            written.push(packer.write_index(part).await?);
        }
        repo.backend().sync().await?;
        Ok::<_, Error>(written)
    })?;
    repo.runtime().block_on(repo.bump_generation())?;
    let doomed: Vec<&Id> = old.iter().filter(|id| !written.contains(id)).collect();
    let keys: Vec<String> = doomed.iter().map(|id| object_key(ObjectKind::Index, id)).collect();
    delete_unretained(repo, &keys, lock)?;
    for id in &doomed {
        repo.forget_cached(ObjectKind::Index, id);
    }
    Ok(IndexReplaced { written, removed: doomed.len() })
}

/// Checks that a blob's stored bytes authenticate as `kind` `id`.
fn authentic(repo: &Repository, kind: ObjectKind, id: &Id, stored: &[u8]) -> Result<()> {
    let max_len = match kind {
        ObjectKind::Tree => crate::repo::MAX_TREE_LEN,
        _ => repo.max_chunk_len(),
    };
    crate::blob::decode(repo.keys(), repo.repo_id(), kind, id, stored, max_len).map(drop)
}

/// Splits the kept packs into index objects of at most some 100,000 blobs
/// (4.4 MB of plaintext), well under what a reader accepts.
pub(crate) fn split_index(packs: Vec<IndexedPack>) -> Vec<Vec<IndexedPack>> {
    const BLOBS_PER_OBJECT: usize = 100_000;
    let mut parts: Vec<Vec<IndexedPack>> = Vec::new();
    let mut blobs = 0;
    for p in packs {
        if parts.is_empty() || blobs + p.blobs.len() > BLOBS_PER_OBJECT {
            parts.push(Vec::new());
            blobs = 0;
        }
        blobs += p.blobs.len();
        if let Some(last) = parts.last_mut() {
            last.push(p);
        }
    }
    parts
}

/// Marks every tree and chunk reachable from `snapshots`, a level of the
/// trees at a time with many reads in flight.
pub(crate) fn mark_snapshots(
    repo: &Repository,
    snapshots: &HashSet<Id>,
    marks: &mut Marks,
    lock: Option<&LockGuard>,
) -> Result<()> {
    let mut level = Vec::new();
    for id in snapshots {
        let snap = match repo.load_snapshot(id) {
            Ok(s) => s,
            // Forgotten since the listing (forget runs beside prune's
            // marking): what only it referenced is garbage now. (With a
            // cached copy it is marked instead, which only keeps its data
            // until the next prune.)
            Err(Error::Missing { .. }) => {
                tracing::info!("snapshot {id} was forgotten while prune ran");
                continue;
            }
            Err(e) => return Err(e),
        };
        if marks.trees.insert(snap.tree) {
            level.push(snap.tree);
        }
    }
    let width = repo.backend().concurrency().max(1);
    repo.runtime().block_on(async {
        while !level.is_empty() {
            if let Some(l) = lock {
                l.alive()?;
            }
            let mut next = Vec::new();
            let mut loads = futures_util::stream::iter(std::mem::take(&mut level))
                .map(|id| async move { repo.load_tree_async(&id).await })
                .buffer_unordered(width);
            while let Some(tree) = loads.next().await {
                for node in tree?.nodes {
                    marks.chunks.extend(node.content.iter().map(|c| c.0));
                    if let Some(sub) = node.subtree
                        && marks.trees.insert(sub)
                    {
                        next.push(sub);
                    }
                }
            }
            level = next;
        }
        Ok::<(), Error>(())
    })
}

/// [`delete`], leaving what Object Lock still retains (superseded index
/// objects: the new ones name the same packs, and a later prune removes
/// them). Prune's own packs are sorted out earlier, in `locked_packs`.
pub(crate) fn delete_unretained(repo: &Repository, keys: &[String], lock: &LockGuard) -> Result<()> {
    let retained = crate::retention::still_retained(repo, keys)?;
    if retained.is_empty() {
        return delete(repo, keys, lock);
    }
    tracing::info!("{} objects are retained by Object Lock and stay until a later prune", retained.len());
    let keys: Vec<String> = keys.iter().filter(|k| !retained.contains_key(*k)).cloned().collect();
    delete(repo, &keys, lock)
}

/// Deletes objects, checking before each that the exclusive lock is still
/// ours; durable when this returns.
pub(crate) fn delete(repo: &Repository, keys: &[String], lock: &LockGuard) -> Result<()> {
    let backend = repo.backend();
    let width = backend.concurrency().max(1);
    repo.runtime().block_on(async {
        let mut deletes = futures_util::stream::iter(keys)
            .map(|key| async move {
                lock.alive()?;
                backend.delete(key).await.map_err(Error::from)
            })
            .buffer_unordered(width);
        while let Some(r) = deletes.next().await {
            r?;
        }
        backend.sync().await.map_err(Error::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::BlobSet;
    use crate::pack::PackEntry;

    fn id(n: u8) -> Id {
        Id([n; 32])
    }

    /// A data pack of four 1000-byte blobs numbered from `first`.
    fn pack(n: u8, first: u8) -> IndexedPack {
        let blobs = (0..4u8)
            .map(|i| PackEntry { id: id(first + i), offset: u32::from(i) * 1000, length: 1000, raw_length: 900 })
            .collect();
        IndexedPack { id: id(200 + n), kind: PackKind::Data, length: 4100, blobs }
    }

    #[test]
    fn packs_are_kept_deleted_or_repacked_by_their_unused_share() {
        let index = Index { packs: vec![pack(0, 0), pack(1, 10), pack(2, 20), pack(3, 30)] };
        let set = BlobSet::build(&[&index], |_, _| true);
        let mut marks = Marks::default();
        // Pack 0 fully used, pack 1 one blob used, pack 2 nothing, pack 3
        // three of four.
        marks.chunks.extend([0, 1, 2, 3, 10, 30, 31, 32].map(id));
        let fates = |options: &PruneOptions| -> Vec<Fate> {
            let packs = plan(&set, std::iter::once(&index), &marks, options);
            packs.iter().map(|p| p.fate).collect()
        };
        let default = PruneOptions::default();
        assert_eq!(fates(&default), [Fate::Keep, Fate::Repack, Fate::Delete, Fate::Repack]);
        let lax = PruneOptions { max_unused_percent: 30.0, ..PruneOptions::default() };
        assert_eq!(fates(&lax), [Fate::Keep, Fate::Repack, Fate::Delete, Fate::Keep]);
        // The budget goes to the emptiest pack first.
        let tight = PruneOptions { max_repack_bytes: Some(5000), ..PruneOptions::default() };
        assert_eq!(fates(&tight), [Fate::Keep, Fate::Repack, Fate::Delete, Fate::Keep]);
        let never = PruneOptions { max_unused_percent: 100.0, ..PruneOptions::default() };
        assert_eq!(fates(&never), [Fate::Keep, Fate::Keep, Fate::Delete, Fate::Keep]);
    }

    #[test]
    fn a_blob_stored_twice_is_used_in_one_pack_only() {
        // Pack 1 repeats pack 0's blobs (a backup that uploaded them again).
        let index = Index { packs: vec![pack(0, 0), pack(1, 0)] };
        let set = BlobSet::build(&[&index], |_, _| true);
        let mut marks = Marks::default();
        marks.chunks.extend([0, 1, 2, 3].map(id));
        let packs = plan(&set, std::iter::once(&index), &marks, &PruneOptions::default());
        let fates: Vec<Fate> = packs.iter().map(|p| p.fate).collect();
        assert_eq!(fates.iter().filter(|f| **f == Fate::Delete).count(), 1, "{fates:?}");
        assert_eq!(fates.iter().filter(|f| **f == Fate::Keep).count(), 1, "{fates:?}");
    }

    #[test]
    fn kept_packs_are_indexed_in_bounded_objects() {
        let many: Vec<IndexedPack> = (0..60)
            .map(|n| {
                let mut p = pack(0, n);
                p.id = Id::random();
                p.blobs = (0..4000)
                    .map(|i| PackEntry { id: Id::random(), offset: i * 10, length: 10, raw_length: 5 })
                    .collect();
                p
            })
            .collect();
        let parts = split_index(many);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.iter().map(|p| p.blobs.len()).sum::<usize>() <= 100_000));
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 60);
    }
}
