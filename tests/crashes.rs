//! SIGKILL of the real binary at random moments: `backup` on a local
//! folder and on the in-process S3 server, `prune` mid-repack and
//! mid-delete. After each kill `check` passes, the snapshots restore
//! byte-identical, and the next command completes (a backup reusing the
//! packs the killed one uploaded).
//!
//! Delays come from a seed that is printed; `COFFER_SOAK=1` runs more rounds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use coffer_core::Id;
use coffer_core::crypto::ObjectKind;

use crate::common::{Backend, Env, contents, open_repo, random_bytes, restored_contents, xorshift};
use crate::faults::soak;

/// The binary as a plain process, pointed at the environment's repository,
/// its output out of the way.
fn process(env: &Env) -> std::process::Command {
    let mut cmd = env.coffer_process();
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// A new repository with small (4 MiB) data packs, so that a backup or
/// prune of a few MiB spans several packs.
fn small_pack_env(backend: Backend) -> Env {
    let env = Env::new_on(backend);
    env.coffer()
        .args(["init", "--argon2-memory", "64", "--argon2-iterations", "1", "--pack-size", "4M"])
        .assert()
        .success();
    env
}

fn kill(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
}

/// Runs the process for `delay`, then kills it; whether it had finished.
fn run_then_kill(mut cmd: std::process::Command, delay: Duration) -> bool {
    let mut child = cmd.spawn().expect("spawn coffer");
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "the command failed before it was killed");
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let finished = matches!(child.try_wait(), Ok(Some(_)));
    kill(&mut child);
    finished
}

fn assert_check(env: &Env, what: &str) {
    let out = env.coffer().arg("check").output().expect("run check");
    assert!(out.status.success(), "{what}: check failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Restores each snapshot in `which` and compares it with what was backed up.
fn assert_restores(env: &Env, expected: &BTreeMap<Id, BTreeMap<PathBuf, Vec<u8>>>, which: &[Id]) {
    let repo = open_repo(env);
    let listed = repo.list_ids(ObjectKind::Snapshot).expect("list snapshots");
    for id in which {
        assert!(listed.contains(id), "snapshot {id} is gone");
        assert_eq!(&restored_contents(&repo, id, &env.src), &expected[id], "snapshot {id} restores byte-identical");
    }
}

/// The snapshot ids in the repository.
fn snapshot_ids(env: &Env) -> Vec<Id> {
    open_repo(env).list_ids(ObjectKind::Snapshot).expect("list snapshots")
}

fn stored_chunks(env: &Env) -> usize {
    open_repo(env).reload_blob_set().expect("load the index").ids(ObjectKind::Chunk).len()
}

/// Replaces the source with three new 3 MB files (several 4 MiB packs).
fn new_source(env: &Env, round: u64) {
    let _ = std::fs::remove_dir_all(&env.src);
    std::fs::create_dir_all(&env.src).expect("make src");
    for i in 0..3u64 {
        env.write(&format!("photo-{i}.jpg"), &random_bytes(3_000_000, round * 10 + i));
    }
    env.write("notes/today.txt", format!("round {round}").as_bytes());
}

crate::common::both_backends!(backup_survives_sigkill);

/// Rounds of: new files; a backup killed after a random delay (up to what
/// a whole backup takes) or right after its first pack upload; check; the snapshots restore; a backup
/// that completes, storing fewer chunks than a fresh one when the killed
/// backup had uploaded some.
fn backup_survives_sigkill(backend: Backend) {
    let started = Instant::now();
    let env = &small_pack_env(backend);
    let seed = 0x00c0_ffee_u64 + backend as u64;
    let rounds = if soak() { 60 } else { 20 };
    eprintln!("backup crashes on {backend:?}: seed {seed:#x}, {rounds} rounds");
    let mut x = seed;
    let mut expected = BTreeMap::new();
    // A whole backup's duration, to spread the kills over.
    new_source(env, 0);
    let timer = Instant::now();
    env.coffer().arg("backup").arg(&env.src).assert().success();
    let whole = timer.elapsed();
    let first = snapshot_ids(env);
    expected.insert(first[0], contents(&env.src));
    let (mut finished, mut reused_rounds) = (0, 0);
    for round in 1..=rounds {
        new_source(env, round);
        let wanted = contents(&env.src);
        let before = snapshot_ids(env);
        let chunks_before = stored_chunks(env);
        let delay = whole.mul_f64((xorshift(&mut x) % 1000) as f64 / 1000.0);
        let mut cmd = process(env);
        cmd.arg("backup").arg(&env.src);
        // Every other round is stopped right after its first data pack is
        // stored, so that the reuse of a killed backup's packs is tested
        // every time, whatever the machine's speed; the others at random.
        let done = if round % 2 == 1 {
            cmd.env("COFFER_TEST_STOP_AFTER", "put:data/");
            let mut child = cmd.spawn().expect("spawn backup");
            let stopped = wait_stopped(&mut child);
            kill(&mut child);
            !stopped
        } else {
            run_then_kill(cmd, delay)
        };
        finished += usize::from(done);
        // A finished backup made a snapshot, of these files.
        for id in snapshot_ids(env).into_iter().filter(|id| !before.contains(id)) {
            expected.insert(id, wanted.clone());
        }
        let left = stored_chunks(env) - chunks_before;
        assert_check(env, &format!("round {round}, killed after {delay:?}"));
        // The next backup completes and stores only what the killed one did not.
        let report = env.backup_json(&[]);
        let added = report["chunks_added"].as_u64().unwrap_or_else(|| panic!("chunks_added in {report}")) as usize;
        let total = stored_chunks(env) - chunks_before;
        assert_eq!(added, total - left, "round {round}: the backup stored again {left} chunks the killed one left");
        if left > 0 && !done {
            reused_rounds += 1;
        }
        let now = snapshot_ids(env);
        let id = *now.iter().find(|id| !expected.contains_key(id)).expect("the new snapshot");
        expected.insert(id, wanted);
        // The newest snapshots restore (every snapshot does at the end).
        assert_restores(env, &expected, &[id, *now.first().expect("snapshots")]);
    }
    let all: Vec<Id> = expected.keys().copied().collect();
    assert_restores(env, &expected, &all);
    env.coffer().args(["check", "--read-data"]).assert().success();
    eprintln!(
        "CRASHES backup {backend:?}: {rounds} rounds, {} killed mid-backup, {reused_rounds} left packs the next \
         backup reused, 0 data lost, {:.1} s",
        rounds as usize - finished,
        started.elapsed().as_secs_f64()
    );
    assert!(reused_rounds >= rounds as usize / 2, "only {reused_rounds} kills left packs to reuse");
}

crate::common::both_backends!(prune_survives_sigkill);

/// Where prune is stopped and killed: `COFFER_TEST_STOP_AFTER` freezes it
/// right after the first such request (then it is killed), or `None`: a
/// random delay.
const PRUNE_POINTS: [Option<&str>; 5] =
    [Some("put:data/"), Some("put:index/"), Some("delete:index/"), Some("delete:data/"), None];

/// Rounds of: a backup of a kept file and sixteen small ones that are then
/// deleted, a backup without them, `forget --keep-last 1` (the first
/// backup's packs are mostly garbage: repacked), and a prune killed mid-repack
/// (after its first new pack), after its new index, mid-delete of index
/// objects or of packs, or after a random delay. Then check passes, the
/// snapshot restores, and a further prune completes.
fn prune_survives_sigkill(backend: Backend) {
    let started = Instant::now();
    let env = &small_pack_env(backend);
    let rounds = if soak() {
        40
    } else if backend == Backend::Local {
        20
    } else {
        10
    };
    let seed = 0x0bad_5eed_u64 + backend as u64;
    eprintln!("prune crashes on {backend:?}: seed {seed:#x}, {rounds} rounds");
    let mut x = seed;
    let mut hit = [0usize; 5];
    let mut expected = BTreeMap::new();
    for round in 0..rounds {
        env.write(&format!("keep/k{round}.jpg"), &random_bytes(700_000, 5000 + round));
        // Sixteen small files of garbage-to-be: each lands in one of the
        // two packs being filled at random, so the kept file's pack holds
        // some of them (and is repacked) but with odds of 2^-16 against.
        for i in 0..16u64 {
            env.write(&format!("tmp/t{i}.jpg"), &random_bytes(100_000, 6000 + round * 100 + i));
        }
        env.coffer().arg("backup").arg(&env.src).assert().success();
        std::fs::remove_dir_all(env.src.join("tmp")).expect("remove tmp");
        env.coffer().arg("backup").arg(&env.src).assert().success();
        let wanted = contents(&env.src);
        env.coffer().args(["forget", "--keep-last", "1"]).assert().success();
        let kept = snapshot_ids(env);
        assert_eq!(kept.len(), 1);
        expected.insert(kept[0], wanted);

        let point = (round as usize) % PRUNE_POINTS.len();
        let mut cmd = process(env);
        cmd.arg("prune");
        let stopped = match PRUNE_POINTS[point] {
            Some(spec) => {
                cmd.env("COFFER_TEST_STOP_AFTER", spec);
                let mut child = cmd.spawn().expect("spawn prune");
                let stopped = wait_stopped(&mut child);
                kill(&mut child);
                stopped
            }
            None => {
                let delay = Duration::from_millis(xorshift(&mut x) % 150);
                !run_then_kill(cmd, delay)
            }
        };
        hit[point] += usize::from(stopped);
        assert_check(env, &format!("round {round}, prune killed at {:?}", PRUNE_POINTS[point]));
        assert_restores(env, &expected, &kept);
        env.coffer().arg("prune").assert().success();
        assert_check(env, &format!("round {round}, after the next prune"));
        assert_restores(env, &expected, &kept);
    }
    env.coffer().args(["check", "--read-data"]).assert().success();
    eprintln!(
        "CRASHES prune {backend:?}: {rounds} rounds; killed mid-repack {}, after the new index {}, mid-delete of \
         index objects {}, mid-delete of packs {}, at a random moment {}; 0 data lost, {:.1} s",
        hit[0],
        hit[1],
        hit[2],
        hit[3],
        hit[4],
        started.elapsed().as_secs_f64()
    );
    let rounds_each = rounds as usize / PRUNE_POINTS.len();
    for (i, n) in hit.iter().enumerate().take(4) {
        assert_eq!(*n, rounds_each, "prune was not stopped at {:?} every time", PRUNE_POINTS[i]);
    }
}

/// Waits until the child stops itself (SIGSTOP from the test hook); false
/// if it exits first.
fn wait_stopped(child: &mut Child) -> bool {
    let stat = format!("/proc/{}/stat", child.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(s) = std::fs::read_to_string(&stat)
            && let Some(state) = s.rsplit(')').next().and_then(|r| r.split_whitespace().next())
            && state == "T"
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

crate::common::both_backends!(repair_survives_sigkill);

/// Runs `args` frozen by the test hook right after its first `point`
/// request, then kills it; asserts it got there.
fn kill_at(env: &Env, args: &[&str], point: &str) {
    let mut child = process(env).args(args).env("COFFER_TEST_STOP_AFTER", point).spawn().expect("spawn coffer");
    let stopped = wait_stopped(&mut child);
    kill(&mut child);
    assert!(stopped, "{args:?} never reached {point}");
}

/// `repair index` killed after writing its first new index object and
/// after deleting its first old one, and `repair packs` killed after
/// storing its first salvage pack and after deleting its first damaged one:
/// after each kill `check` finds nothing wrong (but, once the new index of
/// `repair packs` is written, the chunk that was lost) and every snapshot
/// restores as before (but the damaged file); the repair run again
/// completes, and after `repair packs` the next backup stores the lost
/// chunk again and everything checks and restores.
fn repair_survives_sigkill(backend: Backend) {
    let env = &Env::init_on(backend);
    env.write("keep/a.jpg", &random_bytes(600_000, 71));
    env.coffer().arg("backup").arg(&env.src).assert().success();
    let first = snapshot_ids(env)[0];
    let mut expected = BTreeMap::new();
    expected.insert(first, contents(&env.src));
    // Sixteen small files in one backup, so that the pack holding the one
    // to be damaged holds others that a repair salvages (odds 2^-15 against).
    for i in 0..16u64 {
        env.write(&format!("more/m{i}.jpg"), &random_bytes(60_000, 80 + i));
    }
    env.coffer().arg("backup").arg(&env.src).assert().success();
    let second = *snapshot_ids(env).iter().find(|id| **id != first).expect("the second snapshot");
    expected.insert(second, contents(&env.src));
    let mut all = vec![first, second];

    for (round, point) in ["put:index/", "delete:index/"].into_iter().enumerate() {
        // A backup of one more file adds an index object, so that the
        // repair has old objects to replace.
        env.write(&format!("keep/b{round}.jpg"), &random_bytes(50_000, 90 + round as u64));
        env.coffer().arg("backup").arg(&env.src).assert().success();
        let id = *snapshot_ids(env).iter().find(|id| !all.contains(id)).expect("the new snapshot");
        expected.insert(id, contents(&env.src));
        all.push(id);
        kill_at(env, &["repair", "index"], point);
        assert_check(env, &format!("repair index killed at {point}"));
        assert_restores(env, &expected, &all);
        env.coffer().args(["repair", "index"]).assert().success();
        assert_check(env, &format!("repair index after a kill at {point}"));
    }

    let repo = open_repo(env);
    let node = crate::common::snapshot_node(&repo, &second.to_hex(), &env.src.join("more/m3.jpg"));
    let blob = crate::common::stored_blob(&repo, ObjectKind::Chunk, &node.content[0].0);
    drop(repo);
    blob.flip(&env.repo, blob.length / 2);
    let lost_chunk = node.content[0].0.to_hex();
    let lost = PathBuf::from("more/m3.jpg");
    for point in ["put:data/", "delete:data/"] {
        kill_at(env, &["repair", "packs"], point);
        // Nothing is damaged or missing but the chunk that was lost (missing
        // once the repair's new index no longer names the damaged pack).
        let out = env.coffer().args(["check", "--json"]).output().expect("run check");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check JSON");
        for d in report["damage"].as_array().expect("damage list") {
            assert_eq!(
                (d["kind"].as_str(), d["id"].as_str()),
                (Some("chunk"), Some(lost_chunk.as_str())),
                "{point}: {report:#}"
            );
        }
        // Everything but the damaged file restores as it was backed up.
        let repo = open_repo(env);
        let target = tempfile::tempdir().expect("restore target");
        let snap = repo.load_snapshot(&second).expect("load snapshot");
        let options = coffer_core::restorer::RestoreOptions {
            target: target.path().to_path_buf(),
            includes: vec![env.src.clone()],
            ..Default::default()
        };
        let _ = coffer_core::restorer::restore(&repo, &snap.tree, &options, &coffer_core::progress::NoProgress);
        let back = contents(&target.path().join(env.src.strip_prefix("/").expect("absolute src")));
        let mut want = expected[&second].clone();
        want.remove(&lost);
        let mut got = back.clone();
        got.remove(&lost);
        assert_eq!(got, want, "repair packs killed at {point}: the intact files");
        if let Some(data) = back.get(&lost) {
            assert!(*data == expected[&second][&lost], "the damaged file came back with other bytes");
        }
    }
    env.coffer().args(["repair", "packs"]).assert().success();
    env.coffer().arg("backup").arg(&env.src).assert().success();
    env.coffer().args(["check", "--read-data"]).assert().success();
    let latest = *snapshot_ids(env).iter().find(|id| !all.contains(id)).expect("the new snapshot");
    // The snapshots from before the damage lack the lost chunk (a repair
    // of snapshots would drop that file from them); the new one is whole.
    expected.insert(latest, contents(&env.src));
    assert_restores(env, &expected, &[first, latest]);
}
