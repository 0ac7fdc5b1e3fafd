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
    if a.cost {
        return cost(g, a, &repo);
    }
    let snapshots = super::chosen_snapshots(&repo, &a.snapshots)?;
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

/// The folders of a repository, in the order the cost report lists them.
const FOLDERS: [&str; 6] = ["data/", "tree/", "index/", "snapshots/", "keys/", "locks/"];

/// Days a restored copy is assumed kept in the read-back estimate.
const RESTORE_DAYS: u32 = 7;

/// `stats --cost`: the bill of every object the repository holds.
fn cost(g: &GlobalArgs, a: &StatsArgs, repo: &coffer_core::Repository) -> Result<u8> {
    let table = crate::prices::load(a.prices.as_deref())?;
    let backend = repo.backend();
    let has_classes = backend.storage_classes().is_some();
    // A local folder has no classes: its objects are priced as an upload
    // to S3 would store them (data packs in the class the repository
    // records, the rest in STANDARD).
    let recorded = repo.config().data_storage_class.clone().unwrap_or_else(|| "STANDARD".into());
    let mut objects: Vec<(String, u64)> = Vec::new();
    for folder in FOLDERS {
        for e in repo.runtime().block_on(backend.list(folder))? {
            let class = e.storage_class.clone().unwrap_or_else(|| {
                if folder == "data/" && !has_classes { recorded.clone() } else { "STANDARD".into() }
            });
            objects.push((class, e.size));
        }
    }
    let config = repo.runtime().block_on(backend.get(coffer_core::config::NAME, coffer_core::config::MAX_STORED))?;
    objects.push(("STANDARD".into(), config.len() as u64));
    let bill = coffer_core::pricing::bill(objects, &table, RESTORE_DAYS);
    if g.json {
        super::print_json(&bill)?;
        return Ok(exit::OK);
    }
    let money = |v: f64| crate::prices::money(v, &bill.currency);
    if !has_classes {
        println!("{} is a local folder: priced as if uploaded to S3 (data packs in {recorded})", backend.location());
    }
    println!("Prices:  {}", bill.source);
    println!("Stored:  {} objects, {}; about {} a month", bill.objects, bytes(bill.bytes), money(bill.monthly));
    for c in &bill.classes {
        let unpriced = if c.priced { "" } else { " (no prices for this class: priced as STANDARD)" };
        println!(
            "  {:<20} {:>8} objects {:>12} (billed as {}): {} a month; uploading them cost {}{unpriced}",
            c.class,
            c.usage.objects,
            bytes(c.usage.bytes),
            bytes(c.usage.billable_bytes + c.usage.standard_overhead_bytes),
            money(c.monthly),
            money(c.upload),
        );
        let reads: Vec<String> = c.read_back.iter().map(|(how, v)| format!("{how} {}", money(*v))).collect();
        if !reads.is_empty() {
            println!("  {:<20} reading all of it back, download included: {}", "", reads.join(", "));
        }
    }
    if bill.classes.iter().any(|c| coffer_core::backend::is_archive_class(&c.class)) {
        println!(
            "Read-back figures of archive classes include restore requests, retrieval and the restored copies kept {RESTORE_DAYS} days."
        );
    }
    Ok(exit::OK)
}
