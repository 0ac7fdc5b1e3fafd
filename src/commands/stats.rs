//! `coffer stats`: sizes as restored, distinct and stored.

use anyhow::Result;
use serde::Serialize;

use crate::cli::{GlobalArgs, StatsArgs};
use crate::exit;
use crate::output::bytes;

#[derive(Serialize)]
struct Report<'a> {
    #[serde(flatten)]
    stats: &'a coffer_core::stats::Stats,
    dedup_ratio: f64,
}

pub fn run(g: &GlobalArgs, a: &StatsArgs) -> Result<u8> {
    let repo = crate::repository::open(g)?;
    let snapshots = if a.snapshots.is_empty() {
        repo.snapshots()?
    } else {
        let mut chosen = Vec::new();
        for spec in &a.snapshots {
            let found = repo.find_snapshot(spec)?;
            if !chosen.iter().any(|(id, _)| *id == found.0) {
                chosen.push(found);
            }
        }
        chosen
    };
    let s = coffer_core::stats::stats(&repo, &snapshots)?;
    if g.json {
        super::print_json(&Report { stats: &s, dedup_ratio: s.dedup_ratio() })?;
        return Ok(exit::OK);
    }
    println!("Snapshots:       {}", s.snapshots);
    println!("Files:           {}", s.files);
    println!("Size restored:   {}", bytes(s.bytes));
    println!("Unique data:     {} in {} chunks", bytes(s.unique_bytes), s.unique_chunks);
    println!("Stored:          {} ({} chunks and {} trees)", bytes(s.stored_bytes), s.unique_chunks, s.trees);
    println!("Dedup ratio:     {:.2}", s.dedup_ratio());
    println!("Repository:      {} in {} packs and {} index objects", bytes(s.pack_bytes), s.packs, s.index_objects);
    if s.missing_objects > 0 {
        eprintln!(
            "warning: {} referenced objects are missing from the repository; run `coffer check`",
            s.missing_objects
        );
    }
    Ok(exit::OK)
}
