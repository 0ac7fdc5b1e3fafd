//! One module per subcommand.

mod backup;
mod dump;
mod init;
mod ls;
mod prune;
mod restore;
mod snapshots;
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
        Command::Prune(a) => prune::run(g, a),
        Command::Unlock(a) => unlock::run(g, a),
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
