//! Where objects live. A backend stores opaque byte strings under string keys
//! such as `chunks/ab/ab12…`; it knows nothing about encryption or ids.
//!
//! The trait is small on purpose, so that a new store (or a test wrapper that
//! injects failures) is easy to write and hard to get wrong.

pub mod local;
pub mod pausing;
#[cfg(feature = "s3")]
pub mod s3;

use async_trait::async_trait;

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The full key, e.g. `chunks/ab/ab12…`.
    pub key: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("object {key} does not exist")]
    NotFound { key: String },
    #[error("object {key}: {error}")]
    Io { key: String, error: std::io::Error },
    #[error("{location}: {message}")]
    Unavailable { location: String, message: String },
}

impl BackendError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::NotFound { .. })
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

    /// Stores `data` under `key`, replacing any object already there.
    async fn put(&self, key: &str, data: Vec<u8>) -> BackendResult<()>;

    /// Reads the whole object.
    async fn get(&self, key: &str) -> BackendResult<Vec<u8>>;

    /// Lists every key that starts with `prefix` (a folder such as
    /// `chunks/`), in no particular order. Temporary objects are left out.
    async fn list(&self, prefix: &str) -> BackendResult<Vec<Entry>>;

    /// Removes an object. Removing an object that does not exist is not an error.
    async fn delete(&self, key: &str) -> BackendResult<()>;

    /// Makes every `put` that has returned so far durable. The snapshot is
    /// written only after this returns, so a crash can never leave a snapshot
    /// that references data the store has not kept.
    async fn sync(&self) -> BackendResult<()>;

    /// Creates the empty structure of a new repository, if the store needs one.
    async fn create(&self) -> BackendResult<()>;
}
