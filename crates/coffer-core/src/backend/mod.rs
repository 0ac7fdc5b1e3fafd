//! Where objects live. A backend stores opaque byte strings under string keys
//! such as `data/ab/ab12…`; it knows nothing about encryption or ids.
//!
//! The trait is small on purpose, so that a new store (or a test wrapper that
//! injects failures) is easy to write and hard to get wrong.

/// The methods of [`Backend`] that a wrapper passes to the backend it
/// wraps (a field `inner`) unchanged, by name: `forward!(location,
/// concurrency, wire_stats, storage_classes, retention, adopt);` inside the
/// wrapper's `impl Backend`. (The async methods cannot be generated here:
/// `async_trait` rewrites the impl before this expands.)
macro_rules! forward {
    ($($method:ident),* $(,)?) => { $( forward!(@ $method); )* };
    (@ location) => {
        fn location(&self) -> String {
            self.inner.location()
        }
    };
    (@ concurrency) => {
        fn concurrency(&self) -> usize {
            self.inner.concurrency()
        }
    };
    (@ wire_stats) => {
        fn wire_stats(&self) -> $crate::backend::WireStats {
            self.inner.wire_stats()
        }
    };
    (@ storage_classes) => {
        fn storage_classes(&self) -> Option<&dyn $crate::backend::StorageClasses> {
            self.inner.storage_classes()
        }
    };
    (@ retention) => {
        fn retention(&self) -> Option<&dyn $crate::backend::Retention> {
            self.inner.retention()
        }
    };
    (@ adopt) => {
        fn adopt(&self, keys: &[String]) {
            self.inner.adopt(keys)
        }
    };
}

mod direct;
pub mod limit;
pub mod local;
pub mod pausing;
pub mod retry;
pub mod rule;
#[cfg(feature = "s3")]
pub mod s3;
pub mod testing;

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
/// What [`Backend::put`] takes: an object's bytes, shared without copying.
pub use bytes::Bytes;

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The full key, e.g. `data/ab/ab12…`.
    pub key: String,
    pub size: u64,
    /// The storage class the store reports (S3: `STANDARD`, `GLACIER`, …);
    /// `None` where a store has none (a local folder).
    pub storage_class: Option<String>,
}

impl Entry {
    /// Whether the object sits in an archive class, unreadable until a
    /// restore request completes (see [`StorageClasses`]).
    pub fn is_archived(&self) -> bool {
        self.storage_class.as_deref().is_some_and(is_archive_class)
    }
}

/// Storage classes whose objects cannot be read until a restore request
/// makes a temporary copy (minutes to two days, and a fee): AWS's Glacier
/// Flexible Retrieval and Deep Archive. `GLACIER_IR` is read at once.
pub const ARCHIVE_CLASSES: [&str; 2] = ["GLACIER", "DEEP_ARCHIVE"];

/// A storage class name as S3 spells them (`STANDARD_IA`, `DEEP_ARCHIVE`),
/// in any case: the store itself says which it accepts.
pub fn valid_storage_class(class: &str) -> bool {
    !class.is_empty() && class.len() <= 64 && class.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_')
}

/// Whether objects of `class` must be restored before they can be read.
pub fn is_archive_class(class: &str) -> bool {
    ARCHIVE_CLASSES.iter().any(|c| c.eq_ignore_ascii_case(class))
}

/// How fast (and at what price) an archived object is brought back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetrievalTier {
    /// The cheapest: 5-12 hours from Glacier, up to 48 from Deep Archive.
    Bulk,
    /// 3-5 hours from Glacier, up to 12 from Deep Archive.
    Standard,
    /// 1-5 minutes, Glacier only (Deep Archive refuses it).
    Expedited,
}

impl RetrievalTier {
    pub const ALL: [RetrievalTier; 3] = [RetrievalTier::Bulk, RetrievalTier::Standard, RetrievalTier::Expedited];

    pub fn name(self) -> &'static str {
        match self {
            RetrievalTier::Bulk => "bulk",
            RetrievalTier::Standard => "standard",
            RetrievalTier::Expedited => "expedited",
        }
    }

    pub fn parse(s: &str) -> Option<RetrievalTier> {
        RetrievalTier::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(s))
    }
}

/// Whether an object can be read now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreStatus {
    /// In a class that is read at once, or archived with a restored copy
    /// (until `expires`, when the store says).
    Readable { expires: Option<String> },
    /// Archived, and no restore was asked for (or its copy expired).
    Archived,
    /// Archived, and a restore request is under way.
    InProgress,
}

/// How S3 Object Lock protects a repository's objects (`init --object-lock`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// Nobody can shorten or remove the retention, the root account
    /// included, until it ends.
    Compliance,
    /// Credentials with `s3:BypassGovernanceRetention` can shorten or
    /// remove it; nobody else can.
    Governance,
}

impl LockMode {
    pub fn name(self) -> &'static str {
        match self {
            LockMode::Compliance => "compliance",
            LockMode::Governance => "governance",
        }
    }
}

/// A repository's Object Lock: every object is written retained for
/// `days` days, and backups extend what their snapshot uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectLock {
    pub days: u32,
    pub mode: LockMode,
}

/// Whether an object written under `key` gets a retention: all but lock
/// objects, which must go when their holder is done (and protect nothing).
pub fn retained_kind(key: &str) -> bool {
    !key.starts_with("locks/")
}

/// Object Lock retention, for a store that has it (S3). A backend offers
/// it through [`Backend::retention`], which every wrapper forwards.
#[async_trait]
pub trait Retention: Send + Sync {
    /// From now on, every object written (but locks) is retained for
    /// `lock.days` days from its upload, in `lock.mode`.
    fn use_object_lock(&self, lock: ObjectLock);

    /// Whether the bucket has Object Lock (and so versioning) enabled.
    async fn bucket_has_object_lock(&self) -> BackendResult<bool>;

    /// Until when (seconds since the epoch) `key` is retained; `None` when
    /// it has no retention. One HEAD request.
    async fn retained_until(&self, key: &str) -> BackendResult<Option<i64>>;

    /// Sets the retention of `key` to end at `until` (seconds since the
    /// epoch), which the store refuses if it would shorten it.
    async fn extend_retention(&self, key: &str, until: i64, mode: LockMode) -> BackendResult<()>;
}

/// What a store with storage classes can do beyond reads and writes: S3.
/// A backend offers it through [`Backend::storage_classes`], which every
/// wrapper forwards, so that these calls need no forwarding of their own.
#[async_trait]
pub trait StorageClasses: Send + Sync {
    /// The class new data packs go to, if any.
    fn data_class(&self) -> Option<String>;

    /// Makes `class` the class of new data packs, unless this backend was
    /// given one of its own (a flag for this command): the class a
    /// repository records is used by every command that writes.
    fn use_recorded_data_class(&self, class: &str);

    /// Asks the store whether `key` can be read now (one HEAD request).
    async fn restore_status(&self, key: &str) -> BackendResult<RestoreStatus>;

    /// Asks for a temporary readable copy of an archived object, kept for
    /// `days` days. Answers the status after the request: `InProgress`
    /// when it was accepted or already under way, `Readable` when a copy
    /// is there already.
    async fn request_restore(&self, key: &str, days: u32, tier: RetrievalTier) -> BackendResult<RestoreStatus>;
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("object {key} does not exist")]
    NotFound { key: String },
    #[error("object {key}: {error}")]
    Io { key: String, error: std::io::Error },
    #[error("{location}: {message}")]
    Unavailable { location: String, message: String },
    /// A failure that may pass if the request is made again (a dropped
    /// connection, a request that got no answer in time): the
    /// [`retry::RetryBackend`] layer makes it again. A store that retries on
    /// its own (S3, whose SDK does) reports what is left after its retries
    /// as [`BackendError::Unavailable`], which is not retried a second time.
    #[error("{location}: {message}")]
    Transient { location: String, message: String },
    /// The object is larger than any well-formed object of its kind can
    /// be: refused before its bytes are read, so that a hostile store
    /// cannot exhaust a client's memory with one huge object.
    #[error("object {key} holds {size} bytes, more than the {limit} an object of its kind can have: refused unread")]
    TooLarge { key: String, size: u64, limit: u64 },
    /// The object is in an archive storage class (Glacier, Deep Archive)
    /// and has no restored copy: it cannot be read until a restore request
    /// completes. Never retried: asking again changes nothing for hours.
    #[error(
        "object {key} is archived ({class}) and cannot be read until it is restored: \
         `coffer restore --dry-run` shows what a restore needs, `coffer restore --warm-up` asks for it"
    )]
    Archived { key: String, class: String },
}

impl BackendError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::NotFound { .. })
    }

    /// Whether the object is in an archive class without a restored copy.
    pub fn is_archived(&self) -> bool {
        matches!(self, BackendError::Archived { .. })
    }

    /// Whether making the request again may succeed (see [`retry`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, BackendError::Transient { .. })
    }

    /// True when the error means the disk or the quota is full: worth its own
    /// message, since the fix is the person's, not a retry.
    pub fn is_storage_full(&self) -> bool {
        match self {
            BackendError::Io { error, .. } => {
                matches!(error.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
            }
            _ => false,
        }
    }
}

pub type BackendResult<T> = Result<T, BackendError>;

/// What a backend has cost on the wire so far: requests by kind and the
/// bytes of object bodies moved. These are what a cloud store bills, so
/// commands report them (`--json` and the backup summary).
///
/// A request is one HTTP request for S3 (each page of a listing is one LIST;
/// retries of a failed attempt are not counted again) and one call for a
/// local folder. Bytes are object bodies only, not headers or listings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WireStats {
    pub puts: u64,
    pub gets: u64,
    pub lists: u64,
    pub deletes: u64,
    /// HEAD requests (S3 checks its bucket once with one).
    pub heads: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl WireStats {
    /// The requests of every kind together.
    pub fn requests(&self) -> u64 {
        self.puts + self.gets + self.lists + self.deletes + self.heads
    }

    /// What happened between an earlier reading and this one.
    pub fn since(&self, earlier: &WireStats) -> WireStats {
        WireStats {
            puts: self.puts.saturating_sub(earlier.puts),
            gets: self.gets.saturating_sub(earlier.gets),
            lists: self.lists.saturating_sub(earlier.lists),
            deletes: self.deletes.saturating_sub(earlier.deletes),
            heads: self.heads.saturating_sub(earlier.heads),
            bytes_up: self.bytes_up.saturating_sub(earlier.bytes_up),
            bytes_down: self.bytes_down.saturating_sub(earlier.bytes_down),
        }
    }
}

/// The counters behind [`WireStats`], shared by the requests of a backend.
#[derive(Debug, Default)]
pub struct WireCounters {
    puts: AtomicU64,
    gets: AtomicU64,
    lists: AtomicU64,
    deletes: AtomicU64,
    heads: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

impl WireCounters {
    pub fn put(&self, bytes: u64) {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.bytes_up.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A GET request was made (found or not).
    pub fn get(&self) {
        self.gets.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes of an object body received.
    pub fn received(&self, bytes: u64) {
        self.bytes_down.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn list(&self) {
        self.lists.fetch_add(1, Ordering::Relaxed);
    }

    pub fn delete(&self) {
        self.deletes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn head(&self) {
        self.heads.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> WireStats {
        WireStats {
            puts: self.puts.load(Ordering::Relaxed),
            gets: self.gets.load(Ordering::Relaxed),
            lists: self.lists.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
            heads: self.heads.load(Ordering::Relaxed),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
        }
    }
}

/// [`Backend::get`] as a blocking call on the calling thread.
pub trait BlockingRead: Send + Sync {
    fn get_blocking(&self, key: &str, max_len: u64) -> BackendResult<Vec<u8>>;

    /// [`Backend::get_range`] as a blocking call.
    fn get_range_blocking(&self, key: &str, offset: u64, len: u64) -> BackendResult<Vec<u8>>;
}

/// The error of a ranged read that ran past the object's end.
pub fn short_range(key: &str, offset: u64, len: u64, got: u64) -> BackendError {
    BackendError::Io {
        key: key.to_string(),
        error: std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the object ends before bytes {offset}..{} (got {got} of {len})", offset.saturating_add(len)),
        ),
    }
}

/// An object store.
///
/// Writes must be atomic: a reader sees either no object or the whole object,
/// never a prefix. A store where an interrupted upload can leave a visible
/// partial object must hide it under a name that is not a well-formed key.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A human-readable description of the location, for messages.
    fn location(&self) -> String;

    /// How many requests are worth having in flight at once.
    fn concurrency(&self) -> usize;

    /// The requests made and bytes moved since the backend was created.
    /// Every store counts its own requests; a wrapper must forward this to
    /// the backend it wraps (the default, all zeros, is for a store that
    /// costs nothing to ask).
    fn wire_stats(&self) -> WireStats {
        WireStats::default()
    }

    /// Stores `data` under `key`, replacing any object already there.
    /// (`Bytes`, not `Vec`: a store can keep the object where the encoder
    /// placed it, e.g. at the aligned address a direct write needs.)
    async fn put(&self, key: &str, data: Bytes) -> BackendResult<()>;

    /// Reads the whole object, if it holds at most `max_len` bytes; a larger
    /// one is [`BackendError::TooLarge`], refused before its body is read
    /// (the limits of each kind are in `docs/format.md`, section 13).
    async fn get(&self, key: &str, max_len: u64) -> BackendResult<Vec<u8>>;

    /// [`Backend::get`] into `buf`, a buffer given back for reuse (its old
    /// content is dropped). Its memory is mapped already: a fresh buffer
    /// for each 32 MiB pack `check --read-data` reads costs a page fault
    /// and a zeroed page every 4 KiB, an eighth of the check's CPU time. A
    /// store may ignore it.
    async fn get_into(&self, key: &str, max_len: u64, buf: Vec<u8>) -> BackendResult<Vec<u8>> {
        drop(buf);
        self.get(key, max_len).await
    }

    /// Reads exactly `len` bytes of the object from `offset` (a blob of a
    /// pack, a pack's header). An object that ends before the range does is
    /// an error ([`short_range`]), never a shorter answer. Required of
    /// every wrapper, so that none forwards ranged reads around its faults.
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> BackendResult<Vec<u8>>;

    /// The store's reads as plain blocking calls, for a store whose reads are
    /// file reads (a local folder); `None` for the others. A worker thread
    /// that reads and then decodes an object can then do both itself,
    /// instead of handing every read to the runtime and waiting for it.
    /// Wrappers that change what `get` does (delays, faults) keep the
    /// default, so that their behaviour is not bypassed.
    fn blocking_reads(&self) -> Option<&dyn BlockingRead> {
        None
    }

    /// Lists every key that starts with `prefix` (a folder such as
    /// `data/`), in no particular order. Temporary objects are left out;
    /// for `data/` and `tree/` a store may also leave out keys outside the
    /// 256 sub-folders `00/`…`ff/` (no well-formed object lives there).
    async fn list(&self, prefix: &str) -> BackendResult<Vec<Entry>>;

    /// Removes an object. Removing an object that does not exist is not an error.
    async fn delete(&self, key: &str) -> BackendResult<()>;

    /// Makes every `put` that has returned so far durable. The snapshot is
    /// written only after this returns, so a crash can never leave a snapshot
    /// that references data the store has not kept.
    async fn sync(&self) -> BackendResult<()>;

    /// Objects another process wrote, which this one is about to reference
    /// (a killed backup's packs, reused by the next): the next `sync` makes
    /// them durable too, as if written here. A store whose writes are
    /// durable once they return has nothing to do.
    fn adopt(&self, _keys: &[String]) {}

    /// Creates the empty structure of a new repository, if the store needs one.
    async fn create(&self) -> BackendResult<()>;

    /// Whether this backend already retries failed requests and abandons
    /// hung ones ([`retry::RetryBackend`] does): a repository opened on it
    /// does not wrap it in a second retrying layer.
    fn retries(&self) -> bool {
        false
    }

    /// Storage classes and restores from archive classes, for a store that
    /// has them (S3); `None` for the others. Wrappers forward it.
    fn storage_classes(&self) -> Option<&dyn StorageClasses> {
        None
    }

    /// Object Lock retention, for a store that has it (S3); `None` for
    /// the others. Wrappers forward it.
    fn retention(&self) -> Option<&dyn Retention> {
        None
    }
}
