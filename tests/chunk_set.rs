//! The local chunk-set cache: a second backup does not LIST `chunks/`; a
//! prune (a bumped generation) or a damaged cache file makes it list again;
//! and a chunk that vanished from the repository is still stored again
//! (invariant 4) once the generation says the cache is stale.

use std::path::PathBuf;

use std::sync::Arc;
use std::time::Duration;

use assert_cmd::Command;
use coffer_core::archiver::{self, BackupOptions};
use coffer_core::backend::pausing::{Counter, Op, PausingBackend};
use coffer_core::chunk_set::ChunkSetPolicy;
use coffer_core::crypto::ObjectKind;
use coffer_core::lock::LockSettings;
use coffer_core::progress::NoProgress;

use crate::common::s3::{self, S3Server};
use crate::common::{Backend, Env, both_backends, open_repo, random_bytes};

const INIT: [&str; 5] = ["init", "--argon2-memory", "64", "--argon2-iterations", "1"];

fn backup(mut cmd: Command, env: &Env) -> (serde_json::Value, String) {
    let out = cmd.arg("backup").arg("--json").arg(&env.src).output().expect("run backup");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "backup failed: {stderr}");
    (serde_json::from_slice(&out.stdout).expect("backup JSON"), stderr)
}

fn lists(report: &serde_json::Value) -> u64 {
    report["wire"]["lists"].as_u64().unwrap_or_else(|| panic!("no wire.lists in {report}"))
}

/// The cache file of the environment's only repository.
fn cache_file(env: &Env) -> PathBuf {
    let base = env.path("cache");
    let repos: Vec<PathBuf> = std::fs::read_dir(&base)
        .expect("cache folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n.len() == 64))
        .collect();
    assert_eq!(repos.len(), 1, "{repos:?}");
    repos[0].join("chunks")
}

/// A backup with a usable cache lists keys/ (opening), locks/ twice
/// (write-then-list), snapshots/ (once, for the per-host state and the
/// parent) and trees/; without one, chunks/ too.
const LISTS_WITH_CACHE: u64 = 5;
const LISTS_WITHOUT_CACHE: u64 = LISTS_WITH_CACHE + 1;

/// The cache file's header (crates/coffer-core/src/chunk_set.rs).
const HEADER: u64 = 80;
/// Where in it the count of ids is.
const COUNT_AT: std::ops::Range<usize> = 40..48;

fn second_backup_lists_no_chunks(env: &Env, coffer: &dyn Fn() -> Command) {
    coffer().args(INIT).assert().success();
    env.write("a.jpg", &random_bytes(500_000, 1));
    let (first, _) = backup(coffer(), env);
    assert_eq!(lists(&first), LISTS_WITHOUT_CACHE, "{first}");
    // 500 kB is below the minimum chunk: one chunk per file.
    // The set now holds the chunk just uploaded: 80 bytes of header, 32 per id.
    assert_eq!(std::fs::metadata(cache_file(env)).unwrap().len(), HEADER + 32, "one chunk cached");
    env.write("b.jpg", &random_bytes(500_000, 2));
    let (second, _) = backup(coffer(), env);
    assert_eq!(lists(&second), LISTS_WITH_CACHE, "{second}");
    assert_eq!(second["chunks_added"], 1, "{second}");
    assert_eq!(std::fs::metadata(cache_file(env)).unwrap().len(), HEADER + 2 * 32, "the new chunk merged in");
    let (third, _) = backup(coffer(), env);
    assert_eq!(lists(&third), LISTS_WITH_CACHE, "{third}");
    assert_eq!(third["chunks_added"], 0, "{third}");
}

#[test]
fn second_backup_lists_no_chunks_local() {
    let env = Env::new();
    second_backup_lists_no_chunks(&env, &|| env.coffer());
}

#[test]
fn second_backup_lists_no_chunks_s3() {
    let server = S3Server::start();
    let url = server.url("bucket/cached");
    let env = Env::new();
    second_backup_lists_no_chunks(&env, &|| s3::coffer(&env, &url));
}

both_backends!(bumped_generation_forces_a_listing);

fn bumped_generation_forces_a_listing(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("a.jpg", &random_bytes(500_000, 1));
    backup(env.coffer(), &env);
    let repo = open_repo(&env);
    repo.runtime().block_on(repo.bump_generation()).unwrap();
    let (report, _) = backup(env.coffer(), &env);
    assert_eq!(lists(&report), LISTS_WITHOUT_CACHE, "{report}");
    // Listed afresh and recorded under the new generation: trusted again.
    let (report, _) = backup(env.coffer(), &env);
    assert_eq!(lists(&report), LISTS_WITH_CACHE, "{report}");
}

both_backends!(damaged_cache_is_ignored_with_a_warning);

fn damaged_cache_is_ignored_with_a_warning(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("a.jpg", &random_bytes(500_000, 1));
    backup(env.coffer(), &env);
    let file = cache_file(&env);
    let good = std::fs::read(&file).unwrap();

    // One flipped bit in an id, then an id added with the count raised
    // (what someone without the key would do to make a backup skip a chunk).
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let mut forged = good.clone();
    forged[COUNT_AT].copy_from_slice(&2u64.to_le_bytes());
    forged.extend_from_slice(&[0xee; 32]);
    for bad in [flipped, forged, b"not a cache".to_vec()] {
        std::fs::write(&file, &bad).unwrap();
        let (report, stderr) = backup(env.coffer(), &env);
        assert!(stderr.contains("ignoring the chunk set cache"), "{stderr}");
        assert_eq!(lists(&report), LISTS_WITHOUT_CACHE, "{report}");
        // Rewritten from the listing: the same set under the same
        // generation (only the listing's time and the backup count, and so
        // the MAC, differ from the good file's).
        let rewritten = std::fs::read(&file).unwrap();
        assert_eq!(rewritten.len(), good.len());
        assert_eq!(rewritten[..28], good[..28], "magic, version, generation");
        assert_eq!(rewritten[COUNT_AT], good[COUNT_AT], "count");
        assert_eq!(rewritten[HEADER as usize..], good[HEADER as usize..], "ids");
    }
}

both_backends!(chunk_lost_after_a_prune_is_stored_again);

/// One file of one chunk backed up; `before_delete` runs, then the chunk is
/// deleted behind coffer's back.
fn one_chunk_deleted(backend: Backend, before_delete: impl Fn(&coffer_core::Repository)) -> Lost {
    let env = Env::init_on(backend);
    let data = random_bytes(500_000, 5);
    env.write("a.jpg", &data);
    backup(env.coffer(), &env);
    let repo = open_repo(&env);
    let chunks = repo.list_ids(ObjectKind::Chunk).unwrap();
    assert_eq!(chunks.len(), 1);
    before_delete(&repo);
    std::fs::remove_file(crate::common::object_file(&env.repo, ObjectKind::Chunk, &chunks[0])).unwrap();
    Lost { env, data, repo, chunks }
}

struct Lost {
    env: Env,
    data: Vec<u8>,
    repo: coffer_core::Repository,
    chunks: Vec<coffer_core::Id>,
}

fn chunk_lost_after_a_prune_is_stored_again(backend: Backend) {
    // What prune does: delete, after bumping the generation.
    let Lost { env, data, repo, chunks } = one_chunk_deleted(backend, |repo| {
        repo.runtime().block_on(repo.bump_generation()).unwrap();
    });

    let (report, _) = backup(env.coffer(), &env);
    assert_eq!(report["chunks_added"], 1, "{report}");
    assert_eq!(report["bytes_read"], 500_000, "the file is read again: {report}");
    assert_eq!(repo.list_ids(ObjectKind::Chunk).unwrap(), chunks);
    let target = env.path("restored");
    env.coffer().args(["restore", "latest", "--target"]).arg(&target).assert().success();
    assert_eq!(std::fs::read(env.restored_src(&target).join("a.jpg")).unwrap(), data);
}

/// A library backup of the environment's source into its repository,
/// through `repo`; returns how many times it listed `chunks/`.
fn library_backup(env: &Env, repo: &coffer_core::Repository, chunk_lists: &Counter) -> u64 {
    let before = chunk_lists.get();
    let options = BackupOptions { paths: vec![env.src.clone()], ..BackupOptions::default() };
    archiver::backup(repo, &options, &NoProgress).expect("backup").snapshot_id.expect("a snapshot");
    (chunk_lists.get() - before) as u64
}

/// The environment's repository through a counter of `chunks/` listings,
/// with its cache, the given policy and a clock `offset` off.
fn counted_repo(env: &Env, policy: ChunkSetPolicy, offset_secs: i64) -> (coffer_core::Repository, Arc<Counter>) {
    let backend = PausingBackend::new(env.library_backend());
    let lists = backend.counter(Op::List, "chunks/");
    let mut repo = coffer_core::Repository::open(backend, crate::common::PASSWORD.as_bytes())
        .expect("open")
        .with_cache(&env.path("cache"));
    repo.set_chunk_set_policy(policy);
    let offset = jiff::SignedDuration::from_secs(offset_secs);
    repo.set_lock_settings(LockSettings { wall_clock_offset: offset, ..LockSettings::default() });
    (repo, lists)
}

both_backends!(a_cached_set_is_trusted_for_so_many_backups);

fn a_cached_set_is_trusted_for_so_many_backups(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("a.jpg", &random_bytes(500_000, 1));
    let policy = ChunkSetPolicy { max_backups: 3, ..ChunkSetPolicy::default() };
    let (repo, lists) = counted_repo(&env, policy, 0);
    let listed: Vec<u64> = (0..5).map(|_| library_backup(&env, &repo, &lists)).collect();
    // The first lists; three backups trust that listing; the fourth lists
    // again and starts a new count.
    assert_eq!(listed, vec![1, 0, 0, 1, 0]);
}

#[test]
fn a_cached_set_is_trusted_for_so_long() {
    let env = Env::init();
    env.write("a.jpg", &random_bytes(500_000, 1));
    let policy = ChunkSetPolicy { max_age: Duration::from_secs(3600), ..ChunkSetPolicy::default() };
    let (repo, lists) = counted_repo(&env, policy, 0);
    assert_eq!(library_backup(&env, &repo, &lists), 1);
    assert_eq!(library_backup(&env, &repo, &lists), 0, "a fresh listing is trusted");
    let (later, lists) = counted_repo(&env, policy, 3599);
    assert_eq!(library_backup(&env, &later, &lists), 0, "just under an hour later");
    let (later, lists) = counted_repo(&env, policy, 3600);
    assert_eq!(library_backup(&env, &later, &lists), 1, "an hour later the repository is listed again");
    assert_eq!(library_backup(&env, &later, &lists), 0);
}

#[test]
fn a_clock_that_went_back_makes_the_set_untrusted() {
    let env = Env::init();
    env.write("a.jpg", &random_bytes(500_000, 1));
    // Listed while the clock was a day ahead.
    let (ahead, lists) = counted_repo(&env, ChunkSetPolicy::default(), 86_400);
    assert_eq!(library_backup(&env, &ahead, &lists), 1);
    assert_eq!(library_backup(&env, &ahead, &lists), 0);
    let (now, lists) = counted_repo(&env, ChunkSetPolicy::default(), 0);
    assert_eq!(library_backup(&env, &now, &lists), 1, "the listing's time is in the future");
}

/// The repository is replaced by an older copy of itself: the chunk the
/// newer backup uploaded is gone, and so is its snapshot, while the prune
/// generation is the same. The next backup sees the snapshot vanish and
/// must not trust the cached set, which still names the lost chunk.
#[test]
fn a_rollback_drops_the_cached_set() {
    let env = Env::init();
    env.write("a.jpg", &random_bytes(500_000, 1));
    backup(env.coffer(), &env);
    let old_copy = env.path("old-copy");
    let copied = std::process::Command::new("cp").arg("-a").arg(&env.repo).arg(&old_copy).status().unwrap();
    assert!(copied.success());
    let b = random_bytes(500_000, 2);
    env.write("b.jpg", &b);
    let (second, _) = backup(env.coffer(), &env);
    assert_eq!(second["chunks_added"], 1, "{second}");

    std::fs::remove_dir_all(&env.repo).unwrap();
    std::fs::rename(&old_copy, &env.repo).unwrap();
    let (third, stderr) = backup(env.coffer(), &env);
    assert!(stderr.contains("is gone from the repository"), "the rollback is reported: {stderr}");
    assert_eq!(lists(&third), LISTS_WITHOUT_CACHE, "the repository is listed: {third}");
    assert_eq!(third["chunks_added"], 1, "b.jpg's chunk is stored again: {third}");
    env.coffer().args(["check"]).assert().success();
    let target = env.path("restored");
    env.coffer().args(["restore", "latest", "--target"]).arg(&target).assert().success();
    assert_eq!(std::fs::read(env.restored_src(&target).join("b.jpg")).unwrap(), b);
}

both_backends!(a_chunk_check_finds_missing_is_stored_again);

/// A chunk deleted by hand (not by prune: the generation stays) is found
/// missing by `check`, which drops the cached set; the next backup lists,
/// sees the chunk gone and stores the file again.
fn a_chunk_check_finds_missing_is_stored_again(backend: Backend) {
    let Lost { env, repo, chunks, .. } = one_chunk_deleted(backend, |_| {});

    let out = env.coffer().arg("check").output().unwrap();
    assert!(!out.status.success(), "check must report the missing chunk");
    assert!(!cache_file_exists(&env), "check dropped the cached set");
    let (report, _) = backup(env.coffer(), &env);
    assert_eq!(lists(&report), LISTS_WITHOUT_CACHE, "{report}");
    assert_eq!(report["chunks_added"], 1, "{report}");
    assert_eq!(repo.list_ids(ObjectKind::Chunk).unwrap(), chunks);
    env.coffer().arg("check").assert().success();
}

fn cache_file_exists(env: &Env) -> bool {
    cache_file(env).exists()
}
