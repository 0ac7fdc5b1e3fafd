//! S3 Object Lock: objects no key can delete or overwrite before their
//! retention ends, so that ransomware holding this machine's credentials
//! (even ones that may delete) cannot destroy its backups.
//!
//! A repository initialised with `--object-lock DAYS` records the days and
//! the mode in its config. Every object but locks is uploaded retained for
//! DAYS from its upload (see the S3 backend), and after each backup
//! [`extend_for_snapshot`] moves the retention of everything the new
//! snapshot uses (its packs, the index objects naming them, the snapshot,
//! the config and the keys) to DAYS from now, so that the latest backup is
//! always whole for at least DAYS. Extending every object every night
//! would cost a request each, so an object is extended only when less
//! than DAYS minus a renewal margin (a tenth of DAYS, at least a day) is
//! left: nightly backups then extend each object about once every margin.
//!
//! Which retention each object has is remembered on this host (in the
//! state folder, `<state>/<repository id>/retention`), from what it set
//! or read; an object it knows nothing of is asked about (one HEAD) before
//! it is extended. The record only saves requests: a wrong one can at
//! worst make a backup extend an object that did not need it.
//!
//! Deleting is the other half. Prune and forget ask the store, before they
//! delete an object, until when it is retained, and leave those still
//! retained where they are (a versioned bucket would take the delete and
//! keep the object anyway, hidden and billed); they say what they kept
//! and when a later run can reclaim it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use futures_util::StreamExt;

use crate::backend::{BackendError, ObjectLock};
use crate::crypto::ObjectKind;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::pack::pack_key;
use crate::repo::{Repository, object_key};

const HEADER: &str = "coffer retention 1";

/// What this host knows of objects' retentions, for one repository.
pub struct RetentionRecord {
    path: PathBuf,
    until: BTreeMap<String, i64>,
}

impl RetentionRecord {
    pub fn load(base: &Path, repo_id: &[u8; 32]) -> RetentionRecord {
        let path = base.join(hex::encode(repo_id)).join("retention");
        let mut until = BTreeMap::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            let mut lines = text.lines();
            if lines.next() == Some(HEADER) {
                for line in lines {
                    if let Some((key, t)) = line.rsplit_once(' ')
                        && let Ok(t) = t.parse()
                    {
                        until.insert(key.to_string(), t);
                    }
                }
            }
        }
        RetentionRecord { path, until }
    }

    /// Writes the record (atomically), dropping what has expired.
    fn save(&mut self, now: i64) {
        self.until.retain(|_, t| *t > now);
        let mut text = format!("{HEADER}\n");
        for (key, t) in &self.until {
            text.push_str(&format!("{key} {t}\n"));
        }
        if let Err(e) = crate::state::write_atomically(&self.path, &text) {
            tracing::warn!("cannot save {}: {e}", self.path.display());
        }
    }
}

/// What [`extend_for_snapshot`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Extended {
    /// Objects the snapshot relies on.
    pub objects: usize,
    /// Whose retention was moved, and those the store was asked about.
    pub extended: usize,
    pub asked: usize,
    /// Every one of them is retained at least until this time (seconds
    /// since the epoch).
    pub retained_until: i64,
}

/// What happened to one object: its retention end, whether it was
/// extended, whether the store was asked about it.
type Step = (i64, bool, bool);

/// Days before the end of its retention at which an object is extended.
fn margin_days(lock: ObjectLock) -> i64 {
    i64::from((lock.days / 10).max(1)).min(i64::from(lock.days))
}

/// Extends the retention of everything snapshot `id` relies on to the
/// repository's Object Lock days from now (see the module's doc). `None`
/// when the repository has no Object Lock.
pub fn extend_for_snapshot(repo: &Repository, id: &Id, record: &mut RetentionRecord) -> Result<Option<Extended>> {
    let Some(lock) = repo.config().object_lock else { return Ok(None) };
    let backend = repo.backend();
    let Some(retention) = backend.retention() else { return Ok(None) };
    let keys = relied_on(repo, id)?;
    let now = jiff::Timestamp::now().as_second();
    let target = now + i64::from(lock.days) * 86_400;
    let renew_before = target - margin_days(lock) * 86_400;
    let todo: Vec<String> =
        keys.iter().filter(|k| record.until.get(*k).is_none_or(|t| *t < renew_before)).cloned().collect();
    let width = backend.concurrency().max(1);
    let results: Vec<(String, std::result::Result<Step, BackendError>)> = repo.runtime().block_on(
        futures_util::stream::iter(todo)
            .map(|key| {
                let known = record.until.contains_key(&key);
                async move {
                    let outcome = async {
                        // Unknown here: ask first, a HEAD is cheaper than a PUT.
                        if !known
                            && let Some(t) = retention.retained_until(&key).await?
                            && t >= renew_before
                        {
                            return Ok((t, false, true));
                        }
                        retention.extend_retention(&key, target, lock.mode).await?;
                        Ok((target, true, !known))
                    }
                    .await;
                    (key, outcome)
                }
            })
            .buffer_unordered(width)
            .collect(),
    );
    let mut out = Extended { objects: keys.len(), retained_until: target, ..Default::default() };
    let mut first_error = None;
    for (key, result) in results {
        match result {
            Ok((until, extended, asked)) => {
                out.extended += usize::from(extended);
                out.asked += usize::from(asked);
                out.retained_until = out.retained_until.min(until);
                record.until.insert(key, until);
            }
            // Gone since it was listed (a prune elsewhere): nothing to keep.
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                first_error.get_or_insert((key, e));
            }
        }
    }
    for key in &keys {
        if let Some(t) = record.until.get(key) {
            out.retained_until = out.retained_until.min(*t);
        }
    }
    record.save(now);
    if let Some((key, e)) = first_error {
        return Err(Error::InvalidInput(format!("could not extend the retention of {key}: {e}")));
    }
    Ok(Some(out))
}

/// The keys of every object snapshot `id` relies on.
fn relied_on(repo: &Repository, id: &Id) -> Result<Vec<String>> {
    let options = crate::index::LoadOptions { keep_objects: true, ..Default::default() };
    let loaded = repo.runtime().block_on(crate::index::load_with(repo, options))?;
    let set = repo.set_blob_set(loaded.blobs);
    let mut marks = crate::prune::Marks::default();
    crate::prune::mark_snapshots(repo, &HashSet::from([*id]), &mut marks, None)?;
    let mut packs = HashSet::new();
    for (kind, ids) in [(ObjectKind::Tree, &marks.trees), (ObjectKind::Chunk, &marks.chunks)] {
        for blob in ids {
            if let Some(loc) = set.get(kind, blob) {
                packs.insert((loc.kind, loc.pack));
            }
        }
    }
    let mut keys: Vec<String> = packs.iter().map(|(kind, pack)| pack_key(*kind, pack)).collect();
    let used: HashSet<Id> = packs.iter().map(|(_, p)| *p).collect();
    for (index, contents) in &loaded.objects {
        if contents.packs.iter().any(|p| used.contains(&p.id)) {
            keys.push(object_key(ObjectKind::Index, index));
        }
    }
    keys.push(object_key(ObjectKind::Snapshot, id));
    keys.push(crate::config::NAME.to_string());
    for e in repo.runtime().block_on(repo.backend().list("keys/"))? {
        keys.push(e.key);
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// Of `keys`, those still retained, with until when (seconds since the
/// epoch): what must not be deleted yet. Empty without Object Lock. One
/// HEAD per key, many at once.
pub fn still_retained(repo: &Repository, keys: &[String]) -> Result<HashMap<String, i64>> {
    if repo.config().object_lock.is_none() || keys.is_empty() {
        return Ok(HashMap::new());
    }
    let backend = repo.backend();
    let Some(retention) = backend.retention() else { return Ok(HashMap::new()) };
    let now = jiff::Timestamp::now().as_second();
    let results: Vec<(String, std::result::Result<Option<i64>, BackendError>)> = repo.runtime().block_on(
        futures_util::stream::iter(keys.iter().cloned())
            .map(|key| async move {
                let until = retention.retained_until(&key).await;
                (key, until)
            })
            .buffer_unordered(backend.concurrency().max(1))
            .collect(),
    );
    let mut out = HashMap::new();
    for (key, until) in results {
        match until {
            Ok(Some(t)) if t > now => {
                out.insert(key, t);
            }
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// A retention end as the reports print it: the UTC date and time.
pub fn date(secs: i64) -> String {
    jiff::Timestamp::from_second(secs).map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LockMode;

    #[test]
    fn margins_and_record() {
        assert_eq!(margin_days(ObjectLock { days: 30, mode: LockMode::Governance }), 3);
        assert_eq!(margin_days(ObjectLock { days: 5, mode: LockMode::Compliance }), 1);
        assert_eq!(margin_days(ObjectLock { days: 1, mode: LockMode::Compliance }), 1);
        let dir = tempfile::tempdir().unwrap();
        let mut record = RetentionRecord::load(dir.path(), &[1; 32]);
        record.until.insert("data/ab/ab".into(), 2_000_000_000);
        record.until.insert("index/old".into(), 1_000);
        record.save(1_500_000_000);
        let again = RetentionRecord::load(dir.path(), &[1; 32]);
        assert_eq!(again.until.get("data/ab/ab"), Some(&2_000_000_000));
        assert!(!again.until.contains_key("index/old"), "expired entries are dropped");
    }
}
