//! Prune: delete every tree and chunk that no snapshot references.
//!
//! The protocol (invariant 6), so that a backup running at the same time is
//! never blocked for long and never loses a chunk it decided to reuse:
//!
//! 1. Under a **shared** lock: list the snapshots (set S1), mark every tree
//!    and chunk they reach, then list `trees/` and `chunks/`. The candidates
//!    are what is listed and not marked. Backups run alongside; anything
//!    they upload after the listing is not a candidate.
//! 2. Release the shared lock and take the **exclusive** one. It cannot be
//!    had while any backup holds its shared lock, so every backup that could
//!    have reused a candidate has finished (or given up) by now.
//! 3. List the snapshots again (S2). A snapshot in S2 but not in S1 was
//!    written by a backup that ran between the listings and may reuse
//!    candidates: mark what it reaches and take that out of the candidates.
//! 4. Bump the generation (so that copies of the chunk set taken before are
//!    distrusted), delete the candidates, release.
//!
//! Marking stops at the first snapshot or tree that cannot be read: deleting
//! on a partial view would lose data. Trees come through
//! [`Repository::load_tree_async`], so the local cache spares re-downloading
//! them.

use std::collections::HashSet;

use futures_util::StreamExt;

use crate::crypto::ObjectKind;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::lock::{LockGuard, PRUNE};
use crate::repo::{Repository, parse_object_key};

#[derive(Clone, Debug, Default)]
pub struct PruneOptions {
    /// Mark and count, delete nothing (and take no exclusive lock).
    pub dry_run: bool,
    /// Snapshots to leave out of the marking as if they were gone: what
    /// `forget --prune --dry-run` would free, with nothing removed.
    pub assume_forgotten: Vec<Id>,
}

/// What prune found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PruneOutcome {
    pub dry_run: bool,
    pub snapshots: usize,
    /// Snapshots written while prune was marking, marked in its exclusive phase.
    pub snapshots_added_meanwhile: usize,
    pub trees_kept: usize,
    pub chunks_kept: usize,
    /// Deleted, or with `dry_run` would be.
    pub trees_deleted: usize,
    pub chunks_deleted: usize,
    /// Stored bytes of the deleted objects.
    pub bytes_deleted: u64,
    /// Objects the snapshots reference that the listing did not show: damage
    /// that prune leaves as it is (`coffer check` reports where).
    pub missing: usize,
}

/// What is reachable from a set of snapshots.
#[derive(Default)]
pub(crate) struct Marks {
    pub(crate) trees: HashSet<Id>,
    pub(crate) chunks: HashSet<Id>,
}

/// One listed object that may go.
struct Candidate {
    key: String,
    id: Id,
    size: u64,
    tree: bool,
}

pub fn prune(repo: &Repository, options: &PruneOptions) -> Result<PruneOutcome> {
    let shared = repo.lock_shared(PRUNE)?;
    let mut outcome = PruneOutcome { dry_run: options.dry_run, ..PruneOutcome::default() };
    let mut s1: HashSet<Id> = repo.list_ids(ObjectKind::Snapshot)?.into_iter().collect();
    for id in &options.assume_forgotten {
        s1.remove(id);
    }
    let mut marks = Marks::default();
    mark_snapshots(repo, &s1, &mut marks, Some(&shared))?;
    let mut candidates = Vec::new();
    let mut listed = HashSet::new();
    for (prefix, tree) in [("trees/", true), ("chunks/", false)] {
        let kind = if tree { ObjectKind::Tree } else { ObjectKind::Chunk };
        for entry in repo.runtime().block_on(repo.backend().list(prefix))? {
            let Some(id) = parse_object_key(kind, &entry.key) else { continue };
            // A zero-length object is a truncated write: absent for backups,
            // garbage for prune, unless something references it.
            if entry.size > 0 {
                listed.insert((tree, id));
            }
            let marked = if tree { marks.trees.contains(&id) } else { marks.chunks.contains(&id) };
            if !marked {
                candidates.push(Candidate { key: entry.key, id, size: entry.size, tree });
            }
        }
    }
    outcome.missing = marks.trees.iter().filter(|id| !listed.contains(&(true, **id))).count()
        + marks.chunks.iter().filter(|id| !listed.contains(&(false, **id))).count();
    if outcome.missing > 0 {
        tracing::warn!(
            "{} objects referenced by snapshots are missing from the repository; run `coffer check`",
            outcome.missing
        );
    }
    shared.check()?;
    shared.release()?;
    if options.dry_run {
        outcome.snapshots = s1.len();
        count(&mut outcome, &marks, &candidates);
        return Ok(outcome);
    }

    let exclusive = repo.lock_exclusive(PRUNE)?;
    let s2: HashSet<Id> = repo.list_ids(ObjectKind::Snapshot)?.into_iter().collect();
    let added: HashSet<Id> = s2.difference(&s1).copied().collect();
    if !added.is_empty() {
        tracing::info!("{} snapshots were written while prune was marking; marking them too", added.len());
        mark_snapshots(repo, &added, &mut marks, Some(&exclusive))?;
        candidates.retain(|c| if c.tree { !marks.trees.contains(&c.id) } else { !marks.chunks.contains(&c.id) });
    }
    outcome.snapshots = s2.len();
    outcome.snapshots_added_meanwhile = added.len();
    count(&mut outcome, &marks, &candidates);
    if candidates.is_empty() {
        exclusive.release()?;
        return Ok(outcome);
    }

    exclusive.check()?;
    repo.runtime().block_on(repo.bump_generation())?;
    delete(repo, &candidates, &exclusive)?;
    exclusive.release()?;
    Ok(outcome)
}

fn count(outcome: &mut PruneOutcome, marks: &Marks, candidates: &[Candidate]) {
    outcome.trees_kept = marks.trees.len();
    outcome.chunks_kept = marks.chunks.len();
    outcome.trees_deleted = candidates.iter().filter(|c| c.tree).count();
    outcome.chunks_deleted = candidates.iter().filter(|c| !c.tree).count();
    outcome.bytes_deleted = candidates.iter().map(|c| c.size).sum();
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

/// Deletes the candidates, checking before each that the exclusive lock is
/// still ours.
fn delete(repo: &Repository, candidates: &[Candidate], lock: &LockGuard) -> Result<()> {
    let backend = repo.backend();
    let width = backend.concurrency().max(1);
    repo.runtime().block_on(async {
        let mut deletes = futures_util::stream::iter(candidates)
            .map(|c| async move {
                lock.alive()?;
                backend.delete(&c.key).await.map_err(Error::from)
            })
            .buffer_unordered(width);
        while let Some(r) = deletes.next().await {
            r?;
        }
        backend.sync().await.map_err(Error::from)
    })?;
    for c in candidates.iter().filter(|c| c.tree) {
        repo.forget_cached(ObjectKind::Tree, &c.id);
    }
    Ok(())
}
