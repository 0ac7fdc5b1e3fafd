//! Repository statistics: how much the snapshots hold when restored, how
//! much distinct data that is, and what it takes in the store.

use std::collections::{HashMap, HashSet};

use crate::crypto::ObjectKind;
use crate::error::Result;
use crate::id::Id;
use crate::repo::{Repository, parse_object_key};
use crate::snapshot::Snapshot;
use crate::tree::NodeKind;

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub snapshots: u64,
    /// Regular files and their bytes as a restore of every snapshot would
    /// write them (a file in two snapshots counts twice).
    pub files: u64,
    pub bytes: u64,
    /// Distinct chunks referenced, and the sum of their plaintext sizes.
    pub unique_chunks: u64,
    pub unique_bytes: u64,
    /// Distinct trees referenced.
    pub trees: u64,
    /// Stored size of the referenced chunk and tree objects (after
    /// compression, padding and encryption), from a listing of the store.
    pub stored_bytes: u64,
    /// Referenced chunks or trees that the store does not list.
    pub missing_objects: u64,
}

impl Stats {
    /// Bytes as restored per distinct byte.
    pub fn dedup_ratio(&self) -> f64 {
        if self.unique_bytes == 0 { 1.0 } else { self.bytes as f64 / self.unique_bytes as f64 }
    }
}

/// Totals per tree (files and bytes below it), memoised so a subtree shared
/// by many snapshots is read once.
struct Walker<'a> {
    repo: &'a Repository,
    totals: HashMap<Id, (u64, u64)>,
    chunks: HashMap<Id, u32>,
}

impl Walker<'_> {
    fn tree(&mut self, id: &Id) -> Result<(u64, u64)> {
        if let Some(t) = self.totals.get(id) {
            return Ok(*t);
        }
        let tree = self.repo.load_tree(id)?;
        let (mut files, mut bytes) = (0, 0);
        for node in &tree.nodes {
            match (node.kind, &node.subtree) {
                (NodeKind::File, _) => {
                    files += 1;
                    bytes += node.size;
                    for c in &node.content {
                        self.chunks.insert(c.0, c.1);
                    }
                }
                (NodeKind::Dir, Some(sub)) => {
                    let (f, b) = self.tree(sub)?;
                    files += f;
                    bytes += b;
                }
                _ => {}
            }
        }
        self.totals.insert(*id, (files, bytes));
        Ok((files, bytes))
    }
}

/// Statistics over the given snapshots.
pub fn stats(repo: &Repository, snapshots: &[(Id, Snapshot)]) -> Result<Stats> {
    let mut w = Walker { repo, totals: HashMap::new(), chunks: HashMap::new() };
    let mut s = Stats { snapshots: snapshots.len() as u64, ..Stats::default() };
    for (_, snap) in snapshots {
        let (files, bytes) = w.tree(&snap.tree)?;
        s.files += files;
        s.bytes += bytes;
    }
    s.unique_chunks = w.chunks.len() as u64;
    s.unique_bytes = w.chunks.values().map(|&n| u64::from(n)).sum();
    s.trees = w.totals.len() as u64;

    let mut sizes: HashMap<(bool, Id), u64> = HashMap::new();
    for (kind, prefix) in [(ObjectKind::Chunk, "chunks/"), (ObjectKind::Tree, "trees/")] {
        for e in repo.runtime().block_on(repo.backend().list(prefix))? {
            if let Some(id) = parse_object_key(kind, &e.key) {
                sizes.insert((kind == ObjectKind::Chunk, id), e.size);
            }
        }
    }
    let referenced: HashSet<(bool, Id)> =
        w.chunks.keys().map(|id| (true, *id)).chain(w.totals.keys().map(|id| (false, *id))).collect();
    for key in referenced {
        match sizes.get(&key) {
            Some(size) => s.stored_bytes += size,
            None => s.missing_objects += 1,
        }
    }
    Ok(s)
}
