//! What the targets that need keys share: one fixed key set, derived once
//! per process (deriving it per input would cost more than the decoding
//! being fuzzed), and one repository id.

#![allow(dead_code)]

use coffer_core::crypto::Keys;
use std::sync::OnceLock;

pub const REPO: [u8; 32] = [3u8; 32];

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys::from_master(&[7u8; 64]))
}
