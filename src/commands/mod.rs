//! One module per subcommand.

mod backup;
mod cat;
mod check;
mod diff;
mod docs;
mod dump;
mod find;
mod forget;
mod init;
mod key;
mod ls;
#[cfg(all(feature = "mount", target_os = "linux"))]
mod mount;
mod prune;
mod repair;
mod restore;
mod rewrite;
mod snapshots;
mod stats;
mod tag;
mod unlock;

use anyhow::Result;

use crate::cli::{Cli, Command};

pub fn run(args: Cli) -> Result<u8> {
    let g = &args.global;
    match &args.command {
        Command::Init(a) => init::run(g, a),
        Command::Backup(a) => backup::run(g, a),
        Command::Snapshots(a) => snapshots::run(g, a),
        Command::Ls(a) => ls::run(g, a),
        Command::Restore(a) => restore::run(g, a),
        Command::Dump(a) => dump::run(g, a),
        Command::Forget(a) => forget::run(g, a),
        Command::Key(c) => key::run(g, c),
        Command::Stats(a) => stats::run(g, a),
        Command::Diff(a) => diff::run(g, a),
        Command::Check(a) => check::run(g, a),
        #[cfg(all(feature = "mount", target_os = "linux"))]
        Command::Mount(a) => mount::run(g, a),
        Command::Prune(a) => prune::run(g, a),
        Command::Repair(c) => repair::run(g, c),
        Command::Rewrite(a) => rewrite::run(g, a),
        Command::Unlock(a) => unlock::run(g, a),
        Command::Find(a) => find::run(g, a),
        Command::Tag(a) => tag::run(g, a),
        Command::Cat(a) => cat::run(g, a),
        Command::Completions(a) => docs::completions(a),
        Command::Man(a) => docs::man(a),
        Command::Version => docs::version(g),
    }
}

/// The snapshots `specs` name (ids, prefixes, `latest`), each once, in the
/// order given; every snapshot when `specs` is empty.
pub fn chosen_snapshots(
    repo: &coffer_core::Repository,
    specs: &[String],
) -> Result<Vec<(coffer_core::Id, coffer_core::snapshot::Snapshot)>> {
    if specs.is_empty() {
        return Ok(repo.snapshots()?);
    }
    let mut chosen: Vec<(coffer_core::Id, coffer_core::snapshot::Snapshot)> = Vec::new();
    for spec in specs {
        let found = repo.find_snapshot(spec)?;
        if !chosen.iter().any(|(id, _)| *id == found.0) {
            chosen.push(found);
        }
    }
    Ok(chosen)
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Splits `--tag`-style values into tag lists: each value is one list of
/// comma-separated tags, trimmed, as restic (`''` is the list matching
/// untagged snapshots).
pub fn tag_lists(values: &[String]) -> Vec<Vec<String>> {
    values.iter().map(|v| v.split(',').map(|t| t.trim().to_string()).collect()).collect()
}
