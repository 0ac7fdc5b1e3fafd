//! `coffer repair index|packs|snapshots` end to end: a repository whose
//! index objects are all gone is whole again after `repair index`; a
//! damaged pack is salvaged by `repair packs` and the next backup stores
//! again what was lost; `repair snapshots` names every path that lost data
//! and writes repaired copies that restore; repair takes the exclusive lock.

use coffer_core::Id;
use coffer_core::crypto::ObjectKind;
use serde_json::Value;

use crate::common::{
    Backend, Env, both_backends, contents, files_below_or_empty, open_repo, random_bytes, restored_contents,
    snapshot_node, snapshots_json, stderr_of, stored_blob,
};

/// Runs a command with `--json`; returns its exit code and parsed output.
pub(crate) fn json(env: &Env, args: &[&str]) -> (i32, Value) {
    let out = env.coffer().arg("--json").args(args).output().expect("run coffer");
    let value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: JSON: {e}: {}", stderr_of(&out)));
    (out.status.code().unwrap_or(-1), value)
}

/// Runs a command with `--json` that must succeed.
pub(crate) fn ok_json(env: &Env, args: &[&str]) -> Value {
    let (code, value) = json(env, args);
    assert_eq!(code, 0, "{args:?}: {value:#}");
    value
}

pub(crate) fn backup_id(env: &Env, extra: &[&str]) -> Id {
    let report = env.backup_json(extra);
    report["snapshot_id"].as_str().and_then(Id::from_hex).unwrap_or_else(|| panic!("no snapshot id in {report}"))
}

/// A repository with four single-chunk files in two folders, backed up
/// once. Returns the snapshot id.
fn setup(env: &Env) -> Id {
    env.write("dir_a/f1.bin", &random_bytes(200_000, 1));
    env.write("dir_a/f2.bin", &random_bytes(200_000, 2));
    env.write("dir_b/f3.bin", &random_bytes(200_000, 3));
    env.write("dir_b/f4.bin", &random_bytes(200_000, 4));
    backup_id(env, &[])
}

fn index_files(env: &Env) -> Vec<std::path::PathBuf> {
    files_below_or_empty(&env.repo.join("index"))
}

fn pack_files(env: &Env) -> usize {
    files_below_or_empty(&env.repo.join("data")).len() + files_below_or_empty(&env.repo.join("tree")).len()
}

fn chunk_of(env: &Env, rel: &str) -> Id {
    let node = snapshot_node(&open_repo(env), "latest", &env.src.join(rel));
    assert_eq!(node.content.len(), 1, "{rel} is one chunk");
    node.content[0].0
}

both_backends!(repair_index_makes_a_repository_without_index_objects_whole_again);

fn repair_index_makes_a_repository_without_index_objects_whole_again(backend: Backend) {
    let env = Env::init_on(backend);
    let snap = setup(&env);
    env.write("dir_b/f5.bin", &random_bytes(150_000, 5));
    let second = backup_id(&env, &[]);
    let expected = contents(&env.src);
    let packs = pack_files(&env);
    assert!(packs >= 2, "data and tree packs");
    for f in index_files(&env) {
        std::fs::remove_file(f).unwrap();
    }
    // Without an index every pack is unindexed; check says so.
    let (_, report) = json(&env, &["check"]);
    assert_eq!(report["indexes"], 0, "{report:#}");
    assert_eq!(report["unindexed_packs"].as_array().unwrap().len(), packs, "{report:#}");

    let dry = ok_json(&env, &["repair", "index", "--dry-run"]);
    assert!(index_files(&env).is_empty(), "a dry run writes nothing");
    assert_eq!(dry["packs_read"], packs as u64, "{dry:#}");
    assert_eq!(dry["index_objects_written"], 1, "{dry:#}");

    let done = ok_json(&env, &["repair", "index"]);
    assert_eq!(done["packs_listed"], packs as u64, "{done:#}");
    assert_eq!(done["packs_read"], packs as u64, "{done:#}");
    // Five chunks, and the trees of two snapshots.
    let blobs = done["blobs_indexed"].as_u64().unwrap();
    assert!(blobs >= 5 + 4, "{done:#}");
    assert_eq!(done["blobs_added"], blobs, "every blob was missing from the (empty) index: {done:#}");
    assert_eq!(done["entries_dropped"], 0, "{done:#}");
    assert_eq!(done["index_objects_removed"], 0, "{done:#}");
    assert!(done["unreadable_packs"].as_array().unwrap().is_empty(), "{done:#}");
    assert_eq!(index_files(&env).len(), 1);

    let (code, report) = json(&env, &["check", "--read-data"]);
    assert_eq!(code, 0, "{report:#}");
    assert!(report["unindexed_packs"].as_array().unwrap().is_empty(), "every pack is indexed: {report:#}");
    assert_eq!(report["indexes"], 1);
    let repo = open_repo(&env);
    assert_eq!(restored_contents(&repo, &second, &env.src), expected);
    assert_eq!(restored_contents(&repo, &snap, &env.src).len(), 4);

    // Run again: the same index comes out, under the same name, and must
    // not be deleted as an old one.
    let again = ok_json(&env, &["repair", "index"]);
    assert_eq!(again["blobs_added"], 0, "{again:#}");
    assert_eq!(again["entries_dropped"], 0, "{again:#}");
    assert_eq!(index_files(&env).len(), 1, "{again:#}");
    let (code, report) = json(&env, &["check"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["indexes"], 1, "{report:#}");
    assert!(report["unindexed_packs"].as_array().unwrap().is_empty(), "{report:#}");

    // A pack gone from the store: its index entries are dropped.
    let lost = stored_blob(&repo, ObjectKind::Chunk, &chunk_of(&env, "dir_b/f5.bin"));
    let in_pack = repo.reload_blob_set().unwrap().iter().filter(|(_, l)| l.pack == lost.pack).count();
    std::fs::remove_file(lost.pack_file(&env.repo)).unwrap();
    let done = ok_json(&env, &["repair", "index"]);
    assert_eq!(done["entries_dropped"], in_pack as u64, "{done:#}");
    assert_eq!(done["index_objects_removed"], 1, "{done:#}");
    assert_eq!(done["packs_read"], packs as u64 - 1, "{done:#}");
}

both_backends!(repair_packs_salvages_a_damaged_pack_and_the_next_backup_stores_the_lost_chunk_again);

fn repair_packs_salvages_a_damaged_pack_and_the_next_backup_stores_the_lost_chunk_again(backend: Backend) {
    let env = Env::init_on(backend);
    let first = setup(&env);
    let expected = contents(&env.src);
    let repo = open_repo(&env);
    let victim = chunk_of(&env, "dir_a/f1.bin");
    let blob = stored_blob(&repo, ObjectKind::Chunk, &victim);
    let mates = crate::common::pack_mates(&repo, ObjectKind::Chunk, &victim);
    blob.flip(&env.repo, blob.length / 2);

    let dry = ok_json(&env, &["repair", "packs", "--dry-run"]);
    let damaged = dry["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{dry:#}");
    assert_eq!(damaged[0]["id"], blob.pack.to_hex().as_str(), "{dry:#}");
    assert!(blob.pack_file(&env.repo).exists(), "a dry run deletes nothing");
    let lost: Vec<&str> = dry["blobs_lost"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(lost, [victim.to_hex().as_str()], "{dry:#}");
    assert_eq!(dry["blobs_salvaged"], mates.len() as u64 - 1, "{dry:#}");

    let done = ok_json(&env, &["repair", "packs"]);
    assert_eq!(done["blobs_lost"], dry["blobs_lost"], "{done:#}");
    assert_eq!(done["blobs_salvaged"], dry["blobs_salvaged"], "{done:#}");
    assert_eq!(done["packs_deleted"], 1, "{done:#}");
    assert!(!blob.pack_file(&env.repo).exists(), "the damaged pack is deleted");
    // The salvaged chunks are read from their new pack; only f1 is missing.
    let (code, report) = json(&env, &["check", "--read-data"]);
    assert_eq!(code, 1, "{report:#}");
    let damage = report["damage"].as_array().unwrap();
    assert_eq!(damage.len(), 1, "{report:#}");
    assert_eq!((damage[0]["kind"].as_str(), damage[0]["problem"].as_str()), (Some("chunk"), Some("missing")));
    assert_eq!(damage[0]["id"], victim.to_hex().as_str());
    // Nothing left to repair.
    let again = ok_json(&env, &["repair", "packs"]);
    assert!(again["damaged"].as_array().unwrap().is_empty(), "{again:#}");

    // The next backup finds f1 unchanged since its parent, but its chunk is
    // gone: it reads the file again (invariant 4) and stores the chunk.
    let report = env.backup_json(&[]);
    assert_eq!(report["chunks_added"], 1, "{report:#}");
    assert_eq!(report["files_unchanged"], 3, "{report:#}");
    let (code, report) = json(&env, &["check", "--read-data"]);
    assert_eq!(code, 0, "{report:#}");
    let repo = open_repo(&env);
    let latest = repo.find_snapshot("latest").unwrap().0;
    assert_eq!(restored_contents(&repo, &latest, &env.src), expected);
    // The same chunk id: the first snapshot is whole again too.
    assert_eq!(restored_contents(&repo, &first, &env.src), expected);
}

both_backends!(repair_snapshots_names_every_path_that_lost_data_and_writes_copies_that_restore);

fn repair_snapshots_names_every_path_that_lost_data_and_writes_copies_that_restore(backend: Backend) {
    let env = Env::init_on(backend);
    let original = setup(&env);
    let expected = contents(&env.src);
    let repo = open_repo(&env);
    // A chunk of dir_a/f1.bin, and the tree of dir_b, lost.
    let chunk = stored_blob(&repo, ObjectKind::Chunk, &chunk_of(&env, "dir_a/f1.bin"));
    chunk.flip(&env.repo, 10);
    let dir_b = snapshot_node(&repo, "latest", &env.src.join("dir_b")).subtree.unwrap();
    let tree = stored_blob(&repo, ObjectKind::Tree, &dir_b);
    tree.flip(&env.repo, 10);
    let packs = ok_json(&env, &["repair", "packs"]);
    assert_eq!(packs["blobs_lost"].as_array().unwrap().len(), 2, "{packs:#}");

    let src = env.src.display().to_string();
    let lost_paths = [format!("{src}/dir_a/f1.bin"), format!("{src}/dir_b/")];
    let paths = |r: &Value| -> Vec<String> {
        r["changes"].as_array().unwrap().iter().map(|c| c["path"].as_str().unwrap().to_string()).collect()
    };
    let dry = ok_json(&env, &["repair", "snapshots", "--dry-run"]);
    let repaired = dry["repaired"].as_array().unwrap();
    assert_eq!(repaired.len(), 1, "{dry:#}");
    assert_eq!(repaired[0]["original"], original.to_hex().as_str());
    assert!(repaired[0]["new"].is_null(), "{dry:#}");
    assert_eq!(paths(&repaired[0]), lost_paths, "{dry:#}");
    assert_eq!(snapshots_json(&env).len(), 1, "a dry run writes no snapshot");
    // The text output names every path too.
    let out = env.coffer().args(["repair", "snapshots", "--dry-run"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for p in &lost_paths {
        assert!(text.contains(p.as_str()), "{text}");
    }
    assert!(text.contains("chunks are lost; removed") && text.contains("now an empty folder"), "{text}");

    let done = ok_json(&env, &["repair", "snapshots"]);
    let r = &done["repaired"][0];
    assert_eq!(paths(r), lost_paths, "{done:#}");
    let new = r["new"].as_str().and_then(Id::from_hex).expect("a new snapshot");
    let listed = snapshots_json(&env);
    assert_eq!(listed.len(), 2, "the original is kept");
    let copy = listed.iter().find(|s| s["id"] == new.to_hex().as_str()).expect("the repaired snapshot");
    let orig = listed.iter().find(|s| s["id"] == original.to_hex().as_str()).expect("the original");
    assert_eq!(copy["original"], original.to_hex().as_str());
    assert_eq!(copy["tags"], serde_json::json!(["repaired"]));
    assert_eq!((&copy["time"], &copy["host"], &copy["paths"]), (&orig["time"], &orig["host"], &orig["paths"]));
    let repo = open_repo(&env);
    let restored = restored_contents(&repo, &new, &env.src);
    let mut want = expected.clone();
    want.retain(|p, _| p.starts_with("dir_a") && !p.ends_with("f1.bin"));
    assert_eq!(restored, want, "f2 restores byte for byte; f1 and dir_b's files are gone");
    let target = env.path("restored");
    env.coffer().args(["restore", &new.to_hex(), "--target"]).arg(&target).assert().success();
    assert!(env.restored_src(&target).join("dir_b").is_dir(), "dir_b is kept, empty");

    // With --forget the original goes (its copy comes out the same again);
    // then check passes.
    let (code, _) = json(&env, &["check"]);
    assert_eq!(code, 1, "the original still references what was lost");
    let done = ok_json(&env, &["repair", "snapshots", "--forget", &original.to_hex()]);
    assert_eq!(done["repaired"][0]["new"], new.to_hex().as_str(), "{done:#}");
    assert_eq!(done["repaired"][0]["forgotten"], true);
    let ids: Vec<String> = snapshots_json(&env).iter().map(|s| s["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, [new.to_hex()]);
    let (code, report) = json(&env, &["check", "--read-data"]);
    assert_eq!(code, 0, "{report:#}");
    // A snapshot with nothing lost is left alone.
    let none = ok_json(&env, &["repair", "snapshots"]);
    assert!(none["repaired"].as_array().unwrap().is_empty(), "{none:#}");
    assert_eq!(none["snapshots_checked"], 1);
}

/// Repair takes the exclusive lock (a dry run a shared one): it waits for
/// no backup, and a running one makes it stop with exit 11 having changed
/// nothing.
#[test]
fn repair_needs_the_exclusive_lock() {
    let env = Env::init();
    setup(&env);
    let repo = open_repo(&env);
    let held = repo.lock_shared("backup").unwrap();
    for what in ["index", "packs", "snapshots"] {
        let out = env.coffer().args(["repair", what]).output().unwrap();
        assert_eq!(out.status.code(), Some(11), "repair {what}: {}", stderr_of(&out));
        assert!(stderr_of(&out).contains("locked by backup"), "{}", stderr_of(&out));
        let out = env.coffer().args(["repair", what, "--dry-run"]).output().unwrap();
        assert!(out.status.success(), "repair {what} --dry-run: {}", stderr_of(&out));
    }
    held.release().unwrap();
    assert!(files_below_or_empty(&env.repo.join("locks")).is_empty(), "no lock left behind");
}

/// A snapshot whose root tree is lost cannot be repaired: `repair
/// snapshots` names it as unrepairable, leaves it and every other snapshot
/// as they are, and exits 1; a snapshot that lost nothing is not copied.
#[test]
fn a_snapshot_whose_root_tree_is_lost_is_named_and_left_alone() {
    let env = Env::init();
    env.write("a.txt", b"first");
    let first = backup_id(&env, &[]);
    env.write("b.txt", b"second");
    let second = backup_id(&env, &[]);
    let repo = open_repo(&env);
    let root = repo.load_snapshot(&first).unwrap().tree;
    assert_ne!(root, repo.load_snapshot(&second).unwrap().tree);
    crate::common::rewrite_index(&repo, |packs| {
        for p in packs.iter_mut() {
            p.blobs.retain(|b| b.id != root);
        }
    });
    assert!(!repo.reload_blob_set().unwrap().contains(ObjectKind::Tree, &root), "the root tree is still indexed");
    drop(repo);
    let before = snapshots_json(&env);
    let (code, report) = json(&env, &["repair", "snapshots"]);
    assert_eq!(code, 1, "{report:#}");
    let unrepairable = report["unrepairable"].as_array().unwrap();
    assert_eq!(unrepairable.len(), 1, "{report:#}");
    assert_eq!(unrepairable[0]["snapshot"], first.to_hex().as_str(), "{report:#}");
    assert!(report["repaired"].as_array().unwrap().is_empty(), "{report:#}");
    assert_eq!(snapshots_json(&env), before, "no snapshot was written or removed");
    let out = env.coffer().args(["repair", "snapshots"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains(&first.short()) && err.contains("cannot be repaired") && err.contains("forget"), "{err}");
}
