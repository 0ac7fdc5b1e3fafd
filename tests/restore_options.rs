//! Restore's options and what it must get right beyond contents: `--verify`,
//! `--overwrite always|if-changed|never`, hard links, sparse files, and the
//! bound on the bytes of chunks in flight.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use coffer_core::progress::{NoProgress, Progress};
use coffer_core::restorer::{self, RestoreOptions};
use filetime::FileTime;
use serde_json::Value;

use crate::common::{Env, open_repo, random_bytes, stderr_of};

/// `src` as the snapshot records it, relative to a restore target.
fn restored(env: &Env, target: &Path) -> PathBuf {
    let src = std::fs::canonicalize(&env.src).unwrap();
    target.join(src.strip_prefix("/").unwrap())
}

/// Runs `coffer restore latest --json --target TARGET …`, which must succeed.
fn restore_json(env: &Env, target: &Path, extra: &[&str]) -> Value {
    let out = env.coffer().args(["restore", "latest", "--json", "--target"]).arg(target).args(extra).output().unwrap();
    assert!(out.status.success(), "restore {extra:?} failed: {}", stderr_of(&out));
    serde_json::from_slice(&out.stdout).expect("restore JSON")
}

fn n(report: &Value, field: &str) -> u64 {
    report[field].as_u64().unwrap_or_else(|| panic!("no {field} in {report}"))
}

/// (mtime, ctime) with nanoseconds: ctime moves on any change to a file,
/// content or metadata, so an unchanged ctime means restore did not touch it.
fn times(path: &Path) -> ((i64, i64), (i64, i64)) {
    let m = std::fs::symlink_metadata(path).unwrap();
    ((m.mtime(), m.mtime_nsec()), (m.ctime(), m.ctime_nsec()))
}

fn library_restore(env: &Env, options: &RestoreOptions, progress: &dyn Progress) -> restorer::RestoreOutcome {
    let repo = open_repo(env);
    let (_, snap) = repo.find_snapshot("latest").unwrap();
    restorer::restore(&repo, &snap.tree, options, progress).unwrap()
}

#[test]
fn verify_reads_back_every_restored_file() {
    let env = Env::init();
    env.write("a.bin", &random_bytes(3 << 20, 1));
    env.write("b.txt", b"hello");
    env.write("empty", b"");
    env.write("sub/c.bin", &random_bytes(100_000, 2));
    env.backup_json(&[]);
    let target = env.path("out");
    let out = env.coffer().args(["restore", "latest", "--verify", "--target"]).arg(&target).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stdout.contains("verified 4 files (3.1 MiB): all as in the snapshot"), "{stdout}");

    let report = restore_json(&env, &env.path("out2"), &["--verify"]);
    assert_eq!(n(&report, "verified_files"), 4, "{report}");
    assert_eq!(n(&report, "verified_bytes"), (3 << 20) + 5 + 100_000, "{report}");
    assert_eq!(n(&report, "verify_failures"), 0, "{report}");
    let plain = restore_json(&env, &env.path("out3"), &[]);
    assert!(plain.get("verified_files").is_none(), "no verification counts without --verify: {plain}");
}

/// Stands for whatever can change a file between restore writing it and
/// reading it back (a failing disk or controller, a file system bug, another
/// program writing into the target): when the only file of the snapshot is
/// complete, it changes one byte of it (under the temporary name it is
/// written to before being renamed into place). Restore itself cannot be made to
/// write wrong bytes from outside: every chunk is authenticated and checked
/// against its id before it is written, and a crafted tree cannot name
/// content it does not have without the key.
struct ChangesTheFileWhenWritten {
    path: PathBuf,
}

impl Progress for ChangesTheFileWhenWritten {
    fn file_done(&self) {
        let dir = self.path.parent().expect("a folder");
        let written = temp_files(dir);
        assert_eq!(written.len(), 1, "one file is being written in {}: {written:?}", dir.display());
        let f = std::fs::OpenOptions::new().write(true).open(dir.join(&written[0])).expect("open the restored file");
        f.write_all_at(b"X", 70_000).expect("change it");
    }
}

#[test]
fn verify_names_a_file_that_does_not_read_back_as_written() {
    let env = Env::init();
    env.write("only.bin", &random_bytes(200_000, 3));
    env.backup_json(&[]);
    let target = env.path("out");
    let file = restored(&env, &target).join("only.bin");
    let tamper = ChangesTheFileWhenWritten { path: file.clone() };

    // Without verification, the change goes unnoticed.
    let options = RestoreOptions { target: target.clone(), ..RestoreOptions::default() };
    let outcome = library_restore(&env, &options, &tamper);
    assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
    assert_ne!(std::fs::read(&file).unwrap(), random_bytes(200_000, 3));

    let options = RestoreOptions { target: target.clone(), verify: true, ..RestoreOptions::default() };
    let outcome = library_restore(&env, &options, &tamper);
    assert_eq!((outcome.verify_failures, outcome.verified_files), (1, 0));
    assert_eq!(outcome.problems.len(), 1, "{:?}", outcome.problems);
    assert_eq!(outcome.problems[0].path, file);
    let msg = &outcome.problems[0].message;
    assert!(msg.starts_with("verification failed: bytes 0..") && msg.contains("differ from chunk"), "{msg}");

    // The same restore with nothing in the way verifies.
    let outcome = library_restore(&env, &options, &NoProgress);
    assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
    assert_eq!((outcome.verify_failures, outcome.verified_files), (0, 1));
    assert_eq!(std::fs::read(&file).unwrap(), random_bytes(200_000, 3));
}

/// A target restored once, then changed: `same.bin` keeps its size and
/// mtime but not its content, `grown.txt` has more bytes and an old mtime,
/// `link` points elsewhere, `missing.txt` is gone, `keep.txt` is untouched.
struct Changed {
    back: PathBuf,
    keep_ctime: (i64, i64),
    same_mtime: (i64, i64),
    grown_mtime: (i64, i64),
}

fn change_target(env: &Env, target: &Path) -> Changed {
    let back = restored(env, target);
    let same = back.join("same.bin");
    let mtime = FileTime::from_last_modification_time(&std::fs::metadata(&same).unwrap());
    std::fs::write(&same, random_bytes(50_000, 99)).unwrap();
    filetime::set_file_mtime(&same, mtime).unwrap();
    std::fs::write(back.join("grown.txt"), b"grown, and more").unwrap();
    filetime::set_file_mtime(back.join("grown.txt"), FileTime::from_unix_time(1_000_000_000, 0)).unwrap();
    std::fs::remove_file(back.join("link")).unwrap();
    std::os::unix::fs::symlink("elsewhere", back.join("link")).unwrap();
    std::fs::remove_file(back.join("missing.txt")).unwrap();
    // Any change after this moves a ctime past the clock's granularity.
    std::thread::sleep(Duration::from_millis(50));
    Changed {
        keep_ctime: times(&back.join("keep.txt")).1,
        same_mtime: times(&same).0,
        grown_mtime: times(&back.join("grown.txt")).0,
        back,
    }
}

fn overwrite_env() -> Env {
    let env = Env::init();
    env.write("keep.txt", b"keep me");
    env.write("same.bin", &random_bytes(50_000, 1));
    env.write("grown.txt", b"grown");
    env.write("missing.txt", b"missing");
    std::os::unix::fs::symlink("keep.txt", env.src.join("link")).unwrap();
    env.backup_json(&[]);
    env
}

#[test]
fn overwrite_never_leaves_existing_entries_alone() {
    let env = overwrite_env();
    let target = env.path("out");
    restore_json(&env, &target, &[]);
    let c = change_target(&env, &target);
    let report = restore_json(&env, &target, &["--overwrite", "never"]);
    assert_eq!((n(&report, "files"), n(&report, "skipped")), (1, 4), "{report}");
    assert_eq!(std::fs::read(c.back.join("missing.txt")).unwrap(), b"missing", "missing entries are restored");
    assert_eq!(std::fs::read(c.back.join("same.bin")).unwrap(), random_bytes(50_000, 99));
    assert_eq!(times(&c.back.join("same.bin")).0, c.same_mtime);
    assert_eq!(std::fs::read(c.back.join("grown.txt")).unwrap(), b"grown, and more");
    assert_eq!(times(&c.back.join("grown.txt")).0, c.grown_mtime);
    assert_eq!(std::fs::read_link(c.back.join("link")).unwrap(), Path::new("elsewhere"));
    assert_eq!(times(&c.back.join("keep.txt")).1, c.keep_ctime, "keep.txt was touched");
}

#[test]
fn overwrite_if_changed_rewrites_what_differs_even_with_the_same_size_and_mtime() {
    let env = overwrite_env();
    let target = env.path("out");
    restore_json(&env, &target, &[]);
    let c = change_target(&env, &target);
    let report = restore_json(&env, &target, &["--overwrite", "if-changed", "--verify"]);
    assert_eq!((n(&report, "files"), n(&report, "skipped"), n(&report, "skipped_bytes")), (3, 1, 7), "{report}");
    assert_eq!(n(&report, "verified_files"), 3, "{report}");
    assert_eq!(std::fs::read(c.back.join("same.bin")).unwrap(), random_bytes(50_000, 1), "same size and mtime");
    assert_eq!(std::fs::read(c.back.join("grown.txt")).unwrap(), b"grown");
    assert_eq!(times(&c.back.join("grown.txt")).0, times(&env.src.join("grown.txt")).0);
    assert_eq!(std::fs::read(c.back.join("missing.txt")).unwrap(), b"missing");
    assert_eq!(std::fs::read_link(c.back.join("link")).unwrap(), Path::new("keep.txt"), "symlinks are replaced");
    assert_eq!(times(&c.back.join("keep.txt")).1, c.keep_ctime, "an unchanged file was touched");
}

#[test]
fn overwrite_always_rewrites_every_file() {
    let env = overwrite_env();
    let target = env.path("out");
    restore_json(&env, &target, &[]);
    let c = change_target(&env, &target);
    let report = restore_json(&env, &target, &["--overwrite", "always"]);
    assert_eq!((n(&report, "files"), n(&report, "skipped")), (4, 0), "{report}");
    assert_eq!(std::fs::read(c.back.join("same.bin")).unwrap(), random_bytes(50_000, 1));
    assert_eq!(std::fs::read(c.back.join("grown.txt")).unwrap(), b"grown");
    assert_eq!(std::fs::read_link(c.back.join("link")).unwrap(), Path::new("keep.txt"));
    assert_ne!(times(&c.back.join("keep.txt")).1, c.keep_ctime, "keep.txt was not rewritten");
    assert_eq!(std::fs::read(c.back.join("keep.txt")).unwrap(), b"keep me");
}

#[test]
fn hard_linked_files_are_restored_as_hard_links() {
    let env = Env::init();
    let a = env.write("a.bin", &random_bytes(300_000, 1));
    std::fs::create_dir(env.src.join("sub")).unwrap();
    std::fs::hard_link(&a, env.src.join("sub/b.bin")).unwrap();
    env.write("c.bin", &random_bytes(300_000, 1));
    env.backup_json(&[]);

    let target = env.path("out");
    let report = restore_json(&env, &target, &["--verify"]);
    assert_eq!((n(&report, "files"), n(&report, "hardlinks")), (2, 1), "{report}");
    assert_eq!(n(&report, "verified_files"), 3, "{report}");
    let back = restored(&env, &target);
    let (ma, mb, mc) = (
        std::fs::metadata(back.join("a.bin")).unwrap(),
        std::fs::metadata(back.join("sub/b.bin")).unwrap(),
        std::fs::metadata(back.join("c.bin")).unwrap(),
    );
    assert_eq!((ma.ino(), ma.nlink()), (mb.ino(), 2), "a.bin and sub/b.bin are one file");
    assert_eq!(mc.nlink(), 1, "same content is not a hard link");
    assert_eq!(std::fs::read(back.join("sub/b.bin")).unwrap(), random_bytes(300_000, 1));
    assert_eq!(ma.mtime(), std::fs::metadata(&a).unwrap().mtime());

    // Again over the same target: still one file with two names.
    restore_json(&env, &target, &[]);
    let (ma, mb) = (std::fs::metadata(back.join("a.bin")).unwrap(), std::fs::metadata(back.join("sub/b.bin")).unwrap());
    assert_eq!((ma.ino(), ma.nlink()), (mb.ino(), 2));

    // One name alone is a plain file.
    let only = env.path("only");
    let src = std::fs::canonicalize(&env.src).unwrap();
    restore_json(&env, &only, &["--include", src.join("sub/b.bin").to_str().unwrap()]);
    let m = std::fs::metadata(restored(&env, &only).join("sub/b.bin")).unwrap();
    assert_eq!((m.nlink(), m.len()), (1, 300_000));
    assert!(!restored(&env, &only).join("a.bin").exists());
}

#[test]
fn restore_never_writes_through_a_hard_link_in_the_target() {
    let env = Env::init();
    env.write("x.txt", b"from the snapshot");
    env.backup_json(&[]);
    let target = env.path("out");
    let back = restored(&env, &target);
    std::fs::create_dir_all(&back).unwrap();
    // x.txt in the target is another name of a file outside it.
    let outside = env.path("outside.txt");
    std::fs::write(&outside, b"outside, keep me").unwrap();
    std::fs::hard_link(&outside, back.join("x.txt")).unwrap();
    restore_json(&env, &target, &["--verify"]);
    assert_eq!(std::fs::read(&outside).unwrap(), b"outside, keep me");
    assert_eq!(std::fs::read(back.join("x.txt")).unwrap(), b"from the snapshot");
    assert_eq!(std::fs::metadata(&outside).unwrap().nlink(), 1);
}

#[test]
fn sparse_file_restores_sparse() {
    let env = Env::init();
    let path = env.src.join("disk.img");
    let size: u64 = 2 << 30;
    let tail = random_bytes(1 << 20, 9);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(&tail, size - tail.len() as u64).unwrap();
    drop(f);
    env.backup_json(&[]);

    let target = env.path("out");
    let started = std::time::Instant::now();
    let report = restore_json(&env, &target, &["--verify"]);
    let took = started.elapsed();
    assert_eq!((n(&report, "bytes"), n(&report, "verified_files"), n(&report, "verify_failures")), (size, 1, 0));
    let back = restored(&env, &target).join("disk.img");
    let f = std::fs::File::open(&back).unwrap();
    let meta = f.metadata().unwrap();
    assert_eq!(meta.len(), size);
    assert!(meta.blocks() * 512 < 64 << 20, "{} bytes allocated", meta.blocks() * 512);
    let mut got = vec![0u8; tail.len()];
    f.read_exact_at(&mut got, size - tail.len() as u64).unwrap();
    assert!(got == tail, "the data at the end differs");
    let mut block = vec![1u8; 1 << 16];
    for at in [0, 4096, 1 << 30, (2 << 30) - (1 << 20) - (1 << 16)] {
        f.read_exact_at(&mut block, at).unwrap();
        assert!(block.iter().all(|&b| b == 0), "bytes at {at} are not zero");
    }
    eprintln!("restore --verify of a 2 GiB sparse file: {took:?}");
}

#[test]
fn bytes_in_flight_stay_within_the_budget() {
    let env = Env::new();
    // Small chunks (32 KiB to 512 KiB), so that many are fetched at once.
    env.coffer()
        .args(["init", "--argon2-memory", "64", "--argon2-iterations", "1", "--chunk-size", "65536"])
        .assert()
        .success();
    let files: Vec<(String, Vec<u8>)> =
        (0..6).map(|i| (format!("f{i}.bin"), random_bytes(if i == 0 { 4 << 20 } else { 1 << 20 }, i))).collect();
    for (name, data) in &files {
        env.write(name, data);
    }
    env.backup_json(&[]);
    for (budget, max) in [(1 << 20, 1 << 20), (1, 512 << 10)] {
        let target = env.path(&format!("out-{budget}"));
        let options = RestoreOptions {
            target: target.clone(),
            concurrency: 16,
            max_bytes_in_flight: budget,
            ..RestoreOptions::default()
        };
        let outcome = library_restore(&env, &options, &NoProgress);
        assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
        assert!(
            outcome.peak_bytes_in_flight > 0 && outcome.peak_bytes_in_flight <= max,
            "budget {budget}: peak {}",
            outcome.peak_bytes_in_flight
        );
        for (name, data) in &files {
            assert!(std::fs::read(restored(&env, &target).join(name)).unwrap() == *data, "{name}");
        }
    }
}

/// An unchanged file whose mode differs from the snapshot's, but which is
/// another name of a file outside the target: `--overwrite if-changed`
/// must not chmod that outside file; it writes a new file instead.
#[test]
fn restore_never_changes_metadata_through_a_hard_link_in_the_target() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::init();
    let x = env.write("x.txt", b"same content inside and out");
    std::fs::set_permissions(&x, std::fs::Permissions::from_mode(0o644)).unwrap();
    env.backup_json(&[]);
    let target = env.path("out");
    let back = restored(&env, &target);
    std::fs::create_dir_all(&back).unwrap();
    // Outside: the snapshot's content and mtime, another mode.
    let outside = env.path("outside.txt");
    std::fs::write(&outside, b"same content inside and out").unwrap();
    filetime::set_file_mtime(&outside, FileTime::from_last_modification_time(&std::fs::metadata(&x).unwrap())).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::hard_link(&outside, back.join("x.txt")).unwrap();

    restore_json(&env, &target, &["--overwrite", "if-changed"]);
    let (o, inside) = (std::fs::metadata(&outside).unwrap(), std::fs::metadata(back.join("x.txt")).unwrap());
    assert_eq!(o.permissions().mode() & 0o7777, 0o600, "the outside file's mode was changed through the link");
    assert_eq!(inside.permissions().mode() & 0o7777, 0o644, "the restored file has the snapshot's mode");
    assert_ne!(o.ino(), inside.ino(), "the restored name is a file of its own");
    assert_eq!((o.nlink(), inside.nlink()), (1, 1));
    assert_eq!(std::fs::read(back.join("x.txt")).unwrap(), b"same content inside and out");
}

/// Names in `dir` that restore uses for files not yet complete.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(restorer::TEMP_PREFIX))
        .collect()
}

/// With `--overwrite always`, a file whose chunk fails to decode is not
/// restored, and the copy the target held before stays as it was: the new
/// content goes to a temporary name, renamed over the old one only once
/// complete, and the temporary file is removed.
#[test]
fn a_chunk_that_fails_to_decode_leaves_the_previous_copy_intact() {
    let env = Env::init();
    env.write("photo.jpg", &random_bytes(400_000, 5));
    env.write("other.txt", b"other");
    env.backup_json(&[]);
    let target = env.path("out");
    restore_json(&env, &target, &[]);
    let back = restored(&env, &target);
    let previous = random_bytes(123_456, 6);
    std::fs::write(back.join("photo.jpg"), &previous).unwrap();
    // Damage every chunk of the photo.
    let repo = open_repo(&env);
    let node =
        crate::common::snapshot_node(&repo, "latest", &std::fs::canonicalize(env.src.join("photo.jpg")).unwrap());
    for coffer_core::tree::ChunkRef(id, _) in &node.content {
        let blob = crate::common::stored_blob(&repo, coffer_core::crypto::ObjectKind::Chunk, id);
        blob.flip(&env.repo, blob.length / 2);
    }

    let out =
        env.coffer().args(["restore", "latest", "--overwrite", "always", "--target"]).arg(&target).output().unwrap();
    assert!(!out.status.success(), "a damaged chunk must fail the restore");
    let err = stderr_of(&out);
    assert!(err.contains("photo.jpg"), "the message names the file: {err}");
    assert_eq!(std::fs::read(back.join("photo.jpg")).unwrap(), previous, "the previous copy was lost");
    assert_eq!(std::fs::read(back.join("other.txt")).unwrap(), b"other");
    assert_eq!(temp_files(&back), Vec::<String>::new(), "temporary files are removed");
}

#[test]
fn restore_delete_makes_the_target_mirror_the_snapshot_within_the_included_paths() {
    let env = Env::init();
    env.write("photos/a.jpg", b"a");
    env.write("photos/2024/b.jpg", b"b");
    env.write("notes/n.txt", b"n");
    env.backup_json(&[]);
    let target = env.path("target");
    let run = |extra: &[&str]| {
        let out =
            env.coffer().args(["restore", "latest", "--json", "--target"]).arg(&target).args(extra).output().unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    run(&[]);
    let back = restored(&env, &target);
    // Things the snapshot lacks, inside and outside what is restored.
    std::fs::write(back.join("photos/extra.jpg"), b"x").unwrap();
    std::fs::create_dir_all(back.join("photos/2024/new/deeper")).unwrap();
    std::fs::write(back.join("photos/2024/new/deeper/y"), b"y").unwrap();
    std::os::unix::fs::symlink("/etc", back.join("photos/link-to-etc")).unwrap();
    std::fs::write(back.join("notes/keep-me.txt"), b"k").unwrap();
    std::fs::write(target.join("beside.txt"), b"beside").unwrap();

    // Without --delete nothing goes.
    run(&[]);
    assert!(back.join("photos/extra.jpg").exists());

    // With --delete and an include, only what is inside the include goes.
    let photos = std::fs::canonicalize(&env.src).unwrap().join("photos");
    let report = run(&["--delete", "--include", photos.to_str().unwrap()]);
    assert_eq!(report["deleted"], 3, "{report}");
    assert!(!back.join("photos/extra.jpg").exists());
    assert!(!back.join("photos/2024/new").exists());
    assert!(std::fs::symlink_metadata(back.join("photos/link-to-etc")).is_err(), "the link is removed");
    assert!(Path::new("/etc").is_dir(), "never followed");
    assert!(back.join("notes/keep-me.txt").exists(), "outside the include");
    assert!(target.join("beside.txt").exists(), "outside the include");
    assert_eq!(std::fs::read(back.join("photos/2024/b.jpg")).unwrap(), b"b");

    // Without an include, the whole target mirrors the snapshot.
    let report = run(&["--delete"]);
    assert_eq!(report["deleted"], 2, "{report}");
    assert!(!back.join("notes/keep-me.txt").exists() && !target.join("beside.txt").exists());
    let mut left = crate::common::files_below(&target);
    left.sort();
    let src = std::fs::canonicalize(&env.src).unwrap();
    let rel = src.strip_prefix("/").unwrap();
    assert_eq!(left, vec![rel.join("notes/n.txt"), rel.join("photos/2024/b.jpg"), rel.join("photos/a.jpg")]);
}
