//! End-to-end tests of the `coffer` binary and of the library against real
//! backends, linked into one test binary so that the suite builds once.
//!
//! Each area has its own module; shared fixtures live in `common`.

mod common;

mod backend_wrappers;
mod backup_options;
mod check;
mod cli;
mod cold;
mod crashes;
mod crypto_objects;
mod dedup;
mod diff;
mod dump;
mod durability;
mod errors;
mod faults;
mod forget;
mod keys;
mod lock_records;
mod locks;
mod metadata;
#[cfg(all(feature = "mount", target_os = "linux"))]
mod mount;
mod object_lock;
mod packs;
mod permissions;
mod privacy;
mod profiles;
mod prune;
mod ranges;
mod repair;
mod resources;
mod restore_options;
mod rewrite;
mod roundtrip;
mod s3;
mod smoke;
mod stats;
mod tamper;
mod wire_stats;
