//! Where the local cache lives.
//!
//! The cache holds copies of what the repository already has (which chunks
//! exist, snapshots, trees), so that a nightly backup or a prune does not
//! download or list it all again. Nothing in it is trusted more than the
//! repository itself: copies of objects are authenticated on every read like
//! anything fetched, and the chunk set only while the prune generation it was
//! taken under is current (see [`crate::generation`]). Deleting the cache is
//! always safe; it only costs time.
//!
//! Layout: `<base>/<repository id in hex>/…`, one folder per repository, so
//! that two repositories never share entries. The base is the first of
//! `--cache-dir`, `$COFFER_CACHE_DIR`, `$XDG_CACHE_HOME/coffer` and
//! `~/.cache/coffer`.

use std::path::{Path, PathBuf};

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
}
