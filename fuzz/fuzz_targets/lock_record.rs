//! Lock records: the input, sealed authentically as the plaintext of a lock
//! object, must decode to a record or to an error, never panic; a record
//! that decodes must be named by its own id.

#![no_main]

mod common;

use coffer_core::blob;
use coffer_core::crypto::ObjectKind;
use coffer_core::lock::LockRecord;
use common::{REPO, keys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    let name = format!("locks/{}", "ab".repeat(32));
    // The input as a stored object: never authentic.
    assert!(LockRecord::open(keys, &REPO, &name, data).is_err(), "a forged lock authenticated");
    // The input as an authentic lock's plaintext.
    let stored = blob::seal_random(keys, &REPO, ObjectKind::Lock, &name, b"", data);
    if let Ok(record) = LockRecord::open(keys, &REPO, &name, &stored) {
        assert_eq!(record.name(), name);
    }
});
