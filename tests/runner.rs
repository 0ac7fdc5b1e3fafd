//! End-to-end tests of the `coffer` binary and of the library against real
//! backends, linked into one test binary so that the suite builds once.
//!
//! Each area has its own module; shared fixtures live in `common`.

mod common;

mod backup_options;
mod cli;
mod crypto_objects;
mod dedup;
mod dump;
mod errors;
mod locks;
mod metadata;
mod privacy;
mod prune;
mod restore_options;
mod roundtrip;
mod s3;
mod smoke;
