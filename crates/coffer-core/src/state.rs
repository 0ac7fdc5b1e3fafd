//! What this host remembers of each repository, to notice a rollback.
//!
//! The storage operator (or anyone with write access to the bucket) cannot
//! read or forge objects, but can delete them or put back an older copy of
//! the whole repository. Only a client that remembers what it saw can
//! notice. Per repository id, this host keeps the ids of the snapshots it
//! wrote or saw, and hashes of the `config` object and of the set of key
//! names. On open, a remembered snapshot that is no longer listed and was
//! not forgotten from here is reported loudly, as is a changed `config`
//! (nothing ever rewrites it).
//!
//! Layout: `<base>/<repository id in hex>/state`, where the base is the
//! first of `$COFFER_STATE_DIR`, `$XDG_STATE_HOME/coffer` and
//! `~/.local/state/coffer`. The file is text, one record a line:
//!
//! ```text
//! coffer state 1
//! config <64 hex: BLAKE3 of the stored config object>
//! keys <64 hex: BLAKE3 of the sorted key names, one per line>
//! snapshot <64 hex: a snapshot id>
//! ```
//!
//! Unknown lines are ignored; a missing or unreadable file starts afresh.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::Result;
use crate::id::Id;
use crate::repo::Repository;

const HEADER: &str = "coffer state 1";

/// Writes one of the state folder's files whole or not at all: a temporary
/// name in the same folder (created if missing), synced, then renamed over
/// `path`.
pub(crate) fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("no parent folder"))?;
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!("{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The base folder of every repository's state.
pub fn default_base() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("COFFER_STATE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").map(PathBuf::from).filter(|d| d.is_absolute()) {
        return Some(dir.join("coffer"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| Path::new(&home).join(".local").join("state").join("coffer"))
}

#[derive(Default, Debug, Clone, PartialEq, Eq)]
struct Data {
    config: Option<String>,
    keys: Option<String>,
    snapshots: BTreeSet<Id>,
}

impl Data {
    fn parse(text: &str) -> Data {
        let mut data = Data::default();
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return data;
        }
        for line in lines {
            match line.split_once(' ') {
                Some(("config", h)) => data.config = Some(h.to_string()),
                Some(("keys", h)) => data.keys = Some(h.to_string()),
                Some(("snapshot", id)) => data.snapshots.extend(Id::from_hex(id)),
                _ => {}
            }
        }
        data
    }

    fn render(&self) -> String {
        let mut out = format!("{HEADER}\n");
        if let Some(c) = &self.config {
            out.push_str(&format!("config {c}\n"));
        }
        if let Some(k) = &self.keys {
            out.push_str(&format!("keys {k}\n"));
        }
        for id in &self.snapshots {
            out.push_str(&format!("snapshot {id}\n"));
        }
        out
    }
}

/// One repository's remembered state.
pub struct State {
    path: PathBuf,
    data: Mutex<Data>,
}

/// What changed since this host last looked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StateReport {
    /// Snapshots this host wrote or saw that are gone, without a forget
    /// from here.
    pub vanished: Vec<Id>,
    /// The `config` object is not the one seen before.
    pub config_changed: bool,
    /// Keys were added or removed.
    pub keys_changed: bool,
}

impl State {
    /// The state of the repository `repo_id` under `base`.
    pub fn load(base: &Path, repo_id: &[u8; 32]) -> State {
        let path = base.join(hex::encode(repo_id)).join("state");
        let data = std::fs::read_to_string(&path).map(|t| Data::parse(&t)).unwrap_or_default();
        State { path, data: Mutex::new(data) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the state (atomically: a temporary file renamed into place).
    fn save(&self, data: &Data) {
        if let Err(e) = write_atomically(&self.path, &data.render()) {
            tracing::warn!("cannot save {}: {e}", self.path.display());
        }
    }

    fn update(&self, change: impl FnOnce(&mut Data)) {
        let Ok(mut data) = self.data.lock() else { return };
        let before = data.clone();
        change(&mut data);
        if *data != before {
            self.save(&data);
        }
    }
}

/// Hashes of the `config` object and of the set of key names, compared
/// between one open and the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprints {
    pub config: String,
    pub keys: String,
}

impl Fingerprints {
    pub fn of<'a>(config: &[u8], key_names: impl Iterator<Item = &'a str>) -> Fingerprints {
        let mut names: Vec<&str> = key_names.collect();
        names.sort_unstable();
        let mut h = blake3::Hasher::new();
        for n in &names {
            h.update(n.as_bytes());
            h.update(b"\n");
        }
        Fingerprints { config: blake3::hash(config).to_hex().to_string(), keys: h.finalize().to_hex().to_string() }
    }
}

impl Repository {
    /// Turns on the remembered state (see [`crate::state`]) under `base`.
    pub fn with_state(mut self, base: &Path) -> Repository {
        self.state = Some(State::load(base, self.repo_id()));
        self
    }

    /// Compares the repository with what this host remembers, reports what
    /// vanished or changed, and remembers what it sees now. The report is
    /// the caller's to tell (the command line prints it as warnings); it is
    /// only logged at the info level here, so that it is not said twice.
    pub fn check_state(&self) -> Result<StateReport> {
        if self.state.is_none() {
            return Ok(StateReport::default());
        }
        let listed = self.list_ids(crate::crypto::ObjectKind::Snapshot)?;
        Ok(self.check_state_listed(&listed))
    }

    /// [`Repository::check_state`] against a listing of `snapshots/` the
    /// caller has just taken, so that a command needing that listing anyway
    /// (backup) lists once.
    pub fn check_state_listed(&self, listed: &[Id]) -> StateReport {
        let Some(state) = &self.state else { return StateReport::default() };
        let listed: BTreeSet<Id> = listed.iter().copied().collect();
        let seen = match &self.seen_at_open {
            Some(seen) => seen.clone(),
            None => match self.fingerprints_now() {
                Ok(seen) => seen,
                Err(e) => {
                    tracing::warn!("cannot compare the config and keys with what this host saw: {e}");
                    return StateReport::default();
                }
            },
        };
        let Fingerprints { config, keys } = seen;
        let mut report = StateReport::default();
        state.update(|data| {
            report.vanished = data.snapshots.difference(&listed).copied().collect();
            report.config_changed = data.config.as_ref().is_some_and(|c| *c != config);
            report.keys_changed = data.keys.as_ref().is_some_and(|k| *k != keys);
            data.snapshots = listed;
            data.config = Some(config);
            data.keys = Some(keys);
        });
        for id in &report.vanished {
            tracing::info!(
                "snapshot {id}, which this host saw, has vanished from the repository without a forget from here: \
                 another machine forgot it, or the storage lost it or was rolled back"
            );
        }
        if report.config_changed {
            tracing::info!("the repository's config object changed since this host last saw it; nothing rewrites it");
        }
        if report.keys_changed {
            tracing::info!("keys were added to or removed from the repository since this host last saw it");
        }
        report
    }

    /// Fingerprints of the config and key names as stored now (for a
    /// repository opened without them, e.g. just created).
    fn fingerprints_now(&self) -> Result<Fingerprints> {
        self.runtime().block_on(async {
            let config = self.backend().get(crate::config::NAME, crate::config::MAX_STORED).await?;
            let names: Vec<String> = self.backend().list("keys/").await?.into_iter().map(|e| e.key).collect();
            Ok(Fingerprints::of(&config, names.iter().map(String::as_str)))
        })
    }

    /// Key add/remove's hook: the set of keys changed from here, so that
    /// the next open does not report this host's own change as news. Costs
    /// one listing of `keys/`; on failure the change is reported next time,
    /// which is noise, not harm.
    pub(crate) fn keys_changed_here(&self) {
        let Some(state) = &self.state else { return };
        match self.fingerprints_now() {
            Ok(now) => state.update(|d| d.keys = Some(now.keys)),
            Err(e) => tracing::debug!("cannot record the new set of keys: {e}"),
        }
    }

    /// Remembers a snapshot this host wrote.
    pub(crate) fn remember_snapshot(&self, id: &Id) {
        if let Some(state) = &self.state {
            state.update(|d| {
                d.snapshots.insert(*id);
            });
        }
    }

    /// Forget's hook: these snapshots were removed from here, so their
    /// absence is no news.
    pub fn forgotten(&self, ids: &[Id]) {
        if let Some(state) = &self.state {
            state.update(|d| {
                for id in ids {
                    d.snapshots.remove(id);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_render_round_trip_and_junk_is_ignored() {
        let mut d = Data { config: Some("ab".into()), keys: Some("cd".into()), ..Data::default() };
        d.snapshots.insert(Id([1; 32]));
        assert_eq!(Data::parse(&d.render()), d);
        assert_eq!(Data::parse("not a state\nsnapshot x"), Data::default());
        let junk = format!("{HEADER}\nsnapshot nothex\nwhat ever\n");
        assert_eq!(Data::parse(&junk), Data::default());
    }
}
