//! `coffer forget`: retention policies applied per group (dry run and real),
//! named snapshots, filters, and the refusals that protect against removing
//! everything. Snapshot times are set with `backup --time`.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::common::{Backend, Env, both_backends, open_repo, snapshots_json};

/// Backs up `src` with a fixed time (and extra options); returns the snapshot id.
fn backup_at(env: &Env, time: &str, extra: &[&str]) -> String {
    let mut args = vec!["--time", time];
    args.extend_from_slice(extra);
    let report = env.backup_json(&args);
    report["snapshot_id"].as_str().expect("snapshot id").to_string()
}

fn ids(env: &Env) -> BTreeSet<String> {
    snapshots_json(env).iter().map(|s| s["id"].as_str().expect("id").to_string()).collect()
}

fn forget_json(env: &Env, args: &[&str]) -> Value {
    let out = env.coffer().arg("forget").arg("--json").args(args).output().expect("run forget");
    assert!(out.status.success(), "forget failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("forget JSON")
}

/// Five snapshots: two on 1 May, one on 2 May, one on 3 May, one on 10 June
/// 2024 (UTC). Returns their ids in that order.
fn five_snapshots(env: &Env) -> Vec<String> {
    env.write("a.txt", b"some content");
    [
        "2024-05-01T10:00:00+00:00",
        "2024-05-01T18:00:00+00:00",
        "2024-05-02T09:00:00+00:00",
        "2024-05-03T09:00:00+00:00",
        "2024-06-10T12:00:00+00:00",
    ]
    .iter()
    .map(|t| backup_at(env, t, &[]))
    .collect()
}

both_backends!(backup_time_is_recorded_and_a_future_time_refused);

fn backup_time_is_recorded_and_a_future_time_refused(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("a.txt", b"x");
    backup_at(&env, "2024-05-01T10:00:00+02:00", &[]);
    let snaps = snapshots_json(&env);
    assert_eq!(snaps[0]["time"], "2024-05-01T10:00:00+02:00");
    let out = env.coffer().args(["backup", "--time", "2999-01-01T00:00:00Z"]).arg(&env.src).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in the future"));
    let out = env.coffer().args(["backup", "--time", "yesterday"]).arg(&env.src).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("YYYY-MM-DD HH:MM:SS"));
    assert_eq!(snapshots_json(&env).len(), 1);
}

both_backends!(dry_run_reports_each_decision_and_removes_nothing);

fn dry_run_reports_each_decision_and_removes_nothing(backend: Backend) {
    let env = Env::init_on(backend);
    let s = five_snapshots(&env);
    let report = forget_json(&env, &["--keep-daily", "2", "--keep-monthly", "2", "--dry-run"]);
    assert_eq!(report["dry_run"], true);
    let groups = report["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "one host and path: one group");
    let decided: Vec<(String, Vec<String>)> = groups[0]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let reasons = d["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
            (d["id"].as_str().unwrap().to_string(), reasons)
        })
        .collect();
    // Newest first. 10 June: newest of its day and of June. 3 May: newest of
    // its day and of May. Both counts are then used up, so the rest go.
    let daily_monthly = vec!["daily snapshot".to_string(), "monthly snapshot".to_string()];
    assert_eq!(
        decided,
        vec![
            (s[4].clone(), daily_monthly.clone()),
            (s[3].clone(), daily_monthly),
            (s[2].clone(), vec![]),
            (s[1].clone(), vec![]),
            (s[0].clone(), vec![]),
        ]
    );
    let removed: BTreeSet<String> =
        report["removed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(removed, s[..3].iter().cloned().collect());
    assert_eq!(ids(&env).len(), 5, "a dry run removes nothing");

    // The same as text.
    let out = env.coffer().args(["forget", "--keep-daily", "2", "--keep-monthly", "2", "-n"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("keep: daily snapshot, monthly snapshot"), "{text}");
    for id in &s[..3] {
        assert!(text.contains(&format!("would remove snapshot {}", &id[..8])), "{text}");
    }
    assert_eq!(ids(&env).len(), 5);
}

both_backends!(policy_removes_snapshot_objects_only);

fn policy_removes_snapshot_objects_only(backend: Backend) {
    let env = Env::init_on(backend);
    let s = five_snapshots(&env);
    let repo_files = |dir: &str| crate::common::files_below(&env.repo.join(dir));
    let chunks = repo_files("data");
    let trees = repo_files("tree");
    let index = repo_files("index");
    // keep-within 1m of 10 June 12:00 reaches back to 10 May 12:00: only
    // 10 June itself. keep-last 2 adds 3 May.
    let report = forget_json(&env, &["--keep-within", "1m", "--keep-last", "2"]);
    assert_eq!(report["removed"].as_array().unwrap().len(), 3);
    assert_eq!(ids(&env), [s[3].clone(), s[4].clone()].into_iter().collect());
    assert_eq!(repo_files("snapshots").len(), 2);
    assert_eq!(repo_files("data"), chunks, "forget leaves data for prune");
    assert_eq!(repo_files("tree"), trees);
    assert_eq!(repo_files("index"), index);
    // Both kept ones still restore.
    let target = env.path("r");
    env.coffer().args(["restore", &s[3], "--target"]).arg(&target).assert().success();
    assert_eq!(std::fs::read(env.restored_src(&target).join("a.txt")).unwrap(), b"some content");
}

both_backends!(keep_within_daily);

fn keep_within_daily(backend: Backend) {
    let env = Env::init_on(backend);
    let s = five_snapshots(&env);
    // 10 days before 10 June 12:00 is 31 May 12:00: only 10 June is within,
    // and it is the newest of its day.
    let report = forget_json(&env, &["--keep-within-daily", "10d", "--dry-run"]);
    let kept: Vec<&Value> =
        report["groups"][0]["snapshots"].as_array().unwrap().iter().filter(|d| d["keep"] == true).collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["id"], s[4].as_str());
    assert_eq!(kept[0]["reasons"], serde_json::json!(["daily within 10d"]));
    // 2 months reach every snapshot: one per day (1 May twice: the newer
    // 18:00), and the oldest, 1 May 10:00, as "oldest daily within 2m".
    let report = forget_json(&env, &["--keep-within-daily", "2m", "--dry-run"]);
    let removed: Vec<&str> = report["removed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(removed.is_empty(), "{report:#}");
    let oldest = report["groups"][0]["snapshots"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(oldest["id"], s[0].as_str());
    assert_eq!(oldest["reasons"], serde_json::json!(["oldest daily within 2m"]));
}

both_backends!(groups_and_filters);

fn groups_and_filters(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("a.txt", b"data");
    let a1 = backup_at(&env, "2024-01-01T00:00:00Z", &["--host", "alpha"]);
    let a2 = backup_at(&env, "2024-01-02T00:00:00Z", &["--host", "alpha", "--tag", "x"]);
    let a3 = backup_at(&env, "2024-01-03T00:00:00Z", &["--host", "alpha"]);
    let b1 = backup_at(&env, "2024-01-01T00:00:00Z", &["--host", "beta"]);
    let b2 = backup_at(&env, "2024-01-02T00:00:00Z", &["--host", "beta"]);

    // Grouped by host and paths: the newest of each host is kept.
    let report = forget_json(&env, &["--keep-last", "1", "--dry-run"]);
    let removed: BTreeSet<&str> = report["removed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(removed, [a1.as_str(), a2.as_str(), b1.as_str()].into_iter().collect());
    assert_eq!(report["groups"][0]["group"]["host"], "alpha");
    assert!(report["groups"][0]["group"]["paths"].is_array());

    // One group for everything: only the overall newest (a3) is kept.
    let report = forget_json(&env, &["--keep-last", "1", "--group-by", "", "--dry-run"]);
    assert_eq!(report["removed"].as_array().unwrap().len(), 4);

    // --host limits what is considered: beta is untouched.
    forget_json(&env, &["--keep-last", "1", "--host", "alpha", "--keep-tag", "x"]);
    assert_eq!(ids(&env), [a2.clone(), a3.clone(), b1.clone(), b2.clone()].into_iter().collect());

    // --tag: only snapshots tagged x are considered (just a2), and keep-last keeps it.
    let report = forget_json(&env, &["--keep-last", "1", "--tag", "x", "--dry-run"]);
    assert_eq!(report["removed"].as_array().unwrap().len(), 0);
    assert_eq!(report["groups"][0]["snapshots"].as_array().unwrap().len(), 1);

    // --path not in any snapshot: nothing considered.
    let report = forget_json(&env, &["--keep-last", "1", "--path", "/nonexistent", "--dry-run"]);
    assert_eq!(report["removed"].as_array().unwrap().len(), 0);
    let src = env.src.to_string_lossy().into_owned();
    let report = forget_json(&env, &["--keep-last", "1", "--path", &src, "--host", "beta"]);
    assert_eq!(report["removed"].as_array().unwrap().len(), 1);
    assert_eq!(ids(&env), [a2, a3, b2].into_iter().collect());
}

both_backends!(named_snapshots_are_removed_by_id_prefix);

fn named_snapshots_are_removed_by_id_prefix(backend: Backend) {
    let env = Env::init_on(backend);
    let s = five_snapshots(&env);
    let out = env.coffer().args(["forget", &s[0][..10], &s[2]]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("removed snapshot {}", &s[0][..8])), "{text}");
    assert_eq!(ids(&env), [s[1].clone(), s[3].clone(), s[4].clone()].into_iter().collect());

    // An unknown id, and ids mixed with a policy, are refused with nothing removed.
    let out = env.coffer().args(["forget", &s[1][..8], "abcdef0123"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no snapshot matches"));
    let out = env.coffer().args(["forget", &s[1], "--keep-last", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not both"));
    assert_eq!(ids(&env).len(), 3);
}

both_backends!(ambiguous_prefix_is_a_clear_error);

fn ambiguous_prefix_is_a_clear_error(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("a.txt", b"x");
    backup_at(&env, "2024-01-01T00:00:00Z", &[]);
    // Seventeen snapshots must share a first hex digit; make them through
    // the library (same tree, different hosts).
    let repo = open_repo(&env);
    let (_, base) = repo.find_snapshot("latest").unwrap();
    for i in 0..16 {
        let mut s = base.clone();
        s.host = format!("host{i}");
        repo.save_snapshot(&s).unwrap();
    }
    let all = ids(&env);
    assert_eq!(all.len(), 17);
    let digit = (0..16)
        .map(|d| format!("{d:x}"))
        .find(|d| all.iter().filter(|id| id.starts_with(d.as_str())).count() > 1)
        .expect("pigeonhole");
    let out = env.coffer().args(["forget", &digit]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("matches") && err.contains("give more digits"), "{err}");
    assert_eq!(ids(&env).len(), 17);
}

both_backends!(refuses_to_remove_everything);

fn refuses_to_remove_everything(backend: Backend) {
    let env = Env::init_on(backend);
    five_snapshots(&env);
    // No policy at all.
    let out = env.coffer().arg("forget").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no policy given"));
    // --keep-last 0 is no policy either.
    let out = env.coffer().args(["forget", "--keep-last", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    // A policy that keeps nothing of a group (no snapshot has the tag).
    let out = env.coffer().args(["forget", "--keep-tag", "nosuchtag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to remove every snapshot"), "{err}");
    assert_eq!(ids(&env).len(), 5);
    // Bad values are refused by the parser.
    let out = env.coffer().args(["forget", "--keep-within", "2w"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = env.coffer().args(["forget", "--keep-daily", "-1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn forget_over_s3() {
    use crate::common::s3::{self, S3Server};
    let server = S3Server::start();
    let url = server.url("bucket/repo");
    let env = Env::new();
    env.write("a.txt", b"over s3");
    s3::coffer(&env, &url).args(["init", "--argon2-memory", "64", "--argon2-iterations", "1"]).assert().success();
    for t in ["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z"] {
        s3::coffer(&env, &url).args(["backup", "-q", "--time", t]).arg(&env.src).assert().success();
    }
    let out = s3::coffer(&env, &url).args(["forget", "--json", "--keep-last", "1"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let snapshots = server.keys("bucket").into_iter().filter(|k| k.starts_with("repo/snapshots/")).count();
    assert_eq!(snapshots, 1);
}

both_backends!(every_keep_rule_alone_and_combined_names_itself);

/// Each keep rule alone, then all together, over snapshots at fixed times
/// that fall into distinct hours, days, ISO weeks and years: the dry run
/// keeps exactly the expected snapshots, each with the rules that keep it.
fn every_keep_rule_alone_and_combined_names_itself(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("a.txt", b"some content");
    let s: Vec<String> = [
        ("2022-03-15T10:00:00+00:00", "keep"),
        ("2023-06-01T10:00:00+00:00", ""),
        // Monday and Wednesday of ISO week 19 of 2024.
        ("2024-05-06T09:10:00+00:00", ""),
        ("2024-05-08T09:20:00+00:00", ""),
        // Monday of week 20: two in the 09:00 hour, one at 11:00.
        ("2024-05-13T09:30:00+00:00", ""),
        ("2024-05-13T09:50:00+00:00", ""),
        ("2024-05-13T11:00:00+00:00", ""),
    ]
    .iter()
    .map(|(t, tag)| if tag.is_empty() { backup_at(&env, t, &[]) } else { backup_at(&env, t, &["--tag", tag]) })
    .collect();
    // The kept snapshots, newest first, with their reasons; the rest must
    // be listed as removed.
    let kept = |args: &[&str]| -> Vec<(String, Vec<String>)> {
        let mut all = args.to_vec();
        all.push("--dry-run");
        let report = forget_json(&env, &all);
        let decided = report["groups"][0]["snapshots"].as_array().unwrap();
        assert_eq!(decided.len(), 7, "{report:#}");
        let kept: Vec<(String, Vec<String>)> = decided
            .iter()
            .filter(|d| d["keep"] == true)
            .map(|d| {
                let reasons = d["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string());
                (d["id"].as_str().unwrap().to_string(), reasons.collect())
            })
            .collect();
        let removed: BTreeSet<String> =
            report["removed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        let expected_removed: BTreeSet<String> =
            s.iter().filter(|id| !kept.iter().any(|(k, _)| k == *id)).cloned().collect();
        assert_eq!(removed, expected_removed, "{report:#}");
        kept
    };
    let one = |i: usize, reasons: &[&str]| (s[i].clone(), reasons.iter().map(|r| r.to_string()).collect::<Vec<_>>());

    assert_eq!(kept(&["--keep-last", "2"]), [one(6, &["last snapshot"]), one(5, &["last snapshot"])]);
    // 09:50 is the newest of its hour; 09:30 shares it.
    assert_eq!(kept(&["--keep-hourly", "2"]), [one(6, &["hourly snapshot"]), one(5, &["hourly snapshot"])]);
    assert_eq!(kept(&["--keep-daily", "2"]), [one(6, &["daily snapshot"]), one(3, &["daily snapshot"])]);
    assert_eq!(kept(&["--keep-weekly", "2"]), [one(6, &["weekly snapshot"]), one(3, &["weekly snapshot"])]);
    assert_eq!(kept(&["--keep-monthly", "2"]), [one(6, &["monthly snapshot"]), one(1, &["monthly snapshot"])]);
    assert_eq!(kept(&["--keep-yearly", "2"]), [one(6, &["yearly snapshot"]), one(1, &["yearly snapshot"])]);
    // One day back from the newest (13 May 11:00): the three of 13 May.
    assert_eq!(
        kept(&["--keep-within", "1d"]),
        [one(6, &["within 1d"]), one(5, &["within 1d"]), one(4, &["within 1d"])]
    );
    assert_eq!(kept(&["--keep-tag", "keep"]), [one(0, &["tagged [keep]"])]);
    // A count larger than the periods there are keeps the oldest snapshot too.
    assert_eq!(
        kept(&["--keep-yearly", "5"]),
        [one(6, &["yearly snapshot"]), one(1, &["yearly snapshot"]), one(0, &["yearly snapshot"])]
    );

    // Together: the union, each snapshot with every rule that keeps it.
    let all = [
        "--keep-last",
        "1",
        "--keep-hourly",
        "2",
        "--keep-weekly",
        "2",
        "--keep-yearly",
        "2",
        "--keep-within",
        "1d",
        "--keep-tag",
        "keep",
    ];
    assert_eq!(
        kept(&all),
        [
            one(6, &["within 1d", "last snapshot", "hourly snapshot", "weekly snapshot", "yearly snapshot"]),
            one(5, &["within 1d", "hourly snapshot"]),
            one(4, &["within 1d"]),
            one(3, &["weekly snapshot"]),
            one(1, &["yearly snapshot"]),
            one(0, &["tagged [keep]"]),
        ]
    );
    let text = env.coffer().arg("forget").args(all).arg("--dry-run").output().unwrap();
    assert!(text.status.success(), "{}", String::from_utf8_lossy(&text.stderr));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("keep: within 1d, last snapshot, hourly snapshot, weekly snapshot, yearly snapshot"),
        "{text}"
    );
    assert!(text.contains(&format!("would remove snapshot {}", &s[2][..8])), "{text}");
    assert_eq!(ids(&env).len(), 7, "dry runs remove nothing");

    // The real run removes exactly the one the dry run named.
    let report = forget_json(&env, &all);
    assert_eq!(report["removed"], serde_json::json!([s[2]]), "{report:#}");
    assert_eq!(ids(&env), s.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, id)| id.clone()).collect());
}
