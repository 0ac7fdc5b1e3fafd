//! Restoring a snapshot into a folder.
//!
//! Directories, symlinks and special files are created while the trees are
//! walked; file contents are fetched afterwards with many requests in
//! flight, each chunk written at its offset (files are pre-sized, so chunks
//! can land in any order); metadata is applied last, directories deepest
//! first, so that writing into a directory does not disturb its mtime.
//!
//! A damaged or missing chunk fails only the file that needs it: the error
//! names the file and the chunk, and every other file is still restored.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;

use crate::crypto::ObjectKind;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::metadata;
use crate::progress::Progress;
use crate::repo::{Repository, fetch};
use crate::tree::{Node, NodeKind, valid_name};
use crate::walk::snapshot_components;

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Snapshot paths to restore; empty restores everything.
    pub includes: Vec<PathBuf>,
    /// Chunk fetches in flight; 0 uses the backend's own preference.
    pub concurrency: usize,
}

/// One entry that could not be restored.
#[derive(Clone, Debug)]
pub struct RestoreProblem {
    pub path: PathBuf,
    pub message: String,
}

#[derive(Clone, Debug, Default)]
pub struct RestoreOutcome {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub problems: Vec<RestoreProblem>,
}

struct FileJob {
    path: PathBuf,
    node: Node,
    remaining: AtomicUsize,
}

struct Plan {
    files: Vec<FileJob>,
    /// Directories and other entries whose metadata is applied at the end.
    others: Vec<(PathBuf, Node)>,
}

/// Which entries an include list selects.
struct Selection {
    includes: Vec<Vec<Vec<u8>>>,
}

impl Selection {
    /// (restore this entry, descend into it)
    fn check(&self, comps: &[Vec<u8>]) -> (bool, bool) {
        if self.includes.is_empty() {
            return (true, true);
        }
        let mut restore = false;
        let mut descend = false;
        for inc in &self.includes {
            if comps.starts_with(inc) {
                return (true, true);
            }
            if inc.starts_with(comps) {
                // An ancestor of an included path: create it, look inside.
                restore = true;
                descend = true;
            }
        }
        (restore, descend)
    }
}

struct Planner<'a> {
    repo: &'a Repository,
    selection: Selection,
    plan: Plan,
    outcome: RestoreOutcome,
    progress: &'a dyn Progress,
}

impl Planner<'_> {
    fn problem(&mut self, path: &Path, message: impl std::fmt::Display) {
        let message = message.to_string();
        self.progress.warning(path, &message);
        self.outcome.problems.push(RestoreProblem { path: path.to_path_buf(), message });
    }

    fn plan_tree(&mut self, tree_id: &Id, dir: &Path, comps: &mut Vec<Vec<u8>>) -> Result<()> {
        let tree = match self.repo.load_tree(tree_id) {
            Ok(t) => t,
            Err(e @ (Error::Corrupt { .. } | Error::Missing { .. })) => {
                self.problem(dir, e);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        for node in tree.nodes {
            if !valid_name(&node.name) {
                self.problem(dir, format!("skipping unsafe name {:?}", node.name_lossy()));
                continue;
            }
            comps.push(node.name.clone());
            let (restore, descend) = self.selection.check(comps);
            if restore {
                let path = dir.join(OsStr::from_bytes(&node.name));
                self.plan_node(&path, node, descend, comps)?;
            }
            comps.pop();
        }
        Ok(())
    }

    fn plan_node(&mut self, path: &Path, node: Node, descend: bool, comps: &mut Vec<Vec<u8>>) -> Result<()> {
        match node.kind {
            NodeKind::Dir => {
                if let Err(e) = make_dir(path) {
                    self.problem(path, e);
                    return Ok(());
                }
                self.outcome.dirs += 1;
                if let (true, Some(sub)) = (descend, node.subtree) {
                    self.plan_tree(&sub, path, comps)?;
                }
                self.plan.others.push((path.to_path_buf(), node));
            }
            NodeKind::File => {
                let created = remove_unless_file(path)
                    .and_then(|()| open_no_follow(path, true))
                    .and_then(|f| f.set_len(node.size));
                if let Err(e) = created {
                    self.problem(path, e);
                    return Ok(());
                }
                let remaining = AtomicUsize::new(node.content.len());
                self.plan.files.push(FileJob { path: path.to_path_buf(), node, remaining });
            }
            NodeKind::Symlink => {
                let target = node.target.clone().unwrap_or_default();
                let _ = std::fs::remove_file(path);
                if let Err(e) = std::os::unix::fs::symlink(OsStr::from_bytes(&target), path) {
                    self.problem(path, e);
                    return Ok(());
                }
                self.outcome.symlinks += 1;
                self.plan.others.push((path.to_path_buf(), node));
            }
            NodeKind::Fifo => {
                let _ = std::fs::remove_file(path);
                let mode = nix::sys::stat::Mode::from_bits_truncate(node.mode);
                if let Err(e) = nix::unistd::mkfifo(path, mode) {
                    self.problem(path, e);
                    return Ok(());
                }
                self.plan.others.push((path.to_path_buf(), node));
            }
            NodeKind::CharDevice | NodeKind::BlockDevice => {
                let _ = std::fs::remove_file(path);
                let kind = if node.kind == NodeKind::CharDevice {
                    nix::sys::stat::SFlag::S_IFCHR
                } else {
                    nix::sys::stat::SFlag::S_IFBLK
                };
                let mode = nix::sys::stat::Mode::from_bits_truncate(node.mode);
                if let Err(e) = nix::sys::stat::mknod(path, kind, mode, node.rdev as nix::libc::dev_t) {
                    self.problem(path, format!("cannot create the device node: {e}"));
                    return Ok(());
                }
                self.plan.others.push((path.to_path_buf(), node));
            }
            NodeKind::Socket => {
                // A socket belongs to the process that made it; there is
                // nothing to restore but a name no program listens on.
                tracing::info!("{}: socket not restored", path.display());
            }
        }
        Ok(())
    }
}

/// Creates a directory, replacing whatever non-directory is in the way. An
/// existing symlink is replaced, never followed: restore must not write
/// outside its target, whatever the target already holds.
fn make_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => std::fs::remove_file(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir(path)
}

/// Removes a symlink or special file where a regular file is to be written.
fn remove_unless_file(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) if m.is_dir() => {
            Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "a directory is in the way of the file"))
        }
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens a file for writing without following a symlink at its name.
fn open_no_follow(path: &Path, create: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(create)
        .truncate(create)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// Restores the tree `root` (a snapshot's root tree) into `options.target`.
pub fn restore(
    repo: &Repository,
    root: &Id,
    options: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreOutcome> {
    let includes = options.includes.iter().map(|p| snapshot_components(p)).collect::<Result<Vec<_>>>()?;
    // An include that names nothing is a typo, not a request for an empty restore.
    for path in &options.includes {
        crate::walk::find(repo, root, path)?;
    }
    std::fs::create_dir_all(&options.target).map_err(|e| Error::io(&options.target, e))?;
    let mut planner = Planner {
        repo,
        selection: Selection { includes },
        plan: Plan { files: Vec::new(), others: Vec::new() },
        outcome: RestoreOutcome::default(),
        progress,
    };
    planner.plan_tree(root, &options.target, &mut Vec::new())?;
    let Planner { plan, mut outcome, .. } = planner;

    let total_bytes: u64 = plan.files.iter().map(|f| f.node.size).sum();
    progress.set_total(plan.files.len() as u64, total_bytes);
    let files = Arc::new(plan.files);
    let failed: Arc<Mutex<Vec<(usize, String)>>> = Arc::new(Mutex::new(Vec::new()));

    // Empty files are complete already.
    for _ in files.iter().filter(|f| f.node.content.is_empty()) {
        progress.file_done();
    }

    let mut jobs = Vec::new();
    for (fi, f) in files.iter().enumerate() {
        let mut offset = 0u64;
        for c in &f.node.content {
            jobs.push((fi, offset, *c));
            offset += u64::from(c.1);
        }
        if offset != f.node.size {
            failed
                .lock()
                .map_err(|_| Error::InvalidInput("poisoned".into()))?
                .push((fi, format!("chunk lengths add up to {offset} bytes, the file has {}", f.node.size)));
        }
    }

    let concurrency = if options.concurrency == 0 { repo.backend().concurrency().max(2) } else { options.concurrency };
    let backend = repo.backend().clone();
    let keys = repo.keys().clone();
    let repo_id = *repo.repo_id();
    let max_len = repo.max_chunk_len();
    repo.runtime().block_on(async {
        futures_util::stream::iter(jobs)
            .map(|(fi, offset, chunk)| {
                let backend = backend.clone();
                let keys = keys.clone();
                let files = files.clone();
                let failed = failed.clone();
                async move {
                    let result: Result<()> = async {
                        let stored = fetch(&*backend, ObjectKind::Chunk, &chunk.0).await?;
                        let files2 = files.clone();
                        tokio::task::spawn_blocking(move || -> Result<()> {
                            let data =
                                crate::blob::decode(&keys, &repo_id, ObjectKind::Chunk, &chunk.0, &stored, max_len)?;
                            if data.len() != chunk.1 as usize {
                                return Err(Error::corrupt(
                                    "chunk",
                                    chunk.0.to_hex(),
                                    "length differs from the tree's record",
                                ));
                            }
                            let path = &files2[fi].path;
                            let f = open_no_follow(path, false).map_err(|e| Error::io(path, e))?;
                            f.write_all_at(&data, offset).map_err(|e| Error::io(path, e))?;
                            Ok(())
                        })
                        .await
                        .map_err(|e| Error::InvalidInput(format!("restore task failed: {e}")))?
                    }
                    .await;
                    match result {
                        Ok(()) => {
                            progress.bytes_done(u64::from(chunk.1));
                        }
                        Err(e) => {
                            let msg = match &e {
                                Error::Io { .. } => e.to_string(),
                                _ => format!("chunk {}: {e}", chunk.0),
                            };
                            if let Ok(mut f) = failed.lock() {
                                f.push((fi, msg));
                            }
                        }
                    }
                    if files[fi].remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                        progress.file_done();
                    }
                }
            })
            .buffer_unordered(concurrency)
            .collect::<Vec<()>>()
            .await;
    });

    let mut failed = std::mem::take(&mut *failed.lock().map_err(|_| Error::InvalidInput("poisoned".into()))?);
    failed.sort();
    failed.dedup_by(|a, b| a.0 == b.0);
    let chown = metadata::can_chown();
    let mut failed_idx = failed.iter().map(|(i, _)| *i).peekable();
    for (fi, f) in files.iter().enumerate() {
        if failed_idx.peek() == Some(&fi) {
            failed_idx.next();
            continue;
        }
        outcome.files += 1;
        outcome.bytes += f.node.size;
        if let Err(e) = metadata::apply(&f.path, &f.node, chown) {
            outcome.problems.push(RestoreProblem { path: f.path.clone(), message: format!("setting metadata: {e}") });
        }
    }
    for (fi, msg) in failed {
        let path = files[fi].path.clone();
        progress.warning(&path, &msg);
        outcome.problems.push(RestoreProblem { path, message: msg });
    }
    // Directories were pushed after their contents: applying in order sets
    // every directory's metadata after everything inside it.
    for (path, node) in &plan.others {
        if let Err(e) = metadata::apply(path, node, chown) {
            outcome.problems.push(RestoreProblem { path: path.clone(), message: format!("setting metadata: {e}") });
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(p: &str) -> Vec<Vec<u8>> {
        snapshot_components(Path::new(p)).unwrap()
    }

    #[test]
    fn selection_restores_included_subtrees_and_their_parents() {
        let all = Selection { includes: vec![] };
        assert_eq!(all.check(&comps("/a/b")), (true, true));
        let sel = Selection { includes: vec![comps("/home/ana/Pictures/2024")] };
        assert_eq!(sel.check(&comps("/home")), (true, true), "ancestor: create and descend");
        assert_eq!(sel.check(&comps("/home/ana/Pictures/2024")), (true, true));
        assert_eq!(sel.check(&comps("/home/ana/Pictures/2024/x.jpg")), (true, true));
        assert_eq!(sel.check(&comps("/home/ana/Pictures/2023")), (false, false));
        assert_eq!(sel.check(&comps("/home/bob")), (false, false));
        assert_eq!(sel.check(&comps("/home/ana/Pictures/20245")), (false, false), "component-wise, not string prefix");
    }
}
