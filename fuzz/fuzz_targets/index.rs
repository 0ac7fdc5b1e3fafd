//! Index objects: the input as a plaintext must decode (and re-encode to the
//! same bytes) or fail, never panic; as a stored object it must not
//! authenticate; sealed, it must open to what it decodes to.

#![no_main]

mod common;

use coffer_core::crypto::ObjectKind;
use coffer_core::id::Id;
use coffer_core::index::Index;
use coffer_core::{blob, repo};
use common::{REPO, keys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    assert!(Index::open(keys, &REPO, &Id([2; 32]), data).is_err(), "a forged index authenticated");
    let decoded = Index::decode(data);
    if let Ok(index) = &decoded {
        assert_eq!(index.encode(), data);
    }
    let id = keys.id(data);
    let stored =
        blob::seal_random(keys, &REPO, ObjectKind::Index, &repo::object_key(ObjectKind::Index, &id), b"", data);
    assert_eq!(Index::open(keys, &REPO, &id, &stored).ok(), decoded.ok());
});
