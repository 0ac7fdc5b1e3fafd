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

/// With 20 ms added to every request, neither backup nor restore of 40
/// one-chunk files may pay it once per chunk: backup stores them in a
/// handful of packs, and restore reads neighbouring chunks together, with
/// all of those ranged reads in flight at once. One request per chunk at a
/// time would make the latency, not the link, the limit.
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
    let puts = slow.wire_stats().puts;
    let outcome =
        archiver::backup(&repo, &BackupOptions { paths: vec![env.src.clone()], ..Default::default() }, &NoProgress)
            .expect("backup");
    assert!(outcome.snapshot.summary.chunks_added >= 32, "{:?}", outcome.snapshot.summary);
    // 24 MB in 32 MiB packs: at most the two open data packs and a tree
    // pack, an index object, the snapshot and the lock's writes.
    let backup_puts = slow.wire_stats().puts - puts;
    assert!(backup_puts <= 8, "backup made {backup_puts} uploads for 40 chunks");

    slow.reset_max_in_flight();
    let gets = slow.wire_stats().gets;
    let target = env.path("restored");
    let options = RestoreOptions { target: target.clone(), ..Default::default() };
    let restored = restorer::restore(&repo, &outcome.snapshot.tree, &options, &NoProgress).expect("restore");
    assert_eq!(restored.files, 40);
    assert!(restored.problems.is_empty(), "{:?}", restored.problems);
    let restore_max = slow.max_in_flight();
    let restore_gets = slow.wire_stats().gets - gets;
    eprintln!("restore: {restore_gets} GETs, at most {restore_max} in flight");
    // 24 MB of chunks, in ranged reads of at most 8 MiB (a quarter of the
    // 32 MiB budget): 3 or 4 reads, all in flight at once, beside the trees
    // on the way to the source. One GET per chunk would be 40.
    assert!(restore_gets <= 12, "restore made {restore_gets} GETs for 40 chunks");
    assert!(restore_max >= 3, "restore kept only {restore_max} requests in flight");
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
    // The same requests but every tree, the first snapshot and the first
    // backup's index object: the second re-backup fetched them into the
    // cache, and wrote its own snapshot and index object there.
    assert_eq!(second, third + 1 + 1 + trees, "second re-backup {second} GETs, third {third}, {trees} trees");
}

/// Forty files of one chunk each (300 kB, below the minimum chunk size):
/// 12 MB, several 4 MiB packs.
fn forty_files(env: &Env) {
    for i in 0..40u64 {
        env.write(&format!("f{i:02}"), &random_bytes(300_000, 200 + i));
    }
}

fn small_packs() -> InitOptions {
    InitOptions { data_pack_size: 4 << 20, ..cheap_init() }
}

both_backends!(failed_uploads_leave_no_snapshot);

/// Pack uploads fail after the first: the backup fails naming the object and
/// writes no snapshot; the pack that was stored is in no index, and the next
/// backup reads its header and reuses its chunks.
fn failed_uploads_leave_no_snapshot(backend: Backend) {
    let env = &Env::new_on(backend);
    let inner = env.library_backend();
    forty_files(env);
    let faulty = Arc::new(FaultBackend::new(inner));
    let repo = Repository::init(faulty.clone(), b"pw", &small_packs()).expect("init");
    faulty.add(Fault::after(Op::Put, "data/", 1, FaultKind::Permanent));
    let options = BackupOptions { paths: vec![env.src.clone()], ..Default::default() };
    let err = archiver::backup(&repo, &options, &NoProgress).expect_err("the backup must fail").to_string();
    assert!(err.contains("data/") && err.contains("injected failure"), "{err}");
    assert!(faulty.injected() >= 1);
    assert!(repo.list_ids(ObjectKind::Snapshot).unwrap().is_empty(), "a snapshot was written");
    assert!(repo.list_ids(ObjectKind::Index).unwrap().is_empty(), "no pack was indexed");
    let kept = repo.list_ids(ObjectKind::Chunk).unwrap().len();
    assert!((10..40).contains(&kept), "the stored pack's chunks count, from its header: {kept}");

    faulty.clear();
    let outcome = archiver::backup(&repo, &options, &NoProgress).expect("backup");
    assert_eq!(outcome.snapshot.summary.chunks_added as usize, 40 - kept, "{:?}", outcome.snapshot.summary);
    assert_eq!(repo.list_ids(ObjectKind::Snapshot).unwrap().len(), 1);
    assert_eq!(repo.list_ids(ObjectKind::Chunk).unwrap().len(), 40);
}

both_backends!(cached_index_objects_are_not_downloaded_again);

/// Index objects are cached: a backup with the cache does not download
/// them, so a read of `index/` that would fail does not happen. Without the
/// cache the read fails, and the backup still knows every stored chunk, from
/// the packs' headers.
fn cached_index_objects_are_not_downloaded_again(backend: Backend) {
    let env = &Env::new_on(backend);
    let inner = env.library_backend();
    forty_files(env);
    let faulty = Arc::new(FaultBackend::new(inner));
    let repo = Repository::init(faulty.clone(), b"pw", &cheap_init()).expect("init").with_cache(&env.path("cache"));
    let options = BackupOptions { paths: vec![env.src.clone()], ..Default::default() };
    archiver::backup(&repo, &options, &NoProgress).expect("first backup");
    faulty.add(Fault::always(Op::Get, "index/", FaultKind::Permanent));
    env.write("f-new", &random_bytes(300_000, 999));
    let second = archiver::backup(&repo, &options, &NoProgress).expect("a backup reading the cached index");
    assert_eq!(second.snapshot.summary.chunks_added, 1);
    assert_eq!(faulty.injected(), 0, "an index object was downloaded");

    let uncached = Repository::open(faulty.clone(), b"pw").expect("open");
    env.write("f-newer", &random_bytes(300_000, 1000));
    let third = archiver::backup(&uncached, &options, &NoProgress).expect("a backup reading pack headers");
    assert!(faulty.injected() >= 1, "the index objects were not read");
    assert_eq!(third.snapshot.summary.chunks_added, 1, "{:?}", third.snapshot.summary);
}
