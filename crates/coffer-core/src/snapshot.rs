//! Snapshots: one object per backup, naming the root tree and describing
//! when, where and what was backed up.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::Id;

pub const SNAPSHOT_VERSION: u32 = 1;
/// Largest snapshot plaintext a client will decode.
pub const MAX_SNAPSHOT_LEN: usize = 16 * 1024 * 1024;

/// Counts from the backup that made the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unchanged: u64,
    pub dirs: u64,
    /// Bytes of file content read from the source.
    pub bytes_read: u64,
    /// Total size of the files in the snapshot.
    pub bytes_total: u64,
    /// Bytes of new objects written to the repository (after compression,
    /// padding and encryption).
    pub bytes_added: u64,
    pub chunks_added: u64,
    pub trees_added: u64,
    /// Entries that could not be read and are missing from the snapshot.
    pub errors: u64,
    /// Files that changed while they were read: stored as read, which may
    /// mix old and new content (absent from snapshots of older versions).
    #[serde(default)]
    pub files_changed_while_read: u64,
    pub duration_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    /// RFC 3339 time with the local UTC offset of the machine that made it.
    pub time: String,
    pub host: String,
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// The backed-up paths, absolute, as given (lossy UTF-8 for display).
    pub paths: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub tree: Id,
    #[serde(default)]
    pub parent: Option<Id>,
    /// This host's running count of snapshots, and its previous snapshot:
    /// together they let a client notice that a snapshot has vanished.
    #[serde(default)]
    pub host_sequence: u64,
    #[serde(default)]
    pub host_previous: Option<Id>,
    pub summary: Summary,
    /// The snapshot this one was made from by `repair snapshots` or
    /// `rewrite` (absent in a backup's snapshot, and then not written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
    pub program_version: String,
}

impl Snapshot {
    pub fn to_bytes(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Snapshot> {
        let s: Snapshot = rmp_serde::from_slice(bytes)
            .map_err(|e| Error::corrupt("snapshot", name, format!("does not parse: {e}")))?;
        if s.version != SNAPSHOT_VERSION {
            return Err(Error::corrupt("snapshot", name, format!("unknown snapshot version {}", s.version)));
        }
        s.timestamp().map_err(|e| Error::corrupt("snapshot", name, format!("bad time {:?}: {e}", s.time)))?;
        Ok(s)
    }

    pub fn timestamp(&self) -> std::result::Result<jiff::Timestamp, jiff::Error> {
        self.time.parse::<jiff::Timestamp>()
    }
}

/// restic's snapshot filter (`--host`, `--tag`, `--path`): a snapshot
/// passes if its host is one of the hosts, it has every tag of one of the
/// tag lists (the empty tag matching untagged snapshots), and it has every
/// path. An empty criterion passes everything.
#[derive(Clone, Debug, Default)]
pub struct SnapshotFilter {
    pub hosts: Vec<String>,
    pub tags: Vec<Vec<String>>,
    pub paths: Vec<String>,
}

impl SnapshotFilter {
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.tags.is_empty() && self.paths.is_empty()
    }

    pub fn matches(&self, s: &Snapshot) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(&s.host))
            && (self.tags.is_empty() || self.tags.iter().any(|list| crate::policy::has_tags(&s.tags, list)))
            && self.paths.iter().all(|p| s.paths.contains(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Snapshot {
        Snapshot {
            version: SNAPSHOT_VERSION,
            time: "2026-11-27T10:00:00.123456789+01:00".into(),
            host: "laptop".into(),
            user: "ana".into(),
            uid: 1000,
            gid: 1000,
            paths: vec!["/home/ana/Pictures".into()],
            tags: vec!["photos".into()],
            tree: Id([4; 32]),
            parent: None,
            host_sequence: 1,
            host_previous: None,
            original: None,
            summary: Summary::default(),
            program_version: "coffer 0.1.0".into(),
        }
    }

    #[test]
    fn round_trip() {
        let s = sample();
        assert_eq!(Snapshot::from_bytes("s", &s.to_bytes()).unwrap(), s);
        let mut bad = sample();
        bad.time = "yesterday".into();
        assert!(Snapshot::from_bytes("s", &bad.to_bytes()).is_err());
    }

    #[test]
    fn filters() {
        let s = sample();
        let f = |hosts: &[&str], tags: &[&[&str]], paths: &[&str]| SnapshotFilter {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            tags: tags.iter().map(|l| l.iter().map(|t| t.to_string()).collect()).collect(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
        };
        assert!(f(&[], &[], &[]).matches(&s));
        assert!(f(&["x", "laptop"], &[], &[]).matches(&s));
        assert!(!f(&["x"], &[], &[]).matches(&s));
        assert!(f(&[], &[&["nope"], &["photos"]], &[]).matches(&s));
        assert!(!f(&[], &[&["photos", "nope"]], &[]).matches(&s));
        assert!(!f(&[], &[&[""]], &[]).matches(&s), "the empty tag matches only untagged snapshots");
        assert!(f(&[], &[], &["/home/ana/Pictures"]).matches(&s));
        assert!(!f(&[], &[], &["/home/ana/Pictures", "/etc"]).matches(&s));
    }

    proptest! {
        #[test]
        fn from_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Snapshot::from_bytes("s", &data);
        }

        #[test]
        fn mutated_snapshots_never_panic(pos in any::<usize>(), val in any::<u8>()) {
            let mut bytes = sample().to_bytes();
            let i = pos % bytes.len();
            bytes[i] = val;
            let _ = Snapshot::from_bytes("s", &bytes);
        }
    }
}
