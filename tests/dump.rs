//! `coffer dump`: a file's bytes on standard output, a folder as a tar
//! archive that tar extracts back into the source (contents, modes, mtimes
//! to the nanosecond, symlinks, hard links, empty folders, long and
//! non-UTF-8 names), and clear failures.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use coffer_core::crypto::ObjectKind;
use coffer_core::dump::{self, DumpOptions};
use filetime::FileTime;

use crate::common::{Env, open_repo, pack_mates, random_bytes, snapshot_node, stderr_of, stored_blob};

/// `src` as the snapshot records it.
fn src(env: &Env) -> PathBuf {
    std::fs::canonicalize(&env.src).unwrap()
}

/// `coffer dump latest PATH`, which must succeed; its standard output.
fn dump_ok(env: &Env, path: &Path) -> Vec<u8> {
    let out = env.coffer().args(["dump", "latest"]).arg(path).output().unwrap();
    assert!(out.status.success(), "dump {} failed: {}", path.display(), stderr_of(&out));
    out.stdout
}

#[test]
fn dump_of_a_file_is_its_content() {
    let env = Env::init();
    let files: Vec<(&[u8], Vec<u8>)> = vec![
        // Larger than the 8 MiB maximum chunk, so it is several chunks whatever
        // the repository's random key makes of it.
        (b"big.bin", random_bytes(9 << 20, 1)),
        (b"small.txt", b"hello\n".to_vec()),
        (b"empty", Vec::new()),
        (b"caf\xe9 \xff.txt", random_bytes(70_000, 2)),
    ];
    for (name, data) in &files {
        std::fs::write(env.src.join(OsStr::from_bytes(name)), data).unwrap();
    }
    env.backup_json(&[]);
    let repo = open_repo(&env);
    assert!(snapshot_node(&repo, "latest", &env.src.join("big.bin")).content.len() > 1, "big.bin is several chunks");
    for (name, data) in &files {
        let got = dump_ok(&env, &src(&env).join(OsStr::from_bytes(name)));
        assert!(
            got == *data,
            "{:?}: {} bytes dumped, {} in the source",
            OsStr::from_bytes(name),
            got.len(),
            data.len()
        );
    }
    // Into a file, and from the library with the smallest budget (one chunk at a time).
    let out = env.path("big.out");
    env.coffer().args(["dump", "latest"]).arg(src(&env).join("big.bin")).arg("--target").arg(&out).assert().success();
    assert!(std::fs::read(&out).unwrap() == files[0].1);
    let (_, snap) = repo.find_snapshot("latest").unwrap();
    let what = dump::find(&repo, &snap.tree, &src(&env).join("big.bin")).unwrap();
    assert!(!what.is_archive());
    let mut got = Vec::new();
    let options = DumpOptions { concurrency: 1, max_bytes_in_flight: 1 };
    dump::write(&repo, &what, &mut got, &options).unwrap();
    assert!(got == files[0].1);
}

/// The entries of a folder for comparison: path, kind, permission bits,
/// mtime (seconds, nanoseconds) and content or link target.
type Entry = (PathBuf, &'static str, u32, (i64, i64), Vec<u8>);

fn entries(dir: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            let m = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(dir).unwrap().to_path_buf();
            let mode = m.permissions().mode() & 0o7777;
            let mtime = (m.mtime(), m.mtime_nsec());
            if m.is_dir() {
                out.push((rel, "dir", mode, mtime, Vec::new()));
                stack.push(path);
            } else if m.file_type().is_symlink() {
                // Symlink mode bits and times are not kept by every tool.
                out.push((
                    rel,
                    "symlink",
                    0,
                    (0, 0),
                    std::fs::read_link(&path).unwrap().as_os_str().as_bytes().to_vec(),
                ));
            } else {
                out.push((rel, "file", mode, mtime, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn set_mtime(path: &Path, sec: i64, nsec: u32) {
    filetime::set_symlink_file_times(path, FileTime::from_unix_time(sec, nsec), FileTime::from_unix_time(sec, nsec))
        .unwrap();
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A source with what a tar archive must carry.
fn awkward_source(env: &Env) {
    let long_dir = "d".repeat(120);
    let long_name = "n".repeat(200);
    env.write("a.bin", &random_bytes(3 << 20, 1));
    env.write("text.txt", b"some text\n");
    env.write("empty.txt", b"");
    env.write(&format!("{long_dir}/{long_name}"), b"a long path");
    std::fs::write(env.src.join(OsStr::from_bytes(b"caf\xe9-\xff.bin")), random_bytes(10_000, 3)).unwrap();
    std::fs::create_dir_all(env.src.join("sub/deeper")).unwrap();
    std::fs::create_dir(env.src.join("empty-dir")).unwrap();
    std::fs::hard_link(env.src.join("a.bin"), env.src.join("sub/a-link.bin")).unwrap();
    std::os::unix::fs::symlink("../a.bin", env.src.join("sub/rel-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/dangling", env.src.join("dangling")).unwrap();
    std::os::unix::fs::symlink("t/".repeat(150), env.src.join("long-target")).unwrap();
    env.write("sub/deeper/script.sh", b"#!/bin/sh\n");
    set_mode(&env.src.join("sub/deeper/script.sh"), 0o750);
    set_mode(&env.src.join("text.txt"), 0o4755);
    set_mode(&env.src.join("empty.txt"), 0o600);
    set_mode(&env.src.join("empty-dir"), 0o700);
    set_mtime(&env.src.join("text.txt"), 1_234_567_890, 123_456_789);
    set_mtime(&env.src.join("empty.txt"), -86_400 * 365, 500_000_000);
    set_mtime(&env.src.join("sub/deeper/script.sh"), 1_700_000_000, 0);
    // Folders last, deepest first, as their contents change their mtimes.
    for (dir, sec) in [("sub/deeper", 1_600_000_000), ("sub", 1_500_000_000), ("empty-dir", 1_400_000_000)] {
        set_mtime(&env.src.join(dir), sec, 42);
    }
    set_mtime(&env.src.join(&long_dir), 1_300_000_000, 7);
}

#[test]
fn dump_of_a_folder_extracts_to_the_source() {
    let env = Env::init();
    awkward_source(&env);
    env.backup_json(&[]);
    let archive = dump_ok(&env, &src(&env));
    let x = env.path("x");
    std::fs::create_dir(&x).unwrap();
    let status = std::process::Command::new("tar")
        .args(["-x", "-p", "-f", "-", "-C"])
        .arg(&x)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&archive)?;
            child.wait()
        })
        .expect("run tar");
    assert!(status.success(), "tar -x failed");
    let back = x.join(src(&env).strip_prefix("/").unwrap());
    let (want, got) = (entries(&env.src), entries(&back));
    for (w, g) in want.iter().zip(&got) {
        assert_eq!((&w.0, w.1, w.2, w.3), (&g.0, g.1, g.2, g.3), "{:?}", w.0);
        assert!(w.4 == g.4, "{:?}: content differs", w.0);
    }
    assert_eq!(want.len(), got.len());
    let (a, l) =
        (std::fs::metadata(back.join("a.bin")).unwrap(), std::fs::metadata(back.join("sub/a-link.bin")).unwrap());
    assert_eq!((a.ino(), a.nlink()), (l.ino(), 2), "the hard link was extracted as one");
    let top = std::fs::metadata(&back).unwrap();
    assert_eq!(top.mtime(), std::fs::metadata(&env.src).unwrap().mtime(), "the dumped folder itself is an entry");

    // What the archive says, read with the tar crate.
    let base = src(&env).strip_prefix("/").unwrap().to_path_buf();
    let mut ar = tar::Archive::new(archive.as_slice());
    let mut seen = Vec::new();
    for entry in ar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        let kind = entry.header().entry_type();
        let rel = path.strip_prefix(&base).unwrap().to_path_buf();
        if rel == Path::new("sub/a-link.bin") {
            assert_eq!(kind, tar::EntryType::Link);
            assert_eq!(entry.link_name().unwrap().unwrap(), base.join("a.bin"));
            assert_eq!(entry.header().size().unwrap(), 0, "a hard link carries no content");
        }
        if rel == Path::new("a.bin") {
            assert_eq!(kind, tar::EntryType::Regular);
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            assert!(data == random_bytes(3 << 20, 1));
        }
        if rel == Path::new("text.txt") {
            let h = entry.header();
            assert_eq!((h.uid().unwrap(), h.mode().unwrap()), (u64::from(nix::unistd::geteuid().as_raw()), 0o4755));
            let user = nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap().map(|u| u.name);
            assert_eq!(h.username().unwrap().map(str::to_string), user);
        }
        seen.push((rel, kind));
    }
    assert_eq!(seen[0], (PathBuf::new(), tar::EntryType::Directory), "the folder comes first");
    assert!(seen.contains(&(PathBuf::from("empty-dir"), tar::EntryType::Directory)));
    assert!(seen.contains(&(PathBuf::from(OsStr::from_bytes(b"caf\xe9-\xff.bin")), tar::EntryType::Regular)));
    assert!(seen.contains(&(PathBuf::from("long-target"), tar::EntryType::Symlink)));
}

#[test]
fn dump_of_the_root_is_the_whole_snapshot() {
    let env = Env::init();
    env.write("a.txt", b"a");
    env.write("d/b.txt", b"b");
    env.backup_json(&[]);
    let archive = dump_ok(&env, Path::new("/"));
    let mut ar = tar::Archive::new(archive.as_slice());
    let paths: Vec<PathBuf> = ar.entries().unwrap().map(|e| e.unwrap().path().unwrap().into_owned()).collect();
    let base = src(&env).strip_prefix("/").unwrap().to_path_buf();
    let first = base.components().next().unwrap().as_os_str();
    assert_eq!(paths[0], Path::new(first), "{paths:?}");
    assert!(paths.contains(&base.join("a.txt")) && paths.contains(&base.join("d/b.txt")), "{paths:?}");
}

#[test]
fn dump_errors_are_clear() {
    let env = Env::init();
    env.write("a.bin", &random_bytes(200_000, 1));
    env.write("dir/b.bin", &random_bytes(200_000, 2));
    std::os::unix::fs::symlink("a.bin", env.src.join("link")).unwrap();
    env.backup_json(&[]);

    let out = env.coffer().args(["dump", "latest"]).arg(src(&env).join("nope")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("nope is not in the snapshot"), "{}", stderr_of(&out));
    assert!(out.stdout.is_empty());
    let out = env.coffer().args(["dump", "latest"]).arg(src(&env).join("link")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("is a symlink to a.bin"), "{}", stderr_of(&out));

    // A damaged chunk: the file and the chunk are named, whether the file
    // is dumped alone or inside a folder's archive.
    let repo = open_repo(&env);
    let chunk = snapshot_node(&repo, "latest", &env.src.join("dir/b.bin")).content[0].0;
    let blob = stored_blob(&repo, ObjectKind::Chunk, &chunk);
    blob.flip(&env.repo, blob.length / 2);
    for path in [src(&env).join("dir/b.bin"), src(&env).join("dir"), src(&env)] {
        let out = env.coffer().args(["dump", "latest"]).arg(&path).output().unwrap();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{}: {err}", path.display());
        assert!(err.contains(&chunk.to_hex()) && err.contains("dir/b.bin"), "{}: {err}", path.display());
    }
    // A missing one, too: its pack is gone.
    let a_chunk = snapshot_node(&repo, "latest", &env.src.join("a.bin")).content[0].0;
    let a_in_same_pack = pack_mates(&repo, ObjectKind::Chunk, &chunk).contains(&a_chunk);
    std::fs::remove_file(blob.pack_file(&env.repo)).unwrap();
    let out = env.coffer().args(["dump", "latest"]).arg(src(&env).join("dir/b.bin")).output().unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&chunk.to_hex()) && err.contains("missing") && err.contains("dir/b.bin"), "{err}");
    // Everything whose data was in other packs still dumps.
    if a_in_same_pack {
        let out = env.coffer().args(["dump", "latest"]).arg(src(&env).join("a.bin")).output().unwrap();
        assert!(stderr_of(&out).contains(&a_chunk.to_hex()), "{}", stderr_of(&out));
    } else {
        assert!(dump_ok(&env, &src(&env).join("a.bin")) == random_bytes(200_000, 1));
    }
}
