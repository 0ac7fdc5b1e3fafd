//! `coffer prune` and `coffer unlock` end to end: prune reclaims exactly the
//! unreferenced objects and every remaining snapshot restores; a live lock
//! makes prune fail with exit 11 naming its holder and `unlock` refuse it; a
//! backup frozen with SIGSTOP past the stale time aborts when resumed; and a
//! short soak of backups in one process against prunes in another.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use coffer_core::Id;
use coffer_core::crypto::ObjectKind;
use coffer_core::lock::LockRecord;
use coffer_core::repo::object_key;

use crate::common::{
    Backend, Env, both_backends, contents, open_repo, random_bytes, reachable_objects, restored_contents, stderr_of,
    xorshift,
};

fn backup_id(env: &Env, extra: &[&str]) -> Id {
    let report = env.backup_json(extra);
    report["snapshot_id"].as_str().and_then(Id::from_hex).unwrap_or_else(|| panic!("no snapshot id in {report}"))
}

/// Objects in the repository against those reachable from its snapshots.
fn assert_exactly_reachable(env: &Env) {
    let repo = open_repo(env);
    let (trees, chunks) = reachable_objects(&repo);
    let listed_trees: BTreeSet<Id> = repo.list_ids(ObjectKind::Tree).unwrap().into_iter().collect();
    let listed_chunks: BTreeSet<Id> = repo.list_ids(ObjectKind::Chunk).unwrap().into_iter().collect();
    assert_eq!(listed_trees, trees);
    assert_eq!(listed_chunks, chunks);
}

fn prune_json(env: &Env, extra: &[&str]) -> serde_json::Value {
    let out = env.coffer().args(["prune", "--json"]).args(extra).output().unwrap();
    assert!(out.status.success(), "prune failed: {}", stderr_of(&out));
    serde_json::from_slice(&out.stdout).expect("prune JSON")
}

both_backends!(prune_reclaims_exactly_the_unreferenced_objects);

fn prune_reclaims_exactly_the_unreferenced_objects(backend: Backend) {
    let env = Env::init_on(backend);
    let mut expected: BTreeMap<Id, BTreeMap<PathBuf, Vec<u8>>> = BTreeMap::new();
    let mut ids = Vec::new();
    for round in 0..4u64 {
        env.write(&format!("photo{round}.jpg"), &random_bytes(1_200_000, round + 10));
        env.write("changing.txt", format!("round {round}").as_bytes());
        if round == 2 {
            std::fs::remove_file(env.src.join("photo0.jpg")).unwrap();
        }
        let id = backup_id(&env, &[]);
        expected.insert(id, contents(&env.src));
        ids.push(id);
    }
    // Forget the first two snapshots behind coffer's back.
    for id in &ids[..2] {
        std::fs::remove_file(env.repo.join(object_key(ObjectKind::Snapshot, id))).unwrap();
    }
    // Packs holding any unused blob are repacked, so that exactly the
    // referenced blobs are left (by default a pack is repacked only when
    // more than 10 % of it is unused).
    let before = crate::common::files_below(&env.repo);
    let dry = prune_json(&env, &["--dry-run", "--max-unused", "0"]);
    assert_eq!(crate::common::files_below(&env.repo), before, "a dry run deletes nothing");
    assert!(dry["chunks_deleted"].as_u64().unwrap() >= 1, "photo0's chunk goes: {dry}");
    assert!(dry["bytes_deleted"].as_u64().unwrap() > 1_000_000, "{dry}");
    let text = env.coffer().args(["prune", "--dry-run", "--max-unused", "0"]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    let total = dry["trees_deleted"].as_u64().unwrap() + dry["chunks_deleted"].as_u64().unwrap();
    assert!(text.contains(&format!("would delete {total} objects")), "{text}");

    let done = prune_json(&env, &["--max-unused", "0"]);
    assert_eq!(done["chunks_deleted"], dry["chunks_deleted"], "{done}");
    assert_eq!(done["packs_deleted"], dry["packs_deleted"], "{done}");
    assert_eq!(done["packs_repacked"], dry["packs_repacked"], "{done}");
    assert_eq!(done["trees_deleted"], dry["trees_deleted"], "{done}");
    assert_eq!(done["bytes_deleted"], dry["bytes_deleted"], "{done}");
    assert_exactly_reachable(&env);
    let repo = open_repo(&env);
    for id in &ids[2..] {
        assert_eq!(restored_contents(&repo, id, &env.src), expected[id], "snapshot {id}");
    }
    // Nothing left to do, and no lock left behind.
    let again = prune_json(&env, &[]);
    assert_eq!(again["chunks_deleted"], 0);
    assert_eq!(again["trees_deleted"], 0);
    assert!(crate::common::files_below_or_empty(&env.repo.join("locks")).is_empty());
    // Prune bumped the generation before deleting.
    assert!(env.repo.join("generation").exists());
}

both_backends!(a_live_lock_makes_prune_fail_with_exit_11_and_unlock_refuse);

fn a_live_lock_makes_prune_fail_with_exit_11_and_unlock_refuse(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("f", b"data");
    backup_id(&env, &[]);
    let repo = open_repo(&env);
    let held = repo.lock_shared("backup").unwrap();
    let pid = std::process::id().to_string();
    for extra in [&[][..], &["--retry-lock", "1s"][..]] {
        let out = env.coffer().arg("prune").args(extra).output().unwrap();
        assert_eq!(out.status.code(), Some(11), "{}", stderr_of(&out));
        let err = stderr_of(&out);
        assert!(err.contains("locked by backup (shared lock)") && err.contains(&format!("pid {pid}")), "{err}");
        assert!(err.contains(&held.record().host), "{err}");
    }
    let out = env.coffer().arg("unlock").output().unwrap();
    assert_eq!(out.status.code(), Some(11), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("in use"), "{}", stderr_of(&out));
    held.check().expect("unlock left the live lock alone");
    // A backup takes a shared lock beside it.
    env.write("g", b"more");
    backup_id(&env, &[]);
    held.release().unwrap();

    // The lock of a process of this machine that is gone is stale: backup
    // ignores it, and unlock removes it.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    repo.write_lock_record(&LockRecord::for_process(dead, true, "repair")).unwrap();
    backup_id(&env, &[]);
    let out = env.coffer().arg("unlock").output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("removed the stale lock of repair") && text.contains("is gone"), "{text}");
    assert!(repo.locks().unwrap().0.is_empty());
}

both_backends!(unlock_wait_removes_an_abandoned_lock_and_keeps_a_refreshed_one);

/// `unlock --wait` watches the locks for the stale time (shortened with the
/// hidden `--lock-stale-secs`): another machine's lock whose counter never
/// moves is removed, a lock whose holder keeps refreshing it is kept. Plain
/// `unlock` cannot judge the other machine's lock and keeps both.
fn unlock_wait_removes_an_abandoned_lock_and_keeps_a_refreshed_one(backend: Backend) {
    let env = Env::init_on(backend);
    let mut repo = open_repo(&env);
    // Refreshed every stale/6: several times while unlock watches, with
    // room for a loaded machine (the holder gives up after stale/2 without
    // a refresh).
    let stale = 12;
    repo.set_lock_settings(coffer_core::lock::LockSettings { stale: Duration::from_secs(stale), ..Default::default() });
    let held = repo.lock_shared("backup").unwrap();
    let mut abandoned = LockRecord::for_process(4242, false, "forget");
    abandoned.host = "another-machine".into();
    abandoned.boot_id = "another boot".into();
    // Its holder ran with the same short stale time: a lock records its
    // holder's, and watchers wait for the longer of theirs and that one.
    abandoned.stale_secs = stale;
    repo.write_lock_record(&abandoned).unwrap();

    let out = env.coffer().arg("unlock").output().unwrap();
    assert_eq!(out.status.code(), Some(11), "{}", stderr_of(&out));
    assert_eq!(repo.locks().unwrap().0.len(), 2, "without --wait neither lock is provably stale");

    let out = env.coffer().args(["--lock-stale-secs", &stale.to_string(), "unlock", "--wait"]).output().unwrap();
    assert_eq!(out.status.code(), Some(11), "the live lock is still there: {}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("removed the stale lock of forget") && text.contains("not refreshed"), "{text}");
    let err = stderr_of(&out);
    assert!(err.contains("kept the lock of backup") && err.contains("refreshed while watched"), "{err}");
    let left: Vec<String> = repo.locks().unwrap().0.iter().map(|l| l.name()).collect();
    assert_eq!(left, [held.record().name()], "only the refreshed lock is left");
    held.check().expect("the refreshed lock is still its holder's");
    held.release().unwrap();
    let out = env.coffer().args(["--lock-stale-secs", &stale.to_string(), "unlock", "--wait"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no locks"));
}

/// Waits until a process is stopped (state `T` in /proc).
fn wait_stopped(pid: u32) {
    for _ in 0..6000 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T')) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("process {pid} did not stop");
}

both_backends!(a_backup_stopped_past_the_stale_time_aborts_when_resumed);

fn a_backup_stopped_past_the_stale_time_aborts_when_resumed(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("photo.jpg", &random_bytes(1_500_000, 7));
    let first = backup_id(&env, &[]);
    std::fs::write(env.src.join("new.txt"), b"after the first snapshot").unwrap();
    // Frozen right after listing the packs, its view of the stored chunks
    // (it will reuse those of `first`) taken.
    let backup = env
        .coffer_process()
        .args(["--no-cache", "backup", "--parent", &first.to_hex()])
        .arg(&env.src)
        .env("COFFER_LOCK_STALE_SECS", "2")
        .env("COFFER_TEST_STOP_AFTER", "list:tree/")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_stopped(backup.id());
    std::fs::remove_file(env.repo.join(object_key(ObjectKind::Snapshot, &first))).unwrap();
    // Prune waits until it has seen the frozen backup's lock unchanged for
    // the stale time, then deletes what only `first` referenced.
    let out = env
        .coffer()
        .args(["prune", "--json", "--retry-lock", "5m"])
        .env("COFFER_LOCK_STALE_SECS", "2")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let pruned: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(pruned["chunks_deleted"].as_u64().unwrap() > 0, "{pruned}");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(backup.id() as i32), nix::sys::signal::Signal::SIGCONT).unwrap();
    let out = backup.wait_with_output().unwrap();
    assert!(!out.status.success(), "the resumed backup must abort");
    assert!(stderr_of(&out).contains("lock on the repository was lost"), "{}", stderr_of(&out));
    let repo = open_repo(&env);
    assert!(repo.snapshots().unwrap().is_empty(), "no snapshot was written");
    assert_exactly_reachable(&env);
}

both_backends!(soak_backups_against_prunes);

/// Backups of changing data in one process while prune loops in another.
/// `COFFER_SOAK_ROUNDS` makes it longer (default 4, for CI).
fn soak_backups_against_prunes(backend: Backend) {
    let rounds: u64 = std::env::var("COFFER_SOAK_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    let env = std::sync::Arc::new(Env::init_on(backend));
    env.write("keep.jpg", &random_bytes(800_000, 1));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pruner = {
        let env = env.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut prunes = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) || prunes == 0 {
                // Forget all but the newest snapshot, then prune.
                let repo = open_repo(&env);
                let snaps = repo.snapshots().unwrap();
                for (id, _) in snaps.iter().rev().skip(1) {
                    let _ = std::fs::remove_file(env.repo.join(object_key(ObjectKind::Snapshot, id)));
                }
                let out = env.coffer().args(["prune", "--retry-lock", "10m"]).output().unwrap();
                assert!(out.status.success(), "prune: {}", stderr_of(&out));
                prunes += 1;
            }
        })
    };
    let mut expected = BTreeMap::new();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for round in 0..rounds {
        xorshift(&mut x);
        env.write(&format!("f{}.bin", x % 5), &random_bytes(300_000 + (x % 700_000) as usize, x));
        if x.is_multiple_of(3) {
            let _ = std::fs::remove_file(env.src.join(format!("f{}.bin", (x >> 8) % 5)));
        }
        let out = env.coffer().args(["backup", "--json", "--retry-lock", "10m"]).arg(&env.src).output().unwrap();
        assert!(out.status.success(), "backup {round}: {}", stderr_of(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let id = report["snapshot_id"].as_str().and_then(Id::from_hex).unwrap();
        expected.insert(id, contents(&env.src));
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    pruner.join().unwrap();
    let repo = open_repo(&env);
    let (_trees, _chunks) = reachable_objects(&repo);
    let snaps = repo.snapshots().unwrap();
    assert!(!snaps.is_empty(), "the newest snapshot is never forgotten");
    for (id, _) in snaps {
        assert_eq!(restored_contents(&repo, &id, &env.src), expected[&id], "snapshot {id}");
    }
    let out = env.coffer().args(["check", "--read-data"]).output().unwrap();
    assert!(out.status.success(), "check --read-data after the soak: {}", stderr_of(&out));
}

/// Three snapshots, each holding one photo (of seed `seed`, `seed + 1`,
/// `seed + 2`) that no other snapshot has.
fn three_snapshots_of_a_photo_each(env: &Env, seed: u64) {
    for round in 0..3u64 {
        let _ = std::fs::remove_file(env.src.join(format!("photo{}.jpg", round.wrapping_sub(1))));
        env.write(&format!("photo{round}.jpg"), &random_bytes(900_000, round + seed));
        backup_id(env, &[]);
    }
}

/// The two JSON documents of `forget --prune --json`: forget's report, then
/// prune's.
fn forget_and_prune_reports(out: &std::process::Output) -> Vec<serde_json::Value> {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let docs: Vec<serde_json::Value> =
        serde_json::Deserializer::from_str(&text).into_iter().collect::<Result<_, _>>().expect("JSON documents");
    assert_eq!(docs.len(), 2, "forget's report, then prune's: {text}");
    docs
}

both_backends!(forget_with_prune_reclaims_what_the_forgotten_snapshots_alone_held);

/// `forget --keep-last 1 --prune`: the dry run counts what the removals would
/// free and changes nothing; the real run removes the snapshots, deletes
/// exactly the objects only they held, and the kept snapshot restores and
/// passes `check --read-data`.
fn forget_with_prune_reclaims_what_the_forgotten_snapshots_alone_held(backend: Backend) {
    let env = Env::init_on(backend);
    three_snapshots_of_a_photo_each(&env, 40);
    let kept_contents = contents(&env.src);
    let run = |extra: &[&str]| {
        let out = env.coffer().args(["forget", "--keep-last", "1", "--prune", "--json"]).args(extra).output().unwrap();
        assert!(out.status.success(), "forget --prune failed: {}", stderr_of(&out));
        forget_and_prune_reports(&out)
    };
    let repo = open_repo(&env);
    let chunks_before = repo.list_ids(ObjectKind::Chunk).unwrap().len();
    let dry = run(&["--dry-run"]);
    assert_eq!(dry[0]["removed"].as_array().unwrap().len(), 2, "{}", dry[0]);
    assert!(dry[1]["chunks_deleted"].as_u64().unwrap() >= 2, "the two older photos' chunks: {}", dry[1]);
    assert_eq!(repo.list_ids(ObjectKind::Snapshot).unwrap().len(), 3, "a dry run removes nothing");
    assert_eq!(repo.list_ids(ObjectKind::Chunk).unwrap().len(), chunks_before);

    let done = run(&[]);
    assert_eq!(done[1]["chunks_deleted"], dry[1]["chunks_deleted"], "the dry run foresaw it: {}", done[1]);
    assert_eq!(done[1]["trees_deleted"], dry[1]["trees_deleted"], "{}", done[1]);
    let snapshots = repo.list_ids(ObjectKind::Snapshot).unwrap();
    assert_eq!(snapshots.len(), 1);
    assert_exactly_reachable(&env);
    assert_eq!(restored_contents(&repo, &snapshots[0], &env.src), kept_contents);
    env.coffer().args(["check", "--read-data"]).assert().success();
}

both_backends!(two_machines_running_forget_prune_at_once_both_finish);

/// Two machines (each with a cache and a state of its own) run
/// `forget --keep-last 1 --prune` at once. The first is frozen right after
/// its prune listed the objects, holding its shared lock; the second
/// forgets nothing more, marks, and says it waits for the first instead of
/// failing or deleting under it. Resumed, the first finishes, and so does
/// the second; exactly the objects only the forgotten snapshots held are
/// gone, and the kept snapshot restores and passes `check --read-data`.
fn two_machines_running_forget_prune_at_once_both_finish(backend: Backend) {
    use std::io::BufRead;
    use std::process::Stdio;

    let env = Env::init_on(backend);
    three_snapshots_of_a_photo_each(&env, 60);
    let kept_contents = contents(&env.src);
    let repo = open_repo(&env);
    let chunks_before = repo.list_ids(ObjectKind::Chunk).unwrap().len();
    let trees_before = repo.list_ids(ObjectKind::Tree).unwrap().len();
    let forget_prune = |machine: &str| {
        let mut cmd = env.coffer_process();
        cmd.args(["forget", "--keep-last", "1", "--prune", "--json"])
            .env("COFFER_CACHE_DIR", env.path(&format!("{machine}-cache")))
            .env("COFFER_STATE_DIR", env.path(&format!("{machine}-state")))
            // Long enough that neither judges the other's lock stale, nor
            // the frozen one gives its own up; short polls between looks.
            .env("COFFER_LOCK_STALE_SECS", "120")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };

    let first = forget_prune("first").env("COFFER_TEST_STOP_AFTER", "list:tree/").spawn().unwrap();
    wait_stopped(first.id());
    assert_eq!(repo.list_ids(ObjectKind::Snapshot).unwrap().len(), 1, "the first forgot before it was frozen");
    let (locks, _) = repo.locks().unwrap();
    assert_eq!(locks.len(), 1, "the frozen prune's shared lock");
    assert!(!locks[0].exclusive && locks[0].operation == "prune", "{}", locks[0].describe());

    let mut second = forget_prune("second").spawn().unwrap();
    let stderr = second.stderr.take().unwrap();
    let (waiting_tx, waiting_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if line.contains("waiting for the lock of prune") {
                let _ = waiting_tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    // Not a timing assertion: only a bound on a hang.
    if waiting_rx.recv_timeout(Duration::from_secs(600)).is_err() {
        let _ = second.kill();
        panic!("the second prune never waited for the first: {}", reader.join().unwrap());
    }
    assert!(second.try_wait().unwrap().is_none(), "the second prune waits, it does not give up");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first.id() as i32), nix::sys::signal::Signal::SIGCONT).unwrap();
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "first: {}", stderr_of(&first));
    let second_out = second.wait_with_output().unwrap();
    let second_err = reader.join().unwrap();
    assert!(second_out.status.success(), "second: {second_err}");

    let (a, b) = (forget_and_prune_reports(&first), forget_and_prune_reports(&second_out));
    assert_eq!(a[0]["removed"].as_array().unwrap().len(), 2, "{}", a[0]);
    assert_eq!(b[0]["removed"].as_array().unwrap().len(), 0, "{}", b[0]);
    // Both marked the same single snapshot, so both saw the same garbage;
    // whichever deleted it first, it is gone exactly once.
    let chunks_deleted = a[1]["chunks_deleted"].as_u64().unwrap();
    assert!(chunks_deleted >= 2, "the two older photos' chunks: {}", a[1]);
    assert_eq!(b[1]["chunks_deleted"], a[1]["chunks_deleted"], "{} {}", a[1], b[1]);
    assert_eq!(b[1]["trees_deleted"], a[1]["trees_deleted"], "{} {}", a[1], b[1]);
    let trees_deleted = a[1]["trees_deleted"].as_u64().unwrap() as usize;
    assert_eq!(repo.list_ids(ObjectKind::Chunk).unwrap().len(), chunks_before - chunks_deleted as usize);
    assert_eq!(repo.list_ids(ObjectKind::Tree).unwrap().len(), trees_before - trees_deleted);
    assert_exactly_reachable(&env);
    assert!(repo.locks().unwrap().0.is_empty(), "no lock left behind");
    let snapshots = repo.list_ids(ObjectKind::Snapshot).unwrap();
    assert_eq!(snapshots.len(), 1);
    assert_eq!(restored_contents(&repo, &snapshots[0], &env.src), kept_contents);
    env.coffer().args(["check", "--read-data"]).assert().success();
}
