//! `coffer completions`, `coffer man` and `coffer version`: what the
//! command line knows about itself, generated from the clap definitions
//! that parse it, so they never drift from `--help`.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use serde::Serialize;

use crate::cli::{Cli, CompletionsArgs, GlobalArgs, ManArgs};
use crate::exit;

pub fn completions(a: &CompletionsArgs) -> Result<u8> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "coffer", &mut out);
    print(&out)?;
    Ok(exit::OK)
}

/// Writes to standard output; a reader that went away (`| head`) is no error.
fn print(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to standard output"),
        _ => Ok(()),
    }
}

pub fn man(a: &ManArgs) -> Result<u8> {
    let cmd = Cli::command();
    match &a.dir {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            print(&out)?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            write_pages(&cmd, "coffer", dir)?;
        }
    }
    Ok(exit::OK)
}

/// Writes `NAME.1` for `cmd` and, below it, `NAME-SUB.1` for each of its
/// subcommands (`coffer-key-add.1`).
fn write_pages(cmd: &clap::Command, name: &str, dir: &Path) -> Result<()> {
    let page = cmd.clone().name(name.to_string());
    let path = dir.join(format!("{name}.1"));
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}

#[derive(Serialize)]
struct Version {
    version: &'static str,
    /// The repository format this build writes (and the only one it reads).
    format: u32,
    features: Vec<&'static str>,
}

pub fn version(g: &GlobalArgs) -> Result<u8> {
    let mut features = Vec::new();
    if cfg!(all(feature = "mount", target_os = "linux")) {
        features.push("mount");
    }
    features.push("s3");
    let v = Version { version: env!("CARGO_PKG_VERSION"), format: coffer_core::config::FORMAT_VERSION, features };
    if g.json {
        super::print_json(&v)?;
    } else {
        println!("coffer {}", v.version);
        println!("repository format {}", v.format);
        println!("features: {}", v.features.join(", "));
    }
    Ok(exit::OK)
}
