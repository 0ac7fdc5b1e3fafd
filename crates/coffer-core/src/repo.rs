//! Opening, creating and reading a repository.
//!
//! [`Repository`] owns the backend, the keys and the async runtime that the
//! backend runs on. Its methods are blocking; the pipelines in
//! [`crate::archiver`] and [`crate::restorer`] use the runtime directly to
//! keep many requests in flight.

use std::sync::Arc;

use crate::backend::{Backend, BackendError, BackendResult, BlockingRead};
use crate::blob::{self, Compression};
use crate::chunker::{Chunker, ChunkerParams};
use crate::config::{self, ConfigBody, ConfigHeader};
use crate::crypto::{Keys, ObjectKind};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{BlobLocation, BlobSet};
use crate::key::{KdfParams, KeyEnvelope};
use crate::snapshot::{MAX_SNAPSHOT_LEN, Snapshot};
use crate::tree::{ChunkRef, Tree};

/// Largest tree plaintext a client will decode (a directory of roughly a
/// million entries).
pub const MAX_TREE_LEN: usize = 256 * 1024 * 1024;

/// Settings chosen when a repository is created.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub kdf: KdfParams,
    pub chunker: ChunkerParams,
    /// Target size of data packs (4 MiB to 512 MiB).
    pub data_pack_size: u32,
    /// Target size of tree packs.
    pub tree_pack_size: u32,
    /// S3 Object Lock: every object retained this long (the bucket must
    /// have Object Lock enabled).
    pub object_lock: Option<crate::backend::ObjectLock>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            kdf: KdfParams::DEFAULT,
            chunker: ChunkerParams::default(),
            data_pack_size: config::DEFAULT_DATA_PACK_SIZE,
            tree_pack_size: config::DEFAULT_TREE_PACK_SIZE,
            object_lock: None,
        }
    }
}

/// An open repository.
pub struct Repository {
    backend: Arc<dyn Backend>,
    runtime: Arc<tokio::runtime::Runtime>,
    keys: Arc<Keys>,
    header: ConfigHeader,
    config: ConfigBody,
    key_name: String,
    /// This repository's own cache folder, if caching is on.
    cache_dir: Option<std::path::PathBuf>,
    lock_settings: crate::lock::LockSettings,
    /// What this host remembers of the repository, if that is on.
    pub(crate) state: Option<crate::state::State>,
    /// Fingerprints of the config object and of the key names as read when
    /// opening, so that the state check need not fetch them again.
    pub(crate) seen_at_open: Option<crate::state::Fingerprints>,
    /// Where every blob is, loaded from the index on first use (see
    /// [`Repository::blob_set`]).
    blobs: tokio::sync::Mutex<Option<Arc<BlobSet>>>,
}

/// The key of an object in the store (`snapshots/ab12…`, `index/ab12…`),
/// or of a chunk or tree in the local cache (`trees/ab/ab12…`): in the
/// store, blobs live in packs (see [`crate::pack::pack_key`]).
pub fn object_key(kind: ObjectKind, id: &Id) -> String {
    let hex = id.to_hex();
    match kind {
        ObjectKind::Chunk => format!("chunks/{}/{hex}", &hex[..2]),
        ObjectKind::Tree => format!("trees/{}/{hex}", &hex[..2]),
        ObjectKind::Snapshot => format!("snapshots/{hex}"),
        ObjectKind::Lock => format!("locks/{hex}"),
        ObjectKind::Index => format!("index/{hex}"),
        ObjectKind::Config => config::NAME.to_string(),
    }
}

/// Parses a listed key back into an id, if it is a well-formed name of that
/// kind. Anything else (temporary files, truncated names, names in the
/// wrong folder) is not an object.
pub fn parse_object_key(kind: ObjectKind, key: &str) -> Option<Id> {
    let (prefix, rest) = match kind {
        ObjectKind::Chunk => ("chunks/", true),
        ObjectKind::Tree => ("trees/", true),
        ObjectKind::Snapshot => ("snapshots/", false),
        ObjectKind::Lock => ("locks/", false),
        ObjectKind::Index => ("index/", false),
        ObjectKind::Config => return None,
    };
    let tail = key.strip_prefix(prefix)?;
    let name = if rest {
        let (dir, name) = tail.split_once('/')?;
        if dir.len() != 2 || !name.starts_with(dir) {
            return None;
        }
        name
    } else {
        tail
    };
    Id::from_hex(name)
}

/// A runtime for the backend: two workers are plenty, as the CPU-heavy work
/// runs on rayon's pool and file I/O on tokio's blocking pool. Sockets (S3)
/// need its I/O driver, retries and timeouts its timer.
pub fn new_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("coffer-io")
        .enable_all()
        .build()
        .map_err(|e| Error::InvalidInput(format!("cannot start the I/O runtime: {e}")))
}

/// This machine's host name, as recorded in key envelopes and snapshots.
pub(crate) fn host_name() -> String {
    nix::unistd::gethostname().ok().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
}

/// This process's user name, as recorded in key envelopes.
pub(crate) fn user_name() -> String {
    crate::metadata::OwnerNames::default().user(nix::unistd::geteuid().as_raw()).unwrap_or_default()
}

/// Points the backend's data pack uploads at the class the repository
/// records, unless the command was given one, and says when it was.
fn apply_recorded_class(backend: &dyn Backend, config: &ConfigBody) {
    if let Some(lock) = config.object_lock {
        match backend.retention() {
            Some(retention) => retention.use_object_lock(lock),
            None => tracing::warn!(
                "the repository records an Object Lock of {} days, but {} has none: objects are written unretained",
                lock.days,
                backend.location()
            ),
        }
    }
    let (Some(classes), Some(recorded)) = (backend.storage_classes(), config.data_storage_class.as_deref()) else {
        return;
    };
    classes.use_recorded_data_class(recorded);
    if let Some(now) = classes.data_class()
        && !now.eq_ignore_ascii_case(recorded)
    {
        tracing::warn!(
            "data packs this command writes go to storage class {now}, not the {recorded} the repository records"
        );
    }
}

impl Repository {
    /// Creates a new repository with one key for `password`.
    ///
    /// The backend's requests are retried as [`crate::backend::retry`] says
    /// (for this and [`Repository::open_with`]): pass a
    /// [`RetryBackend`](crate::backend::retry::RetryBackend) to choose
    /// another policy.
    pub fn init(backend: Arc<dyn Backend>, password: &[u8], options: &InitOptions) -> Result<Repository> {
        let backend = crate::backend::retry::RetryBackend::wrap(backend);
        let runtime = Arc::new(new_runtime()?);
        let location = backend.location();
        runtime.block_on(async {
            match backend.get(config::NAME, config::MAX_STORED).await {
                Ok(_) | Err(BackendError::TooLarge { .. }) => {
                    return Err(Error::RepositoryExists {
                        location: location.clone(),
                        reason: "a repository already exists there".into(),
                    });
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
            let keys = backend.list("keys/").await?;
            if !keys.is_empty() {
                return Err(Error::RepositoryExists {
                    location: location.clone(),
                    reason: "it already holds keys".into(),
                });
            }
            Ok(())
        })?;
        options.chunker.validate()?;
        if let Some(lock) = options.object_lock {
            let Some(retention) = backend.retention() else {
                return Err(Error::InvalidInput(format!(
                    "{location} has no Object Lock: only an S3 bucket with Object Lock enabled can have it"
                )));
            };
            if lock.days == 0 {
                return Err(Error::InvalidInput("--object-lock takes a number of days, at least 1".into()));
            }
            if !runtime.block_on(retention.bucket_has_object_lock())? {
                return Err(Error::InvalidInput(format!(
                    "the bucket of {location} does not have Object Lock enabled (it can only be turned on when a \
                     bucket is created, with versioning): create one with Object Lock, or let `coffer init \
                     --create-bucket --object-lock DAYS` create it"
                )));
            }
            retention.use_object_lock(lock);
        }

        let keys = Keys::generate();
        let mut repo_id = [0u8; 32];
        crate::crypto::fill_random(&mut repo_id);
        let header = ConfigHeader { version: config::FORMAT_VERSION, repo_id };
        let mut config = ConfigBody::new(options.chunker.clone());
        config.data_pack_size = options.data_pack_size;
        config.tree_pack_size = options.tree_pack_size;
        // The class given at init is recorded, so that every later command
        // writes data packs in it without being told again.
        config.data_storage_class = backend.storage_classes().and_then(|c| c.data_class());
        config.object_lock = options.object_lock;
        config.validate().map_err(|_| {
            Error::InvalidInput(format!(
                "pack sizes must lie between 4 MiB and 512 MiB (asked for {} and {} bytes)",
                options.data_pack_size, options.tree_pack_size
            ))
        })?;
        let host = host_name();
        let envelope = KeyEnvelope::seal(&keys, password, options.kdf, &host, &user_name())?;
        let key_name = KeyEnvelope::new_name();
        let config_bytes = config.encode(&keys, &header);
        runtime.block_on(async {
            backend.create().await?;
            backend.put(&key_name, envelope.to_bytes().into()).await?;
            backend.sync().await?;
            // The config goes last: its presence is what makes a repository.
            backend.put(config::NAME, config_bytes.into()).await?;
            backend.sync().await
        })?;
        Ok(Repository {
            backend,
            runtime,
            keys: Arc::new(keys),
            header,
            config,
            key_name,
            cache_dir: None,
            lock_settings: Default::default(),
            state: None,
            seen_at_open: None,
            blobs: Default::default(),
        })
    }

    /// Opens an existing repository with a password.
    pub fn open(backend: Arc<dyn Backend>, password: &[u8]) -> Result<Repository> {
        Repository::open_with(backend, || Ok(zeroize::Zeroizing::new(password.to_vec())))
    }

    /// Opens an existing repository, asking for the password only once it is
    /// known that there is a repository of a readable version to open.
    pub fn open_with(
        backend: Arc<dyn Backend>,
        password: impl FnOnce() -> Result<zeroize::Zeroizing<Vec<u8>>>,
    ) -> Result<Repository> {
        let backend = crate::backend::retry::RetryBackend::wrap(backend);
        let runtime = Arc::new(new_runtime()?);
        let location = backend.location();
        let (config_bytes, envelopes) = runtime.block_on(async {
            let config_bytes = match backend.get(config::NAME, config::MAX_STORED).await {
                Ok(b) => b,
                Err(e) if e.is_not_found() => return Err(Error::NotARepository { location: location.clone() }),
                Err(e @ BackendError::TooLarge { .. }) => {
                    return Err(Error::corrupt("config", config::NAME, e.to_string()));
                }
                Err(e) => return Err(e.into()),
            };
            // Check the version before spending time on the password. A
            // `config` that is not coffer's means this is not a repository.
            match ConfigHeader::parse(&config_bytes) {
                Ok(_) => {}
                Err(Error::Corrupt { .. }) => return Err(Error::NotARepository { location: location.clone() }),
                Err(e) => return Err(e),
            }
            let mut envelopes = Vec::new();
            let mut listed = backend.list("keys/").await?;
            listed.sort_by(|a, b| a.key.cmp(&b.key));
            for entry in listed {
                match backend.get(&entry.key, crate::key::MAX_ENVELOPE_LEN as u64).await {
                    Ok(b) => envelopes.push((entry.key, b)),
                    Err(e) if e.is_not_found() => continue,
                    // Not a key any client wrote: skipped, as a damaged key is.
                    Err(e @ BackendError::TooLarge { .. }) => tracing::warn!("skipping key {}: {e}", entry.key),
                    Err(e) => return Err(e.into()),
                }
            }
            Ok((config_bytes, envelopes))
        })?;
        if envelopes.is_empty() {
            return Err(Error::corrupt("repository", location, "it has a config but no keys"));
        }
        let password = password()?;
        let mut first_problem = None;
        for (name, bytes) in &envelopes {
            let opened = KeyEnvelope::from_bytes(name, bytes).and_then(|env| env.open(name, &password));
            match opened {
                Ok(Some(keys)) => match ConfigBody::decode(&keys, &config_bytes) {
                    Ok((header, config)) => {
                        apply_recorded_class(&*backend, &config);
                        return Ok(Repository {
                            backend,
                            runtime,
                            keys: Arc::new(keys),
                            header,
                            config,
                            key_name: name.clone(),
                            cache_dir: None,
                            lock_settings: Default::default(),
                            state: None,
                            seen_at_open: Some(crate::state::Fingerprints::of(
                                &config_bytes,
                                envelopes.iter().map(|(name, _)| name.as_str()),
                            )),
                            blobs: Default::default(),
                        });
                    }
                    // A key from another repository with the same password:
                    // keep looking, and report it only if nothing else opens.
                    Err(e) => {
                        tracing::warn!("key {name} opens with this password but not this repository's config");
                        first_problem.get_or_insert(e);
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("skipping key {name}: {e}");
                    first_problem.get_or_insert(e);
                }
            }
        }
        // No key opened: the password is wrong. If the only key could not
        // even be tried, or opened but did not fit the config, say why.
        match first_problem {
            Some(e) if envelopes.len() == 1 || matches!(e, Error::Corrupt { .. }) => Err(e),
            _ => Err(Error::WrongPassword),
        }
    }

    /// Turns the local cache on, under `base` (see [`crate::cache`]); each
    /// repository gets its own folder there. Without this call nothing is
    /// cached.
    pub fn with_cache(mut self, base: &std::path::Path) -> Repository {
        if let Err(e) = crate::cache::tag(base) {
            tracing::warn!("cache {} is not usable, going on without it: {e}", base.display());
            return self;
        }
        self.cache_dir = Some(crate::cache::repository_dir(base, self.repo_id()));
        self
    }

    /// This repository's cache folder, when the cache is on.
    pub fn cache_dir(&self) -> Option<&std::path::Path> {
        self.cache_dir.as_deref()
    }

    /// How locks are timed and waited for (see [`crate::lock`]).
    pub fn lock_settings(&self) -> crate::lock::LockSettings {
        self.lock_settings
    }

    pub fn set_lock_settings(&mut self, settings: crate::lock::LockSettings) {
        self.lock_settings = settings;
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn runtime(&self) -> &Arc<tokio::runtime::Runtime> {
        &self.runtime
    }

    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    pub fn repo_id(&self) -> &[u8; 32] {
        &self.header.repo_id
    }

    pub fn config(&self) -> &ConfigBody {
        &self.config
    }

    /// The name of the key this repository was opened with.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    pub(crate) fn set_key_name(&mut self, name: String) {
        self.key_name = name;
    }

    pub fn compression(&self) -> Compression {
        Compression { level: self.config.compression_level }
    }

    pub fn chunker(&self) -> Result<Chunker> {
        Chunker::new(&self.config.chunker, &self.keys.gear_table())
    }

    /// The largest plaintext a chunk of this repository can have.
    pub fn max_chunk_len(&self) -> usize {
        self.config.chunker.max_size as usize
    }

    /// Ids of all stored objects of a kind, sorted, from a listing. Chunks
    /// and trees are blobs in packs: theirs come from a fresh load of the
    /// index against fresh listings of the packs (see [`crate::index::load`]).
    pub fn list_ids(&self, kind: ObjectKind) -> Result<Vec<Id>> {
        let prefix = match kind {
            ObjectKind::Chunk | ObjectKind::Tree => {
                let set = self.reload_blob_set()?;
                return Ok(set.ids(kind));
            }
            ObjectKind::Snapshot => "snapshots/",
            ObjectKind::Lock => "locks/",
            ObjectKind::Index => "index/",
            ObjectKind::Config => return Ok(Vec::new()),
        };
        let entries = self.runtime.block_on(self.backend.list(prefix))?;
        // A zero-length snapshot stays listed, so that reading it reports
        // the damage.
        let mut ids: Vec<Id> = entries.iter().filter_map(|e| parse_object_key(kind, &e.key)).collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Fetches the stored bytes of an object, or of a blob from its pack; a
    /// missing object or blob is [`Error::Missing`].
    pub async fn get_async(&self, kind: ObjectKind, id: &Id) -> Result<Vec<u8>> {
        match kind {
            ObjectKind::Chunk | ObjectKind::Tree => {
                let set = self.blob_set_async().await?;
                fetch_blob(&*self.backend, &set, kind, id, self.stored_limit(kind)).await
            }
            _ => fetch(&*self.backend, kind, id, self.stored_limit(kind)).await,
        }
    }

    /// Where every blob is: the index as loaded on first use in this
    /// process (or last set with [`Repository::set_blob_set`]). Commands
    /// that rely on it being fresh (backup, prune, check) load it
    /// themselves at the right moment.
    pub fn blob_set(&self) -> Result<Arc<BlobSet>> {
        self.runtime.block_on(self.blob_set_async())
    }

    /// [`Repository::blob_set`] for async callers.
    pub async fn blob_set_async(&self) -> Result<Arc<BlobSet>> {
        let mut held = self.blobs.lock().await;
        if let Some(set) = &*held {
            return Ok(set.clone());
        }
        let set = Arc::new(crate::index::load_async(self).await?.blobs);
        *held = Some(set.clone());
        Ok(set)
    }

    /// Loads the index afresh, and keeps it as [`Repository::blob_set`].
    pub fn reload_blob_set(&self) -> Result<Arc<BlobSet>> {
        let loaded = crate::index::load(self)?;
        Ok(self.set_blob_set(loaded.blobs))
    }

    /// Replaces the blob set this handle reads through.
    pub fn set_blob_set(&self, set: BlobSet) -> Arc<BlobSet> {
        let set = Arc::new(set);
        *self.blobs.blocking_lock() = Some(set.clone());
        set
    }

    /// Drops the blob set, so that the next read loads the index again (after
    /// this process stored or deleted packs).
    pub fn forget_blob_set(&self) {
        *self.blobs.blocking_lock() = None;
    }

    /// The target sizes packs are cut at.
    pub fn packer_options(&self) -> crate::packer::PackerOptions {
        crate::packer::PackerOptions {
            data_target: self.config.data_pack_size as usize,
            tree_target: self.config.tree_pack_size as usize,
            ..Default::default()
        }
    }

    /// A packer for this repository: its keys, its pack sizes, and its
    /// cache folder for the index objects it writes.
    pub fn packer(&self) -> crate::packer::Packer {
        crate::packer::Packer::new(self.backend.clone(), self.keys.clone(), *self.repo_id(), self.packer_options())
            .with_cache(self.cache_dir())
    }

    /// [`max_stored`] for this repository.
    pub fn stored_limit(&self, kind: ObjectKind) -> u64 {
        max_stored(kind, self.max_chunk_len())
    }

    pub fn decode_tree(&self, id: &Id, stored: &[u8]) -> Result<Tree> {
        let plain = blob::decode(&self.keys, self.repo_id(), ObjectKind::Tree, id, stored, MAX_TREE_LEN)?;
        Tree::from_bytes(&id.to_hex(), &plain)
    }

    /// Loads a tree, from the local cache when it has a copy that
    /// authenticates, else from the repository (and keeps a copy).
    pub fn load_tree(&self, id: &Id) -> Result<Tree> {
        self.runtime.block_on(self.load_tree_async(id))
    }

    /// [`Repository::load_tree`] for async callers.
    pub async fn load_tree_async(&self, id: &Id) -> Result<Tree> {
        self.load_cached(ObjectKind::Tree, id, |stored| self.decode_tree(id, stored)).await
    }

    /// Reads an object through the cache: the cached copy if `decode`
    /// accepts it (it authenticates exactly as a fetched object would), else
    /// the repository's, which is then cached if it decodes. A copy that
    /// fails is dropped with a warning, never trusted and never fatal.
    async fn load_cached<T>(&self, kind: ObjectKind, id: &Id, decode: impl Fn(&[u8]) -> Result<T>) -> Result<T> {
        if let Some(dir) = &self.cache_dir
            && let Some(stored) = crate::cache::read(dir, kind, id)
        {
            match decode(&stored) {
                Ok(value) => return Ok(value),
                Err(e) => {
                    tracing::warn!("dropping the cached copy of {} {}: {e}", kind.name(), id.to_hex());
                    crate::cache::remove(dir, kind, id);
                }
            }
        }
        let (value, stored) = read_twice(|| async {
            let stored = self.get_async(kind, id).await?;
            Ok((decode(&stored)?, stored))
        })
        .await?;
        if let Some(dir) = &self.cache_dir {
            crate::cache::write(dir, kind, id, &stored);
        }
        Ok(value)
    }

    /// Fills the local cache with every tree below `root` (itself included)
    /// that it lacks, one level of the hierarchy at a time with as many
    /// requests in flight as the backend likes. A walk that follows (a
    /// backup comparing with its parent, a restore planning its work) then
    /// finds each tree in the cache instead of waiting one round trip per
    /// directory. A tree that cannot be read is left for that walk to meet
    /// and report. Without a cache this does nothing: it would have to hold
    /// every tree in memory.
    pub fn warm_tree_cache(&self, root: &Id) {
        use futures_util::StreamExt;
        if self.cache_dir.is_none() {
            return;
        }
        let concurrency = self.backend.concurrency().max(1);
        let mut seen = std::collections::HashSet::from([*root]);
        let mut level = vec![*root];
        self.runtime.block_on(async {
            while !level.is_empty() {
                let mut trees = futures_util::stream::iter(std::mem::take(&mut level))
                    .map(|id| async move { self.load_tree_async(&id).await })
                    .buffer_unordered(concurrency);
                while let Some(tree) = trees.next().await {
                    let Ok(tree) = tree else { continue };
                    level.extend(tree.nodes.iter().filter_map(|n| n.subtree).filter(|id| seen.insert(*id)));
                }
            }
        });
    }

    /// Drops the cached copy of an object that is gone from the repository.
    pub fn forget_cached(&self, kind: ObjectKind, id: &Id) {
        if let Some(dir) = &self.cache_dir {
            crate::cache::remove(dir, kind, id);
        }
    }

    /// Encodes a tree; returns its id and stored bytes.
    pub fn encode_tree(&self, tree: &Tree) -> (Id, Vec<u8>) {
        let plain = tree.to_bytes();
        let id = self.keys.id(&plain);
        let stored = blob::encode(&self.keys, self.repo_id(), ObjectKind::Tree, &id, &plain, self.compression());
        (id, stored)
    }

    pub fn load_chunk(&self, id: &Id) -> Result<Vec<u8>> {
        self.runtime.block_on(read_twice(|| async {
            let stored = self.get_async(ObjectKind::Chunk, id).await?;
            blob::decode_owned(&self.keys, self.repo_id(), ObjectKind::Chunk, id, stored, self.max_chunk_len())
                .map(blob::Decoded::into_vec)
        }))
    }

    pub fn encode_chunk(&self, id: &Id, plaintext: &[u8]) -> Vec<u8> {
        blob::encode(&self.keys, self.repo_id(), ObjectKind::Chunk, id, plaintext, self.compression())
    }

    /// Loads a snapshot, from the local cache when it has a copy that
    /// authenticates, else from the repository (and keeps a copy). Which
    /// snapshots exist is never taken from the cache: callers get ids from a
    /// listing ([`Repository::snapshots`]).
    pub fn load_snapshot(&self, id: &Id) -> Result<Snapshot> {
        self.runtime.block_on(self.load_cached(ObjectKind::Snapshot, id, |stored| self.decode_snapshot(id, stored)))
    }

    /// Loads a snapshot from the repository itself, never the cache: what
    /// `check` does, since a copy here says nothing about the stored object.
    pub fn fetch_snapshot(&self, id: &Id) -> Result<Snapshot> {
        self.runtime.block_on(read_twice(|| async {
            let stored = self.get_async(ObjectKind::Snapshot, id).await?;
            self.decode_snapshot(id, &stored)
        }))
    }

    /// Authenticates and parses a snapshot's stored bytes; its id is checked
    /// against the plaintext like a chunk's.
    pub fn decode_snapshot(&self, id: &Id, stored: &[u8]) -> Result<Snapshot> {
        let name = object_key(ObjectKind::Snapshot, id);
        let plain =
            blob::open_random(&self.keys, self.repo_id(), ObjectKind::Snapshot, &name, b"", stored, MAX_SNAPSHOT_LEN)?;
        if self.keys.id(&plain) != *id {
            return Err(Error::corrupt("snapshot", id.to_hex(), "content does not match its id"));
        }
        Snapshot::from_bytes(&id.to_hex(), &plain)
    }

    /// Writes a snapshot and makes it durable. Callers must have synced every
    /// object it references first (see [`crate::archiver`]).
    pub fn save_snapshot(&self, snapshot: &Snapshot) -> Result<Id> {
        let plain = snapshot.to_bytes();
        if plain.len() > MAX_SNAPSHOT_LEN {
            return Err(Error::InvalidInput(format!(
                "the snapshot takes {} bytes, more than the {MAX_SNAPSHOT_LEN} any client reads (too many paths or tags)",
                plain.len()
            )));
        }
        let id = self.keys.id(&plain);
        let name = object_key(ObjectKind::Snapshot, &id);
        let stored = blob::seal_random(&self.keys, self.repo_id(), ObjectKind::Snapshot, &name, b"", &plain);
        self.runtime.block_on(async {
            self.backend.put(&name, stored.clone().into()).await?;
            self.backend.sync().await
        })?;
        if let Some(dir) = &self.cache_dir {
            crate::cache::write(dir, ObjectKind::Snapshot, &id, &stored);
        }
        self.remember_snapshot(&id);
        Ok(id)
    }

    /// Deletes a snapshot object (what `forget` does; the data it references
    /// stays until a prune). Durable when this returns.
    pub fn remove_snapshot(&self, id: &Id) -> Result<()> {
        self.runtime.block_on(async {
            self.backend.delete(&object_key(ObjectKind::Snapshot, id)).await?;
            self.backend.sync().await
        })?;
        self.forget_cached(ObjectKind::Snapshot, id);
        Ok(())
    }

    /// Every snapshot, oldest first, from a fresh listing of `snapshots/`
    /// (their contents may come from the cache). Damaged snapshots are an
    /// error: a listing that silently skips one would hide data loss.
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        let ids = self.list_ids(ObjectKind::Snapshot)?;
        self.load_snapshots(&ids)
    }

    /// [`Repository::snapshots`] for ids the caller has just listed (sorted,
    /// as [`Repository::list_ids`] returns them). Cached snapshots that are
    /// not among them are dropped from the cache.
    pub fn load_snapshots(&self, listed: &[Id]) -> Result<Vec<(Id, Snapshot)>> {
        if let Some(dir) = &self.cache_dir {
            crate::cache::retain(dir, ObjectKind::Snapshot, listed);
        }
        let mut out = Vec::new();
        for id in listed {
            match self.load_snapshot(id) {
                Ok(s) => out.push((*id, s)),
                // Forgotten between the listing and the read: it is gone,
                // not damaged.
                Err(Error::Missing { .. }) => tracing::debug!("snapshot {id} vanished while listing"),
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.1.time_key().cmp(&b.1.time_key()).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// Finds a snapshot by `latest`, a full id or a unique id prefix.
    pub fn find_snapshot(&self, spec: &str) -> Result<(Id, Snapshot)> {
        self.find_snapshot_filtered(spec, |_| true)
    }

    /// Like [`Repository::find_snapshot`]; `latest` considers only snapshots
    /// that pass `filter`.
    pub fn find_snapshot_filtered(&self, spec: &str, filter: impl Fn(&Snapshot) -> bool) -> Result<(Id, Snapshot)> {
        if spec == "latest" {
            let mut all = self.snapshots()?;
            all.retain(|(_, s)| filter(s));
            return all.pop().ok_or_else(|| Error::InvalidInput("there is no snapshot yet".into()));
        }
        let prefix = spec.to_ascii_lowercase();
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) || prefix.len() > 64 {
            return Err(Error::InvalidInput(format!("{spec:?} is neither `latest` nor a snapshot id")));
        }
        let matches: Vec<Id> =
            self.list_ids(ObjectKind::Snapshot)?.into_iter().filter(|id| id.to_hex().starts_with(&prefix)).collect();
        match matches.as_slice() {
            [id] => Ok((*id, self.load_snapshot(id)?)),
            [] => Err(Error::InvalidInput(format!("no snapshot matches {spec:?}"))),
            _ => Err(Error::InvalidInput(format!("{spec:?} matches {} snapshots; give more digits", matches.len()))),
        }
    }
}

/// Decodes the chunk a tree's [`ChunkRef`] names from its stored bytes, and
/// checks that it has the length the tree recorded (restore and dump place
/// chunks by those lengths).
pub fn decode_chunk_ref(
    keys: &Keys,
    repo_id: &[u8; 32],
    max_len: usize,
    chunk: &ChunkRef,
    stored: Vec<u8>,
) -> Result<blob::Decoded> {
    let data = blob::decode_owned(keys, repo_id, ObjectKind::Chunk, &chunk.0, stored, max_len)?;
    check_chunk_len(chunk, data.len())?;
    Ok(data)
}

/// [`decode_chunk_ref`] for a chunk lying in a buffer shared with its
/// neighbours: one ranged read of a pack.
pub fn decode_chunk_ref_in<'a>(
    keys: &Keys,
    repo_id: &[u8; 32],
    max_len: usize,
    chunk: &ChunkRef,
    stored: &'a mut [u8],
) -> Result<std::borrow::Cow<'a, [u8]>> {
    let data = blob::decode_in_place(keys, repo_id, ObjectKind::Chunk, &chunk.0, stored, max_len)?;
    check_chunk_len(chunk, data.len())?;
    Ok(data)
}

fn check_chunk_len(chunk: &ChunkRef, len: usize) -> Result<()> {
    if len != chunk.1 as usize {
        return Err(Error::corrupt("chunk", chunk.0.to_hex(), "length differs from the tree's record"));
    }
    Ok(())
}

/// The most bytes a stored object of `kind` can take, in a repository whose
/// chunks have at most `max_chunk_len` bytes of plaintext (docs/format.md,
/// section 13). Reads refuse larger objects before reading them.
pub fn max_stored(kind: ObjectKind, max_chunk_len: usize) -> u64 {
    match kind {
        ObjectKind::Chunk => blob::max_stored_len(max_chunk_len),
        ObjectKind::Tree => blob::max_stored_len(MAX_TREE_LEN),
        ObjectKind::Snapshot => blob::max_stored_random_len(MAX_SNAPSHOT_LEN),
        ObjectKind::Lock => crate::lock::MAX_STORED,
        ObjectKind::Index => crate::index::MAX_STORED,
        ObjectKind::Config => config::MAX_STORED,
    }
}

/// Runs `read`, a read of an object and its authentication, and runs it
/// once more if what came back is damaged ([`Error::Corrupt`]): a bit
/// flipped or a body cut short on the way is not damage at rest. A second
/// failure is reported as damage. (Requests that fail are retried by the
/// backend's layer, [`crate::backend::retry`].)
pub async fn read_twice<T, F, Fut>(read: F) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    match read().await {
        Err(e @ Error::Corrupt { .. }) => {
            tracing::warn!("{e}; reading it again");
            read().await
        }
        other => other,
    }
}

/// [`read_twice`] for a blocking read.
pub fn read_twice_blocking<T>(read: impl Fn() -> Result<T>) -> Result<T> {
    match read() {
        Err(e @ Error::Corrupt { .. }) => {
            tracing::warn!("{e}; reading it again");
            read()
        }
        other => other,
    }
}

/// Fetches an object's stored bytes from a backend, refusing more than
/// `limit` bytes (see [`max_stored`]).
pub async fn fetch(backend: &dyn Backend, kind: ObjectKind, id: &Id, limit: u64) -> Result<Vec<u8>> {
    fetched(kind, id, backend.get(&object_key(kind, id), limit).await)
}

/// Fetches a blob's stored bytes from its pack with one ranged read; a blob
/// the set does not have, or whose pack is gone, is [`Error::Missing`].
pub async fn fetch_blob(
    backend: &dyn Backend,
    set: &BlobSet,
    kind: ObjectKind,
    id: &Id,
    limit: u64,
) -> Result<Vec<u8>> {
    let loc = locate_blob(set, kind, id, limit)?;
    fetch_blob_at(backend, kind, id, &loc, limit).await
}

/// [`fetch_blob`] from a given place.
pub async fn fetch_blob_at(
    backend: &dyn Backend,
    kind: ObjectKind,
    id: &Id,
    loc: &BlobLocation,
    limit: u64,
) -> Result<Vec<u8>> {
    check_blob_length(kind, id, loc, limit)?;
    let key = crate::pack::pack_key(loc.kind, &loc.pack);
    blob_read(kind, id, loc, backend.get_range(&key, u64::from(loc.offset), u64::from(loc.length)).await)
}

/// [`fetch_blob`] on the calling thread, from a store whose reads block.
pub fn fetch_blob_blocking(
    reads: &dyn BlockingRead,
    set: &BlobSet,
    kind: ObjectKind,
    id: &Id,
    limit: u64,
) -> Result<Vec<u8>> {
    let loc = locate_blob(set, kind, id, limit)?;
    let key = crate::pack::pack_key(loc.kind, &loc.pack);
    blob_read(kind, id, &loc, reads.get_range_blocking(&key, u64::from(loc.offset), u64::from(loc.length)))
}

/// Where to read a blob, refusing an index entry longer than `limit`.
pub fn locate_blob(set: &BlobSet, kind: ObjectKind, id: &Id, limit: u64) -> Result<BlobLocation> {
    let loc = set.get(kind, id).ok_or(Error::Missing { kind: kind.name(), id: *id })?;
    check_blob_length(kind, id, &loc, limit)?;
    Ok(loc)
}

/// An index entry longer than any blob of its kind is refused before
/// reading: the index is authenticated, but a reader's memory should not
/// depend on it.
fn check_blob_length(kind: ObjectKind, id: &Id, loc: &BlobLocation, limit: u64) -> Result<()> {
    if u64::from(loc.length) > limit {
        return Err(Error::corrupt(
            kind.name(),
            id.to_hex(),
            format!(
                "the index gives it {} bytes in pack {}, more than the {limit} a {} may take",
                loc.length,
                loc.pack,
                kind.name()
            ),
        ));
    }
    Ok(())
}

fn blob_read(kind: ObjectKind, id: &Id, loc: &BlobLocation, got: BackendResult<Vec<u8>>) -> Result<Vec<u8>> {
    match got {
        Ok(b) => Ok(b),
        Err(BackendError::NotFound { .. }) => Err(Error::Missing { kind: kind.name(), id: *id }),
        Err(BackendError::Io { error, .. }) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(Error::corrupt(
                kind.name(),
                id.to_hex(),
                format!("{} pack {} is shorter than its index says ({error})", loc.kind.name(), loc.pack),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// [`fetch`] on the calling thread, from a store whose reads block.
pub fn fetch_blocking(reads: &dyn BlockingRead, kind: ObjectKind, id: &Id, limit: u64) -> Result<Vec<u8>> {
    fetched(kind, id, reads.get_blocking(&object_key(kind, id), limit))
}

fn fetched(kind: ObjectKind, id: &Id, got: BackendResult<Vec<u8>>) -> Result<Vec<u8>> {
    match got {
        Ok(b) => Ok(b),
        Err(BackendError::NotFound { .. }) => Err(Error::Missing { kind: kind.name(), id: *id }),
        Err(e @ BackendError::TooLarge { .. }) => Err(Error::corrupt(kind.name(), id.to_hex(), e.to_string())),
        Err(e) => Err(e.into()),
    }
}

impl Snapshot {
    /// Sort key: the instant, falling back to the string if it does not parse.
    fn time_key(&self) -> (Option<jiff::Timestamp>, &str) {
        (self.timestamp().ok(), &self.time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys_round_trip() {
        let id = Id([0xcd; 32]);
        for kind in [ObjectKind::Chunk, ObjectKind::Tree, ObjectKind::Snapshot, ObjectKind::Lock] {
            assert_eq!(parse_object_key(kind, &object_key(kind, &id)), Some(id));
        }
        assert_eq!(object_key(ObjectKind::Chunk, &id), format!("chunks/cd/{}", id.to_hex()));
        assert_eq!(parse_object_key(ObjectKind::Chunk, &format!("chunks/ab/{}", id.to_hex())), None, "wrong folder");
        assert_eq!(parse_object_key(ObjectKind::Tree, &object_key(ObjectKind::Chunk, &id)), None);
        assert_eq!(parse_object_key(ObjectKind::Chunk, &format!("chunks/cd/{}.tmp-1", id.to_hex())), None);
    }
}
