//! Progress reporting. The pipelines call these hooks; the CLI draws bars
//! and prints warnings. Every method has a no-op default.

use std::path::Path;

pub trait Progress: Send + Sync {
    /// The total amount of work, when known (restore knows it up front).
    fn set_total(&self, _files: u64, _bytes: u64) {}
    /// A file is being read (backup) or written (restore).
    fn file_started(&self, _path: &Path) {}
    fn file_done(&self) {}
    /// Bytes of file content processed.
    fn bytes_done(&self, _n: u64) {}
    /// A problem with one entry that does not stop the whole operation.
    fn warning(&self, _path: &Path, _message: &str) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
