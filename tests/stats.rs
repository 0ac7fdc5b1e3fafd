//! `coffer stats`: sizes as restored, distinct data and stored bytes, checked
//! against data whose duplication is known.

use serde_json::Value;

use crate::common::{Backend, Env, both_backends, random_bytes};

fn stats_json(env: &Env, args: &[&str]) -> Value {
    let out = env.coffer().args(["stats", "--json"]).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Total size of the files below a folder of the repository.
fn stored(env: &Env, dir: &str) -> u64 {
    crate::common::files_below(&env.repo.join(dir))
        .iter()
        .map(|f| std::fs::metadata(env.repo.join(dir).join(f)).unwrap().len())
        .sum()
}

both_backends!(identical_files_are_counted_once_as_unique_data);

fn identical_files_are_counted_once_as_unique_data(backend: Backend) {
    let env = Env::init_on(backend);
    // Under the minimum chunk size (512 KiB): one chunk each, the same chunk.
    let data = random_bytes(300_000, 7);
    env.write("a.bin", &data);
    env.write("copy/a.bin", &data);
    let first = env.backup_json(&[])["snapshot_id"].as_str().unwrap().to_string();

    let s = stats_json(&env, &[]);
    assert_eq!(s["snapshots"], 1);
    assert_eq!(s["files"], 2);
    assert_eq!(s["bytes"], 600_000);
    assert_eq!(s["unique_chunks"], 1);
    assert_eq!(s["unique_bytes"], 300_000, "two identical files: unique is half");
    assert_eq!(s["dedup_ratio"], 2.0);
    // One snapshot references every blob stored: stored bytes are the
    // blobs' sizes, which with the packs' headers and padding make up every
    // pack's bytes.
    let packs = stored(&env, "data") + stored(&env, "tree");
    assert_eq!(s["pack_bytes"], packs);
    assert!(s["stored_bytes"].as_u64().unwrap() < packs, "{s}");
    assert!(s["stored_bytes"].as_u64().unwrap() > 300_000, "random data does not compress");
    assert_eq!(s["missing_objects"], 0);

    // A second snapshot with one more, different file: over all snapshots
    // the first two files count twice, unique data grows by the new file.
    env.write("b.bin", &random_bytes(100_000, 8));
    env.backup_json(&[]);
    let all = stats_json(&env, &[]);
    assert_eq!(all["snapshots"], 2);
    assert_eq!(all["files"], 5);
    assert_eq!(all["bytes"], 1_300_000);
    assert_eq!(all["unique_bytes"], 400_000);
    assert_eq!(all["unique_chunks"], 2);
    // Only the first snapshot: the figures of before.
    let one = stats_json(&env, &[&first[..8]]);
    assert_eq!(one["files"], 2);
    assert_eq!(one["unique_bytes"], 300_000);
    assert!(one["stored_bytes"].as_u64().unwrap() < all["stored_bytes"].as_u64().unwrap());

    let out = env.coffer().args(["stats"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Files:           5") && text.contains("Dedup ratio:     3.25"), "{text}");
}
