use anyhow::Result;

use crate::cli::{GlobalArgs, UnlockArgs};
use crate::exit;

pub fn run(g: &GlobalArgs, a: &UnlockArgs) -> Result<u8> {
    let repo = crate::repository::open(g)?;
    let observe = if a.wait { repo.lock_settings().stale } else { std::time::Duration::ZERO };
    if a.wait && !g.quiet {
        eprintln!("watching the locks for {}s to see which are still refreshed", observe.as_secs());
    }
    let outcome = repo.unlock(observe, a.remove_all)?;
    if !g.quiet {
        for (who, why) in &outcome.removed {
            println!("removed the stale lock of {who}: {why}");
        }
        if outcome.removed.is_empty()
            && outcome.live.is_empty()
            && outcome.foreign.is_empty()
            && outcome.damaged.is_empty()
        {
            println!("no locks");
        }
    }
    // Damaged locks hold nobody back; they are kept only so that a lock
    // being written as we looked is not removed under its writer.
    for d in &outcome.damaged {
        eprintln!(
            "kept the unreadable object {}: {}; it does not count as a lock. `coffer unlock --wait` removes it \
             once unchanged for the stale time, `--remove-all` at once",
            d.name, d.why
        );
    }
    let mut holders: Vec<String> = outcome.foreign.iter().map(|f| f.describe()).collect();
    holders.extend(outcome.live.iter().map(|l| l.describe()));
    if let Some(first) = holders.first() {
        for h in &holders {
            eprintln!("kept the lock of {h}: it is in use, or not provably stale");
        }
        let hint = if a.wait {
            "; it was refreshed while watched, so its process is running".to_string()
        } else {
            "; a lock of this machine is removed only once its process is gone; for another machine's lock, \
             `coffer unlock --wait` watches it for the stale time first"
                .to_string()
        };
        return Err(coffer_core::Error::Locked { holder: first.clone(), hint }.into());
    }
    Ok(exit::OK)
}
