use anyhow::Result;
use coffer_core::prune::{self, PruneOptions};

use crate::cli::{GlobalArgs, PruneArgs};
use crate::exit;
use crate::output::bytes;

pub fn run(g: &GlobalArgs, a: &PruneArgs) -> Result<u8> {
    let repo = crate::repository::open(g)?;
    let outcome = prune::prune(&repo, &PruneOptions { dry_run: a.dry_run, ..PruneOptions::default() })?;
    report(g, &outcome, a.dry_run)?;
    Ok(exit::OK)
}

/// Prints what a prune did (also after `forget --prune`).
pub fn report(g: &GlobalArgs, outcome: &prune::PruneOutcome, dry_run: bool) -> Result<()> {
    if g.json {
        super::print_json(&outcome)?;
    } else if !g.quiet {
        println!(
            "{} snapshots reference {} trees and {} chunks",
            outcome.snapshots, outcome.trees_kept, outcome.chunks_kept
        );
        if outcome.snapshots_added_meanwhile > 0 {
            println!("{} of them were written while prune was marking", outcome.snapshots_added_meanwhile);
        }
        let verb = if dry_run { "would delete" } else { "deleted" };
        println!(
            "{verb} {} objects ({} trees, {} chunks), {}",
            outcome.trees_deleted + outcome.chunks_deleted,
            outcome.trees_deleted,
            outcome.chunks_deleted,
            bytes(outcome.bytes_deleted)
        );
    }
    if outcome.missing > 0 {
        eprintln!(
            "warning: {} objects that snapshots reference are missing from the repository; run `coffer check`",
            outcome.missing
        );
    }
    Ok(())
}
