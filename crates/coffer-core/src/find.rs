//! `coffer find`: which snapshots hold files matching a pattern, and where.
//!
//! Snapshots of one library share almost all their trees, so each distinct
//! tree is searched once: its matches (relative to it) are kept by tree id
//! and reused for every snapshot and every folder that holds the same tree.
//! A search of a year of nightly snapshots costs about as much as one
//! search of the union of their folders.

use std::collections::HashMap;
use std::sync::Arc;

use globset::{Glob, GlobMatcher};

use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::Repository;
use crate::tree::{Node, NodeKind};

/// What to look for.
pub struct Pattern {
    matcher: GlobMatcher,
    /// Matched against the whole path (the pattern has a `/`), not the name.
    whole_path: bool,
}

impl Pattern {
    /// A glob (`*`, `?`, `[…]`, `**`). Without a `/` it is matched against
    /// names, as `find -name`; with one, against whole paths
    /// (`/home/*/Pictures/**/*.jpg`). `ignore_case` matches as `-iname`.
    pub fn new(glob: &str, ignore_case: bool) -> Result<Pattern> {
        let matcher = globset::GlobBuilder::new(glob)
            .case_insensitive(ignore_case)
            .literal_separator(true)
            .build()
            .or_else(|_| Glob::new(glob))
            .map_err(|e| Error::InvalidInput(format!("{glob:?} is not a pattern: {e}")))?
            .compile_matcher();
        Ok(Pattern { matcher, whole_path: glob.contains('/') })
    }

    fn matches(&self, path: &str, name: &str) -> bool {
        if self.whole_path { self.matcher.is_match(path) } else { self.matcher.is_match(name) }
    }
}

/// One match.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Found {
    pub snapshot: Id,
    /// Absolute path in the snapshot (lossy UTF-8).
    pub path: String,
    pub kind: NodeKind,
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

/// A match below a tree: its path relative to the tree, and its node's summary.
#[derive(Clone, Debug)]
struct Local {
    rel: String,
    kind: NodeKind,
    size: u64,
    mtime: i64,
}

/// Every entry matching `pattern` in `snapshots`, snapshot by snapshot
/// (in the order given), paths sorted within each.
pub fn find(repo: &Repository, snapshots: &[(Id, crate::snapshot::Snapshot)], pattern: &Pattern) -> Result<Vec<Found>> {
    let mut memo: HashMap<(Id, String), Arc<Vec<Local>>> = HashMap::new();
    let mut out = Vec::new();
    for (id, snap) in snapshots {
        let matches = search(repo, &snap.tree, "", pattern, &mut memo)?;
        for m in matches.iter() {
            out.push(Found { snapshot: *id, path: m.rel.clone(), kind: m.kind, size: m.size, mtime: m.mtime });
        }
    }
    Ok(out)
}

/// The matches below `tree`, whose path is `prefix`. With a whole-path
/// pattern a tree's matches depend on where it sits, so the memo is keyed
/// by the prefix too (and then only helps snapshots that share the folder).
fn search(
    repo: &Repository,
    tree: &Id,
    prefix: &str,
    pattern: &Pattern,
    memo: &mut HashMap<(Id, String), Arc<Vec<Local>>>,
) -> Result<Arc<Vec<Local>>> {
    let key = (*tree, if pattern.whole_path { prefix.to_string() } else { String::new() });
    if let Some(found) = memo.get(&key) {
        return Ok(Arc::clone(found));
    }
    let mut found = Vec::new();
    for node in repo.load_tree(tree)?.nodes {
        let name = node.name_lossy().into_owned();
        let path = format!("{prefix}/{name}");
        if pattern.matches(&path, &name) {
            found.push(local(&node, &name));
        }
        if let (NodeKind::Dir, Some(sub)) = (node.kind, node.subtree) {
            for m in search(repo, &sub, &path, pattern, memo)?.iter() {
                found.push(Local { rel: format!("{name}{}", m.rel), ..m.clone() });
            }
        }
    }
    // Relative to this tree: "name" at the top, "name/…" below, all
    // starting with "/" once joined to a prefix.
    for f in &mut found {
        if !f.rel.starts_with('/') {
            f.rel.insert(0, '/');
        }
    }
    found.sort_by(|a, b| a.rel.cmp(&b.rel));
    let found = Arc::new(found);
    memo.insert(key, Arc::clone(&found));
    Ok(found)
}

fn local(node: &Node, name: &str) -> Local {
    Local { rel: name.to_string(), kind: node.kind, size: node.size, mtime: node.mtime.sec }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_or_whole_paths() {
        let p = Pattern::new("*.JPG", true).unwrap();
        assert!(p.matches("/a/b/IMG_1.jpg", "IMG_1.jpg"));
        assert!(!p.matches("/a/b/IMG_1.png", "IMG_1.png"));
        let p = Pattern::new("/home/*/Pictures/**/*.jpg", false).unwrap();
        assert!(p.matches("/home/ana/Pictures/2024/06/a.jpg", "a.jpg"));
        assert!(!p.matches("/home/ana/Music/a.jpg", "a.jpg"));
        assert!(!Pattern::new("x", false).unwrap().matches("/x/y", "y"));
        assert!(Pattern::new("[", false).is_err());
    }
}
