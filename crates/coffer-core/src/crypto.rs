//! Keys and the primitives built on them: subkey derivation, object ids and
//! the two ways objects are sealed (deterministic and random-nonce SIV).
//!
//! Everything here is keyed by the 64-byte master key, which is generated once
//! by `init`, stored only sealed under a password (see [`crate::key`]), and
//! zeroized when dropped.

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::id::Id;
use crate::siv::PmacSiv;

/// Length of the master key.
pub const MASTER_KEY_LEN: usize = 64;
/// Length of an AES-256-PMAC-SIV key (two AES-256 keys).
pub const AEAD_KEY_LEN: usize = crate::siv::KEY_LEN;
/// Length of the SIV tag that starts every sealed object.
pub const TAG_LEN: usize = crate::siv::TAG_LEN;
/// Length of the random nonce of snapshots, config and locks.
pub const NONCE_LEN: usize = 16;

/// The BLAKE3 derive-key contexts, one per purpose. Changing any of them
/// changes every id and key of every repository: they are part of the format.
pub mod context {
    pub const ID: &str = "coffer 2026-11-27 object id key v1";
    pub const CHUNK: &str = "coffer 2026-11-27 chunk aead key v1";
    pub const TREE: &str = "coffer 2026-11-27 tree aead key v1";
    pub const SNAPSHOT: &str = "coffer 2026-11-27 snapshot aead key v1";
    pub const CONFIG: &str = "coffer 2026-11-27 config aead key v1";
    pub const LOCK: &str = "coffer 2026-11-27 lock aead key v1";
    pub const PACK_HEADER: &str = "coffer 2026-12-04 pack header aead key v1";
    pub const INDEX: &str = "coffer 2026-12-04 index aead key v1";
    pub const PACK_ID: &str = "coffer 2026-12-04 pack id key v1";
    pub const GEAR: &str = "coffer 2026-11-27 chunker gear table v1";
}

/// Fills `buf` from the operating system's random number generator.
///
/// An OS without a working RNG cannot make keys at all, so failure aborts.
pub fn fill_random(buf: &mut [u8]) {
    if let Err(e) = getrandom::fill(buf) {
        panic!("the operating system's random number generator failed: {e}");
    }
}

/// Derives `out.len()` bytes for `context` from the master key, reading
/// BLAKE3's extendable output.
pub fn derive(master: &[u8; MASTER_KEY_LEN], context: &str, out: &mut [u8]) {
    let mut hasher = blake3::Hasher::new_derive_key(context);
    hasher.update(master);
    hasher.finalize_xof().fill(out);
}

/// The kinds of sealed object; each has its own AEAD key and its own
/// associated-data tag, so an object of one kind never decrypts as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    Chunk,
    Tree,
    Snapshot,
    Config,
    Lock,
    /// An `index/` object (format v2).
    Index,
}

impl ObjectKind {
    /// The tag bound into every object of this kind as associated data.
    pub fn tag(self) -> &'static [u8] {
        match self {
            ObjectKind::Chunk => b"chunk",
            ObjectKind::Tree => b"tree",
            ObjectKind::Snapshot => b"snapshot",
            ObjectKind::Config => b"config",
            ObjectKind::Lock => b"lock",
            ObjectKind::Index => b"index",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Chunk => "chunk",
            ObjectKind::Tree => "tree",
            ObjectKind::Snapshot => "snapshot",
            ObjectKind::Config => "config",
            ObjectKind::Lock => "lock",
            ObjectKind::Index => "index",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The master key and every subkey derived from it.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Keys {
    master: [u8; MASTER_KEY_LEN],
    id_key: [u8; 32],
    pack_id_key: [u8; 32],
    /// Seals the header at the end of each pack (format v2), which is not
    /// an object of its own.
    pack_header_key: [u8; AEAD_KEY_LEN],
    aead: [[u8; AEAD_KEY_LEN]; 6],
    gear: [u8; 2048],
}

impl Keys {
    /// A new random master key.
    pub fn generate() -> Keys {
        let mut master = [0u8; MASTER_KEY_LEN];
        fill_random(&mut master);
        let keys = Keys::from_master(&master);
        master.zeroize();
        keys
    }

    pub fn from_master(master: &[u8; MASTER_KEY_LEN]) -> Keys {
        let mut keys = Keys {
            master: *master,
            id_key: [0; 32],
            pack_id_key: [0; 32],
            pack_header_key: [0; AEAD_KEY_LEN],
            aead: [[0; AEAD_KEY_LEN]; 6],
            gear: [0; 2048],
        };
        derive(master, context::ID, &mut keys.id_key);
        derive(master, context::PACK_ID, &mut keys.pack_id_key);
        derive(master, context::PACK_HEADER, &mut keys.pack_header_key);
        for (kind, ctx) in [
            (ObjectKind::Chunk, context::CHUNK),
            (ObjectKind::Tree, context::TREE),
            (ObjectKind::Snapshot, context::SNAPSHOT),
            (ObjectKind::Config, context::CONFIG),
            (ObjectKind::Lock, context::LOCK),
            (ObjectKind::Index, context::INDEX),
        ] {
            derive(master, ctx, &mut keys.aead[kind.index()]);
        }
        derive(master, context::GEAR, &mut keys.gear);
        keys
    }

    pub fn master(&self) -> &[u8; MASTER_KEY_LEN] {
        &self.master
    }

    /// The chunker's 256-entry gear table, read as little-endian u64s. It is
    /// key material (it decides where chunks are cut): the copy is wiped
    /// when dropped, as the chunker's own are.
    pub fn gear_table(&self) -> Zeroizing<[u64; 256]> {
        let mut table = Zeroizing::new([0u64; 256]);
        for (entry, bytes) in table.iter_mut().zip(self.gear.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(bytes);
            *entry = u64::from_le_bytes(b);
        }
        table
    }

    /// The id of a plaintext: keyed BLAKE3 under the id key.
    pub fn id(&self, plaintext: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    /// A pack's id: keyed BLAKE3 of its stored bytes under the pack id key,
    /// so that `check` finds an altered or truncated pack by hashing it,
    /// without decrypting (and without the key, nobody can name a pack for
    /// bytes of their own).
    pub fn pack_id(&self, stored: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.pack_id_key, stored).as_bytes())
    }

    /// [`Keys::pack_id`] fed piece by piece (`check` hashes a pack a blob
    /// at a time, each just before decoding it).
    pub fn pack_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.pack_id_key)
    }

    /// Seals a pack header (see [`crate::pack`]); `tag ‖ ciphertext`.
    pub fn seal_pack_header(&self, headers: &[&[u8]], plaintext: &[u8]) -> Vec<u8> {
        seal_with(&self.pack_header_key, headers, plaintext)
    }

    /// Reverses [`Keys::seal_pack_header`].
    pub fn open_pack_header(&self, headers: &[&[u8]], sealed: &[u8]) -> Option<Vec<u8>> {
        open_with(&self.pack_header_key, headers, sealed)
    }

    fn cipher(&self, kind: ObjectKind) -> PmacSiv {
        PmacSiv::new(&self.aead[kind.index()])
    }

    /// Encrypts `plaintext` deterministically, binding `headers` as
    /// associated data. Returns `tag ‖ ciphertext`.
    pub fn seal(&self, kind: ObjectKind, headers: &[&[u8]], plaintext: Vec<u8>) -> Vec<u8> {
        seal_with(&self.aead[kind.index()], headers, &plaintext)
    }

    /// Like [`Keys::seal`], for a buffer whose first [`TAG_LEN`] bytes are
    /// room for the tag and the rest the plaintext: the plaintext is
    /// encrypted where it lies, and the tag written in front of it.
    pub fn seal_in_place(&self, kind: ObjectKind, headers: &[&[u8]], buf: &mut [u8]) {
        let (tag_room, plaintext) = buf.split_at_mut(TAG_LEN);
        tag_room.copy_from_slice(&self.cipher(kind).seal(headers, plaintext));
    }

    /// Reverses [`Keys::seal_in_place`]: decrypts `buf[TAG_LEN..]` where it
    /// lies. False (and the buffer's contents unspecified) when the object
    /// does not authenticate.
    pub fn open_in_place(&self, kind: ObjectKind, headers: &[&[u8]], buf: &mut [u8]) -> bool {
        let Some((tag, ciphertext)) = buf.split_at_mut_checked(TAG_LEN) else { return false };
        let Ok(tag) = <[u8; TAG_LEN]>::try_from(&tag[..]) else { return false };
        self.cipher(kind).open(headers, ciphertext, &tag)
    }

    /// Reverses [`Keys::seal`]; `None` when the object does not authenticate.
    pub fn open(&self, kind: ObjectKind, headers: &[&[u8]], sealed: &[u8]) -> Option<Vec<u8>> {
        open_with(&self.aead[kind.index()], headers, sealed)
    }
}

/// Seals under an explicit key: [`Keys::seal`] with a kind's key, and
/// [`crate::key`] with a key that came from the password rather than from
/// the master key.
pub fn seal_with(key: &[u8; AEAD_KEY_LEN], headers: &[&[u8]], plaintext: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(TAG_LEN + plaintext.len());
    buf.extend_from_slice(&[0u8; TAG_LEN]);
    buf.extend_from_slice(plaintext);
    let (tag_room, body) = buf.split_at_mut(TAG_LEN);
    tag_room.copy_from_slice(&PmacSiv::new(key).seal(headers, body));
    buf
}

/// Reverses [`seal_with`].
pub fn open_with(key: &[u8; AEAD_KEY_LEN], headers: &[&[u8]], sealed: &[u8]) -> Option<Vec<u8>> {
    let (tag, ciphertext) = sealed.split_at_checked(TAG_LEN)?;
    let tag = <[u8; TAG_LEN]>::try_from(tag).ok()?;
    let mut buf = ciphertext.to_vec();
    PmacSiv::new(key).open(headers, &mut buf, &tag).then_some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_master() -> [u8; 64] {
        let mut m = [0u8; 64];
        for (i, b) in m.iter_mut().enumerate() {
            *b = i as u8;
        }
        m
    }

    #[test]
    fn subkeys_differ_per_purpose() {
        let keys = Keys::from_master(&test_master());
        let mut seen = std::collections::HashSet::new();
        assert!(seen.insert(keys.id_key.to_vec()));
        for k in &keys.aead {
            assert!(seen.insert(k[..32].to_vec()));
        }
        assert!(seen.insert(keys.gear[..32].to_vec()));
    }

    #[test]
    fn seal_is_deterministic_and_bound_to_headers() {
        let keys = Keys::from_master(&test_master());
        let a = keys.seal(ObjectKind::Chunk, &[b"chunk", b"x"], b"hello".to_vec());
        let b = keys.seal(ObjectKind::Chunk, &[b"chunk", b"x"], b"hello".to_vec());
        assert_eq!(a, b);
        assert_eq!(a.len(), 5 + TAG_LEN);
        assert_eq!(keys.open(ObjectKind::Chunk, &[b"chunk", b"x"], &a).unwrap(), b"hello");
        assert!(keys.open(ObjectKind::Chunk, &[b"chunk", b"y"], &a).is_none());
        assert!(keys.open(ObjectKind::Tree, &[b"chunk", b"x"], &a).is_none(), "other kind's key");
        let mut flipped = a.clone();
        flipped[TAG_LEN] ^= 1;
        assert!(keys.open(ObjectKind::Chunk, &[b"chunk", b"x"], &flipped).is_none());
        assert!(keys.open(ObjectKind::Chunk, &[b"chunk", b"x"], &a[..3]).is_none());
    }

    #[test]
    fn ids_are_keyed() {
        let k1 = Keys::from_master(&test_master());
        let k2 = Keys::generate();
        assert_ne!(k1.id(b"photo"), k2.id(b"photo"));
        assert_ne!(k1.id(b"photo").0, *blake3::hash(b"photo").as_bytes());
    }
}
