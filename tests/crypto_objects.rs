//! Objects moved or copied where they do not belong: each is rejected with
//! its id, never decoded into wrong data.
//!
//! A backup keeps a copy of every tree it uploads in the local cache (see
//! `format.md`, the local cache), and reads go to that copy first. So the
//! commands that should meet a tree damaged in the store read it with
//! `--no-cache`; through the cache they must show the snapshot as it was
//! written (never wrong data), and `check`, which always reads the store,
//! must report the damage.

use std::path::Path;

use coffer_core::Id;
use coffer_core::crypto::ObjectKind;

use crate::common::{
    Env, dir_state, files_below, open_repo, random_bytes, snapshot_node, snapshots_json, stderr_of, stored_blob,
    swap_blob,
};

fn chunk_ids(repo: &coffer_core::Repository, path: &Path) -> Vec<Id> {
    snapshot_node(repo, "latest", path).content.iter().map(|c| c.0).collect()
}

fn subtree_id(repo: &coffer_core::Repository, path: &Path) -> Id {
    snapshot_node(repo, "latest", path).subtree.expect("a directory")
}

#[test]
fn chunk_stored_under_another_id_is_rejected() {
    let env = Env::init();
    env.write("a.bin", &random_bytes(120_000, 1));
    env.write("b.bin", &random_bytes(120_000, 2));
    env.backup_json(&[]);
    let repo = open_repo(&env);
    let (a, b) = (chunk_ids(&repo, &env.src.join("a.bin")), chunk_ids(&repo, &env.src.join("b.bin")));
    assert_eq!((a.len(), b.len()), (1, 1));
    // b's chunk object now holds a's (valid) chunk.
    let a_bytes = stored_blob(&repo, ObjectKind::Chunk, &a[0]).read(&env.repo);
    swap_blob(&repo, ObjectKind::Chunk, &b[0], &a_bytes);
    assert!(repo.load_chunk(&b[0]).is_err(), "the library decoded a chunk stored under another id");

    let target = env.path("out");
    let out = env.coffer().args(["restore", "latest", "--target"]).arg(&target).output().unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&b[0].to_hex()) && err.contains("b.bin"), "{err}");
    let back = env.restored_src(&target);
    assert_eq!(std::fs::read(back.join("a.bin")).unwrap(), random_bytes(120_000, 1));
    if let Ok(data) = std::fs::read(back.join("b.bin")) {
        assert_ne!(data, random_bytes(120_000, 1), "b.bin was restored with a.bin's content");
    }
}

#[test]
fn tree_stored_under_another_id_is_rejected() {
    let env = Env::init();
    env.write("one/only-in-one.txt", b"first folder");
    env.write("two/only-in-two.txt", b"second folder");
    env.write("top.txt", b"top");
    env.backup_json(&[]);
    let repo = open_repo(&env);
    let (one, two) = (subtree_id(&repo, &env.src.join("one")), subtree_id(&repo, &env.src.join("two")));
    let one_bytes = stored_blob(&repo, ObjectKind::Tree, &one).read(&env.repo);
    swap_blob(&repo, ObjectKind::Tree, &two, &one_bytes);
    assert!(repo.load_tree(&two).is_err(), "the library decoded a tree stored under another id");
    store_damage_is_found_by_check_not_hidden_by_cache(&env, &two, "two/only-in-two.txt", |l| {
        l.ends_with("two/only-in-one.txt")
    });

    // ls reports the damaged tree by id and never shows one's files under two.
    let out = env.coffer().args(["--no-cache", "ls", "latest"]).output().unwrap();
    let err = stderr_of(&out);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "ls of a damaged tree succeeded:\n{listing}");
    assert!(err.contains(&two.to_hex()), "the tree id is not named: {err}");
    assert!(!listing.contains("two/only-in-one.txt"), "{listing}");
    let out = env.coffer().args(["--no-cache", "ls", "latest"]).arg(env.src.join("two")).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains(&two.to_hex()), "{}", stderr_of(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("only-in-one"));

    // restore names it, restores everything else, and puts nothing wrong in two.
    let target = env.path("out");
    let out = env.coffer().args(["--no-cache", "restore", "latest", "--target"]).arg(&target).output().unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&two.to_hex()), "{err}");
    let back = env.restored_src(&target);
    assert_eq!(std::fs::read(back.join("one/only-in-one.txt")).unwrap(), b"first folder");
    assert_eq!(std::fs::read(back.join("top.txt")).unwrap(), b"top");
    assert!(!back.join("two/only-in-one.txt").exists(), "two was restored with one's content");
}

#[test]
fn root_tree_stored_under_another_id_is_rejected() {
    let env = Env::init();
    env.write("x/file.txt", b"x");
    env.backup_json(&[]);
    let repo = open_repo(&env);
    let (_, snap) = repo.find_snapshot("latest").unwrap();
    let x = subtree_id(&repo, &env.src.join("x"));
    let x_bytes = stored_blob(&repo, ObjectKind::Tree, &x).read(&env.repo);
    swap_blob(&repo, ObjectKind::Tree, &snap.tree, &x_bytes);
    store_damage_is_found_by_check_not_hidden_by_cache(&env, &snap.tree, "x/file.txt", |l| l == "/file.txt");
    for args in [vec!["--no-cache", "ls", "latest"], vec!["--no-cache", "restore", "latest", "--target", "out"]] {
        let out = env.coffer().current_dir(env.dir.path()).args(&args).output().unwrap();
        let err = stderr_of(&out);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(err.contains(&snap.tree.to_hex()), "{args:?}: {err}");
    }
    if env.path("out").exists() {
        assert_eq!(files_below(&env.path("out")), Vec::<std::path::PathBuf>::new());
    }
}

/// After a tree was damaged in the store: `ls` through the local cache (the
/// copy the backup kept) still lists the snapshot as written, with `expected`
/// and no line that is `wrong`; `check` reads the store and reports the tree by id.
fn store_damage_is_found_by_check_not_hidden_by_cache(
    env: &Env,
    tree: &Id,
    expected: &str,
    wrong: impl Fn(&str) -> bool,
) {
    let out = env.coffer().args(["ls", "latest"]).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "ls through the cache: {}", stderr_of(&out));
    assert!(listing.contains(expected), "{listing}");
    assert!(!listing.lines().any(wrong), "{listing}");
    let out = env.coffer().args(["check", "--json"]).output().unwrap();
    assert!(!out.status.success(), "check passed a damaged tree: {}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&tree.to_hex()), "{}", String::from_utf8_lossy(&out.stdout));
}

/// Two repositories holding the same file.
fn two_repositories() -> (Env, Env) {
    let (a, b) = (Env::init(), Env::init());
    for env in [&a, &b] {
        env.write("same.jpg", &random_bytes(100_000, 9));
        env.write("other.txt", b"something else");
        env.backup_json(&[]);
    }
    (a, b)
}

#[test]
fn chunk_copied_from_another_repository_is_rejected() {
    let (a, b) = two_repositories();
    let (ra, rb) = (open_repo(&a), open_repo(&b));
    let ca = chunk_ids(&ra, &a.src.join("same.jpg"));
    let cb = chunk_ids(&rb, &b.src.join("same.jpg"));
    assert_eq!((ca.len(), cb.len()), (1, 1));
    assert_ne!(ca, cb, "chunk ids are keyed per repository");
    let a_bytes = stored_blob(&ra, ObjectKind::Chunk, &ca[0]).read(&a.repo);
    swap_blob(&rb, ObjectKind::Chunk, &cb[0], &a_bytes);
    assert!(rb.load_chunk(&cb[0]).is_err());

    let target = b.path("out");
    let out = b.coffer().args(["restore", "latest", "--target"]).arg(&target).output().unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&cb[0].to_hex()) && err.contains("same.jpg"), "{err}");
    assert_eq!(std::fs::read(b.restored_src(&target).join("other.txt")).unwrap(), b"something else");
}

#[test]
fn tree_copied_from_another_repository_is_rejected() {
    let (a, b) = two_repositories();
    let (ra, rb) = (open_repo(&a), open_repo(&b));
    let ta = ra.find_snapshot("latest").unwrap().1.tree;
    let tb = rb.find_snapshot("latest").unwrap().1.tree;
    let a_bytes = stored_blob(&ra, ObjectKind::Tree, &ta).read(&a.repo);
    swap_blob(&rb, ObjectKind::Tree, &tb, &a_bytes);
    store_damage_is_found_by_check_not_hidden_by_cache(&b, &tb, "other.txt", |l| l.contains(&*a.src.to_string_lossy()));
    let out = b.coffer().args(["--no-cache", "ls", "latest"]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains(&tb.to_hex()), "{}", stderr_of(&out));
}

#[test]
fn snapshot_copied_from_another_repository_is_rejected() {
    let (a, b) = two_repositories();
    let sa = snapshots_json(&a)[0]["id"].as_str().unwrap().to_string();
    let sb = snapshots_json(&b)[0]["id"].as_str().unwrap().to_string();
    std::fs::copy(a.repo.join("snapshots").join(&sa), b.repo.join("snapshots").join(&sa)).unwrap();
    let before = dir_state(&b.repo);

    let out = b.coffer().arg("snapshots").output().unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success(), "a foreign snapshot was listed:\n{}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains(&sa), "the foreign snapshot is not named: {err}");
    let out = b.coffer().args(["snapshots", "--json"]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains(&sa));
    for args in [vec!["ls", &sa[..]], vec!["restore", &sa[..], "--target", "out"]] {
        let out = b.coffer().current_dir(b.dir.path()).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr_of(&out).contains(&sa), "{args:?}: {}", stderr_of(&out));
    }
    assert!(!b.path("out").exists());
    // B's own snapshot is still readable on its own.
    b.coffer().args(["ls", &sb]).assert().success();
    assert_eq!(dir_state(&b.repo), before);
}

#[test]
fn snapshot_under_another_name_is_rejected() {
    let env = Env::init();
    env.write("f.txt", b"f");
    env.backup_json(&[]);
    let id = snapshots_json(&env)[0]["id"].as_str().unwrap().to_string();
    let fake = Id::random().to_hex();
    std::fs::copy(env.repo.join("snapshots").join(&id), env.repo.join("snapshots").join(&fake)).unwrap();
    let out = env.coffer().arg("snapshots").output().unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains(&fake), "{}", stderr_of(&out));
}

/// Damages the first snapshot's stored object with `damage`, then checks
/// that `snapshots` reports it by id instead of listing nothing wherever the
/// stored object is read: without the cache, and from a machine whose cache
/// has no copy yet. (A machine that cached the snapshot before the damage
/// keeps showing its authenticated copy; `check` reads the repository and
/// reports the damage there too.)
fn damaged_snapshot_is_reported(what: &str, damage: impl Fn(&mut Vec<u8>)) {
    let env = Env::init();
    env.write("f.txt", b"f");
    env.backup_json(&[]);
    env.write("g.txt", b"g");
    env.backup_json(&[]);
    let snaps = snapshots_json(&env);
    assert_eq!(snaps.len(), 2);
    let id = snaps[0]["id"].as_str().unwrap().to_string();
    let path = env.repo.join("snapshots").join(&id);
    let mut bytes = std::fs::read(&path).unwrap();
    damage(&mut bytes);
    std::fs::write(&path, &bytes).unwrap();

    for (json, fresh_cache) in [(false, false), (true, false), (false, true), (true, true)] {
        let mut cmd = env.coffer();
        if fresh_cache {
            cmd.env("COFFER_CACHE_DIR", env.path("another-machines-cache"));
        } else {
            cmd.arg("--no-cache");
        }
        cmd.arg("snapshots");
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        let err = stderr_of(&out);
        assert!(
            !out.status.success(),
            "{what}: snapshots skipped a damaged snapshot silently:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(err.contains(&id), "{what}: the damaged snapshot is not named: {err}");
    }
    let out = env.coffer().args(["check", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{what}: check passed a damaged snapshot");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["damage"][0]["kind"], "snapshot", "{what}: {report}");
    assert_eq!(report["damage"][0]["id"], id.as_str(), "{what}: {report}");
}

#[test]
fn damaged_snapshot_is_reported_by_snapshots() {
    damaged_snapshot_is_reported("a flipped byte", |b| {
        let i = b.len() / 2;
        b[i] ^= 1;
    });
    damaged_snapshot_is_reported("a truncated object", |b| b.truncate(b.len() / 2));
    damaged_snapshot_is_reported("garbage", |b| *b = random_bytes(b.len(), 4));
}

#[test]
fn empty_snapshot_file_is_reported_by_snapshots() {
    // A zero-length object is what a crash before the data reached the disk
    // can leave; for a snapshot it is a lost snapshot, not "no snapshot".
    damaged_snapshot_is_reported("an empty file", |b| b.clear());
}
