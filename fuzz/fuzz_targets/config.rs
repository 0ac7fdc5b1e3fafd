//! The `config` object: a plaintext header, then a sealed MessagePack body.
//!
//! Two paths: the fuzz input as a whole stored object (which almost never
//! authenticates, so this exercises the header parser and the AEAD), and the
//! fuzz input as the *body*, sealed with the test key, so the MessagePack
//! decoder and the validation behind the authentication are reached too.

#![no_main]

mod common;

use coffer_core::blob;
use coffer_core::config::{ConfigBody, ConfigHeader, FORMAT_VERSION, MAGIC, NAME};
use coffer_core::crypto::ObjectKind;
use common::keys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = keys();

    // 1. The input as a stored config object, and with a valid magic in front.
    let _ = ConfigHeader::parse(data);
    let _ = ConfigBody::decode(keys, data);
    let mut with_magic = MAGIC.to_vec();
    with_magic.extend_from_slice(data);
    let _ = ConfigBody::decode(keys, &with_magic);

    // 2. The input as the plaintext body of an authentic config object.
    let header = ConfigHeader { version: FORMAT_VERSION, repo_id: [3u8; 32] };
    let hdr = header.to_bytes();
    let sealed = blob::seal_random(keys, &header.repo_id, ObjectKind::Config, NAME, &hdr, data);
    let mut stored = hdr.to_vec();
    stored.extend_from_slice(&sealed);
    if let Ok((h, body)) = ConfigBody::decode(keys, &stored) {
        assert_eq!(h, header);
        // A body that decoded must re-encode to one that decodes the same.
        let again = body.encode(keys, &header);
        let (_, back) = ConfigBody::decode(keys, &again).expect("re-encoded config decodes");
        assert_eq!(back, body);
    }
});
