use anyhow::Result;
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
    snaps.retain(|(_, s)| a.host.as_ref().is_none_or(|h| &s.host == h) && tags_match(&a.tags, &s.tags));
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

/// restic's tag filter: each option value is a comma-separated group that a
/// snapshot must have all of; any one group matching is enough.
fn tags_match(groups: &[String], tags: &[String]) -> bool {
    groups.is_empty()
        || groups
            .iter()
            .any(|group| group.split(',').filter(|t| !t.is_empty()).all(|t| tags.iter().any(|have| have == t)))
}

#[cfg(test)]
mod tests {
    use super::tags_match;

    #[test]
    fn tag_groups() {
        let tags = vec!["a".to_string(), "b".to_string()];
        assert!(tags_match(&[], &tags));
        assert!(tags_match(&["a,b".into()], &tags));
        assert!(!tags_match(&["a,c".into()], &tags));
        assert!(tags_match(&["a,c".into(), "b".into()], &tags));
    }
}
