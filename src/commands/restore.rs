use anyhow::Result;
use coffer_core::restorer::{self, RestoreOptions};
use serde::Serialize;

use crate::cli::{GlobalArgs, RestoreArgs};
use crate::exit;
use crate::output::bytes;
use crate::progress::Bar;

#[derive(Serialize)]
struct Report {
    snapshot_id: String,
    files: u64,
    dirs: u64,
    symlinks: u64,
    bytes: u64,
    errors: Vec<String>,
}

pub fn run(g: &GlobalArgs, a: &RestoreArgs) -> Result<u8> {
    let repo = crate::repository::open(g)?;
    let (id, snap) = repo.find_snapshot(&a.snapshot)?;
    let options = RestoreOptions { target: a.target.clone(), includes: a.includes.clone(), concurrency: 0 };
    let bar = Bar::new(!g.quiet && !g.json, "restore");
    let start = std::time::Instant::now();
    let result = restorer::restore(&repo, &snap.tree, &options, &bar);
    bar.finish();
    let outcome = result?;
    if g.json {
        super::print_json(&Report {
            snapshot_id: id.to_hex(),
            files: outcome.files,
            dirs: outcome.dirs,
            symlinks: outcome.symlinks,
            bytes: outcome.bytes,
            errors: outcome.problems.iter().map(|p| format!("{}: {}", p.path.display(), p.message)).collect(),
        })?;
    } else if !g.quiet {
        println!(
            "restored snapshot {} to {}: {} files, {} dirs, {} symlinks, {} in {:.1} s",
            id.short(),
            a.target.display(),
            outcome.files,
            outcome.dirs,
            outcome.symlinks,
            bytes(outcome.bytes),
            start.elapsed().as_secs_f64()
        );
    }
    if !outcome.problems.is_empty() {
        // Warnings were printed as they happened; repeat a count at the end.
        eprintln!("error: {} entries were not restored correctly", outcome.problems.len());
        return Ok(exit::FATAL);
    }
    Ok(exit::OK)
}
