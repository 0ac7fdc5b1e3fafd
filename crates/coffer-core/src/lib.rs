//! coffer-core: the repository format, its cryptography, and the backup and
//! restore pipelines.
//!
//! The module names follow the repository format described in `docs/format.md`:
//! [`blob`] encodes one stored object, [`tree`] and [`snapshot`] are the
//! structures stored in them, [`backend`] is where the objects live, and
//! [`repo`] ties them together. [`archiver`] and [`restorer`] are the two
//! pipelines built on top.

pub mod archiver;
pub mod backend;
pub mod blob;
pub mod cache;
pub mod check;
pub mod chunker;
pub mod config;
pub mod crypto;
pub mod diff;
pub mod dump;
pub mod error;
pub mod exclude;
pub mod find;
pub mod generation;
pub mod id;
pub mod index;
pub mod key;
pub mod lock;
pub mod metadata;
pub mod pack;
pub mod packer;
pub mod policy;
pub mod pricing;
pub mod progress;
pub mod prune;
pub mod repair;
pub mod repo;
pub mod restorer;
pub mod retention;
pub mod retrieval;
pub mod rewrite;
pub mod siv;
pub mod snapshot;
pub mod state;
pub mod stats;
pub mod tree;
pub mod walk;

#[cfg(test)]
mod test_vectors;

pub use error::{Error, Result};
pub use id::Id;
pub use repo::Repository;

/// The version of this library, recorded in every snapshot it writes.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod decoder_robustness;
