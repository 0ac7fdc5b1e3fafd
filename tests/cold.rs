//! Cold storage: a repository whose data packs are in DEEP_ARCHIVE, on an
//! S3 server that refuses GETs of archived objects until a RestoreObject
//! request completes, as AWS does. Everything that needs no file contents
//! works unchanged, without a single refused GET; a restore asks for
//! exactly the packs it reads, remembers what it asked for, and resumes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::s3::{self, Cold, S3Server};
use crate::common::{Env, contents, random_bytes, stderr_of};

const INIT: [&str; 5] = ["init", "--argon2-memory", "64", "--argon2-iterations", "1"];

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "exit {:?}: {}", out.status.code(), stderr_of(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Every object key of the repository under `bucket/repo/`, by folder.
fn keys_in(cold: &Cold, folder: &str) -> Vec<String> {
    cold.archived_keys().into_iter().filter(|k| k.starts_with(&format!("bucket/repo/{folder}"))).collect()
}

/// A cold repository with one backup of 20 files of 120 KiB (`photos/`)
/// and a few small ones.
fn cold_repo(class: &str) -> (S3Server, std::sync::Arc<Cold>, Env, String) {
    let (server, cold) = S3Server::start_cold();
    let url = server.url("bucket/repo");
    let env = Env::new();
    for i in 0..20 {
        env.write(&format!("photos/{i:02}.jpg"), &random_bytes(120 << 10, 100 + i));
    }
    env.write("notes/todo.txt", b"buy milk");
    s3::coffer(&env, &url).args(INIT).args(["--s3-storage-class", class]).assert().success();
    let out = s3::coffer(&env, &url).arg("backup").arg("--json").arg(&env.src).output().unwrap();
    json(&out);
    (server, cold, env, url)
}

#[test]
fn a_cold_repository_works_for_everything_but_file_contents() {
    let (server, cold, env, url) = cold_repo("DEEP_ARCHIVE");
    let data = keys_in(&cold, "data/");
    assert!(!data.is_empty(), "data packs are archived");
    assert_eq!(cold.archived_keys(), data, "only data packs are archived: trees, index, snapshots stay hot");
    for key in server.keys("bucket").iter().filter(|k| !k.contains("/data/")) {
        assert_eq!(cold.class_of(&format!("bucket/{key}")), None, "{key} is hot");
    }

    // The class is recorded: a backup given no class archives its packs too.
    env.write("photos/new.jpg", &random_bytes(300 << 10, 7));
    std::fs::remove_file(env.src.join("photos/00.jpg")).unwrap();
    let second = json(&s3::coffer(&env, &url).arg("backup").arg("--json").arg(&env.src).output().unwrap());
    assert_eq!(second["files_new"], 1, "{second}");
    let data_after = keys_in(&cold, "data/");
    assert!(data_after.len() > data.len(), "the second backup's packs are archived too: {data_after:?}");

    let ok = |args: &[&str]| {
        let out = s3::coffer(&env, &url).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr_of(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let snapshots: Vec<serde_json::Value> = serde_json::from_str(&ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(snapshots.len(), 2);
    let first_id = snapshots[0]["id"].as_str().unwrap().to_string();
    assert!(ok(&["ls", "latest"]).contains("photos/new.jpg"));
    let diff = ok(&["diff", &first_id, "latest"]);
    assert!(diff.contains("photos/new.jpg") && diff.contains("photos/00.jpg"), "{diff}");
    ok(&["stats"]);
    let check = ok(&["check"]);
    assert!(check.contains("no errors were found"), "{check}");
    assert!(check.contains("archive storage class"), "check says it did not read archived headers: {check}");
    let report: serde_json::Value = serde_json::from_str(&ok(&["check", "--json"])).unwrap();
    assert_eq!(report["archived_packs"].as_u64(), Some(data_after.len() as u64), "{report}");

    // Forget the first snapshot and prune: tree packs (hot) may be
    // repacked, but no data pack is read (each photo is 120 KiB, so the
    // bytes downloaded are tree blobs only).
    ok(&["forget", "--keep-last", "1"]);
    ok(&["prune", "--dry-run"]);
    let pruned: serde_json::Value = serde_json::from_str(&ok(&["prune", "--json"])).unwrap();
    assert!(pruned["bytes_to_download"].as_u64().unwrap() < 60_000, "{pruned}");
    ok(&["check"]);
    assert_eq!(cold.refused_gets.load(Ordering::Relaxed), 0, "nothing tried to read an archived pack");
    assert_eq!(cold.restores.load(Ordering::Relaxed), 0, "nothing asked for a restore");
}

#[test]
fn restore_from_deep_archive_asks_for_exactly_its_packs_and_resumes() {
    let (_server, cold, env, url) = cold_repo("DEEP_ARCHIVE");
    cold.set_delay(Duration::from_secs(3600));
    let target = env.path("restored");

    // Without --warm-up: refused before anything is written, saying what to do.
    let out = s3::coffer(&env, &url).args(["restore", "latest", "--target"]).arg(&target).output().unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("archived") && err.contains("--warm-up"), "{err}");
    assert!(!target.exists(), "nothing was restored");
    eprintln!("MSG restore of archived packs: {err}");

    // The dry run lists the packs, what is archived, and the cost per tier.
    let out =
        s3::coffer(&env, &url).args(["restore", "latest", "--dry-run", "--target"]).arg(&target).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(text.contains("are archived") && text.contains("--warm-up=bulk"), "{text}");
    let expedited = text.lines().find(|l| l.contains("--warm-up=expedited")).unwrap_or_default();
    assert!(expedited.contains("not offered"), "Deep Archive has no expedited tier: {text}");
    let plan = json(
        &s3::coffer(&env, &url)
            .args(["restore", "latest", "--dry-run", "--json", "--target"])
            .arg(&target)
            .output()
            .unwrap(),
    );
    let planned: Vec<String> = plan["packs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["archived"] == true)
        .map(|p| {
            let id = p["id"].as_str().unwrap();
            format!("bucket/repo/data/{}/{id}", &id[..2])
        })
        .collect();
    assert_eq!(plan["files"], 21, "{plan}");
    assert_eq!(planned.len() as u64, plan["archived_packs"].as_u64().unwrap());
    assert!(plan["retrieval_cost"]["bulk"].as_f64().unwrap() < plan["retrieval_cost"]["standard"].as_f64().unwrap());
    assert!(!target.exists(), "a dry run writes nothing");

    // --warm-up --no-wait asks for exactly those packs and exits with 4.
    let warm = |extra: &[&str]| {
        s3::coffer(&env, &url)
            .args(["restore", "latest", "--warm-up", "--no-wait", "--target"])
            .arg(&target)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = warm(&[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr_of(&out));
    assert_eq!(cold.restores.load(Ordering::Relaxed), planned.len(), "one request per planned pack");
    assert!(cold.tiers().iter().all(|t| t == "Bulk"), "{:?}", cold.tiers());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("0 of {} archived packs", planned.len())), "{stdout}");
    let state = std::fs::read_to_string(
        std::fs::read_dir(env.path("state")).unwrap().next().unwrap().unwrap().path().join("warm-up"),
    )
    .unwrap();
    assert_eq!(state.lines().count(), planned.len() + 1, "every request is remembered: {state}");

    // Run again: nothing is asked twice, and it still waits.
    let out = warm(&[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr_of(&out));
    assert_eq!(cold.restores.load(Ordering::Relaxed), planned.len(), "no request is made twice");
    assert!(!target.exists(), "nothing is restored while packs are archived");

    // Once the store has restored them, the same command restores.
    cold.complete_restores();
    let out = warm(&[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(contents(&env.restored_src(&target)), contents(&env.src));
    assert_eq!(cold.refused_gets.load(Ordering::Relaxed), 0, "no GET of an archived pack was made");
}

#[test]
fn warm_up_waits_for_the_store_then_restores() {
    let (_server, cold, env, url) = cold_repo("GLACIER");
    cold.set_delay(Duration::from_secs(2));
    let target = env.path("restored");
    let out = s3::coffer(&env, &url)
        .args(["restore", "latest", "--warm-up=expedited", "--warm-up-poll", "1", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("being restored") && stdout.contains("restoring"), "{stdout}");
    assert!(cold.tiers().iter().all(|t| t == "Expedited"), "{:?}", cold.tiers());
    assert_eq!(contents(&env.restored_src(&target)), contents(&env.src));

    // Once the copies expire, a plain restore refuses again; a warm-up asks again.
    cold.expire_restores();
    let again = env.path("again");
    let out = s3::coffer(&env, &url).args(["restore", "latest", "--target"]).arg(&again).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
}

#[test]
fn prune_repacks_cold_packs_only_when_asked_and_after_their_restore() {
    let (_server, cold, env, url) = cold_repo("DEEP_ARCHIVE");
    // Half the photos go: every pack keeps some used blobs.
    for i in (0..20).step_by(2) {
        std::fs::remove_file(env.src.join(format!("photos/{i:02}.jpg"))).unwrap();
    }
    json(&s3::coffer(&env, &url).arg("backup").arg("--json").arg(&env.src).output().unwrap());
    s3::coffer(&env, &url).args(["forget", "--keep-last", "1"]).assert().success();
    let prune = |extra: &[&str]| json(&s3::coffer(&env, &url).args(["prune", "--json"]).args(extra).output().unwrap());

    let plain = prune(&[]);
    assert!(plain["cold_packs_not_repacked"].as_u64().unwrap() > 0, "{plain}");
    assert!(plain["bytes_to_download"].as_u64().unwrap() < 60_000, "only tree blobs are read: {plain}");
    assert_eq!(cold.restores.load(Ordering::Relaxed), 0);

    cold.set_delay(Duration::from_secs(3600));
    let asked = prune(&["--repack-cold"]);
    let requested = asked["cold_restores_requested"].as_u64().unwrap();
    assert!(requested > 0, "{asked}");
    assert_eq!(asked["packs_repacked"], 0, "nothing is read before its restore completes: {asked}");
    assert_eq!(cold.restores.load(Ordering::Relaxed) as u64, requested);

    cold.complete_restores();
    let repacked = prune(&["--repack-cold"]);
    assert_eq!(repacked["packs_repacked"].as_u64(), Some(requested), "{repacked}");
    assert_eq!(repacked["cold_packs_not_repacked"], 0, "{repacked}");
    assert_eq!(cold.refused_gets.load(Ordering::Relaxed), 0);

    // The repacked blobs went into new archived packs; what is left restores.
    let target = env.path("restored");
    cold.set_delay(Duration::ZERO);
    let out = s3::coffer(&env, &url)
        .args(["restore", "latest", "--warm-up", "--warm-up-poll", "1", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(contents(&env.restored_src(&target)), contents(&env.src));
}

#[test]
fn stats_cost_prices_every_class_from_the_listing() {
    let (_server, _cold, env, url) = cold_repo("DEEP_ARCHIVE");
    let bill = json(&s3::coffer(&env, &url).args(["stats", "--cost", "--json"]).output().unwrap());
    let classes = bill["classes"].as_array().unwrap();
    let class = |name: &str| classes.iter().find(|c| c["class"] == name).unwrap_or_else(|| panic!("{name}: {bill}"));
    let deep = class("DEEP_ARCHIVE");
    let standard = class("STANDARD");
    let total: u64 = classes.iter().map(|c| c["objects"].as_u64().unwrap()).sum();
    assert_eq!(bill["objects"].as_u64(), Some(total));
    // Each archived object is billed 40 KiB more (32 at its rate, 8 at STANDARD's).
    assert_eq!(
        deep["billable_bytes"].as_u64().unwrap(),
        deep["bytes"].as_u64().unwrap() + 32 * 1024 * deep["objects"].as_u64().unwrap()
    );
    assert!(deep["read_back"]["bulk"].as_f64().unwrap() > 0.0);
    assert!(deep["read_back"].get("expedited").is_none(), "{deep}");
    assert!(standard["read_back"]["read"].as_f64().is_some(), "{standard}");

    // A price file replaces a class's prices.
    let prices = env.write(
        "prices.toml",
        b"currency = \"EUR\"\n[classes.DEEP_ARCHIVE]\nstorage_per_gb_month = 1000.0\nput_per_1000 = 0.0\nget_per_1000 = 0.0\n",
    );
    let out = s3::coffer(&env, &url).args(["stats", "--cost", "--json", "--prices"]).arg(&prices).output().unwrap();
    let dear = json(&out);
    assert_eq!(dear["currency"], "EUR");
    let dear_deep = dear["classes"].as_array().unwrap().iter().find(|c| c["class"] == "DEEP_ARCHIVE").unwrap();
    let gb = dear_deep["billable_bytes"].as_f64().unwrap() / (1u64 << 30) as f64;
    assert!((dear_deep["monthly"].as_f64().unwrap() - gb * 1000.0).abs() < 1e-6, "{dear_deep}");
    let text = s3::coffer(&env, &url).args(["stats", "--cost"]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("DEEP_ARCHIVE") && text.contains("a month"), "{text}");

    let bad = env.write("bad.toml", b"[classes.STANDARD]\nstorage = 1\n");
    let out = s3::coffer(&env, &url).args(["stats", "--cost", "--prices"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("does not parse"), "{}", stderr_of(&out));
}
