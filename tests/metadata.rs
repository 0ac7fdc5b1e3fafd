//! The local metadata cache (trees and snapshots, re-authenticated on every
//! read; which snapshots exist always comes from a fresh listing) and the
//! per-host state that notices snapshots vanishing without a forget from
//! here, and config or keys changing.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use assert_cmd::Command;
use coffer_core::crypto::ObjectKind;
use coffer_core::repo::object_key;
use coffer_core::{Id, Repository};

use crate::common::s3::{self, S3Server};
use crate::common::{Backend, Env, PASSWORD, both_backends, open_repo, snapshots_json, stderr_of};

const INIT: [&str; 5] = ["init", "--argon2-memory", "64", "--argon2-iterations", "1"];

fn snapshot_ids(env: &Env) -> Vec<Id> {
    snapshots_json(env).iter().map(|s| s["id"].as_str().and_then(Id::from_hex).expect("id")).collect()
}

fn cache_dir(env: &Env, repo: &Repository) -> std::path::PathBuf {
    env.path("cache").join(repo.repo_id().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

both_backends!(trees_are_cached_and_checked_on_every_read);

fn trees_are_cached_and_checked_on_every_read(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("a/photo.jpg", &crate::common::random_bytes(200_000, 3));
    let id = env.backup_json(&[])["snapshot_id"].as_str().and_then(Id::from_hex).unwrap();
    let repo = open_repo(&env);
    let snap = repo.load_snapshot(&id).unwrap();
    let cache = cache_dir(&env, &repo);
    env.coffer().args(["ls", "latest"]).assert().success();
    let cached_tree = cache.join(object_key(ObjectKind::Tree, &snap.tree));
    let cached_snap = cache.join(object_key(ObjectKind::Snapshot, &id));
    let stored_snap = std::fs::read(env.repo.join(object_key(ObjectKind::Snapshot, &id))).unwrap();
    assert_eq!(std::fs::read(&cached_snap).unwrap(), stored_snap, "the snapshot, cached when the backup wrote it");
    let root_blob = crate::common::stored_blob(&repo, ObjectKind::Tree, &snap.tree);
    let stored_tree = root_blob.read(&env.repo);
    assert_eq!(std::fs::read(&cached_tree).unwrap(), stored_tree, "the stored bytes, as fetched");

    // A damaged copy is noticed, dropped and fetched again.
    let mut bad = stored_tree.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(&cached_tree, &bad).unwrap();
    let listing = env.coffer().args(["ls", "latest"]).output().unwrap();
    assert!(listing.status.success(), "{}", stderr_of(&listing));
    assert!(String::from_utf8_lossy(&listing.stdout).contains("photo.jpg"));
    assert_eq!(std::fs::read(&cached_tree).unwrap(), stored_tree);

    // Reads do come from the cache: with the repository's copy of the root
    // tree gone (its pack), the cached one still serves; --no-cache reads
    // the repository and reports the loss.
    let moved = env.path("moved-tree");
    std::fs::rename(root_blob.pack_file(&env.repo), &moved).unwrap();
    env.coffer().args(["ls", "latest"]).assert().success();
    let out = env.coffer().args(["--no-cache", "ls", "latest"]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("missing"), "{}", stderr_of(&out));
    std::fs::rename(&moved, root_blob.pack_file(&env.repo)).unwrap();

    // A snapshot removed by another machine is gone at once.
    std::fs::remove_file(env.repo.join(object_key(ObjectKind::Snapshot, &id))).unwrap();
    assert!(snapshot_ids(&env).is_empty());
    assert!(!cached_snap.exists(), "a cached snapshot that is no longer listed is dropped");
}

both_backends!(a_snapshot_vanishing_without_a_local_forget_is_reported);

fn a_snapshot_vanishing_without_a_local_forget_is_reported(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("f", b"one");
    env.backup_json(&[]);
    env.write("f", b"two");
    env.backup_json(&[]);
    let ids = snapshot_ids(&env);
    assert_eq!(ids.len(), 2);
    let out = env.coffer().args(["snapshots"]).output().unwrap();
    assert!(!stderr_of(&out).contains("WARNING"), "{}", stderr_of(&out));
    // The storage is rolled back to before the second backup.
    std::fs::remove_file(env.repo.join(object_key(ObjectKind::Snapshot, &ids[1]))).unwrap();
    let out = env.coffer().args(["snapshots"]).output().unwrap();
    assert!(out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("WARNING") && err.contains(&ids[1].to_hex()) && err.contains("rolled back"), "{err}");
    // Reported once; a snapshot forgotten through the library's hook is not
    // reported at all.
    let out = env.coffer().args(["snapshots"]).output().unwrap();
    assert!(!stderr_of(&out).contains("WARNING"), "{}", stderr_of(&out));
    let repo = open_repo(&env).with_state(&env.path("state"));
    repo.forgotten(&[ids[0]]);
    std::fs::remove_file(env.repo.join(object_key(ObjectKind::Snapshot, &ids[0]))).unwrap();
    let out = env.coffer().args(["snapshots"]).output().unwrap();
    assert!(!stderr_of(&out).contains("WARNING"), "{}", stderr_of(&out));
}

/// The one repository folder under a cache base.
fn only_repository_dir(base: &std::path::Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(base)
        .expect("cache base")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n.len() == 64))
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// `snapshots --json` through `cmd`: (id, tags) oldest first, the snapshot
/// objects the server was asked for meanwhile, and standard error.
fn listed(mut cmd: Command, snapshot_gets: &AtomicUsize) -> (Vec<(String, String)>, usize, String) {
    let before = snapshot_gets.load(Ordering::SeqCst);
    let out = cmd.args(["snapshots", "--json"]).output().expect("run snapshots");
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    let pairs = list
        .iter()
        .map(|s| (s["id"].as_str().expect("id").to_string(), s["tags"].as_array().expect("tags")[0].to_string()))
        .collect();
    (pairs, snapshot_gets.load(Ordering::SeqCst) - before, stderr)
}

/// Snapshots are read from the cache, but which ones exist comes from a
/// listing each time: counted on the S3 server's side, a second `snapshots`
/// fetches no snapshot, `--no-cache` fetches them all, a snapshot forgotten
/// by another machine disappears (and from the cache), and a damaged or
/// swapped cache file is noticed, dropped and replaced by the stored object.
#[test]
fn snapshots_are_cached_and_listed_fresh_s3() {
    let gets = Arc::new(AtomicUsize::new(0));
    let server = S3Server::start_with_hook({
        let gets = gets.clone();
        move |req| {
            if req.method() == http::Method::GET && req.uri().path().contains("/snapshots/") {
                gets.fetch_add(1, Ordering::SeqCst);
            }
            None
        }
    });
    let url = server.url("bucket/repo");
    let env = Env::new();
    let here = || s3::coffer(&env, &url);
    // Another machine: a cache and a state of its own.
    let elsewhere = || {
        let mut cmd = s3::coffer(&env, &url);
        cmd.env("COFFER_CACHE_DIR", env.path("other-cache")).env("COFFER_STATE_DIR", env.path("other-state"));
        cmd
    };
    here().args(INIT).assert().success();
    for tag in ["one", "two"] {
        env.write("f", tag.as_bytes());
        elsewhere().args(["backup", "-q", "--tag", tag]).arg(&env.src).assert().success();
    }
    let tags = |l: &[(String, String)]| l.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>();

    let (first, fetched, _) = listed(here(), &gets);
    assert_eq!(tags(&first), ["\"one\"", "\"two\""]);
    assert_eq!(fetched, 2, "nothing cached here yet");
    let (second, fetched, _) = listed(here(), &gets);
    assert_eq!(second, first);
    assert_eq!(fetched, 0, "both snapshots come from the cache");
    let mut uncached = here();
    uncached.arg("--no-cache");
    let (third, fetched, _) = listed(uncached, &gets);
    assert_eq!(third, first);
    assert_eq!(fetched, 2, "--no-cache reads the repository");

    let cache = only_repository_dir(&env.path("cache")).join("snapshots");
    let stored = |id: &str| std::fs::read(server.bucket_dir("bucket").join("repo/snapshots").join(id)).unwrap();
    let (one, two) = (first[0].0.clone(), first[1].0.clone());
    assert_eq!(std::fs::read(cache.join(&one)).unwrap(), stored(&one));

    // Forgotten by the other machine: gone here at once, cache included, and
    // this host's state says it vanished without a forget from here.
    elsewhere().args(["forget", &one]).assert().success();
    let (after_forget, fetched, stderr) = listed(here(), &gets);
    assert_eq!(after_forget, first[1..]);
    assert_eq!(fetched, 0);
    assert!(stderr.contains("WARNING") && stderr.contains(&one), "{stderr}");
    assert!(!cache.join(&one).exists(), "the forgotten snapshot's copy is dropped");

    // A damaged copy: noticed, fetched again, the right snapshot shown.
    let mut bad = stored(&two);
    bad[20] ^= 1;
    std::fs::write(cache.join(&two), &bad).unwrap();
    let (after_damage, fetched, stderr) = listed(here(), &gets);
    assert_eq!(after_damage, first[1..]);
    assert_eq!(fetched, 1, "the damaged copy is replaced from the repository");
    assert!(stderr.contains("dropping the cached copy of snapshot"), "{stderr}");
    assert_eq!(std::fs::read(cache.join(&two)).unwrap(), stored(&two));

    // Another snapshot's valid copy under this one's name: noticed too.
    env.write("f", b"three");
    elsewhere().args(["backup", "-q", "--tag", "three"]).arg(&env.src).assert().success();
    let (with_three, fetched, _) = listed(here(), &gets);
    assert_eq!(tags(&with_three), ["\"two\"", "\"three\""]);
    assert_eq!(fetched, 1, "only the new snapshot is fetched");
    let three = with_three[1].0.clone();
    std::fs::copy(cache.join(&three), cache.join(&two)).unwrap();
    let (after_swap, fetched, stderr) = listed(here(), &gets);
    assert_eq!(after_swap, with_three, "each id shows its own snapshot");
    assert_eq!(fetched, 1);
    assert!(stderr.contains("dropping the cached copy of snapshot"), "{stderr}");

    // The library counts the same on the wire: a repository opened with a
    // cache that holds every snapshot lists snapshots/ and GETs none.
    let lib_cache = env.path("lib-cache");
    let open = || {
        Repository::open(Arc::new(server.backend("bucket", "repo")), PASSWORD.as_bytes())
            .unwrap()
            .with_cache(&lib_cache)
    };
    for expected_gets in [2, 0] {
        let repo = open();
        let before = repo.backend().wire_stats();
        assert_eq!(repo.snapshots().unwrap().len(), 2);
        let cost = repo.backend().wire_stats().since(&before);
        assert_eq!((cost.gets, cost.lists), (expected_gets, 1), "{cost:?}");
    }
}

both_backends!(check_reads_snapshots_from_the_repository);

/// `check` verifies the repository's own snapshot objects, never the cached
/// copies: a snapshot damaged in the repository after this host cached it is
/// still listed from the cache, but `check` and `--no-cache` report it.
fn check_reads_snapshots_from_the_repository(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("f", b"data");
    let id = env.backup_json(&[])["snapshot_id"].as_str().and_then(Id::from_hex).unwrap();
    let file = env.repo.join(object_key(ObjectKind::Snapshot, &id));
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    assert_eq!(snapshot_ids(&env), [id], "listed, from the cached copy");
    let out = env.coffer().args(["--no-cache", "snapshots"]).output().unwrap();
    assert!(!out.status.success(), "the stored snapshot is damaged");
    let out = env.coffer().args(["check", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["damage"][0]["kind"], "snapshot", "{report}");
    assert_eq!(report["damage"][0]["id"], id.to_hex(), "{report}");
}

fn warnings_of(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run coffer");
    assert!(out.status.success(), "{}", stderr_of(&out));
    stderr_of(&out).lines().filter(|l| l.contains("WARNING")).collect::<Vec<_>>().join("\n")
}

both_backends!(changed_keys_or_config_are_reported_once);

/// The per-host state reports a changed set of keys or a rewritten config
/// once, and says nothing when nothing changed or when the change was made
/// from this host.
fn changed_keys_or_config_are_reported_once(backend: Backend) {
    let env = Env::init_on(backend);
    let snapshots = || {
        let mut cmd = env.coffer();
        cmd.arg("snapshots");
        cmd
    };
    assert_eq!(warnings_of(&mut snapshots()), "", "the first look");
    assert_eq!(warnings_of(&mut snapshots()), "", "nothing changed");

    let new_password = env.path("new-password");
    std::fs::write(&new_password, "another password\n").unwrap();
    let add_key = || {
        let mut cmd = env.coffer();
        cmd.args(["key", "add", "--argon2-memory", "64", "--argon2-iterations", "1", "--new-password-file"])
            .arg(&new_password);
        cmd
    };
    // Another machine (a state of its own) adds a key.
    warnings_of(add_key().env("COFFER_STATE_DIR", env.path("other-state")));
    let warned = warnings_of(&mut snapshots());
    assert!(warned.contains("keys") && warned.contains("added to or removed"), "{warned}");
    assert!(!warned.contains("config"), "{warned}");
    assert_eq!(warnings_of(&mut snapshots()), "", "reported once");

    // A key added from here is no news here.
    assert_eq!(warnings_of(&mut add_key()), "");
    assert_eq!(warnings_of(&mut snapshots()), "", "this host's own key");

    // The config object rewritten (the same settings, sealed again).
    let repo = open_repo(&env);
    let header =
        coffer_core::config::ConfigHeader { version: coffer_core::config::FORMAT_VERSION, repo_id: *repo.repo_id() };
    let config = env.repo.join(coffer_core::config::NAME);
    let before = std::fs::read(&config).unwrap();
    std::fs::write(&config, repo.config().encode(repo.keys(), &header)).unwrap();
    assert_ne!(std::fs::read(&config).unwrap(), before, "a fresh nonce");
    let warned = warnings_of(&mut snapshots());
    assert!(warned.contains("config object changed"), "{warned}");
    assert!(!warned.contains("keys"), "{warned}");
    assert_eq!(warnings_of(&mut snapshots()), "", "reported once");
}
