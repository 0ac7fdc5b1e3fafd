//! The S3 backend against a real S3-protocol server (s3s-fs with SigV4
//! checked) on 127.0.0.1: the binary end to end, its error messages, and the
//! backend's listing across pages.

use std::sync::Arc;

use coffer_core::backend::Backend;
use coffer_core::backend::s3::S3Backend;

use crate::common::s3::{self, S3Server};
use crate::common::{Env, random_bytes, stderr_of};

const INIT: [&str; 5] = ["init", "--argon2-memory", "64", "--argon2-iterations", "1"];

fn num(v: &serde_json::Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or_else(|| panic!("no {field} in {v}"))
}

fn backup_json(env: &Env, url: &str) -> serde_json::Value {
    let out = s3::coffer(env, url).arg("backup").arg("--json").arg(&env.src).output().expect("run backup");
    assert!(out.status.success(), "backup failed: {}", stderr_of(&out));
    serde_json::from_slice(&out.stdout).expect("backup JSON")
}

#[test]
fn round_trip_over_s3() {
    let server = S3Server::start();
    let url = server.url("bucket/photos/2024");
    let env = Env::new();
    env.write("a.jpg", &random_bytes(3_000_000, 1));
    env.write("album/b.jpg", &random_bytes(700_000, 2));
    env.write("album/notes.txt", b"a short text file");
    s3::coffer(&env, &url).args(INIT).assert().success();
    let keys = server.keys("bucket");
    assert!(keys.iter().any(|k| k == "photos/2024/config"), "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("photos/2024/")), "{keys:?}");

    let first = backup_json(&env, &url);
    assert_eq!(num(&first, "files_new"), 3, "{first}");
    let second = backup_json(&env, &url);
    assert_eq!(num(&second, "bytes_read"), 0, "{second}");
    // No chunk is stored again. The trees of the directories above the
    // source (`/tmp` and the test's folder) are stored anew when other tests
    // running at the same time change their mtimes, so only a bound holds
    // for the bytes, as in the local dedup test.
    assert_eq!(num(&second, "chunks_added"), 0, "{second}");
    assert!(num(&second, "bytes_added") < 3_700_000 / 1000, "{second}");

    let out = s3::coffer(&env, &url).args(["snapshots", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let snaps: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snaps.len(), 2);

    let out = s3::coffer(&env, &url).args(["ls", "latest"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("album/b.jpg") && listing.contains("a.jpg"), "{listing}");

    let target = env.path("restored");
    s3::coffer(&env, &url).args(["restore", "latest", "--target"]).arg(&target).assert().success();
    let restored = env.restored_src(&target);
    for f in ["a.jpg", "album/b.jpg", "album/notes.txt"] {
        assert_eq!(std::fs::read(restored.join(f)).unwrap(), std::fs::read(env.src.join(f)).unwrap(), "{f}");
    }
}

#[test]
fn wrong_secret_key_is_a_clear_error_and_writes_nothing() {
    let server = S3Server::start();
    let url = server.url("bucket/repo");
    let env = Env::new();
    let out = s3::coffer(&env, &url).args(INIT).env("AWS_SECRET_ACCESS_KEY", "not-the-secret").output().unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("access denied") && err.contains("signature does not match"), "{err}");
    eprintln!("MSG wrong secret: {err}");
    assert!(server.keys("bucket").is_empty(), "{:?}", server.keys("bucket"));

    // The same on a repository that exists.
    s3::coffer(&env, &url).args(INIT).assert().success();
    let before = server.keys("bucket");
    let out = s3::coffer(&env, &url).arg("snapshots").env("AWS_SECRET_ACCESS_KEY", "not-the-secret").output().unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("access denied"), "{err}");
    let out = s3::coffer(&env, &url).arg("backup").arg(&env.src).env("AWS_ACCESS_KEY_ID", "NOBODY").output().unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("access denied"), "{}", stderr_of(&out));
    assert_eq!(server.keys("bucket"), before);
}

#[test]
fn missing_bucket_needs_create_bucket() {
    let server = S3Server::start();
    let url = server.url("new-bucket/coffer");
    let env = Env::new();
    let out = s3::coffer(&env, &url).args(INIT).output().unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("bucket new-bucket does not exist"), "{err}");
    assert!(err.contains("--create-bucket"), "{err}");
    eprintln!("MSG missing bucket: {err}");
    assert!(!server.bucket_dir("new-bucket").exists());

    s3::coffer(&env, &url).args(INIT).arg("--create-bucket").assert().success();
    assert!(server.keys("new-bucket").iter().any(|k| k == "coffer/config"));
    env.write("x", b"some data");
    backup_json(&env, &url);
    // Asking again on an existing bucket is fine; the repository is not replaced.
    let out = s3::coffer(&env, &server.url("new-bucket/other")).args(INIT).arg("--create-bucket").output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
}

#[test]
fn unreachable_endpoint_says_so() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let env = Env::new();
    let url = format!("s3:http://127.0.0.1:{port}/bucket");
    let out = s3::coffer(&env, &url).env("COFFER_S3_MAX_ATTEMPTS", "1").args(INIT).output().unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("cannot connect to http://127.0.0.1:{port}")), "{err}");
    eprintln!("MSG unreachable: {err}");
}

#[test]
fn listing_pages_past_1000_keys() {
    let server = S3Server::start();
    let backend = Arc::new(s3::library_backend(&server, "deep/prefix"));
    let rt = coffer_core::repo::new_runtime().unwrap();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..1100u32 {
            let b = backend.clone();
            tasks.spawn(async move { b.put(&format!("data/ab/{i:05}"), i.to_le_bytes().to_vec().into()).await });
            if tasks.len() >= 32 {
                tasks.join_next().await.unwrap().unwrap().unwrap();
            }
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
        }
        backend.put("tree/cd/other", b"x".to_vec().into()).await.unwrap();
        let mut list = backend.list("data/").await.unwrap();
        list.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(list.len(), 1100);
        for (i, e) in list.iter().enumerate() {
            assert_eq!(e.key, format!("data/ab/{i:05}"));
            assert_eq!(e.size, 4);
        }
        assert_eq!(backend.get("data/ab/01099", u64::MAX).await.unwrap(), 1099u32.to_le_bytes());
        assert!(backend.get("data/ab/99999", u64::MAX).await.unwrap_err().is_not_found());
        backend.delete("data/ab/00000").await.unwrap();
        backend.delete("data/ab/00000").await.unwrap();
        assert_eq!(backend.list("data/ab/").await.unwrap().len(), 1099);
        assert_eq!(backend.list("tree/").await.unwrap().len(), 1);
        assert!(backend.list("snapshots/").await.unwrap().is_empty());
    });
}

/// Puts `keys` (each with a 1-byte body) with 32 requests in flight.
async fn put_many(backend: &Arc<S3Backend>, keys: Vec<String>) {
    let mut tasks = tokio::task::JoinSet::new();
    for key in keys {
        let b = backend.clone();
        tasks.spawn(async move { b.put(&key, b"x".to_vec().into()).await });
        if tasks.len() >= 32 {
            tasks.join_next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
}

#[test]
fn chunk_listing_goes_parallel_past_one_page() {
    let server = S3Server::start();
    let backend = Arc::new(s3::library_backend(&server, "sharded"));
    let rt = coffer_core::repo::new_runtime().unwrap();
    rt.block_on(async {
        // 1100 keys in one sub-folder (two pages of its own), a few in
        // others before and after it, and names that are not objects.
        let mut expected: Vec<String> = (0..1100).map(|i| format!("data/3c/3c{i:05}")).collect();
        for shard in ["00", "1f", "3b", "3d", "a0", "ff"] {
            expected.extend((0..3).map(|i| format!("data/{shard}/{shard}{i}")));
        }
        put_many(&backend, expected.clone()).await;
        put_many(&backend, vec!["data/zz/x".into(), "data/AB/y".into(), "data/abc".into()]).await;
        let before = backend.wire_stats();
        let mut got: Vec<String> = backend.list("data/").await.unwrap().into_iter().map(|e| e.key).collect();
        got.sort();
        expected.sort();
        assert_eq!(got, expected);
        // The first page (1000 keys: 00, 1f, 3b and most of 3c) stops in
        // 3c; 3c..ff are then listed one by one, 3c in two pages.
        let lists = backend.wire_stats().since(&before).lists;
        assert_eq!(lists, 1 + (0x100 - 0x3c) + 1);

        // A small folder costs one request, malformed names left out.
        let before = backend.wire_stats();
        put_many(&backend, vec!["tree/01/01a".into(), "tree/xy/z".into()]).await;
        let got: Vec<String> = backend.list("tree/").await.unwrap().into_iter().map(|e| e.key).collect();
        assert_eq!(got, vec!["tree/01/01a".to_string()]);
        assert_eq!(backend.wire_stats().since(&before).lists, 1);
    });
}

#[test]
fn storage_class_applies_to_data_packs_only() {
    let server = S3Server::start();
    let mut config = s3::library_backend(&server, "").config().clone();
    // s3s-fs accepts only STANDARD and REDUCED_REDUNDANCY; AWS many more.
    config.storage_class = Some("reduced_redundancy".into());
    let backend = S3Backend::new(config).unwrap();
    let rt = coffer_core::repo::new_runtime().unwrap();
    rt.block_on(async {
        backend.put("data/00/00ff", b"chunk".to_vec().into()).await.unwrap();
        backend.put("config", b"config".to_vec().into()).await.unwrap();
    });
    let mut config = s3::library_backend(&server, "").config().clone();
    config.storage_class = Some("ONEZONE_IA".into());
    let backend = S3Backend::new(config).unwrap();
    rt.block_on(async {
        // The server rejects the class: only for data packs is it sent.
        backend.put("snapshots/aa", b"snapshot".to_vec().into()).await.unwrap();
        let err = backend.put("data/00/00aa", b"chunk".to_vec().into()).await.unwrap_err().to_string();
        assert!(err.contains("PUT data/00/00aa") && err.contains("InvalidStorageClass"), "{err}");
    });
}

#[test]
fn server_stopped_mid_backup_leaves_no_snapshot() {
    let mut server = S3Server::start();
    let url = server.url("bucket/r");
    let env = Env::new();
    // Small packs: several are stored while the backup runs.
    s3::coffer(&env, &url).args(INIT).args(["--pack-size", "4M"]).assert().success();
    for i in 0..40u64 {
        env.write(&format!("photo-{i:02}.jpg"), &random_bytes(1_000_000, i));
    }
    let chunks_dir = server.bucket_dir("bucket").join("r/data");
    let child = s3::coffer_process(&env, &url)
        .env("COFFER_S3_MAX_ATTEMPTS", "2")
        .args(["backup", "--json", "--quiet"])
        .arg(&env.src)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start backup");
    // Stop the server once some packs have arrived.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while crate::common::files_below_or_empty(&chunks_dir).len() < 2 {
        assert!(std::time::Instant::now() < deadline, "the backup uploaded nothing");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    server.stop();
    let out = child.wait_with_output().expect("wait for backup");
    let err = stderr_of(&out);
    assert!(!out.status.success(), "the backup succeeded although the server stopped");
    assert!(err.contains("cannot connect") || err.contains("connection"), "{err}");
    eprintln!("MSG stopped: {err}");
    assert!(server.keys("bucket").iter().all(|k| !k.starts_with("r/snapshots/")), "a snapshot was written");

    server.restart();
    let report = backup_json(&env, &url);
    assert_eq!(num(&report, "files_new"), 40, "{report}");
    // What was uploaded before the stop is reused.
    assert!(num(&report, "bytes_added") < 40_000_000, "{report}");
    let out = s3::coffer(&env, &url).args(["snapshots", "--json"]).output().unwrap();
    let snaps: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snaps.len(), 1);
}

#[test]
fn conditional_chunk_upload_keeps_the_stored_object() {
    let server = S3Server::start();
    let backend = s3::library_backend(&server, "cond");
    let rt = coffer_core::repo::new_runtime().unwrap();
    rt.block_on(async {
        backend.put("data/aa/aa01", b"first".to_vec().into()).await.unwrap();
        // s3s-fs honours If-None-Match: *, answering 412; a HEAD finds an
        // object of the same length there (an equivalent encoding): kept.
        backend.put("data/aa/aa01", b"other".to_vec().into()).await.unwrap();
        assert_eq!(backend.get("data/aa/aa01", u64::MAX).await.unwrap(), b"first");
        let w = backend.wire_stats();
        assert_eq!((w.puts, w.heads), (2, 2), "{w:?}");
        // A stored object of another length (truncated) is replaced.
        backend.put("data/aa/aa01", b"longer".to_vec().into()).await.unwrap();
        assert_eq!(backend.get("data/aa/aa01", u64::MAX).await.unwrap(), b"longer");
        // Only data packs are uploaded conditionally.
        backend.put("snapshots/bb", b"first".to_vec().into()).await.unwrap();
        backend.put("snapshots/bb", b"second".to_vec().into()).await.unwrap();
        assert_eq!(backend.get("snapshots/bb", u64::MAX).await.unwrap(), b"second");
        let w = backend.wire_stats();
        // The bucket check, and one HEAD after each 412.
        assert_eq!((w.puts, w.heads), (6, 3), "{w:?}");
    });
}

#[test]
fn store_without_conditional_uploads_is_probed_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let conditional = Arc::new(AtomicUsize::new(0));
    let seen = conditional.clone();
    let server = S3Server::start_with_hook(move |req| {
        req.headers().contains_key("if-none-match").then(|| {
            seen.fetch_add(1, Ordering::SeqCst);
            (501, "NotImplemented")
        })
    });
    let backend = s3::library_backend(&server, "nocond");
    let rt = coffer_core::repo::new_runtime().unwrap();
    rt.block_on(async {
        backend.put("data/aa/aa01", b"one".to_vec().into()).await.unwrap();
        backend.put("data/bb/bb01", b"two".to_vec().into()).await.unwrap();
        backend.put("data/aa/aa01", b"again".to_vec().into()).await.unwrap();
        assert_eq!(backend.get("data/bb/bb01", u64::MAX).await.unwrap(), b"two");
        // Without the condition, an upload replaces (with an equivalent object in real use).
        assert_eq!(backend.get("data/aa/aa01", u64::MAX).await.unwrap(), b"again");
    });
    assert_eq!(conditional.load(Ordering::SeqCst), 1, "the condition is sent until the first refusal only");
    assert_eq!(backend.wire_stats().puts, 4, "the refused upload, its plain retry and two more");
}

#[test]
fn missing_region_is_a_clear_error_and_writes_nothing() {
    let env = Env::new();
    env.write("a", b"data");
    // An AWS location (no endpoint), with no region anywhere: the test's
    // AWS_REGION removed and the config files pointing at nothing.
    for args in [&INIT[..], &["backup", env.src.to_str().unwrap()][..]] {
        let out =
            s3::coffer(&env, "s3:coffer-no-region-bucket/repo").env_remove("AWS_REGION").args(args).output().unwrap();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("no AWS region is configured") && err.contains("--s3-region"), "{err}");
    }
    assert!(!env.path("cache").exists(), "nothing may be written locally either");
}

/// 40 one-chunk files, as a backup's worth of uploads.
fn forty_files(env: &Env) {
    for i in 0..40u64 {
        env.write(&format!("p{i:02}.jpg"), &random_bytes(300_000, 100 + i));
    }
}

#[test]
fn slow_down_and_server_errors_are_retried() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // The first data pack uploads are answered 503 SlowDown and 500, four in all.
    let faults = Arc::new(AtomicUsize::new(0));
    let injected = faults.clone();
    let server = S3Server::start_with_hook(move |req| {
        let chunk_put = req.method() == http::Method::PUT && req.uri().path().contains("/data/");
        if !chunk_put {
            return None;
        }
        let n = injected.fetch_add(1, Ordering::SeqCst);
        match n {
            0 | 2 => Some((503, "SlowDown")),
            1 | 3 => Some((500, "InternalError")),
            _ => None,
        }
    });
    let url = server.url("bucket/retry");
    let env = Env::new();
    forty_files(&env);
    s3::coffer(&env, &url).args(INIT).assert().success();
    let out = s3::coffer(&env, &url)
        .env("COFFER_S3_MAX_ATTEMPTS", "6")
        .args(["backup", "--json"])
        .arg(&env.src)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(num(&report, "chunks_added"), 40, "{report}");
    assert!(faults.load(Ordering::SeqCst) >= 5, "all four faults were served, and then the packs passed");
    let target = env.path("restored");
    s3::coffer(&env, &url).args(["restore", "latest", "--target"]).arg(&target).assert().success();
    assert_eq!(std::fs::read(env.restored_src(&target).join("p07.jpg")).unwrap(), random_bytes(300_000, 107));
}

#[test]
fn uploads_that_keep_failing_fail_the_backup_naming_the_key() {
    let server = S3Server::start_with_hook(|req| {
        (req.method() == http::Method::PUT && req.uri().path().contains("/data/")).then_some((500, "InternalError"))
    });
    let url = server.url("bucket/failing");
    let env = Env::new();
    // Small files: the refused pack is small enough to be sent whole before
    // the server answers (a 12 MB body would meet a closed connection).
    for i in 0..3 {
        env.write(&format!("note{i}.txt"), format!("note {i}").as_bytes());
    }
    s3::coffer(&env, &url).args(INIT).assert().success();
    let out = s3::coffer(&env, &url).env("COFFER_S3_MAX_ATTEMPTS", "2").arg("backup").arg(&env.src).output().unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // "PUT data/ab/ab12…(64 hex): InternalError …"
    let at = err.find("PUT data/").unwrap_or_else(|| panic!("no key named: {err}"));
    let key = &err[at + 4..];
    let id: String = key["data/xx/".len()..].chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    assert_eq!(id.len(), 64, "{err}");
    assert_eq!(&key[5..7], &id[..2], "{err}");
    assert!(err.contains("InternalError"), "{err}");
    eprintln!("MSG failing uploads: {err}");
    assert!(server.keys("bucket").iter().all(|k| !k.starts_with("failing/snapshots/")), "a snapshot was written");
}
