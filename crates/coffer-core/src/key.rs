//! Key envelopes (`keys/<id>`): the master key sealed under a password.
//!
//! The envelope is stored in plaintext (MessagePack) because it must be read
//! before anything can be decrypted; its argon2id parameters, salt, nonce and
//! descriptive fields are bound as associated data, so none of them can be
//! changed without the envelope failing to open.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{self, AEAD_KEY_LEN, Keys, MASTER_KEY_LEN, NONCE_LEN, TAG_LEN};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::Repository;

pub const ENVELOPE_VERSION: u32 = 1;
pub const KDF_ARGON2ID: &str = "argon2id";

/// Largest encoded envelope a client will parse.
pub const MAX_ENVELOPE_LEN: usize = 64 * 1024;

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl KdfParams {
    /// The default: 64 MiB, 3 passes, 1 lane (stronger than the argon2
    /// crate's own default of 19 MiB and 2 passes).
    pub const DEFAULT: KdfParams = KdfParams { memory_kib: 64 * 1024, iterations: 3, parallelism: 1 };

    /// Upper bounds applied to parameters read from an envelope, so that a
    /// tampered envelope cannot make a client allocate or spin without end.
    pub const MAX_MEMORY_KIB: u32 = 1024 * 1024;
    pub const MAX_ITERATIONS: u32 = 16;
    pub const MAX_PARALLELISM: u32 = 16;

    pub fn check(&self) -> std::result::Result<(), String> {
        if self.parallelism == 0 || self.parallelism > Self::MAX_PARALLELISM {
            return Err(format!("argon2id parallelism {} is outside 1..={}", self.parallelism, Self::MAX_PARALLELISM));
        }
        if self.iterations == 0 || self.iterations > Self::MAX_ITERATIONS {
            return Err(format!("argon2id iterations {} is outside 1..={}", self.iterations, Self::MAX_ITERATIONS));
        }
        if self.memory_kib < 8 * self.parallelism || self.memory_kib > Self::MAX_MEMORY_KIB {
            return Err(format!(
                "argon2id memory {} KiB is outside {}..={} KiB",
                self.memory_kib,
                8 * self.parallelism,
                Self::MAX_MEMORY_KIB
            ));
        }
        Ok(())
    }

    fn derive(&self, password: &[u8], salt: &[u8]) -> std::result::Result<Zeroizing<[u8; AEAD_KEY_LEN]>, String> {
        self.check()?;
        let params = argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(AEAD_KEY_LEN))
            .map_err(|e| format!("argon2id parameters: {e}"))?;
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut kek = Zeroizing::new([0u8; AEAD_KEY_LEN]);
        // Our own memory, wiped when dropped: argon2's blocks hold values
        // derived from the password, and the crate frees its own unwiped.
        let mut blocks = Zeroizing::new(Vec::new());
        let count = argon.params().block_count();
        blocks.try_reserve_exact(count).map_err(|e| format!("argon2id memory: {e}"))?;
        blocks.resize(count, argon2::Block::new());
        argon
            .hash_password_into_with_memory(password, salt, &mut kek[..], &mut blocks[..])
            .map_err(|e| format!("argon2id: {e}"))?;
        Ok(kek)
    }
}

/// The stored form of a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEnvelope {
    pub version: u32,
    pub kdf: String,
    pub params: KdfParams,
    #[serde(with = "serde_bytes")]
    pub salt: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    /// SIV tag ‖ encrypted master key.
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
    /// When, where and by whom the key was made; shown by `key list`.
    pub created: String,
    pub host: String,
    pub user: String,
}

impl KeyEnvelope {
    /// Seals `keys`' master key under `password`.
    pub fn seal(keys: &Keys, password: &[u8], params: KdfParams, host: &str, user: &str) -> Result<KeyEnvelope> {
        params.check().map_err(Error::InvalidInput)?;
        let mut salt = vec![0u8; 32];
        crypto::fill_random(&mut salt);
        let mut nonce = vec![0u8; NONCE_LEN];
        crypto::fill_random(&mut nonce);
        let mut env = KeyEnvelope {
            version: ENVELOPE_VERSION,
            kdf: KDF_ARGON2ID.to_string(),
            params,
            salt,
            nonce,
            sealed: Vec::new(),
            created: jiff::Timestamp::now().to_string(),
            host: host.to_string(),
            user: user.to_string(),
        };
        let kek = params.derive(password, &env.salt).map_err(Error::InvalidInput)?;
        env.sealed = crypto::seal_with(&kek, &env.associated_data().as_refs(), keys.master());
        Ok(env)
    }

    /// Opens the envelope. `Ok(None)` means the password is not this key's.
    pub fn open(&self, name: &str, password: &[u8]) -> Result<Option<Keys>> {
        if self.version != ENVELOPE_VERSION {
            return Err(Error::UnsupportedVersion { found: self.version, supported: ENVELOPE_VERSION });
        }
        if self.kdf != KDF_ARGON2ID {
            return Err(Error::KeyParameters {
                name: name.into(),
                reason: format!("unknown key derivation {:?}", self.kdf),
            });
        }
        if self.salt.len() < 16
            || self.salt.len() > 64
            || self.nonce.len() != NONCE_LEN
            || self.sealed.len() != TAG_LEN + MASTER_KEY_LEN
        {
            return Err(Error::corrupt("key", name, "salt, nonce or sealed key has the wrong length"));
        }
        let kek = self
            .params
            .derive(password, &self.salt)
            .map_err(|reason| Error::KeyParameters { name: name.into(), reason })?;
        let Some(master) = crypto::open_with(&kek, &self.associated_data().as_refs(), &self.sealed) else {
            return Ok(None);
        };
        let master = Zeroizing::new(master);
        let arr: &[u8; MASTER_KEY_LEN] =
            master[..].try_into().map_err(|_| Error::corrupt("key", name, "master key has the wrong length"))?;
        Ok(Some(Keys::from_master(arr)))
    }

    fn associated_data(&self) -> AssociatedData {
        let mut parts = vec![
            b"coffer key".to_vec(),
            self.version.to_le_bytes().to_vec(),
            self.kdf.as_bytes().to_vec(),
            self.params.memory_kib.to_le_bytes().to_vec(),
            self.params.iterations.to_le_bytes().to_vec(),
            self.params.parallelism.to_le_bytes().to_vec(),
            self.salt.clone(),
            self.created.as_bytes().to_vec(),
            self.host.as_bytes().to_vec(),
            self.user.as_bytes().to_vec(),
        ];
        parts.push(self.nonce.clone());
        AssociatedData(parts)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain data into a Vec cannot fail.
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<KeyEnvelope> {
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(Error::corrupt("key", name, format!("{} bytes is larger than any key envelope", bytes.len())));
        }
        rmp_serde::from_slice(bytes).map_err(|e| Error::corrupt("key", name, format!("does not parse: {e}")))
    }

    /// A fresh name for a new key.
    pub fn new_name() -> String {
        format!("keys/{}", Id::random().to_hex())
    }
}

/// A key as `key list` shows it.
#[derive(Clone, Debug)]
pub struct KeyInfo {
    /// The object name, `keys/<id>`.
    pub name: String,
    /// `None` when the envelope does not parse.
    pub envelope: Option<KeyEnvelope>,
}

impl KeyInfo {
    /// The id part of the name.
    pub fn id(&self) -> &str {
        self.name.strip_prefix("keys/").unwrap_or(&self.name)
    }
}

/// Managing the keys (passwords) of an open repository. A new key seals the
/// same master key, so every key opens the same data; removing keys is
/// guarded so that the repository never loses its last way in.
impl Repository {
    /// Every key, sorted by name.
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let backend = self.backend();
        self.runtime().block_on(async {
            let mut names: Vec<String> = backend
                .list("keys/")
                .await?
                .into_iter()
                .map(|e| e.key)
                .filter(|k| k.strip_prefix("keys/").and_then(Id::from_hex).is_some())
                .collect();
            names.sort();
            let mut out = Vec::new();
            for name in names {
                let envelope = match backend.get(&name, MAX_ENVELOPE_LEN as u64).await {
                    Ok(bytes) => KeyEnvelope::from_bytes(&name, &bytes).ok(),
                    Err(e) if e.is_not_found() => continue,
                    // Listed as a key that does not parse.
                    Err(crate::backend::BackendError::TooLarge { .. }) => None,
                    Err(e) => return Err(e.into()),
                };
                out.push(KeyInfo { name, envelope });
            }
            Ok(out)
        })
    }

    /// Adds a key for `password`; returns its name. Durable when this returns.
    pub fn add_key(&self, password: &[u8], params: KdfParams) -> Result<String> {
        if password.is_empty() {
            return Err(Error::InvalidInput("an empty password is not allowed".into()));
        }
        let envelope =
            KeyEnvelope::seal(self.keys(), password, params, &crate::repo::host_name(), &crate::repo::user_name())?;
        let name = KeyEnvelope::new_name();
        self.runtime().block_on(async {
            self.backend().put(&name, envelope.to_bytes().into()).await?;
            self.backend().sync().await
        })?;
        self.keys_changed_here();
        Ok(name)
    }

    /// Finds a key by id or unique id prefix.
    pub fn find_key(&self, spec: &str) -> Result<KeyInfo> {
        let prefix = spec.strip_prefix("keys/").unwrap_or(spec).to_ascii_lowercase();
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidInput(format!("{spec:?} is not a key id")));
        }
        let mut found: Vec<KeyInfo> = self.list_keys()?.into_iter().filter(|k| k.id().starts_with(&prefix)).collect();
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(Error::InvalidInput(format!("no key matches {spec:?}"))),
            n => Err(Error::InvalidInput(format!("{spec:?} matches {n} keys; give more digits"))),
        }
    }

    /// Removes a key. Refuses the repository's last key and the key this
    /// repository was opened with (remove it with another password, so that
    /// the person proves they still hold one).
    pub fn remove_key(&self, name: &str) -> Result<()> {
        let keys = self.list_keys()?;
        if !keys.iter().any(|k| k.name == name) {
            return Err(Error::InvalidInput(format!("there is no key {name}")));
        }
        if keys.len() == 1 {
            return Err(Error::InvalidInput(format!(
                "refusing to remove {name}: it is the repository's only key, and without a key nothing in it can be read"
            )));
        }
        if name == self.key_name() {
            return Err(Error::InvalidInput(format!(
                "refusing to remove {name}: it is the key in use (the password given opens it); \
                 remove it with another key's password, or use `key passwd` to replace it"
            )));
        }
        self.delete_key_object(name)
    }

    /// Replaces the key in use by a new one for `password`: the new key is
    /// written and made durable first, then the old one is removed, so an
    /// interruption leaves both keys, never none. Returns the new key's name.
    pub fn change_password(&mut self, password: &[u8], params: KdfParams) -> Result<String> {
        let old = self.key_name().to_string();
        let new = self.add_key(password, params)?;
        self.set_key_name(new.clone());
        self.delete_key_object(&old)?;
        Ok(new)
    }

    fn delete_key_object(&self, name: &str) -> Result<()> {
        self.runtime().block_on(async {
            self.backend().delete(name).await?;
            self.backend().sync().await
        })?;
        self.keys_changed_here();
        Ok(())
    }
}

struct AssociatedData(Vec<Vec<u8>>);

impl AssociatedData {
    fn as_refs(&self) -> Vec<&[u8]> {
        self.0.iter().map(|v| v.as_slice()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FAST: KdfParams = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };

    #[test]
    fn open_with_right_and_wrong_password() {
        let keys = Keys::generate();
        let env = KeyEnvelope::seal(&keys, b"secret", FAST, "host", "me").unwrap();
        let bytes = env.to_bytes();
        let back = KeyEnvelope::from_bytes("k", &bytes).unwrap();
        assert_eq!(back, env);
        let opened = back.open("k", b"secret").unwrap().expect("right password opens");
        assert_eq!(opened.master(), keys.master());
        assert!(back.open("k", b"Secret").unwrap().is_none());
    }

    #[test]
    fn tampered_fields_do_not_open() {
        let keys = Keys::generate();
        let env = KeyEnvelope::seal(&keys, b"pw", FAST, "host", "me").unwrap();
        let mut e = env.clone();
        e.host = "other".into();
        assert!(e.open("k", b"pw").unwrap().is_none());
        let mut e = env.clone();
        e.params.iterations = 2;
        assert!(e.open("k", b"pw").unwrap().is_none());
    }

    #[test]
    fn excessive_parameters_are_refused_before_use() {
        let keys = Keys::generate();
        let mut env = KeyEnvelope::seal(&keys, b"pw", FAST, "h", "u").unwrap();
        env.params.memory_kib = u32::MAX;
        match env.open("k", b"pw") {
            Err(Error::KeyParameters { reason, .. }) => assert!(reason.contains("memory"), "{reason}"),
            other => panic!("expected KeyParameters, got {other:?}", other = other.map(|o| o.is_some())),
        }
        env.params = KdfParams { iterations: 1000, ..FAST };
        assert!(matches!(env.open("k", b"pw"), Err(Error::KeyParameters { .. })));
    }

    proptest! {
        #[test]
        fn from_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = KeyEnvelope::from_bytes("k", &data);
        }

        #[test]
        fn mutated_envelopes_never_panic(pos in any::<usize>(), val in any::<u8>()) {
            let env = KeyEnvelope::seal(&Keys::from_master(&[1; 64]), b"pw", FAST, "h", "u").unwrap();
            let mut bytes = env.to_bytes();
            let i = pos % bytes.len();
            bytes[i] = val;
            if let Ok(e) = KeyEnvelope::from_bytes("k", &bytes)
                && e.params.check().is_ok()
                && e.params.memory_kib <= 1024
                && e.params.iterations <= 2
            {
                let _ = e.open("k", b"pw");
            }
        }
    }
}
