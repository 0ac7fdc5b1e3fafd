//! `coffer check`: verify the repository and name what damage affects.

use anyhow::Result;
use coffer_core::check::ReadData;

use crate::cli::{CheckArgs, GlobalArgs};
use crate::exit;

/// Paths listed per damaged object in the text report; `--json` has all.
const USAGES_SHOWN: usize = 20;

pub fn run(g: &GlobalArgs, a: &CheckArgs) -> Result<u8> {
    let read = match (a.read_data, a.read_data_subset) {
        (_, Some(subset)) => subset,
        (true, None) => ReadData::All,
        (false, None) => ReadData::None,
    };
    let repo = crate::repository::open(g)?;
    // A shared lock keeps prune's delete phase out while checking, so an
    // object prune removes mid-check is never reported as missing.
    let lock = repo.lock_shared("check")?;
    let report = coffer_core::check::check(&repo, read)?;
    if let Err(e) = lock.release() {
        tracing::warn!("could not remove check's lock: {e}");
    }
    if g.json {
        super::print_json(&report)?;
    } else {
        if !g.quiet {
            println!(
                "checked {} snapshots, {} trees, {} chunks in {} packs of {} index objects{}",
                report.snapshots,
                report.trees,
                report.chunks,
                report.packs,
                report.indexes,
                if read == ReadData::None {
                    String::new()
                } else {
                    format!(" ({} packs and {} chunks read)", report.packs_read, report.chunks_read)
                }
            );
        }
        for d in &report.damage {
            eprintln!("error: {} {} is {}", d.kind, d.id, d.problem);
            for u in d.used_by.iter().take(USAGES_SHOWN) {
                eprintln!("  used by snapshot {} at {}", u.snapshot.short(), u.path);
            }
            if d.used_by.len() > USAGES_SHOWN {
                eprintln!("  and {} more", d.used_by.len() - USAGES_SHOWN);
            }
        }
        let (t, c) = (report.unreferenced_trees.len(), report.unreferenced_chunks.len());
        if !g.quiet && t + c > 0 {
            println!("info: {t} trees and {c} chunks are not referenced by any snapshot (a prune removes them)");
        }
        if !g.quiet && !report.unindexed_packs.is_empty() {
            println!(
                "info: {} packs are in no index (an interrupted backup's); the next backup indexes them",
                report.unindexed_packs.len()
            );
        }
        if !g.quiet && !report.stale_indexes.is_empty() {
            println!(
                "info: {} index objects name packs that do not exist (deleted behind coffer's back, or an old index object put back); what those packs held counts as absent, and `coffer repair index` rewrites the index without them",
                report.stale_indexes.len()
            );
        }
        if !g.quiet && report.archived_packs > 0 {
            println!(
                "info: {} packs are in an archive storage class: their listing, lengths and index entries were checked, \
                 not their headers (they cannot be read until restored)",
                report.archived_packs
            );
        }
        if !report.archived_unread.is_empty() {
            eprintln!(
                "warning: {} packs selected for reading are archived and were not read; restore them first \
                 (`coffer restore --warm-up` for a snapshot's), then check them",
                report.archived_unread.len()
            );
        }
        if report.is_clean() {
            if !g.quiet {
                println!("no errors were found");
            }
        } else {
            eprintln!("{} objects are damaged or missing", report.damage.len());
        }
    }
    Ok(if report.is_clean() { exit::OK } else { exit::FATAL })
}
