//! Prune against running backups (the design's invariant 6), driven into the
//! worst interleavings by a pausing backend instead of by luck: a backup is
//! held right after it listed the chunks it will reuse, while a snapshot is
//! deleted and prune runs. Each case ends with the same checks: no snapshot
//! references a missing object, and every snapshot restores byte-identical.
//!
//! The cases run in-process on two `Repository` handles over the same store
//! (as two machines would see it) and are written against [`Store`]: each
//! runs on a local folder and on the in-process S3 server.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use coffer_core::archiver::{self, BackupOptions, ParentChoice};
use coffer_core::backend::Backend;
use coffer_core::backend::pausing::{Op, PausingBackend};
use coffer_core::crypto::ObjectKind;
use coffer_core::key::KdfParams;
use coffer_core::lock::LockSettings;
use coffer_core::progress::NoProgress;
use coffer_core::prune::{self, PruneOptions};
use coffer_core::repo::{InitOptions, object_key};
use coffer_core::{Error, Id, Repository};

use crate::common::{LocalStore, PASSWORD, Store, contents, random_bytes, reachable_objects, restored_contents};

/// Two source folders, `a` and `b`, and the snapshots taken of them.
struct Fixture {
    _dir: tempfile::TempDir,
    store: Box<dyn Store>,
    src_a: PathBuf,
    src_b: PathBuf,
    /// Snapshot of `a` (deleted by the cases before prune) and of `b`.
    snap_a: Id,
    snap_b: Id,
}

fn settings(stale: Duration, retry: Duration) -> LockSettings {
    LockSettings { stale, retry, ..LockSettings::default() }
}

fn open(backend: Arc<dyn Backend>, locks: LockSettings) -> Repository {
    let mut repo = Repository::open(backend, PASSWORD.as_bytes()).expect("open repository");
    repo.set_lock_settings(locks);
    repo
}

fn backup(repo: &Repository, src: &Path, parent: ParentChoice) -> coffer_core::Result<Option<Id>> {
    let options = BackupOptions { paths: vec![src.to_path_buf()], parent, ..BackupOptions::default() };
    archiver::backup(repo, &options, &NoProgress).map(|o| o.snapshot_id)
}

impl Fixture {
    fn new(make_store: impl FnOnce(&Path) -> Box<dyn Store>) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = make_store(dir.path());
        let init =
            InitOptions { kdf: KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }, ..Default::default() };
        Repository::init(store.backend(), PASSWORD.as_bytes(), &init).expect("init");
        let src_a = std::fs::canonicalize(dir.path()).unwrap().join("a");
        let src_b = std::fs::canonicalize(dir.path()).unwrap().join("b");
        for (src, seed) in [(&src_a, 1), (&src_b, 2)] {
            std::fs::create_dir_all(src.join("sub")).unwrap();
            std::fs::write(src.join("photo.jpg"), random_bytes(1_500_000, seed)).unwrap();
            std::fs::write(src.join("sub/notes.txt"), format!("notes of {seed}")).unwrap();
            let past = std::time::SystemTime::now() - Duration::from_secs(10);
            for f in ["photo.jpg", "sub/notes.txt"] {
                filetime::set_file_mtime(src.join(f), filetime::FileTime::from_system_time(past)).unwrap();
            }
        }
        let repo = open(store.backend(), LockSettings::default());
        let snap_a = backup(&repo, &src_a, ParentChoice::None).unwrap().unwrap();
        let snap_b = backup(&repo, &src_b, ParentChoice::None).unwrap().unwrap();
        Fixture { _dir: dir, store, src_a, src_b, snap_a, snap_b }
    }

    /// Deletes snapshot `a` behind coffer's back, as a `forget` elsewhere.
    fn forget_a(&self) {
        self.store.remove(&object_key(ObjectKind::Snapshot, &self.snap_a));
    }

    /// The invariant: every snapshot's objects exist and decode, each
    /// snapshot restores its source byte for byte, and (after a prune that
    /// finished last) nothing unreferenced is left.
    fn check(&self, expect_exact: bool) -> Vec<Id> {
        let repo = open(self.store.backend(), LockSettings::default());
        let (trees, chunks) = reachable_objects(&repo);
        let snaps: Vec<(Id, coffer_core::snapshot::Snapshot)> = repo.snapshots().unwrap();
        for (id, snap) in &snaps {
            let src = if snap.paths == [self.src_a.display().to_string()] { &self.src_a } else { &self.src_b };
            assert_eq!(restored_contents(&repo, id, src), contents(src), "snapshot {id} restores {}", src.display());
        }
        if expect_exact {
            let listed_trees: BTreeSet<Id> = repo.list_ids(ObjectKind::Tree).unwrap().into_iter().collect();
            let listed_chunks: BTreeSet<Id> = repo.list_ids(ObjectKind::Chunk).unwrap().into_iter().collect();
            assert_eq!(listed_trees, trees, "prune left exactly the referenced trees");
            assert_eq!(listed_chunks, chunks, "prune left exactly the referenced chunks");
        }
        snaps.into_iter().map(|(id, _)| id).collect()
    }
}

/// Runs prune on its own handle in a thread.
/// Any unused blob makes its pack repacked, so that what is left is
/// exactly what the snapshots reference.
fn spawn_prune(repo: Repository) -> std::thread::JoinHandle<coffer_core::Result<prune::PruneOutcome>> {
    std::thread::spawn(move || {
        prune::prune(&repo, &PruneOptions { max_unused_percent: 0.0, ..PruneOptions::default() })
    })
}

/// A backup of `a` is held right after its listing of the packs (it will
/// reuse the chunks of `a` it saw in the index) while snapshot `a` is deleted and prune marks.
/// Prune's exclusive phase must wait for the backup, and then find its new
/// snapshot and keep what it reuses.
fn paused_backup_survives_prune(fx: &Fixture, prune_clock_offset: jiff::SignedDuration) {
    let slow = settings(Duration::from_secs(20), Duration::from_secs(120));
    // A new file: the new snapshot's trees differ from a's, which become
    // garbage, while the photo's chunks are reused from a.
    std::fs::write(fx.src_a.join("new.txt"), b"written after snapshot a").unwrap();
    let backup_backend = PausingBackend::new(fx.store.backend());
    let listed = backup_backend.pause_after(Op::List, "tree/");
    let backup_repo = open(backup_backend.clone(), slow);
    let src = fx.src_a.clone();
    let parent = fx.snap_a;
    let backup_thread = std::thread::spawn(move || backup(&backup_repo, &src, ParentChoice::Snapshot(parent)));
    listed.wait_reached();

    fx.forget_a();
    let prune_backend = PausingBackend::new(fx.store.backend());
    let released_shared = prune_backend.counter(Op::Delete, "locks/");
    let lock_looks = prune_backend.counter(Op::List, "locks/");
    let mut prune_settings = slow;
    prune_settings.wall_clock_offset = prune_clock_offset;
    let prune_thread = spawn_prune(open(prune_backend.clone(), prune_settings));
    // Prune has marked, listed its candidates and let go of its shared lock;
    // then it looked at the locks for its exclusive one and met the backup's.
    released_shared.wait_for(1);
    lock_looks.wait_for(3);
    assert!(!prune_thread.is_finished(), "prune must wait for the running backup");

    listed.release();
    let new_snapshot = backup_thread.join().unwrap().expect("the backup completes").expect("a snapshot");
    let outcome = prune_thread.join().unwrap().expect("prune completes");
    assert_eq!(outcome.snapshots_added_meanwhile, 1, "{outcome:?}");
    assert_eq!(outcome.chunks_deleted, 0, "the photo's chunks are reused by the new snapshot: {outcome:?}");
    // Snapshot a's own trees go, except those in a pack that also holds a
    // tree the new snapshot reuses (a's `sub`): such a pack is kept whole by
    // this prune, and the next one repacks it. (Blobs are placed at random
    // in two open packs, so which of a's trees share `sub`'s pack differs
    // from run to run.)
    let repo = open(fx.store.backend(), LockSettings::default());
    let (live, _) = reachable_objects(&repo);
    let blobs = coffer_core::index::load(&repo).unwrap().blobs;
    let pack_of = |id: &Id| blobs.get(ObjectKind::Tree, id).map(|l| l.pack);
    let live_packs: BTreeSet<Id> = live.iter().filter_map(pack_of).collect();
    let left: Vec<Id> = repo.list_ids(ObjectKind::Tree).unwrap().into_iter().filter(|t| !live.contains(t)).collect();
    for tree in &left {
        assert!(
            pack_of(tree).is_some_and(|p| live_packs.contains(&p)),
            "unreferenced tree {tree} was kept, though no tree in use shares its pack: {outcome:?}"
        );
    }
    if left.is_empty() {
        assert!(outcome.trees_deleted > 0, "snapshot a's own trees go: {outcome:?}");
    }
    fx.check(false);
    spawn_prune(open(fx.store.backend(), LockSettings::default())).join().unwrap().expect("second prune");
    let snaps = fx.check(true);
    assert_eq!(snaps.len(), 2);
    assert!(snaps.contains(&new_snapshot) && snaps.contains(&fx.snap_b));
}

/// The same, but the backup's lock refreshes fail: prune sees its lock
/// unchanged for the stale time, goes ahead and deletes what only snapshot
/// `a` referenced, and the backup, resumed, must give up instead of writing
/// a snapshot that references deleted chunks.
fn backup_with_failing_refreshes_aborts(fx: &Fixture) {
    let quick = settings(Duration::from_secs(2), Duration::from_secs(120));
    let backup_backend = PausingBackend::new(fx.store.backend());
    let listed = backup_backend.pause_after(Op::List, "tree/");
    backup_backend.fail_after(Op::Put, "locks/", 1);
    let backup_repo = open(backup_backend.clone(), quick);
    let src = fx.src_a.clone();
    let parent = fx.snap_a;
    let backup_thread = std::thread::spawn(move || backup(&backup_repo, &src, ParentChoice::Snapshot(parent)));
    listed.wait_reached();

    fx.forget_a();
    let outcome = spawn_prune(open(fx.store.backend(), quick)).join().unwrap().expect("prune completes");
    assert!(outcome.chunks_deleted > 0, "the chunks only snapshot a had are deleted: {outcome:?}");

    listed.release();
    let result = backup_thread.join().unwrap();
    assert!(matches!(result, Err(Error::LockLost { .. })), "the backup must abort: {result:?}");
    assert_eq!(fx.check(true), vec![fx.snap_b]);
}

/// Someone removes a running backup's lock: the backup must not write its
/// snapshot (nor write the lock back), whether its refresh or its re-read
/// before the snapshot notices first.
fn backup_whose_lock_is_removed_aborts(fx: &Fixture) {
    let backup_backend = PausingBackend::new(fx.store.backend());
    let listed = backup_backend.pause_after(Op::List, "tree/");
    let backup_repo = open(backup_backend.clone(), settings(Duration::from_secs(3), Duration::ZERO));
    let src = fx.src_a.clone();
    let backup_thread = std::thread::spawn(move || backup(&backup_repo, &src, ParentChoice::Auto));
    listed.wait_reached();
    let watcher = open(fx.store.backend(), LockSettings::default());
    let (locks, _) = watcher.locks().unwrap();
    assert_eq!(locks.len(), 1, "the backup's shared lock");
    fx.store.remove(&locks[0].name());
    listed.release();
    let result = backup_thread.join().unwrap();
    assert!(matches!(result, Err(Error::LockLost { .. })), "the backup must abort: {result:?}");
    assert!(watcher.locks().unwrap().0.is_empty(), "the removed lock was not written back");
    let mut snaps = fx.check(false);
    snaps.sort();
    let mut expected = vec![fx.snap_a, fx.snap_b];
    expected.sort();
    assert_eq!(snaps, expected);
}

/// Two prunes at once: one is held after its listing (holding its shared lock)
/// while the other marks and waits for its exclusive phase; both finish.
fn two_prunes_both_finish(fx: &Fixture) {
    fx.forget_a();
    let slow = settings(Duration::from_secs(20), Duration::ZERO);
    let first_backend = PausingBackend::new(fx.store.backend());
    let marked = first_backend.pause_after(Op::List, "tree/");
    let first = spawn_prune(open(first_backend.clone(), slow));
    marked.wait_reached();

    let second_backend = PausingBackend::new(fx.store.backend());
    let lock_looks = second_backend.counter(Op::List, "locks/");
    // No --retry-lock: a prune's lock is waited for regardless.
    let second = spawn_prune(open(second_backend.clone(), slow));
    lock_looks.wait_for(3);
    marked.release();
    let a = first.join().unwrap().expect("first prune");
    let b = second.join().unwrap().expect("second prune");
    assert!(a.chunks_deleted > 0 || b.chunks_deleted > 0, "{a:?} {b:?}");
    assert_eq!(fx.check(true), vec![fx.snap_b]);
}

/// The backup's lock vanishes in the window after its last check, while
/// its snapshot is being written (held right after the write landed). With
/// `pruned`, a prune ran in that window: snapshot `a` is forgotten and a
/// chunk of its photo, which the new snapshot reuses, is deleted; without,
/// only the forget ran. The
/// backup must notice the lost lock after writing, look for everything its
/// snapshot references, and remove the snapshot (failing clearly) only if
/// something is missing.
fn lock_lost_as_the_snapshot_lands(fx: &Fixture, pruned: bool) {
    std::fs::write(fx.src_a.join("new.txt"), b"written after snapshot a").unwrap();
    let backup_backend = PausingBackend::new(fx.store.backend());
    let written = backup_backend.pause_after(Op::Put, "snapshots/");
    let backup_repo = open(backup_backend.clone(), settings(Duration::from_secs(20), Duration::ZERO));
    let src = fx.src_a.clone();
    let parent = fx.snap_a;
    let backup_thread = std::thread::spawn(move || backup(&backup_repo, &src, ParentChoice::Snapshot(parent)));
    written.wait_reached();

    let watcher = open(fx.store.backend(), LockSettings::default());
    let (locks, _) = watcher.locks().unwrap();
    assert_eq!(locks.len(), 1, "the backup's shared lock");
    fx.store.remove(&locks[0].name());
    let photo = crate::common::snapshot_node(&watcher, &fx.snap_a.to_string(), &fx.src_a.join("photo.jpg"));
    fx.forget_a();
    if pruned {
        fx.store.remove(&crate::common::stored_blob(&watcher, ObjectKind::Chunk, &photo.content[0].0).pack_key);
    }
    written.release();
    let result = backup_thread.join().unwrap();
    let snaps = fx.check(false);
    if pruned {
        match result {
            Err(Error::CommitLost { snapshot, reason }) => {
                assert!(!snaps.contains(&snapshot), "the snapshot referencing a deleted chunk was removed");
                assert!(reason.contains("chunks it references are missing"), "{reason}");
            }
            other => panic!("the backup must fail and remove its snapshot: {other:?}"),
        }
        assert_eq!(snaps, vec![fx.snap_b]);
    } else {
        let id = result.expect("nothing is missing: the backup stands").expect("a snapshot");
        assert_eq!(snaps.len(), 2);
        assert!(snaps.contains(&id), "the new snapshot stays and restores");
    }
}

fn local(dir: &Path) -> Box<dyn Store> {
    Box::new(LocalStore(dir.join("repo")))
}

#[test]
fn a_paused_backup_survives_a_prune_local() {
    paused_backup_survives_prune(&Fixture::new(local), jiff::SignedDuration::ZERO);
}

#[test]
fn a_prune_whose_clock_is_two_hours_ahead_still_waits_local() {
    paused_backup_survives_prune(&Fixture::new(local), jiff::SignedDuration::from_hours(2));
}

#[test]
fn a_backup_that_cannot_refresh_its_lock_aborts_local() {
    backup_with_failing_refreshes_aborts(&Fixture::new(local));
}

#[test]
fn a_backup_whose_lock_is_removed_aborts_local() {
    backup_whose_lock_is_removed_aborts(&Fixture::new(local));
}

#[test]
fn a_snapshot_written_as_the_lock_is_lost_is_removed_if_a_prune_deleted_its_data_local() {
    lock_lost_as_the_snapshot_lands(&Fixture::new(local), true);
}

#[test]
fn a_snapshot_written_as_the_lock_is_lost_stands_if_nothing_is_missing_local() {
    lock_lost_as_the_snapshot_lands(&Fixture::new(local), false);
}

#[test]
fn two_prunes_at_once_both_finish_local() {
    two_prunes_both_finish(&Fixture::new(local));
}

#[test]
fn exclusive_lock_conflicts_are_typed_local() {
    exclusive_lock_conflicts_are_typed(&Fixture::new(local));
}

/// Shared locks coexist; the exclusive lock excludes them and is excluded by
/// them, with a typed error naming the holder; released locks are removed.
fn exclusive_lock_conflicts_are_typed(fx: &Fixture) {
    let repo = open(fx.store.backend(), settings(Duration::from_secs(60), Duration::ZERO));
    let shared = repo.lock_shared("backup").unwrap();
    let other = open(fx.store.backend(), settings(Duration::from_secs(60), Duration::ZERO));
    let second_shared = other.lock_shared("backup").expect("shared locks coexist");
    match other.lock_exclusive("prune") {
        Err(Error::Locked { holder, .. }) => {
            assert!(holder.contains("backup") && holder.contains(&std::process::id().to_string()), "{holder}")
        }
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("an exclusive lock beside shared ones"),
    }
    shared.check().unwrap();
    drop(second_shared);
    shared.release().unwrap();
    // (Not prune's: a prune's lock is waited for without a limit.)
    let exclusive = other.lock_exclusive("repair").expect("free now");
    assert!(matches!(repo.lock_shared("backup"), Err(Error::Locked { .. })), "no shared lock beside the exclusive");
    exclusive.release().unwrap();
    let (locks, damaged) = repo.locks().unwrap();
    assert!(locks.is_empty() && damaged.is_empty(), "released locks are removed");
}

fn s3(_dir: &Path) -> Box<dyn Store> {
    Box::new(crate::common::s3::S3Store::start("races"))
}

#[test]
fn a_paused_backup_survives_a_prune_s3() {
    paused_backup_survives_prune(&Fixture::new(s3), jiff::SignedDuration::ZERO);
}

#[test]
fn a_prune_whose_clock_is_two_hours_ahead_still_waits_s3() {
    paused_backup_survives_prune(&Fixture::new(s3), jiff::SignedDuration::from_hours(2));
}

#[test]
fn a_backup_that_cannot_refresh_its_lock_aborts_s3() {
    backup_with_failing_refreshes_aborts(&Fixture::new(s3));
}

#[test]
fn a_snapshot_written_as_the_lock_is_lost_is_removed_if_a_prune_deleted_its_data_s3() {
    lock_lost_as_the_snapshot_lands(&Fixture::new(s3), true);
}

#[test]
fn two_prunes_at_once_both_finish_s3() {
    two_prunes_both_finish(&Fixture::new(s3));
}

#[test]
fn a_backup_whose_lock_is_removed_aborts_s3() {
    backup_whose_lock_is_removed_aborts(&Fixture::new(s3));
}

#[test]
fn exclusive_lock_conflicts_are_typed_s3() {
    exclusive_lock_conflicts_are_typed(&Fixture::new(s3));
}
