//! What someone who can read the repository folder learns: not the contents,
//! not the names, and not the chunk boundaries of a file they know.

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::common::{Backend, Env, both_backends, files_below, open_repo, random_bytes, snapshot_node};

both_backends!(names_and_contents_never_appear_in_the_repository, separate_repositories_cut_the_same_file_differently);

const MARKER: &str = "SECRETMARKER-7f3a";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every name of a file or folder below `dir` (and `dir`'s own).
fn names_below(dir: &Path) -> BTreeSet<Vec<u8>> {
    let mut out = BTreeSet::new();
    out.insert(dir.file_name().unwrap().as_bytes().to_vec());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            out.insert(e.file_name().as_bytes().to_vec());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

fn names_and_contents_never_appear_in_the_repository(backend: Backend) {
    let env = Env::init_on(backend);
    let text = format!("Dear diary, {MARKER} is the code.\n").repeat(200);
    env.write(&format!("{MARKER}-letter.txt"), text.as_bytes());
    env.write(&format!("{MARKER}-folder/holiday-in-lisbon.jpg"), &random_bytes(300_000, 1));
    env.write(&format!("{MARKER}-folder/nested-{MARKER}/{MARKER}.md"), MARKER.as_bytes());
    env.write("plain-name-quarterly-report.ods", format!("{MARKER}{MARKER}").as_bytes());
    // The marker at the very start of a file, and alone in a tiny file.
    env.write("tiny-secret-note", MARKER.as_bytes());
    std::fs::create_dir_all(env.src.join(format!("empty-{MARKER}"))).unwrap();
    std::os::unix::fs::symlink(format!("target-{MARKER}"), env.src.join("link-to-secret")).unwrap();
    env.backup_json(&["--tag", "private-tag-31c9", "--host", "private-host-84d2"]);
    // A second, incremental snapshot writes the same trees again.
    env.write("later-addition-file", format!("more {MARKER}").as_bytes());
    env.backup_json(&[]);

    // Names of everything backed up, including the scratch folder that holds
    // `src` (its random name is part of every snapshot path). Names above it
    // (`/tmp`, a home folder) are left out: the plaintext key envelope
    // records the user and host that created the key, which may share them.
    let mut secrets = names_below(&env.src);
    secrets.insert(env.dir.path().file_name().unwrap().as_bytes().to_vec());
    secrets.retain(|n| n.len() >= 6);
    secrets.insert(MARKER.as_bytes().to_vec());
    secrets.insert(b"private-tag-31c9".to_vec());
    secrets.insert(b"private-host-84d2".to_vec());
    secrets.insert(format!("target-{MARKER}").into_bytes());
    secrets.insert(env.src.as_os_str().as_bytes().to_vec());
    assert!(secrets.len() > 10, "{secrets:?}");

    let files = files_below(&env.repo);
    assert!(
        files.iter().any(|f| f.starts_with("data"))
            && files.iter().any(|f| f.starts_with("tree"))
            && files.iter().any(|f| f.starts_with("index"))
    );
    let mut scanned = 0;
    for rel in &files {
        let data = std::fs::read(env.repo.join(rel)).unwrap();
        scanned += data.len();
        for s in &secrets {
            let shown = String::from_utf8_lossy(s);
            assert!(!contains(&data, s), "{shown:?} appears in {}", rel.display());
            assert!(!contains(rel.as_os_str().as_bytes(), s), "{shown:?} appears in the object name {}", rel.display());
        }
    }
    assert!(scanned > 300_000, "only {scanned} bytes in the repository");
}

/// The chunk lengths of a file as recorded in the latest snapshot.
fn recorded_lengths(repo: &coffer_core::Repository, path: &Path) -> Vec<u32> {
    snapshot_node(repo, "latest", path).content.iter().map(|c| c.1).collect()
}

/// The chunk ids the repository stores (in its packs, as its index says).
fn chunk_names(env: &Env) -> BTreeSet<coffer_core::Id> {
    open_repo(env).list_ids(coffer_core::crypto::ObjectKind::Chunk).unwrap().into_iter().collect()
}

fn separate_repositories_cut_the_same_file_differently(backend: Backend) {
    let data = random_bytes(20 << 20, 77);
    let a = Env::init_on(backend);
    let b = Env::init_on(backend);
    for env in [&a, &b] {
        env.write("known-file.raw", &data);
        let report = env.backup_json(&[]);
        assert_eq!(report["files_new"], 1);
    }
    let (ra, rb) = (open_repo(&a), open_repo(&b));
    assert_ne!(ra.repo_id(), rb.repo_id());

    // The chunker of each repository, run over the same bytes.
    let split_a: Vec<u32> = ra.chunker().unwrap().split(&data).map(|c| c.len() as u32).collect();
    let split_b: Vec<u32> = rb.chunker().unwrap().split(&data).map(|c| c.len() as u32).collect();
    assert!(split_a.len() > 3 && split_b.len() > 3, "{split_a:?} {split_b:?}");
    assert_ne!(split_a, split_b, "two repositories cut a file at the same boundaries");
    // No boundary in common at all (apart from the end of the file) would be
    // expected of independent secret tables; a few coincidences are allowed.
    let cuts = |lens: &[u32]| -> BTreeSet<u64> {
        lens.iter()
            .scan(0u64, |off, l| {
                *off += u64::from(*l);
                Some(*off)
            })
            .collect()
    };
    let (ca, cb) = (cuts(&split_a), cuts(&split_b));
    let common = ca.intersection(&cb).count();
    assert!(common <= 2, "{common} boundaries in common: {split_a:?} {split_b:?}");

    // The backups stored exactly those chunks.
    assert_eq!(recorded_lengths(&ra, &a.src.join("known-file.raw")), split_a);
    assert_eq!(recorded_lengths(&rb, &b.src.join("known-file.raw")), split_b);

    // And the chunk ids, and the pack names, have nothing in common.
    let (na, nb) = (chunk_names(&a), chunk_names(&b));
    assert_eq!(na.len(), split_a.len());
    assert_eq!(nb.len(), split_b.len());
    assert!(na.is_disjoint(&nb), "chunk names in common: {:?}", na.intersection(&nb).collect::<Vec<_>>());
    let (ta, tb) = (
        files_below(&a.repo.join("tree")).into_iter().chain(files_below(&a.repo.join("data"))).collect::<BTreeSet<_>>(),
        files_below(&b.repo.join("tree")).into_iter().chain(files_below(&b.repo.join("data"))).collect::<BTreeSet<_>>(),
    );
    assert!(ta.is_disjoint(&tb), "pack names in common");
}
