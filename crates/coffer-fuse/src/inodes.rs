//! Inode numbers for everything the mount shows, stable for the life of the
//! mount and never reused (Samba and `rsync` tell files apart by them).
//!
//! An entry of a snapshot is numbered by its folder's inode and its index
//! in that folder's tree (a tree never changes), a folder the mount makes
//! by its parent and name (and the snapshot it shows, for a snapshot's
//! folder). Names of a snapshot that were hard links of one file share one
//! inode within that snapshot, as they did when it was made.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use coffer_core::Id;
use coffer_core::snapshot::Snapshot;
use coffer_core::tree::{Node, NodeKind};

use crate::layout::{LATEST, Layout, TimeFolder};

pub const ROOT: u64 = 1;

#[derive(Clone, Debug)]
pub enum What {
    /// A folder the mount makes: the root, `snapshots/`, a host's folder…
    /// (shared, as an inode is copied out of the table for each request).
    Folder { entries: Arc<BTreeMap<Vec<u8>, u64>> },
    /// A `latest` symlink.
    Latest { target: Vec<u8> },
    /// A snapshot's folder, showing its root tree.
    Snapshot { tree: Id, time: SystemTime, uid: u32, gid: u32 },
    /// Entry `index` of the tree `dir` of a snapshot; `subtree` is the
    /// entry's own tree when it is a folder.
    Entry { dir: Id, index: u32, subtree: Option<Id> },
}

#[derive(Clone, Debug)]
pub struct Inode {
    pub parent: u64,
    pub name: Vec<u8>,
    pub what: What,
}

pub struct Inodes {
    /// Inode `n` is `nodes[n - 1]`.
    nodes: Vec<Inode>,
    /// Folders and links the mount makes, by (parent, name, snapshot shown).
    made: HashMap<(u64, Vec<u8>, Option<Id>), u64>,
    /// Entries of snapshots, by (folder inode, index in its tree).
    entries: HashMap<(u64, u32), u64>,
    /// Hard-linked files, by (snapshot folder inode, device, inode).
    hard_links: HashMap<(u64, u64, u64), u64>,
}

impl Default for Inodes {
    fn default() -> Self {
        Self::new()
    }
}

/// True for a file that had several names when the snapshot was made.
pub fn is_hard_linked(node: &Node) -> bool {
    node.kind == NodeKind::File && node.links > 1 && node.inode != 0
}

impl Inodes {
    pub fn new() -> Inodes {
        let root = Inode { parent: ROOT, name: Vec::new(), what: What::Folder { entries: Arc::default() } };
        Inodes { nodes: vec![root], made: HashMap::new(), entries: HashMap::new(), hard_links: HashMap::new() }
    }

    pub fn get(&self, ino: u64) -> Option<&Inode> {
        let i = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.nodes.get(i)
    }

    /// Inodes numbered so far.
    pub fn count(&self) -> usize {
        self.nodes.len()
    }

    fn push(&mut self, inode: Inode) -> u64 {
        self.nodes.push(inode);
        self.nodes.len() as u64
    }

    /// The snapshot folder an inode is in (itself for a snapshot folder).
    fn snapshot_root(&self, mut ino: u64) -> u64 {
        while let Some(node) = self.get(ino) {
            match node.what {
                What::Entry { .. } => ino = node.parent,
                _ => break,
            }
        }
        ino
    }

    /// The inode of entry `index` of folder `dir_ino`, whose tree is `dir`.
    pub fn entry(&mut self, dir_ino: u64, dir: Id, index: u32, node: &Node) -> u64 {
        if let Some(&ino) = self.entries.get(&(dir_ino, index)) {
            return ino;
        }
        let link_key = is_hard_linked(node).then(|| (self.snapshot_root(dir_ino), node.device, node.inode));
        if let Some(ino) = link_key.and_then(|k| self.hard_links.get(&k).copied()) {
            self.entries.insert((dir_ino, index), ino);
            return ino;
        }
        let subtree = if node.kind == NodeKind::Dir { node.subtree } else { None };
        let ino =
            self.push(Inode { parent: dir_ino, name: node.name.clone(), what: What::Entry { dir, index, subtree } });
        self.entries.insert((dir_ino, index), ino);
        if let Some(k) = link_key {
            self.hard_links.insert(k, ino);
        }
        ino
    }

    /// The inode of a folder or link the mount makes, set to `what`.
    fn made(&mut self, parent: u64, name: &[u8], snapshot: Option<Id>, what: What) -> u64 {
        let key = (parent, name.to_vec(), snapshot);
        match self.made.get(&key) {
            Some(&ino) => {
                self.nodes[(ino - 1) as usize].what = what;
                ino
            }
            None => {
                let ino = self.push(Inode { parent, name: name.to_vec(), what });
                self.made.insert(key, ino);
                ino
            }
        }
    }

    /// Makes the folders above the snapshots match `layout`. Snapshots
    /// that are gone leave their inodes behind (a file still open in one
    /// reads on), unreachable by name.
    pub fn apply(&mut self, layout: &Layout, snapshots: &HashMap<Id, Snapshot>) {
        let mut top = BTreeMap::new();
        let f = self.time_folder(ROOT, b"snapshots", &layout.snapshots, snapshots);
        top.insert(b"snapshots".to_vec(), f);

        let ids = self.folder(ROOT, b"ids");
        let entries = layout
            .ids
            .iter()
            .filter_map(|(name, id)| Some((name.clone().into_bytes(), self.snapshot(ids, name, id, snapshots)?)))
            .collect();
        self.set_entries(ids, entries);
        top.insert(b"ids".to_vec(), ids);

        for (name, groups) in [("hosts", &layout.hosts), ("tags", &layout.tags)] {
            let folder = self.folder(ROOT, name.as_bytes());
            let entries = groups
                .iter()
                .map(|(group, tf)| {
                    (group.clone().into_bytes(), self.time_folder(folder, group.as_bytes(), tf, snapshots))
                })
                .collect();
            self.set_entries(folder, entries);
            top.insert(name.as_bytes().to_vec(), folder);
        }
        self.set_entries(ROOT, top);
    }

    fn folder(&mut self, parent: u64, name: &[u8]) -> u64 {
        self.made(parent, name, None, What::Folder { entries: Arc::default() })
    }

    fn set_entries(&mut self, ino: u64, new: BTreeMap<Vec<u8>, u64>) {
        if let What::Folder { entries } = &mut self.nodes[(ino - 1) as usize].what {
            *entries = Arc::new(new);
        }
    }

    fn snapshot(&mut self, parent: u64, name: &str, id: &Id, snapshots: &HashMap<Id, Snapshot>) -> Option<u64> {
        let snap = snapshots.get(id)?;
        let time = snap.timestamp().ok().and_then(|ts| SystemTime::try_from(ts).ok()).unwrap_or(SystemTime::UNIX_EPOCH);
        let what = What::Snapshot { tree: snap.tree, time, uid: snap.uid, gid: snap.gid };
        Some(self.made(parent, name.as_bytes(), Some(*id), what))
    }

    fn time_folder(&mut self, parent: u64, name: &[u8], tf: &TimeFolder, snapshots: &HashMap<Id, Snapshot>) -> u64 {
        let folder = self.folder(parent, name);
        let mut entries: BTreeMap<Vec<u8>, u64> = tf
            .entries
            .iter()
            .filter_map(|(n, id)| Some((n.clone().into_bytes(), self.snapshot(folder, n, id, snapshots)?)))
            .collect();
        if let Some(latest) = &tf.latest {
            let link = self.made(folder, LATEST.as_bytes(), None, What::Latest { target: latest.clone().into_bytes() });
            entries.insert(LATEST.as_bytes().to_vec(), link);
        }
        self.set_entries(folder, entries);
        folder
    }

    /// The path of an inode below the mount point, for log lines.
    pub fn path(&self, mut ino: u64) -> String {
        let mut parts = Vec::new();
        while ino != ROOT {
            let Some(node) = self.get(ino) else { break };
            parts.push(String::from_utf8_lossy(&node.name).into_owned());
            ino = node.parent;
        }
        parts.reverse();
        parts.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_hard_links_keep_their_numbers() {
        let mut inodes = Inodes::new();
        let mut file = Node::new(b"a".to_vec(), NodeKind::File);
        let dir = Id([1; 32]);
        let snap_folder = inodes.folder(ROOT, b"s");
        let a = inodes.entry(snap_folder, dir, 0, &file);
        assert_eq!(inodes.entry(snap_folder, dir, 0, &file), a);
        assert_ne!(inodes.entry(snap_folder, dir, 1, &file), a);
        file.links = 2;
        file.inode = 77;
        let first = inodes.entry(snap_folder, dir, 2, &file);
        let second = inodes.entry(snap_folder, dir, 3, &file);
        assert_eq!(first, second, "two names of one file");
        let other_snapshot = inodes.folder(ROOT, b"t");
        assert_ne!(inodes.entry(other_snapshot, dir, 2, &file), first);
        assert_eq!(inodes.path(a), "s/a");
    }
}
