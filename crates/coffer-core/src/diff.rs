//! Differences between two snapshots' trees, with restic's markers:
//! `+` added, `-` removed, `M` content modified, `T` type changed, `U`
//! metadata changed (only when asked for), and `?` after `M` when the
//! content changed while size, times and inode did not (likely bit rot, or a
//! change made behind the file system's back).
//!
//! Trees are walked in step, by name; a directory whose subtree id is the
//! same on both sides is skipped without being read.

use crate::error::Result;
use crate::id::Id;
use crate::repo::Repository;
use crate::tree::{Node, NodeKind};

/// One changed entry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// `/`-separated path in the snapshot (lossy UTF-8); directories end in `/`.
    pub path: String,
    /// `+`, `-`, or a combination of `T`, `M`, `?` and `U`.
    pub modifier: String,
}

/// Entries added or removed, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub files: u64,
    pub dirs: u64,
    pub others: u64,
}

impl Counts {
    fn add(&mut self, node: &Node) {
        match node.kind {
            NodeKind::File => self.files += 1,
            NodeKind::Dir => self.dirs += 1,
            _ => self.others += 1,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiffStats {
    pub added: Counts,
    pub removed: Counts,
    /// Files present on both sides with different content.
    pub changed_files: u64,
}

/// Whether two nodes of the same name differ in their metadata: the
/// attributes a restore sets (permissions, ownership, modification time,
/// extended attributes, link target, device number). Change time, inode and
/// link count are left out: they change whenever a file is copied or moved
/// and would flag nearly everything.
fn metadata_differs(a: &Node, b: &Node) -> bool {
    a.mode != b.mode
        || a.uid != b.uid
        || a.gid != b.gid
        || a.user != b.user
        || a.group != b.group
        || a.mtime != b.mtime
        || a.xattrs != b.xattrs
        || a.target != b.target
        || a.rdev != b.rdev
}

struct Differ<'a> {
    repo: &'a Repository,
    metadata: bool,
    stats: DiffStats,
    emit: &'a mut dyn FnMut(Change),
}

fn join(prefix: &str, node: &Node) -> String {
    let mut p = format!("{prefix}{}", node.name_lossy());
    if node.kind == NodeKind::Dir {
        p.push('/');
    }
    p
}

impl Differ<'_> {
    fn trees(&mut self, prefix: &str, a: &Id, b: &Id) -> Result<()> {
        let (ta, tb) = (self.repo.load_tree(a)?, self.repo.load_tree(b)?);
        let (mut i, mut j) = (0, 0);
        while i < ta.nodes.len() || j < tb.nodes.len() {
            let order = match (ta.nodes.get(i), tb.nodes.get(j)) {
                (Some(x), Some(y)) => x.name.cmp(&y.name),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    self.whole("-", prefix, &ta.nodes[i])?;
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    self.whole("+", prefix, &tb.nodes[j])?;
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    self.pair(prefix, &ta.nodes[i], &tb.nodes[j])?;
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(())
    }

    /// An entry on one side only, and everything below it.
    fn whole(&mut self, marker: &str, prefix: &str, node: &Node) -> Result<()> {
        let path = join(prefix, node);
        if marker == "+" {
            self.stats.added.add(node)
        } else {
            self.stats.removed.add(node)
        }
        (self.emit)(Change { path: path.clone(), modifier: marker.to_string() });
        if let (NodeKind::Dir, Some(sub)) = (node.kind, &node.subtree) {
            for child in &self.repo.load_tree(sub)?.nodes {
                self.whole(marker, &path, child)?;
            }
        }
        Ok(())
    }

    fn pair(&mut self, prefix: &str, a: &Node, b: &Node) -> Result<()> {
        let path = join(prefix, b);
        let mut modifier = String::new();
        if a.kind != b.kind {
            modifier.push('T');
        }
        if a.kind == NodeKind::File && b.kind == NodeKind::File && a.content != b.content {
            modifier.push('M');
            self.stats.changed_files += 1;
            if a.size == b.size && a.mtime == b.mtime && a.ctime == b.ctime && a.inode == b.inode {
                modifier.push('?');
            }
        } else if self.metadata && metadata_differs(a, b) {
            modifier.push('U');
        }
        if !modifier.is_empty() {
            (self.emit)(Change { path: path.clone(), modifier });
        }
        match (a.kind, &a.subtree, b.kind, &b.subtree) {
            (NodeKind::Dir, Some(x), NodeKind::Dir, Some(y)) if x != y => self.trees(&path, x, y)?,
            // A directory that became something else (or the reverse):
            // what was below it is gone (or new).
            (NodeKind::Dir, Some(x), other, _) if other != NodeKind::Dir => {
                for child in &self.repo.load_tree(x)?.nodes {
                    self.whole("-", &format!("{path}/"), child)?;
                }
            }
            (other, _, NodeKind::Dir, Some(y)) if other != NodeKind::Dir => {
                for child in &self.repo.load_tree(y)?.nodes {
                    self.whole("+", &path, child)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Compares the tree `a` (older) with `b` (newer), calling `emit` for each
/// change in path order. `metadata` adds `U` changes.
pub fn diff(repo: &Repository, a: &Id, b: &Id, metadata: bool, emit: &mut dyn FnMut(Change)) -> Result<DiffStats> {
    let mut d = Differ { repo, metadata, stats: DiffStats::default(), emit };
    if a != b {
        d.trees("/", a, b)?;
    }
    Ok(d.stats)
}
