//! Backup of awkward file-system content (hard links, sparse files, extended
//! attributes, special files), change detection for awkward sources, and
//! the exclude family, and backups of a stream (`--stdin`,
//! `--stdin-from-command`).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::Value;

use crate::common::{Env, open_repo, random_bytes, snapshot_node, snapshots_json, stderr_of};

fn n(report: &Value, field: &str) -> u64 {
    report[field].as_u64().unwrap_or_else(|| panic!("{field} missing from {report}"))
}

fn listed(env: &Env) -> Vec<String> {
    let out = env.coffer().args(["ls", "latest"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

fn has(listing: &[String], path: &Path) -> bool {
    listing.iter().any(|l| Path::new(l) == path)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn hard_links_are_recorded_and_read_once() {
    let env = Env::init();
    let a = env.write("a.bin", &random_bytes(3 << 20, 1));
    std::fs::hard_link(&a, env.src.join("b.bin")).unwrap();
    let report = env.backup_json(&[]);
    assert_eq!(n(&report, "bytes_read"), 3 << 20, "the second name of the file is not read again");
    let repo = open_repo(&env);
    let na = snapshot_node(&repo, "latest", &env.src.join("a.bin"));
    let nb = snapshot_node(&repo, "latest", &env.src.join("b.bin"));
    assert_eq!((na.inode, na.device, na.links), (nb.inode, nb.device, 2));
    assert_eq!(na.content, nb.content);
}

#[test]
fn sparse_file_backs_up_as_its_data() {
    let env = Env::init();
    let path = env.src.join("disk.img");
    let f = std::fs::File::create(&path).unwrap();
    let size: u64 = 2 << 30;
    f.set_len(size).unwrap();
    let tail = random_bytes(1 << 20, 9);
    std::os::unix::fs::FileExt::write_all_at(&f, &tail, size - tail.len() as u64).unwrap();
    drop(f);
    let report = env.backup_json(&[]);
    assert_eq!(n(&report, "bytes_read"), size);
    // 2 GiB of zeros become a handful of identical chunks, stored once.
    assert!(n(&report, "bytes_added") < 16 << 20, "{report}");
    assert!(n(&report, "chunks_added") < 10, "{report}");
    let node = snapshot_node(&open_repo(&env), "latest", &path);
    assert_eq!(node.size, size);
    assert_eq!(node.content.iter().map(|c| u64::from(c.1)).sum::<u64>(), size);
}

#[test]
fn extended_attributes_round_trip() {
    let env = Env::init();
    let f = env.write("photo.jpg", b"jpeg");
    xattr_set(&f, "user.xdg.tags", b"holiday,2024");
    xattr_set(&f, "user.binary", &[0, 255, 1]);
    env.backup_json(&[]);
    let node = snapshot_node(&open_repo(&env), "latest", &f);
    let names: Vec<&[u8]> = node.xattrs.iter().map(|x| x.name.as_slice()).collect();
    assert_eq!(names, [b"user.binary".as_slice(), b"user.xdg.tags"]);
    let target = env.path("out");
    env.coffer().args(["restore", "latest", "--target"]).arg(&target).assert().success();
    let back = env.restored_src(&target).join("photo.jpg");
    assert_eq!(xattr_get(&back, "user.xdg.tags"), b"holiday,2024");
    assert_eq!(xattr_get(&back, "user.binary"), [0, 255, 1]);
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) {
    xattr::set(path, name, value).expect("the test folder's file system keeps user attributes");
}

fn xattr_get(path: &Path, name: &str) -> Vec<u8> {
    xattr::get(path, name).unwrap().unwrap_or_else(|| panic!("{name} missing on {}", path.display()))
}

#[test]
fn special_files_are_recorded_without_hanging() {
    let env = Env::init();
    env.write("regular", b"x");
    nix::unistd::mkfifo(&env.src.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
    // A listening socket: nothing will ever connect to it during the backup.
    let _socket = std::os::unix::net::UnixListener::bind(env.src.join("socket")).unwrap();
    if is_root() {
        nix::sys::stat::mknod(
            &env.src.join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
    }
    let report = env.backup_json(&[]);
    assert_eq!(n(&report, "errors"), 0);
    let repo = open_repo(&env);
    use coffer_core::tree::NodeKind;
    assert_eq!(snapshot_node(&repo, "latest", &env.src.join("fifo")).kind, NodeKind::Fifo);
    assert_eq!(snapshot_node(&repo, "latest", &env.src.join("socket")).kind, NodeKind::Socket);
    let target = env.path("out");
    env.coffer().args(["restore", "latest", "--target"]).arg(&target).assert().success();
    let back = env.restored_src(&target);
    let ft = std::fs::symlink_metadata(back.join("fifo")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&ft.file_type()));
    assert_eq!(ft.mode() & 0o7777, 0o640);
    if is_root() {
        let node = snapshot_node(&repo, "latest", &env.src.join("null"));
        assert_eq!(node.kind, NodeKind::CharDevice);
        assert_eq!(node.rdev, nix::sys::stat::makedev(1, 3));
        let m = std::fs::symlink_metadata(back.join("null")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type()));
        assert_eq!(m.rdev(), nix::sys::stat::makedev(1, 3));
    }
}

#[test]
fn ignore_inode_and_ctime_for_churning_sources() {
    let env = Env::init();
    // Old mtimes: files modified just before a backup are always read again
    // (see the timestamp-granularity test below).
    for (name, seed) in [("a.jpg", 2), ("b.jpg", 3)] {
        let f = env.write(name, &random_bytes(200_000, seed));
        filetime::set_file_mtime(&f, filetime::FileTime::from_unix_time(1_600_000_000, 0)).unwrap();
    }
    // Back up a copy that will be replaced by a fresh copy with the same
    // contents and mtimes: new inodes and new ctimes, as a re-mounted network
    // share or a re-inserted card shows them.
    let copy = env.path("copy");
    let copy_tree = |dst: &Path| {
        let status = std::process::Command::new("cp").arg("-a").arg(&env.src).arg(dst).status().unwrap();
        assert!(status.success());
    };
    copy_tree(&copy);
    let backup = |extra: &[&str]| -> Value {
        let out = env.coffer().args(["backup", "--json"]).args(extra).arg(&copy).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    backup(&[]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::remove_dir_all(&copy).unwrap();
    copy_tree(&copy);
    let strict = backup(&[]);
    assert_eq!(n(&strict, "files_unchanged"), 0, "new inodes and ctimes: read again");
    std::fs::remove_dir_all(&copy).unwrap();
    copy_tree(&copy);
    let relaxed = backup(&["--ignore-inode", "--ignore-ctime"]);
    assert_eq!(n(&relaxed, "files_unchanged"), 2);
    assert_eq!(n(&relaxed, "bytes_read"), 0);
    // Ignoring only the inode still notices the new ctime.
    std::fs::remove_dir_all(&copy).unwrap();
    copy_tree(&copy);
    let inode_only = backup(&["--ignore-inode"]);
    assert_eq!(n(&inode_only, "files_unchanged"), 0);
}

#[test]
fn modification_within_timestamp_granularity_is_not_missed() {
    // Simulates a FAT/exFAT card (2 s mtime granularity, ctime not usable):
    // a file written just before the backup started is edited again after
    // the backup read it, within the same 2-second tick, without changing
    // its size. Its mtime and size look unchanged to the next backup.
    let env = Env::init();
    let tick = filetime::FileTime::from_unix_time(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 & !1,
        0,
    );
    let recent = env.write("recent.jpg", &random_bytes(100_000, 4));
    filetime::set_file_mtime(&recent, tick).unwrap();
    let old = env.write("old.jpg", &random_bytes(100_000, 5));
    filetime::set_file_mtime(&old, filetime::FileTime::from_unix_time(1_600_000_000, 0)).unwrap();
    // The backup is recorded as started within the file's 2-second tick, as
    // it would be on a quiet machine; a loaded one may take longer to start,
    // which must not decide what this test sees. (The tick's own start: a
    // later instant may still be in the future, which backup refuses.)
    let started = jiff::Timestamp::from_second(tick.unix_seconds()).unwrap().to_string();
    env.backup_json(&["--ignore-ctime", "--time", &started]);

    let edited = random_bytes(100_000, 6);
    std::fs::write(&recent, &edited).unwrap();
    filetime::set_file_mtime(&recent, tick).unwrap();
    let report = env.backup_json(&["--ignore-ctime"]);
    assert_eq!(n(&report, "files_changed"), 1, "{report}");
    assert_eq!(n(&report, "files_unchanged"), 1, "the old file is still trusted: {report}");
    assert_eq!(n(&report, "bytes_read"), 100_000);
    let target = env.path("out");
    env.coffer().args(["restore", "latest", "--target"]).arg(&target).assert().success();
    assert_eq!(std::fs::read(env.restored_src(&target).join("recent.jpg")).unwrap(), edited);
}

#[test]
fn exclude_family() {
    let env = Env::init();
    env.write("keep/photo.jpg", b"photo");
    env.write("keep/PHOTO.TMP", b"tmp");
    env.write(
        "cache/CACHEDIR.TAG",
        b"Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag.\n",
    );
    env.write("cache/thumb.jpg", b"thumb");
    env.write("fakecache/CACHEDIR.TAG", b"not a real tag");
    env.write("fakecache/kept.jpg", b"kept");
    env.write("private/.nobackup", b"");
    env.write("private/diary.txt", b"diary");
    env.write("big/video.mp4", &vec![1u8; 300_000]);
    env.write("big/small.jpg", &vec![2u8; 1000]);
    env.backup_json(&[
        "--exclude-caches",
        "--exclude-if-present",
        ".nobackup",
        "--exclude-larger-than",
        "100K",
        "--iexclude",
        "*.tmp",
    ]);
    let l = listed(&env);
    let s = |rel: &str| env.src.join(rel);
    assert!(has(&l, &s("keep/photo.jpg")));
    assert!(!has(&l, &s("keep/PHOTO.TMP")), "--iexclude ignores case");
    assert!(!has(&l, &s("cache")) && !has(&l, &s("cache/thumb.jpg")), "tagged cache left out");
    assert!(has(&l, &s("fakecache/kept.jpg")), "an invalid CACHEDIR.TAG does not count");
    assert!(!has(&l, &s("private/diary.txt")) && !has(&l, &s("private")));
    assert!(!has(&l, &s("big/video.mp4")) && has(&l, &s("big/small.jpg")));
}

#[test]
fn files_from_lists_the_paths() {
    let env = Env::init();
    env.write("a/1.jpg", b"1");
    env.write("b/2.jpg", b"2");
    env.write("c/3.jpg", b"3");
    let list = env.path("list.txt");
    std::fs::write(
        &list,
        format!("# photos\n{}\n\n{}\n", env.src.join("a").display(), env.src.join("c/3.jpg").display()),
    )
    .unwrap();
    let out = env.coffer().args(["backup", "--json", "--files-from"]).arg(&list).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let l = listed(&env);
    assert!(has(&l, &env.src.join("a/1.jpg")) && has(&l, &env.src.join("c/3.jpg")));
    assert!(!has(&l, &env.src.join("b")));
    let missing = env.path("missing.txt");
    std::fs::write(&missing, "/no/such/path\n").unwrap();
    let out = env.coffer().args(["backup", "--files-from"]).arg(&missing).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/path"));
}

#[test]
fn one_file_system_keeps_mount_points_empty() {
    if !is_root() {
        eprintln!("one_file_system_keeps_mount_points_empty needs root to mount a tmpfs; not run");
        return;
    }
    let env = Env::init();
    env.write("photo.jpg", b"photo");
    let mnt = env.src.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let status = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&mnt).status();
    assert!(status.is_ok_and(|s| s.success()), "mounting a tmpfs as root");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&mnt);
    std::fs::write(mnt.join("other-fs.txt"), b"elsewhere").unwrap();
    env.backup_json(&["--one-file-system"]);
    let l = listed(&env);
    assert!(has(&l, &env.src.join("photo.jpg")));
    assert!(has(&l, &mnt), "the mount point itself is kept");
    assert!(!has(&l, &mnt.join("other-fs.txt")));
    env.backup_json(&[]);
    assert!(has(&listed(&env), &mnt.join("other-fs.txt")), "without the option the mount is crossed");
}

/// `coffer backup --json ARGS` with `input` on standard input, parsed.
fn stdin_backup(env: &Env, args: &[&str], input: &[u8]) -> Value {
    let out = env.coffer().args(["backup", "--json"]).args(args).write_stdin(input).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn dumped(env: &Env, path: &str) -> Vec<u8> {
    let out = env.coffer().args(["dump", "latest", path]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    out.stdout
}

#[test]
fn stdin_round_trips_and_dedups() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::init();
    let data = random_bytes(5_000_000, 21);
    let first = stdin_backup(&env, &["--stdin"], &data);
    assert_eq!((n(&first, "files_new"), n(&first, "bytes_read")), (1, data.len() as u64), "{first}");
    assert!(n(&first, "chunks_added") > 0);
    let snaps = snapshots_json(&env);
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["paths"], serde_json::json!(["/stdin"]));
    assert_eq!(listed(&env), ["/stdin"], "one file at the snapshot's root");
    assert!(dumped(&env, "/stdin") == data, "dump gives the bytes back");
    let target = env.path("out");
    env.coffer().args(["restore", "latest", "--target"]).arg(&target).assert().success();
    let restored = target.join("stdin");
    assert!(std::fs::read(&restored).unwrap() == data, "restore gives the bytes back");
    assert_eq!(std::fs::metadata(&restored).unwrap().permissions().mode() & 0o7777, 0o644);

    // The same bytes again: every chunk is in the repository already, and
    // the first snapshot (same host, same name) is the parent.
    let second = stdin_backup(&env, &["--stdin"], &data);
    assert_eq!(n(&second, "chunks_added"), 0, "{second}");
    assert_eq!(n(&second, "bytes_read"), data.len() as u64, "a stream is always read");
    assert_eq!(second["parent"], first["snapshot_id"]);
    assert!(dumped(&env, "/stdin") == data);
}

#[test]
fn stdin_filename_names_the_file() {
    let env = Env::init();
    stdin_backup(&env, &["--stdin", "--stdin-filename", "db.sql"], b"CREATE TABLE t (x int);\n");
    assert_eq!(listed(&env), ["/db.sql"]);
    assert_eq!(snapshots_json(&env)[0]["paths"], serde_json::json!(["/db.sql"]));
    assert_eq!(dumped(&env, "/db.sql"), b"CREATE TABLE t (x int);\n");
    // Another name is another series: no parent.
    let other = stdin_backup(&env, &["--stdin", "--stdin-filename", "other.sql"], b"x");
    assert!(other["parent"].is_null(), "{other}");
}

#[test]
fn stdin_from_command_backs_up_its_output() {
    let env = Env::init();
    let out = env.coffer().args(["backup", "--json", "--stdin-from-command", "--", "printf", "data"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(listed(&env), ["/stdin"]);
    assert_eq!(dumped(&env, "/stdin"), b"data");
    // The command's standard error passes through.
    let out = env
        .coffer()
        .args(["backup", "--stdin-from-command", "--stdin-filename", "two.txt", "--"])
        .args(["sh", "-c", "echo a-note-on-stderr >&2; printf more"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("a-note-on-stderr"), "{}", stderr_of(&out));
    assert_eq!(dumped(&env, "/two.txt"), b"more");
}

#[test]
fn failing_command_writes_no_snapshot() {
    let env = Env::init();
    stdin_backup(&env, &["--stdin"], b"before");
    let before = snapshots_json(&env);
    let out = env
        .coffer()
        .args(["backup", "--stdin-from-command", "--", "sh", "-c", "printf hello; exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(err.contains("failed") && err.contains("exit status 3"), "{err}");
    assert_eq!(snapshots_json(&env), before, "no new snapshot");
    // A command that cannot be started: no snapshot either.
    let out = env.coffer().args(["backup", "--stdin-from-command", "--", "/no/such/command"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("/no/such/command"), "{}", stderr_of(&out));
    assert_eq!(snapshots_json(&env), before);
}

#[test]
fn stream_sources_refuse_other_sources() {
    let env = Env::init();
    env.write("photo.jpg", b"photo");
    let list = env.path("list.txt");
    std::fs::write(&list, format!("{}\n", env.src.display())).unwrap();
    let src = env.src.to_str().unwrap();
    let list = list.to_str().unwrap();
    for (args, says) in [
        (vec!["--stdin", src], "cannot be combined with paths"),
        (vec!["--stdin", "--", src], "cannot be combined with paths"),
        (vec!["--stdin", "--files-from", list], "cannot be combined with --files-from"),
        (vec!["--stdin", "--stdin-from-command", "--", "true"], "cannot be combined"),
        (vec!["--stdin-from-command", src, "--", "true"], "cannot be combined with paths"),
        (vec!["--stdin-from-command", "--files-from", list, "--", "true"], "cannot be combined with --files-from"),
        (vec!["--stdin-from-command"], "needs the command"),
        (vec!["--stdin-filename", "x", src], "--stdin-filename"),
        (vec!["--stdin", "--stdin-filename", "a/b"], "one path component"),
    ] {
        let out = env.coffer().arg("backup").args(&args).write_stdin("piped").output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr_of(&out));
        assert!(stderr_of(&out).contains(says), "{args:?}: {}", stderr_of(&out));
    }
    assert!(snapshots_json(&env).is_empty());
    // Without the stream options, what follows `--` is still paths.
    let out = env.coffer().args(["backup", "--json", "--", src]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(has(&listed(&env), &env.src.join("photo.jpg")));
}

/// `--limit-upload` paces uploads. The bound below is a floor that a
/// working limit makes certain (the bytes cannot pass faster than the rate
/// allows), not a speed measurement: it can only fail if the limit is not
/// applied.
#[test]
fn limit_upload_paces_the_bytes_sent_and_limit_download_the_bytes_read() {
    let env = crate::common::Env::init();
    env.write("big.bin", &crate::common::random_bytes(400 << 10, 5));
    let start = std::time::Instant::now();
    let out = env.coffer().args(["--limit-upload", "200", "backup", "--json"]).arg(&env.src).output().unwrap();
    assert!(out.status.success(), "{}", crate::common::stderr_of(&out));
    // 400 KiB of data pack at 200 KiB/s: what follows it waits about 2 s.
    assert!(start.elapsed() >= std::time::Duration::from_millis(1500), "{:?}", start.elapsed());
    let target = env.path("restored");
    let start = std::time::Instant::now();
    let out = env
        .coffer()
        .args(["--limit-download", "200", "--no-cache", "restore", "latest", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", crate::common::stderr_of(&out));
    assert!(start.elapsed() >= std::time::Duration::from_millis(1500), "{:?}", start.elapsed());
    assert_eq!(
        std::fs::read(env.restored_src(&target).join("big.bin")).unwrap(),
        crate::common::random_bytes(400 << 10, 5)
    );
    let bad = env.coffer().args(["--limit-upload", "0", "snapshots"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "0 is refused");
}
