//! Property test: whatever tree of files we back up, restore gives it back
//! exactly — names as raw bytes, kinds, contents, symlink targets, permission
//! bits, ownership and modification times to the nanosecond.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use crate::common::{Backend, Env, both_backends, random_bytes};

both_backends!(fixed_tree_round_trips, incremental_backup_restores_the_current_state);

/// A file name (raw bytes, without `/` or NUL) or a symlink target; shown
/// as a string with escapes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Name(Vec<u8>);

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", OsStr::from_bytes(&self.0))
    }
}

#[derive(Clone, Copy, Debug)]
struct Times {
    sec: i64,
    nsec: u32,
}

#[derive(Clone, Copy, Debug)]
struct Meta {
    mode: u32,
    mtime: Times,
    /// Applied only when the test runs as root.
    owner: (u32, u32),
}

#[derive(Clone, Copy, Debug)]
enum Content {
    /// Incompressible, like photos.
    Random(u64),
    /// Repetitive text: exercises the compressed path.
    Text(u64),
}

#[derive(Clone, Debug)]
enum Spec {
    File { size: usize, content: Content, meta: Meta },
    Dir { children: BTreeMap<Name, Spec>, meta: Meta },
    Symlink { target: Name, mtime: Times, owner: (u32, u32) },
}

fn content_bytes(size: usize, content: Content) -> Vec<u8> {
    match content {
        Content::Random(seed) => random_bytes(size, seed),
        Content::Text(seed) => {
            let line = format!("line of text number {seed}, with some words in it\n");
            line.as_bytes().iter().copied().cycle().take(size).collect()
        }
    }
}

fn name() -> impl Strategy<Value = Name> {
    prop_oneof![
        3 => "[a-zA-Z0-9._ -]{1,12}".prop_map(String::into_bytes),
        // Any bytes but '/' and NUL: mostly not UTF-8.
        2 => vec((1u8..=255).prop_filter("no slash", |b| *b != b'/'), 1..40),
        // Any Unicode scalar values (up to 4 bytes each).
        2 => "[^/\\x00]{1,10}".prop_map(String::into_bytes),
    ]
    .prop_filter("not . or .., at most 39 bytes", |n| n != b"." && n != b".." && n.len() < 40)
    .prop_map(Name)
}

fn times() -> impl Strategy<Value = Times> {
    // 1906 to 2096: ext4 and tmpfs keep both ends with nanoseconds.
    (-2_000_000_000i64..4_000_000_000, 0u32..1_000_000_000).prop_map(|(sec, nsec)| Times { sec, nsec })
}

fn owner() -> impl Strategy<Value = (u32, u32)> {
    let id = || prop_oneof![Just(0u32), Just(1000), Just(65534), 1u32..100_000];
    (id(), id())
}

fn file_meta() -> impl Strategy<Value = Meta> {
    (0o400u32..=0o777, times(), owner()).prop_map(|(mode, mtime, owner)| Meta { mode, mtime, owner })
}

fn dir_meta() -> impl Strategy<Value = Meta> {
    (0o500u32..=0o777, times(), owner()).prop_map(|(mode, mtime, owner)| Meta { mode, mtime, owner })
}

fn file() -> impl Strategy<Value = Spec> {
    let size = prop_oneof![
        3 => 0usize..=16,
        8 => 0usize..8192,
        2 => 8192usize..262_144,
        1 => 262_144usize..1_000_000,
    ];
    let content = prop_oneof![3 => any::<u64>().prop_map(Content::Random), 1 => any::<u64>().prop_map(Content::Text)];
    (size, content, file_meta()).prop_map(|(size, content, meta)| Spec::File { size, content, meta })
}

fn symlink() -> impl Strategy<Value = Spec> {
    let target = prop_oneof![
        Just(b".".to_vec()),
        Just(b"..".to_vec()),
        Just(b"/".to_vec()),
        Just(b"/etc/passwd".to_vec()),
        Just(b"/nonexistent/dangling/target".to_vec()),
        // A sibling's name, often dangling.
        name().prop_map(|n| n.0),
        // A relative or absolute path of random names.
        (prop_oneof![Just(&b""[..]), Just(&b"../"[..]), Just(&b"/"[..])], vec(name(), 1..4)).prop_map(
            |(prefix, names)| {
                let mut t = prefix.to_vec();
                t.extend(names.iter().map(|n| n.0.clone()).collect::<Vec<_>>().join(&b'/'));
                t
            }
        ),
        // Raw bytes, slashes included.
        vec(1u8..=255, 1..200),
    ];
    (target, times(), owner()).prop_map(|(target, mtime, owner)| Spec::Symlink { target: Name(target), mtime, owner })
}

fn entry() -> impl Strategy<Value = Spec> {
    let leaf = prop_oneof![4 => file(), 1 => symlink()];
    leaf.prop_recursive(3, 40, 6, |inner| {
        (btree_map(name(), inner, 0..6), dir_meta()).prop_map(|(children, meta)| Spec::Dir { children, meta })
    })
}

/// The whole source: a root directory, and maybe one big file (1 to 4 MiB)
/// in place of one of the generated files.
fn source() -> impl Strategy<Value = Spec> {
    let big = proptest::option::weighted(0.3, (any::<prop::sample::Index>(), (1usize << 20)..(4 << 20)));
    (btree_map(name(), entry(), 0..10), dir_meta(), big).prop_map(|(children, meta, big)| {
        let mut root = Spec::Dir { children, meta };
        if let Some((index, big_size)) = big {
            let mut sizes = Vec::new();
            collect_file_sizes(&mut root, &mut sizes);
            if !sizes.is_empty() {
                *sizes.swap_remove(index.index(sizes.len())) = big_size;
            }
        }
        root
    })
}

fn collect_file_sizes<'a>(spec: &'a mut Spec, out: &mut Vec<&'a mut usize>) {
    match spec {
        Spec::File { size, .. } => out.push(size),
        Spec::Dir { children, .. } => children.values_mut().for_each(|c| collect_file_sizes(c, out)),
        Spec::Symlink { .. } => {}
    }
}

fn count_files(spec: &Spec) -> u64 {
    match spec {
        Spec::File { .. } => 1,
        Spec::Dir { children, .. } => children.values().map(count_files).sum(),
        Spec::Symlink { .. } => 0,
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn lchown(path: &Path, (uid, gid): (u32, u32)) {
    if is_root() {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).expect("lchown");
    }
}

fn set_meta(path: &Path, meta: &Meta) {
    lchown(path, meta.owner);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode)).expect("chmod");
    let t = FileTime::from_unix_time(meta.mtime.sec, meta.mtime.nsec);
    filetime::set_file_times(path, t, t).expect("set times");
}

/// Creates the children of a directory; each directory's metadata is set once
/// everything inside it exists, so deeper directories are done first.
fn build(dir: &Path, children: &BTreeMap<Name, Spec>) {
    for (name, spec) in children {
        let path = dir.join(OsStr::from_bytes(&name.0));
        match spec {
            Spec::File { size, content, meta } => {
                std::fs::write(&path, content_bytes(*size, *content)).expect("write file");
                set_meta(&path, meta);
            }
            Spec::Dir { children, meta } => {
                std::fs::create_dir(&path).expect("create dir");
                build(&path, children);
                set_meta(&path, meta);
            }
            Spec::Symlink { target, mtime, owner } => {
                std::os::unix::fs::symlink(OsStr::from_bytes(&target.0), &path).expect("create symlink");
                lchown(&path, *owner);
                let t = FileTime::from_unix_time(mtime.sec, mtime.nsec);
                filetime::set_symlink_file_times(&path, t, t).expect("set symlink times");
            }
        }
    }
}

/// Every entry below `root` (and `root` itself, as the empty path), by
/// relative path, with its `lstat` metadata.
fn lstat_tree(root: &Path) -> BTreeMap<PathBuf, std::fs::Metadata> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let meta = std::fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
        if meta.is_dir() {
            for e in std::fs::read_dir(&path).unwrap_or_else(|e| panic!("read_dir {}: {e}", path.display())) {
                stack.push(rel.join(e.expect("dir entry").file_name()));
            }
        }
        out.insert(rel, meta);
    }
    out
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else {
        "special"
    }
}

/// Compares two trees entry by entry. Returns a description of every
/// difference found (empty when the trees are equal): entries missing or
/// extra, kinds, contents (with the first differing offset), symlink targets
/// as raw bytes, permission bits, uid and gid, and mtime to the nanosecond.
pub fn diff_trees(expected: &Path, actual: &Path) -> String {
    let a = lstat_tree(expected);
    let b = lstat_tree(actual);
    let mut out = String::new();
    let show = |rel: &Path| format!("{:?}", rel.as_os_str());
    for rel in a.keys().filter(|k| !b.contains_key(*k)) {
        writeln!(out, "missing from the restore: {} ({})", show(rel), kind(&a[rel])).unwrap();
    }
    for rel in b.keys().filter(|k| !a.contains_key(*k)) {
        writeln!(out, "not in the source: {} ({})", show(rel), kind(&b[rel])).unwrap();
    }
    for (rel, ma) in &a {
        let Some(mb) = b.get(rel) else { continue };
        let mut problems = Vec::new();
        if kind(ma) != kind(mb) {
            problems.push(format!("kind {} vs {}", kind(ma), kind(mb)));
        } else {
            match kind(ma) {
                "file" => {
                    let da = std::fs::read(expected.join(rel)).expect("read source file");
                    let db = std::fs::read(actual.join(rel)).expect("read restored file");
                    if da != db {
                        let at = da.iter().zip(&db).position(|(x, y)| x != y).unwrap_or(da.len().min(db.len()));
                        problems.push(format!(
                            "content differs: {} vs {} bytes, first difference at offset {at}",
                            da.len(),
                            db.len()
                        ));
                    }
                }
                "symlink" => {
                    let ta = std::fs::read_link(expected.join(rel)).expect("readlink source");
                    let tb = std::fs::read_link(actual.join(rel)).expect("readlink restored");
                    if ta.as_os_str().as_bytes() != tb.as_os_str().as_bytes() {
                        problems.push(format!("symlink target {:?} vs {:?}", ta.as_os_str(), tb.as_os_str()));
                    }
                }
                _ => {}
            }
        }
        // A symlink's own permission bits are always 0777 on Linux and
        // cannot be set; everything else is compared for every kind.
        if kind(ma) != "symlink" && ma.mode() & 0o7777 != mb.mode() & 0o7777 {
            problems.push(format!("mode {:o} vs {:o}", ma.mode() & 0o7777, mb.mode() & 0o7777));
        }
        if (ma.uid(), ma.gid()) != (mb.uid(), mb.gid()) {
            problems.push(format!("owner {}:{} vs {}:{}", ma.uid(), ma.gid(), mb.uid(), mb.gid()));
        }
        if (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
            problems.push(format!(
                "mtime {}.{:09} vs {}.{:09}",
                ma.mtime(),
                ma.mtime_nsec(),
                mb.mtime(),
                mb.mtime_nsec()
            ));
        }
        if !problems.is_empty() {
            writeln!(out, "{} ({}): {}", show(rel), kind(ma), problems.join("; ")).unwrap();
        }
    }
    out
}

/// Gives the owner full access to every directory below `root`, so that the
/// scratch folder can be removed even when the suite does not run as root.
fn make_removable(root: &Path) {
    if is_root() || !root.exists() {
        return;
    }
    for (rel, meta) in lstat_tree(root) {
        if meta.is_dir() {
            let _ = std::fs::set_permissions(root.join(rel), std::fs::Permissions::from_mode(0o700));
        }
    }
}

fn round_trip(spec: &Spec) -> Result<(), TestCaseError> {
    round_trip_on(spec, Backend::Local)
}

fn round_trip_on(spec: &Spec, backend: Backend) -> Result<(), TestCaseError> {
    let env = Env::init_on(backend);
    let Spec::Dir { children, meta } = spec else { unreachable!("the root is a directory") };
    build(&env.src, children);
    set_meta(&env.src, meta);

    let report = env.backup_json(&[]);
    let target = env.path("out");
    let restored = env.coffer().args(["restore", "latest", "--target"]).arg(&target).output().expect("run restore");
    let restore_ok = restored.status.success();
    let back = env.restored_src(&target);
    let diff =
        if back.exists() { diff_trees(&env.src, &back) } else { format!("{} was not created\n", back.display()) };
    make_removable(&env.src);
    make_removable(&target);

    prop_assert_eq!(report["errors"].as_u64(), Some(0), "backup report: {}", report);
    prop_assert_eq!(report["files_new"].as_u64(), Some(count_files(spec)), "backup report: {}", report);
    prop_assert!(restore_ok, "restore failed ({}): {}", restored.status, String::from_utf8_lossy(&restored.stderr));
    prop_assert!(diff.is_empty(), "the restored tree differs from the source:\n{}", diff);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES=500 for a longer run.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(12),
        // Each case runs the binary three times: keep shrinking bounded.
        max_shrink_iters: 200,
        max_shrink_time: 180_000,
        // The suite is one test binary with no lib.rs beside it, which
        // proptest's default persistence looks for.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("tests/proptest-regressions/roundtrip.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn backup_then_restore_gives_the_same_tree(spec in source()) {
        round_trip(&spec)?;
    }
}

/// A fixed tree with one of everything, so the basic cases are always covered
/// whatever the random cases turn out to be.
fn fixed_tree_round_trips(backend: Backend) {
    let meta = |mode, sec, nsec| Meta { mode, mtime: Times { sec, nsec }, owner: (1234, 5678) };
    let file =
        |size, seed, mode| Spec::File { size, content: Content::Random(seed), meta: meta(mode, 1_600_000_000, 1) };
    let link = |t: &[u8]| Spec::Symlink {
        target: Name(t.to_vec()),
        mtime: Times { sec: 1_500_000_000, nsec: 999_999_999 },
        owner: (4321, 8765),
    };
    let mut deep = BTreeMap::new();
    deep.insert(Name(b"empty".to_vec()), Spec::File { size: 0, content: Content::Text(0), meta: meta(0o400, -1, 5) });
    deep.insert(Name(b"empty dir".to_vec()), Spec::Dir { children: BTreeMap::new(), meta: meta(0o500, 0, 0) });
    let mut sub = BTreeMap::new();
    sub.insert(Name(b"deep".to_vec()), Spec::Dir { children: deep, meta: meta(0o751, 1_000_000_000, 123_456_789) });
    sub.insert(Name(b"not utf-8 \xff\xfe".to_vec()), file(1000, 2, 0o640));
    sub.insert(Name("caf\u{e9} \u{1f4f7}.jpg".as_bytes().to_vec()), file(2 << 20, 3, 0o604));
    sub.insert(Name(b"up".to_vec()), link(b".."));
    let mut top = BTreeMap::new();
    top.insert(Name(b"sub".to_vec()), Spec::Dir { children: sub, meta: meta(0o700, 2_000_000_000, 7) });
    top.insert(Name(b"abs".to_vec()), link(b"/etc/passwd"));
    top.insert(Name(b"dangling".to_vec()), link(b"nowhere/\xff"));
    top.insert(Name(b"rel".to_vec()), link(b"sub/deep/empty"));
    top.insert(Name(b"text".to_vec()), Spec::File { size: 70_000, content: Content::Text(9), meta: meta(0o777, 3, 4) });
    round_trip_on(&Spec::Dir { children: top, meta: meta(0o755, 1_700_000_000, 500) }, backend).unwrap();
}

/// The comparison itself notices each kind of difference.
#[test]
fn diff_trees_reports_differences() {
    let dir = tempfile::tempdir().expect("temp dir");
    let meta = Meta { mode: 0o644, mtime: Times { sec: 1_000, nsec: 1 }, owner: (0, 0) };
    let mut children = BTreeMap::new();
    children.insert(Name(b"f".to_vec()), Spec::File { size: 10, content: Content::Random(1), meta });
    children.insert(Name(b"g".to_vec()), Spec::File { size: 10, content: Content::Random(2), meta });
    children.insert(
        Name(b"l".to_vec()),
        Spec::Symlink { target: Name(b"x".to_vec()), mtime: Times { sec: 5, nsec: 6 }, owner: (0, 0) },
    );
    children.insert(Name(b"d".to_vec()), Spec::Dir { children: BTreeMap::new(), meta });
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for root in [&a, &b] {
        std::fs::create_dir(root).unwrap();
        build(root, &children);
        set_meta(root, &meta);
    }
    assert_eq!(diff_trees(&a, &b), "");

    std::fs::write(b.join("f"), random_bytes(10, 3)).unwrap();
    std::fs::set_permissions(b.join("g"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(b.join("l")).unwrap();
    std::os::unix::fs::symlink("y", b.join("l")).unwrap();
    filetime::set_file_mtime(b.join("d"), FileTime::from_unix_time(1_000, 2)).unwrap();
    std::fs::write(b.join("d/extra"), b"").unwrap();
    let diff = diff_trees(&a, &b);
    for expect in [
        "not in the source: \"d/extra\"",
        "\"f\" (file): content differs",
        "\"g\" (file): mode 644 vs 600",
        "\"l\" (symlink): symlink target \"x\" vs \"y\"",
        "mtime 5.000000006 vs",
        "mtime 1000.000000001 vs",
    ] {
        assert!(diff.contains(expect), "{expect:?} not in:\n{diff}");
    }
}

/// A second backup, made with the first as its parent, restores the tree as
/// it is now: every kind of change since the parent is picked up, including
/// a same-size edit with the old mtime put back (only ctime tells).
fn incremental_backup_restores_the_current_state(backend: Backend) {
    let env = Env::init_on(backend);
    let meta = |mode, sec| Meta { mode, mtime: Times { sec, nsec: 42 }, owner: (1000, 1000) };
    let file = |size, seed| Spec::File { size, content: Content::Random(seed), meta: meta(0o644, 1_600_000_000) };
    let mut sub = BTreeMap::new();
    sub.insert(Name(b"x".to_vec()), file(5000, 1));
    let mut top = BTreeMap::new();
    for (i, n) in ["same-size", "chmod", "chown", "becomes-dir", "deleted", "touched", "kept"].iter().enumerate() {
        top.insert(Name(n.as_bytes().to_vec()), file(600_000 + i, i as u64 + 10));
    }
    top.insert(Name(b"becomes-link".to_vec()), Spec::Dir { children: sub, meta: meta(0o755, 1_500_000_000) });
    top.insert(
        Name(b"link".to_vec()),
        Spec::Symlink { target: Name(b"kept".to_vec()), mtime: Times { sec: 7, nsec: 8 }, owner: (0, 0) },
    );
    build(&env.src, &top);
    let first = env.backup_json(&[]);
    assert_eq!(first["errors"], 0, "{first}");

    let p = |n: &str| env.src.join(n);
    let keep_mtime = |path: &Path| {
        let m = std::fs::symlink_metadata(path).unwrap();
        FileTime::from_last_modification_time(&m)
    };
    // Same size, same mtime, different bytes.
    let t = keep_mtime(&p("same-size"));
    let mut data = std::fs::read(p("same-size")).unwrap();
    data[300_000] ^= 0xff;
    std::fs::write(p("same-size"), &data).unwrap();
    filetime::set_file_mtime(p("same-size"), t).unwrap();
    std::fs::set_permissions(p("chmod"), std::fs::Permissions::from_mode(0o600)).unwrap();
    if is_root() {
        std::os::unix::fs::lchown(p("chown"), Some(2000), Some(3000)).unwrap();
    }
    std::fs::remove_file(p("becomes-dir")).unwrap();
    std::fs::create_dir(p("becomes-dir")).unwrap();
    std::fs::write(p("becomes-dir/inner"), b"inner").unwrap();
    std::fs::remove_dir_all(p("becomes-link")).unwrap();
    std::os::unix::fs::symlink("/elsewhere", p("becomes-link")).unwrap();
    std::fs::remove_file(p("deleted")).unwrap();
    std::fs::write(p("added"), b"new file").unwrap();
    filetime::set_file_mtime(p("touched"), FileTime::from_unix_time(1_700_000_000, 999)).unwrap();
    std::fs::remove_file(p("link")).unwrap();
    std::os::unix::fs::symlink("chmod", p("link")).unwrap();

    let second = env.backup_json(&[]);
    assert_eq!(second["parent"], first["snapshot_id"], "{second}");
    // Only `kept` is unchanged (and `chown`, when the test cannot chown).
    assert_eq!(second["files_unchanged"], if is_root() { 1 } else { 2 }, "{second}");
    let target = env.path("out");
    env.coffer().args(["restore", "latest", "--target"]).arg(&target).assert().success();
    let diff = diff_trees(&env.src, &env.restored_src(&target));
    assert!(diff.is_empty(), "the restored tree differs from the source:\n{diff}");
}
