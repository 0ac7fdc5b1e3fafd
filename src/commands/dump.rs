//! `coffer dump`: a file's content, or a folder as a tar archive, on
//! standard output (or into a file).

use std::io::{IsTerminal, Write};

use anyhow::{Context, Result, bail};
use coffer_core::dump::{self, DumpOptions};

use crate::cli::{DumpArgs, GlobalArgs};
use crate::exit;

pub fn run(g: &GlobalArgs, a: &DumpArgs) -> Result<u8> {
    let repo = crate::repository::open(g)?;
    let (_, snap) = repo.find_snapshot(&a.snapshot)?;
    let what = dump::find(&repo, &snap.tree, &a.path)?;
    let options = DumpOptions::default();
    let result = match &a.target {
        Some(path) => {
            let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            let result = dump::write(&repo, &what, &mut out, &options);
            drop(out);
            if result.is_err() {
                // Half a file or archive is worse than none.
                let _ = std::fs::remove_file(path);
            }
            result
        }
        None => {
            let stdout = std::io::stdout();
            if what.is_archive() && stdout.is_terminal() {
                bail!(
                    "{} is a folder: refusing to write a tar archive to a terminal (redirect the output, or use --target FILE)",
                    a.path.display()
                );
            }
            let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            let result = dump::write(&repo, &what, &mut out, &options);
            let _ = out.flush();
            result
        }
    };
    match result {
        Ok(_) => Ok(exit::OK),
        // The reader went away (`coffer dump … | head`): nothing to report.
        Err(coffer_core::Error::Io { error, .. }) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(exit::FATAL),
        Err(e) => Err(e.into()),
    }
}
