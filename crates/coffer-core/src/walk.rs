//! Walking the trees of a snapshot.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::Repository;
use crate::tree::{Node, NodeKind};

/// Splits a path inside a snapshot (`/home/ana/x` or `home/ana/x`) into its
/// components. `..` is refused rather than resolved.
pub fn snapshot_components(path: &Path) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.as_bytes().to_vec()),
            Component::RootDir | Component::CurDir => {}
            _ => {
                return Err(Error::InvalidInput(format!("{}: `..` is not allowed in a snapshot path", path.display())));
            }
        }
    }
    Ok(out)
}

/// Finds the node at `path` below the tree `root`. An empty path has no node;
/// `None` is returned for it and the caller uses the root tree itself.
pub fn find(repo: &Repository, root: &Id, path: &Path) -> Result<Option<Node>> {
    let comps = snapshot_components(path)?;
    let mut tree_id = *root;
    let mut found = None;
    for (i, name) in comps.iter().enumerate() {
        let tree = repo.load_tree(&tree_id)?;
        let node = tree
            .find(name)
            .cloned()
            .ok_or_else(|| Error::InvalidInput(format!("{} is not in the snapshot", path.display())))?;
        if i + 1 < comps.len() {
            tree_id = match (node.kind, node.subtree) {
                (NodeKind::Dir, Some(id)) => id,
                _ => return Err(Error::InvalidInput(format!("{} is not in the snapshot", path.display()))),
            };
        }
        found = Some(node);
    }
    Ok(found)
}

/// Visits every node below `tree`, depth first in name order, with its path
/// (`prefix` joined with the names). The visitor returns whether to descend
/// into a directory.
pub fn walk(
    repo: &Repository,
    tree: &Id,
    prefix: &Path,
    visit: &mut dyn FnMut(&Path, &Node) -> Result<bool>,
) -> Result<()> {
    let tree = repo.load_tree(tree)?;
    for node in &tree.nodes {
        let path: PathBuf = prefix.join(OsStr::from_bytes(&node.name));
        let descend = visit(&path, node)?;
        if let (true, NodeKind::Dir, Some(sub)) = (descend, node.kind, &node.subtree) {
            walk(repo, sub, &path, visit)?;
        }
    }
    Ok(())
}
