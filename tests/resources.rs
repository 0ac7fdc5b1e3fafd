//! What the machine does to a backup or a restore: a disk that fills up,
//! files that change while they are read, links that point at themselves.
//! (Unreadable files: `errors::unreadable_file_gives_a_partial_snapshot_and_exit_3`;
//! sockets, FIFOs and devices: `backup_options::special_files_are_recorded_without_hanging`.)

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::{Env, files_below_or_empty, open_repo, random_bytes, snapshot_node, stderr_of};

/// A tmpfs of `size` mounted at `dir` for as long as it lives. Mounting
/// needs root (as in CI); elsewhere `None`, and the test says so.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Restoring onto a disk too small for the snapshot fails with a message
/// that names the disk's error and the file, and leaves no file under its
/// final name that is not whole: what is there is exactly what was backed
/// up, and no temporary file is left behind to fill the disk.
#[test]
fn restore_onto_a_full_disk_fails_clearly_and_leaves_no_partial_file() {
    let env = Env::init();
    env.write("photos/small.jpg", &random_bytes(100_000, 1));
    env.write("photos/big.raw", &random_bytes(3 << 20, 2));
    env.write("photos/later.jpg", &random_bytes(50_000, 3));
    env.backup_json(&[]);

    let target = env.path("disk");
    let Some(_disk) = SmallDisk::mount(&target, "2m") else {
        eprintln!(
            "note: cannot mount a tmpfs here (not root); the full-disk restore is tested in CI, which runs as root"
        );
        return;
    };
    let out = env.coffer().args(["restore", "latest", "--target"]).arg(&target).output().unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success(), "a restore onto a full disk succeeded: {err}");
    assert!(err.contains("No space left on device"), "the disk's error is not given: {err}");
    assert!(err.contains("big.raw"), "the file that did not fit is not named: {err}");

    let originals = [
        ("small.jpg", random_bytes(100_000, 1)),
        ("big.raw", random_bytes(3 << 20, 2)),
        ("later.jpg", random_bytes(50_000, 3)),
    ];
    let back = env.restored_src(&target);
    for rel in files_below_or_empty(&target) {
        let name = rel.file_name().unwrap().to_str().unwrap().to_string();
        let (_, want) = originals
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("a file the snapshot does not have was left behind: {}", rel.display()));
        let got = std::fs::read(&rel).unwrap();
        assert!(
            got == *want,
            "{} is under its final name but not whole ({} of {} bytes)",
            rel.display(),
            got.len(),
            want.len()
        );
    }
    assert!(!back.join("photos/big.raw").exists(), "the file that cannot fit is under its final name");
}

/// A file written to while the backup reads it is stored as read, with a
/// warning naming it; the snapshot is consistent (the recorded size is the
/// content's, which restores and checks), and the next backup reads the
/// file again instead of trusting the times it saw before reading.
#[test]
fn a_file_changing_while_read_is_warned_about_and_read_again_next_time() {
    let env = Env::init();
    let path = env.write("growing.log", &random_bytes(48 << 20, 4));
    env.write("quiet.txt", b"unchanged");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), path.clone());
        std::thread::spawn(move || {
            // Rewrites blocks all over the file, at its size, until told to
            // stop: whenever the backup reads it, it is being written to.
            let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let mut x = 7u64;
            let mut writes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let at = crate::common::xorshift(&mut x) % ((48 << 20) - 4096);
                f.seek(SeekFrom::Start(at)).unwrap();
                f.write_all(&[writes as u8; 4096]).unwrap();
                writes += 1;
            }
            writes
        })
    };
    let out = env.coffer().args(["backup", "--json"]).arg(&env.src).output().unwrap();
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(writes > 0);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(0), "a changing file is stored, not an error: {err}");
    assert!(
        err.contains("growing.log") && err.contains("changed while it was read"),
        "no warning names the file: {err}"
    );
    assert!(!err.contains("quiet.txt"), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["files_changed_while_read"], 1, "{report:#}");

    // What was stored is consistent: its recorded size is its content's,
    // and it restores and checks.
    let repo = open_repo(&env);
    let node = snapshot_node(&repo, "latest", &path);
    assert_eq!(node.size, node.content.iter().map(|c| u64::from(c.1)).sum::<u64>());
    assert_eq!(node.size, 48 << 20);
    drop(repo);
    env.coffer().args(["check", "--read-data"]).assert().success();
    let target = env.path("out");
    env.coffer().args(["restore", "latest", "--target"]).arg(&target).assert().success();
    assert_eq!(std::fs::metadata(env.restored_src(&target).join("growing.log")).unwrap().len(), 48 << 20);

    // The next backup reads the file again and stores what it now holds.
    let report = env.backup_json(&[]);
    assert_eq!(report["files_changed"], 1, "{report:#}");
    assert_eq!(report["files_changed_while_read"], 0, "{report:#}");
    let target = env.path("out2");
    env.coffer().args(["restore", "latest", "--target"]).arg(&target).assert().success();
    assert!(std::fs::read(env.restored_src(&target).join("growing.log")).unwrap() == std::fs::read(&path).unwrap());
}

/// Symbolic links are stored as links, never followed: a link to itself, a
/// pair pointing at each other and a link to its own folder (a cycle for
/// anything that follows links) back up at once and restore as the same
/// links.
#[test]
fn symlink_loops_are_stored_as_links() {
    let env = Env::init();
    env.write("dir/file.txt", b"inside");
    let dir = env.src.join("dir");
    std::os::unix::fs::symlink("self", dir.join("self")).unwrap();
    std::os::unix::fs::symlink("pong", dir.join("ping")).unwrap();
    std::os::unix::fs::symlink("ping", dir.join("pong")).unwrap();
    std::os::unix::fs::symlink("..", dir.join("up")).unwrap();
    std::os::unix::fs::symlink(".", dir.join("here")).unwrap();
    let report = env.backup_json(&[]);
    assert_eq!(report["errors"], 0, "{report:#}");
    assert_eq!(report["files_new"], 1, "only the one file is read: {report:#}");
    let target = env.path("out");
    env.coffer().args(["restore", "latest", "--target"]).arg(&target).assert().success();
    let back = env.restored_src(&target).join("dir");
    for (name, to) in [("self", "self"), ("ping", "pong"), ("pong", "ping"), ("up", ".."), ("here", ".")] {
        let meta = std::fs::symlink_metadata(back.join(name)).unwrap();
        assert!(meta.file_type().is_symlink(), "{name} is not a link");
        assert_eq!(std::fs::read_link(back.join(name)).unwrap(), Path::new(to), "{name}");
    }
    assert_eq!(std::fs::read(back.join("file.txt")).unwrap(), b"inside");
}
