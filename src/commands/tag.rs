//! `coffer tag`: change the tags of snapshots. A snapshot's id is the hash
//! of its content, so each changed snapshot is written anew (naming the old
//! one in `original`, as `rewrite` does) and the old one removed.

use anyhow::{Result, bail};
use serde::Serialize;

use crate::cli::{GlobalArgs, TagArgs};
use crate::exit;

#[derive(Serialize)]
struct Changed {
    old: String,
    new: Option<String>,
    tags: Vec<String>,
}

pub fn run(g: &GlobalArgs, a: &TagArgs) -> Result<u8> {
    if a.add.is_empty() && a.remove.is_empty() && a.set.is_none() {
        bail!("nothing to do: give --add, --remove or --set");
    }
    let repo = crate::repository::open(g)?;
    let lock = if a.dry_run { None } else { Some(repo.lock_shared("tag")?) };
    let snapshots = super::chosen_snapshots(&repo, &a.snapshots)?;
    let clean = |tags: &[String]| -> Vec<String> {
        tags.iter().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect()
    };
    let mut changed = Vec::new();
    for (id, snap) in &snapshots {
        let mut tags = match &a.set {
            Some(set) => clean(set),
            None => snap.tags.clone(),
        };
        for t in clean(&a.remove) {
            tags.retain(|x| *x != t);
        }
        for t in clean(&a.add) {
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
        if tags == snap.tags {
            continue;
        }
        let mut new = snap.clone();
        new.tags = tags.clone();
        new.original = Some(snap.original.unwrap_or(*id));
        let new_id = match &lock {
            None => None,
            Some(lock) => {
                lock.alive()?;
                let new_id = repo.save_snapshot(&new)?;
                repo.remove_snapshot(id)?;
                repo.forgotten(std::slice::from_ref(id));
                Some(new_id)
            }
        };
        if !g.json && !g.quiet {
            match new_id {
                Some(n) => println!("snapshot {} is now {} with tags [{}]", id.short(), n.short(), tags.join(",")),
                None => println!("would give snapshot {} tags [{}]", id.short(), tags.join(",")),
            }
        }
        changed.push(Changed { old: id.to_hex(), new: new_id.map(|n| n.to_hex()), tags });
    }
    if let Some(lock) = lock
        && let Err(e) = lock.release()
    {
        tracing::warn!("could not remove tag's lock: {e}");
    }
    if g.json {
        super::print_json(&changed)?;
    } else if !g.quiet && changed.is_empty() {
        println!("no snapshot changed");
    }
    Ok(exit::OK)
}
