//! Bad input of every kind: each case checks the exit code, a specific
//! message, and that nothing was lost or changed.

use std::path::{Path, PathBuf};

use coffer_core::crypto::ObjectKind;

use crate::common::{
    Backend, Env, PASSWORD, both_backends, dir_state, open_repo, random_bytes, snapshot_node, snapshots_json,
    stderr_of, stored_blob,
};

both_backends!(
    wrong_password_is_exit_12_and_changes_nothing,
    init_refuses_an_existing_repository,
    missing_source_path_writes_nothing,
    unreadable_file_gives_a_partial_snapshot_and_exit_3,
    damaged_chunk_fails_only_its_file,
    missing_chunk_fails_only_its_file,
    truncated_chunk_fails_only_its_file,
);

/// An initialised repository with one snapshot of two small files.
fn env_with_snapshot(backend: Backend) -> Env {
    let env = Env::init_on(backend);
    env.write("a.txt", b"alpha");
    env.write("dir/b.bin", &random_bytes(50_000, 2));
    env.backup_json(&[]);
    env
}

fn wrong_password_is_exit_12_and_changes_nothing(backend: Backend) {
    let env = env_with_snapshot(backend);
    let before = dir_state(&env.repo);
    let target = env.path("out");
    let runs: Vec<Vec<std::ffi::OsString>> = vec![
        vec!["snapshots".into()],
        vec!["snapshots".into(), "--json".into()],
        vec!["ls".into(), "latest".into()],
        vec!["restore".into(), "latest".into(), "--target".into(), target.clone().into()],
        vec!["backup".into(), env.src.clone().into()],
        vec!["init".into()],
    ];
    for args in runs {
        let out = env.coffer().env("COFFER_PASSWORD", "not the password").args(&args).output().unwrap();
        let err = stderr_of(&out);
        if args[0] == "init" {
            // init refuses an existing repository whatever the password.
            assert!(!out.status.success(), "{args:?}");
            assert!(err.contains("refusing to initialise"), "{args:?}: {err}");
        } else {
            assert_eq!(out.status.code(), Some(12), "{args:?}: {err}");
            assert!(err.contains("wrong password"), "{args:?}: {err}");
            assert!(!err.contains("damaged") && !err.contains("corrupt"), "{args:?}: {err}");
        }
        assert_eq!(dir_state(&env.repo), before, "{args:?} changed the repository");
    }
    assert!(!target.exists(), "restore with a wrong password created its target");
    // The right password still opens it, and the snapshot is there.
    assert_eq!(snapshots_json(&env).len(), 1);
}

/// The three kinds of folders that hold no repository.
fn not_repositories(env: &Env) -> Vec<(&'static str, PathBuf)> {
    let empty = env.path("empty");
    std::fs::create_dir(&empty).unwrap();
    let missing = env.path("missing");
    let junk = env.path("junk");
    std::fs::create_dir_all(junk.join("sub")).unwrap();
    std::fs::write(junk.join("photo.jpg"), random_bytes(10_000, 1)).unwrap();
    std::fs::write(junk.join("sub/notes.txt"), b"hello").unwrap();
    std::fs::write(junk.join("keys"), b"not a folder of keys").unwrap();
    vec![("empty folder", empty), ("missing folder", missing), ("folder of random files", junk)]
}

#[test]
fn not_a_repository_is_exit_10_for_every_command() {
    let env = Env::new();
    env.write("file.txt", b"data");
    for (what, location) in not_repositories(&env) {
        let before = dir_state(&location);
        let target = env.path("restore-target");
        let runs: Vec<Vec<std::ffi::OsString>> = vec![
            vec!["snapshots".into()],
            vec!["ls".into(), "latest".into()],
            vec!["restore".into(), "latest".into(), "--target".into(), target.clone().into()],
            vec!["backup".into(), env.src.clone().into()],
        ];
        for args in runs {
            for via_flag in [false, true] {
                let mut cmd = env.coffer();
                if via_flag {
                    cmd.env_remove("COFFER_REPOSITORY").arg("--repo").arg(&location);
                } else {
                    cmd.env("COFFER_REPOSITORY", &location);
                }
                let out = cmd.args(&args).output().unwrap();
                let err = stderr_of(&out);
                assert_eq!(out.status.code(), Some(10), "{what}, {args:?}: {err}");
                assert!(err.contains("no coffer repository"), "{what}, {args:?}: {err}");
                assert!(err.contains(&location.display().to_string()), "{what}, {args:?}: location not named: {err}");
                assert_eq!(dir_state(&location), before, "{what}, {args:?} changed the folder");
                assert!(!target.exists(), "{what}, {args:?}: restore created its target");
            }
        }
    }
}

#[test]
fn folder_with_a_foreign_config_file_is_not_a_repository() {
    // ~/.ssh, a git folder, many program folders: a file named `config`
    // without coffer's magic says "no repository here", not "damaged".
    let env = Env::new();
    env.write("file.txt", b"data");
    let location = env.path("dot-ssh");
    std::fs::create_dir(&location).unwrap();
    std::fs::write(location.join("config"), "Host *\n  ForwardAgent no\n").unwrap();
    std::fs::write(location.join("known_hosts"), "example.org ssh-ed25519 AAAA\n").unwrap();
    let before = dir_state(&location);
    for args in [vec!["snapshots"], vec!["ls", "latest"]] {
        let out = env.coffer().env("COFFER_REPOSITORY", &location).args(&args).output().unwrap();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(10), "{args:?}: {err}");
        assert!(err.contains("no coffer repository"), "{args:?}: {err}");
        assert!(err.contains(&location.display().to_string()), "{args:?}: location not named: {err}");
    }
    let out = env.coffer().env("COFFER_REPOSITORY", &location).arg("backup").arg(&env.src).output().unwrap();
    assert_eq!(out.status.code(), Some(10), "{}", stderr_of(&out));
    assert_eq!(dir_state(&location), before);
}

fn init_refuses_an_existing_repository(backend: Backend) {
    let env = env_with_snapshot(backend);
    let before = dir_state(&env.repo);
    for password in [PASSWORD, "another password"] {
        let out = env
            .coffer()
            .env("COFFER_PASSWORD", password)
            .args(["init", "--argon2-memory", "64", "--argon2-iterations", "1"])
            .output()
            .unwrap();
        let err = stderr_of(&out);
        assert!(!out.status.success(), "init over a repository succeeded");
        assert!(err.contains("refusing to initialise"), "{err}");
        assert!(err.contains(&env.location), "location not named: {err}");
        assert_eq!(dir_state(&env.repo), before, "init changed an existing repository");
    }
    // Still opens with the old password, with its snapshot.
    let snaps = snapshots_json(&env);
    assert_eq!(snaps.len(), 1);
    let out = env.coffer().env("COFFER_PASSWORD", "another password").arg("snapshots").output().unwrap();
    assert_eq!(out.status.code(), Some(12), "the second init added a key");
}

#[test]
fn init_refuses_a_non_empty_folder() {
    let env = Env::new();
    std::fs::create_dir_all(env.repo.join("Pictures")).unwrap();
    std::fs::write(env.repo.join("Pictures/cat.jpg"), random_bytes(5000, 3)).unwrap();
    std::fs::write(env.repo.join("todo.txt"), b"buy milk").unwrap();
    let before = dir_state(&env.repo);
    let out = env.coffer().args(["init", "--argon2-memory", "64", "--argon2-iterations", "1"]).output().unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success(), "init into a non-empty folder succeeded");
    assert!(err.contains("refusing to initialise") && err.contains("not empty"), "{err}");
    assert!(err.contains(&env.repo.display().to_string()), "location not named: {err}");
    assert_eq!(dir_state(&env.repo), before, "init changed someone's files");

    // A folder holding only a stray file is not empty either.
    let env = Env::new();
    std::fs::create_dir(&env.repo).unwrap();
    std::fs::write(env.repo.join(".hidden"), b"x").unwrap();
    let before = dir_state(&env.repo);
    let out = env.coffer().args(["init", "--argon2-memory", "64", "--argon2-iterations", "1"]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("not empty"), "{}", stderr_of(&out));
    assert_eq!(dir_state(&env.repo), before);

    // An existing empty folder is fine.
    let env = Env::new();
    std::fs::create_dir(&env.repo).unwrap();
    env.coffer().args(["init", "--argon2-memory", "64", "--argon2-iterations", "1"]).assert().success();
    assert_eq!(snapshots_json(&env).len(), 0);
}

fn missing_source_path_writes_nothing(backend: Backend) {
    let env = env_with_snapshot(backend);
    let before = dir_state(&env.repo);
    let missing = env.path("no-such-folder-e41b");
    for args in [vec![missing.clone()], vec![env.src.clone(), missing.clone()], vec![missing.clone(), env.src.clone()]]
    {
        let out = env.coffer().arg("backup").args(&args).output().unwrap();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(&missing.display().to_string()), "{args:?}: path not named: {err}");
        assert!(err.contains("No such file or directory"), "{args:?}: {err}");
        assert_eq!(dir_state(&env.repo), before, "{args:?}: a failed backup wrote to the repository");
    }
    assert_eq!(snapshots_json(&env).len(), 1);
    // No path at all is refused too.
    let out = env.coffer().arg("backup").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("nothing to back up"), "{}", stderr_of(&out));
    assert_eq!(dir_state(&env.repo), before);
}

/// Creates, below `dir`, a file that the backup cannot read, and returns its
/// name (unique enough to search for in messages).
///
/// As an ordinary user, `chmod 000` does it: `open` fails with EACCES.
///
/// As root (CI), permission bits do not stop reading, so another robust and
/// deterministic failure is used: a file whose full path is longer than
/// PATH_MAX (4096 bytes). Its folder's path is still short enough to be
/// listed, so the walk sees the entry, but `lstat`/`open` of the entry's
/// path fail with ENAMETOOLONG, whoever runs the backup. (Making a file
/// vanish mid-backup would race with the walker; a FIFO or a dangling
/// symlink is not an error at all, since neither is read.)
fn make_unreadable_file(dir: &Path) -> String {
    if !nix::unistd::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt;
        let name = "unreadable-7c1d.bin".to_string();
        let p = dir.join(&name);
        std::fs::write(&p, b"you cannot read me").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
        return name;
    }
    // Nest folders until the folder's path is about 3900 bytes long.
    let mut deep = dir.join("deep");
    while deep.as_os_str().len() + 1 + 240 < 3900 {
        deep.push("d".repeat(240));
    }
    let pad = 3900 - deep.as_os_str().len() - 1;
    if pad > 0 {
        deep.push("p".repeat(pad));
    }
    std::fs::create_dir_all(&deep).unwrap();
    // A 250-byte name takes the file's path past 4096 bytes: create it
    // relative to its folder.
    let name = format!("unreadable-7c1d-{}", "u".repeat(234));
    assert!(deep.as_os_str().len() + 1 + name.len() > 4096);
    let folder = std::fs::File::open(&deep).unwrap();
    let fd = nix::fcntl::openat(
        &folder,
        name.as_str(),
        nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    use std::io::Write;
    std::fs::File::from(fd).write_all(b"you cannot read me").unwrap();
    assert!(std::fs::symlink_metadata(deep.join(&name)).is_err(), "the long path is readable after all");
    name
}

fn unreadable_file_gives_a_partial_snapshot_and_exit_3(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("good/first.txt", b"first");
    env.write("good/second.bin", &random_bytes(70_000, 5));
    env.write("zzz-last.txt", b"after the bad one");
    let bad = make_unreadable_file(&env.src);

    let out = env.coffer().args(["backup", "--json"]).arg(&env.src).output().unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains(&bad), "the warning does not name the file: {err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("backup JSON");
    assert_eq!(report["errors"], 1, "{report}");
    assert_eq!(report["files_new"], 3, "{report}");
    let id = report["snapshot_id"].as_str().expect("a snapshot id").to_string();

    let snaps = snapshots_json(&env);
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["id"], id.as_str());

    let out = env.coffer().args(["ls", &id]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    for f in ["good/first.txt", "good/second.bin", "zzz-last.txt"] {
        let p = env.src.join(f);
        assert!(listing.lines().any(|l| Path::new(l) == p), "{f} missing from the snapshot:\n{listing}");
    }
    assert!(!listing.contains(&bad), "the unreadable file is listed:\n{listing}");

    // The readable files restore intact.
    let target = env.path("out");
    env.coffer()
        .args(["restore", &id, "--target"])
        .arg(&target)
        .args(["--include"])
        .arg(env.src.join("good"))
        .arg("--include")
        .arg(env.src.join("zzz-last.txt"))
        .assert()
        .success();
    let back = env.restored_src(&target);
    assert_eq!(std::fs::read(back.join("good/first.txt")).unwrap(), b"first");
    assert_eq!(std::fs::read(back.join("good/second.bin")).unwrap(), random_bytes(70_000, 5));
    assert_eq!(std::fs::read(back.join("zzz-last.txt")).unwrap(), b"after the bad one");
}

/// Backs up two files and returns the environment and the chunk ids of each.
/// The second file is added by a second backup, so that its chunks are in
/// packs of their own and damage to those packs touches it alone.
fn two_files_and_their_chunks(backend: Backend) -> (Env, Vec<coffer_core::Id>, Vec<coffer_core::Id>) {
    let env = Env::init_on(backend);
    env.write("photos/good.jpg", &random_bytes(200_000, 11));
    env.backup_json(&[]);
    env.write("photos/bad.jpg", &random_bytes(150_000, 12));
    env.backup_json(&[]);
    let repo = open_repo(&env);
    let ids = |name: &str| -> Vec<coffer_core::Id> {
        let node = snapshot_node(&repo, "latest", &env.src.join(name));
        assert!(!node.content.is_empty());
        node.content.iter().map(|c| c.0).collect()
    };
    let (good, bad) = (ids("photos/good.jpg"), ids("photos/bad.jpg"));
    assert!(good.iter().all(|g| !bad.contains(g)));
    (env, good, bad)
}

fn restore_with_bad_chunk(env: &Env, bad_chunk: &coffer_core::Id) {
    let before = dir_state(&env.repo);
    let target = env.path("out");
    let out = env.coffer().args(["restore", "latest", "--target"]).arg(&target).output().unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success(), "restore with a bad chunk succeeded: {err}");
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("bad.jpg"), "the file is not named: {err}");
    assert!(err.contains(&bad_chunk.to_hex()), "the chunk id is not named: {err}");
    assert!(!err.contains("good.jpg"), "the intact file is reported: {err}");
    let back = env.restored_src(&target);
    assert_eq!(std::fs::read(back.join("photos/good.jpg")).unwrap(), random_bytes(200_000, 11));
    // Whatever is left of the damaged file, it is not passed off as the original.
    if let Ok(data) = std::fs::read(back.join("photos/bad.jpg")) {
        assert_ne!(data, random_bytes(150_000, 12));
    }
    assert_eq!(dir_state(&env.repo), before, "restore changed the repository");
}

fn damaged_chunk_fails_only_its_file(backend: Backend) {
    let (env, _, bad) = two_files_and_their_chunks(backend);
    let blob = stored_blob(&open_repo(&env), ObjectKind::Chunk, &bad[0]);
    let mut stored = blob.read(&env.repo);
    let mid = stored.len() / 2;
    for b in &mut stored[mid..mid + 16] {
        *b ^= 0x5a;
    }
    blob.overwrite(&env.repo, &stored);
    restore_with_bad_chunk(&env, &bad[0]);
}

fn missing_chunk_fails_only_its_file(backend: Backend) {
    let (env, _, bad) = two_files_and_their_chunks(backend);
    let blob = stored_blob(&open_repo(&env), ObjectKind::Chunk, &bad[0]);
    std::fs::remove_file(blob.pack_file(&env.repo)).unwrap();
    restore_with_bad_chunk(&env, &bad[0]);
}

fn truncated_chunk_fails_only_its_file(backend: Backend) {
    let (env, _, bad) = two_files_and_their_chunks(backend);
    let blob = stored_blob(&open_repo(&env), ObjectKind::Chunk, &bad[0]);
    blob.truncate_pack(&env.repo);
    restore_with_bad_chunk(&env, &bad[0]);
}

/// Initialises a repository with the password given some way, then checks
/// that the repository opens with that password and no other.
fn check_password_source(how: &str, configure: impl Fn(&mut assert_cmd::Command, &Env)) {
    let env = Env::new();
    let password = "pässword from elsewhere 9e1";
    let mut init = env.coffer();
    init.env_remove("COFFER_PASSWORD");
    configure(&mut init, &env);
    init.args(["init", "--argon2-memory", "64", "--argon2-iterations", "1"]).assert().success();

    env.write("f.txt", b"x");
    let mut backup = env.coffer();
    backup.env_remove("COFFER_PASSWORD");
    configure(&mut backup, &env);
    let out = backup.arg("backup").arg(&env.src).output().unwrap();
    assert!(out.status.success(), "{how}: {}", stderr_of(&out));

    // The password really is the one from that source.
    let snaps = env.coffer().env("COFFER_PASSWORD", password).args(["snapshots", "--json"]).output().unwrap();
    assert!(snaps.status.success(), "{how}: {}", stderr_of(&snaps));
    let out = env.coffer().args(["snapshots"]).output().unwrap();
    assert_eq!(out.status.code(), Some(12), "{how}: the default test password opened it");
}

#[test]
fn password_file_command_and_env_file() {
    let password = "pässword from elsewhere 9e1";
    check_password_source("--password-file", |cmd, env| {
        let f = env.path("pw.txt");
        std::fs::write(&f, format!("{password}\nsecond line is ignored\n")).unwrap();
        cmd.arg("--password-file").arg(f);
    });
    check_password_source("--password-command", |cmd, _| {
        cmd.arg("--password-command").arg(format!("printf '%s\\n' '{password}'"));
    });
    check_password_source("COFFER_PASSWORD_FILE", |cmd, env| {
        let f = env.path("pw-env.txt");
        std::fs::write(&f, format!("{password}\n")).unwrap();
        cmd.env("COFFER_PASSWORD_FILE", f);
    });
    check_password_source("COFFER_PASSWORD_COMMAND", |cmd, _| {
        cmd.env("COFFER_PASSWORD_COMMAND", format!("echo '{password}'"));
    });
}

#[test]
fn password_file_wins_over_the_environment() {
    let env = env_with_snapshot(Backend::Local);
    let before = dir_state(&env.repo);
    let f = env.path("wrong.txt");
    std::fs::write(&f, "not the password\n").unwrap();
    // COFFER_PASSWORD (right) is set too; the file named on the command line is used.
    let out = env.coffer().arg("--password-file").arg(&f).arg("snapshots").output().unwrap();
    assert_eq!(out.status.code(), Some(12), "{}", stderr_of(&out));
    let right = env.path("right.txt");
    std::fs::write(&right, format!("{PASSWORD}\n")).unwrap();
    env.coffer().env("COFFER_PASSWORD", "wrong").arg("--password-file").arg(&right).arg("snapshots").assert().success();
    assert_eq!(dir_state(&env.repo), before);
}

#[test]
fn bad_password_sources_are_reported() {
    let env = env_with_snapshot(Backend::Local);
    let before = dir_state(&env.repo);
    let missing = env.path("no-password-file");
    let out = env.coffer().arg("--password-file").arg(&missing).arg("snapshots").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains(&missing.display().to_string()), "{}", stderr_of(&out));
    let out = env.coffer().args(["--password-command", "exit 7", "snapshots"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("password command"), "{}", stderr_of(&out));
    assert_eq!(dir_state(&env.repo), before);
}

#[test]
fn empty_password_is_refused_by_init() {
    let env = Env::new();
    let out = env
        .coffer()
        .env("COFFER_PASSWORD", "")
        .args(["init", "--argon2-memory", "64", "--argon2-iterations", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("empty password"), "{}", stderr_of(&out));
    assert!(!env.repo.exists(), "a refused init left a folder behind");

    let f = env.path("empty-pw.txt");
    std::fs::write(&f, "\n").unwrap();
    let out = env
        .coffer()
        .env_remove("COFFER_PASSWORD")
        .arg("--password-file")
        .arg(&f)
        .args(["init", "--argon2-memory", "64", "--argon2-iterations", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("empty password"), "{}", stderr_of(&out));
    assert!(!env.repo.exists(), "a refused init left a folder behind");
}

/// A password file other users may read gets a warning naming it and how to
/// fix it (the command still runs: the folder around it may be private);
/// one only its owner can use gets none.
#[test]
fn a_password_file_others_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let env = env_with_snapshot(Backend::Local);
    let f = env.path("pw.txt");
    std::fs::write(&f, format!("{PASSWORD}\n")).unwrap();
    for (mode, warned) in [(0o644, true), (0o640, true), (0o606, true), (0o600, false), (0o400, false)] {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = env
            .coffer()
            .env_remove("COFFER_PASSWORD")
            .arg("--password-file")
            .arg(&f)
            .arg("snapshots")
            .output()
            .unwrap();
        let err = stderr_of(&out);
        assert!(out.status.success(), "{mode:o}: {err}");
        assert_eq!(err.contains("can be accessed by other users"), warned, "{mode:o}: {err}");
        if warned {
            assert!(err.contains(&format!("chmod 600 {}", f.display())), "{err}");
        }
    }
}

/// The password is never a command-line argument (other users see those in
/// `ps`), and never written to the log, whatever its level: at `trace`,
/// with the password given each way, it appears nowhere in the output.
#[test]
fn the_password_is_never_an_argument_or_in_the_log() {
    let env = env_with_snapshot(Backend::Local);
    let out = env.coffer().args(["--password", PASSWORD, "snapshots"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a --password option exists: {}", stderr_of(&out));
    let f = env.path("pw.txt");
    std::fs::write(&f, format!("{PASSWORD}\n")).unwrap();
    type Configure<'a> = Box<dyn Fn(&mut assert_cmd::Command) + 'a>;
    let ways: [(&str, Configure); 3] = [
        ("environment", Box::new(|_| {})),
        (
            "file",
            Box::new(|c: &mut assert_cmd::Command| {
                c.env_remove("COFFER_PASSWORD").arg("--password-file").arg(&f);
            }),
        ),
        (
            "command",
            Box::new(|c: &mut assert_cmd::Command| {
                c.env_remove("COFFER_PASSWORD").arg("--password-command").arg(format!("cat '{}'", f.display()));
            }),
        ),
    ];
    for (how, configure) in ways {
        let mut cmd = env.coffer();
        cmd.env("COFFER_LOG", "trace");
        configure(&mut cmd);
        let out = cmd.arg("backup").arg(&env.src).output().unwrap();
        assert!(out.status.success(), "{how}: {}", stderr_of(&out));
        assert!(stderr_of(&out).contains("DEBUG"), "{how}: the log is not on: {}", stderr_of(&out));
        for stream in [&out.stdout, &out.stderr] {
            assert!(
                !String::from_utf8_lossy(stream).contains(PASSWORD),
                "{how}: the password is in the output: {}",
                String::from_utf8_lossy(stream)
            );
        }
    }
}
