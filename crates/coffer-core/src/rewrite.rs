//! Rewrite: remove paths from existing snapshots (a secret backed up by
//! mistake, a folder that should have been excluded), writing new trees and
//! a new snapshot for each snapshot that had any of them.
//!
//! The patterns are `backup --exclude`'s ([`crate::exclude::Excludes`]),
//! matched against the paths as the snapshot records them (absolute). The
//! new snapshot keeps the original's time, host, user, paths, tags, parent
//! and summary, and names the original in [`Snapshot::original`]; the
//! original is kept unless asked, and its data stays until a prune.
//!
//! Lock: shared, as backup and forget take. Rewrite stores trees and a
//! snapshot as a backup does (reusing blobs that are stored, which prune's
//! exclusive phase then marks as used by a snapshot written meanwhile), and
//! removes snapshots as forget does.
//!
//! [`Snapshot::original`]: crate::snapshot::Snapshot::original

use std::path::Path;

use crate::error::Result;
use crate::exclude::Excludes;
use crate::lock::REWRITE;
use crate::repair::{Replace, Replaced, pick_snapshots, replace_snapshots};
use crate::repo::Repository;
use crate::tree::Node;

#[derive(Clone, Debug, Default)]
pub struct RewriteOptions {
    /// Say what would be removed, write nothing (and take no lock).
    pub dry_run: bool,
    /// Remove each original once its rewritten copy is written.
    pub forget: bool,
    /// Snapshots to rewrite (ids, prefixes, `latest`); all when empty.
    pub snapshots: Vec<String>,
    /// What to remove.
    pub excludes: Excludes,
}

/// What `rewrite` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RewriteOutcome {
    pub dry_run: bool,
    pub snapshots_checked: usize,
    /// Snapshots that had something to remove, and their new copies; the
    /// others are left untouched.
    pub rewritten: Vec<Replaced>,
    pub trees_written: usize,
}

pub fn rewrite(repo: &Repository, options: &RewriteOptions) -> Result<RewriteOutcome> {
    let lock = if options.dry_run { None } else { Some(repo.lock_shared(REWRITE)?) };
    let snapshots = pick_snapshots(repo, &options.snapshots)?;
    let set = repo.reload_blob_set()?;
    let replace = Replace { dry_run: options.dry_run, forget: options.forget, tag: None, empty_unreadable: false };
    let excludes = &options.excludes;
    let mut filter = |path: &Path, _: &Node| excludes.is_excluded(path).then(|| "excluded; removed".to_string());
    let (rewritten, trees_written) = replace_snapshots(repo, &snapshots, set, &replace, lock.as_ref(), &mut filter)?;
    if let Some(lock) = lock {
        lock.release()?;
    }
    Ok(RewriteOutcome { dry_run: options.dry_run, snapshots_checked: snapshots.len(), rewritten, trees_written })
}
