use anyhow::Result;
use coffer_core::restorer::{self, Overwrite, RestoreOptions};
use serde::Serialize;

use crate::cli::{GlobalArgs, OverwriteArg, RestoreArgs};
use crate::exit;
use crate::output::bytes;
use crate::progress::Bar;

#[derive(Serialize)]
struct Report {
    snapshot_id: String,
    files: u64,
    dirs: u64,
    symlinks: u64,
    hardlinks: u64,
    bytes: u64,
    skipped: u64,
    skipped_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    verified_files: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verified_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verify_failures: Option<u64>,
    errors: Vec<String>,
    /// Requests and bytes this command cost, from opening the repository on.
    wire: coffer_core::backend::WireStats,
}

pub fn run(g: &GlobalArgs, a: &RestoreArgs) -> Result<u8> {
    let repo = crate::repository::open(g)?;
    let (id, snap) = repo.find_snapshot(&a.snapshot)?;
    let overwrite = match a.overwrite {
        OverwriteArg::Always => Overwrite::Always,
        OverwriteArg::IfChanged => Overwrite::IfChanged,
        OverwriteArg::Never => Overwrite::Never,
    };
    let options = RestoreOptions {
        target: a.target.clone(),
        includes: a.includes.clone(),
        overwrite,
        verify: a.verify,
        ..RestoreOptions::default()
    };
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
            hardlinks: outcome.hardlinks,
            bytes: outcome.bytes,
            skipped: outcome.skipped,
            skipped_bytes: outcome.skipped_bytes,
            verified_files: a.verify.then_some(outcome.verified_files),
            verified_bytes: a.verify.then_some(outcome.verified_bytes),
            verify_failures: a.verify.then_some(outcome.verify_failures),
            errors: outcome.problems.iter().map(|p| format!("{}: {}", p.path.display(), p.message)).collect(),
            wire: repo.backend().wire_stats(),
        })?;
    } else if !g.quiet {
        let mut line = format!(
            "restored snapshot {} to {}: {} files, {} dirs, {} symlinks",
            id.short(),
            a.target.display(),
            outcome.files,
            outcome.dirs,
            outcome.symlinks
        );
        if outcome.hardlinks > 0 {
            line.push_str(&format!(", {} hard links", outcome.hardlinks));
        }
        line.push_str(&format!(", {} in {:.1} s", bytes(outcome.bytes), start.elapsed().as_secs_f64()));
        println!("{line}");
        if outcome.skipped > 0 {
            println!(
                "left {} existing entries as they were ({} of unchanged files)",
                outcome.skipped,
                bytes(outcome.skipped_bytes)
            );
        }
        if a.verify {
            if outcome.verify_failures == 0 {
                println!(
                    "verified {} files ({}): all as in the snapshot",
                    outcome.verified_files,
                    bytes(outcome.verified_bytes)
                );
            } else {
                println!(
                    "verified {} files ({}); {} differ from the snapshot",
                    outcome.verified_files,
                    bytes(outcome.verified_bytes),
                    outcome.verify_failures
                );
            }
        }
    }
    if !outcome.problems.is_empty() {
        // Warnings were printed as they happened; repeat a count at the end.
        if outcome.verify_failures > 0 {
            eprintln!("error: {} files failed verification", outcome.verify_failures);
        }
        let others = outcome.problems.len() as u64 - outcome.verify_failures;
        if others > 0 {
            eprintln!("error: {others} entries were not restored correctly");
        }
        return Ok(exit::FATAL);
    }
    Ok(exit::OK)
}
