//! The main job, end to end: init, backup, list, restore.

use crate::common::{Backend, Env, both_backends, random_bytes};

both_backends!(backup_and_restore_round_trip);

fn backup_and_restore_round_trip(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("photos/2024/a.jpg", &random_bytes(3 << 20, 1));
    env.write("notes.txt", b"hello");
    let report = env.backup_json(&[]);
    assert_eq!(report["files_new"], 2);
    assert!(report["snapshot_id"].as_str().is_some_and(|s| s.len() == 64));

    let target = env.path("out");
    env.coffer().args(["restore", "latest", "--target"]).arg(&target).assert().success();
    let back = env.restored_src(&target);
    assert_eq!(std::fs::read(back.join("photos/2024/a.jpg")).unwrap(), random_bytes(3 << 20, 1));
    assert_eq!(std::fs::read(back.join("notes.txt")).unwrap(), b"hello");
}
