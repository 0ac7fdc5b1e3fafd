//! `coffer check`: a clean repository passes, and each kind of damage is
//! found and named with the object and the snapshots and paths it affects.

use coffer_core::Id;
use coffer_core::crypto::ObjectKind;
use serde_json::Value;

use crate::common::{
    Backend, Env, StoredBlob, both_backends, open_repo, pack_mates, random_bytes, snapshot_node, stored_blob,
};

/// Runs `check --json` with extra arguments; returns the exit code and report.
pub(crate) fn check(env: &Env, args: &[&str]) -> (i32, Value) {
    let out = env.coffer().args(["check", "--json"]).args(args).output().unwrap();
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check JSON: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), report)
}

/// A repository with two folders of one file each (one chunk per file) and
/// two snapshots of them. On S3, the objects are damaged in the folder the
/// server keeps them in, one file per key, as a faulty store would.
fn setup(backend: Backend) -> (Env, Vec<String>) {
    let env = Env::init_on(backend);
    env.write("dir_a/f1.bin", &random_bytes(200_000, 1));
    env.write("dir_b/f2.bin", &random_bytes(200_000, 2));
    let a = env.backup_json(&[])["snapshot_id"].as_str().unwrap().to_string();
    let b = env.backup_json(&["--force"])["snapshot_id"].as_str().unwrap().to_string();
    (env, vec![a, b])
}

/// The only chunk of a file in the latest snapshot.
fn chunk_of(env: &Env, rel: &str) -> Id {
    let node = snapshot_node(&open_repo(env), "latest", &env.src.join(rel));
    assert_eq!(node.content.len(), 1);
    node.content[0].0
}

fn subtree_of(env: &Env, rel: &str) -> Id {
    snapshot_node(&open_repo(env), "latest", &env.src.join(rel)).subtree.expect("a folder")
}

fn chunk_blob(env: &Env, id: &Id) -> StoredBlob {
    stored_blob(&open_repo(env), ObjectKind::Chunk, id)
}

/// The damage entry of `kind` `id` in a report.
fn damage_of<'a>(report: &'a Value, kind: &str, id: &Id) -> &'a Value {
    let damage = report["damage"].as_array().expect("damage list");
    damage
        .iter()
        .find(|d| d["kind"] == kind && d["id"] == id.to_hex().as_str())
        .unwrap_or_else(|| panic!("no damage for {kind} {id}: {report:#}"))
}

/// The kinds and ids of every damage entry, sorted.
fn damaged(report: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = report["damage"]
        .as_array()
        .expect("damage list")
        .iter()
        .map(|d| (d["kind"].as_str().unwrap().to_string(), d["id"].as_str().unwrap().to_string()))
        .collect();
    v.sort();
    v
}

/// The single damaged object of a report, checked to be `kind` `id`.
fn only_damage<'a>(report: &'a Value, kind: &str, id: &Id) -> &'a Value {
    let damage = report["damage"].as_array().expect("damage list");
    assert_eq!(damage.len(), 1, "{report:#}");
    assert_eq!(damage[0]["kind"], kind, "{report:#}");
    assert_eq!(damage[0]["id"], id.to_hex().as_str(), "{report:#}");
    &damage[0]
}

/// The (snapshot, path) pairs of a damage entry.
fn used_by(damage: &Value) -> Vec<(String, String)> {
    damage["used_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["snapshot"].as_str().unwrap().to_string(), u["path"].as_str().unwrap().to_string()))
        .collect()
}

fn in_both(env: &Env, snaps: &[String], rel: &str) -> Vec<(String, String)> {
    let path = format!("{}/{rel}", env.src.display());
    let mut v: Vec<(String, String)> = snaps.iter().map(|s| (s.clone(), path.clone())).collect();
    v.sort();
    v
}

both_backends!(clean_repository_passes_with_and_without_read_data);

fn clean_repository_passes_with_and_without_read_data(backend: Backend) {
    let (env, _) = setup(backend);
    let (code, report) = check(&env, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["snapshots"], 2);
    assert_eq!(report["chunks"], 2);
    assert_eq!(report["chunks_read"], 0);
    assert!(report["damage"].as_array().unwrap().is_empty());
    let (code, report) = check(&env, &["--read-data"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["chunks_read"], 2);
    let out = env.coffer().args(["check", "--read-data"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no errors were found"));
}

both_backends!(flipped_byte_in_a_chunk_is_found_by_read_data);

fn flipped_byte_in_a_chunk_is_found_by_read_data(backend: Backend) {
    let (env, snaps) = setup(backend);
    let id = chunk_of(&env, "dir_a/f1.bin");
    let blob = chunk_blob(&env, &id);
    blob.flip(&env.repo, blob.length / 2);

    // Without reading data, the pack is listed at its length, its header
    // agrees with the index, and it looks fine.
    assert_eq!(check(&env, &[]).0, 0);
    let (code, report) = check(&env, &["--read-data"]);
    assert_eq!(code, 1);
    // The chunk that fails to decrypt, and its pack, which no longer hashes
    // to its name; nothing else.
    assert_eq!(
        damaged(&report),
        vec![("chunk".to_string(), id.to_hex()), ("data pack".to_string(), blob.pack.to_hex())],
        "{report:#}"
    );
    let d = damage_of(&report, "chunk", &id);
    assert!(d["problem"].as_str().unwrap().starts_with("damaged"), "{d}");
    assert_eq!(used_by(d), in_both(&env, &snaps, "dir_a/f1.bin"));
    let pack = damage_of(&report, "data pack", &blob.pack);
    assert!(used_by(pack).iter().all(|u| snaps.contains(&u.0)), "{pack}");
    assert!(used_by(pack).contains(&in_both(&env, &snaps, "dir_a/f1.bin")[0]), "{pack}");
    // The text report names the chunk and the file, on standard error.
    let out = env.coffer().args(["check", "--read-data"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("chunk {id} is damaged")), "{err}");
    assert!(err.contains(&format!("{}/dir_a/f1.bin", env.src.display())), "{err}");
}

both_backends!(truncated_chunk_is_found_by_read_data);

fn truncated_chunk_is_found_by_read_data(backend: Backend) {
    let (env, snaps) = setup(backend);
    let id = chunk_of(&env, "dir_b/f2.bin");
    let blob = chunk_blob(&env, &id);
    let mates = pack_mates(&open_repo(&env), ObjectKind::Chunk, &id);
    blob.truncate_pack(&env.repo);
    // A pack shorter than its index says is found without reading data, and
    // so with it; its chunks count as missing.
    for args in [&[][..], &["--read-data"][..]] {
        let (code, report) = check(&env, args);
        assert_eq!(code, 1);
        let pack = damage_of(&report, "data pack", &blob.pack);
        assert!(pack["problem"].as_str().unwrap().starts_with("damaged"), "{pack}");
        let d = damage_of(&report, "chunk", &id);
        assert_eq!(d["problem"], "missing");
        assert_eq!(used_by(d), in_both(&env, &snaps, "dir_b/f2.bin"));
        assert_eq!(damaged(&report).len(), 1 + mates.len(), "the pack and each chunk in it: {report:#}");
    }
}

both_backends!(deleted_chunk_is_found_without_reading_data);

fn deleted_chunk_is_found_without_reading_data(backend: Backend) {
    let (env, snaps) = setup(backend);
    let id = chunk_of(&env, "dir_a/f1.bin");
    let mates = pack_mates(&open_repo(&env), ObjectKind::Chunk, &id);
    std::fs::remove_file(chunk_blob(&env, &id).pack_file(&env.repo)).unwrap();
    let (code, report) = check(&env, &[]);
    assert_eq!(code, 1);
    let d = damage_of(&report, "chunk", &id);
    assert_eq!(d["problem"], "missing");
    assert_eq!(used_by(d), in_both(&env, &snaps, "dir_a/f1.bin"));
    let expected: Vec<(String, String)> = mates.iter().map(|m| ("chunk".to_string(), m.to_hex())).collect();
    assert_eq!(damaged(&report), expected, "every chunk of the deleted pack, and nothing else");
    // With --read-data each is reported once, not also as unreadable.
    let (code, again) = check(&env, &["--read-data"]);
    assert_eq!(code, 1);
    assert_eq!(damaged(&again), expected);
}

both_backends!(tree_swapped_with_another_tree_is_found);

fn tree_swapped_with_another_tree_is_found(backend: Backend) {
    let (env, snaps) = setup(backend);
    let a = subtree_of(&env, "dir_a");
    let b = subtree_of(&env, "dir_b");
    // dir_b's tree blob, written over dir_a's in its pack: a valid blob, in
    // the wrong place (the two listings have the same length).
    let repo = open_repo(&env);
    let (blob_a, blob_b) = (stored_blob(&repo, ObjectKind::Tree, &a), stored_blob(&repo, ObjectKind::Tree, &b));
    blob_a.overwrite(&env.repo, &blob_b.read(&env.repo));
    let (code, report) = check(&env, &[]);
    assert_eq!(code, 1);
    let d = only_damage(&report, "tree", &a);
    assert!(d["problem"].as_str().unwrap().starts_with("damaged"), "{d}");
    assert_eq!(used_by(d), in_both(&env, &snaps, "dir_a/"));
}

both_backends!(snapshot_from_another_repository_is_found);

fn snapshot_from_another_repository_is_found(backend: Backend) {
    let (env, _) = setup(backend);
    let other = Env::init_on(backend);
    other.write("x.txt", b"elsewhere");
    let foreign = other.backup_json(&[])["snapshot_id"].as_str().unwrap().to_string();
    let name = format!("snapshots/{foreign}");
    std::fs::copy(other.repo.join(&name), env.repo.join(&name)).unwrap();
    let (code, report) = check(&env, &[]);
    assert_eq!(code, 1);
    let d = only_damage(&report, "snapshot", &Id::from_hex(&foreign).unwrap());
    assert!(d["problem"].as_str().unwrap().starts_with("damaged"), "{d}");
    assert_eq!(report["snapshots"], 2, "the two good snapshots are still checked");
}

both_backends!(read_data_subsets);

fn read_data_subsets(backend: Backend) {
    let (env, _) = setup(backend);
    let id = chunk_of(&env, "dir_a/f1.bin");
    let blob = chunk_blob(&env, &id);
    blob.flip(&env.repo, 10);
    // Buckets 1/4 … 4/4 read every pack, so every chunk, exactly once, and
    // only the bucket of the damaged chunk's pack (first byte of its id
    // modulo 4, plus one) reports it.
    let (mut read, mut packs_read) = (0, 0);
    for n in 1..=4u32 {
        let (code, report) = check(&env, &["--read-data-subset", &format!("{n}/4")]);
        read += report["chunks_read"].as_u64().unwrap();
        packs_read += report["packs_read"].as_u64().unwrap();
        let expected_here = u32::from(blob.pack.0[0]) % 4 == n - 1;
        assert_eq!(code, if expected_here { 1 } else { 0 }, "bucket {n}/4: {report:#}");
    }
    assert_eq!(read, 2);
    let (code, report) = check(&env, &["--read-data-subset", "100%"]);
    assert_eq!((code, report["chunks_read"].as_u64()), (1, Some(2)));
    let packs = report["packs"].as_u64().unwrap();
    assert_eq!(packs_read, packs, "the buckets cover every pack");
    let (_, report) = check(&env, &["--read-data-subset", "50%"]);
    assert_eq!(report["packs_read"].as_u64(), Some((packs / 2).max(1)), "{report:#}");
    let out = env.coffer().args(["check", "--read-data-subset", "0/4"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

both_backends!(unreferenced_objects_are_information_not_errors);

fn unreferenced_objects_are_information_not_errors(backend: Backend) {
    let (env, snaps) = setup(backend);
    env.write("dir_c/f3.bin", &random_bytes(100_000, 3));
    let third = env.backup_json(&[])["snapshot_id"].as_str().unwrap().to_string();
    let f3 = chunk_of(&env, "dir_c/f3.bin");
    env.coffer().args(["forget", &third]).assert().success();
    let (code, report) = check(&env, &["--read-data"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["unreferenced_chunks"], serde_json::json!([f3.to_hex()]));
    assert!(!report["unreferenced_trees"].as_array().unwrap().is_empty());
    assert_eq!(report["snapshots"], snaps.len());
    let out = env.coffer().args(["check"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 chunks are not referenced"));
}

#[test]
fn check_over_s3() {
    use crate::common::s3::{self, S3Server};
    let server = S3Server::start();
    let url = server.url("bucket/repo");
    let env = Env::new();
    env.write("a.bin", &random_bytes(100_000, 4));
    s3::coffer(&env, &url).args(["init", "--argon2-memory", "64", "--argon2-iterations", "1"]).assert().success();
    s3::coffer(&env, &url).args(["backup", "-q"]).arg(&env.src).assert().success();
    let out = s3::coffer(&env, &url).args(["check", "--json", "--read-data"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["chunks_read"], 1);
    // Remove the chunk's pack from the bucket: found as missing.
    let chunk = server.keys("bucket").into_iter().find(|k| k.starts_with("repo/data/")).expect("a data pack");
    std::fs::remove_file(server.bucket_dir("bucket").join(&chunk)).unwrap();
    let out = s3::coffer(&env, &url).args(["check", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["damage"][0]["problem"], "missing");
    assert!(report["damage"][0]["used_by"][0]["path"].as_str().unwrap().ends_with("/a.bin"));
}
