//! `coffer diff`: what changed between two snapshots.

use anyhow::Result;
use coffer_core::diff::{Change, DiffStats};
use serde::Serialize;

use crate::cli::{DiffArgs, GlobalArgs};
use crate::exit;

#[derive(Serialize)]
struct JsonChange<'a> {
    message_type: &'static str,
    #[serde(flatten)]
    change: &'a Change,
}

#[derive(Serialize)]
struct JsonStats<'a> {
    message_type: &'static str,
    source_snapshot: String,
    target_snapshot: String,
    #[serde(flatten)]
    stats: &'a DiffStats,
}

pub fn run(g: &GlobalArgs, a: &DiffArgs) -> Result<u8> {
    let repo = crate::repository::open(g)?;
    let (id1, s1) = repo.find_snapshot(&a.first)?;
    let (id2, s2) = repo.find_snapshot(&a.second)?;
    if !g.json && !g.quiet {
        println!("comparing snapshot {} to {}:\n", id1.short(), id2.short());
    }
    let mut emit = |c: Change| {
        if g.json {
            if let Ok(line) = serde_json::to_string(&JsonChange { message_type: "change", change: &c }) {
                println!("{line}");
            }
        } else if !g.quiet {
            println!("{:<5}{}", c.modifier, c.path);
        }
    };
    let stats = coffer_core::diff::diff(&repo, &s1.tree, &s2.tree, a.metadata, &mut emit)?;
    if g.json {
        let summary = JsonStats {
            message_type: "statistics",
            source_snapshot: id1.to_hex(),
            target_snapshot: id2.to_hex(),
            stats: &stats,
        };
        println!("{}", serde_json::to_string(&summary)?);
    } else if !g.quiet {
        let (ad, rm) = (&stats.added, &stats.removed);
        println!();
        println!("Files:   {} new, {} removed, {} changed", ad.files, rm.files, stats.changed_files);
        println!("Dirs:    {} new, {} removed", ad.dirs, rm.dirs);
        println!("Others:  {} new, {} removed", ad.others, rm.others);
    }
    Ok(exit::OK)
}
