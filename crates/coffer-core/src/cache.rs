//! Where the local cache lives.
//!
//! The cache holds copies of what the repository already has (index
//! objects, trees, snapshots), so that a nightly backup or a prune does not
//! download it all again. Nothing in it is trusted more than the repository
//! itself: copies are authenticated on every read like anything fetched,
//! and which objects exist always comes from a fresh listing, never from
//! the cache. Deleting the cache is always safe; it only costs time.
//!
//! Layout: `<base>/<repository id in hex>/…`, one folder per repository, so
//! that two repositories never share entries. The base is the first of
//! `--cache-dir`, `$COFFER_CACHE_DIR`, `$XDG_CACHE_HOME/coffer` and
//! `~/.cache/coffer`.

use std::path::{Path, PathBuf};

use crate::crypto::ObjectKind;
use crate::id::Id;

/// The base folder that holds every repository's cache, as the XDG base
/// directory specification places it; `None` when there is no home to put
/// it in (the cache is then off).
pub fn default_base() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("COFFER_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).filter(|d| d.is_absolute()) {
        return Some(dir.join("coffer"));
    }
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|home| Path::new(&home).join(".cache").join("coffer"))
}

/// The folder for one repository's cache under `base`.
pub fn repository_dir(base: &Path, repo_id: &[u8; 32]) -> PathBuf {
    base.join(hex::encode(repo_id))
}

/// Marks `base` as a cache folder (CACHEDIR.TAG), so that backup tools,
/// coffer's own `--exclude-caches` among them, skip it.
pub fn tag(base: &Path) -> std::io::Result<()> {
    let path = base.join("CACHEDIR.TAG");
    if path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(base)?;
    std::fs::write(
        path,
        "Signature: 8a477f597d28d172789f06886806bc55\n\
         # This file is a cache directory tag created by coffer.\n\
         # For information about cache directory tags, see https://bford.info/cachedir/\n",
    )
}

/// Where the copy of a tree, index object or snapshot lives in a repository's cache
/// folder: `trees/<xx>/<id>`, `index/<id>` or `snapshots/<id>`.
/// Trees are immutable and content-addressed, so a copy is right for as
/// long as anything references it. Snapshots are immutable too, but can be
/// forgotten: which snapshots exist always comes from a listing of the
/// repository, never from the cache (see [`retain`]).
pub fn object_path(dir: &Path, kind: ObjectKind, id: &Id) -> Option<PathBuf> {
    match kind {
        // Index objects are immutable and named by their content, as trees.
        ObjectKind::Tree | ObjectKind::Snapshot | ObjectKind::Index => {
            Some(dir.join(crate::repo::object_key(kind, id)))
        }
        _ => None,
    }
}

/// Drops the cached snapshots or index objects that a fresh listing of the
/// repository no longer has (forgotten or pruned, here or by another
/// machine), so the cache does not keep them forever. `listed` is sorted,
/// as [`crate::Repository::list_ids`] returns it. A copy written meanwhile
/// by another process for an object newer than `listed` may go too; that
/// only costs a download.
pub fn retain(dir: &Path, kind: ObjectKind, listed: &[Id]) {
    let folder = match kind {
        ObjectKind::Snapshot => "snapshots",
        ObjectKind::Index => "index",
        _ => return,
    };
    let Ok(entries) = std::fs::read_dir(dir.join(folder)) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(Id::from_hex) else { continue };
        if listed.binary_search(&id).is_err() {
            tracing::debug!("dropping the cached copy of {} {id}: no longer in the repository", kind.name());
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The cached stored bytes of an object, if there are any. The caller
/// authenticates them exactly as if they had been fetched.
pub fn read(dir: &Path, kind: ObjectKind, id: &Id) -> Option<Vec<u8>> {
    std::fs::read(object_path(dir, kind, id)?).ok()
}

/// Keeps a copy of an object's stored bytes. Written to a temporary name and
/// renamed, so a reader never sees part of one; not fsynced, as a lost copy
/// only costs a download. Failures are logged and otherwise ignored.
pub fn write(dir: &Path, kind: ObjectKind, id: &Id, stored: &[u8]) {
    let Some(path) = object_path(dir, kind, id) else { return };
    let result = (|| {
        let parent = path.parent().ok_or_else(|| std::io::Error::other("no parent folder"))?;
        std::fs::create_dir_all(parent)?;
        let mut rnd = [0u8; 8];
        crate::crypto::fill_random(&mut rnd);
        let tmp = parent.join(format!(".tmp-{}", hex::encode(rnd)));
        std::fs::write(&tmp, stored)?;
        std::fs::rename(&tmp, &path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    })();
    if let Err(e) = result {
        tracing::debug!("cannot cache {}: {e}", path.display());
    }
}

/// Drops the copy of an object (it is damaged, or gone from the repository).
pub fn remove(dir: &Path, kind: ObjectKind, id: &Id) {
    if let Some(path) = object_path(dir, kind, id) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_folder_per_repository_and_a_cachedir_tag() {
        let dir = tempfile::tempdir().unwrap();
        let a = repository_dir(dir.path(), &[1; 32]);
        let b = repository_dir(dir.path(), &[2; 32]);
        assert_ne!(a, b);
        assert!(a.starts_with(dir.path()));
        tag(dir.path()).unwrap();
        // The exact signature is what --exclude-caches looks for.
        assert!(crate::exclude::Excludes::default().caches().is_tagged_dir(dir.path()));
    }

    #[test]
    fn snapshots_not_listed_are_dropped_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, gone) = (Id([1; 32]), Id([2; 32]));
        for id in [kept, gone] {
            write(dir.path(), ObjectKind::Snapshot, &id, b"sealed");
        }
        let stray = dir.path().join("snapshots").join("not-an-id");
        std::fs::write(&stray, b"x").unwrap();
        retain(dir.path(), ObjectKind::Snapshot, &[Id([0; 32]), kept]);
        assert_eq!(read(dir.path(), ObjectKind::Snapshot, &kept).as_deref(), Some(&b"sealed"[..]));
        assert_eq!(read(dir.path(), ObjectKind::Snapshot, &gone), None);
        assert!(stray.exists(), "only snapshot names are touched");
    }
}
