//! The local metadata cache (trees, re-authenticated on every read; never
//! snapshots, which are always read from the repository) and the per-host state
//! that notices snapshots vanishing without a forget from here.

use coffer_core::crypto::ObjectKind;
use coffer_core::repo::object_key;
use coffer_core::{Id, Repository};

use crate::common::{Env, open_repo, snapshots_json};

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn snapshot_ids(env: &Env) -> Vec<Id> {
    snapshots_json(env).iter().map(|s| s["id"].as_str().and_then(Id::from_hex).expect("id")).collect()
}

fn cache_dir(env: &Env, repo: &Repository) -> std::path::PathBuf {
    env.path("cache").join(repo.repo_id().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

#[test]
fn trees_are_cached_and_checked_on_every_read() {
    let env = Env::init();
    env.write("a/photo.jpg", &crate::common::random_bytes(200_000, 3));
    let id = env.backup_json(&[])["snapshot_id"].as_str().and_then(Id::from_hex).unwrap();
    let repo = open_repo(&env);
    let snap = repo.load_snapshot(&id).unwrap();
    let cache = cache_dir(&env, &repo);
    env.coffer().args(["ls", "latest"]).assert().success();
    let cached_tree = cache.join(object_key(ObjectKind::Tree, &snap.tree));
    let cached_snap = cache.join(object_key(ObjectKind::Snapshot, &id));
    assert!(!cached_snap.exists(), "snapshots are not cached");
    let stored_tree = std::fs::read(env.repo.join(object_key(ObjectKind::Tree, &snap.tree))).unwrap();
    assert_eq!(std::fs::read(&cached_tree).unwrap(), stored_tree, "the stored bytes, as fetched");

    // A damaged copy is noticed, dropped and fetched again.
    let mut bad = stored_tree.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(&cached_tree, &bad).unwrap();
    let listing = env.coffer().args(["ls", "latest"]).output().unwrap();
    assert!(listing.status.success(), "{}", stderr_of(&listing));
    assert!(String::from_utf8_lossy(&listing.stdout).contains("photo.jpg"));
    assert_eq!(std::fs::read(&cached_tree).unwrap(), stored_tree);

    // Reads do come from the cache: with the repository's copy of the root
    // tree gone, the cached one still serves; --no-cache reads the
    // repository and reports the loss.
    let moved = env.path("moved-tree");
    std::fs::rename(env.repo.join(object_key(ObjectKind::Tree, &snap.tree)), &moved).unwrap();
    env.coffer().args(["ls", "latest"]).assert().success();
    let out = env.coffer().args(["--no-cache", "ls", "latest"]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("missing"), "{}", stderr_of(&out));
    std::fs::rename(&moved, env.repo.join(object_key(ObjectKind::Tree, &snap.tree))).unwrap();

    // A snapshot removed by another machine is gone at once.
    std::fs::remove_file(env.repo.join(object_key(ObjectKind::Snapshot, &id))).unwrap();
    assert!(snapshot_ids(&env).is_empty());
}

#[test]
fn a_snapshot_vanishing_without_a_local_forget_is_reported() {
    let env = Env::init();
    env.write("f", b"one");
    env.backup_json(&[]);
    env.write("f", b"two");
    env.backup_json(&[]);
    let ids = snapshot_ids(&env);
    assert_eq!(ids.len(), 2);
    let out = env.coffer().args(["snapshots"]).output().unwrap();
    assert!(!stderr_of(&out).contains("WARNING"), "{}", stderr_of(&out));
    // The storage is rolled back to before the second backup.
    std::fs::remove_file(env.repo.join(object_key(ObjectKind::Snapshot, &ids[1]))).unwrap();
    let out = env.coffer().args(["snapshots"]).output().unwrap();
    assert!(out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("WARNING") && err.contains(&ids[1].to_hex()) && err.contains("rolled back"), "{err}");
    // Reported once; a snapshot forgotten through the library's hook is not
    // reported at all.
    let out = env.coffer().args(["snapshots"]).output().unwrap();
    assert!(!stderr_of(&out).contains("WARNING"), "{}", stderr_of(&out));
    let repo = open_repo(&env).with_state(&env.path("state"));
    repo.forgotten(&[ids[0]]);
    std::fs::remove_file(env.repo.join(object_key(ObjectKind::Snapshot, &ids[0]))).unwrap();
    let out = env.coffer().args(["snapshots"]).output().unwrap();
    assert!(!stderr_of(&out).contains("WARNING"), "{}", stderr_of(&out));
}
