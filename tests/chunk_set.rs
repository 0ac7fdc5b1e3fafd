//! The local chunk-set cache: a second backup does not LIST `chunks/`; a
//! prune (a bumped generation) or a damaged cache file makes it list again;
//! and a chunk that vanished from the repository is still stored again
//! (invariant 4) once the generation says the cache is stale.

use std::path::PathBuf;

use assert_cmd::Command;
use coffer_core::crypto::ObjectKind;

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

fn second_backup_lists_no_chunks(env: &Env, coffer: &dyn Fn() -> Command) {
    coffer().args(INIT).assert().success();
    env.write("a.jpg", &random_bytes(500_000, 1));
    let (first, _) = backup(coffer(), env);
    assert_eq!(lists(&first), LISTS_WITHOUT_CACHE, "{first}");
    // 500 kB is below the minimum chunk: one chunk per file.
    // The set now holds the chunk just uploaded: 68 bytes of header, 32 per id.
    assert_eq!(std::fs::metadata(cache_file(env)).unwrap().len(), 68 + 32, "one chunk cached");
    env.write("b.jpg", &random_bytes(500_000, 2));
    let (second, _) = backup(coffer(), env);
    assert_eq!(lists(&second), LISTS_WITH_CACHE, "{second}");
    assert_eq!(second["chunks_added"], 1, "{second}");
    assert_eq!(std::fs::metadata(cache_file(env)).unwrap().len(), 68 + 2 * 32, "the new chunk merged in");
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
    forged[28..36].copy_from_slice(&2u64.to_le_bytes());
    forged.extend_from_slice(&[0xee; 32]);
    for bad in [flipped, forged, b"not a cache".to_vec()] {
        std::fs::write(&file, &bad).unwrap();
        let (report, stderr) = backup(env.coffer(), &env);
        assert!(stderr.contains("ignoring the chunk set cache"), "{stderr}");
        assert_eq!(lists(&report), LISTS_WITHOUT_CACHE, "{report}");
        // Rewritten from the listing: the same set under the same
        // generation, so byte for byte the good file.
        assert_eq!(std::fs::read(&file).unwrap(), good);
    }
}

both_backends!(chunk_lost_after_a_prune_is_stored_again);

fn chunk_lost_after_a_prune_is_stored_again(backend: Backend) {
    let env = Env::init_on(backend);
    let data = random_bytes(500_000, 5);
    env.write("a.jpg", &data);
    backup(env.coffer(), &env);
    let repo = open_repo(&env);
    let chunks = repo.list_ids(ObjectKind::Chunk).unwrap();
    assert_eq!(chunks.len(), 1);
    // What prune does: delete, after bumping the generation.
    repo.runtime().block_on(repo.bump_generation()).unwrap();
    std::fs::remove_file(crate::common::object_file(&env.repo, ObjectKind::Chunk, &chunks[0])).unwrap();

    let (report, _) = backup(env.coffer(), &env);
    assert_eq!(report["chunks_added"], 1, "{report}");
    assert_eq!(report["bytes_read"], 500_000, "the file is read again: {report}");
    assert_eq!(repo.list_ids(ObjectKind::Chunk).unwrap(), chunks);
    let target = env.path("restored");
    env.coffer().args(["restore", "latest", "--target"]).arg(&target).assert().success();
    assert_eq!(std::fs::read(env.restored_src(&target).join("a.jpg")).unwrap(), data);
}
