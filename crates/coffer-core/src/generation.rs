//! The prune generation: one small object, `generation`, that prune rewrites
//! with a fresh random token before it deletes anything.
//!
//! It tells a client that a prune has run since it last looked. Format 1
//! kept a local copy of which chunks existed and trusted it only while the
//! token was unchanged. Format 2 lists its packs afresh every time (the
//! listings are small) and no command reads the token now; prune still
//! bumps it, so that a local copy of the index, should one ever be trusted
//! without a listing, has a way to know it went stale.
//!
//! The object is sealed like a lock record (random nonce, the lock key), with
//! its name `generation` bound as associated data, so it cannot be mistaken
//! for a lock or moved in from another repository.

use serde::{Deserialize, Serialize};

use crate::blob;
use crate::crypto::{ObjectKind, fill_random};
use crate::error::{Error, Result};
use crate::repo::Repository;

/// The object's key under the repository root.
pub const NAME: &str = "generation";

/// Upper bound on the plaintext a client decodes.
const MAX_LEN: usize = 4096;
/// Upper bound on the stored object a client reads.
const MAX_STORED: u64 = blob::max_stored_random_len(MAX_LEN);

/// An opaque generation token. Two reads that return equal tokens saw no
/// prune in between.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Generation(pub [u8; 16]);

impl Generation {
    /// The generation of a repository that was never pruned (no object yet).
    pub const INITIAL: Generation = Generation([0; 16]);

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

#[derive(Serialize, Deserialize)]
struct Record {
    version: u32,
    #[serde(with = "serde_bytes")]
    token: Vec<u8>,
}

impl Repository {
    /// Reads the current generation ([`Generation::INITIAL`] when no prune
    /// has ever run).
    pub async fn generation(&self) -> Result<Generation> {
        let stored = match self.backend().get(NAME, MAX_STORED).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(Generation::INITIAL),
            Err(e @ crate::backend::BackendError::TooLarge { .. }) => {
                return Err(Error::corrupt("generation", NAME, e.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        let plain = blob::open_random(self.keys(), self.repo_id(), ObjectKind::Lock, NAME, b"", &stored, MAX_LEN)?;
        let record: Record = rmp_serde::from_slice(&plain)
            .map_err(|e| Error::corrupt("generation", NAME, format!("cannot decode it: {e}")))?;
        if record.version != 1 {
            return Err(Error::corrupt("generation", NAME, format!("unknown version {}", record.version)));
        }
        let token: [u8; 16] = record
            .token
            .as_slice()
            .try_into()
            .map_err(|_| Error::corrupt("generation", NAME, "its token is not 16 bytes"))?;
        Ok(Generation(token))
    }

    /// Writes a new random generation and makes it durable. Prune calls this
    /// under the exclusive lock before its first delete.
    pub async fn bump_generation(&self) -> Result<Generation> {
        let mut token = [0u8; 16];
        fill_random(&mut token);
        let record = Record { version: 1, token: token.to_vec() };
        let plain = rmp_serde::to_vec_named(&record)
            .map_err(|e| Error::InvalidInput(format!("cannot encode the generation: {e}")))?;
        let stored = blob::seal_random(self.keys(), self.repo_id(), ObjectKind::Lock, NAME, b"", &plain);
        self.backend().put(NAME, stored.into()).await?;
        self.backend().sync().await?;
        Ok(Generation(token))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::local::LocalBackend;
    use crate::key::KdfParams;
    use crate::repo::InitOptions;

    fn repo(dir: &std::path::Path) -> Repository {
        let options =
            InitOptions { kdf: KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }, ..InitOptions::default() };
        Repository::init(Arc::new(LocalBackend::new(dir)), b"pw", &options).unwrap()
    }

    #[test]
    fn starts_initial_and_changes_on_every_bump() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let rt = repo.runtime().clone();
        assert_eq!(rt.block_on(repo.generation()).unwrap(), Generation::INITIAL);
        let a = rt.block_on(repo.bump_generation()).unwrap();
        assert_ne!(a, Generation::INITIAL);
        assert_eq!(rt.block_on(repo.generation()).unwrap(), a);
        let b = rt.block_on(repo.bump_generation()).unwrap();
        assert_ne!(a, b);
        assert_eq!(rt.block_on(repo.generation()).unwrap(), b);
    }

    #[test]
    fn a_tampered_generation_is_an_error_not_a_match() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let rt = repo.runtime().clone();
        rt.block_on(repo.bump_generation()).unwrap();
        let path = dir.path().join(NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(rt.block_on(repo.generation()), Err(Error::Corrupt { .. })));
    }
}
