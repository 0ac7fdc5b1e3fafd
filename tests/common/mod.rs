//! Fixtures shared by the end-to-end tests.

#![allow(dead_code)]

pub mod s3;
pub mod weed;

/// Runs each named test (a `fn(Backend)`) on a local folder and on the
/// in-process S3 server: `name::local` and `name::s3`.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn local() {
                    super::$name(crate::common::Backend::Local);
                }

                #[test]
                fn s3() {
                    super::$name(crate::common::Backend::S3);
                }
            }
        )*
    };
}
pub(crate) use both_backends;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use tempfile::TempDir;

pub const PASSWORD: &str = "correct horse battery staple";

/// Where an environment's repository lives. The end-to-end tests that
/// matter for both run on each (see [`both_backends!`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A local folder.
    Local,
    /// A bucket of an in-process S3 server started for the environment.
    S3,
}

/// A scratch folder with a repository location and a source folder in it.
pub struct Env {
    pub dir: TempDir,
    /// Where the repository's objects are stored on disk, to inspect or
    /// damage them: the folder itself, or the folder the S3 server keeps the
    /// repository's objects in (one file per object, under its key).
    pub repo: PathBuf,
    pub src: PathBuf,
    pub backend: Backend,
    /// The repository location given to the binary.
    pub location: String,
    /// The S3 server, for an S3 environment; stopped when the environment drops.
    pub server: Option<s3::S3Server>,
}

impl Env {
    /// A new environment with a local repository, not initialised yet.
    pub fn new() -> Env {
        Env::new_on(Backend::Local)
    }

    /// A new environment on `backend`; the repository is not initialised yet.
    pub fn new_on(backend: Backend) -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let src = dir.path().join("src");
        std::fs::create_dir(&src).expect("create src");
        let (repo, location, server) = match backend {
            Backend::Local => {
                let repo = dir.path().join("repo");
                let location = repo.to_str().expect("UTF-8 temp path").to_string();
                (repo, location, None)
            }
            Backend::S3 => {
                let server = s3::S3Server::start();
                (server.bucket_dir("bucket").join("repo"), server.url("bucket/repo"), Some(server))
            }
        };
        Env { dir, repo, src, backend, location, server }
    }

    /// A new environment with an initialised local repository (cheap
    /// argon2id parameters, so the suite stays fast; the format is the same).
    pub fn init() -> Env {
        Env::init_on(Backend::Local)
    }

    /// The same on `backend`.
    pub fn init_on(backend: Backend) -> Env {
        let env = Env::new_on(backend);
        env.coffer().args(["init", "--argon2-memory", "64", "--argon2-iterations", "1"]).assert().success();
        env
    }

    /// The binary, pointed at this repository with the password in the
    /// environment and nothing inherited from the caller's environment.
    pub fn coffer(&self) -> Command {
        let mut cmd = match self.backend {
            Backend::Local => {
                let mut cmd = Command::cargo_bin("coffer").expect("coffer binary");
                for var in ["COFFER_PASSWORD_FILE", "COFFER_PASSWORD_COMMAND", "COFFER_LOG"] {
                    cmd.env_remove(var);
                }
                cmd.env("COFFER_REPOSITORY", &self.repo).env("COFFER_PASSWORD", PASSWORD);
                cmd
            }
            Backend::S3 => s3::coffer_with_vars(self, &self.location),
        };
        // Each test has its own cache, never the caller's.
        cmd.env("COFFER_CACHE_DIR", self.dir.path().join("cache"));
        cmd.env("COFFER_STATE_DIR", self.dir.path().join("state"));
        cmd
    }

    /// A library backend for this environment's repository.
    pub fn library_backend(&self) -> std::sync::Arc<dyn coffer_core::backend::Backend> {
        match &self.server {
            None => std::sync::Arc::new(coffer_core::backend::local::LocalBackend::new(&self.repo)),
            Some(server) => std::sync::Arc::new(server.backend("bucket", "repo")),
        }
    }

    /// A path under the scratch folder.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file below `src`, creating its folders.
    ///
    /// The file's mtime is set 10 s in the past, as for any file that was not
    /// being edited while the backup ran: a file modified within the file
    /// system's timestamp granularity (2 s) of a backup is always read again
    /// by the next one, which would defeat tests of unchanged-file handling.
    /// Each call still gets a distinct mtime, so a rewrite is a change.
    pub fn write(&self, rel: &str, data: &[u8]) -> PathBuf {
        let p = self.src.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        std::fs::write(&p, data).expect("write file");
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(10);
        filetime::set_file_mtime(&p, filetime::FileTime::from_system_time(past)).expect("set mtime");
        p
    }

    /// Runs `coffer backup --json` of `src` and returns the parsed report.
    pub fn backup_json(&self, extra: &[&str]) -> serde_json::Value {
        let out = self.coffer().arg("backup").arg("--json").args(extra).arg(&self.src).output().expect("run backup");
        assert!(out.status.success(), "backup failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("backup JSON")
    }

    /// Where `src` lands inside a restore target (snapshots mirror absolute paths).
    pub fn restored_src(&self, target: &Path) -> PathBuf {
        target.join(self.src.strip_prefix("/").expect("absolute src"))
    }
}

/// Advances a xorshift64 state and returns it: deterministic test choices
/// (offsets, sizes, files) from a fixed seed.
pub fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// What a finished command printed on stderr, as text.
pub fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Deterministic pseudo-random bytes (xorshift), incompressible like photos.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&xorshift(&mut x).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Every file below `dir`, recursively, as paths relative to it.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let e = e.expect("dir entry");
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).expect("below dir").to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// Every entry below `dir` (folders, files, symlinks) with its kind, mode
/// and full content or link target, for checking that a folder was left
/// byte-for-byte unchanged. `None` when `dir` does not exist.
pub fn dir_state(dir: &Path) -> Option<Vec<(PathBuf, String, Vec<u8>)>> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(dir).ok()?;
    let mut out = vec![(PathBuf::new(), format!("root {:o}", meta.permissions().mode()), Vec::new())];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let e = e.expect("dir entry");
            let path = e.path();
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            let rel = path.strip_prefix(dir).expect("below dir").to_path_buf();
            let mode = meta.permissions().mode();
            if meta.is_dir() {
                out.push((rel, format!("dir {mode:o}"), Vec::new()));
                stack.push(path);
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).expect("read link");
                out.push((rel, "symlink".into(), target.as_os_str().as_bytes().to_vec()));
            } else {
                out.push((rel, format!("file {mode:o}"), std::fs::read(&path).expect("read file")));
            }
        }
    }
    out.sort();
    Some(out)
}

/// Opens an environment's repository through the library.
pub fn open_repo(env: &Env) -> coffer_core::Repository {
    coffer_core::Repository::open(env.library_backend(), PASSWORD.as_bytes()).expect("open repository")
}

/// Opens the repository in `path` through the library, with [`PASSWORD`].
pub fn open_repo_at(path: &Path) -> coffer_core::Repository {
    let backend = std::sync::Arc::new(coffer_core::backend::local::LocalBackend::new(path));
    coffer_core::Repository::open(backend, PASSWORD.as_bytes()).expect("open repository")
}

/// The node of the file-system path `path` (absolute, as backed up) in a
/// snapshot (`latest`, an id or a prefix).
pub fn snapshot_node(repo: &coffer_core::Repository, snapshot: &str, path: &Path) -> coffer_core::tree::Node {
    let (_, snap) = repo.find_snapshot(snapshot).expect("find snapshot");
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    coffer_core::walk::find(repo, &snap.tree, &path)
        .expect("walk snapshot")
        .unwrap_or_else(|| panic!("{} is the snapshot root", path.display()))
}

/// Where an object is stored in a local repository folder (snapshots,
/// locks, index objects; blobs live in packs, see [`stored_blob`]).
pub fn object_file(repo_dir: &Path, kind: coffer_core::crypto::ObjectKind, id: &coffer_core::Id) -> PathBuf {
    repo_dir.join(coffer_core::repo::object_key(kind, id))
}

/// Where a chunk or tree is stored: its pack's key and the blob's bytes in it.
#[derive(Clone, Debug)]
pub struct StoredBlob {
    pub pack: coffer_core::Id,
    pub pack_key: String,
    pub offset: u64,
    pub length: u64,
}

impl StoredBlob {
    /// The pack's file in a repository folder (the local folder, or the
    /// S3 server's bucket folder for the repository).
    pub fn pack_file(&self, repo_dir: &Path) -> PathBuf {
        repo_dir.join(&self.pack_key)
    }

    /// Flips one byte of the blob, `at` bytes into it, where the pack lies.
    pub fn flip(&self, repo_dir: &Path, at: u64) {
        let file = self.pack_file(repo_dir);
        let mut bytes = std::fs::read(&file).expect("read pack");
        bytes[(self.offset + at.min(self.length - 1)) as usize] ^= 0x01;
        std::fs::write(&file, bytes).expect("write pack");
    }

    /// The blob's stored bytes.
    pub fn read(&self, repo_dir: &Path) -> Vec<u8> {
        let bytes = std::fs::read(self.pack_file(repo_dir)).expect("read pack");
        bytes[self.offset as usize..(self.offset + self.length) as usize].to_vec()
    }

    /// Overwrites the blob in place with other bytes of the same length.
    pub fn overwrite(&self, repo_dir: &Path, with: &[u8]) {
        assert_eq!(with.len() as u64, self.length, "only a blob of the same length fits");
        let file = self.pack_file(repo_dir);
        let mut bytes = std::fs::read(&file).expect("read pack");
        bytes[self.offset as usize..(self.offset + self.length) as usize].copy_from_slice(with);
        std::fs::write(&file, bytes).expect("write pack");
    }

    /// Cuts the pack off in the middle of the blob, as an interrupted write
    /// or a failing disk would.
    pub fn truncate_pack(&self, repo_dir: &Path) {
        let file = self.pack_file(repo_dir);
        let bytes = std::fs::read(&file).expect("read pack");
        std::fs::write(&file, &bytes[..(self.offset + self.length / 2) as usize]).expect("write pack");
    }
}

/// Where the index puts a chunk or tree.
pub fn stored_blob(
    repo: &coffer_core::Repository,
    kind: coffer_core::crypto::ObjectKind,
    id: &coffer_core::Id,
) -> StoredBlob {
    let set = repo.reload_blob_set().expect("load the index");
    let loc = set.get(kind, id).unwrap_or_else(|| panic!("{} {id} is in no pack", kind.name()));
    StoredBlob {
        pack: loc.pack,
        pack_key: coffer_core::pack::pack_key(loc.kind, &loc.pack),
        offset: u64::from(loc.offset),
        length: u64::from(loc.length),
    }
}

/// Stores encoded blobs (see `Repository::encode_tree`) in new packs, with
/// an index object, as a backup would; the handle reads through them next.
pub fn store_blobs(
    repo: &coffer_core::Repository,
    kind: coffer_core::crypto::ObjectKind,
    blobs: &[(coffer_core::Id, Vec<u8>, u32)],
) {
    let packer = repo.packer();
    repo.runtime().block_on(async {
        for (id, stored, raw) in blobs {
            packer.add(kind, *id, stored, *raw).await.expect("pack a blob");
        }
        packer.flush().await.expect("store the packs")
    });
    repo.forget_blob_set();
}

/// Rewrites the repository's index as `edit` makes it: every index object
/// is read, their packs are edited as one list, written as one new index
/// object, and the old ones deleted (what a writer with the key, buggy or
/// not, could do).
pub fn rewrite_index(repo: &coffer_core::Repository, edit: impl FnOnce(&mut Vec<coffer_core::index::IndexedPack>)) {
    use coffer_core::crypto::ObjectKind;
    let loaded = repo
        .runtime()
        .block_on(coffer_core::index::load_with(
            repo,
            coffer_core::index::LoadOptions { keep_objects: true, ..Default::default() },
        ))
        .expect("load the index");
    let mut packs: Vec<coffer_core::index::IndexedPack> =
        loaded.objects.iter().flat_map(|(_, index)| index.packs.iter().cloned()).collect();
    edit(&mut packs);
    let packer = repo.packer();
    repo.runtime().block_on(async {
        packer.write_index(packs).await.expect("write the index");
        for id in &loaded.indexes {
            repo.backend()
                .delete(&coffer_core::repo::object_key(ObjectKind::Index, id))
                .await
                .expect("delete an index");
        }
        repo.backend().sync().await.expect("sync");
    });
    repo.forget_blob_set();
}

/// Makes the repository serve `bytes` as the blob `kind` `to`: a new pack
/// holds them under `to`'s id, and the index is rewritten so that this is
/// the only copy of `to` (the old one stays in its pack, unindexed). What a
/// blob swapped or copied in from another repository looks like to a reader.
pub fn swap_blob(
    repo: &coffer_core::Repository,
    kind: coffer_core::crypto::ObjectKind,
    to: &coffer_core::Id,
    bytes: &[u8],
) {
    let want = coffer_core::pack::PackKind::of_blob(kind).expect("a blob kind");
    rewrite_index(repo, |packs| {
        for p in packs.iter_mut().filter(|p| p.kind == want) {
            p.blobs.retain(|b| b.id != *to);
        }
    });
    store_blobs(repo, kind, &[(*to, bytes.to_vec(), 0)]);
}

/// The blobs of a kind that share a pack with `id` (itself included).
pub fn pack_mates(
    repo: &coffer_core::Repository,
    kind: coffer_core::crypto::ObjectKind,
    id: &coffer_core::Id,
) -> Vec<coffer_core::Id> {
    let set = repo.reload_blob_set().expect("load the index");
    let pack = set.get(kind, id).expect("a stored blob").pack;
    let mut mates: Vec<coffer_core::Id> = set.iter().filter(|(_, l)| l.pack == pack).map(|(b, _)| b).collect();
    mates.sort();
    mates
}

/// `coffer snapshots --json`, parsed.
pub fn snapshots_json(env: &Env) -> Vec<serde_json::Value> {
    let out = env.coffer().args(["snapshots", "--json"]).output().expect("run snapshots");
    assert!(out.status.success(), "snapshots failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("snapshots JSON")
}

/// Like [`files_below`], but an empty list for a folder that does not exist
/// (yet), and no panic for entries that vanish while it is read.
pub fn files_below_or_empty(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(ft) if ft.is_dir() => stack.push(e.path()),
                Ok(_) => out.push(e.path()),
                Err(_) => {}
            }
        }
    }
    out
}

/// Where a test repository lives. The race and prune tests are written
/// against this, so that each runs on every backend that implements it.
pub trait Store: Send + Sync {
    /// A new handle on the store (each `Repository` gets its own, so that a
    /// test can wrap one in a pausing backend and not the other).
    fn backend(&self) -> std::sync::Arc<dyn coffer_core::backend::Backend>;
    /// The location the binary is given (`--repo`).
    fn location(&self) -> String;
    /// Removes an object by its key, behind coffer's back (as another
    /// machine's `forget`, or a storage operator, would).
    fn remove(&self, key: &str);
}

/// A local-folder repository.
pub struct LocalStore(pub PathBuf);

impl Store for LocalStore {
    fn backend(&self) -> std::sync::Arc<dyn coffer_core::backend::Backend> {
        std::sync::Arc::new(coffer_core::backend::local::LocalBackend::new(&self.0))
    }

    fn location(&self) -> String {
        self.0.display().to_string()
    }

    fn remove(&self, key: &str) {
        std::fs::remove_file(self.0.join(key)).expect("remove object");
    }
}

impl Env {
    /// The binary as a plain process (for tests that run it in the
    /// background or signal it), set up as [`Env::coffer`].
    pub fn coffer_process(&self) -> std::process::Command {
        let mut cmd = match self.backend {
            Backend::Local => {
                let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("coffer"));
                for var in ["COFFER_PASSWORD_FILE", "COFFER_PASSWORD_COMMAND", "COFFER_LOG"] {
                    cmd.env_remove(var);
                }
                cmd.env("COFFER_REPOSITORY", &self.repo).env("COFFER_PASSWORD", PASSWORD);
                cmd
            }
            Backend::S3 => s3::coffer_process(self, &self.location),
        };
        cmd.env("COFFER_CACHE_DIR", self.dir.path().join("cache"));
        cmd.env("COFFER_STATE_DIR", self.dir.path().join("state"));
        cmd
    }
}

/// The files below `dir` with their content, by path relative to `dir`.
pub fn contents(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    files_below(dir).into_iter().map(|rel| (rel.clone(), std::fs::read(dir.join(&rel)).expect("read file"))).collect()
}

/// Every tree and chunk reachable from the repository's snapshots, read
/// without any cache: each tree loads and authenticates, each chunk exists,
/// decodes and has the length its tree records. Panics naming the first
/// object that does not.
pub fn reachable_objects(
    repo: &coffer_core::Repository,
) -> (std::collections::BTreeSet<coffer_core::Id>, std::collections::BTreeSet<coffer_core::Id>) {
    let mut trees = std::collections::BTreeSet::new();
    let mut chunks = std::collections::BTreeSet::new();
    for (id, snap) in repo.snapshots().expect("list snapshots") {
        let mut stack = vec![snap.tree];
        while let Some(t) = stack.pop() {
            if !trees.insert(t) {
                continue;
            }
            let tree = repo.load_tree(&t).unwrap_or_else(|e| panic!("snapshot {id}: tree {t}: {e}"));
            for node in tree.nodes {
                for c in &node.content {
                    if chunks.insert(c.0) {
                        let data =
                            repo.load_chunk(&c.0).unwrap_or_else(|e| panic!("snapshot {id}: chunk {}: {e}", c.0));
                        assert_eq!(data.len(), c.1 as usize, "snapshot {id}: chunk {} length", c.0);
                    }
                }
                stack.extend(node.subtree);
            }
        }
    }
    (trees, chunks)
}

/// Restores a snapshot's copy of `src` through the library and returns its
/// files with their content.
pub fn restored_contents(
    repo: &coffer_core::Repository,
    snapshot: &coffer_core::Id,
    src: &Path,
) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let target = tempfile::tempdir().expect("restore target");
    let snap = repo.load_snapshot(snapshot).expect("load snapshot");
    let options = coffer_core::restorer::RestoreOptions {
        target: target.path().to_path_buf(),
        includes: vec![src.to_path_buf()],
        ..Default::default()
    };
    coffer_core::restorer::restore(repo, &snap.tree, &options, &coffer_core::progress::NoProgress)
        .unwrap_or_else(|e| panic!("restore {snapshot}: {e}"));
    contents(&target.path().join(src.strip_prefix("/").expect("absolute src")))
}
