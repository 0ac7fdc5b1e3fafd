//! `coffer repair index|packs|snapshots`: put a damaged repository back
//! into a consistent state, naming everything that was lost.

use anyhow::Result;
use coffer_core::repair::{self, IndexRepairOptions, PackRepairOptions, Replaced, SnapshotRepairOptions};

use crate::cli::{GlobalArgs, RepairCommand};
use crate::exit;

pub fn run(g: &GlobalArgs, c: &RepairCommand) -> Result<u8> {
    let repo = crate::repository::open(g)?;
    match c {
        RepairCommand::Index(a) => {
            let o = repair::repair_index(&repo, &IndexRepairOptions { dry_run: a.dry_run })?;
            if g.json {
                super::print_json(&o)?;
                return Ok(exit::OK);
            }
            for p in &o.unreadable_packs {
                eprintln!("warning: {} {} cannot be read: {}; run `coffer repair packs`", p.kind, p.id, p.problem);
            }
            for id in &o.unreadable_indexes {
                eprintln!("warning: index {id} cannot be read; it is replaced");
            }
            if !g.quiet {
                println!(
                    "read the headers of {} of {} packs: {} chunks and trees indexed, {} that the index lacked",
                    o.packs_read, o.packs_listed, o.blobs_indexed, o.blobs_added
                );
                println!("{} index entries named packs that are not stored", o.entries_dropped);
                let (wrote, removed) = if o.dry_run { ("would write", "would remove") } else { ("wrote", "removed") };
                println!(
                    "{wrote} {} index objects, {removed} {} old ones",
                    o.index_objects_written, o.index_objects_removed
                );
            }
        }
        RepairCommand::Packs(a) => {
            let options = PackRepairOptions { dry_run: a.dry_run, packs: a.packs.clone() };
            let o = repair::repair_packs(&repo, &options)?;
            if g.json {
                super::print_json(&o)?;
                return Ok(exit::OK);
            }
            if !g.quiet && o.packs_checked > 0 {
                println!("read {} packs", o.packs_checked);
            }
            for p in &o.damaged {
                eprintln!("{} {}: {}", p.kind, p.id, p.problem);
            }
            for b in &o.blobs_lost {
                eprintln!("lost: {} {} of pack {} ({})", b.kind, b.id, b.pack.short(), b.problem);
            }
            if !g.quiet {
                if o.damaged.is_empty() {
                    println!("no damaged pack found");
                    return Ok(exit::OK);
                }
                let verb = if o.dry_run { "would salvage" } else { "salvaged" };
                println!(
                    "{verb} {} chunks and trees into {} new packs ({} more are stored elsewhere); {} lost",
                    o.blobs_salvaged,
                    o.packs_written,
                    o.blobs_stored_elsewhere,
                    o.blobs_lost.len()
                );
                let verb = if o.dry_run { "would delete" } else { "deleted" };
                println!("{verb} {} damaged packs", o.packs_deleted);
                if !o.blobs_lost.is_empty() {
                    println!(
                        "the next backup stores again what its sources still have; \
                         `coffer repair snapshots` repairs the snapshots that used the rest"
                    );
                }
            }
        }
        RepairCommand::Snapshots(a) => {
            let options =
                SnapshotRepairOptions { dry_run: a.dry_run, forget: a.forget, snapshots: a.snapshots.clone() };
            let o = repair::repair_snapshots(&repo, &options)?;
            // With or without --json, a snapshot left unrepaired is a failure.
            let code = if o.unrepairable.is_empty() { exit::OK } else { exit::FATAL };
            if g.json {
                super::print_json(&o)?;
                return Ok(code);
            }
            for u in &o.unrepairable {
                eprintln!(
                    "error: snapshot {} cannot be repaired: {}; `coffer forget` it",
                    u.snapshot.short(),
                    u.problem
                );
            }
            print_replaced(g, &o.repaired, o.dry_run, "repaired");
            if !g.quiet {
                println!(
                    "checked {} snapshots: {} lost data{}",
                    o.snapshots_checked,
                    o.repaired.len(),
                    if o.dry_run { " (nothing written)" } else { "" }
                );
            }
            return Ok(code);
        }
    }
    Ok(exit::OK)
}

/// Prints each replaced snapshot and every path changed in it (on standard
/// output unless `--quiet`: what a rewrite or repair changed is never
/// silent, so with `--quiet` it goes to standard error).
pub fn print_replaced(g: &GlobalArgs, replaced: &[Replaced], dry_run: bool, what: &str) {
    let out = |line: String| if g.quiet { eprintln!("{line}") } else { println!("{line}") };
    for r in replaced {
        match (&r.new, dry_run) {
            (Some(new), _) => out(format!(
                "snapshot {} {what} as {}{}:",
                r.original.short(),
                new.short(),
                if r.forgotten { ", the original removed" } else { "" }
            )),
            _ => out(format!("snapshot {} would be {what}:", r.original.short())),
        }
        for c in &r.changes {
            out(format!("  {}: {}", c.path, c.problem));
        }
    }
}
