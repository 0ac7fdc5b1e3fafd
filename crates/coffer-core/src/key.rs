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
        argon.hash_password_into(password, salt, &mut kek[..]).map_err(|e| format!("argon2id: {e}"))?;
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
