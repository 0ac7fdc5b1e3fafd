//! `coffer mount`: the snapshots as a read-only folder, served in the
//! foreground until unmounted (`fusermount3 -u`) or interrupted.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use coffer_fuse::MountOptions;

use crate::cli::{GlobalArgs, MountArgs};
use crate::exit;

pub fn run(g: &GlobalArgs, a: &MountArgs) -> Result<u8> {
    let cache_bytes = coffer_core::exclude::parse_size(&a.cache_size).context("--cache-size")?;
    // Before asking for the password.
    match std::fs::metadata(&a.mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("{}: not a folder; the mount point must be an existing folder", a.mountpoint.display()),
        Err(e) => bail!("{}: {e}; the mount point must be an existing folder", a.mountpoint.display()),
    }
    let repo = Arc::new(crate::repository::open(g)?);
    let options = MountOptions {
        allow_other: a.allow_other,
        cache_bytes,
        no_lock: a.no_lock,
        page_cache: a.page_cache,
        ..MountOptions::default()
    };
    let ready = || {
        if !g.quiet {
            let at = a.mountpoint.display();
            eprintln!("coffer: the snapshots are in {at}; stop with Ctrl-C or `fusermount3 -u {at}`");
        }
    };
    coffer_fuse::serve(repo, &a.mountpoint, &options, ready).map_err(|e| match e {
        // Kept as the library's error, so that a locked repository exits with 11.
        coffer_fuse::MountError::Repository(e) => anyhow::Error::from(e),
        other => other.into(),
    })?;
    Ok(exit::OK)
}
