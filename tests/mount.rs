//! `coffer mount`: a real FUSE mount of real repositories (a local folder and
//! the in-process S3 server), walked with `std::fs` and compared with the
//! backed-up source: the folder layout, every file's bytes and metadata,
//! reads at any offset, refused writes, damaged chunks, content in an
//! archive storage class, and the binary's clean unmount on SIGTERM and
//! `fusermount3 -u`.
//!
//! Mounting needs `/dev/fuse` and root (or `fusermount3`); CI has both.
//! Without `/dev/fuse` each test says so and does nothing. Mounts are
//! unmounted when a test ends, pass or fail.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_core::backend::Backend as _;
use coffer_core::crypto::ObjectKind;
use coffer_core::{Id, Repository};
use coffer_fuse::{Mount, MountOptions};

use crate::common::s3::{self, S3Server};
use crate::common::{Env, open_repo, random_bytes, snapshot_node, stored_blob, xorshift};

fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    eprintln!("SKIPPED: /dev/fuse is missing, so nothing can be mounted here");
    false
}

/// Mounts `repo` on a new folder below `env`'s scratch folder.
fn mount(env: &Env, repo: Repository, options: &MountOptions) -> Mount {
    let at = env.dir.path().join(format!("mnt-{}", Id::random().short()));
    std::fs::create_dir(&at).unwrap();
    coffer_fuse::spawn(Arc::new(repo), &at, options).expect("mount")
}

/// The snapshot's copy of `src` below a snapshot folder of the mount.
fn inside(snapshot_dir: &Path, src: &Path) -> PathBuf {
    let src = std::fs::canonicalize(src).unwrap();
    snapshot_dir.join(src.strip_prefix("/").unwrap())
}

/// A folder for `coffer mount` to mount on, by the binary, in the test's
/// scratch folder (canonical: `/proc/mounts` shows it so).
fn mount_point(env: &Env, name: &str) -> PathBuf {
    std::fs::canonicalize(env.dir.path()).unwrap().join(name)
}

/// Damages a chunk: flips a byte in the middle of its stored blob.
fn damage_chunk(env: &Env, chunk: &Id) {
    let blob = stored_blob(&open_repo(env), ObjectKind::Chunk, chunk);
    blob.flip(&env.repo, blob.length / 2);
}

/// Waits until the mount's chunk cache holds an amount for which `enough`
/// is true, filled by background fetches. Not a timing assertion: the
/// deadline only turns a hang into a failure naming `what` did not happen.
fn wait_for_cache(m: &Mount, enough: impl Fn(u64) -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !enough(m.cached_chunk_bytes()) {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One entry as `stat` shows it: kind, permission bits, owner, size, mtime
/// to the nanosecond, and content or link target.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    data: Vec<u8>,
}

/// Every entry below `dir` (and `dir` itself, as ""), read with `std::fs`.
fn state(dir: &Path) -> BTreeMap<PathBuf, Seen> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let (kind, data) = if meta.is_dir() {
            for e in std::fs::read_dir(&path).unwrap() {
                stack.push(e.unwrap().path());
            }
            ("dir", Vec::new())
        } else if meta.file_type().is_symlink() {
            ("symlink", std::fs::read_link(&path).unwrap().as_os_str().as_bytes().to_vec())
        } else {
            ("file", std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        };
        let seen = Seen {
            kind,
            mode: meta.permissions().mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: if kind == "dir" { 0 } else { meta.len() },
            mtime: (meta.mtime(), meta.mtime_nsec()),
            data,
        };
        out.insert(path.strip_prefix(dir).unwrap().to_path_buf(), seen);
    }
    out
}

/// Compares two states entry by entry, for a readable failure.
fn assert_same(got: &BTreeMap<PathBuf, Seen>, want: &BTreeMap<PathBuf, Seen>, what: &str) {
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{what}: the entries differ");
    for (path, w) in want {
        let g = &got[path];
        assert!(
            g == w,
            "{what}: {} differs: {:?} in the mount, {:?} in the source",
            path.display(),
            short(g),
            short(w)
        );
    }
}

fn short(s: &Seen) -> String {
    format!("{} {:o} {}:{} {} bytes mtime {:?}", s.kind, s.mode, s.uid, s.gid, s.size, s.mtime)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// The folder names the mount gives snapshots (oldest first in `snaps`):
/// the local time, with the short id when two share a second.
fn expected_names(snaps: &[(Id, coffer_core::snapshot::Snapshot)]) -> Vec<String> {
    let tz = jiff::tz::TimeZone::system();
    let times: Vec<String> = snaps
        .iter()
        .map(|(_, s)| s.timestamp().unwrap().to_zoned_datetime(tz.clone()).strftime("%Y-%m-%dT%H.%M.%S").to_string())
        .collect();
    snaps
        .iter()
        .zip(&times)
        .map(
            |((id, _), t)| {
                if times.iter().filter(|x| *x == t).count() > 1 { format!("{t}_{}", id.short()) } else { t.clone() }
            },
        )
        .collect()
}

fn errno(result: std::io::Result<impl std::fmt::Debug>) -> Option<i32> {
    match result {
        Ok(v) => panic!("succeeded: {v:?}"),
        Err(e) => e.raw_os_error(),
    }
}

#[test]
fn mount_shows_every_snapshot_as_backed_up() {
    if !fuse_available() {
        return;
    }
    let env = Env::init();
    // First snapshot: files of several kinds and modes.
    env.write("big.bin", &random_bytes(9 << 20, 1));
    env.write("empty", b"");
    env.write("album/a.jpg", &random_bytes(300_000, 2));
    env.write("album/notes.txt", b"a short text");
    std::fs::write(env.src.join(OsStr::from_bytes(b"caf\xe9 \xff.txt")), b"not UTF-8").unwrap();
    std::fs::set_permissions(env.src.join("album/notes.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    env.write("bin/run.sh", b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(env.src.join("bin/run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(env.src.join("empty-dir")).unwrap();
    std::os::unix::fs::symlink("album/a.jpg", env.src.join("link")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", env.src.join("dangling")).unwrap();
    std::fs::hard_link(env.src.join("album/a.jpg"), env.src.join("a-again.jpg")).unwrap();
    let mut states = vec![state(&env.src)];
    env.backup_json(&[]);
    // Second: a file changed, one removed, one added; tagged.
    env.write("album/notes.txt", b"a longer text than before");
    std::fs::remove_file(env.src.join("empty")).unwrap();
    env.write("album/b.jpg", &random_bytes(200_000, 3));
    states.push(state(&env.src));
    env.backup_json(&["--tag", "photos,2026"]);
    // Third: from another host.
    env.write("new.txt", b"third");
    states.push(state(&env.src));
    env.backup_json(&["--host", "other-host"]);

    let repo = open_repo(&env);
    let snaps = repo.snapshots().unwrap();
    assert_eq!(snaps.len(), 3);
    let names = expected_names(&snaps);
    let m = mount(&env, repo, &MountOptions::default());
    let root = m.mountpoint();

    assert_eq!(names_of(root), ["hosts", "ids", "snapshots", "tags"]);
    let mut want = names.clone();
    want.push("latest".into());
    want.sort();
    assert_eq!(names_of(&root.join("snapshots")), want);
    assert_eq!(std::fs::read_link(root.join("snapshots/latest")).unwrap(), Path::new(&names[2]));
    let mut ids: Vec<String> = snaps.iter().map(|(id, _)| id.short()).collect();
    ids.sort();
    assert_eq!(names_of(&root.join("ids")), ids);
    let host = snaps[0].1.host.clone();
    assert_eq!(names_of(&root.join("hosts")), {
        let mut h = vec![host.clone(), "other-host".to_string()];
        h.sort();
        h
    });
    let mut host_names = vec![names[0].clone(), names[1].clone(), "latest".into()];
    host_names.sort();
    assert_eq!(names_of(&root.join("hosts").join(&host)), host_names);
    assert_eq!(std::fs::read_link(root.join("hosts").join(&host).join("latest")).unwrap(), Path::new(&names[1]));
    assert_eq!(names_of(&root.join("hosts/other-host")), [names[2].clone(), "latest".into()]);
    assert_eq!(names_of(&root.join("tags")), ["2026", "photos"]);
    assert_eq!(names_of(&root.join("tags/photos")), [names[1].clone(), "latest".into()]);

    // Every snapshot, under each of its names, is the source as it was.
    for (i, ((id, snap), name)) in snaps.iter().zip(&names).enumerate() {
        let mut places = vec![root.join("snapshots").join(name), root.join("ids").join(id.short())];
        places.push(root.join("hosts").join(&snap.host).join(name));
        for tag in &snap.tags {
            places.push(root.join("tags").join(tag).join(name));
        }
        for place in places {
            let got = state(&inside(&place, &env.src));
            assert_same(&got, &states[i], &place.display().to_string());
        }
    }
    // `latest` leads to the newest snapshot.
    assert_same(&state(&inside(&root.join("snapshots/latest"), &env.src)), &states[2], "snapshots/latest");

    // Hard links are one inode; inode numbers do not change while mounted.
    let first = inside(&root.join("snapshots").join(&names[0]), &env.src);
    let a = std::fs::metadata(first.join("album/a.jpg")).unwrap();
    let again = std::fs::metadata(first.join("a-again.jpg")).unwrap();
    assert_eq!(a.ino(), again.ino());
    assert_eq!(a.nlink(), 2);
    let big = std::fs::metadata(first.join("big.bin")).unwrap().ino();
    assert_ne!(big, a.ino());
    assert_eq!(std::fs::metadata(first.join("big.bin")).unwrap().ino(), big);
    let listed = std::fs::read_dir(&first).unwrap().map(|e| e.unwrap()).find(|e| e.file_name() == "big.bin").unwrap();
    assert_eq!(listed.ino(), big, "readdir and stat agree");
    // The preferred I/O size that copies out of the mount use (see BLOCK_SIZE
    // in coffer-fuse): large enough for few requests, small enough that the
    // copy's writes stay cheap.
    assert_eq!(std::fs::metadata(first.join("big.bin")).unwrap().blksize(), 256 << 10);

    // A snapshot made while mounted appears on the next listing.
    env.write("fourth.txt", b"made while mounted");
    let fourth = state(&env.src);
    env.backup_json(&[]);
    let repo = open_repo(&env);
    let (new_id, _) = repo.find_snapshot("latest").unwrap();
    let at = root.join("ids").join(new_id.short());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !names_of(&root.join("ids")).contains(&new_id.short()) {
        assert!(Instant::now() < deadline, "the new snapshot never appeared in ids/");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_same(&state(&inside(&at, &env.src)), &fourth, "a snapshot made while mounted");
    m.unmount().unwrap();
}

fn names_of(dir: &Path) -> Vec<String> {
    names(dir)
}

#[test]
fn reads_at_any_offset_match_the_source() {
    if !fuse_available() {
        return;
    }
    let env = Env::init();
    let data = random_bytes(40 << 20, 7);
    env.write("big.bin", &data);
    env.backup_json(&[]);
    let node = snapshot_node(&open_repo(&env), "latest", &env.src.join("big.bin"));
    assert!(node.content.len() > 2, "several chunks");
    // Chunk boundaries, to read across them.
    let mut bounds = Vec::new();
    let mut at = 0u64;
    for c in &node.content {
        at += u64::from(c.1);
        bounds.push(at);
    }
    let len = data.len() as u64;
    let mut reads: Vec<(u64, usize)> = vec![(0, 10), (len - 100, 100), (len - 1, 1), (len - 10, 100), (len, 10)];
    for b in &bounds[..bounds.len() - 1] {
        reads.push((b - 5, 10));
        reads.push((b - 70_000, 200_000));
    }
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..200 {
        xorshift(&mut x);
        reads.push((x % len, (x >> 40) as usize % 300_000 + 1));
    }
    // A cache smaller than the file (the smallest allowed: twice the largest
    // chunk): reads evict and fetch again. Reads go straight to the reader's
    // buffer by default, and through the kernel's page cache with
    // `page_cache` (as on kernels before 6.6): both must give the source.
    let cache = 16 << 20;
    for page_cache in [false, true] {
        let m =
            mount(&env, open_repo(&env), &MountOptions { cache_bytes: cache, page_cache, ..MountOptions::default() });
        let path = inside(&m.mountpoint().join("snapshots/latest"), &env.src).join("big.bin");
        let mut f = std::fs::File::open(&path).unwrap();
        for &(offset, size) in &reads {
            let got = read_at(&mut f, offset, size);
            let end = (offset as usize + size).min(data.len());
            let want = &data[(offset as usize).min(data.len())..end];
            assert!(got == want, "{} bytes at {offset} (asked {size}) differ from the source", got.len());
            assert!(m.cached_chunk_bytes() <= cache, "the cache holds {} bytes", m.cached_chunk_bytes());
        }
        // The whole file sequentially, twice, and mapped into memory as
        // image viewers and `exec` read files.
        assert!(std::fs::read(&path).unwrap() == data, "page_cache {page_cache}");
        assert!(std::fs::read(&path).unwrap() == data, "page_cache {page_cache}");
        assert!(mapped(&path) == data, "page_cache {page_cache}: the mapped file differs from the source");
        assert!(m.cached_chunk_bytes() <= cache);
        drop(f);
        m.unmount().unwrap();
    }
}

/// Maps `path` read-only and shared (as a viewer or `exec` would), hands
/// the mapping's address and length to `with`, and unmaps it.
fn with_mapping<T>(path: &Path, with: impl FnOnce(*mut libc::c_void, usize) -> T) -> T {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    // SAFETY: a read-only shared mapping of a file open for reading, of its
    // length, unmapped before returning; the mount's files never change.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0) };
    assert!(p != libc::MAP_FAILED, "mmap {}: {}", path.display(), std::io::Error::last_os_error());
    let out = with(p, len);
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(p, len) };
    out
}

/// The bytes of `path` read through a memory mapping.
fn mapped(path: &Path) -> Vec<u8> {
    // SAFETY: `len` readable bytes are mapped at `p` while `with` runs.
    with_mapping(path, |p, len| unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }.to_vec())
}

#[test]
fn reading_the_start_of_a_file_fetches_the_next_chunks_ahead() {
    if !fuse_available() {
        return;
    }
    let env = Env::init();
    let data = random_bytes(12 << 20, 8);
    env.write("video.mov", &data);
    env.backup_json(&[]);
    let repo = open_repo(&env);
    let node = snapshot_node(&repo, "latest", &env.src.join("video.mov"));
    assert!(node.content.len() > 2, "several chunks");
    let first = u64::from(node.content[0].1);
    let m = mount(&env, repo, &MountOptions::default());
    let path = inside(&m.mountpoint().join("snapshots/latest"), &env.src).join("video.mov");
    let mut f = std::fs::File::open(&path).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact(&mut buf).unwrap();
    assert!(buf == data[..4096]);
    // Only the first chunk was asked for (after a read of one page the
    // kernel reads ahead a few pages, even with the 4 MiB read-ahead a mount
    // as root gets; a chunk is at least 512 KiB); the next ones come in the
    // background.
    wait_for_cache(&m, |held| held > first, "nothing past the first chunk was fetched ahead");
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).unwrap();
    assert!(rest == data[4096..]);
}

#[test]
fn every_kind_of_write_is_refused_with_erofs_and_attributes_read() {
    if !fuse_available() {
        return;
    }
    let env = Env::init();
    let src_file = env.write("dir/file.txt", b"content");
    xattr::set(&src_file, "user.xdg.tags", b"holiday").unwrap();
    xattr::set(&src_file, "user.binary", &[0, 255, 1]).unwrap();
    std::os::unix::fs::symlink("file.txt", env.src.join("dir/link")).unwrap();
    env.backup_json(&[]);
    let m = mount(&env, open_repo(&env), &MountOptions::default());
    let snap = m.mountpoint().join("snapshots/latest");
    let dir = inside(&snap, &env.src).join("dir");
    let file = dir.join("file.txt");
    // The recorded extended attributes are there to read.
    let mut listed: Vec<_> = xattr::list(&file).unwrap().collect();
    listed.sort();
    assert_eq!(listed, ["user.binary", "user.xdg.tags"]);
    assert_eq!(xattr::get(&file, "user.xdg.tags").unwrap().unwrap(), b"holiday");
    assert_eq!(xattr::get(&file, "user.binary").unwrap().unwrap(), [0, 255, 1]);
    assert_eq!(xattr::get(&file, "user.none").unwrap(), None);
    const EROFS: Option<i32> = Some(nix::libc::EROFS);
    use std::fs::OpenOptions;
    // In a snapshot's folder and in the folders above the snapshots.
    for folder in [dir.clone(), m.mountpoint().join("snapshots"), m.mountpoint().to_path_buf()] {
        assert_eq!(errno(std::fs::write(folder.join("new"), b"x")), EROFS, "create in {}", folder.display());
        assert_eq!(errno(std::fs::create_dir(folder.join("newdir"))), EROFS);
        assert_eq!(errno(std::os::unix::fs::symlink("x", folder.join("sym"))), EROFS);
        assert_eq!(
            errno(
                nix::unistd::mkfifo(&folder.join("fifo"), nix::sys::stat::Mode::S_IRWXU).map_err(std::io::Error::from)
            ),
            EROFS
        );
        assert_eq!(errno(std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o777))), EROFS);
    }
    assert_eq!(errno(OpenOptions::new().write(true).open(&file)), EROFS, "open for writing");
    assert_eq!(errno(OpenOptions::new().append(true).open(&file)), EROFS, "open for appending");
    assert_eq!(errno(OpenOptions::new().read(true).write(true).open(&file)), EROFS);
    assert_eq!(errno(OpenOptions::new().write(true).truncate(true).open(&file)), EROFS);
    assert_eq!(errno(std::fs::remove_file(&file)), EROFS, "unlink");
    assert_eq!(errno(std::fs::remove_file(dir.join("link"))), EROFS);
    assert_eq!(errno(std::fs::remove_dir(&dir)), EROFS, "rmdir");
    assert_eq!(errno(std::fs::remove_dir(m.mountpoint().join("tags"))), EROFS);
    assert_eq!(errno(std::fs::rename(&file, dir.join("moved"))), EROFS, "rename");
    assert_eq!(errno(std::fs::rename(m.mountpoint().join("ids"), m.mountpoint().join("x"))), EROFS);
    assert_eq!(errno(std::fs::hard_link(&file, dir.join("hard"))), EROFS, "link");
    assert_eq!(errno(std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))), EROFS, "chmod");
    assert_eq!(errno(std::os::unix::fs::chown(&file, Some(1), Some(1))), EROFS, "chown");
    assert_eq!(errno(nix::unistd::truncate(&file, 0).map_err(std::io::Error::from)), EROFS, "truncate");
    let t = filetime::FileTime::from_unix_time(1, 0);
    assert_eq!(errno(filetime::set_file_times(&file, t, t)), EROFS, "utimes");
    assert_eq!(errno(xattr::set(&file, "user.x", b"1")), EROFS, "setxattr");
    assert_eq!(errno(xattr::remove(&file, "user.xdg.tags")), EROFS, "removexattr");
    // Nothing changed, and the file still reads.
    assert_eq!(std::fs::read(&file).unwrap(), b"content");
    assert_eq!(names(&dir), ["file.txt", "link"]);
}

#[test]
fn a_damaged_chunk_fails_its_file_with_eio_and_nothing_else() {
    if !fuse_available() {
        return;
    }
    let env = Env::init();
    let damaged = random_bytes(12 << 20, 11);
    let fine = random_bytes(3 << 20, 12);
    env.write("damaged.bin", &damaged);
    env.write("fine.bin", &fine);
    env.write("small.txt", b"small");
    env.backup_json(&[]);
    let repo = open_repo(&env);
    let node = snapshot_node(&repo, "latest", &env.src.join("damaged.bin"));
    assert!(node.content.len() > 1);
    // Flip a byte in the middle of the file's second chunk's stored object.
    let (bad_chunk, bad_len) = (node.content[1].0, node.content[1].1);
    let bad_start = u64::from(node.content[0].1);
    damage_chunk(&env, &bad_chunk);

    let m = mount(&env, repo, &MountOptions::default());
    let dir = inside(&m.mountpoint().join("snapshots/latest"), &env.src);
    let err = std::fs::read(dir.join("damaged.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EIO), "{err}");
    // The bytes before the damaged chunk read, the damaged ones never do.
    let mut f = std::fs::File::open(dir.join("damaged.bin")).unwrap();
    let mut head = vec![0u8; 1000];
    f.read_exact(&mut head).unwrap();
    assert!(head == damaged[..1000]);
    f.seek(SeekFrom::Start(bad_start + u64::from(bad_len) / 2)).unwrap();
    let mut buf = [0u8; 100];
    assert_eq!(f.read(&mut buf).unwrap_err().raw_os_error(), Some(nix::libc::EIO));
    // Other files read fine, and so does the mount.
    assert!(std::fs::read(dir.join("fine.bin")).unwrap() == fine);
    assert_eq!(std::fs::read(dir.join("small.txt")).unwrap(), b"small");
    assert_eq!(std::fs::metadata(dir.join("damaged.bin")).unwrap().len(), damaged.len() as u64);
    drop(f);
    m.unmount().unwrap();

    // The binary logs the file and the chunk.
    let at = mount_point(&env, "bin-mnt");
    let running = Running::start(&env, &at);
    let dir = inside(&at.join("snapshots/latest"), &env.src);
    assert_eq!(std::fs::read(dir.join("damaged.bin")).unwrap_err().raw_os_error(), Some(nix::libc::EIO));
    assert!(std::fs::read(dir.join("fine.bin")).unwrap() == fine);
    let (status, stderr) = running.stop();
    assert!(status.success(), "{status:?}: {stderr}");
    // (A warning that the chunk is read a second time comes first.)
    let line = stderr
        .lines()
        .find(|l| l.contains(&bad_chunk.to_hex()) && l.contains("ERROR"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("damaged.bin"), "{line}");
    assert!(!stderr.contains("fine.bin"), "{stderr}");
}

#[test]
fn mount_over_s3() {
    if !fuse_available() {
        return;
    }
    let server = S3Server::start();
    let url = server.url("bucket/m");
    let env = Env::new();
    let big = random_bytes(10 << 20, 21);
    env.write("photos/big.jpg", &big);
    env.write("photos/small.txt", b"over S3");
    let notes: Vec<Vec<u8>> = (0..100).map(|i| random_bytes(2000 + i * 3, 100 + i as u64)).collect();
    for (i, note) in notes.iter().enumerate() {
        env.write(&format!("notes/{i:03}.xmp"), note);
    }
    s3::coffer(&env, &url).args(["init", "--argon2-memory", "64", "--argon2-iterations", "1"]).assert().success();
    let before = state(&env.src);
    let out = s3::coffer(&env, &url).arg("backup").arg(&env.src).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let backend = Arc::new(s3::library_backend(&server, "m"));
    let repo = Repository::open(backend.clone(), crate::common::PASSWORD.as_bytes()).unwrap();
    let snaps = repo.snapshots().unwrap();
    let names = expected_names(&snaps);
    let m = mount(&env, repo, &MountOptions::default());
    assert_eq!(names_of(&m.mountpoint().join("snapshots")), [names[0].clone(), "latest".into()]);
    let dir = inside(&m.mountpoint().join("snapshots").join(&names[0]), &env.src);

    // Read in name order, as a photo viewer or `cp -r` does, the small
    // files come with their neighbours in the pack: the prefetch window (16
    // chunks) is refilled half at a time, a ranged read per pack (the notes
    // went to 2 open packs), about 30 GETs with the trees. One GET per
    // prefetched chunk made 88.
    let wire = backend.wire_stats();
    for (i, note) in notes.iter().enumerate() {
        assert!(std::fs::read(dir.join(format!("notes/{i:03}.xmp"))).unwrap() == *note, "note {i}");
    }
    let cost = backend.wire_stats().since(&wire);
    eprintln!("reading 100 small files over S3: {} GETs", cost.gets);
    assert!(cost.gets <= 40, "{} GETs to read 100 small files: {cost:?}", cost.gets);

    assert_same(&state(&dir), &before, "over S3");
    let mut f = std::fs::File::open(dir.join("photos/big.jpg")).unwrap();
    f.seek(SeekFrom::Start(9_000_000)).unwrap();
    let mut buf = vec![0u8; 1_400_000];
    f.read_exact(&mut buf).unwrap();
    assert!(buf == big[9_000_000..10_400_000]);
}

/// Reads `path` whole on a thread of its own: how long the read took and
/// what it gave, or a failure naming `what` if it has not ended within
/// `limit` (a read that hangs fails the test instead of blocking it; the
/// thread is left behind, and ends when the mount goes).
fn read_within(path: &Path, limit: Duration, what: &str) -> (Duration, std::io::Result<Vec<u8>>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = path.to_path_buf();
    let start = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read(&path));
    });
    match rx.recv_timeout(limit) {
        Ok(result) => (start.elapsed(), result),
        Err(_) => panic!("{what}: the read had not ended after {limit:?}"),
    }
}

#[test]
fn archived_content_fails_its_reads_with_eio_until_restored() {
    use std::sync::atomic::Ordering;
    if !fuse_available() {
        return;
    }
    // A repository whose data packs are in DEEP_ARCHIVE, on a store that
    // refuses GETs of archived objects until a restore completes.
    let (server, cold) = S3Server::start_cold();
    let url = server.url("bucket/cold");
    let env = Env::new();
    let photo = random_bytes(300 << 10, 51);
    let raw = random_bytes(3 << 20, 52);
    // a.jpg is one chunk (under the smallest chunk size) and the last file
    // of its folder, so a read of it asks for that chunk and nothing more:
    // the mount prefetches the chunks after a file's, then the next files'.
    env.write("photos/2024/a.jpg", &photo);
    env.write("photos/raw/b.raw", &raw);
    env.write("notes/todo.txt", b"buy milk");
    let init = ["init", "--argon2-memory", "64", "--argon2-iterations", "1", "--s3-storage-class", "DEEP_ARCHIVE"];
    s3::coffer(&env, &url).args(init).assert().success();
    let out = s3::coffer(&env, &url).arg("backup").arg(&env.src).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let archived = cold.archived_keys();
    assert!(!archived.is_empty(), "no data pack is archived");
    assert!(archived.iter().all(|k| k.starts_with("bucket/cold/data/")), "{archived:?}");
    let repo = Repository::open(Arc::new(s3::library_backend(&server, "cold")), crate::common::PASSWORD.as_bytes());
    let node = snapshot_node(&repo.unwrap(), "latest", &env.src.join("photos/2024/a.jpg"));
    assert_eq!(node.content.len(), 1, "a.jpg is one chunk");
    let chunk = node.content[0].0.to_hex();
    let refused = || cold.refused_gets.load(Ordering::Relaxed);
    assert_eq!(refused(), 0, "the backup read no archived pack");

    // Folders list and files stat: trees are hot.
    let at = mount_point(&env, "cold-mnt");
    let running = Running::spawn(s3::coffer_process(&env, &url), &at, &[]);
    let dir = inside(&at.join("snapshots/latest"), &env.src);
    assert_eq!(names(&dir), ["notes", "photos"]);
    assert_eq!(names(&dir.join("photos")), ["2024", "raw"]);
    assert_eq!(names(&dir.join("photos/2024")), ["a.jpg"]);
    assert_eq!(names(&dir.join("photos/raw")), ["b.raw"]);
    assert_eq!(names(&dir.join("notes")), ["todo.txt"]);
    for (name, len) in [("photos/2024/a.jpg", photo.len()), ("photos/raw/b.raw", raw.len()), ("notes/todo.txt", 8)] {
        let meta = std::fs::metadata(dir.join(name)).unwrap();
        assert!(meta.is_file(), "{name}");
        assert_eq!(meta.len(), len as u64, "{name}");
    }
    assert_eq!(refused(), 0, "listing and stat asked for no archived pack");

    // Its content cannot be read: EIO at once, not a hang or retries. The
    // chunk is asked for by the prefetch that opening the file starts, and
    // again by the read if that prefetch failed before the read came (a
    // failure is not kept); through the page cache (before Linux 6.6) the
    // kernel reads once more after its failed read-ahead.
    let (took, read) = read_within(&dir.join("photos/2024/a.jpg"), Duration::from_secs(60), "an archived file");
    let err = read.expect_err("an archived file read");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    eprintln!("a read of archived content failed after {took:?}, {} GETs refused", refused());
    assert!(took < Duration::from_secs(10), "EIO came after {took:?}");
    let most = if kernel_maps_direct_io_files() { 2 } else { 3 };
    assert!((1..=most).contains(&refused()), "{} GETs were refused, not 1 to {most}", refused());

    // A warm-up asks for the packs (while mounted: it takes no lock) and
    // the store restores them: the same mount reads the file now, as a
    // failed read is not remembered.
    cold.set_delay(Duration::from_secs(3600));
    let target = env.path("restored");
    let out = s3::coffer(&env, &url)
        .args(["restore", "latest", "--warm-up", "--no-wait", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(cold.restores.load(Ordering::Relaxed), archived.len(), "one request per archived pack");
    cold.complete_restores();
    let failed = refused();
    let (_, read) = read_within(&dir.join("photos/2024/a.jpg"), Duration::from_secs(60), "a restored file");
    assert!(read.unwrap() == photo, "a.jpg differs from the source");
    let (status, stderr) = running.stop();
    assert!(status.success(), "{status:?}: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one read failed: {stderr}");
    assert!(errors[0].contains(&chunk), "the error names chunk {chunk}: {stderr}");
    assert!(errors[0].contains("photos/2024/a.jpg") && errors[0].contains("archived"), "{}", errors[0]);

    // A fresh mount reads every file, with no GET refused.
    let running = Running::spawn(s3::coffer_process(&env, &url), &at, &[]);
    let files = [("photos/2024/a.jpg", &photo[..]), ("photos/raw/b.raw", &raw), ("notes/todo.txt", b"buy milk")];
    for (name, want) in files {
        let (_, read) = read_within(&dir.join(name), Duration::from_secs(60), name);
        assert!(read.unwrap() == want, "{name} differs from the source");
    }
    assert_eq!(refused(), failed, "no GET was refused once the packs were restored");
    let (status, stderr) = running.stop();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(!stderr.contains("ERROR"), "{stderr}");
}

/// Runs `cat FILE` as the user `nobody`: its output, or its error message.
fn cat_as_nobody(file: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new("cat").arg(file).uid(65534).gid(65534).output().unwrap();
    if out.status.success() { Ok(out.stdout) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

#[test]
fn allow_other_lets_other_users_in_with_the_recorded_permissions() {
    if !fuse_available() {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: switching to another user needs root");
        return;
    }
    let env = Env::init();
    // Folders others can enter, as recorded in the snapshot too.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    env.write("public.txt", b"for everyone");
    env.write("private.txt", b"for root only");
    std::fs::set_permissions(env.src.join("private.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    env.backup_json(&[]);

    let m = mount(&env, open_repo(&env), &MountOptions { allow_other: true, ..MountOptions::default() });
    std::fs::set_permissions(m.mountpoint(), std::fs::Permissions::from_mode(0o755)).ok();
    let dir = inside(&m.mountpoint().join("snapshots/latest"), &env.src);
    assert_eq!(cat_as_nobody(&dir.join("public.txt")).unwrap(), b"for everyone");
    let err = cat_as_nobody(&dir.join("private.txt")).unwrap_err();
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(std::fs::read(dir.join("private.txt")).unwrap(), b"for root only");
    m.unmount().unwrap();

    // Without --allow-other, nobody else gets in at all.
    let m = mount(&env, open_repo(&env), &MountOptions::default());
    let dir = inside(&m.mountpoint().join("snapshots/latest"), &env.src);
    let err = cat_as_nobody(&dir.join("public.txt")).unwrap_err();
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(std::fs::read(dir.join("public.txt")).unwrap(), b"for everyone");
}

/// Is `path` a mount point now?
fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.as_os_str().as_bytes();
    mounts.lines().any(|l| l.split(' ').nth(4).is_some_and(|p| p.as_bytes() == path))
}

/// A `coffer mount` process, killed and unmounted if a test fails.
struct Running {
    child: std::process::Child,
    at: PathBuf,
}

impl Running {
    fn start(env: &Env, at: &Path) -> Running {
        Running::start_with(env, at, &[])
    }

    /// `coffer mount` with these options after the mount point.
    fn start_with(env: &Env, at: &Path, options: &[&str]) -> Running {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("coffer"));
        cmd.env("COFFER_REPOSITORY", &env.repo).env("COFFER_PASSWORD", crate::common::PASSWORD);
        cmd.env_remove("COFFER_PASSWORD_FILE").env_remove("COFFER_PASSWORD_COMMAND");
        Running::spawn(cmd, at, options)
    }

    /// `cmd` (the binary, pointed at a repository) made to `mount` on `at`
    /// with these options.
    fn spawn(mut cmd: std::process::Command, at: &Path, options: &[&str]) -> Running {
        std::fs::create_dir_all(at).unwrap();
        let child = cmd.arg("mount").arg(at).args(options).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let running = Running { child, at: at.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !is_mounted(at) {
            assert!(Instant::now() < deadline, "coffer mount did not mount");
            std::thread::sleep(Duration::from_millis(50));
        }
        running
    }

    fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    /// SIGTERM, then the exit status and what it printed on stderr.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = self.child.wait().unwrap();
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut stderr).unwrap();
        }
        (status, stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if is_mounted(&self.at) {
            let _ = nix::mount::umount2(&self.at, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[test]
fn coffer_mount_ends_cleanly_on_sigterm_and_on_fusermount() {
    if !fuse_available() {
        return;
    }
    let env = Env::init();
    env.write("a.txt", b"through the binary");
    env.backup_json(&[]);
    let at = mount_point(&env, "mnt");

    let running = Running::start(&env, &at);
    let file = inside(&at.join("snapshots/latest"), &env.src).join("a.txt");
    assert_eq!(std::fs::read(&file).unwrap(), b"through the binary");
    let (status, stderr) = running.stop();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(!is_mounted(&at), "still mounted after SIGTERM");

    let running = Running::start(&env, &at);
    assert_eq!(std::fs::read(&file).unwrap(), b"through the binary");
    let tool =
        if std::process::Command::new("fusermount3").arg("-V").output().is_ok() { "fusermount3" } else { "umount" };
    let out =
        std::process::Command::new(tool).arg(if tool == "umount" { "-v" } else { "-u" }).arg(&at).output().unwrap();
    assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
    let status = running.wait();
    assert!(status.success(), "{status:?}");
    assert!(!is_mounted(&at));

    // A file still open in it: the mount is detached, and coffer still ends.
    let running = Running::start(&env, &at);
    let open = std::fs::File::open(&file).unwrap();
    let (status, stderr) = running.stop();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.contains("in use: detaching it"), "{stderr}");
    assert!(!is_mounted(&at), "still mounted with a file open");
    drop(open);
}

/// How many of `path`'s pages are in the kernel's page cache: a mapping
/// that nothing touches faults nothing in, and `mincore` reports residency.
fn pages_in_page_cache(path: &Path) -> (usize, usize) {
    let resident = with_mapping(path, |p, len| {
        let mut resident = vec![0u8; len.div_ceil(4096)];
        // SAFETY: `mincore` fills one byte per page of the mapping at `p`.
        let rc = unsafe { libc::mincore(p, len, resident.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        resident
    });
    (resident.iter().filter(|&&r| r & 1 == 1).count(), resident.len())
}

/// Whether this kernel lets FUSE files opened for direct I/O be mapped
/// (Linux 6.6 and later), which is when `coffer mount` uses direct I/O.
fn kernel_maps_direct_io_files() -> bool {
    let release = nix::sys::utsname::uname().unwrap().release().to_string_lossy().into_owned();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (6, 6)
}

#[test]
fn reads_bypass_the_page_cache_unless_asked_to_use_it() {
    if !fuse_available() {
        return;
    }
    let env = Env::init();
    let data = random_bytes(3 << 20, 17);
    env.write("photo.jpg", &data);
    env.backup_json(&[]);
    for page_cache in [false, true] {
        let at = mount_point(&env, if page_cache { "mnt-cached" } else { "mnt-direct" });
        let running = Running::start_with(&env, &at, if page_cache { &["--page-cache"] } else { &[] });
        let file = inside(&at.join("snapshots/latest"), &env.src).join("photo.jpg");
        assert!(std::fs::read(&file).unwrap() == data);
        let (cached, pages) = pages_in_page_cache(&file);
        if page_cache || !kernel_maps_direct_io_files() {
            assert_eq!(cached, pages, "--page-cache {page_cache}: a file read through the page cache stays in it");
        } else {
            assert_eq!(cached, 0, "read with direct I/O, yet {cached} of {pages} pages are in the page cache");
        }
        // Mapped, the file reads the same either way.
        assert!(mapped(&file) == data, "--page-cache {page_cache}");
        let (status, stderr) = running.stop();
        assert!(status.success(), "{status:?}: {stderr}");
    }
}

#[test]
fn the_mount_point_must_be_an_existing_folder() {
    let env = Env::init();
    env.write("file", b"x");
    for (at, why) in [(env.path("missing"), "No such file or directory"), (env.src.join("file"), "not a folder")] {
        // No password anywhere: the mount point is checked before asking for one.
        let out = env.coffer().env_remove("COFFER_PASSWORD").arg("mount").arg(&at).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(why) && err.contains("must be an existing folder"), "{err}");
    }
}

/// Reads `len` bytes at `offset` of `f`, fewer at the end of the file.
fn read_at(f: &mut std::fs::File, offset: u64, len: usize) -> Vec<u8> {
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = f.read(&mut buf[got..]).unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    buf
}

#[test]
fn random_reads_while_prefetch_runs_match_and_the_cache_stays_bounded() {
    if !fuse_available() {
        return;
    }
    let env = Env::init();
    // Both files larger than the cache.
    let big = random_bytes(40 << 20, 21);
    let other = random_bytes(24 << 20, 22);
    env.write("big.bin", &big);
    env.write("other.bin", &other);
    env.backup_json(&[]);
    let cache = 16 << 20;
    let m = mount(&env, open_repo(&env), &MountOptions { cache_bytes: cache, ..MountOptions::default() });
    let dir = inside(&m.mountpoint().join("snapshots/latest"), &env.src);
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut largest = 0;
    let dir = &dir;
    std::thread::scope(|s| {
        // Sequential readers, each with the next chunks being prefetched…
        let sequential = [("big.bin", &big), ("other.bin", &other)]
            .map(|(name, want)| s.spawn(move || assert!(std::fs::read(dir.join(name)).unwrap() == *want, "{name}")));
        // …while others read the same files at random offsets.
        let random: Vec<_> = (0..3u64)
            .map(|t| {
                let (big, other) = (&big, &other);
                s.spawn(move || {
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t + 1);
                    for i in 0..60 {
                        xorshift(&mut x);
                        let (name, want) = if i % 2 == 0 { ("big.bin", big) } else { ("other.bin", other) };
                        let mut f = std::fs::File::open(dir.join(name)).unwrap();
                        let offset = x % want.len() as u64;
                        let len = (x >> 40) as usize % 3_000_000 + 1;
                        let got = read_at(&mut f, offset, len);
                        let end = (offset as usize + len).min(want.len());
                        assert!(got == want[offset as usize..end], "{len} bytes at {offset} of {name}");
                    }
                })
            })
            .collect();
        // The cache never holds more than its size, at any moment.
        let watcher = s.spawn(|| {
            let mut largest = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                largest = largest.max(m.cached_chunk_bytes());
                std::thread::sleep(Duration::from_millis(1));
            }
            largest
        });
        for t in sequential.into_iter().chain(random) {
            t.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        largest = watcher.join().unwrap();
    });
    assert!(largest > 0 && largest <= cache, "the cache held up to {largest} bytes, its size is {cache}");
    m.unmount().unwrap();
}

#[test]
fn a_reader_at_the_end_of_a_file_has_the_next_file_of_its_folder_fetched() {
    if !fuse_available() {
        return;
    }
    let env = Env::init();
    let a = random_bytes(3 << 20, 31);
    env.write("album/a.jpg", &a);
    env.write("album/b.jpg", &random_bytes(4 << 20, 32));
    env.backup_json(&[]);
    let m = mount(&env, open_repo(&env), &MountOptions::default());
    let dir = inside(&m.mountpoint().join("snapshots/latest"), &env.src).join("album");
    assert!(std::fs::read(dir.join("a.jpg")).unwrap() == a);
    // b.jpg was not opened, yet its chunks come into the cache.
    wait_for_cache(&m, |held| held > a.len() as u64, "nothing of the next file was fetched ahead");
    m.unmount().unwrap();
}

#[test]
fn a_damaged_chunk_met_by_prefetch_still_fails_its_read_with_eio() {
    if !fuse_available() {
        return;
    }
    let env = Env::init();
    let a = random_bytes(3 << 20, 41);
    let b = random_bytes(6 << 20, 42);
    let c = random_bytes(2 << 20, 43);
    env.write("a.bin", &a);
    env.write("b.bin", &b);
    env.write("c.bin", &c);
    env.backup_json(&[]);
    let repo = open_repo(&env);
    let node = snapshot_node(&repo, "latest", &env.src.join("b.bin"));
    assert!(node.content.len() > 1);
    // Damage b.bin's first chunk: the prefetch that follows a sequential
    // read of a.bin meets it before any read of b.bin does.
    let (bad, bad_len) = (node.content[0].0, node.content[0].1);
    damage_chunk(&env, &bad);

    let m = mount(&env, open_repo(&env), &MountOptions::default());
    let dir = inside(&m.mountpoint().join("snapshots/latest"), &env.src);
    assert!(std::fs::read(dir.join("a.bin")).unwrap() == a);
    // The prefetch went past the damaged chunk: everything else of the
    // folder comes into the cache, and the damaged chunk does not. The
    // cache counts the memory each chunk holds: a raw chunk (all of these)
    // stays in the buffer its stored object was read into.
    let mut want = 0;
    for name in ["a.bin", "b.bin", "c.bin"] {
        for chunk in snapshot_node(&repo, "latest", &env.src.join(name)).content.iter().filter(|c| c.0 != bad) {
            want += stored_blob(&repo, ObjectKind::Chunk, &chunk.0).length;
        }
    }
    wait_for_cache(&m, |held| held >= want, "the files after a.bin were not fetched ahead");
    assert_eq!(m.cached_chunk_bytes(), want);
    let err = std::fs::read(dir.join("b.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EIO), "{err}");
    // And again: a failed fetch is not remembered as good data.
    let mut f = std::fs::File::open(dir.join("b.bin")).unwrap();
    let mut buf = [0u8; 100];
    assert_eq!(f.read(&mut buf).unwrap_err().raw_os_error(), Some(nix::libc::EIO));
    // The rest of b.bin (from the first page the damaged chunk does not
    // touch: the kernel reads whole pages), and the other files, read.
    let after = (bad_len as usize).next_multiple_of(4096);
    assert!(read_at(&mut f, after as u64, 1 << 20) == b[after..after + (1 << 20)]);
    assert!(std::fs::read(dir.join("c.bin")).unwrap() == c);
    assert!(std::fs::read(dir.join("a.bin")).unwrap() == a);
    drop(f);
    m.unmount().unwrap();

    // Through the binary, the read that fails logs the file and the chunk.
    let at = mount_point(&env, "bin-mnt");
    let running = Running::start(&env, &at);
    let dir = inside(&at.join("snapshots/latest"), &env.src);
    assert!(std::fs::read(dir.join("a.bin")).unwrap() == a);
    assert_eq!(std::fs::read(dir.join("b.bin")).unwrap_err().raw_os_error(), Some(nix::libc::EIO));
    assert!(std::fs::read(dir.join("c.bin")).unwrap() == c);
    let (status, stderr) = running.stop();
    assert!(status.success(), "{status:?}: {stderr}");
    let line =
        stderr.lines().find(|l| l.contains(&bad.to_hex()) && l.contains("ERROR")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("b.bin"), "{line}");
}

#[test]
fn the_mount_holds_a_shared_lock_that_blocks_prune_until_unmounted() {
    if !fuse_available() {
        return;
    }
    let env = Env::init();
    env.write("a.txt", b"locked while mounted");
    env.backup_json(&[]);
    let at = mount_point(&env, "mnt");
    let running = Running::start(&env, &at);
    let (locks, unreadable) = open_repo(&env).locks().unwrap();
    assert!(unreadable.is_empty(), "{unreadable:?}");
    assert_eq!(locks.len(), 1, "{locks:?}");
    assert_eq!((locks[0].operation.as_str(), locks[0].exclusive), (coffer_fuse::LOCK_OPERATION, false));
    // A backup (shared) goes on; prune's delete phase (exclusive) may not.
    env.write("b.txt", b"made while mounted");
    env.backup_json(&[]);
    let out = env.coffer().arg("prune").output().unwrap();
    assert_eq!(out.status.code(), Some(11), "{}", String::from_utf8_lossy(&out.stderr));
    let file = inside(&at.join("snapshots/latest"), &env.src).join("a.txt");
    assert_eq!(std::fs::read(&file).unwrap(), b"locked while mounted");
    let (status, stderr) = running.stop();
    assert!(status.success(), "{status:?}: {stderr}");
    // Unmounted: the lock is gone and prune runs.
    let (locks, _) = open_repo(&env).locks().unwrap();
    assert!(locks.is_empty(), "{locks:?}");
    let out = env.coffer().arg("prune").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_mount_with_no_lock_writes_no_lock_and_does_not_block_prune() {
    if !fuse_available() {
        return;
    }
    let env = Env::init();
    env.write("kept.txt", b"in every snapshot");
    env.write("gone.bin", &random_bytes(3 << 20, 7));
    env.backup_json(&[]);
    std::fs::remove_file(env.src.join("gone.bin")).unwrap();
    env.backup_json(&[]);
    let at = mount_point(&env, "mnt");
    let running = Running::start_with(&env, &at, &["--no-lock"]);
    let locks_dir = env.repo.join("locks");
    let lock_files = || std::fs::read_dir(&locks_dir).map(|d| d.count()).unwrap_or(0);
    assert_eq!(lock_files(), 0, "a lock object was written");
    let (locks, unreadable) = open_repo(&env).locks().unwrap();
    assert!(locks.is_empty() && unreadable.is_empty(), "{locks:?} {unreadable:?}");
    let file = inside(&at.join("snapshots/latest"), &env.src).join("kept.txt");
    assert_eq!(std::fs::read(&file).unwrap(), b"in every snapshot");
    // Prune is not held back: it deletes the first snapshot's own chunks
    // while the folder is mounted.
    let chunks_before = open_repo(&env).list_ids(ObjectKind::Chunk).unwrap().len();
    let out = env.coffer().args(["forget", "--keep-last", "1", "--prune"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let chunks_after = open_repo(&env).list_ids(ObjectKind::Chunk).unwrap().len();
    assert!(chunks_after < chunks_before, "prune deleted nothing: {chunks_before} -> {chunks_after}");
    assert_eq!(lock_files(), 0, "a lock object was left");
    assert_eq!(std::fs::read(&file).unwrap(), b"in every snapshot");
    let (status, stderr) = running.stop();
    assert!(status.success(), "{status:?}: {stderr}");
}
