//! `coffer find`: files matching a pattern, snapshot by snapshot.

use anyhow::Result;
use coffer_core::find::{Pattern, find};

use crate::cli::{FindArgs, GlobalArgs};
use crate::exit;
use crate::output::bytes;

pub fn run(g: &GlobalArgs, a: &FindArgs) -> Result<u8> {
    let pattern = Pattern::new(&a.pattern, a.ignore_case)?;
    let repo = crate::repository::open(g)?;
    let snapshots = super::chosen_snapshots(&repo, &a.snapshots)?;
    let found = find(&repo, &snapshots, &pattern)?;
    if g.json {
        super::print_json(&found)?;
        return Ok(exit::OK);
    }
    let mut current = None;
    for f in &found {
        if current != Some(f.snapshot) {
            current = Some(f.snapshot);
            let time = snapshots.iter().find(|(id, _)| *id == f.snapshot).map(|(_, s)| s.time.as_str()).unwrap_or("");
            println!("snapshot {} of {}:", f.snapshot.short(), crate::output::local_time(time));
        }
        let size = if f.kind == coffer_core::tree::NodeKind::File { bytes(f.size) } else { String::new() };
        println!("  {}  {size}", f.path);
    }
    if !g.quiet {
        let snaps = {
            let mut ids: Vec<_> = found.iter().map(|f| f.snapshot).collect();
            ids.dedup();
            ids.len()
        };
        eprintln!("{} matches in {snaps} of {} snapshots", found.len(), snapshots.len());
    }
    Ok(exit::OK)
}
