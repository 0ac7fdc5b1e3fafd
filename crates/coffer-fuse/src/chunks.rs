//! Decrypted chunks for reads: a bounded cache, one fetch per chunk however
//! many readers want it at once, and background prefetch for sequential
//! readers.
//!
//! Memory is bounded by the cache's capacity plus the chunks being fetched
//! (at most [`ChunkStore::max_in_flight`] prefetches, and one chunk per
//! FUSE worker thread), never by the size of the files read.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use coffer_core::crypto::ObjectKind;
use coffer_core::repo::{Repository, decode_chunk_ref, fetch};
use coffer_core::tree::ChunkRef;
use coffer_core::{Error, Id};

use crate::lru::Lru;

pub type Chunk = Arc<Vec<u8>>;
/// A fetch's outcome, shared by every reader waiting for it.
pub type Fetched = Result<Chunk, Arc<Error>>;

pub struct ChunkStore {
    repo: Arc<Repository>,
    shared: Arc<Shared>,
    max_in_flight: usize,
}

/// What background fetches need. They hold no reference to the repository:
/// the last one would drop its runtime from inside that runtime.
struct Shared {
    cache: Mutex<Lru<Id, Chunk>>,
    in_flight: Mutex<HashMap<Id, Arc<Pending>>>,
}

/// A fetch under way; readers of the same chunk wait for it.
#[derive(Default)]
struct Pending {
    result: Mutex<Option<Fetched>>,
    done: Condvar,
}

impl Pending {
    fn wait(&self) -> Fetched {
        let mut guard = self.result.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = guard.as_ref() {
                return r.clone();
            }
            guard = self.done.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Shared {
    fn cached(&self, id: &Id) -> Option<Chunk> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(id)
    }

    /// Registers a fetch of `chunk` unless it is cached or already coming.
    /// Returns the fetch to wait for, and whether the caller must do it.
    fn claim(&self, id: &Id) -> Result<Chunk, (Arc<Pending>, bool)> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the in-flight lock: a fetch puts its chunk in the
        // cache before it leaves the in-flight map, so a chunk is always in
        // one or the other until it is evicted.
        if let Some(c) = self.cached(id) {
            return Ok(c);
        }
        if let Some(p) = in_flight.get(id) {
            return Err((p.clone(), false));
        }
        let p = Arc::new(Pending::default());
        in_flight.insert(*id, p.clone());
        Err((p, true))
    }

    fn finish(&self, chunk: &ChunkRef, pending: &Pending, result: Fetched) {
        if let Ok(data) = &result {
            self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(chunk.0, data.clone(), data.len() as u64);
        }
        *pending.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        pending.done.notify_all();
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&chunk.0);
    }
}

impl ChunkStore {
    pub fn new(repo: Arc<Repository>, cache_bytes: u64, max_in_flight: usize) -> ChunkStore {
        let shared = Shared { cache: Mutex::new(Lru::new(cache_bytes)), in_flight: Mutex::new(HashMap::new()) };
        ChunkStore { repo, shared: Arc::new(shared), max_in_flight: max_in_flight.max(1) }
    }

    /// Bytes of chunks held in the cache.
    pub fn cached_bytes(&self) -> u64 {
        self.shared.cache.lock().unwrap_or_else(|e| e.into_inner()).used()
    }

    /// Prefetches started at most at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// The plaintext of a chunk: from the cache, from a fetch already under
    /// way, or fetched and decrypted now on the calling thread.
    pub fn get(&self, chunk: &ChunkRef) -> Fetched {
        match self.shared.claim(&chunk.0) {
            Ok(c) => Ok(c),
            Err((pending, false)) => pending.wait(),
            Err((pending, true)) => {
                let repo = &self.repo;
                let result = repo
                    .runtime()
                    .block_on(fetch(&**repo.backend(), ObjectKind::Chunk, &chunk.0))
                    .and_then(|stored| {
                        decode_chunk_ref(repo.keys(), repo.repo_id(), repo.max_chunk_len(), chunk, stored)
                    })
                    .map(Arc::new)
                    .map_err(Arc::new);
                self.shared.finish(chunk, &pending, result.clone());
                result
            }
        }
    }

    /// Starts fetching `chunk` in the background if it is neither cached
    /// nor coming, and fewer than [`ChunkStore::max_in_flight`] fetches are
    /// under way. Errors are left for the read that needs the chunk.
    pub fn prefetch(&self, chunk: ChunkRef) {
        if self.shared.in_flight.lock().unwrap_or_else(|e| e.into_inner()).len() >= self.max_in_flight {
            return;
        }
        let Err((pending, true)) = self.shared.claim(&chunk.0) else { return };
        let shared = self.shared.clone();
        let backend = self.repo.backend().clone();
        let keys = self.repo.keys().clone();
        let repo_id = *self.repo.repo_id();
        let max_len = self.repo.max_chunk_len();
        self.repo.runtime().spawn(async move {
            let result = match fetch(&*backend, ObjectKind::Chunk, &chunk.0).await {
                Ok(stored) => {
                    let decoded =
                        tokio::task::spawn_blocking(move || decode_chunk_ref(&keys, &repo_id, max_len, &chunk, stored))
                            .await;
                    match decoded {
                        Ok(r) => r.map(Arc::new).map_err(Arc::new),
                        Err(e) => Err(Arc::new(Error::InvalidInput(format!("chunk decoding stopped: {e}")))),
                    }
                }
                Err(e) => Err(Arc::new(e)),
            };
            if let Err(e) = &result {
                tracing::debug!("prefetch of chunk {} failed: {e}", chunk.0.to_hex());
            }
            shared.finish(&chunk, &pending, result);
        });
    }
}
