//! S3 Object Lock against a real SeaweedFS server: every object but locks
//! is written retained, no key can delete a retained version, backups
//! extend what their snapshot uses (asking the store only about objects
//! this host knows nothing of), and forget and prune leave what is still
//! retained, saying when it can go.

use serde_json::Value;

use crate::common::weed::{self, ADMIN, Bucket};
use crate::common::{Env, contents, random_bytes, stderr_of};

const INIT: [&str; 5] = ["init", "--argon2-memory", "64", "--argon2-iterations", "1"];
const PREFIX: &str = "repo";

fn locked_bucket(tag: &str) -> Bucket {
    weed::bucket_with_headers(tag, &[("x-amz-bucket-object-lock-enabled", "true")])
}

fn run(bucket: &Bucket, env: &Env, args: &[&str]) -> std::process::Output {
    bucket.coffer(env, PREFIX, &ADMIN).args(args).output().expect("run coffer")
}

fn ok_json(bucket: &Bucket, env: &Env, args: &[&str]) -> Value {
    let out = run(bucket, env, args);
    assert!(out.status.success(), "{args:?}: {}", stderr_of(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Until when each object of the repository is retained (None: not at all).
fn retentions(bucket: &Bucket) -> Vec<(String, Option<i64>)> {
    use coffer_core::backend::Backend;
    let backend = bucket.backend(PREFIX, &ADMIN);
    let rt = coffer_core::repo::new_runtime().unwrap();
    let keys: Vec<String> = bucket.objects(PREFIX).into_keys().collect();
    let retention = backend.retention().expect("S3 has retention");
    keys.into_iter()
        .map(|k| {
            let until = rt.block_on(retention.retained_until(&k)).unwrap_or_else(|e| panic!("{k}: {e}"));
            (k, until)
        })
        .collect()
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

#[test]
fn every_object_is_retained_and_no_key_can_delete_a_version() {
    let bucket = locked_bucket("object-lock");
    let env = Env::new();
    for i in 0..6 {
        env.write(&format!("photos/{i}.jpg"), &random_bytes(200 << 10, i));
    }
    let out = run(&bucket, &env, &[&INIT[..], &["--object-lock", "3"]].concat());
    assert!(out.status.success(), "{}", stderr_of(&out));
    let first = ok_json(&bucket, &env, &["backup", "--json", env.src.to_str().unwrap()]);
    let retention = &first["retention"];
    assert!(retention["objects"].as_u64().unwrap() >= 4, "{first}");
    assert_eq!(retention["extended"], 0, "what the backup just wrote needs no extension: {first}");

    let expected = now() + 3 * 86_400;
    let all = retentions(&bucket);
    assert!(all.iter().any(|(k, _)| k.starts_with("data/")) && all.iter().any(|(k, _)| k == "config"), "{all:?}");
    for (key, until) in &all {
        assert!(!key.starts_with("locks/"), "no lock is left: {key}");
        let until = until.unwrap_or_else(|| panic!("{key} has no retention"));
        assert!((expected - 600..=expected + 60).contains(&until), "{key} retained until {until}, not ~{expected}");
    }

    // A stolen key, the admin's own, cannot delete any version of them:
    // only put a delete marker in front, which hides nothing from a
    // restore of the version (and is refused with the version id).
    let versions = bucket.versions(&format!("{PREFIX}/"));
    assert!(versions.len() >= all.len(), "{versions:?}");
    for (key, version) in versions.iter().filter(|(k, _)| k.contains("/data/") || k.contains("/snapshots/")) {
        let (status, body) = bucket.request_as(&ADMIN, "DELETE", &format!("/{key}?versionId={version}"), &[]);
        assert_eq!(status, 403, "deleting {key} version {version}: {body}");
    }
    assert_eq!(bucket.objects(PREFIX).len(), all.len(), "everything is still there");
    let target = env.path("restored");
    let out = run(&bucket, &env, &["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(contents(&env.restored_src(&target)), contents(&env.src));

    // A second backup knows what it extended: no request for that. A new
    // machine (no record) asks, and finds nothing to extend.
    env.write("photos/new.jpg", &random_bytes(100 << 10, 99));
    let second = ok_json(&bucket, &env, &["backup", "--json", env.src.to_str().unwrap()]);
    assert_eq!(second["retention"]["extended"], 0, "{second}");
    std::fs::remove_dir_all(env.path("admin-state")).unwrap();
    let third = ok_json(&bucket, &env, &["backup", "--json", env.src.to_str().unwrap()]);
    assert!(third["retention"]["asked"].as_u64().unwrap() > 0, "{third}");
    assert_eq!(third["retention"]["extended"], 0, "{third}");

    // Forget keeps what is retained, and says until when.
    let forget = run(&bucket, &env, &["forget", "--keep-last", "1"]);
    let text = String::from_utf8_lossy(&forget.stdout);
    assert!(forget.status.success(), "{}", stderr_of(&forget));
    assert!(text.contains("Object Lock retains it until"), "{text}");
    let snapshots = ok_json(&bucket, &env, &["snapshots", "--json"]);
    assert_eq!(snapshots.as_array().unwrap().len(), 3, "no retained snapshot was removed");
}

#[test]
fn retention_is_extended_when_it_runs_short_and_prune_keeps_what_is_retained() {
    let bucket = locked_bucket("object-lock-prune");
    let env = Env::new();
    for i in 0..10 {
        env.write(&format!("photos/{i}.jpg"), &random_bytes(150 << 10, 10 + i));
    }
    let out = run(&bucket, &env, &[&INIT[..], &["--object-lock", "2"]].concat());
    assert!(out.status.success(), "{}", stderr_of(&out));
    let first = ok_json(&bucket, &env, &["backup", "--json", env.src.to_str().unwrap()]);
    let first_id = first["snapshot_id"].as_str().unwrap().to_string();

    // Governance mode: the admin may remove a retained version with the
    // bypass header (compliance mode would refuse even that). Remove the
    // first snapshot so that its packs become unused.
    std::fs::remove_file(env.src.join("photos/0.jpg")).unwrap();
    for i in 1..10 {
        std::fs::remove_file(env.src.join(format!("photos/{i}.jpg"))).unwrap();
    }
    env.write("photos/other.jpg", &random_bytes(150 << 10, 77));
    ok_json(&bucket, &env, &["backup", "--json", env.src.to_str().unwrap()]);
    let key = format!("{PREFIX}/snapshots/{first_id}");
    let version = bucket.versions(&key).into_iter().next().expect("the snapshot's version").1;
    let bypass = [("x-amz-bypass-governance-retention", "true")];
    let (status, body) = bucket.request_as(&ADMIN, "DELETE", &format!("/{key}?versionId={version}"), &bypass);
    assert!((200..300).contains(&status), "governance bypass: HTTP {status}: {body}");

    // Its packs are unused now, but retained: prune keeps them and says when
    // they can go; the repository stays whole.
    let before = bucket.objects(PREFIX).keys().filter(|k| k.starts_with("data/")).count();
    let pruned = ok_json(&bucket, &env, &["prune", "--json"]);
    assert!(pruned["locked_packs_kept"].as_u64().unwrap() > 0, "{pruned}");
    assert_eq!(pruned["packs_deleted"], 0, "{pruned}");
    let reclaim = pruned["reclaimable"].as_array().unwrap();
    assert!(!reclaim.is_empty(), "{pruned}");
    let until = reclaim[0]["until"].as_i64().unwrap();
    assert!((now() + 86_400..=now() + 2 * 86_400 + 60).contains(&until), "{pruned}");
    let text = run(&bucket, &env, &["prune"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("can be reclaimed by a prune after"));
    assert_eq!(bucket.objects(PREFIX).keys().filter(|k| k.starts_with("data/")).count(), before);
    let check = run(&bucket, &env, &["check", "--read-data"]);
    assert!(check.status.success(), "{}", stderr_of(&check));

    // The record says everything is retained ~2 days; a record that says
    // less (an older backup) makes the next backup extend it.
    let state = std::fs::read_dir(env.path("admin-state")).unwrap().next().unwrap().unwrap().path().join("retention");
    let text = std::fs::read_to_string(&state).unwrap();
    let soon = now() + 3600;
    let rewritten: String = text
        .lines()
        .map(|l| match l.rsplit_once(' ') {
            Some((key, _)) if l != "coffer retention 1" => format!("{key} {soon}\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&state, rewritten).unwrap();
    let again = ok_json(&bucket, &env, &["backup", "--json", env.src.to_str().unwrap()]);
    assert!(again["retention"]["extended"].as_u64().unwrap() > 0, "{again}");
}

#[test]
fn object_lock_needs_a_bucket_that_has_it() {
    let bucket = weed::bucket("no-object-lock");
    let env = Env::new();
    let out = run(&bucket, &env, &[&INIT[..], &["--object-lock", "30"]].concat());
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("does not have Object Lock enabled"), "{err}");
    assert!(bucket.objects(PREFIX).is_empty(), "nothing was written");
    eprintln!("MSG object lock on a plain bucket: {err}");

    let local = Env::new();
    let out =
        local.coffer().args(INIT).args(["--object-lock", "30"]).arg("--repo").arg(local.path("repo")).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("only an S3 bucket with Object Lock"), "{}", stderr_of(&out));
}
