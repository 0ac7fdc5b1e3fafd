//! Locks a client cannot read, or must not read in full: an authentic lock
//! of a newer version is honoured as a live exclusive lock, an object that
//! does not authenticate holds nobody back and is removed by `unlock` only
//! with `--remove-all` or once unchanged for the stale time, a multi-GiB
//! object under `locks/` is refused unread, and a watcher with a short stale
//! time waits for the holder's longer one.

use std::time::{Duration, Instant};

use coffer_core::Id;
use coffer_core::crypto::ObjectKind;
use coffer_core::lock::LockRecord;
use coffer_core::repo::object_key;

use crate::common::{Backend, Env, both_backends, open_repo, stderr_of};

/// A lock of a process on another machine: never judged by its pid.
fn other_machines_lock(exclusive: bool, operation: &str) -> LockRecord {
    let mut r = LockRecord::for_process(4242, exclusive, operation);
    r.host = "another-machine".into();
    r.boot_id = "another boot".into();
    r
}

both_backends!(a_lock_of_a_newer_version_is_honoured_and_named);

fn a_lock_of_a_newer_version_is_honoured_and_named(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("f", b"data");
    env.backup_json(&[]);
    let repo = open_repo(&env);
    // A shared backup lock of a newer coffer: this version cannot know what
    // it allows, so it excludes everything, shared locks included.
    let mut newer = other_machines_lock(false, "backup");
    newer.version += 1;
    repo.write_lock_record(&newer).unwrap();
    for args in [&["prune"][..], &["backup"][..]] {
        let mut cmd = env.coffer();
        cmd.args(args);
        if args == ["backup"] {
            cmd.arg(&env.src);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(11), "{args:?}: {}", stderr_of(&out));
        let err = stderr_of(&out);
        assert!(err.contains("cannot read") && err.contains(&newer.name()) && err.contains("another-machine"), "{err}");
    }
    // Plain `unlock` keeps it and fails; `--remove-all` removes it.
    let out = env.coffer().arg("unlock").output().unwrap();
    assert_eq!(out.status.code(), Some(11), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("kept the lock of backup (a lock this coffer cannot read"), "{}", stderr_of(&out));
    assert_eq!(repo.locks().unwrap().1, [newer.name()], "plain unlock removed a foreign lock");
    let out = env.coffer().args(["unlock", "--remove-all"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--remove-all"));
    let (records, others) = repo.locks().unwrap();
    assert!(records.is_empty() && others.is_empty(), "{records:?} {others:?}");
    env.backup_json(&[]);
}

both_backends!(a_lock_that_does_not_authenticate_is_ignored_but_kept_until_stale);

fn a_lock_that_does_not_authenticate_is_ignored_but_kept_until_stale(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("f", b"data");
    let garbage = object_key(ObjectKind::Lock, &Id::random());
    let path = env.repo.join(&garbage);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, [0x5a; 300]).unwrap();
    // Written by someone without the key: it protects nothing.
    env.backup_json(&[]);
    let out = env.coffer().arg("unlock").output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains(&format!("kept the unreadable object {garbage}")), "{}", stderr_of(&out));
    assert!(path.exists(), "plain unlock removed it without watching it");
    // Watched unchanged for the stale time, it goes.
    let out = env.coffer().args(["--lock-stale-secs", "1", "unlock", "--wait"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&garbage), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(!path.exists());
    // And `--remove-all` removes one at once.
    std::fs::write(&path, [0x5a; 300]).unwrap();
    let out = env.coffer().args(["unlock", "--remove-all"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(!path.exists());
}

both_backends!(a_prune_with_a_short_stale_time_honours_a_default_backups_lock);

/// The backup's lock is never refreshed here (its counter stands still, as a
/// busy holder's does between refreshes every 5 minutes by default): a
/// prune that runs with a 1 s stale time must still wait the holder's 30
/// minutes, and give up after its `--retry-lock` instead of deleting.
fn a_prune_with_a_short_stale_time_honours_a_default_backups_lock(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("f", b"data");
    env.backup_json(&[]);
    let repo = open_repo(&env);
    let held = other_machines_lock(false, "backup");
    assert_eq!(held.stale_secs, 30 * 60);
    repo.write_lock_record(&held).unwrap();
    let started = Instant::now();
    let out = env.coffer().args(["--lock-stale-secs", "1", "prune", "--retry-lock", "4s"]).output().unwrap();
    assert_eq!(out.status.code(), Some(11), "prune went ahead: {}", stderr_of(&out));
    assert!(started.elapsed() >= Duration::from_secs(4));
    assert!(stderr_of(&out).contains("locked by backup"), "{}", stderr_of(&out));
    // A holder that itself ran with the short stale time is stale after it.
    let mut quick = other_machines_lock(false, "backup");
    quick.stale_secs = 1;
    repo.write_lock_record(&quick).unwrap();
    std::fs::remove_file(env.repo.join(held.name())).unwrap();
    let out = env.coffer().args(["--lock-stale-secs", "1", "prune", "--retry-lock", "20s"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
}

/// Runs a command and returns its output and its peak resident memory in
/// bytes. A child of this process starts as a vfork of the test runner, and
/// Linux counts the runner's own peak into the child's `ru_maxrss`: a large
/// runner made a 15 MiB backup look like 200 MiB. So GNU time (Debian's
/// `time`, which `.ci/run` installs) measures when it is there: it is
/// small, and the figure it takes for its child is the command's own.
/// Without it, `wait4` measures after the runner's peak is reset to its
/// current size (`/proc/self/clear_refs`), which can only overstate the
/// command's peak, never hide one.
fn run_measuring_rss(cmd: std::process::Command) -> (std::process::Output, u64) {
    let time = std::path::Path::new("/usr/bin/time");
    if !time.exists() {
        return run_measuring_rss_with_wait4(cmd);
    }
    let report = tempfile::NamedTempFile::new().unwrap();
    let mut timed = std::process::Command::new(time);
    timed.arg("-o").arg(report.path()).args(["-f", "%M"]).arg(cmd.get_program()).args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => timed.env(key, v),
            None => timed.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        timed.current_dir(dir);
    }
    let output = timed.output().unwrap();
    let text = std::fs::read_to_string(report.path()).unwrap();
    // The last line is the figure; a line before it says the command failed.
    let kib: u64 =
        text.lines().last().and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("time said {text:?}"));
    (output, kib * 1024)
}

/// [`run_measuring_rss`] without GNU time: `ru_maxrss` of the child from
/// `wait4`, after resetting this process's recorded peak.
// The child is reaped by `wait4` below, which `Child::wait` cannot give.
#[allow(clippy::zombie_processes)]
fn run_measuring_rss_with_wait4(mut cmd: std::process::Command) -> (std::process::Output, u64) {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset this process's peak resident memory");
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    // Drain the pipes on threads, then reap the child with wait4 ourselves.
    let mut stdout = child.stdout.unwrap();
    let mut stderr = child.stderr.unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut b).unwrap();
        b
    });
    let err_thread = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut b).unwrap();
        b
    });
    let mut status: libc::c_int = 0;
    // SAFETY: a zeroed rusage is a valid value to be overwritten.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own unreaped child; the pointers are valid.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    let status = std::os::unix::process::ExitStatusExt::from_raw(status);
    let output =
        std::process::Output { status, stdout: out_thread.join().unwrap(), stderr: err_thread.join().unwrap() };
    (output, usage.ru_maxrss as u64 * 1024)
}

both_backends!(a_four_gib_lock_object_is_refused_unread);

/// A hostile store (or a stray file) puts a 4 GiB object under `locks/`. It
/// is sparse, so it costs the test no disk, but a client that read it whole
/// would need 4 GiB of memory; coffer refuses it from its size alone, and
/// the backup goes on (the object protects nothing: no lock is that large).
/// On S3 it is 256 MiB: the in-process server hashes every object it
/// serves, which takes a minute for 4 GiB; the refusal is the same (and
/// `bytes_down` shows the body was not read).
fn a_four_gib_lock_object_is_refused_unread(backend: Backend) {
    let size: u64 = if backend == Backend::S3 { 256 << 20 } else { 4 << 30 };
    let env = Env::init_on(backend);
    env.write("photo.jpg", &crate::common::random_bytes(300_000, 3));
    let huge = object_key(ObjectKind::Lock, &Id::random());
    let path = env.repo.join(&huge);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    let mut cmd = env.coffer_process();
    cmd.args(["backup", "--json"]).arg(&env.src);
    let (out, peak) = run_measuring_rss(cmd);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(err.contains(&huge) && err.contains("refused unread"), "{err}");
    assert!(peak < 200 << 20, "peak RSS {} MiB", peak >> 20);
    eprintln!("peak RSS of the backup beside a {} MiB lock object: {} MiB", size >> 20, peak >> 20);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let down = report["wire"]["bytes_down"].as_u64().unwrap();
    assert!(down < 1 << 20, "{down} bytes downloaded: {report}");
    // unlock names it and keeps it until told.
    let out = env.coffer().arg("unlock").output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("refused unread"), "{}", stderr_of(&out));
    let out = env.coffer().args(["unlock", "--remove-all"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(!path.exists());
}
