use anyhow::Result;

use crate::cli::{GlobalArgs, UnlockArgs};
use crate::exit;

pub fn run(g: &GlobalArgs, a: &UnlockArgs) -> Result<u8> {
    let repo = crate::repository::open(g)?;
    let observe = if a.wait { repo.lock_settings().stale } else { std::time::Duration::ZERO };
    if a.wait && !g.quiet {
        eprintln!("watching the locks for {}s to see which are still refreshed", observe.as_secs());
    }
    let outcome = repo.unlock(observe)?;
    if !g.quiet {
        for (who, why) in &outcome.removed {
            println!("removed the stale lock of {who}: {why}");
        }
        if outcome.removed.is_empty() && outcome.live.is_empty() {
            println!("no locks");
        }
    }
    if let Some(first) = outcome.live.first() {
        for l in &outcome.live {
            eprintln!("kept the lock of {}: it is in use, or not provably stale", l.describe());
        }
        let hint = if a.wait {
            "; it was refreshed while watched, so its process is running".to_string()
        } else {
            "; a lock of this machine is removed only once its process is gone; for another machine's lock, \
             `coffer unlock --wait` watches it for the stale time first"
                .to_string()
        };
        return Err(coffer_core::Error::Locked { holder: first.describe(), hint }.into());
    }
    Ok(exit::OK)
}
