use anyhow::Result;
use coffer_core::snapshot::SnapshotFilter;
use serde::Serialize;

use crate::cli::{GlobalArgs, SnapshotsArgs};
use crate::exit;
use crate::output::{bytes, local_time, table};

#[derive(Serialize)]
struct Listed<'a> {
    id: String,
    short_id: String,
    #[serde(flatten)]
    snapshot: &'a coffer_core::snapshot::Snapshot,
}

pub fn run(g: &GlobalArgs, a: &SnapshotsArgs) -> Result<u8> {
    let repo = crate::repository::open(g)?;
    let mut snaps = repo.snapshots()?;
    let filter = SnapshotFilter { hosts: a.hosts.clone(), tags: super::tag_lists(&a.tags), paths: a.paths.clone() };
    snaps.retain(|(_, s)| filter.matches(s));
    if g.json {
        let list: Vec<Listed> =
            snaps.iter().map(|(id, s)| Listed { id: id.to_hex(), short_id: id.short(), snapshot: s }).collect();
        super::print_json(&list)?;
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = snaps
        .iter()
        .map(|(id, s)| {
            vec![
                id.short(),
                local_time(&s.time),
                s.host.clone(),
                s.tags.join(","),
                s.paths.join(" "),
                bytes(s.summary.bytes_total),
            ]
        })
        .collect();
    print!("{}", table(&["ID", "Time", "Host", "Tags", "Paths", "Size"], &rows));
    println!("{} snapshots", snaps.len());
    Ok(exit::OK)
}
