//! Deduplication: unchanged data is neither read again nor stored twice, an
//! edit costs only the chunks around it, and a chunk lost from the repository
//! is stored again by the next backup (the design's invariant 4). All with the
//! default chunker (min 512 KiB, avg 1 MiB, max 8 MiB), as users get it.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use coffer_core::crypto::ObjectKind;

use crate::common::{Backend, Env, both_backends, open_repo, pack_mates, random_bytes, stored_blob};

both_backends!(
    unchanged_data_is_neither_read_nor_stored_again,
    an_odd_length_insertion_costs_at_most_two_chunks,
    identical_files_are_stored_once,
    a_chunk_deleted_from_the_repository_is_stored_again,
    the_parent_is_the_latest_snapshot_of_the_same_host_and_paths
);

const MIB: usize = 1 << 20;

/// The total size of every file below `dir` (apparent sizes, so the figure
/// does not depend on the file system's block size).
fn folder_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let e = e.expect("dir entry");
            let meta = e.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// The chunks stored in the repository's packs, as the index and the pack
/// listings say, as `xx/<64 hex>`.
fn chunk_files(env: &Env) -> BTreeSet<String> {
    let repo = open_repo(env);
    repo.list_ids(ObjectKind::Chunk)
        .expect("list chunks")
        .into_iter()
        .map(|id| {
            let hex = id.to_hex();
            format!("{}/{hex}", &hex[..2])
        })
        .collect()
}

fn id_of(name: &str) -> coffer_core::Id {
    coffer_core::Id::from_hex(&name[3..]).expect("a chunk name")
}

/// The chunk object names that `data` is cut into by this repository's
/// (keyed) chunker, computed with the library.
fn expected_chunks(env: &Env, data: &[u8]) -> BTreeSet<String> {
    let repo = open_repo(env);
    let chunker = repo.chunker().expect("chunker");
    chunker
        .split(data)
        .map(|c| {
            let hex = repo.keys().id(c).to_hex();
            format!("{}/{hex}", &hex[..2])
        })
        .collect()
}

fn num(report: &Value, field: &str) -> u64 {
    report[field].as_u64().unwrap_or_else(|| panic!("no number {field:?} in the report {report}"))
}

/// `coffer backup --json` of the given paths.
fn backup_paths(env: &Env, extra: &[&str], paths: &[PathBuf]) -> Value {
    let out = env.coffer().arg("backup").arg("--json").args(extra).args(paths).output().expect("run backup");
    assert!(out.status.success(), "backup failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("backup JSON")
}

fn restore_latest(env: &Env, name: &str) -> PathBuf {
    let target = env.path(name);
    env.coffer().args(["restore", "latest", "--target"]).arg(&target).assert().success();
    env.restored_src(&target)
}

fn unchanged_data_is_neither_read_nor_stored_again(backend: Backend) {
    let env = Env::init_on(backend);
    let files: [(&str, usize); 6] = [
        ("a.jpg", 3 * MIB + 17),
        ("b/c.jpg", 2 * MIB),
        ("b/d/e.raw", 3 * MIB / 2),
        ("f.txt", 100_000),
        ("g", 10),
        ("empty", 0),
    ];
    for (i, (name, len)) in files.iter().enumerate() {
        env.write(name, &random_bytes(*len, i as u64 + 100));
    }
    let data_size: u64 = files.iter().map(|f| f.1 as u64).sum();

    let first = env.backup_json(&[]);
    assert_eq!(num(&first, "files_new"), files.len() as u64, "{first}");
    assert_eq!(num(&first, "bytes_read"), data_size, "{first}");
    let before = folder_size(&env.repo);
    let chunks_before = chunk_files(&env);

    let second = env.backup_json(&[]);
    assert_eq!(second["parent"], first["snapshot_id"], "{second}");
    assert_eq!(num(&second, "bytes_read"), 0, "{second}");
    assert_eq!(num(&second, "files_unchanged"), files.len() as u64, "{second}");
    assert_eq!(num(&second, "files_new") + num(&second, "files_changed"), 0, "{second}");
    assert_eq!(num(&second, "chunks_added"), 0, "{second}");
    assert_eq!(num(&second, "errors"), 0, "{second}");
    let after = folder_size(&env.repo);
    assert_eq!(chunk_files(&env), chunks_before, "the second backup changed the set of chunks");
    // Both the report and the repository itself must agree: only a snapshot
    // and a few small trees are new.
    assert!(
        num(&second, "bytes_added") * 1000 < data_size,
        "the report says {} bytes were added for {data_size} bytes of unchanged data",
        num(&second, "bytes_added")
    );
    assert!(
        (after - before) * 1000 < data_size,
        "the repository grew by {} bytes (from {before} to {after}) for {data_size} bytes of unchanged data",
        after - before
    );

    // A new mtime makes the file be read again, but its data is stored.
    let a = env.src.join("a.jpg");
    filetime::set_file_mtime(&a, filetime::FileTime::from_unix_time(1_234_567_890, 1)).expect("set mtime");
    let third = env.backup_json(&[]);
    assert_eq!((num(&third, "files_changed"), num(&third, "files_unchanged")), (1, 5), "{third}");
    assert_eq!(num(&third, "bytes_read"), files[0].1 as u64, "{third}");
    assert_eq!(num(&third, "chunks_added"), 0, "{third}");
    // And so is everything read with --force.
    let forced = env.backup_json(&["--force"]);
    assert_eq!(num(&forced, "bytes_read"), data_size, "{forced}");
    assert_eq!(num(&forced, "chunks_added"), 0, "{forced}");
    assert_eq!(chunk_files(&env), chunks_before, "re-reading unchanged data changed the set of chunks");
}

/// Backs up after an edit and checks that it cost at most two new chunks,
/// both in the report and in the repository.
fn backup_after_edit(env: &Env, what: &str, len: usize) {
    let before = chunk_files(env);
    let report = env.backup_json(&[]);
    let after = chunk_files(env);
    assert!(before.is_subset(&after), "{what}: chunks disappeared");
    let new = after.len() - before.len();
    assert_eq!(num(&report, "files_changed"), 1, "{what}: {report}");
    assert_eq!(num(&report, "bytes_read"), len as u64, "{what}: {report}");
    assert_eq!(num(&report, "chunks_added"), new as u64, "{what}: the report disagrees with the repository: {report}");
    assert!((1..=2).contains(&new), "{what}: {new} new chunks (expected 1 or 2) of {} stored: {report}", after.len());
}

/// Checks that the latest snapshot records `path` as exactly the chunks that
/// `data` is cut into, without fetching them.
fn assert_snapshot_content(env: &Env, path: &Path, data: &[u8]) {
    let repo = open_repo(env);
    let (_, snap) = repo.find_snapshot("latest").expect("latest snapshot");
    let node = coffer_core::walk::find(&repo, &snap.tree, path).expect("walk").expect("a file node");
    let recorded: Vec<(String, u32)> = node.content.iter().map(|c| (c.0.to_hex(), c.1)).collect();
    let chunker = repo.chunker().expect("chunker");
    let expected: Vec<(String, u32)> =
        chunker.split(data).map(|c| (repo.keys().id(c).to_hex(), c.len() as u32)).collect();
    assert_eq!(node.size, data.len() as u64);
    assert_eq!(recorded, expected, "the snapshot's chunk list of {} does not match the file", path.display());
}

fn an_odd_length_insertion_costs_at_most_two_chunks(backend: Backend) {
    let env = Env::init_on(backend);
    let mut data = random_bytes(20 * MIB, 20);
    env.write("video.mov", &data);
    let first = env.backup_json(&[]);
    let initial = chunk_files(&env).len();
    assert_eq!(num(&first, "chunks_added") as usize, initial, "{first}");
    assert!(initial >= 10, "20 MiB in only {initial} chunks with an average of 1 MiB");

    // 101 bytes (odd on purpose) at the start.
    data.splice(0..0, random_bytes(101, 21));
    env.write("video.mov", &data);
    backup_after_edit(&env, "insertion at the start", data.len());
    assert_snapshot_content(&env, &env.src.join("video.mov"), &data);

    // And 101 bytes in the middle, at an odd offset.
    let mid = 10 * MIB + 12_345;
    data.splice(mid..mid, random_bytes(101, 22));
    env.write("video.mov", &data);
    backup_after_edit(&env, "insertion in the middle", data.len());
    assert_snapshot_content(&env, &env.src.join("video.mov"), &data);
}

fn identical_files_are_stored_once(backend: Backend) {
    let env = Env::init_on(backend);
    // Longer than the largest chunk (8 MiB), so that it spans several
    // chunks whatever the repository's random gear table: 3 MiB could be
    // one chunk (about one key in seventy, from the cut probabilities; seen
    // once in CI-like runs).
    let data = random_bytes(8 * MIB + 12_345, 30);
    env.write("a.jpg", &data);
    env.write("copies/b.jpg", &data);
    let expected = expected_chunks(&env, &data);
    assert!(expected.len() >= 2, "test data should span several chunks");

    let first = env.backup_json(&[]);
    assert_eq!(num(&first, "files_new"), 2, "{first}");
    assert_eq!(num(&first, "chunks_added") as usize, expected.len(), "{first}");
    assert_eq!(chunk_files(&env), expected, "two identical files should be stored as the chunks of one");

    // A new file identical to one already in an earlier snapshot, backed up
    // both with a parent and without one: dedup is against the repository,
    // not only against the parent snapshot.
    env.write("later/c.jpg", &data);
    for extra in [&[][..], &["--host", "another-host"][..]] {
        let report = env.backup_json(extra);
        assert_eq!(num(&report, "chunks_added"), 0, "{extra:?}: {report}");
        assert_eq!(chunk_files(&env), expected, "{extra:?}: a copy of stored data added chunks");
    }
}

fn a_chunk_deleted_from_the_repository_is_stored_again(backend: Backend) {
    let env = Env::init_on(backend);
    // Longer than the largest chunk: several chunks with every key.
    let big = random_bytes(8 * MIB + 1, 40);
    let small = random_bytes(100_000, 41);
    env.write("big.bin", &big);
    env.write("small.bin", &small);
    let first = env.backup_json(&[]);
    assert_eq!(num(&first, "files_new"), 2, "{first}");

    let big_chunks: Vec<String> = {
        let set = expected_chunks(&env, &big);
        assert!(set.len() >= 2, "test data should span several chunks");
        set.into_iter().collect()
    };
    let all = chunk_files(&env);
    assert!(big_chunks.iter().all(|c| all.contains(c)), "the chunks of big.bin are not all stored");
    // One chunk's pack deleted, another's truncated to nothing (as a crash
    // of a store without atomic writes could leave it): the chunks in both
    // count as missing.
    let repo = open_repo(&env);
    let lost = stored_blob(&repo, ObjectKind::Chunk, &id_of(&big_chunks[big_chunks.len() / 2]));
    let emptied = stored_blob(&repo, ObjectKind::Chunk, &id_of(&big_chunks[0]));
    let mut gone: BTreeSet<coffer_core::Id> =
        pack_mates(&repo, ObjectKind::Chunk, &id_of(&big_chunks[big_chunks.len() / 2])).into_iter().collect();
    std::fs::remove_file(lost.pack_file(&env.repo)).expect("delete a pack");
    if emptied.pack != lost.pack {
        gone.extend(pack_mates(&repo, ObjectKind::Chunk, &id_of(&big_chunks[0])));
        std::fs::write(emptied.pack_file(&env.repo), b"").expect("truncate a pack");
    }
    let small_chunk = crate::common::snapshot_node(&repo, "latest", &env.src.join("small.bin")).content[0].0;
    let reread = big.len() as u64 + if gone.contains(&small_chunk) { small.len() as u64 } else { 0 };
    drop(repo);

    // Invariant 4: the parent's chunk list of big.bin names chunks that are
    // gone, so the unchanged file is read again and the chunks stored again.
    let second = env.backup_json(&[]);
    assert_eq!(second["parent"], first["snapshot_id"], "{second}");
    let now = chunk_files(&env);
    for id in &gone {
        let hex = id.to_hex();
        assert!(now.contains(&format!("{}/{hex}", &hex[..2])), "the lost chunk {id} was not stored again: {second}");
    }
    assert_eq!(now, all, "the repository should hold the same chunks as before the loss");
    assert_eq!(num(&second, "chunks_added"), gone.len() as u64, "{second}");
    assert_eq!(num(&second, "bytes_read"), reread, "only the files that lost chunks are read again: {second}");
    let unchanged = if reread == big.len() as u64 { 1 } else { 0 };
    assert_eq!(num(&second, "files_unchanged"), unchanged, "{second}");

    let back = restore_latest(&env, "out");
    assert!(std::fs::read(back.join("big.bin")).expect("restored big.bin") == big, "big.bin differs after restore");
    assert!(std::fs::read(back.join("small.bin")).expect("restored small.bin") == small, "small.bin differs");

    // Repaired: the next backup reads nothing.
    let third = env.backup_json(&[]);
    assert_eq!(num(&third, "bytes_read"), 0, "{third}");
}

fn the_parent_is_the_latest_snapshot_of_the_same_host_and_paths(backend: Backend) {
    let env = Env::init_on(backend);
    let files = [("a", 300_000), ("sub/b", 200_000), ("sub/c", 5)];
    for (i, (name, len)) in files.iter().enumerate() {
        env.write(name, &random_bytes(*len, i as u64 + 50));
    }
    let n = files.len() as u64;
    let total: u64 = files.iter().map(|f| f.1 as u64).sum();
    let id = |r: &Value| r["snapshot_id"].clone();

    let s1 = env.backup_json(&[]);
    assert_eq!(s1["parent"], Value::Null, "{s1}");
    assert_eq!(num(&s1, "files_new"), n, "{s1}");

    let s2 = env.backup_json(&[]);
    assert_eq!(s2["parent"], id(&s1), "{s2}");
    assert_eq!((num(&s2, "bytes_read"), num(&s2, "files_unchanged")), (0, n), "{s2}");

    // Another host: no parent, everything is read again.
    let s3 = env.backup_json(&["--host", "other-host"]);
    assert_eq!(s3["parent"], Value::Null, "{s3}");
    assert_eq!((num(&s3, "bytes_read"), num(&s3, "files_new"), num(&s3, "files_unchanged")), (total, n, 0), "{s3}");

    let s4 = env.backup_json(&["--host", "other-host"]);
    assert_eq!(s4["parent"], id(&s3), "{s4}");
    assert_eq!(num(&s4, "bytes_read"), 0, "{s4}");

    // Back on this host: the parent is this host's latest, not the newest.
    let s5 = env.backup_json(&[]);
    assert_eq!(s5["parent"], id(&s2), "{s5}");
    assert_eq!(num(&s5, "bytes_read"), 0, "{s5}");

    // The same paths named another way (relative, with `./` and a trailing
    // slash) are the same paths.
    let out = env.coffer().current_dir(env.dir.path()).args(["backup", "--json", "./src/"]).output().expect("backup");
    assert!(out.status.success(), "backup failed: {}", String::from_utf8_lossy(&out.stderr));
    let s6: Value = serde_json::from_slice(&out.stdout).expect("backup JSON");
    assert_eq!(s6["parent"], id(&s5), "{s6}");
    assert_eq!(num(&s6, "bytes_read"), 0, "{s6}");

    // Other paths: no parent; the order they are given in does not matter.
    let s7 = backup_paths(&env, &[], &[env.src.join("sub"), env.src.join("a")]);
    assert_eq!(s7["parent"], Value::Null, "{s7}");
    assert_eq!(num(&s7, "files_new"), n, "{s7}");
    let s8 = backup_paths(&env, &[], &[env.src.join("a"), env.src.join("sub")]);
    assert_eq!(s8["parent"], id(&s7), "{s8}");
    assert_eq!(num(&s8, "bytes_read"), 0, "{s8}");
}
