//! Restores from archive storage classes (S3 Glacier Flexible Retrieval,
//! Deep Archive): which packs a restore needs, and bringing the archived
//! ones back before it reads them.
//!
//! An archived object cannot be read until a restore request has made a
//! temporary copy of it, which takes minutes to two days and is billed per
//! GB and per request. Only data packs are ever archived (trees, the index
//! and snapshots stay hot, see `docs/s3.md`), so everything a restore
//! needs to know, which files and which chunks, is known before a single
//! data pack is asked for: [`plan`] lists exactly the packs a restore
//! reads, and [`warm_up`] asks for exactly those.
//!
//! What was asked for is remembered on this host (in the state folder,
//! `<state>/<repository id>/warm-up`), so that a restore that exits while
//! the store works (or is killed) picks up where it left off: the next run
//! asks the store how each pack stands instead of paying for a request
//! again, and says when each was asked for.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::backend::{RestoreStatus, RetrievalTier};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::pack::{PackKind, pack_key};
use crate::repo::Repository;

/// One pack a restore reads.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NeededPack {
    pub id: Id,
    pub kind: PackKind,
    /// Stored bytes (what a retrieval bills).
    pub length: u64,
    /// Bytes of the blobs in it that the restore reads.
    pub needed_bytes: u64,
    /// The storage class the listing gives; `None` where the store has
    /// none (a local folder).
    pub storage_class: Option<String>,
    /// In an archive class: unreadable until restored.
    pub archived: bool,
}

/// What restoring a snapshot (or part of it) reads.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RetrievalPlan {
    /// Files and bytes of file content to restore.
    pub files: u64,
    pub bytes: u64,
    /// Distinct chunks those files are made of, and those the repository
    /// does not have (damage; `coffer check` says more).
    pub chunks: u64,
    pub missing_chunks: u64,
    /// Every data pack the restore reads, archived ones first.
    pub packs: Vec<NeededPack>,
}

impl RetrievalPlan {
    pub fn archived(&self) -> impl Iterator<Item = &NeededPack> {
        self.packs.iter().filter(|p| p.archived)
    }

    /// Stored bytes of the archived packs: what a retrieval bills.
    pub fn archived_bytes(&self) -> u64 {
        self.archived().map(|p| p.length).sum()
    }

    pub fn pack_bytes(&self) -> u64 {
        self.packs.iter().map(|p| p.length).sum()
    }
}

/// The packs a restore of `root` (only `includes`, when given) reads.
/// Reads trees and the index, and lists the packs; no data pack.
pub fn plan(repo: &Repository, root: &Id, includes: &[PathBuf]) -> Result<RetrievalPlan> {
    let archived = archived_packs(repo)?;
    plan_with(repo, root, includes, &archived)
}

/// Loads the index (kept as the repository's blob set, which a restore
/// then uses) and answers the listed packs in an archive class, with
/// their class. Costs what a restore's own loading of the index costs.
pub fn archived_packs(repo: &Repository) -> Result<HashMap<Id, String>> {
    let loaded = crate::index::load(repo)?;
    repo.set_blob_set(loaded.blobs);
    Ok(loaded.archived)
}

/// [`plan`] with the archived packs known (see [`archived_packs`]).
pub fn plan_with(
    repo: &Repository,
    root: &Id,
    includes: &[PathBuf],
    archived: &HashMap<Id, String>,
) -> Result<RetrievalPlan> {
    let set = repo.blob_set()?;
    let (files, bytes, chunks) = crate::restorer::needed_chunks(repo, root, includes)?;
    let lengths: HashMap<Id, u64> = set.packs().iter().map(|p| (p.id, p.length)).collect();
    let mut packs: HashMap<Id, NeededPack> = HashMap::new();
    let mut missing = 0;
    for id in &chunks {
        let Some(loc) = set.get(crate::crypto::ObjectKind::Chunk, id) else {
            missing += 1;
            continue;
        };
        let length = lengths.get(&loc.pack).copied().unwrap_or(0);
        let entry = packs.entry(loc.pack).or_insert_with(|| NeededPack {
            id: loc.pack,
            kind: loc.kind,
            length,
            needed_bytes: 0,
            storage_class: archived.get(&loc.pack).cloned(),
            archived: archived.contains_key(&loc.pack),
        });
        entry.needed_bytes += u64::from(loc.length);
    }
    let mut packs: Vec<NeededPack> = packs.into_values().collect();
    packs.sort_by_key(|p| (!p.archived, p.id));
    Ok(RetrievalPlan { files, bytes, chunks: chunks.len() as u64, missing_chunks: missing, packs })
}

/// A restore request this host made.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Requested {
    pub tier: RetrievalTier,
    /// When it was made (seconds since the epoch).
    pub at: i64,
    /// For how many days the copy is kept.
    pub days: u32,
}

/// The restore requests this host remembers for one repository.
pub struct WarmUpState {
    path: PathBuf,
    requests: BTreeMap<String, Requested>,
}

const STATE_HEADER: &str = "coffer warm-up 1";

impl WarmUpState {
    /// The requests remembered under `base` (the state folder) for the
    /// repository; none when the file is missing or unreadable.
    pub fn load(base: &Path, repo_id: &[u8; 32]) -> WarmUpState {
        let path = base.join(hex::encode(repo_id)).join("warm-up");
        let mut requests = BTreeMap::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            let mut lines = text.lines();
            if lines.next() == Some(STATE_HEADER) {
                for line in lines {
                    let mut f = line.split(' ');
                    let (Some(key), Some(tier), Some(at), Some(days)) = (f.next(), f.next(), f.next(), f.next()) else {
                        continue;
                    };
                    let (Some(tier), Ok(at), Ok(days)) = (RetrievalTier::parse(tier), at.parse(), days.parse()) else {
                        continue;
                    };
                    requests.insert(key.to_string(), Requested { tier, at, days });
                }
            }
        }
        WarmUpState { path, requests }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&Requested> {
        self.requests.get(key)
    }

    /// Writes the requests (atomically), dropping those whose copies have
    /// expired.
    pub fn save(&mut self) -> Result<()> {
        let now = jiff::Timestamp::now().as_second();
        self.requests.retain(|_, r| r.at + i64::from(r.days) * 86_400 + 2 * 86_400 > now);
        let mut text = format!("{STATE_HEADER}\n");
        for (key, r) in &self.requests {
            text.push_str(&format!("{key} {} {} {}\n", r.tier.name(), r.at, r.days));
        }
        crate::state::write_atomically(&self.path, &text).map_err(|e| Error::io(&self.path, e))
    }
}

/// How the archived packs of a plan stand after a [`warm_up`] pass.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct WarmUpReport {
    /// Archived packs the plan needs, and their stored bytes.
    pub packs: usize,
    pub bytes: u64,
    /// Readable now (a restored copy is there).
    pub ready: usize,
    /// Being restored by the store.
    pub restoring: usize,
    /// Restore requests this pass made (the others were made earlier, from
    /// this host or elsewhere).
    pub requested_now: usize,
    /// The earliest time a pending request was made, from this host's
    /// records (seconds since the epoch).
    pub oldest_request: Option<i64>,
}

impl WarmUpReport {
    pub fn is_ready(&self) -> bool {
        self.ready == self.packs
    }
}

/// One pass over the archived packs of `plan`: asks the store how each
/// stands (one HEAD request) and requests a restore, at `tier` for `days`
/// days, of each that is archived with no copy and no request under way.
/// Every request made is recorded in `state` (saved before returning).
pub fn warm_up(
    repo: &Repository,
    plan: &RetrievalPlan,
    tier: RetrievalTier,
    days: u32,
    state: &mut WarmUpState,
) -> Result<WarmUpReport> {
    use futures_util::StreamExt;
    let mut report =
        WarmUpReport { packs: plan.archived().count(), bytes: plan.archived_bytes(), ..Default::default() };
    if report.packs == 0 {
        return Ok(report);
    }
    let backend = repo.backend();
    let Some(classes) = backend.storage_classes() else {
        return Err(Error::InvalidInput(format!(
            "{} lists archived packs but cannot restore them",
            backend.location()
        )));
    };
    let keys: Vec<String> = plan.archived().map(|p| pack_key(PackKind::Data, &p.id)).collect();
    let width = backend.concurrency().max(1);
    let results: Vec<(String, Result<(RestoreStatus, bool)>)> = repo.runtime().block_on(
        futures_util::stream::iter(keys)
            .map(|key| async move {
                let outcome = async {
                    match classes.restore_status(&key).await? {
                        RestoreStatus::Archived => Ok((classes.request_restore(&key, days, tier).await?, true)),
                        status => Ok((status, false)),
                    }
                }
                .await;
                (key, outcome)
            })
            .buffer_unordered(width)
            .collect(),
    );
    let now = jiff::Timestamp::now().as_second();
    let mut first_error = None;
    for (key, result) in results {
        match result {
            Ok((status, requested)) => {
                if requested {
                    report.requested_now += 1;
                    state.requests.insert(key.clone(), Requested { tier, at: now, days });
                }
                match status {
                    RestoreStatus::Readable { .. } => report.ready += 1,
                    RestoreStatus::InProgress | RestoreStatus::Archived => {
                        report.restoring += 1;
                        if let Some(r) = state.requests.get(&key) {
                            report.oldest_request = Some(report.oldest_request.map_or(r.at, |o: i64| o.min(r.at)));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!("{key}: {e}");
                first_error.get_or_insert(e);
            }
        }
    }
    // What was asked for is saved even when another request failed, so
    // that the next run does not pay for it again.
    state.save()?;
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// Asks the store how each archived pack of `plan` stands, without
/// requesting anything: the number that are readable now.
pub fn readable_now(repo: &Repository, plan: &RetrievalPlan) -> Result<usize> {
    use futures_util::StreamExt;
    let backend = repo.backend();
    let Some(classes) = backend.storage_classes() else { return Ok(0) };
    let keys: Vec<String> = plan.archived().map(|p| pack_key(PackKind::Data, &p.id)).collect();
    let statuses: Vec<Result<RestoreStatus>> = repo.runtime().block_on(
        futures_util::stream::iter(keys)
            .map(|key| async move { classes.restore_status(&key).await.map_err(Error::from) })
            .buffer_unordered(backend.concurrency().max(1))
            .collect(),
    );
    let mut ready = 0;
    for status in statuses {
        if matches!(status?, RestoreStatus::Readable { .. }) {
            ready += 1;
        }
    }
    Ok(ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_remembered_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let repo_id = [7; 32];
        let mut state = WarmUpState::load(dir.path(), &repo_id);
        assert!(state.get("data/ab/ab").is_none());
        let now = jiff::Timestamp::now().as_second();
        state.requests.insert("data/ab/ab".into(), Requested { tier: RetrievalTier::Bulk, at: now, days: 7 });
        state
            .requests
            .insert("data/cd/cd".into(), Requested { tier: RetrievalTier::Standard, at: now - 30 * 86_400, days: 7 });
        state.save().unwrap();
        let again = WarmUpState::load(dir.path(), &repo_id);
        assert_eq!(again.get("data/ab/ab"), Some(&Requested { tier: RetrievalTier::Bulk, at: now, days: 7 }));
        assert!(again.get("data/cd/cd").is_none(), "a copy that expired long ago is forgotten");
        assert!(WarmUpState::load(dir.path(), &[8; 32]).get("data/ab/ab").is_none());
    }
}
