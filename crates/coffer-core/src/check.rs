//! Verifying a repository: every snapshot decrypts, every tree reachable
//! from them decrypts and parses under its id, every chunk they reference is
//! listed by the store, and, when asked, every such chunk (or a subset) is
//! downloaded and authenticated. Damage is reported with the snapshots and
//! paths that depend on the damaged object; objects no snapshot references
//! are reported for information only (an interrupted backup or a `forget`
//! leaves them, and a prune removes them).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use futures_util::StreamExt;

use crate::crypto::ObjectKind;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::{Repository, fetch};
use crate::snapshot::Snapshot;
use crate::tree::{ChunkRef, NodeKind, Tree};

/// Which chunks `--read-data` downloads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ReadData {
    None,
    All,
    /// restic's `N/M`: chunks whose id's first byte modulo M is N - 1, so
    /// that running 1/M … M/M in turn reads everything once.
    Bucket {
        n: u32,
        m: u32,
    },
    /// A random share of the referenced chunks (at least one).
    Percent(f64),
}

impl FromStr for ReadData {
    type Err = Error;

    /// Parses `--read-data-subset`: `N/M` or `P%`.
    fn from_str(s: &str) -> Result<ReadData> {
        let bad =
            || Error::InvalidInput(format!("bad subset {s:?}: expected N/M (1 <= N <= M <= 256) or P% (0 < P <= 100)"));
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            return if p > 0.0 && p <= 100.0 { Ok(ReadData::Percent(p)) } else { Err(bad()) };
        }
        let (n, m) = s.split_once('/').ok_or_else(bad)?;
        let (n, m): (u32, u32) = (n.trim().parse().map_err(|_| bad())?, m.trim().parse().map_err(|_| bad())?);
        if n == 0 || n > m || m > 256 {
            return Err(bad());
        }
        Ok(ReadData::Bucket { n, m })
    }
}

/// A snapshot and a path in it that depend on a damaged object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Usage {
    pub snapshot: Id,
    /// `/`-separated path in the snapshot; directories end in `/`.
    pub path: String,
}

/// A damaged or missing object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Damage {
    /// `snapshot`, `tree` or `chunk`.
    pub kind: &'static str,
    pub id: Id,
    /// `missing`, or what is wrong with it.
    pub problem: String,
    /// What depends on it (empty for a snapshot).
    pub used_by: Vec<Usage>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub snapshots: u64,
    pub trees: u64,
    pub chunks: u64,
    /// Chunks downloaded and authenticated (`--read-data`).
    pub chunks_read: u64,
    pub damage: Vec<Damage>,
    pub unreferenced_trees: Vec<Id>,
    pub unreferenced_chunks: Vec<Id>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }
}

/// What went wrong reading one object, as reported (the error's message
/// without the object name, which the report carries).
fn problem(e: &Error) -> String {
    match e {
        Error::Missing { .. } => "missing".into(),
        Error::Corrupt { reason, .. } => format!("damaged: {reason}"),
        other => format!("unreadable: {other}"),
    }
}

/// Chunks selected for reading.
fn select(chunks: &HashMap<Id, u32>, read: ReadData) -> Vec<ChunkRef> {
    let mut all: Vec<ChunkRef> = chunks.iter().map(|(id, len)| ChunkRef(*id, *len)).collect();
    all.sort_by_key(|c| c.0);
    match read {
        ReadData::None => Vec::new(),
        ReadData::All => all,
        ReadData::Bucket { n, m } => all.into_iter().filter(|c| u32::from(c.0.0[0]) % m == n - 1).collect(),
        ReadData::Percent(p) => {
            let want = ((all.len() as f64 * p / 100.0) as usize).max(1).min(all.len());
            let mut keyed: Vec<(Id, ChunkRef)> = all.into_iter().map(|c| (Id::random(), c)).collect();
            keyed.sort_by_key(|k| k.0);
            keyed.into_iter().take(want).map(|(_, c)| c).collect()
        }
    }
}

/// Checks the repository.
pub fn check(repo: &Repository, read: ReadData) -> Result<CheckReport> {
    let mut report = CheckReport::default();

    // Snapshots.
    let mut snapshots: Vec<(Id, Snapshot)> = Vec::new();
    // From the repository, not the cache: a good cached copy says nothing
    // about the stored object.
    for id in repo.list_ids(ObjectKind::Snapshot)? {
        match repo.fetch_snapshot(&id) {
            Ok(s) => snapshots.push((id, s)),
            Err(e) => report.damage.push(Damage { kind: "snapshot", id, problem: problem(&e), used_by: Vec::new() }),
        }
    }
    report.snapshots = snapshots.len() as u64;

    // Trees, level by level from the roots, each distinct tree once, with
    // many fetches in flight.
    let listed_chunks: HashSet<Id> = repo.list_ids(ObjectKind::Chunk)?.into_iter().collect();
    let listed_trees = repo.list_ids(ObjectKind::Tree)?;
    let mut seen: HashSet<Id> = HashSet::new();
    let mut bad: HashMap<Id, (&'static str, String)> = HashMap::new();
    let mut chunks: HashMap<Id, u32> = HashMap::new();
    let mut level: Vec<Id> = snapshots.iter().map(|(_, s)| s.tree).filter(|t| seen.insert(*t)).collect();
    while !level.is_empty() {
        let fetched = fetch_all(repo, ObjectKind::Tree, std::mem::take(&mut level));
        for (id, stored) in fetched {
            match stored.and_then(|b| repo.decode_tree(&id, &b)) {
                Ok(tree) => {
                    for node in tree.nodes {
                        match (node.kind, node.subtree) {
                            (NodeKind::Dir, Some(sub)) if seen.insert(sub) => level.push(sub),
                            _ => chunks.extend(node.content.iter().map(|c| (c.0, c.1))),
                        }
                    }
                }
                Err(e) => {
                    bad.insert(id, ("tree", problem(&e)));
                }
            }
        }
    }
    report.trees = seen.len() as u64;
    report.chunks = chunks.len() as u64;
    for id in chunks.keys().filter(|id| !listed_chunks.contains(id)) {
        bad.insert(*id, ("chunk", "missing".into()));
    }

    // Chunk contents.
    let to_read: Vec<ChunkRef> = select(&chunks, read).into_iter().filter(|c| listed_chunks.contains(&c.0)).collect();
    report.chunks_read = to_read.len() as u64;
    for (id, e) in read_chunks(repo, to_read) {
        bad.insert(id, ("chunk", problem(&e)));
    }

    let mut unreferenced_trees: Vec<Id> = listed_trees.into_iter().filter(|t| !seen.contains(t)).collect();
    unreferenced_trees.sort();
    let mut unreferenced_chunks: Vec<Id> = listed_chunks.into_iter().filter(|c| !chunks.contains_key(c)).collect();
    unreferenced_chunks.sort();
    report.unreferenced_trees = unreferenced_trees;
    report.unreferenced_chunks = unreferenced_chunks;

    if !bad.is_empty() {
        let usage = attribute(repo, &snapshots, &bad)?;
        let mut damage: Vec<Damage> = bad
            .into_iter()
            .map(|(id, (kind, problem))| {
                let mut used_by = usage.get(&id).cloned().unwrap_or_default();
                used_by.sort();
                used_by.dedup();
                Damage { kind, id, problem, used_by }
            })
            .collect();
        damage.sort_by(|a, b| (a.kind, a.id).cmp(&(b.kind, b.id)));
        report.damage.extend(damage);
    }
    Ok(report)
}

/// Fetches objects with the backend's concurrency.
fn fetch_all(repo: &Repository, kind: ObjectKind, ids: Vec<Id>) -> Vec<(Id, Result<Vec<u8>>)> {
    let backend = repo.backend().clone();
    let concurrency = backend.concurrency().max(1);
    let limit = repo.stored_limit(kind);
    repo.runtime().block_on(
        futures_util::stream::iter(ids)
            .map(|id| {
                let backend = backend.clone();
                async move { (id, fetch(&*backend, kind, &id, limit).await) }
            })
            .buffer_unordered(concurrency)
            .collect(),
    )
}

/// Plaintext bytes of chunks being downloaded or decoded at once: enough to
/// keep many requests in flight at the average chunk size, while a run of
/// maximum-size chunks cannot take more memory than this.
const READ_BUDGET: u32 = 64 * 1024 * 1024;

/// Downloads and authenticates chunks (decryption with the id bound, the id
/// recomputed from the plaintext, the length the trees recorded); returns
/// the failures. Decoding runs on rayon's pool; the backend's concurrency
/// bounds the requests in flight and [`READ_BUDGET`] the bytes.
fn read_chunks(repo: &Repository, chunks: Vec<ChunkRef>) -> Vec<(Id, Error)> {
    let backend = repo.backend().clone();
    let keys = repo.keys().clone();
    let repo_id = *repo.repo_id();
    let max_len = repo.max_chunk_len();
    let limit = repo.stored_limit(ObjectKind::Chunk);
    let concurrency = backend.concurrency().max(1);
    let budget = Arc::new(tokio::sync::Semaphore::new(READ_BUDGET as usize));
    let failures: Vec<Option<(Id, Error)>> = repo.runtime().block_on(
        futures_util::stream::iter(chunks)
            .map(|chunk| {
                let (backend, keys, budget) = (backend.clone(), Arc::clone(&keys), Arc::clone(&budget));
                async move {
                    // Held until decoded. A chunk larger than the whole budget
                    // waits for everything else to finish.
                    let _permit = match budget.acquire_many_owned(chunk.1.clamp(1, READ_BUDGET)).await {
                        Ok(p) => p,
                        Err(e) => return Some((chunk.0, Error::InvalidInput(format!("read budget: {e}")))),
                    };
                    let stored = match fetch(&*backend, ObjectKind::Chunk, &chunk.0, limit).await {
                        Ok(b) => b,
                        Err(e) => return Some((chunk.0, e)),
                    };
                    let (done, decoded) = tokio::sync::oneshot::channel();
                    rayon::spawn(move || {
                        let r = crate::repo::decode_chunk_ref(&keys, &repo_id, max_len, &chunk, stored).map(drop);
                        let _ = done.send(r);
                    });
                    match decoded.await {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some((chunk.0, e)),
                        Err(e) => Some((chunk.0, Error::InvalidInput(format!("decoding task failed: {e}")))),
                    }
                }
            })
            .buffer_unordered(concurrency)
            .collect(),
    );
    failures.into_iter().flatten().collect()
}

/// For each damaged object, the snapshots and paths that depend on it.
/// Walks every snapshot again, skipping subtrees already found clean.
fn attribute(
    repo: &Repository,
    snapshots: &[(Id, Snapshot)],
    bad: &HashMap<Id, (&'static str, String)>,
) -> Result<HashMap<Id, Vec<Usage>>> {
    struct Walk<'a> {
        repo: &'a Repository,
        bad: &'a HashMap<Id, (&'static str, String)>,
        clean: HashSet<Id>,
        usage: HashMap<Id, Vec<Usage>>,
    }
    impl Walk<'_> {
        /// Returns whether anything below `tree` is damaged.
        fn tree(&mut self, snapshot: Id, tree: Id, path: &str) -> bool {
            if self.clean.contains(&tree) {
                return false;
            }
            if self.bad.contains_key(&tree) {
                self.usage.entry(tree).or_default().push(Usage { snapshot, path: path.to_string() });
                return true;
            }
            // It decoded in the first pass; a failure now is reported there.
            let Ok(t): Result<Tree> = self.repo.load_tree(&tree) else { return true };
            let mut tainted = false;
            for node in &t.nodes {
                let mut p = format!("{path}{}", node.name_lossy());
                match (node.kind, node.subtree) {
                    (NodeKind::Dir, Some(sub)) => {
                        p.push('/');
                        tainted |= self.tree(snapshot, sub, &p);
                    }
                    _ => {
                        for c in &node.content {
                            if self.bad.contains_key(&c.0) {
                                self.usage.entry(c.0).or_default().push(Usage { snapshot, path: p.clone() });
                                tainted = true;
                            }
                        }
                    }
                }
            }
            if !tainted {
                self.clean.insert(tree);
            }
            tainted
        }
    }
    let mut w = Walk { repo, bad, clean: HashSet::new(), usage: HashMap::new() };
    for (id, s) in snapshots {
        w.tree(*id, s.tree, "/");
    }
    Ok(w.usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_parse_as_restic() {
        assert_eq!("1/5".parse::<ReadData>().unwrap(), ReadData::Bucket { n: 1, m: 5 });
        assert_eq!("5/5".parse::<ReadData>().unwrap(), ReadData::Bucket { n: 5, m: 5 });
        assert_eq!("2.5%".parse::<ReadData>().unwrap(), ReadData::Percent(2.5));
        for bad in ["0/5", "6/5", "1/257", "x", "1/", "0%", "101%", "/3"] {
            assert!(bad.parse::<ReadData>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn buckets_partition_the_chunks() {
        let chunks: HashMap<Id, u32> = (0..=255u8).map(|b| (Id([b; 32]), 1)).collect();
        let mut all = Vec::new();
        for n in 1..=3 {
            let part = select(&chunks, ReadData::Bucket { n, m: 3 });
            assert!(part.iter().all(|c| u32::from(c.0.0[0]) % 3 == n - 1));
            all.extend(part.into_iter().map(|c| c.0));
        }
        all.sort();
        assert_eq!(all.len(), 256, "every chunk in exactly one bucket");
        all.dedup();
        assert_eq!(all.len(), 256);
        assert_eq!(select(&chunks, ReadData::Percent(10.0)).len(), 25);
        assert_eq!(select(&chunks, ReadData::Percent(0.01)).len(), 1, "at least one");
        assert_eq!(select(&chunks, ReadData::None).len(), 0);
    }
}
