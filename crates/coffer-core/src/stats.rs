//! Repository statistics: how much the snapshots hold when restored, how
//! much distinct data that is, and what it takes in the store.

use std::collections::HashMap;

use crate::crypto::ObjectKind;
use crate::error::Result;
use crate::id::Id;
use crate::repo::Repository;
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
    /// Stored size of the referenced chunk and tree blobs (after
    /// compression, padding and encryption), from the index.
    pub stored_bytes: u64,
    /// Referenced chunks or trees in no stored pack.
    pub missing_objects: u64,
    /// The whole repository as stored: packs and their bytes (all of them,
    /// used or not, with their headers and padding), and index objects.
    pub packs: u64,
    pub pack_bytes: u64,
    pub index_objects: u64,
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
    // One load of the index: the walk reads trees through it, and the
    // sizes come from it.
    let loaded = crate::index::load(repo)?;
    let mut s = Stats {
        snapshots: snapshots.len() as u64,
        packs: loaded.listed.len() as u64,
        pack_bytes: loaded.listed.values().map(|(_, size)| size).sum(),
        index_objects: (loaded.indexes.len() + loaded.unreadable.len()) as u64,
        ..Stats::default()
    };
    let blobs = repo.set_blob_set(loaded.blobs);
    let mut w = Walker { repo, totals: HashMap::new(), chunks: HashMap::new() };
    for (_, snap) in snapshots {
        let (files, bytes) = w.tree(&snap.tree)?;
        s.files += files;
        s.bytes += bytes;
    }
    s.unique_chunks = w.chunks.len() as u64;
    s.unique_bytes = w.chunks.values().map(|&n| u64::from(n)).sum();
    s.trees = w.totals.len() as u64;

    let referenced =
        w.chunks.keys().map(|id| (ObjectKind::Chunk, id)).chain(w.totals.keys().map(|id| (ObjectKind::Tree, id)));
    for (kind, id) in referenced {
        match blobs.get(kind, id) {
            Some(loc) => s.stored_bytes += u64::from(loc.length),
            None => s.missing_objects += 1,
        }
    }
    Ok(s)
}
