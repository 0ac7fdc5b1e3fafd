//! The rest of the command-line surface: listings and their JSON, snapshot
//! selection, include/exclude, dry runs, parents, and what survives a round
//! trip (odd names, empty folders, symlinks, modes, times).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use serde_json::Value;

use crate::common::{
    Backend, Env, both_backends, dir_state, files_below, open_repo, random_bytes, snapshots_json, stderr_of,
};

/// The counts of a backup's summary, in its JSON report and in its snapshot.
const SUMMARY_FIELDS: [&str; 12] = [
    "files_new",
    "files_changed",
    "files_unchanged",
    "dirs",
    "bytes_read",
    "bytes_total",
    "bytes_added",
    "chunks_added",
    "trees_added",
    "errors",
    "duration_ms",
    "files_changed_while_read",
];

both_backends!(snapshots_table_and_json, ls_plain_long_and_json, restore_include_selects_a_subtree);

/// Runs a command that must succeed; returns its stdout.
fn ok(cmd: &mut assert_cmd::Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed: {}", stderr_of(&out));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs a command that must fail with exit code 1; returns its stderr.
fn fails(cmd: &mut assert_cmd::Command) -> String {
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{cmd:?}: {}", stderr_of(&out));
    stderr_of(&out)
}

/// `src`, resolved as the snapshot records it.
fn src(env: &Env) -> PathBuf {
    std::fs::canonicalize(&env.src).unwrap()
}

fn src_str(env: &Env) -> String {
    src(env).to_str().unwrap().to_string()
}

fn is_hex64(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// `coffer ls --json …`, one object per line.
fn ls_json(env: &Env, args: &[&OsStr]) -> Vec<Value> {
    let out = ok(env.coffer().args(["ls", "--json"]).args(args));
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

/// The paths of an `ls` listing that lie inside `src`, relative to it.
fn listed_below(env: &Env, paths: impl IntoIterator<Item = String>) -> Vec<String> {
    let base = format!("{}/", src_str(env));
    paths.into_iter().filter_map(|p| p.strip_prefix(&base).map(str::to_string)).collect()
}

fn ids(snaps: &[Value]) -> Vec<String> {
    snaps.iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
}

fn filtered(env: &Env, args: &[&str]) -> Vec<String> {
    let out = ok(env.coffer().args(["snapshots", "--json"]).args(args));
    ids(&serde_json::from_str::<Vec<Value>>(&out).unwrap())
}

fn snapshots_table_and_json(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("a.txt", b"hello");
    env.write("d/b.bin", &random_bytes(10_000, 1));
    let r1 = env.backup_json(&["--tag", "alpha", "--tag", "beta,gamma", "--host", "host-one"]);
    env.write("c.txt", b"more");
    let r2 = env.backup_json(&["--host", "host-two"]);
    let (id1, id2) = (r1["snapshot_id"].as_str().unwrap(), r2["snapshot_id"].as_str().unwrap());

    let table = ok(env.coffer().arg("snapshots"));
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["ID", "Time", "Host", "Tags", "Paths", "Size"], "{table}");
    assert!(lines[1].chars().all(|c| c == '-'), "{table}");
    let row1 = lines.iter().find(|l| l.starts_with(&id1[..8])).unwrap_or_else(|| panic!("no row for {id1}:\n{table}"));
    let row2 = lines.iter().find(|l| l.starts_with(&id2[..8])).unwrap_or_else(|| panic!("no row for {id2}:\n{table}"));
    for (row, host) in [(row1, "host-one"), (row2, "host-two")] {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0].len(), 8, "{row}");
        assert_eq!(cells[1].len(), 10, "date: {row}");
        assert_eq!(cells[2].len(), 8, "time of day: {row}");
        assert!(cells.contains(&host), "{row}");
        assert!(cells.contains(&src_str(&env).as_str()), "{row}");
    }
    assert!(row1.split_whitespace().any(|c| c == "alpha,beta,gamma"), "{row1}");
    assert_eq!(lines.last().unwrap().trim(), "2 snapshots", "{table}");
    // Oldest first.
    assert!(table.find(&id1[..8]).unwrap() < table.find(&id2[..8]).unwrap(), "{table}");

    let snaps = snapshots_json(&env);
    assert_eq!(ids(&snaps), [id1, id2]);
    for (s, r, host) in [(&snaps[0], &r1, "host-one"), (&snaps[1], &r2, "host-two")] {
        for key in ["id", "short_id", "time", "host", "paths", "tags", "tree", "summary"] {
            assert!(s.get(key).is_some(), "no {key} in {s}");
        }
        let id = s["id"].as_str().unwrap();
        assert!(is_hex64(&s["id"]), "{s}");
        assert_eq!(s["short_id"].as_str().unwrap(), &id[..8]);
        let time = s["time"].as_str().unwrap();
        assert!(time.len() >= 20 && &time[4..5] == "-" && &time[10..11] == "T", "not RFC 3339: {time}");
        assert_eq!(s["host"], host);
        assert_eq!(s["paths"], serde_json::json!([src_str(&env)]));
        for key in SUMMARY_FIELDS {
            assert_eq!(s["summary"][key], r[key], "summary.{key}");
        }
    }
    assert_eq!(snaps[0]["tags"], serde_json::json!(["alpha", "beta", "gamma"]));
    assert_eq!(snaps[1]["tags"], serde_json::json!([]));
    assert!(snaps[0]["time"].as_str().unwrap() <= snaps[1]["time"].as_str().unwrap());
}

#[test]
fn snapshots_json_writes_ids_as_hex() {
    let env = Env::init();
    env.write("a.txt", b"hello");
    let r1 = env.backup_json(&[]);
    env.write("b.txt", b"more");
    let r2 = env.backup_json(&[]);
    assert_eq!(r2["parent"], r1["snapshot_id"]);
    let repo = open_repo(&env);
    let snaps = snapshots_json(&env);
    for s in &snaps {
        let (_, snap) = repo.find_snapshot(s["id"].as_str().unwrap()).unwrap();
        assert!(is_hex64(&s["tree"]), "tree is not a hex id: {}", s["tree"]);
        assert_eq!(s["tree"], snap.tree.to_hex());
    }
    assert_eq!(snaps[0]["parent"], Value::Null);
    assert_eq!(snaps[1]["parent"], r1["snapshot_id"], "parent is not a hex id");
    assert_eq!(snaps[1]["host_previous"], r1["snapshot_id"], "host_previous is not a hex id");
}

#[test]
fn tags_and_hosts() {
    let env = Env::init();
    env.write("a.txt", b"a");
    let s1 = env.backup_json(&["--tag", "a", "--tag", "b,c", "--tag", "d,,", "--host", "host-one"]);
    let s2 = env.backup_json(&["--tag", "c", "--host", "host-two"]);
    let s3 = env.backup_json(&["--host", "host-one"]);
    let [s1, s2, s3] = [&s1, &s2, &s3].map(|r| r["snapshot_id"].as_str().unwrap().to_string());
    let snaps = snapshots_json(&env);
    assert_eq!(snaps[0]["tags"], serde_json::json!(["a", "b", "c", "d"]), "repeated and comma-separated tags");
    assert_eq!(snaps[0]["host"], "host-one");

    assert_eq!(filtered(&env, &["--tag", "a"]), std::slice::from_ref(&s1));
    assert_eq!(filtered(&env, &["--tag", "c"]), [s1.clone(), s2.clone()]);
    assert_eq!(filtered(&env, &["--tag", "nope"]), Vec::<String>::new());
    assert_eq!(filtered(&env, &["--host", "host-one"]), [s1.clone(), s3.clone()]);
    assert_eq!(filtered(&env, &["--host", "host-two"]), std::slice::from_ref(&s2));
    assert_eq!(filtered(&env, &["--host", "elsewhere"]), Vec::<String>::new());
    assert_eq!(filtered(&env, &["--host", "host-two", "--tag", "c"]), std::slice::from_ref(&s2));
    assert_eq!(filtered(&env, &["--host", "host-two", "--tag", "a"]), Vec::<String>::new());
    // Having both tags passes whether repeated flags mean "all" or "any".
    assert!(filtered(&env, &["--tag", "a", "--tag", "c"]).contains(&s1));

    let table = ok(env.coffer().args(["snapshots", "--host", "host-one"]));
    assert!(table.contains(&s1[..8]) && table.contains(&s3[..8]) && !table.contains(&s2[..8]), "{table}");
    assert_eq!(table.lines().last().unwrap().trim(), "2 snapshots");

    // The automatic parent is the latest snapshot of the same host.
    let r = env.backup_json(&["--host", "host-two"]);
    assert_eq!(r["parent"], s2.as_str());
}

#[test]
fn snapshot_filters_follow_restic() {
    let env = Env::init();
    env.write("a.txt", b"a");
    let tagged = env.backup_json(&["--tag", "x", "--host", "one"])["snapshot_id"].as_str().unwrap().to_string();
    let plain = env.backup_json(&["--host", "two"])["snapshot_id"].as_str().unwrap().to_string();
    // The empty tag selects untagged snapshots; tags are trimmed.
    assert_eq!(filtered(&env, &["--tag", ""]), std::slice::from_ref(&plain));
    assert_eq!(filtered(&env, &["--tag", " x "]), std::slice::from_ref(&tagged));
    // Repeated hosts: any of them.
    assert_eq!(filtered(&env, &["--host", "one", "--host", "two"]), [tagged.clone(), plain.clone()]);
    // Paths: snapshots that include every path given.
    let src = env.src.to_string_lossy().into_owned();
    assert_eq!(filtered(&env, &["--path", &src]).len(), 2);
    assert!(filtered(&env, &["--path", &src, "--path", "/elsewhere"]).is_empty());
}

#[test]
fn snapshots_tag_filter_accepts_a_comma_list() {
    // As restic: `--tag b,c` selects snapshots that have both tags.
    let env = Env::init();
    env.write("a.txt", b"a");
    let s1 = env.backup_json(&["--tag", "a,b,c"]);
    env.backup_json(&["--tag", "c"]);
    let s1 = s1["snapshot_id"].as_str().unwrap().to_string();
    assert_eq!(filtered(&env, &["--tag", "b,c"]), [s1]);
}

/// A small source tree used by the `ls` tests.
fn ls_fixture(env: &Env) {
    let readme = env.write("docs/readme.txt", b"hello world");
    std::fs::set_permissions(&readme, std::fs::Permissions::from_mode(0o640)).unwrap();
    env.write("docs/sub/deep.bin", &random_bytes(1000, 3));
    std::fs::create_dir(env.src.join("empty")).unwrap();
    std::os::unix::fs::symlink("docs/readme.txt", env.src.join("link")).unwrap();
}

fn ls_plain_long_and_json(backend: Backend) {
    let env = Env::init_on(backend);
    ls_fixture(&env);
    env.backup_json(&[]);
    let base = src_str(&env);

    let plain = ok(env.coffer().args(["ls", "latest"]));
    let lines: Vec<String> = plain.lines().map(str::to_string).collect();
    // The folders above src come first, each a prefix of src.
    let at = lines.iter().position(|l| *l == base).unwrap_or_else(|| panic!("{base} not listed:\n{plain}"));
    for l in &lines[..at] {
        assert!(src(&env).starts_with(l), "{l} is not above src:\n{plain}");
    }
    assert_eq!(
        listed_below(&env, lines.clone()),
        ["docs", "docs/readme.txt", "docs/sub", "docs/sub/deep.bin", "empty", "link"],
        "{plain}"
    );
    assert_eq!(lines.len(), at + 7, "{plain}");

    let sub = ok(env.coffer().args(["ls", "latest"]).arg(src(&env).join("docs")));
    let sub: Vec<String> = sub.lines().map(str::to_string).collect();
    assert_eq!(sub[0], format!("{base}/docs"));
    assert_eq!(listed_below(&env, sub.clone()), ["docs", "docs/readme.txt", "docs/sub", "docs/sub/deep.bin"]);
    assert_eq!(sub.len(), 4);
    let one = ok(env.coffer().args(["ls", "latest"]).arg(src(&env).join("docs/readme.txt")));
    assert_eq!(one.lines().collect::<Vec<_>>(), [format!("{base}/docs/readme.txt")]);
    // A path without the leading slash means the same.
    let rel = ok(env.coffer().args(["ls", "latest"]).arg(src(&env).join("docs").strip_prefix("/").unwrap()));
    assert_eq!(rel.lines().count(), 4, "{rel}");

    let err = fails(env.coffer().args(["ls", "latest"]).arg(src(&env).join("nope")));
    assert!(err.contains("not in the snapshot") && err.contains("nope"), "{err}");

    let long = ok(env.coffer().args(["ls", "--long", "latest"]));
    let line = |suffix: &str| -> String {
        long.lines()
            .find(|l| l.ends_with(suffix))
            .unwrap_or_else(|| panic!("no line ending {suffix}:\n{long}"))
            .to_string()
    };
    let readme = line(&format!("{base}/docs/readme.txt"));
    assert!(readme.starts_with("-rw-r----- "), "{readme}");
    assert!(readme.split_whitespace().any(|c| c == "11"), "size: {readme}");
    let date = readme.split_whitespace().nth(4).unwrap();
    assert_eq!(date.len(), 10, "date: {readme}");
    assert!(line(&format!("{base}/docs/sub")).starts_with('d'));
    let link = line(&format!("{base}/link -> docs/readme.txt"));
    assert!(link.starts_with('l'), "{link}");
    assert_eq!(ok(env.coffer().args(["ls", "-l", "latest"])), long);

    let json = ls_json(&env, &[OsStr::new("latest")]);
    assert_eq!(json.len(), lines.len());
    let by_path = |rel: &str| -> &Value {
        let p = format!("{base}/{rel}");
        json.iter().find(|j| j["path"] == p.as_str()).unwrap_or_else(|| panic!("{p} not in JSON"))
    };
    for j in &json {
        for key in ["path", "type", "mode", "size"] {
            assert!(j.get(key).is_some(), "no {key} in {j}");
        }
    }
    let r = by_path("docs/readme.txt");
    assert_eq!((r["type"].as_str(), r["mode"].as_u64(), r["size"].as_u64()), (Some("file"), Some(0o640), Some(11)));
    assert_eq!(r["name"], "readme.txt");
    let d = by_path("docs/sub/deep.bin");
    assert_eq!((d["type"].as_str(), d["size"].as_u64()), (Some("file"), Some(1000)));
    let mode = std::fs::metadata(env.src.join("docs/sub/deep.bin")).unwrap().permissions().mode() & 0o7777;
    assert_eq!(d["mode"].as_u64(), Some(u64::from(mode)));
    assert_eq!(by_path("docs/sub")["type"], "dir");
    assert_eq!(by_path("empty")["type"], "dir");
    let l = by_path("link");
    assert_eq!((l["type"].as_str(), l["target"].as_str()), (Some("symlink"), Some("docs/readme.txt")));
    let sub = ls_json(&env, &[OsStr::new("latest"), src(&env).join("docs/sub").as_os_str()]);
    let paths: Vec<&str> = sub.iter().map(|j| j["path"].as_str().unwrap()).collect();
    assert_eq!(paths, [format!("{base}/docs/sub"), format!("{base}/docs/sub/deep.bin")]);
}

/// Saves copies of the latest snapshot (through the library) until two
/// snapshot ids share their first hex digit; returns that digit.
fn make_ambiguous_prefix(env: &Env) -> String {
    let repo = open_repo(env);
    let (_, snap) = repo.find_snapshot("latest").unwrap();
    for i in 0..20 {
        let mut copy = snap.clone();
        copy.tags = vec![format!("copy-{i}")];
        repo.save_snapshot(&copy).unwrap();
        let all = repo.snapshots().unwrap();
        let mut firsts: Vec<char> = all.iter().map(|(id, _)| id.to_hex().chars().next().unwrap()).collect();
        firsts.sort();
        if let Some(w) = firsts.windows(2).find(|w| w[0] == w[1]) {
            return w[0].to_string();
        }
    }
    unreachable!("17 snapshots always share a first digit")
}

#[test]
fn snapshot_selection_by_latest_and_prefix() {
    let env = Env::init();
    let err = fails(env.coffer().args(["ls", "latest"]));
    assert!(err.contains("no snapshot"), "{err}");

    env.write("first.txt", b"1");
    let s1 = env.backup_json(&[])["snapshot_id"].as_str().unwrap().to_string();
    env.write("second.txt", b"2");
    let s2 = env.backup_json(&[])["snapshot_id"].as_str().unwrap().to_string();
    let has_second = |spec: &str| ok(env.coffer().args(["ls", spec])).contains("second.txt");
    assert!(has_second("latest"));
    assert!(!has_second(&s1));
    assert!(has_second(&s2));
    assert!(!has_second(&s1[..8]), "short id");
    assert!(!has_second(&s1[..5]), "unique prefix");
    assert!(has_second(&s2[..8]));

    // A prefix of no snapshot.
    let unused = "0123456789abcdef".chars().find(|c| !s1.starts_with(*c) && !s2.starts_with(*c)).unwrap();
    let target = env.path("out");
    // A one-digit prefix, a full id, and an id one digit off s1's.
    let off_by_one = format!("{}{}", &s1[..63], if s1.ends_with('0') { '1' } else { '0' });
    for spec in [unused.to_string(), format!("{unused}{}", &s1[1..]), off_by_one] {
        let err = fails(env.coffer().args(["ls", &spec]));
        assert!(err.contains("no snapshot matches") && err.contains(&spec), "{spec}: {err}");
        let err = fails(env.coffer().args(["restore", &spec, "--target"]).arg(&target));
        assert!(err.contains("no snapshot matches"), "{err}");
        assert!(!target.exists(), "a failed restore created its target");
    }
    for spec in ["nonsense", "lates", "", "1234x", &"a".repeat(65)] {
        let err = fails(env.coffer().args(["ls", spec]));
        assert!(err.contains("neither `latest` nor a snapshot id"), "{spec:?}: {err}");
    }

    // A prefix that matches two snapshots.
    let digit = make_ambiguous_prefix(&env);
    let err = fails(env.coffer().args(["ls", &digit]));
    assert!(err.contains("matches") && err.contains("give more digits"), "{err}");
    let err = fails(env.coffer().args(["restore", &digit, "--target"]).arg(&target));
    assert!(err.contains("give more digits"), "{err}");
    assert!(!target.exists());
    let err = fails(env.coffer().arg("backup").args(["--parent", &digit]).arg(&env.src));
    assert!(err.contains("give more digits"), "{err}");
}

fn restore_include_selects_a_subtree(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("a/x.txt", b"x");
    env.write("a/sub/y.txt", b"y");
    env.write("a/sub/deeper/z.txt", b"z");
    std::fs::create_dir_all(env.src.join("a/sub/empty")).unwrap();
    env.write("b/w.txt", b"w");
    env.write("top.txt", b"top");
    env.backup_json(&[]);

    let target = env.path("one");
    ok(env.coffer().args(["restore", "latest", "--target"]).arg(&target).arg("--include").arg(src(&env).join("a/sub")));
    let back = env.restored_src(&target);
    let got: Vec<PathBuf> = files_below(&back);
    assert_eq!(got, [PathBuf::from("a/sub/deeper/z.txt"), PathBuf::from("a/sub/y.txt")]);
    assert_eq!(std::fs::read(back.join("a/sub/deeper/z.txt")).unwrap(), b"z");
    assert!(back.join("a/sub/empty").is_dir());
    assert!(back.join("a").is_dir() && !back.join("b").exists());
    // Nothing beside the path to src was created at the top.
    assert_eq!(files_below(&target).len(), 2);

    let target = env.path("two");
    ok(env
        .coffer()
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .arg("-i")
        .arg(src(&env).join("b"))
        .arg("--include")
        .arg(src(&env).join("top.txt")));
    let back = env.restored_src(&target);
    assert_eq!(files_below(&back), [PathBuf::from("b/w.txt"), PathBuf::from("top.txt")]);
    assert!(!back.join("a").exists());
}

#[test]
fn restore_include_of_a_path_not_in_the_snapshot_is_an_error() {
    // As `ls` does: a mistyped include must not look like a successful,
    // empty restore.
    let env = Env::init();
    env.write("a/x.txt", b"x");
    env.backup_json(&[]);
    let target = env.path("out");
    let missing = src(&env).join("a/not-there.txt");
    let out = env
        .coffer()
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .arg("--include")
        .arg(&missing)
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success(), "restoring a path that is not in the snapshot succeeded");
    assert!(err.contains("not-there.txt"), "{err}");
}

#[test]
fn exclude_patterns_and_exclude_file() {
    let env = Env::init();
    let keep = [
        "keep.txt",
        "sub/keep2.txt",
        "thumbs/deeper/b.jpg",
        "photos/c.jpg",
        "sub/private/also-kept.txt",
        "sub/cache/kept-too.bin",
        "# a comment",
        "notes.bak.keep",
    ];
    let drop = [
        "junk.tmp",
        "sub/junk2.tmp",
        "cache/big.bin",
        "thumbs/a.jpg",
        "notes.bak",
        "private/secret.txt",
        "sub/x/.git/config",
    ];
    for f in keep.iter().chain(&drop) {
        env.write(f, f.as_bytes());
    }
    let base = src_str(&env);
    let exclude_file = env.path("excludes");
    std::fs::write(
        &exclude_file,
        format!("# a comment\n*.bak\n\n   # an indented comment\n{base}/private\n  \n#{base}/photos\n"),
    )
    .unwrap();
    let report = env.backup_json(&[
        "--exclude",
        "*.tmp",
        "--exclude",
        &format!("{base}/cache"),
        "-e",
        "thumbs/*.jpg",
        "--exclude",
        "**/.git",
        "--exclude-file",
        exclude_file.to_str().unwrap(),
    ]);
    assert_eq!(report["files_new"], keep.len(), "{report}");

    let json = ls_json(&env, &[OsStr::new("latest")]);
    let listed = listed_below(&env, json.iter().map(|j| j["path"].as_str().unwrap().to_string()));
    for f in keep {
        assert!(listed.iter().any(|l| l == f), "{f} was excluded: {listed:?}");
    }
    for f in drop {
        assert!(!listed.iter().any(|l| l == f), "{f} was not excluded: {listed:?}");
    }
    for dir in ["cache", "private", "sub/x/.git"] {
        assert!(!listed.iter().any(|l| l == dir), "the excluded folder {dir} is listed: {listed:?}");
    }

    // A bad pattern is refused before anything is written.
    let before = dir_state(&env.repo);
    let err = fails(env.coffer().args(["backup", "--exclude", "["]).arg(&env.src));
    assert!(err.contains("exclude pattern"), "{err}");
    let err = fails(env.coffer().arg("backup").arg("--exclude-file").arg(env.path("no-such-file")).arg(&env.src));
    assert!(err.contains("no-such-file"), "{err}");
    assert_eq!(dir_state(&env.repo), before);
}

#[test]
fn dry_run_writes_nothing() {
    let env = Env::init();
    env.write("a.bin", &random_bytes(100_000, 1));
    env.write("b.txt", b"hello");
    let before = dir_state(&env.repo);
    let r = env.backup_json(&["--dry-run"]);
    assert_eq!(r["snapshot_id"], Value::Null);
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["files_new"], 2);
    assert_eq!(r["bytes_read"], 100_005);
    assert!(r["chunks_added"].as_u64().unwrap() >= 2);
    assert_eq!(dir_state(&env.repo), before, "a dry run wrote to the repository");
    assert!(snapshots_json(&env).is_empty());

    let text = ok(env.coffer().args(["backup", "-n"]).arg(&env.src));
    assert!(text.contains("dry run"), "{text}");
    assert_eq!(dir_state(&env.repo), before);

    let real = env.backup_json(&[]);
    let before = dir_state(&env.repo);
    env.write("b.txt", b"changed!");
    env.write("c.txt", b"new");
    let r = env.backup_json(&["--dry-run"]);
    assert_eq!(r["parent"], real["snapshot_id"]);
    assert_eq!(
        (r["files_new"].as_u64(), r["files_changed"].as_u64(), r["files_unchanged"].as_u64()),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(r["bytes_read"], 11);
    assert_eq!(dir_state(&env.repo), before, "a dry run wrote to the repository");
    assert_eq!(snapshots_json(&env).len(), 1);
}

#[test]
fn parent_and_force() {
    let env = Env::init();
    env.write("f1.bin", &random_bytes(100_000, 1));
    env.write("f2.bin", &random_bytes(50_000, 2));
    let r1 = env.backup_json(&[]);
    let id1 = r1["snapshot_id"].as_str().unwrap().to_string();
    assert_eq!(r1["parent"], Value::Null);
    assert_eq!((r1["files_new"].as_u64(), r1["bytes_read"].as_u64()), (Some(2), Some(150_000)));

    let r2 = env.backup_json(&[]);
    assert_eq!(r2["parent"], id1.as_str());
    assert_eq!((r2["files_unchanged"].as_u64(), r2["files_new"].as_u64()), (Some(2), Some(0)));
    assert_eq!((r2["bytes_read"].as_u64(), r2["bytes_total"].as_u64()), (Some(0), Some(150_000)));
    assert_eq!(r2["chunks_added"], 0);

    // --force reads everything again, and still stores nothing twice.
    let r3 = env.backup_json(&["--force"]);
    assert_eq!(r3["files_unchanged"], 0);
    assert_eq!(r3["files_new"].as_u64().unwrap() + r3["files_changed"].as_u64().unwrap(), 2);
    assert_eq!(r3["bytes_read"], r3["bytes_total"]);
    assert_eq!(r3["bytes_read"], 150_000);
    assert_eq!(r3["chunks_added"], 0);
    let id3 = r3["snapshot_id"].as_str().unwrap().to_string();

    // An explicit parent is used instead of the latest.
    env.write("f2.bin", &random_bytes(50_000, 3));
    let r4 = env.backup_json(&["--parent", &id1[..10]]);
    assert_eq!(r4["parent"], id1.as_str());
    assert_eq!((r4["files_changed"].as_u64(), r4["files_unchanged"].as_u64()), (Some(1), Some(1)));
    assert_eq!(r4["bytes_read"], 50_000);
    assert_ne!(r4["parent"], id3.as_str());

    let before = dir_state(&env.repo);
    let err = fails(env.coffer().arg("backup").args(["--parent", "ffffffffffff0000"]).arg(&env.src));
    assert!(err.contains("no snapshot matches"), "{err}");
    assert_eq!(dir_state(&env.repo), before);
}

#[test]
fn non_utf8_names_survive() {
    let env = Env::init();
    let dir = env.src.join(OsStr::from_bytes(b"dossier-\xff\xfe"));
    std::fs::create_dir(&dir).unwrap();
    let names: [&[u8]; 4] = [b"caf\xe9.txt", b"\x80\x81\x82.bin", b"line\nbreak and space", b"back\\slash*?[]"];
    for (i, n) in names.iter().enumerate() {
        std::fs::write(dir.join(OsStr::from_bytes(n)), random_bytes(100 + i, i as u64)).unwrap();
    }
    std::os::unix::fs::symlink(OsStr::from_bytes(b"t\xffrget"), dir.join(OsStr::from_bytes(b"l\xefnk"))).unwrap();
    env.backup_json(&[]);
    let target = env.path("out");
    ok(env.coffer().args(["restore", "latest", "--target"]).arg(&target));
    let back = env.restored_src(&target).join(OsStr::from_bytes(b"dossier-\xff\xfe"));
    let mut got: Vec<Vec<u8>> =
        std::fs::read_dir(&back).unwrap().map(|e| e.unwrap().file_name().as_bytes().to_vec()).collect();
    got.sort();
    let mut want: Vec<Vec<u8>> = names.iter().map(|n| n.to_vec()).chain([b"l\xefnk".to_vec()]).collect();
    want.sort();
    assert_eq!(got, want);
    for (i, n) in names.iter().enumerate() {
        assert_eq!(std::fs::read(back.join(OsStr::from_bytes(n))).unwrap(), random_bytes(100 + i, i as u64));
    }
    let link = std::fs::read_link(back.join(OsStr::from_bytes(b"l\xefnk"))).unwrap();
    assert_eq!(link.as_os_str().as_bytes(), b"t\xffrget");
    // ls shows them (lossily) without failing.
    let listing = ok(env.coffer().args(["ls", "latest"]));
    assert!(listing.contains("dossier-"), "{listing}");
}

#[test]
fn empty_directories_survive() {
    let env = Env::init();
    for d in ["empty", "a/b/c", "a/also-empty"] {
        std::fs::create_dir_all(env.src.join(d)).unwrap();
    }
    env.write("a/file.txt", b"f");
    env.backup_json(&[]);
    let target = env.path("out");
    ok(env.coffer().args(["restore", "latest", "--target"]).arg(&target));
    let back = env.restored_src(&target);
    for d in ["empty", "a/b/c", "a/also-empty"] {
        assert!(back.join(d).is_dir(), "{d}");
        assert_eq!(std::fs::read_dir(back.join(d)).unwrap().count(), 0, "{d}");
    }
    assert_eq!(std::fs::read_dir(back.join("a/b")).unwrap().count(), 1);
    assert_eq!(files_below(&back), [PathBuf::from("a/file.txt")]);
}

#[test]
fn symlinks_survive() {
    let env = Env::init();
    env.write("sub/real.txt", b"real");
    let long_target = format!("{}/end", "x".repeat(1000));
    let links: Vec<(&str, Vec<u8>)> = vec![
        ("relative", b"../outside/target.txt".to_vec()),
        ("absolute-dangling", b"/nonexistent/dangling/path".to_vec()),
        ("to-dir", b"sub".to_vec()),
        ("to-file", b"sub/real.txt".to_vec()),
        ("binary", b"t\xff\x01rget".to_vec()),
        ("long", long_target.into_bytes()),
        ("sub/up", b"..".to_vec()),
        ("self-loop", b"self-loop".to_vec()),
    ];
    for (name, target) in &links {
        std::os::unix::fs::symlink(OsStr::from_bytes(target), env.src.join(name)).unwrap();
    }
    let r = env.backup_json(&[]);
    assert_eq!(r["errors"], 0);
    let target = env.path("out");
    ok(env.coffer().args(["restore", "latest", "--target"]).arg(&target));
    let back = env.restored_src(&target);
    for (name, t) in &links {
        let meta = std::fs::symlink_metadata(back.join(name)).unwrap();
        assert!(meta.file_type().is_symlink(), "{name} is not a symlink");
        assert_eq!(std::fs::read_link(back.join(name)).unwrap().as_os_str().as_bytes(), &t[..], "{name}");
    }
    // The folder a link points to was not copied through the link.
    assert_eq!(files_below(&back).len(), links.len() + 1);
    assert_eq!(std::fs::read(back.join("sub/real.txt")).unwrap(), b"real");
}

#[test]
fn modes_and_mtimes_survive() {
    let env = Env::init();
    let files: [(&str, u32); 6] = [
        ("private.txt", 0o600),
        ("shared.txt", 0o640),
        ("script.sh", 0o755),
        ("readonly.txt", 0o444),
        ("setuid-tool", 0o4755),
        ("ro-dir/inside.txt", 0o644),
    ];
    for (i, (f, mode)) in files.iter().enumerate() {
        let p = env.write(f, &random_bytes(1000 + i, i as u64));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    std::os::unix::fs::symlink("script.sh", env.src.join("link")).unwrap();
    std::fs::create_dir(env.src.join("secret-dir")).unwrap();
    std::fs::set_permissions(env.src.join("secret-dir"), std::fs::Permissions::from_mode(0o700)).unwrap();
    // Times last: entries first, then the folders that hold them.
    let mut entries: Vec<PathBuf> = files.iter().map(|(f, _)| env.src.join(f)).collect();
    entries.extend([env.src.join("link"), env.src.join("secret-dir"), env.src.join("ro-dir")]);
    for (i, p) in entries.iter().enumerate() {
        let t = filetime::FileTime::from_unix_time(1_500_000_000 + i as i64 * 1000, 123_456_789 + i as u32);
        filetime::set_symlink_file_times(p, t, t).unwrap();
    }
    std::fs::set_permissions(env.src.join("ro-dir"), std::fs::Permissions::from_mode(0o555)).unwrap();
    env.backup_json(&[]);

    let target = env.path("out");
    let out = env.coffer().args(["restore", "latest", "--target"]).arg(&target).output().unwrap();
    let back = env.restored_src(&target);
    // Let the folders be cleaned up whoever runs the tests.
    let cleanup = || {
        for d in [env.src.join("ro-dir"), back.join("ro-dir")] {
            let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755));
        }
    };
    if !out.status.success() {
        cleanup();
        panic!("restore failed: {}", stderr_of(&out));
    }
    let mut problems = Vec::new();
    for p in &entries {
        let rel = p.strip_prefix(&env.src).unwrap();
        let (a, b) = (std::fs::symlink_metadata(p).unwrap(), std::fs::symlink_metadata(back.join(rel)).unwrap());
        if !a.file_type().is_symlink() && a.mode() & 0o7777 != b.mode() & 0o7777 {
            problems.push(format!(
                "{}: mode {:o} restored as {:o}",
                rel.display(),
                a.mode() & 0o7777,
                b.mode() & 0o7777
            ));
        }
        if (a.mtime(), a.mtime_nsec()) != (b.mtime(), b.mtime_nsec()) {
            problems.push(format!(
                "{}: mtime {}.{:09} restored as {}.{:09}",
                rel.display(),
                a.mtime(),
                a.mtime_nsec(),
                b.mtime(),
                b.mtime_nsec()
            ));
        }
    }
    let content_ok = files
        .iter()
        .enumerate()
        .all(|(i, (f, _))| std::fs::read(back.join(f)).ok() == Some(random_bytes(1000 + i, i as u64)));
    cleanup();
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(content_ok, "contents differ");
}

#[test]
fn backup_summary_json_fields() {
    let env = Env::init();
    env.write("a.bin", &random_bytes(60_000, 1));
    env.write("b.bin", &random_bytes(40_000, 2));
    env.write("dir/c.txt", b"ccc");
    let r = env.backup_json(&[]);
    for key in SUMMARY_FIELDS {
        assert!(r[key].is_u64(), "{key} is not a count: {r}");
    }
    assert!(is_hex64(&r["snapshot_id"]), "{r}");
    assert_eq!(r["dry_run"], false);
    assert_eq!(
        (r["files_new"].as_u64(), r["files_changed"].as_u64(), r["files_unchanged"].as_u64()),
        (Some(3), Some(0), Some(0))
    );
    assert_eq!(r["bytes_read"], 100_003);
    assert_eq!(r["bytes_total"], 100_003);
    assert_eq!(r["chunks_added"], 3);
    assert_eq!(r["errors"], 0);
    // Random data does not compress; padding and encryption only add.
    assert!(r["bytes_added"].as_u64().unwrap() >= 100_000, "{r}");

    env.write("b.bin", &random_bytes(40_000, 3));
    env.write("new.txt", b"new!");
    let r2 = env.backup_json(&[]);
    assert_eq!(r2["parent"], r["snapshot_id"]);
    assert_eq!(
        (r2["files_new"].as_u64(), r2["files_changed"].as_u64(), r2["files_unchanged"].as_u64()),
        (Some(1), Some(1), Some(2))
    );
    assert_eq!(r2["bytes_read"], 40_004);
    assert_eq!(r2["bytes_total"], 100_007);
    assert_eq!(r2["chunks_added"], 2);
    let added = r2["bytes_added"].as_u64().unwrap();
    assert!((40_004..60_000).contains(&added), "bytes_added {added}");

    // The text report says the same.
    env.write("a.bin", &random_bytes(60_000, 4));
    let text = ok(env.coffer().arg("backup").arg(&env.src));
    assert!(text.contains("0 new, 1 changed, 3 unchanged"), "{text}");
    assert!(text.contains("snapshot ") && text.contains(" saved"), "{text}");
}

#[test]
fn restore_never_follows_symlinks_in_the_target() {
    let env = Env::init();
    env.write("dir/inner.txt", b"inner");
    env.write("file.txt", b"file");
    ok(env.coffer().arg("backup").arg(&env.src));

    // A target prepared by someone else: where `dir` and `file.txt` will be
    // restored, there are symlinks pointing outside the target.
    let outside = env.path("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("file.txt"), b"keep me").unwrap();
    let target = env.path("target");
    let restored = env.restored_src(&target);
    std::fs::create_dir_all(&restored).unwrap();
    std::os::unix::fs::symlink(&outside, restored.join("dir")).unwrap();
    std::os::unix::fs::symlink(outside.join("file.txt"), restored.join("file.txt")).unwrap();

    ok(env.coffer().args(["restore", "latest", "--target"]).arg(&target));
    assert_eq!(files_below(&outside), vec![PathBuf::from("file.txt")], "nothing written outside");
    assert_eq!(std::fs::read(outside.join("file.txt")).unwrap(), b"keep me");
    assert!(std::fs::symlink_metadata(restored.join("dir")).unwrap().is_dir());
    assert_eq!(std::fs::read(restored.join("dir/inner.txt")).unwrap(), b"inner");
    assert!(std::fs::symlink_metadata(restored.join("file.txt")).unwrap().is_file());
    assert_eq!(std::fs::read(restored.join("file.txt")).unwrap(), b"file");
}

/// The binary with no repository and nothing of the caller's settings.
fn bare() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("coffer").expect("coffer binary");
    cmd.env_remove("COFFER_REPOSITORY");
    cmd
}

#[test]
fn completions_are_generated_for_every_shell_and_bash_accepts_its_script() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = ok(bare().args(["completions", shell]));
        for word in ["restore", "snapshots", "warm-up", "object-lock", "repack-cold"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let env = Env::new();
    let path = env.write("coffer.bash", ok(bare().args(["completions", "bash"])).as_bytes());
    // The script loads in bash, and completes subcommands and options.
    let probe = format!(
        "source {}; COMP_WORDS=(coffer res); COMP_CWORD=1; _coffer coffer res coffer; echo \"${{COMPREPLY[@]}}\"; \
         COMP_WORDS=(coffer restore --warm); COMP_CWORD=2; _coffer coffer --warm restore; echo \"${{COMPREPLY[@]}}\"",
        path.display()
    );
    let out = std::process::Command::new("bash").args(["-c", &probe]).output().expect("run bash");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.first().is_some_and(|l| l.split(' ').any(|w| w == "restore")), "{text}");
    assert!(lines.get(1).is_some_and(|l| l.contains("--warm-up")), "{text}");
    assert!(!bare().args(["completions", "tcsh"]).output().unwrap().status.success());
}

#[test]
fn manual_pages_come_from_the_same_definitions_as_help() {
    let page = ok(bare().arg("man"));
    assert!(page.contains(".TH coffer 1"), "{}", &page[..page.len().min(300)]);
    assert!(page.contains("restore") && page.contains("Encrypted, deduplicated backups"));
    let env = Env::new();
    let dir = env.path("man1");
    ok(bare().args(["man", "--dir"]).arg(&dir));
    let names: std::collections::BTreeSet<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    for name in ["coffer.1", "coffer-backup.1", "coffer-restore.1", "coffer-key-add.1", "coffer-repair-index.1"] {
        assert!(names.contains(name), "{name} missing: {names:?}");
    }
    let restore = std::fs::read_to_string(dir.join("coffer-restore.1")).unwrap();
    assert!(restore.contains(".TH coffer-restore 1"), "{restore}");
    // The page holds the options and the examples --help shows.
    let help = ok(bare().args(["restore", "--help"]));
    assert!(help.contains("Examples:") && restore.contains("warm\\-up"), "{restore}");
    assert!(restore.contains("coffer restore latest \\-\\-target /tmp/restored"), "{restore}");
}

#[test]
fn version_names_the_format_and_features() {
    let text = ok(bare().arg("version"));
    assert!(text.starts_with(&format!("coffer {}\n", env!("CARGO_PKG_VERSION"))), "{text}");
    assert!(text.contains("repository format 2"), "{text}");
    let v: Value = serde_json::from_str(&ok(bare().args(["version", "--json"]))).unwrap();
    assert_eq!(v["format"], 2);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["features"].as_array().unwrap().iter().any(|f| f == "s3"), "{v}");
    assert_eq!(ok(bare().arg("--version")).trim(), format!("coffer {}", env!("CARGO_PKG_VERSION")));
}

/// `coffer find --json` as (short snapshot id, path relative to `src`).
fn found(env: &Env, args: &[&str]) -> Vec<(String, String)> {
    let out = ok(env.coffer().arg("find").args(args).arg("--json"));
    let list: Vec<Value> = serde_json::from_str(&out).unwrap();
    let root = src_str(env);
    list.iter()
        .map(|f| {
            let path = f["path"].as_str().unwrap();
            (f["snapshot"].as_str().unwrap()[..8].to_string(), path.strip_prefix(&root).unwrap_or(path).to_string())
        })
        .collect()
}

#[test]
fn find_returns_the_matching_paths_of_each_snapshot() {
    let env = Env::init();
    env.write("photos/2024/a.jpg", b"a");
    env.write("photos/2024/b.JPG", b"b");
    env.write("photos/2023/old.jpg", b"o");
    env.write("docs/a.jpg.txt", b"not a photo");
    let first = env.backup_json(&[])["snapshot_id"].as_str().unwrap()[..8].to_string();
    std::fs::remove_file(env.src.join("photos/2024/b.JPG")).unwrap();
    env.write("photos/2024/c.jpg", b"c");
    let second = env.backup_json(&[])["snapshot_id"].as_str().unwrap()[..8].to_string();

    let pair = |s: &str, p: &str| (s.to_string(), p.to_string());
    assert_eq!(
        found(&env, &["*.jpg"]),
        vec![
            pair(&first, "/photos/2023/old.jpg"),
            pair(&first, "/photos/2024/a.jpg"),
            pair(&second, "/photos/2023/old.jpg"),
            pair(&second, "/photos/2024/a.jpg"),
            pair(&second, "/photos/2024/c.jpg"),
        ]
    );
    assert_eq!(found(&env, &["-i", "B.jpg"]), vec![pair(&first, "/photos/2024/b.JPG")]);
    assert_eq!(
        found(&env, &["**/photos/2024/*", "--snapshot", "latest"]),
        vec![pair(&second, "/photos/2024/a.jpg"), pair(&second, "/photos/2024/c.jpg")]
    );
    // A folder matches too.
    assert_eq!(found(&env, &["2023", "-s", &first]), vec![pair(&first, "/photos/2023")]);
    assert!(found(&env, &["*.png"]).is_empty());
    let text = ok(env.coffer().args(["find", "c.jpg"]));
    assert!(text.contains(&format!("snapshot {second}")) && text.contains("/photos/2024/c.jpg"), "{text}");
    assert!(fails(env.coffer().args(["find", "["])).contains("not a pattern"));
}

#[test]
fn tag_adds_removes_and_sets_tags_keeping_the_data() {
    let env = Env::init();
    env.write("a.txt", b"alpha");
    env.backup_json(&["--tag", "nightly"]);
    let before = snapshots_json(&env);
    let old = before[0]["id"].as_str().unwrap().to_string();

    let dry = ok(env.coffer().args(["tag", "--add", "keep", "--dry-run", "latest"]));
    assert!(dry.contains("would give"), "{dry}");
    assert_eq!(snapshots_json(&env)[0]["id"], before[0]["id"], "a dry run changes nothing");

    ok(env.coffer().args(["tag", "--add", "keep,forever", "--remove", "nightly", "latest"]));
    let after = snapshots_json(&env);
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["tags"], serde_json::json!(["keep", "forever"]));
    assert_ne!(after[0]["id"], before[0]["id"], "a changed snapshot is written anew");
    assert_eq!(after[0]["original"].as_str(), Some(old.as_str()));
    assert_eq!(after[0]["tree"], before[0]["tree"]);
    assert_eq!(after[0]["time"], before[0]["time"]);

    let set: Vec<Value> = serde_json::from_str(&ok(env.coffer().args(["tag", "--set", "photos", "--json"]))).unwrap();
    assert_eq!(set.len(), 1, "{set:?}");
    assert_eq!(snapshots_json(&env)[0]["tags"], serde_json::json!(["photos"]));
    assert_eq!(snapshots_json(&env)[0]["original"].as_str(), Some(old.as_str()), "the first original stays named");
    let unchanged = ok(env.coffer().args(["tag", "--add", "photos"]));
    assert!(unchanged.contains("no snapshot changed"), "{unchanged}");
    assert!(fails(env.coffer().arg("tag")).contains("nothing to do"));

    let target = env.path("restored");
    ok(env.coffer().args(["restore", "latest", "--target"]).arg(&target));
    assert_eq!(std::fs::read(env.restored_src(&target).join("a.txt")).unwrap(), b"alpha");
    ok(env.coffer().arg("check"));
}

#[test]
fn cat_prints_each_kind_of_object_decrypted() {
    let env = Env::init();
    env.write("note.txt", b"a small note");
    env.backup_json(&[]);
    let json = |args: &[&str]| -> Value { serde_json::from_str(&ok(env.coffer().arg("cat").args(args))).unwrap() };
    assert_eq!(json(&["config"])["data_pack_size"], 32 << 20);
    let snap = json(&["snapshot", "latest"]);
    let mut tree_id = snap["tree"].as_str().unwrap().to_string();
    // Walk down to the folder that holds note.txt.
    let chunk = loop {
        let tree = json(&["tree", &tree_id[..10]]);
        let nodes = tree["nodes"].as_array().unwrap();
        if let Some(note) = nodes.iter().find(|n| n["name"] == serde_json::json!(b"note.txt".to_vec())) {
            break note["content"][0][0].clone();
        }
        assert_eq!(nodes.len(), 1, "{tree}");
        tree_id = nodes[0]["subtree"].as_str().unwrap().to_string();
    };
    let chunk: String = match chunk {
        Value::String(s) => s,
        other => panic!("chunk id {other}"),
    };
    let out = env.coffer().args(["cat", "blob", &chunk[..12]]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(out.stdout, b"a small note");

    let index_dir = env.repo.join("index");
    let index_id = std::fs::read_dir(&index_dir).unwrap().next().unwrap().unwrap().file_name();
    let index = json(&["index", &index_id.to_string_lossy()[..8]]);
    let pack = index["packs"][0]["id"].as_str().unwrap().to_string();
    let header = json(&["pack", &pack[..8]]);
    assert_eq!(header["blobs"], index["packs"][0]["blobs"], "the pack's header agrees with its index");
    assert!(fails(env.coffer().args(["cat", "tree", "ffffffffffff"])).contains("no tree has an id"));
    assert!(fails(env.coffer().args(["cat", "snapshot"])).contains("needs an id"));
}
