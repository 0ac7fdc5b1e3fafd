//! The library's error type. Each variant is a situation a person can act on;
//! the binary maps some of them to restic-compatible exit codes.

use std::path::PathBuf;

use crate::backend::BackendError;
use crate::id::Id;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No key in the repository opens with the password given.
    #[error("wrong password: no key in the repository opens with it")]
    WrongPassword,

    /// The location holds no coffer repository (no `config` object).
    #[error("there is no coffer repository at {location}")]
    NotARepository { location: String },

    /// `init` found a repository (or other files) where it would write one.
    #[error("refusing to initialise {location}: {reason}")]
    RepositoryExists { location: String, reason: String },

    /// The repository was written by a newer coffer.
    #[error(
        "this repository uses format version {found}; this coffer reads up to version {supported}: it needs a newer coffer"
    )]
    UnsupportedVersion { found: u32, supported: u32 },

    /// The repository is format 1 (one object per chunk), which only
    /// coffer 0.1 wrote; it had no users, so there is no migration.
    #[error(
        "this repository uses format version {found}, written by coffer 0.1; this coffer reads format 2 only (packs). Restore it with coffer 0.1, or back up again into a new repository"
    )]
    FormatRetired { found: u32 },

    /// An object failed authentication or did not parse.
    #[error("{kind} {name} is damaged: {reason}")]
    Corrupt { kind: &'static str, name: String, reason: String },

    /// A tree or snapshot references an object that is not in the repository.
    #[error("{kind} {id} is missing from the repository")]
    Missing { kind: &'static str, id: Id },

    #[error(transparent)]
    Backend(#[from] BackendError),

    /// A local file or directory could not be read or written.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },

    /// Something the caller asked for makes no sense (a snapshot that does not
    /// exist, an ambiguous id prefix, a bad parameter).
    #[error("{0}")]
    InvalidInput(String),

    /// Another process holds a lock that conflicts with the one asked for,
    /// and waiting for it (`--retry-lock`) did not help.
    #[error("the repository is locked by {holder}{hint}")]
    Locked { holder: String, hint: String },

    /// This process's own lock can no longer be relied on (it could not be
    /// refreshed in time, or someone removed it): the operation stops before
    /// it writes anything that depends on its view of the repository.
    #[error("the lock on the repository was lost: {reason}; stopping without writing")]
    LockLost { reason: String },

    /// The lock was lost while the snapshot was being written, and the
    /// snapshot could not be shown to reference only data that still exists:
    /// it was removed again.
    #[error(
        "the lock on the repository was lost while snapshot {snapshot} was written, and {reason}; the snapshot was removed, run the backup again"
    )]
    CommitLost { snapshot: Id, reason: String },

    /// A key envelope asks for more than this client is willing to spend.
    #[error("key {name}: {reason}")]
    KeyParameters { name: String, reason: String },
}

impl Error {
    pub fn corrupt(kind: &'static str, name: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Corrupt { kind, name: name.into(), reason: reason.into() }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), error: source }
    }
}
