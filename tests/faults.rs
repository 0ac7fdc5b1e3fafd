//! Backup, restore and check through a store that fails at random: a share
//! of every put, get, list and delete fails (transient or permanent), comes
//! back truncated or with a bit flipped, or hangs far past the request
//! timeout. On a local folder and on the in-process S3 server alike:
//!
//! - a backup completes through retries, or fails with an error naming
//!   what failed;
//! - afterwards, with the faults gone, `check --read-data` finds nothing,
//!   every snapshot restores byte-identical, and the next backup uploads
//!   only the chunks the repository does not hold yet;
//! - restore and check under faults retry or fail clearly, and never
//!   return wrong data.
//!
//! Seeds and rates are printed; `COFFER_SOAK=1` runs more seeds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_core::archiver::{self, BackupOptions};
use coffer_core::backend::retry::{RetryBackend, RetryPolicy};
use coffer_core::backend::testing::{FaultBackend, FaultKind, RandomFaults};
use coffer_core::check::{self, ReadData};
use coffer_core::crypto::ObjectKind;
use coffer_core::progress::NoProgress;
use coffer_core::restorer::{self, RestoreOptions};
use coffer_core::{Id, Repository};

use crate::backend_wrappers::cheap_init;
use crate::common::{Backend, Env, both_backends, contents, random_bytes, restored_contents};

/// Retries as in production but quicker: a hung request is abandoned
/// after 300 ms instead of half an hour.
pub fn quick_policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 6,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(40),
        timeout: Duration::from_millis(300),
    }
}

/// Whether the longer runs are asked for (`COFFER_SOAK=1`).
pub fn soak() -> bool {
    std::env::var_os("COFFER_SOAK").is_some_and(|v| v != "0" && !v.is_empty())
}

/// A repository in `env` whose every request goes through random faults
/// (off until set) and then the retry layer.
fn faulty_repo(env: &Env) -> (Arc<FaultBackend>, Repository) {
    let faulty = Arc::new(FaultBackend::new(env.library_backend()));
    let layered = Arc::new(RetryBackend::new(faulty.clone(), quick_policy()));
    let options = coffer_core::repo::InitOptions { data_pack_size: 4 << 20, ..cheap_init() };
    let repo = Repository::init(layered, b"pw", &options).expect("init");
    (faulty, repo)
}

/// Adds the files of round `round`: a dozen one-chunk files (300 kB,
/// several 4 MiB packs over the rounds) and a few small ones in a folder of
/// their own.
fn add_files(env: &Env, round: u64) {
    for i in 0..8u64 {
        env.write(&format!("r{round:02}/photo-{i}.jpg"), &random_bytes(300_000, round * 100 + i));
    }
    for i in 0..4u64 {
        env.write(&format!("r{round:02}/notes/n{i}.txt"), format!("round {round} note {i}").as_bytes());
    }
}

/// [`contents`] of a folder a failed restore may not have made.
fn contents_or_empty(dir: &std::path::Path) -> BTreeMap<PathBuf, Vec<u8>> {
    if dir.exists() { contents(dir) } else { BTreeMap::new() }
}

/// What the faults did to one command, for the table in the summary.
#[derive(Default)]
struct Tally {
    rounds: usize,
    failed: usize,
    injected: usize,
}

/// An error a person can act on: it names an object or a store, never a
/// bare "error".
fn assert_clear(what: &str, e: &coffer_core::Error) {
    let text = e.to_string();
    let named = ["data/", "tree/", "index/", "snapshots/", "locks/", "keys/", "config", "damaged", "lock"]
        .iter()
        .any(|w| text.contains(w));
    assert!(named, "{what} failed without naming what: {text}");
}

/// Every snapshot restores as its files were, `check --read-data` finds
/// nothing, and the blob set holds what it held.
fn assert_intact(repo: &Repository, env: &Env, expected: &[(Id, BTreeMap<PathBuf, Vec<u8>>)]) {
    let report = check::check(repo, ReadData::All).expect("check --read-data");
    assert!(report.damage.is_empty(), "check found damage: {:?}", report.damage);
    let listed = repo.list_ids(ObjectKind::Snapshot).expect("list snapshots");
    assert_eq!(listed.len(), expected.len(), "snapshots in the repository");
    for (id, files) in expected {
        assert_eq!(&restored_contents(repo, id, &env.src), files, "snapshot {id} restores byte-identical");
    }
}

/// Rounds of: faults on, a backup of new files; faults off, the checks,
/// and a clean backup that must upload only what is missing.
fn backups_through_faults(backend: Backend, kinds: &[FaultKind], rates: &[f64]) -> Tally {
    let env = &Env::new_on(backend);
    let (faulty, repo) = faulty_repo(env);
    let options = BackupOptions { paths: vec![env.src.clone()], ..Default::default() };
    let seeds: u64 = if soak() { 12 } else { 4 };
    let mut expected = Vec::new();
    let mut tally = Tally::default();
    let mut round = 0;
    for &rate in rates {
        for seed in 1..=seeds {
            round += 1;
            add_files(env, round);
            let wanted = contents(&env.src);
            let seed = seed * 1000 + (rate * 100.0) as u64;
            faulty.set_random(RandomFaults::new(seed, rate, kinds));
            let before = faulty.injected();
            let outcome = archiver::backup(&repo, &options, &NoProgress);
            faulty.clear();
            let injected = faulty.injected() - before;
            tally.rounds += 1;
            tally.injected += injected;
            eprintln!(
                "{backend:?} seed {seed} rate {rate}: {injected} faults, backup {}",
                match &outcome {
                    Ok(_) => "completed".to_string(),
                    Err(e) => format!("failed: {e}"),
                }
            );
            let completed = outcome.is_ok();
            match outcome {
                Ok(o) => expected.push((o.snapshot_id.expect("a snapshot"), wanted.clone())),
                Err(e) => {
                    assert_clear("backup", &e);
                    tally.failed += 1;
                }
            }
            assert_intact(&repo, env, &expected);

            // The next backup uploads exactly the chunks still missing.
            let stored = repo.reload_blob_set().expect("load the index").ids(ObjectKind::Chunk).len();
            let next = archiver::backup(&repo, &options, &NoProgress).expect("backup without faults");
            let after = repo.reload_blob_set().expect("load the index").ids(ObjectKind::Chunk).len();
            let added = next.snapshot.summary.chunks_added as usize;
            assert_eq!(added, after - stored, "the clean backup uploaded a chunk the repository held");
            if completed {
                assert_eq!(added, 0, "after a completed backup nothing is missing");
            }
            expected.push((next.snapshot_id.expect("a snapshot"), wanted));
        }
    }
    assert_intact(&repo, env, &expected);
    tally
}

fn report(suite: &str, backend: Backend, started: Instant, t: &Tally) {
    eprintln!(
        "FAULTS {suite} {backend:?}: {} rounds, {} faults injected, {} backups failed clearly, 0 data lost, {:.1} s",
        t.rounds,
        t.injected,
        t.failed,
        started.elapsed().as_secs_f64()
    );
}

both_backends!(backup_survives_transient_faults);

/// Faults a retrying client must get through: transient errors, hangs,
/// truncated and bit-flipped reads at 5 % and 20 % of every request. The
/// backups complete (each request has 6 attempts; a damaged read is read
/// again).
fn backup_survives_transient_faults(backend: Backend) {
    let started = Instant::now();
    let t = backups_through_faults(backend, &FaultKind::PASSING, &[0.05, 0.2]);
    report("transient", backend, started, &t);
    assert!(t.injected >= 20, "the faults were exercised: {}", t.injected);
    // A backup still fails if the same read is damaged twice in a row or a
    // request fails six times: rare at these rates, and then clearly.
    assert!(t.failed <= t.rounds / 2, "{} of {} backups failed", t.failed, t.rounds);
}

both_backends!(backup_fails_clearly_on_permanent_faults);

/// Every kind, permanent errors included, at 2 % and 10 %: a backup that
/// meets a permanent error fails naming the object, and leaves nothing a
/// later backup or restore trips over.
fn backup_fails_clearly_on_permanent_faults(backend: Backend) {
    let started = Instant::now();
    let t = backups_through_faults(backend, &FaultKind::ALL, &[0.02, 0.1]);
    report("permanent", backend, started, &t);
    assert!(t.injected >= 10, "the faults were exercised: {}", t.injected);
}

both_backends!(restore_and_check_under_faults_never_return_wrong_data);

/// Restore and `check --read-data` of a sound repository through every
/// kind of fault: each either succeeds with the right bytes, or reports
/// a problem clearly; none writes a wrong byte or calls sound data damaged
/// without a failing read behind it.
fn restore_and_check_under_faults_never_return_wrong_data(backend: Backend) {
    let started = Instant::now();
    let env = &Env::new_on(backend);
    let (faulty, repo) = faulty_repo(env);
    add_files(env, 1);
    add_files(env, 2);
    let wanted = contents(&env.src);
    let options = BackupOptions { paths: vec![env.src.clone()], ..Default::default() };
    let snap = archiver::backup(&repo, &options, &NoProgress).expect("backup").snapshot;
    let seeds: u64 = if soak() { 16 } else { 6 };
    let (mut failed, mut injected) = (0, 0);
    for seed in 1..=seeds {
        let (kinds, rate): (&[FaultKind], f64) =
            if seed % 2 == 0 { (&FaultKind::ALL, 0.05) } else { (&FaultKind::PASSING, 0.2) };
        faulty.set_random(RandomFaults::new(seed, rate, kinds));
        let before = faulty.injected();
        let target = env.path(&format!("restored-{seed}"));
        let restored = restorer::restore(
            &repo,
            &snap.tree,
            &RestoreOptions { target: target.clone(), ..Default::default() },
            &NoProgress,
        );
        let checked = check::check(&repo, ReadData::All);
        faulty.clear();
        injected += faulty.injected() - before;
        match restored {
            Ok(outcome) => {
                let got = contents_or_empty(&env.restored_src(&target));
                let bad: Vec<&PathBuf> = outcome.problems.iter().map(|p| &p.path).collect();
                if !bad.is_empty() {
                    eprintln!("seed {seed}: restore reported {:?}", outcome.problems);
                }
                let root = env.restored_src(&target);
                for (path, data) in &wanted {
                    // A file reported, or in a folder reported, is not checked.
                    let full = root.join(path);
                    if bad.iter().any(|b| full.starts_with(b) || b.ends_with(path) || b.as_path() == env.src) {
                        continue;
                    }
                    assert_eq!(got.get(path), Some(data), "seed {seed}: {} restored wrong", path.display());
                }
                if !outcome.problems.is_empty() {
                    failed += 1;
                }
            }
            Err(e) => {
                assert_clear("restore", &e);
                failed += 1;
            }
        }
        match checked {
            Ok(report) if !report.damage.is_empty() => {
                // Damage is only ever reported after a read that failed or
                // was damaged twice: never for a pack that is sound, which
                // the clean check below confirms.
                eprintln!("seed {seed}: check under faults reported {:?}", report.damage);
                failed += 1;
            }
            Ok(_) => {}
            Err(e) => {
                assert_clear("check", &e);
                failed += 1;
            }
        }
        let clean = check::check(&repo, ReadData::All).expect("check without faults");
        assert!(clean.damage.is_empty(), "{:?}", clean.damage);
    }
    eprintln!(
        "FAULTS restore+check {backend:?}: {seeds} rounds, {injected} faults injected, {failed} commands failed \
         clearly, 0 data lost, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(injected >= 10, "the faults were exercised: {injected}");
}

/// `dump` reads a chunk that fails to authenticate once more, as restore
/// does: one bit flipped on the way costs a second read, not the file. A
/// chunk damaged at rest (every read of it flipped) still fails, naming it.
#[test]
fn dump_reads_a_chunk_damaged_on_the_way_again() {
    use coffer_core::backend::testing::{Fault, Op};
    use coffer_core::dump::{self, DumpOptions};
    let env = Env::new();
    let (faulty, repo) = faulty_repo(&env);
    let data = random_bytes(2_500_000, 5);
    env.write("big.bin", &data);
    let options = BackupOptions { paths: vec![env.src.clone()], ..Default::default() };
    archiver::backup(&repo, &options, &NoProgress).expect("backup");
    let (_, snap) = repo.find_snapshot("latest").expect("the snapshot");
    let path = std::fs::canonicalize(env.src.join("big.bin")).expect("canonical path");
    let what = dump::find(&repo, &snap.tree, &path).expect("find the file");
    let one_at_a_time = DumpOptions { concurrency: 1, max_bytes_in_flight: 1 };

    faulty.add(Fault::first(Op::Get, "data/", 1, FaultKind::BitFlip));
    let mut got = Vec::new();
    dump::write(&repo, &what, &mut got, &one_at_a_time).expect("dump through one flipped read");
    assert_eq!(faulty.injected(), 1);
    assert!(got == data, "dump returned other bytes");

    faulty.clear();
    faulty.add(Fault::always(Op::Get, "data/", FaultKind::BitFlip));
    let mut got = Vec::new();
    let e = dump::write(&repo, &what, &mut got, &one_at_a_time).expect_err("a chunk damaged at rest");
    assert!(matches!(e, coffer_core::Error::Corrupt { .. }), "{e}");
    assert!(faulty.injected() >= 2, "read once more before failing");
    assert!(got.len() < data.len() && data.starts_with(&got), "only intact bytes were written before the failure");
}
