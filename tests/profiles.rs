//! Profiles (`~/.config/coffer/profiles.toml`): a nightly job with no
//! flags, and the precedence file < environment < flag.

use std::path::Path;

use serde_json::Value;

use crate::common::{Env, PASSWORD, stderr_of};

/// The binary with nothing of the caller's settings but `profiles` as the
/// profile file: no repository, no password in the environment.
fn bare(env: &Env, profiles: &Path) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("coffer").expect("coffer binary");
    for var in [
        "COFFER_REPOSITORY",
        "COFFER_PASSWORD",
        "COFFER_PASSWORD_FILE",
        "COFFER_PASSWORD_COMMAND",
        "COFFER_PROFILE",
        "COFFER_LOG",
        "COFFER_S3_STORAGE_CLASS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("COFFER_PROFILES", profiles)
        .env("COFFER_CACHE_DIR", env.path("cache"))
        .env("COFFER_STATE_DIR", env.path("state"))
        .env("HOME", env.path("home"));
    cmd
}

fn count(cmd: &mut assert_cmd::Command) -> usize {
    let out = cmd.args(["snapshots", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap().len()
}

#[test]
fn a_profile_makes_the_nightly_job_flagless_and_flags_and_environment_win() {
    let env = Env::new();
    env.write("photos/a.jpg", b"a photo");
    env.write("photos/scratch.tmp", b"scratch");
    let password = env.write("password", PASSWORD.as_bytes());
    let repo = |name: &str| env.path(name).to_str().unwrap().to_string();
    let profiles = env.write(
        "profiles.toml",
        format!(
            "[default]\nrepository = \"{a}\"\npassword-file = \"{pw}\"\n\n[default.backup]\npaths = [\"{src}\"]\nexclude = [\"*.tmp\"]\n\n\
             [default.forget]\nkeep-last = 1\n\n[other]\nrepository = \"{c}\"\npassword-file = \"{pw}\"\n",
            a = repo("a"),
            c = repo("c"),
            pw = password.display(),
            src = env.src.display()
        )
        .as_bytes(),
    );
    let init = ["init", "--argon2-memory", "64", "--argon2-iterations", "1"];
    for name in ["a", "b", "c"] {
        bare(&env, &profiles).args(init).args(["-r", &repo(name)]).assert().success();
    }
    bare(&env, &profiles).args(["-r", &repo("b"), "backup"]).arg(&env.src).assert().success();
    for _ in 0..2 {
        bare(&env, &profiles).args(["-r", &repo("c"), "backup"]).arg(&env.src).assert().success();
    }

    // The nightly job: no flags at all.
    for _ in 0..2 {
        let out = bare(&env, &profiles).arg("backup").output().unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
    }
    assert_eq!(count(&mut bare(&env, &profiles)), 2, "the profile's repository");
    let out = bare(&env, &profiles).args(["forget", "--prune"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(count(&mut bare(&env, &profiles)), 1, "the profile's retention policy (keep-last 1)");
    let ls = bare(&env, &profiles).args(["ls", "latest"]).output().unwrap();
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(listing.contains("a.jpg") && !listing.contains("scratch.tmp"), "the profile's excludes: {listing}");

    // Precedence: environment over file, flag over both.
    assert_eq!(count(bare(&env, &profiles).env("COFFER_REPOSITORY", repo("b"))), 1);
    assert_eq!(count(bare(&env, &profiles).env("COFFER_REPOSITORY", repo("b")).args(["-r", &repo("c")])), 2);
    assert_eq!(count(bare(&env, &profiles).args(["--profile", "other"])), 2);
    assert_eq!(count(bare(&env, &profiles).env("COFFER_PROFILE", "other")), 2);
    // A password in the environment outranks the file's password file.
    let wrong = bare(&env, &profiles).env("COFFER_PASSWORD", "not the password").args(["snapshots"]).output().unwrap();
    assert_eq!(wrong.status.code(), Some(12), "{}", stderr_of(&wrong));

    // An exclude on the command line replaces the file's list.
    let out = bare(&env, &profiles).args(["backup", "--exclude", "*.jpg"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let ls = bare(&env, &profiles).args(["ls", "latest"]).output().unwrap();
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(!listing.contains("a.jpg") && listing.contains("scratch.tmp"), "{listing}");

    // A profile that does not exist, and a key that does not, are clear errors.
    let out = bare(&env, &profiles).args(["--profile", "nope", "snapshots"]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("no profile \"nope\""), "{}", stderr_of(&out));
    let bad = env.write("bad.toml", b"[default]\nrepo = \"x\"\n");
    let out = bare(&env, &bad).arg("snapshots").output().unwrap();
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("profile \"default\"") && err.contains("bad.toml"), "{err}");
}

#[test]
fn without_a_profile_file_nothing_changes() {
    let env = Env::init();
    let missing = env.path("no-such-profiles.toml");
    let out = bare(&env, &missing).arg("snapshots").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "no repository given");
    assert!(stderr_of(&out).contains("no repository given"), "{}", stderr_of(&out));
    let out = bare(&env, &missing).args(["--profile", "x", "snapshots"]).output().unwrap();
    assert!(stderr_of(&out).contains("cannot read the profiles"), "{}", stderr_of(&out));
}
