//! The folders the mount makes above the snapshots: which snapshot appears
//! under which name in `snapshots/`, `ids/`, `hosts/<host>/` and
//! `tags/<tag>/`.
//!
//! Folder names are the snapshot's time in the local time zone of the
//! machine that mounts, as `coffer snapshots` shows it, written
//! `2026-11-27T10.00.00`: it sorts by time, and has no `:`, which Windows
//! clients of a Samba share cannot show. Two snapshots of the same second
//! get their short id appended (`2026-11-27T10.00.00_ab12cd34`).

use std::collections::{BTreeMap, HashMap};

use coffer_core::Id;
use coffer_core::snapshot::Snapshot;

/// A folder of snapshots named by time, with `latest` naming the newest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimeFolder {
    pub entries: BTreeMap<String, Id>,
    /// The name of the newest snapshot in `entries`.
    pub latest: Option<String>,
}

/// Everything above the snapshots' own trees.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub snapshots: TimeFolder,
    pub ids: BTreeMap<String, Id>,
    pub hosts: BTreeMap<String, TimeFolder>,
    pub tags: BTreeMap<String, TimeFolder>,
}

/// The name of the symlink to the newest snapshot of a folder.
pub const LATEST: &str = "latest";

impl Layout {
    /// Builds the layout of `snapshots`, given oldest first (as
    /// [`coffer_core::Repository::snapshots`] returns them).
    pub fn new(snapshots: &[(Id, Snapshot)]) -> Layout {
        let tz = jiff::tz::TimeZone::system();
        let times: Vec<String> = snapshots.iter().map(|(_, s)| time_name(s, &tz)).collect();
        let mut count: HashMap<&str, usize> = HashMap::new();
        for t in &times {
            *count.entry(t.as_str()).or_default() += 1;
        }
        let names: Vec<String> = snapshots
            .iter()
            .zip(&times)
            .map(|((id, _), t)| if count[t.as_str()] > 1 { format!("{t}_{}", id.short()) } else { t.clone() })
            .collect();

        let mut short_count: HashMap<String, usize> = HashMap::new();
        for (id, _) in snapshots {
            *short_count.entry(id.short()).or_default() += 1;
        }

        let mut layout = Layout::default();
        for ((id, snap), name) in snapshots.iter().zip(names) {
            // Oldest first: each insert makes the newest so far `latest`.
            layout.snapshots.add(&name, *id);
            let short = id.short();
            let id_name = if short_count[&short] > 1 { id.to_hex() } else { short };
            layout.ids.insert(id_name, *id);
            layout.hosts.entry(safe_name(&snap.host)).or_default().add(&name, *id);
            for tag in &snap.tags {
                layout.tags.entry(safe_name(tag)).or_default().add(&name, *id);
            }
        }
        layout
    }
}

impl TimeFolder {
    fn add(&mut self, name: &str, id: Id) {
        self.entries.insert(name.to_string(), id);
        self.latest = Some(name.to_string());
    }
}

/// `2026-11-27T10.00.00` in the time zone `tz`; the recorded text if it
/// does not parse (a snapshot that loads always parses).
fn time_name(snapshot: &Snapshot, tz: &jiff::tz::TimeZone) -> String {
    match snapshot.timestamp() {
        Ok(ts) => ts.to_zoned_datetime(tz.clone()).strftime("%Y-%m-%dT%H.%M.%S").to_string(),
        Err(_) => safe_name(&snapshot.time),
    }
}

/// A host name or tag as a folder name: `/` and NUL cannot be in a name,
/// and `.`, `..` and the empty name mean something else.
fn safe_name(text: &str) -> String {
    let name: String = text.chars().map(|c| if c == '/' || c == '\0' { '_' } else { c }).collect();
    match name.as_str() {
        "" => "_".into(),
        "." | ".." | LATEST => format!("_{name}"),
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_core::snapshot::{SNAPSHOT_VERSION, Summary};

    fn snap(time: &str, host: &str, tags: &[&str]) -> Snapshot {
        Snapshot {
            version: SNAPSHOT_VERSION,
            time: time.into(),
            host: host.into(),
            user: "ana".into(),
            uid: 1000,
            gid: 1000,
            paths: vec!["/p".into()],
            tags: tags.iter().map(|t| t.to_string()).collect(),
            tree: Id([9; 32]),
            parent: None,
            host_sequence: 1,
            host_previous: None,
            original: None,
            summary: Summary::default(),
            program_version: "test".into(),
        }
    }

    fn id(first: u8, second: u8) -> Id {
        let mut b = [0u8; 32];
        b[0] = first;
        b[1] = second;
        Id(b)
    }

    #[test]
    fn names_by_time_host_tag_and_id() {
        let tz = jiff::tz::TimeZone::system();
        let a = snap("2026-01-02T03:04:05Z", "laptop", &["photos", "a/b"]);
        let b = snap("2026-01-02T03:04:05.5Z", "desk", &[]);
        let c = snap("2026-03-01T00:00:00Z", "laptop", &["photos"]);
        let t_ab = time_name(&a, &tz);
        assert_eq!(t_ab, time_name(&b, &tz), "the same second");
        assert!(!t_ab.contains(':'), "{t_ab}");
        let all = vec![(id(1, 1), a), (id(2, 2), b), (id(3, 3), c.clone())];
        let layout = Layout::new(&all);
        let name_a = format!("{t_ab}_{}", id(1, 1).short());
        let name_b = format!("{t_ab}_{}", id(2, 2).short());
        let name_c = time_name(&c, &tz);
        assert_eq!(layout.snapshots.entries.keys().cloned().collect::<Vec<_>>(), {
            let mut v = vec![name_a.clone(), name_b.clone(), name_c.clone()];
            v.sort();
            v
        });
        assert_eq!(layout.snapshots.latest.as_deref(), Some(name_c.as_str()));
        assert_eq!(layout.hosts["laptop"].entries.len(), 2);
        assert_eq!(layout.hosts["laptop"].latest.as_deref(), Some(name_c.as_str()));
        assert_eq!(layout.hosts["desk"].entries[&name_b], id(2, 2));
        assert_eq!(layout.tags["photos"].entries.len(), 2);
        assert_eq!(layout.tags["a_b"].entries[&name_a], id(1, 1));
        assert_eq!(layout.ids[&id(2, 2).short()], id(2, 2));
    }

    #[test]
    fn colliding_short_ids_use_the_full_id() {
        let s = snap("2026-01-02T03:04:05Z", "h", &[]);
        let x = id(7, 1);
        let mut yb = x.0;
        yb[31] = 0xff;
        let y = Id(yb);
        assert_eq!(x.short(), y.short());
        let layout = Layout::new(&[(x, s.clone()), (y, s)]);
        assert!(layout.ids.contains_key(&x.to_hex()) && layout.ids.contains_key(&y.to_hex()));
    }

    #[test]
    fn unsafe_names() {
        assert_eq!(safe_name(""), "_");
        assert_eq!(safe_name(".."), "_..");
        assert_eq!(safe_name("latest"), "_latest");
        assert_eq!(safe_name("a/b\0"), "a_b_");
    }
}
