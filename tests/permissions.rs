//! Backup-only credentials (docs/s3.md, "Backup-only (append-only)
//! policy") against a real SeaweedFS server that enforces a bucket policy:
//! a machine whose key may not delete backs up, lists, restores and checks;
//! forget, prune and key removal stop at their first delete with a message
//! that says why, and leave the repository whole.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Output;

use serde_json::{Value, json};

use crate::common::weed::{self, ADMIN, BACKUP, Bucket, Identity};
use crate::common::{Env, contents, random_bytes, stderr_of};

const INIT: [&str; 5] = ["init", "--argon2-memory", "64", "--argon2-iterations", "1"];
/// Where the repository lives in each test's bucket.
const PREFIX: &str = "repo";
/// What a refused delete says (see the S3 backend's error messages).
const REFUSED: &str = "may not delete objects";
const OTHER_PASSWORD: &str = "the password of a second key";

/// The bucket policy of docs/s3.md's backup-only section, with SeaweedFS's
/// principal for `who`: it may delete nothing in the bucket but the
/// repository's locks, or, with `locks_too`, not even those.
fn deny_deletes(bucket: &Bucket, who: &Identity, locks_too: bool) -> Value {
    let mut statement = json!({
        "Sid": "BackupOnly",
        "Effect": "Deny",
        "Principal": {"AWS": [who.principal()]},
        "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion"],
    });
    if locks_too {
        statement["Resource"] = json!([format!("arn:aws:s3:::{}/*", bucket.name)]);
    } else {
        statement["NotResource"] = json!([format!("arn:aws:s3:::{}/{PREFIX}/locks/*", bucket.name)]);
    }
    json!({"Version": "2012-10-17", "Statement": [statement]})
}

/// One machine: a bucket's repository with one identity's keys.
struct Machine<'a> {
    env: &'a Env,
    bucket: &'a Bucket,
    who: &'a Identity,
}

impl Machine<'_> {
    fn command(&self) -> assert_cmd::Command {
        self.bucket.coffer(self.env, PREFIX, self.who)
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run coffer")
    }

    /// Runs a command that must succeed; its output.
    fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(out.status.success(), "{} {args:?} failed: {}", self.who.name, stderr_of(&out));
        out
    }

    /// Runs a command that must stop at a refused delete; its stderr.
    fn refused(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let err = stderr_of(&out);
        assert!(!out.status.success(), "{} {args:?} succeeded: {err}", self.who.name);
        assert!(err.contains(REFUSED), "{} {args:?} does not say why it failed: {err}", self.who.name);
        err
    }

    /// `backup --json` of the environment's source, which must succeed:
    /// the new snapshot's id, and what it said on stderr.
    fn backup(&self) -> (String, String) {
        let src = self.env.src.to_str().expect("UTF-8 source path");
        let out = self.ok(&["backup", "--json", src]);
        let report: Value = serde_json::from_slice(&out.stdout).expect("backup JSON");
        let id = report["snapshot_id"].as_str().unwrap_or_else(|| panic!("no snapshot id in {report}"));
        (id.to_string(), stderr_of(&out))
    }

    /// The ids of the snapshots listed, sorted.
    fn snapshots(&self) -> Vec<String> {
        let out = self.ok(&["snapshots", "--json"]);
        let listed: Vec<Value> = serde_json::from_slice(&out.stdout).expect("snapshots JSON");
        let mut ids: Vec<String> = listed.iter().map(|s| s["id"].as_str().expect("snapshot id").to_string()).collect();
        ids.sort();
        ids
    }

    /// Restores `snapshot` into a new folder; the files of the source in it.
    fn restore(&self, snapshot: &str) -> BTreeMap<PathBuf, Vec<u8>> {
        let target = tempfile::tempdir_in(self.env.dir.path()).expect("restore target");
        let to = target.path().to_str().expect("UTF-8 target path");
        self.ok(&["restore", snapshot, "--target", to]);
        contents(&self.env.restored_src(target.path()))
    }

    /// The keys' ids, with the one `password` opens.
    fn keys(&self, password: &str) -> (Vec<String>, String) {
        let out = self
            .command()
            .env("COFFER_PASSWORD", password)
            .args(["key", "list", "--json"])
            .output()
            .expect("run coffer");
        assert!(out.status.success(), "key list: {}", stderr_of(&out));
        let keys: Vec<Value> = serde_json::from_slice(&out.stdout).expect("key list JSON");
        let id = |k: &Value| k["id"].as_str().expect("key id").to_string();
        let current = keys.iter().find(|k| k["current"] == true).map(id).expect("a current key");
        (keys.iter().map(id).collect(), current)
    }
}

/// A new environment, and a bucket of its own with a repository that the
/// admin initialised and [`deny_deletes`] in force for [`BACKUP`].
fn backup_only_repository(tag: &str, locks_too: bool) -> (Env, Bucket) {
    let env = Env::new();
    let bucket = weed::bucket(tag);
    Machine { env: &env, bucket: &bucket, who: &ADMIN }.ok(&INIT);
    bucket.put_policy(&deny_deletes(&bucket, &BACKUP, locks_too));
    (env, bucket)
}

/// The repository's lock objects.
fn locks(bucket: &Bucket) -> Vec<String> {
    bucket.objects(&format!("{PREFIX}/locks")).into_keys().collect()
}

/// Adds a key for [`OTHER_PASSWORD`]; its id.
fn add_other_key(machine: &Machine) -> String {
    let file = machine.env.path("other-password");
    std::fs::write(&file, format!("{OTHER_PASSWORD}\n")).expect("write the password file");
    let file = file.to_str().expect("UTF-8 path");
    machine.ok(&["key", "add", "--new-password-file", file, "--argon2-memory", "64", "--argon2-iterations", "1"]);
    machine.keys(OTHER_PASSWORD).1
}

/// Asserts that every object of `before` is still stored, unchanged in size.
fn nothing_deleted(bucket: &Bucket, before: &BTreeMap<String, u64>, after_what: &str) {
    let now = bucket.objects(PREFIX);
    let gone: Vec<_> = before.iter().filter(|(k, size)| now.get(*k) != Some(size)).collect();
    assert!(gone.is_empty(), "after {after_what}, objects are gone or changed: {gone:?}");
}

#[test]
fn backup_only_credentials_back_up_list_and_restore_but_delete_nothing() {
    let (env, bucket) = backup_only_repository("backup-only", false);
    let admin = Machine { env: &env, bucket: &bucket, who: &ADMIN };
    let laptop = Machine { env: &env, bucket: &bucket, who: &BACKUP };
    let other_key = add_other_key(&admin);

    env.write("photos/a.jpg", &random_bytes(1_500_000, 1));
    env.write("photos/b.jpg", &random_bytes(300_000, 2));
    env.write("notes.txt", b"first notes");
    let (first, err) = laptop.backup();
    assert!(!err.contains(REFUSED), "{err}");
    let first_files = contents(&env.src);
    assert!(locks(&bucket).is_empty(), "the first backup left its lock: {:?}", locks(&bucket));
    env.write("notes.txt", b"second notes, a little longer");
    env.write("photos/c.jpg", &random_bytes(800_000, 3));
    let (second, err) = laptop.backup();
    assert!(!err.contains(REFUSED), "{err}");
    let second_files = contents(&env.src);
    assert!(locks(&bucket).is_empty(), "the second backup left its lock: {:?}", locks(&bucket));

    let mut both = vec![first.clone(), second.clone()];
    both.sort();
    assert_eq!(laptop.snapshots(), both);
    let listing = String::from_utf8_lossy(&laptop.ok(&["ls", "latest"]).stdout).into_owned();
    assert!(listing.contains("photos/c.jpg") && listing.contains("notes.txt"), "{listing}");
    assert_eq!(laptop.restore(&first), first_files);
    assert_eq!(laptop.restore(&second), second_files);
    laptop.ok(&["check"]);
    assert!(locks(&bucket).is_empty(), "check left its lock: {:?}", locks(&bucket));

    // Each command that deletes stops at its first delete, says why, and
    // deletes nothing (its lock aside, which it may delete).
    let before = bucket.objects(PREFIX);
    for args in [&["forget", "--keep-last", "1"][..], &["prune"], &["key", "remove", &other_key]] {
        laptop.refused(args);
        nothing_deleted(&bucket, &before, &format!("{args:?}"));
        assert!(locks(&bucket).is_empty(), "{args:?} left its lock: {:?}", locks(&bucket));
    }

    // Another machine, with a key that may delete, finds all of it.
    admin.ok(&["check", "--read-data"]);
    assert_eq!(admin.snapshots(), both);
    assert_eq!(admin.restore(&first), first_files);
    assert_eq!(admin.restore(&second), second_files);
    let (keys, current) = admin.keys(OTHER_PASSWORD);
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(current, other_key);
}

#[test]
fn a_backup_whose_lock_may_not_be_removed_still_succeeds() {
    let (env, bucket) = backup_only_repository("no-lock-delete", true);
    let admin = Machine { env: &env, bucket: &bucket, who: &ADMIN };
    let laptop = Machine { env: &env, bucket: &bucket, who: &BACKUP };

    env.write("photos/a.jpg", &random_bytes(500_000, 4));
    let (first, err) = laptop.backup();
    assert!(err.contains("could not remove the backup's lock") && err.contains(REFUSED), "{err}");
    assert_eq!(locks(&bucket).len(), 1, "{:?}", locks(&bucket));
    // The lock left behind keeps no other backup out.
    env.write("photos/b.jpg", &random_bytes(200_000, 5));
    let (second, err) = laptop.backup();
    assert!(err.contains("could not remove the backup's lock") && err.contains(REFUSED), "{err}");
    assert_eq!(locks(&bucket).len(), 2, "{:?}", locks(&bucket));
    let mut both = vec![first, second.clone()];
    both.sort();
    assert_eq!(laptop.snapshots(), both);
    let files = contents(&env.src);
    assert_eq!(laptop.restore(&second), files);

    // `unlock`, with a key that may delete, removes the locks: here on the
    // same machine, where their processes are known to be gone.
    let out = admin.ok(&["unlock"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(said.matches("removed the stale lock").count(), 2, "{said}{}", stderr_of(&out));
    assert!(locks(&bucket).is_empty(), "{:?}", locks(&bucket));
    assert_eq!(admin.restore(&second), files);
}
