//! Pack headers: the input as a pack's tail must fail to authenticate, and
//! as an authenticated header's plaintext must parse to entries that tile
//! the blob area exactly, or to an error, never panic.

#![no_main]

mod common;

use coffer_core::id::Id;
use coffer_core::pack::{self, PackKind};
use common::{REPO, keys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let id = Id([1; 32]);
    let area = data.first().map_or(0, |&b| u64::from(b) * 977);
    assert!(
        pack::decode_header(keys(), &REPO, PackKind::Data, &id, data.len() as u64 + area, data).is_err(),
        "a forged pack header authenticated"
    );
    if let Ok(entries) = pack::parse_plain(data, PackKind::Data, area) {
        assert_eq!(entries.iter().map(|e| u64::from(e.length)).sum::<u64>(), area);
    }
});
