//! Repair: put a damaged repository back into a consistent state, saying
//! what was lost.
//!
//! - [`repair_index`] rebuilds the index from the packs' headers: new index
//!   objects first, then the old ones are deleted.
//! - [`repair_packs`] copies every blob of damaged packs that still
//!   authenticates into new packs, writes an index without the lost blobs,
//!   then deletes the damaged packs: the next backup stores again whatever
//!   its sources still have (invariant 4).
//! - [`repair_snapshots`] writes new snapshots in which files that lost data
//!   are removed and folders whose listing is lost are empty, naming every
//!   path; the originals are kept unless asked.
//!
//! Each runs under the exclusive lock (a shared one for a dry run, which
//! writes nothing). [`crate::rewrite`] shares the tree rewriting of
//! [`repair_snapshots`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::check::problem;
use crate::crypto::ObjectKind;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{BlobSet, IndexedPack, LoadOptions, Loaded};
use crate::lock::{LockGuard, REPAIR};
use crate::pack::{PackEntry, PackKind, pack_key};
use crate::packer::Packer;
use crate::prune::{delete_unretained, replace_index};
use crate::repo::Repository;
use crate::snapshot::Snapshot;
use crate::tree::{Node, NodeKind, Tree};

/// The tag `repair snapshots` gives the snapshots it writes.
pub const REPAIRED_TAG: &str = "repaired";

/// A pack that could not be used, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PackProblem {
    /// `data pack` or `tree pack`.
    pub kind: &'static str,
    pub id: Id,
    pub problem: String,
}

impl PackProblem {
    fn new(kind: PackKind, id: Id, problem: String) -> PackProblem {
        PackProblem { kind: kind.name(), id, problem }
    }
}

/// Takes the lock a repair needs: exclusive, or shared for a dry run.
fn lock(repo: &Repository, dry_run: bool) -> Result<LockGuard> {
    if dry_run { repo.lock_shared(REPAIR) } else { repo.lock_exclusive(REPAIR) }
}

/// The index as stored, every object read from the repository (a good
/// cached copy says nothing about the stored object).
fn load_stored_index(repo: &Repository) -> Result<Loaded> {
    let options = LoadOptions { keep_objects: true, from_repository: true };
    repo.runtime().block_on(crate::index::load_with(repo, options))
}

/// The names of every index object listed, readable or not.
fn old_index_ids(loaded: &Loaded) -> Vec<Id> {
    let mut ids: Vec<Id> = loaded.indexes.iter().copied().chain(loaded.unreadable.iter().map(|(id, _)| *id)).collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Each pack the index objects and the unindexed packs' headers list,
/// once, with its entries.
fn indexed_packs(loaded: &Loaded) -> BTreeMap<Id, IndexedPack> {
    let mut packs = BTreeMap::new();
    for p in loaded.objects.iter().flat_map(|(_, i)| &i.packs).chain(&loaded.recovered.packs) {
        packs.entry(p.id).or_insert_with(|| p.clone());
    }
    packs
}

// ---------------------------------------------------------------------------
// repair index

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexRepairOptions {
    /// Read and count, write and delete nothing.
    pub dry_run: bool,
}

/// What `repair index` found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IndexRepairOutcome {
    pub dry_run: bool,
    /// Packs listed in `data/` and `tree/`.
    pub packs_listed: usize,
    /// Packs whose header was read and authenticated: the new index lists them.
    pub packs_read: usize,
    /// Blobs the new index lists.
    pub blobs_indexed: usize,
    /// Blobs found in a pack's header that no index object listed there.
    pub blobs_added: usize,
    /// Index entries that pointed at a pack that is not stored (or not at
    /// the length the index gave, with a header that cannot be read).
    pub entries_dropped: usize,
    /// Packs whose header cannot be read or authenticated, left for
    /// `repair packs`. Those an index object listed at their stored length
    /// keep that object's entries (they authenticate blob by blob on
    /// reading), so that `repair packs` can salvage their blobs.
    pub unreadable_packs: Vec<PackProblem>,
    /// Unreadable packs whose old index entries were kept.
    pub packs_kept_from_old_index: usize,
    /// Index objects that could not be read.
    pub unreadable_indexes: Vec<Id>,
    pub index_objects_written: usize,
    pub index_objects_removed: usize,
}

/// Rebuilds the index from the headers of every stored pack, then replaces
/// the old index objects (new ones are durable before any old one is
/// deleted).
pub fn repair_index(repo: &Repository, options: &IndexRepairOptions) -> Result<IndexRepairOutcome> {
    let lock = lock(repo, options.dry_run)?;
    let loaded = load_stored_index(repo)?;
    let mut outcome = IndexRepairOutcome {
        dry_run: options.dry_run,
        packs_listed: loaded.listed.len(),
        unreadable_indexes: loaded.unreadable.iter().map(|(id, _)| *id).collect(),
        ..Default::default()
    };
    let old = indexed_packs(&loaded);
    // The unindexed packs' headers were read by the load; read the others'.
    let unindexed: HashSet<Id> = loaded.unindexed.iter().map(|(_, id, _)| *id).collect();
    let mut to_read: Vec<(PackKind, Id, u64)> = loaded
        .listed
        .iter()
        .filter(|(id, _)| !unindexed.contains(*id))
        .map(|(id, &(kind, size))| (kind, *id, size))
        .collect();
    to_read.sort();
    let width = repo.backend().concurrency().max(1);
    let (read, failed) = repo.runtime().block_on(crate::index::index_packs(
        &**repo.backend(),
        repo.keys(),
        repo.repo_id(),
        &to_read,
        width,
    ));
    lock.alive()?;
    let mut packs: Vec<IndexedPack> = read.packs;
    packs.extend(loaded.recovered.packs.iter().cloned());
    outcome.packs_read = packs.len();
    let failed = failed.into_iter().chain(loaded.unreadable_packs.iter().map(|(k, id, e)| (*k, *id, clone_error(e))));
    for (kind, id, e) in failed {
        let size = loaded.listed.get(&id).map(|l| l.1);
        if let Some(p) = old.get(&id).filter(|p| p.kind == kind && Some(p.length) == size) {
            packs.push(p.clone());
            outcome.packs_kept_from_old_index += 1;
        }
        outcome.unreadable_packs.push(PackProblem::new(kind, id, problem(&e)));
    }
    outcome.unreadable_packs.sort_by_key(|p| (p.kind, p.id));
    packs.sort_by_key(|p| (p.kind, p.id));
    outcome.blobs_indexed = packs.iter().map(|p| p.blobs.len()).sum();
    let pairs = |p: &IndexedPack| p.blobs.iter().map(|b| (p.id, b.id, b.offset)).collect::<Vec<_>>();
    let old_pairs: HashSet<(Id, Id, u32)> = loaded.objects.iter().flat_map(|(_, i)| &i.packs).flat_map(pairs).collect();
    let new_pairs: HashSet<(Id, Id, u32)> = packs.iter().flat_map(pairs).collect();
    outcome.blobs_added = new_pairs.difference(&old_pairs).count();
    outcome.entries_dropped = old_pairs.difference(&new_pairs).count();
    let old_ids = old_index_ids(&loaded);
    if options.dry_run {
        outcome.index_objects_written = crate::prune::split_index(packs).len();
        outcome.index_objects_removed = old_ids.len();
        lock.release()?;
        return Ok(outcome);
    }
    lock.check()?;
    let replaced = replace_index(repo, &repo.packer(), packs, &old_ids, &lock)?;
    outcome.index_objects_written = replaced.written.len();
    outcome.index_objects_removed = replaced.removed;
    repo.forget_blob_set();
    lock.release()?;
    Ok(outcome)
}

/// Errors are not `Clone`; a pack's problem is reported as text anyway.
fn clone_error(e: &Error) -> Error {
    match e {
        Error::Corrupt { kind, name, reason } => Error::Corrupt { kind, name: name.clone(), reason: reason.clone() },
        Error::Missing { kind, id } => Error::Missing { kind, id: *id },
        other => Error::InvalidInput(other.to_string()),
    }
}

// ---------------------------------------------------------------------------
// repair packs

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackRepairOptions {
    /// Read and count, write and delete nothing.
    pub dry_run: bool,
    /// The packs to repair (ids, or unique prefixes of them); when empty,
    /// every pack is read to find the damaged ones.
    pub packs: Vec<String>,
}

/// A blob of a damaged pack that could not be salvaged.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LostBlob {
    /// `chunk` or `tree`.
    pub kind: &'static str,
    pub id: Id,
    pub pack: Id,
    pub problem: String,
}

/// What `repair packs` found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PackRepairOutcome {
    pub dry_run: bool,
    /// Packs downloaded whole to look for damage (none when packs were named).
    pub packs_checked: usize,
    /// The packs repaired (or, in a dry run, to repair), with what is wrong.
    pub damaged: Vec<PackProblem>,
    /// Blobs of them that authenticate, copied into new packs.
    pub blobs_salvaged: usize,
    /// Blobs of them that another, intact pack also holds.
    pub blobs_stored_elsewhere: usize,
    /// Blobs lost with them.
    pub blobs_lost: Vec<LostBlob>,
    pub packs_written: usize,
    pub packs_deleted: usize,
    pub index_objects_written: usize,
    pub index_objects_removed: usize,
}

/// Salvages what still authenticates from damaged packs into new packs,
/// indexes the repository without what was lost, then deletes the damaged
/// packs.
pub fn repair_packs(repo: &Repository, options: &PackRepairOptions) -> Result<PackRepairOutcome> {
    let lock = lock(repo, options.dry_run)?;
    let loaded = load_stored_index(repo)?;
    let mut outcome = PackRepairOutcome { dry_run: options.dry_run, ..Default::default() };
    let indexed = indexed_packs(&loaded);
    let listed = loaded.listed.clone();
    let old_ids = old_index_ids(&loaded);
    let set = repo.set_blob_set(loaded.blobs);
    let mut damaged: BTreeMap<Id, (PackKind, String)> = BTreeMap::new();
    if options.packs.is_empty() {
        for m in &loaded.mismatched {
            damaged.insert(m.id, (m.kind, m.problem()));
        }
        for (kind, id, e) in &loaded.unreadable_packs {
            damaged.insert(*id, (*kind, crate::check::unreadable_header(e)));
        }
        outcome.packs_checked = set.packs().len();
        for (pack, problem) in crate::check::damaged_packs(repo, &set) {
            damaged.entry(pack.id).or_insert((pack.kind, problem));
        }
    } else {
        for spec in &options.packs {
            let (id, kind) = find_pack(&listed, spec)?;
            damaged.insert(id, (kind, "named to repair".into()));
        }
    }
    lock.alive()?;
    outcome.damaged = damaged.iter().map(|(id, (kind, p))| PackProblem::new(*kind, *id, p.clone())).collect();
    if damaged.is_empty() {
        lock.release()?;
        return Ok(outcome);
    }

    let packer = (!options.dry_run).then(|| repo.packer());
    let mut salvaged: HashSet<(PackKind, Id)> = HashSet::new();
    for (id, (kind, _)) in &damaged {
        lock.alive()?;
        let Some(&(_, size)) = listed.get(id) else { continue };
        let entries = salvage_pack(repo, &set, &damaged, *kind, id, size, indexed.get(id), &mut outcome)?;
        for (entry, stored) in entries {
            if salvaged.insert((*kind, entry.id)) {
                outcome.blobs_salvaged += 1;
                if let Some(packer) = &packer {
                    repo.runtime().block_on(packer.add(kind.blob_kind(), entry.id, &stored, entry.raw_length))?;
                }
            }
        }
    }
    // A blob lost from one damaged pack and salvaged from another is not lost.
    outcome.blobs_lost.retain(|b| {
        let kind = if b.kind == ObjectKind::Tree.name() { PackKind::Tree } else { PackKind::Data };
        !salvaged.contains(&(kind, b.id))
    });
    outcome.blobs_lost.sort_by_key(|b| (b.kind, b.id));
    outcome.blobs_lost.dedup_by_key(|b| (b.kind, b.id));
    let Some(packer) = packer else {
        outcome.packs_deleted = damaged.keys().filter(|id| listed.contains_key(id)).count();
        lock.release()?;
        return Ok(outcome);
    };
    let stored = repo.runtime().block_on(packer.flush())?;
    outcome.packs_written = stored.packs.len();
    lock.check()?;
    // Every other pack keeps its entries; the new packs are indexed already.
    let kept: Vec<IndexedPack> =
        indexed.into_values().filter(|p| listed.contains_key(&p.id) && !damaged.contains_key(&p.id)).collect();
    let old: Vec<Id> = old_ids.into_iter().filter(|id| !stored.indexes.contains(id)).collect();
    let replaced = replace_index(repo, &packer, kept, &old, &lock)?;
    outcome.index_objects_written = replaced.written.len() + stored.indexes.len();
    outcome.index_objects_removed = replaced.removed;
    let doomed: Vec<String> =
        damaged.iter().filter(|(id, _)| listed.contains_key(*id)).map(|(id, (kind, _))| pack_key(*kind, id)).collect();
    delete_unretained(repo, &doomed, &lock)?;
    outcome.packs_deleted = doomed.len();
    // A lost tree's cached copy would hide the loss from this machine.
    for b in outcome.blobs_lost.iter().filter(|b| b.kind == ObjectKind::Tree.name()) {
        repo.forget_cached(ObjectKind::Tree, &b.id);
    }
    repo.forget_blob_set();
    lock.release()?;
    Ok(outcome)
}

/// Finds a listed pack by its id or a unique prefix of it.
fn find_pack(listed: &HashMap<Id, (PackKind, u64)>, spec: &str) -> Result<(Id, PackKind)> {
    let prefix = spec.to_ascii_lowercase();
    if prefix.is_empty() || prefix.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidInput(format!("{spec:?} is not a pack id")));
    }
    let matches: Vec<(Id, PackKind)> =
        listed.iter().filter(|(id, _)| id.to_hex().starts_with(&prefix)).map(|(id, &(kind, _))| (*id, kind)).collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::InvalidInput(format!("no stored pack matches {spec:?}"))),
        _ => Err(Error::InvalidInput(format!("{spec:?} matches {} packs; give more digits", matches.len()))),
    }
}

/// Reads one damaged pack whole and returns the blobs in it that
/// authenticate and that no intact pack also holds, as stored; the others
/// are counted in `outcome`. Where the blobs lie comes from the index and,
/// if it still authenticates, the pack's own header.
#[allow(clippy::too_many_arguments)]
fn salvage_pack(
    repo: &Repository,
    set: &BlobSet,
    damaged: &BTreeMap<Id, (PackKind, String)>,
    kind: PackKind,
    id: &Id,
    size: u64,
    indexed: Option<&IndexedPack>,
    outcome: &mut PackRepairOutcome,
) -> Result<Vec<(PackEntry, Vec<u8>)>> {
    let bytes = match repo.runtime().block_on(repo.backend().get(&pack_key(kind, id), size)) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut entries: Vec<PackEntry> = indexed.map(|p| p.blobs.clone()).unwrap_or_default();
    let header = crate::pack::decode_header(repo.keys(), repo.repo_id(), kind, id, bytes.len() as u64, &bytes);
    entries.extend(header.unwrap_or_default());
    entries.sort_by_key(|e| (e.offset, e.id));
    entries.dedup();
    let blob_kind = kind.blob_kind();
    let limit = match blob_kind {
        ObjectKind::Tree => crate::repo::MAX_TREE_LEN,
        _ => repo.max_chunk_len(),
    };
    let mut out = Vec::new();
    let mut lost = |e: &PackEntry, why: String| {
        outcome.blobs_lost.push(LostBlob { kind: blob_kind.name(), id: e.id, pack: *id, problem: why })
    };
    for e in entries {
        if set.get(blob_kind, &e.id).is_some_and(|l| !damaged.contains_key(&l.pack)) {
            outcome.blobs_stored_elsewhere += 1;
            continue;
        }
        let Some(stored) = crate::pack::blob_bytes(&bytes, &e) else {
            lost(&e, "it lies past the pack's end".into());
            continue;
        };
        match authenticate(repo, blob_kind, &e, stored, limit) {
            Ok(()) => out.push((e, stored.to_vec())),
            Err(err) => lost(&e, problem(&err)),
        }
    }
    Ok(out)
}

/// Whether a stored blob decrypts under its id, hashes back to it and has
/// the plaintext length its entry gives (a tree must also parse).
fn authenticate(repo: &Repository, kind: ObjectKind, e: &PackEntry, stored: &[u8], limit: usize) -> Result<()> {
    let plain = crate::blob::decode(repo.keys(), repo.repo_id(), kind, &e.id, stored, limit)?;
    if plain.len() != e.raw_length as usize {
        return Err(Error::corrupt(kind.name(), e.id.to_hex(), "its length differs from its entry's"));
    }
    if kind == ObjectKind::Tree {
        Tree::from_bytes(&e.id.to_hex(), &plain)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Rewriting trees (repair snapshots, rewrite)

/// One path a rewrite changed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Change {
    /// The path in the snapshot (`/`-separated; a folder's ends in `/`).
    pub path: String,
    /// What was wrong with it, and what became of it.
    pub problem: String,
}

/// What a rewritten tree came to.
#[derive(Clone, Debug)]
struct Rewritten {
    id: Id,
    changes: Vec<Change>,
}

/// Rewrites trees bottom-up, leaving out the nodes a filter names, storing
/// each new tree once; unchanged subtrees keep their ids.
pub(crate) struct TreeRewriter<'a> {
    repo: &'a Repository,
    set: Arc<BlobSet>,
    /// Where new trees go; `None` in a dry run (they are only counted).
    packer: Option<&'a Packer>,
    /// A folder whose listing cannot be read becomes empty (repair), instead
    /// of failing the rewrite.
    empty_unreadable: bool,
    stored: HashSet<Id>,
    memo: HashMap<(Id, PathBuf), Rewritten>,
    pub(crate) trees_written: usize,
}

/// Decides, for each node (with its path in the snapshot), whether it is
/// left out, and why.
pub(crate) type Filter<'f> = dyn FnMut(&Path, &Node) -> Option<String> + 'f;

impl<'a> TreeRewriter<'a> {
    pub(crate) fn new(
        repo: &'a Repository,
        set: Arc<BlobSet>,
        packer: Option<&'a Packer>,
        empty_unreadable: bool,
    ) -> TreeRewriter<'a> {
        TreeRewriter {
            repo,
            set,
            packer,
            empty_unreadable,
            stored: HashSet::new(),
            memo: HashMap::new(),
            trees_written: 0,
        }
    }

    /// Loads a tree that the index has (a cached copy of a tree gone from
    /// the repository does not count).
    fn load(&self, id: &Id) -> Result<Tree> {
        if !self.set.contains(ObjectKind::Tree, id) {
            return Err(Error::Missing { kind: ObjectKind::Tree.name(), id: *id });
        }
        self.repo.load_tree(id)
    }

    /// Rewrites the snapshot root `root`; returns the new root's id and the
    /// paths changed. The root itself must be readable.
    pub(crate) fn rewrite_root(&mut self, root: &Id, filter: &mut Filter<'_>) -> Result<(Id, Vec<Change>)> {
        let r = self.tree(root, Path::new("/"), filter)?;
        let mut changes = r.changes;
        changes.sort();
        Ok((r.id, changes))
    }

    fn tree(&mut self, id: &Id, path: &Path, filter: &mut Filter<'_>) -> Result<Rewritten> {
        let key = (*id, path.to_path_buf());
        if let Some(r) = self.memo.get(&key) {
            return Ok(r.clone());
        }
        let tree = self.load(id)?;
        let mut nodes = Vec::with_capacity(tree.nodes.len());
        let mut changes = Vec::new();
        let mut changed = false;
        for mut node in tree.nodes {
            let child = path.join(OsStr::from_bytes(&node.name));
            let shown = |dir: bool| {
                let mut s = child.to_string_lossy().into_owned();
                if dir {
                    s.push('/');
                }
                s
            };
            if let Some(problem) = filter(&child, &node) {
                changes.push(Change { path: shown(node.kind == NodeKind::Dir), problem });
                changed = true;
                continue;
            }
            if let (NodeKind::Dir, Some(sub)) = (node.kind, node.subtree) {
                match self.tree(&sub, &child, filter) {
                    Ok(r) => {
                        if r.id != sub {
                            node.subtree = Some(r.id);
                            changed = true;
                        }
                        changes.extend(r.changes);
                    }
                    Err(e) if self.empty_unreadable && matches!(e, Error::Missing { .. } | Error::Corrupt { .. }) => {
                        node.subtree = Some(self.store(Tree::new(Vec::new()))?);
                        let problem = format!("its listing is {}; it is now an empty folder", problem(&e));
                        changes.push(Change { path: shown(true), problem });
                        changed = true;
                    }
                    Err(e) => return Err(e),
                }
            }
            nodes.push(node);
        }
        let new_id = if changed { self.store(Tree { version: tree.version, nodes })? } else { *id };
        let r = Rewritten { id: new_id, changes };
        self.memo.insert(key, r.clone());
        Ok(r)
    }

    /// Stores a tree unless the repository or this rewrite has it already.
    fn store(&mut self, tree: Tree) -> Result<Id> {
        let plain = tree.to_bytes();
        let keys = self.repo.keys();
        let id = keys.id(&plain);
        if self.set.contains(ObjectKind::Tree, &id) || !self.stored.insert(id) {
            return Ok(id);
        }
        self.trees_written += 1;
        if let Some(packer) = self.packer {
            let stored =
                crate::blob::encode(keys, self.repo.repo_id(), ObjectKind::Tree, &id, &plain, self.repo.compression());
            self.repo.runtime().block_on(packer.add(ObjectKind::Tree, id, &stored, plain.len() as u32))?;
        }
        Ok(id)
    }
}

/// A snapshot a rewrite replaced (or, in a dry run, would replace).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Replaced {
    pub original: Id,
    pub time: String,
    /// The new snapshot's id; `None` in a dry run.
    pub new: Option<Id>,
    pub changes: Vec<Change>,
    /// Whether the original was removed (`--forget`).
    pub forgotten: bool,
}

/// Resolves snapshot specs (ids, prefixes, `latest`), or every snapshot
/// when none is given; each once, oldest first.
pub(crate) fn pick_snapshots(repo: &Repository, specs: &[String]) -> Result<Vec<(Id, Snapshot)>> {
    if specs.is_empty() {
        return repo.snapshots();
    }
    let mut out: Vec<(Id, Snapshot)> = Vec::new();
    for spec in specs {
        let found = repo.find_snapshot(spec)?;
        if !out.iter().any(|(id, _)| *id == found.0) {
            out.push(found);
        }
    }
    out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
    Ok(out)
}

/// How [`replace_snapshots`] marks what it writes.
pub(crate) struct Replace<'a> {
    pub(crate) dry_run: bool,
    pub(crate) forget: bool,
    /// A tag added to each new snapshot.
    pub(crate) tag: Option<&'a str>,
    /// A folder whose listing cannot be read becomes empty.
    pub(crate) empty_unreadable: bool,
}

/// Rewrites each snapshot's trees through `filter`; a snapshot with
/// nothing changed is left as it is. The new trees are made durable (with
/// their index) before any new snapshot is written, and each original is
/// removed (with `forget`) only after its replacement is durable. Returns
/// the snapshots replaced and the trees written. `lock` must be held.
pub(crate) fn replace_snapshots(
    repo: &Repository,
    snapshots: &[(Id, Snapshot)],
    set: Arc<BlobSet>,
    options: &Replace<'_>,
    lock: Option<&LockGuard>,
    filter: &mut Filter<'_>,
) -> Result<(Vec<Replaced>, usize)> {
    let packer = (!options.dry_run).then(|| repo.packer());
    let mut rewriter = TreeRewriter::new(repo, set, packer.as_ref(), options.empty_unreadable);
    let mut planned: Vec<(Id, Snapshot, Id, Vec<Change>)> = Vec::new();
    for (id, snap) in snapshots {
        if let Some(lock) = lock {
            lock.alive()?;
        }
        let (root, changes) = rewriter.rewrite_root(&snap.tree, filter)?;
        if root != snap.tree {
            planned.push((*id, snap.clone(), root, changes));
        }
    }
    let trees = rewriter.trees_written;
    let Some(packer) = packer else {
        let out = planned
            .into_iter()
            .map(|(original, s, _, changes)| Replaced { original, time: s.time, new: None, changes, forgotten: false })
            .collect();
        return Ok((out, trees));
    };
    repo.runtime().block_on(packer.flush())?;
    repo.forget_blob_set();
    let mut out = Vec::new();
    for (original, snap, root, changes) in planned {
        if let Some(lock) = lock {
            lock.check()?;
        }
        let mut new = snap.clone();
        new.tree = root;
        new.original = Some(original);
        new.program_version = format!("coffer {}", crate::VERSION);
        if let Some(tag) = options.tag
            && !new.tags.iter().any(|t| t == tag)
        {
            new.tags.push(tag.to_string());
        }
        let new_id = repo.save_snapshot(&new)?;
        if options.forget {
            repo.remove_snapshot(&original)?;
            repo.forgotten(std::slice::from_ref(&original));
        }
        out.push(Replaced { original, time: snap.time, new: Some(new_id), changes, forgotten: options.forget });
    }
    Ok((out, trees))
}

// ---------------------------------------------------------------------------
// repair snapshots

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotRepairOptions {
    /// Say what would change, write nothing.
    pub dry_run: bool,
    /// Remove each original once its repaired copy is written.
    pub forget: bool,
    /// Snapshots to repair (ids, prefixes, `latest`); all when empty.
    pub snapshots: Vec<String>,
}

/// A snapshot that cannot be repaired: its root tree is lost.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Unrepairable {
    pub snapshot: Id,
    pub problem: String,
}

/// What `repair snapshots` found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotRepairOutcome {
    pub dry_run: bool,
    pub snapshots_checked: usize,
    /// Snapshots that lost data, and their repaired copies.
    pub repaired: Vec<Replaced>,
    /// Snapshots whose root tree is lost: left as they are.
    pub unrepairable: Vec<Unrepairable>,
    pub trees_written: usize,
}

/// Writes, for each snapshot that references data the repository no longer
/// has, a repaired copy: files with a lost chunk are removed, folders whose
/// listing is lost become empty, and every such path is reported. The copy
/// is tagged [`REPAIRED_TAG`] and names its original.
pub fn repair_snapshots(repo: &Repository, options: &SnapshotRepairOptions) -> Result<SnapshotRepairOutcome> {
    let lock = lock(repo, options.dry_run)?;
    let snapshots = pick_snapshots(repo, &options.snapshots)?;
    let set = repo.reload_blob_set()?;
    let mut outcome =
        SnapshotRepairOutcome { dry_run: options.dry_run, snapshots_checked: snapshots.len(), ..Default::default() };
    let mut repairable = Vec::new();
    for (id, snap) in snapshots {
        let root = if set.contains(ObjectKind::Tree, &snap.tree) {
            repo.load_tree(&snap.tree).map(drop)
        } else {
            Err(Error::Missing { kind: ObjectKind::Tree.name(), id: snap.tree })
        };
        match root {
            Ok(()) => repairable.push((id, snap)),
            Err(e) => outcome.unrepairable.push(Unrepairable {
                snapshot: id,
                problem: format!("its root tree {} is {}", snap.tree, problem(&e)),
            }),
        }
    }
    let replace =
        Replace { dry_run: options.dry_run, forget: options.forget, tag: Some(REPAIRED_TAG), empty_unreadable: true };
    let chunks = set.clone();
    let mut filter = move |_: &Path, node: &Node| {
        let lost = node.content.iter().filter(|c| !chunks.contains(ObjectKind::Chunk, &c.0)).count();
        (lost > 0).then(|| format!("{lost} of its {} chunks are lost; removed", node.content.len()))
    };
    let (repaired, trees) = replace_snapshots(repo, &repairable, set, &replace, Some(&lock), &mut filter)?;
    outcome.repaired = repaired;
    outcome.trees_written = trees;
    lock.release()?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_are_found_by_a_unique_prefix_only() {
        let a = Id::from_hex(&format!("ab{}", "0".repeat(62))).unwrap();
        let b = Id::from_hex(&format!("ac{}", "1".repeat(62))).unwrap();
        let listed: HashMap<Id, (PackKind, u64)> =
            [(a, (PackKind::Data, 10)), (b, (PackKind::Tree, 20))].into_iter().collect();
        assert_eq!(find_pack(&listed, "AB").unwrap(), (a, PackKind::Data));
        assert_eq!(find_pack(&listed, &b.to_hex()).unwrap(), (b, PackKind::Tree));
        assert!(find_pack(&listed, "a").unwrap_err().to_string().contains("matches 2 packs"));
        assert!(find_pack(&listed, "ff").unwrap_err().to_string().contains("no stored pack"));
        assert!(find_pack(&listed, "xyz").unwrap_err().to_string().contains("not a pack id"));
        assert!(find_pack(&listed, "").is_err());
    }
}
