//! `coffer key`: several passwords for one repository, removal guards, and
//! password changes.

use serde_json::Value;

use crate::common::{Backend, Env, both_backends};

const CHEAP: [&str; 4] = ["--argon2-memory", "64", "--argon2-iterations", "1"];
const OTHER: &str = "a second password";

/// Writes `password` into a file in the scratch folder; returns its path.
fn password_file(env: &Env, name: &str, password: &str) -> String {
    let p = env.path(name);
    std::fs::write(&p, format!("{password}\n")).unwrap();
    p.to_string_lossy().into_owned()
}

fn keys_json(env: &Env, password: &str) -> Vec<Value> {
    let out = env.coffer().env("COFFER_PASSWORD", password).args(["key", "list", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The id of the key that `password` opens.
fn current_key(env: &Env, password: &str) -> String {
    let keys = keys_json(env, password);
    let current: Vec<&Value> = keys.iter().filter(|k| k["current"] == true).collect();
    assert_eq!(current.len(), 1, "{keys:?}");
    current[0]["id"].as_str().unwrap().to_string()
}

fn snapshot_ids(env: &Env, password: &str) -> Result<Vec<String>, i32> {
    let out = env.coffer().env("COFFER_PASSWORD", password).args(["snapshots", "--json"]).output().unwrap();
    if !out.status.success() {
        return Err(out.status.code().unwrap_or(-1));
    }
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    Ok(v.iter().map(|s| s["id"].as_str().unwrap().to_string()).collect())
}

fn add_key(env: &Env, password: &str) {
    let file = password_file(env, "new-password", password);
    env.coffer().args(["key", "add", "--new-password-file", &file]).args(CHEAP).assert().success();
}

both_backends!(two_passwords_open_the_same_repository);

fn two_passwords_open_the_same_repository(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("a.txt", b"shared");
    env.backup_json(&[]);
    add_key(&env, OTHER);
    let first = snapshot_ids(&env, crate::common::PASSWORD).unwrap();
    assert_eq!(snapshot_ids(&env, OTHER).unwrap(), first);
    assert_eq!(first.len(), 1);
    // Both listed, each password marks its own key as current.
    let keys = keys_json(&env, OTHER);
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|k| k["readable"] == true && k["created"].as_str().is_some_and(|c| !c.is_empty())));
    assert_ne!(current_key(&env, OTHER), current_key(&env, crate::common::PASSWORD));
    // The text listing marks the current key with `*`.
    let out = env.coffer().args(["key", "list"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mine = current_key(&env, crate::common::PASSWORD);
    assert!(text.contains(&format!("*{}", &mine[..8])), "{text}");
    // A backup made with the second password dedups against the first.
    let report: Value = {
        let out = env.coffer().env("COFFER_PASSWORD", OTHER).args(["backup", "--json"]).arg(&env.src).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(report["chunks_added"], 0, "{report}");
}

both_backends!(remove_a_key_but_never_the_one_in_use_or_the_last);

fn remove_a_key_but_never_the_one_in_use_or_the_last(backend: Backend) {
    let env = Env::init_on(backend);
    let first = current_key(&env, crate::common::PASSWORD);
    // The only key: refused.
    let out = env.coffer().args(["key", "remove", &first]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only key"), "{}", String::from_utf8_lossy(&out.stderr));

    add_key(&env, OTHER);
    // The key in use: refused.
    let out = env.coffer().args(["key", "remove", &first[..12]]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key in use"));
    assert_eq!(keys_json(&env, OTHER).len(), 2);
    // With the other password, by prefix: removed, and the first password stops working.
    let out = env.coffer().env("COFFER_PASSWORD", OTHER).args(["key", "remove", &first[..12]]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(keys_json(&env, OTHER).len(), 1);
    assert_eq!(snapshot_ids(&env, crate::common::PASSWORD), Err(12));
    assert!(snapshot_ids(&env, OTHER).is_ok());
    // An unknown key id.
    let out = env.coffer().env("COFFER_PASSWORD", OTHER).args(["key", "remove", "0000ffff"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no key matches"));
}

both_backends!(passwd_replaces_the_key_in_use);

fn passwd_replaces_the_key_in_use(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("a.txt", b"x");
    env.backup_json(&[]);
    let before = snapshot_ids(&env, crate::common::PASSWORD).unwrap();
    let old_key = current_key(&env, crate::common::PASSWORD);
    let file = password_file(&env, "new-password", OTHER);

    // A wrong password is refused with exit 12 and changes nothing.
    let out = env
        .coffer()
        .env("COFFER_PASSWORD", "wrong")
        .args(["key", "passwd", "--new-password-file", &file])
        .args(CHEAP)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(12));
    assert_eq!(keys_json(&env, crate::common::PASSWORD).len(), 1);

    let out =
        env.coffer().args(["key", "passwd", "--json", "--new-password-file", &file]).args(CHEAP).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let changed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(changed["removed"], old_key.as_str());
    // The old password no longer opens; the new one opens the same snapshots.
    assert_eq!(snapshot_ids(&env, crate::common::PASSWORD), Err(12));
    assert_eq!(snapshot_ids(&env, OTHER).unwrap(), before);
    let keys = keys_json(&env, OTHER);
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], changed["added"]);
}

both_backends!(new_password_must_be_given_and_not_empty);

fn new_password_must_be_given_and_not_empty(backend: Backend) {
    let env = Env::init_on(backend);
    // No file and no terminal.
    let out = env.coffer().args(["key", "add"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--new-password-file"));
    let file = password_file(&env, "empty", "");
    let out = env.coffer().args(["key", "add", "--new-password-file", &file]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty password"));
    assert_eq!(keys_json(&env, crate::common::PASSWORD).len(), 1);
}

#[test]
fn keys_over_s3() {
    use crate::common::s3::{self, S3Server};
    let server = S3Server::start();
    let url = server.url("bucket/repo");
    let env = Env::new();
    s3::coffer(&env, &url).args(["init"]).args(CHEAP).assert().success();
    let file = password_file(&env, "new-password", OTHER);
    s3::coffer(&env, &url).args(["key", "passwd", "--new-password-file", &file]).args(CHEAP).assert().success();
    let keys: Vec<String> = server.keys("bucket").into_iter().filter(|k| k.starts_with("repo/keys/")).collect();
    assert_eq!(keys.len(), 1, "the old key is removed: {keys:?}");
    let out = s3::coffer(&env, &url).args(["snapshots"]).output().unwrap();
    assert_eq!(out.status.code(), Some(12), "the old password no longer opens");
    let out = s3::coffer(&env, &url).env("COFFER_PASSWORD", OTHER).args(["key", "list", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(format!("repo/keys/{}", listed[0]["id"].as_str().unwrap()), keys[0]);
}
