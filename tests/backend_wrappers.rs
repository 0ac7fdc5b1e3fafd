//! The pipelines against slow and failing backends, through the test
//! wrappers of `coffer_core::backend::testing`, on a local folder and on the
//! in-process S3 server alike.

use std::sync::Arc;
use std::time::Duration;

use coffer_core::Repository;
use coffer_core::archiver::{self, BackupOptions};
use coffer_core::backend::Backend as _;
use coffer_core::backend::testing::{Fault, FaultBackend, FaultKind, LatencyBackend, Op};
use coffer_core::crypto::ObjectKind;
use coffer_core::key::KdfParams;
use coffer_core::progress::NoProgress;
use coffer_core::repo::InitOptions;
use coffer_core::restorer::{self, RestoreOptions};

use crate::common::{Backend, Env, both_backends, random_bytes};

pub fn cheap_init() -> InitOptions {
    InitOptions { kdf: KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }, ..InitOptions::default() }
}

both_backends!(keeps_requests_in_flight);

/// With 20 ms added to every request, backup and restore of 40 one-chunk
/// files must keep many requests in flight: one at a time would make the
/// latency, not the link, the limit.
fn keeps_requests_in_flight(backend: Backend) {
    let env = &Env::new_on(backend);
    let inner = env.library_backend();
    for i in 0..40u64 {
        // 600 kB: above the 512 KiB minimum chunk, below the average, so one chunk each.
        env.write(&format!("photo-{i:02}.jpg"), &random_bytes(600_000, i + 1));
    }
    let slow = Arc::new(LatencyBackend::new(inner, Duration::from_millis(20)));
    let repo = Repository::init(slow.clone(), b"pw", &cheap_init()).expect("init");
    slow.reset_max_in_flight();
    let outcome =
        archiver::backup(&repo, &BackupOptions { paths: vec![env.src.clone()], ..Default::default() }, &NoProgress)
            .expect("backup");
    assert!(outcome.snapshot.summary.chunks_added >= 32, "{:?}", outcome.snapshot.summary);
    let backup_max = slow.max_in_flight();
    assert!(backup_max >= 8, "backup kept only {backup_max} requests in flight");

    slow.reset_max_in_flight();
    let target = env.path("restored");
    let options = RestoreOptions { target: target.clone(), ..Default::default() };
    let restored = restorer::restore(&repo, &outcome.snapshot.tree, &options, &NoProgress).expect("restore");
    assert_eq!(restored.files, 40);
    assert!(restored.problems.is_empty(), "{:?}", restored.problems);
    let restore_max = slow.max_in_flight();
    assert!(restore_max >= 8, "restore kept only {restore_max} requests in flight");
    let back = env.restored_src(&target);
    for i in [0u64, 17, 39] {
        let name = format!("photo-{i:02}.jpg");
        assert_eq!(std::fs::read(back.join(&name)).unwrap(), random_bytes(600_000, i + 1), "{name}");
    }
}

both_backends!(parent_trees_are_fetched_in_parallel);

/// With a cold cache (a new machine, a cleared cache), an unchanged
/// re-backup fetches its parent's trees a directory level at a time with many
/// requests in flight, not one round trip per directory, and keeps them in
/// the cache: the next re-backup fetches no tree at all.
fn parent_trees_are_fetched_in_parallel(backend: Backend) {
    let env = &Env::new_on(backend);
    let inner = env.library_backend();
    for d in 0..12u64 {
        env.write(&format!("folder-{d:02}/sub/note.txt"), format!("note {d}").as_bytes());
    }
    let slow = Arc::new(LatencyBackend::new(inner, Duration::from_millis(5)));
    let options = BackupOptions { paths: vec![env.src.clone()], ..Default::default() };
    // The first backup runs without a cache, so none of its trees is kept.
    let repo = Repository::init(slow.clone(), b"pw", &cheap_init()).expect("init");
    let trees = archiver::backup(&repo, &options, &NoProgress).expect("backup").snapshot.summary.trees_added;
    assert!(trees >= 25, "12 folders, 12 sub-folders and the source's ancestors: {trees}");

    let repo = Repository::open(slow.clone(), b"pw").expect("open").with_cache(&env.path("cold-cache"));
    slow.reset_max_in_flight();
    let gets = slow.wire_stats().gets;
    let outcome = archiver::backup(&repo, &options, &NoProgress).expect("re-backup");
    // (The trees of the source's ancestors may change, as the cache folder
    // was made in the scratch folder; nothing below the source does.)
    let summary = &outcome.snapshot.summary;
    assert_eq!((summary.files_unchanged, summary.chunks_added), (12, 0), "{summary:?}");
    let second = slow.wire_stats().gets - gets;
    let max = slow.max_in_flight();
    assert!(max >= 8, "the parent's 12 sibling folders were fetched at most {max} at a time");

    let gets = slow.wire_stats().gets;
    archiver::backup(&repo, &options, &NoProgress).expect("re-backup");
    let third = slow.wire_stats().gets - gets;
    // The same requests but every tree and the first snapshot: the second
    // re-backup fetched both into the cache, and wrote its own snapshot there.
    assert_eq!(second, third + 1 + trees, "second re-backup {second} GETs, third {third}, {trees} trees");
}

/// Ten files of one chunk each (300 kB, below the minimum chunk size).
fn ten_files(env: &Env) {
    for i in 0..10u64 {
        env.write(&format!("f{i}"), &random_bytes(300_000, 200 + i));
    }
}

both_backends!(failed_uploads_leave_no_snapshot);

/// Chunk uploads fail after the third: the backup fails naming the object,
/// writes no snapshot, and the next backup reuses the three chunks stored.
fn failed_uploads_leave_no_snapshot(backend: Backend) {
    let env = &Env::new_on(backend);
    let inner = env.library_backend();
    ten_files(env);
    let faulty = Arc::new(FaultBackend::new(inner));
    let repo = Repository::init(faulty.clone(), b"pw", &cheap_init()).expect("init");
    faulty.add(Fault::after(Op::Put, "chunks/", 3, FaultKind::Permanent));
    let options = BackupOptions { paths: vec![env.src.clone()], ..Default::default() };
    let err = archiver::backup(&repo, &options, &NoProgress).expect_err("the backup must fail").to_string();
    assert!(err.contains("chunks/") && err.contains("injected failure"), "{err}");
    assert!(faulty.injected() >= 1);
    assert!(repo.list_ids(ObjectKind::Snapshot).unwrap().is_empty(), "a snapshot was written");
    assert_eq!(repo.list_ids(ObjectKind::Chunk).unwrap().len(), 3);

    faulty.clear();
    let outcome = archiver::backup(&repo, &options, &NoProgress).expect("backup");
    assert_eq!(outcome.snapshot.summary.chunks_added, 7, "{:?}", outcome.snapshot.summary);
    assert_eq!(repo.list_ids(ObjectKind::Snapshot).unwrap().len(), 1);
}

both_backends!(cached_chunk_set_spares_the_chunk_listing);

/// With the chunk-set cache, a backup under an unchanged prune generation
/// does not LIST `chunks/` at all: a listing that would fail does not matter.
/// Once the generation changes it must list, and the failure shows.
fn cached_chunk_set_spares_the_chunk_listing(backend: Backend) {
    let env = &Env::new_on(backend);
    let inner = env.library_backend();
    ten_files(env);
    let faulty = Arc::new(FaultBackend::new(inner));
    let repo = Repository::init(faulty.clone(), b"pw", &cheap_init()).expect("init").with_cache(&env.path("cache"));
    let options = BackupOptions { paths: vec![env.src.clone()], ..Default::default() };
    archiver::backup(&repo, &options, &NoProgress).expect("first backup");
    faulty.add(Fault::always(Op::List, "chunks/", FaultKind::Permanent));
    env.write("f-new", &random_bytes(300_000, 999));
    let second = archiver::backup(&repo, &options, &NoProgress).expect("a backup trusting the cache");
    assert_eq!(second.snapshot.summary.chunks_added, 1);
    assert_eq!(faulty.injected(), 0, "chunks/ was listed");

    repo.runtime().block_on(repo.bump_generation()).unwrap();
    let err = archiver::backup(&repo, &options, &NoProgress).expect_err("a stale cache must not be trusted");
    assert!(err.to_string().contains("LIST chunks/"), "{err}");
}
