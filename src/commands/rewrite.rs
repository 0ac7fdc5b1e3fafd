//! `coffer rewrite`: remove paths from existing snapshots.

use anyhow::{Result, bail};
use coffer_core::rewrite::{RewriteOptions, rewrite};

use crate::cli::{GlobalArgs, RewriteArgs};
use crate::exit;

pub fn run(g: &GlobalArgs, a: &RewriteArgs) -> Result<u8> {
    let excludes = a.patterns.excludes()?;
    if excludes.is_empty() {
        bail!("nothing to remove: give --exclude, --iexclude or --exclude-file");
    }
    let repo = crate::repository::open(g)?;
    let options = RewriteOptions { dry_run: a.dry_run, forget: a.forget, snapshots: a.snapshots.clone(), excludes };
    let o = rewrite(&repo, &options)?;
    if g.json {
        super::print_json(&o)?;
        return Ok(exit::OK);
    }
    super::repair::print_replaced(g, &o.rewritten, o.dry_run, "rewritten");
    if !g.quiet {
        let untouched = o.snapshots_checked - o.rewritten.len();
        println!("{} snapshots rewritten, {untouched} had nothing to remove", o.rewritten.len());
        if a.forget && !o.dry_run && !o.rewritten.is_empty() {
            println!("the originals were removed; `coffer prune` frees the space only they used");
        }
    }
    Ok(exit::OK)
}
