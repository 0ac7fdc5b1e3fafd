//! `coffer rewrite` end to end: paths matching `--exclude` patterns are
//! removed from new copies of the snapshots, the originals stay (and still
//! restore them) unless `--forget`, after which a prune deletes the data
//! only they used; a snapshot with nothing to remove is left untouched.

use std::path::PathBuf;

use coffer_core::Id;
use coffer_core::crypto::ObjectKind;
use serde_json::Value;

use crate::common::{
    Backend, Env, both_backends, contents, open_repo, random_bytes, restored_contents, snapshot_node, snapshots_json,
    stderr_of,
};
use crate::repair::{backup_id, json, ok_json};

fn ids(env: &Env) -> Vec<String> {
    let mut v: Vec<String> = snapshots_json(env).iter().map(|s| s["id"].as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

fn changed_paths(r: &Value) -> Vec<String> {
    r["changes"].as_array().unwrap().iter().map(|c| c["path"].as_str().unwrap().to_string()).collect()
}

both_backends!(rewrite_removes_a_secret_keeps_the_original_unless_forget_and_prune_frees_its_data);

fn rewrite_removes_a_secret_keeps_the_original_unless_forget_and_prune_frees_its_data(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("notes/keep.txt", &random_bytes(100_000, 1));
    env.write("notes/secret.key", &random_bytes(150_000, 2));
    env.write("private/a.bin", &random_bytes(120_000, 3));
    env.write("photo.jpg", &random_bytes(300_000, 4));
    let first = backup_id(&env, &["--tag", "daily"]);
    env.write("photo2.jpg", &random_bytes(300_000, 5));
    let second = backup_id(&env, &["--tag", "daily"]);
    let full = contents(&env.src);
    let repo = open_repo(&env);
    let secret_chunk = snapshot_node(&repo, "latest", &env.src.join("notes/secret.key")).content[0].0;
    let private_chunk = snapshot_node(&repo, "latest", &env.src.join("private/a.bin")).content[0].0;
    let before = ids(&env);
    let src = env.src.display().to_string();
    let removed = [format!("{src}/notes/secret.key"), format!("{src}/private/")];
    let excludes = ["--exclude", "*.key", "--exclude", "private"];

    // A pattern that matches nothing leaves every snapshot untouched.
    let none = ok_json(&env, &["rewrite", "--exclude", "*.nothing"]);
    assert!(none["rewritten"].as_array().unwrap().is_empty(), "{none:#}");
    assert_eq!(none["snapshots_checked"], 2);
    assert_eq!(ids(&env), before);

    let dry = ok_json(&env, &[&["rewrite", "--dry-run"][..], &excludes].concat());
    let planned = dry["rewritten"].as_array().unwrap();
    assert_eq!(planned.len(), 2, "{dry:#}");
    assert!(planned.iter().all(|r| r["new"].is_null() && changed_paths(r) == removed), "{dry:#}");
    assert_eq!(ids(&env), before, "a dry run writes nothing");

    // The latest only, the original kept.
    let out = env.coffer().args(["rewrite", &second.to_hex()]).args(excludes).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains(&format!("{}: excluded; removed", removed[0])), "{text}");
    assert!(text.contains("1 snapshots rewritten"), "{text}");
    let listed = snapshots_json(&env);
    assert_eq!(listed.len(), 3);
    let copy = listed.iter().find(|s| s["original"] == second.to_hex().as_str()).expect("the rewritten snapshot");
    let orig = listed.iter().find(|s| s["id"] == second.to_hex().as_str()).expect("the original is kept");
    for field in ["time", "host", "paths", "tags", "parent"] {
        assert_eq!(copy[field], orig[field], "{field}");
    }
    let copy_id = copy["id"].as_str().and_then(Id::from_hex).unwrap();
    let repo = open_repo(&env);
    let mut want = full.clone();
    want.retain(|p, _| !p.ends_with("secret.key") && !p.starts_with("private"));
    assert_eq!(restored_contents(&repo, &copy_id, &env.src), want);
    assert_eq!(restored_contents(&repo, &second, &env.src), full, "the original still restores the secret");

    // All of them, the originals forgotten: the rewritten copy has nothing
    // to remove and is left as it is.
    let done = ok_json(&env, &[&["rewrite", "--forget"][..], &excludes].concat());
    let rewritten = done["rewritten"].as_array().unwrap();
    let originals: Vec<&str> = rewritten.iter().map(|r| r["original"].as_str().unwrap()).collect();
    assert_eq!(originals, [first.to_hex(), second.to_hex()], "{done:#}");
    assert!(rewritten.iter().all(|r| r["forgotten"] == true), "{done:#}");
    assert_eq!(rewritten[1]["new"], copy_id.to_hex().as_str(), "the same copy again, under the same id");
    let left = ids(&env);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&first.to_hex()) && !left.contains(&second.to_hex()));

    // The secret's data is still stored until a prune, then gone.
    let chunks = |env: &Env| open_repo(env).list_ids(ObjectKind::Chunk).unwrap();
    assert!(chunks(&env).contains(&secret_chunk));
    env.coffer().args(["prune", "--max-unused", "0"]).assert().success();
    let after = chunks(&env);
    assert!(!after.contains(&secret_chunk) && !after.contains(&private_chunk), "the excluded files' chunks are gone");
    let (code, report) = json(&env, &["check", "--read-data"]);
    assert_eq!(code, 0, "{report:#}");
    let repo = open_repo(&env);
    for id in &left {
        let restored = restored_contents(&repo, &Id::from_hex(id).unwrap(), &env.src);
        assert!(restored.keys().all(|p: &PathBuf| !p.ends_with("secret.key") && !p.starts_with("private")));
        assert!(restored.contains_key(&PathBuf::from("notes/keep.txt")));
    }
}

/// Rewrite takes a shared lock, as backup and forget: it runs beside a
/// backup, but not during prune's exclusive phase (or a repair).
#[test]
fn rewrite_runs_beside_a_backup_but_not_under_an_exclusive_lock() {
    let env = Env::init();
    env.write("a.txt", b"a");
    env.write("b.tmp", b"b");
    backup_id(&env, &[]);
    let repo = open_repo(&env);
    let shared = repo.lock_shared("backup").unwrap();
    env.coffer().args(["rewrite", "--exclude", "*.tmp"]).assert().success();
    shared.release().unwrap();
    let exclusive = repo.lock_exclusive("repair").unwrap();
    let out = env.coffer().args(["rewrite", "--exclude", "*.txt"]).output().unwrap();
    assert_eq!(out.status.code(), Some(11), "{}", stderr_of(&out));
    exclusive.release().unwrap();
    assert_eq!(snapshots_json(&env).len(), 2, "the second rewrite wrote nothing");
    // Without a pattern there is nothing to do: refused before opening.
    let out = env.coffer().arg("rewrite").output().unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("nothing to remove"), "{}", stderr_of(&out));
}
