//! A snapshot's plaintext (after authentication): MessagePack plus checks on
//! the version and the time.

#![no_main]

use coffer_core::snapshot::Snapshot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = Snapshot::from_bytes("snapshots/fuzz", data) else {
        return;
    };
    let back = Snapshot::from_bytes("snapshots/fuzz", &s.to_bytes()).expect("re-encoded snapshot parses");
    assert_eq!(back, s);
});
