//! Stored chunk, tree and random-nonce objects, and the frame inside them.
//!
//! Random bytes never authenticate, so besides feeding the input to the
//! decoders as a stored object, the input is also sealed as a *frame* with the
//! test key and decoded: that reaches `unframe` (lengths, padding, zstd) and
//! the id check through the same path a real read takes, and lets the result
//! be compared with calling `unframe` directly.

#![no_main]

mod common;

use coffer_core::blob;
use coffer_core::chunker::ChunkerParams;
use coffer_core::crypto::{NONCE_LEN, ObjectKind};
use coffer_core::id::Id;
use coffer_core::snapshot::MAX_SNAPSHOT_LEN;
use common::{REPO, keys};
use libfuzzer_sys::fuzz_target;

const MAX_CHUNK: usize = ChunkerParams::MAX_CHUNK as usize;
const MAX_TREE: usize = 256 * 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    let fixed = Id([0x5a; 32]);
    let from_input = data.get(..32).and_then(|b| b.try_into().ok()).map(Id).unwrap_or(fixed);

    // 1. The input as a stored object, under every kind.
    for (kind, max) in [(ObjectKind::Chunk, MAX_CHUNK), (ObjectKind::Tree, MAX_TREE)] {
        for id in [&fixed, &from_input] {
            assert!(blob::decode(keys, &REPO, kind, id, data, max).is_err(), "forged {kind:?} authenticated");
        }
    }
    for kind in [ObjectKind::Snapshot, ObjectKind::Config, ObjectKind::Lock] {
        assert!(
            blob::open_random(keys, &REPO, kind, "snapshots/fuzz", b"", data, MAX_SNAPSHOT_LEN).is_err(),
            "forged {kind:?} authenticated"
        );
    }

    // 2. The input as a frame, directly.
    let direct = blob::unframe(data, MAX_CHUNK);
    if let Ok(plain) = &direct {
        assert!(plain.len() <= MAX_CHUNK);
    }

    // 3. The input as the frame of an authentic chunk / tree: decode must agree
    //    with `unframe`, and then with the id check.
    for kind in [ObjectKind::Chunk, ObjectKind::Tree] {
        let id = match &direct {
            Ok(plain) => keys.id(plain),
            Err(_) => fixed,
        };
        let stored = keys.seal(kind, &[kind.tag(), &id.0, &REPO], data.to_vec());
        let decoded = blob::decode(keys, &REPO, kind, &id, &stored, MAX_CHUNK);
        match (&direct, &decoded) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("unframe {:?} but decode {:?}", a.as_ref().map(|v| v.len()), b.as_ref().map(|v| v.len())),
        }
        // Under another id the same object must be rejected.
        let other = Id([0xa5; 32]);
        if other != id {
            assert!(blob::decode(keys, &REPO, kind, &other, &stored, MAX_CHUNK).is_err());
        }
    }

    // 4. The input as the frame of an authentic random-nonce object.
    let name = "snapshots/fuzz";
    let nonce = [9u8; NONCE_LEN];
    let kind = ObjectKind::Snapshot;
    let mut stored = nonce.to_vec();
    stored.extend_from_slice(&keys.seal(kind, &[kind.tag(), name.as_bytes(), &REPO, b"", &nonce], data.to_vec()));
    let opened = blob::open_random(keys, &REPO, kind, name, b"", &stored, MAX_SNAPSHOT_LEN);
    let direct = blob::unframe(data, MAX_SNAPSHOT_LEN);
    match (&direct, &opened) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("unframe {:?} but open_random {:?}", a.as_ref().map(|v| v.len()), b.as_ref().map(|v| v.len())),
    }
});
