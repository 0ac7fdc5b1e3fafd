//! Durability of a local folder: a backup writes its snapshot only once the
//! folders of everything it references are fsynced, even when another
//! thread of the same process (the lock's refresh) ran those fsyncs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_core::archiver::{self, BackupOptions};
use coffer_core::backend::Backend;
use coffer_core::backend::local::LocalBackend;
use coffer_core::backend::pausing::{Op, PausingBackend};
use coffer_core::key::KdfParams;
use coffer_core::lock::LockSettings;
use coffer_core::progress::NoProgress;
use coffer_core::repo::InitOptions;
use coffer_core::{Error, Repository};

use crate::common::{PASSWORD, random_bytes};

/// The backup's pipeline is held at its first tree pack upload, after its
/// data pack was renamed into its folder, until the lock's refresh thread
/// has synced (and so taken) that folder and its fsync failed. The backup's
/// own sync must then fail too: the data pack's rename may not be durable,
/// so no snapshot may reference it.
#[test]
fn a_folder_fsync_that_fails_in_a_lock_refresh_fails_the_backup() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("repo");
    let local = Arc::new(LocalBackend::new(&root));
    let init = InitOptions { kdf: KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }, ..Default::default() };
    Repository::init(local.clone(), PASSWORD.as_bytes(), &init).expect("init");

    let src = std::fs::canonicalize(dir.path()).expect("canonical").join("src");
    std::fs::create_dir_all(src.join("album")).expect("source");
    std::fs::write(src.join("album/photo.jpg"), random_bytes(3_000_000, 7)).expect("photo");

    // One fsync of a data pack folder fails, as a failing disk's would.
    local.fail_dir_fsyncs("/data/", 0, Some(1));
    let paused = PausingBackend::new(local.clone());
    let first_tree = paused.pause_before(Op::Put, "tree/");
    let backend: Arc<dyn Backend> = paused.clone();
    let mut repo = Repository::open(backend, PASSWORD.as_bytes()).expect("open");
    // Refreshes every second, giving up after three.
    repo.set_lock_settings(LockSettings { stale: Duration::from_secs(6), ..LockSettings::default() });

    let options = BackupOptions { paths: vec![src.clone()], ..BackupOptions::default() };
    let backup = std::thread::spawn(move || {
        let result = archiver::backup(&repo, &options, &NoProgress).map(|o| o.snapshot_id);
        (result, repo)
    });
    first_tree.wait_reached();
    let deadline = Instant::now() + Duration::from_secs(60);
    while local.dir_fsync_faults_applied() == 0 {
        assert!(Instant::now() < deadline, "no lock refresh synced a data pack folder within a minute");
        std::thread::sleep(Duration::from_millis(20));
    }
    first_tree.release();

    let (result, repo) = backup.join().expect("backup thread");
    let err = match result {
        Ok(id) => panic!("the backup succeeded ({id:?}) although a data pack folder's fsync failed"),
        Err(e) => e,
    };
    assert!(matches!(err, Error::Backend(_)), "the failed fsync is the error: {err}");
    assert!(err.to_string().contains("fsync"), "the message names the failed fsync: {err}");
    assert!(repo.snapshots().expect("list snapshots").is_empty(), "no snapshot was written");
}
