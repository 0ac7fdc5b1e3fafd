//! A storage operator who edits, moves, copies or replays objects: each
//! change is found and named by `check` and by restore, and nothing that was
//! tampered with is ever returned as data.
//!
//! The cases not here are elsewhere: a flipped bit and a truncation
//! (`check::flipped_byte_in_a_chunk_is_found_by_read_data`,
//! `check::truncated_chunk_is_found_by_read_data`,
//! `errors::damaged_chunk_fails_only_its_file`,
//! `errors::truncated_chunk_fails_only_its_file`), a tree blob swapped
//! (`check::tree_swapped_with_another_tree_is_found`,
//! `crypto_objects::tree_stored_under_another_id_is_rejected`) and a
//! snapshot copied from another repository
//! (`check::snapshot_from_another_repository_is_found`,
//! `crypto_objects::snapshot_copied_from_another_repository_is_rejected`).

use std::path::{Path, PathBuf};

use coffer_core::Id;
use coffer_core::crypto::ObjectKind;
use coffer_core::index::IndexedPack;
use serde_json::Value;

use crate::check::check;
use crate::common::{
    Backend, Env, both_backends, dir_state, files_below, open_repo, random_bytes, rewrite_index, snapshot_node,
    stderr_of, stored_blob,
};

/// The report's damage entries as (kind, id, problem).
fn damage(report: &Value) -> Vec<(String, String, String)> {
    report["damage"]
        .as_array()
        .expect("damage list")
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["id"].as_str().unwrap().to_string(),
                d["problem"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The damage entry of `kind` `id`; panics with the report if there is none.
fn damage_of(report: &Value, kind: &str, id: &str) -> String {
    damage(report)
        .into_iter()
        .find(|(k, i, _)| k == kind && i == id)
        .map(|(_, _, p)| p)
        .unwrap_or_else(|| panic!("no damage for {kind} {id}: {report:#}"))
}

const GOOD: (&str, usize, u64) = ("photos/good.jpg", 300_000, 21);
/// Big enough for several chunks (about 1 MiB each), so that at least two
/// of them share one of the two packs a backup fills at once.
const BAD: (&str, usize, u64) = ("photos/bad.raw", 8_000_000, 22);

/// Two files backed up one after the other, so that each file's chunks are
/// in a data pack of their own; returns the second file's chunk ids.
fn two_backups(backend: Backend) -> (Env, Vec<Id>) {
    let env = Env::init_on(backend);
    env.write(GOOD.0, &random_bytes(GOOD.1, GOOD.2));
    env.backup_json(&[]);
    env.write(BAD.0, &random_bytes(BAD.1, BAD.2));
    env.backup_json(&[]);
    let node = snapshot_node(&open_repo(&env), "latest", &env.src.join(BAD.0));
    let chunks: Vec<Id> = node.content.iter().map(|c| c.0).collect();
    assert!(chunks.len() >= 3, "the test needs a file of several chunks");
    (env, chunks)
}

/// Restores the latest snapshot; returns the exit code, stderr, and what
/// was restored of each of the two files (`None`: not under its name).
fn restore(env: &Env, name: &str) -> (i32, String, Option<Vec<u8>>, Option<Vec<u8>>) {
    let target = env.path(name);
    let out = env.coffer().args(["restore", "latest", "--target"]).arg(&target).output().unwrap();
    let back = env.restored_src(&target);
    (
        out.status.code().unwrap_or(-1),
        stderr_of(&out),
        std::fs::read(back.join(GOOD.0)).ok(),
        std::fs::read(back.join(BAD.0)).ok(),
    )
}

/// What a restore after tampering may give: each file whole and exact, or
/// nothing under its name. Never other bytes.
fn assert_never_wrong(good: &Option<Vec<u8>>, bad: &Option<Vec<u8>>) {
    if let Some(g) = good {
        assert!(*g == random_bytes(GOOD.1, GOOD.2), "the intact file came back with other bytes");
    }
    if let Some(b) = bad {
        assert!(*b == random_bytes(BAD.1, BAD.2), "tampered data was returned as the file's content");
    }
}

/// The key of the data pack that holds `chunk`.
fn pack_key_of(env: &Env, chunk: &Id) -> String {
    stored_blob(&open_repo(env), ObjectKind::Chunk, chunk).pack_key
}

/// Moves an object to another key behind coffer's back.
fn move_object(env: &Env, from: &str, to: &str) {
    let to = env.repo.join(to);
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::rename(env.repo.join(from), to).unwrap();
}

/// The names of the objects below `folder` (`index`, `keys`…).
fn objects_in(env: &Env, folder: &str) -> Vec<PathBuf> {
    files_below(&env.repo.join(folder)).into_iter().map(|p| Path::new(folder).join(p)).collect()
}

/// An id that names nothing in the repository.
fn other_id(seed: u8) -> Id {
    Id::from_hex(&format!("{seed:02x}").repeat(32)).expect("64 hex digits")
}

both_backends!(
    a_pack_under_another_name_is_named,
    a_data_pack_moved_among_the_tree_packs_is_named,
    an_index_object_under_another_name_is_named,
    an_index_entry_at_the_wrong_offset_is_named,
    an_index_object_from_another_repository_is_named,
    an_old_index_replayed_after_a_prune_brings_nothing_back,
);

/// A data pack renamed to another pack id. Its blobs still authenticate
/// (they are bound to their ids and the repository, not to the pack's name),
/// so the data it holds is genuine; but the name no longer is the keyed hash
/// of its bytes, which `check --read-data` names.
fn a_pack_under_another_name_is_named(backend: Backend) {
    let (env, chunks) = two_backups(backend);
    let key = pack_key_of(&env, &chunks[0]);
    let fake = other_id(0xab);
    let fake_key = coffer_core::pack::pack_key(coffer_core::pack::PackKind::Data, &fake);
    move_object(&env, &key, &fake_key);

    let (code, report) = check(&env, &["--read-data"]);
    assert_eq!(code, 1, "{report:#}");
    let problem = damage_of(&report, "data pack", &fake.to_hex());
    assert!(problem.contains("hash"), "{problem}");

    let (code, err, good, bad) = restore(&env, "out");
    assert_never_wrong(&good, &bad);
    assert!(good.is_some(), "the intact file is restored: {err}");
    if code != 0 {
        assert!(err.contains(BAD.0.rsplit('/').next().unwrap()), "a failure names the file: {err}");
    }
}

/// A data pack moved into `tree/`: its header is bound to the pack's kind,
/// so it opens as neither; the chunks it held are missing, named with the
/// file that uses them, and restore fails that file alone.
fn a_data_pack_moved_among_the_tree_packs_is_named(backend: Backend) {
    let (env, chunks) = two_backups(backend);
    let key = pack_key_of(&env, &chunks[0]);
    let lost = crate::common::pack_mates(&open_repo(&env), ObjectKind::Chunk, &chunks[0]);
    let moved = key.replacen("data/", "tree/", 1);
    move_object(&env, &key, &moved);
    let pack_id = moved.rsplit('/').next().unwrap().to_string();

    let (code, report) = check(&env, &[]);
    assert_eq!(code, 1, "{report:#}");
    let problem = damage_of(&report, "tree pack", &pack_id);
    assert!(problem.contains("its index gives it as a data pack"), "{problem}");
    assert_eq!(damage_of(&report, "chunk", &chunks[0].to_hex()), "missing");

    let (code, err, good, bad) = restore(&env, "out");
    assert_never_wrong(&good, &bad);
    assert_ne!(code, 0, "{err}");
    assert!(good.is_some(), "{err}");
    assert!(bad.is_none());
    assert!(err.contains("bad.raw") && lost.iter().any(|c| err.contains(&c.to_hex())), "{err}");
}

/// An index object renamed: its name is bound to it, so it no longer opens.
/// `check` names it; the packs it listed are read from their own headers,
/// so everything still restores exactly, with a warning naming it.
fn an_index_object_under_another_name_is_named(backend: Backend) {
    let (env, _) = two_backups(backend);
    let indexes = objects_in(&env, "index");
    assert!(!indexes.is_empty());
    let fake = format!("index/{}", other_id(0xcd).to_hex());
    move_object(&env, indexes[0].to_str().unwrap(), &fake);

    let (code, report) = check(&env, &[]);
    assert_eq!(code, 1, "{report:#}");
    let problem = damage_of(&report, "index", &other_id(0xcd).to_hex());
    assert!(problem.contains("authenticate"), "{problem}");

    let (code, err, good, bad) = restore(&env, "out");
    assert_eq!(code, 0, "{err}");
    assert!(good.is_some() && bad.is_some(), "{err}");
    assert_never_wrong(&good, &bad);
    assert!(err.contains(&other_id(0xcd).to_hex()), "the unreadable index object is not named: {err}");
}

/// An index entry that points a chunk at another chunk's bytes (as a buggy
/// or malicious writer with the key could): reading there fails to
/// authenticate as the chunk it claims, so `check` names the pack and the
/// chunk, restore fails the file that uses it, and no other chunk's bytes
/// are ever returned in its place.
fn an_index_entry_at_the_wrong_offset_is_named(backend: Backend) {
    let (env, chunks) = two_backups(backend);
    let repo = open_repo(&env);
    // Two of the file's chunks in one pack.
    let set = repo.reload_blob_set().unwrap();
    let pack_of = |c: &Id| set.get(ObjectKind::Chunk, c).expect("a stored chunk").pack;
    let (a, b) = chunks
        .iter()
        .enumerate()
        .find_map(|(i, a)| chunks[i + 1..].iter().find(|b| pack_of(b) == pack_of(a)).map(|b| (*a, *b)))
        .expect("two chunks share a pack");
    rewrite_index(&repo, |packs: &mut Vec<IndexedPack>| {
        let mut swapped = 0;
        for p in packs.iter_mut() {
            let (Some(ia), Some(ib)) = (p.blobs.iter().position(|e| e.id == a), p.blobs.iter().position(|e| e.id == b))
            else {
                continue;
            };
            let (ea, eb) = (p.blobs[ia], p.blobs[ib]);
            p.blobs[ia] = coffer_core::pack::PackEntry { offset: eb.offset, length: eb.length, ..ea };
            p.blobs[ib] = coffer_core::pack::PackEntry { offset: ea.offset, length: ea.length, ..eb };
            swapped += 1;
        }
        assert_eq!(swapped, 1, "the two chunks share a pack");
    });
    drop(repo);
    let pack = pack_key_of(&env, &a).rsplit('/').next().unwrap().to_string();

    let (code, report) = check(&env, &[]);
    assert_eq!(code, 1, "{report:#}");
    let problem = damage_of(&report, "data pack", &pack);
    assert!(problem.contains("header"), "the header disagrees with the index: {problem}");

    let (code, report) = check(&env, &["--read-data"]);
    assert_eq!(code, 1, "{report:#}");
    damage_of(&report, "chunk", &a.to_hex());
    damage_of(&report, "chunk", &b.to_hex());

    let (code, err, good, bad) = restore(&env, "out");
    assert_never_wrong(&good, &bad);
    assert_ne!(code, 0, "{err}");
    assert!(bad.is_none() && good.is_some(), "{err}");
    assert!(err.contains("bad.raw") && (err.contains(&a.to_hex()) || err.contains(&b.to_hex())), "{err}");
}

/// An index object copied in from another repository (which names packs of
/// its own): bound to its repository, it does not open here; `check` names
/// it, and nothing it lists is used.
fn an_index_object_from_another_repository_is_named(backend: Backend) {
    let (env, _) = two_backups(backend);
    let other = Env::init_on(backend);
    other.write(BAD.0, &random_bytes(1000, 99));
    other.backup_json(&[]);
    let foreign = objects_in(&other, "index");
    let name = foreign[0].to_str().unwrap().to_string();
    std::fs::copy(other.repo.join(&name), env.repo.join(&name)).unwrap();
    let foreign_id = name.rsplit('/').next().unwrap().to_string();

    let (code, report) = check(&env, &[]);
    assert_eq!(code, 1, "{report:#}");
    let problem = damage_of(&report, "index", &foreign_id);
    assert!(problem.contains("authenticate"), "{problem}");
    assert_eq!(damage(&report).len(), 1, "{report:#}");

    let (code, err, good, bad) = restore(&env, "out");
    assert_eq!(code, 0, "{err}");
    assert_never_wrong(&good, &bad);
    assert!(good.is_some() && bad.is_some());
    assert!(err.contains(&foreign_id), "the foreign index object is not named: {err}");
}

/// An index object from before a prune, put back afterwards (a rollback of
/// the index): it names packs the prune deleted, which the listing no longer
/// shows, so none of its entries count. `check` finds nothing missing, the
/// kept snapshot restores exactly, and a backup of the data only the
/// deleted packs held stores it again instead of trusting the old index.
fn an_old_index_replayed_after_a_prune_brings_nothing_back(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("old.raw", &random_bytes(2_000_000, 31));
    env.backup_json(&[]);
    std::fs::remove_file(env.src.join("old.raw")).unwrap();
    env.write("new.raw", &random_bytes(1_000_000, 32));
    env.backup_json(&[]);
    let saved: Vec<(PathBuf, Vec<u8>)> =
        objects_in(&env, "index").into_iter().map(|p| (p.clone(), std::fs::read(env.repo.join(&p)).unwrap())).collect();
    env.coffer().args(["forget", "--keep-last", "1", "--prune"]).assert().success();
    let after_prune = dir_state(&env.repo);
    let (code, report) = check(&env, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["stale_indexes"], serde_json::json!([]), "a prune leaves no stale index object: {report:#}");
    let mut replayed = Vec::new();
    for (name, bytes) in &saved {
        if !env.repo.join(name).exists() {
            std::fs::write(env.repo.join(name), bytes).unwrap();
            replayed.push(name.file_name().unwrap().to_str().unwrap().to_string());
        }
    }
    assert!(!replayed.is_empty(), "the prune rewrote the index");
    assert_ne!(dir_state(&env.repo), after_prune);

    let (code, report) = check(&env, &["--read-data"]);
    assert_eq!(code, 0, "the replayed index holds nothing that counts: {report:#}");
    let stale: Vec<&str> = report["stale_indexes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(!stale.is_empty() && stale.iter().all(|s| replayed.iter().any(|r| r == s)), "{report:#}");
    let target = env.path("out");
    env.coffer().args(["restore", "latest", "--target"]).arg(&target).assert().success();
    assert!(std::fs::read(env.restored_src(&target).join("new.raw")).unwrap() == random_bytes(1_000_000, 32));
    assert!(!env.restored_src(&target).join("old.raw").exists());

    // The old data is gone with its packs: backed up again, it is stored again.
    env.write("old.raw", &random_bytes(2_000_000, 31));
    let report = env.backup_json(&[]);
    assert!(report["chunks_added"].as_u64().unwrap() >= 1, "the old index made backup reuse deleted data: {report:#}");
    env.coffer().args(["check", "--read-data"]).assert().success();
    let target = env.path("out2");
    env.coffer().args(["restore", "latest", "--target"]).arg(&target).assert().success();
    assert!(std::fs::read(env.restored_src(&target).join("old.raw")).unwrap() == random_bytes(2_000_000, 31));
}

/// A key envelope edited in any field (here: its host name, a byte of its
/// salt, a byte of the sealed key) no longer opens: its password is refused
/// as wrong (exit 12) and nothing is read with it, while another key's
/// password still opens the repository and everything in it.
#[test]
fn an_edited_key_envelope_no_longer_opens() {
    let env = Env::init();
    env.write(GOOD.0, &random_bytes(GOOD.1, GOOD.2));
    env.backup_json(&[]);
    let second_password = "another good password";
    let second = env.path("second.pw");
    std::fs::write(&second, second_password).unwrap();
    env.coffer()
        .args(["key", "add", "--new-password-file"])
        .arg(&second)
        .args(["--argon2-memory", "64", "--argon2-iterations", "1"])
        .assert()
        .success();
    let mine = open_repo(&env).key_name().to_string();
    let mine = mine.strip_prefix("keys/").unwrap_or(&mine).to_string();
    let path = env.repo.join("keys").join(&mine);
    let original = std::fs::read(&path).unwrap();

    type Edit = Box<dyn Fn(&mut coffer_core::key::KeyEnvelope)>;
    let edits: [(&str, Edit); 3] = [
        ("host", Box::new(|e| e.host = "somewhere-else".into())),
        ("salt", Box::new(|e| e.salt[0] ^= 1)),
        ("sealed key", Box::new(|e| e.sealed[20] ^= 1)),
    ];
    for (what, edit) in edits {
        let mut envelope = coffer_core::key::KeyEnvelope::from_bytes(&mine, &original).unwrap();
        edit(&mut envelope);
        std::fs::write(&path, envelope.to_bytes()).unwrap();
        let out = env.coffer().args(["snapshots", "--json"]).output().unwrap();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(12), "{what}: {err}");
        assert!(err.contains("wrong password"), "{what}: {err}");
        assert!(out.stdout.is_empty(), "{what}: nothing is listed");
        let out = env.coffer().env("COFFER_PASSWORD", second_password).args(["snapshots", "--json"]).output().unwrap();
        assert!(out.status.success(), "{what}: the other key no longer opens: {}", stderr_of(&out));
        let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(listed.as_array().unwrap().len(), 1, "{what}");
    }
    std::fs::write(&path, &original).unwrap();
    env.coffer().args(["check"]).assert().success();
}

/// The config replaced by another repository's, or its plaintext header
/// edited: the keys open but the config does not authenticate, which every
/// command reports as a damaged config (not as a wrong password, and never
/// by using settings it cannot trust).
#[test]
fn a_replaced_or_edited_config_is_refused() {
    let env = Env::init();
    env.write(GOOD.0, &random_bytes(GOOD.1, GOOD.2));
    env.backup_json(&[]);
    let original = std::fs::read(env.repo.join("config")).unwrap();
    let other = Env::init();
    let foreign = std::fs::read(other.repo.join("config")).unwrap();
    let mut edited = original.clone();
    edited[20] ^= 1; // inside the repository id of the plaintext header
    let mut body = original.clone();
    let last = body.len() - 1;
    body[last] ^= 1;
    for (what, bytes) in [("another repository's", &foreign), ("header edited", &edited), ("body edited", &body)] {
        std::fs::write(env.repo.join("config"), bytes).unwrap();
        for args in [&["snapshots"][..], &["check"][..], &["restore", "latest", "--target", "/nonexistent/out"][..]] {
            let out = env.coffer().args(args).output().unwrap();
            let err = stderr_of(&out);
            assert!(!out.status.success(), "{what}: {args:?} succeeded: {err}");
            assert_ne!(out.status.code(), Some(12), "{what}: reported as a wrong password: {err}");
            assert!(err.contains("config"), "{what}: {args:?} does not name the config: {err}");
        }
    }
    std::fs::write(env.repo.join("config"), &original).unwrap();
    env.coffer().args(["check", "--read-data"]).assert().success();
}
