use anyhow::Result;
use coffer_core::prune;

use crate::cli::{GlobalArgs, PruneArgs};
use crate::exit;
use crate::output::bytes;

pub fn run(g: &GlobalArgs, a: &PruneArgs) -> Result<u8> {
    let repo = crate::repository::open(g)?;
    let outcome = prune::prune(&repo, &a.repack.options(a.dry_run))?;
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
        let (delete, repack) = if dry_run { ("would delete", "would repack") } else { ("deleted", "repacked") };
        println!(
            "packs: {delete} {}, {repack} {} (downloading {}, uploading {}), kept {} with {} unused",
            outcome.packs_deleted,
            outcome.packs_repacked,
            bytes(outcome.bytes_to_download),
            bytes(outcome.bytes_to_upload),
            outcome.packs_kept,
            bytes(outcome.unused_bytes_kept)
        );
        if outcome.cold_packs_not_repacked > 0 {
            println!(
                "{} archived packs with {} unused were kept, not repacked ({})",
                outcome.cold_packs_not_repacked,
                bytes(outcome.cold_unused_bytes_kept),
                if outcome.cold_restores_requested > 0 {
                    format!(
                        "asked the store to restore {}; run prune --repack-cold again once it has",
                        outcome.cold_restores_requested
                    )
                } else {
                    "--repack-cold asks for their restore and repacks them once restored".to_string()
                }
            );
        }
        if outcome.locked_packs_kept > 0 {
            println!(
                "{} packs ({}) are unused or to repack but Object Lock still retains them: kept",
                outcome.locked_packs_kept,
                bytes(outcome.locked_bytes_kept)
            );
            for r in &outcome.reclaimable {
                println!(
                    "  {} in {} packs can be reclaimed by a prune after {}",
                    bytes(r.bytes),
                    r.packs,
                    coffer_core::retention::date(r.until)
                );
            }
        }
    }
    if outcome.missing > 0 {
        eprintln!(
            "warning: {} objects that snapshots reference are missing from the repository; run `coffer check`",
            outcome.missing
        );
    }
    Ok(())
}
