//! What a command costs on the wire: the request counts and bytes of
//! `backup --json` and `restore --json` are exact for a tiny known backup, on
//! a local folder and on the in-process S3 server.

use std::path::Path;

use assert_cmd::Command;

use crate::common::Env;
use crate::common::s3::{self, S3Server};

const INIT: [&str; 5] = ["init", "--argon2-memory", "64", "--argon2-iterations", "1"];

/// Total size of the stored objects below `dir` whose key starts with one of
/// `prefixes` (the S3 server's own metadata files left out).
fn stored_bytes(dir: &Path, prefixes: &[&str]) -> u64 {
    crate::common::files_below(dir)
        .iter()
        .filter(|p| !p.to_string_lossy().contains(".s3s"))
        .filter(|p| prefixes.iter().any(|pre| p.to_string_lossy().starts_with(pre)))
        .map(|p| std::fs::metadata(dir.join(p)).expect("object size").len())
        .sum()
}

fn run_json(mut cmd: Command) -> serde_json::Value {
    let out = cmd.output().expect("run coffer");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

fn n(v: &serde_json::Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or_else(|| panic!("no {field} in {v}"))
}

/// `coffer` is the binary pointed at the repository; `objects` is where its
/// objects are stored on disk; `heads` the HEAD requests of one command.
fn counts_are_exact(env: &Env, coffer: &dyn Fn() -> Command, objects: &Path, heads: u64) {
    coffer().args(INIT).assert().success();
    env.write("a.txt", b"a small file: one chunk");

    let mut cmd = coffer();
    cmd.arg("backup").arg("--json").arg(&env.src);
    let report = run_json(cmd);
    let (chunks, trees) = (n(&report, "chunks_added"), n(&report, "trees_added"));
    assert_eq!(chunks, 1, "{report}");
    let wire = &report["wire"];
    // Every new pack once (one data pack; the trees went to one or both of
    // the two open tree packs), one index object, the snapshot, and the
    // backup's lock record.
    let packs = stored_count(objects, &["data/", "tree/"]);
    assert!((2..=3).contains(&packs), "{packs} packs");
    assert_eq!(stored_count(objects, &["index/"]), 1);
    assert_eq!(n(wire, "puts"), packs + 1 + 1 + 1, "{report}");
    // Opening: config and the one key; the lock record read back after
    // writing it (write-then-list), just before the snapshot and just after
    // it (the commit window, docs/threat-model.md).
    assert_eq!(n(wire, "gets"), 5, "{report}");
    // keys/ (opening), locks/ before and after writing the lock, snapshots/
    // (once, for both the per-host state and the parent), index/, data/,
    // tree/: each a single page.
    assert_eq!(n(wire, "lists"), 7, "{report}");
    // The lock, released.
    assert_eq!(n(wire, "deletes"), 1, "{report}");
    assert_eq!(n(wire, "heads"), heads, "{report}");
    // The bytes of the stored objects exactly, plus the lock record: written
    // once and read three times, then deleted, so it is not on disk to measure.
    let lock_up = n(wire, "bytes_up") - stored_bytes(objects, &["data/", "tree/", "index/", "snapshots/"]);
    let lock_down = n(wire, "bytes_down") - stored_bytes(objects, &["config", "keys/"]);
    assert!(lock_up > 0 && lock_up < 1024, "one small lock record: {report}");
    assert_eq!(lock_down, 3 * lock_up, "the lock read back three times: {report}");

    let mut cmd = coffer();
    cmd.args(["restore", "latest", "--json", "--target"]).arg(env.path("restored"));
    let report = run_json(cmd);
    let wire = &report["wire"];
    assert_eq!(n(wire, "puts"), 0, "{report}");
    // The backup kept a copy of every tree it uploaded, of its index object
    // and of its snapshot in the local cache: a restore reads config, key
    // and the chunk only, the chunk with one ranged read of its pack.
    assert_eq!(n(wire, "gets"), 2 + chunks, "{report}");
    assert_eq!(n(wire, "lists"), 6, "keys/, snapshots/ for the state and for `latest`, index/, data/, tree/: {report}");
    assert_eq!(n(wire, "heads"), heads, "{report}");
    assert_eq!(n(wire, "bytes_up"), 0, "{report}");
    let chunk_down = n(wire, "bytes_down") - stored_bytes(objects, &["config", "keys/"]);
    assert!(chunk_down > 23 && chunk_down < stored_bytes(objects, &["data/"]), "the blob, not its pack: {report}");

    // Without the cache: config, key, the snapshot, the index object, every
    // tree and the chunk, each read once.
    let mut cmd = coffer();
    cmd.args(["--no-cache", "restore", "latest", "--json", "--target"]).arg(env.path("restored-again"));
    let report = run_json(cmd);
    let wire = &report["wire"];
    assert_eq!(n(wire, "gets"), 3 + 1 + trees + chunks, "{report}");
    assert_eq!(n(wire, "lists"), 6, "{report}");
    assert!(n(wire, "bytes_down") < stored_bytes(objects, &[""]), "blobs, not whole packs: {report}");

    // An unchanged re-backup compares with its parent's trees. From the
    // cache: no tree, no index object and no snapshot is fetched, only what
    // the first backup read.
    let mut cmd = coffer();
    cmd.arg("backup").arg("--json").arg(&env.src);
    let report = run_json(cmd);
    // (The trees of the source's ancestors change: restoring into the
    // scratch folder touched its mtime. They are uploaded, not fetched.)
    assert_eq!((n(&report, "chunks_added"), n(&report, "files_unchanged")), (0, 1), "{report}");
    let wire = &report["wire"];
    // The same five GETs as the first backup's.
    assert_eq!(n(wire, "gets"), 5, "{report}");
    assert_eq!(n(wire, "lists"), 7, "{report}");
    // With --no-cache, every tree of the parent is read from the store, and
    // the two snapshots and two index objects now in the repository.
    let mut cmd = coffer();
    cmd.args(["--no-cache", "backup", "--json"]).arg(&env.src);
    let report = run_json(cmd);
    let wire = &report["wire"];
    assert_eq!(n(wire, "gets"), 5 + 2 + 2 + trees, "{report}");
    assert_eq!(n(wire, "lists"), 7, "{report}");
}

/// How many stored objects below `dir` have a key starting with one of
/// `prefixes`.
fn stored_count(dir: &Path, prefixes: &[&str]) -> u64 {
    crate::common::files_below(dir)
        .iter()
        .filter(|p| !p.to_string_lossy().contains(".s3s"))
        .filter(|p| prefixes.iter().any(|pre| p.to_string_lossy().starts_with(pre)))
        .count() as u64
}

#[test]
fn wire_counts_are_exact_local() {
    let env = Env::new();
    counts_are_exact(&env, &|| env.coffer(), &env.repo, 0);
}

#[test]
fn wire_counts_are_exact_s3() {
    let server = S3Server::start();
    let url = server.url("bucket/costs");
    let env = Env::new();
    // One HEAD per command: the bucket check when the client connects.
    counts_are_exact(&env, &|| s3::coffer(&env, &url), &server.bucket_dir("bucket").join("costs"), 1);
}

#[test]
fn backup_summary_shows_requests() {
    let env = Env::init();
    env.write("f", b"x");
    let out = env.coffer().arg("backup").arg(&env.src).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("Requests:")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(" PUT, ") && line.contains(" LIST") && line.contains(" up, "), "{line}");
}
